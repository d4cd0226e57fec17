"""Billing: tariff choice, prepaid credit control in slices, daily cap, settling, start-up."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls.accounts import open_credit
from gateway.calls.billing import (
    BillingError,
    CreditControl,
    Denied,
    Grant,
    Payer,
    Tariffs,
    configured_accounts,
    utc_day_start,
)
from gateway.calls.rating import RatingError, affordable_seconds, tariff
from gateway.config import (
    Config,
    ConfigError,
    LimitsConfig,
    PartnerConfig,
    TariffConfig,
    TrunkConfig,
    default_config,
    parse_config,
)
from gateway.store.model import Account, ActiveCall, Cdr, Charge
from gateway.store.sqlite import SqliteStore

D = Decimal
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
ALICE = Payer("subscriber", "1001")
DEMO = Payer("partner", "demo")
TEN_CENTS = tariff("86", "0.10", (60, 60))


def credit_with(
    *accounts: tuple[Payer, str], cap: str = "0.00", spent: str = "0.00"
) -> CreditControl:
    credit = CreditControl(cap)
    for payer, balance in accounts:
        credit.load(Account(kind=payer.kind, name=payer.name, balance=balance), spent, T0)
    return credit


def granted(answer: Grant | Denied | None) -> Grant:
    assert isinstance(answer, Grant), answer
    return answer


def run_out(credit: CreditControl, call_id: str, now: float = T0) -> list[int | None]:
    """What a call's coordinator does: ask for a slice each time one is used up."""
    seconds = [granted(credit.open(call_id, ALICE, TEN_CENTS, now)).seconds]
    while (more := credit.extend(call_id, now)) is not None:
        seconds.append(more.seconds)
    return seconds


# -- tariffs -------------------------------------------------------------------------------


def config_with_tariffs() -> Config:
    return Config(
        tariffs=[
            TariffConfig(prefix="86", per_minute="0.10", billing_increment=(60, 60)),
            TariffConfig(prefix="86139", per_minute="0.20", billing_increment=(6, 6)),
        ],
        trunks=[
            TrunkConfig(name="cheap", host="127.0.0.1", tariff_per_minute="0.50"),
            TrunkConfig(
                name="premium",
                host="127.0.0.2",
                tariff_per_minute="1.20",
                billing_increment=(30, 6),
            ),
        ],
    )


def test_retail_tariff_longest_prefix_then_the_trunk_tariff() -> None:
    tariffs = Tariffs.from_config(config_with_tariffs())
    mobile = tariffs.lookup("+8613900139002", "cheap")
    assert mobile is not None and (mobile.prefix, mobile.per_minute) == ("86139", D("0.20"))
    assert mobile.trunk is None
    land = tariffs.lookup("+8610123456", "cheap")
    assert land is not None and land.per_minute == D("0.10")
    abroad = tariffs.lookup("+14155550100", "premium")
    assert abroad is not None and abroad.trunk == "premium"
    assert (abroad.per_minute, abroad.first_increment, abroad.next_increment) == (D("1.20"), 30, 6)
    assert tariffs.lookup("+14155550100", None) is None


def test_app_and_emergency_calls_are_free_whatever_the_number() -> None:
    tariffs = Tariffs.from_config(config_with_tariffs())
    assert tariffs.for_call("app", "+8613900139002", None) is None
    assert tariffs.for_call("emergency", "+86110", "cheap") is None
    paid = tariffs.for_call("fallback", "+8613900139002", "cheap")
    assert paid is not None and paid.prefix == "86139"


def test_unknown_trunk_and_malformed_number_are_refused() -> None:
    tariffs = Tariffs.from_config(config_with_tariffs())
    with pytest.raises(BillingError, match="no trunk named 'gone'"):
        tariffs.lookup("+14155550100", "gone")
    with pytest.raises(RatingError, match=r"not an E\.164 number"):
        tariffs.lookup("14155550100", "cheap")


def test_the_demo_trunk_tariff_rates_every_number() -> None:
    demo = Tariffs.from_config(default_config()).lookup("+8613800138000", "demo-carrier")
    assert demo is not None and (demo.per_minute, demo.first_increment) == (D("0.10"), 60)


def test_payer_text_form() -> None:
    assert str(ALICE) == "subscriber:1001"
    assert Payer.parse("partner:demo") == DEMO
    assert Payer.parse("subscriber:a:b") == Payer("subscriber", "a:b")
    for bad in ("1001", "bank:x", "partner:", ""):
        with pytest.raises(BillingError, match="payer must be"):
            Payer.parse(bad)


