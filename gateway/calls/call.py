"""The record of one call: who, where, when, how it ended (and its CDR).

Kept apart from the B2BUA's coroutine so listings, checkpoints and CDRs read
plain data. Dispositions and end reasons are the vocabulary of the CDR table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import msgspec

from gateway.media.quality import CallQuality
from gateway.store.model import ActiveCall, Cdr


class CallState(Enum):
    SETUP = "setup"
    RINGING = "ringing"
    EARLY_MEDIA = "early-media"
    ANSWERED = "answered"
    ENDED = "ended"


def disposition_for(status: int | None, answered: bool, end_reason: str) -> str:
    """How the call ended, in one word, for CDRs (answered / busy / no-answer / ...)."""
    if answered:
        return "answered"
    if end_reason in ("caller-cancel",):
        return "cancelled"
    if end_reason == "no-answer-timeout" or status in (408, 480):
        return "no-answer"
    if status in (486, 600):
        return "busy"
    if (status is not None and 400 <= status < 500) or status in (603, 604, 606):
        return "rejected"
    return "failed"


@dataclass
class CallRecord:
    id: str
    caller: str
    callee: str
    route: str  # "app", "trunk", "fallback" (a subscriber's number) or "emergency"
    trunk: str | None
    caller_call_id: str
    callee_call_id: str = ""
    start: float = field(default_factory=time.time)
    answer: float | None = None
    end: float | None = None
    state: CallState = CallState.SETUP
    end_reason: str = ""
    sip_status: int | None = None
    # Trunks tried in least-cost order (the carrying one last), and why any was skipped.
    trunks_tried: list[str] = field(default_factory=list)
    trunk_skips: dict[str, str] = field(default_factory=dict)
    partner: str | None = None  # the partner whose API or masked number made the call
    q850_cause: int | None = None  # why the callee side failed or ended (RFC 3326 Reason)
    reason_text: str | None = None
    quality: CallQuality | None = None  # per-leg quality at the end, for the CDR

    def finish(self, reason: str, status: int | None = None) -> None:
        if self.end is not None:
            return  # the first cause of the end is the one recorded
        self.end = time.time()
        self.end_reason = reason
        if status is not None:
            self.sip_status = status
        self.state = CallState.ENDED

    @property
    def duration(self) -> float:
        if self.answer is None:
            return 0.0
        end = self.end if self.end is not None else time.time()
        return max(0.0, end - self.answer)

    def cdr(self) -> Cdr:
        end = self.end if self.end is not None else time.time()
        cdr = Cdr(
            id=self.id,
            caller=self.caller,
            callee=self.callee,
            route=self.route,
            trunk=self.trunk,
            start=self.start,
            answer=self.answer,
            end=end,
            duration=round(self.duration, 3),
            disposition=disposition_for(self.sip_status, self.answer is not None, self.end_reason),
            end_reason=self.end_reason or "unknown",
            sip_status=self.sip_status,
            caller_call_id=self.caller_call_id,
            callee_call_id=self.callee_call_id,
            partner=self.partner,
            trunks_tried=list(self.trunks_tried),
            q850_cause=self.q850_cause,
            reason_text=self.reason_text,
        )
        return msgspec.structs.replace(cdr, **self._quality_fields())

    def _quality_fields(self) -> dict[str, float | None]:
        quality = self.quality
        if quality is None:
            return {}
        fields: dict[str, float | None] = {}
        for leg in (quality.a, quality.b):
            fields[f"mos_{leg.leg}"] = leg.mos
            fields[f"loss_{leg.leg}"] = leg.loss_pct
            fields[f"jitter_{leg.leg}"] = leg.jitter_ms
            fields[f"rtt_{leg.leg}"] = leg.rtt_ms
        return fields

    def checkpoint(self, now: float) -> ActiveCall:
        return ActiveCall(
            id=self.id,
            caller=self.caller,
            callee=self.callee,
            route=self.route,
            trunk=self.trunk,
            start=self.start,
            answer=self.answer,
            last_seen=now,
            caller_call_id=self.caller_call_id,
            callee_call_id=self.callee_call_id,
            partner=self.partner,
        )
