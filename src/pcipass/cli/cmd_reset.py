"""``pcipass reset-test BDF``: reset a hidden device once, check it answers as before."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("address", metavar="BDF", help="a hidden device, held by no guest")


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    del name
    from pcipass.address import PciAddress
    from pcipass.cli.render import print_json
    from pcipass.ops.reset_test import reset_test

    result = reset_test(host, PciAddress.parse(args.address))
    if args.json:
        print_json(result.to_json())
    else:
        print(result.render())
    return 0 if result.ok else 1  # 1: the device did not come back as it was (PP122)
