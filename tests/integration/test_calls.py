"""Calls through the real gateway: `edgegw run` as a child process against sipp peers.

Every test starts its own gateway (`peers.gateway_process`) on free ports, with short timers
(T1 0.1 s, a short no-answer timeout and media timeout where the test needs them), and drives
it with the scenarios of `scenarios/`: registration with digest auth, app-to-app and
app-to-trunk calls with RTP through the relay (RFC 3550 packets counted at both ends), hang-up
from either side, CANCEL (RFC 3261 9), no answer (408), an unauthenticated caller that must
never reach the trunk, a busy callee (486) and the media timeout. What the peers saw comes
from sipp's message logs; what the gateway recorded from `edgegw calls --json` and
`edgegw cdr --json`.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers import (
    GATEWAY_MEDIA_PORTS,
    PLAY_PCAP_STEP,
    GatewayExited,
    GatewayProcess,
    RtpPeer,
    SippResult,
    SippRun,
    SipTrace,
    derive_scenario,
    external_media,
    free_udp_port,
    gateway_process,
    scenario_path,
    sdp_media_address,
    sipp_binary,
)

pytestmark = pytest.mark.skipif(
    sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
)

PASSWORDS = {"1001": "demo1001", "1002": "demo1002"}
NUMBERS = {"1001": "+8613900139001", "1002": "+8613900139002"}
CARRIER_NUMBER = "+8613800138000"
TRUNK_NAME = "carrier"
GATEWAY_HOST = "127.0.0.1"
# The caller's RTP lives on another loopback address, so that an SDP naming the caller's
# media cannot be mistaken for one naming the gateway's relay.
CALLER_MEDIA_HOST = "127.0.0.2"
MEDIA_SPAN = 100

BUSY_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- A callee that is busy: 486 to the INVITE, then takes the ACK. -->
<scenario name="edgegw test uas_busy">
  <recv request="INVITE" crlf="true"/>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]B[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""


def config_text(
    *,
    sip_port: int,
    http_port: int,
    trunk_port: int,
    media_min: int,
    no_answer_timeout: float,
    media_timeout: float,
    extra: str = "",
) -> str:
    subscribers = "".join(
        f"""
        [[subscribers]]
        username = "{user}"
        password = "{password}"
        numbers = ["{NUMBERS[user]}"]
        balance = "100.00"
        """
        for user, password in PASSWORDS.items()
    )
    return f"""
        [general]
        var_dir = "{{var_dir}}"
        log_level = "debug"
        [sip]
        listen = [{{ transport = "udp", host = "{GATEWAY_HOST}", port = {sip_port} }}]
        t1 = 0.1
        t2 = 0.4
        no_answer_timeout = {no_answer_timeout}
        auth_algorithms = ["MD5", "SHA-256"]
        [media]
        host = "{GATEWAY_HOST}"
        port_min = {media_min}
        port_max = {media_min + MEDIA_SPAN - 1}
        timeout = {media_timeout}
        [http]
        listen = "127.0.0.1:{http_port}"
        {subscribers}
        [[trunks]]
        name = "{TRUNK_NAME}"
        host = "127.0.0.1"
        port = {trunk_port}
        tariff_per_minute = "0.10"
        {extra}
    """


@dataclass
class Lab:
    """One test's gateway, peers and files; everything in `stack` ends with the test."""

    tmp: Path
    stack: contextlib.ExitStack
    sip_port: int = field(default_factory=lambda: free_udp_port(also_tcp=True))
    trunk_port: int = field(default_factory=free_udp_port)
    media_min: int = field(
        default_factory=lambda: random.randrange(*GATEWAY_MEDIA_PORTS, MEDIA_SPAN)
    )
    gateway: GatewayProcess | None = None

    @property
    def remote(self) -> str:
        return f"{GATEWAY_HOST}:{self.sip_port}"

    @property
    def gw(self) -> GatewayProcess:
        assert self.gateway is not None, "start_gateway() first"
        return self.gateway

    def start_gateway(
        self, *, no_answer_timeout: float = 10.0, media_timeout: float = 5.0, extra: str = ""
    ) -> GatewayProcess:
        tries = 3
        while True:
            text = config_text(
                sip_port=self.sip_port,
                http_port=free_udp_port(also_tcp=True),
                trunk_port=self.trunk_port,
                media_min=self.media_min,
                no_answer_timeout=no_answer_timeout,
                media_timeout=media_timeout,
                extra=extra,
            )
            try:
                self.gateway = self.stack.enter_context(gateway_process(self.tmp, text))
                return self.gateway
            except GatewayExited as exc:
                # The port was free when picked, but another process on the box may take
                # it before the gateway's interpreter is up: pick another.
                tries -= 1
                if tries == 0 or "Address already in use" not in str(exc):
                    raise
                self.sip_port = free_udp_port(also_tcp=True)

    def in_media_range(self, port: int) -> bool:
        return self.media_min <= port < self.media_min + MEDIA_SPAN

    def sipp(self, scenario: str | Path, name: str, **options: Any) -> SippRun:
        """A sipp run killed when the test ends (options as for SippRun)."""
        options.setdefault("timeout", 15)
        run = SippRun(scenario, workdir=self.tmp, name=name, **options)
        self.stack.callback(run.kill)
        return run

    def caller(
        self, scenario: str | Path, callee: str, *, auth: bool = True, **options: Any
    ) -> SippRun:
        """User 1001 calling `callee` through the gateway."""
        if auth:
            options["auth"] = ("1001", PASSWORDS["1001"])
        return self.sipp(
            scenario,
            "caller",
            remote=self.remote,
            service=callee,
            keys={"caller": "1001"},
            **options,
        )

    def rtp_peer(self, host: str = "127.0.0.1", *, echo: bool = False) -> RtpPeer:
        return self.stack.enter_context(RtpPeer(host, echo=echo))

    def register(self, user: str, port: int) -> SippResult:
        """Register `user` with the contact 127.0.0.1:`port` (where its UAS will run)."""
        run = self.sipp(
            "register",
            f"register-{user}",
            remote=self.remote,
            local_port=port,
            service=user,
            auth=(user, PASSWORDS[user]),
            timeout=10,
        )
        result = run.start().wait()
        assert result.ok, result.describe()
        return result

    def callee(self, scenario: str | Path, user: str = "1002", **options: Any) -> SippRun:
        """A registered app user answering with `scenario` (bound and ready)."""
        port = free_udp_port()
        self.register(user, port)
        run = self.sipp(scenario, "callee", local_port=port, **options)
        run.start().wait_bound()
        return run

    def carrier(self, scenario: str | Path = "carrier_uas", **options: Any) -> SippRun:
        run = self.sipp(scenario, "carrier", local_port=self.trunk_port, **options)
        run.start().wait_bound()
        return run

    def cli_json(self, *args: str) -> Any:
        done = self.gw.cli(*args, "--json")
        assert done.returncode == 0, f"edgegw {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("status")
        return result

    def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.cli_json("calls")
        return result

    def cdrs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.cli_json("cdr")
        return result

    def wait_cdr(self, timeout: float = 5.0) -> dict[str, Any]:
        """The one CDR of the test, once the gateway has written it."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.cdrs()
            if records or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(records) == 1, f"expected one CDR, got {records}"
        return records[0]


@pytest.fixture
def lab() -> Iterator[Lab]:
    # Short: the control socket path under it must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="egw-") as name, contextlib.ExitStack() as stack:
        yield Lab(Path(name), stack)


def is_response(status: int, method: str = "INVITE") -> Callable[[SipTrace], bool]:
    def match(trace: SipTrace) -> bool:
        return trace.direction == "received" and trace.status == status and trace.method == method

    return match


def tag_of(value: str | None) -> str | None:
    match = re.search(r";\s*tag=([^;>\s]+)", value or "")
    return match.group(1) if match else None


def statuses(result: SippResult, method: str = "INVITE") -> list[int]:
    """Statuses received for `method`, without 100 Trying (sent or not depending on timing)."""
    received = result.received("SIP/2.0")
    return [t.status for t in received if t.method == method and t.status and t.status != 100]


def uac_expecting(lab: Lab, status: int) -> Path:
    """uac_cancel turned into a caller that waits for a final `status` instead of cancelling
    (optional 180 first), then ACKs it on the INVITE's branch."""
    text = scenario_path("uac_cancel").read_text(encoding="latin-1")
    start = text.index('<recv response="180" response_txn="invite2"/>')
    final = '<recv response="487" response_txn="invite2"/>'
    end = text.index(final) + len(final)
    return derive_scenario(
        "uac_cancel",
        lab.tmp / f"uac_expect_{status}.xml",
        {
            text[start:end]: (
                '<recv response="180" optional="true" response_txn="invite2"/>\n'
                f'  <recv response="{status}" response_txn="invite2"/>'
            )
        },
    )


