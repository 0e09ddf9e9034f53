"""modprobe configuration text, read the way kmod reads it.

The text model follows kmod 30 exactly (``libkmod-config.c``,
``getline_wrapped`` in ``libkmod-util.c``) because kmod is what reads these
files at boot on every current system:

* a logical line ends at ``\\n``; backslash-newline joins physical lines, and
  a backslash before any other byte is dropped (the byte is kept);
* a logical line starting with ``#`` is a comment *including its
  continuations*; words are separated by space and tab only, so a ``\\r``
  of a CRLF file is part of the last word;
* module names treat ``-`` and ``_`` alike (``underscores()``).

The ``# pcipass:`` marker comments (see :mod:`pcipass.persist.modprobe`) are
parsed here too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.errors import UsageError
from pcipass.host.persisted import module_key
from pcipass.host.stubs import VFIO_MODULE, XEN_MODULES
from pcipass.persist.stub_values import ISSPACE, normalise_device_id
from pcipass.record import dataclass, replace

MARKER_PREFIX = "# pcipass:"

SPACE = " \t"  # kmod's strtok delimiters


# The stub modules as kmod compares them (host/stubs.py names them).
XEN_STUB_KEYS = frozenset(module_key(m) for m in XEN_MODULES)
VFIO_STUB_KEY = module_key(VFIO_MODULE)


# --------------------------------------------------------------------------
# The line model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One ``name=value`` of an options line; indices into the logical text."""

    name: str
    start: int  # index of the first character of the name
    value_start: int
    value_end: int  # after the value (before a closing quote)
    end: int  # after the whole parameter (after a closing quote)

    @property
    def key(self) -> str:
        # The kernel's parameq() treats - and _ alike in parameter names.
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Logical:
    """One logical line (after kmod's unwrapping), with where it lies in the file."""

    first_line: int  # 1-based physical line number
    start: int  # byte offset of the first physical line
    end: int  # byte offset after the terminating newline (or end of file)
    text: str  # latin-1 decoded: one character per byte
    offsets: Sequence[int]  # file offset of each character of text
    terminated: bool

    @property
    def words(self) -> list[str]:
        return [w for w in re.split(r"[ \t]+", self.text) if w]

    @property
    def command(self) -> str:
        if not self.text or self.text[0] == "#":
            return ""
        words = self.words
        return words[0] if words else ""

    @property
    def is_marker(self) -> bool:
        return self.text.startswith(MARKER_PREFIX)

    def offset_after(self, index: int) -> int:
        """File offset just after the character at ``index``."""
        return self.offsets[index] + 1


def split_logical(data: bytes) -> list[Logical]:
    """Split ``data`` into logical lines exactly as kmod's getline_wrapped does."""
    lines: list[Logical] = []
    n = len(data)
    pos = 0
    physical = 1
    while pos < n:
        start = pos
        first = physical
        newline = data.find(b"\n", pos)
        end = n if newline < 0 else newline
        if data.find(b"\\", pos, end) < 0:
            # No backslash: the physical line is the logical line (the common case).
            text = data[pos:end].decode("latin-1")
            terminated = newline >= 0
            pos = end + 1 if terminated else end
            physical += 1 if terminated else 0
            lines.append(Logical(first, start, pos, text, range(start, end), terminated))
            continue
        chars: list[int] = []
        offsets: list[int] = []
        terminated = False
        while pos < n:
            byte = data[pos]
            if byte == 0x0A:
                pos += 1
                physical += 1
                terminated = True
                break
            if byte == 0x5C:  # backslash
                if pos + 1 < n and data[pos + 1] == 0x0A:
                    pos += 2
                    physical += 1
                    continue
                if pos + 1 < n:
                    chars.append(data[pos + 1])
                    offsets.append(pos + 1)
                    pos += 2
                    continue
                pos += 1  # a lone backslash at end of file: kmod drops it too
                continue
            chars.append(byte)
            offsets.append(pos)
            pos += 1
        text = bytes(chars).decode("latin-1")
        lines.append(Logical(first, start, pos, text, tuple(offsets), terminated))
    return lines


@dataclass(frozen=True)
class Directive:
    """A logical line that is a modprobe command, with its marker (if any)."""

    line: Logical
    command: str  # options, install, softdep, alias, blacklist, remove
    module: str  # as written (the alias name for ``alias``)
    target: str  # alias: the module it names; others: ""
    rest_start: int  # index in line.text where the options/command text starts
    marker: Marker | None

    @property
    def key(self) -> str:
        return module_key(self.module)

    @property
    def rest(self) -> str:
        return self.line.text[self.rest_start :]

    def params(self) -> list[Param]:
        return parse_params(self.line.text, self.rest_start) if self.command == "options" else []

    def last_param(self, key: str) -> Param | None:
        found = [p for p in self.params() if p.key == key]
        return found[-1] if found else None


