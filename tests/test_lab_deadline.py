"""The lab's boot deadline follows progress: a slow guest that reports steps is not killed.

A stand-in for QEMU (a Python process printing the guest agent's markers on its "console")
drives :func:`labkit.qemu.boot`, with budgets of a fraction of a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parent.parent / "lab"
sys.path.insert(0, str(LAB))

from labkit import qemu  # noqa: E402


def console(script: str) -> list[str]:
    """argv of a fake QEMU whose serial console runs ``script`` (``say(kind, text)``, sleep)."""
    prelude = (
        "import sys, time\n"
        "def say(kind, text=''):\n"
        "    sys.stdout.write(f'\\n@@LAB {kind} {text}\\n'); sys.stdout.flush()\n"
    )
    return [sys.executable, "-c", prelude + script]


def boot(argv: list[str], tmp_path: Path, budget: float, grace: float) -> qemu.BootResult:
    return qemu.boot("fake", argv, tmp_path / "fake.log", budget, lambda ev: None, grace=grace)


def test_progress_pushes_the_deadline_back(tmp_path: Path) -> None:
    # 8 steps of 0.4 s: 3.2 s in all, past the 1.5 s budget (cap 4.5 s), each inside the grace.
    script = (
        "say('INIT')\n"
        "for i in range(8):\n"
        "    say('BEGIN', f's{i}'); time.sleep(0.4); say('PASS', f's{i} 0.4')\n"
        "say('DONE')\n"
    )
    result = boot(console(script), tmp_path, budget=1.5, grace=1.5)
    assert not result.timed_out
    assert result.done and len(result.steps) == 8


def test_a_stuck_step_is_named_in_the_timeout(tmp_path: Path) -> None:
    script = "say('INIT')\nsay('BEGIN', 'nested-l2-boot')\ntime.sleep(30)\n"
    result = boot(console(script), tmp_path, budget=0.5, grace=0.8)
    assert result.timed_out
    assert "without progress" in result.timeout_why
    assert "step nested-l2-boot was running" in result.timeout_why
    assert qemu.TIMEOUT_FACTOR_ENV in result.timeout_why


def test_a_silent_boot_ends_at_its_budget(tmp_path: Path) -> None:
    result = boot(console("time.sleep(30)\n"), tmp_path, budget=0.5, grace=10.0)
    assert result.timed_out
    assert "no progress in its first" in result.timeout_why
    assert result.wall < 10


def test_progress_never_goes_past_the_hard_cap() -> None:
    deadline = qemu.Deadline(budget=10.0, grace=100.0)
    deadline.progress(5.0)
    assert deadline.ends_at == deadline.cap == 10.0 * qemu.HARD_CAP
    assert not deadline.expired(29.0) and deadline.expired(31.0)


def test_the_factor_stretches_every_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qemu.TIMEOUT_FACTOR_ENV, "2.5")
    factor = qemu.timeout_factor()
    deadline = qemu.Deadline(budget=100.0, grace=10.0, factor=factor)
    assert deadline.ends_at == 250.0
    deadline.progress(240.0)
    assert deadline.ends_at == 265.0


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan"])
def test_a_bad_factor_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(qemu.TIMEOUT_FACTOR_ENV, bad)
    with pytest.raises(SystemExit, match=qemu.TIMEOUT_FACTOR_ENV):
        qemu.timeout_factor()
