"""The stub drivers: the one vocabulary for the drivers that hold a device for a guest.

A stub has two names.  The *driver* name is what sysfs shows under
``/sys/bus/pci/drivers`` and in a device's ``driver`` link; the *module* name is
what ``modprobe`` loads and what ``options``/``install`` lines and ``NAME.param=``
on the kernel command line name.  They differ for Xen: the module is
``pciback`` on 2.6 xenlinux kernels (RHEL 5's 2.6.18-xen) and ``xen-pciback``
upstream (Linux 3.1 on), and both register the PCI driver ``pciback``
(drivers/xen/xen-pciback/pci_stub.c, ``DRV_NAME``).  kmod treats ``-`` and ``_``
in module names alike.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from pcipass.backend import Backend

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

#: Driver names (sysfs).
XEN_DRIVER: Final = "pciback"
VFIO_DRIVER: Final = "vfio-pci"
#: Legacy KVM device assignment's stub; QEMU dropped that path in 2.12.
PCI_STUB_DRIVER: Final = "pci-stub"

#: Module names (modprobe), as files spell them.
XEN_MODULE_OLD: Final = "pciback"  # 2.6 xenlinux kernels, RHEL 5
XEN_MODULE: Final = "xen-pciback"  # upstream since Linux 3.1
VFIO_MODULE: Final = "vfio-pci"
XEN_MODULES: Final = (XEN_MODULE_OLD, XEN_MODULE)
STUB_MODULES: Final = (XEN_MODULE_OLD, XEN_MODULE, VFIO_MODULE)

#: Drivers that exist only to hold a device for a guest: bound to one, a
#: device is hidden from the host.
STUB_DRIVERS: Final = frozenset({XEN_DRIVER, VFIO_DRIVER, PCI_STUB_DRIVER})

#: The drivers a guest of each hypervisor can be given a device from: Xen
#: assigns only from pciback; KVM/QEMU only from vfio-pci.
XEN_GUEST_DRIVERS: Final = frozenset({XEN_DRIVER})
KVM_GUEST_DRIVERS: Final = frozenset({VFIO_DRIVER})

#: The stub names a ledger record may carry: the driver pcipass bound, and
#: the upstream Xen module name, which older records used.
RECORDED_STUBS: Final = frozenset({XEN_DRIVER, XEN_MODULE, VFIO_DRIVER})


def driver_for(backend: Backend) -> str:
    """The driver name a backend binds devices to."""
    return VFIO_DRIVER if backend is Backend.VFIO else XEN_DRIVER


def is_2_6_kernel(release: str) -> bool:
    """2.6.x kernels (RHEL 5's 2.6.18) predate kmod and the xen-pciback name."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) < (3, 0)


def xen_stub_module(installed: Collection[str], *, old_kernel: bool) -> str:
    """The Xen stub's module name on a kernel: the one its module tree has
    (``installed``: module names present as modules or built in); with no tree
    to ask, the kernel generation decides (``old_kernel``: a 2.6 xenlinux
    kernel, which calls it pciback)."""
    if XEN_MODULE_OLD in installed:
        return XEN_MODULE_OLD
    if XEN_MODULE in installed:
        return XEN_MODULE
    return XEN_MODULE_OLD if old_kernel else XEN_MODULE
