"""Outbound registration of the gateway to carrier trunks that want it (RFC 3261 10.2).

For each trunk with ``register = true`` the gateway REGISTERs the address of record
``sip:USERNAME@HOST`` with its own Contact for the trunk's transport, asking for
``register_expires`` seconds:

* 401/407 are answered with digest credentials (``gateway.sip.digest_client``): once per
  nonce, and a second challenge without ``stale=true`` after fresh credentials is a
  refusal, so a wrong password costs two REGISTERs, not a loop;
* 423 Interval Too Brief is retried at once with the registrar's Min-Expires (10.2.8);
* 2xx: the expiry granted to our Contact (its ``expires`` parameter, else the Expires
  header, 10.2.4) is refreshed at half its time, on the same Call-ID with a higher CSeq
  (10.2.4) and the nonce last answered (RFC 7616 3.4.5: nc counts up);
* any other failure, a timeout or refused credentials: retried after a back-off that
  doubles up to a cap, or after Retry-After when the registrar gives one (21.5.4);
* on shutdown the binding is removed with Expires: 0 (10.2.2), and so is the binding of a
  trunk a config reload removes or whose registration settings it changes; the changed one
  then registers anew, after the removal (10.3 step 7 would otherwise let the Expires: 0
  remove the new binding too).

``TrunkRegistration`` is the sans-IO state machine (responses and the time in, requests
and deadlines out). ``TrunkRegistrations`` is the Trio driver: one task per trunk sending
through the gateway's ``SipEndpoint`` to the trunk's targets (RFC 3263 lookups through
``gateway.transport.dns``), moving to the next target after a failure.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from gateway.calls.trunk_health import USER_AGENT, trunk_uri
from gateway.config import TrunkConfig
from gateway.sip.digest_client import DigestClient, DigestRejected
from gateway.sip.headers import HeaderError, parse_name_addr_list
from gateway.sip.message import Headers, Request, Response, new_call_id, new_tag
from gateway.sip.uri import UriError, parse_uri
from gateway.transport.dns import DnsError, Resolver, Target
from gateway.transport.endpoint import SipEndpoint, TransactionTimeout
from gateway.transport.flow import Destination

__all__ = [
    "REGISTRATION_FIELDS",
    "RegistrationState",
    "RetryPolicy",
    "TrunkRegistration",
    "TrunkRegistrations",
    "registration_for",
    "registration_settings",
]

log = structlog.get_logger("edgegw.trunks")

# A Min-Expires above this is refused rather than followed (a day, as many registrars cap).
MAX_MIN_EXPIRES = 86400


class RegistrationState(enum.Enum):
    IDLE = "idle"  # nothing sent yet
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"  # waiting to retry
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"  # stopped: nothing more is sent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Seconds before the n-th retry in a row: `first`, doubling up to `cap`."""

    first: float = 30.0
    factor: float = 2.0
    cap: float = 1800.0

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.factor >= 1 and self.cap >= self.first):
            raise ValueError(f"retry policy needs first > 0, factor >= 1, cap >= first: {self}")

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * self.factor ** max(0, failures - 1)))


