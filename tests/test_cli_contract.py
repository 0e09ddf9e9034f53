"""The output contract of the command line, tried as a script would use it.

Every command runs as a real ``python -m pcipass`` process against the example
hosts (``python -m pcipass.testing.example DIR``) with ``--json``, in the cases
it has: success, refusal, usage error, not found, failure, interrupted.  Each
run must print exactly one JSON object on stdout, valid against its definition
in docs/json-schema/pcipass.json (the command's, or ``error``/``interrupted``),
and exit with a code that docs/cli.md's table lists, equal to the object's
``exit_code`` when it has one.  Then the stream cases: a closed pipe, a full
disk, an ASCII-only terminal.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pcipass.cli.main import COMMANDS, main
from pcipass.testing.bootfiles import alias_line
from pcipass.testing.fakehost import FakeHost, snapshot
from pcipass.testing.harness import Lab
from pcipass.testing.rom_builder import chain, rom_image

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "docs/json-schema/pcipass.json").read_text())
CLI_DOC = (REPO / "docs/cli.md").read_text()

NIC = "0000:09:00.0"  # rhel5: a spare bnx2 NIC
ROUTE_NIC = "0000:05:00.0"  # rhel5: carries the default route (PP001 refuses)
SHARED = "0000:0a:04.0"  # rhel5: behind a conventional bridge with 0a:04.1 (warnings)
VF = "0000:02:10.0"  # kvm: an SR-IOV virtual function
PF = "0000:02:00.0"  # kvm: its physical function (igb, 2 of 7 VFs)
MISSING = "0000:42:00.0"
XL_GUEST = 'name = "domu"\ntype = "pv"\nkernel = "/boot/vmlinuz"\nmemory = 256\n'
QEMU_ARGV = "/usr/bin/qemu-system-x86_64\0-name\0l2\0-qmp\0unix:/run/l2.qmp,server,nowait\0"


def documented_exit_codes() -> dict[int, str]:
    """The table under "## Exit codes" in docs/cli.md."""
    section = CLI_DOC.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


@functools.cache
def validator(definition: str) -> jsonschema.protocols.Validator:
    schema = {**SCHEMA, "$ref": f"#/$defs/{definition}"}
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(schema)
    return cls(schema)


def build_example(directory: Path, kind: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pcipass.testing.example", str(directory), "--kind", kind],
        check=True,
        capture_output=True,
    )
    return directory


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def pcipass(root: Path, *argv: str, **kwargs: Any) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def own_lines(err: str) -> list[str]:
    """stderr without the example host's first line (the simulated-kernel notice)."""
    lines = err.splitlines()
    if lines and lines[0].startswith("pcipass: simulated kernel: "):
        lines = lines[1:]
    return lines


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


# -- the cases -------------------------------------------------------------------------------

Setup = Callable[[Path], None]


def steps(*commands: tuple[str, ...], files: dict[str, str] | None = None) -> Setup:
    """Prepare a fresh host: write files, then run pcipass commands that must succeed."""

    def prepare(root: Path) -> None:
        for path, text in (files or {}).items():
            write(root, path, text)
        for argv in commands:
            done = pcipass(root, *argv)
            assert done.code == 0, (argv, done.err)

    return prepare


@dataclass(frozen=True)
class Case:
    command: str
    outcome: str  # success, refusal, usage, not-found, failed
    argv: tuple[str, ...]
    code: int
    kind: str = "rhel5-xen"
    # None: runs on a host shared by read-only cases; else a fresh host prepared by it.
    setup: Setup | None = None
    shape: str = field(default="")  # schema definition; default: the command's, or error

    @property
    def id(self) -> str:
        return f"{self.command}-{self.outcome}-{'-'.join(self.argv[1:3])}".rstrip("-")

    @property
    def definition(self) -> str:
        if self.shape:
            return self.shape
        return self.command if self.outcome == "success" else "error"


HIDDEN = steps(("hide", "--now", NIC))
ATTACHED = steps(("hide", "--now", NIC), ("attach", NIC, "rhel5pv", "--accept-pv-dma-risk"))
XL_ATTACHED = steps(
    ("hide", "--now", NIC),
    ("attach", NIC, "domu", "--accept-pv-dma-risk"),
    files={"/etc/xen/domu.cfg": XL_GUEST},
)
GPU = "0000:01:00.0"  # kvm: NVIDIA 10de:1b80


