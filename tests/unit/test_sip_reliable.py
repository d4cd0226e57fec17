"""Tests for gateway.sip.reliable: RFC 3262 reliable provisional responses and PRACK."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog, DialogState
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.reliable import (
    FIRST_RSEQ_LIMIT,
    GaveUp,
    PrackOutcome,
    PrackPending,
    ProvisionalKind,
    RAck,
    ReliableError,
    ReliableReceiver,
    ReliableSender,
    Retransmit,
    bad_extension,
    build_prack,
    parse_rack,
    parse_rseq,
    rel100_request_headers,
    requires_100rel,
    supports_100rel,
    unsupported_tags,
)
from gateway.sip.transaction import InviteServerTransaction, Timers, Transmit

SDP = b"v=0\r\no=- 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"


def invite(*extra: str, cseq: int = 7) -> Request:
    lines = [
        "INVITE sip:+8613800138000@203.0.113.5:5080 SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKrel1",
        "Max-Forwards: 70",
        "From: <sip:+8613900139001@198.51.100.1>;tag=gwtag",
        "To: <sip:+8613800138000@203.0.113.5>",
        "Call-ID: rel-1",
        f"CSeq: {cseq} INVITE",
        "Contact: <sip:gw@198.51.100.1:5060>",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def provisional(
    req: Request,
    status: int = 180,
    *,
    to_tag: str | None = "callee",
    rseq: str | None = None,
    require: str | None = "100rel",
    body: bytes = b"",
) -> Response:
    response = make_response(req, status, to_tag=to_tag)
    response.headers.add("Contact", "<sip:carrier@203.0.113.5:5080>")
    response.headers.add("Record-Route", "<sip:edge.carrier.example;lr>")
    if require is not None:
        response.headers.add("Require", require)
    if rseq is not None:
        response.headers.add("RSeq", rseq)
    if body:
        response.headers.add("Content-Type", "application/sdp")
        response.body = body
    return response


def prack(req: Request, rack: str | None, *, to_tag: str = "callee", branch: str = "p1") -> Request:
    lines = [
        "PRACK sip:gw@198.51.100.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 203.0.113.5:5080;branch=z9hG4bK{branch}",
        f"From: {req.headers.get('From')}",
        f"To: <sip:+8613800138000@203.0.113.5>;tag={to_tag}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.cseq.seq + 1} PRACK",
        *([] if rack is None else [f"RAck: {rack}"]),
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


# ---- option tags ----------------------------------------------------------------------------


def test_require_and_supported() -> None:
    assert requires_100rel(invite("Require: 100REL"))
    assert supports_100rel(invite("Require: 100rel"))
    assert supports_100rel(invite("Supported: timer, 100rel"))
    assert supports_100rel(invite("k: 100rel"))  # compact form of Supported
    assert not supports_100rel(invite("Supported: timer"))
    assert not requires_100rel(invite("Supported: 100rel"))


def test_unsupported_tags_and_420() -> None:
    req = invite("Require: 100rel, precondition", "Require: foo, precondition")
    assert unsupported_tags(req, {"100rel", "timer"}) == ["precondition", "foo"]
    assert unsupported_tags(req, {"100rel", "precondition", "foo"}) == []
    response = bad_extension(req, ["precondition", "foo"], to_tag="t420")
    assert response.status == 420 and response.reason == "Bad Extension"
    assert response.headers.get("Unsupported") == "precondition, foo"
    assert response.to.tag == "t420"
    assert bad_extension(req, ["foo"]).to.tag  # a fresh tag by default
    with pytest.raises(ValueError, match="at least one"):
        bad_extension(req, [])


def test_request_headers_per_trunk_mode() -> None:
    assert rel100_request_headers("off") == []
    assert rel100_request_headers("supported") == [("Supported", "100rel")]
    assert rel100_request_headers("required") == [
        ("Supported", "100rel"),
        ("Require", "100rel"),
    ]
    with pytest.raises(ValueError, match="rel100 mode"):
        rel100_request_headers("always")  # type: ignore[arg-type]


# ---- RSeq / RAck ----------------------------------------------------------------------------


def test_parse_rseq_and_rack() -> None:
    assert parse_rseq(" 4294967295 ") == 2**32 - 1
    assert parse_rack("776656  7 INVITE") == RAck(776656, 7, "INVITE")
    assert str(RAck(1, 2, "INVITE")) == "1 2 INVITE"


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("", "not a number"),
        ("abc", "not a number"),
        ("-1", "not a number"),
        ("0", "outside 1-4294967295"),
        ("4294967296", "outside 1-4294967295"),
        ("12345678901", "not a number"),
        ("１２", "not a number"),  # full-width digits
    ],
)
def test_bad_rseq(value: str, fault: str) -> None:
    with pytest.raises(ReliableError, match=fault) as info:
        parse_rseq(value)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("1 7", "not '<rseq> <cseq> <method>'"),
        ("1 7 INVITE extra", "not '<rseq> <cseq> <method>'"),
        ("", "not '<rseq> <cseq> <method>'"),
        ("x 7 INVITE", "RAck response number"),
        ("0 7 INVITE", "outside"),
        ("1 x INVITE", "Bad CSeq number"),
        ("1 2147483648 INVITE", "Bad CSeq number"),
        ("1 7 INV<ITE", "Bad CSeq method"),
    ],
)
def test_bad_rack(value: str, fault: str) -> None:
    with pytest.raises(ReliableError, match=fault) as info:
        parse_rack(value)
    assert info.value.status == 400


# ---- UAC side -------------------------------------------------------------------------------


def test_unreliable_provisionals() -> None:
    req = invite()
    receiver = ReliableReceiver(req)
    plain = receiver.receive(provisional(req, require=None))
    assert plain.kind is ProvisionalKind.UNRELIABLE and plain.rack is None
    # RFC 3262 4: a 100 is never reliable, even when it says so.
    trying = receiver.receive(provisional(req, 100, to_tag=None, rseq="5"))
    assert trying.kind is ProvisionalKind.UNRELIABLE


def test_new_retransmitted_and_out_of_order() -> None:
    req = invite()
    receiver = ReliableReceiver(req)
    first = receiver.receive(provisional(req, 180, rseq="1000"))
    assert first.kind is ProvisionalKind.NEW
    assert first.rack == RAck(1000, 7, "INVITE") and first.to_tag == "callee"
    again = receiver.receive(provisional(req, 180, rseq="1000"))
    assert again.kind is ProvisionalKind.RETRANSMISSION and again.rack is None
    skipped = receiver.receive(provisional(req, 183, rseq="1002"))
    assert skipped.kind is ProvisionalKind.OUT_OF_ORDER and skipped.rack is None
    following = receiver.receive(provisional(req, 183, rseq="1001"))
    assert following.kind is ProvisionalKind.NEW and following.rack == RAck(1001, 7, "INVITE")
    older = receiver.receive(provisional(req, 180, rseq="1000"))
    assert older.kind is ProvisionalKind.RETRANSMISSION


def test_each_to_tag_has_its_own_rseq_space() -> None:
    req = invite()
    receiver = ReliableReceiver(req)
    assert receiver.receive(provisional(req, rseq="10")).kind is ProvisionalKind.NEW
    fork = receiver.receive(provisional(req, to_tag="fork2", rseq="99"))
    assert fork.kind is ProvisionalKind.NEW and fork.rack == RAck(99, 7, "INVITE")
    assert receiver.receive(provisional(req, rseq="11")).kind is ProvisionalKind.NEW


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"rseq": None}, "Reliable 180 without RSeq"),
        ({"rseq": "abc"}, "Bad RSeq"),
        ({"rseq": "0"}, "Bad RSeq"),
        ({"rseq": "1", "to_tag": None}, "without To tag"),
    ],
)
def test_unusable_reliable_provisionals(kwargs: dict[str, str | None], fault: str) -> None:
    req = invite()
    with pytest.raises(ReliableError, match=fault):
        ReliableReceiver(req).receive(provisional(req, 180, **kwargs))  # type: ignore[arg-type]


def test_receiver_refuses_foreign_and_final_responses() -> None:
    req = invite()
    receiver = ReliableReceiver(req)
    with pytest.raises(ReliableError, match="does not answer this INVITE"):
        receiver.receive(provisional(invite(cseq=8), rseq="1"))
    with pytest.raises(ReliableError, match="not a provisional"):
        receiver.receive(provisional(req, 200, rseq="1"))
    broken = provisional(req, rseq="1")
    broken.headers.set("CSeq", "x INVITE")
    with pytest.raises(ReliableError, match="Malformed provisional"):
        receiver.receive(broken)
    with pytest.raises(ValueError, match="answer an INVITE"):
        ReliableReceiver(prack(req, "1 7 INVITE"))


def state_of(dialog: Dialog) -> DialogState:
    """Read the state through a call so mypy does not keep an earlier narrowing."""
    return dialog.state


def test_prack_in_the_early_dialog() -> None:
    req = invite()
    ringing = provisional(req, 180, rseq="42")
    found = ReliableReceiver(req).receive(ringing)
    assert found.rack is not None
    dialog = Dialog.as_uac(req, ringing)
    assert dialog.state is DialogState.EARLY
    request = build_prack(dialog, found.rack)
    assert request.method == "PRACK"
    assert request.uri == "sip:carrier@203.0.113.5:5080"  # the 180's Contact
    assert request.headers.get_all("Route") == ["<sip:edge.carrier.example;lr>"]
    assert request.headers.get("RAck") == "42 7 INVITE"
    assert str(request.cseq) == "8 PRACK"
    assert request.to.tag == "callee" and request.from_.tag == "gwtag"
    # The 200 to the PRACK leaves the dialog early; the 2xx to the INVITE confirms it.
    dialog.update_from_response(make_response(request, 200))
    assert dialog.state is DialogState.EARLY
    ok = provisional(req, 200, require=None)
    dialog.update_from_response(ok)
    assert state_of(dialog) is DialogState.CONFIRMED
    assert str(dialog.create_ack(7).cseq) == "7 ACK"
    assert str(dialog.create_request("BYE").cseq) == "9 BYE"


# ---- UAS side -------------------------------------------------------------------------------


def test_send_marks_the_response_reliable() -> None:
    req = invite("Require: 100rel")
    sender = ReliableSender(req, first_rseq=100)
    ringing = sender.send(provisional(req, 180, require="timer"), now=0.0)
    assert ringing.headers.get("Require") == "timer, 100rel"
    assert ringing.headers.get("RSeq") == "100"
    assert sender.pending and sender.deadline == 0.5
    # Marking twice does not repeat the tag.
    req2 = invite()
    again = ReliableSender(req2, first_rseq=1).send(provisional(req2, require="100rel"), 0.0)
    assert again.headers.get_all("Require") == ["100rel"]


def test_retransmission_schedule_and_give_up() -> None:
    req = invite()
    sender = ReliableSender(req, t1=0.5, first_rseq=9)
    ringing = sender.send(provisional(req, require=None), now=10.0)
    fired: list[float] = []
    assert sender.on_timer(10.4) == []
    while (deadline := sender.deadline) is not None:
        outputs = sender.on_timer(deadline)
        if outputs == [GaveUp(9)]:
            fired.append(-deadline)
            break
        assert outputs == [Retransmit(ringing)]
        fired.append(deadline)
    # T1 doubling: 0.5, 1, 2, 4, 8, 16 s apart, giving up at 64*T1 = 32 s.
    assert fired == [10.5, 11.5, 13.5, 17.5, 25.5, 41.5, -42.0]
    assert not sender.pending and sender.deadline is None
    assert sender.on_timer(100.0) == []
    assert sender.receive_prack(prack(req, "9 7 INVITE")) == PrackOutcome(481)


def test_late_timer_sends_one_copy() -> None:
    req = invite()
    sender = ReliableSender(req, t1=0.5, first_rseq=1)
    sender.send(provisional(req), now=0.0)
    assert len(sender.on_timer(8.0)) == 1
    deadline = sender.deadline
    assert deadline is not None and deadline > 8.0


def test_prack_stops_retransmission_and_allows_the_next_reliable() -> None:
    req = invite()
    sender = ReliableSender(req, first_rseq=FIRST_RSEQ_LIMIT)
    ringing = sender.send(provisional(req, 180), now=0.0)
    with pytest.raises(PrackPending, match="must wait"):
        sender.send(provisional(req, 183), now=0.1)
    outcome = sender.receive_prack(prack(req, f"{FIRST_RSEQ_LIMIT} 7 INVITE"))
    assert outcome == PrackOutcome(200, ringing)
    assert not sender.pending and sender.deadline is None
    progress = sender.send(provisional(req, 183), now=1.0)
    assert progress.headers.get("RSeq") == str(FIRST_RSEQ_LIMIT + 1)
    # The same PRACK again (a new transaction): nothing unacknowledged matches it.
    assert (
        sender.receive_prack(prack(req, f"{FIRST_RSEQ_LIMIT} 7 INVITE", branch="p2")).status == 481
    )


@pytest.mark.parametrize(
    ("rack", "to_tag"),
    [
        ("6 7 INVITE", "callee"),  # wrong RSeq
        ("5 8 INVITE", "callee"),  # wrong CSeq number
        ("5 7 UPDATE", "callee"),  # wrong method
        ("5 7 INVITE", "other"),  # another early dialog
    ],
)
def test_prack_that_matches_nothing_gets_481(rack: str, to_tag: str) -> None:
    req = invite()
    sender = ReliableSender(req, first_rseq=5)
    sender.send(provisional(req), now=0.0)
    assert sender.receive_prack(prack(req, rack, to_tag=to_tag)) == PrackOutcome(481)
    assert sender.pending  # still waiting for the right one


def test_prack_without_anything_outstanding_gets_481() -> None:
    req = invite()
    assert ReliableSender(req).receive_prack(prack(req, "1 7 INVITE")) == PrackOutcome(481)


@pytest.mark.parametrize(("rack", "fault"), [(None, "without RAck"), ("5 7", "Bad RAck")])
def test_malformed_prack_gets_400(rack: str | None, fault: str) -> None:
    req = invite()
    sender = ReliableSender(req, first_rseq=5)
    sender.send(provisional(req), now=0.0)
    with pytest.raises(ReliableError, match=fault) as info:
        sender.receive_prack(prack(req, rack))
    assert info.value.status == 400
    with pytest.raises(ReliableError, match="Expected PRACK"):
        sender.receive_prack(req)


def test_sender_refuses_what_cannot_be_reliable() -> None:
    req = invite()
    sender = ReliableSender(req)
    with pytest.raises(ReliableError, match="A 100 is never sent reliably"):
        sender.send(provisional(req, 100), 0.0)
    with pytest.raises(ReliableError, match="not a provisional"):
        sender.send(provisional(req, 200), 0.0)
    with pytest.raises(ReliableError, match="needs a To tag"):
        sender.send(provisional(req, 180, to_tag=None), 0.0)
    with pytest.raises(ReliableError, match="does not answer this INVITE"):
        sender.send(provisional(invite(cseq=9), 180), 0.0)
    assert not sender.pending


def test_bad_sender_arguments() -> None:
    req = invite()
    with pytest.raises(ValueError, match="first RSeq"):
        ReliableSender(req, first_rseq=0)
    with pytest.raises(ValueError, match="first RSeq"):
        ReliableSender(req, first_rseq=2**31)
    with pytest.raises(ValueError, match="T1 must be positive"):
        ReliableSender(req, t1=0)
    with pytest.raises(ValueError, match="answer an INVITE"):
        ReliableSender(prack(req, "1 7 INVITE"))


def test_random_first_rseq_is_in_range() -> None:
    req = invite()
    values = set()
    for _ in range(20):
        sent = ReliableSender(req).send(provisional(req), 0.0)
        values.add(int(sent.headers.get("RSeq") or "0"))
    assert all(1 <= value <= FIRST_RSEQ_LIMIT for value in values)
    assert len(values) > 1


def test_final_response_rules() -> None:
    req = invite()
    sender = ReliableSender(req, first_rseq=3)
    sender.send(provisional(req, 183, body=SDP), now=0.0)
    # RFC 3262 3: no 2xx while a provisional with SDP is unacknowledged; failures may go.
    assert not sender.may_send_final(200)
    assert sender.may_send_final(486)
    sender.final_sent()
    assert sender.deadline is None and sender.on_timer(50.0) == []
    assert sender.receive_prack(prack(req, "3 7 INVITE")).status == 200
    with pytest.raises(ReliableError, match="already has its final response"):
        sender.send(provisional(req, 180), now=1.0)


def test_2xx_may_follow_an_unacknowledged_provisional_without_sdp() -> None:
    req = invite()
    sender = ReliableSender(req, first_rseq=3)
    sender.send(provisional(req, 180), now=0.0)
    assert sender.may_send_final(200)


def test_through_the_invite_server_transaction_and_the_uas_dialog() -> None:
    req = invite("Require: 100rel")
    timers = Timers(t1=0.5)
    txn = InviteServerTransaction(req, reliable=False, timers=timers, now=0.0)
    dialog = Dialog.as_uas(req, "callee", "<sip:carrier@203.0.113.5:5080>")
    sender = ReliableSender(req, t1=timers.t1, first_rseq=77)
    ringing = sender.send(provisional(req), now=0.0)
    assert txn.send(ringing, 0.0) == [Transmit(ringing)]
    (again,) = sender.on_timer(0.5)
    assert isinstance(again, Retransmit)
    assert txn.send(again.response, 0.5) == [Transmit(ringing)]
    # An INVITE retransmission is answered with the reliable 180 too.
    assert txn.receive(req, 0.6) == [Transmit(ringing)]
    request = prack(req, "77 7 INVITE")
    dialog.receive_request(request)  # the PRACK belongs to the early dialog
    assert dialog.state is DialogState.EARLY
    assert sender.receive_prack(request).status == 200
