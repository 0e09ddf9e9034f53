"""``pcipass status``: what the ledger says, next to what the kernel says."""

from __future__ import annotations

from dataclasses import dataclass, field

from pcipass.address import PciAddress
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.state.ledger import Ledger, format_time
from pcipass.state.limiter import HotplugLimiter


@dataclass
class StatusReport:
    hidden: list[dict[str, object]] = field(default_factory=list)
    owners: list[dict[str, object]] = field(default_factory=list)
    open_operations: list[dict[str, object]] = field(default_factory=list)
    hotplug: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "hidden": self.hidden,
            "owners": self.owners,
            "open_operations": self.open_operations,
            "hotplug": self.hotplug,
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
        for item in self.hotplug:
            lines.append(
                f"{item['address']}: {item['events_in_window']} of "
                f"{item['budget']} hotplug events used in the last "
                f"{int(str(item['window_seconds'])) // 60} min (PP007)"
            )
        for item in self.open_operations:
            lines.append(
                f"interrupted operation {item['id']} ({item['kind']}, "
                f"{item['steps']} step(s) done): run pcipass recover"
            )
        return "\n".join(lines)


def status(host: Host) -> StatusReport:
    report = StatusReport()
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
                report.hotplug.append(
                    {
                        "address": text,
                        "events_in_window": budget.used,
                        "budget": budget.budget,
                        "window_seconds": budget.window_seconds,
                        "next_allowed": budget.next_allowed,
                    }
                )
        for op in ledger.open_operations():
            report.open_operations.append(
                {"id": op.id, "kind": op.kind, "intent": op.intent, "steps": len(op.steps)}
            )
    return report
