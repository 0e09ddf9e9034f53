"""The one file writer under attack: metadata kept, harmless temp files, OS errors as answers.

ENOSPC and EROFS use a real small tmpfs and immutability uses chattr +i (as
root); where this machine does not allow that, those tests skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pcipass.cli.main import main
from pcipass.errors import OperationFailed, PcipassError
from pcipass.host.confined import Confined
from pcipass.persist import atomic
from pcipass.persist.atomic import apply_edit, plan_edit, write_file
from pcipass.testing.example import build_kvm
from pcipass.testing.fakehost import snapshot


def _temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".pcipass-tmp")]


def _errors(stderr: str) -> str:
    """stderr without the example host's "simulated kernel" announcement."""
    return "".join(
        line
        for line in stderr.splitlines(keepends=True)
        if not line.startswith("pcipass: simulated kernel:")
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    mounted: list[Path] = []

    def mount(name: str, size: str = "64k") -> Path:
        point = tmp_path / name
        point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(directory: Path) -> None:
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()


# --- metadata --------------------------------------------------------------------------


def test_owner_group_mode_and_xattrs_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "xen" / "g1"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"name = 'g1'\n")
    os.chown(target, 1234, 2345)
    os.chmod(target, 0o640)
    try:
        os.setxattr(target, "user.pcipass-test", b"kept")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    label = None
    with contextlib.suppress(OSError):
        label = os.getxattr(target, "security.selinux")
    apply_edit(plan_edit(target, "/etc/xen/g1", b"name = 'g1'\npci = []\n"), check_before=True)
    info = os.stat(target)
    assert target.read_bytes() == b"name = 'g1'\npci = []\n"
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 2345, 0o640)
    assert os.getxattr(target, "user.pcipass-test") == b"kept"
    if label is not None:
        assert os.getxattr(target, "security.selinux") == label
    assert _temp_files(target.parent) == []


# --- temp files ------------------------------------------------------------------------


