"""SIP, SIPS and tel URIs: parse and serialize.

Implements the URI grammar of RFC 3261 19.1 and 25.1 (sip: and sips: URIs with user, password,
host, port, URI parameters and headers, %-escapes) and the telephone-subscriber part of RFC 3966
(tel: URIs). Escaped characters are decoded on parse and re-escaped on output only where the
grammar requires, so `parse_uri(str(uri)) == uri` (RFC 3261 19.1.4: escaped and unescaped
unreserved characters are equivalent).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "SipUri",
    "TelUri",
    "UriError",
    "format_host",
    "parse_hostport",
    "parse_uri",
]


class UriError(ValueError):
    """A URI that does not follow RFC 3261 19.1 / RFC 3966; the message names the problem."""


# Characters each URI component may carry unescaped (RFC 3261 25.1); everything else is
# written as %XX of its UTF-8 bytes.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER_UNSAFE = re.compile(rf"[^{_UNRESERVED}&=+$,;?/]")
_PASSWORD_UNSAFE = re.compile(rf"[^{_UNRESERVED}&=+$,]")
_PARAM_UNSAFE = re.compile(rf"[^{_UNRESERVED}\[\]/:&+$]")
_HEADER_UNSAFE = re.compile(rf"[^{_UNRESERVED}\[\]/?:+$]")

# Outside these no URI character is legal anywhere (controls, space, non-ASCII, delimiters).
_ILLEGAL = re.compile(r'[^\x21-\x7e]|["<>\\^`{|}]')
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_TEL_GLOBAL = re.compile(r"\+[0-9\-.()]*[0-9][0-9\-.()]*")
_TEL_LOCAL = re.compile(r"[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass
class SipUri:
    """A sip: or sips: URI (RFC 3261 19.1.1). `host` holds IPv6 addresses without brackets;
    `user`, `password`, parameter values and header fields are stored unescaped; parameter
    names are lower-case and a parameter without a value maps to None."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        """The transport parameter, lower-case; "udp" for sip: and "tls" for sips: by default."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(_escape(self.user, _USER_UNSAFE))
            if self.password is not None:
                parts += [":", _escape(self.password, _PASSWORD_UNSAFE)]
            parts.append("@")
        parts.append(format_host(self.host))
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_params(self.params))
        if self.headers:
            fields = (
                f"{_escape(name, _HEADER_UNSAFE)}={_escape(value, _HEADER_UNSAFE)}"
                for name, value in self.headers.items()
            )
            parts += ["?", "&".join(fields)]
        return "".join(parts)


@dataclass
class TelUri:
    """A tel: URI (RFC 3966): the number as written (visual separators kept) and its
    parameters (lower-case names, unescaped values)."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"


def parse_uri(text: str) -> SipUri | TelUri:
    """Parse a sip:, sips: or tel: URI; raise UriError naming what is wrong."""
    text = text.strip(" \t")
    if not text:
        raise UriError("Empty URI")
    if _ILLEGAL.search(text):
        raise UriError("Illegal character in URI")
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme:
        raise UriError("Missing URI scheme")
    if not _SCHEME.fullmatch(scheme):
        raise UriError("Bad URI scheme")
    lowered = scheme.lower()
    if lowered in ("sip", "sips"):
        return _parse_sip(lowered, rest)
    if lowered == "tel":
        return _parse_tel(rest)
    raise UriError(f"Unsupported URI scheme: {lowered}")


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Split `host[:port]` (IPv6 in brackets) into (host without brackets, port or None)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UriError("Unterminated IPv6 reference in host")
        host = text[1:close]
        _check_ipv6(host)
        rest = text[close + 1 :]
        if rest and rest[0] != ":":
            raise UriError("Bad host in URI")
        return host, _parse_port(rest[1:]) if rest else None
    host, colon, port_text = text.partition(":")
    if ":" in port_text:
        raise UriError("IPv6 address without brackets in URI")
    _check_host(host)
    return host, _parse_port(port_text) if colon else None


def format_host(host: str) -> str:
    """The host as written in a URI or Via: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def _parse_sip(scheme: str, rest: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    # A user part cannot hold an unescaped "@", so the first one ends the userinfo.
    at = rest.find("@")
    if at >= 0:
        user_text, colon, password_text = rest[:at].partition(":")
        user = _unescape(user_text)
        if not user:
            raise UriError("Empty user part in URI")
        password = _unescape(password_text) if colon else None
        rest = rest[at + 1 :]
    rest, question, header_text = rest.partition("?")
    hostport, semi, param_text = rest.partition(";")
    if not hostport:
        raise UriError("Empty host in URI")
    host, port = parse_hostport(hostport)
    params = _parse_uri_params(param_text) if semi else {}
    headers = _parse_uri_headers(header_text) if question else {}
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_tel(rest: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if not (_TEL_GLOBAL.fullmatch(number) or _TEL_LOCAL.fullmatch(number)):
        raise UriError("Bad telephone number in tel URI")
    return TelUri(number, _parse_uri_params(param_text) if semi else {})


def _parse_uri_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for piece in text.split(";"):
        name_text, eq, value = piece.partition("=")
        name = _unescape(name_text).lower()
        if not name:
            raise UriError("Empty URI parameter")
        if name in params:
            # RFC 3261 19.1.1: a parameter MUST NOT appear more than once.
            raise UriError("Duplicate URI parameter")
        params[name] = _unescape(value) if eq else None
    return params


def _parse_uri_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for piece in text.split("&"):
        name_text, _eq, value = piece.partition("=")
        name = _unescape(name_text)
        if not name:
            raise UriError("Empty URI header")
        headers[name] = _unescape(value)
    return headers


def _format_params(params: dict[str, str | None]) -> str:
    if not params:
        return ""
    return "".join(
        f";{_escape(name, _PARAM_UNSAFE)}"
        if value is None
        else f";{_escape(name, _PARAM_UNSAFE)}={_escape(value, _PARAM_UNSAFE)}"
        for name, value in params.items()
    )


def _check_host(host: str) -> None:
    if not host:
        raise UriError("Empty host in URI")
    if _IPV4.fullmatch(host):
        return
    if not _HOSTNAME.fullmatch(host):
        raise UriError("Bad host in URI")
    # RFC 3261 25.1: a top label starts with a letter, so digits there mean a bad IPv4 address.
    if host.rstrip(".").rpartition(".")[2][0].isdigit():
        raise UriError("Bad IPv4 address in URI")


def _check_ipv6(host: str) -> None:
    # ipaddress accepts "%zone" suffixes, which have no place in a SIP URI.
    if "%" in host:
        raise UriError("Bad IPv6 address in URI")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise UriError("Bad IPv6 address in URI") from None


def _parse_port(text: str) -> int:
    if not text or len(text) > 5 or not (text.isascii() and text.isdigit()):
        raise UriError("Bad port in URI")
    port = int(text)
    if port > 65535:
        raise UriError("Bad port in URI")
    return port


def _escape(text: str, unsafe: re.Pattern[str]) -> str:
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(_percent_encode, text)


def _percent_encode(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogateescape"))


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    pieces = text.split("%")
    out = bytearray(pieces[0].encode("ascii"))
    for piece in pieces[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            raise UriError("Bad %-escape in URI")
        out.append(int(piece[:2], 16))
        out += piece[2:].encode("ascii")
    # surrogateescape keeps escaped bytes that are not UTF-8 so they re-escape identically.
    return out.decode("utf-8", "surrogateescape")
