"""PciDevice: a read-only snapshot of one PCI function, read from sysfs.

Built only by the factories :func:`read_device` and :func:`read_all`.  Every
field a kernel may lack, or a non-root user may not read, is optional, and
what could not be read is listed in ``unreadable`` rather than raised: `list`
must show every other device when one is odd, and `show` says what is missing.
"""

from __future__ import annotations

import os

from pcipass.address import PciAddress
from pcipass.errors import AddressError, DeviceNotFoundError, NoPciBusError
from pcipass.host.sysfs import Sysfs
from pcipass.record import dataclass, field, replace

# PCI Code and ID Assignment spec 1.12, §1: base class 06h subclass 04h is a
# PCI-to-PCI bridge, 06h/00h a host bridge; header type 1 (PCI 3.0 §6.1) also
# marks a bridge.
CLASS_HOST_BRIDGE = 0x0600
CLASS_PCI_BRIDGE = 0x0604
CLASS_NAMES = {
    "unclassified": 0x00,
    "storage": 0x01,
    "net": 0x02,
    "display": 0x03,
    "multimedia": 0x04,
    "memory": 0x05,
    "bridge": 0x06,
    "communication": 0x07,
    "system": 0x08,
    "input": 0x09,
    "docking": 0x0A,
    "processor": 0x0B,
    "serial": 0x0C,
    "wireless": 0x0D,
    "intelligent": 0x0E,
    "satellite": 0x0F,
    "encryption": 0x10,
    "signal": 0x11,
    "accelerator": 0x12,
}


@dataclass(frozen=True)
class PciDevice:
    address: PciAddress
    sysfs_path: str  # host-named, e.g. /sys/devices/pci0000:00/0000:00:1c.0/0000:09:00.0
    vendor: int | None
    device: int | None
    subsystem_vendor: int | None
    subsystem_device: int | None
    class_code: int | None  # 24-bit: base class, subclass, prog-if
    revision: int | None
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    numa_node: int | None
    parent: PciAddress | None  # upstream bridge; None on a root bus
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    physfn: PciAddress | None = None
    virtfns: tuple[PciAddress, ...] = ()
    boot_vga: bool = False
    physical_slot: str | None = None
    reset_methods: tuple[str, ...] | None = None  # the kernel's reset_method (None: absent)
    unreadable: tuple[str, ...] = field(default=())

    @property
    def base_class(self) -> int | None:
        return None if self.class_code is None else self.class_code >> 16

    @property
    def class_sub(self) -> int | None:
        return None if self.class_code is None else self.class_code >> 8

    @property
    def is_bridge(self) -> bool:
        return self.class_sub in (CLASS_HOST_BRIDGE, CLASS_PCI_BRIDGE) or (
            self.base_class == 0x06 and self.class_sub == 0x0607
        )

    @property
    def is_host_bridge(self) -> bool:
        return self.class_sub == CLASS_HOST_BRIDGE

    @property
    def id_text(self) -> str:
        v = "????" if self.vendor is None else f"{self.vendor:04x}"
        d = "????" if self.device is None else f"{self.device:04x}"
        return f"{v}:{d}"


