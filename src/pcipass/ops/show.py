"""``pcipass show BDF``: everything about one function, and whether it can be assigned."""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.host.config_space import ConfigSpace, format_dsn
from pcipass.host.context import Host
from pcipass.host.inventory import DeviceInfo
from pcipass.host.reset import ResetVerdict, reset_verdict
from pcipass.host.reset_quirks import quirk_notes
from pcipass.host.topology import read_config
from pcipass.ops.assignability import assignability_findings
from pcipass.ops.inventory import device_info
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field


@dataclass
class DeviceReport:
    info: DeviceInfo
    config: ConfigSpace | None
    reset: ResetVerdict
    findings: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = self.info.to_json()
        config = self.config
        data["config_space"] = None if config is None else config.to_json()
        data["serial"] = None if config is None or config.dsn is None else format_dsn(config.dsn)
        data["reset"] = self.reset.to_json()
        data["findings"] = self.findings
        data["problems"] = list(self.problems)
        return data

    def render(self) -> str:
        info = self.info
        dev = info.device
        lines = [f"{dev.address}  {info.describe()}"]

        def row(label: str, value: object) -> None:
            lines.append(f"  {label + ':':<18} {value}")

        row(
            "ids",
            f"{dev.id_text} subsystem "
            f"{dev.subsystem_vendor or 0:04x}:{dev.subsystem_device or 0:04x}",
        )
        code = "?" if dev.class_code is None else f"{dev.class_code:06x}"
        row("class", f"{info.class_name or '?'} [{code}]")
        row("driver", dev.driver or "(none)")
        if dev.driver_override:
            row("driver_override", dev.driver_override)
        if dev.iommu_group is not None:
            others = [str(a) for a in info.group_members if a != dev.address]
            row(
                "iommu group",
                f"{dev.iommu_group}" + (f" (with {', '.join(others)})" if others else " (alone)"),
            )
        else:
            row("iommu group", "none visible (no IOMMU, or a Xen dom0 where Xen owns it)")
        row("parent", dev.parent or "root bus")
        if dev.numa_node is not None:
            row("numa node", dev.numa_node)
        if dev.physical_slot:
            row("physical slot", dev.physical_slot)
        if dev.sriov_totalvfs is not None:
            row(
                "sr-iov",
                f"{dev.sriov_numvfs} of {dev.sriov_totalvfs} VFs enabled"
                + (f": {', '.join(str(v) for v in dev.virtfns)}" if dev.virtfns else ""),
            )
        if dev.physfn is not None:
            row("sr-iov", f"virtual function of {dev.physfn}")
        if self.config is not None:
            summary = _caps_summary(self.config)
            if not self.config.caps_complete and self.config.length <= 64:
                summary = (summary + "; " if summary else "") + (
                    "unknown beyond the 64-byte header (run as root to read them)"
                )
            row("capabilities", summary or "(none)")
            if self.config.dsn is not None:
                row("serial (DSN)", format_dsn(self.config.dsn))
        verdict = "ready" if self.reset.ready else "NOT ready"
        row("reset", f"{verdict}: {self.reset.reason}")
        row("host use", "; ".join(u.detail for u in info.uses) or "none found")
        row("owner", info.owner or "none (ledger)")
        for finding in self.findings:
            lines.append(f"  [{finding['rule']}] {finding['severity']}: {finding['message']}")
        return "\n".join(lines)


def _caps_summary(config: ConfigSpace) -> str:
    names = [cap.name for cap in config.capabilities]
    names += [cap.name for cap in config.ext_capabilities]
    port = config.pcie.port_type if config.pcie is not None else None
    if port is not None:
        names = [f"PCI Express ({port.description})" if n == "PCI Express" else n for n in names]
    flr = config.flr_capable
    if flr is not None:
        names.append("FLR+" if flr else "FLR-")
    return ", ".join(dict.fromkeys(names))


def device_report(host: Host, address: PciAddress) -> DeviceReport:
    info, problems = device_info(host, address)
    config = read_config(host, address)
    if config is None:
        problems.append(f"{address}: config space unreadable (capabilities unknown)")
    elif config.problems:
        problems.extend(f"{address}: {p}" for p in config.problems)
    reset = reset_verdict(host, info.device, config)
    findings = [f.to_json() for f in assignability_findings(host, [address])]
    findings += [  # known-bad resets (host/reset_quirks.py) as PP104 findings
        Finding("PP104", Severity(n.severity), n.subject, n.message, n.remedy).to_json()
        for n in quirk_notes(host, [str(address)])
    ]
    return DeviceReport(info, config, reset, findings, problems)
