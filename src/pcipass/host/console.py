"""What holds the host's console on a GPU: framebuffers, fbcon, DRM clients.

The boot VGA device (``boot_vga`` = 1: the device whose BARs hold the
firmware's screen, drivers/pci/vgaarb.c vga_arb_select_default_device) is
where the firmware left the console.  Linux keeps it there through:

* a firmware framebuffer: drivers/firmware/sysfb.c registers the screen the
  firmware set up as a platform device, ``efi-framebuffer.0`` (efifb),
  ``vesa-framebuffer.0`` (vesafb) or ``simple-framebuffer.0`` (simplefb, or
  simpledrm, whose platform driver has the same name).  It belongs to the boot
  VGA device by construction: its memory is that device's BAR;
* a native driver's framebuffer (``/sys/class/graphics/fbN`` under the PCI
  function), which goes when the driver is unbound;
* fbcon, the console driver that draws the virtual terminals on framebuffers:
  ``/sys/class/vtconsole/vtconN`` whose ``name`` says "frame buffer device";
  ``bind`` 1 means it is in use (drivers/tty/vt/vt.c);
* processes with the device's DRM node (``/dev/dri/cardN``, ``renderDN``) or
  framebuffer (``/dev/fbN``) open: a display manager, Xorg, a Wayland
  compositor (``/proc/PID/fd``).

Other consoles: a serial console named on the kernel command line
(``console=ttyS0,115200``, ``ttyAMA0``, ``hvc0``...), and a framebuffer on
another device (fbcon moves to it).
"""

from __future__ import annotations

import re

from pcipass.address import PciAddress
from pcipass.errors import PcipassError
from pcipass.host.context import Host
from pcipass.patterns import lazy
from pcipass.record import dataclass, field

# The platform drivers sysfb's devices bind to (efifb, vesafb, simplefb/simpledrm).
FIRMWARE_FB_DRIVERS = ("efi-framebuffer", "vesa-framebuffer", "simple-framebuffer")
_FIRMWARE_FB_DEVICE = lazy(r"^(efi|vesa|simple)-framebuffer\.[0-9]+$")
_VTCON = lazy(r"^vtcon[0-9]+$")
# console= names that are virtual terminals (drawn by fbcon/vgacon), not a serial line.
_VIRTUAL_CONSOLE = lazy(r"^tty[0-9]*$")


def valid_fb_device(name: str) -> bool:
    return bool(_FIRMWARE_FB_DEVICE.match(name))


def valid_vtcon(name: str) -> bool:
    return bool(_VTCON.match(name))


@dataclass(frozen=True)
class FirmwareFramebuffer:
    device: str  # efi-framebuffer.0
    driver: str  # efi-framebuffer

    @property
    def kind(self) -> str:
        return {
            "efi-framebuffer": "efifb",
            "vesa-framebuffer": "vesafb",
            "simple-framebuffer": "simplefb/simpledrm",
        }.get(self.driver, self.driver)


@dataclass(frozen=True)
class ConsoleProcess:
    pid: int
    command: str
    path: str  # /dev/dri/card0


@dataclass
class ConsoleHolders:
    """Everything holding the console on one GPU function, and the host's other consoles."""

    address: PciAddress
    boot_vga: bool
    firmware_fbs: list[FirmwareFramebuffer] = field(default_factory=list)
    framebuffers: list[str] = field(default_factory=list)  # fbN on the device
    fbcon: list[str] = field(default_factory=list)  # vtconN bound to fbcon
    processes: list[ConsoleProcess] = field(default_factory=list)
    serial_consoles: list[str] = field(default_factory=list)  # console= serial lines
    other_framebuffers: list[str] = field(default_factory=list)  # fbN elsewhere

    @property
    def held(self) -> bool:
        return bool(self.firmware_fbs or self.framebuffers or self.processes)

    @property
    def other_console(self) -> bool:
        return bool(self.serial_consoles or self.other_framebuffers)

    def describe(self) -> list[str]:
        """Each holder in words, for the refusal."""
        words = [
            f"{fb.device} ({fb.kind}) shows the firmware's framebuffer on it"
            for fb in self.firmware_fbs
        ]
        words += [f"/dev/{fb} is its framebuffer" for fb in self.framebuffers]
        words += [f"fbcon draws the text consoles ({vt} bound)" for vt in self.fbcon]
        words += [f"{p.command} (pid {p.pid}) has {p.path} open" for p in self.processes]
        return words


