"""Pure parsing of PCI configuration space bytes: header, capabilities, reset-relevant bits.

Input is whatever ``/sys/bus/pci/devices/BDF/config`` gave: 64 bytes for an unprivileged
reader (drivers/pci/pci-sysfs.c only returns the predefined header to non-root users), 256
for a conventional function, 4096 for PCI Express (PCIe 4.0 §7.2.2, ECAM).  Nothing here
touches a file.  Input of any length and content is accepted: whatever could not be read or
made no sense is listed in :attr:`ConfigSpace.problems`, and every decoded field that depends
on unreadable bytes is ``None``.  :func:`parse_config` never raises.

References (the register layouts below cite them):

* PCI Local Bus Specification 3.0 (``PCI 3.0``): §6.1 header, §6.2 registers, §6.7 the
  capability list, §6.8.1 MSI, §6.8.2 MSI-X.
* PCI-to-PCI Bridge Architecture Specification 1.2 (``PPB 1.2``) §3.2: the type 1 header.
* PCI Bus Power Management Interface Specification 1.2 (``PCI PM 1.2``) §3.2.
* PCI Express Base Specification 4.0 (``PCIe 4.0``): §7.5.3 the PCI Express capability,
  §7.6 extended capabilities (header at 0x100), and the ACS, Device Serial Number and
  SR-IOV (chapter 9) extended capability structures.
* PCI "Advanced Capabilities for Conventional PCI" ECN (2006): the Advanced Features cap.
* PCI Code and ID Assignment Specification: capability id values.
"""

from __future__ import annotations

from pcipass.host.pci_regs import (
    ACS_CAPABILITY,
    ACS_CONTROL,
    ACS_DEFINED_BITS,
    AF_CAPS,
    AF_CAPS_FLR,
    AF_CAPS_TP,
    CAP_ID_AF,
    CAP_ID_MSI,
    CAP_ID_MSIX,
    CAP_ID_PCIE,
    CAP_ID_PCIX,
    CAP_ID_PM,
    CAP_LIST_MAX,
    CAP_NAMES,
    CAP_POINTER_MASK,
    DSN_LOWER,
    DSN_UPPER,
    EXT_CAP_ID_ACS,
    EXT_CAP_ID_DSN,
    EXT_CAP_ID_SRIOV,
    EXT_CAP_LIST_MAX,
    EXT_CAP_NAMES,
    EXT_CAP_NEXT_MASK,
    EXT_CAP_NEXT_SHIFT,
    EXT_CAP_START,
    EXT_CAP_VERSION_SHIFT,
    HEADER_LAYOUT_MASK,
    HEADER_SIZE,
    HEADER_TYPE_MULTIFUNCTION,
    MSI_CONTROL,
    MSI_CONTROL_64BIT,
    MSI_CONTROL_MASKABLE,
    MSI_CONTROL_MMC,
    MSIX_CONTROL,
    MSIX_CONTROL_TABLE_SIZE,
    PCIE_CAPS,
    PCIE_CAPS_PORT_TYPE,
    PCIE_CAPS_SLOT,
    PCIE_CAPS_VERSION,
    PCIE_DEVCAP,
    PCIE_DEVCAP_FLR,
    PM_PMC,
    PM_PMC_VERSION,
    PM_PMCSR,
    PM_PMCSR_NO_SOFT_RESET,
    PM_PMCSR_STATE,
    REG_CAP_POINTER,
    REG_CB_CAP_POINTER,
    REG_CB_SUBSYSTEM_ID,
    REG_CB_SUBSYSTEM_VENDOR,
    REG_COMMAND,
    REG_DEVICE_ID,
    REG_HEADER_TYPE,
    REG_PRIMARY_BUS,
    REG_REVISION,
    REG_SECONDARY_BUS,
    REG_STATUS,
    REG_SUBORDINATE_BUS,
    REG_SUBSYSTEM_ID,
    REG_SUBSYSTEM_VENDOR,
    REG_VENDOR_ID,
    SRIOV_INITIAL_VFS,
    SRIOV_NUM_VFS,
    SRIOV_TOTAL_VFS,
    SRIOV_VF_DEVICE,
    SRIOV_VF_OFFSET,
    SRIOV_VF_STRIDE,
    STATUS_CAP_LIST,
    AcsFlags,
    HeaderType,
    PortType,
)
from pcipass.record import dataclass, field, replace


