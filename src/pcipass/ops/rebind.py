"""Runtime hide and unhide: a journalled transaction of sysfs steps.

Validate every device first, then act, then verify, and roll back in reverse
order on any failure (libvirt virhostdev).  Each step is written to the
ledger's journal *after* it happened, with the data that undoes it, so that
``pcipass recover`` in another process (after a crash or a kill) can undo
exactly the steps that happened: no device is left driverless (a
device left with no driver is lost to host and guest alike until someone
rebinds it by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, PcipassError, RefusedError
from pcipass.host import binding
from pcipass.host.binding import StubDriver
from pcipass.host.context import Host
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.ops.inventory import inventory
from pcipass.policy.verdict import Finding, Severity, raise_refusals
from pcipass.state.ledger import Ledger, OperationHandle
from pcipass.state.lock import StateLock

Undo = dict[str, object]


@dataclass
class Step:
    describe: str  # "echo 0000:09:00.0 > /sys/bus/pci/drivers/bnx2/unbind"
    action: Callable[[], None]
    undo: Undo | None  # None: nothing to undo (a check, a module load)


@dataclass
class RebindResult:
    done: list[dict[str, object]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "devices": self.done,
            "steps": self.steps,
            "findings": [f.to_json() for f in self.findings],
        }


def apply_undo(host: Host, undo: Undo) -> None:
    """Interpret one journalled undo record (used by rollback and recover)."""
    action = str(undo["op"])
    address = PciAddress.parse(str(undo["address"]))
    if action == "override":
        value = undo.get("value")
        binding.set_override(host, address, None if value is None else str(value))
    elif action == "remove_slot":
        if binding.pciback_has_slot(host, address) or not host.sysfs.exists(
            host.root.pci_driver("pciback") / "slots"
        ):
            binding.pciback_slot(host, address, add=False)
    elif action == "new_slot":
        binding.pciback_slot(host, address, add=True)
    elif action == "bind":
        driver = str(undo["driver"])
        current = binding.current_driver(host, address)
        if current == driver:
            return
        if current in STUB_DRIVERS:
            # The next step happened but was not journalled (killed in between).
            binding.unbind(host, address, str(current))
        elif current is not None:
            raise OperationFailed(
                str(address),
                f"expected {driver} or no driver, found {current}",
                "someone else rebound it; check by hand",
            )
        if binding.read_override(host, address) not in (None, driver):
            # With driver_override set only that driver may bind (pci_match_device);
            # the override's own undo record restores its previous value after this.
            binding.set_override(host, address, None)
        if binding.driver_loaded(host, driver):
            binding.bind(host, address, driver)
        else:
            binding.probe(host, address)
    elif action == "unbind":
        driver = str(undo["driver"])
        if binding.current_driver(host, address) == driver:
            binding.unbind(host, address, driver)
    elif action == "unbind_any":
        current = binding.current_driver(host, address)
        if current is not None:
            binding.unbind(host, address, current)
    elif action == "probe":
        if binding.current_driver(host, address) is None:
            binding.probe(host, address)
    else:
        raise OperationFailed("journal", f"unknown undo action {action!r}")


def _write_text(host: Host, path_name: str, value: str) -> str:
    return f"echo {value} > {path_name}"


def hide_steps(host: Host, address: PciAddress, stub: StubDriver) -> list[Step]:
    """The steps that move ``address`` from its driver to ``stub``."""
    root = host.root
    original = binding.current_driver(host, address)
    steps: list[Step] = []
    use_override = binding.has_override(host, address)
    if use_override:
        previous = binding.read_override(host, address)
        steps.append(
            Step(
                _write_text(host, f"/sys/bus/pci/devices/{address}/driver_override", stub.driver),
                lambda: binding.set_override(host, address, stub.driver),
                {"op": "override", "address": str(address), "value": previous},
            )
        )
    elif stub.backend is Backend.PCIBACK:
        steps.append(
            Step(
                _write_text(host, "/sys/bus/pci/drivers/pciback/new_slot", str(address)),
                lambda: binding.pciback_slot(host, address, add=True),
                {"op": "remove_slot", "address": str(address)},
            )
        )
    else:
        raise OperationFailed(
            str(address),
            "this kernel has no driver_override; vfio-pci cannot be given a single device safely",
            "use a kernel >= 3.16, or the pciback backend on Xen",
        )
    if original is not None:
        steps.append(
            Step(
                _write_text(host, f"/sys/bus/pci/drivers/{original}/unbind", str(address)),
                lambda: binding.unbind(host, address, original),
                {"op": "bind", "address": str(address), "driver": original},
            )
        )
    if use_override:
        steps.append(
            Step(
                _write_text(host, "/sys/bus/pci/drivers_probe", str(address)),
                lambda: binding.probe(host, address),
                {"op": "unbind", "address": str(address), "driver": stub.driver},
            )
        )
    else:
        steps.append(
            Step(
                _write_text(host, f"/sys/bus/pci/drivers/{stub.driver}/bind", str(address)),
                lambda: binding.bind(host, address, stub.driver),
                {"op": "unbind", "address": str(address), "driver": stub.driver},
            )
        )
    steps.append(
        Step(
            f"check {root.host_path(root.pci_device(address))}/driver -> {stub.driver}",
            lambda: binding.verify_driver(host, address, stub.driver),
            None,
        )
    )
    return steps


def unhide_steps(host: Host, address: PciAddress, original: str | None) -> list[Step]:
    current = binding.current_driver(host, address)
    steps: list[Step] = []
    if current is not None:
        steps.append(
            Step(
                _write_text(host, f"/sys/bus/pci/drivers/{current}/unbind", str(address)),
                lambda: binding.unbind(host, address, current),
                {"op": "bind", "address": str(address), "driver": current},
            )
        )
    if binding.has_override(host, address):
        previous = binding.read_override(host, address)
        if previous is not None:
            steps.append(
                Step(
                    _write_text(host, f"/sys/bus/pci/devices/{address}/driver_override", "''"),
                    lambda: binding.set_override(host, address, None),
                    {"op": "override", "address": str(address), "value": previous},
                )
            )
    elif binding.pciback_has_slot(host, address):
        steps.append(
            Step(
                _write_text(host, "/sys/bus/pci/drivers/pciback/remove_slot", str(address)),
                lambda: binding.pciback_slot(host, address, add=False),
                {"op": "new_slot", "address": str(address)},
            )
        )
    if original is not None and binding.driver_loaded(host, original):
        steps.append(
            Step(
                _write_text(host, f"/sys/bus/pci/drivers/{original}/bind", str(address)),
                lambda: binding.bind(host, address, original),
                {"op": "unbind", "address": str(address), "driver": original},
            )
        )
        steps.append(
            Step(
                f"check driver -> {original}",
                lambda: binding.verify_driver(host, address, original),
                None,
            )
        )
    else:
        # The original driver is unknown or not loaded: let the kernel choose
        # (drivers_probe), as a reboot would.
        steps.append(
            Step(
                _write_text(host, "/sys/bus/pci/drivers_probe", str(address)),
                lambda: binding.probe(host, address),
                {"op": "unbind_any", "address": str(address)},
            )
        )
    return steps


def device_state(host: Host, address: PciAddress) -> dict[str, object]:
    """What must be true again after a rollback: driver, override, pciback slot."""
    return {
        "driver": binding.current_driver(host, address),
        "override": binding.read_override(host, address),
        "slot": binding.pciback_has_slot(host, address),
    }


def reconcile(host: Host, address: PciAddress, before: dict[str, object]) -> bool:
    """Put a device back into ``before`` whatever partial state it is in.

    The journal records a step after it happened, so a process killed between
    a write and its record leaves one unrecorded step; comparing with the
    state saved in the intent catches it.  Returns True if anything changed.
    """
    want_driver = before.get("driver")
    want_override = before.get("override")
    changed = False
    current = binding.current_driver(host, address)
    if current is not None and current != want_driver:
        binding.unbind(host, address, current)
        changed = True
    if binding.has_override(host, address) and binding.read_override(host, address) != (
        want_override
    ):
        binding.set_override(host, address, None if want_override is None else str(want_override))
        changed = True
    has_slot = binding.pciback_has_slot(host, address)
    if has_slot != bool(before.get("slot")):
        binding.pciback_slot(host, address, add=not has_slot)
        changed = True
    if want_driver is not None and binding.current_driver(host, address) is None:
        binding.bind(host, address, str(want_driver))
        changed = True
    binding.verify_driver(host, address, None if want_driver is None else str(want_driver))
    return changed


def _run_steps(
    host: Host, op: OperationHandle | None, steps: Sequence[Step], done: list[Step]
) -> None:
    for step in steps:
        step.action()
        done.append(step)
        if op is not None and step.undo is not None:
            op.step(step.describe, step.undo)


def _rollback(host: Host, done: list[Step]) -> list[str]:
    """Undo completed steps in reverse; return what could not be undone."""
    failures = []
    for step in reversed(done):
        if step.undo is None:
            continue
        try:
            apply_undo(host, step.undo)
        except PcipassError as error:
            failures.append(f"{step.describe}: {error}")
    return failures


def _ensure_stub_loaded(host: Host, stub: StubDriver) -> None:
    if not binding.driver_loaded(host, stub.driver):
        binding.load_module(host, stub.module)
        if not binding.driver_loaded(host, stub.driver):
            raise OperationFailed(
                stub.module,
                f"modprobe succeeded but driver {stub.driver} "
                "did not appear in /sys/bus/pci/drivers",
                "is this kernel built with it? (a Xen dom0 for pciback)",
            )


def hide_now(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    *,
    dry_run: bool = False,
    how: str = "now",
) -> RebindResult:
    """Bind every device to the stub, all or nothing."""
    from pcipass.host.identity import identity_of
    from pcipass.host.topology import read_config
    from pcipass.ops.assignability import assignability_findings

    inv = inventory(host)
    findings = assignability_findings(host, addresses, inv=inv)
    raise_refusals(findings, ", ".join(str(a) for a in addresses))
    stub = binding.stub_for(host, backend)
    result = RebindResult(
        findings=[f for f in findings if f.severity is not Severity.REFUSE], dry_run=dry_run
    )
    by_address = inv.by_address()
    todo = [a for a in addresses if by_address[a].device.driver != stub.driver]
    for address in addresses:
        if address not in todo:
            result.done.append(
                {
                    "address": str(address),
                    "driver": stub.driver,
                    "original_driver": None,
                    "changed": False,
                }
            )
    if dry_run:
        if not binding.driver_loaded(host, stub.driver):
            result.steps.append(f"modprobe {stub.module}")
        for address in todo:
            result.steps.extend(s.describe for s in hide_steps(host, address, stub))
        return result
    with StateLock(host.root):
        ledger = Ledger.open(host.root, clock=host.clock)
        try:
            _ensure_stub_loaded(host, stub)
            originals = {a: binding.current_driver(host, a) for a in todo}
            op = ledger.begin(
                "hide",
                {
                    "devices": [str(a) for a in todo],
                    "before": {str(a): device_state(host, a) for a in todo},
                    "stub": stub.driver,
                },
            )
            done: list[Step] = []
            try:
                for address in todo:
                    steps = hide_steps(host, address, stub)
                    _run_steps(host, op, steps, done)
                    result.steps.extend(s.describe for s in steps)
            except PcipassError as error:
                failures = _rollback(host, done)
                op.finish()
                if failures:
                    raise OperationFailed(
                        str(error.subject),
                        f"{error.problem}; rollback incomplete: {'; '.join(failures)}",
                        "run pcipass recover",
                    ) from error
                raise OperationFailed(
                    error.subject,
                    error.problem,
                    "nothing was changed: every device is back on its original driver",
                    rolled_back=True,
                ) from error
            for address in todo:
                info = by_address[address]
                config = read_config(host, address)
                ledger.record_hidden(
                    address,
                    identity=identity_of(info.device, None if config is None else config.dsn),
                    stub_driver=stub.driver,
                    original_driver=originals[address],
                    how=how,
                )
                result.done.append(
                    {
                        "address": str(address),
                        "driver": stub.driver,
                        "original_driver": originals[address],
                        "changed": True,
                    }
                )
            op.finish()
        finally:
            ledger.close()
    return result


def unhide_now(
    host: Host, addresses: Sequence[PciAddress], *, dry_run: bool = False, forget: bool = True
) -> RebindResult:
    """Give devices back to their original drivers, all or nothing."""
    result = RebindResult(dry_run=dry_run)
    ledger = Ledger.open(host.root, readonly=dry_run, clock=host.clock)
    try:
        plan: list[tuple[PciAddress, str | None]] = []
        for address in addresses:
            owner = ledger.owner(address)
            if owner is not None and owner.uncertain:
                raise RefusedError(
                    str(address),
                    f"may be in guest {owner.guest}: a live hotplug into it did not finish "
                    "and its outcome is unknown",
                    f"pcipass recover asks the toolstack; or pcipass detach --live {address} "
                    f"{owner.guest}",
                    rule="PP101",
                )
            if owner is not None:
                raise RefusedError(
                    str(address),
                    f"is assigned to guest {owner.guest}",
                    f"detach it first: pcipass detach {address} {owner.guest}",
                    rule="PP101",
                )
            record = ledger.get_hidden(address)
            driver = binding.current_driver(host, address)
            if driver not in STUB_DRIVERS and record is None:
                result.done.append({"address": str(address), "driver": driver, "changed": False})
                continue
            plan.append((address, record.original_driver if record else None))
        if dry_run:
            for address, original in plan:
                result.steps.extend(s.describe for s in unhide_steps(host, address, original))
            return result
        with StateLock(host.root):
            op = ledger.begin(
                "unhide",
                {
                    "devices": [str(a) for a, _ in plan],
                    "before": {str(a): device_state(host, a) for a, _ in plan},
                },
            )
            done: list[Step] = []
            try:
                for address, original in plan:
                    steps = unhide_steps(host, address, original)
                    _run_steps(host, op, steps, done)
                    result.steps.extend(s.describe for s in steps)
            except PcipassError as error:
                failures = _rollback(host, done)
                op.finish()
                raise OperationFailed(
                    error.subject,
                    error.problem,
                    "rolled back: devices stay hidden"
                    if not failures
                    else "rollback incomplete: run pcipass recover",
                    rolled_back=not failures,
                ) from error
            for address, original in plan:
                if forget:
                    ledger.forget_hidden(address)
                result.done.append(
                    {
                        "address": str(address),
                        "driver": binding.current_driver(host, address),
                        "original_driver": original,
                        "changed": True,
                    }
                )
            op.finish()
    finally:
        ledger.close()
    return result


def _undo_ownership(ledger: Ledger, kind: str, intent: dict[str, object]) -> list[str]:
    """attach claims ownership last and detach releases it before finishing:
    a run killed after that step leaves the claim out of step with the
    configuration file that recover has just restored."""
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


def recover(host: Host) -> list[str]:
    """Undo every interrupted operation's completed steps, newest first."""
    report: list[str] = []
    with StateLock(host.root):
        ledger = Ledger.open(host.root, clock=host.clock)
        try:
            for op in sorted(ledger.open_operations(), key=lambda o: o.id, reverse=True):
                for step in reversed(op.steps):
                    apply_undo(host, dict(step.undo))
                    report.append(f"op {op.id} ({op.kind}): undid {step.name}")
                before = op.intent.get("before")
                if isinstance(before, dict):
                    for text, state in before.items():
                        if isinstance(state, dict) and reconcile(
                            host, PciAddress.parse(text), state
                        ):
                            report.append(f"op {op.id} ({op.kind}): {text} put back as it was")
                from pcipass.ops.files import undo_file_edits

                report.extend(undo_file_edits(host, ledger, op.file_edits))
                report.extend(_undo_ownership(ledger, op.kind, op.intent))
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
            from pcipass.ops.live import settle_uncertain

            report.extend(settle_uncertain(host, ledger))
        finally:
            ledger.close()
    return report