# -- the balance runs out at the right second ----------------------------------------------


def test_a_call_ends_at_exactly_the_affordable_second_60_60() -> None:
    credit = credit_with((ALICE, "0.25"))
    first = granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    assert (first.seconds, first.reserved, first.affordable_seconds) == (60, D("0.10"), 120)
    assert run_out(credit_with((ALICE, "0.25")), "c1") == [60, 120]
    assert affordable_seconds(D("0.25"), TEN_CENTS) == 120
    assert credit.extend("c1", T0 + 55) is not None
    assert credit.extend("c1", T0 + 115) is None  # no more: the call ends at 120 s
    assert credit.granted_seconds("c1") == 120
    assert credit.close("c1", 120.0, T0 + 122) == Charge(
        kind="subscriber", account="1001", amount="0.20", call_id="c1"
    )
    assert credit.balance(ALICE) == D("0.05")
    assert credit.reserved(ALICE) == 0


def test_a_call_ends_at_exactly_the_affordable_second_1_1() -> None:
    per_second = tariff("", "6.00", (1, 1))
    credit = credit_with((ALICE, "0.30"))
    first = granted(credit.open("c1", ALICE, per_second, T0))
    assert (first.seconds, first.affordable_seconds) == (1, 3)
    assert granted(credit.extend("c1", T0 + 1)).seconds == 3
    assert credit.extend("c1", T0 + 3) is None
    charge = credit.close("c1", 3.0, T0 + 3)
    assert charge is not None and charge.amount == "0.30"
    assert credit.balance(ALICE) == 0


def test_slices_are_whole_next_increments_of_at_least_60_s() -> None:
    credit = credit_with((ALICE, "100.00"))
    odd = tariff("", "0.35", (30, 7))
    assert granted(credit.open("c1", ALICE, odd, T0)).seconds == 30
    assert granted(credit.extend("c1", T0)).seconds == 30 + 9 * 7  # 63 s >= 60 s
    assert granted(credit.extend("c1", T0)).seconds == 30 + 18 * 7
    six = tariff("", "0.10", (6, 6))
    assert granted(credit.open("c2", ALICE, six, T0)).seconds == 6
    assert granted(credit.extend("c2", T0)).seconds == 66


def test_talk_beyond_the_grant_is_charged_no_more_than_reserved() -> None:
    credit = credit_with((ALICE, "0.25"))
    run_out(credit, "c1")
    charge = credit.close("c1", 120.4, T0 + 130)  # the BYE came 0.4 s late
    assert charge is not None and charge.amount == "0.20"
    assert credit.balance(ALICE) == D("0.05")


def test_closing_releases_the_unused_reservation() -> None:
    credit = credit_with((ALICE, "0.30"))
    granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    granted(credit.extend("c1", T0))
    granted(credit.extend("c1", T0))
    assert credit.reserved(ALICE) == D("0.30")
    assert isinstance(credit.open("c2", ALICE, TEN_CENTS, T0), Denied)
    charge = credit.close("c1", 30.0, T0 + 30)
    assert charge is not None and charge.amount == "0.10"
    assert (credit.balance(ALICE), credit.reserved(ALICE)) == (D("0.20"), D(0))
    assert run_out(credit, "c2") == [60, 120]  # the released credit is usable again


def test_unanswered_call_costs_nothing_and_close_is_once() -> None:
    credit = credit_with((ALICE, "1.00"))
    granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    assert credit.close("c1", 0.0, T0 + 20) is None
    assert credit.close("c1", 50.0, T0 + 21) is None  # failover or retry: no second charge
    assert credit.extend("c1", T0) is None
    assert (credit.balance(ALICE), credit.reserved(ALICE)) == (D("1.00"), D(0))
    with pytest.raises(BillingError, match="holds no credit"):
        credit.granted_seconds("c1")


def test_a_bad_duration_is_refused_and_keeps_the_session() -> None:
    credit = credit_with((ALICE, "1.00"))
    granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(RatingError, match="duration"):
            credit.close("c1", bad, T0)
    assert "c1" in credit and credit.reserved(ALICE) == D("0.10")


# -- refusals ------------------------------------------------------------------------------


def test_insufficient_balance_and_unknown_account_are_denied() -> None:
    credit = credit_with((ALICE, "0.09"))
    poor = credit.open("c1", ALICE, TEN_CENTS, T0)
    assert isinstance(poor, Denied) and poor.reason == "insufficient-balance"
    assert "0.09 available" in poor.message
    ghost = credit.open("c2", Payer("subscriber", "ghost"), TEN_CENTS, T0)
    assert isinstance(ghost, Denied) and ghost.reason == "no-account"
    assert "c1" not in credit and "c2" not in credit
    granted(credit_with((ALICE, "0.10")).open("c3", ALICE, TEN_CENTS, T0))
    with pytest.raises(BillingError, match="no account partner:demo"):
        credit.credit(DEMO, "1.00")


