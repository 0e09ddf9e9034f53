"""``pcipass status`` in text and JSON, with hotplug events in the ledger."""

from __future__ import annotations

import json

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import DEFAULT_BUDGET, HotplugLimiter
from pcipass.testing.harness import Lab

VF = PciAddress.parse("0000:02:10.0")


def _hide_and_hotplug(kvm: Lab, events: int) -> str:
    kvm.fake.mark_simulated()
    root = str(kvm.base)
    assert main(["--root", root, "hide", "--now", "--backend", "vfio", str(VF)]) == 0
    with Ledger.open(kvm.host.root) as ledger:
        limiter = HotplugLimiter(ledger)
        for index in range(events):
            limiter.acquire(VF, "l2", "attach" if index % 2 == 0 else "detach")
    return root


def test_status_text_after_a_hotplug(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    # The window is a float (600.0) in the ledger; text mode once died on it
    # with "invalid literal for int()" while --json worked.
    root = _hide_and_hotplug(kvm, 2)
    capsys.readouterr()
    assert main(["--root", root, "status"]) == 0
    captured = capsys.readouterr()
    assert "Error" not in captured.err and "Traceback" not in captured.err
    assert f"{VF}: 2 of {DEFAULT_BUDGET} hotplug events used in the last 10 min (PP007)" in (
        captured.out.splitlines()
    )
    assert f"{VF}: hidden (now) on vfio-pci" in captured.out


def test_status_text_says_when_the_budget_is_spent(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _hide_and_hotplug(kvm, DEFAULT_BUDGET)
    capsys.readouterr()
    assert main(["--root", root, "status"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "hotplug events" in x)
    assert line.startswith(f"{VF}: {DEFAULT_BUDGET} of {DEFAULT_BUDGET} hotplug events")
    assert "the next one is allowed at " in line
    assert main(["--root", root, "status", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["hotplug"]
    assert entry["events_in_window"] == DEFAULT_BUDGET
    assert isinstance(entry["next_allowed"], float)
