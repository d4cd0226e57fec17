"""What the partner API tests talk to: a recording call originator and a webhook receiver.

* `RecordingOriginator` is a `CallOriginator` for tests of the partner API before (and
  besides) the core's: it records each click-to-call it is asked for and lets the test
  drive the call's states, refuse calls, and see hangups.
* `CallbackReceiver` is a real HTTP server (an ASGI app served by hypercorn on a loopback
  port) standing for a partner's callback endpoint: it checks every delivery's HMAC
  signature, fails the first N deliveries with 500 (or answers a fixed status), and keeps
  what arrived in arrival order.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import msgspec
import trio

from gateway.calls.origination import CallRefused, ClickToCallState, StateListener

# Below the kernel's ephemeral range and apart from the SIP (21000-29999), gateway media
# (20000-) and peer media (6000-9999) ranges the integration tests pick from.
HTTP_PORTS = (12000, 19999)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on `host` (another process may take it before it is bound)."""
    for _ in range(200):
        port = random.randint(*HTTP_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on {host}")


@dataclass
class Placed:
    """One click-to-call the originator accepted."""

    id: str
    partner: str
    a: str
    b: str
    on_state: StateListener


@dataclass
class RecordingOriginator:
    """Accepts every call (unless told to refuse the next) and reports states on demand.

    ``report_at_once`` states are reported from inside ``click_to_call``, before it returns
    the id, as an originator may do. ``hangup`` reports ENDED ("api-delete") from a task
    of its own, the way a call task ends after its scope is cancelled.
    """

    nursery: trio.Nursery
    placed: dict[str, Placed] = field(default_factory=dict)
    hangups: list[str] = field(default_factory=list)
    refuse_next: CallRefused | None = None
    report_at_once: tuple[ClickToCallState, ...] = ()
    _count: int = 0

    async def click_to_call(self, *, partner: str, a: str, b: str, on_state: StateListener) -> str:
        await trio.lowlevel.checkpoint()
        if self.refuse_next is not None:
            refused, self.refuse_next = self.refuse_next, None
            raise refused
        self._count += 1
        call_id = f"ctc-{self._count}"
        for state in self.report_at_once:
            on_state(state, None)
        self.placed[call_id] = Placed(call_id, partner, a, b, on_state)
        return call_id

    def hangup(self, call_id: str) -> bool:
        if call_id not in self.placed or call_id in self.hangups:
            return False
        self.hangups.append(call_id)
        self.nursery.start_soon(self._end_later, call_id)
        return True

    async def _end_later(self, call_id: str) -> None:
        await trio.sleep(0.01)
        self.drive(call_id, ClickToCallState.ENDED, "api-delete")

    def drive(self, call_id: str, state: ClickToCallState, cause: str | None = None) -> None:
        self.placed[call_id].on_state(state, cause)


@dataclass(frozen=True)
class Arrival:
    """One delivery as the receiver saw it."""

    at: float  # trio.current_time() on arrival
    body: bytes
    headers: dict[str, str]
    signature_ok: bool
    status: int  # what the receiver answered

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class CallbackReceiver:
    """A partner's webhook endpoint; an ASGI app (serve it with `serve_asgi`)."""

    secret: bytes
    fail_first: int = 0  # answer the first N deliveries 500
    status: int = 200  # the answer after those
    delay: float = 0.0  # seconds before answering
    arrivals: list[Arrival] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    @property
    def accepted(self) -> list[Arrival]:
        return [a for a in self.arrivals if 200 <= a.status < 300]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Arrival]:
        """Wait until `count` deliveries were accepted (2xx)."""
        with trio.fail_after(timeout):
            while len(self.accepted) < count:
                await self.arrived.wait()
                self.arrived = trio.Event()
        return self.accepted

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(headers.get("x-edgegw-signature", ""), expected)
        status = 500 if len(self.arrivals) < self.fail_first else self.status
        if not signature_ok:
            status = 401
        self.arrivals.append(Arrival(trio.current_time(), body, headers, signature_ok, status))
        self.arrived.set()
        if self.delay:
            await trio.sleep(self.delay)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_asgi(nursery: trio.Nursery, app: Any, port: int | None = None) -> str:
    """Serve `app` with hypercorn on 127.0.0.1 in `nursery`; its base URL."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port or free_tcp_port()}"]
    config.accesslog = None
    framework = cast(hypercorn.typing.ASGIFramework, app)
    binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, framework, config))
    return binds[0]
