"""StateLock: one pcipass at a time changes the host.

Every command that changes state (hide, unhide, attach, detach, recover...)
holds an exclusive ``flock(2)`` on ``state_dir/lock`` for its whole run; a
second one waits up to ``timeout`` seconds, then fails with
:class:`~pcipass.errors.StateLockedError`.  Read-only commands do not take it.

``flock`` rather than a pid file: the kernel drops the lock when the holding
process exits, however it exits (SIGKILL included), so a crash never leaves a
stale lock behind (flock(2): "the lock is released ... when all file
descriptors referring to the open file description are closed").  The
descriptor is opened close-on-exec (Python's default, PEP 446), so programs
pcipass runs (xl, virsh, modprobe) do not inherit, and so cannot keep, the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from pcipass.errors import OperationFailed, PcipassError, StateLockedError
from pcipass.host.root import HostRoot

LOCK_NAME: Final = "lock"


class StateLock:
    """``with StateLock(root): ...`` serialises state-changing pcipass runs.

    Not re-entrant: taking it twice in one process waits on itself (flock
    locks belong to the open file description, and each acquire opens anew).
    """

    def __init__(
        self, root: HostRoot, timeout: float = 10.0, *, poll_interval: float = 0.05
    ) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.root = root
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.root.state_dir / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError("StateLock is not re-entrant")
        display = self.root.host_path(self.path)
        fd = self._open(display)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise OperationFailed(
                            display, f"cannot lock: {exc.strerror}", "is the state directory local?"
                        ) from exc
                waited = time.monotonic() - started
                if waited >= self.timeout:
                    raise StateLockedError(display, waited)
                # Polling rather than a blocking flock interrupted by SIGALRM:
                # no signal handler to install or restore in library code.
                time.sleep(min(self.poll_interval, self.timeout - waited))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the only descriptor releases the flock.
            os.close(fd)

    def _open(self, display: str) -> int:
        try:
            # Resolved inside the root: a lock file or state directory that is a
            # link out of it is refused (pcipass.host.confined).
            return self.root.files.open_file(display, os.O_RDWR | os.O_CREAT, 0o600)
        except OperationFailed as exc:
            if "permission denied" not in exc.problem:
                raise
            raise OperationFailed(
                display,
                "permission denied: cannot open the state lock",
                "commands that change the host must run as root",
            ) from exc

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


# --- an operation in progress without the state lock ---------------------------


def _operation_lock_display(root: HostRoot, op_id: int) -> str:
    return root.host_path(root.state_dir / f"op-{int(op_id)}.lock")


class OperationInProgress:
    """Held by a command that keeps a journal intent open while it does not
    hold the state lock (a live hotplug waiting for xl, xm or the guest).

    ``recover`` takes the state lock and treats every open intent as left by
    a dead process; an intent whose operation lock is held belongs to a live
    one and is left alone (:func:`operation_in_progress`).  ``flock`` again:
    a killed holder releases it, so its intent is then recovered as usual.
    Taken while the state lock is held, so no ``recover`` sees the intent
    without it.
    """

    def __init__(self, root: HostRoot, op_id: int) -> None:
        self.root = root
        self.display = _operation_lock_display(root, op_id)
        self._fd: int | None = None

    def __enter__(self) -> OperationInProgress:
        fd = self.root.files.open_file(self.display, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Removed while still locked: a recover that opens it after this
        # finds no file (the operation is over), never a stale lock.
        _unlink(self.root, self.display)
        os.close(fd)


def operation_in_progress(root: HostRoot, op_id: int) -> bool:
    """True when a live process holds the operation lock of ``op_id``."""
    display = _operation_lock_display(root, op_id)
    try:
        if not root.files.exists(display):
            return False
        fd = root.files.open_file(display, os.O_RDWR, 0o600)
    except PcipassError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    # Nobody holds it: a killed holder's file; the caller's recover goes on.
    _unlink(root, display)
    return False


def _unlink(root: HostRoot, display: str) -> None:
    try:
        with root.files.locate(display) as (dirfd, name):
            os.unlink(name, dir_fd=dirfd)
    except (OSError, PcipassError):
        pass  # already gone, or not ours to remove: a stale file is harmless
