"""Tests for gateway.sip.transaction: RFC 3261 17 / RFC 6026 state machines and layer.

Every machine is driven directly: messages are fed in, and time is simulated
by stepping `now` to each reported deadline (an autojump clock).
"""

from __future__ import annotations

import pytest

from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.transaction import (
    Deliver,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Output,
    OverloadError,
    State,
    Terminated,
    TimedOut,
    Timers,
    Transaction,
    TransactionError,
    TransactionLayer,
    Transmit,
    build_cancel,
    create_client_transaction,
    create_server_transaction,
)

TIMERS = Timers()


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKabc1",
    cseq: int = 1,
    sent_by: str = "198.51.100.7:5060",
    uri: str = "sip:bob@example.com",
    to_tag: str | None = None,
    extra: str = "",
) -> Request:
    via_branch = "" if branch is None else f";branch={branch}"
    to = "<sip:bob@example.com>" + ("" if to_tag is None else f";tag={to_tag}")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by}{via_branch}\r\n"
        "Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKlower\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.com>;tag=from1\r\n'
        f"To: {to}\r\n"
        "Call-ID: call-1@example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@198.51.100.7>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse(text.encode())
    assert isinstance(message, Request)
    return message


def ack_for(invite: Request, *, to_tag: str = "srv1", branch: str | None = None) -> Request:
    return request(
        "ACK",
        branch=branch if branch is not None else invite.top_via.branch,
        cseq=invite.cseq.seq,
        to_tag=to_tag,
    )


def response(req: Request, status: int, *, to_tag: str | None = "srv1") -> Response:
    return make_response(req, status, to_tag=None if status == 100 else to_tag)


def state_of(txn: Transaction) -> State:
    """Read the state through a call so mypy does not keep an earlier narrowing."""
    return txn.state


def run_timers(txn: Transaction, until: float) -> list[tuple[float, Output]]:
    """Autojump: step time to each deadline up to `until`, collecting outputs."""
    fired: list[tuple[float, Output]] = []
    while (deadline := txn.deadline) is not None and deadline <= until:
        fired.extend((deadline, out) for out in txn.on_timer(deadline))
    return fired


def transmit_times(fired: list[tuple[float, Output]]) -> list[float]:
    return [when for when, out in fired if isinstance(out, Transmit)]


# -- Timers ---------------------------------------------------------------------


def test_timer_defaults_follow_rfc3261_table_4() -> None:
    t = Timers()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_l == t.timer_m == 32.0
    assert t.timer_d(False) == 32.0 and t.timer_d(True) == 0.0
    assert t.timer_i(False) == 5.0 and t.timer_i(True) == 0.0
    assert t.timer_k(False) == 5.0 and t.timer_k(True) == 0.0
    assert t.timer_j(False) == 32.0 and t.timer_j(True) == 0.0


def test_timers_scale_with_t1() -> None:
    t = Timers(t1=0.01, t2=0.08, t4=0.1, d_unreliable=0.5)
    assert t.timer_b == pytest.approx(0.64)
    assert t.timer_d(False) == 0.5


@pytest.mark.parametrize("kwargs", [{"t1": 0.0}, {"t2": -1.0}, {"t1": 5.0, "t2": 4.0}])
def test_timers_reject_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timers(**kwargs)


# -- INVITE client ----------------------------------------------------------------


def test_invite_client_timer_a_doubles_until_timer_b_times_out() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    assert isinstance(txn, InviteClientTransaction)
    assert state_of(txn) is State.CALLING
    assert txn.start(0.0) == [Transmit(invite)]
    fired = run_timers(txn, 1000.0)
    # A: 0.5, 1, 2, 4, 8, 16 (no T2 cap for INVITE), then B at 64*T1 = 32.
    assert transmit_times(fired) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(out == Transmit(invite) for _, out in fired[:-2])
    assert fired[-2:] == [(32.0, TimedOut("B")), (32.0, Terminated())]
    assert txn.terminated and txn.deadline is None
    assert txn.on_timer(5000.0) == []
    assert txn.receive(response(invite, 200), 5000.0) == []


