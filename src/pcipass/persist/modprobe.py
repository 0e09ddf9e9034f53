"""Persistent hiding through modprobe configuration, edited line by line.

The text model follows kmod 30 exactly (``libkmod-config.c``,
``getline_wrapped`` in ``libkmod-util.c``) because kmod is what reads these
files at boot on every current system:

* a logical line ends at ``\\n``; backslash-newline joins physical lines, and
  a backslash before any other byte is dropped (the byte is kept);
* a logical line starting with ``#`` is a comment *including its
  continuations*; words are separated by space and tab only, so a ``\\r``
  of a CRLF file is part of the last word;
* module names treat ``-`` and ``_`` alike (``underscores()``);
* ``options`` lines for one module are concatenated in file order (files
  sorted by name across the modprobe.d directories) and the kernel command
  line comes last; ``hide`` and ``ids`` are charp/string parameters, so when
  one is given twice the kernel keeps the *last* value and the earlier
  devices are silently not hidden (rule PP009);
* only the *first* ``install`` and the *first* ``softdep`` for a module count,
  and a module that has a softdep has its install command ignored
  (``mod->ignorecmd``; all three checked with the real kmod in the tests).

Every edit keeps all other bytes of the file.  New lines always end in
``\\n`` (kmod would pass a ``\\r`` on to the shell of an install command).

How pcipass knows what it added
-------------------------------
The lines themselves stay exactly the document's (Procedure 15.3):
``install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time
--ignore-install bnx2`` and ``options pciback hide=(0000:09:00.0)``.  The
line *before* each line pcipass added or changed is a marker comment::

    # pcipass: line for=0000:09:00.0
    install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2
    # pcipass: line hide=0000:09:00.0,0000:0a:04.1
    options pciback hide=(0000:09:00.0)(0000:0a:04.1)

Marker words: ``line`` (pcipass wrote the whole line), ``param`` (pcipass
appended the ``hide=``/``ids=`` parameter to the user's options line),
``hide=A,B`` (addresses pcipass put in the value), ``ids=ID@A,...`` (vfio-pci
ids pcipass put in the value, and for which device), ``for=A,B`` (devices an
install/softdep/alias line is there for).  Removal takes away exactly what
the markers name and nothing else; a device hidden by the user's own line is
reported back as ``user_held`` and left alone.  Since the markers are
comments, kmod and module-init-tools ignore them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from pcipass.address import PciAddress, format_hide_list
from pcipass.backend import Backend
from pcipass.errors import AddressError, ConfigSyntaxError, UsageError
from pcipass.host.root import HostRoot, safe_name
from pcipass.persist.platform import (
    PCIPASS_MODPROBE_FILE,
    RHEL5_MODPROBE_FILE,
    PersistMethod,
    Platform,
    StubState,
)

MARKER_PREFIX = "# pcipass:"

#: First lines of a modprobe file pcipass creates (so it can delete it again).
HEADER = (
    b"# Managed by pcipass: PCI devices hidden from the host at boot.\n"
    b'# A "# pcipass:" comment marks the line below it as pcipass\'s; '
    b"`pcipass unhide --persist` removes those.\n"
)

#: modprobe.d directories in kmod's order of precedence (a file name found in
#: an earlier directory hides the same name in later ones).
MODPROBE_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
)

_XEN_STUBS = frozenset({"pciback", "xen_pciback"})
_VFIO_STUB = "vfio_pci"
_DEVICE_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_SPACE = " \t"  # kmod's strtok delimiters
_ISSPACE = " \t\n\v\f\r"  # the kernel's isspace(), used by parse_args()


def module_key(name: str) -> str:
    """kmod's ``underscores()``: ``xen-pciback`` and ``xen_pciback`` are one module."""
    return name.replace("-", "_")


# --------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistFinding:
    """A problem in persistent configuration (feeds ``pcipass check``)."""

    rule: str  # PP009 (hide-merge) or PP010 (reload-or-reboot / drift)
    code: str  # stable short name, e.g. "duplicate-hide"
    severity: str  # "error" or "warning"
    subject: str  # "path:line"
    problem: str
    remedy: str = ""
    path: str | None = None
    line: int | None = None

    def render(self) -> str:
        text = f"{self.subject}: [{self.rule}] {self.problem}"
        return f"{text} ({self.remedy})" if self.remedy else text

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "code": self.code,
            "severity": self.severity,
            "subject": self.subject,
            "problem": self.problem,
            "remedy": self.remedy,
            "path": self.path,
            "line": self.line,
        }


# --------------------------------------------------------------------------
# The line model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One ``name=value`` of an options line; indices into the logical text."""

    name: str
    start: int  # index of the first character of the name
    value_start: int
    value_end: int  # after the value (before a closing quote)
    end: int  # after the whole parameter (after a closing quote)

    @property
    def key(self) -> str:
        # The kernel's parameq() treats - and _ alike in parameter names.
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Logical:
    """One logical line (after kmod's unwrapping), with where it lies in the file."""

    first_line: int  # 1-based physical line number
    start: int  # byte offset of the first physical line
    end: int  # byte offset after the terminating newline (or end of file)
    text: str  # latin-1 decoded: one character per byte
    offsets: Sequence[int]  # file offset of each character of text
    terminated: bool

    @property
    def words(self) -> list[str]:
        return [w for w in re.split(r"[ \t]+", self.text) if w]

    @property
    def command(self) -> str:
        if not self.text or self.text[0] == "#":
            return ""
        words = self.words
        return words[0] if words else ""

    @property
    def is_marker(self) -> bool:
        return self.text.startswith(MARKER_PREFIX)

    def offset_after(self, index: int) -> int:
        """File offset just after the character at ``index``."""
        return self.offsets[index] + 1


def split_logical(data: bytes) -> list[Logical]:
    """Split ``data`` into logical lines exactly as kmod's getline_wrapped does."""
    lines: list[Logical] = []
    n = len(data)
    pos = 0
    physical = 1
    while pos < n:
        start = pos
        first = physical
        newline = data.find(b"\n", pos)
        end = n if newline < 0 else newline
        if data.find(b"\\", pos, end) < 0:
            # No backslash: the physical line is the logical line (the common case).
            text = data[pos:end].decode("latin-1")
            terminated = newline >= 0
            pos = end + 1 if terminated else end
            physical += 1 if terminated else 0
            lines.append(Logical(first, start, pos, text, range(start, end), terminated))
            continue
        chars: list[int] = []
        offsets: list[int] = []
        terminated = False
        while pos < n:
            byte = data[pos]
            if byte == 0x0A:
                pos += 1
                physical += 1
                terminated = True
                break
            if byte == 0x5C:  # backslash
                if pos + 1 < n and data[pos + 1] == 0x0A:
                    pos += 2
                    physical += 1
                    continue
                if pos + 1 < n:
                    chars.append(data[pos + 1])
                    offsets.append(pos + 1)
                    pos += 2
                    continue
                pos += 1  # a lone backslash at end of file: kmod drops it too
                continue
            chars.append(byte)
            offsets.append(pos)
            pos += 1
        text = bytes(chars).decode("latin-1")
        lines.append(Logical(first, start, pos, text, tuple(offsets), terminated))
    return lines


