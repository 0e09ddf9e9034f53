"""A live hotplug that the ledger owns from the moment it may have happened.

Every ``--live`` attach or detach (xl, xm, virsh, ``--connect``, QMP) runs
through :func:`owned_hotplug`, under the state lock:

It runs in three steps, so a long wait (a guest ejecting a device over
ACPI) need not hold the state lock: :func:`begin_hotplug` and
:func:`finish_hotplug` under the lock, :func:`run_hotplug` between them.

1. ask the toolstack whether the running guest holds the device already: a
   repeat ("already attached", "not attached") hot-plugs nothing and costs
   nothing from the PP007 budget;
2. take one event from the PP007 budget;
3. record the device as *maybe in guest G* in the ledger (an owner, so
   ``unhide --now`` refuses it, and one ``recover`` asks the toolstack
   about) *before* the toolstack is told;
4. run the hotplug.  A refusal (nothing changed) gives the budget event back
   and restores the previous owner.  An unknown outcome (timeout, late
   answer, connection lost) asks the toolstack again and records the truth;
   if the toolstack cannot tell, the device stays "maybe in guest G" until
   ``pcipass recover`` or a repeat of the command settles it.  A process
   killed at any instant leaves the mark too: never a device in a guest
   with no owner.
"""

from __future__ import annotations

from collections.abc import Collection

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, PcipassError
from pcipass.guests.toolstack import HotplugRefused, HotplugUnknown, Toolstack
from pcipass.host.context import Host
from pcipass.record import dataclass
from pcipass.state.ledger import UNCERTAIN_PREFIX, Ledger, OpenOperation, OwnerRecord
from pcipass.state.limiter import HotplugLimiter, HotplugTicket


@dataclass(frozen=True)
class LiveOutcome:
    action: str
    happened: bool  # the running guest changed
    message: str  # "hot-plugged", "unplugged", "already attached", "not attached"


def _restore(ledger: Ledger, address: PciAddress, guest: str, before: OwnerRecord | None) -> None:
    if before is None:
        ledger.release(address, guest)
    else:
        ledger.claim(address, guest, config_kind=before.config_kind, config_path=before.config_path)


def _settle(
    ledger: Ledger,
    address: PciAddress,
    guest: str,
    holds: bool,
    *,
    config_kind: str,
    config_path: str | None,
) -> None:
    """Record what the toolstack says is true."""
    if holds:
        ledger.claim(address, guest, config_kind=config_kind, config_path=config_path)
        return
    owner = ledger.owner(address)
    if owner is not None and owner.guest == guest:
        ledger.release(address, guest)


@dataclass
class PendingHotplug:
    """A hotplug admitted and recorded (:func:`begin_hotplug`), not yet run."""

    toolstack: Toolstack
    address: PciAddress
    action: str
    config_kind: str
    config_path: str | None
    ticket: HotplugTicket | None = None
    before: OwnerRecord | None = None
    done: LiveOutcome | None = None  # set when there is nothing to hot-plug


def begin_hotplug(
    ledger: Ledger,
    toolstack: Toolstack,
    address: PciAddress,
    action: str,
    *,
    config_kind: str,
    config_path: str | None,
) -> PendingHotplug:
    """Under the state lock: is it a repeat? take the PP007 event; for attach
    record "maybe in guest G" before the toolstack hears of it."""
    pending = PendingHotplug(toolstack, address, action, config_kind, config_path)
    guest = toolstack.guest
    present = toolstack.holds(address)
    if action == "attach" and present is True:
        _settle(ledger, address, guest, True, config_kind=config_kind, config_path=config_path)
        pending.done = LiveOutcome(action, False, "already attached")
        return pending
    if action == "detach" and present is False:
        _settle(ledger, address, guest, False, config_kind=config_kind, config_path=config_path)
        pending.done = LiveOutcome(action, False, "not attached")
        return pending
    pending.ticket = HotplugLimiter(ledger).acquire(address, guest, action)
    pending.before = ledger.owner(address)
    # The intent, durable before the toolstack hears of it: from here on,
    # whatever happens to this process, the device has an owner, and one that
    # recover knows to ask about (attach: it may be in the guest now; detach:
    # it may be out of it already).
    ledger.claim(
        address, guest, config_kind=UNCERTAIN_PREFIX + config_kind, config_path=config_path
    )
    return pending


