"""The control socket's `cdr` query: argument checks and pages of a window from a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.cdr_query import DEFAULT_LIMIT, CdrQuery, CdrQueryError, fetch_cdrs
from gateway.store.model import Cdr
from gateway.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


def make_cdr(n: int, *, partner: str | None = None) -> Cdr:
    """Call n started at T0 + n seconds."""
    return Cdr(
        id=f"c{n:03d}",
        caller="1001",
        callee="+8613800138000",
        route="trunk",
        trunk="carrier",
        start=T0 + n,
        answer=T0 + n + 1,
        end=T0 + n + 31,
        duration=30.0,
        disposition="answered",
        end_reason="caller-bye",
        sip_status=200,
        caller_call_id=f"a{n}",
        callee_call_id=f"b{n}",
        partner=partner,
        payer=f"partner:{partner}" if partner else "subscriber:1001",
        cost="0.10",
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "state.db") as opened:
        for n in range(60):
            await opened.write_cdr(make_cdr(n, partner="demo" if n % 3 == 0 else None))
        yield opened


def ids(cdrs: list[Cdr]) -> list[int]:
    return [int(c.id[1:]) for c in cdrs]


def test_defaults_are_the_listing() -> None:
    assert CdrQuery.from_args({}) == CdrQuery(limit=DEFAULT_LIMIT)
    assert CdrQuery.from_args({"limit": 5, "since": None}) == CdrQuery(limit=5)
    query = CdrQuery.from_args(
        {"since": 1, "until": 2.5, "partner": "demo", "limit": 7, "offset": 14}
    )
    assert query == CdrQuery(since=1.0, until=2.5, partner="demo", limit=7, offset=14)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"limit": 0}, "limit must be an integer >= 1, got 0"),
        ({"limit": "5"}, "limit must be an integer >= 1, got '5'"),
        ({"limit": True}, "limit must be an integer >= 1, got True"),
        ({"offset": -1}, "offset must be an integer >= 0, got -1"),
        ({"offset": 1.5}, "offset must be an integer >= 0, got 1.5"),
        ({"since": "yesterday"}, "since must be epoch seconds (a number), got 'yesterday'"),
        ({"until": float("inf")}, "until must be a finite time, got inf"),
        ({"partner": ""}, "partner must be a non-empty name, got ''"),
        ({"partner": 7}, "partner must be a non-empty name, got 7"),
        ({"befor": 1}, "unknown argument(s) befor; the cdr command takes since, until"),
    ],
)
def test_malformed_arguments_are_named(args: dict[str, Any], message: str) -> None:
    with pytest.raises(CdrQueryError) as caught:
        CdrQuery.from_args(args)
    assert message in str(caught.value)


async def test_listing_is_the_newest_first(store: SqliteStore) -> None:
    assert ids(await fetch_cdrs(store, CdrQuery(limit=3))) == [59, 58, 57]
    assert ids(await fetch_cdrs(store, CdrQuery(since=T0 + 58))) == [59, 58]


async def test_until_is_exclusive_and_reads_past_newer_rows(store: SqliteStore) -> None:
    # 50 rows start at or after `until`, more than the page asks for: none of them shows.
    page = await fetch_cdrs(store, CdrQuery(since=T0 + 5, until=T0 + 10, limit=3))
    assert ids(page) == [9, 8, 7]
    rest = await fetch_cdrs(store, CdrQuery(since=T0 + 5, until=T0 + 10, limit=3, offset=3))
    assert ids(rest) == [6, 5]


async def test_pages_cover_the_window_once(store: SqliteStore) -> None:
    seen: list[int] = []
    offset = 0
    while True:
        page = await fetch_cdrs(store, CdrQuery(until=T0 + 50, limit=7, offset=offset))
        seen += ids(page)
        if len(page) < 7:
            break
        offset += 7
    assert seen == list(range(49, -1, -1))


async def test_partner_and_window_together(store: SqliteStore) -> None:
    page = await fetch_cdrs(
        store, CdrQuery(since=T0 + 10, until=T0 + 30, partner="demo", limit=100)
    )
    assert ids(page) == [27, 24, 21, 18, 15, 12]
    assert {c.partner for c in page} == {"demo"}
    assert await fetch_cdrs(store, CdrQuery(partner="nobody")) == []
    assert await fetch_cdrs(store, CdrQuery(since=T0 + 30, until=T0 + 30)) == []
