"""``hide`` and ``unhide``: ``--now`` and ``--persist`` as ONE transaction.

Under the state lock, every decision is taken on what the ledger and the
tree say *now* (PP101 ownership, hidden records, the rules), both halves are
planned before anything changes (the modprobe edit is computed, so an
administrator's own ``install bnx2 ...`` line refuses the whole command
before the device moves), then the sysfs steps and the file edits are applied
under one journal intent and rolled back together on any failure or signal
(ops/transaction.py).  A repeat finds nothing to do, writes nothing and
says "no change".
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.device import slot_functions
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.ops.console import plan_release
from pcipass.ops.inventory import inventory
from pcipass.ops.persist import PersistResult, plan_persist, unhide_backend
from pcipass.ops.rebind import (
    DeviceOutcome,
    RebindResult,
    ensure_stub_loaded,
    hide_steps,
    plan_hide_now,
    plan_unhide_now,
    unhide_steps,
)
from pcipass.ops.reload import (
    checked_reload,
    modules_json,
    plan_give_back,
    reload_devices,
    run_give_back,
    run_reload,
)
from pcipass.ops.reset_method import plan_reset_methods
from pcipass.ops.transaction import ROLLBACK_ON, Transaction
from pcipass.policy.verdict import raise_refusals
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger
from pcipass.state.lock import StateLock


@dataclass
class HideOutcome:
    """What one ``hide``/``unhide`` command did (or would do with ``--dry-run``)."""

    verb: str  # "hide" / "unhide"
    now: RebindResult | None = None
    persist: PersistResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            (self.now is not None and any(d.changed for d in self.now.done))
            or (self.persist is not None and self.persist.edits)
        )

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {}
        if self.now is not None:
            result["now"] = self.now.to_json()
        if self.persist is not None:
            result["persist"] = self.persist.to_json()
        return result

    def render_lines(self) -> list[str]:
        lines: list[str] = []
        if self.now is not None:
            lines += [f.render() for f in self.now.findings]
            if self.now.dry_run:
                lines += ["would run:"] + [f"  {s}" for s in self.now.steps]
            lines += [d.render(self.verb) for d in self.now.done]
        if self.persist is not None:
            if self.now is not None:
                # --now already printed the device findings.
                shown = set(lines)
                self.persist.findings = [
                    f for f in self.persist.findings if f.render() not in shown
                ]
                self.persist.notes = [n for n in self.persist.notes if "add --now" not in n]
            lines += self.persist.render_lines()
        return lines


def with_groups(host: Host, addresses: Sequence[PciAddress]) -> list[PciAddress]:
    """``hide --group``: add every non-bridge member of each device's IOMMU group."""
    by = inventory(host).by_address()
    result = list(addresses)
    for address in addresses:
        info = by.get(address)
        if info is None:
            continue
        for member in info.group_members:
            if member not in result and not by[member].device.is_bridge:
                result.append(member)
    return result


def with_functions(host: Host, addresses: Sequence[PciAddress]) -> list[PciAddress]:
    """``hide``/``unhide --all-functions``: add every other function of each
    device's slot (a GPU's HDMI audio, USB and UCSI functions); bridges never."""
    by = inventory(host).by_address()
    result = list(addresses)
    for address in addresses:
        for function in slot_functions(host.sysfs, address):
            if function not in result and function in by and not by[function].device.is_bridge:
                result.append(function)
    return result


def _record_hidden(
    host: Host,
    ledger: Ledger,
    addresses: Sequence[PciAddress],
    stub: str,
    originals: dict[PciAddress, str | None],
    *,
    now: bool,
    persist: bool,
) -> None:
    from pcipass.host.identity import current_identity

    by = inventory(host).by_address()
    for address in addresses:
        record = ledger.get_hidden(address)
        was = record.how if record is not None else None
        runtime = now or was in ("now", "both")
        boot = persist or was in ("persist", "both")
        how = "both" if runtime and boot else ("now" if runtime else "persist")
        original = record.original_driver if record else originals.get(address)
        if original is None and address not in originals:
            original = by[address].device.driver if address in by else None
            if original in STUB_DRIVERS:
                original = None
        ledger.record_hidden(
            address,
            identity=current_identity(host, by[address].device),
            stub_driver=stub,
            original_driver=original,
            how=how,
        )


