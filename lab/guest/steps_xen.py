"""Xen scenario steps (issue 7), run in dom0 by agent.py.

Every step that changes the host does it through pcipass and then checks the result against
the real kernel (the ``driver`` symlink in sysfs), real kmod and real ``xl``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
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
from topology import XEN_GATEWAY, XEN_SPARE, XEN_UPLINK, XEN_UPLINK_IP

UPLINK, SPARE = XEN_UPLINK, XEN_SPARE
DOMU_CFG = "/etc/xen/domu.cfg"
CONSOLE = "/var/log/xen/console/guest-domu.log"
SAVE_DIR = "/var/lib/xen/save"
XEN_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs")
DOMU_BASE_CFG = """\
# PV domU of the pcipass lab (kernel and initramfs shipped in dom0's /boot)
name = "domu"
type = "pv"
kernel = "/boot/vmlinuz"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=4"
memory = 192
vcpus = 1
on_crash = "preserve"
"""


# ---------------------------------------------------------------- helpers


def assignable() -> list[str]:
    out = must(["xl", "pci-assignable-list"]).out
    return re.findall(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", out)


def snapshot() -> dict[str, Any]:
    """What a refused command must leave alone: bindings, overrides, modprobe.d, addresses."""
    state: dict[str, Any] = {}
    for bdf in (UPLINK, SPARE):
        state[bdf] = (driver(bdf), read(f"/sys/bus/pci/devices/{bdf}/driver_override"))
    conf = Path("/etc/modprobe.d")
    state["modprobe.d"] = {p.name: p.read_text() for p in sorted(conf.glob("*"))}
    state["addr"] = run(["ip", "-o", "-4", "addr"]).out  # v6 DAD flags change by themselves
    state["route"] = read("/proc/net/route")
    if Path(DOMU_CFG).exists():
        state["domu.cfg"] = read(DOMU_CFG)
    if Path("/proc/xen/privcmd").exists():
        state["assignable"] = assignable()
    return state


def expect_unchanged(before: dict[str, Any], what: str) -> None:
    after = snapshot()
    changed = [k for k in before if before[k] != after.get(k)]
    if changed:
        diffs = [f"{k}: {before[k]!r} -> {after.get(k)!r}"[:240] for k in changed]
        raise StepFailed(f"{what} changed the host: {'; '.join(diffs)}")


def host_used(entry: dict[str, Any]) -> list[Any]:
    """What ``pcipass list --json`` says the host uses this device for (``host_uses``)."""
    uses = entry.get("host_uses")
    return list(uses) if isinstance(uses, list) else []


def crosscheck_list(doc: Any) -> int:
    """Every device in ``list --json`` agrees with the sysfs driver link and with real lspci."""
    lspci = must(["lspci", "-n", "-D"]).out
    ids = {ln.split()[0]: ln.split()[2] for ln in lspci.splitlines() if len(ln.split()) > 2}
    devices = doc.get("devices", []) if isinstance(doc, dict) else []
    if len(devices) != len(ids):
        raise StepFailed(f"list shows {len(devices)} devices, lspci {len(ids)}")
    for dev in devices:
        bdf = dev.get("address")
        if dev.get("driver") != driver(bdf):
            raise StepFailed(f"list: {bdf} driver {dev.get('driver')!r}, sysfs {driver(bdf)!r}")
        if f"{dev.get('vendor_id')}:{dev.get('device_id')}" != ids.get(bdf):
            raise StepFailed(f"list: {bdf} ids differ from lspci ({ids.get(bdf)})")
    return len(devices)


def console() -> str:
    return read(CONSOLE)


def domu_pci_lines() -> list[str]:
    return re.findall(r"@@DOMU pci=\[([^\]]*)\]", console())


def domu_sees_nic() -> bool:
    lines = domu_pci_lines()
    return bool(lines) and "0x8086:0x100e" in lines[-1]


def domu_sees_nothing() -> bool:
    lines = domu_pci_lines()
    return bool(lines) and lines[-1].strip() == ""


def heartbeats() -> int:
    return console().count("@@DOMU hb")


def domu_alive(timeout: float = 30) -> float:
    n0 = heartbeats()
    return wait_for("two new domU heartbeats", lambda: heartbeats() >= n0 + 2, timeout)


def domu_running() -> bool:
    return run(["xl", "domid", "domu"]).rc == 0


def expect_assignable(present: bool) -> None:
    listed = SPARE in assignable()
    if listed != present:
        raise StepFailed(f"xl pci-assignable-list {'lacks' if present else 'still lists'} {SPARE}")


# ---------------------------------------------------------------- boot, toolstack


@step("python-pcipass", timeout=60)
def python_pcipass() -> str:
    res = must(
        [
            sys.executable,
            "-c",
            "import sqlite3, pcipass; print(pcipass.__version__, sqlite3.sqlite_version)",
        ]
    )
    return f"python {sys.version.split()[0]}, pcipass/sqlite {res.out.strip()}"


def start_toolstack() -> str:
    for mod in XEN_MODULES:
        must(["/sbin/modprobe", mod])
    must(["mount", "-t", "xenfs", "xenfs", "/proc/xen"])
    must(["xenstored", "--pid-file", "/run/xenstored.pid"])
    must(["xen-init-dom0"])
    must(
        [
            "xenconsoled",
            "--pid-file=/run/xenconsoled.pid",
            "--log=guest",
            "--log-dir=/var/log/xen/console",
        ]
    )
    caps = [ln for ln in must(["xl", "info"]).out.splitlines() if "virt_caps" in ln]
    return " ".join(caps[0].split()) if caps else ""


@step("xen-toolstack", timeout=120)
def xen_toolstack() -> str:
    caps = start_toolstack()
    # Without an IOMMU Xen 4.17 refuses all passthrough (lab notes): the lab must have one.
    if "directio" not in caps:
        raise StepFailed(f"xl info shows no IOMMU passthrough capability: {caps}")
    return caps


@step("xen-toolstack-noiommu", timeout=120)
def xen_toolstack_noiommu() -> str:
    caps = start_toolstack()
    if "directio" in caps:
        raise StepFailed(f"this boot should have no IOMMU, but xl info says {caps}")
    return caps


@step("uplink-network", timeout=60)
def uplink_network() -> str:
    # What a boot does with no udev: load the NIC driver, give the first NIC dom0's address.
    must(["/sbin/modprobe", "e1000"])
    expect_driver(UPLINK, "e1000")
    expect_driver(SPARE, "e1000")
    ifname = os.listdir(f"/sys/bus/pci/devices/{UPLINK}/net")[0]
    must(["ip", "link", "set", ifname, "up"])
    must(["ip", "addr", "add", XEN_UPLINK_IP, "dev", ifname])
    must(["ip", "route", "add", "default", "via", XEN_GATEWAY])
    return f"{UPLINK} = {ifname} {XEN_UPLINK_IP} default via {XEN_GATEWAY}"


# ---------------------------------------------------------------- see, refuse, hide now


@step("list", needs=("uplink-network",))
def list_json() -> str:
    doc = pcipass("list", "--json").json()
    count = crosscheck_list(doc)
    for bdf in (UPLINK, SPARE):
        entry = find_device(doc, bdf)
        if entry.get("driver") != "e1000":
            raise StepFailed(f"list: {bdf} driver {entry.get('driver')!r}, sysfs says e1000")
    uses = host_used(find_device(doc, UPLINK))
    if not uses:
        raise StepFailed(f"list: {UPLINK} carries dom0's address but host_uses is empty")
    if host_used(find_device(doc, SPARE)):
        raise StepFailed(f"list: spare NIC {SPARE} reported host-used")
    return f"{count} devices agree with sysfs+lspci; {UPLINK} host_uses={uses}; {SPARE} free"


@step("refuse-host-nic", needs=("uplink-network",))
def refuse_host_nic() -> str:
    before = snapshot()
    res = pcipass("hide", UPLINK, "--now", expect=3)
    if "PP001" not in res.text:
        raise StepFailed(f"refusal does not name PP001: {res.tail()}")
    expect_unchanged(before, "refused hide")
    chk = pcipass("check", UPLINK, "--json", expect=3)
    if not mentions(chk.out, "PP001"):
        raise StepFailed(f"check {UPLINK} exit 3 but no PP001 in JSON: {chk.out[:200]}")
    expect_unchanged(before, "check")
    return res.tail(1)


def _hide_now() -> str:
    pcipass("hide", SPARE, "--now")
    expect_driver(SPARE, "pciback", "after hide --now")
    expect_assignable(True)
    expect_driver(UPLINK, "e1000", "(the uplink must not move)")
    return f"{SPARE} -> pciback; xl pci-assignable-list agrees"


@step("hide-now", needs=("xen-toolstack", "uplink-network"))
def hide_now() -> str:
    return _hide_now()


@step("unhide-now", needs=("hide-now",))
def unhide_now() -> str:
    pcipass("unhide", SPARE, "--now")
    expect_driver(SPARE, "e1000", "after unhide --now")
    expect_assignable(False)
    if not Path(f"/sys/bus/pci/devices/{SPARE}/net").is_dir():
        raise StepFailed(f"{SPARE} is bound to e1000 but has no network interface")
    return f"{SPARE} -> e1000 (netdev back); not assignable"


@step("hide-again", needs=("unhide-now",))
def hide_again() -> str:
    return _hide_now()


# ---------------------------------------------------------------- assign to a PV domU


@step("attach-pv-refused", needs=("hide-again",))
def attach_pv_refused() -> str:
    Path(DOMU_CFG).write_text(DOMU_BASE_CFG)
    before = snapshot()
    res = pcipass("attach", SPARE, "domu", "--config", DOMU_CFG, expect=3)
    if "PP004" not in res.text:
        raise StepFailed(f"PV attach without --accept-pv-dma-risk: no PP004: {res.tail()}")
    expect_unchanged(before, "refused attach")
    return res.tail(1)


@step("attach-config", needs=("hide-again",))
def attach_config() -> str:
    if not Path(DOMU_CFG).exists():
        Path(DOMU_CFG).write_text(DOMU_BASE_CFG)
    pcipass("attach", SPARE, "domu", "--config", DOMU_CFG, "--accept-pv-dma-risk")
    cfg = read(DOMU_CFG)
    pci_lines = [ln for ln in cfg.splitlines() if ln.strip().startswith("pci")]
    if not pci_lines or SPARE[5:] not in pci_lines[0]:
        raise StepFailed(f"{DOMU_CFG} has no pci=[...] naming {SPARE}: {pci_lines}")
    if not cfg.startswith(DOMU_BASE_CFG.rstrip("\n")):
        raise StepFailed("attach rewrote lines it did not own")
    # xl's own parser is the judge of the syntax (needs the running Xen: only here).
    must(["xl", "-N", "create", DOMU_CFG])
    return pci_lines[0].strip()


@step("domu-boot", needs=("attach-config",), timeout=240)
def domu_boot() -> str:
    must(["xl", "create", DOMU_CFG], timeout=120)
    waited = wait_for("the domU to see the NIC through pcifront", domu_sees_nic, 180)
    pci = must(["xl", "pci-list", "domu"]).out
    if SPARE not in pci:
        raise StepFailed(f"xl pci-list domu lacks {SPARE}: {pci}")
    return f"domU sees {domu_pci_lines()[-1]} {waited:.0f}s after create"


@step("detach-live", needs=("domu-boot",))
def detach_live() -> str:
    pcipass("detach", SPARE, "domu", "--live")
    waited = wait_for("the device to leave the domU", domu_sees_nothing, 60)
    if SPARE in run(["xl", "pci-list", "domu"]).out:
        raise StepFailed("xl pci-list still shows the device")
    expect_driver(SPARE, "pciback", "(detached devices stay hidden)")
    return f"gone from domU after {waited:.1f}s"


@step("attach-live", needs=("detach-live",))
def attach_live() -> str:
    pcipass("attach", SPARE, "domu", "--live", "--accept-pv-dma-risk")
    waited = wait_for("the device to come back in the domU", domu_sees_nic, 60)
    return f"back in domU after {waited:.1f}s"


@step("hotplug-counted", needs=("attach-live",))
def hotplug_counted() -> str:
    """The PP007 limiter recorded the detach and the attach (status, else the ledger itself)."""
    doc = pcipass("status", "--json").json()
    events = doc.get("hotplug_events") if isinstance(doc, dict) else None
    source = "status --json"
    if events is None:
        # status does not show them (yet): read pcipass's ledger read-only with sqlite3.
        source = "ledger hotplug_events table (status --json has no hotplug_events)"
        db = sqlite3.connect("file:/var/lib/pcipass/state.db?mode=ro", uri=True)
        try:
            events = [
                {"kind": k, "guest": g}
                for k, g in db.execute(
                    "SELECT kind, guest FROM hotplug_events WHERE address = ?", (SPARE,)
                )
            ]
        finally:
            db.close()
    kinds = sorted(str(e.get("kind")) for e in events if isinstance(e, dict))
    if "attach" not in kinds or "detach" not in kinds:
        raise StepFailed(f"{source}: events for {SPARE} are {kinds}, expected attach and detach")
    return f"{source}: {len(kinds)} events {kinds}"


@step("hotplug-limit", needs=("hotplug-counted",))
def hotplug_limit() -> str:
    """PP007: past the budget the next live detach is refused and the guest keeps its device."""
    with hotplug_budget_used(SPARE) as seeded:
        res = pcipass("detach", SPARE, "domu", "--live", expect=3)
        if "PP007" not in res.text:
            raise StepFailed(f"refusal past the budget does not name PP007: {res.tail()}")
        if not domu_sees_nic() or SPARE not in run(["xl", "pci-list", "domu"]).out:
            raise StepFailed("the refused detach still took the device from the domU")
        domu_alive()
    return f"({seeded} events seeded) {res.tail(1)}; domU still has the device and is alive"


# ---------------------------------------------------------------- guard (PP003)


@step("guard-refuses", needs=("attach-live",))
def guard_refuses() -> str:
    notes = []
    for op in ("save", "migrate"):
        res = pcipass("guard", op, "domu", expect=None)
        if res.rc == 0:
            raise StepFailed(f"guard {op} domu allowed it while {SPARE} is attached")
        if "PP003" not in res.text:
            raise StepFailed(f"guard {op} refusal does not name PP003: {res.tail()}")
        notes.append(f"{op}: exit {res.rc}")
    domu_alive()
    return "; ".join(notes) + "; domU still alive"


@step("xl-wrapper-refuses-save", needs=("attach-live",))
def xl_wrapper_refuses_save() -> str:
    # pcipass's own wrapper (guard-install --wrap xl), in front of Debian's versioned xl.
    pcipass("guard-install", "--wrap", "xl")
    wrapper = Path("/usr/local/sbin/xl")
    if "/usr/lib/xen-4.17/bin/xl" not in wrapper.read_text():
        raise StepFailed("the wrapper does not run Debian's real xl: " + wrapper.read_text())
    res = run([str(wrapper), "save", "domu", "/tmp/wrapped.save"], timeout=120)
    if res.rc == 0:
        raise StepFailed("xl save through the guard wrapper succeeded")
    if Path("/tmp/wrapped.save").exists() or not domu_running():
        raise StepFailed("the refused save still touched the domain")
    domu_alive()
    return f"wrapped xl save exit {res.rc}: {res.tail(1)}; domU alive"


def save_dir() -> str:
    # dom0's rootfs (the initramfs) is capped at half of dom0_mem: give the 192 MB image room.
    if not Path(SAVE_DIR).is_mount():
        Path(SAVE_DIR).mkdir(parents=True, exist_ok=True)
        must(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", SAVE_DIR])
    return SAVE_DIR


@step("guard-plan-save-restore", needs=("xl-wrapper-refuses-save",), timeout=300)
def guard_plan_save_restore() -> str:
    """Follow the guard's own advice: detach --live, save, restore, attach --live again.

    Lab notes: this only works when the domain was built with passthrough="enabled"; a domain
    restored without devices otherwise cannot take one (xc_assign_device: not supported)."""
    pcipass("detach", SPARE, "domu", "--live")
    wait_for("the device to leave the domU", domu_sees_nothing, 60)
    image = f"{save_dir()}/plan.save"
    saved = run(["/usr/local/sbin/xl", "save", "domu", image], timeout=150)
    if saved.rc != 0:
        raise StepFailed(f"guarded xl save after detach --live: exit {saved.rc}: {saved.tail()}")
    restored = run(["xl", "restore", image], timeout=150)
    Path(image).unlink(missing_ok=True)
    if restored.rc != 0:
        raise StepFailed(f"xl restore exit {restored.rc}: {restored.tail()}")
    domu_alive()
    res = pcipass("attach", SPARE, "domu", "--live", "--accept-pv-dma-risk", expect=None)
    if res.rc != 0:
        cfg = [ln for ln in read(DOMU_CFG).splitlines() if "passthrough" in ln]
        raise StepFailed(
            f"re-attach after restore: exit {res.rc}: {res.tail(2)} (domu.cfg passthrough "
            f"lines: {cfg or 'none'})"
        )
    waited = wait_for("the device back in the restored domU", domu_sees_nic, 60)
    return f"detach, guarded save (exit 0), restore, attach: device back after {waited:.1f}s"


@step("pcipass-save-restore", needs=("attach-live",), timeout=300)
def pcipass_save_restore() -> str:
    """pcipass's own safe save: detach live, xl save, xl restore, attach live again."""
    image = f"{save_dir()}/pcipass.save"
    pcipass("save", "domu", image, timeout=200)
    if domu_running() or not Path(image).exists():
        raise StepFailed("pcipass save exit 0 but the domain still runs or no image was written")
    expect_driver(SPARE, "pciback", "(a saved guest's device stays hidden)")
    pcipass("restore", image, "domu", timeout=200)
    Path(image).unlink(missing_ok=True)
    domu_alive()
    waited = wait_for("the device back in the restored domU", domu_sees_nic, 60)
    return f"save + restore through pcipass; device back in the domU after {waited:.1f}s"


