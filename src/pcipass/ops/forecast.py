"""``pcipass check --next-boot``: gather what the next boot is made of, then forecast.

The readers live below (host/bootloader.py, host/kernel_index.py,
host/initramfs.py, persist/modprobe/effective.py, persist/cmdline.py); the
decision is policy/forecast.py's.  This module only wires them together and
says where each fact came from.
"""

from __future__ import annotations

from collections.abc import Sequence

from pcipass.address import PciAddress
from pcipass.errors import AddressError, ExitCode
from pcipass.host.boot_facts import (
    BootCmdline,
    BootDevice,
    BootFacts,
    Initramfs,
    ModuleConfig,
    Sourced,
)
from pcipass.host.bootloader import NextBoot, read_next_boot
from pcipass.host.context import Host
from pcipass.host.initramfs import initramfs_candidates, list_initramfs, module_names
from pcipass.host.kernel_index import read_kernel_modules
from pcipass.host.stubs import XEN_DRIVER, XEN_MODULE
from pcipass.ops.inventory import inventory
from pcipass.patterns import lazy
from pcipass.persist.cmdline import collect_grub_files, entry_text, read_configured
from pcipass.persist.modprobe.effective import read_module_config
from pcipass.persist.modprobe.installed import collect_modprobe_files
from pcipass.policy.forecast import Forecast, forecast
from pcipass.policy.verdict import Finding, worst_exit
from pcipass.record import dataclass, field
from pcipass.state.ledger import Ledger

