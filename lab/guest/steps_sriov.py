"""KVM SR-IOV scenario steps (issue 17 item 6), run in the L1 guest by agent.py.

QEMU 7.2 emulates an NVMe controller with SR-IOV (``nvme-subsys`` + ``nvme,sriov_max_vfs=2``).
On L1's real kernel pcipass creates the VFs through ``sriov_numvfs`` with the PF's
``sriov_drivers_autoprobe`` off (so the nvme driver does not probe the VFs, whose secondary
controllers are offline), hides one to vfio-pci, refuses to remove VFs while one is hidden,
removes them, and writes the persistent form (a udev ``bind`` rule).  L1 has no udevd: the
second boot plays udev for the PF's ``bind`` event, applying the rule's ``ATTR{}`` assignments
in order, as udev would (the same way the Xen lab plays grub-mkconfig).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from registry import plan, step
from steplib import StepFailed, driver, emit_file, expect_driver, must, pcipass, read, wait_for
from topology import KVM_NVME_PF, KVM_NVME_VFS

SYS = Path("/sys/bus/pci/devices")
RULES = "/etc/udev/rules.d/70-pcipass-sriov.rules"


def vfs_now() -> list[str]:
    pf = SYS / KVM_NVME_PF
    links = sorted(
        (int(n[6:]), os.path.basename(os.readlink(pf / n)))
        for n in os.listdir(pf)
        if n.startswith("virtfn") and n[6:].isdigit()
    )
    return [bdf for _, bdf in links]


@step("nvme-pf", timeout=90)
def nvme_pf() -> str:
    if not (SYS / KVM_NVME_PF).exists():
        raise StepFailed(f"no {KVM_NVME_PF}: QEMU's nvme PF is not where the topology says")
    must(["/sbin/modprobe", "nvme"])
    wait_for("nvme to bind the PF", lambda: driver(KVM_NVME_PF) == "nvme", 30)
    total = read(SYS / KVM_NVME_PF / "sriov_totalvfs")
    if total != str(KVM_NVME_VFS):
        raise StepFailed(f"sriov_totalvfs {total!r}, expected {KVM_NVME_VFS}")
    return (
        f"{KVM_NVME_PF} on nvme, sriov_totalvfs {total}, offset "
        f"{read(SYS / KVM_NVME_PF / 'sriov_offset')} stride "
        f"{read(SYS / KVM_NVME_PF / 'sriov_stride')} vf id "
        f"{read(SYS / KVM_NVME_PF / 'sriov_vf_device')}"
    )


@step("vfs-refuse-too-many", needs=("nvme-pf",))
def vfs_refuse_too_many() -> str:
    res = pcipass("vfs", KVM_NVME_PF, str(KVM_NVME_VFS + 1), expect=3)
    if "PP125" not in res.text or vfs_now():
        raise StepFailed(f"not refused with PP125, or VFs appeared: {res.tail()}")
    return res.tail(1)


@step("vfs-create", needs=("nvme-pf",))
def vfs_create() -> str:
    dry = pcipass("vfs", KVM_NVME_PF, str(KVM_NVME_VFS), "--dry-run", "--json").json()
    predicted = next((n for n in dry.get("notes", []) if n.startswith("VFs will be")), "")
    if vfs_now():
        raise StepFailed("--dry-run created VFs")
    doc = pcipass("vfs", KVM_NVME_PF, str(KVM_NVME_VFS), "--json").json()
    vfs = vfs_now()
    if len(vfs) != KVM_NVME_VFS or read(SYS / KVM_NVME_PF / "sriov_numvfs") != str(KVM_NVME_VFS):
        raise StepFailed(f"expected {KVM_NVME_VFS} VFs, sysfs shows {vfs}")
    if predicted and predicted != "VFs will be: " + ", ".join(vfs):
        raise StepFailed(f"dry run said {predicted!r}, the kernel made {vfs}")
    bound = {vf: driver(vf) for vf in vfs}
    if any(bound.values()):
        raise StepFailed(f"a host driver took a VF despite autoprobe off: {bound}")
    if read(SYS / KVM_NVME_PF / "sriov_drivers_autoprobe") != "1":
        raise StepFailed("sriov_drivers_autoprobe not put back to 1")
    listed = [v["address"] for v in doc.get("vfs", [])]
    if listed != vfs:
        raise StepFailed(f"pcipass lists {listed}, sysfs {vfs}")
    return f"VFs {vfs} exist, no driver bound; autoprobe back to 1; {predicted or 'no prediction'}"


@step("vf-hide-vfio", needs=("vfs-create",))
def vf_hide_vfio() -> str:
    vf = vfs_now()[0]
    pcipass("hide", "--now", "--backend", "vfio", vf)
    expect_driver(vf, "vfio-pci", "after hide --now of a VF")
    group = os.path.basename(os.readlink(SYS / vf / "iommu_group"))
    node = Path("/dev/vfio") / group
    if not node.exists():
        raise StepFailed(f"{node} missing after the VF went to vfio-pci")
    return f"{vf} on vfio-pci, {node} exists"


L2_LOG = "/tmp/l2-sriov-console.log"
L2_OUT = "/tmp/l2-sriov-qemu.out"


def l2_lists(vendor_device: str) -> bool:
    lists = re.findall(r"@@DOMU pci=\[([^\]]*)\]", read(L2_LOG))
    return bool(lists) and vendor_device in lists[-1]


@step("vf-in-nested-l2", needs=("vf-hide-vfio",), timeout=480)
def vf_in_nested_l2() -> str:
    """A nested QEMU given the hidden VF (-device vfio-pci) boots an L2 that lists it: a VF
    pcipass created, passed through on a real kernel.  Its NVMe secondary controller is offline
    (no `nvme virt-mgmt` here), so the L2 sees the function, not a usable disk."""
    vf = vfs_now()[0]
    vf_id = "0x1b36:0x" + read(SYS / KVM_NVME_PF / "sriov_vf_device").zfill(4)
    argv = [
        "qemu-system-x86_64", "-name", "l2sriov", "-accel", "tcg", "-machine", "pc",
        "-cpu", "qemu64", "-m", "192", "-nodefaults", "-display", "none", "-monitor", "none",
        "-no-reboot", "-serial", f"file:{L2_LOG}", "-L", "/usr/share/qemu",
        "-kernel", "/l2/vmlinuz", "-initrd", "/l2/l2.cpio.gz",
        "-append", "console=ttyS0 quiet loglevel=4 mitigations=off nokaslr tsc=reliable",
        "-device", f"vfio-pci,host={vf[5:]},rombar=0",
    ]  # fmt: skip
    if not Path("/l2/vmlinuz").exists():
        raise StepFailed("no nested L2 kernel in this image (the nested overlay was not built)")
    with open(L2_OUT, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        try:
            waited = wait_for(
                f"the L2 to list {vf_id}",
                lambda: proc.poll() is not None or l2_lists(vf_id),
                420,
                poll=2,
            )
        except StepFailed as timeout:
            # Say how far the L2 got: a slow boot under a loaded host, or no device in it.
            seen = re.findall(r"@@DOMU pci=\[([^\]]*)\]", read(L2_LOG))
            raise StepFailed(
                f"{timeout}; L2 console {len(read(L2_LOG))} bytes, last PCI list "
                f"{seen[-1] if seen else 'none yet'}; QEMU said {read(L2_OUT)[-200:]!r}"
            ) from timeout
        if proc.poll() is not None:
            raise StepFailed(f"nested QEMU exit {proc.returncode}: {read(L2_OUT)[-300:]}")
        # The guard finds the VF in the running QEMU's command line (PP003).
        res = pcipass("guard", "save", "l2sriov", expect=None)
        guarded = f"guard save l2sriov exit {res.rc}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    expect_driver(vf, "vfio-pci", "after the L2 stopped")
    warn = [ln for ln in read(L2_OUT).splitlines() if "vfio" in ln][:1]
    return f"L2 lists {vf} as {vf_id} {waited:.0f}s after start; {guarded}; {warn}"


@step("vfs-refuse-hidden", needs=("vf-hide-vfio",))
def vfs_refuse_hidden() -> str:
    before = vfs_now()
    res = pcipass("vfs", KVM_NVME_PF, "0", expect=3)
    if "PP101" not in res.text or before[0] not in res.text or vfs_now() != before:
        raise StepFailed(f"expected PP101 naming {before[0]}, VFs kept: {res.tail()}")
    return res.tail(1)


@step("vfs-remove", needs=("vf-hide-vfio",))
def vfs_remove() -> str:
    vf = vfs_now()[0]
    pcipass("unhide", "--now", vf)
    pcipass("vfs", KVM_NVME_PF, "0")
    left = vfs_now()
    if left or read(SYS / KVM_NVME_PF / "sriov_numvfs") != "0" or (SYS / vf).exists():
        raise StepFailed(f"VFs left after vfs 0: {left}")
    expect_driver(KVM_NVME_PF, "nvme", "the PF stays on its driver")
    return f"unhide {vf}, vfs 0: no VF left, PF on nvme"


@step("vfs-persist", needs=("nvme-pf",))
def vfs_persist() -> str:
    pcipass("vfs", KVM_NVME_PF, str(KVM_NVME_VFS), "--persist")
    text = read(RULES)
    if f'KERNEL=="{KVM_NVME_PF}"' not in text or 'DRIVER=="nvme"' not in text:
        raise StepFailed(f"rules file lacks the PF's bind rule: {text!r}")
    pcipass("vfs", KVM_NVME_PF, "0")  # now gone; the rule brings them back at the next boot
    if vfs_now():
        raise StepFailed("VFs left after vfs 0")
    emit_file(RULES)
    for p in sorted(Path("/var/lib/pcipass").glob("*")):
        if p.is_file():
            emit_file(str(p))
    return "; ".join(ln for ln in text.splitlines() if ln.startswith("ACTION"))


def play_udev_bind(pf: str, drv: str) -> list[str]:
    """What udev does for the PF's ``bind`` event: each matching rule's ATTR{} in order."""
    done = []
    for line in read(RULES).splitlines():
        if not line.startswith("ACTION") or f'KERNEL=="{pf}"' not in line:
            continue
        if 'ACTION=="bind"' not in line or f'DRIVER=="{drv}"' not in line:
            continue
        for attr, value in re.findall(r'ATTR\{(\w+)\}="([^"]*)"', line):
            Path(SYS / pf / attr).write_text(value)
            done.append(f"{attr}={value}")
    return done


@step("boot-vfs-from-rule", timeout=120)
def boot_vfs_from_rule() -> str:
    if not Path(RULES).exists():
        raise StepFailed(f"{RULES} did not come back from the first boot")
    must(["/sbin/modprobe", "nvme"])
    wait_for("nvme to bind the PF", lambda: driver(KVM_NVME_PF) == "nvme", 30)
    done = play_udev_bind(KVM_NVME_PF, "nvme")
    vfs = vfs_now()
    if len(vfs) != KVM_NVME_VFS:
        raise StepFailed(f"after the rule ({done}) the PF has VFs {vfs}")
    bound = {vf: driver(vf) for vf in vfs}
    if any(bound.values()):
        raise StepFailed(f"a host driver took a VF at boot: {bound}")
    listed = pcipass("vfs", KVM_NVME_PF, "--json").json()
    if listed.get("persisted") != KVM_NVME_VFS:
        raise StepFailed(f"vfs does not report the boot count: {listed.get('persisted')}")
    return f"udev bind rule applied ({', '.join(done)}): VFs {vfs}, none bound"


plan(
    "kvm-sriov",
    [
        "python-pcipass",
        "l1-iommu",
        "nvme-pf",
        "vfs-refuse-too-many",
        "vfs-create",
        "vf-hide-vfio",
        "vf-in-nested-l2",
        "vfs-refuse-hidden",
        "vfs-remove",
        "vfs-persist",
    ],
)
plan("kvm-sriov-boot2", ["python-pcipass", "l1-iommu", "boot-vfs-from-rule"])
