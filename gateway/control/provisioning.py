"""Provisioning through the running gateway: subscribers, balances, partners, numbers, backup.

The store has one writer, the gateway, so `edgegw subscriber|balance|partner|number|backup`
send their requests over the control socket to the handlers here. A change is checked first
(with the config's own rules for subscribers, so the CLI and `edgegw config check` never
disagree), then written through the Store, then applied to the running call logic at once:
`CallCore.set_subscribers` for subscribers, `CreditControl` for balances. A refused change
writes nothing. Passwords and partner keys are never sent back.

Trunks and partners (keys, pools, budgets' initial values) live in the config file: `edgegw
trunk|partner add|set|remove` edit that file and reload it (gateway.control.config_edit).
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import trio

from gateway.calls.billing import BillingError, Payer, utc_day_start
from gateway.calls.core import CallCore
from gateway.calls.registrar import Changes, Registrar
from gateway.config import Config, SubscriberConfig
from gateway.config import _subscriber_problems as config_subscriber_problems
from gateway.control.server import CommandRefused, Handler
from gateway.store.backup import StoreFileError, publish, verify_store_file
from gateway.store.base import Store, StoreError
from gateway.store.model import Account, SrtpPolicy, Subscriber

__all__ = ["Provisioning", "ProvisioningError"]

DEFAULT_LEDGER_LIMIT = 100

_A = TypeVar("_A", bound=msgspec.Struct)


class ProvisioningError(CommandRefused, ValueError):
    """A provisioning request refused; the message says what was wrong and what to do."""


class _SubscriberFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A subscriber as `add` gives it, or the fields `set` changes (None: unchanged)."""

    username: str
    password: str | None = None
    numbers: list[str] | None = None
    srtp: SrtpPolicy | None = None
    fallback: bool | None = None
    codecs: list[str] | None = None
    mobile: str | None = None


class _Username(msgspec.Struct, forbid_unknown_fields=True):
    username: str


class _NumberArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    number: str
    subscriber: str | None = None  # the new owner (`number add`)


class _AccountArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account: str | None = None


class _TopupArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account: str
    amount: str
    reason: Literal["topup", "adjustment"] = "topup"


class _LedgerArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account: str
    since: float | None = None
    limit: int = DEFAULT_LEDGER_LIMIT


class _BackupArgs(msgspec.Struct, forbid_unknown_fields=True):
    target: str


def _parse(kind: type[_A], args: dict[str, Any], command: str) -> _A:
    try:
        return msgspec.convert(args, kind)
    except msgspec.ValidationError as exc:
        raise ProvisioningError(f"bad arguments for {command}: {exc}") from None


def _no_args(args: dict[str, Any], command: str) -> None:
    if args:
        raise ProvisioningError(f"{command} takes no arguments, got {', '.join(sorted(args))}")


