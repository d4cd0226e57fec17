"""Config reload: ``edgegw config reload`` and SIGHUP apply a new config without dropping calls.

The file the gateway was started with is read and checked again (gateway.config). A file
that does not load, or that changes a key only a restart can change, is refused whole with
the reason (file, key, why) and the running config stays as it was. Otherwise the new config
is applied, every change at once:

Live keys (:data:`LIVE_KEYS`): ``subscribers`` (upserted into the store, then the core's
table), ``trunks`` (least-cost routing, trunk sources, OPTIONS health checks restarted with
the new list, outbound registrations: a trunk new to registering registers, one removed or
whose registration settings changed sends Expires: 0 first, the others go on untouched;
gateway.calls.trunk_registration), ``partners`` (API keys, masked pools, budgets),
``tariffs``, ``routing``, ``limits`` (the admission policy: calls counted per account, bans
and the rate limiters whose rate did not change carry over), and the
per-call settings calls read when they start (``media.app_codecs``, ``media.timeout``, the
Opus and jitter-buffer settings, ``sip.no_answer_timeout`` ...). Everything else (listen
addresses, media ports, ``general.var_dir``, ``http.listen``, SIP timers, DNS, logging)
needs a restart.

Calls in progress are untouched: each call took its own reference to the config when it
started (gateway.calls.b2bua), so its dialog, media and billing go on as they were. New
calls see the new config. The swap itself is one synchronous step with no await in it, so
no task ever sees half of the old and half of the new; ``CallCore.config`` is assigned last.
Subscribers or partners removed from the file stay in the store, as after a restart
(start-up only upserts); ``edgegw subscriber remove`` removes one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from gateway.calls.admission import Admission
from gateway.calls.billing import CreditControl, Payer, configured_accounts, utc_day_start
from gateway.calls.core import CallCore
from gateway.calls.numbers import PLANS
from gateway.calls.trunk_health import TrunkHealth
from gateway.config import Config, ConfigError, TrunkConfig, load_config
from gateway.control.server import CommandRefused
from gateway.net.roles import media_addresses_for

if TYPE_CHECKING:
    from gateway.service import Gateway

__all__ = [
    "LIVE_KEYS",
    "ReloadRefused",
    "ReloadResult",
    "Reloader",
    "Restartable",
    "carry_admission",
    "changed_keys",
    "check_reload",
    "trunk_health_for",
]

log = structlog.get_logger("edgegw.reload")

LIVE_KEYS: tuple[str, ...] = (
    "subscribers",
    "trunks",
    "partners",
    "tariffs",
    "routing",
    "limits",
    "general.checkpoint_interval",
    "general.disk_reserve_mb",
    # Retention reads its limits again on every pass.
    "general.log_max_age_days",
    "general.capture_max_mb",
    "general.capture_max_age_days",
    "general.export_max_mb",
    "general.export_max_age_days",
    "http.call_retention",
    "http.max_binding_ttl",
    "sip.no_answer_timeout",
    "media.advertised_host",
    "media.advertised_host6",
    "media.timeout",
    "media.latch_window",
    "media.app_codecs",
    "media.srtp_suites",
    "media.sdes_trusted_networks",
    "media.rtcp_mux",
    "media.ptime",
    "media.opus_bitrate",
    "media.opus_complexity",
    "media.opus_fec",
    "media.opus_packet_loss",
    "media.opus_dtx",
    "media.jitter_initial",
    "media.jitter_min",
    "media.jitter_max",
)
"""Keys a reload applies; a change anywhere else is refused as needing a restart."""

# What CallCore derives from its config in __init__ and a reload must replace with it.
_CORE_DERIVED = (
    "router",
    "tariffs",
    "masked_pools",
    "_literal_trunks",
    "_trunk_networks",
    "media_addresses",  # new SDP addresses (advertised_host), the same sockets' allocators
)


class ReloadRefused(CommandRefused):
    """The new config was not applied; ``str()`` says why, naming the file and key."""


@dataclass(frozen=True)
class ReloadResult:
    file: str
    changed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "changed": self.changed, "applied": bool(self.changed)}


# ---- what changed, and whether a reload may apply it -----------------------------------


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, as deep as both sides have the same shape
    (``trunks[0].codecs``); a list whose length changed is named as the list."""
    return list(_diff(msgspec.to_builtins(old), msgspec.to_builtins(new), ""))


