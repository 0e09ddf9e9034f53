"""StateLock: one pcipass at a time changes the host.

Every command that changes state (hide, unhide, attach, detach, recover...)
holds an exclusive ``flock(2)`` on ``state_dir/lock`` for its whole run; a
second one waits up to ``timeout`` seconds, then fails with
:class:`~pcipass.errors.StateLockedError`.  Read-only commands do not take it.

While it holds the lock, a command records who it is in ``lock.holder``
beside it (pid, command line, since when), so one that must wait says once,
on stderr, what it waits for::

    pcipass: waiting for the state lock held by pid 123 (pcipass attach g1 09:00.0, since 05:12:03)

The record is only a description: the flock decides, and a missing,
damaged or stale record (its pid gone) gives a plainer message.

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

from pcipass.errors import OperationFailed, PcipassError, StateLockedError
from pcipass.host.root import HostRoot
from pcipass.record import dataclass
from pcipass.state.identity import command_line, waiting_notice

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

LOCK_NAME: Final = "lock"
HOLDER_NAME: Final = "lock.holder"
_HOLDER_LIMIT: Final = 4096


@dataclass(frozen=True)
class LockHolder:
    pid: int
    command: str
    since: float

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} ({self.command}, since {since})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def read_holder(root: HostRoot) -> LockHolder | None:
    """The recorded holder of the state lock, or None when there is no
    usable record (missing, damaged, or its process is gone)."""
    import json  # only when a command waits (issue #13: every command passes here)

    try:
        raw = root.files.read_bytes(root.host_path(root.state_dir / HOLDER_NAME), _HOLDER_LIMIT)
        data = json.loads(raw or b"null")
    except (PcipassError, OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid, command, since = data.get("pid"), data.get("command"), data.get("since")
    if (
        not isinstance(pid, int)
        or isinstance(pid, bool)
        or pid <= 0
        or not isinstance(command, str)
        or not isinstance(since, (int, float))
    ):
        return None
    if not _pid_alive(pid):
        return None
    printable = "".join(c if c.isprintable() else "?" for c in command)[:300]
    return LockHolder(pid, printable, float(since))


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
        announced = False
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
                if not announced:
                    announced = True
                    self._announce_wait()
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
        try:
            self._record_holder()
        except BaseException:
            # Interrupted before __enter__ returned: no __exit__ would release it.
            self.release()
            raise

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # The record goes first, while the lock is still ours.
            _unlink(self.root, self._holder_display)
        finally:
            # Closing the only descriptor releases the flock.
            os.close(fd)

    @property
    def _holder_display(self) -> str:
        return self.root.host_path(self.root.state_dir / HOLDER_NAME)

    def _announce_wait(self) -> None:
        notice = waiting_notice()
        if notice is None:
            return
        holder = read_holder(self.root)
        if holder is None:
            notice("waiting for the state lock held by another pcipass")
        else:
            notice(f"waiting for the state lock held by {holder.describe()}")

    def _record_holder(self) -> None:
        """Who holds the lock, for the commands that wait (best effort: a
        record that cannot be written costs only the detail of a message).
        Written in place through the confined path; the flock is held, so
        no other pcipass writes it meanwhile."""
        import json  # only once the lock is taken (issue #13: start-up cost)

        record = {"pid": os.getpid(), "command": command_line(), "since": time.time()}
        data = json.dumps(record).encode()
        try:
            fd = self.root.files.open_file(
                self._holder_display, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
        except (PcipassError, OSError):
            return
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
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
