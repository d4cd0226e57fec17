"""Prepaid billing: which tariff rates a call, and credit control while it runs (sans-IO).

`Tariffs` picks the retail tariff of a called number (longest prefix of its E.164
digits); a number no retail tariff covers pays the tariff of the trunk carrying it.
App-to-app and emergency calls are free and have no payer.

`CreditControl` keeps every account's balance in memory (loaded from the store's
accounts) and lets a call spend it only through reservations, the way a Diameter
Credit-Control server hands out quota (RFC 4006 5.1-5.2, the Gy application): a call
is granted talk time in slices, and each slice's price is reserved before it is used.
The first slice is the tariff's first billing increment; each later one is the whole
next increments covering at least 60 s, cut to what the credit still allows. A grant is
always priced as the call's total (one rounding, see `gateway.calls.rating`), and the
reservations of all open calls of an account never exceed its balance, nor (with a
daily spend cap) the cap minus what the account spent that UTC day, so two calls of
one account together can never overdraw it. A call that gets no further slice must end
when its granted seconds are used; closing it charges what it used, never more than it
reserved, and releases the rest.

Nothing here reads a clock or does I/O: times come in as epoch seconds. The gateway's
single event loop is the only user, so there is no locking. The charges it returns are
made durable by `Store.settle_call`, together with the call's CDR.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

import msgspec

from gateway.calls.rating import (
    RatingError,
    Tariff,
    TariffTable,
    affordable_seconds,
    billable_seconds,
    cost,
    tariff,
)
from gateway.config import Config
from gateway.store.model import Account, AccountKind, ActiveCall, Cdr, Charge

__all__ = [
    "FREE_ROUTES",
    "BillingError",
    "CreditControl",
    "DenialReason",
    "Denied",
    "Grant",
    "Payer",
    "Tariffs",
    "configured_accounts",
    "utc_day_start",
]

DenialReason = Literal["insufficient-balance", "daily-spend-cap", "no-account"]

# Routes that never cost their caller anything (the issue: app-to-app and emergency).
FREE_ROUTES = frozenset({"app", "emergency"})

# A later slice covers at least this much talk time (whole next increments).
SLICE_SECONDS = 60
SECONDS_PER_DAY = 86_400

_ACCOUNT_KINDS: tuple[str, ...] = get_args(AccountKind)
_MONEY = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,2})?")
_CENT = Decimal("0.01")


class BillingError(ValueError):
    """A payer, amount, trunk or call that billing cannot work with."""


def utc_day_start(now: float) -> float:
    """Epoch seconds of the start of the UTC day containing `now` (POSIX days are 86400 s)."""
    return float(math.floor(now / SECONDS_PER_DAY) * SECONDS_PER_DAY)


def _day(now: float) -> int:
    return math.floor(now / SECONDS_PER_DAY)


def _money(value: str | Decimal, what: str) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.quantize(_CENT):
            raise BillingError(f"{what} must be a finite amount of whole cents, got {value!r}")
        return value
    if not isinstance(value, str) or not _MONEY.fullmatch(value):
        raise BillingError(f'{what} must be a decimal string such as "12.50", got {value!r}')
    return Decimal(value)


def _text(amount: Decimal) -> str:
    return str(amount.quantize(_CENT))


@dataclass(frozen=True)
class Payer:
    """The account a call is charged to; written "kind:name" in CDRs and checkpoints."""

    kind: AccountKind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in _ACCOUNT_KINDS or not self.name:
            raise BillingError(f"a payer is a subscriber or a partner with a name, got {self!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Payer:
        """The payer written as "subscriber:1001" or "partner:demo"."""
        kind, colon, name = text.partition(":")
        if not colon or kind not in _ACCOUNT_KINDS or not name:
            raise BillingError(f"payer must be 'subscriber:NAME' or 'partner:NAME', got {text!r}")
        return cls(kind, name)  # type: ignore[arg-type]  # checked just above

    @classmethod
    def of(cls, account: Account) -> Payer:
        return cls(account.kind, account.name)


def configured_accounts(config: Config) -> list[tuple[AccountKind, str, str]]:
    """(kind, name, initial balance) of every account the config provisions: subscribers'
    balances and partners' budgets. Start-up passes each to `Store.ensure_account`."""
    accounts: list[tuple[AccountKind, str, str]] = [
        ("subscriber", sub.username, sub.balance) for sub in config.subscribers
    ]
    accounts += [("partner", partner.name, partner.budget) for partner in config.partners]
    return accounts


