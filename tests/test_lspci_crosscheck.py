"""pcipass list --json against the real lspci (pciutils) reading the same fake tree."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.testing.example import PCI_IDS, build_kvm, build_rhel5_xen
from pcipass.testing.fakehost import FakeHost
from pcipass.testing.gpu_host import build_gpu
from pcipass.testing.tools import find_tool

pytestmark = pytest.mark.needs_tool("lspci")

LSPCI = find_tool("lspci")


def lspci_records(base: Path) -> dict[str, dict[str, str]]:
    out = subprocess.run(
        [
            str(LSPCI),
            "-A",
            "linux-sysfs",
            "-O",
            f"sysfs.path={base}/sys/bus/pci",
            "-i",
            str(base / "usr/share/misc/pci.ids"),
            "-Dnnkvmm",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    records: dict[str, dict[str, str]] = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        records[fields["Slot"]] = fields
    return records


def split_name(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"(.*) \[([0-9a-f]+)\]", text)
    assert match, text
    return match.group(1), match.group(2)


def pcipass_devices(base: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["--root", str(base), "list", "--json"]) == 0
    devices: list[dict[str, object]] = json.loads(capsys.readouterr().out)["devices"]
    return devices


def random_tree(base: Path, seed: int) -> FakeHost:
    rng = random.Random(seed)
    host = FakeHost(base)
    host.write_pci_ids(PCI_IDS)
    host.add_host_bridge()
    catalogue = [
        (0x14E4, 0x1639, 0x020000, "bnx2"),
        (0x8086, 0x10D3, 0x020000, "e1000e"),
        (0x144D, 0xA808, 0x010802, "nvme"),
        (0x10DE, 0x1B80, 0x030000, None),
        (0x8086, 0x1521, 0x020000, "igb"),
        (0x1AF4, 0x1000, 0x020000, None),
    ]
    for port in range(1, 9):
        bridge = f"0000:00:{port:02x}.0"
        host.add_bridge(bridge, secondary_bus=port)
        for function in range(rng.randint(1, 4)):
            vendor, device, cls, driver = rng.choice(catalogue)
            host.add_device(
                f"0000:{port:02x}:00.{function}",
                vendor=vendor,
                device=device,
                class_code=cls,
                driver=driver,
                parent=bridge,
                subsystem=(rng.randrange(0x10000), rng.randrange(0x10000)),
                revision=rng.randrange(256),
                multifunction=True,
            )
    return host


@pytest.mark.parametrize("kind", ["rhel5", "kvm", "gpu", "random1", "random2"])
def test_list_agrees_with_lspci(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / kind
    if kind == "rhel5":
        build_rhel5_xen(base)
    elif kind == "kvm":
        build_kvm(base)
    elif kind == "gpu":
        build_gpu(base)
    else:
        random_tree(base, int(kind[-1]))
    theirs = lspci_records(base)
    ours = pcipass_devices(base, capsys)
    assert [d["address"] for d in ours] == sorted(theirs)
    for device in ours:
        record = theirs[str(device["address"])]
        class_name, class_code = split_name(record["Class"])
        assert class_code == str(device["class"])[:4]
        assert class_name == device["class_name"]
        vendor_name, vendor_id = split_name(record["Vendor"])
        assert vendor_id == device["vendor_id"]
        # lspci says "Vendor" for an id missing from pci.ids; pcipass gives null.
        assert (None if vendor_name == "Vendor" else vendor_name) == device["vendor_name"]
        device_name, device_id = split_name(record["Device"])
        assert device_id == device["device_id"]
        if device["device_name"] is not None:
            assert device_name == device["device_name"]
        assert record.get("Driver") == device["driver"]
        assert record.get("Rev", "00") == device["revision"]
        assert record.get("ProgIf", "00") == str(device["class"])[4:]
        if "SVendor" in record:
            assert split_name(record["SVendor"])[1] == device["subsystem_vendor_id"]
            assert split_name(record["SDevice"])[1] == device["subsystem_device_id"]
        group = record.get("IOMMUGroup")
        assert (int(group) if group is not None else None) == device["iommu_group"]
