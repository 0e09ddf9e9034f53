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


def parse_marker(line: str, result: BootResult, t: float) -> StepResult | str | None:
    """Apply one console line to ``result``; return a finished step or an INFO text."""
    m = MARKER.search(line)
    if not m:
        return None
    kind, rest = m.group(1), m.group(2).strip()
    if kind in ("PASS", "FAIL"):
        parts = rest.split(" ", 2)
        try:
            secs = float(parts[1]) if len(parts) > 1 else 0.0
        except ValueError:
            secs = 0.0
        sr = StepResult(parts[0], kind == "PASS", secs, parts[2] if len(parts) > 2 else "")
        result.steps.append(sr)
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
) -> BootResult:
    """Run QEMU (own process group, no stdin), follow ``log`` live, kill it on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = BootResult(name, None, 0.0, False, log)
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
                        ev = parse_marker(
                            raw.decode(errors="replace"), result, time.monotonic() - t0
                        )
                        if ev is not None:
                            on_event(ev)
                if rc is not None:
                    if pending:
                        ev = parse_marker(pending.decode(errors="replace"), result, 0)
                        if ev is not None:
                            on_event(ev)
                    result.rc = rc
                    break
                if time.monotonic() - t0 > timeout:
                    result.timed_out = True
                    break
                time.sleep(0.3)
    finally:
        _stop(proc)
        result.wall = time.monotonic() - t0
    return result


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
