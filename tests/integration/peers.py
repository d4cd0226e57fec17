"""Real peers for integration tests: sipp runs, a threaded RTP endpoint, the gateway process.

* `SippRun` starts sipp 3.6.1 on a scenario of `scenarios/` with every trace a test needs
  (messages, errors, statistics, `<log>` actions), always bounded in time: `-timeout` ends
  the run, `-recv_timeout` aborts a call stuck waiting (sipp's `-timeout` alone waits for
  calls in progress), and the caller's own deadline kills what is left. `SippResult` holds
  the exit code, the call counts of the statistics file and the parsed message log.
* `RtpPeer` is a plain RTP endpoint (RFC 3550 5.1 header, PCMA payload) running in threads: it
  sends a 20 ms stream to a target, counts what arrives and can echo, so media through the
  relay can be checked in both directions. `external_media()` rewrites a scenario's SDP to
  name such a peer instead of sipp's own media port (sipp always binds `-mp` itself).
* `sip_ping()` / `wait_for_sip()` send OPTIONS over UDP until anything SIP answers.
* `gateway_process()` runs `edgegw run --config FILE` as a child process for black-box tests.

The blocking waits have `*_async` twins that poll with `trio.sleep`, for tests in which the
gateway runs in the test's own Trio loop and must not be starved.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")
REPO_ROOT = Path(__file__).resolve().parents[2]

Address = tuple[str, int]

# sipp's exit codes (sipp -h): 0 every call succeeded, 1 at least one failed, 97 ended by
# an internal command or -timeout, 99 ended without any call; -1/-2 fatal (255/254).
SIPP_ALL_OK = 0
SIPP_SOME_FAILED = 1
SIPP_STOPPED = 97
SIPP_NO_CALLS = 99

# The pcap playback step of the UAC scenarios, removed when an RtpPeer provides the media.
PLAY_PCAP_STEP = """  <nop>
    <action>
      <exec play_pcap_audio="/usr/share/sip-tester/g711a.pcap"/>
    </action>
  </nop>
"""


def sipp_binary() -> str | None:
    """The sipp executable on PATH, or None (tests then skip with a reason)."""
    return shutil.which("sipp")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_free(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(_family(host), kind) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# Ports picked for peers and gateways stay below the kernel's ephemeral range (32768 and
# up): a port picked there can be handed to any socket bound to port 0 (a test's own
# peer, a client connection) between the pick and the bind.
SIGNALLING_PORTS = (21000, 29999)
PEER_MEDIA_PORTS = (6000, 9999)
GATEWAY_MEDIA_PORTS = (10000, 20999)


def free_udp_port(host: str = "127.0.0.1", *, also_tcp: bool = False) -> int:
    """A UDP port free now (and free on TCP too if asked), below the ephemeral range.

    Another process may take it before the caller binds it; tests accept that small race.
    """
    for _ in range(200):
        port = random.randint(*SIGNALLING_PORTS)
        if _is_free(host, port, socket.SOCK_DGRAM) and (
            not also_tcp or _is_free(host, port, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError(f"no free port on {host} for UDP{' and TCP' if also_tcp else ''}")


def free_media_port(host: str = "127.0.0.1") -> int:
    """An even port P with P to P+3 free on UDP: sipp binds `-mp` P and P+2 (and RTCP may
    want P+1 and P+3)."""
    for _ in range(500):
        port = random.randrange(PEER_MEDIA_PORTS[0], PEER_MEDIA_PORTS[1] - 3, 2)
        if all(_is_free(host, port + i, socket.SOCK_DGRAM) for i in range(4)):
            return port
    raise RuntimeError(f"no free block of 4 UDP ports on {host}")


def scenario_path(name: str | Path) -> Path:
    """`name` as given when it is a path to a file, else `scenarios/NAME[.xml]`."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = SCENARIOS / (path.name if path.suffix == ".xml" else f"{path.name}.xml")
    if not candidate.is_file():
        raise FileNotFoundError(f"no sipp scenario {name!r} (looked for {candidate})")
    return candidate


def derive_scenario(source: str | Path, dest: Path, replacements: Mapping[str, str]) -> Path:
    """Write a copy of scenario `source` to `dest` with each text replaced (every occurrence).

    A replacement whose text does not occur is an error, so a scenario edit cannot silently
    turn a derived test into a different one.
    """
    text = scenario_path(source).read_text(encoding="latin-1")
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"{source}: text to replace not found: {old!r}")
        text = text.replace(old, new)
    dest.write_text(text, encoding="latin-1")
    return dest


