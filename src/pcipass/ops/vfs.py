"""``pcipass vfs PF [N]``: list, create, change or remove a PF's virtual functions.

Creating VFs meant for guests (the default) turns the PF's
``sriov_drivers_autoprobe`` off while they appear, so no host driver (igbvf,
iavf, mlx5_core, nvme...) binds them and starts using them before they are
hidden; it is put back afterwards, which does not probe the VFs already
created (the kernel reads it at probe time: ``pci_device_can_probe``).

The kernel refuses a new non-zero count while VFs exist (EBUSY: "Disable
before enabling"), so a change goes through 0.  Every count change is one
journalled transaction (ops/transaction.py) whose intent holds the PF's
count and autoprobe before: a failure, a signal, or ``pcipass recover``
after a kill puts both back (:func:`reconcile_sriov`).

Refusals (exit 3, nothing changed): removing VFs a guest holds or that are
hidden (PP101), or that the host uses (PP001, naming the use); a PF a guest
holds (PP101); a count above ``sriov_totalvfs``, a function that is not a PF,
a PF without a driver, settings for a PF without a network interface (PP125).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pcipass.address import PciAddress
from pcipass.errors import (
    DeviceNotFoundError,
    OperationFailed,
    PcipassError,
    RefusedError,
)
from pcipass.host import binding, sriov
from pcipass.host.context import Host
from pcipass.host.root import safe_name
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.host.usage import HostUse, host_uses
from pcipass.ops.transaction import ROLLBACK_ON, Transaction
from pcipass.ops.vf_net import (
    VfNet,
    VfSetting,
    apply_setting,
    parse_settings,
    read_vf_net,
    restoring,
    valid_netdev,
)
from pcipass.persist import udev_vfs
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger
from pcipass.state.lock import StateLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    pass


@dataclass
class VfEntry:
    index: int
    address: PciAddress
    driver: str | None
    owner: str | None
    hidden: bool
    net: VfNet | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "address": str(self.address),
            "driver": self.driver,
            "owner": self.owner,
            "hidden": self.hidden,
            "net": None if self.net is None else self.net.to_json(),
        }

    def render(self) -> str:
        where = (
            f"guest {self.owner}"
            if self.owner
            else ("hidden" if self.hidden else ("host" if self.driver else "free"))
        )
        line = f"  vf {self.index}  {self.address}  {self.driver or 'no driver'}  ({where})"
        if self.net is not None:
            extra = [f"mac {self.net.mac}"] if self.net.mac else []
            extra += [f"vlan {self.net.vlan}"] if self.net.vlan else []
            extra += [f"trust {'on' if self.net.trust else 'off'}"] * (self.net.trust is not None)
            extra += [f"spoofchk {'on' if self.net.spoofchk else 'off'}"] * (
                self.net.spoofchk is not None
            )
            line += "  " + ", ".join(extra) if extra else ""
        return line


@dataclass
class VfsOutcome:
    pf: PciAddress
    total: int
    before: int
    after: int
    for_guests: bool
    dry_run: bool = False
    changed: bool = False
    steps: list[str] = field(default_factory=list)
    vfs: list[VfEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    persist_file: str | None = None
    persist_diff: str = ""
    persisted: int | None = None  # the count the rules file gives this PF

    def to_json(self) -> dict[str, object]:
        return {
            "pf": str(self.pf),
            "total": self.total,
            "before": self.before,
            "after": self.after,
            "for_guests": self.for_guests,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "steps": list(self.steps),
            "vfs": [v.to_json() for v in self.vfs],
            "notes": list(self.notes),
            "persist": None
            if self.persist_file is None
            else {"file": self.persist_file, "diff": self.persist_diff},
            "persisted": self.persisted,
        }

    def render_lines(self) -> list[str]:
        count = (
            f"{self.before} VFs"
            if self.before == self.after
            else f"{self.before} -> {self.after} VFs"
        )
        lines = [f"{self.pf}: {count} (of {self.total})"]
        if self.persisted is not None:
            lines[0] += f"; {self.persisted} at every boot ({udev_vfs.RULES_FILE})"
        if self.steps:
            lines.append("would run:" if self.dry_run else "ran:")
            lines += [f"  {s}" for s in self.steps]
        lines += [v.render() for v in self.vfs]
        lines += self.notes
        if self.persist_diff:
            lines.append(self.persist_diff.rstrip("\n"))
        if not self.dry_run and not self.changed and self.before != self.after:
            lines.append("no change")
        return lines


# --- reading -----------------------------------------------------------------------


def _pf_state(host: Host, address: PciAddress) -> sriov.PfState:
    if not sriov.exists(host, address):
        raise DeviceNotFoundError(str(address), str(host.root.prefix))
    state = sriov.read_pf(host, address)
    if state is not None:
        return state
    parent = sriov.physfn(host, address)
    if parent is not None:
        raise RefusedError(
            str(address),
            f"is a virtual function of {parent}; VFs are created and removed on their PF",
            f"pcipass vfs {parent} N",
            rule="PP125",
        )
    raise RefusedError(
        str(address),
        "is not an SR-IOV physical function (the kernel shows no sriov_totalvfs)",
        "pcipass show says which functions have SR-IOV",
        rule="PP125",
    )


def _entries(host: Host, ledger: Ledger, pf: sriov.PfState) -> list[VfEntry]:
    nets = read_vf_net(host, pf.netdev) if pf.netdev is not None and pf.vfs else {}
    entries = []
    for index, address in sriov.virtfns(host, pf.address):
        owner = ledger.owner(address)
        driver = binding.current_driver(host, address)
        entries.append(
            VfEntry(
                index,
                address,
                driver,
                owner.guest if owner is not None else None,
                ledger.get_hidden(address) is not None or driver in STUB_DRIVERS,
                nets.get(index),
            )
        )
    return entries


def _persisted(host: Host, pf: PciAddress) -> int | None:
    text = host.root.files.read_bytes(udev_vfs.RULES_FILE)
    if text is None:
        return None
    return udev_vfs.persisted_pfs(text.decode("utf-8", "replace")).get(str(pf))


def vf_addresses(host: Host, address: PciAddress, *, verb: str = "hide") -> list[PciAddress]:
    """``hide --vfs PF`` / ``unhide --vfs PF``: every VF of the PF, in virtfn
    order; refused when it has none."""
    pf = _pf_state(host, address)
    if not pf.vfs:
        raise RefusedError(
            str(address),
            f"has no VFs to {verb}",
            f"create them first: pcipass vfs {address} N",
            rule="PP125",
        )
    return list(pf.vfs)


def list_vfs(host: Host, address: PciAddress) -> VfsOutcome:
    pf = _pf_state(host, address)
    outcome = VfsOutcome(address, pf.total, pf.num, pf.num, for_guests=False)
    with Ledger.open(host.root, readonly=True) as view:
        outcome.vfs = _entries(host, view, pf)
    outcome.persisted = _persisted(host, address)
    return outcome


# --- deciding ----------------------------------------------------------------------


def _refuse_removal(
    pf: sriov.PfState,
    entries: Sequence[VfEntry],
    uses: Mapping[PciAddress, list[HostUse]],
) -> None:
    """PP101 for a VF a guest holds or that is hidden, PP001 for one the host uses."""
    for vf in entries:
        name = f"VF {vf.address} (vf {vf.index} of {pf.address})"
        if vf.owner is not None:
            raise RefusedError(
                name,
                f"is assigned to guest {vf.owner}; removing the VFs would pull it out",
                f"detach it first: pcipass detach {vf.address} {vf.owner}",
                rule="PP101",
            )
        if vf.hidden:
            raise RefusedError(
                name,
                f"is hidden (on {vf.driver or 'no driver'}) for guests; removing the VFs "
                "would take it away",
                f"unhide it first: pcipass unhide --now {vf.address}",
                rule="PP101",
            )
        used = uses.get(vf.address)
        if used:
            raise RefusedError(
                name,
                "is used by the host: " + "; ".join(str(u) for u in used),
                "move that use off the VF first, or keep the VFs",
                rule="PP001",
            )


def _check_pf(
    ledger: Ledger,
    *,
    pf: sriov.PfState,
    count: int | None,
    settings: bool,
    uses: Mapping[PciAddress, list[HostUse]],
) -> list[str]:
    """Refuse what must not happen; notes for what is allowed but worth saying."""
    notes: list[str] = []
    owner = ledger.owner(pf.address)
    if owner is not None:
        raise RefusedError(
            str(pf.address),
            f"is assigned to guest {owner.guest}",
            f"detach it first: pcipass detach {pf.address} {owner.guest}",
            rule="PP101",
        )
    if count is not None and count > pf.total:
        raise RefusedError(
            str(pf.address),
            f"can have at most {pf.total} VFs (sriov_totalvfs), not {count}",
            f"ask for 0 to {pf.total}",
            rule="PP125",
        )
    if count is not None and count != pf.num and pf.driver is None:
        raise RefusedError(
            str(pf.address),
            "has no driver bound; the kernel creates and removes VFs through the PF's driver",
            "bind its own driver first (pcipass unhide --now if pcipass hid it)",
            rule="PP125",
        )
    if count is not None and count != pf.num and pf.driver in STUB_DRIVERS:
        raise RefusedError(
            str(pf.address),
            f"is hidden (on {pf.driver}); its VFs are the PF driver's to create",
            f"unhide it first: pcipass unhide --now {pf.address}",
            rule="PP101",
        )
    if settings and pf.netdev is None:
        raise RefusedError(
            str(pf.address),
            "has no network interface; --mac, --vlan, --trust and --spoofchk are for network PFs",
            "leave them out",
            rule="PP125",
        )
    pf_uses = uses.get(pf.address)
    if pf_uses and count is not None and count != pf.num:
        notes.append(
            f"note: {pf.address} is used by the host ("
            + "; ".join(str(u) for u in pf_uses)
            + "); changing its VFs is allowed: the PF itself keeps working "
            "(on some NICs the link drops for a moment while the VFs are set up)"
        )
    return notes


@dataclass
class _Plan:
    steps: list[tuple[str, Callable[[], None]]]
    settings: list[VfSetting]
    edit: FileEdit | None


def _plan(
    host: Host,
    pf: sriov.PfState,
    count: int | None,
    *,
    for_guests: bool,
    settings: list[VfSetting],
    persist: bool,
) -> _Plan:
    steps: list[tuple[str, Callable[[], None]]] = []
    attr = host.root.host_path(host.root.pci_device(pf.address))
    address = pf.address
    if count is not None and count != pf.num:
        quiet = for_guests and count > 0 and pf.autoprobe is True
        if quiet:
            steps.append(
                (
                    f"echo 0 > {attr}/sriov_drivers_autoprobe",
                    lambda: sriov.set_autoprobe(host, address, False),
                )
            )
        if pf.num:
            steps.append(
                (f"echo 0 > {attr}/sriov_numvfs", lambda: sriov.set_numvfs(host, address, 0))
            )
        if count:
            steps.append(
                (
                    f"echo {count} > {attr}/sriov_numvfs",
                    lambda: sriov.set_numvfs(host, address, count),
                )
            )
        if quiet:
            steps.append(
                (
                    f"echo 1 > {attr}/sriov_drivers_autoprobe",
                    lambda: sriov.set_autoprobe(host, address, True),
                )
            )
    edit = None
    if persist:
        target = pf.num if count is None else count
        entry = udev_vfs.PersistentVfs(
            pf.address,
            target,
            pf.driver or "",
            autoprobe_off=for_guests,
            netdev=pf.netdev,
            ip_settings=tuple(s.ip_args() for s in settings),
        )
        if target > 0 and not pf.driver:
            raise RefusedError(
                str(pf.address),
                "has no driver bound; the boot rule is keyed on the PF's driver",
                "bind its own driver first",
                rule="PP125",
            )
        # Names read from sysfs go into a rules file udev acts on: checked like input.
        if pf.driver:
            safe_name("driver", pf.driver)
        if pf.netdev is not None and settings:
            valid_netdev(pf.netdev)
        current = host.root.files.read_bytes(udev_vfs.RULES_FILE)
        text = udev_vfs.updated(
            None if current is None else current.decode("utf-8", "surrogateescape"),
            pf.address,
            entry,
        )
        edit = plan_edit(
            host.root.path(udev_vfs.RULES_FILE),
            udev_vfs.RULES_FILE,
            None if text is None else text.encode("utf-8", "surrogateescape"),
        )
        if not edit.changes_anything:
            edit = None
    return _Plan(steps, settings, edit)


# --- doing -------------------------------------------------------------------------


def set_vfs(
    host: Host,
    address: PciAddress,
    count: int | None,
    *,
    for_guests: bool = True,
    persist: bool = False,
    settings: Mapping[str, Sequence[str]] | None = None,
    dry_run: bool = False,
) -> VfsOutcome:
    """Make ``address`` have ``count`` VFs (None: keep the count; settings only)."""
    pf = _pf_state(host, address)
    if dry_run:
        with Ledger.open(host.root, readonly=True) as view:
            return _run(
                host,
                view,
                pf=pf,
                count=count,
                for_guests=for_guests,
                persist=persist,
                specs=settings or {},
                dry_run=True,
            )
    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        pf = _pf_state(host, address)  # again, under the lock
        return _run(
            host,
            ledger,
            pf=pf,
            count=count,
            for_guests=for_guests,
            persist=persist,
            specs=settings or {},
            dry_run=False,
        )


def _run(
    host: Host,
    ledger: Ledger,
    *,
    pf: sriov.PfState,
    count: int | None,
    for_guests: bool,
    persist: bool,
    specs: Mapping[str, Sequence[str]],
    dry_run: bool,
) -> VfsOutcome:
    target = pf.num if count is None else count
    outcome = VfsOutcome(pf.address, pf.total, pf.num, target, for_guests, dry_run=dry_run)
    uses, _problems = host_uses(host.sysfs)
    outcome.notes += _check_pf(ledger, pf=pf, count=count, settings=bool(specs), uses=uses)
    entries = _entries(host, ledger, pf)
    if count is not None and count != pf.num and pf.num:
        _refuse_removal(pf, entries, uses)
        outcome.notes += [
            f"note: {e.address} leaves {e.driver} (no host use found)"
            for e in entries
            if e.driver is not None
        ]
    # Settings name VFs as they will be: the predicted addresses after a change.
    future = list(pf.vfs) if count is None or count == pf.num else (pf.predicted(target) or [])
    settings = parse_settings(dict(specs), future, target)
    plan = _plan(host, pf, count, for_guests=for_guests, settings=settings, persist=persist)
    outcome.steps = [d for d, _ in plan.steps]
    if pf.netdev is not None:
        outcome.steps += [
            " ".join(("ip", "link", "set", "dev", pf.netdev, *s.ip_args())) for s in settings
        ]
    if plan.edit is not None:
        outcome.persist_file = udev_vfs.RULES_FILE
        outcome.persist_diff = plan.edit.diff()
    if for_guests and target and count is not None and count != pf.num:
        outcome.notes.append(
            f"the VFs are left without a driver for guests; hide them: "
            f"pcipass hide --now --vfs {pf.address}"
        )
    if dry_run:
        predicted = pf.predicted(target) if count is not None and count != pf.num else None
        if predicted is not None:
            outcome.notes.append("VFs will be: " + ", ".join(str(a) for a in predicted))
        outcome.persisted = _persisted(host, pf.address)
        return outcome
    if not plan.steps and not plan.settings and plan.edit is None:
        outcome.vfs = entries
        outcome.persisted = _persisted(host, pf.address)
        return outcome
    _apply(host, ledger, pf, plan)
    outcome.changed = True
    fresh = sriov.read_pf(host, pf.address) or pf
    outcome.vfs = _entries(host, ledger, fresh)
    outcome.after = fresh.num
    outcome.persisted = _persisted(host, pf.address)
    return outcome


def _apply(host: Host, ledger: Ledger, pf: sriov.PfState, plan: _Plan) -> None:
    edits = [plan.edit] if plan.edit is not None else []
    txn = Transaction.begin(
        host,
        ledger,
        "vfs",
        sysfs_devices=[],
        record_devices=[],
        extra={
            "sriov": {"pf": str(pf.address), "numvfs": pf.num, "autoprobe": pf.autoprobe},
            "files": [e.display for e in edits],
        },
    )
    # Settings of VFs that outlive this command (the count is unchanged) are put
    # back by hand on a failure: they live in the PF driver, not in a file or
    # sysfs attribute the journal can reconcile (a kill -9 leaves them set).
    old = read_vf_net(host, pf.netdev) if pf.netdev and plan.settings and not plan.steps else {}
    applied: list[VfSetting] = []
    try:
        for describe, action in plan.steps:
            action()
            txn.op.step(describe, {"op": "sriov", "address": str(pf.address)})
        for setting in plan.settings:
            assert pf.netdev is not None
            apply_setting(host, pf.netdev, setting)
            applied.append(setting)
        txn.edit_files(edits)
        txn.commit()
    except ROLLBACK_ON as error:
        left = (
            _restore_settings(host, pf.netdev, old, applied)
            if pf.netdev and applied and not plan.steps
            else []
        )
        failed = txn.fail(
            error, kept=f"{pf.address} has its {pf.num} VFs again, every file as it was"
        )
        if left and isinstance(failed, PcipassError):
            # The rollback message must not claim that nothing changed.
            raise OperationFailed(
                failed.subject,
                f"{failed.problem}; still set on {pf.netdev}: {', '.join(left)}",
                "set them back with ip link",
            ) from error
        raise failed from error


def _restore_settings(
    host: Host, netdev: str, old: Mapping[int, VfNet], applied: Sequence[VfSetting]
) -> list[str]:
    """Put back settings applied before a failure; what could not be put back."""
    left: list[str] = []
    for setting in reversed(applied):
        back = restoring(old.get(setting.index), setting)
        try:
            if back is None:
                raise OperationFailed(setting.describe(), "previous value unknown", "")
            apply_setting(host, netdev, back)
        except (PcipassError, OSError):
            left.append(setting.describe())
    return left
