"""pci.ids lookups (issue #13): the same names as before, from far fewer bytes read.

The oracle is the lookup code as it was before the windowed search (``PciIdsBeforeIssue13``
below, copied from host/pciids.py at 1582c5d): every answer is compared with it, on the
system's full pci.ids and on generated files that are unsorted, shuffled, CRLF, without a
trailing newline, with comments, blank lines and junk between and inside blocks, truncated
or binary.  The structural tests count what the searches read, so a return to whole-block
or whole-file scans fails without any timing.
"""

from __future__ import annotations

import os
import random
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.host import pciids
from pcipass.host.pciids import PciIds

SYSTEM_FILE = Path("/usr/share/misc/pci.ids")
needs_system_file = pytest.mark.skipif(not SYSTEM_FILE.is_file(), reason="no system pci.ids")


# --- the oracle: the lookups as they were before (copied, not imported) --------------------

_OLD_NEXT_TOP_LINE = re.compile(rb"\n(?=[^\t#\n])")
_OLD_VENDOR_LINE = re.compile(rb"\n(?=[0-9a-f]{4}  )")


class PciIdsBeforeIssue13:
    """host/pciids.py's PciIds lookups at 1582c5d, verbatim apart from names."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data
        self._vendors: dict[int, tuple[str | None, int, int]] = {}
        self._devices: dict[tuple[int, int], str | None] = {}
        self._classes: dict[int, str] | None = None

    def vendor(self, vendor: int) -> str | None:
        return self._vendor_block(vendor)[0]

    def device(self, vendor: int, device: int) -> str | None:
        key = (vendor, device)
        if key in self._devices:
            return self._devices[key]
        name: str | None = None
        _, start, end = self._vendor_block(vendor)
        data = self.data
        if data is not None and start < end:
            at = data.find(b"\n\t%04x" % device, start, end)
            if at >= 0:
                name = _old_name_at(data, at + 1, 5)
        self._devices[key] = name
        return name

    def _vendor_block(self, vendor: int) -> tuple[str | None, int, int]:
        cached = self._vendors.get(vendor)
        if cached is not None:
            return cached
        result: tuple[str | None, int, int] = (None, 0, 0)
        data = self.data
        if data is not None:
            start = _old_bisect_vendor(data, vendor)
            if start < 0:
                start = data.find(b"\n%04x  " % vendor)
            if start >= 0:
                line_end = data.find(b"\n", start + 1)
                line_end = len(data) if line_end < 0 else line_end
                name = _old_name_at(data, start + 1, 6) or None
                following = _OLD_NEXT_TOP_LINE.search(data, line_end)
                result = (name, line_end, following.start() if following else len(data))
        self._vendors[vendor] = result
        return result

    def class_name(self, class_code: int) -> str | None:
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


def _old_bisect_vendor(data: bytes, vendor: int) -> int:
    lo, hi = 0, len(data)
    while lo < hi:
        mid = (lo + hi) // 2
        found = _OLD_VENDOR_LINE.search(data, mid)
        if found is None or found.start() >= hi:
            hi = mid
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


def _old_name_at(data: bytes, line_start: int, skip: int) -> str:
    line_end = data.find(b"\n", line_start)
    line = data[line_start : len(data) if line_end < 0 else line_end]
    return line.decode("utf-8", "replace")[skip:].strip()


# --- comparing the two ----------------------------------------------------------------------


def vendor_ids(data: bytes) -> list[int]:
    return sorted({int(m.group(1), 16) for m in re.finditer(rb"\n([0-9a-f]{4})  ", data)})


def device_ids(data: bytes) -> list[int]:
    return sorted({int(m.group(1), 16) for m in re.finditer(rb"\n\t([0-9a-f]{4})", data)})


def class_codes(data: bytes) -> list[int]:
    """Every class code whose class or subclass the file could name, and a few it cannot."""
    bases = {int(m.group(1), 16) for m in re.finditer(rb"\nC ([0-9a-fA-F]{1,2})", data)}
    subs = {int(m.group(1), 16) for m in re.finditer(rb"\n\t([0-9a-fA-F]{1,2})", data)}
    return sorted({b << 16 | s << 8 for b in bases | {0x13} for s in subs | {0x42}})


def assert_same_answers(
    data: bytes, vendors: list[int], devices: list[int], classes: list[int]
) -> None:
    new, old = PciIds(data, "x"), PciIdsBeforeIssue13(data)
    for vendor in vendors:
        assert new.vendor(vendor) == old.vendor(vendor), hex(vendor)
        for device in devices:
            assert new.device(vendor, device) == old.device(vendor, device), (
                hex(vendor),
                hex(device),
            )
    for code in classes:
        assert new.class_name(code) == old.class_name(code), hex(code)


def absent_ids(present: list[int], count: int, seed: int) -> list[int]:
    chooser = random.Random(seed)
    taken = set(present)
    found: list[int] = []
    while len(found) < count:
        candidate = chooser.randrange(0x10000)
        if candidate not in taken:
            found.append(candidate)
            taken.add(candidate)
    return found


# --- the system's full pci.ids ---------------------------------------------------------------


def full_parse(text: str) -> tuple[dict[int, str], dict[tuple[int, int], str], dict[int, str]]:
    """The whole file read line by line as its header describes it: vendors, their devices
    (one tab) up to the next vendor, then classes and subclasses after the first ``C``."""
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    classes: dict[int, str] = {}
    vendor: int | None = None
    base: int | None = None
    for line in text.split("\n"):
        if line.startswith("C "):
            vendor, base = None, int(line[2:4], 16)
            classes[base << 8 | 0x10000] = line[4:].strip()
        elif re.match(r"[0-9a-f]{4}  ", line) and base is None:
            vendor = int(line[:4], 16)
            vendors.setdefault(vendor, line[6:].strip())
        elif re.match(r"\t[0-9a-f]{4}", line) and vendor is not None:
            devices.setdefault((vendor, int(line[1:5], 16)), line[5:].strip())
        elif re.match(r"\t[0-9a-f]{2}", line) and base is not None:
            classes[base << 8 | int(line[1:3], 16)] = line[3:].strip()
    return vendors, devices, classes


@needs_system_file
def test_every_name_of_the_system_file_is_the_one_a_full_parse_gives() -> None:
    data = SYSTEM_FILE.read_bytes()
    vendors, devices, classes = full_parse(data.decode("utf-8", "replace"))
    assert len(vendors) > 2000 and len(devices) > 15000  # a real pci.ids, not a stub
    ids = PciIds(data, str(SYSTEM_FILE))
    for vendor, name in vendors.items():
        assert ids.vendor(vendor) == name, hex(vendor)
    for (vendor, device), name in devices.items():
        assert ids.device(vendor, device) == name, (hex(vendor), hex(device))
    for key, name in classes.items():
        base, sub = (key >> 8) & 0xFF, key & 0xFF
        if key & 0x10000:
            assert ids.class_name(base << 16 | 0xFF00) in (name, classes.get(base << 8 | 0xFF))
        else:
            assert ids.class_name(base << 16 | sub << 8) == (name or classes[base << 8 | 0x10000])


@needs_system_file
def test_the_system_file_answers_as_before_for_every_id() -> None:
    data = SYSTEM_FILE.read_bytes()
    vendors = vendor_ids(data)
    new, old = PciIds(data, "x"), PciIdsBeforeIssue13(data)
    for vendor in [*vendors, *absent_ids(vendors, 40, seed=1)]:
        assert new.vendor(vendor) == old.vendor(vendor), hex(vendor)
    # Every device line of every block, and ids of other vendors' devices.
    blocks = [m.start() for m in re.finditer(rb"\n(?=[0-9a-f]{4}  )", data)] + [len(data)]
    for start, end in zip(blocks, blocks[1:]):
        vendor = int(data[start + 1 : start + 5], 16)
        listed = [int(m.group(1), 16) for m in re.finditer(rb"\n\t([0-9a-f]{4})", data[start:end])]
        for device in [*listed, *absent_ids(listed, 2, seed=vendor), 0x8086]:
            assert new.device(vendor, device) == old.device(vendor, device), (
                hex(vendor),
                hex(device),
            )
    for code in range(0, 1 << 24, 0x100):
        assert new.class_name(code) == old.class_name(code), hex(code)


# --- generated files: unsorted, shuffled, commented, CRLF, junk ------------------------------

NAME = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x17F, blacklist_characters="\x7f"),
    max_size=12,
)
# Lines that are neither vendor, device nor class lines, wherever they are put.
NOISE = st.sampled_from(
    [
        "",
        "# a comment",
        "#",
        "\t# an indented comment",
        "\t\t1234 5678  a subsystem",
        "junk at the top level",
        " 8086  not a vendor (indented by a space)",
        "80861 no double space",
        "C xx  a class line that does not parse",
        "\tzz  a subclass line that does not parse",
    ]
)


@st.composite
def vendor_block(draw: Any, vendor: int, sort: bool, others: list[int]) -> list[str]:
    # Device ids are unique within a block; some are other vendors' ids.
    devices = draw(
        st.lists(st.integers(0, 0xFFFF) | st.sampled_from(others), unique=True, max_size=14)
    )
    if sort:
        devices.sort()
    lines = [f"{vendor:04x}  {draw(NAME)}"]
    for device in devices:
        lines.append(f"\t{device:04x}  {draw(NAME)}")
        lines.extend(f"\t\t{sub:04x} 0001  sub" for sub in range(draw(st.integers(0, 3))))
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(NOISE))
    if draw(st.integers(0, 6)) == 0:  # a long block: probes land inside it and see nothing
        lines.extend(f"\t\t{sub:04x} 0002  padding subsystem line" for sub in range(120))
    return lines


CLASS_LINES = st.lists(
    st.sampled_from(
        [
            "C 00  Unclassified",
            "C 02  Network controller",
            "C 02  Network controller, again",
            "\t00  Ethernet controller",
            "\t80  Network controller",
            "\t\t00  a prog-if",
            "C 0c  Serial bus controller",
            "\t03  USB controller",
            "\t03  ",
            "C 0C  upper case",
            "C 1  short",
            "\t1  short subclass",
            "C ff  Unassigned class",
        ]
    ),
    max_size=16,
)


@st.composite
def pci_ids_files(draw: Any) -> bytes:
    vendors = draw(st.lists(st.integers(0, 0xFFFF), unique=True, min_size=1, max_size=30))
    sort = draw(st.booleans())
    if sort:
        vendors.sort()
    lines = ["# generated pci.ids"]
    for vendor in vendors:
        lines.extend(draw(vendor_block(vendor, sort and draw(st.booleans()), vendors)))
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(NOISE))
    classes = draw(CLASS_LINES)
    where = len(lines) if sort else draw(st.integers(0, len(lines)))
    lines[where:where] = classes
    text = "\n".join(lines) + draw(st.sampled_from(["\n", ""]))
    if draw(st.integers(0, 4)) == 0:
        text = text.replace("\n", "\r\n")
    return text.encode("utf-8")


@contextmanager
def window(size: int) -> Iterator[None]:
    """Small probe windows, so that generated files have long blocks to fall into."""
    with mock.patch.object(pciids, "_WINDOW", size):
        yield


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pci_ids_files(), st.sampled_from([16, 64, 1024]))
def test_generated_files_answer_as_before(data: bytes, size: int) -> None:
    vendors, devices = vendor_ids(data), device_ids(data)
    with window(size):
        assert_same_answers(
            data,
            [*vendors, *absent_ids(vendors, 3, seed=len(data))],
            [*devices, *absent_ids(devices, 2, seed=len(data))],
            class_codes(data),
        )


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([16, 1024]))
def test_binary_files_answer_as_before(data: bytes, size: int) -> None:
    with window(size):
        assert_same_answers(data, [0, 0x3030, 0x8086, 0xFFFF], [0, 0x3030], [0, 0x20000])


def test_a_huge_line_and_lines_hidden_in_it_answer_as_before() -> None:
    # One 300 KB line (no newline in it) between vendors: the searches cross it.
    data = (
        b"0001  first\n\t0001  dev\n"
        + b"x" * 150_000
        + b"8086  inside the line "
        + b"y" * 150_000
        + b"\n8086  Intel\n\t1521  i350\n\tffff  last\n"
        + b"ffff  last vendor\nC 02  Network\n\t00  Eth\n"
    )
    assert_same_answers(data, [1, 0x8086, 0xFFFF, 0x1234], [1, 0x1521, 0xFFFF, 2], [0x20000])
    assert PciIds(data, "x").device(0x8086, 0x1521) == "i350"


@needs_system_file
@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 1.0))
def test_a_truncated_system_file_answers_as_before(where: float) -> None:
    whole = SYSTEM_FILE.read_bytes()
    data = whole[: int(len(whole) * where)]
    near = vendor_ids(data[-20_000:]) if data else []
    assert_same_answers(
        data,
        [*near[-5:], 0x0001, 0x8086, 0x8088, 0xFFFF, 0x1234],
        [0x1521, 0x0001, 0xFFFF],
        [0x020000, 0x0C0300, 0xFF0000],
    )


def test_a_class_listed_only_in_an_earlier_class_section_is_found_as_before() -> None:
    # Class lines in two places, 40 KB apart: the run that closes the file is read
    # first, and what it does not list comes from the walk from the first class line.
    vendors = "".join(f"{v:04x}  vendor {v}\n\t0001  device\n" for v in range(0x100, 0x900))
    data = (
        "# two class sections\nC 03  Display (first)\n\t00  VGA (first)\n\t80  Display\n"
        + vendors
        + "C 02  Network\n\t00  Ethernet\nC 03  Display (last)\n\t00  VGA (last)\n"
    ).encode()
    assert len(vendors) > 2 * pciids._CLASS_GAP
    ids = PciIds(data, "x")
    assert ids.class_name(0x030000) == "VGA (last)"  # the last line for a key wins
    assert ids.class_name(0x038000) == "Display"  # listed only in the first section
    assert ids.class_name(0x020000) == "Ethernet"
    assert ids.class_name(0x028000) == "Network"
    assert_same_answers(data, [], [], [0x030000, 0x038000, 0x020000, 0x028000, 0x040000])


# --- ids listed twice ----------------------------------------------------------------------


def test_a_device_listed_twice_in_a_sorted_block_gives_the_first_name_as_before() -> None:
    lines = ["# sorted", "0001  first"]
    lines += [f"\t{d:04x}  device {d:04x}" for d in range(0, 0x400, 3)]
    lines.insert(200, "\t0252  the first 0252")  # just before the other 0252 line
    lines += ["0002  second", "\t0252  another vendor's 0252"]
    data = ("\n".join(lines) + "\n").encode()
    assert PciIds(data, "x").device(1, 0x252) == "the first 0252"
    assert_same_answers(data, [1, 2], [0x252, 0x24F, 0x255, 0x3FF], [])


def test_a_vendor_listed_twice_gives_one_of_its_names() -> None:
    # Which one was never specified (the bisection before could land on either); the
    # answer must still be one of the file's names, never a neighbour's or none.
    lines = [f"{v:04x}  vendor {v:04x}\n\t0001  device of {v:04x}" for v in range(0, 0x800, 7)]
    lines.insert(150, "0419  the same id again\n\t0002  device of the second 0419")
    data = ("\n".join(lines) + "\n").encode()
    for size in (16, 1024):
        with window(size):
            assert PciIds(data, "x").vendor(0x419) in ("vendor 0419", "the same id again")


# --- what the searches read (structural, no timing) ----------------------------------------


class Counted:
    """A compiled pattern that adds up the calls made to it and the bytes they read."""

    def __init__(self, pattern: re.Pattern[bytes], lookahead: int) -> None:
        self.pattern, self.lookahead = pattern, lookahead
        self.calls = self.bytes = 0

    def reset(self) -> None:
        self.calls = self.bytes = 0

    def _count(self, data: bytes, start: int, stop: int, first: int | None) -> None:
        self.calls += 1
        end = min(stop, len(data)) if first is None else first + 1 + self.lookahead
        self.bytes += max(0, end - start)

    def search(self, data: bytes, start: int = 0, stop: int = 1 << 62) -> Any:
        found = self.pattern.search(data, start, stop)
        self._count(data, start, stop, None if found is None else found.start())
        return found

    def finditer(self, data: bytes, start: int = 0, stop: int = 1 << 62) -> Any:
        self._count(data, start, stop, None)
        return self.pattern.finditer(data, start, stop)


class CountedBytes(bytes):
    """File bytes whose plain searches are counted too: the bytes each one passed over."""

    plain_bytes = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        begin, stop = start or 0, len(self) if end is None else end
        found = super().find(sub, begin, stop)
        CountedBytes.plain_bytes += (stop if found < 0 else found + len(sub)) - begin
        return found

    def rfind(self, sub: Any, start: Any = None, end: Any = None) -> int:
        begin, stop = start or 0, len(self) if end is None else end
        found = super().rfind(sub, begin, stop)
        CountedBytes.plain_bytes += stop - (begin if found < 0 else found)
        return found


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counted]:
    patterns = {
        "vendor": Counted(pciids._VENDOR_LINE, 6),
        "device": Counted(pciids._DEVICE_LINE, 5),
        "block": Counted(pciids._NEXT_TOP_LINE, 1),
        "class": Counted(pciids._CLASS_LINE, 2),
    }
    monkeypatch.setattr(pciids, "_VENDOR_LINE", patterns["vendor"])
    monkeypatch.setattr(pciids, "_DEVICE_LINE", patterns["device"])
    monkeypatch.setattr(pciids, "_NEXT_TOP_LINE", patterns["block"])
    monkeypatch.setattr(pciids, "_CLASS_LINE", patterns["class"])
    return patterns


@needs_system_file
def test_a_vendor_lookup_reads_a_few_windows_never_whole_blocks(
    counted: dict[str, Counted],
) -> None:
    # Every vendor is found by the search (no plain search of the file), each reading
    # at most the budget (the code before read up to ~2 MB for 8086), and on average
    # a few dozen KB: ~1/50 of the file.
    data = CountedBytes(SYSTEM_FILE.read_bytes())
    vendors = vendor_ids(data)
    read = []
    for vendor in vendors:
        counted["vendor"].reset()
        CountedBytes.plain_bytes = 0
        ids = PciIds(data, "x")
        assert ids.vendor(vendor) is not None
        assert counted["vendor"].bytes <= pciids._SEARCH_BUDGET, hex(vendor)
        assert counted["vendor"].calls <= 160, hex(vendor)
        assert CountedBytes.plain_bytes < 1000, hex(vendor)  # finding the line's end only
        read.append(counted["vendor"].bytes)
    assert sum(read) / len(read) < len(data) / 50
    # Just after the 372 KB Intel block, the first and the last vendor: no special cost.
    for vendor in (0x8086, 0x8088, vendors[0], vendors[-1]):
        counted["vendor"].reset()
        PciIds(data, "x").vendor(vendor)
        assert counted["vendor"].bytes < 96 * 1024, hex(vendor)


@needs_system_file
def test_an_absent_vendor_costs_the_budget_and_one_plain_search(
    counted: dict[str, Counted],
) -> None:
    # Absent ids cannot be told from a misplaced line without reading the file, so the
    # answer comes from one plain search, as before; the search before it stays bounded.
    data = CountedBytes(SYSTEM_FILE.read_bytes())
    for vendor in [*absent_ids(vendor_ids(data), 20, seed=3), 0x8087]:
        counted["vendor"].reset()
        CountedBytes.plain_bytes = 0
        assert PciIds(data, "x").vendor(vendor) is None
        assert counted["vendor"].bytes <= pciids._SEARCH_BUDGET
        assert CountedBytes.plain_bytes == len(data)


@needs_system_file
def test_a_device_lookup_bisects_its_block(counted: dict[str, Counted]) -> None:
    # Every device line of the file is found by bisection in its block: no plain search
    # (the code before searched the block byte by byte, up to 372 KB for Intel).
    data = CountedBytes(SYSTEM_FILE.read_bytes())
    ids = PciIds(data, "x")
    lines = re.finditer(rb"\n([0-9a-f]{4})  |\n\t([0-9a-f]{4})", data)
    vendor, looked_up = -1, 0
    for line in lines:
        if line.group(1) is not None:
            vendor = int(line.group(1), 16)
            ids.vendor(vendor)
            continue
        device = int(line.group(2), 16)
        if (vendor, device) in ids._devices:
            continue
        counted["device"].reset()
        CountedBytes.plain_bytes = 0
        assert ids.device(vendor, device) is not None
        assert counted["device"].calls <= 24, (hex(vendor), hex(device))
        assert counted["device"].bytes < 16 * 1024, (hex(vendor), hex(device))
        assert CountedBytes.plain_bytes < 200, (hex(vendor), hex(device))  # the name's line
        looked_up += 1
    assert looked_up > 15000
    # The block's end is searched for once per vendor, not once per device.
    assert counted["block"].calls == len(ids._block_ends)


@needs_system_file
def test_class_names_come_from_the_end_of_the_file(counted: dict[str, Counted]) -> None:
    data = CountedBytes(SYSTEM_FILE.read_bytes())
    CountedBytes.plain_bytes = 0
    ids = PciIds(data, "x")
    assert ids.class_name(0x020000) == "Ethernet controller"
    assert ids.class_name(0x0C0330) == "USB controller"
    assert CountedBytes.plain_bytes < 64 * 1024  # the class section is ~5 KB, at the end
    assert counted["class"].calls == 0
    # A subclass the file does not list: only the walk from the first class line can
    # tell it is not there (a hand-edited file may have class lines anywhere).
    assert ids.class_name(0xFF0000) == "Unassigned class"
    assert counted["class"].calls == 1


def test_classes_in_a_small_file_need_no_second_walk(counted: dict[str, Counted]) -> None:
    # The backward search reached the file's start: the section is known to be all.
    data = b"1234  v\n\t0001  d\nC 02  Network\n\t00  Ethernet\n"
    ids = PciIds(data, "x")
    assert ids.class_name(0x028000) == "Network"
    assert ids.class_name(0x030000) is None
    assert counted["class"].calls == 0


# --- loading: one read, the same refusals ---------------------------------------------------


def test_loading_reads_the_file_in_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pci.ids"
    text = b"".join(b"%04x  vendor %d\n" % (v, v) for v in range(0x10000)) * 2  # ~2 MB
    path.write_bytes(text)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", counting_read)
    ids = PciIds.load([path])
    assert ids.data == text
    # The whole file, then the end-of-file check (before: 1 MiB chunks, 3 reads).
    assert reads == [len(text) + 1, 1]


def test_a_file_whose_size_changes_while_read_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pci.ids"
    text = b"8086  Intel\n" * 1000
    path.write_bytes(text)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        fields = list(info[:10])
        fields[stat.ST_SIZE] = 100  # as if the file grew after fstat
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_fstat)
    assert PciIds.load([path]).data == text


def test_a_fifo_a_directory_and_a_huge_file_are_refused_as_before(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.ids"
    os.mkfifo(fifo)
    assert PciIds.load([fifo]).problem == (
        f"cannot read {fifo}: not a regular file (a FIFO, socket or device node?)"
    )
    folder = tmp_path / "dir.ids"
    folder.mkdir()
    assert PciIds.load([folder]).problem == (
        f"cannot read {folder}: a directory is where a file should be"
    )
    huge = tmp_path / "huge.ids"
    with huge.open("wb") as sparse:
        sparse.truncate(64 * 1024 * 1024 + 1)
    assert PciIds.load([huge]).problem == f"cannot read {huge}: the file is larger than 64 MiB"
