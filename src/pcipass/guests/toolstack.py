"""One interface to every toolstack pcipass hot-plugs through.

``xl``/``xm`` (Xen), ``virsh`` (a libvirt-managed guest found by its file),
a libvirt-python domain (``--connect URI``) and QMP (a plain QEMU) differ in
how a device goes in and out of a running guest, but pcipass needs the same
three things from each:

* :meth:`Toolstack.hotplug`: add or remove one device from the running guest;
* :meth:`Toolstack.holds`: does the running guest hold the device now
  (``True``/``False``, or ``None`` when the toolstack cannot tell);
* :meth:`Toolstack.describe`: the command, as the user would type it.

A failed hotplug is one of two errors, and the difference decides what the
ledger may believe: :class:`HotplugRefused` (the toolstack said no; nothing
changed) or :class:`HotplugUnknown` (no answer, timeout, connection lost:
the device may or may not be in the guest now).  Commands are argument
lists for the one runner, never a shell.

* xm (RHEL 5, xend): ``xm pci-attach GUEST BDF`` / ``xm pci-detach``; ``xm pci-list``
* xl (xl(1)): ``xl pci-attach GUEST BDF`` / ``xl pci-detach``; ``xl pci-list``;
  ``xl save``/``restore``/``migrate`` for pcipass's safe save (PP003)
* virsh (virsh(1)): ``virsh -c URI attach-device GUEST FILE --live`` /
  ``detach-device``, FILE holding one ``<hostdev>``; ``virsh dumpxml`` to ask
* libvirt-python: ``attachDeviceFlags``/``detachDeviceFlags`` with
  ``VIR_DOMAIN_AFFECT_LIVE``; the live ``XMLDesc`` to ask
* QMP: ``device_add vfio-pci`` / ``device_del`` + ``DEVICE_DELETED``;
  ``qom-list``/``qom-get host`` over ``/machine/peripheral`` to ask
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pcipass.address import PciAddress
from pcipass.errors import (
    AddressError,
    CommandMissing,
    OperationFailed,
    PcipassError,
    RefusedError,
    UsageError,
)
from pcipass.guests.libvirt_xml import hostdev_xml, parse_domain_xml
from pcipass.host.context import Host
from pcipass.host.root import HostRoot
from pcipass.patterns import lazy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final

    from pcipass.guests.qmp import QmpClient

# What xl says when a domain built without an IOMMU context is given a device
# (libxl_pci.c pci_add_dm_done).
XC_ASSIGN_REFUSAL: Final = "xc_assign_device failed: Operation not supported"

# The runner's answer when a command overran its timeout (pcipass.runner).
_TIMED_OUT_STATUS: Final = 124

ACPIPHP_HINT: Final = (
    "the guest did not release the device (is acpiphp loaded in the guest? "
    "see `pcipass guest-setup`)"
)


class HotplugRefused(OperationFailed):
    """The toolstack refused: the running guest is as it was."""


class HotplugUnknown(OperationFailed):
    """The outcome is unknown: the device may or may not be in the guest."""


class Toolstack:
    """Base of the five toolstacks; ``kind`` is what the ledger records."""

    kind = ""

    def __init__(self, guest: str) -> None:
        self.guest = guest

    def describe(self, address: PciAddress, action: str) -> list[str]:
        raise NotImplementedError

    def hotplug(self, address: PciAddress, action: str) -> None:
        raise NotImplementedError

    def holds(self, address: PciAddress) -> bool | None:
        raise NotImplementedError

    def reference(self) -> str:
        """How to reach this guest again (kept with a "maybe" owner in the ledger)."""
        return self.guest


def command_line_operand(program: str, guest: str) -> str:
    """``guest`` as an operand of ``program``'s command line, or a usage error.

    xl, xm and virsh read a word starting with ``-`` as an option wherever it
    stands (``xl pci-attach -x 09:00.0``), and none of them takes ``--`` before
    a domain name in every version: such a name is refused here, before any
    program runs, rather than passed where it would be misread.
    """
    if guest.startswith("-"):
        raise UsageError(
            f"guest {guest!r}",
            f"a name starting with '-' would be read as an option by {program}",
            "rename the guest, or change only its configuration (attach without --live)",
        )
    return guest


# --- xl / xm ---------------------------------------------------------------

_BDF_TEXT = lazy(r"\b(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\b")
# xm pci-list prints "VSlt domain bus slot func" as hex columns.
_XM_ROW = lazy(r"^\s*0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-7])\s*$")


def parse_pci_list(output: str) -> set[PciAddress]:
    """The devices ``xl pci-list`` or ``xm pci-list`` shows for a domain."""
    found: set[PciAddress] = set()
    for line in output.splitlines():
        row = _XM_ROW.match(line.lower())
        if row:
            domain, bus, slot, func = (int(x, 16) for x in row.groups())
            text = f"{domain:04x}:{bus:02x}:{slot:02x}.{func:x}"
            try:
                found.add(PciAddress.parse(text))
            except AddressError:
                continue
            continue
        for match in _BDF_TEXT.finditer(line):
            try:
                found.add(PciAddress.parse(match.group(0)))
            except AddressError:
                continue
    return found


def run_checked(host: Host, argv: list[str], *, timeout: float = 300.0) -> str:
    """Run a toolstack command; its stdout, or the two hotplug errors."""
    if host.runner.which(argv[0]) is None and not host.is_real:
        raise HotplugRefused(
            argv[0],
            "not run: the toolstack is not available for this root",
            "run the live step on the host itself, or leave out --live",
        )
    result = host.runner.run(list(argv), timeout=timeout)
    if result.returncode == 0:
        return result.stdout
    output = (result.stderr or result.stdout).strip() or "no message"
    problem = f"{' '.join(argv)} exited {result.returncode}:\n{output}"
    if result.returncode == _TIMED_OUT_STATUS and "timed out" in output:
        raise HotplugUnknown(
            " ".join(argv[:2]), problem, "pcipass asks the toolstack what happened"
        )
    remedy = "nothing was changed in the running guest"
    if XC_ASSIGN_REFUSAL in output:
        remedy = (
            "the running domain was built without passthrough; "
            'with passthrough="enabled" in its configuration, restart it, then attach'
        )
    raise HotplugRefused(" ".join(argv[:2]), problem, remedy)


class XenCli(Toolstack):
    """``xl`` or ``xm``: the program is the toolstack's name."""

    def __init__(self, host: Host, program: str, guest: str) -> None:
        super().__init__(command_line_operand(program, guest))
        self.host = host
        self.kind = program

    def describe(self, address: PciAddress, action: str) -> list[str]:
        return [self.kind, f"pci-{action}", self.guest, str(address)]

    def hotplug(self, address: PciAddress, action: str) -> None:
        run_checked(self.host, self.describe(address, action))

    def lifecycle(self, verb: str, *operands: str) -> list[str]:
        """``save GUEST FILE``, ``migrate GUEST HOST`` (the guest is the first
        operand) or ``restore FILE``: run it, return its argument list."""
        if verb not in ("save", "migrate", "restore"):
            raise ValueError(verb)
        argv = [self.kind, verb, *operands]
        run_checked(self.host, argv)
        return argv

    def holds(self, address: PciAddress) -> bool | None:
        if self.host.runner.which(self.kind) is None and not self.host.is_real:
            return None
        result = self.host.runner.run([self.kind, "pci-list", self.guest], timeout=60.0)
        if result.returncode != 0:
            return None
        return address in parse_pci_list(result.stdout)


