"""pcipass list / show on fake trees, and the bad-input cases of the foundation issue."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.ops.inventory import inventory
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.harness import Lab, make_lab


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_example_host_inventory_knows_what_the_host_uses(rhel5: Lab) -> None:
    inv = inventory(rhel5.host)
    by = {str(d.address): d for d in inv.devices}
    assert by["0000:09:00.0"].device.driver == "bnx2"
    assert by["0000:09:00.0"].uses == []
    root_disk = [u.detail for u in by["0000:00:1f.2"].uses]
    assert "mounted filesystem / (ext4 on /dev/sda1)" in root_disk
    assert "active swap on /dev/sda2" in root_disk
    nic = [u.kind for u in by["0000:05:00.0"].uses]
    assert nic == ["route", "address"]
    assert [u.kind for u in by["0000:00:02.0"].uses] == ["console", "console"]
    assert by["0000:09:00.0"].vendor_name == "Broadcom Inc. and subsidiaries"
    assert by["0000:09:00.0"].class_name == "Ethernet controller"
    assert inv.problems == []


def test_kvm_host_groups_and_sriov(kvm: Lab) -> None:
    inv = inventory(kvm.host)
    by = {str(d.address): d for d in inv.devices}
    ich9 = by["0000:00:1f.2"]
    assert [str(a) for a in ich9.group_members] == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    pf = by["0000:02:00.0"].to_json()["sriov"]
    assert pf == {
        "total_vfs": 7,
        "num_vfs": 2,
        "physfn": None,
        "virtfns": ["0000:02:10.0", "0000:02:10.4"],
    }
    vf = by["0000:02:10.4"].device
    assert vf.physfn == PciAddress.parse("02:00.0")
    assert vf.parent == PciAddress.parse("00:1c.0")


def test_list_json_schema(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--root", str(rhel5.base), "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["schema_version"] == 1
    first = data["devices"][0]
    for key in (
        "address",
        "vendor_id",
        "device_id",
        "class",
        "driver",
        "iommu_group",
        "host_uses",
        "owner",
        "sriov",
        "parent",
        "unreadable",
    ):
        assert key in first
    # --root and --json are accepted after the command too
    code2, out2, _ = run_cli(capsys, "list", "--json", "--root", str(rhel5.base))
    assert code2 == 0 and json.loads(out2) == data


def test_list_filters(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--root", str(kvm.base), "--json", "list", "--class", "net")
    addresses = [d["address"] for d in json.loads(out)["devices"]]
    assert addresses == ["0000:02:00.0", "0000:02:10.0", "0000:02:10.4", "0000:03:00.0"]
    _, out, _ = run_cli(capsys, "--root", str(kvm.base), "--json", "list", "--group", "11")
    assert len(json.loads(out)["devices"]) == 3
    _, out, _ = run_cli(capsys, "--root", str(kvm.base), "--json", "list", "--driver", "none")
    assert [d["address"] for d in json.loads(out)["devices"]] == ["0000:00:00.0"]
    code, _, err = run_cli(capsys, "--root", str(kvm.base), "list", "--class", "toasters")
    assert code == 2 and "unknown class name" in err


def test_tree_shows_topology(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--root", str(kvm.base), "list", "--tree")
    assert code == 0
    lines = out.splitlines()
    port = next(i for i, line in enumerate(lines) if "0000:00:1c.1" in line)
    assert "0000:03:00.0" in lines[port + 1] and lines[port + 1].startswith("│  └─ ")


# ---- bad input -----------------------------------------------------------


def test_malformed_address_is_a_usage_error(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "--root", str(rhel5.base), "show", "0000:09:00.9")
    assert code == 2
    assert "invalid PCI address '0000:09:00.9'" in err and "Traceback" not in err


def test_missing_device_is_not_found(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--root", str(rhel5.base), "show", "0000:42:00.0")
    assert code == 4
    assert "0000:42:00.0: no such PCI device" in err


def test_root_without_pci_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--root", str(tmp_path), "list")
    assert code == 4
    assert "/sys/bus/pci/devices: no PCI bus in sysfs here" in err
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "list", "--json")
    assert code == 4 and json.loads(out)["exit_code"] == 4


def test_dangling_link_and_vanished_device_keep_the_rest(rhel5: Lab) -> None:
    os.symlink(
        "../../../devices/pci0000:00/0000:00:07.0", rhel5.base / "sys/bus/pci/devices/0000:00:07.0"
    )
    inv = inventory(rhel5.host)
    assert "0000:00:07.0: vanished while being read (dangling link?)" in inv.problems
    assert len(inv.devices) == 10


def test_truncated_and_unreadable_attributes(rhel5: Lab) -> None:
    directory = rhel5.fake.path_of("0000:09:00.0")
    (directory / "uevent").write_text("")
    (directory / "vendor").write_text("garbage\n")
    inv = inventory(rhel5.host)
    info = inv.get(PciAddress.parse("09:00.0"))
    assert info is not None
    assert info.device.vendor is None and "vendor" in info.device.unreadable
    assert "0000:09:00.0: could not read vendor" in inv.problems


@pytest.mark.parametrize("content", [None, b"\x00\xff" * 5000])
def test_missing_or_corrupt_pci_ids_costs_only_names(
    tmp_path: Path, content: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Missing from the root AND from the running system (else its names are used).
    monkeypatch.setattr("pcipass.host.pciids.SYSTEM_PCI_IDS", (tmp_path / "no-system-ids",))
    fake = build_rhel5_xen(tmp_path / "h")
    ids = fake.base / "usr/share/misc/pci.ids"
    if content is None:
        ids.unlink()
    else:
        ids.write_bytes(content)

    inv = inventory(make_lab(fake).host)
    info = inv.get(PciAddress.parse("09:00.0"))
    assert info is not None and info.vendor_name is None
    assert info.describe() == "14e4 Device 1639"
    assert any("pci.ids" in p for p in inv.problems)


def test_a_corrupt_ledger_costs_only_the_owner_column(rhel5: Lab) -> None:
    state = rhel5.base / "var/lib/pcipass"
    state.mkdir(parents=True)
    (state / "state.db").write_bytes(b"this is not sqlite" * 100)
    inv = inventory(rhel5.host)
    assert len(inv.devices) == 10
    assert any(p.startswith("owners not shown:") for p in inv.problems)


def test_list_carries_the_kernels_reset_methods(kvm: Lab) -> None:
    by = {str(d.address): d.to_json() for d in inventory(kvm.host).devices}
    assert by["0000:03:00.0"]["reset_methods"] == ["flr", "pm", "bus"]
    assert by["0000:01:00.0"]["reset_methods"] == ["bus"]
    assert by["0000:00:1f.2"]["reset_methods"] is None  # no reset_method attribute
