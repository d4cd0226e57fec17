"""Start-up of prepaid credit: provision the configured accounts, load them into credit control.

Subscribers' balances and partners' budgets from the config become store accounts (created
once, never reset by a restart); then every stored account is loaded into a
`gateway.calls.billing.CreditControl` with what it spent since the start of the UTC day,
so the daily spend cap holds across restarts.
"""

from __future__ import annotations

from gateway.calls.billing import CreditControl, configured_accounts, utc_day_start
from gateway.config import Config
from gateway.store.base import Store

__all__ = ["open_credit"]


async def open_credit(store: Store, config: Config, now: float) -> CreditControl:
    """Ensure every configured account exists and return credit control loaded from the store."""
    credit = CreditControl.from_config(config)
    for kind, name, initial in configured_accounts(config):
        await store.ensure_account(kind, name, initial)
    day_start = utc_day_start(now)
    for account in await store.list_accounts():
        spent = await store.spent_since(account.kind, account.name, day_start)
        credit.load(account, spent, now)
    return credit
