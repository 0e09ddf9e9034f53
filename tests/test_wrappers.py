"""The xl and xm wrappers, run as real shell scripts around a recording fake
xl/xm, in every grammar of both programs: xl's global options before the
subcommand, domain ids, option values that look like guests, xm's own
option grammar, and forms pcipass cannot read (refused while any guest
holds a device: fail closed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.guests.xen_argv import domain_names, identify
from pcipass.ops.hooks import wrapper_text
from pcipass.testing.harness import Lab

SRC = str(Path(__file__).resolve().parents[1] / "src")


def error_lines(stderr: str) -> list[str]:
    """The error lines of stderr: not the notice every command on the simulated
    kernel prints first, nor the indented findings listed under an error."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("pcipass: ") and not line.startswith("pcipass: simulated kernel:")
    ]


# What `xl list` / `xm list` print: rhel5pv is domain 7.
LISTING = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  1024     2     r-----     100.0\n"
    "rhel5pv                                      7   512     1     -b----      10.2\n"
    "other guest                                  9   512     1     -b----       1.0\n"
)


@pytest.fixture
def held(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> Lab:
    """rhel5pv holds 0000:09:00.0 (hidden, attached)."""
    rhel5.fake.mark_simulated()
    root = str(rhel5.base)
    assert main(["--root", root, "hide", "--now", "09:00.0"]) == 0
    assert main(["--root", root, "attach", "09:00.0", "rhel5pv", "--accept-pv-dma-risk"]) == 0
    capsys.readouterr()
    return rhel5


def make_wrapper(tmp_path: Path, tool: str) -> tuple[Path, Path]:
    """The installed wrapper text around a fake TOOL that answers `list` and
    records every other call, each argument ended by NUL."""
    record = tmp_path / "called"
    real = tmp_path / f"real-{tool}"
    listing = tmp_path / "listing"
    listing.write_text(LISTING)
    real.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = list ]; then cat {listing}; exit 0; fi\n'
        f"printf '%s\\0' \"$@\" > {record}\n"
    )
    real.chmod(0o755)
    wrapper = tmp_path / tool
    wrapper.write_text(wrapper_text(tool, str(real)))
    wrapper.chmod(0o755)
    return wrapper, record


