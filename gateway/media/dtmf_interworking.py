"""DTMF across one direction of a transcoded call: RFC 4733 events and in-band tones (sans-IO).

Which way a digit crosses depends on which legs negotiated telephone-event
(:func:`dtmf_path`):

* RELAY, events on both legs: the source's RFC 4733 packets become events
  on the target (RFC 4733 2.5), with the target's payload type, clock and
  packet interval, on the target's SSRC and sequence (the transcoder sends
  them), the marker on each event's first packet and its end packet three
  times (2.5.1.4). While an event plays, the audio toward the target is
  replaced by comfort noise (2.6: a tone must not reach the receiver as
  audio and as an event at once), so a sender that also left the tone in
  its audio is not heard twice.
* GENERATE, events in and none on the target (a carrier without RFC 4733):
  the digit is played in-band (:class:`~gateway.media.tones.DtmfGenerator`)
  in place of the audio for the event's duration, at the event's volume,
  so the carrier's IVR hears it. Any tone the sender left in its audio is
  replaced, not doubled.
* DETECT, no events in and events on the target: a
  :class:`~gateway.media.tones.DtmfDetector` listens to the source's decoded
  audio (resampled to 8 kHz when the leg is wideband) and each digit it
  hears becomes an event on the target, its onset and end estimated back
  to where the tone was. From the moment the digit is confirmed until its
  end is heard, the audio toward the target is replaced by comfort noise,
  so the target hears the digit once, as the event. The first 23 to 36 ms
  of the tone (the detector's confirmation time) have gone out as audio by
  then: short of the 40 ms a digit must last (ITU-T Q.24), though a
  detector as quick as spandsp's may still catch some of these heads.
  Removing them too would need that much look-ahead, that is, delaying the
  whole direction's audio by 40 ms; muting the rest was chosen instead.

Everything runs on the playout of the source's frames (:meth:`DtmfInterworking.process`,
once per frame the jitter buffer gives), so events and tones stay where the
audio was, whatever delay the jitter buffer adds. Digits are scheduled on
the source's RTP timeline; the caller says where each frame lands on the
target's. An event that arrived too late for its time plays at once with
its full length: a late digit is better than a lost one. An event whose end
packets were all lost ends when the next one starts (2.5.2.2), or once the
playout has run :data:`STALE_MS` past the last duration reported.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.media.comfort_noise import crossfade
from gateway.media.dtmf import (
    EventEnded,
    EventPacket,
    EventStarted,
    ReceivedEvent,
    TelephoneEventReceiver,
    TelephoneEventSender,
    digit_for_event,
    event_for_digit,
)
from gateway.media.resample import Resampler
from gateway.media.tones import (
    DTMF_END_LATENCY,
    SAMPLE_RATE,
    DtmfDetector,
    DtmfEvent,
    DtmfEventKind,
    DtmfGenerator,
)

__all__ = [
    "FADE_MS",
    "STALE_MS",
    "DtmfInterworking",
    "DtmfPath",
    "DtmfStats",
    "dtmf_path",
]

STALE_MS: Final = 250
"""Playout this far past an event's last reported duration ends it (its end packets were lost)."""

FADE_MS: Final = 4
"""Crossfade where a tone or the noise that mutes one meets the audio around it."""

GUARD_MS: Final = 15
"""Audio muted after an event's end: a tone the sender left in its audio comes out
of the decoder late by the codec's delay (Opus: 6.5 ms) and must not outlast the event."""

MIN_TONE_MS: Final = 40
"""Shortest a digit is played when it must be moved (ITU-T Q.24: 40 ms is a digit)."""

_TS_MOD: Final = 1 << 32
_TS_HALF: Final = 1 << 31
_MAX_VOLUME: Final = 63
_TONE_CHUNK: Final = 160  # 20 ms at 8 kHz: what the tone generator makes per call
_MAX_FRAME_MS: Final = 120
_MAX_PENDING: Final = 32
"""Digits waiting to play; more (a flood of events) are dropped and counted."""


class DtmfPath(enum.Enum):
    """How digits cross one direction."""

    RELAY = "relay"
    """RFC 4733 events in, events out."""
    GENERATE = "generate"
    """RFC 4733 events in, in-band tones out."""
    DETECT = "detect"
    """In-band tones in, RFC 4733 events out."""


def dtmf_path(source_events: bool, target_events: bool) -> DtmfPath | None:
    """The path for legs that did (True) or did not negotiate telephone-event; None: tones
    simply pass as audio."""
    if source_events:
        return DtmfPath.RELAY if target_events else DtmfPath.GENERATE
    return DtmfPath.DETECT if target_events else None


