"""Adaptive jitter buffer for the receiving side of a transcoded leg (sans-IO).

Packets go in with :meth:`JitterBuffer.push` (sequence number, RTP timestamp,
payload, arrival time on the caller's clock); the pipeline's playout timer
calls :meth:`JitterBuffer.pop` and gets :class:`Frame` objects in RTP
timestamp order, and :meth:`JitterBuffer.next_deadline` says when the next
one is due. Nothing here reads a clock or sleeps.

Division of labour with the pipeline. The buffer works in whole packets:
a packet lasts ``samples`` timestamp units (10, 20, 30 or 40 ms; the
``frame_samples`` given at construction when not said), because a
compressed payload (Opus, G.729) cannot be split before it is decoded. Each
AUDIO or LOST frame is one packet's worth; the pipeline decodes it (or
conceals ``samples``) into a PCM FIFO and encodes from that FIFO at its own
output ptime. ``frame_samples`` is the nominal packet duration: the length of
SILENCE frames, of a delay stretch, and of a lost packet before any duration
is known. The timer should call ``pop(now)`` until it returns None, since a
10 ms input gives two frames per 20 ms tick and a late tick several.

Playout follows the RTP timestamp: a packet plays at
``timestamp / clock_rate + offset``; a packet that arrives after its slot
was played or concealed is dropped as late. Sequence numbers (16-bit) and
timestamps (32-bit) are unwrapped. A sequence jump of more than 3000, or a
timestamp that runs backwards while the sequence goes on, is taken as a
restart of the stream once a second packet follows it in sequence, as
RFC 3550 A.1 does for reception statistics; what is left of the old stream
is discarded. The caller calls :meth:`reset` itself on an SSRC change. A
forward timestamp jump is a silence gap.

``pop`` gives None when nothing is due: before the first packet (and after
a reset) until that packet's playout time, and between deadlines. Once
playout has started it gives a frame every slot: AUDIO, LOST or SILENCE.

Lost versus DTX. The sequence number counts packets sent and the timestamp
counts time, so once the packet after a gap is here the gap is exact:
missing sequence numbers were lost (LOST frames, with ``next_payload`` when
the next packet is buffered and directly follows the lost one, so Opus can
recover it from in-band FEC); consecutive sequence numbers across a
timestamp gap mean the sender stopped sending (DTX or RFC 3389 comfort
noise), and the gap plays as SILENCE. When the slot is due and nothing after
it has arrived yet, the buffer cannot know; it then conceals (LOST without
``next_payload``) for up to 100 ms, long enough for a loss burst and the
transition into silence (Opus PLC turns into its comfort noise), and after
that plays SILENCE until the next packet. FEC needs the next packet in the
buffer when the lost one's slot is due, so a pipeline relying on it should
set ``min_delay`` at least a packet plus some margin. The ``lost`` count is always
settled by sequence numbers when the next packet plays, never by what was
concealed, so it equals the packets that never arrived. Packets of the
stream that carry no audio (RFC 4733 telephone-event, RFC 3389 CN) share
its sequence numbers but never enter the buffer, since their timestamps are
not playout times (an event's packets all carry its start): the caller
reports their sequence numbers with :meth:`JitterBuffer.skip`, so they
count neither as lost nor as a gap to conceal.

Delay estimate. The target delay is the 97th percentile of the relative
transit time (arrival minus timestamp) over the last 5 s worth of packets
(counted at ``frame_samples`` each, so the window spans pauses), minus
the smallest transit in that window, bounded to ``min_delay..max_delay``
and starting at ``initial_delay``. Chosen over the RFC 3550 A.8 estimate
because A.8 smooths the mean difference of consecutive transits: it is a
fine figure for RTCP reports (gateway.media.rtcp computes it) but it
underrates heavy-tailed delay (a spike every second hardly moves it) and
needs a guessed multiplier to become a delay, while the percentile is the
delay that makes a chosen share of packets (97 %) arrive in time.

Adapting. The playout offset is set to the target at each talkspurt start
(a packet with the marker bit, or the first after a silence gap or a
concealment run), where moving playout only lengthens or shortens silence.
A stream that never pauses (G.711 without VAD) adapts gradually instead:
when the target is above the delay and a slot's packet is missing, the
buffer conceals one frame without moving on (a stretch that saves the late
packet), and when the delay exceeds the target by a whole packet it drops
one packet, at most every 2 s. No time-scaling is done.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = [
    "Frame",
    "FrameKind",
    "JitterBuffer",
    "JitterError",
    "JitterStats",
]

_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32
_TS_HALF: Final = 1 << 31
# RFC 3550 A.1's limits for a sequence jump versus a reordered packet.
_MAX_DROPOUT: Final = 3000
_MAX_MISORDER: Final = 100

_QUANTILE: Final = 0.97
_WINDOW_SECONDS: Final = 5.0
_MIN_SAMPLES: Final = 16
_TARGET_REFRESH: Final = 8
"""Recompute the percentile after this many new transit samples."""
_REBASE_SECONDS: Final = 2.0
"""A transit step this big is a timestamp discontinuity, not network delay."""
_UNDERRUN_SECONDS: Final = 0.1
_SHRINK_INTERVAL: Final = 2.0
_EPSILON: Final = 1e-9
_MAX_STEPS: Final = 8


class JitterError(ValueError):
    """A constructor argument or packet field out of range."""


class FrameKind(Enum):
    AUDIO = "audio"
    """``payload`` is the packet to decode."""
    LOST = "lost"
    """Conceal ``samples``: a packet is missing, late, or playout is being stretched."""
    SILENCE = "silence"
    """The sender is not sending (DTX, comfort noise, end of a talkspurt)."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    timestamp: int
    """RTP timestamp of the first sample of the frame (32-bit)."""
    samples: int
    """Duration in timestamp units."""
    payload: bytes = b""
    next_payload: bytes | None = None
    """For LOST: the packet right after the lost one, when buffered (for FEC)."""


