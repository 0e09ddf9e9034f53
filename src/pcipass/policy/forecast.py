"""Which driver will claim each device at the next boot, and why (issue #16 item 4).

Pure: handed :class:`~pcipass.host.boot_facts.BootFacts`, reads nothing.
The boot is modelled as Linux runs it:

1. **driverctl** (``/etc/driverctl.d/pci-BDF``): its udev rule writes the
   saved ``driver_override`` when the device is added, before any driver
   probes it; with an override only that driver may bind (pci_match_device()).
2. **Built-in drivers** (modules.builtin) register at kernel start, before any
   module can load: a stub that is a module cannot take a device from them.
   A built-in stub takes what its command-line parameters name.
3. **The initramfs**: udev loads each device's driver by modalias from the
   modules the image holds, with the image's own modprobe configuration
   (copied when it was built) and the command line's ``module.param=``;
   ``rd.driver.pre=`` loads modules first (dracut).
4. **The root file system**: udev's coldplug does the same with /etc's
   configuration and every module of the kernel; a device bound in the
   initramfs stays bound.

When a device's driver is loaded (``modprobe ALIAS``), kmod runs the module's
first ``install`` command instead, or loads its ``softdep pre:`` modules
first (modprobe.d(5)); a stub loaded before the driver takes the devices its
``hide=`` (pciback) or ``ids=`` (vfio-pci, pci-stub) names, read only at load.
``blacklist`` and ``modprobe.blacklist=`` stop loading by alias only.
"""

from __future__ import annotations

from pcipass.address import PciAddress, parse_hide_list
from pcipass.errors import UsageError
from pcipass.host.boot_facts import (
    BootCmdline,
    BootDevice,
    BootFacts,
    ModuleConfig,
    Sourced,
    module_key,
)
from pcipass.host.stubs import PCI_STUB_DRIVER, VFIO_DRIVER, XEN_DRIVER
from pcipass.patterns import lazy
from pcipass.policy.verdict import Finding, Severity
from pcipass.record import dataclass, field

# Stub module key -> (sysfs driver, the parameter naming what it takes).
STUBS = {
    "pciback": (XEN_DRIVER, "hide"),
    "xen_pciback": (XEN_DRIVER, "hide"),
    "vfio_pci": (VFIO_DRIVER, "ids"),
    "pci_stub": (PCI_STUB_DRIVER, "ids"),
}
STUB_DRIVER_NAMES = frozenset(d for d, _ in STUBS.values())

# Rule ids (docs/rules.md).
HOST_DEVICE_RULE = "PP110"  # a stub would take a device the host uses
DRIFT_RULE = "PP111"  # the forecast differs from what pcipass was asked

# Firmware framebuffers that keep the boot GPU's memory (drivers/video/fbdev,
# drivers/gpu/drm/tiny) and the command-line words that turn them off.
FRAMEBUFFERS = ("efifb", "simpledrm", "vesafb", "simplefb")
FRAMEBUFFER_OFF = ("video=efifb:off", "video=vesafb:off", "initcall_blacklist=sysfb_init")

# An install command that loads nothing (the "disable a module" idiom).
_NOOP_INSTALL = lazy(r"^\s*(/usr)?/s?bin/(true|false)\s*$|^\s*(true|false|:)\s*$")


@dataclass
class DeviceForecast:
    """The driver that will claim one device at the next boot, and the chain of evidence."""

    address: PciAddress
    driver: str | None
    stage: str  # driverctl, built-in, initramfs, root, none
    evidence: list[str] = field(default_factory=list)
    driver_now: str | None = None
    asked: str | None = None
    certain: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "address": str(self.address),
            "driver": self.driver,
            "stage": self.stage,
            "certain": self.certain,
            "driver_now": self.driver_now,
            "asked": self.asked,
            "evidence": list(self.evidence),
        }


@dataclass
class Collision:
    """A stub's ``ids=`` entry and every device it would take."""

    stub: str
    entry: str
    where: str
    devices: list[PciAddress]

    def to_json(self) -> dict[str, object]:
        return {
            "stub": self.stub,
            "entry": self.entry,
            "where": self.where,
            "devices": [str(a) for a in self.devices],
        }


