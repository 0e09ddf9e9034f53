"""Same bytes before and after: the guest-scan and big-host verbs of two source trees.

Speed work must not change what pcipass prints.  This script builds fake hosts (the
two example hosts, the KVM example with 200 guest configurations and a ledger, and
benchmark trees of 256 and 1024 functions with 200 and 800 guests) and runs the
verbs whose cost grows with guests and devices (``list`` and ``list --guests`` as text,
tree and JSON, ``check`` for everything, a device and a guest, ``guests`` and
``guests --check``, ``show``) once with each source tree.  Every run's stdout,
stderr and exit status must be equal, byte for byte.

Usage::

    git archive OLD_REV src | tar -x -C /tmp/before
    PYTHONPATH=src python3 benchmarks/same_output_guests.py --before /tmp/before/src --after src

Exit status 0 when every output is the same, 1 when one differs (the first
difference is printed).  The trees are built with this checkout's test kit.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # the kit that builds the trees

# The ledger's state: devices hidden and attached with the --before code, so both
# sides read the same ledger.  (hide --now needs the simulated kernel.)
HELD = 6


def run(src: Path, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("PCIPASS_ROOT", None)
    done = subprocess.run(
        [sys.executable, "-m", "pcipass", *argv], env=env, capture_output=True, check=False
    )
    return done.returncode, done.stdout, done.stderr


def hold_devices(src: Path, tree: Path) -> list[str]:
    """Hide a few devices (now and persistently) and attach half of them to libvirt guests of
    their own, before the other guests are written (they would make attach refuse); the
    last attached guest's file then drops its device (the ledger and file disagree)."""
    from pcipass.testing.many_guests import host_addresses

    (tree / ".pcipass-simulated-host").write_text("simulated\n")
    addresses = host_addresses(tree)
    held: list[str] = []
    for address in addresses[len(addresses) // 3 :: 7]:
        if len(held) == HELD:
            break
        if run(src, ["--root", str(tree), "hide", "--now", "--persist", address])[0] == 0:
            held.append(address)
    qemu = tree / "etc/libvirt/qemu"
    qemu.mkdir(parents=True, exist_ok=True)
    for index, address in enumerate(held[: HELD // 2]):
        guest = f"held-{index}"
        (qemu / f"{guest}.xml").write_text(
            f"<domain type='kvm'><name>{guest}</name><memory>524288</memory>"
            "<os><type>hvm</type></os><devices></devices></domain>\n"
        )
        status, _, err = run(src, ["--root", str(tree), "attach", address, guest])
        if status != 0:
            raise SystemExit(f"setup: attach {address} {guest} failed: {err.decode()}")
    if len(held) >= 2:
        last = qemu / f"held-{len(held[: HELD // 2]) - 1}.xml"
        text = last.read_text()
        last.write_text(text[: text.index("<hostdev")] + text[text.index("</hostdev>") + 10 :])
    return held


def build_trees(base: Path, before: Path) -> dict[str, tuple[Path, list[str]]]:
    from bench_list import build_tree

    from pcipass.testing.example import build_kvm, build_rhel5_xen
    from pcipass.testing.many_guests import write_guests

    trees: dict[str, tuple[Path, list[str]]] = {}
    build_rhel5_xen(base / "rhel5")
    trees["rhel5"] = (base / "rhel5", [])
    build_kvm(base / "kvm")
    trees["kvm"] = (base / "kvm", [])
    build_kvm(base / "kvm-200")
    trees["kvm-200"] = (base / "kvm-200", hold_devices(before, base / "kvm-200"))
    write_guests(base / "kvm-200", 200, seed=1)
    for size, count in ((256, 200), (1024, 800)):
        tree = base / f"host-{size}-{count}"
        build_tree(tree, size)
        trees[tree.name] = (tree, hold_devices(before, tree))
        write_guests(tree, count, seed=size)
    return trees


def verbs(tree: Path, held: list[str]) -> list[list[str]]:
    root = ["--root", str(tree)]
    runs = [
        ["list"],
        ["list", "--json"],
        ["list", "--guests"],
        ["list", "--guests", "--json"],
        ["list", "--tree"],
        ["list", "--guests", "--class", "net"],
        ["check"],
        ["check", "--json"],
        ["guests"],
        ["guests", "--json"],
        ["guests", "--check"],
        ["guests", "--check", "--json"],
    ]
    if held:
        runs += [
            ["check", held[0]],
            ["check", "--json", *held[:3]],
            ["show", held[0]],
            ["show", "--json", held[-1]],
            ["check", "--guest", "held-0"],
            ["guests", "--check", "held-0", "held-1"],
        ]
    guests = sorted(p.stem for p in (tree / "etc/xen").glob("farm-*.cfg"))
    if guests:
        runs += [["check", "--guest", guests[3]], ["check", "--json", "--guest", guests[7]]]
    return [[*root, *argv] for argv in runs]


def compare(before: Path, after: Path, base: Path) -> int:
    trees = build_trees(base, before)
    compared = 0
    for label, (tree, held) in trees.items():
        for argv in verbs(tree, held):
            old, new = run(before, argv), run(after, argv)
            compared += 1
            if old != new:
                shown = " ".join(argv[2:])
                print(f"DIFFERENT on {label}: pcipass {shown}")
                for name, a, b in zip(("exit", "stdout", "stderr"), old, new):
                    if a != b:
                        left = str(a).splitlines() if name == "exit" else a.decode().splitlines()
                        right = str(b).splitlines() if name == "exit" else b.decode().splitlines()
                        diff = difflib.unified_diff(left, right, "before", "after", lineterm="")
                        print(f"  {name}:")
                        print("\n".join(f"    {line}" for line in list(diff)[:40]))
                return 1
        print(f"same: {label} ({len(verbs(tree, held))} runs)")
    print(f"same output: {compared} runs on {len(trees)} trees")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the old src/ directory")
    parser.add_argument("--after", type=Path, required=True, help="the new src/ directory")
    parser.add_argument("--trees", type=Path, help="build the trees here (kept)")
    args = parser.parse_args(argv)
    before, after = args.before.resolve(), args.after.resolve()
    if args.trees is not None:
        args.trees.mkdir(parents=True, exist_ok=False)
        return compare(before, after, args.trees)
    with tempfile.TemporaryDirectory(prefix="pcipass-same-") as scratch:
        return compare(before, after, Path(scratch))


if __name__ == "__main__":
    sys.exit(main())
