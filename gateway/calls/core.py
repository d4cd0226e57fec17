"""The gateway's SIP core: what each incoming request becomes (RFC 3261 8.2, 10.3, 12.2.2).

New requests are screened (Max-Forwards, supported methods and extensions,
bans, credentials for anything that costs money) and become a registration, an
OPTIONS answer or a call; requests inside a dialog go to the call that owns the
dialog. Calls run in the core's nursery, each in a nursery of its own.

Where a call comes from decides how it is taken: an app user authenticates (RFC
7616 digest) and is routed by :class:`~gateway.calls.router.Router`; a carrier
trunk is known by its address and calls only our numbers (DIDs); a dialled
masked number is looked up in the store first (a partner's binding). The core
also places calls itself for partners (click-to-call, the ``CallOriginator`` of
:mod:`gateway.calls.origination`), and serves what calls need from around them:
trunk channels and health, DNS targets (RFC 3263), prepaid credit, admission
limits (:mod:`gateway.calls.admission`) and the CDR with its ledger row.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from gateway.calls.admission import Admission, LimitRefusal
from gateway.calls.b2bua import ALLOW, Call, CarrierCaller, MaskedCall
from gateway.calls.billing import CreditControl, Denied, Grant, Payer, Tariffs
from gateway.calls.click_to_call import ClickToCall
from gateway.calls.limits import RateLimiter
from gateway.calls.numbers import NumberError, classify
from gateway.calls.origination import CallRefused, StateListener
from gateway.calls.overload import sample_load
from gateway.calls.registrar import Registrar
from gateway.calls.router import AppRoute, Refusal, Router, TrunkRoute, dialled
from gateway.config import Config, TrunkConfig
from gateway.media.addresses import MediaAddresses
from gateway.sip.auth import AuthOutcome, DigestServer
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.identity import IdentityError, asserted_identity, from_trunk_number
from gateway.sip.message import Request, Response, make_response
from gateway.sip.reliable import bad_extension, unsupported_tags
from gateway.sip.uri import SipUri, TelUri, UriError
from gateway.store.base import Store
from gateway.store.model import Cdr, Subscriber
from gateway.transport.dns import DnsError, Resolver
from gateway.transport.endpoint import ServerHandle, SipEndpoint
from gateway.transport.flow import Destination, Flow

log = structlog.get_logger("edgegw.core")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A source address, parsed once per address (every INVITE asks)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "REGISTER",
        "UPDATE",
        "INFO",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "MESSAGE",
        "PUBLISH",
    }
)

# Allowed, but only inside a dialog (RFC 3261 15.1.2, RFC 3311 5.2, RFC 3262 3, RFC 6086 4.2):
# out of one they match nothing, which is 481 rather than 405 with themselves in Allow.
DIALOG_ONLY_METHODS = frozenset({"BYE", "UPDATE", "INFO", "PRACK"})

# Option tags an INVITE may Require of us (RFC 3262 100rel, RFC 4028 timer).
SUPPORTED_EXTENSIONS = frozenset({"100rel", "timer"})


class TrunkHealthView(Protocol):
    """What routing asks of the trunk health checks."""

    def is_up(self, name: str) -> bool: ...


@dataclass
class CoreStats:
    calls_started: int = 0
    calls_refused: int = 0
    calls_rate_limited: int = 0
    auth_challenges: int = 0
    auth_failures: int = 0
    registrations: int = 0
    # Every refused INVITE by reason (gateway.calls.admission.RefusalReason values,
    # "route" for the router's refusals, "draining").
    refusals: Counter[str] = field(default_factory=Counter)
    bans: int = 0  # source addresses banned after repeated authentication failures
    banned_dropped: int = 0  # requests from banned sources, dropped unanswered


class CallCore:
    """RequestHandler for the SIP endpoint and CallHost for the calls."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registrar: Registrar,
        digest: DigestServer,
        media_addresses: MediaAddresses,
    ) -> None:
        self.config = config
        self.store = store
        self.registrar = registrar
        self.digest = digest
        self.media_addresses = media_addresses
        self.router = Router(config)
        # Trunks are never banned: forged authentication failures must not cut off a carrier.
        self.admission = Admission(config.limits, never_ban=[t.host for t in config.trunks])
        self.endpoint: SipEndpoint = None  # type: ignore[assignment]  # set by the service
        self.subscribers: dict[str, Subscriber] = {}
        self.numbers: dict[str, Subscriber] = {}
        self.calls: dict[str, Call] = {}
        self.dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        self.stats = CoreStats()
        # Told of every finished call with its CDR (metrics); must not block or raise.
        self.call_observers: list[Callable[[Call, Cdr], None]] = []
        # Calls holding each trunk (least-cost routing skips a trunk at max_channels).
        self.channels: dict[str, int] = {}
        # Trunk health (OPTIONS pings): set by the service when trunks are pinged.
        self.trunk_monitor: TrunkHealthView | None = None
        # DNS for trunks named by host name (RFC 3263): set by the service.
        self.resolver: Resolver | None = None
        # Prepaid credit (loaded from the store by the service) and the retail tariffs.
        self.credit: CreditControl | None = None
        self.tariffs = Tariffs.from_config(config)
        # Every partner's masked number, and whose pool it is in.
        self.masked_pools = {n: p.name for p in config.partners for n in p.masked_pool}
        self._literal_trunks = {
            t.name for t in config.trunks if t.resolve == "static" and _is_ip(t.host)
        }
        self._trunk_networks = [
            (trunk, [ipaddress.ip_network(n, strict=False) for n in trunk.networks])
            for trunk in config.trunks
        ]
        self.draining = False
        self._nursery: trio.Nursery | None = None

    @property
    def attempts(self) -> RateLimiter:
        """The per-account call-attempt limiter (tests swap in a tighter one)."""
        return self.admission.account_rate

    @attempts.setter
    def attempts(self, limiter: RateLimiter) -> None:
        self.admission.account_rate = limiter

    def set_subscribers(self, subscribers: list[Subscriber]) -> None:
        self.subscribers = {s.username: s for s in subscribers}
        self.numbers = {n: s for s in subscribers for n in s.numbers}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Sampled even with no load limit set: /metrics shows the event-loop lag.
            nursery.start_soon(sample_load, self.admission.load)
            task_status.started()
            await trio.sleep_forever()

    # ---- RequestHandler -----------------------------------------------------------------

    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        to_tag = request.to.tag
        if self.admission.banned(flow.remote[0], time.monotonic()) and (
            to_tag is None or (request.call_id, to_tag) not in self.dialogs
        ):
            # Calls already set up from there go on; anything new gets no answer at all.
            self.stats.banned_dropped += 1
            if server is not None:
                server.drop()
            return
        if to_tag is not None:
            self._in_dialog(request, server, to_tag)
            return
        if server is None:
            return  # an ACK outside any dialog or transaction: nothing to do
        if request.method not in KNOWN_METHODS:
            server.reply(501, "Not Implemented")
            return
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and max_forwards.strip() == "0" and request.method != "OPTIONS":
            server.refuse(483, "Too Many Hops")
            return
        if not self._uri_ok(request, server):
            return
        handler = {
            "OPTIONS": self._options,
            "REGISTER": self._register,
            "INVITE": self._invite,
        }.get(request.method)
        if handler is None and request.method in DIALOG_ONLY_METHODS:
            server.reply(481, "Call/Transaction Does Not Exist")  # no To tag: no dialog
            return
        if handler is None:
            response = make_response(request, 405, "Method Not Allowed")
            response.headers.set("Allow", ALLOW)
            server.respond(response)
            return
        handler(request, server, flow)

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        if response.cseq.method != "INVITE" or not 200 <= response.status < 300:
            return
        tag = response.from_.tag
        owner = self.dialogs.get((response.call_id, tag or ""))
        if owner is not None:
            owner[0].on_stray_2xx(response)

    def _uri_ok(self, request: Request, server: ServerHandle) -> bool:
        try:
            request.parsed_uri  # noqa: B018  (parsing is the check)
        except (UriError, ValueError) as exc:
            # RFC 3261 8.2.2.1: a scheme we do not understand is 416, a broken URI 400.
            scheme = request.uri.partition(":")[0].lower()
            status = 400 if scheme in ("sip", "sips", "tel") else 416
            server.refuse(status, f"Bad Request-URI: {exc}")
            return False
        return True

    def _in_dialog(self, request: Request, server: ServerHandle | None, to_tag: str) -> None:
        owner = self.dialogs.get((request.call_id, to_tag))
        if owner is None:
            if server is not None:
                server.reply(481, "Call/Transaction Does Not Exist")
            return
        call, leg = owner
        call.deliver(leg, request, server)

    # ---- out-of-dialog requests --------------------------------------------------------

    def _options(self, request: Request, server: ServerHandle, flow: Flow) -> None:
        response = make_response(request, 200)
        response.headers.set("Allow", ALLOW)
        response.headers.set("Accept", "application/sdp")
        response.headers.set("Supported", "timer, 100rel, outbound, path")
        server.respond(response)

    def _authenticate(self, request: Request, server: ServerHandle, *, proxy: bool) -> str | None:
        """Digest check (RFC 3261 22, RFC 7616): the username, or None after a challenge.

        A wrong password or an unknown user gets 403 and no new challenge: a
        client retrying the same wrong secret would otherwise loop. Stale and
        replayed nonces get a fresh challenge with stale=true; malformed or
        foreign-realm credentials a plain one.
        """
        header = "Proxy-Authorization" if proxy else "Authorization"
        now = time.time()
        outcomes: set[AuthOutcome] = set()
        for value in request.headers.get_all(header):
            result = self.digest.verify(request.method, value, self._password, now)
            if result.outcome is AuthOutcome.OK:
                return result.username
            outcomes.add(result.outcome)
            self.stats.auth_failures += 1
            log.info(
                "auth failed", reason=result.reason, user=result.username, method=request.method
            )
        if outcomes & {AuthOutcome.BAD_CREDENTIALS, AuthOutcome.UNKNOWN_USER}:
            source = server.flow.remote[0]
            if self.admission.auth_failed(source, time.monotonic()):
                self.stats.bans += 1
                log.warning("source banned", source=source, seconds=self.config.limits.ban_seconds)
            server.refuse(403, "Forbidden")
            return None
        stale = bool(outcomes & {AuthOutcome.STALE, AuthOutcome.REPLAY})
        self.stats.auth_challenges += 1
        response = make_response(request, 407 if proxy else 401)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        for challenge in self.digest.challenge(now, stale=stale):
            response.headers.add(name, challenge)
        server.reject(response)
        return None

    def _password(self, username: str) -> str | None:
        subscriber = self.subscribers.get(username)
        return subscriber.password if subscriber is not None else None

    def _register(self, request: Request, server: ServerHandle, flow: Flow) -> None:
        username = self._authenticate(request, server, proxy=False)
        if username is None:
            return
        target = request.to.uri
        aor_user = target.user if isinstance(target, SipUri) else None
        if aor_user != username:
            server.reply(403, "Not Allowed To Register This Address")
            return
        self.stats.registrations += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._register_task, request, server, username, flow)

    async def _register_task(
        self, request: Request, server: ServerHandle, username: str, flow: Flow
    ) -> None:
        try:
            response = await self.registrar.register(request, username, flow)
        except Exception:
            # A fault (or a store error) fails this REGISTER only, never the gateway.
            log.exception("register failed", user=username)
            server.reply(500, "Server Internal Error")
            return
        server.respond(response)

    def _invite(self, request: Request, server: ServerHandle, flow: Flow) -> None:
        if self.draining:
            self.stats.refusals["draining"] += 1
            server.refuse(503, "Draining")
            return
        unsupported = unsupported_tags(request, SUPPORTED_EXTENSIONS)
        if unsupported:  # RFC 3261 8.2.2.3: what it requires, we cannot do
            server.reject(bad_extension(request, unsupported, to_tag=server.local_tag))
            return
        trunk = self._trunk_of(flow)
        if trunk is not None:  # carriers do not authenticate: their address is their name
            self._invite_from_trunk(request, server, trunk)
            return
        username = self._authenticate(request, server, proxy=True)
        if username is None:
            return
        # The caller's dialog is built only once the callee answers: an INVITE whose
        # Contact or Record-Route cannot carry one is refused now, before anyone rings.
        try:
            dialog = Dialog.as_uas(request, server.local_tag, "")  # its Contact comes with the 2xx
        except DialogError as exc:
            server.refuse(exc.status or 400, str(exc))
            return
        caller = self.subscribers[username]
        target = request.parsed_uri
        assert isinstance(target, SipUri | TelUri)
        masked = self._masked_number(target)
        if masked is not None:
            self._start_masked(request, server, dialog, caller, masked)
            return
        route = self.router.route(target, self.subscribers, self.numbers, self.registrar.bindings)
        # Emergency calls go through whatever the limits say (issue 4: never blocked).
        trunk_route = route if isinstance(route, TrunkRoute) else None
        limited = self.admission.admit(
            username,
            trunk_route.number if trunk_route else None,
            emergency=trunk_route is not None and trunk_route.emergency,
            active_calls=len(self.calls),
            now=time.monotonic(),
        )
        if limited is not None:
            self._refuse_by_limit(server, limited)
            return
        if isinstance(route, Refusal):
            self.stats.calls_refused += 1
            self.stats.refusals["route"] += 1
            server.refuse(route.status, route.reason)
            return
        media_host = self.config.media.advertised_host or self.config.media.host
        call = Call(self, server, caller, route, media_host, dialog)
        self.calls[call.id] = call
        self.admission.call_started(username)
        self.stats.calls_started += 1
        assert self._nursery is not None
        self._nursery.start_soon(call.run)

    # ---- masked numbers: a party of a binding dials its number ---------------------------

    def _masked_number(self, target: SipUri | TelUri) -> str | None:
        """The pool number dialled, when the target is one of a partner's masked numbers."""
        user = dialled(target)
        if not user:
            return None
        try:
            number = classify(user, self.router.plan).number
        except NumberError:
            return None
        return number if number in self.masked_pools else None

    def _start_masked(
        self,
        request: Request,
        server: ServerHandle,
        dialog: Dialog,
        caller: Subscriber | CarrierCaller,
        number: str,
    ) -> None:
        # The binding is in the store: look it up off the request path, in a task.
        assert self._nursery is not None
        self._nursery.start_soon(self._masked_task, request, server, dialog, caller, number)

    async def _masked_task(
        self,
        request: Request,
        server: ServerHandle,
        dialog: Dialog,
        caller: Subscriber | CarrierCaller,
        number: str,
    ) -> None:
        try:
            await self._masked_call(request, server, dialog, caller, number)
        except Exception:
            # A fault (or a store error) fails this INVITE only, never the gateway.
            log.exception("masked call failed", number=number)
            if not server.final_sent:
                server.reply(500, "Server Internal Error")

    async def _masked_call(
        self,
        request: Request,
        server: ServerHandle,
        dialog: Dialog,
        caller: Subscriber | CarrierCaller,
        number: str,
    ) -> None:
        """A dialling X reaches B showing X, and B reaches A; anyone else, or a number
        not bound now, gets 480 (the pool says nothing about who holds it)."""
        binding = await self.store.masked_binding(number, time.time())
        if server.cancelled:  # the CANCEL came during the lookup: nobody rings
            if not server.final_sent:
                server.reply(487, "Request Terminated")
            return
        ids = (
            {caller.number}
            if isinstance(caller, CarrierCaller)
            else {caller.username, *caller.numbers}
        )
        other = None
        if binding is not None:
            other = binding.b if binding.a in ids else binding.a if binding.b in ids else None
        if binding is None or other is None or server.final_sent:
            self.stats.refusals["masked-unbound"] += 1
            if not server.final_sent:
                server.refuse(480, "Temporarily Unavailable")
            return
        route = self.router.route_party(
            other, self.subscribers, self.numbers, self.registrar.bindings
        )
        account = (
            caller.username if isinstance(caller, Subscriber) else f"trunk:{caller.trunk.name}"
        )
        limited = self.admission.admit(
            account,
            route.number if isinstance(route, TrunkRoute) else None,
            emergency=False,
            active_calls=len(self.calls),
            now=time.monotonic(),
        )
        if limited is not None:
            self._refuse_by_limit(server, limited)
            return
        if isinstance(route, Refusal):
            self.stats.refusals["route"] += 1
            server.refuse(route.status, route.reason)
            return
        media_host = self.config.media.advertised_host or self.config.media.host
        call = Call(
            self,
            server,
            caller,
            route,
            media_host,
            dialog,
            masked=MaskedCall(binding.partner, number, self._bill_user(binding.partner, caller)),
        )
        self.calls[call.id] = call
        self.admission.call_started(call.account)
        self.stats.calls_started += 1
        assert self._nursery is not None
        self._nursery.start_soon(call.run)

    def _bill_user(self, partner: str, caller: Subscriber | CarrierCaller) -> tuple[Payer, ...]:
        """The calling user pays once the partner's budget is spent, when its policy says so."""
        policy = next((p for p in self.config.partners if p.name == partner), None)
        if policy is None or not policy.bill_user or not isinstance(caller, Subscriber):
            return ()
        return (Payer("subscriber", caller.username),)

    def _trunk_of(self, flow: Flow) -> TrunkConfig | None:
        """The trunk a request came from: its source in the trunk's ``networks``, or,
        without networks, exactly the trunk's host and port."""
        host, port = flow.remote[0], flow.remote[1]
        for trunk, networks in self._trunk_networks:
            if not networks:
                if (trunk.host, trunk.port) == (host, port):
                    return trunk
                continue
            address = _address(host)
            if address is not None and any(address in network for network in networks):
                return trunk
        return None

    def _invite_from_trunk(
        self, request: Request, server: ServerHandle, trunk: TrunkConfig
    ) -> None:
        """A carrier's call to one of our numbers (DID): to its owner (Router.route_inbound)."""
        try:
            dialog = Dialog.as_uas(request, server.local_tag, "")
        except DialogError as exc:
            server.refuse(exc.status or 400, str(exc))
            return
        target = request.parsed_uri
        assert isinstance(target, SipUri | TelUri)
        called = self._carrier_number(dialled(target), trunk) or ""
        if called in self.masked_pools:
            caller = CarrierCaller(trunk, self._calling_number(request, trunk), "")
            self._start_masked(request, server, dialog, caller, called)
            return
        route = self.router.route_inbound(called, self.numbers, self.registrar.bindings)
        if isinstance(route, Refusal):
            self.stats.calls_refused += 1
            self.stats.refusals["route"] += 1
            server.refuse(route.status, route.reason)
            return
        account = f"trunk:{trunk.name}"
        limited = self.admission.admit(
            account, None, emergency=False, active_calls=len(self.calls), now=time.monotonic()
        )
        if limited is not None:
            self._refuse_by_limit(server, limited)
            return
        owner = route.subscriber.username if isinstance(route, AppRoute) else route.fallback_for
        caller = CarrierCaller(trunk, self._calling_number(request, trunk), owner or "")
        media_host = self.config.media.advertised_host or self.config.media.host
        call = Call(self, server, caller, route, media_host, dialog)
        self.calls[call.id] = call
        self.admission.call_started(account)
        self.stats.calls_started += 1
        assert self._nursery is not None
        self._nursery.start_soon(call.run)

    def _calling_number(self, request: Request, trunk: TrunkConfig) -> str:
        """The caller a carrier names: its P-Asserted-Identity (a trunk is trusted, RFC 3325
        9), else From; E.164 when it reads as a number in the trunk's format."""
        try:
            asserted = asserted_identity(request)
        except IdentityError:
            asserted = None
        if asserted is not None and asserted.number is not None:
            return asserted.number
        uri = request.from_.uri
        user = dialled(uri) if isinstance(uri, SipUri | TelUri) else None
        return self._carrier_number(user, trunk) or user or "anonymous"

    def _carrier_number(self, user: str | None, trunk: TrunkConfig) -> str | None:
        """A number as the trunk writes it (its number_format), as E.164; None if not one."""
        if not user:
            return None
        try:
            return from_trunk_number(user, trunk.number_format, self.router.plan)
        except NumberError:
            return None

    def _refuse_by_limit(self, server: ServerHandle, refusal: LimitRefusal) -> None:
        if refusal.reason.is_rate:
            self.stats.calls_rate_limited += 1
        else:
            self.stats.calls_refused += 1
        self.stats.refusals[refusal.reason.value] += 1
        response = make_response(server.request, refusal.status, refusal.phrase)
        if refusal.retry_after is not None:
            response.headers.set("Retry-After", str(refusal.retry_after))
        server.reject(response)

    # ---- CallHost ----------------------------------------------------------------------

    def register_dialog(self, call_id: str, local_tag: str, call: Call, leg: str) -> None:
        self.dialogs[(call_id, local_tag)] = (call, leg)

    def seize_trunk(self, trunk: TrunkConfig, *, force: bool) -> str | None:
        monitor = self.trunk_monitor
        if not force and monitor is not None and not monitor.is_up(trunk.name):
            return "trunk-down"
        seized = self.channels.get(trunk.name, 0)
        if not force and trunk.max_channels and seized >= trunk.max_channels:
            return "trunk-full"
        self.channels[trunk.name] = seized + 1
        return None

    def open_credit(self, call: Call, route: TrunkRoute) -> Grant | Denied | None:
        if route.emergency or self.credit is None or not call.payers:
            return None  # emergency calls are free and never refused for money
        tariff = self.tariffs.for_call(call.record.route, route.number, route.trunk.name)
        if tariff is None:
            return None
        now = time.time()
        if call.id in self.credit:  # a failover: the last trunk's reservation goes back
            self.credit.close(call.id, 0, now)
        return self.credit.open_first(call.id, call.payers, tariff, now)

    def extend_credit(self, call: Call) -> Grant | None:
        if self.credit is None:
            return None
        return self.credit.extend(call.id, time.time())

    async def trunk_targets(self, trunk: TrunkConfig) -> list[Destination]:
        static = [Destination(trunk.transport, (trunk.host, trunk.port), role="carrier")]
        if self.resolver is None or trunk.name in self._literal_trunks:
            return static  # an IP address at a port: nothing to look up
        try:
            found = await self.resolver.targets_for(trunk)
        except DnsError as exc:
            log.warning("trunk not resolved", trunk=trunk.name, reason=str(exc))
            return []
        return [Destination(t.transport, (t.host, t.port), role="carrier") for t in found]

    def release_trunk(self, trunk: TrunkConfig) -> None:
        left = self.channels.get(trunk.name, 0) - 1
        if left > 0:
            self.channels[trunk.name] = left
        else:
            self.channels.pop(trunk.name, None)

    # ---- CallOriginator: calls the gateway places for partners --------------------------

    async def click_to_call(self, *, partner: str, a: str, b: str, on_state: StateListener) -> str:
        """Call A, then B, and bridge them (:class:`ClickToCall`); the call's id."""
        if self.draining:
            raise CallRefused(503, "Draining")
        a_route, b_route = self._party_route("a", a), self._party_route("b", b)
        account = f"partner:{partner}"
        numbers: list[str | None] = [
            r.number for r in (a_route, b_route) if isinstance(r, TrunkRoute)
        ]
        for number in numbers or [None]:  # every number dialled passes the blocked prefixes
            limited = self.admission.admit(
                account,
                number,
                emergency=False,
                active_calls=len(self.calls),
                now=time.monotonic(),
            )
            if limited is not None:
                self.stats.refusals[limited.reason.value] += 1
                raise CallRefused(limited.status, limited.phrase)
        call = ClickToCall(
            self,
            partner=partner,
            a_party=a,
            b_party=b,
            a_route=a_route,
            b_route=b_route,
            presented=self._presented(partner, a, b),
            media_host=self.config.media.advertised_host or self.config.media.host,
            on_state=on_state,
            bill_users=self._bill_users(partner, a_route),
        )
        self.calls[call.id] = call
        self.admission.call_started(account)
        self.stats.calls_started += 1
        assert self._nursery is not None
        self._nursery.start_soon(call.run)
        return call.id

    def _party_route(self, name: str, party: str) -> AppRoute | TrunkRoute:
        route = self.router.route_party(
            party, self.subscribers, self.numbers, self.registrar.bindings
        )
        if isinstance(route, Refusal):
            raise CallRefused(route.status, f"party {name}: {route.reason}")
        if isinstance(route, TrunkRoute) and route.emergency:
            raise CallRefused(403, f"party {name}: emergency numbers are not called this way")
        return route

    def _presented(self, partner: str, a: str, b: str) -> dict[str, str]:
        """The caller each party is shown: the partner's first masked number, so
        neither sees the other's; without a pool, each sees the other party."""
        pool = next((p.masked_pool for p in self.config.partners if p.name == partner), [])
        if pool:
            return {"a": pool[0], "b": pool[0]}
        return {"a": b, "b": a}

    def _bill_users(self, partner: str, a_route: AppRoute | TrunkRoute) -> tuple[Payer, ...]:
        """Who pays once the partner's budget is spent: A, when the partner's policy
        bills the user and A is a subscriber (by name, or by a number it owns)."""
        policy = next((p for p in self.config.partners if p.name == partner), None)
        if policy is None or not policy.bill_user:
            return ()
        owner = a_route.subscriber.username if isinstance(a_route, AppRoute) else None
        if owner is None and isinstance(a_route, TrunkRoute) and a_route.fallback_for:
            owner = a_route.fallback_for
        return (Payer("subscriber", owner),) if owner else ()

    def hangup(self, call_id: str) -> bool:
        """End a live call (any call: partner API, control socket); False if none."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        call.end("api-delete")
        return True

    def forget(self, call: Call) -> None:
        if self.calls.pop(call.id, None) is not None:
            self.admission.call_ended(call.account)
        for key in [(call.a.call_id, call.a.local_tag), (call.b.call_id, call.b.local_tag)]:
            self.dialogs.pop(key, None)

    async def record(self, call: Call) -> None:
        cdr, charge = call.record.cdr(), None
        if self.credit is not None:
            cdr, charge = self.credit.settle(cdr)
        log.info(
            "call ended",
            call=call.id,
            disposition=cdr.disposition,
            end_reason=cdr.end_reason,
            duration=cdr.duration,
        )
        for observe in self.call_observers:  # before any await: see metrics.CallOutcomes
            observe(call, cdr)
        await self.store.settle_call(cdr, charge)  # the CDR and its ledger row together
