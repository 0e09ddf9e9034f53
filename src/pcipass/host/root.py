"""HostRoot: every path pcipass touches, made from one injected prefix.

Production uses ``/``; tests and ``--root DIR`` use a fake tree.  No other
module spells ``/sys``, ``/etc`` or ``/proc``: they ask a HostRoot.  Path parts
that come from users are only ever :class:`~pcipass.address.PciAddress`
values or names checked by :func:`safe_name`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.errors import UsageError
from pcipass.host.confined import Confined, host_parts
from pcipass.patterns import lazy
from pcipass.record import dataclass

_SAFE_NAME = lazy(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def safe_name(kind: str, text: str) -> str:
    """Check a driver/module/guest name before it becomes a path part."""
    if not _SAFE_NAME.match(text) or text in (".", ".."):
        raise UsageError(f"{kind} {text!r}", "not a valid name (letters, digits, _ . + - only)")
    return text


@dataclass(frozen=True)
class HostRoot:
    prefix: Path

    @classmethod
    def at(cls, prefix: str | Path = "/") -> HostRoot:
        return cls(Path(prefix).resolve() if str(prefix) != "/" else Path("/"))

    def path(self, absolute: str) -> Path:
        """Map an absolute host path (``/etc/modprobe.conf``) into the root.

        A ``..`` that would climb above the root is refused (exit 2).  The
        result names the file for messages and sysfs; configuration files are
        opened through :attr:`files`, which resolves links inside the root.
        """
        if not absolute.startswith("/"):
            raise ValueError(f"not absolute: {absolute}")
        parts = host_parts(absolute)
        return self.prefix.joinpath(*parts) if parts else self.prefix

    @property
    def files(self) -> Confined:
        """Reads and stats of files under the root that no link can lead out of it."""
        return Confined(self.prefix)

    def contains(self, path: Path) -> bool:
        """Is ``path`` (absolute, lexically normalised) under the root?"""
        text = os.path.normpath(str(path))
        prefix = str(self.prefix)
        return prefix in ("/", text) or text.startswith(prefix + "/")

    def host_path(self, path: Path | str) -> str:
        """The path as the host would name it (for messages and JSON)."""
        text = str(path)
        prefix = str(self.prefix)
        if prefix == "/":
            return text
        if text == prefix:
            return "/"
        if text.startswith(prefix + "/"):
            return text[len(prefix) :]
        return text

    # --- sysfs -----------------------------------------------------------
    @property
    def sys(self) -> Path:
        return self.path("/sys")

    @property
    def pci_devices(self) -> Path:
        return self.path("/sys/bus/pci/devices")

    @property
    def pci_drivers(self) -> Path:
        return self.path("/sys/bus/pci/drivers")

    def pci_device(self, address: PciAddress) -> Path:
        return self.pci_devices / str(address)

    def pci_driver(self, driver: str) -> Path:
        return self.pci_drivers / safe_name("driver", driver)

    @property
    def iommu_groups(self) -> Path:
        return self.path("/sys/kernel/iommu_groups")

    # --- proc -----------------------------------------------------------
    @property
    def proc(self) -> Path:
        return self.path("/proc")

    @property
    def state_dir(self) -> Path:
        return self.path("/var/lib/pcipass")

    def lib_modules(self, release: str) -> Path:
        return self.path("/lib/modules") / safe_name("kernel release", release)

    @property
    def pci_ids_candidates(self) -> list[Path]:
        return [
            self.path("/usr/share/misc/pci.ids"),
            self.path("/usr/share/hwdata/pci.ids"),
            self.path("/usr/share/pci.ids"),
        ]

    @property
    def is_real(self) -> bool:
        return self.prefix == Path("/")
