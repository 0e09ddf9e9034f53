"""``attach`` and ``detach``: give a hidden device to one guest, and take it back.

Validate everything first (PP002 hidden, PP101 exclusive, PP004 PV DMA,
PP005 RHEL 6 PV, PP006 HVM support), then act: the configuration edit goes
through the journal (:func:`pcipass.ops.files.apply_edits`), ownership into
the ledger, and with ``live`` the guest's toolstack
(:mod:`pcipass.guests.toolstack`: xl, xm or virsh) hot-plugs the device,
owned by the ledger from the moment it may have happened
(:func:`pcipass.ops.live.owned_hotplug`).  A hotplug the toolstack refused
undoes the configuration edit and the claim, so the request is all or nothing.
"""

from __future__ import annotations

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
from pcipass.guests.model import GuestKind, GuestOs
from pcipass.guests.toolstack import XC_ASSIGN_REFUSAL, Toolstack, Virsh, XenCli
from pcipass.guests.xen_cfg import XenConfig, parse_xen_config
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.platform import Platform, detect_platform
from pcipass.host.stubs import KVM_GUEST_DRIVERS, STUB_DRIVERS, XEN_GUEST_DRIVERS
from pcipass.ops.files import apply_edits, undo_file_edits
from pcipass.ops.guests import (
    GuestFile,
    GuestScan,
    find_guest,
    same_guest,
    scan_guests,
    unreadable_findings,
)
from pcipass.ops.live import owned_hotplug
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.policy import guest_rules
from pcipass.policy.verdict import Finding, Severity, refusal_error
from pcipass.state.ledger import Ledger, OperationHandle
from pcipass.state.lock import StateLock

__all__ = ["XC_ASSIGN_REFUSAL", "AttachResult", "attach", "detach"]


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
    # What the live step found or did: "hot-plugged", "unplugged",
    # "already attached", "not attached" ("" without --live).
    live: str = ""

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
            "live": self.live,
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
        if self.live in ("hot-plugged", "unplugged"):
            for argv in self.commands:
                lines.append(f"ran: {' '.join(argv)}")
            where = "into" if self.action == "attach" else "from"
            lines.append(f"{self.address}: {self.live} {where} running guest {self.guest}")
        elif self.live:
            where = "to" if self.action == "attach" else "from"
            lines.append(
                f"{self.address}: {self.live} {where} running guest {self.guest}; "
                "nothing hot-plugged"
            )
        return lines


# --- toolstack --------------------------------------------------------------


def guest_toolstack(host: Host, guest_file: GuestFile, guest: str) -> Toolstack:
    """The toolstack that hot-plugs into the running ``guest`` of this file."""
    if guest_file.kind is GuestKind.LIBVIRT:
        uri = guest_file.libvirt_uri or "qemu:///system"
        return Virsh(host, uri, guest, xen=guest_file.config.hypervisor == "xen")
    return XenCli(host, "xl" if guest_file.kind is GuestKind.XL else "xm", guest)


def live_command(
    host: Host, guest_file: GuestFile, guest: str, address: PciAddress, action: str
) -> list[str]:
    """The hotplug command, as the user would type it (``FILE`` stands for
    the hostdev XML file virsh reads)."""
    return guest_toolstack(host, guest_file, guest).describe(address, action)


# --- the plan --------------------------------------------------------------


def refusal(address: PciAddress, blocking: list[Finding], findings: list[Finding]) -> RefusedError:
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
        after = edited.with_passthrough_enabled()  # marked: the last detach removes it
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
    settings: guest_rules.SettingsFiles  # xendomains, libvirt-guests: read once

    @classmethod
    def gather(cls, host: Host, scan: GuestScan | None = None) -> GuestContext:
        return cls(
            scan if scan is not None else scan_guests(host),
            detect_platform(host.root),
            guest_rules.probe_iommu(host),
            guest_rules.SettingsFiles(host),
        )

    def device_findings(
        self,
        guest_file: GuestFile,
        guest: str,
        address: PciAddress,
        ledger_owner: str | None,
        guest_os: GuestOs | None = None,
        *,
        listed_elsewhere: Sequence[tuple[str, str, str]] = (),
    ) -> list[Finding]:
        """PP101, PP004 (as a warning), PP005 and PP006 for ``address`` in ``guest``.

        ``listed_elsewhere`` adds (guest, where, entry) listings that are not
        files (the other domains of a libvirt connection)."""
        cfg = guest_file.config
        listed_by = [
            (other.guest_name, other.display, entry.spec_text)
            for other, entry in self.scan.claims(address)
            if not same_guest(other, guest_file)
        ]
        listed_by += [entry for entry in listed_elsewhere if entry[0] != guest]
        findings = guest_rules.exclusive_findings(address, guest, ledger_owner, listed_by)
        findings += unreadable_findings(self.scan, address, guest_file)
        pv_dma = guest_rules.pv_dma_finding(address, cfg)
        if pv_dma is not None:
            findings.append(pv_dma)
        findings += guest_rules.rhel6_pv_findings(address, cfg, guest_os or cfg.os)
        findings += guest_rules.hvm_support_findings(address, cfg, self.platform, self.iommu)
        return findings


