"""SDP session descriptions: parse, serialize, and tell a hold (sans-IO).

Implements:

* RFC 4566 section 5: the full session description grammar (v o s i u e p c b t r z k a
  and media sections m i c b k a), kept in a typed model. Attributes are kept in their
  order, unknown ones included, so serializing a parsed description gives the same
  bytes for well-formed CRLF input. LF-only input is accepted (and written back as CRLF).
* RFC 3551 section 6: static payload types known without an a=rtpmap.
* RFC 3264 section 8.4: hold detection. The offer/answer of each leg is
  :mod:`gateway.calls.negotiation`.
* RFC 3605: a=rtcp; RFC 5761 section 5.1.1: a=rtcp-mux.

Limits keep hostile input cheap: at most 1000 lines, 64 m= lines and 64 KiB. Every
problem raises SdpError whose text names the line and what is wrong with it.

Field order is strict within a media section and lenient in the session section (a few
SIP stacks put b= before c=, for instance); such input parses and is written back in the
RFC order. Unknown line types are refused (RFC 4566 5: the description cannot be
understood). Only one c= per media section is kept (layered multicast is out of scope).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "Bandwidth",
    "Connection",
    "Media",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Timing",
    "is_hold",
    "parse_sdp",
]

MAX_LINES = 1000
MAX_MEDIA = 64
MAX_BYTES = 65536

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_UNSPECIFIED_ADDRESSES = frozenset({"0.0.0.0", "::"})

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~"
)
_DIGITS = frozenset("0123456789")


class SdpError(ValueError):
    """A session description that cannot be used; the text names the line and problem."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One payload type's encoding (a=rtpmap or an RFC 3551 static assignment)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    def __str__(self) -> str:
        tail = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{tail}"


def _static(pt: int, encoding: str, rate: int, channels: int = 1) -> tuple[int, RtpMap]:
    return pt, RtpMap(pt, encoding, rate, channels)


# RFC 3551 tables 4 and 5 (audio and video static payload types).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = dict(
    [
        _static(0, "PCMU", 8000),
        _static(3, "GSM", 8000),
        _static(4, "G723", 8000),
        _static(5, "DVI4", 8000),
        _static(6, "DVI4", 16000),
        _static(7, "LPC", 8000),
        _static(8, "PCMA", 8000),
        _static(9, "G722", 8000),
        _static(10, "L16", 44100, 2),
        _static(11, "L16", 44100),
        _static(12, "QCELP", 8000),
        _static(13, "CN", 8000),
        _static(14, "MPA", 90000),
        _static(15, "G728", 8000),
        _static(16, "DVI4", 11025),
        _static(17, "DVI4", 22050),
        _static(18, "G729", 8000),
        _static(25, "CelB", 90000),
        _static(26, "JPEG", 90000),
        _static(28, "nv", 90000),
        _static(31, "H261", 90000),
        _static(32, "MPV", 90000),
        _static(33, "MP2T", 90000),
        _static(34, "H263", 90000),
    ]
)


# --- small value checks ------------------------------------------------------------------


def _uint(text: str, limit: int) -> int | None:
    """ASCII decimal in 0..limit, else None (int() alone accepts '+1', '1_0', ' 1', '²')."""
    if not text or len(text) > 20 or not _DIGITS.issuperset(text):
        return None
    value = int(text)
    return value if value <= limit else None


def _is_token(text: str) -> bool:
    return bool(text) and _TOKEN_CHARS.issuperset(text)