def _signed(delta: int) -> int:
    delta %= _TS_MOD
    return delta - _TS_MOD if delta >= _TS_HALF else delta


@dataclass(slots=True)
class DtmfStats:
    """Digits that crossed, for the transcoder's counters."""

    events_sent: int = 0
    """Events begun on the target (RELAY, DETECT)."""
    tones_played: int = 0
    """Digits played in-band toward the target (GENERATE)."""
    tones_detected: int = 0
    """Digits heard in the source's audio (DETECT)."""
    late_events: int = 0
    """Events that arrived after their time had played and were played at once."""
    dropped_events: int = 0
    """Events dropped because too many were waiting to play."""


@dataclass(slots=True)
class _Digit:
    """One event on the source's timeline."""

    event: int
    origin: int
    """Source RTP timestamp of its onset, as the sender reported it (its key)."""
    volume: int
    duration: int
    """Known so far from ``origin``, in source clock units."""
    ended: bool = False
    begun: bool = False
    start: int = -1
    """Where it plays (source timestamp): ``origin``, or later when it had to move."""

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.origin

    @property
    def end(self) -> int:
        return (self.origin + self.duration) % _TS_MOD


@dataclass(frozen=True, slots=True)
class _Span:
    """A part of a frame to replace (a digit's tone, or noise that mutes), in PCM samples."""

    start: int
    end: int
    first: bool
    """The replacement begins here: crossfade into it."""
    last: bool
    """The replacement ends here: crossfade out of it."""
    digit: _Digit


class _ToneSource:
    """A DTMF tone at the leg's PCM rate: spandsp makes it at 8 kHz, speexdsp converts it."""

    def __init__(self, pcm_rate: int) -> None:
        max_frame = pcm_rate * _MAX_FRAME_MS // 1000
        self._generator = DtmfGenerator(max_frame_samples=max(_TONE_CHUNK, max_frame))
        self._resampler: Resampler | None = None
        if pcm_rate != SAMPLE_RATE:
            self._resampler = Resampler(SAMPLE_RATE, pcm_rate, max_input_samples=_TONE_CHUNK)
        self._buffer = bytearray()

    def start(self, digit: str, volume: int) -> None:
        self._generator.start(digit, -volume)

    def stop(self) -> None:
        self._generator.stop()
        self._buffer.clear()
        if self._resampler is not None:
            self._resampler.reset()

    def take(self, samples: int) -> bytes:
        resampler = self._resampler
        if resampler is None:
            return self._generator.generate(samples)
        # Converted in fixed chunks and kept in a FIFO, so the tone runs on
        # across frames without a phase jump.
        buffer = self._buffer
        while len(buffer) < 2 * samples:
            buffer += resampler.process(self._generator.generate(_TONE_CHUNK))
        out = bytes(buffer[: 2 * samples])
        del buffer[: 2 * samples]
        return out


class _Listener:
    """The DETECT side: spandsp's DTMF receiver on an 8 kHz copy of the source's audio."""

    def __init__(self, pcm_rate: int) -> None:
        frame = SAMPLE_RATE * _MAX_FRAME_MS // 1000 + 16
        self.detector = DtmfDetector(max_frame_samples=frame)
        self._resampler: Resampler | None = None
        if pcm_rate != SAMPLE_RATE:
            self._resampler = Resampler(
                pcm_rate, SAMPLE_RATE, max_input_samples=pcm_rate * _MAX_FRAME_MS // 1000
            )

    def feed(self, pcm: bytes) -> tuple[int, list[DtmfEvent]]:
        """The detector's position before the frame, and what the frame confirmed."""
        before = self.detector.position
        copy = pcm if self._resampler is None else self._resampler.process(pcm)
        return before, self.detector.feed(copy)