def test_the_temp_file_is_hidden_and_not_executable_until_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt runs every executable file in hooks/qemu.d: the temp file must never be one."""
    hookdir = tmp_path / "etc" / "libvirt" / "hooks" / "qemu.d"
    seen: list[tuple[str, int]] = []
    real_rename = os.rename

    def spy(src: Any, dst: Any, **kwargs: Any) -> None:
        mode = os.stat(src, dir_fd=kwargs.get("src_dir_fd"), follow_symlinks=False).st_mode
        seen.append((str(src), stat.S_IMODE(mode)))
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", spy)
    write_file(Confined(tmp_path), "/etc/libvirt/hooks/qemu.d/pcipass", b"#!/bin/sh\n", 0o755)
    assert len(seen) == 1
    name, mode = seen[0]
    assert name.startswith(".pcipass.") and name.endswith(".pcipass-tmp")
    assert not name.endswith((".conf", ".cfg", ".xml", ".modules"))
    assert mode & 0o111 == 0  # not executable while it has the temp name
    assert stat.S_IMODE(os.stat(hookdir / "pcipass").st_mode) == 0o755
    assert _temp_files(hookdir) == []


@pytest.mark.parametrize("step", ["write", "fsync", "rename"])
def test_an_interruption_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    conf = tmp_path / "etc" / "modprobe.d" / "pcipass.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"old\n")

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_file(Confined(tmp_path), "/etc/modprobe.d/pcipass.conf", b"new\n")
    monkeypatch.undo()
    assert conf.read_bytes() == b"old\n"
    assert _temp_files(conf.parent) == []


def test_recover_and_check_remove_leftover_temp_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = build_kvm(tmp_path / "kvm")
    host.mark_simulated()
    hooks = host.base / "etc/libvirt/hooks/qemu.d"
    hooks.mkdir(parents=True)
    leftover = hooks / ".pcipass.1a2b3c4d.pcipass-tmp"
    leftover.write_bytes(b"#!/bin/sh\n")
    theirs = hooks / ".their-file"
    theirs.write_bytes(b"x")
    modprobe = host.base / "etc/modprobe.d"
    modprobe.mkdir(parents=True)
    (modprobe / ".pcipass.conf.00ff00ff.pcipass-tmp").write_bytes(b"options x\n")
    assert main(["--root", str(host.base), "check"]) in (0, 1, 3)
    out = capsys.readouterr().out
    assert "/etc/libvirt/hooks/qemu.d/.pcipass.1a2b3c4d.pcipass-tmp" in out
    assert not leftover.exists() and theirs.exists()
    assert _temp_files(modprobe) == []
    (modprobe / ".pcipass.conf.11111111.pcipass-tmp").write_bytes(b"options x\n")
    assert main(["--root", str(host.base), "recover"]) == 0
    assert "/etc/modprobe.d/.pcipass.conf.11111111.pcipass-tmp" in capsys.readouterr().out
    assert _temp_files(modprobe) == []


# --- OS errors -------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    etc = tmpfs("root/etc")
    (etc / "modprobe.conf").write_bytes(b"alias eth0 bnx2\n")
    _fill(etc)
    with pytest.raises(OperationFailed) as caught:
        write_file(Confined(tmp_path / "root"), "/etc/modprobe.conf", b"x" * 200_000)
    message = caught.value.render()
    assert message.startswith("/etc/modprobe.conf: cannot write it: no space left")
    assert "\n" not in message and "ledger" not in message
    assert (etc / "modprobe.conf").read_bytes() == b"alias eth0 bnx2\n"
    assert _temp_files(etc) == []


def test_hide_persist_on_a_full_disk_exits_1_and_changes_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    host = build_kvm(tmp_path / "kvm")
    host.mark_simulated()
    modprobe = tmpfs("kvm/etc/modprobe.d", "16k")
    _fill(modprobe)
    before = snapshot(host.base)
    code = main(["--root", str(host.base), "hide", "--persist", "02:00.0"])
    err = _errors(capsys.readouterr().err)
    assert code == 1, err
    assert err.count("\n") == 1 and "no space left" in err
    assert "move it aside" not in err
    assert snapshot(host.base) == before
    assert _temp_files(modprobe) == []


def test_a_full_state_disk_never_advises_throwing_the_ledger_away(
    tmp_path: Path, tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    host = build_kvm(tmp_path / "kvm")
    host.mark_simulated()
    state = tmpfs("kvm/var/lib/pcipass", "64k")
    _fill(state)
    code = main(["--root", str(host.base), "hide", "--now", "02:00.0"])
    err = _errors(capsys.readouterr().err)
    assert code == 1, err
    assert err.count("\n") == 1 and ("no space left" in err or "disk is full" in err), err
    assert "move it aside" not in err and "corrupt" not in err
    assert host.bound_driver("0000:02:00.0") == "igb"


def test_a_read_only_file_system(tmp_path: Path, tmpfs: Callable[..., Path]) -> None:
    etc = tmpfs("root/etc")
    (etc / "modprobe.conf").write_bytes(b"alias eth0 bnx2\n")
    subprocess.run(["mount", "-o", "remount,ro", str(etc)], check=True)
    with pytest.raises(OperationFailed) as caught:
        write_file(Confined(tmp_path / "root"), "/etc/modprobe.conf", b"new\n")
    assert "read-only file system" in caught.value.render()
    assert "remount it read-write" in caught.value.render()
    assert (etc / "modprobe.conf").read_bytes() == b"alias eth0 bnx2\n"


@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_immutable_file_or_directory(tmp_path: Path, what: str) -> None:
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    conf = etc / "modprobe.conf"
    conf.write_bytes(b"alias eth0 bnx2\n")
    victim = conf if what == "file" else etc
    if (
        not shutil.which("chattr")
        or subprocess.run(
            ["chattr", "+i", str(victim)], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("chattr +i is not allowed here")
    try:
        with pytest.raises(OperationFailed) as caught:
            write_file(Confined(tmp_path / "root"), "/etc/modprobe.conf", b"new\n")
        message = caught.value.render()
        assert message.startswith("/etc/modprobe.conf: cannot write it: operation not permitted")
        assert "chattr -i" in message
    finally:
        subprocess.run(["chattr", "-i", str(victim)], check=False)
    assert conf.read_bytes() == b"alias eth0 bnx2\n"
    assert _temp_files(etc) == []


def test_atomic_module_names_its_temp_files_consistently() -> None:
    assert atomic.is_temp_name(".pcipass.conf.deadbeef.pcipass-tmp")
    assert not atomic.is_temp_name("pcipass.conf")


# --- several files: all or nothing ---------------------------------------------------------


def test_a_failed_write_puts_back_the_files_written_before_it(tmp_path: Path) -> None:
    from pcipass.host.root import HostRoot
    from pcipass.ops.files import apply_file_operation
    from pcipass.state.ledger import Ledger

    root = HostRoot.at(tmp_path / "root")
    first = root.prefix / "etc/modprobe.d/pcipass.conf"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"# old\n")
    (root.prefix / "etc/default").mkdir(parents=True)
    (root.prefix / "etc/default/grub").symlink_to(tmp_path / "outside-grub")
    edits = [
        plan_edit(first, "/etc/modprobe.d/pcipass.conf", b"# new\n"),
        plan_edit(root.prefix / "etc/default/grub", "/etc/default/grub", b"GRUB=1\n"),
        plan_edit(root.prefix / "etc/modules", "/etc/modules", b"acpiphp\n"),
    ]
    with Ledger.open(root) as ledger:
        with pytest.raises(PcipassError) as caught:
            apply_file_operation(ledger, "hide-persist", {}, edits)
        assert "/etc/default/grub is a symbolic link" in caught.value.render()
        assert ledger.open_operations() == []
    assert first.read_bytes() == b"# old\n"
    assert not (root.prefix / "etc/modules").exists()
    assert not (tmp_path / "outside-grub").exists()
    assert _temp_files(first.parent) == []


# --- FIFOs planted in a tree ---------------------------------------------------------------

FIFOS = (
    "proc/cmdline",
    "usr/share/misc/pci.ids",
    "etc/modprobe.d/pcipass.conf",
    "etc/modprobe.d/other.conf",
    "etc/default/grub",
    "etc/libvirt/qemu/evil.xml",
    "sys/bus/pci/devices/0000:02:00.0/driver_override",
)


@pytest.mark.parametrize(
    ("argv", "codes"),
    [
        (["list"], (0,)),
        (["show", "02:00.0"], (0,)),
        (["guests"], (0,)),
        (["check"], (1,)),
        (["hide", "--persist", "02:00.0"], (1,)),
        (["hide", "--persist", "--platform", "cmdline", "02:00.0"], (1,)),
    ],
)
def test_fifos_in_the_tree_never_hang_a_command(
    tmp_path: Path, argv: list[str], codes: tuple[int, ...]
) -> None:
    """Each command runs in a child with a generous guard: a blocking open would never return."""
    import sys

    host = build_kvm(tmp_path / "kvm")
    host.mark_simulated()
    for rel in FIFOS:
        path = host.base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        os.mkfifo(path)
    before = snapshot(host.base)
    done = subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", str(host.base), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in codes, done.stderr
    assert "Traceback" not in done.stderr
    assert all(line.startswith("pcipass: ") for line in done.stderr.splitlines())
    if argv[0] == "hide":
        assert "not a regular file" in done.stderr
    assert snapshot(host.base) == before


def test_permission_denied_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """As an unprivileged user (effective uid nobody, switched back in finally)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pcipass-eacces-"))
    try:
        os.chmod(base, 0o755)
        etc = base / "etc" / "modprobe.d"
        etc.mkdir(parents=True, mode=0o755)
        (etc / "pcipass.conf").write_bytes(b"# old\n")
        os.seteuid(65534)
        try:
            with pytest.raises(OperationFailed) as caught:
                write_file(Confined(base), "/etc/modprobe.d/pcipass.conf", b"# new\n")
        finally:
            os.seteuid(0)
        message = caught.value.render()
        assert message.startswith("/etc/modprobe.d/pcipass.conf: cannot write it: permission")
        assert "run as root" in message and "\n" not in message
        assert (etc / "pcipass.conf").read_bytes() == b"# old\n"
        assert _temp_files(etc) == []
    finally:
        shutil.rmtree(base)


