"""Runtime hide/unhide on fake kernels: the document's procedure, refusals,
rollback, and recovery after an interruption at every step."""

from __future__ import annotations

import errno
import json

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import OperationFailed, RefusedError
from pcipass.ops.hide import hide_now, unhide_now
from pcipass.ops.recover import recover
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

A = PciAddress.parse


def drivers(lab: Lab, *names: str) -> list[str | None]:
    return [lab.fake.bound_driver(n) for n in names]


def test_document_procedure_hides_both_devices_through_pciback_slots(rhel5: Lab) -> None:
    before = snapshot(rhel5.base)
    result = hide_now(rhel5.host, [A("0000:09:00.0"), A("0000:0a:04.1")], Backend.PCIBACK)
    assert drivers(rhel5, "0000:09:00.0", "0000:0a:04.1") == ["pciback", "pciback"]
    # RHEL 5's kernel has no driver_override: pcipass used pciback's new_slot + bind.
    writes = [w for w in rhel5.kernel.writes]
    assert ("/sys/bus/pci/drivers/pciback/new_slot", "0000:09:00.0") in writes
    assert ("/sys/bus/pci/drivers/pciback/bind", "0000:09:00.0") in writes
    assert ("modprobe", "pciback") in rhel5.runner.calls
    assert [d.original_driver for d in result.done] == ["bnx2", "e1000"]
    ledger = Ledger.open(rhel5.host.root, readonly=True)
    record = ledger.get_hidden("0000:09:00.0")
    assert record is not None and record.original_driver == "bnx2"
    assert record.identity["device"] == "1639"
    ledger.close()
    # Giving them back restores every driver link exactly.
    unhide_now(rhel5.host, [A("0000:09:00.0"), A("0000:0a:04.1")])
    assert drivers(rhel5, "0000:09:00.0", "0000:0a:04.1") == ["bnx2", "e1000"]
    after = snapshot(
        rhel5.base, skip=("var/lib/pcipass", "sys/bus/pci/drivers/pciback", "sys/module/pciback")
    )
    before_cmp = {k: v for k, v in before.items() if not k.startswith("proc/modules")}
    after_cmp = {k: v for k, v in after.items() if not k.startswith("proc/modules")}
    assert after_cmp == before_cmp


def test_kvm_hide_uses_driver_override_and_never_new_id(kvm: Lab) -> None:

    hide_now(kvm.host, [A("0000:02:10.0")], Backend.VFIO)
    assert drivers(kvm, "0000:02:10.0", "0000:02:10.4") == ["vfio-pci", "igbvf"]
    paths = [p for p, _ in kvm.kernel.writes]
    assert "/sys/bus/pci/devices/0000:02:10.0/driver_override" in paths
    assert not any(p.endswith("/new_id") for p in paths)
    unhide_now(kvm.host, [A("0000:02:10.0")])
    assert drivers(kvm, "0000:02:10.0") == ["igbvf"]
    override = (kvm.fake.path_of("0000:02:10.0") / "driver_override").read_text()
    assert override == "(null)\n"


@pytest.mark.parametrize(
    ("address", "rule", "text"),
    [
        ("0000:05:00.0", "PP001", "the host uses it: carries the default route (eth0)"),
        ("0000:00:1f.2", "PP001", "mounted filesystem / (ext4 on /dev/sda1)"),
        ("0000:00:1e.0", "PP103", "is a PCI bridge; bridges are never assignable"),
        ("0000:00:02.0", "PP120", "is the boot GPU and holds the host's console: /dev/fb0"),
    ],
)
def test_refusals_name_the_reason_and_change_nothing(
    rhel5: Lab, address: str, rule: str, text: str
) -> None:
    before = snapshot(rhel5.base)
    with pytest.raises(RefusedError) as caught:
        hide_now(rhel5.host, [A(address)], Backend.PCIBACK)
    assert caught.value.rule == rule
    rendered = [f.render() for f in caught.value.findings]  # type: ignore[attr-defined]
    assert any(text in r for r in rendered)
    assert snapshot(rhel5.base) == before
    assert rhel5.kernel.writes == []


def test_partial_iommu_group_is_refused_and_names_the_others(kvm: Lab) -> None:
    before = snapshot(kvm.base)
    with pytest.raises(RefusedError) as caught:
        hide_now(kvm.host, [A("0000:01:00.0")], Backend.VFIO)
    assert caught.value.rule == "PP102"
    assert "IOMMU group" in caught.value.problem and "0000:01:00.1" in caught.value.problem
    # The other member is a function of the same card: the remedy says --all-functions.
    assert "pcipass hide --all-functions 0000:01:00.0" in caught.value.remedy
    assert snapshot(kvm.base) == before
    hide_now(kvm.host, [A("0000:01:00.0"), A("0000:01:00.1")], Backend.VFIO)
    assert drivers(kvm, "0000:01:00.0", "0000:01:00.1") == ["vfio-pci", "vfio-pci"]


