"""``pcipass rom BDF [--save FILE]``: the option ROM's images, and a copy for a guest."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument("address", metavar="BDF", help="PCI address, e.g. 0000:01:00.0")
    parser.add_argument(
        "--save",
        metavar="FILE",
        help="write the ROM's bytes to FILE (for libvirt <rom file=...> or QEMU romfile=)",
    )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    del name
    from pcipass.cli.addresses import device_address
    from pcipass.cli.render import print_json
    from pcipass.ops.rom import rom_report

    report = rom_report(host, device_address(host, args.address), save=args.save)
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render())
    # 1 when the ROM was read but something in it is wrong (as `check` warns).
    return 0 if report.ok else 1
