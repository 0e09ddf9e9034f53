"""The state ledger: records, journal crash-safety, backups, and opening errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.errors import NotFoundError, OperationFailed, PcipassError, RefusedError
from pcipass.host.root import HostRoot
from pcipass.persist.atomic import apply_edit, digest, plan_edit
from pcipass.state.ledger import SCHEMA_VERSION, Ledger, format_time
from pcipass.testing.harness import FakeClock

FORK = multiprocessing.get_context("fork")


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (content) and directory (None) under ``path``.

    SQLite's WAL sidecars are left out when the WAL holds no frame: a
    read-only connection creates "-wal"/"-shm" and cannot delete them
    (https://www.sqlite.org/wal.html#readonly); they change no data.
    """
    files = {}
    for p in sorted(path.rglob("*")):
        if p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0):
            continue
        files[str(p.relative_to(path))] = p.read_bytes() if p.is_file() else None
    return files


# --- opening -------------------------------------------------------------------


def test_readonly_open_on_empty_root_creates_nothing(root: HostRoot, tmp_path: Path) -> None:
    with Ledger.open(root, readonly=True) as view:
        assert view.hidden() == []
        assert view.owners() == []
        assert view.open_operations() == []
        assert view.hotplug_events() == []
        assert view.file_edits() == []
        assert view.get_hidden("09:00.0") is None
        with pytest.raises(OperationFailed, match="opened read-only"):
            view.claim("09:00.0", "g", config_kind="xl")
        with pytest.raises(OperationFailed, match="opened read-only"):
            view.save_backup(b"x")
    assert list(tmp_path.iterdir()) == []


def test_writable_open_creates_wal_database_with_schema_version(root: HostRoot) -> None:
    Ledger.open(root).close()
    db = root.state_dir / "state.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


def test_readonly_view_sees_what_a_writer_recorded(root: HostRoot, ledger: Ledger) -> None:
    ledger.claim("09:00.0", "web", config_kind="xl")
    with Ledger.open(root, readonly=True) as view:
        owner = view.owner("0000:09:00.0")
        assert owner is not None
        assert owner.guest == "web"


def test_readonly_open_of_zero_byte_file_is_an_empty_view(root: HostRoot) -> None:
    root.state_dir.mkdir(parents=True)
    (root.state_dir / "state.db").write_bytes(b"")
    before = tree(root.prefix)
    with Ledger.open(root, readonly=True) as view:
        assert view.hidden() == []
    assert tree(root.prefix) == before


def _set_schema_version(root: HostRoot, version: int) -> None:
    conn = sqlite3.connect(root.state_dir / "state.db", isolation_level=None)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_clearly(root: HostRoot, readonly: bool) -> None:
    Ledger.open(root).close()
    _set_schema_version(root, SCHEMA_VERSION + 98)
    before = tree(root.prefix)
    with pytest.raises(OperationFailed) as err:
        Ledger.open(root, readonly=readonly)
    assert str(err.value).startswith("/var/lib/pcipass/state.db: the state database has schema")
    assert f"version {SCHEMA_VERSION + 98}" in str(err.value)
    assert f"only up to version {SCHEMA_VERSION}" in str(err.value)
    assert "will not downgrade" in str(err.value)
    assert tree(root.prefix) == before


@pytest.mark.parametrize("readonly", [False, True])
def test_garbage_file_is_a_clear_error_not_a_traceback(root: HostRoot, readonly: bool) -> None:
    root.state_dir.mkdir(parents=True)
    (root.state_dir / "state.db").write_bytes(b"this is not sqlite\n" * 300)
    before = tree(root.prefix)
    with pytest.raises(OperationFailed) as err:
        Ledger.open(root, readonly=readonly)
    message = str(err.value)
    assert message.startswith("/var/lib/pcipass/state.db: the state database cannot be read")
    assert "file is not a database" in message
    assert "move it aside" in message
    assert tree(root.prefix) == before


def test_corrupt_pages_surface_as_pcipass_errors(root: HostRoot, ledger: Ledger) -> None:
    for n in range(200):
        ledger.record_hidden(
            f"00:{n % 32:02x}.{n % 8}",
            identity={"serial": "x" * 200},
            stub_driver="vfio-pci",
            original_driver="e1000",
            how="now",
        )
    ledger.close()  # last connection: checkpoints the WAL into the main file
    db = root.state_dir / "state.db"
    data = bytearray(db.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 : len(data)] = b"\xa5" * (len(data) - 4096)  # keep the header page only
    db.write_bytes(bytes(data))
    with pytest.raises(PcipassError) as err, Ledger.open(root) as broken:
        broken.hidden()
    assert isinstance(err.value, OperationFailed)
    assert "cannot be read" in str(err.value)