@dataclass
class Forecast:
    devices: list[DeviceForecast]
    collisions: list[Collision]
    findings: list[Finding]


# --- what a stub's parameters name ---------------------------------------------------


def _stub_params(stub: str, config: ModuleConfig, cmdline: BootCmdline) -> Sourced | None:
    """The stub's hide=/ids= as the kernel gets it: the files' last value, then the
    command line's (kmod appends ``module.param=`` of /proc/cmdline after the files')."""
    _, param = STUBS[stub]
    value = config.param(stub, param) if config is not None else None
    for key, given in cmdline.params(stub):
        if key == param:
            value = given
    return value


def _id_matches(entry: str, device: BootDevice) -> bool:
    """vfio-pci/pci-stub ``ids=`` entry ``vendor:device[:subvendor:subdevice]``
    (PCI_ANY_ID when absent), as drivers/vfio/pci/vfio_pci.c parses it."""
    parts = entry.split(":")
    if len(parts) not in (2, 4):
        return False
    try:
        want = [int(p, 16) for p in parts]
    except ValueError:
        return False
    have = [device.vendor, device.device, device.subvendor, device.subdevice]
    return all(w in (h, 0xFFFFFFFF) for w, h in zip(want, have))


def names_device(stub: str, value: Sourced | None, device: BootDevice) -> bool:
    if value is None:
        return False
    if STUBS[stub][1] == "hide":
        try:
            return device.address in parse_hide_list(value.value)
        except UsageError:
            return False
    return any(_id_matches(e, device) for e in value.value.split(",") if e)


# --- the load chain of one module ----------------------------------------------------


@dataclass
class _Stage:
    name: str
    config: ModuleConfig
    available: frozenset[str] | None  # None: every module of the kernel
    builtin: frozenset[str]
    driver_names: dict[str, str] = field(default_factory=dict)

    def has(self, module: str) -> bool:
        return module in self.builtin or self.available is None or module in self.available


def load_chain(module: str, stage: _Stage, depth: int = 0) -> tuple[list[str], list[str], bool]:
    """What ``modprobe MODULE`` loads, in order: (modules, why, loads MODULE itself).

    kmod runs the module's ``install`` command instead of loading it (only its
    ``modprobe`` invocations matter here); otherwise its ``softdep pre:``
    modules first.  An install command that does not load the module means
    the module never loads this way."""
    why: list[str] = []
    if depth > 8:
        return [], ["install/softdep loop"], False
    install = stage.config.install.get(module)
    if install is not None:
        why.append(f"install {module} {install.value} ({install.where})")
        loaded: list[str] = []
        itself = False
        for part in install.value.split(";"):
            words = part.split()
            if not words or not words[0].endswith("modprobe"):
                continue
            ignore = "--ignore-install" in words or "-i" in words
            names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            if not names:
                continue
            target = stage.config.resolve(names[0])
            if target == module and ignore:
                loaded.append(module)
                itself = True
            elif target != module:
                sub, sub_why, _ = load_chain(target, stage, depth + 1)
                loaded += [m for m in sub if m not in loaded]
                why += sub_why
        return loaded, why, itself
    order: list[str] = []
    pre = stage.config.softdep_pre.get(module)
    if pre is not None:
        why.append(f"softdep {module} pre: {' '.join(pre[0])} ({pre[1]})")
        for dep in pre[0]:
            sub, sub_why, _ = load_chain(stage.config.resolve(dep), stage, depth + 1)
            order += [m for m in sub if m not in order]
            why += sub_why
    return [*order, module], why, True


# --- the decision for one device -----------------------------------------------------


def _blacklisted(module: str, stage: _Stage, cmdline: BootCmdline) -> str | None:
    if module in {module_key(m) for m in cmdline.values("modprobe.blacklist")}:
        return f"modprobe.blacklist= on the {cmdline.where}"
    where = stage.config.blacklist.get(module)
    return f"blacklist {module} ({where})" if where is not None else None


