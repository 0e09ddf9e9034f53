"""The needs_tool marker: skipped without the program, FAILED under CI naming the package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcipass.testing.tools import TOOL_PACKAGES, find_tool, in_ci, require_tool

TESTS = Path(__file__).resolve().parent
APT_PACKAGES = TESTS.parent / ".ci/apt-packages.txt"
ABSENT = "pcipass-test-no-such-program"

PROBE = f"""
import pytest

@pytest.mark.needs_tool({ABSENT!r})
def test_marked():
    pass

def test_fixture_style():
    from pcipass.testing.tools import require_tool
    require_tool({ABSENT!r})
"""


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """A pytest run of PROBE with this suite's conftest as its plugin."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  needs_tool: probe\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest", "-rsfE"]
    argv += ["-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_probe.py")]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )


def test_without_ci_a_missing_program_skips(tmp_path: Path) -> None:
    done = run_probe(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "2 skipped" in done.stdout
    assert f"{ABSENT} is not installed: install Debian package {ABSENT}" in done.stdout


def test_under_ci_a_missing_program_fails_with_the_package(tmp_path: Path) -> None:
    done = run_probe(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    # The marker fails in setup (an error), require_tool in the test body (a failure).
    assert "1 failed, 1 error" in done.stdout
    assert "CI runs every test, none is skipped" in done.stdout
    assert f"install Debian package {ABSENT}" in done.stdout


def test_the_message_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pcipass.testing.tools._SBIN", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install Debian package pciutils"):
        require_tool("lspci")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install kmod"):
        require_tool("modprobe")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("yes", True), ("", False), ("0", False), ("false", False)],
)
def test_what_counts_as_ci(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected
    assert in_ci({}) is False


def test_find_tool_looks_in_sbin_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "sbin" / "depmod"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr("pcipass.testing.tools._SBIN", (str(program.parent),))
    assert find_tool("depmod") == str(program)
    assert find_tool("modprobe") is None


def tools_the_tests_name() -> set[str]:
    names: set[str] = set()
    for path in TESTS.glob("test_*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        for args in re.findall(r"needs_tool\(([^)]*)\)", text):
            names.update(re.findall(r"\"([^\"]+)\"", args))
        names.update(re.findall(r"(?:require|find)_tool\(\"([^\"]+)\"\)", text))
    return names


def test_every_program_the_tests_run_has_its_package_installed_by_ci() -> None:
    named = tools_the_tests_name()
    assert {"lspci", "modprobe", "depmod", "virt-xml-validate", "xmllint", "sh"} <= named
    listed = {
        line.strip()
        for line in APT_PACKAGES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    essential = {"dash", "bash"}  # on every Debian system
    for name in sorted(named):
        assert name in TOOL_PACKAGES, f"{name}: add its Debian package to TOOL_PACKAGES"
        package = TOOL_PACKAGES[name]
        assert package in listed | essential, f"{package} ({name}) missing from {APT_PACKAGES}"
