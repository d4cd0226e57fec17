"""Media load generator for relay benchmarks: RTP/SRTP streams that measure their own latency.

A figure-maker, not a test. Each stream is a pair of UDP sockets on loopback,
one per leg of a relayed call: the leg-A socket sends to the relay's leg-A
port and receives what the relay sends toward A, the leg-B socket likewise.
Both directions run at once (A to B and B to A) at the codec's packet rate,
each packet an RTP packet (RFC 3550 5.1) whose payload starts with the
generator's ``time.perf_counter_ns`` at send time; the receiving socket lives
in the same process, so receive time minus that stamp is the one-way latency
through the relay on one clock. Any leg may be SRTP (RFC 3711) in either
direction: the generator protects with the key it "offered" for that leg and
unprotects with the key the relay answered, through :mod:`gateway.media.srtp`.

Streams are staggered evenly over the packet interval, so the relay sees a
steady load rather than bursts. A run has a warm-up (latching, SRTP streams
being created), a measurement window and a short linger for packets in
flight. Only packets *sent* inside the window count, and the relay's CPU time
is read from ``/proc`` (``schedstat`` of every thread: nanoseconds of run
time, exact, unlike the 10 ms ticks of ``stat``) at the window's edges.

The generator must keep up or the figures are wrong: it records how late each
send was against its schedule and its own CPU use, and a report whose
generator fell behind says so (:attr:`LoadReport.behind`).

A transcoding relay makes new payloads, so no stamp survives it: a run with
:attr:`Traffic.transcoded` sends, per direction, pre-encoded payloads of one
codec in a loop (fresh sequence numbers and timestamps, so the generator spends
no CPU encoding) and expects another payload type back. Such a direction counts
what arrives by arrival time inside the window; since the relay keeps the
packet rate (20 ms in, 20 ms out), a steady output gives as many packets in
the window as were sent in it, and only packets that never came out (or came
out in a burst after the window) count as lost. It has no latency figures.

The generator runs in a child process (``python -m tests.bench.media_load``,
a JSON spec on stdin, the sockets handed over with ``pass_fds``, a JSON report
on stdout) pinned to its own core: :func:`run_load` does all of that.
"""

from __future__ import annotations

import array
import base64
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.media.srtp import (
    CryptoAttribute,
    SrtpDrop,
    SrtpReceiver,
    SrtpSender,
    SrtpSuite,
    new_crypto,
    parse_crypto,
)
from tests.bench.rtpengine import child_setup

__all__ = [
    "Codec",
    "Direction",
    "GenLeg",
    "GenStream",
    "LoadError",
    "LoadReport",
    "Payloads",
    "Traffic",
    "cpus_busy",
    "process_cpu",
    "rss_bytes",
    "run_load",
]

HOST = "127.0.0.1"
_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_STAMPED = struct.Struct("!HIIQ")  # from byte 2: sequence, timestamp, SSRC, send time (ns)
_SSRC_STAMP = struct.Struct("!IQ")  # from byte 8: SSRC, send time
_STAMP_BYTES = 8
_RTP_HEADER = 12
_RECV_BUFFER = 2048
# A send may go out this early: it saves a wake-up per stream at high stream counts.
_EARLY_NS = 200_000
_SOCKET_BUFFER = 1 << 20
_SSRC_BASE = 0x5EED0000
# The generator counts as behind when the 99th percentile of its send lateness
# exceeds this share of the packet interval, or when it used this share of its core.
_LATE_SHARE = 0.25
_BUSY_SHARE = 0.9
_DIRECTIONS = ("a->b", "b->a")
# An RTP payload that fits a 1500-byte Ethernet frame with IPv4, UDP, RTP and an SRTP tag.
_MAX_PAYLOAD = 1400
# RTCP packet types 192-223 (RFC 5761 4): what a relay's reports start with after the version.
_RTCP_TYPES = (192, 223)


class LoadError(RuntimeError):
    """The generator could not run (bad parameters, a child that failed)."""