def authorized_invite(result: SippResult) -> SipTrace:
    """The caller's INVITE that carried credentials (the one the gateway acted on)."""
    invites = [t for t in result.sent("INVITE") if t.header("Proxy-Authorization")]
    assert invites, f"no INVITE with credentials\n{result.describe()}"
    return invites[-1]


def branch_of(via: str | None) -> str | None:
    match = re.search(r";\s*branch=([^;\s]+)", via or "")
    return match.group(1) if match else None


def algorithm(challenge: str) -> str:
    match = re.search(r"algorithm=([\w-]+)", challenge)
    assert match is not None, challenge
    return match.group(1)


# ---- registration ------------------------------------------------------------------------


def test_register_with_digest_then_unregister(lab: Lab) -> None:
    lab.start_gateway()
    port = free_udp_port()
    registered = lab.register("1001", port)
    challenge, ok = registered.received("SIP/2.0")
    assert (challenge.status, ok.status) == (401, 200), registered.describe()
    assert [algorithm(c) for c in challenge.headers("WWW-Authenticate")] == ["MD5", "SHA-256"]
    assert registered.sent("REGISTER")[1].header("Authorization"), registered.describe()
    contact = f"<sip:1001@127.0.0.1:{port};transport=UDP>"
    assert (ok.header("Contact") or "").startswith(contact), ok.text
    assert lab.status()["registrations"] == 1

    unregister = lab.sipp(
        "unregister",
        "unregister",
        remote=lab.remote,
        local_port=port,
        service="1001",
        auth=("1001", PASSWORDS["1001"]),
        timeout=10,
    )
    removed = unregister.start().wait()
    assert removed.ok, removed.describe()
    (final,) = removed.received("SIP/2.0 200")
    assert contact not in "".join(final.headers("Contact"))
    assert lab.status()["registrations"] == 0


