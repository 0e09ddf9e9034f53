"""Config space parsing and the builder, cross-checked against the real lspci (pciutils).

The builder's bytes are written in lspci's ``-xxxx`` dump format and decoded by
``lspci -F FILE -vvv -nn``; the decoded capabilities, FLR, NoSoftRst, ACS, DSN and SR-IOV
values must equal what :func:`parse_config` says.
"""

from __future__ import annotations

import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.compat import zip_equal
from pcipass.host.config_space import (
    CAP_ID_MSI,
    CAP_ID_PCIE,
    EXT_CAP_ID_SRIOV,
    AcsFlags,
    ConfigSpace,
    HeaderType,
    PortType,
    format_dsn,
    parse_config,
)
from pcipass.record import fields as record_fields
from pcipass.record import is_record
from pcipass.testing.config_builder import (
    Cap,
    ExtCap,
    acs,
    af,
    build_config,
    dsn,
    format_lspci_dump,
    msi,
    msix,
    pcie,
    pm,
    sriov,
)
from pcipass.testing.tools import find_tool

LSPCI = find_tool("lspci")

AER = ExtCap(0x0001, bytes(0x44), version=2)  # an extended cap we list but do not decode
ARI = ExtCap(0x000E, bytes(4))
ACS_ROOT_PORT = AcsFlags.SV | AcsFlags.RR | AcsFlags.CR | AcsFlags.UF

# Realistic devices: address -> config bytes.
DEVICES: dict[str, bytes] = {
    # Broadcom NetXtreme II BCM5716 (bnx2): PCIe endpoint with FLR, MSI, MSI-X and a serial.
    "09:00.0": build_config(
        0x14E4,
        0x163B,
        class_code=0x020000,
        revision=0x20,
        subsystem=(0x1028, 0x02A3),
        multifunction=True,
        caps=[pm(), msi(vectors=8), msix(9), pcie(PortType.ENDPOINT, flr=True)],
        ext_caps=[dsn(0x0010_18FF_FE5A_2B3C), AER],
    ),
    # Intel 82540EM (e1000) as on a real board: conventional PCI, Power Management only.
    "00:03.0": build_config(
        0x8086, 0x100E, class_code=0x020000, revision=0x03, subsystem=(0x8086, 0x001E), caps=[pm()]
    ),
    # The lab's QEMU e1000: no capabilities at all.
    "00:04.0": build_config(
        0x8086, 0x100E, class_code=0x020000, revision=0x03, subsystem=(0x1AF4, 0x1100)
    ),
    # Root port (Intel Sunrise Point) with ACS, and an e1000e (82574L) behind it.
    "00:1c.0": build_config(
        0x8086,
        0xA110,
        class_code=0x060400,
        revision=0xF1,
        header_type=HeaderType.PCI_BRIDGE,
        multifunction=True,
        secondary_bus=2,
        subordinate_bus=2,
        caps=[pcie(PortType.ROOT_PORT, slot=True), msi(), pm()],
        ext_caps=[AER, acs(ACS_ROOT_PORT, ACS_ROOT_PORT)],
    ),
    "02:00.0": build_config(
        0x8086,
        0x10D3,
        class_code=0x020000,
        subsystem=(0x8086, 0xA01F),
        caps=[pm(), msi(), pcie(PortType.ENDPOINT), msix(5)],
        ext_caps=[AER, dsn(0x525400FFFE123456)],
    ),
    # Intel I350 (igb) physical function: SR-IOV with 7 VFs, 2 enabled, VF device 1520.
    "03:00.0": build_config(
        0x8086,
        0x1521,
        class_code=0x020000,
        revision=0x01,
        multifunction=True,
        subsystem=(0x8086, 0x5001),
        caps=[pm(), msi(maskable=True), msix(10), pcie(PortType.ENDPOINT, flr=True, link_speed=2)],
        ext_caps=[
            AER,
            dsn(0xA0369FFFFF1A2B3C),
            ARI,
            sriov(7, 2, 0x1520, vf_offset=0x180, vf_stride=4),
            acs(AcsFlags.SV | AcsFlags.RR | AcsFlags.CR | AcsFlags.EC),
        ],
    ),
    # NVIDIA GP107 (GTX 1050 Ti) VGA: legacy endpoint, no FLR, PM with NoSoftRst set.
    "04:00.0": build_config(
        0x10DE,
        0x1C82,
        class_code=0x030000,
        revision=0xA1,
        multifunction=True,
        subsystem=(0x1043, 0x85D1),
        caps=[pm(no_soft_reset=True, d1=True), msi(), pcie(PortType.LEGACY_ENDPOINT)],
        ext_caps=[ExtCap(0x0002, bytes(0x20)), ExtCap(0x000B, bytes(0x14))],
    ),
    # Intel ICH9 UHCI: conventional PCI with FLR through Advanced Features.
    "00:1d.0": build_config(
        0x8086, 0x2934, class_code=0x0C0300, revision=0x03, multifunction=True, caps=[af(True)]
    ),
}


