"""Finding guest configurations on a host, and who else lists a device.

A guest is described by one file in a place its toolstack reads:

* ``/etc/xen/NAME`` (xm, RHEL 5's xend: the source document's guests),
* ``/etc/xen/NAME.cfg`` (xl, xl.cfg(5)),
* ``/etc/libvirt/qemu/NAME.xml`` (libvirt's QEMU/KVM driver),
* ``/etc/libvirt/libxl/NAME.xml`` (libvirt's Xen driver),

or a file the user names with ``--config FILE``.  Rule PP101 (a device
belongs to one guest) needs every configuration on the host, not only the
ledger: a guest set up by hand, before pcipass, still takes its devices when
it starts.  :func:`scan_guests` reads them all; a file that does not parse is
reported, never fatal, because one broken file must not stop the others from
being checked.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import ConfigSyntaxError, GuestNotFoundError, PcipassError, UsageError
from pcipass.guests.index import ClaimIndex
from pcipass.guests.libvirt_xml import parse_domain_xml
from pcipass.guests.model import AssignedDevice, GuestConfig, GuestKind
from pcipass.guests.names import check_guest_name
from pcipass.guests.xen_cfg import guess_kind, parse_xen_config
from pcipass.host.confined import Confined, root_of
from pcipass.host.context import Host
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field

XEN_DIR = "/etc/xen"
LIBVIRT_QEMU_DIR = "/etc/libvirt/qemu"
LIBVIRT_LIBXL_DIR = "/etc/libvirt/libxl"

# Files in /etc/xen that are not guests: xend's and xl's own settings, the
# shipped examples (xmexample1, xlexample.hvm...), helper scripts.
_XEN_NOT_GUESTS = frozenset({"cpupool", "qemu-ifup", "README", "README.incompatibilities"})
_XEN_NOT_GUEST_PREFIXES = ("xmexample", "xlexample", "README")
_XEN_NOT_GUEST_SUFFIXES = (".sxp", ".conf", ".rpmnew", ".rpmsave", ".rpmorig", "~", ".bak", ".orig")

# Largest guest configuration pcipass reads; real ones are a few kilobytes.
_MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class GuestFile:
    """A parsed guest configuration and where it lives."""

    config: GuestConfig
    path: Path  # inside the host root
    display: str  # as the host names it
    data: bytes  # the bytes that were parsed (edits are planned against them)

    @property
    def kind(self) -> GuestKind:
        return self.config.kind

    @property
    def guest_name(self) -> str:
        """The guest's name: the ``name`` setting, else the file's stem."""
        return self.config.name or _stem(self.path)

    @property
    def libvirt_uri(self) -> str | None:
        """The libvirt connection for this file's driver (None for xm/xl files)."""
        if self.kind is not GuestKind.LIBVIRT:
            return None
        return "xen:///system" if self.config.hypervisor == "xen" else "qemu:///system"

    @cached_property
    def resolved(self) -> Path:
        """The file with every link resolved, asked once (two names for one
        file are one guest)."""
        return self.path.resolve()

    @property
    def is_xen(self) -> bool:
        return self.kind in (GuestKind.XM, GuestKind.XL) or self.config.hypervisor == "xen"


