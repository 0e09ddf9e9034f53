"""xm and xl guest configuration files: read them as data, edit ``pci`` in place.

Two formats share ``/etc/xen``:

* **xm** (RHEL 5, xend): ``/etc/xen/NAME`` is Python that xend *executes*.
  pcipass never executes it: the file is parsed with :mod:`ast` (parsing
  runs no code) and only top-level ``NAME = <literal>`` assignments are read,
  through :func:`ast.literal_eval`.  Other Python (``import os``, ``if``
  blocks, computed values, as in Xen's own ``xmexample.hvm``) is
  *tolerated* when it cannot change a setting pcipass reads (see
  ``WATCHED_KEYS``): it is reported in :attr:`XenConfig.notes` and left byte
  for byte.  Code that binds a watched name (``pci = base + extra``,
  ``if hvm: builder = 'hvm'``), or that can bind names invisibly (``exec``,
  ``globals()``, ``from x import *``), is refused with the line: pcipass
  would otherwise read a value xend never sees.
* **xl** (xl.cfg(5)): libxlu's own grammar, which this module follows
  (tools/libs/util/libxlu_cfg_l.l and libxlu_cfg_y.y): ``key = value`` or
  ``key += value`` (keys ``[a-z][_0-9a-z]*``), values are quoted strings
  (``'...'`` or ``"..."``, backslash escapes, one line), numbers
  (``[0-9][0-9a-fx]*``) or ``[ lists ]`` that may span lines; ``#``
  comments; statements end at a newline or ``;``.  Anything else is a
  syntax error, as it is for xl.  Two departures, both reported in
  ``notes`` because xl itself would reject the file: CRLF line ends and a
  comment on a last line without a newline.

Edits work on the original bytes: an entry is inserted into or removed from
the existing ``pci`` list and every other byte stays as it was (quote style,
spacing, comments, line ends).  Inserting then removing the same device
gives the original bytes back.  A missing ``pci`` is created at the end of
the file as ``pci = [ '0000:09:00.0' ]`` (xm) or ``pci = [ "0000:09:00.0" ]``
(xl), with the quote and ``=`` spacing the document already uses; removing
its last device removes that line again.
"""

from __future__ import annotations

import ast
import bisect
import codecs
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath

from pcipass.address import PciAddress, XlPciSpec, parse_xl_spec
from pcipass.errors import AddressError, ConfigSyntaxError, UsageError
from pcipass.guests.guest_os import os_from_kernel_path
from pcipass.guests.model import AssignedDevice, GuestKind, GuestOs, VirtMode

# Settings pcipass reads or edits; xm code that could change them is refused.
WATCHED_KEYS = frozenset(
    {
        "pci",
        "name",
        "builder",
        "type",
        "kernel",
        "bootloader",
        "pvh",
        "passthrough",
        "pci_permissive",
        "pci_msitranslate",
        "pci_power_mgmt",
    }
)

# Names through which xm code could bind settings without an assignment
# pcipass can see.
# Nodes that bind a name through `.name`; the match-statement ones exist from Python 3.10 only.
_NAME_BINDERS: tuple[type[ast.AST], ...] = tuple(
    node_type
    for node_type in (
        ast.ExceptHandler,
        getattr(ast, "MatchAs", None),
        getattr(ast, "MatchStar", None),
    )
    if node_type is not None
)
_MATCH_MAPPING: type[ast.AST] | None = getattr(ast, "MatchMapping", None)

_DYNAMIC_NAMES = frozenset(
    {
        "exec",
        "eval",
        "execfile",
        "compile",
        "globals",
        "locals",
        "vars",
        "setattr",
        "delattr",
        "__import__",
        "__builtins__",
        "__dict__",
        "__setattr__",
        "modules",
    }
)

# Keys only xl knows (xl.cfg(5)); xm (Xen 3.x xend) has none of them.
_XL_ONLY_KEYS = frozenset(
    {
        "type",
        "passthrough",
        "device_model_version",
        "device_model_override",
        "rdm",
        "max_grant_frames",
        "max_maptrack_frames",
        "gic_version",
        "pvh",
        "vnuma",
        "device_tree",
        "dm_restrict",
        "xen_platform_pci",
        "max_grant_version",
    }
)
_XL_ONLY_LINE = re.compile(
    rb"^[ \t]*(?:("
    + b"|".join(k.encode() for k in sorted(_XL_ONLY_KEYS))
    + rb")[ \t]*=|[a-z][_0-9a-z]*[ \t]*\+=)",
    re.M,
)

# xl.cfg(5) "passthrough": these values give the domain an IOMMU context, so a
# device can be attached live later (without one, xl says
# "xc_assign_device failed: Operation not supported").
_PASSTHROUGH_ON = frozenset({"enabled", "sync_pt", "share_pt"})
_PASSTHROUGH_VALUES = _PASSTHROUGH_ON | {"disabled", "default"}

# xend's check_pci_opts (Xen 3.4 tools/python/xen/util/pci.py) accepts only
# these per-device options, 0/1/yes/no.
_XM_PCI_OPTIONS = frozenset({"msitranslate", "power_mgmt"})

