"""What each command accepts, declared once for both parsers.

:mod:`pcipass.cli.parser` hands these functions argparse parsers (help,
errors, the man page and completion); :mod:`pcipass.cli.quick_args` hands
them a recorder, to parse plain command lines without importing argparse.
Neither may import argparse here: the sentinel for "no default" comes from
the caller (argparse compares it by identity).
"""

from __future__ import annotations

import importlib
import os

from pcipass.cli.commands import Command

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable


def global_options(parser: argparse.ArgumentParser, *, top: bool, suppress: str) -> None:
    """``--root`` and ``--json``: accepted before or after the command.  The
    sub-parser's copy must not overwrite a value given before the command,
    hence ``suppress`` (argparse.SUPPRESS) as its default there.
    PCIPASS_ROOT lets hooks and wrappers (which get no --root) act on a tree."""
    default_root = os.environ.get("PCIPASS_ROOT", "/") if top else suppress
    default_json: object = False if top else suppress
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=default_root,
        help="treat DIR as the host's / (a fake tree, an image); default /",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default_json,
        help="print machine-readable JSON (schema: docs/json.md)",
    )


def command_arguments(command: Command, parser: argparse.ArgumentParser, *, suppress: str) -> None:
    """Everything ``command``'s sub-parser takes: the global options, ``--dry-run``
    from the table, the handler module's own (``add_arguments``), and the
    command itself as a default (``args._command``)."""
    global_options(parser, top=False, suppress=suppress)
    if command.dry_run:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="show what would be done (diffs, sysfs writes); change nothing",
        )
    module = importlib.import_module(f"pcipass.cli.{command.module}")
    adder: Callable[[str, argparse.ArgumentParser], None] = module.add_arguments
    adder(command.name, parser)
    parser.set_defaults(_command=command)
