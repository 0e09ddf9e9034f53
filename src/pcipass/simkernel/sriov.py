"""The simulated kernel's SR-IOV: creating and removing virtual functions.

All state lives in the tree (``sriov_numvfs``, ``sriov_drivers_autoprobe``,
``virtfnN`` links), so a tree re-opened with :meth:`SimTree.load` (the CLI's
simulated kernel) behaves the same.  Modelled on Linux 6.1,
drivers/pci/iov.c and pci-driver.c:

* ``sriov_numvfs`` (``sriov_numvfs_store``): a number above ``sriov_totalvfs``
  is ERANGE; the current count is a no-op; a PF without a driver, or whose
  driver has no ``sriov_configure``, is ENOENT; a non-zero count while VFs
  exist is EBUSY ("Disable before enabling"); 0 removes every VF.
* VFs appear at routing ID ``PF + First VF Offset + i * VF Stride`` with the
  VF Device ID (PCIe SR-IOV, §9.3.3.9-§9.3.3.11), beside the PF, each with a
  ``physfn`` link, the PF with ``virtfnI`` links, each in its own IOMMU group
  (as behind an ACS port), each with FLR (SR-IOV 1.1 §2.2.2: every VF has it).
* ``sriov_drivers_autoprobe`` 0: a new VF is not probed, and no driver may
  bind it later unless its ``driver_override`` names that driver
  (``pci_device_can_probe``).
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.simkernel.tree import rel_link, write_file

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.simkernel.kernel import SimKernel
    from pcipass.simkernel.tree import SimTree

# Drivers whose struct pci_driver has .sriov_configure (as in Linux 6.1).
SRIOV_CONFIGURE = frozenset(
    {"igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "nvme", "qede", "vfio-pci"}
)
EXT_CAP_SRIOV = 0x0010


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def rid(address: PciAddress | str) -> int:
    """The routing ID: bus, device, function (PCIe 4.0 §2.2.6.2)."""
    parsed = PciAddress.parse(address) if isinstance(address, str) else address
    return parsed.bus << 8 | parsed.slot << 3 | parsed.function


def read_int(path: Path, base: int = 10) -> int:
    return int(path.read_text().strip(), base)


def physfn_dir(tree: SimTree, name: str) -> Path | None:
    link = tree.path_of(name) / "physfn"
    return link.resolve() if os.path.islink(link) else None


def can_probe(tree: SimTree, name: str) -> bool:
    """``pci_device_can_probe``: a VF of a PF with autoprobe off binds only by override."""
    pf_dir = physfn_dir(tree, name)
    if pf_dir is None:
        return True
    autoprobe = pf_dir / "sriov_drivers_autoprobe"
    return not autoprobe.exists() or autoprobe.read_text().strip() != "0"


def handles(path: Path) -> bool:
    return path.name in ("sriov_numvfs", "sriov_drivers_autoprobe")


def virtfns(pf_dir: Path) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir(pf_dir):
        if entry.startswith("virtfn") and entry[6:].isdigit():
            found.append((int(entry[6:]), os.path.basename(os.readlink(pf_dir / entry))))
    return sorted(found)


def write(kernel: SimKernel, path: Path, text: str) -> None:
    pf = path.parent.name
    if pf not in kernel.host._paths or not path.exists():
        raise _fail(errno.ENOENT)
    if path.name == "sriov_drivers_autoprobe":
        # kstrtobool: 0/1, y/n, on/off
        values = {"0": "0", "n": "0", "off": "0", "1": "1", "y": "1", "on": "1"}
        if text.lower() not in values:
            raise _fail(errno.EINVAL)
        path.write_text(values[text.lower()] + "\n")
        return
    try:
        wanted = int(text, 0)
    except ValueError as error:
        raise _fail(errno.EINVAL) from error
    if not 0 <= wanted <= 0xFFFF:
        raise _fail(errno.ERANGE)
    pf_dir = path.parent
    if wanted > read_int(pf_dir / "sriov_totalvfs"):
        raise _fail(errno.ERANGE)
    current = read_int(path)
    if wanted == current:
        return
    driver = kernel.host.bound_driver(pf)
    if driver is None or driver not in SRIOV_CONFIGURE:
        raise _fail(errno.ENOENT)
    if wanted and current:
        raise _fail(errno.EBUSY)
    if wanted:
        _create(kernel, pf, wanted)
    else:
        _remove(kernel.host, pf)
    path.write_text(f"{wanted}\n")
    _set_config_numvfs(pf_dir / "config", wanted)


def _vf_addresses(tree: SimTree, pf: str, count: int) -> list[PciAddress]:
    pf_dir = tree.path_of(pf)
    address = PciAddress.parse(pf)
    first = rid(address)
    offset = read_int(pf_dir / "sriov_offset")
    stride = read_int(pf_dir / "sriov_stride")
    result = []
    for index in range(count):
        vf = first + offset + index * stride
        result.append(PciAddress(address.domain, vf >> 8, (vf >> 3) & 0x1F, vf & 7))
    return result


def _next_group(tree: SimTree) -> int | None:
    groups_dir = tree.sys / "kernel" / "iommu_groups"
    if not groups_dir.is_dir():
        return None
    numbers = [int(n) for n in os.listdir(groups_dir) if n.isdigit()]
    return max(numbers, default=-1) + 1


def parent_of(pf_dir: Path) -> str | None:
    try:
        return str(PciAddress.parse(pf_dir.parent.name))
    except AddressError:
        return None


def _vf_config(vendor: int, device: int, class_code: int) -> bytes:
    """A type 0 header (PCI 3.0 §6.1) with a PCIe capability at 0x40 that has FLR."""
    config = bytearray(256)
    struct.pack_into("<HH", config, 0, vendor, device)
    struct.pack_into("<H", config, 0x06, 0x0010)  # status: capabilities list
    struct.pack_into("<I", config, 0x08, class_code << 8)
    config[0x34] = 0x40
    config[0x40:0x42] = bytes((0x10, 0x00))  # PCI Express capability, last in the list
    struct.pack_into("<H", config, 0x42, 0x0002)  # version 2, endpoint
    struct.pack_into("<I", config, 0x44, 1 << 28)  # Device Capabilities: FLR (§7.8.3)
    return bytes(config)


def _add_vf(tree: SimTree, pf_dir: Path, vf: PciAddress, index: int) -> str:
    name = str(vf)
    parent = parent_of(pf_dir)
    if parent is not None:
        directory = tree.path_of(parent) / name
    else:
        directory = tree.devices_root / f"pci{vf.domain:04x}:{vf.bus:02x}" / name
    vendor = read_int(pf_dir / "vendor", 16)
    device = read_int(pf_dir / "sriov_vf_device", 16)
    class_code = read_int(pf_dir / "class", 16)
    attrs = {
        "vendor": (f"0x{vendor:04x}\n", 0o444),
        "device": (f"0x{device:04x}\n", 0o444),
        "subsystem_vendor": ("0x0000\n", 0o444),
        "subsystem_device": ("0x0000\n", 0o444),
        "class": (f"0x{class_code:06x}\n", 0o444),
        "revision": ("0x00\n", 0o444),
        "numa_node": ("-1\n", 0o644),
        "driver_override": ("(null)\n", 0o644),
        "enable": ("0\n", 0o644),
        "remove": ("", 0o200),
        "reset_method": ("flr\n", 0o644),
        "reset": ("", 0o200),
    }
    for attr, (text, mode) in attrs.items():
        write_file(directory / attr, text, mode)
    write_file(directory / "config", _vf_config(vendor, device, class_code), 0o644)
    tree._paths[name] = directory
    rel_link(directory / "subsystem", tree.bus)
    rel_link(tree.bus / "devices" / name, directory)
    group = _next_group(tree)
    if group is not None:
        group_dir = tree.sys / "kernel" / "iommu_groups" / str(group)
        write_file(group_dir / "type", "DMA\n", 0o644)
        (group_dir / "devices").mkdir(parents=True, exist_ok=True)
        rel_link(group_dir / "devices" / name, directory)
        rel_link(directory / "iommu_group", group_dir)
    rel_link(directory / "physfn", pf_dir)
    rel_link(pf_dir / f"virtfn{index}", directory)
    tree._write_uevent(name, None)
    return name


def _create(kernel: SimKernel, pf: str, count: int) -> None:
    tree = kernel.host
    pf_dir = tree.path_of(pf)
    created = [
        _add_vf(tree, pf_dir, vf, index) for index, vf in enumerate(_vf_addresses(tree, pf, count))
    ]
    # pci_bus_add_device -> device_attach, for each VF, once all exist.
    for name in created:
        if can_probe(tree, name):
            kernel._probe(name)


def _remove(tree: SimTree, pf: str) -> None:
    import shutil  # only when the simulated kernel removes a tree

    pf_dir = tree.path_of(pf)
    for index, name in reversed(virtfns(pf_dir)):
        directory = tree.path_of(name)
        tree.unbind(name)
        os.unlink(tree.bus / "devices" / name)
        group_link = directory / "iommu_group"
        group_dir = group_link.resolve() if os.path.islink(group_link) else None
        shutil.rmtree(directory)
        del tree._paths[name]
        os.unlink(pf_dir / f"virtfn{index}")
        if group_dir is not None:
            member = group_dir / "devices" / name
            if os.path.lexists(member):
                member.unlink()
            if not os.listdir(group_dir / "devices"):
                shutil.rmtree(group_dir)  # the kernel frees a group with its last device


def _set_config_numvfs(config: Path, count: int) -> None:
    """NumVFs and VF Enable/VF MSE in the PF's SR-IOV capability (§9.3.3.3, §9.3.3.7)."""
    if not config.exists():
        return
    data = bytearray(config.read_bytes())
    where = 0x100
    while 0x100 <= where < len(data) - 4:
        header = struct.unpack_from("<I", data, where)[0]
        if header & 0xFFFF == EXT_CAP_SRIOV:
            struct.pack_into("<H", data, where + 0x08, 0x0009 if count else 0)
            struct.pack_into("<H", data, where + 0x10, count)
            config.write_bytes(bytes(data))
            return
        where = header >> 20
        if not where:
            return
