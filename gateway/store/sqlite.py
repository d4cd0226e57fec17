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

Money: amounts are TEXT holding whole cents ("12.50") and are added with ``Decimal`` in the
writer thread, never by SQLite (whose arithmetic is float). Every balance change is one
write: the ledger row (with the balance after it) and the new balance, and for a call the
CDR too, commit together or not at all (the write's SAVEPOINT). Masked numbers are picked
inside one write as well, so the one writer hands each free number out once.
"""

from __future__ import annotations

import math
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, partial
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, get_args

import msgspec
import trio

from gateway.calls.rating import RatingError, Tariff, billable_seconds, cost, tariff
from gateway.store.base import PoolExhausted, StoreError
from gateway.store.model import (
    Account,
    AccountKind,
    ActiveCall,
    Binding,
    Cdr,
    Charge,
    LedgerEntry,
    MaskedBinding,
    Subscriber,
)

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
    # 2 -> 3: money (accounts and their ledger, rated CDRs), masked numbers, end causes.
    # List fields are JSON text; money is TEXT of whole cents.
    (
        """CREATE TABLE accounts (
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            balance TEXT NOT NULL,
            PRIMARY KEY (kind, name))""",
        """CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            account TEXT NOT NULL,
            amount TEXT NOT NULL,
            balance_after TEXT NOT NULL,
            reason TEXT NOT NULL,
            call_id TEXT,
            at REAL NOT NULL,
            FOREIGN KEY (kind, account) REFERENCES accounts (kind, name))""",
        "CREATE INDEX ledger_by_account ON ledger (kind, account, at)",
        # One call is charged once, whatever retries or trunk failovers happened.
        "CREATE UNIQUE INDEX ledger_one_charge_per_call ON ledger (call_id) WHERE reason='call'",
        """CREATE TABLE masked_bindings (
            id TEXT PRIMARY KEY,
            partner TEXT NOT NULL,
            number TEXT NOT NULL,
            a TEXT NOT NULL,
            b TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL)""",
        "CREATE INDEX masked_bindings_by_number ON masked_bindings (number, expires_at)",
        "ALTER TABLE subscribers ADD COLUMN mobile TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE cdrs ADD COLUMN payer TEXT",
        "ALTER TABLE cdrs ADD COLUMN partner TEXT",
        "ALTER TABLE cdrs ADD COLUMN tariff_prefix TEXT",
        "ALTER TABLE cdrs ADD COLUMN rate_per_minute TEXT",
        "ALTER TABLE cdrs ADD COLUMN billing_increment TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE cdrs ADD COLUMN billable_seconds INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE cdrs ADD COLUMN cost TEXT NOT NULL DEFAULT '0.00'",
        "ALTER TABLE cdrs ADD COLUMN q850_cause INTEGER",
        "ALTER TABLE cdrs ADD COLUMN reason_text TEXT",
        "ALTER TABLE cdrs ADD COLUMN trunks_tried TEXT NOT NULL DEFAULT '[]'",
        "CREATE INDEX cdrs_by_partner ON cdrs (partner, start)",
        "ALTER TABLE active_calls ADD COLUMN payer TEXT",
        "ALTER TABLE active_calls ADD COLUMN partner TEXT",
        "ALTER TABLE active_calls ADD COLUMN tariff_prefix TEXT",
        "ALTER TABLE active_calls ADD COLUMN rate_per_minute TEXT",
        "ALTER TABLE active_calls ADD COLUMN billing_increment TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE active_calls ADD COLUMN granted_seconds INTEGER",
    ),
    # 2: per-leg quality in the CDR (E-model MOS, loss %, jitter and round-trip ms).
    tuple(
        f"ALTER TABLE cdrs ADD COLUMN {name}_{leg} REAL"
        for name in ("mos", "loss", "jitter", "rtt")
        for leg in ("a", "b")
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)

# Bounds one transaction's size (and its time holding the writer) under a flood of writes.
_MAX_BATCH = 1000

_RESTART_REASON = "gateway-restart"

_ACCOUNT_KINDS: tuple[str, ...] = get_args(AccountKind)
_ADJUST_REASONS = ("topup", "adjustment")
# Whole cents, optional sign; at most 15 integer digits keeps every sum exact in Decimal's
# default 28-digit context.
_MONEY = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,2})?")
_CENT = Decimal("0.01")


def _columns(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return kind.__struct_fields__


@cache
def _list_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of a record stored as JSON text (SQLite has no list type)."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if isinstance(f.type, msgspec.inspect.ListType))


def _row(record: msgspec.Struct) -> tuple[object, ...]:
    lists = _list_fields(type(record))
    return tuple(
        msgspec.json.encode(value).decode() if name in lists else value
        for name, value in zip(_columns(type(record)), msgspec.structs.astuple(record), strict=True)
    )


def _column_list(kind: type[msgspec.Struct]) -> str:
    return ", ".join(f'"{name}"' for name in _columns(kind))


def _insert_sql(table: str, kind: type[msgspec.Struct], verb: str = "INSERT") -> str:
    marks = ", ".join("?" for _ in _columns(kind))
    return f"{verb} INTO {table} ({_column_list(kind)}) VALUES ({marks})"


def _decode(kind: type[S], table: str, row: Sequence[object]) -> S:
    lists = _list_fields(kind)
    try:
        fields = {
            name: msgspec.json.decode(str(value)) if name in lists else value
            for name, value in zip(_columns(kind), row, strict=True)
        }
        return msgspec.convert(fields, kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise StoreError(f"corrupt row in table {table}: {exc}") from exc


_BINDING_COLUMNS = _column_list(Binding)
_CDR_COLUMNS = _column_list(Cdr)
_ACTIVE_COLUMNS = _column_list(ActiveCall)
_LEDGER_COLUMNS = _column_list(LedgerEntry)
_MASKED_COLUMNS = _column_list(MaskedBinding)


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
        await self.settle_call(cdr, None)

    async def settle_call(self, cdr: Cdr, charge: Charge | None) -> None:
        """Write the CDR and, when charged, the ledger row and the balance: one transaction.

        The charge must be the CDR's own (same call id, and the CDR's payer when it names
        one) and a valid amount >= 0. A charge of 0.00 changes no balance, so it writes no
        ledger row. The balance may end below zero: the call happened and its CDR is never
        lost for money (credit control, not the store, keeps calls within the balance).
        """
        if charge is not None:
            _check_charge(cdr, charge)
        await self._write(partial(_settle_call, cdr, charge))

    async def list_cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        partner: str | None = None,
    ) -> list[Cdr]:
        _check_limit(limit)
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, got {offset}")
        conditions: list[str] = []
        args: list[object] = []
        if since is not None:
            conditions.append("start>=?")
            args.append(since)
        if until is not None:
            conditions.append("start<?")
            args.append(until)
        if partner is not None:
            conditions.append("partner=?")
            args.append(partner)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            f"SELECT {_CDR_COLUMNS} FROM cdrs {where} "
            "ORDER BY start DESC, seq DESC LIMIT ? OFFSET ?"
        )
        return await self._read(partial(_select, Cdr, "cdrs", sql, (*args, limit, offset)))

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
        for row in rows:
            _check_active_billing(row)
        await self._write(partial(_replace_active_calls, rows))

    async def recover_open_calls(self, now: float) -> list[Cdr]:
        """Turn every checkpointed call into a CDR ending at its ``last_seen``.

        Answered calls get disposition "answered" (status 200), the others "failed"; the
        end reason is "gateway-restart". The end is never before the answer (or start) and,
        when the clock is sane (``now`` after that), never after ``now``. A call whose CDR
        was already written (the crash came between ``write_cdr`` and the next checkpoint)
        is not recorded twice. The checkpoint table is emptied in the same transaction.

        A paid call (payer and tariff checkpointed) is rated on its talk time up to the end
        above, never beyond its ``granted_seconds``, and charged to its payer: CDR, ledger
        row and balance in the same transaction. When the payer's account is gone the CDR
        is still written, with cost 0.00.
        """
        return await self._write(partial(_recover_open_calls, now))

    # -- money -----------------------------------------------------------------------------

    async def ensure_account(self, kind: AccountKind, name: str, initial_balance: str) -> Account:
        _check_account_key(kind, name)
        initial = _money(initial_balance, f"initial balance of {kind} {name!r}")
        if initial < 0:
            raise StoreError(
                f"initial balance of {kind} {name!r} must not be negative, got {initial_balance!r}"
            )
        return await self._write(partial(_ensure_account, kind, name, initial, time.time()))

    async def get_account(self, kind: AccountKind, name: str) -> Account | None:
        sql = "SELECT kind, name, balance FROM accounts WHERE kind=? AND name=?"
        found = await self._read(partial(_select, Account, "accounts", sql, (kind, name)))
        return found[0] if found else None

    async def list_accounts(self) -> list[Account]:
        sql = "SELECT kind, name, balance FROM accounts ORDER BY kind, name"
        return await self._read(partial(_select, Account, "accounts", sql, ()))

    async def adjust_balance(
        self, kind: AccountKind, name: str, amount: str, reason: str
    ) -> Account:
        """Top up (reason "topup", amount > 0) or adjust (reason "adjustment", either sign).

        Refused with StoreError: an unknown account, a malformed or zero amount, another
        reason, or a result below zero; a refused adjustment changes nothing.
        """
        _check_account_key(kind, name)
        value = _money(amount, f"amount for {kind} {name!r}")
        if reason not in _ADJUST_REASONS:
            raise StoreError(
                f"balance change reason must be one of {', '.join(_ADJUST_REASONS)}, got {reason!r}"
            )
        if value == 0:
            raise StoreError(f"amount for {kind} {name!r} must not be zero")
        if reason == "topup" and value < 0:
            raise StoreError(f"a top-up of {kind} {name!r} must be positive, got {amount!r}")
        return await self._write(partial(_adjust_balance, kind, name, value, reason, time.time()))

    async def ledger(
        self, kind: AccountKind, name: str, *, since: float | None = None, limit: int = 100
    ) -> list[LedgerEntry]:
        _check_limit(limit)
        where = "kind=? AND account=?"
        args: list[object] = [kind, name]
        if since is not None:
            where += " AND at>=?"
            args.append(since)
        sql = f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE {where} ORDER BY id DESC LIMIT ?"
        return await self._read(partial(_select, LedgerEntry, "ledger", sql, (*args, limit)))

    async def spent_since(self, kind: AccountKind, name: str, since: float) -> str:
        return await self._read(partial(_spent_since, kind, name, since))

    # -- masked numbers --------------------------------------------------------------------

    async def bind_masked(
        self, partner: str, pool: list[str], a: str, b: str, ttl_s: float, now: float
    ) -> MaskedBinding:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
            raise StoreError(f"masked binding ttl_s must be seconds, got {ttl_s!r}")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise StoreError(f"masked binding ttl_s must be finite and > 0, got {ttl_s!r}")
        if not (a and b):
            raise StoreError(f"masked binding needs both parties, got a={a!r} b={b!r}")
        return await self._write(partial(_bind_masked, partner, list(pool), a, b, ttl_s, now))

    async def masked_binding(self, number: str, now: float) -> MaskedBinding | None:
        sql = (
            f"SELECT {_MASKED_COLUMNS} FROM masked_bindings WHERE number=? AND expires_at>? "
            "ORDER BY expires_at DESC LIMIT 1"
        )
        found = await self._read(
            partial(_select, MaskedBinding, "masked_bindings", sql, (number, now))
        )
        return found[0] if found else None

    async def get_masked_binding(self, partner: str, binding_id: str) -> MaskedBinding | None:
        sql = f"SELECT {_MASKED_COLUMNS} FROM masked_bindings WHERE partner=? AND id=?"
        found = await self._read(
            partial(_select, MaskedBinding, "masked_bindings", sql, (partner, binding_id))
        )
        return found[0] if found else None

    async def unbind_masked(self, partner: str, binding_id: str) -> bool:
        deleted = await self._write(
            partial(
                _execute,
                "DELETE FROM masked_bindings WHERE partner=? AND id=?",
                (partner, binding_id),
            )
        )
        return deleted > 0

    # -- provisioning and backup (the edgegw CLI) ------------------------------------------

    async def live_masked_bindings(self, now: float) -> list[MaskedBinding]:
        sql = (
            f"SELECT {_MASKED_COLUMNS} FROM masked_bindings WHERE expires_at>? "
            "ORDER BY partner, number"
        )
        return await self._read(partial(_select, MaskedBinding, "masked_bindings", sql, (now,)))

    async def backup(self, target: Path) -> None:
        """SQLite's online backup from the store's own connection, taken in its turn between
        write batches (the one-connection limiter): the copy holds every committed write and
        nothing of one in progress. The copy is one self-contained file (rollback journal,
        not WAL). Raises StoreError when ``target`` exists or cannot be written."""
        target = Path(target)
        if target.exists():
            raise StoreError(f"{target}: already exists; a backup is written to a new file")
        await self._read(partial(_backup_into, target))


# -- operations run in the worker thread ---------------------------------------------------


def _backup_into(target: Path, conn: sqlite3.Connection) -> None:
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        conn.backup(copy)
        # A copy left in WAL mode could not be read without a -wal file beside it.
        copy.execute("PRAGMA journal_mode=DELETE")
    finally:
        copy.close()


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
    username, password, srtp, fallback, balance, codecs, mobile = row
    record = {
        "username": username,
        "password": password,
        "numbers": numbers,
        "srtp": srtp,
        "fallback": bool(fallback),
        "balance": balance,
        "codecs": [c for c in str(codecs).split(",") if c],
        "mobile": mobile,
    }
    try:
        return msgspec.convert(record, Subscriber)
    except msgspec.ValidationError as exc:
        raise StoreError(f"corrupt row in table subscribers: {exc}") from exc


_SUBSCRIBER_SELECT = (
    "SELECT username, password, srtp, fallback, balance, codecs, mobile FROM subscribers"
)


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
        "INSERT INTO subscribers (username, password, srtp, fallback, balance, codecs, mobile) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
        "password=excluded.password, srtp=excluded.srtp, fallback=excluded.fallback, "
        "balance=excluded.balance, codecs=excluded.codecs, mobile=excluded.mobile",
        (
            subscriber.username,
            subscriber.password,
            subscriber.srtp,
            int(subscriber.fallback),
            subscriber.balance,
            ",".join(subscriber.codecs),
            subscriber.mobile,
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
    conn.execute(_insert_sql("cdrs", Cdr), _row(cdr))


def _replace_active_calls(calls: list[ActiveCall], conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM active_calls")
    conn.executemany(_insert_sql("active_calls", ActiveCall), [_row(c) for c in calls])


# -- money ---------------------------------------------------------------------------------


def _money(text: object, what: str) -> Decimal:
    """A decimal string of whole cents as Decimal; anything else is a StoreError."""
    if not isinstance(text, str) or not _MONEY.fullmatch(text):
        raise StoreError(
            f'{what} must be a decimal string of whole cents such as "12.50"'
            f" (at most 15 digits before the point), got {text!r}"
        )
    return Decimal(text)


def _text(amount: Decimal) -> str:
    return str(amount.quantize(_CENT))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def _check_account_key(kind: str, name: str) -> None:
    if kind not in _ACCOUNT_KINDS:
        raise StoreError(f"account kind must be one of {', '.join(_ACCOUNT_KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not name:
        raise StoreError(f"{kind} account name must not be empty, got {name!r}")


def _check_charge(cdr: Cdr, charge: Charge) -> None:
    _check_account_key(charge.kind, charge.account)
    if charge.call_id != cdr.id:
        raise StoreError(f"charge of call {charge.call_id!r} does not belong to CDR {cdr.id!r}")
    payer = f"{charge.kind}:{charge.account}"
    if cdr.payer is not None and cdr.payer != payer:
        raise StoreError(f"CDR {cdr.id!r} names payer {cdr.payer!r} but the charge is {payer!r}")
    if _money(charge.amount, f"charge of call {cdr.id!r}") < 0:
        raise StoreError(f"charge of call {cdr.id!r} must not be negative, got {charge.amount!r}")


def _balance_of(conn: sqlite3.Connection, kind: str, name: str) -> Decimal | None:
    row = conn.execute(
        "SELECT balance FROM accounts WHERE kind=? AND name=?", (kind, name)
    ).fetchone()
    if row is None:
        return None
    try:
        return _money(row[0], f"stored balance of {kind} {name!r}")
    except StoreError as exc:
        raise StoreError(f"corrupt row in table accounts: {exc}") from exc


def _post(
    conn: sqlite3.Connection,
    kind: str,
    name: str,
    amount: Decimal,
    reason: str,
    call_id: str | None,
    at: float,
    *,
    allow_negative: bool,
) -> Account:
    """Apply one balance change: the ledger row first, then the new balance."""
    balance = _balance_of(conn, kind, name)
    if balance is None:
        raise StoreError(f"no {kind} account {name!r}")
    after = balance + amount
    if after < 0 and not allow_negative:
        raise StoreError(
            f"{kind} {name!r}: balance {_text(balance)} cannot take {_text(amount)}"
            " (it would go below 0.00)"
        )
    if (
        reason == "call"
        and conn.execute(
            "SELECT 1 FROM ledger WHERE reason='call' AND call_id=?", (call_id,)
        ).fetchone()
    ):
        # The unique index refuses it as well; this names the problem.
        raise StoreError(f"call {call_id!r} is already charged")
    conn.execute(
        "INSERT INTO ledger (kind, account, amount, balance_after, reason, call_id, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (kind, name, _text(amount), _text(after), reason, call_id, at),
    )
    conn.execute(
        "UPDATE accounts SET balance=? WHERE kind=? AND name=?", (_text(after), kind, name)
    )
    return Account(kind=cast(AccountKind, kind), name=name, balance=_text(after))


def _ensure_account(
    kind: str, name: str, initial: Decimal, at: float, conn: sqlite3.Connection
) -> Account:
    found = _select(
        Account,
        "accounts",
        "SELECT kind, name, balance FROM accounts WHERE kind=? AND name=?",
        (kind, name),
        conn,
    )
    if found:
        return found[0]
    conn.execute("INSERT INTO accounts (kind, name, balance) VALUES (?, ?, '0.00')", (kind, name))
    if initial == 0:
        # A ledger row still says when and how the account came to be.
        conn.execute(
            "INSERT INTO ledger (kind, account, amount, balance_after, reason, call_id, at) "
            "VALUES (?, ?, '0.00', '0.00', 'provision', NULL, ?)",
            (kind, name, at),
        )
        return Account(kind=cast(AccountKind, kind), name=name, balance="0.00")
    return _post(conn, kind, name, initial, "provision", None, at, allow_negative=False)


def _adjust_balance(
    kind: str, name: str, amount: Decimal, reason: str, at: float, conn: sqlite3.Connection
) -> Account:
    return _post(conn, kind, name, amount, reason, None, at, allow_negative=False)


def _settle_call(cdr: Cdr, charge: Charge | None, conn: sqlite3.Connection) -> None:
    _insert_cdr(cdr, conn)
    if charge is not None and Decimal(charge.amount) > 0:
        _post(
            conn,
            charge.kind,
            charge.account,
            -Decimal(charge.amount),
            "call",
            cdr.id,
            cdr.end,
            allow_negative=True,
        )


def _spent_since(kind: str, name: str, since: float, conn: sqlite3.Connection) -> str:
    rows = conn.execute(
        "SELECT amount FROM ledger WHERE kind=? AND account=? AND reason='call' AND at>=?",
        (kind, name, since),
    )
    total = sum((-_money(amount, "stored ledger amount") for (amount,) in rows), Decimal(0))
    return _text(total)


# -- masked numbers ------------------------------------------------------------------------


def _bind_masked(
    partner: str,
    pool: list[str],
    a: str,
    b: str,
    ttl_s: float,
    now: float,
    conn: sqlite3.Connection,
) -> MaskedBinding:
    # An expired binding frees its number: drop it before looking for a free one.
    conn.executemany(
        "DELETE FROM masked_bindings WHERE number=? AND expires_at<=?",
        [(number, now) for number in pool],
    )
    for number in pool:
        taken = conn.execute("SELECT 1 FROM masked_bindings WHERE number=?", (number,)).fetchone()
        if taken is None:
            binding = MaskedBinding(
                id=secrets.token_hex(8),
                partner=partner,
                number=number,
                a=a,
                b=b,
                created_at=now,
                expires_at=now + ttl_s,
            )
            conn.execute(_insert_sql("masked_bindings", MaskedBinding), _row(binding))
            return binding
    raise PoolExhausted(
        f"partner {partner!r}: every masked number of its pool of {len(pool)} is bound"
    )


def _check_active_billing(call: ActiveCall) -> None:
    """A paid checkpoint must carry what recovery needs to rate it."""
    if call.payer is None:
        return
    kind, colon, name = call.payer.partition(":")
    if not colon:
        raise StoreError(f"active call {call.id!r}: payer must be 'kind:name', got {call.payer!r}")
    _check_account_key(kind, name)
    if call.rate_per_minute is None or len(call.billing_increment) != 2:
        raise StoreError(f"active call {call.id!r}: a paid call needs its rate and increments")
    try:
        _recovery_tariff(call)
    except RatingError as exc:
        raise StoreError(f"active call {call.id!r}: {exc}") from exc


def _recovery_tariff(call: ActiveCall) -> Tariff:
    first, following = call.billing_increment
    return tariff(call.tariff_prefix or "", call.rate_per_minute or "", (first, following))


def _rated_open_call(call: ActiveCall, cdr: Cdr) -> tuple[Cdr, Charge | None]:
    """The recovered CDR rated on its talk time, within what the call was granted."""
    if call.payer is None or call.rate_per_minute is None:
        return cdr, None
    rate = _recovery_tariff(call)
    talk = cdr.duration
    if call.granted_seconds is not None:
        talk = min(talk, float(call.granted_seconds))
    amount = cost(talk, rate)
    rated = msgspec.structs.replace(
        cdr,
        payer=call.payer,
        tariff_prefix=call.tariff_prefix,
        rate_per_minute=call.rate_per_minute,
        billing_increment=list(call.billing_increment),
        billable_seconds=billable_seconds(talk, rate),
        cost=_text(amount),
    )
    kind, _, name = call.payer.partition(":")
    charge = Charge(
        kind=cast(AccountKind, kind), account=name, amount=_text(amount), call_id=call.id
    )
    return rated, charge


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
        partner=call.partner,
    )


def _recover_open_calls(now: float, conn: sqlite3.Connection) -> list[Cdr]:
    sql = f"SELECT {_ACTIVE_COLUMNS} FROM active_calls ORDER BY start, id"
    calls = _select(ActiveCall, "active_calls", sql, (), conn)
    recovered: list[Cdr] = []
    for call in calls:
        if conn.execute("SELECT 1 FROM cdrs WHERE id=?", (call.id,)).fetchone() is not None:
            continue
        cdr, charge = _rated_open_call(call, _cdr_for_open_call(call, now))
        if charge is not None and _balance_of(conn, charge.kind, charge.account) is None:
            cdr, charge = msgspec.structs.replace(cdr, billable_seconds=0, cost="0.00"), None
        _settle_call(cdr, charge, conn)
        recovered.append(cdr)
    conn.execute("DELETE FROM active_calls")
    return recovered
