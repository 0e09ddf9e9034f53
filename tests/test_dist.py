"""Reach: the one-file build and the wheel run on every Python pcipass supports (3.9 to 3.13).

Each build is run for real with pyenv's interpreters on the example host and must print exactly
what the checked-out CLI prints.  Under CI a missing interpreter fails (CI must not claim
versions it did not run); elsewhere it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pcipass.testing.example import build_kvm, build_rhel5_xen

REPO = Path(__file__).resolve().parent.parent
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
VERSIONS = ("3.9", "3.13")
BUILD_ZIPAPP = REPO / "packaging" / "build_zipapp.py"


def interpreter(version: str) -> Path:
    found = sorted(
        PYENV.glob(f"{version}.*/bin/python"),
        key=lambda p: tuple(int(x) for x in p.parent.parent.name.split(".") if x.isdigit()),
    )
    if not found:
        message = f"no Python {version} under {PYENV} (pyenv install {version})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PCIPASS_ROOT")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("hosts")
    build_rhel5_xen(base / "rhel5")
    build_kvm(base / "kvm")
    return [base / "rhel5", base / "kvm"]


def reference(host: Path, *command: str) -> str:
    done = run([sys.executable, "-m", "pcipass", "--root", str(host), *command])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "pcipass.pyz"
    done = run([sys.executable, str(BUILD_ZIPAPP), "--output", str(out)])
    assert done.returncode == 0, done.stderr
    return out


def test_zipapp_is_reproducible_and_carries_no_cache(zipapp: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pyz"
    done = run([sys.executable, str(BUILD_ZIPAPP), "--output", str(again)])
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == zipapp.read_bytes()
    assert zipapp.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(zipapp, os.X_OK)
    names = zipfile.ZipFile(zipapp).namelist()
    assert "__main__.py" in names and "pcipass/cli/main.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", [("list",), ("list", "--json"), ("check",)])
def test_zipapp_prints_what_the_cli_prints(
    zipapp: Path, hosts: list[Path], version: str, command: tuple[str, ...], tmp_path: Path
) -> None:
    python = interpreter(version)
    for host in hosts:
        done = run([str(python), str(zipapp), "--root", str(host), *command], cwd=tmp_path)
        expected = run([sys.executable, "-m", "pcipass", "--root", str(host), *command])
        assert (done.returncode, done.stdout) == (expected.returncode, expected.stdout), done.stderr


def test_zipapp_refuses_an_old_python_by_name(zipapp: Path) -> None:
    main = zipfile.ZipFile(zipapp).read("__main__.py").decode()
    assert "sys.version_info < (3, 9)" in main


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("pcipass-*.whl")
    return built


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_wheel_installs_in_a_fresh_venv_and_runs(
    wheel: Path, hosts: list[Path], version: str, tmp_path: Path
) -> None:
    python = interpreter(version)
    venv = tmp_path / "venv"
    assert run([str(python), "-m", "venv", str(venv)]).returncode == 0
    done = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for host in hosts:
        installed = run([str(venv / "bin" / "pcipass"), "--root", str(host), "list", "--json"])
        assert installed.returncode == 0, installed.stderr
        assert installed.stdout == reference(host, "list", "--json")
