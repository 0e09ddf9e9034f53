"""Finding: one rule's verdict about one device or guest."""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.compat import StrEnum
from pcipass.errors import ExitCode, RefusedError
from pcipass.record import dataclass


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
    # Findings about a file line also say which (persistent configuration):
    code: str = ""  # a stable short name within the rule, e.g. "duplicate-hide"
    path: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, object]:
        from pcipass.policy.rules import RULES

        rule = RULES.get(self.rule)
        data: dict[str, object] = {
            "rule": self.rule,
            "name": rule.name if rule else None,
            "severity": str(self.severity),
            "subject": self.subject,
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.code:  # keys added only where they mean something (docs/json.md)
            data.update(code=self.code, path=self.path, line=self.line)
        return data

    def render(self) -> str:
        text = f"[{self.rule}] {self.severity}: {self.subject}: {self.message}"
        return text + (f" ({self.remedy})" if self.remedy else "")


def refusals(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.REFUSE]


def refusal_error(
    blocking: Sequence[Finding], subject: str, *, listed: Sequence[Finding] | None = None
) -> RefusedError:
    """The one RefusedError for refusing findings (``blocking`` is not empty).

    One refusal speaks for itself (its subject, message and remedy); several
    are summed up under ``subject`` and each is listed.  ``listed`` are the
    findings the error carries for ``--json`` (default: the refusals)."""
    shown = list(blocking if listed is None else listed)
    if len(blocking) == 1:
        only = blocking[0]
        return RefusedError(only.subject, only.message, only.remedy, rule=only.rule, findings=shown)
    rules = ", ".join(dict.fromkeys(f.rule for f in blocking))
    return RefusedError(
        subject,
        f"{len(blocking)} refusals ({rules}); nothing was changed",
        "see each one below",
        rule=blocking[0].rule,
        findings=shown,
    )


def raise_refusals(
    findings: Sequence[Finding], subject: str, *, listed: Sequence[Finding] | None = None
) -> None:
    """Raise :func:`refusal_error` when any of ``findings`` refuses."""
    blocking = refusals(findings)
    if blocking:
        raise refusal_error(blocking, subject, listed=listed)


def worst_exit(findings: Sequence[Finding]) -> ExitCode:
    """``check``'s exit code: 3 when anything is refused, 1 on warnings, else 0."""
    if any(f.severity is Severity.REFUSE for f in findings):
        return ExitCode.REFUSED
    if any(f.severity is Severity.WARN for f in findings):
        return ExitCode.FAILED
    return ExitCode.OK
