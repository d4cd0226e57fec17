"""cffi build script (API, out-of-line mode) for G.729 Annex A/B through bcg729.

setuptools picks it up through ``cffi_modules`` in setup.py and compiles the
extension ``gateway._native_g729`` against the system bcg729 (Debian:
libbcg729-dev). Running this file directly builds the extension into
``gateway/`` without setuptools, for a quick rebuild during development.

bcg729 works on one 10 ms frame per call, so the preamble adds the loops
that run a whole RTP packet (every frame of it) in one call from Python.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent

# API mode compiles these against the bcg729 headers, so a mismatch with the
# installed library fails the build instead of corrupting memory at run time.
CDEF = """
typedef struct bcg729EncoderChannelContextStruct_struct bcg729EncoderChannelContextStruct;
typedef struct bcg729DecoderChannelContextStruct_struct bcg729DecoderChannelContextStruct;

#define BCG729_VERSION_NUMBER ...

bcg729EncoderChannelContextStruct *initBcg729EncoderChannel(uint8_t enableVAD);
void closeBcg729EncoderChannel(bcg729EncoderChannelContextStruct *encoderChannelContext);
bcg729DecoderChannelContextStruct *initBcg729DecoderChannel(void);
void closeBcg729DecoderChannel(bcg729DecoderChannelContextStruct *decoderChannelContext);

#define EDGEGW_G729_FRAME_SAMPLES ...
#define EDGEGW_G729_FRAME_BYTES ...
#define EDGEGW_G729_SID_BYTES ...

int edgegw_g729_encode(bcg729EncoderChannelContextStruct *enc, const int16_t *pcm,
                       int frames, uint8_t *out, uint8_t *lengths);
int edgegw_g729_decode(bcg729DecoderChannelContextStruct *dec, const uint8_t *payload,
                       int speech_frames, int sid, int16_t *out);
int edgegw_g729_conceal(bcg729DecoderChannelContextStruct *dec, int frames, int16_t *out);
int edgegw_g729_comfort_noise(bcg729DecoderChannelContextStruct *dec, int frames,
                              int16_t *out);
"""

PREAMBLE = r"""
#include <stddef.h>
#include <bcg729/encoder.h>
#include <bcg729/decoder.h>

#define EDGEGW_G729_FRAME_SAMPLES 80 /* 10 ms at 8 kHz */
#define EDGEGW_G729_FRAME_BYTES 10   /* 80 bits of speech parameters */
#define EDGEGW_G729_SID_BYTES 2      /* Annex B SID: 15 bits of noise parameters */

/* Encode `frames` 10 ms frames. Each frame's bits go to `out` right after
   the previous frame's, and its length to lengths[i]: 10 (speech), 2 (SID)
   or 0 (not transmitted; only with VAD). Returns the bytes written. */
static int edgegw_g729_encode(bcg729EncoderChannelContextStruct *enc, const int16_t *pcm,
                              int frames, uint8_t *out, uint8_t *lengths)
{
    int total = 0;
    int i;
    for (i = 0; i < frames; i++) {
        uint8_t length = 0;
        bcg729Encoder(enc, pcm + i * EDGEGW_G729_FRAME_SAMPLES, out + total, &length);
        lengths[i] = length;
        total += length;
    }
    return total;
}

/* Decode one RFC 3551 4.5.6 payload: `speech_frames` frames of 10 bytes,
   then one 2-byte SID when `sid` is set. Returns the samples written. */
static int edgegw_g729_decode(bcg729DecoderChannelContextStruct *dec, const uint8_t *payload,
                              int speech_frames, int sid, int16_t *out)
{
    int i;
    for (i = 0; i < speech_frames; i++)
        bcg729Decoder(dec, payload + i * EDGEGW_G729_FRAME_BYTES, EDGEGW_G729_FRAME_BYTES,
                      0, 0, 0, out + i * EDGEGW_G729_FRAME_SAMPLES);
    if (sid)
        bcg729Decoder(dec, payload + speech_frames * EDGEGW_G729_FRAME_BYTES,
                      EDGEGW_G729_SID_BYTES, 0, 1, 0,
                      out + speech_frames * EDGEGW_G729_FRAME_SAMPLES);
    return (speech_frames + (sid ? 1 : 0)) * EDGEGW_G729_FRAME_SAMPLES;
}

/* Lost frames: the erasure flag. bcg729 follows G.729 Annex B here: after a
   speech frame it conceals (4.4: repeated pitch, fading gains); after a SID
   it goes on with comfort noise. */
static int edgegw_g729_conceal(bcg729DecoderChannelContextStruct *dec, int frames, int16_t *out)
{
    int i;
    for (i = 0; i < frames; i++)
        bcg729Decoder(dec, NULL, 0, 1, 0, 0, out + i * EDGEGW_G729_FRAME_SAMPLES);
    return frames * EDGEGW_G729_FRAME_SAMPLES;
}

/* Untransmitted frames of a DTX pause: a SID frame without bits, which
   bcg729 reads as "keep the last SID's noise" (smoothed gain, fresh random
   excitation). */
static int edgegw_g729_comfort_noise(bcg729DecoderChannelContextStruct *dec, int frames,
                                     int16_t *out)
{
    int i;
    for (i = 0; i < frames; i++)
        bcg729Decoder(dec, NULL, 0, 0, 1, 0, out + i * EDGEGW_G729_FRAME_SAMPLES);
    return frames * EDGEGW_G729_FRAME_SAMPLES;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_g729",
    PREAMBLE,
    libraries=["bcg729"],
    extra_compile_args=["-O2"],
)


def build_in_place() -> Path:
    """Compile under build/ and copy the extension into gateway/, where it imports.

    The abi3 file name is the one setuptools gives cffi extensions, so a
    later ``pip install -e .`` replaces this file instead of adding a second.
    """
    tmpdir = ROOT / "build" / "cffi-g729"
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), target="_native_g729.abi3.so"))
    target = ROOT / "gateway" / built.name
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
