"""Hosts with many guest configurations, for tests and benchmarks of the guest scan.

:func:`write_guests` fills a fake host's ``/etc/xen`` and ``/etc/libvirt/qemu``
with ``count`` configurations of every kind ``scan_guests`` reads, chosen by a
seeded random generator from the host's own devices, so the same call always
writes the same bytes.  The mix holds what makes the guest rules work hard:

* xl files with one or two literal addresses (some with per-device options),
  an address that is not on the host, and a function wildcard (``BB:SS.*``);
* two guests that list the same device (PP101);
* xm files (Python syntax), a few of which compute ``pci`` (devices unknown);
* libvirt ``<hostdev>`` documents;
* guests with no device, and one file that does not parse.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

# A function no example host has: a guest that lists it cannot start (PP002).
ABSENT = "0000:ee:1f.7"


def _xl(name: str, entries: Sequence[str], hvm: bool) -> str:
    pci = ", ".join(f"'{e}'" for e in entries)
    kind = 'type = "hvm"\n' if hvm else 'type = "pv"\nkernel = "/boot/vmlinuz-6.1"\n'
    return f'name = "{name}"\n{kind}memory = 1024\npci = [ {pci} ]\n'


def _xm(name: str, entries: Sequence[str], computed: bool) -> str:
    pci = ", ".join(f"'{e}'" for e in entries)
    body = f"pci = base + [ {pci} ]" if computed else f"pci = [ {pci} ]"
    head = "base = []\n" if computed else ""
    return (
        f"name = '{name}'\nbuilder = 'hvm'\nkernel = '/usr/lib/xen/boot/hvmloader'\n"
        f"memory = 512\n{head}{body}\n"
    )


def _hostdev(address: str) -> str:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return (
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        f"<address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
        "</source></hostdev>"
    )


def _libvirt(name: str, entries: Sequence[str]) -> str:
    devices = "".join(_hostdev(e) for e in entries)
    return (
        f"<domain type='kvm'><name>{name}</name><memory>1048576</memory>"
        f"<os><type>hvm</type></os><devices>{devices}</devices></domain>\n"
    )


def host_addresses(base: Path) -> list[str]:
    """The functions of the fake host under ``base``, sorted."""
    return sorted(p.name for p in (base / "sys/bus/pci/devices").iterdir())


def write_guests(base: Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` guest configurations into the host under ``base``
    (plus one that does not parse); returns the files written."""
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    devices = host_addresses(base)
    xen = base / "etc/xen"
    qemu = base / "etc/libvirt/qemu"
    xen.mkdir(parents=True, exist_ok=True)
    qemu.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    previous = devices[0]
    for index in range(count):
        name = f"farm-{index:04d}"
        first = rng.choice(devices)
        second = rng.choice(devices)
        choice = index % 10
        if choice in (0, 1, 2):
            path, text = xen / f"{name}.cfg", _xl(name, [first], hvm=True)
        elif choice == 3:
            path, text = xen / f"{name}.cfg", _xl(name, [first, f"{second},permissive=1"], True)
        elif choice == 4:
            slot = first.rsplit(".", 1)[0]
            path, text = xen / f"{name}.cfg", _xl(name, [f"{slot}.*"], hvm=index % 20 == 4)
        elif choice == 5:
            path, text = xen / f"{name}.cfg", _xl(name, [first, ABSENT], hvm=True)
        elif choice == 6:
            path, text = xen / name, _xm(name, [first], computed=index % 60 == 6)
        elif choice == 7:
            path, text = qemu / f"{name}.xml", _libvirt(name, [first, second])
        elif choice == 8:
            path, text = xen / f"{name}.cfg", _xl(name, [], hvm=True)
        else:  # the device of the guest before: two guests list one device
            path, text = xen / f"{name}.cfg", _xl(name, [previous], hvm=True)
        previous = first
        path.write_text(text)
        written.append(path)
    if count:
        broken = xen / "farm-broken.cfg"
        broken.write_text("name = \"farm-broken\"\npci = [ '0000:01:00.0'\n")
        written.append(broken)
    return written
