"""Kill ``hide``/``unhide --persist --reload-driver`` at every event, module loads included,
then recover.

The invariant (pcipass.testing.invariants): exactly as before or fully done,
no open intent, no temporary file.  Besides the transaction's events
(testing/crash.py), this test counts ``module<``/``module>`` around every
module load and unload of the fake kernel, so a kill between ``modprobe -r
bnx2`` and ``modprobe bnx2`` (the host's NICs unbound, the module gone) is
visited too: ``recover`` must load the module again and put every function
back.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host.context import Host
from pcipass.ops.recover import recover
from pcipass.testing.crash import EventCounter, KillAt, SimulatedKill
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.fakehost import FakeHost, FakeKernel, FakeRunner
from pcipass.testing.invariants import capture, check_invariant


def idle_host(base: Path) -> Path:
    """The document's host with the uplink on the e1000: bnx2's other function is idle."""
    fake = build_rhel5_xen(base)
    fake.routes.clear()
    fake.local_v4.clear()
    fake.add_route("eth2", default=True, network="192.168.122.0", prefix=24, local="192.168.122.10")
    fake.mark_simulated()
    return base


def simulated(base: Path) -> Host:
    kernel = FakeKernel(FakeHost.load(base))
    return Host.open(str(base), runner=FakeRunner(kernel), writer=kernel)


def argv(base: Path, verb: str = "hide") -> list[str]:
    return [verb, "--persist", "--reload-driver", "0000:09:00.0", "--root", str(base)]


def hidden_host(base: Path) -> Path:
    """The idle host after ``hide --persist --reload-driver``: 09:00.0 on pciback by hide=."""
    idle_host(base)
    assert main(argv(base)) == 0
    assert FakeHost.load(base).bound_driver("0000:09:00.0") == "pciback"
    return base


@contextlib.contextmanager
def module_events(counter: EventCounter) -> Iterator[None]:
    load, unload = FakeKernel.load_module, FakeKernel.unload_module

    def hooked_load(self: FakeKernel, module: str, params: Mapping[str, str] | None = None) -> None:
        counter("module<")
        load(self, module, params)
        counter("module>")

    def hooked_unload(self: FakeKernel, module: str) -> None:
        counter("module<")
        unload(self, module)
        counter("module>")

    FakeKernel.load_module = hooked_load  # type: ignore[method-assign]
    FakeKernel.unload_module = hooked_unload  # type: ignore[method-assign]
    try:
        yield
    finally:
        FakeKernel.load_module = load  # type: ignore[method-assign]
        FakeKernel.unload_module = unload  # type: ignore[method-assign]


class KillWithModules(KillAt):
    def __enter__(self) -> KillWithModules:
        super().__enter__()
        self._stack.enter_context(module_events(self.counter))
        return self


@pytest.mark.parametrize("verb", ["hide", "unhide"])
def test_reload_killed_at_every_event_then_recovered(tmp_path: Path, verb: str) -> None:
    """unhide: the stub's reload (modprobe -r pciback, modprobe pciback, drivers_probe)
    gives 09:00.0 back to bnx2; a kill anywhere leaves it on pciback or on bnx2."""
    template = (idle_host if verb == "hide" else hidden_host)(tmp_path / "template")
    before = capture(template)
    copy = tmp_path / "done"
    shutil.copytree(template, copy, symlinks=True)
    with KillWithModules(0) as counting:
        assert main(argv(copy, verb)) == 0
    events = counting.seen
    done = capture(copy)
    assert done.differences(before)
    assert events.count("module<") >= 2, events  # modprobe -r bnx2, modprobe bnx2 (+ pciback)
    outcomes = set()
    for index in range(1, len(events) + 1):
        work = tmp_path / f"run{index}"
        base = work / "host"
        shutil.copytree(template, base, symlinks=True)
        with KillWithModules(index), pytest.raises(SimulatedKill):
            main(argv(base, verb))
        recover(simulated(base))
        outcomes.add(check_invariant(base, before, done))
        assert recover(simulated(base)) == []  # idempotent
        host = FakeHost.load(base)
        assert host.bound_driver("0000:05:00.0") == "bnx2", (
            f"killed at {index} ({events[index - 1]})"
        )
        shutil.rmtree(work)
    assert "before" in outcomes
    final = FakeHost.load(copy).bound_driver("0000:09:00.0")
    assert final == ("pciback" if verb == "hide" else "bnx2")
