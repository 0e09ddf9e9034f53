"""``hide --release-console``: let go of the boot GPU's console, with rollback.

The steps, before the GPU is unbound (policy/console.py decided they are
safe: no process holds the device):

1. ``echo 0 > /sys/class/vtconsole/vtconN/bind`` for each vtcon bound to
   fbcon, when no framebuffer on another device remains for fbcon to move to
   (drivers/tty/vt/vt.c: the dummy console takes the terminals over);
2. ``echo DEVICE > /sys/bus/platform/drivers/DRIVER/unbind`` for the firmware
   framebuffer (efifb, vesafb, simplefb/simpledrm) whose memory is the GPU's BAR.

What to give back is saved in the transaction's intent (``console``) before
anything is done, and :func:`restore_console` is the undo of a failed or
interrupted hide and of ``pcipass recover``: it rebinds the framebuffer, then
fbcon, whatever was done already (each step is checked, not replayed).  The
record is data: :func:`validate_console` accepts only vtcon names and the
firmware framebuffer devices and drivers pcipass knows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from pcipass.address import PciAddress
from pcipass.errors import RefusedError
from pcipass.host.console import (
    FIRMWARE_FB_DRIVERS,
    FirmwareFramebuffer,
    console_holders,
    valid_fb_device,
    valid_vtcon,
)
from pcipass.host.context import Host
from pcipass.ops.rebind import Step
from pcipass.record import dataclass, field


@dataclass
class ConsoleRelease:
    vtcons: list[str] = field(default_factory=list)
    framebuffers: list[FirmwareFramebuffer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.vtcons or self.framebuffers)

    def to_json(self) -> dict[str, object]:
        return {
            "vtcons": list(self.vtcons),
            "framebuffers": [{"device": f.device, "driver": f.driver} for f in self.framebuffers],
        }

    def steps(self, host: Host) -> list[Step]:
        """The sysfs writes, in order; the intent holds their undo (no per-step record)."""
        steps: list[Step] = []
        for vtcon in self.vtcons:
            path = host.root.path(f"/sys/class/vtconsole/{vtcon}/bind")
            steps.append(
                Step(
                    f"echo 0 > /sys/class/vtconsole/{vtcon}/bind",
                    functools.partial(host.sysfs.write_attr, path, "0"),
                    None,
                )
            )
        for fb in self.framebuffers:
            path = host.root.path(f"/sys/bus/platform/drivers/{fb.driver}/unbind")
            steps.append(
                Step(
                    f"echo {fb.device} > /sys/bus/platform/drivers/{fb.driver}/unbind",
                    functools.partial(host.sysfs.write_attr, path, fb.device),
                    None,
                )
            )
        return steps


def plan_release(host: Host, addresses: Sequence[PciAddress]) -> ConsoleRelease:
    """What ``--release-console`` lets go of for the boot GPUs among ``addresses``."""
    release = ConsoleRelease()
    for address in addresses:
        holders = console_holders(host, address)
        if not holders.boot_vga:
            continue
        if not holders.other_framebuffers:
            release.vtcons += [v for v in holders.fbcon if v not in release.vtcons]
        release.framebuffers += [f for f in holders.firmware_fbs if f not in release.framebuffers]
    return release


def _refuse(op_id: int, what: str) -> RefusedError:
    return RefusedError(
        f"journal operation {op_id}",
        f"console record {what!r}: not a console pcipass releases; pcipass did not write this "
        "record and will not act on it",
        "inspect the state database (pcipass status); move it aside if it is not this host's",
    )


def validate_console(op_id: int, saved: object) -> ConsoleRelease:
    """The intent's ``console`` record as data, or a refusal naming what is wrong."""
    if not isinstance(saved, dict):
        raise _refuse(op_id, str(saved))
    vtcons, fbs = saved.get("vtcons", []), saved.get("framebuffers", [])
    if not isinstance(vtcons, list) or not isinstance(fbs, list):
        raise _refuse(op_id, str(saved))
    release = ConsoleRelease()
    for vtcon in vtcons:
        if not isinstance(vtcon, str) or not valid_vtcon(vtcon):
            raise _refuse(op_id, str(vtcon))
        release.vtcons.append(vtcon)
    for fb in fbs:
        device = fb.get("device") if isinstance(fb, dict) else None
        driver = fb.get("driver") if isinstance(fb, dict) else None
        if (
            not isinstance(device, str)
            or not valid_fb_device(device)
            or driver not in FIRMWARE_FB_DRIVERS
        ):
            raise _refuse(op_id, str(fb))
        release.framebuffers.append(FirmwareFramebuffer(device, str(driver)))
    return release


def restore_console(host: Host, saved: Mapping[str, object]) -> list[str]:
    """Give back what a release took, as far as it went; returns what was done."""
    release = validate_console(0, dict(saved))
    sysfs, root = host.sysfs, host.root
    done: list[str] = []
    for fb in release.framebuffers:
        if sysfs.link_name(root.path(f"/sys/bus/platform/devices/{fb.device}/driver")) is None:
            sysfs.write_attr(root.path(f"/sys/bus/platform/drivers/{fb.driver}/bind"), fb.device)
            done.append(f"{fb.device}: bound to {fb.driver} again (the console is back)")
    for vtcon in release.vtcons:
        bind = root.path(f"/sys/class/vtconsole/{vtcon}/bind")
        if sysfs.read_text(bind) == "0":
            sysfs.write_attr(bind, "1")
            done.append(f"{vtcon}: fbcon bound again")
    return done