def external_media(source: str | Path, dest: Path, address: Address) -> Path:
    """A copy of `source` whose SDP names `address` (an RtpPeer) as its media, without sipp's
    own pcap playback: the peer sends and counts instead."""
    host, port = address
    text = scenario_path(source).read_text(encoding="latin-1")
    replacements = {
        "c=IN IP[media_ip_type] [media_ip]": f"c=IN {'IP6' if ':' in host else 'IP4'} {host}",
        "m=audio [media_port] ": f"m=audio {port} ",
    }
    if PLAY_PCAP_STEP in text:
        replacements[PLAY_PCAP_STEP] = ""
    return derive_scenario(source, dest, replacements)


# ---- sipp message log --------------------------------------------------------------------

_BLOCK_HEAD = re.compile(
    r"^(?P<transport>UDP|TCP|TLS|SCTP) message (?P<dir>sent|received)\b"
    r"|^Unexpected (?P<utransport>UDP|TCP|TLS|SCTP) message received",
)


@dataclass(frozen=True)
class SipTrace:
    """One SIP message of sipp's `-trace_msg` log."""

    direction: Literal["sent", "received", "unexpected"]
    transport: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int | None:
        """The status code of a response, None for a request."""
        if not self.is_response:
            return None
        return int(self.first_line.split()[1])

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if not self.is_response:
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq else ""

    def headers(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive, full names only), in order."""
        wanted = name.lower()
        values = []
        for line in self.text.split("\n")[1:]:
            line = line.rstrip("\r")
            if not line.strip():
                break
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == wanted:
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    @property
    def body(self) -> str:
        parts = re.split(r"\r?\n\r?\n", self.text, maxsplit=1)
        return parts[1] if len(parts) == 2 else ""


def parse_message_log(text: str) -> list[SipTrace]:
    """The messages of a sipp `-message_file`, in log order."""
    traces: list[SipTrace] = []
    for block in re.split(r"^-{20,}[^\n]*\n", text, flags=re.MULTILINE):
        head, _, rest = block.partition("\n")
        match = _BLOCK_HEAD.match(head.strip())
        if match is None:
            continue
        if match.group("utransport"):
            direction: Literal["sent", "received", "unexpected"] = "unexpected"
            transport = match.group("utransport")
        else:
            direction = "sent" if match.group("dir") == "sent" else "received"
            transport = match.group("transport")
        message = rest.lstrip("\r\n").rstrip()
        if message:
            traces.append(SipTrace(direction, transport, message))
    return traces


# ---- sipp runs ---------------------------------------------------------------------------


@dataclass
class SippResult:
    """What a finished sipp run left behind."""

    returncode: int
    timed_out: bool
    successful: int
    failed: int
    stats: dict[str, str]
    messages: str
    errors: str
    logs: str
    screen: str
    traces: list[SipTrace] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every call succeeded and sipp ended by itself."""
        return self.returncode == SIPP_ALL_OK and self.failed == 0 and not self.timed_out

    def sent(self, first_line_prefix: str = "") -> list[SipTrace]:
        return [
            t
            for t in self.traces
            if t.direction == "sent" and t.first_line.startswith(first_line_prefix)
        ]

    def received(self, first_line_prefix: str = "") -> list[SipTrace]:
        return [
            t
            for t in self.traces
            if t.direction == "received" and t.first_line.startswith(first_line_prefix)
        ]

    def describe(self) -> str:
        """A summary for assertion messages: counts, the error log, the message flow."""
        flow = "\n".join(
            f"  {'->' if t.direction == 'sent' else '<-'} {t.first_line}" for t in self.traces
        )
        return (
            f"sipp exit {self.returncode} (timed out: {self.timed_out}), "
            f"{self.successful} successful, {self.failed} failed calls\n"
            f"errors:\n{self.errors.strip()}\nflow:\n{flow}"
        )


_SCREEN_COUNT = re.compile(r"^\s*(Successful|Failed) call\s*\|\s*\d+\s*\|\s*(\d+)", re.MULTILINE)


class SippRun:
    """One sipp process on a scenario, its traces in `workdir`.

    `remote` is "host:port" for a UAC (None for a UAS). Ports left as None are picked free.
    `duration_ms` is sipp's -d (the length of `<pause/>`), `timeout` bounds the whole run
    (sipp's -timeout, and the deadline after which `wait()` kills it), `recv_timeout_ms`
    bounds each wait for a message (default: the whole timeout). `keys` become `-key K V`
    (e.g. {"caller": "1001"}); `auth` is (user, password) for -au/-ap; `service` is -s.

    Use as a context manager so the process is always gone when the test ends.
    """

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        remote: str | None = None,
        name: str | None = None,
        local_ip: str = "127.0.0.1",
        local_port: int | None = None,
        media_ip: str | None = None,
        media_port: int | None = None,
        transport: Literal["u1", "un", "t1", "tn"] = "u1",
        calls: int = 1,
        rate: float | None = None,
        limit: int | None = None,
        duration_ms: int = 1000,
        timeout: float = 30.0,
        recv_timeout_ms: int | None = None,
        service: str | None = None,
        auth: tuple[str, str] | None = None,
        keys: Mapping[str, str] | None = None,
        rtp_echo: bool = False,
        trace_messages: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        binary = sipp_binary()
        if binary is None:
            raise FileNotFoundError("sipp is not on PATH (Debian package sip-tester)")
        self.scenario = scenario_path(scenario)
        self.workdir = workdir
        self.name = name or self.scenario.stem
        self.local_ip = local_ip
        self.local_port = local_port or free_udp_port(local_ip, also_tcp=transport[0] == "t")
        self.media_ip = media_ip or local_ip
        self.media_port = media_port or free_media_port(self.media_ip)
        self.transport = transport
        self.timeout = timeout
        self.trace_messages = trace_messages
        workdir.mkdir(parents=True, exist_ok=True)
        self.message_file = workdir / f"{self.name}.messages.log"
        self.error_file = workdir / f"{self.name}.errors.log"
        self.stat_file = workdir / f"{self.name}.stat.csv"
        self.log_file = workdir / f"{self.name}.logs.log"
        self.screen_file = workdir / f"{self.name}.screen.log"
        self.stdout_file = workdir / f"{self.name}.stdout.log"
        recv_timeout = recv_timeout_ms if recv_timeout_ms is not None else int(timeout * 1000)
        args = [binary, "-sf", str(self.scenario)]
        if remote is not None:
            args.append(remote)
        args += ["-t", transport, "-i", local_ip, "-p", str(self.local_port), "-bind_local"]
        args += ["-mi", self.media_ip, "-mp", str(self.media_port)]
        # sipp's control socket defaults to UDP 8888 on every address; keep it private.
        args += ["-cp", str(free_udp_port(local_ip))]
        args += ["-m", str(calls), "-d", str(duration_ms)]
        args += ["-timeout", f"{math.ceil(timeout)}s", "-recv_timeout", str(recv_timeout)]
        args += ["-nostdin", "-trace_err", "-error_file", str(self.error_file)]
        args += ["-trace_stat", "-stf", str(self.stat_file), "-fd", "1"]
        args += ["-trace_logs", "-log_file", str(self.log_file)]
        args += ["-trace_screen", "-screen_file", str(self.screen_file)]
        if trace_messages:
            args += ["-trace_msg", "-message_file", str(self.message_file)]
        if rate is not None:
            args += ["-r", f"{rate:g}"]
        if limit is not None:
            args += ["-l", str(limit)]
        if service is not None:
            args += ["-s", service]
        if auth is not None:
            args += ["-au", auth[0], "-ap", auth[1]]
        for key, value in (keys or {}).items():
            args += ["-key", key, value]
        if rtp_echo:
            args.append("-rtp_echo")
        args += list(extra)
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self._deadline = 0.0
        self._result: SippResult | None = None

    @property
    def address(self) -> Address:
        """Where this sipp takes SIP (a UAS's address for the gateway's config)."""
        return (self.local_ip, self.local_port)

    @property
    def remote_arg(self) -> str:
        """This sipp's SIP address as another sipp's remote argument, "host:port"."""
        host = f"[{self.local_ip}]" if ":" in self.local_ip else self.local_ip
        return f"{host}:{self.local_port}"

    def start(self) -> SippRun:
        if self.process is not None:
            raise RuntimeError(f"{self.name}: sipp was already started (a `with` block starts it)")
        for stale in (self.message_file, self.error_file, self.stat_file, self.log_file):
            stale.unlink(missing_ok=True)
        with self.stdout_file.open("wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._deadline = time.monotonic() + self.timeout + 5.0
        return self

    def __enter__(self) -> SippRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """End the process if it still runs: SIGTERM (sipp stops at once; its statistics file
        has a row per second, -fd 1), then SIGKILL."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait_bound(self, timeout: float = 5.0) -> None:
        """Block until sipp holds its SIP port (a UAS is then ready for calls)."""
        kind = socket.SOCK_STREAM if self.transport.startswith("t") else socket.SOCK_DGRAM
        deadline = time.monotonic() + timeout
        while _is_free(self.local_ip, self.local_port, kind):
            if not self.running:
                raise RuntimeError(
                    f"{self.name}: sipp exited early:\n{_read(self.stdout_file)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: sipp did not bind {self.remote_arg}")
            time.sleep(0.01)

    async def wait_bound_async(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while True:
                try:
                    self.wait_bound(0.0)
                    return
                except TimeoutError:
                    await trio.sleep(0.01)

    def messages_so_far(self) -> list[SipTrace]:
        """The message log as far as sipp has written it (it writes as it goes)."""
        try:
            return parse_message_log(self.message_file.read_text(encoding="latin-1"))
        except FileNotFoundError:
            return []

    def wait_for_message(self, predicate: Callable[[SipTrace], bool], timeout: float) -> SipTrace:
        """Block until the message log holds a message matching `predicate`; return it."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((t for t in self.messages_so_far() if predicate(t)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no such SIP message within {timeout:g} s")
            time.sleep(0.02)

    async def wait_for_message_async(
        self, predicate: Callable[[SipTrace], bool], timeout: float
    ) -> SipTrace:
        with trio.fail_after(timeout):
            while True:
                found = next((t for t in self.messages_so_far() if predicate(t)), None)
                if found is not None:
                    return found
                await trio.sleep(0.02)

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to end (killing it at `timeout`, default: its own timeout + 5 s)."""
        process = self._started()
        limit = timeout if timeout is not None else max(0.0, self._deadline - time.monotonic())
        timed_out = False
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        return self._collect(timed_out)

    async def wait_async(self, timeout: float | None = None) -> SippResult:
        process = self._started()
        deadline = time.monotonic() + timeout if timeout is not None else self._deadline
        while process.poll() is None and time.monotonic() < deadline:
            await trio.sleep(0.02)
        timed_out = process.poll() is None
        if timed_out:
            self.kill()
        return self._collect(timed_out)

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name}: sipp was not started")
        return self.process

    def _collect(self, timed_out: bool) -> SippResult:
        if self._result is not None:
            return self._result
        returncode = self._started().returncode
        stats = _last_stats_row(self.stat_file)
        screen = _read(self.screen_file) or _read(self.stdout_file)
        successful, failed = _call_counts(stats, screen)
        messages = _read(self.message_file)
        self._result = SippResult(
            returncode=returncode,
            timed_out=timed_out,
            successful=successful,
            failed=failed,
            stats=stats,
            messages=messages,
            errors=_read(self.error_file),
            logs=_read(self.log_file),
            screen=screen,
            traces=parse_message_log(messages),
        )
        return self._result


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except FileNotFoundError:
        return ""


def _last_stats_row(path: Path) -> dict[str, str]:
    """The last row of sipp's `-trace_stat` CSV (';'-separated, header line first)."""
    lines = [line for line in _read(path).splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values, strict=False))


