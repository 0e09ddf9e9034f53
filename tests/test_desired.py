"""The desired state: ``plan``, ``apply`` (all-or-nothing, idempotent), ``apply --boot``,
and what ``check`` says about it (PP112 drift both ways, PP113 address forms)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.errors import ConfigSyntaxError, OperationFailed
from pcipass.ops import desired_file
from pcipass.ops.pins import pin
from pcipass.state.ledger import Ledger
from pcipass.testing.example import build_kvm
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab, make_lab
from pcipass.testing.renumber import GPU, Card, address_of, boot

A = PciAddress.parse
# Read-only opens map the WAL index; a module load is not undone (docs/cli.md).
SHM = ("var/lib/pcipass/state.db-shm", "var/lib/pcipass/state.db-wal")
MODULE = ("var/lib/pcipass", "proc/modules", "sys/module/vfio_pci", "sys/bus/pci/drivers/vfio-pci")
OTHER_GPU = (0x10DE, 0x1C82)
GUEST_GPU = """backend = "vfio"
[device.gpu]
guest = "win10"
[device.gpuaudio]
guest = "win10"
"""


def run(base: Path, *argv: str) -> int:
    return main(["--root", str(base), *argv])


def desire(base: Path, text: str) -> None:
    target = base / "etc/pcipass/pcipass.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.fixture
def kvm_sim(tmp_path: Path) -> Lab:
    fake = build_kvm(tmp_path / "kvm")
    fake.mark_simulated()  # the CLI acts through the fake kernel
    lab = make_lab(fake)
    pin(lab.host, A("0000:01:00.0"), "gpu")
    pin(lab.host, A("0000:01:00.1"), "gpuaudio")
    return lab


def test_plan_shows_apply_converges_and_a_second_apply_writes_nothing(
    kvm_sim: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    base = kvm_sim.base
    desire(base, GUEST_GPU)
    before = snapshot(base, skip=SHM)
    assert run(base, "plan", "--detailed-exitcode") == 2
    out = capsys.readouterr().out
    assert "hide-now: @gpu (0000:01:00.0): bound to nouveau, not vfio-pci" in out
    assert "+        <address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>" in out
    assert snapshot(base, skip=SHM) == before  # plan changes nothing, ledger included
    assert run(base, "apply") == 0
    assert kvm_sim.fake.bound_driver("0000:01:00.0") == "vfio-pci"
    assert kvm_sim.fake.bound_driver("0000:01:00.1") == "vfio-pci"
    xml = (base / "etc/libvirt/qemu/win10.xml").read_text()
    assert xml.count("<hostdev") == 2
    capsys.readouterr()
    done = snapshot(base, skip=SHM)
    assert run(base, "apply") == 0
    assert capsys.readouterr().out.rstrip().endswith("no change")
    assert snapshot(base, skip=SHM) == done  # not one byte, the ledger included
    assert run(base, "plan", "--detailed-exitcode") == 0
    capsys.readouterr()
    assert run(base, "--json", "plan") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["in_sync"] is True and data["changes"] == []


def test_a_failing_step_undoes_the_earlier_ones(
    kvm_sim: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    base = kvm_sim.base
    # The guest's file cannot be found: the attach step fails after the hide step.
    desire(
        base,
        GUEST_GPU.replace(
            'guest = "win10"\n[device.gpuaudio]', 'guest = "nosuch"\n[device.gpuaudio]'
        ),
    )
    before = snapshot(base, skip=MODULE)
    assert run(base, "apply") == 4
    err = capsys.readouterr().err
    assert "apply undid: hide 0000:01:00.0, 0000:01:00.1" in err
    assert kvm_sim.fake.bound_driver("0000:01:00.0") == "nouveau"
    assert kvm_sim.fake.bound_driver("0000:01:00.1") == "snd_hda_intel"
    assert snapshot(base, skip=MODULE) == before
    with Ledger.open(kvm_sim.host.root, readonly=True) as ledger:
        assert ledger.hidden() == [] and ledger.owners() == []


def test_drift_the_other_way_is_reported_and_left_alone(
    kvm_sim: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    base = kvm_sim.base
    desire(base, '[device.gpu]\nbackend = "vfio"\n[device.gpuaudio]\nbackend = "vfio"\n')
    assert run(base, "apply") == 0
    assert run(base, "hide", "--now", "--backend", "vfio", "0000:02:10.0") == 0
    capsys.readouterr()
    assert run(base, "plan", "--detailed-exitcode") == 2
    assert "pcipass holds it (hidden (now))" in capsys.readouterr().out
    assert run(base, "--json", "check") == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    drift = [f for f in findings if f["rule"] == "PP112"]
    assert [f["subject"] for f in drift] == ["0000:02:10.0"]
    assert run(base, "apply") == 0  # apply does not give back what the file does not declare
    assert kvm_sim.fake.bound_driver("0000:02:10.0") == "vfio-pci"


def test_an_unresolvable_device_refuses_the_whole_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1"), Card("00:1c.2", GPU, driver="nouveau")])
    pin(lab.host, A("0000:01:00.0"), "nic")
    pin(lab.host, A("0000:03:00.0"), "gpu")
    desire(tmp_path, "[device.nic]\n[device.gpu]\n")
    lab = boot(tmp_path, [Card("00:1b.0"), Card("00:1c.2", GPU, driver="nouveau"), Card("00:1c.1")])
    before = snapshot(tmp_path)
    assert run(tmp_path, "apply") == 3
    assert "[PP114] 2 devices match pin nic equally well" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # the GPU, which resolves, was not hidden either
    assert run(tmp_path, "plan", "--detailed-exitcode") == 3


def test_apply_boot_finds_a_moved_card_hides_it_and_never_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = boot(tmp_path, [Card("00:1c.0"), Card("00:1c.1", GPU, driver="nouveau")])
    nic = address_of(lab, "00:1c.0")
    pin(lab.host, A(nic), "guestnic")
    pin(lab.host, A(address_of(lab, "00:1c.1")), "gpu")
    desire(tmp_path, '[device.guestnic]\nbackend = "vfio"\n[device.gpu]\nbackend = "vfio"\n')
    # A BDF-based hide of the same card, the way it was before pins (driverctl).
    (tmp_path / "etc/driverctl.d").mkdir(parents=True, exist_ok=True)
    (tmp_path / f"etc/driverctl.d/pci-{nic}").write_text("vfio-pci\n")
    # Next boot: the NIC moved behind 00:1c.2; the GPU was replaced by another model.
    lab = boot(tmp_path, [Card("00:1b.0", OTHER_GPU, driver="nouveau"), Card("00:1c.2")])
    moved = address_of(lab, "00:1c.2")
    assert moved != nic and address_of(lab, "00:1b.0") == nic  # the old BDF is the GPU now
    assert run(tmp_path, "apply", "--boot") == 0
    out = capsys.readouterr().out
    assert f"pcipass: boot: @guestnic -> {moved} (matched by ids): bound to vfio-pci" in out
    assert lab.fake.bound_driver(moved) == "vfio-pci"
    assert lab.fake.bound_driver(nic) == "nouveau"  # what a BDF-based hide would have taken
    assert "pcipass: boot: left to the host: [PP114] refuse: @gpu: no device matches pin gpu" in out
    assert run(tmp_path, "--json", "check") in (1, 3)
    findings = json.loads(capsys.readouterr().out)["findings"]
    pp113 = [f for f in findings if f["rule"] == "PP113"]
    assert [f["subject"] for f in pp113] == [nic]
    assert f"/etc/driverctl.d/pci-{nic} (driverctl)" in pp113[0]["message"]


def test_apply_boot_without_a_file_or_with_a_broken_one_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boot(tmp_path, [Card("00:1c.0")])
    assert run(tmp_path, "apply", "--boot") == 0
    assert "pcipass: boot: nothing done: /etc/pcipass/pcipass.toml: no desired state" in (
        capsys.readouterr().out
    )
    desire(tmp_path, "[device.x\n")
    assert run(tmp_path, "apply", "--boot") == 0
    assert "not valid TOML" in capsys.readouterr().out
    assert run(tmp_path, "apply") == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("colour = 1\n", "top level: unknown key(s) colour"),
        ("[device.a]\nguset = 'x'\n", "[device.a]: unknown key(s) guset"),
        ("[device.a]\nbackend = 'xen'\n", 'backend must be "vfio" or "pciback"'),
        ("[device.a]\nconfig = '/etc/xen/a'\n", "config names a guest's file; give guest too"),
        ("[device.a.match]\nvendor = '80861'\ndevice = '10d3'\n", "vendor must be 4 hex digits"),
        ("[device.a.match]\nserial = 'x'\n", "needs at least vendor and device"),
        ("[device.a]\nhidden = false\nguest = 'g'\n", "must be hidden"),
    ],
)
def test_bad_desired_files_are_usage_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigSyntaxError) as err:
        desired_file.parse(text.encode())
    assert problem in str(err.value)


def test_without_tomllib_or_tomli_one_line_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(desired_file.sys, "version_info", (3, 9, 18))
    monkeypatch.setitem(sys.modules, "tomli", None)  # import tomli raises ImportError
    with pytest.raises(OperationFailed) as err:
        desired_file.parse(b"")
    assert "python3-tomli" in err.value.remedy
    assert "needs the tomli package" in err.value.problem
