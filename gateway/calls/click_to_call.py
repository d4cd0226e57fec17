"""Click-to-call: the gateway calls party A, and once A answers calls B and bridges them.

This is third-party call control (RFC 3725) done by a B2BUA that anchors the media.
A is called with the gateway's own offer (every codec A's policy allows, with SDES
keys where A's policy wants them); A's answer then stands in as the offer the B leg is
made from, so B is offered what A took (or, transcoding, what B's policy prefers), and
B's answer completes the call's media plan without anything more said to A. B is
reached with the same routing as any call (an app that does not answer falls back to
its number; trunks fail over in least-cost order); A's routes are tried the same way.

After the bridge the call is an ordinary :class:`~gateway.calls.b2bua.Call`: in-dialog
requests, session timers, media timeout and BYE work the same on both legs. Each state
change is reported to the partner logic through a
:data:`~gateway.calls.origination.StateListener`.
"""

from __future__ import annotations

import math
import secrets
import socket

import structlog
import trio

from gateway.calls.b2bua import (
    Branch,
    Call,
    CallHost,
    Leg,
    Route,
    _apply_session_expires,
    _is_sdp,
    attempts_of,
    moves_on,
    new_origin,
    route_family,
    route_role,
    targets,
    unanswered,
)
from gateway.calls.billing import Payer
from gateway.calls.call import CallRecord, CallState, disposition_for
from gateway.calls.negotiation import LegPolicy, NegotiationError
from gateway.calls.origination import ClickToCallState, StateListener
from gateway.calls.router import AppRoute, TrunkRoute
from gateway.config import TrunkConfig
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.identity import Privacy
from gateway.sip.message import Response, new_call_id, new_tag
from gateway.transport.endpoint import ClientEvent, TransactionTimeout
from gateway.transport.flow import Destination, hostport

log = structlog.get_logger("edgegw.click_to_call")


