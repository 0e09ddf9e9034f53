"""Kernel command line hiding: /etc/default/grub edits, reading, /proc/cmdline.

Cross-check with the real shell: the test fixtures below (written here, never
a user's file) are sourced by /bin/sh the way grub-mkconfig sources
/etc/default/grub, and the value the shell assigns must be what pcipass
reads and meant to write.  Fuzzed files are only syntax-checked with
``sh -n`` (nothing is executed).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.host.platform import detect_platform
from pcipass.host.root import HostRoot
from pcipass.persist.cmdline import (
    ConfiguredCmdline,
    add_hide,
    collect_grub_files,
    parse_kernel_cmdline,
    read_configured,
    read_running,
    regeneration,
    remove_hide,
)
from pcipass.persist.modprobe import read_persistent_hides
from pcipass.persist.shell_assign import ShellFile
from pcipass.policy.persist_rules import configured_findings, cross_findings
from pcipass.policy.verdict import Finding
from pcipass.testing.tools import find_tool

A = PciAddress.parse("0000:09:00.0")
B = PciAddress.parse("0000:0a:04.1")
PCIBACK = Backend.PCIBACK
VFIO = Backend.VFIO
SH = find_tool("sh")


def _findings(configured: ConfiguredCmdline) -> list[Finding]:
    """The PP009/PP010 findings of a configured command line (policy/persist_rules)."""
    return configured_findings(configured.problems, configured.hides)


def needs_sh(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that runs /bin/sh on its own fixtures (pcipass.testing.tools)."""
    return pytest.mark.needs_tool("sh")(test)


# A Debian 12 /etc/default/grub as installed (its usual shape, comments shortened).
DEBIAN = b"""\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""

# Uncomment to disable graphical terminal (grub-pc only)
#GRUB_TERMINAL=console
"""

RHEL9 = b"""\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M \\
resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
"""


def shell_value(tmp_path: Path, data: bytes, name: str = "GRUB_CMDLINE_LINUX") -> str:
    """What /bin/sh assigns when it sources ``data`` (our own test fixture)."""
    assert SH is not None
    path = tmp_path / "grub"
    path.write_bytes(data)
    result = subprocess.run(
        [SH, "-c", f'. "$1" >/dev/null 2>&1; printf %s "${name}"', "sh", str(path)],
        capture_output=True,
        env={"PATH": "/nonexistent"},  # nothing the file could call is found
        timeout=30,
        check=True,
    )
    return result.stdout.decode("latin-1")


# --------------------------------------------------------------------------
# Editing
# --------------------------------------------------------------------------


@needs_sh
@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (DEBIAN, "xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (
            RHEL9,
            "crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rhel-swap "
            "rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet "
            "xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)",
        ),
        (b"GRUB_CMDLINE_LINUX=quiet\n", "quiet xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (b"GRUB_CMDLINE_LINUX='a  b'", "a  b xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (b"GRUB_CMDLINE_LINUX=", "xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (
            b'GRUB_CMDLINE_LINUX="a \\\n  b"\n',
            "a   b xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)",
        ),
        (b'export GRUB_CMDLINE_LINUX="x"\r\n', "x\r xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (b'GRUB_CMDLINE_LINUX="\\$HOME"\n', "$HOME xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (b"GRUB_TIMEOUT=5", "xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (b"", "xen-pciback.hide=(0000:09:00.0)(0000:0a:04.1)"),
        (
            b'GRUB_CMDLINE_LINUX="x xen-pciback.hide=(0000:01:00.0) y"\n',
            "x xen-pciback.hide=(0000:01:00.0)(0000:09:00.0)(0000:0a:04.1) y",
        ),
    ],
)
def test_add_then_remove_and_the_shell_agrees(
    tmp_path: Path, original: bytes, expected: str
) -> None:
    one = add_hide(original, backend=PCIBACK, addresses=[A])
    both = add_hide(one, backend=PCIBACK, addresses=[B])
    assert shell_value(tmp_path, both) == expected
    assert read_configured({"/etc/default/grub": both}, xen=True).hides.hidden() >= {A, B}
    # Every other line kept: only the assignment's value changed (or lines were added).
    removed = remove_hide(both, backend=PCIBACK, addresses=[B, A])
    if original == b"GRUB_CMDLINE_LINUX=":
        assert removed == b'GRUB_CMDLINE_LINUX=""'  # the one spelling that cannot come back
    else:
        assert removed == original
    assert shell_value(tmp_path, removed) == shell_value(tmp_path, original)


def test_created_variable_is_marked_and_goes_again() -> None:
    text = add_hide(b"GRUB_TIMEOUT=5", backend=PCIBACK, addresses=[A])
    assert text == (
        b"GRUB_TIMEOUT=5\n"
        b"# pcipass: added GRUB_CMDLINE_LINUX (and the newline before this comment)\n"
        b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:09:00.0)"\n'
    )
    assert remove_hide(text, backend=PCIBACK, addresses=[A]) == b"GRUB_TIMEOUT=5"