def _diff(old: Any, new: Any, key: str) -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in dict.fromkeys([*old, *new]):
            yield from _diff(old.get(name), new.get(name), f"{key}.{name}" if key else name)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            yield from _diff(before, after, f"{key}[{index}]")
    elif old != new:
        yield key


def _is_live(key: str) -> bool:
    return any(key == live or key.startswith((f"{live}.", f"{live}[")) for live in LIVE_KEYS)


def check_reload(old: Config, new: Config, file: str) -> list[str]:
    """The changed keys of a reload from `old` to `new`; raises ReloadRefused naming the
    first key that needs a restart."""
    changed = changed_keys(old, new)
    for key in changed:
        if not _is_live(key):
            raise ReloadRefused(
                f"{file}: {key}: changes only with a restart (the running config is kept; "
                f"live keys: {', '.join(LIVE_KEYS[:6])} and per-call media settings)"
            )
    watched = old.limits.max_cpu > 0 or old.limits.max_loop_lag > 0
    if not watched and (new.limits.max_cpu > 0 or new.limits.max_loop_lag > 0):
        raise ReloadRefused(
            f"{file}: limits.max_cpu: load checks that were off at start-up turn on only with "
            "a restart (the running config is kept)"
        )
    return changed


# ---- carrying state over ---------------------------------------------------------------


def carry_admission(old: Admission, new: Admission) -> Admission:
    """`new` (built from the new limits) with what `old` learned: calls counted per account,
    the load meter the sampler feeds, bans in force, and each rate limiter whose rate is
    unchanged (its spent tokens)."""
    new.load = old.load
    new._active = old._active
    new.bans._until = old.bans._until
    before, after = old.limits, new.limits
    if (before.auth_failures_before_ban, before.auth_failure_window) == (
        after.auth_failures_before_ban,
        after.auth_failure_window,
    ):
        new.bans._window = old.bans._window
    if before.cps_per_account == after.cps_per_account:
        new.account_rate = old.account_rate
    if before.calls_per_minute_per_account == after.calls_per_minute_per_account:
        new.account_per_minute = old.account_per_minute
    if before.cps == after.cps:
        new.global_rate = old.global_rate
    return new


def trunk_health_for(
    trunks: list[TrunkConfig], current: dict[str, TrunkHealth]
) -> dict[str, TrunkHealth]:
    """Health records of the pinged trunks of a new list: a trunk pinged before with the same
    failure threshold keeps its state, others start up."""
    health: dict[str, TrunkHealth] = {}
    for trunk in trunks:
        if not trunk.options_ping:
            continue
        known = current.get(trunk.name)
        if known is not None and known.failures_to_down == trunk.options_failures:
            health[trunk.name] = known
        else:
            health[trunk.name] = TrunkHealth(trunk.name, trunk.options_failures)
    return health


