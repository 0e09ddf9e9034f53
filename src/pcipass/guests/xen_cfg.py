"""xm and xl guest configuration files: read them as data, edit ``pci`` in place.

Two formats share ``/etc/xen``, each read by its own module into the shared
shapes of :mod:`pcipass.guests.xen_text`:

* **xm** (RHEL 5, xend): ``/etc/xen/NAME`` is Python that xend *executes*;
  :mod:`pcipass.guests.xm_python` reads it with :mod:`ast`, never running
  it.  Code that could set or change ``pci`` unseen makes the devices
  *unknown* (:attr:`XenConfig.devices_unknown`, with the line), and pcipass
  then never edits that ``pci``.
* **xl** (xl.cfg(5)): libxlu's own grammar, :mod:`pcipass.guests.xl_grammar`.
  Two departures, both reported in ``notes`` because xl itself would reject
  the file: CRLF line ends and a comment on a last line without a newline.

A ``pci`` set more than once is read as the toolstack reads it (xl: ``+=``
appends, ``=`` starts again; xm: the last wins), but not edited.

Edits work on the original bytes: an entry is inserted into or removed from
the existing ``pci`` list and every other byte stays as it was (quote style,
spacing, comments, line ends).  Inserting then removing the same device
gives the original bytes back.  A missing ``pci`` is created at the end of
the file as ``pci = [ '0000:09:00.0' ]`` (xm) or ``pci = [ "0000:09:00.0" ]``
(xl), with the quote and ``=`` spacing the document already uses; removing
its last device removes that line again, and so does the ``passthrough``
line pcipass adds to an xl file (marked with :data:`PASSTHROUGH_MARK`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import PurePath

from pcipass.address import PciAddress, parse_xl_spec
from pcipass.errors import AddressError, ConfigSyntaxError, UsageError
from pcipass.guests.guest_os import os_from_kernel_path
from pcipass.guests.model import AssignedDevice, GuestKind, GuestOs, VirtMode
from pcipass.guests.xen_text import CODE, Item, Lines, Setting
from pcipass.guests.xl_grammar import parse_xl
from pcipass.guests.xm_python import WATCHED_KEYS, parse_xm, parse_xm_entry
from pcipass.patterns import lazy, lazy_bytes
from pcipass.record import dataclass

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
_XL_ONLY_LINE = lazy_bytes(
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
# What pcipass writes when it adds passthrough (attach of an xl guest); the
# last detach removes exactly such a line and nothing else.
PASSTHROUGH_MARK = "# added by pcipass attach; its last detach removes it"
_ADDED_PASSTHROUGH = lazy_bytes(
    rb"""passthrough[ \t]*=[ \t]*(["'])enabled\1[ \t]*""" + re.escape(PASSTHROUGH_MARK.encode())
)

_SPEC_SAFE = lazy(r"^[A-Za-z0-9_.:,=@*-]+$")
_SCALAR_SAFE = lazy(r"^[^'\"\\\x00-\x1f\x7f]*$")


@dataclass(frozen=True)
class _Style:
    quote: str
    equals: str
    newline: bytes


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
        settings: list[Setting],
        lines: Lines,
        notes: list[str],
        unknown: list[tuple[int, str]] | None = None,
    ) -> None:
        self.data = data
        self._unknown = sorted(unknown or [])
        self._display = display
        self._kind = kind
        self._settings = settings
        self._lines = lines
        self._notes = notes
        self._by_key: dict[str, Setting] = {}
        for setting in settings:  # the last assignment wins, in xm and in xl
            self._by_key[setting.key] = setting
        # A pci set more than once is read as the toolstack reads it (xl:
        # "+=" appends, "=" starts again; xm: the last one wins), so the
        # devices count for PP101; pcipass only refuses to *edit* it.
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
        """The devices ``pci`` lists literally (see :attr:`devices_unknown`)."""
        return list(self._devices)

    @property
    def devices_unknown(self) -> str | None:
        """Why pcipass cannot tell every device this guest holds (xm code that
        could set or change ``pci``), as ``line N: reason``; None when the
        literal ``pci`` is all there is."""
        if not self._unknown:
            return None
        return "; ".join(f"line {line}: {reason}" for line, reason in self._unknown)

    def _refuse_unknown(self) -> None:
        if self._unknown:
            line, reason = self._unknown[0]
            raise ConfigSyntaxError(
                self._display,
                f"pcipass cannot tell which devices this file assigns ({reason}), "
                "so it does not edit its pci",
                line,
            )

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
        self._refuse_unknown()
        self._check_single("pci")
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
        """The file without the ``pci`` entry for ``address`` (unchanged if none).

        With the last device goes the ``passthrough`` line pcipass added
        (:meth:`with_passthrough_enabled`), so attach then detach gives the
        file back byte for byte; one the administrator wrote stays."""
        after = self._without_device(address)
        if after == self.data or self._kind is not GuestKind.XL:
            return after
        edited = parse_xen_config(after, self._display, self._kind)
        return edited._without_added_passthrough()

    def with_passthrough_enabled(self) -> bytes:
        """xl.cfg(5) ``passthrough = "enabled"`` appended, marked as pcipass's
        (unchanged when the file sets passthrough itself)."""
        if self._kind is not GuestKind.XL or self.passthrough is not None:
            return self.data
        style = self._style()
        value = self._format_scalar("passthrough", "enabled", style)
        return self._append(f"passthrough{style.equals}{value}  {PASSTHROUGH_MARK}", style)

    def _without_added_passthrough(self) -> bytes:
        setting = self._by_key.get("passthrough")
        if self._devices or setting is None:
            return self.data
        line_start = self._lines.start_of(setting.start)
        line_end, _ = self._lines.end_of(setting.value_end)
        line = self.data[line_start:line_end]
        if not _ADDED_PASSTHROUGH.fullmatch(line):
            return self.data
        return _remove_lines(self.data, self._lines, line_start, line_end)

    def _without_device(self, address: PciAddress) -> bytes:
        self._refuse_unknown()
        self._check_single("pci")
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

    def _effective_pci(self) -> list[Setting]:
        effective: list[Setting] = []
        for setting in self._settings:
            if setting.key == "pci":
                effective = [*effective, setting] if setting.operator == "+=" else [setting]
        return effective

    def _read_devices(self) -> list[AssignedDevice]:
        devices = []
        for setting in self._effective_pci():
            devices += self._read_pci_setting(setting)
        return devices

    def _read_pci_setting(self, setting: Setting) -> list[AssignedDevice]:
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
        spec = parse_xl_spec(text) if self._kind is GuestKind.XL else parse_xm_entry(text)
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
        parse_xm_entry(text)
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

    def _insert_item(self, setting: Setting, element: bytes, style: _Style) -> bytes:
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
        own_line = self._alone_on_line(last, close_at)
        if own_line is not None:
            # One entry per line, no comma after the last: the comma goes
            # right after the entry, so a comment after it stays on its line.
            _line_end, next_line, newline = own_line
            indent = data[lines.start_of(last.start) : last.start]
            text = indent + element + newline
            return data[: last.end] + b"," + data[last.end : next_line] + text + data[next_line:]
        if len(items) > 1:
            separator = data[items[-2].end : last.start]
            if b"#" in separator or b"\\" in separator:
                separator = self._fresh_separator(last, open_at, style)
        else:
            separator = self._fresh_separator(last, open_at, style)
        return data[: last.end] + separator + element + data[last.end :]

    def _alone_on_line(self, item: Item, close_at: int) -> tuple[int, int, bytes] | None:
        """(line end, next line start, line end bytes) when ``item`` stands
        alone on its line, with at most blanks and a comment after it (no
        comma), and the list closes on a later line; else None."""
        data, lines = self.data, self._lines
        line_start = lines.start_of(item.start)
        line_end, next_line = lines.end_of(item.end)
        if data[line_start : item.start].strip(b" \t") or next_line > close_at:
            return None
        if next_line == line_end or not re.fullmatch(
            rb"[ \t]*(?:#[^\r\n]*)?", data[item.end : line_end]
        ):
            return None
        return line_end, next_line, data[line_end:next_line]

    def _fresh_separator(self, last: Item, open_at: int, style: _Style) -> bytes:
        lines = self._lines
        if lines.line_of(last.start) == lines.line_of(open_at):
            return b", "
        indent = self.data[lines.start_of(last.start) : last.start]
        if indent.strip(b" \t"):
            indent = b"    "
        return b"," + style.newline + indent

    def _remove_item(self, setting: Setting, index: int) -> bytes:
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
        if index > 0 and index == len(items) - 1 and self._alone_on_line(item, close_at):
            # The inverse of the own-line insertion: the entry's line goes
            # (with its comment) and so does the comma after the entry before
            # it, whose own comment stays.
            comma = _trailing_comma(data, items[index - 1].end, close_at)
            if comma is not None and comma < line_start:
                return data[:comma] + data[comma + 1 : line_start] + data[next_line:]
        if index > 0:
            return data[: items[index - 1].end] + data[item.end :]
        if len(items) > 1:
            return data[: item.start] + data[items[1].start :]
        comma = _trailing_comma(data, item.end, close_at)
        end = item.end if comma is None else comma + 1
        return data[: item.start] + data[end:]

    def _is_created_statement(self, setting: Setting, item: Item) -> bool:
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
    unknown: list[tuple[int, str]] = []
    if kind is GuestKind.XL:
        settings, lines, notes = parse_xl(data, display_path)
    elif kind is GuestKind.XM:
        settings, lines, notes, unknown = parse_xm(data, display_path)
    else:
        raise UsageError(display_path, f"{kind} is not a Xen configuration kind")
    return XenConfig(
        data=data,
        display=display_path,
        kind=kind,
        settings=settings,
        lines=lines,
        notes=notes,
        unknown=unknown,
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
# Small helpers


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


def _remove_lines(data: bytes, lines: Lines, start: int, end: int) -> bytes:
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