@dataclass(frozen=True)
class Codec:
    """What one stream sends: payload type, payload bytes and rate.

    The defaults are PCMA at 20 ms: 160 payload bytes, a 172-byte RTP packet,
    50 packets per second. ``encoding`` and ``clock_rate`` name it in SDP.
    """

    payload_type: int = 8
    payload_size: int = 160
    samples_per_packet: int = 160
    pps: int = 50
    encoding: str = "PCMA"
    clock_rate: int = 8000

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise LoadError(f"payload type {self.payload_type} is outside 0-127")
        if self.payload_size < _STAMP_BYTES:
            raise LoadError(
                f"payload of {self.payload_size} bytes cannot hold the {_STAMP_BYTES}-byte stamp"
            )
        if not 1 <= self.pps <= 1000:
            raise LoadError(f"{self.pps} packets per second is outside 1-1000")


@dataclass(frozen=True)
class Payloads:
    """One direction of a transcoded stream: what the sending leg sends, what comes back.

    ``payloads`` are pre-encoded packets of ``send_type`` (one codec), sent in a
    loop with timestamps advancing by ``samples_per_packet`` (the send codec's RTP
    clock); packets arriving on the other leg must have ``receive_type`` (the
    codec the relay transcodes into), anything else counts as misrouted.
    """

    send_type: int
    samples_per_packet: int
    payloads: tuple[bytes, ...]
    receive_type: int

    def __post_init__(self) -> None:
        for name, pt in (("send", self.send_type), ("receive", self.receive_type)):
            if not 0 <= pt <= 127:
                raise LoadError(f"{name} payload type {pt} is outside 0-127")
        if self.samples_per_packet < 1:
            raise LoadError(f"{self.samples_per_packet} samples per packet: must be positive")
        if not self.payloads:
            raise LoadError("no payloads to send")
        for index, payload in enumerate(self.payloads):
            if not 0 < len(payload) <= _MAX_PAYLOAD:
                raise LoadError(
                    f"payload {index} has {len(payload)} bytes: must be 1 to {_MAX_PAYLOAD}"
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "send_type": self.send_type,
            "samples_per_packet": self.samples_per_packet,
            "payloads": [base64.b64encode(p).decode("ascii") for p in self.payloads],
            "receive_type": self.receive_type,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Payloads:
        payloads = tuple(base64.b64decode(p) for p in raw["payloads"])
        return cls(
            int(raw["send_type"]),
            int(raw["samples_per_packet"]),
            payloads,
            int(raw["receive_type"]),
        )


@dataclass(frozen=True)
class Traffic:
    """The shape of a run: codec, warm-up, measurement window and linger (seconds).

    ``transcoded`` (A to B, B to A) makes both directions send pre-encoded
    payloads and count by arrival time (see the module docstring); ``codec``
    then gives only the packet rate.
    """

    codec: Codec = field(default_factory=Codec)
    seconds: float = 8.0
    warmup: float = 1.0
    linger: float = 0.3
    transcoded: tuple[Payloads, Payloads] | None = None

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.warmup < 0 or self.linger < 0:
            raise LoadError(
                f"run of {self.seconds} s, warm-up {self.warmup} s, linger {self.linger} s: "
                "the window must be positive and the others not negative"
            )


@dataclass(eq=False)
class GenLeg:
    """The generator's side of one leg of one stream.

    ``relay`` is where this leg's packets go (the relay's port for the leg);
    ``tx_crypto`` protects what this socket sends (the key the generator
    offered), ``rx_crypto`` unprotects what arrives (the key the relay
    answered). None for a plain RTP leg.
    """

    sock: socket.socket
    tx_crypto: CryptoAttribute | None = None
    rx_crypto: CryptoAttribute | None = None
    relay: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def spec(self) -> dict[str, Any]:
        if self.relay is None:
            raise LoadError(f"generator leg on port {self.port} has no relay address")
        return {
            "fd": self.sock.fileno(),
            "relay": list(self.relay),
            "tx": None if self.tx_crypto is None else self.tx_crypto.to_value(),
            "rx": None if self.rx_crypto is None else self.rx_crypto.to_value(),
        }


@dataclass(eq=False)
class GenStream:
    """Both legs of one stream: ``a`` (the app side) and ``b`` (the carrier side)."""

    a: GenLeg
    b: GenLeg

    @classmethod
    def bind(cls, *, srtp_a: SrtpSuite | None = None, srtp_b: SrtpSuite | None = None) -> GenStream:
        """Two fresh loopback sockets; an SRTP leg gets a fresh key of its suite to offer."""
        return cls(_bind_leg(srtp_a), _bind_leg(srtp_b))

    def close(self) -> None:
        self.a.sock.close()
        self.b.sock.close()


def _bind_leg(suite: SrtpSuite | None) -> GenLeg:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
    return GenLeg(sock, None if suite is None else new_crypto(1, suite))


@dataclass(frozen=True)
class Direction:
    """One direction of all streams over the measurement window."""

    name: str
    sent: int
    received: int
    p50_us: float
    p99_us: float
    max_us: float
    srtp_failures: int
    misrouted: int
    received_bytes: int = 0
    """Payload bytes of the packets counted as received (RTP header and SRTP tag excluded)."""

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0

    @property
    def payload_bytes(self) -> float:
        """Mean payload size of what arrived."""
        return self.received_bytes / self.received if self.received else 0.0


@dataclass(frozen=True)
class LoadReport:
    """What one run measured; ``relay_cpu`` is None when no relay process was named."""

    streams: int
    pps_per_stream: int
    window: float
    directions: tuple[Direction, ...]
    p50_us: float
    p99_us: float
    relay_cpu: float | None
    generator_cpu: float
    send_late_p99_us: float
    send_late_max_us: float
    send_errors: int
    behind: tuple[str, ...]
    relay_core_busy: float | None = None
    """Seconds the relay's CPUs (its affinity) were busy over the window, with anyone's
    work (``/proc/stat``, 10 ms ticks): minus ``relay_cpu``, what others ran there."""

    @property
    def sent(self) -> int:
        return sum(d.sent for d in self.directions)

    @property
    def received(self) -> int:
        return sum(d.received for d in self.directions)

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 0.0

    @property
    def pps(self) -> float:
        """Packets relayed per second, both directions."""
        return self.received / self.window if self.window else 0.0

    @property
    def per_cpu_second(self) -> float | None:
        """Packets relayed per CPU-second of the relay."""
        if not self.relay_cpu:
            return None
        return self.received / self.relay_cpu

    @property
    def streams_per_core(self) -> float | None:
        """Bidirectional streams one core could relay at this cost per packet."""
        per_cpu = self.per_cpu_second
        return None if per_cpu is None else per_cpu / (2 * self.pps_per_stream)


# ---- /proc readings ------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds of every live thread of ``pid`` (``/proc/PID/task/*/schedstat``).

    schedstat's first field is the time on CPU in nanoseconds; falls back to
    utime + stime of ``/proc/PID/stat`` (clock ticks) when schedstat is absent.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except FileNotFoundError:  # the thread ended meanwhile
                continue
    except FileNotFoundError:
        raise LoadError(f"process {pid} is gone: no CPU time to read") from None
    if total:
        return total / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus_busy(cpus: frozenset[int]) -> float:
    """Seconds ``cpus`` have been busy since boot, with anyone's work (``/proc/stat``).

    Busy is every field but idle and iowait (proc(5): user, nice, system, irq,
    softirq and steal; guest time is in user already).
    """
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LoadError(f"process {pid} reports no VmRSS")


# ---- the parent's side ---------------------------------------------------------------------


def run_load(
    streams: Sequence[GenStream],
    traffic: Traffic,
    *,
    relay_pid: int | None,
    cores: frozenset[int] | None,
    nice: int = 0,
    rt_priority: int = 0,
) -> LoadReport:
    """Run the generator over ``streams`` in a child pinned to ``cores``; its report.

    ``nice`` and ``rt_priority`` (SCHED_RR when above 0) are the child's
    scheduling priority, see :func:`tests.bench.rtpengine.child_setup`: on a
    shared machine they keep other processes from delaying its sends and
    receives, which would show as latency of the relay.
    """
    if not streams:
        raise LoadError("no streams to generate")
    spec = {
        "codec": asdict(traffic.codec),
        "traffic": {
            "seconds": traffic.seconds,
            "warmup": traffic.warmup,
            "linger": traffic.linger,
        },
        "transcoded": (
            None if traffic.transcoded is None else [p.to_json() for p in traffic.transcoded]
        ),
        "relay_pid": relay_pid,
        "streams": [{"a": s.a.spec(), "b": s.b.spec()} for s in streams],
    }
    fds = [fd for s in streams for fd in (s.a.sock.fileno(), s.b.sock.fileno())]
    budget = traffic.warmup + traffic.seconds + traffic.linger + 30
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tests.bench.media_load"],
            input=json.dumps(spec).encode(),
            capture_output=True,
            pass_fds=fds,
            preexec_fn=child_setup(cores, nice, rt_priority),
            timeout=budget,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"the generator did not finish within {budget:g} s") from exc
    if result.returncode != 0:
        raise LoadError(
            f"the generator failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()[-1500:]}"
        )
    return _report(json.loads(result.stdout))