@dataclass(frozen=True)
class Directive:
    """A logical line that is a modprobe command, with its marker (if any)."""

    line: Logical
    command: str  # options, install, softdep, alias, blacklist, remove
    module: str  # as written (the alias name for ``alias``)
    target: str  # alias: the module it names; others: ""
    rest_start: int  # index in line.text where the options/command text starts
    marker: Marker | None

    @property
    def key(self) -> str:
        return module_key(self.module)

    @property
    def rest(self) -> str:
        return self.line.text[self.rest_start :]

    def params(self) -> list[Param]:
        return parse_params(self.line.text, self.rest_start) if self.command == "options" else []

    def last_param(self, key: str) -> Param | None:
        found = [p for p in self.params() if p.key == key]
        return found[-1] if found else None


@dataclass(frozen=True)
class Marker:
    """A ``# pcipass:`` comment and what it says about the next line."""

    line: Logical
    whole_line: bool = False  # "line"
    param: bool = False  # "param"
    hide: tuple[PciAddress, ...] = ()
    ids: tuple[tuple[str, PciAddress], ...] = ()
    for_: tuple[PciAddress, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.whole_line or self.param or self.hide or self.ids or self.for_)

    def addresses(self) -> set[PciAddress]:
        return set(self.hide) | {a for _, a in self.ids} | set(self.for_)

    def render(self) -> bytes:
        words: list[str] = []
        if self.whole_line:
            words.append("line")
        if self.param:
            words.append("param")
        if self.hide:
            words.append("hide=" + ",".join(str(a) for a in self.hide))
        if self.ids:
            words.append("ids=" + ",".join(f"{i}@{a}" for i, a in self.ids))
        if self.for_:
            words.append("for=" + ",".join(str(a) for a in self.for_))
        return f"{MARKER_PREFIX} {' '.join(words)}\n".encode()


def _new_marker(for_: tuple[PciAddress, ...] = ()) -> Marker:
    """The marker of a line pcipass is about to write (it has no place yet)."""
    return Marker(Logical(0, 0, 0, "", (), True), whole_line=True, for_=for_)


def parse_marker(line: Logical) -> Marker | None:
    """Read a marker comment; a malformed one is treated as a plain comment."""
    if not line.is_marker:
        return None
    if line.end - line.start != len(line.text) + (1 if line.terminated else 0):
        return None  # pcipass writes markers as one plain physical line, never wrapped
    marker = Marker(line)
    try:
        for word in line.text[len(MARKER_PREFIX) :].split():
            name, _, value = word.partition("=")
            items = [v for v in value.split(",") if v]
            if word == "line":
                marker = replace(marker, whole_line=True)
            elif word == "param":
                marker = replace(marker, param=True)
            elif name == "hide":
                marker = replace(marker, hide=tuple(PciAddress.parse(v) for v in items))
            elif name == "for":
                marker = replace(marker, for_=tuple(PciAddress.parse(v) for v in items))
            elif name == "ids":
                pairs = []
                for item in items:
                    device_id, _, address = item.partition("@")
                    pairs.append((normalise_device_id(device_id), PciAddress.parse(address)))
                marker = replace(marker, ids=tuple(pairs))
            else:
                return None
    except UsageError:
        return None
    return marker


def parse_params(text: str, start: int) -> list[Param]:
    """Split an options string like the kernel's ``next_arg()`` (quotes group)."""
    params: list[Param] = []
    i = start
    n = len(text)
    while i < n:
        while i < n and text[i] in _ISSPACE:
            i += 1
        if i >= n:
            break
        begin = i
        in_quote = False
        equals = -1
        while i < n and (in_quote or text[i] not in _ISSPACE):
            if text[i] == '"':
                in_quote = not in_quote
            elif text[i] == "=" and equals < 0 and not in_quote:
                equals = i
            i += 1
        if equals < 0:
            params.append(Param(text[begin:i], begin, i, i, i))
            continue
        value_start, value_end = equals + 1, i
        if value_end - value_start >= 2 and text[value_start] == text[value_end - 1] == '"':
            value_start, value_end = value_start + 1, value_end - 1
        params.append(Param(text[begin:equals], begin, value_start, value_end, i))
    return params


@dataclass(frozen=True)
class Document:
    """A parsed modprobe file: its bytes, logical lines and directives."""

    data: bytes
    lines: tuple[Logical, ...]
    directives: tuple[Directive, ...]

    @classmethod
    def parse(cls, data: bytes | None) -> Document:
        data = data or b""
        lines = tuple(split_logical(data))
        directives: list[Directive] = []
        previous: Logical | None = None
        for line in lines:
            directive = _directive(line, parse_marker(previous) if previous else None)
            if directive is not None:
                directives.append(directive)
            previous = line
        return cls(data, lines, tuple(directives))

    def insertion_point(self) -> int:
        """Where new lines go: the end, or before an unterminated last line.

        A last line without a newline (or ending in a dangling backslash
        continuation) would swallow anything appended after it, so new lines
        go in front of it and it stays last, byte for byte.
        """
        if self.lines and not self.lines[-1].terminated:
            return self.lines[-1].start
        return len(self.data)

    def find(self, command: str, key: str) -> list[Directive]:
        return [d for d in self.directives if d.command == command and d.key == key]


def _directive(line: Logical, marker: Marker | None) -> Directive | None:
    command = line.command
    if command not in ("options", "install", "remove", "softdep", "alias", "blacklist"):
        return None
    text = line.text
    # Find the module word and where the rest starts, as strtok_r does: the
    # rest begins one character after the module name.
    match = re.match(r"[ \t]*\S+[ \t]+(?P<module>[^ \t]+)", text)
    if match is None:
        return None
    module = match.group("module")
    rest_start = match.end() + 1
    target = ""
    if command == "alias":
        words = line.words
        if len(words) < 3:
            return None
        target = words[2]
    elif command in ("options", "install", "remove", "softdep") and rest_start >= len(text):
        return None  # kmod: "ignoring bad line" (nothing after the module name)
    return Directive(line, command, module, target, min(rest_start, len(text)), marker)


