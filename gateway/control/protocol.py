"""Wire format of the control socket: newline-delimited JSON, one request, one response.

A client writes one request per line, ``{"cmd": "status", "args": {...}}``, and reads one
response line back, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Lines are capped at :data:`MAX_LINE` bytes so a misbehaving peer cannot make either side
buffer without bound. This module is sans-IO: it only turns bytes into structures and back.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "MAX_LINE",
    "MAX_RESPONSE",
    "ControlRequest",
    "ControlResponse",
    "LineBuffer",
    "ProtocolError",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

MAX_LINE = 1024 * 1024
"""Largest request line, in bytes, not counting the newline."""

MAX_RESPONSE = 64 * 1024 * 1024
"""Largest response line: listings of many thousand CDRs are several MiB."""


class ProtocolError(ValueError):
    """A line that is not a valid control message (bad JSON, wrong shape, too long)."""


class ControlRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One command for the gateway: the handler name and its keyword arguments."""

    cmd: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class ControlResponse(msgspec.Struct):
    """The gateway's answer: ``result`` when ``ok``, else a human-readable ``error``."""

    ok: bool
    result: Any = None
    error: str | None = None


_request_decoder = msgspec.json.Decoder(ControlRequest)
_response_decoder = msgspec.json.Decoder(ControlResponse)
_encoder = msgspec.json.Encoder()


def _checked_line(payload: bytes, limit: int = MAX_LINE) -> bytes:
    if len(payload) > limit:
        raise ProtocolError(f"message too large: {len(payload)} bytes (max {limit})")
    return payload + b"\n"


def encode_request(request: ControlRequest) -> bytes:
    """Serialize a request as one newline-terminated line.

    Raises ProtocolError when an argument cannot be encoded as JSON or the line is too long.
    """
    try:
        payload = _encoder.encode(request)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"request arguments are not JSON-encodable: {exc}") from exc
    return _checked_line(payload)


def encode_response(response: ControlResponse) -> bytes:
    """Serialize a response as one newline-terminated line.

    Raises ProtocolError when the result cannot be encoded as JSON or the line is too long.
    """
    # The two shapes on the wire carry only the field that matters for them.
    wire: dict[str, Any] = (
        {"ok": True, "result": response.result}
        if response.ok
        else {"ok": False, "error": response.error or "unknown error"}
    )
    try:
        payload = _encoder.encode(wire)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"result is not JSON-encodable: {exc}") from exc
    return _checked_line(payload, MAX_RESPONSE)


def decode_request(line: bytes) -> ControlRequest:
    """Parse one request line (with or without its newline); raises ProtocolError."""
    try:
        return _request_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed request: {exc}") from exc


def decode_response(line: bytes) -> ControlResponse:
    """Parse one response line (with or without its newline); raises ProtocolError."""
    try:
        response = _response_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed response: {exc}") from exc
    if not response.ok and response.error is None:
        raise ProtocolError("malformed response: ok is false but no error is given")
    return response


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line`` bytes.

    An over-long line is reported once with ProtocolError and the rest of it, up to the next
    newline, is thrown away, so the stream stays usable and memory stays bounded.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a complete line."""
        return len(self._buffer)

    def next_line(self) -> bytes | None:
        """Return the next complete line without its newline, or None when more data is needed.

        Raises ProtocolError once per line that exceeds the limit.
        """
        while True:
            end = self._buffer.find(b"\n")
            if self._discarding:
                if end < 0:
                    self._buffer.clear()
                    return None
                del self._buffer[: end + 1]
                self._discarding = False
                continue
            if end < 0:
                if len(self._buffer) > self._max_line:
                    self._buffer.clear()
                    self._discarding = True
                    raise self._too_long()
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(line) > self._max_line:
                raise self._too_long()
            return line

    def _too_long(self) -> ProtocolError:
        return ProtocolError(f"line too long (max {self._max_line} bytes)")
