"""``boot-install`` / ``boot-uninstall``: ``pcipass apply --boot`` at every boot.

A BDF written in ``hide=`` or on the kernel command line names whatever card
sits there after the buses renumber; the boot unit instead resolves the
identities declared in /etc/pcipass/pcipass.toml and binds their stubs
(ops/desired.py ``apply_boot``).  The unit (systemd.service(5), oneshot):

* runs after udev has enumerated and coldplugged PCI (``After=`` the udev
  trigger and settle units, and the default dependencies: local file
  systems for the ledger), so the host drivers have bound and a rebind is
  final;
* runs before every toolstack unit that exists under the root (libvirtd,
  virtqemud, virtxend, xendomains, xen-init-dom0, ...), so no guest starts
  with its device still on the host;
* never fails the boot: ``apply --boot`` exits 0, and the ``-`` before the
  command tells systemd to ignore any other exit.

It is enabled without ``systemctl`` (which pcipass does not run on an image
under ``--root``): a drop-in ``multi-user.target.d/pcipass-boot.conf`` with
``Wants=``, an ordinary file the atomic writer writes and journals, where
``systemctl enable`` would make a symbolic link.  Both files carry
:data:`MARKER`; ``boot-uninstall`` removes only files that carry it.
"""

from __future__ import annotations

import shlex
import sys

from pcipass.errors import UsageError
from pcipass.host.context import Host
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.record import dataclass, field

UNIT = "/etc/systemd/system/pcipass-boot.service"
WANTS = "/etc/systemd/system/multi-user.target.d/pcipass-boot.conf"
MARKER = (
    "# pcipass boot unit: installed by `pcipass boot-install`; `pcipass boot-uninstall` removes it"
)
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
# The units that start guests or hand devices to them, Xen's and libvirt's.
TOOLSTACK_UNITS = (
    "xen-init-dom0.service",
    "xencommons.service",
    "xenstored.service",
    "xendomains.service",
    "xendriverdomain.service",
    "libvirtd.service",
    "virtqemud.service",
    "virtxend.service",
    "libvirt-guests.service",
    "pve-guests.service",
)
AFTER = (
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-modules-load.service",
    "local-fs.target",
)


@dataclass
class BootPlan:
    edits: list[FileEdit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)

    def to_json(self, *, dry_run: bool) -> dict[str, object]:
        return {
            "dry_run": dry_run,
            "files": [{"path": e.display, "diff": e.diff()} for e in self.edits],
            "before": self.before,
            "notes": self.notes,
        }


def toolstack_units(host: Host) -> list[str]:
    """The toolstack units installed under the root."""
    return [
        unit
        for unit in TOOLSTACK_UNITS
        if any(host.root.files.exists(f"{d}/{unit}") for d in UNIT_DIRS)
    ]


def _command(host: Host) -> tuple[str, str]:
    """How the unit runs pcipass, and a note when that is a guess."""
    for candidate in ("/usr/bin/pcipass", "/usr/sbin/pcipass", "/usr/local/bin/pcipass"):
        if host.root.files.exists(candidate):
            return candidate, ""
    if host.is_real:  # this interpreter: a venv install works too
        return f"{shlex.quote(sys.executable)} -m pcipass", ""
    return "/usr/bin/pcipass", "no pcipass under /usr/bin in the image: install it there"


def unit_text(command: str, before: list[str]) -> str:
    lines = [
        MARKER,
        "[Unit]",
        "Description=pcipass: hide the PCI devices /etc/pcipass/pcipass.toml declares "
        "(by identity) before the toolstacks start",
        "Documentation=man:pcipass(1)",
        "ConditionPathExists=/etc/pcipass/pcipass.toml",
        f"After={' '.join(AFTER)}",
    ]
    if before:
        lines.append(f"Before={' '.join(before)}")
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "# '-': whatever happens, the boot goes on (apply --boot logs and exits 0).",
        f"ExecStart=-{command} apply --boot",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def wants_text() -> str:
    return f"{MARKER}\n[Unit]\nWants=pcipass-boot.service\n"


def _ours(data: bytes | None) -> bool:
    return data is not None and data.startswith(MARKER.encode())


def plan_install(host: Host) -> BootPlan:
    plan = BootPlan(before=toolstack_units(host))
    command, note = _command(host)
    if note:
        plan.notes.append(note)
    if not plan.before:
        plan.notes.append(
            "no toolstack unit found (libvirtd, virtqemud, xendomains, xen-init-dom0, ...): "
            "the unit is ordered only after udev; run boot-install again after installing one"
        )
    for target, text in ((UNIT, unit_text(command, plan.before)), (WANTS, wants_text())):
        current = host.root.files.read_bytes(target)
        if current is not None and not _ours(current):
            raise UsageError(target, "exists and is not pcipass's; not replaced", "move it away")
        plan.edits.append(plan_edit(host.root.path(target), target, text.encode(), 0o644))
    plan.edits = [e for e in plan.edits if e.changes_anything]
    if plan.edits and host.is_real:
        plan.notes.append("systemd reads units when told: run `systemctl daemon-reload`")
    return plan


def plan_uninstall(host: Host) -> BootPlan:
    plan = BootPlan()
    for target in (UNIT, WANTS):
        if _ours(host.root.files.read_bytes(target)):
            plan.edits.append(plan_edit(host.root.path(target), target, None))
    return plan


def apply_plan(host: Host, plan: BootPlan, kind: str) -> None:
    if not plan.edits:
        return
    from pcipass.ops.files import apply_file_operation
    from pcipass.state.ledger import Ledger
    from pcipass.state.lock import StateLock

    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        apply_file_operation(ledger, kind, {"files": [e.display for e in plan.edits]}, plan.edits)
