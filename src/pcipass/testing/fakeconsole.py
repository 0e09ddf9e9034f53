"""What the fake kernel does for a GPU: the boot console's holders and function resets.

Builders put into a :class:`~pcipass.testing.fakehost.FakeHost` tree what
Linux shows for the console of a boot GPU:

* a firmware framebuffer platform device (``efi-framebuffer.0`` bound to the
  ``efi-framebuffer`` driver, ``simple-framebuffer.0`` bound to simpledrm,
  whose platform driver is also named ``simple-framebuffer``, or
  ``vesa-framebuffer.0``), as drivers/firmware/sysfb.c registers it, with its
  ``/dev/fbN`` (and for simpledrm its ``/dev/dri/cardN``);
* the virtual terminal console drivers under ``/sys/class/vtconsole``
  (``vtcon0`` the dummy console, ``vtcon1`` fbcon, "frame buffer device"),
  each with its ``bind`` attribute (drivers/tty/vt/vt.c, vtconsole_class);
* a process holding ``/dev/dri/cardN`` open (a display manager), as
  ``/proc/PID/fd/N`` links and ``/proc/PID/comm``.

The kernel side (platform driver bind/unbind, vtconsole bind, good and bad
resets, ``reset_method``) is the simulated kernel's: :mod:`pcipass.simkernel.console`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcipass.simkernel.console import bind_platform, mark_reset_break

# drivers/firmware/sysfb.c: the platform device names, and the drivers that bind them.
FIRMWARE_FRAMEBUFFERS = {
    "efifb": ("efi-framebuffer.0", "efi-framebuffer", "EFI VGA"),
    "simpledrm": ("simple-framebuffer.0", "simple-framebuffer", "simpledrmdrmfb"),
    "vesafb": ("vesa-framebuffer.0", "vesa-framebuffer", "VESA VGA"),
}


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def add_firmware_framebuffer(base: Path, kind: str = "simpledrm", *, fb: str = "fb0") -> str:
    """The firmware's framebuffer as a bound platform device; returns its name."""
    device, driver, fb_name = FIRMWARE_FRAMEBUFFERS[kind]
    sys = base / "sys"
    dev_dir = sys / "devices" / "platform" / device
    drv_dir = sys / "bus" / "platform" / "drivers" / driver
    for attr in ("bind", "unbind"):
        _write(drv_dir / attr, "", 0o200)
    _write(dev_dir / "uevent", f"DRIVER={driver}\nMODALIAS=platform:{device.split('.')[0]}\n")
    _link(sys / "bus" / "platform" / "devices" / device, dev_dir)
    _link(dev_dir / "subsystem", sys / "bus" / "platform")
    bind_platform(base, device, driver)
    parent = dev_dir
    if kind == "simpledrm":
        parent = dev_dir / "drm" / "card0"
        _write(parent / "dev", "226:0\n")
        _link(parent / "device", dev_dir)
        _link(sys / "class" / "drm" / "card0", parent)
    fb_dir = parent / "graphics" / fb
    _write(fb_dir / "name", fb_name + "\n")
    _link(fb_dir / "device", parent)
    _link(sys / "class" / "graphics" / fb, fb_dir)
    return device


def add_vtconsoles(base: Path, *, fbcon_bound: bool = True) -> None:
    """vtcon0 (the dummy console, never unbound) and vtcon1 (fbcon)."""
    vtc = base / "sys" / "devices" / "virtual" / "vtconsole"
    for name, text, bound in (
        ("vtcon0", "(S) dummy device", True),
        ("vtcon1", "(M) frame buffer device", fbcon_bound),
    ):
        _write(vtc / name / "name", text + "\n", 0o444)
        _write(vtc / name / "bind", "1\n" if bound else "0\n")
        _link(base / "sys" / "class" / "vtconsole" / name, vtc / name)


def add_process(base: Path, pid: int, comm: str, files: dict[int, str]) -> None:
    """A process with ``files`` (fd -> path) open, as /proc shows it."""
    proc = base / "proc" / str(pid)
    _write(proc / "comm", comm + "\n", 0o444)
    for fd, target in files.items():
        link = proc / "fd" / str(fd)
        link.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(link):
            link.unlink()
        os.symlink(target, link)  # /proc/PID/fd links name the host's path, as text


def add_drm_card(base: Path, card: str, device_dir: Path) -> None:
    """``/sys/class/drm/cardN`` of a native GPU driver, on the PCI function."""
    card_dir = device_dir / "drm" / card
    _write(card_dir / "dev", f"226:{card.removeprefix('card')}\n")
    _link(card_dir / "device", device_dir)
    _link(base / "sys" / "class" / "drm" / card, card_dir)


def make_reset_break(base: Path, address: str) -> None:
    """From its next ``reset`` on, the function answers every config read with 0xFF."""
    mark_reset_break(base, address)