def attach_findings(
    host: Host,
    guest_file: GuestFile,
    guest: str,
    address: PciAddress,
    *,
    owner: str | None,
    stub: str | None,
    context: GuestContext | None = None,
    listed_elsewhere: Sequence[tuple[str, str, str]] = (),
    guest_os: GuestOs | None = None,
    accept_pv_dma_risk: bool = False,
    skip_hidden: bool = False,
) -> tuple[list[Finding], list[Finding]]:
    """Every rule attach applies, for a file or a libvirt connection alike:
    PP002 hidden (unless ``skip_hidden``: attach --hide hides it first),
    PP101, PP004, PP005, PP006, and PP003's shutdown-save check for Xen.
    Returns (all findings, the ones that refuse)."""
    xen = guest_file.is_xen
    findings: list[Finding] = []
    if not skip_hidden:
        driver = binding.current_driver(host, address) if _device_exists(host, address) else None
        findings += guest_rules.hidden_findings(address, driver, stub, xen=xen)
    context = context if context is not None else GuestContext.gather(host)
    findings += context.device_findings(
        guest_file, guest, address, owner, guest_os, listed_elsewhere=listed_elsewhere
    )
    if xen:
        findings += guest_rules.shutdown_save_findings(host, guest, context.settings)
    blocking = [f for f in findings if f.severity is Severity.REFUSE]
    pv_dma = next((f for f in findings if f.rule == "PP004"), None)
    if pv_dma is not None and not accept_pv_dma_risk:
        blocking.append(pv_dma)
    return findings, blocking


def _ownership(host: Host, address: PciAddress) -> tuple[str | None, str | None]:
    """(owner guest, stub driver of the hidden record) from the ledger."""
    with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
        owner = ledger.owner(address)
        record = ledger.get_hidden(address)
    return (
        owner.guest if owner else None,
        record.stub_driver if record else None,
    )


def _needs_hide(host: Host, address: PciAddress, xen: bool, stub: str | None) -> bool:
    """attach --hide: the device is on a host driver (not a stub of the
    other hypervisor, which would need the user's decision)."""
    if not _device_exists(host, address):
        return False
    driver = binding.current_driver(host, address)
    wanted = XEN_GUEST_DRIVERS if xen else KVM_GUEST_DRIVERS
    if driver in STUB_DRIVERS - wanted:
        return False
    return bool(guest_rules.hidden_findings(address, driver, stub, xen=xen))


def _live_advice(result: AttachResult, guest_file: GuestFile, guest: str) -> None:
    """What a live attach needs from the guest (PP008) and from Xen."""
    cfg = guest_file.config
    if not guest_file.is_xen:
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
    trust_unreadable: Sequence[str] = (),
) -> AttachResult:
    """Assign ``address`` to ``guest`` in its configuration (and live).

    ``trust_unreadable`` names xm files whose devices pcipass cannot read
    that the administrator says do not hold ``address`` (PP101)."""
    guest_file = find_guest(host, guest, config)
    result = AttachResult(
        "attach", str(address), guest, guest_file.display, str(guest_file.kind), dry_run=dry_run
    )
    result.notes += [f"{guest_file.display}: {n}" for n in guest_file.config.notes]
    scan = scan_guests(
        host, extra=guest_file if config is not None else None, trust_unreadable=trust_unreadable
    )
    result.notes += [f"not checked for PP101: {p}" for p in scan.problems]
    owner, stub = _ownership(host, address)
    if not _device_exists(host, address) and stub is None:
        raise DeviceNotFoundError(str(address), str(host.root.prefix))
    xen = guest_file.is_xen
    needs_hide = hide and _needs_hide(host, address, xen, stub)
    findings, blocking = attach_findings(
        host,
        guest_file,
        guest,
        address,
        owner=owner,
        stub=stub,
        context=GuestContext.gather(host, scan),
        guest_os=guest_os,
        accept_pv_dma_risk=accept_pv_dma_risk,
        skip_hidden=needs_hide,
    )
    if blocking:
        raise refusal(address, blocking, findings)
    result.findings = findings
    edit = _plan(guest_file, _attach_edit(guest_file, address))
    result.changed = edit.changes_anything
    result.diff = edit.diff()
    if live:
        result.commands.append(live_command(host, guest_file, guest, address, "attach"))
        _live_advice(result, guest_file, guest)
    if needs_hide:
        from pcipass.ops.hide import hide_now

        backend = Backend.PCIBACK if xen else Backend.VFIO
        hidden_result = hide_now(host, [address], backend, dry_run=dry_run)
        result.hide = hidden_result.to_json()
        result.findings += hidden_result.findings
    if dry_run:
        return result
    _apply(host, guest_file, address, edit, guest=guest, live=live, result=result)
    return result


