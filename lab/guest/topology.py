"""Where the lab puts its devices: shared by the host (QEMU command line) and the guest agent."""

# Xen dom0 (q35 + intel-iommu): two e1000 NICs on the root bus.
XEN_UPLINK = "0000:00:03.0"  # carries dom0's address and default route (QEMU user network)
XEN_SPARE = "0000:00:04.0"  # the device pcipass hides and passes through
XEN_UPLINK_IP = "10.0.2.15/24"
XEN_GATEWAY = "10.0.2.2"

# KVM L1 (q35, kernel-irqchip=split, intel-iommu,intremap=on).
KVM_UPLINK = "0000:00:03.0"  # e1000 carrying L1's address
KVM_E1000E_PORT = "0000:00:05.0"  # pcie-root-port (a bridge: PP103)
KVM_E1000E = "0000:01:00.0"  # e1000e behind the root port: own group, reset_method "pm bus"
KVM_SPARE_E1000 = "0000:00:04.0"  # e1000 on the root bus: own group, no reset method
KVM_ICH9 = ("0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3")  # one IOMMU group, no ACS

# KVM SR-IOV scenario (kvm-sriov): an emulated NVMe with SR-IOV (QEMU 7.2 nvme,sriov_max_vfs=2,
# linked to an nvme-subsys as SR-IOV requires) behind its own pcie-root-port at 00:06.0.
KVM_NVME_PORT = "0000:00:06.0"
KVM_NVME_PF = "0000:02:00.0"  # the PF; QEMU's nvme puts VF n at routing ID PF + 1 + n
KVM_NVME_VFS = 2

# Boot kvm3 ("the card moved"): a second root port, the e1000e behind it, and a virtio NIC in
# the e1000e's old place, so the e1000e's pinned address names another card.
KVM_MOVED_PORT = "0000:00:06.0"  # pcie-root-port, chassis 2
KVM_E1000E_MAC = "52:54:00:10:d3:01"  # fixed: QEMU derives the e1000e's DSN from its MAC
KVM_MOVED_E1000E = "0000:02:00.0"  # the e1000e behind it (bus 2: 00:05.0 took bus 1)
