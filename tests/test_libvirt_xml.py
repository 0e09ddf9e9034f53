"""libvirt domain XML: reading hostdevs, byte-exact edits checked by libvirt's own schema."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.guests.libvirt_xml import LibvirtDomain, hostdev_xml, parse_domain_xml
from pcipass.guests.model import GuestConfig, GuestKind, VirtMode
from pcipass.testing.harness import inserted, missing_members
from pcipass.testing.tools import require_tool

DATA = Path(__file__).parent / "data" / "guests"
NEW = PciAddress.parse("0000:0b:00.0")
NIC = PciAddress.parse("0000:09:00.0")
HBA = PciAddress.parse("0000:0a:04.1")
XML_SAMPLES = sorted(p.name for p in DATA.glob("*.xml"))
Validator = Callable[[bytes], None]


def load(name: str) -> tuple[bytes, LibvirtDomain]:
    data = (DATA / name).read_bytes()
    return data, parse_domain_xml(data, f"/etc/libvirt/qemu/{name}")


def addresses(config: GuestConfig) -> list[str]:
    return [str(d.address) for d in config.devices()]


@pytest.fixture(scope="session")
def validate(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    """Check a document with libvirt's RNG schema (virt-xml-validate FILE domain)."""
    program = require_tool("virt-xml-validate")
    require_tool("xmllint")  # virt-xml-validate runs it
    folder = tmp_path_factory.mktemp("validate")

    def check(data: bytes) -> None:
        path = folder / "domain.xml"
        path.write_bytes(data)
        result = subprocess.run(
            [program, str(path), "domain"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr + result.stdout

    return check


# --------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize(
    ("name", "guest", "hypervisor", "mode", "os", "devices", "passthrough"),
    [
        ("kvm-virt-install.xml", "rhel6-db", "kvm", VirtMode.HVM, "rhel 6.10", [str(HBA)], None),
        ("xen-pv.xml", "rhel6-pv", "xen", VirtMode.PV, "rhel 6.10", [str(NIC)], None),
        ("xen-hvm-passthrough.xml", "win-hvm", "xen", VirtMode.HVM, "unknown OS", [], True),
        ("kvm-compact.xml", "tiny", "qemu", VirtMode.HVM, "unknown OS", [], None),
    ],
)
def test_samples_read(
    name: str,
    guest: str,
    hypervisor: str,
    mode: VirtMode,
    os: str,
    devices: list[str],
    passthrough: bool | None,
) -> None:
    _, domain = load(name)
    assert missing_members(domain, GuestConfig) == []
    assert domain.kind is GuestKind.LIBVIRT
    assert domain.name == guest
    assert domain.hypervisor == hypervisor
    assert domain.virt_mode is mode
    assert str(domain.os) == os
    assert addresses(domain) == devices
    assert domain.passthrough_enabled is passthrough


def test_hostdev_details_and_os_sources() -> None:
    _, domain = load("kvm-virt-install.xml")
    (device,) = domain.devices()
    assert device.options == (("managed", "yes"), ("driver", "vfio"))
    assert device.name == "hostdev0"
    assert device.line == 83
    assert domain.uuid == "2d6c7e0a-91f4-4b3a-9f0e-6a1d3c5b7e21"
    assert "libosinfo" in domain.os.source
    _, pv = load("xen-pv.xml")
    assert pv.os.source.startswith("kernel ")  # no metadata: the PV kernel's release
    assert pv.devices()[0].option("driver") == "xen"


def test_pvh_and_address_number_forms() -> None:
    text = (
        b"<domain type='xen'><name>p</name><os><type>xenpvh</type></os><devices>"
        b"<hostdev type='pci'><source><address bus='10' slot='0x1f' function='07'/>"
        b"</source></hostdev></devices></domain>"
    )
    domain = parse_domain_xml(text, "p.xml")
    assert domain.virt_mode is VirtMode.PVH
    # strtoul base 0, as libvirt reads them: decimal, hex, octal; domain defaults to 0.
    assert addresses(domain) == ["0000:0a:1f.7"]


def test_sriov_interface_counts_as_an_assignment_but_is_not_removed() -> None:
    text = (
        b"<domain type='kvm'><name>v</name><devices><interface type='hostdev' managed='yes'>"
        b"<source><address type='pci' domain='0x0000' bus='0x0a' slot='0x04' function='0x1'/>"
        b"</source></interface></devices></domain>"
    )
    domain = parse_domain_xml(text, "v.xml")
    assert addresses(domain) == [str(HBA)]
    with pytest.raises(UsageError, match="interface"):
        domain.with_device_removed(HBA)
    with pytest.raises(UsageError, match="already assigned"):
        domain.with_device_added(HBA, {"managed": "no"})


# --------------------------------------------------------------------------
# Adding and removing


@pytest.mark.needs_tool("virt-xml-validate", "xmllint")
@pytest.mark.parametrize("name", XML_SAMPLES)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_add_validates_and_add_then_remove_is_identity(
    name: str, line_end: bytes, validate: Validator
) -> None:
    raw = (DATA / name).read_bytes().replace(b"\n", line_end)
    domain = parse_domain_xml(raw, name)
    added = domain.with_device_added(NEW)
    block = inserted(raw, added)
    assert b"bus='0x0b'" in block or b'bus="0x0b"' in block
    assert b"\n" not in block.replace(line_end, b"")
    validate(added)
    again = parse_domain_xml(added, name)
    assert addresses(again) == [*addresses(domain), str(NEW)]
    assert again.with_device_removed(NEW) == raw


def test_added_hostdev_is_indented_like_its_siblings() -> None:
    data, domain = load("kvm-virt-install.xml")
    block = (
        b"    <hostdev mode='subsystem' type='pci' managed='no'>\n"
        b"      <driver name='vfio'/>\n"
        b"      <source>\n"
        b"        <address domain='0x0000' bus='0x0b' slot='0x00' function='0x0'/>\n"
        b"      </source>\n"
        b"    </hostdev>\n"
    )
    assert domain.with_device_added(NEW) == data.replace(b"  </devices>", block + b"  </devices>")


def test_devices_created_with_tabs_and_double_quotes() -> None:
    data, domain = load("xen-hvm-passthrough.xml")
    block = (
        b"\t<devices>\n"
        b'\t\t<hostdev mode="subsystem" type="pci" managed="yes">\n'
        b'\t\t\t<driver name="xen"/>\n'
        b"\t\t\t<source>\n"
        b'\t\t\t\t<address domain="0x0000" bus="0x0b" slot="0x00" function="0x0"/>\n'
        b"\t\t\t</source>\n"
        b"\t\t</hostdev>\n"
        b"\t</devices>\n"
    )
    added = domain.with_device_added(NEW, {"managed": "yes"})
    assert added == data.replace(b"</domain>", block + b"</domain>")


@pytest.mark.needs_tool("virt-xml-validate", "xmllint")
def test_remove_an_existing_hostdev_takes_its_lines_only(validate: Validator) -> None:
    data, domain = load("kvm-virt-install.xml")
    removed = domain.with_device_removed(HBA)
    start = data.index(b"    <hostdev ")
    end = data.index(b"</hostdev>\n") + len(b"</hostdev>\n")
    assert removed == data[:start] + data[end:]
    assert b"<!-- the RAID controller" in removed
    validate(removed)
    assert parse_domain_xml(removed, "x").devices() == []


@pytest.mark.needs_tool("virt-xml-validate", "xmllint")
def test_removing_the_only_device_removes_the_empty_devices(validate: Validator) -> None:
    text = (
        b"<domain type='kvm'>\n  <name>g</name>\n  <memory>1</memory>\n"
        b"  <os>\n    <type>hvm</type>\n  </os>\n  <devices>\n"
        + hostdev_xml(NIC).encode()
        + b"\n  </devices>\n</domain>\n"
    )
    domain = parse_domain_xml(text, "g.xml")
    removed = domain.with_device_removed(NIC)
    assert b"devices" not in removed
    validate(removed)


def test_compact_and_empty_devices_element() -> None:
    text = b"<domain type='kvm'><name>g</name><devices/></domain>"
    domain = parse_domain_xml(text, "g.xml")
    added = domain.with_device_added(NEW)
    assert added == (
        b"<domain type='kvm'><name>g</name><devices>"
        + hostdev_xml(NEW).encode()
        + b"</devices></domain>"
    )
    assert addresses(parse_domain_xml(added, "g.xml")) == [str(NEW)]


def test_remove_absent_is_unchanged_and_add_present_is_idempotent() -> None:
    data, domain = load("kvm-virt-install.xml")
    assert domain.with_device_removed(NEW) == data
    assert domain.with_device_added(HBA) == data
    assert domain.with_device_added(HBA, {"managed": "yes", "driver": "vfio"}) == data
    with pytest.raises(UsageError, match="already assigned"):
        domain.with_device_added(HBA, {"managed": "no"})


@pytest.mark.parametrize(
    "options",
    [{"driver": "pciback"}, {"managed": "true"}, {"rom": "off"}],
)
def test_bad_options_are_refused(options: dict[str, str]) -> None:
    _, domain = load("kvm-compact.xml")
    with pytest.raises(UsageError):
        domain.with_device_added(NEW, options)


def test_hostdev_xml_for_live_attach() -> None:
    element = ET.fromstring(hostdev_xml(NEW, "vfio", managed=True))
    assert element.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    driver = element.find("driver")
    assert driver is not None and driver.get("name") == "vfio"
    source = element.find("source/address")
    assert source is not None
    assert source.attrib == {"domain": "0x0000", "bus": "0x0b", "slot": "0x00", "function": "0x0"}
    assert ET.fromstring(hostdev_xml(NEW, None)).find("driver") is None
    with pytest.raises(UsageError):
        hostdev_xml(NEW, "pci-stub")


# --------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n]>\n'
            b"<domain type='kvm'><name>&lol;</name></domain>",
            2,
            "<!DOCTYPE",
        ),
        (b"<domain type='kvm'>\n<!ENTITY x 'y'>\n</domain>", 2, "<!ENTITY"),
        (b"<domain type='kvm'>\n  <name>g</nam>\n</domain>", 2, "not well-formed"),
        (b"<network><name>default</name></network>", None, "not a libvirt <domain>"),
        (b"<domain xmlns='urn:x'><name>g</name></domain>", None, "not a libvirt <domain>"),
        (b"<?xml version='1.0' encoding='UTF-16'?><domain/>", 1, "UTF-8"),
        (b"<domain type='kvm'>\n<name>\xff</name></domain>", 2, "UTF-8"),
        (
            b"<domain type='kvm'><devices>\n<hostdev type='pci'><source>"
            b"<address bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>",
            2,
            "bus out of range",
        ),
        (
            b"<domain type='kvm'><devices>\n<hostdev type='pci'><source>"
            b"<address bus='nine' slot='0' function='0'/></source></hostdev></devices></domain>",
            2,
            "not a number",
        ),
        (
            b"<domain type='kvm'><devices>\n\n<hostdev type='pci'/></devices></domain>",
            3,
            "without <source>",
        ),
        (b"<domain><devices/><devices/></domain>", None, "more than one"),
        (b"<domain><devices xmlns='urn:x'/></domain>", None, "namespace"),
        (
            b"<domain><devices><hostdev xmlns='urn:x' type='pci'/></devices></domain>",
            None,
            "could not locate",
        ),
        (b"", 1, "not well-formed"),
    ],
)
def test_refusals(text: bytes, line: int | None, words: str) -> None:
    with pytest.raises(ConfigSyntaxError) as caught:
        parse_domain_xml(text, "/etc/libvirt/qemu/g.xml")
    error = caught.value
    assert error.line == line, error.render()
    assert words in error.problem
    assert error.subject.startswith("/etc/libvirt/qemu/g.xml")


