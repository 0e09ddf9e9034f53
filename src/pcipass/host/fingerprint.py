"""A device's fingerprint: what a pinned name (``pcipass pin``) remembers.

An address (BDF) is where a card sits *this boot*: adding a card or a
firmware update renumbers the buses, and a move to another root port changes
it outright.  A fingerprint keeps what survives that: the ids (PCI 3.0 §6.2.1
vendor/device/class/revision, §6.2.4 subsystem ids), a serial number when the
card has one (the PCIe Device Serial Number extended capability, PCIe 4.0
§7.9.3, or the ``SN`` keyword of its Vital Product Data, PCI 3.0 Appendix I),
the slot name the firmware gives (``/sys/bus/pci/slots``), and the physical
path: the device/function numbers of every hop from the root bus down, which
stay the same when bus *numbers* change.  policy/pin_match.py decides what a
fingerprint matches.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host.config_space import format_dsn
from pcipass.host.context import Host
from pcipass.host.device import PciDevice
from pcipass.host.topology import read_config

# VPD is read through sysfs's ``vpd`` attribute; real VPD is at most 32 KiB
# (PCI 3.0 §6.4: a 15-bit address), so more is not asked for.
_VPD_LIMIT = 32768
_TAG_VPD_R = 0x90  # large resource, item name 0x10: read-only data (PCI 3.0 Appendix I.3.1)
_TAG_END = 0x78  # small resource, item name 0xF, length 0: the end tag


def vpd_serial(data: bytes) -> str | None:
    """The ``SN`` keyword of the VPD read-only resource, or None.

    Layout (PCI 3.0 Appendix I): resources one after the other; a large one is
    a tag byte with bit 7 set and a 16-bit little-endian length, a small one
    has bits 2:0 for its length.  VPD-R holds keywords: two ASCII letters, a
    length byte, the value.  Anything malformed ends the walk: a device's VPD
    is untrusted input and no serial is better than a wrong one."""
    at = 0
    while at < len(data):
        tag = data[at]
        if tag == _TAG_END:
            return None
        if tag & 0x80 == 0:  # small resource
            at += 1 + (tag & 0x07)
            continue
        if at + 3 > len(data):
            return None
        length = data[at + 1] | data[at + 2] << 8
        body = data[at + 3 : at + 3 + length]
        if len(body) < length:
            return None
        if tag == _TAG_VPD_R:
            return _keyword(body, b"SN")
        at += 3 + length
    return None


def _keyword(body: bytes, wanted: bytes) -> str | None:
    at = 0
    while at + 3 <= len(body):
        key, size = body[at : at + 2], body[at + 2]
        value = body[at + 3 : at + 3 + size]
        if key == wanted:
            text = value.decode("ascii", "replace").strip(" \x00")
            printable = text.isprintable() and bool(text)
            return text if printable else None
        at += 3 + size
    return None


def physical_path(sysfs_path: str) -> str:
    """``/sys/devices/pci0000:00/0000:00:1c.0/0000:09:00.0`` -> ``pci0000:00/1c.0/00.0``.

    The root bus, then ``slot.function`` of each hop below it: a renumbered
    bus keeps this path, a card moved to another root port changes it."""
    parts = [p for p in sysfs_path.split("/") if p]
    hops: list[str] = []
    root = ""
    for part in parts:
        if part.startswith("pci") and not root:
            root = part
            continue
        if not root:
            continue
        try:
            address = PciAddress.parse(part)
        except AddressError:
            continue
        hops.append(f"{address.slot:02x}.{address.function:x}")
    return "/".join([root or "?", *hops])


def fingerprint(host: Host, device: PciDevice) -> dict[str, str]:
    """Every identifying fact of ``device`` that can be read, as text.

    Keys: ``vendor``, ``device``, ``subsystem_vendor``, ``subsystem_device``,
    ``class``, ``revision`` (hex, ``?`` when unreadable), ``path``, and when
    known ``serial`` (``dsn:..`` or ``vpd:..``) and ``slot``."""

    def hx(value: int | None, width: int) -> str:
        return "?" if value is None else f"{value:0{width}x}"

    result = {
        "vendor": hx(device.vendor, 4),
        "device": hx(device.device, 4),
        "subsystem_vendor": hx(device.subsystem_vendor, 4),
        "subsystem_device": hx(device.subsystem_device, 4),
        "class": hx(device.class_code, 6),
        "revision": hx(device.revision, 2),
        "path": physical_path(device.sysfs_path),
    }
    serial = _serial(host, device)
    if serial is not None:
        result["serial"] = serial
    if device.physical_slot:
        result["slot"] = device.physical_slot
    return result


def _serial(host: Host, device: PciDevice) -> str | None:
    config = read_config(host, device.address)
    if config is not None and config.dsn is not None:
        return "dsn:" + format_dsn(config.dsn)
    vpd = host.sysfs.read_bytes(host.root.pci_device(device.address) / "vpd", _VPD_LIMIT)
    if vpd:
        serial = vpd_serial(vpd)
        if serial is not None:
            return "vpd:" + serial
    return None
