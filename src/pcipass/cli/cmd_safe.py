"""``pcipass save|restore|migrate``: the safe path around rule PP003 (xl guests)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "save":
        parser.add_argument("guest", metavar="GUEST")
        parser.add_argument("file", metavar="FILE", help="where xl writes the saved domain")
    elif name == "restore":
        parser.add_argument("file", metavar="FILE")
        parser.add_argument("guest", metavar="GUEST", help="the guest saved in FILE")
    else:
        parser.add_argument("guest", metavar="GUEST")
        parser.add_argument("destination", metavar="HOST")


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.safe_save import safe_migrate, safe_restore, safe_save

    if name == "save":
        result = safe_save(host, args.guest, args.file)
    elif name == "restore":
        result = safe_restore(host, args.file, args.guest)
    else:
        result = safe_migrate(host, args.guest, args.destination)
    if args.json:
        print_json(result.to_json())
        return 0
    for argv in result.commands:
        print("ran: " + " ".join(argv))
    for note in result.notes:
        print(note)
    return 0
