"""The argument parser, built from the command table (:mod:`pcipass.cli.commands`).

A run builds only its command's sub-parser (:func:`command_word`); ``--help``,
the man page (packaging/build_manpage.py) and the completion script
(packaging/build_completion.py) get the whole parser.
"""

from __future__ import annotations

import argparse
import os
import sys

from pcipass import __version__
from pcipass.cli import declare
from pcipass.cli.commands import COMMANDS
from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _terminal_columns() -> int:
    """What shutil.get_terminal_size() answers ($COLUMNS, else the terminal
    of stdout, else 80), without importing shutil (and with it bz2, lzma)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter with the width found by :func:`_terminal_columns`:
    argparse builds a formatter to check every ``add_argument``, and its own
    width lookup imports shutil (with bz2 and lzma), 1.5 ms of every command (issue #13)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # argparse's own margin
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing and exiting,
    so a usage error reaches the one error path of :func:`main` (and, with
    ``--json``, prints a JSON object like every other outcome)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)  # sub-parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # argparse's wording ("invalid choice", "unrecognized arguments") is
        # kept: scripts (the lab agent) read it.
        subject = self.prog.partition(" ")[2]  # "pcipass hide" -> "hide"
        raise UsageError(subject, message, f"see `{self.prog} --help`")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, the same parser carrying only that
    command's sub-parser (what a run of that command needs: building all of
    them and importing every handler module was a tenth of the start-up cost,
    issue #13).  ``--help``, the man page and the completion script use the
    whole parser."""
    parser = _Parser(
        prog="pcipass",
        description="Give virtual machines exclusive, safe use of host PCI devices "
        "(Xen pciback, KVM vfio-pci).",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 refused by a rule, 4 not found, "
        "130 interrupted (143 terminated).",
    )
    parser.add_argument("--version", action="version", version=f"pcipass {__version__}")
    declare.global_options(parser, top=True, suppress=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        if only is not None and command.name != only:
            continue
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        declare.command_arguments(command, child, suppress=argparse.SUPPRESS)
    return parser