# --- lspci output, decoded ---------------------------------------------------------------------


@dataclass
class LspciView:
    """What lspci printed for one function, in the fields we compare."""

    ids: tuple[int, int] | None = None
    class_code: int | None = None
    revision: int = 0
    subsystem: tuple[int, int] | None = None
    buses: tuple[int, int, int] | None = None
    caps: list[tuple[int, str]] = field(default_factory=list)
    ext_caps: list[tuple[int, int, str]] = field(default_factory=list)
    access_denied: bool = False
    express: str | None = None
    flr: bool | None = None
    nosoftrst: bool | None = None
    msi_count: int | None = None
    msix_count: int | None = None
    af: tuple[bool, bool] | None = None
    acs_cap: set[str] | None = None
    acs_ctl: set[str] | None = None
    dsn: str | None = None
    sriov: tuple[int, int, int] | None = None


ACS_WORDS = {
    "SrcValid": "SV",
    "TransBlk": "TB",
    "ReqRedir": "RR",
    "CmpltRedir": "CR",
    "UpstreamFwd": "UF",
    "EgressCtrl": "EC",
    "DirectTrans": "DT",
}


def run_lspci(tmp_path: Path, devices: dict[str, bytes]) -> dict[str, LspciView]:
    dump = tmp_path / "dump.txt"
    dump.write_text(format_lspci_dump(devices))
    assert LSPCI is not None
    out = subprocess.run(
        [LSPCI, "-F", str(dump), "-vvv", "-nn"],
        capture_output=True,
        text=True,
        errors="replace",  # random bytes decoded as text (VPD, names) are not UTF-8
        check=True,
    ).stdout
    views: dict[str, LspciView] = {}
    for block in out.strip("\n").split("\n\n"):
        address = block.split(" ", 1)[0]
        views[address] = decode_lspci_block(block)
    assert set(views) == set(devices), out
    return views


def flag(text: str, word: str) -> bool:
    match = re.search(rf"\b{word}([+-])", text)
    assert match, f"{word} not in {text!r}"
    return match.group(1) == "+"


def decode_lspci_block(block: str) -> LspciView:
    view = LspciView()
    first = block.splitlines()[0]
    if match := re.search(r"\[([0-9a-f]{4})\]: .*\[([0-9a-f]{4}):([0-9a-f]{4})\]", first):
        view.class_code = int(match.group(1), 16)
        view.ids = (int(match.group(2), 16), int(match.group(3), 16))
    if match := re.search(r"\(rev ([0-9a-f]{2})\)", first):
        view.revision = int(match.group(1), 16)
    if match := re.search(r"Subsystem: .*\[([0-9a-f]{4}):([0-9a-f]{4})\]", block):
        view.subsystem = (int(match.group(1), 16), int(match.group(2), 16))
    if match := re.search(r"Bus: primary=(\w+), secondary=(\w+), subordinate=(\w+)", block):
        view.buses = (int(match.group(1), 16), int(match.group(2), 16), int(match.group(3), 16))
    # Split into capability sections: "\tCapabilities: [xx] text" plus its indented lines.
    sections = re.split(r"\n\tCapabilities: ", block)[1:]
    for section in sections:
        head, _, body = section.partition("\n")
        if head.startswith("<access denied>"):
            view.access_denied = True
            continue
        ext = re.match(r"\[([0-9a-f]{3}) v(\d+)\] (.*)", head)
        if ext:
            offset, text = int(ext.group(1), 16), ext.group(3)
            view.ext_caps.append((offset, int(ext.group(2)), text))
            decode_ext_section(view, text, body)
            continue
        conv = re.match(r"\[([0-9a-f]{2})\] (.*)", head)
        assert conv, head
        offset, text = int(conv.group(1), 16), conv.group(2)
        view.caps.append((offset, text))
        decode_section(view, text, body)
    return view


