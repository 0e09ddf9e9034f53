"""xm and xl.cfg guest configurations: reading as data, byte-exact pci edits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.errors import ConfigSyntaxError, UsageError
from pcipass.guests.model import GuestConfig, GuestKind, VirtMode
from pcipass.guests.xen_cfg import CODE, XenConfig, guess_kind, parse_xen_config
from pcipass.testing.harness import inserted, inserted_after_a_comma, missing_members

DATA = Path(__file__).parent / "data" / "guests"
NEW = PciAddress.parse("0000:0b:00.0")
NIC = PciAddress.parse("0000:09:00.0")
HBA = PciAddress.parse("0000:0a:04.1")

XEN_SAMPLES = [
    "rhel5-pv-pygrub",
    "rhel5-hvm",
    "xm-python-code",
    "xm-no-newline",
    "xl-pv.cfg",
    "xl-hvm.cfg",
    "xl-messy.cfg",
    "xl-crlf.cfg",
]


def load(name: str) -> tuple[bytes, XenConfig]:
    data = (DATA / name).read_bytes()
    return data, parse_xen_config(data, f"/etc/xen/{name}", guess_kind(name, data))


def reparse(config: XenConfig, data: bytes) -> XenConfig:
    return parse_xen_config(data, config.display, config.kind)


def addresses(config: GuestConfig) -> list[str]:
    return [str(d.address) for d in config.devices()]


# --------------------------------------------------------------------------
# Reading the samples


@pytest.mark.parametrize(
    ("name", "kind", "guest", "mode", "os", "devices"),
    [
        ("rhel5-pv-pygrub", GuestKind.XM, "rhel5pv", VirtMode.PV, "unknown OS", []),
        ("rhel5-hvm", GuestKind.XM, "rhel5hvm", VirtMode.HVM, "unknown OS", ["0000:09:00.0"]),
        (
            "xm-python-code",
            GuestKind.XM,
            "ExampleHVMDomain",
            VirtMode.HVM,
            "unknown OS",
            ["0000:09:00.0", "0000:0a:04.1"],
        ),
        ("xm-no-newline", GuestKind.XM, "rhel6pv", VirtMode.PV, "rhel 6.5", []),
        (
            "xl-pv.cfg",
            GuestKind.XL,
            "rhel54-pv",
            VirtMode.PV,
            "rhel 5.4",
            ["0000:09:00.0", "0000:0a:04.1"],
        ),
        ("xl-hvm.cfg", GuestKind.XL, "win10-hvm", VirtMode.HVM, "unknown OS", []),
        (
            "xl-messy.cfg",
            GuestKind.XL,
            "messy",
            VirtMode.HVM,
            "unknown OS",
            ["0000:09:00.0", "None"],
        ),
        ("xl-crlf.cfg", GuestKind.XL, "crlf", VirtMode.PVH, "unknown OS", []),
    ],
)
def test_samples_read(
    name: str, kind: GuestKind, guest: str, mode: VirtMode, os: str, devices: list[str]
) -> None:
    _, config = load(name)
    assert missing_members(config, GuestConfig) == []
    assert config.kind is kind
    assert config.name == guest
    assert config.virt_mode is mode
    assert config.hypervisor == "xen"
    assert str(config.os) == os
    assert addresses(config) == devices


def test_rhel5_hvm_detected_from_builder_not_kernel() -> None:
    # kernel= names hvmloader, which says nothing about the guest's OS.
    _, config = load("rhel5-hvm")
    assert config.virt_mode is VirtMode.HVM
    assert not config.os.known
    assert config.passthrough_enabled is None


def test_xm_python_code_is_tolerated_and_reported_not_run() -> None:
    _, config = load("xm-python-code")
    assert config.get("device_model") is CODE
    assert config.get("builder") == "hvm"
    assert any(note.startswith("line 8:") for note in config.notes)  # import os, re
    assert any("line 11-14" in note for note in config.notes)  # the if/else block
    entry = config.devices()[1]
    assert entry.spec_text == "0000:0a:04.1,msitranslate=1"
    assert entry.option("msitranslate") == "1"
    assert entry.line == 39


def test_xl_options_per_device_and_global() -> None:
    _, config = load("xl-pv.cfg")
    nic, hba = config.devices()
    assert config.pci_permissive is False
    assert config.device_option(nic, "permissive") is False  # the global default
    assert config.device_option(hba, "permissive") is True  # its own permissive=1
    _, hvm = load("xl-hvm.cfg")
    assert hvm.pci_msitranslate is True
    assert hvm.pci_permissive is None


def test_xl_messy_reads_vslot_wildcard_and_passthrough() -> None:
    _, config = load("xl-messy.cfg")
    nic, hba = config.devices()
    assert nic.option("vslot") == "5"
    assert hba.address is None and hba.spec_text == "0000:0a:04.*"
    assert hba.covers(HBA) and hba.covers(HBA.with_function(7))
    assert not hba.covers(NIC)
    assert config.passthrough == "default"
    assert config.passthrough_enabled is None
    assert config.passthrough_effective  # default + devices listed -> enabled
    assert config.get("maxvcpus") == "0x4"
    assert config.get("memory") == "2048"


def test_crlf_is_read_but_noted_because_xl_rejects_it() -> None:
    _, config = load("xl-crlf.cfg")
    assert any("CRLF" in note for note in config.notes)
    assert not config.passthrough_effective


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("guest.cfg", b"name = 'a'\n", GuestKind.XL),
        ("guest", b"name = 'a'\ntype = 'hvm'\n", GuestKind.XL),
        ("guest", b"name = 'a'\n  passthrough='enabled'\n", GuestKind.XL),
        ("guest", b"name = 'a'\nextra += ' quiet'\n", GuestKind.XL),
        ("guest", b"name = 'a'\nbuilder = 'hvm'\n", GuestKind.XM),
        ("guest", b"# type = 'hvm'\nname = 'a'\n", GuestKind.XM),
    ],
)
def test_guess_kind(name: str, data: bytes, kind: GuestKind) -> None:
    assert guess_kind(name, data) is kind


# --------------------------------------------------------------------------
# Adding and removing devices on the samples


@pytest.mark.parametrize("name", XEN_SAMPLES)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_add_then_remove_is_identity_and_touches_nothing_else(name: str, line_end: bytes) -> None:
    raw = (DATA / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", line_end)
    config = parse_xen_config(raw, name, guess_kind(name, raw))
    added = config.with_device_added(NEW)
    new_bytes = inserted(raw, added)
    assert b"0000:0b:00.0" in new_bytes
    assert b"\n" not in new_bytes.replace(line_end, b"")  # the file's own line ends
    again = reparse(config, added)
    assert addresses(again) == [*addresses(config), "0000:0b:00.0"]
    others = [k for k in config.setting_names() if k != "pci"]
    assert {k: again.get(k) for k in others} == {k: config.get(k) for k in others}
    assert again.with_device_removed(NEW) == raw


def test_created_pci_line_follows_the_document_quote_style() -> None:
    data, config = load("rhel5-pv-pygrub")  # double quotes throughout
    assert inserted(data, config.with_device_added(NEW)) == b'pci = [ "0000:0b:00.0" ]\n'
    xm = b"name='a'\nbootloader='/usr/bin/pygrub'\n"
    config = parse_xen_config(xm, "a", GuestKind.XM)
    assert inserted(xm, config.with_device_added(NEW)) == b"pci=[ '0000:0b:00.0' ]\n"
    # xl with no strings at all: xl.cfg's own double quotes.
    xl = b"memory = 512\n"
    config = parse_xen_config(xl, "a.cfg", GuestKind.XL)
    assert inserted(xl, config.with_device_added(NEW)) == b'pci = [ "0000:0b:00.0" ]\n'


def test_created_line_keeps_a_missing_final_newline_missing() -> None:
    data, config = load("xm-no-newline")
    added = config.with_device_added(NEW)
    assert added == data + b'\npci = [ "0000:0b:00.0" ]'
    assert reparse(config, added).with_device_removed(NEW) == data


def test_add_with_options_to_an_xl_list() -> None:
    data, config = load("xl-pv.cfg")
    added = config.with_device_added(NEW, {"permissive": "1", "msitranslate": "0"})
    assert inserted(data, added) == b', "0000:0b:00.0,permissive=1,msitranslate=0"'
    device = reparse(config, added).devices()[-1]
    assert device.options == (("permissive", "1"), ("msitranslate", "0"))


def test_add_to_a_list_written_one_entry_per_line() -> None:
    data, config = load("xl-messy.cfg")
    added = config.with_device_added(NEW)
    # A new line shaped like its siblings, after the last entry and its comment.
    assert inserted(data, added) == b"    '0000:0b:00.0',\n"
    assert b"# every function of the HBA\n    '0000:0b:00.0',\n]" in added


def test_add_keeps_xm_continuation_indent() -> None:
    data, config = load("xm-python-code")
    added = config.with_device_added(NEW)
    assert inserted(data, added) == b",\n        '0000:0b:00.0'"


def test_remove_an_entry_from_the_middle_of_a_line() -> None:
    data, config = load("xl-pv.cfg")
    removed = config.with_device_removed(NIC)
    assert removed == data.replace(b'"0000:09:00.0", ', b"")
    assert addresses(reparse(config, removed)) == ["0000:0a:04.1"]
    removed = config.with_device_removed(HBA)
    assert removed == data.replace(b', "0000:0a:04.1,permissive=1"', b"")


def test_remove_an_entry_on_its_own_line_takes_the_line_and_its_comment() -> None:
    data, config = load("xl-messy.cfg")
    removed = config.with_device_removed(NIC)
    assert removed == data.replace(b"    '0000:09:00.0@5', # NIC, fixed virtual slot\n", b"")


def test_removing_the_last_entry_of_a_created_style_line_removes_the_line() -> None:
    # "pci = [ 'X' ]" alone on its line is what pcipass writes; it goes whole.
    data, config = load("rhel5-hvm")
    removed = config.with_device_removed(NIC)
    assert removed == data.replace(b'pci = [ "0000:09:00.0" ]\n', b"")
    assert reparse(config, removed).devices() == []


def test_removing_the_last_entry_of_another_list_keeps_it_empty() -> None:
    for text, left in [
        (b"pci = ['09:00.0']\n", b"pci = []\n"),
        (b"pci = [ '09:00.0', ]\n", b"pci = [  ]\n"),
        (b"pci = [ '09:00.0' ] # the NIC\n", b"pci = [  ] # the NIC\n"),
        (b"pci = [\n  '09:00.0',\n]\n", b"pci = [\n]\n"),
    ]:
        config = parse_xen_config(text, "g", GuestKind.XM)
        assert config.with_device_removed(NIC) == left


def test_remove_of_a_device_not_listed_changes_nothing() -> None:
    data, config = load("xl-pv.cfg")
    assert config.with_device_removed(NEW) == data
    data, config = load("rhel5-pv-pygrub")
    assert config.with_device_removed(NEW) == data


def test_remove_refuses_one_function_of_a_wildcard_entry() -> None:
    _, config = load("xl-messy.cfg")
    with pytest.raises(UsageError) as caught:
        config.with_device_removed(HBA)
    assert "0000:0a:04.*" in caught.value.problem
    assert caught.value.subject == "/etc/xen/xl-messy.cfg:12"


def test_add_of_a_listed_device_is_idempotent_and_conflicts_are_refused() -> None:
    data, config = load("xl-pv.cfg")
    assert config.with_device_added(NIC) == data
    assert config.with_device_added(HBA, {"permissive": "1"}) == data
    with pytest.raises(UsageError, match="already assigned"):
        config.with_device_added(HBA, {"permissive": "0"})
    _, messy = load("xl-messy.cfg")
    assert messy.with_device_added(HBA.with_function(3)) == messy.data  # covered by 04.*


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ({"seize": "2"}, GuestKind.XL),
        ({"bogus": "1"}, GuestKind.XL),
        ({"name": "nic"}, GuestKind.XL),
        ({"permissive": "1"}, GuestKind.XM),  # xend knows msitranslate/power_mgmt only
        ({"permissive": "1'"}, GuestKind.XL),
    ],
)
def test_bad_device_options_are_refused(options: dict[str, str], kind: GuestKind) -> None:
    config = parse_xen_config(b"name = 'g'\n", "g", kind)
    with pytest.raises(UsageError):
        config.with_device_added(NEW, options)


def test_xm_options_are_written_as_xend_reads_them() -> None:
    data, config = load("rhel5-hvm")
    added = config.with_device_added(NEW, {"msitranslate": "1"})
    assert inserted(data, added) == b', "0000:0b:00.0,msitranslate=1"'


# --------------------------------------------------------------------------
# with_setting (passthrough = "enabled")


def test_with_setting_replaces_in_place_keeping_quotes() -> None:
    data, config = load("xl-messy.cfg")
    changed = config.with_setting("passthrough", "enabled")
    assert changed == data.replace(b'passthrough = "default"', b'passthrough = "enabled"')
    assert reparse(config, changed).passthrough_enabled is True


def test_with_setting_appends_in_document_style() -> None:
    data, config = load("xl-crlf.cfg")
    changed = config.with_setting("passthrough", "enabled")
    assert inserted(data, changed) == b'passthrough = "enabled"\r\n'
    data, config = load("xl-hvm.cfg")
    assert inserted(data, config.with_setting("pci_permissive", True)) == b"pci_permissive = 1\n"


def test_with_setting_refusals() -> None:
    _, config = load("xl-messy.cfg")
    with pytest.raises(UsageError):
        config.with_setting("passthrough", 'en"abled')
    with pytest.raises(UsageError):
        config.with_setting("Passthrough", "enabled")  # xl keys are lower case
    with pytest.raises(UsageError):
        config.with_setting("pci", "x")
    with pytest.raises(ConfigSyntaxError):
        config.with_setting("disk", "x")  # a list, not a scalar
    twice = parse_xen_config(b"passthrough='a'\npassthrough='b'\n", "t.cfg", GuestKind.XL)
    with pytest.raises(ConfigSyntaxError, match="2 times"):
        twice.with_setting("passthrough", "enabled")


# --------------------------------------------------------------------------
# Refusals: the file is left alone and the message names the line


@pytest.mark.parametrize(
    ("kind", "text", "line", "words"),
    [
        (GuestKind.XL, b"name = 'a'\nmemory = 512 + 2\n", 2, "Python"),
        (GuestKind.XL, b"name = 'a'\nimport os\n", 2, "expected '='"),
        (GuestKind.XL, b"name = 'a\n", 1, "unterminated"),
        (GuestKind.XL, b"pci = [ '09:00.0'\nname='x'\n", 2, "',' or ']'"),
        (GuestKind.XL, b"name = 'a'\npci = [ '09:00.0', '0000:0g:00.0' ]\n", 2, "0000:0g:00.0"),
        (GuestKind.XL, b"pci = [ '09:00.0,bogus=1' ]\n", 1, "unknown key"),
        (GuestKind.XL, b"pci = '09:00.0'\n", 1, "must be a list"),
        (GuestKind.XL, b"name = 'a\\q'\n", 1, "invalid escape"),
        (GuestKind.XM, b"name = 'a'\npci = [ ('09:00.0') ]\n", 2, "plain [list]"),
        (GuestKind.XM, b"pci = [ r'09:00.0' ]\n", 1, "plain [list]"),
        (GuestKind.XM, b"pci = [ '09:00.0,2-4' ]\n", 1, "function lists"),
        (GuestKind.XM, b"pci = ( '09:00.0', )\n", 1, "[list]"),
        (GuestKind.XM, b"name = 'a'\nmemory = = 3\n", 2, "not valid Python"),
        (GuestKind.XM, b"name = '\xff'\n", 1, "UTF-8"),
    ],
)
def test_refusals_name_the_line(kind: GuestKind, text: bytes, line: int, words: str) -> None:
    with pytest.raises(ConfigSyntaxError) as caught:
        parse_xen_config(text, "/etc/xen/g", kind)
    error = caught.value
    assert error.line == line, error.render()
    assert error.subject == f"/etc/xen/g:{line}"
    assert words in error.problem
    assert "untouched" in error.remedy


@pytest.mark.parametrize(
    ("kind", "text", "line", "read"),
    [
        (GuestKind.XL, b"name = 'a'\npci = ['09:00.0']\npci = ['0a:00.0']\n", 3, ["0a:00.0"]),
        (GuestKind.XL, b"pci = ['09:00.0']\npci += ['0a:00.0']\n", 2, ["09:00.0", "0a:00.0"]),
        (GuestKind.XM, b"pci = ['09:00.0']\n\npci = ['0a:00.0']\n", 3, ["0a:00.0"]),
    ],
)
def test_pci_set_twice_is_read_as_the_toolstack_reads_it_but_not_edited(
    kind: GuestKind, text: bytes, line: int, read: list[str]
) -> None:
    # Read (xl: "+=" appends; the last "=" wins) so PP101 sees every device
    # the guest takes; an edit would have to guess which line to change.
    config = parse_xen_config(text, "/etc/xen/g", kind)
    assert addresses(config) == [str(PciAddress.parse(a)) for a in read]
    for edit in (lambda: config.with_device_added(NEW), lambda: config.with_device_removed(NIC)):
        with pytest.raises(ConfigSyntaxError) as caught:
            edit()
        assert caught.value.subject == f"/etc/xen/g:{line}" and "2 times" in caught.value.problem


def test_xm_code_not_touching_pci_is_tolerated() -> None:
    text = b"import os\nmemory = 256 * 2\nfor i in range(2):\n    vcpus = i\npci = ['09:00.0']\n"
    config = parse_xen_config(text, "g", GuestKind.XM)
    assert addresses(config) == ["0000:09:00.0"]
    assert config.get("memory") is CODE  # not a literal: never evaluated
    assert len([n for n in config.notes if "Python code" in n]) == 3


def test_xl_grammar_details() -> None:
    text = (
        b'name="g\\x41\\tb"; memory=0x400\n'
        b"extra += ' quiet'\n"
        b"nested = [ [ 'a', 'b' ], 'c', ]\n"
        b"pci=[]\n"
        b"on_crash = 'destroy'"  # last line: no newline needed
    )
    config = parse_xen_config(text, "g.cfg", GuestKind.XL)
    assert config.name == "gA\tb"
    assert config.get("nested") == [["a", "b"], "c"]
    assert config.get("on_crash") == "destroy"
    added = config.with_device_added(NEW)
    assert inserted(text, added) == b"'0000:0b:00.0'"  # most strings use '
    assert reparse(config, added).with_device_removed(NEW) == text


def test_empty_multiline_list_gets_an_entry_line() -> None:
    text = b"pci = [\n]\nname = 'g'\n"
    config = parse_xen_config(text, "g.cfg", GuestKind.XL)
    added = config.with_device_added(NEW)
    assert added == b"pci = [\n    '0000:0b:00.0',\n]\nname = 'g'\n"
    assert reparse(config, added).with_device_removed(NEW) == text


def test_bom_and_comment_without_newline() -> None:
    xm = b"\xef\xbb\xbfname = 'g'\npci = ['09:00.0', '0a:04.1']\n"
    config = parse_xen_config(xm, "g", GuestKind.XM)
    assert config.with_device_removed(NIC) == xm.replace(b"'09:00.0', ", b"")
    xl = b"name = 'g'\n# last"
    config = parse_xen_config(xl, "g.cfg", GuestKind.XL)
    assert any("final newline" in note for note in config.notes)
    assert config.with_device_added(NEW) == xl + b"\npci = [ '0000:0b:00.0' ]"


def test_a_carriage_return_alone_ends_no_xl_line() -> None:
    # libxlu only knows \n: "#\r" is a comment running to the end of the file;
    # a new line after it would turn the \r into a CRLF, so pcipass refuses.
    config = parse_xen_config(b"name = 'g'\n#\r", "g.cfg", GuestKind.XL)
    with pytest.raises(ConfigSyntaxError, match="carriage return"):
        config.with_device_added(NEW)
    # For Python (xm) a lone \r does end a line.
    xm = b"name = 'g'\r"
    config = parse_xen_config(xm, "g", GuestKind.XM)
    assert config.with_device_added(NEW) == xm + b"pci = [ '0000:0b:00.0' ]\r"


# --------------------------------------------------------------------------
# Property tests

_SAFE_TEXT = st.text(alphabet="abcxyz019:,=/._- ", max_size=12)
_EXISTING = st.lists(
    st.builds(
        lambda bus, slot, fn: PciAddress(0, bus, slot, fn),
        st.integers(0, 10),
        st.integers(0, 31),
        st.integers(0, 7),
    ),
    max_size=4,
    unique=True,
)


@st.composite
def xen_documents(draw: st.DrawFn, kind: GuestKind) -> tuple[bytes, list[PciAddress]]:
    """Realistic files: assorted settings, comments, spacing, quote and line
    end styles, and maybe a pci list in one of the layouts people write."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    quote = draw(st.sampled_from(["'", '"']))
    equals = draw(st.sampled_from([" = ", "=", "  =\t", " ="]))
    keys = draw(
        st.lists(
            st.sampled_from(["memory", "vcpus", "disk", "vif", "extra", "on_crash", "vnc"]),
            max_size=5,
            unique=True,
        )
    )
    lines: list[str] = []
    for key in keys:
        if draw(st.booleans()):
            lines.append("# " + draw(_SAFE_TEXT))
        value = draw(
            st.one_of(
                st.integers(0, 9999).map(str),
                _SAFE_TEXT.map(lambda t: f"{quote}{t}{quote}"),
                st.lists(_SAFE_TEXT, max_size=3).map(
                    lambda ts: "[ " + ", ".join(f"{quote}{t}{quote}" for t in ts) + " ]"
                ),
            )
        )
        lines.append(f"{key}{equals}{value}")
    existing = draw(_EXISTING)
    if draw(st.booleans()) or existing:
        entries = [f"{quote}{a}{quote}" for a in existing]
        layout = draw(st.sampled_from(["inline", "per-line", "per-line-no-trailing", "comments"]))
        if layout == "inline":
            body = "[" + draw(st.sampled_from(["", " "])) + ", ".join(entries) + " ]"
        elif layout == "per-line":
            body = "[" + newline + "".join(f"    {e},{newline}" for e in entries) + "]"
        elif layout == "per-line-no-trailing":
            body = "[ " + f",{newline}      ".join(entries) + " ]"
        else:
            body = (
                "["
                + newline
                + "".join(f"  {e}, # card {i}{newline}" for i, e in enumerate(entries))
                + "]"
            )
        lines.insert(draw(st.integers(0, len(lines))), f"pci{equals}{body}")
    if kind is GuestKind.XM and draw(st.booleans()):
        lines.insert(0, "import os")
    text = newline.join(lines)
    final_newline = draw(st.booleans())
    if lines and final_newline:
        text += newline
    return text.encode(), existing


