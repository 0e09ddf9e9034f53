"""``/etc/pcipass/pcipass.toml``: the desired state, read and checked like user input.

The format (docs/cli.md "Desired state"): top-level defaults, then one table
per device, named by a pin (``[device.gpu]`` means ``@gpu``) or carrying its
own identity (``[device.gpu.match]``)::

    backend = "vfio"                 # default for every device
    [device.gpu]
    guest = "win10"                  # optional: assigned to this guest
    config = "/etc/libvirt/qemu/win10.xml"
    [device.spare.match]             # identity instead of a pin
    vendor = "8086"
    device = "10d3"
    serial = "dsn:00-11-22-33-44-55-66-77"

TOML is read with the standard library's ``tomllib`` (Python 3.11+) or the
``tomli`` package below that; pcipass has no runtime dependency, so a missing
``tomli`` is one line naming the package, only when a desired state is used.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping

from pcipass.backend import Backend
from pcipass.errors import ConfigSyntaxError, NotFoundError, OperationFailed
from pcipass.host.context import Host
from pcipass.record import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

DESIRED_PATH = "/etc/pcipass/pcipass.toml"
PLATFORMS = ("rhel5", "modprobe.d", "cmdline")
BACKENDS = ("vfio", "pciback")
_DEVICE_KEYS = frozenset(
    {"hidden", "now", "persist", "backend", "platform", "guest", "config", "accept_pv_dma_risk"}
)
_TOP_KEYS = frozenset({"backend", "platform", "persist", "device"})
MATCH_KEYS = frozenset(
    {"vendor", "device", "subsystem_vendor", "subsystem_device", "class", "revision"}
    | {"serial", "slot", "path"}
)
_HEX = {"vendor": 4, "device": 4, "subsystem_vendor": 4, "subsystem_device": 4}
_HEX |= {"class": 6, "revision": 2}


@dataclass(frozen=True)
class DesiredDevice:
    name: str  # the table's name; the pin's name unless ``match`` is given
    match: dict[str, str] | None  # an inline identity, or None: the pin ``name``
    hidden: bool = True  # False: the host's; pcipass must not hold it
    now: bool = True  # bound to the stub now (and by ``apply --boot`` at every boot)
    persist: bool = False  # also the address-based boot configuration
    backend: Backend | None = None
    platform: str | None = None
    guest: str | None = None
    config: str | None = None
    accept_pv_dma_risk: bool = False

    @property
    def label(self) -> str:
        return f"@{self.name}" if self.match is None else f"device.{self.name}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "match": self.match,
            "hidden": self.hidden,
            "now": self.now,
            "persist": self.persist,
            "backend": None if self.backend is None else str(self.backend),
            "platform": self.platform,
            "guest": self.guest,
            "config": self.config,
        }


@dataclass
class DesiredState:
    path: str
    devices: list[DesiredDevice] = field(default_factory=list)


def _toml_module(display: str) -> Any:
    if sys.version_info >= (3, 11):
        return importlib.import_module("tomllib")
    try:
        # Imported by name: pcipass has no runtime dependency, and only a host
        # that uses a desired state on Python < 3.11 needs this package.
        return importlib.import_module("tomli")
    except ImportError:
        raise OperationFailed(
            display,
            "reading TOML on Python < 3.11 needs the tomli package",
            "install python3-tomli (Debian, Ubuntu, RHEL, Fedora) or `pip install tomli`",
        ) from None


def load(host: Host, path: str = DESIRED_PATH) -> DesiredState:
    """The desired state; NotFoundError when the file does not exist."""
    data = host.root.files.read_bytes(path)
    if data is None:
        raise NotFoundError(
            path, "no desired state", "write it (docs/cli.md 'Desired state') or use hide/attach"
        )
    return parse(data, path)


def parse(data: bytes, path: str = DESIRED_PATH) -> DesiredState:
    toml = _toml_module(path)
    try:
        text = data.decode("utf-8")
        document = toml.loads(text)
    except UnicodeDecodeError:
        raise ConfigSyntaxError(path, "not UTF-8 text") from None
    except toml.TOMLDecodeError as exc:
        raise ConfigSyntaxError(path, f"not valid TOML: {exc}") from None
    _only(path, "top level", document, _TOP_KEYS)
    defaults = {k: document[k] for k in ("backend", "platform", "persist") if k in document}
    devices = document.get("device", {})
    if not isinstance(devices, dict):
        raise ConfigSyntaxError(path, "'device' must be tables: [device.NAME]")
    state = DesiredState(path)
    for name, table in devices.items():
        state.devices.append(_device(path, name, table, defaults))
    return state


def _only(path: str, where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigSyntaxError(
            path,
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})",
        )


def _device(path: str, name: str, table: object, defaults: Mapping[str, object]) -> DesiredDevice:
    where = f"[device.{name}]"
    if not isinstance(table, dict):
        raise ConfigSyntaxError(path, f"{where} must be a table")
    from pcipass.ops.pins import check_name  # only when there is a file to read

    try:
        check_name(name)
    except Exception:
        raise ConfigSyntaxError(
            path, f"{where}: a device name is 1-63 letters, digits, '_', '.', '-'"
        ) from None
    match = table.get("match")
    body = {k: v for k, v in table.items() if k != "match"}
    _only(path, where, body, _DEVICE_KEYS)
    merged = {**defaults, **body}

    def flag(key: str, default: bool) -> bool:
        value = merged.get(key, default)
        if not isinstance(value, bool):
            raise ConfigSyntaxError(path, f"{where}: {key} must be true or false")
        return value

    def text(key: str, choices: tuple[str, ...] = ()) -> str | None:
        value = merged.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or (choices and value not in choices):
            wanted = " or ".join(f'"{c}"' for c in choices) if choices else "a string"
            raise ConfigSyntaxError(path, f"{where}: {key} must be {wanted}")
        return value

    backend = text("backend", BACKENDS)
    guest, config = text("guest"), text("config")
    if config is not None and guest is None:
        raise ConfigSyntaxError(path, f"{where}: config names a guest's file; give guest too")
    if config is not None and not config.startswith("/"):
        raise ConfigSyntaxError(path, f"{where}: config must be an absolute path")
    device = DesiredDevice(
        name,
        _match(path, where, match) if match is not None else None,
        hidden=flag("hidden", True),
        now=flag("now", True),
        persist=flag("persist", False),
        backend=None if backend is None else Backend(backend),
        platform=text("platform", PLATFORMS),
        guest=guest,
        config=config,
        accept_pv_dma_risk=flag("accept_pv_dma_risk", False),
    )
    if not device.hidden and guest is not None:
        raise ConfigSyntaxError(path, f"{where}: a device given to a guest must be hidden")
    return device


def _match(path: str, where: str, match: object) -> dict[str, str]:
    if not isinstance(match, dict):
        raise ConfigSyntaxError(path, f"{where}.match must be a table")
    _only(path, f"{where}.match", match, MATCH_KEYS)
    result: dict[str, str] = {}
    for key, value in match.items():
        if not isinstance(value, str):
            raise ConfigSyntaxError(path, f"{where}.match: {key} must be a string")
        if key in _HEX and not re.fullmatch(f"[0-9a-fA-F]{{{_HEX[key]}}}", value):
            raise ConfigSyntaxError(path, f"{where}.match: {key} must be {_HEX[key]} hex digits")
        result[key] = value.lower() if key in _HEX else value
    if "vendor" not in result or "device" not in result:
        raise ConfigSyntaxError(path, f"{where}.match needs at least vendor and device")
    return result
