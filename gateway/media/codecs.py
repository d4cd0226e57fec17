"""One interface over the gateway's audio codecs, for the transcoding pipeline.

:class:`AudioCodec` is what :mod:`gateway.media.transcode` sees of a leg's codec:
the encoder of what the gateway sends to that leg and the decoder of what the
leg sends, with the two rates the pipeline must tell apart:

* ``pcm_rate``: the rate of the linear audio in and out (8000 for G.711 and
  G.729, 16000 for G.722; 48000 for Opus, or the other leg's rate when
  :func:`make_pair` builds a call's codecs);
* ``rtp_clock``: the rate of RTP timestamps and of SDP ``a=rtpmap`` (8000 for
  G.722 too, RFC 3551 4.5.2; 48000 for Opus, RFC 7587 4.1).

Every method is one native call per packet (G.711 adds the concealer's
history call, spandsp's ``plc_rx``). Loss concealment is the codec's own where
it has one (Opus PLC, G.729 frame erasure, the G.722 binding's replay with
fade) and spandsp's G.711 Appendix I concealer (:class:`gateway.media.tones.PacketLossConcealer`)
for G.711. Opus also rebuilds a lost packet from the in-band FEC (LBRR) data of
the next one (RFC 6716 2.1.7).

:func:`make_codec` builds a codec from a negotiated payload format and reads
its fmtp (RFC 7587 7: ``useinbandfec``, ``usedtx``, ``maxaveragebitrate``;
RFC 4856 / RFC 3551 4.5.6: G.729 ``annexb``, "yes" when absent). The fmtp is
the peer's, so it says what the peer wants to receive: FEC and DTX are sent
only when both the gateway's settings and the peer ask for them. Opus is mono
inside: ``opus/48000/2`` in SDP is the format's name, not the stream's
channel count (RFC 7587 7), and libopus downmixes a stereo stream it decodes.

Linear PCM is mono 16-bit signed samples in host byte order, little-endian on
every target the gateway ships for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from gateway.media import g722, g729
from gateway.media.g711 import CodecError, G711Codec
from gateway.media.g722 import G722Decoder, G722Encoder
from gateway.media.g729 import G729Decoder, G729Encoder
from gateway.media.opus import OpusDecoder, OpusEncoder
from gateway.media.tones import PacketLossConcealer

__all__ = [
    "G711",
    "G722",
    "G729",
    "AudioCodec",
    "CodecDescription",
    "Opus",
    "OpusSettings",
    "UnsupportedCodec",
    "make_codec",
    "make_pair",
    "opus_has_fec",
    "opus_packet_samples",
    "parse_fmtp",
]

Pcm = bytes | bytearray | memoryview

# The longest packet the pipeline takes from a peer, as the bindings do.
_MAX_PACKET_MS: Final = 120

_OPUS_RATE: Final = 48000
# RFC 6716 3.1: frame duration of each TOC configuration, in 48 kHz samples.
_SILK_FRAMES: Final = (480, 960, 1920, 2880)
_HYBRID_FRAMES: Final = (480, 960)
_CELT_FRAMES: Final = (120, 240, 480, 960)
_OPUS_MAX_SAMPLES: Final = _OPUS_RATE * _MAX_PACKET_MS // 1000
_OPUS_PCM_RATES: Final = (8000, 16000, 48000)
# The PCM rate of each encoding (Opus: the highest it runs at).
_PCM_RATES: Final = {"pcma": 8000, "pcmu": 8000, "g729": 8000, "g722": 16000, "opus": 48000}
# libopus encodes these frame durations (ms) that a ptime can map to.
_OPUS_PACKET_MS: Final = (10, 20, 40, 60)
# RFC 7587 3.3: with DTX on, a packet this short means "nothing to send".
_OPUS_DTX_BYTES: Final = 2
_OPUS_MIN_BITRATE: Final = 6000

_G711_MAX_SAMPLES: Final = 8000 * _MAX_PACKET_MS // 1000


class UnsupportedCodec(ValueError):
    """A payload format the pipeline cannot transcode (unknown encoding, clock or channels)."""


class CodecDescription(Protocol):
    """A negotiated payload format (``gateway.calls.negotiation.Codec`` is one)."""

    @property
    def encoding(self) -> str: ...

    @property
    def clock_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def fmtp(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class OpusSettings:
    """How the gateway encodes Opus (from ``[media]`` ``opus_*`` in the config)."""

    bitrate: int = 32000
    complexity: int = 5
    fec: bool = True
    packet_loss_percent: int = 5
    dtx: bool = False


def parse_fmtp(fmtp: str | None) -> dict[str, str]:
    """``a=fmtp`` parameters ``"k=v; k2=v2"`` as a dict with lower-case keys."""
    params: dict[str, str] = {}
    for part in (fmtp or "").split(";"):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key:
            params[key] = value.strip()
    return params


def opus_packet_samples(payload: Pcm) -> int | None:
    """Duration of an Opus packet in 48 kHz samples from its TOC (RFC 6716 3.1, 3.2).

    None when the packet is empty, code 3 without its frame count byte, or longer
    than the 120 ms a packet may last.
    """
    if not payload:
        return None
    toc = payload[0]
    config = toc >> 3
    if config < 12:
        frame = _SILK_FRAMES[config & 3]
    elif config < 16:
        frame = _HYBRID_FRAMES[config & 1]
    else:
        frame = _CELT_FRAMES[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code < 3:
        count = 2
    elif len(payload) < 2:
        return None
    else:
        count = payload[1] & 0x3F
    total = frame * count
    return total if 0 < total <= _OPUS_MAX_SAMPLES else None


def _first_frame_offset(payload: Pcm) -> int | None:
    """Where the first frame of an Opus packet starts (RFC 6716 3.2), or None if cut short."""
    code = payload[0] & 3
    if code < 2:
        return 1
    if code == 2:
        # One or two bytes give the first frame's length (3.2.1).
        return 2 if len(payload) > 1 and payload[1] < 252 else 3
    if len(payload) < 2:
        return None
    flags = payload[1]
    offset = 2
    if flags & 0x40:  # padding: bytes of 255 continue the length (3.2.5)
        while offset < len(payload) and payload[offset] == 255:
            offset += 1
        offset += 1
    if flags & 0x80:  # VBR: the lengths of all frames but the last
        for _ in range((flags & 0x3F) - 1):
            if offset >= len(payload):
                return None
            offset += 1 if payload[offset] < 252 else 2
    return offset


class _RangeBits:
    """The start of RFC 6716's range decoder (4.1.1, 4.1.2.1), for bits of probability 1/2."""

    def __init__(self, data: Pcm, start: int) -> None:
        self._data, self._pos = data, start
        first = self._next()
        self._rest = first
        self._rng = 128
        self._val = 127 - (first >> 1)
        self._normalize()

    def _next(self) -> int:
        pos = self._pos
        self._pos += 1
        return self._data[pos] if pos < len(self._data) else 0

    def _normalize(self) -> None:
        while self._rng <= 1 << 23:
            self._rng <<= 8
            byte = self._next()
            symbol = ((self._rest << 7) | (byte >> 1)) & 0xFF
            self._rest = byte
            self._val = ((self._val << 8) + 255 - symbol) & 0x7FFF_FFFF

    def bit(self) -> bool:
        """libopus's ``ec_dec_bit_logp(dec, 1)``."""
        half = self._rng >> 1
        one = self._val < half
        if one:
            self._rng = half
        else:
            self._val -= half
            self._rng -= half
        self._normalize()
        return one


