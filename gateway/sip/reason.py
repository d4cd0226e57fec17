"""The SIP Reason header and the mapping between Q.850 causes and SIP statuses, sans-IO.

Implements RFC 3326 (the Reason header: `protocol;cause=N;text="..."`, several values in one
message with different protocols, section 2), its use in responses (RFC 6432) and the extra
reason-params such as `location` (RFC 8606, kept as written). The mappings follow RFC 3398:
ISUP (Q.850) cause -> SIP status from section 7.2.4.1 (a REL received from the telephone
network becomes a SIP response) and SIP status -> ISUP cause from section 8.2.6.1 (a SIP
failure becomes a REL cause). `cause_text` names the Q.850 causes (ITU-T Q.850 table 1) for
CDRs and logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.sip.headers import HeaderError, parse_params, split_header_list
from gateway.sip.message import Request, Response

__all__ = [
    "Q850",
    "SIP",
    "Reason",
    "ReasonError",
    "cause_text",
    "format_reasons",
    "message_reasons",
    "parse_reason",
    "q850_reason",
    "q850_to_sip",
    "sip_reason",
    "sip_to_q850",
]

SIP = "SIP"
Q850 = "Q.850"
_CANONICAL = {"sip": SIP, "q.850": Q850}
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Text may hold any UTF-8 but no control character: CR/LF would split the header.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_OTHER_CAUSE_DIGITS = 10


class ReasonError(ValueError):
    """A Reason value that does not follow RFC 3326; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason-value. `protocol` is "SIP", "Q.850" (any spelling is folded to these) or
    another token as written; `cause` is the SIP status or the Q.850 cause; `params` are the
    other reason-params in order (e.g. RFC 8606 `location`), values as written."""

    protocol: str
    cause: int | None = None
    text: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.protocol):
            raise ReasonError(f"Reason protocol {self.protocol!r} is not a token")
        canonical = _CANONICAL.get(self.protocol.lower())
        if canonical is not None and canonical != self.protocol:
            object.__setattr__(self, "protocol", canonical)
        if self.cause is not None:
            _check_cause(self.protocol, self.cause)
        if self.text is not None and _CONTROL.search(self.text):
            raise ReasonError("Reason text contains a control character (CR, LF, NUL...)")
        for name, value in self.params:
            _check_param(name, value)

    def __str__(self) -> str:
        parts = [self.protocol]
        if self.cause is not None:
            parts.append(f"cause={self.cause}")
        if self.text is not None:
            parts.append(f"text={_quote(self.text)}")
        parts += [name if value is None else f"{name}={value}" for name, value in self.params]
        return ";".join(parts)

    def param(self, name: str) -> str | None:
        """The value of extra parameter `name` (lower-case), None when absent or valueless."""
        return next((value for key, value in self.params if key == name), None)


def _check_cause(protocol: str, cause: int) -> None:
    if protocol == SIP and not 100 <= cause <= 699:
        raise ReasonError(f"SIP Reason cause {cause} is not a status code (100-699)")
    if protocol == Q850 and not 0 <= cause <= 127:
        raise ReasonError(f"Q.850 Reason cause {cause} is outside 0-127")
    if cause < 0:
        raise ReasonError(f"Reason cause {cause} is negative")


def _check_param(name: str, value: str | None) -> None:
    if not _TOKEN.fullmatch(name) or name != name.lower():
        raise ReasonError(f"Reason parameter name {name!r} is not a lower-case token")
    if value is not None and (_CONTROL.search(value) or not value):
        raise ReasonError(f"Reason parameter {name} has a bad value")


def parse_reason(value: str) -> list[Reason]:
    """Parse one Reason header value (one or more comma-separated reason-values)."""
    try:
        items = split_header_list(value)
    except HeaderError as exc:
        raise ReasonError(f"Bad Reason header: {exc}") from None
    if not items:
        raise ReasonError("Empty Reason header")
    return [_parse_one(item) for item in items]


def _parse_one(item: str) -> Reason:
    protocol, semi, rest = item.partition(";")
    protocol = protocol.strip(" \t")
    if not _TOKEN.fullmatch(protocol):
        raise ReasonError(f"Bad Reason protocol: {protocol!r}")
    try:
        params = parse_params(rest) if semi else {}
    except HeaderError as exc:
        raise ReasonError(f"Bad Reason parameters: {exc}") from None
    cause = _parse_cause(params.pop("cause", None))
    text = params.pop("text", None)
    return Reason(
        protocol,
        cause,
        None if text is None else _unquote_text(text),
        tuple(params.items()),
    )


def _parse_cause(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_OTHER_CAUSE_DIGITS:
        raise ReasonError(f"Reason cause {raw!r} is not a decimal number")
    return int(raw)


def _unquote_text(raw: str) -> str:
    # RFC 3326 2: reason-text = "text" EQUAL quoted-string.
    if len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
        raise ReasonError("Reason text must be a quoted string")
    out: list[str] = []
    chars = iter(raw[1:-1])
    for char in chars:
        if char == '"':
            raise ReasonError("Reason text has an unescaped quote")
        if char == "\\":
            char = next(chars, "")
            if not char:
                raise ReasonError("Reason text ends inside an escape")
        out.append(char)
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def message_reasons(message: Request | Response) -> list[Reason]:
    """Every reason-value of every Reason header of `message`, in order. Raises ReasonError
    for a malformed value or two values of one protocol (RFC 3326 2)."""
    reasons = [r for value in message.headers.get_all("Reason") for r in parse_reason(value)]
    _check_distinct(reasons)
    return reasons


def format_reasons(reasons: Iterable[Reason]) -> str:
    """One Reason header value for `reasons` (each protocol at most once, RFC 3326 2)."""
    listed = list(reasons)
    if not listed:
        raise ReasonError("No reason to format")
    _check_distinct(listed)
    return ", ".join(str(reason) for reason in listed)


def _check_distinct(reasons: list[Reason]) -> None:
    seen: set[str] = set()
    for reason in reasons:
        key = reason.protocol.lower()
        if key in seen:
            raise ReasonError(f"Two Reason values for protocol {reason.protocol}")
        seen.add(key)


def q850_reason(cause: int, text: str | None = None) -> Reason:
    """`Q.850;cause=N;text="..."`, the text defaulting to the cause's Q.850 name."""
    return Reason(Q850, cause, cause_text(cause) if text is None else text)


