"""Host side of the pcipass lab: fetch packages, build initramfs images, boot QEMU, report.

Nothing here is part of the installed package; it drives a real kernel (Xen dom0 or a KVM L1
guest) under QEMU so that pcipass's sysfs writes, kmod use and toolstack calls are proven on the
real thing rather than on fake trees.
"""