@step("domu-with-device", needs=("attach-config",), timeout=240)
def domu_with_device() -> str:
    """Make sure a domU holding the device runs (the step before may have left it without)."""
    if domu_running() and domu_sees_nic():
        return "domU still holds the device"
    run(["xl", "destroy", "domu"], timeout=60)
    Path(CONSOLE).write_text("")
    must(["xl", "create", DOMU_CFG], timeout=120)
    waited = wait_for("the domU to see the NIC", domu_sees_nic, 180)
    return f"domU re-created, sees the NIC after {waited:.0f}s"


@step("xl-save-unguarded", needs=("domu-with-device",), timeout=300)
def xl_save_unguarded() -> str:
    """Record what Xen itself does (lab notes: accepts, restored guest hangs)."""
    save = run(["xl", "save", "domu", f"{save_dir()}/domu.save"], timeout=150)
    facts = [f"real xl save exit {save.rc} ({save.tail(4)})"]
    if save.rc == 0 and not domu_running():
        restore = run(["xl", "restore", f"{SAVE_DIR}/domu.save"], timeout=150)
        facts.append(f"xl restore exit {restore.rc}")
        try:
            domu_alive(30)
            facts.append("restored domU alive")
        except StepFailed:
            lockup = "soft lockup" in console() or "pciback not responding" in console()
            facts.append("restored domU NOT alive" + (" (pcifront lockup)" if lockup else ""))
    run(["xl", "destroy", "domu"], timeout=60)
    Path(f"{SAVE_DIR}/domu.save").unlink(missing_ok=True)
    return "; ".join(facts)


