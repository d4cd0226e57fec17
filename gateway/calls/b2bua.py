"""The back-to-back user agent: one call, two independent legs (RFC 3261 as UAS and UAC).

Leg "a" faces the caller, leg "b" the callee (an app's bindings, forked in
parallel, or a carrier trunk). Each leg has its own Call-ID, tags, Via and
Contact: nothing of one leg's addresses reaches the other. SDP is rewritten to
the call's relay ports on each side (RFC 3264 offer/answer carried through).
Everything of a call runs in one Trio nursery (DESIGN rule 2); leaving it
cancels the relay, the timers and the pending work, and writes the CDR. The
forks still without a final response are then heard until their INVITE
transactions end: a 2xx that crossed our CANCEL (9.1, 15) is ACKed and hung up.

Covered: provisional relay with early media (183 + SDP), 2xx with ACK on each
leg and 2xx retransmission until the caller's ACK (RFC 3261 13.3.1.4), CANCEL
(9.1, 9.2) both ways, BYE from either side, re-INVITE and UPDATE (RFC 3311)
carried across with SDP rewritten, session timers (RFC 4028) per leg, media
timeout, no-answer timeout (408), best-response choice over forks (16.7).

Routes are tried in turn (:func:`attempts_of`): an app that does not answer
within ``routing.ring_timeout``, or answers 408/480/503, gives way to the
subscriber's number on a carrier; a trunk that answers 408 or a 5xx, or nothing
within ``routing.trunk_response_timeout``, gives way to the next trunk in
least-cost order. A 486, a 603 or any other final answer ends the call there.
Each attempt is a new INVITE on the same callee-side Call-ID and From tag with
a higher CSeq (so no UAS takes it for a merged request, RFC 3261 8.2.2.2).

Fax: a fax or modem tone heard on a transcoded call (reported by the media
plane, :attr:`CallMedia.on_fax`) makes the call send a re-INVITE of its own to
the leg that is not on G.711, offering only the other leg's G.711 codec; once
answered the call relays (pass-through). A refusal leaves it transcoded. The
gateway's own re-INVITEs wait while another offer/answer is under way on the
call, and after a 491 wait as RFC 3261 14.1 says and try once more; a
re-INVITE that arrives on a leg while ours is pending there gets 491 (14.2).
A T.38 re-INVITE (or INVITE) is carried as T.38 (see
:mod:`gateway.calls.negotiation`); when the other leg refuses it, the offerer
gets 488 "T.38 Not Accepted By Other Leg" and the audio goes on.
"""

from __future__ import annotations

import functools
import math
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog
import trio

from gateway.calls.billing import Denied, Grant, Payer
from gateway.calls.call import CallRecord, CallState
from gateway.calls.call_media import (
    CallMedia,
    FaxDetected,
    app_policy,
    sdes_allowed,
    transcode_settings,
    trunk_policy,
)
from gateway.calls.call_quality import measure
from gateway.calls.negotiation import LegPolicy, NegotiationError, Side
from gateway.calls.registrar import destination_of
from gateway.calls.router import AppRoute, TrunkRoute, number_plan
from gateway.config import Config, TrunkConfig
from gateway.media.addresses import MediaAddresses
from gateway.media.relay import MediaSession, PortsExhausted
from gateway.sip.dialog import Dialog, DialogError, DialogState
from gateway.sip.headers import CSeq
from gateway.sip.identity import (
    AssertedIdentity,
    IdentityError,
    Privacy,
    PrivacyError,
    make_identity,
    message_privacy,
    parse_privacy,
    present_caller,
    to_trunk_number,
)
from gateway.sip.message import (
    Headers,
    Request,
    Response,
    make_response,
    new_call_id,
    new_tag,
)
from gateway.sip.reason import ReasonError, cause_text, message_reasons, sip_to_q850
from gateway.sip.reliable import (
    ProvisionalKind,
    ReliableError,
    ReliableReceiver,
    ReliableSender,
    Retransmit,
    build_prack,
    rel100_request_headers,
    requires_100rel,
)
from gateway.sip.sdp import (
    Origin,
    SdpError,
    SessionDescription,
    is_hold,
    parse_sdp,
)
from gateway.sip.session_timer import (
    IntervalTooSmall,
    SessionEvent,
    SessionTimer,
    SessionTimerError,
)
from gateway.store.model import Subscriber
from gateway.transport.endpoint import (
    ClientEvent,
    ClientHandle,
    ServerHandle,
    SipEndpoint,
    TransactionTimeout,
)
from gateway.transport.flow import Destination, hostport

log = structlog.get_logger("edgegw.call")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REGISTER"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
USER_AGENT = "edgegw"


class CallHost(Protocol):
    """What a call needs from the gateway around it."""

    endpoint: SipEndpoint
    config: Config
    media_addresses: MediaAddresses

    def register_dialog(self, call_id: str, local_tag: str, call: Call, leg: str) -> None: ...
    def forget(self, call: Call) -> None: ...
    async def record(self, call: Call) -> None: ...
    def seize_trunk(self, trunk: TrunkConfig, *, force: bool) -> str | None:
        """Take one of the trunk's channels; why not ("trunk-down", "trunk-full")
        when it cannot be used now. ``force`` (emergency calls) takes it anyway."""
        ...

    def release_trunk(self, trunk: TrunkConfig) -> None: ...
    async def trunk_targets(self, trunk: TrunkConfig) -> list[Destination]:
        """Where to send to the trunk, in the order to try (RFC 3263); [] when none."""
        ...

    def open_credit(self, call: Call, route: TrunkRoute) -> Grant | Denied | None:
        """Prepaid credit for the call leaving on ``route``; None: the call is free."""
        ...

    def extend_credit(self, call: Call) -> Grant | None: ...


@dataclass(eq=False)
class Leg:
    name: Side  # "a" (caller side) or "b" (callee side)
    call_id: str
    local_tag: str
    origin: Origin
    destination: Destination | None = None
    dialog: Dialog | None = None
    timer: SessionTimer | None = None
    peer_allows_update: bool = False
    busy: bool = False  # a re-INVITE/UPDATE of ours is in progress on this leg
    offering: bool = False  # ... and it is the gateway's own offer (no other leg waits)
    bye_done: bool = False  # a BYE went or came on this leg
    acked: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class Branch:
    """One fork of the callee leg: its INVITE, transaction and what came of it."""

    request: Request
    destination: Destination
    handle: ClientHandle | None = None
    provisional: bool = False
    final: int | None = None
    cancel_wanted: bool = False
    cancelled: bool = False
    # Reliable provisionals (RFC 3262): their order, and the early dialog of each To tag.
    reliable: ReliableReceiver | None = None
    early: dict[str, Dialog] = field(default_factory=dict)
    # 2xx that came when this fork was no longer wanted, by To tag: ACKed and hung up.
    released: dict[str, Dialog] = field(default_factory=dict)


@dataclass(eq=False)
class FaxSwitch:
    """What became of the fax tone a call heard (``edgegw calls`` shows it)."""

    tone: str
    heard_from: Side  # the leg whose peer sent the tone
    leg: Side | None = None  # the leg offered G.711
    outcome: str = "switching"  # pass-through | refused | not-possible | failed
    status: int | None = None  # the refusing response's status
    reason: str | None = None

    def summary(self) -> dict[str, object]:
        return {
            "tone": self.tone,
            "heard_from": self.heard_from,
            "leg": self.leg,
            "outcome": self.outcome,
            "status": self.status,
            "reason": self.reason,
        }


T38_REFUSED = "T.38 Not Accepted By Other Leg"

# What the caller is told when nobody can pay for the route (billing's Denied reasons).
_DENIALS = {
    "insufficient-balance": "Insufficient Balance",
    "daily-spend-cap": "Daily Spend Cap Reached",
    "no-account": "No Account To Charge",
}


def _denial_phrase(denied: Denied) -> str:
    if denied.payer.kind == "partner" and denied.reason == "insufficient-balance":
        return "Partner Budget Spent"
    return _DENIALS.get(denied.reason, "Payment Required")


@dataclass(eq=False)
class _Resend:
    """The caller's 2xx, sent again until its ACK comes (RFC 3261 13.3.1.4)."""

    leg: Leg
    ok: Response
    interval: float
    due: float
    give_up: float


def _route_label(route: AppRoute | TrunkRoute) -> str:
    """The CDR's word for the route: app, trunk, or why a trunk (fallback, emergency)."""
    if isinstance(route, AppRoute):
        return "app"
    if route.emergency:
        return "emergency"
    return "fallback" if route.fallback_for else "trunk"


def new_origin(host: str) -> Origin:
    session = secrets.randbelow(2**31) + 1
    addrtype = "IP6" if ":" in host else "IP4"
    return Origin("edgegw", str(session), session, "IN", addrtype, host)


