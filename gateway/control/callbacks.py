"""Signed webhook deliveries to partners: click-to-call state changes pushed as JSON.

Each delivery is one HTTP POST of a JSON body to a partner's URL, with the headers

* ``X-Edgegw-Signature: sha256=<hex>``: HMAC-SHA256 (RFC 2104) of the exact body bytes
  keyed with the partner's callback secret, so the receiver can check who sent it and
  that nothing changed on the way;
* ``X-Edgegw-Timestamp``: when this attempt was sent (epoch seconds).

A delivery that fails with a connection error, a timeout or a 5xx status is retried with
exponential back-off (``RetryPolicy``), a bounded number of times; a 4xx (or a 3xx, which
is never followed) is the receiver's final word and ends it. Deliveries that share a key
(a call's id) go out one after the other in submission order, later ones waiting for the
earlier one's last attempt; different keys go out in parallel. ``submit`` never waits, so
a slow partner never holds up the call whose state it reports. Deliveries live in memory
only: what is queued when the gateway stops is not sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import httpx
import structlog
import trio

from gateway import __version__

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallbackSender",
    "CallbackStats",
    "Delivery",
    "RetryPolicy",
    "sign",
]

SIGNATURE_HEADER = "X-Edgegw-Signature"
TIMESTAMP_HEADER = "X-Edgegw-Timestamp"

log = structlog.get_logger("edgegw.callbacks")


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for `body`: "sha256=" and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the wait after the n-th failure is ``first_delay`` *
    2**(n-1), at most ``max_delay``; each try gives up after ``timeout`` seconds."""

    attempts: int = 6
    first_delay: float = 1.0
    max_delay: float = 16.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not (0 <= self.first_delay <= self.max_delay):
            raise ValueError(
                f"need 0 <= first_delay <= max_delay, got {self.first_delay}, {self.max_delay}"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout must be greater than 0, got {self.timeout}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed try (1 for the first)."""
        return float(min(self.first_delay * 2 ** (failures - 1), self.max_delay))


@dataclass(frozen=True)
class Delivery:
    """One body for one URL; deliveries with the same ``key`` keep their order."""

    key: str
    url: str
    secret: bytes
    body: bytes


class _Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass
class CallbackStats:
    delivered: int = 0  # answered 2xx
    retried: int = 0  # tries that failed and were tried again
    rejected: int = 0  # answered 3xx/4xx, or the URL cannot be used: not tried again
    abandoned: int = 0  # every try failed


class CallbackSender:
    """Delivers `Delivery`s while `run` runs (in the service's nursery)."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        max_parallel: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.stats = CallbackStats()
        self._clock = clock
        self._limiter = trio.CapacityLimiter(max_parallel)
        self._queues: dict[str, deque[Delivery]] = {}
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def queued(self) -> int:
        """Deliveries not finished yet (the one being tried included)."""
        return sum(len(queue) for queue in self._queues.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # No proxies from the environment and no redirects: a partner's callback goes
        # where the partner said, or nowhere.
        async with (
            httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                headers={"User-Agent": f"edgegw/{__version__}"},
            ) as client,
            trio.open_nursery() as nursery,
        ):
            self._client, self._nursery = client, nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._client = self._nursery = None

    def submit(self, delivery: Delivery) -> None:
        """Queue `delivery` behind earlier ones of its key; never blocks."""
        if self._nursery is None:
            raise RuntimeError("the callback sender is not running")
        queue = self._queues.get(delivery.key)
        if queue is not None:
            queue.append(delivery)
            return
        self._queues[delivery.key] = deque([delivery])
        self._nursery.start_soon(self._drain, delivery.key)

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                await self._deliver(queue[0])
                queue.popleft()
        finally:
            del self._queues[key]

    async def _deliver(self, delivery: Delivery) -> None:
        for attempt in range(1, self.policy.attempts + 1):
            outcome = await self._try(delivery)
            if outcome is _Outcome.DELIVERED:
                self.stats.delivered += 1
                return
            if outcome is _Outcome.REJECTED:
                self.stats.rejected += 1
                return
            if attempt < self.policy.attempts:
                self.stats.retried += 1
                await trio.sleep(self.policy.delay(attempt))
        self.stats.abandoned += 1
        log.warning("callback abandoned", key=delivery.key, url=delivery.url, attempts=attempt)

    async def _try(self, delivery: Delivery) -> _Outcome:
        assert self._client is not None  # deliveries run only inside `run`
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(delivery.secret, delivery.body),
            TIMESTAMP_HEADER: str(int(self._clock())),
        }
        try:
            async with self._limiter:
                response = await self._client.post(
                    delivery.url,
                    content=delivery.body,
                    headers=headers,
                    timeout=self.policy.timeout,
                )
        except httpx.TransportError as exc:
            # Connection refused or reset, DNS, timeouts: the receiver may be back later.
            # An unusable URL (no host, a scheme httpx cannot speak) is a TransportError
            # too, and no retry will mend it.
            if isinstance(exc, httpx.UnsupportedProtocol):
                log.warning("callback URL unusable", url=delivery.url, error=str(exc))
                return _Outcome.REJECTED
            log.info("callback try failed", url=delivery.url, error=repr(exc))
            return _Outcome.RETRY
        except httpx.InvalidURL as exc:
            log.warning("callback URL unusable", url=delivery.url, error=str(exc))
            return _Outcome.REJECTED
        if 200 <= response.status_code < 300:
            return _Outcome.DELIVERED
        if response.status_code >= 500:
            log.info("callback try failed", url=delivery.url, status=response.status_code)
            return _Outcome.RETRY
        log.warning("callback refused", url=delivery.url, status=response.status_code)
        return _Outcome.REJECTED
