"""KVM scenario steps (issue 8), run in the L1 guest by agent.py.

L1 is a q35 guest with an emulated intel-iommu (interrupt remapping on), so it has real IOMMU
groups and a real vfio-pci; pcipass hides devices to vfio-pci there and gives them back, and
every result is checked against sysfs and /dev/vfio.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from registry import plan, step
from steplib import (
    StepFailed,
    driver,
    emit_file,
    expect_driver,
    find_device,
    forecast_agrees,
    forecast_next_boot,
    hotplug_budget_used,
    info,
    mentions,
    must,
    pcipass,
    read,
    run,
    wait_for,
)
from topology import (
    KVM_E1000E,
    KVM_E1000E_PORT,
    KVM_ICH9,
    KVM_MOVED_E1000E,
    KVM_MOVED_PORT,
    KVM_SPARE_E1000,
    KVM_UPLINK,
)

SYS = Path("/sys/bus/pci/devices")


def group_of(bdf: str) -> str | None:
    link = SYS / bdf / "iommu_group"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def reset_methods(bdf: str) -> list[str]:
    # The attribute is absent when the kernel knows no reset method for the function.
    return read(SYS / bdf / "reset_method").split()


def kvm_snapshot() -> dict[str, Any]:
    state: dict[str, Any] = {}
    for dev in sorted(SYS.iterdir()):
        state[dev.name] = (driver(dev.name), read(dev / "driver_override"))
    conf = Path("/etc/modprobe.d")
    state["modprobe.d"] = {p.name: p.read_text() for p in sorted(conf.glob("*"))}
    state["vfio"] = sorted(os.listdir("/dev/vfio")) if Path("/dev/vfio").is_dir() else []
    state["addr"] = run(["ip", "-o", "-4", "addr"]).out  # v6 DAD flags change by themselves
    return state


def expect_unchanged(before: dict[str, Any], what: str) -> None:
    after = kvm_snapshot()
    changed = [k for k in before if before[k] != after.get(k)]
    if changed:
        diffs = [f"{k}: {before[k]!r} -> {after.get(k)!r}"[:240] for k in changed]
        raise StepFailed(f"{what} changed the host: {'; '.join(diffs)}")


def refused(args: tuple[str, ...], rule: str) -> str:
    before = kvm_snapshot()
    res = pcipass(*args, expect=3)
    if rule not in res.text:
        raise StepFailed(f"pcipass {' '.join(args)} refused without naming {rule}: {res.tail()}")
    expect_unchanged(before, f"refused {' '.join(args)}")
    return res.tail(1)


@step("l1-iommu", timeout=60)
def l1_iommu() -> str:
    groups = (
        os.listdir("/sys/kernel/iommu_groups") if Path("/sys/kernel/iommu_groups").is_dir() else []
    )
    if not groups:
        raise StepFailed("no IOMMU groups: intel_iommu did not come up")
    dmesg = must(["dmesg"]).out
    if "IRQ remapping" not in dmesg:
        raise StepFailed("no interrupt remapping (vfio would refuse the device)")
    return f"{len(groups)} IOMMU groups, interrupt remapping on"


@step("l1-drivers", timeout=60)
def l1_drivers() -> str:
    for mod in ("e1000", "e1000e"):
        must(["/sbin/modprobe", mod])
    wait_for("e1000e to bind", lambda: driver(KVM_E1000E) == "e1000e", 20)
    expect_driver(KVM_UPLINK, "e1000")
    ifname = os.listdir(SYS / KVM_UPLINK / "net")[0]
    must(["ip", "link", "set", ifname, "up"])
    must(["ip", "addr", "add", "10.0.2.15/24", "dev", ifname])
    must(["ip", "route", "add", "default", "via", "10.0.2.2"])
    return f"{KVM_UPLINK}={ifname} carries 10.0.2.15 and the default route"


@step("kvm-list", needs=("l1-drivers",))
def kvm_list() -> str:
    doc = pcipass("list", "--json").json()
    devices = doc.get("devices", [])
    if len(devices) != len(list(SYS.iterdir())):
        raise StepFailed(f"list shows {len(devices)} devices, sysfs {len(list(SYS.iterdir()))}")
    for dev in devices:
        bdf = dev["address"]
        if dev.get("driver") != driver(bdf):
            raise StepFailed(f"{bdf}: list driver {dev.get('driver')!r}, sysfs {driver(bdf)!r}")
        if str(dev.get("iommu_group")) != str(group_of(bdf)):
            raise StepFailed(f"{bdf}: list group {dev.get('iommu_group')}, sysfs {group_of(bdf)}")
    ich9 = find_device(doc, KVM_ICH9[0])
    members = set(ich9.get("iommu_group_members", []))
    if not set(KVM_ICH9) <= members:
        raise StepFailed(f"ICH9 group members {sorted(members)} lack {KVM_ICH9}")
    if not find_device(doc, KVM_UPLINK).get("host_uses"):
        raise StepFailed(f"{KVM_UPLINK} carries L1's address but host_uses is empty")
    # Reset methods come from `show` (the kernel's reset_method attribute, absent = none).
    notes = [f"{len(devices)} devices agree with sysfs (driver, group)"]
    for bdf, want in ((KVM_SPARE_E1000, []), (KVM_E1000E, ["pm", "bus"])):
        if reset_methods(bdf) != want:
            raise StepFailed(
                f"lab topology: {bdf} reset_method {reset_methods(bdf)}, expected {want}"
            )
        shown = pcipass("show", bdf, "--json").json()
        text = str(shown)
        if want and not all(m in text for m in want):
            raise StepFailed(f"show {bdf} lacks reset methods {want}: {text[:300]}")
        if not want and not mentions(shown, "PP104"):
            raise StepFailed(f"show {bdf} (no reset method) does not warn PP104: {text[:300]}")
        notes.append(f"{bdf} reset {want or 'none (PP104)'}")
    return "; ".join(notes)


@step("refuse-host-nic-kvm", needs=("l1-drivers",))
def refuse_host_nic_kvm() -> str:
    return refused(("hide", KVM_UPLINK, "--now", "--backend", "vfio"), "PP001")


@step("refuse-partial-group", needs=("l1-drivers",))
def refuse_partial_group() -> str:
    note = refused(("hide", KVM_ICH9[1], "--now", "--backend", "vfio"), "PP102")
    others = [b for b in KVM_ICH9 if b != KVM_ICH9[1]]
    res = pcipass("hide", KVM_ICH9[1], "--now", "--backend", "vfio", expect=3)
    if not all(b in res.text or b[5:] in res.text for b in others):
        raise StepFailed(f"PP102 refusal does not name the other group members {others}")
    return note


@step("refuse-bridge", needs=("l1-drivers",))
def refuse_bridge() -> str:
    return refused(("hide", KVM_E1000E_PORT, "--now", "--backend", "vfio"), "PP103")


def _vfio_node() -> Path:
    return Path("/dev/vfio") / str(group_of(KVM_E1000E))


@step("hide-vfio", needs=("l1-drivers",))
def hide_vfio() -> str:
    pcipass("hide", KVM_E1000E, "--now", "--backend", "vfio")
    expect_driver(KVM_E1000E, "vfio-pci", "after hide --now --backend vfio")
    wait_for(f"{_vfio_node()} to appear", _vfio_node().exists, 10)
    expect_driver(KVM_UPLINK, "e1000", "(the uplink must not move)")
    return f"{KVM_E1000E} -> vfio-pci, {_vfio_node()} present"


@step("unhide-vfio", needs=("hide-vfio",))
def unhide_vfio() -> str:
    pcipass("unhide", KVM_E1000E, "--now")
    expect_driver(KVM_E1000E, "e1000e", "after unhide --now")
    wait_for(f"{_vfio_node()} to go away", lambda: not _vfio_node().exists(), 10)
    return f"{KVM_E1000E} -> e1000e, {_vfio_node()} gone"


KILL_HOOK = """
import os, signal, runpy, sys
import pcipass.host.sysfs as s
orig, left = s.Sysfs.write_attr, [int(sys.argv[2])]
def killer(self, *a, **k):
    orig(self, *a, **k)
    left[0] -= 1
    if left[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)
