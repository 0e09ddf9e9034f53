"""#16 item 4: ``pcipass check --next-boot`` says which driver claims each device at the
next boot, and why.

Fake trees (testing/example.py) get a kernel's module index derived from the fake
kernel's own driver table (testing/bootfiles.py), grub.cfg / BLS entries, and real
initramfs images (cpio newc, gzip/xz, an early microcode archive in front).  The
modprobe reader is held against real kmod (``modprobe -c``) on the same tree.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.host.initramfs import CannotRead, module_names, read_archives
from pcipass.host.root import HostRoot
from pcipass.persist.modprobe.effective import read_module_config, showconfig
from pcipass.persist.modprobe.installed import MODPROBE_DIRS, collect_modprobe_files
from pcipass.testing.bootfiles import initramfs_image, newc, write_module_index
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

KVM_RELEASE = "6.1.0-26-amd64"
RHEL5_RELEASE = "2.6.18-164.el5xen"
GPU, AUDIO = "0000:01:00.0", "0000:01:00.1"
VF0, VF4 = "0000:02:10.0", "0000:02:10.4"
NVME = "0000:04:00.0"
UPLINK, NIC = "0000:05:00.0", "0000:09:00.0"  # rhel5: bnx2, the uplink carries the route


@pytest.fixture(autouse=True)
def simulated(request: pytest.FixtureRequest) -> None:
    for name in ("rhel5", "kvm"):
        if name in request.fixturenames:
            lab: Lab = request.getfixturevalue(name)
            lab.fake.mark_simulated()
            release = RHEL5_RELEASE if name == "rhel5" else KVM_RELEASE
            write_module_index(lab.fake, release)


def forecast(lab: Lab, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["--root", str(lab.base), "--json", "check", "--next-boot", *args])
    return code, json.loads(capsys.readouterr().out)


def drivers(doc: Any) -> dict[str, str | None]:
    return {d["address"]: d["driver"] for d in doc["next_boot"]["devices"]}


def device(doc: Any, address: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["next_boot"]["devices"] if d["address"] == address)
    return found


def rules(doc: Any, rule: str, subject: str | None = None) -> list[dict[str, Any]]:
    return [
        f
        for f in doc["findings"]
        if f["rule"] == rule and (subject is None or f["subject"] == subject)
    ]


VFIO_GPU = "options vfio-pci ids=10de:1b80,10de:0fb9\nsoftdep nouveau pre: vfio-pci\n" + (
    "softdep snd_hda_intel pre: vfio-pci\n"
)


# --- the modprobe reader against real kmod ------------------------------------------

KMOD_TREE = {
    "/etc/modprobe.d/10-vfio.conf": "options vfio_pci ids=10de:1b80 disable_vga=1\n"
    "softdep nouveau pre: vfio-pci\n"
    "# a comment; options igb max_vfs=99\n"
    "options vfio-pci \\\n  ids=10de:0fb9\n",
    "/etc/modprobe.d/20-xen.conf": "alias pciback xen-pciback\n"
    "options pciback hide=(0000:09:00.0)(0000:0a:04.1)\n"
    "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --ignore-install bnx2\n"
    "install bnx2 /bin/true\n",
    "/etc/modprobe.d/blacklist.conf": "blacklist nouveau\nblacklist snd-hda-intel\n",
    "/etc/modprobe.d/notes.txt": "options igb max_vfs=1\n",  # not *.conf: kmod ignores it
    "/lib/modprobe.d/10-vfio.conf": "options igb max_vfs=2\n",  # hidden by /etc's 10-vfio
    "/lib/modprobe.d/50-igb.conf": "options igb max_vfs=7\nsoftdep igb pre: vfio_pci\n",
}
KMOD_MODULES = {"vfio_pci", "nouveau", "pciback", "xen_pciback", "bnx2", "snd_hda_intel", "igb"}


def _kmod_lines(text: str) -> list[str]:
    """``modprobe -c``'s configuration part, options split one parameter a line, module
    names as kmod compares them, only for the modules of the test tree (kmod adds the
    options of this machine's own /proc/cmdline)."""
    lines = []
    for line in text.split("# End of configuration files", 1)[0].splitlines():
        words = line.split()
        if len(words) < 2 or words[1].replace("-", "_") not in KMOD_MODULES:
            continue
        if words[0] == "options":
            lines += [f"options {words[1]} {w}" for w in words[2:]]
        elif words[0] == "softdep":
            lines.append(
                "softdep " + words[1] + " pre: " + " ".join(w.replace("-", "_") for w in words[3:])
            )
        else:
            lines.append(line)
    return lines


@pytest.mark.needs_tool("modprobe")
def test_the_modprobe_reader_agrees_with_real_kmod(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for path, text in KMOD_TREE.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    (root / "lib/modules/9.9.9").mkdir(parents=True)
    config = read_module_config(collect_modprobe_files(HostRoot.at(root)))
    dirs = [f"-C{root}{d}" for d in MODPROBE_DIRS if (root / d.lstrip("/")).is_dir()]
    kmod = subprocess.run(
        ["modprobe", "-c", *dirs, "-d", str(root), "-S", "9.9.9"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert showconfig(config) == _kmod_lines(kmod.stdout)
    # What the forecast relies on: the first install line, the last value of a parameter.
    assert config.install["bnx2"].value.startswith("/sbin/modprobe pciback")
    assert config.param("vfio_pci", "ids") is not None
    assert config.param("vfio_pci", "ids").value == "10de:0fb9"  # type: ignore[union-attr]
    assert config.param("xen_pciback", "hide") is not None  # written for the alias name
    assert config.param("igb", "max_vfs").value == "7"  # type: ignore[union-attr]


# --- the forecast: modprobe configuration -------------------------------------------


def test_every_device_gets_its_driver_from_the_module_index(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = forecast(kvm, capsys)
    assert code == 0
    got = drivers(doc)
    assert got[NVME] == "nvme" and got["0000:03:00.0"] == "e1000e"
    # i2c-i801 registers the driver i801_smbus: the name sysfs shows is the one forecast.
    assert got["0000:00:1f.3"] == "i801_smbus"
    assert device(doc, NVME)["stage"] == "root"
    assert doc["next_boot"]["kernel"]["release"] == KVM_RELEASE


def test_a_softdep_and_ids_hand_the_gpu_to_vfio_and_the_chain_is_shown(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", VFIO_GPU)
    _, doc = forecast(kvm, capsys)
    gpu = device(doc, GPU)
    assert gpu["driver"] == "vfio-pci" and drivers(doc)[AUDIO] == "vfio-pci"
    chain = " ".join(gpu["evidence"])
    assert "softdep nouveau pre: vfio_pci (/etc/modprobe.d/vfio.conf:2)" in chain
    assert "ids=10de:1b80,10de:0fb9 (/etc/modprobe.d/vfio.conf:1)" in chain
    # pcipass's ledger did not ask for it: said, not refused.
    assert [f["severity"] for f in rules(doc, "PP111", GPU)] == ["info"]


def test_ids_without_an_ordering_line_lose_the_race(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """vfio-pci's ids= is read when vfio-pci loads; nothing loads it before nouveau."""
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", "options vfio-pci ids=10de:1b80\n")
    _, doc = forecast(kvm, capsys)
    assert drivers(doc)[GPU] == "nouveau"


def test_blacklist_and_install_true_leave_a_device_without_a_driver(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file(
        "/etc/modprobe.d/off.conf", "blacklist nouveau\ninstall snd_hda_intel /bin/true\n"
    )
    _, doc = forecast(kvm, capsys)
    assert drivers(doc)[GPU] is None and drivers(doc)[AUDIO] is None
    assert "blacklist nouveau (/etc/modprobe.d/off.conf:1)" in " ".join(
        device(doc, GPU)["evidence"]
    )
    assert "never loads snd_hda_intel" in " ".join(device(doc, AUDIO)["evidence"])


def test_a_driverctl_override_decides(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    kvm.fake.write_file(f"/etc/driverctl.d/pci-{GPU}", "vfio-pci\n")
    _, doc = forecast(kvm, capsys)
    assert device(doc, GPU)["driver"] == "vfio-pci"
    assert device(doc, GPU)["stage"] == "driverctl"


def test_a_built_in_driver_beats_a_stub_module(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    write_module_index(kvm.fake, KVM_RELEASE, builtin=["e1000e"])
    kvm.fake.write_file(
        "/etc/modprobe.d/vfio.conf",
        "options vfio-pci ids=8086:10d3\nsoftdep e1000e pre: vfio-pci\n",
    )
    _, doc = forecast(kvm, capsys)
    nic = device(doc, "0000:03:00.0")
    assert (nic["driver"], nic["stage"]) == ("e1000e", "built-in")
    assert "before any module" in nic["evidence"][0]


def test_a_pcie_root_port_stays_on_the_built_in_port_driver(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # pcieport is a bool Kconfig option: in no module index, yet it binds every
    # PCIe port at kernel start (the KVM lab's root port showed the gap).
    _, doc = forecast(kvm, capsys)
    port = device(doc, "0000:00:1c.0")
    assert (port["driver"], port["stage"]) == ("pcieport", "built-in")
    assert "CONFIG_PCIEPORTBUS" in port["evidence"][0]
    host_bridge = device(doc, "0000:00:00.0")  # no driver now, none at boot
    assert host_bridge["driver"] is None


# --- host-used devices and collisions -----------------------------------------------


def test_a_hand_written_hide_of_the_uplink_is_refused_and_nothing_changes(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The document's lines with the wrong address: the host's own NIC goes to pciback."""
    rhel5.fake.write_file(
        "/etc/modprobe.conf",
        "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2\n"
        f"options pciback hide=({UPLINK})\n",
    )
    before = snapshot(rhel5.base)
    code, doc = forecast(rhel5, capsys)
    assert code == 3
    assert drivers(doc)[UPLINK] == "pciback" and drivers(doc)[NIC] == "bnx2"
    (refusal,) = rules(doc, "PP110", UPLINK)
    assert refusal["severity"] == "refuse" and "default route" in refusal["message"]
    assert snapshot(rhel5.base) == before


def test_an_ids_entry_that_also_takes_an_identical_vf_is_a_collision(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(kvm.base), "hide", "--persist", "--backend", "vfio", VF0]) in (0, 1)
    _, doc = forecast(kvm, capsys)
    collisions = doc["next_boot"]["collisions"]
    assert any(set(c["devices"]) == {VF0, VF4} for c in collisions), collisions
    (warn,) = [f for f in rules(doc, "PP110") if f["subject"].startswith("vfio-pci ids=")]
    assert VF4 in warn["message"] and warn["severity"] == "warn"


def test_an_ids_entry_matching_the_root_disk_is_refused(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file(
        "/etc/modprobe.d/vfio.conf", "options vfio-pci ids=144d:a808\nsoftdep nvme pre: vfio-pci\n"
    )
    code, doc = forecast(kvm, capsys)
    assert code == 3
    (refusal,) = rules(doc, "PP110", NVME)
    assert refusal["severity"] == "refuse" and "/" in refusal["message"]


def test_the_ledger_and_the_forecast_agree_after_hide_persist(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(rhel5.base), "hide", "--persist", NIC]) == 0
    code, doc = forecast(rhel5, capsys)
    nic = device(doc, NIC)
    assert (nic["driver"], nic["asked"]) == ("pciback", "pciback")
    assert drivers(doc)[UPLINK] == "bnx2"
    assert not rules(doc, "PP111", NIC) and not rules(doc, "PP110") and code == 0


def test_a_hide_pcipass_recorded_but_someone_removed_is_drift(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(rhel5.base), "hide", "--persist", NIC]) == 0
    rhel5.fake.write_file(
        "/etc/modprobe.conf", "alias eth0 bnx2\nalias eth1 bnx2\n"
    )  # an administrator's restore of an old file
    code, doc = forecast(rhel5, capsys)
    (drift,) = rules(doc, "PP111", NIC)
    assert drift["severity"] == "warn" and "bnx2" in drift["message"] and code == 1


# --- the initramfs ------------------------------------------------------------------


def test_an_initramfs_not_regenerated_after_hide_persist_keeps_the_gpu_on_nouveau(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image was built before the vfio lines: nouveau is in it, its config is not."""
    image = initramfs_image(["nvme", "ahci", "nouveau"], {}, KVM_RELEASE)
    kvm.fake.write_file(f"/boot/initrd.img-{KVM_RELEASE}", image)
    argv = ["--root", str(kvm.base), "hide", "--persist", "--backend", "vfio", GPU, AUDIO]
    assert main(argv) in (0, 1)
    _, doc = forecast(kvm, capsys, GPU)
    gpu = device(doc, GPU)
    assert (gpu["driver"], gpu["stage"], gpu["asked"]) == ("nouveau", "initramfs", "vfio-pci")
    assert rules(doc, "PP111", GPU)[0]["severity"] == "warn"
    initramfs = doc["next_boot"]["initramfs"]
    assert initramfs["how"] == "read as cpio + gzip" and "nouveau" in initramfs["modules"]
    # Regenerated with the configuration (what update-initramfs copies in): vfio-pci.
    written = (kvm.base / "etc/modprobe.d").iterdir()
    config = {f"/etc/modprobe.d/{p.name}": p.read_text() for p in written}
    image = initramfs_image(["nvme", "ahci", "nouveau", "vfio-pci"], config, KVM_RELEASE)
    kvm.fake.write_file(f"/boot/initrd.img-{KVM_RELEASE}", image)
    _, doc = forecast(kvm, capsys, GPU)
    assert (device(doc, GPU)["driver"], device(doc, GPU)["stage"]) == ("vfio-pci", "initramfs")
    assert not rules(doc, "PP111", GPU)


@pytest.mark.needs_tool("cpio")
def test_a_gzip_image_made_by_real_cpio_is_read(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc/modprobe.d").mkdir(parents=True)
    (tree / "etc/modprobe.d/vfio.conf").write_text("options vfio-pci ids=10de:1b80\n")
    mods = tree / f"lib/modules/{KVM_RELEASE}/kernel/drivers"
    mods.mkdir(parents=True)
    for name in ("vfio-pci.ko", "nvme.ko.xz", "e1000e.ko.zst"):
        (mods / name).write_bytes(b"\x7fELF")
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=tree,
        input="\n".join(names).encode(),
        capture_output=True,
        check=True,
    ).stdout
    for packed, formats in (
        (gzip.compress(archive), ["gzip", "cpio"]),
        (lzma.compress(archive), ["xz", "cpio"]),
    ):
        stream = (tmp_path / "image").open("w+b")
        stream.write(newc({"kernel/x86/microcode/AuthenticAMD.bin": b"x"}) + b"\0" * 300 + packed)
        stream.seek(0)
        contents = read_archives(stream)
        stream.close()
        assert contents.formats == ["cpio", *formats]
        assert module_names(contents.names) == {"vfio_pci", "nvme", "e1000e"}
        assert contents.config == {"/etc/modprobe.d/vfio.conf": b"options vfio-pci ids=10de:1b80\n"}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x28\xb5\x2f\xfd" + b"\0" * 64, "zstd-compressed"),
        (b"\x04\x22\x4d\x18" + b"\0" * 64, "lz4-compressed"),
        (gzip.compress(b"070701" + b"0" * 40), "truncated"),
        (b"\x1f\x8b\x08\x00garbage-that-is-no-deflate-stream", "corrupt"),
        (b"MZ\x90\x00 a PE file", "unknown format"),
    ],
)
def test_an_image_that_cannot_be_read_says_why(data: bytes, why: str, tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(data)
    with path.open("rb") as stream, pytest.raises(CannotRead) as raised:
        read_archives(stream)
    assert why in str(raised.value)


def test_a_zstd_initramfs_is_reported_unreadable_not_guessed(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file(f"/boot/initrd.img-{KVM_RELEASE}", b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    _, doc = forecast(kvm, capsys)
    initramfs = doc["next_boot"]["initramfs"]
    assert not initramfs["readable"] and "zstd" in initramfs["note"]
    assert "standard library" in initramfs["note"]
    assert drivers(doc)[NVME] == "nvme"  # the root stage still decides


# --- which kernel, which command line -----------------------------------------------

GRUB_CFG = """\
set default="1>0"
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {
	linux	/vmlinuz-6.1.0-26-amd64 root=/dev/nvme0n1p2 ro quiet
	initrd	/initrd.img-6.1.0-26-amd64
}
submenu 'Advanced options' $menuentry_id_option 'gnulinux-advanced-x' {
	menuentry 'Debian, with Linux 6.1.0-27-amd64' $menuentry_id_option 'gnulinux-6.1.0-27' {
		linux	/vmlinuz-6.1.0-27-amd64 root=/dev/nvme0n1p2 ro quiet vfio-pci.ids=10de:1b80
		initrd	/initrd.img-6.1.0-27-amd64
	}
}
"""


def test_the_default_grub_entry_chooses_the_kernel_and_its_command_line(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file("/boot/grub/grub.cfg", GRUB_CFG)
    write_module_index(kvm.fake, "6.1.0-27-amd64", without=["nouveau"])
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", "softdep snd_hda_intel pre: vfio-pci\n")
    _, doc = forecast(kvm, capsys)
    boot = doc["next_boot"]
    assert boot["kernel"]["release"] == "6.1.0-27-amd64"
    assert "Debian, with Linux 6.1.0-27-amd64" in boot["kernel"]["why"]
    assert "vfio-pci.ids=10de:1b80" in boot["cmdline"]["text"]
    # 6.1.0-27 has no nouveau: nothing claims the GPU, but the audio function's softdep
    # loads vfio-pci, and the command line's ids= (not the file's) names 10de:1b80 only.
    assert drivers(doc)[GPU] is None and drivers(doc)[AUDIO] == "snd_hda_intel"


def test_a_grubenv_saved_entry_and_bls_entries(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file("/boot/grub2/grub.cfg", 'set default="${saved_entry}"\nblscfg\n')
    kvm.fake.write_file("/boot/grub2/grubenv", "saved_entry=abc-6.1.0-27\nkernelopts=ro quiet\n")
    for release in ("6.1.0-26-amd64", "6.1.0-27-amd64"):
        kvm.fake.write_file(
            f"/boot/loader/entries/abc-{release[:8]}.conf",
            f"title Linux {release}\nlinux /vmlinuz-{release}\n"
            f"initrd /initramfs-{release}.img\noptions $kernelopts modprobe.blacklist=nouveau\n",
        )
    write_module_index(kvm.fake, "6.1.0-27-amd64")
    _, doc = forecast(kvm, capsys, GPU)
    assert doc["next_boot"]["kernel"]["release"] == "6.1.0-27-amd64"
    assert doc["next_boot"]["cmdline"]["text"] == "ro quiet modprobe.blacklist=nouveau"
    assert drivers(doc)[GPU] is None
    assert "modprobe.blacklist=" in " ".join(device(doc, GPU)["evidence"])


XEN_GRUB = """\
menuentry 'Debian GNU/Linux, with Xen hypervisor' {
	multiboot2	/boot/xen.gz placeholder dom0_mem=2G
	module2	/boot/vmlinuz-2.6.18-164.el5xen root=/dev/sda1 xen-pciback.hide=(0000:09:00.0)
	module2	--nounzip /boot/initrd-2.6.18-164.el5xen.img
}
"""


def test_a_command_line_hide_alone_loses_to_a_module_driver_unless_pciback_is_built_in(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the lab's xen3 boot shows on a real kernel: xen-pciback.hide= is read when
    xen-pciback loads, and nothing loads it before bnx2."""
    rhel5.fake.write_file("/boot/grub/grub.cfg", XEN_GRUB)
    _, doc = forecast(rhel5, capsys, NIC)
    assert "xen-pciback.hide=(0000:09:00.0)" in doc["next_boot"]["cmdline"]["text"]
    assert drivers(doc)[NIC] == "bnx2"
    write_module_index(rhel5.fake, RHEL5_RELEASE, builtin=["xen-pciback"])
    _, doc = forecast(rhel5, capsys, NIC)
    assert (device(doc, NIC)["driver"], device(doc, NIC)["stage"]) == ("pciback", "built-in")


def test_the_boot_gpu_on_a_stub_warns_about_the_firmware_framebuffer(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    (kvm.base / f"sys/bus/pci/devices/{GPU}/boot_vga").write_text("1\n")
    write_module_index(kvm.fake, KVM_RELEASE, builtin=["simpledrm"])
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", VFIO_GPU)
    _, doc = forecast(kvm, capsys, GPU)
    assert any("simpledrm" in f["message"] for f in rules(doc, "PP110", GPU))
    kvm.fake.write_file(
        "/boot/grub/grub.cfg",
        GRUB_CFG.replace("1>0", "0").replace(
            "ro quiet\n", "ro quiet initcall_blacklist=sysfb_init\n", 1
        ),
    )
    _, doc = forecast(kvm, capsys, GPU)
    assert not any("simpledrm" in f["message"] for f in rules(doc, "PP110", GPU))


# --- the command --------------------------------------------------------------------


def test_text_output_names_the_chain(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", VFIO_GPU)
    capsys.readouterr()
    assert main(["--root", str(kvm.base), "check", "--next-boot", GPU]) == 0
    out = capsys.readouterr().out
    assert f"{GPU}: nouveau now -> vfio-pci at the next boot [root]" in out
    assert "softdep nouveau pre: vfio_pci" in out
    assert f"{AUDIO}:" not in out  # only the device asked about


def test_usage_and_not_found(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(kvm.base), "check", "--next-boot", "--guest", "g"]) == 2
    assert main(["--root", str(kvm.base), "check", "--next-boot", "0000:0f:00.0"]) == 4
    assert "0000:0f:00.0" in capsys.readouterr().err


def test_a_tree_without_a_module_index_says_unknown_not_none(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(kvm.base / f"lib/modules/{KVM_RELEASE}")
    code, doc = forecast(kvm, capsys, GPU)
    gpu = device(doc, GPU)
    assert (gpu["driver"], gpu["stage"], gpu["certain"]) == (None, "unknown", False)
    assert code == 0 and PciAddress.parse(gpu["address"]) == PciAddress.parse(GPU)


DEFAULT_GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="{}"\n'


def test_without_grub_cfg_the_line_grub_mkconfig_will_write_is_used(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file(
        "/etc/default/grub", DEFAULT_GRUB.format("vfio-pci.ids=10de:1b80 rd.driver.pre=vfio-pci")
    )
    kvm.fake.write_file(
        f"/boot/initrd.img-{KVM_RELEASE}",
        initramfs_image(["nvme", "nouveau", "vfio-pci"], {}, KVM_RELEASE),
    )
    _, doc = forecast(kvm, capsys, GPU)
    cmdline = doc["next_boot"]["cmdline"]
    assert "/etc/default/grub" in cmdline["where"]
    assert cmdline["text"] == "vfio-pci.ids=10de:1b80 rd.driver.pre=vfio-pci quiet"
    # rd.driver.pre= loads vfio-pci in the initramfs before udev loads nouveau; the
    # image has no modprobe files, so ids= comes from the command line alone.
    gpu = device(doc, GPU)
    assert (gpu["driver"], gpu["stage"]) == ("vfio-pci", "initramfs")
    assert "kernel command line" not in " ".join(gpu["evidence"])  # it says where: the file
    assert "/etc/default/grub" in " ".join(gpu["evidence"])


def test_a_grub_cfg_not_regenerated_after_editing_etc_default_grub_is_drift(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.write_file("/boot/grub/grub.cfg", GRUB_CFG.replace("1>0", "0"))
    kvm.fake.write_file("/etc/default/grub", DEFAULT_GRUB.format("vfio-pci.ids=10de:1b80"))
    code, doc = forecast(kvm, capsys)
    (stale,) = rules(doc, "PP111", "vfio-pci.ids=10de:1b80")
    assert "grub.cfg was not regenerated" in stale["message"] and code == 1
    assert "update-grub" in stale["remedy"]
    assert drivers(doc)[GPU] == "nouveau"


class _RunningSystem(HostRoot):
    """A tree standing in for the running system: the distribution's lister may run."""

    @property
    def is_real(self) -> bool:
        return True


def test_the_distributions_lister_lists_what_python_cannot_decompress(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    from pcipass.host.initramfs import list_initramfs
    from pcipass.runner import CommandResult

    path = f"/boot/initrd.img-{KVM_RELEASE}"
    kvm.fake.write_file(path, b"\x28\xb5\x2f\xfd" + b"\0" * 64)  # zstd
    kvm.runner.programs.add("lsinitramfs")
    listed = f"usr/lib/modules/{KVM_RELEASE}/kernel/drivers/gpu/drm/nouveau/nouveau.ko.zst\n"
    kvm.runner.answers["lsinitramfs"] = CommandResult(("lsinitramfs",), 0, listed + "etc\n", "")
    listing = list_initramfs(_RunningSystem(kvm.base), kvm.runner, path)
    assert ("lsinitramfs", path) in kvm.runner.calls
    assert listing.how == "lsinitramfs" and listing.contents is not None
    assert module_names(listing.contents.names) == {"nouveau"}
    assert "zstd" in listing.note and "/etc's are assumed" in listing.note


def test_the_narrowed_alias_search_finds_what_matching_every_pattern_finds() -> None:
    """modules.alias is searched through a vendor/device index (thousands of patterns):
    the result, and its order, are those of trying every pattern."""
    import fnmatch

    from pcipass.host.boot_facts import KernelModules

    aliases = [
        ("pci:v00008086d0000100Esv*sd*bc*sc*i*", "e1000"),
        ("pci:v00008086d*sv*sd*bc02sc00i*", "intel_any_nic"),
        ("pci:v*d*sv*sd*bc06sc04i00", "shpchp"),
        ("pci:v0000808?d0000100Esv*sd*bc*sc*i*", "odd_vendor_glob"),
        ("pci:v00008086d0000100*sv*sd*bc*sc*i*", "device_glob"),
        ("pci:v000010DEd*sv*sd*bc03sc*i*", "nouveau"),
        ("pci:v00008086d0000100Esv00008086sd00001012bc*sc*i*", "e1000"),
    ]
    kernel = KernelModules("r", "w", aliases=aliases, builtin=frozenset({"shpchp"}))
    for modalias in (
        "pci:v00008086d0000100Esv00008086sd00001012bc02sc00i00",
        "pci:v00008086d00001234sv00000000sd00000000bc06sc04i00",
        "pci:v000010DEd00001B80sv00000000sd00000000bc03sc00i00",
        "pci:v00001AF4d00001000sv00000000sd00000000bc02sc00i00",
    ):
        brute: list[str] = []
        for pattern, module in aliases:
            if module not in brute and fnmatch.fnmatchcase(modalias, pattern):
                brute.append(module)
        brute.sort(key=lambda m: m != "shpchp")
        assert kernel.candidates(modalias) == brute, modalias


def test_a_stub_loaded_at_boot_takes_a_device_no_driver_claims(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """systemd-modules-load loads vfio-pci at some point of the boot: a device whose own
    driver never loads (blacklisted) is still unbound then, and ids= takes it."""
    kvm.fake.write_file("/etc/modprobe.d/vfio.conf", "options vfio-pci ids=10de:1b80\n")
    kvm.fake.write_file("/etc/modprobe.d/bl.conf", "blacklist nouveau\n")
    _, doc = forecast(kvm, capsys, GPU)
    assert drivers(doc)[GPU] is None
    kvm.fake.write_file("/etc/modules-load.d/vfio.conf", "# for the GPU\nvfio-pci\n")
    _, doc = forecast(kvm, capsys, GPU)
    gpu = device(doc, GPU)
    assert (gpu["driver"], gpu["stage"]) == ("vfio-pci", "root")
    assert "no driver binds it first" in gpu["evidence"][-1]


def test_grub_default_by_id_and_title() -> None:
    from pcipass.host.bootloader import parse_grub_cfg, pick

    default, menu = parse_grub_cfg(GRUB_CFG)
    assert default == "1>0"
    chosen = pick(default, menu)
    assert chosen is not None and chosen.kernel == "/vmlinuz-6.1.0-27-amd64"
    by_id = pick("gnulinux-advanced-x>gnulinux-6.1.0-27", menu)
    assert by_id is chosen
    by_title = pick("Debian GNU/Linux", menu)
    assert by_title is not None and by_title.initrd == "/initrd.img-6.1.0-26-amd64"
    assert pick("7", menu) is None
