"""One direction of a transcoded call: RTP from leg X in, RTP for leg Y out (sans-IO).

DESIGN rule 3, transcode branch: packet in -> (SRTP unprotect, by the caller)
-> jitter buffer -> decode / conceal / FEC-recover -> resample -> encode ->
(SRTP protect, by the caller) -> packet out. A :class:`Transcoder` takes plain
RTP and arrival times (:meth:`Transcoder.push`), says when it next has work
(:meth:`Transcoder.next_deadline`) and gives the packets for leg Y when asked
at or after that time (:meth:`Transcoder.pull`). It never reads a clock,
sleeps or touches a socket.

Input (RFC 3550 5.1). Packets with the source codec's payload type go into the
adaptive :class:`~gateway.media.jitter.JitterBuffer` with their duration read
from the payload, so playout follows RTP timestamps, never arrival order. A new
SSRC resets the buffer (a new stream); sequence jumps and restarts within one
SSRC are the buffer's to detect (RFC 3550 A.1). telephone-event (RFC 4733) and
CN (RFC 3389) packets go to :meth:`Transcoder.on_telephone_event` and
:meth:`Transcoder.on_comfort_noise`, never into the jitter buffer (an event's
packets all carry its start as timestamp); their sequence numbers are
reported to it, so they count neither as lost nor as a gap. Other payload
types, and packets that are not RTP, are counted and dropped.

Playout, per frame the jitter buffer gives: AUDIO is decoded; LOST is rebuilt
from the next packet's in-band FEC when the codec can (Opus), else concealed by
the codec's PLC; SILENCE (the sender paused: DTX, CN) goes to
:meth:`Transcoder.silence`. Decoded audio passes the
:attr:`Transcoder.pcm_taps` (at the source codec's rate, before resampling),
then, when the two codecs' PCM rates differ, one speexdsp call resamples it to
the target's rate (a call's Opus leg runs at the other leg's rate, see
:func:`gateway.media.codecs.make_pair`, so Opus-G.711 needs none), into a
FIFO, and whole packets of the target's ptime (10/20/30/40/60 ms; Opus sends 20 ms
for 30, see :meth:`gateway.media.codecs.Opus.packet_ms`) are encoded from it.

Output (RFC 3550 5.1, 5.3): a fresh SSRC and random initial sequence number
and timestamp per direction; the timestamp counts the target's RTP clock
(G.722: 8000 per second though it carries 16000 samples, RFC 3551 4.5.2) and
moves on over pauses by the time they lasted, so it keeps tracking playout
time; the marker bit is set on the first packet of each talkspurt (RFC 3551
4.1). A pause flushes the partial packet in the FIFO, padded with silence.

Comfort noise and DTX (RFC 3389, RFC 7587 3.1.3; see
:mod:`gateway.media.comfort_noise`). The background level of the source is
measured on its decoded audio (:class:`~gateway.media.comfort_noise.NoiseFloor`),
or taken from its CN packets, which also mark the time after them as the
sender's pause: concealment there is replaced by noise. A pause of the
sender (SILENCE frames: Opus DTX, a G.711 sender after CN) becomes, toward a
target that negotiated CN, one CN packet with that level, refreshed every
:data:`CN_REFRESH` seconds or when the level moves by :data:`CN_LEVEL_STEP`
dB, and nothing else: quiet frames (Opus DTX updates) keep the pause, and the
first audio after it carries the marker bit. Toward a target without CN the
pause is filled with noise at the level (never digital silence); an Opus
encoder with DTX turns that into its own DTX. Where real and generated audio
meet, :data:`~gateway.media.dtmf_interworking.FADE_MS` of crossfade from the
last sample keeps it from clicking.

DTMF (RFC 4733, :mod:`gateway.media.dtmf_interworking`): events are relayed
with the target's payload type and clock (the audio under them muted),
played in-band toward a target without telephone-event, or detected in the
source's audio and sent as events, by which legs negotiated telephone-event.
Event packets go out on this direction's SSRC and sequence, with RTP
timestamps on the target's audio timeline. A leg's telephone-event runs at
its codec's RTP clock (the negotiation pairs them so).

Extension points: subclass or assign the hooks (``on_telephone_event``,
``on_comfort_noise``, ``silence``), append to ``pcm_taps``, and send extra
packets on this direction's SSRC and sequence with :meth:`Transcoder.packet`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from gateway.media.codecs import AudioCodec
from gateway.media.comfort_noise import (
    MIN_LEVEL_DBOV,
    ComfortNoiseError,
    ComfortNoiseSource,
    NoiseFloor,
    build_cn,
    crossfade,
    level_dbov,
    parse_cn,
)
from gateway.media.dtmf import TelephoneEventError
from gateway.media.dtmf_interworking import (
    FADE_MS,
    DtmfInterworking,
    DtmfPath,
    DtmfStats,
    dtmf_path,
)
from gateway.media.jitter import Frame, FrameKind, JitterBuffer
from gateway.media.resample import Resampler
from gateway.media.rtcp import ReceptionStats, SenderStats
from gateway.media.rtp import RtpHeader, parse_rtp_header

__all__ = [
    "CN_LEVEL_STEP",
    "CN_REFRESH",
    "JitterSettings",
    "PcmTap",
    "StreamFormat",
    "Transcoder",
    "TranscoderStats",
]

PcmTap = Callable[[bytes, int], bytes]
"""``tap(pcm, timestamp) -> pcm``: sees each decoded frame (mono 16-bit at the
source codec's ``pcm_rate``, ``timestamp`` its first sample's RTP timestamp on
the source leg) and returns the audio to carry on, of the same length (the
same object when it only listens)."""

_HEADER: Final = struct.Struct("!BBHII")
_VERSION: Final = 0x80
_U32: Final = 0xFFFF_FFFF
# Longer than any packet a peer sends (the codecs take at most 120 ms).
_MAX_FRAME_MS: Final = 120
# A playout jump shorter than this is float noise, not a pause.
_GAP_EPSILON: Final = 1e-4
_FLOAT_EPSILON: Final = 1e-9
_TS_MOD: Final = 1 << 32
_TS_HALF: Final = 1 << 31

CN_REFRESH: Final = 0.5
"""Seconds between CN packets toward the target while the source pauses (RFC 3389 4)."""
CN_LEVEL_STEP: Final = 3
"""A move of the noise level by this many dB sends a CN packet at once."""
# Noise standing for a pause, in dBov: before any audio was measured, and the
# bounds of a measured level (a stream that stops after a loud tone must not
# be followed by loud noise; below the floor noise is no longer heard).
_DEFAULT_NOISE_DBOV: Final = -70
_MAX_NOISE_DBOV: Final = -40
_MIN_NOISE_DBOV: Final = -80
# Audio this much above the background ends a pause toward a CN target: the
# frames Opus sends during DTX (its noise updates) are at the background.
_SPEECH_OVER_NOISE_DB: Final = 9


@dataclass(frozen=True, slots=True)
class JitterSettings:
    """The receiving jitter buffer's delays, seconds (``[media] jitter_*`` in the config)."""

    initial: float = 0.03
    minimum: float = 0.02
    maximum: float = 0.2


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """One leg's RTP as negotiated: the codec's payload type, ptime and auxiliary types."""

    payload_type: int
    ptime: int = 20
    telephone_event: int | None = None
    comfort_noise: int | None = None


@dataclass(slots=True)
class TranscoderStats:
    """Counters of one direction, for RTCP and ``edgegw call show``."""

    packets_in: int = 0
    """Packets of the source codec taken into the jitter buffer."""
    packets_out: int = 0
    octets_out: int = 0
    """Payload octets sent (RFC 3550 6.4.1 counts payload only)."""
    malformed: int = 0
    """Not RTP, bad padding, or a payload whose duration cannot be told."""
    unknown_payload_type: int = 0
    telephone_events: int = 0
    """RFC 4733 packets received."""
    comfort_noise: int = 0
    """RFC 3389 packets received."""
    comfort_noise_sent: int = 0
    """RFC 3389 packets sent to the target."""
    noise_frames: int = 0
    """Frames filled with generated comfort noise (pauses, time after a CN packet)."""
    ssrc_changes: int = 0
    decoded: int = 0
    decode_errors: int = 0
    """Payloads the decoder refused; concealed instead."""
    concealed: int = 0
    """Frames made by concealment (lost, late, or a stretch of the buffer)."""
    recovered: int = 0
    """Lost packets rebuilt from the next packet's in-band FEC."""
    silence_frames: int = 0
    dtx_frames: int = 0
    """Output packets the encoder chose not to send (DTX)."""


class Transcoder:
    """RTP of ``source`` (decoded by ``decoder``) to RTP of ``target`` (encoded by ``encoder``).

    ``decoder`` and ``encoder`` are :class:`~gateway.media.codecs.AudioCodec` objects;
    a call shares one per leg between its two directions (the leg's decoder here,
    its encoder in the other direction). ``rng`` picks the SSRC, initial sequence
    number and timestamp (a seeded one makes tests repeatable).
    """

    def __init__(
        self,
        decoder: AudioCodec,
        encoder: AudioCodec,
        source: StreamFormat,
        target: StreamFormat,
        *,
        jitter: JitterSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings = jitter or JitterSettings()
        draw = rng or random.SystemRandom()
        self.decoder = decoder
        self.encoder = encoder
        self.source = source
        self.target = target
        self.ssrc = draw.getrandbits(32)
        self._seq = draw.getrandbits(16)
        self._ts_base = draw.getrandbits(32)
        self._jitter = JitterBuffer(
            decoder.rtp_clock,
            decoder.rtp_clock * source.ptime // 1000,
            initial_delay=settings.initial,
            min_delay=settings.minimum,
            max_delay=settings.maximum,
        )
        self._in_clock = decoder.rtp_clock
        self._in_pcm_rate = decoder.pcm_rate
        self._out_rate = encoder.pcm_rate
        self._out_clock = encoder.rtp_clock
        self._resampler: Resampler | None = None
        if decoder.pcm_rate != encoder.pcm_rate:
            self._resampler = Resampler(
                decoder.pcm_rate,
                encoder.pcm_rate,
                max_input_samples=decoder.samples(_MAX_FRAME_MS),
            )
        self.packet_ms = encoder.packet_ms(target.ptime)
        self._out_samples = encoder.samples(self.packet_ms)
        self._out_bytes = 2 * self._out_samples
        self._fifo = bytearray()
        self._head = 0
        """Output-timeline position (target pcm samples) of the FIFO's first sample."""
        self._talk_end: int | None = None
        """Where the last talkspurt's audio ended, while paused."""
        self._expected: float | None = None
        """When the next frame plays if playout is continuous (arrival clock)."""
        self._marker = True
        self._in_ssrc: int | None = None
        self.reception: ReceptionStats | None = None
        """RFC 3550 A.1/A.3/A.8 statistics of the current source SSRC."""
        self.sender = SenderStats(self.ssrc, encoder.rtp_clock)
        self.stats = TranscoderStats()
        self.pcm_taps: list[PcmTap] = []
        # Comfort noise (RFC 3389) and the pauses of the source.
        self._floor = NoiseFloor(sample_rate=decoder.pcm_rate)
        self._noise: ComfortNoiseSource | None = None
        self._source_cn: tuple[int, int] | None = None
        """(RTP timestamp, level) of the source's last CN packet, while it pauses."""
        self._cn_sent: tuple[float, int] | None = None
        """(when, level) of the last CN packet to the target, while the target is paused."""
        self._frame_level: int | None = None
        self._fade = decoder.pcm_rate * FADE_MS // 1000
        self._last_sample: bytes | None = None
        """The last sample sent of the source's audio, while talking."""
        self._generated_tail = False
        """The last frame sent was generated noise."""
        self._dtmf = self._make_dtmf()

    def _make_dtmf(self) -> DtmfInterworking | None:
        path = dtmf_path(
            self.source.telephone_event is not None, self.target.telephone_event is not None
        )
        if path is None:
            return None
        return DtmfInterworking(
            path,
            source_clock=self._in_clock,
            pcm_rate=self._in_pcm_rate,
            target_clock=self._out_clock,
            packet_interval=self._out_clock * self.packet_ms // 1000,
            noise=self._comfort,
        )

    @property
    def dtmf_path(self) -> DtmfPath | None:
        """How DTMF crosses this direction; None when neither leg has telephone-event."""
        return None if self._dtmf is None else self._dtmf.path

    # ------------------------------------------------------------------ input

    def push(self, rtp: bytes, arrival: float) -> None:
        """Take one plain RTP packet from the source leg, arrived at ``arrival``."""
        header = parse_rtp_header(rtp)
        if header is None:
            self.stats.malformed += 1
            return
        end = len(rtp)
        if header.padding:
            # RFC 3550 5.1: the last octet counts the padding, itself included.
            end -= rtp[-1]
            if rtp[-1] == 0 or end < header.header_length:
                self.stats.malformed += 1
                return
        payload = rtp[header.header_length : end]
        source = self.source
        pt = header.payload_type
        if pt == source.payload_type:
            self._push_audio(header, payload, arrival)
        elif pt == source.telephone_event:
            self.on_telephone_event(header, payload, arrival)
        elif pt == source.comfort_noise:
            self.on_comfort_noise(header, payload, arrival)
        else:
            self.stats.unknown_payload_type += 1

    def _push_audio(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        samples = self.decoder.duration(payload)
        if samples is None:
            self.stats.malformed += 1
            return
        if header.ssrc != self._in_ssrc:
            self._new_source(header.ssrc)
        assert self.reception is not None  # made by _new_source
        self.reception.update(header.sequence, header.timestamp, arrival)
        self._jitter.push(
            header.sequence,
            header.timestamp,
            payload,
            arrival,
            marker=header.marker,
            samples=samples,
        )
        self.stats.packets_in += 1

    def _new_source(self, ssrc: int) -> None:
        if self._in_ssrc is not None:
            # A new stream (RFC 3550 8.2): its sequence and timestamps start afresh.
            self._jitter.reset()
            self.stats.ssrc_changes += 1
            self._source_cn = None
            if self._dtmf is not None:
                self._dtmf.reset()
        self._in_ssrc = ssrc
        self.reception = ReceptionStats(ssrc, self._in_clock)

    def _not_audio(self, header: RtpHeader) -> None:
        """A packet of the source's stream without audio: its sequence number is not a loss."""
        if header.ssrc == self._in_ssrc:
            self._jitter.skip(header.sequence)

    def on_telephone_event(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        """An RFC 4733 packet from the source leg: the event plays out with the audio."""
        self.stats.telephone_events += 1
        self._not_audio(header)
        if self._dtmf is None:
            return
        try:
            self._dtmf.receive(header.sequence, header.timestamp, payload, marker=header.marker)
        except TelephoneEventError:
            self.stats.malformed += 1

    def on_comfort_noise(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        """An RFC 3389 CN packet from the source leg: it pauses from its timestamp on."""
        self.stats.comfort_noise += 1
        self._not_audio(header)
        try:
            noise = parse_cn(payload)
        except ComfortNoiseError:
            self.stats.malformed += 1
            return
        self._source_cn = (header.timestamp, noise.level_dbov)

    # ----------------------------------------------------------------- output

    def next_deadline(self) -> float | None:
        """When :meth:`pull` next has work, on the arrival clock; None until a packet came."""
        return self._jitter.next_deadline()

    def pull(self, now: float) -> list[bytes]:
        """Plain RTP packets for the target leg, from every frame due at ``now``."""
        out: list[bytes] = []
        jitter = self._jitter
        while True:
            deadline = jitter.next_deadline()
            if deadline is None or now + _FLOAT_EPSILON < deadline:
                return out
            frame = jitter.pop(now)
            if frame is None:
                return out
            self._play(frame, deadline, now, out)

    def silence(self, frame: Frame) -> bytes | None:
        """Audio (at the source's ``pcm_rate``) for a pause of the sender, or None to send nothing.

        Comfort noise at the source's background level; None toward a target
        that negotiated CN, which then gets CN packets instead (RFC 3389 4).
        """
        if self.target.comfort_noise is not None:
            return None
        return self._comfort(frame.samples * self._in_pcm_rate // self._in_clock)

    def _comfort(self, samples: int) -> bytes:
        """``samples`` of noise at the source's background level (any PCM rate: white noise)."""
        noise = self._noise
        if noise is None:
            frame = max(self.decoder.samples(_MAX_FRAME_MS), self.encoder.samples(_MAX_FRAME_MS))
            noise = self._noise = ComfortNoiseSource(max_frame_samples=frame)
        noise.level_dbov = max(_MIN_NOISE_DBOV, self._background())
        return noise.generate(samples)

    def _background(self) -> int:
        """The level, dBov, that stands for the source's pauses."""
        if self._source_cn is not None:
            return self._source_cn[1]
        floor = self._floor.level_dbov
        return _DEFAULT_NOISE_DBOV if floor is None else min(floor, _MAX_NOISE_DBOV)

    def _play(self, frame: Frame, deadline: float, now: float, out: list[bytes]) -> None:
        pcm, generated = self._source_pcm(frame)
        dtmf = self._dtmf
        if dtmf is not None and dtmf.path is DtmfPath.DETECT:
            # The detector hears the source as it came, before anything changes it.
            heard = pcm if pcm is not None else bytes(2 * self._pcm_samples(frame))
            dtmf.listen(frame.timestamp, frame.samples, heard)
        if pcm is not None:
            for tap in self.pcm_taps:
                pcm = tap(pcm, frame.timestamp)
        tone = dtmf is not None and dtmf.tone_due(frame.timestamp, frame.samples)
        send = tone or self._sends(frame, pcm, generated)
        if send:
            position = self._talk(deadline, now, out)
        else:
            self._pause(now, out)
            position = self._paused_position(deadline)
        if dtmf is not None:
            pcm, events = dtmf.process(
                frame.timestamp, frame.samples, pcm if send else None, self._rtp_time(position)
            )
            event_pt = self.target.telephone_event
            for event in events:
                assert event_pt is not None  # only RELAY and DETECT send events
                out.append(self.packet(event.payload, event_pt, event.timestamp, now, event.marker))
        if not send:
            self._comfort_noise_packet(deadline, position, now, out)
            return
        if pcm is None:
            pcm = self._comfort(self._pcm_samples(frame))  # a tone due that the schedule dropped
        pcm = self._smooth_edge(pcm, generated and not tone)
        self._expected = deadline + frame.samples / self._in_clock
        self._fifo += self._resample(pcm)
        self._encode_ready(now, out)

    def _pcm_samples(self, frame: Frame) -> int:
        return frame.samples * self._in_pcm_rate // self._in_clock

    def _source_pcm(self, frame: Frame) -> tuple[bytes | None, bool]:
        """The frame's audio (None: nothing to send) and whether it is generated noise."""
        self._frame_level = None
        kind = frame.kind
        if kind is FrameKind.SILENCE:
            self.stats.silence_frames += 1
            pcm = self.silence(frame)
            if pcm is not None:
                self.stats.noise_frames += 1
            return pcm, True
        source_cn = self._source_cn
        after_cn = source_cn is not None and (frame.timestamp - source_cn[0]) % _TS_MOD < _TS_HALF
        if kind is FrameKind.LOST and after_cn:
            # The sender said it pauses here: noise, not a concealed dying word.
            self.stats.noise_frames += 1
            return self._comfort(self._pcm_samples(frame)), True
        pcm = self._decode(frame)
        if kind is FrameKind.AUDIO:
            self._frame_level = self._floor.observe(pcm)
            if after_cn:
                self._source_cn = None
            return pcm, False
        level = self._frame_level = level_dbov(pcm)
        if level < self._background():
            # Concealment has faded out (G.711's within 50 ms): what stands for the
            # rest of a loss, or of a pause not yet known as one, is the background.
            self.stats.noise_frames += 1
            return self._comfort(len(pcm) // 2), True
        return pcm, False

    def _sends(self, frame: Frame, pcm: bytes | None, generated: bool) -> bool:
        """Whether the frame goes out as audio (else the target is in a pause)."""
        if pcm is None:
            return False
        if self.target.comfort_noise is None:
            return True
        if generated:
            return False
        if self._cn_sent is None:
            return True
        # In a CN pause: only speech ends it, not the sender's noise updates.
        level = self._frame_level
        if level is None:
            level = level_dbov(pcm)
        return level > self._background() + _SPEECH_OVER_NOISE_DB

    def _talk(self, deadline: float, now: float, out: list[bytes]) -> int:
        """Audio goes out for the frame at ``deadline``: where on the output timeline it starts."""
        expected = self._expected
        if expected is not None and deadline - expected > _GAP_EPSILON:
            self._pause(now, out)
            self._resume(round((deadline - expected) * self._out_rate))
        elif self._talk_end is not None:
            self._resume(0)
        self._cn_sent = None
        return self._head + len(self._fifo) // 2

    def _paused_position(self, deadline: float) -> int:
        """Where on the output timeline a frame at ``deadline`` falls, while paused."""
        end = self._head if self._talk_end is None else self._talk_end
        expected = self._expected
        gap = 0 if expected is None else max(0, round((deadline - expected) * self._out_rate))
        return max(self._head, end + gap)

    def _rtp_time(self, position: int) -> int:
        """The target's RTP timestamp of an output-timeline position."""
        return (self._ts_base + position * self._out_clock // self._out_rate) & _U32

    def _comfort_noise_packet(
        self, deadline: float, position: int, now: float, out: list[bytes]
    ) -> None:
        """While the target pauses: a CN packet when one is due (RFC 3389 4)."""
        payload_type = self.target.comfort_noise
        if payload_type is None:
            return
        level = max(MIN_LEVEL_DBOV, min(0, self._background()))
        sent = self._cn_sent
        if (
            sent is not None
            and deadline - sent[0] < CN_REFRESH - _FLOAT_EPSILON
            and abs(level - sent[1]) < CN_LEVEL_STEP
        ):
            return
        out.append(self.packet(build_cn(level), payload_type, self._rtp_time(position), now, False))
        self._cn_sent = (deadline, level)
        self.stats.comfort_noise_sent += 1

    def _smooth_edge(self, pcm: bytes, generated: bool) -> bytes:
        """Crossfade from the last sample sent where real audio and generated noise meet."""
        last, fade = self._last_sample, 2 * self._fade
        if last is not None and generated != self._generated_tail and 0 < fade <= len(pcm):
            pcm = crossfade(last * self._fade, pcm[:fade]) + pcm[fade:]
        self._generated_tail = generated
        self._last_sample = pcm[-2:] if pcm else last
        return pcm

    def _decode(self, frame: Frame) -> bytes:
        decoder = self.decoder
        samples = frame.samples * self._in_pcm_rate // self._in_clock
        if frame.kind is FrameKind.AUDIO:
            try:
                pcm = decoder.decode(frame.payload)
            except ValueError:
                # Corrupt payload: the codec errors are ValueErrors with the library's text.
                self.stats.decode_errors += 1
            else:
                self.stats.decoded += 1
                return pcm
        elif frame.next_payload is not None:
            recovered = decoder.recover(frame.next_payload, samples)
            if recovered is not None:
                self.stats.recovered += 1
                return recovered
        self.stats.concealed += 1
        return decoder.conceal(samples)

    def _resample(self, pcm: bytes) -> bytes:
        resampler = self._resampler
        if resampler is None:
            return pcm
        limit = 2 * resampler.max_input_samples
        if len(pcm) <= limit:
            return resampler.process(pcm)
        return b"".join(resampler.process(pcm[i : i + limit]) for i in range(0, len(pcm), limit))

    def _pause(self, now: float, out: list[bytes]) -> None:
        """The target pauses: send what is buffered, padded with noise, and wait."""
        if self._talk_end is not None:
            return
        fifo = self._fifo
        self._talk_end = self._head + len(fifo) // 2
        if fifo:
            padding = self._comfort((self._out_bytes - len(fifo)) // 2)
            fade = min(2 * self._fade, len(padding))
            if fade:
                padding = crossfade(fifo[-2:] * (fade // 2), padding[:fade]) + padding[fade:]
            fifo += padding
            self._encode_ready(now, out)
        self._marker = True
        self._last_sample = None
        self._generated_tail = False
        if self._resampler is not None:
            self._resampler.reset()

    def _resume(self, gap: int) -> None:
        """Audio again, ``gap`` target samples after the last frame: the timeline moves on."""
        end = self._head if self._talk_end is None else self._talk_end
        self._head = max(self._head, end + gap)
        self._talk_end = None

    def _encode_ready(self, now: float, out: list[bytes]) -> None:
        fifo, size = self._fifo, self._out_bytes
        while len(fifo) >= size:
            chunk = bytes(fifo[:size])
            del fifo[:size]
            packets = self.encoder.encode_packets(chunk)
            start = self._ts_base + self._head * self._out_clock // self._out_rate
            self._head += self._out_samples
            if not packets:
                self.stats.dtx_frames += 1
                self._marker = True
                continue
            for offset, payload in packets:
                out.append(self.packet(payload, self.target.payload_type, start + offset, now))

    def packet(
        self,
        payload: bytes,
        payload_type: int,
        timestamp: int,
        now: float,
        marker: bool | None = None,
    ) -> bytes:
        """An RTP packet of this direction's stream (our SSRC, next sequence number).

        ``marker`` None: the marker bit goes on the first audio packet after a
        pause. True or False sets it for this packet alone and leaves the
        talkspurt's marker pending (RFC 4733 events, CN packets). Counted for
        the SR's sender info.
        """
        timestamp &= _U32
        seq = self._seq = (self._seq + 1) & 0xFFFF
        if marker is None:
            marker, self._marker = self._marker, False
        header = _HEADER.pack(
            _VERSION, (0x80 if marker else 0) | payload_type, seq, timestamp, self.ssrc
        )
        self.sender.on_sent(timestamp, len(payload), now)
        stats = self.stats
        stats.packets_out += 1
        stats.octets_out += len(payload)
        return header + payload

    # ------------------------------------------------------------------ stats

    def snapshot(self) -> dict[str, Any]:
        """Counters, the jitter buffer's figures and the interarrival jitter, as plain data."""
        buffer = self._jitter.stats
        reception = self.reception
        jitter = 0.0 if reception is None else reception.jitter / self._in_clock
        dtmf = DtmfStats() if self._dtmf is None else self._dtmf.stats
        return {
            **asdict(self.stats),
            **asdict(dtmf),
            "dtmf_path": None if self._dtmf is None else self._dtmf.path.value,
            "lost": buffer.lost,
            "late": buffer.late,
            "duplicate": buffer.duplicate,
            "discarded": buffer.discarded,
            "buffered": buffer.buffered,
            "buffer_delay": round(buffer.delay, 4),
            "target_delay": round(buffer.target_delay, 4),
            "jitter": round(jitter, 4),
            "ssrc": self.ssrc,
            "source_ssrc": self._in_ssrc,
            "codec_in": self.decoder.name,
            "codec_out": self.encoder.name,
            "packet_ms": self.packet_ms,
        }
