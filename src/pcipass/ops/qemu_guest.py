"""Live attach/detach for a plain QEMU guest through its QMP socket.

A guest started by hand or by a script (``qemu-system-x86_64 -name l2 -qmp
unix:/run/l2.qmp,server,nowait ...``) has no configuration file: pcipass
finds the running process by its ``-name`` in /proc, reads its QMP socket
from the command line, and hot-plugs a ``vfio-pci`` device (ACPI hotplug in
the guest: acpiphp, rule PP008).  Ownership (PP101) and the hotplug limiter
(PP007) work as for every other guest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pcipass.address import PciAddress
from pcipass.errors import AddressError, OperationFailed, RefusedError
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.policy.verdict import Finding
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import HotplugLimiter
from pcipass.state.lock import StateLock


@dataclass
class QemuGuest:
    name: str
    pid: int
    qmp_path: str | None  # as the host names it; None: QEMU has no QMP socket
    devices: list[str] = field(default_factory=list)  # vfio-pci host= addresses at start


def find_qemu(host: Host, name: str) -> QemuGuest | None:
    """The running QEMU whose ``-name`` is ``name`` (from /proc/PID/cmdline)."""
    from pcipass.guests.qemu_argv import is_qemu, qemu_name, qmp_socket, vfio_hosts

    proc = host.root.proc
    for entry in host.sysfs.list_dir(proc):
        if not entry.isdigit():
            continue
        raw = host.sysfs.read_bytes(proc / entry / "cmdline", 1 << 20)
        argv = [a.decode("utf-8", "replace") for a in (raw or b"").split(b"\0") if a]
        if not is_qemu(argv) or qemu_name(argv) != name:
            continue
        addresses = []
        for text in vfio_hosts(argv):
            try:
                addresses.append(str(PciAddress.parse(text)))
            except AddressError:
                addresses.append(text)
        return QemuGuest(name, int(entry), qmp_socket(argv), sorted(set(addresses)))
    return None


def _device_id(address: PciAddress) -> str:
    return "pcipass-" + str(address).replace(":", "-").replace(".", "-")


def _find_vfio_id(client: object, address: PciAddress) -> str | None:
    """The qdev id of the vfio-pci device holding ``address`` (started with the
    guest or added later): every peripheral's ``host`` property is asked."""
    from pcipass.guests.qmp import QmpClient, QmpError

    assert isinstance(client, QmpClient)
    for child in client.execute("qom-list", {"path": "/machine/peripheral"}):
        if child.get("type") != "child<vfio-pci>":
            continue
        path = f"/machine/peripheral/{child['name']}"
        try:
            text = client.execute("qom-get", {"path": path, "property": "host"})
        except QmpError:
            continue
        try:
            if PciAddress.parse(str(text)) == address:
                return str(child["name"])
        except AddressError:
            continue
    return None


@dataclass
class QemuLiveResult:
    action: str
    address: str
    guest: str
    qmp: str
    device_id: str | None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def qemu_live(
    host: Host, qemu: QemuGuest, address: PciAddress, action: str, *, timeout: float = 30.0
) -> QemuLiveResult:
    """Hot-plug (``attach``) or unplug (``detach``) ``address`` through QMP."""
    from pcipass.guests.qmp import QmpClient

    qmp_path = qemu.qmp_path
    if qmp_path is None:
        raise OperationFailed(
            f"QEMU {qemu.name} (pid {qemu.pid})",
            "has no QMP socket (-qmp unix:PATH,server,nowait): pcipass cannot hot-plug into it",
            "start it with a QMP socket, or use libvirt",
        )
    result = QemuLiveResult(action, str(address), qemu.name, qmp_path, None)
    socket_path = str(host.root.path(qmp_path)) if qmp_path.startswith("/") else qmp_path
    with StateLock(host.root):
        ledger = Ledger.open(host.root, clock=host.clock)
        try:
            owner = ledger.owner(address)
            if action == "attach":
                if owner is not None and owner.guest != qemu.name:
                    raise RefusedError(
                        str(address),
                        f"already assigned to guest {owner.guest}",
                        f"detach it first: pcipass detach {address} {owner.guest}",
                        rule="PP101",
                    )
                driver = binding.current_driver(host, address)
                if driver != "vfio-pci":
                    raise RefusedError(
                        str(address),
                        f"is bound to {driver or 'no driver'}, not "
                        "vfio-pci; a KVM guest can only take a hidden device",
                        f"pcipass hide --now --backend vfio {address}",
                        rule="PP002",
                    )
            HotplugLimiter(ledger).acquire(address, qemu.name, action)
            with QmpClient(socket_path, timeout=timeout) as client:
                if action == "attach":
                    if _find_vfio_id(client, address) is None:
                        ident = _device_id(address)
                        client.execute(
                            "device_add", {"driver": "vfio-pci", "host": str(address), "id": ident}
                        )
                        result.device_id = ident
                    ledger.claim(
                        address, qemu.name, config_kind="qemu", config_path=f"qmp:{qmp_path}"
                    )
                    result.notes.append(
                        "the guest sees the device only with ACPI hotplug (acpiphp): run "
                        "`pcipass guest-setup` inside it once (rule PP008)"
                    )
                else:
                    found = _find_vfio_id(client, address)
                    if found is not None:
                        client.execute("device_del", {"id": found})
                        # The guest must eject it first (ACPI): wait for QEMU to say so.
                        client.wait_event(
                            "DEVICE_DELETED", match={"device": found}, timeout=timeout
                        )
                        result.device_id = found
                    if owner is not None and owner.guest == qemu.name:
                        ledger.release(address, qemu.name)
        finally:
            ledger.close()
    return result
