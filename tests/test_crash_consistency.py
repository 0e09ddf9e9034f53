"""Kill hide/unhide --now --persist at every event, recover, check the one invariant.

The invariant (pcipass.testing.invariants): the tree and the ledger are
exactly as before the command or exactly as after a complete run, no journal
intent is open, no temporary file is left.  "Done" is measured by running the
same command to completion on a copy of the tree.
"""

from __future__ import annotations

import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.ops.recover import recover
from pcipass.testing.crash import KillAt, SimulatedKill, killed_at_line, run_stopped
from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.fakehost import FakeHost, FakeKernel, FakeRunner
from pcipass.testing.invariants import capture, check_invariant

BUILD: dict[str, Callable[[Path], FakeHost]] = {"rhel5": build_rhel5_xen, "kvm": build_kvm}
DEVICES = {"rhel5": ["0000:09:00.0", "0000:0a:04.1"], "kvm": ["0000:02:10.0", "0000:02:10.4"]}
BACKEND = {"rhel5": "pciback", "kvm": "vfio"}


def simulated(base: Path) -> Host:
    """The Host the CLI builds for the example host: a fake kernel from the tree."""
    kernel = FakeKernel(FakeHost.load(base))
    return Host.open(str(base), runner=FakeRunner(kernel), writer=kernel)


def example(base: Path, kind: str) -> Path:
    BUILD[kind](base).mark_simulated()
    return base


def argv_for(kind: str, verb: str, base: Path) -> list[str]:
    args = [verb, "--now", "--persist", *DEVICES[kind], "--root", str(base)]
    return args + (["--backend", BACKEND[kind]] if verb == "hide" else [])


class Prepared:
    """A tree ready for the command (copied for each run), its state now, and
    its state after a complete run; ``events`` lists the run's events."""

    def __init__(self, tmp_path: Path, kind: str, verb: str) -> None:
        self.kind, self.verb = kind, verb
        self.template = example(tmp_path / "template", kind)
        if verb == "unhide":
            assert main(argv_for(kind, "hide", self.template)) == 0
        self.before = capture(self.template)
        copy = tmp_path / "done"
        shutil.copytree(self.template, copy, symlinks=True)
        with KillAt(0) as counting:
            assert main(argv_for(kind, verb, copy)) == 0
        self.events = counting.seen
        self.done = capture(copy)
        assert self.done.differences(self.before), "the command must change something"

    def fresh(self, work: Path) -> Path:
        base = work / "host"
        shutil.copytree(self.template, base, symlinks=True)
        return base

    def check(self, base: Path) -> str:
        return check_invariant(base, self.before, self.done)


# For a process killed or signalled there, the same instant as the event before
# it (nothing happens in between); the in-process loop still visits them.
SAME_INSTANT = frozenset({"write<", "lock<"})

CASES = [(k, v) for k in ("rhel5", "kvm") for v in ("hide", "unhide")]


@pytest.mark.parametrize(("kind", "verb"), CASES)
def test_killed_in_process_at_every_event_then_recovered(
    tmp_path: Path, kind: str, verb: str
) -> None:
    prepared = Prepared(tmp_path, kind, verb)
    assert len(prepared.events) >= 8
    for index in range(1, len(prepared.events) + 1):
        work = tmp_path / f"run{index}"
        base = prepared.fresh(work)
        with KillAt(index), pytest.raises(SimulatedKill):
            main(argv_for(kind, verb, base))
        recover(simulated(base))
        prepared.check(base)
        assert recover(simulated(base)) == []  # recover is idempotent
        shutil.rmtree(work)


@pytest.mark.parametrize(("kind", "verb"), CASES)
def test_killed_at_random_instants_then_recovered(tmp_path: Path, kind: str, verb: str) -> None:
    """Any line of pcipass, not only the journalled events (seeded: reproducible)."""
    rng = random.Random(f"{kind}-{verb}")
    prepared = Prepared(tmp_path, kind, verb)
    for attempt in range(6):
        work = tmp_path / f"run{attempt}"
        base = prepared.fresh(work)
        instant = rng.randrange(200, 20000)
        with killed_at_line(instant):
            main(argv_for(kind, verb, base))
        recover(simulated(base))
        prepared.check(base)
        shutil.rmtree(work)


@pytest.mark.parametrize(("kind", "verb"), CASES)
def test_sigkill_at_every_event_then_recover(tmp_path: Path, kind: str, verb: str) -> None:
    """A real kill -9 (no finally, no cleanup) at every event, temp files included."""
    prepared = Prepared(tmp_path, kind, verb)
    for index, event in enumerate(prepared.events, 1):
        if event in SAME_INSTANT:
            continue
        work = tmp_path / f"run{index}"
        base = prepared.fresh(work)
        run = run_stopped(argv_for(kind, verb, base), index, workdir=work)
        assert run.stopped, run.stderr()
        assert run.send(signal.SIGKILL) == -signal.SIGKILL
        recover(simulated(base))
        prepared.check(base)
        shutil.rmtree(work)


