"""Host: the bundle every operation receives (root, sysfs, runner, clock).

Nothing in pcipass reads the machine through a module constant or global;
the CLI builds one Host from ``--root`` (:meth:`Host.for_command`) and passes
it down.  Tests build one over a fake tree with the fake kernel behind the
sysfs write seam.

The simulated kernel is chosen here and only here: a tree built by
``pcipass-example`` declares itself with the file :data:`SIMULATED_MARKER`,
and a command on it gets the simulated kernel (:mod:`pcipass.simkernel`, a
product package below ``host/``, never the test kit) and says so
(:attr:`Host.simulated_notice`), so nobody believes a real host was changed.
The real root ``/`` is never simulated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pcipass.host.root import HostRoot
from pcipass.host.sysfs import KernelWriter, Sysfs
from pcipass.record import dataclass, field
from pcipass.runner import CommandRunner, OfflineRunner, SubprocessRunner

#: The file by which an example tree declares that its kernel is simulated.
SIMULATED_MARKER = ".pcipass-simulated-host"


@dataclass
class Host:
    root: HostRoot
    sysfs: Sysfs
    runner: CommandRunner
    clock: Callable[[], float] = field(default=time.time)
    #: True when sysfs writes and modprobe go to the simulated kernel.
    simulated: bool = False

    @property
    def simulated_notice(self) -> str | None:
        """The line every command on a simulated kernel prints first."""
        if not self.simulated:
            return None
        return (
            f"simulated kernel: {self.root.prefix} is an example host; "
            "no device of this machine is touched"
        )

    @classmethod
    def for_command(cls, prefix: str | Path = "/") -> Host:
        """The host a command acts on: the machine for ``/``; a tree that
        carries :data:`SIMULATED_MARKER` with the simulated kernel; any other
        tree offline (read it, edit its files, run no command)."""
        root = HostRoot.at(prefix)
        if root.is_real or not (root.prefix / SIMULATED_MARKER).is_file():
            return cls.open(prefix)
        # Imported here: only an example tree pays for the simulated kernel
        # at start-up.
        from pcipass.simkernel.kernel import SimKernel
        from pcipass.simkernel.runner import SimRunner
        from pcipass.simkernel.tree import SimTree

        kernel = SimKernel(SimTree.load(root.prefix))
        host = cls.open(prefix, runner=SimRunner(kernel), writer=kernel)
        host.simulated = True
        return host

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
