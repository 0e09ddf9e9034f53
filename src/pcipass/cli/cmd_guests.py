"""``pcipass attach``, ``detach``, ``guard`` and ``guests``."""

from __future__ import annotations

import sys

from pcipass.compat import zip_equal
from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.address import PciAddress
    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("attach", "detach"):
        parser.add_argument("address", metavar="BDF")
        parser.add_argument("guest", metavar="GUEST")
        parser.add_argument(
            "--connect",
            metavar="URI",
            help="a libvirt connection (qemu:///system, xen:///system, test:///default): "
            "edit the domain through libvirt-python instead of a file",
        )
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="the guest's configuration file (default: /etc/xen/GUEST, /etc/xen/GUEST.cfg, "
            "/etc/libvirt/qemu/GUEST.xml, /etc/libvirt/libxl/GUEST.xml)",
        )
        parser.add_argument(
            "--live",
            action="store_true",
            help="also hotplug the running guest (xl/xm pci-attach, virsh attach-device --live, "
            "libvirt AFFECT_LIVE, QMP device_add); a repeat that finds it done hot-plugs nothing",
        )
    if name == "attach":
        parser.add_argument(
            "--hide", action="store_true", help="hide the device from the host first (hide --now)"
        )
        parser.add_argument(
            "--all-functions",
            action="store_true",
            help="every function of the device's slot (a GPU with its HDMI audio and USB-C "
            "functions), in one edit; not with --live",
        )
        parser.add_argument(
            "--rom",
            metavar="FILE",
            help="the option ROM the guest sees for BDF (libvirt <rom file=>); it must parse "
            "and be for this device (PP121)",
        )
        parser.add_argument(
            "--rom-bar",
            choices=["on", "off"],
            help="show the device's ROM BAR to the guest or not (libvirt <rom bar=>)",
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
        parser.add_argument(
            "--trust-unreadable",
            metavar="FILE",
            action="append",
            default=[],
            help="an xm file whose pci is computed by code pcipass does not run, which you "
            "know does not hold this device (PP101 fails closed otherwise); repeatable",
        )
    if name == "guests":
        parser.add_argument("names", nargs="*", metavar="GUEST", help="only these guests")
        parser.add_argument(
            "--check",
            action="store_true",
            help="apply every guest rule to each guest's devices; exit 0 ok, 1 warnings, "
            "3 refusals (implied when GUEST is given)",
        )
        parser.add_argument("--config", metavar="FILE", help="check this configuration file")
        parser.add_argument("--guest-os", metavar="OS", help="the guest's OS (rhel5.4, rhel6...)")
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
        parser.add_argument(
            "--wrapped",
            metavar="TOOL",
            choices=["xl", "xm"],
            help="run from the xl/xm wrapper: the arguments are TOOL's whole command line "
            "(after --), the output of `TOOL list` on stdin",
        )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    if name == "guard":
        return _guard(args, host)
    if name == "guests":
        return _guests(args, host)
    from pcipass.cli.addresses import device_address
    from pcipass.cli.render import print_json
    from pcipass.ops.attach import attach, detach

    address = device_address(host, args.address)
    if args.connect and args.config is not None:
        raise UsageError(
            f"{name} --connect",
            "--config names a file, --connect a libvirt connection: give one of them",
            "libvirt holds the definition of a --connect domain",
        )
    _refuse_unsupported(name, args)
    if args.connect:
        from pcipass.ops.libvirt_conn import connect_attach

        connected = connect_attach(
            host,
            address,
            args.guest,
            args.connect,
            action=name,
            live=args.live,
            accept_pv_dma_risk=getattr(args, "accept_pv_dma_risk", False),
            dry_run=args.dry_run,
        )
        if args.json:
            print_json(connected.to_json())
        else:
            print("\n".join(connected.render_lines()))
        return 0
    if args.live and args.config is None:
        qemu_result = _plain_qemu(host, name, address, args.guest, args)
        if qemu_result is not None:
            return qemu_result
    if name == "attach":
        from pcipass.ops.guest_checks import guest_os_option

        guest_os = guest_os_option(args.guest_os)
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
            trust_unreadable=args.trust_unreadable,
            all_functions=args.all_functions,
            rom=args.rom,
            rom_bar=args.rom_bar,
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


def _refuse_unsupported(name: str, args: argparse.Namespace) -> None:
    """attach --all-functions/--rom edit a configuration file; say so for the rest."""
    if name != "attach":
        return
    wanted = [
        option
        for option, value in (
            ("--all-functions", args.all_functions),
            ("--rom", args.rom),
            ("--rom-bar", args.rom_bar),
        )
        if value
    ]
    if not wanted:
        return
    if args.connect:
        raise UsageError(
            f"attach {' '.join(wanted)}",
            "works on a configuration file, not yet through --connect",
            "give the domain's XML file with --config, or edit it with virsh edit",
        )


def _plain_qemu(
    host: Host, name: str, address: PciAddress, guest: str, args: argparse.Namespace
) -> int | None:
    """A guest with no configuration file but a running QEMU named GUEST with a
    QMP socket: hotplug through QMP.  None when that is not the case."""
    from pcipass.ops.qemu_guest import plain_qemu, qemu_live

    qemu = plain_qemu(host, guest)
    if qemu is None:
        return None
    rom = None
    if name == "attach":
        if args.all_functions:
            raise UsageError(
                f"attach --all-functions {guest}",
                "a running QEMU without a configuration file gets one device per hotplug",
                "attach each function with --live, or start it with one -device per function",
            )
        if args.rom or args.rom_bar:
            from pcipass.ops.attach_rom import check_rom

            # QEMU's command line does not say which firmware it boots: no OVMF check.
            rom = check_rom(host, address, args.rom, args.rom_bar, uefi_guest=False)
    if args.dry_run:
        verb = (
            "device_add vfio-pci"
            if name == "attach"
            else "device_del (and wait for DEVICE_DELETED)"
        )
        if rom is not None:
            from pcipass.ops.attach_rom import refuse_unfit

            refuse_unfit(rom, str(address))
            verb += "".join(f" {key}={value}" for key, value in rom.qemu_properties().items())
        if args.json:  # output contract: --json prints one JSON object, dry runs too
            from pcipass.cli.render import print_json

            print_json(
                {
                    "action": name,
                    "address": str(address),
                    "guest": guest,
                    "dry_run": True,
                    "would_send": f"{verb} host={address}",
                    "pid": qemu.pid,
                    "qmp_path": str(qemu.qmp_path),
                }
            )
            return 0
        print(
            f"would send QMP {verb} host={address} to QEMU {guest} (pid {qemu.pid}, "
            f"{qemu.qmp_path})"
        )
        return 0
    from pcipass.cli.render import progress

    if name == "detach":
        progress(f"waiting for guest {guest} to eject {address} (ACPI, up to 30 s)")
    result = qemu_live(host, qemu, address, name, rom=rom)
    if args.json:
        from pcipass.cli.render import print_json

        print_json(result.to_json())
    else:
        print("\n".join(result.render_lines()))
    return 0


def _guard(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.guard import OPERATIONS, guard, guard_libvirt_hook, guard_wrapped

    if args.libvirt_hook:
        # libvirt reads a restore hook's stdout as a new domain XML: print
        # nothing there; refusals go to stderr through the CLI's error path.
        guard_libvirt_hook(host, list(args.words), sys.stdin.buffer.read())
        return 0
    if args.wrapped:
        # The wrapper runs the real program when this exits 0; print nothing
        # on stdout, which belongs to the program's own output.
        listing = "" if sys.stdin.isatty() else sys.stdin.read()
        guard_wrapped(host, args.wrapped, list(args.words), listing)
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


def _guests(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json, table, warn
    from pcipass.ops.guest_checks import check_guests, guest_os_option
    from pcipass.ops.guests import GuestFile, find_guest, name_problem, scan_guests

    guest_os = guest_os_option(args.guest_os)
    scan = scan_guests(host)
    chosen: list[GuestFile]
    if args.config is not None or args.names:
        if args.config is not None and len(args.names) != 1:
            raise UsageError("guests --config", "name exactly one GUEST with --config")
        chosen = [find_guest(host, n, args.config) for n in args.names]
    else:
        chosen = list(scan.guests)
    checking = args.check or bool(args.names)
    if not checking:
        rows = [
            [
                g.guest_name,
                str(g.kind),
                str(g.config.virt_mode),
                str(g.config.os),
                " ".join(d.spec_text for d in g.config.devices()) or "-",
                g.display,
            ]
            for g in chosen
        ]
        # A listed name pcipass cannot act on says why (output contract).
        unusable = {r[0]: name_problem(r[0]) for r in rows}
        if args.json:
            listed = []
            for r in rows:
                row: dict[str, object] = dict(
                    zip_equal(("name", "kind", "virt_mode", "os", "devices", "config"), r)
                )
                row["usable"] = unusable[r[0]] is None
                if unusable[r[0]] is not None:
                    row["name_problem"] = unusable[r[0]]
                listed.append(row)
            print_json({"guests": listed, "problems": scan.problems})
        else:
            print(table(rows, ["GUEST", "KIND", "MODE", "OS", "PCI", "CONFIG"]))
            for problem in scan.problems:
                warn(f"could not read: {problem}")
            for guest, why in unusable.items():
                if why is not None:
                    warn(f"guest {guest!r}: {why}")
        return 0
    checked = check_guests(host, scan, chosen, guest_os=guest_os)
    checks = checked.checks
    if args.json:
        verdicts = []
        for check in checks:
            verdict = check.to_json()
            why = name_problem(check.guest)
            verdict["usable"] = why is None
            if why is not None:
                verdict["name_problem"] = why
            verdicts.append(verdict)
        print_json({"guests": verdicts, "problems": scan.problems})
    else:
        for check in checks:
            print(
                f"guest {check.guest} ({check.kind}, {check.virt_mode}, {check.os}): {check.config}"
            )
            why = name_problem(check.guest)
            if why is not None:
                print(f"  note: {why}")
            for line in [f.render() for f in check.findings] + [f"note: {n}" for n in check.notes]:
                print(f"  {line}")
            if not check.findings:
                print("  no findings")
        for problem in scan.problems:
            warn(f"could not read: {problem}")
    return checked.exit_code