@dataclass(frozen=True)
class Capability:
    """One entry of the conventional capability list (PCI 3.0 §6.7)."""

    cap_id: int
    offset: int

    @property
    def name(self) -> str:
        return CAP_NAMES.get(self.cap_id, f"capability {self.cap_id:#04x}")


@dataclass(frozen=True)
class ExtCapability:
    """One entry of the extended capability list (PCIe 4.0 §7.6.3)."""

    cap_id: int
    version: int
    offset: int

    @property
    def name(self) -> str:
        return EXT_CAP_NAMES.get(self.cap_id, f"extended capability {self.cap_id:#06x}")


@dataclass(frozen=True)
class PcieInfo:
    """The PCI Express capability.  ``flr`` is None when the Device Capabilities register
    could not be read."""

    offset: int
    version: int
    port_type_code: int
    slot_implemented: bool
    flr: bool | None

    @property
    def port_type(self) -> PortType | None:
        """None for the reserved encodings."""
        try:
            return PortType(self.port_type_code)
        except ValueError:
            return None


@dataclass(frozen=True)
class PmInfo:
    """Power Management capability.  ``no_soft_reset`` / ``power_state`` are None when
    PMCSR could not be read (PMC could)."""

    offset: int
    version: int
    no_soft_reset: bool | None
    power_state: int | None


@dataclass(frozen=True)
class MsiInfo:
    offset: int
    is_64bit: bool
    maskable: bool
    max_vectors: int


@dataclass(frozen=True)
class MsixInfo:
    offset: int
    table_size: int  # number of vectors (the register holds N-1)


@dataclass(frozen=True)
class AfInfo:
    """Advanced Features: conventional-PCI FLR needs both TP and FLR (Linux pci_af_flr)."""

    offset: int
    tp: bool
    flr: bool


@dataclass(frozen=True)
class AcsInfo:
    offset: int
    capability: AcsFlags
    control: AcsFlags
    egress_vector_size: int


@dataclass(frozen=True)
class SriovInfo:
    offset: int
    initial_vfs: int
    total_vfs: int
    num_vfs: int
    vf_offset: int
    vf_stride: int
    vf_device: int


