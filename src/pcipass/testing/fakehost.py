"""A fake host tree in the kernel's real shape, built for tests and examples.

Used by the tests, the benchmarks and the example host (``python -m
pcipass.testing.example DIR``).  :class:`FakeHost` builds ``sys``, ``proc``,
``etc`` and ``usr/share`` under a directory from domain words
(:meth:`FakeHost.add_bridge`, :meth:`FakeHost.add_device`, :meth:`FakeHost.add_vfs`,
:meth:`FakeHost.add_disk`, :meth:`FakeHost.add_nic`...).  The kernel behind it
is the product's simulated kernel (:mod:`pcipass.simkernel`, named
:class:`FakeKernel` and :class:`FakeRunner` here): it
hooks the one sysfs write seam (``Sysfs.write_attr``) and does what Linux
does on writes to ``bind``, ``unbind``, ``driver_override``, ``drivers_probe``,
``new_id``, pciback's ``new_slot``..., including failing on demand with the
kernel's errno.  Every *read* path of pcipass stays production code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.host.context import SIMULATED_MARKER
from pcipass.simkernel.kernel import SimKernel
from pcipass.simkernel.runner import SimRunner
from pcipass.simkernel.tree import KNOWN_DRIVERS, SimDriver, SimTree
from pcipass.simkernel.tree import rel_link as _rel_link
from pcipass.simkernel.tree import write_file as _write
from pcipass.testing.config_builder import Cap, ExtCap, build_config

# The simulated kernel is product code (pcipass.simkernel): the CLI runs an
# example tree on it.  The tests keep their names for it.
FakeKernel = SimKernel
FakeRunner = SimRunner
FakeDriver = SimDriver

__all__ = ["KNOWN_DRIVERS", "FakeDriver", "FakeHost", "FakeKernel", "FakeRunner", "snapshot"]


class FakeHost(SimTree):
    """Builds a host tree under ``base``.  Addresses are given as text."""

    def __init__(
        self,
        base: Path,
        *,
        kernel_release: str = "6.1.0-26-amd64",
        iommu_groups: bool = True,
        driver_override: bool = True,
    ) -> None:
        super().__init__(base, iommu_groups=iommu_groups, driver_override=driver_override)
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

    MARKER = SIMULATED_MARKER

    @classmethod
    def load(cls, base: Path) -> FakeHost:
        """Re-open a tree built earlier, to add to it or to read its bindings."""
        host = super().load(base)
        host._groups_next = 0
        host._disk_count = 0
        return host

    def mark_simulated(self) -> None:
        """Let ``pcipass --root`` drive this tree with the simulated kernel (demo)."""
        _write(self.base / self.MARKER, "pcipass example host: sysfs writes are simulated\n")

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
