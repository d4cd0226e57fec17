"""Benchmark: Opus<->G.711 transcoding, edgegw against rtpengine, same load, same run.

A figure, not a test (DESIGN "Targets": transcoding calls per core >= 1.5x
rtpengine and >= 100; issue 3 asks for at least parity; added latency <= 40 ms
with the jitter buffer; <= 200 KiB per transcoded call; speech quality). Every
call has two legs on loopback, driven by the load generator of
:mod:`tests.bench.media_load` pinned to one core:

* leg A is an app: it sends Opus (mono, 20 ms, 32 kb/s, in-band FEC,
  complexity 10 as baresip sets libopus up), pre-encoded once from the
  reference speech of :mod:`tests.speech` at 48 kHz and looped with fresh
  sequence numbers and timestamps, and receives Opus;
* leg B is a carrier: it sends PCMA 20 ms of the same speech at 8 kHz and
  receives PCMA.

Both relays carry the same calls one after the other, each pinned to the
other core:

* edgegw: :mod:`tests.bench.relay_server` in transcoding mode: N
  ``MediaSession`` s, each handed with the agreed Opus<->PCMA plan to a call's
  own :class:`~gateway.calls.call_media.CallMedia` (``apply``), so codecs,
  transcoders and their taps are the product's, with the default ``[media]``
  settings (Opus 32 kb/s, complexity 5, FEC; jitter buffer from 30 ms);
* rtpengine 10.5 userspace (``--table=-1``): one call per stream over ng; the
  offer from A (Opus) carries the flags ``codec-mask-all`` and
  ``codec-transcode-PCMA``, so the offer toward B holds PCMA only and B's PCMA
  answer makes rtpengine transcode (it answers A with Opus; checked per call).

With ``--srtp`` leg A is SRTP (AES_CM_128_HMAC_SHA1_80) on both relays.

Loss. A transcoder keeps the packet rate (20 ms in, 20 ms out), so the
generator counts, per direction, the packets sent in the window and those that
arrived in a window of the same length (:class:`~tests.bench.media_load.Payloads`).
That misses what edgegw's jitter buffer hides: a packet lost on the way in or
too late for its slot still gives a (concealed) packet out. So edgegw's
transcoders are asked for their counters twice inside the window, and the
packets that never arrived, came too late or were dropped to shrink the delay
count too ("relay loss"). rtpengine here has no jitter buffer: a packet it
loses gives none out. A point is clean while its loss is at most 0.1 %, the
relay used under 97 % of its core (above, it is saturated: its figures are
queueing) and the generator kept its schedule; the sweep stops for a relay at
its first point that is not clean.

Figures per point: packets in and out, loss, relay loss, the relay's
CPU-seconds over the window (``/proc/PID/task/*/schedstat``), the share of its
core other processes used meanwhile ("others", from ``/proc/stat``: on a shared
machine they delay the relay, so both relays run under SCHED_RR by default,
``--relay-rt 0`` for nice -10 only), CPU-seconds per call-second, the calls one core would carry at
that cost, the mean bitrate of the Opus each relay sends toward A, and memory
per call (RSS growth of the relay process after set-up and after the load; for
edgegw also the Python heap per session from tracemalloc). Then "calls per
core before loss > 0.1 %": the largest clean point swept, and the projection
from the CPU cost at that point, and the ratio edgegw/rtpengine of both.

Latency: a transcoder rewrites the payload, so no stamp rides through. A
separate one-call probe per relay sends 5 ms tone bursts ("clicks") every
200 ms on each leg, decodes what arrives on the other leg, and times each
click from when the packet carrying it was sent to when the packet carrying
it decoded came out, at the sample: p50/p99 per direction. The probe's legs
are plain RTP. The figures include the codecs' own delay (Opus look-ahead),
printed alone for scale.

Speech quality, sans-IO (no sockets): reference speech encoded by the app,
through edgegw's transcoders (built with CallMedia's recipe) to the carrier,
PESQ nb at 8 kHz against the reference; clean and with 5 % random loss on the
app leg; and the round trip through a carrier that echoes the PCMA, decoded by
the app with FEC and PLC, with 5 % loss on the app leg uplink only and both ways.

Run: ``.venv/bin/python -m tests.bench.bench_transcode [--calls 10,20,25,30,35,40,50]
[--seconds 4] [--warmup 1.5] [--relays edgegw,rtpengine] [--srtp] [--no-probe]
[--no-pesq] [--loss-limit 0.1] [--nice -10] [--generator-rt 10] [--relay-rt 20]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.calls.negotiation import Codec as SdpCodec
from gateway.media.codecs import AudioCodec, OpusSettings, make_codec
from gateway.media.g711 import G711Codec
from gateway.media.opus import OpusDecoder, OpusEncoder
from gateway.media.rtp import parse_rtp_header
from gateway.media.srtp import CryptoAttribute, SrtpSuite, parse_crypto
from gateway.media.transcode import Transcoder
from tests.bench.bench_srtp_relay import (
    BenchError,
    EdgegwRelay,
    Mode,
    Placement,
    Relay,
    RtpengineRelay,
    Run,
    _learn,
)
from tests.bench.media_load import (
    Codec,
    GenStream,
    LoadError,
    LoadReport,
    Payloads,
    Traffic,
    rss_bytes,
    run_load,
)
from tests.bench.relay_server import TranscodePlan
from tests.bench.rtpengine import (
    BValue,
    NgError,
    NgTimeout,
    RtpEngineError,
    rtpengine_version,
)
from tests.speech import (
    Audio,
    SpeechError,
    pesq_score,
    read_wav,
    reference_speech,
    speech_tools_missing,
)

HOST = "127.0.0.1"
# The codecs each leg negotiates: the app offers Opus as baresip does, the carrier PCMA.
OPUS: Final = SdpCodec("opus", 111, 48000, 2, "useinbandfec=1")
PCMA: Final = SdpCodec("PCMA", 8, 8000)
PTIME: Final = 20
OPUS_SAMPLES: Final = 48000 * PTIME // 1000
PCMA_SAMPLES: Final = 8000 * PTIME // 1000
# The app's encoder (baresip's libopus set-up): 32 kb/s, FEC sized for 5 % loss.
APP_OPUS: Final = OpusSettings(bitrate=32000, complexity=10, fec=True, packet_loss_percent=5)
# rtpengine's ng flags that make it transcode (INTEROP.md): the offer toward B loses every
# codec of A's offer and gains PCMA, which rtpengine transcodes to and from Opus.
RTPENGINE_FLAGS: Final = ("codec-mask-all", "codec-transcode-PCMA")
_SRTP_SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
# The sweep, fine around the 30 to 45 calls a core carries on the 2-vCPU build machine.
_CALLS = (10, 20, 25, 30, 35, 40, 45, 50, 60, 80, 100)
_NICE = -10
_GENERATOR_RT = 10
# Both relays run under SCHED_RR at this priority (root only): on a shared machine other
# processes on the relays' core would otherwise delay them, and a transcoder's jitter
# buffer turns such delays into loss. Each point lasts seconds, and the kernel's RT
# throttling leaves the core's other processes 5 %.
_RELAY_RT = 20
# A relay busy this share of the window has no headroom left: the sweep stops there too.
_SATURATED = 0.97
_LOSS_LIMIT = 0.001
# A relay whose core ran others' work this share of the window shared it.
_CONTENDED = 0.05
# The whole bench stops sweeping once this many seconds have gone by.
_BUDGET = 150.0
_HEADER = struct.Struct("!BBHII")
_FULL_SCALE = 32768.0


# ---- what the legs send ------------------------------------------------------------------


def _speech(rate: int) -> npt.NDArray[np.int16]:
    samples = read_wav(reference_speech(rate)).samples
    return np.clip(np.round(samples), -32768, 32767).astype("<i2")


def _frames(pcm: npt.NDArray[np.int16], size: int) -> Iterator[bytes]:
    for start in range(0, len(pcm) - size + 1, size):
        yield pcm[start : start + size].tobytes()


def app_encoder() -> OpusEncoder:
    """The app's libopus encoder at 48 kHz (see APP_OPUS)."""
    return OpusEncoder(
        48000,
        1,
        bitrate=APP_OPUS.bitrate,
        complexity=APP_OPUS.complexity,
        fec=APP_OPUS.fec,
        packet_loss_percent=APP_OPUS.packet_loss_percent,
    )


