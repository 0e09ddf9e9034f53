"""The persistent form of ``pcipass vfs PF N --persist``: one udev rules file.

Why a udev rule, and why on ``bind`` (docs/cli.md, "vfs"): the kernel can
create VFs only once the PF's driver is bound (``sriov_numvfs`` is ENOENT
before), and udev learns that from the ``bind`` uevent (Linux 4.14+), which
comes after the driver's probe.  An ``add`` rule runs before the driver is
loaded at coldplug and loses that race; a systemd unit would need to wait for
the driver itself and does not run again when the driver is reloaded.  The
``bind`` rule runs at every boot during coldplug, before any toolstack can
start a guest from the VFs, and again whenever the PF's driver is bound.

``DRIVER==`` keeps the rule to the PF's host driver: binding the PF to
vfio-pci (``pcipass hide``) must not try to create VFs.  ``ATTR{}=``
assignments run in order: autoprobe off, the count, autoprobe back.  Per-VF
network settings are ``RUN+=`` of ``ip link`` with an argument list (udev
splits on spaces and runs no shell); every value was validated before.

Each PF owns the lines between its own marker comments, so PFs are added,
changed and removed independently, and lines pcipass did not write are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.record import dataclass

RULES_FILE = "/etc/udev/rules.d/70-pcipass-sriov.rules"
IP = "/sbin/ip"  # /sbin/ip exists on Debian, Ubuntu, RHEL and SUSE (merged /usr or not)
HEADER = "# Written by pcipass (pcipass vfs PF N --persist); edit it with pcipass.\n"


@dataclass(frozen=True)
class PersistentVfs:
    pf: PciAddress
    count: int
    driver: str
    autoprobe_off: bool  # the VFs are for guests: no host driver may take them
    netdev: str | None = None
    ip_settings: tuple[tuple[str, ...], ...] = ()  # each: ("vf", "0", "mac", "02:...")


def _begin(pf: PciAddress) -> str:
    return f"# pcipass-vfs {pf} begin\n"


def _end(pf: PciAddress) -> str:
    return f"# pcipass-vfs {pf} end\n"


def rule_lines(entry: PersistentVfs) -> list[str]:
    match = f'ACTION=="bind", SUBSYSTEM=="pci", KERNEL=="{entry.pf}", DRIVER=="{entry.driver}", '
    if entry.autoprobe_off:
        attrs = (
            'ATTR{sriov_drivers_autoprobe}="0", '
            f'ATTR{{sriov_numvfs}}="{entry.count}", '
            'ATTR{sriov_drivers_autoprobe}="1"'
        )
    else:
        attrs = f'ATTR{{sriov_numvfs}}="{entry.count}"'
    lines = [match + attrs + "\n"]
    if entry.netdev is not None:
        for setting in entry.ip_settings:
            argv = " ".join((IP, "link", "set", "dev", entry.netdev, *setting))
            lines.append(match + f'RUN+="{argv}"\n')
    return lines


def without_pf(text: str, pf: PciAddress) -> str:
    """``text`` with the block of ``pf`` taken out (and nothing else)."""
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if line == _begin(pf):
            inside = True
            continue
        if inside and line == _end(pf):
            inside = False
            continue
        if not inside:
            out.append(line)
    return "".join(out)


def updated(current: str | None, pf: PciAddress, entry: PersistentVfs | None) -> str | None:
    """The file after setting (``entry``) or removing (None) ``pf``'s block;
    None when nothing but pcipass's header would be left."""
    text = without_pf(current or "", pf)
    if entry is not None and entry.count > 0:
        if not text:
            text = HEADER
        if not text.endswith("\n"):
            text += "\n"
        text += _begin(entry.pf) + "".join(rule_lines(entry)) + _end(entry.pf)
    if text.strip() in ("", HEADER.strip()):
        return None
    return text


def persisted_pfs(text: str | None) -> dict[str, int]:
    """PF address -> count, as the file says (for ``vfs PF`` listing and checks)."""
    result: dict[str, int] = {}
    current: str | None = None
    for line in (text or "").splitlines():
        if line.startswith("# pcipass-vfs ") and line.endswith(" begin"):
            current = line.split()[2]
        elif current is not None and 'ATTR{sriov_numvfs}="' in line:
            value = line.split('ATTR{sriov_numvfs}="', 1)[1].split('"', 1)[0]
            if value.isdigit():
                result[current] = int(value)
        elif line.endswith(" end"):
            current = None
    return result


def describe(entries: Sequence[PersistentVfs]) -> list[str]:
    return [f"{e.pf}: {e.count} VFs at every bind of {e.driver}" for e in entries]
