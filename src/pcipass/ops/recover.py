"""``pcipass recover``: roll back every operation a killed process left open.

Each open journal intent is first validated as data (ops/transaction.py:
addresses parsed, sysfs actions from the fixed set, file paths normalised and
among the files pcipass edits); an intent that fails is refused, naming the
record, and nothing of it is acted on.  Then the same undo as an in-process
rollback runs: devices are reconciled with the state saved in the intent,
file edits undone, hidden records and ownership put back, and temporary
files pcipass left next to edited files removed.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipass.host.context import Host
from pcipass.ops.transaction import undo_operation
from pcipass.state.ledger import FileEditRecord, Ledger, OpenOperation
from pcipass.state.lock import StateLock, operation_in_progress


def _undo_ownership(ledger: Ledger, kind: str, intent: Mapping[str, object]) -> list[str]:
    """attach claims ownership last and detach releases it before finishing:
    a run killed after that step leaves the claim out of step with the
    configuration file that recover has just restored.  ``attach
    --all-functions`` claimed each of its ``functions``."""
    functions = intent.get("functions")
    if kind == "attach" and isinstance(functions, list) and len(functions) > 1:
        lines: list[str] = []
        single = {key: value for key, value in intent.items() if key != "functions"}
        for function in functions:
            if isinstance(function, str):
                lines += _undo_ownership(ledger, kind, {**single, "address": function})
        return lines
    address, guest = intent.get("address"), intent.get("guest")
    if (
        kind not in ("attach", "detach")
        or not isinstance(address, str)
        or not isinstance(guest, str)
    ):
        return []
    owner = ledger.owner(address)
    if owner is not None and owner.uncertain:
        # A live hotplug may have happened: recover asks the toolstack
        # (ops.live.settle_uncertain) instead of guessing.
        return []
    config = str(intent.get("config") or "")
    recorded_kind = intent.get("config_kind")
    config_kind = (
        recorded_kind
        if isinstance(recorded_kind, str)
        else "libvirt"
        if config.endswith(".xml")
        else ("xl" if config.endswith(".cfg") else "xm")
    )
    if intent.get("live") is True and (owner is None or owner.guest == guest):
        # The running guest may hold the device or not, whatever the file
        # says now: mark it "maybe in guest" and let the toolstack decide.
        from pcipass.state.ledger import UNCERTAIN_PREFIX

        ledger.claim(
            address, guest, config_kind=UNCERTAIN_PREFIX + config_kind, config_path=config or None
        )
        return []
    if kind == "attach" and owner is not None and owner.guest == guest:
        ledger.release(address, guest)
        return [f"{address}: ownership by {guest} released (attach rolled back)"]
    if kind == "detach" and owner is None:
        ledger.claim(address, guest, config_kind=config_kind, config_path=config or None)
        return [f"{address}: ownership by {guest} restored (detach rolled back)"]
    return []


def recover_operation(host: Host, ledger: Ledger, op: OpenOperation) -> list[str]:
    """Settle one open intent (see the module docstring); its report."""
    from pcipass.ops.live import finish_live_operation

    if operation_in_progress(host.root, op.id):
        # A live hotplug waiting for its toolstack without the state lock.
        return [f"op {op.id} ({op.kind}): in progress (pid {op.pid}); left alone"]
    from pcipass.ops.connect_recover import recover_connect_operation

    finished = recover_connect_operation(host, ledger, op)
    if finished is None:
        finished = finish_live_operation(host, ledger, op)
    if finished is not None:
        return finished
    edits: list[FileEditRecord] = list(op.file_edits)
    result = undo_operation(
        host,
        ledger,
        op_id=op.id,
        intent=op.intent,
        undos=[dict(s.undo) for s in op.steps],
        edits=edits,
    )
    report = [f"op {op.id} ({op.kind}): {line}" for line in result.undone]
    report += [f"op {op.id} ({op.kind}): could not undo {line}" for line in result.failures]
    if result.failures:
        return report
    report += _undo_ownership(ledger, op.kind, op.intent)
    ledger.abandon(op.id)
    if op.kind.startswith("safe-"):
        # Live hotplug is not undone behind the guest's back: say where it stands.
        devices = ", ".join(str(d) for d in op.intent.get("devices", []) or [])
        guest = op.intent.get("guest")
        report.append(
            f"op {op.id} ({op.kind}): interrupted; {devices or 'no devices'} stay "
            f"reserved for {guest} but may be detached from it: see "
            f"`xl pci-list {guest}`, then `pcipass attach --live BDF {guest}`"
        )
    else:
        report.append(f"op {op.id} ({op.kind}): rolled back")
    return report


def recover(host: Host) -> list[str]:
    """Undo every interrupted operation, newest first; stop at the first refused record."""
    from pcipass import interrupt

    report: list[str] = []
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        busy = set()
        for op in sorted(ledger.open_operations(), key=lambda o: o.id, reverse=True):
            if operation_in_progress(host.root, op.id):
                busy.add(str(op.intent.get("address")))
            # A signal while one operation is undone waits until it is consistent.
            with interrupt.deferred():
                report.extend(recover_operation(host, ledger, op))
        # Temporary files a killed write left (.NAME.XXXX.pcipass-tmp), in every
        # directory pcipass writes and next to every file the ledger recorded.
        from pcipass.ops.files import remove_leftover_temp_files

        report.extend(
            f"{path}: removed (left by an interrupted write)"
            for path in remove_leftover_temp_files(host, ledger)
        )
        # Owners marked "maybe in guest G" by a live hotplug whose outcome was lost:
        # ask the toolstack and record the truth (ops/live.py).
        from pcipass.ops.live import settle_uncertain

        report.extend(settle_uncertain(host, ledger, skip=busy))
    return report


def rebuild_ledger(host: Host) -> list[str]:
    """``recover --rebuild-ledger``: a new ledger from what the host shows.

    The old database is kept as ``state.db.lost-N``.  Owners come from the
    guest configurations (every single-function entry: one guest per device,
    the first file found wins and a conflict is reported); hidden records from
    the devices bound to a stub now and the ones the modprobe files hide at
    boot.  The original driver of a device on a stub is not knowable: unhide
    then lets the kernel choose (drivers_probe), as a reboot would.
    """
    from pcipass.errors import RefusedError
    from pcipass.host.identity import current_identity
    from pcipass.host.stubs import VFIO_DRIVER, XEN_DRIVER
    from pcipass.ops.guests import scan_guests
    from pcipass.ops.inventory import inventory
    from pcipass.persist.modprobe import collect_modprobe_files, read_persistent_hides

    report: list[str] = []
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock, rebuild=True) as ledger:
        scan = scan_guests(host)
        for guest_file in scan.guests:
            for device in guest_file.config.devices():
                if device.address is None:
                    continue
                try:
                    ledger.claim(
                        device.address,
                        guest_file.guest_name,
                        config_kind=str(guest_file.kind),
                        config_path=guest_file.display,
                    )
                except RefusedError as error:
                    report.append(f"{device.address}: {error.problem} ({guest_file.display})")
                    continue
                report.append(
                    f"{device.address}: owned by {guest_file.guest_name} ({guest_file.display})"
                )
        report += [f"could not read: {p}" for p in scan.problems]
        inv = inventory(host)
        at_boot = read_persistent_hides(collect_modprobe_files(host.root)).hidden()
        for info in inv.devices:
            runtime = info.device.driver in (VFIO_DRIVER, XEN_DRIVER)  # what pcipass binds
            boot = info.address in at_boot
            if not runtime and not boot:
                continue
            how = "both" if runtime and boot else ("now" if runtime else "persist")
            stub = (
                info.device.driver if runtime else ("pciback" if host.is_xen_dom0 else "vfio-pci")
            )
            ledger.record_hidden(
                info.address,
                identity=current_identity(host, info.device),
                stub_driver=str(stub),
                original_driver=None if runtime else info.device.driver,
                how=how,
            )
            report.append(f"{info.address}: hidden ({how}) on {stub}")
    report.append("ledger rebuilt; the old database is kept as state.db.lost-N")
    return report
