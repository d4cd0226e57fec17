"""SRTP sessions and SDES keying for the app leg (sans-IO).

Keying is SDP Security Descriptions (RFC 4568): the ``a=crypto`` grammar of
9.1, key parameters and lifetimes of 6.1, the session parameters of 6.3, and
the answerer's choice of 7.1.2 (the first offered line it supports). Crypto
suites are AES_CM_128_HMAC_SHA1_80 and _32 (RFC 4568 6.2) and
AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714 12 and 14.1).

Packet protection (SRTP and SRTCP, RFC 3711; AEAD per RFC 7714 8 and 9) is
libsrtp 2 through PyPI ``pylibsrtp``: one libsrtp call per packet, one
libsrtp session per direction. A sender's session derives a stream for each
SSRC it sees (``ssrc_any_outbound``), a receiver's for each SSRC that
authenticates (``ssrc_any_inbound``).

What libsrtp 2.7 (bundled in pylibsrtp 1.0) was found to do, and what this
module relies on (tests/unit/test_srtp.py checks each point):

* A receiver meeting an unknown SSRC authenticates the packet with the
  template stream and clones a stream for that SSRC only once the packet
  authenticates. Forged packets with random SSRCs therefore allocate
  nothing; ``Session.remove_stream`` answers "no appropriate context found"
  for their SSRCs, and 10,000 of them leave the process size unchanged
  (10,000 authentic SSRCs grow it by 2.5 to 5 MB).
* Authenticated peers, and whatever the relay hands to a sender, could still
  create streams without end, so each side admits at most ``max_ssrcs``
  distinct SSRCs and drops the rest (:attr:`SrtpDropReason.SSRC_LIMIT`).
  Streams are never evicted: a sender whose stream restarted would reuse
  keystream for an index it already sent, and a receiver would forget which
  indexes it already accepted.
* libsrtp reports failures by message (pylibsrtp raises ``Error`` with
  libsrtp's text): "authentication failure", and for SRTCP whose E flag
  contradicts the policy "unable to perform desired validation", become
  :attr:`SrtpDropReason.AUTH`; "replay check failed (bad index)" and
  "replay check failed (index too old)" become
  :attr:`SrtpDropReason.REPLAY`; anything else (a header whose CSRC list or
  extension overruns the packet, "error parsing data", "cipher failure",
  pylibsrtp's "packet is too long") is :attr:`SrtpDropReason.MALFORMED`.
  libsrtp checks the replay window before the tag, so a packet shorter than
  its header and tag is dropped here as malformed before libsrtp sees it.
* A sender refuses to protect an index it already protected for that SSRC
  (``allow_repeat_tx`` off): sending the same index twice with different
  content would reuse keystream. That surfaces as SrtpDrop(REPLAY).
* pylibsrtp's buffer is 1500 bytes and it reserves 144 bytes of trailer when
  protecting, so a sender takes RTP and RTCP packets of up to 1356 bytes.
* pylibsrtp 1.0 exposes no MKI, so key parameters with an MKI are refused
  in negotiation (RFC 4568 7.1.2 lets an answerer refuse a line it cannot
  support); the SDES lifetime is parsed and carried but not enforced
  (libsrtp enforces the RFC 3711 limits of 2^48 SRTP and 2^31 SRTCP packets).

Keys never appear in a repr, a str or an exception message; only
:meth:`CryptoAttribute.to_value` writes them, for the SDP sent to the peer.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import pylibsrtp

__all__ = [
    "DEFAULT_MAX_SSRCS",
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_SUITES",
    "CryptoAttribute",
    "KeyParams",
    "SdesError",
    "SrtpDrop",
    "SrtpDropReason",
    "SrtpReceiver",
    "SrtpSender",
    "SrtpSuite",
    "accept_answer",
    "choose_crypto",
    "crypto_refusal",
    "master_length",
    "new_crypto",
    "parse_crypto",
]


class SrtpSuite(StrEnum):
    """The SDES crypto suites the gateway implements."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"
    AEAD_AES_256_GCM = "AEAD_AES_256_GCM"


