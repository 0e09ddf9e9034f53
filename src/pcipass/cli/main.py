"""The command line: parse, build one Host, call one operation, render.

Commands are data (:data:`COMMANDS`): name, handler module, whether it
modifies the host and whether it supports ``--dry-run``.  Errors are turned
into messages and exit codes in exactly one place (:func:`main`).  Heavy
modules are imported only by the handler that needs them, so ``pcipass
--version`` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, NoReturn, TextIO, cast

from pcipass import __version__
from pcipass.cli.streams import GuardedStdout
from pcipass.errors import ExitCode, PcipassError, UsageError, exit_code_for

if TYPE_CHECKING:
    from pcipass.host.context import Host


class Command(NamedTuple):
    name: str
    module: str  # pcipass.cli.<module> defines add_arguments(parser) and run(args, host, out)
    help: str
    modifies: bool
    dry_run: bool


COMMANDS: tuple[Command, ...] = (
    # name, handler module, help, modifies the host, has --dry-run
    Command(
        "list",
        "cmd_inventory",
        "list host PCI devices (driver, IOMMU group, host use)",
        False,
        False,
    ),
    Command(
        "show",
        "cmd_inventory",
        "everything about one device, and whether it can be assigned",
        False,
        False,
    ),
    Command(
        "check",
        "cmd_hide",
        "check devices against every rule; exit 0 ok, 1 warnings, 3 refusals",
        False,
        False,
    ),
    Command("hide", "cmd_hide", "hide devices from the host (--now, --persist)", True, True),
    Command("unhide", "cmd_hide", "give devices back to the host (--now, --persist)", True, True),
    Command(
        "status",
        "cmd_hide",
        "what pcipass holds: hidden devices, owners, interrupted operations",
        False,
        False,
    ),
    Command("recover", "cmd_hide", "roll back operations interrupted half-way", True, False),
    Command(
        "guest-setup",
        "cmd_setup",
        "inside a KVM guest (or an image with --root): acpiphp now and at every boot (PP008)",
        True,
        True,
    ),
    Command("attach", "cmd_guests", "assign a hidden device to a guest (--live too)", True, True),
    Command("detach", "cmd_guests", "take a device back from a guest (--live too)", True, True),
    Command(
        "guard",
        "cmd_guests",
        "refuse save/restore/migrate of a guest holding a device (exit 3; libvirt hook)",
        False,
        False,
    ),
    Command("guests", "cmd_guests", "guest configurations, their devices and rules", False, False),
    Command(
        "export",
        "cmd_export",
        "hidden devices as Proxmox, Nova, KubeVirt or libvirt definitions (prints only)",
        False,
        False,
    ),
    Command(
        "save",
        "cmd_safe",
        "xl guests holding devices: detach live, xl save (PP003's safe path)",
        True,
        False,
    ),
    Command(
        "restore",
        "cmd_safe",
        "xl restore, then attach the saved guest's devices again",
        True,
        False,
    ),
    Command(
        "migrate",
        "cmd_safe",
        "detach live, xl migrate; attach the destination's own devices there",
        True,
        False,
    ),
    Command(
        "explain",
        "cmd_explain",
        "what a toolstack's passthrough error means on this host",
        False,
        False,
    ),
    Command(
        "rom",
        "cmd_rom",
        "a device's option ROM: images, UEFI or legacy-only (--save FILE)",
        False,
        False,
    ),
    Command(
        "guard-install",
        "cmd_hooks",
        "install the save/restore/migrate guard as a libvirt hook and xl/xm wrappers (PP003)",
        True,
        True,
    ),
    Command("pin", "cmd_pins", "name a device by its identity (pin --list)", True, False),
    Command("unpin", "cmd_pins", "forget a pinned name", True, False),
    Command("plan", "cmd_desired", "what apply would change to reach pcipass.toml", False, False),
    Command("apply", "cmd_desired", "converge on /etc/pcipass/pcipass.toml (--boot)", True, True),
    Command("boot-install", "cmd_boot", "run `apply --boot` at every boot (systemd)", True, True),
    Command("boot-uninstall", "cmd_boot", "remove the boot unit boot-install wrote", True, True),
)


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before or after the command: the sub-parser copy must not
    # overwrite a value given before the command, hence SUPPRESS there.
    # PCIPASS_ROOT lets hooks and wrappers (which get no --root) act on a tree.
    default_root = os.environ.get("PCIPASS_ROOT", "/") if top else argparse.SUPPRESS
    default_json = False if top else argparse.SUPPRESS
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


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing and exiting,
    so a usage error reaches the one error path of :func:`main` (and, with
    ``--json``, prints a JSON object like every other outcome)."""

    def error(self, message: str) -> NoReturn:
        # argparse's wording ("invalid choice", "unrecognized arguments") is
        # kept: scripts (the lab agent) read it.
        subject = self.prog.partition(" ")[2]  # "pcipass hide" -> "hide"
        raise UsageError(subject, message, f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pcipass",
        description="Give virtual machines exclusive, safe use of host PCI devices "
        "(Xen pciback, KVM vfio-pci).",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 refused by a rule, 4 not found, "
        "130 interrupted (143 terminated).",
    )
    parser.add_argument("--version", action="version", version=f"pcipass {__version__}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        _global_options(child, top=False)
        if command.dry_run:
            child.add_argument(
                "--dry-run",
                action="store_true",
                help="show what would be done (diffs, sysfs writes); change nothing",
            )
        module = importlib.import_module(f"pcipass.cli.{command.module}")
        adder: Callable[[str, argparse.ArgumentParser], None] = module.add_arguments
        adder(command.name, child)
        child.set_defaults(_command=command)
    return parser


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
    sys.stdout = cast(TextIO, guard)
    try:
        code = _dispatch(args_list, as_json=as_json)
        guard.flush()
    finally:
        sys.stdout = saved
    if guard.failure is not None:
        guard.silence()
        if not guard.reader_gone:
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
    from pcipass import interrupt

    if args_list == ["--version"]:
        # Answered before building the parser: scripts call this in loops.
        print(f"pcipass {__version__}")
        return int(ExitCode.OK)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except SystemExit as exit_:  # --help and --version: argparse printed them
            return int(exit_.code) if isinstance(exit_.code, int) else int(ExitCode.USAGE)
        command: Command | None = getattr(args, "_command", None)
        if command is None:
            if not as_json:
                parser.print_help(sys.stderr)
            raise UsageError("", "no command given", "see `pcipass --help`")
        interrupt.install()  # SIGINT/SIGTERM roll back like errors (pcipass/interrupt.py)
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


class HostOSError(PcipassError):
    """An OSError no layer turned into a pcipass error: still one line, exit 1,
    and in JSON the error object with ``"error": "OSError"`` and ``errno``."""

    def __init__(self, error: OSError) -> None:
        self.errno_name = errno.errorcode.get(error.errno or 0, "")
        remedy = ""
        if error.errno in (errno.EACCES, errno.EPERM):
            remedy = "pcipass changes the host as root; run it with sudo"
        subject = str(error.filename) if error.filename is not None else ""
        super().__init__(subject, error.strerror or str(error), remedy)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["error"] = "OSError"
        data["errno"] = self.errno_name
        return data


def _open_host(root: str) -> Host:
    from pcipass.host.context import Host

    host = Host.for_command(root)
    if host.simulated_notice:
        print(f"pcipass: {host.simulated_notice}", file=sys.stderr)
    return host


def report_error(error: PcipassError, *, as_json: bool) -> int:
    code = exit_code_for(error)
    if as_json:
        from pcipass.cli.render import print_json

        print_json(error.to_json())
    else:
        print(f"pcipass: {error.render()}", file=sys.stderr)
        for finding in getattr(error, "findings", []):
            render = getattr(finding, "render", None)
            if callable(render):
                print(f"  {render()}", file=sys.stderr)
    return int(code)


def report_interrupt(signum: int, *, as_json: bool, undone: Sequence[str] | None = None) -> int:
    """A signal ended the command: exit 128 + signal number (130 for SIGINT,
    143 for SIGTERM, as shells report it); ``undone`` lists what a transaction
    rolled back (empty: it had changed nothing; None: no transaction said).
    The JSON shape is the error object of docs/json.md plus ``signal``/``undone``."""
    name = signal.Signals(signum).name
    code = 128 + int(signum)
    problem = f"interrupted by {name}"
    remedy = "run `pcipass status`; `pcipass recover` rolls back an operation left half-done"
    if as_json:
        from pcipass.cli.render import print_json

        print_json(
            {
                "error": "Interrupted",
                "subject": "pcipass",
                "problem": problem,
                "remedy": remedy,
                "exit_code": code,
                "signal": name,
                "undone": list(undone or ()),
            }
        )
    else:
        for step in undone or ():
            print(f"pcipass: undone: {step}", file=sys.stderr)
        if undone is not None and not undone:
            print("pcipass: nothing had been changed", file=sys.stderr)
        print(f"pcipass: {problem} ({remedy})", file=sys.stderr)
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
