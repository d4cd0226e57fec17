"""The pure decisions of the call logic: registrar bindings, routing, statuses, CDR words."""

from __future__ import annotations

import pytest

from gateway.calls.b2bua import best_status, map_status
from gateway.calls.call import CallRecord, disposition_for
from gateway.calls.registrar import ExpiryPolicy, RegisterRefused, decide, destination_of
from gateway.calls.router import AppRoute, Refusal, Router, TrunkRoute, lcr_order, pick_trunk
from gateway.config import TrunkConfig, parse_config
from gateway.sip.message import Request, parse
from gateway.sip.uri import parse_uri
from gateway.store.model import Binding, Subscriber
from gateway.transport.flow import Flow

POLICY = ExpiryPolicy(min_expires=60, max_expires=3600, default_expires=600)
FLOW = Flow("udp", ("127.0.0.1", 5060), ("203.0.113.7", 40001))
NOW = 1_000_000.0


def register(*headers: str, cseq: int = 2, call_id: str = "reg-1") -> Request:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKr1;rport",
        "From: <sip:1001@127.0.0.1>;tag=a",
        "To: <sip:1001@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *headers,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def binding(contact: str, *, cseq: int = 1, call_id: str = "reg-1") -> Binding:
    return Binding(
        aor="1001",
        contact=contact,
        expires_at=NOW + 100,
        source_host="203.0.113.7",
        source_port=40001,
        local_host="127.0.0.1",
        local_port=5060,
        transport="udp",
        call_id=call_id,
        cseq=cseq,
    )


def test_register_saves_the_nat_source_and_clamps_expiry() -> None:
    request = register("Contact: <sip:1001@10.0.0.2:5060>;expires=99999")
    changes = decide(request, "1001", FLOW, [], POLICY, NOW)
    [saved] = changes.save
    assert saved.contact == "sip:1001@10.0.0.2:5060"
    assert saved.expires_at == NOW + 3600
    assert (saved.source_host, saved.source_port) == ("203.0.113.7", 40001)
    destination = destination_of(saved)
    assert destination.address == ("203.0.113.7", 40001)  # not the private Contact address


def test_register_default_and_header_expires() -> None:
    default = decide(register("Contact: <sip:a@h>"), "1001", FLOW, [], POLICY, NOW)
    assert default.save[0].expires_at == NOW + 600
    header = decide(register("Contact: <sip:a@h>", "Expires: 120"), "1001", FLOW, [], POLICY, NOW)
    assert header.save[0].expires_at == NOW + 120


def test_register_several_contacts_and_removal() -> None:
    request = register("Contact: <sip:a@h1>, <sip:b@h2>;expires=0")
    changes = decide(request, "1001", FLOW, [binding("sip:b@h2")], POLICY, NOW)
    assert [b.contact for b in changes.save] == ["sip:a@h1"]
    assert changes.remove == ["sip:b@h2"]


def test_register_wildcard_removes_all_only_with_expires_zero() -> None:
    changes = decide(register("Contact: *", "Expires: 0"), "1001", FLOW, [], POLICY, NOW)
    assert changes.remove_all
    with pytest.raises(RegisterRefused) as info:
        decide(register("Contact: *"), "1001", FLOW, [], POLICY, NOW)
    assert info.value.status == 400


def test_register_too_brief_gets_423_with_min_expires() -> None:
    with pytest.raises(RegisterRefused) as info:
        decide(register("Contact: <sip:a@h>;expires=10"), "1001", FLOW, [], POLICY, NOW)
    assert info.value.status == 423
    assert info.value.extra == [("Min-Expires", "60")]


def test_register_out_of_order_cseq_is_refused() -> None:
    existing = [binding("sip:a@h", cseq=5)]
    with pytest.raises(RegisterRefused) as info:
        decide(register("Contact: <sip:a@h>", cseq=5), "1001", FLOW, existing, POLICY, NOW)
    assert info.value.status == 500
    changes = decide(register("Contact: <sip:a@h>", cseq=6), "1001", FLOW, existing, POLICY, NOW)
    assert changes.save


def test_register_bad_expires_value() -> None:
    with pytest.raises(RegisterRefused, match="Bad Expires"):
        decide(register("Contact: <sip:a@h>;expires=soon"), "1001", FLOW, [], POLICY, NOW)


CONFIG = parse_config(
    """
[[trunks]]
name = "cn"
host = "198.51.100.5"
prefixes = ["86"]
[[trunks]]
name = "world"
host = "198.51.100.6"
prefixes = [""]
""",
    source="test.toml",
)
ALICE = Subscriber(username="1001", password="x", numbers=["+8613900139001"])
BOB = Subscriber(username="1002", password="y", numbers=["+8613900139002"])
SUBSCRIBERS = {"1001": ALICE, "1002": BOB}
NUMBERS = {"+8613900139001": ALICE, "+8613900139002": BOB}


def route(target: str, registered: dict[str, list[Binding]] | None = None) -> object:
    bindings = registered or {}
    uri = parse_uri(target)
    return Router(CONFIG).route(uri, SUBSCRIBERS, NUMBERS, lambda aor: bindings.get(aor, []))


def test_route_to_registered_subscriber_by_name_or_number() -> None:
    registered = {"1002": [binding("sip:1002@h")]}
    by_name = route("sip:1002@gw", registered)
    by_number = route("sip:+8613900139002@gw", registered)
    assert isinstance(by_name, AppRoute) and by_name.subscriber is BOB
    assert isinstance(by_number, AppRoute) and by_number.subscriber is BOB


