"""attach/detach through a libvirt connection (``--connect URI``, libvirt-python).

For a domain libvirt manages, the domain's XML comes from libvirtd, not from
a file: pcipass reads the persistent definition (``XMLDesc(INACTIVE)``),
applies the same rules as to a file (:func:`pcipass.ops.attach.attach_findings`:
PP002, PP101, PP004, PP005, PP006, PP003's shutdown-save check) and hands the
change back the way libvirt wants it: ``defineXML`` of the edited definition
(the exact bytes pcipass checked, so libvirt's own validation runs on them),
and for ``--live`` the toolstack layer's libvirt-python hotplug
(:class:`pcipass.guests.toolstack.LibvirtDomainLive`), owned by the ledger
from the moment it may have happened (:mod:`pcipass.ops.live`).

Rules of the connection itself:

* PP101 looks at every domain of the connection (persistent definition and,
  for a running domain, the live one), as it looks at every file;
* a transient domain has no persistent definition: ``defineXML`` would make
  it persistent behind the user's back, so only ``--live`` is accepted;
* when ``defineXML`` fails after a live attach, the live attach is undone
  (or, if that fails too, the device stays owned by the guest).
"""

from __future__ import annotations

from pathlib import Path

from pcipass import interrupt
from pcipass.address import PciAddress
from pcipass.errors import (
    GuestNotFoundError,
    OperationFailed,
    PcipassError,
    RefusedError,
)
from pcipass.guests.libvirt_xml import parse_domain_xml
from pcipass.guests.toolstack import LibvirtDomainLive
from pcipass.host.context import Host
from pcipass.interrupt import Interrupted
from pcipass.ops.attach import AttachResult, attach_findings, refusal
from pcipass.ops.connect_recover import check_uri as _check_uri
from pcipass.ops.connect_recover import open_connection as _open
from pcipass.ops.guests import GuestFile
from pcipass.ops.live import owned_hotplug
from pcipass.persist.atomic import FileEdit
from pcipass.record import dataclass
from pcipass.state.ledger import Ledger
from pcipass.state.lock import StateLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any


def _lookup(libvirt: Any, conn: Any, uri: str, guest: str) -> Any:
    try:
        return conn.lookupByName(guest)
    except libvirt.libvirtError as error:
        raise GuestNotFoundError(guest, [uri]) from error


def _listed_elsewhere(
    libvirt: Any, conn: Any, uri: str, guest: str, address: PciAddress
) -> list[tuple[str, str, str]]:
    """(domain, where, entry) for every other domain of the connection whose
    persistent or live definition lists ``address`` (PP101)."""
    found: list[tuple[str, str, str]] = []
    for dom in conn.listAllDomains(0):
        name = str(dom.name())
        if name == guest:
            continue
        flags = [libvirt.VIR_DOMAIN_XML_INACTIVE] if dom.isPersistent() else []
        if dom.isActive():
            flags.append(0)
        for flag in flags:
            shown = f"{uri} domain {name}" + (" (running)" if flag == 0 else "")
            try:
                domain = parse_domain_xml(str(dom.XMLDesc(flag)).encode(), shown)
            except PcipassError:
                continue
            entries = [d.spec_text for d in domain.devices() if d.covers(address)]
            if entries:
                found.append((name, shown, entries[0]))
                break
    return found


@dataclass
class _Plan:
    """What --connect will hand libvirt: the definition before and after,
    and the domain's live toolstack."""

    toolstack: LibvirtDomainLive
    before: bytes
    after: bytes


def connect_attach(
    host: Host,
    address: PciAddress,
    guest: str,
    uri: str,
    *,
    action: str,
    live: bool = False,
    accept_pv_dma_risk: bool = False,
    dry_run: bool = False,
) -> AttachResult:
    """attach/detach ``address`` to/from ``guest`` of the libvirt connection ``uri``."""
    _check_uri(host, uri)
    libvirt, conn = _open(uri)
    try:
        display = f"{uri} domain {guest}"
        result = AttachResult(action, str(address), guest, display, "libvirt", dry_run=dry_run)
        plan = _plan(
            host,
            libvirt,
            conn,
            address,
            result=result,
            uri=uri,
            live=live,
            accept_pv_dma_risk=accept_pv_dma_risk,
        )
        if live:
            result.commands.append(plan.toolstack.describe(address, action))
        if not dry_run:
            _apply(host, libvirt, conn, address, plan=plan, result=result, live=live)
        return result
    finally:
        conn.close()


def _plan(
    host: Host,
    libvirt: Any,
    conn: Any,
    address: PciAddress,
    *,
    result: AttachResult,
    uri: str,
    live: bool,
    accept_pv_dma_risk: bool,
) -> _Plan:
    """Read the domain, apply every rule, compute the new definition."""
    guest, action, display = result.guest, result.action, result.config
    dom = _lookup(libvirt, conn, uri, guest)
    persistent = bool(dom.isPersistent())
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0).encode()
    config = parse_domain_xml(before, display)
    if not persistent and not live:
        raise RefusedError(
            f"guest {guest}",
            f"is a transient domain of {uri}: it has no persistent definition to edit, "
            "and defining one would make it persistent",
            f"use --live to {action} it in the running domain only",
        )
    guest_file = GuestFile(config, Path("/"), display, before)
    if action == "attach":
        extra = _listed_elsewhere(libvirt, conn, uri, guest, address)
        result.findings = _checked(
            host, guest_file, guest, address, extra=extra, accept_pv_dma_risk=accept_pv_dma_risk
        )
        after = config.with_device_added(address)
    else:
        after = config.with_device_removed(address)
    if not persistent:
        after = before  # the running domain only (--live)
        result.notes.append(f"transient domain: only the running {guest} changes")
    result.diff = FileEdit(Path("/"), display, before, after).diff()
    result.changed = after != before
    toolstack = LibvirtDomainLive(libvirt, uri, dom, guest, xen=config.hypervisor == "xen")
    return _Plan(toolstack, before, after)


