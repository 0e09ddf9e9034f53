"""``pcipass export``: device definitions for the schedulers that place VMs.

What pcipass has hidden (the ledger, or a stub driver binding) or the
addresses given is checked with the same assignability rules as ``attach``
and ``check`` (:func:`pcipass.policy.assignable.assignability_findings`); a
refused device is left out and its findings are returned, so the scheduler is
never told about a device the host still needs.  The survivors are written in
the shape each scheduler's documentation defines:

- Proxmox VE: cluster PCI resource mappings (``pvesh create
  /cluster/mapping/pci`` arguments and the ``/etc/pve/mapping/pci.cfg``
  stanza);
- OpenStack Nova: ``[pci] device_spec`` and ``alias`` options (JSON values);
- KubeVirt: ``spec.configuration.permittedHostDevices.pciHostDevices`` of the
  KubeVirt CR, as YAML;
- libvirt: node device names and ``<hostdev>`` elements.

Export only reads and formats: it writes nothing and runs nothing (the
``pvesh`` command line is quoted for display, never executed).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.compat import StrEnum
from pcipass.errors import NotFoundError, UsageError
from pcipass.host.context import Host
from pcipass.host.inventory import DeviceInfo, Inventory
from pcipass.host.stubs import STUB_DRIVERS, XEN_DRIVER, XEN_MODULE
from pcipass.ops.assignability import assignability_findings
from pcipass.ops.inventory import inventory
from pcipass.patterns import lazy
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger


class ExportFormat(StrEnum):
    PROXMOX = "proxmox"
    NOVA = "nova"
    KUBEVIRT = "kubevirt"
    LIBVIRT = "libvirt"


# Nova's alias numa_policy values (nova.conf [pci] alias).
NUMA_POLICIES = ("required", "legacy", "preferred", "socket")

# The KubeVirt resource names pcipass defines live under its own domain: an
# extended resource name is DOMAIN/NAME (Kubernetes), and the device plugin
# KubeVirt starts for a permitted device advertises exactly this name.
RESOURCE_DOMAIN = "pcipass.io"

# A host name as Proxmox accepts it for a node (a DNS label), checked because
# it is written into pci.cfg, where a comma or newline would change the entry.
_NODE_NAME = lazy(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass
class ExportDevice:
    """One device that passed the rules, with what every format needs."""

    info: DeviceInfo
    stub_driver: str | None  # the driver holding it now, or the ledger's
    warnings: list[Finding] = field(default_factory=list)

    @property
    def address(self) -> PciAddress:
        return self.info.address

    @property
    def vendor(self) -> str:
        value = self.info.device.vendor
        return "ffff" if value is None else f"{value:04x}"

    @property
    def product(self) -> str:
        value = self.info.device.device
        return "ffff" if value is None else f"{value:04x}"

    @property
    def subsystem(self) -> str | None:
        dev = self.info.device
        # Subsystem vendor 0000h is never assigned by the PCI-SIG (PCI Local
        # Bus 3.0 §6.2.4): the card has no subsystem id to check.
        if not dev.subsystem_vendor or dev.subsystem_device is None:
            return None
        return f"{dev.subsystem_vendor:04x}:{dev.subsystem_device:04x}"

    def to_json(self) -> dict[str, object]:
        return {
            "address": str(self.address),
            "vendor_id": self.vendor,
            "device_id": self.product,
            "subsystem_id": self.subsystem,
            "iommu_group": self.info.device.iommu_group,
            "numa_node": self.info.device.numa_node,
            "driver": self.stub_driver,
            "warnings": [w.to_json() for w in self.warnings],
        }


@dataclass
class Refused:
    address: PciAddress
    findings: list[Finding]

    def to_json(self) -> dict[str, object]:
        return {"address": str(self.address), "findings": [f.to_json() for f in self.findings]}


@dataclass
class ExportResult:
    format: ExportFormat
    explicit: bool  # addresses were given on the command line
    devices: list[ExportDevice]
    refused: list[Refused]
    notes: list[str]  # format-level warnings (e.g. KubeVirt selectors that collide)
    data: dict[str, object]  # the format's entries, as data
    text: str  # exactly what is printed on stdout

    @property
    def exit_code(self) -> int:
        # 3 (refused) when devices were refused and none survived: the caller
        # asked for something and gets nothing usable.
        return 3 if self.refused and not self.devices else 0

    def warning_lines(self) -> list[str]:
        lines = [f"refused, not exported: {f.render()}" for r in self.refused for f in r.findings]
        lines += [w.render() for d in self.devices for w in d.warnings]
        lines += self.notes
        return lines

    def to_json(self) -> dict[str, object]:
        return {
            "format": str(self.format),
            "exported": [d.to_json() for d in self.devices],
            "refused": [r.to_json() for r in self.refused],
            "notes": list(self.notes),
            str(self.format): self.data,
            "text": self.text,
            "exit_code": self.exit_code,
        }


def export(
    host: Host,
    fmt: ExportFormat,
    addresses: Sequence[PciAddress] = (),
    *,
    node: str | None = None,
    numa_policy: str = "preferred",
) -> ExportResult:
    """Check, then format, the hidden devices (or ``addresses``)."""
    if numa_policy not in NUMA_POLICIES:
        raise UsageError(
            f"numa policy {numa_policy!r}", f"must be one of {', '.join(NUMA_POLICIES)}"
        )
    inv = inventory(host)
    held = _held_devices(host, inv)
    targets = list(addresses) if addresses else sorted(held)
    devices, refused = _evaluate(host, inv, targets, held)
    notes: list[str] = []
    if fmt is ExportFormat.PROXMOX:
        name = _node_name(host, node)
        data, text = proxmox(devices, name, notes)
    elif fmt is ExportFormat.NOVA:
        data, text = nova(devices, numa_policy)
    elif fmt is ExportFormat.KUBEVIRT:
        data, text = kubevirt(devices, inv, notes)
    else:
        data, text = libvirt(devices)
    if not targets:
        notes.append("nothing to export: pcipass holds no hidden device (pcipass hide first)")
    return ExportResult(fmt, bool(addresses), devices, refused, notes, data, text)


# --------------------------------------------------------------------------
# Selection and rules


def _held_devices(host: Host, inv: Inventory) -> dict[PciAddress, str | None]:
    """Hidden devices: bound to a stub driver now, or recorded as hidden in
    the ledger (a --persist-only hide binds at the next boot)."""
    held: dict[PciAddress, str | None] = {
        d.address: d.device.driver for d in inv.devices if d.device.driver in STUB_DRIVERS
    }
    with Ledger.open(host.root, readonly=True) as ledger:
        for record in ledger.hidden():
            address = PciAddress.parse(record.address)
            if held.get(address) is None:
                # Older records carry the Xen module name; the driver is pciback.
                stub = record.stub_driver
                held[address] = XEN_DRIVER if stub == XEN_MODULE else stub
    return held


def _evaluate(
    host: Host,
    inv: Inventory,
    targets: list[PciAddress],
    held: dict[PciAddress, str | None],
) -> tuple[list[ExportDevice], list[Refused]]:
    """Run the assignability rules over the targets together with everything
    already hidden: a group whose other members pcipass already took from the
    host has left the host whole (PP102), the same judgement hide made."""
    by_address = inv.by_address()
    devices: list[ExportDevice] = []
    refused: list[Refused] = []
    # A device pcipass recorded that is gone from the bus is refused like
    # `check` does (PP105) instead of failing the whole export; an address
    # given on the command line that does not exist stays "not found".
    for address in [a for a in held if a not in by_address]:
        if address in targets:
            refused.append(Refused(address, [_gone(address)]))
            targets = [a for a in targets if a != address]
    together = list(targets) + [a for a in sorted(held) if a not in targets and a in by_address]
    findings = assignability_findings(host, together, inv=inv)
    for address in targets:
        mine = [f for f in findings if f.subject == str(address)]
        refusals = [f for f in mine if f.severity is Severity.REFUSE]
        if refusals:
            refused.append(Refused(address, refusals))
            continue
        info = by_address[address]
        driver = held.get(address, info.device.driver)
        warnings = [f for f in mine if f.severity is Severity.WARN]
        devices.append(ExportDevice(info, driver, warnings))
    return devices, refused


def _gone(address: PciAddress) -> Finding:
    return Finding(
        "PP105",
        Severity.REFUSE,
        str(address),
        "recorded by pcipass but no longer on the bus",
        "was the card removed? pcipass unhide --persist it to clean up",
    )


def _node_name(host: Host, given: str | None) -> str:
    """The Proxmox node name: the short host name of the root's machine."""
    name = given
    if name is None:
        name = _hostname(host)
    if name is None:
        raise NotFoundError(
            "proxmox node name",
            f"no host name found under {host.root.prefix} (/etc/hostname, "
            "/etc/sysconfig/network, /proc/sys/kernel/hostname)",
            "give it with --node NAME",
        )
    if given is None:
        name = name.split(".", 1)[0]  # a Proxmox node is named by its short host name
    if not _NODE_NAME.match(name):
        raise UsageError(
            f"node name {name!r}",
            "is not a valid host name (letters, digits, inner hyphens)",
            "give the Proxmox node name with --node NAME",
        )
    return name