s.Sysfs.write_attr = killer
sys.argv = ['pcipass', 'hide', sys.argv[1], '--now', '--backend', 'vfio']
runpy.run_module('pcipass', run_name='__main__')
"""


@step("recover-interrupted", needs=("unhide-vfio",))
def recover_interrupted() -> str:
    """Kill pcipass after its 1st, 2nd, 3rd sysfs write of a hide; ``recover`` must clean up."""
    # The agent cannot stop pcipass at an exact point from outside, so pcipass runs with its one
    # sysfs write seam (Sysfs.write_attr) wrapped to SIGKILL the process after the k-th write.
    notes = []
    for k in (1, 2, 3):
        res = run([sys.executable, "-c", KILL_HOOK, KVM_E1000E, str(k)], timeout=60)
        if res.rc != -9:
            notes.append(f"k={k}: finished before the kill (exit {res.rc})")
            break
        half = driver(KVM_E1000E)
        pcipass("recover")
        after = driver(KVM_E1000E)
        if after not in ("e1000e", "vfio-pci"):
            raise StepFailed(f"killed after write {k} (driver {half}); after recover: {after}")
        override = read(SYS / KVM_E1000E / "driver_override")
        if after == "e1000e" and override not in ("", "(null)"):
            raise StepFailed(f"recover left driver_override={override!r} on {KVM_E1000E}")
        status = pcipass("status", "--json").json()
        if status.get("open_operations"):
            raise StepFailed(f"status still shows open operations: {status['open_operations']}")
        notes.append(f"k={k}: {half} -> recover -> {after}")
        if after == "vfio-pci":
            pcipass("unhide", KVM_E1000E, "--now")
    expect_driver(KVM_E1000E, "e1000e", "at the end")
    return "; ".join(notes)


@step("guest-setup-builtin", needs=())
def guest_setup_builtin() -> str:
    res = pcipass("guest-setup", "--json", expect=None)
    if res.rc not in (0,):
        raise StepFailed(f"guest-setup exit {res.rc}: {res.tail()}")
    if not mentions(res.out, "built"):
        raise StepFailed(f"guest-setup does not report acpiphp built in: {res.out[:300]}")
    return " ".join(res.out.split())[:300]


@step("persist-vfio", needs=("unhide-vfio",))
def persist_vfio() -> str:
    pcipass("hide", KVM_E1000E, "--persist", "--backend", "vfio")
    shown = must(["/sbin/modprobe", "-c"]).out
    lines = [ln for ln in shown.splitlines() if "vfio" in ln and ("ids=" in ln or "softdep" in ln)]
    if not any("8086:10d3" in ln for ln in lines):
        raise StepFailed(f"real kmod shows no vfio-pci ids=8086:10d3: {lines}")
    for p in sorted(Path("/etc/modprobe.d").glob("*")) + sorted(Path("/var/lib/pcipass").glob("*")):
        if p.is_file():
            emit_file(str(p))
    info("persist-vfio", "carried to the next boot: " + " ".join(os.listdir("/etc/modprobe.d")))
    return "; ".join(lines)


@step("boot-claims-vfio", timeout=120)
def boot_claims_vfio() -> str:
    for dev in sorted(SYS.iterdir()):  # udev coldplug: modprobe each function's modalias
        alias = read(dev / "modalias")
        if alias:
            run(["/sbin/modprobe", "-q", alias], timeout=60)
    expect_driver(KVM_E1000E, "vfio-pci", "at boot with the persisted configuration")
    expect_driver(KVM_UPLINK, "e1000")
    return f"{KVM_E1000E} on vfio-pci at boot; {_vfio_node()} {_vfio_node().exists()}"


@step("check-no-drift-kvm", needs=("boot-claims-vfio",))
def check_no_drift_kvm() -> str:
    res = pcipass("check", KVM_E1000E, "--json", expect=None)
    if mentions(res.out, "PP010") or res.rc not in (0, 1):
        raise StepFailed(f"check reports drift (exit {res.rc}): {res.out[:300]}")
    doc = res.json()
    rules = sorted({f.get("rule", "?") for f in doc.get("findings", []) if isinstance(f, dict)})
    return f"check exit {res.rc}, no PP010; other findings: {rules}"


# ---------------------------------------------------------------- next-boot forecast (issue 16)

KVM_FORECAST = "/var/lib/lab/next-boot-kvm.json"


@step("forecast-kvm", needs=("persist-vfio",))
def forecast_kvm() -> str:
    """Boot 1, after the persistent vfio form: what pcipass forecasts for boot 2, carried there."""
    return forecast_next_boot(KVM_FORECAST, {KVM_E1000E: "vfio-pci", KVM_UPLINK: "e1000"})


@step("forecast-agrees-kvm", needs=("boot-claims-vfio",))
def forecast_agrees_kvm() -> str:
    """Boot 2: the forecast boot 1 printed matches what the real kernel bound, device by device
    (after the coldplug of boot-claims-vfio: modprobe of each modalias)."""
    return forecast_agrees(KVM_FORECAST) + f" ({KVM_E1000E} vfio-pci, {KVM_UPLINK} e1000)"


# ---------------------------------------------------------------- pinned names (issue 16)

DESIRED = "/etc/pcipass/pcipass.toml"
BOOT_UNIT = "/etc/systemd/system/pcipass-boot.service"
PINNED_PATH = "pci0000:00/05.0/00.0"  # the root port 00:05.0, slot 00.0 below it


@step("pin-e1000e", needs=("kvm-list",))
def pin_e1000e() -> str:
    """Boot 1: pin the e1000e, declare it hidden in pcipass.toml, install the boot unit; all of
    it (with the ledger) travels to boot kvm3, where the card sits behind another root port."""
    doc = pcipass("pin", KVM_E1000E, "guestnic", "--json").json()
    path = doc["fingerprint"]["path"]
    if path != PINNED_PATH:
        raise StepFailed(f"pinned path {path}, expected {PINNED_PATH}")
    Path(DESIRED).parent.mkdir(parents=True, exist_ok=True)
    Path(DESIRED).write_text('[device.guestnic]\nbackend = "vfio"\n')
    planned = pcipass("plan", "--detailed-exitcode", expect=None)
    wanted = 0 if driver(KVM_E1000E) == "vfio-pci" else 2
    if planned.rc != wanted:
        raise StepFailed(
            f"plan --detailed-exitcode {planned.rc}, expected {wanted}: {planned.tail()}"
        )
    pcipass("boot-install")
    unit = read(BOOT_UNIT)
    if "apply --boot" not in unit or "Type=oneshot" not in unit:
        raise StepFailed(f"{BOOT_UNIT} does not run apply --boot: {unit[:300]}")
    for p in [DESIRED, BOOT_UNIT, *sorted(str(f) for f in Path("/var/lib/pcipass").glob("*"))]:
        if Path(p).is_file():
            emit_file(p, bundle="moved")
    serial = doc["fingerprint"].get("serial", "none")
    return (
        f"@guestnic = {KVM_E1000E} ({path}, serial {serial}); plan exit {planned.rc}; unit written"
    )


def _unit_command() -> list[str]:
    """The ExecStart of the boot unit, as systemd would run it ('-': exit status ignored)."""
    for line in read(BOOT_UNIT).splitlines():
        if line.startswith("ExecStart="):
            import shlex

            return shlex.split(line.split("=", 1)[1].lstrip("-"))
    raise StepFailed(f"{BOOT_UNIT} has no ExecStart (was it carried from boot 1?)")


@step("pinned-found-after-move", timeout=120)
def pinned_found_after_move() -> str:
    """Boot kvm3: the e1000e moved from 00:05.0 to 00:06.0 (address 01:00.0 -> 02:00.0) and a
    virtio NIC took 01:00.0.  The boot unit's command finds the pinned card at its new address and
    binds vfio-pci; the pinned address, as a BDF-based hide would use it, names the virtio NIC."""
    for dev in sorted(SYS.iterdir()):  # udev coldplug: the host drivers take their devices first
        alias = read(dev / "modalias")
        if alias:
            run(["/sbin/modprobe", "-q", alias], timeout=60)
    found = [d.name for d in sorted(SYS.iterdir()) if read(d / "device") == "0x10d3"]
    if found != [KVM_MOVED_E1000E]:
        raise StepFailed(f"e1000e expected at {KVM_MOVED_E1000E} only, found at {found}")
    parent = os.path.basename(os.path.dirname(os.path.realpath(SYS / KVM_MOVED_E1000E)))
    if parent != KVM_MOVED_PORT:
        raise StepFailed(f"the e1000e sits below {parent}, not {KVM_MOVED_PORT}")
    old = SYS / KVM_E1000E
    old_ids = f"{read(old / 'vendor')}:{read(old / 'device')}" if old.exists() else "nothing"
    old_driver = driver(KVM_E1000E) if old.exists() else None
    if old_ids != "0x1af4:0x1041":
        raise StepFailed(f"{KVM_E1000E} is {old_ids}, expected the virtio NIC (0x1af4:0x1041)")
    before = driver(KVM_MOVED_E1000E)
    res = run(_unit_command(), timeout=120)
    if res.rc != 0:
        raise StepFailed(f"apply --boot exit {res.rc} (it must never fail): {res.tail()}")
    # Matched by its serial (QEMU's e1000e has a DSN) or, without one, by its ids: never by path.
    said = re.search(
        rf"@guestnic -> {KVM_MOVED_E1000E} \(matched by (serial|ids)\): bound to vfio-pci", res.out
    )
    if said is None:
        raise StepFailed(
            f"apply --boot did not bind @guestnic at {KVM_MOVED_E1000E}: {res.out[-400:]}"
        )
    expect_driver(KVM_MOVED_E1000E, "vfio-pci", "after apply --boot")
    if driver(KVM_E1000E) != old_driver:
        raise StepFailed(f"{KVM_E1000E} (the virtio NIC) was moved off {old_driver}")
    group = group_of(KVM_MOVED_E1000E)
    if group is None or not Path(f"/dev/vfio/{group}").exists():
        raise StepFailed(f"no /dev/vfio/{group} for the moved e1000e")
    info("pinned-found-after-move", res.out.strip())
    checked = pcipass("check", "--json", expect=None)
    rules = sorted({f.get("rule", "?") for f in checked.json().get("findings", [])})
    return (
        f"e1000e {KVM_E1000E} -> {KVM_MOVED_E1000E} (was on {before}) bound to vfio-pci by the "
        f"boot unit's apply --boot; a BDF-based hide of {KVM_E1000E} would have taken the virtio "
        f"NIC there ({old_ids}, on {old_driver}); check exit {checked.rc}, rules {rules}"
    )


# ---------------------------------------------------------------- nested L2 with vfio-pci

L2_LOG = "/tmp/l2-console.log"
L2_QMP = "/run/l2.qmp"
L2: dict[str, subprocess.Popen[bytes]] = {}


def qmp(command: str, arguments: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """One QMP command on the L2's socket (raw recv buffer: makefile+timeout breaks, notes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(L2_QMP)
        buf = b""

        def message() -> dict[str, Any]:
            nonlocal buf
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise StepFailed("QMP socket closed")
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            return dict(json.loads(line))

        message()  # greeting
        for cmd, args in (("qmp_capabilities", None), (command, arguments)):
            req: dict[str, Any] = {"execute": cmd}
            if args:
                req["arguments"] = args
            sock.sendall(json.dumps(req).encode() + b"\n")
            while True:
                msg = message()
                if "return" in msg or "error" in msg:
                    break
        if "error" in msg:
            raise StepFailed(f"QMP {command}: {msg['error']}")
        return msg["return"]