# --------------------------------------------------------------------------
# Values: hide=(...)(...) and ids=a:b,c:d
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueItem:
    text: str  # "0000:09:00.0" or "8086:10d3"
    start: int  # index in the logical text of the item's first character
    end: int  # index after its last character (")" included for hide groups)


def hide_items(text: str, start: int, end: int) -> list[tuple[PciAddress, ValueItem]]:
    """The ``(address)`` groups of a hide value, as xen-pciback's sscanf reads them.

    ``pcistub_init`` (drivers/xen/xen-pciback/pci_stub.c) parses
    ``" (%x:%x:%x.%x) %n"`` repeatedly: parentheses are required, a domain
    may be left out, whitespace around groups is allowed.
    """
    value = text[start:end]
    items: list[tuple[PciAddress, ValueItem]] = []
    position = 0
    for match in re.finditer(r"\(([^()]*)\)", value):
        between = value[position : match.start()]
        if between.strip(_ISSPACE):
            raise AddressError(value, f"unexpected text {between.strip()!r} outside parentheses")
        address = PciAddress.parse(match.group(1))
        items.append(
            (address, ValueItem(match.group(1), start + match.start(), start + match.end()))
        )
        position = match.end()
    if value[position:].strip(_ISSPACE):
        raise AddressError(
            value, "xen-pciback needs every address in parentheses: (0000:09:00.0)(0000:0a:04.1)"
        )
    return items


def id_items(text: str, start: int, end: int) -> list[tuple[str, ValueItem]]:
    """The comma-separated ``vendor:device`` entries of a vfio-pci ids value."""
    items: list[tuple[str, ValueItem]] = []
    position = start
    for piece in text[start:end].split(","):
        piece_start, piece_end = position, position + len(piece)
        position = piece_end + 1
        if not piece:
            continue
        items.append((normalise_device_id(piece), ValueItem(piece, piece_start, piece_end)))
    return items


def parse_hide_value(
    text: str, start: int, end: int, kind: str
) -> tuple[tuple[PciAddress, ...], tuple[str, ...], str | None]:
    """A ``hide=`` (addresses) or ``ids=`` (vendor:device) value, and the
    problem the stub would have with it (None when it parses)."""
    try:
        if kind == "hide":
            return tuple(a for a, _ in hide_items(text, start, end)), (), None
        return (), tuple(i for i, _ in id_items(text, start, end)), None
    except UsageError as problem:
        return (), (), problem.problem


def normalise_device_id(text: str) -> str:
    """``8086:10D3`` -> ``8086:10d3``; vfio-pci ``ids=`` entries (vendor:device)."""
    lowered = text.strip().lower()
    if not _DEVICE_ID.match(lowered):
        raise UsageError(f"device id {text!r}", "expected vendor:device in hex, e.g. 8086:10d3", "")
    return lowered


# --------------------------------------------------------------------------
# What to write
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HideDevice:
    """One device to hide at boot.

    ``driver`` is the host driver that would otherwise claim it (bnx2): it
    gets the install/softdep line that loads the stub first.  ``device_id``
    (``8086:10d3``) is needed for vfio-pci, which matches by id, not address.
    """

    address: PciAddress
    driver: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        if self.driver is not None:
            # The driver name ends up in an install command run by /bin/sh.
            safe_name("driver", self.driver)
        if self.device_id is not None:
            object.__setattr__(self, "device_id", normalise_device_id(self.device_id))


@dataclass(frozen=True)
class HidePlan:
    """What ``hide --persist`` writes into one modprobe file."""

    form: PersistMethod  # RHEL5 or MODPROBE_D
    backend: Backend
    stub_module: str  # the stub that exists on the platform: pciback, xen-pciback, vfio-pci
    devices: tuple[HideDevice, ...]

    def __post_init__(self) -> None:
        if self.form is PersistMethod.CMDLINE:
            raise UsageError("hide plan", "the cmdline method is written by persist.cmdline")
        if self.form is PersistMethod.RHEL5 and self.backend is Backend.VFIO:
            raise UsageError("hide plan", "the RHEL 5 form hides devices for pciback only")
        expected = {"pciback", "xen_pciback"} if self.backend is Backend.PCIBACK else {"vfio_pci"}
        if module_key(self.stub_module) not in expected:
            raise UsageError(
                f"stub {self.stub_module!r}", f"not a stub for the {self.backend} backend"
            )
        if self.backend is Backend.VFIO:
            for device in self.devices:
                if device.device_id is None:
                    raise UsageError(
                        str(device.address), "vfio-pci ids= needs the vendor:device id"
                    )

    @classmethod
    def for_platform(
        cls,
        platform: Platform,
        backend: Backend,
        devices: Iterable[HideDevice],
        method: PersistMethod | None = None,
    ) -> HidePlan:
        return cls(
            method or platform.method_for(backend),
            backend,
            platform.stub_module(backend),
            tuple(devices),
        )

    @property
    def written_module(self) -> str:
        """The module named in the lines: the document's ``pciback`` for RHEL 5."""
        return "pciback" if self.form is PersistMethod.RHEL5 else self.stub_module

    @property
    def needs_alias(self) -> bool:
        """RHEL 5 lines on a kernel whose stub is xen-pciback (lab-notes §5)."""
        return self.form is PersistMethod.RHEL5 and module_key(self.stub_module) != "pciback"

    @property
    def param(self) -> str:
        return "ids" if self.backend is Backend.VFIO else "hide"


def install_line(driver: str, stub: str = "pciback") -> str:
    """The document's install line (Procedure 15.3 step 1)."""
    return (
        f"install {driver} /sbin/modprobe {stub}; "
        f"/sbin/modprobe --first-time --ignore-install {driver}"
    )


@dataclass(frozen=True)
class AddResult:
    text: bytes
    added: tuple[PciAddress, ...]
    already: tuple[PciAddress, ...]  # hidden already (by pcipass or by the user's own line)


@dataclass(frozen=True)
class RemoveResult:
    text: bytes
    removed: tuple[PciAddress, ...]
    user_held: tuple[tuple[PciAddress, int], ...]  # still hidden by a user line (line number)
    not_found: tuple[PciAddress, ...]


@dataclass(frozen=True)
class _Splice:
    offset: int
    delete: int
    insert: bytes
    order: int = 0  # among inserts at one offset: lower ends up first


def _apply(data: bytes, splices: Sequence[_Splice]) -> bytes:
    result = data
    for splice in sorted(splices, key=lambda s: (s.offset, s.order), reverse=True):
        result = result[: splice.offset] + splice.insert + result[splice.offset + splice.delete :]
    return result


