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

import contextlib
from collections.abc import Mapping, Sequence

from pcipass import interrupt
from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import (
    DeviceNotFoundError,
    OperationFailed,
    PcipassError,
    RefusedError,
    UsageError,
)
from pcipass.guests.libvirt_xml import LibvirtDomain, parse_domain_xml
from pcipass.guests.model import GuestConfig, GuestKind, GuestOs
from pcipass.guests.toolstack import XC_ASSIGN_REFUSAL, Toolstack, Virsh, XenCli
from pcipass.guests.xen_cfg import XenConfig, parse_xen_config
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.device import slot_functions
from pcipass.host.platform import Platform, detect_platform
from pcipass.host.stubs import KVM_GUEST_DRIVERS, STUB_DRIVERS, XEN_GUEST_DRIVERS
from pcipass.interrupt import Interrupted
from pcipass.ops.attach_rom import RomChoice, check_rom
from pcipass.ops.files import apply_edits, undo_file_edits
from pcipass.ops.guests import (
    GuestFile,
    GuestScan,
    find_guest,
    same_guest,
    scan_guests,
    unreadable_findings,
)
from pcipass.ops.live import begin_hotplug, finish_hotplug, run_hotplug
from pcipass.persist.atomic import FileEdit, apply_edit, digest, plan_edit
from pcipass.policy import guest_rules
from pcipass.policy.verdict import Finding, Severity, refusal_error
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger, OperationHandle
from pcipass.state.lock import OperationInProgress, StateLock

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
    # attach --all-functions: every function given (``address`` first); [] for one.
    functions: list[str] = field(default_factory=list)
    rom: dict[str, str] | None = None  # attach --rom/--rom-bar: the <rom> it set

    @property
    def shown(self) -> str:
        return ", ".join(self.functions) if self.functions else self.address

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
            "functions": self.functions,
            "rom": self.rom,
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
            lines.append(f"{self.config}: {self.action}ed {self.shown} {to} guest {self.guest}")
        else:
            verb = "already lists" if self.action == "attach" else "does not list"
            lines.append(f"{self.config}: {verb} {self.shown}; unchanged")
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


def _attach_edit(
    guest_file: GuestFile,
    addresses: Sequence[PciAddress],
    options: Mapping[PciAddress, Mapping[str, str]] | None = None,
) -> bytes:
    """The file with every one of ``addresses`` added (``options`` per device: attach --rom)."""
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
    after = guest_file.data
    edited = config
    for address in addresses:
        after = edited.with_device_added(address, (options or {}).get(address) or None)
        edited = _reparse(edited, after, guest_file.display)
    if isinstance(config, XenConfig) and config.kind is GuestKind.XL and config.passthrough is None:
        # xl.cfg(5) passthrough="enabled": the domain is built able to take a
        # device later, so detach -> save/restore -> attach works (checked on Xen 4.17 in the lab).
        edited = parse_xen_config(after, guest_file.display, GuestKind.XL)
        after = edited.with_passthrough_enabled()  # marked: the last detach removes it
    return after


