"""Shared fixtures: fake hosts with a fake kernel behind the sysfs write seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.host.root import HostRoot
from pcipass.state.ledger import Ledger
from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.harness import FakeClock, Lab, make_lab
from pcipass.testing.tools import check_needs_tool


def pytest_runtest_setup(item: pytest.Item) -> None:
    # @pytest.mark.needs_tool("lspci"): skipped without the program, FAILED
    # under CI (naming the Debian package), so a CI machine cannot go green
    # by skipping the cross-checks against the real tools.
    check_needs_tool(item)


@pytest.fixture
def rhel5(tmp_path: Path) -> Lab:
    return make_lab(build_rhel5_xen(tmp_path / "rhel5"))


@pytest.fixture
def kvm(tmp_path: Path) -> Lab:
    return make_lab(build_kvm(tmp_path / "kvm"))


@pytest.fixture
def gpu(tmp_path: Path) -> Lab:
    """The example host with two GPUs (pcipass.testing.gpu_host)."""
    from pcipass.testing.gpu_host import build_gpu

    return make_lab(build_gpu(tmp_path / "gpu"))


@pytest.fixture
def root(tmp_path: Path) -> HostRoot:
    """An empty host root (for the state layer's tests)."""
    return HostRoot.at(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(root: HostRoot, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(root, clock=clock) as opened:
        yield opened
