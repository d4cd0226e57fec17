"""edgegw's media relay as a benchmark peer: N MediaSessions under Trio, set up as a call does.

Not a test and not part of the product: the relay half of
:mod:`tests.bench.bench_srtp_relay`, run in its own process so that its CPU
time and memory are the relay's alone (the parent pins it to a core).

Protocol, one JSON line each way (the parent plays both SIP peers' SDP):

* stdin, the request: ``{"streams": [{"a": LEG, "b": LEG}, ...], "payload_type": 8,
  "port_min": P, "port_max": Q, "traced": M, "transcode": PLAN}`` where ``LEG`` is
  ``{"remote": [host, port], "crypto": VALUE or null}``: the address the peer
  announced and, for an SRTP leg, the a=crypto value it offered. ``transcode``
  is optional: ``{"a": CODEC, "b": CODEC, "ptime": 20}`` with ``CODEC``
  ``{"encoding": "opus", "payload_type": 111, "clock_rate": 48000, "channels": 2,
  "fmtp": "useinbandfec=1"}``, the codec each leg negotiated; without it the
  sessions relay ``payload_type`` unchanged.
* stdout, the answer: ``{"streams": [{"a": {"port": p, "crypto": VALUE or null},
  "b": ...}, ...], "rss_before": bytes, "rss_after": bytes,
  "traced_per_session": bytes}``: the relay's port per leg and, for an SRTP
  leg, the key it protects with (its SDP answer).

Each stream becomes a :class:`gateway.media.relay.MediaSession` opened on one
shared nursery, configured as :meth:`gateway.calls.call_media.CallMedia.apply`
does: ``set_remote`` on both legs, then ``configure`` per leg with the payload
type map and, on an SRTP leg, ``SrtpReceiver(peer's key)`` and
``SrtpSender(a fresh key of the same suite)``. With a ``transcode`` plan the
session is handed to a :class:`gateway.calls.call_media.CallMedia` (with the
transcoding settings of the default ``[media]`` section,
:func:`gateway.calls.call_media.transcode_settings`) and the plan the
negotiator would have agreed (each leg's codec, its address, and on an SRTP
leg the peer's key and a fresh one of ours) goes to ``CallMedia.apply``: it
points the legs at the peers, gives them their keys and empty payload-type
maps, builds the codecs (``make_pair``) and one Transcoder per direction with
whatever taps a call adds, and starts transcoding, as in a call.

Memory: ``rss_before`` and ``rss_after`` bracket the creation of the N
sessions (after a garbage collection each); ``traced_per_session`` is the
Python heap (tracemalloc) of ``traced`` more sessions set up the same way, then
closed before any traffic (tracemalloc slows every allocation, so it is off
during the load). The relay runs until stdin closes, then prints a last JSON
line with its counters; a ``{"stats": true}`` line on stdin before that gets
the counters so far, on one line. The counters: packets relayed per leg, drops
by reason, and when transcoding the transcoders' counters summed per direction
(``"transcoded": {"a->b": {...}, "b->a": {...}}``: packets in and out, lost,
late, concealed, recovered...).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.calls.call_media import CallMedia, TranscodeSettings, transcode_settings
from gateway.calls.negotiation import Codec, LegMedia, MediaPlan
from gateway.config import MediaConfig
from gateway.logs import configure_logging
from gateway.media.codecs import make_pair
from gateway.media.relay import MediaSession, PortAllocator
from gateway.media.srtp import (
    CryptoAttribute,
    SrtpReceiver,
    SrtpSender,
    new_crypto,
    parse_crypto,
)
from gateway.media.transcode import StreamFormat, Transcoder
from tests.bench.media_load import rss_bytes

__all__ = ["main"]

HOST = "127.0.0.1"
# The gateway's default latch window (gateway.config, media.latch_window).
_LATCH_WINDOW = 5.0
_SETTLE = 0.2  # seconds for new sessions' pump tasks to reach their first wait
# Transcoder counters summed per direction in the final report.
_TRANSCODER_COUNTERS = (
    "packets_in",
    "packets_out",
    "lost",
    "late",
    "discarded",
    "concealed",
    "recovered",
    "decode_errors",
    "malformed",
    "unknown_payload_type",
)


@dataclass(frozen=True)
class LegRequest:
    remote: tuple[str, int]
    crypto: str | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LegRequest:
        host, port = raw["remote"]
        return cls((str(host), int(port)), raw.get("crypto"))


@dataclass(frozen=True)
class TranscodePlan:
    """The codec each leg negotiated and the ptime both keep, as a call's plan has them."""

    a: Codec
    b: Codec
    ptime: int = 20
    settings: TranscodeSettings = field(default_factory=lambda: transcode_settings(MediaConfig()))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TranscodePlan:
        return cls(_codec(raw["a"]), _codec(raw["b"]), int(raw.get("ptime", 20)))

    def leg(
        self,
        side: str,
        remote: tuple[str, int],
        local_key: CryptoAttribute | None,
        remote_key: CryptoAttribute | None,
    ) -> LegMedia:
        """One leg of the plan as the negotiator would have agreed it."""
        host, port = remote
        return LegMedia(
            host=host,
            rtp_port=port,
            rtcp_port=port + 1,
            rtcp_mux=False,
            codec=self.a if side == "a" else self.b,
            telephone_event=None,
            comfort_noise=None,
            ptime=self.ptime,
            direction="sendrecv",
            srtp_local=local_key,
            srtp_remote=remote_key,
        )

    def transcoders(self) -> tuple[Transcoder, Transcoder]:
        """A to B and B to A with CallMedia's recipe, for sans-IO use (no session, no taps).

        The relay server itself does not use this: it hands the plan to
        :meth:`CallMedia.apply`, which builds the transcoders the product uses.
        """
        codec_a, codec_b = make_pair(self.a, self.b, self.settings.opus)
        a = StreamFormat(payload_type=self.a.payload_type, ptime=self.ptime)
        b = StreamFormat(payload_type=self.b.payload_type, ptime=self.ptime)
        jitter = self.settings.jitter
        return (
            Transcoder(codec_a, codec_b, a, b, jitter=jitter),
            Transcoder(codec_b, codec_a, b, a, jitter=jitter),
        )


