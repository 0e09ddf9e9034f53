"""The VF boot rule's drift, for ``pcipass check`` (PP010 ``vf-count``).

Apart from :mod:`pcipass.ops.vfs` so that every ``check`` on a host without
the rule reads one file and loads nothing of the VF machinery (issue #13).
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host import sriov
from pcipass.persist import udev_vfs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pcipass.host.context import Host
    from pcipass.policy.verdict import Finding


def vf_drift_findings(host: Host, addresses: Sequence[PciAddress]) -> list[Finding]:
    """PP010: a PF whose VF count now differs from the one its boot rule gives it."""
    from pcipass.policy.verdict import Finding, Severity

    text = host.root.files.read_bytes(udev_vfs.RULES_FILE)
    if text is None:
        return []
    found = []
    for name, count in udev_vfs.persisted_pfs(text.decode("utf-8", "replace")).items():
        try:
            address = PciAddress.parse(name)
        except AddressError:
            continue
        if addresses and address not in addresses:
            continue
        state = sriov.read_pf(host, address)
        now = "is not an SR-IOV PF on this host" if state is None else f"has {state.num} now"
        if state is not None and state.num == count:
            continue
        found.append(
            Finding(
                "PP010",
                Severity.WARN,
                name,
                f"its boot rule gives it {count} VFs; it {now}",
                f"pcipass vfs {name} {count} (now), or pcipass vfs {name} N --persist (at boot)",
                code="vf-count",
                path=udev_vfs.RULES_FILE,
            )
        )
    return found
