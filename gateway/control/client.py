"""The CLI side of the control socket: a small blocking client.

The ``edgegw`` command line is synchronous, so this uses a plain socket: connect to the
gateway's Unix socket, send one request line, read one response line (see
:mod:`gateway.control.protocol`). A missing or refusing socket means the gateway is not
running, which the CLI reports differently from a gateway that answers with an error.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from gateway.control.protocol import (
    MAX_RESPONSE,
    ControlRequest,
    LineBuffer,
    ProtocolError,
    decode_response,
    encode_request,
)

__all__ = ["DEFAULT_TIMEOUT", "ControlClient", "ControlError", "GatewayNotRunning"]

DEFAULT_TIMEOUT = 10.0
"""Seconds one whole request/response exchange may take."""

_RECEIVE_SIZE = 65536


class GatewayNotRunning(Exception):
    """No gateway listens on the control socket (the file is missing or refuses connections)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"gateway not running (no control socket at {path})")
        self.path = path


class ControlError(Exception):
    """The exchange failed: the gateway answered ok false, or the exchange itself broke."""


class ControlClient:
    """Send commands to the gateway listening on the Unix socket at ``path``."""

    def __init__(self, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> Any:
        """Run ``cmd`` with ``args`` on the gateway and return its result.

        Raises GatewayNotRunning when nothing listens on the socket and ControlError when the
        gateway answers with an error, times out or breaks the protocol.
        """
        line = self._encode(cmd, args)
        deadline = time.monotonic() + self.timeout
        with self._connect() as sock:
            try:
                self._send(sock, line, deadline)
                reply = self._receive_line(sock, deadline)
            except TimeoutError:
                raise ControlError(
                    f"gateway did not answer {cmd!r} within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                raise ControlError(f"control connection to {self.path} failed: {exc}") from exc
        try:
            response = decode_response(reply)
        except ProtocolError as exc:
            raise ControlError(str(exc)) from exc
        if not response.ok:
            raise ControlError(response.error)
        return response.result

    def _encode(self, cmd: str, args: dict[str, Any]) -> bytes:
        try:
            return encode_request(ControlRequest(cmd=cmd, args=args))
        except ProtocolError as exc:
            raise ControlError(str(exc)) from exc

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            sock.close()
            raise GatewayNotRunning(self.path) from None
        except TimeoutError:
            sock.close()
            raise ControlError(
                f"connecting to {self.path} timed out after {self.timeout:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot connect to control socket {self.path}: {exc}") from exc
        return sock

    @staticmethod
    def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
        sock.settimeout(_remaining(deadline))
        sock.sendall(data)

    @staticmethod
    def _receive_line(sock: socket.socket, deadline: float) -> bytes:
        lines = LineBuffer(max_line=MAX_RESPONSE)
        while True:
            try:
                line = lines.next_line()
            except ProtocolError as exc:
                raise ControlError(f"bad response from gateway: {exc}") from exc
            if line is not None and line.strip():
                return line
            if line is not None:
                continue
            sock.settimeout(_remaining(deadline))
            data = sock.recv(_RECEIVE_SIZE)
            if not data:
                raise ControlError("gateway closed the control connection without answering")
            lines.feed(data)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining
