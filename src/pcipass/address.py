"""PciAddress: the one parser that turns user text into a PCI address.

Nothing else in pcipass turns text into an address, and nothing builds a
filesystem path from text that did not come out of here.  The forms accepted:

* ``0000:09:00.0`` (domain:bus:device.function, the sysfs name) and ``09:00.0``
  (domain 0), either case;
* the RHEL 5 document's pciback list ``(0000:09:00.0)(0000:0a:04.1)``
  (:func:`parse_hide_list`);
* xl's PCI_SPEC_STRING (xl-pci-configuration(5)):
  ``[DDDD:]BB:DD.F[@VSLOT][,key=value...]`` where F may be ``*`` for every
  function, and ``bdf=``/``vslot=`` may be given as keys (:func:`parse_xl_spec`).

Ranges follow the PCI Local Bus spec 3.0 §6.2 / PCIe 4.0 §7.2: 8-bit bus,
5-bit device, 3-bit function; the segment (domain) is 16 bits on Linux.
"""

from __future__ import annotations

import functools
import re

from pcipass.errors import AddressError
from pcipass.record import dataclass, field

_BDF = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,4}):)?"
    r"(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-9a-fA-F*]+)$"
)


@dataclass(frozen=True, order=True)
class PciAddress:
    """One PCI function.  Formats as the kernel names it: ``0000:09:00.0``."""

    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        if not 0 <= self.domain <= 0xFFFF:
            raise AddressError(str(self.domain), "domain out of range 0..ffff")
        if not 0 <= self.bus <= 0xFF:
            raise AddressError(str(self.bus), "bus out of range 0..ff")
        if not 0 <= self.slot <= 0x1F:
            raise AddressError(str(self.slot), "device out of range 0..1f")
        if not 0 <= self.function <= 7:
            raise AddressError(str(self.function), "function out of range 0..7")

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse one address; wildcards are refused here (see :func:`parse_xl_spec`)."""
        pattern = _parse_pattern(text)
        if pattern.function is None:
            raise AddressError(text, "a function wildcard '*' is not allowed here")
        return PciAddress(pattern.domain, pattern.bus, pattern.slot, pattern.function)

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        # Cached: list formats each address several times (paths, JSON, keys).
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def short(self) -> str:
        """``09:00.0`` form (lspci's default), domain dropped."""
        return f"{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def slot_key(self) -> tuple[int, int, int]:
        """The physical slot (all functions of one card share it)."""
        return (self.domain, self.bus, self.slot)

    def with_function(self, function: int) -> PciAddress:
        return PciAddress(self.domain, self.bus, self.slot, function)


@dataclass(frozen=True)
class AddressPattern:
    """An address whose function may be a wildcard (``function is None``)."""

    domain: int
    bus: int
    slot: int
    function: int | None

    def matches(self, address: PciAddress) -> bool:
        return address.slot_key == (self.domain, self.bus, self.slot) and (
            self.function is None or self.function == address.function
        )

    def __str__(self) -> str:
        fn = "*" if self.function is None else f"{self.function:x}"
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{fn}"


def _parse_pattern(text: str) -> AddressPattern:
    if not isinstance(text, str):
        raise AddressError(repr(text), "not text")
    stripped = text.strip()
    if not stripped:
        raise AddressError(text, "empty")
    if len(stripped) > 64:
        raise AddressError(stripped[:64] + "...", "far too long for a PCI address")
    match = _BDF.match(stripped)
    if match is None:
        raise AddressError(text, _explain(stripped))
    fn_text = match.group("function")
    if fn_text == "*":
        function: int | None = None
    elif len(fn_text) == 1 and fn_text in "01234567":
        function = int(fn_text)
    else:
        raise AddressError(text, f"function {fn_text!r} must be 0..7 (or * for all)")
    domain = int(match.group("domain") or "0", 16)
    bus = int(match.group("bus"), 16)
    slot = int(match.group("slot"), 16)
    if slot > 0x1F:
        raise AddressError(text, f"device {slot:#x} is above 0x1f (a bus has 32 devices)")
    return AddressPattern(domain, bus, slot, function)


def _explain(text: str) -> str:
    """Say what is wrong with text that does not look like an address."""
    bad = sorted({c for c in text if c not in "0123456789abcdefABCDEF:.*"})
    if bad:
        shown = "".join(bad[:5])
        return f"unexpected character(s) {shown!r}"
    if text.count(":") > 2:
        return "too many ':' separators"
    if "." not in text:
        return "missing '.function'"
    head, _, _ = text.rpartition(".")
    parts = head.split(":")
    if len(parts) == 3 and len(parts[0]) > 4:
        return "domain has more than 4 hex digits"
    if any(len(p) > 2 for p in parts[-2:]):
        return "bus and device are at most 2 hex digits each"
    return "not in the form [DDDD:]BB:DD.F"


def parse_hide_list(text: str) -> list[PciAddress]:
    """Parse pciback's ``hide=`` value: ``(0000:09:00.0)(0000:0a:04.1)``.

    xen-pciback also accepts a bare address without parentheses on some
    kernels; we accept ``(a)(b)``, optional whitespace between groups, and a
    single bare address.  An empty string is an empty list.
    """
    stripped = text.strip()
    if not stripped:
        return []
    if "(" not in stripped and ")" not in stripped:
        return [PciAddress.parse(stripped)]
    result: list[PciAddress] = []
    position = 0
    for match in re.finditer(r"\s*\(([^()]*)\)\s*", stripped):
        if match.start() != position:
            raise AddressError(text, f"unexpected text {stripped[position : match.start()]!r}")
        result.append(PciAddress.parse(match.group(1)))
        position = match.end()
    if position != len(stripped):
        raise AddressError(
            text, f"unexpected text {stripped[position:]!r} (unbalanced parentheses?)"
        )
    return result


def format_hide_list(addresses: list[PciAddress]) -> str:
    """The document's form: ``(0000:09:00.0)(0000:0a:04.1)``, in the order given."""
    return "".join(f"({a})" for a in addresses)


# Keys xl-pci-configuration(5) defines for a PCI_SPEC_STRING.  ``bdf`` and
# ``vslot`` are the positional ones.
XL_SPEC_KEYS = frozenset(
    {"bdf", "vslot", "permissive", "msitranslate", "seize", "power_mgmt", "rdm_policy", "name"}
)
_XL_BOOL_KEYS = frozenset({"permissive", "msitranslate", "seize", "power_mgmt"})


@dataclass(frozen=True)
class XlPciSpec:
    """A parsed xl PCI_SPEC_STRING.

    ``address`` is None only when the device is named (``name=``) instead of
    by BDF.  ``options`` keeps every key other than bdf/vslot, in the order
    written, values as text, so a spec can be re-emitted unchanged.
    """

    address: AddressPattern | None
    vslot: int | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    def option(self, key: str) -> str | None:
        for k, v in self.options:
            if k == key:
                return v
        return None

    def format(self) -> str:
        parts: list[str] = []
        if self.address is not None:
            head = str(self.address)
            if self.vslot is not None:
                head += f"@{self.vslot:x}"
            parts.append(head)
        elif self.vslot is not None:
            parts.append(f"vslot={self.vslot:x}")
        parts.extend(f"{k}={v}" for k, v in self.options)
        return ",".join(parts)


def parse_xl_spec(text: str) -> XlPciSpec:
    """Parse xl's ``[DDDD:]BB:DD.F[@VSLOT][,key=value...]``.

    Unknown keys are refused (xl itself refuses them), booleans must be 0/1,
    ``rdm_policy`` is strict|relaxed, and vslot is hexadecimal as in xl.
    """
    if not isinstance(text, str) or not text.strip():
        raise AddressError(str(text), "empty PCI spec")
    pieces = [p.strip() for p in text.strip().split(",")]
    address: AddressPattern | None = None
    vslot: int | None = None
    options: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, piece in enumerate(pieces):
        if not piece:
            raise AddressError(text, "empty element between commas")
        if "=" in piece:
            key, _, value = piece.partition("=")
            key, value = key.strip(), value.strip()
        elif index == 0:
            key, value = "bdf", piece
        elif index == 1 and address is not None and vslot is None:
            key, value = "vslot", piece
        else:
            raise AddressError(text, f"element {piece!r} is not key=value")
        if key not in XL_SPEC_KEYS:
            known = ", ".join(sorted(XL_SPEC_KEYS))
            raise AddressError(text, f"unknown key {key!r} (xl knows {known})")
        if key in seen:
            raise AddressError(text, f"key {key!r} given twice")
        seen.add(key)
        if key == "bdf":
            head, at, slot_text = value.partition("@")
            address = _parse_pattern(head)
            if at:
                if "vslot" in seen:
                    raise AddressError(text, "vslot given twice")
                vslot = _parse_vslot(text, slot_text)
                seen.add("vslot")
        elif key == "vslot":
            vslot = _parse_vslot(text, value)
        else:
            if key in _XL_BOOL_KEYS and value not in ("0", "1"):
                raise AddressError(text, f"{key} must be 0 or 1, not {value!r}")
            if key == "rdm_policy" and value not in ("strict", "relaxed"):
                raise AddressError(text, f"rdm_policy must be strict or relaxed, not {value!r}")
            if key == "name" and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
                raise AddressError(text, f"name {value!r} must be letters, digits, _ . -")
            options.append((key, value))
    if address is None and "name" not in seen:
        raise AddressError(text, "no device address (bdf) or name given")
    if address is not None and "name" in seen:
        raise AddressError(text, "bdf and name exclude each other")
    return XlPciSpec(address, vslot, tuple(options))


def _parse_vslot(spec: str, text: str) -> int:
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]{1,2}", text):
        raise AddressError(spec, f"vslot {text!r} must be a hex number 0..1f")
    value = int(text, 16)
    if value > 0x1F:
        raise AddressError(spec, f"vslot {text!r} is above 0x1f")
    return value
