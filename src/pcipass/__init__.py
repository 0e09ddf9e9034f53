"""pcipass: safe PCI passthrough for Xen and KVM guests."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
