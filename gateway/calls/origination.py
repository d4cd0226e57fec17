"""Calls the gateway places itself: the contract between partner click-to-call and the core.

A partner asks (through the HTTP API) for A and B to be connected; the gateway calls A,
and when A answers calls B and bridges the two. `CallOriginator` is what the partner
logic (`gateway.calls.partners`) needs from the call core to do that, and
`ClickToCallState` the states it reports back through a `StateListener`. The core
implements the protocol; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol, runtime_checkable

__all__ = ["CallOriginator", "CallRefused", "ClickToCallState", "StateListener"]


class ClickToCallState(Enum):
    CREATED = "created"
    CALLING_A = "calling_a"
    CALLING_B = "calling_b"
    BRIDGED = "bridged"
    ENDED = "ended"


class CallRefused(Exception):
    """The gateway will not place the call; ``status`` is HTTP-like (402 budget, 403 blocked
    or over a limit, 503 full) and ``reason`` says why in words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


# (new state, end cause when the state is ENDED, e.g. "a-busy", "b-no-answer", "a-bye",
# "api-delete"; None otherwise). Called from the call's own task: it must not block.
StateListener = Callable[[ClickToCallState, str | None], None]


@runtime_checkable
class CallOriginator(Protocol):
    async def click_to_call(self, *, partner: str, a: str, b: str, on_state: StateListener) -> str:
        """Start calling A for `partner` and return the call's id; raises CallRefused.

        `a` and `b` are E.164 numbers ("+8613800138000") or subscriber usernames.
        """
        ...

    def hangup(self, call_id: str) -> bool:
        """End a call placed by `click_to_call`; False when no such call is live."""
        ...