def _claiming_stub(
    loaded: list[str], device: BootDevice, stage: _Stage, cmdline: BootCmdline
) -> tuple[str, Sourced] | None:
    for module in loaded:
        if module in STUBS:
            value = _stub_params(module, stage.config, cmdline)
            if names_device(module, value, device):
                assert value is not None
                return module, value
    return None


def _stage_claim(
    device: BootDevice,
    candidates: list[str],
    stage: _Stage,
    cmdline: BootCmdline,
    *,
    preloaded: list[str],
    forecast: DeviceForecast,
) -> bool:
    """Does a driver (or a stub) claim the device in this stage?  Fills the forecast."""
    pre = _claiming_stub(preloaded, device, stage, cmdline)
    if pre is not None:
        first, given = pre
        forecast.driver, forecast.stage = STUBS[first][0], stage.name
        forecast.evidence.append(
            f"{stage.name}: {first} is loaded before any driver and its "
            f"{STUBS[first][1]}={given.value} ({given.where}) names it"
        )
        return True
    for module in candidates:
        if module in stage.builtin or not stage.has(module):
            continue
        barred = _blacklisted(module, stage, cmdline)
        if barred is not None:
            forecast.evidence.append(
                f"{stage.name}: {module} matches but is not loaded by alias: {barred}"
            )
            continue
        loaded, why, itself = load_chain(module, stage)
        forecast.evidence += [f"{stage.name}: {w}" for w in why]
        loaded = [m for m in loaded if stage.has(m)]
        stub = _claiming_stub(loaded, device, stage, cmdline)
        if stub is not None:
            name, value = stub
            forecast.driver, forecast.stage = STUBS[name][0], stage.name
            forecast.evidence.append(
                f"{stage.name}: loading {module} loads {name} first; its "
                f"{STUBS[name][1]}={value.value} ({value.where}) names it"
            )
            return True
        if not itself:
            forecast.evidence.append(f"{stage.name}: the install line never loads {module}")
            continue
        for module_loaded in loaded:
            if module_loaded in STUBS and module_loaded != module:
                forecast.evidence.append(
                    f"{stage.name}: {module_loaded} loads first but does not name it"
                )
        forecast.driver, forecast.stage = _driver_name(module, stage.driver_names), stage.name
        forecast.evidence.append(f"{stage.name}: udev loads {module} for {device.modalias}")
        return True
    return False


def _driver_name(module: str, names: dict[str, str]) -> str:
    """The sysfs driver name of a module: a stub's own; the one sysfs shows for a
    loaded module; else the module name (most drivers register under it)."""
    return STUBS[module][0] if module in STUBS else names.get(module, module)


# The PCIe port services driver: bool in Kconfig, so never a module and absent
# from every module index; it takes PCI-to-PCI bridges (class 0604xx) that are
# PCIe root, upstream or downstream ports.  Seen bound now, it will be again
# (it cannot be blacklisted or unloaded).
PCIE_PORT_DRIVER = "pcieport"
_PCI_BRIDGE_CLASS = 0x0604


def _pcie_port_now(device: BootDevice) -> bool:
    return device.driver_now == PCIE_PORT_DRIVER and device.class_code >> 8 == _PCI_BRIDGE_CLASS


