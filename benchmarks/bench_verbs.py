"""Where users feel pcipass's speed: every verb on a typical host, and hosts with many guests.

Run on demand (``make bench``), never from the tests.  Each figure is measured interleaved with
its peer in the same run (A B A B ...), and what is printed is the median of the per-pair
ratios, with the peer's own median beside it, so a busy or drifting machine shifts both alike.

Measures (issue "Speed where users feel it"):

* ``list`` / ``lspci -Dnnk`` on fake hosts of 16, 64, 256, 1024, 8192 functions with the
  system's full pci.ids copied in (the same file for both);
* ``list --json`` / ``lspci -Dnnk`` at the largest size, and its peak memory (GNU time);
* CPU (user + sys, from ``wait4``) of every verb on the document's example host, over the
  interpreter's floor (``python -c pass`` with the same interpreter);
* ``check`` on 1024 functions with 200 and 800 xl guest configurations / with none;
* ``list --guests`` on the largest host with 200 guests / without.

Usage: ``PYTHONPATH=src python3 benchmarks/bench_verbs.py [--sizes 16,64] [--pairs 7]
[--baseline DIR]`` (DIR: another checkout, e.g. ``git worktree add /tmp/old main``).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_list import build_tree, peak_rss_kib  # noqa: E402

SYSTEM_PCI_IDS = Path("/usr/share/misc/pci.ids")
PCIPASS = [sys.executable, "-m", "pcipass"]


@dataclass
class Sample:
    wall_s: float
    cpu_s: float


def measure(argv: Sequence[str], env: dict[str, str]) -> Sample:
    """One run, output discarded: wall time, and the child's user + sys CPU from wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1, 3):  # check exits 1/3 on findings by design
        raise SystemExit(f"{' '.join(argv)}: exit status {proc.returncode}")
    return Sample(wall, usage.ru_utime + usage.ru_stime)


@dataclass
class Pair:
    a: list[Sample]
    b: list[Sample]

    def median(self, side: str, what: str = "wall_s") -> float:
        return statistics.median(getattr(s, what) for s in getattr(self, side))

    def ratio(self, what: str = "wall_s") -> float:
        return statistics.median(
            getattr(x, what) / max(getattr(y, what), 1e-9) for x, y in zip(self.a, self.b)
        )


def interleaved(
    a: Sequence[str],
    b: Sequence[str],
    env: dict[str, str],
    pairs: int,
    warmup: int = 1,
    env_b: dict[str, str] | None = None,
) -> Pair:
    """A B A B ...; ``env_b`` (default ``env``) is B's environment."""
    other = env if env_b is None else env_b
    for _ in range(warmup):
        measure(a, env)
        measure(b, other)
    result = Pair([], [])
    for _ in range(pairs):
        result.a.append(measure(a, env))
        result.b.append(measure(b, other))
    return result


def lspci_argv(lspci: str, tree: Path) -> list[str]:
    return [
        lspci,
        "-A",
        "linux-sysfs",
        "-O",
        f"sysfs.path={tree}/sys/bus/pci",
        "-i",
        f"{tree}/usr/share/misc/pci.ids",
        "-Dnnk",
    ]


def host_tree(base: Path, size: int) -> Path:
    tree = base / f"host-{size}"
    if not (tree / "sys").exists():
        build_tree(tree, size)
    shutil.copyfile(SYSTEM_PCI_IDS, tree / "usr/share/misc/pci.ids")
    return tree


def add_guests(tree: Path, count: int) -> None:
    """``count`` xl configurations, each assigning one of the host's endpoints."""
    xen = tree / "etc/xen"
    for old in xen.glob("bench-*.cfg"):
        old.unlink()
    xen.mkdir(parents=True, exist_ok=True)
    devices = sorted(p.name for p in (tree / "sys/bus/pci/devices").iterdir())
    for index in range(count):
        address = devices[(index * 7) % len(devices)]
        (xen / f"bench-{index:04d}.cfg").write_text(
            f'name = "bench-{index:04d}"\ntype = "hvm"\nmemory = 1024\npci = [ \'{address}\' ]\n'
        )


