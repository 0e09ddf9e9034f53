"""The command line: parse, build one Host, call one operation, render.

Commands are data (:data:`COMMANDS`, in :mod:`pcipass.cli.commands`): name,
handler module, help and whether it takes ``--dry-run``.  Errors are turned
into messages and exit codes in exactly one place (:func:`main`, through
:mod:`pcipass.cli.outcome`).

Start-up is part of every command's cost (issue #13), so this module imports
almost nothing: ``pcipass --version`` loads neither argparse nor typing; a
command loads the parser with only its own sub-parser, and heavy modules are
imported by the handler that needs them.
"""

from __future__ import annotations

import sys

from pcipass import __version__
from pcipass.cli.commands import COMMANDS, Command, command_word
from pcipass.cli.streams import GuardedStdout

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from pcipass.host.context import Host

__all__ = ["COMMANDS", "Command", "build_parser", "command_word", "main", "run"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser (:func:`pcipass.cli.parser.build_parser`); named here for
    the man page and completion builders, which read ``main.build_parser``."""
    from pcipass.cli import parser

    return parser.build_parser(only)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is its outcome, whatever happens to stdout.

    Every write to stdout goes through :class:`GuardedStdout`: a reader that
    went away or a full disk never replaces the command's own exit code with
    0, 120 or a traceback (see :mod:`pcipass.cli.streams`).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args_list)
    saved = sys.stdout
    guard = GuardedStdout(saved)
    sys.stdout = guard
    try:
        code = _dispatch(args_list, as_json=as_json)
        guard.flush()
    finally:
        sys.stdout = saved
    if guard.failure is not None:
        guard.silence()
        if not guard.reader_gone:
            from pcipass.errors import ExitCode

            # The answer was lost: say so on stderr, and never exit 0.
            problem = guard.failure.strerror or str(guard.failure)
            print(f"pcipass: standard output: write failed: {problem}", file=sys.stderr)
            code = code or int(ExitCode.FAILED)
    return code


def _wants_json(args_list: list[str]) -> bool:
    """Whether ``--json`` was asked for, known before parsing (a usage error
    found by the parser is answered in JSON too).  Words after ``--`` are
    operands, not options."""
    words = args_list[: args_list.index("--")] if "--" in args_list else args_list
    return "--json" in words


def _dispatch(args_list: list[str], *, as_json: bool) -> int:
    if args_list == ["--version"]:
        # Answered before anything is imported or built: scripts call this in loops.
        print(f"pcipass {__version__}")
        return 0
    import importlib
    import signal

    from pcipass import interrupt
    from pcipass.cli.outcome import HostOSError, report_error, report_interrupt
    from pcipass.errors import ExitCode, PcipassError, UsageError

    try:
        word = command_word(args_list)
        args = _quick_parse(args_list, word) if word is not None else None
        if args is None:
            # Help, usage errors and unusual forms: argparse, with its own messages.
            parser = build_parser(word)
            try:
                args = parser.parse_args(args_list)
            except SystemExit as exit_:  # --help and --version: argparse printed them
                return int(exit_.code) if isinstance(exit_.code, int) else int(ExitCode.USAGE)
            if getattr(args, "_command", None) is None:
                if not as_json:
                    parser.print_help(sys.stderr)
                raise UsageError("", "no command given", "see `pcipass --help`")
        command: Command = args._command
        interrupt.install()  # SIGINT/SIGTERM roll back like errors (pcipass/interrupt.py)
        _describe_for_the_lock(args_list)
        host = _open_host(args.root)
        module = importlib.import_module(f"pcipass.cli.{command.module}")
        runner: Callable[[str, argparse.Namespace, Host], int] = module.run
        return runner(command.name, args, host)
    except PcipassError as error:
        return report_error(error, as_json=as_json)
    except interrupt.Interrupted as stop:
        # SIGINT/SIGTERM during a transaction: it was rolled back first (ops/transaction.py).
        return report_interrupt(stop.signum, as_json=as_json, undone=stop.undone)
    except KeyboardInterrupt:
        return report_interrupt(signal.SIGINT, as_json=as_json)
    except UnicodeDecodeError as error:
        # Text read from stdin or a file in an encoding the locale cannot read.
        return report_error(
            UsageError("input", f"not valid {error.encoding} text", "give UTF-8 text"),
            as_json=as_json,
        )
    except OSError as error:
        return report_error(HostOSError(error), as_json=as_json)


def _quick_parse(args_list: list[str], word: str) -> argparse.Namespace | None:
    """A plain command line, parsed without argparse (pcipass/cli/quick_args.py)."""
    from pcipass.cli import quick_args

    return quick_args.parse(args_list, word)


def _describe_for_the_lock(args_list: list[str]) -> None:
    """Who this command is, for others that wait for the state lock, and how
    it says that it waits itself (once, on stderr: --json keeps stdout)."""
    from pcipass.ops.lock_holder import introduce

    def notice(message: str) -> None:
        print(f"pcipass: {message}", file=sys.stderr, flush=True)

    introduce(["pcipass", *args_list], notice)


def _open_host(root: str) -> Host:
    from pcipass.host.context import Host

    host = Host.for_command(root)
    if host.simulated_notice:
        print(f"pcipass: {host.simulated_notice}", file=sys.stderr)
    return host


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