@dataclass(frozen=True)
class ConfigSpace:
    """What a function's configuration bytes say.  Fields are None when unreadable."""

    length: int
    vendor: int | None
    device: int | None
    command: int | None
    status: int | None
    revision: int | None
    class_code: int | None
    header_layout: int | None  # Header Type bits 6:0, raw
    multifunction: bool | None
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    primary_bus: int | None = None
    secondary_bus: int | None = None
    subordinate_bus: int | None = None
    capabilities: tuple[Capability, ...] = ()
    ext_capabilities: tuple[ExtCapability, ...] = ()
    pcie: PcieInfo | None = None
    pm: PmInfo | None = None
    msi: MsiInfo | None = None
    msix: MsixInfo | None = None
    af: AfInfo | None = None
    acs: AcsInfo | None = None
    dsn: int | None = None
    sriov: SriovInfo | None = None
    caps_complete: bool = False  # the whole conventional list was read
    # The whole extended list was read (true, and empty, for a conventional function).
    ext_caps_complete: bool = False
    problems: tuple[str, ...] = field(default=())

    @property
    def header_type(self) -> HeaderType | None:
        """The layout as an enum; None when unreadable or a reserved value."""
        if self.header_layout is None:
            return None
        try:
            return HeaderType(self.header_layout)
        except ValueError:
            return None

    @property
    def is_bridge(self) -> bool:
        return self.header_type in (HeaderType.PCI_BRIDGE, HeaderType.CARDBUS_BRIDGE)

    @property
    def is_pcie(self) -> bool:
        return self.has_cap(CAP_ID_PCIE)

    def has_cap(self, cap_id: int) -> bool:
        return any(cap.cap_id == cap_id for cap in self.capabilities)

    def has_ext_cap(self, cap_id: int) -> bool:
        return any(cap.cap_id == cap_id for cap in self.ext_capabilities)

    @property
    def flr_capable(self) -> bool | None:
        """Function Level Reset through PCIe DevCap bit 28 or AF (TP and FLR; Linux's
        pci_af_flr wants both).  None when it cannot be told: the capability list or the
        capability itself was not fully readable."""
        if self.pcie is not None and self.pcie.flr:
            return True
        if self.af is not None and self.af.tp and self.af.flr:
            return True
        if self.has_cap(CAP_ID_PCIE) and (self.pcie is None or self.pcie.flr is None):
            return None
        if self.has_cap(CAP_ID_AF) and self.af is None:
            return None
        return False if self.caps_complete else None

    @property
    def pm_reset_capable(self) -> bool | None:
        """PCI PM 1.2 §3.2.4: with No_Soft_Reset clear, D3hot->D0 resets the function."""
        if self.pm is not None and self.pm.no_soft_reset is not None:
            return not self.pm.no_soft_reset
        if self.has_cap(CAP_ID_PM):
            return None
        return False if self.caps_complete else None

    @property
    def dsn_text(self) -> str | None:
        """The serial as lspci prints it: eight bytes, most significant first, dash-separated."""
        if self.dsn is None:
            return None
        return format_dsn(self.dsn)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready view (numbers as lowercase hex text, like sysfs)."""

        def hex_or_none(value: int | None, width: int) -> str | None:
            return None if value is None else f"{value:0{width}x}"

        return {
            "length": self.length,
            "vendor": hex_or_none(self.vendor, 4),
            "device": hex_or_none(self.device, 4),
            "revision": hex_or_none(self.revision, 2),
            "class": hex_or_none(self.class_code, 6),
            "header_type": self.header_layout,
            "multifunction": self.multifunction,
            "subsystem": (
                None
                if self.subsystem_vendor is None or self.subsystem_device is None
                else f"{self.subsystem_vendor:04x}:{self.subsystem_device:04x}"
            ),
            "secondary_bus": self.secondary_bus,
            "subordinate_bus": self.subordinate_bus,
            "capabilities": [cap.name for cap in self.capabilities],
            "ext_capabilities": [cap.name for cap in self.ext_capabilities],
            "pcie_port_type": (
                None
                if self.pcie is None
                else (
                    self.pcie.port_type.name.lower()
                    if self.pcie.port_type is not None
                    else self.pcie.port_type_code
                )
            ),
            "flr": self.flr_capable,
            "pm_reset": self.pm_reset_capable,
            "msi": self.msi is not None,
            "msix": self.msix is not None,
            "acs_capability": None if self.acs is None else self.acs.capability.names,
            "acs_control": None if self.acs is None else self.acs.control.names,
            "dsn": self.dsn_text,
            "sriov": (
                None
                if self.sriov is None
                else {
                    "total_vfs": self.sriov.total_vfs,
                    "num_vfs": self.sriov.num_vfs,
                    "vf_device": f"{self.sriov.vf_device:04x}",
                }
            ),
            "problems": list(self.problems),
        }


def format_dsn(serial: int) -> str:
    """``0x0011223344556677`` -> ``00-11-22-33-44-55-66-77`` (lspci's ``cap_dsn`` format:
    the upper DWORD's bytes, then the lower DWORD's, each most significant first)."""
    return "-".join(f"{byte:02x}" for byte in (serial & (2**64 - 1)).to_bytes(8, "big"))


class _Reader:
    """Little-endian register reads (PCI 3.0 §6.1: config space is little-endian) that give
    None instead of failing past the end of the data."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def readable(self, offset: int, size: int) -> bool:
        return offset >= 0 and offset + size <= self.length

    def read(self, offset: int, size: int) -> int | None:
        if not self.readable(offset, size):
            return None
        return int.from_bytes(self.data[offset : offset + size], "little")

    def u8(self, offset: int) -> int | None:
        return self.read(offset, 1)

    def u16(self, offset: int) -> int | None:
        return self.read(offset, 2)

    def u32(self, offset: int) -> int | None:
        return self.read(offset, 4)


