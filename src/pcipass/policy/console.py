"""PP120: the boot GPU leaves the host only once nothing holds its console.

Taking the boot VGA device from under its framebuffer driver or fbcon can
hang the host's display or the kernel (a framebuffer whose memory went to a
guest); taking it from a display manager kills the session.  So pcipass says
exactly what holds it (host/console.py) and either refuses or, asked with
``--release-console``, releases fbcon and the framebuffer driver first
(ops/console.py, undone on failure and by recover).  A display server is
never stopped by pcipass.  And the host is never left without a console
silently: with no serial console and no other framebuffer, a warning says so.
"""

from __future__ import annotations

from pcipass.host.console import ConsoleHolders
from pcipass.policy.verdict import Finding, Severity


def console_findings(
    holders: ConsoleHolders, *, release: bool, hidden: bool = False
) -> list[Finding]:
    """PP120 for one function; ``hidden``: it is on a stub already (nothing more to lose)."""
    if not holders.boot_vga or (hidden and not holders.held):
        return []
    subject = str(holders.address)
    held = holders.describe()
    if holders.processes:
        names = ", ".join(f"{p.command} (pid {p.pid})" for p in holders.processes)
        return [
            Finding(
                "PP120",
                Severity.REFUSE,
                subject,
                f"is the boot GPU and the host's display runs on it: {'; '.join(held)}",
                f"stop {names} first (systemctl stop display-manager), then hide it with "
                "--release-console",
            )
        ]
    if held and not release:
        return [
            Finding(
                "PP120",
                Severity.REFUSE,
                subject,
                f"is the boot GPU and holds the host's console: {'; '.join(held)}",
                "add --release-console: pcipass unbinds fbcon and the framebuffer driver first "
                "and binds them back if the hide fails or is interrupted",
            )
        ]
    findings = []
    if held:
        findings.append(
            Finding(
                "PP120",
                Severity.INFO,
                subject,
                f"releasing the boot console: {'; '.join(held)}",
                "it comes back at the next boot (unhide does not bring it back)",
            )
        )
    if not holders.other_console:
        findings.append(
            Finding(
                "PP120",
                Severity.WARN,
                subject,
                "after this the host has no local console: no serial console on the kernel "
                "command line and no framebuffer on another device",
                "make sure you can reach the host over the network, or add "
                "console=ttyS0,115200 to the kernel command line",
            )
        )
    return findings
