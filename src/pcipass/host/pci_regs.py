"""PCI configuration space register layout: offsets, bit masks and capability ids.

A table of constants, each citing its specification section (the references are
listed in :mod:`pcipass.host.config_space`, which parses with them).
"""

from __future__ import annotations

import enum

# --- Sizes -----------------------------------------------------------------------------------
HEADER_SIZE = 0x40  # PCI 3.0 §6.1: the predefined header; an unprivileged sysfs read gets this
CONVENTIONAL_SIZE = 0x100  # PCI 3.0 §6.1: 256 bytes of configuration space
EXTENDED_SIZE = 0x1000  # PCIe 4.0 §7.2.2: 4096 bytes through ECAM

# --- Header registers common to all layouts (PCI 3.0 §6.1 figure 6-1, §6.2) ------------------
REG_VENDOR_ID = 0x00  # §6.2.1, 16 bit; 0xffff = no function answered
REG_DEVICE_ID = 0x02  # §6.2.1, 16 bit
REG_COMMAND = 0x04  # §6.2.2, 16 bit
REG_STATUS = 0x06  # §6.2.3, 16 bit
REG_REVISION = 0x08  # §6.2.1, 8 bit
REG_CLASS = 0x09  # §6.2.1, 24 bit: programming interface, sub-class, base class (low to high)
REG_HEADER_TYPE = 0x0E  # §6.2.1: bits 6:0 layout, bit 7 multi-function device
HEADER_TYPE_MULTIFUNCTION = 0x80
HEADER_LAYOUT_MASK = 0x7F
STATUS_CAP_LIST = 0x0010  # §6.2.3 Status bit 4: a capability list exists

# Type 0 (endpoint) header, PCI 3.0 §6.2.4 / §6.2.5
REG_SUBSYSTEM_VENDOR = 0x2C
REG_SUBSYSTEM_ID = 0x2E
REG_CAP_POINTER = 0x34  # §6.7: also at 0x34 in the type 1 header (PPB 1.2 §3.2)
CAP_POINTER_MASK = 0xFC  # §6.7: "the bottom two bits are reserved" and must be masked

# Type 1 (PCI-to-PCI bridge) header, PPB 1.2 §3.2.5.2-3.2.5.4
REG_PRIMARY_BUS = 0x18
REG_SECONDARY_BUS = 0x19
REG_SUBORDINATE_BUS = 0x1A

# Type 2 (CardBus bridge) header, PC Card Standard 8.0 vol. 10 (CardBus bridge registers)
REG_CB_CAP_POINTER = 0x14
REG_CB_SUBSYSTEM_VENDOR = 0x40
REG_CB_SUBSYSTEM_ID = 0x42

# The capability list lives after the header (PCI 3.0 §6.7: pointers are 0x40..0xfc).
# 48 = (256 - 64) / 4 entries at most: the loop guard Linux also uses (PCI_FIND_CAP_TTL).
CAP_LIST_MAX = 48

# --- Capability ids (PCI Code and ID Assignment Specification, table 7-1) --------------------
CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_PCIX = 0x07
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11
CAP_ID_AF = 0x13

CAP_NAMES: dict[int, str] = {
    0x00: "Null",
    0x01: "Power Management",
    0x02: "AGP",
    0x03: "Vital Product Data",
    0x04: "Slot Identification",
    0x05: "MSI",
    0x06: "CompactPCI Hot Swap",
    0x07: "PCI-X",
    0x08: "HyperTransport",
    0x09: "Vendor Specific",
    0x0A: "Debug port",
    0x0B: "CompactPCI central resource control",
    0x0C: "PCI Hot-Plug",
    0x0D: "Bridge subsystem vendor id",
    0x0E: "AGP 8x",
    0x0F: "Secure Device",
    0x10: "PCI Express",
    0x11: "MSI-X",
    0x12: "SATA",
    0x13: "Advanced Features",
    0x14: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}

