"""Which operating system a guest runs, from the few places that say so.

Rules PP005 (source document §15.5: "PCI passthrough to para-virtualized
guests ... is not supported for Red Hat Enterprise Linux 6 guests") and PP006
(fully virtualised passthrough needs RHEL 5.4 or newer) need the guest's (and
host's) OS.  Three sources are read here, all as plain text:

* what the user says with ``--guest-os`` (:func:`parse_os_text`), in the
  short forms libosinfo and virt-install use (``rhel6.10``, ``win10``) or
  as people write them (``RHEL 5.4``, ``CentOS 7``);
* a PV guest's ``kernel=`` path (:func:`os_from_kernel_path`): Red Hat
  kernels carry ``.el5``/``.el6`` in their release, Fedora's ``.fcNN``;
* libvirt's libosinfo metadata URI (:func:`os_from_libosinfo_id`), such as
  ``http://redhat.com/rhel/6.10``.
"""

from __future__ import annotations

import bisect
import re

from pcipass.errors import UsageError
from pcipass.guests.model import GuestOs
from pcipass.patterns import lazy

# Spellings people and tools use for a family, to our family names.
_FAMILY_ALIASES: dict[str, str] = {
    "rhel": "rhel",
    "redhat": "rhel",
    "red hat": "rhel",
    "red hat enterprise linux": "rhel",
    "redhatenterpriselinux": "rhel",
    "centos": "centos",
    "centos-stream": "centos",
    "centosstream": "centos",
    "scientific": "scientific",
    "scientificlinux": "scientific",
    "sl": "scientific",
    "oracle": "oracle",
    "oraclelinux": "oracle",
    "ol": "oracle",
    "oel": "oracle",
    "rocky": "rocky",
    "rockylinux": "rocky",
    "alma": "alma",
    "almalinux": "alma",
    "fedora": "fedora",
    "fc": "fedora",
    "debian": "debian",
    "ubuntu": "ubuntu",
    "sles": "sles",
    "sled": "sles",
    "suse": "sles",
    "opensuse": "opensuse",
    "win": "windows",
    "windows": "windows",
    "freebsd": "freebsd",
    "netbsd": "netbsd",
    "openbsd": "openbsd",
    "solaris": "solaris",
    "generic": "unknown",
}

# "rhel6.10", "RHEL 5.4", "centos-stream9", "win2k8r2", "ubuntu22.04", "fedora 38".
_OS_TEXT = lazy(
    r"^(?P<family>[a-z]+(?:[ -][a-z]+)*?)[ _-]?(?P<version>(?:2k|xp|vista)?[0-9][0-9a-z.]*)?$"
)
_VERSION = lazy(r"^[0-9A-Za-z][0-9A-Za-z.]{0,15}$")

# First kernel build of each RHEL minor release (Red Hat knowledge base
# "Red Hat Enterprise Linux Release Dates", kernel column): 2.6.18-164 is
# RHEL 5.4, 2.6.32-431 is RHEL 6.5.  A build between two entries belongs to
# the earlier release (errata kernels keep the base build number).
_RHEL_KERNEL_BUILDS: dict[int, list[tuple[int, int]]] = {
    5: [
        (8, 0),
        (53, 1),
        (92, 2),
        (128, 3),
        (164, 4),
        (194, 5),
        (238, 6),
        (274, 7),
        (308, 8),
        (348, 9),
        (371, 10),
        (398, 11),
    ],
    6: [
        (71, 0),
        (131, 1),
        (220, 2),
        (279, 3),
        (358, 4),
        (431, 5),
        (504, 6),
        (573, 7),
        (642, 8),
        (696, 9),
        (754, 10),
    ],
}
_RHEL_KERNEL_BASE = {5: "2.6.18", 6: "2.6.32"}

# vmlinuz-2.6.18-164.el5xen, vmlinuz-2.6.32-431.el6.x86_64, 4.18.0-425.el8_7,
# vmlinuz-6.2.9-300.fc38.x86_64.  The dist tag is ".elN" / ".fcNN".
_KERNEL_RELEASE = lazy(
    r"(?P<base>[0-9]+\.[0-9]+(?:\.[0-9]+)?)-(?P<build>[0-9]+)(?:\.[0-9]+)*"
    r"\.(?P<tag>el|fc)(?P<dist>[0-9]+)(?![0-9])"
)