# --------------------------------------------------------------------------
# libvirt's own parser: the test driver


def test_libvirt_test_driver_accepts_the_edited_documents() -> None:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open("test:///default")
    try:
        for name in XML_SAMPLES:
            _, domain = load(name)
            edited = domain.with_device_added(NEW)
            defined = connection.defineXML(edited.decode())
            try:
                # libvirt re-serialises it: our parser must find the device there too.
                dumped = parse_domain_xml(defined.XMLDesc().encode(), f"dumpxml {name}")
                assert str(NEW) in addresses(dumped)
                assert addresses(dumped) == addresses(parse_domain_xml(edited, name))
            finally:
                defined.undefine()
    finally:
        connection.close()


# --------------------------------------------------------------------------
# Property tests


@st.composite
def domain_documents(draw: st.DrawFn) -> tuple[bytes, list[PciAddress]]:
    """Domains in assorted shapes: indentation, quotes, line ends, children."""
    unit = draw(st.sampled_from(["  ", "    ", "\t", " "]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    q = draw(st.sampled_from(["'", '"']))
    existing = draw(
        st.lists(
            st.builds(
                lambda bus, slot, fn: PciAddress(0, bus, slot, fn),
                st.integers(0, 10),
                st.integers(0, 31),
                st.integers(0, 7),
            ),
            max_size=3,
            unique=True,
        )
    )
    children = [
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
        f"<!-- {draw(st.text('abc xyz', max_size=8))} -->",
        f"<input type={q}tablet{q} bus={q}usb{q}/>",
        f"<memballoon model={q}virtio{q}/>",
    ]
    chosen = draw(st.lists(st.sampled_from(children), max_size=4))
    for address in existing:
        chosen.insert(draw(st.integers(0, len(chosen))), hostdev_xml(address, "vfio", quote=q))
    in_order = [a for child in chosen for a in existing if child == hostdev_xml(a, "vfio", quote=q)]
    lines = [
        f"<domain type={q}kvm{q}>",
        f"{unit}<name>g</name>",
        f"{unit}<memory>65536</memory>",
        f"{unit}<os>{newline}{unit * 2}<type>hvm</type>{newline}{unit}</os>",
    ]
    empty_devices = draw(st.booleans())
    if chosen or empty_devices:
        lines.append(f"{unit}<devices>")
        lines.extend(f"{unit * 2}{child}" for child in chosen)
        lines.append(f"{unit}</devices>")
    lines.append("</domain>")
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    return text.encode(), in_order


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=domain_documents())
def test_generated_domains_edit_exactly(document: tuple[bytes, list[PciAddress]]) -> None:
    text, existing = document
    domain = parse_domain_xml(text, "g.xml")
    assert [d.address for d in domain.devices()] == existing
    added = domain.with_device_added(NEW)
    inserted(text, added)
    grown = parse_domain_xml(added, "g.xml")
    assert [d.address for d in grown.devices()] == [*existing, NEW]
    empty_devices = re.search(rb"\r?\n[ \t]*<devices>\r?\n[ \t]*</devices>", text)
    if empty_devices:
        # The one documented exception: an empty <devices> goes with its only device.
        text = text[: empty_devices.start()] + text[empty_devices.end() :]
    assert grown.with_device_removed(NEW) == text
    for address in existing:
        removed = domain.with_device_removed(address)
        inserted(removed, text)  # a pure deletion
        left = [d.address for d in parse_domain_xml(removed, "g.xml").devices()]
        assert left == [a for a in existing if a != address]


_XML_ALPHABET = "<>/='\" \n\tabcdehilmnopstuvx0123456789!-?&;[]"


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.binary(max_size=200), st.text(_XML_ALPHABET, max_size=120).map(str.encode))
)
def test_arbitrary_input_gives_a_result_or_a_usage_error(text: bytes) -> None:
    try:
        domain = parse_domain_xml(text, "fuzz.xml")
        added = domain.with_device_added(NEW)
    except UsageError:
        return
    assert str(NEW) in addresses(parse_domain_xml(added, "fuzz.xml"))
    if re.search(rb"<devices\s*/>|<devices>\s*</devices>", text):
        return  # the documented exception: an empty <devices> does not come back
    inserted(text, added)
    assert parse_domain_xml(added, "fuzz.xml").with_device_removed(NEW) == text


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(XML_SAMPLES),
    position=st.floats(0, 1, exclude_max=True),
    replacement=st.sampled_from([b"", b"<", b">", b"/", b"'", b'"', b"=", b"\n", b"x", b"&"]),
)
def test_perturbed_samples_give_a_result_or_a_usage_error(
    name: str, position: float, replacement: bytes
) -> None:
    data = (DATA / name).read_bytes()
    at = int(position * len(data))
    text = data[:at] + replacement + data[at + 1 :]
    try:
        domain = parse_domain_xml(text, name)
        added = domain.with_device_added(NEW)
    except UsageError:
        return
    assert str(NEW) in addresses(parse_domain_xml(added, name))
    if re.search(rb"<devices\s*/>|<devices>\s*</devices>", text):
        return  # the documented exception: an empty <devices> does not come back
    inserted(text, added)
    assert parse_domain_xml(added, name).with_device_removed(NEW) == text