class DtmfInterworking:
    """DTMF for one direction of a transcoded call; see the module documentation.

    ``source_clock`` and ``pcm_rate`` are the source leg's RTP clock and the
    PCM rate of its decoded audio; ``target_clock`` is the target leg's
    telephone-event clock and ``packet_interval`` its packet duration in
    that clock (both unused for GENERATE). ``noise(samples)`` gives comfort
    noise at ``pcm_rate``, which stands in for audio muted under an event.
    """

    def __init__(
        self,
        path: DtmfPath,
        *,
        source_clock: int,
        pcm_rate: int,
        target_clock: int,
        packet_interval: int,
        noise: Callable[[int], bytes],
    ) -> None:
        self.path: Final = path
        self._source_clock = source_clock
        self._pcm_rate = pcm_rate
        self._target_clock = target_clock
        self._noise = noise
        self._fade = pcm_rate * FADE_MS // 1000
        self._stale = source_clock * STALE_MS // 1000
        self._digits: deque[_Digit] = deque()
        self._finish_now = False
        self._guard = source_clock * GUARD_MS // 1000
        self._min_tone = source_clock * MIN_TONE_MS // 1000
        self._last_end: int | None = None
        """Source timestamp where the last digit played ended: the next starts no earlier."""
        self._muted_until: int | None = None
        """Source timestamp until which the audio stays muted after an event (RELAY, GENERATE)."""
        self.stats = DtmfStats()
        self._receiver: TelephoneEventReceiver | None = None
        self._sender: TelephoneEventSender | None = None
        self._tones: _ToneSource | None = None
        self._listener: _Listener | None = None
        if path is not DtmfPath.DETECT:
            self._receiver = TelephoneEventReceiver()
        if path is DtmfPath.GENERATE:
            self._tones = _ToneSource(pcm_rate)
        else:
            self._sender = TelephoneEventSender(packet_interval=packet_interval)
        if path is DtmfPath.DETECT:
            self._listener = _Listener(pcm_rate)
        self._muting = False
        """DETECT: a digit was heard and has not ended, so the audio is muted."""
        self._muted: list[_Span] = []
        """DETECT: what to mute in the frame last listened to."""

    # ------------------------------------------------------------------ input

    def receive(self, sequence: int, timestamp: int, payload: bytes, *, marker: bool) -> None:
        """A telephone-event packet of the source (RELAY, GENERATE).

        A malformed payload raises :class:`~gateway.media.dtmf.TelephoneEventError`
        and changes nothing.
        """
        receiver = self._receiver
        if receiver is None:
            raise RuntimeError(f"DTMF path {self.path.value} takes no telephone-event packets")
        self._apply(receiver.receive(sequence, timestamp, payload, marker=marker))
        current, duration = receiver.current, receiver.current_duration
        if current is not None and duration is not None:
            digit = self._find(current.event, current.timestamp)
            if digit is not None:
                digit.duration = max(digit.duration, duration)

    def _apply(self, reported: list[ReceivedEvent]) -> None:
        for item in reported:
            if isinstance(item, EventStarted):
                self._add(_Digit(item.event, item.timestamp, item.volume, 0))
            elif isinstance(item, EventEnded):
                digit = self._find(item.event, item.timestamp)
                if digit is not None:
                    digit.duration = max(digit.duration, item.duration)
                    digit.ended = True

    def _add(self, digit: _Digit) -> None:
        if len(self._digits) >= _MAX_PENDING:
            self.stats.dropped_events += 1
            return
        self._digits.append(digit)

    def _find(self, event: int, start: int) -> _Digit | None:
        for digit in reversed(self._digits):
            if digit.event == event and digit.origin == start:
                return digit
        return None

    def reset(self) -> None:
        """The source's stream restarted (new SSRC): its timeline is new.

        A digit playing now ends with the next frame; those not begun are dropped.
        """
        if self._receiver is not None:
            self._receiver = TelephoneEventReceiver()
        while self._digits and not self._digits[-1].begun:
            self._digits.pop()
        self._finish_now = bool(self._digits)
        self._last_end = self._muted_until = None

    # ----------------------------------------------------------------- output

    def tone_due(self, timestamp: int, samples: int) -> bool:
        """Whether GENERATE plays a tone in the frame at ``timestamp`` (so it must be sent)."""
        if self.path is not DtmfPath.GENERATE or not self._digits:
            return False
        return self._finish_now or _signed(self._digits[0].start - timestamp) < samples

    def process(
        self, timestamp: int, samples: int, pcm: bytes | None, target_timestamp: int
    ) -> tuple[bytes | None, list[EventPacket]]:
        """One frame of playout: the audio to carry on and the event packets to send.

        ``timestamp`` and ``samples`` place the frame on the source's timeline;
        ``target_timestamp`` is where it starts on the target's, in its
        telephone-event clock. ``pcm`` is the frame's audio, None when nothing
        is sent for it (GENERATE then makes audio if a tone is due).
        """
        spans, packets = self._schedule(timestamp, samples, target_timestamp)
        if self.path is DtmfPath.DETECT:
            muted, self._muted = self._muted, []
        else:
            muted = self._event_mutes(timestamp, samples, spans)
        if self.path is DtmfPath.GENERATE and spans and pcm is None:
            pcm = self._noise(samples * self._pcm_rate // self._source_clock)
        if pcm is None:
            return None, packets
        for span in muted:
            pcm = self._splice(pcm, span, self._noise(span.end - span.start))
        if self.path is DtmfPath.GENERATE:
            pcm = self._play_tones(pcm, spans)
        return pcm, packets

    def listen(self, timestamp: int, samples: int, pcm: bytes) -> None:
        """DETECT: the source's decoded frame, before anything changes it."""
        listener = self._listener
        if listener is None:
            return
        before, events = listener.feed(pcm)
        length = len(pcm) // 2
        changes = []
        for event in events:
            offset = (event.detected_at - before) * self._pcm_rate // SAMPLE_RATE
            changes.append((min(length, max(0, offset)), event.kind is DtmfEventKind.START))
            self._on_detected(event, timestamp, before)
        self._muted = self._detected_spans(changes, length)
        detector = listener.detector
        running = self._digits[-1] if self._digits else None
        if detector.digit is not None and running is not None and not running.ended:
            # The tone is on up to the frame's end, less what the detector needs
            # to hear it stop: reports never run past the end it will estimate.
            heard = samples - DTMF_END_LATENCY * self._source_clock // SAMPLE_RATE
            known = _signed(timestamp + heard - running.origin)
            running.duration = max(running.duration, known)

    def _on_detected(self, event: DtmfEvent, timestamp: int, before: int) -> None:
        offset = (event.sample - before) * self._source_clock // SAMPLE_RATE
        if event.kind is DtmfEventKind.START:
            self.stats.tones_detected += 1
            volume = min(_MAX_VOLUME, max(0, -event.level_dbm0))
            start = (timestamp + offset) % _TS_MOD
            self._add(_Digit(event_for_digit(event.digit), start, volume, 0))
            return
        code = event_for_digit(event.digit)
        for digit in reversed(self._digits):
            if digit.event == code and not digit.ended:
                digit.duration = event.duration * self._source_clock // SAMPLE_RATE
                digit.ended = True
                return

    # --------------------------------------------------------------- schedule

    def _schedule(
        self, timestamp: int, samples: int, target_timestamp: int
    ) -> tuple[list[_Span], list[EventPacket]]:
        """Begin, advance and end the digits that fall in this frame (source clock units)."""
        packets: list[EventPacket] = []
        spans: list[_Span] = []

        def target(offset: int) -> int:
            return (target_timestamp + offset * self._target_clock // self._source_clock) % _TS_MOD

        if self._finish_now:
            self._finish_now = False
            while self._digits and self._digits[0].begun:
                digit = self._digits.popleft()
                spans.append(self._span(0, 0, digit, first=False, last=True))
                self._end_events(target(0), packets)
        while self._digits:
            digit = self._digits[0]
            first = not digit.begun
            if first:
                offset = self._place(digit, timestamp)
                if offset >= samples:
                    break
                self._begin(digit, target(offset), packets)
            offset = _signed(digit.start - timestamp)
            end = _signed(digit.end - timestamp)
            if not digit.ended and self._receiver is not None and samples - end > self._stale:
                self._expire(digit)
            start = max(0, offset)
            if digit.ended and end <= samples:
                spans.append(self._span(start, max(start, end), digit, first=first, last=True))
                self._digits.popleft()
                self._last_end = digit.end
                self._end_events(target(end), packets)
                continue
            spans.append(self._span(start, samples, digit, first=first, last=False))
            if self._sender is not None:
                packets += self._sender.advance(target(min(samples, end)))
            return spans, packets
        if self._sender is not None:
            packets += self._sender.advance(target(samples))  # end packet repeats
        return spans, packets

    def _place(self, digit: _Digit, timestamp: int) -> int:
        """Where a digit not yet begun starts, relative to the frame at ``timestamp``.

        One whose whole time has played already plays now, at its length;
        none starts before the last one ended (a far end would take an event
        older than the last as stale, RFC 4733 2.5.2.1), at the cost of its head.
        """
        if digit.ended and _signed(digit.end - timestamp) <= 0:
            self.stats.late_events += 1
            digit.origin = digit.start = timestamp
        last_end = self._last_end
        if last_end is not None and _signed(last_end - digit.start) > 0:
            digit.start = last_end
            if digit.ended:
                shortest = _signed(last_end - digit.origin) + self._min_tone
                digit.duration = max(digit.duration, shortest)
        return _signed(digit.start - timestamp)

    def _span(self, start: int, end: int, digit: _Digit, *, first: bool, last: bool) -> _Span:
        rate, clock = self._pcm_rate, self._source_clock
        return _Span(start * rate // clock, end * rate // clock, first, last, digit)

    def _expire(self, digit: _Digit) -> None:
        receiver = self._receiver
        assert receiver is not None
        current = receiver.current
        if current is not None and current.timestamp == digit.origin:
            receiver.expire()
        digit.ended = True

    def _begin(self, digit: _Digit, start: int, packets: list[EventPacket]) -> None:
        digit.begun = True
        if self._sender is not None:
            packets += self._sender.begin(digit.event, start, volume=digit.volume)
            self.stats.events_sent += 1
        elif digit_for_event(digit.event) is not None:
            self.stats.tones_played += 1

    def _end_events(self, end: int, packets: list[EventPacket]) -> None:
        sender = self._sender
        if sender is not None and sender.event is not None:
            packets += sender.end(end)

    # ------------------------------------------------------------------ audio

    def _event_mutes(self, timestamp: int, samples: int, spans: list[_Span]) -> list[_Span]:
        """RELAY, GENERATE: the audio under the events and a guard after each, to mute."""
        rate, clock = self._pcm_rate, self._source_clock
        length = samples * rate // clock
        ranges: list[tuple[int, int]] = []
        until = self._muted_until
        if until is not None:
            left = _signed(until - timestamp)
            if left > 0:
                ranges.append((0, min(length, left * rate // clock)))
            if left <= samples:
                self._muted_until = None
        for span in spans:
            if not span.last:
                ranges.append((span.start, length))
                continue
            end = span.end * clock // rate + self._guard
            ranges.append((span.start, min(length, end * rate // clock)))
            if end > samples:
                self._muted_until = (timestamp + end) % _TS_MOD
        return _merge(ranges, length, muted_before=until is not None)

    def _play_tones(self, pcm: bytes, spans: list[_Span]) -> bytes:
        """GENERATE: the digits' tones in place of the audio they cover."""
        tones = self._tones
        assert tones is not None
        for span in spans:
            key = digit_for_event(span.digit.event)
            if key is None:
                continue  # not DTMF (RFC 4733 3.2 has none other we could play)
            if span.first:
                tones.start(key, span.digit.volume)
            if span.end > span.start:
                pcm = self._splice(pcm, span, tones.take(span.end - span.start))
            if span.last:
                tones.stop()
        return pcm

    def _detected_spans(self, changes: list[tuple[int, bool]], length: int) -> list[_Span]:
        """The parts of a frame to mute, from where digits were confirmed and heard ending."""
        spans: list[_Span] = []
        at, changed_at = 0, False
        for offset, muting in changes:
            if self._muting and offset > at:
                spans.append(_Span(at, offset, changed_at, True, _NO_DIGIT))
            changed_at = muting != self._muting
            at, self._muting = offset, muting
        if self._muting and length > at:
            spans.append(_Span(at, length, changed_at, False, _NO_DIGIT))
        return spans

    def _splice(self, pcm: bytes, span: _Span, replacement: bytes) -> bytes:
        """``replacement`` over the span, crossfaded in where it begins, out where it ends."""
        start, end = 2 * span.start, 2 * span.end
        fade = 2 * min(self._fade, (span.end - span.start) // 2)
        if fade and span.first:
            faded = crossfade(pcm[start : start + fade], replacement[:fade])
            replacement = faded + replacement[fade:]
        if fade and span.last:
            kept = replacement[: len(replacement) - fade]
            replacement = kept + crossfade(replacement[-fade:], pcm[end - fade : end])
        return pcm[:start] + replacement + pcm[end:]


_NO_DIGIT: Final = _Digit(-1, 0, 0, 0)
"""Stands for the digit of a mute span, which covers audio, not one digit."""


def _merge(ranges: list[tuple[int, int]], length: int, *, muted_before: bool) -> list[_Span]:
    """Overlapping ranges of a frame as spans: fades only where the muting starts or stops."""
    spans: list[_Span] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if spans and start <= spans[-1].end:
            last = spans[-1]
            spans[-1] = _Span(last.start, max(last.end, end), last.first, True, _NO_DIGIT)
            continue
        spans.append(_Span(start, end, start > 0 or not muted_before, True, _NO_DIGIT))
    return [_Span(span.start, span.end, span.first, span.end < length, _NO_DIGIT) for span in spans]
