"""The rules about guests: PP002, PP003, PP004, PP005, PP006 and PP101.

Each function turns facts (a driver, a ledger record, a parsed guest
configuration, what the host says about its IOMMU) into findings; the
operations in :mod:`pcipass.ops.attach` and :mod:`pcipass.ops.guard` decide
what a finding means for the request.  The quoted words are the source
document's (RHEL 5 Virtualization Guide §15.5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.errors import PcipassError
from pcipass.guests.model import GuestConfig, GuestOs, VirtMode
from pcipass.host.context import Host
from pcipass.host.platform import Platform
from pcipass.host.stubs import KVM_GUEST_DRIVERS, STUB_DRIVERS, XEN_GUEST_DRIVERS
from pcipass.patterns import lazy
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass

PV_DMA_WORDS = (
    "a guest which has access to a non-virtualized PCI device via PCI passthrough also has "
    "the potential to access the DMA address space of dom0"
)

# Xen's physinfo flags (xl info / xm info "virt_caps"): *_directio means the
# hypervisor has an IOMMU it can use for device assignment.
_VIRT_CAPS = lazy(r"^virt_caps\s*:\s*(?P<caps>.*)$", re.M)
# Xen prints "I/O virtualisation enabled|disabled" at boot (xen/drivers/
# passthrough/iommu.c); RHEL 5's Xen 3.1 has no virt_caps, only this line.
# Xen 3.2/3.3 (RHEL 5.4's backports among them) print "Intel VT-d has been
# enabled" instead.
_IO_VIRT = lazy(
    r"I/O virtuali[sz]ation (?P<state>enabled|disabled)|Intel VT-d has been (?P<vtd>enabled)"
)
# xendomains(8) settings: where running domains are saved at dom0 shutdown
# ("Set to empty to disable saving").  Read as text, never sourced.
XENDOMAINS_FILES = ("/etc/sysconfig/xendomains", "/etc/default/xendomains")
_XENDOMAINS_SAVE = lazy(r"^[ \t]*XENDOMAINS_SAVE=(?P<value>[^#\n]*)", re.M)


def hidden_findings(
    address: PciAddress,
    driver: str | None,
    recorded_stub: str | None,
    *,
    xen: bool,
) -> list[Finding]:
    """PP002: the device must first be hidden from the host.

    ``driver`` is the driver bound now, ``recorded_stub`` the stub the ledger
    says pcipass hid it on (None if it never did), ``xen`` whether the guest
    runs on Xen (pciback) or KVM (vfio-pci).
    """
    subject = str(address)
    wanted = XEN_GUEST_DRIVERS if xen else KVM_GUEST_DRIVERS
    wanted_text = "pciback" if xen else "vfio-pci"
    if driver in wanted:
        return []
    if driver in STUB_DRIVERS:
        return [
            Finding(
                "PP002",
                Severity.REFUSE,
                subject,
                f"is bound to {driver}, but a {'Xen' if xen else 'KVM'} guest takes devices "
                f"only from {wanted_text}",
                f"pcipass unhide --now {address}, then "
                f"pcipass hide --now --backend {'pciback' if xen else 'vfio'} {address}",
            )
        ]
    if recorded_stub is not None:
        # Hidden persistently (modprobe / kernel command line): it takes
        # effect after a driver reload or reboot (Procedure 15.3 step 1, PP010).
        return [
            Finding(
                "PP002",
                Severity.WARN,
                subject,
                f"is recorded hidden on {recorded_stub} but bound to {driver or 'no driver'} now; "
                "the guest cannot start with it until the host lets it go",
                # Not "reload the driver": that unbinds every function it drives,
                # the host's own NIC or disk among them (#18; pcipass check says which).
                f"pcipass hide --now {address} (this device only), or reboot; reloading "
                f"{driver or 'its driver'} also unbinds every other device it drives",
            )
        ]
    return [
        Finding(
            "PP002",
            Severity.REFUSE,
            subject,
            f"is not hidden from the host (driver {driver or 'none'}); "
            "to link a PCI device to a guest the device must first be hidden from the host",
            f"pcipass hide --now {address} first, or add --hide",
        )
    ]


def exclusive_findings(
    address: PciAddress,
    guest: str,
    ledger_owner: str | None,
    listed_by: Sequence[tuple[str, str, str]],
) -> list[Finding]:
    """PP101: a device belongs to one guest.  ``listed_by`` holds
    (guest, file, entry) for every *other* guest's configuration that lists it."""
    subject = str(address)
    findings: list[Finding] = []
    if ledger_owner is not None and ledger_owner != guest:
        findings.append(
            Finding(
                "PP101",
                Severity.REFUSE,
                subject,
                f"is assigned to guest {ledger_owner}; a device belongs to one guest at a time",
                f"detach it first: pcipass detach {address} {ledger_owner}",
            )
        )
    for other, display, entry in listed_by:
        if other == ledger_owner:
            continue
        findings.append(
            Finding(
                "PP101",
                Severity.REFUSE,
                subject,
                f"is listed by guest {other} in {display} ({entry}); "
                "a device belongs to one guest at a time",
                f"detach it from {other} first: pcipass detach {address} {other}",
            )
        )
    return findings


