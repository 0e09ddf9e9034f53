"""The example host with two GPUs (pcipass.testing.gpu_host): what it shows is what real
cards show, checked with lspci's own decoder and with ``pcipass rom``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.testing.config_builder import format_lspci_dump
from pcipass.testing.example import main as example_main
from pcipass.testing.harness import Lab


@pytest.mark.needs_tool("lspci")
def test_lspci_decodes_the_gpus_bars_and_capabilities(gpu: Lab, tmp_path: Path) -> None:
    dump = {
        name[5:]: (gpu.fake.path_of(name) / "config").read_bytes()
        for name in ("0000:01:00.0", "0000:02:00.0")
    }
    path = tmp_path / "dump"
    path.write_text(format_lspci_dump(dump))
    out = subprocess.run(
        ["lspci", "-F", str(path), "-vvv", "-nn"], capture_output=True, text=True, check=True
    ).stdout
    nvidia, amd = out.split("\n\n")[:2]
    assert "[10de:1f08]" in nvidia and "Subsystem: " in nvidia
    assert "Region 0: Memory at f6000000 (32-bit, non-prefetchable)" in nvidia
    assert "Region 1: Memory at e0000000 (64-bit, prefetchable)" in nvidia
    assert "Region 5: I/O ports at e000" in nvidia
    assert "Express (v2) Legacy Endpoint" in nvidia
    assert "Power Management version 3" in nvidia
    assert "[1002:67df]" in amd
    assert "Physical Resizable BAR" in amd
    assert "BAR 0: current size: 256MB" in amd


def test_the_functions_of_one_slot_share_one_group(gpu: Lab) -> None:
    group = gpu.fake.path_of("0000:01:00.0") / "iommu_group" / "devices"
    assert sorted(p.name for p in group.iterdir()) == [f"0000:01:00.{f}" for f in range(4)]


def test_rom_reads_both_images_on_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "demo"
    assert example_main([str(base), "--kind", "gpu"]) == 0
    capsys.readouterr()
    assert main(["--root", str(base), "rom", "01:00.0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uefi_x64"] and report["legacy"] and report["ok"]
    assert [i["matches_device"] for i in report["images"]] == [True, True]
    # The ROM is disabled again afterwards: sysfs shows nothing until "1" is written.
    assert (base / "sys/bus/pci/devices/0000:01:00.0/rom").read_bytes() == b""
    assert main(["--root", str(base), "rom", "02:00.0"]) == 0
    assert "boot GPU" in capsys.readouterr().out
