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
:meth:`Transcoder.on_comfort_noise`, which count and drop them for now; other
payload types, and packets that are not RTP, are counted and dropped.

Playout, per frame the jitter buffer gives: AUDIO is decoded; LOST is rebuilt
from the next packet's in-band FEC when the codec can (Opus), else concealed by
the codec's PLC; SILENCE (the sender paused: DTX, CN) goes to
:meth:`Transcoder.silence`, which returns None for now, so nothing is sent and
the next packet carries the marker bit. Decoded audio passes the
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

Extension points for what comes later (DTMF interworking, comfort noise, fax
detection): subclass or assign the three hooks (``on_telephone_event``,
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
from gateway.media.jitter import Frame, FrameKind, JitterBuffer
from gateway.media.resample import Resampler
from gateway.media.rtcp import ReceptionStats, SenderStats
from gateway.media.rtp import RtpHeader, parse_rtp_header

__all__ = [
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
    """RFC 4733 packets received (dropped until DTMF interworking lands)."""
    comfort_noise: int = 0
    """RFC 3389 packets received (dropped until comfort noise lands)."""
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
        self._in_ssrc = ssrc
        self.reception = ReceptionStats(ssrc, self._in_clock)

    def on_telephone_event(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        """An RFC 4733 packet from the source leg. Counted and dropped for now."""
        self.stats.telephone_events += 1

    def on_comfort_noise(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        """An RFC 3389 CN packet from the source leg. Counted and dropped for now."""
        self.stats.comfort_noise += 1

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

        The comfort-noise interworking fills this in; until then a pause is
        not sent, and the next packet after it carries the marker bit.
        """
        return None

    def _play(self, frame: Frame, deadline: float, now: float, out: list[bytes]) -> None:
        if frame.kind is FrameKind.SILENCE:
            self.stats.silence_frames += 1
            filler = self.silence(frame)
            if filler is None:
                self._pause(now, out)
                return
            pcm = filler
        else:
            pcm = self._decode(frame)
        expected = self._expected
        if expected is not None and deadline - expected > _GAP_EPSILON:
            self._pause(now, out)
            self._resume(round((deadline - expected) * self._out_rate))
        elif self._talk_end is not None:
            self._resume(0)
        self._expected = deadline + frame.samples / self._in_clock
        for tap in self.pcm_taps:
            pcm = tap(pcm, frame.timestamp)
        self._fifo += self._resample(pcm)
        self._encode_ready(now, out)

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
        """The sender paused: send what is buffered, padded with silence, and wait."""
        if self._talk_end is not None:
            return
        fifo = self._fifo
        self._talk_end = self._head + len(fifo) // 2
        if fifo:
            fifo += bytes(self._out_bytes - len(fifo))
            self._encode_ready(now, out)
        self._marker = True
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

    def packet(self, payload: bytes, payload_type: int, timestamp: int, now: float) -> bytes:
        """An RTP packet of this direction's stream (our SSRC, next sequence number).

        The marker bit goes on the first packet after a pause. Counted for the
        SR's sender info.
        """
        timestamp &= _U32
        seq = self._seq = (self._seq + 1) & 0xFFFF
        marker = 0x80 if self._marker else 0
        self._marker = False
        header = _HEADER.pack(_VERSION, marker | payload_type, seq, timestamp, self.ssrc)
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
        return {
            **asdict(self.stats),
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