def test_invite_client_reliable_sends_once_and_times_out() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=True, timers=TIMERS, now=0.0)
    txn.start(0.0)
    fired = run_timers(txn, 1000.0)
    assert fired == [(32.0, TimedOut("B")), (32.0, Terminated())]


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    assert run_timers(txn, 0.6) == [(0.5, Transmit(invite))]
    ringing = response(invite, 180)
    assert txn.receive(ringing, 0.7) == [Deliver(ringing)]
    assert state_of(txn) is State.PROCEEDING
    assert txn.deadline is None  # the TU (Timer C / no-answer) decides from here


def test_invite_client_builds_ack_for_non_2xx() -> None:
    invite = request(extra="Route: <sip:p1.example.net;lr>\r\nRoute: <sip:p2.example.net;lr>\r\n")
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    busy = response(invite, 486, to_tag="callee9")
    outputs = txn.receive(busy, 0.3)
    assert outputs[0] == Deliver(busy)
    assert isinstance(outputs[1], Transmit)
    ack = outputs[1].message
    assert isinstance(ack, Request)
    assert len(outputs) == 2
    assert state_of(txn) is State.COMPLETED
    # RFC 3261 17.1.1.3
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.headers.get_list("Via") == invite.headers.get_list("Via")[:1]
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.call_id == invite.call_id
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to.tag == "callee9"
    assert ack.cseq.seq == invite.cseq.seq and ack.cseq.method == "ACK"
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    # ACK survives a round trip through the wire format.
    assert parse(ack.to_bytes()).cseq.method == "ACK"


def test_invite_client_completed_reacks_retransmitted_final_then_timer_d() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    busy = response(invite, 486)
    first = txn.receive(busy, 1.0)
    ack = first[1]
    assert txn.receive(busy, 2.0) == [ack]  # no Deliver: absorbed, ACK re-sent
    assert txn.receive(response(invite, 180), 2.5) == []
    assert txn.deadline == 33.0  # D = 32 s from Completed
    assert run_timers(txn, 100.0) == [(33.0, Terminated())]


def test_invite_client_reliable_terminates_right_after_ack() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=True, timers=TIMERS, now=0.0)
    txn.start(0.0)
    outputs = txn.receive(response(invite, 603), 1.0)
    assert [type(o) for o in outputs] == [Deliver, Transmit, Terminated]
    assert txn.terminated


@pytest.mark.parametrize("status", [300, 404, 487, 500, 603])
def test_invite_client_acks_every_3xx_to_6xx(status: int) -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    txn.receive(response(invite, 180), 0.1)
    outputs = txn.receive(response(invite, status), 0.2)
    sent = [o.message for o in outputs if isinstance(o, Transmit)]
    assert len(sent) == 1 and isinstance(sent[0], Request) and sent[0].method == "ACK"


def test_invite_client_2xx_goes_to_accepted_and_passes_every_2xx_up() -> None:
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    ok = response(invite, 200)
    assert txn.receive(ok, 0.2) == [Deliver(ok)]  # the TU sends the ACK, not us
    assert state_of(txn) is State.ACCEPTED
    forked = response(invite, 200, to_tag="other-branch")
    assert txn.receive(ok, 1.0) == [Deliver(ok)]
    assert txn.receive(forked, 1.5) == [Deliver(forked)]
    assert txn.receive(response(invite, 486), 1.6) == []
    assert run_timers(txn, 100.0) == [(32.2, Terminated())]  # Timer M = 64*T1


