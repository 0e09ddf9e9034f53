"""Persistent hiding on the kernel command line: ``/etc/default/grub`` and ``/proc/cmdline``.

When the stub is built into the kernel, modprobe options never reach it and
only ``xen-pciback.hide=(...)`` or ``vfio-pci.ids=...`` on the kernel command
line hides a device at boot (kmod also passes these to a *module* stub: it
reads /proc/cmdline when it loads a module).

``/etc/default/grub`` is a shell fragment that grub-mkconfig sources
(``. /etc/default/grub``, then Debian's ``/etc/default/grub.d/*.cfg``).
pcipass never runs it: a small lexer finds the bytes of one assignment's
value, and an edit changes only those bytes.  What the lexer cannot follow
safely (command substitution, a heredoc, the variable set inside an ``if``,
``unset``) makes the edit refuse with ConfigSyntaxError, file untouched.

Which variable: ``GRUB_CMDLINE_LINUX`` (every Linux entry), except that for
Xen entries ``20_linux_xen`` replaces it with
``GRUB_CMDLINE_LINUX_XEN_REPLACE`` when that is set, and
``GRUB_CMDLINE_LINUX_DEFAULT`` (or ``..._XEN_REPLACE_DEFAULT``) is appended
for the default entry.  The kernel keeps the last value of a parameter given
twice (charp/string parameters), so an address is merged into the last
existing ``hide=`` token (PP009) wherever it is, and a new token is appended
to the end of the base variable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pcipass.address import PciAddress, format_hide_list
from pcipass.backend import Backend
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.host.persisted import CmdlineHides, CmdlineToken, GrubProblem, module_key
from pcipass.host.platform import (
    DEFAULT_GRUB_FILE,
    PersistMethod,
    Platform,
    Regeneration,
)
from pcipass.host.root import HostRoot
from pcipass.persist.modprobe.syntax import parse_params
from pcipass.persist.shell_assign import EOL_NOTE, MARKER, Assignment, ShellFile, Value, evaluate
from pcipass.persist.stub_values import hide_items, id_items, normalise_device_id, parse_hide_value
from pcipass.record import dataclass

BASE = "GRUB_CMDLINE_LINUX"
BASE_DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
XEN_REPLACE = "GRUB_CMDLINE_LINUX_XEN_REPLACE"
XEN_REPLACE_DEFAULT = "GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT"
GRUB_D = "/etc/default/grub.d"

#: Kernel parameters that hide devices, keyed by kmod-normalised name.
_HIDE_PARAMS = {
    "xen_pciback.hide": ("xen_pciback", "hide"),
    "pciback.hide": ("pciback", "hide"),
    "vfio_pci.ids": ("vfio_pci", "ids"),
}


# --------------------------------------------------------------------------
# Kernel command line tokens
# --------------------------------------------------------------------------


def hide_tokens(text: str, where: str) -> list[CmdlineToken]:
    """The hiding parameters in a command line, split as the kernel's next_arg() does."""
    tokens: list[CmdlineToken] = []
    for param in parse_params(text, 0):
        known = _HIDE_PARAMS.get(module_key(param.name).lower())
        if known is None:
            continue
        stub, kind = known
        value = text[param.value_start : param.value_end]
        addresses, ids, error = parse_hide_value(text, param.value_start, param.value_end, kind)
        tokens.append(
            CmdlineToken(
                where, param.name, stub, kind, value, param.start, param.value_start,
                param.end, addresses, ids, error,
            )
        )  # fmt: skip
    return tokens


def _with_effective(tokens: Sequence[CmdlineToken]) -> tuple[CmdlineToken, ...]:
    last: dict[tuple[str, str], int] = {}
    for index, token in enumerate(tokens):
        last[(token.stub, token.kind)] = index
    return tuple(
        CmdlineToken(**{**t.__dict__, "effective": last[(t.stub, t.kind)] == i})
        for i, t in enumerate(tokens)
    )


