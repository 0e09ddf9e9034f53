"""Reading a QEMU command line: guest name, vfio-pci devices, QMP socket.

A QEMU started by hand, by a script or by libvirt shows in ``/proc/PID/cmdline``
what it holds; pcipass reads that (guard, plain-QEMU hotplug) and never the
process's memory.  Pure functions over an argv list.
"""

from __future__ import annotations

import json


def qemu_name(argv: list[str]) -> str | None:
    """The guest name of a QEMU command line: ``-name NAME`` or
    ``-name guest=NAME,debug-threads=on`` (how libvirt starts QEMU)."""
    for option, value in zip(argv, argv[1:]):
        if option in ("-name", "--name"):
            first = value.split(",", 1)[0]
            return first.removeprefix("guest=")
    return None


def vfio_host(value: str) -> str | None:
    """The host device of one ``-device`` value, if it is vfio-pci: the
    ``driver,key=value`` form or QEMU's JSON form (libvirt 8+)."""
    props: dict[str, str] = {}
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        if not isinstance(parsed, dict):
            return None
        props = {str(k): str(v) for k, v in parsed.items()}
    else:
        parts = value.split(",")
        props = {"driver": parts[0]} if "=" not in parts[0] else {}
        for part in parts:
            key, sep, item = part.partition("=")
            if sep:
                props.setdefault(key, item)
    if props.get("driver") != "vfio-pci":
        return None
    if "host" in props:
        return props["host"]
    sysfsdev = props.get("sysfsdev")
    return sysfsdev.rstrip("/").rsplit("/", 1)[-1] if sysfsdev else None


def _option(text: str, key: str) -> str | None:
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if sep and k == key:
            return v
    return None


def qmp_socket(argv: list[str]) -> str | None:
    """The QMP unix socket: ``-qmp unix:PATH,server...`` or a control-mode
    ``-mon chardev=ID`` over ``-chardev socket,id=ID,path=PATH``."""
    chardevs: dict[str, str] = {}
    monitors: list[str] = []
    for option, value in zip(argv, argv[1:]):
        flag = option.lstrip("-")
        if flag == "qmp" and value.startswith("unix:"):
            return value[len("unix:") :].split(",")[0]
        if flag == "chardev" and value.startswith("socket"):
            ident, path = _option(value, "id"), _option(value, "path")
            if ident and path:
                chardevs[ident] = path
        elif flag == "mon" and _option(value, "mode") == "control":
            chardev = _option(value, "chardev")
            if chardev:
                monitors.append(chardev)
    for chardev in monitors:
        if chardev in chardevs:
            return chardevs[chardev]
    return None


def vfio_hosts(argv: list[str]) -> list[str]:
    return [
        host
        for option, value in zip(argv, argv[1:])
        if option in ("-device", "--device") and (host := vfio_host(value)) is not None
    ]


def is_qemu(argv: list[str]) -> bool:
    return bool(argv) and argv[0].rsplit("/", 1)[-1].startswith(("qemu-system", "qemu-kvm"))
