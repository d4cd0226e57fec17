"""The carrier scenarios for PRACK (RFC 3262) and Reason (RFC 3326), checked against sipp itself.

`uac_100rel` (a carrier caller that requires 100rel) runs against `uas_100rel` (a carrier
callee that sends its 180 reliably and checks the RAck of the PRACK), so each is the other's
peer; derived copies check that a wrong RAck or an unreliable 180 fail. The rejecting
`uas_reason_*` scenarios run against `selftest_uac_reject`, `uas_reason_bye` against
`selftest_uac_plain`. The Reason values sipp sent are read back with gateway.sip.reason, and
the RSeq/RAck pair with gateway.sip.reliable, so the XML and the parsers agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sip.reason import Q850, Reason, parse_reason
from gateway.sip.reliable import RAck, parse_rack, parse_rseq
from tests.integration.peers import SippResult, SippRun, derive_scenario, sipp_binary

pytestmark = pytest.mark.skipif(
    sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
)

CARRIER_ARGS = {"service": "8613800138000", "keys": {"caller": "8613900139001"}}


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
    client_args: dict[str, Any] | None = None,
    timeout: float = 6.0,
) -> tuple[SippResult, SippResult]:
    """One call of UAS scenario `server` driven by UAC scenario `client`; both results."""
    uas = SippRun(server, workdir=tmp_path, name="uas", timeout=timeout, duration_ms=200)
    runs.append(uas)
    uas.start().wait_bound()
    uac = SippRun(
        client,
        workdir=tmp_path,
        name="uac",
        remote=uas.remote_arg,
        timeout=timeout,
        duration_ms=200,
        **(client_args or {}),
    )
    runs.append(uac)
    client_result = uac.start().wait()
    return uas.wait(timeout=timeout), client_result


def flow(result: SippResult) -> list[str]:
    return [
        f"{'>' if t.direction == 'sent' else '<'} {t.status or t.method}" for t in result.traces
    ]


def test_uac_100rel_pracks_the_reliable_180(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(runs, tmp_path, "uas_100rel", "uac_100rel", client_args=CARRIER_ARGS)
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    assert flow(client) == [
        "> INVITE", "< 180", "> PRACK", "< 200", "< 200", "> ACK", "> BYE", "< 200",
    ]  # fmt: skip
    (invite,) = client.sent("INVITE")
    assert invite.header("Require") == "100rel"
    (ringing,) = client.received("SIP/2.0 180")
    assert ringing.header("Require") == "100rel"
    rseq = parse_rseq(ringing.header("RSeq") or "")
    (prack,) = client.sent("PRACK")
    assert parse_rack(prack.header("RAck") or "") == RAck(rseq, 1, "INVITE")
    # The PRACK goes inside the early dialog: to the 180's Contact, with its To tag.
    contact = (ringing.header("Contact") or "").strip("<>").split(">")[0]
    assert prack.first_line.split()[1] == contact
    assert prack.header("To") == ringing.header("To")
    oks = [t.header("CSeq") for t in client.received("SIP/2.0 200")]
    assert oks == ["2 PRACK", "1 INVITE", "3 BYE"]


def test_uac_100rel_pracks_a_reliable_183(runs: list[SippRun], tmp_path: Path) -> None:
    uas = derive_scenario(
        "uas_100rel", tmp_path / "uas_183.xml", {"SIP/2.0 180 Ringing": "SIP/2.0 183 Progress"}
    )
    server, client = pair(runs, tmp_path, uas, "uac_100rel", client_args=CARRIER_ARGS)
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    assert flow(client)[:4] == ["> INVITE", "< 183", "> PRACK", "< 200"]


# What a caller that sent a bad RAck gets: 481 to the PRACK, 500 to the INVITE, which it ACKs.
BAD_RACK_ENDING = """  <recv response="481" response_txn="prack"/>
  <recv response="500" response_txn="invite"/>
  <send ack_txn="invite" next="end">
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-inv;rport
      From: <sip:[caller]@[local_ip]>;tag=[pid]R[call_number]
      To: <sip:[service]@[remote_ip]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
"""


@pytest.mark.parametrize(
    ("rack_line", "error"),
    [
        ("      RAck: [$rseq] 9 INVITE\n", 'rack_cseq:"9" and invite_cseq:"1"'),
        ("      RAck: 1 1 INVITE\n", 'rack_rseq:"1" and :"2147480000"'),
        ("      RAck: [$rseq] 1 UPDATE\n", "Failed regexp match"),
        ("", "header RAck: not found"),
    ],
    ids=["wrong-cseq", "wrong-rseq", "wrong-method", "missing"],
)
def test_uas_100rel_answers_a_bad_rack_with_481(
    runs: list[SippRun], tmp_path: Path, rack_line: str, error: str
) -> None:
    uac = derive_scenario(
        "uac_100rel",
        tmp_path / "uac_bad_rack.xml",
        {
            "      RAck: [$rseq] 1 INVITE\n": rack_line,
            '  <recv response="200" response_txn="prack"/>\n': BAD_RACK_ENDING,
        },
    )
    server, client = pair(runs, tmp_path, "uas_100rel", uac, client_args=CARRIER_ARGS)
    assert server.failed == 1, server.describe()
    assert error in server.errors, server.errors
    assert flow(server) == ["< INVITE", "> 180", "< PRACK", "> 481", "> 500", "< ACK"]
    assert client.ok, client.describe()


def test_uac_100rel_fails_an_unreliable_180(runs: list[SippRun], tmp_path: Path) -> None:
    uas = derive_scenario(
        "uas_100rel", tmp_path / "uas_unreliable.xml", {"      Require: 100rel\n": ""}
    )
    _server, client = pair(runs, tmp_path, uas, "uac_100rel", client_args=CARRIER_ARGS, timeout=3)
    assert client.failed == 1, client.describe()
    assert not client.sent("PRACK")


@pytest.mark.parametrize(("scenario", "status", "cause"), [("486", 486, 17), ("503", 503, 34)])
def test_uas_reason_rejects_with_a_q850_cause(
    runs: list[SippRun], tmp_path: Path, scenario: str, status: int, cause: int
) -> None:
    server, client = pair(
        runs, tmp_path, f"uas_reason_{scenario}", "selftest_uac_reject", client_args=CARRIER_ARGS
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    assert flow(client) == ["> INVITE", "< 100", f"< {status}", "> ACK"]
    (final,) = client.received(f"SIP/2.0 {status}")
    (reason,) = parse_reason(final.header("Reason") or "")
    assert (reason.protocol, reason.cause) == (Q850, cause)
    (ack,) = client.sent("ACK")
    (invite,) = client.sent("INVITE")
    assert ack.header("Via") == invite.header("Via")


def test_uas_reason_bye_hangs_up_with_normal_clearing(runs: list[SippRun], tmp_path: Path) -> None:
    server, client = pair(
        runs, tmp_path, "uas_reason_bye", "selftest_uac_plain", client_args=CARRIER_ARGS
    )
    assert client.ok, client.describe()
    assert server.ok, server.describe()
    (bye,) = client.received("BYE")
    assert parse_reason(bye.header("Reason") or "") == [Reason(Q850, 16, "Normal call clearing")]
    assert client.sent("SIP/2.0 200")[0].header("CSeq") == "1 BYE"
