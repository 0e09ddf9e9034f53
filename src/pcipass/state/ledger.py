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
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import NotFoundError, OperationFailed, RefusedError
from pcipass.host.root import HostRoot
from pcipass.patterns import lazy
from pcipass.persist.atomic import write_file
from pcipass.state.opening import StateDir, db_uri, open_state_dir, verified
from pcipass.state.presence import BACKUP_DIR, DB_NAME
from pcipass.state.records import (
    EDIT_SELECT,
    HIDDEN_SELECT,
    HIDE_MODES,
    HOTPLUG_KINDS,
    OWNER_SELECT,
    STUB_DRIVERS,
    UNCERTAIN_PREFIX,
    Clock,
    FileEditRecord,
    HiddenRecord,
    HotplugAdmission,
    HotplugEvent,
    JournalStep,
    JsonObject,
    OpenOperation,
    OwnerRecord,
    PinRecord,
    canonical_address,
    check_choice,
    edit_from_row,
    from_json,
    hidden_from_row,
    owner_from_row,
    to_json,
)
from pcipass.state.schema import (
    BUSY_TIMEOUT_SECONDS,
    SCHEMA_VERSION,
    EmptyDatabase,
    ReadonlyNeedsShm,
    check_schema_readonly,
    configure,
    empty_view,
    enable_wal,
    ensure_schema,
    format_time,
    lost_records,
    mark_used,
    no_operation,
    open_error,
    permission_error,
    set_aside,
    sqlite_errors,
    used_before,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BACKUP_DIR",
    "BUSY_TIMEOUT_SECONDS",
    "DB_NAME",
    "HIDE_MODES",
    "HOTPLUG_KINDS",
    "SCHEMA_VERSION",
    "STUB_DRIVERS",
    "UNCERTAIN_PREFIX",
    "FileEditRecord",
    "HiddenRecord",
    "HotplugAdmission",
    "HotplugEvent",
    "JournalStep",
    "JsonObject",
    "Ledger",
    "OpenOperation",
    "OperationHandle",
    "OwnerRecord",
    "PinRecord",
    "format_time",
]

