"""A device's option ROM: read it through sysfs, and parse its images.

Layout (PCI Firmware Specification 3.0, chapter 5 "PCI Expansion ROMs"; the
same tables were §6.3.1 "Expansion ROM Contents" of the PCI Local Bus
Specification 2.x):

* a ROM holds one or more *images*, one after the other; each starts with the
  expansion ROM header ("PCI Expansion ROM Header Format", §5.1.1): bytes 0x55
  0xAA, then processor-specific data, and at offset 0x18 a 16-bit pointer to
  the image's PCI Data Structure;
* the PCI Data Structure ("PCI Data Structure Format", §5.1.2) starts with
  "PCIR" and says the vendor and device the image is for, a device list
  (structure revision 3), the class code, the image length in 512-byte
  units, the code type (0 = PC-AT compatible legacy x86 BIOS code, 1 = Open
  Firmware, 2 = PA-RISC, 3 = EFI) and the indicator byte whose bit 7 marks
  the last image of the chain;
* a PC-AT compatible image (code type 0) keeps its initialization size in
  512-byte units at offset 2, and its bytes over that size sum to zero (mod
  256): the BIOS skips an image whose checksum fails;
* an EFI image (UEFI Specification 2.x §14.4.2 "PCI Option ROMs", the EFI PCI
  Expansion ROM Header) has the EFI signature 0x0EF1 at offset 4, then the PE
  subsystem, the machine type and the compression type.

Reading (drivers/pci/pci-sysfs.c, ``pci_write_rom``/``pci_read_rom``): the
``rom`` attribute reads as EINVAL until "1" is written to it; a write of
exactly "0\\n" turns reading off again.  While enabled, the kernel maps the ROM
BAR (or the shadow copy of the boot GPU's ROM at 0xC0000) and returns the
images up to the last one; EIO when the ROM has no valid image.
:func:`read_rom` always disables the attribute again, also on errors.

Parsing is pure: :func:`parse_rom` never raises anything but
:class:`RomFormatError` (tests feed it random bytes), and only when not even
one image can be found.
"""

from __future__ import annotations

import contextlib
import errno
import struct
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import NotFoundError, OperationFailed, SysfsWriteError
from pcipass.host.context import Host
from pcipass.record import dataclass, field

IMAGE_UNIT = 512  # image length and initialization size are in 512-byte units
MAX_ROM_BYTES = 16 * 1024 * 1024  # a ROM BAR is at most 16 MiB (the BAR's 24 address bits)
MAX_IMAGES = 64  # far beyond any real ROM; bounds the walk of a hostile chain
ROM_SIGNATURE = b"\x55\xaa"
PCIR_SIGNATURE = b"PCIR"
EFI_SIGNATURE = 0x0EF1
LAST_IMAGE_BIT = 0x80  # indicator byte, bit 7 (§5.1.2)
HEADER_LENGTH = 0x1A  # up to and including the PCI Data Structure pointer
PCIR_MIN_LENGTH = 0x18  # revision 2.x structures are 0x18 bytes

CODE_LEGACY = 0
CODE_EFI = 3
CODE_TYPES = {
    CODE_LEGACY: "legacy x86 (PC-AT BIOS)",
    1: "Open Firmware",
    2: "PA-RISC",
    CODE_EFI: "UEFI",
}
# PE/COFF machine types (PE format "Machine Types"), as the EFI header holds them.
EFI_MACHINES = {
    0x014C: "IA32",
    0x0200: "Itanium",
    0x8664: "x64",
    0x0EBC: "EFI Byte Code",
    0x01C2: "ARM",
    0xAA64: "AArch64",
    0x5064: "RISC-V 64",
    0x6264: "LoongArch64",
}
# An x86-64 OVMF guest runs x64 drivers and EBC (it carries the EBC interpreter).
X64_RUNNABLE = (0x8664, 0x0EBC)
EFI_SUBSYSTEMS = {10: "application", 11: "boot service driver", 12: "runtime driver"}


class RomFormatError(OperationFailed):
    """The bytes hold no parseable option ROM image."""

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(
            subject,
            problem,
            "the ROM is corrupt, or the device did not expose it; a GPU may need to be "
            "the boot GPU, or not in use, to show its ROM",
        )


class RomAbsentError(NotFoundError):
    def __init__(self, address: str) -> None:
        super().__init__(
            address,
            "has no option ROM (no rom attribute in sysfs: the device has no ROM BAR)",
            "nothing to read; a guest needs no romfile= for it",
        )


