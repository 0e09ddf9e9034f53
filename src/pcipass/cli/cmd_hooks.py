"""``pcipass guard-install``: put the PP003 guard where libvirt and xl/xm ask."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name
    parser.add_argument(
        "--libvirt",
        action="store_true",
        help="install /etc/libvirt/hooks/qemu and libxl (or hooks/*.d/pcipass "
        "when a hook of someone else's is there)",
    )
    parser.add_argument(
        "--wrap",
        action="append",
        default=[],
        choices=["xl", "xm"],
        help="install a /usr/local/sbin wrapper that guards save and migrate",
    )
    parser.add_argument(
        "--real",
        metavar="PATH",
        help="the real xl/xm the wrapper runs (default: found under /usr/sbin or "
        "/usr/lib/xen-*/bin)",
    )
    parser.add_argument(
        "--uninstall", action="store_true", help="remove every hook and wrapper pcipass installed"
    )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.errors import UsageError
    from pcipass.ops.hooks import apply_plan, plan_install, plan_uninstall

    if args.uninstall:
        plan = plan_uninstall(host)
    else:
        if not args.libvirt and not args.wrap:
            raise UsageError(
                "guard-install",
                "say what to install: --libvirt and/or --wrap xl",
                "e.g. pcipass guard-install --libvirt --wrap xl",
            )
        real = {tool: args.real for tool in args.wrap} if args.real else None
        plan = plan_install(host, libvirt=args.libvirt, tools=args.wrap, real_paths=real)
    if not args.dry_run:
        apply_plan(host, plan, "guard-uninstall" if args.uninstall else "guard-install")
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "files": [{"path": e.display, "diff": e.diff()} for e in plan.edits],
                "notes": plan.notes,
            }
        )
        return 0
    for edit in plan.edits:
        if args.dry_run:
            print(edit.diff().rstrip("\n"))
        else:
            print(f"{'removed' if edit.after is None else 'wrote'} {edit.display}")
    if not plan.edits:
        print("nothing to change")
    for note in plan.notes:
        print(note)
    return 0