class Tariffs:
    """Retail tariffs by number, with each trunk's own tariff behind them."""

    def __init__(self, retail: Iterable[Tariff], trunks: Iterable[Tariff] = ()) -> None:
        self._retail = TariffTable(retail)
        self._trunks: dict[str, Tariff] = {}
        for entry in trunks:
            if entry.trunk is None:
                raise BillingError(f"trunk tariff {entry.name!r} names no trunk")
            self._trunks[entry.trunk] = entry

    @classmethod
    def from_config(cls, config: Config) -> Tariffs:
        """`[[tariffs]]` as retail tariffs; each trunk's `tariff_per_minute` and
        `billing_increment` as the fallback for numbers they do not cover."""
        try:
            retail = [
                tariff(t.prefix, t.per_minute, t.billing_increment, name=f"tariffs[{i}]")
                for i, t in enumerate(config.tariffs)
            ]
            trunks = [
                dataclasses.replace(
                    tariff("", t.tariff_per_minute, t.billing_increment, f"trunk {t.name}"),
                    trunk=t.name,
                )
                for t in config.trunks
            ]
        except RatingError as exc:
            raise BillingError(f"config: {exc}") from exc
        return cls(retail, trunks)

    def lookup(self, e164: str, trunk: str | None) -> Tariff | None:
        """The retail tariff of `e164`, else the tariff of `trunk` (None: no trunk given)."""
        found = self._retail.lookup(e164)
        if found is not None or trunk is None:
            return found
        try:
            return self._trunks[trunk]
        except KeyError:
            raise BillingError(f"no trunk named {trunk!r} to take the tariff of") from None

    def for_call(self, route: str, e164: str, trunk: str | None) -> Tariff | None:
        """The tariff of a call on `route` to `e164`; None for a free call."""
        if route in FREE_ROUTES:
            return None
        return self.lookup(e164, trunk)


@dataclass(frozen=True)
class Grant:
    """Talk time a call may use: `seconds` in total so far (None: no limit, a free
    tariff), covered by `reserved`. `affordable_seconds` is the longest the call could
    last on the credit available to it when this grant was made (balance, and daily cap,
    minus other calls' reservations); None: no limit."""

    call_id: str
    payer: Payer
    tariff: Tariff
    seconds: int | None
    reserved: Decimal
    affordable_seconds: int | None


@dataclass(frozen=True)
class Denied:
    """A call the payer cannot pay for: `reason` is the code, `message` says why."""

    payer: Payer
    reason: DenialReason
    message: str


@dataclass
class _Wallet:
    balance: Decimal
    day: int
    spent: Decimal  # charges of calls closed during `day`
    reserved: Decimal = Decimal(0)  # sum of the open calls' reservations


@dataclass
class _Session:
    payer: Payer
    tariff: Tariff
    granted: int | None
    reserved: Decimal


@dataclass(frozen=True)
class _Closed:
    charge: Charge | None
    billable_seconds: int
    amount: Decimal