def app_payloads() -> tuple[bytes, ...]:
    """The reference speech as the app sends it: Opus packets of 20 ms, encoded once."""
    encoder = app_encoder()
    return tuple(encoder.encode(frame) for frame in _frames(_speech(48000), OPUS_SAMPLES))


def carrier_payloads() -> tuple[bytes, ...]:
    """The reference speech as the carrier sends it: PCMA packets of 20 ms."""
    codec = G711Codec("PCMA")
    return tuple(codec.encode(frame) for frame in _frames(_speech(8000), PCMA_SAMPLES))


def transcoded_traffic(seconds: float, warmup: float) -> Traffic:
    """A to B: Opus in, PCMA out; B to A: PCMA in, Opus out; 50 packets per second each."""
    return Traffic(
        codec=Codec(),
        seconds=seconds,
        warmup=warmup,
        linger=0.3,
        transcoded=(
            Payloads(OPUS.payload_type, OPUS_SAMPLES, app_payloads(), PCMA.payload_type),
            Payloads(PCMA.payload_type, PCMA_SAMPLES, carrier_payloads(), OPUS.payload_type),
        ),
    )


def _codec_json(codec: SdpCodec) -> dict[str, Any]:
    return {
        "encoding": codec.encoding,
        "payload_type": codec.payload_type,
        "clock_rate": codec.clock_rate,
        "channels": codec.channels,
        "fmtp": codec.fmtp,
    }


# ---- the relays, set up to transcode -------------------------------------------------------


class TranscodingEdgegw(EdgegwRelay):
    """edgegw's relay server with an Opus<->PCMA transcoding plan on every session."""

    def setup(self, streams: Sequence[GenStream], codec: Codec) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise BenchError("the edgegw relay server is not running")
        request = {
            "streams": [
                {"a": _leg(s.a.port, s.a.tx_crypto), "b": _leg(s.b.port, s.b.tx_crypto)}
                for s in streams
            ],
            "transcode": {"a": _codec_json(OPUS), "b": _codec_json(PCMA), "ptime": PTIME},
            "port_min": 20000,
            "port_max": 29999,
            "traced": 20,
        }
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        self._answer = json.loads(self._read_line(process))
        for stream, answer in zip(streams, self._answer["streams"], strict=True):
            for leg, gen in (("a", stream.a), ("b", stream.b)):
                gen.relay = (HOST, int(answer[leg]["port"]))
                crypto = answer[leg]["crypto"]
                gen.rx_crypto = None if crypto is None else parse_crypto(crypto)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The transcoders' counters per direction so far (asked of the running server)."""
        process = self._process
        if process is None or process.stdin is None:
            raise BenchError("the edgegw relay server is not running")
        process.stdin.write(b'{"stats": true}\n')
        process.stdin.flush()
        counters: dict[str, dict[str, int]] = json.loads(self._read_line(process)).get(
            "transcoded", {}
        )
        return counters

    @property
    def transcoded(self) -> dict[str, dict[str, int]]:
        """The transcoders' counters per direction, once the server has stopped."""
        counters: dict[str, dict[str, int]] = self._final.get("transcoded") or {}
        return counters

    def notes(self) -> tuple[str, ...]:
        notes = list(super().notes())
        for direction, counts in sorted(self.transcoded.items()):
            shown = ", ".join(f"{name} {value}" for name, value in counts.items() if value)
            notes.append(f"edgegw {direction} transcoder: {shown}")
        return tuple(notes)