def decode_section(view: LspciView, text: str, body: str) -> None:
    if text.startswith("Power Management") and "Status:" in body:
        view.nosoftrst = flag(body, "NoSoftRst")
    elif text.startswith("MSI:"):
        match = re.search(r"Count=\d+/(\d+)", text)
        assert match
        view.msi_count = int(match.group(1))
    elif text.startswith("MSI-X:"):
        match = re.search(r"Count=(\d+)", text)
        assert match
        view.msix_count = int(match.group(1))
    elif text.startswith("Express"):
        view.express = re.sub(r"^Express \(v\d\) |, MSI \d+$", "", text)
        devcap = body.split("DevCtl:", maxsplit=1)[0]
        if "FLReset" in devcap:
            view.flr = flag(devcap, "FLReset")
    elif text.startswith("PCI Advanced Features"):
        afcap = body.split("AFCtrl:", maxsplit=1)[0]
        view.af = (flag(afcap, "TP"), flag(afcap, "FLR"))


def decode_ext_section(view: LspciView, text: str, body: str) -> None:
    if text.startswith("Device Serial Number"):
        view.dsn = text.rsplit(maxsplit=1)[-1]
    elif text.startswith("Access Control Services"):
        for line in body.splitlines():
            words = {
                ACS_WORDS[w[:-1]] for w in line.split() if w[:-1] in ACS_WORDS and w[-1] == "+"
            }
            if "ACSCap:" in line:
                view.acs_cap = words
            elif "ACSCtl:" in line:
                view.acs_ctl = words
    elif text.startswith("Single Root I/O Virtualization"):
        counts = re.search(r"Total VFs: (\d+), Number of VFs: (\d+)", body)
        did = re.search(r"Device ID: ([0-9a-f]{4})", body)
        assert counts and did, body
        view.sriov = (int(counts.group(1)), int(counts.group(2)), int(did.group(1), 16))


# How lspci names the capabilities (ls-caps.c / ls-ecaps.c), by id.
LSPCI_CAP_PREFIX = {
    0x01: "Power Management",
    0x05: "MSI:",
    0x10: "Express",
    0x11: "MSI-X:",
    0x13: "PCI Advanced Features",
}
LSPCI_EXT_PREFIX = {
    0x0001: "Advanced Error Reporting",
    0x0002: "Virtual Channel",
    0x0003: "Device Serial Number",
    0x000B: "Vendor Specific",
    0x000D: "Access Control Services",
    0x000E: "Alternative Routing-ID Interpretation",
    0x0010: "Single Root I/O Virtualization",
}
LSPCI_PORT_TYPE = {
    PortType.ENDPOINT: "Endpoint",
    PortType.LEGACY_ENDPOINT: "Legacy Endpoint",
    PortType.ROOT_PORT: "Root Port (Slot",
    PortType.UPSTREAM_PORT: "Upstream Port",
    PortType.DOWNSTREAM_PORT: "Downstream Port (Slot",
    PortType.RC_INTEGRATED_ENDPOINT: "Root Complex Integrated Endpoint",
    PortType.RC_EVENT_COLLECTOR: "Root Complex Event Collector",
}