_RELEASE = lazy(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")
DRIVERCTL_DIR = "/etc/driverctl.d"
MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/run/modules-load.d", "/usr/lib/modules-load.d")


@dataclass
class NextBootReport:
    boot: NextBoot
    facts: BootFacts
    result: Forecast
    notes: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return self.result.findings

    @property
    def exit_code(self) -> ExitCode:
        """``check``'s: 3 with a PP110 refusal, 1 with warnings, else 0."""
        return worst_exit(self.findings)

    def to_json(self) -> dict[str, object]:
        return {
            "next_boot": self._next_boot_json(),
            "findings": [f.to_json() for f in self.findings],
            "exit_code": int(self.exit_code),
        }

    def _next_boot_json(self) -> dict[str, object]:
        kernel, initramfs = self.facts.kernel, self.facts.initramfs
        return {
            "kernel": {"release": kernel.release, "why": kernel.why, "readable": kernel.readable},
            "cmdline": {"text": self.facts.cmdline.text, "where": self.facts.cmdline.where},
            "initramfs": {
                "path": initramfs.path,
                "how": initramfs.how,
                "readable": initramfs.readable,
                "modules": sorted(initramfs.modules),
                "config_files": list(initramfs.config.files) if initramfs.config else [],
                "note": initramfs.note,
            },
            "devices": [d.to_json() for d in self.result.devices],
            "collisions": [c.to_json() for c in self.result.collisions],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        kernel, initramfs, cmdline = self.facts.kernel, self.facts.initramfs, self.facts.cmdline
        lines = [
            f"next boot: kernel {kernel.release} ({kernel.why})",
            f"  command line ({cmdline.where}): {cmdline.text or '(empty)'}",
        ]
        if initramfs.path is None:
            lines.append(f"  initramfs: none found ({initramfs.note})")
        elif not initramfs.readable:
            lines.append(f"  initramfs: {initramfs.path}: {initramfs.note}")
        else:
            files = ", ".join(initramfs.config.files) if initramfs.config else "not read"
            lines.append(
                f"  initramfs: {initramfs.path} ({initramfs.how}): "
                f"{len(initramfs.modules)} modules; modprobe files: {files or 'none'}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        for fc in self.result.devices:
            asked = f" (pcipass asked {fc.asked})" if fc.asked else ""
            lines.append(
                f"{fc.address}: {fc.driver_now or 'no driver'} now -> "
                f"{fc.driver or 'no driver'} at the next boot [{fc.stage}]{asked}"
            )
            lines += [f"    {e}" for e in fc.evidence]
        for hit in self.result.collisions:
            lines.append(
                f"{hit.stub} ids={hit.entry} ({hit.where}) matches: "
                f"{', '.join(str(a) for a in hit.devices) or 'no device'}"
            )
        lines += [f.render() for f in self.result.findings]
        return "\n".join(lines)


def _release(text: str | None) -> str | None:
    return text if text is not None and _RELEASE.match(text) else None


def _running_release(host: Host) -> str | None:
    data = host.root.files.read_bytes("/proc/sys/kernel/osrelease")
    if data is not None:
        return _release(data.decode("utf-8", "replace").strip())
    releases = host.root.files.list_dir("/lib/modules")
    return _release(releases[0]) if len(releases) == 1 else None


def _driverctl(host: Host) -> dict[PciAddress, Sourced]:
    """driverctl's saved overrides: ``/etc/driverctl.d/pci-BDF`` holds the driver name."""
    found: dict[PciAddress, Sourced] = {}
    for name in host.root.files.list_dir(DRIVERCTL_DIR):
        if not name.startswith("pci-"):
            continue
        try:
            address = PciAddress.parse(name[4:])
        except AddressError:
            continue
        path = f"{DRIVERCTL_DIR}/{name}"
        words = (host.root.files.read_bytes(path) or b"").decode("utf-8", "replace").split()
        if words:
            found[address] = Sourced(words[0], path)
    return found


def _modules_load(host: Host) -> dict[str, str]:
    """Modules systemd-modules-load (or Debian's /etc/modules) loads at every boot."""
    files = host.root.files
    paths = ["/etc/modules"] + [
        f"{d}/{n}" for d in MODULES_LOAD_DIRS for n in files.list_dir(d) if n.endswith(".conf")
    ]
    found: dict[str, str] = {}
    for path in paths:
        data = files.read_bytes(path) if files.is_file(path) else None
        for number, line in enumerate((data or b"").decode("utf-8", "replace").splitlines(), 1):
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if words:
                found.setdefault(words[0].replace("-", "_"), f"{path}:{number}")
    return found


def _driver_names(host: Host) -> dict[str, str]:
    names: dict[str, str] = {}
    drivers = host.root.pci_drivers
    for driver in host.root.files.list_dir(host.root.host_path(drivers)):
        module = host.sysfs.link_name(drivers / driver / "module")
        if module is not None:
            names[module.replace("-", "_")] = driver
    return names


def _initramfs(host: Host, boot: NextBoot, release: str | None) -> Initramfs:
    paths = [boot.initrd] if boot.initrd else []
    if release is not None:
        paths += initramfs_candidates(release)
    path = next((p for p in paths if host.root.files.is_file(p)), None)
    if path is None:
        return Initramfs(None, "", note="no initramfs for this kernel: only / counts")
    listing = list_initramfs(host.root, host.runner, path)
    if listing.contents is None:
        return Initramfs(path, listing.how, readable=False, note=listing.note)
    config: ModuleConfig | None = None
    if not listing.note:
        config = read_module_config(listing.contents.config, label="initramfs:")
    return Initramfs(
        path, listing.how, module_names(listing.contents.names), config, note=listing.note
    )


def _cmdline(host: Host, boot: NextBoot) -> tuple[BootCmdline, list[Sourced]]:
    """The boot entry's command line, checked against /etc/default/grub: without a
    grub.cfg, the line grub-mkconfig would write from it is the best forecast; with
    one, a hiding parameter set there but missing from the entry means grub.cfg
    was not regenerated."""
    files = collect_grub_files(host.root)
    if not files:
        return BootCmdline(boot.cmdline, boot.cmdline_where), []
    xen = boot.xen or host.is_xen_dom0
    configured = read_configured(files, xen=xen)
    if not boot.from_loader:
        where = "/etc/default/grub, as grub-mkconfig will write it (no grub.cfg found)"
        return BootCmdline(entry_text(configured, xen=xen), where), []
    words = set(boot.cmdline.split())
    stale = [
        Sourced(f"{t.param}={t.value}", t.where)
        for t in configured.hides.tokens
        if t.effective and f"{t.param}={t.value}" not in words
    ]
    return BootCmdline(boot.cmdline, boot.cmdline_where), stale


def _asked(host: Host) -> dict[PciAddress, str]:
    """The devices pcipass's ledger says were hidden at boot, and their stub."""
    with Ledger.open(host.root, readonly=True) as ledger:
        return {
            PciAddress.parse(str(r.address)): XEN_DRIVER
            if r.stub_driver == XEN_MODULE
            else r.stub_driver
            for r in ledger.hidden()
            if r.how in ("persist", "both")
        }


def gather(host: Host) -> tuple[NextBoot, BootFacts, list[str]]:
    running = _running_release(host)
    boot = read_next_boot(host.root, running)
    release = _release(boot.release) or running
    notes = list(boot.notes)
    if boot.release is not None and _release(boot.release) is None:
        notes.append(f"the boot entry's kernel {boot.release!r} is no release name")
    kernel = read_kernel_modules(host.root, release, boot.why) if release else None
    if kernel is None:
        from pcipass.host.boot_facts import KernelModules

        kernel = KernelModules("unknown", boot.why, readable=False, note="no kernel release")
    if kernel.note:
        notes.append(kernel.note)
    initramfs = _initramfs(host, boot, release)
    if initramfs.note and initramfs.path is not None:
        notes.append(f"initramfs: {initramfs.note}")
    overrides = _driverctl(host)
    asked = _asked(host)
    devices = []
    for info in inventory(host).devices:
        dev = info.device
        devices.append(
            BootDevice(
                dev.address,
                dev.vendor or 0,
                dev.device or 0,
                dev.subsystem_vendor or 0,
                dev.subsystem_device or 0,
                dev.class_code or 0,
                dev.driver,
                tuple(u.detail for u in info.uses),
                dev.boot_vga,
                asked.get(dev.address),
                overrides.get(dev.address),
            )
        )
    cmdline, stale = _cmdline(host, boot)
    facts = BootFacts(
        kernel,
        cmdline,
        read_module_config(collect_modprobe_files(host.root)),
        initramfs,
        devices,
        load_at_boot=_modules_load(host),
        driver_names=_driver_names(host),
        notes=notes,
        stale_cmdline=stale,
    )
    return boot, facts, notes


def next_boot(host: Host, only: Sequence[PciAddress] = ()) -> NextBootReport:
    """The forecast for every device (or the ``only`` ones)."""
    boot, facts, notes = gather(host)
    by = {d.address for d in facts.devices}
    missing = [a for a in only if a not in by]
    if missing:
        from pcipass.errors import NotFoundError

        raise NotFoundError(str(missing[0]), "no such PCI device", "see pcipass list")
    return NextBootReport(boot, facts, forecast(facts, list(only) or None), notes)
