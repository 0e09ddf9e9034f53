"""Opening ``state.db`` inside the root, with no window for a swapped link.

SQLite opens its files by name, and it resolves every symbolic link in that
name itself (``/proc/self/fd/N/state.db`` becomes the directory's path string
again), so no name handed to it is proof against a directory of the state
path being swapped for a link between pcipass's check and SQLite's open.
pcipass therefore does not trust the name; it checks what SQLite opened:

1. the state directory is resolved inside the root (``host/confined.py``) and
   held open as a descriptor for the whole open;
2. ``state.db`` is opened (and, for a writer, created) through that descriptor
   with ``O_NOFOLLOW``: pcipass's own descriptor of the right inode.  SQLite
   is given URI ``mode=rw``/``mode=ro``, so it never creates the main file;
3. SQLite gets the directory's path as the kernel names the held descriptor,
   plus ``state.db``.  ``sqlite3.connect`` opens the main file at once;
4. every regular file this process newly holds open after the connect (the
   ``/proc/self/fd`` scan) must be that inode, or after setup also
   ``state.db-wal``/``-shm``/``-journal`` as found through the held
   descriptor.  Anything else means the name led elsewhere: the connection
   is closed before any statement ran (step 4) and the open is refused.

A swap between the check and SQLite's open is thus caught before SQLite read
or wrote anything through it.  Side files SQLite creates later by name (the
WAL index) are checked the same way right after setup.  On the real root the
state directory is root's own, so no one but root can swap it; the window
matters for trees under ``--root`` that others can write.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pcipass.errors import OperationFailed, RefusedError
from pcipass.host.confined import os_error
from pcipass.host.root import HostRoot
from pcipass.state.schema import DB_NAME, permission_error

#: The files SQLite keeps beside ``state.db``.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


class StateDir:
    """The state directory, resolved inside the root and held by descriptor."""

    def __init__(self, fd: int, display: str) -> None:
        self.fd = fd
        self.display = display

    @property
    def real(self) -> Path:
        """The directory's path as the kernel names the held descriptor now."""
        return Path(os.readlink(f"/proc/self/fd/{self.fd}"))

    @property
    def db_path(self) -> Path:
        return self.real / DB_NAME

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def refuse_links(self) -> None:
        """state.db and its side files are plain files, never links."""
        for suffix in ("", *SIDE_SUFFIXES):
            info = self.lstat(DB_NAME + suffix)
            if info is not None and stat.S_ISLNK(info.st_mode):
                raise RefusedError(
                    self.display + suffix,
                    "is a symbolic link; pcipass opens its state files only as plain files",
                    "remove the link",
                )

    def open_db(self, *, create: bool) -> int | None:
        """pcipass's own descriptor of state.db (O_NOFOLLOW); None when absent
        and not ``create``."""
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY
        try:
            fd = os.open(DB_NAME, flags, 0o644, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            action = "write the state database" if create else "read the state database"
            raise permission_error(self.display, action) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.refuse_links()
            raise os_error(self.display, exc, "open the state database") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OperationFailed(
                self.display, "is not a regular file", "move it aside; pcipass starts a new one"
            )
        return fd

    def close(self) -> None:
        os.close(self.fd)


def open_state_dir(root: HostRoot, display: str, *, create: bool) -> StateDir | None:
    """The state directory held open (None when absent and not ``create``).

    A writer refuses a link on the way that leads nowhere inside the root,
    naming it; a reader sees nothing recorded there (an empty view), as for
    any other file that is not inside the root."""
    state_dir = root.host_path(root.state_dir)
    files = root.files
    try:
        if create:
            # The root itself is the administrator's choice, not part of the
            # tree: a writer creates it, as it creates the state directory.
            root.prefix.mkdir(parents=True, exist_ok=True)
        with files.locate(state_dir, create_dirs=create, strict=create) as (parent, name):
            if create and name != ".":
                with suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise permission_error(display, "create the state directory") from exc
    except OSError as exc:
        raise os_error(state_dir, exc, "open the directory") from exc
    return StateDir(fd, display)


def _open_files() -> dict[int, tuple[int, int]]:
    """(device, inode) of every regular file this process holds open."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the descriptor of the listing itself, or one just closed
        if stat.S_ISREG(info.st_mode):
            found[int(entry)] = (info.st_dev, info.st_ino)
    return found


def _expected(state: StateDir, db_fd: int) -> set[tuple[int, int]]:
    info = os.fstat(db_fd)
    allowed = {(info.st_dev, info.st_ino)}
    for suffix in SIDE_SUFFIXES:
        side = state.lstat(DB_NAME + suffix)
        if side is not None and stat.S_ISREG(side.st_mode):
            allowed.add((side.st_dev, side.st_ino))
    return allowed


def _swapped(display: str) -> RefusedError:
    return RefusedError(
        display,
        "the state directory changed while pcipass opened it (a component was replaced, "
        "e.g. by a symbolic link)",
        "make sure no one else can write the state directory or its parents under the "
        "root, then run the command again",
    )


@contextmanager
def verified(state: StateDir, db_fd: int) -> Iterator[Callable[[sqlite3.Connection], None]]:
    """Wrap SQLite's open: the body connects, then calls the check it is given
    with each connection, after the connect and again after setup."""
    # (descriptor, file) pairs, not numbers: a number closed and reused for
    # another file by SQLite counts as new.
    before = set(_open_files().items())

    def check(conn: sqlite3.Connection) -> None:
        allowed = _expected(state, db_fd)
        strangers = [
            fd
            for fd, ident in _open_files().items()
            if (fd, ident) not in before and ident not in allowed
        ]
        if strangers:
            conn.close()
            raise _swapped(state.display)

    yield check


def db_uri(state: StateDir, mode: str) -> str:
    """The URI SQLite is given: ``mode=rw`` or ``mode=ro`` never creates the file."""
    return "file:" + urllib.parse.quote(str(state.db_path)) + "?mode=" + mode
