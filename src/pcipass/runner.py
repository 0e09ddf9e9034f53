"""Running external programs: argument lists only, never a shell.

Operations receive a :class:`CommandRunner` so tests can inject a recording
fake, and the lab runs the real one.  User text reaches a program only as one
element of ``argv``, never through a shell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcipass.errors import CommandFailed, CommandMissing
from pcipass.record import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:
    # A protocol only documents a shape for the type checker: at run time a
    # plain base does, and importing typing cost every command ~2 ms (issue #13).
    Protocol = object


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.returncode != 0:
            raise CommandFailed(self.argv, self.returncode, self.stderr or self.stdout)
        return self


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult: ...

    def which(self, program: str) -> str | None: ...


class SubprocessRunner:
    """The real runner: ``subprocess.run`` with ``shell=False``."""

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        # Imported here, not at the top: most commands run no program, and
        # subprocess is a good part of the start-up cost (issue #13).
        import subprocess

        args = [str(a) for a in argv]
        if not args:
            raise ValueError("empty argv")
        try:
            completed = subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                env=dict(env) if env is not None else None,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as error:
            raise CommandMissing(args[0]) from error
        except subprocess.TimeoutExpired as error:
            return CommandResult(tuple(args), 124, "", f"timed out after {error.timeout}s")
        return CommandResult(tuple(args), completed.returncode, completed.stdout, completed.stderr)

    def which(self, program: str) -> str | None:
        import shutil  # with bz2/lzma: only when a program is looked for

        return shutil.which(program)


class OfflineRunner:
    """For ``--root DIR`` (an image or a copied tree): programs would act on
    the machine pcipass runs on, not on DIR, so none is run."""

    def __init__(self, root: str) -> None:
        self.root = root

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> CommandResult:
        from pcipass.errors import OperationFailed

        raise OperationFailed(
            " ".join(str(a) for a in argv[:2]),
            f"not run: --root {self.root} is not the running system",
            "run it on the host itself, or use --persist to prepare an image",
        )

    def which(self, program: str) -> str | None:
        return None
