"""The rules table.  Ids are stable: they appear in messages, --json and docs/rules.md.

Rules PP001-PP010 come from the source document, RHEL 5 Virtualization
Guide §15.5 "PCI passthrough for para-virtualized Xen guests"; PP101 and up
are pcipass's own, from what users of other tools lose (a device given to two guests,
the wrong device after the bus renumbers, a host that loses its own disk).
"""

from __future__ import annotations

from pcipass.record import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    source: str
    summary: str


_RULES = [
    Rule(
        "PP001",
        "host-in-use",
        "§15.5: 'If the host is using the device, the device cannot be assigned to the guest.'",
        "a device the host uses cannot be assigned",
    ),
    Rule(
        "PP002",
        "not-hidden",
        "§15.5: 'the device must first be hidden from the host'",
        "a device must be hidden from the host before it is assigned",
    ),
    Rule(
        "PP003",
        "no-save-restore-migrate",
        "§15.5 Limitations: 'no longer be available for save, restore, or migration'",
        "a guest holding a device cannot be saved, restored or migrated",
    ),
    Rule(
        "PP004",
        "pv-dma",
        "§15.5 Limitations: 'potential to access the DMA address space of dom0'",
        "PV passthrough lets the guest reach dom0's DMA space",
    ),
    Rule(
        "PP005",
        "rhel6-pv",
        "§15.5 Warning: 'not supported for Red Hat Enterprise Linux 6 guests'",
        "no PV passthrough to RHEL 6 guests",
    ),
    Rule(
        "PP006",
        "hvm-support",
        "§15.5: 'fully virtualized guests is only supported on Red Hat "
        "Enterprise Linux 5.4 and newer'",
        "HVM passthrough needs RHEL 5.4+ and an IOMMU",
    ),
    Rule(
        "PP007",
        "hotplug-rate",
        "§15.5 Warning: 'more than 512 times in a brief period of time can cause a kernel error'",
        "hotplug is rate-limited far below 512",
    ),
    Rule(
        "PP008",
        "acpiphp",
        "§15.5 Note: 'the acpiphp kernel module must be loaded in the guest'",
        "KVM guests need acpiphp now and at every boot",
    ),
    Rule(
        "PP009",
        "hide-merge",
        "Procedure 15.3 step 2: 'options pciback hide=(0000:09:00.0)(0000:0a:04.1)'",
        "one merged hide= line per stub module",
    ),
    Rule(
        "PP010",
        "reload-or-reboot",
        "Procedure 15.3 step 1: 'Either the bnx2 module must be "
        "reloaded or the host must be restarted.'",
        "persistent and runtime state must agree",
    ),
    Rule("PP101", "exclusive", "pcipass", "a device belongs to one guest or to the host"),
    Rule(
        "PP102",
        "iommu-group",
        "pcipass (VFIO group viability)",
        "every device of an IOMMU group goes together (bridges excepted)",
    ),
    Rule("PP103", "bridge", "pcipass", "bridges and host bridges are never assignable"),
    Rule(
        "PP104",
        "reset",
        "pcipass (libvirt's reset ladder)",
        "a device without FLR/PM/bus reset may leak state between guests",
    ),
    Rule(
        "PP105",
        "identity",
        "pcipass (BDF drift)",
        "an address recorded for a device must still name the same device",
    ),
    Rule("PP106", "sriov-pf", "pcipass", "an SR-IOV PF with active VFs takes them down with it"),
    Rule(
        "PP110",
        "next-boot-host-device",
        "pcipass (check --next-boot)",
        "a stub must not take a device the host uses at the next boot",
    ),
    Rule(
        "PP111",
        "next-boot-drift",
        "pcipass (check --next-boot)",
        "the next boot must give each device the driver pcipass was asked for",
    ),
    Rule(
        "PP120",
        "boot-console",
        "pcipass (vgaarb boot device, efifb/simpledrm, fbcon)",
        "the boot GPU leaves the host only once nothing holds its console, and never silently "
        "leaves the host without one",
    ),
    Rule(
        "PP121",
        "option-rom",
        "pcipass (PCI Firmware 3.0 §5.1; libvirt <rom file=>)",
        "a ROM given to a guest must parse and be for the device; QEMU must be able to read it",
    ),
    Rule(
        "PP122",
        "reset-method",
        "pcipass (Linux reset_method, drivers/pci/pci.c)",
        "a reset method must be one the kernel supports for the device; a reset test must "
        "find the device answering as before",
    ),
    Rule(
        "PP125",
        "sriov-vfs",
        "pcipass (the kernel's sriov_numvfs rules, drivers/pci/iov.c)",
        "VFs are created on an SR-IOV PF with a driver, at most sriov_totalvfs of them",
    ),
    Rule(
        "PP114",
        "pin-identity",
        "pcipass (devices by identity: policy/pin_match.py)",
        "a pinned name must match exactly one device: no guess between equals",
    ),
    Rule(
        "PP112",
        "desired-drift",
        "pcipass (desired state, /etc/pcipass/pcipass.toml)",
        "the ledger, the host and the desired state agree",
    ),
    Rule(
        "PP113",
        "pin-and-bdf",
        "pcipass (BDF drift)",
        "a device hidden by identity should not also be hidden by address",
    ),
]

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