def forecast_device(
    facts: BootFacts, device: BootDevice, preloaded: dict[str, list[str]]
) -> DeviceForecast:
    result = DeviceForecast(device.address, None, "none", [], device.driver_now, device.asked)
    kernel, cmdline = facts.kernel, facts.cmdline
    if device.override is not None:
        result.driver, result.stage = device.override.value, "driverctl"
        result.evidence.append(
            f"driverctl override {device.override.value} ({device.override.where}): "
            "only that driver may bind it"
        )
        return result
    if not kernel.readable:
        result.stage, result.certain = "unknown", False
        result.evidence.append(f"the drivers of {kernel.release} are unknown: {kernel.note}")
        return result
    candidates = kernel.candidates(device.modalias)
    if not candidates and _pcie_port_now(device):
        result.driver, result.stage = PCIE_PORT_DRIVER, "built-in"
        result.evidence.append(
            f"{PCIE_PORT_DRIVER} drives this PCI bridge now: the PCIe port driver "
            "(drivers/pci/pcie/portdrv.c, CONFIG_PCIEPORTBUS) is a yes/no option, built into "
            "the kernel and listed in neither modules.alias nor modules.builtin; it binds every "
            "PCIe port by class at kernel start"
        )
        return result
    if not candidates:
        result.evidence.append(f"no driver of {kernel.release} matches {device.modalias}")
    builtin_stubs = [s for s in STUBS if s in kernel.builtin]
    for stub in builtin_stubs:
        value = _stub_params(stub, ModuleConfig(), cmdline)
        if names_device(stub, value, device):
            assert value is not None
            result.driver, result.stage = STUBS[stub][0], "built-in"
            result.evidence.append(
                f"{stub} is built into {kernel.release} and {STUBS[stub][1]}={value.value} "
                f"({value.where}) names it"
            )
            return result
    builtin = [m for m in candidates if m in kernel.builtin]
    if builtin:
        result.driver, result.stage = _driver_name(builtin[0], facts.driver_names), "built-in"
        result.evidence.append(
            f"{builtin[0]} is built into {kernel.release} (modules.builtin): it binds at "
            "kernel start, before any module (a stub module cannot take it first)"
        )
        return result
    for stage in _stages(facts):
        if _stage_claim(
            device,
            candidates,
            stage,
            cmdline,
            preloaded=preloaded[stage.name],
            forecast=result,
        ):
            return result
    # Unclaimed: a stub loaded for another reason later still takes what it names.
    for stage in _stages(facts):
        late = _claiming_stub(preloaded.get(stage.name + "+late", []), device, stage, cmdline)
        if late is not None:
            name, given = late
            result.driver, result.stage = STUBS[name][0], stage.name
            result.evidence.append(
                f"{stage.name}: no driver binds it first; {name} is loaded at boot and its "
                f"{STUBS[name][1]}={given.value} ({given.where}) names it"
            )
            return result
    if candidates:
        result.evidence.append("no matching driver is loaded at boot")
    return result


def _stages(facts: BootFacts) -> list[_Stage]:
    stages = []
    initramfs = facts.initramfs
    if initramfs.path is not None and initramfs.readable:
        stages.append(
            _Stage(
                "initramfs",
                initramfs.config if initramfs.config is not None else facts.root,
                initramfs.modules,
                facts.kernel.builtin,
                facts.driver_names,
            )
        )
    stages.append(_Stage("root", facts.root, None, facts.kernel.builtin, facts.driver_names))
    return stages


def _preloaded(facts: BootFacts) -> dict[str, list[str]]:
    """Modules loaded before udev's driver matching (rd.driver.pre=, in the initramfs;
    whatever the initramfs loaded carries into the root stage), and those loaded at
    some point of the boot for another reason (``+late``)."""
    result: dict[str, list[str]] = {}
    carried: list[str] = []
    for stage in _stages(facts):
        first: list[str] = list(carried)
        if stage.name == "initramfs":
            for name in facts.cmdline.values("rd.driver.pre"):
                loaded, _, _ = load_chain(stage.config.resolve(name), stage)
                first += [m for m in loaded if stage.has(m) and m not in first]
        result[stage.name] = first
        late = list(first)
        if stage.name == "root":
            late += [m for m in facts.load_at_boot if m not in late]
        result[stage.name + "+late"] = late
        carried = first
    return result


# --- collisions and findings ---------------------------------------------------------


def collisions(facts: BootFacts) -> list[Collision]:
    """Every ``ids=`` entry of vfio-pci/pci-stub and the devices it matches."""
    found: list[Collision] = []
    for stub in ("vfio_pci", "pci_stub"):
        value = _stub_params(stub, facts.root, facts.cmdline)
        if value is None:
            continue
        for entry in [e for e in value.value.split(",") if e]:
            devices = [d.address for d in facts.devices if _id_matches(entry, d)]
            found.append(Collision(STUBS[stub][0], entry, value.where, devices))
    return found