class TrunkRegistration:
    """The registration of one account at one registrar (sans-IO; `now` is monotonic)."""

    def __init__(
        self,
        *,
        name: str,
        registrar_uri: str,
        aor: str,
        username: str,
        password: str,
        expires: int,
        retry: RetryPolicy = RetryPolicy(),
        cnonce: Callable[[], str] | None = None,
    ) -> None:
        if expires < 1:
            raise ValueError(f"{name}: register_expires must be at least 1, got {expires}")
        self.name = name
        self.registrar_uri = registrar_uri
        self.aor = aor
        self.expires = expires
        self.retry = retry
        self.digest = (
            DigestClient(username, password)
            if cnonce is None
            else DigestClient(username, password, cnonce=cnonce)
        )
        self.call_id = new_call_id()
        self.from_tag = new_tag()
        self.cseq = 0
        self.state = RegistrationState.IDLE
        self.failures = 0  # in a row
        self.granted: int | None = None
        self.expires_at: float | None = None
        self.due_at: float | None = 0.0  # when the next REGISTER goes out
        self.last_status: int | None = None
        self.last_reason: str | None = None
        self.outstanding: Request | None = None
        self.contact: str | None = None  # of the request in flight, or the one registered

    # ---- inputs ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `poll` has something to send; None while waiting for a response or stopped."""
        if self.outstanding is not None:
            return None
        return self.due_at

    def poll(self, now: float, contact: str) -> Request | None:
        """The REGISTER to send now, if one is due, with `contact` as our Contact URI."""
        if self.outstanding is not None or self.due_at is None or now < self.due_at:
            return None
        if self.state is not RegistrationState.REGISTERED:
            self.state = RegistrationState.REGISTERING
        self.due_at = None
        self.contact = contact
        return self._send(self._register(self.expires, fresh_credentials=None))

    def on_response(self, response: Response, now: float) -> Request | None:
        """Take the final response to the request in flight; a follow-up to send at once."""
        if response.status < 200 or self.outstanding is None:
            return None
        request, self.outstanding = self.outstanding, None
        self.last_status = response.status
        self.last_reason = response.reason
        if response.status in (401, 407):
            return self._challenged(request, response, now)
        if self.state is RegistrationState.UNREGISTERING:
            self._unregistered(response)
            return None
        if 200 <= response.status < 300:
            self._registered(response, now)
            return None
        if response.status == 423:
            return self._too_brief(response, now)
        self._fail(f"{response.status} {response.reason}", now, _retry_after(response))
        return None

    def on_failure(self, reason: str, now: float) -> None:
        """The request in flight got no response (a timeout, no address for the trunk)."""
        self.outstanding = None
        self.last_status = None
        self.last_reason = reason
        if self.state is RegistrationState.UNREGISTERED:
            return  # stopped: nothing is retried
        if self.state is RegistrationState.UNREGISTERING:
            self.state = RegistrationState.UNREGISTERED
            return
        self._fail(reason, now, None)

    def stop(self, now: float) -> Request | None:
        """Stop for good; the REGISTER with Expires: 0 to send when a binding may exist."""
        self.due_at = None
        self.outstanding = None
        bound = self.expires_at is not None and self.expires_at > now
        if not bound or self.contact is None:
            self.state = RegistrationState.UNREGISTERED
            return None
        self.state = RegistrationState.UNREGISTERING
        return self._send(self._register(0, fresh_credentials=None))

    # ---- outcomes ----------------------------------------------------------------------

    def _registered(self, response: Response, now: float) -> None:
        granted = self._granted(response)
        if granted <= 0:
            self._fail("the registrar kept no binding for our Contact", now, None)
            return
        self.state = RegistrationState.REGISTERED
        self.failures = 0
        self.granted = granted
        self.expires_at = now + granted
        self.due_at = now + granted / 2
        log.info("trunk registered", trunk=self.name, expires=granted)

    def _unregistered(self, response: Response) -> None:
        self.state = RegistrationState.UNREGISTERED
        if 200 <= response.status < 300:
            self.expires_at = None
            self.granted = None

    def _challenged(self, request: Request, response: Response, now: float) -> Request | None:
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        try:
            credentials = self.digest.answer(
                response.status, response.headers.get_all(name), "REGISTER", self.registrar_uri
            )
        except DigestRejected as exc:
            if self.state is RegistrationState.UNREGISTERING:
                self.state = RegistrationState.UNREGISTERED
                return None
            self._fail(str(exc), now, None)
            return None
        expires = int(request.headers.get("Expires") or self.expires)
        return self._send(self._register(expires, fresh_credentials=credentials))

    def _too_brief(self, response: Response, now: float) -> Request | None:
        raw = (response.headers.get("Min-Expires") or "").strip()
        if not raw.isdigit() or not self.expires < int(raw) <= MAX_MIN_EXPIRES:
            self._fail(f"423 with unusable Min-Expires {raw!r}", now, None)
            return None
        self.expires = int(raw)
        return self._send(self._register(self.expires, fresh_credentials=None))

    def _fail(self, reason: str, now: float, retry_after: float | None) -> None:
        self.failures += 1
        self.state = RegistrationState.FAILED
        self.last_reason = reason
        delay = retry_after if retry_after is not None else self.retry.delay(self.failures)
        self.due_at = now + delay
        log.warning(
            "trunk registration failed", trunk=self.name, reason=reason, retry_in=round(delay, 1)
        )

    def _granted(self, response: Response) -> int:
        """Our Contact's expiry in a 2xx (RFC 3261 10.2.4); the Expires header, else ours."""
        ours = _normalized(self.contact or "")
        for value in response.headers.get_all("Contact"):
            try:
                entries = parse_name_addr_list(value)
            except (HeaderError, UriError):
                continue
            for entry in entries:
                if str(entry.uri) == ours:
                    raw = entry.params.get("expires")
                    if raw is not None and raw.strip().isdigit():
                        return int(raw)
        header = (response.headers.get("Expires") or "").strip()
        return int(header) if header.isdigit() else self.expires

    # ---- requests ----------------------------------------------------------------------

    def _send(self, request: Request) -> Request:
        self.outstanding = request
        return request

    def _register(self, expires: int, fresh_credentials: tuple[str, str] | None) -> Request:
        self.cseq += 1
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{self.aor}>;tag={self.from_tag}")
        headers.add("To", f"<{self.aor}>")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.cseq} REGISTER")
        headers.add("Contact", f"<{self.contact}>")
        headers.add("Expires", str(expires))
        headers.add("User-Agent", USER_AGENT)
        credentials = fresh_credentials or self.digest.preemptive("REGISTER", self.registrar_uri)
        if credentials is not None:
            headers.add(*credentials)
        return Request("REGISTER", self.registrar_uri, headers)

    # ---- status ------------------------------------------------------------------------

    def snapshot(self, now: float, wall_now: float) -> dict[str, Any]:
        """The state for `edgegw status`; times as epoch seconds."""

        def wall(at: float | None) -> float | None:
            return None if at is None else round(wall_now + (at - now), 3)

        return {
            "name": self.name,
            "aor": self.aor,
            "state": self.state.value,
            "registered": self.state is RegistrationState.REGISTERED,
            "expires": self.granted,
            "expires_at": wall(self.expires_at),
            "next_register_at": wall(self.next_deadline()),
            "failures": self.failures,
            "last_status": self.last_status,
            "last_reason": self.last_reason,
        }