def _apply(
    host: Host,
    libvirt: Any,
    conn: Any,
    address: PciAddress,
    *,
    plan: _Plan,
    result: AttachResult,
    live: bool,
) -> None:
    """One journalled operation under the state lock: PP101 again, the live
    step, defineXML, ownership.  A failure or a signal settles the intent as
    ``recover`` would (:func:`recover_connect_operation`): from what libvirt
    holds, forward or back."""
    from pcipass.ops.attach import settle_after_failure

    guest, action, uri = result.guest, result.action, plan.toolstack.uri
    ids: list[int] = []
    try:
        with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
            _recheck_owner(ledger, address, guest, action)
            intent = {
                "address": str(address),
                "guest": guest,
                "config": uri,
                "config_kind": "libvirt",
                "live": live,
                "connect": True,
            }
            with interrupt.deferred():
                op = ledger.begin(action, intent)
                ids.append(op.id)
            try:
                _live_define_own(
                    libvirt, conn, ledger, address, plan=plan, result=result, live=live
                )
            except PcipassError:
                # Handled: the live step was undone or its owner recorded (_define).
                with interrupt.deferred():
                    op.finish()
                raise
            with interrupt.deferred():
                op.finish()
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        if ids and not isinstance(error, PcipassError):  # a signal, or a bug
            undone = settle_after_failure(host, ids[0])
            if isinstance(error, Interrupted):
                error.undone += undone
        raise


def _live_define_own(
    libvirt: Any,
    conn: Any,
    ledger: Ledger,
    address: PciAddress,
    *,
    plan: _Plan,
    result: AttachResult,
    live: bool,
) -> None:
    """The steps of a --connect operation: live, defineXML, ownership."""
    guest, action, uri = result.guest, result.action, plan.toolstack.uri
    if live:
        result.live = owned_hotplug(
            ledger, plan.toolstack, address, action, config_kind="libvirt", config_path=uri
        ).message
    if plan.after != plan.before:
        _define(
            libvirt,
            conn,
            plan.after,
            toolstack=plan.toolstack,
            ledger=ledger,
            address=address,
            action=action,
            live=live,
        )
    if action == "attach":
        ledger.claim(address, guest, config_kind="libvirt", config_path=uri)
    else:
        owner = ledger.owner(address)
        if owner is not None and owner.guest == guest:
            ledger.release(address, guest)


def _checked(
    host: Host,
    guest_file: GuestFile,
    guest: str,
    address: PciAddress,
    *,
    extra: list[tuple[str, str, str]],
    accept_pv_dma_risk: bool,
) -> list[Any]:
    with Ledger.open(host.root, readonly=True, clock=host.clock) as ledger:
        owner = ledger.owner(address)
        record = ledger.get_hidden(address)
    findings, blocking = attach_findings(
        host,
        guest_file,
        guest,
        address,
        owner=owner.guest if owner else None,
        stub=record.stub_driver if record else None,
        listed_elsewhere=extra,
        accept_pv_dma_risk=accept_pv_dma_risk,
    )
    if blocking:
        raise refusal(address, blocking, findings)
    return findings


def _recheck_owner(ledger: Ledger, address: PciAddress, guest: str, action: str) -> None:
    """PP101 again under the lock: another pcipass may have assigned it meanwhile."""
    owner = ledger.owner(address)
    if owner is not None and owner.guest != guest:
        raise RefusedError(
            str(address),
            f"is assigned to guest {owner.guest}; a device belongs to one guest at a time",
            f"detach it first: pcipass detach {address} {owner.guest}",
            rule="PP101",
        )


def _define(
    libvirt: Any,
    conn: Any,
    after: bytes,
    *,
    toolstack: LibvirtDomainLive,
    ledger: Ledger,
    address: PciAddress,
    action: str,
    live: bool,
) -> None:
    """``defineXML`` of the checked definition; on failure undo the live step."""
    guest = toolstack.guest
    try:
        conn.defineXML(after.decode())
    except libvirt.libvirtError as error:
        problem = str(error.get_error_message() or error)
        remedy = "the definition libvirt holds is unchanged"
        if live:
            undo = "detach" if action == "attach" else "attach"
            try:
                owned_hotplug(
                    ledger,
                    toolstack,
                    address,
                    undo,
                    config_kind="libvirt",
                    config_path=toolstack.uri,
                )
                remedy += f"; the live {action} was undone"
            except PcipassError as undo_error:
                remedy += (
                    f"; undoing the live {action} failed ({undo_error.problem}): "
                    f"the ledger keeps what guest {guest} holds"
                )
        raise OperationFailed(f"libvirt define {guest}", problem, remedy) from error