def parse_config(data: bytes) -> ConfigSpace:
    """Decode configuration space bytes of any length.  Never raises."""
    reader = _Reader(bytes(data))
    problems: list[str] = []
    if reader.length < HEADER_SIZE:
        problems.append(f"only {reader.length} of the {HEADER_SIZE} header bytes could be read")

    vendor = reader.u16(REG_VENDOR_ID)
    class_dword = reader.u32(REG_REVISION)
    header_byte = reader.u8(REG_HEADER_TYPE)
    status = reader.u16(REG_STATUS)
    layout = None if header_byte is None else header_byte & HEADER_LAYOUT_MASK
    header = ConfigSpace(
        length=reader.length,
        vendor=vendor,
        device=reader.u16(REG_DEVICE_ID),
        command=reader.u16(REG_COMMAND),
        status=status,
        revision=reader.u8(REG_REVISION),
        class_code=None if class_dword is None else class_dword >> 8,
        header_layout=layout,
        multifunction=None
        if header_byte is None
        else bool(header_byte & HEADER_TYPE_MULTIFUNCTION),
    )
    if vendor == 0xFFFF:
        # PCI 3.0 §6.2.1: reads of a function that does not exist return all ones.
        problems.append("vendor id ffff: the function did not answer (removed, or read failed)")
        return replace(header, problems=tuple(problems))

    subsystem, buses, cap_pointer_reg = _layout_registers(reader, layout, problems)
    caps, caps_complete = _walk_caps(reader, status, cap_pointer_reg, problems)
    std = _decode_caps(reader, caps, problems)
    # Only PCI Express and PCI-X 2.0 functions have extended configuration space (PCIe 4.0
    # §7.2.2); Linux and lspci look past 0x100 only for them, and so do we.
    if any(cap.cap_id in (CAP_ID_PCIE, CAP_ID_PCIX) for cap in caps):
        is_pcie = any(cap.cap_id == CAP_ID_PCIE for cap in caps)
        ext_caps, ext_complete = _walk_ext_caps(reader, is_pcie, problems)
    else:
        ext_caps, ext_complete = [], caps_complete
    ext = _decode_ext_caps(reader, ext_caps, problems)
    return replace(
        header,
        subsystem_vendor=subsystem[0],
        subsystem_device=subsystem[1],
        primary_bus=buses[0],
        secondary_bus=buses[1],
        subordinate_bus=buses[2],
        capabilities=tuple(caps),
        caps_complete=caps_complete,
        ext_capabilities=tuple(ext_caps),
        ext_caps_complete=ext_complete,
        pcie=std.pcie,
        pm=std.pm,
        msi=std.msi,
        msix=std.msix,
        af=std.af,
        acs=ext.acs,
        dsn=ext.dsn,
        sriov=ext.sriov,
        problems=tuple(problems),
    )


def _layout_registers(
    reader: _Reader, layout: int | None, problems: list[str]
) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None, int | None], int | None]:
    """Subsystem ids, bus numbers and the capability pointer's register, which sit
    at different offsets per header layout (PCI 3.0 §6.1; PPB 1.2 §3.2 for bridges)."""
    subsystem: tuple[int | None, int | None] = (None, None)
    buses: tuple[int | None, int | None, int | None] = (None, None, None)
    cap_pointer_reg: int | None = None
    if layout in (HeaderType.PCI_BRIDGE, HeaderType.CARDBUS_BRIDGE):
        buses = (
            reader.u8(REG_PRIMARY_BUS),
            reader.u8(REG_SECONDARY_BUS),
            reader.u8(REG_SUBORDINATE_BUS),
        )
    if layout == HeaderType.ENDPOINT:
        subsystem = (reader.u16(REG_SUBSYSTEM_VENDOR), reader.u16(REG_SUBSYSTEM_ID))
        cap_pointer_reg = REG_CAP_POINTER
    elif layout == HeaderType.PCI_BRIDGE:
        cap_pointer_reg = REG_CAP_POINTER
    elif layout == HeaderType.CARDBUS_BRIDGE:
        subsystem = (reader.u16(REG_CB_SUBSYSTEM_VENDOR), reader.u16(REG_CB_SUBSYSTEM_ID))
        cap_pointer_reg = REG_CB_CAP_POINTER
    elif layout is not None:
        problems.append(f"header type {layout:#04x} is reserved: layout unknown")
    return subsystem, buses, cap_pointer_reg