@needs_sh
def test_vfio_ids_on_the_command_line(tmp_path: Path) -> None:
    text = add_hide(DEBIAN, backend=VFIO, ids=["8086:10D3", "10de:1b80"])
    assert shell_value(tmp_path, text) == "vfio-pci.ids=8086:10d3,10de:1b80"
    assert read_configured({"/etc/default/grub": text}).hides.hidden_ids() == {
        "8086:10d3",
        "10de:1b80",
    }
    assert add_hide(text, backend=VFIO, ids=["8086:10d3"]) == text  # already there
    first_gone = remove_hide(text, backend=VFIO, ids=["8086:10d3"])
    assert shell_value(tmp_path, first_gone) == "vfio-pci.ids=10de:1b80"
    assert remove_hide(first_gone, backend=VFIO, ids=["10de:1b80"]) == DEBIAN
    with pytest.raises(UsageError, match="vendor:device ids"):
        add_hide(DEBIAN, backend=VFIO, addresses=[A])
    with pytest.raises(UsageError, match="not by id"):
        add_hide(DEBIAN, backend=PCIBACK, ids=["8086:10d3"])


@needs_sh
def test_xen_replace_variable_is_the_one_for_dom0(tmp_path: Path) -> None:
    original = b'GRUB_CMDLINE_LINUX="quiet"\nGRUB_CMDLINE_LINUX_XEN_REPLACE="console=hvc0"\n'
    text = add_hide(original, backend=PCIBACK, addresses=[A])
    assert shell_value(tmp_path, text, "GRUB_CMDLINE_LINUX") == "quiet"
    assert (
        shell_value(tmp_path, text, "GRUB_CMDLINE_LINUX_XEN_REPLACE")
        == "console=hvc0 xen-pciback.hide=(0000:09:00.0)"
    )
    # For plain Linux entries (KVM) GRUB_CMDLINE_LINUX is the one.
    kvm = add_hide(original, backend=VFIO, ids=["8086:10d3"])
    assert shell_value(tmp_path, kvm) == "quiet vfio-pci.ids=8086:10d3"


@needs_sh
def test_merges_into_the_effective_token_even_in_the_default_variable(tmp_path: Path) -> None:
    original = (
        b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:01:00.0)"\n'
        b'GRUB_CMDLINE_LINUX_DEFAULT="quiet xen-pciback.hide=(0000:02:00.0)"\n'
    )
    configured = read_configured({"/etc/default/grub": original}, xen=True)
    assert configured.hides.hidden() == {PciAddress.parse("0000:02:00.0")}
    assert [f.code for f in _findings(configured)] == ["duplicate-hide"]
    text = add_hide(original, backend=PCIBACK, addresses=[A])
    assert (
        shell_value(tmp_path, text, "GRUB_CMDLINE_LINUX_DEFAULT")
        == "quiet xen-pciback.hide=(0000:02:00.0)(0000:09:00.0)"
    )
    assert remove_hide(text, backend=PCIBACK, addresses=[A]) == original


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'GRUB_CMDLINE_LINUX="$(cat /etc/cmdline)"\n', "command substitution"),
        (b"GRUB_CMDLINE_LINUX=`cat /etc/cmdline`\n", "command substitution"),
        (b'GRUB_CMDLINE_LINUX="${EXTRA:-quiet}"\n', "${...} form"),
        (b'GRUB_CMDLINE_LINUX="$1"\n', "shell parameter"),
        (b'if [ -e /x ]; then\n  GRUB_CMDLINE_LINUX="a"\nfi\n', "set conditionally"),
        (b'x=1 && GRUB_CMDLINE_LINUX="a"\n', "set conditionally"),
        (b'f() { GRUB_CMDLINE_LINUX="a"; }\n', "set conditionally"),
        (b"unset GRUB_CMDLINE_LINUX\n", "given to unset"),
        (b'GRUB_CMDLINE_LINUX+=" a"\n', "+="),
        (b"cat <<EOF\nGRUB_CMDLINE_LINUX=x\nEOF\n", "heredoc"),
        (b'GRUB_CMDLINE_LINUX="unterminated\n', "unterminated double quote"),
        (b'GRUB_CMDLINE_LINUX="a $X"\n', None),  # fine: $X is just empty here
        (b"GRUB_CMDLINE_LINUX=\"xen-pciback.hide=\"'(0000:01:00.0)'\n", "cannot edit"),
        (b'GRUB_CMDLINE_LINUX="a"(b)\n', "unexpected '('"),
        (b"test -e /x &&\n  GRUB_CMDLINE_LINUX=a\n", "set conditionally"),
        (b"GRUB_CMDLINE_LINUX=a | cat\n", "set conditionally"),
        (b"GRUB_TIMEOUT=5 &&", "command list"),
        (b"GRUB_TIMEOUT=5\\", "ends in a backslash"),
    ],
)
def test_refuses_what_it_cannot_edit_safely(text: bytes, problem: str | None) -> None:
    if problem is None:
        assert (
            A
            in read_configured(
                {"/etc/default/grub": add_hide(text, backend=PCIBACK, addresses=[A])}, xen=True
            ).hides.hidden()
        )
        return
    with pytest.raises(ConfigSyntaxError) as error:
        add_hide(text, backend=PCIBACK, addresses=[A])
    assert problem in error.value.render()
    assert "pcipass left it untouched" in error.value.render()