_PLAIN_STRING = re.compile(rb"""^(?:'[^'\\\r\n]*'|"[^"\\\r\n]*")$""")
_SPEC_SAFE = re.compile(r"^[A-Za-z0-9_.:,=@*-]+$")
_SCALAR_SAFE = re.compile(r"^[^'\"\\\x00-\x1f\x7f]*$")
_MAX_LIST_DEPTH = 16


class _Code:
    """Stands for an xm value that is Python code, not a literal."""

    def __repr__(self) -> str:
        return "<python code>"


CODE = _Code()


@dataclass(frozen=True)
class _Item:
    """One element of a list value: its bytes span and decoded value."""

    start: int
    end: int
    line: int
    value: object
    quote: str | None  # the quote of a plain string literal, else None


@dataclass(frozen=True)
class _Setting:
    key: str
    operator: str  # "=" or "+="
    line: int
    start: int  # offset of the key
    value_start: int
    value_end: int
    value: object  # decoded literal, or CODE
    items: tuple[_Item, ...] | None  # the elements when the value is a [list]
    quote: str | None  # quote of a plain string scalar


@dataclass(frozen=True)
class _Style:
    quote: str
    equals: str
    newline: bytes


class _Lines:
    """Line numbers for byte offsets (1-based, as editors and xl count)."""

    def __init__(self, data: bytes, newline: re.Pattern[bytes]) -> None:
        self._data = data
        self._newline = newline
        self.starts = [0] + [m.end() for m in newline.finditer(data)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def start_of(self, offset: int) -> int:
        return self.starts[self.line_of(offset) - 1]

    def end_of(self, offset: int) -> tuple[int, int]:
        """(where the line holding ``offset`` ends, where the next one starts)."""
        match = self._newline.search(self._data, offset)
        if match is None:
            return len(self._data), len(self._data)
        return match.start(), match.end()


_XL_NEWLINE = re.compile(rb"\r?\n")
_PY_NEWLINE = re.compile(rb"\r\n|\r|\n")


# --------------------------------------------------------------------------
# The parsed file


class XenConfig:
    """A parsed xm or xl guest configuration (see the module docstring).

    Satisfies :class:`pcipass.guests.model.GuestConfig`.  ``data`` is kept
    so the ``with_*`` methods can return edited copies of it.
    """

    hypervisor = "xen"

    def __init__(
        self,
        *,
        data: bytes,
        display: str,
        kind: GuestKind,
        settings: list[_Setting],
        lines: _Lines,
        notes: list[str],
    ) -> None:
        self.data = data
        self._display = display
        self._kind = kind
        self._settings = settings
        self._lines = lines
        self._notes = notes
        self._by_key: dict[str, _Setting] = {}
        for setting in settings:  # the last assignment wins, in xm and in xl
            self._by_key[setting.key] = setting
        self._check_single("pci")
        self._devices = self._read_devices()
        self._name = self._read_name()
        self._virt_mode = self._read_virt_mode()
        self._os = self._read_os()
        self._passthrough = self._read_passthrough()

    # -- the GuestConfig view ---------------------------------------------

    @property
    def kind(self) -> GuestKind:
        return self._kind

    @property
    def display(self) -> str:
        return self._display

    @property
    def name(self) -> str:
        return self._name

    @property
    def virt_mode(self) -> VirtMode:
        return self._virt_mode

    @property
    def os(self) -> GuestOs:
        return self._os

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._notes)

    @property
    def passthrough(self) -> str | None:
        """xl's ``passthrough=`` value as written (None when absent, or xm)."""
        return self._passthrough

    @property
    def passthrough_enabled(self) -> bool | None:
        """True for enabled/sync_pt/share_pt, False for disabled, None when
        absent or ``default`` (then xl enables it only if ``pci`` is not empty)."""
        if self._passthrough in _PASSTHROUGH_ON:
            return True
        if self._passthrough == "disabled":
            return False
        return None

    @property
    def passthrough_effective(self) -> bool:
        """Will the domain be built able to take a device (xl.cfg(5) default:
        yes exactly when the configuration lists PCI devices)?"""
        explicit = self.passthrough_enabled
        return explicit if explicit is not None else bool(self._devices)

    @property
    def pci_permissive(self) -> bool | None:
        """Global ``pci_permissive`` (the default for every device)."""
        return self._bool_setting("pci_permissive")

    @property
    def pci_msitranslate(self) -> bool | None:
        return self._bool_setting("pci_msitranslate")

    def devices(self) -> list[AssignedDevice]:
        return list(self._devices)

    def device_option(self, device: AssignedDevice, key: str) -> bool | None:
        """A per-device boolean (``permissive``, ``msitranslate``) with the
        global ``pci_<key>`` as its default, as xl applies them."""
        own = device.option(key)
        if own is not None:
            return _as_bool(own)
        return self._bool_setting(f"pci_{key}")

    def get(self, key: str) -> object:
        """The literal value of a top-level setting (None if absent, CODE if
        xm computes it).  xl atoms are text, as libxlu stores them."""
        setting = self._by_key.get(key)
        return None if setting is None else setting.value

    def setting_names(self) -> list[str]:
        return list(self._by_key)

    # -- edits -----------------------------------------------------------

    def with_device_added(
        self, address: PciAddress, options: Mapping[str, str] | None = None
    ) -> bytes:
        """The file with ``address`` added to ``pci`` (unchanged if already there
        with the same options)."""
        requested = tuple((str(k), str(v)) for k, v in (options or {}).items())
        spec = self._format_spec(address, requested)
        for device in self._devices:
            if not device.covers(address):
                continue
            # The same entry (or a wildcard entry covering the function).
            if not requested or (device.address == address and device.options == requested):
                return self.data
            raise UsageError(
                f"{self._display}:{device.line}",
                f"{address} is already assigned here by {device.spec_text!r}",
                "detach it first, or edit the entry by hand",
            )
        setting = self._by_key.get("pci")
        style = self._style()
        if setting is None:
            element = f"{style.quote}{spec}{style.quote}"
            return self._append(f"pci{style.equals}[ {element} ]", style)
        assert setting.items is not None  # checked by _read_devices
        quote = next((i.quote for i in reversed(setting.items) if i.quote), style.quote)
        return self._insert_item(setting, f"{quote}{spec}{quote}".encode(), style)

    def with_device_removed(self, address: PciAddress) -> bytes:
        """The file without the ``pci`` entry for ``address`` (unchanged if none)."""
        for device in self._devices:
            if device.covers(address) and device.address != address:
                raise UsageError(
                    f"{self._display}:{device.line}",
                    f"{address} is assigned as part of {device.spec_text!r}",
                    "pcipass removes whole entries only; edit this one by hand",
                )
        setting = self._by_key.get("pci")
        if setting is None or setting.items is None:
            return self.data
        for index, device in enumerate(self._devices):
            if device.address == address:
                return self._remove_item(setting, index)
        return self.data

    def with_setting(self, key: str, value: str | int | bool) -> bytes:
        """The file with the scalar ``key`` set to ``value``, e.g.
        ``with_setting("passthrough", "enabled")`` (xl.cfg(5): a domain built
        with it can take a device live later).  Strings are quoted in the
        document's style; the existing value's bytes are replaced in place,
        or a new line is appended."""
        key_pattern = r"[a-z][_0-9a-z]*" if self._kind is GuestKind.XL else r"[A-Za-z_]\w*"
        if not re.fullmatch(key_pattern, key) or key == "pci":
            raise UsageError(f"setting {key!r}", "not a scalar setting pcipass can write")
        style = self._style()
        text = self._format_scalar(key, value, style)
        occurrences = [s for s in self._settings if s.key == key]
        if len(occurrences) > 1:
            raise ConfigSyntaxError(
                self._display,
                f"{key} is set {len(occurrences)} times (lines "
                f"{', '.join(str(s.line) for s in occurrences)}); pcipass will not guess "
                "which one to change",
                occurrences[-1].line,
            )
        if not occurrences:
            return self._append(f"{key}{style.equals}{text}", style)
        setting = occurrences[0]
        if setting.items is not None or setting.value is CODE or setting.operator != "=":
            raise ConfigSyntaxError(
                self._display, f"{key} is not a plain scalar value here", setting.line
            )
        if setting.quote and text.startswith(style.quote):
            text = setting.quote + text[1:-1] + setting.quote  # keep this value's own quotes
        return self.data[: setting.value_start] + text.encode() + self.data[setting.value_end :]

    # -- reading helpers -------------------------------------------------

    def _check_single(self, key: str) -> None:
        occurrences = [s for s in self._settings if s.key == key]
        if len(occurrences) > 1:
            lines = ", ".join(str(s.line) for s in occurrences)
            raise ConfigSyntaxError(
                self._display,
                f"{key} is set {len(occurrences)} times (lines {lines}); merge them into one "
                f"{key} = [ ... ] so pcipass knows which one to edit",
                occurrences[1].line,
            )

    def _read_devices(self) -> list[AssignedDevice]:
        setting = self._by_key.get("pci")
        if setting is None:
            return []
        if setting.items is None:
            raise ConfigSyntaxError(
                self._display, "pci must be a list: pci = [ '0000:09:00.0' ]", setting.line
            )
        devices = []
        for item in setting.items:
            if not isinstance(item.value, str):
                raise ConfigSyntaxError(
                    self._display, f"pci entry {item.value!r} is not a quoted string", item.line
                )
            try:
                devices.append(self._parse_entry(item.value, item.line))
            except AddressError as error:
                raise ConfigSyntaxError(
                    self._display, f"pci entry {item.value!r}: {error.problem}", item.line
                ) from error
        return devices

    def _parse_entry(self, text: str, line: int) -> AssignedDevice:
        spec = parse_xl_spec(text) if self._kind is GuestKind.XL else _parse_xm_entry(text)
        pattern = spec.address
        address = None
        if pattern is not None and pattern.function is not None:
            address = PciAddress(pattern.domain, pattern.bus, pattern.slot, pattern.function)
        options = spec.options
        if spec.vslot is not None:
            options = (("vslot", f"{spec.vslot:x}"), *options)
        return AssignedDevice(
            address=address,
            spec_text=text,
            options=options,
            name=spec.option("name"),
            pattern=pattern,
            line=line,
        )

    def _read_name(self) -> str:
        value = self.get("name")
        if isinstance(value, str) and value:
            return value
        stem = PurePath(self._display).name
        stem = stem.removesuffix(".cfg") or self._display
        self._notes.append(f"no name = setting; using the file name {stem!r}")
        return stem

    def _read_virt_mode(self) -> VirtMode:
        kind_value = self.get("type")
        if self._kind is GuestKind.XL and isinstance(kind_value, str):
            mode = {"pv": VirtMode.PV, "pvh": VirtMode.PVH, "hvm": VirtMode.HVM}.get(kind_value)
            if mode is None:
                self._notes.append(f"type = {kind_value!r} is not pv, pvh or hvm")
                return VirtMode.UNKNOWN
            return mode
        builder = self.get("builder")
        if builder == "hvm":
            return VirtMode.HVM
        if builder in ("linux", "generic"):
            return VirtMode.PV
        if self._kind is GuestKind.XL and _as_bool(self.get("pvh")):
            return VirtMode.PVH
        if self.get("kernel") is not None or self.get("bootloader") is not None:
            return VirtMode.PV
        return VirtMode.UNKNOWN

    def _read_os(self) -> GuestOs:
        kernel = self.get("kernel")
        if self._virt_mode is not VirtMode.HVM and isinstance(kernel, str) and kernel:
            return os_from_kernel_path(kernel)
        return GuestOs.unknown(f"not recorded in {self._display}")

    def _read_passthrough(self) -> str | None:
        if self._kind is not GuestKind.XL:
            return None
        value = self.get("passthrough")
        if value is None:
            return None
        if not isinstance(value, str) or value not in _PASSTHROUGH_VALUES:
            self._notes.append(f"passthrough = {value!r} is not a value xl.cfg(5) lists")
            return str(value)
        return value

    def _bool_setting(self, key: str) -> bool | None:
        value = self.get(key)
        if value is None:
            return None
        result = _as_bool(value)
        if result is None:
            self._notes.append(f"{key} = {value!r} is not a boolean")
        return result

    # -- editing helpers -------------------------------------------------

    def _format_spec(self, address: PciAddress, options: tuple[tuple[str, str], ...]) -> str:
        text = ",".join([str(address), *(f"{k}={v}" for k, v in options)])
        if not _SPEC_SAFE.match(text):
            raise UsageError(f"pci options {dict(options)!r}", "only letters, digits and _.:-")
        if self._kind is GuestKind.XL:
            spec = parse_xl_spec(text)
            if spec.address is None or spec.vslot is not None or spec.option("name"):
                raise UsageError(f"pci options {dict(options)!r}", "give options, not bdf/name")
            return spec.format()
        _parse_xm_entry(text)
        return text

    def _format_scalar(self, key: str, value: str | int | bool, style: _Style) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int):
            if value < 0 and self._kind is GuestKind.XL:
                raise UsageError(f"{key} = {value}", "xl.cfg numbers cannot be negative")
            return str(value)
        if not _SCALAR_SAFE.match(value):
            raise UsageError(f"{key} = {value!r}", "quotes, backslashes and control characters")
        return f"{style.quote}{value}{style.quote}"

    def _style(self) -> _Style:
        quotes: Counter[str] = Counter()
        equals: Counter[str] = Counter()
        for setting in self._settings:
            if setting.quote:
                quotes[setting.quote] += 1
            for item in setting.items or ():
                if item.quote:
                    quotes[item.quote] += 1
            gap = self.data[setting.start + len(setting.key) : setting.value_start]
            if re.fullmatch(rb"[ \t]*=[ \t]*", gap):
                equals[gap.decode()] += 1
        default_quote = '"' if self._kind is GuestKind.XL else "'"
        quote = _most_common(quotes, default_quote)
        crlf = self.data.count(b"\r\n")
        if crlf and crlf * 2 >= self.data.count(b"\n"):
            newline = b"\r\n"
        elif self._kind is GuestKind.XM and self.data.count(b"\r") > self.data.count(b"\n"):
            newline = b"\r"  # old Mac line ends: Python reads them, libxlu does not
        else:
            newline = b"\n"
        return _Style(quote, _most_common(equals, " = "), newline)

    def _insert_item(self, setting: _Setting, element: bytes, style: _Style) -> bytes:
        data, lines = self.data, self._lines
        items = setting.items or ()
        open_at, close_at = setting.value_start, setting.value_end - 1
        if not items:
            interior = data[open_at + 1 : close_at]
            line_start = lines.start_of(close_at)
            multi_line = b"\n" in interior or b"\r" in interior or b"#" in interior
            if multi_line and not data[line_start:close_at].strip(b" \t"):
                # "pci = [\n]": put the entry on its own line, comma after it.
                indent = data[line_start:close_at] + b"    "
                text = indent + element + b"," + style.newline
                return data[:line_start] + text + data[line_start:]
            return data[:close_at] + element + data[close_at:]
        last = items[-1]
        comma = _trailing_comma(data, last.end, close_at)
        if comma is not None and lines.line_of(comma) < lines.line_of(close_at):
            # A list written one entry per line with a comma after each: add a
            # line in the same shape after the last entry's line.
            _, next_line = lines.end_of(comma)
            indent = data[lines.start_of(last.start) : last.start]
            if indent.strip(b" \t"):
                indent = b"    "
            text = indent + element + b"," + style.newline
            return data[:next_line] + text + data[next_line:]
        if len(items) > 1:
            separator = data[items[-2].end : last.start]
            if b"#" in separator or b"\\" in separator:
                separator = self._fresh_separator(last, open_at, style)
        else:
            separator = self._fresh_separator(last, open_at, style)
        return data[: last.end] + separator + element + data[last.end :]

    def _fresh_separator(self, last: _Item, open_at: int, style: _Style) -> bytes:
        lines = self._lines
        if lines.line_of(last.start) == lines.line_of(open_at):
            return b", "
        indent = self.data[lines.start_of(last.start) : last.start]
        if indent.strip(b" \t"):
            indent = b"    "
        return b"," + style.newline + indent

    def _remove_item(self, setting: _Setting, index: int) -> bytes:
        data, lines = self.data, self._lines
        items = setting.items or ()
        item = items[index]
        close_at = setting.value_end - 1
        if len(items) == 1 and self._is_created_statement(setting, item):
            return _remove_lines(data, lines, setting.start, setting.value_end)
        line_start = lines.start_of(item.start)
        line_end, next_line = lines.end_of(item.end)
        before = data[line_start : item.start]
        after = data[item.end : line_end]
        if (
            line_start > setting.value_start
            and not before.strip(b" \t")
            and re.fullmatch(rb"[ \t]*,[ \t]*(?:#.*)?", after)
            and next_line <= close_at
        ):
            return data[:line_start] + data[next_line:]
        if index > 0:
            return data[: items[index - 1].end] + data[item.end :]
        if len(items) > 1:
            return data[: item.start] + data[items[1].start :]
        comma = _trailing_comma(data, item.end, close_at)
        end = item.end if comma is None else comma + 1
        return data[: item.start] + data[end:]

    def _is_created_statement(self, setting: _Setting, item: _Item) -> bool:
        """Is this ``pci`` statement exactly what :meth:`with_device_added`
        writes when it creates one?  Then removing its device removes it."""
        text = self.data[setting.start : setting.value_end]
        element = self.data[item.start : item.end]
        line_start = self._lines.start_of(setting.start)
        line_end, _ = self._lines.end_of(setting.value_end)
        return (
            setting.operator == "="
            and line_start == setting.start
            and line_end == setting.value_end
            and re.fullmatch(rb"pci[ \t]*=[ \t]*\[ " + re.escape(element) + rb" \]", text)
            is not None
        )

    def _append(self, text: str, style: _Style) -> bytes:
        """Append a statement on a line of its own, keeping the file's
        last-line style (final newline or not)."""
        data, line = self.data, text.encode()
        if not data:
            return line + style.newline
        line_ended = data.endswith(b"\n") or (
            self._kind is GuestKind.XM and data.endswith(b"\r")  # Python: \r ends a line
        )
        if line_ended:
            return data + line + style.newline
        if data.endswith(b"\r"):
            # libxlu: a carriage return ends no line, and a newline after it
            # would read as one CRLF; xl rejects such a file anyway.
            raise ConfigSyntaxError(
                self._display,
                "the file ends in a carriage return, which xl rejects (run dos2unix)",
                self._lines.line_of(len(data)),
            )
        return data + style.newline + line


