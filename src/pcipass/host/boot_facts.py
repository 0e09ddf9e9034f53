"""What the next boot is made of, as plain data: the forecast's inputs.

``pcipass check --next-boot`` reads these from the host (host/bootloader.py,
host/kernel_index.py, host/initramfs.py) and from the modprobe files
(persist/modprobe/effective.py); policy/forecast.py decides from them alone.
Nothing here reads a file.
"""

from __future__ import annotations

import fnmatch

from pcipass.address import PciAddress
from pcipass.record import dataclass, field


def module_key(name: str) -> str:
    """kmod's ``underscores()``: ``xen-pciback`` and ``xen_pciback`` are one module."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class Sourced:
    """A value and where it was read (``/etc/modprobe.d/x.conf:3``, ``kernel command line``)."""

    value: str
    where: str


@dataclass
class ModuleConfig:
    """A modprobe configuration as kmod applies it (modprobe.d(5)); keys are module keys.

    kmod keeps the *first* ``install`` and ``softdep`` line for a module (the
    files are read in kmod's order) and passes *every* ``options`` line, in
    order, so the kernel keeps the last value of each parameter.
    """

    # (module key, parameter key, value) in the order kmod reads them
    options: list[tuple[str, str, Sourced]] = field(default_factory=list)
    install: dict[str, Sourced] = field(default_factory=dict)
    softdep_pre: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    blacklist: dict[str, str] = field(default_factory=dict)
    alias: dict[str, Sourced] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # Every install/softdep line in order (kmod keeps them all, uses the first).
    install_lines: list[tuple[str, Sourced]] = field(default_factory=list)
    softdep_lines: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    def resolve(self, name: str) -> str:
        """An ``alias`` name resolved to its module (``pciback`` -> ``xen_pciback``)."""
        key = module_key(name)
        target = self.alias.get(key)
        return module_key(target.value) if target is not None else key

    def param(self, module: str, key: str) -> Sourced | None:
        """The value the module gets for ``key`` from these files (the last one), with
        options written for an alias name of the module counted too."""
        names = {module} | {a for a, t in self.alias.items() if module_key(t.value) == module}
        found: Sourced | None = None
        for name, param, value in self.options:
            if name in names and param == key:
                found = value
        return found


@dataclass(frozen=True)
class BootCmdline:
    """The kernel command line the next boot will have, and where it was read."""

    text: str
    where: str

    @property
    def words(self) -> list[str]:
        return self.text.split()

    def params(self, module: str) -> list[tuple[str, Sourced]]:
        """``module.param=value`` words (the kernel and kmod treat - and _ alike)."""
        found = []
        for word in self.words:
            name, eq, value = word.partition("=")
            mod, dot, param = name.rpartition(".")
            if eq and dot and module_key(mod) == module:
                found.append((module_key(param), Sourced(value, self.where)))
        return found

    def values(self, name: str) -> list[str]:
        """Every comma-separated item of ``name=`` words (``modprobe.blacklist=a,b``)."""
        items: list[str] = []
        for word in self.words:
            key, eq, value = word.partition("=")
            if eq and key == name:
                items += [v for v in value.split(",") if v]
        return items

    def has(self, word: str) -> bool:
        return word in self.words


@dataclass
class KernelModules:
    """The drivers of the kernel that will boot: its modules.alias, modules.builtin."""

    release: str
    why: str  # how this kernel was chosen (default grub entry, running kernel...)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (pattern, module key)
    builtin: frozenset[str] = frozenset()
    builtin_aliases: list[tuple[str, str]] = field(default_factory=list)
    readable: bool = True
    note: str = ""
    _index: dict[str, list[tuple[int, str, str]]] | None = field(
        default=None, repr=False, compare=False
    )

    def candidates(self, modalias: str) -> list[str]:
        """Modules whose alias matches, built-in ones first (they probe at kernel start)."""
        found: list[str] = []
        for pattern, module in self._narrowed(modalias):
            if module not in found and fnmatch.fnmatchcase(modalias, pattern):
                found.append(module)
        return sorted(found, key=lambda m: m not in self.builtin)

    def _narrowed(self, modalias: str) -> list[tuple[str, str]]:
        """The aliases that can match, in index order: a distribution's modules.alias
        has thousands of patterns, nearly all with a literal vendor and device."""
        if self._index is None:
            index: dict[str, list[tuple[int, str, str]]] = {}
            for order, (pattern, module) in enumerate([*self.builtin_aliases, *self.aliases]):
                index.setdefault(_index_key(pattern), []).append((order, pattern, module))
            self._index = index
        keys = (modalias[:22], modalias[:13], "*")  # pci:vVVVVVVVVdDDDDDDDD, pci:vVVVVVVVV
        hits = [hit for key in keys for hit in self._index.get(key, [])]
        return [(pattern, module) for _, pattern, module in sorted(hits)]


_HEX = frozenset("0123456789ABCDEF")


def _index_key(pattern: str) -> str:
    """The literal vendor+device (or vendor) prefix of a ``pci:`` pattern, else "*"."""
    if not pattern.startswith("pci:v"):
        return "*"
    vendor, device = pattern[5:13], pattern[14:22]
    if len(vendor) != 8 or not set(vendor) <= _HEX:
        return "*"
    if pattern[13:14] == "d" and len(device) == 8 and set(device) <= _HEX:
        return pattern[:22]
    return pattern[:13]


@dataclass
class Initramfs:
    """What the initramfs of that kernel holds: its modules and modprobe configuration."""

    path: str | None
    how: str  # "lsinitramfs", "lsinitrd", "read as cpio (gzip)", ...
    modules: frozenset[str] = frozenset()  # module keys
    config: ModuleConfig | None = None  # None: not read (the reason is in note)
    readable: bool = True
    note: str = ""


@dataclass(frozen=True)
class BootDevice:
    """One PCI function as the forecast sees it."""

    address: PciAddress
    vendor: int
    device: int
    subvendor: int
    subdevice: int
    class_code: int
    driver_now: str | None
    host_uses: tuple[str, ...] = ()
    boot_vga: bool = False
    asked: str | None = None  # the stub pcipass's ledger says was asked at boot
    override: Sourced | None = None  # driverctl's saved override for the next boot

    @property
    def modalias(self) -> str:
        """The kernel's ``pci:`` modalias (drivers/pci/pci-driver.c, pci_uevent)."""
        base, sub, prog = self.class_code >> 16, (self.class_code >> 8) & 0xFF, self.class_code
        return (
            f"pci:v{self.vendor:08X}d{self.device:08X}sv{self.subvendor:08X}"
            f"sd{self.subdevice:08X}bc{base:02X}sc{sub:02X}i{prog & 0xFF:02X}"
        )


@dataclass
class BootFacts:
    """Everything the forecast decides from."""

    kernel: KernelModules
    cmdline: BootCmdline
    root: ModuleConfig
    initramfs: Initramfs
    devices: list[BootDevice]
    # Modules systemd-modules-load loads at boot (/etc/modules-load.d, /etc/modules).
    load_at_boot: dict[str, str] = field(default_factory=dict)
    # module key -> the PCI driver name it registers, where sysfs shows it now
    # (i2c_i801 -> i801_smbus); other modules are assumed to use their own name.
    driver_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Hiding parameters /etc/default/grub sets that the boot entry lacks (grub.cfg
    # not regenerated): "param=value" and where it is set.
    stale_cmdline: list[Sourced] = field(default_factory=list)
