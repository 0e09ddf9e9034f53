"""Vendor, device and class names from the system's ``pci.ids``.

The file is large (~1.3 MB) and pcipass needs a handful of names, so it is
never parsed whole (issue #13).  pci.ids lists vendors in ascending order, so
a vendor's line is found by bisection with probes that each read at most
1 KiB; its devices are sorted too and found by bisection inside its block;
the class section closes the file and is found from the end.  Only the
lines found are decoded.

Order is never trusted for the answer: a line is used only when its id is
the one asked, and whenever the sorted-order search does not find an id, a
plain search of the bytes decides, exactly as before (subsets written by
tests are not sorted; hand-edited files may not be).  The cost of that
choice: an id that is really absent costs one plain search.  An id listed
twice (never in pci.ids itself) may answer with either line where the order
is broken, as the bisection before could.
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
import stat
from collections.abc import Iterator, Sequence
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

_SIZE_LIMIT = 64 * 1024 * 1024


@dataclass
class PciIds:
    data: bytes | None  # the file as read; names are decoded one line at a time
    source: str | None
    problem: str | None = None
    note: str | None = None  # said once by the caller: where the names came from
    _vendors: dict[int, tuple[str | None, int]] = field(default_factory=dict)
    _block_ends: dict[int, int] = field(default_factory=dict)
    _devices: dict[tuple[int, int], str | None] = field(default_factory=dict)
    _classes: dict[int, str] | None = None  # from the class section found from the end
    _classes_complete: bool = False  # that section provably holds every class line
    _all_classes: dict[int, str] | None = None  # from the first class line, when needed

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
                data = _read_whole(fd, str(path), _SIZE_LIMIT)
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
        return self._vendor_line(vendor)[0]

    def device(self, vendor: int, device: int) -> str | None:
        """The name on the first line of the vendor's block for that device id:
        by bisection over the block's device lines (sorted in pci.ids), by a
        byte search bounded to the block when bisection does not find it."""
        key = (vendor, device)
        if key in self._devices:
            return self._devices[key]
        name: str | None = None
        data = self.data
        start = self._vendor_line(vendor)[1]
        if data is not None and start >= 0:
            end = self._block_end(data, vendor, start)
            at = _bisect_device(data, device, start, end)
            if at < 0:  # not sorted there, or absent: the plain search decides
                at = data.find(b"\n\t%04x" % device, start, end)
            if at >= 0:
                name = _name_at(data, at + 1, 5)
        self._devices[key] = name
        return name

    def _vendor_line(self, vendor: int) -> tuple[str | None, int]:
        """The vendor's name and where its line ends (the newline that starts
        its block), or ``(None, -1)`` when the file does not list it."""
        cached = self._vendors.get(vendor)
        if cached is not None:
            return cached
        result: tuple[str | None, int] = (None, -1)
        data = self.data
        if data is not None:
            at = _VendorSearch(data, vendor).run()
            if at < 0:  # not sorted there, or absent: the plain search decides
                at = data.find(b"\n%04x  " % vendor)
            if at >= 0:
                line_end = data.find(b"\n", at + 1)
                line_end = len(data) if line_end < 0 else line_end
                result = (_name_at(data, at + 1, 6) or None, line_end)
        self._vendors[vendor] = result
        return result

    def _block_end(self, data: bytes, vendor: int, start: int) -> int:
        """Where the block starting at ``start`` ends: the newline before the
        next line that is neither a device/subsystem line (tab), a comment nor
        empty.  Found by one search, only when a device of the vendor is asked
        (it reads the whole block: ~370 KB for Intel)."""
        end = self._block_ends.get(vendor)
        if end is None:
            following = _NEXT_TOP_LINE.search(data, start)
            end = following.start() if following else len(data)
            self._block_ends[vendor] = end
        return end

    def class_name(self, class_code: int) -> str | None:
        """Most specific name for a 24-bit class code (prog-if, subclass, class)."""
        base, sub, _prog = class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF
        return self._class_entry((base << 8) | sub) or self._class_entry(base << 8 | 0x10000)

    def _class_entry(self, key: int) -> str | None:
        """The class table's entry for ``key``, as a walk from the file's first
        class line gives it.  The walk starts at the class section found from
        the end of the file: from any class line on, the walk sets every entry
        it reaches to what the whole walk would (each ``C`` line resets the
        context and the last line for a key wins), so only keys it never
        reaches need the walk from the first class line."""
        data = self.data
        if data is None:
            return None
        if self._classes is None:
            start, self._classes_complete = _last_class_section(data)
            self._classes = _walk_classes(data, start)
        if key in self._classes or self._classes_complete:
            return self._classes.get(key)
        if self._all_classes is None:
            first = _CLASS_LINE.search(data)  # a regex: ~2x faster than bytes.find here
            self._all_classes = _walk_classes(data, first.start() if first else -1)
        return self._all_classes.get(key)


# A line that ends a vendor's block: not empty, not a comment, not indented.
# A lookahead: the character-class form is ~6x slower in CPython's re.
_NEXT_TOP_LINE = re.compile(rb"\n(?=[^\t#\n])")

# The newline before a vendor line ("8086  Intel Corporation").
_VENDOR_LINE = re.compile(rb"\n(?=[0-9a-f]{4}  )")
_VENDOR_LOOKAHEAD = 6  # bytes the vendor pattern reads after its newline

# The newline before a device line ("\t10d3  82574L Gigabit Network Connection"),
# as the plain search b"\n\t%04x" sees one: anything may follow the four digits.
_DEVICE_LINE = re.compile(rb"\n(?=\t[0-9a-f]{4})")
_DEVICE_LOOKAHEAD = 5

# The newline before a class line ("C 02  Network controller").
_CLASS_LINE = re.compile(rb"\nC ")

# Bytes a vendor probe reads: 94% of pci.ids's vendor blocks are shorter.
_WINDOW = 1024
# Past this many bytes read, a vendor search stops and the plain search decides.
# No vendor of the 2023 pci.ids needs more than ~130 KB (tests/test_pciids_lookup.py).
_SEARCH_BUDGET = 192 * 1024


class _OverBudget(Exception):
    """A vendor search read its budget without deciding: the plain search will."""


class _VendorSearch:
    """Bisection for a vendor's line, assuming vendors in ascending order.

    Each probe reads one short window and narrows the range [lo, hi) by the
    first vendor line in it.  A window inside a long block (Intel's is ~370 KB)
    holds no vendor line and says nothing, so a round tries windows halfway
    towards each end of the range, where the next lines must be; if all are
    empty, windows read inward from both ends (doubling), where every empty
    window moves an end.  Reading to the next vendor line from a probe instead
    would cost the rest of a long block per probe.

    ``run`` gives where the line starts (its preceding newline), or -1 when
    the search does not find it (absent, or not sorted there)."""

    def __init__(self, data: bytes, vendor: int) -> None:
        self.data = data
        self.vendor = vendor
        self.lo, self.hi = 0, len(data)
        self.scanned = 0  # bytes handed to the regex: bounded by _SEARCH_BUDGET

    def run(self) -> int:
        try:
            while self.lo < self.hi:
                if self.hi - self.lo <= _WINDOW:
                    found = self._take(self._lines(self.lo, self.hi), self.lo)
                    return -1 if found is None else found
                had_lines, found = self._sparse_round()
                if found is None and not had_lines:
                    found = self._from_ends()
                if found is not None:
                    return found
        except _OverBudget:
            pass
        return -1

    def _allow(self, count: int) -> None:
        """Refuse a read that would take the search past its budget."""
        if self.scanned + count > _SEARCH_BUDGET:
            raise _OverBudget

    def _lines(self, start: int, end: int) -> list[int]:
        """Where the vendor lines beginning in [start, end) start."""
        self._allow(end - start)
        self.scanned += end - start
        stop = min(end + _VENDOR_LOOKAHEAD, len(self.data))
        return [found.start() for found in _VENDOR_LINE.finditer(self.data, start, stop)]

    def _id_at(self, at: int) -> int:
        return int(self.data[at + 1 : at + 5], 16)

    def _take(self, lines: list[int], start: int) -> int | None:
        """Narrow the range by ``lines``, the vendor lines found from ``start``
        on; the target's own line when it is among them."""
        for at in lines:
            seen = self._id_at(at)
            if seen == self.vendor:
                return at
            if seen > self.vendor:
                # The target comes before this line: before ``start``, or after a
                # smaller id seen since ``start``, nowhere (the range empties).
                self.hi = start
                return None
            self.lo = at + 1
        return None

    def _probe_points(self) -> Iterator[int]:
        """The middle, then points halfway towards each end in turn, down to a
        window or two from the ends (the reads from the ends cover those)."""
        lo, hi = self.lo, self.hi
        left = right = (lo + hi) // 2
        yield left
        while True:
            moved = False
            if left - lo > 2 * _WINDOW:
                left = (lo + left) // 2
                moved = True
                yield left
            if hi - right > 3 * _WINDOW:
                right = (right + hi) // 2
                moved = True
                yield right
            if not moved:
                return

    def _sparse_round(self) -> tuple[bool, int | None]:
        """Whether some probe window held a vendor line, and the target's line
        if that was it."""
        for start in self._probe_points():
            end = min(start + _WINDOW, self.hi)
            self._allow(end - start)
            line = _VENDOR_LINE.search(self.data, start, end + _VENDOR_LOOKAHEAD)
            if line is not None:
                self.scanned += line.start() - start
                return True, self._take([line.start()], start)
            self.scanned += end - start
        return False, None

    def _from_ends(self) -> int | None:
        """Read inward from both ends of the range, doubling the window, until
        a vendor line shows; None when the range narrowed (search on)."""
        width = _WINDOW
        while self.lo < self.hi:
            end = min(self.hi, self.lo + width)
            lines = self._lines(self.lo, end)
            if lines:
                return self._take(lines, self.lo)
            self.lo = end
            start = max(self.lo, self.hi - width)
            lines = self._lines(start, self.hi)
            if lines:
                return self._take_from_right(lines, start)
            self.hi = start
            width *= 2
        return -1

    def _take_from_right(self, lines: list[int], start: int) -> int | None:
        """Narrow the range by the last vendor lines before ``hi`` (found from
        ``start``), walking back from the last one."""
        for at in reversed(lines):
            seen = self._id_at(at)
            if seen == self.vendor:
                return at
            if seen < self.vendor:
                return -1  # it would follow this line, and no vendor line does
            self.hi = at
        self.hi = start  # no vendor line between ``start`` and the first one seen
        return None


def _bisect_device(data: bytes, device: int, start: int, end: int) -> int:
    """Where the first line for ``device`` in the block [start, end) starts,
    by bisection over the block's device lines (ascending in pci.ids); -1 when
    bisection does not find it.  Each probe reads to the next device line:
    short, as device lines are dense (subsystem lines are all between them)."""
    lo, hi, found = start, end, -1
    while lo < hi:
        mid = (lo + hi) // 2
        line = _DEVICE_LINE.search(data, mid, min(hi + _DEVICE_LOOKAHEAD, len(data)))
        if line is None:
            hi = mid  # no device line in [mid, hi)
            continue
        at = line.start()
        seen = int(data[at + 2 : at + 6], 16)
        if seen < device:
            lo = at + 1
            continue
        if seen == device:
            found = at  # an earlier one may still come: keep halving below
        hi = mid
    return found


# How far back from one class line the previous one is looked for; the class
# lines of pci.ids are at most ~1 KB apart, its last vendor block ends further.
_CLASS_GAP = 16 * 1024
_CLASS_LINES_MAX = 4096  # a hostile file with a million class lines: stop there


def _last_class_section(data: bytes) -> tuple[int, bool]:
    """The newline before the first class line of the run of class lines that
    closes the file (found from the end: pci.ids lists classes last), and
    whether no class line comes before it at all.  -1 when there is no class
    line (then the answer is complete too)."""
    at = data.rfind(b"\nC ")
    if at < 0:
        return -1, True
    for _ in range(_CLASS_LINES_MAX):
        floor = max(0, at - _CLASS_GAP)
        before = data.rfind(b"\nC ", floor, at)
        if before < 0:
            return at, floor == 0
        at = before
    return at, False


def _walk_classes(data: bytes, start: int) -> dict[int, str]:
    """The class table read line by line from the class line after ``start``:
    class names under ``base << 8 | 0x10000``, subclass names under
    ``base << 8 | sub``; empty when ``start`` is -1."""
    table: dict[int, str] = {}
    if start < 0:
        return table
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
    return table


def _read_whole(fd: int, display: str, limit: int) -> bytes:
    """The open file in one read of the size fstat gives: reading 1.3 MB in
    1 MiB chunks then joining them touches twice the memory, and those page
    faults were most of the cost of loading pci.ids (issue #13).  Anything
    else (not a regular file, too large, a size that changed while read) goes
    to read_regular, which checks it and reports it in its own words."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
        data = os.read(fd, info.st_size + 1)
        if len(data) == info.st_size and not os.read(fd, 1):
            return data
        os.lseek(fd, 0, os.SEEK_SET)
    return read_regular(fd, display, limit)


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