def row(label: str, pair: Pair, peer: str) -> str:
    """Wall-clock medians and ratio, then the CPU ratio (user + sys): on a shared,
    loaded machine the CPU ratio moves far less than the wall-clock one."""
    mine, theirs = pair.median("a") * 1000, pair.median("b") * 1000
    return (
        f"| {label} | {mine:.1f} ms | {peer} {theirs:.1f} ms | **{pair.ratio():.2f}** |"
        f" {pair.ratio('cpu_s'):.2f} |"
    )


def bench_list(base: Path, sizes: list[int], env: dict[str, str], pairs: int) -> list[str]:
    lspci = shutil.which("lspci")
    if lspci is None:
        return ["(lspci not found: install pciutils)"]
    lines = ["| measure | pcipass | peer | ratio | CPU ratio |", "|---|---|---|---|---|"]
    for size in sizes:
        tree = host_tree(base, size)
        pair = interleaved(
            [*PCIPASS, "--root", str(tree), "list"], lspci_argv(lspci, tree), env, pairs
        )
        lines.append(row(f"`list` at {size} functions", pair, "lspci -Dnnk"))
    tree = host_tree(base, max(sizes))
    argv = [*PCIPASS, "--root", str(tree), "list", "--json"]
    pair = interleaved(argv, lspci_argv(lspci, tree), env, pairs)
    lines.append(row(f"`list --json` at {max(sizes)} functions", pair, "lspci -Dnnk"))
    rss_kib, exact = peak_rss_kib(argv, env)  # bench_list: GNU time when it is installed
    bound = "" if exact else " (upper bound: no GNU time)"
    lines.append(
        f"| peak memory, `list --json` at {max(sizes)} (target ≤ 40 MiB) |"
        f" {rss_kib / 1024:.1f} MiB{bound} | | |"
    )
    return lines


def example_verbs(example: Path) -> dict[str, list[str]]:
    root = ["--root", str(example)]
    return {
        "--version": ["--version"],
        "list": [*root, "list"],
        "show": [*root, "show", "09:00.0"],
        "check": [*root, "check"],
        "status": [*root, "status"],
        "hide --now --dry-run": [*root, "hide", "--now", "--dry-run", "09:00.0"],
        "hide --persist --dry-run": [*root, "hide", "--persist", "--dry-run", "09:00.0"],
        "attach --dry-run": [*root, "attach", "--dry-run", "--hide", "09:00.0", "rhel5pv"],
        "guests": [*root, "guests"],
    }


def bench_verbs(base: Path, env: dict[str, str], pairs: int) -> list[str]:
    from pcipass.testing.example import build_rhel5_xen

    example = base / "example"
    if not example.exists():
        build_rhel5_xen(example)
    floor = [sys.executable, "-c", "pass"]
    lines = ["| verb (example host) | CPU | over the floor | floor |", "|---|---|---|---|"]
    for label, argv in example_verbs(example).items():
        pair = interleaved([*PCIPASS, *argv], floor, env, pairs)
        over = (pair.median("a", "cpu_s") - pair.median("b", "cpu_s")) * 1000
        lines.append(
            f"| `{label}` | {pair.median('a', 'cpu_s') * 1000:.0f} ms | **{over:.0f} ms** |"
            f" {pair.median('b', 'cpu_s') * 1000:.0f} ms |"
        )
    return lines


