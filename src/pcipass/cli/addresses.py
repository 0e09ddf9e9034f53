"""Addresses as the command line takes them: ``BDF`` or ``@NAME`` (a pin).

The one place where the CLI turns a user's device word into an address:
every command that takes a device calls :func:`device_address` (or
:func:`device_addresses`), so ``@NAME`` works everywhere with one resolution
(ops/pins.py, scoring in policy/pin_match.py) and one refusal (PP114).
"""

from __future__ import annotations

from collections.abc import Iterable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.address import PciAddress
    from pcipass.host.context import Host


def device_address(host: Host, text: str) -> PciAddress:
    if text.startswith("@"):
        from pcipass.ops.pins import resolve_pin

        return resolve_pin(host, text[1:])
    from pcipass.address import PciAddress

    return PciAddress.parse(text)


def device_addresses(host: Host, texts: Iterable[str]) -> list[PciAddress]:
    """Each word resolved once, duplicates dropped (``@nic 09:00.0`` may name one device)."""
    seen: list[PciAddress] = []
    for text in texts:
        address = device_address(host, text)
        if address not in seen:
            seen.append(address)
    return seen
