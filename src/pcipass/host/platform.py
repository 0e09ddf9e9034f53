"""Which distribution, kernel and boot tooling a host (or a guest image) has.

Persistent hiding is written differently on each platform, so every persist
writer asks a :class:`Platform` first:

* RHEL 5 (kernel 2.6.18, module-init-tools): the document's lines in
  ``/etc/modprobe.conf``, stub module ``pciback`` (source document,
  Procedure 15.3 step 1).
* Current kernels with kmod: the stub is ``xen-pciback`` (upstream since 3.1)
  or ``vfio-pci``; kmod reads only ``modprobe.d`` directories, never
  ``/etc/modprobe.conf`` (kmod ``libkmod.c`` default_config_paths).
* A stub built into the kernel ignores modprobe options entirely; then only
  the kernel command line can hide a device at boot.

Everything is read from files under a :class:`~pcipass.host.root.HostRoot`, so
``--root DIR`` works on a guest image, and every decision can be overridden
with ``--platform rhel5|modprobe.d|cmdline``.  Nothing here runs a program.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pcipass.backend import Backend
from pcipass.compat import StrEnum
from pcipass.errors import PcipassError, UsageError
from pcipass.host.root import HostRoot, safe_name
from pcipass.host.stubs import (
    STUB_MODULES,
    VFIO_MODULE,
    XEN_MODULE_OLD,
    is_2_6_kernel,
    xen_stub_module,
)
from pcipass.patterns import lazy
from pcipass.record import dataclass, field


class PersistMethod(StrEnum):
    """How a hide is made to survive a reboot (the ``--platform`` values)."""

    RHEL5 = "rhel5"  # the document's install + options lines (modprobe.conf)
    MODPROBE_D = "modprobe.d"  # /etc/modprobe.d/pcipass.conf: options + softdep
    CMDLINE = "cmdline"  # GRUB_CMDLINE_LINUX in /etc/default/grub


class StubState(StrEnum):
    MODULE = "module"
    BUILTIN = "builtin"
    ABSENT = "absent"  # the kernel's module tree was read and has no such stub
    UNKNOWN = "unknown"  # no module tree to look at (no kernel release, or not installed)


class InitramfsTool(StrEnum):
    DRACUT = "dracut"
    INITRAMFS_TOOLS = "initramfs-tools"
    MKINITRD = "mkinitrd"  # RHEL 5


class GrubFlavour(StrEnum):
    LEGACY = "grub-legacy"  # /boot/grub/grub.conf edited in place (RHEL 5)
    UPDATE_GRUB = "update-grub"  # Debian, Ubuntu
    GRUB2_MKCONFIG = "grub2-mkconfig"  # RHEL 7+, Fedora


#: The file pcipass owns on systems that read modprobe.d.
PCIPASS_MODPROBE_FILE = "/etc/modprobe.d/pcipass.conf"
RHEL5_MODPROBE_FILE = "/etc/modprobe.conf"
DEFAULT_GRUB_FILE = "/etc/default/grub"

# RHEL 5 has only /etc/redhat-release; it names the product and the release.
_REDHAT_RELEASE = lazy(r"^(?P<name>.*?)\s+release\s+(?P<version>[0-9][0-9.]*)", re.IGNORECASE)
_REDHAT_FAMILIES = (
    ("red hat enterprise linux", "rhel"),
    ("centos", "centos"),
    ("fedora", "fedora"),
    ("rocky", "rocky"),
    ("almalinux", "almalinux"),
    ("oracle linux", "ol"),
    ("scientific linux", "scientific"),
)
_RHEL_LIKE = frozenset({"rhel", "centos", "rocky", "almalinux", "ol", "scientific"})
_MODULE_SUFFIX = lazy(r"\.ko(?:\.(?:gz|xz|zst|bz2))?$")


@dataclass(frozen=True)
class Regeneration:
    """A command to run after a persistent edit, and when it is needed."""

    argv: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"argv": list(self.argv), "reason": self.reason}


@dataclass(frozen=True)
class Platform:
    """What pcipass found out about a host (or image), and what it will do there."""

    family: str  # rhel, centos, fedora, debian, ubuntu, ..., or "unknown"
    version: str  # "5.4", "12", "" when unknown
    pretty_name: str
    kernel_release: str | None
    xen_stub: str  # "pciback" (RHEL 5, 2.6.18) or "xen-pciback"
    stubs: tuple[tuple[str, StubState], ...]  # for each of STUB_MODULES
    reads_modprobe_conf: bool  # module-init-tools era: /etc/modprobe.conf is read
    initramfs: InitramfsTool | None
    grub: GrubFlavour | None
    grub_cfg: str | None  # the generated file grub2-mkconfig must write
    bls: bool  # /boot/loader/entries exists (BootLoaderSpec entries, RHEL 8+, Fedora)
    override: PersistMethod | None = None
    evidence: tuple[str, ...] = field(default=())  # files that decided the answers

    # --- derived facts ---------------------------------------------------------
    @property
    def major(self) -> int | None:
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def rhel_like(self) -> bool:
        return self.family in _RHEL_LIKE

    @property
    def is_rhel5(self) -> bool:
        """RHEL 5 or a rebuild of it (CentOS 5...): the document's platform."""
        return self.rhel_like and self.major == 5

    def stub_state(self, module: str) -> StubState:
        wanted = module.replace("_", "-")
        for name, state in self.stubs:
            if name == wanted:
                return state
        return StubState.UNKNOWN

    def stub_module(self, backend: Backend) -> str:
        """The stub module's name on this platform, as modprobe files spell it."""
        return self.xen_stub if backend is Backend.PCIBACK else VFIO_MODULE

    def method_for(self, backend: Backend) -> PersistMethod:
        """The persistence method for ``backend`` (the override wins)."""
        if self.override is not None:
            if self.override is PersistMethod.RHEL5 and backend is Backend.VFIO:
                raise UsageError(
                    "--platform rhel5",
                    "the RHEL 5 modprobe.conf form hides devices for pciback only",
                    "use --platform modprobe.d or --platform cmdline with --backend vfio",
                )
            return self.override
        # A built-in stub never sees modprobe options (modprobe.d(5): options
        # apply when the module is loaded); only the command line reaches it.
        if self.stub_state(self.stub_module(backend)) is StubState.BUILTIN:
            return PersistMethod.CMDLINE
        if (
            backend is Backend.PCIBACK
            and self.xen_stub == XEN_MODULE_OLD
            and self.reads_modprobe_conf
        ):
            return PersistMethod.RHEL5
        return PersistMethod.MODPROBE_D

    def modprobe_path(self, method: PersistMethod) -> str:
        """The modprobe file that ``method`` edits (host path)."""
        if method is PersistMethod.RHEL5 and self.reads_modprobe_conf:
            return RHEL5_MODPROBE_FILE
        if method is PersistMethod.CMDLINE:
            raise ValueError("the cmdline method edits /etc/default/grub, not a modprobe file")
        # kmod never reads /etc/modprobe.conf: the RHEL 5 lines go where it looks.
        return PCIPASS_MODPROBE_FILE

    def regeneration(self, method: PersistMethod) -> tuple[Regeneration, ...]:
        """Commands to suggest after an edit made with ``method``."""
        if method is PersistMethod.CMDLINE:
            return self._bootloader_regeneration()
        return self._initramfs_regeneration()

    def _initramfs_regeneration(self) -> tuple[Regeneration, ...]:
        # The initramfs carries its own copy of the modprobe configuration
        # (dracut's kernel-modules module, initramfs-tools' hook); a driver
        # loaded from it would otherwise still grab the device at boot.
        why = "needed when the host driver is loaded from the initramfs"
        release = self.kernel_release
        if self.initramfs is InitramfsTool.DRACUT:
            if release is None:
                return (Regeneration(("dracut", "--force", "--regenerate-all"), why),)
            image = f"/boot/initramfs-{release}.img"
            return (Regeneration(("dracut", "--force", image, release), why),)
        if self.initramfs is InitramfsTool.INITRAMFS_TOOLS:
            return (Regeneration(("update-initramfs", "-u", "-k", release or "all"), why),)
        if self.initramfs is InitramfsTool.MKINITRD and release is not None:
            image = f"/boot/initrd-{release}.img"
            return (Regeneration(("mkinitrd", "-f", image, release), why),)
        return ()

    def _bootloader_regeneration(self) -> tuple[Regeneration, ...]:
        why = "writes /etc/default/grub's GRUB_CMDLINE_LINUX into the boot menu"
        if self.grub is GrubFlavour.UPDATE_GRUB:
            return (Regeneration(("update-grub",), why),)
        if self.grub is GrubFlavour.GRUB2_MKCONFIG:
            argv: tuple[str, ...] = (
                "grub2-mkconfig",
                "-o",
                self.grub_cfg or "/boot/grub2/grub.cfg",
            )
            # RHEL 9.3+ (and Fedora 38+) keep the arguments in BLS entries and
            # only rewrite them when asked (grub2-mkconfig --update-bls-cmdline).
            if self.bls and self._bls_needs_update_flag():
                argv += ("--update-bls-cmdline",)
            return (Regeneration(argv, why),)
        return ()

    def _bls_needs_update_flag(self) -> bool:
        major = self.major
        if major is None:
            return False
        if self.family == "fedora":
            return major >= 38
        return self.rhel_like and major >= 9

    @property
    def cmdline_editable(self) -> bool:
        """pcipass edits /etc/default/grub; legacy GRUB has no such file."""
        return self.grub in (GrubFlavour.UPDATE_GRUB, GrubFlavour.GRUB2_MKCONFIG)

    def to_json(self) -> dict[str, object]:
        return {
            "family": self.family,
            "version": self.version,
            "pretty_name": self.pretty_name,
            "kernel_release": self.kernel_release,
            "xen_stub": self.xen_stub,
            "stubs": {name: str(state) for name, state in self.stubs},
            "reads_modprobe_conf": self.reads_modprobe_conf,
            "initramfs": None if self.initramfs is None else str(self.initramfs),
            "grub": None if self.grub is None else str(self.grub),
            "grub_cfg": self.grub_cfg,
            "bls": self.bls,
            "override": None if self.override is None else str(self.override),
            "methods": {str(b): str(self.method_for(b)) for b in self._methods_without_error()},
            "evidence": list(self.evidence),
        }

    def _methods_without_error(self) -> list[Backend]:
        if self.override is PersistMethod.RHEL5:
            return [Backend.PCIBACK]
        return [Backend.PCIBACK, Backend.VFIO]


