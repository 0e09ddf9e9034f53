# The options, requirements and notes every pcipass module shares, written once
# (modules name it with extends_documentation_fragment: pcipass.passthrough.pcipass).
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  root:
    description:
      - The root directory pcipass works under (an image, a chroot); C(/) is the running host.
    type: path
    default: /
  pcipass_command:
    description:
      - The command starting pcipass, as a list (or a string split like a command line, never
        run by a shell). Default C(pcipass) on PATH, else
        C(python3 /usr/local/lib/pcipass/pcipass.pyz) as installed by the role
        P(pcipass.passthrough.install#role).
    type: raw
requirements:
  - pcipass on the target (see the role P(pcipass.passthrough.install#role)).
"""
