"""``guard``: refuse save, restore and migration of a guest that holds a device (PP003).

The source document (§15.5 Limitations): "Any guest using PCI passthrough
will no longer be available for save, restore, or migration capabilities, as
it will be tied to a particular non-virtualized hardware configuration."
Xen does not enforce it for PV guests: ``xl save`` of a guest holding a
device exits 0 and the restored guest hangs in pcifront (seen on Xen 4.17 in
the lab), so this guard is what stands between the administrator and a
dead guest.  Toolstack wrappers and hooks call it before the operation.

A guest holds a device when pcipass's ledger says so, or when its
configuration lists one (a device given by hand, before pcipass, counts).

libvirt runs ``/etc/libvirt/hooks/qemu GUEST OPERATION SUB-OPERATION EXTRA``
with the domain XML on stdin (libvirt.org/hooks.html); a non-zero exit of the
``migrate`` and ``restore`` hooks stops the operation.  For ``restore`` libvirt
takes anything the hook prints on stdout as a replacement XML, so the hook
path prints nothing there.
"""

from __future__ import annotations

from pcipass.errors import (
    ConfigSyntaxError,
    GuestNotFoundError,
    PcipassError,
    UsageError,
)
from pcipass.guests.libvirt_xml import parse_domain_xml
from pcipass.guests.model import GuestConfig, GuestOs
from pcipass.guests.names import check_guest_name
from pcipass.guests.xen_argv import domain_names, identify
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.ops.attach import GuestContext
from pcipass.ops.guests import (
    GuestFile,
    config_path,
    find_guest,
    read_guest_file,
    scan_guests,
)
from pcipass.policy import guest_rules
from pcipass.policy.guest_rules import save_restore_findings
from pcipass.policy.verdict import Finding, Severity, refusal_error
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger

OPERATIONS = ("save", "restore", "migrate")
# libvirt hook operations that move the guest's state elsewhere (hooks.html:
# "migrate" begin on the destination, "restore" begin before restoring);
# every other operation (prepare, start, stopped...) is not ours to judge.
HOOK_OPERATIONS = frozenset({"migrate", "restore"})
STDIN_DISPLAY = "<domain XML on stdin>"


@dataclass
class GuardResult:
    guest: str
    operation: str
    allowed: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "guest": self.guest,
            "operation": self.operation,
            "allowed": self.allowed,
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        lines.append(
            f"guest {self.guest}: holds no passed-through device; {self.operation} is safe"
        )
        return "\n".join(lines)


def _owned(host: Host, guest: str) -> list[str]:
    with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
        return [o.address for o in ledger.owners() if o.guest == guest]


def _listed(config: GuestConfig) -> list[str]:
    listed = [str(d.address) if d.address is not None else d.spec_text for d in config.devices()]
    if config.devices_unknown is not None:
        # Fail closed: code pcipass cannot read may give the guest a device.
        listed.append(f"unknown ({config.display} {config.devices_unknown})")
    return listed


def guard(
    host: Host,
    guest: str,
    operation: str,
    *,
    config: str | None = None,
    domain_xml: bytes | None = None,
    toolstack: str | None = None,
) -> GuardResult:
    """Allow ``operation`` on ``guest`` or raise :class:`RefusedError` (PP003).

    ``domain_xml`` is the document libvirt gives a hook; otherwise the
    guest's configuration is looked up (``config`` or the usual places).
    """
    if operation not in OPERATIONS:
        raise UsageError(
            f"guard {operation!r}", f"unknown operation; expected one of {', '.join(OPERATIONS)}"
        )
    check_guest_name(guest, toolstack)
    result = GuardResult(guest, operation, allowed=True)
    listed: list[str] = []
    sources: list[str] = []  # where the listed devices were found, for the message
    if domain_xml is not None:
        listed += _listed(parse_domain_xml(domain_xml, STDIN_DISPLAY))
        sources.append("the domain XML libvirt passed")
    else:
        try:
            found = find_guest(host, guest, config)
        except GuestNotFoundError as error:
            result.notes.append(
                f"{error.problem}; only pcipass's ledger and running QEMU processes were checked"
            )
        else:
            listed += _listed(found.config)
            sources.append(found.display)
    running = qemu_devices(host, guest)
    if running:
        listed += running
        sources.append("its running QEMU (-device vfio-pci)")
    owned = _owned(host, guest)
    where = " and ".join(sources) or "its configuration"
    findings = save_restore_findings(guest, operation, owned, listed, where)
    if findings:
        raise refusal_error(findings, f"guest {guest}")
    return result


