"""Which kernel the next boot starts, with which command line and initramfs.

Read, never executed: grub's generated ``/boot/grub/grub.cfg`` (or grub2's)
is what grub runs at the next boot, so its default entry decides: ``set
default=`` (an index, ``A>B`` into a submenu, an entry title or ``--id``, or
``${saved_entry}`` from ``grubenv``), then that entry's ``linux`` line (for
Xen, ``multiboot2``/``multiboot`` starts the hypervisor and the first
``module2``/``module`` line is dom0's kernel) and ``initrd``.  A grub.cfg that
hands over to Boot Loader Specification entries (``blscfg``, Fedora/RHEL 8+)
is followed into ``/boot/loader/entries/*.conf`` (``linux``, ``initrd``,
``options``, ``$kernelopts`` from grubenv).  Without a boot loader
configuration the running kernel and ``/proc/cmdline`` are what is known.
"""

from __future__ import annotations

import re
import shlex

from pcipass.host.root import HostRoot
from pcipass.record import dataclass, field

GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
GRUBENVS = ("/boot/grub/grubenv", "/boot/grub2/grubenv")
BLS_DIR = "/boot/loader/entries"


@dataclass
class BootEntry:
    title: str
    entry_id: str = ""
    kernel: str = ""  # the Linux image path as the entry names it
    args: str = ""
    initrd: str = ""
    xen: bool = False
    children: list[BootEntry] = field(default_factory=list)  # a submenu


@dataclass
class NextBoot:
    """The next boot as far as the files say."""

    release: str | None
    cmdline: str
    initrd: str | None
    why: str  # how it was chosen
    cmdline_where: str
    xen: bool = False
    notes: list[str] = field(default_factory=list)
    from_loader: bool = True  # False: no boot loader configuration, the running kernel


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split()


def parse_grub_cfg(text: str) -> tuple[str, list[BootEntry]]:
    """(the ``set default=`` value, the menu) of a generated grub.cfg."""
    default = "0"
    root: list[BootEntry] = []
    stack: list[list[BootEntry]] = [root]
    current: list[BootEntry] = []
    for raw in text.splitlines():
        line = raw.strip()
        words = _words(line)
        if not words:
            continue
        head = words[0]
        if head == "set" and len(words) > 1 and words[1].startswith("default="):
            default = words[1].split("=", 1)[1]
        elif head in ("menuentry", "submenu"):
            title = words[1] if len(words) > 1 else ""
            ident = ""
            if "--id" in words:
                ident = (
                    words[words.index("--id") + 1] if words.index("--id") + 1 < len(words) else ""
                )
            elif "$menuentry_id_option" in line:
                match = re.search(r"\$menuentry_id_option\s+'([^']*)'", line)
                ident = match.group(1) if match else ""
            entry = BootEntry(title, ident)
            stack[-1].append(entry)
            current.append(entry)
            if head == "submenu":
                stack.append(entry.children)
        elif head == "}" and current:
            done = current.pop()
            if stack[-1] is done.children and len(stack) > 1:
                stack.pop()
        elif current and head in ("linux", "linux16", "linuxefi") and len(words) > 1:
            current[-1].kernel, current[-1].args = words[1], " ".join(words[2:])
        elif current and head in ("multiboot2", "multiboot"):
            current[-1].xen = True
        elif current and head in ("module2", "module") and current[-1].xen:
            args = [w for w in words[1:] if w != "--nounzip"]
            if not current[-1].kernel and args:
                current[-1].kernel, current[-1].args = args[0], " ".join(args[1:])
            elif args and not current[-1].initrd:
                current[-1].initrd = args[0]
        elif current and head in ("initrd", "initrd16", "initrdefi") and len(words) > 1:
            current[-1].initrd = words[-1]  # the last image is the system's (microcode first)
    return default, root


