"""``boot-install`` / ``boot-uninstall``: the systemd unit that runs ``apply --boot``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.ops.boot_unit import UNIT, WANTS
from pcipass.ops.recover import recover
from pcipass.testing.crash import KillAt, SimulatedKill
from pcipass.testing.example import build_kvm
from pcipass.testing.fakehost import snapshot
from pcipass.testing.invariants import capture, check_invariant

SHM = ("var/lib/pcipass/state.db-shm", "var/lib/pcipass/state.db-wal")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A KVM host image with libvirtd and virtqemud installed, and pcipass in /usr/bin."""
    base = tmp_path / "image"
    fake = build_kvm(base)
    fake.mark_simulated()
    for unit in ("libvirtd.service", "virtqemud.service"):
        fake.write_file(f"/usr/lib/systemd/system/{unit}", "[Service]\nExecStart=/bin/true\n")
    fake.write_file("/usr/bin/pcipass", "#!/bin/sh\n", 0o755)
    return base


def run(base: Path, *argv: str) -> int:
    return main(["--root", str(base), *argv])


def unit_lines(base: Path) -> dict[str, str]:
    text = (base / UNIT.lstrip("/")).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_install_orders_after_udev_before_the_toolstacks_present_and_never_fails(
    image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(image, skip=SHM)
    assert run(image, "boot-install", "--dry-run") == 0
    assert "+ExecStart=-/usr/bin/pcipass apply --boot" in capsys.readouterr().out
    assert snapshot(image, skip=SHM) == before
    assert run(image, "boot-install") == 0
    unit = unit_lines(image)
    assert unit["Before"] == "libvirtd.service virtqemud.service"  # only those installed
    assert "systemd-udev-settle.service" in unit["After"]
    assert "systemd-udev-trigger.service" in unit["After"]
    assert unit["Type"] == "oneshot"
    assert unit["ExecStart"].startswith("-")  # systemd ignores its exit: the boot goes on
    assert unit["ConditionPathExists"] == "/etc/pcipass/pcipass.toml"
    assert "Wants=pcipass-boot.service" in (image / WANTS.lstrip("/")).read_text()
    capsys.readouterr()
    installed = snapshot(image, skip=SHM)
    assert run(image, "boot-install") == 0
    assert capsys.readouterr().out.rstrip().endswith("no change")
    assert snapshot(image, skip=SHM) == installed
    assert run(image, "--json", "boot-uninstall") == 0
    assert [f["path"] for f in json.loads(capsys.readouterr().out)["files"]] == [UNIT, WANTS]
    assert not (image / UNIT.lstrip("/")).exists()
    assert not (image / WANTS.lstrip("/")).exists()


def test_a_unit_that_is_not_ours_is_refused_and_nothing_changes(
    image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (image / "etc/systemd/system").mkdir(parents=True)
    (image / UNIT.lstrip("/")).write_text("[Service]\nExecStart=/usr/local/bin/mine\n")
    before = snapshot(image)
    assert run(image, "boot-install") == 2
    assert "exists and is not pcipass's; not replaced" in capsys.readouterr().err
    assert snapshot(image) == before
    assert run(image, "boot-uninstall") == 0  # not ours: left alone
    assert snapshot(image) == before


def test_a_kill_at_every_step_of_boot_install_recovers_to_before_or_done(
    image: Path, tmp_path: Path
) -> None:
    before = capture(image)
    with KillAt(0) as counting:
        done_copy = tmp_path / "done"
        shutil.copytree(image, done_copy, symlinks=True)
        assert run(done_copy, "boot-install") == 0
    done = capture(done_copy)
    assert counting.seen.count("edit") == 2  # both files journalled before written
    for index in range(1, len(counting.seen) + 1):
        base = tmp_path / f"kill{index}"
        shutil.copytree(image, base, symlinks=True)
        with KillAt(index), pytest.raises(SimulatedKill):
            run(base, "boot-install")
        recover(Host.for_command(base))
        check_invariant(base, before, done)


@pytest.mark.needs_tool("systemd-analyze")
def test_systemd_accepts_the_unit(image: Path, tmp_path: Path) -> None:
    assert run(image, "boot-install") == 0
    unit = tmp_path / "pcipass-boot.service"
    # Verified as it would run: the image's /usr/bin/pcipass is not this machine's.
    text = (image / UNIT.lstrip("/")).read_text().replace("/usr/bin/pcipass", "/bin/true")
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
