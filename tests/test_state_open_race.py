"""state.db: no window between the confined check and SQLite's own open (#11).

SQLite opens by name.  An attacker who can write the tree under ``--root``
swaps ``var/lib/pcipass`` for a link to another directory holding a
``state.db`` after pcipass resolved the state directory inside the root and
before SQLite opens the file: the hook below does the swap at that very
moment, inside ``sqlite3.connect``.  pcipass must notice that SQLite holds a
file that is not the one it checked, refuse (exit 3 class), and leave the
other directory byte for byte as it was (no record, no -wal, no -shm).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pcipass.errors import RefusedError
from pcipass.host import confined
from pcipass.host.root import HostRoot
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot


@pytest.fixture(params=["kernel", "walk"])
def resolution(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = str(request.param)
    if mode == "kernel" and not confined.kernel_resolution_available():
        pytest.skip("this kernel has no openat2")
    old = confined.set_resolution(mode)
    yield mode
    confined.set_resolution(old)


def _ledger_with_a_record(root: HostRoot, kind: str) -> None:
    """A ledger holding one open (unfinished) operation named ``kind``."""
    with Ledger.open(root) as ledger:
        ledger.begin(kind, {"files": []})


def _open_kinds(ledger: Ledger) -> list[str]:
    return [op.kind for op in ledger.open_operations()]


@pytest.fixture
def trees(tmp_path: Path, resolution: str) -> tuple[HostRoot, Path]:
    """(the root pcipass works on, the other state directory) both with a ledger."""
    root = HostRoot.at(tmp_path / "host")
    _ledger_with_a_record(root, "mine")
    other = HostRoot.at(tmp_path / "other")
    _ledger_with_a_record(other, "theirs")
    return root, other.state_dir


def _swap_inside_connect(
    monkeypatch: pytest.MonkeyPatch, root: HostRoot, target: Path
) -> list[str]:
    """The attack: the first time SQLite is asked to open state.db, the
    state directory becomes a link to ``target`` just before it opens."""
    real_connect: Callable[..., sqlite3.Connection] = sqlite3.connect
    swapped: list[str] = []

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if "state.db" in str(database) and not swapped:
            state_dir = root.state_dir
            os.rename(state_dir, state_dir.with_name("pcipass.moved"))
            os.symlink(target, state_dir)
            swapped.append(str(database))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return swapped


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_a_state_directory_swapped_for_a_link_before_sqlite_opens_is_refused(
    trees: tuple[HostRoot, Path], monkeypatch: pytest.MonkeyPatch, readonly: bool
) -> None:
    root, other = trees
    before = snapshot(other, skip=())
    swapped = _swap_inside_connect(monkeypatch, root, other)
    with pytest.raises(RefusedError) as caught:
        ledger = Ledger.open(root, readonly=readonly)
        # The old code got here with SQLite holding the other state.db.
        with ledger:
            if not readonly:
                ledger.begin("written-through-the-link", {"files": []}).finish()
    assert swapped  # the attack ran
    assert caught.value.subject == "/var/lib/pcipass/state.db"
    assert "the state directory changed while pcipass opened it" in caught.value.problem
    assert snapshot(other, skip=()) == before


def test_without_a_swap_the_same_path_opens_and_reads_its_own_records(
    trees: tuple[HostRoot, Path],
) -> None:
    root, _other = trees
    with Ledger.open(root, readonly=True) as ledger:
        assert _open_kinds(ledger) == ["mine"]
    with Ledger.open(root) as ledger:
        assert _open_kinds(ledger) == ["mine"]
