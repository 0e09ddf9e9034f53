"""Reloading a driver module: which other functions it takes down.

Procedure 15.3 step 1 of the document says the persistent lines take effect
when "the bnx2 module must be reloaded or the host must be restarted".  A
module is unloaded for every function it drives, not just the one being
hidden: ``modprobe -r bnx2`` unbinds every bnx2 NIC, and on the document's
own host the other bnx2 function (0000:05:00.0) carries the default route,
so the advice cuts the administrator's SSH session.  Before pcipass says
"reload" anywhere, it looks at every *other* function bound to that driver
(PP001's data: what the host uses each one for; for a stub, the guest that
holds it) and says what the reload would cost.

Pure: handed the inventory, reads nothing, imports no ops/state/persist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pcipass.address import PciAddress
from pcipass.host.inventory import Inventory
from pcipass.host.usage import HostUse
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass

# What the safe ways are, said the same everywhere.
SAFE_WAYS = "add --now (rebinds only the named devices through sysfs) or reboot instead"


@dataclass(frozen=True)
class Bystander:
    """Another function bound to the driver that would be reloaded."""

    address: PciAddress
    uses: tuple[HostUse, ...]  # what the host uses it for (PP001)
    guest: str | None = None  # the guest holding it (a stub's functions)

    @property
    def uses_text(self) -> str:
        return "; ".join(u.detail for u in self.uses)


@dataclass(frozen=True)
class ReloadImpact:
    """What ``modprobe -r DRIVER; modprobe DRIVER`` does besides its purpose."""

    driver: str  # the driver as sysfs names it (bnx2, pciback, vfio-pci)
    targets: tuple[PciAddress, ...]  # the functions the reload is for
    bystanders: tuple[Bystander, ...]

    @property
    def host_used(self) -> list[Bystander]:
        return [b for b in self.bystanders if b.uses]

    @property
    def guest_held(self) -> list[Bystander]:
        return [b for b in self.bystanders if b.guest is not None and not b.uses]

    @property
    def collateral(self) -> list[Bystander]:
        """Merely bound: unbound and probed again, nothing the host needs."""
        return [b for b in self.bystanders if not b.uses and b.guest is None]

    @property
    def safe(self) -> bool:
        """Nothing the host or a guest relies on goes down with the reload."""
        return not self.host_used and not self.guest_held


def reload_impact(
    driver: str,
    targets: Iterable[PciAddress],
    inv: Inventory,
    *,
    owners: dict[PciAddress, str] | None = None,
) -> ReloadImpact:
    """Every function bound to ``driver`` other than ``targets``, with its uses.

    ``owners`` (address -> guest) adds the guests holding functions; without it
    the inventory's own owner column is used.
    """
    wanted = tuple(targets)
    bystanders = tuple(
        Bystander(
            info.address,
            tuple(info.uses),
            (owners or {}).get(info.address, info.owner),
        )
        for info in inv.devices
        if info.device.driver == driver and info.address not in wanted
    )
    return ReloadImpact(driver, wanted, bystanders)


def reload_findings(impact: ReloadImpact, *, refusing: bool) -> list[Finding]:
    """One finding per other function the reload would touch.

    ``refusing``: the reload is requested (``--reload-driver``), so a function
    the host or a guest relies on refuses it (PP001 / PP101); otherwise these
    are warnings next to the "takes effect when reloaded" advice (PP010).
    """
    driver = impact.driver
    found: list[Finding] = []
    for bystander in impact.host_used:
        found.append(
            Finding(
                "PP001" if refusing else "PP010",
                Severity.REFUSE if refusing else Severity.WARN,
                str(bystander.address),
                f"is also bound to {driver}, and the host uses it ({bystander.uses_text}): "
                f"reloading {driver} would take it down",
                SAFE_WAYS,
            )
        )
    for bystander in impact.guest_held:
        found.append(
            Finding(
                "PP101" if refusing else "PP010",
                Severity.REFUSE if refusing else Severity.WARN,
                str(bystander.address),
                f"is also bound to {driver} and assigned to guest {bystander.guest}: "
                f"reloading {driver} would pull it from under the guest",
                SAFE_WAYS,
            )
        )
    for bystander in impact.collateral:
        found.append(
            Finding(
                "PP010",
                Severity.INFO,
                str(bystander.address),
                f"is also bound to {driver}: reloading {driver} unbinds it and probes it again",
                "",
            )
        )
    return found


def _names(bystanders: Sequence[Bystander], *, with_uses: bool) -> str:
    if with_uses:
        return ", ".join(
            f"{b.address} ({b.uses_text or 'guest ' + str(b.guest)})" for b in bystanders
        )
    return ", ".join(str(b.address) for b in bystanders)


def reload_advice(impact: ReloadImpact, *, verb: str = "takes effect") -> str:
    """The sentence that replaces a bare "reload the driver" (PP010).

    Host-used (or guest-held) bystanders: do not reload, say why and what to do
    instead.  Merely bound ones: reloading is possible, they are named as
    collateral.  None: reloading is the document's method, offered as
    ``--reload-driver``.
    """
    driver = impact.driver
    danger = impact.host_used + impact.guest_held
    if danger:
        return (
            f"{verb} at the next boot; do NOT reload {driver} to apply it now: reloading "
            f"{driver} would also take down {_names(danger, with_uses=True)}; {SAFE_WAYS}"
        )
    if impact.collateral:
        return (
            f"{verb} when {driver} is reloaded (which also unbinds "
            f"{_names(impact.collateral, with_uses=False)} for a moment: --reload-driver) or at "
            "the next boot (Procedure 15.3 step 1); add --now to rebind at once"
        )
    return (
        f"{verb} when {driver} is reloaded (--reload-driver; no other device uses {driver}) or "
        "at the next boot (Procedure 15.3 step 1); add --now to rebind at once"
    )


def reload_remedy(impact: ReloadImpact, address: PciAddress) -> str:
    """The remedy for a device hidden at boot but still on its driver (PP010 drift)."""
    danger = impact.host_used + impact.guest_held
    if danger:
        return (
            f"pcipass hide --now {address}, or reboot; not a reload of {impact.driver}: it would "
            f"also take down {_names(danger, with_uses=True)}"
        )
    return (
        f"pcipass hide --now {address}, or reload {impact.driver}: "
        f"pcipass hide --persist --reload-driver {address}"
    )