@dataclass
class GuestScan:
    """Every guest configuration found on the host."""

    guests: list[GuestFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # files that could not be read
    # Files whose devices are unknown that the administrator vouches for
    # (--trust-unreadable FILE): only their literal pci counts.
    trusted: set[Path] = field(default_factory=set)

    # Built on first use, from the guests as they are then (one pass over
    # their devices): answers listing() per device without scanning every
    # guest (pcipass.guests.index).  Rebuilt when guests are added or removed
    # or the list is replaced; scan_guests fills it and nothing edits a
    # GuestFile or reorders the list in place afterwards.
    _claims: ClaimIndex | None = field(default=None, init=False, repr=False, compare=False)
    _claims_of: tuple[int, int] = field(default=(0, -1), init=False, repr=False, compare=False)
    _unknown: list[GuestFile] | None = field(default=None, init=False, repr=False, compare=False)

    def _index(self) -> ClaimIndex:
        key = (id(self.guests), len(self.guests))
        if self._claims is None or self._claims_of != key:
            self._claims = ClaimIndex([g.config for g in self.guests])
            self._claims_of = key
            self._unknown = [g for g in self.guests if devices_unknown(g.config) is not None]
        return self._claims

    def listing(self, address: PciAddress) -> list[GuestFile]:
        """The configurations that assign ``address`` (directly or by a wildcard)."""
        return [self.guests[position] for position in self._index().positions(address)]

    def claims(self, address: PciAddress) -> list[tuple[GuestFile, AssignedDevice]]:
        """Each entry that assigns ``address``, with its configuration, in scan order."""
        return [(self.guests[at], entry) for at, _, entry in self._index().claims(address)]

    def unreadable(self) -> list[GuestFile]:
        """Configurations that may hold any device: xm code pcipass cannot read
        could set or change their ``pci`` (and nobody vouched for them)."""
        self._index()
        return [g for g in self._unknown or () if g.resolved not in self.trusted]


def devices_unknown(config: GuestConfig) -> str | None:
    """Why ``config``'s devices cannot all be known (None: they can)."""
    return config.devices_unknown


def unreadable_findings(
    scan: GuestScan, address: PciAddress, guest_file: GuestFile
) -> list[Finding]:
    """PP101, failing closed: a guest whose ``pci`` pcipass cannot read might
    hold ``address``, so another guest is not given it unless the
    administrator names that file with ``--trust-unreadable FILE``."""
    findings = []
    for other in scan.unreadable():
        if same_guest(other, guest_file):
            continue
        findings.append(
            Finding(
                "PP101",
                Severity.REFUSE,
                str(address),
                f"guest {other.guest_name} may hold it: {other.display} computes its devices "
                f"({devices_unknown(other.config)}); a device belongs to one guest at a time",
                f"make pci a plain list in {other.display}, or, if that guest does not hold "
                f"{address}, say so: --trust-unreadable {shlex.quote(other.display)}",
            )
        )
    return findings


def trusted_paths(host: Host, files: Sequence[str]) -> set[Path]:
    """``--trust-unreadable FILE`` arguments as resolved paths in the root."""
    return {config_path(host, text)[0].resolve() for text in files}


def parse_guest_file(path: Path, display: str, data: bytes) -> GuestConfig:
    """Parse one file as the toolstack that owns its location would."""
    if path.suffix == ".xml" or data.lstrip().startswith(b"<"):
        return parse_domain_xml(data, display)
    return parse_xen_config(data, display, guess_kind(path.name, data))


def read_guest_file(path: Path, display: str) -> GuestFile:
    # Resolved inside the root, FIFO- and size-safe (pcipass.host.confined).
    files = Confined(root_of(path, display))

    def refuse(info: os.stat_result) -> None:
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(display, "is a directory, not a guest configuration")
        if info.st_size > _MAX_CONFIG_BYTES:
            raise ConfigSyntaxError(display, "larger than 4 MiB; not a guest configuration")

    data = files.read_bytes(display, limit=_MAX_CONFIG_BYTES, strict=True, inspect=refuse)
    if data is None:
        raise UsageError(display, "no such file")
    return GuestFile(parse_guest_file(path, display, data), path, display, data)


def name_problem(guest: str) -> str | None:
    """Why pcipass cannot act on a guest of this name (None: it can).

    ``guests`` lists every configuration it finds, whatever its name; the
    commands that act on a guest take only names some toolstack allows
    (:func:`~pcipass.guests.names.check_guest_name`), so ``guests`` says which
    ones ``attach``/``detach``/``guard`` will refuse, and why, instead of
    letting a listed name fail later.
    """
    try:
        check_guest_name(guest)
    except UsageError as error:
        return f"{error.problem}: attach, detach and guard refuse it (rename the guest)"
    return None


def candidate_paths(host: Host, guest: str) -> list[str]:
    """Where the toolstacks keep ``guest``'s configuration (host paths).

    The name is the file name as each toolstack spells it; the check refuses
    ``/``, NUL and ``..``, so it stays one component of its directory."""
    name = check_guest_name(guest)
    return [
        f"{XEN_DIR}/{name}",
        f"{XEN_DIR}/{name}.cfg",
        f"{LIBVIRT_QEMU_DIR}/{name}.xml",
        f"{LIBVIRT_LIBXL_DIR}/{name}.xml",
    ]


def config_path(host: Host, text: str) -> tuple[Path, str]:
    """``--config FILE`` as a path inside the root and as the host names it.

    An absolute FILE is a host path and so lies under ``--root``; a relative
    one is relative to the current directory, as for any command.
    """
    if not text or "\x00" in text:
        raise UsageError("--config", "empty or invalid file name")
    if text.startswith("/"):
        path = host.root.path(text)  # a '..' leaving the root is refused there
    else:
        path = Path(os.path.normpath(Path(text).absolute()))
        if not host.root.contains(path):
            raise UsageError(
                f"--config {text}",
                f"is outside the root {host.root.prefix}",
                "give the file as a host path under the root, e.g. /etc/xen/GUEST",
            )
    return path, host.root.host_path(path)


def find_guest(host: Host, guest: str, config: str | None = None) -> GuestFile:
    """The configuration of ``guest``: ``config`` if given, else the first
    file found in :func:`candidate_paths`.

    A ``config`` whose ``name`` names another guest is refused: editing it
    would give the device to the wrong guest.
    """
    check_guest_name(guest)
    if config is not None:
        path, display = config_path(host, config)
        return _check_name(read_guest_file(path, display), guest)
    looked = candidate_paths(host, guest)
    for display in looked:
        path = host.root.path(display)
        if host.root.files.is_file(display) or host.root.files.is_link(display):
            return _check_name(read_guest_file(path, display), guest)
    raise GuestNotFoundError(guest, looked)


def _check_name(found: GuestFile, guest: str) -> GuestFile:
    if found.config.name and found.config.name != guest:
        raise UsageError(
            found.display,
            f"describes guest {found.config.name!r}, not {guest!r}",
            f"name the guest as the file does: {found.config.name}",
        )
    return found


def _xen_dir_entries(host: Host) -> list[Path]:
    # Regular files only (links to them too): scripts/, auto/ (links to guests
    # listed here too) and the like are not.
    result = []
    for name in host.root.files.list_files(XEN_DIR):
        if name.startswith(".") or name in _XEN_NOT_GUESTS:
            continue
        if name.startswith(_XEN_NOT_GUEST_PREFIXES) or name.endswith(_XEN_NOT_GUEST_SUFFIXES):
            continue
        result.append(host.root.path(f"{XEN_DIR}/{name}"))
    return result


def _xml_entries(host: Host, absolute: str) -> list[Path]:
    return [
        host.root.path(f"{absolute}/{name}")
        for name in host.root.files.list_files(absolute)
        if name.endswith(".xml") and not name.startswith(".")
    ]


def scan_guests(
    host: Host, extra: GuestFile | None = None, trust_unreadable: Sequence[str] = ()
) -> GuestScan:
    """Read every guest configuration on the host (plus ``extra``, a
    ``--config`` file that may live elsewhere)."""
    scan = GuestScan(trusted=trusted_paths(host, trust_unreadable))
    seen: set[Path] = set()
    paths = (
        _xen_dir_entries(host)
        + _xml_entries(host, LIBVIRT_QEMU_DIR)
        + _xml_entries(host, LIBVIRT_LIBXL_DIR)
    )
    if extra is not None:
        scan.guests.append(extra)
        seen.add(extra.path.resolve())
    parents: dict[Path, Path] = {}
    for path in paths:
        resolved = _resolved(path, parents)
        if resolved in seen:
            continue
        seen.add(resolved)
        display = host.root.host_path(path)
        try:
            found = read_guest_file(path, display)
        except PcipassError as error:
            scan.problems.append(error.render())
            continue
        # Seed GuestFile.resolved (a cached_property keeps its value in the
        # instance dict) with the path just resolved: not resolved again per check.
        vars(found)["resolved"] = resolved
        scan.guests.append(found)
    return scan


def _resolved(path: Path, parents: dict[Path, Path]) -> Path:
    """``path.resolve()``, with each directory resolved once: an entry that is
    not a link resolves to its resolved directory joined with its name (saves
    a walk of every component for each of hundreds of guests, issue #13)."""
    if path.is_symlink():
        return path.resolve()
    parent = parents.get(path.parent)
    if parent is None:
        parent = parents[path.parent] = path.parent.resolve()
    return parent / path.name


def same_guest(a: GuestFile, b: GuestFile) -> bool:
    return a.resolved == b.resolved or a.guest_name == b.guest_name


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".xml", ".cfg"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
