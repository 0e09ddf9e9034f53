"""``guard``: refuse save, restore and migration of a guest that holds a device (PP003).

The source document (§15.5 Limitations): "Any guest using PCI passthrough
will no longer be available for save, restore, or migration capabilities, as
it will be tied to a particular non-virtualized hardware configuration."
Xen does not enforce it for PV guests: ``xl save`` of a guest holding a
device exits 0 and the restored guest hangs in pcifront (lab-notes README,
result 4), so this guard is what stands between the administrator and a
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

from dataclasses import dataclass, field

from pcipass.errors import GuestNotFoundError, RefusedError, UsageError
from pcipass.guests.libvirt_xml import parse_domain_xml
from pcipass.guests.model import GuestConfig
from pcipass.host.context import Host
from pcipass.host.root import safe_name
from pcipass.ops.guests import find_guest
from pcipass.policy.guest_rules import save_restore_findings
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
    devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "guest": self.guest,
            "operation": self.operation,
            "allowed": self.allowed,
            "devices": self.devices,
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        lines.append(
            f"guest {self.guest}: holds no passed-through device; {self.operation} is safe"
        )
        return "\n".join(lines)


def _owned(host: Host, guest: str) -> list[str]:
    ledger = Ledger.open(host.root, readonly=True, clock=host.clock)
    try:
        return [o.address for o in ledger.owners() if o.guest == guest]
    finally:
        ledger.close()


def _listed(config: GuestConfig) -> list[str]:
    return [str(d.address) if d.address is not None else d.spec_text for d in config.devices()]


def guard(
    host: Host,
    guest: str,
    operation: str,
    *,
    config: str | None = None,
    domain_xml: bytes | None = None,
) -> GuardResult:
    """Allow ``operation`` on ``guest`` or raise :class:`RefusedError` (PP003).

    ``domain_xml`` is the document libvirt gives a hook; otherwise the
    guest's configuration is looked up (``config`` or the usual places).
    """
    if operation not in OPERATIONS:
        raise UsageError(
            f"guard {operation!r}", f"unknown operation; expected one of {', '.join(OPERATIONS)}"
        )
    safe_name("guest", guest)
    result = GuardResult(guest, operation, allowed=True)
    listed: list[str] = []
    where = "its configuration"
    if domain_xml is not None:
        document = parse_domain_xml(domain_xml, STDIN_DISPLAY)
        listed = _listed(document)
        where = "the domain XML libvirt passed"
    else:
        try:
            found = find_guest(host, guest, config)
        except GuestNotFoundError as error:
            result.notes.append(f"{error.problem}; only pcipass's ledger was checked")
        else:
            listed = _listed(found.config)
            where = found.display
    owned = _owned(host, guest)
    findings = save_restore_findings(guest, operation, owned, listed, where)
    if findings:
        only = findings[0]
        raise RefusedError(only.subject, only.message, only.remedy, rule=only.rule)
    return result


def guard_libvirt_hook(host: Host, words: list[str], stdin: bytes) -> GuardResult | None:
    """The libvirt hook form: ``words`` are the hook's arguments (OBJECT
    OPERATION SUB-OPERATION EXTRA), ``stdin`` the domain XML.

    Returns None for operations the guard does not judge (exit 0, silent).
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
    return guard(host, guest, operation, domain_xml=stdin if stdin.strip() else None)
