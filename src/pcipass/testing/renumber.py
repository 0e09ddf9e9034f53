"""Fake machines whose buses move between boots (tests/test_pins.py, test_desired.py).

A "boot" rebuilds ``sys/`` (and ``proc/``) under the same base: the ledger in
``var/lib/pcipass`` and the files in ``etc/`` survive, as on a real disk.
Each card is (root port, vendor, device, serial or None, subsystem).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from pcipass.host.pci_regs import PortType
from pcipass.record import dataclass
from pcipass.testing.config_builder import dsn, pcie
from pcipass.testing.fakehost import FakeHost
from pcipass.testing.harness import Lab, make_lab

E1000E = (0x8086, 0x10D3)
I210 = (0x8086, 0x1533)
GPU = (0x10DE, 0x1B80)

# The root ports of the machine, in the order firmware numbers their buses.
PORTS = ("00:1b.0", "00:1c.0", "00:1c.1", "00:1c.2")


@dataclass(frozen=True)
class Card:
    port: str  # which root port it sits behind
    ids: tuple[int, int] = E1000E
    serial: int | None = None
    driver: str = "e1000e"
    subsystem: tuple[int, int] = (0x8086, 0xA01F)


def boot(base: Path, cards: Sequence[Card], *, empty_ports: Sequence[str] = ()) -> Lab:
    """Build the machine with ``cards``; buses are numbered depth-first from 1
    over the ports that have a card (or are listed in ``empty_ports``), as
    firmware does, so a card added before another shifts its bus number."""
    for part in ("sys", "proc"):
        shutil.rmtree(base / part, ignore_errors=True)
    fake = FakeHost(base)
    fake.add_host_bridge()
    used = [p for p in PORTS if p in empty_ports or any(c.port == p for c in cards)]
    bus = {port: index + 1 for index, port in enumerate(used)}
    for port in used:
        fake.add_bridge(f"0000:{port}", secondary_bus=bus[port])
    for card in cards:
        address = f"0000:{bus[card.port]:02x}:00.0"
        fake.add_device(
            address,
            vendor=card.ids[0],
            device=card.ids[1],
            class_code=0x020000,
            driver=card.driver,
            parent=f"0000:{card.port}",
            subsystem=card.subsystem,
            caps=[pcie(PortType.ENDPOINT)],
            ext_caps=[dsn(card.serial)] if card.serial is not None else [],
        )
    fake.add_driver("vfio-pci")
    fake.mark_simulated()  # the CLI (main) acts on it through the fake kernel too
    return make_lab(fake)


def address_of(lab: Lab, port: str) -> str:
    """The address of the card behind ``port`` in this boot."""
    bridge = lab.fake.path_of(f"0000:{port}")
    (child,) = [p.name for p in bridge.iterdir() if p.name.startswith("0000:")]
    return child
