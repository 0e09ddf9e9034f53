"""A fake host tree in the kernel's real shape, and a fake kernel behind it.

Used by the tests, the benchmarks and the example host (``python -m
pcipass.testing.example DIR``).  :class:`FakeHost` builds ``sys``, ``proc``,
``etc`` and ``usr/share`` under a directory from domain words
(:meth:`FakeHost.add_bridge`, :meth:`FakeHost.add_device`, :meth:`FakeHost.add_vfs`,
:meth:`FakeHost.add_disk`, :meth:`FakeHost.add_nic`...).  :class:`FakeKernel`
hooks the one sysfs write seam (``Sysfs.write_attr``) and does what Linux
does on writes to ``bind``, ``unbind``, ``driver_override``, ``drivers_probe``,
``new_id``, pciback's ``new_slot``..., including failing on demand with the
kernel's errno.  Every *read* path of pcipass stays production code.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.runner import CommandResult
from pcipass.testing import fakeconsole
from pcipass.testing.config_builder import Cap, ExtCap, build_config


def _rel_link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.chmod(path, mode)


@dataclass
class FakeDriver:
    """A driver the fake kernel knows: its sysfs name, module and id table."""

    name: str  # as in /sys/bus/pci/drivers (xen-pciback registers as "pciback")
    module: str  # as modprobe names it
    ids: set[tuple[int, int]] = field(default_factory=set)
    stub: bool = False  # pciback / vfio-pci: binds only what it is told to
    builtin: bool = False


KNOWN_DRIVERS: dict[str, FakeDriver] = {}


def _known(name: str, module: str, ids: Sequence[tuple[int, int]] = (), stub: bool = False) -> None:
    KNOWN_DRIVERS[module] = FakeDriver(name, module, set(ids), stub)


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


class FakeHost:
    """Builds a host tree under ``base``.  Addresses are given as text."""

    def __init__(
        self,
        base: Path,
        *,
        kernel_release: str = "6.1.0-26-amd64",
        iommu_groups: bool = True,
        driver_override: bool = True,
    ) -> None:
        self.base = Path(base)
        self.iommu_groups = iommu_groups  # False: a Xen dom0 (the hypervisor owns the IOMMU)
        self.driver_override = driver_override  # False: kernels before 3.16 (RHEL 5)
        self.sys = self.base / "sys"
        self.devices_root = self.sys / "devices"
        self.bus = self.sys / "bus" / "pci"
        self._paths: dict[str, Path] = {}
        self._groups_next = 0
        self.kernel_release = kernel_release
        self.mounts: list[str] = []
        self.swaps: list[str] = []
        self.routes: list[str] = []
        self.local_v4: list[str] = []
        self.inet6: list[str] = []
        self._disk_count = 0
        for sub in ("devices", "drivers"):
            (self.bus / sub).mkdir(parents=True, exist_ok=True)
        _write(self.bus / "drivers_probe", "", 0o200)
        _write(self.bus / "rescan", "", 0o200)
        if iommu_groups:
            (self.sys / "kernel" / "iommu_groups").mkdir(parents=True, exist_ok=True)
        (self.sys / "module").mkdir(parents=True, exist_ok=True)
        _write(self.base / "proc/sys/kernel/osrelease", kernel_release + "\n")
        _write(
            self.base / "proc/cmdline",
            f"BOOT_IMAGE=/vmlinuz-{kernel_release} root=/dev/sda1 ro quiet\n",
        )
        _write(self.base / "proc/modules", "")
        (self.base / "etc").mkdir(exist_ok=True)
        self._flush_proc()

    MARKER = ".pcipass-simulated-host"

    @classmethod
    def load(cls, base: Path) -> FakeHost:
        """Re-open a tree built earlier (the example host), e.g. for the CLI's
        simulated kernel: device paths come from the bus's links."""
        host = cls.__new__(cls)
        host.base = Path(base)
        host.sys = host.base / "sys"
        host.devices_root = host.sys / "devices"
        host.bus = host.sys / "bus" / "pci"
        host._paths = {}
        for name in sorted(os.listdir(host.bus / "devices")):
            link = host.bus / "devices" / name
            if link.exists():
                host._paths[name] = link.resolve()
        host._groups_next = 0
        host.iommu_groups = (host.sys / "kernel" / "iommu_groups").exists()
        host.driver_override = True
        host._disk_count = 0
        return host

    def mark_simulated(self) -> None:
        """Let ``pcipass --root`` drive this tree with the fake kernel (demo)."""
        _write(self.base / self.MARKER, "pcipass example host: sysfs writes are simulated\n")

    # ---- drivers and modules ---------------------------------------------
    def driver_dir(self, name: str) -> Path:
        return self.bus / "drivers" / name

    def add_driver(self, module: str, *, builtin: bool = False) -> FakeDriver:
        """Make a driver present (module loaded or built in)."""
        spec = KNOWN_DRIVERS.get(module) or FakeDriver(module.replace("-", "_"), module)
        d = self.driver_dir(spec.name)
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            _write(d / attr, "", 0o200)
        if spec.name == "pciback":
            for attr in ("new_slot", "remove_slot", "permissive", "quirks"):
                _write(d / attr, "", 0o600)
            _write(d / "slots", "")
        _rel_link(d / "module", self.sys / "module" / spec.module.replace("-", "_"))
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

    def _parent_dir(self, address: PciAddress, parent: str | None) -> Path:
        if parent is not None:
            return self.path_of(parent)
        root_dir = self.devices_root / f"pci{address.domain:04x}:{address.bus:02x}"
        root_dir.mkdir(parents=True, exist_ok=True)
        return root_dir

    def new_group(self) -> int:
        group = self._groups_next
        self._groups_next += 1
        return group

    def add_device(
        self,
        address: str,
        *,
        vendor: int,
        device: int,
        class_code: int,
        driver: str | None = None,
        group: int | str | None = "auto",
        parent: str | None = None,
        subsystem: tuple[int, int] = (0, 0),
        revision: int = 0,
        caps: Sequence[Cap | ExtCap] = (),
        ext_caps: Sequence[ExtCap] = (),
        header_type: int = 0,
        multifunction: bool = False,
        numa_node: int = -1,
        reset_method: str | None = None,
        boot_vga: bool | None = None,
        secondary_bus: int | None = None,
        config_size: int | None = None,
        rom: bytes | None = None,
    ) -> Path:
        addr = PciAddress.parse(address)
        name = str(addr)
        directory = self._parent_dir(addr, parent) / name
        directory.mkdir(parents=True, exist_ok=True)
        self._paths[name] = directory
        kwargs: dict[str, object] = {}
        if header_type == 1 and secondary_bus is not None:
            kwargs["secondary_bus"] = secondary_bus
            kwargs["subordinate_bus"] = secondary_bus
        config = build_config(
            vendor,
            device,
            class_code=class_code,
            revision=revision,
            header_type=header_type,
            multifunction=multifunction,
            subsystem=subsystem,
            caps=caps,
            ext_caps=ext_caps,
            size=config_size,
            **kwargs,  # type: ignore[arg-type]
        )
        _write(directory / "config", config)
        _write(directory / "vendor", f"0x{vendor:04x}\n", 0o444)
        _write(directory / "device", f"0x{device:04x}\n", 0o444)
        _write(directory / "subsystem_vendor", f"0x{subsystem[0]:04x}\n", 0o444)
        _write(directory / "subsystem_device", f"0x{subsystem[1]:04x}\n", 0o444)
        _write(directory / "class", f"0x{class_code:06x}\n", 0o444)
        _write(directory / "revision", f"0x{revision:02x}\n", 0o444)
        _write(directory / "numa_node", f"{numa_node}\n", 0o644)
        if self.driver_override:
            _write(directory / "driver_override", "(null)\n", 0o644)
        _write(directory / "enable", "1\n", 0o644)
        _write(directory / "remove", "", 0o200)
        if reset_method is not None:
            _write(directory / "reset_method", reset_method + "\n", 0o644)
            _write(directory / "reset", "", 0o200)
        if boot_vga is not None:
            _write(directory / "boot_vga", "1\n" if boot_vga else "0\n", 0o444)
        if rom is not None:
            self.set_rom(name, rom)
        _rel_link(directory / "subsystem", self.sys / "bus" / "pci")
        _rel_link(self.bus / "devices" / name, directory)
        if group == "auto":
            group = self.new_group()
        if isinstance(group, int) and self.iommu_groups:
            self.put_in_group(name, group)
        self._write_uevent(name, None)
        if driver is not None:
            self.add_driver(driver)
            self.bind(name, KNOWN_DRIVERS.get(driver, FakeDriver(driver, driver)).name)
        return directory

    ROM_STORE = ".fake-rom"  # the ROM BAR's content, shown in ``rom`` only while enabled

    def set_rom(self, address: str, content: bytes) -> None:
        """Give a device an option ROM: its ``rom`` attribute stays empty until
        "1" is written to it, as the kernel answers reads only then."""
        name = str(PciAddress.parse(address))
        _write(self.base / self.ROM_STORE / name, content, 0o600)
        _write(self.path_of(name) / "rom", b"", 0o600)

    def put_in_group(self, address: str, group: int) -> None:
        directory = self.path_of(address)
        group_dir = self.sys / "kernel" / "iommu_groups" / str(group)
        (group_dir / "devices").mkdir(parents=True, exist_ok=True)
        _write(group_dir / "type", "DMA\n", 0o644)
        _rel_link(group_dir / "devices" / directory.name, directory)
        _rel_link(directory / "iommu_group", group_dir)
        self._groups_next = max(self._groups_next, group + 1)

    def add_bridge(
        self,
        address: str,
        *,
        secondary_bus: int,
        parent: str | None = None,
        vendor: int = 0x8086,
        device: int = 0x2940,
        group: int | str | None = "auto",
        caps: Sequence[Cap | ExtCap] = (),
        ext_caps: Sequence[ExtCap] = (),
        driver: str | None = "pcieport",
    ) -> Path:
        return self.add_device(
            address,
            vendor=vendor,
            device=device,
            class_code=0x060400,
            header_type=1,
            secondary_bus=secondary_bus,
            parent=parent,
            group=group,
            caps=caps,
            ext_caps=ext_caps,
            driver=driver,
        )

    def add_host_bridge(
        self, address: str = "0000:00:00.0", vendor: int = 0x8086, device: int = 0x29C0
    ) -> Path:
        return self.add_device(address, vendor=vendor, device=device, class_code=0x060000)

    def add_vfs(
        self,
        pf: str,
        count: int,
        *,
        vf_device: int,
        first_vf: str,
        stride: int = 1,
        driver: str | None = None,
        total: int | None = None,
    ) -> list[str]:
        """SR-IOV: ``count`` VFs of ``pf`` starting at ``first_vf`` (PCIe SR-IOV 1.1 §3.3.10)."""
        pf_dir = self.path_of(pf)
        PciAddress.parse(pf)
        start = PciAddress.parse(first_vf)
        vendor = int((pf_dir / "vendor").read_text(), 16)
        _write(pf_dir / "sriov_totalvfs", f"{total if total is not None else count}\n", 0o444)
        _write(pf_dir / "sriov_numvfs", f"{count}\n", 0o644)
        names = []
        for index in range(count):
            flat = (start.slot << 3 | start.function) + index * stride
            vf = PciAddress(start.domain, start.bus, flat >> 3, flat & 7)
            # VFs sit beside their PF, under the same upstream bridge.
            parent = pf_dir.parent.name if pf_dir.parent.name.count(":") == 2 else None
            self.add_device(
                str(vf),
                vendor=vendor,
                device=vf_device,
                class_code=0x020000,
                parent=parent,
                driver=driver,
            )
            vf_dir = self.path_of(str(vf))
            _rel_link(vf_dir / "physfn", pf_dir)
            _rel_link(pf_dir / f"virtfn{index}", vf_dir)
            names.append(str(vf))
        return names

    # ---- binding (used by the kit and by FakeKernel) -----------------------
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
        _write(directory / "uevent", "\n".join(lines) + "\n", 0o644)

    def bound_driver(self, address: str) -> str | None:
        link = self.path_of(address) / "driver"
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def bind(self, address: str, driver_name: str) -> None:
        directory = self.path_of(address)
        ddir = self.driver_dir(driver_name)
        _rel_link(directory / "driver", ddir)
        _rel_link(ddir / directory.name, directory)
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

    def remove_device(self, address: str) -> None:
        """The device vanishes (surprise removal, hot-unplug)."""
        directory = self.path_of(address)
        self.unbind(address)
        os.unlink(self.bus / "devices" / directory.name)
        group_link = directory / "iommu_group"
        if os.path.islink(group_link):
            member = group_link.resolve() / "devices" / directory.name
            if os.path.lexists(member):
                member.unlink()
        shutil.rmtree(directory)
        del self._paths[directory.name]

    # ---- host use: disks, NICs, console ----------------------------------
    def add_disk(
        self, controller: str, name: str = "sda", *, partitions: int = 1, major: int = 8
    ) -> list[str]:
        """A disk behind ``controller`` (ATA-like path), with partitions name1..N."""
        ctl = self.path_of(controller)
        index = self._disk_count
        self._disk_count += 1
        disk_dir = (
            ctl
            / f"ata{index + 1}"
            / f"host{index}"
            / f"target{index}:0:0"
            / f"{index}:0:0:0"
            / "block"
            / name
        )
        minor = index * 16
        _write(disk_dir / "dev", f"{major}:{minor}\n")
        _rel_link(self.sys / "class/block" / name, disk_dir)
        _rel_link(self.sys / "dev/block" / f"{major}:{minor}", disk_dir)
        parts = []
        for number in range(1, partitions + 1):
            part = f"{name}{number}"
            part_dir = disk_dir / part
            _write(part_dir / "partition", f"{number}\n")
            _write(part_dir / "dev", f"{major}:{minor + number}\n")
            _rel_link(self.sys / "class/block" / part, part_dir)
            _rel_link(self.sys / "dev/block" / f"{major}:{minor + number}", part_dir)
            parts.append(part)
        return parts

    def add_mount(self, mountpoint: str, block: str, fstype: str = "ext4") -> None:
        self.mounts.append(f"/dev/{block} {mountpoint} {fstype} rw,relatime 0 0")
        self._flush_proc()

    def add_swap(self, block: str) -> None:
        self.swaps.append(f"/dev/{block}\tpartition\t2097148\t0\t-2")
        self._flush_proc()

    def add_nic(self, address: str, iface: str) -> None:
        directory = self.path_of(address)
        net_dir = directory / "net" / iface
        _write(net_dir / "operstate", "up\n")
        _write(net_dir / "address", "52:54:00:12:34:56\n")
        _rel_link(net_dir / "device", directory)
        _rel_link(self.sys / "class/net" / iface, net_dir)

    def add_route(
        self,
        iface: str,
        *,
        default: bool = False,
        network: str = "192.168.1.0",
        prefix: int = 24,
        local: str | None = None,
    ) -> None:
        """A connected route (and optionally the default route) via ``iface``."""
        import ipaddress

        def hexle(ip: str) -> str:
            return f"{int.from_bytes(ipaddress.IPv4Address(ip).packed, 'little'):08X}"

        mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
        if default:
            gateway = str(ipaddress.IPv4Network(f"{network}/{prefix}")[1])
            self.routes.append(
                f"{iface}\t00000000\t{hexle(gateway)}\t0003\t0\t0\t0\t00000000\t0\t0\t0"
            )
        self.routes.append(
            f"{iface}\t{hexle(network)}\t00000000\t0001\t0\t0\t0\t{hexle(mask)}\t0\t0\t0"
        )
        if local is not None:
            self.local_v4.append(local)
        self._flush_proc()

    def add_console(self, address: str, fb: str = "fb0") -> None:
        _write(self.path_of(address) / "boot_vga", "1\n", 0o444)
        fb_dir = self.path_of(address) / "graphics" / fb
        _rel_link(fb_dir / "device", self.path_of(address))
        _rel_link(self.sys / "class/graphics" / fb, fb_dir)

    def _flush_proc(self) -> None:
        proc = self.base / "proc"
        _write(
            proc / "mounts",
            "".join(
                m + "\n"
                for m in [
                    "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0",
                    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
                    *self.mounts,
                ]
            ),
        )
        _write(
            proc / "swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
            + "".join(s + "\n" for s in self.swaps),
        )
        header = (
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        )
        _write(proc / "net/route", header + "".join(r + "\n" for r in self.routes))
        trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n"
        for local in self.local_v4:
            trie += f"     |-- {local}\n        /32 host LOCAL\n"
        _write(proc / "net/fib_trie", trie)
        _write(proc / "net/if_inet6", "".join(i + "\n" for i in self.inet6))

    # ---- files -------------------------------------------------------------
    def write_file(self, absolute: str, content: str | bytes, mode: int = 0o644) -> Path:
        path = self.base / absolute.lstrip("/")
        _write(path, content, mode)
        return path

    def write_pci_ids(self, text: str) -> Path:
        return self.write_file("/usr/share/misc/pci.ids", text)


