"""hide/unhide --persist end to end on the example hosts (through the CLI)."""

from __future__ import annotations

import json
import subprocess

import pytest

from pcipass.cli.main import main
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

DOCUMENT_LINES = [
    "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2",
    "options pciback hide=(0000:09:00.0)(0000:0a:04.1)",
]


def cli(lab: Lab, *argv: str) -> int:
    # The CLI builds its own Host; a tree marked as simulated gets the fake kernel.
    return main(["--root", str(lab.base), *argv])


@pytest.fixture(autouse=True)
def simulated(request: pytest.FixtureRequest) -> None:
    for name in ("rhel5", "kvm"):
        if name in request.fixturenames:
            request.getfixturevalue(name).fake.mark_simulated()


def test_document_procedure_then_give_back_byte_for_byte(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = rhel5.base / "etc/modprobe.conf"
    original = conf.read_bytes()
    before = snapshot(
        rhel5.base,
        skip=(
            "var/lib/pcipass",
            "sys/bus/pci/drivers/pciback",
            "sys/module/pciback",
            "proc/modules",
        ),
    )
    assert cli(rhel5, "hide", "--now", "--persist", "0000:09:00.0", "0000:0a:04.1") == 0
    lines = conf.read_text().splitlines()
    for expected in DOCUMENT_LINES:
        assert expected in lines
    # PP009: one merged options line, never a second one.
    assert sum(line.startswith("options pciback") for line in lines) == 1
    assert [rhel5.fake.bound_driver(a) for a in ("0000:09:00.0", "0000:0a:04.1")] == [
        "pciback",
        "pciback",
    ]
    capsys.readouterr()
    assert cli(rhel5, "check", "--json") in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert not [f for f in report["findings"] if f["rule"] == "PP010"]
    assert cli(rhel5, "unhide", "--now", "--persist", "0000:09:00.0", "0000:0a:04.1") == 0
    assert conf.read_bytes() == original
    after = snapshot(
        rhel5.base,
        skip=(
            "var/lib/pcipass",
            "sys/bus/pci/drivers/pciback",
            "sys/module/pciback",
            "proc/modules",
        ),
    )
    assert after == before


def test_dry_run_prints_the_diff_and_changes_nothing(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(rhel5.base)
    assert cli(rhel5, "hide", "--now", "--persist", "--dry-run", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "+options pciback hide=(0000:09:00.0)" in out
    assert "echo 0000:09:00.0 > /sys/bus/pci/drivers/bnx2/unbind" in out
    assert snapshot(rhel5.base) == before


def test_refused_persist_leaves_the_file(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(rhel5.base)
    assert cli(rhel5, "hide", "--persist", "0000:00:1f.2") == 3
    err = capsys.readouterr().err
    assert "[PP001]" in err and "mounted filesystem /" in err
    assert snapshot(rhel5.base) == before


def test_drift_is_reported_when_only_runtime_is_hidden(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(rhel5, "hide", "--now", "09:00.0") == 0
    capsys.readouterr()
    cli(rhel5, "check", "--json")
    findings = json.loads(capsys.readouterr().out)["findings"]
    drift = [f for f in findings if f["rule"] == "PP010"]
    assert drift and "a reboot gives it back to the host" in drift[0]["message"]


@pytest.mark.needs_tool("modprobe")
def test_kmod_parses_what_was_written_for_a_current_debian(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(kvm, "hide", "--persist", "--backend", "vfio", "0000:03:00.0") == 3  # PP001
    capsys.readouterr()
    assert cli(kvm, "hide", "--persist", "--backend", "vfio", "0000:02:10.0") == 0
    conf = kvm.base / "etc/modprobe.d/pcipass.conf"
    shown = subprocess.run(
        ["modprobe", "-C", str(conf.parent), "--showconfig"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "options vfio_pci ids=8086:1520" in shown
    assert "softdep igbvf pre: vfio-pci" in shown or "softdep igbvf pre: vfio_pci" in shown


def test_vfio_ids_would_take_the_hosts_own_nic_too(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # A second 82574L, the same id as the default-route NIC at 0000:03:00.0.
    kvm.fake.add_bridge("0000:00:1c.3", secondary_bus=5)
    kvm.fake.add_device(
        "0000:05:00.0",
        vendor=0x8086,
        device=0x10D3,
        class_code=0x020000,
        driver="e1000e",
        parent="0000:00:1c.3",
        reset_method="flr",
    )
    before = snapshot(kvm.base)
    assert cli(kvm, "hide", "--persist", "--backend", "vfio", "0000:05:00.0") == 3
    err = capsys.readouterr().err
    assert "0000:03:00.0: has the same id 8086:10d3" in err
    assert "vfio-pci ids= would take it at boot too" in err
    assert snapshot(kvm.base) == before


def test_cmdline_method_edits_only_the_grub_variable(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    grub = kvm.base / "etc/default/grub"
    grub.parent.mkdir(parents=True, exist_ok=True)
    original = b'# my grub\nGRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="intel_iommu=on  quiet"\n'
    grub.write_bytes(original)
    assert (
        cli(kvm, "hide", "--persist", "--platform", "cmdline", "--backend", "vfio", "0000:03:00.0")
        == 3
    )  # PP001: the default-route NIC
    assert (
        cli(
            kvm,
            "hide",
            "--persist",
            "--platform",
            "cmdline",
            "--backend",
            "vfio",
            "0000:01:00.0",
            "0000:01:00.1",
        )
        == 0
    )
    text = grub.read_text()
    assert "vfio-pci.ids=10de:0fb9,10de:1b80" in text or "vfio-pci.ids=10de:1b80,10de:0fb9" in text
    assert text.startswith("# my grub\nGRUB_DEFAULT=0\n")
    assert "update-grub" in capsys.readouterr().out
    assert (
        cli(kvm, "unhide", "--persist", "--platform", "cmdline", "0000:01:00.0", "0000:01:00.1")
        == 0
    )
    assert grub.read_bytes() == original


def test_vfio_now_and_persist_leave_no_drift(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(kvm, "hide", "--now", "--persist", "--backend", "vfio", "0000:02:10.0", "0000:02:10.4")
        == 0
    )
    capsys.readouterr()
    cli(kvm, "check", "--json")
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [f for f in findings if f["rule"] in ("PP009", "PP010")] == []
    # Give one back: the other still needs ids=8086:1520, so the id stays.
    assert cli(kvm, "unhide", "--now", "--persist", "0000:02:10.0") == 0
    conf = (kvm.base / "etc/modprobe.d/pcipass.conf").read_text()
    assert "ids=8086:1520" in conf


def test_regenerate_runs_the_named_command(
    kvm: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pcipass.cli import main as cli_main
    from pcipass.host.context import Host
    from pcipass.testing.fakehost import FakeKernel, FakeRunner

    kernel = FakeKernel(kvm.fake)
    runner = FakeRunner(kernel)
    runner.programs.add("update-initramfs")
    monkeypatch.setattr(
        cli_main, "_open_host", lambda root: Host.open(root, runner=runner, writer=kernel)
    )
    assert (
        cli(
            kvm,
            "hide",
            "--persist",
            "--regenerate",
            "--backend",
            "vfio",
            "0000:02:10.0",
            "0000:02:10.4",
        )
        == 0
    )
    assert ("update-initramfs", "-u", "-k", "6.1.0-26-amd64") in runner.calls
    assert "ran: update-initramfs -u -k 6.1.0-26-amd64" in capsys.readouterr().out


def test_cmdline_with_a_modular_stub_is_refused(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lab finding (xen3): the host driver loads first at boot and takes the device.
    kvm.fake.write_file("/lib/modules/6.1.0-26-amd64/kernel/drivers/vfio/pci/vfio-pci.ko", b"")
    before = snapshot(kvm.base)
    assert (
        cli(kvm, "hide", "--persist", "--platform", "cmdline", "--backend", "vfio", "0000:02:10.0")
        == 3
    )
    err = capsys.readouterr().err
    assert "[PP010]" in err and "vfio-pci is a module on this kernel" in err
    assert snapshot(kvm.base) == before


def test_check_of_one_device_flags_the_documents_lines_on_a_current_kernel(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lab finding (xen2): `check BDF` must not skip the configuration's own problems.
    kvm.fake.write_file(
        "/lib/modules/6.1.0-26-amd64/kernel/drivers/xen/xen-pciback/xen-pciback.ko", b""
    )
    kvm.fake.write_file(
        "/etc/modprobe.d/rhel5.conf",
        "install igbvf /sbin/modprobe pciback; /sbin/modprobe --first-time "
        "--ignore-install igbvf\noptions pciback hide=(0000:02:10.0)\n",
    )
    assert cli(kvm, "check", "0000:02:10.0", "--json") == 3
    findings = json.loads(capsys.readouterr().out)["findings"]
    broken = [f for f in findings if f["subject"].startswith("/etc/modprobe.d/rhel5.conf")]
    assert broken and all(f["rule"] == "PP010" for f in broken)
    assert "Module pciback not found" in broken[0]["message"]