def test_foreign_sqlite_file_is_not_taken_over(root: HostRoot) -> None:
    root.state_dir.mkdir(parents=True)
    conn = sqlite3.connect(root.state_dir / "state.db")
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    before = tree(root.prefix)
    with pytest.raises(OperationFailed, match=r"not a pcipass state database \(it has no meta"):
        Ledger.open(root)
    assert tree(root.prefix) == before


# --- non-root users ----------------------------------------------------------------


@pytest.fixture
def world_root() -> Iterator[HostRoot]:
    """A root other users can traverse (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="pcipass-ledger-") as name:
        os.chmod(name, 0o755)
        yield HostRoot.at(name)


def as_nobody(action: Callable[[], str]) -> str:
    """Run ``action`` as an unprivileged user (a forked child when we are root)."""
    if os.geteuid() != 0:
        try:
            return action()
        except PcipassError as exc:
            return f"{type(exc).__name__}: {exc}"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                result = action()
            except PcipassError as exc:
                result = f"{type(exc).__name__}: {exc}"
            os.write(write_end, result.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    return output


def _record_one(root: HostRoot) -> None:
    with Ledger.open(root) as writer:
        writer.record_hidden(
            "09:00.0", identity={}, stub_driver="pciback", original_driver="bnx2", how="both"
        )


def test_non_root_reader_of_readable_db_in_root_owned_dir(world_root: HostRoot) -> None:
    _record_one(world_root)
    if os.geteuid() == 0:
        for part in ("var", "var/lib", "var/lib/pcipass"):
            os.chmod(world_root.prefix / part, 0o755)
        os.chmod(world_root.state_dir / "state.db", 0o644)

    def read() -> str:
        with Ledger.open(world_root, readonly=True) as view:
            return ",".join(f"{h.address}:{h.original_driver}" for h in view.hidden())

    assert as_nobody(read) == "0000:09:00.0:bnx2"
    # The reader created nothing (no -shm in a directory it may not write).
    assert sorted(p.name for p in world_root.state_dir.iterdir()) == [
        "state.db",
        "state.db.in-use",  # written by the writer (_record_one), not the reader
    ]


def test_non_root_who_cannot_read_gets_a_clear_error(world_root: HostRoot) -> None:
    _record_one(world_root)
    for part in ("var", "var/lib", "var/lib/pcipass"):
        os.chmod(world_root.prefix / part, 0o755)
    os.chmod(world_root.state_dir / "state.db", 0o600)

    def read() -> str:
        with Ledger.open(world_root, readonly=True) as view:
            return str(view.hidden())

    def write() -> str:
        with Ledger.open(world_root) as writer:
            return str(writer.hidden())

    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user cannot read")
    assert as_nobody(read) == (
        "OperationFailed: /var/lib/pcipass/state.db: permission denied: "
        "cannot read the state database (run pcipass as root)"
    )
    assert as_nobody(write) == (
        "OperationFailed: /var/lib/pcipass/state.db: permission denied: "
        "cannot write the state database (run pcipass as root)"
    )


# --- hidden devices ------------------------------------------------------------------


def test_record_hidden_round_trip_with_canonical_address(ledger: Ledger, clock: FakeClock) -> None:
    identity = {"vendor": "0x14e4", "device": "0x1639", "serial": "SN1", "slot": "3"}
    record = ledger.record_hidden(
        "9:0.0", identity=identity, stub_driver="pciback", original_driver="bnx2", how="persist"
    )
    assert record.address == "0000:09:00.0"
    assert record.identity == identity
    assert record.since == clock.now
    assert ledger.get_hidden("0000:09:00.0") == record
    assert ledger.hidden() == [record]


def test_hiding_again_keeps_first_original_driver_and_since(
    ledger: Ledger, clock: FakeClock
) -> None:
    first = ledger.record_hidden(
        "09:00.0", identity={}, stub_driver="pciback", original_driver="bnx2", how="now"
    )
    clock.now += 60
    # By the second hide the device's driver is the stub; that must not be
    # what unhide gives it back to.
    second = ledger.record_hidden(
        "09:00.0", identity={"a": "b"}, stub_driver="pciback", original_driver="pciback", how="both"
    )
    assert second.original_driver == "bnx2"
    assert second.since == first.since
    assert second.how == "both"
    assert second.identity == {"a": "b"}


def test_hidden_list_is_sorted_and_forget_removes(ledger: Ledger) -> None:
    for addr in ("0a:04.1", "09:00.0"):
        ledger.record_hidden(
            addr, identity={}, stub_driver="vfio-pci", original_driver=None, how="now"
        )
    assert [h.address for h in ledger.hidden()] == ["0000:09:00.0", "0000:0a:04.1"]
    assert ledger.forget_hidden("0a:04.1") is True
    assert ledger.forget_hidden("0a:04.1") is False
    assert [h.address for h in ledger.hidden()] == ["0000:09:00.0"]


@pytest.mark.parametrize(
    ("stub", "how"), [("e1000", "now"), ("pciback", "later"), ("vfio", "both")]
)
def test_record_hidden_rejects_unknown_stub_or_mode(ledger: Ledger, stub: str, how: str) -> None:
    with pytest.raises(ValueError):
        ledger.record_hidden(
            "09:00.0", identity={}, stub_driver=stub, original_driver=None, how=how
        )
    assert ledger.hidden() == []


# --- ownership (PP101) ----------------------------------------------------------------


def test_claim_by_second_guest_is_refused_naming_the_owner(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.claim("09:00.0", "web", config_kind="xl", config_path="/etc/xen/web.cfg")
    clock.now += 5
    with pytest.raises(RefusedError) as err:
        ledger.claim("0000:09:00.0", "db", config_kind="libvirt")
    assert err.value.rule == "PP101"
    assert str(err.value) == (
        f"0000:09:00.0: [PP101] already assigned to guest web (since "
        f"{format_time(clock.now - 5)}, xl /etc/xen/web.cfg); a device belongs to one guest "
        "at a time (detach it first: pcipass detach 0000:09:00.0 web)"
    )
    owner = ledger.owner("09:00.0")
    assert owner is not None
    assert (owner.guest, owner.config_kind, owner.since) == ("web", "xl", clock.now - 5)


def test_claim_again_by_owner_keeps_since(ledger: Ledger, clock: FakeClock) -> None:
    first = ledger.claim("09:00.0", "web", config_kind="xl", config_path="/etc/xen/a.cfg")
    clock.now += 10
    again = ledger.claim("09:00.0", "web", config_kind="xl", config_path="/etc/xen/b.cfg")
    assert again.since == first.since
    assert again.config_path == "/etc/xen/b.cfg"
    assert ledger.owners() == [again]


def test_release_by_wrong_guest_is_refused_and_owner_kept(ledger: Ledger) -> None:
    ledger.claim("09:00.0", "web", config_kind="xl")
    with pytest.raises(RefusedError, match=r"\[PP101\] owned by guest web, not db"):
        ledger.release("09:00.0", "db")
    assert ledger.owner("09:00.0") is not None
    assert ledger.release("09:00.0", "web") is True
    assert ledger.owner("09:00.0") is None
    assert ledger.release("09:00.0", "web") is False
    ledger.claim("09:00.0", "db", config_kind="libvirt")
    assert [o.guest for o in ledger.owners()] == ["db"]


def _claim_in_child(root: HostRoot, guest: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    with Ledger.open(root) as child:
        try:
            child.claim("09:00.0", guest, config_kind="xl")
            results.put((guest, "ok"))  # type: ignore[attr-defined]
        except RefusedError as exc:
            results.put((guest, exc.rule))  # type: ignore[attr-defined]


def test_concurrent_claims_have_exactly_one_winner(root: HostRoot) -> None:
    Ledger.open(root).close()
    guests = [f"g{n}" for n in range(12)]
    barrier = FORK.Barrier(len(guests))
    results = FORK.Queue()
    procs = [FORK.Process(target=_claim_in_child, args=(root, g, barrier, results)) for g in guests]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=60) for _ in guests)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    winners = [g for g, outcome in outcomes.items() if outcome == "ok"]
    assert len(winners) == 1
    assert sorted(o for o in outcomes.values() if o != "ok") == ["PP101"] * (len(guests) - 1)
    with Ledger.open(root, readonly=True) as view:
        owner = view.owner("09:00.0")
        assert owner is not None
        assert owner.guest == winners[0]


# --- journal ----------------------------------------------------------------------------


def test_journal_begin_step_finish(ledger: Ledger, clock: FakeClock) -> None:
    op = ledger.begin("hide", {"devices": ["0000:09:00.0"], "persist": True})
    [pending] = ledger.open_operations()
    assert (pending.id, pending.kind, pending.steps, pending.started) == (
        op.id,
        "hide",
        [],
        clock.now,
    )
    assert pending.intent == {"devices": ["0000:09:00.0"], "persist": True}
    assert pending.pid == os.getpid()
    clock.now += 1
    assert op.step("unbind", {"driver": "bnx2", "address": "0000:09:00.0"}) == 1
    clock.now += 1
    assert op.step("bind", {"driver": "pciback"}) == 2
    [pending] = ledger.open_operations()
    assert [(s.seq, s.name, s.undo, s.at) for s in pending.steps] == [
        (1, "unbind", {"address": "0000:09:00.0", "driver": "bnx2"}, clock.now - 1),
        (2, "bind", {"driver": "pciback"}, clock.now),
    ]
    op.finish()
    assert ledger.open_operations() == []
    with pytest.raises(NotFoundError, match=f"operation {op.id}: no such open operation"):
        op.step("late", {})
    assert ledger.open_operations() == []


def test_operations_are_listed_oldest_first_with_their_own_steps(ledger: Ledger) -> None:
    a = ledger.begin("hide", {"n": 1})
    b = ledger.begin("attach", {"n": 2})
    b.step("b1", {})
    a.step("a1", {})
    b.step("b2", {})
    ops = ledger.open_operations()
    assert [(o.kind, [s.name for s in o.steps]) for o in ops] == [
        ("hide", ["a1"]),
        ("attach", ["b1", "b2"]),
    ]


def test_abandon_removes_and_unknown_id_is_not_found(ledger: Ledger) -> None:
    op = ledger.begin("detach", {})
    op.step("x", {"y": 1})
    ledger.abandon(op.id)
    assert ledger.open_operations() == []
    with pytest.raises(NotFoundError):
        ledger.abandon(op.id)


def test_non_json_intent_is_rejected_before_anything_is_written(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="intent must be JSON-serialisable"):
        ledger.begin("hide", {"path": Path("/etc")})
    with pytest.raises(ValueError):
        ledger.begin("hide", {"x": float("nan")})
    assert ledger.open_operations() == []


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def test_intent_and_undo_survive_the_journal_exactly() -> None:
    with tempfile.TemporaryDirectory() as name, Ledger.open(HostRoot.at(name)) as led:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(intent=json_objects, undos=st.lists(json_objects, max_size=3))
        def check(intent: dict[str, object], undos: list[dict[str, object]]) -> None:
            op = led.begin("k", intent)
            for n, undo in enumerate(undos):
                op.step(f"s{n}", undo)
            [pending] = led.open_operations()
            assert pending.intent == intent
            assert [s.undo for s in pending.steps] == undos
            op.finish()

        check()


def _journal_child(root: HostRoot, k: int) -> None:
    """Begin an operation, do k steps, then die without any cleanup."""
    led = Ledger.open(root)
    if k >= 0:
        op = led.begin("hide", {"devices": ["0000:09:00.0"], "k": k})
        for n in range(1, k + 1):
            op.step(f"step-{n}", {"n": n, "driver": "bnx2"})
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 4, 5, 6])
def test_journal_after_sigkill_holds_exactly_k_steps(root: HostRoot, k: int) -> None:
    proc = FORK.Process(target=_journal_child, args=(root, k))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    with Ledger.open(root, readonly=True) as view:
        ops = view.open_operations()
    if k < 0:  # killed before begin: nothing was promised, nothing is recorded
        assert ops == []
        return
    [pending] = ops
    assert pending.kind == "hide"
    assert pending.intent == {"devices": ["0000:09:00.0"], "k": k}
    assert [(s.seq, s.name, s.undo) for s in pending.steps] == [
        (n, f"step-{n}", {"n": n, "driver": "bnx2"}) for n in range(1, k + 1)
    ]
    # and a writer (recover) can open the ledger after the crash and clear it
    with Ledger.open(root) as recover:
        recover.abandon(pending.id)
        assert recover.open_operations() == []


def _journal_stepper(root: HostRoot, report: int) -> None:
    """Step forever, reporting each committed step on a pipe."""
    with Ledger.open(root) as led:
        op = led.begin("attach", {"guest": "web"})
        os.write(report, b"B")
        n = 0
        while True:
            n += 1
            op.step(f"s{n}", {"n": n, "pad": "x" * (n % 50)})
            os.write(report, b"S")


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.01, 0.02, 0.05, 0.08, 0.13, 0.2])
def test_journal_killed_at_a_random_instant_is_a_consistent_prefix(
    root: HostRoot, delay: float
) -> None:
    Ledger.open(root).close()
    read_end, write_end = os.pipe()
    proc = FORK.Process(target=_journal_stepper, args=(root, write_end))
    proc.start()
    os.close(write_end)
    # wait for the intent, then let it run and kill it wherever it is
    assert os.read(read_end, 1) == b"B"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=60)
    reported = 0
    while chunk := os.read(read_end, 65536):
        reported += chunk.count(b"S")
    os.close(read_end)
    with Ledger.open(root, readonly=True) as view:
        [pending] = view.open_operations()
    assert pending.intent == {"guest": "web"}
    steps = [(s.seq, s.name, s.undo) for s in pending.steps]
    count = len(steps)
    assert steps == [(n, f"s{n}", {"n": n, "pad": "x" * (n % 50)}) for n in range(1, count + 1)]
    # a step reported done is recorded; at most one more committed unreported
    assert reported <= count <= reported + 1


# --- file edits and backups ----------------------------------------------------------------


def test_backup_round_trip_is_byte_exact_and_content_addressed(ledger: Ledger) -> None:
    data = b"options pciback hide=(0000:09:00.0)\r\n\x00\xff no newline"
    sha = ledger.save_backup(data)
    path = ledger.backup_dir / sha
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ledger.save_backup(data) == sha
    assert sorted(p.name for p in ledger.backup_dir.iterdir()) == [sha]
    assert ledger.load_backup(sha) == data
    assert ledger.load_backup(ledger.save_backup(b"")) == b""


@pytest.mark.parametrize("bad", ["../state.db", "a" * 63, "A" * 64, "", "g" * 64])
def test_load_backup_validates_the_sha_before_building_a_path(ledger: Ledger, bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        ledger.load_backup(bad)


def test_missing_or_tampered_backup_is_reported(ledger: Ledger) -> None:
    sha = ledger.save_backup(b"original")
    with pytest.raises(NotFoundError, match="no such backup"):
        ledger.load_backup("0" * 64)
    (ledger.backup_dir / sha).write_bytes(b"tampered")
    with pytest.raises(OperationFailed, match="backup is corrupt"):
        ledger.load_backup(sha)


def test_file_edit_is_journalled_and_undone_byte_for_byte(root: HostRoot, ledger: Ledger) -> None:
    conf = root.path("/etc/modprobe.conf")
    conf.parent.mkdir(parents=True)
    original = b"alias eth0 bnx2\n# keep me \t exactly\r\n"
    conf.write_bytes(original)
    edit = plan_edit(
        conf, "/etc/modprobe.conf", original + b"options pciback hide=(0000:09:00.0)\n"
    )

    op = ledger.begin("hide", {"devices": ["0000:09:00.0"], "persist": True})
    assert edit.before is not None
    sha = ledger.save_backup(edit.before)
    apply_edit(edit)
    record = op.record_file_edit(
        "/etc/modprobe.conf", digest(edit.before), digest(edit.after), str(ledger.backup_path(sha))
    )
    op.step("edit", {"path": "/etc/modprobe.conf", "before_sha": sha})

    # recover: the journal names the file and the backup restores it exactly
    [pending] = ledger.open_operations()
    assert pending.file_edits == [record]
    assert record.before_sha == sha
    restored = ledger.load_backup(pending.steps[0].undo["before_sha"])
    apply_edit(plan_edit(conf, "/etc/modprobe.conf", restored))
    assert conf.read_bytes() == original
    op.finish()
    # the edit history outlives the journal entry
    assert ledger.file_edits(op.id) == [record]
    assert ledger.open_operations() == []
