"""``hide --persist`` / ``unhide --persist``: hidden at every boot.

Procedure 15.3 steps 1-2 of the document: the modprobe lines that make
pciback claim a device before its driver does.  The platform decides the
form (host/platform.py): the document's exact ``/etc/modprobe.conf`` lines
on RHEL 5, ``/etc/modprobe.d/pcipass.conf`` on current systems, the kernel
command line when the stub is built in.  Every edit is planned (diff for
``--dry-run``), journalled, backed up and written atomically (ops/files.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import RefusedError, UsageError
from pcipass.host.context import Host
from pcipass.host.inventory import Inventory
from pcipass.host.platform import PersistMethod, Platform, StubState, detect_platform
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.persist.modprobe import (
    HideDevice,
    HidePlan,
    plan_add_hide,
    plan_remove_hide,
    read_persistent_hides,
)
from pcipass.policy import persist_rules
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger


@dataclass
class PersistResult:
    platform: Platform
    method: PersistMethod
    edits: list[FileEdit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    regenerate: list[list[str]] = field(default_factory=list)
    dry_run: bool = False
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "platform": self.platform.to_json(),
            "method": str(self.method),
            "files": [{"path": e.display, "diff": e.diff()} for e in self.edits],
            "notes": self.notes,
            "regenerate": self.regenerate,
            "findings": [f.to_json() for f in self.findings],
        }

    def render_lines(self) -> list[str]:
        lines = [f.render() for f in self.findings]
        lines.append(f"persistent ({self.method}, {self.platform.pretty_name or 'unknown'}):")
        for edit in self.edits:
            lines.append(edit.diff().rstrip("\n") if self.dry_run else f"  wrote {edit.display}")
        if not self.edits:
            lines.append("  nothing to change")
        lines += [f"  {n}" for n in self.notes]
        for argv in self.regenerate:
            lines.append(f"  then run: {' '.join(argv)}")
        return lines


def _files(host: Host) -> dict[str, bytes]:
    from pcipass.persist.modprobe import collect_modprobe_files

    return collect_modprobe_files(host.root)


def _platform(host: Host, override: str | None) -> Platform:
    return detect_platform(host.root, override=override)


def _devices(
    host: Host, inv: Inventory, addresses: Sequence[PciAddress], ledger: Ledger
) -> list[HideDevice]:
    by = inv.by_address()
    devices = []
    for address in addresses:
        info = by.get(address)
        record = ledger.get_hidden(address)
        driver = record.original_driver if record else None
        if (
            driver is None
            and info is not None
            and info.device.driver not in ("pciback", "vfio-pci")
        ):
            driver = info.device.driver
        device_id = info.device.id_text if info is not None and info.device.vendor else None
        devices.append(HideDevice(address, driver, device_id))
    return devices


def _plan(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    platform: Platform,
    inv: Inventory,
    *,
    add: bool,
) -> tuple[PersistMethod, list[FileEdit], list[str]]:
    method = platform.method_for(backend)
    notes: list[str] = []
    if method is PersistMethod.CMDLINE:
        stub = platform.stub_module(backend)
        if add and platform.stub_state(stub) is StubState.MODULE:
            # Seen in the lab (xen3): with a modular stub the host driver is
            # loaded first at boot (udev coldplug) and takes the device; the
            # command line only reaches the stub if something loads it first.
            raise RefusedError(
                "--platform cmdline",
                f"{stub} is a module on this kernel: the kernel command line alone does not "
                "load it before the device's own driver, which then takes the device at boot",
                "use the modprobe.d method (the default here): it orders the stub first "
                "with a softdep",
                rule="PP010",
            )
        return method, [_plan_cmdline(host, addresses, backend, platform, inv, add=add)], notes
    display = platform.modprobe_path(method)
    path = host.root.path(display)
    current = host.root.files.read_bytes(display)
    if add:
        with Ledger.open(host.root, readonly=True) as ledger:
            devices = _devices(host, inv, addresses, ledger)
        plan = HidePlan.for_platform(platform, backend, devices, method)
        result = plan_add_hide(current, plan, path=display)
        if result.already:
            notes.append("already hidden at boot: " + ", ".join(str(a) for a in result.already))
        if plan.needs_alias:
            notes.append(
                "added 'alias pciback xen-pciback': this kernel's module is xen-pciback "
                "and the document's lines would otherwise fail silently"
            )
        new = result.text
    else:
        if current is None:
            # Nothing hides anything at boot here: a repeat must not create the file.
            return method, [], notes
        removed = plan_remove_hide(current, addresses, path=display)
        for address, line in removed.user_held:
            notes.append(
                f"{address} stays hidden by a line pcipass did not write "
                f"({display}:{line}); edit it by hand"
            )
        new = removed.text
        from pcipass.persist.modprobe import only_header_left

        if only_header_left(new) and display.endswith("/pcipass.conf"):
            return method, [plan_edit(path, display, None)], notes
    return method, [plan_edit(path, display, new)], notes


def _plan_cmdline(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    platform: Platform,
    inv: Inventory,
    *,
    add: bool,
) -> FileEdit:
    """The kernel command line in /etc/default/grub (stub built in, or asked for)."""
    from pcipass.host.platform import DEFAULT_GRUB_FILE
    from pcipass.persist import cmdline

    display = DEFAULT_GRUB_FILE
    path = host.root.path(display)
    current = host.root.files.read_bytes(display)
    ids: list[str] = []
    if backend is Backend.VFIO:
        by = inv.by_address()
        ids = sorted({by[a].device.id_text for a in addresses if a in by})
        if not add:
            # vfio-pci.ids= is per id: keep an id another hidden device still needs.
            with Ledger.open(host.root, readonly=True) as ledger:
                others = {
                    by[PciAddress.parse(r.address)].device.id_text
                    for r in ledger.hidden()
                    if PciAddress.parse(r.address) not in addresses
                    and PciAddress.parse(r.address) in by
                }
            ids = [i for i in ids if i not in others]
    edit = cmdline.add_hide if add else cmdline.remove_hide
    new = edit(
        current,
        backend=backend,
        addresses=[] if ids else list(addresses),
        ids=ids,
        stub=platform.stub_module(backend),
        path=display,
    )
    return plan_edit(path, display, new)


def id_collateral(host: Host, addresses: Sequence[PciAddress], inv: Inventory) -> list[Finding]:
    """vfio-pci ``ids=`` claims EVERY device with that vendor:device at boot.

    Hiding one of two identical NICs by id also takes the other, which may be
    the host's own, and a host that loses its root disk or management NIC at
    boot is the worst outcome there is: refuse when a same-id device the host
    uses is not part of the request, warn for any other.
    """
    by = inv.by_address()
    wanted = set(addresses)
    ids = {by[a].device.id_text for a in addresses if a in by}
    findings: list[Finding] = []
    for info in inv.devices:
        if info.address in wanted or info.device.id_text not in ids:
            continue
        if info.uses:
            findings.append(
                Finding(
                    "PP001",
                    Severity.REFUSE,
                    str(info.address),
                    f"has the same id {info.device.id_text} as the device to hide, and vfio-pci "
                    f"ids= would take it at boot too; the host uses it: {info.uses[0].detail}",
                    "hide by address instead (driver_override: a udev rule or pcipass hide --now "
                    "at boot), or use the pciback backend",
                )
            )
        else:
            findings.append(
                Finding(
                    "PP102",
                    Severity.WARN,
                    str(info.address),
                    f"has the same id {info.device.id_text}: vfio-pci ids= hides it at boot too",
                    "add it to the request or accept that it leaves the host",
                )
            )
    return findings


def unhide_backend(host: Host, ledger: Ledger, addresses: Sequence[PciAddress]) -> Backend:
    """The backend a device was hidden with (its record), else this host's default."""
    backend = Backend.PCIBACK if host.is_xen_dom0 else Backend.VFIO
    for address in addresses:
        record = ledger.get_hidden(address)
        if record is not None:
            backend = Backend.VFIO if record.stub_driver == "vfio-pci" else Backend.PCIBACK
    return backend