def sip_reason(status: int, text: str | None = None) -> Reason:
    """`SIP;cause=N` (e.g. on a CANCEL, RFC 3326 2), with `text` when given."""
    return Reason(SIP, status, text)


# ---- RFC 3398 mappings ---------------------------------------------------------------------

# RFC 3398 7.2.4.1: ISUP cause value received in a REL -> SIP response. Cause 16 (normal call
# clearing) has no row: it ends an answered call with a BYE, or a pending one with CANCEL.
# The RFC prints "510 Not implemented" for cause 29; no SIP status 510 exists and the text
# is that of 501, so 501 is used.
_Q850_TO_SIP = {
    1: 404, 2: 404, 3: 404,
    17: 486, 18: 408, 19: 480, 20: 480, 21: 403, 22: 410, 23: 410, 26: 404, 27: 502,
    28: 484, 29: 501, 31: 480,
    34: 503, 38: 503, 41: 503, 42: 503, 47: 503,
    55: 403, 57: 403, 58: 503,
    65: 488, 70: 488, 79: 501,
    87: 403, 88: 503,
    102: 504, 111: 500,
    127: 500,
}  # fmt: skip
# Rows of 7.2.4.1 marked (+): with the cause location "user" a 6xx may replace the 4xx.
_USER_LOCATION_SIP = {21: 603}
_DEFAULT_SIP = 500  # causes without a row, as 127 (interworking, unspecified)

# RFC 3398 8.2.6.1: SIP response received -> cause value in the REL. 487 has no mapping (the
# caller itself ended the attempt); 488 and 606 take their cause from the Warning header in
# the RFC, which is not read here, so they get 127 like every status without a row.
_SIP_TO_Q850 = {
    400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102,
    410: 22, 413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127,
    480: 18, 481: 41, 482: 25, 483: 25, 484: 28, 485: 1, 486: 17,
    500: 41, 501: 79, 502: 38, 503: 41, 504: 102, 505: 127, 513: 127,
    600: 17, 603: 21, 604: 1,
}  # fmt: skip
_DEFAULT_Q850 = 127


