"""Attacks on confinement: links of every kind may not carry a read or a write out of the root.

Every test runs twice: with the kernel's openat2(RESOLVE_IN_ROOT) and with the
user-space walk that replaces it on older kernels.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.errors import OperationFailed, UsageError
from pcipass.host import confined
from pcipass.host.confined import Confined, LinkOutOfRoot
from pcipass.host.root import HostRoot
from pcipass.persist.atomic import FileEdit, apply_edit, plan_edit, write_file


@pytest.fixture(params=["kernel", "walk"])
def resolution(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = str(request.param)
    if mode == "kernel" and not confined.kernel_resolution_available():
        pytest.skip("this kernel has no openat2")
    old = confined.set_resolution(mode)
    yield mode
    confined.set_resolution(old)


@pytest.fixture
def tree(tmp_path: Path, resolution: str) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc" / "xen" / "auto").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside secret\n")
    (outside / "modprobe.d").mkdir()
    (outside / "modprobe.d" / "pcipass.conf").write_bytes(b"outside conf\n")
    return root, outside


def _state(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_file_link_out_of_the_root_reads_as_absent(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "etc" / "shadow").symlink_to(outside / "secret")
    (root / "etc" / "rel").symlink_to("../../../../../../../" + str(outside / "secret"))
    files = Confined(root)
    assert files.read_bytes("/etc/shadow") is None
    assert files.read_bytes("/etc/rel") is None
    assert not files.exists("/etc/shadow")


def test_a_directory_link_out_of_the_root_is_not_listed(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "etc" / "modprobe.d").symlink_to(outside / "modprobe.d")
    files = Confined(root)
    assert files.list_dir("/etc/modprobe.d") == []
    assert files.read_bytes("/etc/modprobe.d/pcipass.conf") is None


@pytest.mark.parametrize("absolute_link", [True, False])
def test_a_write_through_a_directory_link_out_of_the_root_is_refused(
    tree: tuple[Path, Path], absolute_link: bool
) -> None:
    root, outside = tree
    target = str(outside / "modprobe.d")
    link_text = target if absolute_link else "../../../../../../.." + target
    (root / "etc" / "modprobe.d").symlink_to(link_text)
    before = _state(outside), _state(root)
    with pytest.raises(LinkOutOfRoot) as caught:
        write_file(Confined(root), "/etc/modprobe.d/pcipass.conf", b"options pciback hide=x\n")
    assert "/etc/modprobe.d is a symbolic link to" in caught.value.render()
    assert caught.value.exit_code == 3
    assert (_state(outside), _state(root)) == before
    assert not (root / outside.relative_to("/")).exists()  # nothing created inside either


def test_a_write_through_a_file_link_out_of_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "etc" / "modprobe.conf").symlink_to(outside / "secret")
    before = _state(outside), _state(root)
    with pytest.raises(LinkOutOfRoot, match=r"/etc/modprobe\.conf is a symbolic link"):
        write_file(Confined(root), "/etc/modprobe.conf", b"new\n")
    assert (_state(outside), _state(root)) == before
    assert (root / "etc" / "modprobe.conf").is_symlink()


def test_an_intermediate_link_deeper_in_the_path_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "var" / "lib").mkdir(parents=True)
    (root / "var" / "lib" / "pcipass").symlink_to(outside)
    before = _state(outside)
    with pytest.raises(LinkOutOfRoot, match="/var/lib/pcipass is a symbolic link"):
        write_file(Confined(root), "/var/lib/pcipass/backups/x/y", b"data")
    assert _state(outside) == before


def test_links_inside_the_root_are_followed_and_stay_links(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "etc" / "xen" / "g2").write_bytes(b"name = 'g2'\n")
    (root / "etc" / "xen" / "auto" / "g2").symlink_to("../g2")
    (root / "etc" / "xen" / "auto" / "abs").symlink_to("/etc/xen/g2")
    files = Confined(root)
    assert files.read_bytes("/etc/xen/auto/g2") == b"name = 'g2'\n"
    assert files.read_bytes("/etc/xen/auto/abs") == b"name = 'g2'\n"
    edit = plan_edit(root / "etc/xen/auto/g2", "/etc/xen/auto/g2", b"name = 'g2'\npci = []\n")
    apply_edit(edit)
    assert (root / "etc" / "xen" / "auto" / "g2").is_symlink()
    assert os.readlink(root / "etc" / "xen" / "auto" / "g2") == "../g2"
    assert (root / "etc" / "xen" / "g2").read_bytes() == b"name = 'g2'\npci = []\n"


def test_a_directory_link_inside_the_root_is_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "srv" / "xen").mkdir(parents=True)
    (root / "etc" / "xen" / "guests").symlink_to("/srv/xen")
    write_file(Confined(root), "/etc/xen/guests/g3", b"x\n")
    assert (root / "srv" / "xen" / "g3").read_bytes() == b"x\n"


def test_dotdot_leaving_the_root_is_a_usage_error(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(UsageError, match="leaves the root"):
        Confined(root).read_bytes("/../outside/secret")
    with pytest.raises(UsageError) as caught:
        HostRoot.at(root).path("/etc/../../outside/secret")
    assert caught.value.exit_code == 2


def test_a_link_loop_is_an_error_not_a_hang(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "etc" / "a").symlink_to("b")
    (root / "etc" / "b").symlink_to("a")
    with pytest.raises(OperationFailed, match="symbolic links"):
        write_file(Confined(root), "/etc/a/x", b"")


def test_a_component_swapped_for_a_link_is_not_followed(tree: tuple[Path, Path]) -> None:
    """The walk opens each name with O_NOFOLLOW from the previous directory descriptor."""
    root, outside = tree
    files = Confined(root)
    with files.locate("/etc/xen/g9", create_dirs=True) as (dirfd, name):
        # after resolution, swap etc/xen for a link out: the descriptor still points inside
        os.rename(root / "etc" / "xen", root / "etc" / "xen.old")
        (root / "etc" / "xen").symlink_to(outside)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=dirfd)
        os.close(fd)
    assert (root / "etc" / "xen.old" / "g9").exists()
    assert not (outside / "g9").exists()


def test_a_fifo_given_as_a_configuration_does_not_hang(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    os.mkfifo(root / "etc" / "xen" / "fifo")
    with pytest.raises(OperationFailed, match="not a regular file"):
        Confined(root).read_bytes("/etc/xen/fifo")
    with pytest.raises(OperationFailed, match="not a regular file"):
        write_file(Confined(root), "/etc/xen/fifo", b"x")
    assert stat.S_ISFIFO(os.lstat(root / "etc" / "xen" / "fifo").st_mode)


def test_a_directory_where_a_file_should_be_and_the_reverse(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "etc" / "xen" / "dir").mkdir()
    (root / "etc" / "plain").write_bytes(b"x")
    with pytest.raises(OperationFailed, match="a directory is where a file should be"):
        Confined(root).read_bytes("/etc/xen/dir")
    with pytest.raises(OperationFailed, match="a directory is where a file should be") as caught:
        write_file(Confined(root), "/etc/xen/dir", b"x")
    assert caught.value.render().startswith("/etc/xen/dir: ")
    with pytest.raises(OperationFailed, match="a file is where a directory should be"):
        write_file(Confined(root), "/etc/plain/sub", b"x")
    assert [p.name for p in (root / "etc" / "xen").iterdir() if p.name.startswith(".")] == []


def test_a_file_over_the_size_limit_is_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    big = root / "etc" / "big"
    with big.open("wb") as handle:
        handle.truncate(confined.MAX_FILE_BYTES + 1)
    with pytest.raises(OperationFailed, match="larger than 16 MiB"):
        Confined(root).read_bytes("/etc/big")


def test_the_edit_of_an_unconfined_path_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        apply_edit(FileEdit(Path("/tmp/x/etc/a"), "/etc/b", None, b""))


def test_auto_falls_back_to_the_walk_without_openat2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel before 5.6 (or a seccomp filter) answers ENOSYS: the walk takes over."""
    calls: list[str] = []

    def no_openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
        calls.append(path)
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(confined, "_openat2", no_openat2)
    monkeypatch.setitem(confined._probed, "openat2", False)
    monkeypatch.setitem(confined._settings, "resolution", "auto")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "xen").symlink_to("/srv/xen")
    (root / "srv" / "xen").mkdir(parents=True)
    (root / "srv" / "xen" / "g").write_bytes(b"g\n")
    (root / "etc" / "out").symlink_to(tmp_path)
    files = Confined(root)
    assert files.read_bytes("/etc/xen/g") == b"g\n"
    with pytest.raises(LinkOutOfRoot):
        write_file(files, "/etc/out/root/etc/x", b"")
    assert calls == []


