"""The benchmark tools: bencode, the ng client against a real rtpengine, the load generator.

Bencode is checked against BEP 3's examples and rtpengine's documented ping;
malformed input gets a BencodeError naming what was wrong. The ng client
drives a real rtpengine daemon (skipped when it is not installed), including
the SDES-on-one-leg set-up the relay benchmark relies on, and the transcoding
set-up of the transcoding benchmark (offer masked to PCMA, answer in Opus). The
generator runs for real over loopback with its two sockets wired to each other
(no relay), stamped and with looped pre-encoded payloads.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator

import pytest

from gateway.media.srtp import SrtpSuite, new_crypto, parse_crypto
from tests.bench.bench_transcode import RTPENGINE_FLAGS, app_sdp, carrier_sdp
from tests.bench.media_load import (
    Codec,
    GenStream,
    LoadError,
    LoadReport,
    Payloads,
    Traffic,
    run_load,
)
from tests.bench.rtpengine import (
    BencodeError,
    BValue,
    NgClient,
    NgError,
    NgTimeout,
    RtpEngine,
    bdecode,
    bencode,
)

needs_rtpengine = pytest.mark.skipif(
    shutil.which("rtpengine") is None, reason="rtpengine-daemon is not installed"
)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("spam", b"4:spam"),
        ("", b"0:"),
        (3, b"i3e"),
        (-3, b"i-3e"),
        (0, b"i0e"),
        (["spam", "eggs"], b"l4:spam4:eggse"),
        ({"cow": "moo", "spam": "eggs"}, b"d3:cow3:moo4:spam4:eggse"),
        ({"spam": ["a", "b"]}, b"d4:spaml1:a1:bee"),
        ({"command": "ping"}, b"d7:command4:pinge"),
    ],
)
def test_bencode_matches_bep3_and_decodes_back(value: BValue, encoded: bytes) -> None:
    assert bencode(value) == encoded
    assert bdecode(encoded) == value


def test_dictionary_keys_are_sorted_as_bytes() -> None:
    assert bencode({"b": 1, "a": 2, "B": 3}) == b"d1:Bi3e1:ai2e1:bi1ee"


def test_bytes_encode_and_undecodable_bytes_survive_a_round_trip() -> None:
    raw = b"\xff\x00sdp"
    decoded = bdecode(bencode(raw))
    assert isinstance(decoded, str)
    assert bencode(decoded) == bencode(raw)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"", "data ends"),
        (b"i-0e", "malformed integer"),
        (b"i03e", "malformed integer"),
        (b"ie", "malformed integer"),
        (b"i12", "has no end"),
        (b"5:abc", "runs past the end"),
        (b"l4:spam", "data ends"),
        (b"d1:ai1e", "no end"),
        (b"di1ei2ee", "is not a string"),
        (b"x", "unexpected byte"),
        (b"i1ei2e", "trailing"),
    ],
)
def test_malformed_bencode_is_refused_with_the_reason(data: bytes, complaint: str) -> None:
    with pytest.raises(BencodeError, match=complaint):
        bdecode(data)


@pytest.mark.parametrize("value", [True, 1.5, None, {1: "a"}])
def test_values_bencode_cannot_carry_are_refused(value: object) -> None:
    with pytest.raises(BencodeError):
        bencode(value)  # type: ignore[arg-type]


def test_a_silent_peer_gives_ng_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        client = NgClient(silent.getsockname(), timeout=0.1, attempts=2)
        with (
            client,
            pytest.raises(NgTimeout, match=re.escape("did not answer 'ping' within 2 x 0.1 s")),
        ):
            client.ping()
        assert len([silent.recv(2048), silent.recv(2048)]) == 2  # both attempts were sent


@pytest.fixture(scope="module")
def engine() -> Iterator[RtpEngine]:
    with RtpEngine(port_min=36000, port_max=36999) as running:
        yield running


def _sdp(port: int, profile: str, crypto: str | None = None) -> str:
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} {profile} 8",
        "a=rtpmap:8 PCMA/8000",
    ]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto}")
    return "\r\n".join(lines) + "\r\n"


@needs_rtpengine
def test_sdes_toward_a_and_plain_toward_b(engine: RtpEngine) -> None:
    client = engine.client
    offered = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    toward_b = client.offer(
        _sdp(20000, "RTP/SAVP", offered.to_value()),
        "test-sdes",
        "caller",
        {"transport-protocol": "RTP/AVP"},
    )
    assert "RTP/AVP 8" in toward_b and "a=crypto" not in toward_b
    toward_a = client.answer(_sdp(20002, "RTP/AVP"), "test-sdes", "caller", "callee")
    assert "RTP/SAVP 8" in toward_a
    crypto_line = next(line for line in toward_a.splitlines() if line.startswith("a=crypto:"))
    answered = parse_crypto(crypto_line[len("a=crypto:") :])
    assert answered.suite == "AES_CM_128_HMAC_SHA1_80"
    assert answered.keys[0].key != offered.keys[0].key
    tags = client.query("test-sdes")["tags"]
    assert isinstance(tags, dict)
    caller = tags["caller"]
    assert isinstance(caller, dict) and isinstance(caller["medias"], list)
    media = caller["medias"][0]
    assert isinstance(media, dict) and media["protocol"] == "RTP/SAVP"
    client.delete("test-sdes", "caller")


@needs_rtpengine
def test_transcoding_flags_mask_the_offer_to_pcma_and_answer_opus(engine: RtpEngine) -> None:
    client = engine.client
    flags: list[BValue] = list(RTPENGINE_FLAGS)
    toward_b = client.offer(app_sdp(20010, None, 1), "test-transcode", "caller", {"flags": flags})
    assert "m=audio" in toward_b and " RTP/AVP 8\r\n" in toward_b
    assert "opus" not in toward_b
    toward_a = client.answer(carrier_sdp(20012, 2), "test-transcode", "caller", "callee")
    assert " RTP/AVP 111\r\n" in toward_a and "a=rtpmap:111 opus/48000/2" in toward_a
    assert "PCMA" not in toward_a
    client.delete("test-transcode", "caller")


@needs_rtpengine
def test_rtpengine_errors_carry_its_reason(engine: RtpEngine) -> None:
    with pytest.raises(NgError, match="refused 'query': Unknown call-id"):
        engine.client.query("no-such-call")
    with pytest.raises(NgError, match="Unrecognized command"):
        engine.client.command("no-such-command")


@needs_rtpengine
def test_rtpengine_is_gone_after_stop() -> None:
    engine = RtpEngine(port_min=37000, port_max=37099)
    engine.start()
    pid = engine.pid
    engine.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _wire(stream: GenStream) -> None:
    """No relay: each leg's packets go straight to the other leg's socket."""
    stream.a.relay = ("127.0.0.1", stream.b.port)
    stream.b.relay = ("127.0.0.1", stream.a.port)


def test_generator_measures_both_directions_over_srtp_without_relay() -> None:
    streams = [GenStream.bind(srtp_a=SrtpSuite.AES_CM_128_HMAC_SHA1_80) for _ in range(4)]
    try:
        for stream in streams:
            _wire(stream)
            stream.b.rx_crypto = stream.a.tx_crypto
        report = run_load(
            streams, Traffic(seconds=0.6, warmup=0.2, linger=0.1), relay_pid=None, cores=None
        )
    finally:
        for stream in streams:
            stream.close()
    assert report.relay_cpu is None and report.per_cpu_second is None
    for direction in report.directions:
        # 4 streams x 50 pps x 0.6 s, give or take the packet on the window's edge.
        assert 110 <= direction.sent <= 130
        assert direction.received == direction.sent
        assert direction.srtp_failures == 0 and direction.misrouted == 0
        assert 0 < direction.p50_us <= direction.p99_us <= direction.max_us


def test_generator_counts_packets_with_a_wrong_key_as_srtp_failures() -> None:
    stream = GenStream.bind(srtp_a=SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    try:
        _wire(stream)
        stream.b.rx_crypto = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)  # not A's key
        report = run_load(
            [stream], Traffic(seconds=0.3, warmup=0.1, linger=0.1), relay_pid=None, cores=None
        )
    finally:
        stream.close()
    a_to_b, b_to_a = report.directions
    assert a_to_b.received == 0 and a_to_b.srtp_failures > 0
    assert b_to_a.received == b_to_a.sent > 0


@pytest.mark.parametrize(
    ("codec", "complaint"),
    [
        ({"payload_size": 4}, "cannot hold"),
        ({"payload_type": 128}, "outside 0-127"),
        ({"pps": 0}, "outside 1-1000"),
    ],
)
def test_bad_traffic_parameters_are_refused(codec: dict[str, int], complaint: str) -> None:
    with pytest.raises(LoadError, match=complaint):
        Codec(**codec)  # type: ignore[arg-type]


def _looped(stream: GenStream, a_to_b: Payloads, b_to_a: Payloads, seconds: float) -> LoadReport:
    try:
        _wire(stream)
        traffic = Traffic(seconds=seconds, warmup=0.2, linger=0.1, transcoded=(a_to_b, b_to_a))
        return run_load([stream], traffic, relay_pid=None, cores=None)
    finally:
        stream.close()


def test_pre_encoded_payloads_are_looped_and_counted_by_arrival() -> None:
    # No relay: what A sends arrives at B as sent, so each side expects the other's type.
    opus_like = Payloads(111, 960, (b"\x01" * 40, b"\x02" * 60), receive_type=111)
    pcma = Payloads(8, 160, (b"\xd5" * 160,), receive_type=8)
    report = _looped(GenStream.bind(), opus_like, pcma, 0.6)
    a_to_b, b_to_a = report.directions
    for direction in report.directions:
        # 50 pps x 0.6 s; arrivals counted in a window as long as the sending one.
        assert 28 <= direction.sent <= 32
        assert abs(direction.received - direction.sent) <= 1
        assert direction.misrouted == 0
        assert direction.p50_us == direction.p99_us == 0.0  # no stamp, no latency
    assert 45 <= a_to_b.payload_bytes <= 55  # 40 and 60 bytes in turn
    assert b_to_a.payload_bytes == 160


def test_transcoded_packets_of_another_payload_type_count_as_misrouted() -> None:
    # B expects PCMA (8) back but gets A's packets of type 111 unchanged.
    a_to_b = Payloads(111, 960, (b"\x01" * 40,), receive_type=8)
    b_to_a = Payloads(8, 160, (b"\xd5" * 160,), receive_type=8)
    report = _looped(GenStream.bind(), a_to_b, b_to_a, 0.3)
    wrong, right = report.directions
    assert wrong.received == 0 and wrong.misrouted >= wrong.sent > 0
    assert right.misrouted == 0 and right.received > 0


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"payloads": ()}, "no payloads"),
        ({"payloads": (b"",)}, "payload 0 has 0 bytes"),
        ({"payloads": (b"x", b"y" * 1401)}, "payload 1 has 1401 bytes"),
        ({"send_type": 128}, "send payload type 128"),
        ({"receive_type": -1}, "receive payload type -1"),
        ({"samples_per_packet": 0}, "must be positive"),
    ],
)
def test_bad_payloads_are_refused(fields: dict[str, object], complaint: str) -> None:
    given: dict[str, object] = {
        "send_type": 111,
        "samples_per_packet": 960,
        "payloads": (b"x",),
        "receive_type": 8,
        **fields,
    }
    with pytest.raises(LoadError, match=complaint):
        Payloads(**given)  # type: ignore[arg-type]


def test_payloads_survive_the_json_spec() -> None:
    payloads = Payloads(111, 960, (b"\x00\xff\x10", b"\x7f" * 200), receive_type=8)
    assert Payloads.from_json(payloads.to_json()) == payloads
