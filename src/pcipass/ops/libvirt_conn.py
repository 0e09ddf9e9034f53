"""attach/detach through a libvirt connection (``--connect URI``, libvirt-python).

For a domain libvirt manages, the domain's XML comes from libvirtd, not from
a file: pcipass reads the persistent definition (``XMLDesc(INACTIVE)``),
applies every rule to it as to a file, and hands the change back the way
libvirt wants it: ``defineXML`` of the edited definition for the persistent
config (the exact bytes pcipass checked, so libvirt's own validation runs on
them) and ``attachDeviceFlags``/``detachDeviceFlags`` with
``VIR_DOMAIN_AFFECT_LIVE`` for ``--live``.  libvirt's own error text is shown
when it refuses.  Ownership (PP101) and the hotplug limiter (PP007) are
recorded as for every other guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pcipass.address import PciAddress
from pcipass.errors import CommandMissing, GuestNotFoundError, OperationFailed, RefusedError
from pcipass.guests.libvirt_xml import hostdev_xml, parse_domain_xml
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.ops.attach import AttachResult, GuestContext
from pcipass.ops.guests import GuestFile
from pcipass.persist.atomic import FileEdit
from pcipass.policy import guest_rules
from pcipass.policy.verdict import Severity
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import HotplugLimiter
from pcipass.state.lock import StateLock


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as error:
        raise CommandMissing(
            "libvirt-python", "pip install libvirt-python (needs libvirt-dev)"
        ) from error
    # libvirt prints every error on stderr by default; pcipass reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _domain(uri: str, guest: str) -> tuple[Any, Any, Any]:
    libvirt = _libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as error:
        raise OperationFailed(
            uri,
            f"cannot connect: {error.get_error_message()}",
            "is libvirtd running, and may this user use it?",
        ) from error
    try:
        dom = conn.lookupByName(guest)
    except libvirt.libvirtError as error:
        conn.close()
        raise GuestNotFoundError(guest, [uri]) from error
    return libvirt, conn, dom


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
    libvirt, conn, dom = _domain(uri, guest)
    try:
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()
        display = f"{uri} domain {guest}"
        config = parse_domain_xml(before, display)
        result = AttachResult(
            action, str(address), guest, f"{uri} domain {guest}", "libvirt", dry_run=dry_run
        )
        # A GuestFile that no file backs: the rules read only its parsed config.
        guest_file = GuestFile(config, Path("/"), display, before)
        xen = config.hypervisor == "xen"
        ledger = Ledger.open(host.root, readonly=True, clock=host.clock)
        try:
            owner = ledger.owner(address)
            record = ledger.get_hidden(address)
        finally:
            ledger.close()
        if action == "attach":
            findings = guest_rules.hidden_findings(
                address,
                binding.current_driver(host, address),
                None if record is None else record.stub_driver,
                xen=xen,
            )
            context = GuestContext.gather(host)
            findings += context.device_findings(
                guest_file, guest, address, owner.guest if owner else None
            )
            blocking = [f for f in findings if f.severity is Severity.REFUSE]
            pv_dma = next((f for f in findings if f.rule == "PP004"), None)
            if pv_dma is not None and not accept_pv_dma_risk:
                blocking.append(pv_dma)
            if blocking:
                first = blocking[0]
                raise RefusedError(
                    first.subject, first.message, first.remedy, rule=first.rule, findings=blocking
                )
            result.findings = findings
            after = config.with_device_added(address)
        else:
            after = config.with_device_removed(address)
        result.diff = FileEdit(Path("/"), display, before, after).diff()
        result.changed = after != before
        if live:
            result.notes.append(f"live: libvirt {action}DeviceFlags(VIR_DOMAIN_AFFECT_LIVE)")
        if dry_run:
            return result
        device_xml = hostdev_xml(address, "xen" if xen else "vfio", managed=False)
        with StateLock(host.root):
            ledger = Ledger.open(host.root, clock=host.clock)
            try:
                if live:
                    HotplugLimiter(ledger).acquire(address, guest, action)
                    try:
                        if action == "attach":
                            dom.attachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                        else:
                            dom.detachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    except libvirt.libvirtError as error:
                        raise OperationFailed(
                            f"libvirt {action} --live",
                            error.get_error_message(),
                            "the persistent definition was not changed",
                        ) from error
                if after != before:
                    try:
                        conn.defineXML(after.decode())
                    except libvirt.libvirtError as error:
                        raise OperationFailed(
                            f"libvirt define {guest}",
                            error.get_error_message(),
                            "the definition libvirt holds is unchanged",
                        ) from error
                if action == "attach":
                    ledger.claim(address, guest, config_kind="libvirt", config_path=uri)
                elif owner is not None and owner.guest == guest:
                    ledger.release(address, guest)
            finally:
                ledger.close()
        return result
    finally:
        conn.close()
