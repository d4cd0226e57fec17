"""Benchmark: edgegw's media relay against rtpengine, SRTP-to-RTP and plain G.711, same run.

A figure, not a test (DESIGN "Targets": G.711 relay packets per CPU-second
>= 2x rtpengine userspace; relay p99 added latency <= 1 ms; <= 50 KiB per
relayed call). For every stream count both relays carry the same load one
after the other, each pinned to the same core, with the load generator of
:mod:`tests.bench.media_load` pinned to the other:

* edgegw: :mod:`tests.bench.relay_server`, N ``MediaSession`` s configured as
  a call configures them (leg A SRTP AES_CM_128_HMAC_SHA1_80, leg B plain);
* rtpengine 10.5, userspace (``--table=-1``), one call per stream set up over
  the ng protocol: the offer from A is RTP/SAVP with the generator's a=crypto
  and carries ``transport-protocol: RTP/AVP``, which makes rtpengine offer
  plain RTP/AVP toward B and answer A with RTP/SAVP and an a=crypto of its own
  (SDES); the plain comparison sends both offers as RTP/AVP with no flags.

Every stream sends PCMA 20 ms (172-byte RTP) at 50 packets per second each
way. Figures per run: packets per second relayed, loss, one-way latency
p50/p99 through the relay (the generator's own floor, measured with no relay
in between, is printed once), the relay's CPU seconds over the window,
packets per CPU-second, streams per core, and memory per call (RSS growth of
the relay process per call after set-up and after the load; for edgegw also
the Python heap per MediaSession from tracemalloc). Then the ratio
edgegw/rtpengine of packets per CPU-second, per stream count and over the
whole sweep. CPU time is the relay process's, all threads, from
``/proc/PID/task/*/schedstat`` (nanoseconds); it includes the kernel's work
for the packets the relay sends, as it would on a real box.

On a shared machine other processes would add their time slices to the
latency: as root the relays run at nice -10 (both the same) and the generator
under SCHED_RR (it uses under half of its core). A row whose generator fell
behind its schedule, or whose relay saturated its core, says so.

Run: ``.venv/bin/python -m tests.bench.bench_srtp_relay [--streams 20,50,100,200]
[--plain-streams 50,200] [--seconds 6] [--warmup 1] [--relays edgegw,rtpengine]
[--nice -10] [--generator-rt 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from gateway.media.srtp import CryptoAttribute, SrtpSuite, parse_crypto
from tests.bench.media_load import (
    Codec,
    GenLeg,
    GenStream,
    LoadError,
    LoadReport,
    Traffic,
    rss_bytes,
    run_load,
)
from tests.bench.rtpengine import (
    BValue,
    NgError,
    NgTimeout,
    RtpEngine,
    RtpEngineError,
    child_setup,
    rtpengine_version,
)

HOST = "127.0.0.1"
_EDGEGW_PORTS = (20000, 29999)
_RTPENGINE_PORTS = (30000, 39999)
_SERVER_TIMEOUT = 30.0
_TRACED_SESSIONS = 20
_BASELINE_STREAMS = 100
_BASELINE_SECONDS = 3.0
_SRTP_SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
# Both relays run at this nice value and the generator under SCHED_RR at this
# priority (root only): on a shared build machine they keep other processes from
# adding their time slices to the measured latency. The relays' priority is the
# same for both; the generator's is real-time because it uses under half its core
# and must send on time whatever else runs.
_NICE = -10
_GENERATOR_RT = 10
# A relay busy this share of the window has no headroom left.
_SATURATED = 0.9


class BenchError(RuntimeError):
    """A relay could not be set up for the run."""


@dataclass(frozen=True)
class Placement:
    """Where relays and generator run (None: unpinned), and at which priority."""

    relay: frozenset[int] | None
    load: frozenset[int] | None
    nice: int = 0
    generator_rt: int = 0

    @classmethod
    def split(cls, nice: int, generator_rt: int) -> Placement:
        """The first two CPUs we may use: relays on one, the generator on the other."""
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None, nice, generator_rt)
        return cls(frozenset(available[:1]), frozenset(available[1:2]), nice, generator_rt)

    def describe(self) -> str:
        where = (
            "one CPU only: relay and generator share it (figures are pessimistic)"
            if self.relay is None or self.load is None
            else f"relays pinned to CPU {min(self.relay)}, generator to CPU {min(self.load)}"
        )
        rt = f"SCHED_RR {self.generator_rt}" if self.generator_rt else f"nice {self.nice}"
        return f"{where}; relays at nice {self.nice}, generator at {rt}"


@dataclass(frozen=True)
class Mode:
    """What each leg speaks: SRTP with a suite, or plain RTP (None)."""

    name: str
    srtp_a: SrtpSuite | None
    srtp_b: SrtpSuite | None


SRTP_TO_RTP = Mode("SRTP->RTP", _SRTP_SUITE, None)
PLAIN = Mode("RTP->RTP", None, None)


@dataclass(frozen=True)
class Memory:
    """RSS of the relay process before set-up, after set-up and after the load (bytes)."""

    calls: int
    before: int
    after_setup: int
    after_load: int
    traced_per_session: float | None = None

    @property
    def setup_per_call(self) -> float:
        return (self.after_setup - self.before) / self.calls

    @property
    def loaded_per_call(self) -> float:
        return (self.after_load - self.before) / self.calls


@dataclass(frozen=True)
class Run:
    relay: str
    mode: Mode
    report: LoadReport
    memory: Memory
    notes: tuple[str, ...] = ()


class Relay(Protocol):
    """A relay under test: set up the streams' calls, then carry the load."""

    name: str

    @property
    def pid(self) -> int: ...

    def setup(self, streams: Sequence[GenStream], codec: Codec) -> None: ...

    def memory(self, calls: int) -> Memory: ...

    def notes(self) -> tuple[str, ...]: ...

    def __enter__(self) -> Relay: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# ---- edgegw ------------------------------------------------------------------------------