def plan_persist(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    platform_text: str | None,
    inv: Inventory,
    *,
    add: bool,
    dry_run: bool,
) -> PersistResult:
    """Check the rules and plan the file edits; write nothing (ops/hide.py applies them)."""
    checked: list[Finding] = []
    if add:
        from pcipass.ops.assignability import assignability_findings
        from pcipass.policy.verdict import raise_refusals

        checked = assignability_findings(host, addresses, inv=inv)
        if backend is Backend.VFIO:
            checked += id_collateral(host, addresses, inv)
        raise_refusals(checked, ", ".join(str(a) for a in addresses))
    platform = _platform(host, platform_text)
    method, edits, notes = _plan(host, addresses, backend, platform, inv, add=add)
    edits = [e for e in edits if e.changes_anything]
    result = PersistResult(
        platform,
        method,
        edits,
        notes,
        dry_run=dry_run,
        findings=[f for f in checked if f.severity is not Severity.REFUSE],
    )
    if edits:
        result.regenerate = [list(r.argv) for r in platform.regeneration(method)]
    if method is not PersistMethod.CMDLINE:
        # Before saying "reload the driver": who else that reload takes down (#18).
        _reload_advice(host, inv, addresses, backend, result, add=add)
    return result


def _reload_advice(
    host: Host,
    inv: Inventory,
    addresses: Sequence[PciAddress],
    backend: Backend,
    result: PersistResult,
    *,
    add: bool,
) -> None:
    """The "takes effect when reloaded" note, judged: every other function the
    reload would take down is named, with what the host uses it for."""
    from pcipass.host import binding
    from pcipass.ops.reload import plan_reload

    plan = plan_reload(host, inv, addresses, binding.stub_for(host, backend), hiding=add)
    result.findings += [f for f in plan.findings(refusing=False) if f.severity is Severity.WARN]
    result.notes += plan.advice() + plan.notes