def add_hide(text: bytes | None, plan: HidePlan, *, path: str = "modprobe file") -> bytes:
    """``text`` with ``plan``'s devices hidden (see :func:`plan_add_hide`)."""
    return plan_add_hide(text, plan, path=path).text


def plan_add_hide(text: bytes | None, plan: HidePlan, *, path: str = "modprobe file") -> AddResult:
    """Add the devices of ``plan`` to a modprobe file's text.

    A new hide value is merged into the one effective ``options`` line of the
    stub (PP009: a second line would silently undo the first), or into a new
    line when there is none.  ``text is None`` means the file does not exist;
    the result then starts with :data:`HEADER`.  Raises ConfigSyntaxError
    when the file holds something pcipass cannot merge with safely.
    """
    data = HEADER if text is None else text
    added: list[PciAddress] = []
    already: list[PciAddress] = []
    for device in plan.devices:
        data, was_added = _add_one(data, plan, device, path)
        _verify_hidden(data, plan, device, path)
        (added if was_added else already).append(device.address)
    return AddResult(data, tuple(added), tuple(already))


def _verify_hidden(data: bytes, plan: HidePlan, device: HideDevice, path: str) -> None:
    """Read the result back the way kmod would; refuse an edit that would not work."""
    state = read_one_file(path, data)
    if plan.backend is Backend.VFIO:
        held = device.device_id in state.hidden_ids()
    else:
        held = device.address in state.hidden()
    if not held:
        raise ConfigSyntaxError(
            path,
            f"after pcipass's edit kmod would still not hide {device.address} "
            "(an alias or line in the file redirects it)",
        )


def _stub_group(doc: Document, plan: HidePlan) -> set[str]:
    """Module keys whose options reach the stub (the stub, the written name, aliases)."""
    group = {module_key(plan.stub_module), module_key(plan.written_module)}
    for directive in doc.directives:
        if directive.command == "alias" and module_key(directive.target) in group:
            group.add(directive.key)
    return group


def _add_one(data: bytes, plan: HidePlan, device: HideDevice, path: str) -> tuple[bytes, bool]:
    doc = Document.parse(data)
    group = _stub_group(doc, plan)
    options = [d for d in doc.directives if d.command == "options" and d.key in group]
    with_param = [d for d in options if d.last_param(plan.param) is not None]
    splices: list[_Splice] = []
    new_lines: list[bytes] = []
    address = device.address

    target = with_param[-1] if with_param else None
    if target is not None:
        state = _value_state(target, plan, path)
        if state.holds(device):
            if not state.managed(device, target.marker):
                return data, False  # the user's own line hides it already
            if plan.backend is Backend.VFIO and target.marker is not None:
                marker = target.marker
                if (state.device_id(device), address) not in marker.ids:
                    pairs = (*marker.ids, (state.device_id(device), address))
                    splices.append(_rewrite_marker(target, replace(marker, ids=pairs)))
        else:
            splices.append(_append_to_value(target, plan, device, state))
            marker = target.marker or Marker(target.line)
            if plan.backend is Backend.VFIO:
                assert device.device_id is not None
                marker = replace(marker, ids=(*marker.ids, (device.device_id, address)))
            else:
                marker = replace(marker, hide=(*marker.hide, address))
            splices.append(_set_marker(target, marker))
    elif options:
        # An options line for the stub without the parameter: add it there
        # rather than writing a second options line.
        last = options[-1]
        end = _last_non_space(last.line.text, last.rest_start)
        insert = f" {plan.param}={_first_value(plan, device)}".encode("latin-1")
        splices.append(_Splice(last.line.offset_after(end - 1), 0, insert))
        marker = last.marker or Marker(last.line)
        marker = replace(marker, param=True)
        marker = _with_value_item(marker, plan, device)
        splices.append(_set_marker(last, marker))
    else:
        marker = _with_value_item(_new_marker(), plan, device)
        line = f"options {plan.written_module} {plan.param}={_first_value(plan, device)}\n"
        new_lines.append(marker.render() + line.encode("latin-1"))

    ordering = _ordering_lines(doc, plan, device, path, splices)
    point = doc.insertion_point()
    block = b"".join(ordering + new_lines)
    if block:
        splices.append(_Splice(point, 0, block, order=-1))
    result = _apply(data, splices)
    return result, result != data


@dataclass(frozen=True)
class _ValueState:
    addresses: tuple[PciAddress, ...]
    ids: tuple[str, ...]
    items: tuple[ValueItem, ...]
    param: Param
    backend: Backend

    def device_id(self, device: HideDevice) -> str:
        assert device.device_id is not None
        return device.device_id

    def holds(self, device: HideDevice) -> bool:
        if self.backend is Backend.VFIO:
            return self.device_id(device) in self.ids
        return device.address in self.addresses

    def managed(self, device: HideDevice, marker: Marker | None) -> bool:
        if marker is None:
            return False
        if self.backend is Backend.VFIO:
            return any(i == self.device_id(device) for i, _ in marker.ids)
        return device.address in marker.hide


def _value_state(directive: Directive, plan: HidePlan, path: str) -> _ValueState:
    param = directive.last_param(plan.param)
    assert param is not None
    text = directive.line.text
    try:
        if plan.backend is Backend.VFIO:
            ids = id_items(text, param.value_start, param.value_end)
            found = tuple(i for i, _ in ids)
            return _ValueState((), found, tuple(v for _, v in ids), param, plan.backend)
        groups = hide_items(text, param.value_start, param.value_end)
    except UsageError as error:
        raise ConfigSyntaxError(
            path,
            f"cannot merge into {plan.param}={text[param.value_start : param.value_end]!r}: "
            f"{error.problem}",
            directive.line.first_line,
        ) from None
    return _ValueState(
        tuple(a for a, _ in groups), (), tuple(v for _, v in groups), param, plan.backend
    )


def _last_non_space(text: str, floor: int) -> int:
    end = len(text)
    while end > floor and text[end - 1] in _ISSPACE:
        end -= 1
    return end


def _first_value(plan: HidePlan, device: HideDevice) -> str:
    if plan.backend is Backend.VFIO:
        assert device.device_id is not None
        return device.device_id
    return format_hide_list([device.address])


def _with_value_item(marker: Marker, plan: HidePlan, device: HideDevice) -> Marker:
    if plan.backend is Backend.VFIO:
        assert device.device_id is not None
        return replace(marker, ids=(*marker.ids, (device.device_id, device.address)))
    return replace(marker, hide=(*marker.hide, device.address))


