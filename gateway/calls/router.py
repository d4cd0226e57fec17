"""Where a call goes: to a registered app user, or out on a carrier trunk.

The router only decides; the B2BUA carries the decision out. This is the
foundation's routing (app-to-app when the callee is a registered subscriber,
everything else to the trunk whose prefix matches longest); fallback,
least-cost routing and number plans build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    number: str  # E.164 with "+"

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


def to_e164(digits: str) -> str | None:
    """'+86139...' or '0086139...' or '86139...' -> '+86139...'; None when not a number."""
    cleaned = digits.replace("-", "").replace(".", "").replace(" ", "").replace("(", "")
    cleaned = cleaned.replace(")", "")
    if cleaned.startswith("+"):
        body = cleaned[1:]
    elif cleaned.startswith("00"):
        body = cleaned[2:]
    else:
        body = cleaned
    if not body.isdigit() or not 3 <= len(body) <= 15:
        return None
    return "+" + body


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


class Router:
    def __init__(self, config: Config) -> None:
        self.trunks = list(config.trunks)

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
        number = to_e164(user) if callee is None else None
        if callee is None and number is not None:
            callee = numbers.get(number)
        if callee is not None:
            contacts = bindings_of(callee.username)
            if contacts:
                return AppRoute(callee, contacts)
            return Refusal(480, "Temporarily Unavailable")
        if number is None:
            return Refusal(404, "Not Found")
        trunk = pick_trunk(self.trunks, number)
        if trunk is None:
            return Refusal(404, "No Route To Destination")
        return TrunkRoute(trunk, number)
