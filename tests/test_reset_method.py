"""``hide --reset-method M`` (checked against the kernel's list, rolled back) and
``pcipass reset-test BDF`` (a good and a bad reset on the simulated kernel), PP122."""

from __future__ import annotations

import json
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

GPU = [f"0000:01:00.{f}" for f in range(4)]
HIDE = ["hide", "--now", "--all-functions", "--reset-method", "pm", "0000:01:00.0"]


def example(base: Path) -> Path:
    build_gpu(base).mark_simulated()
    for address in GPU:  # a kernel that offers FLR too (as for a single-function card)
        (base / "sys/bus/pci/devices" / address / "reset_method").write_text("flr pm\n")
    return base


def simulated(base: Path) -> Host:
    kernel = FakeKernel(FakeHost.load(base))
    return Host.open(str(base), runner=FakeRunner(kernel), writer=kernel)


def run(base: Path, *args: str) -> int:
    return main(["--root", str(base), *args])


def methods(base: Path) -> list[str]:
    return [(base / "sys/bus/pci/devices" / a / "reset_method").read_text().strip() for a in GPU]


def test_a_method_the_kernel_does_not_list_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    before = snapshot(base)
    assert run(base, "hide", "--now", "--all-functions", "--reset-method", "bus", "01:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP122]" in err and "the kernel does not offer bus for it (it lists flr pm)" in err
    assert snapshot(base) == before


@pytest.mark.parametrize("text", ["reboot", "pm pm", ""])
def test_a_name_the_kernel_never_uses_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    base = example(tmp_path / "h")
    before = snapshot(base)
    assert run(base, "hide", "--now", "--reset-method", text, "01:00.0") == 2
    assert "reset methods" in capsys.readouterr().err
    assert snapshot(base) == before


def test_without_now_is_a_usage_error(tmp_path: Path) -> None:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--persist", "--reset-method", "pm", "01:00.0") == 2


def test_set_with_the_hide_and_default_restores_the_list(tmp_path: Path) -> None:
    base = example(tmp_path / "h")
    assert run(base, *HIDE) == 0
    assert methods(base) == ["pm"] * 4
    assert (
        run(base, "hide", "--now", "--all-functions", "--reset-method", "default", "01:00.0") == 0
    )
    assert methods(base) == ["flr pm"] * 4


def test_a_failed_hide_puts_the_reset_methods_back(tmp_path: Path) -> None:
    from pcipass.address import PciAddress
    from pcipass.backend import Backend
    from pcipass.errors import OperationFailed
    from pcipass.ops.hide import hide

    base = example(tmp_path / "h")
    before = capture(base)
    host = simulated(base)
    assert isinstance(host.sysfs.writer, FakeKernel)
    host.sysfs.writer.fail("*/0000:01:00.3/driver_override")
    with pytest.raises(OperationFailed):
        hide(
            host,
            [PciAddress.parse(a) for a in GPU],
            Backend.VFIO,
            now=True,
            persist=False,
            reset_method=["pm"],
        )
    assert methods(base) == ["flr pm"] * 4
    assert not capture(base).differences(before)


def test_killed_at_every_event_then_recovered(tmp_path: Path) -> None:
    template = example(tmp_path / "template")
    before = capture(template)
    done_copy = tmp_path / "done"
    shutil.copytree(template, done_copy, symlinks=True)
    with KillAt(0) as counting:
        assert run(done_copy, *HIDE) == 0
    done = capture(done_copy)
    for index in range(1, len(counting.seen) + 1):
        base = tmp_path / f"run{index}"
        shutil.copytree(template, base, symlinks=True)
        with KillAt(index), pytest.raises(SimulatedKill):
            run(base, *HIDE)
        recover(simulated(base))
        state = check_invariant(base, before, done)
        assert methods(base) == (["flr pm"] * 4 if state == "before" else ["pm"] * 4)
        shutil.rmtree(base)


@pytest.mark.parametrize(
    ("saved", "named"),
    [
        ({"0000:01:00.0": "rm -rf /"}, "rm -rf /"),
        ({"../../etc": "pm"}, "../../etc"),
        (["pm"], "['pm']"),
    ],
)
def test_recover_refuses_a_crafted_reset_methods_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saved: object, named: str
) -> None:
    base = example(tmp_path / "h")
    with Ledger.open(HostRoot.at(base)) as ledger:
        ledger.begin("hide", {"reset_methods": saved})
    before = snapshot(base)
    assert run(base, "recover") == 3
    err = capsys.readouterr().err
    assert "journal operation 1" in err and named in err
    assert snapshot(base) == before


# --- reset-test ------------------------------------------------------------------------


def hidden(tmp_path: Path) -> Path:
    base = example(tmp_path / "h")
    assert run(base, "hide", "--now", "--all-functions", "01:00.0") == 0
    return base


def test_reset_test_refuses_a_device_the_host_drives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = example(tmp_path / "h")
    before = snapshot(base)
    assert run(base, "reset-test", "01:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP122]" in err and "is not hidden (driver nouveau)" in err
    assert snapshot(base) == before


def test_reset_test_refuses_a_device_a_guest_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = hidden(tmp_path)
    assert run(base, "attach", "--all-functions", "01:00.0", "win11") == 0
    capsys.readouterr()
    before = snapshot(base)
    assert run(base, "reset-test", "01:00.1") == 3
    err = capsys.readouterr().err
    assert "[PP101]" in err and "win11" in err
    assert snapshot(base) == before


def test_a_good_reset_answers_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = hidden(tmp_path)
    writes: list[tuple[str, str]] = []
    original = FakeKernel.write

    def recording(self: FakeKernel, path: Path, value: str) -> None:
        writes.append(("/" + str(path.relative_to(self.host.base)), value))
        original(self, path, value)

    monkeypatch.setattr(FakeKernel, "write", recording)
    capsys.readouterr()
    assert run(base, "--json", "reset-test", "01:00.0") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["changed"] == {} and result["reset_method"] == "flr pm"
    assert writes == [("/sys/bus/pci/devices/0000:01:00.0/reset", "1")]


def test_a_bad_reset_is_reported_as_a_device_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = hidden(tmp_path)
    fakeconsole.make_reset_break(base, "01:00.1")
    capsys.readouterr()
    assert run(base, "--json", "reset-test", "01:00.1") == 1
    result = json.loads(capsys.readouterr().out)
    assert not result["ok"]
    assert result["changed"]["vendor id"] == {"before": "0x10de", "after": "0xffff"}
    assert [f["rule"] for f in result["findings"]] == ["PP122"]
    assert "did not come back" in result["findings"][0]["message"]
    # A second test finds it dead before resetting, and says so without writing.
    assert run(base, "reset-test", "01:00.1") == 1
    assert "reads all ones already" in capsys.readouterr().err


def test_no_reset_attribute_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = hidden(tmp_path)
    (base / "sys/bus/pci/devices/0000:01:00.2/reset").unlink()
    before = snapshot(base)
    assert run(base, "reset-test", "01:00.2") == 3
    assert "has no reset attribute" in capsys.readouterr().err
    assert snapshot(base) == before
