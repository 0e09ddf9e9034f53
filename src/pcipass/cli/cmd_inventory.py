"""``pcipass list`` and ``pcipass show``."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host
    from pcipass.host.inventory import DeviceInfo, Inventory


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "list":
        parser.add_argument(
            "--class",
            dest="device_class",
            metavar="CLASS",
            help="only this class: net, storage, display, multimedia, bridge, "
            "serial, ... or a hex class code like 0200",
        )
        parser.add_argument("--driver", help="only devices bound to this driver ('none' = unbound)")
        parser.add_argument("--group", type=int, metavar="N", help="only IOMMU group N")
        parser.add_argument("--tree", action="store_true", help="show the bus topology")
        parser.add_argument(
            "--guests",
            action="store_true",
            help="also show which guest configurations list each device",
        )
    else:
        parser.add_argument("address", metavar="BDF", help="PCI address, e.g. 0000:09:00.0")


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    if name == "list":
        return _list(args, host)
    return _show(args, host)


def _use_text(info: DeviceInfo, listed: dict[str, list[str]] | None = None) -> str:
    names = (listed or {}).get(str(info.address), [])
    if info.owner:
        others = [n for n in names if n != info.owner]
        return f"guest {info.owner}" + (f" (also in {', '.join(others)})" if others else "")
    if names:
        return "in config of " + ", ".join(names)
    if info.uses:
        shorts = list(dict.fromkeys(u.short for u in info.uses))
        return "host: " + ", ".join(shorts)
    return ""


def _desc(info: DeviceInfo) -> str:
    dev = info.device
    cls = info.class_name or "Class"
    code = f"{dev.class_code >> 8:04x}" if dev.class_code is not None else "????"
    return f"{cls} [{code}]: {info.describe()}"


def _list(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import JsonStream, print_json, table, warn
    from pcipass.host.inventory import SCHEMA_VERSION
    from pcipass.ops.inventory import filter_devices, guest_listing, inventory

    inv = inventory(host)
    items = filter_devices(
        inv, device_class=args.device_class, driver=args.driver, group=args.group
    )
    listed = guest_listing(host, inv) if args.guests else None
    if args.json:

        def device_json(info: DeviceInfo) -> dict[str, object]:
            data = info.to_json()
            if listed is not None:
                data["guests"] = listed.get(str(data["address"]), [])
            return data

        # Streamed: one device's dict at a time, never the whole list (memory at 8192).
        devices = JsonStream(device_json(d) for d in items)
        print_json({"schema_version": SCHEMA_VERSION, "devices": devices, "problems": inv.problems})
        return 0
    if args.tree:
        print(_tree(inv, {d.address for d in items}))
    else:
        rows = [
            [
                str(d.address),
                d.device.id_text,
                d.device.driver or "-",
                "-" if d.device.iommu_group is None else str(d.device.iommu_group),
                _use_text(d, listed) or "-",
                _desc(d),
            ]
            for d in items
        ]
        print(table(rows, ["ADDRESS", "IDS", "DRIVER", "GROUP", "USE", "DESCRIPTION"]))
    for problem in inv.problems:
        warn(problem)
    return 0


def _tree(inv: Inventory, shown: set[object]) -> str:
    from pcipass.address import PciAddress

    children: dict[PciAddress | None, list[DeviceInfo]] = {}
    for info in inv.devices:
        children.setdefault(info.device.parent, []).append(info)
    lines: list[str] = []

    def walk(parent: PciAddress | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for index, info in enumerate(kids):
            last = index == len(kids) - 1
            branch = "└─ " if last else "├─ "
            group = info.device.iommu_group
            tags = [info.device.driver or "no driver"]
            if group is not None:
                tags.append(f"group {group}")
            use = _use_text(info)
            if use:
                tags.append(use)
            mark = "" if info.address in shown else " (filtered)"
            lines.append(f"{prefix}{branch}{info.address} {_desc(info)} [{', '.join(tags)}]{mark}")
            walk(info.address, prefix + ("   " if last else "│  "))

    roots = sorted({(i.address.domain, i.address.bus) for i in children.get(None, [])})
    for domain, bus in roots:
        lines.append(f"pci{domain:04x}:{bus:02x}")
        saved = children.get(None, [])
        children[None] = [i for i in saved if (i.address.domain, i.address.bus) == (domain, bus)]
        walk(None, "")
        children[None] = saved
    return "\n".join(lines)


def _show(args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.addresses import device_address
    from pcipass.cli.render import print_json, warn
    from pcipass.ops.show import device_report

    address = device_address(host, args.address)
    report = device_report(host, address)
    if args.json:
        print_json(report.to_json())
        return 0
    print(report.render())
    for problem in report.problems:
        warn(problem)
    return 0