def _normalized(uri: str) -> str:
    try:
        return str(parse_uri(uri))
    except UriError:
        return uri


def _retry_after(response: Response) -> float | None:
    """Retry-After seconds of a 5xx/6xx (RFC 3261 20.33), ignoring comment and params."""
    raw = response.headers.get("Retry-After")
    if raw is None or response.status < 500:
        return None
    value = raw.split(";", 1)[0].split("(", 1)[0].strip()
    return float(value) if value.isdigit() and int(value) > 0 else None


def registration_for(trunk: TrunkConfig, retry: RetryPolicy) -> TrunkRegistration:
    """The state machine for a trunk's `register`, `username`, `password` and expiry."""
    return TrunkRegistration(
        name=trunk.name,
        registrar_uri=trunk_uri(trunk),
        aor=trunk_uri(trunk, trunk.username, with_port=False),
        username=trunk.username,
        password=trunk.password,
        expires=trunk.register_expires,
        retry=retry,
    )


# What a registration is made of: a trunk that changes any of these (or turns `register`
# off) is de-registered and, if still registering, registered anew. `host`, `port`,
# `transport` and `resolve` name the registrar: a change there is a new registrar.
REGISTRATION_FIELDS = (
    "register",
    "username",
    "password",
    "register_expires",
    "host",
    "port",
    "transport",
    "resolve",
)


def registration_settings(trunk: TrunkConfig) -> tuple[object, ...]:
    """The values of `trunk` that its registration is made of (REGISTRATION_FIELDS)."""
    return tuple(getattr(trunk, name) for name in REGISTRATION_FIELDS)


@dataclass(eq=False)
class _Account:
    """One trunk's registration and the task driving it."""

    trunk: TrunkConfig
    registration: TrunkRegistration
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    target: Target | None = None  # where it last went
    stopped: bool = False  # by a reload or shutdown: only the Expires: 0 is sent


