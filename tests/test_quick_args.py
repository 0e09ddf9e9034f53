"""The quick parser gives what argparse gives, or leaves the line to argparse.

Command lines are generated for every command from its own declarations:
exact options with good and bad values, operands, global options before and
after the command, and words argparse treats specially (help, abbreviations,
short options, ``--``, values starting with ``-``).  Whenever
:func:`pcipass.cli.quick_args.parse` answers, argparse must accept the same
line and give the same namespace.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcipass.cli import quick_args
from pcipass.cli.commands import COMMANDS, command_word
from pcipass.cli.parser import build_parser
from pcipass.errors import UsageError

NAMES = [command.name for command in COMMANDS]

#: Values for options and operands, plain and awkward.
VALUES = [
    "09:00.0",
    "0000:0a:04.1",
    "g1",
    "rhel5pv",
    "5",
    "0",
    "-1",
    "x y",
    "",
    "net",
    "vfio-pci",
    "none",
    "@nic",
    "a=b",
    "-",
    "--",
]
#: Words that are not the command's own options.
STRANGERS = ["--help", "-h", "--dry", "--bogus", "-x", "--", "--json=1", "--version"]


def declared(command_name: str) -> quick_args.Recorder:
    command = next(c for c in COMMANDS if c.name == command_name)
    recorder = quick_args.Recorder()
    stand_in: Any = recorder
    quick_args.declare.command_arguments(command, stand_in, suppress=quick_args.SUPPRESS)
    return recorder


def option_words(command_name: str) -> list[list[str]]:
    """Each option of the command, alone or with each kind of value."""
    words: list[list[str]] = []
    for name, argument in declared(command_name).options.items():
        if argument.action in ("store_true", "store_false"):
            words += [[name], [f"{name}=1"]]
            continue
        choices = [str(c) for c in (argument.choices or [])]
        for value in [*choices[:3], *VALUES[:8], "-v"]:
            words += [[name, value], [f"{name}={value}"]]
        words.append([name])  # value missing
    return words


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(NAMES))
    before: list[str] = []
    for item in draw(st.lists(st.sampled_from(["root", "root=", "json"]), max_size=3)):
        before += {"root": ["--root", "/tmp/t1"], "root=": ["--root=/tmp/t2"], "json": ["--json"]}[
            item
        ]
    pieces = option_words(name)
    items = draw(
        st.lists(
            st.one_of(
                st.sampled_from(pieces) if pieces else st.nothing(),
                st.sampled_from(VALUES).map(lambda v: [v]),
                st.sampled_from(STRANGERS).map(lambda v: [v]),
                st.sampled_from([["--root", "/tmp/t3"], ["--json"], ["--root=/tmp/t4"]]),
            ),
            max_size=6,
        )
    )
    return [*before, name, *[word for item in items for word in item]]


def argparse_namespace(words: list[str]) -> dict[str, object] | None:
    parser = build_parser(command_word(words))
    try:
        return dict(vars(parser.parse_args(words)))
    except (UsageError, SystemExit):
        return None


@settings(max_examples=1500, deadline=None)
@given(command_lines())
def test_what_the_quick_parser_answers_argparse_answers_too(words: list[str]) -> None:
    quick = quick_args.parse(words, command_word(words) or "")
    if quick is None:
        return  # left to argparse: nothing to compare
    assert argparse_namespace(words) == vars(quick), words


@pytest.mark.parametrize(
    "words",
    [
        ["list"],
        ["--root", "/tmp/x", "list"],
        ["--json", "list", "--driver", "vfio-pci"],
        ["list", "--class", "net", "--group", "7", "--guests"],
        ["show", "09:00.0", "--root=/tmp/x"],
        ["status", "--json"],
        ["check"],
        ["check", "09:00.0", "0a:00.0"],
        ["hide", "--now", "09:00.0"],
        ["hide", "09:00.0", "--persist", "--dry-run"],
        ["unhide", "--now", "09:00.0"],
        ["attach", "g1", "09:00.0", "--dry-run"],
        ["guests"],
        ["guests", "g1", "g2"],
        ["vfs", "02:00.0", "4"],
        ["vfs", "02:00.0", "2", "--for-host"],
        ["explain", "some", "error", "text"],
        ["check", "--guest", "g1", "--guest=g2"],  # append: both kept, in order
        ["vfs", "02:00.0", "--mac", "0=aa", "--mac", "1=bb"],
    ],
)
def test_plain_lines_are_parsed_quickly_and_alike(words: list[str]) -> None:
    """The common lines really take the quick path (or the speed is not had)."""
    if command_word(words) is None:
        pytest.skip(f"no such command in this build: {words}")
    quick = quick_args.parse(words, command_word(words) or "")
    assert quick is not None, words
    assert argparse_namespace(words) == vars(quick)


@pytest.mark.parametrize(
    "words",
    [
        ["list", "--help"],
        ["list", "-h"],
        ["list", "--gro", "3"],  # an abbreviation argparse accepts
        ["list", "--group", "three"],  # argparse's error message
        ["list", "--driver"],
        ["list", "--driver", "-x"],
        ["hide", "09:00.0", "--now", "0a:00.0"],  # operands split by an option
        ["hide", "--", "09:00.0"],
        ["show"],  # the operand is missing
        ["show", "09:00.0", "0a:00.0"],  # one too many
        ["list", "--tree=yes"],
        ["vfs", "02:00.0", "--for-host", "--for-guests"],  # an exclusive group twice
    ],
)
def test_unusual_lines_are_left_to_argparse(words: list[str]) -> None:
    assert quick_args.parse(words, command_word(words) or "") is None


def test_the_root_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCIPASS_ROOT", "/srv/image")
    quick = quick_args.parse(["list"], "list")
    assert quick is not None and quick.root == "/srv/image" == os.environ["PCIPASS_ROOT"]
    assert argparse_namespace(["list"]) == vars(quick)


def test_list_loads_no_argparse(tmp_path: Any) -> None:
    """The point of it all: a plain ``list`` never imports argparse, gettext or locale."""
    import subprocess
    import sys

    from pcipass.testing.example import build_kvm

    build_kvm(tmp_path / "host")
    code = (
        "import sys, io, contextlib\n"
        "from pcipass.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['--root', {str(tmp_path / 'host')!r}, 'list'])\n"
        "print(sorted({'argparse', 'gettext', 'locale'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr
