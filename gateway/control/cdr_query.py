"""The control socket's ``cdr`` command: one page of the CDRs in a time window.

``edgegw cdr`` asks for the newest records; ``edgegw cdr export`` pages through a window
[since, until) of one partner or all, ``limit`` records at a time at growing ``offset``
until a page comes back short. Pages count in the store's order, newest start first; the
store applies the window, the offset and the limit in one query.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.store.base import Store
from gateway.store.model import Cdr

__all__ = ["DEFAULT_LIMIT", "CdrQuery", "CdrQueryError", "fetch_cdrs"]

DEFAULT_LIMIT = 100
"""Records in a page when the request names no ``limit`` (what ``edgegw cdr`` lists)."""

_ARGS = ("since", "until", "partner", "limit", "offset")


class CdrQueryError(ValueError):
    """The ``cdr`` command's arguments are malformed; the message names the argument."""


def _time(args: Mapping[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CdrQueryError(f"{name} must be epoch seconds (a number), got {value!r}")
    if not math.isfinite(value):
        raise CdrQueryError(f"{name} must be a finite time, got {value!r}")
    return float(value)


def _count(args: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CdrQueryError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _partner(args: Mapping[str, Any]) -> str | None:
    value = args.get("partner")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CdrQueryError(f"partner must be a non-empty name, got {value!r}")
    return value


@dataclass(frozen=True)
class CdrQuery:
    """CDRs that started in [since, until) (either bound open when None), of ``partner``
    when given; the page of ``limit`` records after skipping ``offset``, newest first."""

    since: float | None = None
    until: float | None = None
    partner: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> CdrQuery:
        """The query a control request's arguments ask for; raises CdrQueryError."""
        unknown = sorted(set(args) - set(_ARGS))
        if unknown:
            raise CdrQueryError(
                f"unknown argument(s) {', '.join(unknown)}; the cdr command takes "
                f"{', '.join(_ARGS)}"
            )
        return cls(
            since=_time(args, "since"),
            until=_time(args, "until"),
            partner=_partner(args),
            limit=_count(args, "limit", DEFAULT_LIMIT, 1),
            offset=_count(args, "offset", 0, 0),
        )


async def fetch_cdrs(store: Store, query: CdrQuery) -> list[Cdr]:
    """The page ``query`` asks for; shorter than ``query.limit`` only when the window ends."""
    return await store.list_cdrs(
        since=query.since,
        until=query.until,
        limit=query.limit,
        offset=query.offset,
        partner=query.partner,
    )