def with_rom(*images: bytes) -> Setup:
    """The kvm host's GPU gets an option ROM of these images (PCI Firmware Spec 3.0 5.1)."""

    def prepare(root: Path) -> None:
        FakeHost.load(root).set_rom(GPU, chain(*images))

    return prepare


LEGACY_ROM = rom_image(0x10DE, 0x1B80, blocks=2)
EFI_ROM = rom_image(0x10DE, 0x1B80, code_type=3, blocks=2)
BAD_ROM = rom_image(0x8086, 0x1234, blocks=2)  # no image for this device
# The gpu example host (pcipass.testing.gpu_host): a four-function TU106 and the boot GPU.
TU106, BOOT_GPU = "0000:01:00.0", "0000:02:00.0"
TU106_HIDDEN = steps(("hide", "--now", "--all-functions", TU106))
TU106_ROM = steps(
    ("hide", "--now", "--all-functions", TU106), ("rom", TU106, "--save", "/usr/share/kvm/g.rom")
)


def broken_reset(root: Path) -> None:
    TU106_HIDDEN(root)
    from pcipass.testing.fakeconsole import make_reset_break

    make_reset_break(root, TU106)


QEMU_RUNNING = steps(
    ("hide", "--now", "--backend", "vfio", VF), files={"/proc/4242/cmdline": QEMU_ARGV}
)

# A hand-written modprobe file that gives the host's own NIC to pciback at boot (PP110).
UPLINK_HIDDEN_AT_BOOT = f"options pciback hide=({ROUTE_NIC})\nsoftdep bnx2 pre: pciback\n"

PINNED = steps(("pin", NIC, "guestnic"))


def pinned_then_swapped(root: Path) -> None:
    """The pinned NIC replaced by another model at the same address (PP114)."""
    PINNED(root)
    fake = FakeHost.load(root)
    fake.remove_device(NIC)
    fake.add_device(NIC, vendor=0x8086, device=0x10D3, class_code=0x020000, parent="0000:00:03.0")


PINNED_THEN_SWAPPED = pinned_then_swapped
DESIRED = steps(
    ("pin", NIC, "guestnic"),
    files={"/etc/pcipass/pcipass.toml": '[device.guestnic]\nbackend = "pciback"\n'},
)
FOREIGN_UNIT = steps(files={"/etc/systemd/system/pcipass-boot.service": "[Service]\n"})
DESIRED_SWAPPED = steps(
    files={"/etc/pcipass/pcipass.toml": '[device.x.match]\nvendor = "14e4"\ndevice = "1639"\n'}
)

