"""SIP transaction state machines and the transaction layer, sans-IO.

Implements RFC 3261 section 17 as corrected by RFC 6026:

* INVITE client transaction (17.1.1): Calling / Proceeding / Completed / Accepted /
  Terminated, Timers A, B, D and M; the ACK for a 3xx-6xx final response is built
  here (17.1.1.3).
* non-INVITE client transaction (17.1.2): Trying / Proceeding / Completed, Timers E, F, K.
* INVITE server transaction (17.2.1): Proceeding / Completed / Confirmed / Accepted,
  the automatic 100 (Trying), Timers G, H, I and L.
* non-INVITE server transaction (17.2.2): Trying / Proceeding / Completed, Timer J.
* matching of responses to client transactions (17.1.3) and of requests to server
  transactions (17.2.3, with the RFC 2543 fallback for branches without the magic
  cookie), CANCEL matching (9.2), and a deadline heap for all live transactions.

Nothing here reads a clock or touches a socket: every state change is driven by
`receive`, `send`, `start` or `on_timer(now)`, and the outputs are plain dataclasses
(`Transmit`, `Deliver`, `TimedOut`, `Terminated`) for the transport and the TU.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from gateway.sip.headers import Via
from gateway.sip.message import Headers, Request, Response, make_response

MAGIC_COOKIE = "z9hG4bK"
DEFAULT_MAX_TRANSACTIONS = 100_000

# Retransmission timers yield to the timeout timers when both fall due at once:
# a retransmission sent at the instant the transaction gives up is pointless.
_RETRANSMIT_TIMERS = frozenset({"A", "E", "G"})


class TransactionError(ValueError):
    """A message cannot be handled by a transaction (wrong kind, unmatched, malformed)."""


class OverloadError(RuntimeError):
    """The layer holds its maximum number of live transactions; answer 503."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Transaction limit reached ({limit} live transactions)")
        self.limit = limit


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send this message: a client transaction to its destination, a server
    transaction back to where its request came from."""

    message: Request | Response


@dataclass(frozen=True, slots=True)
class Deliver:
    """Pass this message up to the transaction user."""

    message: Request | Response


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer B, F or H expired: the TU treats it as a 408 / failed transaction."""

    timer: str = ""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached the Terminated state and produces nothing more."""


Output = Transmit | Deliver | TimedOut | Terminated


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 timer values (Table 4). Tests shrink them to run in milliseconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d_unreliable: float = 32.0
    trying_delay: float = 0.2

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "d_unreliable", "trying_delay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Timer {name} must be positive, got {getattr(self, name)!r}")
        if self.t2 < self.t1:
            raise ValueError(f"T2 ({self.t2}) must not be smaller than T1 ({self.t1})")

    @property
    def timer_b(self) -> float:
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        return 0.0 if reliable else self.d_unreliable

    def timer_i(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        return 0.0 if reliable else 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """Identity of a transaction for matching.

    Client keys (17.1.3) hold the branch and the CSeq method; their sent_by is "".
    Server keys (17.2.3) add the top Via sent-by; ACK is keyed as INVITE.
    """

    branch: str
    sent_by: str
    method: str


def _sent_by(via: Via) -> str:
    port = via.port
    if port is None:
        port = 5061 if via.transport.upper() in ("TLS", "WSS") else 5060
    return f"{via.host.lower()}:{port}"


def _rfc2543_id(request: Request, via: Via) -> str:
    # RFC 3261 17.2.3: without the magic cookie, a request matches on Request-URI,
    # From tag, Call-ID, CSeq number and the top Via. The To tag is left out so the
    # ACK (which carries the tag of our response) matches its INVITE.
    return "|".join(
        (
            "rfc2543",
            request.uri,
            request.from_.tag or "",
            request.call_id,
            str(request.cseq.seq),
            via.branch or "",
        )
    )


def client_key(message: Request | Response) -> TransactionKey:
    """Key of the client transaction that sent `message` (or that `message` answers)."""
    try:
        branch = message.top_via.branch
        method = message.cseq.method
    except ValueError as exc:
        raise TransactionError(f"Cannot match message: {exc}") from exc
    if not branch:
        raise TransactionError("Cannot match message: top Via has no branch")
    return TransactionKey(branch, "", method)


def server_key(request: Request, *, method: str | None = None) -> TransactionKey:
    """Key of the server transaction `request` belongs to (ACK maps to INVITE)."""
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    try:
        via = request.top_via
        branch = via.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            return TransactionKey(branch, _sent_by(via), method)
        return TransactionKey(_rfc2543_id(request, via), _sent_by(via), method)
    except ValueError as exc:
        raise TransactionError(f"Cannot match request: {exc}") from exc


def _top_via_value(request: Request) -> str:
    vias = request.headers.get_list("Via")
    if not vias:
        raise TransactionError("Request has no Via header")
    return vias[0]


def _copy_request_basics(request: Request, method: str, to_value: str) -> Headers:
    # Shared by the non-2xx ACK (17.1.1.3) and CANCEL (9.1): one Via equal to the
    # original top Via, the same Route set, From, Call-ID and CSeq number.
    headers = Headers()
    headers.add("Via", _top_via_value(request))
    for route in request.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", to_value)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq.seq} {method}")
    return headers


def build_non2xx_ack(invite: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 3xx-6xx (RFC 3261 17.1.1.3)."""
    to_value = response.headers.get("To")
    if to_value is None:
        raise TransactionError("Response has no To header")
    return Request("ACK", invite.uri, _copy_request_basics(invite, "ACK", to_value))


