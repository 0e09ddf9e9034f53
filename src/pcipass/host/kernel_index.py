"""The driver index of an installed kernel: modules.alias, modules.builtin, modules.builtin.modinfo.

depmod writes ``/lib/modules/RELEASE/modules.alias`` (``alias PATTERN MODULE``
for every loadable module's MODULE_DEVICE_TABLE) and the kernel build writes
``modules.builtin`` (one ``kernel/.../NAME.ko`` per built-in module) and,
since Linux 5.2, ``modules.builtin.modinfo`` (NUL-separated ``NAME.KEY=VALUE``
records, the built-in drivers' aliases among them).  udev matches a device's
modalias against these patterns (fnmatch) to load its driver.
"""

from __future__ import annotations

from pcipass.host.boot_facts import KernelModules, module_key
from pcipass.host.root import HostRoot


def _name_of(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return module_key(base[: -len(suffix)])
    return module_key(base)


def parse_aliases(text: str) -> list[tuple[str, str]]:
    """``alias PATTERN MODULE`` lines of PCI devices, in file order."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and words[1].startswith("pci:"):
            found.append((words[1], module_key(words[2])))
    return found


def parse_builtin(text: str) -> frozenset[str]:
    return frozenset(_name_of(line.strip()) for line in text.splitlines() if line.strip())


def parse_builtin_modinfo(data: bytes) -> list[tuple[str, str]]:
    """The ``NAME.alias=pci:...`` records of modules.builtin.modinfo."""
    found = []
    for record in data.split(b"\0"):
        key, eq, value = record.decode("utf-8", "replace").partition("=")
        name, dot, field = key.partition(".")
        if eq and dot and field == "alias" and value.startswith("pci:"):
            found.append((value, module_key(name)))
    return found


def read_kernel_modules(root: HostRoot, release: str, why: str) -> KernelModules:
    """The index of ``release`` inside the root (read through the confined reader)."""
    files = root.files
    base = f"/lib/modules/{release}"
    alias = files.read_bytes(f"{base}/modules.alias")
    builtin = files.read_bytes(f"{base}/modules.builtin")
    modinfo = files.read_bytes(f"{base}/modules.builtin.modinfo")
    kernel = KernelModules(release, why)
    if alias is None and builtin is None:
        kernel.readable = False
        kernel.note = f"{base} has no modules.alias nor modules.builtin: drivers unknown"
        return kernel
    kernel.aliases = parse_aliases((alias or b"").decode("utf-8", "replace"))
    kernel.builtin = parse_builtin((builtin or b"").decode("utf-8", "replace"))
    kernel.builtin_aliases = parse_builtin_modinfo(modinfo or b"")
    if alias is None:
        kernel.note = f"{base}/modules.alias is missing (run depmod {release})"
    return kernel