def assert_agrees(parsed: ConfigSpace, view: LspciView) -> None:
    """Everything lspci decoded equals what parse_config decoded."""
    assert view.ids == (parsed.vendor, parsed.device)
    assert parsed.class_code is not None
    assert view.class_code == parsed.class_code >> 8
    assert view.revision == parsed.revision
    if parsed.header_type == HeaderType.ENDPOINT:
        assert view.subsystem == (parsed.subsystem_vendor, parsed.subsystem_device)
    if parsed.header_type == HeaderType.PCI_BRIDGE:
        assert view.buses == (parsed.primary_bus, parsed.secondary_bus, parsed.subordinate_bus)
    assert [offset for offset, _ in view.caps] == [cap.offset for cap in parsed.capabilities]
    for (_, text), cap in zip_equal(view.caps, parsed.capabilities):
        assert text.startswith(LSPCI_CAP_PREFIX[cap.cap_id]), (text, cap)
    assert [(o, v) for o, v, _ in view.ext_caps] == [
        (cap.offset, cap.version) for cap in parsed.ext_capabilities
    ]
    for (_, _, text), ext in zip_equal(view.ext_caps, parsed.ext_capabilities):
        assert text.startswith(LSPCI_EXT_PREFIX[ext.cap_id]), (text, ext)
    if parsed.pcie is not None:
        assert parsed.pcie.port_type is not None
        assert view.express is not None
        assert view.express.startswith(LSPCI_PORT_TYPE[parsed.pcie.port_type])
        if parsed.pcie.port_type.is_endpoint:  # lspci shows FLReset only for endpoints
            assert view.flr == parsed.pcie.flr
    assert view.nosoftrst == (None if parsed.pm is None else parsed.pm.no_soft_reset)
    assert view.msi_count == (None if parsed.msi is None else parsed.msi.max_vectors)
    assert view.msix_count == (None if parsed.msix is None else parsed.msix.table_size)
    assert view.af == (None if parsed.af is None else (parsed.af.tp, parsed.af.flr))
    if parsed.acs is None:
        assert view.acs_cap is None
    else:
        assert view.acs_cap == set(parsed.acs.capability.names)
        assert view.acs_ctl == set(parsed.acs.control.names)
    assert view.dsn == parsed.dsn_text
    expected_sriov = (
        None
        if parsed.sriov is None
        else (parsed.sriov.total_vfs, parsed.sriov.num_vfs, parsed.sriov.vf_device)
    )
    assert view.sriov == expected_sriov


# --- cross-check with lspci ------------------------------------------------------------------


@pytest.mark.needs_tool("lspci")
def test_lspci_decodes_realistic_devices_like_parse_config(tmp_path: Path) -> None:
    views = run_lspci(tmp_path, DEVICES)
    for address, data in DEVICES.items():
        parsed = parse_config(data)
        assert parsed.problems == (), address
        assert_agrees(parsed, views[address])


@pytest.mark.needs_tool("lspci")
def test_lspci_sees_the_values_the_devices_were_built_with(tmp_path: Path) -> None:
    """Not only agreement: the specific facts each imitated device must show."""
    views = run_lspci(tmp_path, DEVICES)
    bnx2 = views["09:00.0"]
    assert bnx2.express == "Endpoint" and bnx2.flr is True
    assert bnx2.msix_count == 9 and bnx2.dsn == "00-10-18-ff-fe-5a-2b-3c"
    assert views["00:03.0"].caps == [(0x40, "Power Management version 3")]
    assert views["00:03.0"].nosoftrst is False
    assert views["00:04.0"].caps == []
    root = views["00:1c.0"]
    assert root.express == "Root Port (Slot+)" and root.buses == (0, 2, 2)
    assert root.acs_cap == root.acs_ctl == {"SV", "RR", "CR", "UF"}
    assert views["02:00.0"].flr is False
    igb = views["03:00.0"]
    assert igb.sriov == (7, 2, 0x1520) and igb.flr is True
    assert igb.acs_cap == {"SV", "RR", "CR", "EC"} and igb.acs_ctl == set()
    vga = views["04:00.0"]
    assert vga.class_code == 0x0300 and vga.express == "Legacy Endpoint"
    assert vga.flr is False and vga.nosoftrst is True
    assert views["00:1d.0"].af == (True, True)


@pytest.mark.needs_tool("lspci")
def test_unprivileged_64_byte_read_is_reported_like_lspci(tmp_path: Path) -> None:
    """lspci prints <access denied> where the capability list leaves the 64 bytes read; the
    parser keeps the header and says the capabilities could not be read."""
    views = run_lspci(tmp_path, {"09:00.0": DEVICES["09:00.0"][:64]})
    assert views["09:00.0"].access_denied
    parsed = parse_config(DEVICES["09:00.0"][:64])
    assert (parsed.vendor, parsed.device, parsed.class_code) == (0x14E4, 0x163B, 0x020000)
    assert parsed.capabilities == () and not parsed.caps_complete
    assert parsed.flr_capable is None and parsed.pm_reset_capable is None
    assert parsed.problems == (
        "capability at 0x40 lies beyond the 64 bytes read (an unprivileged read sees only the "
        "header)",
    )


