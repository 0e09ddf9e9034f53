"""Moving one function between drivers through sysfs, and checking it moved.

Each function here is one small, verifiable step with a clear inverse, so an
operation can journal it and roll it back (libvirt's virhostdev model):

* :func:`set_override` / clear: ``driver_override`` (Linux 3.16+), the only
  targeted way to say "this device, that driver" (never the global
  ``new_id``, which grabs every matching device, the host's own included);
* pciback's ``new_slot``/``remove_slot`` for kernels without driver_override
  (RHEL 5's 2.6.18: the document's era);
* :func:`unbind`, :func:`bind`, :func:`probe` (``drivers_probe``);
* :func:`verify_driver`: after every bind, the ``driver`` link must say what
  we wanted (driverctl's lesson: a write that succeeded is not a bind).
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import OperationFailed
from pcipass.host.context import Host
from pcipass.host.platform import running_xen_stub
from pcipass.host.stubs import VFIO_DRIVER, VFIO_MODULE, XEN_DRIVER
from pcipass.record import dataclass


@dataclass(frozen=True)
class StubDriver:
    backend: Backend
    driver: str  # name under /sys/bus/pci/drivers
    module: str  # name for modprobe

    def __str__(self) -> str:
        return self.driver


def stub_for(host: Host, backend: Backend) -> StubDriver:
    """The stub driver for a backend on this host.

    xen-pciback registers its PCI driver as "pciback" whatever the module is
    called: ``pciback`` on RHEL 5's 2.6.18-xen kernel, ``xen-pciback`` on
    pvops kernels (the RHEL 5 name fails there: "Module pciback not found").
    The module name is decided once, in host/stubs.py, for hiding now and
    hiding at boot alike.
    """
    if backend is Backend.VFIO:
        return StubDriver(backend, VFIO_DRIVER, VFIO_MODULE)
    return StubDriver(backend, XEN_DRIVER, running_xen_stub(host.root))


def current_driver(host: Host, address: PciAddress) -> str | None:
    return host.sysfs.link_name(host.root.pci_device(address) / "driver")


def has_override(host: Host, address: PciAddress) -> bool:
    return host.sysfs.exists(host.root.pci_device(address) / "driver_override")


def read_override(host: Host, address: PciAddress) -> str | None:
    text = host.sysfs.read_text(host.root.pci_device(address) / "driver_override")
    return None if text in (None, "", "(null)") else text


def driver_loaded(host: Host, driver: str) -> bool:
    return host.sysfs.exists(host.root.pci_driver(driver))


def load_module(host: Host, module: str) -> None:
    """modprobe the module (argv only, never a shell); verified by the caller."""
    host.runner.run(["modprobe", module]).check()


def set_override(host: Host, address: PciAddress, driver: str | None) -> None:
    # Writing a lone newline clears the override (drivers/pci/pci-sysfs.c).
    host.sysfs.write_attr(host.root.pci_device(address) / "driver_override", (driver or "") + "\n")


def pciback_slot(host: Host, address: PciAddress, add: bool) -> None:
    attr = "new_slot" if add else "remove_slot"
    host.sysfs.write_attr(host.root.pci_driver(XEN_DRIVER) / attr, str(address))


def pciback_has_slot(host: Host, address: PciAddress) -> bool:
    slots = host.sysfs.read_text(host.root.pci_driver(XEN_DRIVER) / "slots") or ""
    return str(address) in slots.split()


def unbind(host: Host, address: PciAddress, driver: str) -> None:
    host.sysfs.write_attr(host.root.pci_driver(driver) / "unbind", str(address))


def bind(host: Host, address: PciAddress, driver: str) -> None:
    host.sysfs.write_attr(host.root.pci_driver(driver) / "bind", str(address))


def probe(host: Host, address: PciAddress) -> None:
    host.sysfs.write_attr(host.root.path("/sys/bus/pci/drivers_probe"), str(address))


def verify_driver(host: Host, address: PciAddress, expected: str | None) -> None:
    actual = current_driver(host, address)
    if actual != expected:
        want = expected or "no driver"
        raise OperationFailed(
            str(address),
            f"expected {want} after binding, found {actual or 'no driver'}",
            "the kernel did not take the change; see dmesg",
        )
