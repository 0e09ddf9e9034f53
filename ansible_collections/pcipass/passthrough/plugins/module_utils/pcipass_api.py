# Copyright: pcipass developers
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""The one place the modules call pcipass.

Every module goes through ``run_pcipass``: it runs pcipass's command line with
``--json`` (and ``--dry-run`` in check mode) as an argument list through
``AnsibleModule.run_command`` (never a shell) and parses the JSON that
docs/json.md defines.  Why the JSON contract and not pcipass's Python
modules: the JSON schema is versioned and only ever grows, while the library's
internal layout (ops, toolstacks, transactions) is free to move; the target
also needs only pcipass itself (a package or the one-file ``pcipass.pyz``),
not a pcipass importable by the Python Ansible runs modules with.

A refusal (exit 3, ``{"error", "rule", "findings"}``) fails the task with the
rule id, the message and the remedy in the result; pcipass has then changed
nothing (docs/cli.md: exit 3).
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

# The install role puts the one-file build here (roles/install/defaults).
PYZ_PATH = "/usr/local/lib/pcipass/pcipass.pyz"

# Options every module takes; merged into each module's argument_spec.
COMMON_ARGS: dict[str, dict[str, Any]] = {
    "root": {"type": "path", "default": "/"},
    # A command, not a secret (validate-modules asks because of its name).
    "pcipass_command": {"type": "raw", "no_log": False},
}

# pcipass's exit code for a refusal (docs/cli.md).
EXIT_REFUSED = 3


def pcipass_argv(module: Any) -> list[str]:
    """The command that starts pcipass on the target: the ``pcipass_command``
    option (a list, or a string split like a command line, never given to a
    shell), else ``pcipass`` on PATH, else the install role's pcipass.pyz."""
    command = module.params.get("pcipass_command")
    if command:
        if isinstance(command, (list, tuple)):
            return [str(word) for word in command]
        return shlex.split(str(command))
    found = module.get_bin_path("pcipass")
    if found:
        return [found]
    if os.path.exists(PYZ_PATH):
        python = module.get_bin_path("python3") or "python3"
        return [python, PYZ_PATH]
    module.fail_json(
        msg="pcipass: target: pcipass is not installed "
        "(run the role pcipass.passthrough.install, or set pcipass_command)"
    )
    return []  # not reached: fail_json exits


def run_pcipass(
    module: Any,
    args: list[str],
    *,
    dry_run: bool = False,
    ok_codes: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    """Run ``pcipass --root ROOT --json ARGS [--dry-run]`` and return its JSON.

    A refusal or any other error fails the task (``fail_json`` does not
    return).  ``ok_codes``: exit codes whose JSON is a result, not an error
    (``check`` exits 1 when it found warnings)."""
    result, error = try_pcipass(module, args, dry_run=dry_run, ok_codes=ok_codes)
    if error is not None:
        fail_from_error(module, error)
    return result


def try_pcipass(
    module: Any,
    args: list[str],
    *,
    dry_run: bool = False,
    ok_codes: tuple[int, ...] = (0,),
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Like ``run_pcipass``, but a JSON error object (a refusal, exit 3) is
    returned as the second item for the caller to judge; output that is not
    JSON still fails the task."""
    # --dry-run right after the command: ARGS may end with "--" and operands.
    command = [args[0], "--dry-run", *args[1:]] if dry_run else list(args)
    argv = [*pcipass_argv(module), "--root", module.params["root"], "--json", *command]
    rc, out, err = module.run_command(argv, check_rc=False)
    data = _parse(out)
    if isinstance(data, dict) and "error" in data:
        return {}, {**data, "rc": rc, "stderr": err, "cmd": argv}
    if rc not in ok_codes or not isinstance(data, dict):
        module.fail_json(
            msg=f"pcipass: {args[0]}: exited {rc} without a JSON result "
            "(see stderr; pcipass --version on the target)",
            rc=rc,
            stdout=out,
            stderr=err,
            cmd=argv,
        )
    return data, None  # type: ignore[return-value]


def _parse(out: str) -> object:
    try:
        return json.loads(out)
    except ValueError:
        return None


def fail_from_error(module: Any, error: dict[str, Any]) -> None:
    """Fail the task with pcipass's error object: one-line message as pcipass
    prints it, plus rule, findings and remedy as separate keys for
    ``failed_when``/``rescue`` to test."""
    subject = error.get("subject") or "pcipass"
    problem = error.get("problem") or error.get("error")
    remedy = error.get("remedy")
    msg = f"pcipass: {subject}: {problem}"
    if remedy:
        msg += f" ({remedy})"
    findings = error.get("findings") or []
    refusals = [f for f in findings if f.get("severity") == "refuse"]
    module.fail_json(
        msg=msg,
        rc=error.get("rc"),
        error=error.get("error"),
        rule=error.get("rule"),
        rules=sorted({str(f.get("rule")) for f in refusals or findings if f.get("rule")}),
        subject=subject,
        problem=problem,
        remedy=remedy,
        refused=error.get("rc") == EXIT_REFUSED,
        findings=findings,
        stderr=error.get("stderr"),
        cmd=error.get("cmd"),
    )


def file_diffs(files: list[dict[str, Any]]) -> list[dict[str, str]]:
    """pcipass's unified diffs as Ansible diff entries (``prepared``: shown
    as they are by ``--diff``)."""
    return [{"prepared": f["diff"]} for f in files if f.get("diff")]


def binding_diff(root: str, now: dict[str, Any]) -> list[dict[str, str]]:
    """The driver binding changes of a ``now`` result as a diff entry: the
    sysfs steps pcipass runs (or would run) and, once run, each device's
    driver before and after."""
    steps = now.get("steps") or []
    changed = [d for d in now.get("devices") or [] if d.get("changed")]
    if not steps and not changed:
        return []
    lines = [f"driver bindings under {root}:"]
    for device in changed:
        before = device.get("original_driver") or "none"
        lines.append(f"  {device['address']}: {before} -> {device.get('driver') or 'none'}")
    verb = "would run" if now.get("dry_run") else "ran"
    lines += [f"  {verb}: {step}" for step in steps]
    return [{"prepared": "\n".join(lines) + "\n"}]