def build_cancel(invite: Request) -> Request:
    """A CANCEL for a pending INVITE (RFC 3261 9.1); send it in its own client txn."""
    if invite.method != "INVITE":
        raise TransactionError(f"Only INVITE can be cancelled, not {invite.method}")
    to_value = invite.headers.get("To") or ""
    return Request("CANCEL", invite.uri, _copy_request_basics(invite, "CANCEL", to_value))


class Transaction(ABC):
    """Common timer bookkeeping; subclasses implement one RFC 3261 state machine."""

    def __init__(
        self,
        request: Request,
        key: TransactionKey,
        *,
        reliable: bool,
        timers: Timers,
        now: float,
        state: State,
    ) -> None:
        self.request = request
        self.key = key
        self.reliable = reliable
        self.timers = timers
        self.created_at = now
        self.state = state
        self._due: dict[str, float] = {}
        self._listener: Callable[[Transaction], None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key.method} {self.key.branch} {self.state.value}>"

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    @property
    def deadline(self) -> float | None:
        """When `on_timer` must next be called, or None when no timer runs."""
        return min(self._due.values(), default=None)

    def set_listener(self, listener: Callable[[Transaction], None] | None) -> None:
        """Called after every change of state or deadline (the layer keeps its heap with it)."""
        self._listener = listener

    def on_timer(self, now: float) -> list[Output]:
        """Fire every timer due at `now`, earliest first."""
        outputs: list[Output] = []
        while not self.terminated:
            name = self._next_due(now)
            if name is None:
                break
            del self._due[name]
            outputs.extend(self._fire(name, now))
        self._changed()
        return outputs

    def _next_due(self, now: float) -> str | None:
        due = [
            (when, name in _RETRANSMIT_TIMERS, name)
            for name, when in self._due.items()
            if when <= now
        ]
        return min(due)[2] if due else None

    def _arm(self, name: str, now: float, delay: float) -> None:
        self._due[name] = now + delay

    def _disarm(self, *names: str) -> None:
        for name in names:
            self._due.pop(name, None)

    def _terminate(self) -> list[Output]:
        self.state = State.TERMINATED
        self._due.clear()
        return [Terminated()]

    def _finish_after(self, name: str, delay: float, now: float) -> list[Output]:
        # D, I, J and K are zero on reliable transports: terminate at once.
        if delay <= 0:
            return self._terminate()
        self._arm(name, now, delay)
        return []

    def _changed(self) -> None:
        if self._listener is not None:
            self._listener(self)

    @abstractmethod
    def _fire(self, name: str, now: float) -> list[Output]:
        """React to timer `name` expiring at `now`."""


