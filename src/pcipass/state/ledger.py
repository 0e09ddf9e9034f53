"""The state ledger: what pcipass did to this host, kept in SQLite.

The ledger lives in ``root.state_dir / "state.db"`` (``/var/lib/pcipass/state.db``
on a real host) and records

* the devices pcipass hid from the host, with their original driver, so
  ``unhide`` can give each one back (DESIGN.md "Persistent hiding");
* which guest owns which device (rule PP101: one device, one owner);
* hotplug events, counted by :mod:`pcipass.state.limiter` for rule PP007;
* a journal of multi-step operations, so ``recover`` can finish or undo an
  operation whose process died half way;
* the configuration-file edits made by those operations, with the previous
  contents kept byte for byte in a content-addressed backup store.

Crash safety rests on one rule: every write is its own committed transaction
(autocommit connection, explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``), and the
journal's intent is committed before the first step and each step after it
happened.  A process killed at any instant therefore leaves either the state
before a write or the state after it, never a half-written record (SQLite's
atomic commit, https://www.sqlite.org/atomiccommit.html).  WAL mode lets
read-only commands (``status``, ``list``) read while a writer works
(https://www.sqlite.org/wal.html), and ``synchronous=FULL`` makes each commit
durable across a power loss, which is the point of a recovery journal.

Only the standard library's :mod:`sqlite3` is used: the CLI runs with a bare
Python (pyproject.toml, "No runtime dependencies on purpose").
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pcipass.address import PciAddress
from pcipass.errors import NotFoundError, OperationFailed, RefusedError
from pcipass.host.root import HostRoot
from pcipass.host.stubs import RECORDED_STUBS
from pcipass.persist.atomic import atomic_write, read_bytes

SCHEMA_VERSION: Final = 1
DB_NAME: Final = "state.db"
BACKUP_DIR: Final = "backups"

HIDE_MODES: Final = frozenset({"now", "persist", "both"})
HOTPLUG_KINDS: Final = frozenset({"attach", "detach"})
# An owner whose config_kind starts with this is "maybe in guest G": a live
# hotplug was started and its outcome is not known yet (no answer, timeout,
# Ctrl-C).  It blocks the device like any owner until `recover` or a repeat
# asks the toolstack and records the truth.
UNCERTAIN_PREFIX: Final = "maybe-"

# How long a writer waits for another writer's transaction before SQLite gives
# up with "database is locked".  Transactions here are a few statements long;
# the generous bound only matters under heavy contention (40 processes).
BUSY_TIMEOUT_SECONDS: Final = 30.0

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

JsonObject = dict[str, Any]
Clock = Callable[[], float]

# One statement per element: ``executescript`` would COMMIT the surrounding
# transaction first, and schema creation must happen inside one.
_SCHEMA_V1: Final = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE hidden (
        address         TEXT PRIMARY KEY,
        identity        TEXT NOT NULL,
        stub_driver     TEXT NOT NULL,
        original_driver TEXT,
        how             TEXT NOT NULL CHECK (how IN ('now', 'persist', 'both')),
        since           REAL NOT NULL
    )""",
    """CREATE TABLE owners (
        address     TEXT PRIMARY KEY,
        guest       TEXT NOT NULL,
        config_kind TEXT NOT NULL,
        config_path TEXT,
        since       REAL NOT NULL
    )""",
    """CREATE TABLE hotplug_events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        address TEXT NOT NULL,
        guest   TEXT NOT NULL,
        kind    TEXT NOT NULL CHECK (kind IN ('attach', 'detach')),
        at      REAL NOT NULL
    )""",
    "CREATE INDEX hotplug_events_by_address ON hotplug_events (address, at)",
    """CREATE TABLE operations (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        kind    TEXT NOT NULL,
        intent  TEXT NOT NULL,
        started REAL NOT NULL,
        pid     INTEGER NOT NULL
    )""",
    """CREATE TABLE operation_steps (
        op_id INTEGER NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
        seq   INTEGER NOT NULL,
        name  TEXT NOT NULL,
        undo  TEXT NOT NULL,
        at    REAL NOT NULL,
        PRIMARY KEY (op_id, seq)
    )""",
    # op_id is deliberately not a foreign key: the edit history outlives the
    # journal entry (finish() removes the operation, the record of what was
    # written where, and the backup of what was there before, stay).
    """CREATE TABLE file_edits (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        op_id        INTEGER,
        display_path TEXT NOT NULL,
        before_sha   TEXT NOT NULL,
        after_sha    TEXT NOT NULL,
        backup_path  TEXT,
        at           REAL NOT NULL
    )""",
    "CREATE INDEX file_edits_by_op ON file_edits (op_id)",
)

