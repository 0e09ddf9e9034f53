"""The only file writer in pcipass.

Every configuration change is first described as a :class:`FileEdit` (old
bytes, new bytes), so ``--dry-run`` can show a unified diff and touch nothing,
and the state journal can undo it.  Applying an edit is atomic: the new
content goes to a temporary file in the same directory, is fsynced, and is
renamed over the target (rename(2) is atomic within one filesystem), then the
directory is fsynced so the rename itself survives a crash.  A copy of the
previous content is kept next to the state directory for undo.

Edits are computed on bytes, never re-serialised: every line the edit does
not mean to change stays byte for byte.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pcipass.errors import OperationFailed


@dataclass(frozen=True)
class FileEdit:
    """Change ``path`` from ``before`` to ``after``.

    ``before is None``: the file does not exist yet.  ``after is None``: the
    file is to be removed.  ``display`` is the path as the host names it
    (``/etc/modprobe.conf``), used in diffs and messages.
    """

    path: Path
    display: str
    before: bytes | None
    after: bytes | None
    mode: int | None = None

    @property
    def changes_anything(self) -> bool:
        return self.before != self.after or (self.mode is not None and self._mode_differs())

    def _mode_differs(self) -> bool:
        try:
            current = stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            return True
        return current != self.mode

    def diff(self) -> str:
        """A unified diff of the edit, as ``diff -u`` would print it."""
        old = (self.before or b"").decode("utf-8", "surrogateescape").splitlines(keepends=True)
        new = (self.after or b"").decode("utf-8", "surrogateescape").splitlines(keepends=True)
        old_name = self.display if self.before is not None else "/dev/null"
        new_name = self.display if self.after is not None else "/dev/null"
        lines = list(difflib.unified_diff(old, new, old_name, new_name))
        text = "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            for line in lines
        )
        if self.mode is not None and self.after is not None and self._mode_differs():
            text += f"mode {self.display}: {self.mode:04o}\n"
        return text


def digest(data: bytes | None) -> str:
    return "absent" if data is None else hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def plan_edit(path: Path, display: str, after: bytes | None, mode: int | None = None) -> FileEdit:
    return FileEdit(path, display, read_bytes(path), after, mode)


def apply_edit(edit: FileEdit, *, check_before: bool = True) -> None:
    """Apply ``edit`` atomically.

    With ``check_before`` the file must still hold ``edit.before``: if someone
    changed it since the plan was made, nothing is written (no lost update).
    """
    if check_before:
        current = read_bytes(edit.path)
        if current != edit.before:
            raise OperationFailed(
                edit.display,
                "changed by someone else since pcipass read it",
                "run the command again",
            )
    if edit.after is None:
        with contextlib.suppress(FileNotFoundError):
            edit.path.unlink()
        _fsync_dir(edit.path.parent)
        return
    atomic_write(edit.path, edit.after, edit.mode)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path``: temp file in the same directory, fsync, rename."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".pcipass-tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
