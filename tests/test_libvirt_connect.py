"""attach/detach --connect URI through libvirt-python, against libvirt's own
test:///default driver (a real libvirt, in process, with its own validation)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed, RefusedError
from pcipass.ops.hide import hide_now
from pcipass.ops.libvirt_conn import connect_attach
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
VF = PciAddress.parse("0000:02:10.0")
HOSTDEV = "<address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/>"


@pytest.fixture(autouse=True)
def held_connection() -> Iterator[object]:
    """test:///default keeps its state while a connection is open: hold one, as
    a running libvirtd would hold its domains between pcipass runs."""
    conn = libvirt.open(URI)
    yield conn
    conn.close()


def definition() -> str:
    conn = libvirt.open(URI)
    try:
        return str(conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()


def test_attach_and_detach_through_libvirt(kvm: Lab) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    result = connect_attach(kvm.host, VF, "test", URI, action="attach")
    assert "+    <hostdev mode='subsystem' type='pci' managed='no'>" in result.diff
    assert HOSTDEV in definition()  # libvirt accepted and holds the edited definition
    ledger = Ledger.open(kvm.host.root, readonly=True)
    owner = ledger.owner(VF)
    assert owner is not None and (owner.guest, owner.config_path) == ("test", URI)
    ledger.close()
    connect_attach(kvm.host, VF, "test", URI, action="detach")
    assert HOSTDEV not in definition()


def test_live_attach_reports_libvirts_own_refusal(kvm: Lab) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    before = definition()
    with pytest.raises(OperationFailed) as caught:
        connect_attach(kvm.host, VF, "test", URI, action="attach", live=True)
    assert "not supported by the connection driver" in str(caught.value)
    assert definition() == before


def test_a_device_still_on_its_host_driver_is_refused_and_libvirt_untouched(kvm: Lab) -> None:
    before, tree = definition(), snapshot(kvm.base)
    with pytest.raises(RefusedError) as caught:
        connect_attach(kvm.host, VF, "test", URI, action="attach")
    assert caught.value.rule == "PP002"
    assert definition() == before and snapshot(kvm.base) == tree


def test_unknown_domain_is_not_found(kvm: Lab) -> None:
    from pcipass.errors import GuestNotFoundError

    with pytest.raises(GuestNotFoundError) as caught:
        connect_attach(kvm.host, VF, "nosuchguest", URI, action="attach")
    assert "test:///default" in str(caught.value)