def test_another_variables_command_substitution_is_fine() -> None:
    text = add_hide(RHEL9, backend=PCIBACK, addresses=[A])
    assert text.count(b"\n") == RHEL9.count(b"\n")
    assert b'GRUB_DISTRIBUTOR="$(sed' in text


def test_lexer_finds_assignment_bytes() -> None:
    shell = ShellFile.parse(
        b"# c\nA=1 B=\"x y\"\nC=2 cmd\nexport D='q'\ncase $v in\n a) E=1;;\nesac\n"
    )
    assert [a.name for a in shell.assignments] == ["A", "B", "D"]
    assert shell.blocked["E"][1] == 6
    b = shell.last("B")
    assert b is not None and shell.data[b.value_start : b.value_end] == b'"x y"'


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def test_proc_cmdline_last_value_wins_and_quotes_group() -> None:
    hides = parse_kernel_cmdline(
        'BOOT_IMAGE=/vmlinuz ro "quoted arg" xen-pciback.hide=(0000:00:03.0) '
        "xen_pciback.hide=(0000:00:04.0) vfio-pci.ids=8086:10d3,10de:1b80 "
        'pciback.hide="(0000:00:05.0)"'
    )
    assert hides.hidden() == {PciAddress.parse("0000:00:04.0"), PciAddress.parse("0000:00:05.0")}
    assert hides.hidden("xen-pciback") == {PciAddress.parse("0000:00:04.0")}
    assert hides.hidden_ids() == {"8086:10d3", "10de:1b80"}
    assert [t.effective for t in hides.tokens] == [False, True, True, True]


