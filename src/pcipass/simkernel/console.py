"""The simulated kernel's GPU parts: the boot console's holders and function resets.

What Linux does on these writes (used by :class:`pcipass.simkernel.kernel.SimKernel`):

* ``/sys/bus/platform/drivers/X/unbind`` and ``bind``: the platform device's
  ``driver`` link moves as drivers/base/bus.c does (the firmware framebuffers
  ``efi-framebuffer.0``, ``simple-framebuffer.0``, ``vesa-framebuffer.0``);
* ``/sys/class/vtconsole/vtconN/bind``: "0" unbinds, "1" binds (vt.c);
* a PCI ``reset``: ENOTTY without a reset method; a device marked with
  :func:`mark_reset_break` answers every configuration read with all ones
  afterwards, as a function that did not come back from reset does (PCI 3.0
  §6.1: no device answering reads 0xFFFF in the Vendor ID);
* ``reset_method``: "default" or a subset of the supported methods (EINVAL
  otherwise), as drivers/pci/pci.c reset_method_store.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pcipass.address import PciAddress

BAD_RESET_STORE = ".fake-bad-reset"
SUPPORTED_RESETS = ".fake-reset-methods"


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def mark_reset_break(base: Path, address: str) -> None:
    """From its next ``reset`` on, the function answers every config read with 0xFF."""
    name = str(PciAddress.parse(address))
    store = base / BAD_RESET_STORE / name
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("1\n")


def bind_platform(base: Path, device: str, driver: str) -> None:
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
        bind_platform(base, text, driver)
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


def reset_method_write(base: Path, path: Path, text: str) -> None:
    """drivers/pci/pci.c reset_method_store: "default" enables every supported
    method; otherwise each named method must be supported (EINVAL), and the
    list becomes what the kernel tries, in that order."""
    store = base / SUPPORTED_RESETS / path.parent.name
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(path.read_text())
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
