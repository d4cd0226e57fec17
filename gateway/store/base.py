"""The one persistence interface of edgegw (DESIGN rule 5).

Call logic talks to a ``Store`` only; ``gateway.store.sqlite.SqliteStore`` is the embedded
default. A write method returns only once its change is durable, so the caller may
acknowledge what it stored (answer the REGISTER, report the CDR). Times are wall-clock
epoch seconds, see ``gateway.store.model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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

__all__ = ["PoolExhausted", "Store", "StoreError"]


class StoreError(Exception):
    """The store refused or failed an operation; the message says which and why."""


class PoolExhausted(StoreError):
    """Every number of a partner's masked-number pool is bound."""


class Store(Protocol):
    """Durable state: subscribers, registrar bindings, CDRs and the active-call checkpoint."""

    async def open(self) -> None:
        """Open the store, creating or migrating its schema."""
        ...

    async def close(self) -> None:
        """Finish every write already handed over, then release the store."""
        ...

    async def upsert_subscriber(self, subscriber: Subscriber) -> None:
        """Create or replace a subscriber and the set of numbers it owns."""
        ...

    async def delete_subscriber(self, username: str) -> bool:
        """Remove a subscriber and its numbers; False when there was none."""
        ...

    async def get_subscriber(self, username: str) -> Subscriber | None:
        """The subscriber with this username, if any."""
        ...

    async def list_subscribers(self) -> list[Subscriber]:
        """Every subscriber, ordered by username."""
        ...

    async def subscriber_by_number(self, e164: str) -> Subscriber | None:
        """The subscriber owning this E.164 number, if any."""
        ...

    async def save_binding(self, binding: Binding) -> None:
        """Store a binding, replacing the one with the same (aor, contact)."""
        ...

    async def remove_binding(self, aor: str, contact: str) -> None:
        """Remove one binding (nothing happens when it is absent)."""
        ...

    async def remove_bindings(self, aor: str) -> None:
        """Remove every binding of an address-of-record."""
        ...

    async def bindings_for(self, aor: str, now: float) -> list[Binding]:
        """Unexpired bindings of one address-of-record, latest expiry first."""
        ...

    async def all_bindings(self, now: float) -> list[Binding]:
        """Every unexpired binding, ordered by aor then contact."""
        ...

    async def purge_expired_bindings(self, now: float) -> int:
        """Delete bindings expired at ``now``; returns how many."""
        ...

    async def write_cdr(self, cdr: Cdr) -> None:
        """Record a finished call; returns once the record is durable.

        The same as ``settle_call(cdr, None)``.
        """
        ...

    async def settle_call(self, cdr: Cdr, charge: Charge | None) -> None:
        """Record a finished call and, in the same transaction, its charge.

        With a charge: a "call" ledger row and the payer's new balance. A call id is
        charged at most once: a second settle of the same call is refused (StoreError)
        and changes nothing.
        """
        ...

    async def list_cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        partner: str | None = None,
    ) -> list[Cdr]:
        """CDRs of calls started in [``since``, ``until``) (of one partner when given),
        newest start first; ``limit`` of them after skipping ``offset``."""
        ...

    async def checkpoint_active_calls(self, calls: list[ActiveCall], now: float) -> None:
        """Atomically replace the stored set of calls in progress."""
        ...

    async def recover_open_calls(self, now: float) -> list[Cdr]:
        """Close the calls a crash left in the checkpoint: write and return their CDRs."""
        ...

    # -- money ---------------------------------------------------------------------------

    async def ensure_account(self, kind: AccountKind, name: str, initial_balance: str) -> Account:
        """The account, created with a "provision" ledger row when absent; an existing
        account is returned as it is (never reset)."""
        ...

    async def get_account(self, kind: AccountKind, name: str) -> Account | None:
        """The account, if any."""
        ...

    async def list_accounts(self) -> list[Account]:
        """Every account, ordered by kind then name."""
        ...

    async def adjust_balance(
        self, kind: AccountKind, name: str, amount: str, reason: str
    ) -> Account:
        """Add ``amount`` (reason "topup": > 0; "adjustment": either sign) with a ledger
        row; StoreError when there is no such account or the balance would go below 0."""
        ...

    async def ledger(
        self, kind: AccountKind, name: str, *, since: float | None = None, limit: int = 100
    ) -> list[LedgerEntry]:
        """The account's ledger rows at or after ``since``, newest first."""
        ...

    async def spent_since(self, kind: AccountKind, name: str, since: float) -> str:
        """Sum of the account's call charges at or after ``since`` ("0.00" when none)."""
        ...

    # -- masked numbers ------------------------------------------------------------------

    async def bind_masked(
        self, partner: str, pool: list[str], a: str, b: str, ttl_s: float, now: float
    ) -> MaskedBinding:
        """Bind a and b to the first number of ``pool`` with no unexpired binding, atomically;
        PoolExhausted when every number is taken."""
        ...

    async def masked_binding(self, number: str, now: float) -> MaskedBinding | None:
        """The unexpired binding of a masked number, if any."""
        ...

    async def get_masked_binding(self, partner: str, binding_id: str) -> MaskedBinding | None:
        """One of the partner's bindings by id (expired ones included until reused)."""
        ...

    async def unbind_masked(self, partner: str, binding_id: str) -> bool:
        """Remove one of the partner's bindings; False when there was none."""
        ...

    # -- provisioning and backup (the edgegw CLI) ------------------------------------------

    async def live_masked_bindings(self, now: float) -> list[MaskedBinding]:
        """Every unexpired masked-number binding, ordered by partner then number."""
        ...

    async def backup(self, target: Path) -> None:
        """Copy the whole store, consistent as of one moment, into the new file ``target``
        while the store stays open; writes handed over meanwhile wait for the copy."""
        ...