# Migrations from version N to N+1, applied in order inside the opening
# transaction.  Empty while there is only version 1.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {}


# --- records ---------------------------------------------------------------


@dataclass(frozen=True)
class HiddenRecord:
    """A device pcipass hid from the host."""

    address: str
    identity: dict[str, str]
    stub_driver: str
    original_driver: str | None
    how: str
    since: float


@dataclass(frozen=True)
class OwnerRecord:
    """The guest a device is assigned to (rule PP101)."""

    address: str
    guest: str
    config_kind: str
    config_path: str | None
    since: float

    @property
    def uncertain(self) -> bool:
        """A live hotplug into ``guest`` may or may not have happened."""
        return self.config_kind.startswith(UNCERTAIN_PREFIX)


@dataclass(frozen=True)
class HotplugEvent:
    address: str
    guest: str
    kind: str
    at: float


@dataclass(frozen=True)
class HotplugAdmission:
    """Outcome of :meth:`Ledger.admit_hotplug`.

    ``window_times`` are the timestamps of the events counted in the window
    (oldest first), *excluding* the new one when it was admitted.
    """

    admitted: bool
    window_times: tuple[float, ...]
    now: float


@dataclass(frozen=True)
class JournalStep:
    seq: int
    name: str
    undo: JsonObject
    at: float


@dataclass(frozen=True)
class FileEditRecord:
    id: int
    op_id: int | None
    display_path: str
    before_sha: str
    after_sha: str
    backup_path: str | None
    at: float


@dataclass(frozen=True)
class OpenOperation:
    """An operation that was begun and not finished: work for ``recover``."""

    id: int
    kind: str
    intent: JsonObject
    steps: list[JournalStep]
    started: float
    pid: int = 0
    file_edits: list[FileEditRecord] = field(default_factory=list)


# --- helpers ---------------------------------------------------------------


def _canonical_address(address: PciAddress | str) -> str:
    """Addresses are keys: store them in the one kernel spelling."""
    if isinstance(address, PciAddress):
        return str(address)
    return str(PciAddress.parse(address))


