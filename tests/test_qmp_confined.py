"""The QMP socket named in /proc/PID/cmdline is opened inside the root (#11).

A hostile tree under ``--root`` can make the socket path of a QEMU command
line (``-qmp unix:/run/l2.qmp,...``) lead out of the root through a link: a
directory link (``run -> /elsewhere``) or a link as the socket itself.  pcipass
must not connect there (a QEMU outside the root would get ``device_add``):
it refuses with exit 3 naming the link, sends nothing, and records nothing.
A link that stays inside the root is followed.  A component swapped for a
link after pcipass checked the path still cannot redirect the connection,
because the connection goes to the socket's inode by descriptor.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import OperationFailed
from pcipass.host import confined
from pcipass.ops.hide import hide_now
from pcipass.ops.qemu_guest import find_qemu, qemu_live, qemu_toolstack
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.fakeqmp import FakeQmp
from pcipass.testing.harness import Lab

VF = PciAddress.parse("0000:02:10.0")
TIMEOUT = 0.5


@pytest.fixture(params=["kernel", "walk"])
def resolution(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = str(request.param)
    if mode == "kernel" and not confined.kernel_resolution_available():
        pytest.skip("this kernel has no openat2")
    old = confined.set_resolution(mode)
    yield mode
    confined.set_resolution(old)


def _serve(directory: Path, name: str = "l2.qmp") -> FakeQmp:
    """A QMP server bound in ``directory`` (through its descriptor: test paths
    are longer than a unix socket's 108 bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return FakeQmp(Path(f"/proc/self/fd/{fd}/{name}"))
    finally:
        os.close(fd)


@pytest.fixture
def l2(kvm: Lab, resolution: str) -> Lab:
    """QEMU "l2" runs with ``-qmp unix:/run/l2.qmp``; VF is hidden for vfio."""
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "l2", "-qmp", "unix:/run/l2.qmp,server,nowait"]
    kvm.fake.write_file("/proc/4242/cmdline", "\0".join(argv) + "\0")
    hide_now(kvm.host, [VF], Backend.VFIO)
    kvm.fake.mark_simulated()
    return kvm


@dataclass
class Outside:
    """A QEMU outside the root, listening on DIRECTORY/l2.qmp."""

    server: FakeQmp
    directory: Path


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Outside]:
    server = _serve(tmp_path / "outside")
    yield Outside(server, tmp_path / "outside")
    server.close()


def _owner(lab: Lab) -> str | None:
    with Ledger.open(lab.host.root, readonly=True) as ledger:
        owner = ledger.owner(VF)
    return owner.guest if owner else None


def _refused(lab: Lab, outside: Outside, link: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(lab.base)
    code = main(["--root", str(lab.base), "attach", "--live", str(VF), "l2"])
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if not line.startswith("pcipass: simulated kernel:")
    ]
    assert code == 3
    assert len(err) == 1 and err[0].startswith("pcipass: ")
    assert f"{link} is a symbolic link to {outside.directory}" in err[0]
    assert outside.server.commands == []  # never connected: QEMU outside got nothing
    assert outside.server.hosts() == set()
    assert snapshot(lab.base) == before
    assert _owner(lab) is None


def test_a_socket_directory_linked_out_of_the_root_is_refused(
    l2: Lab, outside: Outside, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink(outside.directory, l2.base / "run")
    _refused(l2, outside, "/run", capsys)


def test_a_socket_that_is_a_link_out_of_the_root_is_refused(
    l2: Lab, outside: Outside, capsys: pytest.CaptureFixture[str]
) -> None:
    (l2.base / "run").mkdir()
    os.symlink(outside.directory / "l2.qmp", l2.base / "run" / "l2.qmp")
    _refused(l2, outside, "/run/l2.qmp", capsys)


def test_a_socket_link_inside_the_root_is_followed(l2: Lab) -> None:
    inside = _serve(l2.base / "var" / "run" / "qemu")
    try:
        (l2.base / "run").mkdir()
        os.symlink("/var/run/qemu/l2.qmp", l2.base / "run" / "l2.qmp")  # absolute: in the root
        qemu = find_qemu(l2.host, "l2")
        assert qemu is not None
        assert qemu_live(l2.host, qemu, VF, "attach", timeout=TIMEOUT).outcome == "hot-plugged"
        assert inside.hosts() == {str(VF)}
        assert _owner(l2) == "l2"
    finally:
        inside.close()


def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    l2: Lab, outside: Outside
) -> None:
    inside = _serve(l2.base / "run")
    try:
        qemu = find_qemu(l2.host, "l2")
        assert qemu is not None
        toolstack = qemu_toolstack(l2.host, qemu, timeout=TIMEOUT)  # checked: inside the root
        # The attacker swaps /run for a link to the QEMU outside, then pcipass connects.
        shutil.rmtree(l2.base / "run")
        os.symlink(outside.directory, l2.base / "run")
        with pytest.raises(OperationFailed) as caught:
            toolstack.hotplug(VF, "attach")
        assert "/run is a symbolic link to" in caught.value.problem
        assert outside.server.commands == []
        assert outside.server.hosts() == set() and inside.hosts() == set()
    finally:
        inside.close()