def test_client_transaction_refuses_misuse() -> None:
    with pytest.raises(TransactionError, match="ACK"):
        create_client_transaction(request("ACK"), reliable=False, timers=TIMERS, now=0.0)
    with pytest.raises(TransactionError, match="magic cookie"):
        create_client_transaction(
            request(branch="oldstyle1"), reliable=False, timers=TIMERS, now=0.0
        )
    with pytest.raises(TransactionError, match="no branch"):
        create_client_transaction(request(branch=None), reliable=False, timers=TIMERS, now=0.0)
    invite = request()
    txn = create_client_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    with pytest.raises(TransactionError, match="before start"):
        txn.receive(response(invite, 180), 0.0)
    txn.start(0.0)
    with pytest.raises(TransactionError, match="already started"):
        txn.start(0.1)
    other = request(branch="z9hG4bKother")
    with pytest.raises(TransactionError, match="does not belong"):
        txn.receive(response(other, 180), 0.2)


# -- non-INVITE client ------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    bye = request("BYE", to_tag="t1")
    txn = create_client_transaction(bye, reliable=False, timers=TIMERS, now=0.0)
    assert isinstance(txn, NonInviteClientTransaction)
    assert txn.start(0.0) == [Transmit(bye)]
    fired = run_timers(txn, 1000.0)
    times = transmit_times(fired)
    intervals = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert intervals[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(i == 4.0 for i in intervals[3:])
    assert times[-1] < 32.0
    assert fired[-2:] == [(32.0, TimedOut("F")), (32.0, Terminated())]
    assert txn.on_timer(2000.0) == []


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    options = request("OPTIONS")
    txn = create_client_transaction(options, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    assert transmit_times(run_timers(txn, 0.6)) == [0.5]
    trying = response(options, 100)
    assert txn.receive(trying, 0.6) == [Deliver(trying)]
    assert state_of(txn) is State.PROCEEDING
    times = transmit_times(run_timers(txn, 20.0))
    # E armed at 0.5 for 1 s still fires at 1.5, then it is T2 in Proceeding.
    assert times == [1.5, 5.5, 9.5, 13.5, 17.5]


def test_non_invite_client_completed_absorbs_and_waits_timer_k() -> None:
    options = request("OPTIONS")
    txn = create_client_transaction(options, reliable=False, timers=TIMERS, now=0.0)
    txn.start(0.0)
    ok = response(options, 200)
    assert txn.receive(ok, 0.2) == [Deliver(ok)]
    assert state_of(txn) is State.COMPLETED
    assert txn.receive(ok, 0.3) == []
    assert run_timers(txn, 100.0) == [(5.2, Terminated())]  # K = T4


def test_non_invite_client_reliable_has_no_e_and_no_k() -> None:
    options = request("OPTIONS")
    txn = create_client_transaction(options, reliable=True, timers=TIMERS, now=0.0)
    txn.start(0.0)
    assert txn.deadline == 32.0  # F only
    ok = response(options, 404)
    assert txn.receive(ok, 1.0) == [Deliver(ok), Terminated()]


# -- INVITE server ----------------------------------------------------------------


def test_invite_server_sends_100_trying_after_200_ms() -> None:
    invite = request(extra="Timestamp: 54.3\r\n")
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=10.0)
    assert isinstance(txn, InviteServerTransaction)
    assert state_of(txn) is State.PROCEEDING
    fired = run_timers(txn, 11.0)
    assert len(fired) == 1
    when, out = fired[0]
    assert when == pytest.approx(10.2)
    assert isinstance(out, Transmit) and isinstance(out.message, Response)
    trying = out.message
    assert trying.status == 100
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54.3"
    assert trying.top_via.branch == invite.top_via.branch
    # A retransmitted INVITE gets the 100 again.
    assert txn.receive(invite, 10.5) == [Transmit(trying)]


def test_invite_server_skips_100_when_tu_answers_in_time() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    assert txn.receive(invite, 0.05) == []  # nothing sent yet
    ringing = response(invite, 180)
    assert txn.send(ringing, 0.1) == [Transmit(ringing)]
    assert txn.deadline is None
    assert run_timers(txn, 10.0) == []
    assert txn.receive(invite, 0.5) == [Transmit(ringing)]


def test_invite_server_non_2xx_timer_g_and_h() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    busy = response(invite, 486)
    assert txn.send(busy, 0.0) == [Transmit(busy)]
    assert state_of(txn) is State.COMPLETED
    assert txn.receive(invite, 0.1) == [Transmit(busy)]
    fired = run_timers(txn, 100.0)
    times = transmit_times(fired)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # G doubles, capped at T2
    assert all(out == Transmit(busy) for _, out in fired[:-2])
    assert fired[-2:] == [(32.0, TimedOut("H")), (32.0, Terminated())]


def test_invite_server_ack_confirms_and_timer_i_terminates() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    not_found = response(invite, 404)
    txn.send(not_found, 0.0)
    assert run_timers(txn, 0.6) == [(0.5, Transmit(not_found))]
    ack = ack_for(invite)
    assert txn.receive(ack, 0.7) == []
    assert state_of(txn) is State.CONFIRMED
    assert txn.receive(ack, 0.8) == []  # ACK retransmissions absorbed
    assert txn.receive(invite, 0.9) == []
    assert run_timers(txn, 100.0) == [(5.7, Terminated())]  # I = T4, no more G


def test_invite_server_reliable_no_g_and_ack_terminates() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=True, timers=TIMERS, now=0.0)
    txn.send(response(invite, 480), 0.0)
    assert txn.deadline == 32.0  # H only
    assert txn.receive(ack_for(invite), 1.0) == [Terminated()]