def hide(
    host: Host,
    addresses: Sequence[PciAddress],
    backend: Backend,
    *,
    now: bool,
    persist: bool,
    platform: str | None = None,
    dry_run: bool = False,
    reload_driver: bool = False,
    release_console: bool = False,
    reset_method: Sequence[str] | None = None,
) -> HideOutcome:
    """Hide devices now and/or at every boot: all of it, or nothing.

    ``release_console`` (with ``now``): a boot GPU's framebuffer driver and
    fbcon are released first, in the same transaction (ops/console.py, PP120).
    ``reset_method`` (with ``now``): the kernel's reset methods to use for
    every device, checked and rolled back with the rest (ops/reset_method.py).

    ``reload_driver`` (with ``persist`` only): make the boot configuration take
    effect now by the document's method, reloading the devices' driver, in the
    same transaction (ops/reload.py; refused when another function of that
    driver is host-used)."""
    outcome = HideOutcome("hide")
    if dry_run:
        inv = inventory(host)
        if now:
            outcome.now = plan_hide_now(
                host, addresses, backend, inv, dry_run=True, release_console=release_console
            ).result
            if release_console:
                steps = plan_release(host, addresses).steps(host)
                outcome.now.steps[:0] = [s.describe for s in steps]
            if reset_method:
                resets = plan_reset_methods(host, addresses, list(reset_method))
                raise_refusals(resets.findings, ", ".join(str(a) for a in addresses))
                outcome.now.steps += [s.describe for s in resets.steps(host)]
        if persist:
            outcome.persist = plan_persist(
                host, addresses, backend, platform, inv, add=True, dry_run=True
            )
        if reload_driver and outcome.persist is not None:
            stub = binding.stub_for(host, backend)
            preview = checked_reload(host, inv, addresses, stub, hiding=True)
            outcome.persist.notes += [f"would run: {s}" for s in preview.describe()]
        return outcome
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        inv = inventory(host)  # read under the lock: decisions see the current state
        plan = (
            plan_hide_now(
                host, addresses, backend, inv, dry_run=False, release_console=release_console
            )
            if now
            else None
        )
        stub = binding.stub_for(host, backend)
        if persist:
            outcome.persist = plan_persist(
                host, addresses, backend, platform, inv, add=True, dry_run=False
            )
        reload = checked_reload(host, inv, addresses, stub, hiding=True) if reload_driver else None
        reloading = reload is not None and bool(reload.unload)
        outcome.now = plan.result if plan is not None else None
        todo = plan.todo if plan is not None else []
        console = plan_release(host, todo) if release_console else None
        resets = plan_reset_methods(host, addresses, list(reset_method or []))
        if reset_method:
            raise_refusals(resets.findings, ", ".join(str(a) for a in addresses))
        edits = outcome.persist.edits if outcome.persist is not None else []
        records_stale = _records_need_update(
            ledger, addresses, now=now or reloading, persist=persist
        )
        if not todo and not edits and not records_stale and not reloading and not resets.previous:
            return outcome
        if todo:
            ensure_stub_loaded(host, stub)  # a module load is not undone (modprobe -r is not ours)
        txn = Transaction.begin(
            host,
            ledger,
            "hide",
            # A reload touches every function of the reloaded drivers: all are saved.
            sysfs_devices=reload_devices(todo, addresses, reload),
            record_devices=addresses,
            extra={
                "stub": stub.driver,
                "files": [e.display for e in edits],
                **({"modules": modules_json(reload)} if reload is not None and reloading else {}),
                **({"console": console.to_json()} if console else {}),
                **({"reset_methods": resets.to_json()} if resets.previous else {}),
            },
        )
        try:
            if console:
                steps = console.steps(host)
                txn.run(steps)
                assert outcome.now is not None
                outcome.now.steps.extend(s.describe for s in steps)
            if resets.previous:
                steps = resets.steps(host)
                txn.run(steps)
                if outcome.now is not None:
                    outcome.now.steps.extend(s.describe for s in steps)
            for address in todo:
                steps = hide_steps(host, address, stub)
                txn.run(steps)
                assert outcome.now is not None
                outcome.now.steps.extend(s.describe for s in steps)
            txn.edit_files(edits)
            originals = dict(plan.originals) if plan is not None else {}
            if reload is not None and reloading:
                originals = {a: binding.current_driver(host, a) for a in addresses}
                ran = run_reload(txn, host, reload, {a: stub.driver for a in addresses})
                assert outcome.persist is not None
                outcome.persist.notes = [n for n in outcome.persist.notes if "reload" not in n]
                outcome.persist.notes += [f"ran: {s}" for s in ran] + [
                    f"every function of {', '.join(m.driver for m in reload.unload)} is back "
                    f"where it was; {', '.join(str(a) for a in addresses)} on {stub.driver}"
                ]
            _record_hidden(
                host,
                ledger,
                addresses,
                stub.driver,
                originals,
                now=now or reloading,
                persist=persist,
            )
            txn.commit()
        except ROLLBACK_ON as error:
            raise txn.fail(
                error, kept="every device is back on its original driver, every file as it was"
            ) from error
        if plan is not None and outcome.now is not None:
            for address in todo:
                outcome.now.done.append(
                    DeviceOutcome(address, stub.driver, plan.originals[address], changed=True)
                )
    return outcome


