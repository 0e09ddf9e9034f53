"""The known-bad-reset table and its PP104 findings in `show` and `check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.host.reset_quirks import QUIRKS, find_quirk, quirk_notes
from pcipass.ops.check import run_check
from pcipass.ops.show import device_report
from pcipass.policy.verdict import Severity, worst_exit
from pcipass.testing.example import build_kvm
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab, make_lab

POLARIS = "0000:0a:00.0"  # RX 580: 1002:67df, in vendor-reset's device list
ATHEROS = "0000:0b:00.0"  # AR9462: 168c:0034, quirks.c quirk_no_bus_reset


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    fake = build_kvm(tmp_path / "kvm")
    fake.add_device(POLARIS, vendor=0x1002, device=0x67DF, class_code=0x030000)
    fake.add_device(ATHEROS, vendor=0x168C, device=0x0034, class_code=0x028000)
    fake.mark_simulated()
    return make_lab(fake)


def test_every_entry_has_a_source_and_a_remedy_and_no_id_is_listed_twice() -> None:
    seen: set[tuple[int, int]] = set()
    for quirk in QUIRKS:
        assert quirk.source.startswith(("vendor-reset src/device-db.h", "drivers/pci/quirks.c "))
        assert quirk.problem and quirk.helps and quirk.devices
        for device in quirk.devices:
            assert (quirk.vendor, device) not in seen
            seen.add((quirk.vendor, device))


def test_lookup_by_vendor_and_device() -> None:
    polaris = find_quirk(0x1002, 0x67DF)
    assert polaris is not None and polaris.vendor_reset and polaris.name == "AMD Polaris 10 GPU"
    vega = find_quirk(0x1002, 0x687F)
    assert vega is not None and vega.name == "AMD Vega 10 GPU"
    assert find_quirk(0x1002, 0x1478) is None  # another AMD function, not in any list
    assert find_quirk(0x10DE, 0x67DF) is None  # the same id under another vendor
    assert find_quirk(None, None) is None


def test_show_reports_the_vendor_reset_remedy(lab: Lab) -> None:
    report = device_report(lab.host, PciAddress.parse(POLARIS))
    (finding,) = [f for f in report.findings if "known reset problem" in str(f["message"])]
    assert finding["rule"] == "PP104" and finding["severity"] == "warn"
    assert finding["subject"] == POLARIS
    assert str(finding["message"]).startswith(
        "known reset problem (AMD Polaris 10 GPU, vendor-reset src/device-db.h): "
    )
    assert "load the vendor-reset module" in str(finding["remedy"])
    assert "[PP104] warn: known reset problem (AMD Polaris 10 GPU" in report.render()


def test_check_warns_and_exits_1(lab: Lab) -> None:
    report = run_check(lab.host, [PciAddress.parse(ATHEROS)])
    quirks = [f for f in report.findings if "known reset problem" in f.message]
    assert [(f.rule, f.severity, f.subject) for f in quirks] == [("PP104", Severity.WARN, ATHEROS)]
    assert quirks[0].remedy == "it has no other reset: reboot the host to give it to another guest"
    assert worst_exit(report.findings) >= 1


def test_vendor_reset_in_place_is_info_only(lab: Lab) -> None:
    (lab.base / "sys/module/vendor_reset").mkdir(parents=True)
    (lab.fake.path_of(POLARIS) / "reset_method").write_text("device_specific\n")
    (note,) = quirk_notes(lab.host, [POLARIS])
    assert note.severity == "info" and note.remedy == ""
    assert note.message.endswith(
        "handled: vendor-reset is loaded and reset_method is device_specific"
    )


def test_vendor_reset_loaded_but_not_selected_still_warns(lab: Lab) -> None:
    (lab.base / "sys/module/vendor_reset").mkdir(parents=True)
    (lab.fake.path_of(POLARIS) / "reset_method").write_text("bus\n")
    (note,) = quirk_notes(lab.host, [POLARIS])
    assert note.severity == "warn"


def test_devices_without_quirks_and_other_subjects_give_nothing(lab: Lab) -> None:
    others = [str(a) for a in sorted(lab.fake._paths) if a not in (POLARIS, ATHEROS)]
    assert quirk_notes(lab.host, [*others, "guest web", "/etc/modprobe.d/x.conf"]) == []


def test_cli_check_and_show_change_nothing(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(lab.base)
    assert main(["--root", str(lab.base), "check", POLARIS]) == 1
    assert "[PP104] warn: 0000:0a:00.0: known reset problem (AMD Polaris 10 GPU" in (
        capsys.readouterr().out
    )
    assert main(["--root", str(lab.base), "--json", "show", POLARIS]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(f["rule"] == "PP104" and f["name"] for f in data["findings"])
    assert snapshot(lab.base) == before
