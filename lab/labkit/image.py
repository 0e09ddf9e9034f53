"""Build the guest initramfs images (newc cpio, gzip) from the unpacked packages.

One builder serves both scenarios: a busybox + kmod + Python 3.11 root with pcipass copied from
the working tree and the lab's guest agent; the Xen dom0 adds the Xen toolstack and a domU payload
(kernel + tiny busybox initramfs with xen-pcifront).
"""

from __future__ import annotations

import compileall
import gzip
import os
import py_compile
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

LAB = Path(__file__).resolve().parent.parent
REPO = LAB.parent
GUEST = LAB / "guest"

# Kernel modules each image needs (dependencies are added from modules.dep).
XEN_MODULES = (
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-pciback",
    "e1000",
    "e1000e",  # the xen5 boot's uplink: e1000 then drives the spare alone (#18 --reload-driver)
    "pci-stub",
)
KVM_MODULES = ("vfio-pci", "vfio_iommu_type1", "e1000", "e1000e", "pci-stub", "8139cp")

# Parts of the Python standard library pcipass never needs; dropped to keep the image small
# (the initramfs is unpacked into dom0's RAM at every boot).
STDLIB_DROP = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "unittest",
    "config-3.11-x86_64-linux-gnu",
    "site-packages",
    "dist-packages",
)
DYNLOAD_DROP_PREFIXES = ("_test", "_xx", "xxlimited", "_ctypes_test", "audioop", "ossaudiodev")


