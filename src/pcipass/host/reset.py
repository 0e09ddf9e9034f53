"""Reset readiness: will a function come back clean after a guest that used it stops?

A function handed from one guest to the next (or back to the host) must be reset, or the
previous user's state (DMA rings, keys, frame buffers) leaks.  The ladder mirrors libvirt's
``virPCIDeviceReset``: Function Level Reset, then a PM reset (D3hot->D0 when No_Soft_Reset is
clear, PCI PM 1.2 §3.2.4), then a secondary bus reset of the parent bridge (never on a root
bus, and only when every other function on that bus goes along or is idle).  When nothing
works libvirt says "no FLR, PM reset or bus reset available"; so does this module (rule
PP104).

Evidence, best first:

1. the kernel's ``reset_method`` attribute (Linux >= 5.15): the methods the kernel itself
   found, in the order it will try them (an administrator may have reordered or cleared it);
   the kernel also applies its quirks.  vfio-pci and pciback reset through the kernel, so
   its list is what will actually happen.
2. without it (older kernels, or a kernel that hides it because there is no method; the
   lab saw that for an e1000 on the root bus): the parsed configuration space (PCIe DevCap
   FLR bit, Advanced Features TP+FLR, PMCSR No_Soft_Reset).  A ``reset`` attribute that is
   absent as well means the kernel has no per-function reset at all (it creates ``reset``
   only when one exists), whatever the config bits say.

Whether a bus reset is possible depends on topology (root bus, other functions on the bus
and who owns them); the caller works that out and passes ``bus_reset_possible``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.host.config_space import ConfigSpace
from pcipass.host.context import Host
from pcipass.host.device import PciDevice
from pcipass.host.topology import bus_reset_blocker
from pcipass.record import dataclass, field

# Kernel method names (drivers/pci/pci.c pci_reset_fn_methods, in the kernel's order).
METHOD_DEVICE_SPECIFIC = "device_specific"
METHOD_ACPI = "acpi"
METHOD_FLR = "flr"
METHOD_AF_FLR = "af_flr"
METHOD_PM = "pm"
METHOD_BUS = "bus"
METHOD_CXL_BUS = "cxl_bus"
# Not a kernel name: a kernel without reset_method that has a ``reset`` attribute resets the
# function somehow, but does not say how.
METHOD_KERNEL_UNNAMED = "reset"

# Methods that reset the whole secondary bus, and so every function on it.
BUS_METHODS = frozenset({METHOD_BUS, METHOD_CXL_BUS})

_DESCRIPTIONS = {
    METHOD_DEVICE_SPECIFIC: "a device-specific reset (kernel quirk)",
    METHOD_ACPI: "the firmware's ACPI _RST method",
    METHOD_FLR: "Function Level Reset",
    METHOD_AF_FLR: "Function Level Reset (conventional PCI Advanced Features)",
    METHOD_PM: "PM reset (D3hot to D0, No_Soft_Reset clear)",
    METHOD_BUS: "secondary bus reset",
    METHOD_CXL_BUS: "CXL secondary bus reset",
    METHOD_KERNEL_UNNAMED: "the kernel's reset (this kernel does not name its method)",
}

NO_RESET_REASON = "no FLR, PM reset or bus reset available: state may leak between guests"

SOURCE_KERNEL = "kernel"  # the reset_method attribute
SOURCE_CONFIG = "config"  # inferred from configuration space
SOURCE_NONE = "none"  # neither could be read


@dataclass(frozen=True)
class ResetVerdict:
    """``method`` is the one that will be used (first usable), ``methods`` all usable ones in
    order.  ``ready`` is true when there is a method.  ``source`` says what the verdict
    rests on: the kernel's list, the config space, or nothing."""

    ready: bool
    method: str | None
    methods: list[str]
    reason: str
    source: str = SOURCE_KERNEL
    unusable: list[str] = field(default_factory=list)  # listed but not usable here

    def to_json(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "method": self.method,
            "methods": list(self.methods),
            "unusable": list(self.unusable),
            "source": self.source,
            "reason": self.reason,
        }


def parse_reset_method(text: str | None) -> list[str] | None:
    """The ``reset_method`` attribute's text (``"flr pm bus\\n"``) as a list; None stays None
    (attribute absent).  An empty file means the administrator cleared every method."""
    if text is None:
        return None
    return text.split()


def describe_method(method: str) -> str:
    return _DESCRIPTIONS.get(method, f"the kernel's {method!r} reset")


