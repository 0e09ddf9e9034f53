"""``pcipass export --format proxmox|nova|kubevirt|libvirt [BDF...]``."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument(
        "addresses",
        nargs="*",
        metavar="BDF",
        help="devices to export (default: every device pcipass holds hidden)",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=["proxmox", "nova", "kubevirt", "libvirt"],
        help="proxmox: cluster PCI resource mappings; nova: [pci] device_spec and alias; "
        "kubevirt: permittedHostDevices for the KubeVirt CR; libvirt: nodedev names "
        "and <hostdev>",
    )
    parser.add_argument(
        "--node",
        metavar="NAME",
        help="proxmox: the node name (default: the host name under --root)",
    )
    parser.add_argument(
        "--numa-policy",
        choices=["required", "legacy", "preferred", "socket"],
        default="preferred",
        help="nova: the alias's numa_policy (default: preferred)",
    )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.address import PciAddress
    from pcipass.cli.addresses import device_addresses
    from pcipass.cli.render import print_json
    from pcipass.ops.export import ExportFormat, export

    del name
    addresses: list[PciAddress] = device_addresses(host, args.addresses)
    result = export(
        host,
        ExportFormat(args.format),
        addresses,
        node=args.node,
        numa_policy=args.numa_policy,
    )
    if args.json:
        print_json(result.to_json())
    else:
        # Reasons on stderr, so stdout stays the scheduler's input as-is.
        for line in result.warning_lines():
            print(f"pcipass: {line}", file=sys.stderr)
        sys.stdout.write(result.text)
    return result.exit_code
