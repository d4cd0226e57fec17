"""Carrier trunk health: SIP OPTIONS pings and the up/down state least-cost routing reads.

Every trunk with ``options_ping = true`` gets an OPTIONS request (RFC 3261 11) every
``options_interval`` seconds. Any final response counts as alive, 404, 405 and 501
included: the trunk's SIP stack answered, which is what a call needs. A timeout or a 503
(RFC 3261 21.5.4: the server is overloaded or in maintenance) is a failure;
``options_failures`` failures in a row mark the trunk down, and one answer marks it up
again. A trunk that was never pinged, or has no pings, counts as up.

``TrunkHealth`` is the sans-IO state of one trunk (results and the time in, state
changes out). ``TrunkMonitor`` is the Trio edge: it sends the pings through the
gateway's ``SipEndpoint``, measures their round trips, and offers ``is_up(name)`` to the
router, ``snapshot()`` to the status command and ``ping(name)`` for a ping on demand.

A ping waits at most ``ping_timeout`` for its answer, not for the transaction's own
Timer F (64*T1, 32 s by default, longer than a usual interval): the default is 10*T1
(enough for four UDP transmissions, at 0, T1, 3*T1 and 7*T1), never more than the
interval, so a dead trunk is noticed within one interval per failure.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from gateway.config import TrunkConfig
from gateway.sip.message import Headers, Request, Response, new_call_id, new_tag
from gateway.transport.dns import DnsError, Resolver, Target
from gateway.transport.endpoint import SipEndpoint, TransactionTimeout
from gateway.transport.flow import Destination, host_for_uri, hostport

__all__ = [
    "PingResult",
    "TrunkHealth",
    "TrunkMonitor",
    "TrunkState",
    "UnknownTrunkError",
    "options_request",
    "trunk_uri",
]

log = structlog.get_logger("edgegw.trunks")

USER_AGENT = "edgegw"
# Not "gateway" itself: a trunk that answers OPTIONS only for known users still answers.
PING_USER = "edgegw"


class TrunkState(enum.Enum):
    UNKNOWN = "unknown"  # not pinged yet: counts as up, calls may try it
    UP = "up"
    DOWN = "down"


class UnknownTrunkError(LookupError):
    """A trunk name that is not in the configuration."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no trunk named {name!r}")
        self.name = name


@dataclass(frozen=True, slots=True)
class PingResult:
    """How one OPTIONS went: the final status and round trip, or why there was none."""

    status: int | None = None
    rtt: float | None = None  # seconds from sending to the final response
    error: str | None = None  # "timeout", or a DNS failure
    target: Target | None = None

    @property
    def alive(self) -> bool:
        """A final response other than 503: the trunk's SIP stack is there."""
        return self.status is not None and self.status != 503

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 2),
            "error": self.error,
            "target": None if self.target is None else self.target.describe(),
        }


@dataclass
class TrunkHealth:
    """The health of one trunk from its ping results (sans-IO; `now` is epoch seconds)."""

    name: str
    failures_to_down: int
    state: TrunkState = TrunkState.UNKNOWN
    failures: int = 0  # consecutive
    last_status: int | None = None
    last_rtt: float | None = None
    last_error: str | None = None
    last_ping_at: float | None = None
    changed_at: float | None = None
    pings: int = 0

    def __post_init__(self) -> None:
        if self.failures_to_down < 1:
            raise ValueError(f"failures_to_down must be at least 1, got {self.failures_to_down}")

    @property
    def is_up(self) -> bool:
        return self.state is not TrunkState.DOWN

    def record(self, result: PingResult, now: float) -> TrunkState | None:
        """Take one ping's result; the new state when it changed, else None."""
        self.pings += 1
        self.last_ping_at = now
        self.last_status = result.status
        if result.rtt is not None:
            self.last_rtt = result.rtt
        self.last_error = result.error if result.status is None else None
        if result.alive:
            self.failures = 0
            return self._become(TrunkState.UP, now)
        self.failures += 1
        if self.failures >= self.failures_to_down:
            return self._become(TrunkState.DOWN, now)
        return None

    def _become(self, state: TrunkState, now: float) -> TrunkState | None:
        if state is self.state:
            return None
        self.state = state
        self.changed_at = now
        return state

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "monitored": True,
            "state": self.state.value,
            "up": self.is_up,
            "failures": self.failures,
            "last_status": self.last_status,
            "last_rtt_ms": None if self.last_rtt is None else round(self.last_rtt * 1000, 2),
            "last_error": self.last_error,
            "last_ping_at": self.last_ping_at,
            "changed_at": self.changed_at,
            "pings": self.pings,
        }


def trunk_uri(trunk: TrunkConfig, user: str | None = None, *, with_port: bool = True) -> str:
    """A SIP URI naming the trunk: its domain alone when found by RFC 3263 (the lookups
    choose port and transport), else host, port and a non-UDP transport."""
    userinfo = f"{user}@" if user else ""
    host = host_for_uri(trunk.host)
    if trunk.resolve == "rfc3263" or not with_port:
        return f"sip:{userinfo}{host}"
    suffix = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
    return f"sip:{userinfo}{host}:{trunk.port}{suffix}"