class CreditControl:
    """Prepaid credit of every account, reserved slice by slice by the calls in progress."""

    def __init__(self, daily_cap: str | Decimal = "0.00") -> None:
        cap = _money(daily_cap, "daily spend cap")
        if cap < 0:
            raise BillingError(f"daily spend cap must not be negative, got {daily_cap!r}")
        self.daily_cap = cap  # 0: no cap
        self._wallets: dict[Payer, _Wallet] = {}
        self._sessions: dict[str, _Session] = {}

    @classmethod
    def from_config(cls, config: Config) -> CreditControl:
        return cls(config.limits.daily_spend_per_account)

    # -- accounts ---------------------------------------------------------------------------

    def load(self, account: Account, spent_today: str | Decimal, now: float) -> None:
        """Take an account's stored balance, and what it spent since the start of the UTC
        day of `now` (`Store.spent_since`). Reservations of its open calls are kept."""
        payer = Payer.of(account)
        balance = _money(account.balance, f"balance of {payer}")
        spent = _money(spent_today, f"spend today of {payer}")
        held = self._wallets.get(payer)
        self._wallets[payer] = _Wallet(
            balance, _day(now), spent, held.reserved if held else Decimal(0)
        )

    def credit(self, payer: Payer, amount: str | Decimal) -> None:
        """Follow a balance change made in the store (`Store.adjust_balance`)."""
        self._wallet(payer).balance += _money(amount, f"credit to {payer}")

    def balance(self, payer: Payer) -> Decimal | None:
        """The account's balance (charges of closed calls taken off), None if unknown."""
        wallet = self._wallets.get(payer)
        return None if wallet is None else wallet.balance

    def reserved(self, payer: Payer) -> Decimal:
        """Credit the account's open calls hold."""
        return self._wallet(payer).reserved

    def _wallet(self, payer: Payer) -> _Wallet:
        try:
            return self._wallets[payer]
        except KeyError:
            raise BillingError(f"no account {payer}") from None

    # -- calls ------------------------------------------------------------------------------

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._sessions

    def open(self, call_id: str, payer: Payer, rate: Tariff, now: float) -> Grant | Denied:
        """Reserve the first slice of a call to be charged to `payer` at `rate`."""
        if call_id in self._sessions:
            raise BillingError(f"call {call_id!r} already holds credit")
        wallet = self._wallets.get(payer)
        if wallet is None:
            return Denied(payer, "no-account", f"no account {payer}")
        if rate.free:
            self._sessions[call_id] = _Session(payer, rate, None, Decimal(0))
            return Grant(call_id, payer, rate, None, Decimal(0), None)
        self._roll_day(wallet, now)
        denied = self._denial(payer, wallet, rate)
        if denied is not None:
            return denied
        session = _Session(payer, rate, 0, Decimal(0))
        self._sessions[call_id] = session
        affordable = self._limit(wallet, session)
        return self._grow(call_id, wallet, session, rate.first_increment, affordable)

    def open_first(
        self, call_id: str, payers: Sequence[Payer], rate: Tariff, now: float
    ) -> Grant | Denied:
        """Open on the first payer that can pay, e.g. a partner's budget then, when its
        policy bills the user, the calling user. All refuse: the first payer's denial."""
        if not payers:
            raise BillingError(f"call {call_id!r}: no payer to try")
        first: Denied | None = None
        for payer in payers:
            answer = self.open(call_id, payer, rate, now)
            if isinstance(answer, Grant):
                return answer
            first = first or answer
        assert first is not None
        return first

    def extend(self, call_id: str, now: float) -> Grant | None:
        """The next slice; None when the credit allows no more (or no such call): the
        call must end once its granted seconds are used."""
        session = self._sessions.get(call_id)
        if session is None:
            return None
        if session.granted is None:
            return Grant(call_id, session.payer, session.tariff, None, Decimal(0), None)
        wallet = self._wallet(session.payer)
        self._roll_day(wallet, now)
        affordable = self._limit(wallet, session)
        if affordable <= session.granted:
            return None
        step = session.tariff.next_increment
        slice_seconds = math.ceil(SLICE_SECONDS / step) * step
        return self._grow(call_id, wallet, session, session.granted + slice_seconds, affordable)

    def granted_seconds(self, call_id: str) -> int | None:
        """Talk seconds granted to the call in total so far; None: no limit."""
        try:
            return self._sessions[call_id].granted
        except KeyError:
            raise BillingError(f"call {call_id!r} holds no credit") from None

    def close(self, call_id: str, talk_seconds: float, now: float) -> Charge | None:
        """End the call's credit session: charge `talk_seconds` (never beyond the grant)
        and release the rest of its reservation. None: nothing to charge, or no such call
        (so a second close charges nothing)."""
        closed = self._close(call_id, talk_seconds, now)
        return None if closed is None else closed.charge

    def settle(self, cdr: Cdr) -> tuple[Cdr, Charge | None]:
        """Close the call of `cdr` on its duration and end time, and give the CDR with its
        payer, tariff, billable seconds and cost, and the charge: the arguments of
        `Store.settle_call`. A call that held no credit (a free route) comes back as it is."""
        session = self._sessions.get(cdr.id)
        closed = self._close(cdr.id, cdr.duration, cdr.end)
        if session is None or closed is None:
            return cdr, None
        rate = session.tariff
        rated = msgspec.structs.replace(
            cdr,
            payer=str(session.payer),
            tariff_prefix=rate.prefix if rate.trunk is None else None,
            rate_per_minute=str(rate.per_minute),
            billing_increment=[rate.first_increment, rate.next_increment],
            billable_seconds=closed.billable_seconds,
            cost=_text(closed.amount),
        )
        return rated, closed.charge

    def checkpoint(self, active: ActiveCall) -> ActiveCall:
        """The checkpoint row with the call's payer, tariff and grant, so that a restart
        charges it (`Store.recover_open_calls`)."""
        session = self._sessions.get(active.id)
        if session is None:
            return active
        rate = session.tariff
        return msgspec.structs.replace(
            active,
            payer=str(session.payer),
            tariff_prefix=rate.prefix if rate.trunk is None else None,
            rate_per_minute=str(rate.per_minute),
            billing_increment=[rate.first_increment, rate.next_increment],
            granted_seconds=session.granted,
        )

    # -- the arithmetic -----------------------------------------------------------------------

    def _roll_day(self, wallet: _Wallet, now: float) -> None:
        today = _day(now)
        if today != wallet.day:
            wallet.day, wallet.spent = today, Decimal(0)

    def _denial(self, payer: Payer, wallet: _Wallet, rate: Tariff) -> Denied | None:
        room = wallet.balance - wallet.reserved
        if affordable_seconds(room, rate) == 0:
            return Denied(
                payer,
                "insufficient-balance",
                f"{payer}: {_text(max(room, Decimal(0)))} available does not pay the first"
                f" {rate.first_increment} s at {rate.per_minute}/min",
            )
        if self.daily_cap > 0:
            left = self.daily_cap - wallet.spent - wallet.reserved
            if affordable_seconds(left, rate) == 0:
                return Denied(
                    payer,
                    "daily-spend-cap",
                    f"{payer}: daily spend cap {_text(self.daily_cap)} reached"
                    f" ({_text(wallet.spent)} spent today, {_text(wallet.reserved)} in calls)",
                )
        return None

    def _limit(self, wallet: _Wallet, session: _Session) -> int:
        """Longest grant the session may hold: what its own reservation plus the credit
        no other call holds affords, within the daily cap."""
        others = wallet.reserved - session.reserved
        longest = affordable_seconds(wallet.balance - others, session.tariff)
        if self.daily_cap > 0:
            capped = affordable_seconds(self.daily_cap - wallet.spent - others, session.tariff)
            longest = min(longest or 0, capped or 0)
        return longest or 0

    def _grow(
        self, call_id: str, wallet: _Wallet, session: _Session, wanted: int, affordable: int
    ) -> Grant:
        # `affordable` ends on a block boundary and so does `wanted`: so does the grant.
        session.granted = min(wanted, affordable)
        price = cost(float(session.granted), session.tariff)
        wallet.reserved += price - session.reserved
        session.reserved = price
        return Grant(call_id, session.payer, session.tariff, session.granted, price, affordable)

    def _close(self, call_id: str, talk_seconds: float, now: float) -> _Closed | None:
        session = self._sessions.get(call_id)
        if session is None:
            return None
        talk = billable_seconds(talk_seconds, session.tariff)  # refuses a bad duration first
        if session.granted is not None:
            talk = min(talk, session.granted)
        amount = cost(float(talk), session.tariff)
        del self._sessions[call_id]
        wallet = self._wallet(session.payer)
        self._roll_day(wallet, now)
        wallet.reserved -= session.reserved
        wallet.balance -= amount
        wallet.spent += amount
        charge = None
        if amount > 0:
            payer = session.payer
            charge = Charge(
                kind=payer.kind, account=payer.name, amount=_text(amount), call_id=call_id
            )
        return _Closed(charge, talk, amount)
