"""``pcipass check``: every rule, over devices, ledger, files and guests."""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.errors import ExitCode, PcipassError
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.identity import current_identity, identity_mismatch
from pcipass.host.inventory import DeviceInfo, Inventory
from pcipass.host.reset_quirks import quirk_notes
from pcipass.ops.assignability import assignability_findings
from pcipass.ops.inventory import inventory
from pcipass.policy.verdict import Finding, Severity, worst_exit
from pcipass.record import dataclass, field
from pcipass.state.ledger import HiddenRecord, Ledger
from pcipass.state.lock import StateLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.ops.guard import HeldDevices


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        """3 when anything is refused, 1 on warnings, else 0 (docs/cli.md)."""
        return worst_exit(self.findings)

    def to_json(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "findings": [f.to_json() for f in self.findings],
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        if not self.findings:
            return f"ok: {len(self.checked)} device(s) checked, no findings"
        return "\n".join(f.render() for f in self.findings)


def guest_findings(
    host: Host, guests: Sequence[str] | None, held: HeldDevices
) -> tuple[list[Finding], list[str]]:
    """Every guest rule (PP002-PP006, PP101, config vs ledger) for the named
    guests, or for every configuration found on the host.  The configurations
    are read once and indexed by device (GuestScan.listing), and ``held`` is
    the ledger as read once for the whole command."""
    from pcipass.ops.attach import GuestContext
    from pcipass.ops.guard import check_guest
    from pcipass.ops.guests import find_guest, scan_guests

    scan = scan_guests(host)
    context = GuestContext.gather(host, scan)
    files = [find_guest(host, g) for g in guests] if guests else list(scan.guests)
    found: list[Finding] = []
    checked: list[str] = []
    for guest_file in files:
        result = check_guest(host, guest_file, context=context, held=held)
        checked.append(f"guest {result.guest}")
        found.extend(result.findings)
    for problem in scan.problems:
        found.append(
            Finding(
                "PP101",
                Severity.WARN,
                "guest configurations",
                str(problem),
                "fix the file: pcipass cannot see which devices it assigns",
            )
        )
    return found, checked


def _leftover_temp_files(host: Host, ledger: Ledger) -> list[Finding]:
    """Temp files a killed pcipass left: removed when the state lock is free."""
    from pcipass.ops.files import leftover_temp_files, remove_leftover_temp_files

    if not leftover_temp_files(host, ledger):
        return []
    try:
        with StateLock(host.root, timeout=0):
            removed = remove_leftover_temp_files(host, ledger)
    except PcipassError:
        return [
            Finding(
                "PP010",
                Severity.WARN,
                path,
                "leftover temporary file of an interrupted pcipass write",
                "run pcipass recover as root",
            )
            for path in leftover_temp_files(host, ledger)
        ]
    return [
        Finding(
            "PP010",
            Severity.INFO,
            path,
            "leftover temporary file of an interrupted pcipass write: removed",
        )
        for path in removed
    ]


def run_check(
    host: Host, addresses: Sequence[PciAddress], guests: Sequence[str] | None = None
) -> CheckReport:
    """Every rule: the named devices (or everything pcipass holds), the named
    guests (or every guest when no device is named) and the persistent
    configuration."""
    from pcipass.ops.guard import HeldDevices

    report = CheckReport()
    # One ledger open for the whole command: the owners column of the
    # inventory, the held devices, the journal and the guests all read it here.
    with Ledger.open(host.root, readonly=True) as ledger:
        inv = inventory(host, ledger=ledger)
        hidden = {PciAddress.parse(r.address): r for r in ledger.hidden()}
        held = HeldDevices.from_ledger(ledger)
        owned = {PciAddress.parse(address) for address in held.owners}
        report.findings += _interrupted_operations(ledger)
        report.findings += _leftover_temp_files(host, ledger)
    if addresses:
        report.checked = [str(a) for a in addresses]
        report.findings += assignability_findings(host, addresses, inv=inv)
    else:
        targets = sorted(set(hidden) | owned)
        report.checked = [str(a) for a in targets]
        by_address = inv.by_address()
        for address in targets:
            report.findings += _held_device_findings(
                host, address, by_address.get(address), hidden.get(address)
            )
    report.findings += [  # known-bad resets (host/reset_quirks.py) as PP104 findings
        Finding("PP104", Severity(n.severity), n.subject, n.message, n.remedy)
        for n in quirk_notes(host, report.checked)
    ]
    if guests or not addresses:
        found, checked = guest_findings(host, guests, held)
        report.findings += found
        report.checked += checked
    if not guests:
        report.findings += _persistence_findings(host, inv, addresses)
        from pcipass.ops.vf_drift import vf_drift_findings  # the VF boot rule (vfs --persist)

        report.findings += vf_drift_findings(host, addresses)
    if not guests and not addresses:
        from pcipass.ops.desired_check import desired_findings

        report.findings += desired_findings(host)  # PP112-PP114: pcipass.toml vs the host
    return report


def _interrupted_operations(ledger: Ledger) -> list[Finding]:
    """PP010: an operation the journal shows as started and never finished."""
    return [
        Finding(
            "PP010",
            Severity.WARN,
            f"operation {op.id}",
            f"interrupted {op.kind} ({len(op.steps)} step(s) done)",
            "run pcipass recover",
        )
        for op in ledger.open_operations()
    ]


def _held_device_findings(
    host: Host, address: PciAddress, info: DeviceInfo | None, record: HiddenRecord | None
) -> list[Finding]:
    """A device pcipass hid or assigned: still there (PP105), still the same
    device (PP105), still on its stub (PP010), not used by the host (PP001)."""
    if info is None:
        return [
            Finding(
                "PP105",
                Severity.REFUSE,
                str(address),
                "recorded by pcipass but no longer on the bus",
                "was the card removed? pcipass unhide --persist it to clean up",
            )
        ]
    found: list[Finding] = []
    if record is not None:
        found += _recorded_device_findings(host, address, info, record)
    for use in info.uses:
        found.append(
            Finding(
                "PP001",
                Severity.REFUSE,
                str(address),
                f"held by pcipass but the host uses it: {use.detail}",
                "give it back or free it",
            )
        )
    return found


def _recorded_device_findings(
    host: Host, address: PciAddress, info: DeviceInfo, record: HiddenRecord
) -> list[Finding]:
    found: list[Finding] = []
    changes = identity_mismatch(record.identity, current_identity(host, info.device))
    if changes:
        found.append(
            Finding(
                "PP105",
                Severity.REFUSE,
                str(address),
                "is not the device pcipass recorded (" + "; ".join(changes) + ")",
                "check the hardware before any guest starts",
            )
        )
    current = binding.current_driver(host, address)
    if record.how in ("now", "both") and current != record.stub_driver:
        found.append(
            Finding(
                "PP010",
                Severity.WARN,
                str(address),
                f"recorded as hidden on {record.stub_driver} but bound to "
                f"{current or 'no driver'} now",
                f"pcipass hide --now {address}",
            )
        )
    return found


def _persistence_findings(
    host: Host, inv: Inventory, addresses: Sequence[PciAddress]
) -> list[Finding]:
    """With addresses: the configuration's own problems (subject is a file)
    and the drift of these devices, not other devices' drift."""
    from pcipass.ops.persist import persistence_findings

    wanted = {str(a) for a in addresses}
    return [
        finding
        for finding in persistence_findings(host, inv)
        if not wanted or finding.subject in wanted or finding.subject.startswith("/")
    ]