def _records_need_update(
    ledger: Ledger, addresses: Sequence[PciAddress], *, now: bool, persist: bool
) -> bool:
    """A hide that changes nothing on the host may still owe the ledger a record."""
    for address in addresses:
        record = ledger.get_hidden(address)
        if record is None:
            return True
        if (now and record.how == "persist") or (persist and record.how == "now"):
            return True
    return False


def unhide(
    host: Host,
    addresses: Sequence[PciAddress],
    *,
    now: bool,
    persist: bool,
    platform: str | None = None,
    dry_run: bool = False,
    reload_driver: bool = False,
) -> HideOutcome:
    """Give devices back now and/or at boot: all of it, or nothing.

    ``reload_driver`` (with ``persist`` only): the stub's module is reloaded
    with its new configuration, which no longer names the devices, and their
    host driver probes them (ops/reload.py; refused with PP001/PP101 when
    another function on the stub is host-used or held by a guest)."""
    outcome = HideOutcome("unhide")
    if dry_run:
        with Ledger.open(host.root, readonly=True) as view:
            if now:
                outcome.now = plan_unhide_now(host, view, addresses, dry_run=True).result
            if persist:
                backend = unhide_backend(host, view, addresses)
                inv = inventory(host)
                outcome.persist = plan_persist(
                    host, addresses, backend, platform, inv, add=False, dry_run=True
                )
                if reload_driver:
                    stub = binding.stub_for(host, backend)
                    preview = checked_reload(host, inv, addresses, stub, hiding=False)
                    outcome.persist.notes += [f"would run: {s}" for s in preview.describe()]
        return outcome
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        # Ownership and hidden records are read here, under the lock: an attach
        # that held the lock until a moment ago is seen (PP101).
        plan = plan_unhide_now(host, ledger, addresses, dry_run=False) if now else None
        reload = None
        if persist:
            if plan is None:
                plan_unhide_now(host, ledger, addresses, dry_run=True)  # PP101 for --persist too
            backend = unhide_backend(host, ledger, addresses)
            inv = inventory(host)
            outcome.persist = plan_persist(
                host, addresses, backend, platform, inv, add=False, dry_run=False
            )
            if reload_driver:
                reload = checked_reload(
                    host, inv, addresses, binding.stub_for(host, backend), hiding=False
                )
        reloading = reload is not None and bool(reload.unload)
        outcome.now = plan.result if plan is not None else None
        todo = plan.todo if plan is not None else []
        edits = outcome.persist.edits if outcome.persist is not None else []
        # A reload gives the devices back at runtime too: both records go.
        forget = _records_to_forget(ledger, addresses, now=now or reloading, persist=persist)
        if not todo and not edits and not forget and not reloading:
            return outcome
        txn = Transaction.begin(
            host,
            ledger,
            "unhide",
            # A reload touches every function of the stub: all are saved.
            sysfs_devices=reload_devices([a for a, _ in todo], addresses, reload),
            record_devices=addresses,
            extra={
                "files": [e.display for e in edits],
                **({"modules": modules_json(reload)} if reload is not None and reloading else {}),
            },
        )
        try:
            for address, original in todo:
                steps = unhide_steps(host, address, original)
                txn.run(steps)
                assert outcome.now is not None
                outcome.now.steps.extend(s.describe for s in steps)
            txn.edit_files(edits)
            if reload is not None and reloading:
                assert outcome.persist is not None
                originals = {a: _original(ledger, a) for a in addresses}
                give = plan_give_back(host, addresses, binding.stub_for(host, backend), originals)
                ran = run_give_back(txn, host, reload, give)
                outcome.persist.notes = [n for n in outcome.persist.notes if "reload" not in n]
                outcome.persist.notes += [f"ran: {s}" for s in ran] + [
                    f"every other function of {', '.join(m.driver for m in reload.unload)} is "
                    "back where it was; "
                    + ", ".join(
                        f"{a} on {binding.current_driver(host, a) or 'no driver'}"
                        for a in addresses
                    )
                ]
            for address, how in forget.items():
                if how is None:
                    ledger.forget_hidden(address)
                else:
                    ledger.set_hidden_how(address, how)
            txn.commit()
        except ROLLBACK_ON as error:
            raise txn.fail(error, kept="rolled back: devices stay hidden") from error
        if outcome.now is not None:
            for address, original in todo:
                outcome.now.done.append(
                    DeviceOutcome(
                        address, binding.current_driver(host, address), original, changed=True
                    )
                )
    return outcome


