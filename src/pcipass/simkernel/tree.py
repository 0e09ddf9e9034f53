"""The kernel's side of a simulated host tree: devices, drivers, bindings.

An example tree (``pcipass-example``) is a directory in the shape of the
kernel's ``sys``, ``proc`` and ``etc``.  :class:`SimTree` re-opens such a tree
and changes it as Linux changes sysfs when a driver binds or unbinds, or a
module loads: the ``driver`` links, the driver's device links and
``uevent``.  The test kit's builder (``pcipass.testing.fakehost.FakeHost``)
extends it with the methods that create devices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import TypeVar

    _Tree = TypeVar("_Tree", bound="SimTree")


def rel_link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def write_file(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.chmod(path, mode)


@dataclass
class SimDriver:
    """A driver the simulated kernel knows: its sysfs name, module and id table."""

    name: str  # as in /sys/bus/pci/drivers (xen-pciback registers as "pciback")
    module: str  # as modprobe names it
    ids: set[tuple[int, int]] = field(default_factory=set)
    stub: bool = False  # pciback / vfio-pci: binds only what it is told to
    builtin: bool = False


KNOWN_DRIVERS: dict[str, SimDriver] = {}


def _known(name: str, module: str, ids: Sequence[tuple[int, int]] = (), stub: bool = False) -> None:
    KNOWN_DRIVERS[module] = SimDriver(name, module, set(ids), stub)


_known("bnx2", "bnx2", [(0x14E4, 0x163B), (0x14E4, 0x1639)])
_known("e1000", "e1000", [(0x8086, 0x100E), (0x8086, 0x1010)])
_known("e1000e", "e1000e", [(0x8086, 0x10D3)])
_known("igb", "igb", [(0x8086, 0x1521)])
_known("igbvf", "igbvf", [(0x8086, 0x1520)])
_known("ahci", "ahci", [(0x8086, 0x2922), (0x8086, 0x1C02)])
_HDA = [(0x8086, 0x293E), (0x10DE, 0x0FB9), (0x10DE, 0x10F9), (0x1002, 0xAAF0)]
_known("snd_hda_intel", "snd-hda-intel", _HDA)
_known("xhci_hcd", "xhci-pci", [(0x10DE, 0x1ADA)])
_known("nvidia-gpu", "i2c-nvidia-gpu", [(0x10DE, 0x1ADB)])
_known("nouveau", "nouveau", [(0x10DE, 0x1B80), (0x10DE, 0x1F08)])
_known("amdgpu", "amdgpu", [(0x1002, 0x67DF)])
_known("nvme", "nvme", [(0x144D, 0xA808)])
_known("pcieport", "pcieport", [])
_known("lpc_ich", "lpc_ich", [(0x8086, 0x2918)])
_known("i801_smbus", "i2c-i801", [(0x8086, 0x2930)])
_known("pciback", "xen-pciback", [], stub=True)
_known("vfio-pci", "vfio-pci", [], stub=True)
_known("pciback", "pciback", [], stub=True)  # RHEL 5 (2.6.18): the module is "pciback"
_known("bochs-drm", "bochs-drm", [(0x1234, 0x1111)])
_known("serial", "8250_pci", [(0x8086, 0x1C3D)])


class SimTree:
    """A simulated host tree under ``base``.  Addresses are given as text."""

    #: Where an option ROM's content waits while the ``rom`` attribute is
    #: disabled (the kernel answers reads of ``rom`` only after "1" is written).
    ROM_STORE = ".fake-rom"

    def __init__(
        self, base: Path, *, iommu_groups: bool = True, driver_override: bool = True
    ) -> None:
        self.base = Path(base)
        self.iommu_groups = iommu_groups  # False: a Xen dom0 (the hypervisor owns the IOMMU)
        self.driver_override = driver_override  # False: kernels before 3.16 (RHEL 5)
        self.sys = self.base / "sys"
        self.devices_root = self.sys / "devices"
        self.bus = self.sys / "bus" / "pci"
        self._paths: dict[str, Path] = {}

    @classmethod
    def load(cls: type[_Tree], base: Path) -> _Tree:
        """Re-open a tree built earlier (the example host), e.g. for the CLI's
        simulated kernel: device paths come from the bus's links."""
        tree = cls.__new__(cls)
        base = Path(base)
        SimTree.__init__(
            tree, base, iommu_groups=(base / "sys" / "kernel" / "iommu_groups").exists()
        )
        for name in sorted(os.listdir(tree.bus / "devices")):
            link = tree.bus / "devices" / name
            if link.exists():
                tree._paths[name] = link.resolve()
        return tree

    # ---- drivers and modules ---------------------------------------------
    def driver_dir(self, name: str) -> Path:
        return self.bus / "drivers" / name

    def add_driver(self, module: str, *, builtin: bool = False) -> SimDriver:
        """Make a driver present (module loaded or built in)."""
        spec = KNOWN_DRIVERS.get(module) or SimDriver(module.replace("-", "_"), module)
        d = self.driver_dir(spec.name)
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            write_file(d / attr, "", 0o200)
        if spec.name == "pciback":
            for attr in ("new_slot", "remove_slot", "permissive", "quirks"):
                write_file(d / attr, "", 0o600)
            write_file(d / "slots", "")
        rel_link(d / "module", self.sys / "module" / spec.module.replace("-", "_"))
        (self.sys / "module" / spec.module.replace("-", "_")).mkdir(parents=True, exist_ok=True)
        if not builtin:
            modules = (self.base / "proc/modules").read_text()
            mod = spec.module.replace("-", "_")
            if f"\n{mod} " not in "\n" + modules:
                modules += f"{mod} 65536 0 - Live 0x0000000000000000\n"
                (self.base / "proc/modules").write_text(modules)
        return spec

    # ---- devices -----------------------------------------------------------
    def path_of(self, address: str) -> Path:
        return self._paths[str(PciAddress.parse(address))]

    # ---- binding -------------------------------------------------------------
    def _write_uevent(self, address: str, driver: str | None) -> None:
        directory = self.path_of(address)
        vendor = int((directory / "vendor").read_text(), 16)
        device = int((directory / "device").read_text(), 16)
        sv = int((directory / "subsystem_vendor").read_text(), 16)
        sd = int((directory / "subsystem_device").read_text(), 16)
        cls = int((directory / "class").read_text(), 16)
        lines = []
        if driver:
            lines.append(f"DRIVER={driver}")
        lines += [
            f"PCI_CLASS={cls:X}",
            f"PCI_ID={vendor:04X}:{device:04X}",
            f"PCI_SUBSYS_ID={sv:04X}:{sd:04X}",
            f"PCI_SLOT_NAME={address}",
            f"MODALIAS=pci:v{vendor:08X}d{device:08X}sv{sv:08X}sd{sd:08X}"
            f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}",
        ]
        write_file(directory / "uevent", "\n".join(lines) + "\n", 0o644)

    def bound_driver(self, address: str) -> str | None:
        link = self.path_of(address) / "driver"
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def bind(self, address: str, driver_name: str) -> None:
        directory = self.path_of(address)
        ddir = self.driver_dir(driver_name)
        rel_link(directory / "driver", ddir)
        rel_link(ddir / directory.name, directory)
        self._write_uevent(directory.name, driver_name)

    def unbind(self, address: str) -> None:
        directory = self.path_of(address)
        current = self.bound_driver(address)
        if current is None:
            return
        (directory / "driver").unlink()
        link = self.driver_dir(current) / directory.name
        if os.path.lexists(link):
            link.unlink()
        self._write_uevent(directory.name, None)
