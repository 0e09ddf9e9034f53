"""Building SR-IOV PFs and VFs into a fake host tree (tests and the example host).

The kernel's side (VFs created and removed on ``sriov_numvfs`` writes,
``sriov_drivers_autoprobe``) is the simulated kernel's: pcipass.simkernel.sriov.
This module only lays out, at build time, a PF's SR-IOV attributes and the VFs
that exist at boot.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pcipass.address import PciAddress
from pcipass.simkernel.sriov import parent_of, read_int, rid, virtfns
from pcipass.simkernel.tree import rel_link

if TYPE_CHECKING:
    from pcipass.testing.fakehost import FakeHost

__all__ = ["add_vfs", "describe_pf", "virtfns"]


def describe_pf(
    host: FakeHost, pf: str, *, total: int, vf_device: int, offset: int, stride: int, num: int = 0
) -> None:
    """The SR-IOV attributes the kernel gives a PF (pci-sysfs.c, iov.c ``sriov_*``)."""
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
            vendor=read_int(pf_dir / "vendor", 16),
            device=vf_device,
            class_code=0x020000,
            parent=parent_of(pf_dir),
            driver=driver,
        )
        vf_dir = host.path_of(str(vf))
        rel_link(vf_dir / "physfn", pf_dir)
        rel_link(pf_dir / f"virtfn{index}", vf_dir)
        names.append(str(vf))
    return names
