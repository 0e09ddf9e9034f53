"""Issue 'Enforce the document's warnings', done-when: `check` on the example host with a PV
RHEL 6 guest, an HVM guest without an IOMMU and a guest holding a device lists exactly the
expected findings, and the guard refuses as libvirt's hook would call it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.testing.harness import Lab

RHEL6_PV = """name = "rhel6pv"
memory = 1024
kernel = "/var/lib/xen/images/vmlinuz-2.6.32-431.el6.x86_64"
pci = [ '0000:0a:04.1' ]
"""
WIN_HVM = """name = "winhvm"
type = "hvm"
pci = [ "0000:0a:04.0" ]
"""


@pytest.fixture
def guests(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> Lab:
    rhel5.fake.mark_simulated()
    rhel5.fake.write_file("/etc/xen/rhel6pv", RHEL6_PV)
    rhel5.fake.write_file("/etc/xen/winhvm.cfg", WIN_HVM)
    root = str(rhel5.base)
    assert (
        main(["--root", root, "hide", "--now", "--persist", "09:00.0", "0a:04.0", "0a:04.1"]) == 0
    )
    assert (
        main(
            [
                "--root",
                root,
                "attach",
                "09:00.0",
                "rhel5pv",
                "--accept-pv-dma-risk",
                "--guest-os",
                "rhel5.4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    return rhel5


def test_check_lists_exactly_the_expected_findings(
    guests: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(guests.base), "check", "--json"]) == 3
    findings = json.loads(capsys.readouterr().out)["findings"]
    got = sorted(
        (f["rule"], f["severity"], f["subject"]) for f in findings if f["severity"] != "info"
    )
    assert got == [
        ("PP004", "warn", "0000:09:00.0"),  # PV guest holding a device: DMA into dom0
        ("PP004", "warn", "0000:0a:04.1"),
        ("PP005", "refuse", "0000:0a:04.1"),  # RHEL 6 PV guest
        ("PP006", "refuse", "0000:0a:04.0"),  # HVM guest, no IOMMU
    ]
    by_rule = {f["rule"]: f for f in findings if f["severity"] == "refuse"}
    assert (
        "rhel 6.5 guest (from kernel /var/lib/xen/images/vmlinuz-2.6.32-431.el6"
        in by_rule["PP005"]["message"]
    )
    assert "needs an active IOMMU" in by_rule["PP006"]["message"]


def test_guard_refuses_migrate_as_a_libvirt_hook(guests: Lab, tmp_path: Path) -> None:
    xml = "<domain type='xen'><name>rhel5pv</name><os><type>linux</type></os><devices/></domain>"
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcipass",
            "--root",
            str(guests.base),
            "guard",
            "--libvirt-hook",
            "rhel5pv",
            "migrate",
            "begin",
            "-",
        ],
        input=xml,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src)},
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert "[PP003]" in done.stderr and "0000:09:00.0" in done.stderr
    quiet = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcipass",
            "--root",
            str(guests.base),
            "guard",
            "--libvirt-hook",
            "nodevices",
            "migrate",
            "begin",
            "-",
        ],
        input=xml.replace("rhel5pv", "nodevices"),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src)},
        check=False,
    )
    assert quiet.returncode == 0, quiet.stderr


def test_list_guests_shows_ledger_owner_and_config_listings(
    guests: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(guests.base), "list", "--guests", "--class", "net", "--json"]) == 0
    devices = {d["address"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    assert devices["0000:09:00.0"]["owner"] == "rhel5pv"
    assert devices["0000:09:00.0"]["guests"] == ["rhel5pv"]
    assert devices["0000:0a:04.1"]["owner"] is None
    assert devices["0000:0a:04.1"]["guests"] == ["rhel6pv"]
    assert devices["0000:05:00.0"]["guests"] == []


@pytest.mark.parametrize(
    ("content", "flagged"),
    [("ON_SHUTDOWN=suspend\n", True), ("# defaults\n", True), ("ON_SHUTDOWN=shutdown\n", False)],
)
def test_libvirt_guests_suspend_at_shutdown_is_flagged(
    guests: Lab, capsys: pytest.CaptureFixture[str], content: str, flagged: bool
) -> None:
    guests.fake.write_file("/etc/sysconfig/libvirt-guests", content)
    main(["--root", str(guests.base), "check", "--guest", "rhel5pv", "--json"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    pp003 = [f for f in findings if f["rule"] == "PP003"]
    assert bool(pp003) == flagged
    if flagged:
        assert "libvirt-guests will save this guest" in pp003[0]["message"]
        assert pp003[0]["remedy"] == "set ON_SHUTDOWN=shutdown in /etc/sysconfig/libvirt-guests"