def _findings(
    facts: BootFacts, forecasts: list[DeviceForecast], hits: list[Collision]
) -> list[Finding]:
    by = {d.address: d for d in facts.devices}
    findings: list[Finding] = []
    for fc in forecasts:
        device = by[fc.address]
        stubbed = fc.driver in STUB_DRIVER_NAMES
        why = "; ".join(fc.evidence[-2:])
        if stubbed and device.host_uses:
            findings.append(
                Finding(
                    HOST_DEVICE_RULE,
                    Severity.REFUSE,
                    str(fc.address),
                    f"at the next boot {fc.driver} takes it, but the host uses it "
                    f"({'; '.join(device.host_uses)}): {why}",
                    "remove the line that names it before rebooting (pcipass unhide --persist "
                    f"{fc.address}, or narrow an ids= entry)",
                )
            )
        if not fc.certain:
            continue
        if device.asked is not None and fc.driver != device.asked:
            findings.append(
                Finding(
                    DRIFT_RULE,
                    Severity.WARN,
                    str(fc.address),
                    f"pcipass was asked to hide it at boot on {device.asked}, but the next "
                    f"boot gives it to {fc.driver or 'no driver'}: {why}",
                    "pcipass hide --persist again (it writes the ordering line), or see "
                    "pcipass check",
                )
            )
        elif device.asked is None and stubbed and not device.host_uses:
            findings.append(
                Finding(
                    DRIFT_RULE,
                    Severity.INFO,
                    str(fc.address),
                    f"the next boot gives it to {fc.driver}, which pcipass's ledger did not ask: "
                    f"{why}",
                    "",
                )
            )
        if stubbed and device.boot_vga:
            findings += _framebuffer(facts, fc)
    for stale in facts.stale_cmdline:
        findings.append(
            Finding(
                DRIFT_RULE,
                Severity.WARN,
                stale.value,
                f"is set in {stale.where} but not on the command line of the boot entry "
                f"({facts.cmdline.where}): grub.cfg was not regenerated, the next boot "
                "will not have it",
                "regenerate grub.cfg (update-grub, or grub2-mkconfig -o the grub.cfg path)",
            )
        )
    for hit in hits:
        others = [a for a in hit.devices if by[a].asked is None]
        if len(hit.devices) > 1 and others:
            findings.append(
                Finding(
                    HOST_DEVICE_RULE,
                    Severity.WARN,
                    f"{hit.stub} ids={hit.entry}",
                    f"({hit.where}) matches {len(hit.devices)} devices: "
                    f"{', '.join(str(a) for a in hit.devices)}; pcipass was not asked to hide "
                    f"{', '.join(str(a) for a in others)}",
                    "use per-device driver_override (pcipass hide --now) or driverctl for one "
                    "of identical devices",
                )
            )
    return findings


def _framebuffer(facts: BootFacts, fc: DeviceForecast) -> list[Finding]:
    """The boot GPU's memory is kept by the firmware framebuffer: the stub binds, but
    vfio-pci's BAR mapping fails ("BAR 0: can't reserve") until it lets go."""
    present = [f for f in FRAMEBUFFERS if f in facts.kernel.builtin]
    off = [w for w in FRAMEBUFFER_OFF if facts.cmdline.has(w)]
    if not present or off:
        return []
    return [
        Finding(
            HOST_DEVICE_RULE,
            Severity.WARN,
            str(fc.address),
            f"is the boot GPU and {', '.join(present)} (built into {facts.kernel.release}) "
            "keeps its framebuffer memory: the guest may fail to map its BAR",
            "add video=efifb:off (or initcall_blacklist=sysfb_init) to the kernel command line",
        )
    ]


def forecast(facts: BootFacts, only: list[PciAddress] | None = None) -> Forecast:
    """The next boot's driver for every device (or the ``only`` ones), with findings."""
    preloaded = _preloaded(facts)
    devices = [d for d in facts.devices if not only or d.address in only]
    forecasts = [forecast_device(facts, d, preloaded) for d in devices]
    hits = collisions(facts)
    relevant = [h for h in hits if not only or any(a in only for a in h.devices)]
    return Forecast(forecasts, relevant, _findings(facts, forecasts, relevant))
