"""Shared fixtures: fake hosts with a fake kernel behind the sysfs write seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipass.testing.example import build_kvm, build_rhel5_xen
from pcipass.testing.harness import Lab, make_lab


@pytest.fixture
def rhel5(tmp_path: Path) -> Lab:
    return make_lab(build_rhel5_xen(tmp_path / "rhel5"))


@pytest.fixture
def kvm(tmp_path: Path) -> Lab:
    return make_lab(build_kvm(tmp_path / "kvm"))
