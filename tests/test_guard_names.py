"""Guest names as the toolstacks allow them, and the libvirt hook run exactly
as libvirt runs it (argv: hooks/qemu NAME OPERATION SUBOP EXTRA, XML on stdin)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pcipass.cli.main import main
from pcipass.errors import UsageError
from pcipass.guests.names import MAX_NAME_BYTES, check_guest_name
from pcipass.ops.guests import candidate_paths
from pcipass.testing.fakehost import snapshot
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


# Every one of these is a name libvirt accepts for a domain.
LIBVIRT_NAMES = [
    "web server",
    "foo=1,bar=2",
    "a:b:c",
    "día",
    "日本語",
    "-x",
    "--help",
    'it\'s "quoted" $(reboot) `id` ; & |',
    "n" * MAX_NAME_BYTES,
]

HOSTDEV_XML = """<domain type='kvm'>
  <name>{name}</name>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>
"""
PLAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices/>
</domain>
"""


def _xml_text(name: str) -> str:
    return name.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


@pytest.fixture
def hook(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["--root", str(kvm.base), "guard-install", "--libvirt"]) == 0
    capsys.readouterr()
    return kvm.base / "etc/libvirt/hooks/qemu"


def run_hook(hook: Path, lab: Lab, argv: list[str], xml: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": SRC, "PCIPASS_ROOT": str(lab.base), "PATH": os.environ["PATH"]}
    return subprocess.run(
        [str(hook), *argv], input=xml, capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.parametrize("name", LIBVIRT_NAMES)
def test_hook_never_blocks_a_guest_that_holds_nothing(hook: Path, kvm: Lab, name: str) -> None:
    before = snapshot(kvm.base)
    for operation in (["migrate", "begin", "-"], ["restore", "begin", "-"]):
        done = run_hook(hook, kvm, [name, *operation], PLAIN_XML.format(name=_xml_text(name)))
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert snapshot(kvm.base) == before


@pytest.mark.parametrize("name", LIBVIRT_NAMES)
def test_hook_refuses_a_guest_of_any_name_that_holds_a_device(
    hook: Path, kvm: Lab, name: str
) -> None:
    done = run_hook(
        hook, kvm, [name, "migrate", "begin", "-"], HOSTDEV_XML.format(name=_xml_text(name))
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "" and "[PP003]" in done.stderr and "0000:02:10.0" in done.stderr
    assert len(error_lines(done.stderr)) == 1


def test_hook_does_not_block_when_the_xml_is_unreadable(hook: Path, kvm: Lab) -> None:
    done = run_hook(hook, kvm, ["web server", "migrate", "begin", "-"], "<domain><name>")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr


def test_hook_judges_only_migrate_and_restore_even_when_pcipass_is_missing(
    hook: Path, kvm: Lab
) -> None:
    # start/stop never depend on pcipass: a broken install must not stop guests.
    env = {"PYTHONPATH": "/nonexistent", "PATH": "/nonexistent"}
    for operation in ("prepare", "start", "started", "stopped", "release", "reconnect"):
        done = subprocess.run(
            [str(hook), "web server", operation, "begin", "-"],
            input=HOSTDEV_XML.format(name="web server"),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert (done.returncode, done.stdout) == (0, ""), done.stderr


def test_a_guest_with_a_spaced_name_attached_by_file_is_refused_by_the_hook(
    hook: Path, kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.mark_simulated()
    template = (kvm.base / "etc/libvirt/qemu/win10.xml").read_text()
    name = "web server día"
    (kvm.base / f"etc/libvirt/qemu/{name}.xml").write_text(
        template.replace("<name>win10</name>", f"<name>{name}</name>")
    )
    assert main(["--root", str(kvm.base), "attach", "--hide", "0000:02:10.0", "--", name]) == 0
    capsys.readouterr()
    # libvirt passes its own XML; the ledger says the guest holds the device.
    done = run_hook(hook, kvm, [name, "restore", "begin", "-"], PLAIN_XML.format(name=name))
    assert done.returncode == 3 and "so restore is refused" in done.stderr


# --- names per toolstack ----------------------------------------------------------


@pytest.mark.parametrize("name", LIBVIRT_NAMES)
def test_libvirt_names_are_accepted(name: str) -> None:
    assert check_guest_name(name, "libvirt") == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "cannot be empty"),
        ("a\nb", "control character (U+000A)"),
        ("a\rb", "control character (U+000D)"),
        ("a\x00b", "control character (U+0000)"),
        ("a\x1bb", "control character (U+001B)"),
        ("a\x85b", "control character (U+0085)"),
        ("a\u2028b", "control character (U+2028)"),
        ("a/b", "'/'"),
        ("..", "not a guest name"),
        ("é" * 200, "longer than"),
        ("a\udcffb", "not UTF-8"),
    ],
)
@pytest.mark.parametrize("toolstack", [None, "libvirt", "xl", "xm"])
def test_unsafe_names_are_refused_by_every_toolstack(
    name: str, problem: str, toolstack: str | None
) -> None:
    with pytest.raises(UsageError) as caught:
        check_guest_name(name, toolstack)
    assert problem in caught.value.problem
    assert "\n" not in caught.value.render()


def test_xl_reads_digits_as_a_domain_id() -> None:
    assert check_guest_name("42", "libvirt") == "42"
    with pytest.raises(UsageError, match="domain id"):
        check_guest_name("42", "xl")


@pytest.mark.parametrize("name", LIBVIRT_NAMES)
def test_a_name_is_one_path_component(kvm: Lab, name: str) -> None:
    for display in candidate_paths(kvm.host, name):
        path = kvm.host.root.path(display)
        assert path.parent in (
            kvm.host.root.path("/etc/xen"),
            kvm.host.root.path("/etc/libvirt/qemu"),
            kvm.host.root.path("/etc/libvirt/libxl"),
        )


@pytest.mark.parametrize("name", ["a\nb", "../../etc/passwd", "a/b"])
def test_guard_cli_refuses_unsafe_names_and_changes_nothing(
    kvm: Lab, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    before = snapshot(kvm.base)
    assert main(["--root", str(kvm.base), "guard", "migrate", name]) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("pcipass: guest ")
    assert snapshot(kvm.base) == before