@pytest.mark.needs_tool("lspci")
def test_256_bytes_of_a_pcie_device_hide_the_extended_caps_from_both(tmp_path: Path) -> None:
    data = DEVICES["03:00.0"][:256]
    views = run_lspci(tmp_path, {"03:00.0": data})
    parsed = parse_config(data)
    assert views["03:00.0"].ext_caps == [] and parsed.ext_capabilities == ()
    assert parsed.sriov is None and parsed.acs is None and not parsed.ext_caps_complete
    assert parsed.flr_capable is True  # the conventional part is complete
    assert parsed.problems == (
        "PCI Express function but only 256 bytes read: extended capabilities (ACS, SR-IOV, "
        "serial number) unknown",
    )


def _random_chain_config(rng: random.Random) -> bytes:
    """Random bytes with a random but well-formed pointer structure: conventional caps at
    distinct aligned offsets >= 0x40, extended caps at distinct offsets >= 0x100, possibly
    looping, ids random (0xff avoided only where lspci and Linux both stop anyway)."""
    data = bytearray(rng.randbytes(4096))
    data[0:2] = (0x8086).to_bytes(2, "little")
    data[0x0E] = 0  # type 0 header
    data[0x06] |= 0x10
    slots = rng.sample(range(0x40, 0x100, 4), rng.randint(0, 12))
    data[0x34] = slots[0] if slots else 0
    for index, at in enumerate(slots):
        data[at] = rng.choice([0x01, 0x05, 0x09, 0x10, 0x11, 0x13, rng.randrange(0x14, 0xFF)])
        nxt = slots[index + 1] if index + 1 < len(slots) else rng.choice([0, rng.choice(slots)])
        data[at + 1] = nxt | rng.randrange(4)  # low bits must be masked
    # Only a PCIe function gets its extended list shown by lspci.
    if slots:
        data[slots[0]] = 0x10
    ext = rng.sample(range(0x100, 0x1000, 4), rng.randint(0, 10))
    for index, at in enumerate(ext):
        nxt = ext[index + 1] if index + 1 < len(ext) else rng.choice([0, rng.choice(ext)])
        cap_id = rng.choice([0x0001, 0x0003, 0x000D, 0x0010, 0x000B, rng.randrange(0x30, 0xFFFF)])
        header = cap_id | (rng.randrange(16) << 16) | (nxt << 20)
        data[at : at + 4] = header.to_bytes(4, "little")
    if not ext:
        data[0x100:0x104] = bytes(4)
    elif ext[0] != 0x100:
        data[0x100:0x104] = (0x000B | (1 << 16) | (ext[0] << 20)).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.needs_tool("lspci")
def test_random_capability_chains_walk_like_lspci(tmp_path: Path) -> None:
    """Differential test on 150 random chains (loops, masked low bits, random ids): the
    offsets of both lists equal lspci's, and so do the loop detections."""
    rng = random.Random(20240611)
    devices = {f"{bus:02x}:00.0": _random_chain_config(rng) for bus in range(1, 151)}
    views = run_lspci(tmp_path, devices)
    loops = 0
    for address, data in devices.items():
        parsed = parse_config(data)
        view = views[address]
        # lspci prints the entry it arrives at a second time as "<chain looped>"; we list
        # each entry once and report the loop as a problem.
        lspci_looped = any(t == "<chain looped>" for _, t in view.caps) or any(
            t == "<chain looped>" for _, _, t in view.ext_caps
        )
        caps = [o for o, t in view.caps if t != "<chain looped>"]
        ext_caps = [(o, v) for o, v, t in view.ext_caps if t != "<chain looped>"]
        assert caps == [c.offset for c in parsed.capabilities], address
        assert ext_caps == [(c.offset, c.version) for c in parsed.ext_capabilities], address
        looped = any("loops back" in p for p in parsed.problems)
        assert looped == lspci_looped, address
        loops += looped
    assert 10 < loops < 140  # the generator exercised both endings


