"""What the host's modprobe files configure, read across all of them.

``options`` lines for one module are concatenated in file order (files
sorted by name across the modprobe.d directories) and the kernel command line
comes last; ``hide`` and ``ids`` are charp/string parameters, so when one is
given twice the kernel keeps the *last* value.  Only the *first* ``install``
and the *first* ``softdep`` for a module count, and a module that has a
softdep has its install command ignored (``mod->ignorecmd``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pcipass.host.persisted import HideEntry, OrderingEntry, PersistentState, module_key
from pcipass.host.platform import (
    RHEL5_MODPROBE_FILE,
)
from pcipass.host.root import HostRoot
from pcipass.persist.modprobe.syntax import (
    VFIO_STUB_KEY,
    XEN_STUB_KEYS,
    Directive,
    Document,
)
from pcipass.persist.stub_values import parse_hide_value
from pcipass.record import replace

#: modprobe.d directories in kmod's order of precedence (a file name found in
#: an earlier directory hides the same name in later ones).
MODPROBE_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
)

# --------------------------------------------------------------------------
# Reading what is configured (all modprobe files of a host)
# --------------------------------------------------------------------------


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
            if directive.command == "options" and stub in (*XEN_STUB_KEYS, VFIO_STUB_KEY):
                entries.extend(_entries(path, directive, stub))
            elif directive.command in ("install", "softdep", "alias"):
                entry = _ordering_entry(path, directive, aliases)
                if entry is not None:
                    ordering.append(entry)
    return PersistentState(
        tuple(_mark_effective(entries)), tuple(ordering), aliases, tuple(order), tuple(ignored)
    )


def _entries(path: str, directive: Directive, stub: str) -> list[HideEntry]:
    param_name = "ids" if stub == VFIO_STUB_KEY else "hide"
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
        if directive.key in XEN_STUB_KEYS or target in (*XEN_STUB_KEYS, VFIO_STUB_KEY):
            return OrderingEntry(path, line, "alias", directive.module, text, (target,), managed)
        return None
    if directive.command == "install":
        loads = tuple(
            sorted(
                {
                    aliases.get(module_key(m), module_key(m))
                    for m in re.findall(r"modprobe\s+(?:-\S+\s+)*([A-Za-z0-9_-]+)", directive.rest)
                }
                & {*XEN_STUB_KEYS, VFIO_STUB_KEY, "pciback"}
            )
        )
        return OrderingEntry(path, line, "install", directive.module, text, loads, managed)
    words = directive.rest.split()
    pre = words[words.index("pre:") + 1 :] if "pre:" in words else []
    if "post:" in pre:
        pre = pre[: pre.index("post:")]
    loads = tuple(sorted({aliases.get(module_key(w), module_key(w)) for w in pre}))
    return OrderingEntry(path, line, "softdep", directive.module, text, loads, managed)