# --------------------------------------------------------------------------
# Public constructors


def parse_xen_config(data: bytes, display_path: str, kind: GuestKind) -> XenConfig:
    """Parse an xm (``GuestKind.XM``) or xl (``GuestKind.XL``) file's bytes.

    Raises :class:`ConfigSyntaxError` (subject ``path:line``) for anything
    outside the grammar, a duplicated ``pci``, or a bad ``pci`` entry.
    """
    if kind is GuestKind.XL:
        settings, lines, notes = _parse_xl(data, display_path)
    elif kind is GuestKind.XM:
        settings, lines, notes = _parse_xm(data, display_path)
    else:
        raise UsageError(display_path, f"{kind} is not a Xen configuration kind")
    return XenConfig(
        data=data, display=display_path, kind=kind, settings=settings, lines=lines, notes=notes
    )


def guess_kind(path_name: str | PurePath, data: bytes) -> GuestKind:
    """xl for ``*.cfg`` files or files using xl-only keys (``type=``,
    ``passthrough=``, ``+=``...); xm otherwise (RHEL 5 names files
    ``/etc/xen/NAME``)."""
    if str(path_name).endswith(".cfg"):
        return GuestKind.XL
    if _XL_ONLY_LINE.search(data):
        return GuestKind.XL
    return GuestKind.XM


