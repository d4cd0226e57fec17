"""Structured SIP header values: Via, name-addr (From, To, Contact, Route...), CSeq, parameters.

Implements the header grammars of RFC 3261 20 and 25.1 that the gateway reads: Via with
sent-by and its parameters (branch, received, RFC 3581 rport, IPv6 sent-by as in RFC 5118),
name-addr / addr-spec with quoted display names and the rule of RFC 3261 20.10 that
parameters after a bare URI belong to the header, CSeq, generic parameters and the comma-separated
header lists of RFC 3261 7.3.1. Parsing is done on demand by the message properties, not for
every message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.sip.uri import SipUri, TelUri, UriError, format_host, parse_hostport, parse_uri

__all__ = [
    "CSeq",
    "HeaderError",
    "NameAddr",
    "Via",
    "format_params",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_params",
    "parse_via",
    "parse_via_list",
    "split_header_list",
]


class HeaderError(ValueError):
    """A header value that does not follow its grammar; the message names the problem."""


_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = re.compile(rf"[{_TOKEN_CHARS}]+")
_DISPLAY_WORDS = re.compile(rf"[{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*")
_SENT_PROTOCOL = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)"
    r"[ \t]+"
)
# Methods the gateway sees all the time: known tokens, so the regex check is skipped for them.
_COMMON_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "UPDATE", "PRACK", "INFO"}
    | {"REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH"}
)
_MAX_CSEQ = 2**31  # RFC 3261 8.1.1.5: the sequence number is below 2**31


@dataclass
class Via:
    """One Via value (RFC 3261 20.42): transport upper-case, host without IPv6 brackets."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return (
            f"SIP/2.0/{self.transport} {format_host(self.host)}{port}{format_params(self.params)}"
        )


@dataclass
class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...).
    `display` is unquoted (None when absent); `params` are the header's, not the URI's."""

    display: str | None
    uri: SipUri | TelUri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = "" if self.display is None else f"{_quote(self.display)} "
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass
class CSeq:
    """The CSeq header (RFC 3261 20.16)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_via(value: str) -> Via:
    """Parse one Via value, e.g. `SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport`."""
    match = _SENT_PROTOCOL.match(value)
    if match is None:
        raise HeaderError("Bad Via: malformed sent-protocol")
    protocol, version, transport = match.groups()
    if protocol.upper() != "SIP" or version != "2.0":
        raise HeaderError("Bad Via: protocol is not SIP/2.0")
    sent_by, semi, param_text = value[match.end() :].partition(";")
    # RFC 3261 25.1 allows LWS around the colon of sent-by.
    sent_by = "".join(sent_by.split())
    if not sent_by:
        raise HeaderError("Bad Via: missing sent-by")
    try:
        host, port = parse_hostport(sent_by)
    except UriError as exc:
        raise HeaderError(f"Bad Via sent-by: {exc}") from None
    params = parse_params(param_text) if semi else {}
    return Via(transport.upper(), host, port, params)


def parse_via_list(value: str) -> list[Via]:
    """Parse a Via header value that may hold several comma-separated Vias."""
    return [parse_via(item) for item in split_header_list(value)]


def parse_name_addr(value: str) -> NameAddr:
    """Parse `"Display" <uri>;params`, `Display <uri>;params`, `<uri>;params` or the bare
    `uri;params` form, where every parameter belongs to the header (RFC 3261 20.10)."""
    text = value.strip(" \t")
    if not text:
        raise HeaderError("Empty name-addr")
    if text[0] == '"':
        end = _closing_quote(text, 1)
        display: str | None = _unquote(text[1:end])
        rest = text[end + 1 :].lstrip(" \t")
        if not rest.startswith("<"):
            raise HeaderError("Expected '<' after display name")
        return _angle_addr(display, rest)
    lt = text.find("<")
    if lt >= 0:
        display = text[:lt].strip(" \t") or None
        if display is not None and not _DISPLAY_WORDS.fullmatch(display):
            raise HeaderError("Bad display name")
        return _angle_addr(display, text[lt:])
    uri_text, semi, param_text = text.partition(";")
    return NameAddr(None, _uri(uri_text.rstrip(" \t")), parse_params(param_text) if semi else {})


def parse_name_addr_list(value: str) -> list[NameAddr]:
    """Parse a comma-separated list of name-addrs (Contact, Route, Record-Route...).
    A Contact of `*` is not a name-addr: the caller checks for it first."""
    return [parse_name_addr(item) for item in split_header_list(value)]


