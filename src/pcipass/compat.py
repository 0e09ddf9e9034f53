"""What pcipass needs from Python 3.11+ that Python 3.9 lacks (RHEL 9 and Debian 11 ship 3.9)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator, Sequence

if sys.version_info >= (3, 11):
    StrEnum = enum.StrEnum
else:

    class StrEnum(str, enum.Enum):
        """enum.StrEnum of 3.11: members are strings, and str()/format() give the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import TypeVar

    _A = TypeVar("_A")
    _B = TypeVar("_B")


def zip_equal(first: Sequence[_A], second: Sequence[_B]) -> Iterator[tuple[_A, _B]]:
    """zip(first, second, strict=True) of 3.10: pairs, refusing sequences of different lengths."""
    if len(first) != len(second):
        raise ValueError(f"zip_equal: lengths differ ({len(first)} != {len(second)})")
    return zip(first, second)
