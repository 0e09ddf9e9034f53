"""Boot one QEMU, stream its serial log, parse the agent's @@LAB markers, never leave it behind."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"@@LAB (BEGIN|PASS|FAIL|INFO|FILE|DONE|INIT|EXIT) ?(.*)")


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    why: str = ""


# A slow or busy machine can wait longer: every lab deadline is multiplied by this.
TIMEOUT_FACTOR_ENV = "PCIPASS_LAB_TIMEOUT_FACTOR"
# How long one guest step may run once the guest has reported progress: the longest steps
# (the nested L2 boot under TCG in TCG) take 70-100 s on an idle 2-core machine.
STEP_GRACE = 240.0
# A boot that keeps reporting progress still ends by this multiple of its own budget.
HARD_CAP = 3.0


def timeout_factor() -> float:
    """PCIPASS_LAB_TIMEOUT_FACTOR (a positive number), default 1."""
    text = os.environ.get(TIMEOUT_FACTOR_ENV, "").strip()
    if not text:
        return 1.0
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not factor > 0:
        raise SystemExit(f"{TIMEOUT_FACTOR_ENV}={text!r}: expected a positive number, e.g. 2")
    return factor


@dataclass
class Deadline:
    """When to give up on a boot: its budget, pushed back each time the guest reports progress.

    A fixed timeout killed the full Xen scenario on a busy machine with 25 steps passed and 8
    "not reached"; a boot that is still reporting is slow, not stuck.  Progress extends the
    deadline to ``grace`` seconds after the latest report, never beyond ``cap``.
    """

    budget: float
    grace: float = STEP_GRACE
    factor: float = 1.0
    last_progress: float = 0.0
    ends_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.ends_at = self.budget * self.factor

    @property
    def cap(self) -> float:
        return self.budget * self.factor * HARD_CAP

    def progress(self, t: float) -> None:
        self.last_progress = t
        self.ends_at = min(max(self.ends_at, t + self.grace * self.factor), self.cap)

    def expired(self, t: float) -> bool:
        return t > self.ends_at


@dataclass
class BootResult:
    name: str
    rc: int | None
    wall: float
    timed_out: bool
    log: Path
    steps: list[StepResult] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    init_at: float | None = None  # host seconds from QEMU start to the guest's /init
    done: bool = False
    exit_line: str = ""
    running: str = ""  # the step the guest began and has not finished
    timeout_why: str = ""


def parse_marker(line: str, result: BootResult, t: float) -> StepResult | str | None:
    """Apply one console line to ``result``; return a finished step or an INFO text."""
    m = MARKER.search(line)
    if not m:
        return None
    kind, rest = m.group(1), m.group(2).strip()
    if kind == "BEGIN":
        result.running = rest
        return None
    if kind in ("PASS", "FAIL"):
        parts = rest.split(" ", 2)
        try:
            secs = float(parts[1]) if len(parts) > 1 else 0.0
        except ValueError:
            secs = 0.0
        sr = StepResult(parts[0], kind == "PASS", secs, parts[2] if len(parts) > 2 else "")
        result.steps.append(sr)
        result.running = ""
        return sr
    if kind == "INFO":
        result.infos.append(rest)
        return rest
    if kind == "FILE":
        path, _, b64 = rest.partition(" ")
        try:
            result.files[path] = base64.b64decode(b64)
        except ValueError:
            result.infos.append(f"bad FILE marker for {path}")
    elif kind == "INIT":
        result.init_at = t
    elif kind == "DONE":
        result.done = True
    elif kind == "EXIT":
        result.exit_line = rest
    return None


def boot(
    name: str,
    argv: list[str],
    log: Path,
    timeout: float,
    on_event: Callable[[StepResult | str], None],
    grace: float = STEP_GRACE,
) -> BootResult:
    """Run QEMU (own process group, no stdin), follow ``log`` live, kill it when it stops
    making progress (see :class:`Deadline`; ``timeout`` is the budget before any progress)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = BootResult(name, None, 0.0, False, log)
    deadline = Deadline(timeout, grace, timeout_factor())
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with log.open("rb") as follow:
            pending = b""
            while True:
                rc = proc.poll()
                chunk = follow.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        now = time.monotonic() - t0
                        if MARKER.search(raw.decode(errors="replace")):
                            deadline.progress(now)
                        ev = parse_marker(raw.decode(errors="replace"), result, now)
                        if ev is not None:
                            on_event(ev)
                if rc is not None:
                    if pending:
                        ev = parse_marker(pending.decode(errors="replace"), result, 0)
                        if ev is not None:
                            on_event(ev)
                    result.rc = rc
                    break
                if deadline.expired(time.monotonic() - t0):
                    result.timed_out = True
                    result.timeout_why = _timeout_why(deadline, result)
                    break
                time.sleep(0.3)
    finally:
        _stop(proc)
        result.wall = time.monotonic() - t0
    return result


def _timeout_why(deadline: Deadline, result: BootResult) -> str:
    at = f"step {result.running} was running" if result.running else "no step was running"
    if deadline.ends_at >= deadline.cap:
        why = f"QEMU killed at its hard cap of {deadline.cap:.0f}s ({at})"
    elif deadline.last_progress:
        quiet = deadline.ends_at - deadline.last_progress
        why = f"QEMU killed after {quiet:.0f}s without progress ({at})"
    else:
        why = f"QEMU killed: no progress in its first {deadline.ends_at:.0f}s ({at})"
    return f"{why}; a slow machine can wait longer with {TIMEOUT_FACTOR_ENV}=2"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the QEMU we started (its own process group, by id) if it is still running."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