def reset_readiness(
    reset_methods: Sequence[str] | None,
    config: ConfigSpace | None,
    *,
    bus_reset_possible: bool,
    bus_reset_blocker: str = "",
    reset_attribute: bool | None = None,
) -> ResetVerdict:
    """Decide how (and whether) the function can be reset between guests.

    ``reset_methods``: the kernel's ``reset_method`` list, None when the attribute is absent.
    ``config``: the parsed configuration space, None when unreadable.
    ``bus_reset_possible``: the caller's topology verdict (not on a root bus; the other
    functions on the bus are part of the same assignment or idle); ``bus_reset_blocker``
    says why not ("on the root bus", "0000:01:00.1 is used by the host"...).
    ``reset_attribute``: whether the ``reset`` attribute exists (None: not looked at).
    """
    if reset_methods is not None:
        return _from_kernel(list(reset_methods), bus_reset_possible, bus_reset_blocker)
    return _from_config(config, bus_reset_possible, bus_reset_blocker, reset_attribute)


def _from_kernel(listed: list[str], bus_possible: bool, blocker: str) -> ResetVerdict:
    usable = [m for m in listed if m not in BUS_METHODS or bus_possible]
    unusable = [m for m in listed if m not in usable]
    if bus_possible and not any(m in BUS_METHODS for m in listed):
        # The kernel lists "bus" only for a function alone on its bus; with several functions
        # that all go to the guest, vfio/libvirt still reset the bus as a whole (hot reset).
        usable.append(METHOD_BUS)
    notes: list[str] = []
    if not listed:
        notes.append("the kernel's reset_method list is empty (every method disabled)")
    if unusable:
        notes.append(_bus_blocked_note(unusable, blocker))
    return _verdict(usable, unusable, SOURCE_KERNEL, "the kernel's reset_method", notes)


def _from_config(
    config: ConfigSpace | None,
    bus_possible: bool,
    blocker: str,
    reset_attribute: bool | None,
) -> ResetVerdict:
    usable: list[str] = []
    notes: list[str] = []
    if reset_attribute is False:
        # pci-sysfs creates "reset" only when the kernel found a per-function method.
        notes.append("the kernel offers no function reset (no reset attribute)")
    elif config is None:
        notes.append("configuration space unreadable: FLR and PM reset unknown")
    else:
        flr = config.pcie.flr if config.pcie is not None else False
        af_flr = config.af is not None and config.af.tp and config.af.flr
        if flr:
            usable.append(METHOD_FLR)
        if af_flr:
            usable.append(METHOD_AF_FLR)
        if config.pm_reset_capable:
            usable.append(METHOD_PM)
        elif config.pm is not None and config.pm.no_soft_reset:
            notes.append("PM reset unusable: No_Soft_Reset is set")
        if config.flr_capable is None or config.pm_reset_capable is None:
            notes.append("configuration space only partly readable: FLR or PM reset unknown")
    if reset_attribute and not usable:
        # Older kernels create "reset" only when some method works (quirk, FLR, PM, or a bus
        # reset when alone on the bus); it just does not tell which.
        usable.append(METHOD_KERNEL_UNNAMED)
    unusable: list[str] = []
    if bus_possible:
        usable.append(METHOD_BUS)
    elif blocker:
        unusable.append(METHOD_BUS)
        notes.append(_bus_blocked_note(unusable, blocker))
    if config is None and reset_attribute is None and not usable:
        return ResetVerdict(
            ready=False,
            method=None,
            methods=[],
            reason="reset support unknown: no reset_method attribute and configuration space "
            "unreadable",
            source=SOURCE_NONE,
            unusable=unusable,
        )
    return _verdict(usable, unusable, SOURCE_CONFIG, "configuration space", notes)


def _bus_blocked_note(unusable: list[str], blocker: str) -> str:
    why = f": {blocker}" if blocker else ""
    return f"{' and '.join(unusable)} reset not possible{why}"


def _verdict(
    usable: list[str], unusable: list[str], source: str, evidence: str, notes: list[str]
) -> ResetVerdict:
    suffix = "".join(f"; {note}" for note in notes)
    if not usable:
        return ResetVerdict(
            ready=False,
            method=None,
            methods=[],
            reason=NO_RESET_REASON + suffix,
            source=source,
            unusable=unusable,
        )
    method = usable[0]
    reason = f"{describe_method(method)} ({method}) resets the function (from {evidence})"
    if method in BUS_METHODS:
        reason += "; it resets every function on the same bus"
    return ResetVerdict(
        ready=True,
        method=method,
        methods=usable,
        reason=reason + suffix,
        source=source,
        unusable=unusable,
    )


def reset_verdict(host: Host, dev: PciDevice, config: ConfigSpace | None) -> ResetVerdict:
    """The verdict for one function on this host: the kernel's methods, its
    configuration space and whether its bus may be reset."""
    methods = None if dev.reset_methods is None else list(dev.reset_methods)
    blocker = bus_reset_blocker(host, dev)
    return reset_readiness(
        methods,
        config,
        bus_reset_possible=not blocker,
        bus_reset_blocker=blocker,
        reset_attribute=host.sysfs.exists(host.root.pci_device(dev.address) / "reset"),
    )
