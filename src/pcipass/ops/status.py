"""``pcipass status``: what the ledger says, next to what the kernel says."""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.record import dataclass, field
from pcipass.state.presence import ledger_may_exist

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.state.limiter import HotplugBudget


@dataclass
class StatusReport:
    hidden: list[dict[str, object]] = field(default_factory=list)
    owners: list[dict[str, object]] = field(default_factory=list)
    open_operations: list[dict[str, object]] = field(default_factory=list)
    # Typed, not dicts: the text form does arithmetic on these numbers (the
    # window is a float in the ledger; reading it back from a dict as a string
    # once crashed text-mode status after any hotplug).
    hotplug: list[HotplugBudget] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "hidden": self.hidden,
            "owners": self.owners,
            "open_operations": self.open_operations,
            "hotplug": [_budget_json(budget) for budget in self.hotplug],
        }

    def render(self) -> str:
        lines = []
        if not (self.hidden or self.owners or self.open_operations):
            return "pcipass holds no devices (the ledger is empty)"
        for item in self.hidden:
            lines.append(
                f"{item['address']}: hidden ({item['how']}) on {item['stub_driver']}, "
                f"now {item['current_driver'] or 'no driver'}; gives back to "
                f"{item['original_driver'] or 'kernel probe'}; since {item['since']}"
            )
        for item in self.owners:
            lines.append(
                f"{item['address']}: assigned to guest {item['guest']} "
                f"({item['config_kind']} {item['config_path'] or ''})".rstrip()
            )
        lines += [_budget_line(budget) for budget in self.hotplug]
        for item in self.open_operations:
            lines.append(
                f"interrupted operation {item['id']} ({item['kind']}, "
                f"{item['steps']} step(s) done): run pcipass recover"
            )
        return "\n".join(lines)


def status(host: Host) -> StatusReport:
    report = StatusReport()
    if not ledger_may_exist(host.root):
        return report  # what an empty ledger reports, without loading SQLite (issue #13)
    from pcipass.state.ledger import Ledger, format_time
    from pcipass.state.limiter import HotplugLimiter

    with Ledger.open(host.root, readonly=True) as ledger:
        for record in ledger.hidden():
            address = PciAddress.parse(record.address)
            report.hidden.append(
                {
                    "address": record.address,
                    "stub_driver": record.stub_driver,
                    "original_driver": record.original_driver,
                    "how": record.how,
                    "since": format_time(record.since),
                    "current_driver": binding.current_driver(host, address),
                    "identity": record.identity,
                }
            )
        for owner in ledger.owners():
            report.owners.append(
                {
                    "address": owner.address,
                    "guest": owner.guest,
                    "config_kind": owner.config_kind,
                    "config_path": owner.config_path,
                    "since": format_time(owner.since),
                }
            )
        limiter = HotplugLimiter(ledger)
        devices = {r.address for r in ledger.hidden()} | {o.address for o in ledger.owners()}
        for text in sorted(devices):
            budget = limiter.status(text)
            if budget.used:
                report.hotplug.append(budget)
        for op in ledger.open_operations():
            report.open_operations.append(
                {"id": op.id, "kind": op.kind, "intent": op.intent, "steps": len(op.steps)}
            )
    return report


def _budget_json(budget: HotplugBudget) -> dict[str, object]:
    return {
        "address": budget.address,
        "events_in_window": budget.used,
        "budget": budget.budget,
        "window_seconds": budget.window_seconds,
        "next_allowed": budget.next_allowed,
    }


def _budget_line(budget: HotplugBudget) -> str:
    minutes = budget.window_seconds / 60
    span = f"{minutes:.0f} min" if minutes == int(minutes) else f"{budget.window_seconds:g} s"
    line = (
        f"{budget.address}: {budget.used} of {budget.budget} hotplug events used "
        f"in the last {span} (PP007)"
    )
    if budget.next_allowed is not None:
        from pcipass.state.ledger import format_time

        line += f"; the next one is allowed at {format_time(budget.next_allowed)}"
    return line