# ---------------------------------------------------------------- persistent hiding


PERSISTED = ("/etc/modprobe.d", "/var/lib/pcipass", "/etc/default", "/etc/modprobe.conf")


@step("persist-hide", needs=("hide-again",))
def persist_hide() -> str:
    if domu_running():
        run(["xl", "destroy", "domu"], timeout=60)
    # The guest is gone; release the device from its configuration (PP101 otherwise).
    pcipass("detach", SPARE, "domu")
    pcipass("hide", SPARE, "--persist")
    shown = must(["/sbin/modprobe", "-c"]).out
    opts = [ln for ln in shown.splitlines() if "pciback" in ln]
    if not any(f"hide=({SPARE})" in ln for ln in opts):
        raise StepFailed(f"real kmod (modprobe -c) shows no pciback hide of {SPARE}: {opts}")
    files = []
    for root in PERSISTED:
        p = Path(root)
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            emit_file(str(f))
            files.append(str(f))
    info("persist-hide", "files carried to the next boot: " + " ".join(files))
    return "; ".join(opts) + "; " + forecast_for_xen2()


FORECAST = "/var/lib/lab/next-boot.json"


def forecast_for_xen2() -> str:
    """#16: what pcipass forecasts for the next boot (xen2), carried there to be compared."""
    return forecast_next_boot(FORECAST, {SPARE: "pciback", UPLINK: "e1000"})


