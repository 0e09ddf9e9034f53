"""What lab steps are made of: running commands (pcipass among them), reading sysfs, markers.

Standard library only (the guest's Debian python3.11).  Step modules (``steps_xen.py``,
``steps_kvm.py``) import from here and from :mod:`registry`; the agent imports them all and runs a
plan, so nothing imports the agent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StepFailed(Exception):
    """A step's check did not hold; the message says what was expected and what was seen."""


class StepTimeout(Exception):
    """A step ran past its time budget."""


@dataclass
class Result:
    argv: list[str]
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return (self.out + self.err).strip()

    def tail(self, n: int = 3) -> str:
        lines = [ln for ln in self.text.splitlines() if ln.strip()]
        return " | ".join(lines[-n:])

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as exc:
            raise StepFailed(
                f"{' '.join(self.argv[3:] or self.argv)}: stdout is not JSON ({exc}): "
                f"{self.out[:200]!r}"
            ) from exc


def say(kind: str, text: str) -> None:
    # One write per marker line so kernel messages cannot split it.
    sys.stdout.write(f"\n@@LAB {kind} {text}\n")
    sys.stdout.flush()


def info(step_name: str, text: str) -> None:
    for line in text.splitlines() or [""]:
        say("INFO", f"{step_name}: {line}")


def run(argv: list[str], timeout: float = 60, stdin: str | None = None) -> Result:
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return Result(argv, 127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Result(argv, 124, out, f"timed out after {timeout:.0f}s")
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def must(argv: list[str], timeout: float = 60) -> Result:
    res = run(argv, timeout)
    if res.rc != 0:
        raise StepFailed(f"`{' '.join(argv)}` exit {res.rc}: {res.tail()}")
    return res


def pcipass(*args: str, timeout: float = 120, expect: int | None = 0) -> Result:
    """Run ``python3 -m pcipass ARGS``; with ``expect`` set, anything else FAILs the step.

    A command the CLI does not know yet (argparse exit 2 "invalid choice") or a CLI that cannot be
    imported is reported as such, so an unfinished command reads clearly in the lab output.
    """
    res = run([sys.executable, "-m", "pcipass", *args], timeout)
    shown = "pcipass " + " ".join(args)
    if res.rc == 2 and "invalid choice" in res.err:
        raise StepFailed(f"{shown}: command not available in pcipass yet ({res.tail(1)})")
    if res.rc == 2 and "unrecognized arguments" in res.err:
        raise StepFailed(f"{shown}: option not available in pcipass yet ({res.tail(1)})")
    if "Traceback (most recent call last)" in res.err:
        raise StepFailed(f"{shown}: crashed, exit {res.rc}: {res.tail(1)}")
    if expect is not None and res.rc != expect:
        raise StepFailed(f"{shown}: exit {res.rc}, expected {expect}: {res.tail()}")
    return res


def read(path: str | Path, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def driver(bdf: str) -> str | None:
    """The driver bound to ``bdf``, from the kernel's own ``driver`` symlink."""
    link = Path("/sys/bus/pci/devices") / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def expect_driver(bdf: str, wanted: str | None, why: str = "") -> None:
    got = driver(bdf)
    if got != wanted:
        raise StepFailed(f"{bdf} driver is {got}, expected {wanted}{' ' + why if why else ''}")


def wait_for(what: str, cond: Callable[[], bool], timeout: float, poll: float = 0.5) -> float:
    """Wait until ``cond()``; return seconds waited, FAIL the step on timeout."""
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def find_device(doc: Any, bdf: str) -> dict[str, Any]:
    """The JSON object describing ``bdf`` anywhere in a pcipass --json document."""
    short = bdf[5:] if bdf.startswith("0000:") else bdf
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("address", "bdf", "slot", "device"):
                if node.get(key) in (bdf, short):
                    return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise StepFailed(f"{bdf} not found in the JSON output")


def mentions(doc: Any, *needles: str) -> bool:
    text = json.dumps(doc) if not isinstance(doc, str) else doc
    return all(n.lower() in text.lower() for n in needles)


def emit_file(path: str, bundle: str = "") -> None:
    """Send a file to the host over the console (base64), e.g. state to carry to the next boot.

    ``bundle`` names which later boot gets it (the host's scenario decides); "" is the default.
    """
    data = Path(path).read_bytes()
    key = f"{bundle}:{path}" if bundle else path
    say("FILE", f"{key} {base64.b64encode(data).decode()}")


def forecast_drivers(doc: Any) -> dict[str, Any]:
    """address -> driver from ``pcipass check --next-boot --json``."""
    devices = doc.get("next_boot", {}).get("devices", []) if isinstance(doc, dict) else []
    return {d.get("address"): d.get("driver") for d in devices if isinstance(d, dict)}


def forecast_next_boot(path: str, expected: dict[str, str]) -> str:
    """#16: pcipass's forecast for the next boot, checked for ``expected`` (address -> driver),
    kept at ``path`` and carried to the next boot to be compared there."""
    res = pcipass("check", "--next-boot", "--json", expect=None)
    doc = res.json()
    if res.rc not in (0, 1) or mentions(doc, "PP110"):
        raise StepFailed(f"check --next-boot exit {res.rc}: {res.out[:300]}")
    drivers = forecast_drivers(doc)
    if any(drivers.get(bdf) != want for bdf, want in expected.items()):
        raise StepFailed(f"check --next-boot forecasts {sorted(expected)}: {drivers}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(res.out)
    emit_file(path)
    said = ", ".join(f"{bdf} -> {want}" for bdf, want in expected.items())
    return f"forecast: {said} ({len(drivers)} devices)"


def forecast_agrees(path: str) -> str:
    """The forecast the previous boot kept at ``path`` against what this kernel bound, device by
    device."""
    if not Path(path).exists():
        raise StepFailed(f"no {path} came from the first boot")
    predicted = forecast_drivers(json.loads(Path(path).read_text()))
    actual = {d.name: driver(d.name) for d in sorted(Path("/sys/bus/pci/devices").iterdir())}
    wrong = [
        f"{bdf}: forecast {predicted.get(bdf)}, bound {actual.get(bdf)}"
        for bdf in sorted(set(predicted) | set(actual))
        if predicted.get(bdf) != actual.get(bdf)
    ]
    if wrong:
        raise StepFailed("the forecast missed: " + "; ".join(wrong))
    return f"all {len(actual)} devices as forecast"


LEDGER = "/var/lib/pcipass/state.db"
SEEDED = "lab-seeded"


@contextlib.contextmanager
def hotplug_budget_used(address: str, budget: int = 32) -> Iterator[int]:
    """Top pcipass's ledger up to ``budget`` recent hotplug events for ``address``.

    Reaching PP007's default budget (32 events / 10 min) for real costs minutes of hotplug
    under TCG; the seeded rows (guest 'lab-seeded') are removed again on the way out.
    """
    db = sqlite3.connect(LEDGER, timeout=10)
    try:
        (have,) = db.execute(
            "SELECT count(*) FROM hotplug_events WHERE address = ?", (address,)
        ).fetchone()
        now = time.time()
        with db:
            db.executemany(
                "INSERT INTO hotplug_events (address, guest, kind, at) VALUES (?, ?, ?, ?)",
                [(address, SEEDED, "attach", now - 60 - i) for i in range(budget - have)],
            )
        yield budget - have
    finally:
        with db:
            db.execute("DELETE FROM hotplug_events WHERE guest = ?", (SEEDED,))
        db.close()
