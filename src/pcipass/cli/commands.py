"""The command table: what ``pcipass`` can be asked to do.

Plain data with no imports, so that ``pcipass --version`` and a run of one
command read the table without loading argparse or typing (issue #13).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence


class Command:
    """One command: its name, the module ``pcipass.cli.<module>`` that defines
    ``add_arguments(name, parser)`` and ``run(name, args, host)``, its help, and
    whether it takes ``--dry-run`` (the option is added from this table)."""

    __slots__ = ("dry_run", "help", "module", "name")

    def __init__(self, name: str, module: str, help: str, dry_run: bool) -> None:
        self.name = name
        self.module = module
        self.help = help
        self.dry_run = dry_run

    def __repr__(self) -> str:
        return f"Command({self.name!r}, {self.module!r}, dry_run={self.dry_run})"


COMMANDS: tuple[Command, ...] = (
    # name, handler module, help, has --dry-run
    Command(
        "list",
        "cmd_inventory",
        "list host PCI devices (driver, IOMMU group, host use)",
        False,
    ),
    Command(
        "show",
        "cmd_inventory",
        "everything about one device, and whether it can be assigned",
        False,
    ),
    Command(
        "check",
        "cmd_hide",
        "check devices against every rule; exit 0 ok, 1 warnings, 3 refusals",
        False,
    ),
    Command("hide", "cmd_hide", "hide devices from the host (--now, --persist)", True),
    Command("unhide", "cmd_hide", "give devices back to the host (--now, --persist)", True),
    Command(
        "status",
        "cmd_hide",
        "what pcipass holds: hidden devices, owners, interrupted operations",
        False,
    ),
    Command("recover", "cmd_hide", "roll back operations interrupted half-way", False),
    Command(
        "guest-setup",
        "cmd_setup",
        "inside a KVM guest (or an image with --root): acpiphp now and at every boot (PP008)",
        True,
    ),
    Command("attach", "cmd_guests", "assign a hidden device to a guest (--live too)", True),
    Command("detach", "cmd_guests", "take a device back from a guest (--live too)", True),
    Command(
        "guard",
        "cmd_guests",
        "refuse save/restore/migrate of a guest holding a device (exit 3; libvirt hook)",
        False,
    ),
    Command("guests", "cmd_guests", "guest configurations, their devices and rules", False),
    Command(
        "export",
        "cmd_export",
        "hidden devices as Proxmox, Nova, KubeVirt or libvirt definitions (prints only)",
        False,
    ),
    Command(
        "save",
        "cmd_safe",
        "xl guests holding devices: detach live, xl save (PP003's safe path)",
        False,
    ),
    Command(
        "restore",
        "cmd_safe",
        "xl restore, then attach the saved guest's devices again",
        False,
    ),
    Command(
        "migrate",
        "cmd_safe",
        "detach live, xl migrate; attach the destination's own devices there",
        False,
    ),
    Command(
        "explain",
        "cmd_explain",
        "what a toolstack's passthrough error means on this host",
        False,
    ),
    Command(
        "rom",
        "cmd_rom",
        "a device's option ROM: images, UEFI or legacy-only (--save FILE)",
        False,
    ),
    Command("vfs", "cmd_vfs", "an SR-IOV PF's virtual functions: list, create, remove", True),
    Command(
        "reset-test",
        "cmd_reset",
        "reset a hidden device once and check it answers as before",
        False,
    ),
    Command(
        "guard-install",
        "cmd_hooks",
        "install the save/restore/migrate guard as a libvirt hook and xl/xm wrappers (PP003)",
        True,
    ),
    Command("pin", "cmd_pins", "name a device by its identity (pin --list)", False),
    Command("unpin", "cmd_pins", "forget a pinned name", False),
    Command("plan", "cmd_desired", "what apply would change to reach pcipass.toml", False),
    Command("apply", "cmd_desired", "converge on /etc/pcipass/pcipass.toml (--boot)", True),
    Command("boot-install", "cmd_boot", "run `apply --boot` at every boot (systemd)", True),
    Command("boot-uninstall", "cmd_boot", "remove the boot unit boot-install wrote", True),
)


def command_word(args_list: Sequence[str]) -> str | None:
    """The command named by ``args_list`` when it can be told without argparse:
    only the global options (``--root DIR``, ``--root=DIR``, ``--json``) may come
    before it, and it must be a command's exact name.  None for anything else
    (help, abbreviations, unknown words, no command): the whole parser then
    answers, with the same messages as ever."""
    index = command_index(args_list)
    if index is None:
        return None
    word = args_list[index]
    return word if any(command.name == word for command in COMMANDS) else None


def command_index(args_list: Sequence[str]) -> int | None:
    """Where the first word that is not a global option is (the command word,
    if any): ``--root DIR``, ``--root=DIR`` and ``--json`` may come before it."""
    index = 0
    while index < len(args_list):
        word = args_list[index]
        if word == "--root":
            index += 2
        elif word == "--json" or word.startswith("--root="):
            index += 1
        else:
            return index
    return None
