"""The whole exception hierarchy of pcipass and the exit-code table.

Every error keeps its fields (device, rule id, path, argv...) and renders as
"subject: problem (remedy)".  The CLI maps an exception class to an exit code
in exactly one place (:func:`exit_code_for`), so scripts can trust the codes:

====  =========  ==========================================================
code  name       meaning
====  =========  ==========================================================
0     OK         done, or nothing to report
1     FAILED     an operation was attempted and failed (or `check` found a
                 warning-level problem)
2     USAGE      the command line or an input file is malformed
3     REFUSED    a rule refused the request; nothing was changed
4     NOT_FOUND  a device, guest, file or root does not exist
====  =========  ==========================================================
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    NOT_FOUND = 4


class PcipassError(Exception):
    """Base of every error pcipass raises on purpose.

    ``subject`` is what the message is about (a device, a file, a guest),
    ``problem`` what is wrong and ``remedy`` what the user can do.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, subject: str, problem: str, remedy: str = "") -> None:
        self.subject = subject
        self.problem = problem
        self.remedy = remedy
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.subject}: {self.problem}" if self.subject else self.problem
        if self.remedy:
            text += f" ({self.remedy})"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "subject": self.subject,
            "problem": self.problem,
            "remedy": self.remedy,
            "exit_code": int(self.exit_code),
        }


class UsageError(PcipassError):
    """The user's input is malformed (an address, an option, a file's syntax)."""

    exit_code = ExitCode.USAGE


class AddressError(UsageError):
    """A PCI address could not be parsed; ``text`` is what was given."""

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        super().__init__(
            f"invalid PCI address {text!r}",
            problem,
            "expected DDDD:BB:DD.F or BB:DD.F in hexadecimal, e.g. 0000:09:00.0",
        )


class ConfigSyntaxError(UsageError):
    """A configuration file pcipass must edit is not in the expected syntax."""

    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(where, problem, "fix the file by hand; pcipass left it untouched")


class NotFoundError(PcipassError):
    exit_code = ExitCode.NOT_FOUND


class DeviceNotFoundError(NotFoundError):
    def __init__(self, address: str, root: str = "/") -> None:
        self.address = address
        where = "" if root in ("", "/") else f" under root {root}"
        super().__init__(
            address,
            f"no such PCI device{where}",
            "run `pcipass list` to see the devices this host has",
        )


class NoPciBusError(NotFoundError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            path,
            "no PCI bus in sysfs here",
            "is sysfs mounted, and is --root pointing at a host tree?",
        )


class GuestNotFoundError(NotFoundError):
    def __init__(self, guest: str, looked_in: Sequence[str]) -> None:
        self.guest = guest
        self.looked_in = list(looked_in)
        places = ", ".join(looked_in) if looked_in else "nowhere"
        super().__init__(
            f"guest {guest}",
            f"no configuration found (looked in {places})",
            "give the file with --config FILE or a libvirt URI with --connect",
        )


class RefusedError(PcipassError):
    """A rule refused the request.  Nothing was changed.

    ``findings`` carries the policy findings (objects with ``to_json``) that
    caused the refusal, so ``--json`` can list them.
    """

    exit_code = ExitCode.REFUSED

    def __init__(
        self,
        subject: str,
        problem: str,
        remedy: str = "",
        rule: str = "",
        findings: Sequence[object] = (),
    ) -> None:
        self.rule = rule
        self.findings = list(findings)
        prefix = f"[{rule}] " if rule else ""
        super().__init__(subject, prefix + problem, remedy)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["rule"] = self.rule
        data["findings"] = [f.to_json() if hasattr(f, "to_json") else str(f) for f in self.findings]
        return data


class OperationFailed(PcipassError):
    """An operation was started and failed; ``rolled_back`` says if it was undone."""

    def __init__(
        self, subject: str, problem: str, remedy: str = "", rolled_back: bool = False
    ) -> None:
        self.rolled_back = rolled_back
        super().__init__(subject, problem, remedy)


class SysfsWriteError(OperationFailed):
    """The kernel refused a write to a sysfs control file."""

    def __init__(self, path: str, value: str, errno_: int, strerror: str) -> None:
        self.path = path
        self.value = value
        self.errno = errno_
        super().__init__(path, f"writing {value!r} failed: {strerror} (errno {errno_})")


class CommandFailed(OperationFailed):
    """An external program (modprobe, xl, virsh...) failed."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(" ".join(self.argv[:2]), f"exited {returncode}: {detail}")


class CommandMissing(OperationFailed):
    def __init__(self, program: str, package_hint: str = "") -> None:
        self.program = program
        super().__init__(program, "program not found", package_hint)


class StateLockedError(OperationFailed):
    def __init__(self, path: str, waited: float) -> None:
        self.path = path
        super().__init__(
            path,
            f"another pcipass is running (waited {waited:.0f}s for its lock)",
            "wait for it to finish, then run again",
        )


def exit_code_for(error: BaseException) -> ExitCode:
    """The one mapping from an exception to a process exit code."""
    if isinstance(error, PcipassError):
        return error.exit_code
    return ExitCode.FAILED
