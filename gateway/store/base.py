"""The one persistence interface of edgegw (DESIGN rule 5).

Call logic talks to a ``Store`` only; ``gateway.store.sqlite.SqliteStore`` is the embedded
default. A write method returns only once its change is durable, so the caller may
acknowledge what it stored (answer the REGISTER, report the CDR). Times are wall-clock
epoch seconds, see ``gateway.store.model``.
"""

from __future__ import annotations

from typing import Protocol

from gateway.store.model import ActiveCall, Binding, Cdr, Subscriber

__all__ = ["Store", "StoreError"]


class StoreError(Exception):
    """The store refused or failed an operation; the message says which and why."""


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
        """Record a finished call; returns once the record is durable."""
        ...

    async def list_cdrs(self, *, since: float | None = None, limit: int = 100) -> list[Cdr]:
        """CDRs of calls started at or after ``since``, newest start first."""
        ...

    async def checkpoint_active_calls(self, calls: list[ActiveCall], now: float) -> None:
        """Atomically replace the stored set of calls in progress."""
        ...

    async def recover_open_calls(self, now: float) -> list[Cdr]:
        """Close the calls a crash left in the checkpoint: write and return their CDRs."""
        ...