def parse_kernel_cmdline(text: str, where: str = "/proc/cmdline") -> CmdlineHides:
    return CmdlineHides(_with_effective(hide_tokens(text, where)))


def read_running(root: HostRoot) -> CmdlineHides:
    """What the running kernel was booted with (``/proc/cmdline``)."""
    data = root.files.read_bytes("/proc/cmdline")  # FIFO-safe, inside the root
    text = (data or b"").decode("utf-8", "replace")
    return parse_kernel_cmdline(text.strip(), "/proc/cmdline")


# --------------------------------------------------------------------------
# Reading /etc/default/grub (+ grub.d): the configured command line
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfiguredCmdline:
    """The command line grub-mkconfig would write, from the files, without running them."""

    variables: Mapping[str, str]  # final values of the GRUB_CMDLINE_* variables
    sources: Mapping[str, str]  # variable -> "path:line" of its last assignment
    hides: CmdlineHides  # the hiding parameters, for the entries asked about
    #: What pcipass could not follow, or a later file replacing a variable:
    #: policy/persist_rules.configured_findings turns them into PP010 findings.
    problems: tuple[GrubProblem, ...]


def grub_file_order(paths: Iterable[str]) -> list[str]:
    """/etc/default/grub first, then /etc/default/grub.d/*.cfg by name (Debian's grub-mkconfig)."""
    paths = list(paths)
    snippets = sorted(p for p in paths if p.startswith(GRUB_D + "/") and p.endswith(".cfg"))
    return [p for p in paths if p == DEFAULT_GRUB_FILE] + snippets


def collect_grub_files(root: HostRoot) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    confined = root.files  # links resolved inside the root
    for path in [DEFAULT_GRUB_FILE] + [
        f"{GRUB_D}/{name}" for name in confined.list_dir(GRUB_D) if name.endswith(".cfg")
    ]:
        data = confined.read_bytes(path) if confined.is_file(path) else None
        if data is not None:
            files[path] = data
    return files


def read_configured(files: Mapping[str, bytes], *, xen: bool = False) -> ConfiguredCmdline:
    """Evaluate the GRUB_CMDLINE_* assignments of the grub files, in order.

    ``xen``: describe the command line of dom0's entries (20_linux_xen's
    XEN_REPLACE rules) instead of the plain Linux ones.
    """
    env: dict[str, str] = {}
    sources: dict[str, str] = {}
    problems: list[GrubProblem] = []
    names = (BASE, BASE_DEFAULT, XEN_REPLACE, XEN_REPLACE_DEFAULT)
    for path in grub_file_order(files):
        shell = ShellFile.parse(files[path], path)
        if shell.error:
            problems.append(GrubProblem(path, shell.error))
        for name, (why, line) in shell.blocked.items():
            if name in names:
                problems.append(GrubProblem(path, f"{name} is {why} at line {line}"))
        for assignment in shell.assignments:
            if assignment.name not in names:
                continue
            try:
                env[assignment.name] = evaluate(shell.data, assignment, env).text
            except ConfigSyntaxError as error:
                problems.append(GrubProblem(path, error.problem))
                continue
            if path != DEFAULT_GRUB_FILE and not _self_appends(shell.data, assignment):
                problems.append(GrubProblem(path, overridden=assignment.name, line=assignment.line))
            sources[assignment.name] = f"{path}:{assignment.line}"
    base, default = _entry_variables(env, xen)
    tokens: list[CmdlineToken] = []
    for name in (base, default):
        where = f"{name} ({sources.get(name, 'unset')})"
        tokens.extend(hide_tokens(env.get(name, ""), where))
    hides = CmdlineHides(_with_effective(tokens))
    return ConfiguredCmdline(env, sources, hides, tuple(problems))


