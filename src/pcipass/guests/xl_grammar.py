"""xl.cfg(5) files: libxlu's own grammar (tools/libs/util/libxlu_cfg_l.l and
libxlu_cfg_y.y), read into :class:`~pcipass.guests.xen_text.Setting` values
with the byte spans the editor in :mod:`pcipass.guests.xen_cfg` needs.

``key = value`` or ``key += value`` (keys ``[a-z][_0-9a-z]*``); values are
quoted strings (``'...'`` or ``"..."``, backslash escapes, one line),
numbers (``[0-9][0-9a-fx]*``) or ``[ lists ]`` that may span lines; ``#``
comments; statements end at a newline or ``;``.  Anything else is a syntax
error, as it is for xl.
"""

from __future__ import annotations

import re

from pcipass.errors import ConfigSyntaxError
from pcipass.guests.xen_text import (
    MAX_LIST_DEPTH,
    XL_NEWLINE,
    Item,
    Lines,
    Setting,
)
from pcipass.patterns import lazy_bytes
from pcipass.record import dataclass

_XL_TOKEN = lazy_bytes(
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


def _tokenize_xl(data: bytes, display: str, lines: Lines, notes: list[str]) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    crlf_noted = False
    # The line is counted from the newline tokens (XL_NEWLINE's own definition,
    # as ``lines`` counts): no string, comment or blank run holds a newline.
    line = 1
    match_at = _XL_TOKEN.match
    end = len(data)
    while position < end:
        match = match_at(data, position)
        if match is None:
            char = data[position : position + 1]
            problem = f"unexpected {char.decode('latin-1')!r}"
            if char in b"+-.():":
                problem += " (this looks like Python; xl.cfg(5) has no expressions)"
            elif char in b"'\"":
                problem = "unterminated string (strings end on the same line)"
            raise ConfigSyntaxError(display, problem, lines.line_of(position))
        kind = match.lastgroup or ""
        after = match.end()
        if kind == "ws":
            position = after
            continue
        if kind == "newline":
            if not crlf_noted and data[position] == 0x0D:
                notes.append("CRLF line ends: xl itself rejects carriage returns (use dos2unix)")
                crlf_noted = True
            tokens.append(_Token(kind, match.group(), position, after, line))
            line += 1
        elif kind == "comment":
            if after == end:
                notes.append(f"line {line}: xl rejects a comment without a final newline")
        else:
            tokens.append(_Token(kind, match.group(), position, after, line))
        position = after
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

    def settings(self) -> list[Setting]:
        result: list[Setting] = []
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
                Setting(
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

    def value(self, depth: int) -> tuple[object, tuple[Item, ...] | None, str | None, int]:
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
        if depth >= MAX_LIST_DEPTH:
            raise self.error("lists nested too deeply", token)
        self.index += 1
        items: list[Item] = []
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
            items.append(Item(token.start, end, token.line, value, quote))
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
    if b"\\" not in body:
        return body.decode("utf-8", "replace")  # nothing to undo (most strings)
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


def parse_xl(data: bytes, display: str) -> tuple[list[Setting], Lines, list[str]]:
    lines = Lines(data, XL_NEWLINE)
    notes: list[str] = []
    tokens = _tokenize_xl(data, display, lines, notes)
    settings = _XlParser(data, display, tokens).settings()
    return settings, lines, notes