def _report(raw: dict[str, Any]) -> LoadReport:
    directions = tuple(Direction(**d) for d in raw.pop("directions"))
    raw["behind"] = tuple(raw["behind"])
    return LoadReport(directions=directions, **raw)


# ---- the child: the generator itself -------------------------------------------------------


@dataclass(eq=False)
class _Tx:
    """One direction of one stream as the sender sees it."""

    sock: socket.socket
    destination: tuple[str, int]
    packet: bytearray
    sender: SrtpSender | None


@dataclass(eq=False)
class _Rx:
    """One receiving socket: which direction, which SSRC to expect, how to unprotect.

    ``receive_type`` is set for a transcoded direction: packets carry no stamp
    and must have that payload type (their SSRC is the relay's own).
    """

    sock: socket.socket
    direction: int
    ssrc: int
    receiver: SrtpReceiver | None
    receive_type: int | None = None


@dataclass
class _Tally:
    received: int = 0
    received_bytes: int = 0
    srtp_failures: int = 0
    misrouted: int = 0
    latency: array.array[int] = field(default_factory=lambda: array.array("q"))


class _Generator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.codec = Codec(**spec["codec"])
        self.traffic = Traffic(codec=self.codec, **spec["traffic"])
        self.relay_pid: int | None = spec["relay_pid"]
        self.relay_cpus = frozenset(
            () if self.relay_pid is None else os.sched_getaffinity(self.relay_pid)
        )
        raw = spec.get("transcoded")
        self.transcoded: tuple[Payloads, Payloads] | None = (
            None if raw is None else (Payloads.from_json(raw[0]), Payloads.from_json(raw[1]))
        )
        types: tuple[int | None, int | None] = (None, None)
        if self.transcoded is not None:
            types = (self.transcoded[0].receive_type, self.transcoded[1].receive_type)
        self.tx: list[tuple[_Tx, _Tx]] = []
        self.rx: list[_Rx] = []
        for index, stream in enumerate(spec["streams"]):
            a, b = _leg_socket(stream["a"]), _leg_socket(stream["b"])
            ssrc_ab, ssrc_ba = _SSRC_BASE + 2 * index, _SSRC_BASE + 2 * index + 1
            self.tx.append(
                (
                    _Tx(a, _address(stream["a"]), self._packet(ssrc_ab), _sender(stream["a"])),
                    _Tx(b, _address(stream["b"]), self._packet(ssrc_ba), _sender(stream["b"])),
                )
            )
            self.rx.append(_Rx(b, 0, ssrc_ab, _receiver(stream["b"]), types[0]))
            self.rx.append(_Rx(a, 1, ssrc_ba, _receiver(stream["a"]), types[1]))
        self.tallies = (_Tally(), _Tally())
        self.sent = [0, 0]
        self.lateness = array.array("q")
        self.window_start = 1 << 62  # perf_counter_ns; nothing counts until it is set
        self.window_end = 1 << 62
        self.buffer = bytearray(_RECV_BUFFER)
        self.send_errors = 0

    def _packet(self, ssrc: int) -> bytearray:
        packet = bytearray(_RTP_HEADER + self.codec.payload_size)
        _HEADER.pack_into(packet, 0, 0x80, self.codec.payload_type, 0, 0, ssrc)
        packet[_RTP_HEADER + _STAMP_BYTES :] = b"\xd5" * (self.codec.payload_size - _STAMP_BYTES)
        return packet

    def run(self) -> dict[str, Any]:
        selector = selectors.EpollSelector()
        for rx in self.rx:
            rx.sock.setblocking(False)
            selector.register(rx.sock, selectors.EVENT_READ, rx)
        traffic = self.traffic
        n = len(self.tx)
        period = 1_000_000_000 // self.codec.pps
        start = time.perf_counter_ns() + 50_000_000
        measure_at = start + int(traffic.warmup * 1e9)
        stop_at = measure_at + int(traffic.seconds * 1e9)
        linger_until = stop_at + int(traffic.linger * 1e9)
        cpu: dict[str, float] = {}
        slot = 0
        due = start
        perf = time.perf_counter_ns
        while (now := perf()) < linger_until:
            if "relay0" not in cpu and now >= measure_at:
                self._mark(cpu, "0")
                self.window_start = perf()
            if "relay1" not in cpu and now >= stop_at:
                self.window_end = perf()
                self._mark(cpu, "1")
            while due < stop_at and due <= now + _EARLY_NS:
                self._send(slot % n, slot // n, due)
                slot += 1
                due = start + (slot // n) * period + (slot % n) * period // n
            wake = due if due < stop_at else linger_until
            if "relay1" not in cpu:  # the window's end must be read on time, sends or not
                wake = min(wake, stop_at)
            for key, _ in selector.select(max(0, wake - perf()) / 1e9):
                self._drain(key.data)
        return self._summary(cpu)

    def _mark(self, cpu: dict[str, float], edge: str) -> None:
        if self.relay_pid is not None:
            cpu["relay" + edge] = process_cpu(self.relay_pid)
            cpu["busy" + edge] = cpus_busy(self.relay_cpus)
        else:
            cpu["relay" + edge] = cpu["busy" + edge] = 0.0
        cpu["self" + edge] = time.process_time()

    def _send(self, index: int, cycle: int, due: int) -> None:
        seq = cycle & 0xFFFF
        timestamp = (cycle * self.codec.samples_per_packet) & 0xFFFFFFFF
        perf = time.perf_counter_ns
        first = perf()
        in_window = self.window_start <= first < self.window_end
        if in_window:
            self.lateness.append(max(0, first - due))
        transcoded = self.transcoded
        for direction, tx in enumerate(self.tx[index]):
            ssrc = _SSRC_BASE + 2 * index + direction
            data: bytes | bytearray
            if transcoded is None:
                packet = tx.packet
                # Stamped per packet: the second one leaves after the first one's work.
                _STAMPED.pack_into(packet, 2, seq, timestamp, ssrc, perf())
                data = packet
            else:
                data = _looped(transcoded[direction], index, cycle, ssrc)
            if tx.sender is not None:
                try:
                    data = tx.sender.protect_rtp(bytes(data))
                except SrtpDrop as exc:
                    raise LoadError(
                        f"the generator could not protect its own packet: {exc}"
                    ) from None
            try:
                tx.sock.sendto(data, tx.destination)
            except OSError:  # a full buffer or a queued ICMP error: sent, and lost
                self.send_errors += 1
            if in_window:
                self.sent[direction] += 1

    def _drain(self, rx: _Rx) -> None:
        buf = self.buffer
        tally = self.tallies[rx.direction]
        perf = time.perf_counter_ns
        recv_into = rx.sock.recv_into
        while True:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error (port unreachable) queued on the socket
                continue
            arrived = perf()
            data: bytes | bytearray = buf
            size = n
            if rx.receiver is not None:
                try:
                    data = rx.receiver.unprotect_rtp(bytes(buf[:n]))
                except SrtpDrop:
                    tally.srtp_failures += 1
                    continue
                size = len(data)
            if rx.receive_type is not None:
                self._count_unstamped(rx.receive_type, tally, data, size, arrived)
                continue
            if size < _RTP_HEADER + _STAMP_BYTES:
                tally.misrouted += 1
                continue
            ssrc, stamp = _SSRC_STAMP.unpack_from(data, 8)
            if ssrc != rx.ssrc:
                tally.misrouted += 1
                continue
            if self.window_start <= stamp < self.window_end:
                tally.received += 1
                tally.received_bytes += size - _RTP_HEADER
                tally.latency.append(arrived - stamp)

    def _count_unstamped(
        self, receive_type: int, tally: _Tally, data: bytes | bytearray, size: int, arrived: int
    ) -> None:
        """A transcoded packet: counted by when it arrived, if it has the expected type.

        RTCP that a transcoding relay makes for the leg's port + 1 may land here (the
        generator binds its sockets next to each other): told apart by its packet
        type (RFC 5761 4) and ignored.
        """
        if size > 1 and _RTCP_TYPES[0] <= data[1] <= _RTCP_TYPES[1]:
            return
        if size <= _RTP_HEADER or data[1] & 0x7F != receive_type:
            tally.misrouted += 1
            return
        if self.window_start <= arrived < self.window_end:
            tally.received += 1
            tally.received_bytes += size - _RTP_HEADER

    def _summary(self, cpu: dict[str, float]) -> dict[str, Any]:
        window = (self.window_end - self.window_start) / 1e9
        relay_cpu = cpu["relay1"] - cpu["relay0"] if self.relay_pid is not None else None
        own_cpu = cpu["self1"] - cpu["self0"]
        directions = []
        for name, tally, sent in zip(_DIRECTIONS, self.tallies, self.sent, strict=True):
            p50, p99, peak = _percentiles(tally.latency)
            directions.append(
                {
                    "name": name,
                    "sent": sent,
                    "received": tally.received,
                    "p50_us": p50,
                    "p99_us": p99,
                    "max_us": peak,
                    "srtp_failures": tally.srtp_failures,
                    "misrouted": tally.misrouted,
                    "received_bytes": tally.received_bytes,
                }
            )
        merged = array.array("q", self.tallies[0].latency)
        merged.extend(self.tallies[1].latency)
        p50, p99, _ = _percentiles(merged)
        _, late_p99, late_max = _percentiles(self.lateness)
        return {
            "streams": len(self.tx),
            "pps_per_stream": self.codec.pps,
            "window": window,
            "directions": directions,
            "p50_us": p50,
            "p99_us": p99,
            "relay_cpu": relay_cpu,
            "relay_core_busy": (
                cpu["busy1"] - cpu["busy0"] if self.relay_pid is not None else None
            ),
            "generator_cpu": own_cpu,
            "send_late_p99_us": late_p99,
            "send_late_max_us": late_max,
            "send_errors": self.send_errors,
            "behind": self._behind(late_p99, own_cpu, window, sum(self.sent)),
        }

    def _behind(self, late_p99_us: float, own_cpu: float, window: float, sent: int) -> list[str]:
        reasons = []
        interval_us = 1e6 / self.codec.pps
        if late_p99_us > _LATE_SHARE * interval_us:
            reasons.append(
                f"its sends were {late_p99_us:.0f} us late at p99 "
                f"(more than {_LATE_SHARE:.0%} of the {interval_us:.0f} us interval)"
            )
        if own_cpu > _BUSY_SHARE * window:
            reasons.append(f"it used {own_cpu / window:.0%} of its core")
        expected = 2 * len(self.tx) * self.codec.pps * window
        if sent < 0.99 * expected:
            reasons.append(f"it sent {sent} of the {expected:.0f} packets due")
        return reasons


def _looped(payloads: Payloads, index: int, cycle: int, ssrc: int) -> bytes:
    """Packet ``cycle`` of stream ``index``; streams start at different points of the loop."""
    loop = payloads.payloads
    header = _HEADER.pack(
        0x80,
        payloads.send_type,
        cycle & 0xFFFF,
        (cycle * payloads.samples_per_packet) & 0xFFFFFFFF,
        ssrc,
    )
    return header + loop[(cycle + 7 * index) % len(loop)]


def _percentiles(samples: array.array[int]) -> tuple[float, float, float]:
    """p50, p99 and max of nanosecond samples, in microseconds (0 when empty)."""
    if not samples:
        return 0.0, 0.0, 0.0
    ordered = sorted(samples)
    last = len(ordered) - 1
    return (
        ordered[last // 2] / 1e3,
        ordered[min(last, round(0.99 * last))] / 1e3,
        ordered[last] / 1e3,
    )


def _leg_socket(leg: dict[str, Any]) -> socket.socket:
    return socket.socket(fileno=leg["fd"])


def _address(leg: dict[str, Any]) -> tuple[str, int]:
    host, port = leg["relay"]
    return str(host), int(port)


def _sender(leg: dict[str, Any]) -> SrtpSender | None:
    return None if leg["tx"] is None else SrtpSender(parse_crypto(leg["tx"]))


def _receiver(leg: dict[str, Any]) -> SrtpReceiver | None:
    return None if leg["rx"] is None else SrtpReceiver(parse_crypto(leg["rx"]))


def main() -> None:
    """The child: read the spec from stdin, generate, print the report as JSON."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(_Generator(spec).run()))


if __name__ == "__main__":
    main()
