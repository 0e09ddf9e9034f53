"""Host: the bundle every operation receives (root, sysfs, runner, clock).

Nothing in pcipass reads the machine through a module constant or global;
the CLI builds one Host from ``--root`` and passes it down.  Tests build one
over a fake tree with the fake kernel behind the sysfs write seam.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pcipass.host.root import HostRoot
from pcipass.host.sysfs import KernelWriter, Sysfs
from pcipass.runner import CommandRunner, OfflineRunner, SubprocessRunner


@dataclass
class Host:
    root: HostRoot
    sysfs: Sysfs
    runner: CommandRunner
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def open(
        cls,
        prefix: str | Path = "/",
        *,
        runner: CommandRunner | None = None,
        writer: KernelWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Host:
        root = HostRoot.at(prefix)
        if runner is None:
            runner = SubprocessRunner() if root.is_real else OfflineRunner(str(root.prefix))
        return cls(root, Sysfs(root, writer), runner, clock)

    @property
    def is_real(self) -> bool:
        return self.root.is_real

    @property
    def is_xen_dom0(self) -> bool:
        caps = self.sysfs.read_text(self.root.path("/proc/xen/capabilities"))
        if caps is not None and "control_d" in caps:
            return True
        return self.sysfs.read_text(self.root.path("/sys/hypervisor/type")) == "xen"
