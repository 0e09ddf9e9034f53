"""``pcipass attach``, ``detach`` and ``guard``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pcipass.errors import UsageError

if TYPE_CHECKING:
    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("attach", "detach"):
        parser.add_argument("address", metavar="BDF")
        parser.add_argument("guest", metavar="GUEST")
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="the guest's configuration file (default: /etc/xen/GUEST, /etc/xen/GUEST.cfg, "
            "/etc/libvirt/qemu/GUEST.xml, /etc/libvirt/libxl/GUEST.xml)",
        )
        parser.add_argument(
            "--live",
            action="store_true",
            help="also hotplug the running guest (xl/xm pci-attach, virsh attach-device --live)",
        )
    if name == "attach":
        parser.add_argument(
            "--hide", action="store_true", help="hide the device from the host first (hide --now)"
        )
        parser.add_argument(
            "--accept-pv-dma-risk",
            action="store_true",
            help="assign to a paravirtualized guest although it can reach dom0's DMA space (PP004)",
        )
        parser.add_argument(
            "--guest-os",
            metavar="OS",
            help="the guest's OS when its configuration does not say (rhel5.4, rhel6, ...)",
        )
    if name == "guard":
        parser.add_argument(
            "words",
            nargs="*",
            metavar="ARG",
            help="save|restore|migrate GUEST; with --libvirt-hook: the hook's own arguments",
        )
        parser.add_argument("--config", metavar="FILE", help="the guest's configuration file")
        parser.add_argument(
            "--libvirt-hook",
            action="store_true",
            help="run as /etc/libvirt/hooks/qemu: arguments GUEST OPERATION SUB-OPERATION "
            "EXTRA, domain XML on stdin",
        )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    if name == "guard":
        return _guard(args, host)
    from pcipass.address import PciAddress
    from pcipass.cli.render import print_json
    from pcipass.ops.attach import attach, detach

    address = PciAddress.parse(args.address)
    if name == "attach":
        guest_os = None
        if args.guest_os:
            from pcipass.guests.guest_os import parse_os_text

            guest_os = parse_os_text(args.guest_os)
        result = attach(
            host,
            address,
            args.guest,
            config=args.config,
            hide=args.hide,
            accept_pv_dma_risk=args.accept_pv_dma_risk,
            guest_os=guest_os,
            dry_run=args.dry_run,
            live=args.live,
        )
    else:
        result = detach(
            host, address, args.guest, config=args.config, dry_run=args.dry_run, live=args.live
        )
    if args.json:
        print_json(result.to_json())
    else:
        print("\n".join(result.render_lines()))
    return 0


def _guard(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.guard import OPERATIONS, guard, guard_libvirt_hook

    if args.libvirt_hook:
        # libvirt reads a restore hook's stdout as a new domain XML: print
        # nothing there; refusals go to stderr through the CLI's error path.
        guard_libvirt_hook(host, list(args.words), sys.stdin.buffer.read())
        return 0
    if len(args.words) != 2 or args.words[0] not in OPERATIONS:
        raise UsageError(
            "guard",
            "expected: pcipass guard save|restore|migrate GUEST",
            "or, as a libvirt hook: pcipass guard --libvirt-hook GUEST OPERATION ...",
        )
    result = guard(host, args.words[1], args.words[0], config=args.config)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.render())
    return 0
