"""``pcipass export``: scheduler definitions for what pcipass hid and checked.

Exact output for both example hosts in the four formats, parse-back of the
JSON and YAML, libvirt's schema on the <hostdev> snippet, refusals that leave
a device out with its rule, and proof that export writes and runs nothing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.cli.main import main
from pcipass.ops.export import ExportFormat, export
from pcipass.ops.hide import hide, hide_now
from pcipass.testing.fakehost import snapshot
from pcipass.testing.harness import Lab

FORMATS = ("proxmox", "nova", "kubevirt", "libvirt")
# The exact expected output, one file per host and format, written by hand
# from the owners' documented shapes (see docs/cli.md, "export").
EXPECTED = Path(__file__).parent / "data" / "export"


def expected(host: str) -> dict[str, str]:
    return {fmt: (EXPECTED / f"{host}-{fmt}.txt").read_text() for fmt in FORMATS}


def addrs(*texts: str) -> list[PciAddress]:
    return [PciAddress.parse(t) for t in texts]


@pytest.fixture
def kvm_hidden(kvm: Lab) -> Lab:
    """The KVM host with the GPU (both functions of its group) and one VF on vfio-pci."""
    kvm.fake.write_file("/etc/hostname", "pve1.example.com\n")
    hide_now(kvm.host, addrs("01:00.0", "01:00.1", "02:10.0"), Backend.VFIO)
    return kvm


@pytest.fixture
def rhel5_hidden(rhel5: Lab) -> Lab:
    """The document's host with its two addresses on pciback (Procedure 15.3)."""
    rhel5.fake.write_file("/etc/sysconfig/network", "NETWORKING=yes\nHOSTNAME=dom0.example.com\n")
    hide_now(rhel5.host, addrs("09:00.0", "0a:04.1"), Backend.PCIBACK)
    return rhel5


# SQLite's own bookkeeping beside the ledger: a WAL reader maps "-shm" and
# opens "-wal" (https://www.sqlite.org/wal.html); neither holds data here.
SQLITE_SIDE_FILES = ("var/lib/pcipass/state.db-shm", "var/lib/pcipass/state.db-wal")


def unchanged(base: Path, before: dict[str, object]) -> bool:
    """Every file, link and mode under the tree as before, the ledger included."""
    after = snapshot(base, skip=())
    wal = after.get("var/lib/pcipass/state.db-wal")
    assert wal is None or wal[1] == b"", "export wrote to the ledger's log"  # type: ignore[index]
    strip = [k for k in SQLITE_SIDE_FILES if k not in before]
    return {k: v for k, v in after.items() if k not in strip} == before


