"""Standard output that cannot lose the exit status.

Three things go wrong when pcipass writes its answer, and none of them may
change what the command did or hide its exit code:

* the reader went away (``pcipass check X | head -1``): EPIPE.  The command
  still finishes and exits with its own status, so ``set -o pipefail`` sees a
  refusal (3) as a refusal, not as success or as Python's 120;
* the output cannot be written (``pcipass list >/dev/full``): ENOSPC, EIO.
  The caller reports one line on stderr and exits 1;
* the stream cannot encode a character (``PYTHONIOENCODING=ascii`` and a
  guest named ``gäst€``): the character is escaped (``\\xe4``) as Python does
  on stderr, instead of raising UnicodeEncodeError half-way through a table.
"""

from __future__ import annotations

import errno
import io
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (issue #13: start-up)
if TYPE_CHECKING:
    from typing import TextIO


class GuardedStdout(io.TextIOBase):
    """Wraps the real stdout; remembers the first write failure instead of raising.

    After a failure, further output is dropped: a half-written table is all
    the reader gets, and the command's outcome is decided by its exit code.
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream
        self.failure: OSError | None = None
        if stream is None:  # started with fd 1 closed (`pcipass list >&-`)
            self.failure = OSError(errno.EBADF, os.strerror(errno.EBADF))

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def reader_gone(self) -> bool:
        """The reader closed the pipe: not worth a message (as for `head`)."""
        return isinstance(self.failure, BrokenPipeError) or (
            self.failure is not None and self.failure.errno == errno.EPIPE
        )

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        if self._stream is None or self.failure is not None:
            return False
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> int:
        if self._stream is None or self.failure is not None:
            return len(text)
        try:
            try:
                self._stream.write(text)
            except UnicodeEncodeError:
                # TextIOWrapper encodes the whole text before writing any of it,
                # so nothing was written: write the escaped form instead.
                encoding = self.encoding
                self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except OSError as error:
            self.failure = error
        return len(text)

    def flush(self) -> None:
        if self._stream is None or self.failure is not None:
            return
        try:
            self._stream.flush()
        except OSError as error:
            self.failure = error

    def silence(self) -> None:
        """After a failure on the process's real stdout: point fd 1 at /dev/null,
        so the interpreter's own flush at exit finds nowhere to fail and prints
        no "Exception ignored ... BrokenPipeError" (exit 120)."""
        real = sys.__stdout__
        if self.failure is None or real is None or self._stream is not real:
            return  # not the process's stdout (a test's capture): leave fds alone
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, real.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            return
