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

The kernel side (called by :class:`~pcipass.testing.fakehost.FakeKernel`):
``/sys/bus/platform/drivers/X/unbind`` and ``bind`` move the device's
``driver`` link as drivers/base/bus.c does; a PCI ``reset`` either leaves the
device as it was (a good reset) or, for a device marked with
:func:`make_reset_break`, makes its configuration space read all ones, as a
function that did not come back from reset answers (PCI 3.0 §6.1: a read of a
function that does not respond returns 0xFFFF in the Vendor ID).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pcipass.address import PciAddress

# drivers/firmware/sysfb.c: the platform device names, and the drivers that bind them.
FIRMWARE_FRAMEBUFFERS = {
    "efifb": ("efi-framebuffer.0", "efi-framebuffer", "EFI VGA"),
    "simpledrm": ("simple-framebuffer.0", "simple-framebuffer", "simpledrmdrmfb"),
    "vesafb": ("vesa-framebuffer.0", "vesa-framebuffer", "VESA VGA"),
}

BAD_RESET_STORE = ".fake-bad-reset"


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
    _bind_platform(base, device, driver)
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
    name = str(PciAddress.parse(address))
    _write(base / BAD_RESET_STORE / name, "1\n")


# ---- the kernel side ----------------------------------------------------------------


def _bind_platform(base: Path, device: str, driver: str) -> None:
    sys = base / "sys"
    dev_dir = sys / "devices" / "platform" / device
    drv_dir = sys / "bus" / "platform" / "drivers" / driver
    _link(dev_dir / "driver", drv_dir)
    _link(drv_dir / device, dev_dir)


def platform_write(base: Path, driver: str, attr: str, text: str) -> None:
    """``/sys/bus/platform/drivers/DRIVER/{bind,unbind}`` (drivers/base/bus.c)."""
    sys = base / "sys"
    drv_dir = sys / "bus" / "platform" / "drivers" / driver
    dev_dir = sys / "devices" / "platform" / text
    if not drv_dir.is_dir() or "/" in text or not text or not dev_dir.is_dir():
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
    current = dev_dir / "driver"
    bound = os.path.basename(os.readlink(current)) if os.path.islink(current) else None
    if attr == "unbind":
        if bound != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        current.unlink()
        (drv_dir / text).unlink()
    elif attr == "bind":
        if bound is not None:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        _bind_platform(base, text, driver)
    else:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def handles(parts: tuple[str, ...]) -> bool:
    """Is a write to this host path (split) one for :func:`kernel_write`?"""
    return parts[-1] in ("reset", "reset_method") or parts[2:4] in (
        ("bus", "platform"),
        ("class", "vtconsole"),
    )


def kernel_write(base: Path, path: Path, parts: tuple[str, ...], text: str) -> None:
    """The fake kernel's writes this module handles (see the module docstring)."""
    if parts[1:5] == ("sys", "bus", "platform", "drivers") and len(parts) == 7:
        platform_write(base, parts[5], parts[6], text)
    elif parts[2:4] == ("class", "vtconsole") and path.name == "bind":
        # vt.c store_bind: "1" binds, "0" unbinds; the attribute reads "%i\n".
        if text not in ("0", "1") or not path.exists():
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        path.write_text(text + "\n")
    elif path.name == "reset":
        reset_write(base, path.parent)
    elif path.name == "reset_method":
        reset_method_write(base, path, text)
    else:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))


SUPPORTED_RESETS = ".fake-reset-methods"


def reset_method_write(base: Path, path: Path, text: str) -> None:
    """drivers/pci/pci.c reset_method_store: "default" enables every supported
    method; otherwise each named method must be supported (EINVAL), and the
    list becomes what the kernel tries, in that order."""
    store = base / SUPPORTED_RESETS / path.parent.name
    if not store.exists():
        _write(store, path.read_text())
    supported = store.read_text().split()
    if text == "default":
        path.write_text(" ".join(supported) + "\n")
        return
    wanted = text.split()
    if not wanted or any(method not in supported for method in wanted):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    path.write_text(" ".join(wanted) + "\n")


def reset_write(base: Path, device_dir: Path) -> None:
    """``reset``: ENOTTY without a reset method; a device marked bad stops answering."""
    methods_file = device_dir / "reset_method"
    methods = methods_file.read_text().split() if methods_file.exists() else []
    if not methods:
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
    if (base / BAD_RESET_STORE / device_dir.name).exists():
        config = device_dir / "config"
        config.write_bytes(b"\xff" * len(config.read_bytes()))
