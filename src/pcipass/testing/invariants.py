"""The one invariant every interrupted command must end in, checked on a tree.

After any command — finished, failed, interrupted by a signal, or killed and
then recovered — the host is either *exactly as before* or *fully done*:

* every device's driver link, ``driver_override`` and pciback slot,
* every file under the root that pcipass may edit (everything but the state
  directory, proc and the stub drivers' own directories, which a module
  load creates and nothing unloads),
* the ledger's hidden records and owners,

* every guest configuration file (byte for byte: they are files under the
  root like any other),
* and for live attach/detach the toolstack's truth, handed in as ``live``: a
  callable returning facts such as ``"win7 holds 0000:09:00.0"`` (from the
  fake toolstack, QEMU's device list, libvirt's live and persistent XML),

agree with one of the two reference states captured with :func:`capture`
(*together*: a file as before with the device in the running guest is
neither); no owner is left "maybe in guest G"; the journal holds no open
intent and no ``*.pcipass-tmp`` file is left anywhere.  Used by the crash
loops (testing/crash.py) of hide/unhide, attach/detach and guard-install.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pcipass.host.root import HostRoot
from pcipass.record import dataclass
from pcipass.state.ledger import Ledger
from pcipass.testing.fakehost import snapshot

# What a module load creates and nothing undoes (modprobe -r is not pcipass's),
# and the state directory, compared through the ledger instead of its bytes.
NOT_COMPARED = (
    "var/lib/pcipass",
    "proc/modules",
    "sys/module",
    "sys/bus/pci/drivers/pciback",
    "sys/bus/pci/drivers/vfio-pci",
    ".fake-reset-methods",  # the simulated kernel's own memory of each device's supported resets
)
TEMP_SUFFIX = ".pcipass-tmp"

#: The toolstack's truth: facts like "GUEST holds BDF" (see the module docstring).
LiveTruth = Callable[[], "frozenset[str]"]


@dataclass(frozen=True)
class HostState:
    files: dict[str, object]
    slots: frozenset[str]
    hidden: tuple[tuple[str, str, str | None, str], ...]
    owners: tuple[tuple[str, str, bool], ...]  # (address, guest, "maybe in guest")
    live: frozenset[str] = frozenset()

    def differences(self, other: HostState) -> list[str]:
        diff = sorted(
            key
            for key in set(self.files) | set(other.files)
            if self.files.get(key) != other.files.get(key)
        )
        if self.slots != other.slots:
            diff.append(f"pciback slots {sorted(self.slots)} != {sorted(other.slots)}")
        if self.hidden != other.hidden:
            diff.append(f"ledger hidden {self.hidden} != {other.hidden}")
        if self.owners != other.owners:
            diff.append(f"ledger owners {self.owners} != {other.owners}")
        if self.live != other.live:
            diff.append(f"toolstack {sorted(self.live)} != {sorted(other.live)}")
        return diff


def capture(base: Path, live: LiveTruth | None = None) -> HostState:
    """The comparable state of the tree at ``base`` (see the module docstring)."""
    slots_file = base / "sys/bus/pci/drivers/pciback/slots"
    slots = frozenset(slots_file.read_text().split()) if slots_file.is_file() else frozenset()
    with Ledger.open(HostRoot.at(base), readonly=True) as ledger:
        hidden = tuple(
            (r.address, r.stub_driver, r.original_driver, r.how) for r in ledger.hidden()
        )
        owners = tuple((r.address, r.guest, r.uncertain) for r in ledger.owners())
    truth = live() if live is not None else frozenset()
    return HostState(snapshot(base, skip=NOT_COMPARED), slots, hidden, owners, truth)


def temp_files(base: Path) -> list[str]:
    """Every ``*.pcipass-tmp`` left anywhere under ``base``."""
    found = []
    for directory, _dirs, files in os.walk(base):
        found += [
            os.path.relpath(os.path.join(directory, n), base)
            for n in files
            if n.endswith(TEMP_SUFFIX)
        ]
    return sorted(found)


def open_intents(base: Path) -> list[str]:
    with Ledger.open(HostRoot.at(base), readonly=True) as ledger:
        return [f"op {op.id} ({op.kind})" for op in ledger.open_operations()]


def check_invariant(
    base: Path, before: HostState, done: HostState, live: LiveTruth | None = None
) -> str:
    """Assert the invariant; return ``"before"`` or ``"done"`` (which one holds)."""
    problems = []
    leftovers = temp_files(base)
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    intents = open_intents(base)
    if intents:
        problems.append(f"journal intents still open: {intents}")
    now = capture(base, live)
    maybe = [f"{address} maybe in {guest}" for address, guest, uncertain in now.owners if uncertain]
    if maybe:
        problems.append(f"owners left unsettled: {maybe}")
    as_before, as_done = now.differences(before), now.differences(done)
    if as_before and as_done:
        problems.append(
            f"neither as before nor done; differs from before in {as_before}, "
            f"from done in {as_done}"
        )
    if problems:
        raise AssertionError("; ".join(problems))
    return "before" if not as_before else "done"