def test_invite_server_2xx_accepted_state() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    ok = response(invite, 200)
    assert txn.send(ok, 0.1) == [Transmit(ok)]
    assert state_of(txn) is State.ACCEPTED
    assert txn.receive(invite, 0.2) == []  # absorbed, never to the TU
    assert txn.send(ok, 0.6) == [Transmit(ok)]  # TU-driven 2xx retransmission
    assert txn.send(response(invite, 486), 0.7) == []
    ack = ack_for(invite)
    assert txn.receive(ack, 0.8) == [Deliver(ack)]
    assert run_timers(txn, 100.0) == [(32.1, Terminated())]  # Timer L


def test_invite_server_discards_answer_racing_a_final_response() -> None:
    # A CANCEL made the TU send 487 while the callee's 200 was on its way.
    invite = request()
    txn = create_server_transaction(invite, reliable=True, timers=TIMERS, now=0.0)
    terminated = response(invite, 487)
    assert txn.send(terminated, 0.0) == [Transmit(terminated)]
    assert txn.send(response(invite, 200), 0.1) == []
    assert txn.receive(ack_for(invite), 0.2) == [Terminated()]
    assert txn.send(response(invite, 200), 0.3) == []
    assert txn.receive(invite, 0.4) == []


def test_server_transaction_rejects_bad_status_and_foreign_requests() -> None:
    invite = request()
    txn = create_server_transaction(invite, reliable=False, timers=TIMERS, now=0.0)
    bogus = response(invite, 200)
    bogus.status = 99
    with pytest.raises(TransactionError, match="status 99"):
        txn.send(bogus, 0.0)
    with pytest.raises(TransactionError, match="does not belong"):
        txn.receive(request(branch="z9hG4bKzzz"), 0.0)
    with pytest.raises(TransactionError, match="ACK"):
        create_server_transaction(ack_for(invite), reliable=False, timers=TIMERS, now=0.0)


# -- non-INVITE server ------------------------------------------------------------


def test_non_invite_server_states_and_timer_j() -> None:
    register = request("REGISTER")
    txn = create_server_transaction(register, reliable=False, timers=TIMERS, now=0.0)
    assert isinstance(txn, NonInviteServerTransaction)
    assert state_of(txn) is State.TRYING
    assert txn.deadline is None  # no 100 Trying for non-INVITE
    assert txn.receive(register, 0.1) == []  # Trying discards retransmissions
    trying = response(register, 100)
    assert txn.send(trying, 0.2) == [Transmit(trying)]
    assert state_of(txn) is State.PROCEEDING
    assert txn.receive(register, 0.3) == [Transmit(trying)]
    ok = response(register, 200)
    assert txn.send(ok, 0.4) == [Transmit(ok)]
    assert state_of(txn) is State.COMPLETED
    assert txn.receive(register, 0.5) == [Transmit(ok)]
    assert txn.send(response(register, 500), 0.6) == []  # later finals discarded
    assert run_timers(txn, 100.0) == [(32.4, Terminated())]  # J = 64*T1


