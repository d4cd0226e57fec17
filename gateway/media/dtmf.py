"""RFC 4733 telephone-event payloads, and their sending and receiving (sans-IO).

DTMF crosses the gateway as named events (RFC 4733 section 2) on legs that
negotiated telephone-event, and as in-band tones (gateway.media.tones) on
legs that did not. This module is the packet side:

* :func:`parse_payload` / :func:`build_payload`: the 4-byte event report of
  section 2.3 (event, E bit, R bit, volume, duration), several per packet
  when events are packed (2.5.1.5), and the DTMF event codes 0-15 of 3.2.
* :class:`TelephoneEventSender`: the packets for one event as it happens
  (2.5.1): one RTP timestamp, the event's start, for all of them; the
  marker on the first; the duration growing once per packet interval;
  the final packet, with the E bit, sent three times (2.5.1.4); events
  longer than 0xFFFF timestamp units split into segments (2.5.1.3).
* :class:`TelephoneEventReceiver`: incoming packets to one start and one
  end per event (2.5.2), whatever the network did: duplicated or
  reordered packets, the start packet (with the marker) lost (2.5.2.1),
  every end packet lost (2.5.2.2: the next event, or :meth:`expire`, ends
  it), long events arriving in segments (2.5.2.3).

Nothing here touches a socket or a clock: RTP header values come in and go
out as numbers; the sequence numbers of outgoing packets are the stream's,
so the caller assigns them. Timestamps and durations are in units of the
telephone-event clock (8000 Hz with G.711, 48000 Hz alongside Opus) and
wrap at 2**32 like every RTP timestamp.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DTMF_EVENT_CODES",
    "MAX_DURATION",
    "EventBlock",
    "EventEnded",
    "EventPacket",
    "EventStarted",
    "ReceivedEvent",
    "TelephoneEventError",
    "TelephoneEventReceiver",
    "TelephoneEventSender",
    "build_block",
    "build_payload",
    "digit_for_event",
    "event_for_digit",
    "parse_payload",
]

MAX_DURATION: Final = 0xFFFF
"""Longest duration one event report can carry (2.5.1.3)."""

MAX_VOLUME: Final = 63
"""Quietest volume field: -63 dBm0 (2.3.4)."""

# RFC 4733 3.2, Table 1: events 0-9 are the digits, then *, #, A-D.
DTMF_EVENT_CODES: Final[dict[str, int]] = {
    digit: code for code, digit in enumerate("0123456789*#ABCD")
}
_DIGITS: Final = {code: digit for digit, code in DTMF_EVENT_CODES.items()}

_BLOCK: Final = struct.Struct("!BBH")
_END_BIT: Final = 0x80
_RESERVED_BIT: Final = 0x40
_VOLUME_MASK: Final = 0x3F
_TIMESTAMP_MOD: Final = 1 << 32
_HALF_RANGE: Final = 1 << 31
_SEQUENCE_MOD: Final = 1 << 16


class TelephoneEventError(ValueError):
    """A malformed telephone-event payload, or a field out of range when building one."""


@dataclass(frozen=True, slots=True)
class EventBlock:
    """One event report of a telephone-event payload (RFC 4733 2.3)."""

    event: int
    """Event code, 0-255; 0-15 are DTMF (3.2)."""
    end: bool
    """The E bit: this report is the event's (or its last segment's) end."""
    volume: int
    """Power of the tone as -dBm0, 0-63 (DTMF must carry it, 2.3.4)."""
    duration: int
    """Timestamp units from the event's (segment's) start, 0-0xFFFF."""


@dataclass(frozen=True, slots=True)
class EventPacket:
    """An RTP packet the sender wants sent: header values and the payload."""

    marker: bool
    timestamp: int
    payload: bytes
    block: EventBlock
    """What the payload reports, for logging and tests."""


@dataclass(frozen=True, slots=True)
class EventStarted:
    """The receiver saw a new event begin at ``timestamp``."""

    event: int
    timestamp: int
    volume: int


@dataclass(frozen=True, slots=True)
class EventEnded:
    """An event that began at ``timestamp`` is over after ``duration`` units.

    ``end_seen`` is False when no packet with the E bit arrived and the
    event was ended by the next event or by :meth:`TelephoneEventReceiver.expire`;
    ``duration`` is then the longest reported. For events split into
    segments it is the whole length, which may exceed 0xFFFF.
    """

    event: int
    timestamp: int
    duration: int
    volume: int
    end_seen: bool


ReceivedEvent = EventStarted | EventEnded


def event_for_digit(digit: str) -> int:
    """The RFC 4733 event code of a DTMF digit ("0"-"9", "*", "#", "A"-"D")."""
    code = DTMF_EVENT_CODES.get(digit.upper())
    if code is None:
        raise TelephoneEventError(f"Not a DTMF digit: {digit!r} (expected 0-9, *, #, A-D)")
    return code


def digit_for_event(event: int) -> str | None:
    """The DTMF digit of an event code, or None for a code that is not DTMF."""
    return _DIGITS.get(event)


def _check_field(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise TelephoneEventError(f"telephone-event {name} {value} is outside 0..{maximum}")


def build_block(event: int, *, end: bool = False, volume: int = 10, duration: int = 0) -> bytes:
    """One 4-byte event report; the R bit is sent as zero (2.3.3)."""
    _check_field("event", event, 255)
    _check_field("volume", volume, MAX_VOLUME)
    _check_field("duration", duration, MAX_DURATION)
    return _BLOCK.pack(event, (_END_BIT if end else 0) | volume, duration)


def build_payload(*blocks: EventBlock) -> bytes:
    """A telephone-event payload of one or more (packed, 2.5.1.5) event reports."""
    if not blocks:
        raise TelephoneEventError("A telephone-event payload needs at least one event report")
    return b"".join(
        build_block(b.event, end=b.end, volume=b.volume, duration=b.duration) for b in blocks
    )


def parse_payload(payload: bytes | bytearray | memoryview) -> list[EventBlock]:
    """The event reports of a telephone-event payload.

    The R bit is ignored, as 2.3.3 tells receivers to. A payload that is
    empty or not a whole number of 4-byte reports raises
    :class:`TelephoneEventError`.
    """
    data = bytes(payload)
    if not data:
        raise TelephoneEventError("Empty telephone-event payload: an event report is 4 bytes")
    if len(data) % _BLOCK.size:
        raise TelephoneEventError(
            f"telephone-event payload of {len(data)} bytes is not a whole number of "
            f"4-byte event reports"
        )
    blocks = []
    for offset in range(0, len(data), _BLOCK.size):
        event, flags, duration = _BLOCK.unpack_from(data, offset)
        blocks.append(EventBlock(event, bool(flags & _END_BIT), flags & _VOLUME_MASK, duration))
    return blocks


def _ahead(later: int, earlier: int) -> int:
    """Signed distance from ``earlier`` to ``later`` in wrapping 32-bit timestamp space."""
    delta = (later - earlier) % _TIMESTAMP_MOD
    return delta - _TIMESTAMP_MOD if delta >= _HALF_RANGE else delta


def _check_timestamp(name: str, value: int) -> None:
    if not 0 <= value < _TIMESTAMP_MOD:
        raise TelephoneEventError(f"{name} {value} is not a 32-bit RTP timestamp")


class TelephoneEventSender:
    """Packets for the events of one outgoing stream, one event at a time.

    Call :meth:`begin` when an event starts (its timestamp is the onset,
    which may lie in the past, as for a digit a tone detector has just
    confirmed), :meth:`advance` as media time passes (typically once per
    outgoing frame, with the timestamp of the frame's end), and :meth:`end`
    when the event stops. Each returns the packets to send now, in order.
    """

    __slots__ = (
        "_end_left",
        "_end_packet",
        "_event",
        "_last_sent",
        "_segment",
        "_sent_any",
        "_volume",
        "end_repeats",
        "packet_interval",
    )

    def __init__(self, *, packet_interval: int = 160, end_repeats: int = 3) -> None:
        if not 1 <= packet_interval <= MAX_DURATION:
            raise TelephoneEventError(f"packet_interval {packet_interval} is outside 1..65535")
        if end_repeats < 1:
            raise TelephoneEventError(f"end_repeats must be at least 1, got {end_repeats}")
        self.packet_interval: Final = packet_interval
        self.end_repeats: Final = end_repeats
        self._event: int | None = None
        self._volume = 0
        self._segment = 0
        self._last_sent = 0
        self._sent_any = False
        self._end_packet: EventPacket | None = None
        self._end_left = 0

    @property
    def event(self) -> int | None:
        """The event being sent, if one is running."""
        return self._event

    @property
    def busy(self) -> bool:
        """An event is running or its end packet still has repeats to send."""
        return self._event is not None or self._end_left > 0

    def begin(self, event: int, timestamp: int, *, volume: int = 10) -> list[EventPacket]:
        """Start an event at ``timestamp``; returns end repeats still owed for the last one.

        Nothing of the new event is sent until :meth:`advance` or
        :meth:`end` tells how long it has lasted.
        """
        if self._event is not None:
            raise TelephoneEventError(
                f"Event {self._event} is still running: end it before beginning event {event}"
            )
        _check_field("event", event, 255)
        _check_field("volume", volume, MAX_VOLUME)
        _check_timestamp("Event timestamp", timestamp)
        owed = self._flush_end()
        self._event, self._volume = event, volume
        self._segment = self._last_sent = timestamp
        self._sent_any = False
        return owed

    def advance(self, now: int) -> list[EventPacket]:
        """Packets due by media time ``now``: a duration update or an end repeat."""
        _check_timestamp("Media time", now)
        if self._event is None:
            return self._repeat_end(now)
        packets = self._split_segments(now)
        if _ahead(now, self._last_sent) >= self.packet_interval:
            packets.append(self._packet(_ahead(now, self._segment), end=False))
            self._last_sent = now
        return packets

    def end(self, now: int) -> list[EventPacket]:
        """Finish the running event at media time ``now``: its first end packet.

        An end earlier than the last duration already sent is taken as that
        duration. For a digit from a tone detector, advance by the media time
        minus :data:`gateway.media.tones.DTMF_END_LATENCY` while it lasts, so
        that updates do not run past the end the detector will estimate.

        The remaining repeats of the end packet follow from :meth:`advance`,
        one per packet interval (2.5.1.4), or at once from the next :meth:`begin`.
        """
        _check_timestamp("Media time", now)
        if self._event is None:
            raise TelephoneEventError("No event is running to end")
        if _ahead(now, self._last_sent) < 0:
            # Durations never shrink (the receiver keeps the longest): an end
            # estimated before the last update ends the event at that update.
            now = self._last_sent
        packets = self._split_segments(now)
        final = self._packet(_ahead(now, self._segment), end=True)
        packets.append(final)
        self._event = None
        self._last_sent = now
        self._end_packet = EventPacket(False, final.timestamp, final.payload, final.block)
        self._end_left = self.end_repeats - 1
        return packets

    def _split_segments(self, now: int) -> list[EventPacket]:
        # 2.5.1.3: a segment that reached 0xFFFF is reported at that length
        # without the E bit, and the event carries on in a new segment that
        # starts where it stopped.
        packets = []
        while _ahead(now, self._segment) > MAX_DURATION:
            packets.append(self._packet(MAX_DURATION, end=False))
            self._segment = (self._segment + MAX_DURATION) % _TIMESTAMP_MOD
        if _ahead(now, self._segment) < 0:
            raise TelephoneEventError(
                f"Media time {now} is before the event's start at {self._segment}"
            )
        return packets

    def _packet(self, duration: int, *, end: bool) -> EventPacket:
        assert self._event is not None
        block = EventBlock(self._event, end, self._volume, duration)
        payload = build_block(block.event, end=end, volume=block.volume, duration=duration)
        marker = not self._sent_any
        self._sent_any = True
        return EventPacket(marker, self._segment, payload, block)

    def _repeat_end(self, now: int) -> list[EventPacket]:
        if self._end_left == 0 or self._end_packet is None:
            return []
        if _ahead(now, self._last_sent) < self.packet_interval:
            return []
        self._end_left -= 1
        self._last_sent = now
        return [self._end_packet]

    def _flush_end(self) -> list[EventPacket]:
        owed = [self._end_packet] * self._end_left if self._end_packet is not None else []
        self._end_left = 0
        return owed


@dataclass(slots=True)
class _Running:
    event: int
    start: int
    segment: int
    before_segment: int
    """Units of the event in the segments before the current one."""
    duration: int
    """Longest duration reported for the current segment."""
    volume: int

    @property
    def total(self) -> int:
        return self.before_segment + self.duration


@dataclass(frozen=True, slots=True)
class _Finished:
    event: int
    start: int
    end: int

    def covers(self, event: int, timestamp: int) -> bool:
        """Whether a report of ``event`` at ``timestamp`` belongs to this finished event.

        Its reports carry its start or a later segment's start, never its
        end: a report there is the same key pressed again without a gap.
        """
        if event != self.event:
            return False
        return timestamp == self.start or (
            _ahead(timestamp, self.start) > 0 and _ahead(self.end, timestamp) > 0
        )


class TelephoneEventReceiver:
    """Start and end events from the telephone-event packets of one incoming stream.

    Each event is reported started once and ended once. An event is known by
    its code and RTP timestamp (2.5.2.1), not by the marker bit, so an event
    whose first packets were lost still starts. Packets of an event already
    ended (end repeats, late arrivals) are dropped, as are packets older
    than the last event ended.
    """

    __slots__ = ("_finished", "_horizon", "_recent_sequences", "_running", "duplicates", "stale")

    def __init__(self, *, remember: int = 16) -> None:
        if remember < 1:
            raise TelephoneEventError(f"remember must be at least 1, got {remember}")
        self._running: _Running | None = None
        self._finished: deque[_Finished] = deque(maxlen=remember)
        self._horizon: int | None = None
        self._recent_sequences: deque[int] = deque(maxlen=64)
        self.duplicates = 0
        """Packets dropped because their sequence number was just seen."""
        self.stale = 0
        """Event reports dropped as repeats or late arrivals of finished events."""

    @property
    def current(self) -> EventStarted | None:
        """The event running now, if any."""
        running = self._running
        if running is None:
            return None
        return EventStarted(running.event, running.start, running.volume)

    @property
    def current_duration(self) -> int | None:
        """The longest duration reported so far for the running event, if any.

        Counted from the event's start across its segments, so it may exceed 0xFFFF.
        """
        running = self._running
        return None if running is None else running.total

    def receive(
        self,
        sequence: int,
        timestamp: int,
        payload: bytes | bytearray | memoryview,
        *,
        marker: bool = False,
    ) -> list[ReceivedEvent]:
        """The starts and ends one telephone-event RTP packet brings.

        A malformed payload raises :class:`TelephoneEventError` and changes
        no state.
        """
        if not 0 <= sequence < _SEQUENCE_MOD:
            raise TelephoneEventError(f"RTP sequence number {sequence} is outside 0..65535")
        _check_timestamp("RTP timestamp", timestamp)
        blocks = parse_payload(payload)
        if sequence in self._recent_sequences:
            self.duplicates += 1
            return []
        self._recent_sequences.append(sequence)
        out: list[ReceivedEvent] = []
        at = timestamp
        for index, block in enumerate(blocks):
            # 2.5.1.5: packed events follow each other without gaps.
            self._on_block(block, at, marker and index == 0, out)
            at = (at + block.duration) % _TIMESTAMP_MOD
        return out

    def expire(self) -> list[ReceivedEvent]:
        """End the running event now, as when its end packets never came (2.5.2.2)."""
        out: list[ReceivedEvent] = []
        self._finish(out, end_seen=False)
        return out

    def _on_block(
        self, block: EventBlock, timestamp: int, marker: bool, out: list[ReceivedEvent]
    ) -> None:
        if any(done.covers(block.event, timestamp) for done in self._finished):
            self.stale += 1
            return
        running = self._running
        if running is not None:
            if self._update(running, block, timestamp, marker, out):
                return
            # A different event, or the same key pressed again later: the
            # running one is over even though its end packet was lost.
            self._finish(out, end_seen=False)
        elif self._horizon is not None and _ahead(timestamp, self._horizon) < 0:
            self.stale += 1
            return
        self._running = _Running(block.event, timestamp, timestamp, 0, block.duration, block.volume)
        out.append(EventStarted(block.event, timestamp, block.volume))
        if block.end:
            self._finish(out, end_seen=True)

    def _update(
        self,
        running: _Running,
        block: EventBlock,
        timestamp: int,
        marker: bool,
        out: list[ReceivedEvent],
    ) -> bool:
        """Apply a report to the running event; False when it belongs to another event."""
        offset = _ahead(timestamp, running.segment)
        if block.event != running.event:
            if offset < 0:
                self.stale += 1  # an older event arriving late
                return True
            return False
        if offset == 0:
            running.duration = max(running.duration, block.duration)
            if block.end:
                self._finish(out, end_seen=True)
            return True
        if offset == MAX_DURATION and not marker:
            # 2.5.2.3: the next segment of a long event, starting where the
            # previous one (0xFFFF long, even if its last report was lost) ended.
            running.before_segment += MAX_DURATION
            running.segment, running.duration = timestamp, block.duration
            if block.end:
                self._finish(out, end_seen=True)
            return True
        if offset < 0:
            self.stale += 1  # a late report of an earlier segment
            return True
        return False

    def _finish(self, out: list[ReceivedEvent], *, end_seen: bool) -> None:
        running = self._running
        if running is None:
            return
        self._running = None
        total = running.total
        end = (running.start + total) % _TIMESTAMP_MOD
        self._finished.append(_Finished(running.event, running.start, end))
        if self._horizon is None or _ahead(end, self._horizon) > 0:
            self._horizon = end
        out.append(EventEnded(running.event, running.start, total, running.volume, end_seen))
