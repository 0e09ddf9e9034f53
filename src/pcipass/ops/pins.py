"""``pin``, ``unpin``, ``pin --list`` and the resolution of ``@NAME``.

A pin records a device's fingerprint (host/fingerprint.py) under a name in
the ledger; ``@NAME`` is then accepted wherever an address is, and means the
device that matches the fingerprint *now* (policy/pin_match.py), wherever the
buses put it this boot.  No match, or several equally good ones, is a refusal
(PP114) that lists the candidates and what differs: never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipass.address import PciAddress
from pcipass.errors import NotFoundError, RefusedError, UsageError
from pcipass.host.context import Host
from pcipass.host.device import PciDevice, read_all, read_one
from pcipass.host.fingerprint import fingerprint, physical_path
from pcipass.patterns import lazy
from pcipass.policy.pin_match import MODEL_KEYS, Resolution, resolve
from pcipass.record import dataclass
from pcipass.state.ledger import Ledger, PinRecord
from pcipass.state.lock import StateLock

# A name is a word a shell, a TOML key and a journal line carry unquoted.
_NAME = lazy(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            name,
            "not a valid pin name",
            "use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return name


@dataclass
class PinResult:
    name: str
    address: str
    fingerprint: dict[str, str]
    twins: int
    replaced: str | None  # the address the name pointed at before, if it was pinned
    changed: bool

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "fingerprint": self.fingerprint,
            "twins": self.twins,
            "replaced": self.replaced,
            "changed": self.changed,
        }

    def render(self) -> str:
        basis = "serial " + self.fingerprint["serial"] if "serial" in self.fingerprint else ""
        if not basis:
            basis = f"path {self.fingerprint['path']}"
            if self.twins > 1:
                basis += f" ({self.twins} identical cards without a serial: the path decides)"
        if not self.changed:
            return f"@{self.name}: already pins {self.address}; no change"
        return f"@{self.name}: pinned {self.address} (identified by {basis})"


def _twins(devices: list[PciDevice], host: Host, print_: Mapping[str, str]) -> int:
    """How many cards of this model carry no serial to tell them apart."""
    if "serial" in print_:
        return 1
    same = [
        d
        for d in devices
        if (f"{d.vendor:04x}" if d.vendor is not None else "?") == print_["vendor"]
        and (f"{d.device:04x}" if d.device is not None else "?") == print_["device"]
    ]
    return max(1, sum(1 for d in same if _same_model(fingerprint(host, d), print_)))


def _same_model(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return all(a.get(k) == b.get(k) for k in MODEL_KEYS)


def pin(host: Host, address: PciAddress, name: str) -> PinResult:
    check_name(name)
    device = read_one(host.sysfs, address)  # raises DeviceNotFoundError
    print_ = fingerprint(host, device)
    devices, _ = read_all(host.sysfs)
    twins = _twins(devices, host, print_)
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        before = ledger.get_pin(name)
        unchanged = (
            before is not None
            and before.fingerprint == print_
            and before.address == str(address)
            and before.twins == twins
        )
        if not unchanged:
            ledger.record_pin(name, print_, address, twins=twins)
    return PinResult(
        name,
        str(address),
        print_,
        twins,
        before.address if before is not None and before.address != str(address) else None,
        changed=not unchanged,
    )


def unpin(host: Host, name: str) -> bool:
    check_name(name)
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        if not ledger.forget_pin(name):
            raise NotFoundError(f"@{name}", "no such pin", "see `pcipass pin --list`")
    return True


def pins(host: Host) -> list[PinRecord]:
    with Ledger.open(host.root, readonly=True) as ledger:
        return ledger.pins()


def resolution(host: Host, record: PinRecord, devices: list[PciDevice] | None = None) -> Resolution:
    """Where ``record``'s device is now (or the refusal saying why it cannot be told)."""
    return find_identity(host, record.name, record.fingerprint, record.twins, devices)


def find_identity(
    host: Host,
    name: str,
    wanted: Mapping[str, str],
    twins: int = 1,
    devices: list[PciDevice] | None = None,
) -> Resolution:
    """The device matching ``wanted`` (a fingerprint, or an identity written by hand)."""
    if devices is None:
        devices, _ = read_all(host.sysfs)
    seen: list[tuple[str, dict[str, str]]] = []
    for device in devices:
        same_id = (
            device.vendor is not None
            and device.device is not None
            and f"{device.vendor:04x}:{device.device:04x}"
            == f"{wanted.get('vendor')}:{wanted.get('device')}"
        )
        # Cheap filter first: only the same model or the pinned place is fingerprinted.
        if same_id or physical_path(device.sysfs_path) == wanted.get("path"):
            seen.append((str(device.address), fingerprint(host, device)))
    return resolve(name, wanted, seen, twins_when_pinned=twins)


def resolve_pin(host: Host, name: str) -> PciAddress:
    """The address ``@name`` stands for now; PP114 refusal or not found otherwise."""
    check_name(name)
    with Ledger.open(host.root, readonly=True) as ledger:
        record = ledger.get_pin(name)
    if record is None:
        raise NotFoundError(f"@{name}", "no such pin", f"pin it first: `pcipass pin BDF {name}`")
    found = resolution(host, record)
    if found.address is None:
        assert found.finding is not None
        refusal = found.finding
        raise RefusedError(
            refusal.subject, refusal.message, refusal.remedy, rule=refusal.rule, findings=[refusal]
        )
    return PciAddress.parse(found.address)


def resolve_text(host: Host, text: str) -> PciAddress:
    """An address as the user typed it: ``BDF`` or ``@NAME``."""
    if text.startswith("@"):
        return resolve_pin(host, text[1:])
    return PciAddress.parse(text)