def test_non_invite_server_reliable_terminates_on_final() -> None:
    bye = request("BYE", to_tag="x")
    txn = create_server_transaction(bye, reliable=True, timers=TIMERS, now=0.0)
    ok = response(bye, 200)
    assert txn.send(ok, 0.0) == [Transmit(ok), Terminated()]
    assert txn.receive(bye, 0.1) == []


# -- CANCEL helper ----------------------------------------------------------------


def test_build_cancel_follows_rfc3261_9_1() -> None:
    invite = request(extra="Route: <sip:p1.example.net;lr>\r\n")
    cancel = build_cancel(invite)
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.headers.get_list("Via") == invite.headers.get_list("Via")[:1]
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.call_id == invite.call_id
    assert (cancel.cseq.seq, cancel.cseq.method) == (invite.cseq.seq, "CANCEL")
    assert cancel.headers.get_all("Route") == ["<sip:p1.example.net;lr>"]
    with pytest.raises(TransactionError, match="Only INVITE"):
        build_cancel(request("BYE"))


# -- the layer --------------------------------------------------------------------


def test_layer_new_request_retransmission_and_ack_for_non_2xx() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, outputs = layer.receive_request(invite, 0.0, False)
    assert isinstance(txn, InviteServerTransaction)
    assert outputs == [Deliver(invite)]
    assert len(layer) == 1
    assert layer.receive_request(invite, 0.1, False) == (None, [])
    busy = response(invite, 486)
    txn.send(busy, 0.15)
    assert layer.receive_request(invite, 0.2, False) == (None, [Transmit(busy)])
    assert layer.receive_request(ack_for(invite), 0.3, False) == (None, [])
    assert state_of(txn) is State.CONFIRMED


def test_layer_delivers_ack_for_2xx_which_has_its_own_branch() -> None:
    layer = TransactionLayer()
    invite = request()
    txn, _ = layer.receive_request(invite, 0.0, False)
    assert txn is not None
    txn.send(response(invite, 200), 0.1)
    ack = ack_for(invite, branch="z9hG4bKack2xx")
    assert layer.receive_request(ack, 0.2, False) == (None, [Deliver(ack)])
    assert len(layer) == 1  # the ACK made no transaction


def test_layer_matches_on_sent_by_and_method() -> None:
    layer = TransactionLayer()
    first, _ = layer.receive_request(request(), 0.0, False)
    other_host, _ = layer.receive_request(request(sent_by="203.0.113.5:5060"), 0.0, False)
    default_port, _ = layer.receive_request(request(sent_by="198.51.100.7"), 0.0, False)
    assert first is not None and other_host is not None
    assert default_port is None  # "host" and "host:5060" are the same sent-by
    options, _ = layer.receive_request(request("OPTIONS"), 0.0, False)
    assert options is not None and options is not first
    assert len(layer) == 3


def test_layer_cancel_gets_its_own_transaction_and_finds_the_invite() -> None:
    layer = TransactionLayer()
    invite = request()
    invite_txn, _ = layer.receive_request(invite, 0.0, False)
    cancel = build_cancel(invite)
    cancel_txn, outputs = layer.receive_request(cancel, 0.5, False)
    assert isinstance(cancel_txn, NonInviteServerTransaction)
    assert outputs == [Deliver(cancel)]
    assert cancel_txn is not invite_txn
    assert layer.find_invite_for_cancel(cancel) is invite_txn
    stray = build_cancel(request(branch="z9hG4bKnoinvite"))
    assert layer.find_invite_for_cancel(stray) is None
    with pytest.raises(TransactionError, match="Expected CANCEL"):
        layer.find_invite_for_cancel(invite)


