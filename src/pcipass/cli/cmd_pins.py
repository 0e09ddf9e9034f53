"""``pcipass pin BDF NAME``, ``pin --list``, ``unpin NAME``."""

from __future__ import annotations

from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "pin":
        parser.add_argument(
            "words",
            nargs="*",
            metavar="BDF NAME",
            help="the device (BDF, or @OTHER) and the name to give it",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="every pin, where its device is now and what that rests on",
        )
    else:
        parser.add_argument("name", metavar="NAME", help="the pin to forget (with or without @)")


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops import pins

    if name == "unpin":
        pin_name = args.name[1:] if args.name.startswith("@") else args.name
        pins.unpin(host, pin_name)
        if args.json:
            print_json({"unpinned": pin_name})
        else:
            print(f"@{pin_name}: unpinned")
        return 0
    if args.list:
        if args.words:
            raise UsageError("pin --list", "takes no BDF or NAME")
        return _list(host, as_json=args.json)
    if len(args.words) != 2:
        raise UsageError("pin", "give BDF NAME (or --list)", "e.g. `pcipass pin 09:00.0 uplink`")
    from pcipass.cli.addresses import device_address

    address = device_address(host, args.words[0])
    pin_name = args.words[1][1:] if args.words[1].startswith("@") else args.words[1]
    result = pins.pin(host, address, pin_name)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.render())
    return 0


def _list(host: Host, *, as_json: bool) -> int:
    from pcipass.cli.render import print_json, table
    from pcipass.host.device import read_all
    from pcipass.ops import pins

    records = pins.pins(host)
    devices, _ = read_all(host.sysfs)
    rows = []
    data = []
    for record in records:
        found = pins.resolution(host, record, devices)
        data.append(
            {
                "name": record.name,
                "pinned_at": record.address,
                "fingerprint": record.fingerprint,
                "twins": record.twins,
                "since": record.since,
                "resolution": found.to_json(),
            }
        )
        now = found.address or "-"
        basis = found.basis or (found.finding.message if found.finding else "")
        ids = f"{record.fingerprint.get('vendor')}:{record.fingerprint.get('device')}"
        rows.append(["@" + record.name, now, record.address, ids, basis])
    if as_json:
        print_json({"pins": data})
    elif rows:
        print(table(rows, ["NAME", "NOW", "PINNED AT", "IDS", "MATCHED BY"]))
    else:
        print("no pins (pcipass pin BDF NAME)")
    return 0
