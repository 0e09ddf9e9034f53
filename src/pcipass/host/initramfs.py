"""What an initramfs holds: its kernel modules and its modprobe configuration.

An initramfs is one or more cpio "newc" archives (070701 headers,
Documentation/driver-api/early-userspace/buffer-format.rst) one after the
other, each possibly compressed: Debian and Fedora put an uncompressed early
microcode archive first, then the compressed main one.  The distribution's
own lister is used when the host has one (``lsinitramfs`` from
initramfs-tools, ``lsinitrd`` from dracut: they know every compressor); else
the archives are read here with the standard library (plain, gzip, xz,
bzip2).  zstd and lz4 have no standard-library decoder: the image is then
"cannot read", with the reason.  The modprobe files are read here either way
(the listers print names, not contents).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Iterator
from typing import IO, Protocol, cast

from pcipass.host.root import HostRoot
from pcipass.record import dataclass, field
from pcipass.runner import CommandRunner

NEWC = b"070701"
NEWC_CRC = b"070702"
HEADER = 110
TRAILER = "TRAILER!!!"
# Never inflate more than this (a hostile image must not fill memory or take all day).
MAX_UNPACKED = 1 << 30
# Only these files' contents are kept; every other member is skipped.
CONFIG_PREFIXES = ("etc/modprobe.d/", "lib/modprobe.d/", "usr/lib/modprobe.d/", "run/modprobe.d/")
CONFIG_FILES = ("etc/modprobe.conf",)
MAX_CONFIG = 1 << 20

_MAGICS: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x02\x21\x4c\x18", "lz4 (legacy)"),
    (b"\x89LZO", "lzo"),
]
DECODED = ("gzip", "xz", "lzma", "bzip2")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _decoder(kind: str, stream: _Prefixed) -> Readable:
    """The standard library's decoder for one compressed archive (kinds in DECODED)."""
    # _Prefixed is a RawIOBase: a binary stream, which typeshed's IO[bytes] does not spell.
    buffered = io.BufferedReader(cast(IO[bytes], stream))  # type: ignore[type-var]
    if kind == "gzip":
        return gzip.GzipFile(fileobj=buffered)
    if kind == "bzip2":
        return bz2.BZ2File(buffered)
    return lzma.LZMAFile(buffered, format=lzma.FORMAT_ALONE if kind == "lzma" else lzma.FORMAT_XZ)


class CannotRead(Exception):
    """The image (or one of its archives) is in a form this reader does not decode."""


@dataclass
class Contents:
    """The names in an image and the modprobe files' bytes (keyed ``/etc/...``)."""

    names: list[str] = field(default_factory=list)
    config: dict[str, bytes] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)


def _kind(head: bytes) -> str | None:
    if head.startswith((NEWC, NEWC_CRC)):
        return "cpio"
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


def _exact(stream: Readable, size: int, budget: list[int]) -> bytes:
    data = stream.read(size)
    budget[0] -= len(data)
    if budget[0] < 0:
        raise CannotRead(f"unpacks to more than {MAX_UNPACKED >> 20} MiB")
    if len(data) != size:
        raise CannotRead("truncated cpio archive")
    return data


def _skip(stream: Readable, size: int, budget: list[int]) -> None:
    while size > 0:
        chunk = _exact(stream, min(size, 1 << 20), budget)
        size -= len(chunk)


def _members(stream: Readable, budget: list[int]) -> Iterator[tuple[str, int, bytes | None]]:
    """(name, mode, data or None when skipped) of one newc archive, up to its trailer."""
    while True:
        header = _exact(stream, HEADER, budget)
        if not header.startswith((NEWC, NEWC_CRC)):
            raise CannotRead("not a cpio newc header")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as error:
            raise CannotRead("bad cpio header") from error
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_bytes = _exact(stream, namesize, budget)
        _skip(stream, (-(HEADER + namesize)) % 4, budget)  # header+name pad to 4
        name = name_bytes.rstrip(b"\0").decode("utf-8", "replace")
        if name == TRAILER:
            return
        name = name[2:] if name.startswith("./") else name.lstrip("/")
        keep = name in CONFIG_FILES or (name.startswith(CONFIG_PREFIXES) and name.endswith(".conf"))
        data: bytes | None = None
        if keep and filesize <= MAX_CONFIG:
            data = _exact(stream, filesize, budget)
        else:
            _skip(stream, filesize, budget)
        _skip(stream, (-filesize) % 4, budget)
        yield name, mode, data


