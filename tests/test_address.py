from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcipass.address import (
    PciAddress,
    format_hide_list,
    parse_hide_list,
    parse_xl_spec,
)
from pcipass.errors import AddressError, ExitCode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0000:09:00.0", "0000:09:00.0"),
        ("09:00.0", "0000:09:00.0"),
        ("0000:0A:04.1", "0000:0a:04.1"),
        ("  0001:ff:1f.7 ", "0001:ff:1f.7"),
        ("a:4.1", "0000:0a:04.1"),
    ],
)
def test_parse_forms(text: str, expected: str) -> None:
    assert str(PciAddress.parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("0000:09:00", "missing '.function'"),
        ("0000:09:20.0", "above 0x1f"),
        ("0000:09:00.8", "function '8' must be 0..7"),
        ("00000:09:00.0", "more than 4 hex digits"),
        ("../../etc:00.0", "unexpected character"),
        ("0000:09:00.*", "wildcard"),
        ("0000:009:00.0", "at most 2 hex digits"),
        ("x" * 100, "far too long"),
    ],
)
def test_malformed_addresses_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(AddressError) as caught:
        PciAddress.parse(text)
    message = str(caught.value)
    assert problem in message
    assert "invalid PCI address" in message
    assert caught.value.exit_code == ExitCode.USAGE


def test_document_hide_list_round_trip() -> None:
    addresses = parse_hide_list("(0000:09:00.0)(0000:0a:04.1)")
    assert [str(a) for a in addresses] == ["0000:09:00.0", "0000:0a:04.1"]
    assert format_hide_list(addresses) == "(0000:09:00.0)(0000:0a:04.1)"


@pytest.mark.parametrize("text", ["(0000:09:00.0", "(0000:09:00.0)x", "()", "(0000:09:00.0)(bad)"])
def test_bad_hide_lists(text: str) -> None:
    with pytest.raises(AddressError):
        parse_hide_list(text)


def test_xl_spec_positional_and_keys_are_separate_fields() -> None:
    spec = parse_xl_spec("0a:04.1@6,permissive=1,rdm_policy=strict")
    assert spec.address is not None and str(spec.address) == "0000:0a:04.1"
    assert spec.vslot == 6
    assert spec.option("permissive") == "1"
    assert spec.option("rdm_policy") == "strict"
    assert spec.format() == "0000:0a:04.1@6,permissive=1,rdm_policy=strict"
    same = parse_xl_spec("bdf=0a:04.1,vslot=6,permissive=1,rdm_policy=strict")
    assert same == spec


def test_xl_spec_function_wildcard_matches_all_functions() -> None:
    spec = parse_xl_spec("0000:0a:04.*")
    assert spec.address is not None and spec.address.function is None
    assert spec.address.matches(PciAddress.parse("0a:04.1"))
    assert not spec.address.matches(PciAddress.parse("0a:05.1"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0a:04.1,bogus=1", "unknown key 'bogus'"),
        ("0a:04.1,permissive=yes", "permissive must be 0 or 1"),
        ("0a:04.1@40", "above 0x1f"),
        ("0a:04.1,name=nic", "exclude each other"),
        ("0a:04.1,permissive=1,permissive=0", "given twice"),
    ],
)
def test_xl_spec_errors(text: str, problem: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_xl_spec(text)
    assert problem in str(caught.value)


@settings(max_examples=400)
@given(st.text(max_size=40))
def test_parsers_never_raise_anything_but_address_errors(text: str) -> None:
    for parser in (PciAddress.parse, parse_hide_list, parse_xl_spec):
        with contextlib.suppress(AddressError):
            parser(text)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_format_parse_round_trip(domain: int, bus: int, slot: int, function: int) -> None:
    address = PciAddress(domain, bus, slot, function)
    assert PciAddress.parse(str(address)) == address
    assert parse_xl_spec(str(address)).address is not None
