"""G.729 Annex A/B encoder and decoder over the native cffi binding to bcg729.

Implements the codec side of the G729 RTP payload format (RFC 3551 4.5.6):
8 kHz audio in 10 ms frames of 80 samples, each coded into 10 octets
(8 kbit/s). bcg729 encodes with the reduced-complexity search of Annex A and
decodes any G.729 or G.729A stream. With Annex B (the encoder's ``vad``
flag; SDP ``annexb=yes``, the default of the media type in RFC 4856), a
frame the voice activity detector finds silent is sent as a 2-octet SID
frame (noise parameters) or not at all.

Payload layout (RFC 3551 4.5.6): zero or more 10-octet speech frames, then at
most one 2-octet SID frame, which is therefore always last; a receiver tells
them apart by the payload length. The RTP timestamp (8000 Hz, the sample
rate) is that of the first frame carried.

bcg729 decides per 10 ms frame, so a packet of several frames can come out
of the encoder as, say, SID then speech, which the layout cannot carry in
one payload. Two ways out are offered:

* :meth:`G729Encoder.encode` returns one valid payload for the packet: all
  its speech frames, then its last SID if no speech follows it. A SID that
  speech follows is dropped (it only updated the noise the receiver plays
  until that speech), and untransmitted frames are left out; the payload's
  frames then start at the packet's timestamp even when the first of them
  was really a frame later, a shift of at most (frames - 1) x 10 ms that
  happens only at the edge of a talk spurt.
* :meth:`G729Encoder.encode_packets` keeps timing exact: it splits the
  packet wherever a frame is not sent or after a SID, and gives each piece
  the sample offset of its first frame for its RTP timestamp.

Decoding follows Annex B as bcg729 implements it (G.729 Annex B): a lost frame
(:meth:`G729Decoder.conceal`, the erasure flag) is concealed from the last
speech frame (repeated pitch with fading gains, G.729 4.4) when the last
frame was speech, and is comfort noise when it was a SID;
:meth:`G729Decoder.comfort_noise` fills untransmitted frames of a DTX pause
with noise shaped by the last SID (its gain smoothed 7/8 old to 1/8 new, a
fresh random excitation each frame). A receiver that cannot tell a lost
frame from an untransmitted one may call ``conceal`` for both: after a SID
it gives the same noise as ``comfort_noise``. bcg729 makes the same choice
and so does not rebuild lost SIDs.

Linear PCM is 16-bit signed mono samples at 8 kHz in host byte order,
little-endian on every target the gateway ships for. Each encode, decode,
conceal and comfort_noise is one native call for the whole packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gateway._native_g729 import ffi, lib
from gateway.media.g711 import CodecError

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "MAX_FRAMES",
    "MAX_PACKET_MS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES",
    "RTP_CLOCK_RATE",
    "SAMPLE_RATE",
    "SID_BYTES",
    "G729Decoder",
    "G729Encoder",
    "G729Error",
    "G729Packet",
    "bcg729_version",
]

SAMPLE_RATE: Final = 8000
RTP_CLOCK_RATE: Final = 8000
FRAME_SAMPLES: Final[int] = lib.EDGEGW_G729_FRAME_SAMPLES
FRAME_BYTES: Final[int] = lib.EDGEGW_G729_FRAME_BYTES
SID_BYTES: Final[int] = lib.EDGEGW_G729_SID_BYTES

# The longest packet one call takes, as for Opus and G.722: longer than any
# ptime a carrier sends.
MAX_PACKET_MS: Final = 120
MAX_FRAMES: Final = MAX_PACKET_MS // 10
MAX_SAMPLES: Final = MAX_FRAMES * FRAME_SAMPLES
# Twelve speech frames; eleven and a SID is shorter.
MAX_PAYLOAD_BYTES: Final = MAX_FRAMES * FRAME_BYTES


class G729Error(CodecError):
    """Input G.729 cannot take (wrong length, too large, empty) or a bcg729 failure."""


@dataclass(frozen=True, slots=True)
class G729Packet:
    """One RTP payload of :meth:`G729Encoder.encode_packets`.

    ``offset`` is where its first frame starts, in samples (= RTP timestamp
    units) after the start of the PCM that was encoded.
    """

    offset: int
    payload: bytes


def bcg729_version() -> str:
    """Version of the bcg729 headers the binding was built against, e.g. ``"1.1.1"``."""
    number: int = lib.BCG729_VERSION_NUMBER
    return f"{number >> 16}.{(number >> 8) & 0xFF}.{number & 0xFF}"


def _size(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _created(state: Any, what: str, close: Any) -> Any:
    """bcg729 channel state, closed with its Python owner."""
    if state == ffi.NULL:
        raise G729Error(f"{what} failed: bcg729 returned NULL (out of memory)")
    return ffi.gc(state, close)


def _check_samples(samples: int, what: str) -> int:
    """Frames in a request for ``samples`` samples of generated audio."""
    frames, rest = divmod(samples, FRAME_SAMPLES)
    if rest or not 0 < frames <= MAX_FRAMES:
        raise G729Error(
            f"{what} of {samples} samples is not a multiple of {FRAME_SAMPLES} (10 ms) "
            f"in 1..{MAX_SAMPLES}"
        )
    return frames


class G729Encoder:
    """Encoder for one G.729A stream (one per call leg), with Annex B VAD/DTX if ``vad``.

    Buffers for the longest packet are allocated once; an instance is
    therefore not safe to share between threads, which the media path never
    does.
    """

    __slots__ = (
        "_lengths_buf",
        "_lengths_bytes",
        "_out_buf",
        "_out_bytes",
        "_pcm_buf",
        "_pcm_bytes",
        "_st",
        "vad",
    )

    def __init__(self, vad: bool = False) -> None:
        self.vad: Final = vad
        self._st = _created(
            lib.initBcg729EncoderChannel(int(vad)),
            f"initBcg729EncoderChannel(enableVAD={int(vad)})",
            lib.closeBcg729EncoderChannel,
        )
        self._pcm_buf = ffi.new("int16_t[]", MAX_SAMPLES)
        self._out_buf = ffi.new("uint8_t[]", MAX_PAYLOAD_BYTES)
        self._lengths_buf = ffi.new("uint8_t[]", MAX_FRAMES)
        # Byte views made once: slice assignment and slicing are cheaper per
        # packet than ffi.memmove / ffi.buffer.
        self._pcm_bytes = ffi.buffer(self._pcm_buf)
        self._out_bytes = ffi.buffer(self._out_buf)
        self._lengths_bytes = ffi.buffer(self._lengths_buf)

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode whole 10 ms frames of 8 kHz PCM to one G729 payload.

        Without VAD: 10 octets per frame. With VAD the payload may be shorter
        (speech frames and a trailing SID) or empty (nothing to send); see
        the module docstring for a SID that speech follows.
        """
        frames, total = self._run(pcm)
        if total == frames * FRAME_BYTES:
            payload: bytes = self._out_bytes[:total]
            return payload
        speech: list[bytes] = []
        sid = b""
        for start, length in self._frames(frames):
            chunk = self._out_bytes[start : start + length]
            if length == FRAME_BYTES:
                speech.append(chunk)
                sid = b""
            elif length == SID_BYTES:
                sid = chunk
        speech.append(sid)
        return b"".join(speech)

    def encode_packets(self, pcm: bytes | bytearray | memoryview) -> list[G729Packet]:
        """Encode whole 10 ms frames of 8 kHz PCM to payloads with exact timing.

        One packet unless VAD left frames out or put a SID before speech:
        then one per run of sent frames, each ending at most at one SID.
        An empty list means nothing to send.
        """
        frames, total = self._run(pcm)
        if total == frames * FRAME_BYTES:
            return [G729Packet(0, self._out_bytes[:total])] if total else []
        packets: list[G729Packet] = []
        run: tuple[int, int] | None = None  # (first frame, its start in the output)
        for index, (start, length) in enumerate(self._frames(frames)):
            if length == 0:
                # An unsent frame ends the payload before it.
                if run is not None:
                    packets.append(self._packet(run, start))
                run = None
                continue
            if run is None:
                run = (index, start)
            if length == SID_BYTES:
                # Nothing may follow a SID in its payload.
                packets.append(self._packet(run, start + length))
                run = None
        if run is not None:
            packets.append(self._packet(run, total))
        return packets

    def _packet(self, run: tuple[int, int], end: int) -> G729Packet:
        first_frame, start = run
        return G729Packet(first_frame * FRAME_SAMPLES, self._out_bytes[start:end])

    def _frames(self, frames: int) -> list[tuple[int, int]]:
        """(start in the output buffer, length) of each frame of the last run."""
        spans: list[tuple[int, int]] = []
        start = 0
        for length in self._lengths_bytes[:frames]:
            spans.append((start, length))
            start += length
        return spans

    def _run(self, pcm: bytes | bytearray | memoryview) -> tuple[int, int]:
        size = _size(pcm)
        if size % 2:
            raise G729Error(f"PCM length {size} is odd: samples are 2 bytes each")
        samples = size // 2
        frames, rest = divmod(samples, FRAME_SAMPLES)
        if rest:
            raise G729Error(
                f"PCM frame of {samples} samples is not a multiple of {FRAME_SAMPLES} (10 ms)"
            )
        if frames > MAX_FRAMES:
            raise G729Error(
                f"PCM frame of {samples} samples exceeds the {MAX_PACKET_MS} ms maximum "
                f"of {MAX_SAMPLES} at {SAMPLE_RATE} Hz"
            )
        self._pcm_bytes[:size] = pcm
        total: int = lib.edgegw_g729_encode(
            self._st, self._pcm_buf, frames, self._out_buf, self._lengths_buf
        )
        return frames, total