# ---- app to app --------------------------------------------------------------------------


def test_app_to_app_call_relays_media_and_hides_the_caller_leg(lab: Lab) -> None:
    lab.start_gateway()
    caller_media = lab.rtp_peer(CALLER_MEDIA_HOST)
    callee_media = lab.rtp_peer(echo=True)
    callee = lab.callee(
        external_media("uas_answer", lab.tmp / "uas_ext.xml", callee_media.address),
    )
    uac = lab.caller(
        external_media("uac_call", lab.tmp / "uac_ext.xml", caller_media.address),
        "1002",
        duration_ms=3000,
    )
    uac.start()
    answer = uac.wait_for_message(is_response(200), timeout=5)
    relay_a = sdp_media_address(answer.body)
    assert relay_a[0] == GATEWAY_HOST and lab.in_media_range(relay_a[1]), answer.body

    packets = 50
    caller_media.send_stream(relay_a, count=packets)
    assert caller_media.wait_for(packets, timeout=5), f"{caller_media.received} came back"
    # The callee's peer counts a packet after echoing it: wait for its count too.
    assert callee_media.wait_for(packets, timeout=1), f"callee got {callee_media.received}"
    assert callee_media.received == packets and callee_media.echoed == packets

    invite = callee.wait_for_message(
        lambda t: t.direction == "received" and t.method == "INVITE", timeout=1
    )
    relay_b = sdp_media_address(invite.body)
    assert relay_b[0] == GATEWAY_HOST and lab.in_media_range(relay_b[1]), invite.body
    assert relay_b[1] != relay_a[1]
    # The callee's stream came from the b-leg relay port, the echo back from the a-leg one.
    assert {p.source for p in callee_media.snapshot()} == {relay_b}
    assert {p.source for p in caller_media.snapshot()} == {relay_a}

    (call,) = lab.calls()
    assert (call["route"], call["state"]) == ("app", "answered"), call
    assert (call["caller"], call["callee"]) == ("1001", "1002")
    assert call["callee_call_id"] == invite.header("Call-ID")
    media = call["media"]
    assert media["a"]["rtp"]["local"][1] == relay_a[1]
    assert media["b"]["rtp"]["local"][1] == relay_b[1]
    assert media["a"]["rtp"]["latched"] == [CALLER_MEDIA_HOST, caller_media.port]
    assert media["a"]["rtp"]["packets_in"] == packets
    assert media["b"]["rtp"]["packets_out"] == packets
    assert media["b"]["rtp"]["packets_in"] == packets
    assert media["a"]["rtp"]["packets_out"] == packets

    called = uac.wait()
    assert called.ok, called.describe()
    answered = callee.wait(timeout=5)
    assert answered.ok, answered.describe()

    caller_invite = authorized_invite(called)
    assert call["caller_call_id"] == caller_invite.header("Call-ID")
    assert invite.header("Call-ID") != caller_invite.header("Call-ID")
    assert tag_of(invite.header("From")) != tag_of(caller_invite.header("From"))
    (via,) = invite.headers("Via")  # the gateway's own, nothing of the caller's path
    assert via.startswith(f"SIP/2.0/UDP {GATEWAY_HOST}:{lab.sip_port};"), invite.text
    assert branch_of(via) != branch_of(caller_invite.header("Via"))
    assert invite.header("Contact") != caller_invite.header("Contact")
    assert f"sip:{GATEWAY_HOST}:{lab.sip_port}" in (invite.header("Contact") or ""), invite.text
    for secret in (
        caller_invite.header("Call-ID") or "?",
        tag_of(caller_invite.header("From")) or "?",
        f"{GATEWAY_HOST}:{uac.local_port}",
        CALLER_MEDIA_HOST,
        f"m=audio {caller_media.port} ",
    ):
        assert secret not in invite.text, f"{secret!r} of the caller's leg reached the callee"
    (bye,) = answered.received("BYE")
    assert bye.header("Call-ID") == invite.header("Call-ID")

    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye"), cdr
    assert (cdr["route"], cdr["caller"], cdr["callee"]) == ("app", "1001", "1002")
    assert 2.0 <= cdr["duration"] <= 10.0, cdr


