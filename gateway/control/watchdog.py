"""The systemd watchdog, fed from the event loop itself; and a bounded stall to test it with.

``feed_watchdog`` is a Trio task that sends ``WATCHDOG=1`` and sleeps, over and over. It runs
on the gateway's one event loop, so a loop that is stuck (a blocking call, a busy loop, a
deadlock in a native library) stops the feeding, and systemd restarts the gateway once
``WatchdogSec`` passes without a feed. A thread feeding it would keep a hung gateway alive.

``stall_loop`` is the control command ``debug_stall``: it blocks the event loop on purpose for
a bounded time, so a field engineer (and the tests) can see the watchdog act. Nothing else is
served meanwhile, which is the point; the bound keeps a typo from stopping the box for long.
"""

from __future__ import annotations

import math
import time
from typing import Any

import structlog
import trio

from gateway.control.sd_notify import Notifier
from gateway.control.server import CommandRefused

__all__ = ["MAX_STALL", "StallError", "feed_watchdog", "stall_loop"]

log = structlog.get_logger("edgegw.watchdog")

MAX_STALL = 30.0
"""Longest stall ``debug_stall`` accepts, in seconds."""


class StallError(CommandRefused):
    """A ``debug_stall`` request with a missing or out-of-range duration."""


async def feed_watchdog(notifier: Notifier, interval: float) -> None:
    """Send WATCHDOG=1 every `interval` seconds until cancelled, only while the loop runs."""
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def stall_seconds(args: dict[str, Any]) -> float:
    """The stall a ``debug_stall`` request asks for; raises StallError with the reason."""
    seconds = args.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise StallError(f"debug_stall: seconds must be a number, got {seconds!r}")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_STALL):
        raise StallError(f"debug_stall: seconds must be more than 0 and at most {MAX_STALL:g}")
    return float(seconds)


async def stall_loop(args: dict[str, Any]) -> dict[str, float]:
    """Block the event loop for ``args["seconds"]`` (at most MAX_STALL); how long it took."""
    seconds = stall_seconds(args)
    log.warning("stalling the event loop on request", seconds=seconds)
    started = time.monotonic()
    time.sleep(seconds)  # blocking on purpose: this is the stall
    return {"stalled": round(time.monotonic() - started, 3)}