_SHA256_HEX = lazy(r"^[0-9a-f]{64}$")


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
        rebuild: bool = False,
    ) -> Ledger:
        """Open the ledger of ``root``.

        A writable open creates the state directory and database on first use.
        A read-only open never creates anything: on a root without a database
        it gives an empty view (an in-memory database with the schema).
        """
        display = root.host_path(root.state_dir / DB_NAME)
        state = open_state_dir(root, display, create=not readonly)
        if state is None:
            if not readonly:  # created above unless something vanished meanwhile
                raise OperationFailed(display, "the state directory could not be created")
            # No state directory: nothing recorded.
            return cls(empty_view(display), root, readonly=True, clock=clock, display=display)
        try:
            state.refuse_links()
            if readonly:
                conn = cls._connect_readonly(state, display)
            else:
                if rebuild:
                    set_aside(state.fd)
                conn = cls._connect_writable(state, display, rebuild=rebuild)
        finally:
            state.close()
        return cls(conn, root, readonly=readonly, clock=clock, display=display)

    @staticmethod
    def _connect_writable(state: StateDir, display: str, *, rebuild: bool) -> sqlite3.Connection:
        had_records = not rebuild and used_before(state.fd)
        db_fd = state.open_db(create=True)
        assert db_fd is not None  # created if absent
        try:
            with verified(state, db_fd) as check:
                try:
                    conn = sqlite3.connect(
                        db_uri(state, "rw"),
                        uri=True,
                        timeout=BUSY_TIMEOUT_SECONDS,
                        isolation_level=None,
                    )
                except sqlite3.Error as exc:
                    raise open_error(display, exc) from exc
                check(conn)  # before any statement: SQLite holds our inode
                try:
                    configure(conn, display, writable=True)
                    # Schema first: a file that is not ours (or is newer) is refused
                    # before anything about it, its journal mode included, changes.
                    ensure_schema(conn, display, had_records=had_records)
                    enable_wal(conn, display)
                    check(conn)  # the WAL and its index are ours too
                    mark_used(state.fd)
                except BaseException:
                    conn.close()
                    raise
        finally:
            os.close(db_fd)
        return conn

    @staticmethod
    def _connect_readonly(state: StateDir, display: str) -> sqlite3.Connection:
        db_fd = state.open_db(create=False)
        if db_fd is None:
            if used_before(state.fd):
                raise lost_records(display)
            return empty_view(display)
        try:
            return Ledger._connect_readonly_fd(state, db_fd, display)
        finally:
            os.close(db_fd)

    @staticmethod
    def _connect_readonly_fd(state: StateDir, db_fd: int, display: str) -> sqlite3.Connection:
        uri = db_uri(state, "ro")
        # A reader of a WAL database must create or map the "-shm" index next
        # to it, and a non-root user cannot create files in /var/lib/pcipass.
        # When no "-wal" file exists (the last writer checkpointed and removed
        # it) the main file is complete and may be read as immutable instead
        # (https://www.sqlite.org/wal.html#readonly, URI parameter "immutable").
        for immutable in (False, True):
            if immutable and state.lstat(DB_NAME + "-wal") is not None:
                break
            with verified(state, db_fd) as check:
                try:
                    conn = sqlite3.connect(
                        uri + ("&immutable=1" if immutable else ""),
                        uri=True,
                        timeout=BUSY_TIMEOUT_SECONDS,
                        isolation_level=None,
                    )
                except sqlite3.Error as exc:
                    raise open_error(display, exc) from exc
                check(conn)  # before any statement: SQLite holds our inode
                try:
                    configure(conn, display, writable=False)
                    check_schema_readonly(conn, display)
                    check(conn)
                except ReadonlyNeedsShm:
                    conn.close()
                    continue
                except EmptyDatabase:
                    # A 0-byte file is an empty database: nothing recorded yet,
                    # unless pcipass recorded something here before.
                    conn.close()
                    if used_before(state.fd):
                        raise lost_records(display) from None
                    return empty_view(display)
                except BaseException:
                    conn.close()
                    raise
            return conn
        raise permission_error(display, "read the state database while another pcipass writes it")

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
        with sqlite_errors(self.display):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite_errors(self.display):
            return list(self._conn.execute(sql, params).fetchall())

    # -- pinned names (``pcipass pin``) ---------------------------------------

    def record_pin(
        self, name: str, fingerprint: Mapping[str, str], address: PciAddress, *, twins: int
    ) -> PinRecord:
        """Record (or replace) the pin ``name``; the name is checked by the caller."""
        data = dict(fingerprint)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError("fingerprint must map str to str")
        with self._write() as conn:
            conn.execute(
                """INSERT INTO pins (name, fingerprint, address, twins, since)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,
                     address = excluded.address, twins = excluded.twins, since = excluded.since
                """,
                (name, to_json("fingerprint", data), str(address), twins, self.clock()),
            )
        return PinRecord(name, data, str(address), twins, self.clock())

    def forget_pin(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM pins WHERE name = ?", (name,)).rowcount > 0

    def pins(self) -> list[PinRecord]:
        """Every pin, by name; none from a version-1 file opened read-only."""
        has_table = self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pins'")
        if not has_table:
            return []
        rows = self._read("SELECT name, fingerprint, address, twins, since FROM pins ORDER BY name")
        result = []
        for name, text, address, twins, since in rows:
            data = from_json(text)
            fingerprint = {str(k): str(v) for k, v in data.items()}
            result.append(PinRecord(str(name), fingerprint, str(address), int(twins), float(since)))
        return result

    def get_pin(self, name: str) -> PinRecord | None:
        return next((p for p in self.pins() if p.name == name), None)

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
        key = canonical_address(address)
        check_choice("stub driver", stub_driver, STUB_DRIVERS)
        check_choice("hide mode", how, HIDE_MODES)
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
                (key, to_json("identity", ident), stub_driver, original_driver, how, self.clock()),
            )
            row = conn.execute(HIDDEN_SELECT + " WHERE address = ?", (key,)).fetchone()
        return hidden_from_row(row)

    def forget_hidden(self, address: PciAddress | str) -> bool:
        """Drop the record of a hidden device; ``False`` if there was none."""
        key = canonical_address(address)
        with self._write() as conn:
            return conn.execute("DELETE FROM hidden WHERE address = ?", (key,)).rowcount > 0

    def restore_hidden(self, address: PciAddress | str, saved: Mapping[str, Any] | None) -> None:
        """Put a hidden record back exactly as a journal intent saved it (``None``: absent).

        Used by rollback and recover: unlike :meth:`record_hidden` nothing is
        merged, the saved record (or its absence) is the truth.
        """
        key = canonical_address(address)
        with self._write() as conn:
            conn.execute("DELETE FROM hidden WHERE address = ?", (key,))
            if saved is None:
                return
            stub, how = str(saved.get("stub_driver")), str(saved.get("how"))
            check_choice("stub driver", stub, STUB_DRIVERS)
            check_choice("hide mode", how, HIDE_MODES)
            original = saved.get("original_driver")
            identity = saved.get("identity")
            conn.execute(
                """INSERT INTO hidden (address, identity, stub_driver, original_driver, how, since)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (
                    key,
                    to_json("identity", identity if isinstance(identity, dict) else {}),
                    stub,
                    None if original is None else str(original),
                    how,
                    float(saved.get("since") or self.clock()),
                ),
            )

    def set_hidden_how(self, address: PciAddress | str, how: str) -> None:
        """Change how a recorded device is hidden (``unhide --now`` of a ``both``)."""
        check_choice("hide mode", how, HIDE_MODES)
        with self._write() as conn:
            conn.execute(
                "UPDATE hidden SET how = ? WHERE address = ?", (how, canonical_address(address))
            )

    def hidden(self) -> list[HiddenRecord]:
        return [hidden_from_row(r) for r in self._read(HIDDEN_SELECT + " ORDER BY address")]

    def get_hidden(self, address: PciAddress | str) -> HiddenRecord | None:
        rows = self._read(HIDDEN_SELECT + " WHERE address = ?", (canonical_address(address),))
        return hidden_from_row(rows[0]) if rows else None

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
        key = canonical_address(address)
        with self._write() as conn:
            row = conn.execute(OWNER_SELECT + " WHERE address = ?", (key,)).fetchone()
            if row is not None and row[1] != guest:
                current = owner_from_row(row)
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
            row = conn.execute(OWNER_SELECT + " WHERE address = ?", (key,)).fetchone()
        return owner_from_row(row)

    def release(self, address: PciAddress | str, guest: str) -> bool:
        """``guest`` gives ``address`` up.  ``False`` if nobody owned it.

        Releasing a device another guest owns is refused (PP101): a detach for
        the wrong guest must not free a device for a second owner.
        """
        key = canonical_address(address)
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
        rows = self._read(OWNER_SELECT + " WHERE address = ?", (canonical_address(address),))
        return owner_from_row(rows[0]) if rows else None

    def owners(self) -> list[OwnerRecord]:
        return [owner_from_row(r) for r in self._read(OWNER_SELECT + " ORDER BY address")]

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
        key = canonical_address(address)
        check_choice("hotplug kind", kind, HOTPLUG_KINDS)
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
        key = canonical_address(address)
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
            params.append(canonical_address(address))
        if since is not None:
            sql += " AND at > ?"
            params.append(since)
        rows = self._read(sql + " ORDER BY at, id", tuple(params))
        return [HotplugEvent(r[0], r[1], r[2], float(r[3])) for r in rows]

    # -- journal ---------------------------------------------------------------

    def begin(self, kind: str, intent: Mapping[str, object]) -> OperationHandle:
        """Write the intent of an operation, before its first step."""
        text = to_json("intent", intent)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO operations (kind, intent, started, pid) VALUES (?, ?, ?, ?)",
                (kind, text, self.clock(), os.getpid()),
            )
            op_id = cursor.lastrowid
        assert op_id is not None
        return OperationHandle(self, op_id, kind)

    def _add_step(self, op_id: int, name: str, undo: Mapping[str, object]) -> int:
        text = to_json("undo", undo)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM operations WHERE id = ?", (op_id,)).fetchone() is None:
                raise no_operation(op_id)
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
        with sqlite_errors(self.display):
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
                    EDIT_SELECT + " WHERE op_id IN (SELECT id FROM operations) ORDER BY id"  # noqa: S608
                ).fetchall()
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")
        by_op: dict[int, list[JournalStep]] = {}
        for op_id, seq, name, undo, at in steps:
            by_op.setdefault(op_id, []).append(JournalStep(seq, name, from_json(undo), at))
        edits_by_op: dict[int, list[FileEditRecord]] = {}
        for row in edits:
            record = edit_from_row(row)
            edits_by_op.setdefault(record.op_id or 0, []).append(record)
        return [
            OpenOperation(
                id=op_id,
                kind=kind,
                intent=from_json(intent),
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
            raise no_operation(op_id)

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
            row = conn.execute(EDIT_SELECT + " WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return edit_from_row(row)

    def file_edits(self, op_id: int | None = None) -> list[FileEditRecord]:
        """Recorded edits, oldest first; only those of ``op_id`` when given."""
        if op_id is None:
            rows = self._read(EDIT_SELECT + " ORDER BY id")
        else:
            rows = self._read(EDIT_SELECT + " WHERE op_id = ? ORDER BY id", (op_id,))
        return [edit_from_row(r) for r in rows]

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
        sha = _sha256(data)
        display = self.root.host_path(self.backup_path(sha))
        if self.root.files.read_bytes(display) == data:
            return sha
        write_file(self.root.files, display, data, 0o600)
        return sha

    def load_backup(self, sha: str) -> bytes:
        """The bytes saved under ``sha``, checked against it."""
        display = self.root.host_path(self.backup_path(sha))
        data = self.root.files.read_bytes(display)
        if data is None:
            raise NotFoundError(display, "no such backup", "it may have been deleted by hand")
        if _sha256(data) != sha:
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
            raise no_operation(self.id)


def _sha256(data: bytes) -> str:
    # hashlib (with OpenSSL) only when a backup is saved or read: ~2 ms that
    # every command opening the ledger paid at start-up (issue #13).
    import hashlib

    return hashlib.sha256(data).hexdigest()
