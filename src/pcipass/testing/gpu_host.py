"""An example KVM host with two GPUs: ``python -m pcipass.testing.example DIR --kind gpu``.

* 0000:01:00.0-3, an NVIDIA TU106 (GeForce RTX 2060): VGA, HDMI audio, a USB
  3.1 xHCI controller and a USB Type-C UCSI controller, the four functions of
  one slot and alone in one IOMMU group (what a Turing card shows).  Its option
  ROM holds a legacy x86 image and an x86-64 UEFI image.  Bound to nouveau,
  snd_hda_intel, xhci_hcd and nvidia-gpu: the card to pass through, which
  needs ``--all-functions``.
* 0000:02:00.0-1, an AMD Polaris (Radeon RX 580) and its HDMI audio: the boot
  VGA device.  amdgpu is not loaded (the administrator keeps it for a guest),
  so the firmware framebuffer, taken over by simpledrm, holds the console
  together with fbcon (``vtcon1``).  It has a Resizable BAR capability and sits
  in the reset-quirk table (PP104).
* an NVMe root disk and an e1000e NIC with the default route; no serial console
  on the kernel command line, so releasing the boot GPU's console leaves the host
  without any local console (pcipass warns).

Configuration spaces carry the BARs a GPU has (32-bit registers, 64-bit
prefetchable VRAM, an I/O port range), PM, MSI and PCI Express capabilities.
"""

from __future__ import annotations

from pathlib import Path

from pcipass.host.pci_regs import PortType
from pcipass.testing import fakeconsole
from pcipass.testing.base_host import debian12_host
from pcipass.testing.config_builder import Cap, ExtCap, build_config, msi, pcie, pm, rebar
from pcipass.testing.fakehost import FakeHost
from pcipass.testing.rom_builder import chain, rom_image

NVIDIA, AMD = 0x10DE, 0x1002
TU106, TU106_AUDIO, TU106_USB, TU106_UCSI = 0x1F08, 0x10F9, 0x1ADA, 0x1ADB
POLARIS, POLARIS_AUDIO = 0x67DF, 0xAAF0
PASSTHROUGH_GPU = "0000:01:00.0"
BOOT_GPU = "0000:02:00.0"

# PCI 3.0 §6.2.5.1 BAR encodings: bit 0 I/O; bits 2:1 = 2 a 64-bit memory BAR, bit 3 prefetchable.
MEM32 = 0x0
MEM64_PREFETCH = 0xC
IO = 0x1


def gpu_rom(vendor: int, device: int) -> bytes:
    """A GPU's ROM as vendors ship them today: a legacy x86 image then an x86-64 UEFI one."""
    return chain(
        rom_image(vendor, device, code_type=0, blocks=4, last=False),
        rom_image(vendor, device, code_type=3, blocks=2, machine=0x8664),
    )


def _function(
    host: FakeHost,
    address: str,
    *,
    vendor: int,
    device: int,
    class_code: int,
    group: int,
    driver: str | None,
    caps: list[Cap | ExtCap],
    bars: list[int],
    subsystem: tuple[int, int],
    # PM reset only: the kernel offers no bus reset to a function with siblings on its bus
    # (drivers/pci/pci.c pci_parent_bus_reset), and these have PM with No_Soft_Reset clear.
    reset_method: str = "pm",
    boot_vga: bool | None = None,
    rom: bytes | None = None,
) -> None:
    directory = host.add_device(
        address,
        vendor=vendor,
        device=device,
        class_code=class_code,
        driver=driver,
        parent={"01": "0000:00:01.0", "02": "0000:00:03.0"}[address[5:7]],
        group=group,
        multifunction=True,
        subsystem=subsystem,
        caps=caps,
        config_size=4096,
        reset_method=reset_method,
        boot_vga=boot_vga,
        rom=rom,
    )
    # The kit's add_device builds no BARs; a GPU's are part of what it looks like.
    config = build_config(
        vendor,
        device,
        class_code=class_code,
        multifunction=True,
        subsystem=subsystem,
        caps=caps,
        size=4096,
        bars=bars,
    )
    (directory / "config").write_bytes(config)