class TrunkRegistrations:
    """Keeps the gateway registered at every trunk with ``register = true``.

    `update` (a config reload) changes the set while running: registrations whose settings
    did not change go on untouched, the others are de-registered and started anew.
    """

    def __init__(
        self,
        trunks: Sequence[TrunkConfig],
        endpoint: SipEndpoint,
        resolver: Resolver,
        *,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        stop_timeout: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        self.resolver = resolver
        self.retry = retry
        self.stop_timeout = stop_timeout
        self._clock = clock
        self._wall = wall_clock
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._accounts: dict[str, _Account] = {}
        self.update(trunks)

    @property
    def trunks(self) -> dict[str, TrunkConfig]:
        return {name: account.trunk for name, account in self._accounts.items()}

    @property
    def registrations(self) -> dict[str, TrunkRegistration]:
        return {name: account.registration for name, account in self._accounts.items()}

    def snapshot(self) -> list[dict[str, Any]]:
        now, wall = self._clock(), self._wall()
        rows = []
        for account in self._accounts.values():
            row = account.registration.snapshot(now, wall)
            target = account.target
            row["registrar"] = None if target is None else target.describe()
            rows.append(row)
        return rows

    def update(self, trunks: Sequence[TrunkConfig]) -> None:
        """Take a new trunk list (a reload): synchronous, so it fits the reload's swap.

        New registering trunks start at once; removed ones, and ones whose registration
        settings changed, send Expires: 0 to where they registered (in the background, at
        most `stop_timeout`) and the changed ones then register with the new settings.
        """
        wanted = {trunk.name: trunk for trunk in trunks if trunk.register}
        nursery = self._nursery
        if nursery is None:  # not running: nothing sent yet, nothing to remove
            self._accounts = {name: self._account(trunk) for name, trunk in wanted.items()}
            return
        accounts: dict[str, _Account] = {}
        for name, trunk in wanted.items():
            current = self._accounts.get(name)
            if current is not None and registration_settings(current.trunk) == (
                registration_settings(trunk)
            ):
                current.trunk = trunk  # other settings (codecs ...) do not touch it
                accounts[name] = current
                continue
            fresh = accounts[name] = self._account(trunk)
            request = None if current is None else self._retire(current)
            nursery.start_soon(self._run_account, fresh, current, request)
        for name, current in self._accounts.items():
            if name not in wanted:
                request = self._retire(current)
                if request is not None:
                    nursery.start_soon(self._deregister, current, request)
        self._accounts = accounts

    def _account(self, trunk: TrunkConfig) -> _Account:
        return _Account(trunk, registration_for(trunk, self.retry))

    def _retire(self, account: _Account) -> Request | None:
        """Stop `account`'s task; its Expires: 0 to send, if a binding may exist."""
        account.stopped = True
        account.scope.cancel()
        log.info("trunk registration stopped by a reload", trunk=account.trunk.name)
        return account.registration.stop(self._clock())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register and keep registered until `shutdown` (or cancellation)."""
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for account in self._accounts.values():
                        nursery.start_soon(self._run_account, account, None, None)
                    task_status.started()
                    await trio.sleep_forever()  # open for the trunks a reload adds
            finally:
                self._nursery = None

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop refreshing and remove every binding (Expires: 0), waiting at most `timeout`
        (default `stop_timeout`)."""
        self._scope.cancel()
        with trio.move_on_after(self.stop_timeout if timeout is None else timeout):
            async with trio.open_nursery() as nursery:
                for account in self._accounts.values():
                    account.stopped = True
                    request = account.registration.stop(self._clock())
                    if request is not None:
                        nursery.start_soon(self._exchange, account, request, True)

    async def _run_account(
        self, account: _Account, previous: _Account | None, request: Request | None
    ) -> None:
        """Drive `account`, once `previous` (the same trunk before a reload) is removed: a
        registrar would take its Expires: 0 as removing the new binding too (RFC 3261
        10.3 step 7: same Contact, other Call-ID)."""
        if previous is not None and request is not None:
            await self._deregister(previous, request)
        with account.scope:
            await self._drive(account)

    async def _deregister(self, account: _Account, request: Request) -> None:
        with trio.move_on_after(self.stop_timeout):
            await self._exchange(account, request, True)

    async def _drive(self, account: _Account) -> None:
        registration = account.registration
        while True:
            deadline = registration.next_deadline()
            if deadline is None:
                return  # stopped
            await trio.sleep_until(deadline)
            try:
                await self._attempt(account)
            except Exception as exc:
                # A fault in one registration is that trunk's failure, never the gateway's.
                log.exception("trunk registration fault", trunk=account.trunk.name)
                registration.on_failure(f"internal error: {exc}", self._clock())

    async def _attempt(self, account: _Account) -> None:
        target = await self._target(account)
        if target is None or account.stopped:
            return
        request = account.registration.poll(self._clock(), self._contact(target))
        if request is not None:
            await self._exchange(account, request, False)

    async def _exchange(self, account: _Account, request: Request | None, final: bool) -> None:
        """Send `request` and its follow-ups (credentials, Min-Expires) to the trunk;
        `final` for the Expires: 0 of a stopped registration."""
        registration = account.registration
        target = account.target
        assert target is not None  # set by _target before anything is sent
        while request is not None:
            outcome = await self._transact(request, target)
            if account.stopped and not final:
                return  # stopped meanwhile: the Expires: 0 owns the state now
            if isinstance(outcome, Response):
                request = registration.on_response(outcome, self._clock())
            else:
                registration.on_failure(outcome, self._clock())
                request = None

    async def _target(self, account: _Account) -> Target | None:
        """The target to register at: the last one while it works, else the next in DNS."""
        registration = account.registration
        try:
            targets = await self.resolver.targets_for(account.trunk)
        except DnsError as exc:
            registration.on_failure(f"dns: {exc}", self._clock())
            return None
        last = account.target
        if last in targets and registration.failures == 0:
            return last
        target = targets[registration.failures % len(targets)]
        account.target = target
        return target

    def _contact(self, target: Target) -> str:
        return self.endpoint.contact_uri(target.transport, target.host, role="carrier")

    async def _transact(self, request: Request, target: Target) -> Response | str:
        destination = Destination(target.transport, (target.host, target.port), role="carrier")
        handle = self.endpoint.send_request(request, destination)
        try:
            async for event in handle:
                if isinstance(event, TransactionTimeout):
                    return "timeout"
                if event.status >= 200:
                    return event
        finally:
            handle.events.close()
        return "no final response"