def entry_text(configured: ConfiguredCmdline, *, xen: bool = False) -> str:
    """The Linux arguments grub-mkconfig would write into an entry (``xen``: dom0's)."""
    names = _entry_variables(configured.variables, xen)
    return " ".join(configured.variables.get(n, "") for n in names).strip()


def _entry_variables(env: Mapping[str, str], xen: bool) -> tuple[str, str]:
    if not xen:
        return BASE, BASE_DEFAULT
    base = XEN_REPLACE if env.get(XEN_REPLACE) else BASE
    default = XEN_REPLACE_DEFAULT if env.get(XEN_REPLACE_DEFAULT) else BASE_DEFAULT
    return base, default


def _self_appends(data: bytes, assignment: Assignment) -> bool:
    raw = data[assignment.value_start : assignment.value_end].decode("latin-1")
    return f"${assignment.name}" in raw or f"${{{assignment.name}}}" in raw


# --------------------------------------------------------------------------
# Editing /etc/default/grub
# --------------------------------------------------------------------------


def hide_param(backend: Backend, stub: str = "xen-pciback") -> tuple[str, str]:
    """(parameter name, kind) written for ``backend``: xen-pciback.hide or vfio-pci.ids."""
    if backend is Backend.VFIO:
        return "vfio-pci.ids", "ids"
    if module_key(stub) not in ("xen_pciback", "pciback"):
        raise UsageError(f"stub {stub!r}", "not a Xen PCI backend module")
    return f"{stub}.hide", "hide"


def add_hide(
    text: bytes | None,
    *,
    backend: Backend,
    addresses: Sequence[PciAddress] = (),
    ids: Sequence[str] = (),
    xen: bool | None = None,
    stub: str = "xen-pciback",
    path: str = DEFAULT_GRUB_FILE,
) -> bytes:
    """Hide ``addresses`` (pciback) or ``ids`` (vfio) on the configured command line.

    Merges into the last existing token for the stub (PP009), otherwise
    appends ``xen-pciback.hide=(...)`` / ``vfio-pci.ids=...`` to the base
    variable (created with a marker comment when absent).  ``xen`` defaults
    to True for the pciback backend (dom0 entries).
    """
    xen = backend is Backend.PCIBACK if xen is None else xen
    param, kind = hide_param(backend, stub)
    items = _items(kind, addresses, ids)
    data = text or b""
    for item in items:
        data = _add_item(data, param, kind, item, xen=xen, path=path)
    return data


def remove_hide(
    text: bytes | None,
    *,
    backend: Backend,
    addresses: Sequence[PciAddress] = (),
    ids: Sequence[str] = (),
    xen: bool | None = None,
    stub: str = "xen-pciback",
    path: str = DEFAULT_GRUB_FILE,
) -> bytes:
    """Take ``addresses`` / ``ids`` out of every hiding token of the entry variables.

    A token left empty goes with its separating space; a variable pcipass
    created (marker comment) goes when nothing is left in it.
    """
    xen = backend is Backend.PCIBACK if xen is None else xen
    _param, kind = hide_param(backend, stub)
    data = text or b""
    for item in _items(kind, addresses, ids):
        data = _remove_item(data, kind, item, xen, path)
    return data


def _items(kind: str, addresses: Sequence[PciAddress], ids: Sequence[str]) -> list[str]:
    if kind == "hide":
        if ids:
            raise UsageError("--backend pciback", "xen-pciback hides by address, not by id")
        return [str(a) for a in addresses]
    if addresses and not ids:
        raise UsageError("--backend vfio", "vfio-pci.ids needs vendor:device ids")
    return [normalise_device_id(i) for i in ids]


@dataclass(frozen=True)
class _Target:
    """The variables of one boot entry and their current values, ready to edit."""

    shell: ShellFile
    base: str
    default: str
    values: Mapping[str, tuple[Assignment, Value]]