def options_request(trunk: TrunkConfig, local: str, contact: str, seq: int = 1) -> Request:
    """An out-of-dialog OPTIONS to `trunk` (RFC 3261 11.1); the endpoint adds the Via.

    `local` is our host:port as the trunk sees it, `contact` our Contact URI.
    """
    uri = trunk_uri(trunk)
    headers = Headers()
    headers.add("Max-Forwards", "70")
    headers.add("From", f"<sip:{PING_USER}@{local}>;tag={new_tag()}")
    headers.add("To", f"<{uri}>")
    headers.add("Call-ID", new_call_id())
    headers.add("CSeq", f"{seq} OPTIONS")
    headers.add("Contact", f"<{contact}>")
    headers.add("Accept", "application/sdp")
    headers.add("User-Agent", USER_AGENT)
    return Request("OPTIONS", uri, headers)


class TrunkMonitor:
    """Pings the trunks that ask for it and tells the router which ones are up."""

    def __init__(
        self,
        trunks: Sequence[TrunkConfig],
        endpoint: SipEndpoint,
        resolver: Resolver,
        *,
        ping_timeout: float | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.trunks = {trunk.name: trunk for trunk in trunks}
        self.endpoint = endpoint
        self.resolver = resolver
        self._ping_timeout = ping_timeout
        self._clock = clock
        self._wall = wall_clock
        self._seq = 0
        self.health = {
            trunk.name: TrunkHealth(trunk.name, trunk.options_failures)
            for trunk in trunks
            if trunk.options_ping
        }

    def is_up(self, name: str) -> bool:
        """False only for a pinged trunk that failed `options_failures` pings in a row."""
        health = self.health.get(name)
        return health is None or health.is_up

    def snapshot(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name in self.trunks:
            health = self.health.get(name)
            if health is not None:
                rows.append(health.snapshot())
            else:
                rows.append({"name": name, "monitored": False, "state": "up", "up": True})
        return rows

    def ping_timeout(self, trunk: TrunkConfig) -> float:
        if self._ping_timeout is not None:
            return min(self._ping_timeout, trunk.options_interval)
        return min(10 * self.endpoint.timers.t1, trunk.options_interval)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping every monitored trunk until cancelled."""
        async with trio.open_nursery() as nursery:
            for name in self.health:
                nursery.start_soon(self._watch, self.trunks[name])
            task_status.started()

    async def ping(self, name: str) -> PingResult:
        """One OPTIONS to trunk `name` now; a monitored trunk's state takes the result."""
        trunk = self.trunks.get(name)
        if trunk is None:
            raise UnknownTrunkError(name)
        result = await self._ping(trunk)
        health = self.health.get(name)
        if health is not None:
            self._record(health, result)
        return result

    async def _watch(self, trunk: TrunkConfig) -> None:
        health = self.health[trunk.name]
        while True:
            started = self._clock()
            try:
                result = await self._ping(trunk)
            except Exception as exc:
                # A fault pinging one trunk (say, no listener of its transport) is that
                # trunk's failure, never the gateway's.
                log.exception("trunk ping failed", trunk=trunk.name)
                result = PingResult(error=f"internal error: {exc}")
            self._record(health, result)
            await trio.sleep_until(started + trunk.options_interval)

    def _record(self, health: TrunkHealth, result: PingResult) -> None:
        changed = health.record(result, self._wall())
        if changed is TrunkState.DOWN:
            log.warning(
                "trunk down",
                trunk=health.name,
                failures=health.failures,
                status=result.status,
                error=result.error,
            )
        elif changed is TrunkState.UP:
            log.info("trunk up", trunk=health.name, status=result.status, rtt=result.rtt)

    async def _ping(self, trunk: TrunkConfig) -> PingResult:
        try:
            targets = await self.resolver.targets_for(trunk)
        except DnsError as exc:
            return PingResult(error=f"dns: {exc}")
        target = targets[0]
        self._seq += 1
        local = self.endpoint.local_address(target.transport, target.host, role="carrier")
        contact = self.endpoint.contact_uri(target.transport, target.host, role="carrier")
        request = options_request(trunk, hostport(local), contact, self._seq)
        destination = Destination(target.transport, (target.host, target.port), role="carrier")
        sent = self._clock()
        handle = self.endpoint.send_request(request, destination)
        try:
            with trio.move_on_after(self.ping_timeout(trunk)):
                async for event in handle:
                    if isinstance(event, TransactionTimeout):
                        break
                    if event.status >= 200:
                        return _answered(event, self._clock() - sent, target)
        finally:
            # The transaction runs on to Timer F in the endpoint; what it still delivers
            # after this is dropped there.
            handle.events.close()
        return PingResult(error="timeout", target=target)


def _answered(response: Response, rtt: float, target: Target) -> PingResult:
    return PingResult(status=response.status, rtt=rtt, target=target)
