"""The start-up path stays lean: what a command loads, not how long it takes (issue #13).

Each command runs in a fresh interpreter through a small wrapper that records every module
imported (``sys.modules`` at exit, what ``python -X importtime`` lists) and, with an audit
hook (``sys.addaudithook``), every ``open`` of a file named pci.ids.  The checks are
structural: a module that is not imported costs nothing, whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import pcipass
from pcipass.cli.main import COMMANDS, build_parser, command_word
from pcipass.testing.example import build_kvm, build_rhel5_xen

# Runs pcipass as ``python -m pcipass`` would, then writes what it loaded to argv[1]:
# the modules that were not loaded before it started, and the pci.ids files opened.
WRAPPER = """
import runpy, sys
already = set(sys.modules)  # the interpreter's own (site, .pth files): not pcipass's doing
report, opened = sys.argv[1], []
def audit(event, args):
    if event == "open" and str(args[0]).endswith("pci.ids"):
        opened.append(str(args[0]))
sys.addaudithook(audit)
sys.argv = ["pcipass", *sys.argv[2:]]
try:
    runpy.run_module("pcipass", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
loaded = sorted(set(sys.modules) - already)
import json  # after the list is taken: the wrapper's own needs do not count
with open(report, "w") as out:
    json.dump({"modules": loaded, "pci_ids": opened, "code": code}, out)
"""

#: Never needed to list or show devices on a host without a ledger.
HEAVY = (
    "sqlite3",  # the ledger: only when state.db (or its side files) exists
    "_sqlite3",
    "hashlib",  # the ledger's identities
    "pcipass.state.ledger",
    "pcipass.persist.atomic",  # the writer: nothing is written
    "subprocess",  # the runner: no program is run
    "pcipass.ops.guests",  # the guest parsers: only for --guests
    "xml.etree.ElementTree",
)
#: Handler modules of commands other than the one run.
HANDLERS = {f"pcipass.cli.{command.module}" for command in COMMANDS}


def run_traced(tmp_path: Path, *argv: str) -> dict[str, object]:
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    # The pcipass under test, wherever it is imported from (a checkout's src).
    env["PYTHONPATH"] = str(Path(pcipass.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(report), *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    data: dict[str, object] = json.loads(report.read_text())
    return data


def modules(data: dict[str, object]) -> set[str]:
    names = data["modules"]
    assert isinstance(names, list)
    return set(names)


@pytest.fixture(params=["rhel5", "kvm"])
def plain_host(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An example host without the simulated-kernel marker: a plain tree, no ledger."""
    base = tmp_path / str(request.param)
    (build_rhel5_xen if request.param == "rhel5" else build_kvm)(base)
    assert not (base / "var/lib/pcipass").exists()
    return base


@pytest.mark.parametrize(
    "argv",
    [["list"], ["list", "--tree"], ["show", "0000:00:1f.2"], ["--json", "list"]],
    ids=["list", "list-tree", "show", "list-json"],
)
def test_reading_devices_loads_no_ledger_runner_or_guest_parser(
    plain_host: Path, tmp_path: Path, argv: Sequence[str]
) -> None:
    data = run_traced(tmp_path, "--root", str(plain_host), *argv)
    assert data["code"] == 0
    loaded = modules(data)
    assert sorted(loaded & set(HEAVY)) == []
    # Only the handler of the command run is imported (one sub-parser is built).
    assert loaded & HANDLERS == {"pcipass.cli.cmd_inventory"}
    # JSON only when JSON is printed.
    assert ("json" in loaded) == ("--json" in argv)
    # pci.ids comes from the root only (it has its own), opened once per inventory:
    # ``show`` builds two (the device's, then the whole bus for the assignability rules).
    ids = str(plain_host / "usr/share/misc/pci.ids")
    assert data["pci_ids"] == [ids] * (2 if argv[0] == "show" else 1)


def test_status_without_a_ledger_loads_no_sqlite(plain_host: Path, tmp_path: Path) -> None:
    data = run_traced(tmp_path, "--root", str(plain_host), "status")
    assert data["code"] == 0
    assert sorted(modules(data) & set(HEAVY)) == []
    assert data["pci_ids"] == []


@pytest.fixture(scope="module")
def example_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document's example host, simulated kernel and all (what ``make demo`` builds)."""
    base = tmp_path_factory.mktemp("example") / "host"
    build_rhel5_xen(base)
    return base


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["show", "09:00.0"],
        ["status"],
        ["check"],
        ["guests"],
        ["hide", "--now", "--dry-run", "09:00.0"],
        ["hide", "--persist", "--dry-run", "09:00.0"],
        ["attach", "--dry-run", "--hide", "09:00.0", "rhel5pv"],
    ],
    ids=lambda argv: "-".join(a.strip("-") for a in argv[:2]),
)
def test_no_verb_loads_dataclasses_or_inspect(
    example_host: Path, tmp_path: Path, argv: Sequence[str]
) -> None:
    """Data classes come from pcipass.record: ``dataclasses`` imports inspect (with
    ast, dis and tokenize) and compiles every class's methods at import."""
    data = run_traced(tmp_path, "--root", str(example_host), *argv)
    assert data["code"] in (0, 1, 3)
    assert sorted(modules(data) & {"dataclasses", "inspect", "dis", "tokenize"}) == []


