"""The caller's 2xx is sent again until its ACK (RFC 3261 13.3.1.4), driven by the call's timers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio
import trio.testing

from gateway.calls.b2bua import Call
from gateway.calls.router import TrunkRoute
from gateway.config import Config, parse_config
from gateway.media.addresses import MediaAddresses
from gateway.media.relay import PortAllocator
from gateway.sip.dialog import Dialog
from gateway.sip.message import Request, Response, make_response, parse
from gateway.store.model import Subscriber
from gateway.transport.flow import Flow

CONFIG = parse_config(
    """
[[trunks]]
name = "world"
host = "198.51.100.6"
prefixes = [""]
""",
    source="test.toml",
)
CALLER = Subscriber(username="1001", password="x", numbers=["+8613900139001"])
INVITE = (
    "INVITE sip:+8613800138000@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKi1;rport\r\n"
    "From: <sip:1001@127.0.0.1>;tag=a\r\n"
    "To: <sip:+8613800138000@127.0.0.1>\r\n"
    "Call-ID: resend-1\r\n"
    "CSeq: 2 INVITE\r\n"
    "Contact: <sip:1001@10.0.0.2:5060>\r\n"
    "Content-Length: 0\r\n\r\n"
)


@dataclass
class FakeEndpoint:
    resent: list[float] = field(default_factory=list)

    def resend_response(self, server: object, response: Response) -> None:
        assert response.status == 200
        self.resent.append(trio.current_time())


@dataclass
class FakeServer:
    request: Request
    flow: Flow = field(default_factory=lambda: Flow("udp", ("127.0.0.1", 5060), ("10.0.0.2", 5060)))
    local_tag: str = "ourtag"


@dataclass
class FakeHost:
    endpoint: FakeEndpoint
    config: Config
    media_addresses: MediaAddresses


def make_call() -> tuple[Call, FakeEndpoint, Response]:
    invite = parse(INVITE.encode())
    assert isinstance(invite, Request)
    endpoint = FakeEndpoint()
    base = random.randrange(50000, 54000, 2)
    allocator = PortAllocator("127.0.0.1", base, base + 99)
    host = FakeHost(endpoint, CONFIG, MediaAddresses.single(allocator, "127.0.0.1"))
    server = FakeServer(invite)
    route = TrunkRoute(CONFIG.trunks[0], "+8613800138000")
    dialog = Dialog.as_uas(invite, server.local_tag, "")
    call = Call(host, server, CALLER, route, "127.0.0.1", dialog)  # type: ignore[arg-type]
    return call, endpoint, make_response(invite, 200, to_tag=server.local_tag)


async def test_2xx_resent_at_t1_doubling_to_t2_until_the_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call, endpoint, ok = make_call()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        call.media.open(nursery)
        call._retransmit_until_ack(call.a, ok)
        nursery.start_soon(call._talk)
        await trio.sleep(8.0)
        # T1 = 0.5 s, then 1, 2, 4 (T2), 4...
        assert [t - start for t in endpoint.resent] == [0.5, 1.5, 3.5, 7.5]
        call.a.acked.set()
        await trio.sleep(20.0)
        assert len(endpoint.resent) == 4
        assert call.record.end is None
        call.end("caller-bye")
        await trio.sleep(0)
        nursery.cancel_scope.cancel()
    call.media.close()


async def test_no_ack_within_64_t1_ends_the_call_with_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call, endpoint, ok = make_call()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        call.media.open(nursery)
        call._retransmit_until_ack(call.a, ok)
        await call._talk()
        nursery.cancel_scope.cancel()
    call.media.close()
    offsets = [t - start for t in endpoint.resent]
    assert offsets == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert (call.record.end_reason, call.record.sip_status) == ("no-ack", 408)
    assert trio.current_time() - start == 35.5  # the first wake-up past 64*T1 gives up
