"""Hearing fax and modem tones on a transcoded call (sans-IO).

A transcoded call decodes, conceals and re-encodes its audio; a fax or modem
signal does not survive that (Opus is not a voiceband data codec, and a jitter
buffer that stretches or conceals frames breaks the modem's timing). So each
direction of a transcoded call listens to its decoded audio for the signals
that announce one: the calling tone CNG (1100 Hz, T.30), the answer tone
CED/ANS (2100 Hz, ITU-T V.25) and its V.8 variants, and the V.21 preamble of a
fax answering without CED (:class:`~gateway.media.tones.FaxToneDetector`).
The first one heard is reported up once; the call then moves to G.711
pass-through (see :mod:`gateway.calls.b2bua`).

:class:`FaxListener` is a :data:`~gateway.media.transcode.PcmTap`: the
transcoder hands it every decoded frame at the source codec's PCM rate. The
detector runs at 8 kHz only, so a wideband leg's frames are resampled (a copy;
the audio that goes on is untouched). One native call per frame for the
detector, and one for the resampler when there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.media.resample import Resampler
from gateway.media.tones import SAMPLE_RATE, FaxTone, FaxToneDetector

__all__ = ["FaxListener"]

# The detector's buffer: 120 ms at 8 kHz, the longest frame a codec gives.
_DETECTOR_FRAME: Final = 960


class FaxListener:
    """A PCM tap that reports the first fax or modem tone of one direction.

    ``pcm_rate`` is the rate of the frames it will be given (the decoder's);
    ``report`` is called once, with the tone, from inside the tap: it must not
    block or switch the media path itself (it runs in the middle of a frame).
    After the report, or :meth:`stop`, the listener goes quiet and costs
    nothing per frame.
    """

    __slots__ = ("_chunk", "_detector", "_report", "_resampler", "_stopped", "heard")

    def __init__(self, pcm_rate: int, report: Callable[[FaxTone], None]) -> None:
        self._detector = FaxToneDetector(max_frame_samples=_DETECTOR_FRAME)
        self._resampler: Resampler | None = None
        # Bytes of input per detector call: a frame longer than the detector's
        # buffer (after resampling) is fed in pieces.
        self._chunk = 2 * _DETECTOR_FRAME * pcm_rate // SAMPLE_RATE
        if pcm_rate != SAMPLE_RATE:
            self._resampler = Resampler(pcm_rate, SAMPLE_RATE, max_input_samples=self._chunk // 2)
        self._report = report
        self._stopped = False
        self.heard: FaxTone | None = None

    def stop(self) -> None:
        """Listen no more (the call has heard its fax already, on the other direction)."""
        self._stopped = True

    def __call__(self, pcm: bytes, timestamp: int) -> bytes:
        if self._stopped:
            return pcm
        chunk = self._chunk
        for start in range(0, len(pcm), chunk):
            piece = pcm[start : start + chunk] if len(pcm) > chunk else pcm
            if self._resampler is not None:
                piece = self._resampler.process(piece)
            tone = self._detector.feed(piece)
            if tone is not None:
                self.heard = tone
                self._stopped = True
                self._report(tone)
                break
        return pcm