def persistence_findings(host: Host, inv: Inventory) -> list[Finding]:
    """PP009/PP010 from the modprobe files, and runtime vs persistent drift."""
    result: list[Finding] = []
    files = _files(host)
    try:
        platform = _platform(host, None)
    except UsageError:
        platform = None
    state = read_persistent_hides(files)
    from pcipass.persist import cmdline

    configured = cmdline.read_configured(
        cmdline.collect_grub_files(host.root), xen=host.is_xen_dom0
    )
    running = cmdline.read_running(host.root)
    persist_findings = [
        *persist_rules.findings(state, platform),
        *persist_rules.configured_findings(configured.problems, configured.hides),
        *persist_rules.cmdline_findings(running),
        *persist_rules.cross_findings(state, configured.hides),
    ]
    result += persist_findings
    persistent = state.hidden() | configured.hides.hidden() | running.hidden()
    by = inv.by_address()
    for address in sorted(persistent):
        info = by.get(address)
        if info is not None and not info.hidden:
            from pcipass.policy.reload import reload_impact, reload_remedy

            remedy = f"pcipass hide --now {address}"
            if info.device.driver is not None:
                impact = reload_impact(info.device.driver, [address], inv)
                remedy = reload_remedy(impact, address)
            result.append(
                Finding(
                    "PP010",
                    Severity.WARN,
                    str(address),
                    f"hidden at boot by the modprobe configuration but bound to "
                    f"{info.device.driver or 'no driver'} now",
                    remedy,
                )
            )
    persistent_ids = state.hidden_ids() | configured.hides.hidden_ids()
    for info in inv.devices:
        if info.device.driver == "vfio-pci" and info.device.id_text in persistent_ids:
            continue
        if info.hidden and info.address not in persistent:
            result.append(
                Finding(
                    "PP010",
                    Severity.INFO,
                    str(info.address),
                    f"bound to {info.device.driver} now but not hidden at boot: "
                    "a reboot gives it back to the host",
                    f"pcipass hide --persist {info.address}",
                )
            )
    return result
