"""attach/detach --live through QMP against a QEMU that misbehaves.

QMP replies are untrusted input, and a hotplug whose answer was lost may
still have happened: every test ends with the ledger equal to QEMU's truth
(the fake server's device list), and the PP007 budget counting only the
hotplugs that happened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, RefusedError
from pcipass.guests.qmp import MAX_MESSAGE_BYTES, QmpClient, QmpError
from pcipass.ops.hide import hide_now, unhide_now
from pcipass.ops.qemu_guest import QemuGuest, find_qemu, qemu_live
from pcipass.ops.recover import recover
from pcipass.state.ledger import Ledger
from pcipass.testing import fakeqmp
from pcipass.testing.fakeqmp import FakeQmp
from pcipass.testing.harness import Lab

VF = PciAddress.parse("0000:02:10.0")
# Short, so a silent QEMU costs the suite little; no test asserts on time.
TIMEOUT = 0.5


@pytest.fixture
def qemu(kvm: Lab) -> Iterator[FakeQmp]:
    run = kvm.base / "run"
    run.mkdir(exist_ok=True)
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fake = FakeQmp(Path(f"/proc/self/fd/{fd}/l2.qmp"))
    finally:
        os.close(fd)
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "l2", "-qmp", "unix:/run/l2.qmp,server,nowait"]
    kvm.fake.write_file("/proc/4242/cmdline", "\0".join(argv) + "\0")
    hide_now(kvm.host, [VF], Backend.VFIO)
    yield fake
    fake.close()


def socket_path(kvm: Lab) -> str:
    return str(kvm.base / "run" / "l2.qmp")


def guest(kvm: Lab) -> QemuGuest:
    found = find_qemu(kvm.host, "l2")
    assert found is not None
    return found


def ledger_view(kvm: Lab) -> tuple[str | None, bool, list[str]]:
    """(owner, owner uncertain, hotplug events) of VF."""
    with Ledger.open(kvm.host.root, readonly=True) as ledger:
        owner = ledger.owner(VF)
        events = [e.kind for e in ledger.hotplug_events(VF)]
    return (owner.guest if owner else None, bool(owner and owner.uncertain), events)


def assert_ledger_is_qemus_truth(kvm: Lab, qemu: FakeQmp) -> None:
    owner, uncertain, _ = ledger_view(kvm)
    assert not uncertain
    assert (owner == "l2") == (str(VF) in qemu.hosts())


def live(kvm: Lab, action: str) -> str:
    return qemu_live(kvm.host, guest(kvm), VF, action, timeout=TIMEOUT).outcome


# --- answers lost after QEMU acted --------------------------------------------------


@pytest.mark.parametrize("how", [fakeqmp.LATE, fakeqmp.GARBAGE, fakeqmp.HUGE, fakeqmp.CLOSE])
def test_device_add_answer_lost_after_qemu_acted_records_the_truth(
    kvm: Lab, qemu: FakeQmp, how: str
) -> None:
    qemu.misbehave("device_add", how)
    assert live(kvm, "attach") == "hot-plugged"  # asked QEMU again: it holds the device
    assert str(VF) in qemu.hosts()
    assert ledger_view(kvm) == ("l2", False, ["attach"])
    assert_ledger_is_qemus_truth(kvm, qemu)


def test_silent_device_add_is_asked_about_and_costs_nothing(kvm: Lab, qemu: FakeQmp) -> None:
    qemu.misbehave("device_add", fakeqmp.SILENT)
    with pytest.raises(OperationFailed) as caught:
        live(kvm, "attach")
    assert "no answer within" in caught.value.problem
    assert "guest l2 does not hold 0000:02:10.0; nothing was changed" in caught.value.remedy
    assert ledger_view(kvm) == (None, False, [])  # nothing happened, nothing counted
    assert_ledger_is_qemus_truth(kvm, qemu)


@pytest.mark.parametrize(
    "reply",
    [{"error": "boom"}, [1, 2], {"return": 1, "error": None}, {"neither": True}, "text"],
)
def test_valid_but_odd_json_is_a_clear_error_not_a_crash(
    kvm: Lab, qemu: FakeQmp, reply: object
) -> None:
    qemu.misbehave("device_add", reply)
    with pytest.raises(OperationFailed) as caught:
        live(kvm, "attach")
    assert caught.value.subject == "QMP device_add"
    assert "unexpected reply" in caught.value.problem
    assert ledger_view(kvm) == (None, False, [])
    assert_ledger_is_qemus_truth(kvm, qemu)


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("qom-list", {"return": {"not": "a list"}}),
        ("qom-list", {"return": [None, 3]}),
        ("qom-list", {"return": None}),
        ("qom-list", {"error": {"desc": None}}),
        ("qmp_capabilities", [1]),
    ],
)
def test_client_names_the_command_of_an_odd_reply(
    kvm: Lab, qemu: FakeQmp, command: str, reply: object
) -> None:
    from pcipass.guests.qmp import expect_list_of_objects

    qemu.misbehave(command, reply)
    with pytest.raises(QmpError) as caught, QmpClient(socket_path(kvm), timeout=TIMEOUT) as client:
        expect_list_of_objects(
            "qom-list", client.execute("qom-list", {"path": "/machine/peripheral"})
        )
    assert caught.value.subject == f"QMP {command}"
    assert "unexpected reply" in caught.value.problem


def test_a_message_without_end_of_line_is_capped(kvm: Lab, qemu: FakeQmp) -> None:
    qemu.misbehave("qom-list", fakeqmp.HUGE)
    with pytest.raises(QmpError) as caught, QmpClient(socket_path(kvm), timeout=5.0) as client:
        client.execute("qom-list", {"path": "/machine/peripheral"})
    assert f"over {MAX_MESSAGE_BYTES >> 20} MiB without an end of line" in caught.value.problem
    assert caught.value.subject == "QMP qom-list"


# --- outcome unknown: "maybe in guest" -------------------------------------------------


def test_ctrl_c_during_device_add_records_qemus_truth_before_exiting(
    kvm: Lab, qemu: FakeQmp
) -> None:
    qemu.misbehave("device_add", fakeqmp.INTERRUPT)
    with pytest.raises(KeyboardInterrupt):
        qemu_live(kvm.host, guest(kvm), VF, "attach", timeout=30.0)
    assert str(VF) in qemu.hosts()  # QEMU added it before the Ctrl-C
    # The interrupted command asked QEMU (query-pci/qom) before it exited.
    assert ledger_view(kvm)[:2] == ("l2", False)
    assert_ledger_is_qemus_truth(kvm, qemu)
    with pytest.raises(RefusedError) as caught:
        unhide_now(kvm.host, [VF])
    assert "l2" in caught.value.problem
    assert kvm.fake.bound_driver(str(VF)) == "vfio-pci"  # not handed back to the host
    assert recover(kvm.host) == []  # nothing was left to settle


def test_unanswerable_outcome_marks_maybe_and_a_repeat_settles_it(kvm: Lab, qemu: FakeQmp) -> None:
    # device_add is done but answered late; QEMU then cannot be asked (the
    # third qom-list is the one after the timeout).
    qemu.misbehave("device_add", fakeqmp.LATE)
    qemu.misbehave("qom-list", None, None, fakeqmp.SILENT)
    with pytest.raises(OperationFailed) as caught:
        live(kvm, "attach")
    assert "recorded as maybe in guest l2" in caught.value.remedy
    assert ledger_view(kvm) == ("l2", True, ["attach"])
    with pytest.raises(RefusedError):
        unhide_now(kvm.host, [VF])
    assert live(kvm, "attach") == "already attached"  # the repeat asks, hot-plugs nothing
    assert ledger_view(kvm) == ("l2", False, ["attach"])
    assert_ledger_is_qemus_truth(kvm, qemu)


# --- detach ---------------------------------------------------------------------------


def test_guest_that_never_releases_the_device_says_why_and_keeps_it_owned(
    kvm: Lab, qemu: FakeQmp
) -> None:
    assert live(kvm, "attach") == "hot-plugged"
    qemu.guest_releases = False
    with pytest.raises(OperationFailed) as caught:
        live(kvm, "detach")
    text = caught.value.render()
    assert (
        "the guest did not release the device (is acpiphp loaded in the guest? "
        "see `pcipass guest-setup`)" in text
    )
    assert "no answer" not in text
    assert "still holds 0000:02:10.0" in text
    assert str(VF) in qemu.hosts()
    assert ledger_view(kvm) == ("l2", False, ["attach"])  # the failed unplug is not counted
    assert_ledger_is_qemus_truth(kvm, qemu)


def test_device_del_answered_late_but_done_is_recorded_as_done(kvm: Lab, qemu: FakeQmp) -> None:
    assert live(kvm, "attach") == "hot-plugged"
    qemu.misbehave("device_del", fakeqmp.LATE)
    assert live(kvm, "detach") == "unplugged"
    assert ledger_view(kvm) == (None, False, ["attach", "detach"])
    assert_ledger_is_qemus_truth(kvm, qemu)


# --- PP007 counts hotplugs that happened ------------------------------------------------


def test_repeats_say_already_attached_and_not_attached_and_cost_nothing(
    kvm: Lab, qemu: FakeQmp
) -> None:
    assert live(kvm, "attach") == "hot-plugged"
    assert live(kvm, "attach") == "already attached"
    assert live(kvm, "detach") == "unplugged"
    assert live(kvm, "detach") == "not attached"
    assert ledger_view(kvm) == (None, False, ["attach", "detach"])
    assert_ledger_is_qemus_truth(kvm, qemu)


def test_device_add_refused_by_qemu_costs_nothing(kvm: Lab, qemu: FakeQmp) -> None:
    qemu.misbehave("device_add", {"error": {"class": "GenericError", "desc": "vfio: no IOMMU"}})
    for _ in range(40):  # more than the budget of 32: none of them counts
        with pytest.raises(OperationFailed, match="vfio: no IOMMU"):
            live(kvm, "attach")
        qemu.misbehave("device_add", {"error": {"class": "GenericError", "desc": "vfio: no IOMMU"}})
    qemu.misbehave("device_add")
    assert ledger_view(kvm) == (None, False, [])
    assert live(kvm, "attach") == "hot-plugged"
    assert_ledger_is_qemus_truth(kvm, qemu)


def test_no_qmp_listener_costs_nothing(kvm: Lab, qemu: FakeQmp) -> None:
    qemu.close()
    (kvm.base / "run" / "l2.qmp").unlink()
    for _ in range(40):
        with pytest.raises(OperationFailed, match="cannot connect to QEMU's QMP socket"):
            live(kvm, "attach")
    assert ledger_view(kvm) == (None, False, [])


def test_the_state_lock_is_free_while_qemu_waits_for_the_guest(kvm: Lab, qemu: FakeQmp) -> None:
    from pcipass.state.lock import StateLock

    assert live(kvm, "attach") == "hot-plugged"
    seen: list[str] = []

    def another_pcipass() -> None:
        # What another pcipass command finds while this one waits for the
        # guest: the lock is free, and the device is still owned by l2.
        try:
            with StateLock(kvm.host.root, timeout=0):
                seen.append("lock free")
        except OperationFailed:
            seen.append("lock held")
        with Ledger.open(kvm.host.root, readonly=True) as ledger:
            owner = ledger.owner(VF)
        seen.append(f"owner {owner.guest if owner else None}")

    qemu.on_command["device_del"] = another_pcipass
    assert live(kvm, "detach") == "unplugged"
    assert seen == ["lock free", "owner l2"]
    assert_ledger_is_qemus_truth(kvm, qemu)


# --- killed at every ledger write -----------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing in pcipass catches it."""