class FakeKernel:
    """Acts on sysfs control-file writes as Linux does.  Plug into ``Sysfs(writer=...)``.

    Behaviour modelled (drivers/pci/pci-driver.c, bus.c, pci-sysfs.c,
    drivers/xen/xen-pciback/pci_stub.c):
    * ``drivers/X/unbind``: ENODEV unless bound to X; removes both links.
    * ``drivers/X/bind``: EBUSY if bound; ENODEV unless X's id table,
      ``driver_override == X``, or (pciback) its slot list matches.
    * ``driver_override``: sets the override; empty or "\\n" clears it.
    * ``drivers_probe``: binds an unbound device to its override (only), or
      the first driver whose id table matches.
    * ``drivers/X/new_id``: adds an id and binds matching unbound devices now,
      as the kernel does (a trap: the host's own identical device is taken too).
    * ``pciback new_slot/remove_slot``: edits pciback's slot list.
    * ``reset``: works only if ``reset_method`` lists something.
    * ``rom``: exactly "0\\n" disables reading (empties the file), any other
      write enables it (the file shows the ROM); pci-sysfs.c's pci_write_rom.
    Failures on demand: :meth:`fail` makes a matching write raise OSError.
    """

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.writes: list[tuple[str, str]] = []
        self._failures: list[tuple[str, str | None, int, int]] = []
        slots = host.driver_dir("pciback") / "slots"
        self.pciback_slots: set[str] = set(slots.read_text().split()) if slots.exists() else set()
        self.on_write: Callable[[str, str], None] | None = None  # before the kernel acts
        self.on_written: Callable[[str, str], None] | None = None  # after it acted
        self.module_failures: list[tuple[str, str, int]] = []  # (load|unload, module, errno)
        self.module_ids: dict[str, set[tuple[int, int]]] = {}  # vfio-pci ids= of this load
        self.probe_failures: set[str] = set()  # functions whose probe fails at a module load

    def fail(
        self, pattern: str, err: int = errno.EIO, *, value: str | None = None, times: int = 1
    ) -> None:
        """Make the next ``times`` writes to paths matching ``pattern`` (a glob on
        the host path, e.g. ``*/drivers/pciback/bind``) fail with ``err``."""
        self._failures.append((pattern, value, err, times))

    def _maybe_fail(self, host_path: str, value: str) -> None:
        for index, (pattern, want, err, times) in enumerate(self._failures):
            if fnmatch.fnmatch(host_path, pattern) and (want is None or want == value):
                if times <= 1:
                    del self._failures[index]
                else:
                    self._failures[index] = (pattern, want, err, times - 1)
                raise OSError(err, os.strerror(err))

    def write(self, path: Path, value: str) -> None:
        host_path = "/" + str(path.relative_to(self.host.base))
        self.writes.append((host_path, value))
        if self.on_write is not None:
            self.on_write(host_path, value)
        self._maybe_fail(host_path, value)
        text = value.strip()
        parts = Path(host_path).parts
        if host_path == "/sys/bus/pci/drivers_probe":
            self._probe(self._device(text))
        elif len(parts) == 7 and parts[1:5] == ("sys", "bus", "pci", "drivers"):
            self._driver_write(parts[5], parts[6], text)
        elif path.name == "driver_override":
            self._device_dir_of(path)
            (path).write_text((text or "(null)") + "\n")
        elif path.name == "rom" and path.exists():
            name = self._device_dir_of(path)
            enable = value != "0\n"
            path.write_bytes(
                (self.host.base / FakeHost.ROM_STORE / name).read_bytes() if enable else b""
            )
        elif fakeconsole.handles(parts):  # GPU parts: console holders, resets
            fakeconsole.kernel_write(self.host.base, path, parts, text)
        elif not path.exists():
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        else:
            path.write_text(value)
        if self.on_written is not None:
            self.on_written(host_path, value)

    # ---- helpers ---------------------------------------------------------
    def _device(self, text: str) -> str:
        try:
            name = str(PciAddress.parse(text))
        except Exception as error:  # the kernel answers garbage with ENODEV
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV)) from error
        if name not in self.host._paths:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return name

    def _device_dir_of(self, path: Path) -> str:
        name = path.parent.name
        if name not in self.host._paths:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return name

    def _override(self, name: str) -> str | None:
        path = self.host.path_of(name) / "driver_override"
        if not path.exists():
            return None
        text = path.read_text().strip()
        return None if text in ("", "(null)") else text

    def _ids(self, name: str) -> tuple[int, int]:
        directory = self.host.path_of(name)
        return (
            int((directory / "vendor").read_text(), 16),
            int((directory / "device").read_text(), 16),
        )

    def _loaded(self) -> dict[str, FakeDriver]:
        loaded: dict[str, FakeDriver] = {}
        for entry in sorted(os.listdir(self.host.bus / "drivers")):
            spec = next((d for d in KNOWN_DRIVERS.values() if d.name == entry), None)
            loaded[entry] = spec or FakeDriver(entry, entry)
        return loaded

    def _accepts(self, driver: FakeDriver, name: str) -> bool:
        override = self._override(name)
        if override is not None:
            # pci_match_device(): with driver_override set, only that driver matches.
            return override == driver.name
        if driver.name == "pciback":
            return name in self.pciback_slots
        return self._ids(name) in driver.ids | self.module_ids.get(driver.name, set())

    def _probe(self, name: str) -> None:
        if self.host.bound_driver(name) is not None:
            return
        for driver in self._loaded().values():
            if self._accepts(driver, name):
                self.host.bind(name, driver.name)
                return

    def _driver_write(self, driver_name: str, attr: str, text: str) -> None:
        loaded = self._loaded()
        driver = loaded.get(driver_name)
        if driver is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if attr == "bind":
            name = self._device(text)
            if self.host.bound_driver(name) is not None:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            if not self._accepts(driver, name):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self.host.bind(name, driver.name)
        elif attr == "unbind":
            name = self._device(text)
            if self.host.bound_driver(name) != driver.name:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self.host.unbind(name)
        elif attr == "new_id":
            fields = text.split()
            if len(fields) < 2:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            driver.ids.add((int(fields[0], 16), int(fields[1], 16)))
            for name in list(self.host._paths):
                if self.host.bound_driver(name) is None and self._accepts(driver, name):
                    self.host.bind(name, driver.name)
        elif attr == "remove_id":
            fields = text.split()
            driver.ids.discard((int(fields[0], 16), int(fields[1], 16)))
        elif attr == "new_slot" and driver.name == "pciback":
            self.pciback_slots.add(self._device(text))
            self._write_slots()
        elif attr == "remove_slot" and driver.name == "pciback":
            name = self._device(text)
            if name not in self.pciback_slots:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            self.pciback_slots.discard(name)
            self._write_slots()
        else:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def _write_slots(self) -> None:
        slots = self.host.driver_dir("pciback") / "slots"
        if slots.parent.exists():
            slots.write_text("".join(f"{s}\n" for s in sorted(self.pciback_slots)))

    # ---- modules (the work is in testing/fakemodprobe.py) ---------------------
    def fail_module(self, module: str, *, unload: bool = False, err: int = errno.EIO) -> None:
        """Make the next load (or unload) of ``module`` fail, as a broken module would."""
        self.module_failures.append(("unload" if unload else "load", module.replace("_", "-"), err))

    def known_module(self, module: str) -> FakeDriver | None:
        return KNOWN_DRIVERS.get(module) or KNOWN_DRIVERS.get(module.replace("_", "-"))

    def module_loaded(self, module: str) -> bool:
        from pcipass.testing import fakemodprobe

        return fakemodprobe.module_loaded(self, module)

    def load_module(self, module: str, params: Mapping[str, str] | None = None) -> None:
        from pcipass.testing import fakemodprobe

        fakemodprobe.load_module(self, module, params or {})

    def unload_module(self, module: str) -> None:
        from pcipass.testing import fakemodprobe

        fakemodprobe.unload_module(self, module)


