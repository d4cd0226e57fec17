"""SIP digest authentication, client side: answering 401/407 challenges for one account.

RFC 3261 22.2-22.3: a 401 carries WWW-Authenticate and is answered with Authorization, a
407 carries Proxy-Authenticate and is answered with Proxy-Authorization. RFC 7616 3.7:
of several challenges (one per algorithm) the first one we support is used, so the
server's order of preference decides; MD5 and SHA-256 (and their -sess forms) with
qop=auth, cnonce and nc (RFC 7616 3.4, RFC 2617 3.2.2). The response itself is computed
by ``gateway.sip.auth.digest_authorization``, the same code the server side checks with.

Loop protection: a challenge is answered at most once per nonce. When the request we just
sent answered a challenge and the server challenges again without ``stale=true``, the
credentials were refused: ``DigestRejected``, not another try. Credentials reused for a
later request with the same nonce (``preemptive``, nc counting up, RFC 7616 3.4.5) may be
challenged once more, as servers do when the nonce has aged out.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.sip.auth import AuthError, digest_authorization, parse_auth_params

__all__ = ["DigestClient", "DigestRejected", "choose_challenge"]

_SUPPORTED = frozenset({"MD5", "MD5-SESS", "SHA-256", "SHA-256-SESS"})
_REMEMBERED_NONCES = 16


class DigestRejected(AuthError):
    """A challenge we will not answer: refused credentials, or nothing we support."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge picked for answering, with what the loop protection needs."""

    value: str
    realm: str
    nonce: str
    algorithm: str
    stale: bool


def choose_challenge(values: Sequence[str]) -> Challenge:
    """The first Digest challenge we can answer (RFC 7616 3.7); DigestRejected if none."""
    problems: list[str] = []
    for value in values:
        try:
            scheme, params = parse_auth_params(value)
        except AuthError as exc:
            problems.append(str(exc))
            continue
        problem = _unsupported(scheme, params)
        if problem is not None:
            problems.append(problem)
            continue
        return Challenge(
            value=value,
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=params.get("algorithm", "MD5"),
            stale=params.get("stale", "false").lower() == "true",
        )
    if not problems:
        raise DigestRejected("no challenge (WWW-Authenticate / Proxy-Authenticate) in the response")
    raise DigestRejected("no challenge we can answer: " + "; ".join(problems))


def _unsupported(scheme: str, params: dict[str, str]) -> str | None:
    if scheme.lower() != "digest":
        return f"scheme {scheme} is not Digest"
    for name in ("realm", "nonce"):
        if name not in params:
            return f"missing parameter: {name}"
    algorithm = params.get("algorithm", "MD5")
    if algorithm.upper() not in _SUPPORTED:
        return f"unsupported algorithm {algorithm}"
    qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        return f"unsupported qop {params['qop']}"
    return None


class DigestClient:
    """The credentials of one account and the nonce it last answered (sans-IO)."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.username = username
        self._password = password
        self._cnonce = cnonce
        self._challenge: Challenge | None = None
        self._proxy = False
        self._nc = 0
        self._answered_just_now = False
        self._answered: deque[str] = deque(maxlen=_REMEMBERED_NONCES)

    @property
    def nonce(self) -> str | None:
        """The nonce credentials are currently computed with (None before any challenge)."""
        return self._challenge.nonce if self._challenge is not None else None

    @property
    def algorithm(self) -> str | None:
        return self._challenge.algorithm if self._challenge is not None else None

    def answer(
        self, status: int, challenges: Sequence[str], method: str, uri: str
    ) -> tuple[str, str]:
        """(header name, value) answering a 401 or 407; raises DigestRejected to give up."""
        if status not in (401, 407):
            raise ValueError(f"status {status} is not a challenge (401 or 407)")
        challenge = choose_challenge(challenges)
        if challenge.nonce in self._answered:
            raise DigestRejected(
                f"credentials of {self.username!r} refused: challenged again with the nonce "
                "already answered"
            )
        if self._answered_just_now and not challenge.stale:
            raise DigestRejected(
                f"credentials of {self.username!r} refused: challenged again without stale=true"
            )
        self._challenge = challenge
        self._proxy = status == 407
        self._nc = 0
        self._answered.append(challenge.nonce)
        self._answered_just_now = True
        return self._header(method, uri)

    def preemptive(self, method: str, uri: str) -> tuple[str, str] | None:
        """Credentials for a new request with the nonce last answered (nc + 1), if any.

        Call it for every request that does not answer a challenge: it also tells the
        loop protection that the next challenge is not a refusal of fresh credentials.
        """
        self._answered_just_now = False
        if self._challenge is None:
            return None
        return self._header(method, uri)

    def forget(self) -> None:
        """Drop the nonce: the next request goes without credentials."""
        self._challenge = None
        self._answered_just_now = False

    def _header(self, method: str, uri: str) -> tuple[str, str]:
        assert self._challenge is not None
        self._nc += 1
        value = digest_authorization(
            self._challenge.value,
            method=method,
            uri=uri,
            username=self.username,
            password=self._password,
            nc=self._nc,
            cnonce=self._cnonce(),
        )
        return ("Proxy-Authorization" if self._proxy else "Authorization"), value
