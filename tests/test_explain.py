"""explain: known toolstack messages mapped to a rule, a cause on this host and a fix."""

from __future__ import annotations

import json

import pytest

from pcipass.cli.main import main
from pcipass.ops.explain import explain
from pcipass.testing.harness import Lab

VIABLE = (
    "qemu-system-x86_64: -device vfio-pci,host=01:00.0: vfio 0000:01:00.0: group 5 is "
    "not viable. Please ensure all devices within the iommu_group are bound to their vfio "
    "bus driver."
)


def test_group_not_viable_names_this_hosts_members(kvm: Lab) -> None:
    (found,) = explain(kvm.host, VIABLE)
    assert found.rule == "PP102"
    assert "IOMMU group 5 holds 0000:01:00.0, 0000:01:00.1" in found.cause
    assert "still on host drivers: 0000:01:00.0, 0000:01:00.1" in found.fix


@pytest.mark.parametrize(
    ("text", "rule", "words"),
    [
        (
            "libxl: error: libxl_pci.c:1529:pci_add_dm_done: Domain 5:xc_assign_device failed: "
            "Operation not supported",
            "PP003",
            'passthrough="enabled"',
        ),
        (
            "libxl: error: libxl_create.c:1160:libxl__domain_config_setdefault: passthrough not "
            "supported on this platform",
            "PP006",
            "no IOMMU",
        ),
        (
            "modprobe: FATAL: Module pciback not found in directory /lib/modules/6.1.0-26-amd64",
            "PP010",
            "xen-pciback",
        ),
        (
            "error: Unable to reset PCI device 0000:00:03.0: no FLR, PM reset or bus reset "
            "available",
            "PP104",
            "reset",
        ),
        (
            "error: cannot migrate a domain with <hostdev mode='subsystem' type='pci'>",
            "PP003",
            "migrated",
        ),
    ],
)
def test_known_messages(kvm: Lab, text: str, rule: str, words: str) -> None:
    found = explain(kvm.host, text)
    assert [e.rule for e in found] == [rule]
    assert words in found[0].cause + found[0].fix


def test_not_assignable_says_what_the_device_is_bound_to(rhel5: Lab) -> None:
    (found,) = explain(rhel5.host, "PCI device 0000:09:00.0 is not assignable")
    assert found.rule == "PP002"
    assert "0000:09:00.0 is bound to bnx2" in found.cause
    assert found.fix == "pcipass hide --now 0000:09:00.0"


def test_unknown_message_exits_1(kvm: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(kvm.base), "explain", "all is well"]) == 1
    assert "does not know this message" in capsys.readouterr().out
    assert main(["--root", str(kvm.base), "explain", "--json", VIABLE]) == 0
    assert json.loads(capsys.readouterr().out)["explanations"][0]["rule"] == "PP102"