class ClientTransaction(Transaction):
    """Client side: sends one request, absorbs its retransmissions, matches responses."""

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers, now: float, state: State
    ) -> None:
        super().__init__(
            request,
            client_key(request),
            reliable=reliable,
            timers=timers,
            now=now,
            state=state,
        )
        self._started = False
        self._interval = timers.t1

    def start(self, now: float) -> list[Output]:
        """Send the request and start the timers."""
        if self._started:
            raise TransactionError(f"{self!r} already started")
        self._started = True
        outputs = self._start(now)
        self._changed()
        return outputs

    def receive(self, response: Response, now: float) -> list[Output]:
        """Handle a response that matched this transaction."""
        if not self._started:
            raise TransactionError(f"{self!r} received a response before start()")
        if client_key(response) != self.key:
            raise TransactionError(f"Response does not belong to {self!r}")
        if self.terminated:
            return []
        outputs = self._receive(response, now)
        self._changed()
        return outputs

    @abstractmethod
    def _start(self, now: float) -> list[Output]:
        """Send the request and arm the initial timers."""

    @abstractmethod
    def _receive(self, response: Response, now: float) -> list[Output]:
        """State machine reaction to a response."""


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with the RFC 6026 Accepted state."""

    def __init__(self, request: Request, *, reliable: bool, timers: Timers, now: float) -> None:
        super().__init__(request, reliable=reliable, timers=timers, now=now, state=State.CALLING)
        self.ack: Request | None = None

    def _start(self, now: float) -> list[Output]:
        self._arm("B", now, self.timers.timer_b)
        if not self.reliable:
            self._arm("A", now, self._interval)
        return [Transmit(self.request)]

    def _receive(self, response: Response, now: float) -> list[Output]:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self._disarm("A", "B")
            if status < 200:
                self.state = State.PROCEEDING
                return [Deliver(response)]
            if status < 300:
                self.state = State.ACCEPTED
                self._arm("M", now, self.timers.timer_m)
                return [Deliver(response)]
            self.state = State.COMPLETED
            self.ack = build_non2xx_ack(self.request, response)
            outputs: list[Output] = [Deliver(response), Transmit(self.ack)]
            return outputs + self._finish_after("D", self.timers.timer_d(self.reliable), now)
        if self.state is State.ACCEPTED and 200 <= status < 300:
            # RFC 6026 7.2: every 2xx goes up so the TU can ACK each one.
            return [Deliver(response)]
        if self.state is State.COMPLETED and status >= 300 and self.ack is not None:
            return [Transmit(self.ack)]
        return []

    def _fire(self, name: str, now: float) -> list[Output]:
        if name == "A":
            self._interval *= 2
            self._arm("A", now, self._interval)
            return [Transmit(self.request)]
        if name == "B":
            return [TimedOut("B"), *self._terminate()]
        return self._terminate()  # D or M


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2."""

    def __init__(self, request: Request, *, reliable: bool, timers: Timers, now: float) -> None:
        super().__init__(request, reliable=reliable, timers=timers, now=now, state=State.TRYING)

    def _start(self, now: float) -> list[Output]:
        self._arm("F", now, self.timers.timer_f)
        if not self.reliable:
            self._arm("E", now, self._interval)
        return [Transmit(self.request)]

    def _receive(self, response: Response, now: float) -> list[Output]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        if response.status < 200:
            self.state = State.PROCEEDING
            return [Deliver(response)]
        self.state = State.COMPLETED
        self._disarm("E", "F")
        outputs: list[Output] = [Deliver(response)]
        return outputs + self._finish_after("K", self.timers.timer_k(self.reliable), now)

    def _fire(self, name: str, now: float) -> list[Output]:
        if name == "E":
            if self.state is State.TRYING:
                self._interval = min(2 * self._interval, self.timers.t2)
            else:
                self._interval = self.timers.t2
            self._arm("E", now, self._interval)
            return [Transmit(self.request)]
        if name == "F":
            return [TimedOut("F"), *self._terminate()]
        return self._terminate()  # K


