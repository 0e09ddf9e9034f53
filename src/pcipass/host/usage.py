"""What the host itself uses each PCI function for (data for rule PP001).

The document (§15.5): "If the host is using the device, the device cannot be
assigned to the guest."  Users' worst failure is a host that loses its root
disk or its management NIC (it then cannot
boot or be reached to undo the change), so this module finds, from
``/proc`` and ``/sys`` under the injected root only:

* block devices behind mounted filesystems (``/proc/self/mountinfo``, else
  ``/proc/mounts``) and active swap (``/proc/swaps``), through device-mapper
  and md ``slaves`` down to the disk, and up the sysfs path to the PCI function;
* network interfaces that carry the default route (``/proc/net/route``) or an
  address (IPv4 local addresses from ``/proc/net/fib_trie`` matched to the
  interface whose connected route holds them; IPv6 from ``/proc/net/if_inet6``),
  through bridges, bonds and VLANs (``lower_*`` and ``brif``) to the NIC;
* the boot console: the boot VGA device and the PCI parents of framebuffers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host.sysfs import Sysfs
from pcipass.record import dataclass


@dataclass(frozen=True)
class HostUse:
    kind: str  # mount | swap | route | address | console
    detail: str  # "/ (ext4 on /dev/sda1)", "default route via eth0"...
    via: str  # the block device or interface that leads to the function

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail, "via": self.via}

    def __str__(self) -> str:
        return self.detail

    @property
    def short(self) -> str:
        """A few words for tables: ``mount /``, ``swap``, ``default route``."""
        if self.kind == "mount":
            return "mount " + self.detail.split(" ")[2]
        return {"route": "default route", "address": "address", "swap": "swap"}.get(
            self.kind, self.kind
        )


def _pci_ancestor(sysfs: Sysfs, path: Path | None) -> PciAddress | None:
    """Nearest PCI function above a sysfs device path."""
    if path is None:
        return None
    for part in reversed(path.parts):
        try:
            return PciAddress.parse(part)
        except AddressError:
            continue
    return None


def _unescape_mount(text: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal (\040).
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class UsageScanner:
    def __init__(self, sysfs: Sysfs, boot_vga: Sequence[PciAddress] | None = None) -> None:
        self.sysfs = sysfs
        self.root = sysfs.root
        self.problems: list[str] = []
        # The boot VGA functions when the caller has already read every device
        # (list does); otherwise each device's boot_vga attribute is read here.
        self.boot_vga = boot_vga

    def scan(self) -> dict[PciAddress, list[HostUse]]:
        uses: dict[PciAddress, list[HostUse]] = {}

        def add(address: PciAddress | None, use: HostUse) -> None:
            if address is not None and use not in uses.setdefault(address, []):
                uses[address].append(use)

        for address, use in self._block_uses():
            add(address, use)
        for address, use in self._net_uses():
            add(address, use)
        for address, use in self._console_uses():
            add(address, use)
        return {a: u for a, u in uses.items() if u}

    # ---- block ----------------------------------------------------------
    def _block_sys_path(self, name: str) -> Path | None:
        return self.sysfs.resolve(self.root.path("/sys/class/block") / name)

    def _block_by_majmin(self, majmin: str) -> Path | None:
        return self.sysfs.resolve(self.root.path("/sys/dev/block") / majmin)

    def _disk_functions(self, block: Path | None, seen: set[str] | None = None) -> list[PciAddress]:
        """PCI functions under a block device, following dm/md slaves."""
        if block is None:
            return []
        seen = seen if seen is not None else set()
        if str(block) in seen:
            return []
        seen.add(str(block))
        slaves_dir = block / "slaves"
        slaves = self.sysfs.list_dir(slaves_dir)
        if not slaves and (block / "partition").exists():
            slaves_dir = block.parent / "slaves"
            slaves = self.sysfs.list_dir(slaves_dir)
        if slaves:
            found: list[PciAddress] = []
            for slave in slaves:
                found.extend(self._disk_functions(self.sysfs.resolve(slaves_dir / slave), seen))
            return found
        address = _pci_ancestor(self.sysfs, block)
        return [address] if address is not None else []

    def _block_device_path(self, source: str) -> Path | None:
        if not source.startswith("/dev/"):
            return None
        name = source[len("/dev/") :]
        if name.startswith("mapper/"):
            target = self.sysfs.resolve(self.root.path(source))
            if target is not None:
                return self._block_sys_path(target.name)
            wanted = name[len("mapper/") :]
            for dm in self.sysfs.list_dir(self.root.path("/sys/class/block")):
                if dm.startswith("dm-"):
                    dm_path = self._block_sys_path(dm)
                    if dm_path and self.sysfs.read_text(dm_path / "dm" / "name") == wanted:
                        return dm_path
            return None
        if "/" in name:
            target = self.sysfs.resolve(self.root.path(source))
            return self._block_sys_path(target.name) if target is not None else None
        return self._block_sys_path(name)

    def _block_uses(self) -> list[tuple[PciAddress, HostUse]]:
        results: list[tuple[PciAddress, HostUse]] = []
        mountinfo = self.sysfs.read_text(self.root.path("/proc/self/mountinfo"))
        if mountinfo:
            for line in mountinfo.splitlines():
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                majmin, mountpoint = fields[2], _unescape_mount(fields[4])
                post = line.split(" - ", 1)[1].split()
                fstype = post[0] if post else "?"
                source = post[1] if len(post) > 1 else "?"
                if majmin.startswith("0:"):
                    continue  # virtual filesystems have major 0
                block = self._block_by_majmin(majmin)
                for address in self._disk_functions(block):
                    detail = f"mounted filesystem {mountpoint} ({fstype} on {source})"
                    results.append((address, HostUse("mount", detail, source)))
        else:
            mounts = self.sysfs.read_text(self.root.path("/proc/mounts"))
            if mounts is None:
                self.problems.append("cannot read /proc/mounts: mounted disks not checked")
            for line in (mounts or "").splitlines():
                fields = line.split()
                if len(fields) < 3:
                    continue
                source, mountpoint, fstype = fields[0], _unescape_mount(fields[1]), fields[2]
                for address in self._disk_functions(self._block_device_path(source)):
                    detail = f"mounted filesystem {mountpoint} ({fstype} on {source})"
                    results.append((address, HostUse("mount", detail, source)))
        swaps = self.sysfs.read_text(self.root.path("/proc/swaps"))
        for line in (swaps or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) < 2 or fields[1] != "partition":
                continue  # a swap file lives on a filesystem already counted as a mount
            source = _unescape_mount(fields[0])
            for address in self._disk_functions(self._block_device_path(source)):
                results.append((address, HostUse("swap", f"active swap on {source}", source)))
        return results

    # ---- network --------------------------------------------------------
    def _net_functions(self, iface: str, seen: set[str] | None = None) -> list[PciAddress]:
        """PCI functions carrying an interface, through bridge/bond/vlan stacking."""
        seen = seen if seen is not None else set()
        if iface in seen or "/" in iface or iface in (".", ".."):
            return []
        seen.add(iface)
        net_dir = self.root.path("/sys/class/net") / iface
        device = self.sysfs.resolve(net_dir / "device")
        if device is not None:
            address = _pci_ancestor(self.sysfs, device)
            return [address] if address is not None else []
        lowers = [
            n[len("lower_") :] for n in self.sysfs.list_dir(net_dir) if n.startswith("lower_")
        ]
        lowers += self.sysfs.list_dir(net_dir / "brif")
        found: list[PciAddress] = []
        for lower in lowers:
            found.extend(self._net_functions(lower, seen))
        return found

    def _routes(self) -> list[tuple[str, int, int, bool]]:
        text = self.sysfs.read_text(self.root.path("/proc/net/route"))
        if text is None:
            self.problems.append("cannot read /proc/net/route: routes not checked")
            return []
        routes = []
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                dest = int(fields[1], 16)
                mask = int(fields[7], 16)
                flags = int(fields[3], 16)
            except ValueError:
                continue
            up = bool(flags & 0x1)  # RTF_UP
            routes.append((fields[0], dest, mask, up))
        return routes

    def _local_ipv4(self) -> list[str]:
        """IPv4 addresses of this host, from /proc/net/fib_trie ``/32 host LOCAL``."""
        text = self.sysfs.read_text(self.root.path("/proc/net/fib_trie"))
        found: list[str] = []
        last_leaf: str | None = None
        for line in (text or "").splitlines():
            stripped = line.strip()
            if stripped.startswith("|--"):
                last_leaf = stripped[3:].strip()
            elif (
                "host LOCAL" in stripped
                and last_leaf
                and last_leaf not in found
                and not last_leaf.startswith("127.")
            ):
                found.append(last_leaf)
        return found

    def _net_uses(self) -> list[tuple[PciAddress, HostUse]]:
        results: list[tuple[PciAddress, HostUse]] = []
        routes = self._routes()
        for iface, dest, mask, up in routes:
            if up and dest == 0 and mask == 0:
                for address in self._net_functions(iface):
                    results.append(
                        (address, HostUse("route", f"carries the default route ({iface})", iface))
                    )
        for local in self._local_ipv4():
            try:
                value = int.from_bytes(ipaddress.IPv4Address(local).packed, "little")
            except ValueError:
                continue
            for iface, dest, mask, up in routes:
                if up and mask != 0 and (value & mask) == dest:
                    for address in self._net_functions(iface):
                        results.append(
                            (address, HostUse("address", f"has address {local} ({iface})", iface))
                        )
                    break
        inet6 = self.sysfs.read_text(self.root.path("/proc/net/if_inet6"))
        for line in (inet6 or "").splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            raw, scope, iface = fields[0], fields[3], fields[5]
            if scope != "00" or iface == "lo":
                continue  # only global addresses; link-local fe80:: is not a use
            try:
                text_addr = str(ipaddress.IPv6Address(bytes.fromhex(raw)))
            except ValueError:
                continue
            for address in self._net_functions(iface):
                results.append(
                    (address, HostUse("address", f"has address {text_addr} ({iface})", iface))
                )
        return results

    # ---- console --------------------------------------------------------
    def _console_uses(self) -> list[tuple[PciAddress, HostUse]]:
        results: list[tuple[PciAddress, HostUse]] = []
        boot_vga = self.boot_vga
        if boot_vga is None:
            devices_dir = self.root.pci_devices
            found = []
            for name in self.sysfs.list_dir(devices_dir):
                if self.sysfs.read_text(devices_dir / name / "boot_vga") == "1":
                    try:
                        found.append(PciAddress.parse(name))
                    except AddressError:
                        continue
            boot_vga = found
        for address in boot_vga:
            results.append((address, HostUse("console", "boot VGA console", str(address))))
        graphics = self.root.path("/sys/class/graphics")
        for fb in self.sysfs.list_dir(graphics):
            if not fb.startswith("fb"):
                continue
            device = self.sysfs.resolve(graphics / fb / "device")
            fb_address = _pci_ancestor(self.sysfs, device)
            if fb_address is not None:
                use = HostUse("console", f"framebuffer console /dev/{fb}", fb)
                results.append((fb_address, use))
        return results


def host_uses(
    sysfs: Sysfs, boot_vga: Sequence[PciAddress] | None = None
) -> tuple[dict[PciAddress, list[HostUse]], list[str]]:
    scanner = UsageScanner(sysfs, boot_vga)
    uses = scanner.scan()
    return uses, scanner.problems
