"""``attach --rom FILE`` / ``--rom-bar``: the ROM a guest sees, checked before it is written.

ROM images are built by pcipass.testing.rom_builder; the host is the gpu example
host, its TU106 hidden on vfio-pci; the guest win11 boots UEFI (OVMF)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import RefusedError
from pcipass.guests.libvirt_xml import hostdev_xml, parse_domain_xml
from pcipass.ops.attach_rom import check_rom
from pcipass.ops.hide import hide_now
from pcipass.ops.qemu_guest import find_qemu, qemu_live
from pcipass.testing.fakehost import snapshot
from pcipass.testing.fakeqmp import FakeQmp
from pcipass.testing.gpu_host import AMD, NVIDIA, POLARIS, TU106, build_gpu, gpu_rom
from pcipass.testing.harness import Lab
from pcipass.testing.rom_builder import rom_image
from pcipass.testing.tools import require_tool

WIN11 = "etc/libvirt/qemu/win11.xml"
VF = PciAddress.parse("0000:02:10.0")  # kvm example host: an igbvf 8086:1520


@pytest.fixture
def base(tmp_path: Path) -> Path:
    host = build_gpu(tmp_path / "h")
    host.mark_simulated()
    host.write_file("/etc/xen/xlguest.cfg", 'name = "xlguest"\ntype = "hvm"\nmemory = 2048\n')
    root = host.base
    assert main(["--root", str(root), "hide", "--now", "--all-functions", "01:00.0"]) == 0
    return root


def put(base: Path, path: str, data: bytes) -> None:
    target = base / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def run(base: Path, *args: str) -> int:
    return main(["--root", str(base), *args])


def test_a_matching_rom_goes_into_the_hostdev(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(base, "/usr/share/kvm/tu106.rom", gpu_rom(NVIDIA, TU106))
    capsys.readouterr()
    assert (
        run(base, "--json", "attach", "--rom", "/usr/share/kvm/tu106.rom", "01:00.0", "win11") == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["rom"] == {"rom_file": "/usr/share/kvm/tu106.rom"}
    assert [f for f in result["findings"] if f["rule"] == "PP121"] == []
    domain = parse_domain_xml((base / WIN11).read_bytes(), "win11.xml")
    assert [str(d.address) for d in domain.devices()] == ["0000:01:00.0"]
    assert "<rom file='/usr/share/kvm/tu106.rom'/>" in (base / WIN11).read_text()


def test_rom_bar_off_alone(base: Path) -> None:
    assert run(base, "attach", "--rom-bar", "off", "01:00.1", "win11") == 0
    assert "<rom bar='off'/>" in (base / WIN11).read_text()


def test_rom_file_and_bar_off_together_is_a_usage_error(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(base, "/usr/share/kvm/tu106.rom", gpu_rom(NVIDIA, TU106))
    before = snapshot(base)
    capsys.readouterr()
    args = ["attach", "--rom", "/usr/share/kvm/tu106.rom", "--rom-bar", "off", "01:00.0", "win11"]
    assert run(base, *args) == 2
    assert "would never be seen" in capsys.readouterr().err
    assert snapshot(base) == before


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (gpu_rom(AMD, POLARIS), "holds a ROM for 1002:67df, not for 0000:01:00.0 (10de:1f08)"),
        (b"\x55\xaa" + bytes(510), "is not an option ROM pcipass can read"),
        (b"MZ" + bytes(4094), "is not an option ROM pcipass can read"),
    ],
    ids=["another-device", "no-pcir", "not-a-rom"],
)
def test_a_rom_that_does_not_fit_is_refused_and_nothing_changes(
    base: Path, capsys: pytest.CaptureFixture[str], data: bytes, problem: str
) -> None:
    put(base, "/usr/share/kvm/bad.rom", data)
    before = snapshot(base)
    capsys.readouterr()
    assert run(base, "attach", "--rom", "/usr/share/kvm/bad.rom", "01:00.0", "win11") == 3
    err = capsys.readouterr().err
    assert "[PP121]" in err and problem in err
    assert "/usr/share/kvm/bad.rom" in err
    assert snapshot(base) == before


def test_a_missing_rom_is_refused(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(base)
    capsys.readouterr()
    assert run(base, "attach", "--rom", "/usr/share/kvm/none.rom", "01:00.0", "win11") == 3
    assert "[PP121]" in capsys.readouterr().err
    assert snapshot(base) == before


def test_a_rom_linked_out_of_the_root_is_refused(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside.rom"
    outside.write_bytes(gpu_rom(NVIDIA, TU106))
    (base / "usr/share/kvm").mkdir(parents=True, exist_ok=True)
    (base / "usr/share/kvm/link.rom").symlink_to(outside)
    before = snapshot(base)
    capsys.readouterr()
    assert run(base, "attach", "--rom", "/usr/share/kvm/link.rom", "01:00.0", "win11") == 3
    err = capsys.readouterr().err
    assert "[PP121]" in err and "cannot be read" in err and "link.rom" in err
    assert snapshot(base) == before


def test_legacy_only_rom_for_an_ovmf_guest_and_a_path_qemu_may_not_read_warn(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(base, "/root/legacy.rom", rom_image(NVIDIA, TU106))
    capsys.readouterr()
    assert run(base, "--json", "attach", "--rom", "/root/legacy.rom", "01:00.0", "win11") == 0
    result = json.loads(capsys.readouterr().out)
    messages = [f["message"] for f in result["findings"] if f["rule"] == "PP121"]
    assert len(messages) == 2
    assert "no x86-64 UEFI image" in messages[0]
    assert "outside /usr/share and /var/lib" in messages[1]
    assert "<rom file='/root/legacy.rom'/>" in (base / WIN11).read_text()


def test_xl_guests_have_no_rom_setting(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(base, "/usr/share/kvm/tu106.rom", gpu_rom(NVIDIA, TU106))
    before = snapshot(base)
    capsys.readouterr()
    assert run(base, "attach", "--rom", "/usr/share/kvm/tu106.rom", "01:00.0", "xlguest") == 2
    assert "xl and xm have no per-device ROM setting" in capsys.readouterr().err
    assert snapshot(base) == before


@pytest.mark.needs_tool("virt-xml-validate", "xmllint")
def test_the_rom_element_validates_against_libvirts_schema(base: Path, tmp_path: Path) -> None:
    put(base, "/usr/share/kvm/tu106.rom", gpu_rom(NVIDIA, TU106))
    assert run(base, "attach", "--rom", "/usr/share/kvm/tu106.rom", "01:00.0", "win11") == 0
    assert run(base, "attach", "--rom-bar", "off", "01:00.1", "win11") == 0
    program = require_tool("virt-xml-validate")
    done = subprocess.run(
        [program, str(base / WIN11), "domain"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_a_quote_in_the_rom_path_is_escaped() -> None:
    element = hostdev_xml(PciAddress.parse("01:00.0"), rom=("/usr/share/kvm/it's&<.rom", "on"))
    assert "<rom bar='on' file='/usr/share/kvm/it&apos;s&amp;&lt;.rom'/>" in element


# --- a plain QEMU through QMP: vfio-pci's romfile and rombar -----------------------------


@pytest.fixture
def qmp(kvm: Lab) -> Iterator[FakeQmp]:
    run_dir = kvm.base / "run"
    run_dir.mkdir(exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fake = FakeQmp(Path(f"/proc/self/fd/{fd}/l2.qmp"))
    finally:
        os.close(fd)
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "l2", "-qmp", "unix:/run/l2.qmp,server,nowait"]
    kvm.fake.write_file("/proc/4242/cmdline", "\0".join(argv) + "\0")
    hide_now(kvm.host, [VF], Backend.VFIO)
    yield fake
    fake.close()


def test_qmp_device_add_carries_romfile_and_rombar(kvm: Lab, qmp: FakeQmp) -> None:
    kvm.fake.write_file("/usr/share/kvm/vf.rom", rom_image(0x8086, 0x1520, code_type=3))
    qemu = find_qemu(kvm.host, "l2")
    assert qemu is not None
    choice = check_rom(kvm.host, VF, "/usr/share/kvm/vf.rom", "on", uefi_guest=False)
    result = qemu_live(kvm.host, qemu, VF, "attach", timeout=0.5, rom=choice)
    assert result.outcome == "hot-plugged"
    added = [c["arguments"] for c in qmp.commands if c.get("execute") == "device_add"]
    assert added == [
        {
            "driver": "vfio-pci",
            "host": str(VF),
            "id": added[0]["id"],
            "romfile": "/usr/share/kvm/vf.rom",
            "rombar": 1,
        }
    ]


def test_qmp_with_a_rom_for_another_device_sends_nothing(kvm: Lab, qmp: FakeQmp) -> None:
    kvm.fake.write_file("/usr/share/kvm/gpu.rom", gpu_rom(NVIDIA, TU106))
    qemu = find_qemu(kvm.host, "l2")
    assert qemu is not None
    choice = check_rom(kvm.host, VF, "/usr/share/kvm/gpu.rom", None, uefi_guest=False)
    with pytest.raises(RefusedError) as refused:
        qemu_live(kvm.host, qemu, VF, "attach", timeout=0.5, rom=choice)
    assert refused.value.rule == "PP121" and "10de:1f08" in refused.value.problem
    assert [c for c in qmp.commands if c.get("execute") == "device_add"] == []