@pytest.mark.parametrize("kind", [GuestKind.XL, GuestKind.XM])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_documents_edit_exactly(kind: GuestKind, data: st.DataObject) -> None:
    text, existing = data.draw(xen_documents(kind))
    config = parse_xen_config(text, "g", kind)
    assert [d.address for d in config.devices()] == existing
    before = {k: config.get(k) for k in config.setting_names() if k != "pci"}

    added = config.with_device_added(NEW)
    inserted(text, added)
    grown = reparse(config, added)
    assert [d.address for d in grown.devices()] == [*existing, NEW]
    assert {k: grown.get(k) for k in grown.setting_names() if k != "pci"} == before
    assert grown.with_device_removed(NEW) == text

    for address in existing:
        removed = config.with_device_removed(address)
        inserted(removed, text)  # a pure deletion
        shrunk = reparse(config, removed)
        assert [d.address for d in shrunk.devices()] == [a for a in existing if a != address]
        assert {k: shrunk.get(k) for k in shrunk.setting_names() if k != "pci"} == before


_XEN_ALPHABET = "pci=[]'\",# \n\r\t0123456789abcdef:.;+x*@\\"


@pytest.mark.parametrize("kind", [GuestKind.XL, GuestKind.XM])
@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.binary(max_size=200), st.text(_XEN_ALPHABET, max_size=80).map(str.encode)))
def test_arbitrary_input_gives_a_result_or_a_usage_error(kind: GuestKind, text: bytes) -> None:
    try:
        config = parse_xen_config(text, "fuzz", kind)
    except UsageError:
        return
    try:
        added = config.with_device_added(NEW)
    except UsageError:
        return
    assert b"0000:0b:00.0" in inserted_after_a_comma(text, added)
    assert reparse(config, added).with_device_removed(NEW) == text


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(XEN_SAMPLES),
    position=st.floats(0, 1, exclude_max=True),
    replacement=st.sampled_from(
        [b"", b"[", b"]", b"'", b'"', b",", b"#", b"\n", b"=", b"(", b"\\"]
    ),
)
def test_perturbed_samples_give_a_result_or_a_usage_error(
    name: str, position: float, replacement: bytes
) -> None:
    data = (DATA / name).read_bytes()
    at = int(position * len(data))
    text = data[:at] + replacement + data[at + 1 :]
    try:
        config = parse_xen_config(text, name, guess_kind(name, data))
        added = config.with_device_added(NEW)
    except UsageError:
        return
    assert b"0000:0b:00.0" in inserted_after_a_comma(text, added)
    assert reparse(config, added).with_device_removed(NEW) == text


