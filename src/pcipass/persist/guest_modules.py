"""acpiphp in a KVM guest, now and at every boot (rule PP008).

The source document's Note: a RHEL 5 KVM guest needs the acpiphp module
loaded to see PCI devices hot-added or removed by QEMU; load it with
``modprobe acpiphp`` and make it load at boot with::

    echo 'modprobe acpiphp' > /etc/sysconfig/modules/acpiphp.modules
    chmod +x /etc/sysconfig/modules/acpiphp.modules

RHEL 5 and 6 run every executable ``/etc/sysconfig/modules/*.modules`` from
rc.sysinit; systemd systems (and Debian's kmod init script) load the names
listed in ``modules-load.d/*.conf`` (modules-load.d(5)).  Many current
kernels have acpiphp built in (``CONFIG_HOTPLUG_PCI_ACPI=y``, Debian 6.1
among them, as checked in the KVM lab): then there is nothing to load and nothing
to write.

:func:`plan_guest_setup` only reads; it returns the file edits (through
:func:`~pcipass.persist.atomic.plan_edit`) and the command to run, and the
caller applies them and checks ``/proc/modules`` afterwards with
:func:`acpiphp_loaded`.
"""

from __future__ import annotations

import stat

from pcipass.compat import StrEnum
from pcipass.host.platform import Platform, detect_platform
from pcipass.host.root import HostRoot
from pcipass.patterns import lazy_bytes
from pcipass.persist.atomic import FileEdit, plan_edit
from pcipass.record import dataclass

MODULE = "acpiphp"
RHEL_MODULES_FILE = "/etc/sysconfig/modules/acpiphp.modules"
MODULES_LOAD_FILE = "/etc/modules-load.d/acpiphp.conf"
#: The document's file content: ``echo 'modprobe acpiphp'`` writes this line.
RHEL_CONTENT = b"modprobe acpiphp\n"
MODULES_LOAD_CONTENT = b"acpiphp\n"
#: The document's ``chmod +x`` on a file created with the usual umask 022.
RHEL_MODE = 0o755
MODULES_LOAD_MODE = 0o644
LOAD_ARGV = ("modprobe", MODULE)

#: Where modules-load.d(5) looks (the first three), and Debian's /etc/modules.
_MODULES_LOAD_DIRS = (
    "/etc/modules-load.d",
    "/run/modules-load.d",
    "/usr/lib/modules-load.d",
    "/lib/modules-load.d",
)
_BUILTIN_PATH = lazy_bytes(rb"(?:^|/)acpiphp\.ko(?:\.\w+)?$")
_MODPROBE_ACPIPHP = lazy_bytes(rb"^\s*(?:/sbin/|/usr/sbin/)?modprobe\s+(?:-\S+\s+)*acpiphp\s*$")


class AcpiphpState(StrEnum):
    BUILTIN = "builtin"  # compiled into the kernel: always there
    LOADED = "loaded"  # in /proc/modules
    NOT_LOADED = "not-loaded"  # a module that is not loaded yet
    MISSING = "missing"  # the kernel's module tree has no acpiphp
    UNKNOWN = "unknown"  # an image without /proc and without a module tree


@dataclass(frozen=True)
class GuestSetupPlan:
    """What ``pcipass guest-setup`` will do, and why."""

    state: AcpiphpState
    boot_file: str | None  # host path of the file that loads acpiphp at boot (None: built in)
    boot_configured_by: str | None  # an existing file that already loads it at boot
    edits: tuple[FileEdit, ...]
    load_argv: tuple[str, ...] | None  # run now (None: nothing to run, or not a running system)
    running: bool  # root is the running system (/proc/modules readable)
    notes: tuple[str, ...]

    @property
    def nothing_to_do(self) -> bool:
        return self.load_argv is None and not any(e.changes_anything for e in self.edits)

    def to_json(self) -> dict[str, object]:
        return {
            "rule": "PP008",
            "state": str(self.state),
            "boot_file": self.boot_file,
            "boot_configured_by": self.boot_configured_by,
            "edits": [
                {"path": e.display, "diff": e.diff()} for e in self.edits if e.changes_anything
            ],
            "load": list(self.load_argv) if self.load_argv else None,
            "running": self.running,
            "notes": list(self.notes),
        }


def acpiphp_loaded(root: HostRoot) -> bool | None:
    """Is acpiphp in /proc/modules?  None when there is no /proc/modules (an image)."""
    data = root.files.read_bytes("/proc/modules")
    if data is None:
        return None
    return any(line.split(b" ", 1)[0] == MODULE.encode() for line in data.splitlines())


def acpiphp_builtin(root: HostRoot, release: str | None) -> bool | None:
    """Built into kernel ``release``?  From modules.builtin or /boot/config-REL.

    None when neither file can be read.
    """
    if release is None:
        return None
    known = False
    builtin = root.files.read_bytes(root.host_path(root.lib_modules(release) / "modules.builtin"))
    if builtin is not None:
        known = True
        if any(_BUILTIN_PATH.search(line.strip()) for line in builtin.splitlines()):
            return True
    config = root.files.read_bytes(root.host_path(root.path("/boot") / f"config-{release}"))
    if config is not None:
        known = True
        for line in config.splitlines():
            if line.strip() == b"CONFIG_HOTPLUG_PCI_ACPI=y":
                return True
    return False if known else None


