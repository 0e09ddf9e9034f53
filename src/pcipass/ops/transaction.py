"""One command, one transaction: sysfs steps, file edits and ledger records.

A command that changes the host (``hide``/``unhide`` with ``--now`` and/or
``--persist``) runs under the state lock as ONE journal intent:

1. the intent is committed first, with the state to go back to: each device's
   driver, ``driver_override`` and pciback slot (``before``) and its hidden
   record (``hidden_before``);
2. each sysfs step is journalled after it happened, each file edit before it
   is written (ops/files.py), so the journal always covers what may have
   happened;
3. the ledger's records are written, then the intent is closed (``finish``).

Any failure (a pcipass error, an OS error, SIGINT/SIGTERM through
pcipass/interrupt.py) runs :func:`undo_operation`, the same code ``pcipass
recover`` runs in a later process after a kill -9: devices are *reconciled*
with ``before`` whatever partial state they are in (a kill between a kernel
write and its journal record leaves one unrecorded step; comparing with the
saved state catches it, where replaying undo records would get stuck on it),
file edits are undone when the file still holds what pcipass wrote, and the
hidden records are put back.  Signals are deferred while this runs.

The journal is data, never instructions: :func:`validate_operation` checks
every recorded address, sysfs step and file path before anything is undone.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath

from pcipass import interrupt
from pcipass.address import PciAddress
from pcipass.errors import AddressError, OperationFailed, PcipassError, RefusedError
from pcipass.host import sriov
from pcipass.host.context import Host
from pcipass.ops.rebind import apply_undo, device_state, reconcile
from pcipass.persist.atomic import FileEdit
from pcipass.record import dataclass, field
from pcipass.state.ledger import FileEditRecord, HiddenRecord, Ledger, OperationHandle

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:
    # A protocol only describes a shape for the type checker: at run time a
    # plain base does, and importing typing cost every command ~2 ms (issue #13).
    Protocol = object

# What a rollback runs for: everything but a simulated kill -9 in the tests
# (pcipass.testing.crash.SimulatedKill), which must leave the work to recover.
ROLLBACK_ON = (Exception, KeyboardInterrupt, SystemExit)

# The undo actions a journal step may hold, and the sysfs attributes they write
# (host/binding.py): anything else in a journal was not written by pcipass.
UNDO_ACTIONS = frozenset(
    {"override", "remove_slot", "new_slot", "bind", "unbind", "unbind_any", "probe", "sriov"}
)

# The files pcipass edits, as the host names them: a journal naming any other
# path is refused (a crafted state.db must not make recover write /etc/shadow).
EDITABLE_PREFIXES = (
    "/etc/modprobe.conf",
    "/etc/modprobe.d/",
    "/etc/default/grub",
    "/etc/xen/",
    "/etc/libvirt/",
    "/etc/sysconfig/modules/",
    "/etc/modules-load.d/",
    "/etc/modules",
    "/etc/initramfs-tools/modules",
    "/usr/local/sbin/",
    "/etc/udev/rules.d/70-pcipass-sriov.rules",  # pcipass vfs --persist (persist/udev_vfs.py)
    "/etc/systemd/system/pcipass-boot.service",  # boot-install (ops/boot_unit.py)
    "/etc/systemd/system/multi-user.target.d/pcipass-boot.conf",
)


def hidden_json(record: HiddenRecord | None) -> dict[str, object] | None:
    if record is None:
        return None
    return {
        "identity": dict(record.identity),
        "stub_driver": record.stub_driver,
        "original_driver": record.original_driver,
        "how": record.how,
        "since": record.since,
    }


# --- records are data --------------------------------------------------------------


def _refuse(op_id: int, what: str, why: str) -> RefusedError:
    return RefusedError(
        f"journal operation {op_id}",
        f"{what}: {why}; pcipass did not write this record and will not act on it",
        "inspect the state database (pcipass status); move it aside if it is not this host's",
    )


def _valid_address(op_id: int, text: object) -> PciAddress:
    if not isinstance(text, str):
        raise _refuse(op_id, f"address {text!r}", "not a PCI address")
    try:
        return PciAddress.parse(text)
    except AddressError as error:
        raise _refuse(op_id, f"address {text!r}", "not a PCI address") from error


# A guest configuration given with ``attach --config FILE`` may live anywhere
# (/srv/vm/g.cfg); the intent names it, and only that file, with a guest
# configuration's suffix, is accepted besides the fixed list.
GUEST_CONFIG_SUFFIXES = (".cfg", ".xml", ".conf")
NEVER_EDITED = ("/proc/", "/sys/", "/dev/", "/boot/", "/var/lib/pcipass/")


def _normalised_absolute(display: str) -> bool:
    return (
        display.startswith("/")
        and "\x00" not in display
        and os.path.normpath(display) == display
        and ".." not in PurePosixPath(display).parts
    )


def valid_edit_path(display: str, guest_config: object = None) -> bool:
    """An absolute, normalised host path of a file pcipass edits."""
    if not _normalised_absolute(display):
        return False
    if any(
        display == prefix or (prefix.endswith("/") and display.startswith(prefix))
        for prefix in EDITABLE_PREFIXES
    ):
        return True
    return (
        isinstance(guest_config, str)
        and display == guest_config
        and display.endswith(GUEST_CONFIG_SUFFIXES)
        and not display.startswith(NEVER_EDITED)
    )


def validate_operation(
    op_id: int,
    intent: Mapping[str, object],
    undos: Sequence[Mapping[str, object]],
    edits: Sequence[FileEditRecord],
) -> None:
    """Refuse, naming the record, anything in a journal pcipass would not have written."""
    if "modules" in intent:
        from pcipass.ops.reload import valid_modules

        valid_modules(intent["modules"])
    if "console" in intent:
        from pcipass.ops.console import validate_console

        validate_console(op_id, intent["console"])
    if "reset_methods" in intent:
        from pcipass.ops.reset_method import validate_reset_methods

        validate_reset_methods(op_id, intent["reset_methods"])
    for undo in undos:
        action = undo.get("op")
        if action not in UNDO_ACTIONS:
            raise _refuse(op_id, f"step {undo!r}", "unknown sysfs action")
        _valid_address(op_id, undo.get("address"))
        for key in ("driver", "value"):
            value = undo.get(key)
            if value is not None and (
                not isinstance(value, str) or "/" in value or not value or value.startswith(".")
            ):
                raise _refuse(op_id, f"step {undo!r}", f"{key} is not a driver name")
    if "sriov" in intent:
        _valid_sriov(op_id, intent["sriov"])
    before = intent.get("before")
    if before is not None:
        if not isinstance(before, dict):
            raise _refuse(op_id, "intent 'before'", "not a table of devices")
        for text, state in before.items():
            _valid_address(op_id, text)
            if not isinstance(state, dict):
                raise _refuse(op_id, f"device {text}", "saved state is not a record")
            for key in ("driver", "override"):
                value = state.get(key)
                if value is not None and (
                    not isinstance(value, str) or "/" in value or not value or value.startswith(".")
                ):
                    raise _refuse(op_id, f"device {text}", f"{key} {value!r} is not a driver name")
    for edit in edits:
        if not valid_edit_path(edit.display_path, intent.get("config")):
            raise _refuse(op_id, f"file edit {edit.display_path!r}", "not a file pcipass edits")


def _valid_sriov(op_id: int, saved: object) -> None:
    """``vfs``' saved PF state: an address, a count, an autoprobe flag (or null)."""
    if not isinstance(saved, dict):
        raise _refuse(op_id, "intent 'sriov'", "not a record")
    _valid_address(op_id, saved.get("pf"))
    count = saved.get("numvfs")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 0xFFFF:
        raise _refuse(op_id, f"intent 'sriov' numvfs {count!r}", "not a VF count")
    if saved.get("autoprobe") not in (True, False, None):
        raise _refuse(op_id, f"intent 'sriov' autoprobe {saved.get('autoprobe')!r}", "not a flag")


