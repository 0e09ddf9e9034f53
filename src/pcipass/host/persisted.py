"""What the host's boot configuration hides, as parsed data (no I/O, no rules).

``persist/`` reads the modprobe files and the kernel command lines into these
types; the rules about them (PP009, PP010) live in ``policy/persist_rules.py``,
which may import this module but nothing of ``persist/``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipass.address import PciAddress
from pcipass.record import dataclass, field


def module_key(name: str) -> str:
    """kmod's ``underscores()``: ``xen-pciback`` and ``xen_pciback`` are one module."""
    return name.replace("-", "_")


# --------------------------------------------------------------------------
# modprobe files
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


# --------------------------------------------------------------------------
# kernel command lines
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CmdlineToken:
    """One hiding parameter on a kernel command line."""

    where: str  # "/proc/cmdline" or "GRUB_CMDLINE_LINUX (/etc/default/grub:5)"
    param: str  # as written: xen-pciback.hide
    stub: str  # kmod-normalised module: xen_pciback, pciback, vfio_pci
    kind: str  # hide or ids
    value: str
    start: int  # index in the command line text of the parameter name
    value_start: int
    end: int  # after the whole parameter
    addresses: tuple[PciAddress, ...] = ()
    ids: tuple[str, ...] = ()
    error: str | None = None
    effective: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "where": self.where,
            "param": self.param,
            "value": self.value,
            "addresses": [str(a) for a in self.addresses],
            "ids": list(self.ids),
            "error": self.error,
            "effective": self.effective,
        }


@dataclass(frozen=True)
class CmdlineHides:
    """The hiding parameters of one kernel command line, last one winning."""

    tokens: tuple[CmdlineToken, ...]

    def hidden(self, stub: str | None = None) -> frozenset[PciAddress]:
        return frozenset(
            a
            for t in self.tokens
            if t.effective and t.kind == "hide" and (stub is None or t.stub == module_key(stub))
            for a in t.addresses
        )

    def hidden_ids(self) -> frozenset[str]:
        return frozenset(i for t in self.tokens if t.effective and t.kind == "ids" for i in t.ids)

    def to_json(self) -> dict[str, object]:
        return {
            "hidden": sorted(str(a) for a in self.hidden()),
            "ids": sorted(self.hidden_ids()),
            "tokens": [t.to_json() for t in self.tokens],
        }


@dataclass(frozen=True)
class GrubProblem:
    """Something in /etc/default/grub (or grub.d) that pcipass cannot follow
    (``overridden`` is None), or an assignment of a later file that replaces
    the variable instead of appending to it (``overridden`` names it)."""

    path: str
    problem: str = ""
    overridden: str | None = None  # the GRUB_CMDLINE_* variable set again
    line: int | None = None
