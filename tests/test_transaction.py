"""hide/unhide as one transaction: the persistent half failing undoes the runtime
half, refusals change nothing, recover treats the journal as data, repeats are
clean no-ops, and decisions are taken under the state lock."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.root import HostRoot
from pcipass.state.ledger import Ledger
from pcipass.testing.crash import run_stopped
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.fakehost import FakeHost, snapshot
from pcipass.testing.harness import Lab
from pcipass.testing.invariants import capture, check_invariant, open_intents

NIC = "0000:09:00.0"


@pytest.fixture
def xen(rhel5: Lab) -> Lab:
    """The RHEL 5 example host as the CLI drives it (a simulated kernel from the tree)."""
    rhel5.fake.mark_simulated()
    return rhel5


@pytest.fixture
def kvm_sim(kvm: Lab) -> Lab:
    kvm.fake.mark_simulated()
    return kvm


def cli(lab: Lab, *args: str) -> int:
    return main([*args, "--root", str(lab.base)])


def everything(base: Path) -> dict[str, object]:
    """The whole tree, the state directory included (minus SQLite's own side files
    and the lock file every state-changing command creates)."""
    snap = snapshot(base, skip=())
    return {
        k: v
        for k, v in snap.items()
        if not k.endswith(("-wal", "-shm")) and k != "var/lib/pcipass/lock"
    }


# --- 3. the persistent half fails: the runtime half is undone -------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EPERM])
def test_persist_write_failure_leaves_the_device_on_its_driver(
    xen: Lab,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    err: int,
) -> None:
    from pcipass.persist import atomic

    before = capture(xen.base)
    real = atomic._replace_at

    def failing(dirfd: int, name: str, data: bytes, mode: int | None, display: str) -> None:
        if name == "modprobe.conf":
            raise OSError(err, os.strerror(err), display)
        real(dirfd, name, data, mode, display)

    monkeypatch.setattr(atomic, "_replace_at", failing)
    assert cli(xen, "hide", "--now", "--persist", NIC) == 1
    message = capsys.readouterr().err
    # The cause in plain words (the writer's own phrasing of the errno), and the rollback.
    cause = {errno.ENOSPC: "space", errno.EROFS: "read-only", errno.EPERM: "not permitted"}[err]
    assert cause in message.lower() and "nothing was changed" in message
    assert "Traceback" not in message
    assert xen.fake.bound_driver(NIC) == "bnx2"
    assert check_invariant(xen.base, before, before) == "before"
    # The advice never says to throw the ledger away.
    assert "move it aside" not in message and "state.db" not in message


def test_immutable_modprobe_conf_rolls_back_the_runtime_half(
    xen: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real `chattr +i` file (rename over it fails with EPERM), as root where it works."""
    import subprocess

    conf = xen.base / "etc/modprobe.conf"
    made = subprocess.run(["chattr", "+i", str(conf)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {made.stderr.decode().strip()}")
    try:
        before = capture(xen.base)
        assert cli(xen, "hide", "--now", "--persist", NIC) == 1
        message = capsys.readouterr().err
        assert "not permitted" in message.lower() and "nothing was changed" in message
        # One line (after the simulated kernel's announcement, host/context.py).
        lines = [x for x in message.splitlines() if not x.startswith("pcipass: simulated kernel")]
        assert len(lines) == 1
        assert lines[0].startswith("pcipass: /etc/modprobe.conf: ")
        assert "pcipass-tmp" not in message
        assert "chattr -i" in message
        assert xen.fake.bound_driver(NIC) == "bnx2"
        assert check_invariant(xen.base, before, before) == "before"
    finally:
        subprocess.run(["chattr", "-i", str(conf)], check=False)


def test_admins_own_install_line_refuses_before_the_device_moves(
    xen: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """#12: with `install bnx2 /bin/true`, hide --now --persist said it left the
    device untouched while the device stayed on pciback."""
    conf = xen.base / "etc/modprobe.conf"
    conf.write_text(conf.read_text() + "install bnx2 /bin/true\n")
    before = snapshot(xen.base)
    code = cli(xen, "hide", "--now", "--persist", NIC)
    message = capsys.readouterr().err
    assert code == 2 and "install command" in message
    assert xen.fake.bound_driver(NIC) == "bnx2"
    assert snapshot(xen.base) == before


def test_tmpfs_full_disk_rolls_back_both_halves(tmp_path: Path) -> None:
    """A real full filesystem (a 1 MiB tmpfs on /etc, as root where mount works)."""
    import subprocess

    fake = build_rhel5_xen(tmp_path / "host")
    fake.mark_simulated()
    etc = tmp_path / "host/etc"
    saved = tmp_path / "etc-saved"
    os.rename(etc, saved)
    etc.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(etc)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        for entry in saved.rglob("*"):
            target = etc / entry.relative_to(saved)
            if entry.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(entry.read_bytes())
        fd = os.open(etc / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        before = capture(tmp_path / "host")
        code = main(["hide", "--now", "--persist", NIC, "--root", str(tmp_path / "host")])
        assert code == 1
        assert FakeHost.load(tmp_path / "host").bound_driver(NIC) == "bnx2"
        check_invariant(tmp_path / "host", before, before)
    finally:
        subprocess.run(["umount", str(etc)], check=False)


def test_full_state_disk_is_not_called_a_corrupt_ledger(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" used to advise moving state.db aside."""
    import shutil
    import subprocess

    base = tmp_path / "host"
    build_rhel5_xen(base).mark_simulated()
    assert main(["hide", "--now", NIC, "--root", str(base)]) == 0
    state = base / "var/lib/pcipass"
    saved = tmp_path / "state-saved"
    shutil.copytree(state, saved)
    shutil.rmtree(state)
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(state)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shutil.copytree(saved, state, dirs_exist_ok=True)
        fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        before = snapshot(base)
        result = subprocess.run(
            [sys.executable, "-m", "pcipass", "hide", "--now", "0000:0a:04.1", "--root", str(base)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "move it aside" not in result.stderr and "corrupt" not in result.stderr
        assert snapshot(base) == before
        assert FakeHost.load(base).bound_driver("0000:0a:04.1") == "e1000"
    finally:
        subprocess.run(["umount", str(state)], check=False)


# --- 5. the journal is data, never instructions ------------------------------------------


def _craft(
    base: Path, intent: dict[str, object], steps: list[dict[str, object]], edits: list[str]
) -> None:
    with Ledger.open(HostRoot.at(base)) as ledger:
        op = ledger.begin("hide", intent)
        for undo in steps:
            op.step("crafted", undo)
        for path in edits:
            op.record_file_edit(path, "0" * 64, "absent", None)


@pytest.mark.parametrize(
    ("intent", "steps", "edits", "named"),
    [
        ({}, [], ["/../../etc/passwd"], "/../../etc/passwd"),
        ({}, [], ["/etc/shadow"], "/etc/shadow"),
        ({}, [], ["/etc/modprobe.d/../shadow"], "/etc/modprobe.d/../shadow"),
        ({"config": "/etc/shadow"}, [], ["/etc/shadow"], "/etc/shadow"),
        ({}, [{"op": "write", "address": NIC, "path": "/etc/passwd"}], [], "unknown sysfs action"),
        ({}, [{"op": "bind", "address": NIC, "driver": "../../../etc"}], [], "not a driver name"),
        ({}, [{"op": "unbind", "address": "../../etc", "driver": "bnx2"}], [], "not a PCI address"),
        ({"before": {"0000:09:00.0/../../x": {"driver": None}}}, [], [], "not a PCI address"),
        ({"before": {NIC: {"driver": "../x"}}}, [], [], "not a driver name"),
    ],
)
def test_recover_refuses_a_crafted_journal_and_changes_nothing(
    xen: Lab,
    capsys: pytest.CaptureFixture[str],
    intent: dict[str, object],
    steps: list[dict[str, object]],
    edits: list[str],
    named: str,
) -> None:
    (xen.base / "etc/shadow").write_text("root:secret\n")
    _craft(xen.base, intent, steps, edits)
    before = everything(xen.base)
    outside = snapshot(xen.base.parent, skip=(xen.base.name,))
    code = cli(xen, "recover")
    message = capsys.readouterr().err
    assert code == 3
    assert named in message and "journal operation 1" in message
    assert everything(xen.base) == before
    assert snapshot(xen.base.parent, skip=(xen.base.name,)) == outside


def test_recover_removes_temporary_files_pcipass_left_and_nothing_else(
    xen: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """SIGKILL between a temp file's creation and its rename leaves it; in
    hooks/qemu.d an executable one libvirt might run (#19 item 1)."""
    hooks = xen.base / "etc/libvirt/hooks/qemu.d"
    hooks.mkdir(parents=True)
    leftover = hooks / ".pcipass.Ab12cd.pcipass-tmp"
    leftover.write_text("#!/bin/sh\n")
    leftover.chmod(0o755)
    conf_tmp = xen.base / "etc/.modprobe.conf.x1y2z3.pcipass-tmp"
    conf_tmp.write_text("half\n")
    keep = xen.base / "etc/modprobe.d/notes.pcipass-tmp"  # not a name pcipass makes
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("mine\n")
    target = tmp_path / "outside-target"
    target.write_text("outside\n")
    link = xen.base / "etc/xen/.g.Zz.pcipass-tmp"
    link.symlink_to(target)
    assert cli(xen, "recover") == 0
    out = capsys.readouterr().out
    assert "/etc/libvirt/hooks/qemu.d/.pcipass.Ab12cd.pcipass-tmp: removed" in out
    assert not leftover.exists() and not conf_tmp.exists()
    assert keep.read_text() == "mine\n" and link.is_symlink() and target.exists()


# --- 7. repeats are clean no-ops --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("hide", "--now", NIC),
        ("hide", "--persist", NIC),
        ("hide", "--now", "--persist", NIC),
        ("unhide", "--now", NIC),
        ("unhide", "--persist", NIC),
        ("unhide", "--now", "--persist", NIC),
    ],
)
def test_every_command_twice_second_is_a_no_op(
    xen: Lab, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    if args[0] == "unhide":
        assert cli(xen, "hide", "--now", "--persist", NIC) == 0
    assert cli(xen, *args) == 0
    capsys.readouterr()
    before = everything(xen.base)
    assert cli(xen, *args) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("no change")
    assert "then run" not in out  # no regeneration asked for a file not written
    assert everything(xen.base) == before


def test_unhide_persist_forgets_and_a_later_unhide_now_does_not_rebind(
    kvm_sim: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """#19 item 6: the ledger kept "hidden (persist)" after unhide --persist, a second
    one re-created an empty pcipass.conf, and unhide --now rebound a NIC never hidden."""
    device = "0000:02:10.0"
    assert cli(kvm_sim, "hide", "--persist", "--backend", "vfio", device) == 0
    assert cli(kvm_sim, "unhide", "--persist", device) == 0
    conf = kvm_sim.base / "etc/modprobe.d/pcipass.conf"
    assert not conf.exists()
    with Ledger.open(HostRoot.at(kvm_sim.base), readonly=True) as ledger:
        assert ledger.hidden() == []
    assert cli(kvm_sim, "unhide", "--persist", device) == 0
    assert not conf.exists()
    before = everything(kvm_sim.base)
    assert cli(kvm_sim, "unhide", "--now", device) == 0
    assert everything(kvm_sim.base) == before
    assert kvm_sim.fake.bound_driver(device) == "igbvf"


def test_unhide_now_of_a_device_hidden_only_at_boot_keeps_its_driver(
    kvm_sim: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    device = "0000:02:10.0"
    assert cli(kvm_sim, "hide", "--persist", "--backend", "vfio", device) == 0
    before = everything(kvm_sim.base)
    assert cli(kvm_sim, "unhide", "--now", device) == 0
    assert everything(kvm_sim.base) == before and kvm_sim.fake.bound_driver(device) == "igbvf"
    with Ledger.open(HostRoot.at(kvm_sim.base), readonly=True) as ledger:
        record = ledger.get_hidden(device)
        assert record is not None and record.how == "persist"


# --- 4. decisions under the lock -------------------------------------------------------


def test_unhide_waiting_for_an_attach_refuses_the_guests_device(tmp_path: Path) -> None:
    """A process stopped mid-attach holds the lock; unhide --now waits for it, then
    must see the new owner (PP101) instead of giving the guest's device to the host."""
    base = tmp_path / "host"
    build_rhel5_xen(base).mark_simulated()
    root = ["--root", str(base)]
    assert main(["hide", "--now", NIC, *root]) == 0
    attach = run_stopped(
        ["attach", NIC, "rhel5pv", "--accept-pv-dma-risk", "--guest-os", "rhel5.4", *root],
        2,
        workdir=tmp_path,
    )
    assert attach.stopped, attach.stderr()
    unhide = run_stopped(["unhide", "--now", NIC, *root], 1, workdir=tmp_path)
    assert unhide.stopped, unhide.stderr()  # stopped on its way to the lock
    os.kill(unhide.pid, signal.SIGCONT)  # now waiting for the lock attach holds
    assert attach.send(signal.SIGCONT) == 0, attach.stderr()
    unhide._wait()
    assert unhide.returncode == 3, unhide.stderr()
    assert "PP101" in unhide.stderr() or "assigned to guest rhel5pv" in unhide.stderr()
    assert FakeHost.load(base).bound_driver(NIC) == "pciback"
    assert open_intents(base) == []


# --- 8. a state database that lost its content --------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "schemaless"])
def test_an_emptied_state_db_is_reported_and_rebuilt(
    xen: Lab, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    assert cli(xen, "hide", "--now", "--persist", NIC) == 0
    assert cli(xen, "attach", NIC, "rhel5pv", "--accept-pv-dma-risk", "--guest-os", "rhel5.4") == 0
    db = xen.base / "var/lib/pcipass/state.db"
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    if damage == "empty":
        db.write_bytes(b"")
    else:
        db.unlink()
        sqlite3.connect(db).close()
        db.write_bytes(db.read_bytes())
    capsys.readouterr()
    assert cli(xen, "unhide", "--now", NIC) == 1
    message = capsys.readouterr().err
    assert "ownership may be lost" in message and "--rebuild-ledger" in message
    assert xen.fake.bound_driver(NIC) == "pciback"
    assert cli(xen, "recover", "--rebuild-ledger") == 0
    capsys.readouterr()
    assert cli(xen, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    text = json.dumps(status)
    assert "rhel5pv" in text and NIC in text
    assert cli(xen, "unhide", "--now", NIC) == 3  # the guest's device stays refused
