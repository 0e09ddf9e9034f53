"""The only file writer in pcipass.

Every configuration change is first described as a :class:`FileEdit` (old
bytes, new bytes), so ``--dry-run`` can show a unified diff and touch nothing,
and the state journal can undo it.  Applying an edit is atomic: the new
content goes to a temporary file in the same directory, is fsynced, and is
renamed over the target (rename(2) is atomic within one filesystem), then the
directory is fsynced so the rename itself survives a crash.  A copy of the
previous content is kept next to the state directory for undo.

Every path is resolved inside the root (:mod:`pcipass.host.confined`): no
link can carry a read or a write out of it.  The replaced file keeps its
mode, owner, group and extended attributes (an SELinux label, ACLs).

The temporary file can never be mistaken for a configuration: its name
starts with a dot and ends in ``.pcipass-tmp`` (modprobe.d reads ``*.conf``,
grub.d ``*.cfg``, libvirt runs every *executable* file of ``hooks/*.d``), it
is created 0600 and gets its execute bits only after the rename.
``recover`` and ``check`` remove leftovers (:func:`sweep_temp_files`).

Edits are computed on bytes, never re-serialised: every line the edit does
not mean to change stays byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from pcipass.errors import OperationFailed, PcipassError
from pcipass.host.confined import Confined, os_error, root_of
from pcipass.record import dataclass

#: Every temporary file pcipass creates ends with this.
TEMP_SUFFIX = ".pcipass-tmp"

_EXEC_BITS = 0o111
_XATTR_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(frozen=True)
class FileEdit:
    """Change ``path`` from ``before`` to ``after``.

    ``before is None``: the file does not exist yet.  ``after is None``: the
    file is to be removed.  ``display`` is the path as the host names it
    (``/etc/modprobe.conf``), used in diffs and messages; ``path`` is the
    root joined with it.
    """

    path: Path
    display: str
    before: bytes | None
    after: bytes | None
    mode: int | None = None

    @property
    def files(self) -> Confined:
        return Confined(root_of(self.path, self.display))

    @property
    def changes_anything(self) -> bool:
        return self.before != self.after or (self.mode is not None and self._mode_differs())

    def _mode_differs(self) -> bool:
        info = self.files.stat(self.display)
        return info is None or stat.S_IMODE(info.st_mode) != self.mode

    def diff(self) -> str:
        """A unified diff of the edit, as ``diff -u`` would print it."""
        old = (self.before or b"").decode("utf-8", "surrogateescape").splitlines(keepends=True)
        new = (self.after or b"").decode("utf-8", "surrogateescape").splitlines(keepends=True)
        old_name = self.display if self.before is not None else "/dev/null"
        new_name = self.display if self.after is not None else "/dev/null"
        import difflib  # imported where used: start-up cost (issue #13)

        lines = list(difflib.unified_diff(old, new, old_name, new_name))
        text = "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            for line in lines
        )
        if self.mode is not None and self.after is not None and self._mode_differs():
            text += f"mode {self.display}: {self.mode:04o}\n"
        return text


def digest(data: bytes | None) -> str:
    import hashlib  # imported where used: start-up cost (issue #13)

    return "absent" if data is None else hashlib.sha256(data).hexdigest()


def plan_edit(path: Path, display: str, after: bytes | None, mode: int | None = None) -> FileEdit:
    before = Confined(root_of(path, display)).read_bytes(display)
    return FileEdit(path, display, before, after, mode)


def apply_edit(edit: FileEdit, *, check_before: bool = True) -> None:
    """Apply ``edit`` atomically.

    With ``check_before`` the file must still hold ``edit.before``: if someone
    changed it since the plan was made, nothing is written (no lost update).
    """
    files = edit.files
    if check_before:
        current = files.read_bytes(edit.display)
        if current != edit.before:
            raise OperationFailed(
                edit.display,
                "changed by someone else since pcipass read it",
                "run the command again",
            )
    if edit.after is None:
        remove_file(files, edit.display)
        return
    write_file(files, edit.display, edit.after, edit.mode)


def remove_file(files: Confined, absolute: str) -> None:
    """Remove the file ``absolute`` (the target, when it is a link inside the root)."""
    try:
        with files.locate(absolute) as (dirfd, name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dirfd)
            _fsync_dir(dirfd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(absolute, exc, "remove it") from exc


def write_file(files: Confined, absolute: str, data: bytes, mode: int | None = None) -> None:
    """Replace ``absolute`` with ``data``: temp file in the same directory, fsync, rename.

    ``mode`` None keeps the mode the file has (0644 for a new file).  Owner,
    group and extended attributes of an existing file are kept.
    """
    try:
        with files.locate(absolute, create_dirs=True) as (dirfd, name):
            if name == ".":
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), absolute)
            _replace_at(dirfd, name, data, mode, absolute)
    except PcipassError:
        raise
    except OSError as exc:
        raise os_error(absolute, exc, "write it") from exc


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _temp_name(name: str) -> str:
    # The random part makes O_EXCL creation safe when two writers race.
    import secrets  # imported where used: start-up cost (issue #13)

    return f".{name[:200]}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _replace_at(dirfd: int, name: str, data: bytes, mode: int | None, display: str) -> None:
    old = _existing_file(dirfd, name, display)
    final_mode = mode if mode is not None else stat.S_IMODE(old.st_mode) if old else 0o644
    xattrs = _read_xattrs(dirfd, name, display) if old else []
    temp = _temp_name(name)
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dirfd,
    )
    renamed = False
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if old is not None:
                _copy_owner(fd, old)
            for key, value in xattrs:
                with _unsupported_ignored():
                    os.setxattr(fd, key, value)
            # chown cleared any set-id bits; the execute bits wait for the rename.
            os.fchmod(fd, final_mode & ~_EXEC_BITS)
            os.fsync(fd)
            os.rename(temp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            renamed = True
            if final_mode & _EXEC_BITS:
                os.fchmod(fd, final_mode)
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dirfd)
        raise
    _fsync_dir(dirfd)


def _existing_file(dirfd: int, name: str, display: str) -> os.stat_result | None:
    try:
        info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), display)
    if not stat.S_ISREG(info.st_mode):
        raise OperationFailed(
            display,
            "not a regular file (a FIFO, socket or device node?)",
            "pcipass replaces only regular files; move it away",
        )
    return info


def _read_xattrs(dirfd: int, name: str, display: str) -> list[tuple[str, bytes]]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        try:
            keys = os.listxattr(fd)
        except OSError as exc:
            if exc.errno in _XATTR_UNSUPPORTED:
                return []
            raise
        return [(key, os.getxattr(fd, key)) for key in keys]
    finally:
        os.close(fd)


def _copy_owner(fd: int, old: os.stat_result) -> None:
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) != (old.st_uid, old.st_gid):
        os.fchown(fd, old.st_uid, old.st_gid)


@contextlib.contextmanager
def _unsupported_ignored() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in _XATTR_UNSUPPORTED:
            raise


def _fsync_dir(dirfd: int) -> None:
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep_temp_files(files: Confined, directories: Iterable[str]) -> list[str]:
    """Remove pcipass temp files left (by a kill) in ``directories``; their host paths."""
    removed = []
    for directory in sorted(set(directories)):
        for name in files.list_dir(directory):
            if not is_temp_name(name):
                continue
            path = directory.rstrip("/") + "/" + name
            try:
                with files.locate(directory) as (dirfd, dirname):
                    sub = os.open(dirname, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
                    try:
                        # Only what pcipass makes: a regular file (a link or a
                        # directory of that name is someone else's).
                        if not stat.S_ISREG(
                            os.stat(name, dir_fd=sub, follow_symlinks=False).st_mode
                        ):
                            continue
                        os.unlink(name, dir_fd=sub)
                        _fsync_dir(sub)
                    finally:
                        os.close(sub)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise os_error(path, exc, "remove a leftover temporary file") from exc
            removed.append(path)
    return removed
