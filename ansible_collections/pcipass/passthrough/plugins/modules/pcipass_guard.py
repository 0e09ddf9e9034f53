#!/usr/bin/python
# Ansible reads DOCUMENTATION, EXAMPLES and RETURN before the imports (its module format).
# ruff: noqa: E402
# Copyright: pcipass developers
# GNU General Public License v2.0 or later (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Ansible module: install or remove pcipass's save/migrate guard (rule PP003)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pcipass_guard
short_description: Install or remove pcipass's libvirt hook and xl/xm save/migrate wrappers
version_added: "0.1.0"
description:
  - Runs C(pcipass guard-install) on the target. A guest that holds a passed-through PCI device
    cannot be saved, restored or migrated (rule PP003); the guard makes libvirt (C(hooks/qemu),
    C(hooks/libxl), or C(hooks/*.d/pcipass) beside another hook) and the C(xl)/C(xm) commands
    (wrappers in C(/usr/local/sbin)) refuse it.
  - Idempotent; an installed guard reports C(changed=false).
  - Check mode runs pcipass with C(--dry-run); diff mode shows each hook and wrapper file.
author:
  # No GitHub handle: the form validate-modules documents for that.
  - pcipass developers (!UNKNOWN)
options:
  state:
    description: C(present) installs, C(absent) removes every hook and wrapper pcipass installed.
    type: str
    choices: [present, absent]
    default: present
  libvirt:
    description: Install the libvirt hooks.
    type: bool
    default: true
  wrap:
    description: Install wrappers for these commands.
    type: list
    elements: str
    choices: [xl, xm]
    default: []
  real:
    description: The real xl/xm the wrappers run (default found under C(/usr/sbin) or
      C(/usr/lib/xen-*/bin)).
    type: path
notes:
  - libvirtd reads its hooks when it starts; restart it once after the first install.
attributes:
  check_mode:
    support: full
    description: Runs pcipass with C(--dry-run); nothing is changed.
  diff_mode:
    support: full
    description: Each hook and wrapper file, created or removed.
  platform:
    support: full
    platforms: posix
    description: Linux hosts (Xen dom0 or KVM) and images of them.
extends_documentation_fragment:
  - pcipass.passthrough.pcipass
"""

EXAMPLES = r"""
- name: Guard libvirt guests
  pcipass.passthrough.pcipass_guard:
    libvirt: true
  notify: Restart libvirtd

- name: Guard xl save and migrate on a Xen dom0 without libvirt
  pcipass.passthrough.pcipass_guard:
    libvirt: false
    wrap: [xl]

- name: Remove the guard
  pcipass.passthrough.pcipass_guard:
    state: absent
"""

RETURN = r"""
files:
  description: The files written or removed, each with its unified diff.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/libvirt/hooks/qemu", "diff": "--- /dev/null..."}]
notes:
  description: What to do next (restart libvirtd).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pcipass.passthrough.plugins.module_utils.pcipass_api import (
    COMMON_ARGS,
    file_diffs,
    run_pcipass,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "libvirt": {"type": "bool", "default": True},
            "wrap": {"type": "list", "elements": "str", "choices": ["xl", "xm"], "default": []},
            "real": {"type": "path"},
            **COMMON_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    args = ["guard-install"]
    if p["state"] == "absent":
        args.append("--uninstall")
    else:
        if not p["libvirt"] and not p["wrap"]:
            module.fail_json(msg="pcipass: pcipass_guard: say libvirt: true and/or wrap: [xl]")
        if p["libvirt"]:
            args.append("--libvirt")
        for tool in p["wrap"]:
            args += ["--wrap", tool]
        if p["real"]:
            args += ["--real", p["real"]]
    result = run_pcipass(module, args, dry_run=module.check_mode)
    files = result.get("files") or []
    out = {"changed": bool(files), "files": files, "notes": result.get("notes") or []}
    if module._diff:
        out["diff"] = file_diffs(files)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
