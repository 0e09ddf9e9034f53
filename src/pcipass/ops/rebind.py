"""Runtime hide and unhide: the sysfs steps, their undo records, and their plans.

Validate every device first, then act, then verify (libvirt virhostdev).
Each step carries the data that undoes it; ops/transaction.py journals it
after it happened and, on any failure or signal, puts every device back as
it was (:func:`reconcile`), so no device is left driverless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, RefusedError
from pcipass.host import binding
from pcipass.host.binding import StubDriver
from pcipass.host.context import Host
from pcipass.host.inventory import Inventory
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.policy.verdict import Finding, Severity, raise_refusals
from pcipass.record import dataclass, field
from pcipass.state.ledger import HiddenRecord, Ledger

Undo = dict[str, object]


@dataclass
class Step:
    describe: str  # "echo 0000:09:00.0 > /sys/bus/pci/drivers/bnx2/unbind"
    action: Callable[[], None]
    undo: Undo | None  # None: nothing to undo (a check, a module load)


@dataclass(frozen=True)
class DeviceOutcome:
    """What ``hide --now``/``unhide --now`` did to one device."""

    address: PciAddress
    driver: str | None  # bound now
    original_driver: str | None  # the host driver (hide) / given back to (unhide)
    changed: bool

    def to_json(self) -> dict[str, object]:
        return {
            "address": str(self.address),
            "driver": self.driver,
            "original_driver": self.original_driver,
            "changed": self.changed,
        }

    def render(self, verb: str) -> str:
        if not self.changed:
            already = "hidden" if verb == "hide" else "given back"
            return f"{self.address}: already {already} (driver {self.driver or 'none'}); no change"
        if verb == "hide":
            return (
                f"{self.address}: hidden now (driver {self.driver}, "
                f"was {self.original_driver or 'none'})"
            )
        return f"{self.address}: given back now (driver {self.driver or 'none'})"


@dataclass
class RebindResult:
    done: list[DeviceOutcome] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "devices": [d.to_json() for d in self.done],
            "steps": self.steps,
            "findings": [f.to_json() for f in self.findings],
        }


def device_state(host: Host, address: PciAddress) -> dict[str, object]:
    """What must be true again after a rollback: driver, override, pciback slot."""
    return {
        "driver": binding.current_driver(host, address),
        "override": binding.read_override(host, address),
        "slot": binding.pciback_has_slot(host, address),
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
    """How a step reads in ``--dry-run`` and the journal (it writes nothing)."""
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


# --- plans (decided under the state lock by ops/hide.py) ---------------------------


@dataclass
class HideNowPlan:
    stub: StubDriver
    todo: list[PciAddress]
    originals: dict[PciAddress, str | None]
    result: RebindResult


def plan_hide_now(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    inv: Inventory,
    *,
    dry_run: bool,
    release_console: bool = False,
) -> HideNowPlan:
    """Check every rule, then list the devices that still need to move to the stub."""
    from pcipass.ops.assignability import assignability_findings

    findings = assignability_findings(host, addresses, inv=inv, release_console=release_console)
    raise_refusals(findings, ", ".join(str(a) for a in addresses))
    stub = binding.stub_for(host, backend)
    result = RebindResult(
        findings=[f for f in findings if f.severity is not Severity.REFUSE], dry_run=dry_run
    )
    by_address = inv.by_address()
    todo = [a for a in addresses if by_address[a].device.driver != stub.driver]
    for address in addresses:
        if address not in todo:
            result.done.append(DeviceOutcome(address, stub.driver, None, changed=False))
    originals = {a: binding.current_driver(host, a) for a in todo}
    if dry_run:
        if todo and not binding.driver_loaded(host, stub.driver):
            result.steps.append(f"modprobe {stub.module}")
        for address in todo:
            result.steps.extend(s.describe for s in hide_steps(host, address, stub))
    return HideNowPlan(stub, todo, originals, result)


def ensure_stub_loaded(host: Host, stub: StubDriver) -> None:
    if not binding.driver_loaded(host, stub.driver):
        binding.load_module(host, stub.module)
        if not binding.driver_loaded(host, stub.driver):
            raise OperationFailed(
                stub.module,
                f"modprobe succeeded but driver {stub.driver} "
                "did not appear in /sys/bus/pci/drivers",
                "is this kernel built with it? (a Xen dom0 for pciback)",
            )


@dataclass
class UnhideNowPlan:
    todo: list[tuple[PciAddress, str | None]]
    result: RebindResult


def plan_unhide_now(
    host: Host, ledger: Ledger, addresses: Sequence[PciAddress], *, dry_run: bool
) -> UnhideNowPlan:
    """Refuse a guest's device (PP101, read under the lock), list what is on a stub now.

    Only a device bound to a stub now (or left driverless by a hide) is given
    back: a device hidden only at boot (``how == "persist"``) and still on its
    own driver is not touched.
    """
    result = RebindResult(dry_run=dry_run)
    todo: list[tuple[PciAddress, str | None]] = []
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
        record: HiddenRecord | None = ledger.get_hidden(address)
        driver = binding.current_driver(host, address)
        runtime_hidden = driver in STUB_DRIVERS or (
            driver is None and record is not None and record.how in ("now", "both")
        )
        if not runtime_hidden:
            result.done.append(DeviceOutcome(address, driver, driver, changed=False))
            continue
        todo.append((address, record.original_driver if record else None))
    if dry_run:
        for address, original in todo:
            result.steps.extend(s.describe for s in unhide_steps(host, address, original))
    return UnhideNowPlan(todo, result)
