"""``pcipass guests --check`` and the ``--guest-os`` option, for the CLI.

The CLI hands over the option's text and the chosen guests; this module parses
the text (a usage error when no operating system matches) before anything is
read, checks every guest against one shared context, and says which exit code
the findings earn.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.errors import ExitCode
from pcipass.guests.guest_os import parse_os_text
from pcipass.guests.model import GuestOs
from pcipass.ops.attach import GuestContext
from pcipass.ops.guard import GuestCheck, HeldDevices, check_guest
from pcipass.policy.verdict import worst_exit
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.host.context import Host
    from pcipass.ops.guests import GuestFile, GuestScan


def guest_os_option(text: str | None) -> GuestOs | None:
    """The operating system named by ``--guest-os``, or None when not given."""
    return parse_os_text(text) if text else None


@dataclass
class GuestChecks:
    checks: list[GuestCheck] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        """3 when a guest has a refusal, 1 on warnings, else 0 (docs/cli.md)."""
        return worst_exit([f for c in self.checks for f in c.findings])


def check_guests(
    host: Host, scan: GuestScan, chosen: Sequence[GuestFile], *, guest_os: GuestOs | None
) -> GuestChecks:
    """Check each chosen guest as ``attach`` would check each of its devices."""
    context = GuestContext.gather(host, scan)
    held = HeldDevices.read(host) if chosen else None  # the ledger once, not once per guest
    return GuestChecks(
        [check_guest(host, g, guest_os=guest_os, context=context, held=held) for g in chosen]
    )