# --------------------------------------------------------------------------
# Comments stay with their entry in a one-entry-per-line list


@pytest.mark.parametrize("kind", [GuestKind.XL, GuestKind.XM])
@pytest.mark.parametrize("close", ["]", "    ]"])
def test_a_comment_after_the_last_entry_stays_with_it(kind: GuestKind, close: str) -> None:
    text = (
        f"name = 'g'\npci = [\n    '09:00.0',  # NIC\n    '0a:00.0'   # HBA\n{close}\nmemory = 1\n"
    ).encode()
    config = parse_xen_config(text, "g", kind)
    added = config.with_device_added(NEW)
    assert added == text.replace(
        b"    '0a:00.0'   # HBA\n", b"    '0a:00.0',   # HBA\n    '0000:0b:00.0'\n"
    )
    assert reparse(config, added).with_device_removed(NEW) == text
    removed = config.with_device_removed(PciAddress.parse("0a:00.0"))
    assert removed == text.replace(
        b"'09:00.0',  # NIC\n    '0a:00.0'   # HBA\n", b"'09:00.0'  # NIC\n"
    )
    assert addresses(parse_xen_config(removed, "g", kind)) == ["0000:09:00.0"]
    first_gone = config.with_device_removed(NIC)
    assert b"    '0a:00.0'   # HBA\n" in first_gone and b"NIC" not in first_gone


