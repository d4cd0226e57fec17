"""SIP session timers (RFC 4028), sans-IO.

Implements the Session-Expires and Min-SE header fields (4, 5), the 422
response (6), UAC behaviour (7: the request headers, the 2xx including the
case of a UAS without timer support, the retry after a 422, refresh
requests), UAS behaviour (9: the 422 decision, choosing the interval and the
refresher) and the refresh and expiry times of section 10.

"uac" and "uas" in the refresher parameter name the client and server of the
transaction that carries the header, not the roles in the dialog, so the
negotiated result is kept as `we_refresh` and translated for every message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.sip.message import Request, Response

RFC_MIN_SE = 90  # RFC 4028 4/5: the absolute floor of a session interval
DEFAULT_INTERVAL = 1800  # RFC 4028 4: the recommended Session-Expires
# Ten digits is over 300 years of session, and keeps int() cheap on hostile input.
_MAX_DIGITS = 10


class SessionTimerError(ValueError):
    """A Session-Expires / Min-SE header is malformed, or a 422 cannot be acted on."""


class IntervalTooSmall(SessionTimerError):
    """The request's Session-Expires is below our Min-SE: answer 422 with `headers()`."""

    def __init__(self, requested: int, min_se: int) -> None:
        super().__init__(f"Session-Expires {requested} is below Min-SE {min_se}")
        self.requested = requested
        self.min_se = min_se

    def headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


class Refresher(enum.Enum):
    UAC = "uac"
    UAS = "uas"


class SessionEvent(enum.Enum):
    REFRESH = "refresh"  # send a re-INVITE or UPDATE now
    EXPIRED = "expired"  # no refresh arrived in time: send BYE


@dataclass(frozen=True, slots=True)
class SessionExpires:
    interval: int
    refresher: Refresher | None = None

    def __str__(self) -> str:
        if self.refresher is None:
            return str(self.interval)
        return f"{self.interval};refresher={self.refresher.value}"


