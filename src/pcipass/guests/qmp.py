"""A small QMP client (QEMU Machine Protocol over a unix socket).

For guests started by hand or by a script: no libvirt, no configuration file,
only QEMU's monitor.  QMP is line-delimited JSON (qemu docs/interop/qmp-spec):
the server greets, the client sends ``qmp_capabilities``, then each command
gets one ``return`` or ``error`` answer, with asynchronous ``event`` messages
interleaved.  The socket is read with a raw buffer (a file object over a
socket with a timeout cannot be read again after one timeout, as seen in the lab).

Everything QEMU sends is untrusted input: a reply of the wrong shape is a
:class:`QmpError` naming the command ("unexpected reply"), never an
AttributeError, and a message with no end of line cannot grow the buffer past
:data:`MAX_MESSAGE_BYTES`.  Two kinds of failure matter to the caller:

* :class:`QmpRefused`: QEMU answered with an ``error``: by the protocol the
  command did nothing (qmp-spec "error response");
* :class:`QmpNoAnswer`: no usable answer (timeout, closed connection, garbage):
  the command may or may not have happened, and the caller must ask QEMU
  again before it believes either.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from types import TracebackType

from pcipass.errors import OperationFailed

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final

# QEMU's largest ordinary replies (query-qmp-schema) are a few hundred KiB.
MAX_MESSAGE_BYTES: Final = 1 << 20


class QmpError(OperationFailed):
    def __init__(self, command: str, description: str) -> None:
        self.command = command
        self.description = description
        super().__init__(f"QMP {command}", description)


class QmpRefused(QmpError):
    """QEMU answered ``error``: the command was not carried out."""


class QmpNoAnswer(QmpError):
    """No usable answer: whether the command happened is unknown."""


def _shown(raw: object) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(raw)
    return text if len(text) <= 80 else text[:77] + "..."


class QmpClient:
    """One QMP connection.  ``opener``, when given, returns an O_PATH
    descriptor of the socket already resolved inside the root
    (:meth:`pcipass.host.confined.Confined.open_socket`); ``path`` then only
    names it in messages.  Without it ``path`` is connected to as it is."""

    def __init__(
        self, path: str, *, timeout: float = 10.0, opener: Callable[[], int] | None = None
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.opener = opener
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        held_fd: int | None = None
        try:
            target = self.path
            if self.opener is not None:
                # The socket's own inode, by descriptor: nothing on the way
                # is looked up again, so no link can redirect the connection.
                held_fd = self.opener()
                target = f"/proc/self/fd/{held_fd}"
            elif len(target.encode()) > 100:
                # sun_path holds 108 bytes; reach a deeper socket through its
                # directory's descriptor (a --root prefix makes paths long).
                held_fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
                target = f"/proc/self/fd/{held_fd}/{os.path.basename(target)}"
            sock.connect(target)
        except BaseException as error:
            sock.close()
            if not isinstance(error, OSError):
                raise
            raise OperationFailed(
                self.path,
                f"cannot connect to QEMU's QMP socket: {error.strerror or error}",
                "is the guest running?",
            ) from error
        finally:
            if held_fd is not None:
                os.close(held_fd)
        self._sock = sock
        try:
            greeting = self._read_message("greeting", time.monotonic() + self.timeout)
            if not isinstance(greeting.get("QMP"), dict):
                raise QmpNoAnswer("greeting", f"not a QMP server: {_shown(greeting)}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_message(self, command: str, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                raise QmpNoAnswer(
                    command,
                    f"unexpected reply: over {MAX_MESSAGE_BYTES >> 20} MiB without an end of "
                    "line; is this QEMU's QMP socket?",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpNoAnswer(command, f"no answer within {self.timeout:g} s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout as error:  # TimeoutError from Python 3.10 on
                raise QmpNoAnswer(command, f"no answer within {self.timeout:g} s") from error
            except OSError as error:
                raise QmpNoAnswer(
                    command, f"QMP connection failed: {error.strerror or error}"
                ) from error
            if not chunk:
                raise QmpNoAnswer(command, "QEMU closed the QMP connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as error:
            raise QmpNoAnswer(command, f"unexpected reply (not JSON): {_shown(line)}") from error
        if not isinstance(message, dict):
            raise QmpNoAnswer(command, f"unexpected reply (not an object): {_shown(line)}")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self._sock is not None
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as error:
            # Part of the request may have reached QEMU: unknown, not refused.
            raise QmpNoAnswer(
                command, f"QMP connection failed: {error.strerror or error}"
            ) from error
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(command, deadline)
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                detail = message["error"]
                desc = detail.get("desc") if isinstance(detail, dict) else None
                if not isinstance(desc, str):
                    # qmp-spec: an error is {"class": ..., "desc": ...}; anything else is
                    # not QEMU speaking, so nothing can be concluded from it.
                    raise QmpNoAnswer(command, f"unexpected reply: {_shown(message)}")
                raise QmpRefused(command, desc)
            if "return" in message:
                return message["return"]
            raise QmpNoAnswer(command, f"unexpected reply: {_shown(message)}")

    def wait_event(
        self, name: str, *, match: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event ``name`` whose data contains ``match`` (seen or to come)."""

        def fits(event: dict[str, Any]) -> bool:
            data = event.get("data")
            if not isinstance(data, dict):
                data = {}
            return event.get("event") == name and all(
                data.get(k) == v for k, v in (match or {}).items()
            )

        for event in self.events:
            if fits(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(f"wait for {name}", deadline)
            if "event" in message:
                self.events.append(message)
                if fits(message):
                    return message


def expect_list_of_objects(command: str, value: object) -> list[dict[str, Any]]:
    """``value`` as a list of JSON objects, or a clear error naming ``command``."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise QmpNoAnswer(
            command, f"unexpected reply: {_shown(value)} (expected a list of objects)"
        )
    return value


def expect_text(command: str, value: object) -> str:
    if not isinstance(value, str):
        raise QmpNoAnswer(command, f"unexpected reply: {_shown(value)} (expected a string)")
    return value
