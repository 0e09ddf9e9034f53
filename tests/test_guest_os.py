"""Guest OS detection: --guest-os text, PV kernel paths, libosinfo ids (rules PP005/PP006)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcipass.errors import UsageError
from pcipass.guests.guest_os import os_from_kernel_path, os_from_libosinfo_id, parse_os_text
from pcipass.guests.model import GuestOs


@pytest.mark.parametrize(
    ("text", "family", "version"),
    [
        ("rhel6", "rhel", "6"),
        ("RHEL 5.4", "rhel", "5.4"),
        ("rhel-6.10", "rhel", "6.10"),
        ("Red Hat Enterprise Linux 6", "rhel", "6"),
        ("centos6.10", "centos", "6.10"),
        ("CentOS 7", "centos", "7"),
        ("centos-stream9", "centos", "9"),
        ("fedora38", "fedora", "38"),
        ("fc20", "fedora", "20"),
        ("debian12", "debian", "12"),
        ("ubuntu22.04", "ubuntu", "22.04"),
        ("sles15", "sles", "15"),
        ("sles12sp5", "sles", "12.5"),
        ("oel6", "oracle", "6"),
        ("win10", "windows", "10"),
        ("win2k8r2", "windows", "2k8r2"),
        ("Windows 10", "windows", "10"),
        ("rhel", "rhel", None),
        ("unknown", "unknown", None),
    ],
)
def test_parse_os_text(text: str, family: str, version: str | None) -> None:
    result = parse_os_text(text)
    assert (result.family, result.version) == (family, version)
    assert text.strip() in result.source


@pytest.mark.parametrize("text", ["", "solaris-ish thing 5", "rhel6.x", "beos5", "6"])
def test_parse_os_text_refuses_what_it_cannot_name(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_os_text(text)
    assert "guest OS" in caught.value.subject


@pytest.mark.parametrize(
    ("path", "family", "version"),
    [
        # The document's era: RHEL 5 xen kernels; build 164 is RHEL 5.4.
        ("/boot/vmlinuz-2.6.18-164.el5xen", "rhel", "5.4"),
        ("/boot/vmlinuz-2.6.18-128.1.10.el5xen", "rhel", "5.3"),
        ("/boot/vmlinuz-2.6.18-8.el5xen", "rhel", "5.0"),
        ("/boot/vmlinuz-2.6.18-419.el5", "rhel", "5.11"),
        ("/var/lib/xen/boot/vmlinuz-2.6.32-431.el6.x86_64", "rhel", "6.5"),
        ("vmlinuz-2.6.32-754.35.1.el6.x86_64", "rhel", "6.10"),
        ("/boot/vmlinuz-2.6.32-71.el6.i686", "rhel", "6.0"),
        ("/boot/vmlinuz-3.10.0-1160.el7.x86_64", "rhel", "7"),
        ("/boot/vmlinuz-4.18.0-425.3.1.el8_7.x86_64", "rhel", "8"),
        ("/boot/vmlinuz-6.2.9-300.fc38.x86_64", "fedora", "38"),
        ("/boot/vmlinuz-6.1.0-18-amd64", "unknown", None),
        ("/usr/lib/xen/boot/hvmloader", "unknown", None),
        ("", "unknown", None),
    ],
)
def test_os_from_kernel_path(path: str, family: str, version: str | None) -> None:
    result = os_from_kernel_path(path)
    assert (result.family, result.version) == (family, version)
    assert path in result.source


@pytest.mark.parametrize(
    ("url", "family", "version"),
    [
        ("http://redhat.com/rhel/6.10", "rhel", "6.10"),
        ("http://redhat.com/rhel/5.4", "rhel", "5.4"),
        ("http://centos.org/centos/7.0", "centos", "7.0"),
        ("http://fedoraproject.org/fedora/38", "fedora", "38"),
        ("http://debian.org/debian/12", "debian", "12"),
        ("http://ubuntu.com/ubuntu/22.04", "ubuntu", "22.04"),
        ("http://microsoft.com/win/10", "windows", "10"),
        ("http://freebsd.org/freebsd/13.2", "freebsd", "13.2"),
        ("http://archlinux.org/archlinux/rolling", "archlinux", None),
        ("not a url", "unknown", None),
    ],
)
def test_os_from_libosinfo_id(url: str, family: str, version: str | None) -> None:
    result = os_from_libosinfo_id(url)
    assert (result.family, result.version) == (family, version)


def test_is_rhel_counts_rebuilds_unless_asked_not_to() -> None:
    centos6 = GuestOs("centos", "6.10", "test")
    assert centos6.is_rhel(6)
    assert centos6.is_rhel()
    assert not centos6.is_rhel(5)
    assert not centos6.is_rhel(6, rebuilds=False)
    assert not GuestOs("fedora", "6", "test").is_rhel(6)
    assert not GuestOs.unknown("nothing").is_rhel()


@pytest.mark.parametrize(
    ("version", "expected"),
    [("5.4", True), ("5.11", True), ("5.3", False), ("6", True), ("4.8", False), ("5", None)],
)
def test_at_least_rhel_5_4(version: str, expected: bool | None) -> None:
    assert GuestOs("rhel", version, "test").at_least(5, 4) is expected


def test_unknown_version_is_not_guessed() -> None:
    assert GuestOs("rhel", None, "test").at_least(5, 4) is None
    assert GuestOs("rhel", None, "test").major is None
    assert str(GuestOs("rhel", "6.5", "x")) == "rhel 6.5"
    assert str(GuestOs.unknown("x")) == "unknown OS"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parsers_never_raise_anything_but_usage_errors(text: str) -> None:
    try:
        result = parse_os_text(text)
    except UsageError:
        pass
    else:
        assert isinstance(result, GuestOs)
    assert isinstance(os_from_kernel_path(text), GuestOs)
    assert isinstance(os_from_libosinfo_id(text), GuestOs)
