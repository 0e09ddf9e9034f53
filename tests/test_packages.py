"""The Debian package and the RPM: built with the distributions' tools, same files, and they run.

`make deb rpm` is run for real (debhelper + dh-python, lintian clean; rpmbuild), then each package
is unpacked (dpkg-deb -x, rpm2cpio | cpio) and its /usr/bin/pcipass is run on the example host:
its output must be the checked-out CLI's.  The build takes about a minute, so it runs once, in the
main suite (the virtualenv `make test` builds), not again under every Python of `make test-pythons`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcipass.testing.example import build_kvm
from pcipass.testing.tools import require_tool

REPO = Path(__file__).resolve().parent.parent
TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "lintian": "lintian",
    "rpmbuild": "rpm",
    "rpm2cpio": "rpm",
    "cpio": "cpio",
}
pytestmark = pytest.mark.slow


def version() -> str:
    found = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert found
    return found.group(1)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("the packages are built once, by the main suite's virtualenv (.venv)")
    for tool in TOOLS:
        require_tool(tool)  # skipped without it; FAILED under CI (pcipass.testing.tools)
    out = tmp_path_factory.mktemp("packages")
    done = subprocess.run(
        ["make", "-C", str(REPO), f"DIST={out}/dist", f"PKG_BUILD={out}/build", "deb", "rpm"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "dist"


def unpack(package: Path, into: Path) -> Path:
    into.mkdir()
    if package.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(package), str(into)], check=True)
    else:
        payload = subprocess.run(["rpm2cpio", str(package)], capture_output=True, check=True)
        subprocess.run(["cpio", "-idm", "--quiet"], input=payload.stdout, cwd=into, check=True)
    return into


def installed_files(tree: Path) -> dict[str, set[str]]:
    """What a package installs, by kind: commands, manual, completions, and the module files."""
    files = [p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()]
    return {
        "bin": {f for f in files if f.startswith("usr/bin/")},
        "man": {re.sub(r"\.gz$", "", f) for f in files if "/man/man1/" in f},
        "bash": {f for f in files if "bash-completion/completions/" in f},
        "zsh": {Path(f).name for f in files if "/zsh/" in f},
        "modules": {
            f.split("/pcipass/", 1)[1]
            for f in files
            if "/pcipass/" in f and f.endswith(".py") and "-packages/" in f
        },
    }


def test_deb_and_rpm_install_the_same_files_and_run(packages: Path, tmp_path: Path) -> None:
    v = version()
    deb = unpack(packages / f"pcipass_{v}_all.deb", tmp_path / "deb")
    (rpm_file,) = packages.glob(f"pcipass-{v}-*.noarch.rpm")
    rpm = unpack(rpm_file, tmp_path / "rpm")
    deb_files, rpm_files = installed_files(deb), installed_files(rpm)
    sources = {
        p.relative_to(REPO / "src" / "pcipass").as_posix()
        for p in (REPO / "src" / "pcipass").rglob("*.py")
    }
    for files in (deb_files, rpm_files):
        assert files["bin"] == {"usr/bin/pcipass"}
        assert files["man"] == {"usr/share/man/man1/pcipass.1"}
        assert files["bash"] == {"usr/share/bash-completion/completions/pcipass"}
        assert files["zsh"] == {"_pcipass"}
        assert files["modules"] == sources
    # Never installed by a package: the guard is an explicit act (pcipass guard-install).
    for tree in (deb, rpm):
        assert not list(tree.rglob("hooks")) and not (tree / "usr/local").exists()

    root = tmp_path / "host"
    build_kvm(root)
    expected = subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", str(root), "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for tree in (deb, rpm):
        (sitelib,) = {p.parent.parent for p in tree.rglob("pcipass/__init__.py")}
        # The launchers run Python isolated (-I: no PYTHONPATH), so run each as its own
        # interpreter line would, with the unpacked site-packages put first.
        launcher = tree / "usr/bin/pcipass"
        assert launcher.read_text().startswith("#!")
        ran = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "sys.argv[0] = sys.argv[1]; runpy.run_path(sys.argv.pop(1), run_name='__main__')",
                str(sitelib),
                str(launcher),
                "--root",
                str(root),
                "list",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert (ran.returncode, ran.stdout) == (0, expected), ran.stderr


def test_package_versions_agree() -> None:
    v = version()
    assert f"pcipass ({v})" in (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert re.search(
        rf"^Version:\s+{re.escape(v)}$", (REPO / "packaging" / "pcipass.spec").read_text(), re.M
    )
    from pcipass import __version__

    assert __version__ == v