class EdgegwRelay:
    """:mod:`tests.bench.relay_server` in its own process, placed as ``placement`` says."""

    name = "edgegw"

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self._process: subprocess.Popen[bytes] | None = None
        self._answer: dict[str, Any] = {}
        self._after_load = 0
        self._final: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError("the edgegw relay server is not running")
        return self._process.pid

    def __enter__(self) -> EdgegwRelay:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.relay_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=child_setup(self.placement.relay, self.placement.nice),
        )
        return self

    def setup(self, streams: Sequence[GenStream], codec: Codec) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise BenchError("the edgegw relay server is not running")
        request = {
            "streams": [
                {
                    "a": _leg_request(s.a.port, s.a.tx_crypto),
                    "b": _leg_request(s.b.port, s.b.tx_crypto),
                }
                for s in streams
            ],
            "payload_type": codec.payload_type,
            "port_min": _EDGEGW_PORTS[0],
            "port_max": _EDGEGW_PORTS[1],
            "traced": _TRACED_SESSIONS,
        }
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        self._answer = json.loads(self._read_line(process))
        for stream, answer in zip(streams, self._answer["streams"], strict=True):
            for leg, gen in (("a", stream.a), ("b", stream.b)):
                gen.relay = (HOST, int(answer[leg]["port"]))
                crypto = answer[leg]["crypto"]
                gen.rx_crypto = None if crypto is None else parse_crypto(crypto)

    def _read_line(self, process: subprocess.Popen[bytes]) -> bytes:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], _SERVER_TIMEOUT)
        line = process.stdout.readline() if ready else b""
        if not line:
            process.kill()
            _, err = process.communicate()
            raise BenchError(
                "the edgegw relay server gave no answer: "
                f"{err.decode(errors='replace').strip()[-1500:]}"
            )
        return line

    def memory(self, calls: int) -> Memory:
        self._after_load = rss_bytes(self.pid)
        return Memory(
            calls,
            int(self._answer["rss_before"]),
            int(self._answer["rss_after"]),
            self._after_load,
            float(self._answer["traced_per_session"]),
        )

    def notes(self) -> tuple[str, ...]:
        drops = self._final.get("drops") or {}
        return (f"edgegw drops: {drops}",) if drops else ()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            out, _ = process.communicate(timeout=10)  # closes stdin: the server stops
            lines = out.splitlines()
            if lines:
                self._final = json.loads(lines[-1])
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _leg_request(port: int, crypto: CryptoAttribute | None) -> dict[str, Any]:
    return {"remote": [HOST, port], "crypto": None if crypto is None else crypto.to_value()}


