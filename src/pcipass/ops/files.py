"""Applying planned file edits with a journal, and undoing them.

Every configuration write in pcipass goes through :func:`apply_edits`: the
previous content is saved in the ledger's content-addressed backups, the
edit is recorded against the running operation, then written atomically by
persist/atomic.py.  :func:`undo_file_edits` restores a file only when it still
holds what pcipass wrote (someone else's later change is never clobbered).
:func:`remove_leftover_temp_files` clears the temp files a kill left behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcipass import interrupt
from pcipass.errors import OperationFailed, PcipassError, RefusedError, UsageError
from pcipass.host.confined import host_parts
from pcipass.host.context import Host
from pcipass.interrupt import Interrupted
from pcipass.persist.atomic import FileEdit, apply_edit, digest, is_temp_name, sweep_temp_files
from pcipass.state.ledger import FileEditRecord, Ledger, OperationHandle


class FilesNotRestored(OperationFailed):
    """A write failed and putting back the files written before it failed too."""


def _mode_of(edit: FileEdit) -> int | None:
    """The permission bits of a file the edit removes (put back with it)."""
    if edit.after is not None or edit.before is None:
        return None
    info = edit.files.stat(edit.display)
    return None if info is None else info.st_mode & 0o777


def removed_modes(edits: Sequence[FileEdit]) -> dict[str, int]:
    """For the journal intent: the mode of every file the edits remove, so that
    recover puts a removed hook back executable (the backups keep only bytes)."""
    modes = {e.display: _mode_of(e) for e in edits}
    return {display: mode for display, mode in modes.items() if mode is not None}


def apply_edits(ledger: Ledger, op: OperationHandle, edits: Sequence[FileEdit]) -> None:
    """Apply ``edits`` in order; if one fails, put back the ones already written.

    So a handled failure (a full disk, an immutable file, a link out of the
    root) leaves every file as it was and the caller may close its journal
    entry; only when that undo fails too (:class:`FilesNotRestored`) is there
    something left for ``recover``.  A signal is a failure like any other: an
    edit is counted as begun before its write, and put back only if the file
    no longer holds what it held (so one interrupted right after its rename
    is put back too).
    """
    begun: list[tuple[FileEdit, int | None]] = []
    try:
        for edit in edits:
            if not edit.changes_anything:
                continue
            backup = ledger.save_backup(edit.before) if edit.before is not None else None
            op.record_file_edit(edit.display, digest(edit.before), digest(edit.after), backup)
            begun.append((edit, _mode_of(edit)))
            apply_edit(edit)
    except BaseException as failure:
        with interrupt.deferred():  # a second signal does not cut the putting back short
            for edit, mode in reversed(begun):
                undo = FileEdit(edit.path, edit.display, edit.after, edit.before, mode)
                try:
                    if edit.files.read_bytes(edit.display) == edit.before:
                        continue  # never written
                    apply_edit(undo, check_before=True)
                except PcipassError as error:
                    raise FilesNotRestored(
                        edit.display,
                        f"could not be put back after a failed write ({error.problem})",
                        "run pcipass recover",
                    ) from failure
        raise


def apply_file_operation(
    ledger: Ledger, kind: str, intent: Mapping[str, object], edits: Sequence[FileEdit]
) -> None:
    """A journalled operation that only edits files: begin, apply, finish.

    A handled failure closes the entry too (the files were put back), so it
    is not reported as an interrupted operation afterwards; so does a signal
    (SIGINT/SIGTERM), which then goes on to the CLI (exit 130/143).  A signal
    while the entry is being closed waits: the work is then done.
    """
    modes = removed_modes(edits)
    full_intent = {**intent, "modes": modes} if modes else dict(intent)
    op: OperationHandle | None = None
    try:
        with interrupt.deferred():
            op = ledger.begin(kind, full_intent)
        apply_edits(ledger, op, edits)
    except FilesNotRestored:
        raise  # left open: recover puts the files back
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        if op is not None:
            with interrupt.deferred():
                op.finish()
            if isinstance(error, Interrupted):
                error.undone += [f"{e.display}: as it was" for e in edits if e.changes_anything]
        raise
    with interrupt.deferred():
        op.finish()


def _recorded_path_problem(display: str) -> str | None:
    """Why a journal record's path cannot be acted on (the journal is data, not orders)."""
    if not display.startswith("/") or "\0" in display:
        return "not an absolute path"
    try:
        normal = "/" + "/".join(host_parts(display))
    except UsageError:
        return "a path that leaves the root"
    return None if normal == display else "not a normalised path"


