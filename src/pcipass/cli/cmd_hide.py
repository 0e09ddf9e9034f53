"""``pcipass check``, ``hide``, ``unhide``, ``status``, ``recover``."""

from __future__ import annotations

from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.address import PciAddress
    from pcipass.backend import Backend
    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("hide", "unhide", "check"):
        parser.add_argument("addresses", nargs="*", metavar="BDF")
    if name == "check":
        parser.add_argument(
            "--guest",
            action="append",
            metavar="GUEST",
            help="check this guest's configuration (repeatable); without BDF or "
            "--guest, everything: held devices, all guests, persistent files",
        )
        parser.add_argument(
            "--next-boot",
            action="store_true",
            help="forecast which driver claims each device at the next boot and why "
            "(modprobe configuration, initramfs, built-in drivers, the kernel command line "
            "grub will pass); flags host-used devices a stub would take",
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
    if name in ("hide", "unhide"):
        verb = "hide" if name == "hide" else "give back"
        parser.add_argument(
            "--vfs",
            action="append",
            default=[],
            metavar="PF",
            help=f"{verb} every virtual function of the SR-IOV PF (repeatable)",
        )
        parser.add_argument(
            "--all-functions",
            action="store_true",
            help=f"{verb} every function of each device's slot (a GPU with its HDMI audio "
            "and USB-C functions), all or nothing",
        )
    if name == "recover":
        parser.add_argument(
            "--rebuild-ledger",
            action="store_true",
            help="the state database lost its records: rebuild owners from the guest "
            "configurations and hidden devices from the bindings (the old file is kept)",
        )
    if name in ("hide", "unhide"):
        parser.add_argument(
            "--reload-driver",
            action="store_true",
            help="with --persist: apply it now the document's way, reloading the "
            + ("device's driver" if name == "hide" else "stub (pciback / vfio-pci)")
            + " (every function it drives is unbound and probed again); refused when "
            "another of them is used by the host or held by a guest",
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
            "--reset-method",
            metavar="M",
            help="with --now: the kernel's reset methods for each device, in order "
            "(e.g. device_specific, 'pm bus', default); checked against what the kernel "
            "lists (PP122) and put back if the hide fails",
        )
        parser.add_argument(
            "--release-console",
            action="store_true",
            help="with --now, on the boot GPU: unbind fbcon and the firmware framebuffer "
            "(efifb/simpledrm/vesafb) first; bound again if the hide fails (PP120)",
        )


def _addresses(args: argparse.Namespace, host: Host) -> list[PciAddress]:
    from pcipass.cli.addresses import device_addresses

    return device_addresses(host, args.addresses)


def _vf_addresses(
    args: argparse.Namespace, host: Host, given: list[PciAddress]
) -> list[PciAddress]:
    """``--vfs PF``: the PF's VFs (ops/vfs.py), after the addresses given."""
    from pcipass.address import PciAddress
    from pcipass.ops.vfs import vf_addresses

    extra: list[PciAddress] = []
    for text in args.vfs:
        for vf in vf_addresses(host, PciAddress.parse(text), verb=args._command.name):
            if vf not in given and vf not in extra:
                extra.append(vf)
    return extra


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
    from pcipass.ops.hide import hide, unhide, with_functions, with_groups

    addresses = _addresses(args, host)
    if args.reload_driver and (args.now or not args.persist):
        raise UsageError(
            "--reload-driver",
            "goes with --persist alone (--now already rebinds the devices one by one)",
        )
    addresses += _vf_addresses(args, host, addresses)
    if not addresses:
        raise UsageError(name, "name the devices (BDF), or --vfs PF")
    if args.all_functions:
        addresses = with_functions(host, addresses)
    if name == "hide":
        if args.group:
            addresses = with_groups(host, addresses)
        if args.reset_method is not None and not args.now:
            raise UsageError(
                "--reset-method", "goes with --now (it is set when the device moves)", "add --now"
            )
        if args.release_console and not args.now:
            raise UsageError(
                "--release-console",
                "goes with --now (the console is released when the device moves)",
                "add --now",
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
            release_console=args.release_console,
            reset_method=None if args.reset_method is None else _reset_methods(args.reset_method),
        )
    else:
        outcome = unhide(
            host,
            addresses,
            now=args.now,
            persist=args.persist,
            platform=args.platform,
            dry_run=args.dry_run,
            reload_driver=args.reload_driver,
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


def _reset_methods(text: str) -> list[str]:
    from pcipass.ops.reset_method import parse_methods

    return parse_methods(text)


def _backend(args: argparse.Namespace, host: Host) -> Backend:
    from pcipass.backend import Backend

    if args.backend:
        return Backend(args.backend)
    return Backend.PCIBACK if host.is_xen_dom0 else Backend.VFIO


def _check(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.check import run_check

    if args.next_boot:
        if args.guest:
            raise UsageError("--next-boot", "forecasts devices, not guests: drop --guest")
        from pcipass.ops.forecast import next_boot

        forecast = next_boot(host, _addresses(args, host) if args.addresses else [])
        if args.json:
            print_json(forecast.to_json())
        else:
            print(forecast.render())
        return forecast.exit_code
    report = run_check(host, _addresses(args, host) if args.addresses else [], args.guest)
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return report.exit_code
