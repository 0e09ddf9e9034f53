"""The command runner of a simulated host: modprobe and the toolstacks.

``modprobe`` acts on the simulated kernel (:mod:`pcipass.simkernel.modprobe`);
xl, xm and virsh remember what each running guest holds
(:mod:`pcipass.simkernel.toolstack`); any other program is recorded and
answered as "not found" unless a test provides it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pcipass.runner import CommandResult
from pcipass.simkernel.kernel import SimKernel
from pcipass.simkernel.modprobe import run_modprobe
from pcipass.simkernel.toolstack import SimToolstack


class SimRunner:
    """A CommandRunner answering ``modprobe`` through the simulated kernel and
    recording every other command (optionally with canned answers)."""

    def __init__(self, kernel: SimKernel) -> None:
        self.kernel = kernel
        self.calls: list[tuple[str, ...]] = []
        self.answers: dict[str, CommandResult] = {}
        self.programs: set[str] = {"modprobe"}
        # xl, xm and virsh remember what each running guest holds (hotplug truth).
        self.toolstack = SimToolstack()

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        program = os.path.basename(args[0])
        if program == "modprobe":
            return run_modprobe(self.kernel, args)
        for key, answer in self.answers.items():
            if " ".join(args).startswith(key):
                return CommandResult(args, answer.returncode, answer.stdout, answer.stderr)
        if program not in self.programs:
            return CommandResult(args, 127, "", f"{program}: not found\n")
        handled = self.toolstack.handle(args)
        if handled is not None:
            return handled
        return CommandResult(args, 0, "", "")

    def which(self, program: str) -> str | None:
        return f"/usr/bin/{program}" if program in self.programs else None