def undo_file_edits(
    host: Host,
    ledger: Ledger,
    records: Sequence[FileEditRecord],
    modes: object = None,
) -> list[str]:
    """Put back each recorded file that still holds what pcipass wrote.

    ``modes`` (the intent's record, data not orders): the permission bits of
    files the operation removed, given back when one is put back."""
    report = []
    kept_modes = modes if isinstance(modes, dict) else {}
    for record in sorted(records, key=lambda r: r.id, reverse=True):
        problem = _recorded_path_problem(record.display_path)
        if problem is not None:
            report.append(f"file edit {record.id} {record.display_path!r}: {problem}; left alone")
            continue
        path = host.root.path(record.display_path)
        try:
            current = host.root.files.read_bytes(record.display_path)
        except RefusedError as error:
            report.append(f"{record.display_path}: {error.problem}; left alone")
            continue
        current_sha = digest(current)
        if current_sha == record.before_sha:
            continue  # the write never happened
        if current_sha != record.after_sha:
            report.append(f"{record.display_path}: changed since pcipass wrote it; left alone")
            continue
        before: bytes | None = None
        if record.before_sha != "absent":
            sha = record.backup_path or record.before_sha
            try:
                before = ledger.load_backup(sha.rsplit("/", 1)[-1])
            except ValueError:
                report.append(f"{record.display_path}: backup reference invalid; left alone")
                continue
            import hashlib  # only when a recorded edit is checked (issue #13)

            if hashlib.sha256(before).hexdigest() != record.before_sha:
                report.append(f"{record.display_path}: backup damaged; left alone")
                continue
        mode = kept_modes.get(record.display_path) if current is None else None
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            mode = None  # never set-id bits from a journal
        try:
            apply_edit(
                FileEdit(path, record.display_path, current, before, mode), check_before=True
            )
        except RefusedError as error:  # e.g. it now lies behind a link out of the root
            report.append(f"{record.display_path}: {error.problem}; left alone")
            continue
        report.append(f"{record.display_path}: restored")
    return report


def redo_file_edits(host: Host, ledger: Ledger, records: Sequence[FileEditRecord]) -> list[str]:
    """Finish recorded edits (``recover`` rolling an operation forward): a file
    still as before gets the recorded content, which must be among the
    backups; one already written is left; one changed by someone else too.
    Returns what it did and what it could not (lines ending in "left alone")."""
    report = []
    for record in sorted(records, key=lambda r: r.id):
        problem = _recorded_path_problem(record.display_path)
        if problem is not None:
            report.append(f"file edit {record.id} {record.display_path!r}: {problem}; left alone")
            continue
        try:
            current = host.root.files.read_bytes(record.display_path)
            if digest(current) == record.after_sha:
                continue
            if digest(current) != record.before_sha:
                report.append(f"{record.display_path}: changed since pcipass read it; left alone")
                continue
            after = None if record.after_sha == "absent" else ledger.load_backup(record.after_sha)
            path = host.root.path(record.display_path)
            apply_edit(FileEdit(path, record.display_path, current, after), check_before=True)
        except (PcipassError, ValueError) as error:
            report.append(f"{record.display_path}: {error}; left alone")
            continue
        report.append(f"{record.display_path}: written as planned")
    return report


#: Directories pcipass writes into (host paths); with the parents of every
#: file the ledger recorded an edit of, where a kill may leave a temp file.
WRITTEN_DIRS = (
    "/etc",
    "/etc/default",
    "/etc/default/grub.d",
    "/etc/modprobe.d",
    "/etc/modules-load.d",
    "/etc/sysconfig/modules",
    "/etc/xen",
    "/etc/xen/auto",
    "/etc/libvirt/qemu",
    "/etc/libvirt/libxl",
    "/etc/libvirt/hooks",
    "/etc/libvirt/hooks/qemu.d",
    "/etc/libvirt/hooks/libxl.d",
    "/usr/local/sbin",
    "/var/lib/pcipass/backups",
)


def written_directories(ledger: Ledger) -> list[str]:
    recorded = [r.display_path for r in ledger.file_edits()]
    parents = {d.rsplit("/", 1)[0] or "/" for d in recorded if _recorded_path_problem(d) is None}
    return sorted(set(WRITTEN_DIRS) | parents)


def remove_leftover_temp_files(host: Host, ledger: Ledger) -> list[str]:
    """Remove ``.NAME.XXXX.pcipass-tmp`` files a killed pcipass left; their host paths.

    Only under the state lock: a running pcipass's temp file is not a leftover.
    """
    return sweep_temp_files(host.root.files, written_directories(ledger))


def leftover_temp_files(host: Host, ledger: Ledger) -> list[str]:
    """The leftover temp files, without removing them (no lock held)."""
    found = []
    for directory in written_directories(ledger):
        found += [
            f"{directory.rstrip('/')}/{name}"
            for name in host.root.files.list_dir(directory)
            if is_temp_name(name)
        ]
    return found
