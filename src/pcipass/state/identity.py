"""Who this process is, for the state lock's holder record.

Kept apart from :mod:`pcipass.state.lock`, with no imports, so every command
can say who it is without loading the lock: read-only commands never take it
(issue #13).  The CLI sets it once (:mod:`pcipass.ops.lock_holder`); the lock
reads it when it records its holder or must wait.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class _Process:
    """The command line recorded while this process holds the lock (as words,
    joined only when a record is written), and how it tells its user that it
    waits (the library never prints itself)."""

    words: tuple[str, ...] = ("pcipass",)
    notice: Callable[[str], None] | None = None


def describe_process(words: Sequence[str], notice: Callable[[str], None] | None) -> None:
    """Set the command line recorded while this process holds the lock, and
    the function that shows "waiting for the state lock ..." (None: silent)."""
    _Process.words = tuple(words)
    _Process.notice = notice


def command_line() -> str:
    """The command line as a shell would take it back, printable, at most 300 characters."""
    import shlex

    joined = shlex.join(_Process.words)
    return "".join(c if c.isprintable() else "?" for c in joined)[:300]


def waiting_notice() -> Callable[[str], None] | None:
    return _Process.notice
