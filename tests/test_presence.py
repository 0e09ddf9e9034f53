"""state/presence.py: "no state here" without SQLite, and without openat2 when plain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcipass.host import confined
from pcipass.host.root import HostRoot
from pcipass.state.presence import ledger_may_exist


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path resolved inside the root (openat2 or the walk) is recorded."""
    seen: list[str] = []
    original = confined.Confined.real_dir

    def spy(self: confined.Confined, absolute: str, *, create: bool = False) -> Path | None:
        seen.append(absolute)
        return original(self, absolute, create=create)

    monkeypatch.setattr(confined.Confined, "real_dir", spy)
    return seen


def test_a_plainly_missing_state_directory_needs_no_resolution(
    tmp_path: Path, resolutions: list[str]
) -> None:
    (tmp_path / "var/lib").mkdir(parents=True)
    assert ledger_may_exist(HostRoot.at(tmp_path)) is False
    assert resolutions == []


def test_an_empty_state_directory_is_resolved_and_empty(
    tmp_path: Path, resolutions: list[str]
) -> None:
    (tmp_path / "var/lib/pcipass").mkdir(parents=True)
    assert ledger_may_exist(HostRoot.at(tmp_path)) is False
    assert resolutions == ["/var/lib/pcipass"]
    (tmp_path / "var/lib/pcipass/state.db").write_bytes(b"")
    assert ledger_may_exist(HostRoot.at(tmp_path)) is True


def test_a_link_on_the_way_is_resolved_inside_the_root(
    tmp_path: Path, resolutions: list[str]
) -> None:
    """An image whose /var is an absolute link: looked up inside the root (not on
    this machine's /var), so the ledger there is found."""
    (tmp_path / "data/lib/pcipass").mkdir(parents=True)
    (tmp_path / "data/lib/pcipass/state.db").write_bytes(b"")
    os.symlink("/data", tmp_path / "var")
    assert ledger_may_exist(HostRoot.at(tmp_path)) is True
    assert resolutions == ["/var/lib/pcipass"]


def test_a_link_to_a_missing_place_is_not_taken_for_absent_without_asking(
    tmp_path: Path, resolutions: list[str]
) -> None:
    os.symlink("/nowhere", tmp_path / "var")
    assert ledger_may_exist(HostRoot.at(tmp_path)) is False
    assert resolutions == ["/var/lib/pcipass"]
