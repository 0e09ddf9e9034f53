"""save/restore/migrate through pcipass: the safe path around PP003 (xl guests)."""

from __future__ import annotations

import re

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, RefusedError
from pcipass.ops.attach import attach
from pcipass.ops.hide import hide_now
from pcipass.ops.safe_save import safe_migrate, safe_restore, safe_save
from pcipass.runner import CommandResult
from pcipass.state.ledger import Ledger
from pcipass.testing.harness import Lab

NIC = PciAddress.parse("0000:09:00.0")
DOMU = 'name = "domu"\ntype = "pv"\nkernel = "/boot/vmlinuz"\nmemory = 256\n'


@pytest.fixture
def domu(rhel5: Lab) -> Lab:
    rhel5.fake.write_file("/etc/xen/domu.cfg", DOMU)
    rhel5.runner.programs.add("xl")
    hide_now(rhel5.host, [NIC], Backend.PCIBACK)
    attach(rhel5.host, NIC, "domu", accept_pv_dma_risk=True)
    rhel5.runner.toolstack.running["domu"] = {str(NIC)}  # started with its device
    assert 'passthrough = "enabled"' in (rhel5.base / "etc/xen/domu.cfg").read_text()
    rhel5.runner.calls.clear()
    return rhel5


def xl_calls(lab: Lab) -> list[tuple[str, ...]]:
    return [c for c in lab.runner.calls if c[0] == "xl"]


def test_save_detaches_first_and_restore_attaches_again(domu: Lab) -> None:
    result = safe_save(domu.host, "domu", "/var/lib/xen/save/domu")
    assert xl_calls(domu) == [
        ("xl", "pci-detach", "domu", "0000:09:00.0"),
        ("xl", "save", "domu", "/var/lib/xen/save/domu"),
    ]
    assert "pcipass restore /var/lib/xen/save/domu domu" in result.notes[0]
    domu.runner.calls.clear()
    safe_restore(domu.host, "/var/lib/xen/save/domu", "domu")
    assert xl_calls(domu) == [
        ("xl", "restore", "/var/lib/xen/save/domu"),
        ("xl", "pci-attach", "domu", "0000:09:00.0"),
    ]
    ledger = Ledger.open(domu.host.root, readonly=True)
    assert [e.kind for e in ledger.hotplug_events(NIC)] == ["detach", "attach"]
    owner = ledger.owner(NIC)
    assert owner is not None and owner.guest == "domu"
    ledger.close()


def test_a_failed_save_gives_the_running_guest_its_devices_back(domu: Lab) -> None:
    domu.runner.answers["xl save"] = CommandResult(("xl",), 1, "", "xc: error: Save failed\n")
    with pytest.raises(OperationFailed) as caught:
        safe_save(domu.host, "domu", "/tmp/domu.save")
    assert "Save failed" in str(caught.value)
    assert xl_calls(domu)[-1] == ("xl", "pci-attach", "domu", "0000:09:00.0")


def test_save_is_refused_without_passthrough_enabled(domu: Lab) -> None:
    cfg = domu.base / "etc/xen/domu.cfg"
    cfg.write_text(re.sub(r'passthrough = "enabled".*\n', "", cfg.read_text()))
    with pytest.raises(RefusedError) as caught:
        safe_save(domu.host, "domu", "/tmp/domu.save")
    assert caught.value.rule == "PP003"
    assert 'lacks passthrough="enabled"' in str(caught.value)
    assert xl_calls(domu) == []


def test_save_of_an_xm_guest_is_refused(rhel5: Lab) -> None:
    with pytest.raises(RefusedError) as caught:
        safe_save(rhel5.host, "rhel5pv", "/tmp/x")
    assert "xl guests only" in str(caught.value)


def test_restore_fails_closed_when_the_address_names_another_card(domu: Lab) -> None:
    safe_save(domu.host, "domu", "/tmp/domu.save")
    (domu.fake.path_of("0000:09:00.0") / "uevent").write_text(
        "DRIVER=pciback\nPCI_CLASS=20000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:0000\n"
    )
    domu.runner.calls.clear()
    with pytest.raises(RefusedError) as caught:
        safe_restore(domu.host, "/tmp/domu.save", "domu")
    assert caught.value.rule == "PP105"
    assert xl_calls(domu) == []


def test_migrate_frees_this_hosts_devices_and_says_what_to_do_there(domu: Lab) -> None:
    result = safe_migrate(domu.host, "domu", "xen2")
    assert xl_calls(domu) == [
        ("xl", "pci-detach", "domu", "0000:09:00.0"),
        ("xl", "migrate", "domu", "xen2"),
    ]
    assert "pcipass attach --live BDF domu" in result.notes[0]
    ledger = Ledger.open(domu.host.root, readonly=True)
    assert ledger.owner(NIC) is None
    ledger.close()


def test_an_interrupted_save_is_reported_by_recover(domu: Lab) -> None:
    from pcipass.ops.recover import recover

    class Killed(BaseException):
        pass

    original = domu.runner.run

    def killed_at_save(argv: object, **kwargs: object) -> CommandResult:
        if list(argv)[:2] == ["xl", "save"]:  # type: ignore[call-overload]
            raise Killed
        return original(argv, **kwargs)  # type: ignore[arg-type]

    domu.runner.run = killed_at_save  # type: ignore[method-assign]
    with pytest.raises(Killed):
        safe_save(domu.host, "domu", "/tmp/domu.save")
    domu.runner.run = original  # type: ignore[method-assign]
    report = recover(domu.host)
    assert any(
        "(safe-save): interrupted; 0000:09:00.0 stay reserved for domu" in line for line in report
    )
    ledger = Ledger.open(domu.host.root, readonly=True)
    owner = ledger.owner(NIC)
    assert owner is not None and owner.guest == "domu" and ledger.open_operations() == []
    ledger.close()
