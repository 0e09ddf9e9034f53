"""An SR-IOV physical function's VF controls in sysfs: read them, write them.

The kernel's attributes (Documentation/ABI/testing/sysfs-bus-pci):
``sriov_totalvfs``, ``sriov_numvfs`` (write N to create N VFs, 0 to remove
them; N while M>0 exist is EBUSY), ``sriov_drivers_autoprobe`` (0: a new VF
is bound by no driver unless its ``driver_override`` names one),
``sriov_offset``, ``sriov_stride``, ``sriov_vf_device`` (where the VFs will
appear and with which device id: PCIe SR-IOV, §9.3.3.9-§9.3.3.11), and the
``virtfnN`` links.  Every write goes through the one seam, ``Sysfs.write_attr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host.context import Host
from pcipass.record import dataclass


@dataclass(frozen=True)
class PfState:
    address: PciAddress
    total: int
    num: int
    autoprobe: bool | None  # None: the kernel has no sriov_drivers_autoprobe
    offset: int | None
    stride: int | None
    vf_device: int | None
    vfs: tuple[PciAddress, ...]  # in virtfn order: virtfn0, virtfn1...
    driver: str | None
    netdev: str | None  # the PF's network interface, for `ip link set DEV vf N`

    def predicted(self, count: int) -> list[PciAddress] | None:
        """Where ``count`` VFs will appear: routing ID PF + offset + i * stride."""
        if self.offset is None or self.stride is None:
            return None
        first = self.address.bus << 8 | self.address.slot << 3 | self.address.function
        result = []
        for index in range(count):
            rid = first + self.offset + index * self.stride
            if rid > 0xFFFF:
                return None
            result.append(PciAddress(self.address.domain, rid >> 8, (rid >> 3) & 0x1F, rid & 7))
        return result


def _attr(host: Host, address: PciAddress, name: str) -> str:
    return str(host.root.pci_device(address) / name)


def read_pf(host: Host, address: PciAddress) -> PfState | None:
    """The PF's SR-IOV state, or None when ``address`` is not an SR-IOV PF."""
    sysfs = host.sysfs
    total = sysfs.read_int(_attr(host, address, "sriov_totalvfs"))
    if total is None:
        return None
    autoprobe = sysfs.read_text(_attr(host, address, "sriov_drivers_autoprobe"))
    vf_device = sysfs.read_text(_attr(host, address, "sriov_vf_device"))
    try:
        vf_id = int(vf_device, 16) if vf_device else None
    except ValueError:
        vf_id = None
    return PfState(
        address=address,
        total=total,
        num=sysfs.read_int(_attr(host, address, "sriov_numvfs")) or 0,
        autoprobe=None if autoprobe is None else autoprobe.strip() != "0",
        offset=sysfs.read_int(_attr(host, address, "sriov_offset")),
        stride=sysfs.read_int(_attr(host, address, "sriov_stride")),
        vf_device=vf_id,
        vfs=tuple(vf for _, vf in virtfns(host, address)),
        driver=sysfs.link_name(_attr(host, address, "driver")),
        netdev=netdev_of(host, address),
    )


def virtfns(host: Host, address: PciAddress) -> list[tuple[int, PciAddress]]:
    """(index, VF address) from the PF's ``virtfnN`` links, by index."""
    found = []
    directory = host.root.pci_device(address)
    for name in host.sysfs.list_dir(directory):
        if not (name.startswith("virtfn") and name[6:].isdigit()):
            continue
        target = host.sysfs.link_name(directory / name)
        try:
            found.append((int(name[6:]), PciAddress.parse(target or "")))
        except AddressError:
            continue
    return sorted(found)


def physfn(host: Host, address: PciAddress) -> PciAddress | None:
    target = host.sysfs.link_name(host.root.pci_device(address) / "physfn")
    try:
        return PciAddress.parse(target) if target else None
    except AddressError:
        return None


def netdev_of(host: Host, address: PciAddress) -> str | None:
    """The first network interface the function carries (``net/NAME``)."""
    names = host.sysfs.list_dir(host.root.pci_device(address) / "net")
    return names[0] if names else None


def set_numvfs(host: Host, address: PciAddress, count: int) -> None:
    host.sysfs.write_attr(host.root.pci_device(address) / "sriov_numvfs", f"{count}\n")


def set_autoprobe(host: Host, address: PciAddress, on: bool) -> None:
    path = host.root.pci_device(address) / "sriov_drivers_autoprobe"
    host.sysfs.write_attr(path, "1\n" if on else "0\n")


def exists(host: Host, address: PciAddress) -> bool:
    return os.path.lexists(host.root.pci_device(address))


# --- undoing (ops/transaction.py: rollback and recover of `pcipass vfs`) ---


def reconcile_sriov(host: Host, saved: Mapping[str, object]) -> bool:
    """Put a PF's VF count and autoprobe back as the intent saved them; True if changed.

    The VFs come back with the PF's autoprobe as it was, so they are probed
    as they were before the command."""
    address = PciAddress.parse(str(saved["pf"]))
    numvfs = saved.get("numvfs")
    autoprobe = saved.get("autoprobe")
    state = read_pf(host, address)
    if state is None or not isinstance(numvfs, int):
        return False
    changed = False
    if isinstance(autoprobe, bool) and state.autoprobe is not None and state.autoprobe != autoprobe:
        set_autoprobe(host, address, autoprobe)
        changed = True
    if state.num != numvfs:
        if state.num:
            set_numvfs(host, address, 0)
        if numvfs:
            set_numvfs(host, address, numvfs)
        changed = True
    return changed
