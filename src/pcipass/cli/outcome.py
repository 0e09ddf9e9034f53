"""How a command's failure reaches the user: one line on stderr, or the JSON
error object (docs/json.md), and the exit code of docs/cli.md."""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Sequence

from pcipass.errors import PcipassError, exit_code_for


class HostOSError(PcipassError):
    """An OSError no layer turned into a pcipass error: still one line, exit 1,
    and in JSON the error object with ``"error": "OSError"`` and ``errno``."""

    def __init__(self, error: OSError) -> None:
        self.errno_name = errno.errorcode.get(error.errno or 0, "")
        remedy = ""
        if error.errno in (errno.EACCES, errno.EPERM):
            remedy = "pcipass changes the host as root; run it with sudo"
        subject = str(error.filename) if error.filename is not None else ""
        super().__init__(subject, error.strerror or str(error), remedy)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["error"] = "OSError"
        data["errno"] = self.errno_name
        return data


def report_error(error: PcipassError, *, as_json: bool) -> int:
    code = exit_code_for(error)
    if as_json:
        from pcipass.cli.render import print_json

        print_json(error.to_json())
    else:
        print(f"pcipass: {error.render()}", file=sys.stderr)
        for finding in getattr(error, "findings", []):
            render = getattr(finding, "render", None)
            if callable(render):
                print(f"  {render()}", file=sys.stderr)
    return int(code)


def report_interrupt(signum: int, *, as_json: bool, undone: Sequence[str] | None = None) -> int:
    """A signal ended the command: exit 128 + signal number (130 for SIGINT,
    143 for SIGTERM, as shells report it); ``undone`` lists what a transaction
    rolled back (empty: it had changed nothing; None: no transaction said).
    The JSON shape is the error object of docs/json.md plus ``signal``/``undone``."""
    name = signal.Signals(signum).name
    code = 128 + int(signum)
    problem = f"interrupted by {name}"
    remedy = "run `pcipass status`; `pcipass recover` rolls back an operation left half-done"
    if as_json:
        from pcipass.cli.render import print_json

        print_json(
            {
                "error": "Interrupted",
                "subject": "pcipass",
                "problem": problem,
                "remedy": remedy,
                "exit_code": code,
                "signal": name,
                "undone": list(undone or ()),
            }
        )
    else:
        for step in undone or ():
            print(f"pcipass: undone: {step}", file=sys.stderr)
        if undone is not None and not undone:
            print("pcipass: nothing had been changed", file=sys.stderr)
        print(f"pcipass: {problem} ({remedy})", file=sys.stderr)
    return code