# ---- rtpengine ---------------------------------------------------------------------------


class RtpengineRelay:
    """rtpengine (userspace) with one call per stream, set up over ng.

    ``offer_options`` go with every offer (ng flags such as ``codec-mask-all``);
    ``transport-protocol`` is added when one leg is SRTP and the other is not.
    """

    name = "rtpengine"

    def __init__(
        self, placement: Placement, offer_options: dict[str, BValue] | None = None
    ) -> None:
        self.offer_options = dict(offer_options or {})
        self.engine = RtpEngine(
            port_min=_RTPENGINE_PORTS[0],
            port_max=_RTPENGINE_PORTS[1],
            cores=placement.relay,
            nice=placement.nice,
        )
        self._before = 0
        self._after_setup = 0

    @property
    def pid(self) -> int:
        return self.engine.pid

    def __enter__(self) -> RtpengineRelay:
        self.engine.start()
        return self

    def setup(self, streams: Sequence[GenStream], codec: Codec) -> None:
        self._before = rss_bytes(self.pid)
        client = self.engine.client
        for index, stream in enumerate(streams):
            call_id = f"bench-{index}"
            offer = sdp(stream.a.port, codec, stream.a.tx_crypto, 2 * index + 1)
            options = dict(self.offer_options)
            if (stream.a.tx_crypto is None) != (stream.b.tx_crypto is None):
                profile = "RTP/AVP" if stream.b.tx_crypto is None else "RTP/SAVP"
                options["transport-protocol"] = profile
            toward_b = client.offer(offer, call_id, "caller", options)
            answer = sdp(stream.b.port, codec, stream.b.tx_crypto, 2 * index + 2)
            toward_a = client.answer(answer, call_id, "caller", "callee")
            _learn(stream.b, toward_b, "offer")
            _learn(stream.a, toward_a, "answer")
        self._after_setup = rss_bytes(self.pid)

    def memory(self, calls: int) -> Memory:
        return Memory(calls, self._before, self._after_setup, rss_bytes(self.pid))

    def notes(self) -> tuple[str, ...]:
        return ()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.engine.stop()


def sdp(port: int, codec: Codec, crypto: CryptoAttribute | None, version: int) -> str:
    """A one-stream audio SDP from the generator's socket: RTP/SAVP when ``crypto``."""
    lines = [
        "v=0",
        f"o=- {version} 1 IN IP4 {HOST}",
        "s=bench",
        f"c=IN IP4 {HOST}",
        "t=0 0",
        f"m=audio {port} {'RTP/SAVP' if crypto else 'RTP/AVP'} {codec.payload_type}",
        f"a=rtpmap:{codec.payload_type} {codec.encoding}/{codec.clock_rate}",
        f"a=ptime:{1000 // codec.pps}",
    ]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto.to_value()}")
    lines.append("a=sendrecv")
    return "\r\n".join(lines) + "\r\n"


