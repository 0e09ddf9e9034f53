"""The shell assignments of ``/etc/default/grub``, found and valued without a shell.

grub-mkconfig sources ``/etc/default/grub`` (then Debian's grub.d snippets).
pcipass never runs it: this lexer is just good enough to find each
``NAME=value`` assignment and the bytes of its value, and to say what the
shell would make of the value (quotes, escapes, ``$VAR`` expansions of
variables set earlier).  What it cannot follow safely (command substitution,
a heredoc, the variable set inside an ``if``, ``unset``) is reported, so an
edit refuses instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pcipass.compat import zip_equal
from pcipass.errors import ConfigSyntaxError
from pcipass.host.platform import DEFAULT_GRUB_FILE
from pcipass.patterns import lazy
from pcipass.record import dataclass, field

#: The comment pcipass writes above a variable it created or extended.
MARKER = "# pcipass: added"
#: Appended to MARKER when pcipass also added the newline before the comment.
EOL_NOTE = " (and the newline before this comment)"

_NAME = lazy(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_OPEN = frozenset({"if", "while", "until", "for", "case", "select", "{"})
_RESERVED_CLOSE = frozenset({"fi", "done", "esac", "}"})
_RESERVED_LEAD = frozenset({"then", "do", "else", "elif", "!"})


# --------------------------------------------------------------------------
# A shell lexer just good enough to find assignments and their bytes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Part of a shell word: bare text, "double-quoted" or 'single-quoted'."""

    kind: str  # "bare", "dq", "sq"
    start: int  # byte offset of the segment (the opening quote for dq/sq)
    end: int  # byte offset after it (after the closing quote)

    @property
    def content_start(self) -> int:
        return self.start if self.kind == "bare" else self.start + 1

    @property
    def content_end(self) -> int:
        return self.end if self.kind == "bare" else self.end - 1


@dataclass
class _Word:
    start: int
    end: int = 0
    segments: list[Segment] = field(default_factory=list)
    unsafe: str | None = None  # why its value cannot be known without running the shell


@dataclass
class _Command:
    line: int
    depth: int
    words: list[_Word] = field(default_factory=list)
    unsafe: str | None = None


@dataclass(frozen=True)
class Assignment:
    """``NAME=value`` at the top level of the file."""

    name: str
    line: int  # 1-based line of the assignment
    value_start: int  # byte offset of the value (just after "=")
    value_end: int
    segments: tuple[Segment, ...]  # the value's segments
    unsafe: str | None
    marked: bool  # preceded by pcipass's "# pcipass: added NAME" comment


@dataclass(frozen=True)
class ShellFile:
    """The assignments of a shell fragment, and what makes editing it unsafe."""

    data: bytes
    path: str
    assignments: tuple[Assignment, ...]
    blocked: Mapping[str, tuple[str, int]]  # variable -> (why pcipass must not edit it, line)
    error: str | None  # the file could not be followed at all (from this line on)

    @classmethod
    def parse(cls, data: bytes, path: str = DEFAULT_GRUB_FILE) -> ShellFile:
        commands, error = _lex(data)
        assignments: list[Assignment] = []
        blocked: dict[str, tuple[str, int]] = {}
        for command in commands:
            _collect(data, command, assignments, blocked)
        return cls(data, path, tuple(assignments), blocked, error)

    def last(self, name: str) -> Assignment | None:
        found = [a for a in self.assignments if a.name == name]
        return found[-1] if found else None