# --- Extended capabilities (PCIe 4.0 §7.6.3, header: id 15:0, version 19:16, next 31:20) -----
EXT_CAP_START = 0x100
EXT_CAP_NEXT_SHIFT = 20
EXT_CAP_NEXT_MASK = 0xFFC  # bits 1:0 of the next offset are reserved (read as 0)
EXT_CAP_VERSION_SHIFT = 16
# (4096 - 256) / 8: the shortest extended capability is 8 bytes (Linux: same guard).
EXT_CAP_LIST_MAX = 480

EXT_CAP_ID_DSN = 0x0003
EXT_CAP_ID_ACS = 0x000D
EXT_CAP_ID_SRIOV = 0x0010

EXT_CAP_NAMES: dict[int, str] = {
    0x0000: "Null",
    0x0001: "Advanced Error Reporting",
    0x0002: "Virtual Channel",
    0x0003: "Device Serial Number",
    0x0004: "Power Budgeting",
    0x0005: "Root Complex Link Declaration",
    0x0006: "Root Complex Internal Link Control",
    0x0007: "Root Complex Event Collector Endpoint Association",
    0x0008: "Multi-Function Virtual Channel",
    0x0009: "Virtual Channel (MFVC present)",
    0x000A: "Root Complex Register Block",
    0x000B: "Vendor Specific",
    0x000C: "Configuration Access Correlation",
    0x000D: "Access Control Services",
    0x000E: "Alternative Routing-ID Interpretation",
    0x000F: "Address Translation Services",
    0x0010: "SR-IOV",
    0x0011: "MR-IOV",
    0x0012: "Multicast",
    0x0013: "Page Request Interface",
    0x0015: "Resizable BAR",
    0x0016: "Dynamic Power Allocation",
    0x0017: "TLP Processing Hints",
    0x0018: "Latency Tolerance Reporting",
    0x0019: "Secondary PCI Express",
    0x001A: "Protocol Multiplexing",
    0x001B: "PASID",
    0x001C: "LN Requester",
    0x001D: "Downstream Port Containment",
    0x001E: "L1 PM Substates",
    0x001F: "Precision Time Measurement",
    0x0023: "Designated Vendor-Specific",
    0x0024: "VF Resizable BAR",
    0x0025: "Data Link Feature",
    0x0026: "Physical Layer 16.0 GT/s",
    0x0027: "Lane Margining at the Receiver",
}

# --- PCI Express capability (PCIe 4.0 §7.5.3) -----------------------------------------------
PCIE_CAPS = 0x02  # §7.5.3.2 PCI Express Capabilities Register, 16 bit
PCIE_CAPS_VERSION = 0x000F  # bits 3:0 capability version
PCIE_CAPS_PORT_TYPE = 0x00F0  # bits 7:4 device/port type
PCIE_CAPS_SLOT = 0x0100  # bit 8 slot implemented
PCIE_DEVCAP = 0x04  # §7.5.3.3 Device Capabilities Register, 32 bit
PCIE_DEVCAP_FLR = 1 << 28  # §7.5.3.3 bit 28: Function Level Reset Capability

# --- Power Management (PCI PM 1.2 §3.2) -----------------------------------------------------
PM_PMC = 0x02  # §3.2.3 Power Management Capabilities, 16 bit; bits 2:0 version
PM_PMC_VERSION = 0x0007
PM_PMCSR = 0x04  # §3.2.4 Power Management Control/Status, 16 bit
PM_PMCSR_STATE = 0x0003  # bits 1:0 PowerState (D0..D3hot)
PM_PMCSR_NO_SOFT_RESET = 0x0008  # bit 3 No_Soft_Reset: 0 means D3hot->D0 resets the function

# --- MSI / MSI-X (PCI 3.0 §6.8.1.3, §6.8.2.3) -----------------------------------------------
MSI_CONTROL = 0x02
MSI_CONTROL_64BIT = 0x0080  # bit 7 64 bit address capable
MSI_CONTROL_MMC = 0x000E  # bits 3:1 Multiple Message Capable (log2 of vectors)
MSI_CONTROL_MASKABLE = 0x0100  # bit 8 per-vector masking capable
MSIX_CONTROL = 0x02
MSIX_CONTROL_TABLE_SIZE = 0x07FF  # bits 10:0 table size, encoded as N-1

