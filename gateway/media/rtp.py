"""RTP fixed header parsing and building, and RTP/RTCP demultiplexing (sans-IO).

Implements the RTP fixed header of RFC 3550 5.1 (with the CSRC list and the
header extension of 5.3.1 counted into the header length) and the RTP/RTCP
distinction of RFC 5761 4 for a multiplexed port. Only the header is read:
the payload, and the padding count in the packet's last octet, may be
SRTP-encrypted, so they are left to whoever holds the keys.

Functions take bytes and return values; they never raise on hostile input
(:func:`parse_rtp_header` returns None for anything that is not RTP).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RTP_HEADER_LENGTH",
    "RTP_VERSION",
    "RtpError",
    "RtpHeader",
    "build_rtp_header",
    "is_rtcp",
    "parse_rtp_header",
]

RTP_VERSION: Final = 2
RTP_HEADER_LENGTH: Final = 12
"""Length of the fixed header, before any CSRC or extension."""

# An RTCP compound packet starts with an SR or RR (RFC 3550 6.1): a 4-byte
# common header and the sender's SSRC at least.
_RTCP_MIN_LENGTH: Final = 8
# RFC 5761 4: RTCP packet types 192-223 fill the whole second byte, where RTP
# has the marker bit and payload types 64-95, which therefore go unused.
_RTCP_TYPE_FIRST: Final = 192
_RTCP_TYPE_LAST: Final = 223
_MAX_CSRC: Final = 15

_FIXED: Final = struct.Struct("!BBHII")
_EXTENSION_LENGTH: Final = struct.Struct("!H")


class RtpError(ValueError):
    """A header field out of range when building an RTP header."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fields of an RTP header (RFC 3550 5.1) the media path acts on."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    csrc_count: int
    has_extension: bool
    padding: bool
    header_length: int
    """Bytes up to the payload: fixed header, CSRC list and extension."""


def parse_rtp_header(data: bytes | bytearray | memoryview) -> RtpHeader | None:
    """Read the RTP header of ``data``, or None when it cannot be RTP.

    None means shorter than the fixed header, a version other than 2, or a
    CSRC list or header extension that runs past the end of the packet.
    Call :func:`is_rtcp` first on a port that carries both (RFC 5761).
    """
    if len(data) < RTP_HEADER_LENGTH:
        return None
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        return None
    csrc_count = first & 0x0F
    header_length = RTP_HEADER_LENGTH + 4 * csrc_count
    has_extension = bool(first & 0x10)
    if has_extension:
        # RFC 3550 5.3.1: 16-bit profile field, then the extension's length
        # in 32-bit words not counting its own 4-byte header.
        if len(data) < header_length + 4:
            return None
        (words,) = _EXTENSION_LENGTH.unpack_from(data, header_length + 2)
        header_length += 4 + 4 * words
    if header_length > len(data):
        return None
    # Positional: keyword arguments cost a fifth more on this per-packet path.
    return RtpHeader(
        second & 0x7F,
        bool(second & 0x80),
        sequence,
        timestamp,
        ssrc,
        csrc_count,
        has_extension,
        bool(first & 0x20),
        header_length,
    )


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is RTCP rather than RTP on a multiplexed port (RFC 5761 4)."""
    return (
        len(data) >= _RTCP_MIN_LENGTH
        and data[0] >> 6 == RTP_VERSION
        and _RTCP_TYPE_FIRST <= data[1] <= _RTCP_TYPE_LAST
    )


def build_rtp_header(
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool = False,
    csrcs: Sequence[int] = (),
) -> bytes:
    """Serialize an RTP header without padding or extension (RFC 3550 5.1).

    Raises RtpError when a field does not fit its width.
    """
    _check_range("payload_type", payload_type, 0x7F)
    _check_range("sequence", sequence, 0xFFFF)
    _check_range("timestamp", timestamp, 0xFFFF_FFFF)
    _check_range("ssrc", ssrc, 0xFFFF_FFFF)
    if len(csrcs) > _MAX_CSRC:
        raise RtpError(f"Too many CSRCs: {len(csrcs)}, at most {_MAX_CSRC}")
    for csrc in csrcs:
        _check_range("csrc", csrc, 0xFFFF_FFFF)
    first = RTP_VERSION << 6 | len(csrcs)
    second = payload_type | (0x80 if marker else 0)
    fixed = _FIXED.pack(first, second, sequence, timestamp, ssrc)
    if not csrcs:
        return fixed
    return fixed + struct.pack(f"!{len(csrcs)}I", *csrcs)


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise RtpError(f"RTP {name} {value} out of range 0..{maximum}")