def _leg(port: int, crypto: CryptoAttribute | None) -> dict[str, Any]:
    return {"remote": [HOST, port], "crypto": None if crypto is None else crypto.to_value()}


class TranscodingRtpengine(RtpengineRelay):
    """rtpengine with one transcoded call per stream: Opus toward A, PCMA toward B."""

    def __init__(self, placement: Placement) -> None:
        flags: list[BValue] = list(RTPENGINE_FLAGS)
        super().__init__(placement, {"flags": flags})

    def setup(self, streams: Sequence[GenStream], codec: Codec) -> None:
        self._before = rss_bytes(self.pid)
        client = self.engine.client
        for index, stream in enumerate(streams):
            call_id = f"transcode-{index}"
            options = dict(self.offer_options)
            if stream.a.tx_crypto is not None:
                options["transport-protocol"] = "RTP/AVP"
            offer = app_sdp(stream.a.port, stream.a.tx_crypto, 2 * index + 1)
            toward_b = client.offer(offer, call_id, "caller", options)
            _require_only(toward_b, PCMA, "offer toward B")
            answer = carrier_sdp(stream.b.port, 2 * index + 2)
            toward_a = client.answer(answer, call_id, "caller", "callee")
            _require_only(toward_a, OPUS, "answer toward A")
            _learn(stream.b, toward_b, "offer")
            _learn(stream.a, toward_a, "answer")
        self._after_setup = rss_bytes(self.pid)


def _sdp(port: int, codec: SdpCodec, crypto: CryptoAttribute | None, version: int) -> str:
    lines = [
        "v=0",
        f"o=- {version} 1 IN IP4 {HOST}",
        "s=bench",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {port} {'RTP/SAVP' if crypto else 'RTP/AVP'} {codec.payload_type}",
        f"a=rtpmap:{codec.rtpmap()}",
    ]
    if codec.fmtp:
        lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    lines.append(f"a=ptime:{PTIME}")
    if crypto is not None:
        lines.append(f"a=crypto:{crypto.to_value()}")
    lines.append("a=sendrecv")
    return "\r\n".join(lines) + "\r\n"


def app_sdp(port: int, crypto: CryptoAttribute | None, version: int) -> str:
    """The app's offer: Opus only (RTP/SAVP with its key when ``crypto``)."""
    return _sdp(port, OPUS, crypto, version)


def carrier_sdp(port: int, version: int) -> str:
    """The carrier's answer: PCMA only, plain RTP."""
    return _sdp(port, PCMA, None, version)


def _require_only(sdp_text: str, codec: SdpCodec, what: str) -> None:
    """rtpengine must have rewritten the SDP to ``codec`` alone, or it is not transcoding."""
    media = next((line for line in sdp_text.splitlines() if line.startswith("m=audio ")), "")
    formats = media.split()[3:]
    if formats != [str(codec.payload_type)]:
        raise BenchError(
            f"rtpengine's {what} offers {formats or 'nothing'}, not {codec.encoding} "
            f"({codec.payload_type}) alone: it would not transcode\n{sdp_text}"
        )


# ---- the sweep -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One relay at one call count: the generator's report and the relay's own counters.

    ``transcoded`` holds edgegw's transcoder counters per direction over (most of)
    the window: the difference of two snapshots taken inside it.
    """

    run: Run
    transcoded: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def relay(self) -> str:
        return self.run.relay

    @property
    def calls(self) -> int:
        return self.run.report.streams

    @property
    def in_relay_loss(self) -> float | None:
        """Share of the packets sent that edgegw's jitter buffers lost, got late or dropped."""
        if not self.transcoded:
            return None
        missed = sent = 0
        for counts in self.transcoded.values():
            missed += counts["lost"] + counts["late"] + counts["discarded"]
            sent += counts["packets_in"] + counts["lost"]
        return missed / sent if sent else 0.0

    @property
    def loss(self) -> float:
        return max(self.run.report.loss, self.in_relay_loss or 0.0)

    @property
    def cpu(self) -> float:
        return self.run.report.relay_cpu or 0.0

    @property
    def cpu_per_call_second(self) -> float:
        report = self.run.report
        return self.cpu / (report.streams * report.window) if report.window else 0.0

    @property
    def calls_per_core(self) -> float:
        cost = self.cpu_per_call_second
        return 1.0 / cost if cost else 0.0

    @property
    def saturated(self) -> bool:
        return self.cpu > _SATURATED * self.run.report.window

    @property
    def others(self) -> float:
        """Share of the window the relay's core ran other processes' work."""
        report = self.run.report
        if report.relay_core_busy is None or not report.window:
            return 0.0
        return max(0.0, report.relay_core_busy - self.cpu) / report.window

    def problems(self, loss_limit: float) -> list[str]:
        """Why the point is not clean (empty when it is)."""
        found = []
        if self.loss > loss_limit:
            found.append(f"loss {self.loss:.3%} > {loss_limit:.1%}")
        if self.saturated:
            found.append(f"core {self.cpu / self.run.report.window:.0%} busy")
        if self.run.report.behind:
            found.append("generator behind")
        return found

    @property
    def opus_kbps(self) -> float:
        """What the relay's Opus encoder sends toward A, kb/s (payload only)."""
        toward_a = self.run.report.directions[1]
        return toward_a.payload_bytes * 8 * 1000 / PTIME / 1000


def make_relay(name: str, placement: Placement) -> Relay:
    if name == "edgegw":
        return TranscodingEdgegw(placement)
    return TranscodingRtpengine(placement)


# The generator child starts its clock this long after run_load is called, at most.
_CHILD_START = 0.5