def _delta_seconds(text: str, header: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise SessionTimerError(f"Bad {header}: {text!r} is not a number of seconds")
    if len(text) > _MAX_DIGITS:
        raise SessionTimerError(f"Bad {header}: {text!r} is too large")
    value = int(text)
    if value == 0:
        raise SessionTimerError(f"Bad {header}: interval must be positive")
    return value


def parse_session_expires(value: str) -> SessionExpires:
    """Parse `delta-seconds *(;se-params)`; unknown parameters are ignored."""
    first, *params = value.split(";")
    interval = _delta_seconds(first, "Session-Expires")
    refresher: Refresher | None = None
    for param in params:
        name, _, param_value = param.partition("=")
        if name.strip().lower() != "refresher":
            continue
        try:
            refresher = Refresher(param_value.strip().lower())
        except ValueError:
            raise SessionTimerError(
                f"Bad Session-Expires: refresher must be uac or uas, not {param_value.strip()!r}"
            ) from None
    return SessionExpires(interval, refresher)


def parse_min_se(value: str) -> int:
    """Parse `delta-seconds *(;generic-param)`."""
    return _delta_seconds(value.split(";", 1)[0], "Min-SE")


def _supports_timer(request: Request) -> bool:
    tags = request.headers.get_list("Supported") + request.headers.get_list("Require")
    return any(tag.strip().lower() == "timer" for tag in tags)


class SessionTimer:
    """Session timer state of one dialog.

    `interval` starts as the interval we ask for and holds the negotiated one
    after `on_request` / `on_response`; `we_refresh` is None while no session
    timer is in force. After each successful refresh call `refreshed(now)`;
    then `deadline` / `on_timer(now)` say when to refresh or give up.
    """

    def __init__(
        self,
        *,
        interval: int = DEFAULT_INTERVAL,
        min_se: int = RFC_MIN_SE,
        prefer_refresh: bool = True,
    ) -> None:
        # Values below the RFC floor are accepted so tests can run in seconds.
        if min_se < 1 or interval < min_se:
            raise ValueError(
                f"Need 1 <= min_se <= interval, got min_se={min_se}, interval={interval}"
            )
        self.interval = interval
        # What we would choose ourselves; `interval` drifts with each negotiation.
        self.preferred = interval
        self.min_se = min_se
        self.prefer_refresh = prefer_refresh
        self.we_refresh: bool | None = None
        self.peer_supports = False
        self.next_refresh: float | None = None
        self.expires_at: float | None = None

    @property
    def active(self) -> bool:
        return self.we_refresh is not None

    # -- requests we send (7.1, 7.4) and their responses (7.2, 7.3) --

    def request_headers(self) -> list[tuple[str, str]]:
        """Headers for an INVITE or UPDATE we send, initial or refresh."""
        if self.we_refresh is None:
            refresher = Refresher.UAC if self.prefer_refresh else None
        else:
            # 7.4: a refresh keeps the current refresher, seen from this transaction.
            refresher = Refresher.UAC if self.we_refresh else Refresher.UAS
        return [
            ("Supported", "timer"),
            ("Session-Expires", str(SessionExpires(self.interval, refresher))),
            ("Min-SE", str(self.min_se)),
        ]

    def on_response(self, response: Response) -> None:
        """Apply the 2xx to an INVITE or UPDATE that carried `request_headers()`."""
        if not 200 <= response.status < 300:
            raise SessionTimerError(f"Expected a 2xx, got {response.status}")
        value = response.headers.get("Session-Expires")
        if value is None:
            # 7.2: the UAS does not do session timers; we still want them, so we
            # refresh ourselves with the interval we asked for.
            self.we_refresh = True
            return
        expires = parse_session_expires(value)
        self.interval = expires.interval
        # A missing refresher is a UAS error (9); refreshing ourselves is the safe reading.
        self.we_refresh = expires.refresher is not Refresher.UAS

    def on_422(self, response: Response) -> None:
        """Raise our interval to the Min-SE of a 422 before retrying (7.3)."""
        if response.status != 422:
            raise SessionTimerError(f"Expected a 422, got {response.status}")
        value = response.headers.get("Min-SE")
        if value is None:
            raise SessionTimerError("422 response has no Min-SE header")
        required = parse_min_se(value)
        if required <= self.interval:
            # Retrying would send the same interval and get the same 422.
            raise SessionTimerError(
                f"422 asks for Min-SE {required}, not above our Session-Expires {self.interval}"
            )
        self.min_se = max(self.min_se, required)
        self.interval = required
        self.preferred = max(self.preferred, required)

    # -- requests we receive (9) --

    def on_request(self, request: Request) -> None:
        """Negotiate from an INVITE or UPDATE we received.

        Raises IntervalTooSmall (answer 422 with its headers) or
        SessionTimerError for a malformed header (answer 400).
        """
        supports = _supports_timer(request)
        min_se_value = request.headers.get("Min-SE")
        request_min = parse_min_se(min_se_value) if min_se_value is not None else None
        se_value = request.headers.get("Session-Expires")
        if se_value is None:
            # 9: the UAS may ask for a timer itself, never below the request's Min-SE.
            self.interval = max(self.preferred, request_min or 0)
            self.we_refresh = self.prefer_refresh or not supports
        else:
            expires = parse_session_expires(se_value)
            if supports and expires.interval < self.min_se:
                raise IntervalTooSmall(expires.interval, self.min_se)
            # 9: we may lower the interval, never raise it, never below Min-SE.
            floor = request_min if request_min is not None else RFC_MIN_SE
            self.interval = min(expires.interval, max(self.preferred, floor))
            self.we_refresh = self._uas_refresher(expires.refresher, supports)
        self.peer_supports = supports

    def _uas_refresher(self, requested: Refresher | None, supports: bool) -> bool:
        # 9, the table: without timer support at the UAC the UAS refreshes; with
        # it the request's choice wins, and without a choice the UAS decides.
        if not supports:
            return True
        if requested is None:
            return self.prefer_refresh
        return requested is Refresher.UAS

    def response_headers(self) -> list[tuple[str, str]]:
        """Headers for our 2xx to the request given to `on_request`."""
        if self.we_refresh is None:
            return []
        refresher = Refresher.UAS if self.we_refresh else Refresher.UAC
        headers = [("Session-Expires", str(SessionExpires(self.interval, refresher)))]
        # 9: Require is mandatory when the UAC refreshes and wanted whenever it
        # supports timers; a UAC without support must not be sent it.
        if refresher is Refresher.UAC or self.peer_supports:
            headers.append(("Require", "timer"))
        return headers

    # -- timing (10) --

    def refresh_deadline(self, now: float) -> float | None:
        """When to refresh after a refresh at `now`: half the interval, if we refresh."""
        if not self.we_refresh:
            return None
        return now + self.interval / 2

    def expiry_deadline(self, now: float) -> float | None:
        """When the session counts as expired after a refresh at `now`.

        The non-refresher sends BYE at interval - min(32, interval / 3) (10); the
        refresher gives up at the full interval if its refresh got no 2xx.
        """
        if self.we_refresh is None:
            return None
        if self.we_refresh:
            return now + self.interval
        return now + self.interval - min(32.0, self.interval / 3)

    def refreshed(self, now: float) -> None:
        """A session refresh (or the initial INVITE) succeeded at `now`."""
        self.next_refresh = self.refresh_deadline(now)
        self.expires_at = self.expiry_deadline(now)

    def stop(self) -> None:
        """No session timer any more (a 2xx without Session-Expires, or call end)."""
        self.we_refresh = None
        self.next_refresh = None
        self.expires_at = None

    @property
    def deadline(self) -> float | None:
        pending = [t for t in (self.next_refresh, self.expires_at) if t is not None]
        return min(pending, default=None)

    def on_timer(self, now: float) -> SessionEvent | None:
        """What is due at `now`: EXPIRED wins over REFRESH; each fires once."""
        if self.expires_at is not None and self.expires_at <= now:
            self.next_refresh = None
            self.expires_at = None
            return SessionEvent.EXPIRED
        if self.next_refresh is not None and self.next_refresh <= now:
            self.next_refresh = None
            return SessionEvent.REFRESH
        return None
