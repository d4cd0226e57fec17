"""Where a call goes: to a registered app user, or out on a carrier trunk.

The router only decides; the B2BUA carries the decision out:

* a subscriber (by name or by one of its numbers) who is registered: app to app;
* one who is not: its phone number through a carrier, when the subscriber and the
  global policy allow it (``routing.fallback_to_number``), else 480;
* an emergency short code of the number plan: a carrier, always (no limits apply);
* any other number, read in the configured country's plan (national, international
  or E.164 form): least-cost routing over the trunks whose prefixes match it;
* a carrier's call to one of our numbers (a DID, :meth:`Router.route_inbound`): the
  owner's app, then the owner's own mobile when it has one, else 480; no transit.

Least-cost routing orders the candidate trunks by the length of their longest
matching prefix (longer first), then by what the carrier charges per minute
(cheaper first), then by ``priority`` (lower first), then by configuration order.
The B2BUA tries them in that order and moves on after 408, a 5xx or no response
(never after 486 or 603); it skips a trunk the health checks mark down or whose
channels are all in use. An app leg that does not answer within
``routing.ring_timeout``, or fails with 408, 480 or 503, falls back to the
subscriber's number when a fallback route exists (:attr:`AppRoute.fallback`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

from gateway.calls.numbers import PLANS, DialledKind, NumberError, NumberPlan, classify
from gateway.config import Config, TrunkConfig
from gateway.sip.uri import SipUri, TelUri
from gateway.store.model import Binding, Subscriber


@dataclass(frozen=True, slots=True)
class AppRoute:
    subscriber: Subscriber
    bindings: list[Binding]
    # The subscriber's number through the carriers, for when the app does not answer.
    fallback: TrunkRoute | None = None


@dataclass(frozen=True, slots=True)
class TrunkRoute:
    trunk: TrunkConfig
    number: str  # E.164 with "+", or an emergency short code
    emergency: bool = False
    # The callee is a subscriber whose app is not there: its phone number instead.
    fallback_for: str | None = None
    # Further trunks for the same number, in least-cost order, for failover.
    alternatives: tuple[TrunkConfig, ...] = ()

    @property
    def trunks(self) -> tuple[TrunkConfig, ...]:
        """Every trunk this route may use, in the order they are tried."""
        return (self.trunk, *self.alternatives)

    @property
    def request_uri(self) -> str:
        trunk = self.trunk
        if trunk.resolve == "rfc3263":  # the domain; DNS says where it is (RFC 3263 4)
            return f"sip:{self.number}@{trunk.host}"
        return f"sip:{self.number}@{trunk.host}:{trunk.port}"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


Route = AppRoute | TrunkRoute | Refusal


def dialled(uri: SipUri | TelUri) -> str | None:
    if isinstance(uri, TelUri):
        return uri.number
    return uri.user


def _match_length(trunk: TrunkConfig, digits: str) -> int:
    """The length of the trunk's longest prefix of ``digits``; -1 when none matches."""
    lengths = [len(p.lstrip("+")) for p in trunk.prefixes if digits.startswith(p.lstrip("+"))]
    return max(lengths, default=-1)


def lcr_order(trunks: list[TrunkConfig], number: str) -> list[TrunkConfig]:
    """The trunks that take ``number``, best first: longest prefix, price, priority."""
    digits = number.lstrip("+")
    ranked = []
    for position, trunk in enumerate(trunks):
        length = _match_length(trunk, digits)
        if length >= 0:
            key = (-length, Decimal(trunk.price_per_minute), trunk.priority, position)
            ranked.append((key, trunk))
    ranked.sort(key=lambda item: item[0])
    return [trunk for _, trunk in ranked]


def pick_trunk(trunks: list[TrunkConfig], number: str) -> TrunkConfig | None:
    """The least-cost trunk for ``number``, if any takes it."""
    order = lcr_order(trunks, number)
    return order[0] if order else None


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
        return self.route_party(user, subscribers, numbers, bindings_of)

    def route_party(
        self,
        user: str,
        subscribers: dict[str, Subscriber],
        numbers: dict[str, Subscriber],
        bindings_of: Callable[[str], list[Binding]],
    ) -> Route:
        """The route to a subscriber's name or a dialled number (as :meth:`route`)."""
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
        route = self._to_number(where.number)
        return route if route is not None else Refusal(404, "No Route To Destination")

    def route_inbound(
        self,
        called: str,
        numbers: dict[str, Subscriber],
        bindings_of: Callable[[str], list[Binding]],
    ) -> Route:
        """A carrier's call to one of our numbers (a DID): the owner's app; when it is
        offline or does not answer, the owner's own mobile if it has one; else 480.
        Carriers get no transit: a number that is not ours is 404."""
        try:
            where = classify(called, self.plan)
        except NumberError:
            return Refusal(404, "Not Found")
        owner = numbers.get(where.number)
        if owner is None:
            return Refusal(404, "Not Found")
        mobile = None
        if owner.mobile:
            mobile = self._to_number(owner.mobile, fallback_for=owner.username)
        contacts = bindings_of(owner.username)
        if contacts:
            return AppRoute(owner, contacts, fallback=mobile)
        return mobile or Refusal(480, "Temporarily Unavailable")

    def _to_number(self, number: str, fallback_for: str | None = None) -> TrunkRoute | None:
        order = lcr_order(self.trunks, number)
        if not order:
            return None
        return TrunkRoute(
            order[0], number, fallback_for=fallback_for, alternatives=tuple(order[1:])
        )

    def _fallback(self, callee: Subscriber) -> TrunkRoute | None:
        if not (self.fallback and callee.fallback and callee.numbers):
            return None
        return self._to_number(callee.numbers[0], fallback_for=callee.username)

    def _to_subscriber(
        self, callee: Subscriber, bindings_of: Callable[[str], list[Binding]]
    ) -> Route:
        contacts = bindings_of(callee.username)
        fallback = self._fallback(callee)
        if contacts:
            return AppRoute(callee, contacts, fallback=fallback)
        return fallback or Refusal(480, "Temporarily Unavailable")

    def _emergency(self, code: str) -> Route:
        """The default trunk first, then the home country's, then every other trunk."""
        home = "+" + self.plan.country_code
        order = [t for t in self.trunks if t.default]
        order += [t for t in lcr_order(self.trunks, home) if t not in order]
        order += [t for t in self.trunks if t not in order]
        if not order:
            return Refusal(503, "No Trunk For Emergency Calls")
        return TrunkRoute(order[0], code, emergency=True, alternatives=tuple(order[1:]))
