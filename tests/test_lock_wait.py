"""Waiting for the state lock: a command says once what it waits for, and a
live hotplug does not keep the lock while its toolstack works (#19 item 7)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcipass.address import PciAddress
from pcipass.backend import Backend
from pcipass.errors import StateLockedError
from pcipass.host.root import HostRoot
from pcipass.ops.attach import attach, detach
from pcipass.ops.hide import hide_now
from pcipass.ops.recover import recover
from pcipass.runner import CommandResult
from pcipass.state import identity
from pcipass.state.identity import describe_process
from pcipass.state.ledger import Ledger
from pcipass.state.lock import HOLDER_NAME, StateLock, read_holder
from pcipass.testing.crash import KillAt, run_stopped
from pcipass.testing.example import build_rhel5_xen
from pcipass.testing.harness import Lab

NIC = PciAddress.parse("0000:09:00.0")


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    monkeypatch.setattr(identity._Process, "words", ("pcipass",))
    monkeypatch.setattr(identity._Process, "notice", None)
    describe_process(["pcipass", "hide", "--now", "09:00.0"], seen.append)
    yield seen


def test_a_waiting_command_names_the_holder_once(tmp_path: Path) -> None:
    """A real second pcipass, stopped while it holds the lock (inside hide --now)."""
    base = tmp_path / "host"
    build_rhel5_xen(base).mark_simulated()
    probe = tmp_path / "probe"
    shutil.copytree(base, probe, symlinks=True)
    holding = ["hide", "--now", "09:00.0", "--root"]
    from pcipass.cli.main import main

    with KillAt(0) as counting:
        assert main([*holding, str(probe)]) == 0
    after_lock = counting.seen.index("lock<") + 2  # the first event with the lock held
    first = run_stopped([*holding, str(base)], after_lock, workdir=tmp_path)
    assert first.stopped, first.stderr()
    holder = read_holder(HostRoot.at(base))
    assert holder is not None and holder.pid == first.pid
    second = subprocess.Popen(
        [sys.executable, "-m", "pcipass", "hide", "--now", "0a:04.1", "--root", str(base)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert second.stderr is not None
    lines = []
    for line in second.stderr:  # blocks until the waiting command has spoken
        lines.append(line)
        if "waiting for the state lock" in line:
            break
    wait_line = lines[-1].rstrip("\n")
    assert wait_line.startswith(f"pcipass: waiting for the state lock held by pid {first.pid} (")
    assert f"pcipass hide --now 09:00.0 --root {base}, since " in wait_line
    assert first.send(signal.SIGCONT) == 0, first.stderr()
    rest = second.stderr.read()
    assert second.wait() == 0, rest
    everything = "".join(lines) + rest
    assert everything.count("waiting for the state lock") == 1
    assert read_holder(HostRoot.at(base)) is None  # released: no record left


@pytest.mark.parametrize("record", ["missing", "damaged", "dead pid", "not an object"])
def test_a_stale_or_missing_holder_record_gives_a_plain_message(
    tmp_path: Path, notices: list[str], record: str
) -> None:
    root = HostRoot.at(tmp_path)
    holder_file = root.state_dir / HOLDER_NAME
    with StateLock(root):
        assert holder_file.is_file()
        if record == "missing":
            holder_file.unlink()
        elif record == "damaged":
            holder_file.write_bytes(b"{not json\x00")
        elif record == "not an object":
            holder_file.write_text("[1, 2]")
        else:
            gone = subprocess.Popen(["true"])
            gone.wait()
            holder_file.write_text(f'{{"pid": {gone.pid}, "command": "pcipass x", "since": 0}}')
        with pytest.raises(StateLockedError):
            StateLock(root, timeout=0).acquire()
    assert notices == ["waiting for the state lock held by another pcipass"]


def test_a_live_holder_record_is_named(tmp_path: Path, notices: list[str]) -> None:
    root = HostRoot.at(tmp_path)
    with StateLock(root), pytest.raises(StateLockedError):
        StateLock(root, timeout=0).acquire()
    assert len(notices) == 1
    assert notices[0].startswith(f"waiting for the state lock held by pid {os.getpid()} (")
    assert "(pcipass hide --now 09:00.0, since " in notices[0]


class ToolstackWatcher:
    """The xm of the lab, and a look at the world while xm pci-attach/detach runs:
    is the state lock free, and what does a recover run meanwhile do?"""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.inner = lab.runner
        self.seen: list[str] = []

    def run(self, argv: list[str], **kwargs: object) -> CommandResult:
        if argv[1:2] in (["pci-attach"], ["pci-detach"]):
            try:
                with StateLock(self.lab.host.root, timeout=0):
                    self.seen.append("lock free")
            except StateLockedError:
                self.seen.append("lock held")
            report = recover(self.lab.host)
            self.seen += [line for line in report if "in progress" in line]
            with Ledger.open(self.lab.host.root, readonly=True) as ledger:
                owner = ledger.owner(NIC)
                self.seen.append(f"owner {owner.guest if owner else None}")
                self.seen.append(f"{len(ledger.open_operations())} open")
        return self.inner.run(argv)

    def which(self, program: str) -> str | None:
        return self.inner.which(program)


@pytest.mark.parametrize("action", ["attach", "detach"])
def test_the_state_lock_is_free_while_xm_hot_plugs_and_recover_leaves_it_alone(
    rhel5: Lab, action: str
) -> None:
    hide_now(rhel5.host, [NIC], Backend.PCIBACK)
    rhel5.runner.programs.add("xm")
    if action == "detach":
        attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
    watcher = ToolstackWatcher(rhel5)
    rhel5.host.runner = watcher  # type: ignore[assignment]
    if action == "attach":
        result = attach(rhel5.host, NIC, "rhel5pv", accept_pv_dma_risk=True, live=True)
        assert result.live == "hot-plugged"
    else:
        assert detach(rhel5.host, NIC, "rhel5pv", live=True).live == "unplugged"
    assert watcher.seen[0] == "lock free"
    assert "in progress" in watcher.seen[1] and f"({action})" in watcher.seen[1]
    assert watcher.seen[2:] == ["owner rhel5pv", "1 open"]
    with Ledger.open(rhel5.host.root, readonly=True) as ledger:
        owner = ledger.owner(NIC)
        assert ledger.open_operations() == []
    held = str(NIC) in rhel5.runner.toolstack.holds("rhel5pv")
    assert held == (action == "attach")
    assert (owner is not None and not owner.uncertain) == held
    assert recover(rhel5.host) == []