# --- parser unit tests -----------------------------------------------------------------------


def test_header_fields_of_an_endpoint() -> None:
    parsed = parse_config(DEVICES["09:00.0"])
    assert (parsed.vendor, parsed.device, parsed.revision) == (0x14E4, 0x163B, 0x20)
    assert parsed.class_code == 0x020000
    assert parsed.header_type is HeaderType.ENDPOINT and parsed.multifunction is True
    assert (parsed.subsystem_vendor, parsed.subsystem_device) == (0x1028, 0x02A3)
    assert parsed.secondary_bus is None and not parsed.is_bridge
    assert parsed.command == 0x0006 and parsed.status is not None and parsed.status & 0x10
    assert parsed.has_cap(CAP_ID_PCIE) and not parsed.has_ext_cap(EXT_CAP_ID_SRIOV)


def test_bridge_header_gives_bus_numbers_and_no_subsystem() -> None:
    parsed = parse_config(DEVICES["00:1c.0"])
    assert parsed.header_type is HeaderType.PCI_BRIDGE and parsed.is_bridge
    assert (parsed.primary_bus, parsed.secondary_bus, parsed.subordinate_bus) == (0, 2, 2)
    assert parsed.subsystem_vendor is None
    assert parsed.pcie is not None and parsed.pcie.port_type is PortType.ROOT_PORT
    assert parsed.pcie.slot_implemented
    assert parsed.acs is not None
    assert parsed.acs.capability == parsed.acs.control == ACS_ROOT_PORT
    assert parsed.acs.control.names == ["SV", "RR", "CR", "UF"]


def test_reset_relevant_bits() -> None:
    bnx2 = parse_config(DEVICES["09:00.0"])
    assert bnx2.flr_capable is True and bnx2.pm_reset_capable is True
    e1000e = parse_config(DEVICES["02:00.0"])
    assert e1000e.flr_capable is False and e1000e.pm_reset_capable is True
    vga = parse_config(DEVICES["04:00.0"])
    assert vga.flr_capable is False and vga.pm_reset_capable is False
    qemu_e1000 = parse_config(DEVICES["00:04.0"])
    assert qemu_e1000.capabilities == () and qemu_e1000.caps_complete
    assert qemu_e1000.flr_capable is False and qemu_e1000.pm_reset_capable is False
    uhci = parse_config(DEVICES["00:1d.0"])
    assert uhci.pcie is None and uhci.flr_capable is True


def test_advanced_features_flr_needs_transactions_pending_too() -> None:
    """Linux's pci_af_flr refuses unless both TP and FLR are advertised."""
    data = build_config(0x8086, 0x2934, class_code=0x0C0300, caps=[af(True, tp=False)])
    parsed = parse_config(data)
    assert parsed.af is not None and parsed.af.flr and not parsed.af.tp
    assert parsed.flr_capable is False


def test_sriov_and_dsn_values() -> None:
    parsed = parse_config(DEVICES["03:00.0"])
    assert parsed.sriov is not None
    assert (parsed.sriov.total_vfs, parsed.sriov.num_vfs, parsed.sriov.vf_device) == (
        7,
        2,
        0x1520,
    )
    assert (parsed.sriov.vf_offset, parsed.sriov.vf_stride) == (0x180, 4)
    assert parsed.dsn == 0xA0369FFFFF1A2B3C
    assert parsed.dsn_text == "a0-36-9f-ff-ff-1a-2b-3c"
    assert [c.name for c in parsed.ext_capabilities] == [
        "Advanced Error Reporting",
        "Device Serial Number",
        "Alternative Routing-ID Interpretation",
        "SR-IOV",
        "Access Control Services",
    ]


def test_format_dsn_matches_lspci_byte_order() -> None:
    assert format_dsn(0x0011223344556677) == "00-11-22-33-44-55-66-77"
    assert format_dsn(0) == "00-00-00-00-00-00-00-00"


