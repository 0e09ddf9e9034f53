"""``pcipass guest-setup`` (run inside a KVM guest, or on a guest image with --root)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name, parser  # no options beyond the global ones and --dry-run


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.guest_setup import guest_setup

    result = guest_setup(host, dry_run=args.dry_run)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.render())
    return 0 if result.ok else 1
