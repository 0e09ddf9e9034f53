#!/usr/bin/python
# Ansible reads DOCUMENTATION, EXAMPLES and RETURN before the imports (its module format).
# ruff: noqa: E402
# Copyright: pcipass developers
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module: hide PCI devices from the host, or give them back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcipass_device
short_description: Hide PCI devices from the host (pciback, vfio-pci) or give them back
version_added: "0.1.0"
description:
  - Runs C(pcipass hide) or C(pcipass unhide) on the target, now (a sysfs rebind) and/or at every
    boot (modprobe configuration, the kernel command line), after pcipass's rules.
  - Idempotent; a device already in the requested state reports C(changed=false).
  - A device pcipass refuses (for example PP001, the host uses it; PP102, its IOMMU group is not
    taken whole) fails the task with the rule id, the message and the remedy; nothing is changed.
  - Check mode runs pcipass with C(--dry-run) and predicts C(changed); diff mode shows the
    configuration file diffs and the driver binding changes.
author:
  # No GitHub handle: the form validate-modules documents for that.
  - pcipass developers (!UNKNOWN)
options:
  address:
    description:
      - PCI addresses (C(0000:09:00.0)); a short C(09:00.0) means domain 0000.
    type: list
    elements: str
    required: true
    aliases: [addresses]
  state:
    description:
      - C(hidden) binds the devices to the stub driver (pciback or vfio-pci); C(host) gives them
        back to their own drivers.
    type: str
    choices: [hidden, host]
    default: hidden
  now:
    description:
      - Rebind at once through sysfs.
    type: bool
    default: true
  persist:
    description:
      - Hide (or stop hiding) at every boot.
    type: bool
    default: false
  backend:
    description:
      - The stub driver; default pciback on a Xen dom0, vfio-pci otherwise.
    type: str
    choices: [pciback, vfio]
  platform:
    description:
      - How to persist; default detected from the host (RHEL 5 C(modprobe.conf), C(modprobe.d),
        or the kernel command line).
    type: str
    choices: [rhel5, modprobe.d, cmdline]
  group:
    description:
      - Also hide the other devices of each device's IOMMU group (bridges excepted).
    type: bool
    default: false
  regenerate:
    description:
      - After a persistent change, regenerate the initramfs or the boot loader configuration
        pcipass names (C(mkinitrd), C(update-initramfs), C(grub2-mkconfig)...).
    type: bool
    default: false
notes:
  - Needs root on the target (C(become=true)) unless O(root) is a tree the user may write.
  - Runs pcipass's JSON interface (docs/json.md of pcipass), not its library internals.
attributes:
  check_mode:
    support: full
    description: Runs pcipass with C(--dry-run); nothing is changed.
  diff_mode:
    support: full
    description: The file diffs and the driver binding changes.
  platform:
    support: full
    platforms: posix
    description: Linux hosts (Xen dom0 or KVM) and images of them.
extends_documentation_fragment:
  - pcipass.passthrough.pcipass
"""

EXAMPLES = r"""
- name: Hide the second NIC from the host now and at every boot
  pcipass.passthrough.pcipass_device:
    address: "0000:09:00.0"
    now: true
    persist: true
  become: true

- name: Hide a GPU with its audio function for vfio-pci
  pcipass.passthrough.pcipass_device:
    address: ["0000:01:00.0", "0000:01:00.1"]
    backend: vfio
    persist: true
    regenerate: true
  become: true

- name: Give the NIC back to the host
  pcipass.passthrough.pcipass_device:
    address: "0000:09:00.0"
    state: host
    persist: true

- name: Prepare a disk image (nothing of the running host is touched)
  pcipass.passthrough.pcipass_device:
    address: "0000:09:00.0"
    now: false
    persist: true
    root: /mnt/image
"""

RETURN = r"""
now:
  description: pcipass's C(now) result (devices with their driver before and after, sysfs steps,
    findings); see docs/json.md, C(hide --json).
  returned: when O(now=true)
  type: dict
  sample: {"dry_run": false, "devices": [{"address": "0000:09:00.0", "driver": "pciback",
           "original_driver": "bnx2", "changed": true}], "steps": [], "findings": []}
persist:
  description: pcipass's C(persist) result (platform, method, files with their diffs, notes,
    commands to regenerate the initramfs).
  returned: when O(persist=true)
  type: dict
  sample: {"dry_run": false, "method": "rhel5", "files": [{"path": "/etc/modprobe.conf",
           "diff": "..."}], "notes": [], "regenerate": [], "findings": []}
