"""Where a call goes: to a registered app user, or out on a carrier trunk.

The router only decides; the B2BUA carries the decision out:

* a subscriber (by name or by one of its numbers) who is registered: app to app;
* one who is not: its phone number through a carrier, when the subscriber and the
  global policy allow it (``routing.fallback_to_number``), else 480;
* an emergency short code of the number plan: a carrier, always (no limits apply);
* any other number, read in the configured country's plan (national, international
  or E.164 form): the trunk whose prefix matches longest.

Least-cost routing and failover after the app leg fails build on this (issue 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.calls.numbers import PLANS, DialledKind, NumberError, NumberPlan, classify
from gateway.config import Config, TrunkConfig
from gateway.sip.uri import SipUri, TelUri
from gateway.store.model import Binding, Subscriber


@dataclass(frozen=True, slots=True)
class AppRoute:
    subscriber: Subscriber
    bindings: list[Binding]


@dataclass(frozen=True, slots=True)
class TrunkRoute:
    trunk: TrunkConfig
    number: str  # E.164 with "+", or an emergency short code
    emergency: bool = False
    # The callee is a subscriber whose app is not there: its phone number instead.
    fallback_for: str | None = None

    @property
    def request_uri(self) -> str:
        return f"sip:{self.number}@{self.trunk.host}:{self.trunk.port}"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


Route = AppRoute | TrunkRoute | Refusal


def dialled(uri: SipUri | TelUri) -> str | None:
    if isinstance(uri, TelUri):
        return uri.number
    return uri.user


def pick_trunk(trunks: list[TrunkConfig], number: str) -> TrunkConfig | None:
    """Longest matching prefix (a prefix is compared without its '+')."""
    digits = number.lstrip("+")
    best: tuple[int, TrunkConfig] | None = None
    for trunk in trunks:
        for prefix in trunk.prefixes:
            bare = prefix.lstrip("+")
            if digits.startswith(bare) and (best is None or len(bare) > best[0]):
                best = (len(bare), trunk)
    return best[1] if best else None


def number_plan(config: Config) -> NumberPlan:
    """The configured country's plan, with the configured emergency codes if any."""
    plan = PLANS[config.routing.country]
    if config.routing.emergency:
        plan = replace(plan, emergency=frozenset(config.routing.emergency))
    return plan


class Router:
    def __init__(self, config: Config) -> None:
        self.trunks = list(config.trunks)
        self.plan = number_plan(config)
        self.fallback = config.routing.fallback_to_number

    def route(
        self,
        target: SipUri | TelUri,
        subscribers: dict[str, Subscriber],
        numbers: dict[str, Subscriber],
        bindings_of: Callable[[str], list[Binding]],
    ) -> Route:
        user = dialled(target)
        if not user:
            return Refusal(404, "Not Found")
        callee = subscribers.get(user)
        if callee is not None:
            return self._to_subscriber(callee, bindings_of)
        try:
            where = classify(user, self.plan)
        except NumberError:
            return Refusal(404, "Not Found")
        if where.kind is DialledKind.EMERGENCY:
            return self._emergency(where.number)
        callee = numbers.get(where.number)
        if callee is not None:
            return self._to_subscriber(callee, bindings_of)
        trunk = pick_trunk(self.trunks, where.number)
        if trunk is None:
            return Refusal(404, "No Route To Destination")
        return TrunkRoute(trunk, where.number)

    def _to_subscriber(
        self, callee: Subscriber, bindings_of: Callable[[str], list[Binding]]
    ) -> Route:
        contacts = bindings_of(callee.username)
        if contacts:
            return AppRoute(callee, contacts)
        if self.fallback and callee.fallback and callee.numbers:
            number = callee.numbers[0]
            trunk = pick_trunk(self.trunks, number)
            if trunk is not None:
                return TrunkRoute(trunk, number, fallback_for=callee.username)
        return Refusal(480, "Temporarily Unavailable")

    def _emergency(self, code: str) -> Route:
        """The default trunk, else the one for the home country, else any trunk."""
        home = "+" + self.plan.country_code
        trunk = next((t for t in self.trunks if t.default), None) or pick_trunk(self.trunks, home)
        if trunk is None and self.trunks:
            trunk = self.trunks[0]
        if trunk is None:
            return Refusal(503, "No Trunk For Emergency Calls")
        return TrunkRoute(trunk, code, emergency=True)
