"""attach/detach --live of a plain QEMU guest through QMP, against a QMP server
speaking the protocol on a real unix socket."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import RefusedError
from pcipass.guests.qemu_argv import qemu_name, qmp_socket, vfio_hosts
from pcipass.ops.hide import hide_now
from pcipass.ops.qemu_guest import find_qemu, qemu_live
from pcipass.state.ledger import Ledger
from pcipass.testing.fakeqmp import FakeQmp
from pcipass.testing.harness import Lab

VF = PciAddress.parse("0000:02:10.0")
VF_TEXT = str(VF)


@pytest.fixture
def qemu(kvm: Lab) -> Iterator[FakeQmp]:
    # The socket lives under the host root as /run/l2.qmp; binding through the
    # directory's descriptor dodges AF_UNIX's 108-byte path limit.
    run = kvm.base / "run"
    run.mkdir(exist_ok=True)
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fake = FakeQmp(Path(f"/proc/self/fd/{fd}/l2.qmp"), {"pt0": "0000:00:05.0"})
    finally:
        os.close(fd)
    argv = [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "l2",
        "-machine",
        "pc",
        "-qmp",
        "unix:/run/l2.qmp,server,nowait",
        "-device",
        "vfio-pci,host=00:05.0,id=pt0",
    ]
    kvm.fake.write_file("/proc/4242/cmdline", "\0".join(argv) + "\0")
    yield fake
    fake.close()


def test_argv_parsing_forms() -> None:
    argv = [
        "qemu-system-x86_64",
        "-name",
        "guest=win,debug-threads=on",
        "-chardev",
        "socket,id=mon0,path=/run/win.qmp,server=on,wait=off",
        "-mon",
        "chardev=mon0,mode=control",
        "-device",
        '{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0"}',
    ]
    assert qemu_name(argv) == "win"
    assert qmp_socket(argv) == "/run/win.qmp"
    assert vfio_hosts(argv) == ["0000:01:00.0"]


def test_find_qemu_reads_proc(kvm: Lab, qemu: FakeQmp) -> None:
    found = find_qemu(kvm.host, "l2")
    assert found is not None and found.pid == 4242
    assert found.devices == ["0000:00:05.0"]
    assert find_qemu(kvm.host, "nobody") is None


def test_attach_then_detach_live_through_qmp(kvm: Lab, qemu: FakeQmp) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    found = find_qemu(kvm.host, "l2")
    assert found is not None
    result = qemu_live(kvm.host, found, VF, "attach")
    adds = [c for c in qemu.commands if c["execute"] == "device_add"]
    assert adds == [
        {
            "execute": "device_add",
            "arguments": {
                "driver": "vfio-pci",
                "host": "0000:02:10.0",
                "id": "pcipass-0000-02-10-0",
            },
        }
    ]
    assert "guest-setup" in result.notes[0]
    ledger = Ledger.open(kvm.host.root, readonly=True)
    owner = ledger.owner(VF)
    assert owner is not None and owner.guest == "l2"
    assert [e.kind for e in ledger.hotplug_events(VF)] == ["attach"]
    ledger.close()
    result = qemu_live(kvm.host, found, VF, "detach")
    assert result.device_id == "pcipass-0000-02-10-0"
    assert "pcipass-0000-02-10-0" not in qemu.devices
    assert "pt0" in qemu.devices  # the device the guest was started with stays
    ledger = Ledger.open(kvm.host.root, readonly=True)
    assert ledger.owner(VF) is None
    ledger.close()


def test_attach_of_a_device_still_on_its_driver_is_refused_before_qmp(
    kvm: Lab, qemu: FakeQmp
) -> None:
    found = find_qemu(kvm.host, "l2")
    assert found is not None
    with pytest.raises(RefusedError) as caught:
        qemu_live(kvm.host, found, VF, "attach")
    assert caught.value.rule == "PP002"
    assert "is bound to igbvf, not vfio-pci" in str(caught.value)
    assert qemu.commands == []


def test_hotplug_limiter_refuses_past_the_budget(
    kvm: Lab, qemu: FakeQmp, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.mark_simulated()
    root = str(kvm.base)
    assert main(["--root", root, "hide", "--now", "--backend", "vfio", str(VF)]) == 0
    for _ in range(16):
        assert main(["--root", root, "attach", str(VF), "l2", "--live"]) == 0
        assert main(["--root", root, "detach", str(VF), "l2", "--live"]) == 0
    capsys.readouterr()
    sent = len(qemu.commands)
    assert main(["--root", root, "attach", str(VF), "l2", "--live"]) == 3
    err = capsys.readouterr().err
    assert "[PP007]" in err and "budget 32" in err and "next one is allowed at" in err
    # Refused before any hotplug: QEMU was only asked what it holds.
    assert {c["execute"] for c in qemu.commands[sent:]} <= {
        "qmp_capabilities",
        "qom-list",
        "qom-get",
    }
    assert VF_TEXT not in qemu.hosts()


def test_status_shows_the_hotplug_budget_used(
    kvm: Lab, qemu: FakeQmp, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.mark_simulated()
    root = str(kvm.base)
    assert main(["--root", root, "hide", "--now", "--backend", "vfio", str(VF)]) == 0
    assert main(["--root", root, "attach", str(VF), "l2", "--live"]) == 0
    assert main(["--root", root, "detach", str(VF), "l2", "--live"]) == 0
    capsys.readouterr()
    assert main(["--root", root, "status", "--json"]) == 0
    hotplug = json.loads(capsys.readouterr().out)["hotplug"]
    assert hotplug == [
        {
            "address": "0000:02:10.0",
            "events_in_window": 2,
            "budget": 32,
            "window_seconds": 600,
            "next_allowed": None,
        }
    ]