# --- libvirt ------------------------------------------------------------------


def _xml_holds(xml: bytes, display: str, address: PciAddress) -> bool | None:
    try:
        domain = parse_domain_xml(xml, display)
    except PcipassError:
        return None
    return any(d.covers(address) for d in domain.devices())


# virsh domstate's words for a domain with no running guest (virsh(1)).
_STOPPED_STATES: Final = frozenset({"shut off", "crashed"})


class Virsh(Toolstack):
    """A libvirt guest known by its file: ``virsh -c URI``."""

    kind = "libvirt"

    def __init__(self, host: Host, uri: str, guest: str, *, xen: bool) -> None:
        super().__init__(command_line_operand("virsh", guest))
        self.host = host
        self.uri = uri
        self.driver = "xen" if xen else "vfio"

    def describe(self, address: PciAddress, action: str) -> list[str]:
        verb = "attach-device" if action == "attach" else "detach-device"
        return ["virsh", "-c", self.uri, verb, self.guest, "FILE", "--live"]

    def hotplug(self, address: PciAddress, action: str) -> None:
        import tempfile  # imported where used: start-up cost (issue #13)

        argv = self.describe(address, action)
        with tempfile.TemporaryDirectory(prefix="pcipass-") as directory:
            # virsh reads the device from a file (virsh(1) attach-device); the
            # directory is private (mode 0700) and removed afterwards.
            path = os.path.join(directory, f"hostdev-{address}.xml".replace(":", "_"))
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(hostdev_xml(address, self.driver, managed=False) + "\n")
            run_checked(self.host, [path if part == "FILE" else part for part in argv])

    def holds(self, address: PciAddress) -> bool | None:
        if self.host.runner.which("virsh") is None and not self.host.is_real:
            return None
        state = self.host.runner.run(["virsh", "-c", self.uri, "domstate", self.guest])
        if state.returncode == 0 and state.stdout.strip() in _STOPPED_STATES:
            # dumpxml of a stopped domain is its persistent definition, which
            # says nothing about a running guest: there is none.
            return False
        argv = ["virsh", "-c", self.uri, "dumpxml", self.guest]
        result = self.host.runner.run(argv, timeout=60.0)
        if result.returncode != 0:
            return None
        return _xml_holds(result.stdout.encode(), f"virsh dumpxml {self.guest}", address)


