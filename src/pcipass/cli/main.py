"""The command line: parse, build one Host, call one operation, render.

Commands are data (:data:`COMMANDS`): name, handler module, whether it
modifies the host and whether it supports ``--dry-run``.  Errors are turned
into messages and exit codes in exactly one place (:func:`main`).  Heavy
modules are imported only by the handler that needs them, so ``pcipass
--version`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from pcipass import __version__
from pcipass.errors import ExitCode, PcipassError, exit_code_for

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcipass",
        description="Give virtual machines exclusive, safe use of host PCI devices "
        "(Xen pciback, KVM vfio-pci).",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 refused by a rule, 4 not found.",
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
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list == ["--version"]:
        # Answered before building the parser: scripts call this in loops.
        print(f"pcipass {__version__}")
        return int(ExitCode.OK)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:
        return int(exit_.code) if isinstance(exit_.code, int) else int(ExitCode.USAGE)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return int(ExitCode.USAGE)
    from pcipass import interrupt

    interrupt.install()  # SIGINT/SIGTERM roll back like errors (pcipass/interrupt.py)
    try:
        host = _open_host(args.root)
        module = importlib.import_module(f"pcipass.cli.{command.module}")
        runner: Callable[[str, argparse.Namespace, Host], int] = module.run
        return runner(command.name, args, host)
    except PcipassError as error:
        return report_error(error, as_json=bool(args.json))
    except interrupt.Interrupted as stop:
        return interrupt.report(stop)
    except KeyboardInterrupt:
        print("pcipass: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return int(ExitCode.OK)


def _open_host(root: str) -> Host:
    from pcipass.host.context import Host

    host = Host.for_command(root)
    if host.simulated_notice:
        print(f"pcipass: {host.simulated_notice}", file=sys.stderr)
    return host


def report_error(error: PcipassError, *, as_json: bool) -> int:
    code = exit_code_for(error)
    if as_json:
        import json

        print(json.dumps(error.to_json(), indent=2))
    else:
        print(f"pcipass: {error.render()}", file=sys.stderr)
        for finding in getattr(error, "findings", []):
            render = getattr(finding, "render", None)
            if callable(render):
                print(f"  {render()}", file=sys.stderr)
    return int(code)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
