"""Option ROMs: real images built byte by byte, read through the fake kernel's rom attribute."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.errors import DeviceNotFoundError, ExitCode, OperationFailed, SysfsWriteError
from pcipass.host.rom import (
    MAX_IMAGES,
    MAX_ROM_BYTES,
    RomAbsentError,
    RomFormatError,
    RomUnreadableError,
    parse_rom,
    read_rom,
)
from pcipass.host.sysfs import Sysfs
from pcipass.ops.rom import BOOT_VGA_NOTE, rom_report
from pcipass.testing.fakehost import FakeHost, snapshot
from pcipass.testing.harness import Lab, make_lab
from pcipass.testing.rom_builder import chain, rom_image

GPU = "0000:01:00.0"
NVIDIA, GTX1080 = 0x10DE, 0x1B80
LEGACY = rom_image(NVIDIA, GTX1080, blocks=4)
EFI_X64 = rom_image(NVIDIA, GTX1080, code_type=3, blocks=2, compressed=True)
LEGACY_AND_EFI = chain(LEGACY, EFI_X64)
ROM_PATH = f"sys/bus/pci/devices/{GPU}/rom"


def gpu_host(tmp_path: Path, rom: bytes | None, *, simulated: bool = False) -> Lab:
    fake = FakeHost(tmp_path / "host")
    fake.add_device(GPU, vendor=NVIDIA, device=GTX1080, class_code=0x030000, rom=rom)
    if simulated:
        fake.mark_simulated()
    return make_lab(fake)


def rom_writes(lab: Lab) -> list[tuple[str, str]]:
    return [(p, v) for p, v in lab.kernel.writes if p.endswith("/rom")]


def rom_disabled(lab: Lab) -> bool:
    # The fake kernel shows the ROM in the file only while reading is enabled.
    return (lab.base / ROM_PATH).read_bytes() == b""


# --- parsing ---------------------------------------------------------------------------------


def test_legacy_image_parsed_with_checksum() -> None:
    contents = parse_rom(LEGACY)
    (image,) = contents.images
    assert (image.vendor, image.device, image.code_type, image.length) == (
        NVIDIA,
        GTX1080,
        0,
        2048,
    )
    assert image.checksum_ok is True and image.last and image.problems == ()
    assert image.class_code == 0x030000 and image.pcir_revision == 3
    assert contents.has_legacy and not contents.has_uefi and contents.problems == ()


def test_legacy_and_efi_chained_by_the_indicator_bit() -> None:
    contents = parse_rom(LEGACY_AND_EFI)
    legacy, efi = contents.images
    assert not legacy.last and efi.last and efi.offset == len(LEGACY)
    assert efi.code_type_name == "UEFI" and efi.checksum_ok is None
    assert efi.efi is not None and efi.efi.machine_name == "x64" and efi.efi.compression == 1
    assert efi.efi.to_json()["subsystem"] == "boot service driver"
    assert contents.has_legacy and contents.uefi_x64 and contents.problems == ()


def test_walk_stops_at_the_last_image_and_ignores_padding_after_it() -> None:
    padded = LEGACY + b"\xff" * 4096  # a ROM BAR larger than its images
    assert len(parse_rom(padded).images) == 1 and parse_rom(padded).problems == ()


def test_bad_checksum_is_reported_on_the_image() -> None:
    (image,) = parse_rom(rom_image(NVIDIA, GTX1080, good_checksum=False)).images
    assert image.checksum_ok is False
    assert image.problems == ("legacy image checksum is wrong (the BIOS will skip it)",)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00" + LEGACY[2:], "image at 0x0: no 0x55AA signature (found 0x0000)"),
        (LEGACY[:0x1C] + b"PCIX" + LEGACY[0x20:], "image at 0x0: no PCIR signature at 0x1c"),
        (LEGACY[:20], "image at 0x0: truncated (20 bytes, a ROM header needs 26)"),
        (b"", "empty (0 bytes)"),
        (
            LEGACY[:0x18] + struct.pack("<H", 0xFFF0) + LEGACY[0x1A:],
            "image at 0x0: PCI Data Structure pointer 0xfff0 is outside it",
        ),
    ],
)
def test_unparseable_roms_raise_the_documented_error(data: bytes, problem: str) -> None:
    with pytest.raises(RomFormatError) as raised:
        parse_rom(data, "0000:01:00.0 option ROM")
    assert raised.value.subject == "0000:01:00.0 option ROM"
    assert raised.value.problem == problem
    assert raised.value.exit_code is ExitCode.FAILED


def test_truncated_image_is_kept_with_its_problem() -> None:
    contents = parse_rom(LEGACY[:1024])
    (image,) = contents.images
    assert "truncated: 2048 bytes declared, 1024 present" in image.problems
    assert "legacy image: initialization size runs past the data" in image.problems


def test_second_image_broken_keeps_the_first() -> None:
    data = LEGACY_AND_EFI[: len(LEGACY)] + b"\x55\xab" + LEGACY_AND_EFI[len(LEGACY) + 2 :]
    contents = parse_rom(data)
    assert len(contents.images) == 1
    assert contents.problems == ("image at 0x800: no 0x55AA signature (found 0x55AB)",)


def test_device_list_of_a_revision_3_structure_matches() -> None:
    (image,) = parse_rom(rom_image(NVIDIA, 0x1B81, device_list=[0x1B80, 0x1B82])).images
    assert image.device_list == (0x1B80, 0x1B82)
    assert image.matches(NVIDIA, GTX1080) and not image.matches(NVIDIA, 0x1B83)
    assert not image.matches(0x1002, GTX1080)


def test_hostile_chain_of_many_images_is_bounded() -> None:
    data = b"".join(rom_image(NVIDIA, GTX1080, blocks=1, last=False) for _ in range(100))
    contents = parse_rom(data)
    assert len(contents.images) == MAX_IMAGES
    assert contents.problems == (
        f"more than {MAX_IMAGES} images: the chain was not followed further",
    )


def test_image_of_length_zero_does_not_loop() -> None:
    bad = bytearray(LEGACY)
    struct.pack_into("<H", bad, 0x1C + 0x10, 0)
    with pytest.raises(RomFormatError, match="image length 0"):
        parse_rom(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_anything_but_rom_format_error(data: bytes) -> None:
    try:
        contents = parse_rom(data)
    except RomFormatError:
        return
    assert contents.images and contents.size == len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(LEGACY_AND_EFI) - 1), st.integers(0, 255))))
def test_mutated_real_roms_never_raise_anything_but_rom_format_error(
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(LEGACY_AND_EFI)
    for at, value in flips:
        data[at] = value
    try:
        contents = parse_rom(bytes(data))
    except RomFormatError:
        return
    for image in contents.images:
        image.to_json()


# --- reading through sysfs -------------------------------------------------------------------


def test_fake_kernel_shows_the_rom_only_while_enabled(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    path = lab.base / ROM_PATH
    assert path.read_bytes() == b""
    lab.host.sysfs.write_attr(path, "1\n")
    assert path.read_bytes() == LEGACY
    lab.host.sysfs.write_attr(path, "0")  # one byte: the kernel enables, it does not disable
    assert path.read_bytes() == LEGACY
    lab.host.sysfs.write_attr(path, "0\n")
    assert path.read_bytes() == b""


def test_read_enables_reads_and_disables(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY_AND_EFI)
    assert read_rom(lab.host, PciAddress.parse(GPU)) == LEGACY_AND_EFI
    assert rom_writes(lab) == [(f"/{ROM_PATH}", "1\n"), (f"/{ROM_PATH}", "0\n")]
    assert rom_disabled(lab)


def test_absent_rom_is_not_found_and_writes_nothing(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, None)
    with pytest.raises(RomAbsentError) as raised:
        read_rom(lab.host, PciAddress.parse(GPU))
    assert raised.value.exit_code is ExitCode.NOT_FOUND
    assert "has no option ROM" in raised.value.problem
    assert lab.kernel.writes == []


def test_empty_rom_is_unreadable_and_disabled_again(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, b"")
    with pytest.raises(RomUnreadableError, match="the kernel returned no bytes"):
        read_rom(lab.host, PciAddress.parse(GPU))
    assert rom_writes(lab)[-1] == (f"/{ROM_PATH}", "0\n")


def test_enable_refused_by_the_kernel(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    lab.kernel.fail(f"*/{GPU}/rom", value="1\n")
    with pytest.raises(SysfsWriteError):
        read_rom(lab.host, PciAddress.parse(GPU))
    assert rom_disabled(lab) and rom_writes(lab)[-1] == (f"/{ROM_PATH}", "0\n")


@pytest.mark.parametrize("step", ["after-enable", "size", "read"])
def test_interrupted_at_every_step_leaves_the_rom_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    lab = gpu_host(tmp_path, LEGACY)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    if step == "after-enable":
        # The signal lands after the kernel enabled reading, before write_attr returns.
        lab.kernel.on_written = lambda path, value: interrupt() if value == "1\n" else None
    elif step == "size":
        monkeypatch.setattr(Sysfs, "size", staticmethod(interrupt))
    else:
        monkeypatch.setattr(Sysfs, "read_bytes", staticmethod(interrupt))
    with pytest.raises(KeyboardInterrupt):
        read_rom(lab.host, PciAddress.parse(GPU))
    assert rom_disabled(lab)
    assert rom_writes(lab)[-1] == (f"/{ROM_PATH}", "0\n")


def test_huge_rom_attribute_read_is_capped_at_16_mib(tmp_path: Path) -> None:
    huge = LEGACY + b"\xff" * (MAX_ROM_BYTES + 4096 - len(LEGACY))
    lab = gpu_host(tmp_path, huge)
    data = read_rom(lab.host, PciAddress.parse(GPU))
    assert len(data) == MAX_ROM_BYTES and data.startswith(LEGACY)
    assert rom_disabled(lab)


# --- the operation ---------------------------------------------------------------------------


def test_report_legacy_and_uefi(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY_AND_EFI)
    report = rom_report(lab.host, PciAddress.parse(GPU))
    assert report.ok and report.firmware == "UEFI (OVMF) and legacy BIOS (SeaBIOS) guests"
    text = report.render()
    assert "image 1 at 0x0: legacy x86 (PC-AT BIOS), 2048 bytes, for 10de:1b80 (matches)" in text
    assert "checksum ok" in text and "x64, compressed" in text


def test_report_legacy_only_says_ovmf_cannot_use_it(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    report = rom_report(lab.host, PciAddress.parse(GPU))
    assert report.ok  # a legacy-only ROM is not broken, but the user is told plainly
    assert report.firmware.startswith("legacy BIOS (SeaBIOS) guests only: no UEFI image")


def test_report_efi_only(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, EFI_X64)
    report = rom_report(lab.host, PciAddress.parse(GPU))
    assert report.firmware == "UEFI (OVMF) guests only: no legacy x86 image for SeaBIOS"


def test_report_efi_for_another_machine(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, rom_image(NVIDIA, GTX1080, code_type=3, machine=0xAA64))
    report = rom_report(lab.host, PciAddress.parse(GPU))
    assert report.problems == ["no UEFI image an x86-64 OVMF guest can run"]
    assert "UEFI image for AArch64 only" in report.firmware


def test_report_vendor_mismatch(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, rom_image(0x1002, 0x67DF))
    report = rom_report(lab.host, PciAddress.parse(GPU))
    assert not report.ok
    assert report.problems == [
        "no image is for this device (10de:1b80; the ROM is for 1002:67df): "
        "the guest driver may refuse it"
    ]
    assert "for 1002:67df (MISMATCH)" in report.render()


def test_report_unknown_device(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    with pytest.raises(DeviceNotFoundError):
        rom_report(lab.host, PciAddress.parse("0000:02:00.0"))
    assert lab.kernel.writes == []


# --- the command line ------------------------------------------------------------------------


def run_cli(lab: Lab, *args: str) -> int:
    return main(["--root", str(lab.base), *args])


def test_cli_prints_images_and_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = gpu_host(tmp_path, LEGACY_AND_EFI, simulated=True)
    assert run_cli(lab, "rom", GPU) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{GPU}  option ROM, 3072 bytes\n")
    assert "usable by: UEFI (OVMF) and legacy BIOS (SeaBIOS) guests" in out
    assert rom_disabled(lab)


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    assert run_cli(lab, "rom", GPU, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["legacy"] is True and data["uefi"] is False and data["ok"] is True
    assert data["images"][0]["matches_device"] is True
    assert data["images"][0]["checksum_ok"] is True


def without_simulated_banner(err: str) -> str:
    """stderr without the first line every command prints on a simulated example host."""
    first, _, rest = err.partition("\n")
    return rest if first.startswith("pcipass: simulated kernel:") else err


def test_cli_corrupt_rom_exit_1_and_nothing_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = gpu_host(tmp_path, b"\xff" * 2048, simulated=True)
    before = snapshot(lab.base)
    assert run_cli(lab, "rom", GPU, "--save", "/root/gpu.rom") == 1
    err = capsys.readouterr().err
    assert without_simulated_banner(err).startswith(
        f"pcipass: {GPU} option ROM: image at 0x0: no 0x55AA signature"
    )
    assert snapshot(lab.base) == before


def test_cli_absent_rom_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = gpu_host(tmp_path, None, simulated=True)
    assert run_cli(lab, "rom", GPU) == 4
    assert without_simulated_banner(capsys.readouterr().err) == (
        f"pcipass: {GPU}: has no option ROM (no rom attribute in sysfs: the device has no "
        "ROM BAR) (nothing to read; a guest needs no romfile= for it)\n"
    )


def test_cli_save_writes_the_rom_inside_the_root(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY_AND_EFI, simulated=True)
    assert run_cli(lab, "rom", GPU, "--save", "/var/lib/libvirt/gpu.rom") == 0
    saved = lab.base / "var/lib/libvirt/gpu.rom"
    assert saved.read_bytes() == LEGACY_AND_EFI
    assert os.stat(saved).st_mode & 0o777 == 0o644
    assert [p.name for p in saved.parent.iterdir()] == ["gpu.rom"]  # no temp file left


def test_cli_save_through_a_symlink_out_of_the_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (lab.base / "srv").mkdir()
    os.symlink(outside, lab.base / "srv" / "roms")
    before = snapshot(lab.base)
    assert run_cli(lab, "rom", GPU, "--save", "/srv/roms/gpu.rom") == 2
    err = capsys.readouterr().err
    assert without_simulated_banner(err).startswith(
        "pcipass: --save /srv/roms/gpu.rom: leads out of the root"
    )
    assert list(outside.iterdir()) == []
    assert snapshot(lab.base) == before  # the ROM was not even enabled


def test_cli_save_final_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, lab.base / "gpu.rom")
    assert run_cli(lab, "rom", GPU, "--save", "/gpu.rom") == 2
    assert victim.read_bytes() == b"keep" and (lab.base / "gpu.rom").is_symlink()


@pytest.mark.parametrize("target", ["/sys/bus/pci/devices/0000:01:00.0/rom", "/proc/x", "/dev"])
def test_cli_save_into_kernel_trees_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    before = snapshot(lab.base)
    assert run_cli(lab, "rom", GPU, "--save", target) == 2
    assert "is under /" in capsys.readouterr().err
    assert snapshot(lab.base) == before


def test_cli_save_symlink_into_sys_is_refused(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    os.symlink(lab.base / "sys/bus/pci/devices", lab.base / "devices")
    before = snapshot(lab.base)
    assert run_cli(lab, "rom", GPU, "--save", f"/devices/{GPU}/rom") == 2
    assert snapshot(lab.base) == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=1, max_size=2048))
def test_cli_random_rom_never_tracebacks(tmp_path: Path, data: bytes) -> None:
    base = tmp_path / "h"
    if not base.exists():
        lab = gpu_host(base, data, simulated=True)
    else:
        lab = make_lab(FakeHost.load(base / "host"))
        lab.fake.set_rom(GPU, data)
    assert run_cli(lab, "rom", GPU) in (0, 1)


def test_not_root_is_told_plainly(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    lab.kernel.fail(f"*/{GPU}/rom", errno.EACCES, value="1\n")
    with pytest.raises(OperationFailed) as raised:
        read_rom(lab.host, PciAddress.parse(GPU))
    assert raised.value.render() == (
        f"{GPU}: reading the option ROM needs root (the rom attribute is mode 0600) "
        "(run pcipass rom as root)"
    )


def test_disable_refused_is_an_error_not_silence(tmp_path: Path) -> None:
    lab = gpu_host(tmp_path, LEGACY)
    lab.kernel.fail(f"*/{GPU}/rom", value="0\n")
    with pytest.raises(SysfsWriteError):
        read_rom(lab.host, PciAddress.parse(GPU))


def test_boot_gpu_rom_may_be_the_shadow_copy(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path / "host")
    fake.add_device(
        GPU, vendor=NVIDIA, device=GTX1080, class_code=0x030000, boot_vga=True, rom=LEGACY
    )
    report = rom_report(make_lab(fake).host, PciAddress.parse(GPU))
    assert report.ok and report.notes == [BOOT_VGA_NOTE]
    assert "  note: this is the boot GPU: the kernel may have returned" in report.render()
    assert report.to_json()["notes"] == [BOOT_VGA_NOTE]


def test_cli_save_unwritable_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = gpu_host(tmp_path, LEGACY, simulated=True)
    (lab.base / "srv").write_text("a file, not a directory\n")
    assert run_cli(lab, "rom", GPU, "--save", "/srv/gpu.rom") == 1
    err = without_simulated_banner(capsys.readouterr().err)
    assert err.startswith("pcipass: /srv/gpu.rom: cannot write the ROM: ")
    assert err.endswith("(choose another --save FILE; nothing was written)\n")
    assert err.count("\n") == 1 and rom_disabled(lab)