def _to_json(what: str, value: Mapping[str, object]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


def _from_json(text: str) -> JsonObject:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_choice(what: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, not {value!r}")


# --- the ledger ------------------------------------------------------------


class Ledger:
    """Open with :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        root: HostRoot,
        *,
        readonly: bool,
        clock: Clock,
        display: str,
    ) -> None:
        self._conn = connection
        self.root = root
        self.readonly = readonly
        self.clock = clock
        self.display = display

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: HostRoot,
        *,
        readonly: bool = False,
        clock: Clock = time.time,
    ) -> Ledger:
        """Open the ledger of ``root``.

        A writable open creates the state directory and database on first use.
        A read-only open never creates anything: on a root without a database
        it gives an empty view (an in-memory database with the schema).
        """
        path = root.state_dir / DB_NAME
        display = root.host_path(path)
        if readonly:
            conn = cls._connect_readonly(path, display)
        else:
            conn = cls._connect_writable(path, display)
        return cls(conn, root, readonly=readonly, clock=clock, display=display)

    @staticmethod
    def _connect_writable(path: Path, display: str) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        except PermissionError as exc:
            raise _permission_error(display, "create the state directory") from exc
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise _permission_error(display, "write the state database")
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise _open_error(display, exc) from exc
        try:
            _configure(conn, display, writable=True)
            # Schema first: a file that is not ours (or is newer) is refused
            # before anything about it, its journal mode included, changes.
            _ensure_schema(conn, display)
            _enable_wal(conn, display)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _connect_readonly(path: Path, display: str) -> sqlite3.Connection:
        if not path.exists():
            return _empty_view(display)
        if not os.access(path, os.R_OK):
            raise _permission_error(display, "read the state database")
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        # A reader of a WAL database must create or map the "-shm" index next
        # to it, and a non-root user cannot create files in /var/lib/pcipass.
        # When no "-wal" file exists (the last writer checkpointed and removed
        # it) the main file is complete and may be read as immutable instead
        # (https://www.sqlite.org/wal.html#readonly, URI parameter "immutable").
        for immutable in (False, True):
            if immutable and Path(str(path) + "-wal").exists():
                break
            try:
                conn = sqlite3.connect(
                    uri + ("&immutable=1" if immutable else ""),
                    uri=True,
                    timeout=BUSY_TIMEOUT_SECONDS,
                    isolation_level=None,
                )
            except sqlite3.Error as exc:
                raise _open_error(display, exc) from exc
            try:
                _configure(conn, display, writable=False)
                _check_schema_readonly(conn, display)
            except _ReadonlyNeedsShm:
                conn.close()
                continue
            except _EmptyDatabase:
                # A 0-byte file is an empty database: nothing recorded yet.
                conn.close()
                return _empty_view(display)
            except BaseException:
                conn.close()
                raise
            return conn
        raise _permission_error(display, "read the state database while another pcipass writes it")

    # -- life cycle ----------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.root.state_dir / DB_NAME

    @property
    def backup_dir(self) -> Path:
        return self.root.state_dir / BACKUP_DIR

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed write transaction.

        ``BEGIN IMMEDIATE`` takes the write lock before the first read, so a
        read-then-write (count then insert, check owner then claim) cannot
        interleave with another process's (https://www.sqlite.org/lang_transaction.html).
        """
        if self.readonly:
            raise OperationFailed(
                self.display,
                "the ledger was opened read-only",
                "this is a bug in pcipass: a command that changes state opened it read-only",
            )
        conn = self._conn
        with _sqlite_errors(self.display):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with _sqlite_errors(self.display):
            return list(self._conn.execute(sql, params).fetchall())

    # -- hidden devices --------------------------------------------------------

    def record_hidden(
        self,
        address: PciAddress | str,
        *,
        identity: Mapping[str, str],
        stub_driver: str,
        original_driver: str | None,
        how: str,
    ) -> HiddenRecord:
        """Record (or update) a hidden device.

        Hiding a device twice (``--now`` then ``--persist``) updates the record
        but keeps the first ``original_driver`` and ``since``: by the second
        hide the device's current driver is the stub, not the one to give back.
        """
        key = _canonical_address(address)
        _check_choice("stub driver", stub_driver, RECORDED_STUBS)
        _check_choice("hide mode", how, HIDE_MODES)
        ident = dict(identity)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in ident.items()):
            raise ValueError("identity must map str to str")
        with self._write() as conn:
            conn.execute(
                """INSERT INTO hidden (address, identity, stub_driver, original_driver, how, since)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (address) DO UPDATE SET
                     identity = excluded.identity,
                     stub_driver = excluded.stub_driver,
                     how = excluded.how,
                     original_driver = COALESCE(hidden.original_driver, excluded.original_driver)
                """,
                (key, _to_json("identity", ident), stub_driver, original_driver, how, self.clock()),
            )
            row = conn.execute(_HIDDEN_SELECT + " WHERE address = ?", (key,)).fetchone()
        return _hidden_from_row(row)

    def forget_hidden(self, address: PciAddress | str) -> bool:
        """Drop the record of a hidden device; ``False`` if there was none."""
        key = _canonical_address(address)
        with self._write() as conn:
            return conn.execute("DELETE FROM hidden WHERE address = ?", (key,)).rowcount > 0

    def hidden(self) -> list[HiddenRecord]:
        return [_hidden_from_row(r) for r in self._read(_HIDDEN_SELECT + " ORDER BY address")]

    def get_hidden(self, address: PciAddress | str) -> HiddenRecord | None:
        rows = self._read(_HIDDEN_SELECT + " WHERE address = ?", (_canonical_address(address),))
        return _hidden_from_row(rows[0]) if rows else None

    # -- ownership (PP101) -----------------------------------------------------

    def claim(
        self,
        address: PciAddress | str,
        guest: str,
        *,
        config_kind: str,
        config_path: str | None = None,
    ) -> OwnerRecord:
        """Make ``guest`` the owner of ``address``.

        Claiming again for the same guest updates the configuration reference
        and keeps ``since``.  A device owned by another guest is refused
        (PP101) and nothing changes.
        """
        key = _canonical_address(address)
        with self._write() as conn:
            row = conn.execute(_OWNER_SELECT + " WHERE address = ?", (key,)).fetchone()
            if row is not None and row[1] != guest:
                current = _owner_from_row(row)
                raise RefusedError(
                    key,
                    f"already assigned to guest {current.guest} "
                    f"(since {format_time(current.since)}, {current.config_kind}"
                    + (f" {current.config_path}" if current.config_path else "")
                    + "); a device belongs to one guest at a time",
                    f"detach it first: pcipass detach {key} {current.guest}",
                    rule="PP101",
                )
            conn.execute(
                """INSERT INTO owners (address, guest, config_kind, config_path, since)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (address) DO UPDATE SET
                     config_kind = excluded.config_kind,
                     config_path = excluded.config_path
                """,
                (key, guest, config_kind, config_path, self.clock()),
            )
            row = conn.execute(_OWNER_SELECT + " WHERE address = ?", (key,)).fetchone()
        return _owner_from_row(row)

    def release(self, address: PciAddress | str, guest: str) -> bool:
        """``guest`` gives ``address`` up.  ``False`` if nobody owned it.

        Releasing a device another guest owns is refused (PP101): a detach for
        the wrong guest must not free a device for a second owner.
        """
        key = _canonical_address(address)
        with self._write() as conn:
            row = conn.execute("SELECT guest FROM owners WHERE address = ?", (key,)).fetchone()
            if row is None:
                return False
            if row[0] != guest:
                raise RefusedError(
                    key,
                    f"owned by guest {row[0]}, not {guest}",
                    f"name the owner: pcipass detach {key} {row[0]}",
                    rule="PP101",
                )
            conn.execute("DELETE FROM owners WHERE address = ?", (key,))
        return True

    def owner(self, address: PciAddress | str) -> OwnerRecord | None:
        rows = self._read(_OWNER_SELECT + " WHERE address = ?", (_canonical_address(address),))
        return _owner_from_row(rows[0]) if rows else None

    def owners(self) -> list[OwnerRecord]:
        return [_owner_from_row(r) for r in self._read(_OWNER_SELECT + " ORDER BY address")]

    # -- hotplug events (PP007) ------------------------------------------------

    def admit_hotplug(
        self,
        address: PciAddress | str,
        guest: str,
        kind: str,
        *,
        budget: int,
        window_seconds: float,
        prune_age: float | None = None,
    ) -> HotplugAdmission:
        """Count the events of ``address`` in the window and, under ``budget``,
        record a new one: both in one ``BEGIN IMMEDIATE`` transaction, so
        concurrent processes cannot both take the last slot.

        An event at time ``t`` counts while ``now - window_seconds < t``.
        Events more than ``prune_age`` seconds old (any device) are deleted.
        """
        key = _canonical_address(address)
        _check_choice("hotplug kind", kind, HOTPLUG_KINDS)
        with self._write() as conn:
            now = self.clock()
            if prune_age is not None:
                conn.execute("DELETE FROM hotplug_events WHERE at < ?", (now - prune_age,))
            times = tuple(
                float(r[0])
                for r in conn.execute(
                    "SELECT at FROM hotplug_events WHERE address = ? AND at > ? ORDER BY at, id",
                    (key, now - window_seconds),
                )
            )
            if len(times) >= budget:
                return HotplugAdmission(False, times, now)
            conn.execute(
                "INSERT INTO hotplug_events (address, guest, kind, at) VALUES (?, ?, ?, ?)",
                (key, guest, kind, now),
            )
        return HotplugAdmission(True, times, now)

    def forget_hotplug(self, address: PciAddress | str, guest: str, kind: str, at: float) -> bool:
        """Take back one event recorded by :meth:`admit_hotplug` (the hotplug
        it admitted did not happen, so it must not count against PP007)."""
        key = _canonical_address(address)
        with self._write() as conn:
            row = conn.execute(
                "SELECT id FROM hotplug_events WHERE address = ? AND guest = ? AND kind = ? "
                "AND at = ? ORDER BY id DESC LIMIT 1",
                (key, guest, kind, at),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM hotplug_events WHERE id = ?", (row[0],))
        return True

    def hotplug_events(
        self, address: PciAddress | str | None = None, *, since: float | None = None
    ) -> list[HotplugEvent]:
        """Recorded events, oldest first; of one device and/or after ``since``."""
        sql = "SELECT address, guest, kind, at FROM hotplug_events WHERE 1 = 1"
        params: list[object] = []
        if address is not None:
            sql += " AND address = ?"
            params.append(_canonical_address(address))
        if since is not None:
            sql += " AND at > ?"
            params.append(since)
        rows = self._read(sql + " ORDER BY at, id", tuple(params))
        return [HotplugEvent(r[0], r[1], r[2], float(r[3])) for r in rows]

    # -- journal ---------------------------------------------------------------

    def begin(self, kind: str, intent: Mapping[str, object]) -> OperationHandle:
        """Write the intent of an operation, before its first step."""
        text = _to_json("intent", intent)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO operations (kind, intent, started, pid) VALUES (?, ?, ?, ?)",
                (kind, text, self.clock(), os.getpid()),
            )
            op_id = cursor.lastrowid
        assert op_id is not None
        return OperationHandle(self, op_id, kind)

    def _add_step(self, op_id: int, name: str, undo: Mapping[str, object]) -> int:
        text = _to_json("undo", undo)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM operations WHERE id = ?", (op_id,)).fetchone() is None:
                raise _no_operation(op_id)
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM operation_steps WHERE op_id = ?", (op_id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO operation_steps (op_id, seq, name, undo, at) VALUES (?, ?, ?, ?, ?)",
                (op_id, seq, name, text, self.clock()),
            )
        return int(seq)

    def _remove_operation(self, op_id: int) -> bool:
        with self._write() as conn:
            # Steps go by ON DELETE CASCADE, in the same transaction.
            return conn.execute("DELETE FROM operations WHERE id = ?", (op_id,)).rowcount > 0

    def open_operations(self) -> list[OpenOperation]:
        """Every operation begun and neither finished nor abandoned, oldest first."""
        with _sqlite_errors(self.display):
            # One read transaction, so an operation and its steps are one snapshot.
            self._conn.execute("BEGIN")
            try:
                ops = self._conn.execute(
                    "SELECT id, kind, intent, started, pid FROM operations ORDER BY id"
                ).fetchall()
                steps = self._conn.execute(
                    "SELECT op_id, seq, name, undo, at FROM operation_steps ORDER BY op_id, seq"
                ).fetchall()
                edits = self._conn.execute(
                    # constant SQL only; values are always bound parameters
                    _EDIT_SELECT + " WHERE op_id IN (SELECT id FROM operations) ORDER BY id"  # noqa: S608
                ).fetchall()
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")
        by_op: dict[int, list[JournalStep]] = {}
        for op_id, seq, name, undo, at in steps:
            by_op.setdefault(op_id, []).append(JournalStep(seq, name, _from_json(undo), at))
        edits_by_op: dict[int, list[FileEditRecord]] = {}
        for row in edits:
            record = _edit_from_row(row)
            edits_by_op.setdefault(record.op_id or 0, []).append(record)
        return [
            OpenOperation(
                id=op_id,
                kind=kind,
                intent=_from_json(intent),
                steps=by_op.get(op_id, []),
                started=float(started),
                pid=int(pid),
                file_edits=edits_by_op.get(op_id, []),
            )
            for op_id, kind, intent, started, pid in ops
        ]

    def abandon(self, op_id: int) -> None:
        """Drop an open operation from the journal (after ``recover`` handled it)."""
        if not self._remove_operation(op_id):
            raise _no_operation(op_id)

    # -- file edits and backups --------------------------------------------------

    def record_file_edit(
        self,
        op_id: int | None,
        display_path: str,
        before_sha: str,
        after_sha: str,
        backup_path: str | None,
    ) -> FileEditRecord:
        """Record that ``display_path`` went from ``before_sha`` to ``after_sha``.

        The shas are :func:`pcipass.persist.atomic.digest` values (``"absent"``
        for a file that did not / no longer exists).
        """
        with self._write() as conn:
            cursor = conn.execute(
                """INSERT INTO file_edits
                     (op_id, display_path, before_sha, after_sha, backup_path, at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (op_id, display_path, before_sha, after_sha, backup_path, self.clock()),
            )
            row = conn.execute(_EDIT_SELECT + " WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _edit_from_row(row)

    def file_edits(self, op_id: int | None = None) -> list[FileEditRecord]:
        """Recorded edits, oldest first; only those of ``op_id`` when given."""
        if op_id is None:
            rows = self._read(_EDIT_SELECT + " ORDER BY id")
        else:
            rows = self._read(_EDIT_SELECT + " WHERE op_id = ? ORDER BY id", (op_id,))
        return [_edit_from_row(r) for r in rows]

    def backup_path(self, sha: str) -> Path:
        """Where the backup with this sha256 lives; ``sha`` is validated first."""
        if not _SHA256_HEX.match(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return self.backup_dir / sha

    def save_backup(self, data: bytes) -> str:
        """Keep ``data`` under ``backups/<sha256>`` and return the sha.

        Content-addressed: saving the same bytes twice stores them once, and a
        backup is never overwritten with anything else.  Mode 0600 because a
        guest configuration may hold secrets (VNC passwords, for one).
        """
        if self.readonly:
            raise OperationFailed(self.display, "the ledger was opened read-only")
        sha = hashlib.sha256(data).hexdigest()
        path = self.backup_path(sha)
        if read_bytes(path) == data:
            return sha
        try:
            atomic_write(path, data, 0o600)
        except PermissionError as exc:
            raise _permission_error(self.root.host_path(path), "write a backup") from exc
        return sha

    def load_backup(self, sha: str) -> bytes:
        """The bytes saved under ``sha``, checked against it."""
        path = self.backup_path(sha)
        display = self.root.host_path(path)
        try:
            data = read_bytes(path)
        except PermissionError as exc:
            raise _permission_error(display, "read a backup") from exc
        if data is None:
            raise NotFoundError(display, "no such backup", "it may have been deleted by hand")
        if hashlib.sha256(data).hexdigest() != sha:
            raise OperationFailed(
                display, "backup is corrupt (its content does not match its sha256)"
            )
        return data


class OperationHandle:
    """A journalled operation in progress: :meth:`step` after each step, then :meth:`finish`."""

    def __init__(self, ledger: Ledger, op_id: int, kind: str) -> None:
        self.ledger = ledger
        self.id = op_id
        self.kind = kind
        self.steps_done = 0

    def step(self, name: str, undo: Mapping[str, object]) -> int:
        """Record a step that has just happened, with what undoes it; returns its number."""
        seq = self.ledger._add_step(self.id, name, undo)
        self.steps_done = seq
        return seq

    def record_file_edit(
        self, display_path: str, before_sha: str, after_sha: str, backup_path: str | None
    ) -> FileEditRecord:
        return self.ledger.record_file_edit(
            self.id, display_path, before_sha, after_sha, backup_path
        )

    def finish(self) -> None:
        """The operation is complete (or fully rolled back): drop it from the journal."""
        if not self.ledger._remove_operation(self.id):
            raise _no_operation(self.id)


# --- rows --------------------------------------------------------------------

_HIDDEN_SELECT: Final = (
    "SELECT address, identity, stub_driver, original_driver, how, since FROM hidden"
)
_OWNER_SELECT: Final = "SELECT address, guest, config_kind, config_path, since FROM owners"
_EDIT_SELECT: Final = (
    "SELECT id, op_id, display_path, before_sha, after_sha, backup_path, at FROM file_edits"
)


def _hidden_from_row(row: tuple[Any, ...]) -> HiddenRecord:
    address, identity, stub, original, how, since = row
    ident = {str(k): str(v) for k, v in _from_json(identity).items()}
    return HiddenRecord(address, ident, stub, original, how, float(since))


def _owner_from_row(row: tuple[Any, ...]) -> OwnerRecord:
    address, guest, kind, path, since = row
    return OwnerRecord(address, guest, kind, path, float(since))


def _edit_from_row(row: tuple[Any, ...]) -> FileEditRecord:
    edit_id, op_id, display, before, after, backup, at = row
    return FileEditRecord(edit_id, op_id, display, before, after, backup, float(at))


# --- opening and errors ---------------------------------------------------------


_SHM_ERRORS: Final = frozenset(
    {"SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN"}
)


class _ReadonlyNeedsShm(Exception):
    """A read-only open failed because the WAL index could not be created."""


def _configure(conn: sqlite3.Connection, display: str, *, writable: bool) -> None:
    # Only writers set synchronous: that pragma opens the WAL index, which a
    # non-root reader cannot create; _check_schema_readonly handles that case.
    with _sqlite_errors(display):
        conn.execute("PRAGMA foreign_keys = ON")
        if writable:
            conn.execute("PRAGMA synchronous = FULL")


def _enable_wal(conn: sqlite3.Connection, display: str) -> None:
    """Switch a database pcipass has checked to be its own into WAL mode.

    journal_mode is stored in the file, so only the first writer switches it.
    Switching needs a moment of exclusive access, which another process
    opening at the same time may hold: retry within the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    with _sqlite_errors(display):
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _ensure_schema(conn: sqlite3.Connection, display: str) -> None:
    with _sqlite_errors(display):
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(conn, display)
            if version is None:
                for statement in _SCHEMA_V1:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                _refuse_newer(version, display)
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                    version += 1
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),)
                    )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _check_schema_readonly(conn: sqlite3.Connection, display: str) -> None:
    try:
        version = _schema_version(conn, display)
    except sqlite3.OperationalError as exc:
        # SQLITE_READONLY_DIRECTORY / _CANTINIT / CANTOPEN: the WAL index could
        # not be created or mapped (https://www.sqlite.org/rescode.html).
        # Python < 3.11 has no sqlite_errorname: there the message tells it.
        name = getattr(exc, "sqlite_errorname", "")
        text = str(exc)
        if name in _SHM_ERRORS or "unable to open" in text or "readonly database" in text:
            raise _ReadonlyNeedsShm() from exc
        raise _open_error(display, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise _open_error(display, exc) from exc
    if version is None:
        raise _EmptyDatabase()
    _refuse_newer(version, display)
    if version < SCHEMA_VERSION:
        raise OperationFailed(
            display,
            f"the state database has schema version {version}, older than this pcipass "
            f"({SCHEMA_VERSION})",
            "run any command that changes state (as root) to upgrade it",
        )


class _EmptyDatabase(Exception):
    pass


def _schema_version(conn: sqlite3.Connection, display: str) -> int | None:
    """The stored schema version; ``None`` for an empty database."""
    tables = {
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if not str(r[0]).startswith("sqlite_")
    }
    if not tables:
        return None
    if "meta" not in tables:
        raise _not_ours(display, "it has no meta table")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise _not_ours(display, "its meta table has no valid schema_version")
    return int(row[0])


def _refuse_newer(version: int, display: str) -> None:
    if version > SCHEMA_VERSION:
        raise OperationFailed(
            display,
            f"the state database has schema version {version}, but this pcipass "
            f"understands only up to version {SCHEMA_VERSION}",
            "use the newer pcipass that wrote it; pcipass will not downgrade it",
        )


def _empty_view(display: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    _configure(conn, display, writable=False)
    _ensure_schema(conn, display)
    return conn


def _not_ours(display: str, why: str) -> OperationFailed:
    return OperationFailed(
        display,
        f"not a pcipass state database ({why})",
        "move the file aside; pcipass starts a new database on its next change",
    )


def _open_error(display: str, exc: sqlite3.Error) -> OperationFailed:
    return OperationFailed(
        display,
        f"the state database cannot be read: {exc}",
        "it may be corrupt: move it aside (e.g. to state.db.corrupt) and run "
        "`pcipass check`; hidden devices and owners will have to be recorded again",
    )


def _permission_error(display: str, action: str) -> OperationFailed:
    return OperationFailed(
        display,
        f"permission denied: cannot {action}",
        "run pcipass as root",
    )


def _no_operation(op_id: int) -> NotFoundError:
    return NotFoundError(
        f"operation {op_id}",
        "no such open operation in the journal",
        "run `pcipass status` to list open operations",
    )


def format_time(timestamp: float) -> str:
    """Local time with its UTC offset, to the second (for messages)."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def _sqlite_errors(display: str) -> Iterator[None]:
    """Turn SQLite failures into a pcipass error that names the database."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        # DatabaseError covers "file is not a database", "database disk image is
        # malformed", I/O and "database is locked" after the busy timeout.
        raise _open_error(display, exc) from exc