def run_hotplug(pending: PendingHotplug) -> OperationFailed | None:
    """The toolstack call; needs no lock (the ledger already blocks the device).
    Returns the failure (HotplugRefused or HotplugUnknown), None on success."""
    if pending.done is not None:
        return None
    try:
        pending.toolstack.hotplug(pending.address, pending.action)
    except (HotplugRefused, HotplugUnknown) as error:
        return error
    except PcipassError as error:
        # Any other failure of a toolstack: assume nothing, ask.
        return HotplugUnknown(error.subject, error.problem, error.remedy)
    return None


def finish_hotplug(
    ledger: Ledger, pending: PendingHotplug, failure: OperationFailed | None
) -> LiveOutcome:
    """Under the state lock: record the outcome (asking the toolstack when it
    is unknown), give back the PP007 event of a hotplug that did not happen."""
    if pending.done is not None:
        return pending.done
    address, action, guest = pending.address, pending.action, pending.toolstack.guest
    kind, path = pending.config_kind, pending.config_path
    limiter = HotplugLimiter(ledger)
    wanted = action == "attach"
    happened = LiveOutcome(action, True, "hot-plugged" if wanted else "unplugged")
    if failure is None:
        _settle(ledger, address, guest, wanted, config_kind=kind, config_path=path)
        return happened
    if isinstance(failure, HotplugRefused):
        if pending.ticket is not None:
            limiter.refund(pending.ticket)
        _restore(ledger, address, guest, pending.before)
        raise failure
    truth = pending.toolstack.holds(address)
    if truth is None:
        raise OperationFailed(
            failure.subject,
            f"{failure.problem}; the toolstack cannot say whether guest {guest} holds {address}",
            f"{address} is recorded as maybe in guest {guest}: `pcipass recover` or the "
            "same command again settles it",
        ) from failure
    _settle(ledger, address, guest, truth, config_kind=kind, config_path=path)
    if truth == wanted:
        return happened
    if pending.ticket is not None:
        limiter.refund(pending.ticket)
    raise OperationFailed(
        failure.subject,
        failure.problem,
        f"guest {guest} does not hold {address}; nothing was changed"
        if wanted
        else f"guest {guest} still holds {address}; it stays assigned to it",
    ) from failure


def settle_interrupted(host: Host, pending: PendingHotplug) -> list[str]:
    """A signal came while the toolstack was being told: the hotplug may or
    may not have happened.  Ask the toolstack under the state lock and record
    the truth (or leave the "maybe" owner when it cannot tell), so the signal
    ends the command with the ledger right; the report says what was found."""
    from pcipass import interrupt
    from pcipass.state.lock import StateLock

    if pending.done is not None:
        return []
    unknown = HotplugUnknown(
        f"guest {pending.toolstack.guest}", "interrupted while the toolstack was told"
    )
    deferred = interrupt.deferred()  # the settling is not cut short by a second signal
    with deferred, StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        try:
            outcome = finish_hotplug(ledger, pending, unknown)
        except PcipassError as error:
            return [f"{pending.address}: {error.remedy or error.problem}"]
    guest = pending.toolstack.guest
    return [f"{pending.address}: {outcome.message} (guest {guest}) before the signal; recorded"]


def owned_hotplug(
    ledger: Ledger,
    toolstack: Toolstack,
    address: PciAddress,
    action: str,
    *,
    config_kind: str,
    config_path: str | None,
) -> LiveOutcome:
    """Hot-plug (or unplug) ``address`` so that the ledger never loses it,
    all under the caller's state lock.  ``config_kind``/``config_path`` are
    what the owner record says once the device is in the guest."""
    pending = begin_hotplug(
        ledger, toolstack, address, action, config_kind=config_kind, config_path=config_path
    )
    return finish_hotplug(ledger, pending, run_hotplug(pending))


