"""A real app client calls a real G.711 carrier through the gateway, which transcodes.

Layout (`netns.edge_topology`): the gateway runs as a process in namespace G; the app,
baresip 1001, runs in namespace A (203.0.113.10) with SRTP mandatory (SDES, so SIP over
TLS to 203.0.113.1:5061) and Opus only; the carrier's switch runs in namespace C on
198.51.100.10:5080 (the gateway's SIP toward it on 198.51.100.1:5060) and speaks plain
RTP with PCMA, or PCMU, only. The app dials a number that is no subscriber's,
`+8613800138000`; the router sends it to the trunk whose prefix (86) matches, and the
gateway transcodes Opus <-> G.711.

The carrier is a second baresip with one account for the dialled number itself,
`<sip:+8613800138000@198.51.100.10:5080>;regint=0;answermode=auto`: never registered, it
answers the gateway's INVITE to `sip:+8613800138000@198.51.100.10:5080` by itself
(baresip 1.0.0 finds the account by the Request-URI's user). For the round trip the
carrier is sipp (`scenarios/carrier_uas.xml` with `-rtp_echo`), which sends every RTP
packet back as it came.

What is checked, on what the peers recorded (baresip's sndfile module):

* tones both ways: each side hears the other's tone for most of the call at the level it
  was sent, the app in Opus with SRTP up, the carrier in PCMA/PCMU on plain RTP, and the
  gateway says it transcodes (its log and `edgegw calls --json`);
* speech app -> carrier: ITU-T P.862 MOS-LQO (PESQ nb, 8 kHz) of what the carrier
  decoded against the reference, clean and with 5 % of the app's packets dropped at
  random places by nftables in G; the issue's floors (4.0 and 3.2) are asserted;
* the round trip app -> G.711 echo -> app: its PESQ is printed against DESIGN.md's
  targets, not asserted.

Real-time peers on a shared 2-core machine sometimes stall: a sender that sends 60 ms
late costs the call up to 0.5 PESQ whatever the gateway does. So the app's packets are
timed on the wire as they reach G (kernel receive times against their RTP timestamps);
a speech call that missed its floor while the app itself stalled is made once more, and
if that stalls too the test is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from tests.integration.baresip import (
    AudioSource,
    Baresip,
    Codec,
    Sine,
    WavFile,
    assert_heard_tone,
    baresip_binary,
)
from tests.integration.netns import (
    APP_ADDRESSES,
    CARRIER_ADDRESSES,
    GATEWAY_APP_ADDRESS,
    GATEWAY_CARRIER_ADDRESS,
    EdgeTopology,
    Namespace,
)
from tests.integration.peers import GatewayProcess, SippRun, gateway_process, sipp_binary
from tests.speech import (
    Audio,
    PesqResult,
    pesq_detail,
    read_wav,
    reference_speech,
    speech_tools_missing,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        baresip_binary() is None, reason="baresip not on PATH (Debian package baresip-core)"
    ),
]

APP_USER = "1001"
APP_NUMBER = "+8613900139001"
APP_SIP_PORT = 5100
APP_ADDRESS = APP_ADDRESSES[0]
CARRIER_ADDRESS = CARRIER_ADDRESSES[0]
CARRIER_SIP_PORT = 5080
CARRIER_NUMBER = "+8613800138000"
MEDIA_PORTS = (30000, 30099)
APP_TONE = 440
CARRIER_TONE = 1000
OPUS = Codec("opus", 48000, 2)
G711_RATE = 8000
# The floors for speech app -> carrier (PESQ nb at 8 kHz).
CLEAN_FLOOR = 4.0
LOSSY_FLOOR = 3.2
LOSS_PERCENT = 5
# DESIGN.md's round-trip targets (through a G.711 echo): printed, not asserted.
ROUND_TRIP_CLEAN_TARGET = 3.8
ROUND_TRIP_LOSSY_TARGET = 3.0
# The app's packets left this much later than their RTP timestamps say (on the wire, not
# in the gateway): more than the gateway's jitter buffer holds at first (30 ms) and then
# some, so late packets are the sender's doing.
# Calls made before a stalled sender is given up on (see steady_speech_call).
SPEECH_ATTEMPTS = 4
SENDER_STALL_MS = 40.0
# The speech file the app plays: at Opus's own rate, so baresip only makes it stereo.
SPEECH_RATE = 48000
# The app's Opus encoder as an app on a lossy mobile network runs it: in-band FEC with 5 %
# expected loss (libopus sends no FEC at 0 %). The gateway's answer asks for FEC
# (useinbandfec=1), but baresip 1.0.0 encodes FEC only when its own config says so:
# without these lines the gateway recovers nothing and conceals (measured 2.92 at 5 %).
# Without FEC the gateway can only conceal (Opus PLC): 2.7 to 3.7 at 5 % loss, as Opus
# alone gives (3.0 to 3.7), under the 3.2 floor about half the time. baresip 1.0.0
# sends stereo: with stereo=0 or sprop-stereo=0 it names its codec opus/48000/1, which
# is not RFC 7587's opus/48000/2; so 64 kb/s here is 32 kb/s a channel.
APP_OPUS = ("opus_inbandfec yes", "opus_packet_loss 5", "opus_bitrate 64000")


def config_text(password: str, carrier_codec: str) -> str:
    """The gateway: 1001 (SRTP mandatory) and one trunk to the carrier for +86.

    SIP over TLS toward the app and over UDP toward the carrier, each on G's address on
    that side (requests to the trunk leave from the first UDP listener). Media has one
    address, `media.host`: the carrier reaches the app side's through G.
    """
    return f"""
        [general]
        var_dir = "{{var_dir}}"
        log_level = "debug"
        [sip]
        listen = [
            {{ transport = "udp", host = "{GATEWAY_CARRIER_ADDRESS}", port = 5060 }},
            {{ transport = "tls", host = "{GATEWAY_APP_ADDRESS}", port = 5061 }},
        ]
        [media]
        host = "{GATEWAY_APP_ADDRESS}"
        port_min = {MEDIA_PORTS[0]}
        port_max = {MEDIA_PORTS[1]}
        timeout = 10.0
        [http]
        listen = "127.0.0.1:8080"

        [[subscribers]]
        username = "{APP_USER}"
        password = "{password}"
        numbers = ["{APP_NUMBER}"]
        srtp = "mandatory"
        balance = "100.00"

        [[trunks]]
        name = "carrier"
        host = "{CARRIER_ADDRESS}"
        port = {CARRIER_SIP_PORT}
        transport = "udp"
        codecs = ["{carrier_codec}"]
        prefixes = ["86"]
        srtp = "off"
        ptime = 20
    """


class TunedBaresip(Baresip):
    """A Baresip whose config file has extra lines (module settings such as opus_*)."""

    extra_config: tuple[str, ...] = ()

    def config_text(self) -> str:
        return super().config_text() + "".join(f"{line}\n" for line in self.extra_config)


class CarrierSwitch(TunedBaresip):
    """baresip as the carrier's switch: one unregistered account for the dialled number.

    The gateway's INVITE to `sip:NUMBER@host:port` finds it by the Request-URI's user and
    it answers by itself; no outbound proxy, no registration, plain RTP.
    """

    def account_line(self) -> str:
        host, port = self.sip_listen
        params = ["regint=0", "answermode=auto", f"audio_codecs={','.join(self.codecs)}"]
        return f"<sip:{self.user}@{host}:{port}>;" + ";".join(params)


# Nice value of the baresip peers: they stand for phones and switches with CPUs of their
# own, so a busy test machine must not stall their sending (a stall of 60 ms reaches the
# gateway as a burst of late packets, concealed, and costs up to 0.5 PESQ).
PEER_NICE = -10


def prioritize(client: Baresip) -> None:
    """Give every thread of `client` PEER_NICE; threads it starts later (the audio source
    that also encodes and sends) inherit it from the main thread."""
    assert client.process is not None
    for task in Path(f"/proc/{client.process.pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), PEER_NICE)


@dataclass
class CarrierLab:
    """The gateway in G, the app 1001 in A, the carrier in C, for one test."""

    tmp: Path
    edge: EdgeTopology
    stack: contextlib.ExitStack
    carrier_codec: Literal["PCMA", "PCMU"] = "PCMA"
    password: str = field(default_factory=lambda: f"pw-{secrets.token_hex(8)}")
    gateway: GatewayProcess | None = None

    def start_gateway(self) -> GatewayProcess:
        with self.edge.gateway.entered():
            self.gateway = self.stack.enter_context(
                gateway_process(self.tmp, config_text(self.password, self.carrier_codec))
            )
        return self.gateway

    def app(self, source: AudioSource, opus: tuple[str, ...] = ()) -> TunedBaresip:
        """1001, registered over TLS, SRTP mandatory, Opus only; ended with the test."""
        client = TunedBaresip(
            self.tmp,
            user=APP_USER,
            password=self.password,
            domain=GATEWAY_APP_ADDRESS,
            outbound=(GATEWAY_APP_ADDRESS, 5061),
            sip_listen=(APP_ADDRESS, APP_SIP_PORT),
            source=source,
            codecs=(f"{OPUS.name}/{OPUS.rate}/{OPUS.channels}",),
            mediaenc="srtp-mand",
            transport="tls",
            namespace=self.edge.app,
        )
        client.extra_config = opus
        self.stack.enter_context(client)
        prioritize(client)
        client.wait_registered()
        return client

    def carrier(self, source: AudioSource) -> CarrierSwitch:
        switch = CarrierSwitch(
            self.tmp,
            user=CARRIER_NUMBER,
            password="",
            domain=f"{CARRIER_ADDRESS}:{CARRIER_SIP_PORT}",
            outbound=(CARRIER_ADDRESS, CARRIER_SIP_PORT),
            sip_listen=(CARRIER_ADDRESS, CARRIER_SIP_PORT),
            source=source,
            codecs=(f"{self.carrier_codec}/{G711_RATE}/1",),
            namespace=self.edge.carrier,
        )
        self.stack.enter_context(switch)
        prioritize(switch)
        switch.wait_for(r"baresip is ready", timeout=10.0)
        return switch

    def echo_carrier(self) -> SippRun:
        """sipp answering the trunk's INVITE and sending every RTP packet back."""
        # Constructed and started inside C: its port probes and the process live there.
        with self.edge.carrier.entered():
            run = SippRun(
                "carrier_uas",
                workdir=self.tmp / "sipp",
                name="carrier",
                local_ip=CARRIER_ADDRESS,
                local_port=CARRIER_SIP_PORT,
                rtp_echo=True,
                timeout=60.0,
            )
            self.stack.enter_context(run)
            run.wait_bound()
        return run

    def talk(
        self, app: Baresip, carrier: Baresip | None, seconds: float, snapshot_after: float
    ) -> tuple[float, dict[str, Any]]:
        """The app calls the carrier number, they talk, the app hangs up.

        An app sending a WAV file hangs up by itself at its end; then `seconds` is the most
        to wait for that. `snapshot_after` seconds into the call the gateway's view of it
        is taken (`edgegw calls --json`). Both baresips quit afterwards (their recordings
        are then complete). Returns how long the call lasted and that snapshot.
        """
        mark = app.dial(carrier_uri())
        app.wait_established(since=mark)
        if carrier is not None:
            print(f"carrier: call from {carrier.wait_established()}")
        connected = time.monotonic()
        time.sleep(snapshot_after)
        (call,) = self.calls_json()
        if isinstance(app.source, WavFile):
            app.wait_terminated(seconds - snapshot_after, since=mark)
        else:
            time.sleep(seconds - snapshot_after)
            app.wait_terminated(since=app.hangup())
        duration = time.monotonic() - connected
        if carrier is not None:
            carrier.wait_terminated()
        for client in (app, carrier):
            if client is not None:
                assert client.quit() == 0, client.describe()
        return duration, call

    def calls_json(self) -> list[dict[str, Any]]:
        assert self.gateway is not None
        done = self.gateway.cli("calls", "--json")
        assert done.returncode == 0, done.stderr
        calls: list[dict[str, Any]] = json.loads(done.stdout)
        return calls