def _learn(leg: GenLeg, sdp_text: str, what: str) -> None:
    """Point a generator leg at the relay's port in ``sdp_text`` and take its key, if any."""
    port = None
    crypto = None
    for line in sdp_text.splitlines():
        if line.startswith("m=audio "):
            port = int(line.split()[1])
        elif line.startswith("a=crypto:") and crypto is None:
            crypto = parse_crypto(line[len("a=crypto:") :])
    if port is None:
        raise BenchError(f"rtpengine's {what} has no m=audio line:\n{sdp_text}")
    if (crypto is None) != (leg.tx_crypto is None):
        raise BenchError(f"rtpengine's {what} does not match the leg's SRTP:\n{sdp_text}")
    leg.relay = (HOST, port)
    leg.rx_crypto = crypto


# ---- runs --------------------------------------------------------------------------------


@dataclass
class Settings:
    srtp_streams: list[int] = field(default_factory=lambda: [20, 50, 100, 200])
    plain_streams: list[int] = field(default_factory=lambda: [50, 200])
    traffic: Traffic = field(default_factory=lambda: Traffic(seconds=6.0))
    relays: tuple[str, ...] = ("edgegw", "rtpengine")
    nice: int = _NICE
    generator_rt: int = _GENERATOR_RT


def measure(relay: Relay, mode: Mode, count: int, traffic: Traffic, placement: Placement) -> Run:
    """One relay, one load: set the calls up, run the generator, read CPU and memory."""
    streams = [GenStream.bind(srtp_a=mode.srtp_a, srtp_b=mode.srtp_b) for _ in range(count)]
    try:
        with relay:
            relay.setup(streams, traffic.codec)
            report = run_load(
                streams,
                traffic,
                relay_pid=relay.pid,
                cores=placement.load,
                nice=placement.nice,
                rt_priority=placement.generator_rt,
            )
            memory = relay.memory(count)
        return Run(relay.name, mode, report, memory, relay.notes())
    finally:
        for stream in streams:
            stream.close()


def baseline(mode: Mode, count: int, seconds: float, placement: Placement) -> LoadReport:
    """The generator's own floor: each stream's two sockets send straight to each other."""
    streams = [GenStream.bind(srtp_a=mode.srtp_a, srtp_b=mode.srtp_b) for _ in range(count)]
    try:
        for stream in streams:
            stream.a.relay, stream.b.relay = (HOST, stream.b.port), (HOST, stream.a.port)
            stream.b.rx_crypto, stream.a.rx_crypto = stream.a.tx_crypto, stream.b.tx_crypto
        return run_load(
            streams,
            Traffic(seconds=seconds, warmup=0.5),
            relay_pid=None,
            cores=placement.load,
            nice=placement.nice,
            rt_priority=placement.generator_rt,
        )
    finally:
        for stream in streams:
            stream.close()


def _relay(name: str, placement: Placement) -> Relay:
    if name == "edgegw":
        return EdgegwRelay(placement)
    return RtpengineRelay(placement)


# ---- reporting ---------------------------------------------------------------------------

_COLUMNS = (
    ("relay", 9),
    ("mode", 9),
    ("streams", 7),
    ("pps", 7),
    ("loss %", 7),
    ("p50 us", 7),
    ("p99 us", 7),
    ("CPU-s", 6),
    ("pkts/CPU-s", 10),
    ("streams/core", 12),
    ("KiB/call", 8),
)


def table_header() -> str:
    names = " ".join(f"{name:>{width}}" for name, width in _COLUMNS)
    return f"{names}\n{'-' * len(names)}"