def _reparse(config: GuestConfig, after: bytes, display: str) -> GuestConfig:
    """The edited bytes parsed again, so the next function is added to them."""
    if isinstance(config, XenConfig):
        return parse_xen_config(after, display, config.kind)
    return parse_domain_xml(after, display)


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
    all_functions: bool = False,
    rom: str | None = None,
    rom_bar: str | None = None,
) -> AttachResult:
    """Assign ``address`` to ``guest`` in its configuration (and live).

    ``trust_unreadable`` names xm files whose devices pcipass cannot read
    that the administrator says do not hold ``address`` (PP101).
    ``all_functions``: every function of the device's slot goes, in one file
    edit and one journal operation (a GPU and its HDMI audio / USB-C
    functions).  ``rom``/``rom_bar``: the ROM the guest sees (ops/attach_rom.py)."""
    guest_file = find_guest(host, guest, config)
    result = AttachResult(
        "attach", str(address), guest, guest_file.display, str(guest_file.kind), dry_run=dry_run
    )
    addresses = _functions_of(host, address, live) if all_functions else [address]
    if len(addresses) > 1:
        result.functions = [str(a) for a in addresses]
    choice = _rom_choice(host, guest_file, address, rom, rom_bar)
    result.notes += [f"{guest_file.display}: {n}" for n in guest_file.config.notes]
    scan = scan_guests(
        host, extra=guest_file if config is not None else None, trust_unreadable=trust_unreadable
    )
    result.notes += [f"not checked for PP101: {p}" for p in scan.problems]
    xen = guest_file.is_xen
    context = GuestContext.gather(host, scan)
    findings: list[Finding] = []
    blocking: list[Finding] = []
    to_hide: list[PciAddress] = []
    for function in addresses:
        owner, stub = _ownership(host, function)
        if not _device_exists(host, function) and stub is None:
            raise DeviceNotFoundError(str(function), str(host.root.prefix))
        needs_hide = hide and _needs_hide(host, function, xen, stub)
        if needs_hide:
            to_hide.append(function)
        found, refusing = attach_findings(
            host,
            guest_file,
            guest,
            function,
            owner=owner,
            stub=stub,
            context=context,
            guest_os=guest_os,
            accept_pv_dma_risk=accept_pv_dma_risk,
            skip_hidden=needs_hide,
        )
        findings += found
        blocking += refusing
    if choice is not None:
        findings += choice.findings
        blocking += [f for f in choice.findings if f.severity is Severity.REFUSE]
        result.rom = choice.options()
    if blocking:
        raise refusal(address, blocking, findings)
    result.findings = findings
    options = {address: choice.options()} if choice is not None else None
    edit = _plan(guest_file, _attach_edit(guest_file, addresses, options))
    result.changed = edit.changes_anything
    result.diff = edit.diff()
    if live:
        result.commands.append(live_command(host, guest_file, guest, address, "attach"))
        _live_advice(result, guest_file, guest)
    if to_hide:
        from pcipass.ops.hide import hide_now

        backend = Backend.PCIBACK if xen else Backend.VFIO
        hidden_result = hide_now(host, to_hide, backend, dry_run=dry_run)
        result.hide = hidden_result.to_json()
        result.findings += hidden_result.findings
    if dry_run:
        return result
    _apply(host, guest_file, addresses, edit, guest=guest, live=live, result=result)
    return result


def _functions_of(host: Host, address: PciAddress, live: bool) -> list[PciAddress]:
    """attach --all-functions: the slot's functions, ``address`` first."""
    addresses = slot_functions(host.sysfs, address) or [address]
    if live and len(addresses) > 1:
        # One hotplug per function, each its own toolstack call: a refusal of
        # the second would leave the first in the guest, not all-or-nothing.
        raise UsageError(
            "--all-functions --live",
            f"{len(addresses)} functions cannot be hot-plugged as one step",
            "attach them to the configuration (without --live) and restart the guest",
        )
    return addresses


def _rom_choice(
    host: Host, guest_file: GuestFile, address: PciAddress, rom: str | None, bar: str | None
) -> RomChoice | None:
    """attach --rom/--rom-bar: checked (PP121), for a libvirt domain only."""
    if rom is None and bar is None:
        return None
    config = guest_file.config
    if not isinstance(config, LibvirtDomain):
        # xl.cfg(5) PCI_SPEC_STRING and xm's pci entries have no ROM key: Xen's
        # device model reads the device's own ROM.
        raise UsageError(
            f"{guest_file.display}",
            "xl and xm have no per-device ROM setting; --rom and --rom-bar need a libvirt domain",
            "give the guest its ROM through a libvirt domain, or rely on the device's own",
        )
    return check_rom(host, address, rom, bar, uefi_guest=config.uefi_firmware)


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
    addresses: Sequence[PciAddress],
    edit: FileEdit,
    *,
    guest: str,
    live: bool,
    result: AttachResult,
) -> None:
    """One journalled operation: the configuration edit, ownership and (with
    ``live``) the hotplug, all or nothing.

    A failure or a signal at any step settles the journal intent exactly as
    ``recover`` would after a kill (:func:`pcipass.ops.recover.recover_operation`):
    forward when the hotplug happened, back otherwise; the intent is closed.
    """
    ids: list[int] = []
    try:
        _apply_journalled(
            host, guest_file, addresses, edit, guest=guest, live=live, result=result, ids=ids
        )
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        if ids:
            undone = settle_after_failure(host, ids[0])
            if isinstance(error, Interrupted):
                error.undone += undone
        raise


def settle_after_failure(host: Host, op_id: int) -> list[str]:
    """The intent ``op_id`` left open by a failure or a signal, settled now."""
    from pcipass.ops.live import settle_uncertain
    from pcipass.ops.recover import recover_operation

    deferred = interrupt.deferred()  # a second signal waits until the intent is settled
    with deferred, StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        op = next((o for o in ledger.open_operations() if o.id == op_id), None)
        if op is None:
            return []
        report = recover_operation(host, ledger, op)
        address = op.intent.get("address")
        others = {o.address for o in ledger.owners() if o.address != address}
        return report + settle_uncertain(host, ledger, skip=others)