@pytest.fixture
def lab(short_tmp: Path, edge: EdgeTopology) -> Iterator[CarrierLab]:
    with contextlib.ExitStack() as stack:
        yield CarrierLab(short_tmp, edge, stack)


def carrier_uri() -> str:
    return f"sip:{CARRIER_NUMBER}@{GATEWAY_APP_ADDRESS}"


# ---- loss on the app leg -------------------------------------------------------------------


@dataclass
class LossCounts:
    seen: int = 0
    dropped: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.dropped / self.seen if self.seen else 0.0

    def describe(self) -> str:
        return f"dropped {self.dropped}/{self.seen} = {self.percent:.1f} %"


_COUNTER = re.compile(r"counter (\w+) \{\s*packets (\d+) bytes \d+")


# Loss is drawn over this many packets: longer than a call, so no pattern repeats in one.
LOSS_PERIOD = 1000


def loss_positions(percent: int, rng: random.Random) -> list[int]:
    """Which packets of each LOSS_PERIOD to drop: `percent` of every 100, at random places.

    Exactly `percent` % then, where a per-packet coin (`numgen random`) gives anything from
    2 to 7 % over a call of 450 packets, and the figure would say more about the draw than
    about the gateway.
    """
    return sorted(
        position
        for block in range(0, LOSS_PERIOD, 100)
        for position in rng.sample(range(block, block + 100), percent)
    )