def _walk_caps(
    reader: _Reader, status: int | None, pointer_reg: int | None, problems: list[str]
) -> tuple[list[Capability], bool]:
    """Follow the capability list (PCI 3.0 §6.7).  Returns (entries, whole list read)."""
    if pointer_reg is None:
        return [], False
    if status is None:
        problems.append("status register unreadable: capability list unknown")
        return [], False
    if not status & STATUS_CAP_LIST:
        return [], True  # §6.2.3: no list, so nothing is missing
    first = reader.u8(pointer_reg)
    if first is None:
        problems.append("capability pointer unreadable")
        return [], False
    caps: list[Capability] = []
    seen: set[int] = set()
    where = first & CAP_POINTER_MASK
    while where:
        if len(caps) >= CAP_LIST_MAX or where in seen:
            problems.append(f"capability list loops back to {where:#04x}")
            return caps, False
        if where < HEADER_SIZE:
            problems.append(f"capability pointer {where:#04x} points into the header")
            return caps, False
        seen.add(where)
        cap_id = reader.u8(where)
        next_ptr = reader.u8(where + 1)
        if cap_id is None or next_ptr is None:
            hint = " (an unprivileged read sees only the header)" if reader.length <= 64 else ""
            problems.append(
                f"capability at {where:#04x} lies beyond the {reader.length} bytes read{hint}"
            )
            return caps, False
        if cap_id == 0xFF:
            problems.append(f"capability list broken at {where:#04x} (id ff)")
            return caps, False
        caps.append(Capability(cap_id, where))
        where = next_ptr & CAP_POINTER_MASK
    return caps, True


@dataclass(frozen=True)
class _StdCaps:
    pcie: PcieInfo | None = None
    pm: PmInfo | None = None
    msi: MsiInfo | None = None
    msix: MsixInfo | None = None
    af: AfInfo | None = None


def _decode_caps(reader: _Reader, caps: list[Capability], problems: list[str]) -> _StdCaps:
    """Decode the first instance of each capability we care about (Linux does the same:
    pci_find_capability returns the first)."""
    found = _StdCaps()
    decoded: set[int] = set()  # ids already seen, decodable or not
    for cap in caps:
        at = cap.offset
        if cap.cap_id in decoded:
            continue
        decoded.add(cap.cap_id)
        if cap.cap_id == CAP_ID_PCIE:
            found = replace(found, pcie=_decode_pcie(reader, at, problems))
        elif cap.cap_id == CAP_ID_PM:
            found = replace(found, pm=_decode_pm(reader, at, problems))
        elif cap.cap_id == CAP_ID_MSI:
            control = reader.u16(at + MSI_CONTROL)
            if control is None:
                problems.append(f"MSI capability at {at:#04x} truncated")
                continue
            msi = MsiInfo(
                offset=at,
                is_64bit=bool(control & MSI_CONTROL_64BIT),
                maskable=bool(control & MSI_CONTROL_MASKABLE),
                max_vectors=1 << ((control & MSI_CONTROL_MMC) >> 1),
            )
            found = replace(found, msi=msi)
        elif cap.cap_id == CAP_ID_MSIX:
            control = reader.u16(at + MSIX_CONTROL)
            if control is None:
                problems.append(f"MSI-X capability at {at:#04x} truncated")
                continue
            msix = MsixInfo(at, (control & MSIX_CONTROL_TABLE_SIZE) + 1)
            found = replace(found, msix=msix)
        elif cap.cap_id == CAP_ID_AF:
            af_caps = reader.u8(at + AF_CAPS)
            if af_caps is None:
                problems.append(f"Advanced Features capability at {at:#04x} truncated")
                continue
            af = AfInfo(at, bool(af_caps & AF_CAPS_TP), bool(af_caps & AF_CAPS_FLR))
            found = replace(found, af=af)
    return found


def _decode_pcie(reader: _Reader, at: int, problems: list[str]) -> PcieInfo | None:
    flags = reader.u16(at + PCIE_CAPS)
    devcap = reader.u32(at + PCIE_DEVCAP)
    if flags is None or devcap is None:
        problems.append(f"PCI Express capability at {at:#04x} truncated: FLR support unknown")
    if flags is None:
        return None
    return PcieInfo(
        offset=at,
        version=flags & PCIE_CAPS_VERSION,
        port_type_code=(flags & PCIE_CAPS_PORT_TYPE) >> 4,
        slot_implemented=bool(flags & PCIE_CAPS_SLOT),
        flr=None if devcap is None else bool(devcap & PCIE_DEVCAP_FLR),
    )


def _decode_pm(reader: _Reader, at: int, problems: list[str]) -> PmInfo | None:
    pmc = reader.u16(at + PM_PMC)
    pmcsr = reader.u16(at + PM_PMCSR)
    if pmcsr is None:
        problems.append(f"Power Management capability at {at:#04x} truncated: PM reset unknown")
    if pmc is None:
        return None
    return PmInfo(
        offset=at,
        version=pmc & PM_PMC_VERSION,
        no_soft_reset=None if pmcsr is None else bool(pmcsr & PM_PMCSR_NO_SOFT_RESET),
        power_state=None if pmcsr is None else pmcsr & PM_PMCSR_STATE,
    )