@dataclass(eq=False)
class Provisioning:
    """The control handlers of provisioning, over the gateway's store and call logic."""

    store: Store
    core: CallCore
    registrar: Registrar
    store_file: Path
    # Subscriber changes read, check, then write: one at a time, so two cannot interleave.
    _lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def config(self) -> Config:
        """The running config: a reload (`edgegw config reload`) replaces the core's."""
        return self.core.config

    def handlers(self) -> dict[str, Handler]:
        return {
            "subscriber list": self.subscriber_list,
            "subscriber add": self.subscriber_add,
            "subscriber set": self.subscriber_set,
            "subscriber remove": self.subscriber_remove,
            "balance show": self.balance_show,
            "balance topup": self.balance_topup,
            "balance ledger": self.balance_ledger,
            "partner list": self.partner_list,
            "number list": self.number_list,
            "number add": self.number_add,
            "number remove": self.number_remove,
            "backup": self.backup,
        }

    # ---- subscribers ----------------------------------------------------------------------

    async def subscriber_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        _no_args(args, "subscriber list")
        balances = {
            a.name: a.balance for a in await self.store.list_accounts() if a.kind == "subscriber"
        }
        return [
            self._view(sub, balances.get(sub.username))
            for sub in await self.store.list_subscribers()
        ]

    async def subscriber_add(self, args: dict[str, Any]) -> dict[str, Any]:
        given = _parse(_SubscriberFields, args, "subscriber add")
        if given.password is None:
            raise ProvisioningError("a new subscriber needs a password")
        async with self._lock:
            if await self.store.get_subscriber(given.username) is not None:
                raise ProvisioningError(
                    f"subscriber {given.username!r} already exists: change it with "
                    "`edgegw subscriber set`"
                )
            subscriber = self._checked(_merged(None, given))
            await self._write(subscriber)
            account = await self._open_account(subscriber.username)
        return self._view(subscriber, account.balance, self._notes(subscriber.username))

    async def subscriber_set(self, args: dict[str, Any]) -> dict[str, Any]:
        given = _parse(_SubscriberFields, args, "subscriber set")
        async with self._lock:
            current = await self.store.get_subscriber(given.username)
            if current is None:
                raise ProvisioningError(
                    f"no subscriber {given.username!r}: add it with `edgegw subscriber add`"
                )
            subscriber = self._checked(_merged(current, given))
            await self._write(subscriber)
        account = await self.store.get_account("subscriber", subscriber.username)
        balance = None if account is None else account.balance
        return self._view(subscriber, balance, self._notes(subscriber.username))

    async def subscriber_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        username = _parse(_Username, args, "subscriber remove").username
        async with self._lock:
            if not await self.store.delete_subscriber(username):
                raise ProvisioningError(
                    f"no subscriber {username!r} (see `edgegw subscriber list`)"
                )
            await self._refresh()  # from here on its credentials are refused
            registrations = len(self.registrar.bindings(username))
            # The registrar has no public call for this; `_apply` is its own store-then-cache
            # step that an un-REGISTER of every contact takes.
            await self.registrar._apply(username, Changes(remove_all=True))
        return {
            "username": username,
            "registrations_dropped": registrations,
            "notes": [
                "its account and ledger are kept (see `edgegw balance show "
                f"subscriber:{username}`); calls in progress go on",
                *self._notes(username),
            ],
        }

    def _checked(self, subscriber: Subscriber) -> Subscriber:
        candidate = SubscriberConfig(
            username=subscriber.username,
            password=subscriber.password,
            numbers=list(subscriber.numbers),
            srtp=subscriber.srtp,
            fallback=subscriber.fallback,
            codecs=list(subscriber.codecs),
            mobile=subscriber.mobile,
        )
        for key, reason in config_subscriber_problems([candidate], self.config.sip.listen):
            raise ProvisioningError(f"{key.removeprefix('subscribers[0].')}: {reason}")
        pools = {n: p.name for p in self.config.partners for n in p.masked_pool}
        for number in subscriber.numbers:
            if number in pools:
                raise ProvisioningError(
                    f"number {number} is in the masked-number pool of partner "
                    f"{pools[number]!r}: pick another number"
                )
        return subscriber

    async def _write(self, subscriber: Subscriber) -> None:
        try:
            await self.store.upsert_subscriber(subscriber)
        except StoreError as exc:  # e.g. a number another subscriber owns: nothing written
            raise ProvisioningError(f"{exc}: nothing was changed") from exc
        await self._refresh()

    async def _refresh(self) -> None:
        self.core.set_subscribers(await self.store.list_subscribers())

    async def _open_account(self, username: str) -> Account:
        """The subscriber's prepaid account (0.00 when new; an old one is kept as it is),
        known to credit control so that its calls can be paid once it is topped up."""
        account = await self.store.ensure_account("subscriber", username, "0.00")
        await self._follow(account)
        return account

    def _notes(self, username: str) -> list[str]:
        if any(entry.username == username for entry in self.config.subscribers):
            return [
                f"subscriber {username!r} is also in the config file: a restart provisions "
                "it from there again; change the config too"
            ]
        return []

    def _view(
        self, subscriber: Subscriber, balance: str | None, notes: list[str] | None = None
    ) -> dict[str, Any]:
        view: dict[str, Any] = {
            "username": subscriber.username,
            "numbers": list(subscriber.numbers),
            "srtp": subscriber.srtp,
            "fallback": subscriber.fallback,
            "codecs": list(subscriber.codecs),
            "mobile": subscriber.mobile,
            "balance": balance,
            "registrations": len(self.registrar.bindings(subscriber.username)),
        }
        if notes is not None:
            view["notes"] = notes
        return view

    # ---- balances -------------------------------------------------------------------------

    async def balance_show(self, args: dict[str, Any]) -> Any:
        wanted = _parse(_AccountArgs, args, "balance show").account
        if wanted is None:
            return [self._account_view(a) for a in await self.store.list_accounts()]
        payer = await self._payer(wanted)
        account = await self.store.get_account(payer.kind, payer.name)
        if account is None:
            raise ProvisioningError(f"no account {payer} (see `edgegw balance show`)")
        view = self._account_view(account)
        view["spent_today"] = await self.store.spent_since(
            payer.kind, payer.name, utc_day_start(time.time())
        )
        return view

    async def balance_topup(self, args: dict[str, Any]) -> dict[str, Any]:
        request = _parse(_TopupArgs, args, "balance topup")
        payer = await self._payer(request.account)
        try:
            account = await self.store.adjust_balance(
                payer.kind, payer.name, request.amount, request.reason
            )
        except StoreError as exc:
            raise ProvisioningError(f"{exc}: nothing was changed") from exc
        credit = self.core.credit
        if credit is not None and credit.balance(payer) is not None:
            credit.credit(payer, request.amount)
        else:
            await self._follow(account)
        return {
            **self._account_view(account),
            "amount": request.amount,
            "reason": request.reason,
        }

    async def balance_ledger(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        request = _parse(_LedgerArgs, args, "balance ledger")
        if request.limit < 1:
            raise ProvisioningError(f"limit must be at least 1, got {request.limit}")
        payer = await self._payer(request.account)
        if await self.store.get_account(payer.kind, payer.name) is None:
            raise ProvisioningError(f"no account {payer} (see `edgegw balance show`)")
        entries = await self.store.ledger(
            payer.kind, payer.name, since=request.since, limit=request.limit
        )
        return [msgspec.to_builtins(entry) for entry in entries]

    async def _payer(self, text: str) -> Payer:
        """``kind:name``; a bare name when exactly one account has it."""
        if ":" in text:
            try:
                return Payer.parse(text)
            except BillingError as exc:
                raise ProvisioningError(str(exc)) from None
        found = [a for a in await self.store.list_accounts() if a.name == text]
        if len(found) == 1:
            return Payer.of(found[0])
        if not found:
            raise ProvisioningError(f"no account named {text!r} (see `edgegw balance show`)")
        raise ProvisioningError(
            f"{text!r} names a subscriber and a partner: say subscriber:{text} or partner:{text}"
        )

    async def _follow(self, account: Account) -> None:
        """Make credit control know an account it has not loaded (created after start-up)."""
        credit = self.core.credit
        if credit is None or credit.balance(Payer.of(account)) is not None:
            return
        now = time.time()
        spent = await self.store.spent_since(account.kind, account.name, utc_day_start(now))
        credit.load(account, spent, now)

    def _account_view(self, account: Account) -> dict[str, Any]:
        payer = Payer.of(account)
        credit = self.core.credit
        reserved = "0.00"
        if credit is not None and credit.balance(payer) is not None:
            reserved = f"{credit.reserved(payer):.2f}"
        return {
            "account": str(payer),
            "kind": account.kind,
            "name": account.name,
            "balance": account.balance,
            "reserved": reserved,
        }

    # ---- partners and numbers -------------------------------------------------------------

    async def partner_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        _no_args(args, "partner list")
        bound = Counter(b.partner for b in await self.store.live_masked_bindings(time.time()))
        rows: list[dict[str, Any]] = []
        for partner in self.config.partners:
            account = await self.store.get_account("partner", partner.name)
            rows.append(
                {
                    "name": partner.name,
                    "balance": None if account is None else account.balance,
                    "pool_size": len(partner.masked_pool),
                    "bindings": bound[partner.name],
                    "bill_user": partner.bill_user,
                    "callbacks": bool(partner.callback_url),
                }
            )
        return rows

    async def number_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        _no_args(args, "number list")
        rows: list[dict[str, Any]] = []
        for sub in await self.store.list_subscribers():
            online = bool(self.registrar.bindings(sub.username))
            rows += [
                {
                    "number": number,
                    "owner": f"subscriber:{sub.username}",
                    "state": "registered" if online else "offline",
                    "binding": None,
                    "expires_at": None,
                }
                for number in sub.numbers
            ]
        live = {b.number: b for b in await self.store.live_masked_bindings(time.time())}
        for partner in self.config.partners:
            for number in partner.masked_pool:
                binding = live.get(number)
                rows.append(
                    {
                        "number": number,
                        "owner": f"partner:{partner.name}",
                        "state": "free" if binding is None else "bound",
                        "binding": None if binding is None else binding.id,
                        "expires_at": None if binding is None else binding.expires_at,
                    }
                )
        return sorted(rows, key=lambda row: str(row["number"]))

    async def number_add(self, args: dict[str, Any]) -> dict[str, Any]:
        """Give a subscriber one more number (DID): calls to it ring the subscriber at once."""
        given = _parse(_NumberArgs, args, "number add")
        if given.subscriber is None:
            raise ProvisioningError(
                "say whose number it is with --subscriber USERNAME (a partner's masked "
                "numbers change with `edgegw partner set NAME --masked-pool ...`)"
            )
        async with self._lock:
            current = await self.store.get_subscriber(given.subscriber)
            if current is None:
                raise ProvisioningError(
                    f"no subscriber {given.subscriber!r} (see `edgegw subscriber list`)"
                )
            if given.number in current.numbers:
                raise ProvisioningError(
                    f"{given.number} is already subscriber:{current.username}'s"
                )
            numbers = [*current.numbers, given.number]
            await self._write(self._checked(msgspec.structs.replace(current, numbers=numbers)))
        return self._number_view(given.number, current.username)

    async def number_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take a number from the subscriber owning it: calls to it get 404 from then on."""
        number = _parse(_NumberArgs, args, "number remove").number
        async with self._lock:
            owner = next(
                (s for s in await self.store.list_subscribers() if number in s.numbers), None
            )
            if owner is None:
                raise ProvisioningError(self._not_a_subscriber_number(number))
            numbers = [n for n in owner.numbers if n != number]
            await self._write(msgspec.structs.replace(owner, numbers=numbers))
        return self._number_view(number, owner.username)

    def _not_a_subscriber_number(self, number: str) -> str:
        for partner in self.config.partners:
            if number in partner.masked_pool:
                return (
                    f"{number} is in partner {partner.name!r}'s masked-number pool: change it "
                    f"with `edgegw partner set {partner.name} --masked-pool ...`"
                )
        return f"no subscriber owns {number} (see `edgegw number list`)"

    def _number_view(self, number: str, username: str) -> dict[str, Any]:
        return {"number": number, "owner": f"subscriber:{username}", "notes": self._notes(username)}

    # ---- backup ---------------------------------------------------------------------------

    async def backup(self, args: dict[str, Any]) -> dict[str, Any]:
        """Copy the store online into ``target`` (absolute), checked, then renamed into place."""
        target = Path(_parse(_BackupArgs, args, "backup").target)
        if not target.is_absolute():
            raise ProvisioningError(f"backup path must be absolute, got {str(target)!r}")
        store = self.store_file.resolve()
        live = {store, *(store.with_name(store.name + side) for side in ("-wal", "-shm"))}
        if target.resolve() in live:
            raise ProvisioningError(f"{target}: is the live store; back up to another file")
        if not target.parent.is_dir():
            raise ProvisioningError(f"{target.parent}: no such directory")
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        started = time.monotonic()
        try:
            await self.store.backup(temp)
            # It holds every password: only its owner may read it.
            await trio.to_thread.run_sync(os.chmod, temp, 0o600)
            info = await trio.to_thread.run_sync(verify_store_file, temp)
            await trio.to_thread.run_sync(publish, temp, target)
        except (StoreError, StoreFileError) as exc:
            raise ProvisioningError(f"backup to {target} failed: {exc}") from exc
        except OSError as exc:
            raise ProvisioningError(f"backup to {target} failed: {exc.strerror or exc}") from exc
        finally:
            temp.unlink(missing_ok=True)
        return {
            **info.as_dict(),
            "path": str(target),
            "integrity": "ok",
            "seconds": round(time.monotonic() - started, 3),
        }


def _merged(current: Subscriber | None, given: _SubscriberFields) -> Subscriber:
    """The subscriber ``given`` describes, over ``current`` (None: a new one)."""
    base = current or Subscriber(username=given.username, password="", numbers=[])
    changes = {
        name: getattr(given, name)
        for name in ("password", "numbers", "srtp", "fallback", "codecs", "mobile")
        if getattr(given, name) is not None
    }
    return msgspec.structs.replace(base, **changes)
