"""One stub vocabulary: hiding now and hiding at boot name the same Xen module."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipass.backend import Backend
from pcipass.host import binding
from pcipass.host.context import Host
from pcipass.host.platform import detect_platform
from pcipass.host.stubs import XEN_DRIVER, xen_stub_module
from pcipass.testing.fakehost import FakeHost


def _host_with_modules(base: Path, release: str, modules: list[str]) -> Host:
    fake = FakeHost(base, kernel_release=release)
    dep = "".join(f"kernel/drivers/xen/{m}/{m}.ko:\n" for m in modules)
    fake.write_file(f"/lib/modules/{release}/modules.dep", dep)
    return Host.open(base)


@pytest.mark.parametrize(
    ("release", "modules", "expected"),
    [
        ("2.6.18-398.el5xen", ["pciback"], "pciback"),
        ("6.1.0-26-amd64", ["xen-pciback"], "xen-pciback"),
        # A 3.x+ kernel built with the xenlinux patches (module named pciback):
        # the module tree, not the version, decides.
        ("3.0.101-63-xen", ["pciback"], "pciback"),
        # No module tree for the release: a 2.6 kernel is a xenlinux one.
        ("2.6.32-5-xen-amd64", [], "pciback"),
        ("5.10.0-9-amd64", [], "xen-pciback"),
    ],
)
def test_hide_now_and_persist_agree_on_the_xen_module(
    tmp_path: Path, release: str, modules: list[str], expected: str
) -> None:
    host = _host_with_modules(tmp_path, release, modules)
    stub = binding.stub_for(host, Backend.PCIBACK)
    assert stub.driver == XEN_DRIVER  # both modules register the driver "pciback"
    assert stub.module == expected
    assert detect_platform(host.root).xen_stub == expected


def test_the_tree_wins_over_the_kernel_generation() -> None:
    assert xen_stub_module({"xen-pciback"}, old_kernel=True) == "xen-pciback"
    assert xen_stub_module(set(), old_kernel=True) == "pciback"
    assert xen_stub_module(set(), old_kernel=False) == "xen-pciback"
