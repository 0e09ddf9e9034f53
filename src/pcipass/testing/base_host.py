"""The base the KVM and GPU example hosts share (a module of its own so that
``example`` and ``gpu_host`` need not import each other)."""

from __future__ import annotations

from pathlib import Path

from pcipass.testing.fakehost import FakeHost
from pcipass.testing.pci_ids import PCI_IDS


def debian12_host(base: Path, cmdline_extra: str = "") -> FakeHost:
    """A Debian 12 host with an active Intel IOMMU and no devices yet: the
    base of the KVM and GPU example hosts."""
    host = FakeHost(base, kernel_release="6.1.0-26-amd64")
    host.write_pci_ids(PCI_IDS)
    host.write_file(
        "/etc/os-release",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
    )
    host.write_file("/sys/class/iommu/dmar0/devices/.keep", "")
    host.write_file(
        "/proc/cmdline",
        "BOOT_IMAGE=/vmlinuz-6.1.0-26-amd64 root=/dev/nvme0n1p2 ro quiet intel_iommu=on iommu=pt"
        f"{cmdline_extra}\n",
    )
    return host