# ---- app to trunk ------------------------------------------------------------------------


def test_app_to_trunk_call_with_early_media(lab: Lab) -> None:
    lab.start_gateway()
    carrier = lab.carrier(rtp_echo=True)
    caller_media = lab.rtp_peer(CALLER_MEDIA_HOST)
    uac = lab.caller(
        external_media("uac_call", lab.tmp / "uac_ext.xml", caller_media.address),
        CARRIER_NUMBER,
        duration_ms=2000,
    )
    uac.start()
    answer = uac.wait_for_message(is_response(200), timeout=5)
    relay_a = sdp_media_address(answer.body)
    packets = 40
    caller_media.send_stream(relay_a, count=packets)
    assert caller_media.wait_for(packets, timeout=5), f"{caller_media.received} came back"
    assert {p.source for p in caller_media.snapshot()} == {relay_a}
    (call,) = lab.calls()
    assert (call["route"], call["trunk"], call["state"]) == ("trunk", TRUNK_NAME, "answered")
    assert call["media"]["b"]["rtp"]["latched"] == ["127.0.0.1", carrier.media_port]
    assert call["media"]["b"]["rtp"]["packets_in"] == packets

    called = uac.wait()
    assert called.ok, called.describe()
    behind_trunk = carrier.wait(timeout=5)
    assert behind_trunk.ok, behind_trunk.describe()

    (invite,) = behind_trunk.received("INVITE")
    assert invite.first_line == f"INVITE sip:{CARRIER_NUMBER}@127.0.0.1:{lab.trunk_port} SIP/2.0"
    assert f"sip:{NUMBERS['1001']}@" in (invite.header("From") or ""), invite.text
    relay_b = sdp_media_address(invite.body)
    assert relay_b[0] == GATEWAY_HOST and lab.in_media_range(relay_b[1]), invite.body

    assert statuses(called)[-2:] == [183, 200], called.describe()
    (progress,) = called.received("SIP/2.0 183")
    early = sdp_media_address(progress.body)
    assert early == relay_a, (progress.body, answer.body)
    assert early[1] != carrier.media_port and lab.in_media_range(early[1])
    assert f"m=audio {carrier.media_port} " not in progress.body + answer.body
    # The carrier's SDP did not change from 183 to 200, so neither does ours (RFC 3264 8).
    origin = re.compile(r"^o=.*$", re.MULTILINE)
    assert origin.findall(progress.body) == origin.findall(answer.body), progress.body
    assert tag_of(progress.header("To")) == tag_of(answer.header("To"))

    cdr = lab.wait_cdr()
    assert (cdr["route"], cdr["trunk"], cdr["callee"]) == ("trunk", TRUNK_NAME, CARRIER_NUMBER)
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye"), cdr