def _append_to_value(
    directive: Directive, plan: HidePlan, device: HideDevice, state: _ValueState
) -> _Splice:
    line = directive.line
    param = state.param
    if plan.backend is Backend.VFIO:
        insert = ("," if state.items else "") + _first_value(plan, device)
    else:
        insert = _first_value(plan, device)
    if param.value_end > param.value_start:
        offset = line.offset_after(param.value_end - 1)
    else:
        # Empty value: right after "=" (or after the opening quote).
        offset = line.offset_after(param.value_start - 1)
    return _Splice(offset, 0, insert.encode("latin-1"))


def _set_marker(directive: Directive, marker: Marker) -> _Splice:
    if directive.marker is not None:
        return _rewrite_marker(directive, marker)
    return _Splice(directive.line.start, 0, marker.render(), order=1)


def _rewrite_marker(directive: Directive, marker: Marker) -> _Splice:
    old = directive.marker
    assert old is not None
    return _Splice(old.line.start, old.line.end - old.line.start, marker.render())


def _ordering_lines(
    doc: Document, plan: HidePlan, device: HideDevice, path: str, splices: list[_Splice]
) -> list[bytes]:
    """The alias/install/softdep lines that make the stub load before the driver."""
    new: list[bytes] = []
    address = device.address
    stub = plan.stub_module
    if plan.needs_alias:
        aliases = doc.find("alias", "pciback")
        if not aliases:
            marker = _new_marker(for_=(address,))
            new.append(marker.render() + f"alias pciback {stub}\n".encode("latin-1"))
        else:
            alias = aliases[0]
            if module_key(alias.target) != module_key(stub):
                raise ConfigSyntaxError(
                    path,
                    f"'alias pciback {alias.target}' points pciback elsewhere, not at {stub}",
                    alias.line.first_line,
                )
            _extend_for(alias, address, splices)
    written = module_key(plan.written_module)
    for alias in doc.find("alias", written):
        if not plan.needs_alias and module_key(alias.target) != written:
            raise ConfigSyntaxError(
                path,
                f"'alias {alias.module} {alias.target}' sends {plan.written_module} to another "
                "module, so its options would not reach the stub",
                alias.line.first_line,
            )
    if device.driver is None:
        return new
    driver = device.driver
    if plan.form is PersistMethod.RHEL5:
        installs = doc.find("install", module_key(driver))
        if not installs:
            marker = _new_marker(for_=(address,))
            new.append(marker.render() + (install_line(driver) + "\n").encode("latin-1"))
            return new
        first = installs[0]  # kmod and module-init-tools run the first one only
        if not _loads_stub(first.rest, plan):
            raise ConfigSyntaxError(
                path,
                f"{driver} already has its own install command, which does not load pciback; "
                f"pcipass will not merge shell commands (add '/sbin/modprobe pciback;' to it)",
                first.line.first_line,
            )
        _extend_for(first, address, splices)
        return new
    softdeps = doc.find("softdep", module_key(driver))
    if not softdeps:
        marker = _new_marker(for_=(address,))
        new.append(marker.render() + f"softdep {driver} pre: {stub}\n".encode("latin-1"))
        return new
    first = softdeps[0]  # kmod uses the first softdep of a module only
    if not _softdep_loads(first.rest, stub):
        raise ConfigSyntaxError(
            path,
            f"{driver} already has a softdep without {stub}; kmod uses only the first softdep "
            f"of a module (add '{stub}' to its pre: list)",
            first.line.first_line,
        )
    _extend_for(first, address, splices)
    return new


def _extend_for(directive: Directive, address: PciAddress, splices: list[_Splice]) -> None:
    marker = directive.marker
    if marker is None or not marker.whole_line or not marker.for_ or address in marker.for_:
        return  # the user's own line (or already ours for this device): leave it be
    splices.append(_rewrite_marker(directive, replace(marker, for_=(*marker.for_, address))))


def _loads_stub(command: str, plan: HidePlan) -> bool:
    names = "|".join(re.escape(n) for n in ("pciback", "xen-pciback", "xen_pciback"))
    return re.search(rf"modprobe\s+(?:-\S+\s+)*(?:{names})(?:\s|;|$)", command) is not None


def _softdep_loads(rest: str, stub: str) -> bool:
    words = rest.split()
    if "pre:" not in words:
        return False
    pre = words[words.index("pre:") + 1 :]
    if "post:" in pre:
        pre = pre[: pre.index("post:")]
    return module_key(stub) in {module_key(w) for w in pre}


# --------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------


def remove_hide(
    text: bytes | None, addresses: Iterable[PciAddress], *, path: str = "modprobe file"
) -> bytes:
    """``text`` without what pcipass added for ``addresses`` (see :func:`plan_remove_hide`)."""
    return plan_remove_hide(text, addresses, path=path).text


def plan_remove_hide(
    text: bytes | None, addresses: Iterable[PciAddress], *, path: str = "modprobe file"
) -> RemoveResult:
    """Remove exactly what the pcipass markers say was added for ``addresses``.

    An address in a hide value pcipass did not add is ``user_held``: the
    user's own line stays as it is, and the caller says so.  An install or
    softdep line stays while another device still needs it; a hide value
    loses just the address, and the line (or the parameter pcipass appended)
    goes when it is empty.
    """
    data = text or b""
    removed: list[PciAddress] = []
    held: list[tuple[PciAddress, int]] = []
    missing: list[PciAddress] = []
    for address in addresses:
        data, was_removed, user_line = _remove_one(data, address, path)
        if was_removed:
            removed.append(address)
        if user_line is not None:
            held.append((address, user_line))
        if not was_removed and user_line is None:
            missing.append(address)
    return RemoveResult(data, tuple(removed), tuple(held), tuple(missing))


def only_header_left(data: bytes | None) -> bool:
    """True when a file pcipass created holds nothing but its header: delete it."""
    return data is not None and data == HEADER


def _remove_one(data: bytes, address: PciAddress, path: str) -> tuple[bytes, bool, int | None]:
    doc = Document.parse(data)
    splices: list[_Splice] = []
    removed = False
    user_line: int | None = None
    for directive in doc.directives:
        marker = directive.marker
        ours = marker is not None and address in marker.addresses()
        if directive.command == "options":
            held = _holds_unmarked(directive, address, marker)
            if held:
                user_line = directive.line.first_line
            if ours:
                assert marker is not None
                splices.extend(_remove_from_options(directive, marker, address, path))
                removed = True
        elif marker is not None and marker.whole_line and address in marker.for_:
            remaining = tuple(a for a in marker.for_ if a != address)
            if remaining:
                splices.append(_rewrite_marker(directive, replace(marker, for_=remaining)))
            else:
                splices.append(_delete_directive(directive))
            removed = True
    return _apply(data, splices), removed, user_line


