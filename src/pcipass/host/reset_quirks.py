"""Devices whose reset is known to be broken, and what helps.

The table is data: vendor, the device ids, what goes wrong, what helps, and
where that is written down.  Only entries with a public source are here: the
Linux kernel's drivers/pci/quirks.c (named by the quirk function, so anyone
can find the line in their kernel's tree) and the device list of the
``vendor-reset`` kernel module (github.com/gnif/vendor-reset,
src/device-db.h), which adds device-specific resets for AMD GPUs whose
standard resets leave them unusable until the host reboots (the "AMD reset
bug").

``show`` and ``check`` call :func:`quirk_notes`; they turn each note into a
PP104 finding (the reset rule).  A note is only ``info`` when what helps is
already in place (vendor-reset loaded and ``reset_method`` set to
``device_specific``).
"""

from __future__ import annotations

from collections.abc import Iterable

from pcipass.address import PciAddress
from pcipass.errors import AddressError
from pcipass.host.context import Host
from pcipass.record import dataclass

AMD_ATI = 0x1002
AMD = 0x1022
INTEL = 0x8086
ATHEROS = 0x168C
CAVIUM = 0x177D
TI = 0x104C

VENDOR_RESET_HELP = (
    "load the vendor-reset module (github.com/gnif/vendor-reset) and, on Linux 5.15+, "
    "write device_specific to the device's reset_method; without it, reboot the host "
    "to get the device back after a guest used it"
)


@dataclass(frozen=True)
class ResetQuirk:
    vendor: int
    devices: frozenset[int]
    name: str  # the family, as the source names it
    problem: str
    helps: str
    source: str
    vendor_reset: bool = False  # what helps is the vendor-reset module

    def matches(self, vendor: int | None, device: int | None) -> bool:
        return vendor == self.vendor and device in self.devices


def _ids(*values: int) -> frozenset[int]:
    return frozenset(values)


def _amd_gpu(name: str, devices: frozenset[int]) -> ResetQuirk:
    return ResetQuirk(
        AMD_ATI,
        devices,
        f"AMD {name} GPU",
        "its bus and PM resets do not reset the GPU: after a guest used it, it hangs the "
        "next guest or the host driver (the AMD reset bug)",
        VENDOR_RESET_HELP,
        "vendor-reset src/device-db.h",
        vendor_reset=True,
    )


