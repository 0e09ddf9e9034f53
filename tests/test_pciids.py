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
