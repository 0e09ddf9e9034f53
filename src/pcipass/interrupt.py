"""SIGINT and SIGTERM become an exception that runs the same rollback as an error.

Python turns SIGINT into :class:`KeyboardInterrupt` but leaves SIGTERM (what a
service manager or ``kill`` sends) fatal: the process would die between two
sysfs writes with a device left on no driver and an open journal intent.
:func:`install` makes both raise :class:`Interrupted` in the main thread, so a
command's ``except`` path rolls back exactly as for its own failures.

While a rollback runs, a second signal must not abort it half way (a second
Ctrl-C is what an impatient user presses): :func:`deferred` records signals
that arrive inside it and raises the first one only when the block is done.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal asked pcipass to stop; ``undone`` says what the rollback undid."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.undone: list[str] = []

    @property
    def exit_code(self) -> int:
        # The shell convention for "killed by signal N": 128 + N (130 INT, 143 TERM).
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Deferral:
    """How deep inside :func:`deferred` the main thread is, and what arrived meanwhile."""

    depth = 0
    pending: list[int] = []  # noqa: RUF012 (one process-wide list, on purpose)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _Deferral.depth:
        _Deferral.pending.append(signum)
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM into :class:`Interrupted` (main thread only)."""
    try:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _handler)
    except ValueError:
        # Not the main thread (signal(2) handlers belong to it): leave Python's
        # defaults.  Asked of signal itself, not threading: that import cost
        # every command 0.6 ms (issue #13).
        return


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals back while the block runs (a rollback); raise the first after it.

    When the block is left by an exception already (the rollback re-raises the
    error it undid), that exception wins and the held signal is dropped: the
    process stops anyway, after the rollback finished.
    """
    _Deferral.depth += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending:
            first = _Deferral.pending[0]
            _Deferral.pending.clear()
            if completed:
                raise Interrupted(first)


def report(stop: Interrupted) -> int:
    """Say what the rollback undid (stderr) and return the exit code (130/143)."""
    import sys

    print(f"pcipass: interrupted by {stop.name}", file=sys.stderr)
    for line in stop.undone:
        print(f"  undone: {line}", file=sys.stderr)
    if not stop.undone:
        print("  nothing had been changed", file=sys.stderr)
    return stop.exit_code
