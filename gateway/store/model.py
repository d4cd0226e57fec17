"""Records that edgegw keeps in its store (DESIGN rule 5: written before acknowledged).

Plain msgspec Structs shared by every store implementation and by the call logic:
subscribers (app users and the numbers they own), registrar bindings (RFC 3261 10.3,
with the RFC 5626 flow fields), call detail records and the checkpoint rows of calls in
progress, from which a restart closes calls that a crash left open; and the money:
prepaid accounts (subscribers' balances, partners' subsidy budgets), their ledger, the
charge of one call, and partners' masked-number bindings.

Money is always a decimal *string* of whole cents such as "12.50", never a float, so no
binary rounding ever reaches a balance; arithmetic on it uses ``decimal.Decimal``.

Every time here is wall-clock seconds since the epoch (``time.time()``): these records
outlive the process, so the monotonic clock of the protocol code means nothing to them.
The records are frozen; change one with ``msgspec.structs.replace``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SrtpPolicy = Literal["mandatory", "optional", "off"]
Transport = Literal["udp", "tcp", "tls"]
AccountKind = Literal["subscriber", "partner"]
LedgerReason = Literal["provision", "topup", "adjustment", "call"]

__all__ = [
    "Account",
    "AccountKind",
    "ActiveCall",
    "Binding",
    "Cdr",
    "Charge",
    "LedgerEntry",
    "LedgerReason",
    "MaskedBinding",
    "SrtpPolicy",
    "Subscriber",
    "Transport",
]


class Subscriber(msgspec.Struct, frozen=True, kw_only=True):
    """An app user: digest credentials, the E.164 numbers it owns and its policies.

    ``balance`` is a decimal string (e.g. "12.50") so money never passes through a float.
    """

    username: str
    password: str
    numbers: list[str]
    srtp: SrtpPolicy = "optional"
    fallback: bool = True
    balance: str = "0.00"
    # This user's codec preference toward its app; empty: the gateway's (media.app_codecs).
    codecs: list[str] = []
    # E.164 of the user's own mobile phone: a carrier call to one of its numbers goes
    # there when the app is offline. Empty: such calls get 480.
    mobile: str = ""


class Binding(msgspec.Struct, frozen=True, kw_only=True):
    """One registered contact of an address-of-record (RFC 3261 10.3).

    The store keys bindings by (aor, contact). ``source_host``/``source_port`` are where
    the REGISTER came from (the address requests to this contact are sent to, since app
    clients sit behind NAT) and ``local_host``/``local_port`` the gateway's own address it
    arrived on (requests leave from the same socket, through the same NAT pinhole).
    ``transport`` is "udp", "tcp" or "tls"; ``flow_id`` names the transport connection the
    binding arrived on, ``instance`` and ``reg_id`` are the RFC 5626 +sip.instance and reg-id.
    The store records every field as given; it does not judge them.
    """

    aor: str
    contact: str
    expires_at: float
    source_host: str
    source_port: int
    local_host: str
    local_port: int
    transport: str
    flow_id: str | None = None
    instance: str | None = None
    reg_id: int | None = None
    call_id: str
    cseq: int
    user_agent: str | None = None


class Cdr(msgspec.Struct, frozen=True, kw_only=True):
    """A call detail record: one finished call attempt, answered or not.

    ``route`` is "app", "trunk", "fallback" (a subscriber's phone number because its app
    was not there) or "emergency"; ``duration`` is seconds from answer to end (0.0 for an
    unanswered call); ``disposition`` is one of "answered", "busy", "no-answer",
    "cancelled", "failed", "rejected"; ``end_reason`` says who or what ended it (e.g.
    "caller-bye", "media-timeout", "gateway-restart"); ``sip_status`` is the final status
    the caller saw, when there was one. The id is the call's id, the same as its
    ``ActiveCall`` checkpoint row. The store never refuses a CDR for its labels: a call
    that happened is recorded whatever its code called it.
    """

    id: str
    caller: str
    callee: str
    route: str
    trunk: str | None
    start: float
    answer: float | None
    end: float
    duration: float
    disposition: str
    end_reason: str
    sip_status: int | None
    caller_call_id: str
    callee_call_id: str | None
    # Rating (all defaulted: a free call keeps them). ``payer`` is "subscriber:1001" or
    # "partner:demo", None for a free call; ``partner`` the partner whose API or masked
    # binding made the call; the tariff that rated it (``tariff_prefix`` None when the
    # carrying trunk's own tariff did); ``billing_increment`` is [first, next] seconds.
    payer: str | None = None
    partner: str | None = None
    tariff_prefix: str | None = None
    rate_per_minute: str | None = None
    billing_increment: list[int] = []
    billable_seconds: int = 0
    cost: str = "0.00"
    # The Reason header (RFC 3326) of the end, when one came: Q.850 cause and its text.
    q850_cause: int | None = None
    reason_text: str | None = None
    # Trunks in the order least-cost routing tried them, the carrying trunk last.
    trunks_tried: list[str] = []
    # Per-leg quality at the end (gateway.media.quality): E-model MOS, loss %, jitter and
    # round-trip ms; None where nothing measured them (a relayed call has no RTCP of ours).
    mos_a: float | None = None
    mos_b: float | None = None
    loss_a: float | None = None
    loss_b: float | None = None
    jitter_a: float | None = None
    jitter_b: float | None = None
    rtt_a: float | None = None
    rtt_b: float | None = None


class ActiveCall(msgspec.Struct, frozen=True, kw_only=True):
    """Checkpoint row of a call in progress; ``last_seen`` is when it was last known alive.

    A paid call also carries its payer, its tariff and ``granted_seconds`` (the talk time
    its reserved credit covers; None: no limit), so that a restart charges the call it
    recovers, rated up to ``last_seen`` and never beyond what was granted.
    """

    id: str
    caller: str
    callee: str
    route: str
    trunk: str | None
    start: float
    answer: float | None
    last_seen: float
    caller_call_id: str
    callee_call_id: str | None
    payer: str | None = None
    partner: str | None = None
    tariff_prefix: str | None = None
    rate_per_minute: str | None = None
    billing_increment: list[int] = []
    granted_seconds: int | None = None


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """A prepaid account: a subscriber's balance or a partner's subsidy budget."""

    kind: AccountKind
    name: str
    balance: str


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One change of an account's balance; ``amount`` < 0 is a charge, > 0 a credit.

    ``reason`` is "provision" (the account was created), "topup", "adjustment" or "call"
    (then ``call_id`` names the call, whose CDR was written in the same transaction).
    """

    id: int
    kind: AccountKind
    account: str
    amount: str
    balance_after: str
    reason: LedgerReason
    call_id: str | None
    at: float


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What one call costs its payer (``amount`` >= 0); settled with the call's CDR."""

    kind: AccountKind
    account: str
    amount: str
    call_id: str


class MaskedBinding(msgspec.Struct, frozen=True, kw_only=True):
    """A partner's masked number: ``a`` dialling ``number`` reaches ``b`` and back, until
    ``expires_at``."""

    id: str
    partner: str
    number: str
    a: str
    b: str
    created_at: float
    expires_at: float
