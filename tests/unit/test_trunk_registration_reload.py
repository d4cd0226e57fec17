"""Outbound registrations changed by a config reload (`TrunkRegistrations.update`).

A real `SipEndpoint` on 127.0.0.1 registers at registrars that are UDP sockets of the test:
they challenge an unauthenticated REGISTER (RFC 3261 22.2 digest), check the credentials of
the next one against their accounts and answer 200 with the Expires asked for. What is
checked is what reaches them: a trunk new to the config registers at once, a removed one
sends Expires: 0 on its Call-ID, a changed one sends Expires: 0 and only then registers with
its new credentials or at its new address, and one whose other settings changed sends
nothing at all.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import pytest
import trio

from gateway.calls.trunk_registration import (
    RegistrationState,
    TrunkRegistrations,
    registration_settings,
)
from gateway.config import DnsConfig, TrunkConfig
from gateway.sip.auth import DigestServer
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.transaction import Timers
from gateway.transport.dns import Resolver
from gateway.transport.endpoint import ServerHandle, SipEndpoint
from gateway.transport.flow import Flow

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
SECRET = b"registrar-secret-0123456789"
QUIET = 0.4  # seconds in which an untouched registration must send nothing


@dataclass
class Seen:
    """A REGISTER as a registrar got it and whose account its credentials proved."""

    request: Request
    user: str | None  # None: no or wrong credentials (challenged)

    @property
    def expires(self) -> int:
        return int(self.request.headers.get("Expires") or "-1")


@dataclass(eq=False)
class Registrar:
    sock: trio.socket.SocketType
    digest: DigestServer = field(default_factory=lambda: DigestServer("carrier.test", SECRET))
    send: trio.MemorySendChannel[Seen] | None = None
    receive: trio.MemoryReceiveChannel[Seen] | None = None

    @classmethod
    async def open(cls) -> Registrar:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        registrar = cls(sock)
        registrar.send, registrar.receive = trio.open_memory_channel[Seen](math.inf)
        return registrar

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        while True:
            data, source = await self.sock.recvfrom(65536)
            request = parse(data)
            assert isinstance(request, Request) and request.method == "REGISTER"
            response, user = self._answer(request)
            assert self.send is not None
            if user is not None:  # the challenged first tries are not what the tests count
                self.send.send_nowait(Seen(request, user))
            await self.sock.sendto(response.to_bytes(), source)

    def _answer(self, request: Request) -> tuple[Response, str | None]:
        now = trio.current_time()
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            result = self.digest.verify("REGISTER", authorization, ACCOUNTS.get, now)
            if result.ok:
                response = make_response(request, 200, to_tag="registrar")
                response.headers.add("Expires", request.headers.get("Expires") or "60")
                return response, result.username
        response = make_response(request, 401, to_tag="registrar")
        for value in self.digest.challenge(now):
            response.headers.add("WWW-Authenticate", value)
        return response, None

    async def next(self, timeout: float = 3.0) -> Seen:
        assert self.receive is not None
        with trio.fail_after(timeout):
            return await self.receive.receive()

    async def nothing_for(self, seconds: float) -> None:
        assert self.receive is not None
        with trio.move_on_after(seconds):
            seen = await self.receive.receive()
            raise AssertionError(f"unexpected REGISTER: {seen.request.to_bytes()[:300]!r}")


class NoRequests:
    def on_request(self, request: Request, server: ServerHandle | None, flow: Flow) -> None:
        raise AssertionError(f"unexpected {request.method}")

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        raise AssertionError(f"unexpected {response.status}")


def trunk(name: str, port: int, user: str = "alice", **settings: object) -> TrunkConfig:
    values: dict[str, object] = {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "register": True,
        "username": user,
        "password": ACCOUNTS[user],
        "register_expires": 60,
        **settings,
    }
    return TrunkConfig(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def registering(
    trunks: list[TrunkConfig], *registrars: Registrar
) -> AsyncIterator[TrunkRegistrations]:
    endpoint = SipEndpoint(
        udp=[("127.0.0.1", 0)],
        tcp=[],
        timers=Timers(t1=0.1),
        tcp_idle_timeout=60,
        handler=NoRequests(),
    )
    registrations = TrunkRegistrations(trunks, endpoint, Resolver(DnsConfig()))
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        for registrar in registrars:
            nursery.start_soon(registrar.serve)
        await nursery.start(registrations.run)
        yield registrations
        nursery.cancel_scope.cancel()


def states(registrations: TrunkRegistrations) -> dict[str, str]:
    return {row["name"]: row["state"] for row in registrations.snapshot()}


async def registered(registrations: TrunkRegistrations, name: str) -> None:
    with trio.fail_after(3):
        while states(registrations).get(name) != "registered":
            await trio.sleep(0.01)


async def test_a_new_trunk_registers_at_once() -> None:
    registrar = await Registrar.open()
    async with registering([], registrar) as registrations:
        assert registrations.snapshot() == []
        registrations.update([trunk("new", registrar.port), trunk("plain", 1, register=False)])
        assert set(registrations.trunks) == {"new"}
        assert states(registrations) == {"new": "idle"}  # listed at once, before any answer
        seen = await registrar.next()
        assert seen.user == "alice" and seen.expires == 60
        await registered(registrations, "new")
        assert registrations.snapshot()[0]["registrar"] == f"udp:127.0.0.1:{registrar.port}"


async def test_a_removed_trunk_sends_expires_zero_on_its_call_id() -> None:
    registrar = await Registrar.open()
    async with registering([trunk("gone", registrar.port)], registrar) as registrations:
        first = await registrar.next()
        await registered(registrations, "gone")
        before = registrations.registrations["gone"]
        registrations.update([])
        assert registrations.trunks == {} and registrations.snapshot() == []
        removal = await registrar.next()
        assert removal.expires == 0 and removal.user == "alice"
        assert removal.request.call_id == first.request.call_id
        assert removal.request.cseq.seq > first.request.cseq.seq
        with trio.fail_after(3):
            while before.state is not RegistrationState.UNREGISTERED:
                await trio.sleep(0.01)
        assert before.expires_at is None  # the registrar's 200 removed the binding
        await registrar.nothing_for(QUIET)


async def test_changed_credentials_deregister_first_then_register_anew() -> None:
    registrar = await Registrar.open()
    async with registering([trunk("acct", registrar.port)], registrar) as registrations:
        first = await registrar.next()
        await registered(registrations, "acct")
        registrations.update([trunk("acct", registrar.port, user="bob")])
        assert registrations.trunks["acct"].username == "bob"
        removal = await registrar.next()
        assert removal.expires == 0 and removal.user == "alice"
        assert removal.request.call_id == first.request.call_id
        fresh = await registrar.next()  # only after the removal (RFC 3261 10.3 step 7)
        assert fresh.expires == 60 and fresh.user == "bob"
        assert fresh.request.call_id != first.request.call_id
        assert str(fresh.request.from_.uri) == "sip:bob@127.0.0.1"
        await registered(registrations, "acct")
        await registrar.nothing_for(QUIET)


async def test_a_new_address_is_a_new_registrar() -> None:
    old, new = await Registrar.open(), await Registrar.open()
    async with registering([trunk("moved", old.port)], old, new) as registrations:
        await old.next()
        await registered(registrations, "moved")
        registrations.update([trunk("moved", new.port)])
        assert (await old.next()).expires == 0
        seen = await new.next()
        assert seen.expires == 60 and seen.user == "alice"
        assert seen.request.uri == f"sip:127.0.0.1:{new.port}"
        await registered(registrations, "moved")
        assert registrations.snapshot()[0]["registrar"] == f"udp:127.0.0.1:{new.port}"
        await old.nothing_for(QUIET)


async def test_other_settings_leave_the_registration_untouched() -> None:
    registrar = await Registrar.open()
    trunks = [trunk("same", registrar.port), trunk("other", registrar.port, user="carol")]
    async with registering(trunks, registrar) as registrations:
        await registrar.next()
        await registrar.next()
        await registered(registrations, "same")
        await registered(registrations, "other")
        kept = registrations.registrations["same"]
        recodec = trunk("same", registrar.port, codecs=["PCMA"], prefixes=["44"])
        registrations.update([recodec, trunk("new", registrar.port, user="bob")])
        assert registrations.registrations["same"] is kept
        assert registrations.trunks["same"].codecs == ["PCMA"]
        seen = {(s.user, s.expires) for s in [await registrar.next(), await registrar.next()]}
        assert seen == {("carol", 0), ("bob", 60)}  # nothing from "same"
        await registrar.nothing_for(QUIET)
        assert states(registrations)["same"] == "registered"


async def test_before_run_update_only_replaces_the_set() -> None:
    endpoint = SipEndpoint(
        udp=[("127.0.0.1", 0)], tcp=[], timers=Timers(), tcp_idle_timeout=60, handler=NoRequests()
    )
    registrations = TrunkRegistrations([trunk("a", 5060)], endpoint, Resolver(DnsConfig()))
    registrations.update([trunk("b", 5060, user="bob")])
    assert list(registrations.trunks) == ["b"]
    assert states(registrations) == {"b": "idle"}


@pytest.mark.parametrize("name", ["username", "password", "register_expires", "transport"])
def test_registration_settings_name_what_a_registration_is_made_of(name: str) -> None:
    base = trunk("t", 5060)
    changed = {
        "username": "bob",
        "password": "other",
        "register_expires": 120,
        "transport": "tcp",
    }[name]
    other = msgspec.structs.replace(base, **{name: changed})
    assert registration_settings(base) != registration_settings(other)
    assert registration_settings(base) == registration_settings(trunk("t", 5060, codecs=["PCMA"]))
