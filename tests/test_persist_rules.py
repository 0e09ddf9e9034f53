"""PP009/PP010 come from policy/persist_rules.py with the same ids and words.

The persistence rules moved from ``persist/`` into ``policy/`` (issue #12).
``tests/data/persist_findings.json`` holds what the rules said before the move
for one crafted host that trips most of them (modprobe files with duplicate,
unparsable, shadowed and RHEL 5 lines on a xen-pciback kernel with a built-in
vfio-pci; grub files with a replaced variable, an unreadable value and
duplicate or bad hide values; a running command line; both places hiding).
The rules must still say exactly that, finding for finding.
"""

from __future__ import annotations

import json
from pathlib import Path

from pcipass.host.platform import detect_platform
from pcipass.host.root import HostRoot
from pcipass.persist import cmdline
from pcipass.persist.modprobe import read_persistent_hides
from pcipass.policy import persist_rules

RELEASE = "6.1.0-26-amd64"
EXPECTED = Path(__file__).parent / "data" / "persist_findings.json"

MODPROBE = {
    "/etc/modprobe.d/old-rhel5.conf": b"alias pciback-x xen-pciback\n"
    b"install e1000 /sbin/modprobe pciback; /sbin/modprobe --ignore-install e1000\n"
    b"options pciback hide=(0000:00:19.0)\n",
    "/etc/modprobe.conf": b"options xen-pciback hide=(0000:00:04.0)\n",
    "/etc/modprobe.d/vfio.conf": b"options vfio_pci ids=8086:10d3,zzzz\n",
    "/etc/modprobe.d/a.conf": b"options xen-pciback hide=(0000:01:00.0)\n"
    b"options xen_pciback hide=(0000:02:00.0)(bogus\n",
    "/etc/modprobe.d/10-user.conf": b"softdep e1000 pre: other\ninstall e1000 /bin/true\n",
    "/etc/modprobe.d/60-late.conf": b"softdep e1000 pre: xen-pciback\n"
    b"install e1000 /sbin/modprobe xen-pciback\n",
}
GRUB = {
    "/etc/default/grub": b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:09:00.0) '
    b'xen-pciback.hide=(0000:0a:00.0) vfio-pci.ids=zz"\n'
    b'GRUB_CMDLINE_LINUX_DEFAULT="$(cat x)"\n',
    "/etc/default/grub.d/50-cloud.cfg": b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:0b:00.0) '
    b'console=ttyS0"\n',
}
RUNNING = "xen-pciback.hide=(0000:01:00.0) xen-pciback.hide=0000:02:00.0"


def test_the_persistence_rules_say_what_they_said_before_the_move(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    moddir = tmp_path / "lib/modules" / RELEASE
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("kernel/drivers/xen/xen-pciback/xen-pciback.ko:\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/vfio/pci/vfio-pci.ko\n")
    platform = detect_platform(HostRoot.at(tmp_path), release=RELEASE)
    state = read_persistent_hides(MODPROBE)
    configured = cmdline.read_configured(GRUB, xen=True)
    running = cmdline.parse_kernel_cmdline(RUNNING)
    found = [
        *persist_rules.findings(state, platform),
        *persist_rules.configured_findings(configured.problems, configured.hides),
        *persist_rules.cmdline_findings(running),
        *persist_rules.cross_findings(state, configured.hides),
    ]
    assert [f.to_json() for f in found] == json.loads(EXPECTED.read_text())