DEFAULT_SUITES: Final[tuple[SrtpSuite, ...]] = (
    SrtpSuite.AES_CM_128_HMAC_SHA1_80,
    SrtpSuite.AEAD_AES_128_GCM,
    SrtpSuite.AEAD_AES_256_GCM,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32,
)
"""Our order of preference for the a=crypto lines of an offer.

AES_CM_128_HMAC_SHA1_80 comes first because every SDES client implements it
(RFC 4568 makes it the suite to support) and some clients read only the
first a=crypto line. The GCM suites follow for clients that have them
(128-bit tag, one pass with AES-NI). The 32-bit tag comes last: its forgery
margin is the weakest and it only exists for clients that insist on it.
"""

DEFAULT_REPLAY_WINDOW: Final = 1024
"""Receiver replay window in packets (RFC 3711 3.3.2 asks for at least 64)."""

DEFAULT_MAX_SSRCS: Final = 64
"""Distinct SSRCs a sender or receiver admits; a few hundred bytes of
libsrtp state each. A call changes SSRC on a re-INVITE or a transfer, rarely more."""

# RFC 4568 6.2 and RFC 7714 12: master key || master salt.
_MASTER_LENGTHS: Final[dict[SrtpSuite, int]] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: 16 + 14,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: 16 + 14,
    SrtpSuite.AEAD_AES_128_GCM: 16 + 12,
    SrtpSuite.AEAD_AES_256_GCM: 32 + 12,
}

# Authentication tag bytes of SRTP and SRTCP. The _32 suite keeps an 80-bit
# tag for SRTCP (RFC 4568 6.2.2); GCM's tag is 16 bytes (RFC 7714 12).
_TAG_LENGTHS: Final[dict[SrtpSuite, tuple[int, int]]] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: (10, 10),
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: (4, 10),
    SrtpSuite.AEAD_AES_128_GCM: (16, 16),
    SrtpSuite.AEAD_AES_256_GCM: (16, 16),
}

_PROFILES: Final[dict[SrtpSuite, int]] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SrtpSuite.AEAD_AES_256_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}

# pylibsrtp's per-packet methods, as passed around.
_Transform = Callable[[bytes], bytes]

_RTP_HEADER: Final = 12
_RTCP_HEADER: Final = 8
_SRTCP_INDEX: Final = 4
# libsrtp accepts replay windows of 64 to 0x7fff packets.
_MIN_WINDOW: Final = 64
_MAX_WINDOW: Final = 0x7FFF

_MAX_TAG: Final = 999_999_999  # RFC 4568 9.1: tag = 1*9DIGIT
_MAX_LIFETIME_EXPONENT: Final = 48  # RFC 3711 9.2: 2^48 SRTP packets per key
_MAX_MKI_LENGTH: Final = 128  # RFC 4568 9.1: mki-length range 1..128
_MAX_KDR: Final = 24  # RFC 4568 6.3.1

_WSP: Final = re.compile(r"[ \t]+")
_DIGITS: Final = re.compile(r"[0-9]+")
_SUITE_TOKEN: Final = re.compile(r"[A-Za-z0-9_]+")
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_VCHARS: Final = re.compile(r"[\x21-\x7e]+")
_MKI_CHARS: Final = re.compile(r"[0-9:]{1,45}")
_KEY_METHOD: Final = "inline:"

# Session parameters (RFC 4568 6.3) that would switch protection off.
_WEAKENING: Final = frozenset({"UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"})
_FEC_ORDERS: Final = frozenset({"FEC_SRTP", "SRTP_FEC"})
_KNOWN_PARAMS: Final = _WEAKENING | {"KDR", "FEC_ORDER", "FEC_KEY", "WSH"}


def master_length(suite: SrtpSuite) -> int:
    """Bytes of master key and master salt together that ``suite`` takes."""
    return _MASTER_LENGTHS[suite]


class SdesError(ValueError):
    """A malformed or unusable a=crypto value; the message says what is wrong
    and never contains key material."""


