"""Which device a pinned name means now (rule PP114), decided on fingerprints.

The scoring (docs/cli.md "Pinned names"):

* the model must be the same: vendor, device, subsystem vendor/device and
  class all equal (those an identity written by hand gives), or the device is
  not a candidate at all;
* a serial number (DSN or VPD ``SN``) known on both sides decides: equal is
  the strongest evidence there is (score 100), different means another card
  of the same model, never a candidate;
* the physical path (root bus and device.function of each hop) equal: 10;
* the slot name equal: 5; the revision equal: 1.

The best score wins only when no other candidate has it: two cards that
are equally good are a refusal, never a guess.  A match on the ids alone (no
serial, not at the pinned path) is accepted only when the pin saw a single
card of that model on the host: if it saw twins, the remaining one may be the
*other* card.  Policy code: it is handed fingerprints and reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field

RULE = "PP114"
MODEL_KEYS = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")
SERIAL_SCORE = 100
PATH_SCORE = 10
SLOT_SCORE = 5
REVISION_SCORE = 1


@dataclass
class Candidate:
    address: str
    score: int
    why: list[str] = field(default_factory=list)  # what matched
    differs: list[str] = field(default_factory=list)  # what does not
    eligible: bool = True

    def describe(self) -> str:
        parts = []
        if self.why:
            parts.append("same " + ", ".join(self.why))
        if self.differs:
            parts.append("differs: " + "; ".join(self.differs))
        return f"{self.address} ({' / '.join(parts) or 'same model only'})"

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "score": self.score,
            "eligible": self.eligible,
            "matched": self.why,
            "differs": self.differs,
        }


@dataclass
class Resolution:
    name: str
    address: str | None
    candidates: list[Candidate]
    finding: Finding | None = None  # the refusal when address is None

    @property
    def basis(self) -> str:
        """What the match rests on: serial, path, slot or ids."""
        for candidate in self.candidates:
            if candidate.address == self.address:
                return candidate.why[0] if candidate.why else "ids"
        return ""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "basis": self.basis or None,
            "candidates": [c.to_json() for c in self.candidates],
            "finding": None if self.finding is None else self.finding.to_json(),
        }


def _differ(key: str, pinned: str, now: str) -> str:
    return f"{key} {pinned} -> {now}"


def score(pin: Mapping[str, str], current: Mapping[str, str], address: str) -> Candidate:
    """How well the device at ``address`` (fingerprint ``current``) matches ``pin``."""
    candidate = Candidate(address, 0)
    for key in MODEL_KEYS:  # an identity written by hand may leave some out
        if key in pin and pin[key] != current.get(key):
            candidate.eligible = False
            candidate.differs.append(_differ(key, pin.get(key, "?"), current.get(key, "?")))
    serial_pin, serial_now = pin.get("serial"), current.get("serial")
    if serial_pin and serial_now:
        if serial_pin == serial_now:
            candidate.score += SERIAL_SCORE
            candidate.why.append("serial")
        else:
            candidate.eligible = False
            candidate.differs.append(_differ("serial", serial_pin, serial_now))
    elif serial_pin:
        candidate.differs.append(f"serial {serial_pin} -> none readable")
    if pin.get("path") and pin.get("path") == current.get("path"):
        candidate.score += PATH_SCORE
        candidate.why.append("path")
    elif pin.get("path"):
        candidate.differs.append(_differ("path", pin["path"], current.get("path", "?")))
    if pin.get("slot") and pin.get("slot") == current.get("slot"):
        candidate.score += SLOT_SCORE
        candidate.why.append("slot")
    elif pin.get("slot"):
        candidate.differs.append(_differ("slot", pin["slot"], current.get("slot", "none")))
    if pin.get("revision") == current.get("revision"):
        candidate.score += REVISION_SCORE
    elif "revision" in pin:
        candidate.differs.append(
            _differ("revision", pin.get("revision", "?"), current.get("revision", "?"))
        )
    return candidate


def interesting(pin: Mapping[str, str], current: Mapping[str, str]) -> bool:
    """Worth listing in a refusal: the same model, the same serial, or at the pinned path."""
    same_model = all(pin.get(k) == current.get(k) for k in MODEL_KEYS[:2])
    same_serial = bool(pin.get("serial")) and pin.get("serial") == current.get("serial")
    same_place = bool(pin.get("path")) and pin.get("path") == current.get("path")
    return same_model or same_serial or same_place


def resolve(
    name: str,
    pin: Mapping[str, str],
    devices: Sequence[tuple[str, Mapping[str, str]]],
    *,
    twins_when_pinned: int = 1,
) -> Resolution:
    """The one device of ``devices`` (address, fingerprint) that ``pin`` names."""
    candidates = [score(pin, fp, address) for address, fp in devices if interesting(pin, fp)]
    candidates.sort(key=lambda c: (not c.eligible, -c.score, c.address))
    eligible = [c for c in candidates if c.eligible]
    subject = f"@{name}"
    listed = "; ".join(c.describe() for c in candidates) or "no device of that model"
    if not eligible:
        return Resolution(
            name,
            None,
            candidates,
            Finding(
                RULE,
                Severity.REFUSE,
                subject,
                f"no device matches pin {name} ({_summary(pin)}); seen: {listed}",
                "was the card removed or replaced? `pcipass pin BDF "
                f"{name}` again to pin the card now in use, or `pcipass unpin {name}`",
            ),
        )
    best = eligible[0]
    tied = [c for c in eligible if c.score == best.score]
    if len(tied) > 1:
        return Resolution(
            name,
            None,
            candidates,
            Finding(
                RULE,
                Severity.REFUSE,
                subject,
                f"{len(tied)} devices match pin {name} equally well: "
                + "; ".join(c.describe() for c in tied),
                "name the device by its address, or pin it again where it is now "
                f"(`pcipass pin BDF {name}`)",
            ),
        )
    ids_only = not ({"serial", "path"} & set(best.why))
    if ids_only and twins_when_pinned > 1:
        return Resolution(
            name,
            None,
            candidates,
            Finding(
                RULE,
                Severity.REFUSE,
                subject,
                f"pin {name} was made among {twins_when_pinned} identical cards without "
                f"a serial, and the only one left is not at the pinned path: {best.describe()}",
                f"check which card this is, then `pcipass pin {best.address} {name}`",
            ),
        )
    return Resolution(name, best.address, candidates)


def _summary(pin: Mapping[str, str]) -> str:
    text = f"{pin.get('vendor', '?')}:{pin.get('device', '?')}"
    if pin.get("serial"):
        text += f" serial {pin['serial']}"
    if pin.get("path"):
        text += f" at {pin['path']}"
    return text