def run(lab: Lab, wrapper: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": SRC, "PCIPASS_ROOT": str(lab.base), "PATH": os.environ["PATH"]}
    return subprocess.run(
        [str(wrapper), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


XL_REFUSED = [
    ["save", "rhel5pv", "/tmp/x.save"],
    ["save", "-c", "rhel5pv", "/tmp/x.save"],
    ["save", "-cp", "rhel5pv", "/tmp/x.save"],
    ["save", "rhel5pv", "/tmp/x.save", "-c"],  # getopt_long permutes
    ["save", "--", "rhel5pv", "/tmp/x.save"],
    ["-v", "save", "rhel5pv", "/tmp/x.save"],
    ["-vvN", "save", "rhel5pv", "/tmp/x.save"],
    ["-f", "-t", "-T", "-A", "migrate", "rhel5pv", "otherhost"],
    ["-vf", "--", "migrate", "rhel5pv", "otherhost"],
    ["save", "7", "/tmp/x.save"],  # domain id of rhel5pv
    ["-v", "save", "-c", "7", "/tmp/x.save"],
    ["migrate", "-s", "ssh -p 2222", "rhel5pv", "otherhost"],
    ["migrate", "-sfakessh", "rhel5pv", "otherhost"],
    ["migrate", "--live", "--debug", "-C", "/etc/xen/other.cfg", "-e", "rhel5pv", "otherhost"],
    ["migrate", "--li", "7", "otherhost"],  # getopt_long takes a unique prefix
    ["remus", "-i", "100", "-b", "rhel5pv", "backuphost"],
    ["restore", "/etc/xen/rhel5pv", "/tmp/x.save"],
    ["-N", "restore", "-p", "/etc/xen/rhel5pv", "/tmp/x.save"],
]
XL_UNREADABLE = [
    (["save", "12", "/tmp/x.save"], "domain id 12 is not in `xl list`"),
    (["-Z", "save", "other", "/tmp/x.save"], "-Z is not a global option"),
    (["--verbose", "save", "other", "/tmp/x.save"], "--verbose is not a global option"),
    (["save", "-Q", "other", "/tmp/x.save"], "-Q is not an option"),
    (["migrate", "--bogus", "other", "otherhost"], "--bogus is not an option"),
    (["migrate", "other", "otherhost", "-s"], "-s needs a value"),
    (["restore", "/tmp/x.save"], "the guest is inside the saved file"),
    (["save"], "no domain named"),
    (["save", "a\nb", "/tmp/x.save"], "control character"),
]
XL_ALLOWED = [
    ["save", "otherguest", "/tmp/x.save"],
    ["save", "9", "/tmp/x.save"],  # "other guest", which holds nothing
    ["-vvv", "migrate", "other guest", "otherhost"],
    ["migrate", "-C", "rhel5pv", "otherguest", "otherhost"],  # -C's value is a file
    ["migrate", "-s", "rhel5pv", "otherguest", "otherhost"],  # -s's value is a command
    ["info"],
    ["-v", "info"],
    ["pci-list", "rhel5pv"],
    ["create", "/etc/xen/save"],  # a word that is a subcommand elsewhere
]

XM_REFUSED = [
    ["save", "rhel5pv", "/tmp/x.save"],
    ["save", "-c", "rhel5pv", "/tmp/x.save"],
    ["save", "--checkpoint", "rhel5pv", "/tmp/x.save"],
    ["save", "rhel5pv", "/tmp/x.save", "-c"],
    ["save", "7", "/tmp/x.save"],
    ["migrate", "-l", "-r", "100", "-p", "8002", "-s", "-c", "rhel5pv", "otherhost"],
    ["migrate", "-lr100", "rhel5pv", "otherhost"],
    ["migrate", "--live", "--resource=100", "--port", "8002", "rhel5pv", "otherhost"],
    ["migrate", "--res", "100", "--ssl", "rhel5pv", "otherhost"],
    ["migrate", "rhel5pv", "otherhost", "--live"],
    ["suspend", "rhel5pv"],
    ["resume", "rhel5pv"],
]
XM_UNREADABLE = [
    (["restore", "/tmp/x.save"], "the guest is inside the saved file"),
    (["restore", "-p", "/tmp/x.save"], "the guest is inside the saved file"),
    (["migrate", "-x", "otherguest", "otherhost"], "-x is not an option"),
    (["migrate", "--port", "otherguest"], "no domain named"),
    (["save", "31", "/tmp/x.save"], "domain id 31 is not in `xm list`"),
]
XM_ALLOWED = [
    ["save", "otherguest", "/tmp/x.save"],
    ["migrate", "-r", "rhel5pv", "otherguest", "otherhost"],  # -r's value
    ["migrate", "-p", "7", "otherguest", "otherhost"],  # -p's value, not domain 7
    ["migrate", "--port=7", "otherguest", "otherhost"],
    ["info"],
    ["create", "save"],
]


def check_refused(done: subprocess.CompletedProcess[str], record: Path, reason: str = "") -> None:
    assert done.returncode == 3, done.stderr
    assert "[PP003]" in done.stderr and reason in done.stderr
    assert len(error_lines(done.stderr)) == 1 and done.stdout == ""
    assert not record.exists()  # the real program never ran (only `list`)


def check_allowed(done: subprocess.CompletedProcess[str], record: Path, argv: list[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert record.read_text().split("\0")[:-1] == argv


@pytest.mark.parametrize("argv", XL_REFUSED)
def test_xl_wrapper_refuses_every_grammar_of_a_held_guest(
    held: Lab, tmp_path: Path, argv: list[str]
) -> None:
    wrapper, record = make_wrapper(tmp_path, "xl")
    check_refused(run(held, wrapper, argv, tmp_path), record)


@pytest.mark.parametrize(("argv", "reason"), XL_UNREADABLE)
def test_xl_wrapper_fails_closed_on_what_it_cannot_read(
    held: Lab, tmp_path: Path, argv: list[str], reason: str
) -> None:
    wrapper, record = make_wrapper(tmp_path, "xl")
    done = run(held, wrapper, argv, tmp_path)
    check_refused(done, record, reason)
    assert "pcipass cannot tell which guest this concerns" in done.stderr
    assert "rhel5pv (0000:09:00.0)" in done.stderr


@pytest.mark.parametrize("argv", XL_ALLOWED)
def test_xl_wrapper_passes_what_holds_nothing(held: Lab, tmp_path: Path, argv: list[str]) -> None:
    wrapper, record = make_wrapper(tmp_path, "xl")
    check_allowed(run(held, wrapper, argv, tmp_path), record, argv)


@pytest.mark.parametrize("argv", XM_REFUSED)
def test_xm_wrapper_refuses_every_grammar_of_a_held_guest(
    held: Lab, tmp_path: Path, argv: list[str]
) -> None:
    wrapper, record = make_wrapper(tmp_path, "xm")
    check_refused(run(held, wrapper, argv, tmp_path), record)


@pytest.mark.parametrize(("argv", "reason"), XM_UNREADABLE)
def test_xm_wrapper_fails_closed_on_what_it_cannot_read(
    held: Lab, tmp_path: Path, argv: list[str], reason: str
) -> None:
    wrapper, record = make_wrapper(tmp_path, "xm")
    check_refused(run(held, wrapper, argv, tmp_path), record, reason)


@pytest.mark.parametrize("argv", XM_ALLOWED)
def test_xm_wrapper_passes_what_holds_nothing(held: Lab, tmp_path: Path, argv: list[str]) -> None:
    wrapper, record = make_wrapper(tmp_path, "xm")
    check_allowed(run(held, wrapper, argv, tmp_path), record, argv)


@pytest.mark.parametrize(
    ("tool", "argv"),
    [
        (tool, argv)
        for tool, cases in (("xl", XL_UNREADABLE), ("xm", XM_UNREADABLE))
        for argv, _ in cases
    ],
)
def test_unreadable_forms_pass_while_no_guest_holds_a_device(
    rhel5: Lab, tmp_path: Path, tool: str, argv: list[str]
) -> None:
    wrapper, record = make_wrapper(tmp_path, tool)
    check_allowed(run(rhel5, wrapper, argv, tmp_path), record, argv)


def test_xl_restore_with_a_config_naming_a_guest_that_holds_nothing(
    held: Lab, tmp_path: Path
) -> None:
    # A relative CONFIG is taken from the working directory, which must lie inside the
    # root (under --root DIR a path outside it is refused): here the root's /etc/xen.
    xen = held.base / "etc/xen"
    (xen / "other.cfg").write_text('name = "otherguest"\nmemory = 512\n')
    wrapper, record = make_wrapper(tmp_path, "xl")
    argv = ["restore", "other.cfg", "/tmp/x.save"]
    check_allowed(run(held, wrapper, argv, xen), record, argv)


# --- the grammar itself ---------------------------------------------------------


def test_identify_reads_values_as_values() -> None:
    call = identify("xm", ["migrate", "-p", "8002", "-r", "100", "web", "dest"])
    assert (call.operation, call.domain, call.unidentified) == ("migrate", "web", None)
    call = identify("xl", ["-vvN", "remus", "-N", "script", "-i", "5", "web", "dest"])
    assert (call.command, call.operation, call.domain) == ("remus", "migrate", "web")
    assert identify("xl", ["list"]).operation is None


def test_domain_names_keep_names_with_spaces() -> None:
    assert domain_names(LISTING) == {"0": "Domain-0", "7": "rhel5pv", "9": "other guest"}
