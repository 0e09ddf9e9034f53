"""Inventory with owners: the host's devices joined with the ledger's owners.

``pcipass.host.inventory`` reads the bus; this module adds who owns each
device, which only the ledger (a layer above the host) knows.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import PcipassError
from pcipass.host import inventory as host_inventory
from pcipass.host.context import Host
from pcipass.host.inventory import DeviceInfo, Inventory
from pcipass.state.ledger import Ledger


def read_owners(host: Host, problems: list[str]) -> dict[PciAddress, str]:
    """Owners from the ledger, read-only; an absent ledger means no owners.
    A ledger that cannot be read costs only the owner column."""
    try:
        ledger = Ledger.open(host.root, readonly=True)
    except PcipassError as error:
        problems.append(f"owners not shown: {error.render()}")
        return {}
    try:
        return {PciAddress.parse(o.address): o.guest for o in ledger.owners()}
    finally:
        ledger.close()


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
