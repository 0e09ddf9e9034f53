"""The man page and the shell completion come from the parser: nothing of the CLI is missing.

The man page is rendered by groff with warnings on (-ww): a warning fails.  Completion is checked
by driving bash's own completion function, as bash does on TAB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcipass.cli.main import COMMANDS, build_parser
from pcipass.policy.rules import RULES
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def build(script: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "packaging" / script), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> str:
    groff = require_tool("groff")
    page = tmp_path_factory.mktemp("man") / "pcipass.1"
    build("build_manpage.py", "--output", str(page))
    rendered = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-P", "-c", "-P", "-b", "-P", "-u", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0
    assert rendered.stderr == "", rendered.stderr
    return rendered.stdout


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_manual_names_every_command_and_option(manual: str) -> None:
    text = " ".join(manual.replace("\u2010", "-").split())
    for name, parser in subparsers().items():
        assert f"pcipass {name}" in text
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in text, f"{name} {option}"


def test_the_manual_has_every_rule_and_exit_code(manual: str) -> None:
    for rule in RULES.values():
        assert f"{rule.id} {rule.name}" in manual
    exit_section = manual.split("EXIT STATUS", 1)[1].split("RULES", 1)[0]
    listed = {line.split()[0] for line in exit_section.splitlines() if line[:8].strip().isdigit()}
    assert listed >= {"0", "1", "2", "3", "4", "130"}


@pytest.fixture(scope="module")
def completion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("completion")
    build("build_completion.py", "--output-dir", str(out))
    return out


def complete(script: Path, words: list[str], env: dict[str, str] | None = None) -> list[str]:
    """What bash offers on TAB after ``words`` (the last one being completed)."""
    bash = require_tool("bash")
    driver = (
        f"source {script}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n'
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        '_shtab_pcipass pcipass "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [bash, "--norc", "-c", driver, "complete", *words],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_and_options(completion: Path) -> None:
    script = completion / "pcipass.bash"
    assert set(complete(script, ["pcipass", ""])) >= {c.name for c in COMMANDS}
    assert complete(script, ["pcipass", "gua"]) == ["guard", "guard-install"]
    offered = complete(script, ["pcipass", "hide", "--"])
    hide = subparsers()["hide"]
    assert set(offered) == {
        o for a in hide._actions for o in a.option_strings if o.startswith("--")
    }


def test_bash_completes_addresses_and_guests_of_the_root(completion: Path, tmp_path: Path) -> None:
    build_rhel5_xen(tmp_path / "host")
    root = str(tmp_path / "host")
    devices = sorted(p.name for p in (Path(root) / "sys/bus/pci/devices").iterdir())
    script = completion / "pcipass.bash"
    assert complete(script, ["pcipass", "--root", root, "hide", ""]) == devices
    assert complete(script, ["pcipass", f"--root={root}", "show", "0000:09"]) == ["0000:09:00.0"]
    assert complete(script, ["pcipass", "show", "0000:0a"], {"PCIPASS_ROOT": root}) == [
        d for d in devices if d.startswith("0000:0a")
    ]
    guests = complete(script, ["pcipass", "--root", root, "attach", "0000:09:00.0", ""])
    assert guests and all(g.strip() == g for g in guests)
    listed = subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", root, "guests", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    names = {g["name"] for g in json.loads(listed.stdout)["guests"]}
    assert set(guests) == names


def test_bash_completes_pinned_names(completion: Path, tmp_path: Path) -> None:
    build_rhel5_xen(tmp_path / "host")
    root = str(tmp_path / "host")
    script = completion / "pcipass.bash"
    assert complete(script, ["pcipass", "--root", root, "show", "@"]) == []
    toml = Path(root) / "etc/pcipass/pcipass.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text('[device.uplink]\nbackend = "pciback"\n[device.spare.match]\nvendor = "14e4"\n')
    assert complete(script, ["pcipass", "--root", root, "hide", "@"]) == ["@uplink"]
    if shutil.which("sqlite3") is None:
        return  # the ledger's pins need the sqlite3 program; the file's names do not
    subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", root, "pin", "09:00.0", "guestnic"],
        capture_output=True,
        check=True,
    )
    assert complete(script, ["pcipass", "--root", root, "hide", "@"]) == ["@guestnic", "@uplink"]


def test_completion_runs_no_python(completion: Path) -> None:
    # Completion must cost no interpreter start-up: the helpers read the tree in shell.
    for name in ("pcipass.bash", "_pcipass"):
        text = (completion / name).read_text()
        substitutions = [part.split(")")[0] for part in text.split("$(")[1:]]
        assert substitutions
        assert not [s for s in substitutions if "python" in s or "pcipass " in s]


def test_zsh_completion_parses(completion: Path) -> None:
    zsh = require_tool("zsh")
    done = subprocess.run(
        [zsh, "-n", str(completion / "_pcipass")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