class ServerTransaction(Transaction):
    """Server side: absorbs request retransmissions and (re)sends the TU's responses."""

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers, now: float, state: State
    ) -> None:
        super().__init__(
            request,
            server_key(request),
            reliable=reliable,
            timers=timers,
            now=now,
            state=state,
        )
        self.last_response: Response | None = None

    def receive(self, request: Request, now: float) -> list[Output]:
        """Handle a retransmission of the request (or, for INVITE, an ACK)."""
        if server_key(request) != self.key:
            raise TransactionError(f"{request.method} does not belong to {self!r}")
        if self.terminated:
            return []
        outputs = self._receive(request, now)
        self._changed()
        return outputs

    def send(self, response: Response, now: float) -> list[Output]:
        """The TU answers; returns what to transmit (nothing if the state discards it)."""
        if not 100 <= response.status <= 699:
            raise TransactionError(f"Invalid response status {response.status}")
        if self.terminated:
            return []
        outputs = self._send(response, now)
        self._changed()
        return outputs

    def _resend_last(self) -> list[Output]:
        return [] if self.last_response is None else [Transmit(self.last_response)]

    @abstractmethod
    def _receive(self, request: Request, now: float) -> list[Output]:
        """State machine reaction to a retransmitted request or ACK."""

    @abstractmethod
    def _send(self, response: Response, now: float) -> list[Output]:
        """State machine reaction to a response from the TU."""


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with the RFC 6026 Accepted state."""

    def __init__(self, request: Request, *, reliable: bool, timers: Timers, now: float) -> None:
        super().__init__(request, reliable=reliable, timers=timers, now=now, state=State.PROCEEDING)
        self._interval = timers.t1
        self._arm("Trying", now, timers.trying_delay)

    def _receive(self, request: Request, now: float) -> list[Output]:
        if request.method == "ACK":
            return self._receive_ack(request, now)
        if self.state in (State.PROCEEDING, State.COMPLETED):
            return self._resend_last()
        return []  # Accepted / Confirmed absorb INVITE retransmissions

    def _receive_ack(self, ack: Request, now: float) -> list[Output]:
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._disarm("G", "H")
            return self._finish_after("I", self.timers.timer_i(self.reliable), now)
        if self.state is State.ACCEPTED:
            # RFC 6026 7.1: an ACK matching in Accepted is for the 2xx; the TU wants it.
            return [Deliver(ack)]
        return []

    def _send(self, response: Response, now: float) -> list[Output]:
        status = response.status
        if self.state is State.ACCEPTED:
            # RFC 6026 7.1: the TU retransmits its 2xx through the transaction.
            return [Transmit(response)] if 200 <= status < 300 else []
        if self.state is not State.PROCEEDING:
            return []
        self._disarm("Trying")
        self.last_response = response
        if status >= 300:
            self.state = State.COMPLETED
            self._arm("H", now, self.timers.timer_h)
            if not self.reliable:
                self._arm("G", now, self._interval)
        elif status >= 200:
            self.state = State.ACCEPTED
            self._arm("L", now, self.timers.timer_l)
        return [Transmit(response)]

    def _trying(self) -> Response:
        trying = make_response(self.request, 100)
        # RFC 3261 8.2.6.1: a 100 copies the Timestamp header of the request.
        timestamp = self.request.headers.get("Timestamp")
        if timestamp is not None and "Timestamp" not in trying.headers:
            trying.headers.add("Timestamp", timestamp)
        return trying

    def _fire(self, name: str, now: float) -> list[Output]:
        if name == "Trying":
            self.last_response = self._trying()
            return [Transmit(self.last_response)]
        if name == "G":
            self._interval = min(2 * self._interval, self.timers.t2)
            self._arm("G", now, self._interval)
            return self._resend_last()
        if name == "H":
            return [TimedOut("H"), *self._terminate()]
        return self._terminate()  # I or L


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2."""

    def __init__(self, request: Request, *, reliable: bool, timers: Timers, now: float) -> None:
        super().__init__(request, reliable=reliable, timers=timers, now=now, state=State.TRYING)

    def _receive(self, request: Request, now: float) -> list[Output]:
        # In Trying the request is discarded: the TU has not answered yet.
        return [] if self.state is State.TRYING else self._resend_last()

    def _send(self, response: Response, now: float) -> list[Output]:
        if self.state is State.COMPLETED:
            return []  # 17.2.2: further final responses are discarded
        self.last_response = response
        if response.status < 200:
            self.state = State.PROCEEDING
            return [Transmit(response)]
        self.state = State.COMPLETED
        outputs: list[Output] = [Transmit(response)]
        return outputs + self._finish_after("J", self.timers.timer_j(self.reliable), now)

    def _fire(self, name: str, now: float) -> list[Output]:
        return self._terminate()  # J