def test_failure_on_second_device_rolls_back_the_first(rhel5: Lab) -> None:
    rhel5.kernel.fail("/sys/bus/pci/drivers/pciback/bind", errno.EBUSY, value="0000:0a:04.1")
    with pytest.raises(OperationFailed) as caught:
        hide_now(rhel5.host, [A("0000:09:00.0"), A("0000:0a:04.1")], Backend.PCIBACK)
    assert "Device or resource busy" in str(caught.value)
    assert "every device is back on its original driver" in str(caught.value)
    assert drivers(rhel5, "0000:09:00.0", "0000:0a:04.1") == ["bnx2", "e1000"]
    assert rhel5.kernel.pciback_slots == set()
    ledger = Ledger.open(rhel5.host.root, readonly=True)
    assert ledger.hidden() == [] and ledger.open_operations() == []
    ledger.close()


class Crash(BaseException):
    """Stands for a killed process: nothing in pcipass catches it."""


@pytest.mark.parametrize("after_effect", [False, True])
@pytest.mark.parametrize("crash_at", range(1, 7))
def test_interrupted_hide_is_recovered_after_every_step(
    kvm: Lab, crash_at: int, after_effect: bool
) -> None:
    """Killed before a write takes effect, or after it took effect but before
    the journal recorded it: recover restores the tree exactly."""
    group = [A("0000:01:00.0"), A("0000:01:00.1")]
    before = snapshot(
        kvm.base,
        skip=(
            "var/lib/pcipass",
            "sys/bus/pci/drivers/vfio-pci",
            "sys/module/vfio_pci",
            "proc/modules",
        ),
    )
    count = [0]

    def crash(path: str, value: str) -> None:
        count[0] += 1
        if count[0] == crash_at:
            raise Crash

    if after_effect:
        kvm.kernel.on_written = crash
    else:
        kvm.kernel.on_write = crash
    with pytest.raises(Crash):
        hide_now(kvm.host, group, Backend.VFIO)
    kvm.kernel.on_write = kvm.kernel.on_written = None
    report = recover(kvm.host)
    assert report and report[-1].endswith("rolled back")
    after = snapshot(
        kvm.base,
        skip=(
            "var/lib/pcipass",
            "sys/bus/pci/drivers/vfio-pci",
            "sys/module/vfio_pci",
            "proc/modules",
        ),
    )
    assert after == before
    ledger = Ledger.open(kvm.host.root, readonly=True)
    assert ledger.open_operations() == [] and ledger.hidden() == []
    ledger.close()
    assert recover(kvm.host) == []


def test_unhide_refuses_a_device_a_guest_owns(rhel5: Lab) -> None:
    hide_now(rhel5.host, [A("0000:09:00.0")], Backend.PCIBACK)
    ledger = Ledger.open(rhel5.host.root)
    ledger.claim("0000:09:00.0", "rhel5pv", config_kind="xm", config_path="/etc/xen/rhel5pv")
    ledger.close()
    with pytest.raises(RefusedError) as caught:
        unhide_now(rhel5.host, [A("0000:09:00.0")])
    assert "is assigned to guest rhel5pv" in str(caught.value)
    assert drivers(rhel5, "0000:09:00.0") == ["pciback"]


def test_identity_drift_fails_closed(rhel5: Lab) -> None:
    hide_now(rhel5.host, [A("0000:09:00.0")], Backend.PCIBACK)
    # Another card now answers at the same address.
    (rhel5.fake.path_of("0000:09:00.0") / "uevent").write_text(
        "DRIVER=pciback\nPCI_CLASS=20000\nPCI_ID=8086:10D3\nPCI_SUBSYS_ID=8086:0000\n"
    )
    before = snapshot(rhel5.base)
    with pytest.raises(RefusedError) as caught:
        hide_now(rhel5.host, [A("0000:09:00.0")], Backend.PCIBACK)
    assert snapshot(rhel5.base) == before
    assert caught.value.rule == "PP105"
    assert "vendor 14e4 -> 8086" in caught.value.problem
    assert "device 1639 -> 10d3" in caught.value.problem


def test_cli_hide_now_json_and_check_exit_codes(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(rhel5.base)
    assert main(["--root", root, "check", "09:00.0"]) == 0
    capsys.readouterr()
    assert main(["--root", root, "check", "05:00.0", "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert {f["rule"] for f in data["findings"]} == {"PP001"}
    assert main(["--root", root, "hide", "05:00.0", "--now", "--json"]) == 3
    err = json.loads(capsys.readouterr().out)
    assert err["rule"] == "PP001" and err["exit_code"] == 3
    assert main(["--root", root, "hide", "09:00.0"]) == 2
    assert "say --now" in capsys.readouterr().err


def test_without_iommu_groups_a_conventional_bus_is_one_isolation_unit(rhel5: Lab) -> None:
    from pcipass.ops.assignability import assignability_findings

    alone = assignability_findings(rhel5.host, [A("0000:0a:04.1")])
    pp102 = [f for f in alone if f.rule == "PP102"]
    assert len(pp102) == 1 and pp102[0].severity == "warn"
    assert "behind the conventional PCI bridge 0000:00:1e.0 with 0000:0a:04.0" in pp102[0].message
    together = assignability_findings(rhel5.host, [A("0000:0a:04.0"), A("0000:0a:04.1")])
    assert not [f for f in together if f.rule == "PP102"]
    # Behind a PCIe root port the device keeps its own requester ID.
    assert not [
        f for f in assignability_findings(rhel5.host, [A("0000:09:00.0")]) if f.rule == "PP102"
    ]