class Restartable:
    """Runs a task and runs it anew on `restart()` (the trunk health checks after a reload).

    A task that returns by itself (nothing to watch) is not run again until restarted.
    """

    def __init__(self, target: Callable[[], Awaitable[object]]) -> None:
        self._target = target
        self._scope: trio.CancelScope | None = None
        self.runs = 0

    async def run(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                self.runs += 1
                await self._target()
                await trio.sleep_forever()

    def restart(self) -> None:
        if self._scope is not None:
            self._scope.cancel()


# ---- the reload ------------------------------------------------------------------------


class Reloader:
    """Reloads the config file of a running gateway; one reload at a time."""

    def __init__(self, gateway: Gateway, path: Path | None) -> None:
        self.gateway = gateway
        self.path = path
        self.trunk_watch = Restartable(gateway.trunk_monitor.run)
        self.reloads = 0
        self.refusals = 0
        self._lock = trio.Lock()

    async def handle(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ``config_reload`` control command: the result, or ReloadRefused's reason."""
        return (await self.reload()).as_dict()

    async def on_sighup(self) -> None:
        """SIGHUP: reload; a refusal is logged (there is nobody to answer)."""
        try:
            await self.reload()
        except ReloadRefused as exc:
            log.error("config reload refused", reason=str(exc))

    async def reload(self) -> ReloadResult:
        notifier = self.gateway.notifier
        async with self._lock:
            notifier.reloading()
            try:
                result = await self._reload()
            except ReloadRefused:
                self.refusals += 1
                raise
            finally:
                notifier.ready("serving")  # systemd leaves "reloading" on READY=1
        self.reloads += 1
        return result

    async def _reload(self) -> ReloadResult:
        if self.path is None:
            raise ReloadRefused(
                "the gateway runs on the embedded default config: there is no file to "
                "reload (start it with `edgegw run --config FILE`)"
            )
        file = str(self.path)
        try:
            new = await trio.to_thread.run_sync(load_config, self.path)
        except ConfigError as exc:
            raise ReloadRefused(f"invalid config: {exc}") from exc
        old = self.gateway.config
        changed = check_reload(old, new, file)
        if not changed:
            log.info("config reload: no change", file=file)
            return ReloadResult(file, [])
        await self._apply(old, new)
        log.info("config reloaded", file=file, changed=changed)
        return ReloadResult(file, changed)

    async def _apply(self, old: Config, new: Config) -> None:
        gateway = self.gateway
        core = gateway.core
        # Everything that awaits comes first: the store, then loading new accounts.
        before = {entry.username: entry for entry in old.subscribers}
        for entry in new.subscribers:
            if before.get(entry.username) != entry:
                await gateway.store.upsert_subscriber(entry.as_subscriber())
        subscribers = await gateway.store.list_subscribers()
        await self._load_new_accounts(new)
        try:
            fresh = CallCore(
                new,
                core.store,
                core.registrar,
                core.digest,
                media_addresses_for(new, core.media_addresses),
            )
        except Exception as exc:  # a config that passed its checks but cannot be used
            raise ReloadRefused(f"{self.path}: cannot apply: {exc}") from exc
        admission = carry_admission(core.admission, fresh.admission)
        monitor = gateway.trunk_monitor
        health = trunk_health_for(new.trunks, monitor.health)
        daily_cap = CreditControl.from_config(new).daily_cap
        # The swap: no await from here on, so no task sees a mix of old and new.
        for name in _CORE_DERIVED:
            setattr(core, name, getattr(fresh, name))
        core.admission = admission
        core.set_subscribers(subscribers)
        if core.credit is not None:
            core.credit.daily_cap = daily_cap
        partners = gateway.partners
        partners.partners = {partner.name: partner for partner in new.partners}
        partners.plan = PLANS[new.routing.country]
        partners.config = new
        monitor.trunks = {trunk.name: trunk for trunk in new.trunks}
        monitor.health = health
        gateway.trunk_registrations.update(new.trunks)  # de-registers in the background
        gateway.disk.set_reserve(new.general.disk_reserve_mb)
        gateway.config = new
        core.config = new
        self.trunk_watch.restart()

    async def _load_new_accounts(self, new: Config) -> None:
        """Accounts of subscribers and partners new to this config: created in the store
        (an existing one is kept as it is) and loaded into credit control."""
        store, credit = self.gateway.store, self.gateway.core.credit
        day_start = utc_day_start(time.time())
        for kind, name, initial in configured_accounts(new):
            if credit is not None and credit.balance(Payer(kind, name)) is not None:
                continue
            account = await store.ensure_account(kind, name, initial)
            if credit is not None:
                spent = await store.spent_since(kind, name, day_start)
                credit.load(account, spent, time.time())