def test_route_unregistered_subscriber_falls_back_to_its_number() -> None:
    for target in ("sip:1002@gw", "sip:+8613900139002@gw", "sip:13900139002@gw"):
        fallback = route(target)
        assert isinstance(fallback, TrunkRoute), target
        assert (fallback.trunk.name, fallback.number) == ("cn", "+8613900139002")
        assert fallback.fallback_for == "1002" and not fallback.emergency


def test_route_unregistered_subscriber_without_fallback_is_temporarily_unavailable() -> None:
    unavailable = Refusal(480, "Temporarily Unavailable")
    no_fallback = Subscriber(
        username="1003", password="z", numbers=["+8613900139003"], fallback=False
    )
    no_number = Subscriber(username="1004", password="z", numbers=[])
    subscribers = {"1003": no_fallback, "1004": no_number}
    for user in subscribers:
        uri = parse_uri(f"sip:{user}@gw")
        assert Router(CONFIG).route(uri, subscribers, {}, lambda aor: []) == unavailable
    switched_off = parse_config(
        '[routing]\nfallback_to_number = false\n[[trunks]]\nname = "t"\nhost = "198.51.100.5"',
        source="off.toml",
    )
    uri = parse_uri("sip:1002@gw")
    assert Router(switched_off).route(uri, SUBSCRIBERS, NUMBERS, lambda aor: []) == unavailable


@pytest.mark.parametrize("code", ["110", "119", "120", "122", "112", "911"])
def test_emergency_short_codes_go_to_a_carrier(code: str) -> None:
    emergency = route(f"sip:{code}@gw")
    assert isinstance(emergency, TrunkRoute) and emergency.emergency
    assert emergency.number == code and emergency.trunk.name == "cn"
    assert route("sip:+86110@gw") == Refusal(404, "Not Found")


def test_national_dialling_is_read_in_the_country_plan() -> None:
    mobile = route("sip:13800138000@gw")
    landline = route("sip:01012345678@gw")
    assert isinstance(mobile, TrunkRoute) and mobile.number == "+8613800138000"
    assert isinstance(landline, TrunkRoute) and landline.number == "+861012345678"


def test_route_numbers_to_the_longest_prefix_trunk() -> None:
    china = route("sip:+8613800138000@gw")
    abroad = route("sip:0044207946000@gw")
    assert isinstance(china, TrunkRoute) and china.trunk.name == "cn"
    assert china.request_uri == "sip:+8613800138000@198.51.100.5:5060"
    assert isinstance(abroad, TrunkRoute) and abroad.trunk.name == "world"
    assert abroad.number == "+44207946000"


def test_lcr_orders_by_prefix_length_then_price_then_priority_then_order() -> None:
    def trunk(name: str, prefix: str, price: str, priority: int = 0) -> TrunkConfig:
        return TrunkConfig(
            name=name,
            host="198.51.100.9",
            prefixes=[prefix],
            price_per_minute=price,
            priority=priority,
        )

    trunks = [
        trunk("any-cheap", "", "0.001"),
        trunk("cn-dear", "86", "0.05"),
        trunk("cn-cheap-low", "86", "0.01", priority=5),
        trunk("cn-cheap-high", "86", "0.01", priority=1),
        trunk("cn-cheap-high-too", "86", "0.01", priority=1),
        trunk("mobile", "86138", "0.09"),
        trunk("uk", "44", "0.001"),
    ]
    names = [t.name for t in lcr_order(trunks, "+8613800138000")]
    assert names == [
        "mobile",  # the longest prefix wins over any price
        "cn-cheap-high",  # then the cheapest; among equals the lower priority,
        "cn-cheap-high-too",  # then the order of the configuration
        "cn-cheap-low",
        "cn-dear",
        "any-cheap",  # the empty prefix matches last
    ]
    assert lcr_order(trunks, "+33123456789") == [trunks[0]]


def test_route_refuses_what_is_not_a_number() -> None:
    assert route("sip:alice@gw") == Refusal(404, "Not Found")


def test_prefix_pick() -> None:
    assert pick_trunk(list(CONFIG.trunks), "+8613800138000") is CONFIG.trunks[0]
    assert pick_trunk([], "+1") is None


@pytest.mark.parametrize(
    ("statuses", "best"),
    [([486], 486), ([408, 486], 486), ([408], 408), ([503, 404], 404), ([404, 603], 603)],
)
def test_best_response_over_forks(statuses: list[int], best: int) -> None:
    assert best_status(statuses) == best


def test_status_mapping_hides_callee_side_auth_and_redirects() -> None:
    assert map_status(407)[0] == 503
    assert map_status(302)[0] == 480
    assert map_status(486) == (486, None)


@pytest.mark.parametrize(
    ("status", "answered", "reason", "word"),
    [
        (None, True, "caller-bye", "answered"),
        (487, False, "caller-cancel", "cancelled"),
        (408, False, "no-answer-timeout", "no-answer"),
        (486, False, "callee-rejected", "busy"),
        (404, False, "callee-rejected", "rejected"),
        (503, False, "callee-rejected", "failed"),
    ],
)
def test_dispositions(status: int | None, answered: bool, reason: str, word: str) -> None:
    assert disposition_for(status, answered, reason) == word


def test_call_record_keeps_the_first_end_reason() -> None:
    record = CallRecord("c1", "1001", "1002", "app", None, "cid")
    record.answer = record.start
    record.finish("caller-bye")
    record.finish("media-timeout")
    cdr = record.cdr()
    assert cdr.end_reason == "caller-bye"
    assert cdr.disposition == "answered"
    assert cdr.duration >= 0
