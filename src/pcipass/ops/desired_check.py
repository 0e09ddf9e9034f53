"""What ``check`` says about the desired state: drift (PP112) and address forms (PP113).

``check`` without arguments compares /etc/pcipass/pcipass.toml with the
ledger and the host both ways (ops/desired.py's plan, as warnings), repeats
PP114 when a declared device cannot be found, and warns when a device the
file names by identity is *also* hidden by address: the modprobe ``hide=``
option, the kernel command line (configured or running), or a driverctl
override.  After the buses renumber, that address names another card, and
the address form takes it at boot before ``apply --boot`` can do better.
"""

from __future__ import annotations

from pcipass.address import PciAddress
from pcipass.errors import AddressError, NotFoundError, PcipassError
from pcipass.host.context import Host
from pcipass.ops.desired_file import DESIRED_PATH, load
from pcipass.policy.verdict import Finding, Severity

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipass.ops.desired import DesiredPlan

DRIVERCTL_DIR = "/etc/driverctl.d"


def desired_findings(host: Host, path: str = DESIRED_PATH) -> list[Finding]:
    try:
        state = load(host, path)
    except NotFoundError:
        return []  # no desired state: nothing to compare
    except PcipassError as error:
        return [Finding("PP112", Severity.WARN, path, error.problem, error.remedy)]
    # The planner (and the ledger, pins...) only when there is a desired state:
    # most hosts have none, and every check paid for it (issue #13).
    from pcipass.ops.desired import make_plan

    plan = make_plan(host, state)
    return plan.findings() + address_forms(host, plan)


def _bdf_hides(host: Host) -> dict[PciAddress, str]:
    """Every address hidden by address at boot, and where."""
    from pcipass.persist import cmdline
    from pcipass.persist.modprobe.installed import collect_modprobe_files, read_persistent_hides

    found: dict[PciAddress, str] = {}
    modprobe = read_persistent_hides(collect_modprobe_files(host.root))
    for entry in modprobe.entries:
        for address in entry.addresses:
            found.setdefault(address, f"{entry.path}:{entry.line} ({entry.module} {entry.param}=)")
    configured = cmdline.read_configured(
        cmdline.collect_grub_files(host.root), xen=host.is_xen_dom0
    )
    for hides in (configured.hides, cmdline.read_running(host.root)):
        for token in hides.tokens:
            for address in token.addresses:
                found.setdefault(address, f"{token.where} ({token.param}=)")
    for name in host.root.files.list_dir(DRIVERCTL_DIR):
        # driverctl keeps one file per override, named pci-DDDD:BB:SS.F.
        try:
            address = PciAddress.parse(name.removeprefix("pci-"))
        except AddressError:
            continue
        found.setdefault(address, f"{DRIVERCTL_DIR}/{name} (driverctl)")
    return found


def address_forms(host: Host, plan: DesiredPlan) -> list[Finding]:
    """PP113: a device named by identity is also hidden by address."""
    bdf = _bdf_hides(host)
    if not bdf:
        return []
    from pcipass.state.ledger import Ledger

    with Ledger.open(host.root, readonly=True) as ledger:
        pinned_at = {p.name: PciAddress.parse(p.address) for p in ledger.pins()}
    result: list[Finding] = []
    for item in plan.resolved:
        places = [item.address]
        if item.device.match is None and item.device.name in pinned_at:
            places.append(pinned_at[item.device.name])
        for address in dict.fromkeys(places):
            if address not in bdf:
                continue
            moved = (
                ""
                if address == item.address
                else f" (where it was pinned; it is at {item.address} now)"
            )
            result.append(
                Finding(
                    "PP113",
                    Severity.WARN,
                    str(address),
                    f"{item.device.label} is declared by identity in {plan.path} and also hidden "
                    f"by address{moved} in {bdf[address]}: when the buses renumber, that address "
                    "names another card and the boot hides it",
                    "remove the address form (pcipass unhide --persist ADDRESS, driverctl "
                    "unset-override) and let `pcipass apply --boot` (boot-install) hide it; keep "
                    "it only where the stub must claim the device before any driver (RHEL 5)",
                )
            )
    return result