def read_archives(stream: Readable, budget: list[int] | None = None) -> Contents:
    """Every archive of an image, compressed or not, in order."""
    budget = budget if budget is not None else [MAX_UNPACKED]
    contents = Contents()
    while True:
        # Archives are padded (often to 512 bytes) with NULs between them.
        head = b""
        while len(head) < 6:
            more = stream.read(6 - len(head))
            if not more:
                break
            head = (head + more).lstrip(b"\0")
        if not head:
            return contents
        kind = _kind(head)
        rest = _Prefixed(head, stream)
        if kind == "cpio":
            contents.formats.append("cpio")
            for name, _mode, data in _members(rest, budget):
                contents.names.append(name)
                if data is not None:
                    contents.config["/" + name] = data
            continue
        if kind in DECODED:
            contents.formats.append(kind)
            try:
                inner = read_archives(_decoder(kind, rest), budget)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
                raise CannotRead(f"{kind} data is corrupt: {error}") from error
            contents.names += inner.names
            contents.config.update(inner.config)
            contents.formats += inner.formats
            return contents  # a compressed archive runs to the end of the image
        if kind is not None:
            raise CannotRead(
                f"{kind}-compressed, which Python's standard library cannot decode "
                "(install lsinitramfs or lsinitrd, or the distribution's tool)"
            )
        raise CannotRead(f"unknown format (starts with {head.hex()})")


class _Prefixed(io.RawIOBase):
    """A stream with a few already-read bytes put back in front."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._stream.read(size - len(data))
            return data
        return self._stream.read(size)

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def module_names(names: list[str]) -> frozenset[str]:
    """Module keys of the ``*.ko*`` files under lib/modules of an image."""
    found = set()
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if "lib/modules/" not in "/" + name:
            continue
        for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
            if base.endswith(suffix):
                found.add(base[: -len(suffix)].replace("-", "_"))
    return frozenset(found)


def initramfs_candidates(release: str) -> list[str]:
    """Where distributions put the image of a kernel (Debian, Fedora/RHEL, RHEL 5, SUSE)."""
    return [
        f"/boot/initrd.img-{release}",
        f"/boot/initramfs-{release}.img",
        f"/boot/initrd-{release}.img",
        f"/boot/initrd-{release}",
    ]


@dataclass
class Listing:
    path: str
    how: str
    contents: Contents | None
    note: str = ""


def _open_in_root(root: HostRoot, path: str) -> IO[bytes]:
    fd = root.files.open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def _tool_names(runner: CommandRunner, root: HostRoot, path: str) -> tuple[str, list[str]] | None:
    """The names in the image from the distribution's lister, when the host has one
    and the image is this running system's (an image under --root is read here)."""
    if not root.is_real:
        return None
    for tool in ("lsinitramfs", "lsinitrd"):
        if runner.which(tool) is None:
            continue
        result = runner.run([tool, path], timeout=300.0)
        if result.returncode == 0:
            return tool, [
                ln.strip().lstrip("./") for ln in result.stdout.splitlines() if ln.strip()
            ]
    return None


def list_initramfs(root: HostRoot, runner: CommandRunner, path: str) -> Listing:
    """The image's names (the distribution's lister when present) and its modprobe files."""
    listed = _tool_names(runner, root, path)
    own: Contents | None = None
    problem = ""
    try:
        with _open_in_root(root, path) as stream:
            own = read_archives(stream)
    except CannotRead as error:
        problem = str(error)
    except OSError as error:
        problem = f"cannot open it: {error.strerror or error}"
    if listed is not None:
        tool, names = listed
        contents = Contents(names, own.config if own is not None else {}, [tool])
        note = (
            f"its modprobe files were not read ({problem}): /etc's are assumed"
            if own is None
            else ""
        )
        return Listing(path, tool, contents, note)
    if own is None:
        return Listing(path, "read here", None, f"cannot read {path}: {problem}")
    return Listing(path, "read as " + " + ".join(dict.fromkeys(own.formats)), own)
