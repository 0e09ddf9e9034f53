"""Which guest configurations claim which PCI function, indexed once.

Rule PP101 (a device belongs to one guest at a time) asks, for every device a
command looks at, which configurations list it.  Asking every configuration
for every device costs guests x devices: ``check`` on a host with 800 guests
and ``list --guests`` on 8192 functions spent most of their time there.  This
index is built once from the parsed configurations (one pass over their
``devices()``), then answers per device in time proportional to the answer.

An entry names a single function (``0000:09:00.0``) or, with xl's function
wildcard, every function of one slot (``0000:09:00.*``, xl-pci-configuration(5)):
the first kind is keyed by address, the second by slot, and
:meth:`AssignedDevice.covers` stays the one judge of a match, so the index
can only make the question faster, never change its answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.guests.model import AssignedDevice, GuestConfig

# (position of the configuration in the scan, position of the entry in its
# devices(), the entry): sorting by the two positions gives the order of a
# full scan, configuration by configuration, entry by entry.
Claim = tuple[int, int, AssignedDevice]


class ClaimIndex:
    """The entries of ``configs`` by the function or slot they name."""

    def __init__(self, configs: Sequence[GuestConfig]) -> None:
        self._by_address: dict[PciAddress, list[Claim]] = {}
        self._by_slot: dict[tuple[int, int, int], list[Claim]] = {}
        for position, config in enumerate(configs):
            for entry_position, device in enumerate(config.devices()):
                claim = (position, entry_position, device)
                if device.address is not None:
                    self._by_address.setdefault(device.address, []).append(claim)
                elif device.pattern is not None:
                    pattern = device.pattern
                    slot = (pattern.domain, pattern.bus, pattern.slot)
                    self._by_slot.setdefault(slot, []).append(claim)
                # An entry with neither (an xl name=) claims no address: covers() is False.

    def claims(self, address: PciAddress) -> list[Claim]:
        """Every entry that covers ``address``, in scan order."""
        exact = self._by_address.get(address, [])
        wild = [c for c in self._by_slot.get(address.slot_key, ()) if c[2].covers(address)]
        if not wild:
            return list(exact)
        return sorted([*exact, *wild], key=lambda claim: (claim[0], claim[1]))

    def positions(self, address: PciAddress) -> list[int]:
        """The positions of the configurations that claim ``address``, each once, in order."""
        return list(dict.fromkeys(claim[0] for claim in self.claims(address)))