@step("reload-driver-refused", needs=("persist-hide",))
def reload_driver_refused() -> str:
    """#18: the document's "reload the driver" would unbind the uplink too (both are e1000).

    With the spare back on e1000 (hidden at boot only), ``--reload-driver`` must refuse with
    PP001 naming the uplink and its default route, and change nothing; the warning of a plain
    ``--persist`` names them too.  Then the spare goes back to pciback for the next steps.
    """
    pcipass("unhide", SPARE, "--now")
    expect_driver(SPARE, "e1000", "after unhide --now")
    warned = pcipass("hide", SPARE, "--persist", "--dry-run")
    if UPLINK not in warned.text or "default route" not in warned.text:
        raise StepFailed(f"hide --persist does not warn about reloading e1000: {warned.tail()}")
    before = snapshot()
    res = pcipass("hide", SPARE, "--persist", "--reload-driver", expect=3)
    if "PP001" not in res.text or UPLINK not in res.text:
        raise StepFailed(f"--reload-driver not refused with PP001 naming {UPLINK}: {res.tail()}")
    expect_unchanged(before, "refused --reload-driver")
    expect_driver(UPLINK, "e1000", "(the uplink must not move)")
    pcipass("hide", SPARE, "--now")
    expect_driver(SPARE, "pciback", "after hide --now")
    return res.tail(1)


