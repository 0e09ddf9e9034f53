"""The safe way to save, restore or migrate a guest that holds PCI devices.

The document rules save/restore/migration out for a guest using passthrough
(PP003).  The lab found the way that works on Xen 4.17: with
``passthrough="enabled"`` in the domain's xl configuration, detach the devices
live, save (or migrate), restore, and attach them again; without that setting
the rebuilt domain cannot take a device (``xc_assign_device failed``).  So:

* ``pcipass save GUEST FILE``: detach every device live (limiter counted),
  ``xl save``, and remember in the ledger which devices go back;
* ``pcipass restore FILE GUEST``: ``xl restore``, then attach them live again,
  each checked against the identity recorded when it was hidden (PP105);
* ``pcipass migrate GUEST HOST``: detach, ``xl migrate``; the destination's
  devices are its own: the command to give them to the guest there is printed.

Each is one journalled operation: interrupted, ``pcipass recover`` shows it
and the devices stay owned by the guest (nothing is given back to the host).
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, RefusedError
from pcipass.guests.model import GuestKind
from pcipass.guests.toolstack import HotplugRefused, XenCli
from pcipass.host.context import Host
from pcipass.ops.guests import GuestFile, find_guest
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import HotplugLimiter
from pcipass.state.lock import StateLock


@dataclass
class SafeResult:
    action: str
    guest: str
    devices: list[str]
    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "guest": self.guest,
            "devices": self.devices,
            "commands": self.commands,
            "notes": self.notes,
        }


def _xl_guest(host: Host, guest: str, action: str) -> GuestFile:
    found = find_guest(host, guest)
    if found.kind is not GuestKind.XL:
        raise RefusedError(
            f"guest {guest}",
            f"the safe {action} is done for xl guests only ({found.display} is {found.kind})",
            f"detach the devices, {action} with your toolstack, and attach them again",
            rule="PP003",
        )
    if found.config.passthrough_enabled is not True:
        raise RefusedError(
            f"guest {guest}",
            f'{found.display} lacks passthrough="enabled": the domain Xen rebuilds at restore '
            "could not take its devices back (xc_assign_device failed: Operation not "
            "supported)",
            f'pcipass attach adds it; or add passthrough="enabled" to {found.display} and '
            "restart the guest once before using save",
            rule="PP003",
        )
    return found


def _owned(ledger: Ledger, guest: str) -> list[PciAddress]:
    return sorted(PciAddress.parse(o.address) for o in ledger.owners() if o.guest == guest)


def _hotplug_all(
    host: Host,
    ledger: Ledger,
    guest_file: GuestFile,
    guest: str,
    devices: list[PciAddress],
    *,
    action: str,
    result: SafeResult,
) -> None:
    limiter = HotplugLimiter(ledger)
    toolstack = XenCli(host, "xl", guest)
    for address in devices:
        ticket = limiter.acquire(address, guest, action)
        try:
            toolstack.hotplug(address, action)
        except HotplugRefused:
            limiter.refund(ticket)  # nothing changed: it does not count (PP007)
            raise
        result.commands.append(toolstack.describe(address, action))


def _without_devices(host: Host, guest: str, action: str, operand: str) -> SafeResult:
    """Detach every device live, run ``xl save|migrate GUEST OPERAND``, and on
    failure give the still-running guest its devices back.  Journalled, so an
    interruption shows in ``status`` and ``recover``."""
    guest_file = _xl_guest(host, guest, action)
    argv = ["xl", action, guest, operand]
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        devices = _owned(ledger, guest)
        result = SafeResult(action, guest, [str(a) for a in devices])
        op = ledger.begin(
            f"safe-{action}", {"guest": guest, "devices": result.devices, "argv": argv}
        )
        _hotplug_all(host, ledger, guest_file, guest, devices, action="detach", result=result)
        try:
            XenCli(host, "xl", guest).lifecycle(action, guest, operand)
        except OperationFailed:
            _hotplug_all(host, ledger, guest_file, guest, devices, action="attach", result=result)
            op.finish()
            raise
        result.commands.append(argv)
        if action == "migrate":
            for address in devices:
                ledger.release(address, guest)
        op.finish()
    return result


def safe_save(host: Host, guest: str, target: str) -> SafeResult:
    result = _without_devices(host, guest, "save", target)
    result.notes.append(
        f"restore with: pcipass restore {target} {guest} (the devices stay "
        "reserved for the guest meanwhile)"
    )
    return result


def safe_restore(host: Host, source: str, guest: str) -> SafeResult:
    guest_file = _xl_guest(host, guest, "restore")
    from pcipass.ops.assignability import assignability_findings
    from pcipass.policy.verdict import refusal_error, refusals

    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        devices = _owned(ledger, guest)
        result = SafeResult("restore", guest, [str(a) for a in devices])
        # PP105: the addresses must still name the devices that were hidden.
        blocking = [
            f
            for f in refusals(assignability_findings(host, devices, for_guest=guest))
            if f.rule == "PP105"
        ]
        if blocking:
            raise refusal_error(blocking, f"guest {guest}")
        result.commands.append(XenCli(host, "xl", guest).lifecycle("restore", source))
        _hotplug_all(host, ledger, guest_file, guest, devices, action="attach", result=result)
    return result


def safe_migrate(host: Host, guest: str, destination: str) -> SafeResult:
    result = _without_devices(host, guest, "migrate", destination)
    result.notes.append(
        f"{guest} runs on {destination} without devices; this host's devices are free (still "
        f"hidden). On the destination, give it its own: pcipass attach --live BDF {guest} "
        "(pcipass checks each device there)"
    )
    return result