# --- undoing ----------------------------------------------------------------------


@dataclass
class UndoReport:
    undone: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _guard(report: UndoReport, what: str, action: Callable[[], object]) -> object:
    try:
        return action()
    except (PcipassError, OSError, ValueError) as error:
        report.failures.append(f"{what}: {error}")
        return None


def undo_operation(
    host: Host,
    ledger: Ledger,
    *,
    op_id: int,
    intent: Mapping[str, object],
    undos: Sequence[Mapping[str, object]],
    edits: Sequence[FileEditRecord],
) -> UndoReport:
    """Put back what one operation changed; the shared path of rollback and recover."""
    from pcipass.ops.files import undo_file_edits

    validate_operation(op_id, intent, undos, edits)
    report = UndoReport()
    if "modules" in intent:
        # --reload-driver (ops/reload.py): a module unloaded and not yet back is
        # loaded again first, or its devices could not be bound back.
        from pcipass.ops.reload import ensure_loaded

        loaded = _guard(report, "modules", lambda: ensure_loaded(host, intent["modules"]))
        if isinstance(loaded, list) and loaded:
            report.undone.append("loaded " + ", ".join(str(m) for m in loaded) + " again")
    saved_sriov = intent.get("sriov")
    if isinstance(saved_sriov, dict):
        # pcipass vfs: the PF's VF count and autoprobe as they were (ops/vfs.py).
        pf = str(saved_sriov.get("pf"))
        if _guard(report, pf, functools.partial(sriov.reconcile_sriov, host, saved_sriov)):
            report.undone.append(f"{pf}: {saved_sriov.get('numvfs')} VFs again, as before")
    before = intent.get("before")
    if isinstance(before, dict):
        # Reconcile with what is there, not replay: a step done but not yet
        # journalled (killed in between) is caught by the comparison.
        for text, state in before.items():
            address = PciAddress.parse(text)
            changed = _guard(report, text, functools.partial(reconcile, host, address, state))
            if changed:
                report.undone.append(
                    f"{text}: put back as it was (driver {state.get('driver') or 'none'})"
                )
    else:
        for undo in reversed(undos):
            _guard(
                report, str(undo.get("address")), functools.partial(apply_undo, host, dict(undo))
            )
            report.undone.append(f"undid {undo.get('op')} {undo.get('address')}")
    methods = intent.get("reset_methods")
    if isinstance(methods, dict):
        # hide --reset-method (ops/reset_method.py): the kernel's list as it was.
        from pcipass.ops.reset_method import restore_reset_methods

        put = _guard(
            report, "reset_method", functools.partial(restore_reset_methods, host, methods)
        )
        if isinstance(put, list):
            report.undone.extend(str(line) for line in put)
    console = intent.get("console")
    if isinstance(console, dict):
        # hide --release-console (ops/console.py): once the GPU is back on its
        # driver, its framebuffer and fbcon are bound again.
        from pcipass.ops.console import restore_console

        given = _guard(report, "console", functools.partial(restore_console, host, console))
        if isinstance(given, list):
            report.undone.extend(str(line) for line in given)
    if edits:
        modes = intent.get("modes")  # removed files' permission bits (ops/files.py)
        lines = _guard(report, "files", lambda: undo_file_edits(host, ledger, edits, modes))
        if isinstance(lines, list):
            report.undone.extend(str(line) for line in lines)
    hidden_before = intent.get("hidden_before")
    if isinstance(hidden_before, dict):
        for text, record in hidden_before.items():
            address = _valid_address(op_id, text)
            saved = record if isinstance(record, dict) else None
            _guard(
                report, f"{text} (ledger)", functools.partial(ledger.restore_hidden, address, saved)
            )
    return report


