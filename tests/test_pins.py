"""Pinned names (``pin``, ``unpin``, ``@NAME``) across boots that move cards.

Each test pins on one boot, rebuilds the machine as the next boot sees it
(pcipass.testing.renumber: the ledger survives, the buses do not), and asks
where the name is now.  Refusals are checked for their message, and that
nothing changed.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.errors import RefusedError
from pcipass.host.fingerprint import physical_path, vpd_serial
from pcipass.ops.pins import pin, resolve_pin
from pcipass.state.ledger import SCHEMA_VERSION, Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.renumber import GPU, I210, Card, address_of, boot

A = PciAddress.parse


def run(base: Path, *argv: str) -> int:
    return main(["--root", str(base), *argv])


def test_renumbered_buses_the_path_finds_the_card_a_bdf_would_miss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two identical NICs without serials: only where they sit tells them apart.
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1")])
    assert address_of(lab, "00:1c.0") == "0000:01:00.0"
    pin(lab.host, A("0000:01:00.0"), "guestnic")
    # A GPU added behind 00:1b.0 shifts every bus number by one.
    lab = boot(tmp_path, [Card("00:1b.0", GPU, driver="nouveau"), Card("00:1c.0"), Card("00:1c.1")])
    assert resolve_pin(lab.host, "guestnic") == A("0000:02:00.0")
    # The old address now names the GPU, the old neighbour's address our NIC's twin.
    assert lab.fake.bound_driver("0000:01:00.0") == "nouveau"
    assert run(tmp_path, "hide", "--now", "--backend", "vfio", "@guestnic") == 0
    assert lab.fake.bound_driver("0000:02:00.0") == "vfio-pci"
    assert lab.fake.bound_driver("0000:01:00.0") == "nouveau"
    assert lab.fake.bound_driver("0000:03:00.0") == "e1000e"
    assert "0000:02:00.0: hidden now" in capsys.readouterr().out


def test_card_moved_to_another_root_port_is_found_by_its_ids_when_unique(tmp_path: Path) -> None:
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.2", I210, driver="igb")])
    pin(lab.host, A(address_of(lab, "00:1c.0")), "nic")
    lab = boot(tmp_path, [Card("00:1c.1"), Card("00:1c.2", I210, driver="igb")])
    assert resolve_pin(lab.host, "nic") == A(address_of(lab, "00:1c.1"))
    with Ledger.open(lab.host.root, readonly=True) as ledger:
        (record,) = ledger.pins()
    assert record.twins == 1
    assert record.fingerprint["path"] == "pci0000:00/1c.0/00.0"


def test_two_identical_cards_without_serials_moved_off_the_pinned_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1")])
    pin(lab.host, A("0000:01:00.0"), "nic")
    # Both cards moved: neither sits at pci0000:00/1c.0/00.0 any more.
    lab = boot(tmp_path, [Card("00:1b.0"), Card("00:1c.2")])
    before = snapshot(tmp_path)
    assert run(tmp_path, "hide", "--now", "--backend", "vfio", "@nic") == 3
    err = capsys.readouterr().err
    assert "[PP114] 2 devices match pin nic equally well" in err
    assert "0000:01:00.0" in err and "0000:02:00.0" in err
    assert "path pci0000:00/1c.0/00.0 -> pci0000:00/1b.0/00.0" in err
    assert snapshot(tmp_path) == before


def test_twins_at_pin_time_and_only_one_left_elsewhere_is_refused(tmp_path: Path) -> None:
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1")])
    pin(lab.host, A("0000:01:00.0"), "nic")
    # One card left, at another port: it may well be the *other* one.
    lab = boot(tmp_path, [Card("00:1c.2")])
    with pytest.raises(RefusedError) as err:
        resolve_pin(lab.host, "nic")
    assert err.value.rule == "PP114"
    assert "made among 2 identical cards without a serial" in str(err.value)


def test_two_identical_cards_with_serials_the_serial_beats_the_path(tmp_path: Path) -> None:
    first, second = 0x0011_22FF_FE33_4455, 0x0011_22FF_FE33_6677
    lab = boot(tmp_path, [Card("00:1c.0", serial=first), Card("00:1c.1", serial=second)])
    pin(lab.host, A("0000:01:00.0"), "nic")
    # The cards swapped ports: the pinned path now holds the other card.
    lab = boot(tmp_path, [Card("00:1c.0", serial=second), Card("00:1c.1", serial=first)])
    assert resolve_pin(lab.host, "nic") == A("0000:02:00.0")
    # And with the pinned card gone, its twin at the pinned path is no match.
    lab = boot(tmp_path, [Card("00:1c.0", serial=second)])
    with pytest.raises(RefusedError) as err:
        resolve_pin(lab.host, "nic")
    assert "no device matches pin nic" in str(err.value)
    assert "serial dsn:00-11-22-ff-fe-33-44-55 -> dsn:00-11-22-ff-fe-33-66-77" in str(err.value)


def test_card_swapped_for_another_model_is_refused_naming_what_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = boot(tmp_path, [Card("00:1c.0")])
    pin(lab.host, A("0000:01:00.0"), "nic")
    lab = boot(tmp_path, [Card("00:1c.0", I210, driver="igb")])
    before = snapshot(tmp_path)
    assert run(tmp_path, "--json", "hide", "--now", "@nic") == 3
    data = json.loads(capsys.readouterr().out)
    assert data["rule"] == "PP114" and data["exit_code"] == 3
    assert "device 10d3 -> 1533" in data["problem"]
    assert "no device matches pin nic" in data["problem"]
    assert lab.fake.bound_driver("0000:01:00.0") == "igb"
    assert snapshot(tmp_path) == before


def test_vpd_serial_is_read_when_there_is_no_dsn(tmp_path: Path) -> None:
    def vpd(serial: bytes) -> bytes:
        ident = b"\x82" + struct.pack("<H", 4) + b"NIC1"
        fields = b"PN\x03abc" + b"SN" + bytes([len(serial)]) + serial
        return ident + b"\x90" + struct.pack("<H", len(fields)) + fields + b"\x78"

    assert vpd_serial(vpd(b"MX12345")) == "MX12345"
    assert vpd_serial(vpd(b"MX12345")[:-9]) is None  # truncated: no serial, not a wrong one
    assert vpd_serial(b"\x78") is None
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1")])
    lab.fake.write_file("/sys/bus/pci/devices/0000:01:00.0/vpd", vpd(b"AAA111"))
    lab.fake.write_file("/sys/bus/pci/devices/0000:02:00.0/vpd", vpd(b"BBB222"))
    result = pin(lab.host, A("0000:01:00.0"), "nic")
    assert result.fingerprint["serial"] == "vpd:AAA111"
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1")])
    lab.fake.write_file("/sys/bus/pci/devices/0000:01:00.0/vpd", vpd(b"BBB222"))
    lab.fake.write_file("/sys/bus/pci/devices/0000:02:00.0/vpd", vpd(b"AAA111"))
    assert resolve_pin(lab.host, "nic") == A("0000:02:00.0")


def test_physical_path_ignores_bus_numbers() -> None:
    assert (
        physical_path("/sys/devices/pci0000:00/0000:00:1c.0/0000:09:00.0") == "pci0000:00/1c.0/00.0"
    )
    assert (
        physical_path("/sys/devices/pci0000:00/0000:00:1c.0/0000:0a:00.0") == "pci0000:00/1c.0/00.0"
    )


def test_pin_list_unpin_and_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot(tmp_path, [Card("00:1c.0")])
    assert run(tmp_path, "pin", "01:00.0", "uplink") == 0
    assert "@uplink: pinned 0000:01:00.0" in capsys.readouterr().out
    assert run(tmp_path, "pin", "01:00.0", "uplink") == 0
    assert "no change" in capsys.readouterr().out
    assert run(tmp_path, "--json", "pin", "--list") == 0
    (entry,) = json.loads(capsys.readouterr().out)["pins"]
    assert entry["name"] == "uplink" and entry["resolution"]["address"] == "0000:01:00.0"
    before = snapshot(tmp_path)
    assert run(tmp_path, "pin", "01:00.0", "bad/name") == 2
    assert "not a valid pin name" in capsys.readouterr().err
    assert run(tmp_path, "show", "@nosuch") == 4
    assert "no such pin" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert run(tmp_path, "unpin", "@uplink") == 0
    assert run(tmp_path, "unpin", "uplink") == 4


def test_a_version_1_ledger_gains_the_pins_table(tmp_path: Path) -> None:
    lab = boot(tmp_path, [Card("00:1c.0")])
    Ledger.open(lab.host.root).close()
    db = tmp_path / "var/lib/pcipass/state.db"
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE pins")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with Ledger.open(lab.host.root, readonly=True) as ledger:
        assert ledger.pins() == []  # readable as it is: no pins yet
    pin(lab.host, A("0000:01:00.0"), "nic")
    conn = sqlite3.connect(db)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == (str(SCHEMA_VERSION),)
    assert resolve_pin(lab.host, "nic") == A("0000:01:00.0")
