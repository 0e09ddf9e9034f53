"""Stable device identity, to catch BDF drift.

After a card is added or firmware changes, the same address can name another
device and the wrong device gets hidden or given to a guest (Qubes
issue #7792).  pcipass records, with every hidden or owned address, what the
device *is* and fails closed when that no longer matches.
"""

from __future__ import annotations

from pcipass.host.config_space import format_dsn
from pcipass.host.context import Host
from pcipass.host.device import PciDevice
from pcipass.host.topology import read_config

# Compared keys: ids and class always; serial and slot when both sides know them.
_ALWAYS = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")
_IF_KNOWN = ("serial", "physical_slot")


def identity_of(device: PciDevice, serial: int | None) -> dict[str, str]:
    def hx(value: int | None, width: int) -> str:
        return "?" if value is None else f"{value:0{width}x}"

    result = {
        "vendor": hx(device.vendor, 4),
        "device": hx(device.device, 4),
        "subsystem_vendor": hx(device.subsystem_vendor, 4),
        "subsystem_device": hx(device.subsystem_device, 4),
        "class": hx(device.class_code, 6),
        "bus_path": device.sysfs_path,
    }
    if serial is not None:
        result["serial"] = format_dsn(serial)
    if device.physical_slot:
        result["physical_slot"] = device.physical_slot
    return result


def current_identity(host: Host, device: PciDevice) -> dict[str, str]:
    """The identity of the device at this address now (serial from its config space)."""
    config = read_config(host, device.address)
    return identity_of(device, None if config is None else config.dsn)


def identity_mismatch(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Human-readable differences ('device 1639 -> 10d3'); empty when the same device."""
    changes = []
    for key in _ALWAYS:
        if recorded.get(key) != current.get(key):
            changes.append(f"{key} {recorded.get(key, '?')} -> {current.get(key, '?')}")
    for key in _IF_KNOWN:
        if key in recorded and key in current and recorded[key] != current[key]:
            changes.append(f"{key} {recorded[key]} -> {current[key]}")
    return changes