def parse_platform_override(text: str | None) -> PersistMethod | None:
    """The ``--platform`` value: rhel5, modprobe.d or cmdline (None: detect)."""
    if text is None or text in ("", "auto"):
        return None
    try:
        return PersistMethod(text)
    except ValueError:
        choices = ", ".join(m.value for m in PersistMethod)
        raise UsageError(
            f"--platform {text!r}", "unknown platform", f"choose one of: auto, {choices}"
        ) from None


def detect_platform(
    root: HostRoot,
    release: str | None = None,
    override: str | PersistMethod | None = None,
) -> Platform:
    """Work out the platform from files under ``root``.

    ``release`` overrides the running kernel release (read from
    ``/proc/sys/kernel/osrelease``; for an image without /proc, the only
    directory under ``/lib/modules``).  ``override`` is the ``--platform`` value.
    """
    method = override if isinstance(override, PersistMethod) else parse_platform_override(override)
    evidence: list[str] = []
    family, version, pretty = _read_distribution(root, evidence)
    kernel = _kernel_release(root, release, evidence)
    stubs = stub_states(root, kernel, evidence)
    states = dict(stubs)
    old_kernel = kernel is not None and is_2_6_kernel(kernel)
    rhel5 = family in _RHEL_LIKE and version.split(".", 1)[0] == "5"
    xen_stub = xen_stub_module(
        installed_stubs(states),
        old_kernel=old_kernel or rhel5 or _nothing_known(family, kernel, method),
    )
    reads_conf = rhel5 or old_kernel or _nothing_known(family, kernel, method)
    initramfs = _initramfs_tool(root, family, rhel5, evidence)
    grub, grub_cfg = _grub(root, family, rhel5, evidence)
    bls = root.path("/boot/loader/entries").is_dir()
    return Platform(
        family=family,
        version=version,
        pretty_name=pretty,
        kernel_release=kernel,
        xen_stub=xen_stub,
        stubs=stubs,
        reads_modprobe_conf=reads_conf,
        initramfs=initramfs,
        grub=grub,
        grub_cfg=grub_cfg,
        bls=bls,
        override=method,
        evidence=tuple(evidence),
    )


