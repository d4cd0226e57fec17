"""RFC 3263 ordering and the record cache of gateway.transport.dns, without any lookup."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.config import DnsConfig
from gateway.transport.dns import (
    DnsConfigError,
    NaptrRecord,
    RecordCache,
    Resolver,
    SrvRecord,
    Target,
    families_of,
    order_naptr,
    order_srv,
    parse_server,
    srv_name,
)

ALL = ("udp", "tcp", "tls")


def naptr(order: int, pref: int, service: str, replacement: str, flags: str = "s") -> NaptrRecord:
    return NaptrRecord(order, pref, flags, service, "", replacement)


def srv(priority: int, weight: int, target: str, port: int = 5060) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


# ---- NAPTR ---------------------------------------------------------------------------------


def test_naptr_sorted_by_order_then_preference() -> None:
    records = [
        naptr(20, 10, "SIP+D2U", "_sip._udp.example.test"),
        naptr(10, 50, "SIP+D2T", "_sip._tcp.example.test"),
        naptr(10, 10, "SIPS+D2T", "_sips._tcp.example.test"),
    ]
    assert order_naptr(records, ALL) == [
        ("tls", "_sips._tcp.example.test"),
        ("tcp", "_sip._tcp.example.test"),
        ("udp", "_sip._udp.example.test"),
    ]


def test_naptr_skips_sctp_foreign_services_and_other_flags() -> None:
    records = [
        naptr(10, 10, "SIP+D2S", "_sip._sctp.example.test"),  # SCTP: not carried
        naptr(10, 20, "E2U+sip", "example.test"),  # ENUM, not RFC 3263
        naptr(10, 30, "SIP+D2U", "example.test", flags="a"),  # not an SRV pointer
        naptr(10, 40, "SIP+D2U", "."),  # empty replacement
        NaptrRecord(10, 50, "s", "SIP+D2U", "!^.*$!sip:x@y!", "_sip._udp.example.test"),
        naptr(10, 60, "sip+d2t", "_sip._tcp.example.test."),  # case and the root dot
    ]
    assert order_naptr(records, ALL) == [("tcp", "_sip._tcp.example.test")]


def test_naptr_keeps_only_the_transports_allowed() -> None:
    records = [
        naptr(10, 10, "SIP+D2U", "_sip._udp.example.test"),
        naptr(10, 20, "SIPS+D2T", "_sips._tcp.example.test"),
    ]
    assert order_naptr(records, ("tls",)) == [("tls", "_sips._tcp.example.test")]


def test_naptr_duplicates_once() -> None:
    records = [
        naptr(10, 10, "SIP+D2U", "_sip._udp.example.test"),
        naptr(20, 10, "SIP+D2U", "_SIP._UDP.example.test."),
    ]
    assert order_naptr(records, ALL) == [("udp", "_sip._udp.example.test")]


def test_srv_names() -> None:
    assert srv_name("udp", "example.test.") == "_sip._udp.example.test"
    assert srv_name("tcp", "example.test") == "_sip._tcp.example.test"
    assert srv_name("tls", "example.test") == "_sips._tcp.example.test"


# ---- SRV (RFC 2782) ------------------------------------------------------------------------


def test_srv_lower_priority_always_first() -> None:
    records = [srv(20, 100, "c.test"), srv(10, 1, "a.test"), srv(10, 1, "b.test")]
    for seed in range(50):
        ordered = order_srv(records, random.Random(seed))
        assert {r.target for r in ordered[:2]} == {"a.test", "b.test"}
        assert ordered[2].target == "c.test"


def test_srv_weights_pick_in_proportion() -> None:
    records = [srv(10, 90, "heavy.test"), srv(10, 10, "light.test")]
    rng = random.Random(7)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    share = firsts["heavy.test"] / 2000
    assert 0.86 < share < 0.94, share


def test_srv_weight_zero_rarely_first_but_never_dropped() -> None:
    records = [srv(10, 0, "zero.test"), srv(10, 50, "a.test"), srv(10, 50, "b.test")]
    rng = random.Random(3)
    firsts: Counter[str] = Counter()
    for _ in range(1000):
        ordered = order_srv(records, rng)
        assert sorted(r.target for r in ordered) == ["a.test", "b.test", "zero.test"]
        firsts[ordered[0].target] += 1
    # Picked first only when the random number is exactly 0 out of 0..100.
    assert firsts["zero.test"] < 40
    assert abs(firsts["a.test"] - firsts["b.test"]) < 150


def test_srv_all_weights_zero_are_all_kept() -> None:
    records = [srv(10, 0, "a.test"), srv(10, 0, "b.test")]
    assert sorted(r.target for r in order_srv(records, random.Random(1))) == ["a.test", "b.test"]


def test_srv_dot_target_means_not_available() -> None:
    assert order_srv([srv(0, 0, ".")], random.Random(1)) == []
    assert order_srv([srv(0, 0, "")], random.Random(1)) == []


def test_srv_same_seed_same_order() -> None:
    records = [srv(10, w, f"h{w}.test") for w in (5, 10, 20, 40, 80)]
    assert order_srv(records, random.Random(11)) == order_srv(records, random.Random(11))


# ---- cache -----------------------------------------------------------------------------------


def test_cache_keeps_an_answer_for_its_ttl() -> None:
    cache = RecordCache()
    cache.put("Example.test.", "A", ["203.0.113.5"], 30, now=100.0)
    entry = cache.get("example.test", "A", now=129.9)
    assert entry is not None and entry.records == ("203.0.113.5",)
    assert cache.get("example.test", "AAAA", now=101.0) is None
    assert cache.get("example.test", "A", now=130.0) is None
    assert len(cache) == 0  # the expired entry is gone


def test_cache_negative_answers_and_nxdomain() -> None:
    cache = RecordCache()
    cache.put("nx.test", "NAPTR", [], 60, now=0.0, nxdomain=True)
    entry = cache.get("nx.test", "NAPTR", now=59.0)
    assert entry is not None and entry.nxdomain and entry.records == ()


def test_cache_ttl_zero_is_not_kept_and_huge_ttl_is_capped() -> None:
    cache = RecordCache()
    cache.put("a.test", "A", ["203.0.113.1"], 0, now=0.0)
    assert cache.get("a.test", "A", now=0.0) is None
    cache.put("b.test", "A", ["203.0.113.2"], 10**9, now=0.0)
    assert cache.get("b.test", "A", now=86399.0) is not None
    assert cache.get("b.test", "A", now=86400.0) is None


def test_cache_is_bounded() -> None:
    cache = RecordCache(capacity=3)
    for i in range(5):
        cache.put(f"h{i}.test", "A", [f"203.0.113.{i}"], 100, now=0.0)
    assert len(cache) == 3
    assert cache.get("h4.test", "A", now=1.0) is not None
    assert cache.get("h0.test", "A", now=1.0) is None  # the oldest went first


# ---- configuration ---------------------------------------------------------------------------


def test_parse_server_forms() -> None:
    assert parse_server("203.0.113.53") == ("203.0.113.53", 53)
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("::1") == ("::1", 53)
    assert parse_server("[::1]:5353") == ("::1", 5353)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ns.example.test", "must be an IP address"),
        ("127.0.0.1:dns", "port must be a number"),
        ("127.0.0.1:0", "port must be from 1 to 65535"),
        ("[::1]:70000", "port must be from 1 to 65535"),
    ],
)
def test_parse_server_refuses(text: str, reason: str) -> None:
    with pytest.raises(DnsConfigError, match=reason) as caught:
        parse_server(text)
    assert text in str(caught.value)


def test_resolver_refuses_bad_configuration() -> None:
    with pytest.raises(DnsConfigError, match=r"ns\.example"):
        Resolver(DnsConfig(servers=["ns.example"]))
    with pytest.raises(DnsConfigError, match=r"dns\.timeout"):
        Resolver(DnsConfig(timeout=0.0))


async def test_ip_addresses_need_no_lookup() -> None:
    # No name server at all: an IP address must not reach one.
    resolver = Resolver(DnsConfig(servers=["127.0.0.1:1"], timeout=0.1))
    assert await resolver.locate("203.0.113.7", "tcp", 5070) == [Target("tcp", "203.0.113.7", 5070)]
    assert await resolver.static("::1", "udp", 5060) == [Target("udp", "::1", 5060)]
    assert resolver.queries == 0


def test_target_describe_and_families() -> None:
    assert Target("udp", "203.0.113.5", 5060).describe() == "udp:203.0.113.5:5060"
    assert Target("tls", "2001:db8::1", 5061).describe() == "tls:[2001:db8::1]:5061"
    assert families_of(["127.0.0.1", "::1", "127.0.0.2"]) == {4, 6}
    assert families_of(["::1"]) == {6}