def l2_pci() -> list[str]:
    return re.findall(r"@@DOMU pci=\[([^\]]*)\]", read(L2_LOG))


@step("nested-l2-sees-device", needs=("unhide-vfio",), timeout=480)
def nested_l2_sees_device() -> str:
    """A nested QEMU started with -device vfio-pci on the device pcipass hid boots an L2 that
    sees it (TCG inside TCG: the slow part of the scenario)."""
    pcipass("hide", KVM_E1000E, "--now", "--backend", "vfio")
    expect_driver(KVM_E1000E, "vfio-pci")
    argv = [
        "qemu-system-x86_64", "-name", "l2", "-accel", "tcg", "-machine", "pc", "-cpu", "qemu64",
        "-m", "192",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{L2_LOG}", "-qmp", f"unix:{L2_QMP},server,nowait",
        "-L", "/usr/share/qemu", "-kernel", "/l2/vmlinuz", "-initrd", "/l2/l2.cpio.gz",
        "-append", "console=ttyS0 quiet loglevel=4 mitigations=off nokaslr tsc=reliable",
        "-device", f"vfio-pci,host={KVM_E1000E[5:]},rombar=0,id=pt0",
    ]  # fmt: skip
    with open("/tmp/l2-qemu.out", "wb") as out:
        L2["proc"] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    proc = L2["proc"]
    waited = wait_for(
        "the L2 to list 8086:10d3",
        lambda: proc.poll() is not None or any("0x8086:0x10d3" in ln for ln in l2_pci()),
        420,
        poll=2,
    )
    if proc.poll() is not None:
        raise StepFailed(f"nested QEMU exit {proc.returncode}: {read('/tmp/l2-qemu.out')[-300:]}")
    return f"L2 sees [{l2_pci()[-1]}] {waited:.0f}s after the nested QEMU started"


