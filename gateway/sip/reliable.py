"""Reliable provisional responses: 100rel, RSeq, RAck and PRACK (RFC 3262), sans-IO.

Implements:

* the option tag and its negotiation: `Require`/`Supported: 100rel` on requests, and the
  420 (Bad Extension) with `Unsupported` for a required extension we lack (RFC 3261 8.2.2.3);
* the RSeq and RAck headers (RFC 3262 7.1, 7.2);
* the UAC side (section 4): which provisional responses are reliable, whether one is new, a
  retransmission or out of order (the RSeq space is one per early dialog, i.e. per To tag),
  and the PRACK that acknowledges a new one, built in the early dialog by `Dialog`;
* the UAS side (section 3): RSeq numbering from a random start below 2**31, the headers of
  a reliable provisional, its retransmission at T1 doubling until 64*T1 (then the INVITE must
  be rejected with a 5xx), the rule that a second reliable provisional waits for the PRACK
  of the first, the matching of PRACKs (2xx, or 481 when it matches nothing), and when a
  final response may be sent.

Nothing reads a clock: times come in as `now`, deadlines go out.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from gateway.sip.dialog import Dialog
from gateway.sip.headers import CSeq, HeaderError, parse_cseq
from gateway.sip.message import Request, Response, make_response, new_tag

__all__ = [
    "OPTION_TAG",
    "GaveUp",
    "PrackOutcome",
    "PrackPending",
    "Provisional",
    "ProvisionalKind",
    "RAck",
    "ReliableError",
    "ReliableReceiver",
    "ReliableSender",
    "Retransmit",
    "bad_extension",
    "build_prack",
    "option_tags",
    "parse_rack",
    "parse_rseq",
    "rel100_request_headers",
    "requires_100rel",
    "supports_100rel",
    "unsupported_tags",
]

OPTION_TAG = "100rel"
MAX_RSEQ = 2**32 - 1  # RFC 3262 7.1: RSeq is a 32-bit unsigned number
FIRST_RSEQ_LIMIT = 2**31 - 1  # RFC 3262 3: the first RSeq is between 1 and 2**31 - 1
_MAX_DIGITS = 10

Rel100Mode = Literal["off", "supported", "required"]


class ReliableError(ValueError):
    """A message that breaks RFC 3262. `status` is the response to send for an offending
    request (400 for a malformed RAck), None when nothing can be answered (a response)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class PrackPending(ReliableError):
    """A reliable provisional waits for its PRACK; the next one must wait too (RFC 3262 3)."""


# ---- option tags ----------------------------------------------------------------------------


def option_tags(message: Request | Response, header: str) -> set[str]:
    """The option tags of every `header` field (Require, Supported...), lower-case."""
    return {tag.strip().lower() for tag in message.headers.get_list(header) if tag.strip()}


def requires_100rel(message: Request | Response) -> bool:
    return OPTION_TAG in option_tags(message, "Require")


def supports_100rel(message: Request | Response) -> bool:
    """Whether the sender can do 100rel (it lists the tag in Supported or Require)."""
    return requires_100rel(message) or OPTION_TAG in option_tags(message, "Supported")


def unsupported_tags(request: Request, supported: Collection[str]) -> list[str]:
    """The option tags `request` requires that are not in `supported` (RFC 3261 8.2.2.3),
    in the order written."""
    known = {tag.lower() for tag in supported}
    seen: list[str] = []
    for tag in request.headers.get_list("Require"):
        tag = tag.strip()
        if tag and tag.lower() not in known and tag not in seen:
            seen.append(tag)
    return seen


def bad_extension(request: Request, unsupported: Collection[str], *, to_tag: str = "") -> Response:
    """The 420 (Bad Extension) listing `unsupported` in Unsupported (RFC 3261 8.2.2.3)."""
    if not unsupported:
        raise ValueError("A 420 needs at least one unsupported option tag")
    response = make_response(request, 420, to_tag=to_tag or new_tag())
    response.headers.add("Unsupported", ", ".join(unsupported))
    return response


