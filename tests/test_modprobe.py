"""modprobe configuration: the document's lines, byte preservation, kmod's own reading.

The real parser cross-checks run kmod's modprobe on the files pcipass writes:

* ``modprobe -C DIR --showconfig`` prints every alias/options/install/softdep
  kmod parsed from DIR only (``-C`` replaces the default config paths, see
  modprobe(8)); kmod also adds options from /proc/cmdline, so the output of
  an empty DIR is the baseline that is subtracted.
* ``modprobe -d ROOT -S REL -C DIR -n -v MODULE`` shows what kmod would do
  (``insmod PATH OPTIONS`` / ``install COMMAND``) against a module tree
  built here from tiny ELF files that depmod indexes: the same resolution of
  aliases, options and softdeps as at boot, without loading anything.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.host.platform import PersistMethod, StubState, detect_platform
from pcipass.host.root import HostRoot
from pcipass.persist.atomic import apply_edit, plan_edit
from pcipass.persist.modprobe import (
    HEADER,
    Document,
    HideDevice,
    HidePlan,
    add_hide,
    collect_modprobe_files,
    install_line,
    kmod_file_order,
    only_header_left,
    plan_add_hide,
    plan_remove_hide,
    read_persistent_hides,
    remove_hide,
    repair_rhel5_alias,
    split_logical,
)
from pcipass.policy.persist_rules import findings
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.tools import find_tool, require_tool

A = PciAddress.parse("0000:09:00.0")
B = PciAddress.parse("0000:0a:04.1")
C = PciAddress.parse("0000:00:03.0")
RELEASE = "6.1.0-56-amd64"
STUB_KEYS = ("pciback", "vfio_pci")

DOC_INSTALL = (
    "install bnx2 /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install bnx2"
)


def rhel5(*devices: HideDevice, stub: str = "pciback") -> HidePlan:
    return HidePlan(PersistMethod.RHEL5, Backend.PCIBACK, stub, devices)


def current(*devices: HideDevice) -> HidePlan:
    return HidePlan(PersistMethod.MODPROBE_D, Backend.PCIBACK, "xen-pciback", devices)


def vfio(*devices: HideDevice) -> HidePlan:
    return HidePlan(PersistMethod.MODPROBE_D, Backend.VFIO, "vfio-pci", devices)


def config_lines(data: bytes) -> list[str]:
    """The lines kmod acts on (comments and blank lines dropped)."""
    return [
        line.text
        for line in split_logical(data)
        if line.text.strip() and not line.text.lstrip().startswith("#")
    ]


# --------------------------------------------------------------------------
# kmod helpers
# --------------------------------------------------------------------------


MODPROBE = find_tool("modprobe")
DEPMOD = find_tool("depmod")


def needs_kmod(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that runs kmod (``-m needs_tool`` selects them; pcipass.testing.tools)."""
    return pytest.mark.needs_tool("modprobe", "depmod")(test)


def _fake_ko(name: str) -> bytes:
    """A minimal ELF64 relocatable object with a .modinfo section: enough for depmod."""
    modinfo = b"license=GPL\0name=" + name.encode() + b"\0"
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    header_size, section_size = 64, 64
    modinfo_at = header_size
    shstrtab_at = modinfo_at + len(modinfo)
    sections_at = (shstrtab_at + len(shstrtab) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sections_at, 0, header_size, 0, 0, section_size, 3, 2
    )
    body = header + modinfo + shstrtab
    body += bytes(sections_at - len(body))

    def section(name_at: int, kind: int, flags: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name_at, kind, flags, 0, offset, size, 0, 0, 1, 0)

    body += section(0, 0, 0, 0, 0)
    body += section(1, 1, 2, modinfo_at, len(modinfo))  # .modinfo: PROGBITS, ALLOC
    body += section(10, 3, 0, shstrtab_at, len(shstrtab))  # .shstrtab: STRTAB
    return body


