"""ops.guests.read_guest_file: one confined open, refusals in the guest file's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.ops.guests import read_guest_file


def test_a_directory_is_refused_as_one(tmp_path: Path) -> None:
    (tmp_path / "etc/xen/g1.cfg").mkdir(parents=True)
    with pytest.raises(UsageError, match="is a directory, not a guest configuration"):
        read_guest_file(tmp_path / "etc/xen/g1.cfg", "/etc/xen/g1.cfg")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "etc/xen/big.cfg"
    path.parent.mkdir(parents=True)
    with path.open("wb") as out:
        out.truncate(4 * 1024 * 1024 + 1)
    with pytest.raises(ConfigSyntaxError, match="larger than 4 MiB"):
        read_guest_file(path, "/etc/xen/big.cfg")


def test_a_missing_file_and_a_plain_one(tmp_path: Path) -> None:
    path = tmp_path / "etc/xen/g1.cfg"
    path.parent.mkdir(parents=True)
    with pytest.raises(UsageError, match="no such file"):
        read_guest_file(path, "/etc/xen/g1.cfg")
    path.write_bytes(b"name = 'g1'\npci = [ '09:00.0' ]\n")
    guest = read_guest_file(path, "/etc/xen/g1.cfg")
    assert guest.config.name == "g1"


def test_resolved_paths_are_what_resolve_gives(tmp_path: Path) -> None:
    """scan_guests resolves each directory once; the answers must stay resolve()'s."""
    from pcipass.ops.guests import _resolved

    real = tmp_path / "real"
    real.mkdir()
    (real / "g1.cfg").write_text("name = 'g1'\n")
    (tmp_path / "xen").symlink_to(real)  # the directory is a link
    (real / "g2.cfg").symlink_to(real / "g1.cfg")  # the entry is a link
    parents: dict[Path, Path] = {}
    for path in (tmp_path / "xen/g1.cfg", tmp_path / "xen/g2.cfg", real / "g1.cfg"):
        assert _resolved(path, parents) == path.resolve()
    assert parents == {tmp_path / "xen": real.resolve(), real: real.resolve()}
