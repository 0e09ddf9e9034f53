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

from pcipass.errors import OperationFailed, StateLockedError
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
