"""``pcipass boot-install`` and ``boot-uninstall``: the boot unit (ops/boot_unit.py)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    del name, parser  # --root (an image), --dry-run and --json are the common options


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.cli.render import print_json
    from pcipass.ops.boot_unit import apply_plan, plan_install, plan_uninstall

    plan = plan_uninstall(host) if name == "boot-uninstall" else plan_install(host)
    if not args.dry_run:
        apply_plan(host, plan, name)
    if args.json:
        print_json(plan.to_json(dry_run=args.dry_run))
        return 0
    for edit in plan.edits:
        if args.dry_run:
            print(edit.diff().rstrip("\n"))
        else:
            print(f"{'removed' if edit.after is None else 'wrote'} {edit.display}")
    if name == "boot-install" and plan.before:
        print(f"ordered before: {', '.join(plan.before)}")
    for note in plan.notes:
        print(f"note: {note}")
    if not plan.edits:
        print("no change")
    return 0