def gateway_offer(host: str) -> bytes:
    """The offer the gateway makes on its own for A: G.711 from nowhere (0.0.0.0).

    It only seeds the negotiator: A is offered its own policy's codecs (the call may
    transcode), and what A answers becomes the offer toward B.
    """
    family = "IP6" if ":" in host else "IP4"
    nowhere = "::" if family == "IP6" else "0.0.0.0"
    session = secrets.randbelow(2**31) + 1
    lines = [
        "v=0",
        f"o=edgegw {session} {session} IN {family} {host}",
        "s=edgegw",
        f"c=IN {family} {nowhere}",
        "t=0 0",
        "m=audio 9 RTP/AVP 8 0 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


class ClickToCall(Call):
    """A call the gateway places for a partner: A first, then B, then the bridge."""

    def __init__(
        self,
        host: CallHost,
        *,
        partner: str,
        a_party: str,
        b_party: str,
        a_route: Route,
        b_route: Route,
        presented: dict[str, str],
        media_host: str,
        on_state: StateListener,
        bill_users: tuple[Payer, ...] = (),
    ) -> None:
        self.partner = partner
        self.account = f"partner:{partner}"  # whose limits the call counts against
        # The partner's budget pays; with bill_user, a subscriber party pays when it is spent.
        self.payers = [Payer("partner", partner), *bill_users]
        self.presented = presented  # the caller each leg is shown, by leg ("a", "b")
        self.on_state = on_state
        self.a_attempts = attempts_of(a_route)
        self._a_route = self.a_attempts[0]  # the one being tried
        self.a_branches: list[Branch] = []
        self.a_winner: Branch | None = None
        self.phase = ClickToCallState.CREATED
        self._a_body = b""
        self._a_cseq = 0
        self._a_seized: TrunkConfig | None = None
        a = Leg("a", new_call_id(), new_tag(), new_origin(media_host))
        record = CallRecord(
            id=secrets.token_hex(8),
            caller=a_party,
            callee=b_party,
            route="click-to-call",
            trunk=None,
            caller_call_id=a.call_id,
            partner=partner,
        )
        self._begin(host, b_route, media_host, a, record)

    # ---- what differs from a call that came in -----------------------------------------

    def _label(self, route: Route) -> None:
        self.record.trunk = route.trunk.name if isinstance(route, TrunkRoute) else None

    def _caller_policy(self) -> LegPolicy:
        return self._policy_for(self.a_attempts[0])

    def _media_families(self) -> dict[str, socket.AddressFamily]:
        return {"a": route_family(self.a_attempts[0]), "b": route_family(self.route)}

    def _media_roles(self) -> dict[str, str]:
        return {"a": self._caller_role(), "b": route_role(self.route)}

    def _caller_role(self) -> str:
        return route_role(self._a_route)

    def _caller_offer_body(self) -> bytes:
        return self._a_body

    def _forwards(self) -> int:
        return 70

    def _refuse(self, status: int, reason: str | None, end_reason: str) -> None:
        self.end(end_reason, status)

    def _close_caller_transaction(self) -> None:
        # Nobody called us: what is still pending toward A is cancelled instead.
        for branch in unanswered(self.a_branches, self.a_winner):
            self._cancel_branch(branch, force=True)
        self._release_a()

    def _unanswered_branches(self) -> list[Branch]:
        return [*super()._unanswered_branches(), *unanswered(self.a_branches, self.a_winner)]

    def _identity(self, destination: Destination) -> tuple[str, str]:
        return self._identity_toward("b", self.route, destination)

    def _identity_toward(self, leg: str, route: Route, destination: Destination) -> tuple[str, str]:
        """From: the number shown to this leg, in the gateway's name; To: the party."""
        local = hostport(
            self.host.endpoint.local_address(
                destination.transport, destination.address[0], role=destination.role
            )
        )
        caller = f"sip:{self.presented[leg]}@{local}"
        if isinstance(route, TrunkRoute):
            return caller, f"sip:{route.number}@{hostport(destination.address)}"
        return caller, f"sip:{route.subscriber.username}@{local}"

    def _caller_user(self, *, toward_trunk: bool) -> str:
        return self.presented["b"]

    def _caller_privacy(self) -> Privacy:
        return Privacy()

    def _a_contact(self, response: Response) -> None:
        # A was called by us: our Contact toward it is the one its INVITE carried.
        destination = self.a.destination
        assert destination is not None
        response.headers.set("Contact", f"<{self._contact_toward(destination)}>")

    def on_stray_2xx(self, response: Response) -> None:
        leg = self.a if response.call_id == self.a.call_id else self.b
        if leg.dialog is not None and leg.destination is not None:
            self.host.endpoint.send_ack(leg.dialog.create_ack(response.cseq.seq), leg.destination)

    def _late_event(self, branch: Branch, event: ClientEvent) -> None:
        if branch is self.a_winner:
            if not isinstance(event, TransactionTimeout) and 200 <= event.status < 300:
                self.on_stray_2xx(event)  # A's 2xx again: our ACK was lost
            return
        super()._late_event(branch, event)

    def _on_provisional(self, branch: Branch, response: Response) -> None:
        # B rings; A hears the relay's silence (no ringback is generated here).
        if not self._reliable(branch, response):
            return
        branch.provisional = True
        if branch.cancel_wanted and not branch.cancelled:
            self._send_cancel(branch)
        elif self.record.state is CallState.SETUP:
            self.record.state = CallState.RINGING

    def _on_answer(self, branch: Branch, response: Response) -> bool:
        if self._take_callee_answer(branch, response) is None:
            return False
        self.a.acked.set()
        self._mark_answered(response, trio.current_time())
        self._notify(ClickToCallState.BRIDGED)
        return True

    # ---- the two phases ------------------------------------------------------------------

    async def _run_call(self) -> None:
        try:
            await super()._run_call()
        finally:
            self._notify(ClickToCallState.ENDED, self._cause())

    async def _setup(self, nursery: trio.Nursery) -> bool:
        with trio.CancelScope() as scope:
            nursery.start_soon(self._cancel_when_ended, scope)
            if not await self._call_a(nursery):
                return False
            self._notify(ClickToCallState.CALLING_B)
            return await self._try_routes(self._offer_for_b(), nursery)
        return False  # ended (the partner hung up) while calling

    def _offer_for_b(self) -> bytes | None:
        try:
            return self.call_media.offer("a", self._a_body)
        except NegotiationError as exc:
            log.info("no offer for B from A's answer", call=self.id, reason=exc.reason)
            self._media_failure = exc
            return None

    async def _call_a(self, nursery: trio.Nursery) -> bool:
        self._notify(ClickToCallState.CALLING_A)
        deadline = trio.current_time() + self.config.sip.no_answer_timeout
        for index, route in enumerate(self.a_attempts):
            offer = self._offer_for_a(route, retarget=index > 0)
            if offer is None or not self._seize_a(route):
                continue
            last = index == len(self.a_attempts) - 1
            outcome = await self._attempt_a(route, offer, nursery, deadline, last=last)
            if outcome is not None:
                return outcome
            if index == len(self.a_attempts) - 1 or not moves_on(route, self._a_status()):
                break
        self.end("a-" + disposition_for(self._a_status(), False, ""), self._a_status())
        return False

    def _offer_for_a(self, route: Route, *, retarget: bool) -> bytes | None:
        self._a_route = route
        if retarget:
            self._release_a()
            port = self._move_media("a", route)
            if port is None:
                return None
            self.a.origin = new_origin(self.media_host)
            self.call_media.retarget("a", self._policy_for(route), self.a.origin, port=port)
        try:
            return self.call_media.offer("b", gateway_offer(self.media_host))
        except NegotiationError as exc:
            log.info("A's route refused by media policy", call=self.id, reason=exc.reason)
            return None

    def _seize_a(self, route: Route) -> bool:
        if not isinstance(route, TrunkRoute):
            return True
        refused = self.host.seize_trunk(route.trunk, force=False)
        if refused is not None:
            self.record.trunk_skips[route.trunk.name] = refused
            return False
        self._a_seized = route.trunk
        return True

    def _release_a(self) -> None:
        if self._a_seized is not None:
            self.host.release_trunk(self._a_seized)
            self._a_seized = None

    def _a_status(self) -> int:
        finals = [b.final for b in self.a_branches if b.final is not None]
        return min(finals, default=480)

    async def _attempt_a(
        self, route: Route, offer: bytes, nursery: trio.Nursery, deadline: float, *, last: bool
    ) -> bool | None:
        """A's forks on one route: True answered, False over, None try A's next route."""
        self._a_cseq += 1
        self._old_branches.extend(self.a_branches)
        self.a_branches = []
        for ruri, destination in await self._forks_to_a(route):
            from_uri, to_uri = self._identity_toward("a", route, destination)
            fork = self._invite_branch(
                self.a, ruri, destination, offer, from_uri, to_uri, cseq=self._a_cseq
            )
            if isinstance(route, TrunkRoute):
                presented = self.presented["a"]
                self._toward_trunk(fork.request, route, destination, self.a, presented)
            self.a_branches.append(fork)
            self._start_branch(fork, nursery)
        if not self.a_branches:
            return None  # the trunk has no address now: A's next route
        give_way = math.inf
        if not last:  # an app that rings too long, a trunk that says nothing: A's next route
            routing = self.config.routing
            app = isinstance(route, AppRoute)
            wait = routing.ring_timeout if app else routing.trunk_response_timeout
            give_way = trio.current_time() + wait
        while True:
            with trio.move_on_at(min(deadline, give_way)):
                branch, event = await self._events.receive()
                if branch is None or event is None:
                    continue
                if branch not in self.a_branches:
                    self._late_event(branch, event)
                    continue
                outcome = self._on_a_event(branch, event)
                if branch.provisional and isinstance(route, TrunkRoute):
                    give_way = math.inf  # the trunk took the call; A's phone rings
                if outcome is not None or all(b.final is not None for b in self.a_branches):
                    return outcome
                continue
            for pending in self.a_branches:
                self._cancel_branch(pending, force=True)
            if trio.current_time() < deadline:
                for pending in self.a_branches:
                    pending.final = pending.final or 408
                return None
            self.end("a-no-answer", 408)
            return False

    async def _forks_to_a(self, route: Route) -> list[tuple[str, Destination]]:
        """A's devices, or the trunk's first DNS target (RFC 3263) for A's number."""
        if not isinstance(route, TrunkRoute):
            return targets(route)
        found = await self.host.trunk_targets(route.trunk)
        return [(route.request_uri, found[0])] if found else []

    def _on_a_event(self, branch: Branch, event: ClientEvent) -> bool | None:
        if isinstance(event, TransactionTimeout):
            branch.final = 408
            return None
        if event.status < 200:
            branch.provisional = self._reliable(branch, event) or branch.provisional
            return None
        if event.status >= 300:
            branch.final = event.status
            return None
        return self._a_answered(branch, event)

    def _a_answered(self, branch: Branch, response: Response) -> bool:
        try:
            dialog = Dialog.as_uac(branch.request, response)
        except DialogError as exc:
            log.warning("A's answer unusable", call=self.id, reason=str(exc))
            branch.final = 502
            self.end("a-bad-answer", 502)
            return False
        early = branch.early.get(response.to.tag or "")
        if early is not None and early.local_seq is not None:
            dialog.local_seq = max(dialog.local_seq or 0, early.local_seq)  # our PRACKs
        self.a_winner = branch
        self.a.destination = branch.destination
        self.a.dialog = dialog
        self.host.endpoint.send_ack(dialog.create_ack(response.cseq.seq), branch.destination)
        for other in self.a_branches:
            if other is not branch:
                self._cancel_branch(other)
        if not (response.body and _is_sdp(response)) or self._answer("a", response.body) is None:
            self.end("a-bad-sdp", 488)
            self._send_bye(self.a)
            return False
        self._a_body = response.body
        self.a.timer = self._new_timer()
        _apply_session_expires(self.a.timer, response, self.id)
        self.a.timer.refreshed(trio.current_time())
        log.info("A answered, calling B", call=self.id, a=self.record.caller)
        return True

    # ---- reporting -----------------------------------------------------------------------

    def _notify(self, state: ClickToCallState, cause: str | None = None) -> None:
        if state is self.phase:
            return
        self.phase = state
        try:
            self.on_state(state, cause)
        except Exception:
            # The partner's bookkeeping must never take the call down with it.
            log.exception("click-to-call state listener failed", call=self.id)

    def _cause(self) -> str:
        """Why the call ended, in the partner API's words (a-busy, b-no-answer, a-bye...)."""
        reason = self.record.end_reason or "unknown"
        if reason.startswith("a-"):
            return reason
        if self.record.answer is None and self.a_winner is not None:
            disposition = disposition_for(self.record.sip_status, False, reason)
            return "api-delete" if reason == "api-delete" else f"b-{disposition}"
        return {"caller-bye": "a-bye", "callee-bye": "b-bye"}.get(reason, reason)


__all__ = ["ClickToCall", "gateway_offer"]
