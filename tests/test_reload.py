"""#18: "reload the driver" can take the host off the network.

The document's host (testing/example.py): bnx2 drives 0000:05:00.0 (eth0,
default route and the host's address) and 0000:09:00.0 (the NIC to hide).
Reloading bnx2 unbinds both; pcipass says so wherever it mentions a reload,
and ``--reload-driver`` does it only when no other function is host-used.
"""

from __future__ import annotations

import json

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import OperationFailed
from pcipass.host import binding
from pcipass.ops.inventory import inventory
from pcipass.ops.reload import plan_reload
from pcipass.policy.reload import reload_advice, reload_impact
from pcipass.policy.verdict import Severity
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

NIC = PciAddress.parse("0000:09:00.0")
UPLINK = PciAddress.parse("0000:05:00.0")


def cli(lab: Lab, *argv: str) -> int:
    return main(["--root", str(lab.base), *argv])


@pytest.fixture(autouse=True)
def simulated(request: pytest.FixtureRequest) -> None:
    for name in ("rhel5", "kvm", "idle"):
        if name in request.fixturenames:
            request.getfixturevalue(name).fake.mark_simulated()


@pytest.fixture
def idle(rhel5: Lab) -> Lab:
    """The document's host with the uplink on the e1000 (0000:0a:04.0): the
    other bnx2 function (05:00.0) is merely bound, used for nothing."""
    fake = rhel5.fake
    fake.routes.clear()
    fake.local_v4.clear()
    fake.add_route("eth2", default=True, network="192.168.122.0", prefix=24, local="192.168.122.10")
    return rhel5


def _drivers(lab: Lab, *addresses: str) -> list[str | None]:
    return [lab.fake.bound_driver(a) for a in addresses]


# --- the warning (policy) -----------------------------------------------------------


def test_the_warning_names_the_uplink_and_its_default_route(rhel5: Lab) -> None:
    impact = reload_impact("bnx2", [NIC], inventory(rhel5.host))
    assert [b.address for b in impact.host_used] == [UPLINK]
    assert not impact.safe
    advice = reload_advice(impact)
    assert "0000:05:00.0" in advice and "default route" in advice
    assert "do NOT reload bnx2" in advice and "--now" in advice and "reboot" in advice


def test_an_idle_sibling_is_named_as_collateral_only(idle: Lab) -> None:
    impact = reload_impact("bnx2", [NIC], inventory(idle.host))
    assert impact.safe
    assert [b.address for b in impact.collateral] == [UPLINK]
    advice = reload_advice(impact)
    assert "0000:05:00.0" in advice and "--reload-driver" in advice
    assert "do NOT" not in advice


def test_a_driver_with_no_other_function_needs_no_warning(rhel5: Lab) -> None:
    impact = reload_impact("ahci", [PciAddress.parse("0000:00:1f.2")], inventory(rhel5.host))
    assert impact.bystanders == ()
    assert "no other device uses ahci" in reload_advice(impact)


# --- the warning where pcipass says "reload" ----------------------------------------


