"""Simulated xl, xm and virsh that remember what each running guest holds.

A hotplug test must end with the ledger equal to the toolstack's truth, so
the simulated toolstack keeps that truth: :attr:`SimToolstack.running` maps a
guest name to the PCI addresses its running domain holds.  ``pci-attach``,
``pci-detach``, ``attach-device``/``detach-device --live`` change it;
``pci-list`` and ``virsh dumpxml`` report it in each tool's own format
(xl: ``Vdev Device`` rows; xm: hex ``VSlt domain bus slot func`` columns;
virsh: a domain XML with one ``<hostdev>`` per device).  Only commands of a
program the :class:`~pcipass.simkernel.runner.SimRunner` provides reach it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.errors import PcipassError
from pcipass.patterns import lazy
from pcipass.runner import CommandResult

_ADDRESS_ATTR = lazy(
    r"domain=['\"]0x([0-9a-fA-F]+)['\"]\s+bus=['\"]0x([0-9a-fA-F]+)['\"]\s+"
    r"slot=['\"]0x([0-9a-fA-F]+)['\"]\s+function=['\"]0x([0-7])['\"]"
)


class SimToolstack:
    def __init__(self) -> None:
        self.running: dict[str, set[str]] = {}

    def holds(self, guest: str) -> set[str]:
        return set(self.running.get(guest, set()))

    def handle(self, args: Sequence[str]) -> CommandResult | None:
        """The answer to ``args``, or None when this fake does not know the command."""
        argv = tuple(args)
        program = argv[0].rsplit("/", 1)[-1]
        if program in ("xl", "xm") and len(argv) >= 3:
            return self._xen(argv, program)
        if program == "virsh" and len(argv) >= 5 and argv[1] == "-c":
            return self._virsh(argv)
        return None

    def _xen(self, argv: tuple[str, ...], program: str) -> CommandResult | None:
        verb, guest = argv[1], argv[2]
        held = self.running.setdefault(guest, set())
        if verb == "pci-list":
            rows = sorted(PciAddress.parse(a) for a in held)
            if not rows:
                return CommandResult(argv, 0, "", "")
            if program == "xl":
                lines = ["Vdev Device"] + [f"{4 + i:02x}.0 {a}" for i, a in enumerate(rows)]
            else:
                lines = ["VSlt domain   bus   slot   func"] + [
                    f"0x{4 + i:02x} 0x{a.domain:x} 0x{a.bus:02x} 0x{a.slot:02x} 0x{a.function:x}"
                    for i, a in enumerate(rows)
                ]
            return CommandResult(argv, 0, "\n".join(lines) + "\n", "")
        if verb in ("pci-attach", "pci-detach") and len(argv) >= 4:
            address = str(PciAddress.parse(argv[3]))
            if verb == "pci-attach":
                if address in held:
                    return CommandResult(argv, 1, "", f"{address} is already assigned\n")
                held.add(address)
            else:
                if address not in held:
                    return CommandResult(argv, 1, "", f"{address} is not assigned\n")
                held.discard(address)
            return CommandResult(argv, 0, "", "")
        return None

    def _virsh(self, argv: tuple[str, ...]) -> CommandResult | None:
        verb, guest = argv[3], argv[4]
        held = self.running.setdefault(guest, set())
        if verb == "domstate":
            return CommandResult(argv, 0, "running\n\n", "")
        if verb == "dumpxml":
            devices = "".join(_hostdev(PciAddress.parse(a)) for a in sorted(held))
            xml = (
                f"<domain type='kvm'><name>{guest}</name><memory>65536</memory>"
                f"<os><type>hvm</type></os><devices>{devices}</devices></domain>\n"
            )
            return CommandResult(argv, 0, xml, "")
        if verb in ("attach-device", "detach-device") and len(argv) >= 6:
            try:
                with open(argv[5], encoding="utf-8") as handle:
                    match = _ADDRESS_ATTR.search(handle.read())
            except OSError as error:
                return CommandResult(argv, 1, "", f"error: {error}\n")
            if match is None:
                return CommandResult(argv, 1, "", "error: no hostdev address\n")
            try:
                domain, bus, slot, function = (int(x, 16) for x in match.groups())
                address = str(PciAddress(domain, bus, slot, function))
            except (PcipassError, TypeError):
                return CommandResult(argv, 1, "", "error: bad hostdev address\n")
            if verb == "attach-device":
                held.add(address)
            else:
                held.discard(address)
            return CommandResult(argv, 0, "Device attached successfully\n", "")
        return None


def _hostdev(address: PciAddress) -> str:
    return (
        "<hostdev mode='subsystem' type='pci' managed='no'><source>"
        f"<address domain='0x{address.domain:04x}' bus='0x{address.bus:02x}' "
        f"slot='0x{address.slot:02x}' function='0x{address.function:x}'/>"
        "</source></hostdev>"
    )
