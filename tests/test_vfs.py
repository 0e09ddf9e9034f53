"""``pcipass vfs``: SR-IOV VFs created, changed and removed on the fake kernel.

The example KVM host's igb PF 0000:02:00.0 has 2 of 7 VFs (02:10.0, 02:10.4, on
igbvf), First VF Offset 0x80 and stride 4; the fake kernel (testing/fakesriov.py)
creates and removes VFs as drivers/pci/iov.c does.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.errors import OperationFailed, RefusedError, UsageError
from pcipass.host import sriov
from pcipass.ops.recover import recover
from pcipass.ops.vfs import list_vfs, set_vfs
from pcipass.persist.udev_vfs import RULES_FILE
from pcipass.state.ledger import Ledger
from pcipass.testing import fakesriov
from pcipass.testing.crash import KillAt, SimulatedKill
from pcipass.testing.example import build_kvm
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab, make_lab

PF = PciAddress.parse("0000:02:00.0")
OLD_VFS = ["0000:02:10.0", "0000:02:10.4"]
NEW_VFS = ["0000:02:10.0", "0000:02:10.4", "0000:02:11.0", "0000:02:11.4"]


def vf_state(lab: Lab) -> dict[str, object]:
    """What a VF change may touch: the PF's count and autoprobe, each VF and its
    driver, the rules file (group numbers change on re-creation, as on Linux)."""
    pf_dir = lab.fake.path_of(str(PF))
    rules = lab.base / RULES_FILE.lstrip("/")
    return {
        "numvfs": (pf_dir / "sriov_numvfs").read_text(),
        "autoprobe": (pf_dir / "sriov_drivers_autoprobe").read_text(),
        "vfs": [(vf, lab.fake.bound_driver(vf)) for _, vf in fakesriov.virtfns(pf_dir)],
        "bus": sorted(os.listdir(lab.fake.bus / "devices")),
        "rules": rules.read_text() if rules.exists() else None,
    }


def vfs_now(lab: Lab) -> list[str]:
    return [vf for _, vf in fakesriov.virtfns(lab.fake.path_of(str(PF)))]


# --- the fake kernel behaves as Linux --------------------------------------------------


def test_fake_kernel_refuses_a_new_count_while_vfs_exist(kvm: Lab) -> None:
    with pytest.raises(OperationFailed) as caught:
        sriov.set_numvfs(kvm.host, PF, 4)
    assert "Device or resource busy" in caught.value.problem
    with pytest.raises(OperationFailed, match="Numerical result out of range"):
        sriov.set_numvfs(kvm.host, PF, 8)
    assert vfs_now(kvm) == OLD_VFS


def test_fake_kernel_autoprobe_off_blocks_every_driver_but_the_override(kvm: Lab) -> None:
    sriov.set_numvfs(kvm.host, PF, 0)
    sriov.set_autoprobe(kvm.host, PF, False)
    sriov.set_numvfs(kvm.host, PF, 1)
    vf = vfs_now(kvm)[0]
    assert kvm.fake.bound_driver(vf) is None
    with pytest.raises(OperationFailed, match="No such device"):
        kvm.host.sysfs.write_attr(kvm.fake.driver_dir("igbvf") / "bind", vf)
    kvm.fake.add_driver("vfio-pci")
    kvm.host.sysfs.write_attr(kvm.fake.path_of(vf) / "driver_override", "vfio-pci")
    kvm.host.sysfs.write_attr(kvm.fake.bus / "drivers_probe", vf)
    assert kvm.fake.bound_driver(vf) == "vfio-pci"


# --- listing and creating ----------------------------------------------------------------


def test_list_shows_each_vf_with_driver_and_owner(kvm: Lab) -> None:
    outcome = list_vfs(kvm.host, PF)
    assert [str(v.address) for v in outcome.vfs] == OLD_VFS
    assert [v.driver for v in outcome.vfs] == ["igbvf", "igbvf"]
    assert (outcome.before, outcome.total) == (2, 7)


def test_change_goes_through_zero_with_autoprobe_off_then_back(kvm: Lab) -> None:
    outcome = set_vfs(kvm.host, PF, 4)
    assert vfs_now(kvm) == NEW_VFS
    numvfs = [v for p, v in kvm.kernel.writes if p.endswith("/sriov_numvfs")]
    autoprobe = [v for p, v in kvm.kernel.writes if p.endswith("/sriov_drivers_autoprobe")]
    assert numvfs == ["0\n", "4\n"]
    assert autoprobe == ["0\n", "1\n"]
    # No host driver took a VF meant for guests, though igbvf is loaded and matches.
    assert [kvm.fake.bound_driver(vf) for vf in NEW_VFS] == [None] * 4
    assert outcome.changed and outcome.after == 4
    assert f"pcipass hide --now --vfs {PF}" in "\n".join(outcome.render_lines())


def test_for_host_lets_the_host_driver_bind(kvm: Lab) -> None:
    set_vfs(kvm.host, PF, 3, for_guests=False)
    assert [kvm.fake.bound_driver(vf) for vf in vfs_now(kvm)] == ["igbvf"] * 3
    assert not [p for p, _ in kvm.kernel.writes if p.endswith("autoprobe")]


def test_same_count_is_no_change_and_writes_nothing(kvm: Lab) -> None:
    before = snapshot(kvm.base)
    outcome = set_vfs(kvm.host, PF, 2)
    assert not outcome.changed and kvm.kernel.writes == []
    assert snapshot(kvm.base) == before


def test_zero_removes_every_vf(kvm: Lab) -> None:
    set_vfs(kvm.host, PF, 0)
    assert vfs_now(kvm) == []
    assert not any(os.path.lexists(kvm.fake.bus / "devices" / vf) for vf in OLD_VFS)
    assert kvm.fake.bound_driver(str(PF)) == "igb"


def test_dry_run_predicts_the_addresses_and_changes_nothing(kvm: Lab) -> None:
    before = snapshot(kvm.base)
    outcome = set_vfs(kvm.host, PF, 4, dry_run=True, persist=True)
    assert f"VFs will be: {', '.join(NEW_VFS)}" in outcome.notes
    assert "+++ " + RULES_FILE in outcome.persist_diff
    assert snapshot(kvm.base) == before and kvm.kernel.writes == []
    set_vfs(kvm.host, PF, 4)
    assert vfs_now(kvm) == NEW_VFS  # the prediction was the kernel's answer


# --- refusals: the message, and nothing changed ------------------------------------------


def refused(lab: Lab, rule: str, *words: str, count: int | None = 4, **kwargs: object) -> None:
    before = snapshot(lab.base)
    with pytest.raises(RefusedError) as caught:
        set_vfs(lab.host, kwargs.pop("pf", PF), count, **kwargs)  # type: ignore[arg-type]
    text = caught.value.render()
    assert f"[{rule}]" in text, text
    for word in words:
        assert word in text, text
    assert snapshot(lab.base) == before
    assert lab.kernel.writes == []


def test_more_than_totalvfs_is_refused(kvm: Lab) -> None:
    refused(kvm, "PP125", "at most 7 VFs", "not 8", count=8)


def test_a_vf_or_a_plain_device_is_not_a_pf(kvm: Lab) -> None:
    refused(kvm, "PP125", "virtual function of 0000:02:00.0", pf=PciAddress.parse(OLD_VFS[0]))
    refused(kvm, "PP125", "not an SR-IOV physical function", pf=PciAddress.parse("0000:03:00.0"))


def test_removing_a_hidden_vf_is_refused_naming_it(kvm: Lab) -> None:
    from pcipass.backend import Backend
    from pcipass.ops.hide import hide_now

    hide_now(kvm.host, [PciAddress.parse(OLD_VFS[1])], Backend.VFIO)
    kvm.kernel.writes.clear()
    refused(kvm, "PP101", f"VF {OLD_VFS[1]}", "hidden", f"pcipass unhide --now {OLD_VFS[1]}")
    refused(kvm, "PP101", f"VF {OLD_VFS[1]}", count=0)


def test_removing_a_vf_a_guest_holds_is_refused_naming_the_guest(kvm: Lab) -> None:
    with Ledger.open(kvm.host.root) as ledger:
        ledger.claim(OLD_VFS[0], "web1", config_kind="libvirt", config_path=None)
    refused(kvm, "PP101", f"VF {OLD_VFS[0]}", "guest web1", f"detach {OLD_VFS[0]} web1", count=0)


def test_removing_a_vf_the_host_uses_is_refused_naming_the_use(kvm: Lab) -> None:
    kvm.fake.add_nic(OLD_VFS[0], "eth5")
    kvm.fake.add_route("eth5", default=True)
    refused(kvm, "PP001", f"VF {OLD_VFS[0]}", "used by the host", "default route", count=0)


def test_a_pf_carrying_the_default_route_may_get_vfs_and_says_so(kvm: Lab) -> None:
    kvm.fake.add_route("enp2s0f0", default=True)
    outcome = set_vfs(kvm.host, PF, 4)
    assert vfs_now(kvm) == NEW_VFS
    assert any("default route" in n and "allowed" in n for n in outcome.notes)


def test_a_pf_without_driver_is_refused(kvm: Lab) -> None:
    kvm.fake.unbind(str(PF))
    refused(kvm, "PP125", "no driver bound")


# --- rollback and recover ------------------------------------------------------------------


def test_a_failed_create_puts_the_old_vfs_back(kvm: Lab) -> None:
    before = vf_state(kvm)
    kvm.kernel.fail("*/0000:02:00.0/sriov_numvfs", errno.ENOMEM, value="4\n")
    with pytest.raises(OperationFailed) as caught:
        set_vfs(kvm.host, PF, 4, persist=True)
    assert "nothing was changed" in caught.value.render()
    assert vf_state(kvm) == before  # 2 VFs, on igbvf again, autoprobe 1, no rules file
    with Ledger.open(kvm.host.root, readonly=True) as view:
        assert view.open_operations() == []


def test_killed_at_every_event_then_recovered_is_before_or_done(tmp_path: Path) -> None:
    template = make_lab(build_kvm(tmp_path / "template"))
    template.runner.programs.add("ip")
    before = vf_state(template)
    with KillAt(0) as counting:
        set_vfs(template.host, PF, 4, persist=True, settings={"mac": ["3=02:00:00:00:00:09"]})
    done = vf_state(template)
    assert done != before
    kvm_template = tmp_path / "fresh"
    for index in range(1, len(counting.seen) + 1):
        lab = make_lab(build_kvm(kvm_template / str(index)))
        lab.runner.programs.add("ip")
        with KillAt(index), pytest.raises(SimulatedKill):
            set_vfs(lab.host, PF, 4, persist=True, settings={"mac": ["3=02:00:00:00:00:09"]})
        recover(lab.host)
        state = vf_state(lab)
        assert state in (before, done), f"killed at {counting.seen[index - 1]}: {state}"
        with Ledger.open(lab.host.root, readonly=True) as view:
            assert view.open_operations() == []


def test_recover_refuses_a_crafted_sriov_record(kvm: Lab) -> None:
    with Ledger.open(kvm.host.root) as ledger:
        ledger.begin("vfs", {"sriov": {"pf": "../../etc", "numvfs": 1, "autoprobe": True}})
    before = snapshot(kvm.base)
    with pytest.raises(RefusedError, match="not a PCI address"):
        recover(kvm.host)
    assert snapshot(kvm.base) == before and kvm.kernel.writes == []


# --- network settings ------------------------------------------------------------------------


def test_mac_vlan_trust_spoofchk_through_ip_link(kvm: Lab) -> None:
    kvm.runner.programs.add("ip")
    set_vfs(
        kvm.host,
        PF,
        None,
        settings={
            "mac": ["0=02:00:00:00:00:01"],
            "vlan": [f"{OLD_VFS[1]}=100"],
            "trust": ["0=on"],
            "spoofchk": ["1=off"],
        },
    )
    ip = [c for c in kvm.runner.calls if c[:3] == ("ip", "link", "set")]
    assert ip == [
        ("ip", "link", "set", "dev", "enp2s0f0", "vf", "0", "mac", "02:00:00:00:00:01"),
        ("ip", "link", "set", "dev", "enp2s0f0", "vf", "1", "vlan", "100"),
        ("ip", "link", "set", "dev", "enp2s0f0", "vf", "0", "trust", "on"),
        ("ip", "link", "set", "dev", "enp2s0f0", "vf", "1", "spoofchk", "off"),
    ]


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("mac", "0=01:00:5e:00:00:01", "multicast"),
        ("mac", "0=02:00:00:00:00", "not a MAC"),
        ("mac", "0=02:00:00:00:00:01;reboot", "not a MAC"),
        ("vlan", "0=4095", "not a VLAN"),
        ("vlan", "0=-1", "not a VLAN"),
        ("trust", "0=yes", "on or off"),
        ("mac", "5=02:00:00:00:00:01", "there are 2 VFs"),
        ("mac", "02:00:00:00:00:01", "VF=VALUE"),
    ],
)
def test_bad_settings_are_usage_errors_before_anything(
    kvm: Lab, key: str, value: str, why: str
) -> None:
    before = snapshot(kvm.base)
    with pytest.raises(UsageError, match=why):
        set_vfs(kvm.host, PF, None, settings={key: [value]})
    assert snapshot(kvm.base) == before
    assert not [c for c in kvm.runner.calls if c[:3] == ("ip", "link", "set")]


def test_settings_for_a_pf_without_netdev_are_refused(kvm: Lab) -> None:
    shutil.rmtree(kvm.fake.path_of(str(PF)) / "net")
    refused(kvm, "PP125", "no network interface", count=None, settings={"vlan": ["0=5"]})


def test_listing_reads_vf_settings_from_ip_json(kvm: Lab) -> None:
    from pcipass.runner import CommandResult

    links = [
        {
            "ifname": "enp2s0f0",
            "vfinfo_list": [
                {"vf": 0, "address": "02:00:00:00:00:01", "spoofchk": True, "trust": False},
                {"vf": 1, "address": "02:00:00:00:00:02", "vlan_list": [{"vlan": 100}]},
            ],
        }
    ]
    kvm.runner.programs.add("ip")
    kvm.runner.answers["ip -j link show dev enp2s0f0"] = CommandResult((), 0, json.dumps(links), "")
    outcome = list_vfs(kvm.host, PF)
    nets = [v.net.to_json() if v.net else None for v in outcome.vfs]
    assert nets == [
        {"mac": "02:00:00:00:00:01", "vlan": None, "trust": False, "spoofchk": True},
        {"mac": "02:00:00:00:00:02", "vlan": 100, "trust": None, "spoofchk": None},
    ]


# --- the persistent form ---------------------------------------------------------------------


def test_persist_writes_a_bind_rule_keyed_on_the_pf_and_its_driver(kvm: Lab) -> None:
    kvm.runner.programs.add("ip")
    foreign = 'ACTION=="add", SUBSYSTEM=="net", NAME="lan0"\n'
    kvm.fake.write_file(RULES_FILE, foreign)
    set_vfs(kvm.host, PF, 4, persist=True, settings={"vlan": ["2=7"]})
    text = (kvm.base / RULES_FILE.lstrip("/")).read_text()
    match = 'ACTION=="bind", SUBSYSTEM=="pci", KERNEL=="0000:02:00.0", DRIVER=="igb", '
    assert foreign in text
    assert (
        match + 'ATTR{sriov_drivers_autoprobe}="0", ATTR{sriov_numvfs}="4", '
        'ATTR{sriov_drivers_autoprobe}="1"\n' in text
    )
    assert match + 'RUN+="/sbin/ip link set dev enp2s0f0 vf 2 vlan 7"\n' in text
    assert list_vfs(kvm.host, PF).persisted == 4
    set_vfs(kvm.host, PF, 0, persist=True)
    assert (kvm.base / RULES_FILE.lstrip("/")).read_text() == foreign


def test_persist_of_the_last_pf_removes_the_file(kvm: Lab) -> None:
    set_vfs(kvm.host, PF, 3, persist=True)
    assert (kvm.base / RULES_FILE.lstrip("/")).exists()
    set_vfs(kvm.host, PF, 0, persist=True)
    assert not (kvm.base / RULES_FILE.lstrip("/")).exists()


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Path:
    base = tmp_path / "kvm"
    build_kvm(base).mark_simulated()
    return base


def test_cli_create_list_json_and_hide_vfs(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vfs", str(PF), "4", "--root", str(example), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["address"] for v in doc["vfs"]] == NEW_VFS and doc["after"] == 4
    assert (
        main(["hide", "--now", "--vfs", str(PF), "--backend", "vfio", "--root", str(example)]) == 0
    )
    capsys.readouterr()
    assert main(["vfs", str(PF), "--root", str(example), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["driver"] for v in doc["vfs"]] == ["vfio-pci"] * 4
    assert all(v["hidden"] for v in doc["vfs"])


def test_cli_unhide_vfs_gives_every_vf_back(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vfs", str(PF), "4", "--root", str(example)]) == 0
    argv = ["--now", "--vfs", str(PF), "--root", str(example)]
    assert main(["hide", *argv, "--backend", "vfio"]) == 0
    assert [v["driver"] for v in _listed(example, capsys)] == ["vfio-pci"] * 4
    assert main(["unhide", *argv]) == 0
    listed = _listed(example, capsys)
    # Given back to the host: its VF driver probes them (they were created for
    # guests, with no driver, so there is none older to put back).
    assert [v["driver"] for v in listed] == ["igbvf"] * 4
    assert not any(v["hidden"] for v in listed)


def _listed(example: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["vfs", str(PF), "--root", str(example), "--json"]) == 0
    vfs: list[dict[str, object]] = json.loads(capsys.readouterr().out)["vfs"]
    return vfs


def test_cli_unhide_vfs_of_a_pf_without_vfs_is_refused(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vfs", str(PF), "0", "--root", str(example)]) == 0
    before = snapshot(example)
    capsys.readouterr()
    assert main(["unhide", "--now", "--vfs", str(PF), "--root", str(example)]) == 3
    err = capsys.readouterr().err
    assert "[PP125]" in err and "has no VFs to unhide" in err
    assert snapshot(example) == before


def test_cli_hide_vfs_of_a_pf_without_vfs_is_refused(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vfs", str(PF), "0", "--root", str(example)]) == 0
    before = snapshot(example)
    assert main(["hide", "--now", "--vfs", str(PF), "--root", str(example)]) == 3
    assert "[PP125]" in capsys.readouterr().err
    assert snapshot(example) == before


@pytest.mark.parametrize("argv", [["vfs", str(PF), "x"], ["vfs", str(PF), "-1"], ["hide", "--now"]])
def test_cli_usage_errors(example: Path, argv: list[str]) -> None:
    assert main([*argv, "--root", str(example)]) == 2


def test_a_failed_setting_puts_back_the_ones_applied_before_it(kvm: Lab) -> None:
    from pcipass.runner import CommandResult

    links = [{"vfinfo_list": [{"vf": 0, "address": "02:00:00:00:00:aa", "trust": False}]}]
    kvm.runner.programs.add("ip")
    kvm.runner.answers["ip -j link show dev enp2s0f0"] = CommandResult((), 0, json.dumps(links), "")
    kvm.runner.answers["ip link set dev enp2s0f0 vf 1"] = CommandResult(
        (), 2, "", "RTNETLINK answers: Operation not permitted\n"
    )
    with pytest.raises(OperationFailed) as caught:
        set_vfs(
            kvm.host, PF, None, settings={"mac": ["0=02:00:00:00:00:01", "1=02:00:00:00:00:02"]}
        )
    sets = [c[5:] for c in kvm.runner.calls if c[:3] == ("ip", "link", "set")]
    assert sets == [
        ("vf", "0", "mac", "02:00:00:00:00:01"),
        ("vf", "1", "mac", "02:00:00:00:00:02"),
        ("vf", "0", "mac", "02:00:00:00:00:aa"),  # put back
    ]
    assert "nothing was changed" in caught.value.render()


def test_a_setting_that_cannot_be_put_back_is_named(kvm: Lab) -> None:
    from pcipass.runner import CommandResult

    kvm.runner.programs.add("ip")  # `ip -j` answers nothing: the old values are unknown
    kvm.runner.answers["ip link set dev enp2s0f0 vf 1"] = CommandResult((), 2, "", "no\n")
    with pytest.raises(OperationFailed) as caught:
        set_vfs(kvm.host, PF, None, settings={"vlan": ["0=5", "1=6"]})
    text = caught.value.render()
    assert "still set on enp2s0f0: vf 0 vlan 5" in text and "nothing was changed" not in text


def test_check_reports_a_vf_count_that_drifted_from_the_boot_rule(kvm: Lab) -> None:
    from pcipass.ops.check import run_check

    set_vfs(kvm.host, PF, 4, persist=True)
    assert not [f for f in run_check(kvm.host, []).findings if f.code == "vf-count"]
    set_vfs(kvm.host, PF, 1)  # now, not at boot
    drift = [f for f in run_check(kvm.host, []).findings if f.code == "vf-count"]
    assert [(f.rule, f.subject, f.path) for f in drift] == [("PP010", str(PF), RULES_FILE)]
    assert "gives it 4 VFs; it has 1 now" in drift[0].message
    other = PciAddress.parse("0000:03:00.0")
    assert not [f for f in run_check(kvm.host, [other]).findings if f.code == "vf-count"]


def test_a_hostile_interface_name_never_reaches_the_rules_file(kvm: Lab) -> None:
    net = kvm.fake.path_of(str(PF)) / "net"
    (net / "enp2s0f0").rename(net / 'x" RUN+="sh')
    before = snapshot(kvm.base)
    with pytest.raises(OperationFailed, match="not a network interface name"):
        set_vfs(kvm.host, PF, 3, persist=True, settings={"vlan": ["0=5"]})
    assert snapshot(kvm.base) == before and kvm.kernel.writes == []
