"""Regular expressions compiled when first used, not when their module is imported.

A command imports the parsers and rules it might need (guest configurations,
persistence files, platform detection), and each module compiled its
patterns at import: ~60 patterns and ~5 ms for ``check`` (issue #13), most of
them never used by the command that paid for them.  ``lazy(...)`` returns a
stand-in that compiles on its first attribute access and then keeps the
compiled pattern's methods as its own attributes, so later calls cost what a
compiled pattern's do.  Type checkers see an ``re.Pattern``.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

#: What a stand-in takes over from the compiled pattern on first use.
_TAKEN_OVER = (
    "match",
    "search",
    "fullmatch",
    "finditer",
    "findall",
    "sub",
    "subn",
    "split",
    "pattern",
    "flags",
    "groups",
    "groupindex",
)


class _Deferred:
    """A pattern not compiled yet (see the module's docstring)."""

    def __init__(self, source: str | bytes, flags: int) -> None:
        self._source = source
        self._flags = flags

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe dunders: not ours
            raise AttributeError(name)
        compiled = re.compile(self._source, self._flags)
        for attribute in _TAKEN_OVER:
            self.__dict__[attribute] = getattr(compiled, attribute)
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"lazy({self._source!r})"


def lazy(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile(pattern, flags)``, compiled on first use."""
    deferred: Any = _Deferred(pattern, flags)
    return deferred  # type: ignore[no-any-return]


def lazy_bytes(pattern: bytes, flags: int = 0) -> re.Pattern[bytes]:
    """``re.compile(pattern, flags)`` for bytes, compiled on first use."""
    deferred: Any = _Deferred(pattern, flags)
    return deferred  # type: ignore[no-any-return]
