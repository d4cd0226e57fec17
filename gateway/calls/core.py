"""The gateway's SIP core: what each incoming request becomes (RFC 3261 8.2, 10.3, 12.2.2).

New requests are screened (Max-Forwards, supported methods, credentials for
anything that costs money) and become a registration, an OPTIONS answer or a
call; requests inside a dialog go to the call that owns the dialog. Calls run
in the core's nursery, each in a nursery of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from gateway.calls.b2bua import ALLOW, Call
from gateway.calls.limits import RateLimiter
from gateway.calls.registrar import Registrar
from gateway.calls.router import Refusal, Router, TrunkRoute
from gateway.config import Config, TrunkConfig
from gateway.media.relay import PortAllocator
from gateway.sip.auth import AuthOutcome, DigestServer
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.uri import SipUri, TelUri, UriError
from gateway.store.base import Store
from gateway.store.model import Subscriber
from gateway.transport.endpoint import ServerHandle, SipEndpoint
from gateway.transport.flow import Flow

log = structlog.get_logger("edgegw.core")

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


class CallCore:
    """RequestHandler for the SIP endpoint and CallHost for the calls."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registrar: Registrar,
        digest: DigestServer,
        allocator: PortAllocator,
        alternate_allocator: PortAllocator | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.registrar = registrar
        self.digest = digest
        self.allocator = allocator
        self.alternate_allocator = alternate_allocator
        self.router = Router(config)
        self.attempts = RateLimiter(config.limits.cps_per_account)
        self.endpoint: SipEndpoint = None  # type: ignore[assignment]  # set by the service
        self.subscribers: dict[str, Subscriber] = {}
        self.numbers: dict[str, Subscriber] = {}
        self.calls: dict[str, Call] = {}
        self.dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        self.stats = CoreStats()
        # Calls holding each trunk (least-cost routing skips a trunk at max_channels).
        self.channels: dict[str, int] = {}
        # Trunk health (OPTIONS pings): set by the service when trunks are pinged.
        self.trunk_monitor: TrunkHealthView | None = None
        self.draining = False
        self._nursery: trio.Nursery | None = None

    def set_subscribers(self, subscribers: list[Subscriber]) -> None:
        self.subscribers = {s.username: s for s in subscribers}
        self.numbers = {n: s for s in subscribers for n in s.numbers}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- RequestHandler -----------------------------------------------------------------

    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        to_tag = request.to.tag
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
        response.headers.set("Supported", "timer, outbound, path")
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
            server.refuse(503, "Draining")
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
        route = self.router.route(target, self.subscribers, self.numbers, self.registrar.bindings)
        # Emergency calls go through whatever the limits say (issue 4: never blocked).
        emergency = isinstance(route, TrunkRoute) and route.emergency
        if not emergency and not self.attempts.allow(username, time.monotonic()):
            self.stats.calls_rate_limited += 1
            response = make_response(request, 503, "Call Rate Limit Exceeded")
            response.headers.set("Retry-After", "1")
            server.reject(response)
            return
        if not emergency and len(self.calls) >= self.config.limits.max_calls:
            self.stats.calls_refused += 1
            server.refuse(503, "Too Many Calls")
            return
        if isinstance(route, Refusal):
            self.stats.calls_refused += 1
            server.refuse(route.status, route.reason)
            return
        media_host = self.config.media.advertised_host or self.config.media.host
        call = Call(self, server, caller, route, media_host, dialog)
        self.calls[call.id] = call
        self.stats.calls_started += 1
        assert self._nursery is not None
        self._nursery.start_soon(call.run)

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

    def release_trunk(self, trunk: TrunkConfig) -> None:
        left = self.channels.get(trunk.name, 0) - 1
        if left > 0:
            self.channels[trunk.name] = left
        else:
            self.channels.pop(trunk.name, None)

    def forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for key in [(call.a.call_id, call.a.local_tag), (call.b.call_id, call.b.local_tag)]:
            self.dialogs.pop(key, None)

    async def record(self, call: Call) -> None:
        cdr = call.record.cdr()
        log.info(
            "call ended",
            call=call.id,
            disposition=cdr.disposition,
            end_reason=cdr.end_reason,
            duration=cdr.duration,
        )
        await self.store.write_cdr(cdr)