# ---- endings -----------------------------------------------------------------------------


def test_callee_hangs_up(lab: Lab) -> None:
    lab.start_gateway()
    callee = lab.callee("uas_bye", rtp_echo=True, duration_ms=1000)
    uac = lab.caller("uac_call_wait_bye", "1002")
    called = uac.start().wait()
    assert called.ok, called.describe()
    hung_up = callee.wait(timeout=5)
    assert hung_up.ok, hung_up.describe()
    (bye,) = called.received("BYE")
    assert bye.header("Call-ID") == authorized_invite(called).header("Call-ID")
    assert not called.sent("BYE")
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "callee-bye"), cdr
    assert cdr["duration"] > 0.5, cdr


def test_caller_cancels_while_ringing(lab: Lab) -> None:
    lab.start_gateway()
    callee = lab.callee("uas_ring_forever")
    uac = lab.caller("uac_cancel", "1002", duration_ms=500)
    called = uac.start().wait()
    assert called.ok, called.describe()
    rang = callee.wait(timeout=5)
    assert rang.ok, rang.describe()
    assert statuses(called) == [407, 180, 487], called.describe()
    (cancel_ok,) = called.received("SIP/2.0 200")
    assert cancel_ok.method == "CANCEL"
    ringing, terminated = called.received("SIP/2.0 180")[0], called.received("SIP/2.0 487")[0]
    assert tag_of(ringing.header("To")) == tag_of(terminated.header("To")) is not None
    assert [t.first_line.split()[0] for t in rang.received()] == ["INVITE", "CANCEL", "ACK"]
    (cancel,) = rang.received("CANCEL")
    assert cancel.header("Call-ID") == rang.received("INVITE")[0].header("Call-ID")
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("cancelled", "caller-cancel"), cdr
    assert cdr["answer"] is None and cdr["duration"] == 0


def test_no_answer_times_out(lab: Lab) -> None:
    timeout = 2.0
    lab.start_gateway(no_answer_timeout=timeout)
    callee = lab.callee("uas_ring_forever")
    uac = lab.caller(uac_expecting(lab, 408), "1002")
    started = time.monotonic()
    called = uac.start().wait()
    elapsed = time.monotonic() - started
    assert called.ok, called.describe()
    assert statuses(called)[-1] == 408
    assert timeout <= elapsed < timeout + 5, elapsed
    rang = callee.wait(timeout=5)
    assert rang.ok, rang.describe()
    assert rang.received("CANCEL"), rang.describe()
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("no-answer", "no-answer-timeout"), cdr
    assert cdr["sip_status"] == 408


def test_unauthenticated_call_never_reaches_the_trunk(lab: Lab) -> None:
    lab.start_gateway()
    carrier = lab.carrier(calls=1, timeout=5)
    uac = lab.caller("uac_noauth", CARRIER_NUMBER, auth=False, timeout=10)
    refused = uac.start().wait()
    assert refused.ok, refused.describe()
    assert statuses(refused) == [407]
    # Anything the gateway wrongly sent on would be there well within this second.
    untouched = carrier.wait(timeout=1.0)
    assert untouched.traces == [], untouched.describe()
    assert lab.cdrs() == []
    status = lab.status()
    assert status["calls_started"] == 0 and status["active_calls"] == 0
    assert status["auth_challenges"] >= 1


def test_busy_callee(lab: Lab) -> None:
    lab.start_gateway()
    busy = lab.tmp / "uas_busy.xml"
    busy.write_text(BUSY_UAS, encoding="latin-1")
    callee = lab.callee(busy)
    uac = lab.caller(uac_expecting(lab, 486), "1002")
    called = uac.start().wait()
    assert called.ok, called.describe()
    assert statuses(called)[-1] == 486
    refused = callee.wait(timeout=5)
    assert refused.ok, refused.describe()
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["sip_status"]) == ("busy", 486), cdr
    assert cdr["end_reason"] == "callee-rejected"


