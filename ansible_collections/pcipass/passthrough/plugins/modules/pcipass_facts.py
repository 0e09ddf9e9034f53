#!/usr/bin/python
# Ansible reads DOCUMENTATION, EXAMPLES and RETURN before the imports (its module format).
# ruff: noqa: E402
# Copyright: pcipass developers
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module: pcipass's inventory, findings and ledger as host facts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcipass_facts
short_description: PCI devices, pcipass's findings and what pcipass holds, as host facts
version_added: "0.1.0"
description:
  - Runs C(pcipass list --json), C(pcipass status --json) and, with O(check), C(pcipass check
    --json) on the target and sets the fact C(pcipass) (read-only; nothing is changed).
author:
  # No GitHub handle: the form validate-modules documents for that.
  - pcipass developers (!UNKNOWN)
options:
  check:
    description: Also run pcipass's rules over everything it holds and the persistent
      configuration (C(findings) in the facts).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Read-only; there is nothing to show.
  facts:
    support: full
    description: Sets the fact C(pcipass).
  platform:
    support: full
    platforms: posix
    description: Linux hosts (Xen dom0 or KVM) and images of them.
extends_documentation_fragment:
  - pcipass.passthrough.pcipass
"""

EXAMPLES = r"""
- name: Read what pcipass sees
  pcipass.passthrough.pcipass_facts:

- name: Hidden devices on this host
  ansible.builtin.debug:
    msg: "{{ ansible_facts.pcipass.devices | selectattr('hidden') | map(attribute='address') }}"

- name: Stop when pcipass finds a refusal on a host
  ansible.builtin.assert:
    that: >-
      ansible_facts.pcipass.findings
      | selectattr('severity', 'equalto', 'refuse') | list | length == 0
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: complex
  contains:
    pcipass:
      description:
        - C(devices) and C(problems) as in C(pcipass list --json); C(status) as in
          C(pcipass status --json) (hidden, owners, open_operations, hotplug); C(findings) and
          C(checked) from C(pcipass check --json) (empty without O(check)); C(schema_version).
      returned: always
      type: dict
      sample: {"schema_version": 1, "devices": [{"address": "0000:09:00.0", "driver": "bnx2",
               "hidden": false}], "problems": [], "status": {"hidden": [], "owners": []},
               "findings": [], "checked": []}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pcipass.passthrough.plugins.module_utils.pcipass_api import (
    COMMON_ARGS,
    run_pcipass,
)

# ``pcipass check`` exits 1 on warnings and 3 on refusals: both are facts here.
CHECK_RESULT_CODES = (0, 1, 3)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"check": {"type": "bool", "default": True}, **COMMON_ARGS},
        supports_check_mode=True,
    )
    inventory = run_pcipass(module, ["list"])
    status = run_pcipass(module, ["status"])
    checked: dict[str, object] = {"findings": [], "checked": []}
    if module.params["check"]:
        checked = run_pcipass(module, ["check"], ok_codes=CHECK_RESULT_CODES)
    facts = {
        "schema_version": inventory.get("schema_version"),
        "devices": inventory.get("devices") or [],
        "problems": inventory.get("problems") or [],
        "status": status,
        "findings": checked.get("findings") or [],
        "checked": checked.get("checked") or [],
    }
    module.exit_json(changed=False, ansible_facts={"pcipass": facts})


if __name__ == "__main__":
    main()
