"""``pcipass explain TEXT``: what a toolstack's passthrough error means on this host.

The messages users paste into issue trackers (IOMMU group not viable,
no interrupt remapping, a missing module, ...) name a
cause only indirectly.  Each known message is matched by a pattern, and the
explanation is completed from this host where it can be: the members of an
IOMMU group, whether an IOMMU is active, the stub a device is bound to.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.device import iommu_group_members
from pcipass.host.stubs import VFIO_DRIVER
from pcipass.record import dataclass


@dataclass(frozen=True)
class Explanation:
    matched: str  # the known message
    rule: str  # the pcipass rule that covers it
    cause: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"matched": self.matched, "rule": self.rule, "cause": self.cause, "fix": self.fix}

    def render(self) -> str:
        return f"[{self.rule}] {self.matched}\n  cause: {self.cause}\n  fix:   {self.fix}"


def _address_in(text: str) -> PciAddress | None:
    for candidate in re.findall(r"[0-9a-fA-F]{0,4}:?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]", text):
        try:
            return PciAddress.parse(candidate)
        except AddressError:
            continue
    return None


def _group(host: Host, match: re.Match[str], text: str) -> Explanation:
    group = int(match.group(1))
    members = iommu_group_members(host.sysfs, group)
    unbound = [m for m in members if binding.current_driver(host, m) not in (VFIO_DRIVER, None)]
    names = ", ".join(str(m) for m in members) or "(no such group on this host)"
    fix = "bind every member to vfio-pci: pcipass hide --now --backend vfio --group " + (
        str(members[0]) if members else "BDF"
    )
    if unbound:
        fix += f" (still on host drivers: {', '.join(str(u) for u in unbound)})"
    return Explanation(
        "vfio: group N is not viable",
        "PP102",
        f"IOMMU group {group} holds {names}; VFIO hands a group to one user "
        "only when every member is bound to vfio-pci (or has no driver)",
        fix,
    )


def _fixed(matched: str, rule: str, cause: str, fix: str) -> Callable[..., Explanation]:
    def explain(host: Host, match: re.Match[str], text: str) -> Explanation:
        return Explanation(matched, rule, cause, fix)

    return explain


def _not_assignable(host: Host, match: re.Match[str], text: str) -> Explanation:
    address = _address_in(text)
    driver = binding.current_driver(host, address) if address is not None else None
    where = f"{address} is bound to {driver or 'no driver'}" if address else "the device"
    return Explanation(
        "PCI device ... is not assignable",
        "PP002",
        f"Xen only assigns devices bound to pciback; {where}",
        f"pcipass hide --now {address or 'BDF'}",
    )


def _module_in_use(host: Host, match: re.Match[str], text: str) -> Explanation:
    """``modprobe -r`` refused: the reload the document advises (Procedure 15.3
    step 1) was tried; name what else that reload would take down (#18)."""
    from pcipass.ops.inventory import inventory
    from pcipass.policy.reload import SAFE_WAYS, reload_impact

    module = match.group(1)
    inv = inventory(host)
    drivers = {
        d.device.driver
        for d in inv.devices
        if d.device.driver is not None
        and d.device.driver.replace("-", "_") == module.replace("-", "_")
    }
    impact = reload_impact(drivers.pop() if drivers else module, [], inv)
    cause = (
        f"the kernel refused to unload {module}: something still holds it (an interface "
        "that is up, a mounted disk, a guest)"
    )
    if impact.host_used:
        cause += "; the host uses " + ", ".join(
            f"{b.address} ({b.uses_text})" for b in impact.host_used
        )
    return Explanation(
        f"modprobe: FATAL: Module {module} is in use",
        "PP010",
        cause,
        f"do not force the reload: it unbinds every device {module} drives; {SAFE_WAYS} "
        "(pcipass hide --now BDF)",
    )


_KNOWN: list[tuple[re.Pattern[str], Callable[..., Explanation]]] = [
    (re.compile(r"Module (\S+) is in use"), _module_in_use),
    (re.compile(r"group (\d+) is not viable"), _group),
    (
        re.compile(r"xc_assign_device failed: Operation not supported"),
        _fixed(
            "xc_assign_device failed: Operation not supported",
            "PP003",
            "the running domain was built without passthrough (no pci= at creation and no "
            'passthrough="enabled"), or was restored from a save made without devices',
            'add passthrough="enabled" to its xl config (pcipass attach does), restart the guest '
            "once, then attach live",
        ),
    ),
    (
        re.compile(r"xc_assign_device failed: Operation not permitted"),
        _fixed(
            "xc_assign_device failed: Operation not permitted",
            "PP006",
            "Xen refused the assignment: typically no usable IOMMU, or a device with a shared "
            "RMRR, or one already given to another domain",
            "check `xl dmesg` for VT-d/AMD-Vi and RMRR lines; pcipass check BDF",
        ),
    ),
    (
        re.compile(r"passthrough not supported on this platform|failed to quarantine"),
        _fixed(
            "passthrough not supported on this platform / failed to quarantine",
            "PP006",
            "Xen found no IOMMU: Xen 4.17 refuses all passthrough without one, PV included",
            "enable VT-d/AMD-Vi in the firmware and boot Xen with iommu=1",
        ),
    ),
    (
        re.compile(r"No interrupt remapping support"),
        _fixed(
            "vfio: No interrupt remapping support",
            "PP006",
            "VFIO needs interrupt remapping and the IOMMU runs without it",
            "enable interrupt remapping (intremap; on QEMU: -machine kernel-irqchip=split and "
            "-device intel-iommu,intremap=on), or, knowingly, "
            "vfio_iommu_type1.allow_unsafe_interrupts=1",
        ),
    ),
    (
        re.compile(r"no FLR, PM reset or bus reset available"),
        _fixed(
            "Unable to reset PCI device: no FLR, PM reset or bus reset available",
            "PP104",
            "the device has no reset method libvirt can use between guests",
            "pcipass show BDF gives the reset verdict; assign the whole bus so a bus reset is "
            "possible, or expect to reboot the host after the guest stops",
        ),
    ),
    (
        re.compile(r"Module pciback not found"),
        _fixed(
            "modprobe: FATAL: Module pciback not found",
            "PP010",
            "the RHEL 5 lines (options pciback / install ... modprobe pciback) on a kernel whose "
            "module is xen-pciback: the host driver takes the device and modprobe still exits 0",
            "pcipass hide --persist BDF (writes what works here, or adds alias pciback "
            "xen-pciback); pcipass check flags the broken lines",
        ),
    ),
    (
        re.compile(r"routing table indicates that interface .* is active"),
        _fixed(
            "dpdk-devbind: routing table indicates that interface is active",
            "PP001",
            "the NIC carries a route: taking it away cuts the host off",
            "pcipass check BDF names the route; move it to another NIC first",
        ),
    ),
    (
        re.compile(r"is in use by driver (\S+), domain (\S+)"),
        lambda host, m, text: Explanation(
            "PCI device ... is in use by driver D, domain G",
            "PP101",
            f"libvirt records the device as held by domain {m.group(2)} ({m.group(1)}); after a "
            "libvirtd restart this can be stale",
            f"detach it from {m.group(2)} (pcipass detach BDF {m.group(2)}), or restart the domain",
        ),
    ),
    (
        re.compile(r"shared RMRR"),
        _fixed(
            "It's disallowed to assign ... with shared RMRR",
            "PP006",
            "the firmware reserves memory (RMRR) shared with other devices, so Xen will not give "
            "this one to a guest alone",
            "assign the devices sharing the RMRR together, or use another slot/device",
        ),
    ),
    (re.compile(r"is not assignable"), _not_assignable),
    (
        re.compile(r"cannot migrate a domain with <hostdev"),
        _fixed(
            "cannot migrate a domain with <hostdev mode='subsystem' type='pci'>",
            "PP003",
            "a guest holding a passed-through device cannot be migrated (the document's rule)",
            "pcipass migrate GUEST HOST (xl) or detach, migrate, and attach on the destination",
        ),
    ),
]


def explain(host: Host, text: str) -> list[Explanation]:
    found: list[Explanation] = []
    for pattern, make in _KNOWN:
        match = pattern.search(text)
        if match is not None:
            found.append(make(host, match, text))
    return found