def kill_at_write(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Kill the process just before its ``n``-th committed ledger write
    (0: never).  Returns the running count."""
    import contextlib

    original = Ledger._write
    count = [0]

    @contextlib.contextmanager
    def counted(self: Ledger) -> Iterator[object]:
        count[0] += 1
        if count[0] == n:
            raise Killed
        with original(self) as conn:
            yield conn

    monkeypatch.setattr(Ledger, "_write", counted)
    return count


@pytest.mark.parametrize("action", ["attach", "detach"])
def test_killed_at_every_ledger_write_recover_finds_qemus_truth(
    kvm: Lab, qemu: FakeQmp, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    if action == "detach":
        assert live(kvm, "attach") == "hot-plugged"
    with monkeypatch.context() as patch:
        writes = kill_at_write(patch, 0)
        live(kvm, action)
    total = writes[0]
    live(kvm, "detach" if action == "attach" else "attach")  # back to the start
    assert total >= 2
    for n in range(1, total + 1):
        with monkeypatch.context() as patch:
            kill_at_write(patch, n)
            with pytest.raises(Killed):
                live(kvm, action)
        recover(kvm.host)
        assert_ledger_is_qemus_truth(kvm, qemu)
        # Back to the start for the next instant, whatever this one left.
        if (action == "attach") == (str(VF) in qemu.hosts()):
            live(kvm, "detach" if action == "attach" else "attach")