def create_client_transaction(
    request: Request, *, reliable: bool, timers: Timers, now: float
) -> ClientTransaction:
    """A client transaction for `request` (not yet started: call `start(now)`)."""
    if request.method == "ACK":
        raise TransactionError("ACK is not sent in a client transaction")
    branch = client_key(request).branch
    if not branch.startswith(MAGIC_COOKIE):
        raise TransactionError(f"Via branch {branch!r} lacks the magic cookie {MAGIC_COOKIE}")
    if request.method == "INVITE":
        return InviteClientTransaction(request, reliable=reliable, timers=timers, now=now)
    return NonInviteClientTransaction(request, reliable=reliable, timers=timers, now=now)


def create_server_transaction(
    request: Request, *, reliable: bool, timers: Timers, now: float
) -> ServerTransaction:
    """A server transaction for a new incoming request (INVITE arms its 100 Trying)."""
    if request.method == "ACK":
        raise TransactionError("ACK does not create a server transaction")
    if request.method == "INVITE":
        return InviteServerTransaction(request, reliable=reliable, timers=timers, now=now)
    return NonInviteServerTransaction(request, reliable=reliable, timers=timers, now=now)


class TransactionLayer:
    """All live transactions of one SIP stack, their matching and their deadlines."""

    def __init__(
        self, timers: Timers | None = None, *, max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    ) -> None:
        if max_transactions < 1:
            raise ValueError(f"max_transactions must be at least 1, got {max_transactions}")
        self.timers = timers if timers is not None else Timers()
        self.max_transactions = max_transactions
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._servers: dict[TransactionKey, ServerTransaction] = {}
        # Lazy deletion: an entry is live only while _scheduled still maps its
        # transaction to the same deadline.
        self._heap: list[tuple[float, int, Transaction]] = []
        self._scheduled: dict[Transaction, float] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def start_client(
        self, request: Request, *, reliable: bool, now: float
    ) -> tuple[ClientTransaction, list[Output]]:
        """Create, register and start a client transaction for `request`.

        Not bounded by `max_transactions`: outgoing requests follow from work the
        layer has already admitted.
        """
        txn = create_client_transaction(request, reliable=reliable, timers=self.timers, now=now)
        if txn.key in self._clients:
            raise TransactionError(f"Branch {txn.key.branch!r} is already in use")
        self._clients[txn.key] = txn
        txn.set_listener(self._on_change)
        return txn, txn.start(now)

    def receive_request(
        self, request: Request, now: float, reliable: bool
    ) -> tuple[ServerTransaction | None, list[Output]]:
        """Match an incoming request (17.2.3).

        Returns (new transaction, [Deliver(request)]) for a new request,
        (None, outputs) for a retransmission or an ACK absorbed by its INVITE
        transaction, and (None, [Deliver(ack)]) for an ACK that matches nothing
        (the ACK for a 2xx, which belongs to the dialog). Raises OverloadError
        when a new transaction would exceed `max_transactions`, TransactionError
        when the request cannot be matched at all.
        """
        key = server_key(request)
        existing = self._servers.get(key)
        if existing is not None:
            return None, existing.receive(request, now)
        if request.method == "ACK":
            return None, [Deliver(request)]
        if len(self) >= self.max_transactions:
            raise OverloadError(self.max_transactions)
        txn = create_server_transaction(request, reliable=reliable, timers=self.timers, now=now)
        self._servers[key] = txn
        txn.set_listener(self._on_change)
        self._on_change(txn)
        return txn, [Deliver(request)]

    def receive_response(self, response: Response, now: float) -> list[Output]:
        """Match a response to its client transaction (17.1.3).

        A 2xx to INVITE with no transaction is delivered up (the dialog re-sends
        its ACK); every other stray response is dropped, as is one that cannot be
        matched because its Via or CSeq is unusable.
        """
        return self.match_response(response, now)[1]

    def match_response(
        self, response: Response, now: float
    ) -> tuple[ClientTransaction | None, list[Output]]:
        """`receive_response`, also naming the transaction matched (None when none did)."""
        try:
            key = client_key(response)
        except TransactionError:
            return None, []
        txn = self._clients.get(key)
        if txn is not None:
            return txn, txn.receive(response, now)
        if key.method == "INVITE" and 200 <= response.status < 300:
            return None, [Deliver(response)]
        return None, []

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (RFC 3261 9.2)."""
        if cancel.method != "CANCEL":
            raise TransactionError(f"Expected CANCEL, got {cancel.method}")
        return self._servers.get(server_key(cancel, method="INVITE"))

    def find_client(self, message: Request | Response) -> ClientTransaction | None:
        """The live client transaction a request or response belongs to, if any."""
        try:
            return self._clients.get(client_key(message))
        except TransactionError:
            return None

    def next_deadline(self) -> float | None:
        """The earliest deadline of any live transaction."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def on_timer(self, now: float) -> list[tuple[Transaction, Output]]:
        """Fire every transaction timer due at `now`."""
        results: list[tuple[Transaction, Output]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._is_live(entry):
                continue
            txn = entry[2]
            del self._scheduled[txn]
            results.extend((txn, output) for output in txn.on_timer(now))
        return results

    def _is_live(self, entry: tuple[float, int, Transaction]) -> bool:
        return self._scheduled.get(entry[2]) == entry[0]

    def _on_change(self, txn: Transaction) -> None:
        if txn.terminated:
            self._forget(txn)
            return
        deadline = txn.deadline
        if deadline is None:
            self._scheduled.pop(txn, None)
        elif self._scheduled.get(txn) != deadline:
            self._scheduled[txn] = deadline
            heapq.heappush(self._heap, (deadline, next(self._order), txn))
            self._compact()

    def discard(self, txn: ServerTransaction) -> None:
        """Drop a server transaction whose response the TU sends statelessly.

        A rejection sent this way is not retransmitted (no Timer G), so a flood
        of requests from forged sources is not amplified; a retransmitted
        request simply gets a fresh answer.
        """
        self._forget(txn)

    def _forget(self, txn: Transaction) -> None:
        self._scheduled.pop(txn, None)
        table: dict[TransactionKey, ClientTransaction] | dict[TransactionKey, ServerTransaction]
        table = self._clients if isinstance(txn, ClientTransaction) else self._servers
        if table.get(txn.key) is txn:
            del table[txn.key]
        txn.set_listener(None)

    def _compact(self) -> None:
        # Stale entries pile up when deadlines move later; rebuild once they dominate.
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [(when, next(self._order), txn) for txn, when in self._scheduled.items()]
            heapq.heapify(self._heap)