@dataclass(frozen=True, slots=True)
class JitterStats:
    received: int
    """Every packet pushed."""
    played: int
    """Packets given out as AUDIO."""
    lost: int
    """Packets that never arrived, by sequence number (settled when the next plays)."""
    concealed: int
    """LOST frames given out: lost, late, and stretches."""
    late: int
    duplicate: int
    overflow: int
    """Oldest packets dropped because the buffer was full."""
    discarded: int
    """Packets dropped to shrink the delay, flushed by a reset, or strays."""
    restarts: int
    buffered: int
    delay: float
    """Current playout delay over the fastest recent packet, seconds."""
    target_delay: float


class _Mode(Enum):
    IDLE = "idle"
    """No packet played since the start or a reset: nothing to give out."""
    TALK = "talk"
    SILENCE = "silence"


@dataclass(slots=True)
class _Packet:
    ext_seq: int
    ext_ts: int
    payload: bytes
    samples: int
    marker: bool


def _order(packet: _Packet) -> tuple[int, int]:
    return packet.ext_ts, packet.ext_seq


@dataclass(slots=True)
class _Stray:
    """A packet that jumped out of the stream, kept until the next confirms it."""

    seq: int
    timestamp: int
    payload: bytes
    arrival: float
    marker: bool
    samples: int


class JitterBuffer:
    """Adaptive jitter buffer; see the module documentation for the design."""

    def __init__(
        self,
        clock_rate: int,
        frame_samples: int,
        *,
        initial_delay: float = 0.040,
        min_delay: float = 0.020,
        max_delay: float = 0.200,
        capacity: int = 64,
    ) -> None:
        if clock_rate <= 0 or frame_samples <= 0:
            raise JitterError(
                f"clock_rate and frame_samples must be positive, got {clock_rate}, {frame_samples}"
            )
        if not 0 < min_delay <= initial_delay <= max_delay:
            raise JitterError(
                "Delays must satisfy 0 < min_delay <= initial_delay <= max_delay, got "
                f"{min_delay}, {initial_delay}, {max_delay}"
            )
        if capacity < 2:
            raise JitterError(f"capacity must be at least 2, got {capacity}")
        self._rate = clock_rate
        self._frame = frame_samples
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._capacity = capacity
        self._underrun_samples = max(frame_samples, round(_UNDERRUN_SECONDS * clock_rate))
        window = max(_MIN_SAMPLES, round(_WINDOW_SECONDS * clock_rate / frame_samples))
        self._transits: deque[float] = deque(maxlen=window)
        self._delay = initial_delay
        self._mode = _Mode.IDLE
        self._queue: list[_Packet] = []
        self._queued: set[int] = set()
        self._stray: _Stray | None = None
        self._emitted_until: float | None = None
        # Sequence numbers that left or came late, by ext_seq modulo the ring size:
        # enough to tell a duplicate within the reorder window plus the buffer.
        self._seen_size = 1 << (2 * _MAX_MISORDER + capacity).bit_length()
        self._late_pending: set[int] = set()
        self._skipped: set[int] = set()
        self._start(0, 0)
        self._received = self._played = self._lost = self._concealed = 0
        self._late = self._duplicate = self._overflow = self._discarded = self._restarts = 0

    def _start(self, seq: int, timestamp: int) -> None:
        """Take ``seq``/``timestamp`` as the origin of a new stream (no packet played yet)."""
        self._origin = timestamp
        self._max_seq = seq
        self._max_seq_ts = timestamp
        self._first_seq = seq
        self._last_seq = seq - 1
        self._cursor = timestamp
        self._offset = 0.0
        self._last_samples = self._frame
        self._gap_skipped = 0
        self._gap_samples = 0
        self._silence_ts = timestamp
        self._talk_seq = seq - 1
        self._anchor: float | None = None
        self._last_transit: float | None = None
        self._target: tuple[float, float] | None = None
        self._fresh = 0
        self._last_shrink = -math.inf
        self._transits.clear()
        self._seen: array[int] = array("q", [-1]) * self._seen_size
        self._late_pending.clear()
        self._skipped.clear()

    # ------------------------------------------------------------------ input

    def push(
        self,
        seq: int,
        timestamp: int,
        payload: bytes,
        arrival: float,
        *,
        marker: bool = False,
        samples: int | None = None,
    ) -> None:
        """Add one received packet. ``samples`` is its duration (default ``frame_samples``)."""
        duration = self._frame if samples is None else samples
        if not 0 <= seq < _SEQ_MOD or not 0 <= timestamp < _TS_MOD or duration <= 0:
            raise JitterError(
                f"Packet fields out of range: seq {seq}, timestamp {timestamp}, samples {duration}"
            )
        self._received += 1
        if self._mode is _Mode.IDLE and not self._queue:
            self._start(seq, timestamp)
        extended = self._extend(seq, timestamp)
        if extended is None:
            self._hold_stray(_Stray(seq, timestamp, payload, arrival, marker, duration))
            return
        if self._stray is not None:
            self._stray = None
            self._discarded += 1
        self._admit(_Packet(*extended, payload, duration, marker), arrival)

    def skip(self, seq: int) -> None:
        """A packet of this stream that carries no audio used sequence number ``seq``.

        It is not a loss, and no LOST frame stands for it. Before the first
        audio packet (and after a reset) there is nothing to account, and a
        number that jumps out of the stream is ignored.
        """
        if not 0 <= seq < _SEQ_MOD:
            raise JitterError(f"Sequence number {seq} is outside 0..65535")
        if self._mode is _Mode.IDLE and not self._queue:
            return
        udelta = (seq - self._max_seq) % _SEQ_MOD
        if udelta < _MAX_DROPOUT:
            ext_seq = self._max_seq + udelta
        elif udelta >= _SEQ_MOD - _MAX_MISORDER:
            ext_seq = self._max_seq + udelta - _SEQ_MOD
        else:
            return
        if ext_seq <= self._last_seq or ext_seq in self._queued:
            return
        skipped = self._skipped
        skipped.add(ext_seq)
        if len(skipped) > self._seen_size:
            skipped.discard(min(skipped))

    def _extend(self, seq: int, timestamp: int) -> tuple[int, int] | None:
        """Unwrapped (seq, timestamp), or None for a jump out of the stream."""
        udelta = (seq - self._max_seq) % _SEQ_MOD
        if udelta < _MAX_DROPOUT:
            ext_seq = self._max_seq + udelta
        elif udelta >= _SEQ_MOD - _MAX_MISORDER:
            ext_seq = self._max_seq + udelta - _SEQ_MOD
        else:
            return None
        tdelta = (timestamp - self._max_seq_ts) % _TS_MOD
        if tdelta >= _TS_HALF:
            tdelta -= _TS_MOD
        ext_ts = self._max_seq_ts + tdelta
        if ext_seq > self._max_seq and ext_ts < self._max_seq_ts:
            return None
        return ext_seq, ext_ts

    def _hold_stray(self, stray: _Stray) -> None:
        held = self._stray
        follows = (
            held is not None
            and stray.seq == (held.seq + 1) % _SEQ_MOD
            and (stray.timestamp - held.timestamp) % _TS_MOD < _TS_HALF
        )
        if held is None or not follows:
            if held is not None:
                self._discarded += 1
            self._stray = stray
            return
        self._stray = None
        self._flush()
        self._restarts += 1
        self._start(held.seq, held.timestamp)
        step = (stray.timestamp - held.timestamp) % _TS_MOD
        self._admit(
            _Packet(held.seq, held.timestamp, held.payload, held.samples, held.marker), held.arrival
        )
        self._admit(
            _Packet(
                held.seq + 1, held.timestamp + step, stray.payload, stray.samples, stray.marker
            ),
            stray.arrival,
        )

    def _admit(self, packet: _Packet, arrival: float) -> None:
        if packet.ext_seq in self._queued:
            self._duplicate += 1
            return
        behind = packet.ext_seq <= self._last_seq or packet.ext_ts < self._cursor
        if self._mode is not _Mode.IDLE and behind:
            if self._seen[packet.ext_seq % self._seen_size] == packet.ext_seq:
                self._duplicate += 1
                return
            self._observe_transit(packet.ext_ts, arrival)
            self._too_late(packet.ext_seq)
            return
        self._observe_transit(packet.ext_ts, arrival)
        index = bisect.bisect(self._queue, _order(packet), key=_order)
        self._queue.insert(index, packet)
        self._queued.add(packet.ext_seq)
        if index == 0:
            self._anchor = None
        if packet.ext_seq > self._max_seq:
            self._max_seq, self._max_seq_ts = packet.ext_seq, packet.ext_ts
        if len(self._queue) > self._capacity:
            self._drop_oldest()

    def _too_late(self, ext_seq: int) -> None:
        self._late += 1
        self._remember(ext_seq)
        if ext_seq > self._last_seq:
            # Its slot was concealed before the next packet settled the gap.
            self._late_pending.add(ext_seq)
        elif ext_seq >= self._first_seq and self._lost > 0:
            self._lost -= 1  # counted lost when the packet after it played

    def _observe_transit(self, ext_ts: int, arrival: float) -> None:
        transit = arrival - (ext_ts - self._origin) / self._rate
        last = self._last_transit
        if last is not None and abs(transit - last) > _REBASE_SECONDS:
            self._transits.clear()
            self._target = None
        self._last_transit = transit
        self._transits.append(transit)
        self._fresh += 1

    def _drop_oldest(self) -> None:
        self._overflow += 1
        head = self._queue[0]
        if self._mode is _Mode.IDLE:
            self._queue.pop(0)
            self._queued.discard(head.ext_seq)
            self._remember(head.ext_seq)
            self._anchor = None
            return
        # Skip playout past it, so the next packet takes its slot's time.
        skipped = head.ext_ts + head.samples - self._cursor
        self._consume(head)
        self._cursor = head.ext_ts + head.samples
        if self._mode is _Mode.TALK:
            self._offset -= skipped / self._rate

    def reset(self) -> None:
        """Start over for a new stream (the caller saw the SSRC change).

        Buffered packets are discarded; counters are kept, and the current
        delay is where the new stream starts.
        """
        self._flush()
        self._restarts += 1

    def _flush(self) -> None:
        self._delay = min(self._max_delay, max(self._min_delay, self._current_delay()))
        self._discarded += len(self._queue) + (self._stray is not None)
        self._queue.clear()
        self._queued.clear()
        self._stray = None
        self._mode = _Mode.IDLE
        self._anchor = None

    # ----------------------------------------------------------------- output

    def next_deadline(self) -> float | None:
        """When :meth:`pop` next has a frame to give, on the arrival clock.

        None before the first packet (and after a reset) until one arrives.
        """
        if self._mode is _Mode.TALK:
            return self._due(self._cursor)
        if self._mode is _Mode.SILENCE:
            return self._emitted_until
        return self._head_anchor() if self._queue else None

    def pop(self, now: float) -> Frame | None:
        """The frame due at ``now``, or None if none is due yet."""
        for _ in range(_MAX_STEPS):
            deadline = self.next_deadline()
            # Deadlines are sums of floats: a timer firing on one must not miss it.
            if deadline is None or now + _EPSILON < deadline:
                return None
            frame = self._step(now, deadline)
            if frame is not None:
                return frame
        raise RuntimeError("Jitter buffer playout made no progress")  # a bug, not input

    def _step(self, now: float, deadline: float) -> Frame | None:
        """Give the frame due at ``deadline``, or change mode and return None."""
        if self._mode is _Mode.IDLE:
            head = self._queue[0]
            self._first_seq = head.ext_seq
            self._last_seq = head.ext_seq - 1
            self._begin_talk(head, deadline)
            return None
        if self._mode is _Mode.SILENCE:
            return self._silence_step(deadline)
        return self._talk_step(now, deadline)

    def _due(self, ext_ts: int) -> float:
        return (ext_ts - self._origin) / self._rate + self._offset

    def _head_anchor(self) -> float:
        """When the head packet starts a talkspurt: its timestamp at the target delay."""
        if self._anchor is None:
            head = self._queue[0]
            fastest, delay = self._target_delay()
            anchor = (head.ext_ts - self._origin) / self._rate + fastest + delay
            if self._emitted_until is not None:
                anchor = max(anchor, self._emitted_until)
            self._anchor = anchor
        return self._anchor

    def _begin_talk(self, head: _Packet, at: float) -> None:
        self._mode = _Mode.TALK
        self._cursor = head.ext_ts
        self._offset = at - (head.ext_ts - self._origin) / self._rate
        self._talk_seq = head.ext_seq
        self._anchor = None
        self._last_shrink = at
        self._delay = self._current_delay()

    def _enter_silence(self, at: float) -> None:
        self._mode = _Mode.SILENCE
        self._emitted_until = at
        self._silence_ts = self._cursor
        self._anchor = None

    def _silence_step(self, deadline: float) -> Frame | None:
        samples = self._frame
        if self._queue:
            anchor = self._head_anchor()
            if anchor <= deadline + _EPSILON:
                self._begin_talk(self._queue[0], deadline)
                return None
            # End the silence where the talkspurt starts.
            samples = min(samples, math.ceil((anchor - deadline) * self._rate - _EPSILON))
        frame = Frame(FrameKind.SILENCE, self._silence_ts % _TS_MOD, samples)
        self._silence_ts += samples
        self._emitted_until = deadline + samples / self._rate
        return frame

    def _talk_step(self, now: float, deadline: float) -> Frame | None:
        if not self._queue:
            if self._gap_samples >= self._underrun_samples:
                self._enter_silence(deadline)
                return None
            return self._conceal(deadline, None)
        head = self._queue[0]
        if head.ext_ts > self._cursor:
            if self._owed(head) <= 0:
                # Nothing missing before it: the sender paused (DTX, comfort noise).
                self._enter_silence(deadline)
                return None
            return self._conceal(deadline, head)
        if head.marker and head.ext_seq != self._talk_seq:
            self._enter_silence(deadline)  # a talkspurt starts: re-anchor there
            return None
        if self._should_shrink(now, head):
            self._discarded += 1
            self._consume(head)
            self._cursor += head.samples
            self._offset -= head.samples / self._rate
            self._last_shrink = now
            return None
        self._played += 1
        self._consume(head)
        self._cursor += head.samples
        self._emitted_until = deadline + head.samples / self._rate
        return Frame(FrameKind.AUDIO, head.ext_ts % _TS_MOD, head.samples, head.payload)

    def _owed(self, head: _Packet) -> int:
        """Packets missing before ``head`` that no LOST frame has stood for yet.

        A packet that came late after its slot was concealed is one the LOST
        frames already stood for: it shows that at least that many slots are
        covered, never more than the frames given out (counting it on top of
        them would take a packet still in flight for a pause of the sender).
        """
        missing = head.ext_seq - self._last_seq - self._skipped_before(head) - 1
        covered = self._gap_skipped
        if missing > 0 and self._late_pending:
            late = sum(self._last_seq < s < head.ext_seq for s in self._late_pending)
            covered = max(covered, late)
        return missing - covered

    def _conceal(self, deadline: float, head: _Packet | None) -> Frame:
        timestamp = self._cursor % _TS_MOD
        if self._wants_growth():
            # Stretch: conceal without moving on, so the missing packet still plays.
            frame = Frame(FrameKind.LOST, timestamp, self._frame)
            self._offset += self._frame / self._rate
        else:
            samples = self._last_samples
            next_payload = None
            if head is not None:
                samples = min(samples, head.ext_ts - self._cursor)
                if self._cursor + samples == head.ext_ts:
                    next_payload = head.payload
            frame = Frame(FrameKind.LOST, timestamp, samples, next_payload=next_payload)
            self._cursor += samples
            self._gap_skipped += 1
        self._gap_samples += frame.samples
        self._concealed += 1
        self._emitted_until = deadline + frame.samples / self._rate
        return frame

    def _consume(self, head: _Packet) -> None:
        """Take the head out through playout, settling the sequence gap before it."""
        self._queue.pop(0)
        self._queued.discard(head.ext_seq)
        self._anchor = None
        gap = head.ext_seq - self._last_seq - 1
        if gap > 0 and self._skipped:
            gap -= self._skipped_before(head)
            self._skipped = {s for s in self._skipped if s > head.ext_seq}
        if gap > 0:
            arrived = {s for s in self._late_pending if s < head.ext_seq}
            self._late_pending -= arrived
            self._lost += gap - sum(s > self._last_seq for s in arrived)
        self._last_seq = max(self._last_seq, head.ext_seq)
        self._remember(head.ext_seq)
        self._last_samples = head.samples
        self._gap_skipped = 0
        self._gap_samples = 0

    def _skipped_before(self, head: _Packet) -> int:
        """Sequence numbers of packets without audio between the last played and ``head``."""
        if not self._skipped:
            return 0
        return sum(self._last_seq < s < head.ext_seq for s in self._skipped)

    def _remember(self, ext_seq: int) -> None:
        self._seen[ext_seq % self._seen_size] = ext_seq

    # ------------------------------------------------------------- adaptation

    def _target_delay(self) -> tuple[float, float]:
        """(fastest recent transit, target delay over it), refreshed every few packets."""
        if self._target is not None and self._fresh < _TARGET_REFRESH:
            return self._target
        transits = self._transits
        if not transits:
            return self._offset - self._delay, self._delay
        fastest = min(transits)
        delay = self._delay
        if len(transits) >= _MIN_SAMPLES:
            ordered = sorted(transits)
            delay = ordered[math.ceil(_QUANTILE * len(ordered)) - 1] - fastest
        self._target = fastest, min(self._max_delay, max(self._min_delay, delay))
        self._fresh = 0
        return self._target

    def _wants_growth(self) -> bool:
        if len(self._transits) < _MIN_SAMPLES:
            return False
        fastest, delay = self._target_delay()
        # A quarter frame: a stretch (a whole frame) then leaves at most three
        # quarters above the target, short of the whole packet that shrinks it.
        return fastest + delay - self._offset >= self._frame / self._rate / 4

    def _should_shrink(self, now: float, head: _Packet) -> bool:
        if now - self._last_shrink < _SHRINK_INTERVAL or len(self._queue) < 2:
            return False
        if len(self._transits) < _MIN_SAMPLES:
            return False
        fastest, delay = self._target_delay()
        return self._offset - (fastest + delay) >= head.samples / self._rate - _EPSILON

    def _current_delay(self) -> float:
        if self._mode is _Mode.IDLE or not self._transits:
            return self._delay
        return self._offset - min(self._transits)

    # ------------------------------------------------------------------ stats

    @property
    def stats(self) -> JitterStats:
        target = self._target_delay()[1] if self._transits else self._delay
        return JitterStats(
            received=self._received,
            played=self._played,
            lost=self._lost,
            concealed=self._concealed,
            late=self._late,
            duplicate=self._duplicate,
            overflow=self._overflow,
            discarded=self._discarded,
            restarts=self._restarts,
            buffered=len(self._queue) + (self._stray is not None),
            delay=self._current_delay(),
            target_delay=target,
        )