def test_opening_a_call_twice_is_a_programming_error() -> None:
    credit = credit_with((ALICE, "1.00"))
    granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    with pytest.raises(BillingError, match="already holds credit"):
        credit.open("c1", ALICE, TEN_CENTS, T0)


def test_free_tariff_grants_without_limit_and_charges_nothing() -> None:
    credit = credit_with((ALICE, "0.00"))
    free = granted(credit.open("c1", ALICE, tariff("", "0", (60, 60)), T0))
    assert (free.seconds, free.reserved, free.affordable_seconds) == (None, D(0), None)
    assert granted(credit.extend("c1", T0)).seconds is None
    assert credit.granted_seconds("c1") is None
    assert credit.close("c1", 3600.0, T0) is None


def test_top_up_during_a_call_allows_more_slices() -> None:
    credit = credit_with((ALICE, "0.10"))
    assert run_out(credit, "c1") == [60]
    credit.credit(ALICE, "0.50")
    assert granted(credit.extend("c1", T0 + 60)).seconds == 120


# -- two calls of one account --------------------------------------------------------------


def test_two_simultaneous_calls_never_overdraw() -> None:
    credit = credit_with((ALICE, "0.25"))
    a = granted(credit.open("a", ALICE, TEN_CENTS, T0))
    b = granted(credit.open("b", ALICE, TEN_CENTS, T0))
    assert (a.affordable_seconds, b.affordable_seconds) == (120, 60)  # b sees a's reservation
    assert credit.extend("a", T0 + 60) is None  # 0.05 left unreserved: no 60 s block
    assert credit.extend("b", T0 + 60) is None
    third = credit.open("c", ALICE, TEN_CENTS, T0)
    assert isinstance(third, Denied) and third.reason == "insufficient-balance"
    charges = [credit.close("a", 75.0, T0 + 80), credit.close("b", 61.0, T0 + 80)]
    assert [c.amount for c in charges if c] == ["0.10", "0.10"]  # both cut at their grant
    assert credit.balance(ALICE) == D("0.05")


TARIFFS = [
    tariff("", "0.10", (60, 60)),
    tariff("", "6.00", (1, 1)),
    tariff("", "0.35", (30, 6)),
    tariff("", "0.03", (6, 6)),
    tariff("", "1.99", (60, 1)),
]


@settings(max_examples=150, deadline=None)
@given(
    cents=st.integers(0, 500),
    cap_cents=st.sampled_from([0, 50, 120, 1000]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["open", "extend", "close"]),
            st.integers(0, 3),
            st.integers(0, len(TARIFFS) - 1),
            st.floats(0, 400),
        ),
        max_size=50,
    ),
)
def test_no_interleaving_of_calls_overdraws_or_passes_the_cap(
    cents: int, cap_cents: int, steps: list[tuple[str, int, int, float]]
) -> None:
    start = D(cents) / 100
    cap = D(cap_cents) / 100
    credit = credit_with((ALICE, str(start)), cap=str(cap))
    charged = D(0)
    reservations: dict[str, Decimal] = {}
    for action, n, which, talk in steps:
        call = f"call-{n}"
        if action == "open" and call not in credit:
            answer = credit.open(call, ALICE, TARIFFS[which], T0)
            if isinstance(answer, Grant):
                reservations[call] = answer.reserved
        elif action == "extend":
            more = credit.extend(call, T0)
            if more is not None:
                assert more.reserved >= reservations[call]
                reservations[call] = more.reserved
        elif action == "close" and call in credit:
            charge = credit.close(call, talk, T0)
            spent = D(charge.amount) if charge else D(0)
            assert spent <= reservations.pop(call)
            charged += spent
        assert credit.reserved(ALICE) == sum(reservations.values(), D(0))
        assert charged + credit.reserved(ALICE) <= start
        if cap:
            assert charged + credit.reserved(ALICE) <= cap
        assert credit.balance(ALICE) == start - charged


# -- the daily spend cap -------------------------------------------------------------------


def test_cap_reached_refuses_the_call() -> None:
    credit = credit_with((ALICE, "100.00"), cap="1.00", spent="0.95")
    refused = credit.open("c1", ALICE, TEN_CENTS, T0)
    assert isinstance(refused, Denied) and refused.reason == "daily-spend-cap"
    assert "daily spend cap 1.00 reached" in refused.message


def test_cap_bounds_the_grant_of_a_call_in_progress() -> None:
    credit = credit_with((ALICE, "100.00"), cap="1.00", spent="0.80")
    first = granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    assert first.affordable_seconds == 120
    assert granted(credit.extend("c1", T0 + 60)).seconds == 120
    assert credit.extend("c1", T0 + 120) is None
    credit.close("c1", 120.0, T0 + 120)
    refused = credit.open("c2", ALICE, TEN_CENTS, T0 + 130)
    assert isinstance(refused, Denied) and refused.reason == "daily-spend-cap"


def test_the_cap_counts_per_utc_day() -> None:
    credit = credit_with((ALICE, "100.00"), cap="0.10")
    run_out(credit, "c1")
    credit.close("c1", 60.0, T0 + 60)
    assert isinstance(credit.open("c2", ALICE, TEN_CENTS, T0 + 61), Denied)
    tomorrow = utc_day_start(T0) + 86_400
    assert granted(credit.open("c3", ALICE, TEN_CENTS, tomorrow)).seconds == 60
    assert utc_day_start(T0) == 1_699_920_000.0  # 2023-11-14 00:00:00 UTC


def test_balance_is_checked_before_the_cap() -> None:
    credit = credit_with((ALICE, "0.00"), cap="1.00", spent="1.00")
    refused = credit.open("c1", ALICE, TEN_CENTS, T0)
    assert isinstance(refused, Denied) and refused.reason == "insufficient-balance"


def test_bad_cap_and_amounts_are_refused() -> None:
    with pytest.raises(BillingError, match="daily spend cap"):
        CreditControl("-1.00")
    with pytest.raises(BillingError, match="daily spend cap"):
        CreditControl("ten")
    credit = CreditControl()
    with pytest.raises(BillingError, match="balance of subscriber:1001"):
        credit.load(Account(kind="subscriber", name="1001", balance="1.5e2"), "0.00", T0)
    with pytest.raises(BillingError, match="whole cents"):
        credit_with((ALICE, "1.00")).credit(ALICE, D("0.001"))


# -- partners ------------------------------------------------------------------------------


def test_a_spent_partner_budget_falls_back_to_the_user_when_policy_says_so() -> None:
    credit = credit_with((DEMO, "0.05"), (ALICE, "1.00"))
    refused = credit.open_first("c1", [DEMO], TEN_CENTS, T0)
    assert isinstance(refused, Denied) and refused.payer == DEMO
    grant = granted(credit.open_first("c1", [DEMO, ALICE], TEN_CENTS, T0))
    assert grant.payer == ALICE
    assert credit.reserved(DEMO) == 0 and credit.reserved(ALICE) == D("0.10")
    with pytest.raises(BillingError, match="no payer"):
        credit.open_first("c2", [], TEN_CENTS, T0)


def test_partner_billing_config_fields_and_their_checks() -> None:
    partner = '[[partners]]\nname = "p"\napi_key = "k"\n'
    config = parse_config(
        partner + 'bill_user = true\ncallback_url = "https://cb.example/x?y=1"\n'
        'callback_secret = "s3cret"\n',
        source="x.toml",
    )
    assert config.partners[0] == PartnerConfig(
        name="p",
        api_key="k",
        bill_user=True,
        callback_url="https://cb.example/x?y=1",
        callback_secret="s3cret",
    )
    bad = {
        'callback_url = "ftp://cb.example"\ncallback_secret = "s"\n': "callback_url",
        'callback_url = "https://cb.example"\n': "callback_secret",
        'budget = "1.005"\n': "whole cents",
        'bill_user = "yes"\n': "bill_user",
    }
    for extra, named in bad.items():
        with pytest.raises(ConfigError, match=named):
            parse_config(partner + extra, source="x.toml")


# -- settling, checkpoints and start-up ----------------------------------------------------


def make_cdr(call_id: str, duration: float, **extra: Any) -> Cdr:
    fields: dict[str, Any] = {
        "id": call_id,
        "caller": "1001",
        "callee": "+8613800138000",
        "route": "trunk",
        "trunk": "demo-carrier",
        "start": T0,
        "answer": T0 + 1,
        "end": T0 + 1 + duration,
        "duration": duration,
        "disposition": "answered",
        "end_reason": "caller-bye",
        "sip_status": 200,
        "caller_call_id": "a",
        "callee_call_id": "b",
    }
    fields.update(extra)
    return msgspec.convert(fields, Cdr)


