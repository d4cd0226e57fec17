"""SIP digest authentication: server challenges and verification, client responses.

Implements digest access authentication as SIP uses it:

* RFC 3261 section 22.4: WWW-Authenticate / Proxy-Authenticate challenges and the
  Authorization / Proxy-Authorization credentials that answer them.
* RFC 7616 sections 3.3-3.5: algorithms SHA-256 and MD5 (and their ``-sess`` variants),
  ``qop=auth`` with ``nc`` and ``cnonce``, ``stale=true``; response computed per 3.4.1.
  MD5 responses are the same as RFC 2617 ones, so old SIP phones interoperate.

Server policy (``DigestServer``):

* Nonces are stateless: ``base64url(issue_time(8, big-endian double) || salt(8) ||
  HMAC-SHA256(secret, issue_time || salt || realm)[:16])``. Issuing a challenge stores
  nothing, so a flood of unauthenticated requests costs no memory. The salt keeps two
  challenges issued at the same instant distinct, which the replay table relies on.
* ``qop=auth`` is required. RFC 2069-style responses without qop (no nc, no cnonce) are
  refused as MALFORMED: they give no replay protection, and every SIP UA since RFC 3261
  supports qop=auth. ``auth-int`` and ``userhash`` are not supported.
* Replay: the highest ``nc`` accepted per nonce is remembered only after a successful
  verify, in a bounded LRU. A request reusing an old ``nc`` with that nonce is REPLAY.
* An expired nonce with a correct response is STALE, so the caller re-challenges with
  ``stale=true`` and the UA retries without asking its user for the password again.
* An unknown user costs the same hashing as a known one (a dummy password is hashed),
  and the caller answers UNKNOWN_USER exactly like BAD_CREDENTIALS.

The server sends no ``opaque``; one returned by a client is ignored. The caller compares
``AuthResult.uri`` with the Request-URI if it wants that check (RFC 7616 3.4.6).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "AuthError",
    "AuthOutcome",
    "AuthResult",
    "DigestServer",
    "digest_authorization",
    "parse_auth_params",
]

# An Authorization header is a few hundred bytes; anything this long is hostile.
MAX_HEADER_LENGTH = 8192

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Unrolled-loop quoted-string: each character is consumed by exactly one branch, so
# matching is linear (no backtracking blow-up). Control characters other than HTAB are
# refused inside quotes (RFC 7230 qdtext).
_QDTEXT = r'[^"\\\x00-\x08\x0a-\x1f\x7f]'
_QUOTED_PAIR = r"\\[^\x00-\x08\x0a-\x1f\x7f]"
_QUOTED = rf'"({_QDTEXT}*(?:{_QUOTED_PAIR}{_QDTEXT}*)*)"'
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|[ \t]*\Z)")
_PARAM_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:{_QUOTED}|({_TOKEN}))[ \t]*")
# One list element: the parameter plus the comma(s) after it, or the end of the value.
_ITEM_RE = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:{_QUOTED}|({_TOKEN}))[ \t]*(?:,[ \t,]*|\Z)"
)
_NAME_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]*")
_SEPARATORS_RE = re.compile(r"[ \t,]*")
_UNESCAPE_RE = re.compile(r"\\(.)")

_HEX = frozenset("0123456789abcdefABCDEF")
_NONCE_TEXT_LENGTH = 43  # base64url of 32 bytes, unpadded
_MAC_LENGTH = 16


class AuthError(ValueError):
    """A challenge or credentials header that cannot be used; the text says why."""


class AuthOutcome(enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_USER = "unknown-user"
    BAD_CREDENTIALS = "bad-credentials"
    STALE = "stale"
    REPLAY = "replay"
    WRONG_REALM = "wrong-realm"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """What ``DigestServer.verify`` decided, with a reason fit for logs."""

    outcome: AuthOutcome
    username: str | None
    reason: str
    uri: str | None = None
    algorithm: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str
    digest: Callable[[bytes], str]
    hex_length: int
    session: bool


_ALGORITHMS = {
    a.name.upper(): a
    for a in (
        _Algorithm("MD5", _md5_hex, 32, False),
        _Algorithm("MD5-sess", _md5_hex, 32, True),
        _Algorithm("SHA-256", _sha256_hex, 64, False),
        _Algorithm("SHA-256-sess", _sha256_hex, 64, True),
    )
}


def _algorithm(name: str) -> _Algorithm:
    found = _ALGORITHMS.get(name.upper())
    if found is None:
        raise AuthError(f"unsupported algorithm {name}")
    return found


def _response(
    algo: _Algorithm,
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    cnonce: str,
    qop_part: str,
) -> str:
    """RFC 7616 3.4.1; ``qop_part`` is ``nc:cnonce:qop:`` or empty for RFC 2069 style."""
    ha1 = algo.digest(f"{username}:{realm}:{password}".encode())
    if algo.session:
        ha1 = algo.digest(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = algo.digest(f"{method}:{uri}".encode())
    return algo.digest(f"{ha1}:{nonce}:{qop_part}{ha2}".encode())


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_scheme(value: str) -> tuple[str, int]:
    if len(value) > MAX_HEADER_LENGTH:
        raise AuthError("header too long")
    if not value.strip():
        raise AuthError("empty header")
    match = _SCHEME_RE.match(value)
    if match is None:
        raise AuthError("expected an authentication scheme")
    return match.group(1), match.end()


def _param_error(value: str, pos: int) -> AuthError:
    """Explain why ``_PARAM_RE`` did not match at ``pos`` (only on the error path)."""
    name_match = _NAME_RE.match(value, pos)
    if name_match is None:
        return AuthError(f"expected parameter name at offset {pos}")
    name = name_match.group(1).lower()
    after = name_match.end()
    if after >= len(value) or value[after] != "=":
        return AuthError(f"expected '=' after {name}")
    rest = value[after + 1 :].lstrip(" \t")
    if rest.startswith('"'):
        return AuthError(f"unterminated or invalid quoted string for {name}")
    if not rest or rest[0] == ",":
        return AuthError(f"empty value for {name}")
    return AuthError(f"bad value for {name} (missing quotes?)")


def _parse_params(value: str, pos: int) -> dict[str, str]:
    params: dict[str, str] = {}
    end = len(value)
    pos = _skip_separators(value, pos)
    match_item = _ITEM_RE.match
    while pos < end:
        match = match_item(value, pos)
        if match is None:
            raise _item_error(value, pos)
        raw_name, quoted, token = match.groups()
        name = raw_name.lower()
        if name in params:
            raise AuthError(f"duplicate parameter: {name}")
        if quoted is None:
            params[name] = token
        elif "\\" in quoted:
            params[name] = _UNESCAPE_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = match.end()
    return params


def _item_error(value: str, pos: int) -> AuthError:
    match = _PARAM_RE.match(value, pos)
    if match is None:
        return _param_error(value, pos)
    name = match.group(1).lower()
    if match.group(3) is not None:
        return AuthError(f"bad value for {name} (missing quotes?)")
    return AuthError(f"expected ',' after {name}")


def _skip_separators(value: str, pos: int) -> int:
    match = _SEPARATORS_RE.match(value, pos)
    return pos if match is None else match.end()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge or credentials header value into (scheme, params).

    Parameter names are lower-cased; quoted values are unescaped. Raises AuthError with
    the precise problem (unterminated quote, duplicate parameter, missing '=' ...).
    """
    scheme, pos = _split_scheme(value)
    return scheme, _parse_params(value, pos)