def _check_owner_locked(ledger: Ledger, address: PciAddress, guest: str) -> None:
    owner = ledger.owner(address)
    if owner is not None and owner.guest != guest:
        # Another pcipass assigned it after the checks ran, before the lock.
        raise RefusedError(
            str(address),
            f"is assigned to guest {owner.guest}; a device belongs to one guest at a time",
            f"detach it first: pcipass detach {address} {owner.guest}",
            rule="PP101",
        )


def _apply(
    host: Host,
    guest_file: GuestFile,
    address: PciAddress,
    edit: FileEdit,
    *,
    guest: str,
    live: bool,
    result: AttachResult,
) -> None:
    """Under the state lock: ownership check, live step, journalled edit, ownership."""
    action = result.action
    kind, display = str(guest_file.kind), guest_file.display
    toolstack = guest_toolstack(host, guest_file, guest)
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        _check_owner_locked(ledger, address, guest)
        if action == "detach" and live:
            # Out of the running guest first: if the toolstack refuses,
            # the configuration still says what is true.
            result.live = owned_hotplug(
                ledger, toolstack, address, action, config_kind=kind, config_path=display
            ).message
        op = ledger.begin(
            action,
            {
                "address": str(address),
                "guest": guest,
                "config": display,
                "config_kind": kind,
                "live": live,
            },
        )
        apply_edits(ledger, op, [edit])
        if guest_file.kind is GuestKind.LIBVIRT and edit.changes_anything:
            result.notes += _libvirt_define(host, guest_file)
        if action == "attach":
            if live:
                result.live = _hotplug_into(
                    ledger,
                    op,
                    host,
                    toolstack=toolstack,
                    address=address,
                    kind=kind,
                    display=display,
                )
            # Claimed last, after every step that can fail: a refused
            # hotplug leaves no owner behind.
            ledger.claim(address, guest, config_kind=kind, config_path=display)
        else:
            ledger.release(address, guest)
        op.finish()


def _hotplug_into(
    ledger: Ledger,
    op: OperationHandle,
    host: Host,
    *,
    toolstack: Toolstack,
    address: PciAddress,
    kind: str,
    display: str,
) -> str:
    """The live half of attach.  Refused: the file edit is undone.  Unknown
    and unsettled: the edit stays with the "maybe" owner (the device may be
    in the guest, and the file then says so)."""
    try:
        return owned_hotplug(
            ledger, toolstack, address, "attach", config_kind=kind, config_path=display
        ).message
    except PcipassError as error:
        owner = ledger.owner(address)
        if owner is not None and owner.uncertain:
            op.finish()
            raise
        undo_file_edits(host, ledger, ledger.file_edits(op.id))
        op.finish()
        if isinstance(error, RefusedError):
            raise
        remedy = "; ".join(
            part for part in (error.remedy, "the configuration change was rolled back") if part
        )
        raise OperationFailed(error.subject, error.problem, remedy) from error


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
    with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
        owner = ledger.owner(address)
    if owner is not None and owner.guest != guest:
        finding = Finding(
            "PP101",
            Severity.REFUSE,
            str(address),
            f"is assigned to guest {owner.guest}, not {guest}",
            f"name the owner: pcipass detach {address} {owner.guest}",
        )
        raise refusal(address, [finding], [finding])
    after = guest_file.config.with_device_removed(address)
    edit = _plan(guest_file, after)
    result.changed = edit.changes_anything
    result.diff = edit.diff()
    if live:
        result.commands.append(live_command(host, guest_file, guest, address, "detach"))
    if not result.changed and owner is None and not live:
        result.notes.append(f"{address} is not assigned to guest {guest}; nothing to do")
        return result
    if dry_run:
        return result
    _apply(host, guest_file, address, edit, guest=guest, live=live, result=result)
    return result
