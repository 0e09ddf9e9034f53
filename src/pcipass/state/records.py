"""The ledger's records and their JSON/row forms (split from state/ledger.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from pcipass.address import PciAddress
from pcipass.host.stubs import RECORDED_STUBS
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final

    JsonObject = dict[str, Any]
    Clock = Callable[[], float]
else:
    # The aliases only matter to the type checker; typing cost 2-3 ms of start-up (issue #13).
    JsonObject = dict
    Clock = Callable

# The stub names a record may carry (host/stubs.py is the one vocabulary).
STUB_DRIVERS: Final = RECORDED_STUBS
HIDE_MODES: Final = frozenset({"now", "persist", "both"})
HOTPLUG_KINDS: Final = frozenset({"attach", "detach"})
# An owner whose config_kind starts with this is "maybe in guest G": a live
# hotplug was started and its outcome is not known yet (no answer, timeout,
# Ctrl-C).  It blocks the device like any owner until `recover` or a repeat
# asks the toolstack and records the truth.
UNCERTAIN_PREFIX: Final = "maybe-"


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
class PinRecord:
    """A pinned name: a device's fingerprint (host/fingerprint.py) under a name."""

    name: str
    fingerprint: dict[str, str]
    address: str  # where the device was when pinned
    twins: int  # cards of the same model (and no serial) on the host then
    since: float


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


def canonical_address(address: PciAddress | str) -> str:
    """Addresses are keys: store them in the one kernel spelling."""
    if isinstance(address, PciAddress):
        return str(address)
    return str(PciAddress.parse(address))


def to_json(what: str, value: Mapping[str, object]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


def from_json(text: str) -> JsonObject:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def check_choice(what: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, not {value!r}")


# --- rows --------------------------------------------------------------------

HIDDEN_SELECT: Final = (
    "SELECT address, identity, stub_driver, original_driver, how, since FROM hidden"
)
OWNER_SELECT: Final = "SELECT address, guest, config_kind, config_path, since FROM owners"
EDIT_SELECT: Final = (
    "SELECT id, op_id, display_path, before_sha, after_sha, backup_path, at FROM file_edits"
)


def hidden_from_row(row: tuple[Any, ...]) -> HiddenRecord:
    address, identity, stub, original, how, since = row
    ident = {str(k): str(v) for k, v in from_json(identity).items()}
    return HiddenRecord(address, ident, stub, original, how, float(since))


def owner_from_row(row: tuple[Any, ...]) -> OwnerRecord:
    address, guest, kind, path, since = row
    return OwnerRecord(address, guest, kind, path, float(since))


def edit_from_row(row: tuple[Any, ...]) -> FileEditRecord:
    edit_id, op_id, display, before, after, backup, at = row
    return FileEditRecord(edit_id, op_id, display, before, after, backup, float(at))