def measure_point(
    name: str, count: int, traffic: Traffic, placement: Placement, mode: Mode, relay_rt: int = 0
) -> Point:
    """One relay, one load; for edgegw its transcoders' counters are read inside the window."""
    relay = make_relay(name, placement)
    streams = [GenStream.bind(srtp_a=mode.srtp_a, srtp_b=mode.srtp_b) for _ in range(count)]
    reports: list[LoadReport] = []
    failures: list[BaseException] = []

    def load() -> None:
        try:
            reports.append(
                run_load(
                    streams,
                    traffic,
                    relay_pid=relay.pid,
                    cores=placement.load,
                    nice=placement.nice,
                    rt_priority=placement.generator_rt,
                )
            )
        except BaseException as exc:  # handed to the waiting thread
            failures.append(exc)

    counters: dict[str, dict[str, int]] = {}
    try:
        with relay:
            if relay_rt:
                make_realtime(relay.pid, relay_rt)
            relay.setup(streams, traffic.codec)
            worker = threading.Thread(target=load, name="load", daemon=True)
            begun = time.monotonic()
            worker.start()
            if isinstance(relay, TranscodingEdgegw):
                # Both snapshots fall inside the generator's window whatever its start-up.
                _sleep_until(begun + traffic.warmup + _CHILD_START)
                first = relay.snapshot()
                _sleep_until(begun + traffic.warmup + traffic.seconds)
                counters = _difference(relay.snapshot(), first)
            worker.join()
            if failures:
                raise failures[0]
            memory = relay.memory(count)
        return Point(Run(relay.name, mode, reports[0], memory, relay.notes()), counters)
    finally:
        for stream in streams:
            stream.close()


def make_realtime(pid: int, priority: int) -> None:
    """Put every thread of ``pid`` under SCHED_RR at ``priority`` (sched(7), root only).

    Threads it starts later inherit the policy. The kernel's RT throttling
    (``sched_rt_runtime_us``, 95 % by default) still leaves the core's other
    processes a share.
    """
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setscheduler(int(task), os.SCHED_RR, os.sched_param(priority))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _difference(
    later: dict[str, dict[str, int]], earlier: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        direction: {
            name: value - earlier.get(direction, {}).get(name, 0) for name, value in counts.items()
        }
        for direction, counts in later.items()
    }


_COLUMNS = (
    ("relay", 9),
    ("calls", 5),
    ("pkts in", 8),
    ("pkts out", 8),
    ("loss %", 7),
    ("relay loss %", 12),
    ("CPU-s", 6),
    ("others %", 8),
    ("CPU-s/call-s", 12),
    ("calls/core", 10),
    ("opus kb/s", 9),
    ("KiB/call", 8),
)


def table_header() -> str:
    names = " ".join(f"{name:>{width}}" for name, width in _COLUMNS)
    return f"{names}\n{'-' * len(names)}"


def table_row(point: Point) -> str:
    report = point.run.report
    relay_loss = point.in_relay_loss
    cells = (
        point.relay,
        f"{point.calls}",
        f"{report.sent:,}",
        f"{report.received:,}",
        f"{report.loss * 100:.3f}",
        "-" if relay_loss is None else f"{relay_loss * 100:.3f}",
        f"{point.cpu:.3f}",
        f"{point.others * 100:.0f}",
        f"{point.cpu_per_call_second:.5f}",
        f"{point.calls_per_core:.0f}",
        f"{point.opus_kbps:.1f}",
        f"{point.run.memory.loaded_per_call / 1024:.1f}",
    )
    return " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def point_notes(point: Point, loss_limit: float, relay_rt: int) -> Iterator[str]:
    report = point.run.report
    yield "  " + "; ".join(
        f"{d.name} sent {d.sent} received {d.received} ({d.payload_bytes:.0f}-byte payloads)"
        for d in report.directions
    )
    for problem in point.problems(loss_limit):
        yield f"  !! {problem}"
    if point.others > _CONTENDED and not relay_rt:
        yield (
            f"  !! other processes used {point.others:.0%} of {point.relay}'s core in the "
            "window: its figures are pessimistic"
        )
    if point.transcoded:
        shown = "; ".join(
            f"{direction} " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            for direction, counts in sorted(point.transcoded.items())
        )
        yield f"  edgegw transcoders inside the window: {shown}"
    if report.behind:
        yield f"  !! generator fell behind: {'; '.join(report.behind)}"
    if report.send_errors:
        yield f"  generator: {report.send_errors} sends failed (counted as lost)"
    for direction in report.directions:
        if direction.srtp_failures or direction.misrouted:
            yield (
                f"  {point.relay} {direction.name}: {direction.srtp_failures} SRTP failures, "
                f"{direction.misrouted} packets of the wrong payload type"
            )
    for note in point.run.notes:
        yield f"  {note}"


@dataclass
class Settings:
    calls: list[int] = field(default_factory=lambda: list(_CALLS))
    seconds: float = 4.0
    warmup: float = 1.5
    relays: tuple[str, ...] = ("edgegw", "rtpengine")
    srtp: bool = False
    probe: bool = True
    pesq: bool = True
    nice: int = _NICE
    generator_rt: int = _GENERATOR_RT
    relay_rt: int = _RELAY_RT
    loss_limit: float = _LOSS_LIMIT


def sweep(settings: Settings, placement: Placement, started: float) -> list[Point]:
    traffic = transcoded_traffic(settings.seconds, settings.warmup)
    mode = Mode("Opus<->PCMA", _SRTP_SUITE if settings.srtp else None, None)
    active = list(settings.relays)
    points: list[Point] = []
    print(table_header(), flush=True)
    for count in settings.calls:
        if not active:
            break
        if time.monotonic() - started > _BUDGET:
            print(f"  (time budget of {_BUDGET:.0f} s used: sweep stopped before {count} calls)")
            break
        for name in list(active):
            point = measure_point(name, count, traffic, placement, mode, settings.relay_rt)
            points.append(point)
            print(table_row(point), flush=True)
            for line in point_notes(point, settings.loss_limit, settings.relay_rt):
                print(line, flush=True)
            if point.problems(settings.loss_limit):
                active.remove(name)
    return points