def run(lab: Lab, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(lab.base), "export", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------
# Exact output, KVM host

KVM_EXPECTED = expected("kvm")


@pytest.mark.parametrize("fmt", FORMATS)
def test_kvm_host_exact_output(
    kvm_hidden: Lab, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    code, out, err = run(kvm_hidden, capsys, "--format", fmt)
    assert code == 0
    assert out == KVM_EXPECTED[fmt]
    # The rules ran: the reset warnings travel on stderr, stdout stays usable.
    assert "[PP104] warn: 0000:01:00.0" in err
    assert "refused" not in err


# --------------------------------------------------------------------------
# Exact output, RHEL 5 Xen host

RHEL5_EXPECTED = expected("rhel5")


@pytest.mark.parametrize("fmt", FORMATS)
def test_rhel5_host_exact_output(
    rhel5_hidden: Lab, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    code, out, err = run(rhel5_hidden, capsys, "--format", fmt)
    assert code == 0
    assert out == RHEL5_EXPECTED[fmt]
    # 0a:04.1 sits behind the conventional bridge: exported, with the warning.
    assert "[PP102] warn: 0000:0a:04.1" in err


def test_rhel5_format_notes_name_what_the_scheduler_lacks(
    rhel5_hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run(rhel5_hidden, capsys, "--format", "proxmox")
    assert "0000:09:00.0: no IOMMU group on this host" in err
    _, _, err = run(rhel5_hidden, capsys, "--format", "kubevirt")
    # The host NIC has the same ids as the exported card: one KubeVirt selector.
    assert "0000:05:00.0 (not exported) also carry the ids 14E4:1639" in err
    assert "14E4:1639: KubeVirt only uses devices bound to vfio-pci" in err


# --------------------------------------------------------------------------
# Refusals


def test_host_nic_is_refused_with_pp001_and_not_exported(
    rhel5_hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(rhel5_hidden.base, skip=())
    for fmt in FORMATS:
        code, out, err = run(rhel5_hidden, capsys, "--format", fmt, "05:00.0")
        assert code == 3, fmt
        assert out == "", fmt
        assert (
            "pcipass: refused, not exported: [PP001] refuse: 0000:05:00.0: the host uses it: "
            "carries the default route (eth0)" in err
        )
        code, out, _ = run(rhel5_hidden, capsys, "--json", "--format", fmt, "05:00.0")
        assert code == 3
        data = json.loads(out)
        assert data["exported"] == []
        assert data["exit_code"] == 3
        [refused] = data["refused"]
        assert refused["address"] == "0000:05:00.0"
        assert {f["rule"] for f in refused["findings"]} == {"PP001"}
        assert "default route" in refused["findings"][0]["message"]
        assert refused["findings"][0]["remedy"]
    assert unchanged(rhel5_hidden.base, before)


def test_refused_device_is_left_out_and_the_rest_exported(
    rhel5_hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(rhel5_hidden, capsys, "--format", "nova", "05:00.0", "09:00.0")
    assert code == 0
    assert "0000:09:00.0" in out
    assert "0000:05:00.0" not in out
    assert "[PP001] refuse: 0000:05:00.0" in err


def test_group_split_is_refused_unless_the_rest_of_the_group_is_hidden(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing hidden: the GPU alone would leave its audio function on the host.
    code, out, err = run(kvm, capsys, "--format", "libvirt", "01:00.0")
    assert code == 3
    assert out == ""
    assert "[PP102] refuse: 0000:01:00.0: IOMMU group 5 also holds 0000:01:00.1" in err
    # Once the audio function is hidden, the group has left the host whole.
    hide_now(kvm.host, addrs("01:00.0", "01:00.1"), Backend.VFIO)
    code, out, err = run(kvm, capsys, "--format", "libvirt", "01:00.0")
    assert code == 0
    assert "pci_0000_01_00_0" in out
    assert "pci_0000_01_00_1" not in out
    assert "PP102" not in err


def test_device_owned_by_a_guest_is_refused(rhel5_hidden: Lab) -> None:
    from pcipass.state.ledger import Ledger

    with Ledger.open(rhel5_hidden.host.root) as ledger:
        ledger.claim("0000:09:00.0", "rhel5pv", config_kind="xm", config_path="/etc/xen/rhel5pv")
    result = export(rhel5_hidden.host, ExportFormat.NOVA)
    assert [str(d.address) for d in result.devices] == ["0000:0a:04.1"]
    [refused] = result.refused
    assert [(f.rule, f.message) for f in refused.findings] == [
        ("PP101", "already assigned to guest rhel5pv")
    ]


# --------------------------------------------------------------------------
# Parse-back and the owners' shapes


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_wraps_every_format(
    kvm_hidden: Lab, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    code, out, _ = run(kvm_hidden, capsys, "--json", "--format", fmt)
    assert code == 0
    data = json.loads(out)
    assert data["format"] == fmt
    assert data["text"] == KVM_EXPECTED[fmt]
    assert [d["address"] for d in data["exported"]] == [
        "0000:01:00.0",
        "0000:01:00.1",
        "0000:02:10.0",
    ]
    assert data["refused"] == []
    assert fmt in data


def test_nova_lines_are_json_values(kvm_hidden: Lab) -> None:
    result = export(kvm_hidden.host, ExportFormat.NOVA)
    lines = result.text.splitlines()
    assert lines[0] == "[pci]"
    parsed: dict[str, list[object]] = {"device_spec": [], "alias": []}
    for line in lines[1:]:
        key, sep, value = line.partition(" = ")
        assert sep
        parsed[key].append(json.loads(value))
    assert parsed == result.data
    assert {a["numa_policy"] for a in result.data["alias"]} == {"preferred"}  # type: ignore[index,union-attr]


def test_nova_numa_policy_and_device_types(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    # 02:00.0 is the SR-IOV physical function (type-PF), 02:10.4 a VF.
    code, out, _ = run(
        kvm, capsys, "--json", "--format", "nova", "--numa-policy", "required", "02:10.4"
    )
    assert code == 0
    [alias] = json.loads(out)["nova"]["alias"]
    assert alias["device_type"] == "type-VF"
    assert alias["numa_policy"] == "required"
    result = export(kvm.host, ExportFormat.NOVA, addrs("02:00.0"))
    assert result.data["alias"][0]["device_type"] == "type-PF"  # type: ignore[index]
    assert [w.rule for w in result.devices[0].warnings] == ["PP106"]


def test_kubevirt_yaml_parses_back_to_the_cr_shape(kvm_hidden: Lab) -> None:
    result = export(kvm_hidden.host, ExportFormat.KUBEVIRT)
    parsed = yaml.safe_load(result.text)
    assert parsed == {"spec": {"configuration": result.data}}
    entries = parsed["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]
    for entry in entries:
        assert set(entry) == {"pciVendorSelector", "resourceName", "externalResourceProvider"}
        assert entry["externalResourceProvider"] is False
        vendor, device = entry["pciVendorSelector"].split(":")
        assert len(vendor) == len(device) == 4
        int(vendor, 16), int(device, 16)
        domain, name = entry["resourceName"].split("/")
        assert domain == "pcipass.io"
        assert name == f"{vendor}_{device}".lower()


def test_kubevirt_same_ids_become_one_resource_with_a_warning(
    kvm: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_now(kvm.host, addrs("02:10.0", "02:10.4"), Backend.VFIO)
    code, out, err = run(kvm, capsys, "--format", "kubevirt")
    assert code == 0
    assert out.count("pciVendorSelector") == 1
    assert (
        "warning: 0000:02:10.0, 0000:02:10.4 share the selector 8086:1520: KubeVirt offers "
        "them as one resource" in err
    )


def test_proxmox_pvesh_line_splits_back_to_its_arguments(kvm_hidden: Lab) -> None:
    result = export(kvm_hidden.host, ExportFormat.PROXMOX)
    commands = [line for line in result.text.splitlines() if line.startswith("pvesh ")]
    mappings = result.data["mappings"]
    assert isinstance(mappings, list)
    assert [shlex.split(c) for c in commands] == [m["pvesh"] for m in mappings]
    first = mappings[0]
    assert first["map"] == {
        "node": "pve1",
        "path": "0000:01:00.0",
        "id": "10de:1b80",
        "iommugroup": "5",
    }


def test_proxmox_node_name(rhel5: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    hide_now(rhel5.host, addrs("09:00.0"), Backend.PCIBACK)
    before = snapshot(rhel5.base, skip=())
    code, out, err = run(rhel5, capsys, "--format", "proxmox")
    assert code == 4
    assert out == ""
    assert err.startswith("pcipass: proxmox node name: no host name found under ")
    assert err.rstrip().endswith("(give it with --node NAME)")
    code, out, err = run(rhel5, capsys, "--format", "proxmox", "--node", "pve,2")
    assert code == 2
    assert "node name 'pve,2': is not a valid host name" in err
    code, out, _ = run(rhel5, capsys, "--format", "proxmox", "--node", "pve-2")
    assert code == 0
    assert "node=pve-2,path=0000:09:00.0" in out
    assert unchanged(rhel5.base, before)


def test_persist_only_hide_is_exported_with_the_ledgers_driver(rhel5: Lab) -> None:
    hide(rhel5.host, addrs("09:00.0"), Backend.PCIBACK, now=False, persist=True)
    result = export(rhel5.host, ExportFormat.LIBVIRT)
    assert [str(d.address) for d in result.devices] == ["0000:09:00.0"]
    assert "<driver name='xen'/>" in result.text


def test_recorded_device_gone_from_the_bus_is_refused_not_fatal(
    rhel5_hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    hide(rhel5_hidden.host, addrs("09:00.0"), Backend.PCIBACK, now=False, persist=True)
    rhel5_hidden.fake.remove_device("0000:09:00.0")
    code, out, err = run(rhel5_hidden, capsys, "--format", "libvirt")
    assert code == 0
    assert "pci_0000_0a_04_1" in out
    assert "pci_0000_09_00_0" not in out
    assert (
        "refused, not exported: [PP105] refuse: 0000:09:00.0: recorded by pcipass but no "
        "longer on the bus" in err
    )


def test_nothing_hidden_exports_nothing(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(kvm, capsys, "--format", "nova")
    assert code == 0
    assert out == ""
    assert "nothing to export" in err


def test_bad_address_is_a_usage_error(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(kvm, capsys, "--format", "nova", "../../etc")
    assert code == 2
    assert "invalid PCI address" in err


VALIDATE = shutil.which("virt-xml-validate")


@pytest.mark.needs_tool
@pytest.mark.skipif(VALIDATE is None, reason="virt-xml-validate (libvirt-clients) not installed")
@pytest.mark.parametrize("host_kind", ["kvm", "rhel5"])
def test_libvirt_hostdevs_validate_against_libvirts_schema(
    host_kind: str, kvm_hidden: Lab, rhel5_hidden: Lab, tmp_path: Path
) -> None:
    assert VALIDATE is not None
    lab = kvm_hidden if host_kind == "kvm" else rhel5_hidden
    result = export(lab.host, ExportFormat.LIBVIRT)
    domain_type, os_type = ("kvm", "hvm") if host_kind == "kvm" else ("xen", "linux")
    document = (
        f"<domain type='{domain_type}'><name>export</name><memory>1048576</memory>"
        f"<os><type>{os_type}</type></os><devices>\n{result.text}</devices></domain>\n"
    )
    path = tmp_path / "domain.xml"
    path.write_text(document)
    checked = subprocess.run(
        [VALIDATE, str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    entries = result.data["devices"]
    assert isinstance(entries, list)
    assert all(e["hostdev"] in result.text for e in entries)


# --------------------------------------------------------------------------
# Export only prints


def test_export_writes_nothing_and_runs_nothing(
    kvm_hidden: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(kvm_hidden.base, skip=())
    calls = len(kvm_hidden.runner.calls)
    for fmt in FORMATS:
        for extra in ([], ["--json"], ["03:00.0", "01:00.0"]):
            main(["--root", str(kvm_hidden.base), "export", "--format", fmt, *extra])
            export(kvm_hidden.host, ExportFormat(fmt))
    capsys.readouterr()
    assert unchanged(kvm_hidden.base, before)
    assert len(kvm_hidden.runner.calls) == calls


@pytest.mark.parametrize(
    "hostname", ["evil,node=pve1,path=0000:05:00.0", "-rf", "a b", "x" * 64, "pve1\tmap id=1"]
)
def test_hostile_hostname_is_refused_before_anything_is_printed(
    kvm_hidden: Lab, capsys: pytest.CaptureFixture[str], hostname: str
) -> None:
    # The host name ends up inside pci.cfg and the pvesh --map value: a comma
    # or whitespace would add fields to the mapping, so it must be a DNS label.
    kvm_hidden.fake.write_file("/etc/hostname", hostname + "\n")
    code, out, err = run(kvm_hidden, capsys, "--format", "proxmox")
    assert code == 2
    assert out == ""
    assert "is not a valid host name" in err