def pv_dma_finding(address: PciAddress, config: GuestConfig) -> Finding | None:
    """PP004: every PV assignment carries the document's DMA warning."""
    if config.virt_mode is not VirtMode.PV:
        return None
    return Finding(
        "PP004",
        Severity.WARN,
        str(address),
        f"guest {config.name or config.display} is paravirtualized: {PV_DMA_WORDS}, "
        "which is a potential security concern",
        "use a fully virtualized (HVM) guest with an IOMMU, or accept the risk with "
        "--accept-pv-dma-risk",
    )


def rhel6_pv_findings(address: PciAddress, config: GuestConfig, guest_os: GuestOs) -> list[Finding]:
    """PP005: "PCI passthrough to para-virtualized guests is considered
    insecure and is not supported for Red Hat Enterprise Linux 6 guests"."""
    if config.virt_mode is not VirtMode.PV:
        return []
    name = config.name or config.display
    if guest_os.is_rhel(6):
        return [
            Finding(
                "PP005",
                Severity.REFUSE,
                str(address),
                f"guest {name} is a paravirtualized {guest_os} guest (from {guest_os.source}); "
                "PCI passthrough to para-virtualized guests is not supported for Red Hat "
                "Enterprise Linux 6 guests",
                "run the guest fully virtualized (HVM) on an IOMMU host, or give the device "
                "to another guest",
            )
        ]
    if not guest_os.known:
        return [
            Finding(
                "PP005",
                Severity.INFO,
                str(address),
                f"the OS of PV guest {name} is not known ({guest_os.source}); "
                "if it is RHEL 6, PV passthrough is not supported",
                "say which with --guest-os, e.g. rhel5.4 or rhel6",
            )
        ]
    return []


@dataclass(frozen=True)
class IommuState:
    """What the host says about its IOMMU, and where it said it.

    ``hvm``/``pv`` are True (active), False (the host says no) or None
    (nothing could tell); ``evidence`` is the source, for messages.
    """

    hvm: bool | None
    pv: bool | None
    evidence: str


