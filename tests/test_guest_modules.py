"""acpiphp inside a KVM guest (PP008): the document's file on RHEL 5, modules-load.d elsewhere."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from pcipass.host.root import HostRoot
from pcipass.persist.atomic import apply_edit
from pcipass.persist.guest_modules import (
    LOAD_ARGV,
    AcpiphpState,
    acpiphp_loaded,
    plan_guest_setup,
)

RHEL5_RELEASE = "2.6.18-164.el5"
DEBIAN_RELEASE = "6.1.0-56-amd64"
PROC_MODULES = "virtio_net 61440 0 - Live 0xffffffffc0311000\nvirtio_blk 24576 2 - Live 0x0\n"


def _write(root: Path, path: str, text: str | bytes = "", mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    target.write_bytes(text)
    target.chmod(mode)
    return target


def rhel5_guest(root: Path, *, running: bool = True, loaded: bool = False) -> HostRoot:
    _write(root, "/etc/redhat-release", "Red Hat Enterprise Linux Server release 5.4 (Tikanga)\n")
    _write(
        root,
        f"/lib/modules/{RHEL5_RELEASE}/modules.dep",
        f"/lib/modules/{RHEL5_RELEASE}/kernel/drivers/pci/hotplug/acpiphp.ko:\n"
        f"/lib/modules/{RHEL5_RELEASE}/kernel/drivers/net/virtio_net.ko:\n",
    )
    if running:
        _write(root, "/proc/sys/kernel/osrelease", RHEL5_RELEASE + "\n")
        modules = PROC_MODULES + ("acpiphp 24057 0 - Live 0xffffffff88000000\n" if loaded else "")
        _write(root, "/proc/modules", modules)
    return HostRoot.at(root)


def debian_guest(root: Path) -> HostRoot:
    _write(root, "/etc/os-release", "ID=debian\nVERSION_ID=12\n")
    _write(root, "/proc/sys/kernel/osrelease", DEBIAN_RELEASE + "\n")
    _write(root, "/proc/modules", PROC_MODULES)
    _write(
        root, f"/boot/config-{DEBIAN_RELEASE}", "CONFIG_HOTPLUG_PCI=y\nCONFIG_HOTPLUG_PCI_ACPI=y\n"
    )
    return HostRoot.at(root)


def test_rhel5_guest_gets_exactly_the_documents_file(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path)
    plan = plan_guest_setup(root)
    assert plan.state is AcpiphpState.NOT_LOADED
    assert plan.load_argv == LOAD_ARGV == ("modprobe", "acpiphp")
    (edit,) = plan.edits
    assert edit.display == "/etc/sysconfig/modules/acpiphp.modules"
    assert edit.before is None
    assert edit.after == b"modprobe acpiphp\n"  # echo 'modprobe acpiphp' > ...
    assert edit.mode == 0o755  # chmod +x
    assert "+modprobe acpiphp" in edit.diff()
    apply_edit(edit)
    written = tmp_path / "etc/sysconfig/modules/acpiphp.modules"
    assert written.read_bytes() == b"modprobe acpiphp\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o755
    # After `modprobe acpiphp` ran (here: /proc/modules says so) there is nothing left to do.
    _write(tmp_path, "/proc/modules", PROC_MODULES + "acpiphp 24057 0 - Live 0x0\n")
    assert acpiphp_loaded(root) is True
    again = plan_guest_setup(root)
    assert again.state is AcpiphpState.LOADED
    assert again.boot_configured_by == "/etc/sysconfig/modules/acpiphp.modules"
    assert again.nothing_to_do


@pytest.mark.needs_tool("sh")
def test_the_rhel5_file_is_a_valid_shell_script(tmp_path: Path) -> None:
    (edit,) = plan_guest_setup(rhel5_guest(tmp_path)).edits
    apply_edit(edit)
    # rc.sysinit runs it with the shell; check its syntax (sh -n executes nothing).
    check = subprocess.run(["sh", "-n", str(edit.path)], capture_output=True, timeout=30)
    assert check.returncode == 0


def test_not_executable_file_gets_its_mode_fixed(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path, loaded=True)
    _write(tmp_path, "/etc/sysconfig/modules/acpiphp.modules", "modprobe acpiphp\n", 0o644)
    plan = plan_guest_setup(root)
    (edit,) = plan.edits
    assert edit.before == edit.after  # content already right
    assert edit.changes_anything  # ... but rc.sysinit skips files that are not executable
    assert "mode /etc/sysconfig/modules/acpiphp.modules: 0755" in edit.diff()
    assert plan.load_argv is None


def test_someone_elses_file_of_that_name_keeps_its_bytes(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path)
    _write(tmp_path, "/etc/sysconfig/modules/acpiphp.modules", "#!/bin/sh\nlogger hello", 0o755)
    (edit,) = plan_guest_setup(root).edits
    assert edit.after == b"#!/bin/sh\nlogger hello\nmodprobe acpiphp\n"


def test_another_executable_modules_file_already_does_it(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path)
    _write(tmp_path, "/etc/sysconfig/modules/hotplug.modules", "/sbin/modprobe acpiphp\n", 0o755)
    plan = plan_guest_setup(root)
    assert plan.boot_configured_by == "/etc/sysconfig/modules/hotplug.modules"
    assert plan.edits == ()
    assert plan.load_argv == LOAD_ARGV  # still not loaded right now


def test_debian_6_1_has_acpiphp_built_in(tmp_path: Path) -> None:
    plan = plan_guest_setup(debian_guest(tmp_path))
    assert plan.state is AcpiphpState.BUILTIN
    assert plan.edits == ()
    assert plan.load_argv is None
    assert plan.nothing_to_do
    assert "CONFIG_HOTPLUG_PCI_ACPI=y" in plan.notes[0]
    assert plan.to_json()["state"] == "builtin"


def test_builtin_from_modules_builtin(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path)
    _write(
        tmp_path,
        f"/lib/modules/{RHEL5_RELEASE}/modules.builtin",
        "kernel/drivers/pci/hotplug/acpiphp.ko\n",
    )
    assert plan_guest_setup(root).state is AcpiphpState.BUILTIN


def test_systemd_guest_uses_modules_load_d(tmp_path: Path) -> None:
    release = "5.14.0-427.el9.x86_64"
    _write(tmp_path, "/etc/redhat-release", "Red Hat Enterprise Linux release 9.4 (Plow)\n")
    _write(tmp_path, "/etc/os-release", 'ID="rhel"\nVERSION_ID="9.4"\n')
    _write(tmp_path, "/proc/sys/kernel/osrelease", release)
    _write(tmp_path, "/proc/modules", PROC_MODULES)
    _write(tmp_path, f"/boot/config-{release}", "CONFIG_HOTPLUG_PCI_ACPI=m\n")
    _write(tmp_path, f"/lib/modules/{release}/kernel/drivers/pci/hotplug/acpiphp.ko.xz")
    plan = plan_guest_setup(HostRoot.at(tmp_path))
    assert plan.state is AcpiphpState.NOT_LOADED
    (edit,) = plan.edits
    assert (edit.display, edit.after, edit.mode) == (
        "/etc/modules-load.d/acpiphp.conf",
        b"acpiphp\n",
        0o644,
    )


def test_debian_etc_modules_already_lists_it(tmp_path: Path) -> None:
    root = debian_guest(tmp_path)
    _write(tmp_path, f"/boot/config-{DEBIAN_RELEASE}", "CONFIG_HOTPLUG_PCI_ACPI=m\n")
    _write(tmp_path, f"/lib/modules/{DEBIAN_RELEASE}/modules.dep", "kernel/acpiphp.ko:\n")
    _write(tmp_path, "/etc/modules", "# /etc/modules\nloop\nacpiphp\n")
    plan = plan_guest_setup(root)
    assert plan.boot_configured_by == "/etc/modules"
    assert plan.edits == ()


def test_kernel_without_the_module(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path)
    _write(tmp_path, f"/lib/modules/{RHEL5_RELEASE}/modules.dep", "kernel/virtio_net.ko:\n")
    plan = plan_guest_setup(root)
    assert plan.state is AcpiphpState.MISSING
    assert plan.load_argv is None
    assert "no acpiphp module" in plan.notes[0]


def test_guest_image_without_proc(tmp_path: Path) -> None:
    root = rhel5_guest(tmp_path, running=False)
    assert acpiphp_loaded(root) is None
    plan = plan_guest_setup(root)
    assert plan.state is AcpiphpState.UNKNOWN
    assert not plan.running
    assert plan.load_argv is None  # nothing to load into an image
    (edit,) = plan.edits
    assert edit.path == tmp_path / "etc/sysconfig/modules/acpiphp.modules"