def test_settle_gives_the_rated_cdr_and_its_charge() -> None:
    credit = credit_with((ALICE, "1.00"))
    run_out(credit, "c1")
    record, charge = credit.settle(make_cdr("c1", 61.5, partner="demo"))
    assert charge == Charge(kind="subscriber", account="1001", amount="0.20", call_id="c1")
    assert (record.payer, record.partner, record.tariff_prefix) == ("subscriber:1001", "demo", "86")
    assert (record.rate_per_minute, record.billing_increment) == ("0.10", [60, 60])
    assert (record.billable_seconds, record.cost) == (120, "0.20")
    again = make_cdr("c1", 61.5)
    assert credit.settle(again) == (again, None)  # no second charge


def test_settle_of_a_trunk_tariff_names_no_retail_prefix() -> None:
    trunk_rate = Tariffs.from_config(default_config()).lookup("+14155550100", "demo-carrier")
    assert trunk_rate is not None
    credit = credit_with((ALICE, "1.00"))
    granted(credit.open("c1", ALICE, trunk_rate, T0))
    record, charge = credit.settle(make_cdr("c1", 10.0))
    assert (record.tariff_prefix, record.rate_per_minute, record.cost) == (None, "0.10", "0.10")
    assert charge is not None


def test_checkpoint_carries_payer_tariff_and_grant() -> None:
    credit = credit_with((ALICE, "1.00"))
    run_out(credit, "c1")
    active = ActiveCall(
        id="c1",
        caller="1001",
        callee="+8613800138000",
        route="trunk",
        trunk="demo-carrier",
        start=T0,
        answer=T0 + 1,
        last_seen=T0 + 30,
        caller_call_id="a",
        callee_call_id="b",
    )
    marked = credit.checkpoint(active)
    assert (marked.payer, marked.tariff_prefix, marked.rate_per_minute) == (
        "subscriber:1001",
        "86",
        "0.10",
    )
    assert (marked.billing_increment, marked.granted_seconds) == ([60, 60], 600)
    other = msgspec.structs.replace(active, id="free")
    assert credit.checkpoint(other) is other


async def test_checkpointed_call_is_charged_by_recovery_like_settle(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    credit = credit_with((ALICE, "1.00"))
    granted(credit.open("c1", ALICE, TEN_CENTS, T0))
    active = ActiveCall(
        id="c1",
        caller="1001",
        callee="+8613800138000",
        route="trunk",
        trunk="demo-carrier",
        start=T0,
        answer=T0 + 1,
        last_seen=T0 + 200,  # beyond the 60 s granted
        caller_call_id="a",
        callee_call_id="b",
    )
    async with SqliteStore(path) as store:
        await store.ensure_account("subscriber", "1001", "1.00")
        await store.checkpoint_active_calls([credit.checkpoint(active)], T0 + 200)
    async with SqliteStore(path) as store:
        (cdr,) = await store.recover_open_calls(T0 + 300)
        assert (cdr.payer, cdr.billable_seconds, cdr.cost) == ("subscriber:1001", 60, "0.10")
        account = await store.get_account("subscriber", "1001")
        assert account is not None and account.balance == "0.90"


def test_configured_accounts_are_subscribers_and_partners() -> None:
    assert configured_accounts(default_config()) == [
        ("subscriber", "1001", "1000000.00"),
        ("subscriber", "1002", "1000000.00"),
        ("partner", "demo", "1000000.00"),
    ]


async def test_open_credit_provisions_once_and_loads_todays_spend(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        default_config(tmp_path), limits=LimitsConfig(daily_spend_per_account="5.00")
    )
    async with SqliteStore(tmp_path / "state.db") as store:
        credit = await open_credit(store, config, T0)
        assert credit.balance(ALICE) == D("1000000.00") and credit.daily_cap == D("5.00")
        await store.settle_call(make_cdr("y", 1.0, end=T0 - 86_400), _charge("y", "1.00"))
        await store.settle_call(make_cdr("t", 1.0, end=T0 - 60), _charge("t", "4.95"))
        credit = await open_credit(store, config, T0)  # a restart the same day
        assert credit.balance(ALICE) == D("999994.05")  # never reset to the config's
        refused = credit.open("c1", ALICE, TEN_CENTS, T0)
        assert isinstance(refused, Denied) and refused.reason == "daily-spend-cap"
        assert granted(credit.open("c1", DEMO, TEN_CENTS, T0)).seconds == 60


def _charge(call_id: str, amount: str) -> Charge:
    return Charge(kind="subscriber", account="1001", amount=amount, call_id=call_id)
