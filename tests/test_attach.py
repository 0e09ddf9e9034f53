"""attach/detach on fake hosts: the document's example, every guest rule firing
and staying quiet, live hotplug through the toolstacks, PP007, rollback, and
libvirt output checked by libvirt's own schema (virt-xml-validate)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.errors import (
    GuestNotFoundError,
    OperationFailed,
    RefusedError,
    UsageError,
)
from pcipass.guests.guest_os import parse_os_text
from pcipass.guests.toolstack import XenCli
from pcipass.ops.attach import XC_ASSIGN_REFUSAL, attach, detach
from pcipass.ops.guests import scan_guests
from pcipass.ops.hide import hide_now
from pcipass.runner import CommandResult
from pcipass.state.ledger import Ledger
from pcipass.state.limiter import DEFAULT_BUDGET, HotplugLimiter
from pcipass.testing.fakehost import FakeRunner, snapshot
from pcipass.testing.harness import Lab

A = PciAddress.parse
NIC = A("0000:09:00.0")  # the document's bnx2 NIC
VF = A("0000:02:10.0")  # an igbvf VF alone in its group on the KVM host
RHEL5PV = "/etc/xen/rhel5pv"
DOC_PV_WORDS = "the potential to access the DMA address space of dom0"


def owner(lab: Lab, address: PciAddress) -> str | None:
    ledger = Ledger.open(lab.host.root, readonly=True)
    try:
        record = ledger.owner(address)
        return None if record is None else record.guest
    finally:
        ledger.close()


def read(lab: Lab, absolute: str) -> bytes:
    return lab.host.root.path(absolute).read_bytes()


def hidden_nic(lab: Lab) -> Lab:
    hide_now(lab.host, [NIC], Backend.PCIBACK)
    return lab


def refused(call: object, *args: object, **kwargs: object) -> RefusedError:
    assert callable(call)
    with pytest.raises(RefusedError) as caught:
        call(*args, **kwargs)
    return caught.value


def rules_of(error: RefusedError) -> list[str]:
    return [getattr(f, "rule", "") for f in error.findings]


XL_HVM = 'name = "win7"\ntype = "hvm"\nmemory = 2048\ndisk = [ "phy:/dev/vg0/win7,hda,w" ]\n'
XL_PV = 'name = "deb"\ntype = "pv"\nkernel = "/boot/vmlinuz-6.1.0-18-amd64"\nmemory = 512\n'


# --- the document's example --------------------------------------------------


def test_rhel5_example_attach_writes_pci_and_detach_restores_every_byte(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    original = read(rhel5, RHEL5PV)
    result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    after = read(rhel5, RHEL5PV)
    assert after == original + b"pci = [ '0000:09:00.0' ]\n"
    assert result.changed and "+pci = [ '0000:09:00.0' ]" in result.diff
    assert owner(rhel5, NIC) == "rhel5pv"
    # PP004 is still shown as a warning when the risk is accepted.
    assert [(f.rule, str(f.severity)) for f in result.findings if f.rule == "PP004"] == [
        ("PP004", "warn")
    ]
    detach(rhel5.host, NIC, "rhel5pv")
    assert read(rhel5, RHEL5PV) == original
    assert owner(rhel5, NIC) is None
    ledger = Ledger.open(rhel5.host.root, readonly=True)
    assert ledger.open_operations() == []
    ledger.close()


def test_attach_twice_is_idempotent_and_keeps_one_entry(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    once = read(rhel5, RHEL5PV)
    result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert not result.changed and read(rhel5, RHEL5PV) == once
    assert once.count(b"0000:09:00.0") == 1


def test_dry_run_shows_the_diff_and_changes_nothing(rhel5: Lab) -> None:
    before = snapshot(rhel5.base, skip=())
    result = attach(rhel5.host, NIC, "rhel5pv", hide=True, accept_pv_dma_risk=True, dry_run=True)
    assert "+pci = [ '0000:09:00.0' ]" in result.diff
    assert result.hide is not None and result.hide["steps"]
    assert snapshot(rhel5.base, skip=()) == before
    assert "dry run: nothing was changed" in result.render_lines()


# --- PP002 ---------------------------------------------------------------------


def test_pp002_refuses_a_device_the_host_still_drives(rhel5: Lab) -> None:
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert error.rule == "PP002"
    assert "must first be hidden from the host" in error.problem
    assert "driver bnx2" in error.problem and "pcipass hide" in error.remedy
    assert snapshot(rhel5.base) == before
    assert owner(rhel5, NIC) is None


def test_pp002_hide_option_hides_through_pciback_then_attaches(rhel5: Lab) -> None:
    result = attach(rhel5.host, NIC, "rhel5pv", hide=True, accept_pv_dma_risk=True)
    assert rhel5.fake.bound_driver(str(NIC)) == "pciback"
    assert ("/sys/bus/pci/drivers/pciback/new_slot", str(NIC)) in rhel5.kernel.writes
    assert result.hide is not None
    assert b"'0000:09:00.0'" in read(rhel5, RHEL5PV)


def test_pp002_quiet_when_recorded_hidden_only_warns(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    # Bound back to bnx2 behind pcipass's back: the ledger still says hidden
    # (persistently), so attach goes on with a warning, not a refusal.
    rhel5.fake.unbind(str(NIC))
    rhel5.fake.bind(str(NIC), "bnx2")
    result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    warnings = [f for f in result.findings if f.rule == "PP002"]
    assert len(warnings) == 1 and str(warnings[0].severity) == "warn"
    assert "recorded hidden on pciback" in warnings[0].message


def test_pp002_wrong_stub_for_the_hypervisor_is_refused(kvm: Lab) -> None:
    # A Xen config on a KVM host: vfio-pci cannot serve it.
    hide_now(kvm.host, [VF], Backend.VFIO)
    kvm.fake.write_file("/etc/xen/deb.cfg", XL_PV)
    before = snapshot(kvm.base)
    error = refused(attach, kvm.host, VF, "deb", hide=True, accept_pv_dma_risk=True)
    assert error.rule == "PP002"
    assert "bound to vfio-pci" in error.render() and "only from pciback" in error.render()
    assert snapshot(kvm.base) == before


# --- PP101 -----------------------------------------------------------------------


def test_pp101_second_guest_is_refused_by_the_ledger(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    rhel5.fake.write_file("/etc/xen/other", 'name = "other"\nbootloader = "/usr/bin/pygrub"\n')
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "other", accept_pv_dma_risk=True)
    assert error.rule == "PP101"
    assert "assigned to guest rhel5pv" in error.render()
    assert "pcipass detach 0000:09:00.0 rhel5pv" in error.render()
    assert snapshot(rhel5.base) == before
    assert owner(rhel5, NIC) == "rhel5pv"


def test_pp101_another_guests_config_counts_without_the_ledger(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file(
        "/etc/xen/hand.cfg", 'name = "hand"\ntype = "hvm"\npci = [ "09:00.0,permissive=1" ]\n'
    )
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert error.rule == "PP101"
    assert "listed by guest hand in /etc/xen/hand.cfg" in error.render()
    assert snapshot(rhel5.base) == before


def test_pp101_unreadable_configs_are_reported_not_fatal(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/broken.cfg", "pci = [ 'unterminated\n")
    rhel5.fake.write_file("/etc/xen/xmexample1", "import os\npci = []\n")  # examples skipped
    scan = scan_guests(rhel5.host)
    assert [g.guest_name for g in scan.guests] == ["rhel5pv"]
    assert len(scan.problems) == 1 and "/etc/xen/broken.cfg" in scan.problems[0]
    result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert any("not checked for PP101" in n and "broken.cfg" in n for n in result.notes)


def test_pp101_detach_for_the_wrong_guest_is_refused(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    rhel5.fake.write_file("/etc/xen/other", 'name = "other"\nbootloader = "/usr/bin/pygrub"\n')
    before = snapshot(rhel5.base)
    error = refused(detach, rhel5.host, NIC, "other")
    assert error.rule == "PP101" and "assigned to guest rhel5pv, not other" in error.render()
    assert snapshot(rhel5.base) == before


# --- PP004 / PP005 ----------------------------------------------------------------


def test_pp004_pv_refused_without_acceptance_with_the_documents_words(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "rhel5pv")
    assert error.rule == "PP004"
    assert DOC_PV_WORDS in error.problem and "--accept-pv-dma-risk" in error.remedy
    assert snapshot(rhel5.base) == before


def test_pp004_pp005_quiet_for_hvm(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    answer_xl_info(rhel5, "hvm hvm_directio pv pv_directio")
    result = attach(rhel5.host, NIC, "win7")
    assert not [f for f in result.findings if f.rule in ("PP004", "PP005", "PP006")]


@pytest.mark.parametrize(
    ("kernel", "guest_os", "source"),
    [
        ("/boot/vmlinuz-2.6.32-431.el6.x86_64", None, "kernel /boot/vmlinuz-2.6.32-431.el6"),
        ("/boot/vmlinuz-custom", "rhel6", "given as 'rhel6'"),
        ("/boot/vmlinuz-custom", "centos6.10", "given as 'centos6.10'"),
    ],
)
def test_pp005_rhel6_pv_guest_is_refused_naming_how_the_os_was_found(
    rhel5: Lab, kernel: str, guest_os: str | None, source: str
) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/r6", f'name = "r6"\nkernel = "{kernel}"\nmemory = 512\n')
    before = snapshot(rhel5.base)
    os_ = parse_os_text(guest_os) if guest_os else None
    error = refused(attach, rhel5.host, NIC, "r6", accept_pv_dma_risk=True, guest_os=os_)
    assert error.rule == "PP005"
    assert "not supported for Red Hat Enterprise Linux 6 guests" in error.problem
    assert source in error.problem
    assert snapshot(rhel5.base) == before


def test_pp005_quiet_for_a_rhel5_pv_guest(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file(
        "/etc/xen/r5", 'name = "r5"\nkernel = "/boot/vmlinuz-2.6.18-164.el5xen"\n'
    )
    result = attach(rhel5.host, NIC, "r5", accept_pv_dma_risk=True)
    assert not [f for f in result.findings if f.rule == "PP005"]
    # --guest-os overrides what the config says, both ways.
    detach(rhel5.host, NIC, "r5")
    error = refused(
        attach, rhel5.host, NIC, "r5", accept_pv_dma_risk=True, guest_os=parse_os_text("rhel6")
    )
    assert error.rule == "PP005"


# --- PP006 -------------------------------------------------------------------------


def answer_xl_info(lab: Lab, caps: str) -> None:
    lab.runner.programs.add("xl")
    lab.runner.answers["xl info"] = CommandResult(
        ("xl", "info"), 0, f"host : dom0\nvirt_caps              : {caps}\n", ""
    )


def test_pp006_hvm_without_an_iommu_names_the_missing_piece(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "win7")
    assert error.rule == "PP006"
    assert "needs an active IOMMU" in error.problem
    assert "neither xl nor xm could be run" in error.problem
    answer_xl_info(rhel5, "hvm pv")
    error = refused(attach, rhel5.host, NIC, "win7")
    assert error.rule == "PP006" and "virt_caps: hvm pv" in error.problem
    assert snapshot(rhel5.base) == before


def test_pp006_rhel5_before_5_4_refuses_hvm(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    rhel5.fake.write_file(
        "/etc/redhat-release", "Red Hat Enterprise Linux Server release 5.3 (Tikanga)\n"
    )
    answer_xl_info(rhel5, "hvm hvm_directio")
    error = refused(attach, rhel5.host, NIC, "win7")
    assert error.rule == "PP006"
    assert "release 5.3" in error.problem and "5.4 and newer" in error.problem


def test_pp006_xen_dmesg_is_the_fallback_on_old_xen(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    rhel5.runner.programs.add("xm")
    rhel5.runner.answers["xm dmesg"] = CommandResult(
        ("xm", "dmesg"), 0, "(XEN) Intel VT-d ...\n(XEN) I/O virtualisation enabled\n", ""
    )
    result = attach(rhel5.host, NIC, "win7")
    assert result.changed
    assert ("xm", "info") in rhel5.runner.calls


def test_pp006_current_xen_without_pv_directio_refuses_pv_too(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    answer_xl_info(rhel5, "hvm pv")
    error = refused(attach, rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert error.rule == "PP006" and "passthrough not supported on this platform" in error.problem


def test_pp006_kvm_without_iommu_groups_is_refused_and_quiet_with_them(kvm: Lab) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    result = attach(kvm.host, VF, "win10", dry_run=True)
    assert not [f for f in result.findings if f.rule == "PP006"]
    shutil.rmtree(kvm.host.root.path("/sys/class/iommu"))
    groups = kvm.host.root.path("/sys/kernel/iommu_groups")
    shutil.rmtree(groups)
    groups.mkdir()
    error = refused(attach, kvm.host, VF, "win10")
    assert error.rule == "PP006"
    assert "no /sys/class/iommu entries and no /sys/kernel/iommu_groups" in error.problem


# --- xl and live hotplug ------------------------------------------------------------


def test_xl_attach_sets_passthrough_enabled_and_the_last_detach_removes_it(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    answer_xl_info(rhel5, "hvm hvm_directio")
    attach(rhel5.host, NIC, "win7")
    text = read(rhel5, "/etc/xen/win7.cfg").decode()
    assert text == XL_HVM + (
        'pci = [ "0000:09:00.0" ]\n'
        'passthrough = "enabled"  # added by pcipass attach; its last detach removes it\n'
    )
    detach(rhel5.host, NIC, "win7")
    # pcipass added it, so attach + detach gives the file back byte for byte.
    assert read(rhel5, "/etc/xen/win7.cfg").decode() == XL_HVM


@pytest.mark.parametrize(
    "own", ['passthrough = "enabled"\n', "passthrough='enabled' # mine, keep it\n"]
)
def test_xl_detach_keeps_a_passthrough_the_administrator_wrote(rhel5: Lab, own: str) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM + own)
    answer_xl_info(rhel5, "hvm hvm_directio")
    attach(rhel5.host, NIC, "win7")
    detach(rhel5.host, NIC, "win7")
    assert read(rhel5, "/etc/xen/win7.cfg").decode() == XL_HVM + own


def test_live_xl_attach_warns_plainly_when_xen_will_refuse(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    answer_xl_info(rhel5, "hvm hvm_directio")
    result = attach(rhel5.host, NIC, "win7", live=True)
    assert ("xl", "pci-attach", "win7", "0000:09:00.0") in rhel5.runner.calls
    assert any(XC_ASSIGN_REFUSAL in n and "passthrough" in n for n in result.notes)
    detach(rhel5.host, NIC, "win7", live=True)
    assert ("xl", "pci-detach", "win7", "0000:09:00.0") in rhel5.runner.calls
    # The last detach took pcipass's passthrough line away with the device:
    # the file is as it was, so the next live attach warns again.
    assert read(rhel5, "/etc/xen/win7.cfg").decode() == XL_HVM
    again = attach(rhel5.host, NIC, "win7", live=True)
    assert any(XC_ASSIGN_REFUSAL in n for n in again.notes)
    # With passthrough written by the administrator: no warning.
    detach(rhel5.host, NIC, "win7", live=True)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM + 'passthrough = "enabled"\n')
    third = attach(rhel5.host, NIC, "win7", live=True)
    assert not any(XC_ASSIGN_REFUSAL in n for n in third.notes)


def test_live_xm_uses_xm_pci_attach(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.runner.programs.add("xm")
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    assert ("xm", "pci-attach", "rhel5pv", "0000:09:00.0") in rhel5.runner.calls


def test_live_failure_shows_stderr_and_rolls_everything_back(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM)
    answer_xl_info(rhel5, "hvm hvm_directio")
    stderr = (
        "libxl: error: libxl_pci.c:1529:pci_add_dm_done: Domain 5:xc_assign_device failed: "
        "Operation not supported\nlibxl: error: libxl_pci.c:1837:device_pci_add_done: "
        "Domain 5:libxl__device_pci_add failed for PCI device 0:9:0.0 (rc -3)\n"
    )
    rhel5.runner.answers["xl pci-attach"] = CommandResult(("xl",), 1, "", stderr)
    before = snapshot(rhel5.base)
    with pytest.raises(OperationFailed) as caught:
        attach(rhel5.host, NIC, "win7", live=True)
    text = caught.value.render()
    assert "xc_assign_device failed: Operation not supported" in text
    assert "libxl__device_pci_add failed" in text  # the whole stderr, not the last line only
    assert "rolled back" in text and 'passthrough="enabled"' in text
    assert snapshot(rhel5.base) == before
    assert owner(rhel5, NIC) is None
    ledger = Ledger.open(rhel5.host.root, readonly=True)
    assert ledger.open_operations() == []
    ledger.close()


def test_pp007_limiter_refuses_live_attach_and_changes_nothing(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.runner.programs.add("xm")
    ledger = Ledger.open(rhel5.host.root, clock=rhel5.host.clock)
    limiter = HotplugLimiter(ledger)
    for _ in range(DEFAULT_BUDGET):
        limiter.acquire(NIC, "rhel5pv", "attach")
    ledger.close()
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    assert error.rule == "PP007" and "the next one is allowed at" in error.problem
    assert snapshot(rhel5.base) == before
    assert not [c for c in rhel5.runner.calls if c[:2] == ("xm", "pci-attach")]
    assert owner(rhel5, NIC) is None
    # Quiet once the window has passed.
    rhel5.tick(601)
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    assert ("xm", "pci-attach", "rhel5pv", "0000:09:00.0") in rhel5.runner.calls


def test_live_detach_failure_leaves_config_and_owner(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.runner.programs.add("xm")
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    rhel5.runner.toolstack.running["rhel5pv"] = {str(NIC)}  # it runs with the device
    rhel5.runner.answers["xm pci-detach"] = CommandResult(("xm",), 1, "", "Error: busy\n")
    before = snapshot(rhel5.base)
    with pytest.raises(OperationFailed, match="Error: busy"):
        detach(rhel5.host, NIC, "rhel5pv", live=True)
    assert snapshot(rhel5.base) == before and owner(rhel5, NIC) == "rhel5pv"


# --- libvirt ---------------------------------------------------------------------------


class CapturingRunner(FakeRunner):
    """Keeps the content of files named on virsh's command line."""

    def __init__(self, inner: FakeRunner) -> None:
        super().__init__(inner.kernel)
        self.programs = inner.programs | {"virsh"}
        self.files: list[str] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        if "attach-device" in argv or "detach-device" in argv:
            for part in argv:
                if str(part).endswith(".xml") and Path(part).is_file():
                    self.files.append(Path(part).read_text())
        return super().run(argv, stdin=stdin, env=env, timeout=timeout)


