"""Boot files for fake trees: a kernel's module index, grub.cfg, initramfs archives.

The next-boot forecast (``check --next-boot``) reads these; the tests write
them into an example host.  The module index is derived from the fake
kernel's own driver table (fakehost.KNOWN_DRIVERS), so what the forecast
predicts and what the fake kernel binds come from one list.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Mapping

from pcipass.testing.fakehost import KNOWN_DRIVERS, FakeHost


def alias_line(vendor: int, device: int, module: str) -> str:
    """A depmod ``modules.alias`` line for a vendor:device id table entry."""
    return f"alias pci:v{vendor:08X}d{device:08X}sv*sd*bc*sc*i* {module.replace('-', '_')}\n"


def write_module_index(
    host: FakeHost,
    release: str,
    *,
    builtin: Iterable[str] = (),
    builtin_aliases: Mapping[str, Iterable[str]] | None = None,
    without: Iterable[str] = (),
) -> None:
    """``/lib/modules/RELEASE/modules.alias`` for every known driver's ids (modules
    in ``builtin`` go to modules.builtin and modules.builtin.modinfo instead)."""
    builtin = set(builtin)
    skip = set(without)
    aliases = []
    modinfo = b""
    for module, spec in sorted(KNOWN_DRIVERS.items()):
        if spec.stub or module in skip:
            continue
        for vendor, device in sorted(spec.ids):
            line = alias_line(vendor, device, module)
            if module in builtin:
                pattern = line.split()[1]
                modinfo += f"{module.replace('-', '_')}.alias={pattern}\0".encode()
            else:
                aliases.append(line)
    for module, patterns in (builtin_aliases or {}).items():
        for pattern in patterns:
            modinfo += f"{module}.alias={pattern}\0".encode()
    base = f"/lib/modules/{release}"
    host.write_file(
        f"{base}/modules.alias", "# Aliases extracted from modules themselves.\n" + "".join(aliases)
    )
    host.write_file(
        f"{base}/modules.builtin",
        "".join(f"kernel/drivers/misc/{m}.ko\n" for m in sorted(builtin)),
    )
    host.write_file(f"{base}/modules.builtin.modinfo", modinfo)


def newc(files: Mapping[str, bytes], *, directories: Iterable[str] = ()) -> bytes:
    """An uncompressed cpio "newc" archive (buffer-format.rst): directories, then files."""
    out = b""
    ino = 1
    entries = [(d, None) for d in directories] + list(files.items())
    for name, data in [*entries, ("TRAILER!!!", b"")]:
        mode = 0o040755 if data is None else (0o100644 if name != "TRAILER!!!" else 0)
        body = data or b""
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
        out += header + encoded + b"\0" * ((-(110 + len(encoded))) % 4)
        out += body + b"\0" * ((-len(body)) % 4)
        ino += 1
    return out


def initramfs_image(
    modules: Iterable[str],
    config: Mapping[str, str],
    release: str,
    *,
    microcode: bool = True,
) -> bytes:
    """An image laid out as Debian's mkinitramfs writes it: an uncompressed early
    microcode archive, then the gzip-compressed main archive holding the
    modules (``lib/modules/RELEASE/kernel/.../NAME.ko``) and modprobe files."""
    files = {f"usr/lib/modules/{release}/kernel/drivers/{m}.ko": b"\x7fELF" for m in modules}
    files.update({path.lstrip("/"): text.encode() for path, text in config.items()})
    main = gzip.compress(newc(files, directories=["usr", "usr/lib", "etc"]))
    early = newc({"kernel/x86/microcode/GenuineIntel.bin": b"\0" * 16}) if microcode else b""
    return early + b"\0" * ((-len(early)) % 512) + main