def _holds_unmarked(directive: Directive, address: PciAddress, marker: Marker | None) -> bool:
    param = directive.last_param("hide")
    if param is None:
        return False
    try:
        groups = hide_items(directive.line.text, param.value_start, param.value_end)
    except UsageError:
        return False
    ours = set(marker.hide) if marker is not None else set()
    return any(a == address and a not in ours for a, _ in groups)


def _delete_directive(directive: Directive) -> _Splice:
    start = directive.marker.line.start if directive.marker is not None else directive.line.start
    return _Splice(start, directive.line.end - start, b"")


def _remove_from_options(
    directive: Directive, marker: Marker, address: PciAddress, path: str
) -> list[_Splice]:
    """Take ``address`` out of an options line pcipass added to or wrote."""
    text = directive.line.text
    new_marker = replace(
        marker,
        hide=tuple(a for a in marker.hide if a != address),
        ids=tuple((i, a) for i, a in marker.ids if a != address),
    )
    if any(a == address for _, a in marker.ids):
        key = "ids"
        # vfio-pci matches every device with an id: keep an id another of
        # pcipass's devices still needs.
        drop_ids = {i for i, a in marker.ids if a == address} - {i for i, _ in new_marker.ids}
    elif address in marker.hide:
        key, drop_ids = "hide", set()
    else:
        return [_marker_or_delete(directive, new_marker)]
    param = directive.last_param(key)
    if param is None:  # the parameter was edited away by hand: just forget it
        return [_marker_or_delete(directive, new_marker)]
    try:
        if key == "ids":
            pairs = [(v, i) for i, v in id_items(text, param.value_start, param.value_end)]
        else:
            groups = hide_items(text, param.value_start, param.value_end)
            pairs = [(v, str(a)) for a, v in groups]
    except UsageError as error:
        raise ConfigSyntaxError(
            path, f"cannot edit {key}=: {error.problem}", directive.line.first_line
        ) from None
    if key == "ids":
        drop = [v for v, i in pairs if i in drop_ids]
    else:
        drop = [v for v, a in pairs if a == str(address)]
    if drop and len(drop) == len(pairs):
        if marker.param:  # pcipass appended the parameter to an existing line
            return [
                _delete_param(directive, param),
                _marker_or_delete(directive, replace(new_marker, param=False)),
            ]
        if marker.whole_line and not (new_marker.hide or new_marker.ids):
            return [_delete_directive(directive)]
    splices = [_marker_or_delete(directive, new_marker)]
    splices.extend(_delete_items(directive, drop, comma=(key == "ids")))
    return splices


def _marker_or_delete(directive: Directive, marker: Marker) -> _Splice:
    """Rewrite the marker, or drop it when it no longer names anything."""
    if not (marker.hide or marker.ids or marker.for_):
        old = directive.marker
        assert old is not None
        return _Splice(old.line.start, old.line.end - old.line.start, b"")
    return _rewrite_marker(directive, marker)


def _delete_param(directive: Directive, param: Param) -> _Splice:
    line = directive.line
    text = line.text
    begin = param.start
    while begin > directive.rest_start and text[begin - 1] in _SPACE:
        begin -= 1
    end = param.end
    start_offset = line.offsets[begin] if begin < len(text) else line.offsets[-1] + 1
    end_offset = line.offset_after(end - 1)
    return _Splice(start_offset, end_offset - start_offset, b"")


def _delete_items(directive: Directive, drop: list[ValueItem], *, comma: bool) -> list[_Splice]:
    line = directive.line
    text = line.text
    splices: list[_Splice] = []
    for item in drop:
        begin, end = item.start, item.end
        if comma:
            if begin > 0 and text[begin - 1] == ",":
                begin -= 1  # ",ID" is what pcipass appends
            elif end < len(text) and text[end] == ",":
                end += 1
        start_offset = line.offsets[begin]
        end_offset = line.offset_after(end - 1)
        splices.append(_Splice(start_offset, end_offset - start_offset, b""))
    return splices


# --------------------------------------------------------------------------
# Reading what is configured (all modprobe files of a host)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HideEntry:
    """One ``hide=`` or ``ids=`` value in one options line."""

    path: str
    line: int
    module: str  # as written
    stub: str  # the module it reaches, kmod-normalised: pciback, xen_pciback, vfio_pci
    param: str  # hide or ids
    value: str
    addresses: tuple[PciAddress, ...]
    ids: tuple[str, ...]
    managed: bool  # a pcipass marker stands before it
    effective: bool = True  # False: a later value for the same stub replaces it (PP009)
    error: str | None = None  # the value cannot be parsed (the stub would reject it)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "module": self.module,
            "stub": self.stub,
            "param": self.param,
            "value": self.value,
            "addresses": [str(a) for a in self.addresses],
            "ids": list(self.ids),
            "managed": self.managed,
            "effective": self.effective,
            "error": self.error,
        }


@dataclass(frozen=True)
class OrderingEntry:
    """An install, softdep or alias line that concerns a stub or a hidden device's driver."""

    path: str
    line: int
    command: str
    module: str  # the driver (install/softdep) or the alias name
    text: str
    loads: tuple[str, ...]  # stub keys it loads first (install/softdep) or names (alias)
    managed: bool


@dataclass(frozen=True)
class PersistentState:
    """What the modprobe configuration hides at the next boot, after kmod's rules."""

    entries: tuple[HideEntry, ...]
    ordering: tuple[OrderingEntry, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias key -> module key
    files: tuple[str, ...] = ()  # in the order kmod reads them
    ignored_files: tuple[str, ...] = ()  # present but never read (name, or shadowed)

    def hidden(self, stub: str | None = None) -> frozenset[PciAddress]:
        """Addresses the effective hide values name (optionally for one stub)."""
        return frozenset(
            a
            for e in self.entries
            if e.effective and e.param == "hide" and (stub is None or e.stub == module_key(stub))
            for a in e.addresses
        )

    def hidden_ids(self) -> frozenset[str]:
        return frozenset(i for e in self.entries if e.effective and e.param == "ids" for i in e.ids)

    def source_of(self, address: PciAddress) -> HideEntry | None:
        for entry in self.entries:
            if entry.effective and address in entry.addresses:
                return entry
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "hidden": sorted(str(a) for a in self.hidden()),
            "ids": sorted(self.hidden_ids()),
            "entries": [e.to_json() for e in self.entries],
            "files": list(self.files),
            "ignored_files": list(self.ignored_files),
        }


