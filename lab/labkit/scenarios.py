"""Scenarios: which images to build, which boots to run with which agent plan, and the report."""

from __future__ import annotations

import gzip
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit import image, packages, qemu

LAB = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(LAB / "guest"))
import registry  # noqa: E402  (the guest's plans, to name the steps a dead boot never reached)
import steps_kvm  # noqa: E402, F401  (registers its steps)
import steps_sriov  # noqa: E402, F401
import steps_xen  # noqa: E402, F401
import topology  # noqa: E402  (shared with the guest agent)

XEN_CMDLINE = (
    "console=com1 com1=115200,8n1 dom0_mem=768M,max:768M noreboot iommu=1 "
    "loglvl=all guest_loglvl=all"
)


@dataclass
class Report:
    """Every PASS/FAIL line, printed as it happens and summed up at the end."""

    results: list[qemu.StepResult] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    verbose: bool = False

    def add(self, name: str, ok: bool, seconds: float, why: str = "") -> None:
        self.results.append(qemu.StepResult(name, ok, seconds, why))
        if ok:
            print(
                f"PASS {name} ({seconds:.1f}s)" + (f"  # {why}" if why and self.verbose else ""),
                flush=True,
            )
        else:
            print(f"FAIL {name}: {why} ({seconds:.1f}s)", flush=True)

    def info(self, text: str) -> None:
        if self.verbose:
            print(f"     {text}", flush=True)

    def failures(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    def summary(self, scenario: str) -> str:
        ok = sum(1 for r in self.results if r.ok)
        return (
            f"SUMMARY {scenario}: {ok} PASS, {self.failures()} FAIL, "
            f"{time.monotonic() - self.t0:.0f}s wall"
        )


@dataclass
class Prepared:
    stage: Path
    kver: str
    work: Path


def timed(report: Report, name: str, func: Callable[[], object]) -> object | None:
    t0 = time.monotonic()
    try:
        value = func()
    except Exception as exc:  # a failed build must be a FAIL line, not a traceback
        report.add(name, False, time.monotonic() - t0, f"{type(exc).__name__}: {exc}")
        return None
    report.add(name, True, time.monotonic() - t0)
    return value


def prepare(report: Report, cache: Path, out: Path) -> Prepared | None:
    log: list[str] = []

    def fetch() -> Prepared:
        packages.ensure_host_tools(log)
        kver_file = cache / "kver"
        if kver_file.exists():
            kver = kver_file.read_text().strip()
        else:
            kver = packages.kernel_version()
            cache.mkdir(parents=True, exist_ok=True)
            kver_file.write_text(kver + "\n")
        # One stage for both scenarios (Xen packages included even for KVM), so running
        # them one after the other does not unpack everything again.
        names = [
            *packages.BASE_PACKAGES,
            f"linux-image-{kver}",
            *packages.XEN_PACKAGES,
            *packages.NESTED_PACKAGES,
        ]
        debs = packages.fetch(names, cache, log)
        stage = cache / "stage"
        packages.unpack(debs, stage)
        return Prepared(stage, kver, out / "images")

    prep = timed(report, "fetch", fetch)
    for line in log:
        report.info(line)
    return prep if isinstance(prep, Prepared) else None


def build(report: Report, prep: Prepared, kind: str) -> Path | None:
    log: list[str] = []
    prep.work.mkdir(parents=True, exist_ok=True)

    def do() -> Path:
        if kind == "xen":
            xen = prep.work / "xen"
            with gzip.open(prep.stage / "boot/xen-4.17-amd64.gz") as src, xen.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            return image.build_dom0(prep.work, prep.stage, prep.kver, log)
        return image.build_l1(prep.work, prep.stage, prep.kver, log)

    result = timed(report, f"build-{kind}", do)
    for line in log:
        report.info(line)
    return result if isinstance(result, Path) else None


def xen_argv(
    prep: Prepared,
    initrd: Path,
    plan: str,
    extra: str = "",
    iommu: bool = True,
    uplink_model: str = "e1000",
) -> list[str]:
    """``uplink_model``: the uplink's NIC; e1000e (xen5) leaves e1000 to the spare alone."""
    dom0 = f"{prep.stage}/boot/vmlinuz-{prep.kver} console=hvc0 rdinit=/init quiet lab={plan}"
    if extra:
        dom0 += " " + extra
    nics: list[str] = []
    models = (uplink_model, "e1000")
    for i, bdf in enumerate((topology.XEN_UPLINK, topology.XEN_SPARE), start=1):
        slot = bdf.split(":")[2]  # "03.0"
        nics += [
            "-netdev",
            f"user,id=n{i},restrict=on",
            "-device",
            f"{models[i - 1]},netdev=n{i},addr={slot},romfile=",
        ]
    # Lab notes: q35 + an emulated intel-iommu are mandatory (no passthrough without an IOMMU);
    # -cpu max crashes the PV dom0, qemu64,+svm works.
    machine = ["-machine", "q35", "-device", "intel-iommu"] if iommu else ["-machine", "pc"]
    return [
        "qemu-system-x86_64", "-accel", "tcg", *machine, "-cpu", "qemu64,+svm",
        "-m", "1536", "-smp", "2", "-nographic", "-no-reboot",
        "-kernel", str(prep.work / "xen"), "-append", XEN_CMDLINE,
        "-initrd", f"{dom0},{initrd}", *nics,
    ]  # fmt: skip


def plan_of(argv: list[str]) -> str:
    """The agent plan a QEMU command line boots (``lab=PLAN`` on the guest kernel line)."""
    for arg in argv:
        m = re.search(r"\blab=([A-Za-z0-9_-]+)", arg)
        if m:
            return m.group(1)
    return ""


def run_boot(
    report: Report, name: str, argv: list[str], out: Path, timeout: float, expect_steps: bool = True
) -> qemu.BootResult:
    def on_event(ev: qemu.StepResult | str) -> None:
        if isinstance(ev, qemu.StepResult):
            report.add(f"{name}/{ev.name}", ev.ok, ev.seconds, ev.why)
        else:
            report.info(f"{name}: {ev}")

    res = qemu.boot(name, argv, out / "logs" / f"{name}.log", timeout, on_event)
    why = ""
    if res.timed_out:
        why = res.timeout_why
    elif res.init_at is None:
        why = f"guest never reached /init (QEMU exit {res.rc}); see {res.log}"
    elif not res.done:
        why = f"agent did not finish ({res.exit_line or 'no exit line'}); see {res.log}"
    elif res.rc != 0:
        why = f"QEMU exit {res.rc}"
    elif expect_steps and not res.steps:
        why = "no step results"
    plan = plan_of(argv)
    reported = {r.name for r in res.steps}
    for missing in registry.REGISTRY.plans.get(plan, []):
        if missing not in reported:
            report.add(f"{name}/{missing}", False, 0, "not reached: the boot ended before it")
    init = f", /init at {res.init_at:.0f}s" if res.init_at is not None else ""
    report.add(f"{name}/boot", not why, res.wall, why or f"wall {res.wall:.0f}s{init}")
    return res


def xen(report: Report, cache: Path, out: Path, smoke: bool, plan: str = "xen-smoke") -> None:
    prep = prepare(report, cache, out)
    if prep is None:
        return
    initrd = build(report, prep, "xen")
    if initrd is None:
        return
    if smoke:
        run_boot(report, plan, xen_argv(prep, initrd, plan), out, 300)
        return
    first = run_boot(report, "xen1", xen_argv(prep, initrd, "xen-full"), out, 480)
    bundles = split_bundles(first.files)
    if not bundles.get(""):
        report.add("xen2/boot", False, 0, "no persisted state came back from the first boot")
    else:
        # Second boot of the same image, with what pcipass persisted (modprobe.d) appended.
        state = image.overlay(prep.work, bundles[""], "xen-persisted")
        both = concat([initrd, state], prep.work / "dom0+persisted.cpio.gz")
        run_boot(report, "xen2", xen_argv(prep, both, "xen-boot2"), out, 300)
    # PP006 on a machine without an IOMMU (-machine pc): pcipass must refuse what Xen refuses.
    run_boot(report, "xen4", xen_argv(prep, initrd, "xen-noiommu", iommu=False), out, 240)
    # #18: the uplink on e1000e, so reloading e1000 touches the spare alone: --reload-driver works.
    argv = xen_argv(prep, initrd, "xen-reload", uplink_model="e1000e")
    run_boot(report, "xen5", argv, out, 300)
    grub = bundles.get("cmdline", {}).get("/etc/default/grub")
    if grub is None:
        report.add("xen3/boot", False, 0, "no /etc/default/grub came back from the first boot")
        return
    # Third boot: the kernel-command-line form. The host plays grub-mkconfig: the dom0 kernel
    # line gets GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT from the persisted file.
    state = image.overlay(prep.work, bundles["cmdline"], "xen-cmdline")
    both = concat([initrd, state], prep.work / "dom0+cmdline.cpio.gz")
    extra = grub_linux_args(grub.decode())
    run_boot(report, "xen3", xen_argv(prep, both, "xen-boot-cmdline", extra), out, 300)


def split_bundles(files: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """``bundle:/path`` keys from the agent's FILE markers, grouped by bundle ("" = default)."""
    out: dict[str, dict[str, bytes]] = {}
    for key, data in files.items():
        bundle, path = ("", key) if key.startswith("/") else key.split(":", 1)
        out.setdefault(bundle, {})[path] = data
    return out


def grub_linux_args(text: str) -> str:
    """The Linux arguments grub-mkconfig would take from /etc/default/grub (simple quoted
    assignments only; the file is never executed)."""
    values = {}
    for line in text.splitlines():
        m = re.match(r'\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(["\']?)(.*)\2\s*$', line)
        if m:
            values[m.group(1)] = m.group(3)
    args = f"{values.get('GRUB_CMDLINE_LINUX', '')} {values.get('GRUB_CMDLINE_LINUX_DEFAULT', '')}"
    return " ".join(a for a in args.split() if a != "quiet")


def kvm_argv(
    prep: Prepared, initrd: Path, plan: str, big: bool = False, moved: bool = False
) -> list[str]:
    # KVM lab notes: vfio needs interrupt remapping, i.e. intremap=on, which needs the split
    # irqchip; the e1000e sits behind a pcie-root-port (own group, reset_method "pm bus").
    # moved (boot kvm3, issue 16): the e1000e goes behind a second root port and a virtio NIC
    # takes its old place, so its address changes and the old one names another card.
    uplink = topology.KVM_UPLINK.split(":")[2]
    spare = topology.KVM_SPARE_E1000.split(":")[2]
    port = topology.KVM_E1000E_PORT.split(":")[2]
    # A fixed MAC: QEMU derives the e1000e's Device Serial Number from it, and numbers automatic
    # MACs by creation order, so without it the "same card" would change serial when moved.
    nic = f"netdev=n2,mac={topology.KVM_E1000E_MAC},romfile="
    e1000e = ["-netdev", "user,id=n2,restrict=on", "-device", f"e1000e,bus=rp1,{nic}"]
    if moved:
        moved_port = topology.KVM_MOVED_PORT.split(":")[2]
        e1000e = [
            "-netdev", "user,id=n3,restrict=on",
            "-device", "virtio-net-pci,bus=rp1,netdev=n3,romfile=",
            "-device", f"pcie-root-port,id=rp2,bus=pcie.0,addr={moved_port},chassis=2",
            "-netdev", "user,id=n2,restrict=on", "-device", f"e1000e,bus=rp2,{nic}",
        ]  # fmt: skip
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
        # the nested QEMU (70 MB overlay + a 192 MB L2) needs room and a second vCPU
        "-smp", "2" if big else "1", "-m", "2048" if big else "1024",
        "-machine", "q35,kernel-irqchip=split", "-device", "intel-iommu,intremap=on",
        "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", f"{prep.stage}/boot/vmlinuz-{prep.kver}", "-initrd", str(initrd),
        "-append", f"console=ttyS0 intel_iommu=on mitigations=off quiet rdinit=/init lab={plan}",
        "-netdev", "user,id=n0,restrict=on", "-device", f"e1000,netdev=n0,addr={uplink},romfile=",
        "-netdev", "user,id=n1,restrict=on", "-device", f"e1000,netdev=n1,addr={spare},romfile=",
        "-device", f"pcie-root-port,id=rp1,bus=pcie.0,addr={port},chassis=1",
        *e1000e,
    ]  # fmt: skip


def concat(parts: list[Path], out: Path) -> Path:
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst)
    return out


