"""Finding: one rule's verdict about one device or guest."""

from __future__ import annotations

from dataclasses import dataclass

from pcipass.compat import StrEnum


class Severity(StrEnum):
    REFUSE = "refuse"  # the request is unsafe; pcipass will not do it
    WARN = "warn"  # allowed, with a risk the user must know
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    rule: str  # PP001...
    severity: Severity
    subject: str  # the device address or "guest NAME"
    message: str
    remedy: str = ""

    def to_json(self) -> dict[str, object]:
        from pcipass.policy.rules import RULES

        rule = RULES.get(self.rule)
        return {
            "rule": self.rule,
            "name": rule.name if rule else None,
            "severity": str(self.severity),
            "subject": self.subject,
            "message": self.message,
            "remedy": self.remedy,
        }

    def render(self) -> str:
        text = f"[{self.rule}] {self.severity}: {self.subject}: {self.message}"
        return text + (f" ({self.remedy})" if self.remedy else "")


def refusals(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.REFUSE]


def worst_exit(findings: list[Finding]) -> int:
    """``check``'s exit code: 3 when anything is refused, 1 on warnings, else 0."""
    if any(f.severity is Severity.REFUSE for f in findings):
        return 3
    if any(f.severity is Severity.WARN for f in findings):
        return 1
    return 0