def _target(data: bytes, xen: bool, path: str) -> _Target:
    shell = ShellFile.parse(data, path)
    if shell.error:
        raise ConfigSyntaxError(path, shell.error)
    env: dict[str, str] = {}
    values: dict[str, tuple[Assignment, Value]] = {}
    names = (BASE, BASE_DEFAULT, XEN_REPLACE, XEN_REPLACE_DEFAULT)
    for assignment in shell.assignments:
        if assignment.name in names:
            value = evaluate(data, assignment, env)
            env[assignment.name] = value.text
            values[assignment.name] = (assignment, value)
    base, default = _entry_variables(env, xen)
    for name in (base, default):
        if name in shell.blocked:
            why, line = shell.blocked[name]
            raise ConfigSyntaxError(path, f"{name} is {why}; pcipass will not edit it", line)
    return _Target(shell, base, default, values)


def _tokens_of(target: _Target, kind: str) -> list[tuple[str, CmdlineToken]]:
    found: list[tuple[str, CmdlineToken]] = []
    for name in (target.base, target.default):
        if name in target.values:
            _assignment, value = target.values[name]
            for token in hide_tokens(value.text, name):
                if token.kind == kind:
                    found.append((name, token))
    return found


def _add_item(data: bytes, param: str, kind: str, item: str, *, xen: bool, path: str) -> bytes:
    target = _target(data, xen, path)
    tokens = [
        (n, t) for n, t in _tokens_of(target, kind) if t.stub == module_key(param.partition(".")[0])
    ]
    if tokens:
        name, token = tokens[-1]  # the one the kernel keeps
        if token.error is not None:
            raise ConfigSyntaxError(
                path, f"cannot merge into {token.param}={token.value!r}: {token.error}"
            )
        if (kind == "hide" and PciAddress.parse(item) in token.addresses) or item in token.ids:
            return data
        assignment, value = target.values[name]
        value_end = token.value_start + len(token.value)
        span = value.literal_span(token.start, value_end)
        if span is None or token.end != value_end:
            raise ConfigSyntaxError(
                path,
                f"{token.param}= in {name} is built from quotes or expansions pcipass cannot edit",
                assignment.line,
            )
        insert = f"({item})" if kind == "hide" else ("," if token.ids else "") + item
        result = data[: span[1]] + insert.encode() + data[span[1] :]
    else:
        token_text = (
            f"{param}={format_hide_list([PciAddress.parse(item)])}"
            if kind == "hide"
            else f"{param}={item}"
        )
        result = _append_token(data, target, token_text, path)
    _verify(result, kind, item, xen, path, present=True)
    return result


def _append_token(data: bytes, target: _Target, token: str, path: str) -> bytes:
    name = target.base
    if name not in target.values:
        return _create_variable(data, name, token)
    assignment, value = target.values[name]
    segments = assignment.segments
    last = segments[-1] if segments else None
    if last is not None and last.kind in ("dq", "sq"):
        offset = last.content_end
        # Decide on the raw bytes, not the value: after "$X" a token written
        # without a blank would change the variable's name to $Xxen...
        before = data[last.content_start : offset]
        separator = "" if not before or before[-1:] in (b" ", b"\t") else " "
        insert = (separator + token).encode()
    else:
        offset = assignment.value_end
        separator = " " if value.text and value.text[-1] not in " \t" else ""
        insert = f'"{separator}{token}"'.encode()
    return data[:offset] + insert + data[offset:]


def _create_variable(data: bytes, name: str, token: str) -> bytes:
    note = ""
    prefix = b""
    if data and not data.endswith(b"\n"):
        prefix = b"\n"
        note = EOL_NOTE
    block = f'{MARKER} {name}{note}\n{name}="{token}"\n'.encode()
    return data + prefix + block


def _remove_item(data: bytes, kind: str, item: str, xen: bool, path: str) -> bytes:
    while True:
        target = _target(data, xen, path)
        edit = _one_removal(data, target, kind, item, path)
        if edit is None:
            break
        data = edit
    _verify(data, kind, item, xen, path, present=False)
    return data


