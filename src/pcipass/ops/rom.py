"""``pcipass rom BDF [--save FILE]``: what a device's option ROM holds, and a copy of it.

A guest's firmware runs the ROM of an assigned GPU or boot NIC: SeaBIOS runs
the legacy x86 image, OVMF (UEFI guests) only a UEFI image for its machine
type.  A ROM without a UEFI image is the classic black screen of an OVMF
guest; a ROM for another device id (a flashed card, a wrong download) is the
classic "Code 43".  ``--save`` writes the bytes for libvirt's ``<rom file=>``
or QEMU's ``romfile=``, through the one atomic writer, never outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, PcipassError, UsageError
from pcipass.host.context import Host
from pcipass.host.device import read_device
from pcipass.host.rom import CODE_EFI, X64_RUNNABLE, RomContents, parse_rom, read_rom
from pcipass.persist.atomic import write_file
from pcipass.record import dataclass, field

# Where a ROM file must never go: the kernel's own trees.
FORBIDDEN_TREES = ("/sys", "/proc", "/dev")


# x86 Linux marks the boot GPU's ROM as shadowed (arch/x86/pci/fixup.c,
# pci_fixup_video), and drivers/pci/rom.c pci_map_rom then maps the copy at
# 0xC0000 instead of the ROM BAR.
BOOT_VGA_NOTE = (
    "this is the boot GPU: the kernel may have returned the firmware's shadow copy at "
    "0xC0000 (the legacy image as the BIOS left it, without any UEFI image), not the ROM "
    "itself; for a guest, dump it while another GPU boots the host, or use the vendor's file"
)


@dataclass
class RomReport:
    address: PciAddress
    vendor: int | None
    device: int | None
    contents: RomContents
    saved: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def firmware(self) -> str:
        """Which guest firmware can run this ROM, in plain words."""
        contents = self.contents
        if contents.uefi_x64 and contents.has_legacy:
            return "UEFI (OVMF) and legacy BIOS (SeaBIOS) guests"
        if contents.uefi_x64:
            return "UEFI (OVMF) guests only: no legacy x86 image for SeaBIOS"
        if contents.has_uefi:
            machines = sorted(
                {i.efi.machine_name for i in contents.images if i.efi is not None} or {"unknown"}
            )
            return (
                f"no x86-64 UEFI image (UEFI image for {', '.join(machines)} only): "
                "an x86-64 OVMF guest cannot use it"
                + ("; legacy BIOS (SeaBIOS) guests can" if contents.has_legacy else "")
            )
        if contents.has_legacy:
            return (
                "legacy BIOS (SeaBIOS) guests only: no UEFI image, so an OVMF guest "
                "will show no output from it (use a ROM with a UEFI image, e.g. the vendor's)"
            )
        return "no guest firmware: no legacy x86 or UEFI image"

    def to_json(self) -> dict[str, object]:
        contents = self.contents
        return {
            "address": str(self.address),
            "vendor": None if self.vendor is None else f"{self.vendor:04x}",
            "device": None if self.device is None else f"{self.device:04x}",
            "size": contents.size,
            "images": [
                dict(image.to_json(), matches_device=image.matches(self.vendor, self.device))
                for image in contents.images
            ],
            "legacy": contents.has_legacy,
            "uefi": contents.has_uefi,
            "uefi_x64": contents.uefi_x64,
            "firmware": self.firmware,
            "saved": self.saved,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "ok": self.ok,
        }

    def render(self) -> str:
        lines = [f"{self.address}  option ROM, {self.contents.size} bytes"]
        for number, image in enumerate(self.contents.images, 1):
            ids = f"{image.vendor:04x}:{image.device:04x}"
            match = "matches" if image.matches(self.vendor, self.device) else "MISMATCH"
            parts = [
                f"image {number} at 0x{image.offset:x}: {image.code_type_name}",
                f"{image.length} bytes",
                f"for {ids} ({match})",
            ]
            if image.checksum_ok is not None:
                parts.append("checksum ok" if image.checksum_ok else "checksum BAD")
            if image.efi is not None:
                efi = image.efi
                parts.append(efi.machine_name + (", compressed" if efi.compression == 1 else ""))
            lines.append("  " + ", ".join(parts))
        lines.append(f"  usable by: {self.firmware}")
        if self.saved:
            lines.append(f"  saved to {self.saved}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def rom_report(host: Host, address: PciAddress, save: str | None = None) -> RomReport:
    device = read_device(host.sysfs, address)  # DeviceNotFoundError first
    target = save_target(host, save) if save is not None else None
    data = read_rom(host, address)
    contents = parse_rom(data, f"{address} option ROM")
    report = RomReport(address, device.vendor, device.device, contents)
    report.problems = _problems(report)
    if device.boot_vga:
        report.notes.append(BOOT_VGA_NOTE)
    if target is not None:
        try:  # resolved inside the root again by the one writer
            write_file(host.root.files, host.root.host_path(target), data, 0o644)
        except PcipassError as error:  # a parent that is a file, a read-only or full disk
            raise OperationFailed(
                host.root.host_path(target),
                f"cannot write the ROM: {error.problem}",
                "choose another --save FILE; nothing was written",
            ) from error
        report.saved = host.root.host_path(target)
    return report


def _problems(report: RomReport) -> list[str]:
    contents = report.contents
    problems = list(contents.problems)
    for image in contents.images:
        problems.extend(f"image at 0x{image.offset:x}: {p}" for p in image.problems)
    if report.vendor is not None and not any(
        i.matches(report.vendor, report.device) for i in contents.images
    ):
        found = ", ".join(sorted({f"{i.vendor:04x}:{i.device:04x}" for i in contents.images}))
        problems.append(
            f"no image is for this device ({report.vendor:04x}:{report.device or 0:04x}; "
            f"the ROM is for {found}): the guest driver may refuse it"
        )
    efi_images = [i for i in contents.images if i.code_type == CODE_EFI]
    if efi_images and not any(
        i.efi is not None and i.efi.machine_type in X64_RUNNABLE for i in efi_images
    ):
        problems.append("no UEFI image an x86-64 OVMF guest can run")
    return problems


def save_target(host: Host, text: str) -> Path:
    """Where ``--save FILE`` writes: FILE is a host path (under ``--root``); a
    symlink anywhere on the way must not lead out of the root, and the
    kernel's trees are never a destination."""
    if not text or "\0" in text:
        raise UsageError(f"--save {text!r}", "not a file name")
    if host.root.is_real:
        host_path = os.path.abspath(text)
    else:
        # Under another root a relative FILE is taken from the root's /, as
        # every path pcipass writes there.
        host_path = os.path.normpath("/" + text.lstrip("/"))
    target = host.root.path(host_path)
    prefix = Path(os.path.realpath(host.root.prefix))
    resolved = Path(os.path.realpath(target))
    if resolved != prefix and prefix not in resolved.parents:
        raise UsageError(
            f"--save {text}",
            f"leads out of the root {host.root.prefix} (through a symlink, to {resolved})",
            "choose a path inside the root",
        )
    inside = "/" + os.path.relpath(resolved, prefix).lstrip(".")
    for tree in FORBIDDEN_TREES:
        if any(p == tree or p.startswith(tree + "/") for p in (host_path, inside)):
            raise UsageError(
                f"--save {text}", f"is under {tree}", "save the ROM to a normal file system"
            )
    if os.path.isdir(resolved):
        raise UsageError(f"--save {text}", "is a directory", "give a file name")
    # Write where the links lead, so the file lands where they pointed, and
    # never replace a link with a file.
    return resolved
