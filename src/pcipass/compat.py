"""What pcipass needs from Python 3.11+ that Python 3.9 lacks (RHEL 9 and Debian 11 ship 3.9)."""

from __future__ import annotations

import enum
import sys

if sys.version_info >= (3, 11):
    StrEnum = enum.StrEnum
else:

    class StrEnum(str, enum.Enum):
        """enum.StrEnum of 3.11: members are strings, and str()/format() give the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)
