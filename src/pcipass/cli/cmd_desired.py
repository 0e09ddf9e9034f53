"""``pcipass plan`` and ``pcipass apply``: the desired state (/etc/pcipass/pcipass.toml)."""

from __future__ import annotations

from pcipass.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse

    from pcipass.host.context import Host
    from pcipass.ops.desired import DesiredPlan


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        metavar="PATH",
        default="/etc/pcipass/pcipass.toml",
        help="the desired state (default /etc/pcipass/pcipass.toml, under --root)",
    )
    if name == "plan":
        parser.add_argument(
            "--detailed-exitcode",
            action="store_true",
            help="exit 0 in sync, 2 drift, 3 refused, 1 error (for monitoring)",
        )
    else:
        parser.add_argument(
            "--boot",
            action="store_true",
            help="at boot (the boot-install unit): bind the stubs only, each device alone; "
            "log what was done and why a device was left to the host; always exit 0",
        )


def run(name: str, args: argparse.Namespace, host: Host) -> int:
    from pcipass.ops import desired
    from pcipass.ops.desired_file import load

    if not args.file.startswith("/"):
        raise UsageError(f"{name} --file", "must be an absolute path (taken under --root)")
    if name == "apply" and args.boot:
        return _boot(host, args)
    state = load(host, args.file)
    plan = desired.make_plan(host, state)
    if name == "plan" or args.dry_run:
        desired.preview(host, plan)
        _show(plan, as_json=args.json, what="in sync: no change" if plan.in_sync else "")
        if plan.refusals:
            return 3
        return plan.detailed_exit() if getattr(args, "detailed_exitcode", False) else 0
    desired.apply(host, plan)
    lines_done = "no change" if not plan.changes else ""
    _show(plan, as_json=args.json, what=lines_done, done=True)
    return 0


def _show(plan: DesiredPlan, *, as_json: bool, what: str, done: bool = False) -> None:
    from pcipass.cli.render import print_json

    if as_json:
        print_json(plan.to_json())
        return
    lines = plan.render_lines()
    if done:
        lines += plan.done
    if what:
        lines.append(what)
    print("\n".join(lines))


def _boot(host: Host, args: argparse.Namespace) -> int:
    """Never fails: whatever happens is a log line (the boot must go on)."""
    from pcipass.cli.render import print_json
    from pcipass.errors import PcipassError
    from pcipass.ops.desired import DesiredPlan, apply_boot
    from pcipass.ops.desired_file import load

    try:
        plan = apply_boot(host, load(host, args.file))
    except PcipassError as error:
        plan = DesiredPlan(args.file)
        plan.log.append(f"nothing done: {error.render()}")
    except Exception as error:  # at boot every failure is a log line
        plan = DesiredPlan(args.file)
        plan.log.append(f"nothing done: unexpected {type(error).__name__}: {error}")
    if args.json:
        print_json(plan.to_json())
    else:
        print(
            "\n".join(f"pcipass: boot: {line}" for line in plan.log)
            or "pcipass: boot: no device declared"
        )
    return 0