def test_read_running_and_regeneration(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=/dev/sda1 xen-pciback.hide=(0000:09:00.0)\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    root = HostRoot.at(tmp_path)
    assert read_running(root).hidden() == {A}
    (step,) = regeneration(detect_platform(root))
    assert step.argv == ("update-grub",)
    assert read_running(HostRoot.at(tmp_path / "nowhere")).tokens == ()


def test_grub_d_snippet_that_replaces_the_variable(tmp_path: Path) -> None:
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_bytes(add_hide(DEBIAN, backend=PCIBACK, addresses=[A]))
    (tmp_path / "etc/default/grub.d/50-cloud.cfg").write_bytes(
        b'GRUB_CMDLINE_LINUX="console=ttyS0"\n'
    )
    (tmp_path / "etc/default/grub.d/60-append.cfg").write_bytes(
        b'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX net.ifnames=0"\n'
    )
    files = collect_grub_files(HostRoot.at(tmp_path))
    configured = read_configured(files, xen=True)
    assert configured.variables["GRUB_CMDLINE_LINUX"] == "console=ttyS0 net.ifnames=0"
    assert configured.hides.hidden() == frozenset()
    (finding,) = _findings(configured)
    assert finding.code == "cmdline-overridden"
    assert finding.subject == "/etc/default/grub.d/50-cloud.cfg:1"
    assert configured.sources["GRUB_CMDLINE_LINUX"] == "/etc/default/grub.d/60-append.cfg:1"


def test_unreadable_values_become_findings_not_errors() -> None:
    configured = read_configured(
        {"/etc/default/grub": b'GRUB_CMDLINE_LINUX="$(cat x)"\nGRUB_CMDLINE_LINUX_DEFAULT=q\n'}
    )
    assert [f.code for f in _findings(configured)] == ["cmdline-unreadable"]
    assert configured.variables == {"GRUB_CMDLINE_LINUX_DEFAULT": "q"}
    bad = read_configured(
        {"/etc/default/grub": b'GRUB_CMDLINE_LINUX="xen-pciback.hide=0000:01:00.0"'}
    )
    assert [f.code for f in _findings(bad)] == ["bad-hide"]


def test_modprobe_and_command_line_both_hiding_is_pp009() -> None:
    modprobe = read_persistent_hides(
        {"/etc/modprobe.d/pcipass.conf": b"options xen-pciback hide=(0000:01:00.0)\n"}
    )
    configured = read_configured(
        {"/etc/default/grub": b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:09:00.0)"\n'}, xen=True
    )
    (finding,) = cross_findings(modprobe, configured.hides)
    assert (finding.rule, finding.subject) == ("PP009", "/etc/modprobe.d/pcipass.conf:1")
    assert "command line value wins" in finding.message


# --------------------------------------------------------------------------
# Fuzzing
# --------------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        b'GRUB_CMDLINE_LINUX="quiet"',
        b"GRUB_CMDLINE_LINUX=''",
        b"GRUB_CMDLINE_LINUX=plain",
        b'GRUB_CMDLINE_LINUX="xen-pciback.hide=(0000:01:00.0)"',
        b'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"',
        b'GRUB_CMDLINE_LINUX_XEN_REPLACE="console=hvc0"',
        b'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX x"',
        b"GRUB_DISTRIBUTOR=`lsb_release -i -s`",
        b"# pcipass: added GRUB_CMDLINE_LINUX",
        b"# comment with 'quote",
        b"if true; then",
        b"fi",
        b'"',
        b"'",
        b"$(",
        b"\\",
        b"export GRUB_CMDLINE_LINUX",
        b"",
    ]
)
GRUB_FILES = st.lists(
    st.tuples(
        st.one_of(PIECES, PIECES, st.binary(max_size=8)), st.sampled_from([b"\n", b"\r\n", b""])
    ),
    max_size=6,
).map(lambda parts: b"".join(a + b for a, b in parts))


STATS = {"edited": 0, "refused": 0}


def _sh_syntax_ok(data: bytes, tmp: Path) -> bool:
    assert SH is not None
    path = tmp / "candidate"
    path.write_bytes(data)
    return subprocess.run([SH, "-n", str(path)], capture_output=True, timeout=30).returncode == 0


@needs_sh
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=GRUB_FILES, backend=st.sampled_from([PCIBACK, VFIO]))
def test_fuzz_grub_files(tmp_path: Path, data: bytes, backend: Backend) -> None:
    read_configured({"/etc/default/grub": data}, xen=backend is PCIBACK)
    kwargs = {"addresses": [A]} if backend is PCIBACK else {"ids": ["8086:10d3"]}
    try:
        text = add_hide(data, backend=backend, **kwargs)  # type: ignore[arg-type]
    except UsageError:
        STATS["refused"] += 1
        return
    # Never a lost byte: adding one item is a single insertion into the file.
    prefix = next((i for i, (x, y) in enumerate(zip(data, text)) if x != y), len(data))
    suffix = next(
        (i for i, (x, y) in enumerate(zip(reversed(data), reversed(text))) if x != y),
        len(data),
    )
    assert prefix + suffix >= len(data) and len(text) > len(data)
    STATS["edited"] += 1
    configured = read_configured({"/etc/default/grub": text}, xen=backend is PCIBACK)
    if backend is PCIBACK:
        assert A in configured.hides.hidden()
    else:
        assert "8086:10d3" in configured.hides.hidden_ids()
    if _sh_syntax_ok(data, tmp_path):
        assert _sh_syntax_ok(text, tmp_path)
    again = remove_hide(text, backend=backend, **kwargs)  # type: ignore[arg-type]
    assert A not in read_configured({"/etc/default/grub": again}, xen=True).hides.hidden()
