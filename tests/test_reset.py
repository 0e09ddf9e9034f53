"""Reset readiness: the libvirt ladder (FLR, PM, bus), each case with its method and reason."""

from __future__ import annotations

import pytest

from pcipass.host.config_space import ConfigSpace, PortType, parse_config
from pcipass.host.reset import (
    NO_RESET_REASON,
    ResetVerdict,
    describe_method,
    parse_reset_method,
    reset_readiness,
)
from pcipass.testing.config_builder import af, build_config, dsn, msi, msix, pcie, pm

BNX2 = parse_config(
    build_config(
        0x14E4,
        0x163B,
        class_code=0x020000,
        caps=[pm(), msi(), msix(9), pcie(PortType.ENDPOINT, flr=True)],
        ext_caps=[dsn(1)],
    )
)
# The lab: QEMU's e1000 has no capabilities; the e1000e has PM (No_Soft_Reset clear).
QEMU_E1000 = parse_config(build_config(0x8086, 0x100E, class_code=0x020000))
E1000E = parse_config(
    build_config(
        0x8086, 0x10D3, class_code=0x020000, caps=[pm(), msi(), pcie(PortType.ENDPOINT), msix(5)]
    )
)
GPU_NO_SOFT_RESET = parse_config(
    build_config(
        0x10DE,
        0x1C82,
        class_code=0x030000,
        caps=[pm(no_soft_reset=True), pcie(PortType.LEGACY_ENDPOINT)],
    )
)
UHCI_AF = parse_config(build_config(0x8086, 0x2934, class_code=0x0C0300, caps=[af(True)]))


def verdict(
    methods: list[str] | None,
    config: ConfigSpace | None,
    bus: bool,
    blocker: str = "",
    reset_attribute: bool | None = None,
) -> ResetVerdict:
    return reset_readiness(
        methods,
        config,
        bus_reset_possible=bus,
        bus_reset_blocker=blocker,
        reset_attribute=reset_attribute,
    )


# --- the kernel's reset_method list ----------------------------------------------------------


def test_kernel_flr_first() -> None:
    result = verdict(["flr", "pm", "bus"], BNX2, bus=True)
    assert result.ready and result.method == "flr"
    assert result.methods == ["flr", "pm", "bus"] and result.source == "kernel"
    assert result.reason == (
        "Function Level Reset (flr) resets the function (from the kernel's reset_method)"
    )


def test_lab_e1000e_behind_root_port_uses_pm() -> None:
    """lab-notes/KVM.md: e1000e behind a pcie-root-port has reset_method=pm bus."""
    result = verdict(parse_reset_method("pm bus\n"), E1000E, bus=True)
    assert result.method == "pm" and result.methods == ["pm", "bus"]
    assert result.reason.startswith("PM reset (D3hot to D0, No_Soft_Reset clear) (pm)")


def test_listed_bus_reset_is_dropped_when_topology_forbids_it() -> None:
    result = verdict(["bus"], QEMU_E1000, bus=False, blocker="0000:02:00.1 is used by the host")
    assert not result.ready and result.method is None and result.methods == []
    assert result.unusable == ["bus"]
    assert result.reason == (
        NO_RESET_REASON + "; bus reset not possible: 0000:02:00.1 is used by the host"
    )


def test_pm_then_bus_when_bus_is_possible_but_not_listed() -> None:
    """A multi-function card whose functions all go to the guest: the kernel lists no
    per-function "bus" (it needs the function alone on its bus), but a hot reset of the
    whole bus still works."""
    result = verdict(["pm"], E1000E, bus=True)
    assert result.methods == ["pm", "bus"] and result.method == "pm"


def test_only_bus_reset_left() -> None:
    result = verdict(["bus"], QEMU_E1000, bus=True)
    assert result.ready and result.method == "bus"
    assert result.reason == (
        "secondary bus reset (bus) resets the function (from the kernel's reset_method); "
        "it resets every function on the same bus"
    )


def test_kernel_order_wins_when_reordered_by_the_administrator() -> None:
    result = verdict(["bus", "flr"], BNX2, bus=True)
    assert result.method == "bus" and result.methods == ["bus", "flr"]


def test_kernel_quirk_and_acpi_methods_count() -> None:
    result = verdict(["device_specific", "acpi", "flr"], BNX2, bus=False)
    assert result.method == "device_specific"
    assert result.reason.startswith("a device-specific reset (kernel quirk) (device_specific)")
    assert describe_method("acpi") == "the firmware's ACPI _RST method"
    assert describe_method("d3cold") == "the kernel's 'd3cold' reset"


