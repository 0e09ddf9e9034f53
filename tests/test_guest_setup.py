"""guest-setup (PP008): acpiphp now and at every boot, on guest images and running guests."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.ops.guest_setup import guest_setup
from pcipass.runner import CommandResult

REL5 = "2.6.18-164.el5"


def rhel5_guest(base: Path, *, running: bool) -> Path:
    (base / "etc").mkdir(parents=True)
    (base / "etc/redhat-release").write_text(
        "Red Hat Enterprise Linux Server release 5.4 (Tikanga)\n"
    )
    moddir = base / "lib/modules" / REL5
    (moddir / "kernel/drivers/pci/hotplug").mkdir(parents=True)
    (moddir / "kernel/drivers/pci/hotplug/acpiphp.ko").write_bytes(b"\x7fELF")
    (moddir / "modules.dep").write_text(
        "kernel/drivers/pci/hotplug/acpiphp.ko: kernel/drivers/pci/hotplug/pci_hotplug.ko\n"
    )
    if running:
        (base / "proc/sys/kernel").mkdir(parents=True)
        (base / "proc/sys/kernel/osrelease").write_text(REL5 + "\n")
        (base / "proc/modules").write_text("xen_blkfront 20000 2 - Live 0x0\n")
    return base


class ModprobeIntoProc:
    """A runner whose modprobe loads the module into the tree's /proc/modules."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.calls: list[tuple[str, ...]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        self.calls.append(tuple(argv))
        modules = self.base / "proc/modules"
        modules.write_text(modules.read_text() + f"{argv[-1]} 30000 0 - Live 0x0\n")
        return CommandResult(tuple(argv), 0, "", "")

    def which(self, program: str) -> str | None:
        return "/sbin/" + program


def test_rhel5_image_gets_the_documents_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = rhel5_guest(tmp_path / "img", running=False)

    assert main(["--root", str(base), "guest-setup"]) == 0
    script = base / "etc/sysconfig/modules/acpiphp.modules"
    assert script.read_text() == "modprobe acpiphp\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755  # the document's chmod +x
    # Idempotent: a second run changes nothing.
    before = script.read_bytes()
    capsys.readouterr()
    assert main(["--root", str(base), "guest-setup", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["edits"] == []
    assert script.read_bytes() == before


def test_running_rhel5_guest_loads_now_and_verifies(tmp_path: Path) -> None:
    base = rhel5_guest(tmp_path / "guest", running=True)
    runner = ModprobeIntoProc(base)
    host = Host.open(base, runner=runner)
    result = guest_setup(host)
    assert runner.calls == [("modprobe", "acpiphp")]
    assert result.loaded_after is True and result.ok
    assert (base / "etc/sysconfig/modules/acpiphp.modules").exists()


def test_builtin_acpiphp_needs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "deb"
    (base / "etc").mkdir(parents=True)
    (base / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (base / "proc/sys/kernel").mkdir(parents=True)
    (base / "proc/sys/kernel/osrelease").write_text("6.1.0-26-amd64\n")
    (base / "proc/modules").write_text("")
    (base / "lib/modules/6.1.0-26-amd64").mkdir(parents=True)
    (base / "lib/modules/6.1.0-26-amd64/modules.builtin").write_text(
        "kernel/drivers/pci/hotplug/acpiphp.ko\n"
    )
    assert main(["--root", str(base), "guest-setup"]) == 0
    out = capsys.readouterr().out
    assert "acpiphp: builtin" in out and "built into kernel" in out
    assert not (base / "etc/modules-load.d").exists()


def test_dry_run_shows_the_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = rhel5_guest(tmp_path / "img", running=False)
    assert main(["--root", str(base), "guest-setup", "--dry-run"]) == 0
    assert "+modprobe acpiphp" in capsys.readouterr().out
    assert not (base / "etc/sysconfig").exists()


def test_root_image_with_a_proc_tree_is_prepared_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copied guest tree has /proc/modules too; --root never loads a module
    # (it would go into this machine's kernel), and the image is done.
    base = rhel5_guest(tmp_path / "copied", running=True)
    assert main(["--root", str(base), "guest-setup"]) == 0
    captured = capsys.readouterr()
    assert "is not the running system: nothing is loaded now" in captured.out
    assert "--persist" not in captured.out + captured.err
    script = base / "etc/sysconfig/modules/acpiphp.modules"
    assert script.read_text() == "modprobe acpiphp\n"
    assert "acpiphp" not in (base / "proc/modules").read_text()
