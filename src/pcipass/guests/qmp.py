"""A small QMP client (QEMU Machine Protocol over a unix socket).

For guests started by hand or by a script: no libvirt, no configuration file,
only QEMU's monitor.  QMP is line-delimited JSON (qemu docs/interop/qmp-spec):
the server greets, the client sends ``qmp_capabilities``, then each command
gets one ``return`` or ``error`` answer, with asynchronous ``event`` messages
interleaved.  The socket is read with a raw buffer (a file object over a
socket with a timeout cannot be read again after one timeout, as seen in the lab).
"""

from __future__ import annotations

import json
import os
import socket
import time
from types import TracebackType
from typing import Any

from pcipass.errors import OperationFailed


class QmpError(OperationFailed):
    def __init__(self, command: str, description: str) -> None:
        self.command = command
        self.description = description
        super().__init__(f"QMP {command}", description)


class QmpClient:
    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        dirfd: int | None = None
        try:
            target = self.path
            if len(target.encode()) > 100:
                # sun_path holds 108 bytes; reach a deeper socket through its
                # directory's descriptor (a --root prefix makes paths long).
                dirfd = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
                target = f"/proc/self/fd/{dirfd}/{os.path.basename(target)}"
            sock.connect(target)
        except OSError as error:
            sock.close()
            raise OperationFailed(
                self.path,
                f"cannot connect to QEMU's QMP socket: {error.strerror or error}",
                "is the guest running?",
            ) from error
        finally:
            if dirfd is not None:
                os.close(dirfd)
        self._sock = sock
        greeting = self._read_message(time.monotonic() + self.timeout)
        if "QMP" not in greeting:
            raise QmpError("greeting", f"not a QMP server: {str(greeting)[:80]}")
        self.execute("qmp_capabilities")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("read", f"no answer within {self.timeout:.0f}s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as error:
                raise QmpError("read", f"no answer within {self.timeout:.0f}s") from error
            if not chunk:
                raise QmpError("read", "QEMU closed the QMP connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as error:
            raise QmpError("read", f"malformed QMP message {line[:80]!r}") from error
        if not isinstance(message, dict):
            raise QmpError("read", f"unexpected QMP message {line[:80]!r}")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self._sock is not None
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                error = message["error"]
                raise QmpError(command, str(error.get("desc", error)))
            if "return" in message:
                return message["return"]

    def wait_event(
        self, name: str, *, match: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event ``name`` whose data contains ``match`` (seen or to come)."""

        def fits(event: dict[str, Any]) -> bool:
            data = event.get("data", {})
            return event.get("event") == name and all(
                data.get(k) == v for k, v in (match or {}).items()
            )

        for event in self.events:
            if fits(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if "event" in message:
                self.events.append(message)
                if fits(message):
                    return message