@dataclass(frozen=True, slots=True)
class _Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: _Algorithm
    nc: int
    nc_text: str
    cnonce: str


_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")


def _credentials(params: dict[str, str]) -> _Credentials:
    for name in _REQUIRED:
        if name not in params:
            raise AuthError(f"missing parameter: {name}")
    for name in ("username", "nonce", "uri", "cnonce"):
        if not params[name]:
            raise AuthError(f"empty parameter: {name}")
    if params["qop"].lower() != "auth":
        raise AuthError(f"unsupported qop {params['qop']}")
    if params.get("userhash", "false").lower() != "false":
        raise AuthError("userhash not supported")
    algo = _algorithm(params.get("algorithm", "MD5"))
    nc_text = params["nc"]
    if len(nc_text) != 8 or not _HEX.issuperset(nc_text):
        raise AuthError(f"bad nc {nc_text!r} (want 8 hex digits)")
    response = params["response"]
    if len(response) != algo.hex_length or not _HEX.issuperset(response):
        raise AuthError(f"bad response (want {algo.hex_length} hex digits for {algo.name})")
    return _Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response.lower(),
        algorithm=algo,
        nc=int(nc_text, 16),
        nc_text=nc_text,
        cnonce=params["cnonce"],
    )


class DigestServer:
    """Issues digest challenges and verifies credentials for one realm (sans-IO)."""

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        replay_capacity: int = 100_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("secret: need at least 16 bytes")
        if nonce_ttl <= 0:
            raise ValueError("nonce_ttl: must be positive")
        if replay_capacity < 1:
            raise ValueError("replay_capacity: must be at least 1")
        if not algorithms:
            raise ValueError("algorithms: need at least one")
        resolved = [_algorithm(name) for name in algorithms]
        # RFC 7616 3.7: challenges go out in the order of preference given. The
        # caller decides it: many deployed clients answer only the first one.
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.replay_capacity = replay_capacity
        self._secret = secret
        self._realm_bytes = realm.encode()
        self._algorithms = {a.name.upper(): a for a in resolved}
        self._challenge_algorithms = [a.name for a in resolved]
        self._highest_nc: OrderedDict[str, int] = OrderedDict()

    @property
    def replay_entries(self) -> int:
        """How many nonces the replay table currently remembers."""
        return len(self._highest_nc)

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.digest(self._secret, stamp + self._realm_bytes, "sha256")[:_MAC_LENGTH]

    def new_nonce(self, now: float) -> str:
        stamp = struct.pack(">d", now) + secrets.token_bytes(8)
        raw = stamp + self._mac(stamp)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, in preference order."""
        nonce = self.new_nonce(now)
        tail = ", stale=true" if stale else ""
        realm = _quote(self.realm)
        return [
            f'Digest realm={realm}, nonce="{nonce}", algorithm={name}, qop="auth"{tail}'
            for name in self._challenge_algorithms
        ]

    def _nonce_issued(self, nonce: str) -> float | None:
        """Issue time of a nonce we made; None when forged or altered."""
        raw = base64.urlsafe_b64decode(nonce + "=")
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != nonce.encode("ascii"):
            raise AuthError("nonce malformed")
        stamp, mac = raw[:-_MAC_LENGTH], raw[-_MAC_LENGTH:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return None
        issued: float = struct.unpack(">d", stamp[:8])[0]
        return issued

    def _check_nonce(self, nonce: str) -> float | None:
        if len(nonce) != _NONCE_TEXT_LENGTH or not nonce.isascii():
            raise AuthError("nonce malformed")
        try:
            return self._nonce_issued(nonce)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise AuthError("nonce malformed") from exc

    def verify(
        self,
        method: str,
        authorization: str,
        password_for: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        """Check an Authorization / Proxy-Authorization value for a request ``method``."""
        username: str | None = None
        try:
            scheme, pos = _split_scheme(authorization)
            if scheme.lower() != "digest":
                raise AuthError(f"unsupported scheme {scheme}")
            params = _parse_params(authorization, pos)
            username = params.get("username")
            creds = _credentials(params)
            if creds.algorithm.name.upper() not in self._algorithms:
                raise AuthError(f"algorithm {creds.algorithm.name} not offered")
            if creds.realm != self.realm:
                return self._result(AuthOutcome.WRONG_REALM, creds, f"realm {creds.realm!r}")
            issued = self._check_nonce(creds.nonce)
        except AuthError as exc:
            return AuthResult(AuthOutcome.MALFORMED, username, str(exc))
        if issued is None:
            return self._result(AuthOutcome.BAD_CREDENTIALS, creds, "nonce forged")
        return self._check_response(method, creds, password_for, issued, now)

    def _check_response(
        self,
        method: str,
        creds: _Credentials,
        password_for: Callable[[str], str | None],
        issued: float,
        now: float,
    ) -> AuthResult:
        password = password_for(creds.username)
        expected = _response(
            creds.algorithm,
            username=creds.username,
            realm=self.realm,
            password="" if password is None else password,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            cnonce=creds.cnonce,
            qop_part=f"{creds.nc_text}:{creds.cnonce}:auth:",
        )
        matched = hmac.compare_digest(expected, creds.response)
        if password is None:
            return self._result(AuthOutcome.UNKNOWN_USER, creds, f"unknown user {creds.username}")
        if not matched:
            return self._result(AuthOutcome.BAD_CREDENTIALS, creds, "response mismatch")
        age = now - issued
        if age < 0 or age > self.nonce_ttl:
            return self._result(AuthOutcome.STALE, creds, "nonce expired")
        return self._accept_nc(creds)

    def _accept_nc(self, creds: _Credentials) -> AuthResult:
        table = self._highest_nc
        highest = table.get(creds.nonce)
        if highest is not None and creds.nc <= highest:
            return self._result(AuthOutcome.REPLAY, creds, f"nc replayed ({creds.nc_text})")
        table[creds.nonce] = creds.nc
        table.move_to_end(creds.nonce)
        if len(table) > self.replay_capacity:
            table.popitem(last=False)
        return self._result(AuthOutcome.OK, creds, "ok")

    @staticmethod
    def _result(outcome: AuthOutcome, creds: _Credentials, reason: str) -> AuthResult:
        return AuthResult(outcome, creds.username, reason, creds.uri, creds.algorithm.name)


def digest_authorization(
    challenge: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """Authorization header value answering one digest ``challenge`` (client side).

    Uses qop=auth when the challenge offers it and the RFC 2069 form when it has no qop.
    Raises AuthError for a challenge that is not Digest, lacks realm or nonce, or offers
    only an unsupported algorithm or qop.
    """
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError("nc: must be in 1..0xFFFFFFFF")
    scheme, params = parse_auth_params(challenge)
    if scheme.lower() != "digest":
        raise AuthError(f"unsupported scheme {scheme}")
    for name in ("realm", "nonce"):
        if name not in params:
            raise AuthError(f"missing parameter: {name}")
    algo = _algorithm(params.get("algorithm", "MD5"))
    qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise AuthError(f"unsupported qop {params['qop']}")
    cnonce = secrets.token_hex(8) if cnonce is None else cnonce
    nc_text = f"{nc:08x}"
    realm, nonce = params["realm"], params["nonce"]
    response = _response(
        algo,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        cnonce=cnonce,
        qop_part=f"{nc_text}:{cnonce}:auth:" if qops else "",
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f'response="{response}"',
        f"algorithm={algo.name}",
    ]
    if qops:
        parts += [f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={nc_text}"]
    if "opaque" in params:
        parts.append(f"opaque={_quote(params['opaque'])}")
    return "Digest " + ", ".join(parts)