def console_holders(host: Host, address: PciAddress) -> ConsoleHolders:
    """Read what holds the console on ``address`` (see the module docstring)."""
    sysfs, root = host.sysfs, host.root
    device_dir = sysfs.resolve(root.pci_device(address))
    boot_vga = sysfs.read_text(root.pci_device(address) / "boot_vga") == "1"
    holders = ConsoleHolders(address, boot_vga)
    # Directories whose framebuffers and DRM cards are this device's.
    owned: list[str] = [str(device_dir)] if device_dir is not None else []
    if boot_vga:
        platform = root.path("/sys/bus/platform/devices")
        for name in sysfs.list_dir(platform):
            if not valid_fb_device(name):
                continue
            driver = sysfs.link_name(platform / name / "driver")
            real = sysfs.resolve(platform / name)
            if real is not None:
                owned.append(str(real))
            if driver in FIRMWARE_FB_DRIVERS:
                holders.firmware_fbs.append(FirmwareFramebuffer(name, driver))

    def owner(link_dir: str) -> str | None:
        """Which of ``owned`` the sysfs link leads into (None: another device)."""
        real = sysfs.resolve(root.path(link_dir))
        text = str(real) if real is not None else ""
        return next((o for o in owned if text == o or text.startswith(o + "/")), None)

    nodes: list[str] = []
    for fb in sysfs.list_dir(root.path("/sys/class/graphics")):
        if not fb.startswith("fb"):
            continue
        where = owner(f"/sys/class/graphics/{fb}/device")
        if where is None:
            holders.other_framebuffers.append(fb)
            continue
        nodes.append(f"/dev/{fb}")
        if device_dir is not None and where == str(device_dir):
            holders.framebuffers.append(fb)  # a native driver's (a firmware one is named above)
    for card in sysfs.list_dir(root.path("/sys/class/drm")):
        if re.match(r"^(card|renderD)[0-9]+$", card) and owner(f"/sys/class/drm/{card}/device"):
            nodes.append(f"/dev/dri/{card}")
    for vtcon in sysfs.list_dir(root.path("/sys/class/vtconsole")):
        base = root.path(f"/sys/class/vtconsole/{vtcon}")
        name = sysfs.read_text(base / "name") or ""
        if valid_vtcon(vtcon) and "frame buffer" in name and sysfs.read_text(base / "bind") == "1":
            holders.fbcon.append(vtcon)
    if nodes:
        holders.processes = _processes_using(host, set(nodes))
    holders.serial_consoles = serial_consoles(host)
    return holders


def _processes_using(host: Host, nodes: set[str]) -> list[ConsoleProcess]:
    """Processes with one of ``nodes`` open, from /proc/PID/fd (read inside the root)."""
    files = host.root.files
    found: list[ConsoleProcess] = []
    for pid in files.list_dir("/proc"):
        if not pid.isdigit():
            continue
        for target in files.read_links(f"/proc/{pid}/fd").values():
            if target in nodes:
                try:
                    comm = files.read_bytes(f"/proc/{pid}/comm", 4096) or b"?"
                except PcipassError:
                    comm = b"?"  # exited meanwhile, or not ours to read
                command = comm.decode("utf-8", "replace").strip() or "?"
                found.append(ConsoleProcess(int(pid), command, target))
                break
    return found


def serial_consoles(host: Host) -> list[str]:
    """``console=`` entries of the kernel command line that are not virtual terminals."""
    text = host.sysfs.read_text(host.root.path("/proc/cmdline")) or ""
    found = []
    for word in text.split():
        if word.startswith("console="):
            name = word[len("console=") :].split(",")[0]
            if name and not _VIRTUAL_CONSOLE.match(name):
                found.append(name)
    return found
