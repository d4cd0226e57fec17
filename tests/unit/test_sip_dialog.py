"""Tests for gateway.sip.dialog: RFC 3261 section 12 dialogs."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog, DialogError, DialogState, Role
from gateway.sip.message import Request, Response, make_response, parse


def invite(
    *,
    record_route: tuple[str, ...] = (),
    cseq: int = 10,
    from_tag: str | None = "caller1",
    contact: str | None = "<sip:alice@198.51.100.7:5062;transport=udp>",
) -> Request:
    lines = [
        "INVITE sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKinv1",
        "Max-Forwards: 70",
    ]
    from_value = '"Alice" <sip:alice@example.com>'
    if from_tag is not None:
        from_value += f";tag={from_tag}"
    lines.append(f"From: {from_value}")
    lines.append("To: <sip:bob@example.com>")
    lines.append("Call-ID: dlg-1@example.com")
    lines.append(f"CSeq: {cseq} INVITE")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += [f"Record-Route: {rr}" for rr in record_route]
    lines += ["Content-Length: 0", "", ""]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def answer(
    req: Request,
    status: int,
    *,
    to_tag: str | None = "callee1",
    contact: str | None = "<sip:bob@203.0.113.20:5070>",
    record_route: tuple[str, ...] = (),
) -> Response:
    resp = make_response(req, status, to_tag=to_tag)
    if contact is not None:
        resp.headers.add("Contact", contact)
    for rr in record_route:
        resp.headers.add("Record-Route", rr)
    return resp


def state_of(dialog: Dialog) -> DialogState:
    """Read the state through a call so mypy does not keep an earlier narrowing."""
    return dialog.state


RR = ("<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>")


def uac_dialog() -> tuple[Request, Dialog]:
    inv = invite(record_route=RR)
    dialog = Dialog.as_uac(inv, answer(inv, 200, record_route=RR))
    return inv, dialog


def incoming(
    dialog: Dialog,
    method: str,
    cseq: int,
    *,
    contact: str | None = None,
    to_tag: str | None = None,
) -> Request:
    """A request from the peer of a UAS-side dialog."""
    lines = [
        f"{method} sip:gw@198.51.100.1 SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKin" + str(cseq) + method,
        "Max-Forwards: 70",
        f"From: <{dialog.remote_uri}>;tag={dialog.remote_tag}",
        f"To: <{dialog.local_uri}>;tag={to_tag or dialog.local_tag}",
        f"Call-ID: {dialog.call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += ["Content-Length: 0", "", ""]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def with_via(req: Request) -> Request:
    req.headers.prepend("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKout")
    return req


# -- creation -------------------------------------------------------------------


def test_uac_dialog_from_2xx() -> None:
    _, dialog = uac_dialog()
    assert dialog.role is Role.UAC
    assert state_of(dialog) is DialogState.CONFIRMED
    assert dialog.id == ("dlg-1@example.com", "caller1", "callee1")
    assert dialog.local_seq == 10 and dialog.remote_seq is None
    assert dialog.local_uri == "sip:alice@example.com"
    assert dialog.remote_uri == "sip:bob@example.com"
    assert dialog.remote_target == "sip:bob@203.0.113.20:5070"
    assert dialog.route_set == list(reversed(RR))  # 12.1.2: reversed for the UAC
    assert dialog.local_contact == "<sip:alice@198.51.100.7:5062;transport=udp>"


def test_uac_early_dialog_confirmed_by_2xx_recomputes_route_set() -> None:
    inv = invite()
    ringing = answer(inv, 180, record_route=("<sip:early.example.net;lr>",), contact=None)
    dialog = Dialog.as_uac(inv, ringing)
    assert state_of(dialog) is DialogState.EARLY
    assert dialog.remote_target == "sip:bob@example.com"  # no Contact yet: the To URI
    assert dialog.route_set == ["<sip:early.example.net;lr>"]
    progress = answer(inv, 183, contact="<sip:bob@203.0.113.21>")
    dialog.update_from_response(progress)
    assert dialog.remote_target == "sip:bob@203.0.113.21"
    dialog.update_from_response(answer(inv, 200, record_route=RR))
    assert state_of(dialog) is DialogState.CONFIRMED
    assert dialog.route_set == list(reversed(RR))
    assert dialog.remote_target == "sip:bob@203.0.113.20:5070"


def test_non_2xx_final_ends_early_dialog_whatever_its_to_tag() -> None:
    inv = invite()
    dialog = Dialog.as_uac(inv, answer(inv, 180))
    dialog.update_from_response(answer(inv, 486, to_tag="someone-else"))
    assert state_of(dialog) is DialogState.TERMINATED


@pytest.mark.parametrize(
    ("status", "to_tag", "contact", "message"),
    [
        (100, None, "<sip:b@h>", "does not create a dialog"),
        (180, None, "<sip:b@h>", "without To tag"),
        (486, "t", "<sip:b@h>", "does not create a dialog"),
        (200, "t", None, "has no Contact"),
    ],
)
def test_uac_creation_errors(
    status: int, to_tag: str | None, contact: str | None, message: str
) -> None:
    inv = invite()
    with pytest.raises(DialogError, match=message):
        Dialog.as_uac(inv, answer(inv, status, to_tag=to_tag, contact=contact))


def test_uac_creation_needs_from_tag_and_matching_response() -> None:
    inv = invite(from_tag=None)
    with pytest.raises(DialogError, match="no From tag"):
        Dialog.as_uac(inv, answer(inv, 200))
    inv = invite()
    other = invite(cseq=11)
    with pytest.raises(DialogError, match="does not answer"):
        Dialog.as_uac(inv, answer(other, 200))


def test_uac_accepts_2xx_without_to_tag_rfc2543() -> None:
    inv = invite()
    dialog = Dialog.as_uac(inv, answer(inv, 200, to_tag=None))
    assert dialog.remote_tag is None
    assert dialog.matches(answer(inv, 200, to_tag=None))


def test_uas_dialog() -> None:
    inv = invite(record_route=RR)
    dialog = Dialog.as_uas(inv, "gw-tag", "sip:gw@198.51.100.1:5060")
    assert dialog.role is Role.UAS
    assert state_of(dialog) is DialogState.EARLY
    assert dialog.id == ("dlg-1@example.com", "gw-tag", "caller1")
    assert dialog.route_set == list(RR)  # 12.1.1: in order for the UAS
    assert dialog.remote_target == "sip:alice@198.51.100.7:5062;transport=udp"
    assert dialog.remote_seq == 10 and dialog.local_seq is None
    assert dialog.local_uri == "sip:bob@example.com"
    assert dialog.remote_uri == "sip:alice@example.com"
    dialog.confirm()
    assert state_of(dialog) is DialogState.CONFIRMED


def test_creation_refuses_wrong_messages() -> None:
    inv = invite()
    options = parse(inv.to_bytes().replace(b"INVITE", b"OPTIONS"))
    assert isinstance(options, Request)
    with pytest.raises(DialogError, match="Only an INVITE"):
        Dialog.as_uac(options, answer(options, 200))
    with pytest.raises(DialogError, match="does not create a dialog"):
        Dialog.as_uas(options, "t", "sip:gw@h")
    no_contact = invite(contact=None)
    with pytest.raises(DialogError, match="INVITE has no Contact"):
        Dialog.as_uac(no_contact, answer(no_contact, 200))
    in_dialog = parse(inv.to_bytes().replace(b"To: <sip:bob@example.com>", b"To: <sip:b@x>;tag=z"))
    assert isinstance(in_dialog, Request)
    with pytest.raises(DialogError, match="already has a To tag") as info:
        Dialog.as_uas(in_dialog, "t", "sip:gw@h")
    assert info.value.status == 481


def test_terminated_dialog_refuses_confirm_and_ack() -> None:
    _, dialog = uac_dialog()
    with pytest.raises(DialogError, match="content type"):
        dialog.create_ack(10, b"v=0\r\n")
    other_call = answer(invite(), 200)
    other_call.headers.set("Call-ID", "another-call@example.com")
    assert not dialog.matches(other_call)
    dialog.terminate()
    with pytest.raises(DialogError, match="terminated"):
        dialog.confirm()
    with pytest.raises(DialogError, match="terminated"):
        dialog.create_ack(10)


def test_uas_creation_errors() -> None:
    with pytest.raises(DialogError, match="no Contact") as info:
        Dialog.as_uas(invite(contact=None), "t", "sip:gw@h")
    assert info.value.status == 400
    with pytest.raises(DialogError, match="Bad Contact"):
        Dialog.as_uas(invite(contact="<sip:@@>"), "t", "sip:gw@h")
    with pytest.raises(DialogError, match="must not be empty"):
        Dialog.as_uas(invite(), "", "sip:gw@h")


# -- requests within the dialog ---------------------------------------------------


def test_uac_create_request_uses_route_set_target_and_next_cseq() -> None:
    _, dialog = uac_dialog()
    bye = dialog.create_request("BYE")
    assert bye.method == "BYE"
    assert bye.uri == "sip:bob@203.0.113.20:5070"
    assert bye.headers.get_all("Route") == list(reversed(RR))
    assert bye.headers.get("Max-Forwards") == "70"
    assert bye.cseq.seq == 11 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "caller1" and str(bye.from_.uri) == "sip:alice@example.com"
    assert bye.to.tag == "callee1" and str(bye.to.uri) == "sip:bob@example.com"
    assert bye.call_id == "dlg-1@example.com"
    assert "Contact" not in bye.headers
    reinvite = dialog.create_request(
        "INVITE", body=b"v=0\r\n", content_type="application/sdp", extra=[("Subject", "hold")]
    )
    assert reinvite.cseq.seq == 12
    assert reinvite.headers.get("Contact") == "<sip:alice@198.51.100.7:5062;transport=udp>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.headers.get("Subject") == "hold"
    assert reinvite.body == b"v=0\r\n"
    wire = parse(with_via(reinvite).to_bytes())
    assert isinstance(wire, Request) and wire.body == b"v=0\r\n"
    assert dialog.local_seq == 12


def test_uas_local_cseq_starts_fresh_and_contact_is_bracketed() -> None:
    dialog = Dialog.as_uas(invite(), "gw", "sip:gw@198.51.100.1")
    dialog.confirm()
    update = dialog.create_request("UPDATE")
    assert update.cseq.seq == 1
    assert update.uri == "sip:alice@198.51.100.7:5062;transport=udp"
    assert update.headers.get("Contact") == "<sip:gw@198.51.100.1>"
    assert update.from_.tag == "gw" and update.to.tag == "caller1"
    assert dialog.create_request("bye").cseq.seq == 2


def test_strict_router_first_in_route_set() -> None:
    strict = ("<sip:strict.example.net;method=INVITE;transport=tcp>", "<sip:p2.example.net;lr>")
    inv = invite(record_route=strict)
    dialog = Dialog.as_uas(inv, "gw", "sip:gw@198.51.100.1")
    dialog.confirm()
    bye = dialog.create_request("BYE")
    # 12.2.1.1: the strict router's URI (without the method param) is the
    # Request-URI and the remote target is appended as the last Route.
    assert bye.uri == "sip:strict.example.net;transport=tcp"
    assert bye.headers.get_all("Route") == [
        "<sip:p2.example.net;lr>",
        "<sip:alice@198.51.100.7:5062;transport=udp>",
    ]


def test_create_request_refusals() -> None:
    _, dialog = uac_dialog()
    for method in ("ACK", "CANCEL"):
        with pytest.raises(DialogError, match="not created with create_request"):
            dialog.create_request(method)
    with pytest.raises(DialogError, match="content type"):
        dialog.create_request("INFO", body=b"x")
    assert dialog.local_seq == 10  # refusals do not consume a CSeq
    dialog.local_seq = 2**31 - 1
    with pytest.raises(DialogError, match="CSeq exhausted"):
        dialog.create_request("INFO")
    dialog.terminate()
    with pytest.raises(DialogError, match="terminated") as info:
        dialog.create_request("BYE")
    assert info.value.status == 481


def test_callee_may_not_bye_an_early_dialog() -> None:
    dialog = Dialog.as_uas(invite(), "gw", "sip:gw@h")
    with pytest.raises(DialogError, match="early dialog"):
        dialog.create_request("BYE")
    early_uac = Dialog.as_uac(invite(), answer(invite(), 180))
    assert early_uac.create_request("BYE").method == "BYE"  # the caller may


def test_create_ack_for_2xx_reuses_invite_cseq() -> None:
    _, dialog = uac_dialog()
    reinvite = dialog.create_request("INVITE")
    ack = dialog.create_ack(reinvite.cseq.seq, b"v=0\r\n", "application/sdp")
    assert ack.method == "ACK"
    assert ack.cseq.seq == 11 and ack.cseq.method == "ACK"
    assert ack.uri == dialog.remote_target
    assert ack.headers.get_all("Route") == list(reversed(RR))
    assert ack.headers.get("Content-Type") == "application/sdp"
    assert dialog.local_seq == 11  # the ACK took no new number
    plain = dialog.create_ack(10)
    assert plain.body == b"" and "Content-Type" not in plain.headers


# -- requests from the peer -------------------------------------------------------


def test_receive_request_cseq_order() -> None:
    dialog = Dialog.as_uas(invite(cseq=10), "gw", "sip:gw@h")
    dialog.confirm()
    dialog.receive_request(incoming(dialog, "ACK", 10))
    dialog.receive_request(incoming(dialog, "INFO", 11))
    assert dialog.remote_seq == 11
    with pytest.raises(DialogError, match="lower than the last") as info:
        dialog.receive_request(incoming(dialog, "INFO", 9))
    assert info.value.status == 500
    assert dialog.remote_seq == 11
    dialog.receive_request(incoming(dialog, "UPDATE", 40))  # gaps are allowed
    assert dialog.remote_seq == 40


def test_receive_request_target_refresh_and_bye() -> None:
    dialog = Dialog.as_uas(invite(), "gw", "sip:gw@h")
    dialog.confirm()
    dialog.receive_request(incoming(dialog, "INFO", 11, contact="<sip:alice@198.51.100.99>"))
    assert dialog.remote_target == "sip:alice@198.51.100.7:5062;transport=udp"  # not a refresh
    dialog.receive_request(incoming(dialog, "INVITE", 12, contact="<sip:alice@198.51.100.99>"))
    assert dialog.remote_target == "sip:alice@198.51.100.99"
    dialog.receive_request(incoming(dialog, "UPDATE", 13, contact="sip:alice@198.51.100.98"))
    assert dialog.remote_target == "sip:alice@198.51.100.98"
    assert dialog.create_request("INFO").uri == "sip:alice@198.51.100.98"
    dialog.receive_request(incoming(dialog, "BYE", 14))
    assert state_of(dialog) is DialogState.TERMINATED
    with pytest.raises(DialogError, match="terminated") as info:
        dialog.receive_request(incoming(dialog, "INFO", 15))
    assert info.value.status == 481


def test_receive_request_from_another_dialog() -> None:
    dialog = Dialog.as_uas(invite(), "gw", "sip:gw@h")
    foreign = incoming(dialog, "BYE", 11, to_tag="not-ours")
    assert not dialog.matches(foreign)
    with pytest.raises(DialogError, match="does not belong") as info:
        dialog.receive_request(foreign)
    assert info.value.status == 481
    assert dialog.matches(incoming(dialog, "BYE", 11))


# -- responses to our requests ----------------------------------------------------


def test_update_from_response_target_refresh_and_termination() -> None:
    _, dialog = uac_dialog()
    reinvite = with_via(dialog.create_request("INVITE"))
    dialog.update_from_response(answer(reinvite, 200, contact="<sip:bob@203.0.113.30>"))
    assert dialog.remote_target == "sip:bob@203.0.113.30"
    info = with_via(dialog.create_request("INFO"))
    dialog.update_from_response(answer(info, 200, contact="<sip:bob@203.0.113.31>"))
    assert dialog.remote_target == "sip:bob@203.0.113.30"  # INFO refreshes nothing
    assert state_of(dialog) is DialogState.CONFIRMED
    dialog.update_from_response(answer(info, 481))
    assert state_of(dialog) is DialogState.TERMINATED


def test_update_from_response_bye_and_timeout_end_dialog() -> None:
    _, dialog = uac_dialog()
    bye = with_via(dialog.create_request("BYE"))
    dialog.update_from_response(answer(bye, 200))
    assert state_of(dialog) is DialogState.TERMINATED
    _, dialog = uac_dialog()
    reinvite = with_via(dialog.create_request("INVITE"))
    dialog.update_from_response(answer(reinvite, 408))
    assert state_of(dialog) is DialogState.TERMINATED


def test_update_from_response_refuses_foreign_response() -> None:
    inv, dialog = uac_dialog()
    with pytest.raises(DialogError, match="does not belong"):
        dialog.update_from_response(answer(inv, 200, to_tag="forked-other"))
    assert not dialog.matches(answer(inv, 200, to_tag="forked-other"))
    assert dialog.matches(answer(inv, 200))


# -- hostile input ----------------------------------------------------------------


def test_malformed_headers_raise_dialog_error_400() -> None:
    dialog = Dialog.as_uas(invite(), "gw", "sip:gw@h")
    bad_from = incoming(dialog, "INFO", 11)
    bad_from.headers.set("From", "<sip:alice@example.com;tag=x")
    assert not dialog.matches(bad_from)
    with pytest.raises(DialogError, match="Malformed message") as info:
        dialog.receive_request(bad_from)
    assert info.value.status == 400
    with pytest.raises(DialogError, match="Bad Record-Route") as info:
        Dialog.as_uas(invite(record_route=("<http://proxy>",)), "gw", "sip:gw@h")
    assert info.value.status == 400
    inv = invite()
    bad_rr = answer(inv, 200, record_route=("<sip:p1.example.net;lr",))
    with pytest.raises(DialogError, match="Bad Record-Route"):
        Dialog.as_uac(inv, bad_rr)
    bad_cseq = answer(inv, 200)
    bad_cseq.headers.set("CSeq", "many INVITE")
    with pytest.raises(DialogError, match="Malformed message"):
        Dialog.as_uac(inv, bad_cseq)
    with pytest.raises(DialogError, match="Bad Contact"):
        dialog.receive_request(incoming(dialog, "INVITE", 12, contact="<sip:a@b"))
    assert dialog.remote_seq == 10  # a refused request changes nothing
