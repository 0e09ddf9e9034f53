"""``pcipass guest-setup``: acpiphp in a KVM guest, now and at every boot (rule PP008).

The document's Note: a RHEL 5 KVM guest needs ``modprobe acpiphp`` to see
hot-plugged devices, and ``/etc/sysconfig/modules/acpiphp.modules`` (made
executable) to load it at every boot, checked with ``lsmod | grep acpiphp``.
persist/guest_modules.py decides what to do (built in? loaded? which file);
this module does it, journalled, and verifies through /proc/modules.
"""

from __future__ import annotations

from pcipass.host.context import Host
from pcipass.persist.guest_modules import (
    AcpiphpState,
    GuestSetupPlan,
    acpiphp_loaded,
    plan_guest_setup,
)
from pcipass.record import dataclass, field, replace
from pcipass.runner import OfflineRunner


@dataclass
class GuestSetupResult:
    plan: GuestSetupPlan
    dry_run: bool
    ran: list[str] = field(default_factory=list)
    loaded_after: bool | None = None

    @property
    def ok(self) -> bool:
        if self.plan.state is AcpiphpState.BUILTIN:
            return True
        if self.plan.state is AcpiphpState.MISSING:
            return False
        return self.dry_run or self.loaded_after is not False

    def to_json(self) -> dict[str, object]:
        data = self.plan.to_json()
        data.update(
            {
                "dry_run": self.dry_run,
                "ran": self.ran,
                "loaded_after": self.loaded_after,
                "ok": self.ok,
            }
        )
        return data

    def render(self) -> str:
        plan = self.plan
        lines = [f"acpiphp: {plan.state}"]
        for edit in plan.edits:
            if edit.changes_anything:
                lines.append(edit.diff().rstrip("\n") if self.dry_run else f"wrote {edit.display}")
        if plan.load_argv:
            verb = "would run" if self.dry_run else "ran"
            lines.append(f"{verb}: {' '.join(plan.load_argv)}")
        if self.loaded_after is not None:
            lines.append(
                "/proc/modules: acpiphp " + ("loaded" if self.loaded_after else "NOT loaded")
            )
        lines += list(plan.notes)
        return "\n".join(lines)


def guest_setup(host: Host, *, dry_run: bool = False) -> GuestSetupResult:
    plan = plan_guest_setup(host.root)
    if plan.running and isinstance(host.runner, OfflineRunner):
        # --root IMAGE (a mounted or copied guest tree, /proc included) is
        # not the system pcipass runs on: modprobe would load acpiphp into
        # this machine's kernel.  The boot-time file is the whole job there.
        plan = replace(
            plan,
            running=False,
            load_argv=None,
            notes=(
                *plan.notes,
                f"--root {host.root.prefix} is not the running system: nothing is loaded "
                "now; acpiphp loads when the guest boots",
            ),
        )
    result = GuestSetupResult(plan, dry_run)
    if dry_run or plan.nothing_to_do:
        if plan.running and plan.state is not AcpiphpState.BUILTIN:
            result.loaded_after = acpiphp_loaded(host.root)
        return result
    edits = [e for e in plan.edits if e.changes_anything]
    if edits:
        from pcipass.ops.files import apply_file_operation
        from pcipass.state.ledger import Ledger
        from pcipass.state.lock import StateLock

        with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
            intent = {"files": [e.display for e in edits]}
            apply_file_operation(ledger, "guest-setup", intent, edits)
    if plan.load_argv and plan.running:
        host.runner.run(list(plan.load_argv)).check()
        result.ran.append(" ".join(plan.load_argv))
    if plan.running:
        result.loaded_after = acpiphp_loaded(host.root)
    return result