def table_row(run: Run) -> str:
    report = run.report
    per_cpu = report.per_cpu_second or 0.0
    cells = (
        run.relay,
        run.mode.name,
        f"{report.streams}",
        f"{report.pps:,.0f}",
        f"{report.loss * 100:.3f}",
        f"{report.p50_us:.0f}",
        f"{report.p99_us:.0f}",
        f"{report.relay_cpu or 0.0:.3f}",
        f"{per_cpu:,.0f}",
        f"{report.streams_per_core or 0.0:,.0f}",
        f"{run.memory.loaded_per_call / 1024:.1f}",
    )
    return " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def run_notes(run: Run) -> Iterator[str]:
    report = run.report
    yield "  " + "; ".join(
        f"{d.name} sent {d.sent} received {d.received}, p50/p99 {d.p50_us:.0f}/{d.p99_us:.0f} us"
        for d in report.directions
    )
    if report.behind:
        yield (
            f"  !! generator fell behind ({'; '.join(report.behind)}): "
            f"the {run.relay} figures of this row are not trustworthy"
        )
    if report.relay_cpu is not None and report.relay_cpu > _SATURATED * report.window:
        yield (
            f"  {run.relay} used {report.relay_cpu / report.window:.0%} of its core: saturated, "
            "its latency is mostly queueing"
        )
    if report.send_errors:
        yield f"  generator: {report.send_errors} sends failed (counted as lost)"
    for direction in report.directions:
        if direction.srtp_failures or direction.misrouted:
            yield (
                f"  {run.relay} {direction.name}: {direction.srtp_failures} SRTP failures, "
                f"{direction.misrouted} misrouted packets at the generator"
            )
    for note in run.notes:
        yield f"  {note}"


def ratio_line(runs: Sequence[Run]) -> str | None:
    by_relay = {run.relay: run.report.per_cpu_second for run in runs}
    ours, theirs = by_relay.get("edgegw"), by_relay.get("rtpengine")
    if not ours or not theirs:
        return None
    return (
        f"  ratio edgegw/rtpengine, packets per CPU-second ({runs[0].mode.name}, "
        f"{runs[0].report.streams} streams): {ours / theirs:.2f}"
    )


def memory_lines(runs: Sequence[Run]) -> Iterator[str]:
    yield "memory per relayed call (RSS growth of the relay process / calls):"
    yield (
        f"{'relay':>9} {'mode':>9} {'calls':>5} {'set-up KiB':>10} {'loaded KiB':>10} "
        f"{'py heap KiB':>11}"
    )
    for run in runs:
        memory = run.memory
        traced = (
            "" if memory.traced_per_session is None else f"{memory.traced_per_session / 1024:.1f}"
        )
        yield (
            f"{run.relay:>9} {run.mode.name:>9} {memory.calls:>5} "
            f"{memory.setup_per_call / 1024:>10.1f} {memory.loaded_per_call / 1024:>10.1f} "
            f"{traced:>11}"
        )


def summary_lines(runs: Sequence[Run]) -> Iterator[str]:
    """Ratios over the whole sweep: total packets over total CPU, per mode."""
    for mode in (SRTP_TO_RTP, PLAIN):
        per_cpu: dict[str, float] = {}
        for name in ("edgegw", "rtpengine"):
            chosen = [r.report for r in runs if r.relay == name and r.mode == mode]
            cpu = sum(r.relay_cpu or 0.0 for r in chosen)
            if cpu > 0:
                per_cpu[name] = sum(r.received for r in chosen) / cpu
        if len(per_cpu) == 2:
            yield (
                f"{mode.name}: edgegw {per_cpu['edgegw']:,.0f} vs rtpengine "
                f"{per_cpu['rtpengine']:,.0f} packets per CPU-second over the sweep: "
                f"ratio {per_cpu['edgegw'] / per_cpu['rtpengine']:.2f}"
                + (" (target for G.711 relay: >= 2.00)" if mode == PLAIN else "")
            )


# ---- main --------------------------------------------------------------------------------