def _addrtype_for(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ValueError(f"address: not an IP literal: {address!r}") from exc
    return "IP4" if parsed.version == 4 else "IP6"


# --- model -------------------------------------------------------------------------------


@dataclass(slots=True)
class Origin:
    """o= line. ``sess_version`` goes up by one on every new SDP sent on a leg."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    def bumped(self) -> Origin:
        return Origin(
            self.username,
            self.sess_id,
            self.sess_version + 1,
            self.nettype,
            self.addrtype,
            self.address,
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class Connection:
    """c= line; ``address`` keeps multicast /ttl/count suffixes as written."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls("IN", _addrtype_for(address), address)

    @property
    def is_unspecified(self) -> bool:
        return self.address in _UNSPECIFIED_ADDRESSES

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(slots=True)
class Bandwidth:
    bwtype: str
    bandwidth: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(slots=True)
class Timing:
    """t= line with the r= lines that follow it (kept as written)."""

    start: int
    stop: int
    repeats: list[str] = field(default_factory=list)


Attribute = tuple[str, str | None]


def _first(attributes: list[Attribute], name: str) -> str | None:
    for key, value in attributes:
        if key == name:
            return value
    return None


def _has(attributes: list[Attribute], name: str) -> bool:
    return any(key == name for key, _ in attributes)


def _direction(attributes: list[Attribute]) -> str | None:
    for key, value in attributes:
        if value is None and key in DIRECTIONS:
            return key
    return None


@dataclass(slots=True)
class Media:
    """One media section (m= and its i c b k a lines)."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    title: str | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    def get(self, name: str) -> str | None:
        """Value of the first a=``name`` (None when absent or value-less)."""
        return _first(self.attributes, name)

    def has(self, name: str) -> bool:
        return _has(self.attributes, name)

    def rtpmap(self) -> dict[int, RtpMap]:
        """Payload type -> encoding for every offered format (static ones included)."""
        explicit: dict[int, RtpMap] = {}
        for key, value in self.attributes:
            if key == "rtpmap" and value is not None:
                entry = _parse_rtpmap(value)
                explicit.setdefault(entry.payload_type, entry)
        result: dict[int, RtpMap] = {}
        for fmt in self.formats:
            pt = _uint(fmt, 127)
            if pt is None:
                continue
            known = explicit.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if known is not None:
                result[pt] = known
        return result

    def fmtp(self) -> dict[int, str]:
        """Payload type -> format parameters (a=fmtp)."""
        result: dict[int, str] = {}
        for key, value in self.attributes:
            if key == "fmtp" and value is not None:
                pt, params = _parse_fmtp(value)
                if pt is not None:
                    result.setdefault(pt, params)
        return result

    @property
    def direction(self) -> str:
        """Media-level direction ("sendrecv" when absent; see SessionDescription too)."""
        return _direction(self.attributes) or "sendrecv"

    def set_direction(self, direction: str) -> None:
        """Replace every direction attribute by ``direction`` (at the first one's place)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {', '.join(DIRECTIONS)}")
        _replace_attribute(self.attributes, set(DIRECTIONS), (direction, None), valueless=True)

    @property
    def rtcp_port(self) -> int | None:
        value = self.get("rtcp")
        return None if value is None else _parse_rtcp(value)

    @property
    def rtcp_mux(self) -> bool:
        return self.has("rtcp-mux")

    @property
    def ptime(self) -> int | None:
        value = self.get("ptime")
        return None if value is None else _parse_ptime(value)

    def copy(self) -> Media:
        return dataclasses.replace(
            self,
            formats=list(self.formats),
            connection=copy.copy(self.connection),
            bandwidths=[copy.copy(b) for b in self.bandwidths],
            attributes=list(self.attributes),
        )

    def to_lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        lines = [f"m={self.media} {port} {' '.join([self.proto, *self.formats])}"]
        if self.title is not None:
            lines.append(f"i={self.title}")
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"b={bw}" for bw in self.bandwidths]
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines += _attribute_lines(self.attributes)
        return lines


def _replace_attribute(
    attributes: list[Attribute], names: set[str], new: Attribute, *, valueless: bool = False
) -> None:
    """Remove attributes named in ``names`` and put ``new`` where the first one was."""
    position: int | None = None
    kept: list[Attribute] = []
    for key, value in attributes:
        if key in names and (not valueless or value is None):
            if position is None:
                position = len(kept)
            continue
        kept.append((key, value))
    kept.insert(len(kept) if position is None else position, new)
    attributes[:] = kept


def _attribute_lines(attributes: list[Attribute]) -> list[str]:
    return [f"a={k}" if v is None else f"a={k}:{v}" for k, v in attributes]


@dataclass(slots=True)
class SessionDescription:
    """A whole session description (RFC 4566 5)."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    info: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    times: list[Timing] = field(default_factory=lambda: [Timing(0, 0)])
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return _first(self.attributes, name)

    def has(self, name: str) -> bool:
        return _has(self.attributes, name)

    def direction_of(self, media: Media) -> str:
        """Effective direction of ``media``: its own, else the session's, else sendrecv."""
        return _direction(media.attributes) or _direction(self.attributes) or "sendrecv"

    def connection_of(self, media: Media) -> Connection | None:
        return media.connection or self.connection

    def copy(self) -> SessionDescription:
        """Deep copy (explicit: copy.deepcopy is several times slower on this shape)."""
        return dataclasses.replace(
            self,
            origin=copy.copy(self.origin),
            emails=list(self.emails),
            phones=list(self.phones),
            connection=copy.copy(self.connection),
            bandwidths=[copy.copy(b) for b in self.bandwidths],
            times=[Timing(t.start, t.stop, list(t.repeats)) for t in self.times],
            attributes=list(self.attributes),
            media=[m.copy() for m in self.media],
        )

    def to_lines(self) -> list[str]:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        if self.info is not None:
            lines.append(f"i={self.info}")
        if self.uri is not None:
            lines.append(f"u={self.uri}")
        lines += [f"e={e}" for e in self.emails]
        lines += [f"p={p}" for p in self.phones]
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"b={bw}" for bw in self.bandwidths]
        for timing in self.times:
            lines.append(f"t={timing.start} {timing.stop}")
            lines += [f"r={r}" for r in timing.repeats]
        if self.zone is not None:
            lines.append(f"z={self.zone}")
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines += _attribute_lines(self.attributes)
        for media in self.media:
            lines += media.to_lines()
        return lines

    def to_bytes(self) -> bytes:
        return ("\r\n".join(self.to_lines()) + "\r\n").encode("utf-8")


