"""The state database's file: schema, opening checks, and errors that name it.

Split from state/ledger.py (which keeps the records API): what a ``state.db``
must look like (schema version 2: version 1 and its migrations), how it is
opened (WAL, ``synchronous=FULL``, read-only fallbacks for non-root readers),
how a file that is not ours, newer, damaged or emptied is recognised, and how
SQLite errors become one-line pcipass errors.  A full or read-only disk is
never reported as corruption.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
import time
from collections.abc import Iterator

from pcipass.errors import NotFoundError, OperationFailed
from pcipass.state.presence import BACKUP_DIR, DB_NAME

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

SCHEMA_VERSION: Final = 2
# A read-only open (no upgrade possible) accepts an older file whose later
# versions only added tables: version 2's ``pins`` reads as empty there.
READABLE_FROM: Final = 1

# How long a writer waits for another writer's transaction before SQLite gives
# up with "database is locked".  Transactions here are a few statements long;
# the generous bound only matters under heavy contention (40 processes).
BUSY_TIMEOUT_SECONDS: Final = 30.0


# One statement per element: ``executescript`` would COMMIT the surrounding
# transaction first, and schema creation must happen inside one.
SCHEMA_V1: Final = (
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

# Version 2: pinned names (``pcipass pin``): a device's fingerprint
# (host/fingerprint.py) under a name, where it was when pinned, and how many
# cards of the same model the host had then (policy/pin_match.py).
PINS_V2: Final = (
    """CREATE TABLE pins (
        name        TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        address     TEXT NOT NULL,
        twins       INTEGER NOT NULL DEFAULT 1,
        since       REAL NOT NULL
    )""",
)

# Migrations from version N to N+1, applied in order inside the opening
# transaction.  A new database gets version 1 and every migration after it.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {1: PINS_V2}


# --- opening and errors ---------------------------------------------------------


_SHM_ERRORS: Final = frozenset(
    {"SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN"}
)


class ReadonlyNeedsShm(Exception):
    """A read-only open failed because the WAL index could not be created."""


def configure(conn: sqlite3.Connection, display: str, *, writable: bool) -> None:
    # Only writers set synchronous: that pragma opens the WAL index, which a
    # non-root reader cannot create; check_schema_readonly handles that case.
    with sqlite_errors(display):
        conn.execute("PRAGMA foreign_keys = ON")
        if writable:
            conn.execute("PRAGMA synchronous = FULL")


def enable_wal(conn: sqlite3.Connection, display: str) -> None:
    """Switch a database pcipass has checked to be its own into WAL mode.

    journal_mode is stored in the file, so only the first writer switches it.
    Switching needs a moment of exclusive access, which another process
    opening at the same time may hold: retry within the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    with sqlite_errors(display):
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


# Written next to state.db once its schema exists: a state.db found empty (0
# bytes, or no tables) while this marker is there lost what it recorded.
USED_MARKER: Final = "state.db.in-use"


