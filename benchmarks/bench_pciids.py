"""pci.ids name lookups in-process: a git revision's ``host/pciids.py`` (before) against this
tree's (after), on the system's full pci.ids.

Each sample builds a fresh ``PciIds`` over the same bytes (no cached answer) and times one
lookup; before and after alternate within every repeat (A B, then B A), and the table gives
each side's median and the median of the per-repeat ratios (before / after), so a busy
machine shifts both alike.  ``load`` is timed twice: in this process (warm allocator) and in
fresh interpreters, where the page faults of reading 1.3 MB are paid as ``pcipass list`` pays
them.

Usage: ``PYTHONPATH=src python3 benchmarks/bench_pciids.py [--before main] [--repeats 201]
[--processes 21] [--pci-ids /usr/share/misc/pci.ids]``
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# The functions of the 64-function benchmark host (bench_list.build_tree), as
# (vendor, device, class, how many): what `pcipass list` looks up there.
HOST_64 = (
    (0x10B5, 0x8747, 0x060400, 4),
    (0x10DE, 0x0FB9, 0x040300, 3),
    (0x10DE, 0x1B80, 0x030000, 3),
    (0x144D, 0xA808, 0x010802, 3),
    (0x1AF4, 0x1041, 0x020000, 3),
    (0x1AF4, 0x10FF, 0x0C0300, 2),
    (0x8086, 0x10D3, 0x020000, 3),
    (0x8086, 0x1520, 0x020000, 24),
    (0x8086, 0x1521, 0x020000, 12),
    (0x8086, 0x1C10, 0x060400, 1),
    (0x8086, 0x2922, 0x010601, 3),
    (0x8086, 0x3406, 0x060000, 1),
    (0xC0DE, 0x0001, 0x0B4000, 2),
)

VENDORS = (
    ("vendor 0001 (first)", 0x0001),
    ("vendor 1af4", 0x1AF4),
    ("vendor 15b3", 0x15B3),
    ("vendor 10de (opens a 100 KB block)", 0x10DE),
    ("vendor 8086 (372 KB block)", 0x8086),
    ("vendor 8088 (just after Intel)", 0x8088),
    ("vendor ffff (last)", 0xFFFF),
    ("vendor 8087 (absent)", 0x8087),
)

DEVICES = (
    ("device 8086:1521 (block end too)", 0x8086, 0x1521),
    ("device 8086:a382 (block end too)", 0x8086, 0xA382),
    ("device 10de:1b80", 0x10DE, 0x1B80),
    ("device 1af4:1041", 0x1AF4, 0x1041),
    ("device 1af4:10ff (absent)", 0x1AF4, 0x10FF),
)

CLASSES = (
    ("class 020000", 0x020000),
    ("class ff0000 (no subclass line)", 0xFF0000),
)


def module_at(revision: str, scratch: Path) -> ModuleType:
    """host/pciids.py as it is in ``revision``, importable beside this tree's modules."""
    text = subprocess.run(
        ["git", "show", f"{revision}:src/pcipass/host/pciids.py"],
        cwd=HERE.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = scratch / "pciids_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("pciids_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_lookups(ids: Any) -> None:
    for vendor, device, class_code, count in HOST_64:
        for _ in range(count):
            ids.vendor(vendor)
            ids.device(vendor, device)
            ids.class_name(class_code)


def cases(path: Path) -> list[tuple[str, Callable[[ModuleType, bytes], object]]]:
    def vendor(v: int) -> Callable[[ModuleType, bytes], object]:
        return lambda mod, data: mod.PciIds(data, "x").vendor(v)

    def device(v: int, d: int) -> Callable[[ModuleType, bytes], object]:
        return lambda mod, data: mod.PciIds(data, "x").device(v, d)

    def class_name(c: int) -> Callable[[ModuleType, bytes], object]:
        return lambda mod, data: mod.PciIds(data, "x").class_name(c)

    table: list[tuple[str, Callable[[ModuleType, bytes], object]]] = [
        ("load (in-process, warm)", lambda mod, data: mod.PciIds.load([path]))
    ]
    table += [(label, vendor(v)) for label, v in VENDORS]
    table += [(label, device(v, d)) for label, v, d in DEVICES]
    table += [(label, class_name(c)) for label, c in CLASSES]
    table.append(
        (
            "all lookups of `list` on the 64-function host",
            lambda mod, data: host_lookups(mod.PciIds(data, "x")),
        )
    )
    return table


def time_once(run: Callable[[ModuleType, bytes], object], module: ModuleType, data: bytes) -> float:
    start = time.perf_counter_ns()
    run(module, data)
    return (time.perf_counter_ns() - start) / 1000.0


def in_process(
    before: ModuleType, after: ModuleType, path: Path, repeats: int
) -> list[tuple[str, float, float, float]]:
    data = path.read_bytes()
    rows = []
    for label, run in cases(path):
        old: list[float] = []
        new: list[float] = []
        for index in range(repeats):
            if index % 2:
                new.append(time_once(run, after, data))
                old.append(time_once(run, before, data))
            else:
                old.append(time_once(run, before, data))
                new.append(time_once(run, after, data))
        ratios = [a / b for a, b in zip(old, new)]
        rows.append(
            (label, statistics.median(old), statistics.median(new), statistics.median(ratios))
        )
    return rows


CHILD = """
import importlib.util, sys, time
sys.path.insert(0, {src!r})
import pcipass.host.confined, pcipass.errors, pcipass.record  # imports are not the subject
spec = importlib.util.spec_from_file_location("m", {module!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
from pathlib import Path
m.PciIds(None, None)  # a class's first use (record's __init__) is not load's cost
start = time.perf_counter_ns()
m.PciIds.load([Path({path!r})])
print((time.perf_counter_ns() - start) / 1000.0)
"""


def fresh_processes(
    before: Path, after: Path, path: Path, processes: int
) -> tuple[float, float, float]:
    def once(module: Path) -> float:
        code = CHILD.format(src=str(SRC), module=str(module), path=str(path))
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        return float(out.stdout)

    old: list[float] = []
    new: list[float] = []
    for index in range(processes):
        if index % 2:
            new.append(once(after))
            old.append(once(before))
        else:
            old.append(once(before))
            new.append(once(after))
    ratios = [a / b for a, b in zip(old, new)]
    return statistics.median(old), statistics.median(new), statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision for 'before' (main)")
    parser.add_argument("--repeats", type=int, default=201)
    parser.add_argument("--processes", type=int, default=21)
    parser.add_argument("--pci-ids", type=Path, default=Path("/usr/share/misc/pci.ids"))
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from pcipass.host import pciids as after

    with tempfile.TemporaryDirectory() as scratch:
        before = module_at(args.before, Path(scratch))
        rows = in_process(before, after, args.pci_ids, args.repeats)
        fresh = fresh_processes(
            Path(before.__file__ or ""), Path(after.__file__ or ""), args.pci_ids, args.processes
        )
    print(f"pci.ids: {args.pci_ids}; before: {args.before}; medians of {args.repeats} repeats")
    print("| lookup | before | after | before / after |")
    print("|---|---|---|---|")
    for label, old, new, ratio in rows:
        print(f"| {label} | {old:.1f} us | {new:.1f} us | **{ratio:.1f}** |")
    old, new, ratio = fresh
    print(
        f"| load (fresh process, median of {args.processes}) | {old:.1f} us | {new:.1f} us |"
        f" **{ratio:.2f}** |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