# --- attribute value parsers (shared by parse-time checks and accessors) -----------------


def _parse_rtpmap(value: str) -> RtpMap:
    pt_text, _, spec = value.partition(" ")
    pt = _uint(pt_text, 127)
    parts = spec.split("/")
    if pt is None or len(parts) not in (2, 3) or not parts[0]:
        raise SdpError(f"bad a=rtpmap value {value!r}")
    rate = _uint(parts[1], 10_000_000)
    channels = _uint(parts[2], 255) if len(parts) == 3 else 1
    if not rate or not channels:
        raise SdpError(f"bad a=rtpmap value {value!r}")
    return RtpMap(pt, parts[0], rate, channels)


def _parse_fmtp(value: str) -> tuple[int | None, str]:
    fmt, _, params = value.partition(" ")
    if not fmt:
        raise SdpError(f"bad a=fmtp value {value!r}")
    return _uint(fmt, 127), params


def _parse_rtcp(value: str) -> int:
    fields = value.split(" ")
    port = _uint(fields[0], 65535)
    if port is None or len(fields) not in (1, 4):
        raise SdpError(f"bad a=rtcp value {value!r}")
    return port


def _parse_ptime(value: str) -> int:
    whole, dot, fraction = value.partition(".")
    number = _uint(whole, 100_000)
    if number is None or (dot and not (fraction and _DIGITS.issuperset(fraction))):
        raise SdpError(f"bad a=ptime value {value!r}")
    return number


_ATTRIBUTE_CHECKS = {
    "rtpmap": _parse_rtpmap,
    "fmtp": _parse_fmtp,
    "rtcp": _parse_rtcp,
    "ptime": _parse_ptime,
}


# --- parsing -----------------------------------------------------------------------------