def libvirt_module() -> Any:
    """libvirt-python, quiet (pcipass reports libvirt's errors itself)."""
    try:
        import libvirt
    except ImportError as error:
        raise CommandMissing(
            "libvirt-python", "pip install libvirt-python (needs libvirt-dev)"
        ) from error
    # libvirt prints every error on stderr by default.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def connected_toolstack(uri: str, guest: str) -> LibvirtDomainLive | None:
    """The live toolstack of ``guest`` on the libvirt connection ``uri`` (for
    ``recover``); None when it cannot be reached.  The connection stays open
    as long as the returned object lives."""
    try:
        libvirt = libvirt_module()
        conn = libvirt.open(uri)
        dom = conn.lookupByName(guest)
        xml = str(dom.XMLDesc(0)).encode()
    except Exception:
        return None
    try:
        xen = parse_domain_xml(xml, f"{uri} domain {guest}").hypervisor == "xen"
    except PcipassError:
        return None
    toolstack = LibvirtDomainLive(libvirt, uri, dom, guest, xen=xen)
    toolstack.connection = conn
    return toolstack


class LibvirtDomainLive(Toolstack):
    """A domain reached through libvirt-python (``--connect URI``)."""

    kind = "libvirt-connect"

    def __init__(self, libvirt: Any, uri: str, domain: Any, guest: str, *, xen: bool) -> None:
        super().__init__(guest)
        self.libvirt = libvirt
        self.uri = uri
        self.domain = domain
        self.driver = "xen" if xen else "vfio"
        self.connection: Any = None  # kept open by connected_toolstack

    def describe(self, address: PciAddress, action: str) -> list[str]:
        return [f"libvirt {action}DeviceFlags({self.guest}, VIR_DOMAIN_AFFECT_LIVE)"]

    def reference(self) -> str:
        return self.uri

    def hotplug(self, address: PciAddress, action: str) -> None:
        xml = hostdev_xml(address, self.driver, managed=False)
        call = (
            self.domain.attachDeviceFlags if action == "attach" else self.domain.detachDeviceFlags
        )
        try:
            call(xml, self.libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self.libvirt.libvirtError as error:
            raise HotplugRefused(
                f"libvirt {action} --live", str(error.get_error_message() or error), ""
            ) from error

    def holds(self, address: PciAddress) -> bool | None:
        try:
            if not self.domain.isActive():
                return False
            xml = str(self.domain.XMLDesc(0)).encode()
        except self.libvirt.libvirtError:
            return None
        return _xml_holds(xml, f"{self.uri} domain {self.guest}", address)


# --- QMP ----------------------------------------------------------------------


def qmp_device_id(address: PciAddress) -> str:
    return "pcipass-" + str(address).replace(":", "-").replace(".", "-")


class Qmp(Toolstack):
    """A plain QEMU through its QMP socket (``socket_path`` as this process reaches it)."""

    kind = "qemu"

    def __init__(
        self,
        socket_path: str,
        shown_path: str,
        guest: str,
        *,
        timeout: float,
        opener: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(guest)
        self.socket_path = socket_path
        self.shown_path = shown_path
        self.timeout = timeout
        self.opener = opener
        self.device_id: str | None = None
        # attach --rom/--rom-bar: vfio-pci's romfile (a path QEMU opens) and rombar (0/1).
        self.rom_properties: dict[str, object] = {}

    @classmethod
    def at(cls, root: HostRoot, shown_path: str, guest: str, *, timeout: float) -> Qmp:
        """QEMU's socket as its command line names it (``shown_path``).

        An absolute path is a path of the host under ``root``: every
        connection opens it through the confined resolver, so a link on the
        way that leads out of the root is refused (LinkOutOfRoot), never
        followed (#11).  A relative one is QEMU's own business: used as given.
        """
        if not shown_path.startswith("/"):
            return cls(shown_path, shown_path, guest, timeout=timeout)
        files = root.files

        def opener() -> int:
            return files.open_socket(shown_path)

        return cls(str(root.path(shown_path)), shown_path, guest, timeout=timeout, opener=opener)

    def _client(self) -> QmpClient:
        from pcipass.guests.qmp import QmpClient

        return QmpClient(self.socket_path, timeout=self.timeout, opener=self.opener)

    def describe(self, address: PciAddress, action: str) -> list[str]:
        if action == "attach":
            extra = "".join(f",{key}={value}" for key, value in self.rom_properties.items())
            return [f"QMP device_add vfio-pci host={address}{extra} ({self.shown_path})"]
        return [f"QMP device_del host={address}, then wait for DEVICE_DELETED ({self.shown_path})"]

    def reference(self) -> str:
        return f"qmp:{self.shown_path}"

    def _find(self, client: Any, address: PciAddress) -> str | None:
        """The qdev id of the vfio-pci device holding ``address`` (started with
        the guest or added later): every peripheral's ``host`` is asked."""
        from pcipass.guests.qmp import QmpRefused, expect_list_of_objects, expect_text

        children = expect_list_of_objects(
            "qom-list", client.execute("qom-list", {"path": "/machine/peripheral"})
        )
        for child in children:
            name = child.get("name")
            if child.get("type") != "child<vfio-pci>" or not isinstance(name, str):
                continue
            path = f"/machine/peripheral/{name}"
            try:
                text = expect_text(
                    "qom-get", client.execute("qom-get", {"path": path, "property": "host"})
                )
            except QmpRefused:
                continue
            try:
                if PciAddress.parse(text) == address:
                    return name
            except AddressError:
                continue
        return None

    def hotplug(self, address: PciAddress, action: str) -> None:
        from pcipass.guests.qmp import QmpNoAnswer, QmpRefused

        sent = False  # until device_add/device_del is sent, nothing can have changed
        try:
            with self._client() as client:
                found = self._find(client, address)
                if action == "attach":
                    if found is not None:
                        return
                    ident = qmp_device_id(address)
                    sent = True
                    client.execute(
                        "device_add",
                        {
                            "driver": "vfio-pci",
                            "host": str(address),
                            "id": ident,
                            **self.rom_properties,
                        },
                    )
                    self.device_id = ident
                    return
                if found is None:
                    return
                sent = True
                client.execute("device_del", {"id": found})
                self.device_id = found
                # The guest must eject it first (ACPI): wait for QEMU to say so.
                try:
                    client.wait_event(
                        "DEVICE_DELETED", match={"device": found}, timeout=self.timeout
                    )
                except QmpNoAnswer as error:
                    raise HotplugUnknown(
                        f"QMP device_del {found}",
                        f"{ACPIPHP_HINT}; no DEVICE_DELETED within {self.timeout:g} s",
                        "",
                    ) from error
        except QmpRefused as error:
            raise HotplugRefused(error.subject, error.problem, "nothing was changed") from error
        except QmpNoAnswer as error:
            if not sent:
                raise HotplugRefused(error.subject, error.problem, "nothing was sent") from error
            raise HotplugUnknown(error.subject, error.problem, error.remedy) from error
        except HotplugUnknown:
            raise
        except OperationFailed as error:  # no connection: nothing was sent
            raise HotplugRefused(error.subject, error.problem, error.remedy) from error
        except RefusedError as error:
            # The socket turned into a link out of the root after it was
            # checked: never connected, so nothing was sent.
            raise HotplugRefused(error.subject, error.problem, error.remedy) from error

    def holds(self, address: PciAddress) -> bool | None:
        try:
            with self._client() as client:
                return self._find(client, address) is not None
        except PcipassError:
            return None
