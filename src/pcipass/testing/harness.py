"""A fake host, its fake kernel and runner, and the Host pcipass sees over them."""

from __future__ import annotations

from pathlib import Path

from pcipass.host.context import Host
from pcipass.record import dataclass, field
from pcipass.testing.fakehost import FakeHost, FakeKernel, FakeRunner


class FakeClock:
    """A clock tests move by hand (``clock.now += 600``)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Lab:
    fake: FakeHost
    kernel: FakeKernel
    runner: FakeRunner
    host: Host
    clock_now: list[float] = field(default_factory=lambda: [1_800_000_000.0])

    @property
    def base(self) -> Path:
        return self.fake.base

    def tick(self, seconds: float) -> None:
        self.clock_now[0] += seconds


def make_lab(fake: FakeHost) -> Lab:
    kernel = FakeKernel(fake)
    runner = FakeRunner(kernel)
    now = [1_800_000_000.0]
    host = Host.open(fake.base, runner=runner, writer=kernel, clock=lambda: now[0])
    return Lab(fake, kernel, runner, host, now)


def inserted(before: bytes, after: bytes) -> bytes:
    """The bytes ``after`` adds to ``before``, asserting nothing else changed:
    cutting one contiguous region out of ``after`` must give ``before``."""
    start, end = _inserted_region(before, after)
    return after[start:end]


def _inserted_region(before: bytes, after: bytes) -> tuple[int, int]:
    prefix = 0
    limit = min(len(before), len(after))
    while prefix < limit and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < limit - prefix
        and before[len(before) - 1 - suffix] == after[len(after) - 1 - suffix]
    ):
        suffix += 1
    assert prefix + suffix == len(before), "bytes outside the edit changed"
    return prefix, len(after) - suffix


def inserted_after_a_comma(before: bytes, after: bytes) -> bytes:
    """Like :func:`inserted`, but ``after`` may also add one comma on the line
    before the inserted bytes: the xl/xm editor puts a comma right after a
    last list entry that had none (a comment after it stays on its line), then
    adds the new entry on the next line.  Nothing else may change."""
    try:
        return inserted(before, after)
    except AssertionError:
        pass
    for at in range(len(after)):
        if after[at : at + 1] != b",":
            continue
        without = after[:at] + after[at + 1 :]
        try:
            start, end = _inserted_region(before, without)
        except AssertionError:
            continue
        if at <= start and without[at:start].count(b"\n") <= 1:
            return without[start:end]
    raise AssertionError("bytes outside the edit changed")


def missing_members(obj: object, protocol: type) -> list[str]:
    """The public members ``protocol`` declares that ``obj`` lacks: what
    ``isinstance`` checks for a runtime-checkable protocol (pcipass's protocols
    are plain classes at run time, so that typing is not imported)."""
    declared = [name for name in vars(protocol) if not name.startswith("_")]
    return [name for name in declared if not hasattr(obj, name)]
