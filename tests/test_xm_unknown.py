"""xm files whose Python could set or change ``pci`` in a way pcipass cannot
read: their devices are "unknown" (file and line), nobody else is given a
device they might hold unless the administrator names the file
(``--trust-unreadable FILE``), and the guard treats them as holding one.
Every trick below is an attack: each would give xend a pci pcipass never saw."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.cli.main import main
from pcipass.errors import ConfigSyntaxError
from pcipass.guests.model import GuestKind
from pcipass.guests.xen_cfg import parse_xen_config
from pcipass.ops.hooks import wrapper_text
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

SRC = str(Path(__file__).resolve().parents[1] / "src")
NIC = PciAddress.parse("0000:09:00.0")
DEV = '["0000:09:00.0"]'

# (trick, the line that gives it away, words of the reason)
TRICKS = [
    (f"pci = base + {DEV}", 2, "computed"),
    ("pci = []\npci.append('09:00.0')", 3, "uses pci"),
    (f"pci = []\npci[0:0] = {DEV}", 3, "uses pci"),
    (f"pci = []\npci.extend({DEV})", 3, "uses pci"),
    (f"pci = []\npci += {DEV}", 3, "sets pci"),
    (f"if 1:\n    pci = {DEV}", 3, "sets pci"),
    (f"for pci in [{DEV}]:\n    pass", 2, "sets pci"),
    ("def pci():\n    pass", 2, "sets pci"),
    ("del pci", 2, "sets pci"),
    ("alias = pci", 2, "uses pci"),
    (f"exec('pci = {DEV}')", 2, "exec"),
    (f"eval(compile('pci = {DEV}', 'x', 'exec'))", 2, "eval"),
    (f"getattr(__builtins__, 'ex' + 'ec')('pci = {DEV}')", 2, "getattr"),
    ("f = getattr\nf(object, 'x')", 2, "getattr"),
    (f"import builtins\nbuiltins.exec('pci = {DEV}')", 2, "imports builtins"),
    ("import __builtin__\n__builtin__.eval('1')", 2, "imports __builtin__"),
    (f"import sys\nsys._getframe().f_locals['pci'] = {DEV}", 2, "imports sys"),
    (f"import inspect\ninspect.currentframe().f_globals['pci'] = {DEV}", 2, "imports inspect"),
    (f"import os\nos.sys._getframe(0).f_globals['pci'] = {DEV}", 3, ".sys"),
    (f"globals()['pci'] = {DEV}", 2, "globals"),
    (f"vars()['pci'] = {DEV}", 2, "vars"),
    (f"locals().update(pci={DEV})", 2, "locals"),
    (f"setattr(object, 'pci', {DEV})", 2, "setattr"),
    ("__import__('os')", 2, "__import__"),
    (
        "try:\n    1/0\nexcept Exception as e:\n"
        f"    e.__traceback__.tb_frame.f_globals['pci'] = {DEV}",
        5,
        ".__traceback__",
    ),
    (f"g = (lambda: 0).__globals__\ng['pci'] = {DEV}", 2, ".__globals__"),
    ("x = [].__class__.__base__.__subclasses__()", 2, ".__class__"),
    ("from os import *", 2, "import *"),
    ("from inspect import currentframe", 2, "imports from inspect"),
    ("import gc\nx = gc.get_referrers(1)", 2, "imports gc"),
    ("import os\nx = os.getcwd.__self__", 3, ".__self__"),
    ("import importlib\nimportlib.import_module('builtins')", 2, "imports importlib"),
    ("import ctypes", 2, "imports ctypes"),
]


def sneaky(trick: str) -> bytes:
    return f"name = 'sneaky'\n{trick}\nmemory = 512\n".encode()


@pytest.mark.parametrize(("trick", "line", "words"), TRICKS)
def test_each_trick_makes_the_devices_unknown_with_the_line(
    trick: str, line: int, words: str
) -> None:
    config = parse_xen_config(sneaky(trick), "/etc/xen/sneaky", GuestKind.XM)
    assert config.devices_unknown is not None
    assert f"line {line}: " in config.devices_unknown and words in config.devices_unknown
    # pcipass never edits a pci it cannot read.
    for edit in (lambda: config.with_device_added(NIC), lambda: config.with_device_removed(NIC)):
        with pytest.raises(ConfigSyntaxError) as caught:
            edit()
        assert caught.value.subject == f"/etc/xen/sneaky:{line}"
        assert "cannot tell which devices this file assigns" in caught.value.problem


def test_xmexample_style_code_is_still_plain_data() -> None:
    text = (
        b"import os, re\n"
        b"from os import path\n"
        b"arch = os.uname()[4]\n"
        b"if re.search('64', arch):\n    arch_libdir = 'lib64'\nelse:\n    arch_libdir = 'lib'\n"
        b"device_model = '/usr/' + arch_libdir + '/xen/bin/qemu-dm'\n"
        b"name = 'plain'\npci = [ '09:00.0' ]\n"
    )
    config = parse_xen_config(text, "/etc/xen/plain", GuestKind.XM)
    assert config.devices_unknown is None
    assert [str(d.address) for d in config.devices()] == ["0000:09:00.0"]
    assert parse_xen_config(config.with_device_removed(NIC), "p", GuestKind.XM).with_device_added(
        NIC
    ) == text.replace(b"[ '09:00.0' ]", b"[ '0000:09:00.0' ]")


@pytest.fixture
def hidden(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> Lab:
    rhel5.fake.mark_simulated()
    assert main(["--root", str(rhel5.base), "hide", "--now", "09:00.0"]) == 0
    capsys.readouterr()
    return rhel5


# "+=" makes /etc/xen/NAME an xl file (guess_kind): tested below as xl.
XM_TRICKS = [t for t in TRICKS if "+=" not in t[0]]


@pytest.mark.parametrize(("trick", "line", "words"), XM_TRICKS)
def test_another_guest_is_not_given_a_device_an_unreadable_file_may_hold(
    hidden: Lab, capsys: pytest.CaptureFixture[str], trick: str, line: int, words: str
) -> None:
    hidden.fake.write_file("/etc/xen/sneaky", sneaky(trick).decode())
    before = snapshot(hidden.base)
    root = str(hidden.base)
    argv = ["--root", root, "attach", "09:00.0", "rhel5pv", "--accept-pv-dma-risk"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "[PP101]" in err and "guest sneaky may hold it: /etc/xen/sneaky" in err
    assert f"line {line}: " in err and "--trust-unreadable /etc/xen/sneaky" in err
    assert snapshot(hidden.base) == before
    # The administrator vouches for the file: then the attach goes ahead.
    assert main([*argv, "--trust-unreadable", "/etc/xen/sneaky"]) == 0


def test_trust_names_one_file_only(hidden: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    hidden.fake.write_file("/etc/xen/sneaky", sneaky(f"pci = base + {DEV}").decode())
    hidden.fake.write_file(
        "/etc/xen/sly", sneaky("globals()['x'] = 1").decode().replace("sneaky", "sly")
    )
    root = str(hidden.base)
    argv = ["--root", root, "attach", "09:00.0", "rhel5pv", "--accept-pv-dma-risk"]
    assert main([*argv, "--trust-unreadable", "/etc/xen/sneaky"]) == 3
    err = capsys.readouterr().err
    assert "guest sly may hold it" in err and "guest sneaky" not in err


def test_guard_treats_unknown_devices_as_held(
    rhel5: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rhel5.fake.write_file("/etc/xen/sneaky", sneaky("pci = []\npci.append('09:00.0')").decode())
    before = snapshot(rhel5.base)
    assert main(["--root", str(rhel5.base), "guard", "save", "sneaky"]) == 3
    err = capsys.readouterr().err
    assert "[PP003]" in err and "unknown (/etc/xen/sneaky line 3:" in err
    assert snapshot(rhel5.base) == before


def test_wrapper_fails_closed_on_an_unreadable_file(rhel5: Lab, tmp_path: Path) -> None:
    rhel5.fake.write_file("/etc/xen/sneaky", sneaky(f"exec('pci = {DEV}')").decode())
    real = tmp_path / "real-xm"
    real.write_text(f'#!/bin/sh\n[ "$1" = list ] && exit 0\ntouch {tmp_path}/ran\n')
    real.chmod(0o755)
    wrapper = tmp_path / "xm"
    wrapper.write_text(wrapper_text("xm", str(real)))
    wrapper.chmod(0o755)
    env = {"PYTHONPATH": SRC, "PCIPASS_ROOT": str(rhel5.base), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [str(wrapper), "restore", "/tmp/x.save"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 3 and "sneaky (unknown (/etc/xen/sneaky line 2:" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_check_reports_unknown_devices(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    rhel5.fake.write_file("/etc/xen/sneaky", sneaky("vars()['pci'] = []").decode())
    main(["--root", str(rhel5.base), "guests", "sneaky"])
    out = capsys.readouterr()
    assert "devices unknown: /etc/xen/sneaky computes pci (line 2:" in out.out + out.err


def test_an_xl_file_that_appends_to_pci_holds_its_devices(
    hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # xl assigns both entries; pcipass used to refuse to read the file and
    # then gave its device to another guest.
    hidden.fake.write_file("/etc/xen/hand.cfg", "name = 'hand'\npci = []\npci += ['09:00.0']\n")
    before = snapshot(hidden.base)
    argv = ["--root", str(hidden.base), "attach", "09:00.0", "rhel5pv", "--accept-pv-dma-risk"]
    assert main(argv) == 3
    assert "[PP101] is listed by guest hand in /etc/xen/hand.cfg" in capsys.readouterr().err
    assert snapshot(hidden.base) == before