def with_nested(report: Report, prep: Prepared, initrd: Path) -> Path:
    """The L1 image plus the nested QEMU and L2 (an overlay archive); the L1 image alone when
    the overlay cannot be built (the steps that need it then fail, naming why)."""
    log: list[str] = []
    nested = timed(
        report,
        "build-nested",
        lambda: image.build_nested_overlay(prep.work, prep.stage, prep.kver, log),
    )
    for line in log:
        report.info(line)
    if not isinstance(nested, Path):
        return initrd
    return concat([initrd, nested], prep.work / "l1+nested.cpio.gz")


def kvm(report: Report, cache: Path, out: Path, smoke: bool) -> None:
    prep = prepare(report, cache, out)
    if prep is None:
        return
    initrd = build(report, prep, "kvm")
    if initrd is None:
        return
    if smoke:
        run_boot(report, "kvm-smoke", kvm_argv(prep, initrd, "kvm-smoke"), out, 240)
        return
    full = with_nested(report, prep, initrd)
    first = run_boot(report, "kvm1", kvm_argv(prep, full, "kvm-full", big=True), out, 720)
    if not first.files:
        report.add("kvm2/boot", False, 0, "no persisted state came back from the first boot")
        return
    bundles = split_bundles(first.files)
    state = image.overlay(prep.work, bundles.get("", {}), "kvm-persisted")
    both = concat([initrd, state], prep.work / "l1+persisted.cpio.gz")
    run_boot(report, "kvm2", kvm_argv(prep, both, "kvm-boot2"), out, 240)
    # kvm3: the same image with the pin, the desired state and the boot unit of the first boot
    # (bundle "moved"; not its modprobe.d, whose vfio-pci ids= would claim the card by model),
    # on a machine where the e1000e moved to another root port.
    if not bundles.get("moved"):
        report.add("kvm3/boot", False, 0, "the first boot pinned nothing to carry (pin-e1000e)")
        return
    pinned = image.overlay(prep.work, bundles["moved"], "kvm-moved")
    moved = concat([initrd, pinned], prep.work / "l1+moved.cpio.gz")
    run_boot(report, "kvm3", kvm_argv(prep, moved, "kvm-moved", moved=True), out, 240)