def _grubenv(root: HostRoot) -> dict[str, str]:
    for path in GRUBENVS:
        data = root.files.read_bytes(path)
        if data is not None:
            env = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, eq, value = line.partition("=")
                if eq and not key.startswith("#"):
                    env[key.strip()] = value
            return env
    return {}


def pick(default: str, menu: list[BootEntry]) -> BootEntry | None:
    """grub's choice: ``A>B`` walks submenus; each part is an index, an id or a title."""
    entries = menu
    chosen: BootEntry | None = None
    for part in default.split(">"):
        chosen = None
        if part.isdigit():
            index = int(part)
            chosen = entries[index] if index < len(entries) else None
        else:
            chosen = next((e for e in entries if part in (e.entry_id, e.title)), None)
        if chosen is None:
            return None
        entries = chosen.children
    if chosen is not None and chosen.children:
        return chosen.children[0]
    return chosen


def release_of(kernel: str) -> str | None:
    """``/vmlinuz-6.1.0-26-amd64`` -> ``6.1.0-26-amd64``."""
    name = kernel.rsplit("/", 1)[-1]
    for prefix in ("vmlinuz-", "vmlinux-", "bzImage-", "kernel-"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def _bls_entries(root: HostRoot, kernelopts: str) -> list[BootEntry]:
    entries = []
    for name in root.files.list_dir(BLS_DIR):
        if not name.endswith(".conf"):
            continue
        data = root.files.read_bytes(f"{BLS_DIR}/{name}") or b""
        entry = BootEntry(name[: -len(".conf")], name[: -len(".conf")])
        for line in data.decode("utf-8", "replace").splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "title":
                entry.title = value.strip()
            elif key == "linux":
                entry.kernel = value.strip()
            elif key == "initrd":
                entry.initrd = value.split()[-1] if value.split() else ""
            elif key == "options":
                entry.args = value.strip().replace("$kernelopts", kernelopts)
        entries.append(entry)
    # grub's blscfg sorts newest version first (rpm version order; a plain sort is close).
    return sorted(entries, key=lambda e: _version_key(e.entry_id), reverse=True)


def _version_key(text: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-_+~]", text)]


def _boot_path(root: HostRoot, path: str) -> str:
    """An entry's path as the root file system sees it (/boot may be its own partition)."""
    if path.startswith("/boot/") or root.files.exists(path):
        return path
    return "/boot" + path if path.startswith("/") else path


def read_next_boot(root: HostRoot, running: str | None) -> NextBoot:
    """The default entry of the boot loader, or the running kernel when none is found."""
    for path in GRUB_CFGS:
        data = root.files.read_bytes(path)
        if data is None:
            continue
        default, menu = parse_grub_cfg(data.decode("utf-8", "replace"))
        env = _grubenv(root)
        if default in ("${saved_entry}", "$saved_entry", "${next_entry}"):
            default = env.get("next_entry") or env.get("saved_entry") or "0"
        if "blscfg" in data.decode("utf-8", "replace") and root.files.is_dir(BLS_DIR):
            menu = _bls_entries(root, env.get("kernelopts", "")) + menu
        entry = pick(default, menu)
        if entry is None or not entry.kernel:
            return _running(root, running, [f"{path}: default entry {default!r} not found"])
        return NextBoot(
            release_of(entry.kernel),
            entry.args,
            _boot_path(root, entry.initrd) if entry.initrd else None,
            f"{path}: default entry {entry.title!r} (default={default})",
            f"{path} ({entry.title})",
            xen=entry.xen,
        )
    return _running(root, running, ["no grub.cfg found"])


def _running(root: HostRoot, running: str | None, notes: list[str]) -> NextBoot:
    text = (root.files.read_bytes("/proc/cmdline") or b"").decode("utf-8", "replace").strip()
    return NextBoot(
        running,
        text,
        None,
        "the running kernel (" + "; ".join(notes) + ")",
        "/proc/cmdline (the running kernel's)",
        notes=list(notes),
        from_loader=False,
    )