class _Lexer:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.i = 0
        self.line = 1
        self.depth = 0  # open if/while/case/{ ...
        self.parens = 0  # open ( subshells
        self.commands: list[_Command] = []
        self.command: _Command | None = None
        self.word: _Word | None = None
        self.pending_unsafe: str | None = None
        self.open_list = False  # after &&, || or |: the next word continues the list

    # --- words and commands ---------------------------------------------------
    def _word(self, start: int) -> _Word:
        if self.word is None:
            if self.command is None:
                self.command = _Command(self.line, self.depth + self.parens)
            self.word = _Word(start)
        return self.word

    def _add_segment(self, kind: str, start: int, end: int) -> None:
        word = self._word(start)
        if self.open_list and self.command is not None:
            self.command.depth = max(self.command.depth, 1)  # runs only if the list says so
        self.open_list = False
        if self.pending_unsafe:
            word.unsafe = self.pending_unsafe
            self.pending_unsafe = None
        if kind == "bare" and word.segments and word.segments[-1].kind == "bare":
            last = word.segments[-1]
            if last.end == start:
                word.segments[-1] = Segment("bare", last.start, end)
                return
        word.segments.append(Segment(kind, start, end))

    def _end_word(self) -> None:
        if self.word is not None and self.command is not None:
            self.word.end = self.i
            self.command.words.append(self.word)
            self._track_depth()
        self.word = None

    def _track_depth(self) -> None:
        assert self.command is not None
        words = self.command.words
        if len(words) != 1:
            return
        text = self.data[words[0].start : words[0].end].decode("latin-1")
        if text in _RESERVED_OPEN:
            self.depth += 1
        elif text in _RESERVED_CLOSE:
            self.depth = max(0, self.depth - 1)
        if text in _RESERVED_OPEN or text in _RESERVED_CLOSE or text in _RESERVED_LEAD:
            # What follows a reserved word is a command of its own (conditional).
            self.command.depth = max(self.command.depth, self.depth + self.parens, 1)

    def _end_command(self) -> None:
        self._end_word()
        if self.command is not None and self.command.words:
            self.commands.append(self.command)
        self.command = None

    # --- scanning -------------------------------------------------------------
    def run(self) -> str | None:
        data = self.data
        while self.i < self.n:
            c = data[self.i]
            if c in b" \t":  # sh splits words on blanks only; \r is part of a word
                self._end_word()
                self.i += 1
            elif c == 0x0A:
                self._end_command()
                self.i += 1
                self.line += 1
            elif c in b";&|":
                pair = data[self.i : self.i + 2]
                if c == 0x7C and pair != b"||" and self.command is not None:
                    self.command.depth = max(self.command.depth, 1)  # a pipeline's subshell
                self._end_command()
                # "a &&", "a ||" and "a |" need a next command: text appended
                # after them would become part of that list.
                self.open_list = pair in (b"&&", b"||") or (c == 0x7C and pair != b"||")
                self.i += 2 if pair in (b"&&", b"||", b";;") else 1
                continue
            elif c in b"()":
                if c == 0x28 and self.word is not None and data[self.i + 1 : self.i + 2] != b")":
                    # "word(" is a syntax error in sh (only "name()" defines a function).
                    return f"line {self.line}: unexpected '(' (sh would refuse this file)"
                self._end_command()
                if c == 0x28:
                    self.parens += 1
                elif self.parens:
                    self.parens -= 1
                # else: the ")" that ends a case pattern
                self.i += 1
            elif c in b"<>":
                if data[self.i : self.i + 2] == b"<<":
                    return f"line {self.line}: a heredoc (<<) is beyond what pcipass edits"
                self._end_word()
                if self.command is None:
                    self.command = _Command(self.line, self.depth + self.parens)
                self.command.unsafe = "a redirection"
                self.i += 1
            elif c == 0x23 and self.word is None:  # '#' starts a comment
                while self.i < self.n and data[self.i] != 0x0A:
                    self.i += 1
            else:
                problem = self._scan_word_part()
                if problem:
                    return problem
        self._end_command()
        if self.open_list:
            return f"line {self.line}: the file ends in the middle of a command list (&&, || or |)"
        return None

    def _scan_word_part(self) -> str | None:
        data = self.data
        c = data[self.i]
        start = self.i
        if c == 0x27:  # single quote: no escapes at all
            close = data.find(b"'", self.i + 1)
            if close < 0:
                return f"line {self.line}: unterminated single quote"
            self.line += data.count(b"\n", self.i, close)
            self.i = close + 1
            self._add_segment("sq", start, self.i)
            return None
        if c == 0x22:  # double quote
            self.i += 1
            while self.i < self.n and data[self.i] != 0x22:
                problem = self._scan_dollar_or_escape(in_dq=True)
                if problem:
                    return problem
            if self.i >= self.n:
                return f"line {self.line}: unterminated double quote"
            self.i += 1
            self._add_segment("dq", start, self.i)
            return None
        problem = self._scan_dollar_or_escape(in_dq=False)
        if problem:
            return problem
        self._add_segment("bare", start, self.i)
        return None

    def _scan_dollar_or_escape(self, *, in_dq: bool) -> str | None:
        """Advance over one character (or escape / expansion) of a word."""
        data = self.data
        c = data[self.i]
        if c == 0x5C:  # backslash
            if self.i + 1 >= self.n:
                return f"line {self.line}: the file ends in a backslash"
            if data[self.i + 1] == 0x0A:
                self.line += 1
            self.i += 2
            return None
        if c == 0x60:  # backtick
            self.pending_unsafe = "command substitution (`...`)"
            close = self.i + 1
            while close < self.n and data[close] != 0x60:
                close += 2 if data[close] == 0x5C else 1
            if close >= self.n:
                return f"line {self.line}: unterminated backquote"
            self.line += data.count(b"\n", self.i, close)
            self.i = close + 1
            return None
        if c == 0x24 and self.i + 1 < self.n and data[self.i + 1] == 0x28:  # $(
            self.pending_unsafe = "command substitution $(...)"
            return self._skip_parens()
        if c == 0x24 and self.i + 1 < self.n and data[self.i + 1] == 0x7B:  # ${
            close = data.find(b"}", self.i)
            if close < 0:
                return f"line {self.line}: unterminated ${{"
            self.i = close + 1
            return None
        if c == 0x0A:
            self.line += 1
        if not in_dq and c in b" \t\n;&|()<>'\"":
            return None  # end of the bare run (never reached for the first byte)
        self.i += 1
        if not in_dq:
            # keep consuming a bare run
            while self.i < self.n and data[self.i] not in b" \t\n;&|()<>'\"\\`$":
                self.i += 1
        return None

    def _skip_parens(self) -> str | None:
        data = self.data
        depth = 0
        quote = 0
        while self.i < self.n:
            c = data[self.i]
            if c == 0x0A:
                self.line += 1
            if quote:
                if c == 0x5C and quote == 0x22:
                    self.i += 1
                elif c == quote:
                    quote = 0
            elif c in b"'\"":
                quote = c
            elif c == 0x5C:
                self.i += 1
            elif c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    self.i += 1
                    return None
            self.i += 1
        return f"line {self.line}: unterminated $("


