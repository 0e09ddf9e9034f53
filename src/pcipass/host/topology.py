"""Where a function sits: its configuration space and the bus it shares.

Read from sysfs only; the rules above (reset readiness, isolation, identity)
decide what these facts mean.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.host.config_space import ConfigSpace, parse_config
from pcipass.host.context import Host
from pcipass.host.device import PciDevice, list_addresses


def read_config(host: Host, address: PciAddress) -> ConfigSpace | None:
    """The parsed configuration space, or None when sysfs will not give it."""
    data = host.sysfs.read_bytes(host.root.pci_device(address) / "config")
    return None if data is None else parse_config(data)


def bus_reset_blocker(host: Host, dev: PciDevice) -> str:
    """Why a secondary bus reset cannot be used for this function ('' if it can).

    A bus reset resets every function below the parent bridge (PCI-to-PCI
    Bridge 1.2 §3.2.5.17), so it is unsafe while another function there is
    used by the host; it is never possible on a root bus (no bridge to pulse).
    """
    if dev.parent is None:
        return "the device is on a root bus (no bridge above it to reset)"
    siblings = [
        a
        for a in list_addresses(host.sysfs)
        if a != dev.address and (a.domain, a.bus) == (dev.address.domain, dev.address.bus)
    ]
    if siblings:
        return f"the bus is shared with {', '.join(str(s) for s in siblings)}"
    return ""