def q850_to_sip(cause: int, *, user_location: bool = False) -> int:
    """The SIP status for a Q.850 cause from the telephone network (RFC 3398 7.2.4.1).

    A cause the table does not list is first read as the "unspecified" cause of its Q.850
    class (31, 47, 63, 79, 95, 111 or 127: the top three bits of the value name the class),
    the rule ISUP applies to cause values it does not know; what is still unlisted, and
    cause 16, give 500. `user_location` (the cause came from the user, e.g. RFC 8606
    `location=U`) turns 21 into 603 as the (+) note of the table allows.
    """
    if not 0 <= cause <= 127:
        raise ReasonError(f"Q.850 cause {cause} is outside 0-127")
    if user_location and cause in _USER_LOCATION_SIP:
        return _USER_LOCATION_SIP[cause]
    status = _Q850_TO_SIP.get(cause)
    if status is None and cause != 16:
        status = _Q850_TO_SIP.get(_class_unspecified(cause))
    return _DEFAULT_SIP if status is None else status


def _class_unspecified(cause: int) -> int:
    # Q.850 classes are 16 values wide; classes 000 and 001 together are "normal events".
    return 31 if cause < 32 else (cause | 0x0F)


def sip_to_q850(status: int) -> int | None:
    """The Q.850 cause for a SIP final failure response (RFC 3398 8.2.6.1): 127 for a
    status without a row, None for 487 (no mapping: the caller cancelled)."""
    if not 300 <= status <= 699:
        raise ReasonError(f"SIP status {status} is not a failure response (300-699)")
    if status == 487:
        return None
    return _SIP_TO_Q850.get(status, _DEFAULT_Q850)


# ITU-T Q.850 table 1: cause values and their names.
_CAUSE_TEXT = {
    1: "Unallocated (unassigned) number",
    2: "No route to specified transit network",
    3: "No route to destination",
    4: "Send special information tone",
    5: "Misdialled trunk prefix",
    6: "Channel unacceptable",
    7: "Call awarded and being delivered in an established channel",
    8: "Preemption",
    9: "Preemption - circuit reserved for reuse",
    14: "Number portability query on release of the number",
    16: "Normal call clearing",
    17: "User busy",
    18: "No user responding",
    19: "No answer from user (user alerted)",
    20: "Subscriber absent",
    21: "Call rejected",
    22: "Number changed",
    23: "Redirection to new destination",
    25: "Exchange routing error",
    26: "Non-selected user clearing",
    27: "Destination out of order",
    28: "Invalid number format (address incomplete)",
    29: "Facility rejected",
    30: "Response to STATUS ENQUIRY",
    31: "Normal, unspecified",
    34: "No circuit/channel available",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    43: "Access information discarded",
    44: "Requested circuit/channel not available",
    46: "Precedence call blocked",
    47: "Resource unavailable, unspecified",
    49: "Quality of service not available",
    50: "Requested facility not subscribed",
    53: "Outgoing calls barred within CUG",
    55: "Incoming calls barred within CUG",
    57: "Bearer capability not authorized",
    58: "Bearer capability not presently available",
    62: "Inconsistency in designated outgoing access information and subscriber class",
    63: "Service or option not available, unspecified",
    65: "Bearer capability not implemented",
    66: "Channel type not implemented",
    69: "Requested facility not implemented",
    70: "Only restricted digital information bearer capability is available",
    79: "Service or option not implemented, unspecified",
    81: "Invalid call reference value",
    82: "Identified channel does not exist",
    83: "A suspended call exists, but this call identity does not",
    84: "Call identity in use",
    85: "No call suspended",
    86: "Call having the requested call identity has been cleared",
    87: "User not member of CUG",
    88: "Incompatible destination",
    90: "Non-existent CUG",
    91: "Invalid transit network selection",
    95: "Invalid message, unspecified",
    96: "Mandatory information element is missing",
    97: "Message type non-existent or not implemented",
    98: "Message not compatible with call state or message type non-existent",
    99: "Information element / parameter non-existent or not implemented",
    100: "Invalid information element contents",
    101: "Message not compatible with call state",
    102: "Recovery on timer expiry",
    103: "Parameter non-existent or not implemented, passed on",
    110: "Message with unrecognized parameter, discarded",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}


def cause_text(cause: int) -> str:
    """The Q.850 name of `cause`, e.g. 16 -> "Normal call clearing"; a value Q.850 does not
    assign gets "Unassigned Q.850 cause N"."""
    if not 0 <= cause <= 127:
        raise ReasonError(f"Q.850 cause {cause} is outside 0-127")
    return _CAUSE_TEXT.get(cause, f"Unassigned Q.850 cause {cause}")