def _lex(data: bytes) -> tuple[list[_Command], str | None]:
    lexer = _Lexer(data)
    error = lexer.run()
    return lexer.commands, error


def _collect(
    data: bytes,
    command: _Command,
    assignments: list[Assignment],
    blocked: dict[str, tuple[str, int]],
) -> None:
    words = command.words
    texts = [data[w.start : w.end].decode("latin-1") for w in words]
    first = 1 if texts and texts[0] in ("export", "readonly") else 0
    assigns = [_split_assignment(data, w) for w in words[first:]]
    all_assign = all(a is not None for a in assigns)
    for word, split in zip_equal(words[first:], assigns):
        if split is None:
            continue
        name, value_start, segments = split
        if command.depth > 0:
            blocked.setdefault(
                name,
                (
                    "set conditionally (in an if/case/loop/function, after && or ||, "
                    "or in a pipeline)",
                    command.line,
                ),
            )
            continue
        if command.unsafe:
            blocked.setdefault(name, (f"set together with {command.unsafe}", command.line))
            continue
        if not all_assign:
            continue  # NAME=value cmd: only the command's environment
        assignments.append(
            Assignment(
                name,
                command.line,
                value_start,
                word.end,
                segments,
                word.unsafe,
                _marked(data, word.start, name),
            )
        )
    # Any other mention of a name as a word (unset NAME, read NAME, NAME+=...)
    for text in texts:
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\+=.*", text, re.DOTALL)
        if match:
            blocked.setdefault(match.group(1), ("appended to with +=", command.line))
    if texts and texts[0] in ("unset", "read"):
        for text in texts[1:]:
            if _NAME.fullmatch(text):
                blocked.setdefault(text, (f"given to {texts[0]}", command.line))


