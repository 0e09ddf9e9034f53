"""Plain command lines parsed without argparse (issue #13).

Importing argparse (with gettext and locale) and building a sub-parser was
about 5 ms of every command's 40-60 ms.  Most command lines are plain:
exact long options, their values, and one run of operands.  Those are
parsed here from the *same declarations* (:mod:`pcipass.cli.declare`, run
against a recorder instead of a parser), into the namespace argparse would
give.  Anything else (``--help``, an abbreviation, a short option, ``--``,
an option value that starts with ``-``, operands split by options, a value
argparse would reject, a declaration feature not handled here) answers
None, and the caller uses argparse, which then gives its own messages.

``tests/test_quick_args.py`` generates command lines for every command and
checks that whatever is parsed here equals what argparse parses.
"""

from __future__ import annotations

import types

from pcipass.cli import declare
from pcipass.cli.commands import COMMANDS, Command, command_index

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

#: Stands for argparse.SUPPRESS ("set no default") in recorded declarations.
SUPPRESS = "==SUPPRESS==(quick)"

#: (minimum, maximum) operands for each ``nargs`` handled here (None: one).
_OPERANDS: dict[object, tuple[int, float]] = {
    None: (1, 1),
    "?": (0, 1),
    "*": (0, float("inf")),
    "+": (1, float("inf")),
}

_ACTIONS = ("store", "store_true", "store_false", "append")
_KNOWN_KEYWORDS = frozenset(
    {"action", "dest", "default", "type", "choices", "nargs", "metavar", "help", "required"}
)


class Unsupported(Exception):
    """A declaration or a command line this parser leaves to argparse."""


class _Argument:
    """One ``add_argument`` call, as far as parsing goes."""

    __slots__ = ("action", "choices", "default", "dest", "group", "nargs", "required", "type")

    def __init__(self, names: tuple[str, ...], keywords: dict[str, Any], group: int | None) -> None:
        unknown = set(keywords) - _KNOWN_KEYWORDS
        if unknown:
            raise Unsupported(f"keywords {sorted(unknown)}")
        self.action: str = keywords.get("action", "store")
        if self.action not in _ACTIONS:
            raise Unsupported(f"action {self.action}")
        self.nargs = keywords.get("nargs")
        self.type = keywords.get("type")
        if self.type not in (None, int):
            raise Unsupported(f"type {self.type}")
        self.choices = keywords.get("choices")
        self.required = bool(keywords.get("required", False))
        self.group = group
        options = names[0].startswith("-")
        if options:
            if self.nargs is not None:
                raise Unsupported("an option with nargs")
            long_names = [n for n in names if n.startswith("--")]
            dest = keywords.get("dest") or (long_names or list(names))[0].lstrip("-")
            self.dest: str = dest.replace("-", "_") if "dest" not in keywords else dest
        else:
            if self.nargs not in _OPERANDS or self.action != "store" or len(names) != 1:
                raise Unsupported(f"operand {names}")
            self.dest = keywords.get("dest", names[0])
        implied = {"store_true": False, "store_false": True}.get(self.action)
        self.default = keywords.get("default", implied)
        if isinstance(self.default, str) and self.type is not None:
            raise Unsupported("a string default converted by type")  # argparse converts it

    def convert(self, text: str) -> object:
        try:
            value: object = text if self.type is None else self.type(text)
        except ValueError:
            raise Unsupported(f"{text!r} is not a {self.type}") from None
        if self.choices is not None and value not in self.choices:
            raise Unsupported(f"{text!r} is not a choice")
        return value


class Recorder:
    """Takes the declarations a parser would (the subset ``declare`` and the
    handlers' ``add_arguments`` use) and keeps them for :func:`parse`."""

    def __init__(self) -> None:
        self.options: dict[str, _Argument] = {}
        self.operands: list[_Argument] = []
        self.defaults: dict[str, object] = {}
        self._groups = 0
        self._group: int | None = None

    def add_argument(self, *names: str, **keywords: Any) -> None:
        argument = _Argument(names, keywords, self._group)
        if names[0].startswith("-"):
            for name in names:
                if not name.startswith("--"):
                    raise Unsupported(f"short option {name}")
                self.options[name] = argument
        else:
            self.operands.append(argument)

    def add_mutually_exclusive_group(self, required: bool = False) -> _Group:
        if required:
            raise Unsupported("a required group")
        self._groups += 1
        return _Group(self, self._groups)

    def set_defaults(self, **values: object) -> None:
        self.defaults.update(values)

    def arguments(self) -> list[_Argument]:
        seen: list[_Argument] = []
        for argument in [*self.options.values(), *self.operands]:
            if argument not in seen:
                seen.append(argument)
        return seen


class _Group:
    def __init__(self, recorder: Recorder, number: int) -> None:
        self._recorder = recorder
        self._number = number

    def add_argument(self, *names: str, **keywords: Any) -> None:
        self._recorder._group = self._number
        try:
            self._recorder.add_argument(*names, **keywords)
        finally:
            self._recorder._group = None