class RomUnreadableError(OperationFailed):
    def __init__(self, address: str, detail: str) -> None:
        super().__init__(
            address,
            f"option ROM unreadable: {detail}",
            "the kernel found no valid image; some GPUs expose their ROM only as the boot "
            "GPU or after a host driver ran: use the vendor's ROM file instead",
        )


@dataclass(frozen=True)
class EfiHeader:
    """The EFI PCI Expansion ROM Header's own fields (UEFI §14.4.2)."""

    subsystem: int
    machine_type: int
    compression: int  # 0 uncompressed, 1 EFI-compressed

    @property
    def machine_name(self) -> str:
        return EFI_MACHINES.get(self.machine_type, f"machine 0x{self.machine_type:04x}")

    def to_json(self) -> dict[str, object]:
        return {
            "subsystem": EFI_SUBSYSTEMS.get(self.subsystem, str(self.subsystem)),
            "machine_type": f"0x{self.machine_type:04x}",
            "machine": self.machine_name,
            "compressed": self.compression == 1,
        }


@dataclass(frozen=True)
class RomImage:
    offset: int
    vendor: int
    device: int
    device_list: tuple[int, ...]
    class_code: int
    code_type: int
    length: int  # bytes, from the PCI Data Structure
    pcir_revision: int
    last: bool
    checksum_ok: bool | None  # legacy x86 images only
    efi: EfiHeader | None
    problems: tuple[str, ...] = ()

    @property
    def code_type_name(self) -> str:
        return CODE_TYPES.get(self.code_type, f"code type {self.code_type}")

    def matches(self, vendor: int | None, device: int | None) -> bool:
        """The image is for this vendor and device (or lists the device, §5.1.2
        Device List Pointer, PCI Data Structure revision 3)."""
        return vendor == self.vendor and (device == self.device or device in self.device_list)

    def to_json(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "code_type": self.code_type,
            "type": self.code_type_name,
            "vendor": f"{self.vendor:04x}",
            "device": f"{self.device:04x}",
            "device_list": [f"{d:04x}" for d in self.device_list],
            "class": f"{self.class_code:06x}",
            "length": self.length,
            "pcir_revision": self.pcir_revision,
            "last": self.last,
            "checksum_ok": self.checksum_ok,
            "efi": None if self.efi is None else self.efi.to_json(),
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class RomContents:
    size: int  # bytes read
    images: tuple[RomImage, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def has_legacy(self) -> bool:
        return any(i.code_type == CODE_LEGACY for i in self.images)

    @property
    def has_uefi(self) -> bool:
        return any(i.code_type == CODE_EFI for i in self.images)

    @property
    def uefi_x64(self) -> bool:
        """An image an x86-64 OVMF guest can run."""
        return any(
            i.efi is not None and i.efi.machine_type in X64_RUNNABLE
            for i in self.images
            if i.code_type == CODE_EFI
        )


def _u16(data: bytes, at: int) -> int:
    value: int = struct.unpack_from("<H", data, at)[0]
    return value


def parse_rom(data: bytes, subject: str = "option ROM") -> RomContents:
    """Walk the image chain.  Problems of an image are kept with it; a problem
    that stops the walk is kept in ``problems``.  Raises RomFormatError only
    when no image at all is found."""
    images: list[RomImage] = []
    problems: list[str] = []
    offset = 0
    while offset < len(data):
        if len(images) >= MAX_IMAGES:
            problems.append(f"more than {MAX_IMAGES} images: the chain was not followed further")
            break
        image, stop = _parse_image(data, offset)
        if image is None:
            problems.append(stop)
            break
        images.append(image)
        if image.last:
            break
        offset += image.length
        if offset >= len(data):
            problems.append(
                f"the image at 0x{image.offset:x} is not marked last, but the ROM ends after it"
            )
    if not images:
        raise RomFormatError(subject, problems[0] if problems else "empty (0 bytes)")
    return RomContents(len(data), tuple(images), tuple(problems))


def _parse_image(data: bytes, offset: int) -> tuple[RomImage | None, str]:
    header = data[offset : offset + HEADER_LENGTH]
    where = f"image at 0x{offset:x}"
    if len(header) < HEADER_LENGTH:
        return None, f"{where}: truncated ({len(header)} bytes, a ROM header needs 26)"
    if header[:2] != ROM_SIGNATURE:
        return None, f"{where}: no 0x55AA signature (found 0x{header[0]:02X}{header[1]:02X})"
    pcir = offset + _u16(header, 0x18)
    if _u16(header, 0x18) < HEADER_LENGTH or pcir + PCIR_MIN_LENGTH > len(data):
        return None, f"{where}: PCI Data Structure pointer 0x{_u16(header, 0x18):x} is outside it"
    if data[pcir : pcir + 4] != PCIR_SIGNATURE:
        return None, f"{where}: no PCIR signature at 0x{pcir:x}"
    vendor, device, list_ptr, pcir_length = struct.unpack_from("<HHHH", data, pcir + 4)
    revision = data[pcir + 0x0C]
    class_code = int.from_bytes(data[pcir + 0x0D : pcir + 0x10], "little")
    units = _u16(data, pcir + 0x10)
    code_type = data[pcir + 0x14]
    indicator = data[pcir + 0x15]
    if units == 0:
        return None, f"{where}: image length 0 in its PCI Data Structure"
    length = units * IMAGE_UNIT
    found: list[str] = []
    if pcir_length < PCIR_MIN_LENGTH:
        found.append(f"PCI Data Structure length {pcir_length} (at least 24 expected)")
    if offset + length > len(data):
        found.append(f"truncated: {length} bytes declared, {len(data) - offset} present")
    device_list = _device_list(data, pcir, list_ptr) if revision >= 3 and list_ptr else ()
    checksum_ok: bool | None = None
    if code_type == CODE_LEGACY:
        checksum_ok = _legacy_checksum(data, offset, found)
    efi: EfiHeader | None = None
    if code_type == CODE_EFI:
        efi_signature, subsystem, machine, compression = struct.unpack_from(
            "<IHHH", data, offset + 4
        )
        if efi_signature != EFI_SIGNATURE:
            found.append(f"UEFI image without the EFI signature 0x0EF1 (0x{efi_signature:x})")
        else:
            efi = EfiHeader(subsystem, machine, compression)
    image = RomImage(
        offset=offset,
        vendor=vendor,
        device=device,
        device_list=device_list,
        class_code=class_code,
        code_type=code_type,
        length=length,
        pcir_revision=revision,
        last=bool(indicator & LAST_IMAGE_BIT),
        checksum_ok=checksum_ok,
        efi=efi,
        problems=tuple(found),
    )
    return image, ""


def _device_list(data: bytes, pcir: int, pointer: int) -> tuple[int, ...]:
    # A list of 16-bit device ids ending with 0 (§5.1.2, revision 3); bounded
    # so a list without its terminator ends at the data's end.
    ids: list[int] = []
    at = pcir + pointer
    while at + 2 <= len(data) and len(ids) < 256:
        value = _u16(data, at)
        if value == 0:
            break
        ids.append(value)
        at += 2
    return tuple(ids)


def _legacy_checksum(data: bytes, offset: int, found: list[str]) -> bool | None:
    size = data[offset + 2] * IMAGE_UNIT
    if size == 0:
        found.append("legacy image with initialization size 0")
        return None
    if offset + size > len(data):
        found.append("legacy image: initialization size runs past the data")
        return None
    ok = sum(data[offset : offset + size]) % 256 == 0
    if not ok:
        found.append("legacy image checksum is wrong (the BIOS will skip it)")
    return ok


# ---- reading through sysfs -------------------------------------------------------------------


def read_rom(host: Host, address: PciAddress) -> bytes:
    """The ROM's bytes: enable the attribute, read at most what sysfs reports
    (never above 16 MiB), disable it again whatever happened."""
    path = host.root.pci_device(address) / "rom"
    if not host.sysfs.exists(path):
        raise RomAbsentError(str(address))
    try:
        # Inside the try: a signal right after the kernel enabled reading must
        # still disable it (disabling a disabled attribute is harmless).
        _enable(host, path, address)
        reported = host.sysfs.size(path)
        limit = MAX_ROM_BYTES if not reported else min(reported, MAX_ROM_BYTES)
        data = host.sysfs.read_bytes(path, limit)
    except BaseException:
        _disable_quietly(host, path)
        raise
    # Exactly "0\n": the kernel disables only on a 2-byte write starting with '0'.
    host.sysfs.write_attr(path, "0\n")
    if data is None:
        raise RomUnreadableError(str(address), "the kernel refused the read (EIO)")
    if not data:
        raise RomUnreadableError(str(address), "the kernel returned no bytes")
    return data


def _enable(host: Host, path: Path, address: PciAddress) -> None:
    try:
        host.sysfs.write_attr(path, "1\n")
    except SysfsWriteError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            raise OperationFailed(
                str(address),
                "reading the option ROM needs root (the rom attribute is mode 0600)",
                "run pcipass rom as root",
            ) from error
        raise


def _disable_quietly(host: Host, path: Path) -> None:
    with contextlib.suppress(SysfsWriteError):  # the first error is the one to report
        host.sysfs.write_attr(path, "0\n")
