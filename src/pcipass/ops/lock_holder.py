"""Who this command is while it holds the state lock, and how it says it waits.

The CLI calls :func:`introduce` once per command: the command line goes into
the holder record beside the state lock (:mod:`pcipass.state.lock`), and
``notice`` is how a command that must wait for another says so (once).
"""

from __future__ import annotations

from pcipass.state.identity import describe_process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def introduce(words: Sequence[str], notice: Callable[[str], None] | None) -> None:
    """``words``: the command line as run (``pcipass`` first).  Cheap: nothing
    of the lock is loaded until a command takes it."""
    describe_process(words, notice)
