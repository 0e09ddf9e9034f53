"""``attach`` and ``detach``: give a hidden device to one guest, and take it back.

Validate everything first (PP002 hidden, PP101 exclusive, PP004 PV DMA,
PP005 RHEL 6 PV, PP006 HVM support), then act: the configuration edit goes
through the journal (:func:`pcipass.ops.files.apply_edits`), ownership into
the ledger, and with ``live`` the toolstack's hotplug command runs, after the
PP007 limiter admitted it.  A failed hotplug undoes the configuration edit
and the claim, so the request is all or nothing.

Live commands (argument lists, never a shell):

* xm (RHEL 5, xend): ``xm pci-attach GUEST BDF`` / ``xm pci-detach GUEST BDF``
* xl (xl(1)): ``xl pci-attach GUEST BDF`` / ``xl pci-detach GUEST BDF``
* libvirt (virsh(1)): ``virsh -c URI attach-device GUEST FILE --live`` /
  ``detach-device``, FILE holding one ``<hostdev>`` element.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import (
    DeviceNotFoundError,
    OperationFailed,
    PcipassError,
    RefusedError,
    UsageError,
)
from pcipass.guests.libvirt_xml import hostdev_xml
from pcipass.guests.model import GuestKind, GuestOs
from pcipass.guests.xen_cfg import XenConfig, parse_xen_config
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.platform import Platform, detect_platform
from pcipass.host.stubs import KVM_GUEST_DRIVERS, STUB_DRIVERS, XEN_GUEST_DRIVERS
from pcipass.ops.files import apply_edits, undo_file_edits
from pcipass.ops.guests import GuestFile, GuestScan, find_guest, same_guest, scan_guests
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.policy import guest_rules
from pcipass.policy.verdict import Finding, Severity, refusal_error
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import HotplugLimiter
from pcipass.state.lock import StateLock

# What xl says when a domain built without an IOMMU context is given a device
# (seen with Xen 4.17 in the lab: libxl_pci.c pci_add_dm_done).
XC_ASSIGN_REFUSAL = "xc_assign_device failed: Operation not supported"


@dataclass
class AttachResult:
    """What attach/detach did (or, with ``dry_run``, would do)."""

    action: str  # "attach" or "detach"
    address: str
    guest: str
    config: str  # the guest configuration file, as the host names it
    config_kind: str
    changed: bool = False  # the configuration file changed (or would)
    diff: str = ""
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    hide: dict[str, object] | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "address": self.address,
            "guest": self.guest,
            "config": self.config,
            "config_kind": self.config_kind,
            "changed": self.changed,
            "diff": self.diff,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
            "commands": self.commands,
            "hide": self.hide,
            "dry_run": self.dry_run,
        }

    def render_lines(self) -> list[str]:
        lines = [f.render() for f in self.findings]
        lines += [f"note: {n}" for n in self.notes]
        if self.dry_run:
            if self.diff:
                lines.append(self.diff.rstrip("\n"))
            for argv in self.commands:
                lines.append(f"would run: {' '.join(argv)}")
            lines.append("dry run: nothing was changed")
            return lines
        to = "to" if self.action == "attach" else "from"
        if self.changed:
            lines.append(f"{self.config}: {self.action}ed {self.address} {to} guest {self.guest}")
        else:
            verb = "already lists" if self.action == "attach" else "does not list"
            lines.append(f"{self.config}: {verb} {self.address}; unchanged")
        for argv in self.commands:
            lines.append(f"ran: {' '.join(argv)}")
        return lines


# --- toolstack commands ----------------------------------------------------


def live_command(guest_file: GuestFile, guest: str, address: PciAddress, action: str) -> list[str]:
    """The hotplug command for this guest's toolstack (``FILE`` stands for the
    hostdev XML file virsh reads)."""
    kind = guest_file.kind
    if kind is GuestKind.LIBVIRT:
        verb = "attach-device" if action == "attach" else "detach-device"
        uri = guest_file.libvirt_uri or "qemu:///system"
        return ["virsh", "-c", uri, verb, guest, "FILE", "--live"]
    program = "xl" if kind is GuestKind.XL else "xm"
    return [program, f"pci-{action}", guest, str(address)]


def _run_live(
    host: Host, guest_file: GuestFile, guest: str, address: PciAddress, action: str
) -> list[str]:
    argv = live_command(guest_file, guest, address, action)
    if guest_file.kind is not GuestKind.LIBVIRT:
        _run_checked(host, argv)
        return argv
    driver = "xen" if guest_file.config.hypervisor == "xen" else "vfio"
    with tempfile.TemporaryDirectory(prefix="pcipass-") as directory:
        # virsh reads the device from a file (virsh(1) attach-device); the
        # directory is private (mode 0700) and removed afterwards.
        path = os.path.join(directory, f"hostdev-{address}.xml".replace(":", "_"))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(hostdev_xml(address, driver, managed=False) + "\n")
        real = [path if part == "FILE" else part for part in argv]
        _run_checked(host, real)
    return argv


def _run_checked(host: Host, argv: Sequence[str]) -> None:
    if host.runner.which(argv[0]) is None and not host.is_real:
        raise OperationFailed(
            argv[0],
            "not run: the toolstack is not available for this root",
            "run the live step on the host itself, or leave out --live",
        )
    result = host.runner.run(list(argv), timeout=300.0)
    if result.returncode == 0:
        return
    output = (result.stderr or result.stdout).strip() or "no message"
    remedy = "the configuration change was rolled back; nothing else changed"
    if XC_ASSIGN_REFUSAL in output:
        remedy = (
            "the running domain was built without passthrough; "
            'with passthrough="enabled" in its configuration, restart it, then attach; ' + remedy
        )
    raise OperationFailed(
        " ".join(argv[:2]), f"{' '.join(argv)} exited {result.returncode}:\n{output}", remedy
    )


# --- the plan --------------------------------------------------------------


def _refuse(address: PciAddress, blocking: list[Finding], findings: list[Finding]) -> RefusedError:
    return refusal_error(blocking, str(address), listed=findings)


def _attach_edit(guest_file: GuestFile, address: PciAddress) -> bytes:
    config = guest_file.config
    if isinstance(config, XenConfig) and config.passthrough == "disabled":
        # xl.cfg(5): with passthrough "disabled" the domain gets no IOMMU
        # context, so Xen cannot give it a device; pcipass does not override
        # a setting someone wrote on purpose.
        raise UsageError(
            guest_file.display,
            'sets passthrough = "disabled": Xen cannot give this guest a PCI device',
            'change it to passthrough = "enabled" (or remove it), then attach again',
        )
    after = config.with_device_added(address)
    if isinstance(config, XenConfig) and config.kind is GuestKind.XL and config.passthrough is None:
        # xl.cfg(5) passthrough="enabled": the domain is built able to take a
        # device later, so detach -> save/restore -> attach works (checked on Xen 4.17 in the lab).
        edited = parse_xen_config(after, guest_file.display, GuestKind.XL)
        after = edited.with_setting("passthrough", "enabled")
    return after


def _plan(guest_file: GuestFile, after: bytes) -> FileEdit:
    edit = plan_edit(guest_file.path, guest_file.display, after)
    if edit.before != guest_file.data:
        raise OperationFailed(
            guest_file.display, "changed while pcipass was reading it", "run the command again"
        )
    return edit


def _device_exists(host: Host, address: PciAddress) -> bool:
    return host.sysfs.exists(host.root.pci_device(address))


@dataclass
class GuestContext:
    """Facts shared by every device and guest checked in one run: the guest
    configurations on the host, its platform and its IOMMU (asked once)."""

    scan: GuestScan
    platform: Platform
    iommu: guest_rules.IommuState

    @classmethod
    def gather(cls, host: Host, scan: GuestScan | None = None) -> GuestContext:
        return cls(
            scan if scan is not None else scan_guests(host),
            detect_platform(host.root),
            guest_rules.probe_iommu(host),
        )

    def device_findings(
        self,
        guest_file: GuestFile,
        guest: str,
        address: PciAddress,
        ledger_owner: str | None,
        guest_os: GuestOs | None = None,
    ) -> list[Finding]:
        """PP101, PP004 (as a warning), PP005 and PP006 for ``address`` in ``guest``."""
        cfg = guest_file.config
        listed_by = [
            (other.guest_name, other.display, d.spec_text)
            for other in self.scan.listing(address)
            if not same_guest(other, guest_file)
            for d in other.config.devices()
            if d.covers(address)
        ]
        findings = guest_rules.exclusive_findings(address, guest, ledger_owner, listed_by)
        pv_dma = guest_rules.pv_dma_finding(address, cfg)
        if pv_dma is not None:
            findings.append(pv_dma)
        findings += guest_rules.rhel6_pv_findings(address, cfg, guest_os or cfg.os)
        findings += guest_rules.hvm_support_findings(address, cfg, self.platform, self.iommu)
        return findings


def attach(
    host: Host,
    address: PciAddress,
    guest: str,
    *,
    config: str | None = None,
    hide: bool = False,
    accept_pv_dma_risk: bool = False,
    guest_os: GuestOs | None = None,
    dry_run: bool = False,
    live: bool = False,
) -> AttachResult:
    """Assign ``address`` to ``guest`` in its configuration (and live)."""
    guest_file = find_guest(host, guest, config)
    cfg = guest_file.config
    result = AttachResult(
        "attach", str(address), guest, guest_file.display, str(cfg.kind), dry_run=dry_run
    )
    result.notes += [f"{guest_file.display}: {n}" for n in cfg.notes]
    scan = scan_guests(host, extra=guest_file if config is not None else None)
    result.notes += [f"not checked for PP101: {p}" for p in scan.problems]
    ledger = Ledger.open(host.root, readonly=True, clock=host.clock)
    try:
        owner = ledger.owner(address)
        record = ledger.get_hidden(address)
    finally:
        ledger.close()
    exists = _device_exists(host, address)
    if not exists and record is None:
        raise DeviceNotFoundError(str(address), str(host.root.prefix))
    driver = binding.current_driver(host, address) if exists else None
    xen = guest_file.is_xen
    hidden = guest_rules.hidden_findings(
        address, driver, record.stub_driver if record else None, xen=xen
    )
    wanted = XEN_GUEST_DRIVERS if xen else KVM_GUEST_DRIVERS
    stub_mismatch = driver in STUB_DRIVERS - wanted
    needs_hide = hide and bool(hidden) and not stub_mismatch and exists
    context = GuestContext.gather(host, scan)
    findings = ([] if needs_hide else hidden) + context.device_findings(
        guest_file, guest, address, owner.guest if owner else None, guest_os
    )
    pv_dma = next((f for f in findings if f.rule == "PP004"), None)
    if xen:
        findings += guest_rules.shutdown_save_findings(host, guest)
    blocking = [f for f in findings if f.severity is Severity.REFUSE]
    if pv_dma is not None and not accept_pv_dma_risk:
        blocking.append(pv_dma)
    if blocking:
        raise _refuse(address, blocking, findings)
    result.findings = findings
    after = _attach_edit(guest_file, address)
    edit = _plan(guest_file, after)
    result.changed = edit.changes_anything
    result.diff = edit.diff()
    if live:
        result.commands.append(live_command(guest_file, guest, address, "attach"))
        if not xen:
            # Document §15.5 Note (PP008): a KVM guest sees hot-plugged devices only
            # with ACPI PCI hotplug (acpiphp) loaded; pcipass cannot see inside it.
            result.findings.append(
                Finding(
                    "PP008",
                    Severity.WARN,
                    f"guest {guest}",
                    "a KVM guest sees a hot-plugged device only when acpiphp is loaded in it "
                    "(built into current kernels; a module on RHEL 5)",
                    "run `pcipass guest-setup` inside the guest once (loads it now and at boot)",
                )
            )
        if (
            isinstance(cfg, XenConfig)
            and cfg.kind is GuestKind.XL
            and cfg.passthrough_enabled is not True
            and not cfg.devices()
        ):
            result.notes.append(
                f"guest {guest} was started from a configuration without "
                'passthrough="enabled" and without pci devices, so Xen built it without '
                f"passthrough: xl pci-attach will most likely fail with '{XC_ASSIGN_REFUSAL}'. "
                'With passthrough="enabled" in the file, restart the guest once to make live '
                "attach work"
            )
    if needs_hide:
        backend = Backend.PCIBACK if xen else Backend.VFIO
        from pcipass.ops.rebind import hide_now

        hidden_result = hide_now(host, [address], backend, dry_run=dry_run)
        result.hide = hidden_result.to_json()
        result.findings += hidden_result.findings
    if dry_run:
        return result
    result.notes += _apply(host, guest_file, address, edit, guest=guest, live=live, action="attach")
    return result


def _apply(
    host: Host,
    guest_file: GuestFile,
    address: PciAddress,
    edit: FileEdit,
    *,
    guest: str,
    live: bool,
    action: str,
) -> list[str]:
    """Under the state lock: limiter, journalled edit, ownership, live step.
    Returns notes for the user."""
    notes: list[str] = []
    with StateLock(host.root):
        ledger = Ledger.open(host.root, clock=host.clock)
        try:
            owner = ledger.owner(address)
            if owner is not None and owner.guest != guest:
                # Another pcipass assigned it after the checks ran, before the lock.
                raise RefusedError(
                    str(address),
                    f"is assigned to guest {owner.guest}; a device belongs to one guest at a time",
                    f"detach it first: pcipass detach {address} {owner.guest}",
                    rule="PP101",
                )
            if live:
                HotplugLimiter(ledger).acquire(address, guest, action)
            if action == "detach" and live:
                # Out of the running guest first: if the toolstack refuses,
                # the configuration still says what is true.
                _run_live(host, guest_file, guest, address, action)
            op = ledger.begin(
                action,
                {
                    "address": str(address),
                    "guest": guest,
                    "config": guest_file.display,
                    "live": live,
                },
            )
            apply_edits(ledger, op, [edit])
            if guest_file.kind is GuestKind.LIBVIRT and edit.changes_anything:
                notes += _libvirt_define(host, guest_file)
            if action == "attach":
                if live:
                    try:
                        _run_live(host, guest_file, guest, address, action)
                    except PcipassError:
                        undo_file_edits(host, ledger, ledger.file_edits(op.id))
                        op.finish()
                        raise
                # Claimed last, after every step that can fail: a refused
                # hotplug leaves no owner behind.
                ledger.claim(
                    address,
                    guest,
                    config_kind=str(guest_file.kind),
                    config_path=guest_file.display,
                )
            else:
                ledger.release(address, guest)
            op.finish()
        finally:
            ledger.close()
    return notes


def _libvirt_define(host: Host, guest_file: GuestFile) -> list[str]:
    """Make libvirtd take the edited file.  libvirtd reads its XML files only
    when it starts and rewrites them from memory on any change, so an edit
    it was not told about would be lost (libvirt.org: "editing the XML files
    directly is not supported"); ``virsh define FILE`` hands it over."""
    uri = guest_file.libvirt_uri or "qemu:///system"
    path = guest_file.display
    argv = ["virsh", "-c", uri, "define", str(guest_file.path)]
    shown = f"virsh -c {uri} define {path}"
    if host.runner.which("virsh") is None:
        return [
            f"libvirtd reads {path} only when it starts: on the host, run `{shown}` "
            "before libvirtd rewrites the file"
        ]
    done = host.runner.run(argv, timeout=120.0)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip() or "no message"
        return [
            f"`{shown}` failed ({output}); if libvirtd is not running it reads {path} when "
            "it starts, otherwise run it again before libvirtd rewrites the file"
        ]
    return []


def detach(
    host: Host,
    address: PciAddress,
    guest: str,
    *,
    config: str | None = None,
    dry_run: bool = False,
    live: bool = False,
) -> AttachResult:
    """Take ``address`` away from ``guest``: configuration (and live), ownership."""
    guest_file = find_guest(host, guest, config)
    result = AttachResult(
        "detach",
        str(address),
        guest,
        guest_file.display,
        str(guest_file.kind),
        dry_run=dry_run,
    )
    ledger = Ledger.open(host.root, readonly=True, clock=host.clock)
    try:
        owner = ledger.owner(address)
    finally:
        ledger.close()
    if owner is not None and owner.guest != guest:
        finding = Finding(
            "PP101",
            Severity.REFUSE,
            str(address),
            f"is assigned to guest {owner.guest}, not {guest}",
            f"name the owner: pcipass detach {address} {owner.guest}",
        )
        raise _refuse(address, [finding], [finding])
    after = guest_file.config.with_device_removed(address)
    edit = _plan(guest_file, after)
    result.changed = edit.changes_anything
    result.diff = edit.diff()
    if live:
        result.commands.append(live_command(guest_file, guest, address, "detach"))
    if not result.changed and owner is None and not live:
        result.notes.append(f"{address} is not assigned to guest {guest}; nothing to do")
        return result
    if dry_run:
        return result
    result.notes += _apply(host, guest_file, address, edit, guest=guest, live=live, action="detach")
    return result
