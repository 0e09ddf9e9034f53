"""attach/detach --live through xl, xm and virsh: the ledger owns a hotplug
from the moment it may have happened, repeats hot-plug nothing, and the PP007
budget counts only hotplugs that happened.  The fake toolstack
(pcipass.testing.faketoolstack) remembers what each running guest holds:
every test ends with the ledger equal to that truth."""

from __future__ import annotations

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, RefusedError
from pcipass.ops.attach import attach, detach
from pcipass.ops.hide import hide_now, unhide_now
from pcipass.ops.recover import recover
from pcipass.runner import CommandResult
from pcipass.state.ledger import Ledger
from pcipass.testing.harness import Lab

NIC = PciAddress.parse("0000:09:00.0")
RHEL5PV = "/etc/xen/rhel5pv"


@pytest.fixture
def xm(rhel5: Lab) -> Lab:
    hide_now(rhel5.host, [NIC], Backend.PCIBACK)
    rhel5.runner.programs.add("xm")
    return rhel5


def state(lab: Lab) -> tuple[str | None, bool, list[str]]:
    with Ledger.open(lab.host.root, readonly=True) as ledger:
        owner = ledger.owner(NIC)
        events = [e.kind for e in ledger.hotplug_events(NIC)]
    return (owner.guest if owner else None, bool(owner and owner.uncertain), events)


def assert_ledger_is_the_toolstacks_truth(lab: Lab, guest: str) -> None:
    owner, uncertain, _ = state(lab)
    assert not uncertain
    in_guest = str(NIC) in lab.runner.toolstack.holds(guest)
    assert in_guest == (owner == guest)


def attach_live(lab: Lab) -> str:
    return attach(lab.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True).live


def test_xm_pci_list_columns_are_understood(xm: Lab) -> None:
    assert attach_live(xm) == "hot-plugged"
    listed = xm.host.runner.run(["xm", "pci-list", "rhel5pv"])
    assert "0x09" in listed.stdout  # xm's hex columns, not a BDF
    assert attach_live(xm) == "already attached"


def test_repeats_hot_plug_nothing_and_cost_nothing(xm: Lab) -> None:
    assert attach_live(xm) == "hot-plugged"
    assert attach_live(xm) == "already attached"
    assert detach(xm.host, NIC, "rhel5pv", live=True).live == "unplugged"
    assert detach(xm.host, NIC, "rhel5pv", live=True).live == "not attached"
    calls = [c for c in xm.runner.calls if c[1] in ("pci-attach", "pci-detach")]
    assert calls == [
        ("xm", "pci-attach", "rhel5pv", "0000:09:00.0"),
        ("xm", "pci-detach", "rhel5pv", "0000:09:00.0"),
    ]
    assert state(xm) == (None, False, ["attach", "detach"])
    assert_ledger_is_the_toolstacks_truth(xm, "rhel5pv")


def test_failed_hotplugs_do_not_spend_the_budget(xm: Lab) -> None:
    xm.runner.answers["xm pci-attach"] = CommandResult(("xm",), 1, "", "Error: no irq\n")
    for _ in range(40):  # more than the budget of 32
        with pytest.raises(OperationFailed, match="Error: no irq"):
            attach_live(xm)
    assert state(xm) == (None, False, [])
    del xm.runner.answers["xm pci-attach"]
    assert attach_live(xm) == "hot-plugged"  # not locked out
    assert_ledger_is_the_toolstacks_truth(xm, "rhel5pv")


def test_no_xm_costs_nothing(rhel5: Lab) -> None:
    hide_now(rhel5.host, [NIC], Backend.PCIBACK)
    for _ in range(40):
        with pytest.raises(OperationFailed, match="not available for this root"):
            attach_live(rhel5)
    assert state(rhel5) == (None, False, [])


def test_a_timed_out_pci_attach_that_happened_is_recorded(xm: Lab) -> None:
    class LateXm:
        """xm pci-attach does its work, then the runner gives up waiting (exit 124)."""

        def __init__(self, lab: Lab) -> None:
            self.inner = lab.runner

        def run(self, argv: list[str], **kwargs: object) -> CommandResult:
            done = self.inner.run(argv)
            if argv[:2] == ["xm", "pci-attach"]:
                return CommandResult(tuple(argv), 124, "", "timed out after 300.0s")
            return done

        def which(self, program: str) -> str | None:
            return self.inner.which(program)

    xm.host.runner = LateXm(xm)  # type: ignore[assignment]
    assert attach_live(xm) == "hot-plugged"  # xm pci-list was asked: it is there
    assert state(xm) == ("rhel5pv", False, ["attach"])
    assert_ledger_is_the_toolstacks_truth(xm, "rhel5pv")


