"""Real baresip clients calling each other through the gateway, judged by what they heard.

Layout (`netns.edge_topology`): the gateway runs as a process (`edgegw run`) in namespace
G with SIP and media on 203.0.113.1, reached over a veth link from namespace A, where the
two baresip 1.0.0 clients run (1001 on 203.0.113.10, 1002 on 203.0.113.11). This is the
real shape of the product, a client on another host, rather than one namespace with
everything on 127.0.0.1: SIP crosses a link, the gateway's non-loopback listener makes
the config refuse demo passwords (so the subscribers get random ones), and baresip, which
refuses loopback alone, has a real interface.

1001 dials 1002, which answers by itself. Each client records what it decoded (baresip's
sndfile module); the tests check the audio itself: each side's tone arrived for most of
the call, and speech sent by 1001 scores a P.862 MOS-LQO close to what G.711 alone gives.

The clients run with SRTP mandatory (SDES, so their SIP goes over TLS: the gateway
refuses keys over plain signalling on a non-loopback listener), except one plain-RTP
variant. They share a codec here, so the gateway relays without transcoding, decrypting
with one leg's keys and encrypting with the other's.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from gateway.media.g711 import G711Codec
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
    GATEWAY_APP_ADDRESS,
    EdgeTopology,
)
from tests.integration.peers import GatewayProcess, gateway_process
from tests.speech import (
    Audio,
    pesq_detail,
    read_wav,
    reference_speech,
    speech_tools_missing,
    tone_seconds,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        baresip_binary() is None, reason="baresip not on PATH (Debian package baresip-core)"
    ),
]

SIP_PORTS = {"udp": 5060, "tls": 5061}
USERS = ("1001", "1002")
NUMBERS = {"1001": "+8613900139001", "1002": "+8613900139002"}
# baresip binds TLS on its SIP port + 1: keep the two clients' ports apart.
CLIENT_SIP_PORTS = {"1001": 5100, "1002": 5200}
CALLER_TONE = 440
CALLEE_TONE = 1000
# PESQ floor of G.711 speech relayed without transcoding: measured 4.425 (PCMA) with the
# two-talker reference, the same as G.711 encoding alone; about 0.2 below that.
RELAY_PESQ_FLOOR = 4.2


def config_text(passwords: dict[str, str], trusted: tuple[str, ...] = ()) -> str:
    subscribers = "".join(
        f"""
        [[subscribers]]
        username = "{user}"
        password = "{passwords[user]}"
        numbers = ["{NUMBERS[user]}"]
        balance = "100.00"
        """
        for user in USERS
    )
    # sip.auth_algorithms is left at its default (MD5 only), which baresip 1.0.0 needs.
    # The HTTP port is G's own loopback: nothing else runs in that namespace.
    return f"""
        [general]
        var_dir = "{{var_dir}}"
        log_level = "debug"
        [sip]
        listen = [
            {{ transport = "udp", host = "{GATEWAY_APP_ADDRESS}", port = 5060 }},
            {{ transport = "tls", host = "{GATEWAY_APP_ADDRESS}", port = 5061 }},
        ]
        [media]
        host = "{GATEWAY_APP_ADDRESS}"
        port_min = 30000
        port_max = 30099
        timeout = 10.0
        sdes_trusted_networks = {list(trusted)!r}
        [http]
        listen = "127.0.0.1:8080"
        {subscribers}
    """


@dataclass
class CallLab:
    """The gateway in G and baresip clients in A for one test."""

    tmp: Path
    edge: EdgeTopology
    stack: contextlib.ExitStack
    passwords: dict[str, str] = field(
        default_factory=lambda: {user: f"pw-{secrets.token_hex(8)}" for user in USERS}
    )
    gateway: GatewayProcess | None = None
    # SRTP mandatory (SDES) over TLS signalling, or plain RTP over UDP.
    mediaenc: str | None = "srtp-mand"
    # Signalling other than that rule gives, and networks trusted with SDES over UDP/TCP.
    signalling: Literal["udp", "tls"] | None = None
    trusted: tuple[str, ...] = ()

    @property
    def transport(self) -> Literal["udp", "tls"]:
        if self.signalling is not None:
            return self.signalling
        return "udp" if self.mediaenc is None else "tls"

    def start_gateway(self) -> GatewayProcess:
        # Started from inside G: the process lives there, and the readiness ping too.
        with self.edge.gateway.entered():
            self.gateway = self.stack.enter_context(
                gateway_process(self.tmp, config_text(self.passwords, self.trusted))
            )
        return self.gateway

    def client(self, user: str, source: AudioSource, codecs: tuple[str, ...]) -> Baresip:
        """A registered baresip for `user`, ended with the test."""
        address = APP_ADDRESSES[USERS.index(user)]
        client = Baresip(
            self.tmp,
            user=user,
            password=self.passwords[user],
            domain=GATEWAY_APP_ADDRESS,
            outbound=(GATEWAY_APP_ADDRESS, SIP_PORTS[self.transport]),
            sip_listen=(address, CLIENT_SIP_PORTS[user]),
            source=source,
            codecs=codecs,
            mediaenc=self.mediaenc,
            transport=self.transport,
            namespace=self.edge.app,
        )
        self.stack.enter_context(client)
        client.wait_registered()
        return client

    def call(self, caller: Baresip, callee: Baresip, seconds: float) -> float:
        """`caller` calls `callee`, they talk for `seconds`, the caller hangs up; both quit.

        A caller sending a WAV file hangs up by itself at its end (baresip's menu ends the
        call on the source's end of file): then `seconds` is the most to wait for that.
        Returns how long both sides were connected, from the test's clock.
        """
        mark = caller.dial(f"sip:{callee.user}@{GATEWAY_APP_ADDRESS}")
        caller.wait_established(since=mark)
        callee.wait_established()
        connected = time.monotonic()
        if isinstance(caller.source, WavFile):
            caller.wait_terminated(seconds, since=mark)
        else:
            time.sleep(seconds)
            caller.wait_terminated(since=caller.hangup())
        duration = time.monotonic() - connected
        callee.wait_terminated()
        # Quitting closes the recordings (their WAV headers are written on close).
        for client in (caller, callee):
            assert client.quit() == 0, client.describe()
        return duration


@pytest.fixture
def lab(short_tmp: Path, edge: EdgeTopology) -> Iterator[CallLab]:
    with contextlib.ExitStack() as stack:
        yield CallLab(short_tmp, edge, stack)


def check_media(client: Baresip, codec: Codec, mediaenc: str | None) -> None:
    assert client.encoder() == codec, client.describe()
    assert client.decoder() == codec, client.describe()
    if mediaenc is not None:
        assert client.srtp_suites(), f"SRTP did not come up\n{client.describe()}"
        print(f"{client.user}: SRTP {', '.join(client.srtp_suites())}")
    else:
        assert not client.srtp_suites(), client.describe()


@pytest.mark.parametrize(
    ("mediaenc", "codec"),
    [("srtp-mand", Codec("opus", 48000, 2)), (None, Codec("PCMU", 8000, 1))],
    ids=["srtp-opus", "plain-pcmu"],
)
def test_two_baresip_clients_hear_each_others_tone(
    lab: CallLab, mediaenc: str | None, codec: Codec
) -> None:
    lab.mediaenc = mediaenc
    lab.start_gateway()
    codecs = (f"{codec.name}/{codec.rate}/{codec.channels}",)
    callee = lab.client("1002", Sine(CALLEE_TONE), codecs)
    caller = lab.client("1001", Sine(CALLER_TONE), codecs)
    duration = lab.call(caller, callee, seconds=4.0)

    pairs = ((caller, callee, CALLER_TONE, CALLEE_TONE), (callee, caller, CALLEE_TONE, CALLER_TONE))
    for client, peer, own, other in pairs:
        check_media(client, codec, mediaenc)
        assert_heard_tone(client, peer, other, own, duration)


def g711_round_trip(audio: Audio, encoding: Literal["PCMA", "PCMU"]) -> Audio:
    """`audio` through a G.711 encoder and decoder alone: the best a G.711 path can do."""
    codec = G711Codec(encoding)
    pcm = np.clip(np.round(audio.samples), -32768, 32767).astype("<i2").tobytes()
    out = bytearray()
    for start in range(0, len(pcm), 320):
        out += codec.decode(codec.encode(pcm[start : start + 320]))
    return Audio(np.frombuffer(bytes(out), "<i2").astype(np.float64), audio.rate, encoding)


def test_speech_through_the_relay_keeps_g711_quality(lab: CallLab) -> None:
    if speech_tools_missing():
        pytest.skip(f"reference speech: {speech_tools_missing()}")
    reference_path = reference_speech(8000)
    reference = read_wav(reference_path)
    lab.start_gateway()
    callee = lab.client("1002", Sine(CALLEE_TONE), ("PCMA/8000/1",))
    caller = lab.client("1001", WavFile(reference_path, 8000), ("PCMA/8000/1",))
    lab.call(caller, callee, seconds=reference.seconds + 3.0)

    check_media(caller, Codec("PCMA", 8000, 1), lab.mediaenc)
    relayed = pesq_detail(reference, callee.received_wav(), "nb")
    codec_only = pesq_detail(reference, g711_round_trip(reference, "PCMA"), "nb")
    sent = pesq_detail(reference, caller.sent_wav(), "nb")
    print(
        f"PESQ nb, speech 1001 -> 1002 through the relay (PCMA): {relayed.score:.3f} "
        f"(delay {relayed.delay_seconds * 1000:.0f} ms, {relayed.overlap_seconds:.2f} s); "
        f"G.711 alone {codec_only.score:.3f}; what baresip sent {sent.score:.3f}"
    )
    assert relayed.overlap_seconds >= 0.95 * reference.seconds
    assert relayed.score >= RELAY_PESQ_FLOOR
    # A pass-through relay adds nothing to what the codec did.
    assert relayed.score >= codec_only.score - 0.1
    # The other direction carried the callee's tone meanwhile.
    assert tone_seconds(read_wav(caller.received_wav()), CALLEE_TONE) >= 0.8 * reference.seconds


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted-network"])
def test_sdes_keys_over_plain_udp_are_refused_unless_the_network_is_trusted(
    lab: CallLab, trusted: bool
) -> None:
    """SDES keys in SDP over UDP on a non-loopback listener: 488, or a call when trusted."""
    lab.signalling = "udp"
    lab.trusted = ("203.0.113.0/24",) if trusted else ()
    gateway = lab.start_gateway()
    codecs = ("PCMU/8000/1",)
    callee = lab.client("1002", Sine(CALLEE_TONE), codecs)
    caller = lab.client("1001", Sine(CALLER_TONE), codecs)
    mark = caller.dial(f"sip:1002@{GATEWAY_APP_ADDRESS}")
    if trusted:
        caller.wait_established(since=mark)
        callee.wait_established()
        time.sleep(1.0)
        caller.wait_terminated(since=caller.hangup())
        assert caller.srtp_suites(), caller.describe()
        return
    caller.wait_for(r"488 SDES Keys Need TLS Signalling", since=mark)
    cdrs = json.loads(gateway.cli("cdr", "--json").stdout)
    assert [(c["end_reason"], c["sip_status"]) for c in cdrs] == [("sdes-over-plain", 488)]
