"""``pcipass explain TEXT`` (or ``-`` for stdin): a toolstack error, explained."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument(
        "text",
        nargs="+",
        metavar="TEXT",
        help="the error message (quote it), or - to read it from stdin",
    )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.explain import explain

    text = sys.stdin.read() if args.text == ["-"] else " ".join(args.text)
    found = explain(host, text)
    if args.json:
        print_json({"explanations": [e.to_json() for e in found]})
    elif found:
        print("\n".join(e.render() for e in found))
    else:
        print("pcipass does not know this message; `pcipass check` reviews the whole host")
    return 0 if found else 1