def test_crlf_one_entry_per_line_keeps_its_line_ends() -> None:
    text = b"name = 'g'\r\npci = [\r\n    '09:00.0'  # NIC\r\n]\r\n"
    config = parse_xen_config(text, "g", GuestKind.XM)
    added = config.with_device_added(NEW)
    assert added == b"name = 'g'\r\npci = [\r\n    '09:00.0',  # NIC\r\n    '0000:0b:00.0'\r\n]\r\n"
    assert reparse(config, added).with_device_removed(NEW) == text


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(XEN_SAMPLES),
    position=st.floats(0, 1, exclude_max=True),
    replacement=st.sampled_from([b"", b"\n", b"\r\n", b"#", b"'", b" ", b"\t"]),
)
def test_token_lines_are_the_lines_of_their_offsets(
    name: str, position: float, replacement: bytes
) -> None:
    """The xl tokenizer counts lines from its newline tokens; they must be the
    line numbers of the tokens' offsets, as ``Lines`` (the error messages') counts."""
    from pcipass.errors import ConfigSyntaxError
    from pcipass.guests.xen_text import XL_NEWLINE, Lines
    from pcipass.guests.xl_grammar import _tokenize_xl

    data = (DATA / name).read_bytes()
    at = int(position * len(data))
    text = data[:at] + replacement + data[at + 1 :]
    lines = Lines(text, XL_NEWLINE)
    try:
        tokens = _tokenize_xl(text, name, lines, [])
    except ConfigSyntaxError:
        return
    assert [t.line for t in tokens] == [lines.line_of(t.start) for t in tokens]
