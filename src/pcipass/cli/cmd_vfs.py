"""``pcipass vfs PF [N]``: a PF's virtual functions (list, create, change, remove)."""

from __future__ import annotations

from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host

SETTINGS = ("mac", "vlan", "trust", "spoofchk")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("pf", metavar="PF", help="the physical function, e.g. 0000:02:00.0")
    parser.add_argument(
        "count",
        metavar="N",
        nargs="?",
        help="make it have N VFs now (0 removes them); without N: list the VFs",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--for-guests",
        dest="for_guests",
        action="store_true",
        default=True,
        help="(default) no host driver may bind the new VFs: sriov_drivers_autoprobe is 0 "
        "while they are created",
    )
    who.add_argument(
        "--for-host",
        dest="for_guests",
        action="store_false",
        help="let host drivers (igbvf, iavf, nvme...) bind the new VFs",
    )
    parser.add_argument(
        "--persist",
        action="store_true",
        help="also at every boot: a udev rule in /etc/udev/rules.d (N=0 removes it)",
    )
    parser.add_argument("--mac", action="append", default=[], metavar="VF=MAC", help="VF's MAC")
    parser.add_argument(
        "--vlan", action="append", default=[], metavar="VF=ID", help="VF's VLAN (0: none)"
    )
    parser.add_argument(
        "--trust", action="append", default=[], metavar="VF=on|off", help="VF's trust mode"
    )
    parser.add_argument(
        "--spoofchk",
        action="append",
        default=[],
        metavar="VF=on|off",
        help="VF's MAC spoof checking",
    )


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise UsageError(f"N {text!r}", "not a number of VFs (0 removes them)")
    return int(text)


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    del name
    from pcipass.address import PciAddress
    from pcipass.cli.render import print_json
    from pcipass.ops.vfs import list_vfs, set_vfs

    pf = PciAddress.parse(args.pf)
    count = _count(args.count)
    settings = {key: getattr(args, key) for key in SETTINGS if getattr(args, key)}
    if count is None and not settings and not args.persist:
        outcome = list_vfs(host, pf)
    else:
        outcome = set_vfs(
            host,
            pf,
            count,
            for_guests=args.for_guests,
            persist=args.persist,
            settings=settings,
            dry_run=args.dry_run,
        )
    if args.json:
        print_json(outcome.to_json())
    else:
        print("\n".join(outcome.render_lines()))
    return 0
