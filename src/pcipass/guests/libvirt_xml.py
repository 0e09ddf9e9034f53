"""libvirt domain XML: read the guest's PCI host devices, add or remove one in place.

Reading uses :mod:`xml.etree.ElementTree` (expat).  defusedxml is not
available, so documents with a ``<!DOCTYPE`` or ``<!ENTITY`` are refused
before parsing: libvirt never writes them and they are how entity expansion
attacks get in.  Only UTF-8 is accepted (libvirt writes nothing else).

Editing never re-serialises the tree (ElementTree would drop comments,
reorder namespaces and requote attributes).  A small scanner finds the byte
offsets of the elements that matter (``<devices>``, each ``<hostdev>``,
``</domain>``) and the edit inserts or cuts exactly one element, with its
own line when it has one.  The inserted element follows formatdomain's PCI
host device form (libvirt.org/formatdomain.html#host-device-assignment)::

    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source>
        <address domain='0x0000' bus='0x09' slot='0x00' function='0x0'/>
      </source>
    </hostdev>

indented like its siblings, with the document's attribute quote and line
ends.  Inserting then removing a device gives the original bytes back, with
one exception: a ``<devices>`` element left empty by a removal goes too (so
the ``<devices>`` pcipass creates in a domain without one is removed again,
while an empty ``<devices/>`` the file had before does not come back;
libvirt reads both the same).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping

from pcipass.address import PciAddress
from pcipass.compat import zip_equal
from pcipass.errors import AddressError, ConfigSyntaxError, UsageError
from pcipass.guests.guest_os import os_from_kernel_path, os_from_libosinfo_id
from pcipass.guests.model import AssignedDevice, GuestKind, GuestOs, VirtMode
from pcipass.patterns import lazy, lazy_bytes
from pcipass.record import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

# <domain><os><type>: hvm is full virtualisation for every hypervisor;
# "linux" and "xen" are Xen PV, "xenpvh" Xen PVH (formatdomain, "BIOS
# bootloader" / "Host bootloader" sections).
_OS_TYPES = {
    "hvm": VirtMode.HVM,
    "linux": VirtMode.PV,
    "xen": VirtMode.PV,
    "xenpv": VirtMode.PV,
    "xenpvh": VirtMode.PVH,
}
# formatdomain: <driver name='vfio'> (KVM, the default), 'xen' (libxl),
# 'kvm' (legacy device assignment, removed from QEMU).
DRIVERS = frozenset({"vfio", "xen", "kvm"})
_YES_NO = frozenset({"yes", "no"})
_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY")
_ENCODING = lazy_bytes(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_NUMBER = lazy(r"^(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<oct>0[0-7]*)|(?P<dec>[1-9][0-9]*))$")

# Markup in a well-formed document (ElementTree has already checked it):
# every '<' starts a comment, CDATA section, processing instruction or tag,
# and attribute values may hold '>'.
_MARKUP = lazy_bytes(
    rb"""
    <!--.*?-->
  | <!\[CDATA\[.*?\]\]>
  | <\?.*?\?>
  | <(?P<close>/)?(?P<name>[^\s/>]+)(?:[^>"']|"[^"]*"|'[^']*')*?(?P<empty>/)?>
    """,
    re.S | re.X,
)
_NEWLINE = lazy_bytes(rb"\r\n|\n|\r")


@dataclass
class _Span:
    """Where an element's bytes are: ``start`` of ``<name``, ``open_end``
    after its start tag, ``close_start`` at ``</name>``, ``end`` after it
    (for ``<name/>`` the three last are the same)."""

    name: str
    start: int
    open_end: int
    close_start: int
    end: int
    children: list[_Span]

    @property
    def empty(self) -> bool:
        return self.open_end == self.end


@dataclass(frozen=True)
class _Style:
    quote: str
    newline: bytes


class LibvirtDomain:
    """A parsed ``<domain>``; satisfies :class:`pcipass.guests.model.GuestConfig`."""

    kind = GuestKind.LIBVIRT

    def __init__(self, data: bytes, display: str, root: ET.Element, layout: _Span) -> None:
        self.data = data
        self._display = display
        self._root = root
        self._layout = layout
        self._notes: list[str] = []
        devices = root.findall("devices")
        if len(devices) > 1:
            raise ConfigSyntaxError(display, "more than one <devices> element")
        self._devices_element = devices[0] if devices else None
        self._devices_span = _child(layout, "devices")
        if (self._devices_element is None) != (self._devices_span is None):
            raise ConfigSyntaxError(display, "<devices> is in another XML namespace")
        self._hostdevs = self._read_hostdevs()

    @property
    def uefi_firmware(self) -> bool:
        """The guest boots UEFI (OVMF): ``<os firmware='efi'>`` or a ``<loader>``
        naming OVMF/AAVMF (formatdomain "BIOS bootloader")."""
        os_element = self._root.find("os")
        if os_element is None:
            return False
        if os_element.get("firmware") == "efi":
            return True
        loader = os_element.find("loader")
        text = (loader.text or "") if loader is not None else ""
        return "OVMF" in text.upper() or "AAVMF" in text.upper() or "edk2" in text

    # -- the GuestConfig view ---------------------------------------------

    @property
    def display(self) -> str:
        return self._display

    @property
    def name(self) -> str:
        return (self._root.findtext("name") or "").strip()

    @property
    def uuid(self) -> str | None:
        text = self._root.findtext("uuid")
        return text.strip() if text else None

    @property
    def hypervisor(self) -> str:
        """The domain type: ``kvm``, ``qemu``, ``xen``..."""
        return self._root.get("type", "")

    @property
    def virt_mode(self) -> VirtMode:
        os_type = (self._root.findtext("os/type") or "").strip()
        return _OS_TYPES.get(os_type, VirtMode.UNKNOWN)

    @property
    def os(self) -> GuestOs:
        entry = self._root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
        if entry is not None and entry.get("id"):
            return os_from_libosinfo_id(entry.get("id", ""))
        kernel = (self._root.findtext("os/kernel") or "").strip()
        if kernel:
            return os_from_kernel_path(kernel)
        return GuestOs.unknown(f"no libosinfo metadata in {self._display}")

    @property
    def passthrough_enabled(self) -> bool | None:
        """``<features><xen><passthrough state='on|off'>`` (libxl only)."""
        element = self._root.find("features/xen/passthrough")
        if element is None:
            return None
        state = element.get("state")
        return True if state == "on" else False if state == "off" else None

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._notes)

    @property
    def devices_unknown(self) -> str | None:
        """A domain XML is data: every device it holds is in <hostdev>."""
        return None

    def devices(self) -> list[AssignedDevice]:
        return [device for device, _ in self._hostdevs]

    # -- edits -----------------------------------------------------------

    def with_device_added(
        self, address: PciAddress, options: Mapping[str, str] | None = None
    ) -> bytes:
        """The document with a ``<hostdev>`` for ``address`` in ``<devices>``.

        ``options``: ``driver`` (vfio|xen|kvm; default xen for Xen domains,
        vfio otherwise) and ``managed`` (yes|no; default no, because pcipass
        hides the device from the host itself).  Unchanged if the device is
        already there with those options.
        """
        driver, managed = self._options(options or {})
        rom = _rom_option(options or {})
        for device, span in self._hostdevs:
            if not device.covers(address):
                continue
            same = device.option("driver") == driver and device.option("managed") == (
                "yes" if managed else "no"
            )
            if span is not None and (not options or same):
                return self.data
            raise UsageError(
                f"{self._display}:{device.line}",
                f"{address} is already assigned here ({device.spec_text})",
                "detach it first, or edit the element by hand",
            )
        style = self._style()
        devices = self._devices_span
        if devices is None:
            return self._insert_devices(address, driver, managed, style, rom)
        if devices.empty:
            inner = hostdev_xml(address, driver, managed, quote=style.quote, rom=rom)
            return (
                self.data[: devices.start]
                + f"<devices>{inner}</devices>".encode()
                + self.data[devices.end :]
            )
        close = devices.close_start
        line_start = _line_start(self.data, close)
        if self.data[line_start:close].strip(b" \t"):
            inner = hostdev_xml(address, driver, managed, quote=style.quote, rom=rom)
            return self.data[:close] + inner.encode() + self.data[close:]
        indent = self._child_indent(devices)
        unit = _unit(indent, self.data[line_start:close])
        block = _hostdev_lines(
            address, driver, managed, indent=indent, unit=unit, style=style, rom=rom
        )
        return self.data[:line_start] + block + self.data[line_start:]

    def with_device_removed(self, address: PciAddress) -> bytes:
        """The document without the ``<hostdev>`` of ``address`` (unchanged if none).

        The element goes with its own line when it has one; a ``<devices>``
        left with nothing in it goes too.
        """
        for device, span in self._hostdevs:
            if not device.covers(address):
                continue
            if span is None:
                raise UsageError(
                    f"{self._display}:{device.line}",
                    f"{address} is assigned as an <interface type='hostdev'>",
                    "pcipass removes <hostdev> elements only; edit this one by hand",
                )
            devices = self._devices_span
            assert devices is not None
            if self._only_content(devices, span):
                return _cut(self.data, devices.start, devices.end)
            return _cut(self.data, span.start, span.end)
        return self.data

    # -- helpers ---------------------------------------------------------

    def _read_hostdevs(self) -> list[tuple[AssignedDevice, _Span | None]]:
        element = self._devices_element
        span = self._devices_span
        if element is None or span is None:
            return []
        hostdev_spans = [c for c in span.children if c.name == "hostdev"]
        hostdev_elements = element.findall("hostdev")
        if len(hostdev_spans) != len(hostdev_elements):
            raise ConfigSyntaxError(self._display, "could not locate every <hostdev> element")
        result: list[tuple[AssignedDevice, _Span | None]] = []
        for hostdev, hostdev_span in zip_equal(hostdev_elements, hostdev_spans):
            if hostdev.get("mode", "subsystem") != "subsystem" or hostdev.get("type") != "pci":
                continue
            line = _line_of(self.data, hostdev_span.start)
            device = self._device(hostdev, "hostdev", line)
            result.append((device, hostdev_span))
        # SR-IOV VFs given as network interfaces claim a host device as well.
        interface_spans = [c for c in span.children if c.name == "interface"]
        interface_elements = element.findall("interface")
        if len(interface_spans) != len(interface_elements):
            raise ConfigSyntaxError(self._display, "could not locate every <interface> element")
        for interface, interface_span in zip_equal(interface_elements, interface_spans):
            if interface.get("type") != "hostdev":
                continue
            line = _line_of(self.data, interface_span.start)
            result.append((self._device(interface, "interface", line), None))
        return result

    def _device(self, element: ET.Element, tag: str, line: int) -> AssignedDevice:
        source = element.find("source/address")
        if source is None:
            raise ConfigSyntaxError(self._display, f"<{tag}> without <source><address>", line)
        if source.get("type", "pci") != "pci":
            raise ConfigSyntaxError(self._display, f"<{tag}> source is not a PCI address", line)
        address = self._address(source, line)
        options: list[tuple[str, str]] = [("managed", element.get("managed", "no"))]
        driver = element.find("driver")
        if driver is not None and driver.get("name"):
            options.append(("driver", driver.get("name", "")))
        alias = element.find("alias")
        text = f"<{tag} type='{element.get('type', '')}'> {address}"
        return AssignedDevice(
            address=address,
            spec_text=text,
            options=tuple(options),
            name=alias.get("name") if alias is not None else None,
            line=line,
        )

    def _address(self, source: ET.Element, line: int) -> PciAddress:
        parts: list[int] = []
        for attribute in ("domain", "bus", "slot", "function"):
            text = source.get(attribute)
            if text is None and attribute == "domain":
                text = "0"
            number = _number(text)
            if number is None:
                raise ConfigSyntaxError(
                    self._display,
                    f"PCI source address {attribute}={text!r} is not a number",
                    line,
                )
            parts.append(number)
        try:
            return PciAddress(*parts)
        except AddressError as error:
            raise ConfigSyntaxError(
                self._display, f"PCI source address: {error.problem}", line
            ) from error

    def _options(self, options: Mapping[str, str]) -> tuple[str, bool]:
        unknown = set(options) - {"driver", "managed", *ROM_OPTIONS}
        if unknown:
            raise UsageError(
                f"hostdev options {sorted(unknown)}",
                "libvirt hostdevs take driver, managed, rom_file and rom_bar",
            )
        driver = options.get("driver") or ("xen" if self.hypervisor == "xen" else "vfio")
        if driver not in DRIVERS:
            raise UsageError(f"driver {driver!r}", f"must be one of {', '.join(sorted(DRIVERS))}")
        managed = options.get("managed", "no")
        if managed not in _YES_NO:
            raise UsageError(f"managed {managed!r}", "must be yes or no")
        return driver, managed == "yes"

    def _style(self) -> _Style:
        single = len(re.findall(rb"=\s*'", self.data))
        double = len(re.findall(rb'=\s*"', self.data))
        crlf = self.data.count(b"\r\n")
        newline = b"\r\n" if crlf and crlf * 2 >= self.data.count(b"\n") else b"\n"
        return _Style('"' if double > single else "'", newline)

    def _child_indent(self, parent: _Span) -> bytes:
        """The indentation of the parent's first child on its own line."""
        for child in parent.children:
            line_start = _line_start(self.data, child.start)
            before = self.data[line_start : child.start]
            if line_start >= parent.open_end and not before.strip(b" \t"):
                return before
        own = self.data[_line_start(self.data, parent.start) : parent.start]
        base = own if not own.strip(b" \t") else b""
        return base + b"  "

    def _only_content(self, devices: _Span, hostdev: _Span) -> bool:
        """Is ``hostdev`` all that ``devices`` holds (besides blanks)?  Then
        removing it removes both."""
        if devices.children != [hostdev]:
            return False
        rest = (
            self.data[devices.open_end : hostdev.start]
            + self.data[hostdev.end : devices.close_start]
        )
        return not rest.strip()

    def _insert_devices(
        self, address: PciAddress, driver: str, managed: bool, style: _Style, rom: RomSetting
    ) -> bytes:
        root = self._layout
        if root.empty:
            raise ConfigSyntaxError(self._display, "<domain/> is empty")
        close = root.close_start
        line_start = _line_start(self.data, close)
        if self.data[line_start:close].strip(b" \t"):
            inner = hostdev_xml(address, driver, managed, quote=style.quote, rom=rom)
            return self.data[:close] + f"<devices>{inner}</devices>".encode() + self.data[close:]
        indent = self._child_indent(root)
        unit = _unit(indent, self.data[line_start:close])
        block = (
            indent
            + b"<devices>"
            + style.newline
            + _hostdev_lines(
                address, driver, managed, indent=indent + unit, unit=unit, style=style, rom=rom
            )
            + indent
            + b"</devices>"
            + style.newline
        )
        return self.data[:line_start] + block + self.data[line_start:]


# --------------------------------------------------------------------------
# Public functions


def parse_domain_xml(data: bytes, display: str) -> LibvirtDomain:
    """Parse a libvirt ``<domain>`` document.

    Raises :class:`ConfigSyntaxError` for DTDs/entities, non-UTF-8 text,
    malformed XML, another root element or an unreadable PCI hostdev.
    """
    for marker in _FORBIDDEN:
        if marker in data:
            line = data[: data.index(marker)].count(b"\n") + 1
            raise ConfigSyntaxError(
                display, f"{marker.decode()} is not allowed (libvirt never writes one)", line
            )
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    declared = _ENCODING.match(body)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise ConfigSyntaxError(display, "only UTF-8 documents are read", 1)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigSyntaxError(
            display, "not UTF-8 text", body[: error.start].count(b"\n") + 1
        ) from error
    import xml.etree.ElementTree as ET  # imported where used: start-up cost (issue #13)

    try:
        # Safe without defusedxml: DTDs and entities were refused above, and
        # expat never fetches external resources.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as error:
        line = error.position[0] if error.position else None
        raise ConfigSyntaxError(display, f"not well-formed XML: {error.msg}", line) from error
    except (ValueError, LookupError, RecursionError) as error:
        raise ConfigSyntaxError(display, f"not well-formed XML: {error}") from error
    if root.tag != "domain":
        raise ConfigSyntaxError(display, f"root element is <{root.tag}>, not a libvirt <domain>")
    layout = _scan(data, display)
    return LibvirtDomain(data, display, root, layout)


def hostdev_xml(
    address: PciAddress,
    driver: str | None = "vfio",
    managed: bool = False,
    *,
    quote: str = "'",
    rom: RomSetting = None,
) -> str:
    """One ``<hostdev>`` element on a single line, for ``virsh attach-device``
    or ``virDomainAttachDeviceFlags`` (live attach)."""
    if driver is not None and driver not in DRIVERS:
        raise UsageError(f"driver {driver!r}", f"must be one of {', '.join(sorted(DRIVERS))}")
    q = quote
    parts = [
        _open_tag(managed, q),
        f"<driver name={q}{driver}{q}/>" if driver else "",
        "<source>",
        _address_element(address, q),
        "</source>",
        _rom_element(rom, q),
        "</hostdev>",
    ]
    return "".join(parts)


# attach --rom FILE / --rom-bar off (formatdomain "PCI devices": <rom bar='on|off'
# file='...'/> inside <hostdev>: the guest sees FILE as the device's ROM BAR
# content, or no ROM BAR at all with bar='off').
ROM_OPTIONS = ("rom_file", "rom_bar")
if TYPE_CHECKING:
    from typing import Optional

    RomSetting = Optional[tuple[Optional[str], Optional[str]]]  # (file, bar); None: no <rom>


def _rom_option(options: Mapping[str, str]) -> RomSetting:
    file, bar = options.get("rom_file"), options.get("rom_bar")
    if bar is not None and bar not in ("on", "off"):
        raise UsageError(f"rom bar {bar!r}", "must be on or off")
    if file is not None and (not file.startswith("/") or "\x00" in file):
        raise UsageError(f"rom file {file!r}", "must be an absolute path")
    return None if file is None and bar is None else (file, bar)


def _rom_element(rom: RomSetting, q: str) -> str:
    if rom is None:
        return ""
    file, bar = rom
    attributes = f" bar={q}{bar}{q}" if bar is not None else ""
    if file is not None:
        escaped = file.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        escaped = escaped.replace(q, "&apos;" if q == "'" else "&quot;")
        attributes += f" file={q}{escaped}{q}"
    return f"<rom{attributes}/>"


# --------------------------------------------------------------------------
# Helpers


def _open_tag(managed: bool, q: str) -> str:
    flag = "yes" if managed else "no"
    return f"<hostdev mode={q}subsystem{q} type={q}pci{q} managed={q}{flag}{q}>"


def _address_element(address: PciAddress, q: str) -> str:
    return (
        f"<address domain={q}0x{address.domain:04x}{q} bus={q}0x{address.bus:02x}{q} "
        f"slot={q}0x{address.slot:02x}{q} function={q}0x{address.function:x}{q}/>"
    )


def _hostdev_lines(
    address: PciAddress,
    driver: str,
    managed: bool,
    *,
    indent: bytes,
    unit: bytes,
    style: _Style,
    rom: RomSetting = None,
) -> bytes:
    q = style.quote
    lines = [
        (0, _open_tag(managed, q)),
        (1, f"<driver name={q}{driver}{q}/>"),
        (1, "<source>"),
        (2, _address_element(address, q)),
        (1, "</source>"),
        *([(1, _rom_element(rom, q))] if rom is not None else []),
        (0, "</hostdev>"),
    ]
    return b"".join(indent + unit * depth + text.encode() + style.newline for depth, text in lines)


def _scan(data: bytes, display: str) -> _Span:
    """Element spans of a well-formed document, root first."""
    stack: list[_Span] = []
    root: _Span | None = None
    for match in _MARKUP.finditer(data):
        name = match.group("name")
        if name is None:
            continue  # comment, CDATA, processing instruction
        text = name.decode("utf-8")
        if match.group("close"):
            if not stack or stack[-1].name != text:
                raise ConfigSyntaxError(display, f"unbalanced </{text}>")
            span = stack.pop()
            span.close_start, span.end = match.start(), match.end()
            continue
        span = _Span(text, match.start(), match.end(), match.end(), match.end(), [])
        if stack:
            stack[-1].children.append(span)
        elif root is None:
            root = span
        if not match.group("empty"):
            stack.append(span)
    if root is None or stack:
        raise ConfigSyntaxError(display, "could not find the element structure")
    return root


def _child(parent: _Span, name: str) -> _Span | None:
    return next((c for c in parent.children if c.name == name), None)


def _number(text: str | None) -> int | None:
    """An address attribute as libvirt reads it (strtoul, base 0)."""
    if text is None:
        return None
    match = _NUMBER.match(text.strip())
    if match is None:
        return None
    if match.group("hex"):
        return int(match.group("hex"), 16)
    if match.group("oct"):
        return int(match.group("oct"), 8)
    return int(match.group("dec"), 10)


def _line_of(data: bytes, offset: int) -> int:
    return len(_NEWLINE.findall(data, 0, offset)) + 1


def _line_start(data: bytes, offset: int) -> int:
    return max(data.rfind(b"\n", 0, offset), data.rfind(b"\r", 0, offset)) + 1


def _line_end(data: bytes, offset: int) -> tuple[int, int]:
    match = _NEWLINE.search(data, offset)
    if match is None:
        return len(data), len(data)
    return match.start(), match.end()


def _own_lines(data: bytes, start: int, end: int) -> bool:
    line_start = _line_start(data, start)
    line_end, _ = _line_end(data, end)
    return not data[line_start:start].strip(b" \t") and not data[end:line_end].strip(b" \t")


def _cut(data: bytes, start: int, end: int) -> bytes:
    """Remove data[start:end], with its whole line(s) when it has them alone."""
    if _own_lines(data, start, end):
        line_end, next_line = _line_end(data, end)
        if next_line > line_end:
            return data[: _line_start(data, start)] + data[next_line:]
    return data[:start] + data[end:]


def _unit(child_indent: bytes, parent_indent: bytes) -> bytes:
    """One indentation step, from a child's indent and its parent's."""
    if child_indent.startswith(parent_indent) and len(child_indent) > len(parent_indent):
        return child_indent[len(parent_indent) :]
    return b"\t" if child_indent.startswith(b"\t") else b"  "