def _call_counts(stats: Mapping[str, str], screen: str) -> tuple[int, int]:
    if "SuccessfulCall(C)" in stats and "FailedCall(C)" in stats:
        return int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
    counts = {kind: int(n) for kind, n in _SCREEN_COUNT.findall(screen)}
    return counts.get("Successful", 0), counts.get("Failed", 0)


# ---- SIP liveness ------------------------------------------------------------------------


def sip_ping(host: str, port: int, timeout: float = 0.5) -> str | None:
    """Send one OPTIONS over UDP; the status line of the answer, or None if none came."""
    tag = f"{random.getrandbits(32):08x}"
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        # Connecting picks the source address the kernel would use, for an honest Via.
        sock.connect((host, port))
        sock.settimeout(timeout)
        local_host, local_port = sock.getsockname()[:2]
        target = f"[{host}]" if ":" in host else host
        me = f"[{local_host}]" if ":" in local_host else local_host
        request = (
            f"OPTIONS sip:{target}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me}:{local_port};branch=z9hG4bK{tag};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ping@{me}>;tag={tag}\r\nTo: <sip:{target}>\r\n"
            f"Call-ID: ping-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            sock.send(request.encode())
            data = sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
    if not data.startswith(b"SIP/2.0 "):
        return None
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def wait_for_sip(host: str, port: int, timeout: float = 10.0) -> str:
    """Ping until any SIP response arrives; its status line. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sip_ping(host, port, min(0.3, max(0.05, deadline - time.monotonic())))
        if status is not None:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"no SIP answer from {host}:{port} within {timeout:g} s")


async def wait_for_sip_async(host: str, port: int, timeout: float = 10.0) -> str:
    with trio.fail_after(timeout):
        while True:
            status = await trio.to_thread.run_sync(sip_ping, host, port, 0.2)
            if status is not None:
                return status
            await trio.sleep(0.05)


# ---- RTP ---------------------------------------------------------------------------------

RTP_HEADER = struct.Struct("!BBHII")
PCMA_SILENCE = b"\xd5" * 160


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet an RtpPeer received (RFC 3550 5.1 fixed header)."""

    source: Address
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload_size: int
    arrival: float


class RtpPeer:
    """A plain-RTP UDP endpoint run in threads: sends PCMA streams, counts, optionally echoes.

    The receiver thread starts at once and records every RTP packet (`packets`), counts
    datagrams that are not RTP version 2 (`not_rtp`), and with `echo=True` sends each
    datagram back to its source, as `sipp -rtp_echo` does.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, echo: bool = False) -> None:
        self._sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.05)
        self.echo = echo
        self.packets: list[RtpPacket] = []
        self.not_rtp = 0
        self.sent = 0
        self.echoed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._senders: list[threading.Thread] = []
        self._receiver = threading.Thread(target=self._receive, name="rtp-peer-rx", daemon=True)
        self._receiver.start()

    @property
    def address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def received(self) -> int:
        with self._lock:
            return len(self.packets)

    def received_from(self, source: Address) -> int:
        with self._lock:
            return sum(1 for p in self.packets if p.source == source)

    def snapshot(self) -> list[RtpPacket]:
        with self._lock:
            return list(self.packets)

    def send_stream(
        self,
        dest: Address,
        count: int = 50,
        *,
        interval: float = 0.02,
        payload_type: int = 8,
        payload: bytes = PCMA_SILENCE,
        ssrc: int | None = None,
    ) -> threading.Thread:
        """Start sending `count` packets to `dest`, one per `interval`; returns the thread.

        Timestamps advance by the payload's sample count (8 kHz G.711: one byte a sample).
        """
        ssrc_value = ssrc if ssrc is not None else random.getrandbits(32)
        thread = threading.Thread(
            target=self._send,
            args=(dest, count, interval, payload_type, payload, ssrc_value),
            name="rtp-peer-tx",
            daemon=True,
        )
        self._senders.append(thread)
        thread.start()
        return thread

    def wait_sent(self, timeout: float = 10.0) -> None:
        for thread in self._senders:
            thread.join(timeout)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` packets have arrived; False if the time ran out first."""
        deadline = time.monotonic() + timeout
        while self.received < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    async def wait_for_async(self, count: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.received < count:
                await trio.sleep(0.01)
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        for thread in self._senders:
            thread.join(2.0)
        self._receiver.join(2.0)
        self._sock.close()

    def __enter__(self) -> RtpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self,
        dest: Address,
        count: int,
        interval: float,
        payload_type: int,
        payload: bytes,
        ssrc: int,
    ) -> None:
        start = time.monotonic()
        sequence = random.getrandbits(16)
        timestamp = random.getrandbits(32)
        for i in range(count):
            if self._stop.is_set():
                return
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            marker = 0x80 if i == 0 else 0
            header = RTP_HEADER.pack(
                0x80,
                marker | payload_type,
                (sequence + i) & 0xFFFF,
                (timestamp + i * len(payload)) & 0xFFFFFFFF,
                ssrc,
            )
            try:
                self._sock.sendto(header + payload, dest)
            except OSError:
                return
            with self._lock:
                self.sent += 1

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            now = time.monotonic()
            address = (source[0], source[1])
            if self.echo:
                with contextlib.suppress(OSError):
                    self._sock.sendto(data, source)
                    with self._lock:
                        self.echoed += 1
            packet = _parse_rtp(data, address, now)
            with self._lock:
                if packet is None:
                    self.not_rtp += 1
                else:
                    self.packets.append(packet)


def _parse_rtp(data: bytes, source: Address, now: float) -> RtpPacket | None:
    if len(data) < RTP_HEADER.size or data[0] >> 6 != 2:
        return None
    first, second, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    header_size = RTP_HEADER.size + 4 * (first & 0x0F)
    if len(data) < header_size:
        return None
    return RtpPacket(
        source=source,
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_size=len(data) - header_size,
        arrival=now,
    )


def sdp_media_address(sdp: str) -> Address:
    """The (connection address, port) of the first audio stream of an SDP body."""
    connection = re.search(r"^c=IN IP[46] (\S+)", sdp, re.MULTILINE)
    media = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    if connection is None or media is None:
        raise ValueError(f"no audio connection in SDP:\n{sdp}")
    return (connection.group(1), int(media.group(1)))


# ---- the gateway as a child process ------------------------------------------------------


_CLI = (sys.executable, "-m", "gateway.control.cli")


class GatewayExited(RuntimeError):
    """The gateway process ended before it answered SIP."""


@dataclass
class GatewayProcess:
    """A running `edgegw run --config FILE` and what a test needs to talk to it."""

    process: subprocess.Popen[bytes]
    config_path: Path
    var_dir: Path
    control_socket: Path
    sip: Address
    stderr_path: Path

    def cli(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """`edgegw --socket <control socket> ARGS...` (text output, never raises on exit code)."""
        return subprocess.run(
            [*_CLI, "--socket", str(self.control_socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            check=False,
        )

    def stderr_text(self) -> str:
        return _read(self.stderr_path)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def gateway_process(
    tmp_path: Path, config_text: str, *, startup_timeout: float = 15.0
) -> Iterator[GatewayProcess]:
    """Run the gateway on `config_text` until the block ends.

    The config is written to `tmp_path/edgegw.toml`; the text `{var_dir}` in it is replaced
    by `tmp_path/var` (so `[general] var_dir = "{var_dir}"`), and the process runs in
    `tmp_path` so relative paths land there too. Keep `tmp_path` short: the control socket
    path must fit in 107 bytes. Yields once the first UDP listener answers OPTIONS. On exit:
    SIGTERM, then SIGKILL after 5 s; the gateway's stderr is printed to the test's stderr
    (pytest shows it when the test fails).
    """
    from gateway.config import parse_config

    var_dir = tmp_path / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "edgegw.toml"
    text = config_text.replace("{var_dir}", str(var_dir))
    config_path.write_text(text, encoding="utf-8")
    config = parse_config(text, source=str(config_path))
    control_socket = config.control_socket_path
    if not control_socket.is_absolute():
        control_socket = tmp_path / control_socket
    udp = [listen for listen in config.sip.listen if listen.transport == "udp"]
    if not udp:
        raise ValueError(f"{config_path}: no UDP listener in sip.listen to wait for")
    sip = (udp[0].host, udp[0].port)
    stderr_path = tmp_path / "gateway.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*_CLI, "run", "--config", str(config_path)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )
    running = GatewayProcess(
        process=process,
        config_path=config_path,
        var_dir=var_dir,
        control_socket=control_socket,
        sip=sip,
        stderr_path=stderr_path,
    )
    try:
        _wait_until_serving(running, startup_timeout)
        yield running
    finally:
        _stop(process)
        output = running.stderr_text()
        if output:
            tail = output[-20000:]
            print(f"---- gateway output (exit {process.returncode}) ----\n{tail}", file=sys.stderr)


def _wait_until_serving(running: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = running.process.poll()
        if code is not None:
            raise GatewayExited(
                f"gateway exited with {code} before answering SIP:\n{running.stderr_text()[-4000:]}"
            )
        if sip_ping(*running.sip, timeout=0.2) is not None:
            return
        time.sleep(0.05)
    raise TimeoutError(f"gateway did not answer SIP on {running.sip} within {timeout:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