def rel100_request_headers(mode: Rel100Mode) -> list[tuple[str, str]]:
    """Headers for an INVITE toward a peer configured with `mode` (a trunk's `rel100`)."""
    if mode == "off":
        return []
    if mode == "supported":
        return [("Supported", OPTION_TAG)]
    if mode == "required":
        return [("Supported", OPTION_TAG), ("Require", OPTION_TAG)]
    raise ValueError(f"rel100 mode must be off, supported or required, not {mode!r}")


# ---- RSeq and RAck (RFC 3262 7.1, 7.2) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RAck:
    """`RAck: <rseq> <cseq-num> <method>`: which reliable provisional a PRACK acknowledges."""

    rseq: int
    cseq: int
    method: str

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


def _number(text: str, what: str, limit: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        raise ReliableError(f"Bad {what}: {text!r} is not a number", 400)
    value = int(text)
    if not 1 <= value <= limit:
        raise ReliableError(f"Bad {what}: {value} is outside 1-{limit}", 400)
    return value


def parse_rseq(value: str) -> int:
    """Parse an RSeq value (1 to 2**32 - 1)."""
    return _number(value.strip(" \t"), "RSeq", MAX_RSEQ)


def parse_rack(value: str) -> RAck:
    """Parse `RAck: 776656 1 INVITE`; ReliableError (status 400) when malformed."""
    parts = value.split()
    if len(parts) != 3:
        raise ReliableError(f"Bad RAck: {value!r} is not '<rseq> <cseq> <method>'", 400)
    rseq = _number(parts[0], "RAck response number", MAX_RSEQ)
    try:
        cseq = parse_cseq(f"{parts[1]} {parts[2]}")
    except HeaderError as exc:
        raise ReliableError(f"Bad RAck: {exc}", 400) from None
    return RAck(rseq, cseq.seq, cseq.method)


# ---- UAC side (RFC 3262 4) ------------------------------------------------------------------


class ProvisionalKind(enum.Enum):
    UNRELIABLE = "unreliable"  # process as usual, no PRACK
    NEW = "new"  # in order: process it and send a PRACK with `rack`
    RETRANSMISSION = "retransmission"  # seen already: neither process nor PRACK again
    OUT_OF_ORDER = "out-of-order"  # RSeq skipped ahead: neither process nor PRACK


@dataclass(frozen=True, slots=True)
class Provisional:
    """What the UAC makes of a provisional response."""

    kind: ProvisionalKind
    to_tag: str | None = None
    rseq: int | None = None
    rack: RAck | None = None  # the RAck of the PRACK to send; only for a NEW one


class ReliableReceiver:
    """The UAC's view of the reliable provisionals to one INVITE it sent.

    One RSeq space per To tag: forked early dialogs number their responses independently.
    """

    def __init__(self, invite: Request) -> None:
        if invite.method != "INVITE":
            raise ValueError(f"Reliable provisionals answer an INVITE, not {invite.method}")
        self._call_id = invite.call_id
        self._cseq: CSeq = invite.cseq
        self._last: dict[str, int] = {}

    def receive(self, response: Response) -> Provisional:
        """Classify `response`. ReliableError when it claims 100rel but cannot be handled:
        no RSeq, a bad RSeq, no To tag, or it does not answer this INVITE."""
        if not 100 <= response.status <= 199:
            raise ReliableError(f"A {response.status} is not a provisional response")
        self._check_answers(response)
        # RFC 3262 4: a 100 is never reliable, whatever its Require says.
        if response.status == 100 or not requires_100rel(response):
            return Provisional(ProvisionalKind.UNRELIABLE, _to_tag(response))
        raw = response.headers.get("RSeq")
        if raw is None:
            raise ReliableError(f"Reliable {response.status} without RSeq")
        rseq = parse_rseq(raw)
        to_tag = _to_tag(response)
        if to_tag is None:
            raise ReliableError(f"Reliable {response.status} without To tag (no early dialog)")
        kind = self._classify(to_tag, rseq)
        if kind is not ProvisionalKind.NEW:
            return Provisional(kind, to_tag, rseq)
        return Provisional(kind, to_tag, rseq, RAck(rseq, self._cseq.seq, self._cseq.method))

    def _check_answers(self, response: Response) -> None:
        try:
            cseq, call_id = response.cseq, response.call_id
        except HeaderError as exc:
            raise ReliableError(f"Malformed provisional response: {exc}") from None
        if call_id != self._call_id or cseq != self._cseq:
            raise ReliableError("Provisional response does not answer this INVITE")

    def _classify(self, to_tag: str, rseq: int) -> ProvisionalKind:
        last = self._last.get(to_tag)
        if last is not None and rseq <= last:
            return ProvisionalKind.RETRANSMISSION
        if last is not None and rseq != last + 1:
            return ProvisionalKind.OUT_OF_ORDER
        self._last[to_tag] = rseq
        return ProvisionalKind.NEW


def _to_tag(response: Response) -> str | None:
    try:
        return response.to.tag
    except (HeaderError, ValueError) as exc:
        raise ReliableError(f"Malformed To: {exc}") from None


def build_prack(dialog: Dialog, rack: RAck) -> Request:
    """The PRACK for `rack` inside the early dialog the provisional created (RFC 3262 7.1);
    the caller adds the Via and sends it in a non-INVITE client transaction."""
    return dialog.create_request("PRACK", extra=[("RAck", str(rack))])


# ---- UAS side (RFC 3262 3) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retransmit:
    """Pass this reliable provisional to the INVITE server transaction again."""

    response: Response


@dataclass(frozen=True, slots=True)
class GaveUp:
    """No PRACK came for 64*T1: reject the INVITE with a 5xx (RFC 3262 3)."""

    rseq: int


@dataclass(frozen=True, slots=True)
class PrackOutcome:
    """The answer to a PRACK: 200 with the provisional it acknowledged, or 481."""

    status: int
    acknowledged: Response | None = None


@dataclass
class _Outstanding:
    response: Response
    rseq: int
    interval: float
    next_at: float | None
    give_up_at: float


class ReliableSender:
    """The UAS's reliable provisionals for one INVITE it received.

    `send` turns a 101-199 into a reliable one; the caller transmits what it returns and,
    at `deadline`, what `on_timer(now)` returns, both through the INVITE server transaction.
    """

    def __init__(self, invite: Request, *, t1: float = 0.5, first_rseq: int | None = None):
        if invite.method != "INVITE":
            raise ValueError(f"Reliable provisionals answer an INVITE, not {invite.method}")
        if not t1 > 0:
            raise ValueError(f"T1 must be positive, got {t1!r}")
        if first_rseq is None:
            first_rseq = secrets.randbelow(FIRST_RSEQ_LIMIT) + 1
        elif not 1 <= first_rseq <= FIRST_RSEQ_LIMIT:
            raise ValueError(f"The first RSeq must be in 1-{FIRST_RSEQ_LIMIT}, not {first_rseq}")
        self._invite = invite
        self._t1 = t1
        self._next_rseq = first_rseq
        self._outstanding: _Outstanding | None = None
        self._final_sent = False

    @property
    def pending(self) -> bool:
        """A reliable provisional has not been PRACKed yet."""
        return self._outstanding is not None

    @property
    def deadline(self) -> float | None:
        """When `on_timer` must next be called, None when nothing is retransmitted."""
        out = self._outstanding
        if out is None or out.next_at is None:
            return None
        return min(out.next_at, out.give_up_at)

    def send(self, response: Response, now: float) -> Response:
        """Make `response` reliable (Require: 100rel, RSeq) and start its retransmissions.
        Raises PrackPending while an earlier one waits for its PRACK, ReliableError for a
        100, a final response, one without To tag or one that does not answer the INVITE."""
        self._check_sendable(response)
        if self._outstanding is not None:
            raise PrackPending(
                f"RSeq {self._outstanding.rseq} is not PRACKed yet; a reliable "
                f"{response.status} must wait (RFC 3262 3)"
            )
        rseq = self._next_rseq
        if rseq > MAX_RSEQ:
            raise ReliableError("RSeq space exhausted")
        self._next_rseq += 1
        _add_option_tag(response, "Require")
        response.headers.set("RSeq", str(rseq))
        self._outstanding = _Outstanding(
            response, rseq, self._t1, now + self._t1, now + 64 * self._t1
        )
        return response

    def _check_sendable(self, response: Response) -> None:
        if response.status == 100:
            raise ReliableError("A 100 is never sent reliably (RFC 3262 3)")
        if not 101 <= response.status <= 199:
            raise ReliableError(f"A {response.status} is not a provisional response")
        if self._final_sent:
            raise ReliableError("The INVITE already has its final response")
        if response.call_id != self._invite.call_id or response.cseq != self._invite.cseq:
            raise ReliableError("Response does not answer this INVITE")
        if response.to.tag is None:
            raise ReliableError("A reliable provisional needs a To tag (it makes a dialog)")

    def on_timer(self, now: float) -> list[Retransmit | GaveUp]:
        """Retransmit the outstanding provisional, or give up after 64*T1."""
        out = self._outstanding
        if out is None or out.next_at is None:
            return []
        if now >= out.give_up_at:
            self._outstanding = None
            return [GaveUp(out.rseq)]
        if now < out.next_at:
            return []
        # A late call sends one copy, not every copy it missed.
        while out.next_at <= now:
            out.interval *= 2
            out.next_at += out.interval
        return [Retransmit(out.response)]

    def receive_prack(self, prack: Request) -> PrackOutcome:
        """Match a PRACK: 200 when it acknowledges the outstanding provisional (which stops
        its retransmission), 481 otherwise. ReliableError (400) for a missing or bad RAck."""
        if prack.method != "PRACK":
            raise ReliableError(f"Expected PRACK, got {prack.method}")
        raw = prack.headers.get("RAck")
        if raw is None:
            raise ReliableError("PRACK without RAck", 400)
        rack = parse_rack(raw)
        out = self._outstanding
        if out is None or not self._acknowledges(prack, rack, out):
            return PrackOutcome(481)
        self._outstanding = None
        return PrackOutcome(200, out.response)

    def _acknowledges(self, prack: Request, rack: RAck, out: _Outstanding) -> bool:
        invite = self._invite
        try:
            same_dialog = (
                prack.call_id == invite.call_id
                and prack.from_.tag == invite.from_.tag
                and prack.to.tag == out.response.to.tag
            )
        except HeaderError as exc:
            raise ReliableError(f"Malformed PRACK: {exc}", 400) from None
        return (
            same_dialog
            and rack.rseq == out.rseq
            and rack.cseq == invite.cseq.seq
            and rack.method == invite.cseq.method
        )

    def may_send_final(self, status: int) -> bool:
        """RFC 3262 3: a 2xx waits while an unacknowledged provisional carried a session
        description; any other final response may go now."""
        out = self._outstanding
        return not (200 <= status <= 299 and out is not None and out.response.body)

    def final_sent(self) -> None:
        """The final response went out: stop retransmitting. A PRACK for the outstanding
        provisional still gets its 200."""
        self._final_sent = True
        if self._outstanding is not None:
            self._outstanding.next_at = None


def _add_option_tag(response: Response, header: str) -> None:
    tags = [tag.strip() for tag in response.headers.get_list(header) if tag.strip()]
    if OPTION_TAG not in (tag.lower() for tag in tags):
        response.headers.set(header, ", ".join([*tags, OPTION_TAG]))
