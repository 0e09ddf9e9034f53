"""The parts of a guest configuration's text both Xen formats share.

xm (Python) and xl (libxlu) files are read into the same shapes: each
top-level statement is a :class:`Setting` with the byte span of its value
and, for a list, of each :class:`Item`, so an edit can replace exactly those
bytes and leave every other byte as it was.
"""

from __future__ import annotations

import bisect
import re

from pcipass.patterns import lazy_bytes
from pcipass.record import dataclass

PLAIN_STRING = lazy_bytes(rb"""^(?:'[^'\\\r\n]*'|"[^"\\\r\n]*")$""")
MAX_LIST_DEPTH = 16


class Code:
    """Stands for an xm value that is Python code, not a literal."""

    def __repr__(self) -> str:
        return "<python code>"


CODE = Code()


@dataclass(frozen=True)
class Item:
    """One element of a list value: its bytes span and decoded value."""

    start: int
    end: int
    line: int
    value: object
    quote: str | None  # the quote of a plain string literal, else None


@dataclass(frozen=True)
class Setting:
    key: str
    operator: str  # "=" or "+="
    line: int
    start: int  # offset of the key
    value_start: int
    value_end: int
    value: object  # decoded literal, or CODE
    items: tuple[Item, ...] | None  # the elements when the value is a [list]
    quote: str | None  # quote of a plain string scalar


class Lines:
    """Line numbers for byte offsets (1-based, as editors and xl count)."""

    def __init__(self, data: bytes, newline: re.Pattern[bytes]) -> None:
        self._data = data
        self._newline = newline
        self.starts = [0] + [m.end() for m in newline.finditer(data)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def start_of(self, offset: int) -> int:
        return self.starts[self.line_of(offset) - 1]

    def end_of(self, offset: int) -> tuple[int, int]:
        """(where the line holding ``offset`` ends, where the next one starts)."""
        match = self._newline.search(self._data, offset)
        if match is None:
            return len(self._data), len(self._data)
        return match.start(), match.end()


XL_NEWLINE = lazy_bytes(rb"\r?\n")
PY_NEWLINE = lazy_bytes(rb"\r\n|\r|\n")


def plain_quote(source: bytes) -> str | None:
    return source[:1].decode() if PLAIN_STRING.match(source) else None