@step("nested-guard", needs=("nested-l2-sees-device",))
def nested_guard() -> str:
    notes = []
    for op in ("save", "migrate"):
        res = pcipass("guard", op, "l2", expect=None)
        if res.rc == 0 or "PP003" not in res.text:
            raise StepFailed(f"guard {op} l2 (holds {KVM_E1000E}): exit {res.rc}: {res.tail()}")
        notes.append(f"{op}: exit {res.rc}")
    return "; ".join(notes)


def l2_has_device() -> bool:
    lines = l2_pci()
    return bool(lines) and "0x8086:0x10d3" in lines[-1]


def qemu_has_device() -> bool:
    """The L2's QEMU has the e1000e (8086:10d3) plugged in, whatever its device id."""
    return any(
        dev.get("id", {}).get("vendor") == 0x8086 and dev.get("id", {}).get("device") == 0x10D3
        for bus in qmp("query-pci")
        for dev in bus.get("devices", [])
    )


@step("l2-acpi-hotplug", needs=("nested-l2-sees-device",), timeout=240)
def l2_acpi_hotplug() -> str:
    """ACPI hotplug of the vfio device into the running L2 (QMP device_del / device_add on
    -machine pc; the L2 kernel has acpiphp built in).  Plain QMP, driven by the lab: pcipass has
    no plain-QEMU live backend yet (see l2-hotplug-pcipass)."""
    t0 = time.monotonic()
    qmp("device_del", {"id": "pt0"})
    wait_for("QEMU to finish unplugging pt0", lambda: not qemu_has_device(), 60, poll=1)
    gone = wait_for("the L2 to lose 8086:10d3", lambda: not l2_has_device(), 60)
    t1 = time.monotonic()
    qmp(
        "device_add",
        {"driver": "vfio-pci", "host": KVM_E1000E[5:], "id": "pt0", "rombar": 0},
    )
    back = wait_for("the L2 to see 8086:10d3 again", l2_has_device, 90)
    expect_driver(KVM_E1000E, "vfio-pci")
    return (
        f"unplug seen by L2 after {t1 - t0:.1f}s (last wait {gone:.1f}s); "
        f"hotplug seen after {back:.1f}s"
    )