@dataclass(frozen=True)
class KeyParams:
    """One ``inline:`` key parameter of an a=crypto line (RFC 4568 6.1)."""

    key: bytes
    """Master key followed by master salt."""
    lifetime: int | None = None
    """Packets the master key may protect, when given."""
    mki: tuple[int, int] | None = None
    """Master key identifier as (value, length in bytes), when given."""

    def __repr__(self) -> str:
        return (
            f"KeyParams(key=<key {len(self.key)} bytes>, lifetime={self.lifetime!r}, "
            f"mki={self.mki!r})"
        )

    def to_value(self) -> str:
        """The ``inline:`` text of these parameters (contains the key)."""
        text = _KEY_METHOD + base64.b64encode(self.key).decode("ascii")
        if self.lifetime is not None:
            text += "|" + _format_lifetime(self.lifetime)
        if self.mki is not None:
            text += f"|{self.mki[0]}:{self.mki[1]}"
        return text


@dataclass(frozen=True)
class CryptoAttribute:
    """One a=crypto line: ``tag suite key-params *session-param``."""

    tag: int
    suite: str
    """As written; a suite this module does not know is kept so that
    negotiation can skip it."""
    keys: tuple[KeyParams, ...]
    session_params: tuple[str, ...] = ()

    @property
    def known_suite(self) -> SrtpSuite | None:
        """The suite as an :class:`SrtpSuite`, or None when not implemented."""
        return _suite_of(self.suite)

    @property
    def window_size_hint(self) -> int | None:
        """The WSH session parameter (RFC 4568 6.3.7), when given."""
        value = _param_values(self.session_params).get("WSH")
        return int(value) if value is not None and _DIGITS.fullmatch(value) else None

    def to_value(self) -> str:
        """The a=crypto attribute value, keys included: for SDP only, never
        for logs."""
        parts = [str(self.tag), self.suite, ";".join(k.to_value() for k in self.keys)]
        parts.extend(self.session_params)
        return " ".join(parts)

    def __repr__(self) -> str:
        params = tuple(_redact_param(p) for p in self.session_params)
        return (
            f"CryptoAttribute(tag={self.tag!r}, suite={self.suite!r}, keys={self.keys!r}, "
            f"session_params={params!r})"
        )


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse an a=crypto attribute value (RFC 4568 9.1).

    Raises :class:`SdesError` for a bad tag, a key method other than
    ``inline:``, key text that is not base64, a key of the wrong length for
    a suite this module implements (other suites are not length-checked), a
    lifetime of 0 or above 2^48, an MKI longer than 128 bytes or too small
    for its value, several keys without an MKI each, repeated MKI values,
    and session parameters that are malformed or given twice.
    """
    fields = _WSP.split(value.strip(" \t\r\n"))
    if len(fields) < 3:
        raise SdesError(
            f"a=crypto: needs a tag, a crypto suite and key parameters, got {len(fields)} field(s)"
        )
    tag_text, suite, key_text, *params = fields
    tag = _parse_tag(tag_text)
    if not _SUITE_TOKEN.fullmatch(suite):
        raise SdesError(f"a=crypto: crypto suite {_shown(suite)} is not a token of A-Z, 0-9, _")
    known = _suite_of(suite)
    keys = _parse_key_params(key_text, known)
    _check_session_params(params, known)
    return CryptoAttribute(tag=tag, suite=suite, keys=keys, session_params=tuple(params))


def new_crypto(tag: int, suite: SrtpSuite) -> CryptoAttribute:
    """An a=crypto line with a fresh random master key and salt for ``suite``."""
    if not 0 <= tag <= _MAX_TAG:
        raise SdesError(f"a=crypto: tag {tag} is outside 0 to {_MAX_TAG}")
    key = secrets.token_bytes(master_length(suite))
    return CryptoAttribute(tag=tag, suite=suite.value, keys=(KeyParams(key=key),))


def crypto_refusal(
    crypto: CryptoAttribute, allowed: Sequence[SrtpSuite] = tuple(SrtpSuite)
) -> str | None:
    """Why the gateway cannot use ``crypto``, or None when it can.

    Refused: suites not implemented or not in ``allowed``; MKIs (one or
    several keys), which pylibsrtp cannot process; UNENCRYPTED_SRTP,
    UNENCRYPTED_SRTCP and UNAUTHENTICATED_SRTP, which would weaken
    protection; KDR other than 0 (no re-keying from the KDF); FEC_KEY (no
    separately keyed FEC stream); unknown session parameters, unless marked
    ignorable by a leading "-" (RFC 4568 6.3). FEC_ORDER is accepted: no FEC
    is negotiated, so the order is moot. WSH is accepted and used.
    """
    suite = crypto.known_suite
    if suite is None:
        return f"crypto suite {_shown(crypto.suite)} is not implemented"
    if suite not in allowed:
        return f"crypto suite {suite} is not allowed here"
    if len(crypto.keys) != 1:
        return f"{len(crypto.keys)} master keys (MKI) are not supported"
    if crypto.keys[0].mki is not None:
        return "an MKI is not supported"
    for param in crypto.session_params:
        reason = _param_refusal(param)
        if reason is not None:
            return reason
    return None


def choose_crypto(
    offered: Sequence[CryptoAttribute], allowed: Sequence[SrtpSuite]
) -> CryptoAttribute | None:
    """The offered line an answerer takes (RFC 4568 7.1.2), or None.

    That is the first line, in the offerer's order, whose suite is in
    ``allowed`` and whose parameters :func:`crypto_refusal` accepts. The
    answer then carries the same tag and suite with the gateway's own key
    (:func:`new_crypto`). Raises :class:`SdesError` when two offered lines
    share a tag (RFC 4568 9.1 makes tags unique in a media description), as
    the answer could not say which one it took.
    """
    _check_unique_tags(offered)
    for crypto in offered:
        if crypto_refusal(crypto, allowed) is None:
            return crypto
    return None


def accept_answer(offered: Sequence[CryptoAttribute], answer: CryptoAttribute) -> CryptoAttribute:
    """Our offered line that the peer's answer selected (RFC 4568 7.1.3).

    The answer must name the tag and suite of one of our lines and carry
    parameters :func:`crypto_refusal` accepts; otherwise :class:`SdesError`
    says which.
    """
    ours = next((line for line in offered if line.tag == answer.tag), None)
    if ours is None:
        raise SdesError(f"a=crypto answer: tag {answer.tag} was not offered")
    if _suite_of(answer.suite) != ours.known_suite:
        raise SdesError(
            f"a=crypto answer: tag {answer.tag} offered {ours.suite}, "
            f"answered {_shown(answer.suite)}"
        )
    reason = crypto_refusal(answer)
    if reason is not None:
        raise SdesError(f"a=crypto answer: {reason}")
    return ours


class SrtpDropReason(StrEnum):
    """Why a packet was not protected or unprotected (counter labels)."""

    AUTH = "srtp-auth"
    """The authentication tag did not verify (forged, corrupted, wrong key)."""
    REPLAY = "srtp-replay"
    """The index was already seen, or is older than the replay window."""
    MALFORMED = "srtp-malformed"
    """Too short, too long, or not a packet libsrtp can process."""
    SSRC_LIMIT = "srtp-ssrc-limit"
    """A new SSRC beyond the ``max_ssrcs`` this side admits."""


class SrtpDrop(Exception):
    """A packet dropped by the SRTP layer; ``message`` carries libsrtp's
    text where libsrtp refused it."""

    def __init__(self, reason: SrtpDropReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


_LIBSRTP_REASONS: Final[dict[str, SrtpDropReason]] = {
    "authentication failure": SrtpDropReason.AUTH,
    "unable to perform desired validation": SrtpDropReason.AUTH,
    "replay check failed (bad index)": SrtpDropReason.REPLAY,
    "replay check failed (index too old)": SrtpDropReason.REPLAY,
    "packet index is too old to consider": SrtpDropReason.REPLAY,
}


class SrtpSender:
    """Protects what the gateway sends toward the peer, with OUR key (the
    a=crypto line we sent). Any number of SSRCs up to ``max_ssrcs``."""

    __slots__ = ("_max_ssrcs", "_session", "_ssrcs", "suite")

    def __init__(self, crypto: CryptoAttribute, *, max_ssrcs: int = DEFAULT_MAX_SSRCS) -> None:
        self.suite = _usable_suite(crypto)
        policy = pylibsrtp.Policy(
            key=crypto.keys[0].key,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=_PROFILES[self.suite],
        )
        policy.allow_repeat_tx = False
        self._session = pylibsrtp.Session(policy)
        self._ssrcs: set[bytes] = set()
        self._max_ssrcs = max_ssrcs

    def protect_rtp(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP packet; raises :class:`SrtpDrop`."""
        if len(packet) < _RTP_HEADER:
            raise SrtpDrop(SrtpDropReason.MALFORMED, f"RTP packet of {len(packet)} bytes")
        if packet[8:12] in self._ssrcs:
            try:
                return self._session.protect(packet)
            except (pylibsrtp.Error, ValueError) as exc:
                raise _drop("RTP", exc) from None
        return _first_of_ssrc(
            self._ssrcs, self._max_ssrcs, packet[8:12], self._session.protect, packet, "RTP"
        )

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet for an RTCP compound packet; raises :class:`SrtpDrop`."""
        if len(packet) < _RTCP_HEADER:
            raise SrtpDrop(SrtpDropReason.MALFORMED, f"RTCP packet of {len(packet)} bytes")
        if packet[4:8] in self._ssrcs:
            try:
                return self._session.protect_rtcp(packet)
            except (pylibsrtp.Error, ValueError) as exc:
                raise _drop("RTCP", exc) from None
        return _first_of_ssrc(
            self._ssrcs, self._max_ssrcs, packet[4:8], self._session.protect_rtcp, packet, "RTCP"
        )


class SrtpReceiver:
    """Unprotects what the peer sends, with the PEER's key (its a=crypto).

    The replay window is the larger of ``replay_window`` and the peer's WSH
    hint, within libsrtp's 64 to 32767. Streams exist only for SSRCs whose
    packets authenticated, at most ``max_ssrcs`` of them.
    """

    __slots__ = ("_max_ssrcs", "_min_rtcp", "_min_rtp", "_session", "_ssrcs", "suite")

    def __init__(
        self,
        crypto: CryptoAttribute,
        *,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        max_ssrcs: int = DEFAULT_MAX_SSRCS,
    ) -> None:
        if not _MIN_WINDOW <= replay_window <= _MAX_WINDOW:
            raise ValueError(
                f"replay window {replay_window} is outside {_MIN_WINDOW} to {_MAX_WINDOW}"
            )
        self.suite = _usable_suite(crypto)
        hint = crypto.window_size_hint
        window = replay_window if hint is None else max(replay_window, min(hint, _MAX_WINDOW))
        policy = pylibsrtp.Policy(
            key=crypto.keys[0].key,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=_PROFILES[self.suite],
        )
        policy.window_size = window
        self._session = pylibsrtp.Session(policy)
        rtp_tag, rtcp_tag = _TAG_LENGTHS[self.suite]
        self._min_rtp = _RTP_HEADER + rtp_tag
        self._min_rtcp = _RTCP_HEADER + _SRTCP_INDEX + rtcp_tag
        self._ssrcs: set[bytes] = set()
        self._max_ssrcs = max_ssrcs

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet; raises :class:`SrtpDrop`."""
        if len(packet) < self._min_rtp:
            raise _too_short("SRTP", len(packet), self._min_rtp)
        if packet[8:12] in self._ssrcs:
            try:
                return self._session.unprotect(packet)
            except (pylibsrtp.Error, ValueError) as exc:
                raise _drop("SRTP", exc) from None
        return _first_of_ssrc(
            self._ssrcs, self._max_ssrcs, packet[8:12], self._session.unprotect, packet, "SRTP"
        )

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The RTCP packet inside an SRTCP packet; raises :class:`SrtpDrop`."""
        if len(packet) < self._min_rtcp:
            raise _too_short("SRTCP", len(packet), self._min_rtcp)
        if packet[4:8] in self._ssrcs:
            try:
                return self._session.unprotect_rtcp(packet)
            except (pylibsrtp.Error, ValueError) as exc:
                raise _drop("SRTCP", exc) from None
        return _first_of_ssrc(
            self._ssrcs, self._max_ssrcs, packet[4:8], self._session.unprotect_rtcp, packet, "SRTCP"
        )


def _first_of_ssrc(
    ssrcs: set[bytes], limit: int, ssrc: bytes, transform: _Transform, packet: bytes, kind: str
) -> bytes:
    """Process the first packet of an SSRC, which makes libsrtp add a stream
    once it succeeds; the SSRC counts toward ``limit`` only then."""
    if len(ssrcs) >= limit:
        raise SrtpDrop(SrtpDropReason.SSRC_LIMIT, f"{kind}: new SSRC beyond the {limit} admitted")
    try:
        result = transform(packet)
    except (pylibsrtp.Error, ValueError) as exc:
        raise _drop(kind, exc) from None
    ssrcs.add(ssrc)
    return result


def _drop(kind: str, exc: Exception) -> SrtpDrop:
    message = str(exc)
    if isinstance(exc, pylibsrtp.Error):
        reason = _LIBSRTP_REASONS.get(message, SrtpDropReason.MALFORMED)
    else:
        reason = SrtpDropReason.MALFORMED
    return SrtpDrop(reason, f"{kind}: {message}")


def _too_short(kind: str, length: int, minimum: int) -> SrtpDrop:
    return SrtpDrop(
        SrtpDropReason.MALFORMED,
        f"{kind} packet of {length} bytes is shorter than header and tag ({minimum})",
    )


def _usable_suite(crypto: CryptoAttribute) -> SrtpSuite:
    reason = crypto_refusal(crypto)
    if reason is not None:
        raise SdesError(f"a=crypto tag {crypto.tag}: {reason}")
    suite = crypto.known_suite
    assert suite is not None  # crypto_refusal refuses unknown suites
    return suite


def _suite_of(name: str) -> SrtpSuite | None:
    try:
        return SrtpSuite(name.upper())
    except ValueError:
        return None


def _shown(token: str) -> str:
    """``token`` for an error message, unless it might be key material."""
    if len(token) > 32 or ":" in token or "|" in token:
        return "<redacted>"
    return repr(token)


def _redact_param(param: str) -> str:
    name, _, _ = param.partition("=")
    return "FEC_KEY=<keys>" if name.upper() == "FEC_KEY" else param


def _parse_tag(text: str) -> int:
    if not _DIGITS.fullmatch(text) or len(text) > 9:
        raise SdesError(f"a=crypto: tag {_shown(text)} is not 1 to 9 digits")
    return int(text)


def _parse_key_params(text: str, known: SrtpSuite | None) -> tuple[KeyParams, ...]:
    keys = tuple(_parse_key_param(part, known) for part in text.split(";"))
    if len(keys) > 1:
        mkis = [key.mki for key in keys]
        if any(mki is None for mki in mkis):
            raise SdesError(f"a=crypto: {len(keys)} keys need an MKI each (RFC 4568 6.1)")
        if len({mki[1] for mki in mkis if mki is not None}) > 1:
            raise SdesError("a=crypto: MKI lengths differ between keys")
        if len({mki[0] for mki in mkis if mki is not None}) < len(keys):
            raise SdesError("a=crypto: duplicate MKI value")
    return keys


def _parse_key_param(text: str, known: SrtpSuite | None) -> KeyParams:
    if text[: len(_KEY_METHOD)].lower() != _KEY_METHOD:
        raise SdesError("a=crypto: key parameters must start with inline:")
    key_text, *extras = text[len(_KEY_METHOD) :].split("|")
    key = _decode_key(key_text)
    if known is not None and len(key) != master_length(known):
        raise SdesError(f"a=crypto: key is {len(key)} bytes, {known} needs {master_length(known)}")
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    if len(extras) > 2:
        raise SdesError("a=crypto: key parameters have more than a lifetime and an MKI after |")
    for extra in extras:
        if ":" in extra:
            if mki is not None:
                raise SdesError("a=crypto: MKI given twice")
            mki = _parse_mki(extra)
        else:
            if lifetime is not None or mki is not None:
                raise SdesError("a=crypto: lifetime must come once, before the MKI")
            lifetime = _parse_lifetime(extra)
    return KeyParams(key=key, lifetime=lifetime, mki=mki)


def _decode_key(text: str) -> bytes:
    # Padding is optional in practice (some clients strip the trailing "="),
    # but when present it must be exactly what the length calls for.
    data = text.rstrip("=")
    padding = -len(data) % 4
    if (
        not _BASE64.fullmatch(text)
        or padding == 3
        or (data != text and text != data + "=" * padding)
    ):
        raise SdesError("a=crypto: key is not valid base64")
    try:
        return base64.b64decode(data + "=" * padding, validate=True)
    except binascii.Error:
        raise SdesError("a=crypto: key is not valid base64") from None


def _parse_lifetime(text: str) -> int:
    exponent_text = text[2:] if text.startswith("2^") else None
    digits = exponent_text if exponent_text is not None else text
    if not _DIGITS.fullmatch(digits) or len(digits) > 15:
        raise SdesError(f"a=crypto: lifetime {_shown(text)} is not a number or 2^n")
    if exponent_text is not None:
        exponent = int(exponent_text)
        if exponent > _MAX_LIFETIME_EXPONENT:
            raise SdesError(f"a=crypto: lifetime {text} is above 2^{_MAX_LIFETIME_EXPONENT}")
        return 1 << exponent
    lifetime = int(digits)
    if lifetime == 0:
        raise SdesError("a=crypto: lifetime 0 allows no packet")
    if lifetime > 1 << _MAX_LIFETIME_EXPONENT:
        raise SdesError(f"a=crypto: lifetime {lifetime} is above 2^{_MAX_LIFETIME_EXPONENT}")
    return lifetime


def _format_lifetime(lifetime: int) -> str:
    if lifetime & (lifetime - 1) == 0:
        return f"2^{lifetime.bit_length() - 1}"
    return str(lifetime)


def _parse_mki(text: str) -> tuple[int, int]:
    value_text, _, length_text = text.partition(":")
    if (
        not _DIGITS.fullmatch(value_text)
        or not _DIGITS.fullmatch(length_text)
        or len(length_text) > 3
        or len(value_text) > 40
    ):
        shown = repr(text) if _MKI_CHARS.fullmatch(text) else "<redacted>"
        raise SdesError(f"a=crypto: MKI {shown} is not value:length in digits")
    value, length = int(value_text), int(length_text)
    if not 1 <= length <= _MAX_MKI_LENGTH:
        raise SdesError(f"a=crypto: MKI length {length} is outside 1 to {_MAX_MKI_LENGTH}")
    if value >= 1 << (8 * length):
        raise SdesError(f"a=crypto: MKI value {value} does not fit in {length} byte(s)")
    return value, length


def _check_session_params(params: Sequence[str], known: SrtpSuite | None) -> None:
    seen: set[str] = set()
    for param in params:
        if not _VCHARS.fullmatch(param):
            raise SdesError("a=crypto: session parameter has characters outside ASCII 0x21-0x7e")
        name, has_value, value = param.partition("=")
        name = name.upper()
        if name in seen:
            raise SdesError(f"a=crypto: session parameter {_shown(name)} given twice")
        seen.add(name)
        if name in _WEAKENING and has_value:
            raise SdesError(f"a=crypto: {name} takes no value")
        if name == "KDR" and (
            not _DIGITS.fullmatch(value) or len(value) > 2 or int(value) > _MAX_KDR
        ):
            raise SdesError(f"a=crypto: KDR={_shown(value)} is not 0 to {_MAX_KDR}")
        if name == "WSH" and (
            not _DIGITS.fullmatch(value) or len(value) > 9 or int(value) < _MIN_WINDOW
        ):
            raise SdesError(f"a=crypto: WSH={_shown(value)} is not a number of at least 64")
        if name == "FEC_ORDER" and value.upper() not in _FEC_ORDERS:
            raise SdesError(f"a=crypto: FEC_ORDER={_shown(value)} is not FEC_SRTP or SRTP_FEC")
        if name == "FEC_KEY":
            _parse_key_params(value, known)


def _param_values(params: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.upper()] = value
    return values


def _param_refusal(param: str) -> str | None:
    name, _, value = param.partition("=")
    name = name.upper()
    if name in _WEAKENING:
        return f"{name} would weaken protection"
    if name == "KDR" and (not _DIGITS.fullmatch(value) or int(value) != 0):
        return f"KDR={_shown(value)} is not supported (only 0)"
    if name == "FEC_KEY":
        return "FEC_KEY is not supported"
    if name not in _KNOWN_PARAMS and not name.startswith("-"):
        return f"session parameter {_shown(name)} is not supported"
    return None


def _check_unique_tags(offered: Sequence[CryptoAttribute]) -> None:
    seen: set[int] = set()
    for crypto in offered:
        if crypto.tag in seen:
            raise SdesError(f"a=crypto: tag {crypto.tag} appears on two lines")
        seen.add(crypto.tag)