def test_layer_rfc2543_requests_without_magic_cookie() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    txn, _ = layer.receive_request(invite, 0.0, False)
    assert txn is not None
    assert layer.receive_request(request(branch=None), 0.1, False) == (None, [])
    busy = response(invite, 486)
    txn.send(busy, 0.2)
    ack = request("ACK", branch=None, to_tag="srv1")
    assert layer.receive_request(ack, 0.3, False) == (None, [])
    assert state_of(txn) is State.CONFIRMED
    cancel = build_cancel(request(branch=None))
    assert layer.find_invite_for_cancel(cancel) is txn
    newer, _ = layer.receive_request(request(branch=None, cseq=2), 0.4, False)
    assert newer is not None and newer is not txn


def test_layer_response_matching_and_stray_responses() -> None:
    layer = TransactionLayer()
    invite = request(branch="z9hG4bKout1")
    txn, sent = layer.start_client(invite, reliable=False, now=0.0)
    assert sent == [Transmit(invite)]
    cancel = build_cancel(invite)
    cancel_txn, _ = layer.start_client(cancel, reliable=False, now=0.1)
    cancel_ok = response(cancel, 200)
    assert layer.receive_response(cancel_ok, 0.2) == [Deliver(cancel_ok)]
    assert state_of(cancel_txn) is State.COMPLETED and txn.state is State.CALLING
    assert layer.find_client(invite) is txn
    ringing = response(invite, 180)
    assert layer.receive_response(ringing, 0.3) == [Deliver(ringing)]
    # Strays: a 2xx to INVITE goes up for the dialog to re-ACK; others are dropped.
    stray_invite = request(branch="z9hG4bKgone")
    stray_ok = response(stray_invite, 200)
    assert layer.receive_response(stray_ok, 0.4) == [Deliver(stray_ok)]
    assert layer.receive_response(response(stray_invite, 180), 0.4) == []
    assert layer.receive_response(response(stray_invite, 486), 0.4) == []
    assert layer.receive_response(response(request("BYE", branch="z9hG4bKb"), 200), 0.4) == []
    no_branch = response(request(branch=None), 200)
    assert layer.receive_response(no_branch, 0.4) == []
    with pytest.raises(TransactionError, match="already in use"):
        layer.start_client(invite, reliable=False, now=0.5)


def test_layer_delivers_2xx_retransmissions_after_timer_m() -> None:
    layer = TransactionLayer()
    invite = request(branch="z9hG4bKout2")
    txn, _ = layer.start_client(invite, reliable=True, now=0.0)
    ok = response(invite, 200)
    assert layer.receive_response(ok, 1.0) == [Deliver(ok)]
    assert layer.receive_response(ok, 2.0) == [Deliver(ok)]  # in Accepted
    assert layer.on_timer(33.0) == [(txn, Terminated())]
    assert len(layer) == 0
    assert layer.receive_response(ok, 40.0) == [Deliver(ok)]  # stray, still up


def test_layer_heap_drives_all_timers_and_collects_garbage() -> None:
    layer = TransactionLayer()
    client, _ = layer.start_client(request("OPTIONS", branch="z9hG4bKc1"), reliable=False, now=0.0)
    server, _ = layer.receive_request(request(), 0.0, False)
    assert server is not None
    assert layer.next_deadline() == pytest.approx(0.2)  # the 100 Trying
    # The TU answers directly on the transaction: the layer's heap follows.
    server.send(response(server.request, 486), 0.1)
    assert layer.next_deadline() == 0.5
    now = 0.0
    seen: list[tuple[Transaction, Output]] = []
    while (deadline := layer.next_deadline()) is not None:
        assert deadline >= now
        now = deadline
        seen.extend(layer.on_timer(now))
    assert now == pytest.approx(32.1)  # H of the server, after F of the client at 32
    assert (client, TimedOut("F")) in seen
    assert (server, TimedOut("H")) in seen
    assert [o for t, o in seen if isinstance(o, Terminated)] == [Terminated(), Terminated()]
    assert len(layer) == 0
    assert layer.on_timer(1000.0) == []