def test_no_descriptor_leaks_on_success_or_refusal(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "etc" / "modprobe.d").symlink_to(outside / "modprobe.d")
    (root / "etc" / "loop").symlink_to("loop")
    (root / "etc" / "xen" / "abs").symlink_to("/etc/xen/auto")
    files = Confined(root)
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        write_file(files, "/etc/xen/abs/g", b"x")
        assert files.read_bytes("/etc/xen/auto/g") == b"x"
        assert files.list_dir("/etc/xen") == ["abs", "auto"]
        for bad in ("/etc/modprobe.d/pcipass.conf", "/etc/loop/x", "/etc/xen/auto/g/x"):
            with pytest.raises((LinkOutOfRoot, OperationFailed)):
                write_file(files, bad, b"x")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_an_image_s_absolute_lib_link_stays_in_the_image(tree: tuple[Path, Path]) -> None:
    """lib -> /usr/lib in a guest image means the image's /usr/lib, not the host's."""
    from pcipass.persist.guest_modules import acpiphp_module_present

    root, _ = tree
    release = "2.6.18-164.el5"
    hotplug = root / "usr/lib/modules" / release / "kernel/drivers/pci/hotplug"
    hotplug.mkdir(parents=True)
    (hotplug / "acpiphp.ko").write_bytes(b"\x7fELF")
    (root / "lib").symlink_to("/usr/lib")
    assert acpiphp_module_present(HostRoot.at(root), release) is True
    assert acpiphp_module_present(HostRoot.at(root), "9.9.9-none") is None


def test_list_files_names_regular_files_and_links_to_them_inside_the_root(tmp_path: Path) -> None:
    xen = tmp_path / "etc/xen"
    (xen / "auto").mkdir(parents=True)
    (xen / "g1.cfg").write_text("name = 'g1'\n")
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/g2.cfg").write_text("name = 'g2'\n")
    os.symlink("/srv/g2.cfg", xen / "g2.cfg")  # absolute: resolved inside the root
    os.symlink("/srv", xen / "srv-link")  # a directory
    os.symlink("/nowhere", xen / "dangling")
    os.mkfifo(xen / "fifo")
    os.symlink("/etc/xen/g1.cfg", xen / "auto/g1.cfg")
    files = Confined(tmp_path)
    assert files.list_files("/etc/xen") == ["g1.cfg", "g2.cfg"]
    assert files.list_files("/etc/xen/auto") == ["g1.cfg"]
    assert files.list_files("/etc/missing") == []
    # The same answer as asking name by name.
    names = files.list_dir("/etc/xen")
    assert files.list_files("/etc/xen") == [n for n in names if files.is_file(f"/etc/xen/{n}")]