def test_check_leaves_temp_files_of_a_running_pcipass_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another pcipass holds the state lock: its temp file is in use, not a leftover."""
    from pcipass.host.root import HostRoot
    from pcipass.state.lock import StateLock

    host = build_kvm(tmp_path / "kvm")
    host.mark_simulated()
    modprobe = host.base / "etc/modprobe.d"
    modprobe.mkdir(parents=True)
    in_use = modprobe / ".pcipass.conf.0badcafe.pcipass-tmp"
    in_use.write_bytes(b"options x\n")
    with StateLock(HostRoot.at(host.base)):
        assert main(["--root", str(host.base), "check"]) == 1
    out = capsys.readouterr().out
    assert "/etc/modprobe.d/.pcipass.conf.0badcafe.pcipass-tmp" in out
    assert "run pcipass recover" in out
    assert in_use.exists()


def test_a_directory_swapped_for_a_link_after_the_plan_is_not_written_through(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    conf = root / "etc" / "modprobe.d" / "pcipass.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"# old\n")
    edit = plan_edit(conf, "/etc/modprobe.d/pcipass.conf", b"# new\n")
    os.rename(root / "etc" / "modprobe.d", root / "etc" / "modprobe.d.away")
    (root / "etc" / "modprobe.d").symlink_to(outside)
    (outside / "pcipass.conf").write_bytes(b"# old\n")  # even with the expected content
    with pytest.raises(PcipassError, match=r"symbolic link|changed by someone else"):
        apply_edit(edit)
    with pytest.raises(PcipassError, match=r"/etc/modprobe\.d is a symbolic link"):
        apply_edit(edit, check_before=False)
    assert (outside / "pcipass.conf").read_bytes() == b"# old\n"
    assert os.listdir(outside) == ["pcipass.conf"]
