"""Tests of the SQLite store: every method, group commit, crash recovery, kill -9 durability."""

from __future__ import annotations

import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from gateway.store.base import Store, StoreError
from gateway.store.model import (
    Account,
    ActiveCall,
    Binding,
    Cdr,
    LedgerEntry,
    MaskedBinding,
    Subscriber,
)
from gateway.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SqliteStore

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "var" / "state.db") as opened:
        yield opened


def make_cdr(n: int, *, start: float = T0, answered: bool = True) -> Cdr:
    return Cdr(
        id=f"call-{n}",
        caller="1001",
        callee="+8613900139002",
        route="trunk",
        trunk="demo-carrier",
        start=start,
        answer=start + 2.0 if answered else None,
        end=start + 32.0,
        duration=30.0 if answered else 0.0,
        disposition="answered" if answered else "no-answer",
        end_reason="caller-bye" if answered else "no-answer-timeout",
        sip_status=200 if answered else 408,
        caller_call_id=f"a-{n}@client",
        callee_call_id=f"b-{n}@gw" if answered else None,
    )


def make_binding(aor: str, contact: str, expires_at: float, **extra: object) -> Binding:
    fields: dict[str, object] = {
        "aor": aor,
        "contact": contact,
        "expires_at": expires_at,
        "source_host": "198.51.100.7",
        "source_port": 40123,
        "local_host": "127.0.0.1",
        "local_port": 5060,
        "transport": "udp",
        "call_id": "reg-1@client",
        "cseq": 1,
    }
    fields.update(extra)
    return msgspec.convert(fields, Binding)


def make_active(n: int, *, answer: float | None, last_seen: float) -> ActiveCall:
    return ActiveCall(
        id=f"call-{n}",
        caller="1001",
        callee="1002",
        route="app",
        trunk=None,
        start=T0,
        answer=answer,
        last_seen=last_seen,
        caller_call_id=f"a-{n}",
        callee_call_id=f"b-{n}",
    )


def test_sqlite_store_satisfies_the_protocol(tmp_path: Path) -> None:
    store: Store = SqliteStore(tmp_path / "x.db")
    assert isinstance(store, SqliteStore)


# -- lifecycle and schema ------------------------------------------------------------------


async def test_open_creates_wal_database_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "state.db"
    async with SqliteStore(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


async def test_commits_are_synchronous_full(store: SqliteStore) -> None:
    level = await store._read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert level == 2  # FULL: the WAL is fsynced at every commit


@pytest.mark.parametrize(
    ("table", "kind"),
    [
        ("bindings", Binding),
        ("cdrs", Cdr),
        ("active_calls", ActiveCall),
        ("accounts", Account),
        ("ledger", LedgerEntry),
        ("masked_bindings", MaskedBinding),
    ],
)
async def test_tables_have_a_column_per_record_field(
    store: SqliteStore, table: str, kind: type[msgspec.Struct]
) -> None:
    columns = await store._read(
        lambda conn: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    )
    assert set(kind.__struct_fields__) <= set(columns)


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStore(path) as first:
        await first.write_cdr(make_cdr(1))
    async with SqliteStore(path) as second:
        assert await second.list_cdrs() == [make_cdr(1)]


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStore(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} is newer"):
        await SqliteStore(path).open()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"cannot open the store"):
        await SqliteStore(path).open()


async def test_use_before_open_and_after_close_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    with pytest.raises(StoreError, match="not open"):
        await store.list_cdrs()
    await store.open()
    with pytest.raises(StoreError, match="already open"):
        await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="not open"):
        await store.write_cdr(make_cdr(1))


