"""Inventory: every PCI function with names, driver, group, host use and owner.

The data behind ``pcipass list`` and ``pcipass show``.  The JSON produced by
:meth:`DeviceInfo.to_json` is the documented, stable schema (docs/json.md):
keys are only ever added, never renamed or removed, within schema version 1.

This module reads only the host; who owns a device comes from the ledger,
which the caller (``pcipass.ops.inventory``) reads and hands in as ``owners``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pcipass.address import PciAddress
from pcipass.host.context import Host
from pcipass.host.device import PciDevice, iommu_group_members, read_all, read_one
from pcipass.host.pciids import PciIds
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.host.usage import HostUse, host_uses
from pcipass.record import dataclass, field

SCHEMA_VERSION = 1


@dataclass
class DeviceInfo:
    device: PciDevice
    vendor_name: str | None
    device_name: str | None
    class_name: str | None
    uses: list[HostUse]
    group_members: list[PciAddress]
    owner: str | None = None

    @property
    def address(self) -> PciAddress:
        return self.device.address

    @property
    def hidden(self) -> bool:
        return self.device.driver in STUB_DRIVERS

    def describe(self) -> str:
        dev = self.device
        vendor = self.vendor_name or (f"{dev.vendor:04x}" if dev.vendor is not None else "?")
        name = self.device_name or (f"Device {dev.device:04x}" if dev.device is not None else "?")
        return f"{vendor} {name}"

    def to_json(self) -> dict[str, object]:
        dev = self.device
        return {
            "address": str(dev.address),
            "vendor_id": None if dev.vendor is None else f"{dev.vendor:04x}",
            "device_id": None if dev.device is None else f"{dev.device:04x}",
            "subsystem_vendor_id": _hex4(dev.subsystem_vendor),
            "subsystem_device_id": _hex4(dev.subsystem_device),
            "class": None if dev.class_code is None else f"{dev.class_code:06x}",
            "revision": None if dev.revision is None else f"{dev.revision:02x}",
            "vendor_name": self.vendor_name,
            "device_name": self.device_name,
            "class_name": self.class_name,
            "driver": dev.driver,
            "driver_override": dev.driver_override,
            "hidden": self.hidden,
            "iommu_group": dev.iommu_group,
            "iommu_group_members": [str(a) for a in self.group_members],
            "numa_node": dev.numa_node,
            "parent": None if dev.parent is None else str(dev.parent),
            "is_bridge": dev.is_bridge,
            "sriov": _sriov_json(dev),
            "boot_vga": dev.boot_vga,
            "physical_slot": dev.physical_slot,
            "reset_methods": None if dev.reset_methods is None else list(dev.reset_methods),
            "host_uses": [u.to_json() for u in self.uses],
            "owner": self.owner,
            "unreadable": list(dev.unreadable),
        }


def _hex4(value: int | None) -> str | None:
    return None if value is None else f"{value:04x}"


def _sriov_json(dev: PciDevice) -> dict[str, object] | None:
    if dev.sriov_totalvfs is None and dev.physfn is None:
        return None
    return {
        "total_vfs": dev.sriov_totalvfs,
        "num_vfs": dev.sriov_numvfs,
        "physfn": None if dev.physfn is None else str(dev.physfn),
        "virtfns": [str(v) for v in dev.virtfns],
    }


@dataclass
class Inventory:
    devices: list[DeviceInfo]
    problems: list[str] = field(default_factory=list)

    def by_address(self) -> dict[PciAddress, DeviceInfo]:
        return {d.address: d for d in self.devices}

    def get(self, address: PciAddress) -> DeviceInfo | None:
        return self.by_address().get(address)

    def to_json(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "devices": [d.to_json() for d in self.devices],
            "problems": list(self.problems),
        }


def _group_map(devices: Iterable[PciDevice]) -> dict[int, list[PciAddress]]:
    groups: dict[int, list[PciAddress]] = {}
    for dev in devices:
        if dev.iommu_group is not None:
            groups.setdefault(dev.iommu_group, []).append(dev.address)
    return groups


def _info(
    dev: PciDevice,
    ids: PciIds,
    uses: dict[PciAddress, list[HostUse]],
    groups: dict[int, list[PciAddress]],
    owners: Mapping[PciAddress, str],
) -> DeviceInfo:
    vendor_name = device_name = class_name = None
    if dev.vendor is not None:
        vendor_name = ids.vendor(dev.vendor)
        if dev.device is not None:
            device_name = ids.device(dev.vendor, dev.device)
    if dev.class_code is not None:
        class_name = ids.class_name(dev.class_code)
    members = groups.get(dev.iommu_group, []) if dev.iommu_group is not None else []
    return DeviceInfo(
        dev,
        vendor_name,
        device_name,
        class_name,
        uses.get(dev.address, []),
        sorted(members),
        owners.get(dev.address),
    )


def inventory(host: Host, owners: Mapping[PciAddress, str] | None = None) -> Inventory:
    """Every function on the bus; ``owners`` (address -> guest) fills the owner column."""
    devices, problems = read_all(host.sysfs)
    ids = PciIds.for_root(host.root)
    if ids.problem:
        problems.append(ids.problem + "; names are shown as numeric ids")
    if ids.note:  # a --root without pci.ids: the running system's names, said once
        problems.append(ids.note)
    uses, use_problems = host_uses(host.sysfs, [d.address for d in devices if d.boot_vga])
    problems.extend(use_problems)
    groups = _group_map(devices)
    infos = [_info(dev, ids, uses, groups, owners or {}) for dev in devices]
    for dev in devices:
        if dev.unreadable:
            problems.append(f"{dev.address}: could not read {', '.join(dev.unreadable)}")
    return Inventory(infos, problems)


def device_info(
    host: Host, address: PciAddress, owners: Mapping[PciAddress, str] | None = None
) -> tuple[DeviceInfo, list[str]]:
    """One device with everything ``list`` knows (raises DeviceNotFoundError)."""
    dev = read_one(host.sysfs, address)
    problems: list[str] = []
    ids = PciIds.for_root(host.root)
    if ids.problem:
        problems.append(ids.problem)
    if ids.note:
        problems.append(ids.note)
    uses, use_problems = host_uses(host.sysfs)
    problems.extend(use_problems)
    groups: dict[int, list[PciAddress]] = {}
    if dev.iommu_group is not None:
        groups[dev.iommu_group] = iommu_group_members(host.sysfs, dev.iommu_group)
    return _info(dev, ids, uses, groups, owners or {}), problems
