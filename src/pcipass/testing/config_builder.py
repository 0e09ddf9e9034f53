"""Build realistic PCI configuration space bytes for fake hosts, tests and benchmarks.

The bytes follow the same specifications :mod:`pcipass.host.config_space` parses (PCI 3.0
§6.1/§6.7, PCI PM 1.2 §3.2, PCIe 4.0 §7.5.3/§7.6, SR-IOV §9.3.3) and are checked in the
tests against the real ``lspci -F`` decoder, so a fake sysfs ``config`` file built here looks
to ``lspci`` like the device it imitates.  Example, an e1000e behind a root port::

    build_config(0x8086, 0x10D3, class_code=0x020000, subsystem=(0x8086, 0xA01F),
                 caps=[pm(), msi(), pcie(PortType.ENDPOINT), msix(5)])

Capabilities are laid out one after another from 0x40 (conventional) and 0x100
(extended), each 4-byte aligned, and chained in the order given.  Invalid requests
(overflowing the space, ids out of range) raise :class:`ValueError`: this is a kit for
code that builds fake hosts, where a wrong argument is a programming error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from pcipass.compat import zip_equal
from pcipass.host import pci_regs as cs
from pcipass.host.pci_regs import AcsFlags, HeaderType, PortType
from pcipass.record import dataclass

# Default Command register: Memory Space + Bus Master enabled, as a bound driver leaves it
# (PCI 3.0 §6.2.2 bits 1 and 2).
DEFAULT_COMMAND = 0x0006


@dataclass(frozen=True)
class Cap:
    """A conventional capability: its id and the bytes after the 2-byte id/next header."""

    cap_id: int
    body: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.cap_id <= 0xFF:
            raise ValueError(f"capability id {self.cap_id:#x} out of range")


@dataclass(frozen=True)
class ExtCap:
    """An extended capability: id, version and the bytes after the 4-byte header."""

    cap_id: int
    body: bytes
    version: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.cap_id <= 0xFFFF or not 0 <= self.version <= 0xF:
            raise ValueError(f"extended capability {self.cap_id:#x} v{self.version} out of range")


# --- conventional capabilities ---------------------------------------------------------------


def pcie(
    port_type: PortType,
    *,
    flr: bool = False,
    slot: bool = False,
    link_speed: int = 1,
    link_width: int = 1,
) -> Cap:
    """PCI Express capability, version 2 (PCIe 4.0 §7.5.3), 0x3c bytes long.

    ``link_speed`` is the encoded speed (1 = 2.5GT/s, 2 = 5GT/s, 3 = 8GT/s, 4 = 16GT/s).
    """
    flags = 2 | (int(port_type) << 4) | (cs.PCIE_CAPS_SLOT if slot else 0)  # §7.5.3.2
    # §7.5.3.3 DevCap: 256-byte max payload (encoding 1), extended tags (bit 5), FLR bit 28.
    devcap = 0x1 | (1 << 5) | (cs.PCIE_DEVCAP_FLR if flr else 0)
    devctl = 0x2810  # §7.5.3.4: relaxed ordering and no snoop on, 512-byte max read request
    linkcap = link_speed | (link_width << 4)  # §7.5.3.6 max link speed / width
    linkcap |= 1 << 20 if port_type in _DOWNSTREAM_PORTS else 0  # DLL link active reporting
    linksta = link_speed | (link_width << 4)  # §7.5.3.8 current speed / negotiated width
    body = struct.pack("<HIHHIHH", flags, devcap, devctl, 0, linkcap, 0, linksta)
    slotcap = (1 << 19) if slot else 0  # §7.5.3.9: physical slot number 1
    body += struct.pack("<IHH", slotcap, 0, 0)
    body += struct.pack("<HHI", 0, 0, 0)  # root control/capabilities/status (§7.5.3.12-14)
    body += struct.pack("<IHHIHHIHH", 0, 0, 0, link_speed_vector(link_speed), 0, 0, 0, 0, 0)
    return Cap(cs.CAP_ID_PCIE, body)


_DOWNSTREAM_PORTS = (PortType.ROOT_PORT, PortType.DOWNSTREAM_PORT)


def link_speed_vector(speed: int) -> int:
    """Link Capabilities 2 supported speeds vector (§7.5.3.18 bits 7:1): all up to ``speed``."""
    return ((1 << speed) - 1) << 1


def pm(*, no_soft_reset: bool = False, power_state: int = 0, d1: bool = False) -> Cap:
    """Power Management capability, PM 1.2 (PCI PM 1.2 §3.2.3: version field 3), 8 bytes."""
    pmc = 0x0003 | (0x0200 if d1 else 0)  # §3.2.3 version 3 = PM 1.2; bit 9 D1 support
    pmcsr = (power_state & cs.PM_PMCSR_STATE) | (cs.PM_PMCSR_NO_SOFT_RESET if no_soft_reset else 0)
    return Cap(cs.CAP_ID_PM, struct.pack("<HHBB", pmc, pmcsr, 0, 0))


def msi(*, vectors: int = 1, is_64bit: bool = True, maskable: bool = False) -> Cap:
    """MSI capability (PCI 3.0 §6.8.1), message control only; address/data left zero."""
    if vectors not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"MSI supports 1..32 vectors in powers of two, not {vectors}")
    control = ((vectors.bit_length() - 1) << 1) | (cs.MSI_CONTROL_64BIT if is_64bit else 0)
    control |= cs.MSI_CONTROL_MASKABLE if maskable else 0
    body = struct.pack("<HI", control, 0)  # control, message address
    body += struct.pack("<I", 0) if is_64bit else b""  # upper address (64-bit only)
    body += struct.pack("<H", 0)  # message data
    if maskable:
        body += b"\0\0" + struct.pack("<II", 0, 0)  # reserved, mask bits, pending bits
    return Cap(cs.CAP_ID_MSI, body)


def msix(table_size: int, *, bar: int = 3, table_offset: int = 0, pba_offset: int = 0x2000) -> Cap:
    """MSI-X capability (PCI 3.0 §6.8.2) with ``table_size`` vectors (1..2048)."""
    if not 1 <= table_size <= 2048:
        raise ValueError(f"MSI-X table size must be 1..2048, not {table_size}")
    control = table_size - 1  # §6.8.2.3: the register holds N-1
    return Cap(cs.CAP_ID_MSIX, struct.pack("<HII", control, table_offset | bar, pba_offset | bar))


def af(flr: bool = True, *, tp: bool = True) -> Cap:
    """Advanced Features capability (conventional PCI FLR), 6 bytes: length, caps, control,
    status."""
    caps = (cs.AF_CAPS_TP if tp else 0) | (cs.AF_CAPS_FLR if flr else 0)
    return Cap(cs.CAP_ID_AF, bytes((6, caps, 0, 0)))


# --- extended capabilities ---------------------------------------------------------------------


def acs(cap_bits: AcsFlags | int, ctrl_bits: AcsFlags | int = 0) -> ExtCap:
    """ACS extended capability.  With P2P Egress Control, an 8-bit egress vector follows."""
    cap_value = int(cap_bits) & cs.ACS_DEFINED_BITS
    egress = b""
    if cap_value & AcsFlags.EC:
        cap_value |= 8 << 8  # Egress Control Vector Size: 8 bits, in one DWORD
        egress = struct.pack("<I", 0)
    return ExtCap(
        cs.EXT_CAP_ID_ACS,
        struct.pack("<HH", cap_value, int(ctrl_bits) & cs.ACS_DEFINED_BITS) + egress,
    )


def dsn(serial: int) -> ExtCap:
    """Device Serial Number extended capability: lower DWORD then upper DWORD."""
    if not 0 <= serial < 2**64:
        raise ValueError("a device serial number is 64 bits")
    return ExtCap(cs.EXT_CAP_ID_DSN, struct.pack("<II", serial & 0xFFFFFFFF, serial >> 32))


def sriov(
    total: int,
    num: int,
    vf_device: int,
    *,
    vf_offset: int = 0x80,
    vf_stride: int = 2,
) -> ExtCap:
    """SR-IOV extended capability (PCIe 4.0 §9.3.3), 0x40 bytes; VF Enable set when
    ``num`` > 0."""
    if not 0 <= num <= total <= 0xFFFF:
        raise ValueError(f"need 0 <= NumVFs ({num}) <= TotalVFs ({total})")
    control = 0x0009 if num else 0  # §9.3.3.3: VF Enable (bit 0) and VF MSE (bit 3)
    body = struct.pack(
        "<IHHHHHBBHHHHII",
        0,  # §9.3.3.2 SR-IOV capabilities
        control,
        0,  # §9.3.3.4 status
        total,  # InitialVFs
        total,  # TotalVFs
        num,  # NumVFs
        0,  # Function Dependency Link
        0,  # reserved
        vf_offset,
        vf_stride,
        0,  # reserved
        vf_device,
        0x00000553,  # §9.3.3.12 supported page sizes: 4K, 8K, 64K, 256K, 1M, 4M
        0x00000001,  # §9.3.3.13 system page size: 4K
    )
    body += bytes(4 * 6)  # VF BAR0..5 (§9.3.3.14), unassigned
    body += struct.pack("<I", 0)  # VF Migration State Array Offset
    return ExtCap(cs.EXT_CAP_ID_SRIOV, body)


def rebar(
    bar: int = 0,
    *,
    sizes_mib: Sequence[int] = (256, 512, 1024, 2048, 4096, 8192),
    current_mib: int = 256,
) -> ExtCap:
    """Resizable BAR extended capability (id 0x15, PCIe 4.0 §7.8.6) for one BAR:
    the capability register's bit N+4 says a size of 2^N MiB is supported, the
    control register holds the BAR index, the count of resizable BARs (1) and
    the current size as N."""
    bits = 0
    for size in sizes_mib:
        if size < 1 or size & (size - 1) or size.bit_length() - 1 > 19:
            raise ValueError(f"a resizable BAR size is a power of two from 1 MiB, not {size}")
        bits |= 1 << (size.bit_length() - 1 + 4)
    if current_mib not in sizes_mib:
        raise ValueError(f"current size {current_mib} MiB is not among the supported sizes")
    control = (bar & 7) | (1 << 5) | ((current_mib.bit_length() - 1) << 8)
    return ExtCap(EXT_CAP_ID_REBAR, struct.pack("<II", bits, control))


EXT_CAP_ID_REBAR = 0x0015


# --- the builder -------------------------------------------------------------------------------


def build_config(
    vendor: int,
    device: int,
    *,
    class_code: int,
    revision: int = 0,
    header_type: HeaderType | int = HeaderType.ENDPOINT,
    multifunction: bool = False,
    subsystem: tuple[int, int] | None = None,
    caps: Sequence[Cap | ExtCap] = (),
    ext_caps: Sequence[ExtCap] = (),
    size: int | None = None,
    primary_bus: int = 0,
    secondary_bus: int | None = None,
    subordinate_bus: int | None = None,
    command: int = DEFAULT_COMMAND,
    bars: Sequence[int] = (),
    interrupt_pin: int = 1,
) -> bytes:
    """Configuration bytes for one function.

    ``caps`` may mix conventional and extended capabilities (extended ones go after those in
    ``ext_caps``).  ``size`` defaults to 4096 when the function has a PCI Express capability
    (Linux exposes 4096 bytes only then) and 256 otherwise.  ``subsystem`` defaults to
    ``(vendor, device)`` for an endpoint.  Bridges (type 1) take ``secondary_bus`` and
    ``subordinate_bus`` (default: the secondary bus).
    """
    layout = int(header_type)
    conventional = [cap for cap in caps if isinstance(cap, Cap)]
    extended = list(ext_caps) + [cap for cap in caps if isinstance(cap, ExtCap)]
    has_pcie = any(cap.cap_id == cs.CAP_ID_PCIE for cap in conventional)
    if size is None:
        size = cs.EXTENDED_SIZE if has_pcie or extended else cs.CONVENTIONAL_SIZE
    if size not in (cs.CONVENTIONAL_SIZE, cs.EXTENDED_SIZE):
        raise ValueError(f"size must be 256 or 4096, not {size}")
    if extended and not has_pcie:
        raise ValueError("extended capabilities need a PCI Express capability")
    if extended and size != cs.EXTENDED_SIZE:
        raise ValueError("extended capabilities need size=4096")
    _check_range("vendor", vendor, 0xFFFF)
    _check_range("device", device, 0xFFFF)
    _check_range("class_code", class_code, 0xFFFFFF)
    _check_range("revision", revision, 0xFF)

    space = bytearray(size)
    struct.pack_into("<HHHH", space, cs.REG_VENDOR_ID, vendor, device, command, 0)
    struct.pack_into("<I", space, cs.REG_REVISION, revision | (class_code << 8))
    space[cs.REG_HEADER_TYPE] = layout | (cs.HEADER_TYPE_MULTIFUNCTION if multifunction else 0)
    space[0x3D] = interrupt_pin  # PCI 3.0 §6.2.4 Interrupt Pin (1 = INTA#)
    space[0x3C] = 0x0B if interrupt_pin else 0xFF  # Interrupt Line, as firmware might set it
    _put_bars(space, layout, bars)
    if layout == HeaderType.ENDPOINT:
        sub_vendor, sub_device = subsystem if subsystem is not None else (vendor, device)
        struct.pack_into("<HH", space, cs.REG_SUBSYSTEM_VENDOR, sub_vendor, sub_device)
    elif layout == HeaderType.PCI_BRIDGE:
        secondary = primary_bus + 1 if secondary_bus is None else secondary_bus
        subordinate = secondary if subordinate_bus is None else subordinate_bus
        if not primary_bus < secondary <= subordinate <= 0xFF:
            raise ValueError(f"bus numbers {primary_bus} < {secondary} <= {subordinate} wrong")
        space[cs.REG_PRIMARY_BUS : cs.REG_SUBORDINATE_BUS + 1] = bytes(
            (primary_bus, secondary, subordinate)
        )
    else:
        raise ValueError(f"only header types 0 and 1 are built, not {layout}")

    if conventional:
        space[cs.REG_STATUS] |= cs.STATUS_CAP_LIST
        space[cs.REG_CAP_POINTER] = _place_caps(space, conventional)
    if extended:
        _place_ext_caps(space, extended)
    return bytes(space)


def _check_range(name: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"{name} {value:#x} out of range 0..{limit:#x}")


def _put_bars(space: bytearray, layout: int, bars: Sequence[int]) -> None:
    """Raw 32-bit BAR values (PCI 3.0 §6.2.5.1); type 0 has six, type 1 two."""
    limit = 6 if layout == HeaderType.ENDPOINT else 2
    if len(bars) > limit:
        raise ValueError(f"header type {layout} has {limit} BARs, not {len(bars)}")
    for index, value in enumerate(bars):
        struct.pack_into("<I", space, 0x10 + 4 * index, value & 0xFFFFFFFF)


def _place_caps(space: bytearray, caps: Sequence[Cap]) -> int:
    """Write the chain from 0x40; return the first pointer (PCI 3.0 §6.7)."""
    offsets = _layout(cs.HEADER_SIZE, [2 + len(cap.body) for cap in caps], cs.CONVENTIONAL_SIZE)
    for index, (cap, at) in enumerate(zip_equal(caps, offsets)):
        next_at = offsets[index + 1] if index + 1 < len(offsets) else 0
        space[at : at + 2 + len(cap.body)] = bytes((cap.cap_id, next_at)) + cap.body
    return offsets[0]


def _place_ext_caps(space: bytearray, caps: Sequence[ExtCap]) -> None:
    """Write the chain from 0x100 (PCIe 4.0 §7.6.3: the first one must be at 0x100)."""
    offsets = _layout(cs.EXT_CAP_START, [4 + len(cap.body) for cap in caps], cs.EXTENDED_SIZE)
    for index, (cap, at) in enumerate(zip_equal(caps, offsets)):
        next_at = offsets[index + 1] if index + 1 < len(offsets) else 0
        header = cap.cap_id | (cap.version << cs.EXT_CAP_VERSION_SHIFT)
        header |= next_at << cs.EXT_CAP_NEXT_SHIFT
        space[at : at + 4 + len(cap.body)] = struct.pack("<I", header) + cap.body


def _layout(start: int, lengths: Iterable[int], end: int) -> list[int]:
    offsets: list[int] = []
    at = start
    for length in lengths:
        if at + length > end:
            raise ValueError(f"capabilities overflow the space at {at:#x} (+{length} bytes)")
        offsets.append(at)
        at = (at + length + 3) & ~3
    return offsets


# --- lspci dump format -------------------------------------------------------------------------


def format_lspci_dump(functions: Mapping[str, bytes]) -> str:
    """The text ``lspci -xxxx`` prints and ``lspci -F FILE`` reads back (pciutils lib/dump.c):
    per function a ``BB:DD.F`` (or ``DDDD:BB:DD.F``) line, then rows of 16 hex bytes led by
    their offset, then a blank line.  Any length is written, so a 64-byte dump stands for an
    unprivileged read."""
    lines: list[str] = []
    for address, data in functions.items():
        lines.append(f"{address} Device description follows in hex")
        for row in range(0, len(data), 16):
            chunk = " ".join(f"{byte:02x}" for byte in data[row : row + 16])
            lines.append(f"{row:02x}: {chunk}")
        lines.append("")
    return "\n".join(lines) + "\n"