def _parse_uevent(text: str | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def _hex_pair(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    left, _, right = text.partition(":")
    try:
        return int(left, 16), int(right, 16)
    except ValueError:
        return None, None


def _address_or_none(
    name: str | None, seen: dict[str, PciAddress | None] | None = None
) -> PciAddress | None:
    """Parse a sysfs name that may be an address.  ``seen``: the names parsed
    so far in one pass over the bus, where parents and physical functions
    repeat (about 500 distinct parents for 8192 functions): one parse and one
    shared PciAddress per name, however many functions there are.  (A
    process-wide cache of 4096 names missed every time above 4096 functions:
    the bus listing's own names pushed the parents out.)"""
    if not name:
        return None
    if seen is not None and name in seen:
        return seen[name]
    try:
        address: PciAddress | None = PciAddress.parse(name)
    except AddressError:
        address = None
    if seen is not None:
        seen[name] = address
    return address


def read_device(sysfs: Sysfs, address: PciAddress) -> PciDevice:
    """Read one function.  Raises DeviceNotFoundError if it is not on the bus."""
    root = sysfs.root
    real = sysfs.follow_link(root.pci_device(address))
    if real is None:
        if not sysfs.exists(root.pci_devices):
            raise NoPciBusError(root.host_path(root.pci_devices))
        raise DeviceNotFoundError(str(address), str(root.prefix))
    return _read_at(sysfs, address, real)


def _read_at(
    sysfs: Sysfs, address: PciAddress, real: str, seen: dict[str, PciAddress | None] | None = None
) -> PciDevice:
    root = sysfs.root
    unreadable: list[str] = []
    # Plain string paths: this runs for every function and pathlib joins cost
    # more than the reads (benchmarks/README.md).
    base = real + "/"
    # One read of uevent gives driver, ids, subsystem ids and class (the
    # kernel's pci_uevent()); separate attributes are the fallback.
    uevent = _parse_uevent(sysfs.read_text(base + "uevent"))
    vendor, device = _hex_pair(uevent.get("PCI_ID"))
    if vendor is None:
        vendor = sysfs.read_int(base + "vendor", 16)
        device = sysfs.read_int(base + "device", 16)
        if vendor is None:
            unreadable.append("vendor")
    sub_vendor, sub_device = _hex_pair(uevent.get("PCI_SUBSYS_ID"))
    if sub_vendor is None:
        sub_vendor = sysfs.read_int(base + "subsystem_vendor", 16)
        sub_device = sysfs.read_int(base + "subsystem_device", 16)
    class_code = _class_code(sysfs, base, uevent.get("PCI_CLASS"))
    if class_code is None:
        unreadable.append("class")
    driver = uevent.get("DRIVER") or sysfs.link_name(base + "driver")
    revision = sysfs.read_int(base + "revision", 16)
    override = sysfs.read_text(base + "driver_override")
    if override in ("(null)", ""):
        override = None
    group_name = sysfs.link_name(base + "iommu_group")
    group = int(group_name) if group_name and group_name.isdigit() else None
    numa = sysfs.read_int(base + "numa_node")
    if numa is not None and numa < 0:
        numa = None
    parent = _address_or_none(os.path.basename(os.path.dirname(real)), seen)
    totalvfs = sysfs.read_int(base + "sriov_totalvfs")
    numvfs = sysfs.read_int(base + "sriov_numvfs") if totalvfs is not None else None
    physfn = _address_or_none(sysfs.link_name(base + "physfn"), seen)
    virtfns = _virtfns(sysfs, real) if totalvfs else []
    boot_vga = sysfs.read_text(base + "boot_vga") == "1"
    reset_text = sysfs.read_text(base + "reset_method")
    return PciDevice(
        address=address,
        sysfs_path=root.host_path(real),
        vendor=vendor,
        device=device,
        subsystem_vendor=sub_vendor,
        subsystem_device=sub_device,
        class_code=class_code,
        revision=revision,
        driver=driver,
        driver_override=override,
        iommu_group=group,
        numa_node=numa,
        parent=parent,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=numvfs,
        physfn=physfn,
        virtfns=tuple(sorted(virtfns)),
        boot_vga=boot_vga,
        physical_slot=None,
        reset_methods=None if reset_text is None else tuple(reset_text.split()),
        unreadable=tuple(unreadable),
    )


def _class_code(sysfs: Sysfs, base: str, uevent_class: str | None) -> int | None:
    """The class code from uevent's PCI_CLASS, else from the ``class`` attribute."""
    if uevent_class is None:
        return sysfs.read_int(base + "class", 16)
    try:
        return int(uevent_class, 16)
    except ValueError:
        return None


def _virtfns(sysfs: Sysfs, real: str) -> list[PciAddress]:
    """A physical function's VFs, from its ``virtfnN`` links."""
    found: list[PciAddress] = []
    for entry in sysfs.scan(real):
        if entry.name.startswith("virtfn"):
            vf = _address_or_none(sysfs.link_name(entry.path))
            if vf is not None:
                found.append(vf)
    return found


def list_addresses(sysfs: Sysfs) -> list[PciAddress]:
    """Every function on the bus, sorted; names that are not addresses are skipped."""
    root = sysfs.root
    if not sysfs.exists(root.pci_devices):
        raise NoPciBusError(root.host_path(root.pci_devices))
    found: list[PciAddress] = []
    for name in sysfs.list_dir(root.pci_devices):
        address = _address_or_none(name)
        if address is not None:
            found.append(address)
    return sorted(found)


def read_all(sysfs: Sysfs) -> tuple[list[PciDevice], list[str]]:
    """Every readable function, and a problem line for each one that vanished."""
    devices: list[PciDevice] = []
    problems: list[str] = []
    slots = physical_slots(sysfs)
    devices_dir = str(sysfs.root.pci_devices)
    seen: dict[str, PciAddress | None] = {}  # parent and physfn names of this pass
    for address in list_addresses(sysfs):
        # The bus link is one relative hop to the device directory; following
        # it by hand avoids a full resolve() per device (benchmarks/README.md).
        link = f"{devices_dir}/{address}"
        real = sysfs.follow_link(link, check=False)
        dev = None if real is None else _read_at(sysfs, address, real, seen)
        if dev is None or (dev.unreadable and not os.path.isdir(str(real))):
            # Checked only when something was unreadable: saves a stat per device.
            problems.append(f"{address}: vanished while being read (dangling link?)")
            continue
        slot = slots.get(address.slot_key)
        if slot is not None:
            dev = _with_slot(dev, slot)
        devices.append(dev)
    return devices, problems


def read_one(sysfs: Sysfs, address: PciAddress) -> PciDevice:
    dev = read_device(sysfs, address)
    slot = physical_slots(sysfs).get(address.slot_key)
    return _with_slot(dev, slot) if slot is not None else dev


def _with_slot(dev: PciDevice, slot: str) -> PciDevice:
    return replace(dev, physical_slot=slot)


def physical_slots(sysfs: Sysfs) -> dict[tuple[int, int, int], str]:
    """``/sys/bus/pci/slots/NAME/address`` (``0000:09:00``) -> slot name."""
    result: dict[tuple[int, int, int], str] = {}
    slots_dir = sysfs.root.path("/sys/bus/pci/slots")
    for name in sysfs.list_dir(slots_dir):
        text = sysfs.read_text(slots_dir / name / "address")
        if not text:
            continue
        parsed = _address_or_none(text + ".0")
        if parsed is not None:
            result[parsed.slot_key] = name
    return result


def iommu_group_members(sysfs: Sysfs, group: int) -> list[PciAddress]:
    path = sysfs.root.iommu_groups / str(group) / "devices"
    members = [_address_or_none(n) for n in sysfs.list_dir(path)]
    return sorted(a for a in members if a is not None)


def class_filter_value(name: str) -> int | None:
    return CLASS_NAMES.get(name.lower())


def slot_functions(sysfs: Sysfs, address: PciAddress) -> list[PciAddress]:
    """Every function present in ``address``'s slot (same domain, bus and device
    number: the functions of one multi-function device, PCI 3.0 §6.2.1 Header
    Type bit 7), ``address`` first, then by function number."""
    same = [a for a in list_addresses(sysfs) if a.slot_key == address.slot_key]
    return [address, *(a for a in same if a != address)] if address in same else same