def test_empty_reset_method_list_means_all_disabled() -> None:
    result = verdict(parse_reset_method(""), BNX2, bus=False, blocker="on the root bus")
    assert not result.ready
    assert result.reason == (
        NO_RESET_REASON + "; the kernel's reset_method list is empty (every method disabled)"
    )


def test_kernel_list_beats_config_bits() -> None:
    """The config says FLR, but the kernel (quirk) lists only pm: trust the kernel."""
    result = verdict(["pm"], BNX2, bus=False)
    assert result.methods == ["pm"]


# --- no reset_method: inferred from configuration space ------------------------------------


def test_lab_e1000_on_root_bus_has_no_reset() -> None:
    """lab-notes/KVM.md: the e1000 on the q35 root bus has no reset_method and no reset file."""
    result = verdict(None, QEMU_E1000, bus=False, blocker="on the root bus")
    assert not result.ready and result.method is None and result.methods == []
    assert result.source == "config"
    assert result.reason == (
        "no FLR, PM reset or bus reset available: state may leak between guests; "
        "bus reset not possible: on the root bus"
    )


def test_config_flr_first_then_pm_then_bus() -> None:
    result = verdict(None, BNX2, bus=True)
    assert result.methods == ["flr", "pm", "bus"] and result.method == "flr"
    assert result.reason == (
        "Function Level Reset (flr) resets the function (from configuration space)"
    )


def test_config_pm_reset_when_no_flr() -> None:
    result = verdict(None, E1000E, bus=False, blocker="on the root bus")
    assert result.method == "pm" and result.methods == ["pm"] and result.unusable == ["bus"]
    assert result.reason == (
        "PM reset (D3hot to D0, No_Soft_Reset clear) (pm) resets the function "
        "(from configuration space); bus reset not possible: on the root bus"
    )


def test_no_soft_reset_set_leaves_only_bus() -> None:
    result = verdict(None, GPU_NO_SOFT_RESET, bus=True)
    assert result.method == "bus" and result.methods == ["bus"]
    assert result.reason.endswith("; PM reset unusable: No_Soft_Reset is set")


def test_no_soft_reset_and_no_bus_is_not_ready() -> None:
    result = verdict(None, GPU_NO_SOFT_RESET, bus=False, blocker="on the root bus")
    assert not result.ready
    assert result.reason == (
        NO_RESET_REASON
        + "; PM reset unusable: No_Soft_Reset is set; bus reset not possible: on the root bus"
    )


def test_conventional_pci_flr_through_advanced_features() -> None:
    result = verdict(None, UHCI_AF, bus=False)
    assert result.method == "af_flr"
    assert result.reason.startswith(
        "Function Level Reset (conventional PCI Advanced Features) (af_flr)"
    )


def test_absent_reset_attribute_overrides_config_bits() -> None:
    """pci-sysfs creates "reset" only when a per-function method exists."""
    result = verdict(None, BNX2, bus=False, reset_attribute=False)
    assert not result.ready
    assert result.reason == (
        NO_RESET_REASON + "; the kernel offers no function reset (no reset attribute)"
    )
    assert verdict(None, BNX2, bus=True, reset_attribute=False).methods == ["bus"]


def test_reset_attribute_without_known_method_still_counts() -> None:
    result = verdict(None, None, bus=False, reset_attribute=True)
    assert result.ready and result.method == "reset"
    assert "this kernel does not name its method" in result.reason
    assert result.reason.endswith("; configuration space unreadable: FLR and PM reset unknown")


def test_nothing_known() -> None:
    result = verdict(None, None, bus=False)
    assert not result.ready and result.source == "none"
    assert result.reason == (
        "reset support unknown: no reset_method attribute and configuration space unreadable"
    )


def test_unprivileged_64_byte_config_is_partial() -> None:
    header_only = parse_config(
        build_config(0x14E4, 0x163B, class_code=0x020000, caps=[pcie(PortType.ENDPOINT)])[:64]
    )
    result = verdict(None, header_only, bus=False, blocker="on the root bus")
    assert not result.ready
    assert "configuration space only partly readable: FLR or PM reset unknown" in result.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("", []), ("flr pm bus\n", ["flr", "pm", "bus"]), ("pm\n", ["pm"])],
)
def test_parse_reset_method(text: str | None, expected: list[str] | None) -> None:
    assert parse_reset_method(text) == expected


def test_to_json() -> None:
    data = verdict(["flr", "bus"], BNX2, bus=False, blocker="on the root bus").to_json()
    assert data == {
        "ready": True,
        "method": "flr",
        "methods": ["flr"],
        "unusable": ["bus"],
        "source": "kernel",
        "reason": "Function Level Reset (flr) resets the function (from the kernel's "
        "reset_method); bus reset not possible: on the root bus",
    }