def test_unknown_outcome_that_nobody_can_settle_blocks_unhide(xm: Lab) -> None:
    xm.runner.answers["xm pci-attach"] = CommandResult(("xm",), 124, "", "timed out after 300s")
    xm.runner.answers["xm pci-list"] = CommandResult(("xm",), 1, "", "Error: xend down\n")
    with pytest.raises(OperationFailed) as caught:
        attach_live(xm)
    assert "recorded as maybe in guest rhel5pv" in caught.value.remedy
    assert state(xm)[:2] == ("rhel5pv", True)
    with pytest.raises(RefusedError) as refused:
        unhide_now(xm.host, [NIC])
    assert "may be in guest rhel5pv" in refused.value.problem
    assert xm.fake.bound_driver(str(NIC)) == "pciback"
    report = recover(xm.host)  # xend still cannot say: the device stays reserved
    assert any("may be in guest rhel5pv" in line for line in report)
    assert state(xm)[:2] == ("rhel5pv", True)
    del xm.runner.answers["xm pci-list"]
    report = recover(xm.host)  # now xm answers: the guest does not hold it
    assert any("is not in guest rhel5pv" in line for line in report)
    assert_ledger_is_the_toolstacks_truth(xm, "rhel5pv")


def test_output_says_already_attached_instead_of_hot_plugged(xm: Lab) -> None:
    first = attach(xm.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    assert "0000:09:00.0: hot-plugged into running guest rhel5pv" in first.render_lines()
    again = attach(xm.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    lines = again.render_lines()
    assert "0000:09:00.0: already attached to running guest rhel5pv; nothing hot-plugged" in lines
    assert not any("hot-plugged into" in line or line.startswith("ran:") for line in lines)
    assert again.to_json()["live"] == "already attached"


def test_virsh_repeats_and_a_stopped_domain(kvm: Lab) -> None:
    vf = PciAddress.parse("0000:02:10.0")
    hide_now(kvm.host, [vf], Backend.VFIO)
    kvm.runner.programs.add("virsh")
    assert attach(kvm.host, vf, "win10", live=True).live == "hot-plugged"
    assert kvm.runner.toolstack.holds("win10") == {str(vf)}
    assert attach(kvm.host, vf, "win10", live=True).live == "already attached"
    # Stopped: its dumpxml would be the definition (which lists the device);
    # there is no running guest to unplug from, and nothing is counted.
    kvm.runner.answers["virsh -c qemu:///system domstate"] = CommandResult(
        ("virsh",), 0, "shut off\n", ""
    )
    result = detach(kvm.host, vf, "win10", live=True)
    assert result.live == "not attached" and result.changed
    with Ledger.open(kvm.host.root, readonly=True) as ledger:
        assert ledger.owner(vf) is None
        assert [e.kind for e in ledger.hotplug_events(vf)] == ["attach"]
    unplugs = [c for c in kvm.runner.calls if c[0] == "virsh" and c[3] == "detach-device"]
    assert unplugs == []


class Killed(BaseException):
    """Stands for SIGKILL: nothing in pcipass catches it."""


def kill_at_write(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Kill the process just before its ``n``-th committed ledger write (0: never)."""
    import contextlib
    from collections.abc import Iterator

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
def test_killed_at_every_ledger_write_recover_finds_the_toolstacks_truth(
    xm: Lab, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    def run(which: str) -> None:
        if which == "attach":
            attach_live(xm)
        else:
            detach(xm.host, NIC, "rhel5pv", live=True)

    if action == "detach":
        run("attach")
    with monkeypatch.context() as patch:
        writes = kill_at_write(patch, 0)
        run(action)
    total = writes[0]
    run("detach" if action == "attach" else "attach")
    assert total >= 3
    for n in range(1, total + 1):
        with monkeypatch.context() as patch:
            kill_at_write(patch, n)
            with pytest.raises(Killed):
                run(action)
        recover(xm.host)
        assert_ledger_is_the_toolstacks_truth(xm, "rhel5pv")
        with Ledger.open(xm.host.root, readonly=True) as ledger:
            assert ledger.open_operations() == []
        in_guest = str(NIC) in xm.runner.toolstack.holds("rhel5pv")
        if (action == "attach") == in_guest:
            run("detach" if action == "attach" else "attach")