def parse(args_list: Sequence[str], command_name: str) -> argparse.Namespace | None:
    """The namespace argparse would give for ``args_list`` (whose command word
    is ``command_name``), or None when argparse must answer."""
    command = next(c for c in COMMANDS if c.name == command_name)
    try:
        parsed: argparse.Namespace = _parse(list(args_list), command)
    except Unsupported:
        return None
    return parsed


def _parse(words: list[str], command: Command) -> Any:
    top, sub = Recorder(), Recorder()
    stand_in: Any = top  # the recorder takes the place of the parser declare expects
    declare.global_options(stand_in, top=True, suppress=SUPPRESS)
    stand_in = sub
    declare.command_arguments(command, stand_in, suppress=SUPPRESS)

    at = command_index(words)
    if at is None or words[at] != command.name:
        raise Unsupported("another command word")
    values = _defaults(top)
    values["command"] = command.name
    _take_options(words[:at], top, values, operands=None)
    # argparse parses the rest with the sub-parser into a fresh namespace,
    # then copies it over the top one.
    sub_values = _defaults(sub)
    operands: list[str] = []
    _take_options(words[at + 1 :], sub, sub_values, operands=operands)
    _assign_operands(sub.operands, operands, sub_values)
    values.update(sub_values)
    return types.SimpleNamespace(**values)


def _defaults(recorder: Recorder) -> dict[str, object]:
    """What argparse sets before parsing: the first declared default of each
    destination (unless suppressed), then the parser's own defaults."""
    values: dict[str, object] = {}
    for argument in recorder.arguments():
        if argument.default != SUPPRESS:
            values.setdefault(argument.dest, argument.default)
    for dest, value in recorder.defaults.items():
        values.setdefault(dest, value)
    return values


def _take_options(
    words: list[str], recorder: Recorder, values: dict[str, object], operands: list[str] | None
) -> None:
    """Options into ``values``; operands (one unbroken run) into ``operands``."""
    used_in_group: dict[int, _Argument] = {}
    seen: list[_Argument] = []
    runs = 0
    in_run = False
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("-"):
            if operands is None:
                raise Unsupported("an operand before the command")
            if not in_run:
                runs += 1
                in_run = True
            if runs > 1:
                raise Unsupported("operands split by options")  # argparse's chunks differ
            operands.append(word)
            continue
        in_run = False
        if not word.startswith("--") or word == "--" or " " in word:
            raise Unsupported(f"{word!r}")  # short options, "--", words argparse takes as operands
        name, has_value, explicit = word.partition("=")
        argument = recorder.options.get(name)
        if argument is None:
            raise Unsupported(f"{name}: not an exact option")  # help, abbreviations, typos
        group = argument.group
        if group is not None and used_in_group.setdefault(group, argument) is not argument:
            raise Unsupported("two options of one exclusive group")
        seen.append(argument)
        if argument.action in ("store_true", "store_false"):
            if has_value:
                raise Unsupported(f"{name} takes no value")
            values[argument.dest] = argument.action == "store_true"
            continue
        if has_value:
            text = explicit
        else:
            if index >= len(words) or words[index].startswith("-"):
                raise Unsupported(f"{name} without its value")
            text = words[index]
            index += 1
        value = argument.convert(text)
        if argument.action == "append":
            before = values.get(argument.dest)
            if before is not None and type(before) is not list:
                raise Unsupported("an append default that is not a list")
            values[argument.dest] = [*(before or []), value]
        else:
            values[argument.dest] = value
    for argument in recorder.arguments():
        if argument.required and argument not in seen and argument not in recorder.operands:
            raise Unsupported("a required option is missing")


def _assign_operands(
    declared: list[_Argument], operands: list[str], values: dict[str, object]
) -> None:
    """Operands to their destinations as argparse's greedy pattern match does:
    each takes as many as it can while the later ones still get their minimum."""
    remaining = len(operands)
    position = 0
    for index, argument in enumerate(declared):
        least, most = _OPERANDS[argument.nargs]
        later = sum(_OPERANDS[a.nargs][0] for a in declared[index + 1 :])
        take = int(min(most, remaining - later))
        if take < least:
            raise Unsupported(
                "too few operands"
            )  # argparse: "the following arguments are required"
        chunk = operands[position : position + take]
        position += take
        remaining -= take
        if argument.nargs in (None, "?"):
            if chunk:
                values[argument.dest] = argument.convert(chunk[0])
            else:
                values[argument.dest] = argument.default  # "?" without its operand
        elif chunk:
            values[argument.dest] = [argument.convert(text) for text in chunk]
        else:
            values[argument.dest] = [] if argument.default is None else argument.default
    if remaining:
        raise Unsupported("more operands than declared")  # argparse: "unrecognized arguments"