def opus_has_fec(payload: Pcm) -> bool:
    """Whether an Opus packet carries in-band FEC (LBRR) data for the packet before it.

    RFC 6716 4.2.3: a SILK or hybrid frame starts with one VAD flag per SILK
    frame (1 to 3) and then the LBRR flag, all coded at probability 1/2; for a
    stereo packet these first flags are the mid channel's. CELT-only packets
    carry none.
    """
    if not payload or payload[0] >> 3 >= 16:
        return False
    start = _first_frame_offset(payload)
    if start is None or start >= len(payload):
        return False
    config = payload[0] >> 3
    silk_frames = max(1, _SILK_FRAMES[config & 3] // 960) if config < 12 else 1
    bits = _RangeBits(payload, start)
    for _ in range(silk_frames):
        bits.bit()
    return bits.bit()


def _in_steps(samples: int, step: int, largest: int, make: Callable[[int], bytes]) -> bytes:
    """``samples`` of audio from ``make(n)``, called with multiples of ``step`` up to ``largest``.

    A request that is not a whole number of steps is rounded up and the surplus cut,
    so the pipeline gets exactly the time it asked for.
    """
    total = -(-samples // step) * step
    parts: list[bytes] = []
    while total > 0:
        count = min(total, largest)
        parts.append(make(count))
        total -= count
    return b"".join(parts)[: 2 * samples]


class AudioCodec(ABC):
    """Encoder toward one leg and decoder of what that leg sends, behind one interface."""

    name: str
    pcm_rate: int
    rtp_clock: int

    @abstractmethod
    def encode(self, pcm: Pcm) -> bytes:
        """One payload for ``pcm`` (a whole packet); empty: nothing to send (DTX)."""

    def encode_packets(self, pcm: Pcm) -> list[tuple[int, bytes]]:
        """Payloads to send for ``pcm``, each with its offset in RTP clock units.

        Empty when the encoder chose not to send (DTX); several only when a
        codec's discontinuous transmission splits the packet (G.729 Annex B).
        """
        payload = self.encode(pcm)
        return [(0, payload)] if payload else []

    @abstractmethod
    def decode(self, payload: Pcm) -> bytes:
        """PCM at ``pcm_rate`` for one received payload."""

    @abstractmethod
    def conceal(self, samples: int) -> bytes:
        """``samples`` of PCM at ``pcm_rate`` standing in for lost audio."""

    def recover(self, next_payload: Pcm, samples: int) -> bytes | None:
        """A lost packet of ``samples`` rebuilt from ``next_payload``'s FEC data, or None."""
        return None

    @abstractmethod
    def duration(self, payload: Pcm) -> int | None:
        """How long ``payload`` lasts, in RTP clock units; None when that cannot be told."""

    def packet_ms(self, ptime: int) -> int:
        """The packet duration this codec sends for a negotiated ``ptime`` (ms)."""
        return ptime

    def samples(self, ms: int) -> int:
        """PCM samples in ``ms`` milliseconds."""
        return self.pcm_rate * ms // 1000

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class G711(AudioCodec):
    """PCMA or PCMU, with spandsp's G.711 Appendix I concealment."""

    pcm_rate = 8000
    rtp_clock = 8000

    def __init__(self, encoding: str) -> None:
        law: Literal["PCMA", "PCMU"] = "PCMA" if encoding.upper() == "PCMA" else "PCMU"
        self.name = law
        self._encoder = G711Codec(law, max_samples=_G711_MAX_SAMPLES)
        self._decoder = G711Codec(law, max_samples=_G711_MAX_SAMPLES)
        self._plc = PacketLossConcealer(max_frame_samples=_G711_MAX_SAMPLES)

    def encode(self, pcm: Pcm) -> bytes:
        return self._encoder.encode(pcm)

    def decode(self, payload: Pcm) -> bytes:
        if not payload:
            raise CodecError(f"Empty {self.name} payload")
        # The concealer keeps what arrived, and smooths the return from a loss.
        return self._plc.good(self._decoder.decode(payload))

    def conceal(self, samples: int) -> bytes:
        return _in_steps(samples, 1, _G711_MAX_SAMPLES, self._plc.conceal)

    def duration(self, payload: Pcm) -> int | None:
        return len(payload) if 0 < len(payload) <= _G711_MAX_SAMPLES else None


class G722(AudioCodec):
    """G.722 at 64 kbit/s: 16 kHz audio, RTP clock 8000 (RFC 3551 4.5.2)."""

    name = "G722"
    pcm_rate = g722.SAMPLE_RATE
    rtp_clock = g722.RTP_CLOCK_RATE

    def __init__(self) -> None:
        self._encoder = G722Encoder()
        self._decoder = G722Decoder()

    def encode(self, pcm: Pcm) -> bytes:
        return self._encoder.encode(pcm)

    def decode(self, payload: Pcm) -> bytes:
        return self._decoder.decode(payload)

    def conceal(self, samples: int) -> bytes:
        return _in_steps(samples, 2, g722.MAX_SAMPLES, self._decoder.conceal)

    def duration(self, payload: Pcm) -> int | None:
        # Two 16 kHz samples per octet, and the clock runs at half the sample rate.
        return len(payload) if 0 < len(payload) <= g722.MAX_PAYLOAD_BYTES else None


class G729(AudioCodec):
    """G.729A, with Annex B VAD/DTX toward the leg when ``annexb``."""

    name = "G729"
    pcm_rate = g729.SAMPLE_RATE
    rtp_clock = g729.RTP_CLOCK_RATE

    def __init__(self, *, annexb: bool) -> None:
        self.annexb = annexb
        self._encoder = G729Encoder(vad=annexb)
        self._decoder = G729Decoder()

    def encode(self, pcm: Pcm) -> bytes:
        return self._encoder.encode(pcm)

    def encode_packets(self, pcm: Pcm) -> list[tuple[int, bytes]]:
        # Exact timestamps at the edges of a talk spurt (see gateway.media.g729).
        return [(packet.offset, packet.payload) for packet in self._encoder.encode_packets(pcm)]

    def decode(self, payload: Pcm) -> bytes:
        return self._decoder.decode(payload)

    def conceal(self, samples: int) -> bytes:
        return _in_steps(samples, g729.FRAME_SAMPLES, g729.MAX_SAMPLES, self._decoder.conceal)

    def duration(self, payload: Pcm) -> int | None:
        speech, rest = divmod(len(payload), g729.FRAME_BYTES)
        frames = speech + (rest == g729.SID_BYTES)
        if rest not in (0, g729.SID_BYTES) or frames == 0:
            return None
        return frames * g729.FRAME_SAMPLES

    def packet_ms(self, ptime: int) -> int:
        return max(10, ptime - ptime % 10)


class Opus(AudioCodec):
    """Opus mono, with PLC and in-band FEC recovery, its PCM at ``pcm_rate``.

    libopus takes and gives PCM at 8, 16 or 48 kHz whatever the stream's
    bandwidth (RFC 7587 4.1: the RTP clock is 48000 all the same). Facing a
    narrowband or wideband leg, running it at that leg's rate saves the
    resampling and the coding of bands the other leg cannot carry: about half
    the CPU of an Opus-G.711 call, for the same audio on the G.711 side.
    """

    name = "opus"
    rtp_clock = _OPUS_RATE

    def __init__(
        self,
        settings: OpusSettings,
        *,
        fec: bool,
        dtx: bool,
        max_bitrate: int,
        pcm_rate: int = _OPUS_RATE,
    ) -> None:
        if pcm_rate not in _OPUS_PCM_RATES:
            raise UnsupportedCodec(f"Opus PCM rate {pcm_rate} Hz: expected 8000, 16000 or 48000")
        self.pcm_rate = pcm_rate
        self.bitrate = max(_OPUS_MIN_BITRATE, min(settings.bitrate, max_bitrate))
        self.fec = fec
        self.dtx = dtx
        # 2.5 ms, the granule libopus conceals and recovers in, and its longest packet.
        self._step = pcm_rate // 400
        self._max_samples = pcm_rate * _MAX_PACKET_MS // 1000
        self._encoder = OpusEncoder(
            pcm_rate,
            1,
            bitrate=self.bitrate,
            complexity=settings.complexity,
            fec=fec,
            packet_loss_percent=settings.packet_loss_percent,
            dtx=dtx,
        )
        self._decoder = OpusDecoder(pcm_rate, 1)

    def encode(self, pcm: Pcm) -> bytes:
        payload = self._encoder.encode(pcm)
        return payload if len(payload) > _OPUS_DTX_BYTES or not self.dtx else b""

    def decode(self, payload: Pcm) -> bytes:
        return self._decoder.decode(payload)

    def conceal(self, samples: int) -> bytes:
        return _in_steps(samples, self._step, self._max_samples, self._decoder.conceal)

    def recover(self, next_payload: Pcm, samples: int) -> bytes | None:
        # Without LBRR data libopus would only conceal; say so, so that it is counted as such.
        if samples % self._step or samples > self._max_samples or not opus_has_fec(next_payload):
            return None
        return self._decoder.recover(next_payload, samples)

    def duration(self, payload: Pcm) -> int | None:
        return opus_packet_samples(payload)

    def packet_ms(self, ptime: int) -> int:
        # RFC 7587 7: ptime is a preference; libopus has no 30 ms frame, so the
        # nearest shorter duration it encodes is sent.
        fitting = [ms for ms in _OPUS_PACKET_MS if ms <= ptime]
        return fitting[-1] if fitting else _OPUS_PACKET_MS[0]


def _flag(params: dict[str, str], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    return value.strip().lower() in ("1", "yes", "true")


def _make_opus(params: dict[str, str], settings: OpusSettings, pcm_rate: int) -> Opus:
    max_bitrate = settings.bitrate
    cap = params.get("maxaveragebitrate", "")
    if cap.isdigit():
        max_bitrate = min(max_bitrate, int(cap))
    return Opus(
        settings,
        # RFC 7587 7.1: both default to 0 when absent.
        fec=settings.fec and _flag(params, "useinbandfec", False),
        dtx=settings.dtx and _flag(params, "usedtx", False),
        max_bitrate=max_bitrate,
        pcm_rate=pcm_rate,
    )


def make_codec(
    codec: CodecDescription, opus: OpusSettings | None = None, *, opus_rate: int = _OPUS_RATE
) -> AudioCodec:
    """A fresh codec for one leg's negotiated payload format.

    ``opus_rate`` is the PCM rate an Opus codec runs at (8000, 16000 or 48000).
    Raises :class:`UnsupportedCodec` naming the format when the pipeline has no
    codec for it (another encoding, or a clock rate that does not belong to it).
    """
    name = codec.encoding.lower()
    expected = {"pcma": 8000, "pcmu": 8000, "g722": 8000, "g729": 8000, "opus": _OPUS_RATE}
    rate = expected.get(name)
    described = f"{codec.encoding}/{codec.clock_rate}"
    if rate is None:
        raise UnsupportedCodec(
            f"No transcoder for {described}: expected PCMA, PCMU, G722, G729 or opus"
        )
    if codec.clock_rate != rate:
        raise UnsupportedCodec(f"No transcoder for {described}: {codec.encoding} runs at {rate} Hz")
    if name != "opus" and codec.channels != 1:
        raise UnsupportedCodec(f"No transcoder for {described}/{codec.channels}: mono only")
    params = parse_fmtp(codec.fmtp)
    if name in ("pcma", "pcmu"):
        return G711(name)
    if name == "g722":
        return G722()
    if name == "g729":
        return G729(annexb=_flag(params, "annexb", True))
    return _make_opus(params, opus or OpusSettings(), opus_rate)


def make_pair(
    a: CodecDescription, b: CodecDescription, opus: OpusSettings | None = None
) -> tuple[AudioCodec, AudioCodec]:
    """Codecs for the two legs of a transcoded call.

    An Opus leg runs at the other leg's PCM rate when that is lower (8 kHz
    facing G.711 or G.729, 16 kHz facing G.722), so the call needs no
    resampler; see :class:`Opus`.
    """
    rate_a = _PCM_RATES.get(a.encoding.lower(), _OPUS_RATE)
    rate_b = _PCM_RATES.get(b.encoding.lower(), _OPUS_RATE)
    return (
        make_codec(a, opus, opus_rate=min(rate_a, rate_b)),
        make_codec(b, opus, opus_rate=min(rate_a, rate_b)),
    )