CASES: tuple[Case, ...] = (
    Case("list", "success", ("list",), 0),
    Case("list", "success", ("list", "--class", "02", "--guests"), 0),
    Case("list", "usage", ("list", "--bogus"), 2),
    Case("list", "usage", ("list", "--group", "x"), 2),
    Case("show", "success", ("show", NIC), 0),
    Case("show", "success", ("show", VF), 0, kind="kvm"),
    Case("show", "usage", ("show", "0000:09:00.9"), 2),
    Case("show", "usage", ("show",), 2),
    Case("show", "not-found", ("show", MISSING), 4),
    Case("check", "success", ("check", NIC), 0),
    Case("check", "warnings", ("check", SHARED), 1, shape="check"),
    Case("check", "refusal", ("check", ROUTE_NIC), 3, shape="check"),
    Case("check", "warnings", ("check",), 1, setup=ATTACHED, shape="check"),
    Case("check", "usage", ("check", "zz"), 2),
    Case("check", "not-found", ("check", MISSING), 4),
    Case("check", "success", ("check", "--next-boot"), 0, shape="check-next-boot"),
    Case("check", "success", ("check", "--next-boot", NIC), 0, shape="check-next-boot"),
    Case(
        "check",
        "refusal",
        ("check", "--next-boot"),
        3,
        setup=steps(
            files={
                "/etc/modprobe.d/hand.conf": UPLINK_HIDDEN_AT_BOOT,
                "/lib/modules/2.6.18-164.el5xen/modules.alias": alias_line(0x14E4, 0x1639, "bnx2"),
            }
        ),
        shape="check-next-boot",
    ),
    Case("check", "usage", ("check", "--next-boot", "--guest", "g"), 2),
    Case("check", "not-found", ("check", "--next-boot", MISSING), 4),
    Case("hide", "success", ("hide", "--now", NIC), 0, setup=steps()),
    Case("hide", "success", ("hide", "--now", "--persist", NIC), 0, setup=steps()),
    Case("hide", "success", ("hide", "--now", "--dry-run", NIC), 0),
    Case("hide", "success", ("hide", "--now", "--backend", "vfio", VF), 0, "kvm", steps()),
    Case("hide", "refusal", ("hide", "--now", ROUTE_NIC), 3),
    Case("hide", "usage", ("hide", NIC), 2),
    Case("hide", "usage", ("hide", "--now"), 2),
    Case("hide", "usage", ("hide", "--now", "--backend", "xen", NIC), 2),
    Case("hide", "not-found", ("hide", "--now", MISSING), 4),
    Case("unhide", "success", ("unhide", "--now", NIC), 0, setup=HIDDEN),
    Case("unhide", "success", ("unhide", "--persist", "--dry-run", NIC), 0),
    Case("unhide", "usage", ("unhide",), 2),
    Case("unhide", "refusal", ("unhide", "--now", NIC), 3, setup=ATTACHED),
    Case("status", "success", ("status",), 0),
    Case("status", "success", ("status",), 0, setup=ATTACHED),
    Case("status", "usage", ("status", "extra"), 2),
    Case("recover", "success", ("recover",), 0, setup=steps()),
    Case("recover", "usage", ("recover", "--all"), 2),
    Case("attach", "success", ("attach", NIC, "rhel5pv", "--accept-pv-dma-risk"), 0, setup=HIDDEN),
    Case("attach", "success", ("attach", VF, "l2", "--live", "--dry-run"), 0, "kvm", QEMU_RUNNING),
    Case("attach", "refusal", ("attach", NIC, "rhel5pv"), 3),
    Case("attach", "usage", ("attach", NIC), 2),
    Case("attach", "usage", ("attach", "zz", "rhel5pv"), 2),
    Case("attach", "not-found", ("attach", NIC, "nosuch"), 4),
    Case("attach", "failed", ("attach", VF, "l2", "--live"), 1, "kvm", QEMU_RUNNING),
    Case("detach", "success", ("detach", NIC, "rhel5pv"), 0, setup=ATTACHED),
    Case("detach", "usage", ("detach",), 2),
    Case("detach", "not-found", ("detach", NIC, "nosuch"), 4),
    Case("guard", "success", ("guard", "save", "rhel5pv"), 0),
    Case("guard", "refusal", ("guard", "migrate", "rhel5pv"), 3, setup=ATTACHED),
    Case("guard", "usage", ("guard", "nonsense"), 2),
    Case("guard-install", "success", ("guard-install", "--libvirt", "--dry-run"), 0),
    Case("guard-install", "success", ("guard-install", "--libvirt"), 0, setup=steps()),
    Case("guard-install", "usage", ("guard-install",), 2),
    Case("guard-install", "usage", ("guard-install", "--wrap", "zz"), 2),
    Case("guest-setup", "success", ("guest-setup", "--dry-run"), 0, kind="kvm"),
    Case("guest-setup", "warnings", ("guest-setup", "--dry-run"), 1, shape="guest-setup"),
    Case("guest-setup", "usage", ("guest-setup", "now"), 2),
    Case("guests", "success", ("guests",), 0),
    Case("guests", "success", ("guests", "--check"), 0),
    Case("guests", "not-found", ("guests", "nosuch"), 4),
    Case("guests", "usage", ("guests", "--bogus"), 2),
    Case("explain", "success", ("explain", "modprobe: FATAL: Module pciback not found"), 0),
    Case("explain", "unknown", ("explain", "hello"), 1, shape="explain"),
    Case("explain", "usage", ("explain",), 2),
    Case("rom", "success", ("rom", GPU), 0, "kvm", with_rom(LEGACY_ROM, EFI_ROM)),
    Case("rom", "problems", ("rom", GPU), 1, "kvm", with_rom(BAD_ROM), shape="rom"),
    Case("rom", "not-found", ("rom", GPU), 4, kind="kvm"),
    Case("rom", "not-found", ("rom", MISSING), 4, kind="kvm"),
    Case("rom", "usage", ("rom",), 2, kind="kvm"),
    Case("rom", "usage", ("rom", GPU, "--save", "/sys/x.rom"), 2, "kvm", with_rom(LEGACY_ROM)),
    Case("vfs", "success", ("vfs", PF), 0, kind="kvm"),
    Case("vfs", "success", ("vfs", PF, "4", "--dry-run", "--persist"), 0, kind="kvm"),
    Case("vfs", "success", ("vfs", PF, "4", "--persist"), 0, "kvm", steps()),
    Case("vfs", "success", ("vfs", PF, "0"), 0, "kvm", steps()),
    Case("vfs", "refusal", ("vfs", PF, "8"), 3, kind="kvm"),
    Case("vfs", "refusal", ("vfs", VF, "1"), 3, kind="kvm"),
    Case("vfs", "refusal", ("vfs", PF, "0"), 3, "kvm", steps(("hide", "--now", "--vfs", PF))),
    Case("vfs", "usage", ("vfs", PF, "x"), 2, kind="kvm"),
    Case("vfs", "usage", ("vfs", PF, "--mac", "0=ff:ff:ff:ff:ff:ff"), 2, kind="kvm"),
    Case("vfs", "usage", ("vfs",), 2, kind="kvm"),
    Case("vfs", "not-found", ("vfs", MISSING, "1"), 4, kind="kvm"),
    Case("hide", "success", ("hide", "--now", "--vfs", PF), 0, "kvm", steps()),
    Case("hide", "success", ("hide", "--now", "--all-functions", TU106), 0, "gpu", steps()),
    Case("hide", "refusal", ("hide", "--now", "--all-functions", BOOT_GPU), 3, kind="gpu"),
    Case(
        "hide",
        "success",
        ("hide", "--now", "--all-functions", "--release-console", BOOT_GPU),
        0,
        "gpu",
        steps(),
    ),
    Case("hide", "usage", ("hide", "--persist", "--release-console", BOOT_GPU), 2, kind="gpu"),
    Case("hide", "refusal", ("hide", "--now", "--reset-method", "bus", TU106), 3, kind="gpu"),
    Case(
        "attach",
        "success",
        ("attach", "--all-functions", "--rom", "/usr/share/kvm/g.rom", TU106, "win11"),
        0,
        "gpu",
        TU106_ROM,
    ),
    Case("attach", "refusal", ("attach", "--rom", "/nonexistent.rom", TU106, "win11"), 3, "gpu"),
    Case("reset-test", "success", ("reset-test", TU106), 0, "gpu", TU106_HIDDEN),
    Case("reset-test", "failed", ("reset-test", TU106), 1, "gpu", broken_reset, "reset-test"),
    Case("reset-test", "refusal", ("reset-test", TU106), 3, kind="gpu"),
    Case("reset-test", "usage", ("reset-test",), 2, kind="gpu"),
    Case("reset-test", "not-found", ("reset-test", MISSING), 4, kind="gpu"),
    Case("export", "success", ("export", "--format", "libvirt"), 0, setup=HIDDEN),
    Case("export", "success", ("export", "--format", "nova", NIC), 0, setup=HIDDEN),
    Case("export", "refusal", ("export", "--format", "nova", "05:00.0"), 3, shape="export"),
    Case("export", "not-found", ("export", "--format", "proxmox"), 4, setup=HIDDEN),
    Case("export", "not-found", ("export", "--format", "kubevirt", MISSING), 4),
    Case("export", "usage", ("export",), 2),
    Case("save", "refusal", ("save", "rhel5pv", "/tmp/rhel5pv.save"), 3),
    Case("save", "not-found", ("save", "nosuch", "/tmp/x"), 4),
    Case("save", "usage", ("save", "rhel5pv"), 2),
    Case("save", "failed", ("save", "domu", "/tmp/domu.save"), 1, setup=XL_ATTACHED),
    Case("restore", "refusal", ("restore", "/tmp/x", "rhel5pv"), 3),
    Case("restore", "not-found", ("restore", "/tmp/x", "nosuch"), 4),
    Case("restore", "usage", ("restore",), 2),
    Case("restore", "failed", ("restore", "/tmp/domu.save", "domu"), 1, setup=XL_ATTACHED),
    Case("migrate", "refusal", ("migrate", "rhel5pv", "h2"), 3),
    Case("migrate", "not-found", ("migrate", "nosuch", "h2"), 4),
    Case("migrate", "usage", ("migrate", "rhel5pv"), 2),
    Case("migrate", "failed", ("migrate", "domu", "h2"), 1, setup=XL_ATTACHED),
    Case("pin", "success", ("pin", NIC, "guestnic"), 0, setup=steps()),
    Case("pin", "success", ("pin", "--list"), 0, setup=PINNED),
    Case("pin", "usage", ("pin", NIC), 2),
    Case("pin", "usage", ("pin", NIC, "no/slash"), 2),
    Case("pin", "not-found", ("pin", MISSING, "gone"), 4),
    Case("unpin", "success", ("unpin", "guestnic"), 0, setup=PINNED),
    Case("unpin", "not-found", ("unpin", "nosuch"), 4),
    Case("unpin", "usage", ("unpin",), 2),
    Case("show", "success", ("show", "@guestnic"), 0, setup=PINNED),
    Case("show", "refusal", ("show", "@guestnic"), 3, setup=PINNED_THEN_SWAPPED),
    Case("plan", "success", ("plan",), 0, setup=DESIRED),
    Case("plan", "drift", ("plan", "--detailed-exitcode"), 2, setup=DESIRED, shape="plan"),
    Case("plan", "refusal", ("plan",), 3, setup=DESIRED_SWAPPED, shape="plan"),
    Case("plan", "not-found", ("plan",), 4),
    Case("plan", "usage", ("plan", "--file", "relative.toml"), 2),
    Case("apply", "success", ("apply",), 0, setup=DESIRED),
    Case("apply", "success", ("apply", "--dry-run"), 0, setup=DESIRED),
    Case("apply", "success", ("apply", "--boot"), 0, setup=DESIRED),
    Case("apply", "success", ("apply", "--boot"), 0),
    Case("apply", "refusal", ("apply",), 3, setup=DESIRED_SWAPPED),
    Case("apply", "usage", ("apply", "--bogus"), 2),
    Case("boot-install", "success", ("boot-install", "--dry-run"), 0),
    Case("boot-install", "success", ("boot-install",), 0, setup=steps()),
    Case("boot-install", "usage", ("boot-install",), 2, setup=FOREIGN_UNIT),
    Case("boot-install", "usage", ("boot-install", "extra"), 2),
    Case("boot-uninstall", "success", ("boot-uninstall",), 0, setup=steps(("boot-install",))),
    Case("boot-uninstall", "success", ("boot-uninstall", "--dry-run"), 0),
    Case("boot-uninstall", "usage", ("boot-uninstall", "--all"), 2),
)