GRUB_DEFAULT = """\
# /etc/default/grub as Debian installs it (the lab's dom0 has no grub; grub-mkconfig would read it)
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""
"""


BY_HAND = "/etc/lab-cmdline-by-hand"


@step("persist-cmdline", needs=("persist-hide",))
def persist_cmdline() -> str:
    """The kernel-command-line form, carried to its own boot (xen3) without the modprobe.d one.

    xen-pciback is a module on this kernel, so the command line alone loses the race against
    e1000 at boot; pcipass may refuse it (PP010). Then the lab writes what an administrator would
    by hand, and xen3 shows on the real kernel why the refusal is right."""
    pcipass("unhide", SPARE, "--persist")
    if f"hide=({SPARE})" in must(["/sbin/modprobe", "-c"]).out:
        raise StepFailed("unhide --persist left the modprobe.d hide in place")
    grub = Path("/etc/default/grub")
    if not grub.exists():
        grub.parent.mkdir(parents=True, exist_ok=True)
        grub.write_text(GRUB_DEFAULT)
    before = snapshot() | {"grub": grub.read_text()}
    res = pcipass("hide", SPARE, "--persist", "--platform", "cmdline", expect=None)
    if res.rc == 3 and "PP010" in res.text:
        if snapshot() | {"grub": grub.read_text()} != before:
            raise StepFailed("the refused --platform cmdline changed files")
        grub.write_text(
            grub.read_text().replace(
                'GRUB_CMDLINE_LINUX=""', f'GRUB_CMDLINE_LINUX="xen-pciback.hide=({SPARE})"'
            )
        )
        Path(BY_HAND).write_text("the command line was written by hand, pcipass refused it\n")
        emit_file(BY_HAND, bundle="cmdline")
        outcome = f"pcipass refuses: {res.tail(1)}; xen3 boots a hand-written command line"
    elif res.rc == 0:
        outcome = "pcipass wrote the command-line form"
    else:
        raise StepFailed(f"hide --persist --platform cmdline exit {res.rc}: {res.tail()}")
    lines = [ln for ln in grub.read_text().splitlines() if ln.startswith("GRUB_CMDLINE")]
    if not any(f"xen-pciback.hide=({SPARE})" in ln for ln in lines):
        raise StepFailed(f"/etc/default/grub has no xen-pciback.hide=({SPARE}): {lines}")
    for root in PERSISTED:
        p = Path(root)
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            emit_file(str(f), bundle="cmdline")
    return f"{outcome}; {'; '.join(lines)}"


