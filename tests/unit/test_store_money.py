"""Store schema 3: accounts, the ledger, settling a call atomically, masked numbers, migration."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from gateway.store.base import PoolExhausted, StoreError
from gateway.store.model import ActiveCall, Cdr, Charge, MaskedBinding
from gateway.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SqliteStore

T0 = 1_700_000_000.0
POOL = ["+8617000000000", "+8617000000001", "+8617000000002"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


def cdr(call_id: str, **extra: Any) -> Cdr:
    fields: dict[str, Any] = {
        "id": call_id,
        "caller": "1001",
        "callee": "+8613800138000",
        "route": "trunk",
        "trunk": "demo-carrier",
        "start": T0,
        "answer": T0 + 2,
        "end": T0 + 92,
        "duration": 90.0,
        "disposition": "answered",
        "end_reason": "caller-bye",
        "sip_status": 200,
        "caller_call_id": f"a-{call_id}",
        "callee_call_id": f"b-{call_id}",
    }
    fields.update(extra)
    return msgspec.convert(fields, Cdr)


def charge(call_id: str, amount: str, account: str = "1001") -> Charge:
    return Charge(kind="subscriber", account=account, amount=amount, call_id=call_id)


async def balance(store: SqliteStore, name: str = "1001") -> str:
    account = await store.get_account("subscriber", name)
    assert account is not None
    return account.balance


# -- accounts and the ledger ---------------------------------------------------------------


async def test_ensure_account_provisions_once_and_never_resets(store: SqliteStore) -> None:
    made = await store.ensure_account("subscriber", "1001", "10.00")
    assert (made.kind, made.name, made.balance) == ("subscriber", "1001", "10.00")
    await store.settle_call(cdr("c1"), charge("c1", "0.30"))
    again = await store.ensure_account("subscriber", "1001", "10.00")  # a restart
    assert again.balance == "9.70"
    (provision,) = [e for e in await store.ledger("subscriber", "1001") if e.reason == "provision"]
    assert (provision.amount, provision.balance_after, provision.call_id) == (
        "10.00",
        "10.00",
        None,
    )


async def test_zero_account_and_partner_kind(store: SqliteStore) -> None:
    await store.ensure_account("partner", "demo", "0")
    await store.ensure_account("subscriber", "demo", "1.5")  # same name, other kind
    assert [(a.kind, a.name, a.balance) for a in await store.list_accounts()] == [
        ("partner", "demo", "0.00"),
        ("subscriber", "demo", "1.50"),
    ]
    (row,) = await store.ledger("partner", "demo")
    assert (row.reason, row.amount, row.balance_after) == ("provision", "0.00", "0.00")
    assert await store.get_account("partner", "nobody") is None


async def test_top_up_and_adjustment_write_ledger_rows(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "1.00")
    assert (await store.adjust_balance("subscriber", "1001", "2.50", "topup")).balance == "3.50"
    after = await store.adjust_balance("subscriber", "1001", "-3.50", "adjustment")
    assert after.balance == "0.00"
    rows = await store.ledger("subscriber", "1001")
    assert [(r.reason, r.amount, r.balance_after) for r in rows] == [
        ("adjustment", "-3.50", "0.00"),
        ("topup", "2.50", "3.50"),
        ("provision", "1.00", "1.00"),
    ]
    assert rows[0].id > rows[1].id > rows[2].id
    assert len(await store.ledger("subscriber", "1001", limit=1)) == 1
    assert await store.ledger("subscriber", "1001", since=rows[0].at + 1) == []


@pytest.mark.parametrize(
    ("amount", "reason", "message"),
    [
        ("abc", "topup", "decimal string of whole cents"),
        ("1.234", "topup", "whole cents"),  # a fraction of a cent
        ("1e3", "topup", "whole cents"),  # exponent notation
        ("NaN", "topup", "whole cents"),
        ("", "topup", "whole cents"),
        (" 1.00", "topup", "whole cents"),
        ("1,00", "topup", "whole cents"),  # decimal comma
        (1.5, "topup", "whole cents"),  # a float, not a string
        ("1" * 16, "topup", "at most 15 digits"),
        ("0.00", "topup", "must not be zero"),
        ("-0.00", "adjustment", "must not be zero"),
        ("-1.00", "topup", "must be positive"),
        ("1.00", "gift", "reason must be one of topup, adjustment"),
        ("-5.01", "adjustment", "below 0.00"),  # the result would be negative
    ],
)
async def test_bad_amounts_are_refused_and_change_nothing(
    store: SqliteStore, amount: Any, reason: str, message: str
) -> None:
    await store.ensure_account("subscriber", "1001", "5.00")
    with pytest.raises(StoreError, match=message):
        await store.adjust_balance("subscriber", "1001", amount, reason)
    assert await balance(store) == "5.00"
    assert len(await store.ledger("subscriber", "1001")) == 1


async def test_unknown_account_and_bad_kind_are_refused(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="no subscriber account 'ghost'"):
        await store.adjust_balance("subscriber", "ghost", "1.00", "topup")
    with pytest.raises(StoreError, match="account kind must be one of subscriber, partner"):
        await store.ensure_account("reseller", "x", "1.00")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="name must not be empty"):
        await store.ensure_account("partner", "", "1.00")
    with pytest.raises(StoreError, match="must not be negative"):
        await store.ensure_account("partner", "p", "-1.00")
    with pytest.raises(StoreError, match="whole cents"):
        await store.ensure_account("partner", "p", "lots")
    assert await store.list_accounts() == []


# -- settling a call -----------------------------------------------------------------------


async def test_settle_call_writes_cdr_ledger_row_and_balance(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "1.00")
    rated = cdr("c1", payer="subscriber:1001", cost="0.20", billable_seconds=120)
    await store.settle_call(rated, charge("c1", "0.20"))
    assert await store.list_cdrs() == [rated]
    assert await balance(store) == "0.80"
    row = (await store.ledger("subscriber", "1001"))[0]
    assert (row.reason, row.amount, row.balance_after) == ("call", "-0.20", "0.80")
    assert (row.call_id, row.at) == ("c1", rated.end)


async def test_a_second_settle_of_one_call_is_refused_and_changes_nothing(
    store: SqliteStore,
) -> None:
    """Failover does not bill twice: one call id, at most one charge."""
    await store.ensure_account("subscriber", "1001", "1.00")
    await store.settle_call(cdr("c1"), charge("c1", "0.10"))
    with pytest.raises(StoreError, match="'c1' is already recorded"):
        await store.settle_call(cdr("c1", trunk="backup"), charge("c1", "0.10"))
    assert await balance(store) == "0.90"
    assert [c.trunk for c in await store.list_cdrs()] == ["demo-carrier"]
    assert len(await store.ledger("subscriber", "1001")) == 2


async def test_a_failing_ledger_insert_undoes_the_cdr_and_the_balance(
    tmp_path: Path,
) -> None:
    """The CDR row is inserted first; SQLite then refuses the ledger row: all is undone."""
    path = tmp_path / "state.db"
    async with SqliteStore(path) as store:
        await store.ensure_account("subscriber", "1001", "1.00")
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER ledger_full BEFORE INSERT ON ledger "
        "BEGIN SELECT RAISE(ABORT, 'ledger disk full'); END"
    )
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        with pytest.raises(StoreError, match="ledger disk full"):
            await store.settle_call(cdr("c1"), charge("c1", "0.30"))
        assert await store.list_cdrs() == []
        assert await balance(store) == "1.00"
        await store.write_cdr(cdr("free"))  # the store itself goes on working
        assert [c.id for c in await store.list_cdrs()] == ["free"]


async def test_a_duplicate_charge_is_refused_after_the_cdr_insert_and_undoes_it(
    store: SqliteStore,
) -> None:
    """A call already in the ledger whose CDR row went missing (removed by hand): the new CDR
    row goes in first, the ledger refuses the second charge, and the CDR row is undone."""
    await store.ensure_account("subscriber", "1001", "1.00")
    await store.settle_call(cdr("c1"), charge("c1", "0.10"))
    await store._write(lambda conn: conn.execute("DELETE FROM cdrs WHERE id='c1'").rowcount)
    with pytest.raises(StoreError, match="call 'c1' is already charged"):
        await store.settle_call(cdr("c1"), charge("c1", "0.10"))
    assert await store.list_cdrs() == []
    assert await balance(store) == "0.90"


async def test_charging_an_unknown_account_writes_no_cdr(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="no subscriber account 'ghost'"):
        await store.settle_call(cdr("c1"), charge("c1", "0.30", account="ghost"))
    assert await store.list_cdrs() == []


@pytest.mark.parametrize(
    ("record", "bill", "message"),
    [
        (cdr("c1"), charge("c2", "0.10"), "does not belong to CDR 'c1'"),
        (cdr("c1", payer="partner:demo"), charge("c1", "0.10"), "names payer 'partner:demo'"),
        (cdr("c1"), charge("c1", "-0.10"), "must not be negative"),
        (cdr("c1"), charge("c1", "0.1x"), "whole cents"),
    ],
)
async def test_a_charge_that_does_not_fit_its_cdr_is_refused(
    store: SqliteStore, record: Cdr, bill: Charge, message: str
) -> None:
    await store.ensure_account("subscriber", "1001", "1.00")
    with pytest.raises(StoreError, match=message):
        await store.settle_call(record, bill)
    assert await store.list_cdrs() == []
    assert await balance(store) == "1.00"


async def test_zero_charge_and_no_charge_write_only_the_cdr(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "1.00")
    await store.settle_call(cdr("c1"), charge("c1", "0.00"))
    await store.write_cdr(cdr("c2"))
    assert len(await store.list_cdrs()) == 2
    assert len(await store.ledger("subscriber", "1001")) == 1  # only the provision row


async def test_settle_records_what_happened_even_below_zero(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "0.10")
    await store.settle_call(cdr("c1"), charge("c1", "0.30"))
    assert await balance(store) == "-0.20"
    with pytest.raises(StoreError, match=r"below 0\.00"):
        await store.adjust_balance("subscriber", "1001", "-0.01", "adjustment")
    assert (await store.adjust_balance("subscriber", "1001", "0.20", "topup")).balance == "0.00"


async def test_concurrent_settles_keep_a_consistent_ledger(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "10.00")
    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(store.settle_call, cdr(f"c{n}"), charge(f"c{n}", "0.13"))
    assert await balance(store) == "4.80"
    rows = list(reversed(await store.ledger("subscriber", "1001")))
    running = Decimal(0)
    for row in rows:
        running += Decimal(row.amount)
        assert Decimal(row.balance_after) == running
    assert store.commit_count < 40  # group-committed, still one change per row


async def test_spent_since_sums_call_charges_only(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "10.00")
    assert await store.spent_since("subscriber", "1001", 0.0) == "0.00"
    await store.settle_call(cdr("old", end=T0 + 10), charge("old", "1.00"))
    await store.settle_call(cdr("c1", end=T0 + 100), charge("c1", "0.25"))
    await store.settle_call(cdr("c2", end=T0 + 200), charge("c2", "0.30"))
    await store.adjust_balance("subscriber", "1001", "5.00", "topup")
    await store.adjust_balance("subscriber", "1001", "-1.00", "adjustment")
    assert await store.spent_since("subscriber", "1001", T0 + 100) == "0.55"
    assert await store.spent_since("subscriber", "1001", T0) == "1.55"
    assert await store.spent_since("subscriber", "nobody", T0) == "0.00"


async def test_cdr_fields_of_schema_3_round_trip_and_partner_filter(store: SqliteStore) -> None:
    rich = cdr(
        "p1",
        payer="partner:demo",
        partner="demo",
        tariff_prefix="86",
        rate_per_minute="0.10",
        billing_increment=[60, 60],
        billable_seconds=120,
        cost="0.20",
        q850_cause=16,
        reason_text="Normal call clearing",
        trunks_tried=["cheap", "demo-carrier"],
        start=T0 + 5,
    )
    await store.write_cdr(rich)
    await store.write_cdr(cdr("u1"))
    assert await store.list_cdrs(partner="demo") == [rich]
    assert await store.list_cdrs(partner="demo", since=T0 + 6) == []
    assert [c.id for c in await store.list_cdrs()] == ["p1", "u1"]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await store.list_cdrs(limit=0)


# -- crash recovery charges the call ------------------------------------------------------


def paid_active(call_id: str, *, last_seen: float, granted: int | None, **extra: Any) -> ActiveCall:
    fields: dict[str, Any] = {
        "id": call_id,
        "caller": "1001",
        "callee": "+8613800138000",
        "route": "trunk",
        "trunk": "demo-carrier",
        "start": T0,
        "answer": T0 + 2,
        "last_seen": last_seen,
        "caller_call_id": f"a-{call_id}",
        "callee_call_id": f"b-{call_id}",
        "payer": "subscriber:1001",
        "tariff_prefix": "86",
        "rate_per_minute": "0.10",
        "billing_increment": [60, 60],
        "granted_seconds": granted,
    }
    fields.update(extra)
    return msgspec.convert(fields, ActiveCall)


async def test_recovery_charges_the_open_call_with_its_cdr(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStore(path) as store:
        await store.ensure_account("subscriber", "1001", "1.00")
        calls = [
            paid_active("c1", last_seen=T0 + 92, granted=120),  # 90 s talk: 120 billed
            paid_active("c2", last_seen=T0 + 900, granted=60),  # beyond its grant: 60 billed
            paid_active("c3", last_seen=T0 + 62, granted=None, payer="subscriber:ghost"),
        ]
        await store.checkpoint_active_calls(calls, T0 + 900)
    # kill -9 here; the restart:
    async with SqliteStore(path) as store:
        first, second, orphan = await store.recover_open_calls(T0 + 1000)
        assert (first.billable_seconds, first.cost, first.payer) == (120, "0.20", "subscriber:1001")
        assert (first.tariff_prefix, first.rate_per_minute, first.billing_increment) == (
            "86",
            "0.10",
            [60, 60],
        )
        assert (second.duration, second.billable_seconds, second.cost) == (898.0, 60, "0.10")
        assert (orphan.payer, orphan.cost) == ("subscriber:ghost", "0.00")  # no such account
        assert await balance(store) == "0.70"
        rows = await store.ledger("subscriber", "1001")
        assert {(r.call_id, r.amount) for r in rows if r.reason == "call"} == {
            ("c1", "-0.20"),
            ("c2", "-0.10"),
        }
        assert sorted(c.id for c in await store.list_cdrs()) == ["c1", "c2", "c3"]
        assert await store.recover_open_calls(T0 + 2000) == []


async def test_recovery_of_a_call_already_settled_charges_nothing_more(store: SqliteStore) -> None:
    await store.ensure_account("subscriber", "1001", "1.00")
    await store.checkpoint_active_calls([paid_active("c1", last_seen=T0 + 50, granted=60)], T0 + 50)
    await store.settle_call(cdr("c1"), charge("c1", "0.20"))  # the crash came right after
    assert await store.recover_open_calls(T0 + 100) == []
    assert await balance(store) == "0.80"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"payer": "1001"}, "payer must be 'kind:name'"),
        ({"payer": "bank:1001"}, "account kind must be one of"),
        ({"rate_per_minute": None}, "needs its rate and increments"),
        ({"billing_increment": [60]}, "needs its rate and increments"),
        ({"rate_per_minute": "cheap"}, "price per minute"),
    ],
)
async def test_checkpoint_of_a_paid_call_without_its_rating_is_refused(
    store: SqliteStore, extra: dict[str, Any], message: str
) -> None:
    call = paid_active("c1", last_seen=T0 + 5, granted=60, **extra)
    with pytest.raises(StoreError, match=message):
        await store.checkpoint_active_calls([call], T0 + 5)


# -- masked numbers ------------------------------------------------------------------------


async def test_bind_takes_the_first_free_number_until_the_pool_is_exhausted(
    store: SqliteStore,
) -> None:
    first = await store.bind_masked("demo", POOL, "+8613800138000", "+8613800138001", 60, T0)
    assert (first.number, first.partner, first.created_at, first.expires_at) == (
        POOL[0],
        "demo",
        T0,
        T0 + 60,
    )
    second = await store.bind_masked("demo", POOL, "+8613800138002", "+8613800138003", 60, T0)
    third = await store.bind_masked("demo", POOL, "+8613800138004", "+8613800138005", 60, T0)
    assert [second.number, third.number] == POOL[1:]
    assert len({first.id, second.id, third.id}) == 3
    with pytest.raises(PoolExhausted, match="every masked number of its pool of 3 is bound"):
        await store.bind_masked("demo", POOL, "+8613800138006", "+8613800138007", 60, T0)
    with pytest.raises(PoolExhausted):
        await store.bind_masked("demo", [], "+8613800138006", "+8613800138007", 60, T0)


async def test_lookup_by_number_respects_expiry_and_expiry_frees_the_number(
    store: SqliteStore,
) -> None:
    bound = await store.bind_masked("demo", POOL[:1], "+861", "+862", 30, T0)
    assert await store.masked_binding(POOL[0], T0 + 29) == bound
    assert await store.masked_binding(POOL[0], T0 + 30) is None  # expired
    assert await store.masked_binding("+8617999999999", T0) is None  # unknown
    with pytest.raises(PoolExhausted):
        await store.bind_masked("demo", POOL[:1], "+863", "+864", 30, T0 + 29)
    again = await store.bind_masked("demo", POOL[:1], "+863", "+864", 30, T0 + 30)
    assert again.number == POOL[0] and again.id != bound.id
    assert await store.get_masked_binding("demo", bound.id) is None  # the old one is gone
    assert await store.masked_binding(POOL[0], T0 + 31) == again


async def test_get_and_unbind_are_per_partner(store: SqliteStore) -> None:
    bound = await store.bind_masked("demo", POOL, "+861", "+862", 30, T0)
    assert await store.get_masked_binding("demo", bound.id) == bound
    assert await store.get_masked_binding("other", bound.id) is None
    assert await store.unbind_masked("other", bound.id) is False
    assert await store.unbind_masked("demo", bound.id) is True
    assert await store.unbind_masked("demo", bound.id) is False
    assert await store.masked_binding(POOL[0], T0) is None
    assert (await store.bind_masked("demo", POOL, "+863", "+864", 30, T0)).number == POOL[0]


@pytest.mark.parametrize(
    ("ttl", "a", "message"),
    [
        (0, "+861", "ttl_s must be finite and > 0"),
        (-5.0, "+861", "ttl_s must be finite and > 0"),
        (float("inf"), "+861", "ttl_s must be finite and > 0"),
        ("60", "+861", "ttl_s must be seconds"),
        (60, "", "needs both parties"),
    ],
)
async def test_bad_binding_requests_are_refused(
    store: SqliteStore, ttl: Any, a: str, message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        await store.bind_masked("demo", POOL, a, "+862", ttl, T0)
    assert await store.masked_binding(POOL[0], T0) is None


async def test_concurrent_binds_never_share_a_number(store: SqliteStore) -> None:
    pool = [f"+86170000000{n:02d}" for n in range(20)]
    got: list[MaskedBinding] = []
    refused: list[PoolExhausted] = []

    async def bind(n: int) -> None:
        try:
            got.append(await store.bind_masked("demo", pool, f"+8613{n:09d}", "+862", 60, T0))
        except PoolExhausted as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for n in range(23):
            nursery.start_soon(bind, n)
    assert sorted(b.number for b in got) == pool
    assert len(refused) == 3


# -- migration -----------------------------------------------------------------------------


async def test_a_schema_2_store_is_migrated_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statements in _MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (2)")
    conn.execute("INSERT INTO subscribers VALUES ('1001', 'pw', 'optional', 1, '5.00', 'PCMA')")
    conn.execute(
        'INSERT INTO cdrs (id, caller, callee, route, trunk, start, answer, "end", duration,'
        " disposition, end_reason, sip_status, caller_call_id, callee_call_id) VALUES"
        " ('old', '1001', '1002', 'app', NULL, 1.0, 2.0, 12.0, 10.0, 'answered', 'caller-bye',"
        " 200, 'a', 'b')"
    )
    conn.execute(
        "INSERT INTO active_calls VALUES ('open', '1001', '1002', 'app', NULL, 1.0, 2.0, 7.0,"
        " 'a2', 'b2')"
    )
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        (old,) = await store.list_cdrs()
        assert (old.id, old.duration, old.payer, old.cost, old.trunks_tried) == (
            "old",
            10.0,
            None,
            "0.00",
            [],
        )
        subscriber = await store.get_subscriber("1001")
        assert subscriber is not None and subscriber.codecs == ["PCMA"]
        (recovered,) = await store.recover_open_calls(100.0)
        assert (recovered.id, recovered.duration, recovered.cost) == ("open", 5.0, "0.00")
        await store.ensure_account("subscriber", "1001", "5.00")
        await store.settle_call(cdr("new"), charge("new", "1.00"))
        assert await balance(store) == "4.00"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 3  # the money schema, or a later one
    finally:
        conn.close()