@pytest.mark.parametrize(("kind", "verb"), CASES)
def test_sigint_and_sigterm_at_every_event_roll_back(tmp_path: Path, kind: str, verb: str) -> None:
    """Ctrl-C / SIGTERM at every event: exit 130/143, rolled back (done when the
    signal came while the intent was being closed), no intent, no temp file, no
    recover needed."""
    prepared = Prepared(tmp_path, kind, verb)
    for index, event in enumerate(prepared.events, 1):
        if event in SAME_INSTANT:
            continue
        signum = signal.SIGINT if index % 2 else signal.SIGTERM
        work = tmp_path / f"run{index}"
        base = prepared.fresh(work)
        run = run_stopped(argv_for(kind, verb, base), index, workdir=work)
        assert run.stopped
        code = run.send(signum)
        assert code == 128 + signum, run.stderr()
        assert f"interrupted by {signal.Signals(signum).name}" in run.stderr()
        assert "Traceback" not in run.stderr()
        # Held back while the intent is closed, a signal there finds the work done.
        assert prepared.check(base) == ("done" if event == "finish<" else "before")
        if index > 1:  # something had changed by then: the rollback says what it undid
            assert "undone:" in run.stderr() or "nothing had been changed" in run.stderr()
        shutil.rmtree(work)


def test_recover_is_not_stuck_after_the_host_driver_was_bound_again(tmp_path: Path) -> None:
    """The issue's case: killed right after bnx2 was bound again during unhide --now,
    before the journal knew; recover used to fail every time with "expected pciback
    or no driver, found bnx2"."""
    base = example(tmp_path / "host", "rhel5")
    assert main(["hide", "--now", "09:00.0", "--root", str(base)]) == 0
    before = capture(base)
    with KillAt(0) as counting:
        copy = tmp_path / "done"
        shutil.copytree(base, copy, symlinks=True)
        assert main(["unhide", "--now", "09:00.0", "--root", str(copy)]) == 0
    done = capture(copy)
    # the event right after the kernel bound bnx2 (the last write> of the run)
    index = max(i for i, name in enumerate(counting.seen, 1) if name == "write>")
    with KillAt(index), pytest.raises(SimulatedKill):
        main(["unhide", "--now", "09:00.0", "--root", str(base)])
    assert FakeHost.load(base).bound_driver("0000:09:00.0") == "bnx2"
    report = recover(simulated(base))
    assert report[-1].endswith("rolled back")
    assert check_invariant(base, before, done) == "before"
    assert FakeHost.load(base).bound_driver("0000:09:00.0") == "pciback"
    assert recover(simulated(base)) == []


def test_a_signal_during_recover_waits_for_the_operation_to_be_consistent(
    tmp_path: Path,
) -> None:
    """SIGTERM/SIGINT at every event of recover itself: the operation being undone is
    finished first (the signal is held back), the exit is 143/130, and a later recover
    (if the signal came before any work) leaves the invariant true."""
    prepared = Prepared(tmp_path, "rhel5", "hide")
    kill_at = prepared.events.index("edit") + 1  # sysfs moved, the file not yet written
    sample = tmp_path / "sample"
    base = prepared.fresh(sample)
    run = run_stopped(argv_for("rhel5", "hide", base), kill_at, workdir=sample)
    assert run.send(signal.SIGKILL) == -signal.SIGKILL
    with KillAt(0) as counting:
        recover(simulated(base))
    recover_events = counting.seen
    assert "write>" in recover_events
    for index, event in enumerate(recover_events, 1):
        signum = signal.SIGTERM if index % 2 else signal.SIGINT
        work = tmp_path / f"run{index}"
        base = prepared.fresh(work)
        killed = run_stopped(argv_for("rhel5", "hide", base), kill_at, workdir=work)
        assert killed.send(signal.SIGKILL) == -signal.SIGKILL
        run = run_stopped(["recover", "--root", str(base)], index, workdir=work)
        assert run.stopped, (event, run.stderr())
        assert run.send(signum) == 128 + signum, run.stderr()
        assert "Traceback" not in run.stderr()
        if event != "lock<":
            # Past the lock the operation was undone in full before the exit.
            assert prepared.check(base) == "before", event
        recover(simulated(base))
        assert prepared.check(base) == "before"
        shutil.rmtree(work)
