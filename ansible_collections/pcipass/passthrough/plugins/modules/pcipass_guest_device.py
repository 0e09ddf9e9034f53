#!/usr/bin/python
# Ansible reads DOCUMENTATION, EXAMPLES and RETURN before the imports (its module format).
# ruff: noqa: E402
# Copyright: pcipass developers
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module: assign a hidden PCI device to a guest, or take it back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcipass_guest_device
short_description: Attach a PCI device to a Xen or KVM guest, or detach it
version_added: "0.1.0"
description:
  - Runs C(pcipass attach) or C(pcipass detach) on the target; the guest is found by name among
    the xm, xl and libvirt configurations, or given as a file (O(config)) or a libvirt URI
    (O(connect)); O(live) also hotplugs into the running guest.
  - Idempotent; a device the configuration already lists (or no longer lists) reports
    C(changed=false).
  - A refusal (PP002 not hidden, PP004 paravirtualized guest, PP102 IOMMU group...) fails the task
    with the rule id, the message and the remedy; nothing is changed.
  - Check mode runs pcipass with C(--dry-run); diff mode shows the guest configuration diff and,
    with O(hide), the driver binding changes.
author:
  # No GitHub handle: the form validate-modules documents for that.
  - pcipass developers (!UNKNOWN)
options:
  address:
    description: The PCI address (C(0000:09:00.0)).
    type: str
    required: true
  guest:
    description: The guest's name.
    type: str
    required: true
  state:
    description: C(present) attaches, C(absent) detaches.
    type: str
    choices: [present, absent]
    default: present
  config:
    description: The guest's configuration file (xm, xl.cfg or libvirt XML), when not found by name.
    type: path
  connect:
    description: A libvirt URI (C(qemu:///system)); pcipass then goes through libvirt-python.
    type: str
  live:
    description: Also hotplug into (or unplug from) the running guest.
    type: bool
    default: false
  hide:
    description:
      - Hide the device first when it is not hidden (attach only). With it, a check-mode pass
        predicts the whole change even when an earlier task would have hidden the device.
    type: bool
    default: false
  accept_pv_dma_risk:
    description: Accept PP004 (a paravirtualized guest can reach dom0's DMA address space).
    type: bool
    default: false
  guest_os:
    description: The guest's OS when pcipass cannot read it (C(rhel5.4), C(rhel6)); rule PP005.
    type: str
notes:
  - Needs root on the target (C(become=true)) unless O(root) is a tree the user may write.
attributes:
  check_mode:
    support: full
    description: Runs pcipass with C(--dry-run); nothing is changed.
  diff_mode:
    support: full
    description: The guest configuration diff and the binding changes.
  platform:
    support: full
    platforms: posix
    description: Linux hosts (Xen dom0 or KVM) and images of them.
extends_documentation_fragment:
  - pcipass.passthrough.pcipass
"""

EXAMPLES = r"""
- name: Give the NIC to an HVM guest (xl.cfg found by name), hiding it first
  pcipass.passthrough.pcipass_guest_device:
    address: "0000:09:00.0"
    guest: web1
    hide: true

- name: Give the NIC to a RHEL 5 paravirtualized guest
  pcipass.passthrough.pcipass_guest_device:
    address: "0000:09:00.0"
    guest: rhel5pv
    accept_pv_dma_risk: true
    guest_os: rhel5.4

- name: Hotplug a VF into a running libvirt guest
  pcipass.passthrough.pcipass_guest_device:
    address: "0000:02:10.0"
    guest: win10
    connect: qemu:///system
    live: true

- name: Take the device back from the guest
  pcipass.passthrough.pcipass_guest_device:
    address: "0000:09:00.0"
    guest: rhel5pv
    state: absent
"""

RETURN = r"""
result:
  description: pcipass's attach/detach result (config, config_kind, diff, findings, notes,
    commands run, hide result); see docs/json.md of pcipass.
  returned: success
  type: dict
  sample: {"action": "attach", "address": "0000:09:00.0", "guest": "rhel5pv",
           "config": "/etc/xen/rhel5pv", "config_kind": "xm", "changed": true}
findings:
  description: Warnings and notes from pcipass's rules.
  returned: always
  type: list
  elements: dict
rule:
  description: On a refusal, the rule id (C(PP002)...); with C(findings), C(remedy) and C(msg).
  returned: failed
  type: str
  sample: PP002
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pcipass.passthrough.plugins.module_utils.pcipass_api import (
    COMMON_ARGS,
    binding_diff,
    run_pcipass,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "required": True},
            "guest": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "config": {"type": "path"},
            "connect": {"type": "str"},
            "live": {"type": "bool", "default": False},
            "hide": {"type": "bool", "default": False},
            "accept_pv_dma_risk": {"type": "bool", "default": False},
            "guest_os": {"type": "str"},
            **COMMON_ARGS,
        },
        mutually_exclusive=[("config", "connect")],
        supports_check_mode=True,
    )
    p = module.params
    attach = p["state"] == "present"
    # "--" ends the options: a guest named like an option stays a name.
    args = ["attach" if attach else "detach"]
    if p["config"]:
        args += ["--config", p["config"]]
    if p["connect"]:
        args += ["--connect", p["connect"]]
    if p["live"]:
        args.append("--live")
    if attach and p["hide"]:
        args.append("--hide")
    if attach and p["accept_pv_dma_risk"]:
        args.append("--accept-pv-dma-risk")
    if attach and p["guest_os"]:
        args += ["--guest-os", p["guest_os"]]
    args += ["--", p["address"], p["guest"]]
    result = run_pcipass(module, args, dry_run=module.check_mode)

    hide = result.get("hide") or {}
    changed = bool(result.get("changed")) or bool(hide.get("steps"))
    out = {
        "changed": changed,
        "findings": result.get("findings") or [],
        "result": result,
    }
    if module._diff:
        diff = [{"prepared": result["diff"]}] if result.get("diff") else []
        out["diff"] = diff + binding_diff(p["root"], hide)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