def _intent(
    guest_file: GuestFile, addresses: Sequence[PciAddress], guest: str, live: bool
) -> dict[str, object]:
    return {
        "address": str(addresses[0]),
        "guest": guest,
        "config": guest_file.display,
        "config_kind": str(guest_file.kind),
        "live": live,
        # attach --all-functions: every function is claimed by this one operation
        **({"functions": [str(a) for a in addresses]} if len(addresses) > 1 else {}),
    }


def _apply_journalled(
    host: Host,
    guest_file: GuestFile,
    addresses: Sequence[PciAddress],
    edit: FileEdit,
    *,
    guest: str,
    live: bool,
    result: AttachResult,
    ids: list[int],
) -> None:
    """attach: the file, then the running guest; detach: the running guest,
    then the file (its edit journalled before, written once the guest let
    go).  The toolstack runs without the state lock: ``xl pci-detach`` waits
    for the guest, and other commands need not wait with it; the intent is
    marked alive meanwhile (:class:`OperationInProgress`) and the device
    owned "maybe" (:mod:`pcipass.ops.live`).

    ``addresses``: one device, or (attach --all-functions, never with ``live``)
    every function of a slot, claimed together in one journal operation."""
    address = addresses[0]
    action = result.action
    kind, display = str(guest_file.kind), guest_file.display
    with contextlib.ExitStack() as running:
        with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
            for function in addresses:
                _check_owner_locked(ledger, function, guest)
            with interrupt.deferred():  # a signal now finds the intent known to _apply
                op = ledger.begin(action, _intent(guest_file, addresses, guest, live))
                ids.append(op.id)
            if edit.changes_anything and edit.after is not None:
                # Kept so that recover can finish the edit (roll forward).
                ledger.save_backup(edit.after)
            if action == "attach" or not live:
                apply_edits(ledger, op, [edit])
                _define_if_libvirt(host, guest_file, edit, result)
            if not live:
                if action == "attach":
                    for function in addresses:
                        ledger.claim(function, guest, config_kind=kind, config_path=display)
                else:
                    ledger.release(address, guest)
                op.finish()
                return
            if edit.changes_anything:  # detach: planned now, written once the guest let go
                backup = ledger.save_backup(edit.before) if edit.before is not None else None
                op.record_file_edit(display, digest(edit.before), digest(edit.after), backup)
            toolstack = guest_toolstack(host, guest_file, guest)
            pending = begin_hotplug(
                ledger, toolstack, address, action, config_kind=kind, config_path=display
            )
            running.enter_context(OperationInProgress(host.root, op.id))
        failure = run_hotplug(pending)
        with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
            op = OperationHandle(ledger, op.id, op.kind)  # the same intent, this connection
            try:
                result.live = finish_hotplug(ledger, pending, failure).message
            except PcipassError as error:
                _hotplug_failed(host, ledger, op, error, address=address, action=action)
            if action == "attach":
                ledger.claim(address, guest, config_kind=kind, config_path=display)
            else:
                if edit.changes_anything:
                    apply_edit(edit)
                    _define_if_libvirt(host, guest_file, edit, result)
                ledger.release(address, guest)
            op.finish()


def _define_if_libvirt(
    host: Host, guest_file: GuestFile, edit: FileEdit, result: AttachResult
) -> None:
    if guest_file.kind is GuestKind.LIBVIRT and edit.changes_anything:
        result.notes += _libvirt_define(host, guest_file)


def _hotplug_failed(
    host: Host,
    ledger: Ledger,
    op: OperationHandle,
    error: PcipassError,
    *,
    address: PciAddress,
    action: str,
) -> None:
    """The live half failed.  Refused, or settled as not done: an attach's
    file edit is undone (a detach's was not written yet).  Unknown and
    unsettled: an attach's edit stays with the "maybe" owner (the device may
    be in the guest, and the file then says so).  The intent is closed."""
    owner = ledger.owner(address)
    if (owner is not None and owner.uncertain) or action == "detach":
        op.finish()
        raise error
    undo_file_edits(host, ledger, ledger.file_edits(op.id))
    op.finish()
    if isinstance(error, RefusedError):
        raise error
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
    _apply(host, guest_file, [address], edit, guest=guest, live=live, result=result)
    return result
