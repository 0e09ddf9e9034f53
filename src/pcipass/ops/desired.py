"""``plan`` and ``apply``: converge the host on /etc/pcipass/pcipass.toml.

:func:`make_plan` resolves every declared device (pins and identities, rule
PP114) to where it is *this boot*, and compares what the file declares with
the bindings and the ledger: a device not on its stub now, not recorded as
hidden at boot, not owned by its guest, or held by pcipass while declared the
host's is a change; a device pcipass holds that the file does not declare is
drift the other way (PP112, reported, never undone behind the user's back).

:func:`apply` carries the changes out with the existing operations, each one
journalled transaction (ops/hide.py, ops/attach.py): hides first, grouped
so that devices sharing a backend move together, then unhides, then the
guest assignments.  When one step fails, the steps this apply already made
are undone in reverse before the error is reported, so a failed apply leaves
the host as it found it.  Everything is decided before the first step: a
refusal changes nothing.  A second apply finds no change and writes nothing.

``apply --boot`` (the systemd unit of ``boot-install``) only binds the stubs:
each device alone, so one that cannot be found or refuses is left to the host
and logged with the reason while the others are still hidden, and it never
fails (the boot must go on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import PcipassError, RefusedError
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.device import PciDevice, read_all
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.ops.desired_file import DesiredDevice, DesiredState
from pcipass.ops.pins import find_identity
from pcipass.policy.pin_match import RULE as PIN_RULE
from pcipass.policy.verdict import Finding, Severity, refusal_error
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger

DRIFT = "PP112"


@dataclass
class Change:
    kind: str  # hide-now, hide-persist, unhide-now, unhide-persist, attach
    label: str  # @NAME or device.NAME
    address: PciAddress
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "device": self.label,
            "address": str(self.address),
            "detail": self.detail,
        }

    def render(self) -> str:
        return f"{self.kind}: {self.label} ({self.address}): {self.detail}"

    def finding(self, path: str) -> Finding:
        return Finding(
            DRIFT,
            Severity.WARN,
            str(self.address),
            f"{self.label} in {path}: {self.detail}",
            "pcipass plan shows the change; pcipass apply makes it",
        )


@dataclass
class Resolved:
    device: DesiredDevice
    address: PciAddress
    basis: str
    backend: Backend


@dataclass
class DesiredPlan:
    path: str
    resolved: list[Resolved] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    undeclared: list[Finding] = field(default_factory=list)  # held but not declared (PP112)
    refusals: list[Finding] = field(default_factory=list)  # PP114 and the like
    preview: list[str] = field(default_factory=list)  # what the dry runs would do
    done: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # apply --boot: one line per device

    @property
    def in_sync(self) -> bool:
        return not self.changes and not self.undeclared and not self.refusals

    def detailed_exit(self) -> int:
        """``plan --detailed-exitcode``: 0 in sync, 2 drift, 3 refused."""
        if self.refusals:
            return 3
        return 0 if self.in_sync else 2

    def findings(self) -> list[Finding]:
        """For ``check``: every difference as a PP112 warning, plus the refusals."""
        return [c.finding(self.path) for c in self.changes] + self.undeclared + self.refusals

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "devices": [
                {
                    **r.device.to_json(),
                    "address": str(r.address),
                    "basis": r.basis,
                    "backend": str(r.backend),
                }
                for r in self.resolved
            ],
            "changes": [c.to_json() for c in self.changes],
            "undeclared": [f.to_json() for f in self.undeclared],
            "refusals": [f.to_json() for f in self.refusals],
            "preview": self.preview,
            "done": self.done,
            "log": self.log,
            "in_sync": self.in_sync,
        }

    def render_lines(self) -> list[str]:
        lines = [f"{r.device.label}: {r.address} (matched by {r.basis})" for r in self.resolved]
        lines += [f.render() for f in self.refusals]
        lines += [c.render() for c in self.changes]
        lines += [f.render() for f in self.undeclared]
        lines += self.preview
        return lines


def default_backend(host: Host) -> Backend:
    return Backend.PCIBACK if host.is_xen_dom0 else Backend.VFIO


def _resolve(host: Host, plan: DesiredPlan, state: DesiredState, devices: list[PciDevice]) -> None:
    with Ledger.open(host.root, readonly=True) as ledger:
        pins = {p.name: p for p in ledger.pins()}
    seen: dict[PciAddress, str] = {}
    for wanted in state.devices:
        if wanted.match is None:
            record = pins.get(wanted.name)
            if record is None:
                plan.refusals.append(
                    Finding(
                        PIN_RULE,
                        Severity.REFUSE,
                        wanted.label,
                        f"{state.path} names pin {wanted.name}, which does not exist",
                        f"pcipass pin BDF {wanted.name}, or give [device.{wanted.name}.match]",
                    )
                )
                continue
            found = find_identity(host, wanted.name, record.fingerprint, record.twins, devices)
        else:
            found = find_identity(host, wanted.name, wanted.match, 1, devices)
        if found.address is None:
            assert found.finding is not None
            plan.refusals.append(found.finding)
            continue
        address = PciAddress.parse(found.address)
        if address in seen:
            plan.refusals.append(
                Finding(
                    PIN_RULE,
                    Severity.REFUSE,
                    wanted.label,
                    f"names {address}, which {seen[address]} names too",
                    f"each device once in {state.path}",
                )
            )
            continue
        seen[address] = wanted.label
        backend = wanted.backend or default_backend(host)
        plan.resolved.append(Resolved(wanted, address, found.basis, backend))


def make_plan(host: Host, state: DesiredState) -> DesiredPlan:
    """Resolve, then compare: what ``apply`` would change (nothing is changed)."""
    plan = DesiredPlan(state.path)
    devices, _ = read_all(host.sysfs)
    _resolve(host, plan, state, devices)
    with Ledger.open(host.root, readonly=True) as ledger:
        for item in plan.resolved:
            plan.changes += _changes(host, ledger, item)
        declared = {r.address for r in plan.resolved}
        held = {PciAddress.parse(h.address): f"hidden ({h.how})" for h in ledger.hidden()}
        for owner in ledger.owners():
            held.setdefault(PciAddress.parse(owner.address), f"owned by guest {owner.guest}")
    for address, what in sorted(held.items()):
        if address not in declared:
            plan.undeclared.append(
                Finding(
                    DRIFT,
                    Severity.WARN,
                    str(address),
                    f"pcipass holds it ({what}) but {state.path} does not declare it",
                    "declare it (pcipass pin it, add [device.NAME]) or give it back "
                    "(pcipass unhide / detach)",
                )
            )
    return plan


def _changes(host: Host, ledger: Ledger, item: Resolved) -> list[Change]:
    wanted, address = item.device, item.address
    current = binding.current_driver(host, address)
    record = ledger.get_hidden(address)
    at_boot = record is not None and record.how in ("persist", "both")
    stub = binding.stub_for(host, item.backend).driver
    label = wanted.label
    changes: list[Change] = []
    if not wanted.hidden:
        if current in STUB_DRIVERS:
            changes.append(
                Change("unhide-now", label, address, f"declared the host's, bound to {current}")
            )
        if at_boot:
            changes.append(
                Change("unhide-persist", label, address, "declared the host's, hidden at boot")
            )
        return changes
    if wanted.now and current != stub:
        changes.append(
            Change("hide-now", label, address, f"bound to {current or 'no driver'}, not {stub}")
        )
    if wanted.persist and not at_boot:
        changes.append(
            Change("hide-persist", label, address, "not in the boot configuration by address")
        )
    if wanted.guest is not None:
        owner = ledger.owner(address)
        if owner is None or owner.guest != wanted.guest:
            have = f"owned by {owner.guest}" if owner is not None else "not assigned"
            changes.append(Change("attach", label, address, f"{have}, not to {wanted.guest}"))
    return changes


# --- carrying it out --------------------------------------------------------------------


Step = tuple[str, Callable[[], object], Callable[[], object]]  # what, do, undo


def _steps(host: Host, plan: DesiredPlan, *, dry_run: bool) -> list[Step]:
    from pcipass.ops.attach import attach, detach
    from pcipass.ops.hide import hide, unhide

    by_address = {r.address: r for r in plan.resolved}
    kinds: dict[PciAddress, set[str]] = {}
    for change in plan.changes:
        kinds.setdefault(change.address, set()).add(change.kind)
    steps: list[Step] = []
    groups: dict[tuple[Backend, str | None, bool, bool], list[PciAddress]] = {}
    gone: dict[tuple[bool, bool], list[PciAddress]] = {}
    for address, wanted_kinds in kinds.items():
        item = by_address[address]
        now, persist = "hide-now" in wanted_kinds, "hide-persist" in wanted_kinds
        if now or persist:
            key = (item.backend, item.device.platform, now, persist)
            groups.setdefault(key, []).append(address)
        un_now, un_persist = "unhide-now" in wanted_kinds, "unhide-persist" in wanted_kinds
        if un_now or un_persist:
            gone.setdefault((un_now, un_persist), []).append(address)
    for (backend, platform, now, persist), addresses in groups.items():

        def do_hide(
            a: list[PciAddress] = addresses,
            b: Backend = backend,
            p: str | None = platform,
            n: bool = now,
            s: bool = persist,
        ) -> object:
            return hide(host, a, b, now=n, persist=s, platform=p, dry_run=dry_run)

        def undo_hide(
            a: list[PciAddress] = addresses,
            p: str | None = platform,
            n: bool = now,
            s: bool = persist,
        ) -> object:
            return unhide(host, a, now=n, persist=s, platform=p)

        names = ", ".join(str(a) for a in addresses)
        steps.append((f"hide {names}", do_hide, undo_hide))
    for (now, persist), addresses in gone.items():

        def do_unhide(a: list[PciAddress] = addresses, n: bool = now, s: bool = persist) -> object:
            return unhide(host, a, now=n, persist=s, dry_run=dry_run)

        def undo_unhide(
            a: list[PciAddress] = addresses, n: bool = now, s: bool = persist
        ) -> object:
            backend = by_address[a[0]].backend
            return hide(host, a, backend, now=n, persist=s)

        steps.append((f"unhide {', '.join(str(a) for a in addresses)}", do_unhide, undo_unhide))
    for address, wanted_kinds in kinds.items():
        if "attach" not in wanted_kinds:
            continue
        wanted = by_address[address].device
        assert wanted.guest is not None
        pending = bool({"hide-now"} & wanted_kinds)

        def do_attach(
            a: PciAddress = address, d: DesiredDevice = wanted, h: bool = pending
        ) -> object:
            assert d.guest is not None
            if dry_run and h:
                # The hide above has not happened in a preview: attach's own
                # rules (PP002 first) would refuse, so show the file's diff.
                return _attach_preview(host, a, d.guest, d.config)
            return attach(
                host,
                a,
                d.guest,
                config=d.config,
                accept_pv_dma_risk=d.accept_pv_dma_risk,
                dry_run=dry_run,
            )

        def undo_attach(a: PciAddress = address, d: DesiredDevice = wanted) -> object:
            assert d.guest is not None
            return detach(host, a, d.guest, config=d.config)

        steps.append((f"attach {address} to {wanted.guest}", do_attach, undo_attach))
    return steps


@dataclass
class _Preview:
    lines: list[str]

    def render_lines(self) -> list[str]:
        return self.lines


def _attach_preview(host: Host, address: PciAddress, guest: str, config: str | None) -> _Preview:
    from pcipass.ops.guests import find_guest
    from pcipass.persist.atomic import plan_edit

    guest_file = find_guest(host, guest, config)
    after = guest_file.config.with_device_added(address)
    diff = plan_edit(guest_file.path, guest_file.display, after).diff().rstrip("\n")
    note = "(attach's rules run when apply attaches it, after hiding it)"
    return _Preview([line for line in (diff, note) if line])


def _lines(result: object) -> list[str]:
    render = getattr(result, "render_lines", None)
    return list(render()) if callable(render) else []


def preview(host: Host, plan: DesiredPlan) -> None:
    """``plan``: each step as its command's ``--dry-run`` shows it (diffs, sysfs writes)."""
    if plan.refusals:
        return
    for what, do, _ in _steps(host, plan, dry_run=True):
        plan.preview.append(f"would {what}:")
        text = "\n".join(_lines(do()))
        plan.preview += [f"  {line}" for line in text.split("\n") if line]


