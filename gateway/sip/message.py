"""SIP messages: parse, frame and serialize requests and responses (sans-IO).

Implements RFC 3261 7 (message format: start line, header folding, compact forms, header lists),
18.3 (framing: Content-Length on datagrams and streams), 20 (mandatory request headers), 25
(grammar of the start lines), 8.2.6 (building a response from a request), RFC 5626 3.5.1
(CRLF keep-alives on streams). The parser makes one pass over the header lines and keeps raw
values; Via, From, To and CSeq are parsed into structures only when a property asks for them,
and that result is cached until the header changes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast

from gateway.sip.headers import (
    CSeq,
    HeaderError,
    NameAddr,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_via,
    parse_via_list,
    split_header_list,
)
from gateway.sip.uri import SipUri, TelUri, parse_uri

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_LENGTH",
    "MAX_MESSAGE",
    "Headers",
    "KeepAlive",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse",
]

MAX_MESSAGE = 65536  # bytes per message, start line to end of body
MAX_HEADERS = 256  # header fields per message
MAX_HEADER_LENGTH = 16384  # characters per header field after unfolding

_T = TypeVar("_T")


class ParseError(ValueError):
    """A message that cannot be accepted. `str(error)` is a short reason fit for the reason
    phrase of a 400; `partial` is the request rebuilt from its Via, From, To, Call-ID and CSeq
    when those were readable (so a 400 can be addressed), else None."""

    def __init__(self, reason: str, partial: Request | None = None) -> None:
        super().__init__(reason)
        self.partial = partial


@dataclass(frozen=True)
class KeepAlive:
    """A CRLF keep-alive ping read from a stream (RFC 5626 3.5.1); `pong` means answer CRLF."""

    pong: bool


# ---- header names ----------------------------------------------------------------------------

_CANONICAL_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Accept-Resource-Priority",
    "Alert-Info", "Allow", "Allow-Events", "Answer-Mode", "Authentication-Info", "Authorization",
    "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding", "Content-ID",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Diversion",
    "Error-Info", "Event", "Expires", "Flow-Timer", "From", "Geolocation", "History-Info",
    "Identity", "Identity-Info", "In-Reply-To", "Info-Package", "Join", "Max-Breadth",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Asserted-Identity", "P-Charging-Vector", "P-Preferred-Identity", "Path", "Priority",
    "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-Sub", "Refer-To", "Referred-By", "Reject-Contact", "Replaces",
    "Reply-To", "Request-Disposition", "Require", "Resource-Priority", "Retry-After", "Route",
    "RSeq", "Security-Client", "Security-Server", "Security-Verify", "Server", "Service-Route",
    "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported",
    "Target-Dialog", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
    "WWW-Authenticate",
)  # fmt: skip

# RFC 3261 7.3.3 and the extensions that define compact forms (RFC 3265, 3515, 3841, 3892,
# 4028, 4474/8224).
_COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires",
    "y": "Identity",
}  # fmt: skip

# lower-case spelling (full or compact) -> (lookup key, canonical name)
_KNOWN: dict[str, tuple[str, str]] = {
    name.lower(): (name.lower(), name) for name in _CANONICAL_NAMES
}
_KNOWN.update({short: _KNOWN[full.lower()] for short, full in _COMPACT_FORMS.items()})
# exact spellings seen on the wire -> (key, name); saves a lower() per header on the hot path
_SPELLINGS: dict[str, tuple[str, str]] = dict(_KNOWN)
_SPELLINGS.update({entry[1]: entry for entry in _KNOWN.values()})
_SPELLINGS.update({short.upper(): _KNOWN[short] for short in _COMPACT_FORMS})

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_START_LINE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FOLD = re.compile(rb"\r?\n[ \t]+")


def _name_entry(name: str) -> tuple[str, str]:
    """(key, name to write) for a header name: canonical for known names and compact forms,
    the sender's spelling otherwise. Raises HeaderError for a name that is not a token."""
    entry = _SPELLINGS.get(name)
    if entry is not None:
        return entry
    lowered = name.lower()
    entry = _KNOWN.get(lowered)
    if entry is not None:
        return entry
    if not _TOKEN.fullmatch(name):
        raise HeaderError("Bad header name")
    return lowered, name


def _key(name: str) -> str:
    entry = _SPELLINGS.get(name)
    if entry is not None:
        return entry[0]
    lowered = name.lower()
    entry = _KNOWN.get(lowered)
    return lowered if entry is None else entry[0]