def normalise_family(text: str) -> str | None:
    """Our family name for a spelling, or None if it is not one we know."""
    return _FAMILY_ALIASES.get(text.strip().lower())


def parse_os_text(text: str) -> GuestOs:
    """Parse ``--guest-os`` text: ``rhel6``, ``RHEL 5.4``, ``centos6.10``, ``win10``.

    Raises :class:`UsageError` for text that names no family we know; a
    wrong guess here would let PP005 pass a RHEL 6 PV guest.
    """
    cleaned = " ".join(text.strip().lower().split())
    source = f"given as {text.strip()!r}"
    if cleaned in ("unknown", "generic", "other"):
        return GuestOs.unknown(source)
    match = _OS_TEXT.match(cleaned)
    family = normalise_family(match.group("family")) if match else None
    if match is None or family is None:
        raise UsageError(
            f"guest OS {text.strip()!r}",
            "not an operating system pcipass knows",
            "use a libosinfo short id such as rhel6, rhel5.4, centos7, fedora38, debian12, "
            "win10, or 'unknown'",
        )
    version = match.group("version")
    if family == "windows" and version is not None:
        return GuestOs("windows", version, source)
    if version is not None:
        # SUSE service packs: libosinfo's "sles12sp5" is release 12.5.
        version = re.sub(r"^([0-9]+)sp([0-9]+)$", r"\1.\2", version)
    if version is not None and not re.fullmatch(r"[0-9]+(?:\.[0-9]+)*", version):
        raise UsageError(f"guest OS {text.strip()!r}", f"version {version!r} is not a number")
    return GuestOs(family, version, source)


def os_from_kernel_path(path: str) -> GuestOs:
    """The OS a PV guest's kernel belongs to, from its release string.

    ``/boot/vmlinuz-2.6.18-164.el5xen`` -> rhel 5.4 (the build number says
    the minor release for RHEL 5 and 6); ``.el6`` -> rhel 6.x, ``.el7`` ->
    rhel 7; ``.fc38`` -> fedora 38.  Anything else is unknown: a Debian
    ``vmlinuz-6.1.0-18-amd64`` says nothing about the distribution.
    """
    source = f"kernel {path}"
    base_name = path.rsplit("/", 1)[-1]
    match = _KERNEL_RELEASE.search(base_name)
    if match is None:
        return GuestOs.unknown(source)
    dist = int(match.group("dist"))
    if match.group("tag") == "fc":
        return GuestOs("fedora", str(dist), source)
    return GuestOs(
        "rhel", _rhel_version(dist, match.group("base"), int(match.group("build"))), source
    )


def _rhel_version(major: int, base: str, build: int) -> str:
    table = _RHEL_KERNEL_BUILDS.get(major)
    if table is None or _RHEL_KERNEL_BASE.get(major) != base:
        return str(major)
    index = bisect.bisect_right([first for first, _ in table], build) - 1
    if index < 0:
        return str(major)
    return f"{major}.{table[index][1]}"


# http://redhat.com/rhel/6.10, http://microsoft.com/win/10,
# http://centos.org/centos/7.0, http://fedoraproject.org/fedora/38
_LIBOSINFO_ID = lazy(
    r"^https?://[A-Za-z0-9.-]+/(?P<family>[A-Za-z][A-Za-z0-9_-]*)/(?P<version>[A-Za-z0-9._-]+)/?$"
)


def os_from_libosinfo_id(url: str) -> GuestOs:
    """The OS named by a libosinfo id (``<libosinfo:os id="...">``)."""
    text = url.strip()
    source = f"libosinfo id {text}"
    match = _LIBOSINFO_ID.match(text)
    if match is None:
        return GuestOs.unknown(source)
    segment = match.group("family").lower()
    family = normalise_family(segment) or segment
    version = match.group("version")
    if not _VERSION.match(version) or version.lower() in ("unknown", "rolling"):
        return GuestOs(family, None, source)
    return GuestOs(family, version, source)
