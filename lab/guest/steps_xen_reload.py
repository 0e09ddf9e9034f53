"""Xen lab boot xen5 (issue #18): the uplink is an e1000e, so e1000 drives the spare alone.

There the document's "reload the driver" is safe, and ``hide --persist --reload-driver`` must
do it (the spare ends on pciback, the uplink keeps its address and route), and
``unhide --persist --reload-driver`` must undo it through the stub's reload.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from registry import plan, step
from steplib import StepFailed, expect_driver, must, pcipass, read, run
from topology import XEN_GATEWAY, XEN_SPARE, XEN_UPLINK, XEN_UPLINK_IP

UPLINK, SPARE = XEN_UPLINK, XEN_SPARE


def expect_assignable(present: bool) -> None:
    out = must(["xl", "pci-assignable-list"]).out
    listed = SPARE in re.findall(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", out)
    if listed != present:
        raise StepFailed(f"xl pci-assignable-list {'lacks' if present else 'still lists'} {SPARE}")


def uplink_state() -> tuple[str, str]:
    return run(["ip", "-o", "-4", "addr"]).out, read("/proc/net/route")


@step("uplink-other-driver", timeout=60)
def uplink_other_driver() -> str:
    """xen5: the uplink is an e1000e, so e1000 drives the spare alone."""
    must(["/sbin/modprobe", "e1000e"])
    must(["/sbin/modprobe", "e1000"])
    expect_driver(UPLINK, "e1000e")
    expect_driver(SPARE, "e1000")
    ifname = os.listdir(f"/sys/bus/pci/devices/{UPLINK}/net")[0]
    must(["ip", "link", "set", ifname, "up"])
    must(["ip", "addr", "add", XEN_UPLINK_IP, "dev", ifname])
    must(["ip", "route", "add", "default", "via", XEN_GATEWAY])
    return f"{UPLINK} = {ifname} (e1000e) {XEN_UPLINK_IP} default via {XEN_GATEWAY}"


def expect_uplink_kept(before: tuple[str, str], what: str) -> None:
    expect_driver(UPLINK, "e1000e", f"(the uplink must not move: {what})")
    if uplink_state() != before:
        raise StepFailed(f"{what} changed the uplink's address or routes: {uplink_state()}")


@step("reload-driver-works", needs=("uplink-other-driver", "xen-toolstack"))
def reload_driver_works() -> str:
    """``hide --persist --reload-driver``: the document's method, done when it is safe."""
    before = uplink_state()
    res = pcipass("hide", SPARE, "--persist", "--reload-driver")
    expect_driver(SPARE, "pciback", f"after hide --persist --reload-driver: {res.tail()}")
    expect_uplink_kept(before, "hide --persist --reload-driver")
    expect_assignable(True)
    shown = must(["/sbin/modprobe", "-c"]).out
    if f"hide=({SPARE})" not in shown:
        raise StepFailed(f"real kmod (modprobe -c) shows no pciback hide of {SPARE}")
    ran = [ln.strip() for ln in res.out.splitlines() if "ran:" in ln]
    return f"{SPARE} on pciback by reloading e1000; uplink kept; {' '.join(ran)}"


@step("unhide-reload-driver-works", needs=("reload-driver-works",))
def unhide_reload_driver_works() -> str:
    """``unhide --persist --reload-driver``: the stub's reload gives the spare back to e1000."""
    before = uplink_state()
    res = pcipass("unhide", SPARE, "--persist", "--reload-driver")
    expect_driver(SPARE, "e1000", f"after unhide --persist --reload-driver: {res.tail()}")
    expect_uplink_kept(before, "unhide --persist --reload-driver")
    expect_assignable(False)
    if f"hide=({SPARE})" in must(["/sbin/modprobe", "-c"]).out:
        raise StepFailed("unhide --persist --reload-driver left the hide in modprobe.d")
    if not Path(f"/sys/bus/pci/devices/{SPARE}/net").is_dir():
        raise StepFailed(f"{SPARE} is bound to e1000 but has no network interface")
    ran = [ln.strip() for ln in res.out.splitlines() if "ran:" in ln]
    return f"{SPARE} back on e1000 by reloading pciback; uplink kept; {' '.join(ran)}"


plan(
    "xen-reload",
    [
        "python-pcipass",
        "xen-toolstack",
        "uplink-other-driver",
        "reload-driver-works",
        "unhide-reload-driver-works",
    ],
)