def _split_lines(data: bytes) -> list[str]:
    if len(data) > MAX_BYTES:
        raise SdpError(f"too large ({len(data)} bytes, max {MAX_BYTES})")
    if data.count(b"\n") > MAX_LINES:
        raise SdpError(f"too many lines (max {MAX_LINES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError(f"invalid UTF-8 at byte {exc.start}") from exc
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise SdpError("empty session description")
    if len(lines) > MAX_LINES:
        raise SdpError(f"too many lines (max {MAX_LINES})")
    return lines


# Within a media section the RFC order is i c b k a; enforced so round trips hold.
_MEDIA_ORDER = {"i": 0, "c": 1, "b": 2, "k": 3, "a": 4}


class _Parser:
    """Walks the lines once; session fields first, then one Media per m= line."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.number = 0
        self.seen: set[str] = set()
        # Position in the i c b k a order of the current media section.
        self.media_rank = 0
        self.media_count = 0

    def error(self, message: str) -> SdpError:
        return SdpError(f"line {self.number}: {message}")

    def split(self, line: str) -> tuple[str, str]:
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise self.error(f"expected <type>=<value>, got {line[:40]!r}")
        if "\r" in line or "\x00" in line:
            raise self.error("control character in line")
        return line[0], line[2:]

    def run(self) -> SessionDescription:
        first = self.lines[0]
        if not first.startswith("v="):
            raise SdpError("missing v= (line 1 must be v=0)")
        if first != "v=0":
            raise SdpError(f"line 1: unsupported version {first[2:]!r}")
        times: list[Timing] = []
        session = _SessionFields()
        media: list[Media] = []
        for number, line in enumerate(self.lines[1:], start=2):
            self.number = number
            kind, value = self.split(line)
            if kind == "m":
                if len(media) >= MAX_MEDIA:
                    raise self.error(f"too many m= lines (max {MAX_MEDIA})")
                media.append(self.media_line(value))
                self.media_count = len(media)
            elif media:
                self.media_field(media[-1], kind, value)
            else:
                self.session_field(session, times, kind, value)
        return self.finish(session, times, media)

    def finish(
        self, session: _SessionFields, times: list[Timing], media: list[Media]
    ) -> SessionDescription:
        if session.origin is None:
            raise SdpError("missing o=")
        if session.name is None:
            raise SdpError("missing s=")
        return SessionDescription(
            origin=session.origin,
            session_name=session.name,
            info=session.info,
            uri=session.uri,
            emails=session.emails,
            phones=session.phones,
            connection=session.connection,
            bandwidths=session.bandwidths,
            times=times,
            zone=session.zone,
            key=session.key,
            attributes=session.attributes,
            media=media,
        )

    def once(self, scope: str, kind: str) -> None:
        marker = f"{scope}{kind}"
        if marker in self.seen:
            raise self.error(f"duplicate {kind}=")
        self.seen.add(marker)

    def session_field(
        self, session: _SessionFields, times: list[Timing], kind: str, value: str
    ) -> None:
        if kind in "osiuczk":
            self.once("session", kind)
        if kind == "o":
            session.origin = self.origin_line(value)
        elif kind == "s":
            session.name = value
        elif kind == "i":
            session.info = value
        elif kind == "u":
            session.uri = value
        elif kind == "e":
            session.emails.append(value)
        elif kind == "p":
            session.phones.append(value)
        elif kind == "c":
            session.connection = self.connection_line(value)
        elif kind == "b":
            session.bandwidths.append(self.bandwidth_line(value))
        elif kind == "t":
            times.append(self.timing_line(value))
        elif kind == "r":
            if not times:
                raise self.error("r= before any t=")
            times[-1].repeats.append(value)
        elif kind == "z":
            session.zone = value
        elif kind == "k":
            session.key = value
        elif kind == "a":
            session.attributes.append(self.attribute_line(value, rtp=False))
        else:
            raise self.error(f"unexpected {kind}= in the session section")

    def media_field(self, media: Media, kind: str, value: str) -> None:
        rank = _MEDIA_ORDER.get(kind)
        if rank is None:
            raise self.error(f"unexpected {kind}= in a media section")
        if rank < self.media_rank:
            raise self.error(f"{kind}= out of order in a media section")
        self.media_rank = rank
        if kind in "ick":
            self.once(f"media{self.media_count}", kind)
        if kind == "i":
            media.title = value
        elif kind == "c":
            media.connection = self.connection_line(value)
        elif kind == "b":
            media.bandwidths.append(self.bandwidth_line(value))
        elif kind == "k":
            media.key = value
        else:
            media.attributes.append(self.attribute_line(value, rtp=media.is_rtp))

    def origin_line(self, value: str) -> Origin:
        fields = value.split(" ")
        version = _uint(fields[2], 2**64) if len(fields) == 6 else None
        if version is None or not all(fields):
            raise self.error("bad o= line (want: username sess-id sess-version IN IP4 address)")
        return Origin(fields[0], fields[1], version, fields[3], fields[4], fields[5])

    def connection_line(self, value: str) -> Connection:
        fields = value.split(" ")
        if len(fields) != 3 or not all(fields):
            raise self.error("bad c= line (want: IN IP4|IP6 address)")
        return Connection(*fields)

    def bandwidth_line(self, value: str) -> Bandwidth:
        bwtype, _, amount = value.partition(":")
        number = _uint(amount, 2**32)
        if not _is_token(bwtype) or number is None:
            raise self.error("bad b= line (want: type:kbps)")
        return Bandwidth(bwtype, number)

    def timing_line(self, value: str) -> Timing:
        fields = value.split(" ")
        start = _uint(fields[0], 2**64) if len(fields) == 2 else None
        stop = _uint(fields[1], 2**64) if len(fields) == 2 else None
        if start is None or stop is None:
            raise self.error("bad t= line (want: start stop)")
        return Timing(start, stop)

    def attribute_line(self, value: str, *, rtp: bool) -> Attribute:
        name, colon, attr_value = value.partition(":")
        if not _is_token(name):
            raise self.error(f"bad a= line {value[:40]!r}")
        check = _ATTRIBUTE_CHECKS.get(name) if rtp else None
        if check is not None:
            try:
                check(attr_value)
            except SdpError as exc:
                raise self.error(str(exc)) from None
        return (name, attr_value if colon else None)

    def media_line(self, value: str) -> Media:
        self.media_rank = 0
        fields = value.split(" ")
        if len(fields) < 4 or not all(fields):
            raise self.error("bad m= line (want: media port proto format...)")
        media, port_text, proto, formats = fields[0], fields[1], fields[2], fields[3:]
        if not _is_token(media) or not all(_is_token(p) for p in proto.split("/")):
            raise self.error("bad m= line")
        port_part, slash, count_part = port_text.partition("/")
        port = _uint(port_part, 65535)
        count = _uint(count_part, 65535) if slash else None
        if port is None or (slash and not count):
            raise self.error(f"bad port {port_text!r}")
        result = Media(media, port, proto, formats, port_count=count)
        if result.is_rtp:
            for fmt in formats:
                if _uint(fmt, 127) is None:
                    raise self.error(f"bad payload type {fmt!r}")
        return result


@dataclass(slots=True)
class _SessionFields:
    origin: Origin | None = None
    name: str | None = None
    info: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse one session description; raises SdpError naming the line and the problem."""
    return _Parser(_split_lines(data)).run()


# --- hold -------------------------------------------------------------------------------


def _uses_ice(media: Media | None, session: SessionDescription) -> bool:
    if session.has("ice-ufrag"):
        return True
    scope = session.media if media is None else [media]
    return any(m.has("ice-ufrag") or m.has("candidate") for m in scope)


def _hold_address(
    connection: Connection | None, media: Media | None, session: SessionDescription
) -> bool:
    """c=0.0.0.0 as an RFC 2543 hold, not ICE's placeholder (RFC 8839 5.1, RFC 8840)."""
    return connection is not None and connection.is_unspecified and not _uses_ice(media, session)


def is_hold(media: Media, session: SessionDescription | None = None) -> bool:
    """True when ``media`` puts the peer on hold (RFC 3264 8.4).

    That is a sendonly or inactive direction (the session's applies when ``session`` is
    given and the media has none), or the RFC 2543 style c=0.0.0.0 (or ::), except where
    ICE uses 0.0.0.0 as a placeholder address.
    """
    if session is None:
        session = SessionDescription(Origin("-", "0", 0, "IN", "IP4", "0.0.0.0"), media=[media])
    if session.direction_of(media) in ("sendonly", "inactive"):
        return True
    return _hold_address(session.connection_of(media), media, session)