def test_version_loads_no_parser_host_or_names(tmp_path: Path) -> None:
    data = run_traced(tmp_path, "--version")
    assert data["code"] == 0
    loaded = modules(data)
    light = {"argparse", "typing", "enum", "re", "dataclasses", "inspect", "pcipass.errors"}
    assert sorted(loaded & {*HEAVY, *light, "pcipass.host.context"}) == []
    assert loaded & HANDLERS == set()
    assert data["pci_ids"] == []


def test_with_a_ledger_the_owners_are_read(tmp_path: Path) -> None:
    """The other side of the presence check: state.db exists, so SQLite is loaded and
    the ledger's owner reaches the listing."""
    base = tmp_path / "host"
    build_rhel5_xen(base).mark_simulated()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    env["PYTHONPATH"] = str(Path(pcipass.__file__).resolve().parent.parent)
    hide = [sys.executable, "-m", "pcipass", "--root", str(base), "hide", "--now"]
    subprocess.run([*hide, "0000:09:00.0"], env=env, capture_output=True, check=True)
    assert (base / "var/lib/pcipass/state.db").is_file()
    data = run_traced(tmp_path, "--root", str(base), "status")
    assert {"sqlite3", "pcipass.state.ledger"} <= modules(data)


# --- one sub-parser: the same answers as the whole parser ---------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["--root", "/r", "list", "--json"],
        ["--root=/r", "--json", "show", "09:00.0"],
        ["--json", "check", "0000:09:00.0"],
        ["hide", "--now", "--dry-run", "09:00.0"],
        ["--root", "/r", "attach", "--dry-run", "09:00.0", "g", "--root", "/s"],
        ["export", "--format", "nova"],
        ["guest-setup", "--dry-run"],
    ],
)
def test_one_sub_parser_parses_as_the_whole_parser(argv: list[str]) -> None:
    word = command_word(argv)
    assert word is not None
    assert build_parser(word).parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-h", "list"],
        ["--ro", "/r", "list"],  # an abbreviation: argparse's rules, not ours
        ["lis"],
        ["--", "list"],
        ["--root"],
        ["--json=1", "list"],
    ],
)
def test_anything_unusual_gets_the_whole_parser(argv: list[str]) -> None:
    assert command_word(argv) is None


def test_the_dry_run_option_comes_from_the_table() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in COMMANDS:
        child = sub.choices[command.name]
        has = any("--dry-run" in a.option_strings for a in child._actions)
        assert has == command.dry_run, command.name


def test_check_loads_the_vf_and_desired_state_machinery_only_when_used(
    example_host: Path, tmp_path: Path
) -> None:
    """No VF boot rule and no pcipass.toml on the example host: ``check`` reads
    the two files' absence and loads neither the VF operations nor the planner."""
    data = run_traced(tmp_path, "--root", str(example_host), "check")
    assert data["code"] in (0, 1, 3)
    unused = {"pcipass.ops.vfs", "pcipass.ops.vf_net", "pcipass.ops.desired", "pcipass.ops.pins"}
    assert sorted(modules(data) & unused) == []
