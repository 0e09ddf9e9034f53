"""The only module that touches files under ``sys/``.

Reads are forgiving (a missing attribute is ``None``: devices vanish, kernels
differ, non-root users cannot read everything).  Writes go through one seam,
:meth:`Sysfs.write_attr`, which hands them to a :class:`KernelWriter`: the
real one writes the control file; the tests' fake kernel acts on the write as
Linux would (moves driver links, honours driver_override...).  Every other
file operation in pcipass reads production code paths against the same tree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pcipass.errors import SysfsWriteError
from pcipass.host.root import HostRoot

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:
    # A protocol only documents a shape for the type checker: at run time a
    # plain base does, and importing typing cost every command ~2 ms (issue #13).
    Protocol = object


class KernelWriter(Protocol):
    """Performs one write to a sysfs control file."""

    def write(self, path: Path, value: str) -> None: ...


class RealKernelWriter:
    """Writes control files for real.  sysfs wants one write() per value.

    Under ``--root DIR`` the "control file" is a file of that tree: it is
    opened resolved inside the root (pcipass.host.confined), so a link
    planted there cannot turn the write into one outside it.
    """

    def __init__(self, root: HostRoot | None = None) -> None:
        self.root = root

    def write(self, path: Path, value: str) -> None:
        data = value.encode()
        if self.root is None or self.root.is_real:
            fd = os.open(path, os.O_WRONLY)
        else:
            fd = self.root.files.open_file(self.root.host_path(path), os.O_WRONLY, strict=True)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
        finally:
            os.close(fd)


class Sysfs:
    def __init__(self, root: HostRoot, writer: KernelWriter | None = None) -> None:
        self.root = root
        self.writer: KernelWriter = writer or RealKernelWriter(root)

    # ---- reads -----------------------------------------------------------
    @staticmethod
    def read_text(path: Path | str) -> str | None:
        """The attribute's text without the trailing newline, or None if unreadable.

        Raw os.open/os.read: sysfs attributes are at most a page, and a text
        file object costs twice as much per read (benchmarks/README.md).
        O_NONBLOCK: a FIFO planted in a --root tree reads as empty instead of
        hanging pcipass (kernfs and procfs files ignore the flag)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            data = os.read(fd, 8192)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data.decode("utf-8", "replace").rstrip("\n")

    @staticmethod
    def read_bytes(path: Path, limit: int = 4096) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # see read_text
        except OSError:
            return None
        try:
            chunks = []
            while limit > 0:
                chunk = os.read(fd, limit)
                if not chunk:
                    break
                chunks.append(chunk)
                limit -= len(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    @staticmethod
    def size(path: Path) -> int | None:
        """The size stat reports (a binary attribute's, e.g. ``rom``: the BAR's)."""
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    @classmethod
    def read_int(cls, path: Path | str, base: int = 10) -> int | None:
        text = cls.read_text(path)
        if text is None:
            return None
        try:
            return int(text.strip(), base)
        except ValueError:
            return None

    @staticmethod
    def link_name(path: Path | str) -> str | None:
        """Last component of a symlink's target (``driver`` -> ``e1000``)."""
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None

    @staticmethod
    def resolve(path: Path) -> Path | None:
        try:
            return path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None

    @staticmethod
    def follow_link(path: Path | str, *, check: bool = True) -> str | None:
        """Target of one symlink, made absolute without resolving every
        component (sysfs device links are single relative hops); None if the
        link is missing or (with ``check``) dangles."""
        try:
            target = os.readlink(path)
        except OSError:
            return None
        joined = os.path.normpath(os.path.join(os.path.dirname(path), target))
        return joined if not check or os.path.exists(joined) else None

    @staticmethod
    def list_dir(path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    @staticmethod
    def scan(path: Path | str) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                yield from entries
        except OSError:
            return

    @staticmethod
    def exists(path: Path) -> bool:
        return os.path.lexists(path)

    # ---- the one write seam ---------------------------------------------
    def write_attr(self, path: Path, value: str) -> None:
        """Write ``value`` to a sysfs control file, as one write.

        Errors become :class:`SysfsWriteError` carrying errno and the path as
        the host names it.
        """
        try:
            self.writer.write(path, value)
        except OSError as error:
            code = error.errno or errno.EIO
            raise SysfsWriteError(
                self.root.host_path(path), value.strip(), code, error.strerror or os.strerror(code)
            ) from error