def _one_removal(data: bytes, target: _Target, kind: str, item: str, path: str) -> bytes | None:
    for name, token in _tokens_of(target, kind):
        if kind == "hide":
            address = PciAddress.parse(item)
            if address not in token.addresses:
                continue
        elif item not in token.ids:
            continue
        assignment, value = target.values[name]
        value_text = value.text
        value_end = token.value_start + len(token.value)
        items = (
            hide_items(value_text, token.value_start, value_end)
            if kind == "hide"
            else id_items(value_text, token.value_start, value_end)
        )
        keys = [str(a) if kind == "hide" else a for a, _v in items]
        spans = [v for _a, v in items]
        index = keys.index(item)
        if len(keys) > 1:
            begin, end = spans[index].start, spans[index].end
            if kind == "ids":
                if begin > 0 and value_text[begin - 1] == ",":
                    begin -= 1
                elif end < len(value_text) and value_text[end] == ",":
                    end += 1
        else:
            begin, end = _token_with_space(value_text, token.start, token.end)
        span = value.literal_span(begin, end)
        if span is None:
            raise ConfigSyntaxError(
                path,
                f"{token.param}= in {name} is not plain text pcipass can edit",
                assignment.line,
            )
        result = data[: span[0]] + data[span[1] :]
        return _tidy_after_removal(result, data, assignment, span, name=name, path=path)
    return None


def _token_with_space(text: str, start: int, end: int) -> tuple[int, int]:
    """A whole token and one separating blank: before it, else after it."""
    if start > 0 and text[start - 1] in " \t":
        return start - 1, end
    if end < len(text) and text[end] in " \t":
        return start, end + 1
    return start, end


def _tidy_after_removal(
    result: bytes,
    before: bytes,
    assignment: Assignment,
    span: tuple[int, int],
    *,
    name: str,
    path: str,
) -> bytes:
    """Drop a quoted segment pcipass's token emptied, or the variable pcipass created."""
    removed = span[1] - span[0]
    for segment in assignment.segments:
        if (
            segment.kind in ("dq", "sq")
            and segment.content_start <= span[0]
            and span[1] <= segment.content_end
        ):
            now_empty = segment.content_end - segment.content_start == removed
            if now_empty and len(assignment.segments) > 1:
                result = before[: segment.start] + before[segment.end :]
            break
    shell = ShellFile.parse(result, path)
    current = shell.last(name)
    if current is None or not current.marked:
        return result
    value = evaluate(result, current, {})
    if value.text.strip():
        return result
    line_start = result.rfind(b"\n", 0, current.value_start) + 1
    marker_start = result.rfind(b"\n", 0, line_start - 1) + 1
    line_end = result.find(b"\n", current.value_end)
    line_end = len(result) if line_end < 0 else line_end + 1
    marker = result[marker_start : line_start - 1].decode("latin-1")
    start = marker_start
    if marker.endswith(EOL_NOTE) and line_end == len(result) and start > 0:
        start -= 1  # pcipass added the file's last newline along with the variable
    return result[:start] + result[line_end:]


def _verify(data: bytes, kind: str, item: str, xen: bool, path: str, *, present: bool) -> None:
    """Read the edited text back; refuse an edit that would not do what it says."""
    target = _target(data, xen, path)
    tokens = [t for _n, t in _tokens_of(target, kind)]
    hides = CmdlineHides(_with_effective(tokens))
    held = (
        PciAddress.parse(item) in hides.hidden() if kind == "hide" else item in hides.hidden_ids()
    )
    if held != present:
        state = "not in effect" if present else "still in effect"
        raise ConfigSyntaxError(
            path, f"pcipass's edit would leave {item} {state}; file left untouched"
        )


def regeneration(platform: Platform) -> tuple[Regeneration, ...]:
    """The command that turns /etc/default/grub into the boot menu."""
    return platform.regeneration(PersistMethod.CMDLINE)