@dataclass(frozen=True)
class Capacity:
    """Calls per core before loss > the limit, for one relay."""

    relay: str
    clean: Point | None
    failed: Point | None

    @property
    def swept(self) -> int:
        return 0 if self.clean is None else self.clean.calls

    @property
    def projected(self) -> float:
        return 0.0 if self.clean is None else self.clean.calls_per_core


def capacity(points: Sequence[Point], relay: str, loss_limit: float) -> Capacity:
    mine = [p for p in points if p.relay == relay]
    clean = [p for p in mine if not p.problems(loss_limit)]
    failed = [p for p in mine if p.problems(loss_limit)]
    return Capacity(
        relay,
        max(clean, key=lambda p: p.calls) if clean else None,
        min(failed, key=lambda p: p.calls) if failed else None,
    )


def capacity_lines(points: Sequence[Point], settings: Settings) -> Iterator[str]:
    limit = settings.loss_limit
    found = {name: capacity(points, name, limit) for name in settings.relays}
    yield f"calls per core before loss > {limit:.1%} (one core each, same load):"
    for cap in found.values():
        if cap.clean is None:
            yield f"  {cap.relay}: no clean point"
            continue
        where = "no point failed: the sweep ended first"
        if cap.failed is not None:
            why = ", ".join(cap.failed.problems(limit))
            where = f"first failing point {cap.failed.calls} calls ({why})"
        yield (
            f"  {cap.relay}: {cap.swept} calls clean in the sweep ({where}); "
            f"{cap.projected:.0f} per core projected from its CPU cost at {cap.swept} calls "
            f"({cap.clean.cpu_per_call_second * 1000:.2f} ms CPU per call-second)"
        )
    ours, theirs = found.get("edgegw"), found.get("rtpengine")
    if ours is None or theirs is None or not theirs.swept or not theirs.projected:
        return
    swept_ratio = ours.swept / theirs.swept
    projected_ratio = ours.projected / theirs.projected
    yield (
        f"  ratio edgegw/rtpengine: {swept_ratio:.2f} swept, {projected_ratio:.2f} projected "
        "(issue 3: >= 1.00; DESIGN target: >= 1.50 and >= 100 calls per core)"
    )
    verdict = "reached" if min(swept_ratio, projected_ratio) >= 1.0 else "NOT reached"
    yield f"  parity with rtpengine on transcoding: {verdict}"


def memory_lines(points: Sequence[Point]) -> Iterator[str]:
    yield "memory per transcoded call (RSS growth of the relay process / calls):"
    yield f"{'relay':>9} {'calls':>5} {'set-up KiB':>10} {'loaded KiB':>10} {'py heap KiB':>11}"
    for point in points:
        memory = point.run.memory
        traced = (
            "" if memory.traced_per_session is None else f"{memory.traced_per_session / 1024:.1f}"
        )
        yield (
            f"{point.relay:>9} {memory.calls:>5} {memory.setup_per_call / 1024:>10.1f} "
            f"{memory.loaded_per_call / 1024:>10.1f} {traced:>11}"
        )
    yield "  (DESIGN target: <= 200 KiB per transcoded call; py heap: tracemalloc per session)"


# ---- latency probe: clicks through one call ------------------------------------------------

_CLICK_EVERY = 10  # packets: a click every 200 ms
_CLICK_FIRST = 50  # packets: the first after 1 s, once the jitter buffer has settled
_CLICK_MS = 5
_CLICK_HZ = 1000.0
_CLICK_AMPLITUDE = 16000.0
_CLICK_THRESHOLD = 0.25  # of the amplitude: an onset
_CLICK_QUIET = 0.1  # seconds without a sample over the threshold before an onset
_CLICK_OFFSET = 0.4  # where in its packet a click starts (share of the packet)
_PROBE_SECONDS = 7.0
_PROBE_LINGER = 0.4
_PROBE_MAX_LATENCY = 0.15  # a click later than this is not matched


@dataclass(frozen=True)
class ClickTrack:
    """Packets of silence with a tone burst in every tenth one, encoded for one leg."""

    payloads: tuple[bytes, ...]
    clicks: tuple[int, ...]
    offset: int
    rate: int

    @property
    def samples(self) -> int:
        return self.rate * PTIME // 1000


def click_pcm(rate: int, packets: int) -> tuple[npt.NDArray[np.int16], tuple[int, ...], int]:
    """The click track's PCM at ``rate``: the packets with a click and the onset offset."""
    size = rate * PTIME // 1000
    offset = round(_CLICK_OFFSET * size)
    pcm = np.zeros(size * packets, dtype="<i2")
    t = np.arange(rate * _CLICK_MS // 1000) / rate
    burst = np.round(_CLICK_AMPLITUDE * np.sin(2 * math.pi * _CLICK_HZ * t)).astype("<i2")
    clicks = tuple(range(_CLICK_FIRST, packets - 5, _CLICK_EVERY))
    for index in clicks:
        start = index * size + offset
        pcm[start : start + len(burst)] = burst
    return pcm, clicks, offset


def click_tracks(packets: int) -> tuple[ClickTrack, ClickTrack]:
    """What A sends (Opus from 48 kHz, the app's encoder) and B sends (PCMA)."""
    opus_pcm, clicks, opus_offset = click_pcm(48000, packets)
    encoder = app_encoder()
    opus = tuple(encoder.encode(frame) for frame in _frames(opus_pcm, OPUS_SAMPLES))
    pcma_pcm, _, pcma_offset = click_pcm(8000, packets)
    g711 = G711Codec("PCMA")
    pcma = tuple(g711.encode(frame) for frame in _frames(pcma_pcm, PCMA_SAMPLES))
    return ClickTrack(opus, clicks, opus_offset, 48000), ClickTrack(pcma, clicks, pcma_offset, 8000)


def onsets(pcm: npt.NDArray[np.float64], rate: int) -> list[int]:
    """Sample indexes where a click starts: over the threshold after a quiet stretch."""
    loud = np.nonzero(np.abs(pcm) > _CLICK_THRESHOLD * _CLICK_AMPLITUDE)[0]
    quiet = round(_CLICK_QUIET * rate)
    found: list[int] = []
    last = -quiet
    for index in loud.tolist():
        if index - last >= quiet:
            found.append(index)
        last = index
    return found


@dataclass(frozen=True)
class Latency:
    direction: str
    samples: tuple[float, ...]  # seconds
    clicks: int

    def percentile(self, share: float) -> float:
        ordered = sorted(self.samples)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]

    def line(self) -> str:
        if not self.samples:
            return f"{self.direction}: no click came through ({self.clicks} sent)"
        return (
            f"{self.direction}: p50 {self.percentile(0.5) * 1000:.1f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.1f} ms, max {max(self.samples) * 1000:.1f} ms "
            f"({len(self.samples)} of {self.clicks} clicks)"
        )


