"""Who this command is while it holds the state lock, and how it says it waits.

The CLI calls :func:`introduce` once per command: the command line goes into
the holder record beside the state lock (:mod:`pcipass.state.lock`), and
``notice`` is how a command that must wait for another says so (once).
"""

from __future__ import annotations

from collections.abc import Callable

from pcipass.state.lock import describe_process


def introduce(command: str, notice: Callable[[str], None] | None) -> None:
    describe_process(command, notice)