def test_media_timeout_hangs_up_both_legs(lab: Lab) -> None:
    timeout = 2.0
    lab.start_gateway(media_timeout=timeout)
    callee = lab.callee("uas_answer")  # no -rtp_echo: silent
    silent = derive_scenario("uac_call_wait_bye", lab.tmp / "uac_silent.xml", {PLAY_PCAP_STEP: ""})
    uac = lab.caller(silent, "1002")
    started = time.monotonic()
    called = uac.start().wait()
    elapsed = time.monotonic() - started
    assert called.ok, called.describe()
    answered = callee.wait(timeout=5)
    assert answered.ok, answered.describe()
    assert timeout <= elapsed < timeout + 5, elapsed
    for side in (called, answered):
        (bye,) = side.received("BYE")
        assert "Media Timeout" in (bye.header("Reason") or ""), bye.text
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "media-timeout"), cdr


def test_a_trunk_sending_reliable_provisionals_gets_its_prack(lab: Lab) -> None:
    # The carrier's 180 carries Require: 100rel; it checks the RAck of our PRACK before
    # it answers (RFC 3262), and fails the call (481, then 500) when it is wrong.
    lab.start_gateway()
    carrier = lab.carrier("uas_100rel", rtp_echo=True)
    uac = lab.caller("uac_call", CARRIER_NUMBER, duration_ms=500)
    called = uac.start().wait()
    assert called.ok, called.describe()
    behind_trunk = carrier.wait(timeout=5)
    assert behind_trunk.ok, behind_trunk.describe()
    (invite,) = behind_trunk.received("INVITE")
    assert "100rel" in (invite.header("Supported") or ""), invite.text
    (prack,) = behind_trunk.received("PRACK")
    assert prack.header("RAck") == f"2147480000 {invite.header('CSeq')}", prack.text
    assert [t.status for t in called.received("SIP/2.0") if t.method == "INVITE"][-1] == 200
    cdr = lab.wait_cdr()
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye"), cdr


def test_a_carrier_requiring_100rel_gets_its_provisionals_reliably(lab: Lab) -> None:
    # The carrier calls 1002's number with Require: 100rel: the app's 180 reaches it with
    # Require: 100rel and an RSeq, and goes on being resent until the carrier's PRACK.
    lab.start_gateway()
    callee = lab.callee("uas_answer", rtp_echo=True)
    carrier = lab.sipp(
        "uac_100rel",
        "carrier-caller",
        remote=lab.remote,
        local_port=lab.trunk_port,
        service=NUMBERS["1002"],
        keys={"caller": "+8613700137000"},
        duration_ms=300,
    )
    called = carrier.start().wait()
    assert called.ok, called.describe()
    assert callee.wait(timeout=5).ok
    reliable = [t for t in called.received("SIP/2.0 18")]
    assert reliable and all(t.header("RSeq") for t in reliable), called.describe()
    assert "100rel" in (reliable[0].header("Require") or "")
    (prack_ok,) = [t for t in called.received("SIP/2.0 200") if t.method == "PRACK"]
    assert prack_ok.status == 200
    cdr = lab.wait_cdr()
    assert (cdr["route"], cdr["caller"]) == ("app", "+8613700137000")
    assert cdr["disposition"] == "answered"


def test_least_cost_carrier_out_of_circuits_fails_over_to_the_next(lab: Lab) -> None:
    # Two sipp carriers: "primary" (cheaper, +86138) answers 503 with Q.850 cause 34 (no
    # circuit), a network cause: the call goes on to the test trunk, which answers.
    primary_port = free_udp_port()
    lab.start_gateway(
        extra=f"""
        [[trunks]]
        name = "primary"
        host = "127.0.0.1"
        port = {primary_port}
        prefixes = ["86138"]
        price_per_minute = "0.01"
        """
    )
    primary = lab.sipp("uas_reason_503", "primary", local_port=primary_port)
    primary.start().wait_bound()
    carrier = lab.carrier(rtp_echo=True)
    uac = lab.caller("uac_call", CARRIER_NUMBER, duration_ms=300)
    called = uac.start().wait()
    assert called.ok, called.describe()
    assert primary.wait(timeout=5).ok
    behind = carrier.wait(timeout=5)
    assert behind.ok, behind.describe()
    cdr = lab.wait_cdr()
    assert (cdr["trunk"], cdr["trunks_tried"]) == (TRUNK_NAME, ["primary", TRUNK_NAME]), cdr
    assert cdr["disposition"] == "answered"
