"""Platform detection: distribution, kernel, stub modules, boot tooling, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipass.errors import UsageError
from pcipass.host.platform import (
    Backend,
    GrubFlavour,
    InitramfsTool,
    PersistMethod,
    StubState,
    detect_platform,
    parse_os_release,
    parse_platform_override,
    parse_redhat_release,
)
from pcipass.host.root import HostRoot
from pcipass.testing.example import build_rhel5_xen

DEBIAN_OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
"""


def _write(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def _debian(root: Path, release: str = "6.1.0-56-amd64", dep: str | None = None) -> HostRoot:
    _write(root, "/etc/os-release", DEBIAN_OS_RELEASE)
    _write(root, "/proc/sys/kernel/osrelease", release + "\n")
    _write(root, "/usr/sbin/update-initramfs", "", 0o755)
    _write(root, "/usr/sbin/update-grub", "", 0o755)
    if dep is None:
        dep = (
            "kernel/drivers/xen/xen-pciback/xen-pciback.ko:\n"
            "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko\n"
            "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n"
        )
    _write(root, f"/lib/modules/{release}/modules.dep", dep)
    _write(root, f"/lib/modules/{release}/modules.builtin", "kernel/drivers/pci/pcie/aer.ko\n")
    return HostRoot.at(root)


def test_the_documents_host_is_rhel5_with_pciback_in_modprobe_conf(tmp_path: Path) -> None:
    host = build_rhel5_xen(tmp_path / "rhel5")
    platform = detect_platform(HostRoot.at(host.base))
    assert (platform.family, platform.version, platform.major) == ("rhel", "5.4", 5)
    assert platform.is_rhel5
    assert platform.kernel_release == "2.6.18-164.el5xen"
    assert platform.xen_stub == "pciback"
    assert platform.stub_state("pciback") is StubState.MODULE
    assert platform.stub_state("vfio-pci") is StubState.ABSENT
    assert platform.method_for(Backend.PCIBACK) is PersistMethod.RHEL5
    assert platform.modprobe_path(PersistMethod.RHEL5) == "/etc/modprobe.conf"
    assert platform.initramfs is InitramfsTool.MKINITRD
    assert platform.grub is GrubFlavour.LEGACY
    assert not platform.cmdline_editable
    (step,) = platform.regeneration(PersistMethod.RHEL5)
    assert step.argv == (
        "mkinitrd",
        "-f",
        "/boot/initrd-2.6.18-164.el5xen.img",
        "2.6.18-164.el5xen",
    )


@pytest.mark.parametrize(
    ("text", "family", "version"),
    [
        ("Red Hat Enterprise Linux Server release 5.4 (Tikanga)\n", "rhel", "5.4"),
        ("CentOS release 5.11 (Final)\n", "centos", "5.11"),
        ("Red Hat Enterprise Linux Server release 6.10 (Santiago)\n", "rhel", "6.10"),
        ("CentOS Linux release 7.9.2009 (Core)\n", "centos", "7.9.2009"),
        ("Red Hat Enterprise Linux release 8.10 (Ootpa)\n", "rhel", "8.10"),
        ("Red Hat Enterprise Linux release 9.4 (Plow)\n", "rhel", "9.4"),
        ("Rocky Linux release 9.3 (Blue Onyx)\n", "rocky", "9.3"),
        ("Fedora release 39 (Thirty Nine)\n", "fedora", "39"),
        ("something else entirely", "unknown", ""),
        ("", "unknown", ""),
    ],
)
def test_redhat_release_lines(text: str, family: str, version: str) -> None:
    assert parse_redhat_release(text) == (family, version)


def test_centos5_counts_as_the_documents_platform(tmp_path: Path) -> None:
    _write(tmp_path, "/etc/redhat-release", "CentOS release 5.11 (Final)\n")
    _write(tmp_path, "/proc/sys/kernel/osrelease", "2.6.18-398.el5xen\n")
    platform = detect_platform(HostRoot.at(tmp_path))
    assert platform.is_rhel5
    assert platform.xen_stub == "pciback"  # no module tree: the kernel generation decides
    assert platform.method_for(Backend.PCIBACK) is PersistMethod.RHEL5


def test_os_release_is_read_not_executed() -> None:
    fields = parse_os_release(
        'ID="rhel"\nVERSION_ID=\'9.4\'\n# comment\nPRETTY_NAME="A \\"quoted\\" name"\n'
        "BAD LINE\nNAME=$(reboot)\n"
    )
    assert fields["ID"] == "rhel"
    assert fields["VERSION_ID"] == "9.4"
    assert fields["PRETTY_NAME"] == 'A "quoted" name'
    assert fields["NAME"] == "$(reboot)"  # text, never run


def test_debian_with_xen_pciback_module_uses_modprobe_d(tmp_path: Path) -> None:
    platform = detect_platform(_debian(tmp_path))
    assert (platform.family, platform.version) == ("debian", "12")
    assert platform.xen_stub == "xen-pciback"
    assert platform.stub_state("xen_pciback") is StubState.MODULE
    assert platform.stub_state("pciback") is StubState.ABSENT
    assert not platform.reads_modprobe_conf
    assert platform.method_for(Backend.PCIBACK) is PersistMethod.MODPROBE_D
    assert platform.method_for(Backend.VFIO) is PersistMethod.MODPROBE_D
    assert platform.modprobe_path(PersistMethod.MODPROBE_D) == "/etc/modprobe.d/pcipass.conf"
    (initramfs,) = platform.regeneration(PersistMethod.MODPROBE_D)
    assert initramfs.argv == ("update-initramfs", "-u", "-k", "6.1.0-56-amd64")
    (grub,) = platform.regeneration(PersistMethod.CMDLINE)
    assert grub.argv == ("update-grub",)
    assert platform.cmdline_editable


def test_builtin_vfio_pci_forces_the_kernel_command_line(tmp_path: Path) -> None:
    root = _debian(tmp_path, dep="kernel/drivers/xen/xen-pciback/xen-pciback.ko:\n")
    release = "6.1.0-56-amd64"
    _write(
        tmp_path,
        f"/lib/modules/{release}/modules.builtin",
        "kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/pci/vfio-pci.ko\n",
    )
    platform = detect_platform(root)
    assert platform.stub_state("vfio-pci") is StubState.BUILTIN
    assert platform.method_for(Backend.VFIO) is PersistMethod.CMDLINE
    assert platform.method_for(Backend.PCIBACK) is PersistMethod.MODPROBE_D


def test_compressed_modules_found_by_walking_without_modules_dep(tmp_path: Path) -> None:
    release = "5.14.0-427.el9.x86_64"
    _write(tmp_path, "/etc/os-release", 'ID="rhel"\nVERSION_ID="9.4"\n')
    _write(tmp_path, "/etc/redhat-release", "Red Hat Enterprise Linux release 9.4 (Plow)\n")
    _write(tmp_path, "/proc/sys/kernel/osrelease", release)
    _write(tmp_path, f"/lib/modules/{release}/kernel/drivers/vfio/pci/vfio-pci.ko.xz")
    _write(tmp_path, "/usr/bin/dracut", "", 0o755)
    _write(tmp_path, "/boot/grub2/grub.cfg")
    (tmp_path / "boot/loader/entries").mkdir(parents=True)
    platform = detect_platform(HostRoot.at(tmp_path))
    assert platform.stub_state("vfio-pci") is StubState.MODULE
    assert platform.stub_state("xen-pciback") is StubState.ABSENT
    assert platform.initramfs is InitramfsTool.DRACUT
    (dracut,) = platform.regeneration(PersistMethod.MODPROBE_D)
    assert dracut.argv == ("dracut", "--force", f"/boot/initramfs-{release}.img", release)
    (grub,) = platform.regeneration(PersistMethod.CMDLINE)
    assert grub.argv == (
        "grub2-mkconfig",
        "-o",
        "/boot/grub2/grub.cfg",
        "--update-bls-cmdline",
    )


def test_rhel7_uefi_grub_cfg_without_bls_flag(tmp_path: Path) -> None:
    _write(tmp_path, "/etc/redhat-release", "Red Hat Enterprise Linux Server release 7.9 (Maipo)\n")
    _write(tmp_path, "/boot/efi/EFI/redhat/grub.cfg")
    platform = detect_platform(HostRoot.at(tmp_path), release="3.10.0-1160.el7.x86_64")
    (grub,) = platform.regeneration(PersistMethod.CMDLINE)
    assert grub.argv == ("grub2-mkconfig", "-o", "/boot/efi/EFI/redhat/grub.cfg")


def test_image_without_proc_uses_its_only_kernel(tmp_path: Path) -> None:
    release = "6.1.0-56-amd64"
    _write(tmp_path, "/etc/os-release", DEBIAN_OS_RELEASE)
    _write(tmp_path, f"/lib/modules/{release}/modules.dep", "kernel/drivers/xen/xen-pciback.ko:\n")
    platform = detect_platform(HostRoot.at(tmp_path))
    assert platform.kernel_release == release
    assert "/lib/modules" in platform.evidence
    _write(tmp_path, "/lib/modules/6.1.0-99-amd64/modules.dep", "")
    assert detect_platform(HostRoot.at(tmp_path)).kernel_release is None  # ambiguous


def test_release_override_and_a_hostile_release(tmp_path: Path) -> None:
    root = _debian(tmp_path)
    platform = detect_platform(root, release="6.1.0-56-amd64")
    assert "--kernel-release" in platform.evidence
    with pytest.raises(UsageError, match="kernel release"):
        detect_platform(root, release="../../etc")


def test_overrides(tmp_path: Path) -> None:
    root = _debian(tmp_path)
    cmdline = detect_platform(root, override="cmdline")
    assert cmdline.method_for(Backend.PCIBACK) is PersistMethod.CMDLINE
    assert cmdline.method_for(Backend.VFIO) is PersistMethod.CMDLINE
    rhel5 = detect_platform(root, override="rhel5")
    assert rhel5.method_for(Backend.PCIBACK) is PersistMethod.RHEL5
    # kmod never reads /etc/modprobe.conf: the RHEL 5 lines go where kmod looks.
    assert rhel5.modprobe_path(PersistMethod.RHEL5) == "/etc/modprobe.d/pcipass.conf"
    assert rhel5.xen_stub == "xen-pciback"
    with pytest.raises(UsageError, match="pciback only"):
        rhel5.method_for(Backend.VFIO)
    assert rhel5.to_json()["methods"] == {"pciback": "rhel5"}
    with pytest.raises(UsageError, match="unknown platform") as error:
        parse_platform_override("solaris")
    assert "rhel5, modprobe.d, cmdline" in error.value.render()
    assert parse_platform_override("auto") is None


def test_rhel5_override_on_an_empty_tree_assumes_rhel5(tmp_path: Path) -> None:
    platform = detect_platform(HostRoot.at(tmp_path), override=PersistMethod.RHEL5)
    assert platform.xen_stub == "pciback"
    assert platform.modprobe_path(PersistMethod.RHEL5) == "/etc/modprobe.conf"


def test_unknown_everything(tmp_path: Path) -> None:
    platform = detect_platform(HostRoot.at(tmp_path))
    assert platform.family == "unknown"
    assert platform.kernel_release is None
    assert all(state is StubState.UNKNOWN for _name, state in platform.stubs)
    assert platform.method_for(Backend.PCIBACK) is PersistMethod.MODPROBE_D
    assert platform.regeneration(PersistMethod.CMDLINE) == ()
    data = platform.to_json()
    assert data["family"] == "unknown"
    assert data["methods"] == {"pciback": "modprobe.d", "vfio": "modprobe.d"}