# --------------------------------------------------------------------------
# xl: libxlu's grammar

_XL_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t]+)
  | (?P<newline>\r?\n)
  | (?P<comment>\#[^\n]*)
  | (?P<ident>[a-z][_0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<op>\+=|[=,\[\];])
    """,
    re.X,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: bytes
    start: int
    end: int
    line: int


def _tokenize_xl(data: bytes, display: str, lines: _Lines, notes: list[str]) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    crlf_noted = False
    while position < len(data):
        match = _XL_TOKEN.match(data, position)
        line = lines.line_of(position)
        if match is None:
            char = data[position : position + 1]
            problem = f"unexpected {char.decode('latin-1')!r}"
            if char in b"+-.():":
                problem += " (this looks like Python; xl.cfg(5) has no expressions)"
            elif char in b"'\"":
                problem = "unterminated string (strings end on the same line)"
            raise ConfigSyntaxError(display, problem, line)
        kind = match.lastgroup or ""
        if kind == "newline" and match.group().startswith(b"\r") and not crlf_noted:
            notes.append("CRLF line ends: xl itself rejects carriage returns (use dos2unix)")
            crlf_noted = True
        if kind == "comment" and match.end() == len(data):
            notes.append(f"line {line}: xl rejects a comment without a final newline")
        if kind not in ("ws", "comment"):
            tokens.append(_Token(kind, match.group(), match.start(), match.end(), line))
        position = match.end()
    return tokens


class _XlParser:
    def __init__(self, data: bytes, display: str, tokens: list[_Token]) -> None:
        self.data = data
        self.display = display
        self.tokens = tokens
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def error(self, problem: str, token: _Token | None) -> ConfigSyntaxError:
        line = token.line if token else (self.tokens[-1].line if self.tokens else 1)
        return ConfigSyntaxError(self.display, problem, line)

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def skip_newlines(self) -> None:
        while (token := self.peek()) is not None and token.kind == "newline":
            self.index += 1

    def settings(self) -> list[_Setting]:
        result: list[_Setting] = []
        while (token := self.peek()) is not None:
            if token.kind == "newline" or token.text == b";":
                self.index += 1
                continue
            if token.kind != "ident":
                raise self.error(
                    f"expected a setting name, found {token.text.decode('latin-1')!r}", token
                )
            key = self.take()
            operator = self.peek()
            if operator is None or operator.text not in (b"=", b"+="):
                raise self.error(f"expected '=' after {key.text.decode()!r}", operator or key)
            self.index += 1
            value_token = self.peek()
            if value_token is None:
                raise self.error(f"{key.text.decode()} has no value", key)
            value, items, quote, end = self.value(0)
            ending = self.peek()
            if ending is not None and ending.kind != "newline" and ending.text != b";":
                raise self.error(
                    f"unexpected {ending.text.decode('latin-1')!r} after the value of "
                    f"{key.text.decode()} (one setting per line or ';')",
                    ending,
                )
            result.append(
                _Setting(
                    key=key.text.decode(),
                    operator=operator.text.decode(),
                    line=key.line,
                    start=key.start,
                    value_start=value_token.start,
                    value_end=end,
                    value=value,
                    items=items,
                    quote=quote,
                )
            )
        return result

    def value(self, depth: int) -> tuple[object, tuple[_Item, ...] | None, str | None, int]:
        token = self.peek()
        if token is None:
            raise self.error("a value is missing at the end of the file", None)
        if token.kind == "string":
            self.index += 1
            return (
                _xl_dequote(token, self.display),
                None,
                token.text[:1].decode(),
                token.end,
            )
        if token.kind == "number":
            self.index += 1
            return token.text.decode(), None, None, token.end
        if token.text != b"[":
            raise self.error(
                f'expected a value ("string", number or [list]), found '
                f"{token.text.decode('latin-1')!r}",
                token,
            )
        if depth >= _MAX_LIST_DEPTH:
            raise self.error("lists nested too deeply", token)
        self.index += 1
        items: list[_Item] = []
        values: list[object] = []
        expect_value = True  # at the start, and after each ','
        self.skip_newlines()
        while True:
            token = self.peek()
            if token is None:
                raise self.error("list not closed with ']'", self.tokens[-1])
            if token.text == b"]":
                self.index += 1
                return values, tuple(items), None, token.end
            if not expect_value:
                raise self.error("expected ',' or ']' in the list", token)
            value, _, quote, end = self.value(depth + 1)
            items.append(_Item(token.start, end, token.line, value, quote))
            values.append(value)
            self.skip_newlines()
            expect_value = False
            following = self.peek()
            if following is not None and following.text == b",":
                self.index += 1
                expect_value = True
                self.skip_newlines()


_XL_ESCAPES = {
    ord('"'): b'"',
    ord("'"): b"'",
    ord("\\"): b"\\",
    ord("a"): b"\a",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}


def _xl_dequote(token: _Token, display: str) -> str:
    """Undo a quoted string's escapes as libxlu's xlu__cfgl_dequote does."""
    body = token.text[1:-1]
    out = bytearray()
    index = 0
    while index < len(body):
        byte = body[index]
        index += 1
        if byte != ord("\\"):
            out.append(byte)
            continue
        escaped = body[index]
        index += 1
        if escaped in _XL_ESCAPES:
            out += _XL_ESCAPES[escaped]
        elif escaped == ord("x") and re.fullmatch(rb"[0-9a-fA-F]{2}", body[index : index + 2]):
            out.append(int(body[index : index + 2], 16))
            index += 2
        elif ord("0") <= escaped <= ord("7"):
            digits = re.match(rb"[0-7]{0,2}", body[index:])
            text = bytes([escaped]) + (digits.group() if digits else b"")
            out.append(int(text, 8) & 0xFF)
            index += len(text) - 1
        else:
            raise ConfigSyntaxError(
                display, f"invalid escape '\\{chr(escaped)}' in a quoted string", token.line
            )
    return out.decode("utf-8", "replace")


def _parse_xl(data: bytes, display: str) -> tuple[list[_Setting], _Lines, list[str]]:
    lines = _Lines(data, _XL_NEWLINE)
    notes: list[str] = []
    tokens = _tokenize_xl(data, display, lines, notes)
    settings = _XlParser(data, display, tokens).settings()
    return settings, lines, notes


# --------------------------------------------------------------------------
# xm: Python, read as data through ast


def _parse_xm(data: bytes, display: str) -> tuple[list[_Setting], _Lines, list[str]]:
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    body = data[bom:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body[: error.start].count(b"\n") + 1
        raise ConfigSyntaxError(display, "not UTF-8 text", line) from error
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and the like
            warnings.simplefilter("ignore")
            module = ast.parse(text, filename=display)
    except SyntaxError as error:
        raise ConfigSyntaxError(
            display, f"not valid Python: {error.msg}", error.lineno or None
        ) from error
    except (ValueError, MemoryError, RecursionError) as error:
        raise ConfigSyntaxError(display, f"not valid Python: {error}") from error
    lines = _Lines(data, _PY_NEWLINE)
    body_lines = _Lines(body, _PY_NEWLINE)

    def offset(line: int, column: int) -> int:
        return body_lines.starts[line - 1] + column + bom

    notes: list[str] = []
    settings: list[_Setting] = []
    for statement in module.body:
        setting = _xm_setting(statement, data, display, offset)
        if setting is not None:
            settings.append(setting)
            if setting.value is not CODE:
                continue
        if isinstance(statement, ast.Pass) or (
            isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        ):
            continue
        _check_xm_code(statement, display)
        span = f"{statement.lineno}" + (
            f"-{statement.end_lineno}"
            if statement.end_lineno and statement.end_lineno != statement.lineno
            else ""
        )
        notes.append(f"line {span}: Python code pcipass did not run (xend would)")
    return settings, lines, notes


def _xm_setting(
    statement: ast.stmt,
    data: bytes,
    display: str,
    offset: Callable[[int, int], int],
) -> _Setting | None:
    """A top-level ``NAME = value`` as a setting (value CODE when it is not a
    literal: never evaluated), or None for any other statement."""
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return None
    target = statement.targets[0]
    assert isinstance(target, ast.Name)
    node = statement.value
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        if target.id in WATCHED_KEYS:
            raise ConfigSyntaxError(
                display,
                f"{target.id} is computed by Python code; pcipass reads configuration "
                "files as data and needs a literal here",
                statement.lineno,
            ) from None
        value = CODE
    value_start = offset(node.lineno, node.col_offset)
    value_end = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
    items: tuple[_Item, ...] | None = None
    if isinstance(node, ast.List) and value is not CODE:
        items = tuple(
            _Item(
                start=(start := offset(elt.lineno, elt.col_offset)),
                end=(end := offset(elt.end_lineno or elt.lineno, elt.end_col_offset or 0)),
                line=elt.lineno,
                value=ast.literal_eval(elt),
                quote=_plain_quote(data[start:end]),
            )
            for elt in node.elts
        )
        if target.id == "pci":
            _check_list_gaps(data, (value_start, value_end), items, display, statement.lineno)
    elif target.id == "pci" and value is not None:
        raise ConfigSyntaxError(display, "pci must be a [list] of quoted strings", statement.lineno)
    scalar_quote = None
    if isinstance(node, ast.Constant) and isinstance(value, str):
        scalar_quote = _plain_quote(data[value_start:value_end])
    return _Setting(
        key=target.id,
        operator="=",
        line=statement.lineno,
        start=offset(target.lineno, target.col_offset),
        value_start=value_start,
        value_end=value_end,
        value=value,
        items=items,
        quote=scalar_quote,
    )


def _check_xm_code(statement: ast.stmt, display: str) -> None:
    """Refuse code that binds a watched name or can bind names unseen."""
    for node in ast.walk(statement):
        bound: Iterable[str] = ()
        if isinstance(node, ast.Name):
            if node.id in _DYNAMIC_NAMES:
                _refuse_dynamic(node.id, node, display)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                bound = (node.id,)
        elif isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_NAMES:
            _refuse_dynamic(node.attr, node, display)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound = (node.name,)
        elif isinstance(node, ast.alias):
            if node.name == "*":
                raise ConfigSyntaxError(
                    display,
                    "'import *' can set any name; pcipass cannot tell what it changes",
                    getattr(node, "lineno", statement.lineno),
                )
            bound = ((node.asname or node.name).split(".")[0],)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound = tuple(node.names)
        elif isinstance(node, _NAME_BINDERS) and getattr(node, "name", None):
            bound = (str(getattr(node, "name")),)  # noqa: B009 (a type the checker cannot narrow)
        elif _MATCH_MAPPING is not None and isinstance(node, _MATCH_MAPPING):
            rest = getattr(node, "rest", None)  # "**rest" in a mapping pattern
            bound = (str(rest),) if rest else ()
        for name in bound:
            if name in WATCHED_KEYS:
                raise ConfigSyntaxError(
                    display,
                    f"Python code sets {name}; pcipass reads configuration files as data and "
                    f"needs a plain {name} = <literal> line",
                    getattr(node, "lineno", statement.lineno),
                )


def _refuse_dynamic(name: str, node: ast.AST, display: str) -> None:
    raise ConfigSyntaxError(
        display,
        f"Python code uses {name}, which can set configuration names pcipass cannot see",
        getattr(node, "lineno", None),
    )


def _check_list_gaps(
    data: bytes, span: tuple[int, int], items: tuple[_Item, ...], display: str, line: int
) -> None:
    """Between the elements of ``pci`` only commas, blanks and comments may
    stand (no parentheses, no implicit string concatenation), so that
    removing an element's bytes removes exactly that element."""
    start, end = span
    if data[start : start + 1] != b"[" or data[end - 1 : end] != b"]":
        raise ConfigSyntaxError(display, "pci must be a [list] of quoted strings", line)
    bounds = [start + 1, *(p for item in items for p in (item.start, item.end)), end - 1]
    for index in range(0, len(bounds), 2):
        gap = data[bounds[index] : bounds[index + 1]]
        if re.search(rb"#[^\r\n]*", gap):
            gap = re.sub(rb"#[^\r\n]*", b"", gap)
        gap = re.sub(rb"\\(?:\r\n|\r|\n)", b"", gap)
        commas = gap.count(b",")
        first, last = index == 0, index == len(bounds) - 2
        allowed = (
            (first and commas == 0)
            or (last and not first and commas <= 1)
            or (not first and not last and commas == 1)
        )
        if gap.strip(b" \t\r\n\f,") or not allowed:
            raise ConfigSyntaxError(
                display,
                "pcipass edits pci only as a plain [list] of quoted strings",
                line,
            )
    for item in items:
        if data[item.start : item.start + 1] not in (b"'", b'"'):
            raise ConfigSyntaxError(
                display, "pcipass edits pci only as a plain [list] of quoted strings", item.line
            )


def _parse_xm_entry(text: str) -> XlPciSpec:
    """An xm ``pci`` entry: ``[DDDD:]BB:DD.F[@VSLOT][,msitranslate=1][,power_mgmt=0]``.

    The address part goes through :func:`parse_xl_spec` (the one address
    parser); xend's options are the two it knows, with 0/1/yes/no values.
    xend's multi-function lists (``09:00.0,2-4``) are not read.
    """
    head, _, rest = text.strip().partition(",")
    spec = parse_xl_spec(head)
    if spec.address is None or spec.options:
        raise AddressError(text, "an xm entry starts with the device address")
    options: list[tuple[str, str]] = []
    for piece in rest.split(",") if rest else []:
        key, equals, value = piece.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise AddressError(
                text, f"{piece!r} is not key=value (xend function lists unsupported)"
            )
        if key not in _XM_PCI_OPTIONS or value.lower() not in ("0", "1", "yes", "no"):
            raise AddressError(text, f"xm knows msitranslate and power_mgmt = 0|1, not {piece!r}")
        options.append((key, value))
    return XlPciSpec(spec.address, spec.vslot, tuple(options))


# --------------------------------------------------------------------------
# Small helpers


def _plain_quote(source: bytes) -> str | None:
    return source[:1].decode() if _PLAIN_STRING.match(source) else None


def _as_bool(value: object) -> bool | None:
    """A boolean as xl (strtol, base 0) or xend (Python truth) reads one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("yes", "true"):
            return True
        if text in ("no", "false"):
            return False
        try:
            if text.startswith("0x"):
                return int(text[2:], 16) != 0
            if len(text) > 1 and text.startswith("0"):
                return int(text[1:], 8) != 0
            return int(text, 10) != 0
        except ValueError:
            return None
    return None


def _most_common(counter: Counter[str], default: str) -> str:
    if not counter:
        return default
    best = max(counter.values())
    winners = [k for k, v in counter.items() if v == best]
    return default if default in winners else winners[0]


def _trailing_comma(data: bytes, after: int, close_at: int) -> int | None:
    """The offset of a comma between the last element and ``]``, if any."""
    gap = data[after:close_at]
    stripped = re.sub(rb"#[^\r\n]*", lambda m: b" " * len(m.group()), gap)
    index = stripped.find(b",")
    return None if index < 0 else after + index


def _remove_lines(data: bytes, lines: _Lines, start: int, end: int) -> bytes:
    """Remove the statement in data[start:end] with its line, the exact
    inverse of :meth:`XenConfig._append` when it stands alone on its line."""
    line_start = lines.start_of(start)
    line_end, next_line = lines.end_of(end)
    if data[line_start:start] or data[end:line_end]:
        return data[:start] + data[end:]
    if next_line > line_end:
        return data[:line_start] + data[next_line:]
    # Last line without a final newline: take the newline before it instead.
    previous = re.search(rb"(\r\n|\r|\n)$", data[:line_start])
    cut = line_start - (len(previous.group()) if previous else 0)
    return data[:cut] + data[end:]


__all__ = [
    "CODE",
    "WATCHED_KEYS",
    "XenConfig",
    "guess_kind",
    "parse_xen_config",
]
