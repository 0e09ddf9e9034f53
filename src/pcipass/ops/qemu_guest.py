"""Live attach/detach for a plain QEMU guest through its QMP socket.

A guest started by hand or by a script (``qemu-system-x86_64 -name l2 -qmp
unix:/run/l2.qmp,server,nowait ...``) has no configuration file: pcipass
finds the running process by its ``-name`` in /proc, reads its QMP socket
from the command line, and hot-plugs a ``vfio-pci`` device (ACPI hotplug in
the guest: acpiphp, rule PP008).  Ownership (PP101) and the hotplug limiter
(PP007) work as for every other guest.
"""

from __future__ import annotations

import contextlib
import os

from pcipass.address import PciAddress
from pcipass.errors import AddressError, OperationFailed, RefusedError
from pcipass.guests.toolstack import Qmp
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.interrupt import Interrupted
from pcipass.ops.attach_rom import RomChoice
from pcipass.ops.live import begin_hotplug, finish_hotplug, run_hotplug, settle_interrupted
from pcipass.policy.verdict import Finding, raise_refusals
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger
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


@dataclass
class QemuLiveResult:
    action: str
    address: str
    guest: str
    qmp: str
    device_id: str | None
    outcome: str = ""  # "hot-plugged", "unplugged", "already attached", "not attached"
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "address": self.address,
            "guest": self.guest,
            "qmp": self.qmp,
            "device_id": self.device_id,
            "outcome": self.outcome,
            "notes": self.notes,
        }

    def render_lines(self) -> list[str]:
        if self.outcome in ("hot-plugged", "unplugged"):
            where = "into" if self.action == "attach" else "from"
            head = f"{self.address}: {self.outcome} {where} QEMU guest {self.guest}"
        else:
            where = "to" if self.action == "attach" else "from"
            head = f"{self.address}: {self.outcome} {where} QEMU guest {self.guest}; nothing to do"
        return [f"{head} (QMP {self.qmp})", *self.notes]


def _check_locked(
    host: Host, ledger: Ledger, qemu: QemuGuest, address: PciAddress, action: str
) -> None:
    """PP101 (and PP002 for attach), decided under the state lock."""
    owner = ledger.owner(address)
    if owner is not None and owner.guest != qemu.name and action == "detach":
        raise RefusedError(
            str(address),
            f"is assigned to guest {owner.guest}, not {qemu.name}",
            f"name the owner: pcipass detach {address} {owner.guest}",
            rule="PP101",
        )
    if action == "detach":
        return
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


def plain_qemu(host: Host, name: str) -> QemuGuest | None:
    """The running QEMU ``name`` when no configuration file names that guest
    (a file wins: its toolstack hot-plugs); None when a file does.  No file
    and no such QEMU: GuestNotFoundError, listing where pcipass looked."""
    from pcipass.errors import GuestNotFoundError
    from pcipass.ops.guests import find_guest

    try:
        find_guest(host, name)
    except GuestNotFoundError:
        qemu = find_qemu(host, name)
        if qemu is None:
            raise
        return qemu
    return None


def qemu_toolstack(host: Host, qemu: QemuGuest, *, timeout: float = 30.0) -> Qmp:
    qmp_path = qemu.qmp_path
    if qmp_path is None:
        raise OperationFailed(
            f"QEMU {qemu.name} (pid {qemu.pid})",
            "has no QMP socket (-qmp unix:PATH,server,nowait): pcipass cannot hot-plug into it",
            "start it with a QMP socket, or use libvirt",
        )
    toolstack = Qmp.at(host.root, qmp_path, qemu.name, timeout=timeout)
    if toolstack.opener is not None:
        # Refuse a socket behind a link out of the root now, before the
        # ledger records anything; every connection resolves it again.  A
        # missing socket is reported by the connection, as before.
        with contextlib.suppress(OSError):
            os.close(toolstack.opener())
    return toolstack


def qemu_live(
    host: Host,
    qemu: QemuGuest,
    address: PciAddress,
    action: str,
    *,
    timeout: float = 30.0,
    rom: RomChoice | None = None,
) -> QemuLiveResult:
    """Hot-plug (``attach``) or unplug (``detach``) ``address`` through QMP.

    ``rom`` (attach --rom/--rom-bar, checked by ops/attach_rom.py): vfio-pci's
    ``romfile``/``rombar`` properties of the device_add."""
    toolstack = qemu_toolstack(host, qemu, timeout=timeout)
    result = QemuLiveResult(action, str(address), qemu.name, toolstack.shown_path, None)
    if rom is not None:
        raise_refusals(rom.findings, str(address))
        toolstack.rom_properties = rom.qemu_properties()
        result.notes += [f.render() for f in rom.findings]
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        _check_locked(host, ledger, qemu, address, action)
        pending = begin_hotplug(
            ledger,
            toolstack,
            address,
            action,
            config_kind="qemu",
            config_path=toolstack.reference(),
        )
    # QMP waits up to ``timeout`` for the guest (DEVICE_DELETED comes when the
    # guest ejects the device): without the state lock, so other pcipass
    # commands do not wait behind it.  The ledger already blocks the device:
    # for attach it is "maybe in guest G", for detach it stays owned.
    try:
        failure = run_hotplug(pending)
    except KeyboardInterrupt as interrupted:  # Ctrl-C, or SIGTERM (interrupt.Interrupted)
        found = settle_interrupted(host, pending)
        if isinstance(interrupted, Interrupted):
            interrupted.undone += found
        raise
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        outcome = finish_hotplug(ledger, pending, failure)
    result.outcome = outcome.message
    result.device_id = toolstack.device_id
    if action == "attach" and outcome.happened:
        result.notes.append(
            "the guest sees the device only with ACPI hotplug (acpiphp): run "
            "`pcipass guest-setup` inside it once (rule PP008)"
        )
    return result