def build_gpu(base: Path) -> FakeHost:
    """The host described in the module docstring."""
    host = debian12_host(base, " modprobe.blacklist=amdgpu")
    host.write_file("/etc/modprobe.d/blacklist-amdgpu.conf", "blacklist amdgpu\n")
    host.add_host_bridge("0000:00:00.0")
    root_port = [pcie(PortType.ROOT_PORT, link_speed=3, link_width=16), msi()]
    for port, bus in (("0000:00:01.0", 1), ("0000:00:03.0", 2), ("0000:00:1c.0", 3)):
        host.add_bridge(port, secondary_bus=bus, device=0x1C10, caps=root_port)
    host.add_bridge("0000:00:1c.1", secondary_bus=4, device=0x1C10, caps=root_port)

    gpu_caps: list[Cap | ExtCap] = [
        pm(),
        msi(),
        pcie(PortType.LEGACY_ENDPOINT, link_speed=3, link_width=16),
    ]
    func_caps: list[Cap | ExtCap] = [pm(), msi(), pcie(PortType.ENDPOINT, link_speed=3)]
    nvidia = host.new_group()
    sub = (0x1458, 0x3FC2)  # a board maker's subsystem, as on a retail card
    _function(
        host,
        "0000:01:00.0",
        vendor=NVIDIA,
        device=TU106,
        class_code=0x030000,
        group=nvidia,
        driver="nouveau",
        caps=gpu_caps,
        bars=[0xF6000000 | MEM32, 0xE000000C, 0, 0xF000000C, 0, 0xE001 | IO],
        subsystem=sub,
        boot_vga=False,
        rom=gpu_rom(NVIDIA, TU106),
    )
    for address, device, class_code, driver in (
        ("0000:01:00.1", TU106_AUDIO, 0x040300, "snd-hda-intel"),
        ("0000:01:00.2", TU106_USB, 0x0C0330, "xhci-pci"),
        ("0000:01:00.3", TU106_UCSI, 0x0C8000, "i2c-nvidia-gpu"),
    ):
        _function(
            host,
            address,
            vendor=NVIDIA,
            device=device,
            class_code=class_code,
            group=nvidia,
            driver=driver,
            caps=func_caps,
            bars=[0xF7080000 + (int(address[-1]) << 16)],
            subsystem=sub,
        )
    fakeconsole.add_drm_card(base, "card1", host.path_of(PASSTHROUGH_GPU))

    amd = host.new_group()
    amd_sub = (0x1DA2, 0xE366)
    _function(
        host,
        BOOT_GPU,
        vendor=AMD,
        device=POLARIS,
        class_code=0x030000,
        group=amd,
        driver=None,
        caps=[*gpu_caps, rebar(0, sizes_mib=(256, 512, 1024, 2048, 4096, 8192))],
        bars=[0xC000000C, 0, 0xD000000C, 0, 0xD001 | IO, 0xF7A00000],
        subsystem=amd_sub,
        boot_vga=True,
        rom=gpu_rom(AMD, POLARIS),
    )
    _function(
        host,
        "0000:02:00.1",
        vendor=AMD,
        device=POLARIS_AUDIO,
        class_code=0x040300,
        group=amd,
        driver="snd-hda-intel",
        caps=func_caps,
        bars=[0xF7A60000],
        subsystem=amd_sub,
    )
    fakeconsole.add_firmware_framebuffer(base, "simpledrm")
    fakeconsole.add_vtconsoles(base, fbcon_bound=True)

    host.add_device(
        "0000:03:00.0",
        vendor=0x144D,
        device=0xA808,
        class_code=0x010802,
        driver="nvme",
        parent="0000:00:1c.0",
        reset_method="flr bus",
        caps=[pm(), msi(), pcie(PortType.ENDPOINT, flr=True)],
    )
    host.add_device(
        "0000:04:00.0",
        vendor=0x8086,
        device=0x10D3,
        class_code=0x020000,
        driver="e1000e",
        parent="0000:00:1c.1",
        reset_method="flr pm bus",
        caps=[pm(), msi(), pcie(PortType.ENDPOINT, flr=True)],
    )
    parts = host.add_disk("0000:03:00.0", "nvme0n1", partitions=2, major=259)
    host.add_mount("/", parts[1])
    host.add_mount("/boot/efi", parts[0], fstype="vfat")
    host.add_nic("0000:04:00.0", "enp4s0")
    host.add_route("enp4s0", default=True, network="10.0.0.0", prefix=24, local="10.0.0.7")
    host.write_file(
        "/etc/libvirt/qemu/win11.xml",
        "<domain type='kvm'>\n  <name>win11</name>\n  <memory unit='KiB'>8388608</memory>\n"
        "  <os firmware='efi'>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n"
        "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        "  </devices>\n</domain>\n",
    )
    return host