def _hostname(host: Host) -> str | None:
    read = host.sysfs.read_text
    text = read(host.root.path("/etc/hostname"))
    for line in (text or "").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            return name
    # RHEL 5 keeps it in /etc/sysconfig/network (HOSTNAME=...).
    for line in (read(host.root.path("/etc/sysconfig/network")) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "HOSTNAME" and value.strip().strip("\"'"):
            return value.strip().strip("\"'")
    text = read(host.root.path("/proc/sys/kernel/hostname"))
    return text.strip() if text and text.strip() else None


# --------------------------------------------------------------------------
# Proxmox VE: cluster resource mapping (Datacenter > Resource Mappings)


def mapping_id(address: PciAddress) -> str:
    """A Proxmox mapping ID (letter first, then letters, digits, - and _)."""
    return "pcipass-" + str(address).replace(":", "-").replace(".", "-")


def proxmox(
    devices: Sequence[ExportDevice], node: str, notes: list[str]
) -> tuple[dict[str, object], str]:
    entries: list[dict[str, object]] = []
    commands: list[str] = []
    stanzas: list[str] = []
    for dev in devices:
        # The keys Proxmox checks before starting a guest: the vendor:device
        # id, the subsystem id and the IOMMU group must match the node's card.
        fields: dict[str, str] = {"node": node, "path": str(dev.address), "id": _ids(dev)}
        if dev.subsystem is not None:
            fields["subsystem-id"] = dev.subsystem
        group = dev.info.device.iommu_group
        if group is not None:
            fields["iommugroup"] = str(group)
        else:
            notes.append(
                f"{dev.address}: no IOMMU group on this host (Proxmox VE needs IOMMU and "
                "vfio-pci); the mapping carries no iommugroup"
            )
        name = mapping_id(dev.address)
        argv = [
            "pvesh",
            "create",
            "/cluster/mapping/pci",
            "--id",
            name,
            "--map",
            ",".join(f"{k}={v}" for k, v in fields.items()),
        ]
        stanza = f"{name}\n\tmap " + ",".join(f"{k}={fields[k]}" for k in sorted(fields)) + "\n"
        entries.append({"id": name, "map": fields, "pvesh": argv, "cfg": stanza})
        commands.append(shlex.join(argv))
        stanzas.append(stanza)
    text = ""
    if devices:
        text = (
            f"# Proxmox VE PCI resource mappings for node {node}\n"
            "# create them with pvesh on any cluster node:\n"
            + "".join(c + "\n" for c in commands)
            + "# or add these stanzas to /etc/pve/mapping/pci.cfg:\n"
            + "".join(stanzas)
        )
    return {"node": node, "mappings": entries}, text


def _ids(dev: ExportDevice) -> str:
    return f"{dev.vendor}:{dev.product}"


# --------------------------------------------------------------------------
# OpenStack Nova: nova.conf [pci] device_spec and alias


def nova_device_type(dev: ExportDevice) -> str:
    """Nova's device_type: type-VF for an SR-IOV virtual function, type-PF for
    a function with the SR-IOV capability, type-PCI for everything else."""
    pci = dev.info.device
    if pci.physfn is not None:
        return "type-VF"
    if pci.sriov_totalvfs:
        return "type-PF"
    return "type-PCI"


def alias_name(dev: ExportDevice) -> str:
    return f"pcipass_{dev.vendor}_{dev.product}"


def nova(devices: Sequence[ExportDevice], numa_policy: str) -> tuple[dict[str, object], str]:
    specs: list[dict[str, str]] = []
    aliases: list[dict[str, str]] = []
    for dev in devices:
        # The address pins the spec to this function: vendor:product alone
        # would also match the host's own cards of the same model.
        specs.append(
            {"vendor_id": dev.vendor, "product_id": dev.product, "address": str(dev.address)}
        )
        alias = {
            "name": alias_name(dev),
            "vendor_id": dev.vendor,
            "product_id": dev.product,
            "device_type": nova_device_type(dev),
            "numa_policy": numa_policy,
        }
        # One alias per model: Nova picks any device matching the alias.
        if alias not in aliases:
            aliases.append(alias)
    lines = [f"device_spec = {json.dumps(s)}" for s in specs]
    lines += [f"alias = {json.dumps(a)}" for a in aliases]
    text = "[pci]\n" + "".join(line + "\n" for line in lines) if devices else ""
    return {"device_spec": specs, "alias": aliases}, text


# --------------------------------------------------------------------------
# KubeVirt: permittedHostDevices in the KubeVirt CR


def resource_name(dev: ExportDevice) -> str:
    return f"{RESOURCE_DOMAIN}/{dev.vendor}_{dev.product}"


def kubevirt(
    devices: Sequence[ExportDevice], inv: Inventory, notes: list[str]
) -> tuple[dict[str, object], str]:
    entries: list[dict[str, object]] = []
    by_selector: dict[str, list[PciAddress]] = {}
    for dev in devices:
        # KubeVirt matches devices by vendor:device only (and only those bound
        # to vfio-pci); the selector is written in upper case as its docs do.
        selector = f"{dev.vendor}:{dev.product}".upper()
        if selector not in by_selector:
            by_selector[selector] = []
            entries.append(
                {
                    "pciVendorSelector": selector,
                    "resourceName": resource_name(dev),
                    "externalResourceProvider": False,
                }
            )
        by_selector[selector].append(dev.address)
    exported = {d.address for d in devices}
    for selector, members in by_selector.items():
        same = [
            d.address
            for d in inv.devices
            if d.address not in exported and f"{d.device.id_text}".upper() == selector
        ]
        if len(members) > 1:
            notes.append(
                f"warning: {', '.join(str(m) for m in members)} share the selector {selector}: "
                "KubeVirt offers them as one resource and any VM may get any of them"
            )
        if same:
            notes.append(
                f"warning: {', '.join(str(s) for s in same)} (not exported) also carry the "
                f"ids {selector}: KubeVirt takes every {selector} function bound to vfio-pci on "
                "every node, so keep the host's own cards off vfio-pci"
            )
        if any(d.stub_driver != "vfio-pci" for d in devices if d.address in members):
            notes.append(
                f"warning: {selector}: KubeVirt only uses devices bound to vfio-pci "
                "(pcipass hide --backend vfio)"
            )
    text = ""
    if entries:
        lines = [
            "# KubeVirt CR merge patch (kubectl patch kubevirt kubevirt -n kubevirt --type merge",
            "# --patch-file FILE); it replaces the whole pciHostDevices list",
            "spec:",
            "  configuration:",
            "    permittedHostDevices:",
            "      pciHostDevices:",
        ]
        for entry in entries:
            lines += [
                f"      - pciVendorSelector: {_yaml_string(str(entry['pciVendorSelector']))}",
                f"        resourceName: {_yaml_string(str(entry['resourceName']))}",
                "        externalResourceProvider: false",
            ]
        text = "\n".join(lines) + "\n"
    return {"permittedHostDevices": {"pciHostDevices": entries}}, text


def _yaml_string(value: str) -> str:
    # A JSON string is a YAML double-quoted scalar (YAML 1.2 is a JSON
    # superset), so quoting through json cannot produce invalid YAML.
    return json.dumps(value)


# --------------------------------------------------------------------------
# libvirt: node device names and <hostdev>


def nodedev_name(address: PciAddress) -> str:
    """libvirt's node device name: pci_DDDD_BB_SS_F."""
    return f"pci_{address.domain:04x}_{address.bus:02x}_{address.slot:02x}_{address.function:x}"


def libvirt(devices: Sequence[ExportDevice]) -> tuple[dict[str, object], str]:
    from pcipass.guests.libvirt_xml import hostdev_xml

    entries: list[dict[str, object]] = []
    lines: list[str] = []
    for dev in devices:
        # pciback means a Xen host (libxl's driver 'xen'); anything else VFIO.
        driver = "xen" if dev.stub_driver == XEN_DRIVER else "vfio"
        # managed='no': pcipass keeps the device off the host; managed='yes'
        # would have libvirt rebind it to the host driver when the guest stops.
        element = hostdev_xml(dev.address, driver, managed=False)
        name = nodedev_name(dev.address)
        entries.append({"address": str(dev.address), "nodedev": name, "hostdev": element})
        lines += [f"<!-- {dev.address}: nodedev {name} -->", element]
    text = "".join(line + "\n" for line in lines)
    return {"devices": entries}, text
