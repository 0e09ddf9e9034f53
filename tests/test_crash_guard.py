"""Kill or interrupt guard-install (libvirt hooks and xl/xm wrappers) at every
step, recover, check the one invariant (pcipass.testing.invariants): every
hook and wrapper file is as before or as after a complete run (bytes and
mode: a hook is executable only once complete), no intent is open, no
``*.pcipass-tmp`` file is left (in ``hooks/qemu.d`` libvirt would run one).
"""

from __future__ import annotations

import random
import shutil
import signal
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.testing.crash import KillAt, SimulatedKill, killed_at_line, run_stopped
from pcipass.testing.example import build_kvm
from pcipass.testing.invariants import capture, check_invariant

FOREIGN_HOOK = "#!/bin/sh\n# the site's own qemu hook\nexit 0\n"

CASES = {
    # every file at once: two hooks, two wrappers
    "install": ["guard-install", "--libvirt", "--wrap", "xl", "--wrap", "xm"],
    # someone else's qemu hook: pcipass goes to hooks/qemu.d/pcipass
    "install-beside": ["guard-install", "--libvirt"],
    "uninstall": ["guard-install", "--uninstall"],
}


class Prepared:
    def __init__(self, tmp_path: Path, case: str) -> None:
        self.case = case
        self.template = tmp_path / "template"
        host = build_kvm(self.template)
        host.mark_simulated()
        if case == "install-beside":
            host.write_file("/etc/libvirt/hooks/qemu", FOREIGN_HOOK)
            (self.template / "etc/libvirt/hooks/qemu").chmod(0o755)
        if case == "uninstall":
            assert main(self.argv("install", self.template)) == 0
        self.before = capture(self.template)
        first = tmp_path / "first"
        shutil.copytree(self.template, first, symlinks=True)
        with KillAt(0) as counting:
            assert main(self.argv(case, first)) == 0
        self.events = counting.seen
        self.done = capture(first)
        assert self.done.differences(self.before), "the command must change something"

    @staticmethod
    def argv(case: str, base: Path) -> list[str]:
        return [*CASES[case], "--root", str(base)]

    def fresh(self, work: Path) -> Path:
        base = work / "host"
        shutil.copytree(self.template, base, symlinks=True)
        return base

    def check(self, base: Path) -> str:
        return check_invariant(base, self.before, self.done)


def recover(base: Path) -> None:
    assert main(["recover", "--root", str(base)]) == 0


@pytest.mark.parametrize("case", CASES)
def test_guard_install_killed_in_process_at_every_event_then_recovered(
    tmp_path: Path, case: str
) -> None:
    ready = Prepared(tmp_path, case)
    assert "rename<" in ready.events
    for index in range(1, len(ready.events) + 1):
        work = tmp_path / f"run{index}"
        base = ready.fresh(work)
        with KillAt(index), pytest.raises(SimulatedKill):
            main(ready.argv(case, base))
        recover(base)
        try:
            ready.check(base)
        except AssertionError as error:
            event = ready.events[index - 1]
            raise AssertionError(f"killed at event {index} ({event}): {error}") from None
        shutil.rmtree(work)


@pytest.mark.parametrize("case", CASES)
def test_guard_install_killed_at_random_instants_then_recovered(tmp_path: Path, case: str) -> None:
    ready = Prepared(tmp_path, case)
    rng = random.Random(f"guard-{case}")
    for attempt in range(5):
        work = tmp_path / f"run{attempt}"
        base = ready.fresh(work)
        instant = rng.randrange(200, 12000)
        with killed_at_line(instant):
            main(ready.argv(case, base))
        recover(base)
        try:
            ready.check(base)
        except AssertionError as error:
            raise AssertionError(f"killed at line {instant}: {error}") from None
        shutil.rmtree(work)


def distinct(events: list[str]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    chosen = []
    for index, event in enumerate(events, 1):
        if event not in seen and event != "lock<":
            seen.add(event)
            chosen.append((index, event))
    return chosen


@pytest.mark.parametrize("case", CASES)
def test_guard_install_sigkill_at_every_distinct_event_then_recover(
    tmp_path: Path, case: str
) -> None:
    ready = Prepared(tmp_path, case)
    for index, event in distinct(ready.events):
        work = tmp_path / f"run{index}"
        base = ready.fresh(work)
        stopped = run_stopped(ready.argv(case, base), index, workdir=work)
        assert stopped.stopped, stopped.stderr()
        assert stopped.send(signal.SIGKILL) == -signal.SIGKILL
        recover(base)
        try:
            ready.check(base)
        except AssertionError as error:
            raise AssertionError(f"SIGKILL at event {index} ({event}): {error}") from None
        shutil.rmtree(work)


SIGNALLED = frozenset({"begin", "edit", "rename<", "rename>", "finish<"})


@pytest.mark.parametrize("case", CASES)
def test_guard_install_sigint_and_sigterm_at_every_step_roll_back(
    tmp_path: Path, case: str
) -> None:
    """Ctrl-C / SIGTERM at every journalled step and every rename: exit
    130/143, rolled back (done when it came while the intent was closed), no
    intent, no temp file, no recover needed."""
    ready = Prepared(tmp_path, case)
    for index, event in enumerate(ready.events, 1):
        if event not in SIGNALLED:
            continue
        signum = signal.SIGINT if index % 2 else signal.SIGTERM
        work = tmp_path / f"run{index}"
        base = ready.fresh(work)
        stopped = run_stopped(ready.argv(case, base), index, workdir=work)
        assert stopped.stopped, stopped.stderr()
        code = stopped.send(signum)
        where = f"{signal.Signals(signum).name} at event {index} ({event})"
        assert code == 128 + signum, (where, stopped.stderr())
        assert "Traceback" not in stopped.stderr(), where
        try:
            state = ready.check(base)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}\n{stopped.stderr()}") from None
        assert state == ("done" if event == "finish<" else "before"), where
        shutil.rmtree(work)