def toolstack_for(host: Host, kind: str, path: str, guest: str) -> Toolstack | None:
    """The toolstack to ask about ``guest`` recorded with ``kind`` and ``path``
    (a ledger owner, a journal intent); None: no way to ask."""
    from pcipass.guests.toolstack import Qmp, Virsh, XenCli

    if kind in ("xl", "xm"):
        return XenCli(host, kind, guest)
    if kind == "qemu" and path.startswith("qmp:"):
        shown = path[len("qmp:") :]
        return Qmp.at(host.root, shown, guest, timeout=10.0)
    if kind == "libvirt" and "://" in path:
        from pcipass.guests.toolstack import connected_toolstack

        return connected_toolstack(path, guest)
    if kind == "libvirt":
        uri = "xen:///system" if "/libxl/" in path else "qemu:///system"
        return Virsh(host, uri, guest, xen="/libxl/" in path)
    return None


def toolstack_for_owner(host: Host, owner: OwnerRecord) -> Toolstack | None:
    """The toolstack to ask about an uncertain owner (None: no way to ask)."""
    kind = owner.config_kind[len(UNCERTAIN_PREFIX) :]
    return toolstack_for(host, kind, owner.config_path or "", owner.guest)


def _ask(host: Host, kind: str, path: str, guest: str, address: PciAddress) -> bool | None:
    try:
        toolstack = toolstack_for(host, kind, path, guest)
        return None if toolstack is None else toolstack.holds(address)
    except OperationFailed:
        return None


def finish_live_operation(host: Host, ledger: Ledger, op: OpenOperation) -> list[str] | None:
    """For ``recover`` (and the error path of attach/detach): an open
    ``attach``/``detach --live`` intent whose hotplug *happened* is rolled
    forward, not back: the running guest holds (attach) or no longer holds
    (detach) the device, so the configuration edit recorded with the intent
    is written (its content is among the backups), the owner recorded, the
    intent closed.  Rolling the file back instead would leave a device in a
    guest whose configuration does not list it (or the reverse).

    None when this is not such an intent, or the hotplug did not happen or
    nobody can tell: then the ordinary rollback applies (the file as before,
    the owner "maybe" until the toolstack answers).
    """
    from pcipass.ops.files import redo_file_edits

    intent = op.intent
    address, guest = intent.get("address"), intent.get("guest")
    kind, path = intent.get("config_kind"), intent.get("config")
    if (
        op.kind not in ("attach", "detach")
        or intent.get("live") is not True
        or not all(isinstance(v, str) for v in (address, guest, kind, path))
    ):
        return None
    try:
        device = PciAddress.parse(str(address))
    except PcipassError:
        return None
    wanted = op.kind == "attach"
    if _ask(host, str(kind), str(path), str(guest), device) is not wanted:
        return None
    report = redo_file_edits(host, ledger, op.file_edits)
    if any(line.endswith("left alone") for line in report):
        return None  # cannot finish the file: roll back instead
    _settle(ledger, device, str(guest), wanted, config_kind=str(kind), config_path=str(path))
    ledger.abandon(op.id)
    where = "holds" if wanted else "no longer holds"
    return [f"op {op.id} ({op.kind}): {line}" for line in report] + [
        f"op {op.id} ({op.kind}): completed: guest {guest} {where} {device} (asked {kind})"
    ]


def settle_uncertain(host: Host, ledger: Ledger, *, skip: Collection[str] = ()) -> list[str]:
    """For ``recover``: ask the toolstack about every "maybe in guest G"
    device and record the truth; report each one.  ``skip``: addresses whose
    hotplug is still running (its command settles them)."""
    report: list[str] = []
    for owner in ledger.owners():
        if not owner.uncertain or owner.address in skip:
            continue
        kind = owner.config_kind[len(UNCERTAIN_PREFIX) :]
        try:
            toolstack = toolstack_for_owner(host, owner)
            truth = None if toolstack is None else toolstack.holds(PciAddress.parse(owner.address))
        except OperationFailed:
            truth = None
        if truth is None:
            report.append(
                f"{owner.address}: may be in guest {owner.guest}; the toolstack cannot tell: "
                f"it stays reserved for {owner.guest} (check the guest, then "
                f"`pcipass detach --live {owner.address} {owner.guest}` or attach again)"
            )
            continue
        _settle(
            ledger,
            PciAddress.parse(owner.address),
            owner.guest,
            truth,
            config_kind=kind,
            config_path=owner.config_path,
        )
        where = "is in" if truth else "is not in"
        report.append(f"{owner.address}: {where} guest {owner.guest} (asked {kind}); recorded")
    return report
