"""Can these devices be taken from the host?  Rules PP001, PP101-PP106.

Every device of a request is checked before anything is touched (libvirt's
virHostdevPreparePCIDevices step 1), and every reason is reported, not just
the first, so the administrator fixes everything in one go.

The rules read the host (below them) but never the ledger: the caller in
``pcipass.ops.assignability`` reads owners and hidden records and hands them
in as :class:`Claims`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcipass.address import PciAddress
from pcipass.errors import DeviceNotFoundError
from pcipass.host.console import console_holders
from pcipass.host.context import Host
from pcipass.host.identity import current_identity, identity_mismatch
from pcipass.host.inventory import DeviceInfo, Inventory
from pcipass.host.reset import reset_verdict
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.host.topology import read_config
from pcipass.host.usage import HostUse
from pcipass.policy.console import console_findings
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field


@dataclass(frozen=True)
class Claims:
    """What pcipass recorded about devices: the guest that owns each, and the
    identity each hidden device had when it was hidden."""

    owners: Mapping[PciAddress, str] = field(default_factory=dict)
    hidden_identities: Mapping[PciAddress, Mapping[str, str]] = field(default_factory=dict)


def assignability_findings(
    host: Host,
    addresses: Sequence[PciAddress],
    *,
    inv: Inventory,
    claims: Claims,
    for_guest: str | None = None,
    release_console: bool = False,
) -> list[Finding]:
    """Findings for taking ``addresses`` (together) away from the host.

    ``release_console``: the caller will release the boot GPU's console
    holders first (``hide --release-console``, PP120)."""
    by_address = inv.by_address()
    wanted = set(addresses)
    any_groups = any(d.device.iommu_group is not None for d in inv.devices)
    findings: list[Finding] = []
    for address in addresses:
        info = by_address.get(address)
        if info is None:
            raise DeviceNotFoundError(str(address), str(host.root.prefix))
        findings += _bridge_findings(info)
        findings += _host_use_findings(info)
        if info.device.boot_vga:
            findings += console_findings(
                console_holders(host, address),
                release=release_console,
                hidden=info.device.driver in STUB_DRIVERS,
            )
        if info.device.iommu_group is not None:
            findings += _group_findings(info, by_address, wanted)
        elif not any_groups:
            findings += _conventional_bus_findings(host, info, inv, wanted)
        findings += _owner_findings(info, claims, for_guest)
        findings += _identity_findings(host, info, claims)
        findings += _reset_findings(host, info)
        findings += _sriov_findings(info)
        findings += _foreign_stub_findings(info, claims)
    return findings


def _bridge_findings(info: DeviceInfo) -> list[Finding]:
    """PP103: a bridge forwards for everything below it; giving it away takes
    the whole hierarchy (and host bridges are the root complex)."""
    dev = info.device
    if not dev.is_bridge:
        return []
    kind = "a host bridge" if dev.is_host_bridge else "a PCI bridge"
    return [
        Finding(
            "PP103",
            Severity.REFUSE,
            str(info.address),
            f"is {kind}; bridges are never assignable",
            "assign the endpoint devices behind it instead",
        )
    ]


def _host_use_findings(info: DeviceInfo) -> list[Finding]:
    """PP001: the document's rule (never hide what the host uses), with the use named.
    The boot GPU's console is PP120's (policy/console.py): it can be released."""
    return [
        Finding(
            "PP001",
            Severity.REFUSE,
            str(info.address),
            f"the host uses it: {use.detail}",
            _use_remedy(use),
        )
        for use in info.uses
        if not (use.kind == "console" and info.device.boot_vga)
    ]


def _group_findings(
    info: DeviceInfo, by_address: Mapping[PciAddress, DeviceInfo], wanted: set[PciAddress]
) -> list[Finding]:
    """PP102: VFIO can only give an IOMMU group away whole."""
    others = [
        a for a in info.group_members if a not in wanted and not by_address[a].device.is_bridge
    ]
    if not others:
        return []
    names = ", ".join(str(o) for o in others)
    everything = " ".join(str(a) for a in sorted(wanted | set(others)))
    remedy = f"take the whole group: pcipass hide {everything}"
    functions = [o for o in others if o.slot_key == info.address.slot_key]
    if functions:
        # The other functions of the same card (a GPU's HDMI audio, USB-C
        # controller): they share the card's requester ID space and go with it.
        remedy = (
            f"{', '.join(str(f) for f in functions)} "
            f"{'is another function' if len(functions) == 1 else 'are other functions'} of "
            f"this device: add --all-functions (pcipass hide --all-functions {info.address})"
        )
        if len(functions) < len(others):
            remedy += f"; the rest of the group too: pcipass hide --group {info.address}"
    return [
        Finding(
            "PP102",
            Severity.REFUSE,
            str(info.address),
            f"IOMMU group {info.device.iommu_group} also holds {names}; every device of a "
            "group must leave the host together",
            remedy,
        )
    ]


def _owner_findings(info: DeviceInfo, claims: Claims, for_guest: str | None) -> list[Finding]:
    """PP101: one owner at a time."""
    owner = claims.owners.get(info.address)
    if owner is None or owner == for_guest:
        return []
    return [
        Finding(
            "PP101",
            Severity.REFUSE,
            str(info.address),
            f"already assigned to guest {owner}",
            f"detach it first: pcipass detach {info.address} {owner}",
        )
    ]


def _identity_findings(host: Host, info: DeviceInfo, claims: Claims) -> list[Finding]:
    """PP105: the address must still name the device pcipass recorded."""
    recorded = claims.hidden_identities.get(info.address)
    if recorded is None:
        return []
    changes = identity_mismatch(dict(recorded), current_identity(host, info.device))
    if not changes:
        return []
    return [
        Finding(
            "PP105",
            Severity.REFUSE,
            str(info.address),
            "is not the device pcipass recorded at this address (" + "; ".join(changes) + ")",
            "hardware changed: check the cards, then pcipass unhide --forget "
            f"{info.address} and hide the right one",
        )
    ]


def _reset_findings(host: Host, info: DeviceInfo) -> list[Finding]:
    """PP104: warn when the device cannot be reset between guests."""
    verdict = reset_verdict(host, info.device, read_config(host, info.address))
    if verdict.ready:
        return []
    return [
        Finding(
            "PP104",
            Severity.WARN,
            str(info.address),
            verdict.reason,
            "expect to reboot the host to recover the device after a guest stops",
        )
    ]


def _sriov_findings(info: DeviceInfo) -> list[Finding]:
    """PP106: hiding a physical function removes its VFs (and whatever uses them)."""
    dev = info.device
    if not dev.sriov_numvfs:
        return []
    return [
        Finding(
            "PP106",
            Severity.WARN,
            str(info.address),
            f"SR-IOV physical function with {dev.sriov_numvfs} active VF(s) "
            f"({', '.join(str(v) for v in dev.virtfns)}); unbinding it disables them",
            "assign a VF instead, or stop what uses the VFs",
        )
    ]


def _foreign_stub_findings(info: DeviceInfo, claims: Claims) -> list[Finding]:
    """PP101 (info): bound to a stub by someone else; pcipass adopts it."""
    dev = info.device
    if (
        dev.driver not in STUB_DRIVERS
        or info.address in claims.hidden_identities
        or info.address in claims.owners
    ):
        return []
    return [
        Finding(
            "PP101",
            Severity.INFO,
            str(info.address),
            f"already bound to {dev.driver} by someone else",
            "pcipass will record it as hidden",
        )
    ]


def _conventional_bus_findings(
    host: Host, info: DeviceInfo, inv: Inventory, wanted: set[PciAddress]
) -> list[Finding]:
    """Without IOMMU groups in sysfs (a Xen dom0: the hypervisor owns the
    IOMMU) pcipass still knows one isolation limit: behind a conventional PCI
    bridge, DMA from every device carries the bridge's requester ID (PCIe to
    PCI/PCI-X Bridge spec 1.0 §2.3), so the IOMMU cannot tell those devices
    apart; Xen's xend refused to split them ("must be co-assigned")."""
    parent = info.device.parent
    if parent is None:
        return []
    bridge = read_config(host, parent)
    if bridge is None or (bridge.pcie is not None and bridge.pcie.port_type_code != 0x7):
        return []  # a PCIe port: its secondary bus carries the devices' own IDs
    others = sorted(
        d.address
        for d in inv.devices
        if d.device.parent == parent and d.address not in wanted and not d.device.is_bridge
    )
    if not others:
        return []
    names = ", ".join(str(o) for o in others)
    return [
        Finding(
            "PP102",
            Severity.WARN,
            str(info.address),
            f"sits behind the conventional PCI bridge {parent} with {names}: the IOMMU sees "
            "them all as the bridge, so they cannot be isolated from each other",
            "assign them to the same guest, or leave the others unused",
        )
    ]


def _use_remedy(use: HostUse) -> str:
    return {
        "mount": "unmount it (and remove it from /etc/fstab) or pick another device",
        "swap": "swapoff it (and remove it from /etc/fstab) or pick another device",
        "route": "move the default route to another interface first, or pick another device",
        "address": "remove the address (ip addr flush) or pick another device",
        "console": "the host's console would go dark; pick another device",
    }.get(use.kind, "pick another device")
