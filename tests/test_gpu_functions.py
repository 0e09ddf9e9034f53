"""``hide``/``attach --all-functions``: a GPU and its HDMI audio, USB and UCSI
functions leave the host together or not at all (the gpu example host)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.ops.recover import recover
from pcipass.testing.crash import KillAt, SimulatedKill
from pcipass.testing.fakehost import FakeHost, FakeKernel, FakeRunner, snapshot
from pcipass.testing.gpu_host import build_gpu
from pcipass.testing.invariants import capture, check_invariant

GPU = [f"0000:01:00.{f}" for f in range(4)]
ORIGINAL = ["nouveau", "snd_hda_intel", "xhci_hcd", "nvidia-gpu"]
WIN11 = "etc/libvirt/qemu/win11.xml"


def example(base: Path) -> Path:
    build_gpu(base).mark_simulated()
    return base


def simulated(base: Path) -> Host:
    kernel = FakeKernel(FakeHost.load(base))
    return Host.open(str(base), runner=FakeRunner(kernel), writer=kernel)


def drivers(base: Path) -> list[str | None]:
    host = FakeHost.load(base)
    return [host.bound_driver(a) for a in GPU]


def run(base: Path, *args: str) -> int:
    return main(["--root", str(base), *args])


def test_one_function_alone_is_refused_naming_the_others_and_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    before = snapshot(base)
    assert run(base, "hide", "--now", "0000:01:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP102]" in err
    assert "0000:01:00.1, 0000:01:00.2, 0000:01:00.3 are other functions of this device" in err
    assert "pcipass hide --all-functions 0000:01:00.0" in err
    assert snapshot(base) == before


def test_all_functions_hides_the_whole_card(tmp_path: Path) -> None:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--now", "--all-functions", "0000:01:00.2") == 0
    assert drivers(base) == ["vfio-pci"] * 4
    assert run(base, "unhide", "--now", *GPU) == 0
    assert drivers(base) == ORIGINAL


def test_unhide_all_functions_gives_the_whole_card_back(tmp_path: Path) -> None:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--now", "--all-functions", "0000:01:00.0") == 0
    assert run(base, "unhide", "--now", "--all-functions", "0000:01:00.3") == 0
    assert drivers(base) == ORIGINAL


def test_unhide_without_a_device_is_a_usage_error_that_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--now", "--all-functions", "0000:01:00.0") == 0
    before = snapshot(base)
    capsys.readouterr()
    assert run(base, "unhide", "--now", "--all-functions") == 2
    assert "name the devices (BDF), or --vfs PF" in capsys.readouterr().err
    assert snapshot(base) == before


def test_a_function_that_fails_to_move_puts_every_function_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    host = simulated(base)
    before = capture(base)
    assert isinstance(host.sysfs.writer, FakeKernel)
    host.sysfs.writer.fail("*/0000:01:00.3/driver_override")
    from pcipass.address import PciAddress
    from pcipass.backend import Backend
    from pcipass.errors import OperationFailed
    from pcipass.ops.hide import hide, with_functions

    addresses = with_functions(host, [PciAddress.parse("01:00.0")])
    assert [str(a) for a in addresses] == GPU
    with pytest.raises(OperationFailed) as failed:
        hide(host, addresses, Backend.VFIO, now=True, persist=False)
    assert "nothing was changed" in failed.value.remedy
    assert drivers(base) == ORIGINAL
    assert not capture(base).differences(before)


def test_killed_at_every_event_of_hide_all_functions_then_recovered(tmp_path: Path) -> None:
    template = example(tmp_path / "template")
    argv = ["hide", "--now", "--persist", "--all-functions", "0000:01:00.0"]
    before = capture(template)
    done_copy = tmp_path / "done"
    shutil.copytree(template, done_copy, symlinks=True)
    with KillAt(0) as counting:
        assert run(done_copy, *argv) == 0
    done = capture(done_copy)
    assert drivers(done_copy) == ["vfio-pci"] * 4
    for index in range(1, len(counting.seen) + 1):
        base = tmp_path / f"run{index}"
        shutil.copytree(template, base, symlinks=True)
        with KillAt(index), pytest.raises(SimulatedKill):
            run(base, *argv)
        recover(simulated(base))
        check_invariant(base, before, done)
        shutil.rmtree(base)


# --- attach ----------------------------------------------------------------------------


def hidden(tmp_path: Path) -> Path:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--now", "--all-functions", "0000:01:00.0") == 0
    return base


def test_attach_all_functions_edits_once_and_claims_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = hidden(tmp_path)
    capsys.readouterr()
    assert run(base, "--json", "attach", "--all-functions", "0000:01:00.0", "win11") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["functions"] == GPU and result["changed"]
    text = (base / WIN11).read_text()
    assert text.count("<hostdev ") == 4
    for function in range(4):
        assert f"function='0x{function}'" in text
    assert run(base, "status", "--json") == 0
    owners = json.loads(capsys.readouterr().out)["owners"]
    assert sorted((o["address"], o["guest"]) for o in owners) == [(a, "win11") for a in GPU]
    # A repeat changes nothing.
    assert run(base, "attach", "--all-functions", "0000:01:00.0", "win11") == 0
    assert (base / WIN11).read_text() == text


def test_attach_all_functions_refused_when_one_function_is_anothers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = hidden(tmp_path)
    (base / "etc/libvirt/qemu/other.xml").write_text(
        (base / WIN11).read_text().replace("win11", "other")
    )
    assert run(base, "attach", "0000:01:00.1", "other") == 0
    capsys.readouterr()
    before = capture(base)
    assert run(base, "attach", "--all-functions", "0000:01:00.0", "win11") == 3
    err = capsys.readouterr().err
    assert "[PP101]" in err and "0000:01:00.1" in err and "other" in err
    assert not capture(base).differences(before)


def test_attach_all_functions_live_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = hidden(tmp_path)
    capsys.readouterr()
    before = snapshot(base)
    assert run(base, "attach", "--all-functions", "--live", "0000:01:00.0", "win11") == 2
    assert "cannot be hot-plugged as one step" in capsys.readouterr().err
    assert snapshot(base) == before


def test_killed_at_every_event_of_attach_all_functions_then_recovered(tmp_path: Path) -> None:
    template = hidden(tmp_path)
    argv = ["attach", "--all-functions", "0000:01:00.0", "win11"]
    before = capture(template)
    done_copy = tmp_path / "done"
    shutil.copytree(template, done_copy, symlinks=True)
    with KillAt(0) as counting:
        assert run(done_copy, *argv) == 0
    done = capture(done_copy)
    assert len(done.owners) == 4
    for index in range(1, len(counting.seen) + 1):
        base = tmp_path / f"run{index}"
        shutil.copytree(template, base, symlinks=True)
        with KillAt(index), pytest.raises(SimulatedKill):
            run(base, *argv)
        recover(simulated(base))
        check_invariant(base, before, done)
        shutil.rmtree(base)
