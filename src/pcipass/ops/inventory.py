"""Inventory with owners: the host's devices joined with the ledger's owners.

``pcipass.host.inventory`` reads the bus; this module adds who owns each
device, which only the ledger (a layer above the host) knows.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import PcipassError, UsageError
from pcipass.host import inventory as host_inventory
from pcipass.host.context import Host
from pcipass.host.device import class_filter_value
from pcipass.host.inventory import DeviceInfo, Inventory
from pcipass.ops.guests import scan_guests
from pcipass.state.ledger import Ledger


def read_owners(host: Host, problems: list[str]) -> dict[PciAddress, str]:
    """Owners from the ledger, read-only; an absent ledger means no owners.
    A ledger that cannot be read costs only the owner column."""
    try:
        ledger = Ledger.open(host.root, readonly=True)
    except PcipassError as error:
        problems.append(f"owners not shown: {error.render()}")
        return {}
    with ledger:
        return {PciAddress.parse(o.address): o.guest for o in ledger.owners()}


def inventory(host: Host, *, with_owners: bool = True) -> Inventory:
    problems: list[str] = []
    owners = read_owners(host, problems) if with_owners else {}
    inv = host_inventory.inventory(host, owners)
    inv.problems.extend(problems)
    return inv


def device_info(host: Host, address: PciAddress) -> tuple[DeviceInfo, list[str]]:
    """One device with everything ``list`` knows (raises DeviceNotFoundError)."""
    problems: list[str] = []
    owners = read_owners(host, problems)
    info, found = host_inventory.device_info(host, address, owners)
    return info, found + problems


def _class_matches(info: DeviceInfo, wanted: str) -> bool:
    """``--class``: a class name (net, storage, ...) or a hex class code of
    2 (base class), 4 (with sub-class) or 6 digits (with programming interface)."""
    code = info.device.class_code
    if code is None:
        return False
    named = class_filter_value(wanted)
    if named is not None:
        return code >> 16 == named
    text = wanted.lower().removeprefix("0x")
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(
            f"--class {wanted}",
            "unknown class name",
            "use net, storage, display, bridge, ... or a hex code like 0200",
        ) from None
    if len(text) <= 2:
        return code >> 16 == value
    if len(text) <= 4:
        return code >> 8 == value
    return code == value


def filter_devices(
    inv: Inventory,
    *,
    device_class: str | None = None,
    driver: str | None = None,
    group: int | None = None,
) -> list[DeviceInfo]:
    """The devices ``pcipass list`` shows for its filters (``driver='none'``: unbound)."""
    items = inv.devices
    if device_class:
        items = [d for d in items if _class_matches(d, device_class)]
    if driver:
        want = None if driver == "none" else driver
        items = [d for d in items if d.device.driver == want]
    if group is not None:
        items = [d for d in items if d.device.iommu_group == group]
    return items


def guest_listing(host: Host, inv: Inventory) -> dict[str, list[str]]:
    """Address -> guests whose configuration lists it (problems go to inv)."""
    scan = scan_guests(host)
    inv.problems.extend(scan.problems)
    listed: dict[str, list[str]] = {}
    for info in inv.devices:
        names = [g.guest_name for g in scan.listing(info.address)]
        if names:
            listed[str(info.address)] = names
    return listed
