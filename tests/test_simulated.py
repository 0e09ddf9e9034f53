"""The simulated kernel: chosen where the Host is built, always announced."""

from __future__ import annotations

import json

import pytest

from pcipass.cli.main import main
from pcipass.host.context import SIMULATED_MARKER, Host
from pcipass.testing.harness import Lab


def test_a_marked_tree_gets_the_simulated_kernel_and_says_so_first(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rhel5.fake.mark_simulated()
    host = Host.for_command(rhel5.base)
    assert host.simulated
    assert main(["--root", str(rhel5.base), "hide", "--now", "0000:09:00.0"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("pcipass: simulated kernel: ")
    assert str(rhel5.base) in err.splitlines()[0]
    assert rhel5.fake.bound_driver("0000:09:00.0") == "pciback"  # the fake kernel acted


def test_json_output_stays_json_on_a_simulated_kernel(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rhel5.fake.mark_simulated()
    assert main(["--root", str(rhel5.base), "list", "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)
    assert err.startswith("pcipass: simulated kernel: ")


def test_an_unmarked_tree_is_offline_and_silent(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not (rhel5.base / SIMULATED_MARKER).exists()
    host = Host.for_command(rhel5.base)
    assert not host.simulated and host.simulated_notice is None
    main(["--root", str(rhel5.base), "hide", "--now", "0000:09:00.0"])
    err = capsys.readouterr().err
    assert "simulated" not in err
    # Without the simulated kernel nothing acts on the tree's control files.
    assert rhel5.fake.bound_driver("0000:09:00.0") == "bnx2"


def test_a_marker_that_is_not_a_file_does_not_simulate(rhel5: Lab) -> None:
    (rhel5.base / SIMULATED_MARKER).mkdir()
    assert not Host.for_command(rhel5.base).simulated