def parse_cseq(value: str) -> CSeq:
    """Parse `4711 INVITE`."""
    parts = value.split()
    if len(parts) != 2:
        raise HeaderError("Bad CSeq")
    seq_text, method = parts
    if not (seq_text.isascii() and seq_text.isdigit()) or len(seq_text) > 10:
        raise HeaderError("Bad CSeq number")
    seq = int(seq_text)
    if seq >= _MAX_CSEQ:
        raise HeaderError("Bad CSeq number")
    if method not in _COMMON_METHODS and not _TOKEN.fullmatch(method):
        raise HeaderError("Bad CSeq method")
    return CSeq(seq, method)


def parse_params(text: str) -> dict[str, str | None]:
    """Parse a `;a=b;c;d="x;y"` tail (leading `;` optional) into lower-case names and values
    as written (quoted strings keep their quotes). A name without `=` maps to None."""
    pieces = _split_outside(text, ";", angle=False) if '"' in text else text.split(";")
    params: dict[str, str | None] = {}
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip(" \t").lower()
        if not name and not eq and not value.strip(" \t"):
            continue  # empty element, e.g. a trailing ";"
        if not _TOKEN.fullmatch(name):
            raise HeaderError("Bad parameter name")
        if name in params:
            # Two differing tags or branches would make matching ambiguous.
            raise HeaderError(f"Duplicate parameter: {name}")
        params[name] = value.strip(" \t") if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """The `;name=value;flag` tail of a header (values written as stored)."""
    if not params:
        return ""
    return "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in params.items()
    )


def split_header_list(value: str) -> list[str]:
    """Split a header value on commas that are not inside quotes or `<>` (RFC 3261 7.3.1).
    Elements are stripped; empty elements are dropped."""
    if "," not in value:
        item = value.strip(" \t")
        return [item] if item else []
    if '"' in value or "<" in value:
        pieces = _split_outside(value, ",", angle=True)
    else:
        pieces = value.split(",")
    return [item for item in (piece.strip(" \t") for piece in pieces) if item]


def _angle_addr(display: str | None, text: str) -> NameAddr:
    gt = text.find(">")
    if gt < 0:
        raise HeaderError("Missing '>' in name-addr")
    uri = _uri(text[1:gt].strip(" \t"))
    rest = text[gt + 1 :].strip(" \t")
    if rest and rest[0] != ";":
        raise HeaderError("Unexpected text after '>' in name-addr")
    return NameAddr(display, uri, parse_params(rest[1:]) if rest else {})


def _uri(text: str) -> SipUri | TelUri:
    try:
        return parse_uri(text)
    except UriError as exc:
        raise HeaderError(str(exc)) from None


def _split_outside(text: str, sep: str, *, angle: bool) -> list[str]:
    """Split on `sep` outside quoted strings (and outside `<...>` when `angle`)."""
    pieces: list[str] = []
    start = pos = 0
    while True:
        cut = text.find(sep, pos)
        quote = text.find('"', pos)
        lt = text.find("<", pos) if angle else -1
        nearest = min((i for i in (cut, quote, lt) if i >= 0), default=-1)
        if nearest < 0:
            pieces.append(text[start:])
            return pieces
        if nearest == quote:
            pos = _closing_quote(text, quote + 1) + 1
        elif nearest == lt:
            gt = text.find(">", lt)
            if gt < 0:
                raise HeaderError("Missing '>' in header value")
            pos = gt + 1
        else:
            pieces.append(text[start:cut])
            start = pos = cut + 1


def _closing_quote(text: str, pos: int) -> int:
    """Index of the quote closing a quoted string whose content starts at `pos`."""
    while True:
        quote = text.find('"', pos)
        if quote < 0:
            raise HeaderError("Unterminated quoted string")
        backslash = text.find("\\", pos, quote)
        if backslash < 0:
            return quote
        pos = backslash + 2  # a quoted-pair: the escaped character never closes the string


def _unquote(content: str) -> str:
    if "\\" not in content:
        return content
    out: list[str] = []
    pos = 0
    while (backslash := content.find("\\", pos)) >= 0:
        out.append(content[pos:backslash])
        out.append(content[backslash + 1 : backslash + 2])
        pos = backslash + 2
    out.append(content[pos:])
    return "".join(out)


def _quote(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