def _split_assignment(data: bytes, word: _Word) -> tuple[str, int, tuple[Segment, ...]] | None:
    if not word.segments or word.segments[0].kind != "bare":
        return None
    head = word.segments[0]
    text = data[head.start : head.end].decode("latin-1")
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", text)
    if match is None:
        return None
    value_start = head.start + match.end()
    rest: list[Segment] = []
    if value_start < head.end:
        rest.append(Segment("bare", value_start, head.end))
    rest.extend(word.segments[1:])
    return match.group(1), value_start, tuple(rest)


def _marked(data: bytes, word_start: int, name: str) -> bool:
    line_start = data.rfind(b"\n", 0, word_start) + 1
    if data[line_start:word_start].strip(b" \t") not in (b"", b"export"):
        return False
    previous_end = line_start - 1
    if previous_end < 0:
        return False
    previous_start = data.rfind(b"\n", 0, previous_end) + 1
    previous = data[previous_start:previous_end].decode("latin-1")
    return previous in (f"{MARKER} {name}", f"{MARKER} {name}{EOL_NOTE}")


# --------------------------------------------------------------------------
# Values: what the shell would make of an assignment, character by character
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """An expanded value; ``origins[k]`` is the byte offset of character k in
    the file when it is a literal copy of that byte, or None (expansion,
    escape)."""

    text: str
    origins: tuple[int | None, ...]

    def literal_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The file bytes that hold text[start:end] verbatim, if any."""
        if start >= end:
            return None
        first = self.origins[start]
        if first is None:
            return None
        for k in range(start, end):
            if self.origins[k] != first + (k - start):
                return None
        return first, first + (end - start)


def evaluate(data: bytes, assignment: Assignment, env: Mapping[str, str]) -> Value:
    """The value the shell assigns (``$NAME`` taken from ``env``); never runs anything."""
    if assignment.unsafe:
        raise ConfigSyntaxError(
            DEFAULT_GRUB_FILE, f"{assignment.name} uses {assignment.unsafe}", assignment.line
        )
    chars: list[str] = []
    origins: list[int | None] = []
    for segment in assignment.segments:
        _evaluate_segment(data, segment, env, (chars, origins), assignment)
    return Value("".join(chars), tuple(origins))


def _evaluate_segment(
    data: bytes,
    segment: Segment,
    env: Mapping[str, str],
    out: tuple[list[str], list[int | None]],
    assignment: Assignment,
) -> None:
    chars, origins = out
    i, end = segment.content_start, segment.content_end
    if segment.kind == "sq":
        for k in range(i, end):
            chars.append(chr(data[k]))
            origins.append(k)
        return
    escapable = b'$`"\\\n' if segment.kind == "dq" else None
    while i < end:
        c = data[i]
        if c == 0x5C and i + 1 < end:
            nxt = data[i + 1]
            if escapable is None or nxt in escapable:
                if nxt != 0x0A:  # backslash-newline vanishes
                    chars.append(chr(nxt))
                    origins.append(None)
                i += 2
                continue
        if c == 0x24 and i + 1 < end:
            name, consumed = _expansion(data, i, end, assignment)
            if consumed:
                for ch in env.get(name, ""):
                    chars.append(ch)
                    origins.append(None)
                i += consumed
                continue
        chars.append(chr(c))
        origins.append(i)
        i += 1


def _expansion(data: bytes, i: int, end: int, assignment: Assignment) -> tuple[str, int]:
    """``$NAME`` or ``${NAME}`` at i: (name, bytes consumed); (\"\", 0) if just a '$'."""
    text = data[i + 1 : end].decode("latin-1")
    if text.startswith("{"):
        match = re.match(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
        if match is None:
            raise ConfigSyntaxError(
                DEFAULT_GRUB_FILE,
                f"{assignment.name} uses a ${{...}} form pcipass does not evaluate",
                assignment.line,
            )
        return match.group(1), 1 + match.end()
    match = _NAME.match(text)
    if match is not None:
        return match.group(0), 1 + match.end()
    if text[:1] and text[:1] in "0123456789@*#?-$!":
        raise ConfigSyntaxError(
            DEFAULT_GRUB_FILE,
            f"{assignment.name} uses the shell parameter ${text[0]}",
            assignment.line,
        )
    return "", 0
