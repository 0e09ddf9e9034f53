"""Kill or interrupt a pcipass command at every step, then check the invariant.

Two harnesses, one list of *events* (the instants that matter for crash
consistency):

* ``lock<``     about to take (or wait for) the state lock
* ``begin``     the journal intent was committed
* ``write<``    a sysfs write is about to reach the (fake) kernel
* ``write>``    the kernel acted on it, the journal does not know yet
* ``step``      a sysfs step was journalled
* ``edit``      a file edit was journalled (not yet written)
* ``rename<``   a temporary file is complete, not yet renamed over its target
* ``rename>``   renamed, directory not yet synced
* ``finish<``   everything done, the intent not yet closed

With ``live=True`` (attach/detach, whose decisive steps are ledger writes
and a toolstack call rather than sysfs writes), three more:

* ``ledger<``   a ledger write transaction is about to begin (what was done
  before it, say a libvirt ``defineXML``, is not recorded yet)
* ``ledger>``   a ledger write transaction committed (a claim, a release,
  a "maybe in guest" mark, a PP007 event...)
* ``hotplug<``  the toolstack is about to be told (xl/xm/virsh/QMP/libvirt)
* ``hotplug>``  the toolstack returned (or raised), the ledger does not know yet

In-process (:class:`KillAt`): the event's hook raises :class:`SimulatedKill`,
which nothing in pcipass catches (a rollback runs only for ``Exception``,
``KeyboardInterrupt`` and ``SystemExit``): the code above the hook stops as a
killed process would, and ``recover`` has to clean up.  Fast; used for every
event of every command.

In a real process (:func:`run_stopped`): ``python -m pcipass.testing.crash
--stop-at N -- ARGS`` runs the CLI on a simulated root and stops itself
(SIGSTOP) at event N; the test then sends SIGKILL (a true kill -9: no
``finally`` runs, temporary files stay) or SIGINT/SIGTERM followed by SIGCONT
(the signal is handled at the stopping point).  Reusable for attach,
guard-install, anything the CLI runs.

A fake toolstack's truth must outlive the process that hot-plugged: with
:func:`shared_toolstack`, every fake runner built meanwhile (by the CLI, in
this process or a child run with ``--toolstack FILE``) offers xl, xm and
virsh and keeps what each running guest holds in one JSON file, outside the
root, that the test reads back as the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pcipass.record import dataclass, field

_UNHOOKED_RENAME = os.rename
EVENTS = ("lock<", "begin", "write<", "write>", "step", "edit", "rename<", "rename>", "finish<")
LIVE_EVENTS = ("ledger<", "ledger>", "hotplug<", "hotplug>")


class SimulatedKill(BaseException):
    """Stands for kill -9: nothing in pcipass catches it."""


@dataclass
class EventCounter:
    """Calls ``on_event(index, name)`` at every event; counts them."""

    on_event: Callable[[int, str], None]
    seen: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        self.on_event(len(self.seen), name)


def _toolstack_classes() -> list[type]:
    """Every toolstack class that defines its own ``hotplug``."""
    from pcipass.guests.toolstack import Toolstack

    found: list[type] = []
    pending: list[type] = [Toolstack]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not Toolstack and "hotplug" in vars(cls):
            found.append(cls)
    return found


@contextlib.contextmanager
def hooked(counter: EventCounter, *, live: bool = False) -> Iterator[None]:
    """Install the event hooks process-wide (class attributes, ``os.replace``);
    ``live`` adds :data:`LIVE_EVENTS`."""
    from pcipass.state import ledger as ledger_module
    from pcipass.state.lock import StateLock
    from pcipass.testing.fakehost import FakeKernel

    originals: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, replacement: Any) -> None:
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    kernel_write = FakeKernel.write
    begin = ledger_module.Ledger.begin
    step = ledger_module.OperationHandle.step
    record_edit = ledger_module.OperationHandle.record_file_edit
    finish = ledger_module.OperationHandle.finish
    replace, rename = os.replace, os.rename
    acquire = StateLock.acquire

    def hooked_acquire(self: StateLock) -> None:
        counter("lock<")
        acquire(self)

    def write(self: FakeKernel, path: Path, value: str) -> None:
        counter("write<")
        kernel_write(self, path, value)
        counter("write>")

    def hooked_begin(self: Any, kind: str, intent: Any) -> Any:
        handle = begin(self, kind, intent)
        counter("begin")
        return handle

    def hooked_step(self: Any, name: str, undo: Any) -> int:
        seq = step(self, name, undo)
        counter("step")
        return seq

    def hooked_edit(self: Any, *args: Any) -> Any:
        record = record_edit(self, *args)
        counter("edit")
        return record

    def hooked_finish(self: Any) -> None:
        counter("finish<")
        finish(self)

    def hooked_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        counter("rename<")
        replace(src, dst, **kwargs)
        counter("rename>")

    def hooked_rename(src: Any, dst: Any, **kwargs: Any) -> None:
        # persist/atomic.py renames with rename(2) relative to directory fds.
        counter("rename<")
        rename(src, dst, **kwargs)
        counter("rename>")

    patch(FakeKernel, "write", write)
    patch(ledger_module.Ledger, "begin", hooked_begin)
    patch(ledger_module.OperationHandle, "step", hooked_step)
    patch(ledger_module.OperationHandle, "record_file_edit", hooked_edit)
    patch(ledger_module.OperationHandle, "finish", hooked_finish)
    patch(os, "replace", hooked_replace)
    patch(os, "rename", hooked_rename)
    patch(StateLock, "acquire", hooked_acquire)
    if live:
        _hook_live(counter, patch)
    try:
        yield
    finally:
        for owner, name, value in reversed(originals):
            setattr(owner, name, value)


def _hook_live(counter: EventCounter, patch: Callable[[Any, str, Any], None]) -> None:
    from pcipass.state.ledger import Ledger

    ledger_write = Ledger._write

    @contextlib.contextmanager
    def hooked_write(self: Any) -> Iterator[Any]:
        counter("ledger<")
        with ledger_write(self) as conn:
            yield conn
        counter("ledger>")

    patch(Ledger, "_write", hooked_write)
    for cls in _toolstack_classes():
        patch(cls, "hotplug", _hooked_hotplug(counter, vars(cls)["hotplug"]))


def _hooked_hotplug(counter: EventCounter, original: Any) -> Any:
    def hotplug(self: Any, address: Any, action: str) -> None:
        counter("hotplug<")
        try:
            original(self, address, action)
        finally:
            counter("hotplug>")

    return hotplug


class KillAt:
    """``with KillAt(k): command()`` raises :class:`SimulatedKill` at event ``k``
    (1-based); ``KillAt(0)`` only counts (``.seen`` after the block)."""

    def __init__(self, index: int, *, live: bool = False) -> None:
        self.index = index
        self.live = live
        self.counter = EventCounter(self._event)
        self._stack = contextlib.ExitStack()

    def _event(self, index: int, name: str) -> None:
        if index == self.index:
            raise SimulatedKill(f"killed at event {index} ({name})")

    @property
    def seen(self) -> list[str]:
        return self.counter.seen

    def __enter__(self) -> KillAt:
        self._stack.enter_context(hooked(self.counter, live=self.live))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@contextlib.contextmanager
def killed_at_line(lines: int) -> Iterator[None]:
    """Run the block with :class:`SimulatedKill` raised at the ``lines``-th
    line pcipass executes (the test kit's own lines not counted): a kill at
    an arbitrary instant, not only at a journalled event.  The kill ends the
    block quietly; a block that finishes first is simply done."""
    count = [0]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if "pcipass" not in filename or "testing" in filename:
            return tracer
        if event == "line":
            count[0] += 1
            if count[0] == lines:
                raise SimulatedKill(f"killed at line event {lines}")
        return tracer

    sys.settrace(tracer)
    try:
        yield
    except SimulatedKill:
        pass
    finally:
        sys.settrace(None)


# --- a fake toolstack shared by every process of a test ---------------------------


def read_toolstack(state: Path) -> dict[str, set[str]]:
    """What each running guest holds, as the shared fake toolstack says."""
    if not state.exists():
        return {}
    raw = json.loads(state.read_text())
    return {guest: set(held) for guest, held in raw.items()}


def _save_toolstack(state: Path, running: dict[str, set[str]]) -> None:
    # The rename taken before any hook: the harness counts renames as events.
    temp = state.with_name(state.name + ".new")
    temp.write_text(json.dumps({g: sorted(h) for g, h in sorted(running.items()) if h}))
    _UNHOOKED_RENAME(temp, state)


@contextlib.contextmanager
def shared_toolstack(
    state: Path, programs: Sequence[str] = ("xl", "xm", "virsh")
) -> Iterator[None]:
    """Every FakeRunner built inside offers ``programs`` and a toolstack whose
    truth lives in the JSON file ``state`` (read before and saved after each
    command), so it survives the process and is what tests compare with."""
    from pcipass.simkernel.toolstack import SimToolstack
    from pcipass.testing.fakehost import FakeRunner

    class FileToolstack(SimToolstack):
        def handle(self, args: Sequence[str]) -> Any:
            self.running = read_toolstack(state)
            answer = super().handle(args)
            _save_toolstack(state, self.running)
            return answer

    init = FakeRunner.__init__

    def patched_init(self: FakeRunner, kernel: Any) -> None:
        init(self, kernel)
        self.programs.update(programs)
        self.toolstack = FileToolstack()

    FakeRunner.__init__ = patched_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        FakeRunner.__init__ = init  # type: ignore[method-assign]


# --- a real process ------------------------------------------------------------


@dataclass
class StoppedRun:
    """A CLI run in a child process that stopped itself at an event (or finished)."""

    pid: int
    out: Path
    err: Path
    status: int | None = None  # the raw wait status once it exited

    @property
    def stopped(self) -> bool:
        return self.status is None

    def _wait(self) -> None:
        _, status = os.waitpid(self.pid, os.WUNTRACED)
        self.status = None if os.WIFSTOPPED(status) else status

    def send(self, signum: int) -> int:
        """Deliver ``signum`` (then SIGCONT) and wait for the exit; return the exit code.

        A killed child returns ``-signum``.
        """
        os.kill(self.pid, signum)
        if signum != signal.SIGKILL:
            os.kill(self.pid, signal.SIGCONT)
        while self.status is None:
            self._wait()
        return self.returncode

    @property
    def returncode(self) -> int:
        assert self.status is not None
        if os.WIFSIGNALED(self.status):
            return -os.WTERMSIG(self.status)
        return os.WEXITSTATUS(self.status)

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()


def run_stopped(
    argv: Sequence[str],
    stop_at: int,
    *,
    workdir: Path,
    live: bool = False,
    toolstack: Path | None = None,
) -> StoppedRun:
    """Run ``pcipass ARGV`` in a child that SIGSTOPs itself at event ``stop_at``
    (counting :data:`LIVE_EVENTS` too with ``live``; with ``toolstack``, under
    :func:`shared_toolstack` of that file).

    Returns once the child is stopped or has exited (``.stopped`` says which).
    """
    out = Path(tempfile.mkstemp(dir=workdir, prefix="out.")[1])
    err = Path(tempfile.mkstemp(dir=workdir, prefix="err.")[1])
    options = ["--stop-at", str(stop_at)]
    options += ["--live"] if live else []
    options += ["--toolstack", str(toolstack)] if toolstack is not None else []
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "pcipass.testing.crash", *options, "--", *argv],
            stdout=stdout,
            stderr=stderr,
        )
    # The Popen object is dropped: the child is reaped with os.waitpid, which
    # also reports the stop (WUNTRACED), without any timing.
    run = StoppedRun(child.pid, out, err)
    child.returncode = 0  # keep Popen's destructor from waiting on it
    run._wait()
    return run


def _child_main(argv: list[str]) -> int:
    """``python -m pcipass.testing.crash --stop-at N [--live] [--toolstack FILE] -- ARGS``."""
    usage = "usage: python -m pcipass.testing.crash --stop-at N [--live] [--toolstack FILE] -- ARGS"
    if "--" not in argv:
        print(usage, file=sys.stderr)
        return 2
    split = argv.index("--")
    options, args = argv[:split], argv[split + 1 :]
    stop_at, live, toolstack = 0, False, None
    while options:
        option = options.pop(0)
        if option == "--stop-at" and options:
            stop_at = int(options.pop(0))
        elif option == "--toolstack" and options:
            toolstack = Path(options.pop(0))
        elif option == "--live":
            live = True
        else:
            print(usage, file=sys.stderr)
            return 2

    def stop(index: int, name: str) -> None:
        if index == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)

    from pcipass.cli.main import main

    with contextlib.ExitStack() as stack:
        if toolstack is not None:
            stack.enter_context(shared_toolstack(toolstack))
        stack.enter_context(hooked(EventCounter(stop), live=live))
        return main(args)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
