"""Rule PP007: a persistent limit on hotplug/unplug of an assigned device.

The source document's Warning (rhel5-xen-pci-passthrough.txt): "Due to
interrupt tracking, repeatedly hotplugging or hotunplugging an assigned device
more than 512 times in a brief period of time can cause a kernel error."  The
document gives no length for "brief", so pcipass keeps far below 512: by
default 32 events per device in any 10 minutes, configurable up to
:data:`MAX_BUDGET` (256, half the kernel's limit) and never above.

The count lives in the ledger, not in memory, because every ``pcipass attach``
is a new process: the limit must hold across processes and reboots of pcipass.
Counting and recording happen in one ``BEGIN IMMEDIATE`` transaction
(:meth:`~pcipass.state.ledger.Ledger.admit_hotplug`), so concurrent processes
cannot overshoot the budget.
"""

from __future__ import annotations

import math

from pcipass.address import PciAddress
from pcipass.errors import RefusedError, UsageError
from pcipass.record import dataclass
from pcipass.state.ledger import HotplugEvent, Ledger, format_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

DEFAULT_BUDGET: Final = 32
DEFAULT_WINDOW_SECONDS: Final = 600.0
# Half the document's 512: a configuration may loosen the default, but never
# to within reach of the kernel error.
MAX_BUDGET: Final = 256
# Events older than this are deleted; also the longest window allowed, so
# pruning can never drop an event that still counts.
PRUNE_AGE_SECONDS: Final = 86400.0

RULE: Final = "PP007"


class HotplugLimitRefused(RefusedError):
    """PP007 refused a hotplug; says how many events and when the next is allowed."""

    def __init__(
        self,
        address: str,
        *,
        events: int,
        budget: int,
        window_seconds: float,
        next_allowed: float,
        now: float,
    ) -> None:
        self.address = address
        self.events = events
        self.budget = budget
        self.window_seconds = window_seconds
        self.next_allowed = next_allowed
        self.wait_seconds = max(1, math.ceil(next_allowed - now))
        super().__init__(
            address,
            f"{events} hotplug/unplug events in the last {_span(window_seconds)} "
            f"(budget {budget}); the next one is allowed at {format_time(next_allowed)} "
            f"(in {self.wait_seconds} s)",
            "past 512 hotplugs in a brief period the kernel can fail; "
            "wait, or attach and detach less often",
            rule=RULE,
        )

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data.update(
            events=self.events,
            budget=self.budget,
            window_seconds=self.window_seconds,
            next_allowed=self.next_allowed,
            wait_seconds=self.wait_seconds,
        )
        return data


@dataclass(frozen=True)
class HotplugBudget:
    """How much of its budget a device has used (for ``pcipass status``)."""

    address: str
    used: int
    budget: int
    window_seconds: float
    next_allowed: float | None  # None: an event is allowed now


@dataclass(frozen=True)
class HotplugTicket:
    """One admitted hotplug event, as recorded in the ledger."""

    address: str
    guest: str
    kind: str
    at: float


class HotplugLimiter:
    def __init__(
        self,
        ledger: Ledger,
        budget: int = DEFAULT_BUDGET,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        _check_budget(budget)
        _check_window(window_seconds)
        self.ledger = ledger
        self.budget = budget
        self.window_seconds = float(window_seconds)

    def acquire(self, address: PciAddress | str, guest: str, kind: str) -> HotplugTicket:
        """Record one hotplug event (``kind`` is attach or detach), or refuse (PP007).

        Call it just before the hotplug: an event refused here must not happen.
        If the hotplug then fails before anything changed, hand the ticket to
        :meth:`refund`: only hotplugs that happened count against the budget.
        """
        admission = self.ledger.admit_hotplug(
            address,
            guest,
            kind,
            budget=self.budget,
            window_seconds=self.window_seconds,
            prune_age=PRUNE_AGE_SECONDS,
        )
        if admission.admitted:
            return HotplugTicket(_key(address), guest, kind, admission.now)
        times = admission.window_times
        raise HotplugLimitRefused(
            _key(address),
            events=len(times),
            budget=self.budget,
            window_seconds=self.window_seconds,
            next_allowed=self._next_allowed(times),
            now=admission.now,
        )

    def refund(self, ticket: HotplugTicket) -> None:
        """The admitted hotplug did not happen: it does not count."""
        self.ledger.forget_hotplug(ticket.address, ticket.guest, ticket.kind, ticket.at)

    def recent(self, address: PciAddress | str) -> list[HotplugEvent]:
        """The events of ``address`` that count against its budget now, oldest first."""
        return self.ledger.hotplug_events(address, since=self.ledger.clock() - self.window_seconds)

    def status(self, address: PciAddress | str) -> HotplugBudget:
        events = self.recent(address)
        times = tuple(e.at for e in events)
        return HotplugBudget(
            _key(address),
            len(times),
            self.budget,
            self.window_seconds,
            self._next_allowed(times) if len(times) >= self.budget else None,
        )

    def _next_allowed(self, times: tuple[float, ...]) -> float:
        """When enough events have left the window for one more.

        With ``n >= budget`` events at ``t0 <= ... <= t(n-1)``, one more is
        allowed once ``n - budget + 1`` of them have aged out; an event at
        ``t`` stops counting at exactly ``t + window``.  Rounded up to a whole
        second so the time a message announces is never too early.
        """
        oldest_that_must_leave = times[len(times) - self.budget]
        return float(math.ceil(oldest_that_must_leave + self.window_seconds))


def _key(address: PciAddress | str) -> str:
    return str(address if isinstance(address, PciAddress) else PciAddress.parse(address))


def _check_budget(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UsageError(
            f"hotplug budget {budget!r}", "must be a whole number of events, at least 1"
        )
    if budget > MAX_BUDGET:
        raise RefusedError(
            f"hotplug budget {budget}",
            f"above the safety ceiling of {MAX_BUDGET} events per window "
            "(the document warns of a kernel error past 512 in a brief period)",
            f"configure at most {MAX_BUDGET}",
            rule=RULE,
        )


def _check_window(window_seconds: float) -> None:
    if not 0 < window_seconds <= PRUNE_AGE_SECONDS:
        raise UsageError(
            f"hotplug window {window_seconds!r} s",
            f"must be more than 0 and at most {PRUNE_AGE_SECONDS:.0f} s (one day)",
        )


def _span(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"
