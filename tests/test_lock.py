"""StateLock: one state-changing pcipass at a time, released however the holder ends."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pcipass.errors import OperationFailed, StateLockedError
from pcipass.host.root import HostRoot
from pcipass.state.lock import StateLock

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def root(tmp_path: Path) -> HostRoot:
    return HostRoot.at(tmp_path)


def _hold(root: HostRoot, ready: object, seconds: float, how: str) -> None:
    """Take the lock, say so, hold it, then end the way ``how`` says."""
    lock = StateLock(root, timeout=5)
    lock.acquire()
    ready.set()  # type: ignore[attr-defined]
    time.sleep(seconds)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "release":
        lock.release()
        time.sleep(30)  # stay alive: the lock must be free although we live
    # "exit": end without releasing; the kernel drops the flock


def _start_holder(root: HostRoot, seconds: float, how: str) -> multiprocessing.Process:
    ready = FORK.Event()
    proc = FORK.Process(target=_hold, args=(root, ready, seconds, how), daemon=True)
    proc.start()
    assert ready.wait(30), "holder did not take the lock"
    return proc  # type: ignore[return-value]


def test_lock_creates_lock_file_and_is_held_inside_with(root: HostRoot) -> None:
    with StateLock(root) as lock:
        assert lock.held
        assert lock.path == root.state_dir / "lock"
        assert lock.path.exists()
    assert not lock.held


def test_second_process_waits_then_fails_with_state_locked(root: HostRoot) -> None:
    holder = _start_holder(root, 30, "exit")
    try:
        started = time.monotonic()
        with pytest.raises(StateLockedError) as err:
            StateLock(root, timeout=1.2).acquire()
        waited = time.monotonic() - started
        assert 1.2 <= waited < 5
        assert err.value.path == "/var/lib/pcipass/lock"
        assert str(err.value) == (
            "/var/lib/pcipass/lock: another pcipass is running (waited 1s for its lock) "
            "(wait for it to finish, then run again)"
        )
    finally:
        holder.kill()
        holder.join()


def test_zero_timeout_fails_at_once(root: HostRoot) -> None:
    holder = _start_holder(root, 30, "exit")
    try:
        started = time.monotonic()
        with pytest.raises(StateLockedError, match=r"waited 0s"):
            StateLock(root, timeout=0).acquire()
        assert time.monotonic() - started < 0.5
    finally:
        holder.kill()
        holder.join()


def test_waiter_gets_the_lock_when_the_holder_releases_in_time(root: HostRoot) -> None:
    holder = _start_holder(root, 0.6, "release")
    try:
        started = time.monotonic()
        with StateLock(root, timeout=10) as lock:
            assert lock.held
        waited = time.monotonic() - started
        assert 0.3 < waited < 5  # it waited for the holder, not for its own timeout
    finally:
        holder.kill()
        holder.join()


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_lock_is_released_when_the_holder_process_ends(root: HostRoot, how: str) -> None:
    holder = _start_holder(root, 0.0, how)
    holder.join(timeout=30)
    assert holder.exitcode == (-signal.SIGKILL if how == "sigkill" else 0)
    started = time.monotonic()
    with StateLock(root, timeout=2):
        pass
    assert time.monotonic() - started < 0.5


def _try_lock(root: HostRoot, timeout: float) -> None:
    try:
        with StateLock(root, timeout=timeout):
            os._exit(0)
    except StateLockedError:
        os._exit(3)


def _lock_in_child(root: HostRoot, timeout: float) -> int | None:
    proc = FORK.Process(target=_try_lock, args=(root, timeout))
    proc.start()
    proc.join(timeout=30)
    return proc.exitcode


def test_lock_is_released_when_the_with_block_raises(root: HostRoot) -> None:
    with pytest.raises(KeyError), StateLock(root):
        assert _lock_in_child(root, 0.2) == 3  # held while inside
        raise KeyError("boom")
    assert _lock_in_child(root, 0.2) == 0


def test_programs_run_under_the_lock_do_not_keep_it(root: HostRoot) -> None:
    # close_fds=False: only O_CLOEXEC keeps the descriptor from the child.
    with StateLock(root):
        sleeper = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        assert _lock_in_child(root, 0.5) == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_not_reentrant(root: HostRoot) -> None:
    with StateLock(root) as lock, pytest.raises(RuntimeError, match="not re-entrant"):
        lock.acquire()


def test_negative_timeout_is_rejected(root: HostRoot) -> None:
    with pytest.raises(ValueError):
        StateLock(root, timeout=-1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a root-owned directory")
def test_unprivileged_user_gets_a_clear_error(tmp_path: Path) -> None:
    base = tmp_path / "host"
    base.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(base, 0o755)
    root = HostRoot.at(base)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                StateLock(root).acquire()
                message = "acquired"
            except OperationFailed as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message == (
        "/var/lib/pcipass/lock: permission denied: cannot open the state lock "
        "(commands that change the host must run as root)"
    )
    assert not (base / "var").exists()
