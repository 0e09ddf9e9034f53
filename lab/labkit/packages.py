"""Fetch Debian packages by name (``apt-get download``) and unpack them with ``dpkg -x``.

Downloads are cached in ``lab/cache/debs``; a package is fetched again only when no ``.deb`` of
that name is in the cache.  ``apt-get update`` runs at most once per cache (stamp file), and only
when something has to be downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# Xen hypervisor and toolstack (xl needs every one of these libraries; list from the lab notes).
XEN_PACKAGES = (
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenmisc4.17",
    "libxenstore4",
    "libxentoollog1",
    "libxendevicemodel1",
    "libxenhypfs1",
    "libxentoolcore1",
    "libyajl2",
)

# Userland shared by both scenarios: busybox for the shell, real kmod (busybox modprobe ignores
# /proc/cmdline and modprobe.d softdeps), pciutils, and a Python able to run pcipass, including
# the sqlite3 module (pcipass's ledger) and the libraries its extension modules link to.
BASE_PACKAGES = (
    "busybox-static",
    "kmod",
    "libkmod2",
    "pciutils",
    "libpci3",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libsqlite3-0",
    "libexpat1",
    "zlib1g",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libssl3",
    "libuuid1",
    "libcrypt1",
    "libtinfo6",
    "libncursesw6",
    "libreadline8",
    "libzstd1",
    "liblz4-1",
    "libc6",
    "libgcc-s1",
    # needed by python's nis/dbm modules and by xen's libfsimage (found by ldd at build time)
    "libdb5.3",
    "libnsl2",
    "libtirpc3",
    "libncurses6",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libkeyutils1",
    "libcom-err2",
    "libext2fs2",
    "libudev1",
)


# A QEMU to run inside the KVM L1 guest (nested L2 with -device vfio-pci), with its firmware and
# the libraries Debian's qemu-system-x86 depends on (anything else ldd finds comes from the host,
# and the build log names it).
NESTED_PACKAGES = (
    "qemu-system-x86",
    "qemu-system-common",  # accel-tcg-x86_64.so
    "qemu-system-data",
    "seabios",
    "libaio1",
    "libbpf1",
    "libelf1",
    "libcapstone4",
    "libfdt1",
    "libfuse3-3",
    "libglib2.0-0",
    "libpcre2-8-0",
    "libmount1",
    "libblkid1",
    "libselinux1",
    "libgmp10",
    "libgnutls30",
    "libp11-kit0",
    "libidn2-0",
    "libunistring2",
    "libtasn1-6",
    "libhogweed6",
    "libnettle8",
    "libibverbs1",
    "libnl-3-200",
    "libnl-route-3-200",
    "librdmacm1",
    "libjpeg62-turbo",
    "libnuma1",
    "libpixman-1-0",
    "libpmem1",
    "libndctl6",
    "libdaxctl1",
    "libkmod2",
    "libpng16-16",
    "libsasl2-2",
    "libseccomp2",
    "libslirp0",
    "liburing2",
    "libvdeplug2",
)


class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked."""


def kernel_version() -> str:
    """The kernel ABI Debian's ``linux-image-amd64`` depends on now (e.g. 6.1.0-56-amd64)."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=False
    ).stdout
    for raw in out.splitlines():
        line = raw.strip()
        if line.startswith("Depends: linux-image-") and line.endswith("-amd64"):
            return line.removeprefix("Depends: linux-image-")
    raise FetchError("apt-cache knows no linux-image-amd64 dependency (run apt-get update?)")


def ensure_host_tools(log: list[str]) -> None:
    """Install qemu-system-x86 and cpio on the host when missing (the lab needs both)."""
    wanted = {"qemu-system-x86_64": "qemu-system-x86", "cpio": "cpio"}
    missing = [pkg for prog, pkg in wanted.items() if shutil.which(prog) is None]
    if not missing:
        return
    log.append(f"installing host packages: {' '.join(missing)}")
    _apt_update_once(None)
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        capture_output=True,
        text=True,
        check=False,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if proc.returncode != 0:
        raise FetchError(f"apt-get install {' '.join(missing)} failed: {proc.stderr[-400:]}")


def _apt_update_once(stamp: Path | None) -> None:
    if stamp is not None and stamp.exists():
        return
    proc = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FetchError(f"apt-get update failed: {proc.stderr[-400:]}")
    if stamp is not None:
        stamp.touch()


def cached_deb(debs: Path, name: str) -> Path | None:
    """The cached .deb of package ``name`` (file names are NAME_VERSION_ARCH.deb)."""
    hits = sorted(debs.glob(f"{name}_*.deb"))
    return hits[-1] if hits else None


def fetch(names: Iterable[str], cache: Path, log: list[str]) -> list[Path]:
    """Download the named packages into ``cache/debs`` (if not cached); return their .deb paths."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(names))
    missing = [n for n in names if cached_deb(debs, n) is None]
    if missing:
        _apt_update_once(cache / "apt-updated.stamp")
        log.append(f"apt-get download {len(missing)} packages")
        proc = subprocess.run(
            ["apt-get", "download", "-q", *missing],
            cwd=debs,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise FetchError(f"apt-get download failed: {proc.stderr[-600:]}")
    paths: list[Path] = []
    for n in names:
        deb = cached_deb(debs, n)
        if deb is None:
            raise FetchError(f"package {n} not in the cache after apt-get download")
        paths.append(deb)
    return paths


def unpack(debs: Iterable[Path], stage: Path) -> None:
    """``dpkg -x`` every package into ``stage`` (re-created from scratch when the set changes)."""
    debs = list(debs)
    manifest = "\n".join(sorted(d.name for d in debs)) + "\n"
    stamp = stage / ".unpacked"
    if stamp.exists() and stamp.read_text() == manifest:
        return
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for deb in debs:
        proc = subprocess.run(
            ["dpkg", "-x", str(deb), str(stage)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise FetchError(f"dpkg -x {deb.name} failed: {proc.stderr[-400:]}")
    stamp.write_text(manifest)
