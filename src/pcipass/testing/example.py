"""Ready example hosts to try pcipass without hardware.

``python -m pcipass.testing.example DIR`` builds the host of the source
document: a RHEL 5.4 Xen dom0 with a bnx2 NIC at 0000:09:00.0 and a second
device at 0000:0a:04.1 (the two addresses of Procedure 15.3), a SATA root
disk, the NIC carrying the default route, and a VGA console.  Xen's dom0
sees no IOMMU groups (the hypervisor owns the IOMMU).

``--kind gpu`` builds a KVM host with two GPUs (pcipass.testing.gpu_host): a
four-function NVIDIA card to pass through and the boot GPU holding the console.

``--kind kvm`` builds a current KVM host (Debian 12) with IOMMU groups, ACS,
an SR-IOV NIC, a GPU with its audio function, an NVMe root disk and the
ICH9 functions that share one group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcipass.host.pci_regs import PortType
from pcipass.testing.base_host import debian12_host
from pcipass.testing.config_builder import acs, dsn, msi, msix, pcie, pm, sriov
from pcipass.testing.fakehost import FakeHost
from pcipass.testing.pci_ids import PCI_IDS

__all__ = ["PCI_IDS", "build_kvm", "build_rhel5_xen", "main"]


def build_rhel5_xen(base: Path) -> FakeHost:
    """The document's host: RHEL 5.4 dom0, kernel 2.6.18-164.el5xen, pciback module."""
    host = FakeHost(
        base, kernel_release="2.6.18-164.el5xen", iommu_groups=False, driver_override=False
    )
    host.write_pci_ids(PCI_IDS)
    host.write_file(
        "/etc/redhat-release", "Red Hat Enterprise Linux Server release 5.4 (Tikanga)\n"
    )
    host.write_file("/sys/hypervisor/type", "xen\n")
    host.write_file("/proc/xen/capabilities", "control_d\n")
    host.write_file(
        "/etc/modprobe.conf",
        "alias eth0 bnx2\nalias eth1 bnx2\nalias eth2 e1000\nalias eth3 e1000\n"
        "alias scsi_hostadapter ahci\n",
    )
    host.write_file("/etc/xen/xend-config.sxp", "(xend-relocation-server no)\n")
    host.write_file("/lib/modules/2.6.18-164.el5xen/kernel/drivers/xen/pciback/pciback.ko", "")
    host.add_host_bridge("0000:00:00.0", device=0x3406)
    host.add_bridge(
        "0000:00:01.0", secondary_bus=0x05, device=0x3408, caps=[pcie(PortType.ROOT_PORT), msi()]
    )
    host.add_bridge(
        "0000:00:03.0", secondary_bus=0x09, device=0x340A, caps=[pcie(PortType.ROOT_PORT), msi()]
    )
    host.add_bridge("0000:00:1e.0", secondary_bus=0x0A, device=0x244E, driver=None)
    host.add_device(
        "0000:00:1f.2",
        vendor=0x8086,
        device=0x3A22,
        class_code=0x010601,
        driver="ahci",
        caps=[msi(), pm()],
    )
    host.add_device(
        "0000:05:00.0",
        vendor=0x14E4,
        device=0x1639,
        class_code=0x020000,
        driver="bnx2",
        parent="0000:00:01.0",
        subsystem=(0x1028, 0x0236),
        caps=[pm(), msi(), msix(9), pcie(PortType.ENDPOINT, flr=False)],
        ext_caps=[dsn(0x0010_18FF_FE4A_3B20)],
        config_size=4096,
    )
    host.add_device(
        "0000:09:00.0",
        vendor=0x14E4,
        device=0x1639,
        class_code=0x020000,
        driver="bnx2",
        parent="0000:00:03.0",
        subsystem=(0x1028, 0x0236),
        caps=[pm(), msi(), msix(9), pcie(PortType.ENDPOINT, flr=False)],
        ext_caps=[dsn(0x0010_18FF_FE4A_3C10)],
        config_size=4096,
    )
    host.add_device(
        "0000:0a:04.0",
        vendor=0x8086,
        device=0x1010,
        class_code=0x020000,
        driver="e1000",
        parent="0000:00:1e.0",
        multifunction=True,
        subsystem=(0x8086, 0x1012),
        caps=[pm(), msi()],
    )
    host.add_device(
        "0000:0a:04.1",
        vendor=0x8086,
        device=0x1010,
        class_code=0x020000,
        driver="e1000",
        parent="0000:00:1e.0",
        multifunction=True,
        subsystem=(0x8086, 0x1012),
        caps=[pm(), msi()],
    )
    host.add_device(
        "0000:00:02.0",
        vendor=0x102B,
        device=0x0522,
        class_code=0x030000,
        boot_vga=True,
        subsystem=(0x1028, 0x0236),
        caps=[pm()],
    )
    parts = host.add_disk("0000:00:1f.2", "sda", partitions=2)
    host.add_mount("/", parts[0])
    host.add_swap(parts[1])
    host.add_nic("0000:05:00.0", "eth0")
    host.add_nic("0000:09:00.0", "eth1")
    host.add_nic("0000:0a:04.0", "eth2")
    host.add_nic("0000:0a:04.1", "eth3")
    host.add_route("eth0", default=True, network="192.168.122.0", prefix=24, local="192.168.122.10")
    host.add_console("0000:00:02.0")
    host.write_file(
        "/etc/xen/rhel5pv",
        "# RHEL 5 paravirtualized guest (xm)\n"
        'name = "rhel5pv"\nmemory = 1024\nvcpus = 1\n'
        'bootloader = "/usr/bin/pygrub"\n'
        "vif = [ 'mac=00:16:3e:00:00:01, bridge=xenbr0' ]\n"
        "disk = [ 'phy:/dev/vg0/rhel5pv,xvda,w' ]\n",
    )
    return host


