"""--connect checks like files: PP101 over every domain of the connection,
no transient domain made persistent behind the user's back, --config and
--root refused, and a failed live step costing nothing.  On libvirt's test
driver with a custom node file (libvirt.org/drvtest.html): three domains,
one of them transient (``<test:transient/>``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import OperationFailed, RefusedError, UsageError
from pcipass.ops.hide import hide_now
from pcipass.ops.libvirt_conn import connect_attach
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

libvirt = pytest.importorskip("libvirt")

VF = PciAddress.parse("0000:02:10.0")

NODE = """<node>
  <domain type='test'>
    <name>web</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <hostdev mode='subsystem' type='pci' managed='no'>
        <source><address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/></source>
      </hostdev>
    </devices>
  </domain>
  <domain type='test'>
    <name>db</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>scratch</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <test:transient/>
  </domain>
</node>
"""


@pytest.fixture
def uri(tmp_path: Path) -> str:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    return f"test://{node}"


def ledger_state(lab: Lab) -> tuple[list[str], list[str]]:
    with Ledger.open(lab.host.root, readonly=True) as ledger:
        return (
            [f"{o.address}={o.guest}" for o in ledger.owners()],
            [e.kind for e in ledger.hotplug_events()],
        )


def test_the_node_file_has_a_transient_domain(uri: str) -> None:
    conn = libvirt.open(uri)
    try:
        kinds = {d.name(): bool(d.isPersistent()) for d in conn.listAllDomains(0)}
    finally:
        conn.close()
    assert kinds == {"web": True, "db": True, "scratch": False}


def test_pp101_looks_at_every_domain_of_the_connection(kvm: Lab, uri: str) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    before = (snapshot(kvm.base), ledger_state(kvm))
    with pytest.raises(RefusedError) as caught:
        connect_attach(kvm.host, VF, "db", uri, action="attach")
    assert caught.value.rule == "PP101"
    assert "is listed by guest web" in caught.value.problem
    assert f"{uri} domain web" in caught.value.problem
    assert (snapshot(kvm.base), ledger_state(kvm)) == before


def test_attach_without_live_to_a_transient_domain_is_refused(kvm: Lab, uri: str) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    before = (snapshot(kvm.base), ledger_state(kvm))
    with pytest.raises(RefusedError) as caught:
        connect_attach(kvm.host, VF, "scratch", uri, action="attach")
    assert "transient domain" in caught.value.problem
    assert "would make it persistent" in caught.value.problem
    assert "--live" in caught.value.remedy
    assert (snapshot(kvm.base), ledger_state(kvm)) == before


@pytest.fixture
def free_uri(tmp_path: Path) -> str:
    """The same node, with web holding no device."""
    node = tmp_path / "free.xml"
    start = NODE.index("    <devices>")
    node.write_text(NODE[:start] + NODE[NODE.index("</devices>") + len("</devices>\n") :])
    return f"test://{node}"


def test_a_live_step_libvirt_refuses_costs_nothing_and_claims_nothing(
    kvm: Lab, free_uri: str
) -> None:
    uri = free_uri
    hide_now(kvm.host, [VF], Backend.VFIO)
    for _ in range(40):  # past the PP007 budget of 32: none of them happened
        with pytest.raises(OperationFailed, match="not supported by the connection driver"):
            connect_attach(kvm.host, VF, "scratch", uri, action="attach", live=True)
    assert ledger_state(kvm) == ([], [])


def test_config_with_connect_is_a_usage_error(
    kvm: Lab, uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.mark_simulated()
    code = main(
        ["--root", str(kvm.base), "attach", str(VF), "db", "--connect", uri, "--config", "/x"]
    )
    assert code == 2
    assert "give one of them" in capsys.readouterr().err


def test_connect_under_root_is_refused_before_connecting(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm.fake.mark_simulated()
    hide_now(kvm.host, [VF], Backend.VFIO)
    before = (snapshot(kvm.base), ledger_state(kvm))
    code = main(["--root", str(kvm.base), "attach", str(VF), "db", "--connect", "qemu:///system"])
    assert code == 2
    err = capsys.readouterr().err
    assert "reaches the libvirt of the machine pcipass runs on" in err
    assert (snapshot(kvm.base), ledger_state(kvm)) == before
    with pytest.raises(UsageError):
        connect_attach(kvm.host, VF, "db", "qemu+ssh://elsewhere/system", action="attach")


class LiveDomain:
    """A test-driver domain that also takes live hotplugs (the test driver
    itself has no virDomainAttachDeviceFlags): what it holds is the truth."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.live: set[str] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def attachDeviceFlags(self, xml: str, flags: int) -> int:
        self.live.add(xml)
        return 0

    def detachDeviceFlags(self, xml: str, flags: int) -> int:
        self.live.discard(xml)
        return 0

    def XMLDesc(self, flags: int) -> str:
        text = str(self.real.XMLDesc(flags))  # type: ignore[attr-defined]
        if flags == 0 and self.live:
            text = text.replace("</devices>", "".join(self.live) + "</devices>")
        return text


class FailingDefine:
    """The connection of the test driver, with defineXML failing (a full
    disk under /etc/libvirt, say) and domains that take live hotplugs."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.domains: dict[str, LiveDomain] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def lookupByName(self, name: str) -> LiveDomain:
        if name not in self.domains:
            self.domains[name] = LiveDomain(self.real.lookupByName(name))  # type: ignore[attr-defined]
        return self.domains[name]

    def defineXML(self, xml: str) -> object:
        raise libvirt.libvirtError("cannot write db.xml: No space left")


def test_failed_define_after_a_live_attach_undoes_the_live_attach(
    kvm: Lab, free_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = free_uri
    import pcipass.ops.libvirt_conn as libvirt_conn

    conn = FailingDefine(libvirt.open(uri))
    monkeypatch.setattr(libvirt_conn, "_open", lambda _uri: (libvirt, conn))
    address = PciAddress.parse("0000:02:10.0")
    hide_now(kvm.host, [address], Backend.VFIO)
    with pytest.raises(OperationFailed) as caught:
        connect_attach(kvm.host, address, "db", uri, action="attach", live=True)
    assert "No space left" in caught.value.problem
    assert "the live attach was undone" in caught.value.remedy
    assert conn.domains["db"].live == set()  # the running domain is as before
    owners, events = ledger_state(kvm)
    assert owners == []  # ledger == the running domain's truth
    assert events == ["attach", "detach"]  # both hotplugs happened


def test_pp101_also_sees_guest_files_of_this_host(kvm: Lab, free_uri: str) -> None:
    from pcipass.ops.attach import attach

    hide_now(kvm.host, [VF], Backend.VFIO)
    attach(kvm.host, VF, "win10")  # a file lists it now ...
    with Ledger.open(kvm.host.root) as ledger:
        ledger.release(VF, "win10")  # ... even with no owner in the ledger
    before = (snapshot(kvm.base), ledger_state(kvm))
    with pytest.raises(RefusedError) as caught:
        connect_attach(kvm.host, VF, "db", free_uri, action="attach")
    assert caught.value.rule == "PP101"
    assert "is listed by guest win10" in caught.value.problem
    assert (snapshot(kvm.base), ledger_state(kvm)) == before
