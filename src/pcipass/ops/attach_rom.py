"""``attach --rom FILE`` / ``--rom-bar off``: the ROM a guest's firmware runs for a device.

A guest's firmware runs the option ROM QEMU shows in the device's ROM BAR:
the device's own (the default), a file (libvirt ``<rom file=.../>``, QEMU
``romfile=``) or none (``<rom bar='off'/>``, QEMU ``rombar=0``).  A file is
the fix for a GPU whose ROM the host cannot read (the boot GPU's shadow copy)
or one without a UEFI image; a wrong file is the classic black screen or
"Code 43".  So before the file goes into the guest's configuration it is read
and parsed like ``pcipass rom`` does (host/rom.py), and must hold an image for
this very device (rule PP121).

QEMU opens the file, not pcipass: under libvirt it runs confined (SELinux
svirt, AppArmor's libvirt-qemu profile), which lets it read ROMs under
/usr/share (where distributions install firmware) and /var/lib/libvirt, so a
file elsewhere gets a warning: the guest would fail to start with
"failed to find romfile".
"""

from __future__ import annotations

import os

from pcipass.address import PciAddress
from pcipass.errors import PcipassError, UsageError
from pcipass.host.context import Host
from pcipass.host.device import read_device
from pcipass.host.rom import CODE_EFI, X64_RUNNABLE, parse_rom
from pcipass.policy.verdict import Finding, Severity, raise_refusals
from pcipass.record import dataclass, field

ROM_LIMIT = 16 * 1024 * 1024  # no PCI ROM BAR is larger (host/rom.py reads no more either)
READABLE_BY_QEMU = ("/usr/share/", "/var/lib/")


@dataclass
class RomChoice:
    """What ``--rom FILE`` and ``--rom-bar`` ask for, checked."""

    file: str | None  # the host path QEMU will open
    bar: str | None  # "on" / "off" / None (libvirt's default: on)
    findings: list[Finding] = field(default_factory=list)

    def qemu_properties(self) -> dict[str, object]:
        """vfio-pci's ``romfile`` and ``rombar`` (QEMU hw/vfio/pci.c properties)."""
        result: dict[str, object] = {}
        if self.file is not None:
            result["romfile"] = self.file
        if self.bar is not None:
            result["rombar"] = 1 if self.bar == "on" else 0
        return result

    def options(self) -> dict[str, str]:
        """The libvirt hostdev options (guests/libvirt_xml.py ROM_OPTIONS)."""
        result = {}
        if self.file is not None:
            result["rom_file"] = self.file
        if self.bar is not None:
            result["rom_bar"] = self.bar
        return result


def host_path(host: Host, text: str) -> str:
    """FILE as the host (and QEMU) names it: absolute, normalised."""
    if not text or "\0" in text or "\n" in text:
        raise UsageError(f"--rom {text!r}", "not a file name")
    if host.root.is_real:
        return os.path.abspath(text)
    return os.path.normpath("/" + text.lstrip("/"))


def check_rom(
    host: Host, address: PciAddress, text: str | None, bar: str | None, *, uefi_guest: bool
) -> RomChoice:
    """Read and judge ``--rom FILE`` for ``address``; PP121 findings say why not."""
    if bar is not None and bar not in ("on", "off"):
        raise UsageError(f"--rom-bar {bar}", "must be on or off")
    if text is None:
        return RomChoice(None, bar)
    path = host_path(host, text)
    choice = RomChoice(path, bar)
    if bar == "off":
        raise UsageError(
            "--rom-bar off",
            "hides the ROM BAR from the guest, so a --rom file would never be seen",
            "give one of --rom FILE or --rom-bar off",
        )

    def refuse(message: str, remedy: str) -> RomChoice:
        choice.findings.append(Finding("PP121", Severity.REFUSE, path, message, remedy))
        return choice

    try:
        data = host.root.files.read_bytes(path, ROM_LIMIT, strict=True)
    except PcipassError as error:
        return refuse(f"cannot be read: {error.problem}", "give a readable ROM file")
    if data is None:
        return refuse("does not exist", "save one first: pcipass rom BDF --save FILE")
    try:
        contents = parse_rom(data, path)
    except PcipassError as error:
        return refuse(
            f"is not an option ROM pcipass can read: {error.problem}",
            "use the vendor's file, or save the device's own: pcipass rom BDF --save FILE",
        )
    device = read_device(host.sysfs, address)
    if not any(image.matches(device.vendor, device.device) for image in contents.images):
        found = ", ".join(sorted({f"{i.vendor:04x}:{i.device:04x}" for i in contents.images}))
        return refuse(
            f"holds a ROM for {found}, not for {address} "
            f"({device.vendor or 0:04x}:{device.device or 0:04x}); a guest driver refuses "
            "a ROM for another device",
            "use the ROM of this device model",
        )
    uefi_x64 = any(
        i.code_type == CODE_EFI and i.efi is not None and i.efi.machine_type in X64_RUNNABLE
        for i in contents.images
    )
    if uefi_guest and not uefi_x64:
        choice.findings.append(
            Finding(
                "PP121",
                Severity.WARN,
                path,
                "has no x86-64 UEFI image, and the guest boots UEFI (OVMF): its firmware "
                "will show nothing from this device",
                "use a ROM with a UEFI image (the vendor's), or boot the guest with SeaBIOS",
            )
        )
    if not path.startswith(READABLE_BY_QEMU):
        choice.findings.append(
            Finding(
                "PP121",
                Severity.WARN,
                path,
                "is outside /usr/share and /var/lib: QEMU confined by SELinux (svirt) or "
                "AppArmor (libvirt-qemu) may not be allowed to read it, and the guest then "
                "fails to start",
                "move it to /usr/share/kvm/ or /var/lib/libvirt/ (and restorecon it)",
            )
        )
    return choice


def refuse_unfit(choice: RomChoice, subject: str) -> None:
    """Raise the PP121 refusal when the checked ROM must not go to the guest."""
    raise_refusals(choice.findings, subject)
