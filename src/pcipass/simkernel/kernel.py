"""The simulated kernel: what Linux does on writes to sysfs control files.

It stands behind the one sysfs write seam (``Sysfs(writer=...)``).  Two users:
``Host.for_command`` gives it to a command run on an example tree (which then
says so on its first line), and the tests give it to every fake host.  Every
*read* path of pcipass stays production code.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from pcipass.address import PciAddress
from pcipass.simkernel import modprobe
from pcipass.simkernel.tree import KNOWN_DRIVERS, SimDriver, SimTree


class SimKernel:
    """Acts on sysfs control-file writes as Linux does.  Plug into ``Sysfs(writer=...)``.

    Behaviour modelled (drivers/pci/pci-driver.c, bus.c, pci-sysfs.c,
    drivers/xen/xen-pciback/pci_stub.c):
    * ``drivers/X/unbind``: ENODEV unless bound to X; removes both links.
    * ``drivers/X/bind``: EBUSY if bound; ENODEV unless X's id table,
      ``driver_override == X``, or (pciback) its slot list matches.
    * ``driver_override``: sets the override; empty or "\\n" clears it.
    * ``drivers_probe``: binds an unbound device to its override (only), or
      the first driver whose id table matches.
    * ``drivers/X/new_id``: adds an id and binds matching unbound devices now,
      as the kernel does (a trap: the host's own identical device is taken too).
    * ``pciback new_slot/remove_slot``: edits pciback's slot list.
    * ``reset``: works only if ``reset_method`` lists something.
    * ``rom``: exactly "0\\n" disables reading (empties the file), any other
      write enables it (the file shows the ROM); pci-sysfs.c's pci_write_rom.
    Failures on demand: :meth:`fail` makes a matching write raise OSError.
    """

    def __init__(self, host: SimTree) -> None:
        self.host = host
        self.writes: list[tuple[str, str]] = []
        self._failures: list[tuple[str, str | None, int, int]] = []
        slots = host.driver_dir("pciback") / "slots"
        self.pciback_slots: set[str] = set(slots.read_text().split()) if slots.exists() else set()
        self.on_write: Callable[[str, str], None] | None = None  # before the kernel acts
        self.on_written: Callable[[str, str], None] | None = None  # after it acted
        self.module_failures: list[tuple[str, str, int]] = []  # (load|unload, module, errno)
        self.module_ids: dict[str, set[tuple[int, int]]] = {}  # vfio-pci ids= of this load
        self.probe_failures: set[str] = set()  # functions whose probe fails at a module load

    def fail(
        self, pattern: str, err: int = errno.EIO, *, value: str | None = None, times: int = 1
    ) -> None:
        """Make the next ``times`` writes to paths matching ``pattern`` (a glob on
        the host path, e.g. ``*/drivers/pciback/bind``) fail with ``err``."""
        self._failures.append((pattern, value, err, times))

    def _maybe_fail(self, host_path: str, value: str) -> None:
        for index, (pattern, want, err, times) in enumerate(self._failures):
            if fnmatch.fnmatch(host_path, pattern) and (want is None or want == value):
                if times <= 1:
                    del self._failures[index]
                else:
                    self._failures[index] = (pattern, want, err, times - 1)
                raise OSError(err, os.strerror(err))

    def write(self, path: Path, value: str) -> None:
        host_path = "/" + str(path.relative_to(self.host.base))
        self.writes.append((host_path, value))
        if self.on_write is not None:
            self.on_write(host_path, value)
        self._maybe_fail(host_path, value)
        text = value.strip()
        parts = Path(host_path).parts
        if host_path == "/sys/bus/pci/drivers_probe":
            self._probe(self._device(text))
        elif len(parts) == 7 and parts[1:5] == ("sys", "bus", "pci", "drivers"):
            self._driver_write(parts[5], parts[6], text)
        elif path.name == "driver_override":
            self._device_dir_of(path)
            (path).write_text((text or "(null)") + "\n")
        elif path.name == "rom" and path.exists():
            name = self._device_dir_of(path)
            enable = value != "0\n"
            path.write_bytes(
                (self.host.base / SimTree.ROM_STORE / name).read_bytes() if enable else b""
            )
        elif path.name == "reset":
            methods = (
                (path.parent / "reset_method").read_text().split()
                if (path.parent / "reset_method").exists()
                else []
            )
            if not methods:
                raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        elif not path.exists():
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        else:
            path.write_text(value)
        if self.on_written is not None:
            self.on_written(host_path, value)

    # ---- helpers ---------------------------------------------------------
    def _device(self, text: str) -> str:
        try:
            name = str(PciAddress.parse(text))
        except Exception as error:  # the kernel answers garbage with ENODEV
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV)) from error
        if name not in self.host._paths:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return name

    def _device_dir_of(self, path: Path) -> str:
        name = path.parent.name
        if name not in self.host._paths:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return name

    def _override(self, name: str) -> str | None:
        path = self.host.path_of(name) / "driver_override"
        if not path.exists():
            return None
        text = path.read_text().strip()
        return None if text in ("", "(null)") else text

    def _ids(self, name: str) -> tuple[int, int]:
        directory = self.host.path_of(name)
        return (
            int((directory / "vendor").read_text(), 16),
            int((directory / "device").read_text(), 16),
        )

    def _loaded(self) -> dict[str, SimDriver]:
        loaded: dict[str, SimDriver] = {}
        for entry in sorted(os.listdir(self.host.bus / "drivers")):
            spec = next((d for d in KNOWN_DRIVERS.values() if d.name == entry), None)
            loaded[entry] = spec or SimDriver(entry, entry)
        return loaded

    def _accepts(self, driver: SimDriver, name: str) -> bool:
        override = self._override(name)
        if override is not None:
            # pci_match_device(): with driver_override set, only that driver matches.
            return override == driver.name
        if driver.name == "pciback":
            return name in self.pciback_slots
        return self._ids(name) in driver.ids | self.module_ids.get(driver.name, set())

    def _probe(self, name: str) -> None:
        if self.host.bound_driver(name) is not None:
            return
        for driver in self._loaded().values():
            if self._accepts(driver, name):
                self.host.bind(name, driver.name)
                return

    def _driver_write(self, driver_name: str, attr: str, text: str) -> None:
        loaded = self._loaded()
        driver = loaded.get(driver_name)
        if driver is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if attr == "bind":
            name = self._device(text)
            if self.host.bound_driver(name) is not None:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            if not self._accepts(driver, name):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self.host.bind(name, driver.name)
        elif attr == "unbind":
            name = self._device(text)
            if self.host.bound_driver(name) != driver.name:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self.host.unbind(name)
        elif attr == "new_id":
            fields = text.split()
            if len(fields) < 2:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            driver.ids.add((int(fields[0], 16), int(fields[1], 16)))
            for name in list(self.host._paths):
                if self.host.bound_driver(name) is None and self._accepts(driver, name):
                    self.host.bind(name, driver.name)
        elif attr == "remove_id":
            fields = text.split()
            driver.ids.discard((int(fields[0], 16), int(fields[1], 16)))
        elif attr == "new_slot" and driver.name == "pciback":
            self.pciback_slots.add(self._device(text))
            self._write_slots()
        elif attr == "remove_slot" and driver.name == "pciback":
            name = self._device(text)
            if name not in self.pciback_slots:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            self.pciback_slots.discard(name)
            self._write_slots()
        else:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def _write_slots(self) -> None:
        slots = self.host.driver_dir("pciback") / "slots"
        if slots.parent.exists():
            slots.write_text("".join(f"{s}\n" for s in sorted(self.pciback_slots)))

    # ---- modules (the work is in testing/modprobe.py) ---------------------
    def fail_module(self, module: str, *, unload: bool = False, err: int = errno.EIO) -> None:
        """Make the next load (or unload) of ``module`` fail, as a broken module would."""
        self.module_failures.append(("unload" if unload else "load", module.replace("_", "-"), err))

    def known_module(self, module: str) -> SimDriver | None:
        return KNOWN_DRIVERS.get(module) or KNOWN_DRIVERS.get(module.replace("_", "-"))

    def module_loaded(self, module: str) -> bool:

        return modprobe.module_loaded(self, module)

    def load_module(self, module: str, params: Mapping[str, str] | None = None) -> None:

        modprobe.load_module(self, module, params or {})

    def unload_module(self, module: str) -> None:

        modprobe.unload_module(self, module)
