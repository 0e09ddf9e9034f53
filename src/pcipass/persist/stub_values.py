"""The stub parameters' values: ``hide=(A)(B)`` for pciback and
``ids=V:D,V:D`` for vfio-pci, as the drivers parse them.

Shared by modprobe ``options`` lines and the kernel command line
(``xen-pciback.hide=``, ``vfio-pci.ids=``): the same value text, the same
rules, wherever it is written.
"""

from __future__ import annotations

import re

from pcipass.address import PciAddress
from pcipass.errors import AddressError, UsageError
from pcipass.patterns import lazy
from pcipass.record import dataclass

ISSPACE = " \t\n\v\f\r"  # the kernel's isspace(), used by parse_args()
_DEVICE_ID = lazy(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
# --------------------------------------------------------------------------
# Values: hide=(...)(...) and ids=a:b,c:d
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueItem:
    text: str  # "0000:09:00.0" or "8086:10d3"
    start: int  # index in the logical text of the item's first character
    end: int  # index after its last character (")" included for hide groups)


def hide_items(text: str, start: int, end: int) -> list[tuple[PciAddress, ValueItem]]:
    """The ``(address)`` groups of a hide value, as xen-pciback's sscanf reads them.

    ``pcistub_init`` (drivers/xen/xen-pciback/pci_stub.c) parses
    ``" (%x:%x:%x.%x) %n"`` repeatedly: parentheses are required, a domain
    may be left out, whitespace around groups is allowed.
    """
    value = text[start:end]
    items: list[tuple[PciAddress, ValueItem]] = []
    position = 0
    for match in re.finditer(r"\(([^()]*)\)", value):
        between = value[position : match.start()]
        if between.strip(ISSPACE):
            raise AddressError(value, f"unexpected text {between.strip()!r} outside parentheses")
        address = PciAddress.parse(match.group(1))
        items.append(
            (address, ValueItem(match.group(1), start + match.start(), start + match.end()))
        )
        position = match.end()
    if value[position:].strip(ISSPACE):
        raise AddressError(
            value, "xen-pciback needs every address in parentheses: (0000:09:00.0)(0000:0a:04.1)"
        )
    return items


def id_items(text: str, start: int, end: int) -> list[tuple[str, ValueItem]]:
    """The comma-separated ``vendor:device`` entries of a vfio-pci ids value."""
    items: list[tuple[str, ValueItem]] = []
    position = start
    for piece in text[start:end].split(","):
        piece_start, piece_end = position, position + len(piece)
        position = piece_end + 1
        if not piece:
            continue
        items.append((normalise_device_id(piece), ValueItem(piece, piece_start, piece_end)))
    return items


def parse_hide_value(
    text: str, start: int, end: int, kind: str
) -> tuple[tuple[PciAddress, ...], tuple[str, ...], str | None]:
    """A ``hide=`` (addresses) or ``ids=`` (vendor:device) value, and the
    problem the stub would have with it (None when it parses)."""
    try:
        if kind == "hide":
            return tuple(a for a, _ in hide_items(text, start, end)), (), None
        return (), tuple(i for i, _ in id_items(text, start, end)), None
    except UsageError as problem:
        return (), (), problem.problem


def normalise_device_id(text: str) -> str:
    """``8086:10D3`` -> ``8086:10d3``; vfio-pci ``ids=`` entries (vendor:device)."""
    lowered = text.strip().lower()
    if not _DEVICE_ID.match(lowered):
        raise UsageError(f"device id {text!r}", "expected vendor:device in hex, e.g. 8086:10d3", "")
    return lowered