def build_kvm(base: Path) -> FakeHost:
    """A current KVM host with real-looking IOMMU groups and ACS."""
    host = debian12_host(base)
    host.add_host_bridge("0000:00:00.0")
    root_port = [pcie(PortType.ROOT_PORT), msi()]
    port_acs = [acs(0x1F, 0x1D)]
    host.add_bridge(
        "0000:00:01.0", secondary_bus=0x01, device=0x1C10, caps=root_port, ext_caps=port_acs
    )
    host.add_bridge(
        "0000:00:1c.0", secondary_bus=0x02, device=0x1C10, caps=root_port, ext_caps=port_acs
    )
    host.add_bridge(
        "0000:00:1c.1", secondary_bus=0x03, device=0x1C10, caps=root_port, ext_caps=port_acs
    )
    host.add_bridge(
        "0000:00:1c.2", secondary_bus=0x04, device=0x1C10, caps=root_port, ext_caps=port_acs
    )
    gpu_group = host.new_group()
    host.add_device(
        "0000:01:00.0",
        vendor=0x10DE,
        device=0x1B80,
        class_code=0x030000,
        driver="nouveau",
        parent="0000:00:01.0",
        group=gpu_group,
        multifunction=True,
        reset_method="bus",
        caps=[pm(), msi(), pcie(PortType.LEGACY_ENDPOINT, flr=False)],
        config_size=4096,
    )
    host.add_device(
        "0000:01:00.1",
        vendor=0x10DE,
        device=0x0FB9,
        class_code=0x040300,
        driver="snd-hda-intel",
        parent="0000:00:01.0",
        group=gpu_group,
        multifunction=True,
        reset_method="bus",
        caps=[pm(), msi(), pcie(PortType.ENDPOINT, flr=False)],
        config_size=4096,
    )
    host.add_device(
        "0000:02:00.0",
        vendor=0x8086,
        device=0x1521,
        class_code=0x020000,
        driver="igb",
        parent="0000:00:1c.0",
        reset_method="flr bus",
        caps=[pm(), msi(), msix(10), pcie(PortType.ENDPOINT, flr=True)],
        ext_caps=[dsn(0xA0369FFFFF1C2B3A), sriov(total=7, num=2, vf_device=0x1520, vf_stride=4)],
        config_size=4096,
    )
    host.add_vfs(
        "0000:02:00.0",
        2,
        vf_device=0x1520,
        first_vf="0000:02:10.0",
        stride=4,
        driver="igbvf",
        total=7,
    )
    host.add_device(
        "0000:03:00.0",
        vendor=0x8086,
        device=0x10D3,
        class_code=0x020000,
        driver="e1000e",
        parent="0000:00:1c.1",
        reset_method="flr pm bus",
        caps=[pm(), msi(), msix(5), pcie(PortType.ENDPOINT, flr=True)],
        config_size=4096,
    )
    host.add_device(
        "0000:04:00.0",
        vendor=0x144D,
        device=0xA808,
        class_code=0x010802,
        driver="nvme",
        parent="0000:00:1c.2",
        reset_method="flr bus",
        caps=[pm(), msi(), msix(33), pcie(PortType.ENDPOINT, flr=True)],
        config_size=4096,
    )
    ich9 = host.new_group()
    host.add_device(
        "0000:00:1f.0",
        vendor=0x8086,
        device=0x2918,
        class_code=0x060100,
        driver="lpc_ich",
        group=ich9,
        multifunction=True,
    )
    host.add_device(
        "0000:00:1f.2",
        vendor=0x8086,
        device=0x2922,
        class_code=0x010601,
        driver="ahci",
        group=ich9,
        multifunction=True,
        caps=[msi(), pm()],
    )
    host.add_device(
        "0000:00:1f.3",
        vendor=0x8086,
        device=0x2930,
        class_code=0x0C0500,
        driver="i2c-i801",
        group=ich9,
        multifunction=True,
    )
    parts = host.add_disk("0000:04:00.0", "nvme0n1", partitions=2, major=259)
    host.add_mount("/", parts[1])
    host.add_mount("/boot/efi", parts[0], fstype="vfat")
    host.add_nic("0000:03:00.0", "enp3s0")
    host.add_nic("0000:02:00.0", "enp2s0f0")
    host.add_route("enp3s0", default=True, network="10.0.0.0", prefix=24, local="10.0.0.5")
    host.write_file(
        "/etc/libvirt/qemu/win10.xml",
        "<domain type='kvm'>\n  <name>win10</name>\n  <memory unit='KiB'>4194304</memory>\n"
        "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n"
        "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        "  </devices>\n</domain>\n",
    )
    return host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pcipass.testing.example",
        description="Build an example host tree to try pcipass with --root, without hardware.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--kind", choices=["rhel5-xen", "kvm", "gpu"], default="rhel5-xen")
    args = parser.parse_args(argv)
    directory: Path = args.directory
    if directory.exists() and any(directory.iterdir()):
        print(f"{directory}: exists and is not empty; choose a new directory", file=sys.stderr)
        return 2
    from pcipass.testing.gpu_host import build_gpu

    builders = {"kvm": build_kvm, "gpu": build_gpu, "rhel5-xen": build_rhel5_xen}
    host = builders[args.kind](directory)
    host.mark_simulated()
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
