"""Fast static checks of the end-to-end lab (lab/): no QEMU, no downloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parent.parent / "lab"
sys.path.insert(0, str(LAB))
sys.path.insert(0, str(LAB / "guest"))

import agent  # noqa: E402
import registry  # noqa: E402
import steplib  # noqa: E402
from labkit import qemu, scenarios  # noqa: E402


@pytest.mark.parametrize("plan_name", sorted(registry.REGISTRY.plans))
def test_plan_steps_exist_and_needs_come_first(plan_name: str) -> None:
    seen: list[str] = []
    for name in registry.REGISTRY.plans[plan_name]:
        assert name in registry.REGISTRY.steps, f"{plan_name}: unknown step {name}"
        for need in registry.REGISTRY.steps[name].needs:
            assert need in seen, f"{plan_name}: {name} needs {need}, which does not run before it"
        seen.append(name)
    assert len(seen) == len(set(seen))


def test_expected_plans_are_there() -> None:
    for name in (
        "xen-smoke",
        "xen-full",
        "xen-boot2",
        "kvm-smoke",
        "kvm-full",
        "kvm-boot2",
        "kvm-moved",
    ):
        assert name in registry.REGISTRY.plans


def test_marker_parsing_pass_fail_file() -> None:
    res = qemu.BootResult("b", None, 0.0, False, Path("x"))
    ok = qemu.parse_marker("[   5.1] @@LAB PASS hide-now 3.2", res, 1.0)
    bad = qemu.parse_marker("@@LAB FAIL list 1.5 list: 0000:00:03.0 driver None", res, 2.0)
    qemu.parse_marker("@@LAB FILE /etc/modprobe.d/pcipass.conf b3B0aW9ucwo=", res, 3.0)
    qemu.parse_marker("@@LAB INIT plan=xen-smoke uptime=9.8", res, 4.0)
    assert ok == qemu.StepResult("hide-now", True, 3.2, "")
    assert bad == qemu.StepResult("list", False, 1.5, "list: 0000:00:03.0 driver None")
    assert res.files == {"/etc/modprobe.d/pcipass.conf": b"options\n"}
    assert res.init_at == 4.0
    assert qemu.parse_marker("kernel: e1000 eth0 link up", res, 5.0) is None


def test_failed_step_reports_unknown_command(monkeypatch: pytest.MonkeyPatch) -> None:
    res = steplib.Result(
        ["python3", "-m", "pcipass", "hide"],
        2,
        "",
        "pcipass: error: argument COMMAND: invalid choice: 'hide'",
    )
    monkeypatch.setattr(steplib, "run", lambda argv, timeout=60, stdin=None: res)
    with pytest.raises(steplib.StepFailed, match="not available in pcipass yet"):
        steplib.pcipass("hide", "0000:00:04.0", "--now")


def test_run_plan_continues_after_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "REGISTRY", registry.Registry())
    registry.step("a")(lambda: (_ for _ in ()).throw(steplib.StepFailed("boom")))
    registry.step("b", needs=("a",))(lambda: None)
    registry.step("c")(lambda: "fine")
    registry.plan("p", ["a", "b", "c"])
    assert agent.run_plan("p") == 1
    out = capsys.readouterr().out
    assert "@@LAB FAIL a " in out and "boom" in out
    assert "@@LAB FAIL b 0.0 not run: needs a" in out
    assert "@@LAB PASS c " in out


def test_qemu_command_lines_match_lab_notes() -> None:
    prep = scenarios.Prepared(Path("/s"), "6.1.0-1-amd64", Path("/w"))
    xen = " ".join(scenarios.xen_argv(prep, Path("/w/dom0.cpio.gz"), "xen-smoke"))
    assert "-machine q35" in xen and "-device intel-iommu" in xen and "qemu64,+svm" in xen
    assert "addr=03.0" in xen and "addr=04.0" in xen and "lab=xen-smoke" in xen
    kvm = " ".join(scenarios.kvm_argv(prep, Path("/w/l1.cpio.gz"), "kvm-smoke"))
    assert "kernel-irqchip=split" in kvm and "intremap=on" in kvm and "intel_iommu=on" in kvm
    assert "pcie-root-port" in kvm and "e1000e,bus=rp1" in kvm


@pytest.mark.parametrize("script", ["init", "domu-init"])
def test_guest_shell_scripts_parse(script: str) -> None:
    path = LAB / "guest" / script
    assert path.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_entry_point_help() -> None:
    out = subprocess.run(
        [sys.executable, str(LAB / "run"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("smoke", "xen", "kvm"):
        assert name in out


def test_grub_args_and_bundles_for_the_cmdline_boot() -> None:
    grub = (
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        "GRUB_CMDLINE_LINUX='xen-pciback.hide=(0000:00:04.0)(0000:0a:04.1) foo=1'\n"
        "GRUB_DISTRIBUTOR=`lsb_release -i -s`\n"
    )
    assert scenarios.grub_linux_args(grub) == "xen-pciback.hide=(0000:00:04.0)(0000:0a:04.1) foo=1"
    bundles = scenarios.split_bundles({"/etc/a": b"1", "cmdline:/etc/default/grub": b"2"})
    assert bundles == {"": {"/etc/a": b"1"}, "cmdline": {"/etc/default/grub": b"2"}}


def test_plan_of_reads_the_guest_kernel_line() -> None:
    prep = scenarios.Prepared(Path("/s"), "k", Path("/w"))
    assert scenarios.plan_of(scenarios.xen_argv(prep, Path("/x.gz"), "xen-smoke")) == "xen-smoke"
    assert scenarios.plan_of(scenarios.kvm_argv(prep, Path("/x.gz"), "kvm-full")) == "kvm-full"


def test_nothing_imports_the_agent() -> None:
    # The agent runs plans; step modules reach the registry and steplib only,
    # so there is no import loop between the agent and its steps.
    import ast

    importers = []
    for path in sorted((LAB / "guest").glob("*.py")) + sorted((LAB / "labkit").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if "agent" in names:
                importers.append(path.name)
    assert importers == []
