"""The boot GPU's console (PP120): what holds it, refusal, ``hide --release-console``
with rollback and recover, and a warning when no other console remains.

The gpu example host's boot GPU (0000:02:00.0, a Polaris with its HDMI audio) is
held by simpledrm (simple-framebuffer.0) and fbcon (vtcon1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.host.root import HostRoot
from pcipass.ops.recover import recover
from pcipass.state.ledger import Ledger
from pcipass.testing import fakeconsole
from pcipass.testing.crash import KillAt, SimulatedKill
from pcipass.testing.fakehost import FakeHost, FakeKernel, FakeRunner, snapshot
from pcipass.testing.gpu_host import build_gpu
from pcipass.testing.invariants import capture, check_invariant

BOOT = ["0000:02:00.0", "0000:02:00.1"]
HIDE = ["hide", "--now", "--all-functions", "--release-console", "0000:02:00.0"]
VTCON1 = "sys/class/vtconsole/vtcon1/bind"
FB_DRIVER = "sys/devices/platform/simple-framebuffer.0/driver"


def example(base: Path) -> Path:
    build_gpu(base).mark_simulated()
    return base


def simulated(base: Path) -> Host:
    kernel = FakeKernel(FakeHost.load(base))
    return Host.open(str(base), runner=FakeRunner(kernel), writer=kernel)


def run(base: Path, *args: str) -> int:
    return main(["--root", str(base), *args])


def console_released(base: Path) -> bool:
    return (base / VTCON1).read_text().strip() == "0" and not (base / FB_DRIVER).is_symlink()


def console_held(base: Path) -> bool:
    return (base / VTCON1).read_text().strip() == "1" and (base / FB_DRIVER).is_symlink()


def test_refused_naming_what_holds_the_console_and_nothing_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    before = snapshot(base)
    assert run(base, "hide", "--now", "--all-functions", "0000:02:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP120]" in err and "is the boot GPU and holds the host's console" in err
    assert "simple-framebuffer.0 (simplefb/simpledrm)" in err and "vtcon1" in err
    assert "--release-console" in err
    assert snapshot(base) == before


def test_release_console_moves_the_gpu_and_warns_without_another_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    assert run(base, *HIDE) == 0
    out = capsys.readouterr().out
    assert "[PP120] warn" in out and "no local console" in out
    assert console_released(base)
    fake = FakeHost.load(base)
    assert [fake.bound_driver(a) for a in BOOT] == ["vfio-pci", "vfio-pci"]
    # Hidden and released: nothing holds it and nothing more is lost, no PP120 left.
    assert run(base, "show", "0000:02:00.0") == 0
    assert "PP120" not in capsys.readouterr().out


def test_a_serial_console_means_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    cmdline = base / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().strip() + " console=tty0 console=ttyS0,115200n8\n")
    assert run(base, *HIDE) == 0
    out = capsys.readouterr().out
    assert "no local console" not in out and "[PP120] info" in out


def test_a_display_server_on_the_gpu_is_refused_even_with_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    fakeconsole.add_process(base, 1234, "Xorg", {3: "/dev/null", 12: "/dev/dri/card0"})
    fakeconsole.add_process(base, 99, "bash", {0: "/dev/tty1"})
    before = snapshot(base)
    assert run(base, *HIDE) == 3
    err = capsys.readouterr().err
    assert "[PP120]" in err and "Xorg (pid 1234) has /dev/dri/card0 open" in err
    assert "stop Xorg (pid 1234) first" in err and "bash" not in err
    assert snapshot(base) == before


def test_a_proc_entry_linked_out_of_the_root_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    outside = tmp_path / "outside"
    fakeconsole.add_process(outside, 666, "evil", {1: "/dev/dri/card0"})
    (base / "proc/666").symlink_to(outside / "proc/666")
    assert run(base, *HIDE) == 0
    assert "evil" not in capsys.readouterr().out


def test_efifb_and_a_native_driver_framebuffer_are_named(tmp_path: Path) -> None:
    from pcipass.address import PciAddress
    from pcipass.host.console import console_holders

    base = tmp_path / "h"
    fake = build_gpu(base)
    shutil.rmtree(base / "sys/devices/platform")
    shutil.rmtree(base / "sys/bus/platform")
    for link in ("sys/class/graphics/fb0", "sys/class/drm/card0"):
        (base / link).unlink()
    fakeconsole.add_firmware_framebuffer(base, "efifb")
    holders = console_holders(simulated(base), PciAddress.parse("0000:02:00.0"))
    assert [f.kind for f in holders.firmware_fbs] == ["efifb"]
    # The same card with amdgpu bound: its own framebuffer, no firmware one.
    shutil.rmtree(base / "sys/devices/platform")
    shutil.rmtree(base / "sys/bus/platform")
    (base / "sys/class/graphics/fb0").unlink()
    fake.add_console("0000:02:00.0", "fb0")
    holders = console_holders(simulated(base), PciAddress.parse("0000:02:00.0"))
    assert holders.firmware_fbs == [] and holders.framebuffers == ["fb0"]
    assert "/dev/fb0 is its framebuffer" in holders.describe()


def test_a_failure_after_the_release_gives_the_console_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    before = capture(base)
    host = simulated(base)
    assert isinstance(host.sysfs.writer, FakeKernel)
    host.sysfs.writer.fail("*/0000:02:00.1/driver_override")
    from pcipass.address import PciAddress
    from pcipass.backend import Backend
    from pcipass.errors import OperationFailed
    from pcipass.ops.hide import hide

    with pytest.raises(OperationFailed) as failed:
        hide(
            host,
            [PciAddress.parse(a) for a in BOOT],
            Backend.VFIO,
            now=True,
            persist=False,
            release_console=True,
        )
    assert "nothing was changed" in failed.value.remedy
    assert console_held(base)
    assert not capture(base).differences(before)


def test_killed_at_every_event_then_recovered_the_console_is_back_or_all_done(
    tmp_path: Path,
) -> None:
    template = example(tmp_path / "template")
    before = capture(template)
    done_copy = tmp_path / "done"
    shutil.copytree(template, done_copy, symlinks=True)
    with KillAt(0) as counting:
        assert run(done_copy, *HIDE) == 0
    done = capture(done_copy)
    assert console_released(done_copy)
    for index in range(1, len(counting.seen) + 1):
        base = tmp_path / f"run{index}"
        shutil.copytree(template, base, symlinks=True)
        with KillAt(index), pytest.raises(SimulatedKill):
            run(base, *HIDE)
        recover(simulated(base))
        state = check_invariant(base, before, done)
        assert console_held(base) if state == "before" else console_released(base)
        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("console", "named"),
    [
        ({"vtcons": ["../../../etc/passwd"], "framebuffers": []}, "../../../etc/passwd"),
        (
            {"vtcons": [], "framebuffers": [{"device": "x/../y.0", "driver": "efi-framebuffer"}]},
            "x/../y.0",
        ),
        ({"vtcons": [], "framebuffers": [{"device": "efi-framebuffer.0", "driver": "rm"}]}, "'rm'"),
        ("all", "all"),
    ],
)
def test_recover_refuses_a_crafted_console_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], console: object, named: str
) -> None:
    base = example(tmp_path / "h")
    with Ledger.open(HostRoot.at(base)) as ledger:
        ledger.begin("hide", {"console": console})
    before = snapshot(base)
    assert run(base, "recover") == 3
    err = capsys.readouterr().err
    assert "journal operation 1" in err and named in err
    assert snapshot(base) == before