def _walk_ext_caps(
    reader: _Reader, is_pcie: bool, problems: list[str]
) -> tuple[list[ExtCapability], bool]:
    """Follow the extended capability list from 0x100 (PCIe 4.0 §7.6.3)."""
    if reader.length <= EXT_CAP_START:
        if is_pcie:
            problems.append(
                f"PCI Express function but only {reader.length} bytes read: "
                "extended capabilities (ACS, SR-IOV, serial number) unknown"
            )
        return [], False
    caps: list[ExtCapability] = []
    seen: set[int] = set()
    where = EXT_CAP_START
    while where:
        if len(caps) >= EXT_CAP_LIST_MAX or where in seen:
            problems.append(f"extended capability list loops back to {where:#05x}")
            return caps, False
        if where < EXT_CAP_START:
            problems.append(f"extended capability pointer {where:#05x} is below 0x100")
            return caps, False
        seen.add(where)
        header = reader.u32(where)
        if header is None:
            problems.append(
                f"extended capability at {where:#05x} lies beyond the {reader.length} bytes read"
            )
            return caps, False
        # PCIe 4.0 §7.6.3: all zeros at 0x100 means no extended capabilities; all ones is
        # what a failed or absent read returns (Linux stops on both).
        if header in (0, 0xFFFFFFFF):
            return caps, True
        caps.append(
            ExtCapability(
                cap_id=header & 0xFFFF,
                version=(header >> EXT_CAP_VERSION_SHIFT) & 0xF,
                offset=where,
            )
        )
        where = (header >> EXT_CAP_NEXT_SHIFT) & EXT_CAP_NEXT_MASK
    return caps, True


@dataclass(frozen=True)
class _ExtCaps:
    acs: AcsInfo | None = None
    dsn: int | None = None
    sriov: SriovInfo | None = None


def _decode_ext_caps(reader: _Reader, caps: list[ExtCapability], problems: list[str]) -> _ExtCaps:
    found = _ExtCaps()
    decoded: set[int] = set()
    for cap in caps:
        at = cap.offset
        if cap.cap_id in decoded:
            continue
        decoded.add(cap.cap_id)
        if cap.cap_id == EXT_CAP_ID_ACS:
            acs_cap = reader.u16(at + ACS_CAPABILITY)
            acs_ctl = reader.u16(at + ACS_CONTROL)
            if acs_cap is None or acs_ctl is None:
                problems.append(f"ACS capability at {at:#05x} truncated")
                continue
            acs = AcsInfo(
                offset=at,
                capability=AcsFlags(acs_cap & ACS_DEFINED_BITS),
                control=AcsFlags(acs_ctl & ACS_DEFINED_BITS),
                egress_vector_size=acs_cap >> 8,
            )
            found = replace(found, acs=acs)
        elif cap.cap_id == EXT_CAP_ID_DSN:
            lower = reader.u32(at + DSN_LOWER)
            upper = reader.u32(at + DSN_UPPER)
            if lower is None or upper is None:
                problems.append(f"Device Serial Number capability at {at:#05x} truncated")
                continue
            found = replace(found, dsn=(upper << 32) | lower)
        elif cap.cap_id == EXT_CAP_ID_SRIOV:
            sriov = _decode_sriov(reader, at)
            if sriov is None:
                problems.append(f"SR-IOV capability at {at:#05x} truncated")
                continue
            found = replace(found, sriov=sriov)
    return found


def _decode_sriov(reader: _Reader, at: int) -> SriovInfo | None:
    if not reader.readable(at, SRIOV_VF_DEVICE + 2):
        return None
    return SriovInfo(
        offset=at,
        initial_vfs=reader.u16(at + SRIOV_INITIAL_VFS) or 0,
        total_vfs=reader.u16(at + SRIOV_TOTAL_VFS) or 0,
        num_vfs=reader.u16(at + SRIOV_NUM_VFS) or 0,
        vf_offset=reader.u16(at + SRIOV_VF_OFFSET) or 0,
        vf_stride=reader.u16(at + SRIOV_VF_STRIDE) or 0,
        vf_device=reader.u16(at + SRIOV_VF_DEVICE) or 0,
    )
