"""Vendor, device and class names from the system's ``pci.ids``.

The file is large (~1.3 MB) and pcipass needs a handful of names, so it is
never parsed whole: the bytes are searched for each vendor's line, then for
the device's line inside that vendor's block, and only the lines found are
decoded.  No order is assumed (subsets written by tests are not sorted).
A missing or corrupt file only costs names (callers show the numeric ids,
as ``lspci -n`` does).

Under ``--root DIR`` the tree's own pci.ids is used; a tree without one (a
bare image, a copy of /sys) gets the running system's names instead, with a
note saying so: the ids are the PCI-SIG's and do not depend on the host, so
names from this machine are right, only possibly older or newer.

Format (pci.ids header): ``vendor  vendor_name``, then ``\\tdevice  device_name``,
then ``\\t\\tsubvendor subdevice  subsystem_name``; classes follow ``C class``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pcipass.errors import OperationFailed
from pcipass.host.confined import read_regular
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.host.root import HostRoot

# Where distributions install pci.ids (Debian: package pci.ids; RHEL: hwdata).
SYSTEM_PCI_IDS: tuple[Path, ...] = (
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/hwdata/pci.ids"),
    Path("/usr/share/pci.ids"),
)


@dataclass
class PciIds:
    data: bytes | None  # the file as read; names are decoded one line at a time
    source: str | None
    problem: str | None = None
    note: str | None = None  # said once by the caller: where the names came from
    _vendors: dict[int, tuple[str | None, int, int]] = field(default_factory=dict)
    _devices: dict[tuple[int, int], str | None] = field(default_factory=dict)
    _classes: dict[int, str] | None = None

    @classmethod
    def load(cls, candidates: list[Path]) -> PciIds:
        for path in candidates:
            try:
                # Non-blocking and checked to be a regular file: a FIFO in a
                # --root tree cannot hang pcipass.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as error:
                return cls(None, str(path), f"cannot read {path}: {error.strerror}")
            try:
                data = read_regular(fd, str(path), 64 * 1024 * 1024)
            except OperationFailed as error:
                return cls(None, str(path), f"cannot read {path}: {error.problem}")
            except OSError as error:
                return cls(None, str(path), f"cannot read {path}: {error.strerror}")
            finally:
                os.close(fd)
            if not _looks_like_lines(data):
                return cls(None, str(path), f"{path} does not look like pci.ids")
            return cls(data, str(path))
        return cls(None, None, "no pci.ids found (install package pci.ids or hwdata)")

    @classmethod
    def for_root(cls, root: HostRoot, system: Sequence[Path] | None = None) -> PciIds:
        """The names for ``root``: its own pci.ids, else (a tree that has none)
        the running system's.  A file that exists under the root but cannot be
        read is reported, not replaced: that root is broken, not bare."""
        ids = cls.load(root.pci_ids_candidates)
        if ids.data is not None or ids.source is not None or root.is_real:
            return ids
        fallback = cls.load(list(SYSTEM_PCI_IDS if system is None else system))
        if fallback.data is None:
            return ids
        fallback.note = (
            f"no pci.ids under {root.prefix}; device names come from this machine's "
            f"{fallback.source}"
        )
        return fallback

    def vendor(self, vendor: int) -> str | None:
        return self._vendor_block(vendor)[0]

    def device(self, vendor: int, device: int) -> str | None:
        """The name on the device's line of the vendor's block: found by a byte
        search bounded to the block, never a walk over its lines (Intel's block
        is ~10k lines, and that walk was a fifth of ``list``'s time, issue #13)."""
        key = (vendor, device)
        if key in self._devices:
            return self._devices[key]
        name: str | None = None
        _, start, end = self._vendor_block(vendor)
        data = self.data
        if data is not None and start < end:
            at = data.find(b"\n\t%04x" % device, start, end)
            if at >= 0:
                name = _name_at(data, at + 1, 5)
        self._devices[key] = name
        return name

    def _vendor_block(self, vendor: int) -> tuple[str | None, int, int]:
        """The vendor's name and its block's bytes [start, end): from the end of
        the vendor line to the newline before the next line that is neither a
        device/subsystem line (tab), a comment nor empty."""
        cached = self._vendors.get(vendor)
        if cached is not None:
            return cached
        result: tuple[str | None, int, int] = (None, 0, 0)
        data = self.data
        if data is not None:
            start = _bisect_vendor(data, vendor)
            if start < 0:  # not sorted there, or absent: the plain search decides
                start = data.find(b"\n%04x  " % vendor)
            if start >= 0:
                line_end = data.find(b"\n", start + 1)
                line_end = len(data) if line_end < 0 else line_end
                name = _name_at(data, start + 1, 6) or None
                following = _NEXT_TOP_LINE.search(data, line_end)
                result = (name, line_end, following.start() if following else len(data))
        self._vendors[vendor] = result
        return result

    def class_name(self, class_code: int) -> str | None:
        """Most specific name for a 24-bit class code (prog-if, subclass, class)."""
        classes = self._class_table()
        base, sub, _prog = class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF
        return classes.get((base << 8) | sub) or classes.get(base << 8 | 0x10000)

    def _class_table(self) -> dict[int, str]:
        if self._classes is not None:
            return self._classes
        table: dict[int, str] = {}
        data = self.data
        start = data.find(b"\nC ") if data is not None else -1
        if data is not None and start >= 0:
            base: int | None = None
            for line in data[start + 1 :].decode("utf-8", "replace").splitlines():
                if line.startswith("C "):
                    try:
                        base = int(line[2:4], 16)
                    except ValueError:
                        base = None
                        continue
                    table[base << 8 | 0x10000] = line[4:].strip()
                elif line.startswith("\t\t") or not line.startswith("\t"):
                    continue
                elif base is not None:
                    try:
                        sub = int(line[1:3], 16)
                    except ValueError:
                        continue
                    table[(base << 8) | sub] = line[3:].strip()
        self._classes = table
        return table


# A line that ends a vendor's block: not empty, not a comment, not indented.
# A lookahead: the character-class form is ~6x slower in CPython's re.
_NEXT_TOP_LINE = re.compile(rb"\n(?=[^\t#\n])")


# The newline before a vendor line ("8086  Intel Corporation").
_VENDOR_LINE = re.compile(rb"\n(?=[0-9a-f]{4}  )")


def _bisect_vendor(data: bytes, vendor: int) -> int:
    """Where the vendor's line starts (its preceding newline), by bisection over
    the file's byte range: pci.ids lists vendors in ascending order, so ~20
    short searches replace a scan of up to 1.3 MB.  -1 when bisection does not
    find it (absent, or a file that is not sorted): the caller then searches."""
    lo, hi = 0, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        found = _VENDOR_LINE.search(data, mid)
        if found is None or found.start() >= hi:
            hi = mid  # no vendor line in [mid, hi)
            continue
        at = found.start()
        seen = int(data[at + 1 : at + 5], 16)
        if seen == vendor:
            return at
        if seen < vendor:
            lo = at + 1
        else:
            hi = mid
    return -1


def _name_at(data: bytes, line_start: int, skip: int) -> str:
    """The text of the line at ``line_start`` after its first ``skip`` characters."""
    line_end = data.find(b"\n", line_start)
    line = data[line_start : len(data) if line_end < 0 else line_end]
    return line.decode("utf-8", "replace")[skip:].strip()


def _looks_like_lines(data: bytes) -> bool:
    """A text file of lines: a newline within its first 4096 characters, or no
    more than 4096 characters at all (a binary file read by mistake is not)."""
    head = data[: 4 * 4096].decode("utf-8", "replace")[:4096]  # UTF-8: <= 4 bytes a character
    if "\n" in head or len(data) <= 4096:
        return True
    return len(data.decode("utf-8", "replace")) <= 4096