@pytest.fixture
def module_tree(tmp_path: Path) -> Path:
    """A kernel module tree (indexed by the real depmod) with the stubs and some drivers."""
    require_tool("depmod")
    require_tool("modprobe")
    # kmod adds options from this machine's /proc/cmdline to every module;
    # a CI machine booted with one of our stubs' options would skew the output.
    empty = tmp_path / "no-config"
    empty.mkdir()
    if any(stub in line for line in _kmod_config(empty) for stub in STUB_KEYS):
        pytest.skip("this machine's kernel command line sets options for a PCI stub")
    root = tmp_path / "kroot"
    kernel = root / "lib/modules" / RELEASE / "kernel"
    for relative in (
        "drivers/xen/xen-pciback/xen-pciback.ko",
        "drivers/vfio/pci/vfio-pci.ko",
        "drivers/net/ethernet/broadcom/bnx2.ko",
        "drivers/net/ethernet/intel/e1000/e1000.ko",
        "drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "drivers/misc/other.ko",
    ):
        path = kernel / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_fake_ko(path.name.removesuffix(".ko").replace("-", "_")))
    subprocess.run([DEPMOD, "-b", str(root), RELEASE], check=True, capture_output=True, timeout=60)
    return root


def dry_run(root: Path, confdir: Path, module: str) -> subprocess.CompletedProcess[str]:
    assert MODPROBE is not None
    return subprocess.run(
        [MODPROBE, "-d", str(root), "-S", RELEASE, "-C", str(confdir), "-n", "-v", module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def insmods(output: str) -> list[str]:
    """``insmod /.../xen-pciback.ko hide=(...)`` -> ``xen-pciback.ko hide=(...)``."""
    result = []
    for line in output.splitlines():
        words = line.split()
        if words and words[0] == "insmod":
            result.append(" ".join([Path(words[1]).name, *words[2:]]))
        elif words:
            result.append(line.strip())
    return result


def _kmod_config(directory: Path) -> list[str]:
    """The configuration lines of ``modprobe -C DIRECTORY --showconfig``."""
    assert MODPROBE is not None
    out = subprocess.run(
        [MODPROBE, "-C", str(directory), "--showconfig"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode("latin-1")  # one character per byte: a \r stays a \r
    head, _, _ = out.partition("# End of configuration files")
    return [line for line in head.split("\n") if line.strip()]


def showconfig(confdir: Path) -> list[str]:
    """What kmod parsed from ``confdir`` alone (the /proc/cmdline part subtracted)."""
    empty = confdir.parent / "empty-config"
    empty.mkdir(exist_ok=True)
    baseline = _kmod_config(empty)
    return [line for line in _kmod_config(confdir) if line not in baseline]


def write_conf(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------
# The document's procedure
# --------------------------------------------------------------------------


def test_the_documents_procedure_gives_exactly_its_lines() -> None:
    step1 = add_hide(None, rhel5(HideDevice(A, "bnx2")))
    assert config_lines(step1) == [DOC_INSTALL, "options pciback hide=(0000:09:00.0)"]
    # Step 2: a second device is merged into the one options line (PP009).
    step2 = add_hide(step1, rhel5(HideDevice(B)))
    assert config_lines(step2) == [DOC_INSTALL, "options pciback hide=(0000:09:00.0)(0000:0a:04.1)"]
    assert install_line("bnx2") == DOC_INSTALL
    # Removing both gives back a file with nothing but pcipass's header: delete it.
    emptied = remove_hide(step2, [A, B])
    assert only_header_left(emptied)


def test_on_the_documents_host_through_the_atomic_writer(tmp_path: Path) -> None:
    host = build_rhel5_xen(tmp_path / "rhel5")
    root = HostRoot.at(host.base)
    platform = detect_platform(root)
    path = platform.modprobe_path(platform.method_for(Backend.PCIBACK))
    target = root.path(path)
    original = target.read_bytes()
    plan = HidePlan.for_platform(
        platform, Backend.PCIBACK, [HideDevice(A, "bnx2"), HideDevice(B, "e1000")]
    )
    edit = plan_edit(target, path, add_hide(original, plan, path=path))
    assert "+options pciback hide=(0000:09:00.0)(0000:0a:04.1)" in edit.diff()
    apply_edit(edit)
    text = target.read_bytes()
    assert text.startswith(original)  # the user's lines untouched, ours appended
    assert config_lines(text)[-3:] == [
        DOC_INSTALL,
        "options pciback hide=(0000:09:00.0)(0000:0a:04.1)",
        install_line("e1000"),
    ]
    state = read_persistent_hides(collect_modprobe_files(root))
    assert state.hidden() == {A, B}
    assert findings(state, platform) == []
    apply_edit(plan_edit(target, path, remove_hide(text, [B, A], path=path)))
    assert target.read_bytes() == original


# --------------------------------------------------------------------------
# Merging and removal semantics
# --------------------------------------------------------------------------


def test_install_line_stays_while_another_device_needs_its_driver() -> None:
    both = add_hide(b"", rhel5(HideDevice(A, "bnx2"), HideDevice(B, "bnx2")))
    assert config_lines(both).count(DOC_INSTALL) == 1
    only_b = remove_hide(both, [A])
    assert config_lines(only_b) == [DOC_INSTALL, "options pciback hide=(0000:0a:04.1)"]
    assert remove_hide(only_b, [B]) == b""


def test_merges_into_the_users_own_line_and_gives_it_back() -> None:
    user = b"# mine\noptions pciback hide=(0000:01:00.0) permissive=1\n"
    result = plan_add_hide(user, rhel5(HideDevice(A)))
    assert result.added == (A,)
    assert config_lines(result.text) == [
        "options pciback hide=(0000:01:00.0)(0000:09:00.0) permissive=1"
    ]
    assert remove_hide(result.text, [A]) == user
    # The user's own device is not pcipass's to remove.
    kept = plan_remove_hide(user, [PciAddress.parse("0000:01:00.0")])
    assert kept.text == user
    assert kept.user_held == ((PciAddress.parse("0000:01:00.0"), 2),)
    assert kept.removed == ()
    # Already hidden by the user: nothing added, nothing marked.
    same = plan_add_hide(user, rhel5(HideDevice(PciAddress.parse("0000:01:00.0"), "bnx2")))
    assert same.text == user
    assert same.already == (PciAddress.parse("0000:01:00.0"),)


def test_adds_the_parameter_to_the_users_options_line() -> None:
    user = b"options xen-pciback permissive=1  \n"
    text = add_hide(user, current(HideDevice(A)))
    assert config_lines(text) == ["options xen-pciback permissive=1 hide=(0000:09:00.0)  "]
    assert remove_hide(text, [A]) == user


def test_merges_across_a_continuation_line() -> None:
    user = b"options pciback \\\n  hide=(0000:01:00.0)\nalias x y\n"
    text = add_hide(user, rhel5(HideDevice(A)))
    assert b"  hide=(0000:01:00.0)(0000:09:00.0)\n" in text
    assert config_lines(text)[0] == "options pciback   hide=(0000:01:00.0)(0000:09:00.0)"
    assert remove_hide(text, [A]) == user


def test_second_options_line_is_a_finding_and_the_merge_goes_into_the_last() -> None:
    user = b"options pciback hide=(0000:01:00.0)\noptions pciback hide=(0000:02:00.0)\n"
    state = read_persistent_hides({"/etc/modprobe.conf": user})
    assert state.hidden() == {PciAddress.parse("0000:02:00.0")}
    (finding,) = findings(state)
    assert (finding.rule, finding.code, finding.line) == ("PP009", "duplicate-hide", 1)
    assert "0000:01:00.0" in finding.message
    assert "options pciback hide=(0000:01:00.0)(0000:02:00.0)" in finding.remedy
    text = add_hide(user, rhel5(HideDevice(A)))
    assert config_lines(text)[1] == "options pciback hide=(0000:02:00.0)(0000:09:00.0)"


def test_vfio_ids_are_kept_while_another_device_shares_them() -> None:
    first = HideDevice(A, "e1000e", "8086:10D3")
    second = HideDevice(B, "e1000e", "8086:10d3")
    gpu = HideDevice(C, "nouveau", "10de:1b80")
    text = add_hide(None, vfio(first, second, gpu))
    assert config_lines(text) == [
        "softdep e1000e pre: vfio-pci",
        "options vfio-pci ids=8086:10d3,10de:1b80",
        "softdep nouveau pre: vfio-pci",
    ]
    after_a = remove_hide(text, [A])
    assert "options vfio-pci ids=8086:10d3,10de:1b80" in config_lines(after_a)
    after_b = remove_hide(after_a, [B])
    assert config_lines(after_b) == [
        "options vfio-pci ids=10de:1b80",
        "softdep nouveau pre: vfio-pci",
    ]
    assert only_header_left(remove_hide(after_b, [C]))


def test_refusals_change_nothing_and_say_why() -> None:
    own_install = b"install bnx2 /bin/true\n"
    with pytest.raises(ConfigSyntaxError) as error:
        add_hide(own_install, rhel5(HideDevice(A, "bnx2")), path="/etc/modprobe.conf")
    assert error.value.render().startswith("/etc/modprobe.conf:1: bnx2 already has its own install")
    with pytest.raises(ConfigSyntaxError, match="points pciback elsewhere"):
        add_hide(b"alias pciback foo\n", rhel5(HideDevice(A), stub="xen-pciback"))
    with pytest.raises(ConfigSyntaxError, match="parentheses"):
        add_hide(b"options pciback hide=0000:01:00.0\n", rhel5(HideDevice(A)))
    with pytest.raises(ConfigSyntaxError, match="first softdep"):
        add_hide(b"softdep e1000 pre: other\n", current(HideDevice(A, "e1000")))
    with pytest.raises(UsageError, match="not a valid name"):
        HideDevice(A, "bnx2; reboot")
    with pytest.raises(UsageError, match="vendor:device"):
        vfio(HideDevice(A, "e1000e"))
    with pytest.raises(UsageError, match="pciback only"):
        HidePlan(PersistMethod.RHEL5, Backend.VFIO, "vfio-pci", ())


def test_a_users_install_line_that_loads_pciback_is_accepted() -> None:
    user = b"install bnx2 /sbin/modprobe pciback; /sbin/modprobe --ignore-install bnx2\n"
    text = add_hide(user, rhel5(HideDevice(A, "bnx2")))
    assert config_lines(text) == [user.decode().strip(), "options pciback hide=(0000:09:00.0)"]
    assert remove_hide(text, [A]) == user


# --------------------------------------------------------------------------
# Byte preservation on messy files
# --------------------------------------------------------------------------

MESSY = (
    b"# /etc/modprobe.conf of a long-lived host\r\n"
    b"alias eth0 bnx2\r\n"
    b"\n"
    b"\toptions  bnx2\tdisable_msi=1   \n"
    b"# a comment that continues \\\n"
    b"options pciback hide=(0000:77:00.0)\n"
    b"options e1000 \\\n"
    b"    InterruptThrottleRate=3000 \\\n"
    b"    XsumRX=0\n"
    b"   \n"
    b"install foo /bin/echo \xff\xfe not utf-8\n"
    b"blacklist nouveau"
)


@pytest.mark.parametrize(
    "plan", [rhel5(HideDevice(A, "bnx2"), HideDevice(B)), current(HideDevice(A, "bnx2"))]
)
def test_messy_file_keeps_every_byte(plan: HidePlan) -> None:
    text = add_hide(MESSY, plan)
    # Everything before the unterminated last line is kept, then pcipass's lines,
    # then that last line, still without a newline.
    last = b"blacklist nouveau"
    assert text.startswith(MESSY[: -len(last)])
    assert text.endswith(b"\n" + last)
    # The commented-out continuation line is not an options line for kmod.
    assert "options pciback hide=(0000:77:00.0)" not in config_lines(text)
    assert remove_hide(text, [a.address for a in plan.devices]) == MESSY


def test_dangling_continuation_at_end_of_file() -> None:
    user = b"options bnx2 disable_msi=1 \\\n"
    text = add_hide(user, current(HideDevice(A, "bnx2")))
    assert text.endswith(user)  # pcipass's lines went before it
    assert "options bnx2 disable_msi=1 " in config_lines(text)
    assert remove_hide(text, [A]) == user


def test_kmod_unwrapping_rules() -> None:
    lines = split_logical(b"a\\\nb\\c\n# x \\\ny\nlast")
    assert [line.text for line in lines] == ["abc", "# x y", "last"]
    assert [line.first_line for line in lines] == [1, 3, 5]
    assert [line.terminated for line in lines] == [True, True, False]
    doc = Document.parse(b"  options\txen_pciback  hide=(0000:00:03.0)\noptions pciback\n")
    assert [d.key for d in doc.directives] == ["xen_pciback"]  # the 2nd is a bad line for kmod


# --------------------------------------------------------------------------
# Reading all files like kmod
# --------------------------------------------------------------------------


def test_kmod_file_order_and_precedence() -> None:
    order, ignored = kmod_file_order(
        [
            "/lib/modprobe.d/50-pcipass.conf",
            "/etc/modprobe.d/zz.conf",
            "/etc/modprobe.d/50-pcipass.conf",
            "/etc/modprobe.d/notes.txt",
            "/etc/modprobe.d/.hidden.conf",
            "/run/modprobe.d/10-a.conf",
            "/etc/modprobe.conf",
        ]
    )
    assert order == [
        "/etc/modprobe.conf",
        "/run/modprobe.d/10-a.conf",
        "/etc/modprobe.d/50-pcipass.conf",
        "/etc/modprobe.d/zz.conf",
    ]
    assert set(ignored) == {
        "/lib/modprobe.d/50-pcipass.conf",
        "/etc/modprobe.d/notes.txt",
        "/etc/modprobe.d/.hidden.conf",
    }


def test_platform_findings(tmp_path: Path) -> None:
    root = tmp_path / "debian"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    moddir = root / "lib/modules" / RELEASE
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("kernel/drivers/xen/xen-pciback/xen-pciback.ko:\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/vfio/pci/vfio-pci.ko\n")
    platform = detect_platform(HostRoot.at(root), release=RELEASE)
    assert platform.stub_state("vfio-pci") is StubState.BUILTIN
    rhel5_lines = add_hide(None, rhel5(HideDevice(C, "e1000")))
    files = {
        "/etc/modprobe.d/old-rhel5.conf": rhel5_lines,
        "/etc/modprobe.conf": b"options xen-pciback hide=(0000:00:04.0)\n",
        "/etc/modprobe.d/vfio.conf": b"options vfio_pci ids=8086:10d3,zzzz\n",
    }
    codes = {(f.code, f.subject) for f in findings(read_persistent_hides(files), platform)}
    assert ("rhel5-form-on-xen-pciback", "/etc/modprobe.d/old-rhel5.conf:4") in codes  # install
    assert ("rhel5-form-on-xen-pciback", "/etc/modprobe.d/old-rhel5.conf:6") in codes  # options
    assert ("modprobe-conf-ignored", "/etc/modprobe.conf:1") in codes
    assert ("options-for-builtin", "/etc/modprobe.d/vfio.conf:1") in codes
    assert ("bad-ids", "/etc/modprobe.d/vfio.conf:1") in codes
    # The repair pcipass offers: the alias, and the finding is gone.
    files["/etc/modprobe.d/old-rhel5.conf"] = repair_rhel5_alias(rhel5_lines)
    codes = {f.code for f in findings(read_persistent_hides(files), platform)}
    assert "rhel5-form-on-xen-pciback" not in codes


def test_options_through_an_alias_count_for_the_module() -> None:
    text = add_hide(None, rhel5(HideDevice(C, "e1000"), stub="xen-pciback"))
    state = read_persistent_hides({"/etc/modprobe.d/pcipass.conf": text})
    assert state.aliases["pciback"] == "xen_pciback"
    assert state.hidden("xen-pciback") == {C}
    assert state.source_of(C) is not None and state.source_of(C).managed  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# kmod's real parser
# --------------------------------------------------------------------------


@needs_kmod
def test_kmod_showconfig_sees_exactly_the_intended_lines(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    write_conf(confdir, "rhel5.conf", add_hide(None, rhel5(HideDevice(A, "bnx2"), HideDevice(B))))
    assert sorted(showconfig(confdir)) == sorted(
        [DOC_INSTALL, "options pciback hide=(0000:09:00.0)(0000:0a:04.1)"]
    )
    (confdir / "rhel5.conf").unlink()
    write_conf(
        confdir,
        "pcipass.conf",
        add_hide(None, current(HideDevice(C, "e1000")))
        + add_hide(None, vfio(HideDevice(A, "e1000e", "8086:10d3")))[len(HEADER) :],
    )
    # kmod normalises the module name of options/alias (- to _) but not softdep targets.
    assert sorted(showconfig(confdir)) == sorted(
        [
            "options xen_pciback hide=(0000:00:03.0)",
            "softdep e1000 pre: xen-pciback",
            "options vfio_pci ids=8086:10d3",
            "softdep e1000e pre: vfio-pci",
        ]
    )


@needs_kmod
def test_kmod_showconfig_on_the_messy_file(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    before = showconfig(write_conf(confdir, "messy.conf", MESSY).parent)
    write_conf(confdir, "messy.conf", add_hide(MESSY, current(HideDevice(A, "bnx2"))))
    after = showconfig(confdir)
    assert sorted(after) == sorted(
        [*before, "options xen_pciback hide=(0000:09:00.0)", "softdep bnx2 pre: xen-pciback"]
    )


@needs_kmod
def test_kmod_reproduces_the_silent_rhel5_failure_and_the_alias_fix(
    tmp_path: Path, module_tree: Path
) -> None:
    """lab-notes §5: the document's lines on a xen-pciback kernel, and the alias."""
    confdir = tmp_path / "conf"
    broken = (
        b"options pciback hide=(0000:00:03.0)\n"
        b"install e1000 /sbin/modprobe pciback; "
        b"/sbin/modprobe --first-time --ignore-install e1000\n"
    )
    write_conf(confdir, "rhel5.conf", broken)
    loading = dry_run(module_tree, confdir, "pciback")
    assert loading.returncode != 0
    assert "Module pciback not found" in loading.stderr
    # pcipass's own RHEL 5 form on this kernel carries the alias and works:
    fixed = add_hide(None, rhel5(HideDevice(C, "e1000"), stub="xen-pciback"))
    write_conf(confdir, "rhel5.conf", fixed)
    driver = dry_run(module_tree, confdir, "e1000")
    assert insmods(driver.stdout) == [
        "install /sbin/modprobe pciback; /sbin/modprobe --first-time --ignore-install e1000"
    ]
    stub = dry_run(module_tree, confdir, "pciback")
    assert stub.returncode == 0, stub.stderr
    assert insmods(stub.stdout) == ["xen-pciback.ko hide=(0000:00:03.0)"]


@needs_kmod
def test_kmod_loads_the_stub_first_with_the_hide_value(tmp_path: Path, module_tree: Path) -> None:
    confdir = tmp_path / "conf"
    write_conf(
        confdir, "pcipass.conf", add_hide(None, current(HideDevice(C, "e1000"), HideDevice(A)))
    )
    result = dry_run(module_tree, confdir, "e1000")
    assert insmods(result.stdout) == [
        "xen-pciback.ko hide=(0000:00:03.0)(0000:09:00.0)",
        "e1000.ko",
    ]
    write_conf(confdir, "pcipass.conf", add_hide(None, vfio(HideDevice(A, "e1000e", "8086:10d3"))))
    result = dry_run(module_tree, confdir, "e1000e")
    assert insmods(result.stdout) == ["vfio-pci.ko ids=8086:10d3", "e1000e.ko"]


@needs_kmod
def test_kmod_agrees_a_second_hide_line_loses_the_first(tmp_path: Path, module_tree: Path) -> None:
    confdir = tmp_path / "conf"
    text = b"options xen-pciback hide=(0000:01:00.0)\noptions xen_pciback hide=(0000:02:00.0)\n"
    write_conf(confdir, "a.conf", text)
    result = dry_run(module_tree, confdir, "xen-pciback")
    # Both reach the kernel; the charp parameter keeps the last: PP009.
    assert insmods(result.stdout) == ["xen-pciback.ko hide=(0000:01:00.0) hide=(0000:02:00.0)"]
    state = read_persistent_hides({"/etc/modprobe.d/a.conf": text})
    assert state.hidden() == {PciAddress.parse("0000:02:00.0")}
    assert [f.code for f in findings(state)] == ["duplicate-hide"]


@needs_kmod
def test_kmod_ignores_install_when_the_driver_has_a_softdep(
    tmp_path: Path, module_tree: Path
) -> None:
    confdir = tmp_path / "conf"
    files = {
        "/etc/modprobe.d/10-user.conf": b"softdep e1000 pre: other\n",
        "/etc/modprobe.d/50-rhel5.conf": add_hide(
            None, rhel5(HideDevice(C, "e1000"), stub="xen-pciback")
        ),
        "/etc/modprobe.d/60-late.conf": b"softdep e1000 pre: xen-pciback\n",
    }
    for path, data in files.items():
        write_conf(confdir, Path(path).name, data)
    result = dry_run(module_tree, confdir, "e1000")
    # kmod: the first softdep only, and no install command for a module with one.
    assert insmods(result.stdout) == ["other.ko", "e1000.ko"]
    codes = {(f.code, f.subject) for f in findings(read_persistent_hides(files))}
    assert ("install-ignored-softdep", "/etc/modprobe.d/50-rhel5.conf:6") in codes
    assert ("shadowed-softdep", "/etc/modprobe.d/60-late.conf:1") in codes


# --------------------------------------------------------------------------
# Fuzzing: arbitrary existing files
# --------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"options pciback hide=(0000:01:00.0)",
        b"options xen-pciback hide=(0000:09:00.0)(0000:02:00.0)",
        b"options pciback permissive=1",
        b"options pciback hide=",
        b"options pciback hide=(bogus)",
        b"options xen_pciback",
        b"install bnx2 /sbin/modprobe pciback; /sbin/modprobe --ignore-install bnx2",
        b"install e1000 /bin/true",
        b"softdep bnx2 pre: xen-pciback",
        b"alias pciback xen-pciback",
        b"alias eth0 bnx2",
        b"# pcipass: line hide=0000:01:00.0",
        b"# pcipass: for=zzz",
        b"# comment",
        b"",
        b"\t  ",
        b"\\",
        b"options vfio-pci ids=8086:10d3",
        b'options pciback "hide=(0000:03:00.0)"',
    ]
)
NOISE = st.binary(max_size=12)
LINE = st.one_of(FRAGMENTS, FRAGMENTS, NOISE)
ENDING = st.sampled_from([b"\n", b"\r\n", b"\\\n", b""])
FILES = st.lists(st.tuples(LINE, ENDING), max_size=8).map(lambda ls: b"".join(a + b for a, b in ls))
PLANS = st.sampled_from(
    [
        rhel5(HideDevice(A, "bnx2")),
        rhel5(HideDevice(B, "e1000"), stub="xen-pciback"),
        current(HideDevice(A, "bnx2"), HideDevice(B)),
        vfio(HideDevice(A, "e1000e", "8086:10d3")),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FILES, PLANS)
def test_fuzz_never_a_traceback_never_a_lost_line(data: bytes, plan: HidePlan) -> None:
    state = read_persistent_hides({"/etc/modprobe.d/x.conf": data})
    findings(state)
    try:
        result = plan_add_hide(data, plan)
    except UsageError:
        # Only a file with lines for the stub, the drivers or aliases can be refused.
        assert any(d.command for d in Document.parse(data).directives), data
        return
    text = result.text
    # Every original logical line is still there, in order, unless it is an
    # options line pcipass merged into (then it is there with more in it).
    new_lines = [line.text for line in split_logical(text)]
    for line in split_logical(data):
        if line.text in new_lines or line.text.startswith("# pcipass:"):
            continue  # kept, or a pcipass marker brought up to date
        assert line.text.lstrip().startswith("options"), line.text
    if b"# pcipass:" not in data:
        # Without markers to update, an add only ever inserts bytes.
        rest = iter(text)
        assert all(byte in rest for byte in data)
    # What pcipass added takes effect, and removal gives the file back.
    after = read_persistent_hides({"/etc/modprobe.d/x.conf": text})
    for device in plan.devices:
        if plan.backend is Backend.VFIO:
            assert device.device_id in after.hidden_ids()
        else:
            assert device.address in after.hidden()
    removed = remove_hide(text, [d.address for d in plan.devices])
    if result.added and not result.already and b"# pcipass:" not in data:
        assert removed == data  # (a forged marker may claim a user's line; not then)


def test_collect_reads_the_image_not_the_machine(tmp_path: Path) -> None:
    image = tmp_path / "image"
    write_conf(image / "etc/modprobe.d", "a.conf", b"options pciback hide=(0000:01:00.0)\n")
    write_conf(image / "etc/modprobe.d", "notes.txt", b"x")
    outside = write_conf(
        tmp_path / "outside", "evil.conf", b"options pciback hide=(0000:02:00.0)\n"
    )
    (image / "etc/modprobe.d/evil.conf").symlink_to(outside)
    (image / "etc/modprobe.conf").write_bytes(b"alias eth0 bnx2\n")
    files = collect_modprobe_files(HostRoot.at(image))
    assert set(files) == {
        "/etc/modprobe.conf",
        "/etc/modprobe.d/a.conf",
        "/etc/modprobe.d/notes.txt",
    }
    state = read_persistent_hides(files)
    assert state.hidden() == {PciAddress.parse("0000:01:00.0")}
    assert state.ignored_files == ("/etc/modprobe.d/notes.txt",)


def test_hiding_twice_changes_nothing_the_second_time() -> None:
    once = add_hide(None, rhel5(HideDevice(A, "bnx2")))
    twice = plan_add_hide(once, rhel5(HideDevice(A, "bnx2")))
    assert twice.text == once
    assert (twice.added, twice.already) == ((), (A,))
    # The same device again with a driver it did not have: only the install line is added.
    bare = add_hide(None, rhel5(HideDevice(B)))
    with_driver = plan_add_hide(bare, rhel5(HideDevice(B, "e1000")))
    assert config_lines(with_driver.text) == [
        "options pciback hide=(0000:0a:04.1)",
        install_line("e1000"),
    ]
    assert only_header_left(remove_hide(with_driver.text, [B]))