def test_to_json_is_plain_data() -> None:
    data = parse_config(DEVICES["03:00.0"]).to_json()
    assert data["vendor"] == "8086" and data["class"] == "020000"
    assert data["pcie_port_type"] == "endpoint" and data["flr"] is True
    assert data["sriov"] == {"total_vfs": 7, "num_vfs": 2, "vf_device": "1520"}
    assert data["acs_capability"] == ["SV", "RR", "CR", "EC"]
    assert data["problems"] == []


def test_no_function_answers() -> None:
    parsed = parse_config(b"\xff" * 256)
    assert parsed.vendor == 0xFFFF and parsed.capabilities == ()
    assert parsed.problems == (
        "vendor id ffff: the function did not answer (removed, or read failed)",
    )


def test_empty_input() -> None:
    parsed = parse_config(b"")
    assert parsed.vendor is None and parsed.header_type is None
    assert parsed.flr_capable is None
    assert parsed.problems[0] == "only 0 of the 64 header bytes could be read"


def test_capability_loop_is_cut_and_reported() -> None:
    data = bytearray(build_config(0x8086, 0x100E, class_code=0x020000, caps=[pm(), msi()]))
    data[0x41] = 0x40  # PM's next points back to itself
    parsed = parse_config(bytes(data))
    assert [c.offset for c in parsed.capabilities] == [0x40]
    assert parsed.problems == ("capability list loops back to 0x40",)
    assert not parsed.caps_complete


def test_pointer_into_the_header_and_masked_low_bits() -> None:
    data = bytearray(build_config(0x8086, 0x100E, class_code=0x020000, caps=[pm(), msi()]))
    data[0x34] = 0x43  # low two bits are reserved: still 0x40
    data[0x49] = 0x10  # MSI's next -> 0x10, inside the header
    parsed = parse_config(bytes(data))
    assert [c.cap_id for c in parsed.capabilities] == [0x01, CAP_ID_MSI]
    assert parsed.problems == ("capability pointer 0x10 points into the header",)


def test_capability_without_status_bit_is_ignored() -> None:
    """PCI 3.0 §6.7: the pointer is valid only when Status bit 4 is set."""
    data = bytearray(build_config(0x8086, 0x100E, class_code=0x020000, caps=[pm()]))
    data[0x06] &= ~0x10
    parsed = parse_config(bytes(data))
    assert parsed.capabilities == () and parsed.caps_complete and parsed.pm is None


def test_extended_pointer_below_0x100_is_a_problem() -> None:
    data = bytearray(DEVICES["02:00.0"])
    header = int.from_bytes(data[0x100:0x104], "little")
    data[0x100:0x104] = ((header & 0xFFFFF) | (0x0FC << 20)).to_bytes(4, "little")
    parsed = parse_config(bytes(data))
    assert [c.cap_id for c in parsed.ext_capabilities] == [0x0001]
    assert parsed.problems == ("extended capability pointer 0x0fc is below 0x100",)


def test_reserved_header_type() -> None:
    data = bytearray(DEVICES["00:03.0"])
    data[0x0E] = 0x05
    parsed = parse_config(bytes(data))
    assert parsed.header_layout == 5 and parsed.header_type is None
    assert parsed.capabilities == ()
    assert parsed.problems == ("header type 0x05 is reserved: layout unknown",)


def test_cardbus_capability_pointer_is_at_0x14() -> None:
    data = bytearray(256)
    data[0:4] = bytes((0x80, 0x10, 0x76, 0x04))  # 1180:0476 Ricoh CardBus bridge
    data[0x06] = 0x10
    data[0x0B] = 0x06
    data[0x0A] = 0x07
    data[0x0E] = 0x02
    data[0x14] = 0xDC
    data[0x19], data[0x1A] = 3, 6
    data[0x40:0x44] = bytes((0x25, 0x10, 0x01, 0x00))
    data[0xDC:0xE4] = bytes((0x01, 0x00, 0x02, 0x7E, 0x00, 0x00, 0x00, 0x00))
    parsed = parse_config(bytes(data))
    assert parsed.header_type is HeaderType.CARDBUS_BRIDGE
    assert [c.offset for c in parsed.capabilities] == [0xDC]
    assert (parsed.secondary_bus, parsed.subordinate_bus) == (3, 6)
    assert (parsed.subsystem_vendor, parsed.subsystem_device) == (0x1025, 0x0001)
    assert parsed.pm_reset_capable is True