def test_layer_collects_transactions_terminated_outside_on_timer() -> None:
    layer = TransactionLayer()
    bye = request("BYE", to_tag="x")
    txn, _ = layer.receive_request(bye, 0.0, True)
    assert txn is not None and len(layer) == 1
    txn.send(response(bye, 200), 0.1)  # J = 0 on reliable transports
    assert len(layer) == 0
    assert layer.next_deadline() is None
    again, outputs = layer.receive_request(bye, 0.2, True)
    assert again is not None and outputs == [Deliver(bye)]


def test_layer_heap_stays_small_under_churn() -> None:
    layer = TransactionLayer(Timers(t1=0.01, t2=0.04, t4=0.05, d_unreliable=0.1))
    now = 0.0
    for i in range(500):
        txn, _ = layer.receive_request(request("OPTIONS", branch=f"z9hG4bKn{i}"), now, False)
        assert txn is not None
        txn.send(response(txn.request, 200), now)
        now += 0.001
        layer.on_timer(now)
    while (deadline := layer.next_deadline()) is not None:
        layer.on_timer(deadline)
    assert len(layer) == 0
    assert len(layer._heap) <= 64 + 2 * len(layer._scheduled)


def test_layer_compacts_stale_heap_entries() -> None:
    layer = TransactionLayer()
    for i in range(500):
        txn, _ = layer.receive_request(request(branch=f"z9hG4bKr{i}"), 0.0, False)
        assert txn is not None and txn.is_invite
        txn.send(response(txn.request, 180), 0.0)  # cancels the 100 Trying timer
    assert len(layer) == 500
    assert len(layer._heap) <= 65  # the 500 dead Trying entries were dropped
    assert layer.next_deadline() is None
    assert layer.on_timer(10.0) == []


def test_layer_overload_bound() -> None:
    layer = TransactionLayer(max_transactions=2)
    first, _ = layer.receive_request(request(branch="z9hG4bK1"), 0.0, False)
    second, _ = layer.receive_request(request("OPTIONS", branch="z9hG4bK2"), 0.0, False)
    assert first is not None and second is not None
    with pytest.raises(OverloadError, match="2 live transactions") as info:
        layer.receive_request(request(branch="z9hG4bK3"), 0.0, False)
    assert info.value.limit == 2
    # Retransmissions and ACKs still work at the limit.
    assert layer.receive_request(request(branch="z9hG4bK1"), 0.1, False) == (None, [])
    ack = ack_for(request(branch="z9hG4bK1"), branch="z9hG4bKack")
    assert layer.receive_request(ack, 0.1, False) == (None, [Deliver(ack)])
    # Once one ends, there is room again.
    second.send(response(second.request, 200), 0.2)
    layer.on_timer(100.0)
    third, _ = layer.receive_request(request(branch="z9hG4bK3"), 100.0, False)
    assert third is not None


def test_layer_default_bound_and_validation() -> None:
    assert TransactionLayer().max_transactions == 100_000
    with pytest.raises(ValueError, match="max_transactions"):
        TransactionLayer(max_transactions=0)


def test_layer_hostile_via_is_a_clear_error_or_dropped() -> None:
    layer = TransactionLayer()
    bad = request("OPTIONS")
    bad.headers.set("Via", "garbage")
    with pytest.raises(TransactionError, match="Cannot match request: Bad Via"):
        layer.receive_request(bad, 0.0, False)
    good = request("OPTIONS", branch="z9hG4bKq")
    layer.start_client(good, reliable=False, now=0.0)
    reply = response(good, 200)
    reply.headers.set("Via", "SIP/2.0/UDP ;;;")
    assert layer.receive_response(reply, 0.1) == []
    assert layer.find_client(reply) is None
    assert layer.find_client(good) is not None
    assert len(layer) == 1