def _codec(raw: dict[str, Any]) -> Codec:
    return Codec(
        str(raw["encoding"]),
        int(raw["payload_type"]),
        int(raw["clock_rate"]),
        int(raw.get("channels", 1)),
        raw.get("fmtp"),
    )


def start_session(
    nursery: trio.Nursery,
    allocator: PortAllocator,
    legs: dict[str, LegRequest],
    payload_type: int,
    transcode: TranscodePlan | None = None,
) -> tuple[MediaSession, dict[str, Any]]:
    """One call's media, opened and configured; the answer for its legs.

    It relays ``payload_type`` unchanged, or transcodes as ``transcode`` says.
    """
    session = MediaSession(allocator, host_for_sdp=HOST, latch_window=_LATCH_WINDOW)
    ports = session.open(nursery)
    if transcode is not None:
        return session, _apply_plan(session, ports, legs, transcode)
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


def _apply_plan(
    session: MediaSession,
    ports: dict[str, tuple[int, int]],
    legs: dict[str, LegRequest],
    transcode: TranscodePlan,
) -> dict[str, Any]:
    """Transcode through the call's own media object: CallMedia.apply of the agreed plan."""
    agreed: dict[str, LegMedia] = {}
    answer: dict[str, Any] = {}
    for leg, request in legs.items():
        local_key = remote_key = None
        if request.crypto is not None:
            remote_key = parse_crypto(request.crypto)
            suite = remote_key.known_suite
            if suite is None:
                raise ValueError(f"leg {leg}: crypto suite {remote_key.suite!r} is not implemented")
            local_key = new_crypto(remote_key.tag, suite)
        agreed[leg] = transcode.leg(leg, request.remote, local_key, remote_key)
        answer[leg] = {
            "port": ports[leg][0],
            "crypto": None if local_key is None else local_key.to_value(),
        }
    media = CallMedia(session, {}, {}, call_id="bench", settings=transcode.settings)
    media.apply(MediaPlan(agreed["a"], agreed["b"]))
    return answer


def _settled_rss() -> int:
    gc.collect()
    return rss_bytes(os.getpid())


async def _traced_per_session(
    allocator: PortAllocator,
    requests: list[dict[str, LegRequest]],
    payload_type: int,
    transcode: TranscodePlan | None,
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
            sessions.append(start_session(nursery, allocator, legs, payload_type, transcode)[0])
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
    payload_type = int(request.get("payload_type", 8))
    raw_plan = request.get("transcode")
    transcode = None if raw_plan is None else TranscodePlan.from_json(raw_plan)
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
                session, answer = start_session(nursery, allocator, legs, payload_type, transcode)
                sessions.append(session)
                answers.append(answer)
            await trio.sleep(_SETTLE)
            rss_after = _settled_rss()
            traced_count = min(int(request.get("traced", 0)), len(streams))
            traced = await _traced_per_session(
                allocator, streams[:traced_count], payload_type, transcode
            )
            _say(
                {
                    "streams": answers,
                    "rss_before": rss_before,
                    "rss_after": rss_after,
                    "traced_per_session": traced,
                }
            )
            await _until_stdin_closes(sessions)
            nursery.cancel_scope.cancel()
    finally:
        for session in sessions:
            session.close()
    return _counters(sessions)


async def _until_stdin_closes(sessions: list[MediaSession]) -> None:
    """Answer each ``{"stats": true}`` line with the counters so far, until stdin closes."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    pending = b""
    async with stream:
        while chunk := await stream.receive_some():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip() and json.loads(line).get("stats"):
                    _say(_counters(sessions))


def _counters(sessions: list[MediaSession]) -> dict[str, Any]:
    relayed = {"a": 0, "b": 0}
    drops: dict[str, int] = {}
    transcoded: dict[str, dict[str, int]] = {}
    for session in sessions:
        stats = session.stats()
        for leg in ("a", "b"):
            relayed[leg] += stats[leg]["packets_out"]
            for reason, count in stats[leg]["drops"].items():
                drops[reason] = drops.get(reason, 0) + count
            inbound = stats[leg].get("transcoding", {}).get("in")
            if inbound is not None:
                sums = transcoded.setdefault("a->b" if leg == "a" else "b->a", {})
                for name in _TRANSCODER_COUNTERS:
                    sums[name] = sums.get(name, 0) + int(inbound[name])
    result: dict[str, Any] = {"relayed_to": relayed, "drops": drops}
    if transcoded:
        result["transcoded"] = transcoded
    return result


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    # stdout is the protocol: the gateway's logs go to stderr, warnings only, as in a
    # deployment that does not log every call.
    configure_logging("warning")
    line = sys.stdin.buffer.readline()
    if not line:
        raise SystemExit("relay_server: no request on stdin")
    _say(trio.run(serve, json.loads(line)))


if __name__ == "__main__":
    main()
