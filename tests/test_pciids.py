"""Names from pci.ids, and the running system's pci.ids under a --root without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host import pciids
from pcipass.host.pciids import PciIds
from pcipass.host.root import HostRoot
from pcipass.testing.harness import Lab

# A system pci.ids whose names differ from the example host's own subset, so a
# test can tell which file a name came from.
SYSTEM_IDS = (
    "# a system pci.ids\n"
    "14e4  Broadcom (system file)\n"
    "\t1639  BCM5709 (system file)\n"
    "C 02  Network\n"
    "\t00  Eth\n"
)


@pytest.fixture
def system_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "system" / "pci.ids"
    path.parent.mkdir()
    path.write_text(SYSTEM_IDS)
    monkeypatch.setattr(pciids, "SYSTEM_PCI_IDS", (tmp_path / "absent.ids", path))
    return path


def _drop_root_ids(lab: Lab) -> None:
    (lab.base / "usr/share/misc/pci.ids").unlink()


def test_a_root_without_pci_ids_uses_the_systems_and_says_so_once(
    rhel5: Lab, system_ids: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _drop_root_ids(rhel5)
    assert main(["--root", str(rhel5.base), "list"]) == 0
    captured = capsys.readouterr()
    row = next(x for x in captured.out.splitlines() if x.startswith("0000:09:00.0"))
    assert "Broadcom (system file) BCM5709 (system file)" in row
    assert captured.err.splitlines() == [
        f"pcipass: no pci.ids under {rhel5.base}; device names come from this machine's "
        f"{system_ids}"
    ]


def test_json_carries_the_note_and_the_names(
    rhel5: Lab, system_ids: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _drop_root_ids(rhel5)
    assert main(["--root", str(rhel5.base), "show", "09:00.0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["device_name"] == "BCM5709 (system file)"
    assert [p for p in shown["problems"] if "pci.ids" in p] == [
        f"no pci.ids under {rhel5.base}; device names come from this machine's {system_ids}"
    ]


def test_the_roots_own_pci_ids_wins(
    rhel5: Lab, system_ids: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(rhel5.base), "list"]) == 0
    captured = capsys.readouterr()
    assert "system file" not in captured.out and "pci.ids" not in captured.err
    assert "NetXtreme II BCM5709 Gigabit Ethernet" in captured.out


def test_no_pci_ids_anywhere_shows_numeric_ids(
    rhel5: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop_root_ids(rhel5)
    monkeypatch.setattr(pciids, "SYSTEM_PCI_IDS", (tmp_path / "absent.ids",))
    ids = PciIds.for_root(HostRoot.at(rhel5.base))
    assert ids.data is None and ids.note is None
    assert ids.problem is not None and "no pci.ids found" in ids.problem
    assert ids.vendor(0x14E4) is None


def test_an_unreadable_pci_ids_in_the_root_is_reported_not_replaced(
    rhel5: Lab, system_ids: Path
) -> None:
    target = rhel5.base / "usr/share/misc/pci.ids"
    target.unlink()
    target.mkdir()  # reading it fails with EISDIR
    ids = PciIds.for_root(HostRoot.at(rhel5.base))
    assert ids.data is None and ids.note is None
    assert ids.problem is not None and str(target) in ids.problem


def test_the_real_root_never_falls_back(system_ids: Path) -> None:
    # On "/" the candidates are the system's own files: nothing to fall back to.
    ids = PciIds.for_root(HostRoot.at("/"), system=[system_ids])
    assert ids.note is None


# --- the lookup gives the names a plain full parse gives ------------------------------


def reference_names(text: str) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """Every line read in order, as the format says: a vendor line, its device lines
    (one tab) up to the next line that is neither indented, a comment nor empty."""
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    current: int | None = None
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("\t\t"):
            continue
        if line.startswith("\t"):
            if current is not None:
                devices.setdefault((current, int(line[1:5], 16)), line[5:].strip())
            continue
        current = None
        if len(line) > 6 and line[4:6] == "  " and all(c in "0123456789abcdef" for c in line[:4]):
            current = int(line[:4], 16)
            vendors.setdefault(current, line[6:].strip())
    return vendors, devices


def check_against_reference(path: Path, sample: int) -> None:
    import random

    text = path.read_text(encoding="utf-8", errors="replace")
    vendors, devices = reference_names(text)
    ids = PciIds.load([path])
    for vendor, name in vendors.items():
        assert ids.vendor(vendor) == name, hex(vendor)
    keys = sorted(devices)
    for key in random.Random(13).sample(keys, min(sample, len(keys))):
        assert ids.device(*key) == devices[key], key
    # Ids that are not there: a vendor, and a device of a known vendor.
    absent = next(v for v in range(0x10000) if v not in vendors)
    assert ids.vendor(absent) is None and ids.device(absent, 1) is None
    some = next(iter(vendors))
    missing = next(d for d in range(0x10000) if (some, d) not in devices)
    assert ids.device(some, missing) is None


@pytest.mark.skipif(not Path("/usr/share/misc/pci.ids").is_file(), reason="no pci.ids")
def test_the_systems_full_pci_ids_gives_the_reference_names() -> None:
    check_against_reference(Path("/usr/share/misc/pci.ids"), sample=3000)


def test_an_unsorted_file_gives_the_reference_names(tmp_path: Path) -> None:
    # Vendors and devices out of order (the test kit's subsets are): the bisection
    # misses, the plain search must still find every one.
    from pcipass.testing.example import PCI_IDS

    head, _, classes = PCI_IDS.partition("C 00")
    blocks = head.split("\n")[1:]
    vendor_blocks: list[list[str]] = []
    for line in blocks:
        if line and not line.startswith("\t"):
            vendor_blocks.append([line])
        elif line:
            vendor_blocks[-1].append(line)
    shuffled = [[b[0], *reversed(b[1:])] for b in reversed(vendor_blocks)]
    text = "# unsorted\n" + "\n".join("\n".join(b) for b in shuffled) + "\n\nC 00" + classes
    path = tmp_path / "pci.ids"
    path.write_text(text)
    check_against_reference(path, sample=10_000)