def test_hide_persist_output_warns_before_advising_a_reload(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old output said only "takes effect when the driver is reloaded"."""
    assert cli(rhel5, "hide", "--persist", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "0000:05:00.0" in out and "default route" in out
    assert "do NOT reload bnx2" in out
    assert "takes effect when the driver is reloaded" not in out


def test_hide_persist_json_carries_the_warning_as_a_finding(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(rhel5, "--json", "hide", "--persist", "--dry-run", "09:00.0") == 0
    data = json.loads(capsys.readouterr().out)
    found = [f for f in data["persist"]["findings"] if f["subject"] == "0000:05:00.0"]
    assert found and found[0]["rule"] == "PP010" and found[0]["severity"] == "warn"
    assert "default route" in found[0]["message"]


def test_check_does_not_advise_reloading_bnx2_on_the_document_host(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(rhel5, "hide", "--persist", "09:00.0") == 0
    capsys.readouterr()
    cli(rhel5, "--json", "check")
    findings = json.loads(capsys.readouterr().out)["findings"]
    drift = [f for f in findings if f["rule"] == "PP010" and f["subject"] == "0000:09:00.0"]
    assert drift, findings
    remedy = drift[0]["remedy"]
    assert "not a reload of bnx2" in remedy and "0000:05:00.0" in remedy
    assert "default route" in remedy


def test_check_offers_the_reload_where_it_is_safe(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "09:00.0") == 0
    capsys.readouterr()
    cli(idle, "--json", "check", "09:00.0")
    findings = json.loads(capsys.readouterr().out)["findings"]
    drift = [f for f in findings if f["rule"] == "PP010" and f["subject"] == "0000:09:00.0"]
    assert "--reload-driver" in drift[0]["remedy"]


def test_unhide_persist_names_what_reloading_the_stub_would_pull_from_a_guest(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(rhel5, "hide", "--now", "--persist", "09:00.0", "0a:04.1") == 0
    from pcipass.state.ledger import Ledger

    with Ledger.open(rhel5.host.root) as ledger:
        ledger.claim("0000:0a:04.1", "rhel5pv", config_kind="xm", config_path="/etc/xen/rhel5pv")
    capsys.readouterr()
    assert cli(rhel5, "unhide", "--persist", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "do NOT reload pciback" in out
    assert "0000:0a:04.1" in out and "rhel5pv" in out


def test_unhide_persist_with_the_stub_idle_offers_its_reload(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(rhel5, "hide", "--now", "--persist", "09:00.0") == 0
    capsys.readouterr()
    assert cli(rhel5, "unhide", "--persist", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "takes effect when pciback is reloaded" in out and "do NOT" not in out


def test_vfio_hide_persist_counts_the_stub_reload_too(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """vfio-pci's ids= is read at load: a loaded vfio-pci is reloaded as well,
    and the GPU it holds for a guest is named."""
    assert cli(kvm, "hide", "--now", "--backend", "vfio", "01:00.0", "01:00.1") == 0
    from pcipass.state.ledger import Ledger

    with Ledger.open(kvm.host.root) as ledger:
        ledger.claim("0000:01:00.0", "win10", config_kind="libvirt")
    plan = plan_reload(
        kvm.host,
        inventory(kvm.host),
        [PciAddress.parse("0000:03:00.0")],
        binding.stub_for(kvm.host, Backend.VFIO),
        hiding=True,
    )
    assert [m.driver for m in plan.unload] == ["e1000e", "vfio-pci"]
    refusals = [f for f in plan.findings(refusing=True) if f.severity is Severity.REFUSE]
    assert {f.subject for f in refusals} == {"0000:01:00.0"}
    assert "win10" in refusals[0].message


# --- the fake kernel: module unload / load ------------------------------------------


def test_unloading_bnx2_unbinds_every_function_and_loading_probes_them_again(
    rhel5: Lab,
) -> None:
    assert rhel5.runner.run(["modprobe", "-r", "bnx2"]).returncode == 0
    assert _drivers(rhel5, "0000:05:00.0", "0000:09:00.0") == [None, None]
    assert not binding.driver_loaded(rhel5.host, "bnx2")
    assert "bnx2 " not in (rhel5.base / "proc/modules").read_text()
    assert rhel5.runner.run(["modprobe", "bnx2"]).returncode == 0
    assert _drivers(rhel5, "0000:05:00.0", "0000:09:00.0") == ["bnx2", "bnx2"]


def test_the_documents_install_line_hands_the_hidden_nic_to_pciback_on_reload(
    rhel5: Lab,
) -> None:
    rhel5.fake.write_file(
        "/etc/modprobe.conf",
        "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2\n"
        "options pciback hide=(0000:09:00.0)\n",
    )
    rhel5.runner.run(["modprobe", "-r", "bnx2"]).check()
    rhel5.runner.run(["modprobe", "bnx2"]).check()
    assert _drivers(rhel5, "0000:05:00.0", "0000:09:00.0") == ["bnx2", "pciback"]


def test_a_loaded_stub_does_not_reread_its_options(rhel5: Lab) -> None:
    """Why --reload-driver reloads a loaded stub too: parameters are read at load."""
    rhel5.runner.run(["modprobe", "pciback"]).check()
    rhel5.fake.write_file(
        "/etc/modprobe.conf",
        "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2\n"
        "options pciback hide=(0000:09:00.0)\n",
    )
    rhel5.runner.run(["modprobe", "-r", "bnx2"]).check()
    rhel5.runner.run(["modprobe", "bnx2"]).check()
    assert _drivers(rhel5, "0000:09:00.0") == ["bnx2"]


def test_vfio_ids_and_softdep_take_the_device_at_load(kvm: Lab) -> None:
    kvm.fake.write_file(
        "/etc/modprobe.d/pcipass.conf",
        "options vfio-pci ids=8086:10d3\nsoftdep e1000e pre: vfio-pci\n",
    )
    kvm.runner.run(["modprobe", "-r", "e1000e"]).check()
    kvm.runner.run(["modprobe", "e1000e"]).check()
    assert _drivers(kvm, "0000:03:00.0") == ["vfio-pci"]


def test_module_failures_on_demand_and_modprobes_own_errors(rhel5: Lab) -> None:
    rhel5.kernel.fail_module("bnx2")
    rhel5.runner.run(["modprobe", "-r", "bnx2"]).check()
    failed = rhel5.runner.run(["modprobe", "bnx2"])
    assert failed.returncode == 1 and "FATAL" in failed.stderr
    assert _drivers(rhel5, "0000:05:00.0") == [None]
    assert rhel5.runner.run(["modprobe", "-r", "bnx2"]).returncode == 1  # not loaded
    rhel5.runner.run(["modprobe", "bnx2"]).check()  # the failure was for one load
    assert _drivers(rhel5, "0000:05:00.0") == ["bnx2"]


# --- --reload-driver refused (nothing changed) --------------------------------------


def test_reload_is_refused_with_pp001_when_the_uplink_shares_the_driver(rhel5: Lab) -> None:
    from pcipass.errors import RefusedError
    from pcipass.ops.reload import checked_reload

    before = snapshot(rhel5.base)
    with pytest.raises(RefusedError) as raised:
        checked_reload(
            rhel5.host,
            inventory(rhel5.host),
            [NIC],
            binding.stub_for(rhel5.host, Backend.PCIBACK),
            hiding=True,
        )
    assert raised.value.rule == "PP001"
    assert raised.value.subject == "0000:05:00.0" and "default route" in raised.value.problem
    assert snapshot(rhel5.base) == before


def test_explain_module_in_use_names_the_uplink_and_the_safe_way(rhel5: Lab) -> None:
    from pcipass.ops.explain import explain

    (found,) = explain(rhel5.host, "modprobe: FATAL: Module bnx2 is in use.")
    assert found.rule == "PP010"
    assert "0000:05:00.0" in found.cause and "default route" in found.cause
    assert "--now" in found.fix and "reboot" in found.fix


# --- --reload-driver run (one transaction) ------------------------------------------

RELOAD_SKIP = (
    "var/lib/pcipass",
    "proc/modules",
    "sys/module",
    "sys/bus/pci/drivers/pciback",
    "sys/bus/pci/drivers/vfio-pci",
)


def _reload(lab: Lab) -> None:
    from pcipass.ops.hide import hide

    hide(lab.host, [NIC], Backend.PCIBACK, now=False, persist=True, reload_driver=True)


def _no_open_intent(lab: Lab) -> bool:
    from pcipass.state.ledger import Ledger

    with Ledger.open(lab.host.root, readonly=True) as ledger:
        return ledger.open_operations() == []


def test_reload_driver_refused_on_the_document_host_changes_nothing(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(rhel5.base)
    assert cli(rhel5, "hide", "--persist", "--reload-driver", "09:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP001]" in err and "0000:05:00.0" in err and "default route" in err
    assert snapshot(rhel5.base) == before
    assert _no_open_intent(rhel5)


def test_reload_driver_on_an_idle_sibling_reloads_and_every_function_ends_as_expected(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "--reload-driver", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "modprobe -r bnx2" in out
    assert _drivers(idle, "0000:05:00.0", "0000:09:00.0", "0000:0a:04.0") == [
        "bnx2",
        "pciback",
        "e1000",
    ]
    from pcipass.state.ledger import Ledger

    with Ledger.open(idle.host.root, readonly=True) as ledger:
        record = ledger.get_hidden(NIC)
        assert record is not None and record.how == "both" and record.original_driver == "bnx2"
        assert ledger.open_operations() == []
    capsys.readouterr()
    cli(idle, "--json", "check", "09:00.0")
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert not [f for f in findings if f["rule"] == "PP010"]


def test_a_failed_load_mid_reload_rolls_back_everything(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(idle.base, skip=RELOAD_SKIP)
    idle.kernel.fail_module("bnx2")  # the first load after the unload fails
    with pytest.raises(OperationFailed) as failed:
        _reload(idle)
    assert failed.value.rolled_back and "bnx2" in failed.value.render()
    assert snapshot(idle.base, skip=RELOAD_SKIP) == before
    assert _no_open_intent(idle)
    assert _drivers(idle, "0000:05:00.0", "0000:09:00.0") == ["bnx2", "bnx2"]


def test_a_function_that_does_not_come_back_fails_verification_and_rolls_back(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(idle.base, skip=RELOAD_SKIP)
    idle.kernel.probe_failures.add("0000:05:00.0")  # its probe fails at module load
    with pytest.raises(OperationFailed) as failed:
        _reload(idle)
    assert "0000:05:00.0 is on no driver, expected bnx2" in failed.value.render()
    assert failed.value.rolled_back
    assert snapshot(idle.base, skip=RELOAD_SKIP) == before
    assert _drivers(idle, "0000:05:00.0", "0000:09:00.0") == ["bnx2", "bnx2"]
    assert _no_open_intent(idle)


def test_vfio_reload_hands_both_vfs_to_vfio_pci_by_ids(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """The vfio-pci form: ids= and a softdep, read when igbvf (and vfio-pci) load."""
    assert (
        cli(kvm, "hide", "--persist", "--reload-driver", "--backend", "vfio", "02:10.0", "02:10.4")
        == 0
    )
    assert "modprobe -r igbvf" in capsys.readouterr().out
    assert _drivers(kvm, "0000:02:10.0", "0000:02:10.4", "0000:02:00.0") == [
        "vfio-pci",
        "vfio-pci",
        "igb",
    ]


def test_reload_driver_without_persist_alone_is_a_usage_error(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--now", "--persist", "--reload-driver", "09:00.0") == 2
    assert cli(idle, "hide", "--now", "--reload-driver", "09:00.0") == 2


# --- unhide --persist --reload-driver (the stub's reload gives the device back) ------


def test_unhide_reload_driver_gives_the_nic_back_to_bnx2(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "--reload-driver", "09:00.0") == 0
    assert _drivers(idle, "0000:09:00.0") == ["pciback"]
    capsys.readouterr()
    assert cli(idle, "unhide", "--persist", "--reload-driver", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "modprobe -r pciback" in out and "drivers_probe" in out
    assert _drivers(idle, "0000:05:00.0", "0000:09:00.0", "0000:0a:04.0") == [
        "bnx2",
        "bnx2",
        "e1000",
    ]
    assert "0000:09:00.0" not in (idle.base / "etc/modprobe.conf").read_text()
    from pcipass.state.ledger import Ledger

    with Ledger.open(idle.host.root, readonly=True) as ledger:
        assert ledger.get_hidden(NIC) is None
        assert ledger.open_operations() == []


def test_unhide_reload_driver_clears_a_stub_override_first(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hidden --now and --persist: the override would make the reloaded stub
    claim the device again; it is cleared in the same transaction."""
    assert cli(idle, "hide", "--now", "--persist", "09:00.0") == 0
    assert idle.fake.bound_driver("0000:09:00.0") == "pciback"
    capsys.readouterr()
    assert cli(idle, "unhide", "--persist", "--reload-driver", "09:00.0") == 0
    assert _drivers(idle, "0000:09:00.0") == ["bnx2"]
    assert not binding.read_override(idle.host, NIC)


def test_unhide_reload_driver_refused_when_the_stub_holds_a_guests_device(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reloading pciback unbinds every device it holds: one a guest holds is PP101."""
    assert cli(idle, "hide", "--now", "--persist", "09:00.0", "0a:04.1") == 0
    from pcipass.state.ledger import Ledger

    with Ledger.open(idle.host.root) as ledger:
        ledger.claim("0000:0a:04.1", "rhel5pv", config_kind="xm", config_path="/etc/xen/rhel5pv")
    capsys.readouterr()
    before = snapshot(idle.base)
    assert cli(idle, "unhide", "--persist", "--reload-driver", "09:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP101]" in err and "0000:0a:04.1" in err and "rhel5pv" in err
    assert snapshot(idle.base) == before
    assert _no_open_intent(idle)


def test_unhide_reload_driver_refused_on_a_host_used_stub_function(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A function on the stub that the host uses (PP001 data) stops the reload."""
    assert cli(rhel5, "hide", "--now", "--persist", "09:00.0") == 0
    capsys.readouterr()
    # pcipass will not hide the uplink (PP001): put it on pciback by hand, a mistake.
    rhel5.fake.unbind("0000:05:00.0")
    rhel5.fake.bind("0000:05:00.0", "pciback")
    before = snapshot(rhel5.base)
    assert cli(rhel5, "unhide", "--persist", "--reload-driver", "09:00.0") == 3
    err = capsys.readouterr().err
    assert "[PP001]" in err and "0000:05:00.0" in err and "default route" in err
    assert snapshot(rhel5.base) == before


def test_a_failed_stub_load_in_unhide_rolls_back_everything(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "--reload-driver", "09:00.0") == 0
    before = snapshot(idle.base, skip=RELOAD_SKIP)
    idle.kernel.fail_module("pciback")  # the load after the unload fails
    from pcipass.ops.hide import unhide

    with pytest.raises(OperationFailed) as failed:
        unhide(idle.host, [NIC], now=False, persist=True, reload_driver=True)
    assert failed.value.rolled_back and "pciback" in failed.value.render()
    assert snapshot(idle.base, skip=RELOAD_SKIP) == before
    assert _drivers(idle, "0000:09:00.0", "0000:05:00.0") == ["pciback", "bnx2"]
    assert _no_open_intent(idle)


def test_a_device_that_does_not_go_back_fails_verification_and_stays_hidden(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "--reload-driver", "09:00.0") == 0
    before = snapshot(idle.base, skip=RELOAD_SKIP)
    idle.kernel.probe_failures.add("0000:09:00.0")  # bnx2's probe of it fails
    from pcipass.ops.hide import unhide

    with pytest.raises(OperationFailed) as failed:
        unhide(idle.host, [NIC], now=False, persist=True, reload_driver=True)
    assert "0000:09:00.0 is on no driver, expected bnx2" in failed.value.render()
    idle.kernel.probe_failures.clear()
    assert snapshot(idle.base, skip=RELOAD_SKIP) == before
    assert _drivers(idle, "0000:09:00.0") == ["pciback"]
    assert _no_open_intent(idle)


def test_unhide_reload_driver_dry_run_says_what_it_would_run(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "hide", "--persist", "--reload-driver", "09:00.0") == 0
    capsys.readouterr()
    before = snapshot(idle.base)
    assert cli(idle, "unhide", "--persist", "--reload-driver", "--dry-run", "09:00.0") == 0
    out = capsys.readouterr().out
    assert "would run: modprobe -r pciback" in out
    assert snapshot(idle.base) == before


def test_unhide_reload_driver_with_now_is_a_usage_error(
    idle: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(idle, "unhide", "--now", "--persist", "--reload-driver", "09:00.0") == 2
    assert cli(idle, "unhide", "--reload-driver", "09:00.0") == 2