def sweep(settings: Settings, placement: Placement) -> list[Run]:
    runs: list[Run] = []
    plan = [(SRTP_TO_RTP, n) for n in settings.srtp_streams]
    plan += [(PLAIN, n) for n in settings.plain_streams]
    print(table_header(), flush=True)
    for mode, count in plan:
        point: list[Run] = []
        for name in settings.relays:
            run = measure(_relay(name, placement), mode, count, settings.traffic, placement)
            point.append(run)
            print(table_row(run), flush=True)
            for line in run_notes(run):
                print(line, flush=True)
        ratio = ratio_line(point)
        if ratio is not None:
            print(ratio, flush=True)
        runs.extend(point)
    return runs


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 20,50,100, got {text!r}") from None
    if min(counts, default=1) < 1:
        raise argparse.ArgumentTypeError(f"expected positive stream counts, got {text!r}")
    return counts


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=_counts, default=[20, 50, 100, 200])
    parser.add_argument("--plain-streams", type=_counts, default=[50, 200])
    parser.add_argument("--seconds", type=float, default=6.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--relays",
        default="edgegw,rtpengine",
        help="comma-separated: edgegw, rtpengine",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=_NICE,
        help="nice value of relays and generator (negative: root only; 0 when not root)",
    )
    parser.add_argument(
        "--generator-rt",
        type=int,
        default=_GENERATOR_RT,
        help="SCHED_RR priority of the generator, 0 for none (root only; 0 when not root)",
    )
    args = parser.parse_args(argv)
    relays = tuple(r.strip() for r in args.relays.split(",") if r.strip())
    unknown = [r for r in relays if r not in ("edgegw", "rtpengine")]
    if unknown or not relays:
        parser.error(f"--relays takes edgegw and/or rtpengine, got {args.relays!r}")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    if not 0 <= args.generator_rt <= 99:
        parser.error(f"--generator-rt takes 0 to 99, got {args.generator_rt}")
    root = os.geteuid() == 0
    nice = args.nice if root or args.nice >= 0 else 0
    generator_rt = args.generator_rt if root else 0
    traffic = Traffic(seconds=args.seconds, warmup=args.warmup)
    return Settings(args.streams, args.plain_streams, traffic, relays, nice, generator_rt)


def _header(settings: Settings, placement: Placement) -> str:
    codec = settings.traffic.codec
    version = rtpengine_version() if "rtpengine" in settings.relays else "not run"
    return (
        f"media relay, edgegw vs rtpengine ({version}) userspace; {placement.describe()}; "
        f"{codec.encoding} {1000 // codec.pps} ms, {12 + codec.payload_size}-byte RTP, "
        f"{codec.pps} pps each way per stream; SRTP {_SRTP_SUITE} on leg A; "
        f"window {settings.traffic.seconds:g} s after {settings.traffic.warmup:g} s warm-up"
    )


def _measure_all(settings: Settings, placement: Placement) -> list[Run]:
    floor = baseline(SRTP_TO_RTP, _BASELINE_STREAMS, _BASELINE_SECONDS, placement)
    print(
        f"generator floor (no relay, {floor.streams} streams, SRTP one way): "
        f"latency p50 {floor.p50_us:.0f} us, p99 {floor.p99_us:.0f} us"
        + (f"; !! generator fell behind: {'; '.join(floor.behind)}" if floor.behind else ""),
        flush=True,
    )
    return sweep(settings, placement)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    if "rtpengine" in settings.relays and shutil.which("rtpengine") is None:
        raise SystemExit("bench_srtp_relay: rtpengine is not installed (rtpengine-daemon)")
    placement = Placement.split(settings.nice, settings.generator_rt)
    print(_header(settings, placement), flush=True)
    affinity = os.sched_getaffinity(0)
    try:
        if placement.load is not None:
            os.sched_setaffinity(0, placement.load)  # this process only waits: off the relay's core
        runs = _measure_all(settings, placement)
    except (BenchError, LoadError, RtpEngineError, NgError, NgTimeout) as exc:
        raise SystemExit(f"bench_srtp_relay: {exc}") from exc
    finally:
        os.sched_setaffinity(0, affinity)
    print()
    for line in memory_lines(runs):
        print(line)
    print()
    for line in summary_lines(runs):
        print(line)


if __name__ == "__main__":
    main()