def qemu_devices(host: Host, guest: str) -> list[str]:
    """Devices a running QEMU named ``guest`` holds through vfio-pci, read
    from ``/proc/PID/cmdline`` (a QEMU started by hand or by a script has no
    configuration file pcipass could read)."""
    from pcipass.ops.qemu_guest import find_qemu

    qemu = find_qemu(host, guest)
    return [] if qemu is None else qemu.devices


def guard_libvirt_hook(host: Host, words: list[str], stdin: bytes) -> GuardResult | None:
    """The libvirt hook form: ``words`` are the hook's arguments (OBJECT
    OPERATION SUB-OPERATION EXTRA), ``stdin`` the domain XML.

    Returns None for operations the guard does not judge (exit 0, silent).
    The name is taken as libvirt gives it (any name libvirt accepts); a
    domain XML pcipass cannot read is not a reason to block: the guest's
    configuration, the ledger and a running QEMU are asked instead.
    """
    if len(words) < 2:
        raise UsageError(
            "guard --libvirt-hook",
            "expected the hook's arguments: OBJECT OPERATION [SUB-OPERATION EXTRA]",
            "libvirt runs: /etc/libvirt/hooks/qemu GUEST migrate begin -",
        )
    guest, operation = words[0], words[1]
    if operation not in HOOK_OPERATIONS:
        return None
    if operation == "migrate" and len(words) > 2 and words[2] != "begin":
        return None
    xml = stdin if stdin.strip() else None
    if xml is not None:
        try:
            parse_domain_xml(xml, STDIN_DISPLAY)
        except ConfigSyntaxError as error:
            result = guard(host, guest, operation, toolstack="libvirt")
            result.notes.append(f"{error.render()}; its configuration was read instead")
            return result
    return guard(host, guest, operation, domain_xml=xml, toolstack="libvirt")


@dataclass
class GuestCheck:
    """Every guest rule applied to one guest's configuration (``check --guest``)."""

    guest: str
    config: str
    kind: str
    virt_mode: str
    os: str
    devices: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "guest": self.guest,
            "config": self.config,
            "kind": self.kind,
            "virt_mode": self.virt_mode,
            "os": self.os,
            "devices": self.devices,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class HeldDevices:
    """What the ledger says guests own and the host has hidden, read once for
    a command that checks many guests (one ledger open, not one per guest)."""

    owners: dict[str, str]  # address -> guest
    hidden: dict[str, str]  # address -> stub driver
    owned_by: dict[str, list[str]]  # guest -> its addresses, sorted

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> HeldDevices:
        owners = {o.address: o.guest for o in ledger.owners()}
        owned_by: dict[str, list[str]] = {}
        for key, owner in sorted(owners.items()):
            owned_by.setdefault(owner, []).append(key)
        return cls(owners, {h.address: h.stub_driver for h in ledger.hidden()}, owned_by)

    @classmethod
    def read(cls, host: Host) -> HeldDevices:
        with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
            return cls.from_ledger(ledger)


def check_guest(
    host: Host,
    guest_file: GuestFile,
    *,
    guest_os: GuestOs | None = None,
    context: GuestContext | None = None,
    held: HeldDevices | None = None,
) -> GuestCheck:
    """Check a configured guest as ``attach`` would check each of its devices,
    plus drift between its configuration and the ledger (``held``: the
    ledger as already read by the caller)."""
    cfg = guest_file.config
    guest = guest_file.guest_name
    context = context or GuestContext.gather(host)
    result = GuestCheck(
        guest, guest_file.display, str(cfg.kind), str(cfg.virt_mode), str(guest_os or cfg.os)
    )
    result.notes += [f"{guest_file.display}: {n}" for n in cfg.notes]
    if cfg.devices_unknown is not None:
        result.findings.append(
            Finding(
                "PP101",
                Severity.WARN,
                f"guest {guest}",
                f"devices unknown: {guest_file.display} computes pci ({cfg.devices_unknown}); "
                "pcipass gives no other guest a device until this file is plain data or is "
                "trusted (--trust-unreadable)",
                f"write pci = [ ... ] as a plain list in {guest_file.display}",
            )
        )
    held = held if held is not None else HeldDevices.read(host)
    owners, hidden = held.owners, held.hidden
    listed: set[str] = set()
    for device in cfg.devices():
        result.devices.append(device.spec_text)
        address = device.address
        if address is None:
            result.notes.append(
                f"{device.spec_text!r} names no single function; not checked device by device"
            )
            continue
        key = str(address)
        listed.add(key)
        if not host.sysfs.exists(host.root.pci_device(address)):
            result.findings.append(
                Finding(
                    "PP002",
                    Severity.WARN,
                    key,
                    f"listed by guest {guest} in {guest_file.display} but not present on this "
                    "host; the guest will fail to start",
                    f"pcipass detach {key} {guest}, or check the address (pcipass list)",
                )
            )
            continue
        result.findings += guest_rules.hidden_findings(
            address,
            binding.current_driver(host, address),
            hidden.get(key),
            xen=guest_file.is_xen,
        )
        result.findings += context.device_findings(
            guest_file, guest, address, owners.get(key), guest_os
        )
        if key not in owners:
            result.findings.append(
                Finding(
                    "PP101",
                    Severity.INFO,
                    key,
                    f"listed by guest {guest} but not recorded in pcipass's ledger",
                    f"pcipass attach {key} {guest} records it; the file stays as it is",
                )
            )
    for key in held.owned_by.get(guest, ()):
        if key not in listed:
            result.findings.append(
                Finding(
                    "PP101",
                    Severity.WARN,
                    key,
                    f"the ledger says guest {guest} owns it, but {guest_file.display} "
                    "does not list it",
                    f"pcipass detach {key} {guest} releases it, "
                    f"or pcipass attach {key} {guest} lists it again",
                )
            )
    if guest_file.is_xen and listed:
        result.findings += guest_rules.shutdown_save_findings(host, guest, context.settings)
    return result


