"""SQLite implementation of the store, the embedded default (DESIGN rule 5).

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a commit has reached
the disk (the WAL is fsynced) before the write that asked for it returns; a ``kill -9`` or a
power cut loses nothing that was acknowledged.

Speed: every write goes through one queue and is *group committed*. The first writer that
finds no commit in progress becomes the leader: it takes every queued write, applies each in
its own SAVEPOINT (one failing write is rolled back alone and gets its own error) and commits
them all in one transaction, paying one fsync for the whole batch, then wakes their waiters.
Writes that queue up meanwhile form the next batch, so the fsync latency bounds how often we
commit, not how many calls per second we can record.

Threads: blocking sqlite3 calls run through ``trio.to_thread.run_sync`` with a capacity
limiter of one, so exactly one connection is used by one thread at a time: one writer, and
reads simply take their turn between batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

import msgspec
import trio

from gateway.store.base import StoreError
from gateway.store.model import ActiveCall, Binding, Cdr, Subscriber

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

# Each entry migrates the schema from version i to i+1. Never edit a released entry: append.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE subscribers (
            username TEXT PRIMARY KEY,
            password TEXT NOT NULL,
            srtp TEXT NOT NULL,
            fallback INTEGER NOT NULL,
            balance TEXT NOT NULL)""",
        """CREATE TABLE subscriber_numbers (
            number TEXT PRIMARY KEY,
            username TEXT NOT NULL
                REFERENCES subscribers (username) ON DELETE CASCADE ON UPDATE CASCADE,
            position INTEGER NOT NULL)""",
        "CREATE INDEX subscriber_numbers_by_user ON subscriber_numbers (username, position)",
        """CREATE TABLE bindings (
            aor TEXT NOT NULL,
            contact TEXT NOT NULL,
            expires_at REAL NOT NULL,
            source_host TEXT NOT NULL,
            source_port INTEGER NOT NULL,
            local_host TEXT NOT NULL,
            local_port INTEGER NOT NULL,
            transport TEXT NOT NULL,
            flow_id TEXT,
            instance TEXT,
            reg_id INTEGER,
            call_id TEXT NOT NULL,
            cseq INTEGER NOT NULL,
            user_agent TEXT,
            PRIMARY KEY (aor, contact))""",
        "CREATE INDEX bindings_by_expiry ON bindings (expires_at)",
        """CREATE TABLE cdrs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            caller TEXT NOT NULL,
            callee TEXT NOT NULL,
            route TEXT NOT NULL,
            trunk TEXT,
            start REAL NOT NULL,
            answer REAL,
            "end" REAL NOT NULL,
            duration REAL NOT NULL,
            disposition TEXT NOT NULL,
            end_reason TEXT NOT NULL,
            sip_status INTEGER,
            caller_call_id TEXT NOT NULL,
            callee_call_id TEXT)""",
        "CREATE INDEX cdrs_by_start ON cdrs (start)",
        """CREATE TABLE active_calls (
            id TEXT PRIMARY KEY,
            caller TEXT NOT NULL,
            callee TEXT NOT NULL,
            route TEXT NOT NULL,
            trunk TEXT,
            start REAL NOT NULL,
            answer REAL,
            last_seen REAL NOT NULL,
            caller_call_id TEXT NOT NULL,
            callee_call_id TEXT)""",
    ),
    # 1 -> 2: a subscriber's own codec preference, comma-separated ("" = the gateway's).
    ("ALTER TABLE subscribers ADD COLUMN codecs TEXT NOT NULL DEFAULT ''",),
)

SCHEMA_VERSION = len(_MIGRATIONS)

# Bounds one transaction's size (and its time holding the writer) under a flood of writes.
_MAX_BATCH = 1000

_RESTART_REASON = "gateway-restart"