def kmod_file_order(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """Order config files as kmod reads them; return (read, ignored).

    kmod (``conf_files_list``) keeps ``*.conf`` (and ``*.alias``) files not
    starting with a dot, sorts them by file name across all directories, and a
    name in an earlier directory hides the same name in later ones.
    ``/etc/modprobe.conf`` (module-init-tools only) is put first.
    """
    read: dict[str, str] = {}
    ignored: list[str] = []
    first: list[str] = []
    rank = {d: i for i, d in enumerate(MODPROBE_DIRS)}

    def dir_rank(p: str) -> int:
        return rank.get(p.rsplit("/", 1)[0], len(rank))

    for path in sorted(paths, key=dir_rank):
        if path == RHEL5_MODPROBE_FILE:
            first.append(path)
            continue
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".") or not (name.endswith(".conf") or name.endswith(".alias")):
            ignored.append(path)
            continue
        if name in read:
            ignored.append(path)
            continue
        read[name] = path
    return first + [read[n] for n in sorted(read)], ignored


def collect_modprobe_files(root: HostRoot) -> dict[str, bytes]:
    """Every modprobe configuration file of a host, keyed by its host path.

    Links are resolved inside the root as a chroot would (``/lib -> /usr/lib``
    of an image stays in the image); nothing is read outside it.
    """
    files: dict[str, bytes] = {}
    confined = root.files
    for path in [RHEL5_MODPROBE_FILE] + [
        f"{directory}/{name}"
        for directory in MODPROBE_DIRS
        for name in confined.list_dir(directory)
    ]:
        data = confined.read_bytes(path) if confined.is_file(path) else None
        if data is not None:
            files[path] = data
    return files


def read_persistent_hides(files: Mapping[str, bytes]) -> PersistentState:
    """What the given modprobe files hide, after kmod's rules.

    Options given for an alias name (``alias pciback xen-pciback`` +
    ``options pciback hide=...``) count for the module it names, as kmod
    applies them when the module is loaded through the alias (which is what
    the document's install line does).
    """
    order, ignored = kmod_file_order(files)
    return _state([(p, Document.parse(files[p])) for p in order], ignored)


def read_one_file(path: str, data: bytes | None) -> PersistentState:
    """What one modprobe file hides on its own, whatever its name."""
    return _state([(path, Document.parse(data))], [])


def _state(parsed: list[tuple[str, Document]], ignored: list[str]) -> PersistentState:
    order = [path for path, _doc in parsed]
    aliases: dict[str, str] = {}
    for _path, doc in parsed:
        for directive in doc.directives:
            if directive.command == "alias" and directive.key not in aliases:
                aliases[directive.key] = module_key(directive.target)
    entries: list[HideEntry] = []
    ordering: list[OrderingEntry] = []
    for path, doc in parsed:
        for directive in doc.directives:
            stub = aliases.get(directive.key, directive.key)
            if directive.command == "options" and stub in (*_XEN_STUBS, _VFIO_STUB):
                entries.extend(_entries(path, directive, stub))
            elif directive.command in ("install", "softdep", "alias"):
                entry = _ordering_entry(path, directive, aliases)
                if entry is not None:
                    ordering.append(entry)
    return PersistentState(
        tuple(_mark_effective(entries)), tuple(ordering), aliases, tuple(order), tuple(ignored)
    )


def _entries(path: str, directive: Directive, stub: str) -> list[HideEntry]:
    param_name = "ids" if stub == _VFIO_STUB else "hide"
    text = directive.line.text
    managed = directive.marker is not None
    result: list[HideEntry] = []
    for param in directive.params():
        if param.key != param_name:
            continue
        value = text[param.value_start : param.value_end]
        addresses, ids, error = parse_hide_value(
            text, param.value_start, param.value_end, param_name
        )
        result.append(
            HideEntry(
                path,
                directive.line.first_line,
                directive.module,
                stub,
                param_name,
                value,
                addresses,
                ids,
                managed,
                True,
                error,
            )
        )
    return result


def _mark_effective(entries: list[HideEntry]) -> list[HideEntry]:
    # hide and ids are single-valued parameters: the kernel keeps the last one.
    last: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        last[(entry.stub, entry.param)] = index
    return [replace(e, effective=(last[(e.stub, e.param)] == i)) for i, e in enumerate(entries)]


def _ordering_entry(
    path: str, directive: Directive, aliases: Mapping[str, str]
) -> OrderingEntry | None:
    managed = directive.marker is not None and directive.marker.whole_line
    text = directive.line.text
    line = directive.line.first_line
    if directive.command == "alias":
        target = module_key(directive.target)
        if directive.key in _XEN_STUBS or target in (*_XEN_STUBS, _VFIO_STUB):
            return OrderingEntry(path, line, "alias", directive.module, text, (target,), managed)
        return None
    if directive.command == "install":
        loads = tuple(
            sorted(
                {
                    aliases.get(module_key(m), module_key(m))
                    for m in re.findall(r"modprobe\s+(?:-\S+\s+)*([A-Za-z0-9_-]+)", directive.rest)
                }
                & {*_XEN_STUBS, _VFIO_STUB, "pciback"}
            )
        )
        return OrderingEntry(path, line, "install", directive.module, text, loads, managed)
    words = directive.rest.split()
    pre = words[words.index("pre:") + 1 :] if "pre:" in words else []
    if "post:" in pre:
        pre = pre[: pre.index("post:")]
    loads = tuple(sorted({aliases.get(module_key(w), module_key(w)) for w in pre}))
    return OrderingEntry(path, line, "softdep", directive.module, text, loads, managed)


# --------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------


def findings(state: PersistentState, platform: Platform | None = None) -> list[PersistFinding]:
    """PP009 (a hide value overridden by a later one) and the silent failures
    of persistent hiding (PP010): the RHEL 5 lines on a xen-pciback kernel,
    /etc/modprobe.conf on a kmod system, options for a built-in stub, values
    the stub cannot parse, install lines kmod will not run."""
    result: list[PersistFinding] = []
    result.extend(_duplicate_findings(state))
    result.extend(_value_findings(state))
    result.extend(_ordering_findings(state))
    if platform is not None:
        result.extend(_platform_findings(state, platform))
    return result


def _where(path: str, line: int) -> str:
    return f"{path}:{line}"