@dataclass(frozen=True)
class Marker:
    """A ``# pcipass:`` comment and what it says about the next line."""

    line: Logical
    whole_line: bool = False  # "line"
    param: bool = False  # "param"
    hide: tuple[PciAddress, ...] = ()
    ids: tuple[tuple[str, PciAddress], ...] = ()
    for_: tuple[PciAddress, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.whole_line or self.param or self.hide or self.ids or self.for_)

    def addresses(self) -> set[PciAddress]:
        return set(self.hide) | {a for _, a in self.ids} | set(self.for_)

    def render(self) -> bytes:
        words: list[str] = []
        if self.whole_line:
            words.append("line")
        if self.param:
            words.append("param")
        if self.hide:
            words.append("hide=" + ",".join(str(a) for a in self.hide))
        if self.ids:
            words.append("ids=" + ",".join(f"{i}@{a}" for i, a in self.ids))
        if self.for_:
            words.append("for=" + ",".join(str(a) for a in self.for_))
        return f"{MARKER_PREFIX} {' '.join(words)}\n".encode()


def new_marker(for_: tuple[PciAddress, ...] = ()) -> Marker:
    """The marker of a line pcipass is about to write (it has no place yet)."""
    return Marker(Logical(0, 0, 0, "", (), True), whole_line=True, for_=for_)


def parse_marker(line: Logical) -> Marker | None:
    """Read a marker comment; a malformed one is treated as a plain comment."""
    if not line.is_marker:
        return None
    if line.end - line.start != len(line.text) + (1 if line.terminated else 0):
        return None  # pcipass writes markers as one plain physical line, never wrapped
    marker = Marker(line)
    try:
        for word in line.text[len(MARKER_PREFIX) :].split():
            name, _, value = word.partition("=")
            items = [v for v in value.split(",") if v]
            if word == "line":
                marker = replace(marker, whole_line=True)
            elif word == "param":
                marker = replace(marker, param=True)
            elif name == "hide":
                marker = replace(marker, hide=tuple(PciAddress.parse(v) for v in items))
            elif name == "for":
                marker = replace(marker, for_=tuple(PciAddress.parse(v) for v in items))
            elif name == "ids":
                pairs = []
                for item in items:
                    device_id, _, address = item.partition("@")
                    pairs.append((normalise_device_id(device_id), PciAddress.parse(address)))
                marker = replace(marker, ids=tuple(pairs))
            else:
                return None
    except UsageError:
        return None
    return marker


def parse_params(text: str, start: int) -> list[Param]:
    """Split an options string like the kernel's ``next_arg()`` (quotes group)."""
    params: list[Param] = []
    i = start
    n = len(text)
    while i < n:
        while i < n and text[i] in ISSPACE:
            i += 1
        if i >= n:
            break
        begin = i
        in_quote = False
        equals = -1
        while i < n and (in_quote or text[i] not in ISSPACE):
            if text[i] == '"':
                in_quote = not in_quote
            elif text[i] == "=" and equals < 0 and not in_quote:
                equals = i
            i += 1
        if equals < 0:
            params.append(Param(text[begin:i], begin, i, i, i))
            continue
        value_start, value_end = equals + 1, i
        if value_end - value_start >= 2 and text[value_start] == text[value_end - 1] == '"':
            value_start, value_end = value_start + 1, value_end - 1
        params.append(Param(text[begin:equals], begin, value_start, value_end, i))
    return params


@dataclass(frozen=True)
class Document:
    """A parsed modprobe file: its bytes, logical lines and directives."""

    data: bytes
    lines: tuple[Logical, ...]
    directives: tuple[Directive, ...]

    @classmethod
    def parse(cls, data: bytes | None) -> Document:
        data = data or b""
        lines = tuple(split_logical(data))
        directives: list[Directive] = []
        previous: Logical | None = None
        for line in lines:
            directive = _directive(line, parse_marker(previous) if previous else None)
            if directive is not None:
                directives.append(directive)
            previous = line
        return cls(data, lines, tuple(directives))

    def insertion_point(self) -> int:
        """Where new lines go: the end, or before an unterminated last line.

        A last line without a newline (or ending in a dangling backslash
        continuation) would swallow anything appended after it, so new lines
        go in front of it and it stays last, byte for byte.
        """
        if self.lines and not self.lines[-1].terminated:
            return self.lines[-1].start
        return len(self.data)

    def find(self, command: str, key: str) -> list[Directive]:
        return [d for d in self.directives if d.command == command and d.key == key]


def _directive(line: Logical, marker: Marker | None) -> Directive | None:
    command = line.command
    if command not in ("options", "install", "remove", "softdep", "alias", "blacklist"):
        return None
    text = line.text
    # Find the module word and where the rest starts, as strtok_r does: the
    # rest begins one character after the module name.
    match = re.match(r"[ \t]*\S+[ \t]+(?P<module>[^ \t]+)", text)
    if match is None:
        return None
    module = match.group("module")
    rest_start = match.end() + 1
    target = ""
    if command == "alias":
        words = line.words
        if len(words) < 3:
            return None
        target = words[2]
    elif command in ("options", "install", "remove", "softdep") and rest_start >= len(text):
        return None  # kmod: "ignoring bad line" (nothing after the module name)
    return Directive(line, command, module, target, min(rest_start, len(text)), marker)
