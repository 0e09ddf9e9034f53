"""``hide --reset-method M``: choose how the kernel resets a device, with rollback.

Linux 5.15+ lists in ``/sys/bus/pci/devices/BDF/reset_method`` the reset
methods it found for the function, in the order it tries them; writing a
subset selects those (drivers/pci/pci.c reset_method_store: a name it does not
support is EINVAL), writing ``default`` brings every supported one back.  A
GPU with a known-bad FLR or bus reset (host/reset_quirks.py, PP104) is made
usable by choosing ``device_specific`` (with vendor-reset loaded) or by
leaving out the bad one; vfio-pci and pciback reset through this list.

``M`` is checked against what the kernel lists for the device now (PP122)
before anything moves; the previous value is saved in the hide's intent
(``reset_methods``) and written back by a failed or interrupted hide and by
``recover`` (:func:`restore_reset_methods`).  The record is data: only
device addresses and the kernel's method names are accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from pcipass.address import PciAddress
from pcipass.errors import AddressError, RefusedError, UsageError
from pcipass.host.context import Host
from pcipass.host.reset import (
    METHOD_ACPI,
    METHOD_AF_FLR,
    METHOD_BUS,
    METHOD_CXL_BUS,
    METHOD_DEVICE_SPECIFIC,
    METHOD_FLR,
    METHOD_PM,
)
from pcipass.ops.rebind import Step
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field

KERNEL_METHODS = frozenset(
    {
        METHOD_DEVICE_SPECIFIC,
        METHOD_ACPI,
        METHOD_FLR,
        METHOD_AF_FLR,
        METHOD_PM,
        METHOD_BUS,
        METHOD_CXL_BUS,
    }
)
DEFAULT = "default"


def parse_methods(text: str) -> list[str]:
    """``--reset-method`` as the kernel's names ("bus", "device_specific pm",
    "flr,pm" or "default"); a name the kernel never uses is a usage error."""
    methods = [m for m in text.replace(",", " ").split() if m]
    if methods == [DEFAULT]:
        return methods
    unknown = [m for m in methods if m not in KERNEL_METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise UsageError(
            f"--reset-method {text}",
            "is not a list of the kernel's reset methods",
            f"give some of {', '.join(sorted(KERNEL_METHODS))} (in the order to try), or default",
        )
    return methods


@dataclass
class ResetMethodPlan:
    wanted: list[str]
    previous: dict[PciAddress, str] = field(default_factory=dict)  # devices that change
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, str]:
        return {str(a): text for a, text in self.previous.items()}

    def steps(self, host: Host) -> list[Step]:
        value = " ".join(self.wanted)
        return [
            Step(
                f"echo {value} > /sys/bus/pci/devices/{address}/reset_method",
                functools.partial(
                    host.sysfs.write_attr, host.root.pci_device(address) / "reset_method", value
                ),
                None,
            )
            for address in self.previous
        ]


def plan_reset_methods(
    host: Host, addresses: Sequence[PciAddress], wanted: list[str]
) -> ResetMethodPlan:
    """Which devices change, and PP122 refusals for a method the kernel does not list."""
    plan = ResetMethodPlan(wanted)
    if not wanted:
        return plan  # no --reset-method: nothing changes
    for address in addresses:
        text = host.sysfs.read_text(host.root.pci_device(address) / "reset_method")
        if text is None:
            plan.findings.append(
                Finding(
                    "PP122",
                    Severity.REFUSE,
                    str(address),
                    "has no reset_method attribute: the kernel is older than 5.15, or it "
                    "has no reset method for this device",
                    "leave out --reset-method for it",
                )
            )
            continue
        listed = text.split()
        if not listed:
            plan.findings.append(
                Finding(
                    "PP122",
                    Severity.REFUSE,
                    str(address),
                    "the kernel lists no reset method for it",
                    "leave out --reset-method for it",
                )
            )
            continue
        missing = [m for m in wanted if m != DEFAULT and m not in listed]
        if missing:
            plan.findings.append(
                Finding(
                    "PP122",
                    Severity.REFUSE,
                    str(address),
                    f"the kernel does not offer {', '.join(missing)} for it (it lists "
                    f"{text.strip() or 'nothing'})",
                    "choose among the listed methods; device_specific needs its module "
                    "(vendor-reset) loaded first; `--reset-method default` restores the list",
                )
            )
            continue
        if wanted != [DEFAULT] and listed == wanted:
            continue  # already so: nothing to do, nothing to undo
        plan.previous[address] = " ".join(listed)
    return plan


def _refuse(op_id: int, what: str) -> RefusedError:
    return RefusedError(
        f"journal operation {op_id}",
        f"reset_methods record {what!r}: not a device and reset methods; pcipass did not "
        "write this record and will not act on it",
        "inspect the state database (pcipass status); move it aside if it is not this host's",
    )


def validate_reset_methods(op_id: int, saved: object) -> dict[PciAddress, str]:
    if not isinstance(saved, dict):
        raise _refuse(op_id, str(saved))
    result: dict[PciAddress, str] = {}
    for text, methods in saved.items():
        try:
            address = PciAddress.parse(str(text))
        except AddressError as error:
            raise _refuse(op_id, str(text)) from error
        names = methods.split() if isinstance(methods, str) else None
        if not names or any(name not in KERNEL_METHODS for name in names):
            raise _refuse(op_id, f"{text}: {methods}")
        result[address] = " ".join(names)
    return result


def restore_reset_methods(host: Host, saved: Mapping[str, object]) -> list[str]:
    """Write back the reset_method a hide changed (as far as it changed it)."""
    done = []
    for address, methods in validate_reset_methods(0, dict(saved)).items():
        path = host.root.pci_device(address) / "reset_method"
        current = host.sysfs.read_text(path)
        if current is not None and current.split() != methods.split():
            host.sysfs.write_attr(path, methods)
            done.append(f"{address}: reset_method {methods} again")
    return done