@contextlib.contextmanager
def app_leg_loss(namespace: Namespace, workdir: Path, percent: int) -> Iterator[LossCounts]:
    """Drop `percent` % of UDP from the app to the gateway's media ports, in G's input hook.

    Random places, new ones each call (`loss_positions`), counted by packets that match
    (nftables' `numgen inc` moves only when the rule's earlier matches held). The table is
    deleted when the block ends, whatever happens (and goes with G anyway).
    """
    table = f"egw_loss_{secrets.token_hex(3)}"
    low, high = MEDIA_PORTS
    match = f"ip saddr {APP_ADDRESS} udp dport {low}-{high}"
    drops = ", ".join(str(p) for p in loss_positions(percent, random.Random()))
    rules = workdir / f"{table}.nft"
    rules.write_text(
        f"""
        table ip {table} {{
            counter seen {{ }}
            counter dropped {{ }}
            chain input {{
                type filter hook input priority -10; policy accept;
                {match} counter name seen
                {match} numgen inc mod {LOSS_PERIOD} {{ {drops} }} counter name dropped drop
            }}
        }}
        """,
        encoding="utf-8",
    )
    done = namespace.run(["nft", "-f", str(rules)])
    if done.returncode != 0:
        raise RuntimeError(f"nft -f {rules} in {namespace.name}: {done.stderr.strip()}")
    counts = LossCounts()
    try:
        yield counts
    finally:
        listing = namespace.run(["nft", "list", "table", "ip", table]).stdout
        found = dict(_COUNTER.findall(listing))
        counts.seen = int(found.get("seen", 0))
        counts.dropped = int(found.get("dropped", 0))
        namespace.run(["nft", "delete", "table", "ip", table])