@pytest.fixture(scope="module")
def shared_hosts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One host of each kind for the cases that change nothing."""
    base = tmp_path_factory.mktemp("shared")
    return {kind: build_example(base / kind, kind) for kind in ("rhel5-xen", "kvm", "gpu")}


def host_for(case: Case, shared: dict[str, Path], tmp_path: Path) -> Path:
    if case.setup is None:
        return shared[case.kind]
    root = build_example(tmp_path / "host", case.kind)
    case.setup(root)
    return root


def one_json_object(out: str) -> dict[str, Any]:
    """stdout holds exactly one JSON object and nothing else."""
    decoder = json.JSONDecoder()
    value, end = decoder.raw_decode(out.lstrip())
    assert out.lstrip()[end:].strip() == "", f"more than one JSON value on stdout: {out!r}"
    assert isinstance(value, dict), out
    return value


def check_contract(run: Run, definition: str, expected_code: int) -> dict[str, Any]:
    assert "Traceback" not in run.err, run.err
    assert run.code == expected_code, (run.code, run.out, run.err)
    assert run.code in documented_exit_codes(), f"exit {run.code} is not in docs/cli.md"
    data = one_json_object(run.out)
    validator(definition).validate(data)
    if "exit_code" in data:
        assert data["exit_code"] == run.code
    return data


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_outcome_is_one_json_object(
    case: Case, shared_hosts: dict[str, Path], tmp_path: Path
) -> None:
    root = host_for(case, shared_hosts, tmp_path)
    data = check_contract(pcipass(root, *case.argv, "--json"), case.definition, case.code)
    if case.outcome == "usage":
        assert data["error"] in ("UsageError", "AddressError"), data
    if case.outcome == "refusal" and case.definition == "error":
        assert re.match(r"^PP[0-9]{3}$", data["rule"]), data


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_text_mode_has_the_same_exit_code_and_one_line_errors(
    case: Case, shared_hosts: dict[str, Path], tmp_path: Path
) -> None:
    root = host_for(case, shared_hosts, tmp_path)
    run = pcipass(root, *case.argv)
    assert run.code == case.code, (run.out, run.err)
    assert "Traceback" not in run.err
    if case.definition == "error":
        # The error line, then (for refusals) one indented line per finding.
        first, *rest = run.err.rstrip("\n").split("\n")
        assert re.match(r"^pcipass: .+", first), run.err
        assert all(line.startswith("  ") or line.startswith("pcipass: ") for line in rest)


def test_every_command_has_contract_cases() -> None:
    assert {c.name for c in COMMANDS} == {c.command for c in CASES}
    for command in COMMANDS:
        outcomes = {c.outcome for c in CASES if c.command == command.name}
        assert "usage" in outcomes, command.name
        assert outcomes & {"success", "refusal"}, command.name


def test_every_command_has_a_schema_definition() -> None:
    for command in COMMANDS:
        assert command.name in SCHEMA["$defs"], command.name


def test_the_exit_code_table_is_the_one_the_code_uses() -> None:
    from pcipass.errors import ExitCode

    table = documented_exit_codes()
    assert {int(code) for code in ExitCode} | {130, 143} == set(table)


def test_no_command_and_unknown_command_are_json_usage_errors(
    shared_hosts: dict[str, Path],
) -> None:
    root = shared_hosts["rhel5-xen"]
    for argv in (("--json",), ("nope", "--json"), ("--json", "--", "list")):
        data = check_contract(pcipass(root, *argv), "error", 2)
        assert data["error"] == "UsageError"
    # argparse's wording is kept: the lab agent reads "invalid choice".
    assert "invalid choice: 'nope'" in pcipass(root, "nope").err


def test_a_file_where_the_state_directory_belongs_is_one_line_and_exit_1(tmp_path: Path) -> None:
    root = build_example(tmp_path / "host", "rhel5-xen")
    write(root, "/var/lib/pcipass", "a file where the state directory belongs\n")
    data = check_contract(pcipass(root, "hide", "--now", NIC, "--json"), "error", 1)
    assert data["error"] == "OperationFailed"
    assert str(data["subject"]).startswith("/var/lib/pcipass")
    assert "a file is where a directory should be" in str(data["problem"])
    run = pcipass(root, "hide", "--now", NIC)
    assert run.code == 1
    assert len(own_lines(run.err)) == 1 and own_lines(run.err)[0].startswith("pcipass: ")


# -- interrupted -----------------------------------------------------------------------------

# A real SIGINT delivered to the process at a known point (no timing): the
# host is about to be opened, or the named operation is about to run.
INTERRUPT = """
import os, signal, sys
import pcipass.cli.main as cli
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    raise AssertionError("SIGINT did not interrupt")
module, _, name = sys.argv[1].rpartition(".")
setattr(__import__(module, fromlist=[name]), name, interrupted)
sys.exit(cli.main(sys.argv[2:]))
"""


def interrupted_run(root: Path, at: str, *argv: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT, at, "--root", str(root), *argv],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def first_argv(command: str) -> tuple[str, ...]:
    return next(c.argv for c in CASES if c.command == command and c.outcome != "usage")


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_ctrl_c_is_exit_130_and_one_json_object(command: str, tmp_path: Path) -> None:
    root = build_example(tmp_path / "host", "rhel5-xen")
    run = interrupted_run(root, "pcipass.cli.main._open_host", *first_argv(command), "--json")
    data = check_contract(run, "interrupted", 130)
    assert data["signal"] == "SIGINT"
    text = interrupted_run(root, "pcipass.cli.main._open_host", *first_argv(command))
    assert text.code == 130 and text.out == ""
    assert own_lines(text.err)[-1].startswith("pcipass: interrupted by SIGINT (")
    assert "Traceback" not in text.err


def test_ctrl_c_during_status_is_exit_130(tmp_path: Path) -> None:
    root = build_example(tmp_path / "host", "rhel5-xen")
    run = interrupted_run(root, "pcipass.ops.status.status", "status", "--json")
    check_contract(run, "interrupted", 130)


# -- streams ---------------------------------------------------------------------------------


def closed_pipe_run(root: Path, *argv: str) -> Run:
    """stdout is a pipe whose reader is already gone (``| head -0``): writes fail with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pcipass", "--root", str(root), *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    return Run(done.returncode, "", done.stderr)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("check", ROUTE_NIC), 3),
        (("check", ROUTE_NIC, "--json"), 3),
        (("check", SHARED), 1),
        (("list",), 0),
        (("list", "--json"), 0),
        (("show", MISSING, "--json"), 4),
        (("hide", "--now", ROUTE_NIC, "--json"), 3),
    ],
)
def test_a_closed_pipe_keeps_the_exit_code_and_prints_no_traceback(
    shared_hosts: dict[str, Path], argv: tuple[str, ...], code: int
) -> None:
    run = closed_pipe_run(shared_hosts["rhel5-xen"], *argv)
    assert run.code == code
    assert "Traceback" not in run.err and "BrokenPipe" not in run.err, run.err
    assert "Exception ignored" not in run.err, run.err