def _nothing_known(family: str, kernel: str | None, method: PersistMethod | None) -> bool:
    """``--platform rhel5`` on a tree that says nothing else: take it as RHEL 5."""
    return method is PersistMethod.RHEL5 and family == "unknown" and kernel is None


def _read_text(root: HostRoot, path: Path) -> str | None:
    """A file of the root for detection, resolved inside it; None when unreadable."""
    try:
        data = root.files.read_bytes(root.host_path(path))
    except PcipassError:
        return None
    return None if data is None else data.decode("utf-8", "replace")


def _read_distribution(root: HostRoot, evidence: list[str]) -> tuple[str, str, str]:
    family, version, pretty = "unknown", "", ""
    os_release = None
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        os_release = _read_text(root, root.path(candidate))
        if os_release is not None:
            evidence.append(candidate)
            break
    if os_release is not None:
        fields = parse_os_release(os_release)
        family = fields.get("ID", "unknown").lower() or "unknown"
        version = fields.get("VERSION_ID", "")
        pretty = fields.get("PRETTY_NAME", "")
    redhat = _read_text(root, root.path("/etc/redhat-release"))
    if redhat is not None:
        evidence.append("/etc/redhat-release")
        # RHEL 5 and 6 have no os-release; on later releases both agree.
        rh_family, rh_version = parse_redhat_release(redhat)
        if family == "unknown" or not version:
            family, version = rh_family, rh_version
        if not pretty:
            pretty = redhat.strip().splitlines()[0] if redhat.strip() else ""
    return family, version, pretty


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): shell-style KEY=value lines; read, never executed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        if not re.fullmatch(r"[A-Z0-9_]+", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            # os-release(5): in double quotes, \\ \" \$ \` are escapes.
            value = re.sub(r"\\([\\\"$`])", r"\1", value)
        fields[key] = value
    return fields


def parse_redhat_release(text: str) -> tuple[str, str]:
    """``Red Hat Enterprise Linux Server release 5.4 (Tikanga)`` -> (rhel, 5.4)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _REDHAT_RELEASE.match(first)
    lowered = first.lower()
    family = "unknown"
    for needle, name in _REDHAT_FAMILIES:
        if needle in lowered:
            family = name
            break
    version = match.group("version").rstrip(".") if match else ""
    return family, version


def _kernel_release(root: HostRoot, release: str | None, evidence: list[str]) -> str | None:
    if release is not None:
        evidence.append("--kernel-release")
        return safe_name("kernel release", release.strip())
    text = _read_text(root, root.path("/proc/sys/kernel/osrelease"))
    if text is not None and text.strip():
        evidence.append("/proc/sys/kernel/osrelease")
        return safe_name("kernel release", text.strip())
    # A guest image has no /proc: one installed kernel is unambiguous.
    try:
        entries = sorted(p.name for p in root.path("/lib/modules").iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(entries) == 1:
        evidence.append("/lib/modules")
        return safe_name("kernel release", entries[0])
    return None


def _normalise(name: str) -> str:
    return name.replace("_", "-")


def stub_states(
    root: HostRoot, release: str | None, evidence: list[str]
) -> tuple[tuple[str, StubState], ...]:
    unknown = tuple((name, StubState.UNKNOWN) for name in STUB_MODULES)
    if release is None:
        return unknown
    moddir = root.lib_modules(release)
    if not moddir.is_dir():
        return unknown
    builtin = _module_names(_read_text(root, moddir / "modules.builtin"))
    if builtin:
        evidence.append(f"/lib/modules/{release}/modules.builtin")
    dep_text = _read_text(root, moddir / "modules.dep")
    if dep_text is not None:
        evidence.append(f"/lib/modules/{release}/modules.dep")
        modules = _module_names("\n".join(line.split(":", 1)[0] for line in dep_text.splitlines()))
    else:
        modules = _walk_module_names(moddir)
        evidence.append(f"/lib/modules/{release}/ (walked)")
    states: list[tuple[str, StubState]] = []
    for name in STUB_MODULES:
        if name in builtin:
            states.append((name, StubState.BUILTIN))
        elif name in modules:
            states.append((name, StubState.MODULE))
        else:
            states.append((name, StubState.ABSENT))
    return tuple(states)


def _module_names(text: str | None) -> set[str]:
    """Module names from modules.builtin / modules.dep paths, - and _ unified."""
    names: set[str] = set()
    if not text:
        return names
    for line in text.splitlines():
        base = line.strip().rsplit("/", 1)[-1]
        if _MODULE_SUFFIX.search(base):
            names.add(_normalise(_MODULE_SUFFIX.sub("", base)))
    return names


def _walk_module_names(moddir: Path) -> set[str]:
    names: set[str] = set()
    for _dirpath, _dirs, files in os.walk(moddir):
        for filename in files:
            if _MODULE_SUFFIX.search(filename):
                names.add(_normalise(_MODULE_SUFFIX.sub("", filename)))
    return names


def running_xen_stub(root: HostRoot) -> str:
    """The Xen stub module of the running kernel (the same decision
    :func:`detect_platform` makes, from the kernel alone: hiding now does not
    depend on which distribution's files are present)."""
    evidence: list[str] = []
    try:
        kernel = _kernel_release(root, None, evidence)
    except UsageError:  # a release that is no safe path part: no module tree to ask
        kernel = None
    states = dict(stub_states(root, kernel, evidence))
    old = kernel is not None and is_2_6_kernel(kernel)
    return xen_stub_module(installed_stubs(states), old_kernel=old)


def installed_stubs(states: dict[str, StubState]) -> set[str]:
    """The stub modules a kernel has, as a module or built in."""
    return {
        name for name, state in states.items() if state in (StubState.MODULE, StubState.BUILTIN)
    }


def _exists_any(root: HostRoot, paths: tuple[str, ...]) -> str | None:
    for candidate in paths:
        if root.path(candidate).exists():
            return candidate
    return None


def _initramfs_tool(
    root: HostRoot, family: str, rhel5: bool, evidence: list[str]
) -> InitramfsTool | None:
    if rhel5:
        return InitramfsTool.MKINITRD
    found = _exists_any(root, ("/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"))
    if found:
        evidence.append(found)
        return InitramfsTool.DRACUT
    found = _exists_any(root, ("/usr/sbin/update-initramfs", "/sbin/update-initramfs"))
    if found:
        evidence.append(found)
        return InitramfsTool.INITRAMFS_TOOLS
    found = _exists_any(root, ("/sbin/mkinitrd", "/usr/sbin/mkinitrd"))
    if found:
        evidence.append(found)
        return InitramfsTool.MKINITRD
    if family in _RHEL_LIKE or family == "fedora":
        return InitramfsTool.DRACUT
    if family in ("debian", "ubuntu"):
        return InitramfsTool.INITRAMFS_TOOLS
    return None


def _grub(
    root: HostRoot, family: str, rhel5: bool, evidence: list[str]
) -> tuple[GrubFlavour | None, str | None]:
    if rhel5:
        legacy = _exists_any(root, ("/boot/grub/grub.conf", "/boot/grub/menu.lst"))
        return GrubFlavour.LEGACY, legacy or "/boot/grub/grub.conf"
    update = _exists_any(root, ("/usr/sbin/update-grub", "/sbin/update-grub"))
    if update:
        evidence.append(update)
        return GrubFlavour.UPDATE_GRUB, "/boot/grub/grub.cfg"
    mkconfig = _exists_any(root, ("/usr/sbin/grub2-mkconfig", "/sbin/grub2-mkconfig"))
    if mkconfig or family in _RHEL_LIKE or family == "fedora":
        if mkconfig:
            evidence.append(mkconfig)
        return GrubFlavour.GRUB2_MKCONFIG, _grub2_cfg(root, evidence)
    if family in ("debian", "ubuntu"):
        return GrubFlavour.UPDATE_GRUB, "/boot/grub/grub.cfg"
    legacy = _exists_any(root, ("/boot/grub/grub.conf", "/boot/grub/menu.lst"))
    if legacy:
        evidence.append(legacy)
        return GrubFlavour.LEGACY, legacy
    return None, None


def _grub2_cfg(root: HostRoot, evidence: list[str]) -> str:
    # RHEL 7 on UEFI generates /boot/efi/EFI/<vendor>/grub.cfg; RHEL 9 and
    # Fedora 34+ use /boot/grub2/grub.cfg everywhere (the EFI one is a stub
    # that must not be overwritten).  Prefer what exists, BIOS path first.
    bios = "/boot/grub2/grub.cfg"
    if root.path(bios).exists():
        evidence.append(bios)
        return bios
    for vendor in ("redhat", "centos", "rocky", "almalinux", "fedora"):
        candidate = f"/boot/efi/EFI/{vendor}/grub.cfg"
        if root.path(candidate).is_file():
            evidence.append(candidate)
            return candidate
    return bios