@step("cmdline-carried", timeout=30)
def cmdline_carried() -> str:
    cmdline = read("/proc/cmdline")
    if f"xen-pciback.hide=({SPARE})" not in cmdline:
        raise StepFailed(f"dom0 booted without the persisted hide: {cmdline}")
    return cmdline


def udev_coldplug() -> None:
    """Load drivers the way udev's coldplug does: modprobe each PCI function's modalias."""
    for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
        alias = read(dev / "modalias")
        if alias:
            run(["/sbin/modprobe", "-q", alias], timeout=60)


@step("boot-claims-device", timeout=120)
def boot_claims_device() -> str:
    udev_coldplug()
    expect_driver(SPARE, "pciback", "after coldplug with the persisted configuration")
    expect_driver(UPLINK, "e1000")
    return f"{SPARE} on pciback at boot (kmod read {', '.join(os.listdir('/etc/modprobe.d'))})"


@step("cmdline-outcome", needs=("cmdline-carried", "xen-toolstack"), timeout=120)
def cmdline_outcome() -> str:
    """xen3: what the kernel command line achieves at boot, judged against pcipass's view."""
    udev_coldplug()
    got = driver(SPARE)
    chk = pcipass("check", SPARE, "--json", expect=None)
    if Path(BY_HAND).exists():
        # pcipass refused this form: the real kernel must show why (e1000 wins the race), and
        # check must see the command line's hide not holding (PP010 drift).
        if got != "e1000":
            raise StepFailed(
                f"hand-written xen-pciback.hide= gave {SPARE} to {got}: the PP010 "
                "refusal of --platform cmdline would be wrong here"
            )
        if "PP010" not in chk.out:
            raise StepFailed(f"check does not report the drift (exit {chk.rc}): {chk.out[:300]}")
        return f"command line alone: {SPARE} on e1000 after coldplug, as pcipass said; check PP010"
    expect_driver(SPARE, "pciback", "with pcipass's command-line form")
    expect_assignable(True)
    if "PP010" in chk.out:
        raise StepFailed(f"check reports drift: {chk.out[:300]}")
    return f"{SPARE} on pciback at boot via the command line; assignable; no drift"