def sriov_argv(prep: Prepared, initrd: Path, plan: str, big: bool = False) -> list[str]:
    """The KVM L1 plus QEMU 7.2's NVMe with SR-IOV behind its own root port (own IOMMU group).

    QEMU (docs/system/devices/nvme.rst, hw/nvme/ctrl.c): SR-IOV needs the controller linked to an
    nvme-subsys, sriov_vq_flexible >= 2 * sriov_max_vfs, sriov_vi_flexible >= sriov_max_vfs."""
    port = topology.KVM_NVME_PORT.split(":")[2]
    vfs = topology.KVM_NVME_VFS
    return [
        *kvm_argv(prep, initrd, plan, big=big),
        "-device", f"pcie-root-port,id=rp2,bus=pcie.0,addr={port},chassis=2",
        "-device", "nvme-subsys,id=nvmesubsys0,nqn=pcipass-lab",
        "-device", f"nvme,bus=rp2,serial=pcipasslab,subsys=nvmesubsys0,sriov_max_vfs={vfs},"
        f"sriov_vq_flexible={2 * vfs},sriov_vi_flexible={vfs}",
    ]  # fmt: skip


def kvm_sriov(report: Report, cache: Path, out: Path) -> None:
    """Issue 17: VFs created, hidden and removed through pcipass on L1's real kernel; boot 2
    applies the persistent (udev) form."""
    prep = prepare(report, cache, out)
    if prep is None:
        return
    initrd = build(report, prep, "kvm")
    if initrd is None:
        return
    full = with_nested(report, prep, initrd)
    argv = sriov_argv(prep, full, "kvm-sriov", big=True)
    first = run_boot(report, "sriov1", argv, out, 720)
    if not first.files:
        report.add("sriov2/boot", False, 0, "no persisted state came back from the first boot")
        return
    state = image.overlay(prep.work, first.files, "sriov-persisted")
    both = concat([initrd, state], prep.work / "l1+sriov.cpio.gz")
    run_boot(report, "sriov2", sriov_argv(prep, both, "kvm-sriov-boot2"), out, 240)
