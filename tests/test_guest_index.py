"""Guests indexed once (issue #13): ``list --guests``, ``check`` and ``guests --check``
read every configuration once, answer "who lists this device" from an index, and open
the ledger once per command.  The index must give exactly the answer of a full scan."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.ops.guests import GuestFile, GuestScan, scan_guests
from pcipass.state.ledger import Ledger
from pcipass.testing.harness import Lab
from pcipass.testing.many_guests import ABSENT, host_addresses, write_guests


def full_scan(scan: GuestScan, address: PciAddress) -> list[GuestFile]:
    """The answer of asking every guest, as pcipass did before the index."""
    return [g for g in scan.guests if any(d.covers(address) for d in g.config.devices())]


def probe_addresses(base: Path) -> list[PciAddress]:
    """Every function of the host, every function of their slots (wildcards
    match functions that are not there), and one absent function."""
    present = [PciAddress.parse(a) for a in host_addresses(base)]
    slots = {a.with_function(f) for a in present for f in range(8)}
    return sorted(slots | {PciAddress.parse(ABSENT)})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_listing_is_the_full_scan_for_every_address(kvm: Lab, seed: int) -> None:
    write_guests(kvm.base, 150, seed=seed)
    scan = scan_guests(kvm.host)
    farm = [g for g in scan.guests if g.guest_name.startswith("farm-")]
    assert len(farm) == 150 and scan.problems  # the broken file is reported
    assert any(d.pattern is not None for g in scan.guests for d in g.config.devices())
    shared = 0
    for address in probe_addresses(kvm.base):
        expected = full_scan(scan, address)
        assert scan.listing(address) == expected, address
        shared += len(expected) > 1
    assert shared  # guests that list one device: the PP101 case is exercised


def test_listing_follows_a_changed_list_of_guests(kvm: Lab) -> None:
    """The index is rebuilt when guests are added, removed or the list replaced."""
    write_guests(kvm.base, 40, seed=7)
    scan = scan_guests(kvm.host)
    address = next(a for a in probe_addresses(kvm.base) if len(full_scan(scan, a)) > 1)
    assert scan.listing(address)  # the index is built now
    first = scan.listing(address)[0]
    del scan.guests[scan.guests.index(first)]
    assert scan.listing(address) == full_scan(scan, address)
    scan.guests.append(first)
    assert scan.listing(address) == full_scan(scan, address)
    assert scan.listing(address)[-1] is first
    scan.guests = [g for g in scan.guests if g is not first]
    assert first not in scan.listing(address)


def test_unreadable_guests_follow_trust(kvm: Lab) -> None:
    write_guests(kvm.base, 120, seed=4)
    scan = scan_guests(kvm.host)
    unknown = [g for g in scan.guests if g.config.devices_unknown is not None]
    assert unknown and scan.unreadable() == unknown
    scan.trusted.add(unknown[0].path.resolve())
    assert scan.unreadable() == unknown[1:]


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts Ledger.open and the guests' devices() calls during a command."""
    counts = {"ledger": 0, "devices": 0}
    opener = Ledger.open.__func__  # type: ignore[attr-defined]

    def open_counted(cls: type[Ledger], *args: object, **kwargs: object) -> Ledger:
        counts["ledger"] += 1
        return opener(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Ledger, "open", classmethod(open_counted))
    for parsed in (_xen_config_class(), _libvirt_config_class()):
        devices = parsed.devices

        def devices_counted(self: object, _devices: object = devices) -> object:
            counts["devices"] += 1
            return _devices(self)  # type: ignore[operator]

        monkeypatch.setattr(parsed, "devices", devices_counted)
    yield counts


def _xen_config_class() -> type:
    from pcipass.guests.xen_cfg import XenConfig

    return XenConfig


def _libvirt_config_class() -> type:
    from pcipass.guests.libvirt_xml import LibvirtDomain

    return LibvirtDomain


def held_farm(lab: Lab, guests: int) -> None:
    """A farm of guests on the KVM example, with a ledger that holds a device."""
    write_guests(lab.base, guests, seed=11)
    with Ledger.open(lab.host.root) as ledger:
        ledger.claim("0000:02:10.4", "farm-0000", config_kind="xl")


def run(lab: Lab, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(["--root", str(lab.base), *argv])
    return status, out.getvalue()


@pytest.mark.parametrize(
    "argv", [("check",), ("check", "--json"), ("guests", "--check"), ("list", "--guests")]
)
def test_one_ledger_open_per_command(
    kvm: Lab, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    held_farm(kvm, 60)
    with counting(monkeypatch) as counts:
        run(kvm, *argv)
    assert counts["ledger"] == 1  # the old check: 63 (twice, then once per guest)


def test_check_reads_each_guest_a_bounded_number_of_times(
    kvm: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structural, not timed: ``check`` asks each configuration for its devices
    a fixed number of times, whatever the number of guests (the old code asked
    every guest once per device of every other guest: 60 guests, ~2900 asks)."""
    held_farm(kvm, 60)
    with counting(monkeypatch) as counts:
        status, out = run(kvm, "check", "--json")
    assert status == 3 and json.loads(out)["findings"]
    assert counts["devices"] <= 4 * 60


def test_same_findings_as_a_full_scan(kvm: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` over the index gives the report the full scan gives."""
    held_farm(kvm, 80)
    indexed = run(kvm, "check", "--json")
    monkeypatch.setattr(GuestScan, "listing", full_scan)
    monkeypatch.setattr(
        GuestScan,
        "unreadable",
        lambda scan: [
            g
            for g in scan.guests
            if g.config.devices_unknown is not None and g.path.resolve() not in scan.trusted
        ],
    )
    assert indexed == run(kvm, "check", "--json")


@pytest.mark.parametrize("argv", [("check",), ("guests", "--check")])
def test_service_settings_read_once_per_command(
    kvm: Lab, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    """PP003's xendomains and libvirt-guests files are read once per command,
    not once per Xen guest (the old check read them 4 times per guest)."""
    from pcipass.policy import guest_rules

    held_farm(kvm, 40)
    kvm.fake.write_file("/etc/sysconfig/xendomains", 'XENDOMAINS_SAVE="/var/lib/xen/save"\n')
    reads: list[str] = []
    reader = guest_rules._read_text

    def counted(host: object, absolute: str) -> str | None:
        reads.append(absolute)
        return reader(host, absolute)  # type: ignore[arg-type]

    monkeypatch.setattr(guest_rules, "_read_text", counted)
    status, out = run(kvm, *argv)
    assert status == 3 and "XENDOMAINS_SAVE=/var/lib/xen/save" in out
    assert sorted(reads) == sorted(set(reads)) and len(reads) <= 4
