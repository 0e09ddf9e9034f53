"""Install the save/restore/migrate guard where the toolstacks ask (rule PP003).

Xen does not enforce the document's rule: on Xen 4.17 ``xl save`` of a PV
guest holding a device exits 0 and the restored guest hangs (seen in the lab).  So
pcipass puts its guard in the toolstacks' way:

* libvirt: ``/etc/libvirt/hooks/qemu`` and ``/etc/libvirt/hooks/libxl``
  (libvirt runs them with ``GUEST OPERATION SUB-OP EXTRA`` and the domain XML
  on stdin; a non-zero exit at ``migrate``/``restore`` stops the operation).
  An existing hook that is not pcipass's is never replaced: pcipass goes in
  ``hooks/qemu.d/pcipass`` instead, which libvirt 6.5+ runs as well.
* xl/xm (opt-in): a wrapper in ``/usr/local/sbin`` (before /usr/sbin in
  root's PATH) that asks the guard before ``save``, ``restore``, ``migrate``
  (and xl ``remus``, xm ``suspend``/``resume``) and then runs the real
  program.  pcipass reads the command line with the tool's own grammar; a
  line it cannot read (an unknown option, a domain id not in ``TOOL list``,
  ``restore`` of a file without a configuration naming the guest) is refused
  while any guest holds a device: fail closed, with the reason.

Every file is planned as an edit (diff under --dry-run), journalled and
written atomically, and ``--uninstall`` removes only files pcipass wrote.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from pcipass.errors import UsageError
from pcipass.guests.xen_argv import GUARDED_WORDS
from pcipass.host.context import Host
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.record import dataclass, field

MARKER = "# pcipass guard hook (rule PP003): installed by `pcipass guard --install`"
LIBVIRT_HOOKS = ("qemu", "libxl")
WRAPPED = {"xl": "/usr/sbin/xl", "xm": "/usr/sbin/xm"}


def _pcipass_argv() -> list[str]:
    """How the hook runs pcipass: this interpreter, so a venv install works."""
    return [sys.executable, "-m", "pcipass"]


def libvirt_hook_text() -> str:
    command = " ".join(shlex.quote(a) for a in _pcipass_argv())
    return (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        "# Refuses migrate/restore of a guest holding a passed-through PCI device; every\n"
        "# other operation passes.  stdout stays empty (libvirt reads it at restore).\n"
        "# Only migrate and restore are judged: start, stop and the rest never wait\n"
        "# for (or fail with) pcipass.  '--': a guest name may begin with '-'.\n"
        'case "$2" in migrate|restore) ;; *) exit 0 ;; esac\n'
        f'exec {command} guard --libvirt-hook -- "$@"\n'
    )


def wrapper_text(tool: str, real: str) -> str:
    """The /usr/local/sbin wrapper: when a word of the command line could be
    a guarded subcommand, pcipass reads the whole line with the tool's own
    grammar (pcipass.guests.xen_argv) and refuses or allows; everything else
    goes straight to the real program, without starting Python."""
    command = " ".join(shlex.quote(a) for a in _pcipass_argv())
    words = "|".join(GUARDED_WORDS)
    real_quoted = shlex.quote(real)
    return (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        f"# {tool} save/restore/migrate of a guest holding a PCI device is refused (the\n"
        "# document's rule; Xen itself accepts the save and the restored guest hangs).\n"
        f"# A command line pcipass cannot read is refused while any guest holds one.\n"
        f"# `{tool} list` on stdin lets pcipass turn a domain id into its name.\n"
        'for word in "$@"; do\n'
        '  case "$word" in\n'
        f"    {words})\n"
        f'      {real_quoted} list 2>/dev/null | {command} guard --wrapped {tool} -- "$@" '
        "|| exit $?\n"
        "      break ;;\n"
        "  esac\n"
        "done\n"
        f'exec {real_quoted} "$@"\n'
    )


@dataclass
class HookPlan:
    edits: list[FileEdit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _ours(data: bytes | None) -> bool:
    return data is not None and MARKER.encode() in data


def find_real_tool(host: Host, tool: str) -> str:
    """Where the real xl/xm is: Debian keeps the versioned binary in
    /usr/lib/xen-VERSION/bin (its /usr/sbin/xl is itself a small wrapper)."""
    for candidate in (WRAPPED[tool], f"/usr/lib/xen/bin/{tool}"):
        if host.root.files.exists(candidate):
            return candidate
    versioned = [
        f"/usr/lib/{name}/bin/{tool}"
        for name in host.root.files.list_dir("/usr/lib")
        if name.startswith("xen-") and host.root.files.exists(f"/usr/lib/{name}/bin/{tool}")
    ]
    if versioned:
        return versioned[-1]
    return WRAPPED[tool]


def plan_install(
    host: Host, *, libvirt: bool, tools: Sequence[str], real_paths: dict[str, str] | None = None
) -> HookPlan:
    plan = HookPlan()
    real_paths = real_paths or {}
    if libvirt:
        for name in LIBVIRT_HOOKS:
            target = f"/etc/libvirt/hooks/{name}"
            current = host.root.files.read_bytes(target)
            if current is not None and not _ours(current):
                target = f"/etc/libvirt/hooks/{name}.d/pcipass"
                plan.notes.append(
                    f"/etc/libvirt/hooks/{name} exists and is not pcipass's: left as it is; "
                    f"the guard goes in {target} (libvirt 6.5 and newer runs both)"
                )
            plan.edits.append(
                plan_edit(host.root.path(target), target, libvirt_hook_text().encode(), 0o755)
            )
        plan.notes.append("libvirtd reads hooks when it starts: restart it once")
    for tool in tools:
        if tool not in WRAPPED:
            raise UsageError(f"--wrap {tool}", "pcipass wraps xl and xm only")
        real = real_paths.get(tool) or find_real_tool(host, tool)
        target = f"/usr/local/sbin/{tool}"
        current = host.root.files.read_bytes(target)
        if current is not None and not _ours(current):
            raise UsageError(
                target, "exists and is not pcipass's wrapper; not replaced", "move it away first"
            )
        if not host.root.files.exists(real):
            plan.notes.append(f"{real} not found: the wrapper will fail until {tool} is there")
        plan.edits.append(
            plan_edit(host.root.path(target), target, wrapper_text(tool, real).encode(), 0o755)
        )
    plan.edits = [e for e in plan.edits if e.changes_anything]
    return plan


def plan_uninstall(host: Host) -> HookPlan:
    plan = HookPlan()
    candidates = [f"/etc/libvirt/hooks/{n}" for n in LIBVIRT_HOOKS]
    candidates += [f"/etc/libvirt/hooks/{n}.d/pcipass" for n in LIBVIRT_HOOKS]
    candidates += [f"/usr/local/sbin/{t}" for t in WRAPPED]
    for target in candidates:
        path = host.root.path(target)
        if _ours(host.root.files.read_bytes(target)):
            plan.edits.append(plan_edit(path, target, None))
    return plan


def apply_plan(host: Host, plan: HookPlan, kind: str) -> None:
    if not plan.edits:
        return
    from pcipass.ops.files import apply_file_operation
    from pcipass.state.ledger import Ledger
    from pcipass.state.lock import StateLock

    with StateLock(host.root), Ledger.open(host.root, clock=host.clock) as ledger:
        apply_file_operation(ledger, kind, {"files": [e.display for e in plan.edits]}, plan.edits)