class Headers:
    """Ordered multi-dict of header fields with case-insensitive, compact-form-aware lookups.
    Values are kept raw (unfolded, stripped); lists are split only by `get_list`."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _trusted(cls, items: list[tuple[str, str, str]]) -> Headers:
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def get(self, name: str) -> str | None:
        """The first value of `name`, or None."""
        key = _key(name)
        for item_key, _name, value in self._items:
            if item_key == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order, each as written (not split on commas)."""
        key = _key(name)
        return [value for item_key, _name, value in self._items if item_key == key]

    def get_list(self, name: str) -> list[str]:
        """Every element of `name`, splitting each value on top-level commas."""
        return [item for value in self.get_all(name) for item in split_header_list(value)]

    def set(self, name: str, value: str) -> None:
        """Replace every `name` by one field holding `value`, where the first one was."""
        key, spelled = _name_entry(name)
        _check_value(value)
        kept: list[tuple[str, str, str]] = []
        placed = False
        for item in self._items:
            if item[0] != key:
                kept.append(item)
            elif not placed:
                kept.append((key, spelled, value))
                placed = True
        if not placed:
            kept.append((key, spelled, value))
        self._items = kept

    def add(self, name: str, value: str) -> None:
        """Append a field."""
        key, spelled = _name_entry(name)
        _check_value(value)
        self._items.append((key, spelled, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before the first `name`, or at the top when there is none."""
        key, spelled = _name_entry(name)
        _check_value(value)
        index = next((i for i, item in enumerate(self._items) if item[0] == key), 0)
        self._items.insert(index, (key, spelled, value))

    def remove(self, name: str) -> None:
        """Remove every `name` field."""
        key = _key(name)
        self._items = [item for item in self._items if item[0] != key]

    def copy(self) -> Headers:
        return Headers._trusted(list(self._items))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(item[0] == key for item in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _key, name, value in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [item[1:] for item in self._items] == [item[1:] for item in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


def _check_value(value: str) -> None:
    # A CR or LF inside a value would let it smuggle extra header lines on output.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderError("Header value contains CR, LF or NUL")


# ---- messages --------------------------------------------------------------------------------


class _Message:
    """Properties shared by requests and responses; parsed values are cached per raw value."""

    __slots__ = ()
    headers: Headers
    body: bytes
    _cache: dict[str, tuple[object, object]]

    def _cached(self, slot: str, raw: object, parser: Callable[[], _T]) -> _T:
        entry = self._cache.get(slot)
        if entry is not None and entry[0] == raw:
            return cast(_T, entry[1])
        value = parser()
        self._cache[slot] = (raw, value)
        return value

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise HeaderError(f"Missing header: {name}")
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> CSeq:
        raw = self._required("CSeq")
        return self._cached("cseq", raw, lambda: parse_cseq(raw))

    @property
    def vias(self) -> list[Via]:
        """Every Via, top first (comma-joined values split)."""
        raw = tuple(self.headers.get_all("Via"))
        vias = self._cached(
            "vias", raw, lambda: [v for value in raw for v in parse_via_list(value)]
        )
        return list(vias)

    @property
    def top_via(self) -> Via:
        raw = self._required("Via")
        return self._cached("top_via", raw, lambda: _first_via(raw))

    def replace_top_via(self, via: Via) -> None:
        """Write `via` over the top Via (e.g. stamped with received/rport, RFC 3261 18.2.1).

        The Via headers move after the others, their order kept; `via` stays the
        parsed top Via, so it is not parsed again from the text just written.
        """
        values = self.headers.get_all("Via")
        if not values:
            raise HeaderError("Missing header: Via")
        first = split_header_list(values[0])
        first[0] = str(via)
        joined = ", ".join(first)
        self.headers.remove("Via")
        self.headers.add("Via", joined)
        for other in values[1:]:
            self.headers.add("Via", other)
        self._cache["top_via"] = (joined, via)

    def prepend_via(self, via: Via) -> None:
        """Add `via` as the new top Via (a request we send, RFC 3261 8.1.1.7), kept parsed."""
        raw = str(via)
        self.headers.prepend("Via", raw)
        self._cache["top_via"] = (raw, via)

    @property
    def from_(self) -> NameAddr:
        raw = self._required("From")
        return self._cached("from", raw, lambda: parse_name_addr(raw))

    @property
    def to(self) -> NameAddr:
        raw = self._required("To")
        return self._cached("to", raw, lambda: parse_name_addr(raw))


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    """The message on the wire; Content-Length always says len(body)."""
    lines = [start_line]
    has_length = False
    for key, name, value in headers._items:
        if key == "content-length":
            if has_length:
                continue
            has_length = True
            value = str(len(body))
        lines.append(f"{name}: {value}")
    if not has_length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


def _first_via(raw: str) -> Via:
    if "," in raw:
        return parse_via(split_header_list(raw)[0])
    return parse_via(raw)


@dataclass(slots=True)
class Request(_Message):
    """A SIP request. Header properties (`to`, `top_via`...) parse on first use and raise
    HeaderError when the header is missing or malformed; change headers through `headers`."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""
    _cache: dict[str, tuple[object, object]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def parsed_uri(self) -> SipUri | TelUri:
        """The Request-URI parsed (raises UriError when malformed)."""
        raw = self.uri
        return self._cached("uri", raw, lambda: parse_uri(raw))

    def to_bytes(self) -> bytes:
        """The request on the wire; Content-Length always says len(body)."""
        return _serialize(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)


@dataclass(slots=True)
class Response(_Message):
    """A SIP response; see Request for the header properties."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    _cache: dict[str, tuple[object, object]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to_bytes(self) -> bytes:
        """The response on the wire; Content-Length always says len(body)."""
        return _serialize(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


# ---- parsing ---------------------------------------------------------------------------------

_REQUIRED = (
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
)


def parse(data: bytes) -> Request | Response:
    """Parse one datagram (RFC 3261 18.3: bytes after the Content-Length body are ignored; no
    Content-Length means the rest is the body). Raises ParseError with a short reason."""
    if len(data) > MAX_MESSAGE:
        raise ParseError("Message too large")
    text, rest = _split_head(data)
    start = text.partition("\n")[0].removesuffix("\r")
    if not start.isprintable():  # rare: only then look for what is not allowed
        if "\x00" in start:
            raise ParseError("NUL byte in start line")
        if _START_LINE_CONTROL.search(start):
            raise ParseError("Control character in start line")
    if start[:4].upper() == "SIP/":
        status, reason = _status_line(start)
        items, first = _read_headers(text)
        body = _body(items, first, rest)
        _check_required(first)
        response = Response(status, reason, Headers._trusted(items), body)
        _seed_cseq(response, first["cseq"])
        return response
    method, uri, version_ok = _request_line(start)
    try:
        items, first = _read_headers(text)
        if not version_ok:
            raise ParseError("Unsupported SIP version")
        body = _body(items, first, rest)
        _check_required(first)
        request = Request(method, uri, Headers._trusted(items), body)
        if _seed_cseq(request, first["cseq"]).method != method:
            raise ParseError("CSeq method mismatch")
    except ParseError as exc:
        # The request line was readable: try to give the caller enough to answer 400.
        exc.partial = _salvage(method, uri, text)
        raise
    return request


def _split_head(data: bytes) -> tuple[str, bytes]:
    """(header section text including the start line, bytes after the empty line)."""
    start = 0
    if data[:1] in (b"\r", b"\n"):
        start = len(data) - len(data.lstrip(b"\r\n"))  # RFC 3261 7.5: CRLFs before are ignored
    if start == len(data):
        raise ParseError("Empty message")
    end, body_start = _find_head_end(data, start)
    if end < 0:
        # A datagram is complete: without the empty line the headers run to its end.
        head = data[start:].rstrip(b"\r\n")
        body_start = len(data)
    else:
        head = data[start:end]
        if head.endswith(b"\r"):
            head = head[:-1]
    return head.decode("utf-8", "surrogateescape"), data[body_start:]


def _find_head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """Where the header section ends: (index of the LF ending the last header line, index of
    the body), or (-1, -1). Accepts CRLF and bare LF line ends."""
    crlf = data.find(b"\n\r\n", start)
    # Bare-LF ends are rare: look for them only before the CRLF one.
    lf = data.find(b"\n\n", start, len(data) if crlf < 0 else crlf)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


def _split_lines(text: str) -> list[str]:
    lines = text.split("\r\n")
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        if any("\r" in line for line in lines):
            raise ParseError("Bad line ending")
    if len(lines) > 1 and ("\n " in text or "\n\t" in text):
        lines = _unfold(lines)
    return lines


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (RFC 3261 7.3.1: LWS including a line break is one SP)."""
    out = [lines[0]]
    parts: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not parts:
                raise ParseError("Malformed header line")
            stripped = line.strip(" \t")
            if stripped:
                parts.append(stripped)
            continue
        if parts:
            out.append(" ".join(parts))
        parts = [line.rstrip(" \t")]
    if parts:
        out.append(" ".join(parts))
    return out


def _status_line(line: str) -> tuple[int, str]:
    version, _sp, rest = line.partition(" ")
    if version.upper() != "SIP/2.0":
        raise ParseError("Unsupported SIP version")
    code, _sp, reason = rest.partition(" ")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
        raise ParseError("Bad status code")
    return int(code), reason


def _request_line(line: str) -> tuple[str, str, bool]:
    """(method, Request-URI, whether the version is SIP/2.0)."""
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("Malformed request line")
    method, uri, version = parts
    if not _TOKEN.fullmatch(method) or ":" not in uri:
        raise ParseError("Malformed request line")
    version = version.upper()
    if version == "SIP/2.0":
        return method, uri, True
    if version.startswith("SIP/"):
        return method, uri, False
    raise ParseError("Malformed request line")


def _read_headers(text: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(header fields as (key, name, value), first value per key) of a header section."""
    lines = _split_lines(text)
    if len(lines) - 1 > MAX_HEADERS:
        raise ParseError("Too many headers")
    if "\x00" in text:
        raise ParseError("NUL byte in header")
    if len(text) > MAX_HEADER_LENGTH and any(len(line) > MAX_HEADER_LENGTH for line in lines[1:]):
        raise ParseError("Header too long")
    items: list[tuple[str, str, str]] = []
    append = items.append
    spellings = _SPELLINGS.get
    for line in lines[1:]:
        spelled, colon, value = line.partition(":")
        if not colon:
            raise ParseError("Header without colon")
        entry = spellings(spelled)
        if entry is None:
            try:
                entry = _name_entry(spelled.rstrip(" \t"))
            except HeaderError:
                raise ParseError("Bad header name") from None
        append((entry[0], entry[1], value.strip(" \t")))
    return items, {item[0]: item[2] for item in reversed(items)}


def _body(items: list[tuple[str, str, str]], first: dict[str, str], rest: bytes) -> bytes:
    declared = first.get("content-length")
    if declared is None:
        return rest
    # Differing Content-Lengths are how request smuggling starts: refuse them.
    values = {value for key, _name, value in items if key == "content-length"}
    if len(values) > 1 or not (declared.isascii() and declared.isdigit()):
        raise ParseError("Bad Content-Length")
    digits = declared.lstrip("0")
    if len(digits) > 9 or int(digits or "0") > len(rest):
        raise ParseError("Content-Length larger than body")
    return rest[: int(digits or "0")]


def _check_required(first: dict[str, str]) -> None:
    for key, name in _REQUIRED:
        if key not in first:
            raise ParseError(f"Missing header: {name}")
    if not first["call-id"]:
        raise ParseError("Bad Call-ID")
    forwards = first.get("max-forwards")
    if forwards is not None and not (forwards.isascii() and forwards.isdigit()):
        raise ParseError("Bad Max-Forwards")


def _seed_cseq(message: Request | Response, raw: str) -> CSeq:
    try:
        cseq = parse_cseq(raw)
    except HeaderError:
        raise ParseError("Bad CSeq") from None
    message._cache["cseq"] = (raw, cseq)
    return cseq


def _salvage(method: str, uri: str, text: str) -> Request | None:
    """What a 400 needs of a refused request: its Vias (to address the answer, RFC 3261
    18.2.2, and to let the client match it, 17.1.3) plus whichever of From, To, Call-ID
    and CSeq are present and parse; None when no usable Via is there (nothing can answer)."""
    wanted = {key for key, _name in _REQUIRED}
    fields: list[tuple[str, str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n")[1 : MAX_HEADERS + 1]:
        if line[:1] in (" ", "\t") or "\x00" in line or "\r" in line:
            continue
        raw_name, colon, value = line.partition(":")
        entry = _KNOWN.get(raw_name.strip(" \t").lower())
        if colon and entry is not None and entry[0] in wanted:
            fields.append((entry[0], entry[1], value.strip(" \t")))
    usable = [field for field in fields if _parses(field)]
    if not any(key == "via" for key, _name, _value in usable):
        return None
    return Request(method, uri, Headers._trusted(usable))


def _parses(field: tuple[str, str, str]) -> bool:
    key, _name, value = field
    probe = Request("OPTIONS", "sip:probe", Headers._trusted([field]))
    try:
        if key == "via":
            _ = probe.vias
        elif key in ("from", "to"):
            _ = probe.from_ if key == "from" else probe.to
        elif key == "cseq":
            _ = probe.cseq
        return bool(value)
    except ValueError:  # HeaderError and UriError
        return False


# ---- streams ---------------------------------------------------------------------------------

_PING = b"\r\n\r\n"
_LINE_BREAK = (0x0D, 0x0A)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages (RFC 3261 18.3: Content-Length is mandatory on
    streams) and CRLF keep-alives (RFC 5626 3.5.1). A header section or message over
    `max_message` bytes is refused before it is buffered whole, so a peer that never ends its
    headers costs at most `max_message` plus one read. After a framing error `next_message`
    keeps raising it and further input is dropped: the caller closes the connection."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._scanned = 0  # header end searched up to here (minus a separator's length)
        self._length: int | None = None  # total length of the message at the buffer's head
        self._error: ParseError | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        if self._error is not None:
            return
        self._buffer += data
        buffer = self._buffer
        if self._length is None and len(buffer) > self._max and buffer[0] not in _LINE_BREAK:
            # Bound memory even if the reader never calls next_message between feeds.
            try:
                self._frame()
            except ParseError as exc:
                self._fail(exc)

    def next_message(self) -> bytes | KeepAlive | None:
        """The next whole message (bytes for `parse`), a KeepAlive, or None to wait for data."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ParseError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: ParseError) -> None:
        self._error = exc
        self._buffer = bytearray()

    def _next(self) -> bytes | KeepAlive | None:
        buffer = self._buffer
        while self._length is None:
            if not buffer or buffer[0] not in _LINE_BREAK:
                break
            if buffer[:4] == _PING:
                del buffer[:4]
                return KeepAlive(pong=True)
            if _PING.startswith(buffer[:4]):
                return None  # could still become a ping
            del buffer[: 2 if buffer[:2] == b"\r\n" else 1]  # a lone CRLF (a pong): skip it
        if not buffer:
            return None
        if self._length is None and not self._frame():
            return None
        assert self._length is not None
        if len(buffer) < self._length:
            return None
        message = bytes(buffer[: self._length])
        del buffer[: self._length]
        self._length = None
        self._scanned = 0
        return message

    def _frame(self) -> bool:
        """Find the header end of the message at the buffer's head and its total length."""
        buffer = self._buffer
        end, body_start = _find_head_end(buffer, max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > self._max:
                raise ParseError("Message too large")
            return False
        length = body_start + _stream_content_length(bytes(buffer[:end]))
        if length > self._max:
            raise ParseError("Message too large")
        self._length = length
        return True


def _stream_content_length(head: bytes) -> int:
    if b"\n " in head or b"\n\t" in head:
        head = _FOLD.sub(b" ", head)
    length: int | None = None
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon or name.strip(b" \t").lower() not in (b"content-length", b"l"):
            continue
        value = value.strip(b" \t\r")
        if not value.isdigit():
            raise ParseError("Bad Content-Length")
        digits = value.lstrip(b"0")
        found = 10**18 if len(digits) > 18 else int(digits or b"0")  # int() of huge input is slow
        if length is not None and found != length:
            raise ParseError("Bad Content-Length")
        length = found
    if length is None:
        raise ParseError("Missing Content-Length on stream")
    return length


# ---- building responses ----------------------------------------------------------------------

# RFC 3261 21, with the codes of the extensions the gateway meets (RFC 3265, 3329, 3903, 4028,
# 4474, 5360, 5626, 6228, 6665, 8197, 8688).
_REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity Info", 437: "Unsupported Credential",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
    491: "Request Pending", 493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable", 607: "Unwanted",
    608: "Rejected",
}  # fmt: skip
_CLASS_REASONS = {
    1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error", 5: "Server Error",
    6: "Global Failure",
}  # fmt: skip


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """A response to `request` (RFC 3261 8.2.6.2): every Via in order, From, To (with `to_tag`
    added when it has no tag yet), Call-ID and CSeq copied; reason from RFC 3261 21 by default."""
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} is not in 100-699")
    if reason is None:
        reason = _REASONS.get(status) or _CLASS_REASONS[status // 100]
    elif "\r" in reason or "\n" in reason:
        raise ValueError("reason phrase contains CR or LF")
    items = [item for item in request.headers._items if item[0] == "via"]
    for key in ("from", "to", "call-id", "cseq"):
        for item in request.headers._items:
            if item[0] == key:
                items.append(item)
                break
    if to_tag is not None and "To" in request.headers and request.to.tag is None:
        items = [
            (key, name, f"{value};tag={to_tag}" if key == "to" else value)
            for key, name, value in items
        ]
    return Response(status, reason, Headers._trusted(items))


def new_branch() -> str:
    """A Via branch with the RFC 3261 8.1.1.7 magic cookie."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    """A From/To tag (RFC 3261 19.3: at least 32 random bits)."""
    return secrets.token_hex(8)


def new_call_id() -> str:
    """A globally unique Call-ID (RFC 3261 8.1.1.4)."""
    return secrets.token_hex(16)
