"""The gateway side of the control socket: a Trio Unix-socket server dispatching to handlers.

Field engineers' ``edgegw`` commands connect to ``<var>/control.sock`` and send one JSON request
per line (see :mod:`gateway.control.protocol`). Each request is dispatched to the handler named
by its ``cmd``; whatever the handler returns is sent back as the result. A bad request or a
failing handler gets ``ok: false`` with the reason and the connection keeps being served.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from gateway.control.protocol import (
    ControlResponse,
    LineBuffer,
    ProtocolError,
    decode_request,
    encode_response,
)

__all__ = ["MAX_SOCKET_PATH", "CommandRefused", "ControlServer", "ControlSocketInUse", "Handler"]

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

MAX_SOCKET_PATH = 107
"""Longest AF_UNIX path in bytes on Linux (sun_path is 108 bytes including the NUL)."""

_RECEIVE_SIZE = 65536
# A live server whose accept backlog is full makes connect() wait; after this long we still
# count it as live rather than deleting a socket somebody is listening on.
_PROBE_TIMEOUT = 2.0

_log = structlog.get_logger(__name__)


class CommandRefused(Exception):
    """A handler's refusal (bad request, refused change): an answer, not a fault, so it is
    logged in one line without a traceback. Its message is the error the client gets."""


class ControlSocketInUse(OSError):
    """Another live server answers on the control socket path.

    An OSError, like binding a port that is taken, so start-up code that reports failures to
    bind its sockets reports this one the same way.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"control socket {path} is in use by a running gateway "
            "(two gateways cannot share a var dir)"
        )
        self.path = path


class ControlServer:
    """Serve control requests on a Unix stream socket at ``path``.

    ``handlers`` maps a command name to an async function taking the request's ``args`` and
    returning a JSON-encodable result (msgspec Structs and dataclasses are fine).
    """

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = Path(path)
        self._handlers = dict(handlers)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, report started, and serve connections until cancelled.

        Raises ControlSocketInUse when a live server already answers on the path,
        FileExistsError when the path is something other than a socket, and OSError
        (ENAMETOOLONG) when the path is too long for a Unix socket. All are OSErrors. The
        socket file is removed on exit.
        """
        await self._remove_stale_socket()
        sock, identity = await self._bind()
        try:
            listener = trio.SocketListener(sock)
            async with listener:
                task_status.started()
                _log.info("control socket listening", path=str(self.path))
                await trio.serve_listeners(self._serve_connection, [listener])
        finally:
            self._remove_own_socket(identity)

    async def _remove_stale_socket(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise FileExistsError(
                errno.EEXIST, "exists and is not a socket; refusing to replace it", str(self.path)
            )
        if await self._someone_listens():
            raise ControlSocketInUse(self.path)
        _log.info("removing stale control socket", path=str(self.path))
        self.path.unlink(missing_ok=True)

    async def _someone_listens(self) -> bool:
        with trio.move_on_after(_PROBE_TIMEOUT):
            try:
                stream = await trio.open_unix_socket(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            await stream.aclose()
            return True
        return True

    async def _bind(self) -> tuple[trio.socket.SocketType, tuple[int, int]]:
        # Bind under a temporary name, restrict it to the owner, then link it into place: the
        # final path never exists with looser permissions, and link() refuses to clobber a
        # socket another gateway created in the meantime.
        temp = self.path.with_name(f".{secrets.token_hex(3)}.sock")
        longest = max(len(os.fsencode(self.path)), len(os.fsencode(temp)))
        if longest > MAX_SOCKET_PATH:
            raise OSError(
                errno.ENAMETOOLONG,
                f"control socket path too long for a Unix socket "
                f"({longest} bytes, max {MAX_SOCKET_PATH})",
                str(self.path),
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(str(temp))
            try:
                os.chmod(temp, 0o600)
                os.link(temp, self.path)
            except FileExistsError:
                raise ControlSocketInUse(self.path) from None
            finally:
                temp.unlink(missing_ok=True)
            sock.listen(128)
            info = os.stat(self.path)
        except BaseException:
            sock.close()
            raise
        return sock, (info.st_dev, info.st_ino)

    def _remove_own_socket(self, identity: tuple[int, int]) -> None:
        # Only our own socket file goes: another gateway may have replaced it by now.
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == identity:
            self.path.unlink(missing_ok=True)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        lines = LineBuffer()
        async with stream:
            try:
                while True:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        return
                    lines.feed(data)
                    await self._answer_complete_lines(lines, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The client went away mid-exchange: nothing left to answer.
                return

    async def _answer_complete_lines(self, lines: LineBuffer, stream: trio.SocketStream) -> None:
        while True:
            try:
                line = lines.next_line()
            except ProtocolError as exc:
                await stream.send_all(_encode(ControlResponse(ok=False, error=str(exc))))
                continue
            if line is None:
                return
            if not line.strip():
                continue
            response = await self.dispatch(line)
            await stream.send_all(_encode(response))

    async def dispatch(self, line: bytes) -> ControlResponse:
        """Answer one request line (without its newline); never raises for bad input."""
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            return ControlResponse(ok=False, error=str(exc))
        handler = self._handlers.get(request.cmd)
        if handler is None:
            return ControlResponse(ok=False, error=f"unknown command: {request.cmd}")
        try:
            result = await handler(request.args)
        except CommandRefused as exc:
            _log.warning("control command refused", cmd=request.cmd, reason=str(exc))
            return ControlResponse(ok=False, error=str(exc))
        except Exception as exc:
            _log.exception("control command failed", cmd=request.cmd)
            return ControlResponse(ok=False, error=str(exc) or type(exc).__name__)
        return ControlResponse(ok=True, result=result)


def _encode(response: ControlResponse) -> bytes:
    try:
        return encode_response(response)
    except ProtocolError as exc:
        _log.error("control response not sendable", error=str(exc))
        return encode_response(ControlResponse(ok=False, error=str(exc)))