class BuildError(RuntimeError):
    """The image could not be built."""


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _busybox_root(root: Path, stage: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "root",
        "var/lib",
        "var/log",
        "var/lock",
        "lib",
        "usr/lib",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")
    shutil.copy2(stage / "bin/busybox", root / "bin/busybox")
    applets = subprocess.run(
        [str(stage / "bin/busybox"), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    # busybox's own module tools ignore /proc/cmdline and modprobe.d softdeps: real kmod only.
    kmod_names = {"modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod"}
    for applet in applets:
        if applet in kmod_names:
            continue
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")


def _kmod(root: Path, stage: Path) -> None:
    shutil.copy2(stage / "bin/kmod", root / "bin/kmod")
    # kmod dispatches on argv[0]; scripts call /sbin/modprobe by full path (lab notes).
    for tool in ("modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod"):
        (root / "sbin" / tool).symlink_to("/bin/kmod")


def _libraries(root: Path, stage: Path, log: list[str]) -> None:
    """glibc's directory whole (it dlopen()s libgcc_s and the NSS modules: xl aborts without
    libgcc_s, lab notes), then exactly the libraries the image's ELF files link to."""
    _copy(stage / "lib/x86_64-linux-gnu", root / "lib/x86_64-linux-gnu")
    (root / "lib64").mkdir(exist_ok=True)
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    elves = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    _elf_closure(root, stage, elves, log)


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _python(root: Path, stage: Path) -> None:
    _copy(stage / "usr/bin/python3.11", root / "usr/bin/python3.11")
    (root / "usr/bin/python3").symlink_to("python3.11")
    src = stage / "usr/lib/python3.11"
    dst = root / "usr/lib/python3.11"
    shutil.copytree(
        src, dst, symlinks=True, ignore=shutil.ignore_patterns(*STDLIB_DROP, "__pycache__")
    )
    for so in (dst / "lib-dynload").iterdir():
        if so.name.startswith(DYNLOAD_DROP_PREFIXES):
            so.unlink()
    # No /usr/lib/python3/dist-packages etc.: pcipass comes from PYTHONPATH=/opt/pcipass.
    _copy(REPO / "src/pcipass", root / "opt/pcipass/pcipass")
    for cache in (root / "opt/pcipass").rglob("__pycache__"):
        shutil.rmtree(cache)
    _precompile(root, [dst, root / "opt/pcipass"])


def _precompile(root: Path, dirs: Iterable[Path]) -> None:
    # Byte-compiling at import time under TCG costs seconds per python3 start; the .pyc magic
    # number is the same for every 3.11.x, so the host's 3.11 can do it ahead of time.
    # UNCHECKED_HASH: the guest never re-validates against source mtimes.
    if sys.version_info[:2] != (3, 11):
        return
    for d in dirs:
        compileall.compile_dir(
            str(d),
            ddir="/" + str(d.relative_to(root)),
            quiet=2,
            workers=2,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )


def _modules(root: Path, stage: Path, kver: str, names: Iterable[str]) -> None:
    mods = stage / "lib/modules" / kver
    if not (mods / "modules.dep").exists():
        _depmod(stage, kver)
    deps: dict[str, list[str]] = {}
    for line in (mods / "modules.dep").read_text().splitlines():
        key, _, rest = line.partition(":")
        deps[key] = rest.split()
    by_name = {Path(k).name.removesuffix(".ko").replace("_", "-"): k for k in deps}
    out = root / "lib/modules" / kver
    out.mkdir(parents=True, exist_ok=True)
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (mods / f).exists():
            shutil.copy2(mods / f, out / f)
    for name in names:
        key = by_name.get(name.replace("_", "-"))
        if key is None:
            raise BuildError(f"kernel module {name} not in linux-image-{kver}")
        for rel in (key, *deps[key]):
            _copy(mods / rel, out / rel)
    _depmod(root, kver)


def _depmod(base: Path, kver: str) -> None:
    # linux-image ships no modules.dep; kmod picks the depmod personality from argv[0].
    kmod = base / "bin/kmod" if (base / "bin/kmod").exists() else None
    if kmod is None:
        raise BuildError(f"no kmod in {base}")
    subprocess.run(["depmod", "-b", str(base), kver], executable=str(kmod), check=True)


def _guest_files(root: Path, init: str) -> None:
    _copy(GUEST / init, root / "init")
    (root / "init").chmod(0o755)
    dst = root / "opt/lab"
    dst.mkdir(parents=True, exist_ok=True)
    for py in GUEST.glob("*.py"):
        shutil.copy2(py, dst / py.name)


def _xen(root: Path, stage: Path) -> None:
    _copy(stage / "usr/lib/xen-4.17", root / "usr/lib/xen-4.17")
    for junk in ("lib/python", "bin/pygrub"):
        p = root / "usr/lib/xen-4.17" / junk
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for tool in stage.joinpath("usr/bin").glob("xenstore*"):
        _copy(tool, root / "usr/bin" / tool.name)
    _copy(stage / "etc/xen", root / "etc/xen")
    (root / "etc/xen/xl.conf").write_text('autoballoon="off"\n')
    (root / "usr/bin/fakessh").write_text(
        "#!/bin/sh\n# ssh stand-in for 'xl migrate -s fakessh': drop the host, run locally\n"
        'shift\nexec "$@"\n'
    )
    (root / "usr/bin/fakessh").chmod(0o755)


def _pciutils(root: Path, stage: Path) -> None:
    for p in ("usr/bin/lspci", "usr/bin/setpci"):
        _copy(stage / p, root / p)
    ids = stage / "usr/share/misc"
    if ids.exists():
        _copy(ids, root / "usr/share/misc")


def write_cpio_gz(root: Path, out: Path) -> None:
    """Pack ``root`` as a gzip'd newc cpio (what the kernel unpacks into its rootfs)."""
    names = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
    ).stdout
    proc = subprocess.run(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
        cwd=root,
        input=names,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode()[-300:]}")
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=1) as f:
        f.write(proc.stdout)
    tmp.replace(out)


def build_domu(work: Path, stage: Path, kver: str) -> Path:
    """Tiny domU initramfs: busybox + xen-pcifront (insmod'ed by its /init)."""
    root = work / "domu-root"
    _busybox_root(root, stage)
    mods = stage / "lib/modules" / kver / "kernel/drivers/pci/xen-pcifront.ko"
    _copy(mods, root / "lib/modules/xen-pcifront.ko")
    _copy(GUEST / "domu-init", root / "init")
    (root / "init").chmod(0o755)
    out = work / "domu.cpio.gz"
    write_cpio_gz(root, out)
    return out


def build_dom0(work: Path, stage: Path, kver: str, log: list[str]) -> Path:
    """The Xen dom0 initramfs: toolstack, kmod, Python 3.11, pcipass, lab agent, domU payload."""
    domu = build_domu(work, stage, kver)
    root = work / "dom0-root"
    _busybox_root(root, stage)
    _kmod(root, stage)
    _xen(root, stage)
    _pciutils(root, stage)
    _python(root, stage)
    _modules(root, stage, kver, XEN_MODULES)
    _libraries(root, stage, log)
    (root / "boot").mkdir(exist_ok=True)
    shutil.copy2(stage / f"boot/vmlinuz-{kver}", root / "boot/vmlinuz")
    shutil.copy2(domu, root / "boot/domu.cpio.gz")
    _guest_files(root, "init")
    out = work / "dom0.cpio.gz"
    write_cpio_gz(root, out)
    return out


def build_l1(work: Path, stage: Path, kver: str, log: list[str]) -> Path:
    """The KVM L1 initramfs: kmod, Python 3.11, pcipass, lab agent (no Xen)."""
    root = work / "l1-root"
    _busybox_root(root, stage)
    _kmod(root, stage)
    _pciutils(root, stage)
    _python(root, stage)
    _modules(root, stage, kver, KVM_MODULES)
    _libraries(root, stage, log)
    _guest_files(root, "init")
    out = work / "l1.cpio.gz"
    write_cpio_gz(root, out)
    return out


def _elf_closure(root: Path, stage: Path, elves: Iterable[Path], log: list[str]) -> None:
    """Copy every library the ELF files need into ``root`` (from the stage, else the host)."""
    # xl and friends find their own libraries through the xen-4.17 tree (RUNPATH).
    libdirs = (
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/xen-4.17/lib/x86_64-linux-gnu",
    )
    env = {"LD_LIBRARY_PATH": ":".join(str(stage / d) for d in libdirs), "PATH": "/usr/bin:/bin"}
    for elf in elves:
        out = subprocess.run(
            ["ldd", str(elf)], capture_output=True, text=True, env=env, check=False
        ).stdout
        for line in out.splitlines():
            if "not found" in line:
                raise BuildError(f"{elf.name}: {line.strip()}")
            parts = line.split()
            if "=>" not in parts:
                continue
            lib = Path(parts[parts.index("=>") + 1])
            if not lib.is_absolute():
                continue
            if lib.is_relative_to(stage):
                dst = root / lib.relative_to(stage)
            else:
                dst = root / "usr/lib/x86_64-linux-gnu" / lib.name
                if (
                    not (stage / "usr/lib/x86_64-linux-gnu" / lib.name).exists()
                    and not (stage / "lib/x86_64-linux-gnu" / lib.name).exists()
                ):
                    log.append(f"library from the host (no fetched package has it): {lib}")
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib.resolve(), dst)


def build_l2(work: Path, stage: Path) -> Path:
    """The nested L2 guest's initramfs: busybox and the device-reporting loop, nothing else."""
    root = work / "l2-root"
    _busybox_root(root, stage)
    _copy(GUEST / "domu-init", root / "init")
    (root / "init").chmod(0o755)
    out = work / "l2.cpio.gz"
    write_cpio_gz(root, out)
    return out


def build_nested_overlay(work: Path, stage: Path, kver: str, log: list[str]) -> Path:
    """Appended to the L1 image: qemu-system-x86_64 (+TCG module, firmware) and the L2 payload.

    Debian's QEMU loads TCG as a module (accel-tcg-x86_64.so) and finds bios-256k.bin through
    /usr/share/qemu -> ../seabios links (KVM lab notes).
    """
    root = work / "nested-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    qemu_bin = stage / "usr/bin/qemu-system-x86_64"
    tcg = stage / "usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"
    _copy(qemu_bin, root / "usr/bin/qemu-system-x86_64")
    _copy(tcg, root / "usr/lib/x86_64-linux-gnu/qemu" / tcg.name)
    share = root / "usr/share/qemu"
    share.mkdir(parents=True)
    for name in ("bios-256k.bin", "kvmvapic.bin", "linuxboot_dma.bin", "linuxboot.bin"):
        src = stage / "usr/share/qemu" / name
        real = src.resolve() if src.is_symlink() else src
        if not real.exists():
            real = stage / "usr/share/seabios" / name
        shutil.copy2(real, share / name)
    _elf_closure(root, stage, [qemu_bin, tcg], log)
    (root / "l2").mkdir()
    shutil.copy2(stage / f"boot/vmlinuz-{kver}", root / "l2/vmlinuz")
    shutil.copy2(build_l2(work, stage), root / "l2/l2.cpio.gz")
    out = work / "nested.cpio.gz"
    write_cpio_gz(root, out)
    return out


def overlay(work: Path, files: dict[str, bytes], name: str) -> Path:
    """A cpio.gz holding ``files`` (guest path -> bytes), to append after a base image.

    The kernel unpacks concatenated archives in order, so this is how state that pcipass wrote
    during one boot (modprobe.d, its ledger) is present on the next boot of the same image.
    """
    root = work / f"{name}-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for guest_path, data in files.items():
        rel = Path(guest_path.lstrip("/"))
        if ".." in rel.parts:
            raise BuildError(f"refusing overlay path {guest_path}")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    out = work / f"{name}.cpio.gz"
    write_cpio_gz(root, out)
    return out