def acpiphp_module_present(root: HostRoot, release: str | None) -> bool | None:
    """Is there an acpiphp module for ``release``?  None when the tree cannot be read."""
    if release is None:
        return None
    moddir = root.lib_modules(release)
    dep = root.files.read_bytes(root.host_path(moddir / "modules.dep"))
    if dep is not None:
        return any(
            _BUILTIN_PATH.search(line.split(b":", 1)[0].strip()) for line in dep.splitlines()
        )
    # The directory as resolved inside the root (an image's absolute links
    # stay in the image); rglob does not follow links below it.
    real = root.files.real_dir(root.host_path(moddir))
    if real is None:
        return None
    return any(real.rglob("acpiphp.ko*"))


def uses_sysconfig_modules(platform: Platform) -> bool:
    """RHEL 5 and 6 (no systemd) run /etc/sysconfig/modules/*.modules at boot."""
    major = platform.major
    return platform.rhel_like and major is not None and major <= 6


def plan_guest_setup(
    root: HostRoot, platform: Platform | None = None, release: str | None = None
) -> GuestSetupPlan:
    """Plan acpiphp for this guest (or guest image under ``root``)."""
    platform = platform or detect_platform(root, release)
    kernel = release or platform.kernel_release
    loaded = acpiphp_loaded(root)
    running = loaded is not None
    builtin = acpiphp_builtin(root, kernel)
    notes: list[str] = []
    if builtin:
        notes.append(
            f"acpiphp is built into kernel {kernel} (CONFIG_HOTPLUG_PCI_ACPI=y): "
            "nothing to load, nothing to write"
        )
        return GuestSetupPlan(AcpiphpState.BUILTIN, None, None, (), None, running, tuple(notes))
    present = acpiphp_module_present(root, kernel)
    if loaded:
        state = AcpiphpState.LOADED
    elif present is False:
        state = AcpiphpState.MISSING
        notes.append(
            f"kernel {kernel} has no acpiphp module; install the kernel's modules package "
            "(hot-plugged devices will not be seen until then)"
        )
    elif running:
        state = AcpiphpState.NOT_LOADED
    else:
        state = AcpiphpState.UNKNOWN
        notes.append("not a running system (no /proc/modules): acpiphp will load at next boot")

    sysconfig = uses_sysconfig_modules(platform)
    existing = _configured_at_boot(root, sysconfig)
    edits: tuple[FileEdit, ...] = ()
    boot_file = RHEL_MODULES_FILE if sysconfig else MODULES_LOAD_FILE
    if existing is not None and existing != boot_file:
        notes.append(f"{existing} already loads acpiphp at boot")
    else:
        edits = (_boot_edit(root, sysconfig),)
    load = LOAD_ARGV if state is AcpiphpState.NOT_LOADED else None
    return GuestSetupPlan(
        state,
        boot_file,
        existing,
        edits,
        load,
        running,
        tuple(notes),
    )


def _boot_edit(root: HostRoot, sysconfig: bool) -> FileEdit:
    """The document's file (RHEL 5/6) or a modules-load.d entry, merged with what is there."""
    if sysconfig:
        path, content, mode = RHEL_MODULES_FILE, RHEL_CONTENT, RHEL_MODE
        matches = _loads_in_script
    else:
        path, content, mode = MODULES_LOAD_FILE, MODULES_LOAD_CONTENT, MODULES_LOAD_MODE
        matches = _listed_in_modules_load
    target = root.path(path)
    before = root.files.read_bytes(path)
    if before is None or not before.strip():
        after = content
    elif matches(before):
        after = before  # already right; the edit may still fix the mode
    else:
        # Someone else's file of that name: keep every byte, add our line.
        after = before + (b"" if before.endswith(b"\n") else b"\n") + content
    return plan_edit(target, path, after, mode)


def _loads_in_script(data: bytes) -> bool:
    return any(_MODPROBE_ACPIPHP.match(line) for line in data.splitlines())


def _listed_in_modules_load(data: bytes) -> bool:
    # modules-load.d(5): one name per line; '#' and ';' start comments.
    for line in data.splitlines():
        name = line.strip()
        if name and not name.startswith((b"#", b";")) and name.replace(b"-", b"_") == b"acpiphp":
            return True
    return False


def _configured_at_boot(root: HostRoot, sysconfig: bool) -> str | None:
    """An existing file that already loads acpiphp at every boot (and would run)."""
    if sysconfig:
        for name in root.files.list_dir("/etc/sysconfig/modules"):
            if not name.endswith(".modules"):
                continue
            entry = f"/etc/sysconfig/modules/{name}"
            # rc.sysinit runs only the executable ones ([ -x $file ] && $file).
            info = root.files.stat(entry)
            if info is None or not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o111:
                continue
            data = root.files.read_bytes(entry)
            if data is not None and _loads_in_script(data):
                return entry
        return None
    for load_dir in _MODULES_LOAD_DIRS:
        for name in root.files.list_dir(load_dir):
            if not name.endswith(".conf") or not root.files.is_file(f"{load_dir}/{name}"):
                continue
            text = root.files.read_bytes(f"{load_dir}/{name}")
            if text is not None and _listed_in_modules_load(text):
                return f"{load_dir}/{name}"
    debian = root.files.read_bytes("/etc/modules")
    if debian is not None and _listed_in_modules_load(debian):
        return "/etc/modules"
    return None