def _original(ledger: Ledger, address: PciAddress) -> str | None:
    record = ledger.get_hidden(address)
    return record.original_driver if record is not None else None


def _records_to_forget(
    ledger: Ledger, addresses: Sequence[PciAddress], *, now: bool, persist: bool
) -> dict[PciAddress, str | None]:
    """address -> the ``how`` left after this unhide (None: forget the record)."""
    result: dict[PciAddress, str | None] = {}
    for address in addresses:
        record = ledger.get_hidden(address)
        if record is None:
            continue
        runtime = record.how in ("now", "both") and not now
        boot = record.how in ("persist", "both") and not persist
        left = "both" if runtime and boot else ("now" if runtime else ("persist" if boot else None))
        if left != record.how:
            result[address] = left
    return result


def hide_now(
    host: Host, addresses: Sequence[PciAddress], backend: Backend, *, dry_run: bool = False
) -> RebindResult:
    """``hide --now`` alone: bind every device to the stub, all or nothing."""
    outcome = hide(host, addresses, backend, now=True, persist=False, dry_run=dry_run)
    assert outcome.now is not None
    return outcome.now


def unhide_now(
    host: Host, addresses: Sequence[PciAddress], *, dry_run: bool = False
) -> RebindResult:
    """``unhide --now`` alone: give devices back to their drivers, all or nothing."""
    outcome = unhide(host, addresses, now=True, persist=False, dry_run=dry_run)
    assert outcome.now is not None
    return outcome.now