# --- Advanced Features (Advanced Capabilities for Conventional PCI ECN) ---------------------
AF_CAPS = 0x03  # AF Capabilities register, 8 bit
AF_CAPS_TP = 0x01  # bit 0 Transactions Pending capable
AF_CAPS_FLR = 0x02  # bit 1 Function Level Reset capable

# --- ACS extended capability (PCIe 4.0, Access Control Services Extended Capability) --------
ACS_CAPABILITY = 0x04  # ACS Capability Register, 16 bit
ACS_CONTROL = 0x06  # ACS Control Register, 16 bit

# --- Device Serial Number (PCIe 4.0, Device Serial Number Extended Capability) --------------
DSN_LOWER = 0x04  # Serial Number Register, lower DWORD
DSN_UPPER = 0x08  # Serial Number Register, upper DWORD

# --- SR-IOV (PCIe 4.0 §9.3.3, SR-IOV Extended Capability) -----------------------------------
SRIOV_INITIAL_VFS = 0x0C  # §9.3.3.5, 16 bit
SRIOV_TOTAL_VFS = 0x0E  # §9.3.3.6, 16 bit
SRIOV_NUM_VFS = 0x10  # §9.3.3.7, 16 bit
SRIOV_VF_OFFSET = 0x14  # §9.3.3.9 First VF Offset, 16 bit
SRIOV_VF_STRIDE = 0x16  # §9.3.3.10 VF Stride, 16 bit
SRIOV_VF_DEVICE = 0x1A  # §9.3.3.11 VF Device ID, 16 bit


class HeaderType(enum.IntEnum):
    """Configuration header layout (PCI 3.0 §6.2.1 Header Type bits 6:0)."""

    ENDPOINT = 0
    PCI_BRIDGE = 1
    CARDBUS_BRIDGE = 2


class PortType(enum.IntEnum):
    """Device/Port Type of the PCI Express capability (PCIe 4.0 §7.5.3.2 bits 7:4)."""

    ENDPOINT = 0x0
    LEGACY_ENDPOINT = 0x1
    ROOT_PORT = 0x4
    UPSTREAM_PORT = 0x5  # upstream port of a switch
    DOWNSTREAM_PORT = 0x6  # downstream port of a switch
    PCIE_TO_PCI_BRIDGE = 0x7
    PCI_TO_PCIE_BRIDGE = 0x8
    RC_INTEGRATED_ENDPOINT = 0x9
    RC_EVENT_COLLECTOR = 0xA

    @property
    def description(self) -> str:
        return _PORT_TYPE_TEXT[self]

    @property
    def is_endpoint(self) -> bool:
        return self in (
            PortType.ENDPOINT,
            PortType.LEGACY_ENDPOINT,
            PortType.RC_INTEGRATED_ENDPOINT,
        )


_PORT_TYPE_TEXT = {
    PortType.ENDPOINT: "PCI Express endpoint",
    PortType.LEGACY_ENDPOINT: "legacy PCI Express endpoint",
    PortType.ROOT_PORT: "root port",
    PortType.UPSTREAM_PORT: "switch upstream port",
    PortType.DOWNSTREAM_PORT: "switch downstream port",
    PortType.PCIE_TO_PCI_BRIDGE: "PCI Express to PCI/PCI-X bridge",
    PortType.PCI_TO_PCIE_BRIDGE: "PCI/PCI-X to PCI Express bridge",
    PortType.RC_INTEGRATED_ENDPOINT: "root complex integrated endpoint",
    PortType.RC_EVENT_COLLECTOR: "root complex event collector",
}


class AcsFlags(enum.IntFlag):
    """Bits 6:0 of the ACS Capability and ACS Control registers (same positions in both)."""

    SV = 0x01  # Source Validation
    TB = 0x02  # Translation Blocking
    RR = 0x04  # P2P Request Redirect
    CR = 0x08  # P2P Completion Redirect
    UF = 0x10  # Upstream Forwarding
    EC = 0x20  # P2P Egress Control
    DT = 0x40  # Direct Translated P2P

    @property
    def names(self) -> list[str]:
        """Set bits by their short names, in bit order (``["SV", "RR"]``)."""
        return [flag.name or "" for flag in AcsFlags if flag in self]


ACS_DEFINED_BITS = 0x7F
