"""PP007: the hotplug limiter, sequentially, across time, and under 48 concurrent processes."""

from __future__ import annotations

import multiprocessing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcipass.errors import RefusedError, UsageError
from pcipass.host.root import HostRoot
from pcipass.state.ledger import Ledger, format_time
from pcipass.state.limiter import (
    DEFAULT_BUDGET,
    DEFAULT_WINDOW_SECONDS,
    MAX_BUDGET,
    HotplugLimiter,
    HotplugLimitRefused,
)
from pcipass.testing.harness import FakeClock

FORK = multiprocessing.get_context("fork")
T0 = 1_700_000_000.0
DEV = "0000:09:00.0"


def refusal(limiter: HotplugLimiter, address: str = DEV) -> HotplugLimitRefused:
    with pytest.raises(HotplugLimitRefused) as err:
        limiter.acquire(address, "web", "attach")
    return err.value


# --- configuration ------------------------------------------------------------------------


def test_defaults_are_32_per_10_minutes(ledger: Ledger) -> None:
    limiter = HotplugLimiter(ledger)
    assert (limiter.budget, limiter.window_seconds) == (32, 600.0)
    assert (DEFAULT_BUDGET, DEFAULT_WINDOW_SECONDS, MAX_BUDGET) == (32, 600.0, 256)


def test_budget_above_the_ceiling_is_refused(ledger: Ledger) -> None:
    HotplugLimiter(ledger, budget=256)
    with pytest.raises(RefusedError) as err:
        HotplugLimiter(ledger, budget=257)
    assert err.value.rule == "PP007"
    assert str(err.value) == (
        "hotplug budget 257: [PP007] above the safety ceiling of 256 events per window "
        "(the document warns of a kernel error past 512 in a brief period) "
        "(configure at most 256)"
    )


@pytest.mark.parametrize("budget", [0, -1, True, 2.5])
def test_budget_must_be_a_positive_whole_number(ledger: Ledger, budget: object) -> None:
    with pytest.raises(UsageError, match="must be a whole number of events"):
        HotplugLimiter(ledger, budget=budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -5, 86401])
def test_window_must_be_positive_and_at_most_a_day(ledger: Ledger, window: float) -> None:
    with pytest.raises(UsageError, match="at most 86400 s"):
        HotplugLimiter(ledger, window_seconds=window)


# --- counting and the message ----------------------------------------------------------------


def test_refusal_says_how_many_and_when_and_records_nothing(
    ledger: Ledger, clock: FakeClock
) -> None:
    limiter = HotplugLimiter(ledger, budget=3, window_seconds=600)
    for kind in ("attach", "detach", "attach"):
        limiter.acquire("09:00.0", "web", kind)
        clock.now += 10
    # events at T0, T0+10, T0+20; now T0+30
    err = refusal(limiter)
    assert err.rule == "PP007"
    assert err.next_allowed == T0 + 600
    assert str(err) == (
        f"{DEV}: [PP007] 3 hotplug/unplug events in the last 10 min (budget 3); "
        f"the next one is allowed at {format_time(T0 + 600)} (in 570 s) "
        "(past 512 hotplugs in a brief period the kernel can fail; "
        "wait, or attach and detach less often)"
    )
    data = err.to_json()
    assert (data["events"], data["budget"], data["next_allowed"], data["wait_seconds"]) == (
        3,
        3,
        T0 + 600,
        570,
    )
    assert data["exit_code"] == 3
    assert [e.kind for e in limiter.recent(DEV)] == ["attach", "detach", "attach"]


def test_window_reopens_exactly_at_the_announced_time(ledger: Ledger, clock: FakeClock) -> None:
    limiter = HotplugLimiter(ledger, budget=3, window_seconds=600)
    for offset in (0, 100, 200):
        clock.now = T0 + offset
        limiter.acquire(DEV, "web", "attach")
    clock.now = T0 + 250
    announced = refusal(limiter).next_allowed
    assert announced == T0 + 600
    clock.now = announced - 1
    assert refusal(limiter).next_allowed == announced
    clock.now = announced
    limiter.acquire(DEV, "web", "detach")  # the event at T0 has left the window
    # now full again (T0+100, T0+200, T0+600): the next slot is when T0+100 leaves
    clock.now = announced + 1
    err = refusal(limiter)
    assert err.next_allowed == T0 + 700
    assert "(in 99 s)" in str(err)


def test_fractional_times_announce_a_whole_second_never_too_early(
    ledger: Ledger, clock: FakeClock
) -> None:
    limiter = HotplugLimiter(ledger, budget=1, window_seconds=60)
    clock.now = T0 + 0.25
    limiter.acquire(DEV, "web", "attach")
    clock.now = T0 + 30.5
    err = refusal(limiter)
    assert err.next_allowed == T0 + 61  # ceil(T0 + 60.25)
    assert "(in 31 s)" in str(err)  # ceil(30.5)
    clock.now = T0 + 60.2
    refusal(limiter)
    clock.now = err.next_allowed
    limiter.acquire(DEV, "web", "detach")


