"""``recover`` of an interrupted ``attach``/``detach --connect URI``.

Kept apart from :mod:`pcipass.ops.libvirt_conn` (which builds on attach's
rules) so that ``recover`` reaches it without importing the attach path;
the connection helpers both use live here.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, PcipassError, UsageError
from pcipass.guests.libvirt_xml import parse_domain_xml
from pcipass.guests.toolstack import libvirt_module
from pcipass.host.context import Host
from pcipass.state.ledger import Ledger, OpenOperation

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

# libvirt's test driver runs inside this process and talks to no daemon: the
# one kind of connection that is safe while pcipass works on another root.
_IN_PROCESS_SCHEME = "test:"


def check_uri(host: Host, uri: str) -> None:
    if str(host.root.prefix) != "/" and not uri.startswith(_IN_PROCESS_SCHEME):
        raise UsageError(
            f"--connect {uri}",
            f"pcipass works on the root {host.root.prefix}, but this connection reaches the "
            "libvirt of the machine pcipass runs on",
            "leave out --root, or edit the image's domain files without --connect",
        )


def open_connection(uri: str) -> tuple[Any, Any]:
    libvirt = libvirt_module()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as error:
        raise OperationFailed(
            uri,
            f"cannot connect: {error.get_error_message()}",
            "is libvirtd running, and may this user use it?",
        ) from error
    return libvirt, conn


def recover_connect_operation(host: Host, ledger: Ledger, op: OpenOperation) -> list[str] | None:
    """For ``recover``: an open ``attach``/``detach --connect`` intent.

    libvirt is asked what it holds (the running domain for ``--live``, the
    persistent definition otherwise): if the change is there, the operation
    is finished (the definition made to agree, the owner recorded); if not,
    it is rolled back (the definition put back, the owner as before).  None
    when libvirt cannot be reached: the ordinary rollback then applies.
    """
    intent = op.intent
    address, guest, uri = intent.get("address"), intent.get("guest"), intent.get("config")
    if (
        intent.get("connect") is not True
        or op.kind not in ("attach", "detach")
        or not all(isinstance(v, str) for v in (address, guest, uri))
    ):
        return None
    try:
        device = PciAddress.parse(str(address))
        check_uri(host, str(uri))
        libvirt, conn = open_connection(str(uri))
    except PcipassError:
        return None
    try:
        return _settle_connect(
            ledger, op, libvirt=libvirt, conn=conn, address=device, guest=str(guest), uri=str(uri)
        )
    except (libvirt.libvirtError, PcipassError):
        return None
    finally:
        conn.close()


def _settle_connect(
    ledger: Ledger,
    op: OpenOperation,
    *,
    libvirt: Any,
    conn: Any,
    address: PciAddress,
    guest: str,
    uri: str,
) -> list[str]:
    dom = conn.lookupByName(guest)
    shown = f"{uri} domain {guest}"
    persistent = bool(dom.isPersistent())
    definition = parse_domain_xml(
        str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)).encode(), shown
    )
    defined = any(d.covers(address) for d in definition.devices())
    if op.intent.get("live") is True:
        running = parse_domain_xml(str(dom.XMLDesc(0)).encode(), shown)
        holds = bool(dom.isActive()) and any(d.covers(address) for d in running.devices())
    else:
        holds = defined
    wanted = op.kind == "attach"
    finished = holds == wanted
    # The definition agrees with the outcome: the device listed iff the guest has it.
    listed = wanted if finished else not wanted
    if persistent and defined != listed:
        edited = (
            definition.with_device_added(address)
            if listed
            else definition.with_device_removed(address)
        )
        conn.defineXML(edited.decode())
    owner = ledger.owner(address)
    if listed:
        ledger.claim(address, guest, config_kind="libvirt", config_path=uri)
    elif owner is not None and owner.guest == guest:
        ledger.release(address, guest)
    ledger.abandon(op.id)
    state = "completed" if finished else "rolled back"
    where = "holds" if listed else "does not hold"
    return [f"op {op.id} ({op.kind}): {state}: {shown} {where} {address} (asked libvirt)"]