def best_status(statuses: list[int]) -> int:
    """RFC 3261 16.7 step 6: a 6xx wins, else the lowest class (408 only when alone)."""
    six = [s for s in statuses if s >= 600]
    if six:
        return six[0]
    real = [s for s in statuses if s != 408] or statuses
    return min(real, key=lambda s: (s // 100, s))


def map_status(status: int) -> tuple[int, str | None]:
    """What the caller is told for a callee-side failure."""
    if status in (401, 407):
        return 503, "Callee Side Authentication Failed"
    if 300 <= status < 400 or status == 430:  # 430: the callee's flow is gone (RFC 5626)
        return 480, "Temporarily Unavailable"
    return status, None


Route = AppRoute | TrunkRoute


@dataclass(frozen=True, slots=True)
class CarrierCaller:
    """The caller of a call a carrier trunk brought in (to one of our numbers)."""

    trunk: TrunkConfig
    number: str  # the calling party as the carrier gave it (E.164 when it could be read)
    owner: str  # the subscriber owning the number called: it pays for a forward


Caller = Subscriber | CarrierCaller


@dataclass(frozen=True, slots=True)
class MaskedCall:
    """A call to a partner's masked number: the partner pays, both sides see ``number``."""

    partner: str
    number: str
    bill_users: tuple[Payer, ...] = ()  # who pays when the partner's budget is spent


def unanswered(branches: list[Branch], winner: Branch | None) -> list[Branch]:
    """The forks of `branches` with no final response, the answering one (`winner`) aside."""
    return [branch for branch in branches if branch is not winner and branch.final is None]


def attempts_of(route: Route) -> list[Route]:
    """The routes a call tries in turn: the app (then its fallback number's trunks), or
    each trunk of a number in least-cost order. Each trunk attempt has one trunk."""
    first: list[Route] = []
    if isinstance(route, AppRoute):
        first, route = [route], route.fallback  # type: ignore[assignment]
        if route is None:
            return first
    assert isinstance(route, TrunkRoute)
    return first + [replace(route, trunk=trunk, alternatives=()) for trunk in route.trunks]


def targets(route: Route) -> list[tuple[str, Destination]]:
    """Where the INVITEs of a route go: (Request-URI, destination) of each fork."""
    if isinstance(route, AppRoute):
        return [(binding.contact, destination_of(binding)) for binding in route.bindings]
    trunk = route.trunk
    return [
        (
            route.request_uri,
            Destination(trunk.transport, (trunk.host, trunk.port), role=route_role(route)),
        )
    ]


def route_role(route: Route) -> str:
    """The network role a route's leg uses (its SIP listener and media address)."""
    return "carrier" if isinstance(route, TrunkRoute) else "access"


def caller_role(caller: Caller) -> str:
    """The network role of the leg a caller came in on."""
    return "carrier" if isinstance(caller, CarrierCaller) else "access"


def route_family(route: Route) -> socket.AddressFamily:
    """A route's media family: the trunk's host, or the address its app registered from."""
    if isinstance(route, TrunkRoute):
        return _family_of(route.trunk.host)
    if route.bindings:
        return _family_of(route.bindings[0].source_host)
    return socket.AF_INET


# Q.850 causes that say the network, not the called party, failed: another carrier may
# get through (no route, out of order, no circuit, temporary failure, congestion,
# unavailable circuit or resource, timer recovery). A user cause (busy, no answer,
# rejected, unallocated number) ends the call whatever SIP status carried it.
NETWORK_CAUSES = frozenset({3, 27, 34, 38, 41, 42, 44, 47, 102})


def moves_on(route: Route, status: int, q850: int | None = None) -> bool:
    """Whether a failure of ``route`` lets the call try its next route (never 486/603).

    A trunk's Q.850 cause, when it gave one (RFC 3326), decides over the SIP status.
    """
    if isinstance(route, AppRoute):
        return status in (408, 480, 503)
    if q850 is not None and status not in (486, 600, 603):
        return q850 in NETWORK_CAUSES
    return status == 408 or 500 <= status < 600


class Call:
    masked: MaskedCall | None = None  # set for a call to a partner's masked number
    _prov: ReliableSender | None = None
    _deferred_ok: tuple[Response, Response] | None = None

    def __init__(
        self,
        host: CallHost,
        server: ServerHandle,
        caller: Caller,
        route: AppRoute | TrunkRoute,
        media_host: str,
        caller_dialog: Dialog,
        *,
        masked: MaskedCall | None = None,
    ) -> None:
        """`caller_dialog`: the early UAS dialog of the INVITE, its local Contact still empty."""
        self._caller_dialog = caller_dialog
        self.masked = masked
        # RFC 3262 toward the caller: when its INVITE requires 100rel, every provisional
        # we relay is reliable, one at a time, each retransmitted until its PRACK.
        self._prov: ReliableSender | None = None
        if requires_100rel(server.request):
            self._prov = ReliableSender(server.request, t1=host.config.sip.t1)
        self._queued: Response | None = None  # the latest provisional waiting its turn
        # The caller's 2xx (and the callee's answer it was made from) waiting for a PRACK.
        self._deferred_ok: tuple[Response, Response] | None = None
        self.server = server
        self.invite = server.request
        self.caller = caller
        if isinstance(caller, CarrierCaller):
            self.account = f"trunk:{caller.trunk.name}"  # whose limits the call counts against
            # Only a forward to the owner's mobile costs money, and the owner pays it.
            self.payers = [Payer("subscriber", caller.owner)] if caller.owner else []
            caller_name = caller.number
        else:
            self.account = caller.username
            self.payers = [Payer("subscriber", caller.username)]
            caller_name = caller.username
        if masked is not None:
            self.payers = [Payer("partner", masked.partner), *masked.bill_users]
        record = CallRecord(
            id=secrets.token_hex(8),
            partner=masked.partner if masked is not None else None,
            caller=caller_name,
            callee="",
            route="",
            trunk=None,
            caller_call_id=self.invite.call_id,
        )
        flow = server.flow
        a = Leg(
            "a",
            self.invite.call_id,
            server.local_tag,
            new_origin(media_host),
            destination=Destination(flow.transport, flow.remote, flow, role=caller_role(caller)),
        )
        self._begin(host, route, media_host, a, record)

    def _begin(
        self, host: CallHost, route: Route, media_host: str, a: Leg, record: CallRecord
    ) -> None:
        """What every call sets up: its routes, callee leg, media session and channels."""
        self.host = host
        self.media_host = media_host
        self.config = host.config
        self.attempts = attempts_of(route)
        self.route = self.attempts[0]
        self._plan = number_plan(self.config)
        self.record = record
        self._label(self.route)
        self.a = a
        self.b = Leg("b", new_call_id(), new_tag(), new_origin(media_host))
        self.record.callee_call_id = self.b.call_id
        media = self.config.media
        self.media = MediaSession(host.media_addresses, latch_window=media.latch_window)
        self.call_media = CallMedia(
            self.media,
            {"a": self._caller_policy(), "b": self._policy_for(self.route)},
            {"a": self.a.origin, "b": self.b.origin},
            call_id=self.record.id,
            settings=transcode_settings(self.config.media),
        )
        self.ports: dict[str, tuple[int, int]] = {}
        self.branches: list[Branch] = []  # the forks of the route being tried
        self._cseq = 0  # the callee leg's INVITE CSeq, one higher for each route tried
        self._seized: TrunkConfig | None = None
        self._old_branches: list[Branch] = []  # forks of routes given up, cancelled
        self._limit_at = math.inf  # when the route's longest call duration is reached
        self._grant: Grant | None = None  # prepaid talk time of the route being tried
        self._denied: Denied | None = None  # why the last route could not be paid for
        self._credit_at = math.inf  # when the granted talk time is used up
        self._answered_at = math.inf
        self.winner: Branch | None = None
        self.ended = trio.Event()
        self._poke = trio.Event()
        self._inbox_send, self._inbox = trio.open_memory_channel[
            tuple[str, Request, ServerHandle | None]
        ](64)
        self._events_send, self._events = trio.open_memory_channel[
            tuple[Branch | None, ClientEvent | None]
        ](64)
        self._hold = False
        self._media_failure: NegotiationError | None = None
        self._answered = trio.Event()
        # Offer/answer exchanges under way (carried, refreshes, our own): the gateway's
        # own offers wait for none (RFC 3261 14.1; and the negotiator holds one offer).
        self._exchanges = 0
        self._exchange_done = trio.Event()
        self.fax: FaxSwitch | None = None
        self.call_media.on_fax = self._on_fax

    # ---- plumbing ---------------------------------------------------------------------

    def _media_families(self) -> dict[str, socket.AddressFamily]:
        """Each leg's media family: the caller's SDP address, the callee's signalling
        address (a trunk's host, or the address each app device registered from)."""
        families = {"b": route_family(self.route)}
        offer = _sdp_of(self.invite)
        if offer is not None:
            families["a"] = _family_of(_first_audio_host(offer))
        return families

    def _media_roles(self) -> dict[str, str]:
        """Each leg's network role: carrier toward trunks, access toward apps."""
        return {"a": self._caller_role(), "b": route_role(self.route)}

    def _caller_role(self) -> str:
        return caller_role(self.caller)

    def _move_media(self, side: Side, route: Route) -> int | None:
        """Move ``side``'s media to the address of ``route``'s role and family; its new
        RTP port (None: no ports left there, the route cannot be used)."""
        try:
            ports = self.media.move_leg(side, route_role(route), route_family(route))
        except PortsExhausted as exc:
            log.warning("no media ports for route", call=self.id, reason=str(exc))
            self._media_failure = NegotiationError(
                503, "Media Ports Exhausted", "media-ports-exhausted"
            )
            return None
        self.ports[side] = ports
        return ports[0]

    def _caller_policy(self) -> LegPolicy:
        flow = self.server.flow
        secure = sdes_allowed(self.config, flow.transport, flow.remote[0])
        if isinstance(self.caller, CarrierCaller):
            return trunk_policy(self.config, self.caller.trunk, secure=secure)
        return app_policy(self.config, self.caller, secure=secure)

    def _policy_for(self, route: Route) -> LegPolicy:
        """The media policy toward the peer of ``route``: its trunk's, or its app's."""
        if isinstance(route, TrunkRoute):
            trunk = route.trunk
            secure = sdes_allowed(self.config, trunk.transport, trunk.host)
            return trunk_policy(self.config, trunk, secure=secure)
        # One offer goes to every device of the callee: keys only if all are safe for them.
        secure = all(sdes_allowed(self.config, b.transport, b.source_host) for b in route.bindings)
        return app_policy(self.config, route.subscriber, secure=secure)

    @property
    def id(self) -> str:
        return self.record.id

    def leg(self, name: str) -> Leg:
        return self.a if name == "a" else self.b

    def other(self, leg: Leg) -> Leg:
        return self.b if leg is self.a else self.a

    def deliver(self, leg: str, request: Request, server: ServerHandle | None) -> None:
        """An in-dialog request for this call (from the core's dialog table)."""
        try:
            self._inbox_send.send_nowait((leg, request, server))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            if server is not None:
                server.reply(500, "Call Busy")

    def on_stray_2xx(self, response: Response) -> None:
        """A retransmitted 2xx of the callee: its ACK was lost, send it again (13.2.2.4)."""
        if self.b.dialog is not None and self.b.destination is not None:
            ack = self.b.dialog.create_ack(response.cseq.seq)
            self.host.endpoint.send_ack(ack, self.b.destination)

    def end(self, reason: str, status: int | None = None) -> None:
        self.record.finish(reason, status)
        self.ended.set()
        self._wake_talk()

    def _wake_talk(self) -> None:
        """Something _talk sleeps on changed (a deadline, the end): it looks again."""
        self._poke.set()

    def summary(self) -> dict[str, object]:
        record = self.record
        return {
            "id": record.id,
            "caller": record.caller,
            "callee": record.callee,
            "route": record.route,
            "trunk": record.trunk,
            "state": record.state.value,
            "start": record.start,
            "answer": record.answer,
            "duration": round(record.duration, 3),
            "caller_call_id": record.caller_call_id,
            "callee_call_id": record.callee_call_id,
            "media": self.media.stats(),
            "fax": None if self.fax is None else self.fax.summary(),
            "quality": measure(self.call_media).as_dict(),
        }

    # ---- the call's life ---------------------------------------------------------------

    async def run(self) -> None:
        await self._run_call()
        await self._release_late_answers()  # not on shutdown: Cancelled skips it

    async def _run_call(self) -> None:
        """The call from its start to its CDR."""
        self.host.register_dialog(self.a.call_id, self.a.local_tag, self, "a")
        self.host.register_dialog(self.b.call_id, self.b.local_tag, self, "b")
        try:
            await self._lifetime()
        except Exception:
            # A fault in one call ends that call, never the gateway around it.
            log.exception("call failed", call=self.id)
            self.record.finish("internal-error", 500)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    self._wrap_up()
                except Exception:
                    log.exception("call wrap-up failed", call=self.id)
                self.host.forget(self)
                with trio.move_on_after(10):
                    try:
                        await self.host.record(self)
                    except Exception:
                        # The store failed this CDR (logged); the other calls go on.
                        log.exception("call record failed", call=self.id)

    async def _lifetime(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    self.ports = self.media.open(
                        nursery, self._media_families(), self._media_roles()
                    )
                except PortsExhausted:
                    self._refuse(503, "Media Ports Exhausted", "media-ports-exhausted")
                    return
                self.call_media.bind(self.ports)
                nursery.start_soon(self._inbox_loop)
                if await self._setup(nursery):
                    await self._talk()
                nursery.cancel_scope.cancel()
        finally:
            self.media.close()  # the relay loops have ended with the nursery

    def _refuse(self, status: int, reason: str | None, end_reason: str) -> None:
        if not self.server.final_sent:
            if self._prov is not None:
                self._prov.final_sent()
            self.server.reply(status, reason, to_tag=self.a.local_tag)
        self.end(end_reason, status)

    def _caller_offer_body(self) -> bytes:
        """The caller's offer, from which each route's offer is made."""
        return self.invite.body

    def _close_caller_transaction(self) -> None:
        """At wrap-up: the caller's INVITE, still unanswered, gets its final response."""
        if not self.server.final_sent:
            failed = self.record.end_reason == "internal-error"
            status, reason = (
                (500, "Server Internal Error") if failed else (503, "Service Unavailable")
            )
            self.server.reply(status, reason, to_tag=self.a.local_tag)

    def _wrap_up(self) -> None:
        """Whatever is still open when the call's scope ends is closed politely."""
        if self.record.end is None:
            self.record.finish("gateway-shutdown", None)
        self._close_caller_transaction()
        for branch in self._unanswered_branches():
            self._cancel_branch(branch, force=True)
        self._release()
        for leg in (self.a, self.b):
            if leg.dialog is not None and leg.destination is not None and not leg.acked.is_set():
                leg.acked.set()
            if leg.dialog is None or leg.destination is None or leg.bye_done:
                continue
            if leg.dialog.state is DialogState.CONFIRMED:  # early: no 2xx went out, no BYE
                self._send_bye(leg)
        self.record.quality = measure(self.call_media)  # for the CDR

    def _send_bye(self, leg: Leg) -> None:
        assert leg.dialog is not None and leg.destination is not None
        leg.bye_done = True
        bye = leg.dialog.create_request("BYE", extra=[("Reason", _reason(self.record.end_reason))])
        self._finish_headers(bye)
        self.host.endpoint.send_request(bye, leg.destination)

    def _finish_headers(self, request: Request) -> None:
        request.headers.set("User-Agent", USER_AGENT)

    # ---- set-up ------------------------------------------------------------------------

    def _offer(self) -> bytes | None:
        """The offer for the callee leg, made from the caller's; None when refused."""
        if not self.invite.body or not _is_sdp(self.invite):
            self._refuse(488, "SDP Offer Required In INVITE", "no-sdp-offer")
            return None
        try:
            offer = self.call_media.offer("a", self.invite.body)
        except NegotiationError as exc:
            self._refuse(exc.status, exc.reason, exc.cause)
            return None
        return offer if self._negotiate_caller_timer() else None

    def _new_timer(self) -> SessionTimer:
        sip = self.config.sip
        return SessionTimer(interval=sip.session_expires, min_se=sip.min_se)

    def _negotiate_caller_timer(self) -> bool:
        """RFC 4028 9: the caller's Session-Expires/Min-SE, or our own interval."""
        timer = self._new_timer()
        try:
            timer.on_request(self.invite)
        except IntervalTooSmall as exc:
            response = make_response(self.invite, 422, "Session Interval Too Small")
            for name, value in exc.headers():
                response.headers.set(name, value)
            self.server.respond(response)
            self.end("session-interval-too-small", 422)
            return False
        except SessionTimerError as exc:
            self._refuse(400, f"Bad Session Timer: {exc}", "bad-request")
            return False
        self.a.timer = timer
        self.a.peer_allows_update = _allows(self.invite, "UPDATE")
        return True

    def _answer(self, side: Side, body: bytes) -> bytes | None:
        """The answer for the offerer made from ``side``'s answer; None when unusable."""
        try:
            return self.call_media.answer(side, body)
        except NegotiationError as exc:
            log.warning("answer refused", call=self.id, leg=side, reason=exc.reason)
            self._media_failure = exc
            return None

    async def _setup(self, nursery: trio.Nursery) -> bool:
        if self.server.cancelled:  # the CANCEL came before the call started: nobody rings
            self._refuse(487, "Request Terminated", "caller-cancel")
            return False
        log.info(
            "call started",
            call=self.id,
            leg="a",
            sip_call_id=self.a.call_id,
            caller=self.record.caller,
            callee=self.record.callee,
        )
        offer = self._offer()
        if offer is None:
            return False
        self.server.on_cancel = self._on_caller_cancel
        answered = False
        try:
            with trio.CancelScope() as scope:
                nursery.start_soon(self._cancel_when_ended, scope)
                answered = await self._try_routes(offer, nursery)
            return answered and not self.ended.is_set()
        finally:
            # A 2xx held for a PRACK can still be cancelled by the caller.
            self.server.on_cancel = self._cancel_deferred if self._deferred_ok else None

    async def _cancel_when_ended(self, scope: trio.CancelScope) -> None:
        """Ending the call (a hangup from the API or the CLI) stops trying its routes."""
        await self.ended.wait()
        scope.cancel()

    async def _try_routes(self, offer: bytes | None, nursery: trio.Nursery) -> bool:
        """Each route in turn until one answers or a failure ends the call."""
        deadline = trio.current_time() + self.config.sip.no_answer_timeout
        status: int = 480
        reason: str | None = "Temporarily Unavailable"
        for index, route in enumerate(self.attempts):
            last = index == len(self.attempts) - 1
            if index > 0:
                offer = self._retarget(route)
            if offer is None:
                status, reason = self._skipped_status(503, "No Usable Media On Route")
                continue
            if isinstance(route, TrunkRoute) and not self._seize(route):
                status, reason = (503, "No Trunk Available")
                if self._denied is not None:
                    status, reason = 403, _denial_phrase(self._denied)
                continue
            outcome = await self._attempt_route(route, offer, nursery, deadline, last=last)
            if outcome is not None:
                return outcome
            status, reason = map_status(self.record.sip_status or 480)
        self._refuse(status, reason, "no-route-left")
        return False

    def _skipped_status(self, status: int, reason: str) -> tuple[int, str]:
        failure = self._media_failure
        return (failure.status, failure.reason) if failure is not None else (status, reason)

    def _retarget(self, route: Route) -> bytes | None:
        """Point the callee leg at the next route; the offer for it (None: unusable)."""
        self._release()
        self.route = route
        self._label(route)
        self.record.q850_cause = self.record.reason_text = None  # the last route's, not ours
        self._media_failure = None
        port = self._move_media("b", route)
        if port is None:
            return None
        self.b.origin = new_origin(self.media_host)
        self.call_media.retarget("b", self._policy_for(route), self.b.origin, port=port)
        try:
            return self.call_media.offer("a", self._caller_offer_body())
        except NegotiationError as exc:
            log.info("route refused by media policy", call=self.id, reason=exc.reason)
            self._media_failure = exc
            return None

    def _carrier_cause(self) -> int | None:
        """The Q.850 cause a trunk gave with its failure, if it gave one."""
        return self.record.q850_cause if isinstance(self.route, TrunkRoute) else None

    def _label(self, route: Route) -> None:
        record = self.record
        record.route = "masked" if self.masked is not None else _route_label(route)
        if isinstance(route, TrunkRoute):
            record.callee = route.number
            record.trunk = route.trunk.name
        else:
            record.callee = route.subscriber.username
            record.trunk = None

    def _seize(self, route: TrunkRoute) -> bool:
        refused = self.host.seize_trunk(route.trunk, force=route.emergency)
        self.record.trunks_tried.append(route.trunk.name)
        if refused is not None:
            log.info("trunk skipped", call=self.id, trunk=route.trunk.name, why=refused)
            self.record.trunk_skips[route.trunk.name] = refused
            return False
        self._seized = route.trunk
        credit = self.host.open_credit(self, route)
        if isinstance(credit, Denied):
            log.info("no credit", call=self.id, payer=str(credit.payer), why=credit.reason)
            self._release()
            self._denied = credit
            return False
        self._grant = credit
        return True

    def _release(self) -> None:
        if self._seized is not None:
            self.host.release_trunk(self._seized)
            self._seized = None

    async def _attempt_route(
        self, route: Route, offer: bytes, nursery: trio.Nursery, deadline: float, *, last: bool
    ) -> bool | None:
        """A route: the app's devices at once, or each of the trunk's DNS targets in turn
        (RFC 3263 4.3: the next one after a 503, a 408 or no response)."""
        if isinstance(route, AppRoute):
            return await self._attempt(offer, nursery, deadline, targets(route), last=last)
        destinations = await self.host.trunk_targets(route.trunk)
        if not destinations:
            log.info("trunk has no address", call=self.id, trunk=route.trunk.name)
            self.record.sip_status = 503
            return None
        for index, destination in enumerate(destinations):
            final = last and index == len(destinations) - 1
            forks = [(route.request_uri, destination)]
            outcome = await self._attempt(offer, nursery, deadline, forks, last=final)
            if outcome is not None:
                return outcome
        return None

    async def _attempt(
        self,
        offer: bytes,
        nursery: trio.Nursery,
        deadline: float,
        forks: list[tuple[str, Destination]],
        *,
        last: bool,
    ) -> bool | None:
        """One set of forks: True answered, False the call is over, None try the next."""
        self._cseq += 1
        self._make_branches(offer, forks)
        for fork in self.branches:
            self._start_branch(fork, nursery)
        give_way = math.inf if last else self._give_way_at(trio.current_time())
        while True:
            with trio.move_on_at(min(deadline, give_way)):
                branch, event = await self._events.receive()
                outcome = self._on_setup_event(branch, event, last=last)
                if outcome is not None or branch is None:
                    return outcome
                if all(fork.final is not None for fork in self.branches):
                    return None  # every fork failed in a way that lets the next route go
                if isinstance(self.route, TrunkRoute) and branch.provisional:
                    give_way = math.inf  # the trunk took the call; it rings now
                continue
            for pending in self.branches:
                self._cancel_branch(pending, force=True)
            if trio.current_time() < deadline:
                log.info("route gave no answer in time", call=self.id, route=self.record.route)
                self.record.sip_status = 408
                return None
            # No answer in time: give up on every fork (RFC 3261 calls this a UA choice).
            self._refuse(408, "Request Timeout", "no-answer-timeout")
            return False

    def _give_way_at(self, now: float) -> float:
        """When this route, unanswered, gives way to the next one."""
        routing = self.config.routing
        if isinstance(self.route, AppRoute):
            return now + routing.ring_timeout
        return now + routing.trunk_response_timeout

    def _on_setup_event(
        self, branch: Branch | None, event: ClientEvent | None, *, last: bool = True
    ) -> bool | None:
        if branch is None:  # the caller cancelled
            for pending in self.branches:
                self._cancel_branch(pending)
            self._refuse(487, "Request Terminated", "caller-cancel")
            return False
        assert event is not None
        if branch not in self.branches:  # a fork of a route already given up
            if not isinstance(event, TransactionTimeout) and event.status >= 300:
                branch.final = event.status
            self._late_event(branch, event)
            return None
        if isinstance(event, TransactionTimeout):
            return self._branch_failed(branch, 408, last=last)
        if event.status < 200:
            self._on_provisional(branch, event)
            return None
        if event.status < 300:
            return self._on_answer(branch, event)
        self._note_reason(event)
        return self._branch_failed(branch, event.status, last=last)

    def _note_reason(self, message: Request | Response) -> None:
        """Why a leg failed or ended (RFC 3326 Reason), for the CDR and for failover: the
        Q.850 cause when one came, else the one a failure status maps to (RFC 3398 8.2.6.1)."""
        record = self.record
        try:
            reasons = message_reasons(message)
        except ReasonError:
            reasons = []
        q850 = next((r for r in reasons if r.protocol == "Q.850" and r.cause is not None), None)
        if q850 is not None and q850.cause is not None:
            record.q850_cause, record.reason_text = q850.cause, q850.text or cause_text(q850.cause)
        elif isinstance(message, Response):
            record.q850_cause = sip_to_q850(message.status)
            record.reason_text = next((r.text for r in reasons if r.text), None) or message.reason
        elif record.q850_cause is None and reasons:
            record.reason_text = reasons[0].text

    def _make_branches(self, offer: bytes, forks: list[tuple[str, Destination]]) -> None:
        self._old_branches.extend(self.branches)
        self.branches = [self._branch(ruri, destination, offer) for ruri, destination in forks]

    def _identity(self, destination: Destination) -> tuple[str, str]:
        """From and To URIs of the callee leg, in the gateway's name only."""
        local = hostport(
            self.host.endpoint.local_address(
                destination.transport, destination.address[0], role=destination.role
            )
        )
        caller = self._caller_user(toward_trunk=isinstance(self.route, TrunkRoute))
        if isinstance(self.route, TrunkRoute):
            return (
                f"sip:{caller}@{local}",
                f"sip:{self.route.number}@{hostport(destination.address)}",
            )
        callee = self.route.subscriber.username
        return f"sip:{caller}@{local}", f"sip:{callee}@{local}"

    def _contact_toward(self, destination: Destination) -> str:
        """Our Contact for a leg: the listener of the leg's role, in its family."""
        endpoint = self.host.endpoint
        return endpoint.contact_uri(
            destination.transport, destination.address[0], role=destination.role
        )

    def _caller_user(self, *, toward_trunk: bool) -> str:
        """Who the callee is told is calling: the masked number of a masked call; a
        carrier's caller as given; an app user by name toward apps and by its first
        number toward carriers."""
        if self.masked is not None:
            return self.masked.number
        caller = self.caller
        if isinstance(caller, CarrierCaller):
            return caller.number
        if toward_trunk and caller.numbers:
            return caller.numbers[0]
        return caller.username

    def _branch(self, ruri: str, destination: Destination, offer: bytes) -> Branch:
        from_uri, to_uri = self._identity(destination)
        branch = self._invite_branch(self.b, ruri, destination, offer, from_uri, to_uri)
        if isinstance(self.route, TrunkRoute):
            caller = self._caller_user(toward_trunk=True)
            self._toward_trunk(branch.request, self.route, destination, self.b, caller)
        return branch

    def _toward_trunk(
        self, request: Request, route: TrunkRoute, destination: Destination, leg: Leg, caller: str
    ) -> None:
        """What a carrier is given (RFC 3325, RFC 3323): numbers written its way, the
        caller in From and P-Asserted-Identity (anonymous From with ``Privacy: id`` when
        the caller asked for privacy), and the trunk's own extra headers."""
        trunk = route.trunk
        if not route.emergency:  # short codes go as dialled
            number = to_trunk_number(route.number, trunk.number_format, self._plan)
            written = trunk.add_prefix + number
            request.uri = request.uri.replace(f"sip:{route.number}@", f"sip:{written}@", 1)
            to = request.headers.get("To") or ""
            request.headers.set("To", to.replace(f"sip:{route.number}@", f"sip:{written}@", 1))
        host, port = self.host.endpoint.local_address(
            destination.transport, destination.address[0], role=destination.role
        )
        e164 = caller if _E164.fullmatch(caller) else None
        shown = to_trunk_number(caller, trunk.number_format, self._plan) if e164 else caller
        try:
            identity = _identity(shown, host, port, e164)
            presentation = present_caller(
                identity,
                from_tag=leg.local_tag,
                privacy=self._caller_privacy(),
                trusted=True,
                send_pai=trunk.send_pai,
            )
        except IdentityError as exc:  # a name that cannot be a URI user: From as built
            log.info("caller identity not presentable", call=self.id, reason=str(exc))
        else:
            presentation.apply(request.headers)
        for header in trunk.add_headers:
            name, _, value = header.partition(":")
            request.headers.add(name.strip(), value.strip())
        for name, value in rel100_request_headers(trunk.rel100):
            present = request.headers.get(name)  # one Supported line: "timer, 100rel"
            request.headers.set(name, f"{present}, {value}" if present else value)

    def _caller_privacy(self) -> Privacy:
        """What the caller asked to hide (RFC 3323); unreadable asks hide the identity."""
        try:
            return message_privacy(self.invite)
        except PrivacyError:
            return parse_privacy(["id"])

    def _invite_branch(
        self,
        leg: Leg,
        ruri: str,
        destination: Destination,
        offer: bytes,
        from_uri: str,
        to_uri: str,
        cseq: int | None = None,
    ) -> Branch:
        """An INVITE of ours on ``leg`` (its Call-ID and tag; CSeq ``self._cseq``)."""
        headers = Headers()
        headers.add("Max-Forwards", str(self._forwards()))
        headers.add("From", f"<{from_uri}>;tag={leg.local_tag}")
        headers.add("To", f"<{to_uri}>")
        headers.add("Call-ID", leg.call_id)
        headers.add("CSeq", str(CSeq(self._cseq if cseq is None else cseq, "INVITE")))
        headers.add(
            "Contact",
            f"<{self._contact_toward(destination)}>",
        )
        headers.add("Allow", ALLOW)
        for name, value in self._new_timer().request_headers():
            headers.add(name, value)
        headers.add("User-Agent", USER_AGENT)
        headers.add("Content-Type", "application/sdp")
        return Branch(Request("INVITE", ruri, headers, offer), destination)

    def _forwards(self) -> int:
        return _max_forwards(self.invite)

    def _start_branch(self, branch: Branch, nursery: trio.Nursery) -> None:
        branch.handle = self.host.endpoint.send_request(branch.request, branch.destination)
        nursery.start_soon(self._pump, branch)

    async def _pump(self, branch: Branch) -> None:
        assert branch.handle is not None
        async for event in branch.handle:
            if self.winner is not None:
                self._late_event(branch, event)
                continue
            await self._events_send.send((branch, event))

    def _late_event(self, branch: Branch, event: ClientEvent) -> None:
        """Events after the answer: 2xx retransmits of the winner, 2xx of other forks."""
        if isinstance(event, TransactionTimeout):
            return
        if event.status < 200 and branch.cancel_wanted and not branch.cancelled:
            self._send_cancel(branch)
        if not 200 <= event.status < 300:
            return
        if branch is self.winner:
            self.on_stray_2xx(event)
            return
        self._release_late_answer(branch, event)

    def _release_late_answer(self, branch: Branch, response: Response) -> None:
        """A 2xx from a fork we no longer want (a second fork answering, RFC 3261 13.2.2.4;
        or a 2xx crossing our CANCEL, 9.1): ACK it, and hang up with one BYE. Its
        retransmissions (RFC 6026 7.2 hands them to us) are ACKed again, never BYE'd twice."""
        tag = response.to.tag or ""
        late = branch.released.get(tag)
        first = late is None
        if late is None:
            try:
                late = Dialog.as_uac(branch.request, response)
            except DialogError:
                return  # no usable Contact: it cannot be reached in-dialog
            branch.released[tag] = late
        self.host.endpoint.send_ack(late.create_ack(response.cseq.seq), branch.destination)
        if first:
            bye = late.create_request("BYE")
            self._finish_headers(bye)
            self.host.endpoint.send_request(bye, branch.destination)

    def _unanswered_branches(self) -> list[Branch]:
        """The forks, of every route tried, that never got a final response."""
        return unanswered([*self._old_branches, *self.branches], self.winner)

    async def _release_late_answers(self) -> None:
        """After the call: a fork we cancelled may still answer, its 2xx having crossed our
        CANCEL; the callee would then hold an answered call nobody is on. Each fork is heard
        until its INVITE transaction ends (Timer B, or 64*T1 after a 2xx, RFC 6026), and
        every 2xx is ACKed and hung up."""
        pending = [branch for branch in self._unanswered_branches() if branch.handle is not None]
        if not pending:
            return
        with trio.move_on_after(64 * self.config.sip.t1 + 1.0):
            async with trio.open_nursery() as nursery:
                for branch in pending:
                    nursery.start_soon(self._drain_branch, branch)

    async def _drain_branch(self, branch: Branch) -> None:
        assert branch.handle is not None
        async for event in branch.handle:
            if isinstance(event, TransactionTimeout) or event.status >= 300:
                return
            if event.status >= 200:
                self._release_late_answer(branch, event)

    def _on_caller_cancel(self) -> None:
        """The caller's CANCEL (RFC 3261 9.2), queued behind the responses already in."""
        if self.winner is not None:
            return
        try:
            self._events_send.send_nowait((None, None))
        except trio.WouldBlock:
            self._nursery_spawn(self._events_send.send, (None, None))  # wait for room

    def _reliable(self, branch: Branch, response: Response) -> bool:
        """RFC 3262 on the callee side: PRACK each new reliable provisional; False for
        one already seen, out of order or unusable (it is not relayed again)."""
        if response.status == 100 or not requires_100rel(response):
            return True  # most provisionals: nothing to acknowledge
        if branch.reliable is None:
            branch.reliable = ReliableReceiver(branch.request)
        try:
            seen = branch.reliable.receive(response)
        except ReliableError as exc:
            log.info("provisional dropped", call=self.id, reason=str(exc))
            return False
        if seen.kind is ProvisionalKind.UNRELIABLE:
            return True
        if seen.kind is not ProvisionalKind.NEW or seen.rack is None or seen.to_tag is None:
            return False
        dialog = branch.early.get(seen.to_tag)
        if dialog is None:
            try:
                dialog = Dialog.as_uac(branch.request, response)
            except DialogError as exc:
                log.info("reliable provisional unusable", call=self.id, reason=str(exc))
                return False
            branch.early[seen.to_tag] = dialog
        prack = build_prack(dialog, seen.rack)
        self._finish_headers(prack)
        handle = self.host.endpoint.send_request(prack, branch.destination)
        self._nursery_spawn(self._final_of, handle)  # its 200 needs nothing from us
        return True

    def _on_provisional(self, branch: Branch, response: Response) -> None:
        if not self._reliable(branch, response):
            return
        branch.provisional = True
        if branch.cancel_wanted and not branch.cancelled:
            self._send_cancel(branch)
            return
        if response.status == 100:
            return
        relayed = make_response(
            self.invite, response.status, response.reason, to_tag=self.a.local_tag
        )
        self._a_contact(relayed)
        if response.body and _is_sdp(response):
            answer = self._answer("b", response.body)
            if answer is not None:
                relayed.body = answer
                relayed.headers.set("Content-Type", "application/sdp")
                self.record.state = CallState.EARLY_MEDIA
        if self.record.state is CallState.SETUP:
            self.record.state = CallState.RINGING
        self._provisional_to_caller(relayed)

    def _provisional_to_caller(self, response: Response) -> None:
        rel = self._prov
        if rel is None:
            self.server.respond(response)
            return
        if rel.pending:  # one reliable provisional at a time (RFC 3262 3): the latest waits
            self._queued = response
            return
        self.server.respond(rel.send(response, trio.current_time()))
        self._nursery_spawn(self._retransmit_provisional, rel)

    async def _retransmit_provisional(self, rel: ReliableSender) -> None:
        """T1 doubling until the PRACK; after 64*T1 the caller gets 504 (RFC 3262 3)."""
        while (deadline := rel.deadline) is not None:
            await trio.sleep_until(deadline)
            for event in rel.on_timer(trio.current_time()):
                if isinstance(event, Retransmit):
                    self.host.endpoint.resend_response(self.server, event.response)
                elif not self.server.final_sent:
                    log.info("no PRACK from the caller", call=self.id)
                    self._refuse(504, "No PRACK For Reliable Provisional", "no-prack")
                    self._on_caller_cancel()  # wakes the set-up: every fork is cancelled

    def _on_prack(self, request: Request, server: ServerHandle) -> None:
        """The caller's PRACK: 200 when it matches our outstanding provisional, else 481;
        then the provisional (or 2xx) that waited for it goes out."""
        rel = self._prov
        if rel is None:
            server.reply(481, "No Reliable Provisional Outstanding")
            return
        try:
            outcome = rel.receive_prack(request)
        except ReliableError as exc:
            server.reply(exc.status or 400, str(exc))
            return
        server.reply(outcome.status)
        if outcome.status != 200:
            return
        if self._deferred_ok is not None:
            (ok, answer), self._deferred_ok = self._deferred_ok, None
            self._send_ok(ok, answer)
        elif self._queued is not None and not self.server.final_sent:
            queued, self._queued = self._queued, None
            self._provisional_to_caller(queued)

    def _a_contact(self, response: Response) -> None:
        flow = self.server.flow
        role = self._caller_role()
        uri = self.host.endpoint.contact_uri(flow.transport, flow.remote[0], role=role)
        response.headers.set("Contact", f"<{uri}>")

    def _branch_failed(self, branch: Branch, status: int, *, last: bool = True) -> bool | None:
        branch.final = status
        if any(b.final is None for b in self.branches):
            return None
        best = best_status([b.final for b in self.branches if b.final is not None])
        self.record.sip_status = best
        if not last and moves_on(self.route, best, self._carrier_cause()):
            log.info("route failed, trying the next", call=self.id, status=best)
            return None
        mapped, reason = map_status(best)
        if mapped == 488 and self.call_media.offering_t38:
            reason = T38_REFUSED
        self._refuse(mapped, reason, "callee-timeout" if best == 408 else "callee-rejected")
        self.record.sip_status = best
        return False

    def _cancel_branch(self, branch: Branch, *, force: bool = False) -> None:
        if branch.final is not None or branch.cancelled:
            return
        branch.cancel_wanted = True
        if branch.provisional or force:
            self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        """CANCEL copies the INVITE's Request-URI, Call-ID, From, To, CSeq number and Via."""
        branch.cancelled = True
        invite = branch.request
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        for name in ("Max-Forwards", "From", "To", "Call-ID"):
            value = invite.headers.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("CSeq", str(CSeq(invite.cseq.seq, "CANCEL")))
        headers.add("Reason", 'SIP;cause=487;text="Request Terminated"')
        cancel = Request("CANCEL", invite.uri, headers)
        self.host.endpoint.send_request(cancel, branch.destination, keep_via=True)

    def _on_answer(self, branch: Branch, response: Response) -> bool:
        answer = self._take_callee_answer(branch, response)
        if answer is None:
            return False
        ok = make_response(self.invite, 200, None, to_tag=self.a.local_tag)
        self._a_contact(ok)
        ok.headers.set("Allow", ALLOW)
        ok.headers.set("Supported", "timer")
        now = trio.current_time()
        if self.a.timer is not None:
            for name, value in self.a.timer.response_headers():
                ok.headers.set(name, value)
            self.a.timer.refreshed(now)
        ok.body = answer
        ok.headers.set("Content-Type", "application/sdp")
        if self._prov is not None and self._prov.pending:
            # RFC 3262 3 makes this wait only after an SDP provisional; waiting always keeps
            # the PRACK's 200 ahead of the INVITE's, which strict carriers expect. Until it
            # goes, the caller has no dialog and the call is not answered (nor billed).
            self._deferred_ok = (ok, response)
        else:
            self._send_ok(ok, response)
        return True

    def _send_ok(self, ok: Response, answer: Response) -> None:
        """The caller's 2xx: its dialog confirmed, the call answered from now on."""
        contact = ok.headers.get("Contact") or ""
        self._caller_dialog.local_contact = contact.strip("<>")
        self.a.dialog = self._caller_dialog
        self.a.dialog.confirm()
        self._mark_answered(answer, trio.current_time())
        if self._prov is not None:
            self._prov.final_sent()
        self.server.respond(ok)
        self._retransmit_until_ack(self.a, ok)
        self._wake_talk()

    def _cancel_deferred(self) -> None:
        """The caller's CANCEL while its 2xx waits for a PRACK: 487, and B is hung up."""
        if self._deferred_ok is None:
            return
        self._deferred_ok = None
        self._refuse(487, "Request Terminated", "caller-cancel")

    def _take_callee_answer(self, branch: Branch, response: Response) -> bytes | None:
        """The callee's 2xx: its dialog, ACK, the other forks cancelled; the answer for
        the caller's leg, or None when the call cannot go on (then it is refused)."""
        try:
            dialog = Dialog.as_uac(branch.request, response)
        except DialogError as exc:  # e.g. a 2xx without Contact: nothing to ACK or BYE
            log.warning("callee answer unusable", call=self.id, reason=str(exc))
            branch.final = response.status
            self._refuse(502, "Unusable Answer From Callee", "callee-bad-answer")
            return None
        early = branch.early.get(response.to.tag or "")
        if early is not None and early.local_seq is not None:
            # Our PRACKs used CSeq numbers in this dialog already (RFC 3261 12.2.1.1).
            dialog.local_seq = max(dialog.local_seq or 0, early.local_seq)
        self.winner = branch
        self.b.destination = branch.destination
        self.b.dialog = dialog
        self.host.endpoint.send_ack(self.b.dialog.create_ack(response.cseq.seq), branch.destination)
        for other in self.branches:
            if other is not branch:
                self._cancel_branch(other)
        answer = self._final_answer(response)
        if answer is None:
            failure = self._media_failure
            status, reason, cause = (
                (failure.status, failure.reason, failure.cause)
                if failure is not None
                else (502, "Callee Answered Without Usable SDP", "callee-bad-sdp")
            )
            self._refuse(status, reason, cause)
            self._send_bye(self.b)
        return answer

    def _mark_answered(self, response: Response, now: float) -> None:
        """Both legs are up: the callee's session timer, media latching, the record."""
        self.b.timer = self._new_timer()
        _apply_session_expires(self.b.timer, response, self.id)
        self.b.timer.refreshed(now)
        self.b.peer_allows_update = _allows(response, "UPDATE")
        self.media.open_latch_window("a")
        self.media.open_latch_window("b")
        self.record.answer = time.time()
        self.record.state = CallState.ANSWERED
        longest = self._max_duration()
        if longest:
            self._limit_at = now + longest
        self._answered_at = now
        if self._grant is not None and self._grant.seconds is not None:
            self._credit_at = now + self._grant.seconds
        self._answered.set()
        self.b.acked.set()
        log.info(
            "call answered",
            call=self.id,
            leg="b",
            sip_call_id=self.b.call_id,
            caller=self.record.caller,
            callee=self.record.callee,
            route=self.record.route,
        )

    def _more_credit(self) -> bool:
        """The granted talk time is used: ask for the next slice (RFC 4006-style quota)."""
        grant = self.host.extend_credit(self)
        if grant is None or grant.seconds is None:
            self._credit_at = math.inf if grant is not None else self._credit_at
            return grant is not None
        self._grant = grant
        self._credit_at = self._answered_at + grant.seconds
        return trio.current_time() < self._credit_at

    def _max_duration(self) -> float:
        """The route's longest call in seconds (0: none): the trunk's, or routing's.
        Emergency calls have none."""
        if isinstance(self.route, TrunkRoute):
            return 0.0 if self.route.emergency else self.route.trunk.max_duration
        return self.config.routing.max_duration

    def _final_answer(self, response: Response) -> bytes | None:
        """The caller's answer from the callee's 2xx, or from its earlier 183 when the 2xx
        has no SDP (the answer came unreliably in the 183; many UAs do not repeat it)."""
        self._media_failure = None
        if response.body and _is_sdp(response):
            return self._answer("b", response.body)
        if self.call_media.negotiated:
            return self.call_media.last_sent("a")
        return None

    def _retransmit_until_ack(self, leg: Leg, ok: Response) -> None:
        # Driven by _talk's wake-ups, not a task of its own: one task less per call.
        t1 = self.config.sip.t1
        now = trio.current_time()
        self._resend = _Resend(leg, ok, t1, now + t1, now + 64 * t1)

    def _resend_deadline(self) -> float:
        resend = self._resend
        if resend is None or resend.leg.acked.is_set():
            return math.inf
        return resend.due

    def _resend_if_due(self, now: float) -> None:
        """RFC 3261 13.3.1.4: T1, doubling up to T2, for 64*T1; then the call is ended."""
        resend = self._resend
        if resend is None or now < resend.due:
            return
        if resend.leg.acked.is_set():
            self._resend = None
            return
        if now >= resend.give_up:
            self._resend = None
            self.end("no-ack", 408)
            return
        self.host.endpoint.resend_response(self.server, resend.ok)
        resend.interval = min(resend.interval * 2, self.config.sip.t2)
        resend.due = now + resend.interval

    def _nursery_spawn(self, fn: Callable[..., object], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    # ---- talking -----------------------------------------------------------------------

    _nursery: trio.Nursery | None = None
    _resend: _Resend | None = None

    async def _talk(self) -> None:
        timeout = self.config.media.timeout
        while not self.ended.is_set():
            now = trio.current_time()
            media_deadline = math.inf if self._hold else self.media.last_activity + timeout
            deadline = min(
                media_deadline,
                self._timer_deadline(),
                self._resend_deadline(),
                self._limit_at,
                self._credit_at,
            )
            with trio.move_on_at(deadline):
                await self._poke.wait()
            if self._poke.is_set():
                self._poke = trio.Event()
            if self.ended.is_set():
                return
            now = trio.current_time()
            self._resend_if_due(now)
            if self.ended.is_set():
                return
            if not self._hold and now >= self.media.last_activity + timeout:
                self.end("media-timeout")
                return
            if now >= self._limit_at:
                self.end("max-duration")
                return
            if now >= self._credit_at and not self._more_credit():
                self.end("credit-exhausted")
                return
            self._session_timers(now)

    def _timer_deadline(self) -> float:
        deadlines = [leg.timer.deadline for leg in (self.a, self.b) if leg.timer is not None]
        return min((d for d in deadlines if d is not None), default=math.inf)

    def _session_timers(self, now: float) -> None:
        for leg in (self.a, self.b):
            event = leg.timer.on_timer(now) if leg.timer is not None else None
            if event is SessionEvent.EXPIRED:
                self.end("session-timer-expired")
                return
            if event is SessionEvent.REFRESH:
                self._nursery_spawn(self._refresh, leg)

    async def _refresh(self, leg: Leg) -> None:
        """Refresh with UPDATE (no SDP, RFC 4028 9) when the peer allows it, else re-INVITE."""
        assert leg.dialog is not None and leg.destination is not None and leg.timer is not None
        if leg.busy:
            return  # a carried re-INVITE/UPDATE is under way and refreshes the session too
        method = "UPDATE" if leg.peer_allows_update else "INVITE"
        last = self.call_media.last_sent(leg.name)
        body = last if method == "INVITE" and last else b""
        request = leg.dialog.create_request(
            method,
            body=body,
            content_type="application/sdp" if body else None,
            extra=leg.timer.request_headers(),
        )
        self._finish_headers(request)
        leg.busy = True
        self._exchange_started()
        try:
            final = await self._final_of(self.host.endpoint.send_request(request, leg.destination))
        finally:
            leg.busy = False
            self._exchange_ended()
        if isinstance(final, TransactionTimeout):
            self.end("session-refresh-failed", 408)
            return
        if method == "INVITE" and 200 <= final.status < 300:
            self.host.endpoint.send_ack(leg.dialog.create_ack(final.cseq.seq), leg.destination)
        if 200 <= final.status < 300:
            _apply_session_expires(leg.timer, final, self.id)
            leg.timer.refreshed(trio.current_time())
        elif final.status in (408, 481):
            self.end("session-refresh-failed", final.status)

    async def _final_of(self, handle: ClientHandle) -> Response | TransactionTimeout:
        async for event in handle:
            if isinstance(event, TransactionTimeout) or event.status >= 200:
                return event
        return TransactionTimeout()

    # ---- in-dialog requests ---------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        async for name, request, server in self._inbox:
            leg = self.leg(name)
            if request.method == "ACK":
                leg.acked.set()
                continue
            assert server is not None
            if leg.dialog is None:
                self._early_request(leg, request, server)
                continue
            try:
                leg.dialog.receive_request(request)
            except DialogError as exc:
                server.reply(500, str(exc), to_tag=leg.local_tag)
                continue
            self._in_dialog(leg, request, server)

    def _early_request(self, leg: Leg, request: Request, server: ServerHandle) -> None:
        if request.method == "PRACK" and leg is self.a:
            self._on_prack(request, server)
            return
        if request.method == "BYE" and leg is self.b and self.winner is None:
            server.reply(200, to_tag=leg.local_tag)
            return
        server.reply(481, "Call/Transaction Does Not Exist")

    def _in_dialog(self, leg: Leg, request: Request, server: ServerHandle) -> None:
        method = request.method
        if method == "BYE":
            server.reply(200)
            leg.bye_done = True
            self._note_reason(request)
            log.info("bye received", call=self.id, leg=leg.name, sip_call_id=leg.call_id)
            self.end("caller-bye" if leg is self.a else "callee-bye")
        elif method == "OPTIONS":
            ok = make_response(request, 200)
            ok.headers.set("Allow", ALLOW)
            server.respond(ok)
        elif method == "PRACK" and leg is self.a:
            self._on_prack(request, server)  # a late PRACK still gets its 200
        elif method in ("INVITE", "UPDATE", "INFO", "MESSAGE", "NOTIFY"):
            self._nursery_spawn(self._carry_across, leg, request, server)
        else:
            server.reply(501, "Not Implemented")

    async def _carry_across(self, leg: Leg, request: Request, server: ServerHandle) -> None:
        """A re-INVITE/UPDATE/INFO from one leg becomes the same request on the other."""
        offer_answer = request.method in ("INVITE", "UPDATE")
        if offer_answer:
            self._exchange_started()
        try:
            await self._carry(leg, request, server)
        finally:
            if offer_answer:
                self._exchange_ended()

    async def _carry(self, leg: Leg, request: Request, server: ServerHandle) -> None:
        other = self.other(leg)
        if other.busy or other.dialog is None or other.destination is None:
            server.reply(491, "Request Pending")  # RFC 3261 14.1 glare
            return
        if leg.offering and request.method in ("INVITE", "UPDATE"):
            server.reply(491, "Request Pending")  # 14.2: our own offer is pending on it
            return
        body, content_type = self._carried_body(leg, other, request)
        if body is None:
            server.reply(488, "Not Acceptable Here")
            return
        if leg.timer is not None and request.method in ("INVITE", "UPDATE"):
            try:
                leg.timer.on_request(request)
            except SessionTimerError as exc:
                server.reply(422 if isinstance(exc, IntervalTooSmall) else 400, str(exc))
                return
        forwarded = other.dialog.create_request(
            request.method,
            body=body,
            content_type=content_type,
            extra=[
                (n, v)
                for n in ("Event", "Subscription-State", "Info-Package")
                if (v := request.headers.get(n)) is not None
            ],
        )
        self._finish_headers(forwarded)
        other.busy = True
        try:
            final = await self._final_of(
                self.host.endpoint.send_request(forwarded, other.destination)
            )
        finally:
            other.busy = False
        offered = content_type == "application/sdp"
        self._relay_final(leg, other, request, server, final, offered=offered)

    def _carried_body(
        self, leg: Leg, other: Leg, request: Request
    ) -> tuple[bytes | None, str | None]:
        if not request.body:
            return b"", None
        if not _is_sdp(request):
            return request.body, request.headers.get("Content-Type")
        try:
            offer = self.call_media.offer(leg.name, request.body)
        except NegotiationError as exc:
            log.info("re-offer refused", call=self.id, leg=leg.name, reason=exc.reason)
            return None, None
        held = _sdp_of(request)
        self._hold = held is not None and _on_hold(held)
        return offer, "application/sdp"

    def _relay_final(
        self,
        leg: Leg,
        other: Leg,
        request: Request,
        server: ServerHandle,
        final: Response | TransactionTimeout,
        *,
        offered: bool = False,
    ) -> None:
        """``offered``: the request carried an SDP offer, now pending toward ``other``."""
        t38 = offered and self.call_media.offering_t38
        if isinstance(final, TransactionTimeout):
            if offered:
                self.call_media.withdraw(other.name)
            server.reply(408, "Request Timeout")
            return
        if request.method == "INVITE" and 200 <= final.status < 300:
            assert other.dialog is not None and other.destination is not None
            self.host.endpoint.send_ack(other.dialog.create_ack(final.cseq.seq), other.destination)
        if offered and final.status >= 300:
            # RFC 3264 8 / RFC 3261 14.1: a refused offer leaves the session as it was.
            self.call_media.withdraw(other.name)
            if t38 and final.status in (415, 488, 606):
                log.info("t38 refused", call=self.id, by=other.name, status=final.status)
                server.respond(make_response(request, 488, T38_REFUSED))
                return
        response = make_response(request, final.status, final.reason)
        if 200 <= final.status < 300:
            self._a_contact(response) if leg is self.a else self._b_contact(response)
            answer = self._answer(other.name, final.body) if final.body and _is_sdp(final) else None
            if t38 and answer is None:
                # It said 2xx but refused the image stream (port 0): that leg has no
                # media now, so it gets its audio back in an offer of ours.
                log.info("t38 refused", call=self.id, by=other.name, status=final.status)
                server.respond(make_response(request, 488, T38_REFUSED))
                self._nursery_spawn(self._restore_audio, other)
                return
            if answer is not None:
                response.body = answer
                response.headers.set("Content-Type", "application/sdp")
            if leg.timer is not None and request.method in ("INVITE", "UPDATE"):
                for name, value in leg.timer.response_headers():
                    response.headers.set(name, value)
                leg.timer.refreshed(trio.current_time())
        server.respond(response)
        if request.method == "INVITE" and 200 <= final.status < 300:
            leg.acked = trio.Event()
            self._nursery_spawn(self._resend_reinvite_2xx, leg, server, response)

    async def _resend_reinvite_2xx(self, leg: Leg, server: ServerHandle, ok: Response) -> None:
        t1, t2 = self.config.sip.t1, self.config.sip.t2
        interval, give_up = t1, trio.current_time() + 64 * t1
        while not leg.acked.is_set() and trio.current_time() < give_up:
            with trio.move_on_after(interval):
                await leg.acked.wait()
            if not leg.acked.is_set():
                self.host.endpoint.resend_response(server, ok)
                interval = min(interval * 2, t2)

    # ---- offers of the gateway's own: fax pass-through, audio back after T.38 ----------------

    def _exchange_started(self) -> None:
        self._exchanges += 1

    def _exchange_ended(self) -> None:
        self._exchanges -= 1
        self._exchange_done.set()
        self._exchange_done = trio.Event()

    async def _until_quiet(self) -> bool:
        """Wait until no offer/answer is under way and both legs' INVITEs are acknowledged
        (RFC 3261 14.1: no INVITE while another is in progress on the dialog); False if
        that takes longer than a transaction may last (64*T1)."""
        with trio.move_on_after(64 * self.config.sip.t1):
            while True:
                if self._exchanges:
                    await self._exchange_done.wait()
                elif not self.a.acked.is_set():
                    await self.a.acked.wait()
                elif not self.b.acked.is_set():
                    await self.b.acked.wait()
                else:
                    return True
        return False

    async def _gateway_offer(
        self, make: Callable[[], tuple[Side, bytes]]
    ) -> tuple[Leg, Response | TransactionTimeout] | NegotiationError:
        """Send the offer ``make`` gives (its leg and body) in a re-INVITE of our own.

        Waits while another offer/answer is under way; after a 491 waits as RFC 3261
        14.1 says and tries once more (``make`` is asked again: the call may have
        changed). A refused offer is withdrawn; a 408 or 481 ends the call (12.2.1.2:
        the dialog is gone). Returns the leg and its final response (its 2xx is
        acknowledged), or the NegotiationError that says why nothing was sent.
        """
        retried = False
        while True:
            if not await self._until_quiet():
                return NegotiationError(491, "Offer/Answer Still Under Way", "glare")
            try:
                side, body = make()
            except NegotiationError as exc:
                return exc
            leg = self.leg(side)
            final = await self._send_reinvite(leg, body)
            if isinstance(final, Response) and 200 <= final.status < 300:
                return leg, final
            self.call_media.withdraw(side)
            if isinstance(final, TransactionTimeout) or final.status in (408, 481):
                status = 408 if isinstance(final, TransactionTimeout) else final.status
                self.end("reinvite-failed", status)
                return leg, final
            if final.status != 491 or retried:
                return leg, final
            retried = True
            await trio.sleep(_glare_backoff(owner=leg is self.b))

    async def _send_reinvite(self, leg: Leg, body: bytes) -> Response | TransactionTimeout:
        assert leg.dialog is not None and leg.destination is not None
        extra = leg.timer.request_headers() if leg.timer is not None else []
        request = leg.dialog.create_request(
            "INVITE", body=body, content_type="application/sdp", extra=extra
        )
        self._finish_headers(request)
        leg.busy = leg.offering = True
        self._exchange_started()
        try:
            final = await self._final_of(self.host.endpoint.send_request(request, leg.destination))
        finally:
            leg.busy = leg.offering = False
            self._exchange_ended()
        if isinstance(final, Response) and 200 <= final.status < 300:
            self.host.endpoint.send_ack(leg.dialog.create_ack(final.cseq.seq), leg.destination)
            if leg.timer is not None:  # a re-INVITE refreshes the session too (RFC 4028)
                _apply_session_expires(leg.timer, final, self.id)
                leg.timer.refreshed(trio.current_time())
        return final

    def _take_answer(self, leg: Leg, final: Response) -> NegotiationError | None:
        """Apply ``leg``'s answer (in a 2xx) to an offer of ours; the error if unusable."""
        if not final.body or not _is_sdp(final):
            return NegotiationError(488, "2xx To An Offer Without SDP", "bad-sdp")
        try:
            self.call_media.answer(leg.name, final.body)
        except NegotiationError as exc:
            return exc
        return None

    def _on_fax(self, event: FaxDetected) -> None:
        """The media plane heard a fax or modem tone (once per call)."""
        log.info("fax detected", call=self.id, heard_from=event.side, tone=event.tone.value)
        self.fax = FaxSwitch(tone=event.tone.value, heard_from=event.side)
        if self._nursery is not None and not self.ended.is_set():
            self._nursery.start_soon(self._fax_passthrough, self.fax)

    async def _fax_passthrough(self, fax: FaxSwitch) -> None:
        """Move the call to G.711 pass-through: the non-G.711 leg is offered G.711."""
        await self._answered.wait()
        result = await self._gateway_offer(self.call_media.fax_reoffer)
        if isinstance(result, NegotiationError):
            fax.outcome, fax.reason = "not-possible", result.reason
            log.info("fax pass-through not possible", call=self.id, reason=result.reason)
            return
        leg, final = result
        fax.leg = leg.name
        if isinstance(final, TransactionTimeout) or final.status >= 300:
            status = 408 if isinstance(final, TransactionTimeout) else final.status
            fax.outcome, fax.status = "refused", status
            fax.reason = None if isinstance(final, TransactionTimeout) else final.reason
            log.warning(
                "fax pass-through refused: the call stays transcoded",
                call=self.id,
                leg=leg.name,
                status=status,
            )
            return
        failure = self._take_answer(leg, final)
        if failure is not None:
            fax.outcome, fax.reason = "failed", failure.reason
            log.warning("fax pass-through answer unusable", call=self.id, reason=failure.reason)
            self.end("fax-bad-answer", failure.status)
            return
        fax.outcome = "pass-through"
        log.info("fax pass-through", call=self.id, leg=leg.name, tone=fax.tone)

    async def _restore_audio(self, leg: Leg) -> None:
        """``leg`` took an offer with a 2xx but refused its stream: give it its audio back."""

        def offer() -> tuple[Side, bytes]:
            return leg.name, self.call_media.restore_offer(leg.name)

        result = await self._gateway_offer(offer)
        if isinstance(result, NegotiationError):
            log.warning("audio not restored", call=self.id, leg=leg.name, reason=result.reason)
            return
        _, final = result
        if isinstance(final, TransactionTimeout) or final.status >= 300:
            log.warning("audio restore refused", call=self.id, leg=leg.name)
            return
        failure = self._take_answer(leg, final)
        if failure is not None:
            log.warning("audio restore answer unusable", call=self.id, reason=failure.reason)
            self.end("callee-bad-sdp" if leg is self.b else "caller-bad-sdp", failure.status)

    def _b_contact(self, response: Response) -> None:
        destination = self.b.destination
        assert destination is not None
        uri = self._contact_toward(destination)
        response.headers.set("Contact", f"<{uri}>")


@functools.lru_cache(maxsize=4096)
def _identity(user: str, host: str, port: int, e164: str | None) -> AssertedIdentity:
    """The caller's asserted identity (frozen, so one per caller and address serves all
    its calls; building it parses URIs, which a busy box should not redo per call)."""
    return make_identity(user, host, port=port, tel=e164)


def _family_of(host: str | None) -> socket.AddressFamily:
    """IPv6 for an IPv6 literal, else IPv4 (host names and the unknown included)."""
    return socket.AF_INET6 if host is not None and ":" in host else socket.AF_INET


def _first_audio_host(sdp: SessionDescription) -> str | None:
    for media in sdp.media:
        if media.media == "audio" and media.port != 0:
            connection = media.connection or sdp.connection
            return None if connection is None else connection.address
    return None


def _is_sdp(message: Request | Response) -> bool:
    content_type = (message.headers.get("Content-Type") or "application/sdp").lower()
    return content_type.split(";")[0].strip() == "application/sdp"


def _sdp_of(message: Request | Response) -> SessionDescription | None:
    if not message.body or not _is_sdp(message):
        return None
    try:
        return parse_sdp(message.body)
    except SdpError:
        return None


def _on_hold(sdp: SessionDescription) -> bool:
    """Held calls send little or no media, so the media timeout must not end them."""
    for media in sdp.media:
        if media.media == "audio" and media.port != 0:
            return is_hold(media, sdp)
    return False


def _glare_backoff(*, owner: bool) -> float:
    """RFC 3261 14.1: after a 491, 2.1 to 4 s for the Call-ID's owner, else 0 to 2 s,
    in units of 10 ms."""
    tens = 210 + secrets.randbelow(191) if owner else secrets.randbelow(201)
    return tens / 100


def _apply_session_expires(timer: SessionTimer, response: Response, call: str) -> None:
    """A 2xx's Session-Expires; one that does not parse is read as absent (RFC 4028 7.2:
    the peer does not do session timers, so we refresh at our own interval)."""
    try:
        timer.on_response(response)
    except SessionTimerError as exc:
        log.info("bad Session-Expires in a 2xx ignored", call=call, reason=str(exc))
        timer.we_refresh = True


def _allows(message: Request | Response, method: str) -> bool:
    return any(m.strip().upper() == method for m in message.headers.get_list("Allow"))


def _max_forwards(request: Request) -> int:
    raw = request.headers.get("Max-Forwards")
    if raw is None or not raw.strip().isdigit():
        return 70
    return max(0, min(70, int(raw) - 1))


def _reason(end_reason: str) -> str:
    causes = {
        "media-timeout": 'SIP;cause=408;text="Media Timeout"',
        "session-timer-expired": 'SIP;cause=408;text="Session Timer Expired"',
        "session-refresh-failed": 'SIP;cause=408;text="Session Refresh Failed"',
        "no-ack": 'SIP;cause=408;text="No ACK"',
        "gateway-shutdown": 'SIP;cause=503;text="Gateway Shutting Down"',
        "max-duration": 'Q.850;cause=16;text="Maximum Call Duration Reached"',
        "credit-exhausted": 'Q.850;cause=16;text="Credit Exhausted"',
    }
    return causes.get(end_reason, 'Q.850;cause=16;text="Normal call clearing"')