def click_latency(
    direction: str,
    sent: ClickTrack,
    send_times: Sequence[int],
    arrivals: Sequence[tuple[int, bytes]],
    decoder: Any,
    rate: int,
) -> Latency:
    """Match each click decoded from ``arrivals`` to the last click sent before it."""
    click_times = [
        send_times[i] / 1e9 - (sent.samples - sent.offset) / sent.rate
        for i in sent.clicks
        if i < len(send_times)
    ]
    ordered = sorted(
        (h.sequence, t, packet[h.header_length :])
        for t, packet in arrivals
        if (h := parse_rtp_header(packet)) is not None
    )
    pieces: list[bytes] = []
    ends: list[tuple[int, float]] = []  # (samples so far, arrival) per packet
    total = 0
    for _, arrived, payload in ordered:
        pcm = decoder.decode(payload)
        pieces.append(pcm)
        total += len(pcm) // 2
        ends.append((total, arrived / 1e9))
    decoded = np.frombuffer(b"".join(pieces), dtype="<i2").astype(np.float64)
    found: list[float] = []
    for onset in onsets(decoded, rate):
        end, came = next(item for item in ends if item[0] > onset)
        at = came - (end - onset) / rate
        earlier = [c for c in click_times if c <= at]
        if earlier and at - earlier[-1] <= _PROBE_MAX_LATENCY:
            found.append(at - earlier[-1])
    return Latency(direction, tuple(found), len(click_times))


def _click_packets(track: ClickTrack, payload_type: int, ssrc: int) -> list[bytes]:
    return [
        _HEADER.pack(0x80, payload_type, i & 0xFFFF, (i * track.samples) & 0xFFFFFFFF, ssrc) + p
        for i, p in enumerate(track.payloads)
    ]