def apply(host: Host, plan: DesiredPlan) -> DesiredPlan:
    """Make the changes of ``plan``: all of them, or none (see the module text)."""
    if plan.refusals:
        raise refusal_error(plan.refusals, plan.path)
    made: list[Step] = []
    for step in _steps(host, plan, dry_run=False):
        _, do, _ = step
        try:
            plan.done += _lines(do())
        except BaseException as error:
            undone = _undo(made)
            if isinstance(error, PcipassError) and undone:
                error.problem += f" (apply undid: {'; '.join(undone)})"
            raise
        made.append(step)
    return plan


def _undo(made: Sequence[Step]) -> list[str]:
    undone: list[str] = []
    for what, _, undo in reversed(made):
        try:
            undo()
            undone.append(what)
        except (PcipassError, OSError) as error:
            undone.append(f"{what}: could not undo: {error}")
    return undone


def apply_boot(host: Host, state: DesiredState) -> DesiredPlan:
    """``apply --boot``: bind each declared device's stub, alone; never raises
    for a device (each outcome is one log line)."""
    from pcipass.ops.hide import hide_now

    plan = DesiredPlan(state.path)
    devices, _ = read_all(host.sysfs)
    _resolve(host, plan, state, devices)
    for refusal in plan.refusals:
        plan.log.append(f"left to the host: {refusal.render()}")
    for item in plan.resolved:
        label = f"{item.device.label} -> {item.address} (matched by {item.basis})"
        if not item.device.hidden or not item.device.now:
            continue
        try:
            result = hide_now(host, [item.address], item.backend)
        except RefusedError as error:
            plan.log.append(f"{label}: left to the host: refused: {error.render()}")
            continue
        except PcipassError as error:
            plan.log.append(f"{label}: left to the host: failed: {error.render()}")
            continue
        driver = binding.current_driver(host, item.address)
        changed = any(d.changed for d in result.done)
        plan.log.append(f"{label}: {'bound to' if changed else 'already on'} {driver}")
    return plan
