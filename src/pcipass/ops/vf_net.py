"""Per-VF network settings of a network PF: MAC, VLAN, trust, spoof checking.

They are set and read through ``ip link set DEV vf N ...`` and ``ip -j link
show dev DEV``, run by the runner with an argument list, never a shell.
pyroute2 (netlink from Python) is not a dependency of pcipass: ``ip`` is on
every host that has SR-IOV NICs, and the persistent form (udev ``RUN+=``)
needs the same ``ip`` command line anyway.  Every value is validated here
before it reaches a command line or a rules file.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

from pcipass.address import PciAddress
from pcipass.errors import AddressError, OperationFailed, UsageError
from pcipass.host.context import Host
from pcipass.patterns import lazy
from pcipass.record import dataclass

_MAC = lazy(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NETDEV = lazy(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ 16 with the NUL
SWITCHES = ("on", "off")


@dataclass(frozen=True)
class VfSetting:
    index: int
    key: str  # "mac" / "vlan" / "trust" / "spoofchk"
    value: str

    def ip_args(self) -> tuple[str, ...]:
        return ("vf", str(self.index), self.key, self.value)

    def describe(self) -> str:
        return f"vf {self.index} {self.key} {self.value}"


def valid_mac(text: str) -> str:
    mac = text.strip().lower()
    if not _MAC.match(mac):
        raise UsageError(f"MAC {text!r}", "not a MAC address (six hex pairs: 02:00:00:00:00:01)")
    first = int(mac[:2], 16)
    if first & 1:
        raise UsageError(f"MAC {text}", "is a multicast address; a VF needs a unicast one")
    if mac == "00:00:00:00:00:00":
        raise UsageError(f"MAC {text}", "is all zeros (not an address)")
    return mac


def valid_vlan(text: str) -> str:
    # IEEE 802.1Q: VID 4095 is reserved; 0 means untagged (removes the VLAN).
    if not text.strip().isdigit() or not 0 <= int(text) <= 4094:
        raise UsageError(f"VLAN {text!r}", "not a VLAN id (0 to 4094; 0 removes the VLAN)")
    return str(int(text))


def valid_switch(key: str, text: str) -> str:
    if text not in SWITCHES:
        raise UsageError(f"--{key} {text!r}", "say on or off (VF=on)")
    return text


def valid_netdev(name: str) -> str:
    if not _NETDEV.match(name):
        raise OperationFailed(name, "is not a network interface name pcipass can use", "")
    return name


def _vf_index(text: str, vfs: Sequence[PciAddress], count: int) -> int:
    """``VF`` in ``VF=VALUE``: an index (0 for virtfn0) or a VF's address."""
    if text.isdigit():
        index = int(text)
    else:
        try:
            address = PciAddress.parse(text)
        except AddressError as error:
            raise UsageError(text, "not a VF index or a VF address") from error
        if address not in vfs:
            raise UsageError(text, "is not a VF of this PF")
        index = list(vfs).index(address)
    if index >= count:
        raise UsageError(f"VF {text}", f"there are {count} VFs (indexes 0 to {count - 1})")
    return index


def parse_settings(
    specs: dict[str, Sequence[str]], vfs: Sequence[PciAddress], count: int
) -> list[VfSetting]:
    """``{"mac": ["0=02:..."], "vlan": ["1=100"], ...}`` -> validated settings."""
    checks: dict[str, Callable[[str], str]] = {
        "mac": valid_mac,
        "vlan": valid_vlan,
        "trust": functools.partial(valid_switch, "trust"),
        "spoofchk": functools.partial(valid_switch, "spoofchk"),
    }
    result: list[VfSetting] = []
    for key, items in specs.items():
        for item in items:
            vf, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--{key} {item}", "write VF=VALUE (VF: index or address)")
            setting = VfSetting(_vf_index(vf.strip(), vfs, count), key, checks[key](value))
            result = [s for s in result if (s.index, s.key) != (setting.index, setting.key)]
            result.append(setting)
    return result


@dataclass
class VfNet:
    mac: str | None = None
    vlan: int | None = None
    trust: bool | None = None
    spoofchk: bool | None = None

    def to_json(self) -> dict[str, object]:
        return {"mac": self.mac, "vlan": self.vlan, "trust": self.trust, "spoofchk": self.spoofchk}


def read_vf_net(host: Host, netdev: str) -> dict[int, VfNet]:
    """VF index -> its settings, from ``ip -j link show dev NETDEV`` (iproute2 4.13+);
    empty without ``ip`` (or under ``--root``, where no program is run)."""
    if host.runner.which("ip") is None:
        return {}
    result = host.runner.run(["ip", "-j", "link", "show", "dev", valid_netdev(netdev)])
    if result.returncode != 0:
        return {}
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return {}
    found: dict[int, VfNet] = {}
    for link in links if isinstance(links, list) else []:
        for vf in link.get("vfinfo_list", []) if isinstance(link, dict) else []:
            if not isinstance(vf, dict) or not isinstance(vf.get("vf"), int):
                continue
            vlan = vf.get("vlan")
            vlans = vf.get("vlan_list")
            if vlan is None and isinstance(vlans, list) and vlans and isinstance(vlans[0], dict):
                vlan = vlans[0].get("vlan")
            found[vf["vf"]] = VfNet(
                mac=vf.get("address") if isinstance(vf.get("address"), str) else None,
                vlan=vlan if isinstance(vlan, int) else None,
                trust=vf.get("trust") if isinstance(vf.get("trust"), bool) else None,
                spoofchk=vf.get("spoofchk") if isinstance(vf.get("spoofchk"), bool) else None,
            )
    return found


def apply_setting(host: Host, netdev: str, setting: VfSetting) -> None:
    argv = ["ip", "link", "set", "dev", valid_netdev(netdev), *setting.ip_args()]
    host.runner.run(argv).check()


def restoring(old: VfNet | None, setting: VfSetting) -> VfSetting | None:
    """The setting that puts back what ``setting`` changed, when ``ip`` told us."""
    if old is None:
        return None
    if setting.key == "mac" and old.mac and old.mac != "00:00:00:00:00:00":
        return VfSetting(setting.index, "mac", old.mac)
    if setting.key == "vlan":
        return VfSetting(setting.index, "vlan", str(old.vlan or 0))
    flag = old.trust if setting.key == "trust" else old.spoofchk
    if setting.key in ("trust", "spoofchk") and flag is not None:
        return VfSetting(setting.index, setting.key, "on" if flag else "off")
    return None