async def test_close_finishes_writes_already_handed_over(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    await store.open()
    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(store.write_cdr, make_cdr(n))
        await trio.testing.wait_all_tasks_blocked()
        await store.close()
    async with SqliteStore(path) as reopened:
        assert len(await reopened.list_cdrs(limit=1000)) == 50


# -- subscribers ---------------------------------------------------------------------------


async def test_subscriber_round_trip_and_lookup_by_number(store: SqliteStore) -> None:
    alice = Subscriber(
        username="1001",
        password="s3cret",
        numbers=["+8613900139001", "+8613900139011"],
        srtp="mandatory",
        fallback=False,
        balance="12.50",
    )
    bob = Subscriber(username="1002", password="pw", numbers=[])
    await store.upsert_subscriber(bob)
    await store.upsert_subscriber(alice)
    assert await store.get_subscriber("1001") == alice
    assert await store.get_subscriber("nobody") is None
    assert await store.list_subscribers() == [alice, bob]
    assert await store.subscriber_by_number("+8613900139011") == alice
    assert await store.subscriber_by_number("+8613900139099") is None


async def test_upsert_replaces_fields_and_numbers(store: SqliteStore) -> None:
    await store.upsert_subscriber(
        Subscriber(username="u", password="a", numbers=["+4915112345678"])
    )
    updated = Subscriber(username="u", password="b", numbers=["+4915187654321"], balance="3.00")
    await store.upsert_subscriber(updated)
    assert await store.get_subscriber("u") == updated
    assert await store.subscriber_by_number("+4915112345678") is None
    assert await store.subscriber_by_number("+4915187654321") == updated


async def test_number_owned_by_another_subscriber_is_refused(store: SqliteStore) -> None:
    await store.upsert_subscriber(Subscriber(username="a", password="x", numbers=["+12025550100"]))
    with pytest.raises(StoreError, match=r"number \+12025550100 already belongs to subscriber 'a'"):
        await store.upsert_subscriber(
            Subscriber(username="b", password="y", numbers=["+12025550100"])
        )
    assert await store.get_subscriber("b") is None  # the failed write left nothing behind
    with pytest.raises(StoreError, match="twice"):
        await store.upsert_subscriber(
            Subscriber(username="c", password="y", numbers=["+12025550101", "+12025550101"])
        )


async def test_delete_subscriber_frees_its_numbers(store: SqliteStore) -> None:
    await store.upsert_subscriber(Subscriber(username="a", password="x", numbers=["+12025550100"]))
    assert await store.delete_subscriber("a") is True
    assert await store.delete_subscriber("a") is False
    assert await store.subscriber_by_number("+12025550100") is None
    await store.upsert_subscriber(Subscriber(username="b", password="x", numbers=["+12025550100"]))
    assert (await store.subscriber_by_number("+12025550100")) is not None


# -- bindings ------------------------------------------------------------------------------


async def test_binding_round_trip_with_flow_fields(store: SqliteStore) -> None:
    binding = make_binding(
        "sip:1001@edgegw",
        "<sip:1001@198.51.100.7:40123;transport=tcp>",
        T0 + 3600,
        transport="tcp",
        flow_id="tcp:198.51.100.7:40123#4",
        instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        reg_id=1,
        user_agent="baresip",
    )
    await store.save_binding(binding)
    assert await store.bindings_for("sip:1001@edgegw", T0) == [binding]


async def test_saving_same_aor_and_contact_replaces(store: SqliteStore) -> None:
    aor, contact = "sip:1001@edgegw", "sip:1001@198.51.100.7:5060"
    await store.save_binding(make_binding(aor, contact, T0 + 60, cseq=1))
    await store.save_binding(make_binding(aor, contact, T0 + 120, cseq=2))
    assert [b.cseq for b in await store.bindings_for(aor, T0)] == [2]


async def test_expired_bindings_are_hidden_and_purged(store: SqliteStore) -> None:
    aor = "sip:1001@edgegw"
    await store.save_binding(make_binding(aor, "sip:a@h", T0 + 10))
    await store.save_binding(make_binding(aor, "sip:b@h", T0 + 100))
    await store.save_binding(make_binding("sip:1002@edgegw", "sip:c@h", T0 + 50))
    assert [b.contact for b in await store.bindings_for(aor, T0)] == ["sip:b@h", "sip:a@h"]
    # A binding expiring exactly now is expired.
    assert [b.contact for b in await store.bindings_for(aor, T0 + 10)] == ["sip:b@h"]
    assert [b.contact for b in await store.all_bindings(T0 + 20)] == ["sip:b@h", "sip:c@h"]
    assert await store.purge_expired_bindings(T0 + 50) == 2
    assert await store.purge_expired_bindings(T0 + 50) == 0
    assert [b.contact for b in await store.all_bindings(0.0)] == ["sip:b@h"]


async def test_remove_binding_and_bindings(store: SqliteStore) -> None:
    for contact in ("sip:a@h", "sip:b@h"):
        await store.save_binding(make_binding("sip:1001@edgegw", contact, T0 + 60))
    await store.save_binding(make_binding("sip:1002@edgegw", "sip:c@h", T0 + 60))
    await store.remove_binding("sip:1001@edgegw", "sip:a@h")
    await store.remove_binding("sip:1001@edgegw", "sip:absent@h")
    assert [b.contact for b in await store.bindings_for("sip:1001@edgegw", T0)] == ["sip:b@h"]
    await store.remove_bindings("sip:1001@edgegw")
    assert await store.bindings_for("sip:1001@edgegw", T0) == []
    assert len(await store.all_bindings(T0)) == 1


# -- CDRs ----------------------------------------------------------------------------------


async def test_cdrs_listed_newest_first_with_since_and_limit(store: SqliteStore) -> None:
    for n in range(5):
        await store.write_cdr(make_cdr(n, start=T0 + n * 10, answered=n % 2 == 0))
    listed = await store.list_cdrs()
    assert [c.id for c in listed] == ["call-4", "call-3", "call-2", "call-1", "call-0"]
    assert listed[1] == make_cdr(3, start=T0 + 30, answered=False)
    assert [c.id for c in await store.list_cdrs(since=T0 + 20)] == ["call-4", "call-3", "call-2"]
    assert [c.id for c in await store.list_cdrs(limit=2)] == ["call-4", "call-3"]
    with pytest.raises(ValueError, match="limit"):
        await store.list_cdrs(limit=0)


async def test_duplicate_cdr_id_fails_alone_in_its_batch(store: SqliteStore) -> None:
    await store.write_cdr(make_cdr(0))
    outcomes: dict[int, str] = {}

    async def write(n: int) -> None:
        try:
            await store.write_cdr(make_cdr(n))
        except StoreError as exc:
            outcomes[n] = str(exc)
        else:
            outcomes[n] = "ok"

    commits = store.commit_count
    async with trio.open_nursery() as nursery:
        for n in (1, 0, 2):
            nursery.start_soon(write, n)
    assert outcomes == {1: "ok", 0: "CDR 'call-0' is already recorded", 2: "ok"}
    assert store.commit_count == commits + 1
    assert len(await store.list_cdrs()) == 3


async def test_a_write_sqlite_refuses_is_a_store_error_and_alone(store: SqliteStore) -> None:
    bad = msgspec.structs.replace(make_binding("sip:a@h", "sip:a@h", T0 + 60), source_port=[1])
    good = make_binding("sip:b@h", "sip:b@h", T0 + 60)
    outcomes: list[str] = []

    async def save(binding: Binding) -> None:
        try:
            await store.save_binding(binding)
        except StoreError as exc:
            outcomes.append(str(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(save, bad)
        nursery.start_soon(save, good)
    (message,) = outcomes
    assert message.startswith(f"{store.path}: write failed: ")
    assert await store.all_bindings(T0) == [good]


async def test_a_failed_batch_fails_its_writers_and_the_store_recovers(
    store: SqliteStore,
) -> None:
    await store._read(lambda conn: conn.execute("PRAGMA busy_timeout=0").fetchall())
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match="write failed: database is locked"):
            await store.write_cdr(make_cdr(1))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await store.write_cdr(make_cdr(1))
    assert [c.id for c in await store.list_cdrs()] == ["call-1"]


async def test_group_commit_batches_concurrent_writers(store: SqliteStore) -> None:
    before = store.commit_count
    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(store.write_cdr, make_cdr(n, start=T0 + n))
    commits = store.commit_count - before
    assert 1 <= commits <= 5, commits
    assert len(await store.list_cdrs(limit=500)) == 200


async def test_sequential_writes_commit_each_time(store: SqliteStore) -> None:
    before = store.commit_count
    for n in range(3):
        await store.write_cdr(make_cdr(n))
    assert store.commit_count == before + 3


async def test_cancelled_writer_still_commits_its_cdr(store: SqliteStore) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.write_cdr(make_cdr(7))
    assert scope.cancelled_caught
    assert [c.id for c in await store.list_cdrs()] == ["call-7"]


async def test_group_commit_throughput_figure(store: SqliteStore, tmp_path: Path) -> None:
    """Prints CDRs per second, sequential and group-committed (a figure, not a limit)."""
    started = time.perf_counter()
    for n in range(200):
        await store.write_cdr(make_cdr(n))
    sequential = 200 / (time.perf_counter() - started)
    commits, total = store.commit_count, 4000
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in range(200, 200 + total):
            nursery.start_soon(store.write_cdr, make_cdr(n))
    grouped = total / (time.perf_counter() - started)
    print(
        f"\nCDR writes: sequential {sequential:.0f}/s; group commit {grouped:.0f}/s "
        f"({total} concurrent writers, {store.commit_count - commits} commits)"
    )
    assert len(await store.list_cdrs(limit=10_000)) == total + 200


# -- active-call checkpoint and crash recovery ---------------------------------------------


async def test_recovery_turns_checkpointed_calls_into_cdrs(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStore(path) as store:
        await store.checkpoint_active_calls([make_active(9, answer=None, last_seen=T0 + 5)], T0 + 5)
        answered = make_active(1, answer=T0 + 3, last_seen=T0 + 40)
        ringing = make_active(2, answer=None, last_seen=T0 + 40)
        await store.checkpoint_active_calls([answered, ringing], T0 + 40)
    # The process "crashed": nothing closed those calls. A restart recovers them.
    async with SqliteStore(path) as store:
        recovered = await store.recover_open_calls(T0 + 500)
        assert [c.id for c in recovered] == ["call-1", "call-2"]  # call-9 was replaced
        first, second = recovered
        assert (first.answer, first.end, first.duration) == (T0 + 3, T0 + 40, 37.0)
        assert (first.disposition, first.sip_status) == ("answered", 200)
        assert (second.end, second.duration, second.disposition) == (T0 + 40, 0.0, "failed")
        assert second.sip_status is None
        assert {c.end_reason for c in recovered} == {"gateway-restart"}
        assert (first.caller_call_id, first.callee_call_id) == ("a-1", "b-1")
        assert sorted(c.id for c in await store.list_cdrs()) == ["call-1", "call-2"]
        assert await store.recover_open_calls(T0 + 600) == []


async def test_recovery_does_not_duplicate_a_cdr_already_written(store: SqliteStore) -> None:
    await store.checkpoint_active_calls([make_active(1, answer=T0 + 2, last_seen=T0 + 9)], T0 + 9)
    await store.write_cdr(make_cdr(1))  # the call ended; the crash came before a checkpoint
    assert await store.recover_open_calls(T0 + 100) == []
    assert await store.list_cdrs() == [make_cdr(1)]


async def test_recovered_end_is_clamped_against_clock_steps(store: SqliteStore) -> None:
    calls = [
        make_active(1, answer=T0 + 10, last_seen=T0 + 5),  # seen before its answer
        make_active(2, answer=None, last_seen=T0 + 900),  # after the checkpoint time
    ]
    await store.checkpoint_active_calls(calls, T0 + 60)
    early, future = await store.recover_open_calls(T0 + 100)
    assert (early.end, early.duration) == (T0 + 10, 0.0)
    assert future.end == T0 + 60


async def test_recovery_with_a_clock_behind_the_calls_keeps_last_seen(store: SqliteStore) -> None:
    await store.checkpoint_active_calls([make_active(1, answer=T0 + 1, last_seen=T0 + 30)], T0 + 30)
    # A box without a real-time clock may boot believing it is 1970.
    (cdr,) = await store.recover_open_calls(1.0)
    assert (cdr.end, cdr.duration) == (T0 + 30, 29.0)


async def test_checkpoint_refuses_duplicate_ids(store: SqliteStore) -> None:
    call = make_active(1, answer=None, last_seen=T0)
    with pytest.raises(ValueError, match="'call-1' appears twice"):
        await store.checkpoint_active_calls([call, call], T0)


async def test_empty_checkpoint_clears_the_set(store: SqliteStore) -> None:
    await store.checkpoint_active_calls([make_active(1, answer=None, last_seen=T0)], T0)
    await store.checkpoint_active_calls([], T0 + 1)
    assert await store.recover_open_calls(T0 + 2) == []


# -- kill -9 durability --------------------------------------------------------------------

_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import trio
    from gateway.store.model import Cdr
    from gateway.store.sqlite import SqliteStore

    def cdr(n):
        return Cdr(id=f"k-{n}", caller="1001", callee="1002", route="app", trunk=None,
                   start=1.0 + n, answer=None, end=2.0 + n, duration=0.0,
                   disposition="cancelled", end_reason="cancel", sip_status=487,
                   caller_call_id=f"c-{n}", callee_call_id=None)

    async def main():
        store = SqliteStore(Path(sys.argv[1]))
        await store.open()
        async with trio.open_nursery() as nursery:
            for n in range(int(sys.argv[2])):
                nursery.start_soon(store.write_cdr, cdr(n))
        await store.write_cdr(cdr(-1))
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main)
    """
)


async def test_acknowledged_cdrs_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    result = await trio.run_process(
        [sys.executable, "-c", _KILLER, str(path), "300"],
        cwd=REPO,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert result.stdout == b"written\n"
    # The process never closed the database: the rows live only in the WAL.
    assert Path(f"{path}-wal").stat().st_size > 0
    async with SqliteStore(path) as store:
        ids = {c.id for c in await store.list_cdrs(limit=1000)}
    assert ids == {f"k-{n}" for n in range(-1, 300)}


async def test_a_version_1_store_gains_subscriber_codecs(tmp_path: Path) -> None:
    """A store written before per-subscriber codecs opens, keeps its rows, and stores them."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO subscribers VALUES ('1001', 'pw', 'optional', 1, '5.00')")
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        old = await store.get_subscriber("1001")
        assert old is not None and old.codecs == [] and old.balance == "5.00"
        await store.upsert_subscriber(
            Subscriber(username="1002", password="pw", numbers=[], codecs=["PCMA", "opus"])
        )
        again = await store.get_subscriber("1002")
        assert again is not None and again.codecs == ["PCMA", "opus"]
