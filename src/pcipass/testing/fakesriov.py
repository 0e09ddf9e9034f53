"""The fake kernel's SR-IOV: creating and removing virtual functions.

Split from testing/fakehost.py (one job per module).  All state lives in the
tree (``sriov_numvfs``, ``sriov_drivers_autoprobe``, ``virtfnN`` links), so a
tree re-opened with :meth:`FakeHost.load` (the CLI's simulated kernel) behaves
the same.  Modelled on Linux 6.1, drivers/pci/iov.c and pci-driver.c:

* ``sriov_numvfs`` (``sriov_numvfs_store``): a number above ``sriov_totalvfs``
  is ERANGE; the current count is a no-op; a PF without a driver, or whose
  driver has no ``sriov_configure``, is ENOENT; a non-zero count while VFs
  exist is EBUSY ("Disable before enabling"); 0 removes every VF.
* VFs appear at routing ID ``PF + First VF Offset + i * VF Stride`` with the
  VF Device ID (PCIe SR-IOV, §9.3.3.9-§9.3.3.11), beside the PF, each with a
  ``physfn`` link, the PF with ``virtfnI`` links.
* ``sriov_drivers_autoprobe`` 0: a new VF is not probed, and no driver may
  bind it later unless its ``driver_override`` names that driver
  (``pci_device_can_probe``).
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from pcipass.address import PciAddress
from pcipass.errors import AddressError

if TYPE_CHECKING:
    from pcipass.testing.fakehost import FakeHost, FakeKernel

# Drivers whose struct pci_driver has .sriov_configure (as in Linux 6.1).
SRIOV_CONFIGURE = frozenset(
    {"igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "nvme", "qede", "vfio-pci"}
)
EXT_CAP_SRIOV = 0x0010


def _link(link: Path, target: Path) -> None:
    """A relative symlink, as sysfs has them (kept here: fakehost imports this module)."""
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def describe_pf(
    host: FakeHost, pf: str, *, total: int, vf_device: int, offset: int, stride: int, num: int = 0
) -> None:
    """The SR-IOV attributes the kernel gives a PF (pci-sysfs.c sriov_*)."""
    directory = host.path_of(pf)
    attrs = {
        "sriov_totalvfs": (str(total), 0o444),
        "sriov_numvfs": (str(num), 0o644),
        "sriov_drivers_autoprobe": ("1", 0o644),
        "sriov_offset": (str(offset), 0o444),
        "sriov_stride": (str(stride), 0o444),
        "sriov_vf_device": (f"{vf_device:x}", 0o444),
    }
    for name, (text, mode) in attrs.items():
        (directory / name).write_text(text + "\n")
        os.chmod(directory / name, mode)


def rid(address: PciAddress | str) -> int:
    """The routing ID: bus, device, function (PCIe 4.0 §2.2.6.2)."""
    parsed = PciAddress.parse(address) if isinstance(address, str) else address
    return parsed.bus << 8 | parsed.slot << 3 | parsed.function


def _read_int(path: Path, base: int = 10) -> int:
    return int(path.read_text().strip(), base)


def physfn_of(host: FakeHost, name: str) -> Path | None:
    link = host.path_of(name) / "physfn"
    return link.resolve() if os.path.islink(link) else None


def can_probe(host: FakeHost, name: str) -> bool:
    """``pci_device_can_probe``: a VF of a PF with autoprobe off binds only by override."""
    pf_dir = physfn_of(host, name)
    if pf_dir is None:
        return True
    autoprobe = pf_dir / "sriov_drivers_autoprobe"
    return not autoprobe.exists() or autoprobe.read_text().strip() != "0"


def handles(path: Path) -> bool:
    return path.name in ("sriov_numvfs", "sriov_drivers_autoprobe")


def write(kernel: FakeKernel, path: Path, text: str) -> None:
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
    if wanted > _read_int(pf_dir / "sriov_totalvfs"):
        raise _fail(errno.ERANGE)
    current = _read_int(path)
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
        _remove(kernel, pf)
    path.write_text(f"{wanted}\n")
    _set_config_numvfs(pf_dir / "config", wanted)


def _vf_addresses(host: FakeHost, pf: str, count: int) -> list[PciAddress]:
    pf_dir = host.path_of(pf)
    address = PciAddress.parse(pf)
    first = rid(address)
    offset = _read_int(pf_dir / "sriov_offset")
    stride = _read_int(pf_dir / "sriov_stride")
    result = []
    for index in range(count):
        vf = first + offset + index * stride
        result.append(PciAddress(address.domain, vf >> 8, (vf >> 3) & 0x1F, vf & 7))
    return result


def _next_group(host: FakeHost) -> int | None:
    groups_dir = host.sys / "kernel" / "iommu_groups"
    if not groups_dir.is_dir():
        return None
    numbers = [int(n) for n in os.listdir(groups_dir) if n.isdigit()]
    return max(numbers, default=-1) + 1


def _parent_of(pf_dir: Path) -> str | None:
    try:
        return str(PciAddress.parse(pf_dir.parent.name))
    except AddressError:
        return None


def _create(kernel: FakeKernel, pf: str, count: int) -> None:
    host = kernel.host
    pf_dir = host.path_of(pf)
    vendor = _read_int(pf_dir / "vendor", 16)
    class_code = _read_int(pf_dir / "class", 16)
    vf_device = _read_int(pf_dir / "sriov_vf_device", 16)
    created = []
    for index, vf in enumerate(_vf_addresses(host, pf, count)):
        host.add_device(
            str(vf),
            vendor=vendor,
            device=vf_device,
            class_code=class_code,
            parent=_parent_of(pf_dir),
            group=_next_group(host),
            reset_method="flr",  # SR-IOV 1.1 §2.2.2: every VF implements FLR
        )
        vf_dir = host.path_of(str(vf))
        _link(vf_dir / "physfn", pf_dir)
        _link(pf_dir / f"virtfn{index}", vf_dir)
        created.append(str(vf))
    # pci_bus_add_device -> device_attach, for each VF, once all exist.
    for name in created:
        if can_probe(host, name):
            kernel._probe(name)


def virtfns(pf_dir: Path) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir(pf_dir):
        if entry.startswith("virtfn") and entry[6:].isdigit():
            found.append((int(entry[6:]), os.path.basename(os.readlink(pf_dir / entry))))
    return sorted(found)


def _remove(kernel: FakeKernel, pf: str) -> None:
    host = kernel.host
    pf_dir = host.path_of(pf)
    for index, name in reversed(virtfns(pf_dir)):
        group_link = host.path_of(name) / "iommu_group"
        group_dir = group_link.resolve() if os.path.islink(group_link) else None
        host.remove_device(name)
        os.unlink(pf_dir / f"virtfn{index}")
        if group_dir is not None and not os.listdir(group_dir / "devices"):
            # The kernel frees a group with its last device.
            for leftover in os.listdir(group_dir):
                path = group_dir / leftover
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            group_dir.rmdir()


def _set_config_numvfs(config: Path, count: int) -> None:
    """NumVFs and VF Enable/VF MSE in the PF's SR-IOV capability (§9.3.3.3, §9.3.3.7)."""
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


