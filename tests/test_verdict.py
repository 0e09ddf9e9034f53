"""One way from refusing findings to RefusedError; worst_exit is an ExitCode."""

from __future__ import annotations

import json

import pytest

from pcipass.cli.main import main
from pcipass.errors import ExitCode, RefusedError, exit_code_for
from pcipass.policy.verdict import Finding, Severity, raise_refusals, refusal_error, worst_exit
from pcipass.testing.harness import Lab

USE = Finding("PP001", Severity.REFUSE, "0000:09:00.0", "the host uses it: eth0", "pick another")
GROUP = Finding("PP102", Severity.REFUSE, "0000:0a:04.1", "IOMMU group 7 also holds X", "take it")
RESET = Finding("PP104", Severity.WARN, "0000:09:00.0", "no FLR", "expect a reboot")


def test_one_refusal_speaks_for_itself() -> None:
    error = refusal_error([USE], "0000:09:00.0 0000:0a:04.1")
    assert error.render() == "0000:09:00.0: [PP001] the host uses it: eth0 (pick another)"
    assert exit_code_for(error) is ExitCode.REFUSED
    assert error.findings == [USE]


def test_several_refusals_are_summed_up_and_each_is_listed() -> None:
    error = refusal_error([USE, GROUP], "2 devices", listed=[USE, GROUP, RESET])
    assert error.render() == (
        "2 devices: [PP001] 2 refusals (PP001, PP102); nothing was changed (see each one below)"
    )
    assert error.findings == [USE, GROUP, RESET]


def test_raise_refusals_raises_only_for_refusals() -> None:
    raise_refusals([RESET], "0000:09:00.0")
    with pytest.raises(RefusedError) as raised:
        raise_refusals([RESET, GROUP], "0000:0a:04.1")
    assert raised.value.findings == [GROUP]


def test_worst_exit_is_an_exit_code() -> None:
    assert worst_exit([]) is ExitCode.OK
    assert worst_exit([RESET]) is ExitCode.FAILED
    assert worst_exit([RESET, USE]) is ExitCode.REFUSED


def test_persistence_findings_are_ordinary_findings_with_their_line(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two hide= values for one stub: the kernel keeps the last (PP009).
    conf = rhel5.base / "etc/modprobe.conf"
    conf.write_text(
        conf.read_text()
        + "options pciback hide=(0000:09:00.0)\noptions pciback hide=(0000:0a:04.1)\n"
    )
    line = conf.read_text().splitlines().index("options pciback hide=(0000:09:00.0)") + 1
    main(["--root", str(rhel5.base), "check", "--json"])
    report = json.loads(capsys.readouterr().out)
    duplicate = [f for f in report["findings"] if f.get("code") == "duplicate-hide"]
    assert duplicate == [
        {
            "rule": "PP009",
            "name": duplicate[0]["name"],
            "severity": "refuse",
            "subject": f"/etc/modprobe.conf:{line}",
            "message": duplicate[0]["message"],
            "remedy": duplicate[0]["remedy"],
            "code": "duplicate-hide",
            "path": "/etc/modprobe.conf",
            "line": line,
        }
    ]
    assert "0000:09:00.0" in duplicate[0]["message"]