findings:
  description: Warnings and notes from pcipass's rules (rule, name, severity, subject, message,
    remedy).
  returned: always
  type: list
  elements: dict
rule:
  description: On a refusal, the rule id (C(PP001)...); with C(findings), C(remedy) and C(msg).
  returned: failed
  type: str
  sample: PP001
remedy:
  description: On failure, what to do about it.
  returned: failed
  type: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pcipass.passthrough.plugins.module_utils.pcipass_api import (
    COMMON_ARGS,
    binding_diff,
    fail_from_error,
    file_diffs,
    run_pcipass,
    try_pcipass,
)

# ``status --json``'s ``how`` values that satisfy now/persist.
HOW_NOW = ("now", "both")
HOW_PERSIST = ("persist", "both")


def already_hidden_for_a_guest(module: AnsibleModule, error: dict[str, Any]) -> bool:
    """True when pcipass refused ``hide`` only because each device is hidden
    and assigned to a guest (PP101, one owner at a time) and its ledger
    already holds it the way asked: the state is reached, nothing to do.
    pcipass judges re-hiding an owned device as taking it again; for a
    desired-state module it is the second run of the same play."""
    p = module.params
    refusals = [f for f in error.get("findings") or [] if f.get("severity") == "refuse"]
    if p["state"] != "hidden" or not refusals or any(f.get("rule") != "PP101" for f in refusals):
        return False
    status = run_pcipass(module, ["status"])
    how = {entry.get("address"): entry.get("how") for entry in status.get("hidden") or []}
    for address in canonical(p["address"]):
        if address not in how:
            return False
        if p["now"] and how[address] not in HOW_NOW:
            return False
        if p["persist"] and how[address] not in HOW_PERSIST:
            return False
    return True


def canonical(addresses: list[str]) -> list[str]:
    """``09:00.0`` and ``0000:09:00.0`` alike, lower case, as pcipass prints them."""
    return [a.lower() if a.count(":") == 2 else f"0000:{a.lower()}" for a in addresses]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "address": {
                "type": "list",
                "elements": "str",
                "required": True,
                "aliases": ["addresses"],
            },
            "state": {"type": "str", "choices": ["hidden", "host"], "default": "hidden"},
            "now": {"type": "bool", "default": True},
            "persist": {"type": "bool", "default": False},
            "backend": {"type": "str", "choices": ["pciback", "vfio"]},
            "platform": {"type": "str", "choices": ["rhel5", "modprobe.d", "cmdline"]},
            "group": {"type": "bool", "default": False},
            "regenerate": {"type": "bool", "default": False},
            **COMMON_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    if not p["now"] and not p["persist"]:
        module.fail_json(msg="pcipass: pcipass_device: say now, persist, or both")
    args = ["hide" if p["state"] == "hidden" else "unhide", *p["address"]]
    if p["now"]:
        args.append("--now")
    if p["persist"]:
        args.append("--persist")
    if p["backend"] and p["state"] == "hidden":
        args += ["--backend", p["backend"]]
    if p["platform"]:
        args += ["--platform", p["platform"]]
    if p["group"] and p["state"] == "hidden":
        args.append("--group")
    if p["regenerate"]:
        args.append("--regenerate")
    result, error = try_pcipass(module, args, dry_run=module.check_mode)
    if error is not None:
        if already_hidden_for_a_guest(module, error):
            module.exit_json(changed=False, findings=[], now=None, persist=None)
        fail_from_error(module, error)

    now = result.get("now") or {}
    persist = result.get("persist") or {}
    # Changed: a device was (or would be) rebound, or a file was (or would
    # be) written.  The same JSON keys answer in check mode and for real,
    # so the prediction and the run cannot disagree on what counts.
    rebinds = bool(now.get("steps")) or any(d.get("changed") for d in now.get("devices") or [])
    files = persist.get("files") or []
    findings = list(now.get("findings") or [])
    findings += [f for f in persist.get("findings") or [] if f not in findings]
    out = {
        "changed": rebinds or bool(files),
        "findings": findings,
        "now": result.get("now"),
        "persist": result.get("persist"),
    }
    if module._diff:
        out["diff"] = file_diffs(files) + binding_diff(p["root"], now)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