@step("forecast-agrees", needs=("boot-claims-device",))
def forecast_agrees_xen() -> str:
    """The forecast xen1 printed for this boot matches what the real kernel bound, device by
    device (after udev's coldplug: modprobe of each modalias)."""
    return forecast_agrees(FORECAST) + f" ({SPARE} pciback, {UPLINK} e1000)"


@step("boot-assignable", needs=("boot-claims-device", "xen-toolstack"))
def boot_assignable() -> str:
    expect_assignable(True)
    return "xl pci-assignable-list lists it"


@step("check-no-drift", needs=("boot-claims-device",))
def check_no_drift() -> str:
    res = pcipass("check", SPARE, "--json", expect=None)
    doc = res.json()
    if mentions(doc, "PP010") or res.rc not in (0, 1):
        raise StepFailed(f"check reports drift or refuses (exit {res.rc}): {res.out[:300]}")
    rules = sorted({f.get("rule", "?") for f in doc.get("findings", []) if isinstance(f, dict)})
    return f"check exit {res.rc}, no PP010; other findings: {rules}"


RHEL5_LINES = (
    "options pciback hide=({bdf})\n"
    "install e1000 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install e1000\n"
)


def _reset_drivers() -> None:
    for mod in ("e1000", "xen-pciback"):
        run(["/sbin/rmmod", mod])


@step("rhel5-lines-on-this-kernel", needs=("boot-claims-device",))
def rhel5_lines() -> str:
    """The document's lines verbatim under real kmod: expected to fail silently (lab notes)."""
    saved = {p: p.read_text() for p in Path("/etc/modprobe.d").glob("*")}
    for p in saved:
        p.unlink()
    try:
        _reset_drivers()
        Path("/etc/modprobe.d/rhel5.conf").write_text(RHEL5_LINES.format(bdf=SPARE))
        res = run(["/sbin/modprobe", "-v", "e1000"])
        facts = f"modprobe e1000 exit {res.rc}, spare -> {driver(SPARE)}: {res.tail(1)}"
        chk = pcipass("check", SPARE, "--json", expect=None)
        if chk.rc == 0 or not mentions(chk.out, "pciback"):
            raise StepFailed(
                f"check did not flag the broken RHEL 5 form: {facts}; check exit "
                f"{chk.rc}: {chk.out[:200]}"
            )
        return facts + f"; check flags it (exit {chk.rc})"
    finally:
        Path("/etc/modprobe.d/rhel5.conf").unlink(missing_ok=True)
        _reset_drivers()
        for p, text in saved.items():
            p.write_text(text)


@step("rhel5-platform-works", needs=("boot-claims-device",))
def rhel5_platform_works() -> str:
    """pcipass's RHEL 5 form must be one that real kmod honours on this kernel."""
    for p in Path("/etc/modprobe.d").glob("*"):
        p.unlink()
    _reset_drivers()
    pcipass("hide", SPARE, "--persist", "--platform", "rhel5")
    written = {str(p): p.read_text() for p in Path("/etc").rglob("modprobe*") if p.is_file()}
    res = run(["/sbin/modprobe", "-v", "e1000"])
    expect_driver(SPARE, "pciback", f"after modprobe e1000 with pcipass's rhel5 form {written}")
    return f"modprobe e1000 exit {res.rc}; {SPARE} on pciback"