def _entries(host: Host, absolute: str) -> list[str]:
    try:
        return sorted(p.name for p in host.root.path(absolute).iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def probe_iommu(host: Host) -> IommuState:
    """Is an IOMMU active?  Linux shows one in ``/sys/class/iommu`` and
    ``/sys/kernel/iommu_groups``; in a Xen dom0 the hypervisor owns the IOMMU
    and Linux sees neither, so Xen is asked (``xl info`` virt_caps, or its
    boot message "I/O virtualisation enabled" in ``xl dmesg``/``xm dmesg``)."""
    units = _entries(host, "/sys/class/iommu")
    if units:
        return IommuState(True, True, f"/sys/class/iommu/{units[0]}")
    groups = _entries(host, "/sys/kernel/iommu_groups")
    if groups:
        return IommuState(True, True, f"/sys/kernel/iommu_groups ({len(groups)} groups)")
    if not host.root.path("/proc/xen").exists():
        return IommuState(
            False, False, "no /sys/class/iommu entries and no /sys/kernel/iommu_groups"
        )
    for program in ("xl", "xm"):
        if host.runner.which(program) is None:
            continue
        info = host.runner.run([program, "info"], timeout=30.0)
        if info.returncode == 0:
            match = _VIRT_CAPS.search(info.stdout)
            if match:
                caps = match.group("caps").split()
                return IommuState(
                    "hvm_directio" in caps,
                    "pv_directio" in caps,
                    f"`{program} info` virt_caps: {' '.join(caps) or '(empty)'}",
                )
        dmesg = host.runner.run([program, "dmesg"], timeout=30.0)
        if dmesg.returncode == 0:
            found = _IO_VIRT.search(dmesg.stdout)
            if found:
                on = found.group("state") == "enabled" or found.group("vtd") is not None
                return IommuState(on, None, f"`{program} dmesg`: {found.group(0)}")
        return IommuState(
            None, None, f"Xen dom0: `{program} info` and `{program} dmesg` did not say"
        )
    return IommuState(
        None,
        None,
        "Xen dom0 without /sys IOMMU entries, and neither xl nor xm could be run to ask Xen",
    )


def hvm_support_findings(
    address: PciAddress,
    config: GuestConfig,
    platform: Platform,
    iommu: IommuState,
) -> list[Finding]:
    """PP006: "PCI passthrough with fully virtualized guests is only supported
    on Red Hat Enterprise Linux 5.4 and newer", and it needs an active IOMMU.

    On current Xen (4.x, xl) PV passthrough needs the IOMMU too: Xen 4.17
    refuses with "passthrough not supported on this platform" (seen in the lab).
    """
    subject = str(address)
    name = config.name or config.display
    findings: list[Finding] = []
    if config.virt_mode is VirtMode.HVM:
        if platform.rhel_like and platform.major is not None and platform.major <= 5:
            minor = _minor(platform.version)
            if platform.major < 5 or minor is None or minor < 4:
                shown = platform.pretty_name or f"{platform.family} {platform.version}"
                findings.append(
                    Finding(
                        "PP006",
                        Severity.REFUSE,
                        subject,
                        f"guest {name} is fully virtualized (HVM) and this host runs {shown}; "
                        "PCI passthrough with fully virtualized guests is only supported on "
                        "Red Hat Enterprise Linux 5.4 and newer",
                        "update the host to RHEL 5.4 or newer, or use a PV guest",
                    )
                )
        if iommu.hvm is not True:
            findings.append(
                Finding(
                    "PP006",
                    Severity.REFUSE,
                    subject,
                    f"guest {name} is fully virtualized (HVM), which needs an active IOMMU "
                    f"(Intel VT-d or AMD-Vi); missing: {iommu.evidence}",
                    "enable VT-d/AMD-Vi in the firmware and boot with it on: iommu=1 for Xen, "
                    "intel_iommu=on or amd_iommu=on for Linux",
                )
            )
    elif config.virt_mode is VirtMode.PV and iommu.pv is False:
        findings.append(
            Finding(
                "PP006",
                Severity.REFUSE,
                subject,
                f"Xen reports no IOMMU for PV passthrough ({iommu.evidence}); current Xen "
                "refuses every passthrough without one ('passthrough not supported on this "
                "platform')",
                "enable VT-d/AMD-Vi in the firmware and boot Xen with iommu=1",
            )
        )
    return findings


def _minor(version: str) -> int | None:
    parts = version.split(".")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


def save_restore_findings(
    guest: str,
    operation: str,
    owned: Sequence[str],
    listed: Sequence[str],
    where: str,
) -> list[Finding]:
    """PP003: "Any guest using PCI passthrough will no longer be available
    for save, restore, or migration capabilities"."""
    if not owned and not listed:
        return []
    devices = sorted(set(owned) | set(listed))
    sources = []
    if owned:
        sources.append("pcipass's ledger")
    if listed:
        sources.append(where)
    return [
        Finding(
            "PP003",
            Severity.REFUSE,
            f"guest {guest}",
            f"holds passed-through PCI device(s) {', '.join(devices)} (per "
            f"{' and '.join(sources)}); a guest using PCI passthrough is not available for "
            f"save, restore, or migration, so {operation} is refused",
            f"detach first: {'; '.join(f'pcipass detach --live {d} {guest}' for d in devices)}"
            f"; then {operation}, and attach again after it",
        )
    ]


LIBVIRT_GUESTS_FILES = ("/etc/sysconfig/libvirt-guests", "/etc/default/libvirt-guests")
_ON_SHUTDOWN = lazy(r"^[ \t]*ON_SHUTDOWN=(?P<value>[^#\n]*)", re.M)


class SettingsFiles:
    """The host's service settings (xendomains, libvirt-guests), each file read
    at most once: ``check`` with 800 Xen guests read them again for every guest
    (3200 reads, a sixth of its time).  One instance lives as long as one
    command's checks, which change none of these files."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._texts: dict[str, str | None] = {}

    def text(self, absolute: str) -> str | None:
        """A file of the root, resolved inside it; None when absent or unreadable."""
        if absolute not in self._texts:
            self._texts[absolute] = _read_text(self._host, absolute)
        return self._texts[absolute]


def shutdown_save_findings(
    host: Host, guest: str, files: SettingsFiles | None = None
) -> list[Finding]:
    """PP003 at host shutdown (xendomains and libvirt-guests)."""
    files = files if files is not None else SettingsFiles(host)
    return _xendomains_findings(files, guest) + _libvirt_guests_findings(files, guest)


def _read_text(host: Host, absolute: str) -> str | None:
    """A file of the root, resolved inside it; None when absent or unreadable."""
    try:
        data = host.root.files.read_bytes(absolute)
    except PcipassError:
        return None
    return None if data is None else data.decode("utf-8", "replace")


def _libvirt_guests_findings(files: SettingsFiles, guest: str) -> list[Finding]:
    """libvirt-guests suspends (managed-saves) running guests at host shutdown
    unless ``ON_SHUTDOWN=shutdown``; its default is ``suspend`` (the
    libvirt-guests service's documented default)."""
    for absolute in LIBVIRT_GUESTS_FILES:
        text = files.text(absolute)
        if text is None:
            continue
        matches = list(_ON_SHUTDOWN.finditer(text))
        value = matches[-1].group("value").strip().strip("'\"").strip() if matches else ""
        if value == "shutdown":
            return []
        shown = value or "unset (default: suspend)"
        return [
            Finding(
                "PP003",
                Severity.WARN,
                f"guest {guest}",
                f"{absolute}: ON_SHUTDOWN is {shown}: at host shutdown libvirt-guests will "
                "save this guest, and a guest using PCI passthrough cannot be saved or restored",
                f"set ON_SHUTDOWN=shutdown in {absolute}",
            )
        ]
    return []


def _xendomains_findings(files: SettingsFiles, guest: str) -> list[Finding]:
    """xendomains saves every running domain to ``XENDOMAINS_SAVE`` and
    restores it at boot, which is the save/restore the document rules out
    (and ``xl save`` of a guest holding a device does not refuse: it exits 0)."""
    for absolute in XENDOMAINS_FILES:
        text = files.text(absolute)
        if text is None:
            continue
        matches = list(_XENDOMAINS_SAVE.finditer(text))
        if not matches:
            return []
        value = matches[-1].group("value").strip().strip("'\"").strip()
        if not value:
            return []
        return [
            Finding(
                "PP003",
                Severity.WARN,
                f"guest {guest}",
                f"{absolute} sets XENDOMAINS_SAVE={value}: at host shutdown xendomains will "
                "save this guest and restore it at boot, and a guest using PCI passthrough "
                "cannot be saved or restored",
                f'set XENDOMAINS_SAVE="" in {absolute} so guests are shut down instead, '
                "or detach the device before every host shutdown",
            )
        ]
    return []