QUIRKS: tuple[ResetQuirk, ...] = (
    # vendor-reset src/device-db.h, _AMD_POLARIS10 (RX 470/480/570/580/590).
    _amd_gpu(
        "Polaris 10",
        _ids(0x67C0, 0x67C1, 0x67C2, 0x67C4, 0x67C7, 0x67D0, 0x67DF, 0x67C8, 0x67C9)
        | _ids(0x67CA, 0x67CC, 0x67CF, 0x6FDF),
    ),
    # vendor-reset src/device-db.h, _AMD_POLARIS11 (RX 460/560).
    _amd_gpu(
        "Polaris 11",
        _ids(0x67E0, 0x67E3, 0x67E8, 0x67EB, 0x67EF, 0x67FF, 0x67E1, 0x67E7, 0x67E9),
    ),
    # vendor-reset src/device-db.h, _AMD_POLARIS12 (RX 540/550).
    _amd_gpu("Polaris 12", _ids(0x6980, 0x6981, 0x6985, 0x6986, 0x6987, 0x6995, 0x6997, 0x699F)),
    # vendor-reset src/device-db.h, _AMD_VEGA10 (Vega 56/64, Frontier Edition).
    _amd_gpu(
        "Vega 10",
        _ids(0x6860, 0x6861, 0x6862, 0x6863, 0x6864, 0x6867, 0x6868, 0x6869, 0x686A)
        | _ids(0x686B, 0x686C, 0x686D, 0x686E, 0x686F, 0x687F),
    ),
    # vendor-reset src/device-db.h, _AMD_VEGA20 (Radeon VII, Instinct MI50/60)
    # and _AMD_ARCTURUS (Instinct MI100, handled by the Vega 20 reset).
    _amd_gpu("Vega 20", _ids(0x66A0, 0x66A1, 0x66A2, 0x66A3, 0x66A4, 0x66A7, 0x66AF, 0x738C)),
    # vendor-reset src/device-db.h, _AMD_NAVI10 (RX 5600/5700), discrete ids only
    # (the list's APU ids are integrated GPUs, not passed through).
    _amd_gpu("Navi 10", _ids(0x7310, 0x7312, 0x7318, 0x7319, 0x731A, 0x731B, 0x731E, 0x731F)),
    # vendor-reset src/device-db.h, _AMD_NAVI12 and _AMD_NAVI14 (RX 5300/5500).
    _amd_gpu("Navi 12", _ids(0x7360, 0x7362)),
    _amd_gpu("Navi 14", _ids(0x7340, 0x7341, 0x7347, 0x734F)),
    # vendor-reset src/device-db.h, _AMD_NAVI23 (RX 6600).
    _amd_gpu("Navi 23", _ids(0x73FF)),
    # drivers/pci/quirks.c, quirk_no_flr: FLR is advertised but hangs the function
    # (AMD Starship/Matisse audio and USB 3.0, FCH SATA; Intel 82579LM/V network).
    ResetQuirk(
        AMD,
        _ids(0x1487, 0x149C, 0x7901),
        "AMD Starship/Matisse audio or USB 3.0, or FCH SATA controller",
        "advertises Function Level Reset but hangs when it is used",
        "a kernel whose quirks.c lists the device skips FLR; on an older kernel write a "
        "reset_method without flr, or reboot the host after the guest",
        "drivers/pci/quirks.c quirk_no_flr",
    ),
    ResetQuirk(
        INTEL,
        _ids(0x1502, 0x1503),
        "Intel 82579LM/82579V Ethernet",
        "advertises Function Level Reset but does not complete it",
        "a kernel with the quirk_no_flr quirk skips FLR; on an older kernel write a "
        "reset_method without flr",
        "drivers/pci/quirks.c quirk_no_flr",
    ),
    # drivers/pci/quirks.c, quirk_no_bus_reset: a secondary bus reset makes the
    # device vanish from the bus until power-off (Atheros AR93xx/QCA98xx Wi-Fi,
    # Cavium ThunderX, TI KeyStone C667X).
    ResetQuirk(
        ATHEROS,
        _ids(0x0030, 0x0032, 0x0033, 0x0034, 0x003C, 0x003E),
        "Atheros/Qualcomm Atheros wireless",
        "does not come back after a secondary bus reset (the kernel never uses one)",
        "it has no other reset: reboot the host to give it to another guest",
        "drivers/pci/quirks.c quirk_no_bus_reset",
    ),
    ResetQuirk(
        CAVIUM,
        _ids(0xA100),
        "Cavium ThunderX",
        "does not come back after a secondary bus reset (the kernel never uses one)",
        "reboot the host to give it to another guest",
        "drivers/pci/quirks.c quirk_no_bus_reset",
    ),
    ResetQuirk(
        TI,
        _ids(0xB005),
        "TI KeyStone C667X",
        "disables its link on a bus or hot reset and does not come back",
        "reboot the host to give it to another guest",
        "drivers/pci/quirks.c quirk_no_bus_reset",
    ),
)


def find_quirk(vendor: int | None, device: int | None) -> ResetQuirk | None:
    for quirk in QUIRKS:
        if quirk.matches(vendor, device):
            return quirk
    return None


@dataclass(frozen=True)
class QuirkNote:
    """One device's known reset problem, ready to become a PP104 finding."""

    severity: str  # a policy Severity value: "warn", or "info" when handled
    subject: str
    message: str
    remedy: str
    quirk: ResetQuirk


def quirk_notes(host: Host, subjects: Iterable[str]) -> list[QuirkNote]:
    """Notes for the subjects that are PCI addresses of known-bad devices
    (other subjects, e.g. "guest NAME", are skipped)."""
    notes: list[QuirkNote] = []
    for subject in subjects:
        try:
            address = PciAddress.parse(subject)
        except AddressError:
            continue
        note = _note(host, address)
        if note is not None:
            notes.append(note)
    return notes


def _note(host: Host, address: PciAddress) -> QuirkNote | None:
    directory = host.root.pci_device(address)
    vendor = host.sysfs.read_int(directory / "vendor", 16)
    device = host.sysfs.read_int(directory / "device", 16)
    quirk = find_quirk(vendor, device)
    if quirk is None:
        return None
    message = f"known reset problem ({quirk.name}, {quirk.source}): {quirk.problem}"
    if quirk.vendor_reset and _vendor_reset_active(host, address):
        return QuirkNote(
            "info",
            str(address),
            message + "; handled: vendor-reset is loaded and reset_method is device_specific",
            "",
            quirk,
        )
    return QuirkNote("warn", str(address), message, quirk.helps, quirk)


def _vendor_reset_active(host: Host, address: PciAddress) -> bool:
    methods = host.sysfs.read_text(host.root.pci_device(address) / "reset_method") or ""
    loaded = host.sysfs.exists(host.root.path("/sys/module/vendor_reset"))
    return loaded and methods.split()[:1] == ["device_specific"]