def _duplicate_findings(state: PersistentState) -> list[PersistFinding]:
    result: list[PersistFinding] = []
    for entry in state.entries:
        if entry.effective:
            continue
        winner = next(
            e
            for e in state.entries
            if e.effective and e.stub == entry.stub and e.param == entry.param
        )
        lost = [a for a in entry.addresses if a not in winner.addresses]
        lost_ids = [i for i in entry.ids if i not in winner.ids]
        same = [e for e in state.entries if e.stub == entry.stub and e.param == entry.param]
        if entry.param == "hide":
            merged = list(dict.fromkeys(a for e in same for a in e.addresses))
            fix = f"options {winner.module} hide={format_hide_list(merged)}"
            lost_text = ", ".join(str(a) for a in lost) or "nothing new"
        else:
            merged_ids = list(dict.fromkeys(i for e in same for i in e.ids))
            fix = f"options {winner.module} ids={','.join(merged_ids)}"
            lost_text = ", ".join(lost_ids) or "nothing new"
        result.append(
            PersistFinding(
                "PP009",
                "duplicate-" + entry.param,
                "error" if (lost or lost_ids) else "warning",
                _where(entry.path, entry.line),
                f"{entry.param}= for {entry.stub.replace('_', '-')} is given again at "
                f"{_where(winner.path, winner.line)}; the kernel keeps only the last value, "
                f"so this one is lost at boot (not hidden: {lost_text})",
                f"merge them into one line: {fix}",
                entry.path,
                entry.line,
            )
        )
    return result


def _value_findings(state: PersistentState) -> list[PersistFinding]:
    return [
        PersistFinding(
            "PP010",
            "bad-" + e.param,
            "error",
            _where(e.path, e.line),
            f"{e.param}={e.value!r} cannot be parsed ({e.error}); the stub logs a parse error "
            "and hides nothing from it",
            "write each address as (DDDD:BB:DD.F), e.g. hide=(0000:09:00.0)(0000:0a:04.1)"
            if e.param == "hide"
            else "write ids as vendor:device[,vendor:device], e.g. ids=8086:10d3",
            e.path,
            e.line,
        )
        for e in state.entries
        if e.error is not None
    ]


def _ordering_findings(state: PersistentState) -> list[PersistFinding]:
    """kmod runs the first install of a module only, and none if it has a softdep."""
    result: list[PersistFinding] = []
    installs: dict[str, OrderingEntry] = {}
    softdeps: dict[str, OrderingEntry] = {}
    for entry in state.ordering:
        key = module_key(entry.module)
        if entry.command == "install":
            if key in installs and entry.loads:
                first = installs[key]
                result.append(_shadowed(entry, first, "install command"))
            installs.setdefault(key, entry)
        elif entry.command == "softdep":
            if key in softdeps and entry.loads:
                first = softdeps[key]
                if not set(entry.loads) <= set(first.loads):
                    result.append(_shadowed(entry, first, "softdep"))
            softdeps.setdefault(key, entry)
    for key, install in installs.items():
        if install.loads and key in softdeps:
            soft = softdeps[key]
            if not set(install.loads) & set(soft.loads):
                result.append(
                    PersistFinding(
                        "PP010",
                        "install-ignored-softdep",
                        "error",
                        _where(install.path, install.line),
                        f"kmod ignores this install command because {install.module} has a "
                        f"softdep at {_where(soft.path, soft.line)}, so the stub is not loaded "
                        "first",
                        f"add the stub to that softdep's pre: list "
                        f"(softdep {install.module} pre: {install.loads[0].replace('_', '-')})",
                        install.path,
                        install.line,
                    )
                )
    return result


def _shadowed(entry: OrderingEntry, first: OrderingEntry, what: str) -> PersistFinding:
    return PersistFinding(
        "PP010",
        "shadowed-" + entry.command,
        "error",
        _where(entry.path, entry.line),
        f"kmod uses only the first {what} of {entry.module} "
        f"({_where(first.path, first.line)}), so this one never runs",
        "merge the two into the first one",
        entry.path,
        entry.line,
    )


def _platform_findings(state: PersistentState, platform: Platform) -> list[PersistFinding]:
    result: list[PersistFinding] = []
    pciback_exists = platform.stub_state("pciback") in (StubState.MODULE, StubState.BUILTIN)
    alias_ok = state.aliases.get("pciback") in ("xen_pciback",)
    release = platform.kernel_release or "this kernel"
    if platform.xen_stub == "xen-pciback" and not pciback_exists and not alias_ok:
        for entry in [e for e in state.entries if e.stub == "pciback"]:
            result.append(_rhel5_finding(entry.path, entry.line, release))
        for order in state.ordering:
            if order.command == "install" and "pciback" in order.loads:
                result.append(_rhel5_finding(order.path, order.line, release))
    if not platform.reads_modprobe_conf:
        for entry in state.entries:
            if entry.path == RHEL5_MODPROBE_FILE:
                result.append(
                    PersistFinding(
                        "PP010",
                        "modprobe-conf-ignored",
                        "error",
                        _where(entry.path, entry.line),
                        "kmod does not read /etc/modprobe.conf, so this hides nothing at boot",
                        f"move the lines to {PCIPASS_MODPROBE_FILE} "
                        "(pcipass hide --persist writes them there)",
                        entry.path,
                        entry.line,
                    )
                )
    for entry in state.entries:
        if platform.stub_state(entry.stub) is StubState.BUILTIN:
            name = entry.stub.replace("_", "-")
            flag = "vfio-pci.ids" if entry.param == "ids" else f"{name}.hide"
            result.append(
                PersistFinding(
                    "PP010",
                    "options-for-builtin",
                    "error",
                    _where(entry.path, entry.line),
                    f"{entry.stub.replace('_', '-')} is built into {release}; modprobe options "
                    "never reach a built-in module",
                    f"use the kernel command line ({flag}=...; pcipass hide --persist "
                    "--platform cmdline)",
                    entry.path,
                    entry.line,
                )
            )
    return result


def _rhel5_finding(path: str, line: int, release: str) -> PersistFinding:
    return PersistFinding(
        "PP010",
        "rhel5-form-on-xen-pciback",
        "error",
        _where(path, line),
        f"names the module pciback, which {release} does not have (it is xen-pciback): "
        "modprobe prints 'Module pciback not found', the host driver takes the device and "
        "still exits 0",
        "add the line 'alias pciback xen-pciback' (pcipass hide --persist does this), "
        "or use options xen-pciback",
        path,
        line,
    )


def repair_rhel5_alias(text: bytes, addresses: Sequence[PciAddress] = ()) -> bytes:
    """Add ``alias pciback xen-pciback`` (marked as pcipass's) to a RHEL 5 file."""
    doc = Document.parse(text)
    if doc.find("alias", "pciback"):
        return text
    marker = _new_marker(for_=tuple(addresses))
    block = marker.render() + b"alias pciback xen-pciback\n"
    return _apply(text, [_Splice(doc.insertion_point(), 0, block)])
