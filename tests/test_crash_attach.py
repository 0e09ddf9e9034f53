"""Kill or interrupt attach and detach at every step, recover, check the one invariant.

The same loops as tests/test_crash_consistency.py (hide/unhide), for a device
given to a guest and taken back: by its configuration file (xl, xm, a libvirt
domain file), and ``--live`` through the fake xl/xm/virsh
(pcipass.testing.crash.shared_toolstack, whose truth outlives every process)
and through QMP (pcipass.testing.fakeqmp).  Each run is killed (in process at
every event and at random instants, a real SIGKILL at every distinct event)
or interrupted (SIGINT/SIGTERM at every journalled step, file rename and
toolstack call), then ``recover`` runs, and one invariant must hold
(pcipass.testing.invariants): the guest file, the ledger's owner and the
toolstack's truth are *together* as before or as after a complete run, no
owner is left "maybe", no intent is open, no temporary file is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.testing.crash import (
    KillAt,
    SimulatedKill,
    killed_at_line,
    read_toolstack,
    run_stopped,
    shared_toolstack,
)
from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.fakeqmp import FakeQmp
from pcipass.testing.invariants import capture, check_invariant

XL_PV = 'name = "deb"\ntype = "pv"\nkernel = "/boot/vmlinuz-6.1.0-18-amd64"\nmemory = 512\n'
QEMU_ARGV = ["/usr/bin/qemu-system-x86_64", "-name", "l2", "-qmp", "unix:/run/l2.qmp,server,nowait"]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "rhel5" or "kvm"
    device: str
    guest: str
    live: bool = False
    qmp: bool = False
    extra_files: dict[str, str] = field(default_factory=dict)

    def build(self, base: Path) -> Path:
        host = (build_rhel5_xen if self.kind == "rhel5" else build_kvm)(base)
        for path, text in self.extra_files.items():
            host.write_file(path, text)
        if self.qmp:
            host.write_file("/proc/4242/cmdline", "\0".join(QEMU_ARGV) + "\0")
            (base / "run").mkdir(exist_ok=True)
        host.mark_simulated()
        backend = "pciback" if self.kind == "rhel5" else "vfio"
        assert main(["hide", "--now", self.device, "--backend", backend, "--root", str(base)]) == 0
        return base

    def argv(self, verb: str, base: Path) -> list[str]:
        args = [verb, self.device, self.guest, "--root", str(base)]
        if verb == "attach" and self.kind == "rhel5":
            args.append("--accept-pv-dma-risk")
        return args + (["--live"] if self.live else [])


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("xm", "rhel5", "0000:09:00.0", "rhel5pv"),
        Scenario("xm-live", "rhel5", "0000:09:00.0", "rhel5pv", live=True),
        Scenario("xl", "rhel5", "0000:09:00.0", "deb", extra_files={"/etc/xen/deb.cfg": XL_PV}),
        Scenario(
            "xl-live",
            "rhel5",
            "0000:09:00.0",
            "deb",
            live=True,
            extra_files={"/etc/xen/deb.cfg": XL_PV},
        ),
        Scenario("libvirt", "kvm", "0000:02:10.0", "win10"),
        Scenario("libvirt-live", "kvm", "0000:02:10.0", "win10", live=True),
        Scenario("qmp", "kvm", "0000:02:10.0", "l2", live=True, qmp=True),
    )
}


def copy_tree(source: Path, target: Path) -> None:
    """Copy a host tree, leaving out sockets (a fake QEMU's, made anew per run)."""

    def sockets(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]

    shutil.copytree(source, target, symlinks=True, ignore=sockets)


class Run:
    """One copy of the prepared host: its tree, its toolstack truth (a JSON
    file, and a fake QEMU listening in the tree for QMP scenarios)."""

    def __init__(self, work: Path, template: Path, toolstack: Path, qemu: dict[str, str] | None):
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.base = work / "host"
        copy_tree(template, self.base)
        self.toolstack = work / "toolstack.json"
        if toolstack.exists():
            shutil.copy(toolstack, self.toolstack)
        self.qemu: FakeQmp | None = None
        if qemu is not None:
            # Bound through /proc/self/fd: a unix socket path is short (108 bytes).
            fd = os.open(self.base / "run", os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.qemu = FakeQmp(Path(f"/proc/self/fd/{fd}/l2.qmp"), qemu)
            finally:
                os.close(fd)

    def truth(self) -> frozenset[str]:
        facts = {
            f"{guest} holds {address}"
            for guest, held in read_toolstack(self.toolstack).items()
            for address in held
        }
        if self.qemu is not None:
            facts |= {f"l2 holds {address}" for address in self.qemu.hosts()}
        return frozenset(facts)

    def close(self) -> None:
        if self.qemu is not None:
            self.qemu.close()

    def cli(self, argv: list[str]) -> int:
        with shared_toolstack(self.toolstack):
            return main(argv)

    def recover(self) -> None:
        assert self.cli(["recover", "--root", str(self.base)]) == 0


class Prepared:
    """A tree ready for ``verb`` (copied for each run), the state before it,
    the state after a complete run, and the events of that run."""

    def __init__(self, tmp_path: Path, scenario: Scenario, verb: str) -> None:
        self.scenario, self.verb = scenario, verb
        self.template = scenario.build(tmp_path / "template")
        self.toolstack = tmp_path / "toolstack.json"
        self.qemu: dict[str, str] | None = {} if scenario.qmp else None
        if verb == "detach":
            setup = self._run(tmp_path / "setup")
            assert setup.cli(scenario.argv("attach", setup.base)) == 0
            self._adopt(setup)
        first = self._run(tmp_path / "first")
        self.before = capture(first.base, first.truth)
        with KillAt(0, live=True) as counting:
            assert first.cli(scenario.argv(verb, first.base)) == 0
        self.events = counting.seen
        self.done = capture(first.base, first.truth)
        first.close()
        assert self.done.differences(self.before), "the command must change something"

    def _run(self, work: Path) -> Run:
        return Run(work, self.template, self.toolstack, self.qemu)

    def _adopt(self, run: Run) -> None:
        """Make ``run``'s host the template of every later run."""
        shutil.rmtree(self.template)
        copy_tree(run.base, self.template)
        if run.toolstack.exists():
            shutil.copy(run.toolstack, self.toolstack)
        if run.qemu is not None:
            with run.qemu._lock:
                self.qemu = dict(run.qemu.devices)
        run.close()

    @contextlib.contextmanager
    def fresh(self, work: Path) -> Iterator[Run]:
        run = self._run(work)
        try:
            yield run
        finally:
            run.close()
            shutil.rmtree(work)

    def check(self, run: Run) -> str:
        return check_invariant(run.base, self.before, self.done, run.truth)


CASES = [(name, verb) for name in SCENARIOS for verb in ("attach", "detach")]
# For a process stopped there, the same instant as the event before it.
SAME_INSTANT = frozenset({"write<", "lock<"})
# Where a signal is sent: every journalled step, file rename and toolstack call.
SIGNALLED = frozenset(
    {"begin", "step", "edit", "rename<", "rename>", "finish<", "hotplug<", "hotplug>"}
)


@pytest.fixture(scope="module")
def prepared() -> Callable[[Path, str, str], Prepared]:
    """Prepared trees, built once per (scenario, verb) for the module's tests."""
    cache: dict[tuple[str, str], Prepared] = {}

    def get(tmp_root: Path, name: str, verb: str) -> Prepared:
        if (name, verb) not in cache:
            cache[(name, verb)] = Prepared(tmp_root / f"{name}-{verb}", SCENARIOS[name], verb)
        return cache[(name, verb)]

    return get


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.mark.parametrize(("name", "verb"), CASES)
def test_killed_in_process_at_every_event_then_recovered(
    tmp_path: Path,
    prepared: Callable[[Path, str, str], Prepared],
    shared_tmp: Path,
    name: str,
    verb: str,
) -> None:
    ready = prepared(shared_tmp, name, verb)
    scenario = ready.scenario
    for index in range(1, len(ready.events) + 1):
        with ready.fresh(tmp_path / f"run{index}") as run:
            with KillAt(index, live=True), pytest.raises(SimulatedKill):
                run.cli(scenario.argv(verb, run.base))
            run.recover()
            try:
                ready.check(run)
            except AssertionError as error:
                raise AssertionError(
                    f"killed at event {index} ({ready.events[index - 1]}): {error}"
                ) from None
            run.recover()  # idempotent
            ready.check(run)


@pytest.mark.parametrize(("name", "verb"), CASES)
def test_killed_at_random_instants_then_recovered(
    tmp_path: Path,
    prepared: Callable[[Path, str, str], Prepared],
    shared_tmp: Path,
    name: str,
    verb: str,
) -> None:
    """Any line of pcipass, not only the events (seeded: reproducible)."""
    ready = prepared(shared_tmp, name, verb)
    rng = random.Random(f"{name}-{verb}")
    for attempt in range(5):
        with ready.fresh(tmp_path / f"run{attempt}") as run:
            instant = rng.randrange(200, 30000)
            with killed_at_line(instant):
                run.cli(ready.scenario.argv(verb, run.base))
            run.recover()
            try:
                ready.check(run)
            except AssertionError as error:
                raise AssertionError(f"killed at line {instant}: {error}") from None


def distinct(events: list[str]) -> list[tuple[int, str]]:
    """The first instant of each kind of event (a real process costs more)."""
    seen: set[str] = set()
    chosen = []
    for index, event in enumerate(events, 1):
        if event not in seen and event not in SAME_INSTANT:
            seen.add(event)
            chosen.append((index, event))
    return chosen


@pytest.mark.parametrize(("name", "verb"), CASES)
def test_sigkill_at_every_distinct_event_then_recover(
    tmp_path: Path,
    prepared: Callable[[Path, str, str], Prepared],
    shared_tmp: Path,
    name: str,
    verb: str,
) -> None:
    """A real kill -9 (no finally, no cleanup, temp files stay)."""
    ready = prepared(shared_tmp, name, verb)
    for index, event in distinct(ready.events):
        with ready.fresh(tmp_path / f"run{index}") as run:
            stopped = run_stopped(
                ready.scenario.argv(verb, run.base),
                index,
                workdir=run.work,
                live=True,
                toolstack=run.toolstack,
            )
            assert stopped.stopped, stopped.stderr()
            assert stopped.send(signal.SIGKILL) == -signal.SIGKILL
            run.recover()
            try:
                ready.check(run)
            except AssertionError as error:
                raise AssertionError(f"SIGKILL at event {index} ({event}): {error}") from None


@pytest.mark.parametrize(("name", "verb"), CASES)
def test_sigint_and_sigterm_at_every_step_roll_back_or_finish(
    tmp_path: Path,
    prepared: Callable[[Path, str, str], Prepared],
    shared_tmp: Path,
    name: str,
    verb: str,
) -> None:
    """Ctrl-C / SIGTERM at every journalled step, file rename and toolstack
    call: exit 130/143, no traceback, and with no recover the invariant holds."""
    ready = prepared(shared_tmp, name, verb)
    for index, event in enumerate(ready.events, 1):
        if event not in SIGNALLED:
            continue
        signum = signal.SIGINT if index % 2 else signal.SIGTERM
        with ready.fresh(tmp_path / f"run{index}") as run:
            stopped = run_stopped(
                ready.scenario.argv(verb, run.base),
                index,
                workdir=run.work,
                live=True,
                toolstack=run.toolstack,
            )
            assert stopped.stopped, stopped.stderr()
            code = stopped.send(signum)
            where = f"{signal.Signals(signum).name} at event {index} ({event})"
            assert code in (0, 128 + signum), (where, code, stopped.stderr())
            assert "Traceback" not in stopped.stderr(), where
            try:
                ready.check(run)
            except AssertionError as error:
                raise AssertionError(f"{where}: {error}\n{stopped.stderr()}") from None


# --- recover itself, killed mid-way and run again ---------------------------------------

RECOVER_CASES = [
    ("xm-live", "attach"),
    ("xm-live", "detach"),
    ("libvirt", "attach"),
    ("qmp", "detach"),
]


def _interrupted_at(ready: Prepared) -> int:
    """Where the command is killed first: after the hotplug (recover must roll
    forward) for a live command, after the file edit was journalled otherwise."""
    wanted = "hotplug>" if ready.scenario.live else "edit"
    return ready.events.index(wanted) + 1


@pytest.mark.parametrize(("name", "verb"), RECOVER_CASES)
def test_recover_killed_at_every_event_then_run_again(
    tmp_path: Path,
    prepared: Callable[[Path, str, str], Prepared],
    shared_tmp: Path,
    name: str,
    verb: str,
) -> None:
    ready = prepared(shared_tmp, name, verb)
    scenario, first_kill = ready.scenario, _interrupted_at(ready)

    def killed_command(run: Run) -> None:
        with KillAt(first_kill, live=True), pytest.raises(SimulatedKill):
            run.cli(scenario.argv(verb, run.base))

    with ready.fresh(tmp_path / "count") as run:
        killed_command(run)
        with KillAt(0, live=True) as counting:
            run.recover()
        recover_events = counting.seen
        assert ready.check(run) == ("done" if scenario.live else "before")
    assert "ledger>" in recover_events
    for index in range(1, len(recover_events) + 1):
        with ready.fresh(tmp_path / f"run{index}") as run:
            killed_command(run)
            with KillAt(index, live=True), pytest.raises(SimulatedKill):
                run.recover()
            run.recover()
            try:
                ready.check(run)
            except AssertionError as error:
                event = recover_events[index - 1]
                raise AssertionError(f"recover killed at {index} ({event}): {error}") from None
    for index, event in distinct(recover_events):
        with ready.fresh(tmp_path / f"real{index}") as run:
            killed_command(run)
            stopped = run_stopped(
                ["recover", "--root", str(run.base)],
                index,
                workdir=run.work,
                live=True,
                toolstack=run.toolstack,
            )
            assert stopped.stopped, stopped.stderr()
            assert stopped.send(signal.SIGKILL) == -signal.SIGKILL
            run.recover()
            try:
                ready.check(run)
            except AssertionError as error:
                raise AssertionError(f"recover SIGKILLed at {index} ({event}): {error}") from None


# --- --connect: libvirt's test driver, in this process ----------------------------------

CONNECT_URI = "test:///default"  # keeps its domains while a connection is held (drvtest)
CONNECT_GUEST = "test"


@pytest.fixture
def libvirt_held() -> Iterator[object]:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open(CONNECT_URI)
    yield conn
    conn.close()


def _connect_truth(conn: object) -> Callable[[], frozenset[str]]:
    """What libvirt holds: the devices of the persistent definition and of the
    running domain, both as libvirt reports them."""
    import libvirt

    from pcipass.guests.libvirt_xml import parse_domain_xml

    def truth() -> frozenset[str]:
        dom = conn.lookupByName(CONNECT_GUEST)  # type: ignore[attr-defined]
        facts = set()
        for flag, where in ((libvirt.VIR_DOMAIN_XML_INACTIVE, "defined"), (0, "live")):
            domain = parse_domain_xml(str(dom.XMLDesc(flag)).encode(), where)
            facts |= {f"{where} {d.spec_text}" for d in domain.devices()}
        return frozenset(facts)

    return truth


@pytest.mark.parametrize("verb", ["attach", "detach"])
def test_connect_killed_at_every_event_and_random_instants_then_recovered(
    tmp_path: Path, libvirt_held: object, verb: str
) -> None:
    """attach/detach --connect (without --live: the test driver cannot hot-plug
    a PCI device); the definition libvirt holds is part of the invariant."""
    truth = _connect_truth(libvirt_held)
    scenario = SCENARIOS["libvirt"]
    template = scenario.build(tmp_path / "template")

    def argv(action: str, base: Path) -> list[str]:
        return [
            action,
            "--connect",
            CONNECT_URI,
            scenario.device,
            CONNECT_GUEST,
            "--root",
            str(base),
        ]

    def reset(base: Path) -> None:
        """The domain as the template expects it (attached for a detach run)."""
        dom = libvirt_held.lookupByName(CONNECT_GUEST)  # type: ignore[attr-defined]
        copy = tmp_path / "reset"
        copy_tree(template, copy)
        main(
            [
                "detach",
                "--connect",
                CONNECT_URI,
                scenario.device,
                CONNECT_GUEST,
                "--root",
                str(copy),
            ]
        )
        shutil.rmtree(copy)
        if verb == "detach":
            assert main(argv("attach", base)) == 0
        assert dom is not None

    first = tmp_path / "first"
    copy_tree(template, first)
    reset(first)
    before = capture(first, truth)
    with KillAt(0, live=True) as counting:
        assert main(argv(verb, first)) == 0
    done = capture(first, truth)
    assert done.differences(before)
    instants: list[tuple[str, int]] = [("event", i) for i in range(1, len(counting.seen) + 1)]
    rng = random.Random(f"connect-{verb}")
    instants += [("line", rng.randrange(100, 8000)) for _ in range(12)]
    for n, (how, at) in enumerate(instants):
        base = tmp_path / f"run{n}"
        copy_tree(template, base)
        reset(base)
        if how == "event":
            with KillAt(at, live=True), pytest.raises(SimulatedKill):
                main(argv(verb, base))
        else:
            with killed_at_line(at):
                main(argv(verb, base))
        assert main(["recover", "--root", str(base)]) == 0
        try:
            check_invariant(base, before, done, truth)
        except AssertionError as error:
            raise AssertionError(f"killed at {how} {at}: {error}") from None
        shutil.rmtree(base)


# --- --connect under SIGINT/SIGTERM, in this process ------------------------------------


class SignalAt:
    """``with SignalAt({k: SIGINT, k + 1: SIGTERM}): main(...)`` sends each
    signal to this very process from the hook of event k (the event hooks of
    :class:`KillAt`), with pcipass's handlers installed: the handler raises
    into the command exactly as a signal from outside would (libvirt's test
    driver lives in this process, so no child can be signalled instead)."""

    def __init__(self, plan: dict[int, signal.Signals]) -> None:
        self.plan = plan
        self.sent: list[tuple[int, str, str]] = []
        self._kill = KillAt(0, live=True)
        self._kill.counter.on_event = self._event

    def _event(self, index: int, name: str) -> None:
        signum = self.plan.get(index)
        if signum is not None:
            self.sent.append((index, name, signum.name))
            os.kill(os.getpid(), signum)

    def __enter__(self) -> SignalAt:
        self._kill.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill.__exit__(*exc)


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """main() installs pcipass's SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("live", [False, True], ids=["defined", "live"])
@pytest.mark.parametrize("verb", ["attach", "detach"])
def test_connect_sigint_and_sigterm_at_every_event_roll_back_or_finish(
    tmp_path: Path,
    libvirt_held: object,
    own_signal_handlers: None,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    live: bool,
) -> None:
    """attach/detach --connect [--live], a real SIGINT or SIGTERM at every
    event and the other one at the next event (an impatient second Ctrl-C,
    often inside the rollback): exit 130/143 without a traceback, and with no
    recover the ledger, the tree and libvirt's persistent and live XML are
    together as before or as after a complete run.  (The test driver refuses
    a live PCI hot-plug, so a complete attach --live fails and leaves
    "before": the signals then land around libvirt's refusal and its
    rollback; detach --live finds the device not in the running domain and
    edits the definition only.)"""
    truth = _connect_truth(libvirt_held)
    scenario = SCENARIOS["libvirt"]
    template = scenario.build(tmp_path / "template")

    def argv(action: str, base: Path, *, with_live: bool = live) -> list[str]:
        args = [action, "--connect", CONNECT_URI, scenario.device, CONNECT_GUEST]
        return args + ["--root", str(base)] + (["--live"] if with_live else [])

    def reset(base: Path) -> None:
        """The domain as the run expects it: without the device, then
        (for a detach run) with it in the persistent definition and the ledger."""
        scratch = tmp_path / "reset"
        copy_tree(template, scratch)
        main(argv("detach", scratch, with_live=False))
        shutil.rmtree(scratch)
        if verb == "detach":
            assert main(argv("attach", base, with_live=False)) == 0

    first = tmp_path / "first"
    copy_tree(template, first)
    reset(first)
    before = capture(first, truth)
    with KillAt(0, live=True) as counting:
        code = main(argv(verb, first))
    done = capture(first, truth)
    if live and verb == "attach":
        assert code == 1 and not done.differences(before)  # libvirt's refusal, nothing kept
    else:  # detach --live: nothing hot-plugged in the running domain, the definition edited
        assert code == 0 and done.differences(before)
    events = counting.seen
    assert "begin" in events and "finish<" in events
    capsys.readouterr()
    for index, event in enumerate(events, 1):
        first_signal = signal.SIGINT if index % 2 else signal.SIGTERM
        second = signal.SIGTERM if first_signal == signal.SIGINT else signal.SIGINT
        base = tmp_path / f"run{index}"
        copy_tree(template, base)
        reset(base)
        capsys.readouterr()
        where = f"{first_signal.name} at event {index} ({event})"
        with SignalAt({index: first_signal, index + 1: second}) as signalled:
            try:
                code = main(argv(verb, base))
            except KeyboardInterrupt as escaped:  # would end the whole pytest session
                raise AssertionError(f"{where}: escaped main: {escaped!r}") from None
        err = capsys.readouterr().err
        assert signalled.sent[0][:2] == (index, event), (where, signalled.sent)
        assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM), (where, code, err)
        assert "interrupted by SIG" in err and "Traceback" not in err, (where, err)
        try:
            check_invariant(base, before, done, truth)
        except AssertionError as error:
            raise AssertionError(f"{where}, sent {signalled.sent}: {error}\n{err}") from None
        shutil.rmtree(base)