_WRITE_REMEDY = {
    errno.ENOSPC: "free space on its filesystem",
    errno.EROFS: "remount its filesystem read-write",
    errno.EPERM: "is it immutable? (lsattr; chattr -i)",
    errno.EACCES: "run pcipass as root",
}


# --- the transaction -----------------------------------------------------------------


class SysfsStep(Protocol):
    @property
    def describe(self) -> str: ...
    @property
    def action(self) -> Callable[[], None]: ...
    @property
    def undo(self) -> Mapping[str, object] | None: ...


class Transaction:
    """One journal intent for one command; see the module docstring."""

    def __init__(
        self, host: Host, ledger: Ledger, op: OperationHandle, intent: dict[str, object]
    ) -> None:
        self.host = host
        self.ledger = ledger
        self.op = op
        self.intent = intent
        self.undos: list[dict[str, object]] = []
        self.committed = False

    @classmethod
    def begin(
        cls,
        host: Host,
        ledger: Ledger,
        kind: str,
        *,
        sysfs_devices: Sequence[PciAddress],
        record_devices: Sequence[PciAddress],
        extra: Mapping[str, object] | None = None,
    ) -> Transaction:
        intent: dict[str, object] = {
            "devices": [str(a) for a in record_devices],
            "before": {str(a): device_state(host, a) for a in sysfs_devices},
            "hidden_before": {str(a): hidden_json(ledger.get_hidden(a)) for a in record_devices},
        }
        intent.update(extra or {})
        op: OperationHandle | None = None
        try:
            # A signal between the intent's commit and the caller's ``try``
            # would leave an open intent: hold it until the handle exists.
            with interrupt.deferred():
                op = ledger.begin(kind, intent)
        except interrupt.Interrupted:
            if op is not None:
                op.finish()  # nothing was done yet
            raise
        return cls(host, ledger, op, intent)

    def run(self, steps: Sequence[SysfsStep]) -> None:
        """Run sysfs steps (ops/rebind.py ``Step``), journalling each after it happened."""
        for step in steps:
            step.action()
            if step.undo is not None:
                self.undos.append(dict(step.undo))
                self.op.step(step.describe, step.undo)

    def edit_files(self, edits: Sequence[FileEdit]) -> None:
        """Write the planned edits, journalled; an OS error names the file as the host does."""
        from pcipass.ops.files import apply_edits

        for edit in edits:
            try:
                apply_edits(self.ledger, self.op, [edit])
            except OSError as error:
                raise OperationFailed(
                    edit.display,
                    f"cannot be written: {error.strerror or error}",
                    _WRITE_REMEDY.get(error.errno or 0, ""),
                ) from error

    def commit(self) -> None:
        """Close the intent: from here on the command is done, a signal changes nothing."""
        with interrupt.deferred():
            self.op.finish()
            self.committed = True

    def roll_back(self) -> UndoReport:
        """Undo everything this transaction did, signals held back meanwhile."""
        report = UndoReport()
        try:
            with interrupt.deferred():
                report = undo_operation(
                    self.host,
                    self.ledger,
                    op_id=self.op.id,
                    intent=self.intent,
                    undos=self.undos,
                    edits=self.ledger.file_edits(self.op.id),
                )
                if not report.failures:
                    self.op.finish()
        except interrupt.Interrupted:
            pass  # a second signal during the rollback: it is done now, and we stop anyway
        return report

    def fail(self, error: BaseException, *, kept: str) -> BaseException:
        """Roll back after ``error``; return the exception to raise.

        ``kept`` says what holds after a clean rollback ("every device is back
        on its original driver").
        """
        if self.committed:
            return error  # a signal right after the commit: the work is complete
        report = self.roll_back()
        if isinstance(error, interrupt.Interrupted):
            error.undone = report.undone + [f"could not undo {f}" for f in report.failures]
            return error
        if isinstance(error, KeyboardInterrupt):
            wrapped = interrupt.Interrupted(2)
            wrapped.undone = report.undone
            return wrapped
        if isinstance(error, PcipassError):
            subject, problem = error.subject, error.problem
        elif isinstance(error, OSError):
            subject = error.filename if isinstance(error.filename, str) else "pcipass"
            problem = error.strerror or str(error)
        else:
            return error
        if report.failures:
            return OperationFailed(
                subject,
                f"{problem}; rollback incomplete: {'; '.join(report.failures)}",
                "run pcipass recover",
            )
        remedy = f"nothing was changed: {kept}"
        if (
            isinstance(error, PcipassError)
            and error.remedy
            and not error.remedy.startswith("nothing")
        ):
            remedy += f"; {error.remedy}"
        if isinstance(error, RefusedError):
            # A refusal found half-way (a link out of the root, a rule checked at
            # the write) stays a refusal (exit 3): everything was put back.
            error.remedy = remedy
            return error
        return OperationFailed(subject, problem, remedy, rolled_back=True)
