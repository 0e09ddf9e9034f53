"""Can these devices be taken from the host?  Rules PP001, PP101-PP106.

Every device of a request is checked before anything is touched (libvirt's
virHostdevPreparePCIDevices step 1), and every reason is reported, not just
the first, so the administrator fixes everything in one go.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.host.context import Host
from pcipass.host.identity import identity_mismatch
from pcipass.ops.inventory import STUB_DRIVERS, DeviceInfo, Inventory, inventory
from pcipass.policy.verdict import Finding, Severity


def current_identity(host: Host, info: DeviceInfo) -> dict[str, str]:
    from pcipass.host.identity import identity_of
    from pcipass.ops.show import read_config

    config = read_config(host, info.address)
    return identity_of(info.device, None if config is None else config.dsn)


def assignability_findings(
    host: Host,
    addresses: Sequence[PciAddress],
    *,
    inv: Inventory | None = None,
    for_guest: str | None = None,
) -> list[Finding]:
    """Findings for taking ``addresses`` (together) away from the host."""
    from pcipass.errors import DeviceNotFoundError
    from pcipass.ops.show import read_config, reset_verdict
    from pcipass.state.ledger import Ledger

    inv = inv or inventory(host)
    by_address = inv.by_address()
    wanted = set(addresses)
    findings: list[Finding] = []
    any_groups = any(d.device.iommu_group is not None for d in inv.devices)
    ledger = Ledger.open(host.root, readonly=True)
    try:
        for address in addresses:
            info = by_address.get(address)
            if info is None:
                raise DeviceNotFoundError(str(address), str(host.root.prefix))
            subject = str(address)
            dev = info.device
            # PP103: a bridge forwards for everything below it; giving it away
            # takes the whole hierarchy (and host bridges are the root complex).
            if dev.is_bridge:
                kind = "a host bridge" if dev.is_host_bridge else "a PCI bridge"
                findings.append(
                    Finding(
                        "PP103",
                        Severity.REFUSE,
                        subject,
                        f"is {kind}; bridges are never assignable",
                        "assign the endpoint devices behind it instead",
                    )
                )
            # PP001: the document's rule, with the use named.
            for use in info.uses:
                findings.append(
                    Finding(
                        "PP001",
                        Severity.REFUSE,
                        subject,
                        f"the host uses it: {use.detail}",
                        _use_remedy(use.kind),
                    )
                )
            # PP102: VFIO can only give a group away whole.
            if dev.iommu_group is not None:
                others = (
                    [
                        a
                        for a in info.group_members
                        if a not in wanted and not by_address[a].device.is_bridge
                    ]
                    if info.group_members
                    else []
                )
                if others:
                    names = ", ".join(str(o) for o in others)
                    everything = " ".join(str(a) for a in sorted(wanted | set(others)))
                    findings.append(
                        Finding(
                            "PP102",
                            Severity.REFUSE,
                            subject,
                            f"IOMMU group {dev.iommu_group} also holds {names}; every device of a "
                            "group must leave the host together",
                            f"take the whole group: pcipass hide {everything}",
                        )
                    )
            elif not any_groups:
                findings += _conventional_bus_findings(host, info, inv, wanted)
            # PP101: one owner at a time.
            owner = ledger.owner(address)
            if owner is not None and owner.guest != for_guest:
                findings.append(
                    Finding(
                        "PP101",
                        Severity.REFUSE,
                        subject,
                        f"already assigned to guest {owner.guest}",
                        f"detach it first: pcipass detach {address} {owner.guest}",
                    )
                )
            # PP105: the address must still name the device we recorded.
            record = ledger.get_hidden(address)
            if record is not None:
                changes = identity_mismatch(record.identity, current_identity(host, info))
                if changes:
                    findings.append(
                        Finding(
                            "PP105",
                            Severity.REFUSE,
                            subject,
                            "is not the device pcipass recorded at this address ("
                            + "; ".join(changes)
                            + ")",
                            "hardware changed: check the cards, then pcipass unhide --forget "
                            f"{address} and hide the right one",
                        )
                    )
            # PP104: warn when the device cannot be reset between guests.
            verdict = reset_verdict(host, info, read_config(host, address))
            if not verdict.ready:
                findings.append(
                    Finding(
                        "PP104",
                        Severity.WARN,
                        subject,
                        verdict.reason,
                        "expect to reboot the host to recover the device after a guest stops",
                    )
                )
            # PP106: hiding a PF removes its VFs (and whatever uses them).
            if dev.sriov_numvfs:
                findings.append(
                    Finding(
                        "PP106",
                        Severity.WARN,
                        subject,
                        f"SR-IOV physical function with {dev.sriov_numvfs} active VF(s) "
                        f"({', '.join(str(v) for v in dev.virtfns)}); unbinding it disables them",
                        "assign a VF instead, or stop what uses the VFs",
                    )
                )
            if dev.driver in STUB_DRIVERS and record is None and owner is None:
                findings.append(
                    Finding(
                        "PP101",
                        Severity.INFO,
                        subject,
                        f"already bound to {dev.driver} by someone else",
                        "pcipass will record it as hidden",
                    )
                )
    finally:
        ledger.close()
    return findings


def _conventional_bus_findings(
    host: Host, info: DeviceInfo, inv: Inventory, wanted: set[PciAddress]
) -> list[Finding]:
    """Without IOMMU groups in sysfs (a Xen dom0: the hypervisor owns the
    IOMMU) pcipass still knows one isolation limit: behind a conventional PCI
    bridge, DMA from every device carries the bridge's requester ID (PCIe to
    PCI/PCI-X Bridge spec 1.0 §2.3), so the IOMMU cannot tell those devices
    apart; Xen's xend refused to split them ("must be co-assigned")."""
    from pcipass.ops.show import read_config

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


def _use_remedy(kind: str) -> str:
    return {
        "mount": "unmount it (and remove it from /etc/fstab) or pick another device",
        "swap": "swapoff it (and remove it from /etc/fstab) or pick another device",
        "route": "move the default route to another interface first, or pick another device",
        "address": "remove the address (ip addr flush) or pick another device",
        "console": "the host's console would go dark; pick another device",
    }.get(kind, "pick another device")
