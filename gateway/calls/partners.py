"""Partner platforms: click-to-call, masked-number bindings, subsidy budgets and their CDRs.

`PartnerService` is what the partner HTTP API (``gateway.control.http``) calls, once it
knows which partner is asking. It

* reads the parties a partner names: E.164 or national numbers of the configured
  country (``gateway.calls.numbers``) or subscriber usernames; emergency short codes are
  refused (they are free and never blocked, so no automated platform may dial them);
* refuses new calls and bindings while the partner's budget account is spent (<= 0),
  unless the partner's policy bills the user instead;
* places click-to-call calls through a `CallOriginator` and keeps a record of each:
  its state as the originator reports it, polled by the API and pushed to the partner's
  callback URL through a `CallbackSender`; a finished record is kept for
  ``http.call_retention`` seconds and then forgotten (its CDR stays in the store);
* binds masked numbers from the partner's pool through the store.

A refused request changes nothing: every check runs before the call is placed or the
number bound, and a record or callback exists only for a call the originator accepted.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import msgspec
import structlog
import trio

from gateway.calls.numbers import PLANS, DialledKind, NumberError, classify
from gateway.calls.origination import CallOriginator, CallRefused, ClickToCallState
from gateway.config import Config, PartnerConfig
from gateway.control.callbacks import CallbackSender, Delivery, RetryPolicy
from gateway.store.base import PoolExhausted, Store
from gateway.store.model import Cdr, MaskedBinding

__all__ = [
    "BudgetSpent",
    "CallEvent",
    "CallView",
    "ClickToCall",
    "InvalidField",
    "NoNumberFree",
    "NotFound",
    "PartnerError",
    "PartnerService",
    "PartnerStats",
    "Refused",
]

log = structlog.get_logger("edgegw.partners")

MAX_PARTY_LENGTH = 64
CDR_LIMIT_MAX = 1000


class PartnerError(Exception):
    """A partner request refused; ``status`` is the HTTP status the API answers with,
    ``code`` a short machine-readable word, ``field`` the request field at fault."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidField(PartnerError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


class NotFound(PartnerError):
    status = 404
    code = "not-found"


class BudgetSpent(PartnerError):
    status = 402
    code = "budget-spent"


class NoNumberFree(PartnerError):
    # 409, not 503: the partner's own pool is fully bound. Nothing is wrong with the
    # gateway and retrying soon will not help; the partner frees a number (DELETE a
    # binding) or waits for one to expire, and a 503 would invite blind retries.
    status = 409
    code = "pool-exhausted"


class Refused(PartnerError):
    """The originator refused the call (its `CallRefused` status and reason)."""

    code = "refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CallView(msgspec.Struct, frozen=True, kw_only=True):
    """A click-to-call as the API shows it."""

    id: str
    state: str
    cause: str | None
    from_: str = msgspec.field(name="from")
    to: str
    callback_url: str | None
    created_at: float
    updated_at: float
    ended_at: float | None


class CallEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a state-change callback; ``sequence`` counts 1, 2, ... per call, so a
    receiver can order and de-duplicate (a retried delivery may arrive twice)."""

    event: str
    id: str
    sequence: int
    state: str
    cause: str | None
    from_: str = msgspec.field(name="from")
    to: str
    at: float


@dataclass
class ClickToCall:
    """One click-to-call: the parties as placed (E.164 or usernames) and where it is."""

    partner: PartnerConfig
    a: str
    b: str
    callback_url: str | None
    created_at: float
    updated_at: float
    id: str = ""
    state: ClickToCallState = ClickToCallState.CREATED
    cause: str | None = None
    ended_at: float | None = None
    sequence: int = 0
    ended: trio.Event = field(default_factory=trio.Event)
    # Changes reported before the originator returned the id, sent once it is known.
    unsent: list[CallEvent] = field(default_factory=list)

    def view(self) -> CallView:
        return CallView(
            id=self.id,
            state=self.state.value,
            cause=self.cause,
            from_=self.a,
            to=self.b,
            callback_url=self.callback_url,
            created_at=self.created_at,
            updated_at=self.updated_at,
            ended_at=self.ended_at,
        )


@dataclass
class PartnerStats:
    calls_started: int = 0
    calls_refused: dict[int, int] = field(default_factory=dict)  # by status
    bindings_created: int = 0
    bindings_refused: dict[int, int] = field(default_factory=dict)


def _count(counts: dict[int, int], status: int) -> None:
    counts[status] = counts.get(status, 0) + 1


class PartnerService:
    """Partner requests, once authenticated; `run` must be running (it sends callbacks)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        originator: CallOriginator,
        *,
        clock: Callable[[], float] = time.time,
        hangup_wait: float = 2.0,
    ) -> None:
        self.config = config
        self.store = store
        self.originator = originator
        self.partners = {partner.name: partner for partner in config.partners}
        self.plan = PLANS[config.routing.country]
        self.stats = PartnerStats()
        http = config.http
        self.callbacks = CallbackSender(
            RetryPolicy(
                attempts=http.callback_attempts,
                first_delay=http.callback_backoff,
                max_delay=http.callback_backoff_max,
                timeout=http.callback_timeout,
            ),
            clock=clock,
        )
        self._clock = clock
        self._hangup_wait = hangup_wait
        self._calls: dict[str, ClickToCall] = {}
        self._finished: deque[tuple[float, str]] = deque()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Provision the partners' budget accounts (an existing one is kept as it is), then
        deliver callbacks until cancelled."""
        for partner in self.config.partners:
            await self.store.ensure_account("partner", partner.name, partner.budget)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.callbacks.run)
            task_status.started()

    @property
    def active_calls(self) -> int:
        return sum(1 for call in self._calls.values() if call.ended_at is None)

    # ---- click-to-call ------------------------------------------------------------------

    async def create_call(
        self, partner: PartnerConfig, a: str, b: str, callback_url: str | None
    ) -> ClickToCall:
        """Check the request, then place the call; the record in its first state."""
        self._forget_finished()
        try:
            party_a = await self._party("from", a)
            party_b = await self._party("to", b)
            if party_a == party_b:
                raise InvalidField("to", f"names the same party as from ({party_a})")
            if callback_url is not None:
                _check_url("callback_url", callback_url)
            await self._check_budget(partner)
            call = await self._originate(partner, party_a, party_b, callback_url)
        except PartnerError as exc:
            _count(self.stats.calls_refused, exc.status)
            raise
        self.stats.calls_started += 1
        return call

    async def _originate(
        self, partner: PartnerConfig, a: str, b: str, callback_url: str | None
    ) -> ClickToCall:
        now = self._clock()
        call = ClickToCall(partner, a, b, callback_url, created_at=now, updated_at=now)
        try:
            call.id = await self.originator.click_to_call(
                partner=partner.name,
                a=a,
                b=b,
                on_state=lambda state, cause: self._on_state(call, state, cause),
            )
        except CallRefused as exc:
            raise Refused(_api_status(exc.status), exc.reason) from exc
        self._calls[call.id] = call
        if call.ended_at is not None:
            self._finished.append((call.ended_at, call.id))
        log.info("click-to-call placed", call=call.id, partner=partner.name, a=a, b=b)
        for event in call.unsent:
            self._send(call, msgspec.structs.replace(event, id=call.id))
        call.unsent.clear()
        return call

    def get_call(self, partner: PartnerConfig, call_id: str) -> ClickToCall:
        """The partner's call; NotFound for an unknown, forgotten or other partner's id."""
        self._forget_finished()
        call = self._calls.get(call_id)
        if call is None or call.partner.name != partner.name:
            raise NotFound(f"no call {call_id!r}")
        return call

    async def end_call(self, partner: PartnerConfig, call_id: str) -> ClickToCall:
        """Hang the call up and wait (briefly) for the originator to report it ended."""
        call = self.get_call(partner, call_id)
        if call.ended_at is not None:
            return call
        if not self.originator.hangup(call_id):
            # The originator no longer knows a call it never reported ended.
            self._on_state(call, ClickToCallState.ENDED, "api-delete")
        with trio.move_on_after(self._hangup_wait):
            await call.ended.wait()
        return call

    def _on_state(self, call: ClickToCall, state: ClickToCallState, cause: str | None) -> None:
        if call.ended_at is not None or state is call.state:
            return  # nothing follows the end, and a repeat is no change
        now = self._clock()
        call.state, call.updated_at = state, now
        call.sequence += 1
        if state is ClickToCallState.ENDED:
            call.cause, call.ended_at = cause, now
            call.ended.set()
            if call.id:  # else _originate files it once the id is known
                self._finished.append((now, call.id))
        event = CallEvent(
            event="call.state",
            id=call.id,
            sequence=call.sequence,
            state=state.value,
            cause=call.cause,
            from_=call.a,
            to=call.b,
            at=now,
        )
        if call.id:
            self._send(call, event)
        else:
            call.unsent.append(event)

    def _send(self, call: ClickToCall, event: CallEvent) -> None:
        partner = call.partner
        url = call.callback_url or partner.callback_url
        if not url:
            return
        # A partner without a callback secret (it set no callback_url of its own, only
        # per-call ones) has its callbacks signed with its API key, the secret it has.
        secret = partner.callback_secret or partner.api_key
        body = msgspec.json.encode(event)
        self.callbacks.submit(Delivery(call.id, url, secret.encode(), body))

    def _forget_finished(self) -> None:
        horizon = self._clock() - self.config.http.call_retention
        while self._finished and self._finished[0][0] <= horizon:
            _, call_id = self._finished.popleft()
            self._calls.pop(call_id, None)

    # ---- masked numbers -----------------------------------------------------------------

    async def create_binding(
        self, partner: PartnerConfig, a: str, b: str, ttl_s: float
    ) -> MaskedBinding:
        """Bind A and B to a free number of the partner's pool for ``ttl_s`` seconds."""
        try:
            binding = await self._bind(partner, a, b, ttl_s)
        except PartnerError as exc:
            _count(self.stats.bindings_refused, exc.status)
            raise
        self.stats.bindings_created += 1
        return binding

    async def _bind(self, partner: PartnerConfig, a: str, b: str, ttl_s: float) -> MaskedBinding:
        party_a = await self._party("a", a)
        party_b = await self._party("b", b)
        if party_a == party_b:
            raise InvalidField("b", f"names the same party as a ({party_a})")
        limit = self.config.http.max_binding_ttl
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= limit):
            raise InvalidField(
                "ttl_s", f"must be greater than 0 and at most {limit:g}, got {ttl_s}"
            )
        await self._check_budget(partner)
        if not partner.masked_pool:
            raise NoNumberFree("this partner has no masked-number pool")
        try:
            return await self.store.bind_masked(
                partner.name, list(partner.masked_pool), party_a, party_b, ttl_s, self._clock()
            )
        except PoolExhausted as exc:
            raise NoNumberFree(
                f"every number of the pool ({len(partner.masked_pool)}) is bound"
            ) from exc

    async def get_binding(self, partner: PartnerConfig, binding_id: str) -> MaskedBinding:
        binding = await self.store.get_masked_binding(partner.name, binding_id)
        if binding is None:
            raise NotFound(f"no binding {binding_id!r}")
        return binding

    async def delete_binding(self, partner: PartnerConfig, binding_id: str) -> None:
        if not await self.store.unbind_masked(partner.name, binding_id):
            raise NotFound(f"no binding {binding_id!r}")

    # ---- CDRs ---------------------------------------------------------------------------

    async def cdrs(self, partner: PartnerConfig, since: float | None, limit: int) -> list[Cdr]:
        """The partner's CDRs of calls started at or after ``since``, newest first."""
        if not 1 <= limit <= CDR_LIMIT_MAX:
            raise InvalidField("limit", f"must be from 1 to {CDR_LIMIT_MAX}, got {limit}")
        return await self.store.list_cdrs(since=since, limit=limit, partner=partner.name)

    # ---- checks -------------------------------------------------------------------------

    async def _party(self, field_name: str, text: str) -> str:
        """A subscriber's username as it is, else the number in E.164."""
        party = text.strip()
        if not party:
            raise InvalidField(field_name, "must not be empty")
        if len(party) > MAX_PARTY_LENGTH:
            raise InvalidField(field_name, f"must be at most {MAX_PARTY_LENGTH} characters")
        if await self.store.get_subscriber(party) is not None:
            return party
        try:
            dialled = classify(party, self.plan)
        except NumberError as exc:
            raise InvalidField(field_name, f"not a subscriber nor a number: {exc.reason}") from exc
        if dialled.kind is DialledKind.EMERGENCY:
            raise InvalidField(field_name, "emergency numbers cannot be called through the API")
        return dialled.number

    async def _check_budget(self, partner: PartnerConfig) -> None:
        if partner.bill_user:
            return
        account = await self.store.get_account("partner", partner.name)
        if account is None or Decimal(account.balance) <= 0:
            balance = "none" if account is None else account.balance
            raise BudgetSpent(f"the budget of partner {partner.name!r} is spent ({balance})")


def _api_status(status: int) -> int:
    """The API's status for an originator's refusal: 402, 403 and 503 as they are; any
    other refusal of the call (a party the router cannot reach, a limit) is 403, and a
    failure of the gateway's own 503."""
    if status in (402, 403, 503):
        return status
    return 403 if 400 <= status < 500 else 503


def _check_url(field_name: str, url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidField(field_name, f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidField(field_name, "must be an absolute http:// or https:// URL")