def holders(host: Host) -> dict[str, list[str]]:
    """Every guest that holds a device, by the ledger or its configuration."""
    held: dict[str, list[str]] = {}
    with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
        for owner in ledger.owners():
            held.setdefault(owner.guest, []).append(owner.address)
    for found in scan_guests(host).guests:
        listed = _listed(found.config)
        if listed:
            held.setdefault(found.guest_name, []).extend(listed)
    return {guest: sorted(set(devices)) for guest, devices in sorted(held.items())}


def guard_unidentified(host: Host, tool: str, operation: str, reason: str) -> GuardResult:
    """Fail closed: a command whose guest cannot be told is refused while any
    guest holds a device (it might be that guest)."""
    held = holders(host)
    if held:
        shown = "; ".join(f"{guest} ({', '.join(devices)})" for guest, devices in held.items())
        refusal = Finding(
            "PP003",
            Severity.REFUSE,
            f"{tool} {operation}",
            f"pcipass cannot tell which guest this concerns: {reason}; guests holding "
            f"passed-through PCI devices: {shown}; a guest using PCI passthrough is not "
            f"available for save, restore, or migration, so the command is refused",
            f"name the guest plainly (e.g. {tool} {operation} GUEST ...), or use "
            f"pcipass {operation}",
        )
        raise refusal_error([refusal], refusal.subject)
    result = GuardResult(f"({tool} {operation})", operation, allowed=True)
    result.notes.append(f"{reason}; no guest holds a passed-through device")
    return result


def guard_wrapped(host: Host, tool: str, argv: list[str], listing: str) -> GuardResult | None:
    """The xl/xm wrapper form: ``argv`` is the wrapped program's command line,
    ``listing`` the output of ``TOOL list`` (to turn a domain id into a name).

    Returns None for commands the guard does not judge.
    """
    if tool not in ("xl", "xm"):
        raise UsageError(f"--wrapped {tool}", "pcipass wraps xl and xm only")
    call = identify(tool, argv)
    if call.operation is None:
        return None
    if call.unidentified is not None:
        return guard_unidentified(host, tool, call.operation, call.unidentified)
    if call.config_file is not None:
        try:
            found = read_config_name(host, call.config_file)
        except PcipassError as error:
            return guard_unidentified(host, tool, call.operation, error.render())
        return guard(host, found[0], call.operation, config=found[1], toolstack=tool)
    assert call.domain is not None
    name = call.domain
    if name.isdigit():
        known = domain_names(listing)
        if name not in known:
            reason = f"domain id {name} is not in `{tool} list`"
            return guard_unidentified(host, tool, call.operation, reason)
        name = known[name]
    try:
        check_guest_name(name, tool)
    except UsageError as error:
        return guard_unidentified(host, tool, call.operation, error.render())
    return guard(host, name, call.operation, toolstack=tool)


def read_config_name(host: Host, config: str) -> tuple[str, str]:
    """(guest name, file) of a configuration named on a command line."""
    path, display = config_path(host, config)
    return read_guest_file(path, display).guest_name, config