@step("l2-hotplug-pcipass", needs=("nested-l2-sees-device",))
def l2_hotplug_pcipass() -> str:
    """pcipass detach/attach --live of a plain QEMU guest (QMP): the L2 sees it go and come."""
    pcipass("detach", KVM_E1000E, "l2", "--live")
    wait_for("the L2 to lose the device", lambda: not l2_has_device(), 60)
    pcipass("attach", KVM_E1000E, "l2", "--live")
    wait_for("the L2 to see the device again", l2_has_device, 90)
    return "detach/attach --live through pcipass seen by the L2"


def l2_heartbeats() -> int:
    return read(L2_LOG).count("@@DOMU hb")


@step("l2-hotplug-limit", needs=("l2-hotplug-pcipass",))
def l2_hotplug_limit() -> str:
    """PP007 on the plain-QEMU backend: past the budget detach --live is refused, L2 unharmed."""
    with hotplug_budget_used(KVM_E1000E) as seeded:
        res = pcipass("detach", KVM_E1000E, "l2", "--live", expect=3)
        if "PP007" not in res.text:
            raise StepFailed(f"refusal past the budget does not name PP007: {res.tail()}")
        if not qemu_has_device() or not l2_has_device():
            raise StepFailed("the refused detach still took the device from the L2")
        n0 = l2_heartbeats()
        wait_for("two new L2 heartbeats", lambda: l2_heartbeats() >= n0 + 2, 60)
    return f"({seeded} events seeded) {res.tail(1)}; L2 keeps the device, heartbeats go on"


