"""Backend: which stub driver family hides a device (one definition for all layers)."""

from __future__ import annotations

from pcipass.compat import StrEnum


class Backend(StrEnum):
    """The stub driver family a device is hidden with."""

    PCIBACK = "pciback"  # Xen: pciback (RHEL 5's 2.6.18) or xen-pciback (pvops kernels)
    VFIO = "vfio"  # KVM: vfio-pci
