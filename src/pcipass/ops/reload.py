"""Reloading driver modules (Procedure 15.3 step 1), and saying what it costs.

The document makes the persistent lines take effect by reloading the
device's driver.  This module plans that reload for a request: which modules
go down and come back (the device's driver; the stub too when it is loaded,
because ``hide=`` / ``ids=`` are module parameters read only when the module
loads), which other functions they take with them (policy/reload.py judges
them), and where every function must end up.  ``hide --persist`` and
``unhide --persist`` use the plan for their advice; ``--reload-driver`` runs
it (:func:`reload_for_persist`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, RefusedError
from pcipass.host import binding
from pcipass.host.binding import StubDriver
from pcipass.host.context import Host
from pcipass.host.inventory import Inventory
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.patterns import lazy
from pcipass.policy.reload import ReloadImpact, reload_advice, reload_findings, reload_impact
from pcipass.policy.verdict import Finding, raise_refusals
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:
    # A protocol only describes a shape for the type checker: at run time a
    # plain base does, and importing typing cost every command ~2 ms (issue #13).
    Protocol = object


@dataclass(frozen=True)
class Module:
    """A loaded driver: its sysfs driver name and the module modprobe knows."""

    driver: str
    module: str


@dataclass
class ReloadPlan:
    """Which modules a reload takes down (in this order) and brings back."""

    unload: list[Module] = field(default_factory=list)
    load: list[Module] = field(default_factory=list)
    impacts: list[ReloadImpact] = field(default_factory=list)
    # Where every function of the reloaded drivers must be bound afterwards.
    expected: dict[PciAddress, str | None] = field(default_factory=dict)
    # Why there is nothing to reload for some targets (builtin, no driver...).
    notes: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return all(i.safe for i in self.impacts)

    def findings(self, *, refusing: bool) -> list[Finding]:
        found: list[Finding] = []
        for impact in self.impacts:
            found += reload_findings(impact, refusing=refusing)
        return found

    def advice(self, *, verb: str = "takes effect") -> list[str]:
        return [reload_advice(i, verb=verb) for i in self.impacts]

    def describe(self) -> list[str]:
        return [f"modprobe -r {m.module}" for m in self.unload] + [
            f"modprobe {m.module}" for m in self.load
        ]


def module_of(host: Host, driver: str) -> Module | None:
    """The loadable module behind a driver, None when it is built in (or unknown).

    ``/sys/bus/pci/drivers/D/module`` names the module; a module absent from
    ``/proc/modules`` is built into the kernel and cannot be reloaded.
    """
    name = host.sysfs.link_name(host.root.pci_driver(driver) / "module")
    if name is None:
        return None
    modules = host.sysfs.read_text(host.root.proc / "modules") or ""
    loaded = {line.split()[0] for line in modules.splitlines() if line.split()}
    if name.replace("-", "_") not in loaded:
        return None
    return Module(driver, name)


def plan_reload(
    host: Host,
    inv: Inventory,
    targets: Sequence[PciAddress],
    stub: StubDriver,
    *,
    hiding: bool,
    owners: dict[PciAddress, str] | None = None,
) -> ReloadPlan:
    """Plan the reload that makes a persistent hide (or unhide) of ``targets`` take effect.

    Hiding: each target's own driver goes down and comes back; the stub's
    configuration is read when the stub loads, so a loaded stub is reloaded
    too (unloaded after the driver, loaded first by the install/softdep line).
    Giving back: the stub is reloaded (it drops what its new configuration no
    longer names) and the targets' original drivers probe them.
    """
    by = inv.by_address()
    plan = ReloadPlan()
    drivers: list[str] = []
    for address in targets:
        info = by.get(address)
        driver = info.device.driver if info is not None else None
        if hiding and driver is not None and driver not in STUB_DRIVERS:
            if driver not in drivers:
                drivers.append(driver)
        elif hiding and driver is None:
            plan.notes.append(f"{address} has no driver: nothing to reload for it")
    if hiding and not drivers:
        return plan  # every target is on a stub already (or has no driver): nothing to reload
    drivers.append(stub.driver)
    for driver in drivers:
        if not binding.driver_loaded(host, driver):
            continue  # nothing is bound to a driver that is not there
        module = module_of(host, driver)
        if module is None:
            plan.notes.append(f"{driver} is built into the kernel: only a reboot reloads it")
            continue
        plan.unload.append(module)
        plan.impacts.append(reload_impact(driver, targets, inv, owners=owners))
    # Bring back in reverse: the stub first (it must claim the targets before
    # their driver probes them), then the drivers.
    plan.load = list(reversed(plan.unload))
    reloaded = {m.driver for m in plan.unload}
    for info in inv.devices:
        if info.device.driver in reloaded and info.address not in targets:
            plan.expected[info.address] = info.device.driver
    return plan


def checked_reload(
    host: Host,
    inv: Inventory,
    targets: Sequence[PciAddress],
    stub: StubDriver,
    *,
    hiding: bool,
) -> ReloadPlan:
    """The reload ``--reload-driver`` asked for, refused when it is not safe.

    PP001 names every other function of the driver the host uses (the
    document's host: 0000:05:00.0 carries the default route); PP101 every one
    a guest holds.  Nothing is touched before this returns.
    """
    plan = plan_reload(host, inv, targets, stub, hiding=hiding)
    raise_refusals(plan.findings(refusing=True), "--reload-driver")
    if not plan.unload and plan.notes:
        raise RefusedError(
            "--reload-driver",
            "nothing can be reloaded: " + ("; ".join(plan.notes) or "no module drives these"),
            "use --now (per-device rebind through sysfs) or reboot",
            rule="PP010",
        )
    return plan


# --- running it (inside one transaction: ops/hide.py) --------------------------------

# A module name as modprobe takes it; anything else in a journal was not written by pcipass.
_MODULE_NAME = lazy(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ModuleStep:
    """One ``modprobe`` of the reload: a transaction step (ops/transaction.py)
    with nothing to journal for undo: the intent's ``modules`` list is what
    rollback and ``recover`` reload (:func:`ensure_loaded`)."""

    describe: str
    action: Callable[[], None]
    undo: Mapping[str, object] | None = None


def _modprobe(host: Host, argv: list[str]) -> None:
    host.runner.run(argv).check()


def reload_steps(host: Host, plan: ReloadPlan) -> list[ModuleStep]:
    """``modprobe -r`` each module (driver first, then the stub), then
    ``modprobe`` them back (the stub first, with its new ``hide=``/``ids=``)."""
    steps = [
        ModuleStep(
            f"modprobe -r {m.module}",
            functools.partial(_modprobe, host, ["modprobe", "-r", m.module]),
        )
        for m in plan.unload
    ]
    steps += [
        ModuleStep(
            f"modprobe {m.module}", functools.partial(_modprobe, host, ["modprobe", m.module])
        )
        for m in plan.load
    ]
    return steps


def verify_reload(host: Host, expected: Mapping[PciAddress, str | None]) -> None:
    """Every function of the reloaded drivers is bound where it must be, or the
    reload failed (and the transaction rolls back)."""
    wrong = [
        f"{address} is on {binding.current_driver(host, address) or 'no driver'}, "
        f"expected {driver or 'no driver'}"
        for address, driver in sorted(expected.items())
        if binding.current_driver(host, address) != driver
    ]
    if wrong:
        raise OperationFailed(
            "--reload-driver",
            "after the reload " + "; ".join(wrong),
            "use --now (per-device rebind through sysfs) or reboot",
        )


def modules_json(plan: ReloadPlan) -> list[str]:
    """The intent's record: modules that must be loaded again if the command dies."""
    return [m.module for m in plan.load]


def valid_modules(modules: object) -> list[str]:
    """A journal's ``modules`` record, validated as data (module names only)."""
    if not isinstance(modules, list) or not all(
        isinstance(m, str) and _MODULE_NAME.match(m) for m in modules
    ):
        raise RefusedError(
            "journal",
            f"modules {modules!r} are not module names; pcipass did not write this record",
            "inspect the state database (pcipass status)",
        )
    return [str(m) for m in modules]


def ensure_loaded(host: Host, modules: object) -> list[str]:
    """Load every recorded module that is not loaded (rollback, ``recover``):
    the reload's undo is "reload again".  Returns what was loaded."""
    modules = valid_modules(modules)
    loaded: list[str] = []
    present = {
        line.split()[0].replace("-", "_")
        for line in (host.sysfs.read_text(host.root.proc / "modules") or "").splitlines()
        if line.split()
    }
    for module in modules:
        if module.replace("-", "_") not in present:
            _modprobe(host, ["modprobe", module])
            loaded.append(module)
    return loaded


class StepRunner(Protocol):
    """The transaction (ops/transaction.py): runs steps, journalling their undo."""

    def run(self, steps: Sequence[ModuleStep]) -> None: ...


def run_reload(
    txn: StepRunner,
    host: Host,
    plan: ReloadPlan,
    targets: Mapping[PciAddress, str | None],
    *,
    probe: Sequence[PciAddress] = (),
) -> list[str]:
    """Unload, load, (probe the given-back devices), verify: a failure raises
    and the caller's transaction rolls everything back.  ``targets`` says
    where each requested device must end up (the stub when hiding, its own
    driver when giving back); every other function of the reloaded drivers
    must be back where it was.  Returns the steps run."""
    steps = reload_steps(host, plan) + [
        ModuleStep(
            f"echo {address} > /sys/bus/pci/drivers_probe",
            functools.partial(binding.probe, host, address),
        )
        for address in probe
    ]
    txn.run(steps)
    verify_reload(host, {**plan.expected, **targets})
    return [s.describe for s in steps]


def reload_devices(
    todo: Sequence[PciAddress], targets: Sequence[PciAddress], plan: ReloadPlan | None
) -> list[PciAddress]:
    """The devices a transaction saves the state of: the per-device rebinds,
    plus, for a reload, the targets and every function of the reloaded drivers."""
    devices = list(todo)
    if plan is not None and plan.unload:
        devices += [a for a in [*targets, *plan.expected] if a not in devices]
    return devices


# --- giving back (``unhide --persist --reload-driver``) -------------------------------


@dataclass(frozen=True)
class GiveBack:
    """What reloading the stub must do for the devices ``unhide`` gives back."""

    # Devices on the stub now: probed after the stub comes back without them.
    probe: list[PciAddress]
    # Where each must end: its host driver from the ledger (None: any driver
    # but a stub, the kernel's choice, as at boot).
    expected: dict[PciAddress, str | None]
    # ``driver_override`` writes and module loads that run before the reload.
    before: list[ModuleStep]


def _clear_override(host: Host, address: PciAddress) -> None:
    binding.set_override(host, address, None)


def plan_give_back(
    host: Host,
    targets: Sequence[PciAddress],
    stub: StubDriver,
    originals: Mapping[PciAddress, str | None],
) -> GiveBack:
    """The stub drops a device only if nothing else pins it there: a
    ``driver_override`` naming the stub (``hide --now``) would make the
    reloaded stub claim it again, so it is cleared first (journalled: undo
    writes the stub back).  The host driver must be loaded for the probe to
    find it (a boot-time hide may have left it unloaded)."""
    give = GiveBack([], {}, [])
    for address in targets:
        if binding.current_driver(host, address) != stub.driver:
            continue
        give.probe.append(address)
        original = originals.get(address)
        give.expected[address] = original
        if binding.has_override(host, address) and binding.read_override(host, address):
            give.before.append(
                ModuleStep(
                    f"echo '' > /sys/bus/pci/devices/{address}/driver_override",
                    functools.partial(_clear_override, host, address),
                    {
                        "op": "override",
                        "address": str(address),
                        "value": binding.read_override(host, address),
                    },
                )
            )
        if (
            original is not None
            and _MODULE_NAME.match(original)
            and not binding.driver_loaded(host, original)
        ):
            give.before.append(
                ModuleStep(
                    f"modprobe {original}",
                    functools.partial(_modprobe, host, ["modprobe", original]),
                )
            )
    return give


def verify_given_back(host: Host, expected: Mapping[PciAddress, str | None]) -> None:
    """A device whose host driver the ledger does not know must at least have
    left the stub (the kernel chose its driver, as a boot would)."""
    wrong = []
    for address, original in sorted(expected.items()):
        now = binding.current_driver(host, address)
        if original is None and now in STUB_DRIVERS:
            wrong.append(f"{address} is still on {now}")
        elif original is not None and now != original:
            wrong.append(f"{address} is on {now or 'no driver'}, expected {original}")
    if wrong:
        raise OperationFailed(
            "--reload-driver",
            "after the reload " + "; ".join(wrong),
            "use --now (per-device rebind through sysfs) or reboot",
        )


def run_give_back(txn: StepRunner, host: Host, plan: ReloadPlan, give: GiveBack) -> list[str]:
    """Clear the overrides, reload the stub with its new configuration (it no
    longer names the devices), probe them so their host driver takes them,
    verify every function: the stub's others stay, the devices are back."""
    txn.run(give.before)
    ran = run_reload(txn, host, plan, {}, probe=give.probe)
    verify_given_back(host, give.expected)
    return [s.describe for s in give.before] + ran
