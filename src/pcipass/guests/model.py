"""The common view of a guest configuration, whatever toolstack wrote it.

Three kinds of file describe a guest that may hold a passed-through device:

* ``xm``: RHEL 5's ``/etc/xen/NAME`` (Python syntax, read by xend),
* ``xl``: ``/etc/xen/NAME.cfg`` (xl.cfg(5), libxlu's own grammar),
* ``libvirt``: a ``<domain>`` document (formatdomain, libvirt.org).

Each parser (:mod:`pcipass.guests.xen_cfg`, :mod:`pcipass.guests.libvirt_xml`)
returns an object that satisfies :class:`GuestConfig`, so the rules (PP004
PV DMA, PP005 RHEL 6 PV, PP006 HVM, PP101 exclusive ownership) and the
attach/detach commands look at every kind the same way.  Edits are pure:
they take the parsed bytes and return new bytes; the caller writes them
with :mod:`pcipass.persist.atomic`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipass.address import AddressPattern, PciAddress
from pcipass.compat import StrEnum
from pcipass.record import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:
    # A protocol only describes a shape for the type checker: at run time a
    # plain base does, and importing typing cost every command ~2 ms (issue #13).
    Protocol = object


class GuestKind(StrEnum):
    XM = "xm"
    XL = "xl"
    LIBVIRT = "libvirt"


class VirtMode(StrEnum):
    """How the guest is virtualised; PP004/PP005 concern PV, PP006 HVM."""

    PV = "pv"
    HVM = "hvm"
    PVH = "pvh"
    UNKNOWN = "unknown"


# Distributions rebuilt from RHEL sources with the same kernels: the RHEL 6
# PV warning (source document §15.5) applies to them as much as to RHEL.
RHEL_REBUILDS = frozenset({"rhel", "centos", "scientific", "oracle", "rocky", "alma"})


@dataclass(frozen=True)
class GuestOs:
    """The operating system a guest runs, as far as a configuration says.

    ``family`` is a short lower-case name (``rhel``, ``centos``, ``fedora``,
    ``debian``, ``ubuntu``, ``sles``, ``windows``... or ``unknown``),
    ``version`` the release as text (``"6"``, ``"5.4"``, ``"10"``) or None,
    and ``source`` says how it was found, for messages ("libosinfo metadata
    http://redhat.com/rhel/6.10", "kernel= /boot/vmlinuz-2.6.18-164.el5xen").
    """

    family: str
    version: str | None
    source: str

    @classmethod
    def unknown(cls, source: str) -> GuestOs:
        return cls("unknown", None, source)

    @property
    def known(self) -> bool:
        return self.family != "unknown"

    @property
    def major(self) -> int | None:
        """The leading number of the version (``"6.10"`` -> 6), if any."""
        if self.version is None:
            return None
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def minor(self) -> int | None:
        if self.version is None or "." not in self.version:
            return None
        tail = self.version.split(".", 2)[1]
        return int(tail) if tail.isdigit() else None

    def is_rhel(self, major: int | None = None, *, rebuilds: bool = True) -> bool:
        """True for Red Hat Enterprise Linux (of that major release, if given).

        With ``rebuilds`` (the default) CentOS, Scientific Linux, Oracle
        Linux, Rocky and Alma count too: they ship the same kernel, so the
        document's RHEL 6 PV warning holds for them.
        """
        families = RHEL_REBUILDS if rebuilds else frozenset({"rhel"})
        if self.family not in families:
            return False
        return major is None or self.major == major

    def at_least(self, major: int, minor: int = 0) -> bool | None:
        """Is the version >= major.minor?  None when the version is not known
        precisely enough to tell (``"5"`` against 5.4)."""
        if self.major is None:
            return None
        if self.major != major:
            return self.major > major
        if minor == 0:
            return True
        if self.minor is None:
            return None
        return self.minor >= minor

    def __str__(self) -> str:
        if not self.known:
            return "unknown OS"
        return f"{self.family} {self.version}" if self.version else self.family


@dataclass(frozen=True)
class AssignedDevice:
    """One PCI device a configuration assigns to the guest.

    ``address`` is None when the entry names no single function: an xl
    entry with ``name=`` (a name given to ``xl pci-assignable-add -n``) or
    with the function wildcard ``*`` (then ``pattern`` holds the slot).
    ``spec_text`` is the entry as written (for messages), ``options`` its
    per-device settings in the order written (xl ``permissive=1``,
    libvirt ``managed=yes``, ``driver=vfio``), ``name`` the xl device name.
    ``line`` is the 1-based line of the entry in its file.
    """

    address: PciAddress | None
    spec_text: str
    options: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    pattern: AddressPattern | None = None
    line: int | None = None

    def option(self, key: str) -> str | None:
        for k, v in self.options:
            if k == key:
                return v
        return None

    def covers(self, address: PciAddress) -> bool:
        """Does this entry claim ``address`` (directly or by a wildcard)?"""
        if self.address is not None:
            return self.address == address
        return self.pattern is not None and self.pattern.matches(address)


class GuestConfig(Protocol):
    """What every parsed guest configuration offers."""

    @property
    def kind(self) -> GuestKind: ...

    @property
    def display(self) -> str:
        """The file (or document) as named in messages."""
        ...

    @property
    def name(self) -> str: ...

    @property
    def virt_mode(self) -> VirtMode: ...

    @property
    def hypervisor(self) -> str:
        """``xen`` for xm/xl; the libvirt domain type (``kvm``, ``qemu``, ``xen``)."""
        ...

    @property
    def os(self) -> GuestOs: ...

    @property
    def passthrough_enabled(self) -> bool | None:
        """xl ``passthrough=`` (or libvirt's ``<xen><passthrough state=>``):
        True/False when set explicitly, None when absent or not applicable."""
        ...

    @property
    def notes(self) -> tuple[str, ...]:
        """Things pcipass noticed but tolerated (shown as warnings)."""
        ...

    def devices(self) -> list[AssignedDevice]:
        """The devices the configuration lists literally."""
        ...

    @property
    def devices_unknown(self) -> str | None:
        """Why the configuration may hold more than :meth:`devices` says (xm
        code that computes ``pci``), with the line; None when it cannot."""
        ...

    def with_device_added(
        self, address: PciAddress, options: Mapping[str, str] | None = None
    ) -> bytes: ...

    def with_device_removed(self, address: PciAddress) -> bytes: ...