def bench_baseline(
    base: Path, sizes: list[int], env: dict[str, str], baseline: Path, pairs: int
) -> list[str]:
    """Every verb, and ``list`` on the fake hosts, interleaved with the same command run
    by another checkout (``--baseline DIR``: its ``src``): the before/after of a change,
    measured in one run so that the machine's drift cancels out."""
    from pcipass.testing.example import build_rhel5_xen

    example = base / "example"
    if not example.exists():
        build_rhel5_xen(example)
    other = {**env, "PYTHONPATH": str(baseline / "src")}
    lines = [
        f"| command | this checkout CPU | {baseline} CPU | CPU ratio |",
        "|---|---|---|---|",
    ]
    commands = {f"`{label}`": argv for label, argv in example_verbs(example).items()}
    for size in sizes:
        commands[f"`list` at {size} functions"] = ["--root", str(host_tree(base, size)), "list"]
    for label, argv in commands.items():
        pair = interleaved([*PCIPASS, *argv], [*PCIPASS, *argv], env, pairs, env_b=other)
        lines.append(
            f"| {label} | {pair.median('a', 'cpu_s') * 1000:.0f} ms |"
            f" {pair.median('b', 'cpu_s') * 1000:.0f} ms | **{pair.ratio('cpu_s'):.2f}** |"
        )
    return lines


def bench_guests(base: Path, sizes: list[int], env: dict[str, str], pairs: int) -> list[str]:
    lines = ["| measure | with guests | without | ratio | CPU ratio |", "|---|---|---|---|---|"]
    middle = 1024 if 1024 in sizes else max(sizes)
    tree = host_tree(base, middle)
    bare = base / f"host-{middle}-bare"
    if not bare.exists():
        shutil.copytree(tree, bare, symlinks=True)
    add_guests(bare, 0)
    for count in (200, 800):
        add_guests(tree, count)
        pair = interleaved(
            [*PCIPASS, "--root", str(tree), "check"],
            [*PCIPASS, "--root", str(bare), "check"],
            env,
            pairs,
        )
        target = " (target ≤ 2.0)" if count == 800 else ""
        label = f"`check`, {count} guests / none, {middle} functions{target}"
        lines.append(row(label, pair, "none"))
    largest = max(sizes)
    tree = host_tree(base, largest)
    add_guests(tree, 200)
    pair = interleaved(
        [*PCIPASS, "--root", str(tree), "list", "--guests"],
        [*PCIPASS, "--root", str(tree), "list"],
        env,
        pairs,
    )
    label = f"`list --guests`, 200 guests / `list`, {largest} functions (target ≤ 1.3)"
    lines.append(row(label, pair, "list"))
    add_guests(tree, 0)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256,1024,8192")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved pairs per figure")
    parser.add_argument("--trees", type=Path, help="keep/reuse the fake host trees here")
    parser.add_argument(
        "--only",
        choices=["list", "verbs", "guests", "baseline"],
        action="append",
        help="some parts only",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run every verb interleaved with the checkout DIR (its src/) and print the"
        " CPU ratios: before/after a change in one run",
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    # Bytecode first: under PYTHONDONTWRITEBYTECODE (or a read-only tree) every
    # changed module would be compiled again in every timed run.
    for checkout in [HERE.parent, *([args.baseline] if args.baseline else [])]:
        compileall.compile_dir(str(Path(checkout) / "src"), quiet=1)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    env.pop("PCIPASS_ROOT", None)
    parts = args.only or ["list", "verbs", "guests"]
    with tempfile.TemporaryDirectory(prefix="pcipass-bench-") as scratch:
        base = args.trees or Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pairs={args.pairs}")
        if "list" in parts:
            print("\n".join(["", *bench_list(base, sizes, env, args.pairs)]))
        if "verbs" in parts:
            print("\n".join(["", *bench_verbs(base, env, args.pairs)]))
        if "guests" in parts:
            print("\n".join(["", *bench_guests(base, sizes, env, args.pairs)]))
        if args.baseline is not None and (args.only is None or "baseline" in parts):
            lines = bench_baseline(base, sizes, env, args.baseline.resolve(), args.pairs)
            print("\n".join(["", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
