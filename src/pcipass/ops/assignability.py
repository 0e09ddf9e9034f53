"""The ledger's side of the assignability rules: read owners and hidden
records, and hand them with the inventory to ``pcipass.policy.assignable``."""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.host.context import Host
from pcipass.host.inventory import Inventory
from pcipass.ops.inventory import inventory
from pcipass.policy import assignable
from pcipass.policy.assignable import Claims
from pcipass.policy.verdict import Finding
from pcipass.state.ledger import Ledger


def ledger_claims(host: Host) -> Claims:
    """Owners and hidden identities from the ledger, read-only."""
    with Ledger.open(host.root, readonly=True) as ledger:
        owners = {PciAddress.parse(o.address): o.guest for o in ledger.owners()}
        hidden = {PciAddress.parse(r.address): r.identity for r in ledger.hidden()}
    return Claims(owners, hidden)


def assignability_findings(
    host: Host,
    addresses: Sequence[PciAddress],
    *,
    inv: Inventory | None = None,
    for_guest: str | None = None,
) -> list[Finding]:
    """Findings for taking ``addresses`` (together) away from the host."""
    inv = inv or inventory(host)
    return assignable.assignability_findings(
        host, addresses, inv=inv, claims=ledger_claims(host), for_guest=for_guest
    )