def run_probe(
    stream: GenStream, tracks: tuple[ClickTrack, ClickTrack]
) -> tuple[list[int], list[int], list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Send both click tracks at 20 ms on the legs; send times and arrivals per leg."""
    opus_track, pcma_track = tracks
    to_b = _click_packets(opus_track, OPUS.payload_type, 0xC11C0001)
    to_a = _click_packets(pcma_track, PCMA.payload_type, 0xC11C0002)
    if stream.a.relay is None or stream.b.relay is None:
        raise BenchError("the probe call has no relay ports")
    period = PTIME * 1_000_000
    perf = time.perf_counter_ns
    start = perf() + 20_000_000
    sent_a: list[int] = []
    sent_b: list[int] = []
    got_a: list[tuple[int, bytes]] = []
    got_b: list[tuple[int, bytes]] = []
    socks = {stream.a.sock: got_a, stream.b.sock: got_b}
    for sock in socks:
        sock.setblocking(False)
    end = start + len(to_b) * period + int(_PROBE_LINGER * 1e9)
    index = 0
    while (now := perf()) < end:
        while index < len(to_b) and start + index * period <= now:
            sent_a.append(perf())
            stream.a.sock.sendto(to_b[index], stream.a.relay)
            sent_b.append(perf())
            stream.b.sock.sendto(to_a[index], stream.b.relay)
            index += 1
        due = start + index * period if index < len(to_b) else end
        ready, _, _ = select.select(list(socks), [], [], max(0, due - perf()) / 1e9)
        for sock in ready:
            _drain_into(sock, socks[sock])
    return sent_a, sent_b, got_a, got_b


def _drain_into(sock: socket.socket, into: list[tuple[int, bytes]]) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return
        except OSError:  # a queued ICMP error
            continue
        into.append((time.perf_counter_ns(), data))


def probe(name: str, placement: Placement, relay_rt: int) -> tuple[Latency, Latency]:
    """One plain call through relay ``name``: click latency A to B and B to A.

    This process plays both legs, under SCHED_RR at the generator's priority
    while it does (when it has one), so that its receive times are not delayed.
    """
    packets = round(_PROBE_SECONDS * 1000 / PTIME)
    tracks = click_tracks(packets)
    stream = GenStream.bind()
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        with make_relay(name, placement) as relay:
            if relay_rt:
                make_realtime(relay.pid, relay_rt)
            relay.setup([stream], Codec())
            if placement.generator_rt:
                os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(placement.generator_rt))
            sent_a, sent_b, got_a, got_b = run_probe(stream, tracks)
    finally:
        os.sched_setscheduler(0, policy, param)
        stream.close()
    to_b = click_latency(
        "A->B (Opus in, PCMA out)", tracks[0], sent_a, got_b, G711Codec("PCMA"), 8000
    )
    to_a = click_latency(
        "B->A (PCMA in, Opus out)", tracks[1], sent_b, got_a, OpusDecoder(48000), 48000
    )
    return to_b, to_a


def codec_delay() -> tuple[float, float]:
    """The codecs' own delay on the click tracks, no relay: (A to B, B to A) seconds.

    A to B: the app's Opus decoded at 8 kHz (as edgegw does); B to A: PCMA
    encoded to Opus at 8 kHz with the gateway's settings, decoded at 48 kHz.
    """
    packets = _CLICK_FIRST + 2 * _CLICK_EVERY
    opus_track, pcma_track = click_tracks(packets)
    down = OpusDecoder(8000)
    a_to_b = np.frombuffer(b"".join(down.decode(p) for p in opus_track.payloads), "<i2")
    gateway_opus = make_codec(OPUS, OpusSettings(), opus_rate=8000)
    g711 = G711Codec("PCMA")
    up = OpusDecoder(48000)
    b_to_a = np.frombuffer(
        b"".join(up.decode(gateway_opus.encode(g711.decode(p))) for p in pcma_track.payloads),
        "<i2",
    )
    first_a = _CLICK_FIRST * (8000 * PTIME // 1000) + round(_CLICK_OFFSET * PCMA_SAMPLES)
    first_b = _CLICK_FIRST * OPUS_SAMPLES + round(_CLICK_OFFSET * OPUS_SAMPLES)
    delay_a = (onsets(a_to_b.astype(np.float64), 8000)[0] - first_a) / 8000
    delay_b = (onsets(b_to_a.astype(np.float64), 48000)[0] - first_b) / 48000
    return delay_a, delay_b


def latency_lines(settings: Settings, placement: Placement) -> Iterator[str]:
    yield (
        f"added latency, one plain call, a {_CLICK_MS} ms {_CLICK_HZ:.0f} Hz click every "
        f"{_CLICK_EVERY * PTIME} ms on each leg, timed from the send of the packet carrying it "
        "to the arrival of the packet carrying it decoded (at the sample):"
    )
    for name in settings.relays:
        to_b, to_a = probe(name, placement, settings.relay_rt)
        yield f"  {name:>9} {to_b.line()}"
        yield f"  {name:>9} {to_a.line()}"
    delay_a, delay_b = codec_delay()
    yield (
        f"  codecs alone, no relay: A->B {delay_a * 1000:.1f} ms, B->A {delay_b * 1000:.1f} ms "
        "(included above); DESIGN target for transcoding: <= 40 ms with the jitter buffer"
    )


# ---- speech quality, sans-IO -----------------------------------------------------------------

_LOSS = 0.05
_LOSS_SEED = 20240607
# How long the transcoders run on after the last packet: the jitter buffer's tail.
_DRAIN = 1.0


def drive(
    transcoder: Transcoder, arrivals: Sequence[tuple[float, bytes]], until: float
) -> list[tuple[float, bytes]]:
    """Push each packet at its arrival and pull at each deadline, up to ``until`` (seconds):
    what the relay's pump and playout tasks do, on a clock of our own."""
    out: list[tuple[float, bytes]] = []
    index = 0
    while True:
        arrival = arrivals[index][0] if index < len(arrivals) else math.inf
        deadline = transcoder.next_deadline()
        due = math.inf if deadline is None else deadline
        now = min(arrival, due)
        if now > until:
            return out
        if due <= arrival:
            out += [(now, packet) for packet in transcoder.pull(now)]
        else:
            transcoder.push(arrivals[index][1], now)
            index += 1


def lossy(
    packets: Sequence[tuple[float, bytes]], share: float, seed: int
) -> list[tuple[float, bytes]]:
    """``packets`` less ``share`` of them at random (never the first five)."""
    rng = random.Random(seed)
    return [item for i, item in enumerate(packets) if i < 5 or rng.random() >= share]


def _rtp(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    return _HEADER.pack(0x80, payload_type, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def app_send(signal: npt.NDArray[np.int16]) -> list[tuple[float, bytes]]:
    """The app's Opus packets of ``signal`` (48 kHz), one every 20 ms from time 0."""
    encoder = app_encoder()
    return [
        (
            i * PTIME / 1000,
            _rtp(
                OPUS.payload_type, 1000 + i, 5000 + i * OPUS_SAMPLES, 0xA99, encoder.encode(frame)
            ),
        )
        for i, frame in enumerate(_frames(signal, OPUS_SAMPLES))
    ]


def carrier_echo(received: Sequence[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """The carrier sends back each PCMA payload it got, at once, on its own RTP stream."""
    echoed = []
    for i, (at, packet) in enumerate(received):
        header = parse_rtp_header(packet)
        if header is None:
            raise BenchError("the transcoder sent a packet that is not RTP")
        payload = packet[header.header_length :]
        echoed.append(
            (at, _rtp(PCMA.payload_type, 7000 + i, 9000 + i * PCMA_SAMPLES, 0xCA11, payload))
        )
    return echoed


def decode_pcma(received: Sequence[tuple[float, bytes]]) -> Audio:
    codec = G711Codec("PCMA")
    pcm = b"".join(codec.decode(packet[12:]) for _, packet in received)
    return Audio(np.frombuffer(pcm, "<i2").astype(np.float64), 8000, "carrier")


def app_receive(received: Sequence[tuple[float, bytes]]) -> Audio:
    """What the app plays at 8 kHz: packets in sequence order, a missing one rebuilt from
    the next one's FEC when it has some, else concealed (libopus, as an app does)."""
    app: AudioCodec = make_codec(OPUS, APP_OPUS, opus_rate=8000)
    by_seq: dict[int, bytes] = {}
    for _, packet in received:
        header = parse_rtp_header(packet)
        if header is not None:
            by_seq[header.sequence] = packet[header.header_length :]
    if not by_seq:
        raise BenchError("nothing came back to the app")
    first, last = min(by_seq), max(by_seq)  # the stream is short: no wrap
    samples = 8000 * PTIME // 1000
    pieces = []
    for seq in range(first, last + 1):
        payload = by_seq.get(seq)
        if payload is not None:
            pieces.append(app.decode(payload))
            continue
        following = by_seq.get(seq + 1)
        recovered = None if following is None else app.recover(following, samples)
        pieces.append(recovered if recovered is not None else app.conceal(samples))
    return Audio(np.frombuffer(b"".join(pieces), "<i2").astype(np.float64), 8000, "app")


@dataclass(frozen=True)
class Quality:
    label: str
    score: float
    target: float

    def line(self) -> str:
        mark = "ok" if self.score >= self.target else "BELOW TARGET"
        return f"  {self.label:<62} PESQ {self.score:.2f}  (target >= {self.target:.1f}, {mark})"


def speech_quality() -> list[Quality]:
    """PESQ nb of the reference speech through edgegw's transcoders, sans-IO."""
    reference = read_wav(reference_speech(8000))
    sent = app_send(_speech(48000))
    until = sent[-1][0] + _DRAIN
    plan = TranscodePlan(OPUS, PCMA, PTIME)
    results = []
    for label, uplink, downlink, target_one, target_round in (
        ("clean", 0.0, 0.0, 4.0, 3.8),
        ("5 % loss on the app leg uplink", _LOSS, 0.0, 3.2, 3.0),
        ("5 % loss on the app leg both ways", _LOSS, _LOSS, None, 3.0),
    ):
        a_to_b, b_to_a = plan.transcoders()
        arrivals = lossy(sent, uplink, _LOSS_SEED) if uplink else sent
        at_carrier = drive(a_to_b, arrivals, until)
        if target_one is not None:
            score = pesq_score(reference, decode_pcma(at_carrier))
            results.append(Quality(f"app -> carrier, {label}", score, target_one))
        back = drive(b_to_a, carrier_echo(at_carrier), until + _DRAIN)
        if downlink:
            back = lossy(back, downlink, _LOSS_SEED + 1)
        score = pesq_score(reference, app_receive(back))
        results.append(Quality(f"app -> carrier echo -> app, {label}", score, target_round))
    return results


# ---- main --------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 10,25,50, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive call counts, got {text!r}")
    return sorted(counts)


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=_counts, default=list(_CALLS))
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--relays", default="edgegw,rtpengine", help="edgegw and/or rtpengine")
    parser.add_argument("--srtp", action="store_true", help="leg A SRTP (AES_CM_128_HMAC_SHA1_80)")
    parser.add_argument("--no-probe", action="store_true", help="skip the latency probe")
    parser.add_argument("--no-pesq", action="store_true", help="skip the speech quality figures")
    parser.add_argument("--loss-limit", type=float, default=_LOSS_LIMIT * 100, help="percent")
    parser.add_argument("--nice", type=int, default=_NICE)
    parser.add_argument("--generator-rt", type=int, default=_GENERATOR_RT)
    parser.add_argument(
        "--relay-rt",
        type=int,
        default=_RELAY_RT,
        help="SCHED_RR priority of both relays, 0 for none (root only): on a shared "
        "machine it keeps other processes off the relays' core",
    )
    args = parser.parse_args(argv)
    relays = tuple(r.strip() for r in args.relays.split(",") if r.strip())
    if not relays or any(r not in ("edgegw", "rtpengine") for r in relays):
        parser.error(f"--relays takes edgegw and/or rtpengine, got {args.relays!r}")
    if args.seconds <= 0 or args.warmup < 0 or not 0 <= args.loss_limit < 100:
        parser.error("--seconds must be positive, --warmup not negative, --loss-limit 0-100")
    if not 0 <= args.generator_rt <= 99 or not 0 <= args.relay_rt <= 99:
        parser.error("--generator-rt and --relay-rt take 0 to 99")
    root = os.geteuid() == 0
    return Settings(
        calls=args.calls,
        seconds=args.seconds,
        warmup=args.warmup,
        relays=relays,
        srtp=args.srtp,
        probe=not args.no_probe,
        pesq=not args.no_pesq,
        nice=args.nice if root or args.nice >= 0 else 0,
        generator_rt=args.generator_rt if root else 0,
        relay_rt=args.relay_rt if root else 0,
        loss_limit=args.loss_limit / 100,
    )


def _header(settings: Settings, placement: Placement) -> str:
    version = rtpengine_version() if "rtpengine" in settings.relays else "not run"
    leg_a = f"SRTP {_SRTP_SUITE}" if settings.srtp else "plain RTP"
    relay_rt = f", relays under SCHED_RR {settings.relay_rt}" if settings.relay_rt else ""
    return (
        f"Opus<->PCMA transcoding, edgegw vs rtpengine ({version}) userspace, flags "
        f"{' + '.join(RTPENGINE_FLAGS)}; {placement.describe()}{relay_rt}; "
        f"leg A Opus 20 ms {APP_OPUS.bitrate // 1000} kb/s FEC ({leg_a}), leg B PCMA 20 ms; "
        f"50 pps each way per call; window {settings.seconds:g} s after "
        f"{settings.warmup:g} s warm-up"
    )


def _run(settings: Settings, placement: Placement, started: float) -> None:
    points = sweep(settings, placement, started)
    print()
    for line in capacity_lines(points, settings):
        print(line, flush=True)
    print()
    for line in memory_lines(points):
        print(line)
    if settings.probe:
        print()
        for line in latency_lines(settings, placement):
            print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    missing = speech_tools_missing()
    if missing is not None:
        raise SystemExit(f"bench_transcode: reference speech cannot be made: {missing}")
    if "rtpengine" in settings.relays and shutil.which("rtpengine") is None:
        raise SystemExit("bench_transcode: rtpengine is not installed (rtpengine-daemon)")
    started = time.monotonic()
    placement = Placement.split(settings.nice, settings.generator_rt)
    print(_header(settings, placement), flush=True)
    affinity = os.sched_getaffinity(0)
    try:
        if placement.load is not None:
            os.sched_setaffinity(0, placement.load)  # off the relays' core
        _run(settings, placement, started)
    except (BenchError, LoadError, RtpEngineError, NgError, NgTimeout, SpeechError) as exc:
        raise SystemExit(f"bench_transcode: {exc}") from exc
    finally:
        os.sched_setaffinity(0, affinity)
    if settings.pesq:
        print("\nspeech quality through edgegw's transcoders (sans-IO), PESQ nb at 8 kHz:")
        for quality in speech_quality():
            print(quality.line(), flush=True)
    print(f"\n(bench_transcode took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