def test_budgets_are_per_device(ledger: Ledger) -> None:
    limiter = HotplugLimiter(ledger, budget=2)
    limiter.acquire("09:00.0", "web", "attach")
    limiter.acquire("09:00.0", "web", "detach")
    refusal(limiter, "09:00.0")
    limiter.acquire("0a:04.1", "web", "attach")
    assert len(limiter.recent("0000:0a:04.1")) == 1


def test_status_reports_use_and_next_slot(ledger: Ledger, clock: FakeClock) -> None:
    limiter = HotplugLimiter(ledger, budget=2, window_seconds=60)
    assert limiter.status(DEV).used == 0
    limiter.acquire(DEV, "web", "attach")
    status = limiter.status("9:0.0")
    assert (status.address, status.used, status.budget, status.next_allowed) == (DEV, 1, 2, None)
    clock.now += 5
    limiter.acquire(DEV, "web", "detach")
    assert limiter.status(DEV).next_allowed == T0 + 60
    clock.now = T0 + 61
    assert limiter.status(DEV).used == 1


def test_events_older_than_a_day_are_pruned(ledger: Ledger, clock: FakeClock) -> None:
    limiter = HotplugLimiter(ledger, budget=5, window_seconds=60)
    limiter.acquire(DEV, "web", "attach")
    limiter.acquire("0a:00.0", "db", "attach")
    clock.now = T0 + 3600
    limiter.acquire(DEV, "web", "detach")
    assert len(ledger.hotplug_events()) == 3  # kept for a day, for status and history
    clock.now = T0 + 86400 + 1
    limiter.acquire(DEV, "web", "attach")
    assert [(e.address, e.at) for e in ledger.hotplug_events()] == [
        (DEV, T0 + 3600),
        (DEV, T0 + 86400 + 1),
    ]


def test_unknown_kind_is_rejected(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="hotplug kind"):
        HotplugLimiter(ledger).acquire(DEV, "web", "reset")
    assert ledger.hotplug_events() == []


@settings(max_examples=40, deadline=None)
@given(
    budget=st.integers(min_value=1, max_value=6),
    window=st.integers(min_value=1, max_value=100),
    gaps=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40),
)
def test_never_more_than_budget_in_any_window(budget: int, window: int, gaps: list[int]) -> None:
    """Model check: the admitted events never exceed the budget in any window,
    and a refusal's announced time is exactly when a new event becomes possible."""
    import tempfile

    clock = FakeClock()
    with tempfile.TemporaryDirectory() as name, Ledger.open(HostRoot.at(name), clock=clock) as led:
        limiter = HotplugLimiter(led, budget=budget, window_seconds=window)
        admitted: list[float] = []
        for gap in gaps:
            clock.now += gap
            in_window = [t for t in admitted if t > clock.now - window]
            try:
                limiter.acquire(DEV, "g", "attach")
            except HotplugLimitRefused as err:
                assert len(in_window) >= budget
                assert err.events == len(in_window)
                later = [t for t in admitted if t > err.next_allowed - window]
                earlier = [t for t in admitted if t > err.next_allowed - 1 - window]
                assert len(later) < budget <= len(earlier)
            else:
                assert len(in_window) < budget
                admitted.append(clock.now)


# --- concurrency ------------------------------------------------------------------------------

PROCESSES = 48
BUDGET = 32


def _acquire_in_child(root: HostRoot, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        with Ledger.open(root, clock=lambda: T0) as led:
            HotplugLimiter(led, budget=BUDGET).acquire(DEV, "web", "attach")
        results.put(("ok", "", 0.0))  # type: ignore[attr-defined]
    except HotplugLimitRefused as exc:
        results.put((exc.rule, str(exc), exc.next_allowed))  # type: ignore[attr-defined]
    except Exception as exc:
        results.put(("error", repr(exc), 0.0))  # type: ignore[attr-defined]


def test_parallel_processes_never_exceed_the_budget(root: HostRoot) -> None:
    # No database yet: the processes also race to create it.
    barrier = FORK.Barrier(PROCESSES)
    results = FORK.Queue()
    procs = [
        FORK.Process(target=_acquire_in_child, args=(root, barrier, results))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    kinds = sorted(o[0] for o in outcomes)
    assert kinds.count("ok") == BUDGET, outcomes
    assert kinds.count("PP007") == PROCESSES - BUDGET, outcomes
    refusals = [o for o in outcomes if o[0] == "PP007"]
    for _, message, next_allowed in refusals:
        assert f"{DEV}: [PP007] 32 hotplug/unplug events in the last 10 min" in message
        assert f"allowed at {format_time(T0 + 600)} (in 600 s)" in message
        assert next_allowed == T0 + 600

    clock = FakeClock(T0 + 599)
    with Ledger.open(root, clock=clock) as led:
        assert len(led.hotplug_events(DEV)) == BUDGET
        limiter = HotplugLimiter(led, budget=BUDGET)
        with pytest.raises(HotplugLimitRefused):
            limiter.acquire(DEV, "web", "detach")
        clock.now = T0 + 600  # the time every refusal announced
        for _ in range(BUDGET):
            limiter.acquire(DEV, "web", "detach")
        with pytest.raises(HotplugLimitRefused):
            limiter.acquire(DEV, "web", "attach")
