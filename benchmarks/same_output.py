"""Same output, byte for byte: run the read-only verbs with two checkouts and diff them.

Speed work must not change a single byte a user or a script reads.  This runs every
read-only verb (and the ``--dry-run`` forms of the verbs that change things) with the
``--before`` checkout and then the ``--after`` one, on the same trees at the same paths,
and compares stdout, stderr and the exit status of each run.

Trees: the two example hosts of ``pcipass.testing.example`` (simulated kernel), the same
hosts without the simulated marker (plain offline trees), the document's host with a
ledger (``hide --now --persist`` done first), and random trees built with the test kit
(``FakeHost``), half of them named from the system's full pci.ids with ids drawn from it.

A side is a directory holding a checkout (its ``src/`` is put on ``PYTHONPATH``) or a git
revision of this repository, unpacked with ``git archive`` into a temporary directory
(nothing is written to the repository).  Exit status 0 when every run is the same, 1 with
the differences printed otherwise.

Usage: ``python3 benchmarks/same_output.py --before main --after . [--random 6]``
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from pcipass.testing.example import PCI_IDS, build_kvm, build_rhel5_xen  # noqa: E402
from pcipass.testing.fakehost import FakeHost  # noqa: E402

SYSTEM_PCI_IDS = Path("/usr/share/misc/pci.ids")
MARKER = ".pcipass-simulated-host"

Run = tuple[int, bytes, bytes]


@contextmanager
def checkout(side: str) -> Iterator[Path]:
    """A directory with ``src/pcipass``: ``side`` itself, or a git revision unpacked."""
    path = Path(side)
    if (path / "src" / "pcipass").is_dir():
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="pcipass-same-") as scratch:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", side, "src"],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise SystemExit(f"same_output: {side}: {archive.stderr.decode().strip()}")
        tar_path = Path(scratch) / "src.tar"
        tar_path.write_bytes(archive.stdout)
        with tarfile.open(tar_path) as tar:
            tar.extractall(scratch)  # our own repository's archive
        yield Path(scratch)


def system_ids() -> list[tuple[int, int | None]]:
    """(vendor, device) pairs from the system's pci.ids; device None: a vendor-only pick."""
    pairs: list[tuple[int, int | None]] = []
    vendor: int | None = None
    for line in SYSTEM_PCI_IDS.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("C "):
            break
        try:
            if line[:1] not in ("", "#", "\t"):
                vendor = int(line[:4], 16)
                pairs.append((vendor, None))
            elif line.startswith("\t") and not line.startswith("\t\t") and vendor is not None:
                pairs.append((vendor, int(line[1:5], 16)))
        except ValueError:
            continue
    return pairs


CLASSES = (0x020000, 0x010802, 0x030000, 0x040300, 0x0C0330, 0x010601, 0x120000, 0xFF0000)
DRIVERS = (None, "e1000e", "igb", "nvme", "vfio-pci", "xhci_hcd", "ahci")


def random_tree(base: Path, seed: int, full_ids: bool) -> None:
    """A host of random devices behind random bridges, with guests naming some of them."""
    rng = random.Random(seed)
    host = FakeHost(base, iommu_groups=rng.random() < 0.7)
    catalogue: list[tuple[int, int | None]] = []
    if full_ids and SYSTEM_PCI_IDS.is_file():
        host.write_pci_ids(SYSTEM_PCI_IDS.read_text(encoding="utf-8", errors="replace"))
        catalogue = rng.sample(system_ids(), 40)
    else:
        host.write_pci_ids(PCI_IDS)
    catalogue += [(0x8086, 0x10D3), (0x14E4, 0x1639), (0x1AF4, 0x1000), (0xABCD, 0x1234)]
    host.add_host_bridge()
    addresses: list[str] = []
    for port in range(1, rng.randint(2, 9)):
        bridge = f"0000:00:{port:02x}.0"
        host.add_bridge(bridge, secondary_bus=port)
        for function in range(rng.randint(1, 5)):
            vendor, device = rng.choice(catalogue)
            address = f"0000:{port:02x}:00.{function}"
            host.add_device(
                address,
                vendor=vendor,
                device=device if device is not None else rng.randrange(0x10000),
                class_code=rng.choice(CLASSES) | rng.randrange(2),
                driver=rng.choice(DRIVERS),
                parent=bridge,
                subsystem=(rng.randrange(0x10000), rng.randrange(0x10000)),
                revision=rng.randrange(256),
                multifunction=True,
            )
            addresses.append(address)
    for index in range(rng.randint(0, 3)):
        picked = rng.sample(addresses, min(len(addresses), rng.randint(1, 2)))
        pci = ", ".join(f"'{a}'" for a in picked)
        host.write_file(
            f"/etc/xen/guest{index}.cfg",
            f'name = "guest{index}"\nmemory = 512\npci = [ {pci} ]\n',
        )


def build_trees(pristine: Path, randoms: int) -> dict[str, list[str]]:
    """The trees, and for each the device addresses its verbs are run on."""
    trees: dict[str, list[str]] = {}
    build_rhel5_xen(pristine / "rhel5").mark_simulated()
    build_kvm(pristine / "kvm").mark_simulated()
    for name in ("rhel5", "kvm"):
        shutil.copytree(pristine / name, pristine / f"{name}-plain", symlinks=True)
        (pristine / f"{name}-plain" / MARKER).unlink(missing_ok=True)
    trees["rhel5"] = trees["rhel5-plain"] = ["0000:09:00.0", "0000:05:00.0"]
    trees["kvm"] = trees["kvm-plain"] = sorted(
        p.name for p in (pristine / "kvm/sys/bus/pci/devices").iterdir()
    )[-2:]
    for seed in range(1, randoms + 1):
        name = f"random{seed}"
        random_tree(pristine / name, seed, full_ids=seed % 2 == 0)
        devices = sorted(p.name for p in (pristine / name / "sys/bus/pci/devices").iterdir())
        trees[name] = devices[-2:]
    return trees


