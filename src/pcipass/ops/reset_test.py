"""``pcipass reset-test BDF``: reset a hidden device once and check it answers as before.

Opt-in and only on a device pcipass may disturb: hidden (on pciback or
vfio-pci, so no host driver is using it) and held by no guest (PP101), under
the state lock so no attach races it.  The reset is the kernel's own, the one
vfio-pci and pciback will do between guests: ``echo 1 >
/sys/bus/pci/devices/BDF/reset`` (pci_reset_function: it saves and restores
the configuration space around the methods listed in ``reset_method``).

Afterwards the function must answer with the same identity and BARs: Vendor
ID, Device ID, Revision and Class Code (PCI 3.0 §6.2.1) and the six Base
Address Registers (§6.2.5.1).  A function that did not come back reads all
ones (0xFFFF in the Vendor ID: no device answered, §6.1); one that came back
different was not restored.  Either is what a guest would meet at its next
start (PP122): the remedy is another reset method (``hide --reset-method``),
the vendor-reset module, or a host reboot.
"""

from __future__ import annotations

import struct

from pcipass.address import PciAddress
from pcipass.errors import OperationFailed, RefusedError
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.device import read_device
from pcipass.host.stubs import STUB_DRIVERS
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger
from pcipass.state.lock import StateLock

# Type 0 header fields compared (offset, size, name).
_FIELDS = (
    (0x00, 2, "vendor id"),
    (0x02, 2, "device id"),
    (0x08, 1, "revision"),
    (0x09, 3, "class code"),
    *((0x10 + 4 * n, 4, f"BAR{n}") for n in range(6)),
)


def identity_fields(config: bytes) -> dict[str, int]:
    """The compared header fields of a configuration space dump (at least 64 bytes)."""
    values: dict[str, int] = {}
    for offset, size, name in _FIELDS:
        chunk = config[offset : offset + size] + b"\0" * (4 - size)
        values[name] = struct.unpack_from("<I", chunk)[0]
    return values


@dataclass
class ResetTestResult:
    address: PciAddress
    methods: str  # what the kernel tried, as reset_method listed it
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)  # field -> before, after
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changed

    def to_json(self) -> dict[str, object]:
        return {
            "address": str(self.address),
            "reset_method": self.methods,
            "ok": self.ok,
            "changed": {
                name: {"before": f"{before:#x}", "after": f"{after:#x}"}
                for name, (before, after) in self.changed.items()
            },
            "findings": [f.to_json() for f in self.findings],
        }

    def render(self) -> str:
        via = f" (reset_method: {self.methods})" if self.methods else ""
        if self.ok:
            return (
                f"{self.address}: reset{via}; it answers as before (ids, class and BARs unchanged)"
            )
        lines = [f"{self.address}: reset{via}; it does NOT answer as before"]
        lines += [
            f"  {name}: {before:#x} before, {after:#x} after"
            for name, (before, after) in self.changed.items()
        ]
        lines += [f.render() for f in self.findings]
        return "\n".join(lines)


def _config(host: Host, address: PciAddress) -> bytes:
    data = host.sysfs.read_bytes(host.root.pci_device(address) / "config", 64)
    if data is None or len(data) < 64:
        raise OperationFailed(
            str(address), "its configuration space cannot be read", "run pcipass as root"
        )
    return data


def reset_test(host: Host, address: PciAddress) -> ResetTestResult:
    """Reset ``address`` once through the kernel and compare its header (see above)."""
    read_device(host.sysfs, address)  # DeviceNotFoundError first
    with StateLock(host.root), Ledger.open(host.root, readonly=True) as ledger:
        owner = ledger.owner(address)
        driver = binding.current_driver(host, address)
        if owner is not None:
            raise RefusedError(
                str(address),
                f"is assigned to guest {owner.guest}; a reset under a running guest breaks it",
                f"detach it first: pcipass detach {address} {owner.guest}",
                rule="PP101",
            )
        if driver not in STUB_DRIVERS:
            raise RefusedError(
                str(address),
                f"is not hidden (driver {driver or 'none'}); pcipass resets only a device "
                "no host driver uses",
                f"hide it first: pcipass hide --now {address}",
                rule="PP122",
            )
        device_dir = host.root.pci_device(address)
        if not host.sysfs.exists(device_dir / "reset"):
            raise RefusedError(
                str(address),
                "has no reset attribute: the kernel has no reset method for it",
                "expect to reboot the host between guests (PP104)",
                rule="PP122",
            )
        methods = host.sysfs.read_text(device_dir / "reset_method") or ""
        before = identity_fields(_config(host, address))
        if before["vendor id"] == 0xFFFF:
            raise OperationFailed(
                str(address),
                "reads all ones already (no device answers): an earlier reset or guest lost it",
                "reboot the host to get it back",
            )
        host.sysfs.write_attr(device_dir / "reset", "1")
        after = identity_fields(_config(host, address))
    result = ResetTestResult(address, methods.strip())
    result.changed = {
        name: (before[name], after[name]) for name in before if before[name] != after[name]
    }
    if result.changed:
        gone = after["vendor id"] == 0xFFFF
        result.findings.append(
            Finding(
                "PP122",
                Severity.WARN,
                str(address),
                "did not come back from the reset (it reads all ones: no device answers)"
                if gone
                else "came back from the reset with "
                + ", ".join(f"{name} changed" for name in result.changed),
                "a guest would meet it like this: try another reset method (hide "
                "--reset-method), the vendor-reset module, or reboot the host",
            )
        )
    return result