SMOKE = ["python-pcipass", "xen-toolstack", "uplink-network", "list", "hide-now", "unhide-now"]
plan("xen-smoke", SMOKE)
plan(
    "xen-full",
    [
        *SMOKE,
        "refuse-host-nic",
        "hide-again",
        "attach-pv-refused",
        "attach-config",
        "domu-boot",
        "detach-live",
        "attach-live",
        "hotplug-counted",
        "hotplug-limit",
        "guard-refuses",
        "xl-wrapper-refuses-save",
        "guard-plan-save-restore",
        "pcipass-save-restore",
        "domu-with-device",
        "xl-save-unguarded",
        "persist-hide",
        "reload-driver-refused",
        "persist-cmdline",
    ],
)
plan(
    "xen-boot-cmdline",
    ["python-pcipass", "cmdline-carried", "xen-toolstack", "cmdline-outcome"],
)
plan(
    "xen-boot2",
    [
        "python-pcipass",
        "boot-claims-device",
        "forecast-agrees",
        "xen-toolstack",
        "boot-assignable",
        "check-no-drift",
        "rhel5-lines-on-this-kernel",
        "rhel5-platform-works",
    ],
)


# ---------------------------------------------------------------- no IOMMU (PP006)


@step("noiommu-attach-refused", needs=("xen-toolstack-noiommu", "uplink-network"))
def noiommu_attach_refused() -> str:
    """Xen 4.17 refuses passthrough without an IOMMU, PV included (lab notes): so must pcipass."""
    hide = pcipass("hide", SPARE, "--now", expect=None)
    xl_add = run(["xl", "pci-assignable-add", SPARE]) if driver(SPARE) != "pciback" else None
    Path(DOMU_CFG).write_text(DOMU_BASE_CFG)
    before = snapshot()
    res = pcipass("attach", SPARE, "domu", "--config", DOMU_CFG, "--accept-pv-dma-risk", expect=3)
    if "PP006" not in res.text:
        raise StepFailed(f"attach without an IOMMU refused without PP006: {res.tail()}")
    expect_unchanged(before, "refused attach")
    # What Xen itself says about the same request.
    Path("/tmp/xl-pci.cfg").write_text(DOMU_BASE_CFG + f"pci = [ '{SPARE}' ]\n")
    xl = run(["xl", "create", "/tmp/xl-pci.cfg"], timeout=60)
    run(["xl", "destroy", "domu"])
    info("noiommu-attach-refused", f"pcipass hide --now exit {hide.rc}: {hide.tail(1)}")
    if xl_add is not None:
        info("noiommu-attach-refused", f"xl pci-assignable-add exit {xl_add.rc}: {xl_add.tail(1)}")
    return f"{res.tail(1)}; xl create with pci=[...] exit {xl.rc}: {xl.tail(1)}"


# ---------------------------------------------------------------- lab self-test (no pcipass)


@step("selftest-xl-domu", needs=("xen-toolstack", "uplink-network"), timeout=240)
def selftest_xl_domu() -> str:
    """The lab's own plumbing with plain xl (what the lab notes did by hand): domU sees the NIC."""
    must(["/sbin/modprobe", "xen-pciback"])
    must(["xl", "pci-assignable-add", SPARE])
    Path(DOMU_CFG).write_text(DOMU_BASE_CFG + f"pci = [ '{SPARE}' ]\n")
    must(["xl", "create", DOMU_CFG], timeout=120)
    waited = wait_for("the domU to see the NIC", domu_sees_nic, 180)
    run(["xl", "destroy", "domu"], timeout=60)
    must(["xl", "pci-assignable-remove", "-r", SPARE])
    expect_driver(SPARE, "e1000")
    return f"domU saw the NIC {waited:.0f}s after xl create"


plan(
    "xen-noiommu",
    ["python-pcipass", "xen-toolstack-noiommu", "uplink-network", "noiommu-attach-refused"],
)
plan("xen-selftest", ["python-pcipass", "xen-toolstack", "uplink-network", "selftest-xl-domu"])

# The #18 reload boot (xen5) lives in its own module; importing it registers its steps.
import steps_xen_reload  # noqa: E402, F401