# --- builder -----------------------------------------------------------------------------------


def test_builder_sizes_and_chain() -> None:
    assert len(DEVICES["00:03.0"]) == 256 and len(DEVICES["09:00.0"]) == 4096
    data = DEVICES["09:00.0"]
    assert data[0x34] == 0x40 and data[0x41] == 0x48  # chained in order, 4-aligned
    assert int.from_bytes(data[0x100:0x104], "little") & 0xFFFF == 0x0003


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ext_caps": [dsn(1)]}, "extended capabilities need a PCI Express capability"),
        ({"caps": [pcie(PortType.ENDPOINT)], "size": 256, "ext_caps": [dsn(1)]}, "size=4096"),
        ({"caps": [Cap(0x09, bytes(200))]}, "overflow"),
        ({"size": 512}, "size must be 256 or 4096"),
        ({"header_type": 2}, "only header types 0 and 1"),
        ({"header_type": 1, "secondary_bus": 0}, "bus numbers"),
    ],
)
def test_builder_refuses_impossible_layouts(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(0x8086, 0x100E, class_code=0x020000, **kwargs)  # type: ignore[arg-type]


def test_builder_accepts_extended_caps_mixed_into_caps() -> None:
    mixed = build_config(
        0x8086, 0x10D3, class_code=0x020000, caps=[pcie(PortType.ENDPOINT), dsn(5)]
    )
    parsed = parse_config(mixed)
    assert parsed.dsn == 5 and [c.cap_id for c in parsed.capabilities] == [CAP_ID_PCIE]


# --- robustness (hypothesis) -------------------------------------------------------------------

HEADER_FIELDS = [
    f.name
    for f in record_fields(ConfigSpace)
    if f.name
    not in (
        "length",
        "capabilities",
        "ext_capabilities",
        "caps_complete",
        "ext_caps_complete",
        "problems",
    )
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4200))
def test_any_bytes_parse_without_exception(data: bytes) -> None:
    parsed = parse_config(data)
    assert parsed.length == len(data)
    assert all(isinstance(p, str) and p for p in parsed.problems)
    offsets = [c.offset for c in parsed.capabilities]
    assert len(offsets) == len(set(offsets)) and all(0x40 <= o < 0x100 for o in offsets)
    ext_offsets = [c.offset for c in parsed.ext_capabilities]
    assert len(ext_offsets) == len(set(ext_offsets))
    assert all(0x100 <= o < len(data) for o in ext_offsets)
    parsed.to_json()  # every property is total too
    assert parsed.flr_capable in (True, False, None)


ALL_DEVICES = list(DEVICES.values())


def consistent(part: object, whole: object) -> bool:
    """``part`` is unknown (None) or agrees with ``whole``, field by field for records."""
    if part is None:
        return True
    if is_record(part) and type(part) is type(whole):
        return all(
            consistent(getattr(part, f.name), getattr(whole, f.name)) for f in record_fields(part)
        )
    return part == whole


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_DEVICES), st.integers(min_value=0, max_value=4096))
def test_truncation_never_invents_values(full: bytes, cut: int) -> None:
    """Reading fewer bytes gives each field either its true value or None, a prefix of the
    capability list, and a problem whenever something is missing."""
    whole = parse_config(full)
    part = parse_config(full[:cut])
    for name in HEADER_FIELDS:
        assert consistent(getattr(part, name), getattr(whole, name)), (name, cut)
    assert whole.capabilities[: len(part.capabilities)] == part.capabilities
    assert whole.ext_capabilities[: len(part.ext_capabilities)] == part.ext_capabilities
    if part.capabilities != whole.capabilities or part.ext_capabilities != (whole.ext_capabilities):
        assert part.problems
    if part.flr_capable is not None:
        assert part.flr_capable == whole.flr_capable
    if part.pm_reset_capable is not None:
        assert part.pm_reset_capable == whole.pm_reset_capable


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ALL_DEVICES),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=40),
)
def test_corrupted_configs_parse_without_exception(
    full: bytes, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(full)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    parsed = parse_config(bytes(data))
    assert len(parsed.capabilities) <= 48 and len(parsed.ext_capabilities) <= 480
