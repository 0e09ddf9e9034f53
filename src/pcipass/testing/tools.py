"""External programs the tests run, and the Debian package of each.

A test that runs a real program (lspci, kmod, libvirt's validator, sh) says so
with ``@pytest.mark.needs_tool("lspci")`` or, inside a fixture,
:func:`require_tool`.  Without the program the test is skipped on a
developer's machine, but FAILS when the ``CI`` environment variable is set:
a CI machine missing a package must not go green by skipping the tests that
cross-check pcipass against the real tools.  The message names the package
to install (all of them are in ``.ci/apt-packages.txt``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

# Program -> Debian package providing it.
TOOL_PACKAGES: dict[str, str] = {
    "lspci": "pciutils",
    "systemd-analyze": "systemd",
    "setpci": "pciutils",
    "modprobe": "kmod",
    "depmod": "kmod",
    "modinfo": "kmod",
    "virt-xml-validate": "libvirt-clients",
    "xmllint": "libxml2-utils",
    "virsh": "libvirt-clients",
    "sh": "dash",
    "bash": "bash",
    "zsh": "zsh",
    "groff": "groff-base",
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "lintian": "lintian",
    "rpmbuild": "rpm",
    "rpm2cpio": "rpm",
    "cpio": "cpio",
}

# kmod installs into /sbin or /usr/sbin, which a non-root PATH may lack.
_SBIN = ("/sbin", "/usr/sbin")


def find_tool(name: str) -> str | None:
    """The program's path (PATH, then the sbin directories), or None."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CI`` is set (CI services set CI=true; 0/false/no count as unset)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def missing_message(name: str) -> str:
    package = TOOL_PACKAGES.get(name, name)
    return (
        f"{name} is not installed: install Debian package {package} "
        f"(apt-get install {package}; it is listed in .ci/apt-packages.txt)"
    )


def require_tool(name: str) -> str:
    """The path of ``name``; without it, skip the test, or fail it under CI."""
    path = find_tool(name)
    if path is not None:
        return path
    if in_ci():
        pytest.fail(f"{missing_message(name)}; CI runs every test, none is skipped", pytrace=False)
    pytest.skip(missing_message(name))


def check_needs_tool(item: pytest.Item) -> None:
    """The ``needs_tool`` marker's check, called from conftest before each test."""
    for mark in item.iter_markers("needs_tool"):
        for name in mark.args:
            require_tool(str(name))
