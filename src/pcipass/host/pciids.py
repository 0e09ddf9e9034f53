"""Vendor, device and class names from the system's ``pci.ids``.

The file is large (~1.3 MB) and pcipass needs a handful of names, so it is
not parsed whole: the text is searched for the vendors asked about, and only
their blocks are parsed.  A missing or corrupt file only costs names
(callers show the numeric ids, as ``lspci -n`` does).

Format (pci.ids header): ``vendor  vendor_name``, then ``\\tdevice  device_name``,
then ``\\t\\tsubvendor subdevice  subsystem_name``; classes follow ``C class``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pcipass.errors import OperationFailed
from pcipass.host.confined import read_regular


@dataclass
class PciIds:
    text: str | None
    source: str | None
    problem: str | None = None
    _vendors: dict[int, tuple[str | None, dict[int, str]]] = field(default_factory=dict)
    _classes: dict[int, str] | None = None

    @classmethod
    def load(cls, candidates: list[Path]) -> PciIds:
        for path in candidates:
            try:
                # Non-blocking and checked to be a regular file: a FIFO in a
                # --root tree cannot hang pcipass.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as error:
                return cls(None, str(path), f"cannot read {path}: {error.strerror}")
            try:
                data = read_regular(fd, str(path), 64 * 1024 * 1024)
            except OperationFailed as error:
                return cls(None, str(path), f"cannot read {path}: {error.problem}")
            except OSError as error:
                return cls(None, str(path), f"cannot read {path}: {error.strerror}")
            finally:
                os.close(fd)
            text = data.decode("utf-8", "replace")
            if "\n" not in text[:4096] and len(text) > 4096:
                return cls(None, str(path), f"{path} does not look like pci.ids")
            return cls(text, str(path))
        return cls(None, None, "no pci.ids found (install package pci.ids or hwdata)")

    def vendor(self, vendor: int) -> str | None:
        return self._vendor_block(vendor)[0]

    def device(self, vendor: int, device: int) -> str | None:
        return self._vendor_block(vendor)[1].get(device)

    def _vendor_block(self, vendor: int) -> tuple[str | None, dict[int, str]]:
        cached = self._vendors.get(vendor)
        if cached is not None:
            return cached
        result: tuple[str | None, dict[int, str]] = (None, {})
        text = self.text
        if text is not None:
            key = f"\n{vendor:04x}  "
            start = text.find(key)
            if start >= 0:
                result = _parse_vendor_block(text, start + 1)
        self._vendors[vendor] = result
        return result

    def class_name(self, class_code: int) -> str | None:
        """Most specific name for a 24-bit class code (prog-if, subclass, class)."""
        classes = self._class_table()
        base, sub, _prog = class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF
        return classes.get((base << 8) | sub) or classes.get(base << 8 | 0x10000)

    def _class_table(self) -> dict[int, str]:
        if self._classes is not None:
            return self._classes
        table: dict[int, str] = {}
        text = self.text
        if text is not None:
            start = text.find("\nC ")
            base: int | None = None
            for line in text[start + 1 :].splitlines() if start >= 0 else []:
                if line.startswith("C "):
                    try:
                        base = int(line[2:4], 16)
                    except ValueError:
                        base = None
                        continue
                    table[base << 8 | 0x10000] = line[4:].strip()
                elif line.startswith("\t\t") or not line.startswith("\t"):
                    continue
                elif base is not None:
                    try:
                        sub = int(line[1:3], 16)
                    except ValueError:
                        continue
                    table[(base << 8) | sub] = line[3:].strip()
        self._classes = table
        return table


def _parse_vendor_block(text: str, start: int) -> tuple[str | None, dict[int, str]]:
    end_of_line = text.find("\n", start)
    end_of_line = len(text) if end_of_line < 0 else end_of_line
    vendor_name = text[start + 6 : end_of_line].strip() or None
    devices: dict[int, str] = {}
    position = end_of_line + 1
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end < 0 else line_end
        line = text[position:line_end]
        position = line_end + 1
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            break
        if line.startswith("\t\t"):
            continue
        try:
            devices[int(line[1:5], 16)] = line[5:].strip()
        except ValueError:
            continue
    return vendor_name, devices
