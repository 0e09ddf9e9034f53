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