@step("nested-stop", needs=("unhide-vfio",))
def nested_stop() -> str:
    proc = L2.get("proc")
    if proc is not None and proc.poll() is None:
        # Give the device back properly first: pcipass records the L2 as its owner (PP101).
        if qemu_has_device():
            pcipass("detach", KVM_E1000E, "l2", "--live", expect=None)
        try:
            qmp("quit")
        except (OSError, StepFailed):
            proc.terminate()
        proc.wait(timeout=30)
    if driver(KVM_E1000E) == "vfio-pci":
        res = pcipass("unhide", KVM_E1000E, "--now", expect=None)
        if res.rc == 3 and "PP101" in res.text:  # still recorded as the L2's: release it
            pcipass("detach", KVM_E1000E, "l2")
            res = pcipass("unhide", KVM_E1000E, "--now")
        elif res.rc != 0:
            raise StepFailed(f"unhide --now exit {res.rc}: {res.tail()}")
    expect_driver(KVM_E1000E, "e1000e", "after the L2 stopped and unhide --now")
    return "L2 stopped (QMP quit); device back on e1000e"


KVM_SMOKE = ["python-pcipass", "l1-iommu", "l1-drivers", "kvm-list", "hide-vfio", "unhide-vfio"]
plan("kvm-smoke", KVM_SMOKE)
plan(
    "kvm-full",
    [
        *KVM_SMOKE,
        "refuse-host-nic-kvm",
        "refuse-partial-group",
        "refuse-bridge",
        "recover-interrupted",
        "guest-setup-builtin",
        "nested-l2-sees-device",
        "nested-guard",
        "l2-acpi-hotplug",
        "l2-hotplug-pcipass",
        "l2-hotplug-limit",
        "nested-stop",
        "persist-vfio",
        "forecast-kvm",
        "pin-e1000e",
    ],
)
plan(
    "kvm-boot2",
    ["python-pcipass", "l1-iommu", "boot-claims-vfio", "check-no-drift-kvm", "forecast-agrees-kvm"],
)
plan("kvm-moved", ["python-pcipass", "l1-iommu", "pinned-found-after-move"])