class FakeRunner:
    """A CommandRunner answering ``modprobe`` through the fake kernel and
    recording every other command (optionally with canned answers)."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.calls: list[tuple[str, ...]] = []
        self.answers: dict[str, CommandResult] = {}
        self.programs: set[str] = {"modprobe"}
        # xl, xm and virsh remember what each running guest holds (hotplug truth).
        from pcipass.testing.faketoolstack import FakeToolstack

        self.toolstack = FakeToolstack()

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        program = os.path.basename(args[0])
        if program == "modprobe":
            from pcipass.testing.fakemodprobe import run_modprobe

            return run_modprobe(self.kernel, args)
        for key, answer in self.answers.items():
            if " ".join(args).startswith(key):
                return CommandResult(args, answer.returncode, answer.stdout, answer.stderr)
        if program not in self.programs:
            return CommandResult(args, 127, "", f"{program}: not found\n")
        handled = self.toolstack.handle(args)
        if handled is not None:
            return handled
        return CommandResult(args, 0, "", "")

    def which(self, program: str) -> str | None:
        return f"/usr/bin/{program}" if program in self.programs else None


def snapshot(base: Path, *, skip: Sequence[str] = ("var/lib/pcipass",)) -> dict[str, object]:
    """Every file's bytes and every link's target under ``base``: refusal
    tests compare snapshots to prove nothing changed."""
    result: dict[str, object] = {}
    for directory, dirs, files in os.walk(base):
        rel_dir = os.path.relpath(directory, base)
        if any(rel_dir == s or rel_dir.startswith(s + "/") for s in skip):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            if os.path.islink(path):
                result[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    result[rel] = ("file", handle.read(), os.stat(path).st_mode & 0o7777)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
    return result