class G729Decoder:
    """Decoder for one G.729/G.729A stream (one per call leg), with Annex B CNG.

    The output buffer holds the longest packet and is allocated once; an
    instance is not safe to share between threads.
    """

    __slots__ = ("_code_buf", "_code_bytes", "_pcm_buf", "_pcm_bytes", "_st")

    def __init__(self) -> None:
        self._st = _created(
            lib.initBcg729DecoderChannel(),
            "initBcg729DecoderChannel()",
            lib.closeBcg729DecoderChannel,
        )
        self._code_buf = ffi.new("uint8_t[]", MAX_PAYLOAD_BYTES)
        self._pcm_buf = ffi.new("int16_t[]", MAX_SAMPLES)
        self._code_bytes = ffi.buffer(self._code_buf)
        self._pcm_bytes = ffi.buffer(self._pcm_buf)

    def decode(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Decode one G729 payload (10-octet frames, optionally a final 2-octet SID)."""
        size = _size(payload)
        if size == 0:
            raise G729Error(
                "Empty G729 payload: use conceal() for a lost packet "
                "or comfort_noise() for an untransmitted one"
            )
        speech, rest = divmod(size, FRAME_BYTES)
        if rest not in (0, SID_BYTES):
            raise G729Error(
                f"G729 payload of {size} bytes is not 10-byte frames with at most one "
                "2-byte SID after them (RFC 3551 4.5.6)"
            )
        sid = int(rest == SID_BYTES)
        if speech + sid > MAX_FRAMES:
            raise G729Error(
                f"G729 payload of {speech + sid} frames exceeds the {MAX_PACKET_MS} ms "
                f"maximum of {MAX_FRAMES}"
            )
        self._code_bytes[:size] = payload
        decoded = lib.edgegw_g729_decode(self._st, self._code_buf, speech, sid, self._pcm_buf)
        return self._pcm(decoded)

    def conceal(self, samples: int) -> bytes:
        """PCM for ``samples`` (a multiple of 80) of lost frames, by frame erasure.

        After speech this is G.729's concealment; after a SID, comfort noise.
        """
        frames = _check_samples(samples, "Lost frame")
        return self._pcm(lib.edgegw_g729_conceal(self._st, frames, self._pcm_buf))

    def comfort_noise(self, samples: int) -> bytes:
        """PCM for ``samples`` (a multiple of 80) of untransmitted frames after a SID."""
        frames = _check_samples(samples, "Comfort noise")
        return self._pcm(lib.edgegw_g729_comfort_noise(self._st, frames, self._pcm_buf))

    def _pcm(self, samples: int) -> bytes:
        pcm: bytes = self._pcm_bytes[: 2 * samples]
        return pcm