def add_vfs(
    host: FakeHost,
    pf: str,
    count: int,
    *,
    vf_device: int,
    first_vf: str,
    stride: int = 1,
    driver: str | None = None,
    total: int | None = None,
) -> list[str]:
    """A PF with ``count`` VFs already enabled (as at boot), from ``first_vf`` on
    (PCIe SR-IOV 1.1 §3.3.10); ``driver`` binds each VF."""
    pf_dir = host.path_of(pf)
    start = PciAddress.parse(first_vf)
    vendor = _read_int(pf_dir / "vendor", 16)
    describe_pf(
        host,
        pf,
        total=total if total is not None else count,
        num=count,
        vf_device=vf_device,
        offset=rid(start) - rid(pf),
        stride=stride,
    )
    names = []
    for index in range(count):
        flat = (start.slot << 3 | start.function) + index * stride
        vf = PciAddress(start.domain, start.bus, flat >> 3, flat & 7)
        # VFs sit beside their PF, under the same upstream bridge.
        host.add_device(
            str(vf),
            vendor=vendor,
            device=vf_device,
            class_code=0x020000,
            parent=_parent_of(pf_dir),
            driver=driver,
        )
        vf_dir = host.path_of(str(vf))
        _link(vf_dir / "physfn", pf_dir)
        _link(pf_dir / f"virtfn{index}", vf_dir)
        names.append(str(vf))
    return names
