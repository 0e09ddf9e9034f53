"""A fake QEMU monitor (QMP) on a real unix socket, with scripted misbehaviour.

It speaks enough of the protocol for pcipass (qemu docs/interop/qmp-spec):
greeting, ``qmp_capabilities``, ``qom-list``/``qom-get host`` over
``/machine/peripheral``, ``device_add`` of a vfio-pci device and
``device_del`` answered later by a ``DEVICE_DELETED`` event when the guest
ejects the device.  :attr:`FakeQmp.devices` is QEMU's truth (qdev id ->
host address) that tests compare the ledger with.

:meth:`FakeQmp.misbehave` makes the next calls of ``command`` go wrong, one
way per call (``None``: that call is answered normally):

* ``SILENT``: never answer (and do nothing);
* ``LATE``: do it, and answer only after the client gave up (closed);
* ``GARBAGE``: do it, answer bytes that are not JSON;
* ``HUGE``: do it, answer 2 MiB with no end of line;
* ``CLOSE``: do it, then close the connection without answering;
* ``INTERRUPT``: do it, then deliver SIGINT to this process (a real Ctrl-C
  while the client waits for the answer), and never answer;
* any other value: do nothing and answer that JSON value (``{"error": "boom"}``,
  ``[]``, ``{"return": None}``...).

With :attr:`guest_releases` false the guest never ejects a device, so
``device_del`` is answered but no ``DEVICE_DELETED`` comes (a guest without
acpiphp).  Each connection is served by its own thread, so a session stuck
in a late answer does not block the next client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

SILENT: Final = "silent"
LATE: Final = "late"
GARBAGE: Final = "garbage"
HUGE: Final = "huge"
CLOSE: Final = "close"
INTERRUPT: Final = "interrupt"
_ACTING: Final = frozenset({LATE, GARBAGE, HUGE, CLOSE, INTERRUPT})


class FakeQmp:
    def __init__(self, path: Path | str, devices: dict[str, str] | None = None) -> None:
        self.path = str(path)
        self.devices: dict[str, str] = dict(devices or {})  # qdev id -> host address
        self.commands: list[dict[str, Any]] = []
        self.guest_releases = True
        # Called (in the server's thread) when a command arrives, before QEMU acts:
        # a test looks at the world while pcipass waits for QEMU.
        self.on_command: dict[str, Callable[[], None]] = {}
        self._script: dict[str, list[object]] = {}
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def misbehave(self, command: str, *hows: object) -> None:
        """The next calls of ``command`` go wrong as ``hows`` say, in order."""
        self._script[command] = list(hows)

    def hosts(self) -> set[str]:
        """The host addresses of QEMU's vfio-pci devices now."""
        with self._lock:
            return set(self.devices.values())

    def close(self) -> None:
        self._server.close()

    # -- serving -----------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    @staticmethod
    def _send(conn: socket.socket, message: object) -> None:
        conn.sendall(json.dumps(message).encode() + b"\r\n")

    def _session(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._send(conn, {"QMP": {"version": {}, "capabilities": []}})
                buffer = b""
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buffer += data
                    while b"\n" in buffer:
                        line, _, buffer = buffer.partition(b"\n")
                        request = json.loads(line)
                        self.commands.append(request)
                        if not self._answer(conn, request):
                            return
            except OSError:
                return

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> bool:
        """Answer one request; False ends the session."""
        command = request["execute"]
        hook = self.on_command.get(command)
        if hook is not None:
            hook()
        queue = self._script.get(command) or [None]
        how = queue.pop(0)
        acting = isinstance(how, str) and how in _ACTING
        if how is None or acting:
            reply, event = self._act(command, request.get("arguments", {}))
        if how is None:
            self._send(conn, reply)
            if event is not None:
                self._send(conn, event)
            return True
        if how == SILENT:
            self._wait_for_close(conn)
            return False
        if how == LATE:
            self._wait_for_close(conn)
            return False
        if how == INTERRUPT:
            os.kill(os.getpid(), signal.SIGINT)
            self._wait_for_close(conn)
            return False
        if how == GARBAGE:
            conn.sendall(b"\x00\xfe{{ not json at all\n")
            return True
        if how == HUGE:
            conn.sendall(b"x" * (2 << 20))
            return True
        if how == CLOSE:
            return False
        self._send(conn, how)
        return True

    @staticmethod
    def _wait_for_close(conn: socket.socket) -> None:
        while True:
            try:
                if not conn.recv(4096):
                    return
            except OSError:
                return

    def _act(self, command: str, args: dict[str, Any]) -> tuple[object, object]:
        """Carry ``command`` out; its reply and an event to send after it (or None)."""
        with self._lock:
            if command == "qom-list":
                return {
                    "return": [{"name": i, "type": "child<vfio-pci>"} for i in self.devices]
                }, None
            if command == "qom-get":
                ident = str(args.get("path", "")).rsplit("/", 1)[-1]
                if ident not in self.devices:
                    return _error(f"Device '{ident}' not found"), None
                return {"return": self.devices[ident]}, None
            if command == "device_add":
                ident = str(args.get("id"))
                if ident in self.devices:
                    return _error(f"Duplicate device ID '{ident}'"), None
                if args.get("host") in self.devices.values():
                    return _error(f"vfio {args.get('host')}: device is already attached"), None
                self.devices[ident] = str(args.get("host"))
                return {"return": {}}, None
            if command == "device_del":
                ident = str(args.get("id"))
                if ident not in self.devices:
                    return _error(f"Device '{ident}' not found"), None
                if not self.guest_releases:
                    return {"return": {}}, None
                # The guest ejects it (ACPI), then QEMU reports it.
                del self.devices[ident]
                return {"return": {}}, {"event": "DEVICE_DELETED", "data": {"device": ident}}
            return {"return": {}}, None


def _error(desc: str) -> dict[str, object]:
    return {"error": {"class": "GenericError", "desc": desc}}
