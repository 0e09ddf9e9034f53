"""``pcipass check``, ``hide``, ``unhide``, ``status``, ``recover``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pcipass.errors import UsageError

if TYPE_CHECKING:
    from pcipass.address import PciAddress
    from pcipass.backend import Backend
    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("hide", "unhide", "check"):
        parser.add_argument("addresses", nargs="+" if name != "check" else "*", metavar="BDF")
    if name == "check":
        parser.add_argument(
            "--guest",
            action="append",
            metavar="GUEST",
            help="check this guest's configuration (repeatable); without BDF or "
            "--guest, everything: held devices, all guests, persistent files",
        )
    if name in ("hide", "unhide"):
        parser.add_argument(
            "--now", action="store_true", help="rebind through sysfs now (no reboot)"
        )
        parser.add_argument(
            "--persist",
            action="store_true",
            help="also at every boot (modprobe configuration / kernel command line)",
        )
        parser.add_argument(
            "--platform",
            choices=["rhel5", "modprobe.d", "cmdline"],
            help="persistence method (default: detected from the root)",
        )
        parser.add_argument(
            "--regenerate",
            action="store_true",
            help="with --persist: also run the initramfs / grub regeneration command pcipass "
            "names (default: only print it)",
        )
    if name == "recover":
        parser.add_argument(
            "--rebuild-ledger",
            action="store_true",
            help="the state database lost its records: rebuild owners from the guest "
            "configurations and hidden devices from the bindings (the old file is kept)",
        )
    if name == "hide":
        parser.add_argument(
            "--backend",
            choices=["pciback", "vfio"],
            help="stub driver: pciback (Xen) or vfio (KVM); default: pciback "
            "on a Xen dom0, vfio otherwise",
        )
        parser.add_argument(
            "--group", action="store_true", help="take the whole IOMMU group of each device"
        )
        parser.add_argument(
            "--reload-driver",
            action="store_true",
            help="with --persist: apply it now the document's way, reloading the device's "
            "driver (every function it drives is unbound and probed again); refused when "
            "another of them is used by the host",
        )


def _addresses(args: argparse.Namespace, host: Host) -> list[PciAddress]:
    from pcipass.cli.addresses import device_addresses

    return device_addresses(host, args.addresses)


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json

    if name == "check":
        return _check(args, host)
    if name == "status":
        from pcipass.ops.status import status

        report = status(host)
        if args.json:
            print_json(report.to_json())
        else:
            print(report.render())
        return 0
    if name == "recover":
        from pcipass.ops.recover import rebuild_ledger, recover

        recovered = rebuild_ledger(host) if args.rebuild_ledger else recover(host)
        if args.json:
            print_json({"recovered": recovered})
        else:
            print("\n".join(recovered) or "nothing to recover: the journal is empty; no change")
        return 1 if any(": could not undo " in line for line in recovered) else 0
    if not args.now and not args.persist:
        raise UsageError(
            name, "say --now (rebind through sysfs), --persist (at every boot), or both"
        )
    from pcipass.ops.hide import hide, unhide, with_groups

    addresses = _addresses(args, host)
    if name == "hide":
        if args.group:
            addresses = with_groups(host, addresses)
        if args.reload_driver and (args.now or not args.persist):
            raise UsageError(
                "--reload-driver",
                "goes with --persist alone (--now already rebinds the devices one by one)",
            )
        outcome = hide(
            host,
            addresses,
            _backend(args, host),
            now=args.now,
            persist=args.persist,
            platform=args.platform,
            dry_run=args.dry_run,
            reload_driver=args.reload_driver,
        )
    else:
        outcome = unhide(
            host,
            addresses,
            now=args.now,
            persist=args.persist,
            platform=args.platform,
            dry_run=args.dry_run,
        )
    lines = outcome.render_lines()
    if args.regenerate and not args.dry_run and outcome.persist is not None:
        from pcipass.cli.render import progress

        for argv in outcome.persist.regenerate:
            progress(f"running {' '.join(argv)} (can take a minute)")
            host.runner.run(argv, timeout=600.0).check()
            lines.append(f"  ran: {' '.join(argv)}")
    if not args.dry_run and not outcome.changed:
        lines.append("no change")
    if args.json:
        print_json(outcome.to_json())
    else:
        print("\n".join(lines))
    return 0


def _backend(args: argparse.Namespace, host: Host) -> Backend:
    from pcipass.backend import Backend

    if args.backend:
        return Backend(args.backend)
    return Backend.PCIBACK if host.is_xen_dom0 else Backend.VFIO


def _check(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.check import run_check

    report = run_check(host, _addresses(args, host) if args.addresses else [], args.guest)
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return report.exit_code
