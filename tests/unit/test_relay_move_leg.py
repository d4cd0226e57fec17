"""MediaSession.move_leg: the callee leg moves to another role's address mid-call.

The story: leg b first binds on the access address (127.0.0.1) for an app that
does not answer; the route falls back to a carrier trunk, and leg b moves to the
carrier address (127.0.0.2) while the relay runs. Real UDP sockets; "the old
sockets are closed" is proven by binding their ports again.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import pytest
import trio

from gateway.media.addresses import MediaAddress, MediaAddresses
from gateway.media.codecs import make_codec
from gateway.media.relay import LocalPorts, MediaSession, PortAllocator, PortsExhausted
from gateway.media.rtp import parse_rtp_header
from gateway.media.srtp import SrtpReceiver, SrtpSender, SrtpSuite, new_crypto
from tests.unit.test_media_addresses import (
    ACCESS_HOST,
    CARRIER_HOST,
    CARRIER_PUBLIC,
    Phone,
    local_host,
    role_addresses,
)
from tests.unit.test_relay import FakeClock, free_pair, rtcp_rr, rtp
from tests.unit.test_relay_transcode import APP_HZ, OPUS, tone, transcoders


@dataclass
class Call:
    session: MediaSession
    ports: LocalPorts
    access: PortAllocator
    carrier: PortAllocator
    app: Phone  # the caller, on leg a
    callee_app: Phone  # leg b's first peer (access side), who will not answer
    trunk: Phone  # leg b's peer after the fallback (carrier side)


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    """Leg a and leg b both on the access address, relaying plain RTP."""
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    app, callee_app = await Phone.bind(ACCESS_HOST), await Phone.bind(ACCESS_HOST)
    trunk = await Phone.bind(CARRIER_HOST)
    async with trio.open_nursery() as nursery:
        ports = session.open(nursery, roles={"a": "access", "b": "access"})
        session.set_remote("a", app.host, app.port)
        session.set_remote("b", callee_app.host, callee_app.port)
        yield Call(session, ports, access, carrier, app, callee_app, trunk)
        nursery.cancel_scope.cancel()
    session.close()
    for phone in (app, callee_app, trunk):
        phone.close()
    assert (access.in_use, carrier.in_use) == (0, 0)


async def released(allocator: PortAllocator, in_use: int) -> None:
    """Wait until the old loops have exited and their pair is back in ``allocator``."""
    with trio.fail_after(2):
        while allocator.in_use != in_use:
            await trio.sleep(0.001)


def assert_port_free(host: str, port: int) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, port))  # the relay never shares a port: this fails while it is open
    finally:
        probe.close()


async def test_move_leg_to_the_carrier_address_while_relaying(call: Call) -> None:
    session, ports = call.session, call.ports
    await call.app.send(rtp(1), ports["a"][0])
    assert await call.callee_app.recv() == (rtp(1), (ACCESS_HOST, ports["b"][0]))
    assert (call.access.in_use, call.carrier.in_use) == (2, 0)

    moved = session.move_leg("b", "carrier")
    assert moved != ports["b"]
    assert session.local_ports == {"a": ports["a"], "b": moved}
    assert local_host(session, "b") == (CARRIER_HOST, moved[0])
    assert session.sdp_host("b") == CARRIER_PUBLIC
    # The leg forgot its old peer: nothing to send to until the new SDP arrives.
    for stream in ("rtp", "rtcp"):
        assert session.stats()["b"][stream]["expected"] is None
        assert session.stats()["b"][stream]["latched"] is None
    await released(call.access, 1)
    assert (call.access.in_use, call.carrier.in_use) == (1, 1)
    assert_port_free(ACCESS_HOST, ports["b"][0])
    assert_port_free(ACCESS_HOST, ports["b"][1])

    await call.app.send(rtp(2), ports["a"][0])  # no destination yet on leg b: dropped
    await call.callee_app.assert_quiet()
    assert session.stats()["a"]["drops"] == {"no-destination": 1}

    session.set_remote("b", call.trunk.host, call.trunk.port)
    for seq in range(3, 8):
        await call.app.send(rtp(seq), ports["a"][0])
        assert await call.trunk.recv() == (rtp(seq), (CARRIER_HOST, moved[0]))
        await call.trunk.send(rtp(100 + seq), moved[0])
        assert await call.app.recv() == (rtp(100 + seq), (ACCESS_HOST, ports["a"][0]))
    await call.callee_app.assert_quiet()
    assert session.stats()["b"]["rtp"]["packets_in"] == 5


async def test_rtcp_follows_the_moved_leg(call: Call) -> None:
    session, ports = call.session, call.ports
    moved = session.move_leg("b", "carrier")
    trunk_rtcp = await Phone.bind(CARRIER_HOST)
    try:
        session.set_remote("b", call.trunk.host, call.trunk.port, trunk_rtcp.port)
        await call.app.send(rtcp_rr(), ports["a"][1])
        assert await trunk_rtcp.recv() == (rtcp_rr(), (CARRIER_HOST, moved[1]))
        await trunk_rtcp.send(rtcp_rr(), moved[1])
        assert await call.app.recv() == (rtcp_rr(), (ACCESS_HOST, ports["a"][1]))
    finally:
        trunk_rtcp.close()


async def test_moving_to_the_same_address_changes_nothing(call: Call) -> None:
    session, ports = call.session, call.ports
    assert session.move_leg("b", "access") == ports["b"]
    # A role without addresses of its own lands on the default: access, where b is.
    assert session.move_leg("b", "mgmt", socket.AF_INET) == ports["b"]
    assert (call.access.in_use, call.carrier.in_use) == (2, 0)
    # Still latched toward the same peer: no new SDP needed.
    await call.app.send(rtp(1), ports["a"][0])
    assert await call.callee_app.recv() == (rtp(1), (ACCESS_HOST, ports["b"][0]))
    await call.callee_app.send(rtp(2), ports["b"][0])
    assert (await call.app.recv())[0] == rtp(2)


async def test_move_without_free_ports_leaves_the_old_pair_working() -> None:
    base = free_pair(2)
    access = PortAllocator(ACCESS_HOST, base, base + 3)
    carrier = PortAllocator(CARRIER_HOST, base, base + 1)  # a single pair, taken below
    addresses = MediaAddresses(
        [
            MediaAddress("access", access, ACCESS_HOST),
            MediaAddress("carrier", carrier, CARRIER_HOST),
        ]
    )
    taken = carrier.allocate()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    app, callee = await Phone.bind(ACCESS_HOST), await Phone.bind(ACCESS_HOST)
    try:
        async with trio.open_nursery() as nursery:
            ports = session.open(nursery, roles={"a": "access", "b": "access"})
            session.set_remote("a", app.host, app.port)
            session.set_remote("b", callee.host, callee.port)
            await app.send(rtp(1), ports["a"][0])
            assert (await callee.recv())[0] == rtp(1)
            with pytest.raises(
                PortsExhausted, match=r"no free RTP/RTCP port pair in 127\.0\.0\.2 "
            ):
                session.move_leg("b", "carrier")
            assert session.local_ports == ports
            assert session.sdp_host("b") == ACCESS_HOST
            assert (access.in_use, carrier.in_use) == (2, 1)
            await app.send(rtp(2), ports["a"][0])
            assert await callee.recv() == (rtp(2), (ACCESS_HOST, ports["b"][0]))
            await callee.send(rtp(3), ports["b"][0])
            assert (await app.recv())[0] == rtp(3)
            nursery.cancel_scope.cancel()
    finally:
        session.close()
        taken.close()
        app.close()
        callee.close()
    assert (access.in_use, carrier.in_use) == (0, 0)


async def test_move_with_srtp_on_the_other_leg_in_task_mode() -> None:
    """run() (task mode), leg a SRTP: the moved plain leg b still gets decrypted media."""
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    app, trunk = await Phone.bind(ACCESS_HOST), await Phone.bind(CARRIER_HOST)
    suite = SrtpSuite.AES_CM_128_HMAC_SHA1_80
    app_key, relay_key = new_crypto(1, suite), new_crypto(1, suite)
    app_tx, app_rx = SrtpSender(app_key), SrtpReceiver(relay_key)
    try:
        async with trio.open_nursery() as nursery:
            ports: LocalPorts = await nursery.start(
                partial(session.run, roles={"a": "access", "b": "access"})
            )
            session.set_remote("a", app.host, app.port)
            session.configure("a", receiver=SrtpReceiver(app_key), sender=SrtpSender(relay_key))
            moved = session.move_leg("b", "carrier")
            session.set_remote("b", trunk.host, trunk.port)
            await released(access, 1)
            for seq in range(1, 4):
                await app.send(app_tx.protect_rtp(rtp(seq)), ports["a"][0])
                assert await trunk.recv() == (rtp(seq), (CARRIER_HOST, moved[0]))
                await trunk.send(rtp(10 + seq), moved[0])
                data, _ = await app.recv()
                assert app_rx.unprotect_rtp(data) == rtp(10 + seq)
            nursery.cancel_scope.cancel()
    finally:
        app.close()
        trunk.close()
    assert (access.in_use, carrier.in_use) == (0, 0)  # run() closed what was current


async def test_transcoded_media_leaves_through_the_new_pair(call: Call) -> None:
    """The playout and report tasks look the socket up per send: they use the new pair."""
    session, ports = call.session, call.ports
    a_to_b, b_to_a = transcoders()  # opus on leg a, PCMA 30 ms on leg b
    session.start_transcoding(a_to_b, b_to_a, rtcp_interval=0.1)
    moved = session.move_leg("b", "carrier")
    trunk_rtcp = await Phone.bind(CARRIER_HOST)
    try:
        session.set_remote("b", call.trunk.host, call.trunk.port, trunk_rtcp.port)
        opus = make_codec(OPUS)
        payload = opus.encode(tone(48000, APP_HZ, 0.02).tobytes())
        for seq in range(6):
            packet = bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
            await call.app.send(packet + (77).to_bytes(4, "big") + payload, ports["a"][0])
        data, source = await call.trunk.recv()
        assert source == (CARRIER_HOST, moved[0])
        header = parse_rtp_header(data)
        assert header is not None
        assert (header.payload_type, header.ssrc) == (8, a_to_b.ssrc)
        _, source = await trunk_rtcp.recv()  # the gateway's own report toward the trunk
        assert source == (CARRIER_HOST, moved[1])
        await call.callee_app.assert_quiet()
    finally:
        trunk_rtcp.close()
        session.stop_transcoding()


async def test_moves_back_and_forth_then_cancel_leak_nothing() -> None:
    """Two moves without a checkpoint between, then the call ends at once (open mode)."""
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    async with trio.open_nursery() as nursery:
        first = session.open(nursery, roles={"b": "access"})
        there = session.move_leg("b", "carrier")
        back = session.move_leg("b", "access")
        assert len({first["b"], there, back}) == 3
        assert (access.in_use, carrier.in_use) == (3, 1)  # retired pairs wait for their loops
        nursery.cancel_scope.cancel()
    assert (access.in_use, carrier.in_use) == (2, 0)  # the old loops closed the retired pairs
    session.close()
    session.close()
    assert (access.in_use, carrier.in_use) == (0, 0)
    with pytest.raises(RuntimeError, match="media session is closed"):
        session.move_leg("b", "carrier")


async def test_close_right_after_a_move_frees_every_port() -> None:
    """The call ends in the same step as the move: the old loops have not exited yet."""
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    async with trio.open_nursery() as nursery:
        session.open(nursery)
        await trio.sleep(0.01)  # the loops are waiting on the access sockets
        session.move_leg("b", "carrier")
        session.close()
        assert (access.in_use, carrier.in_use) == (0, 0)
        nursery.cancel_scope.cancel()
    assert (access.in_use, carrier.in_use) == (0, 0)


async def test_move_before_start_or_after_the_relay_ended_binds_nothing() -> None:
    addresses, access, carrier = role_addresses()
    session = MediaSession(addresses, latch_window=10.0, clock=FakeClock())
    with pytest.raises(RuntimeError, match="not started"):
        session.move_leg("b", "carrier")
    async with trio.open_nursery() as nursery:
        session.open(nursery)
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="closed to new arrivals"):  # trio's: nursery is over
        session.move_leg("b", "carrier")
    assert (access.in_use, carrier.in_use) == (2, 0)
    session.close()
    assert (access.in_use, carrier.in_use) == (0, 0)


async def test_move_leg_refuses_an_unknown_leg(call: Call) -> None:
    with pytest.raises(ValueError, match="unknown leg 'c'"):
        call.session.move_leg("c", "carrier")
