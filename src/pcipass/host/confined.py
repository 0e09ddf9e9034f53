"""Files under the root, resolved so that no link leads outside it.

pcipass runs as root and reads or rewrites files of a host tree that may be
hostile (``--root IMAGE`` of an untrusted guest image, or a writable
directory on the real host).  A symbolic link anywhere on the way
(``etc/modprobe.d -> /somewhere``, ``var/lib/pcipass/state.lock ->
/etc/shadow``) must not carry a read or a write out of the root.

Paths are resolved the way a chroot would see them: an absolute link target
starts again at the root, ``..`` never climbs above it.  Links that stay
inside the root are followed, so ``/etc/xen/auto/g2 -> ../g2`` still edits
``/etc/xen/g2``.  The kernel does this itself with ``openat2(2)`` and
``RESOLVE_IN_ROOT`` (Linux 5.6+); elsewhere a component-by-component walk
with ``O_NOFOLLOW`` directory descriptors does the same in user space.  Both
work on descriptors, never on strings checked after ``realpath`` (which
race with a rename of a component).

Everything here works on *host paths* (``/etc/modprobe.d/pcipass.conf``)
relative to one :class:`Confined` root.  Errors are :mod:`pcipass.errors`
exceptions with one-line messages naming the host path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from pcipass.errors import OperationFailed, PcipassError, RefusedError, UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

#: Largest configuration file pcipass reads (a guest configuration, a
#: modprobe file): bigger ones are refused rather than loaded into memory.
MAX_FILE_BYTES = 16 * 1024 * 1024

#: Like the kernel's MAXSYMLINKS: a loop of links ends here.
_MAX_LINKS = 40

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437  # the same number on every architecture but alpha (Linux 5.6)

# "auto": openat2 when the kernel has it; "walk": the user-space walk (tests
# force it to prove the fallback); "kernel": openat2 or fail.
_settings: dict[str, str] = {"resolution": os.environ.get("PCIPASS_RESOLVE", "auto")}
_probed: dict[str, bool] = {}


def set_resolution(mode: str) -> str:
    """Choose how paths are resolved ("auto", "walk" or "kernel"); returns the old mode."""
    if mode not in ("auto", "walk", "kernel"):
        raise ValueError(mode)
    old = _settings["resolution"]
    _settings["resolution"] = mode
    return old


_syscall: list[Any] = []  # (libc's syscall(2), struct open_how), loaded once


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    # ctypes is imported on the first call, not with this module: commands
    # that resolve no path under a root never pay for it (issue #13).
    import ctypes

    if not _syscall:

        class OpenHow(ctypes.Structure):  # struct open_how, linux/openat2.h
            _fields_ = [
                ("flags", ctypes.c_uint64),
                ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64),
            ]

        function = ctypes.CDLL(None, use_errno=True).syscall
        function.restype = ctypes.c_long
        _syscall.extend((function, OpenHow))
    call, open_how = _syscall
    how = open_how(flags, 0, resolve)
    fd = call(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def kernel_resolution_available() -> bool:
    """Does this kernel (and its seccomp filter) let us call openat2?"""
    if "openat2" not in _probed:
        works = False
        # os.uname() is what platform.machine() reads (platform costs ~2 ms to import).
        if not os.uname().machine.startswith("alpha"):
            try:
                os.close(_openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0))  # AT_FDCWD
                works = True
            except (OSError, AttributeError):
                pass
        _probed["openat2"] = works
    return _probed["openat2"]


def _use_kernel() -> bool:
    if _settings["resolution"] == "walk":
        return False
    if _settings["resolution"] == "kernel":
        return True
    return kernel_resolution_available()


def host_parts(absolute: str) -> list[str]:
    """Split a host path into components; refuse a ``..`` that would leave the root."""
    if not absolute.startswith("/") or "\0" in absolute:
        raise UsageError(absolute, "not an absolute path", "give the path as the host names it")
    parts: list[str] = []
    for part in absolute.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UsageError(
                    absolute, "the path leaves the root with '..'", "give a path inside the root"
                )
            parts.pop()
            continue
        parts.append(part)
    return parts


def root_of(path: Path, display: str) -> Path:
    """The root ``path`` was made from: ``path`` is the root joined with ``display``."""
    text = str(path)
    if display == "/" or not display.startswith("/"):
        raise ValueError(f"not a host path: {display!r}")
    if text == display:
        return Path("/")
    if text.endswith(display) and text[: -len(display)].startswith("/"):
        return Path(text[: -len(display)])
    raise ValueError(f"{text} is not {display} under a root")


def _display(parts: list[str]) -> str:
    return "/" + "/".join(parts)


class LinkOutOfRoot(RefusedError):
    """A link leads to nothing inside the root (its target is outside, or absent)."""

    def __init__(self, link: str, target: str, wanted: str) -> None:
        self.link = link
        self.target = target
        super().__init__(
            wanted,
            f"{link} is a symbolic link to {target}, which does not exist inside the root",
            "pcipass follows links only inside the root and never creates anything through "
            "one; fix or remove the link",
        )


def os_error(display: str, exc: OSError, action: str) -> PcipassError:
    """One-line error for a failed file operation on ``display``."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return OperationFailed(
            display,
            f"cannot {action}: {os.strerror(code or errno.EPERM).lower()}",
            "run as root; if you are root the file or its directory may be immutable "
            "(lsattr; chattr -i) or protected by a security module",
        )
    if code == errno.EROFS:
        return OperationFailed(
            display, f"cannot {action}: read-only file system", "remount it read-write, then retry"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OperationFailed(
            display,
            f"cannot {action}: no space left on the file system",
            "free some space there and run the command again; nothing was changed",
        )
    if code == errno.EISDIR:
        return OperationFailed(
            display, f"cannot {action}: a directory is where a file should be", "move it away"
        )
    if code == errno.ENOTDIR:
        return OperationFailed(
            display, f"cannot {action}: a file is where a directory should be", "move it away"
        )
    if code == errno.ELOOP:
        return OperationFailed(
            display, f"cannot {action}: too many levels of symbolic links", "fix the links"
        )
    reason = (exc.strerror or str(exc)).lower()
    return OperationFailed(display, f"cannot {action}: {reason}")


class Confined:
    """The files of one root, opened only through descriptors resolved inside it."""

    def __init__(self, prefix: Path | str) -> None:
        self.prefix = Path(prefix)

    # -- resolution ------------------------------------------------------------

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        fd = os.open(self.prefix, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_dir(
        self, rootfd: int, parts: list[str], wanted: str, create: bool, strict: bool = False
    ) -> int:
        """An O_PATH descriptor of the directory ``parts`` (link components allowed).

        ``strict``: a link to nothing inside the root is an error naming the
        link, not just "absent".
        """
        if _use_kernel() and not create:
            for _attempt in range(8):
                try:
                    return _openat2(
                        rootfd,
                        "/".join(parts) or ".",
                        os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                        _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS,
                    )
                except OSError as exc:
                    # EAGAIN: a rename raced with the lookup; the kernel asks to retry.
                    if exc.errno == errno.ENOENT and strict:
                        break  # the walk below says which link leads nowhere
                    if exc.errno != errno.EAGAIN:
                        raise
        return self._walk(rootfd, parts, wanted, create, strict)

    def _walk(
        self, rootfd: int, parts: list[str], wanted: str, create: bool, strict: bool = False
    ) -> int:
        """Resolve ``parts`` one component at a time, links read and followed by hand.

        Every step opens one name with O_NOFOLLOW relative to the directory
        descriptor of the step before, so a component swapped for a link
        after we looked cannot be followed behind our back.
        """
        stack: list[int] = []
        names: list[str] = []
        current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=rootfd)
        todo = list(parts)
        followed = 0
        last_link: tuple[str, str] | None = None
        try:
            while todo:
                name = todo.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    if stack:  # ".." at the root stays at the root, as in a chroot
                        os.close(current)
                        current = stack.pop()
                        names.pop()
                    continue
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
                except FileNotFoundError:
                    if last_link is not None and (create or strict):
                        raise LinkOutOfRoot(last_link[0], last_link[1], wanted) from None
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=current)
                    todo.insert(0, name)
                    continue
                try:
                    info = os.fstat(fd)
                except OSError:
                    os.close(fd)
                    raise
                if stat.S_ISLNK(info.st_mode):
                    os.close(fd)
                    followed += 1
                    if followed > _MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), wanted)
                    target = os.readlink(name, dir_fd=current)
                    last_link = (_display([*names, name]), target)
                    if target.startswith("/"):
                        # Start again at the root: open it first, so `current`
                        # always names one open descriptor for the cleanup.
                        fresh = os.open(
                            ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=rootfd
                        )
                        for fd_ in [*stack, current]:
                            os.close(fd_)
                        stack.clear()
                        names.clear()
                        current = fresh
                    todo[:0] = target.split("/")
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), wanted)
                stack.append(current)
                names.append(name)
                current = fd
            return current
        except BaseException:
            os.close(current)
            raise
        finally:
            for fd_ in stack:
                os.close(fd_)

    @contextlib.contextmanager
    def locate(
        self, absolute: str, *, create_dirs: bool = False, strict: bool = False
    ) -> Iterator[tuple[int, str]]:
        """(directory descriptor, name) of the file ``absolute`` really is.

        A final component that is a link is followed (inside the root), so a
        write edits the link's target and the link stays a link.  ``name`` is
        "." when ``absolute`` resolves to a directory given as such (the root,
        or a path ending in ``..``).  With ``create_dirs`` missing directories
        are made, but never through a link: a link to nothing is refused,
        naming the link (also without ``create_dirs`` when ``strict``).
        """
        parts = host_parts(absolute)
        named = create_dirs or strict
        link: tuple[str, str] | None = None
        with self._root_fd() as rootfd:
            for _hop in range(_MAX_LINKS):
                as_dir = not parts or parts[-1] == ".."
                parent = parts if as_dir else parts[:-1]
                try:
                    dirfd = self._open_dir(
                        rootfd, parent, absolute, create_dirs and link is None, strict
                    )
                except FileNotFoundError:
                    if named and link is not None:
                        raise LinkOutOfRoot(link[0], link[1], absolute) from None
                    raise
                try:
                    if as_dir:
                        yield dirfd, "."
                        return
                    name = parts[-1]
                    try:
                        info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    except FileNotFoundError:
                        if named and link is not None:
                            raise LinkOutOfRoot(link[0], link[1], absolute) from None
                        info = None
                    if info is not None and stat.S_ISLNK(info.st_mode):
                        target = os.readlink(name, dir_fd=dirfd)
                        link = (_display(parts), target)
                        base = [] if target.startswith("/") else parts[:-1]
                        parts = [*base, *(p for p in target.split("/") if p not in ("", "."))]
                        continue
                    yield dirfd, name
                    return
                finally:
                    os.close(dirfd)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), absolute)

    def real_dir(self, absolute: str, *, create: bool = False) -> Path | None:
        """Where the directory ``absolute`` really is, resolved inside the root.

        For a consumer that needs a path string (SQLite): resolve once with
        descriptors, then name the result by what the kernel says the
        descriptor is.  None when it does not exist (and ``create`` is False).
        """
        try:
            with self._root_fd() as rootfd:
                fd = self._open_dir(rootfd, host_parts(absolute), absolute, create)
                try:
                    return Path(os.readlink(f"/proc/self/fd/{fd}"))
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error(absolute, exc, "open the directory") from exc

    def open_file(
        self, absolute: str, flags: int, mode: int = 0o600, *, strict: bool = False
    ) -> int:
        """os.open of ``absolute`` resolved inside the root.

        With O_CREAT missing directories are made (never through a link).
        """
        create = bool(flags & os.O_CREAT)
        try:
            with self.locate(absolute, create_dirs=create, strict=strict) as (dirfd, name):
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
        except PcipassError:
            raise
        except OSError as exc:
            raise os_error(absolute, exc, "open it") from exc

    def open_socket(self, absolute: str) -> int:
        """An O_PATH descriptor of the unix socket ``absolute`` inside the root.

        connect(2) has no O_NOFOLLOW: handed a path it follows a link in any
        component, out of the root too.  So the socket is resolved here like
        every file (links followed only inside the root; one that leads
        nowhere inside it is refused, naming the link), its inode opened with
        O_PATH|O_NOFOLLOW and checked to be a socket, and the caller connects
        to ``/proc/self/fd/N``, which names exactly that inode: a component
        swapped for a link after this check changes nothing.  OSErrors (no
        such socket, not a socket) are left to the caller, which knows what
        a missing socket means.
        """
        with self.locate(absolute, strict=True) as (dirfd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK), absolute)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- reading ---------------------------------------------------------------

    def stat(self, absolute: str) -> os.stat_result | None:
        """stat of what ``absolute`` is inside the root, links followed; None if absent."""
        try:
            with self.locate(absolute) as (dirfd, name):
                return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error(absolute, exc, "look at it") from exc

    def is_file(self, absolute: str) -> bool:
        info = self.stat(absolute)
        return info is not None and stat.S_ISREG(info.st_mode)

    def is_dir(self, absolute: str) -> bool:
        info = self.stat(absolute)
        return info is not None and stat.S_ISDIR(info.st_mode)

    def is_link(self, absolute: str) -> bool:
        """Is the last component of ``absolute`` a symbolic link (followed or not)?"""
        parts = host_parts(absolute)
        if not parts:
            return False
        try:
            with self.locate(_display(parts[:-1])) as (dirfd, name):
                fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
                try:
                    info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise os_error(absolute, exc, "look at it") from exc
        return stat.S_ISLNK(info.st_mode)

    def exists(self, absolute: str) -> bool:
        return self.stat(absolute) is not None

    def read_links(self, absolute: str) -> dict[str, str]:
        """name -> target text of every symbolic link in the directory ``absolute``
        (links not followed; the directory itself resolved inside the root), {}
        when it cannot be listed.  For ``/proc/PID/fd``, whose links name each
        open file as the host sees it; another user's process is simply skipped."""
        found: dict[str, str] = {}
        try:
            with self.locate(absolute) as (dirfd, name):
                fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd
                )
                try:
                    for entry in sorted(os.listdir(fd)):
                        try:
                            found[entry] = os.readlink(entry, dir_fd=fd)
                        except OSError:
                            continue  # not a link, or gone meanwhile
                finally:
                    os.close(fd)
        except (OSError, PcipassError):
            return {}
        return found

    def list_dir(self, absolute: str) -> list[str]:
        """Sorted names in the directory ``absolute``; [] when it does not exist."""
        entries = self._entries(absolute)
        return sorted(name for name, _kind in entries)

    def list_files(self, absolute: str) -> list[str]:
        """Sorted names of the regular files in the directory ``absolute`` (a
        link counts when it leads to one inside the root); [] when it does not
        exist.  One listing with the entries' types instead of a resolution
        per name: /etc/xen can hold hundreds of guests (issue #13)."""
        entries = self._entries(absolute)
        plain = [name for name, kind in entries if kind == "file"]
        plain += [
            name
            for name, kind in entries
            if kind == "link" and self.is_file(f"{absolute.rstrip('/')}/{name}")
        ]
        return sorted(plain)

    def _entries(self, absolute: str) -> list[tuple[str, str]]:
        """The directory's entries as (name, "file" | "link" | "other"), from
        one listing of the directory opened inside the root; [] when absent."""
        found: list[tuple[str, str]] = []
        try:
            with self.locate(absolute) as (dirfd, name):
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=dirfd,
                )
                try:
                    with os.scandir(fd) as listing:
                        for entry in listing:
                            if entry.is_symlink():
                                kind = "link"
                            elif entry.is_file(follow_symlinks=False):
                                kind = "file"
                            else:
                                kind = "other"
                            found.append((entry.name, kind))
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise os_error(absolute, exc, "list the directory") from exc
        return found

    def read_bytes(
        self,
        absolute: str,
        limit: int = MAX_FILE_BYTES,
        *,
        strict: bool = False,
        inspect: Callable[[os.stat_result], None] | None = None,
    ) -> bytes | None:
        """The content of the regular file ``absolute``, None when it does not exist.

        Opened with O_NONBLOCK and checked with fstat before reading, so a FIFO
        or a device node given as a configuration cannot hang or feed pcipass.
        ``strict``: a link on the way that leads nowhere inside the root is
        refused naming it (for a file the user named), not read as absent.
        ``inspect``: called with the opened file's fstat before anything is
        read, to refuse it in the caller's own words (one resolution, no race
        between a separate stat and the read).
        """
        try:
            with self.locate(absolute, strict=strict) as (dirfd, name):
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=dirfd,
                )
                try:
                    if inspect is not None:
                        inspect(os.fstat(fd))
                    return read_regular(fd, absolute, limit)
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error(absolute, exc, "read it") from exc


def read_regular(fd: int, display: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read an open file that must be a regular file of at most ``limit`` bytes."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise OperationFailed(
            display, "a directory is where a file should be", "give a file, or move it away"
        )
    if not stat.S_ISREG(info.st_mode):
        raise OperationFailed(
            display,
            "not a regular file (a FIFO, socket or device node?)",
            "pcipass reads and writes only regular files",
        )
    if info.st_size > limit:
        raise OperationFailed(
            display,
            f"the file is larger than {limit // (1024 * 1024)} MiB",
            "this is not a configuration file pcipass should read",
        )
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise OperationFailed(display, "the file grew past the size limit while being read")
        chunks.append(chunk)
    return b"".join(chunks)