def test_check_piped_into_head_keeps_a_refusal_for_pipefail(
    shared_hosts: dict[str, Path],
) -> None:
    script = (
        "set -o pipefail; "
        f'"{sys.executable}" -m pcipass --root "$1" check "$2" | head -c 0; echo "status=$?"'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(shared_hosts["rhel5-xen"]), ROUTE_NIC],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip().splitlines()[-1] == "status=3", done
    assert "Traceback" not in done.stderr


def full_disk_run(root: Path, *argv: str) -> Run:
    """stdout is /dev/full: every write fails with ENOSPC."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "pcipass", "--root", str(root), *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            check=False,
        )
    return Run(done.returncode, "", done.stderr)


@pytest.mark.parametrize("argv", [("list",), ("list", "--json"), ("status",)])
def test_a_full_disk_is_one_line_on_stderr_and_exit_1(
    shared_hosts: dict[str, Path], argv: tuple[str, ...]
) -> None:
    run = full_disk_run(shared_hosts["rhel5-xen"], *argv)
    assert run.code == 1
    assert own_lines(run.err) == ["pcipass: standard output: write failed: No space left on device"]


def test_a_full_disk_never_hides_a_refusal(shared_hosts: dict[str, Path]) -> None:
    run = full_disk_run(shared_hosts["rhel5-xen"], "check", ROUTE_NIC)
    assert run.code == 3
    assert "Traceback" not in run.err


UNICODE_GUEST = "gäst€"


@pytest.fixture
def unicode_guest_host(tmp_path: Path) -> Path:
    root = build_example(tmp_path / "host", "kvm")
    xml = (root / "etc/libvirt/qemu/win10.xml").read_text()
    write(
        root,
        f"/etc/libvirt/qemu/{UNICODE_GUEST}.xml",
        xml.replace("<name>win10</name>", f"<name>{UNICODE_GUEST}</name>"),
    )
    return root


def ascii_env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}


def test_an_ascii_terminal_gets_escapes_not_a_unicode_error(unicode_guest_host: Path) -> None:
    run = pcipass(unicode_guest_host, "guests", env=ascii_env())
    assert run.code == 0, run.err
    assert "UnicodeEncodeError" not in run.err and "Traceback" not in run.err
    assert "g\\xe4st\\u20ac" in run.out
    data = check_contract(
        pcipass(unicode_guest_host, "guests", "--json", env=ascii_env()), "guests", 0
    )
    assert UNICODE_GUEST in [g["name"] for g in data["guests"]]


def test_a_name_guests_lists_can_be_used_with_attach(unicode_guest_host: Path) -> None:
    # libvirt accepts "gäst€" (guests/names.py): guests lists it as usable, and
    # attach edits that guest's file (dry run: nothing changes).
    listed = check_contract(pcipass(unicode_guest_host, "guests", "--json"), "guests", 0)
    rows = {g["name"]: g for g in listed["guests"]}
    assert rows["win10"]["usable"] is True and "name_problem" not in rows["win10"]
    assert rows[UNICODE_GUEST]["usable"] is True and "name_problem" not in rows[UNICODE_GUEST]
    before = snapshot(unicode_guest_host, skip=())
    attached = pcipass(unicode_guest_host, "attach", "--dry-run", "--hide", VF, UNICODE_GUEST)
    assert attached.code == 0, attached.err
    assert f"/etc/libvirt/qemu/{UNICODE_GUEST}.xml" in attached.out
    assert snapshot(unicode_guest_host, skip=()) == before


def test_errors_about_a_unicode_name_reach_an_ascii_terminal(unicode_guest_host: Path) -> None:
    run = pcipass(unicode_guest_host, "attach", VF, "nosuch€", env=ascii_env())
    assert run.code in (2, 4)
    assert "Traceback" not in run.err and "\\u20ac" in run.err


# -- in-process: what a subprocess on the example host cannot reach ---------------------------


@pytest.fixture
def domu(rhel5: Lab) -> Iterator[Lab]:
    rhel5.fake.mark_simulated()
    rhel5.fake.write_file("/etc/xen/domu.cfg", XL_GUEST)
    root = str(rhel5.base)
    assert main(["--root", root, "hide", "--now", NIC]) == 0
    assert main(["--root", root, "attach", NIC, "domu", "--accept-pv-dma-risk"]) == 0
    yield rhel5


def test_save_restore_migrate_success_shapes(
    domu: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The example host's simulated runner has no xl; give the CLI's host one that has.
    from pcipass.cli import main as cli

    def with_xl(root: str) -> object:
        assert root == str(domu.base)
        return domu.host

    domu.runner.programs.add("xl")
    domu.runner.toolstack.running["domu"] = {NIC}  # the guest runs with its device
    monkeypatch.setattr(cli, "_open_host", with_xl)
    root = str(domu.base)
    capsys.readouterr()
    for argv, definition in (
        (["save", "domu", "/tmp/domu.save"], "save"),
        (["restore", "/tmp/domu.save", "domu"], "restore"),
        (["migrate", "domu", "h2"], "migrate"),
    ):
        assert main(["--root", root, *argv, "--json"]) == 0
        data = one_json_object(capsys.readouterr().out)
        validator(definition).validate(data)
        assert data["action"] == argv[0]


def test_undecodable_input_on_stdin_is_not_a_traceback(shared_hosts: dict[str, Path]) -> None:
    root = str(shared_hosts["rhel5-xen"])
    done = subprocess.run(
        [sys.executable, "-m", "pcipass", "--root", root, "explain", "-", "--json"],
        input=b"xc_assign_device failed \xff\xfe\n",
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"},
    )
    assert b"Traceback" not in done.stderr, done.stderr
    run = Run(done.returncode, done.stdout.decode(), done.stderr.decode())
    data = check_contract(run, "error", 2)
    assert data["problem"] == "not valid utf-8 text"


@pytest.mark.parametrize(("argv", "code"), [(("list",), 1), (("check", ROUTE_NIC), 3)])
def test_a_closed_stdout_is_one_line_and_never_exit_0(
    shared_hosts: dict[str, Path], argv: tuple[str, ...], code: int
) -> None:
    # `pcipass list >&-`: Python starts with no sys.stdout at all.
    script = '"$1" -m pcipass --root "$2" "${@:3}" >&-'
    done = subprocess.run(
        ["bash", "-c", script, "bash", sys.executable, str(shared_hosts["rhel5-xen"]), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code
    assert own_lines(done.stderr) == ["pcipass: standard output: write failed: Bad file descriptor"]