VALIDATE = shutil.which("virt-xml-validate")


@pytest.mark.needs_tool
@pytest.mark.skipif(VALIDATE is None, reason="virt-xml-validate (libvirt-clients) not installed")
def test_libvirt_attach_output_validates_against_libvirts_schema(kvm: Lab) -> None:
    assert VALIDATE is not None
    hide_now(kvm.host, [VF], Backend.VFIO)
    original = read(kvm, "/etc/libvirt/qemu/win10.xml")
    runner = CapturingRunner(kvm.runner)
    kvm.host.runner = runner
    attach(kvm.host, VF, "win10", live=True)
    path = kvm.host.root.path("/etc/libvirt/qemu/win10.xml")
    text = path.read_text()
    assert "<address domain='0x0000' bus='0x02' slot='0x10' function='0x0'/>" in text
    assert "<driver name='vfio'/>" in text
    checked = subprocess.run(
        [VALIDATE, str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    # (virsh domstate and dumpxml only ask what the running guest holds)
    virsh = [c for c in runner.calls if c[0] == "virsh" and c[3] not in ("dumpxml", "domstate")]
    # libvirtd is told about the edited file, then the running guest gets the device.
    assert virsh[0] == ("virsh", "-c", "qemu:///system", "define", str(path))
    assert virsh[1][:5] == ("virsh", "-c", "qemu:///system", "attach-device", "win10")
    assert virsh[1][-1] == "--live"
    # The live hostdev file: libvirt's own parser (test:///default driver, which
    # has no attach-device) reads it inside a domain and gives it back intact.
    assert len(runner.files) == 1
    live = path.parent / "live.xml"
    live.write_text(
        "<domain type='test'><name>pcipass-live</name><memory>1024</memory>"
        f"<os><type>hvm</type></os><devices>{runner.files[0].strip()}</devices></domain>\n"
    )
    virsh_program = shutil.which("virsh")
    if virsh_program is not None:
        dumped = subprocess.run(
            [virsh_program, "-c", "test:///default", f"define {live}; dumpxml pcipass-live"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert dumped.returncode == 0, dumped.stderr
        assert "<hostdev mode='subsystem' type='pci' managed='no'>" in dumped.stdout
        assert "bus='0x02' slot='0x10' function='0x0'" in dumped.stdout
    checked = subprocess.run(
        [VALIDATE, str(live), "domain"], capture_output=True, text=True, check=False
    )
    live.unlink()
    assert checked.returncode == 0, checked.stderr
    detach(kvm.host, VF, "win10", live=True)
    verbs = [c[3] for c in runner.calls if c[0] == "virsh" and c[3] not in ("dumpxml", "domstate")]
    assert verbs == ["define", "attach-device", "detach-device", "define"]
    assert read(kvm, "/etc/libvirt/qemu/win10.xml") == original


# --- lookup and CLI --------------------------------------------------------------------


def test_unknown_guest_lists_where_pcipass_looked(rhel5: Lab) -> None:
    with pytest.raises(GuestNotFoundError) as caught:
        attach(rhel5.host, NIC, "nosuch")
    for place in ("/etc/xen/nosuch", "/etc/xen/nosuch.cfg", "/etc/libvirt/qemu/nosuch.xml"):
        assert place in caught.value.render()


def test_guest_names_never_become_paths(rhel5: Lab) -> None:
    with pytest.raises(UsageError):
        attach(rhel5.host, NIC, "../../etc/passwd")


def test_config_option_and_a_name_mismatch(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/srv/guests/r5.conf", 'name = "r5"\nbootloader = "/usr/bin/pygrub"\n')
    with pytest.raises(UsageError, match="describes guest 'r5', not 'x'"):
        attach(rhel5.host, NIC, "x", config="/srv/guests/r5.conf", accept_pv_dma_risk=True)
    attach(rhel5.host, NIC, "r5", config="/srv/guests/r5.conf", accept_pv_dma_risk=True)
    assert b'pci = [ "0000:09:00.0" ]' in read(rhel5, "/srv/guests/r5.conf")


def test_cli_exit_codes_and_messages(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    base = str(rhel5.base)
    rhel5.fake.mark_simulated()
    assert main(["--root", base, "attach", "09:00.0", "rhel5pv"]) == 3
    err = capsys.readouterr().err
    assert "[PP002]" in err and "[PP004]" in err
    code = main(["--root", base, "attach", "09:00.0", "rhel5pv", "--hide", "--accept-pv-dma-risk"])
    assert code == 0
    assert "attached 0000:09:00.0 to guest rhel5pv" in capsys.readouterr().out
    assert main(["--root", base, "detach", "09:00.0", "rhel5pv", "--dry-run"]) == 0
    assert "-pci = [ '0000:09:00.0' ]" in capsys.readouterr().out
    assert main(["--root", base, "attach", "09:00.0", "nosuch"]) == 4


# --- PP003 at host shutdown (xendomains) ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "warned"),
    [
        ("XENDOMAINS_SAVE=/var/lib/xen/save\n", True),
        ('XENDOMAINS_SAVE="/var/lib/xen/save"  # default\n', True),
        ('XENDOMAINS_SAVE=/var/lib/xen/save\nXENDOMAINS_SAVE=""\n', False),
        ("# XENDOMAINS_SAVE=/var/lib/xen/save\n", False),
    ],
)
def test_xendomains_save_at_shutdown_is_warned(rhel5: Lab, content: str, warned: bool) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/sysconfig/xendomains", content)
    result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    found = [f for f in result.findings if f.rule == "PP003"]
    assert bool(found) is warned
    if warned:
        assert "XENDOMAINS_SAVE=/var/lib/xen/save" in found[0].message
        assert 'XENDOMAINS_SAVE=""' in found[0].remedy


def test_pci_stub_does_not_serve_a_vfio_guest(kvm: Lab) -> None:
    kvm.fake.add_driver("pci-stub")
    kvm.fake.unbind(str(VF))
    kvm.fake.bind(str(VF), "pci-stub")
    error = refused(attach, kvm.host, VF, "win10", hide=True)
    assert error.rule == "PP002" and "bound to pci-stub" in error.problem
    assert "only from vfio-pci" in error.problem


# --- libvirt's Xen driver -------------------------------------------------------------

LIBXL_PV = """<domain type='xen'>
  <name>lxpv</name>
  <memory unit='KiB'>524288</memory>
  <os>
    <type arch='x86_64' machine='xenpv'>linux</type>
    <kernel>/boot/vmlinuz-2.6.18-164.el5xen</kernel>
  </os>
  <devices>
    <console type='pty'/>
  </devices>
</domain>
"""


def test_libvirt_xen_guest_uses_the_xen_driver_and_connection(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/libvirt/libxl/lxpv.xml", LIBXL_PV)
    runner = CapturingRunner(rhel5.runner)
    rhel5.host.runner = runner
    error = refused(attach, rhel5.host, NIC, "lxpv", live=True)
    assert error.rule == "PP004"  # PV through libvirt is PV all the same
    attach(rhel5.host, NIC, "lxpv", live=True, accept_pv_dma_risk=True)
    text = read(rhel5, "/etc/libvirt/libxl/lxpv.xml").decode()
    assert "<driver name='xen'/>" in text and "bus='0x09'" in text
    virsh = [c for c in runner.calls if c[0] == "virsh" and c[3] not in ("dumpxml", "domstate")]
    assert [c[:4] for c in virsh] == [
        ("virsh", "-c", "xen:///system", "define"),
        ("virsh", "-c", "xen:///system", "attach-device"),
    ]
    assert "<driver name='xen'/>" in runner.files[0]
    detach(rhel5.host, NIC, "lxpv")
    assert read(rhel5, "/etc/libvirt/libxl/lxpv.xml").decode() == LIBXL_PV


# --- property: attach then detach gives the file back, whatever else it holds ------------

_OTHER = st.sampled_from(["0000:0a:04.1", "0000:0b:00.0", "0000:41:00.3", "0a:04.0"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    others=st.lists(_OTHER, unique=True, max_size=3),
    quote=st.sampled_from(["'", '"']),
    comment=st.sampled_from(["", "# passthrough for the NIC\n", "#\n\n"]),
    crlf_free_tail=st.sampled_from(["", "memory = 512\n", "on_crash = 'restart'\n"]),
)
def test_attach_detach_round_trip_is_byte_exact(
    rhel5: Lab, others: list[str], quote: str, comment: str, crlf_free_tail: str
) -> None:
    if rhel5.fake.bound_driver(str(NIC)) != "pciback":
        hidden_nic(rhel5)
    body = f"name = {quote}fz{quote}\nbootloader = {quote}/usr/bin/pygrub{quote}\n{comment}"
    if others:
        body += "pci = [ " + ", ".join(f"{quote}{o}{quote}" for o in others) + " ]\n"
    body += crlf_free_tail
    rhel5.fake.write_file("/etc/xen/fz", body)
    attach(rhel5.host, NIC, "fz", accept_pv_dma_risk=True)
    edited = read(rhel5, "/etc/xen/fz").decode()
    assert edited.count("0000:09:00.0") == 1 and owner(rhel5, NIC) == "fz"
    for other in others:
        assert other in edited
    detach(rhel5.host, NIC, "fz")
    assert read(rhel5, "/etc/xen/fz").decode() == body
    assert owner(rhel5, NIC) is None


def test_xl_passthrough_disabled_is_not_overridden(rhel5: Lab) -> None:
    hidden_nic(rhel5)
    rhel5.fake.write_file("/etc/xen/win7.cfg", XL_HVM + 'passthrough = "disabled"\n')
    answer_xl_info(rhel5, "hvm hvm_directio")
    before = snapshot(rhel5.base)
    with pytest.raises(UsageError, match='passthrough = "disabled"'):
        attach(rhel5.host, NIC, "win7")
    assert snapshot(rhel5.base) == before


def test_a_claim_made_by_another_pcipass_meanwhile_is_refused_under_the_lock(
    rhel5: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pcipass.ops.attach as attach_module

    hidden_nic(rhel5)
    gather = attach_module.GuestContext.gather

    def racing_gather(host: object, scan: object = None) -> object:
        # Another process claims the device after the checks have read the ledger.
        ledger = Ledger.open(rhel5.host.root)
        ledger.claim(NIC, "racer", config_kind="xl")
        ledger.close()
        return gather(rhel5.host, scan)  # type: ignore[arg-type]

    monkeypatch.setattr(attach_module.GuestContext, "gather", staticmethod(racing_gather))
    before = snapshot(rhel5.base)
    error = refused(attach, rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    assert error.rule == "PP101" and "assigned to guest racer" in error.problem
    assert snapshot(rhel5.base) == before
    assert owner(rhel5, NIC) == "racer"


class Killed(BaseException):
    """Stands for SIGKILL in the middle of an operation: nothing catches it."""


def test_recover_undoes_an_attach_killed_after_its_file_edit(
    rhel5: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pcipass.ops.recover import recover

    hidden_nic(rhel5)
    rhel5.runner.programs.add("xm")
    original = read(rhel5, RHEL5PV)

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(XenCli, "hotplug", killed)
    with pytest.raises(Killed):
        attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    assert read(rhel5, RHEL5PV) != original  # the edit happened, then the kill
    # Killed while xm was being told: the device may be in the guest, so it
    # has an owner ("maybe"), and unhide --now must not give it to the host.
    with Ledger.open(rhel5.host.root, readonly=True) as ledger:
        maybe = ledger.owner(NIC)
    assert maybe is not None and maybe.guest == "rhel5pv" and maybe.uncertain
    report = recover(rhel5.host)
    assert any("/etc/xen/rhel5pv: restored" in line for line in report)
    assert read(rhel5, RHEL5PV) == original
    # recover asked xm (xm pci-list): the guest does not hold it; recorded.
    assert ("xm", "pci-list", "rhel5pv") in rhel5.runner.calls
    assert owner(rhel5, NIC) is None
    assert rhel5.fake.bound_driver(str(NIC)) == "pciback"  # the hide is not part of it


def test_libvirt_file_edit_without_virsh_says_how_to_hand_it_to_libvirtd(kvm: Lab) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    result = attach(kvm.host, VF, "win10")
    assert any(
        "virsh -c qemu:///system define /etc/libvirt/qemu/win10.xml" in n for n in result.notes
    )
    kvm.runner.programs.add("virsh")
    kvm.runner.answers["virsh -c qemu:///system define"] = CommandResult(
        ("virsh",), 1, "", "error: failed to connect to the hypervisor\n"
    )
    result = detach(kvm.host, VF, "win10")
    assert result.changed  # the file edit stands: libvirtd reads it when it starts
    assert any("failed to connect to the hypervisor" in n for n in result.notes)


def test_recover_restores_ownership_of_a_detach_killed_after_the_release(
    rhel5: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pcipass.ops.recover import recover
    from pcipass.state.ledger import OperationHandle

    hidden_nic(rhel5)
    attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True)
    attached = read(rhel5, RHEL5PV)

    def killed(self: OperationHandle) -> None:
        raise Killed

    monkeypatch.setattr(OperationHandle, "finish", killed)
    with pytest.raises(Killed):
        detach(rhel5.host, NIC, "rhel5pv")
    monkeypatch.undo()
    assert owner(rhel5, NIC) is None  # released, then killed before finishing
    report = recover(rhel5.host)
    assert read(rhel5, RHEL5PV) == attached
    assert owner(rhel5, NIC) == "rhel5pv"
    assert any("ownership by rhel5pv restored" in line for line in report)


def test_live_attach_to_a_kvm_guest_points_at_guest_setup(kvm: Lab) -> None:
    hide_now(kvm.host, [VF], Backend.VFIO)
    kvm.host.runner = CapturingRunner(kvm.runner)
    result = attach(kvm.host, VF, "win10", live=True)
    pp008 = [f for f in result.findings if f.rule == "PP008"]
    assert len(pp008) == 1 and "acpiphp" in pp008[0].message
    assert "pcipass guest-setup" in pp008[0].remedy
    detach(kvm.host, VF, "win10")
    quiet = attach(kvm.host, VF, "win10")  # no hotplug, no acpiphp needed
    assert not [f for f in quiet.findings if f.rule == "PP008"]
