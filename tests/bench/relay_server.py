"""edgegw's media relay as a benchmark peer: N MediaSessions under Trio, set up as a call does.

Not a test and not part of the product: the relay half of
:mod:`tests.bench.bench_srtp_relay`, run in its own process so that its CPU
time and memory are the relay's alone (the parent pins it to a core).

Protocol, one JSON line each way (the parent plays both SIP peers' SDP):

* stdin, the request: ``{"streams": [{"a": LEG, "b": LEG}, ...], "payload_type": 8,
  "port_min": P, "port_max": Q, "traced": M}`` where ``LEG`` is
  ``{"remote": [host, port], "crypto": VALUE or null}``: the address the peer
  announced and, for an SRTP leg, the a=crypto value it offered.
* stdout, the answer: ``{"streams": [{"a": {"port": p, "crypto": VALUE or null},
  "b": ...}, ...], "rss_before": bytes, "rss_after": bytes,
  "traced_per_session": bytes}``: the relay's port per leg and, for an SRTP
  leg, the key it protects with (its SDP answer).

Each stream becomes a :class:`gateway.media.relay.MediaSession` opened on one
shared nursery, configured as :meth:`gateway.calls.call_media.CallMedia.apply`
does: ``set_remote`` on both legs, then ``configure`` per leg with the payload
type map and, on an SRTP leg, ``SrtpReceiver(peer's key)`` and
``SrtpSender(a fresh key of the same suite)``.

Memory: ``rss_before`` and ``rss_after`` bracket the creation of the N
sessions (after a garbage collection each); ``traced_per_session`` is the
Python heap (tracemalloc) of ``traced`` more sessions set up the same way, then
closed before any traffic (tracemalloc slows every allocation, so it is off
during the load). The relay runs until stdin closes, then prints a last JSON
line with its counters: packets relayed per leg and drops by reason.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

import trio

from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.srtp import SrtpReceiver, SrtpSender, new_crypto, parse_crypto
from tests.bench.media_load import rss_bytes

__all__ = ["main"]

HOST = "127.0.0.1"
# The gateway's default latch window (gateway.config, media.latch_window).
_LATCH_WINDOW = 5.0
_SETTLE = 0.2  # seconds for new sessions' pump tasks to reach their first wait


@dataclass(frozen=True)
class LegRequest:
    remote: tuple[str, int]
    crypto: str | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LegRequest:
        host, port = raw["remote"]
        return cls((str(host), int(port)), raw.get("crypto"))


def start_session(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    legs: dict[str, LegRequest],
    payload_type: int,
) -> tuple[MediaSession, dict[str, Any]]:
    """One relayed call's media, opened and configured; the answer for its legs."""
    session = MediaSession(allocator, host_for_sdp=HOST, latch_window=_LATCH_WINDOW)
    ports = session.open(nursery)
    for leg, request in legs.items():
        session.set_remote(leg, *request.remote)
    answer: dict[str, Any] = {}
    for leg, request in legs.items():
        receiver = sender = None
        crypto: str | None = None
        if request.crypto is not None:
            offered = parse_crypto(request.crypto)
            suite = offered.known_suite
            if suite is None:
                raise ValueError(f"leg {leg}: crypto suite {offered.suite!r} is not implemented")
            ours = new_crypto(offered.tag, suite)
            receiver, sender = SrtpReceiver(offered), SrtpSender(ours)
            crypto = ours.to_value()
        session.configure(
            leg, receiver=receiver, sender=sender, payload_types={payload_type: payload_type}
        )
        answer[leg] = {"port": ports[leg][0], "crypto": crypto}
    return session, answer


def _settled_rss() -> int:
    gc.collect()
    return rss_bytes(os.getpid())


async def _traced_per_session(
    allocator: PortAllocator, requests: list[dict[str, LegRequest]], payload_type: int
) -> float:
    """Python heap bytes per session for ``requests``, measured on sessions closed at once."""
    if not requests:
        return 0.0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sessions: list[MediaSession] = []
    async with trio.open_nursery() as nursery:
        for legs in requests:
            sessions.append(start_session(nursery, allocator, legs, payload_type)[0])
        await trio.sleep(_SETTLE)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
        nursery.cancel_scope.cancel()
    tracemalloc.stop()
    for session in sessions:
        session.close()
    return traced / len(requests)


async def serve(request: dict[str, Any]) -> dict[str, Any]:
    """Relay the requested streams until stdin closes; the final counters."""
    allocator = PortAllocator(HOST, int(request["port_min"]), int(request["port_max"]))
    payload_type = int(request["payload_type"])
    streams = [
        {leg: LegRequest.from_json(raw[leg]) for leg in ("a", "b")} for raw in request["streams"]
    ]
    sessions: list[MediaSession] = []
    try:
        async with trio.open_nursery() as nursery:
            await trio.sleep(_SETTLE)
            rss_before = _settled_rss()
            answers = []
            for legs in streams:
                session, answer = start_session(nursery, allocator, legs, payload_type)
                sessions.append(session)
                answers.append(answer)
            await trio.sleep(_SETTLE)
            rss_after = _settled_rss()
            traced_count = min(int(request.get("traced", 0)), len(streams))
            traced = await _traced_per_session(allocator, streams[:traced_count], payload_type)
            _say(
                {
                    "streams": answers,
                    "rss_before": rss_before,
                    "rss_after": rss_after,
                    "traced_per_session": traced,
                }
            )
            await _until_stdin_closes()
            nursery.cancel_scope.cancel()
    finally:
        for session in sessions:
            session.close()
    return _counters(sessions)


async def _until_stdin_closes() -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some():
            pass


def _counters(sessions: list[MediaSession]) -> dict[str, Any]:
    relayed = {"a": 0, "b": 0}
    drops: dict[str, int] = {}
    for session in sessions:
        stats = session.stats()
        for leg in ("a", "b"):
            relayed[leg] += stats[leg]["packets_out"]
            for reason, count in stats[leg]["drops"].items():
                drops[reason] = drops.get(reason, 0) + count
    return {"relayed_to": relayed, "drops": drops}


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    line = sys.stdin.buffer.readline()
    if not line:
        raise SystemExit("relay_server: no request on stdin")
    _say(trio.run(serve, json.loads(line)))


if __name__ == "__main__":
    main()
