"""Real option ROM images, built byte by byte for tests and the example host.

Each image is laid out as the PCI Firmware Specification 3.0 §5.1 says: the
0x55AA header with the PCI Data Structure pointer at 0x18, the "PCIR"
structure (revision 3, 0x1C bytes) at 0x1C, code after it, padded to a
multiple of 512 bytes.  Legacy images get a correct checksum (the last byte
makes the sum zero); EFI images carry the EFI header fields (UEFI §14.4.2).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

PCIR_AT = 0x1C
PCIR_LENGTH = 0x1C


def rom_image(
    vendor: int,
    device: int,
    *,
    code_type: int = 0,
    last: bool = True,
    blocks: int = 2,
    class_code: int = 0x030000,
    machine: int = 0x8664,
    subsystem: int = 11,
    compressed: bool = False,
    device_list: Sequence[int] = (),
    good_checksum: bool = True,
) -> bytes:
    """One image of ``blocks`` x 512 bytes."""
    size = blocks * 512
    image = bytearray(size)
    image[0:2] = b"\x55\xaa"
    image[2] = blocks  # initialization size, 512-byte units
    if code_type == 3:
        struct.pack_into("<IHHH", image, 4, 0x0EF1, subsystem, machine, 1 if compressed else 0)
        struct.pack_into("<H", image, 0x16, 0x60)  # EFI image header offset
    else:
        image[3:6] = b"\xeb\x4b\x90"  # a short jump: the INIT entry point
    struct.pack_into("<H", image, 0x18, PCIR_AT)
    list_pointer = 0
    if device_list:
        list_pointer = PCIR_LENGTH  # right after the structure, from its start
        at = PCIR_AT + list_pointer
        for index, value in enumerate([*device_list, 0]):
            struct.pack_into("<H", image, at + 2 * index, value)
    struct.pack_into(
        "<4sHHHHB", image, PCIR_AT, b"PCIR", vendor, device, list_pointer, PCIR_LENGTH, 3
    )
    image[PCIR_AT + 0x0D : PCIR_AT + 0x10] = class_code.to_bytes(3, "little")
    struct.pack_into("<HHBB", image, PCIR_AT + 0x10, blocks, 1, code_type, 0x80 if last else 0)
    image[0x80:0x90] = b"pcipass test ROM"
    if code_type == 0:
        image[-1] = (-sum(image[:-1])) % 256
        if not good_checksum:
            image[-1] = (image[-1] + 1) % 256
    return bytes(image)


def chain(*images: bytes) -> bytes:
    """Images one after the other, the last-image bit set only on the last."""
    out = bytearray()
    for index, image in enumerate(images):
        data = bytearray(image)
        pcir = struct.unpack_from("<H", data, 0x18)[0]
        last = index == len(images) - 1
        data[pcir + 0x15] = (data[pcir + 0x15] & 0x7F) | (0x80 if last else 0)
        if data[pcir + 0x14] == 0:  # keep a legacy image's checksum right
            data[-1] = 0
            data[-1] = (-sum(data)) % 256
        out += data
    return bytes(out)