def verbs(addresses: Sequence[str]) -> list[list[str]]:
    """Every read-only form worth comparing, on ``addresses``."""
    first, last = addresses[0], addresses[-1]
    short = first.removeprefix("0000:")
    runs: list[list[str]] = [
        ["--version"],
        ["--help"],
        [],
        ["nosuchverb"],
        ["list"],
        ["list", "--json"],
        ["list", "--tree"],
        ["list", "--guests"],
        ["list", "--guests", "--json"],
        ["list", "--class", "net"],
        ["list", "--driver", "none"],
        ["list", "--class", "bogus"],
        ["show", first],
        ["show", short],
        ["show", "--json", first],
        ["show", last],
        ["show", "0000:ff:1f.7"],
        ["show", "not-an-address"],
        ["--json", "show", "not-an-address"],
        ["check"],
        ["check", "--json"],
        ["check", first],
        ["status"],
        ["status", "--json"],
        ["guests"],
        ["guests", "--json"],
        ["explain", "--help"],
        ["export", "--format", "libvirt"],
        ["export", "--format", "proxmox", "--json"],
        ["export", "--format", "nova", first],
        ["rom", first],
        ["hide", "--now", "--dry-run", first],
        ["hide", "--persist", "--dry-run", first],
        ["hide", "--now", "--persist", "--dry-run", "--json", first],
        ["unhide", "--now", "--dry-run", first],
        ["attach", "--dry-run", "--hide", first, "rhel5pv"],
        ["attach", "--dry-run", first, "nosuchguest"],
        ["detach", "--dry-run", first, "rhel5pv"],
        ["guest-setup", "--dry-run"],
        ["guard-install", "--dry-run"],
        ["hide"],
        ["hide", "--bogus", first],
    ]
    from_help = ["list", "show", "check", "hide", "unhide", "status", "recover", "attach"]
    runs += [[verb, "--help"] for verb in from_help]
    runs += [[verb, "--help"] for verb in ("detach", "guard", "guests", "export", "save")]
    runs += [[verb, "--help"] for verb in ("restore", "migrate", "rom", "guard-install")]
    runs += [["guest-setup", "--help"]]
    return runs


def run_all(
    src: Path, pristine: Path, work: Path, trees: dict[str, list[str]]
) -> dict[tuple[str, str], Run]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PCIPASS_", "PYTHON", "COLUMNS", "LINES"))
    }
    env.update({"PYTHONPATH": str(src / "src"), "COLUMNS": "100", "LC_ALL": "C.UTF-8"})
    results: dict[tuple[str, str], Run] = {}
    for name, addresses in trees.items():
        tree = work / name
        for argv in verbs(addresses):
            # A fresh copy at the same path for every run: a dry run that wrote
            # something would show up as a difference in the runs after it.
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(pristine / name, tree, symlinks=True)
            full = [sys.executable, "-m", "pcipass", "--root", str(tree), *argv]
            done = subprocess.run(full, env=env, capture_output=True, check=False, timeout=120)
            results[(name, " ".join(argv))] = (done.returncode, done.stdout, done.stderr)
    return results


def prepare_ledger(src: Path, pristine: Path) -> None:
    """The document's host with pcipass state: 09:00.0 hidden now and at boot."""
    shutil.copytree(pristine / "rhel5", pristine / "rhel5-ledger", symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    tree = str(pristine / "rhel5-ledger")
    argv = [sys.executable, "-m", "pcipass", "--root", tree, "hide", "--now", "--persist"]
    done = subprocess.run([*argv, "0000:09:00.0"], env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"same_output: preparing the ledger failed: {done.stderr.decode()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout directory or git revision")
    parser.add_argument("--after", default=str(REPO), help="checkout directory or git revision")
    parser.add_argument("--random", type=int, default=6, help="random trees (default 6)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pcipass-same-trees-") as scratch:
        pristine, work = Path(scratch) / "pristine", Path(scratch) / "work"
        pristine.mkdir()
        trees = build_trees(pristine, args.random)
        outcomes: list[dict[tuple[str, str], Run]] = []
        for index, side in enumerate((args.before, args.after)):
            with checkout(side) as src:
                if index == 0:
                    prepare_ledger(src, pristine)
                    trees["rhel5-ledger"] = trees["rhel5"]
                outcomes.append(run_all(src, pristine, work, trees))
    before, after = outcomes
    differ = [key for key in before if before[key] != after[key]]
    for tree, words in differ:
        old, new = before[(tree, words)], after[(tree, words)]
        print(f"DIFFERENT: {tree}: pcipass {words}")
        for label, a, b in (("exit", old[0], new[0]), ("stdout", old[1], new[1])):
            if a != b:
                print(f"  {label}: before {a!r}\n  {label}: after  {b!r}")
        if old[2] != new[2]:
            print(f"  stderr: before {old[2]!r}\n  stderr: after  {new[2]!r}")
    print(f"{len(before) - len(differ)} of {len(before)} runs the same on {len(trees)} trees")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