def _columns(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return kind.__struct_fields__


def _column_list(kind: type[msgspec.Struct]) -> str:
    return ", ".join(f'"{name}"' for name in _columns(kind))


def _insert_sql(table: str, kind: type[msgspec.Struct], verb: str = "INSERT") -> str:
    marks = ", ".join("?" for _ in _columns(kind))
    return f"{verb} INTO {table} ({_column_list(kind)}) VALUES ({marks})"


def _decode(kind: type[S], table: str, row: Sequence[object]) -> S:
    try:
        return msgspec.convert(dict(zip(_columns(kind), row, strict=True)), kind)
    except msgspec.ValidationError as exc:
        raise StoreError(f"corrupt row in table {table}: {exc}") from exc


_BINDING_COLUMNS = _column_list(Binding)
_CDR_COLUMNS = _column_list(Cdr)
_ACTIVE_COLUMNS = _column_list(ActiveCall)


@dataclass(eq=False)
class _WriteOp(Generic[T]):
    """One queued write: applied inside the batch transaction by the writer thread."""

    apply: Callable[[sqlite3.Connection], T]
    result: T | None = None
    error: BaseException | None = None
    done: bool = False


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, group-committed writes.

    ``commit_count`` counts committed write transactions (each is one fsync), so tests and
    metrics can see how well writes are batched.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.commit_count = 0
        self._conn: sqlite3.Connection | None = None
        self._closing = False
        self._limiter: trio.CapacityLimiter | None = None
        self._pending: list[_WriteOp[Any]] = []
        self._flushing = False
        self._flush_ended: trio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            raise StoreError(f"{self.path}: store is already open")
        self._limiter = trio.CapacityLimiter(1)
        self._flush_ended = trio.Event()
        try:
            self._conn = await trio.to_thread.run_sync(self._connect, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    async def close(self) -> None:
        conn = self._conn
        if conn is None or self._closing:
            return
        self._closing = True
        try:
            with trio.CancelScope(shield=True):
                await self._drain()
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
        finally:
            self._conn = None
            self._closing = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The limiter serialises every use of the connection, so any worker thread may use it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: the file system refused WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            _migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None or self._closing:
            raise StoreError(f"{self.path}: store is not open")
        return self._conn

    # -- the writer: group commit --------------------------------------------------------

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        self._require_open()
        op: _WriteOp[T] = _WriteOp(apply)
        self._pending.append(op)
        # A write handed to the store is carried through: cancelling the caller only takes
        # effect once the write has committed (or failed), never half-way.
        with trio.CancelScope(shield=True):
            while not op.done:
                await self._lead_or_wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        if isinstance(op.error, StoreError | ValueError):
            raise op.error  # raised by this write's own checks: its own exception object
        if op.error is not None:
            raise StoreError(f"{self.path}: write failed: {op.error}") from op.error
        return cast(T, op.result)

    async def _lead_or_wait(self) -> None:
        assert self._flush_ended is not None
        if self._flushing:
            await self._flush_ended.wait()
        else:
            await self._flush_once()

    async def _drain(self) -> None:
        while self._pending or self._flushing:
            await self._lead_or_wait()

    async def _flush_once(self) -> None:
        conn = self._conn
        assert conn is not None
        self._flushing = True
        self._flush_ended = trio.Event()
        batch: list[_WriteOp[Any]] = []
        try:
            # Let writers scheduled in the same tick queue up and share this commit.
            await trio.lowlevel.checkpoint()
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            await trio.to_thread.run_sync(self._apply_batch, conn, batch, limiter=self._limiter)
        except Exception as exc:
            for op in batch:
                op.error = exc
        finally:
            for op in batch:
                op.done = True
            self._flushing = False
            self._flush_ended.set()

    def _apply_batch(self, conn: sqlite3.Connection, batch: list[_WriteOp[Any]]) -> None:
        """Runs in the worker thread: one transaction, one savepoint per write."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            applied = False
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.apply(conn)
                    applied = True
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT" if applied else "ROLLBACK")
        except sqlite3.Error as exc:
            _rollback_quietly(conn)
            for op in batch:
                op.result = None
                op.error = exc
            return
        except BaseException:
            _rollback_quietly(conn)  # never leave the connection inside a transaction
            raise
        if applied:
            self.commit_count += 1

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._require_open()
        try:
            return await trio.to_thread.run_sync(query, conn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc

    # -- subscribers ---------------------------------------------------------------------

    async def upsert_subscriber(self, subscriber: Subscriber) -> None:
        await self._write(partial(_upsert_subscriber, subscriber))

    async def delete_subscriber(self, username: str) -> bool:
        return await self._write(partial(_delete_subscriber, username))

    async def get_subscriber(self, username: str) -> Subscriber | None:
        return await self._read(partial(_get_subscriber, username))

    async def list_subscribers(self) -> list[Subscriber]:
        return await self._read(_list_subscribers)

    async def subscriber_by_number(self, e164: str) -> Subscriber | None:
        return await self._read(partial(_subscriber_by_number, e164))

    # -- bindings ------------------------------------------------------------------------

    async def save_binding(self, binding: Binding) -> None:
        await self._write(partial(_save_binding, binding))

    async def remove_binding(self, aor: str, contact: str) -> None:
        await self._write(
            partial(_execute, "DELETE FROM bindings WHERE aor=? AND contact=?", (aor, contact))
        )

    async def remove_bindings(self, aor: str) -> None:
        await self._write(partial(_execute, "DELETE FROM bindings WHERE aor=?", (aor,)))

    async def bindings_for(self, aor: str, now: float) -> list[Binding]:
        sql = (
            f"SELECT {_BINDING_COLUMNS} FROM bindings WHERE aor=? AND expires_at>? "
            "ORDER BY expires_at DESC, contact"
        )
        return await self._read(partial(_select, Binding, "bindings", sql, (aor, now)))

    async def all_bindings(self, now: float) -> list[Binding]:
        sql = f"SELECT {_BINDING_COLUMNS} FROM bindings WHERE expires_at>? ORDER BY aor, contact"
        return await self._read(partial(_select, Binding, "bindings", sql, (now,)))

    async def purge_expired_bindings(self, now: float) -> int:
        return await self._write(
            partial(_execute, "DELETE FROM bindings WHERE expires_at<=?", (now,))
        )

    # -- CDRs and the active-call checkpoint ---------------------------------------------

    async def write_cdr(self, cdr: Cdr) -> None:
        await self._write(partial(_insert_cdr, cdr))

    async def list_cdrs(self, *, since: float | None = None, limit: int = 100) -> list[Cdr]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where, args = ("", ()) if since is None else ("WHERE start>=?", (since,))
        sql = f"SELECT {_CDR_COLUMNS} FROM cdrs {where} ORDER BY start DESC, seq DESC LIMIT ?"
        return await self._read(partial(_select, Cdr, "cdrs", sql, (*args, limit)))

    async def checkpoint_active_calls(self, calls: list[ActiveCall], now: float) -> None:
        """Replace the stored set of calls in progress with ``calls``, atomically.

        A ``last_seen`` later than ``now`` (a wall-clock step) is stored as ``now``, so a
        recovered call never ends in the future of the checkpoint that saw it.
        """
        ids = [call.id for call in calls]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"active call {duplicate!r} appears twice in the checkpoint")
        rows = [msgspec.structs.replace(c, last_seen=min(c.last_seen, now)) for c in calls]
        await self._write(partial(_replace_active_calls, rows))

    async def recover_open_calls(self, now: float) -> list[Cdr]:
        """Turn every checkpointed call into a CDR ending at its ``last_seen``.

        Answered calls get disposition "answered" (status 200), the others "failed"; the
        end reason is "gateway-restart". The end is never before the answer (or start) and,
        when the clock is sane (``now`` after that), never after ``now``. A call whose CDR
        was already written (the crash came between ``write_cdr`` and the next checkpoint)
        is not recorded twice. The checkpoint table is emptied in the same transaction.
        """
        return await self._write(partial(_recover_open_calls, now))


# -- operations run in the worker thread ---------------------------------------------------


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: database schema version {current} is newer than this edgegw "
                f"understands ({SCHEMA_VERSION})"
            )
        for statements in _MIGRATIONS[current:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        raise


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # Called while another error is already being reported; a failed rollback adds nothing.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            return


def _execute(sql: str, args: tuple[object, ...], conn: sqlite3.Connection) -> int:
    return conn.execute(sql, args).rowcount


def _select(
    kind: type[S], table: str, sql: str, args: tuple[object, ...], conn: sqlite3.Connection
) -> list[S]:
    return [_decode(kind, table, row) for row in conn.execute(sql, args)]


def _subscriber_from_row(row: Sequence[object], numbers: list[str]) -> Subscriber:
    username, password, srtp, fallback, balance, codecs = row
    record = {
        "username": username,
        "password": password,
        "numbers": numbers,
        "srtp": srtp,
        "fallback": bool(fallback),
        "balance": balance,
        "codecs": [c for c in str(codecs).split(",") if c],
    }
    try:
        return msgspec.convert(record, Subscriber)
    except msgspec.ValidationError as exc:
        raise StoreError(f"corrupt row in table subscribers: {exc}") from exc


_SUBSCRIBER_SELECT = "SELECT username, password, srtp, fallback, balance, codecs FROM subscribers"


def _numbers_of(conn: sqlite3.Connection, username: str) -> list[str]:
    rows = conn.execute(
        "SELECT number FROM subscriber_numbers WHERE username=? ORDER BY position", (username,)
    )
    return [str(number) for (number,) in rows]


def _get_subscriber(username: str, conn: sqlite3.Connection) -> Subscriber | None:
    row = conn.execute(f"{_SUBSCRIBER_SELECT} WHERE username=?", (username,)).fetchone()
    if row is None:
        return None
    return _subscriber_from_row(row, _numbers_of(conn, username))


def _list_subscribers(conn: sqlite3.Connection) -> list[Subscriber]:
    numbers: dict[str, list[str]] = {}
    for username, number in conn.execute(
        "SELECT username, number FROM subscriber_numbers ORDER BY username, position"
    ):
        numbers.setdefault(username, []).append(number)
    rows = conn.execute(f"{_SUBSCRIBER_SELECT} ORDER BY username").fetchall()
    return [_subscriber_from_row(row, numbers.get(row[0], [])) for row in rows]


def _subscriber_by_number(e164: str, conn: sqlite3.Connection) -> Subscriber | None:
    row = conn.execute("SELECT username FROM subscriber_numbers WHERE number=?", (e164,)).fetchone()
    return None if row is None else _get_subscriber(row[0], conn)


def _upsert_subscriber(subscriber: Subscriber, conn: sqlite3.Connection) -> None:
    _check_numbers_free(conn, subscriber.username, subscriber.numbers)
    conn.execute(
        "INSERT INTO subscribers (username, password, srtp, fallback, balance, codecs) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
        "password=excluded.password, srtp=excluded.srtp, fallback=excluded.fallback, "
        "balance=excluded.balance, codecs=excluded.codecs",
        (
            subscriber.username,
            subscriber.password,
            subscriber.srtp,
            int(subscriber.fallback),
            subscriber.balance,
            ",".join(subscriber.codecs),
        ),
    )
    conn.execute("DELETE FROM subscriber_numbers WHERE username=?", (subscriber.username,))
    conn.executemany(
        "INSERT INTO subscriber_numbers (number, username, position) VALUES (?, ?, ?)",
        [(n, subscriber.username, i) for i, n in enumerate(subscriber.numbers)],
    )


def _check_numbers_free(conn: sqlite3.Connection, username: str, numbers: Iterable[str]) -> None:
    seen: set[str] = set()
    for number in numbers:
        if number in seen:
            raise StoreError(f"subscriber {username!r} lists number {number} twice")
        seen.add(number)
        row = conn.execute(
            "SELECT username FROM subscriber_numbers WHERE number=?", (number,)
        ).fetchone()
        if row is not None and row[0] != username:
            raise StoreError(f"number {number} already belongs to subscriber {row[0]!r}")


def _delete_subscriber(username: str, conn: sqlite3.Connection) -> bool:
    return conn.execute("DELETE FROM subscribers WHERE username=?", (username,)).rowcount > 0


def _save_binding(binding: Binding, conn: sqlite3.Connection) -> None:
    conn.execute(
        _insert_sql("bindings", Binding, "INSERT OR REPLACE"), msgspec.structs.astuple(binding)
    )


def _insert_cdr(cdr: Cdr, conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT 1 FROM cdrs WHERE id=?", (cdr.id,)).fetchone() is not None:
        raise StoreError(f"CDR {cdr.id!r} is already recorded")
    conn.execute(_insert_sql("cdrs", Cdr), msgspec.structs.astuple(cdr))


def _replace_active_calls(calls: list[ActiveCall], conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM active_calls")
    conn.executemany(
        _insert_sql("active_calls", ActiveCall), [msgspec.structs.astuple(c) for c in calls]
    )


def _cdr_for_open_call(call: ActiveCall, now: float) -> Cdr:
    floor = call.start if call.answer is None else max(call.answer, call.start)
    end = max(call.last_seen, floor)
    if now >= floor:
        end = min(end, now)
    answered = call.answer is not None
    return Cdr(
        id=call.id,
        caller=call.caller,
        callee=call.callee,
        route=call.route,
        trunk=call.trunk,
        start=call.start,
        answer=call.answer,
        end=end,
        duration=end - floor if answered else 0.0,
        disposition="answered" if answered else "failed",
        end_reason=_RESTART_REASON,
        sip_status=200 if answered else None,
        caller_call_id=call.caller_call_id,
        callee_call_id=call.callee_call_id,
    )


def _recover_open_calls(now: float, conn: sqlite3.Connection) -> list[Cdr]:
    sql = f"SELECT {_ACTIVE_COLUMNS} FROM active_calls ORDER BY start, id"
    calls = _select(ActiveCall, "active_calls", sql, (), conn)
    recovered: list[Cdr] = []
    for call in calls:
        if conn.execute("SELECT 1 FROM cdrs WHERE id=?", (call.id,)).fetchone() is not None:
            continue
        cdr = _cdr_for_open_call(call, now)
        conn.execute(_insert_sql("cdrs", Cdr), msgspec.structs.astuple(cdr))
        recovered.append(cdr)
    conn.execute("DELETE FROM active_calls")
    return recovered
