"""Symlink escapes through every command that reads or writes configuration or state.

A hostile tree under ``--root`` (an untrusted guest image, a directory on the
real host) plants links to files OUTSIDE the root.  Each command must leave
the outside untouched, change nothing inside, and say which link it refused
(exit 3).  Run with the kernel's openat2 and with the user-space walk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.host import confined
from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.fakehost import FakeHost, snapshot


def _errors(stderr: str) -> str:
    """stderr without the example host's "simulated kernel" announcement."""
    return "".join(
        line
        for line in stderr.splitlines(keepends=True)
        if not line.startswith("pcipass: simulated kernel:")
    )


@pytest.fixture(params=["kernel", "walk"])
def resolution(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = str(request.param)
    if mode == "kernel" and not confined.kernel_resolution_available():
        pytest.skip("this kernel has no openat2")
    old = confined.set_resolution(mode)
    yield mode
    confined.set_resolution(old)


@pytest.fixture
def outside(tmp_path: Path, resolution: str) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret").write_bytes(b"root:x:0:0\n")
    (place / "g").write_bytes(b'name = "rhel5pv"\nbootloader = "/usr/bin/pygrub"\n')
    return place


def _host(builder: str, tmp_path: Path) -> FakeHost:
    host = (build_rhel5_xen if builder == "rhel5" else build_kvm)(tmp_path / builder)
    host.mark_simulated()
    return host


def _attack(
    base: Path,
    outside: Path,
    argv: list[str],
    link: str,
    capsys: pytest.CaptureFixture[str],
    *,
    code: int = 3,
) -> None:
    before = snapshot(outside, skip=()), snapshot(base)
    assert main(["--root", str(base), *argv]) == code
    err = _errors(capsys.readouterr().err)
    assert err.startswith("pcipass: ") and err.count("\n") == 1
    assert f"{link} is a symbolic link to {outside}" in err
    assert (snapshot(outside, skip=()), snapshot(base)) == before
    assert main(["--root", str(base), "status"]) == 0
    assert "interrupted" not in capsys.readouterr().out  # a handled failure closes its entry


def _replace_with_link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def test_hide_persist_through_a_modprobe_d_link(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("kvm", tmp_path)
    _replace_with_link(host.base / "etc/modprobe.d", outside)
    _attack(host.base, outside, ["hide", "--persist", "02:00.0"], "/etc/modprobe.d", capsys)


def test_hide_persist_through_a_modprobe_conf_file_link(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("rhel5", tmp_path)
    _replace_with_link(host.base / "etc/modprobe.conf", outside / "secret")
    argv = ["hide", "--persist", "09:00.0"]
    _attack(host.base, outside, argv, "/etc/modprobe.conf", capsys)


def test_hide_persist_through_a_relative_link_climbing_out(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("rhel5", tmp_path)
    climb = "../" * (len(host.base.parts) + 2)
    _replace_with_link(host.base / "etc/modprobe.conf", Path(climb + str(outside) + "/secret"))
    before = snapshot(outside, skip=())
    assert main(["--root", str(host.base), "hide", "--persist", "09:00.0"]) == 3
    assert "/etc/modprobe.conf is a symbolic link" in _errors(capsys.readouterr().err)
    assert snapshot(outside, skip=()) == before


@pytest.mark.parametrize("with_config", [False, True])
def test_attach_through_a_guest_file_link(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], with_config: bool
) -> None:
    host = _host("rhel5", tmp_path)
    _replace_with_link(host.base / "etc/xen/rhel5pv", outside / "g")
    argv = ["attach", "09:00.0", "rhel5pv", "--hide", "--accept-pv-dma-risk"]
    if with_config:
        argv += ["--config", "/etc/xen/rhel5pv"]
    _attack(host.base, outside, argv, "/etc/xen/rhel5pv", capsys)


def test_attach_through_an_etc_xen_directory_link(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("rhel5", tmp_path)
    (outside / "rhel5pv").write_bytes((outside / "g").read_bytes())
    _replace_with_link(host.base / "etc/xen", outside)
    argv = ["attach", "09:00.0", "rhel5pv", "--hide", "--accept-pv-dma-risk"]
    argv += ["--config", "/etc/xen/rhel5pv"]
    _attack(host.base, outside, argv, "/etc/xen", capsys)


def test_config_outside_the_root_is_a_usage_error(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("rhel5", tmp_path)
    before = snapshot(outside, skip=())
    for config in (str(os.path.relpath(outside / "g")), "/etc/../../" + str(outside / "g")):
        argv = ["attach", "09:00.0", "rhel5pv", "--config", config, "--accept-pv-dma-risk"]
        assert main(["--root", str(host.base), *argv]) == 2
        err = _errors(capsys.readouterr().err)
        assert "outside the root" in err or "leaves the root" in err
    assert snapshot(outside, skip=()) == before


@pytest.mark.parametrize(
    ("link", "argv"),
    [
        ("/etc/libvirt/hooks", ["guard-install", "--libvirt"]),
        ("/usr/local/sbin", ["guard-install", "--wrap", "xl"]),
    ],
)
def test_guard_install_through_a_directory_link(
    tmp_path: Path,
    outside: Path,
    capsys: pytest.CaptureFixture[str],
    link: str,
    argv: list[str],
) -> None:
    host = _host("rhel5", tmp_path)
    _replace_with_link(host.base / link.lstrip("/"), outside)
    _attack(host.base, outside, argv, link, capsys)


def test_guest_setup_of_an_image_through_a_boot_file_link(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img"
    (image / "etc").mkdir(parents=True)
    (image / "etc/redhat-release").write_text("Red Hat Enterprise Linux Server release 5.4\n")
    moddir = image / "lib/modules/2.6.18-164.el5"
    (moddir / "kernel/drivers/pci/hotplug").mkdir(parents=True)
    (moddir / "kernel/drivers/pci/hotplug/acpiphp.ko").write_bytes(b"\x7fELF")
    (moddir / "modules.dep").write_text("kernel/drivers/pci/hotplug/acpiphp.ko:\n")
    link = "/etc/sysconfig/modules/acpiphp.modules"
    _replace_with_link(image / link.lstrip("/"), outside / "secret")
    _attack(image, outside, ["guest-setup"], link, capsys)


@pytest.mark.parametrize("what", ["state-dir", "lock", "database"])
def test_ledger_and_lock_through_links(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    host = _host("kvm", tmp_path)
    state = host.base / "var/lib/pcipass"
    if what == "state-dir":
        _replace_with_link(state, outside)
        link = "/var/lib/pcipass"
    elif what == "lock":
        _replace_with_link(state / "lock", outside / "secret")
        link = "/var/lib/pcipass/lock"
    else:
        _replace_with_link(state / "state.db", outside / "secret")
        link = ""
    before = snapshot(outside, skip=())
    assert main(["--root", str(host.base), "hide", "--now", "02:00.0"]) == 3
    err = _errors(capsys.readouterr().err)
    assert err.count("\n") == 1
    assert (link + " is a symbolic link") in err if link else "is a symbolic link" in err
    assert snapshot(outside, skip=()) == before
    assert host.bound_driver("0000:02:00.0") == "igb"


def test_a_sysfs_write_under_root_does_not_follow_a_link_out(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the simulated kernel, --root writes the tree's "control files" for real."""
    host = build_kvm(tmp_path / "kvm")  # not marked simulated: the real writer
    host.add_driver("vfio-pci")
    override = host.base / "sys/bus/pci/devices/0000:02:00.0/driver_override"
    _replace_with_link(override, outside / "secret")
    before = snapshot(outside, skip=())
    assert main(["--root", str(host.base), "hide", "--now", "02:00.0"]) in (1, 3)
    err = _errors(capsys.readouterr().err)
    assert "driver_override is a symbolic link to" in err and err.count("\n") == 1
    assert snapshot(outside, skip=()) == before


def test_recover_never_acts_on_a_crafted_journal_path(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger shipped in an image names files outside the root: recover leaves them alone."""
    from pcipass.host.root import HostRoot
    from pcipass.persist.atomic import digest
    from pcipass.state.ledger import Ledger

    host = _host("kvm", tmp_path)
    conf = host.base / "etc/modprobe.d/pcipass.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"# written by pcipass\n")
    (host.base / "etc/xen").mkdir(parents=True)
    (host.base / "etc/xen/out").symlink_to(outside / "secret")
    with Ledger.open(HostRoot.at(host.base)) as ledger:
        op = ledger.begin("hide-persist", {})
        old = ledger.save_backup(b"# before\n")
        secret_sha = digest((outside / "secret").read_bytes())
        for display in (
            "/../../../../../../../../.." + str(outside / "secret"),
            "relative/path",
            "/etc/xen/out",
        ):
            op.record_file_edit(display, digest(b"# before\n"), secret_sha, old)
        op.record_file_edit(
            "/etc/modprobe.d/pcipass.conf",
            digest(b"# before\n"),
            digest(b"# written by pcipass\n"),
            old,
        )
    before = snapshot(outside, skip=())
    # The journal is data: a record pcipass would never have written makes recover
    # refuse that whole operation, naming the record, and act on none of it.
    assert main(["--root", str(host.base), "recover"]) == 3
    err = capsys.readouterr().err
    assert "will not act on it" in err and "record" in err
    assert conf.read_bytes() == b"# written by pcipass\n"
    assert snapshot(outside, skip=()) == before


def test_attach_through_a_link_inside_the_root_edits_its_target(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host("rhel5", tmp_path)
    auto = host.base / "etc/xen/auto"
    auto.mkdir(parents=True)
    (auto / "rhel5pv").symlink_to("../rhel5pv")
    argv = ["attach", "09:00.0", "rhel5pv", "--hide", "--accept-pv-dma-risk"]
    assert main(["--root", str(host.base), *argv, "--config", "/etc/xen/auto/rhel5pv"]) == 0
    capsys.readouterr()
    assert os.readlink(auto / "rhel5pv") == "../rhel5pv"
    assert b"0000:09:00.0" in (host.base / "etc/xen/rhel5pv").read_bytes()
