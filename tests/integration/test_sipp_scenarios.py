"""The sipp scenarios of `scenarios/` checked against sipp itself, and the peers.py helpers.

Each UAC scenario runs against a sipp stand-in for the gateway (`selftest_uas_auth.xml`,
`selftest_registrar.xml`), each UAS scenario against a plain sipp caller
(`selftest_uac_plain.xml`), all on loopback with free ports, so that the XML is known to
work before the gateway uses it. Digest answers are recomputed here from the message logs
(RFC 2617 3.2.2 with qop=auth; sipp only speaks MD5). RTP is checked with `RtpPeer`. The last
test drives the real `edgegw run` through `peers.gateway_process` with the same material.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers import (
    GATEWAY_MEDIA_PORTS,
    SCENARIOS,
    SIPP_SOME_FAILED,
    RtpPeer,
    SippResult,
    SippRun,
    SipTrace,
    derive_scenario,
    external_media,
    free_media_port,
    free_udp_port,
    gateway_process,
    parse_message_log,
    sdp_media_address,
    sip_ping,
    sipp_binary,
    wait_for_sip,
)

needs_sipp = pytest.mark.skipif(
    sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
)

USER, PASSWORD = "1001", "demo1001"
CALLER = {"caller": USER}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_params(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest", value
    return {
        key: quoted if quoted else bare
        for key, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', rest)
    }


def digest_is_valid(value: str, *, method: str, password: str) -> bool:
    """Recompute an MD5 digest response (RFC 2617 3.2.2, with or without qop=auth)."""
    p = digest_params(value)
    ha1 = _md5(f"{p['username']}:{p['realm']}:{password}")
    ha2 = _md5(f"{method}:{p['uri']}")
    if p.get("qop"):
        expected = _md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
    else:
        expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
    return p.get("response") == expected


def branch(trace: SipTrace) -> str:
    via = trace.header("Via") or ""
    match = re.search(r"branch=([^;\s]+)", via)
    assert match is not None, via
    return match.group(1)


@pytest.fixture
def runs() -> Iterator[list[SippRun]]:
    """Every SippRun a test appends here is killed when the test ends."""
    started: list[SippRun] = []
    yield started
    for run in started:
        run.kill()


def pair(
    runs: list[SippRun],
    tmp_path: Path,
    server: str | Path,
    client: str | Path,
    *,
    server_args: dict[str, Any] | None = None,
    client_args: dict[str, Any] | None = None,
) -> tuple[SippResult, SippResult]:
    """Run a UAS scenario and a UAC scenario against it (one call); both results."""
    uas = SippRun(server, workdir=tmp_path, name="uas", timeout=10, **(server_args or {}))
    runs.append(uas)
    uas.start().wait_bound()
    uac = SippRun(
        client,
        workdir=tmp_path,
        name="uac",
        remote=uas.remote_arg,
        timeout=10,
        **(client_args or {}),
    )
    runs.append(uac)
    client_result = uac.start().wait()
    server_result = uas.wait(timeout=5)
    return server_result, client_result


# ---- helpers without sipp ----------------------------------------------------------------


def test_message_log_parsing() -> None:
    log = (
        "----------------------------------------------- 2026-11-24 19:35:12.975185\n"
        "UDP message sent (90 bytes):\n\n"
        "INVITE sip:1002@127.0.0.1:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:41090;branch=z9hG4bK-1-inv1;rport\n"
        "CSeq: 1 INVITE\n"
        "Content-Length: 3\n\nv=0\n\n"
        "----------------------------------------------- 2026-11-24 19:35:12.975556\n"
        "UDP message received [60] bytes :\n\n"
        "SIP/2.0 407 Proxy Authentication Required\n"
        'Proxy-Authenticate: Digest realm="a", algorithm=MD5\n'
        'Proxy-Authenticate: Digest realm="a", algorithm=SHA-256\n'
        "CSeq: 1 INVITE\n\n"
        "-----------------------------------------------\n"
        "Unexpected UDP message received:\n\nSIP/2.0 403 Forbidden\nCSeq: 2 INVITE\n\n"
    )
    traces = parse_message_log(log)
    assert [(t.direction, t.first_line.split()[0]) for t in traces] == [
        ("sent", "INVITE"),
        ("received", "SIP/2.0"),
        ("unexpected", "SIP/2.0"),
    ]
    invite, challenge, forbidden = traces
    assert invite.method == "INVITE" and invite.status is None and invite.body == "v=0"
    assert branch(invite) == "z9hG4bK-1-inv1"
    assert challenge.status == 407 and challenge.method == "INVITE"
    assert len(challenge.headers("proxy-authenticate")) == 2
    assert forbidden.status == 403 and forbidden.header("Via") is None


def test_rtp_peers_send_count_and_echo() -> None:
    with RtpPeer() as caller, RtpPeer(echo=True) as mirror:
        caller.send_stream(mirror.address, count=10, interval=0.005, payload_type=8)
        assert caller.wait_for(10, timeout=3), f"{caller.received} of 10 came back"
        assert mirror.received == 10 and mirror.echoed == 10
        packets = caller.snapshot()
        assert {p.payload_type for p in packets} == {8}
        assert {p.source for p in packets} == {mirror.address}
        assert all(p.payload_size == 160 for p in packets)
        assert packets[0].marker and not packets[1].marker
        sequences = [p.sequence for p in packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))


def test_free_ports_and_scenario_derivation(tmp_path: Path) -> None:
    port = free_udp_port(also_tcp=True)
    assert 1024 < port < 65536
    media = free_media_port()
    assert media % 2 == 0
    with pytest.raises(ValueError, match="not found"):
        derive_scenario("uac_call", tmp_path / "x.xml", {"no such text": ""})
    derived = external_media("uac_call", tmp_path / "uac_ext.xml", ("127.0.0.1", 40000))
    text = derived.read_text()
    assert "m=audio 40000 RTP/AVP 8 0 101" in text and "c=IN IP4 127.0.0.1" in text
    assert "play_pcap_audio" not in text
    assert sdp_media_address("v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 8\n") == (
        "10.0.0.1",
        4000,
    )
    assert sip_ping("127.0.0.1", free_udp_port(), timeout=0.1) is None
    with pytest.raises(TimeoutError):
        wait_for_sip("127.0.0.1", free_udp_port(), timeout=0.3)


# ---- registration ------------------------------------------------------------------------


def _registrar_407(tmp_path: Path) -> Path:
    """The self-test registrar challenging with 407; credentials checked here, not by sipp
    (its verifyauth reads only Authorization)."""
    derived: Path = derive_scenario(
        "selftest_registrar",
        tmp_path / "registrar_407.xml",
        {
            "SIP/2.0 401 Unauthorized": "SIP/2.0 407 Proxy Authentication Required",
            "WWW-Authenticate:": "Proxy-Authenticate:",
            '<verifyauth assign_to="authok" username="1001" password="demo1001"/>': (
                '<ereg regexp="Digest .*username=.1001." search_in="hdr" '
                'header="Proxy-Authorization:" check_it="true" assign_to="authok"/>'
            ),
        },
    )
    return derived


@needs_sipp
@pytest.mark.parametrize("challenge", [401, 407])
def test_register(runs: list[SippRun], tmp_path: Path, challenge: int) -> None:
    registrar = "selftest_registrar" if challenge == 401 else _registrar_407(tmp_path)
    server, client = pair(
        runs,
        tmp_path,
        registrar,
        "register",
        client_args={"service": USER, "auth": (USER, PASSWORD)},
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    first, second = client.sent("REGISTER")
    assert first.header("Expires") == "300" and second.header("Expires") == "300"
    assert first.header("Call-ID") == second.header("Call-ID")
    assert (first.header("CSeq"), second.header("CSeq")) == ("1 REGISTER", "2 REGISTER")
    assert first.header("Contact") == f"<sip:{USER}@127.0.0.1:{runs[1].local_port};transport=UDP>"
    header = "Authorization" if challenge == 401 else "Proxy-Authorization"
    credentials = second.header(header)
    assert credentials is not None, second.text
    assert digest_params(credentials)["algorithm"] == "MD5"
    assert digest_is_valid(credentials, method="REGISTER", password=PASSWORD)
    (ok,) = client.received("SIP/2.0 200")
    assert ok.header("Contact") == f"{first.header('Contact')};expires=300"
    assert "registered 1001: contact;expires=300" in client.logs


@needs_sipp
def test_register_over_tcp(runs: list[SippRun], tmp_path: Path) -> None:
    _server, client = pair(
        runs,
        tmp_path,
        "selftest_registrar",
        "register",
        server_args={"transport": "t1"},
        client_args={"transport": "t1", "service": USER, "auth": (USER, PASSWORD)},
    )
    assert client.ok, client.describe()
    assert {t.transport for t in client.traces} == {"TCP"}
    assert (client.sent("REGISTER")[0].header("Via") or "").startswith("SIP/2.0/TCP ")


@needs_sipp
def test_register_with_wrong_password_fails(runs: list[SippRun], tmp_path: Path) -> None:
    _server, client = pair(
        runs,
        tmp_path,
        "selftest_registrar",
        "register",
        client_args={"service": USER, "auth": (USER, "wrong")},
    )
    assert client.returncode == SIPP_SOME_FAILED and client.failed == 1, client.describe()
    assert [t.status for t in client.received()] == [401, 403]


@needs_sipp
def test_register_refuses_a_200_without_granted_expiry(runs: list[SippRun], tmp_path: Path) -> None:
    registrar = derive_scenario(
        "selftest_registrar",
        tmp_path / "registrar_expires0.xml",
        {"Contact: [$contact];expires=[$expires]": "Contact: [$contact];expires=0;x=[$expires]"},
    )
    _server, client = pair(
        runs,
        tmp_path,
        registrar,
        "register",
        client_args={"service": USER, "auth": (USER, PASSWORD)},
    )
    assert client.failed == 1, client.describe()
    assert "Failed regexp match" in client.errors


@needs_sipp
def test_sipp_answers_only_a_first_md5_challenge(runs: list[SippRun], tmp_path: Path) -> None:
    """sipp 3.6.1 answers the first challenge only and only in MD5: a gateway must offer MD5
    first (sip.auth_algorithms) for sipp-driven tests and benchmarks."""
    md5 = 'algorithm=MD5, qop="auth"\n'
    sha = 'algorithm=SHA-256, qop="auth"\n'
    original = (SCENARIOS / "selftest_registrar.xml").read_text()
    md5_line = next(line for line in original.splitlines(keepends=True) if line.endswith(md5))
    sha_line = next(line for line in original.splitlines(keepends=True) if line.endswith(sha))
    registrar = derive_scenario(
        "selftest_registrar",
        tmp_path / "registrar_sha_first.xml",
        {md5_line + sha_line: sha_line + md5_line},
    )
    _server, client = pair(
        runs,
        tmp_path,
        registrar,
        "register",
        client_args={"service": USER, "auth": (USER, PASSWORD)},
    )
    assert not client.ok
    assert "authentication must use MD5" in client.errors, client.describe()
    assert len(client.sent("REGISTER")) == 1


@needs_sipp
def test_unregister(runs: list[SippRun], tmp_path: Path) -> None:
    _server, client = pair(
        runs,
        tmp_path,
        "selftest_registrar",
        "unregister",
        client_args={"service": USER, "auth": (USER, PASSWORD)},
    )
    assert client.ok, client.describe()
    first, second = client.sent("REGISTER")
    assert first.header("Expires") == "0" and second.header("Expires") == "0"
    assert digest_is_valid(
        second.header("Authorization") or "", method="REGISTER", password=PASSWORD
    )
    (ok,) = client.received("SIP/2.0 200")
    assert ok.header("Contact") is None


# ---- app callers (UAC) against the challenging stand-in -----------------------------------


def _call_args(callee: str, **more: Any) -> dict[str, Any]:
    return {"service": callee, "keys": CALLER, "auth": (USER, PASSWORD), **more}


def _check_challenge_round(client: SippResult) -> tuple[SipTrace, SipTrace]:
    """The first INVITE, its 407, the ACK on the same branch; the authorized INVITE."""
    invites = client.sent("INVITE")
    first, second = invites[0], invites[1]
    (challenge,) = client.received("SIP/2.0 407")
    ack = client.sent("ACK")[0]
    assert branch(ack) == branch(first) == branch(challenge)
    assert ack.header("CSeq") == "1 ACK" and ack.header("To") == challenge.header("To")
    assert first.header("Proxy-Authorization") is None
    credentials = second.header("Proxy-Authorization") or ""
    assert digest_is_valid(credentials, method="INVITE", password=PASSWORD), credentials
    assert digest_params(credentials)["uri"] == f"sip:127.0.0.1:{_port_of(first)}"
    assert second.header("CSeq") == "2 INVITE" and branch(second) != branch(first)
    assert first.header("From") == second.header("From")
    assert (first.header("From") or "").startswith(f"<sip:{USER}@")
    assert "m=audio " in first.body and "RTP/AVP 8 0 101" in first.body
    assert "a=rtpmap:8 PCMA/8000" in first.body
    return first, second


def _port_of(request: SipTrace) -> str:
    port: str = request.first_line.split()[1].rsplit(":", 1)[1]
    return port


@needs_sipp
def test_uac_call(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs,
        tmp_path,
        "selftest_uas_auth",
        "uac_call",
        server_args={"rtp_echo": True},
        client_args=_call_args("1002", duration_ms=600),
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    _check_challenge_round(client)
    assert [t.status for t in client.received("SIP/2.0")] == [407, 100, 180, 200, 200]
    (answer,) = client.received("SIP/2.0 200 OK")[:1]
    contact = re.sub(r"^<|>.*$", "", answer.header("Contact") or "")
    ack_2xx, bye = client.sent("ACK")[1], client.sent("BYE")[0]
    for request in (ack_2xx, bye):
        assert request.first_line.split()[1] == contact
        assert request.header("Route") == answer.header("Record-Route")
    assert ack_2xx.header("CSeq") == "2 ACK" and bye.header("CSeq") == "3 BYE"
    assert "ACK carried Route selftest=rr" in server.logs
    assert "BYE carried Route selftest=rr" in server.logs


@needs_sipp
def test_uac_call_plays_pcma_to_the_answered_address(runs: list[SippRun], tmp_path: Path) -> None:
    with RtpPeer() as callee_media:
        uas = external_media("selftest_uas_auth", tmp_path / "uas_ext.xml", callee_media.address)
        _server, client = pair(
            runs, tmp_path, uas, "uac_call", client_args=_call_args("1002", duration_ms=1000)
        )
        assert client.ok, client.describe()
        packets = callee_media.snapshot()
    # g711a.pcap holds PCMA at 20 ms; a 1 s call plays about 50 packets of it.
    assert 20 <= len(packets) <= 70, len(packets)
    assert {p.payload_type for p in packets} == {8}
    assert {p.source[0] for p in packets} == {"127.0.0.1"}


@needs_sipp
def test_uac_call_wait_bye(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs,
        tmp_path,
        "selftest_uas_auth",
        "uac_call_wait_bye",
        server_args={"rtp_echo": True},
        client_args=_call_args("bye"),
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    _check_challenge_round(client)
    (bye,) = client.received("BYE")
    assert bye.first_line.startswith(f"BYE sip:{USER}@127.0.0.1:")
    assert client.sent("SIP/2.0 200 OK")[0].header("CSeq") == "1 BYE"
    assert not client.sent("BYE")


@needs_sipp
def test_uac_cancel(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs,
        tmp_path,
        "selftest_uas_auth",
        "uac_cancel",
        client_args=_call_args("ring", duration_ms=200),
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    _first, invite = _check_challenge_round(client)
    (cancel,) = client.sent("CANCEL")
    assert branch(cancel) == branch(invite) and cancel.header("CSeq") == "2 CANCEL"
    assert cancel.first_line.split()[1] == invite.first_line.split()[1]
    assert [t.status for t in client.received("SIP/2.0")] == [407, 100, 180, 200, 487]
    ack = client.sent("ACK")[1]
    assert branch(ack) == branch(invite) and ack.header("CSeq") == "2 ACK"
    assert ack.header("To") == client.received("SIP/2.0 487")[0].header("To")


@needs_sipp
def test_uac_noauth(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs, tmp_path, "selftest_uas_auth", "uac_noauth", client_args=_call_args("refuse")
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    (invite,) = client.sent("INVITE")
    (ack,) = client.sent("ACK")
    assert branch(ack) == branch(invite)
    assert [t.status for t in client.received()] == [407]
    assert not any(t.header("Proxy-Authorization") for t in client.sent())


@needs_sipp
def test_uac_call_many_calls(runs: list[SippRun], tmp_path: Path) -> None:
    """Several concurrent calls keep their branches and tags apart (load-test shape)."""
    server, client = pair(
        runs,
        tmp_path,
        "selftest_uas_auth",
        "uac_call",
        server_args={"calls": 6},
        client_args=_call_args("1002", calls=6, rate=30, limit=6, duration_ms=200),
    )
    assert client.ok and client.successful == 6, client.describe()
    assert server.ok and server.successful == 6, server.describe()
    assert int(client.stats["OutgoingCall(C)"]) == 6
    assert len({branch(t) for t in client.sent("INVITE")}) == 12


# ---- callees (UAS) against a plain caller ------------------------------------------------


@needs_sipp
def test_uas_answer_and_echo(runs: list[SippRun], tmp_path: Path) -> None:
    uas = SippRun("uas_answer", workdir=tmp_path, name="uas", timeout=10, rtp_echo=True)
    runs.append(uas)
    uas.start().wait_bound()
    with RtpPeer() as caller_media:
        caller_media.send_stream((uas.media_ip, uas.media_port), count=20, interval=0.01)
        assert caller_media.wait_for(20, timeout=3), f"{caller_media.received} of 20 echoed"
    uac = SippRun(
        "selftest_uac_plain",
        workdir=tmp_path,
        name="uac",
        remote=uas.remote_arg,
        timeout=10,
        service="answer",
    )
    runs.append(uac)
    client = uac.start().wait()
    server = uas.wait(timeout=5)
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    assert [t.status for t in client.received("SIP/2.0")] == [180, 200, 200]
    answer = client.received("SIP/2.0 200")[0]
    assert answer.header("Content-Type") == "application/sdp"
    assert sdp_media_address(answer.body) == (uas.media_ip, uas.media_port)
    assert re.search(r"^m=audio \d+ RTP/AVP 8 101$", answer.body, re.MULTILINE), answer.body
    assert client.sent("BYE") and not client.received("BYE")


@needs_sipp
def test_uas_bye(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs,
        tmp_path,
        "uas_bye",
        "selftest_uac_plain",
        server_args={"rtp_echo": True, "duration_ms": 300},
        client_args={"service": "bye"},
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    (bye,) = client.received("BYE")
    invite = client.sent("INVITE")[0]
    target = re.sub(r"^<|>.*$", "", invite.header("Contact") or "")
    assert bye.first_line == f"BYE {target} SIP/2.0"
    assert bye.header("From") == client.received("SIP/2.0 200")[0].header("To")
    assert bye.header("To") == invite.header("From")
    assert bye.header("Call-ID") == invite.header("Call-ID")
    assert not client.sent("BYE")


@needs_sipp
def test_uas_ring_forever(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs, tmp_path, "uas_ring_forever", "selftest_uac_plain", client_args={"service": "ring"}
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    assert [(t.status, t.method) for t in client.received("SIP/2.0")] == [
        (100, "INVITE"),
        (180, "INVITE"),
        (200, "CANCEL"),
        (487, "INVITE"),
    ]
    ringing, terminated = client.received("SIP/2.0 180")[0], client.received("SIP/2.0 487")[0]
    assert ringing.header("To") == terminated.header("To")
    assert [t.first_line.split()[0] for t in server.received()] == ["INVITE", "CANCEL", "ACK"]


@needs_sipp
def test_carrier_uas_early_media(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs,
        tmp_path,
        "carrier_uas",
        "selftest_uac_plain",
        server_args={"rtp_echo": True},
        client_args={"service": "+8613800138000"},
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    statuses = [t.status for t in client.received("SIP/2.0")]
    assert statuses == [100, 183, 200, 200]
    progress, answer = client.received("SIP/2.0 183")[0], client.received("SIP/2.0 200")[0]
    assert progress.body and progress.body == answer.body
    assert sdp_media_address(answer.body)[1] == runs[0].media_port
    assert progress.header("To") == answer.header("To")


@needs_sipp
@pytest.mark.parametrize(
    "scenario", ["uas_answer", "uas_bye", "uas_ring_forever", "carrier_uas", "uas_options"]
)
def test_uas_scenarios_answer_options(runs: list[SippRun], tmp_path: Path, scenario: str) -> None:
    uas = SippRun(scenario, workdir=tmp_path, name="uas", timeout=5)
    runs.append(uas)
    uas.start().wait_bound()
    assert wait_for_sip(*uas.address, timeout=3) == "SIP/2.0 200 OK"
    result = uas.wait(timeout=5)
    assert result.ok and result.successful == 1, result.describe()
    (options_ok,) = result.sent("SIP/2.0 200")
    assert "OPTIONS" in (options_ok.header("Allow") or "")


# ---- the real gateway through peers.gateway_process ----------------------------------------


@needs_sipp
def test_gateway_process_register_call_and_media(runs: list[SippRun]) -> None:
    """The material end to end: `edgegw run` as a child process, register.xml, uac_call.xml
    with an RtpPeer as the app's media, carrier_uas.xml echoing RTP behind the trunk."""
    media_min = random.randrange(*GATEWAY_MEDIA_PORTS, 100)
    with tempfile.TemporaryDirectory(prefix="egw-") as short:
        tmp = Path(short)
        carrier = SippRun("carrier_uas", workdir=tmp, name="carrier", timeout=15, rtp_echo=True)
        runs.append(carrier)
        sip_port = free_udp_port(also_tcp=True)
        config = f"""
            [general]
            var_dir = "{{var_dir}}"
            [sip]
            listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
            [media]
            port_min = {media_min}
            port_max = {media_min + 99}
            [http]
            listen = "127.0.0.1:{free_udp_port(also_tcp=True)}"
            [[subscribers]]
            username = "{USER}"
            password = "{PASSWORD}"
            numbers = ["+8613900139001"]
            balance = "100.00"
            [[trunks]]
            name = "carrier"
            host = "127.0.0.1"
            port = {carrier.local_port}
            tariff_per_minute = "0.10"
        """
        with gateway_process(tmp, config) as gw, RtpPeer() as app_media:
            remote = f"127.0.0.1:{sip_port}"
            register = SippRun(
                "register", workdir=tmp, remote=remote, service=USER, auth=(USER, PASSWORD)
            )
            runs.append(register)
            registered = register.start().wait()
            assert registered.ok, registered.describe()

            carrier.start().wait_bound()
            uac = SippRun(
                external_media("uac_call", tmp / "uac_ext.xml", app_media.address),
                workdir=tmp,
                name="uac",
                remote=remote,
                timeout=15,
                **_call_args("+8613800138000", duration_ms=2000),
            )
            runs.append(uac)
            uac.start()
            answer = uac.wait_for_message(
                lambda t: t.direction == "received" and t.status == 200 and t.method == "INVITE",
                timeout=5,
            )
            app_media.send_stream(sdp_media_address(answer.body), count=40)
            assert app_media.wait_for(40, timeout=4), f"{app_media.received} of 40 came back"
            called = uac.wait()
            assert called.ok, called.describe()
            behind_trunk = carrier.wait(timeout=5)
            assert behind_trunk.ok, behind_trunk.describe()
            status = gw.cli("status", "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["registrations"] == 1
