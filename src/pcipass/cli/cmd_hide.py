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


def _addresses(args: argparse.Namespace) -> list[PciAddress]:
    from pcipass.address import PciAddress

    seen: list[PciAddress] = []
    for text in args.addresses:
        address = PciAddress.parse(text)
        if address not in seen:
            seen.append(address)
    return seen


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
        from pcipass.ops.rebind import recover

        recovered = recover(host)
        if args.json:
            print_json({"recovered": recovered})
        else:
            print("\n".join(recovered) or "nothing to recover: the journal is empty")
        return 0
    if not args.now and not args.persist:
        raise UsageError(
            name, "say --now (rebind through sysfs), --persist (at every boot), or both"
        )
    addresses = _addresses(args)
    if name == "hide" and args.group:
        addresses = _with_groups(host, addresses)
    outputs: dict[str, object] = {}
    lines: list[str] = []
    if args.now:
        from pcipass.ops.rebind import hide_now, unhide_now

        if name == "hide":
            result = hide_now(host, addresses, _backend(args, host), dry_run=args.dry_run)
        else:
            result = unhide_now(host, addresses, dry_run=args.dry_run)
        outputs["now"] = result.to_json()
        lines += [f.render() for f in result.findings]
        if args.dry_run:
            lines += ["would run:"] + [f"  {s}" for s in result.steps]
        for device in result.done:
            verb = "hidden" if name == "hide" else "given back"
            if device.get("changed") and name == "hide":
                lines.append(
                    f"{device['address']}: hidden now (driver {device['driver']}, "
                    f"was {device.get('original_driver') or 'none'})"
                )
            elif device.get("changed"):
                lines.append(
                    f"{device['address']}: given back now (driver {device['driver'] or 'none'})"
                )
            else:
                lines.append(
                    f"{device['address']}: already {verb} (driver {device['driver'] or 'none'})"
                )
    if args.persist:
        from pcipass.ops.persist import hide_persist, unhide_persist

        if name == "hide":
            presult = hide_persist(
                host, addresses, _backend(args, host), platform=args.platform, dry_run=args.dry_run
            )
        else:
            presult = unhide_persist(host, addresses, platform=args.platform, dry_run=args.dry_run)
        outputs["persist"] = presult.to_json()
        if args.now:
            # --now already printed the device findings and did the rebind.
            presult.findings = [f for f in presult.findings if f.render() not in lines]
            presult.notes = [n for n in presult.notes if "add --now" not in n]
        lines += presult.render_lines()
        if args.regenerate and not args.dry_run:
            from pcipass.cli.render import progress

            for argv in presult.regenerate:
                progress(f"running {' '.join(argv)} (can take a minute)")
                host.runner.run(argv, timeout=600.0).check()
                lines.append(f"  ran: {' '.join(argv)}")
    if args.json:
        print_json(outputs)
    else:
        print("\n".join(lines))
    return 0


def _backend(args: argparse.Namespace, host: Host) -> Backend:
    from pcipass.backend import Backend

    if args.backend:
        return Backend(args.backend)
    return Backend.PCIBACK if host.is_xen_dom0 else Backend.VFIO


def _with_groups(host: Host, addresses: list[PciAddress]) -> list[PciAddress]:
    from pcipass.ops.inventory import inventory

    inv = inventory(host)
    by = inv.by_address()
    result = list(addresses)
    for address in addresses:
        info = by.get(address)
        if info is None:
            continue
        for member in info.group_members:
            if member not in result and not by[member].device.is_bridge:
                result.append(member)
    return result


def _check(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.check import run_check
    from pcipass.policy.verdict import worst_exit

    report = run_check(host, _addresses(args) if args.addresses else [], args.guest)
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    return worst_exit(report.findings)