# ---- arrival times on the wire -------------------------------------------------------------

ETH_P_ALL = 0x0003
# Linux asm-generic socket options: receive times stamped by the kernel (struct timespec).
SO_TIMESTAMPNS = 35


class WireTimes(threading.Thread):
    """Kernel receive times of the app's RTP on G's interface toward A (a packet socket).

    Veth delivers in the sender's context, so these are baresip's send times: their spread
    against the RTP timestamps tells jitter the app made (a starved sender) from jitter
    the gateway made itself (its `late` count with a smooth wire).
    """

    def __init__(self, namespace: Namespace, interface: str, clock_rate: int) -> None:
        super().__init__(daemon=True)
        with namespace.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind((interface, ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.clock_rate = clock_rate
        self.stop = threading.Event()
        self.transits: list[float] = []

    def run(self) -> None:
        source = socket.inet_aton(APP_ADDRESS)
        low, high = MEDIA_PORTS
        while not self.stop.is_set():
            try:
                frame, ancillary, _, _ = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 40 or ip[9] != socket.IPPROTO_UDP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            dport = struct.unpack("!H", ip[ihl + 2 : ihl + 4])[0]
            rtp = ip[ihl + 8 :]
            if ip[12:16] != source or not low <= dport <= high or 72 <= rtp[1] & 0x7F <= 76:
                continue  # not from the app, or RTCP (types 200-204 under rtcp-mux)
            stamp = [data for level, kind, data in ancillary if kind == SO_TIMESTAMPNS]
            if stamp:
                seconds, nanos = struct.unpack("qq", stamp[0][:16])
                timestamp = struct.unpack("!I", rtp[4:8])[0]
                self.transits.append(seconds + nanos / 1e9 - timestamp / self.clock_rate)
        self.sock.close()

    def worst_ms(self) -> float:
        if not self.transits:
            return 0.0
        return (max(self.transits) - min(self.transits)) * 1000

    def spread_ms(self) -> str:
        """Transit minus its minimum, in ms: median, 97th percentile and worst."""
        if not self.transits:
            return "no packets seen"
        spread = (np.array(self.transits) - min(self.transits)) * 1000
        p50, p97, worst = np.percentile(spread, [50, 97, 100])
        return f"app send jitter on the wire p50 {p50:.1f} ms, p97 {p97:.1f} ms, max {worst:.1f} ms"


@contextlib.contextmanager
def wire_times(lab: CarrierLab) -> Iterator[WireTimes]:
    """`WireTimes` on G's veth toward A for the block."""
    link = lab.edge.topology.links[0]  # edge_topology links G-A first
    thread = WireTimes(lab.edge.gateway, link.left, OPUS.rate)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop.set()
        thread.join(timeout=2.0)


# ---- calls ---------------------------------------------------------------------------------


def check_codecs(app: Baresip, carrier: Baresip | None, carrier_codec: str) -> None:
    assert app.encoder() == OPUS and app.decoder() == OPUS, app.describe()
    assert app.srtp_suites(), f"SRTP did not come up on the app\n{app.describe()}"
    if carrier is not None:
        g711 = Codec(carrier_codec, G711_RATE, 1)
        assert carrier.encoder() == g711 and carrier.decoder() == g711, carrier.describe()
        assert not carrier.srtp_suites(), carrier.describe()


def to_8k(path: Path, workdir: Path) -> Audio:
    """A recording (any rate, mono or stereo) resampled to 8 kHz mono by sox."""
    out = workdir / f"{path.stem}-8k.wav"
    subprocess.run(
        ["sox", "-D", str(path), "-r", str(G711_RATE), "-c", "1", "-b", "16", str(out)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return read_wav(out)


# ---- tests ---------------------------------------------------------------------------------


def transcoding(call: dict[str, Any], leg: Literal["a", "b"]) -> dict[str, Any]:
    """The gateway's counters of the transcoder taking what arrives on `leg`."""
    stats: dict[str, Any] = call["media"][leg]["transcoding"]["in"]
    return stats


def describe_receiver(stats: dict[str, Any]) -> str:
    keys = (
        "decoded",
        "lost",
        "recovered",
        "concealed",
        "late",
        "discarded",
        "buffer_delay",
        "target_delay",
        "jitter",
    )
    return ", ".join(f"{key} {stats[key]}" for key in keys)


@pytest.mark.parametrize("carrier_codec", ["PCMA", "PCMU"])
def test_app_and_carrier_hear_each_others_tone_through_transcoding(
    lab: CarrierLab, carrier_codec: Literal["PCMA", "PCMU"]
) -> None:
    lab.carrier_codec = carrier_codec
    gateway = lab.start_gateway()
    carrier = lab.carrier(Sine(CARRIER_TONE))
    app = lab.app(Sine(APP_TONE))
    duration, call = lab.talk(app, carrier, 4.0, snapshot_after=1.0)

    check_codecs(app, carrier, carrier_codec)
    print(f"app: SRTP {', '.join(app.srtp_suites())}")
    negotiated = re.findall(r"media negotiated .*", gateway.stderr_text())
    assert negotiated, gateway.stderr_text()[-3000:]
    print(negotiated[-1])
    assert "transcoding=True" in negotiated[-1]
    assert f"codec_a=opus codec_b={carrier_codec}" in negotiated[-1]
    assert (call["route"], call["trunk"]) == ("trunk", "carrier"), call
    # The carrier was called from the subscriber's number, by G's address on its side.
    assert f"Call established: sip:{APP_NUMBER}@{GATEWAY_CARRIER_ADDRESS}" in carrier.log
    directions = {
        leg: (transcoding(call, leg)["codec_in"], transcoding(call, leg)["codec_out"])
        for leg in ("a", "b")
    }
    print(f"edgegw calls: transcoding {directions}")
    assert directions == {"a": ("opus", carrier_codec), "b": (carrier_codec, "opus")}

    pairs = ((carrier, app, APP_TONE, CARRIER_TONE), (app, carrier, CARRIER_TONE, APP_TONE))
    for client, peer, other, own in pairs:
        assert_heard_tone(client, peer, other, own, duration)


@dataclass
class SpeechCall:
    """One call carrying the reference speech from the app, and what came of it."""

    pesq: PesqResult
    call: dict[str, Any]
    wire: WireTimes
    loss: LossCounts | None

    @property
    def stalled(self) -> bool:
        """The app itself sent late: no jitter buffer of the gateway's size absorbs that."""
        return self.wire.worst_ms() > SENDER_STALL_MS

    def describe(self) -> str:
        loss = "no loss" if self.loss is None else self.loss.describe()
        text = (
            f"{self.pesq.score:.3f} ({loss}; delay {self.pesq.delay_seconds * 1000:.0f} ms, "
            f"{self.pesq.overlap_seconds:.2f} s); gateway from the app: "
            f"{describe_receiver(transcoding(self.call, 'a'))}"
        )
        if "transcoding" in self.call["media"]["b"]:
            text += f"; from the carrier: {describe_receiver(transcoding(self.call, 'b'))}"
        return f"{text}; {self.wire.spread_ms()}"


def speech_call(lab: CarrierLab, loss: int, *, echo: bool) -> SpeechCall:
    """The app plays the reference speech to the carrier, with `loss` % dropped on its leg.

    Scored (PESQ nb, 8 kHz) on what the carrier decoded, or with `echo` on what came back
    to the app from an echoing carrier (sipp), resampled to 8 kHz.
    """
    reference = read_wav(reference_speech(G711_RATE))
    carrier = None if echo else lab.carrier(Sine(CARRIER_TONE))
    if echo:
        lab.echo_carrier()
    app = lab.app(WavFile(reference_speech(SPEECH_RATE), SPEECH_RATE), APP_OPUS)
    with contextlib.ExitStack() as during:
        wire = during.enter_context(wire_times(lab))
        counts = (
            during.enter_context(app_leg_loss(lab.edge.gateway, lab.tmp, loss)) if loss else None
        )
        _, call = lab.talk(app, carrier, reference.seconds + 3.0, reference.seconds - 0.5)
    check_codecs(app, carrier, lab.carrier_codec)
    if carrier is None:
        heard = to_8k(app.received_wav(), lab.tmp)
    else:
        heard = read_wav(carrier.received_wav())
    result = pesq_detail(reference, heard, "nb")
    # Most of the speech came through, wherever it was aligned.
    assert result.overlap_seconds >= 0.9 * reference.seconds, result
    return SpeechCall(result, call, wire, counts)


def steady_speech_call(lab: CarrierLab, loss: int, *, echo: bool, floor: float) -> SpeechCall:
    """`speech_call`, made again (up to `SPEECH_ATTEMPTS` in all) while the app's own sending
    stalled and the score is below `floor`: the figure then says what a busy test machine
    did to the app, not what the gateway did. Never settled: a skip, and in CI a failure."""
    what = (
        "round trip app -> G.711 echo -> app" if echo else f"app -> carrier ({lab.carrier_codec})"
    )
    stalls: list[str] = []
    for _attempt in range(SPEECH_ATTEMPTS):
        measured = speech_call(lab, loss, echo=echo)
        print(f"PESQ nb {what}, {loss} % loss: {measured.describe()}")
        if measured.pesq.score >= floor or not measured.stalled:
            return measured
        stalls.append(f"{measured.wire.worst_ms():.0f} ms (PESQ {measured.pesq.score:.3f})")
        print(f"the app's sending stalled for {stalls[-1]}: once more")
    reason = (
        f"the app's own sending stalled in every attempt: {', '.join(stalls)} (busy machine); "
        "these scores say nothing about the gateway"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must measure it: run it on an idle machine")
    pytest.skip(reason)


@pytest.mark.skipif(
    bool(speech_tools_missing()), reason=f"reference speech: {speech_tools_missing()}"
)
@pytest.mark.parametrize(
    ("loss", "floor"), [(0, CLEAN_FLOOR), (LOSS_PERCENT, LOSSY_FLOOR)], ids=["clean", "loss5"]
)
def test_speech_app_to_carrier_scores_pesq_floor(lab: CarrierLab, loss: int, floor: float) -> None:
    lab.start_gateway()
    measured = steady_speech_call(lab, loss, echo=False, floor=floor)
    assert measured.pesq.score >= floor


@pytest.mark.skipif(sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)")
@pytest.mark.skipif(
    bool(speech_tools_missing()), reason=f"reference speech: {speech_tools_missing()}"
)
@pytest.mark.parametrize(
    ("loss", "target"),
    [(0, ROUND_TRIP_CLEAN_TARGET), (LOSS_PERCENT, ROUND_TRIP_LOSSY_TARGET)],
    ids=["clean", "loss5"],
)
def test_speech_round_trip_through_a_g711_echo(lab: CarrierLab, loss: int, target: float) -> None:
    """A figure for the report, not a floor: DESIGN.md's round-trip targets are printed."""
    lab.start_gateway()
    measured = steady_speech_call(lab, loss, echo=True, floor=target)
    verdict = "meets" if measured.pesq.score >= target else "misses"
    print(f"round trip {measured.pesq.score:.3f} {verdict} the DESIGN target {target}")