def used_before(dir_fd: int) -> bool:
    """Did pcipass record something in this state directory (held as
    ``dir_fd``, see state/opening.py)?  Looked up by descriptor, never through a link."""
    try:
        os.stat(USED_MARKER, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        pass
    try:
        fd = os.open(BACKUP_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return bool(os.listdir(fd))
    finally:
        os.close(fd)


def mark_used(dir_fd: int) -> None:
    # Created through the held state directory, never through a link, and only once.
    try:
        fd = os.open(
            USED_MARKER,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=dir_fd,
        )
    except FileExistsError:
        return
    try:
        os.write(
            fd,
            b"pcipass keeps its state in state.db; if state.db is ever found empty, "
            b"its records were lost (pcipass recover --rebuild-ledger)\n",
        )
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def set_aside(dir_fd: int) -> None:
    """Keep a damaged database (and its side files) as ``state.db.lost-N`` for inspection."""
    if not _exists(DB_NAME, dir_fd):
        return
    number = 1
    while _exists(f"{DB_NAME}.lost-{number}", dir_fd):
        number += 1
    for suffix in ("", "-wal", "-shm"):
        if _exists(DB_NAME + suffix, dir_fd):
            os.replace(
                DB_NAME + suffix,
                f"{DB_NAME}.lost-{number}{suffix}",
                src_dir_fd=dir_fd,
                dst_dir_fd=dir_fd,
            )


def lost_records(display: str) -> OperationFailed:
    return OperationFailed(
        display,
        "the state database is empty (0 bytes or no tables) although pcipass recorded "
        "state here before: hidden devices and ownership may be lost (PP101 cannot "
        "protect a guest's device)",
        "run `pcipass recover --rebuild-ledger` to rebuild them from the guest "
        "configurations and the current bindings",
    )


def ensure_schema(conn: sqlite3.Connection, display: str, *, had_records: bool = False) -> None:
    with sqlite_errors(display):
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(conn, display)
            if version is None and had_records:
                raise lost_records(display)
            if version is None:
                for statement in SCHEMA_V1:
                    conn.execute(statement)
                for version_from in sorted(MIGRATIONS):
                    for statement in MIGRATIONS[version_from]:
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                _refuse_newer(version, display)
                while version < SCHEMA_VERSION:
                    for statement in MIGRATIONS[version]:
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


def check_schema_readonly(conn: sqlite3.Connection, display: str) -> None:
    try:
        version = _schema_version(conn, display)
    except sqlite3.OperationalError as exc:
        # SQLITE_READONLY_DIRECTORY / _CANTINIT / CANTOPEN: the WAL index could
        # not be created or mapped (https://www.sqlite.org/rescode.html).
        # Python < 3.11 has no sqlite_errorname: there the message tells it.
        name = getattr(exc, "sqlite_errorname", "")
        text = str(exc)
        if name in _SHM_ERRORS or "unable to open" in text or "readonly database" in text:
            raise ReadonlyNeedsShm() from exc
        raise open_error(display, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise open_error(display, exc) from exc
    if version is None:
        raise EmptyDatabase()
    _refuse_newer(version, display)
    if version < READABLE_FROM:
        raise OperationFailed(
            display,
            f"the state database has schema version {version}, older than this pcipass "
            f"({SCHEMA_VERSION})",
            "run any command that changes state (as root) to upgrade it",
        )


class EmptyDatabase(Exception):
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


def empty_view(display: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    configure(conn, display, writable=False)
    ensure_schema(conn, display)
    return conn


def _not_ours(display: str, why: str) -> OperationFailed:
    return OperationFailed(
        display,
        f"not a pcipass state database ({why})",
        "move the file aside; pcipass starts a new database on its next change",
    )


def open_error(display: str, exc: sqlite3.Error) -> OperationFailed:
    text = str(exc)
    if "full" in text or "disk I/O error" in text or "readonly" in text or "read-only" in text:
        # A full or read-only disk is not a damaged ledger: never advise
        # throwing the records (hidden devices, owners) away for it.
        return OperationFailed(
            display,
            f"the state database cannot be written: {exc}",
            "free space on (or remount read-write) the filesystem of /var/lib/pcipass, "
            "then run the command again; the ledger itself is intact",
        )
    if "malformed" not in text and "not a database" not in text:
        # Only a damaged file is worth moving aside; anything else (busy, locked,
        # an I/O error) leaves the ledger intact.
        return OperationFailed(display, f"the state database cannot be used: {text}")
    return OperationFailed(
        display,
        f"the state database cannot be read: {exc}",
        "it may be corrupt: move it aside (e.g. to state.db.corrupt) and run "
        "`pcipass check`; hidden devices and owners will have to be recorded again",
    )


def permission_error(display: str, action: str) -> OperationFailed:
    return OperationFailed(
        display,
        f"permission denied: cannot {action}",
        "run pcipass as root",
    )


def no_operation(op_id: int) -> NotFoundError:
    return NotFoundError(
        f"operation {op_id}",
        "no such open operation in the journal",
        "run `pcipass status` to list open operations",
    )


def format_time(timestamp: float) -> str:
    """Local time with its UTC offset, to the second (for messages)."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def sqlite_errors(display: str) -> Iterator[None]:
    """Turn SQLite failures into a pcipass error that names the database."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        # DatabaseError covers "file is not a database", "database disk image is
        # malformed", I/O and "database is locked" after the busy timeout.
        raise open_error(display, exc) from exc
