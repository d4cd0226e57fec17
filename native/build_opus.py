"""cffi build script (API, out-of-line mode) for the Opus codec through libopus.

setuptools picks it up through ``cffi_modules`` in setup.py and compiles the
extension ``gateway._native_opus`` against the system libopus (Debian:
libopus-dev). Running this file directly builds the extension into
``gateway/`` without setuptools, for a quick rebuild during development.

The encoder CTLs are variadic macros over ``opus_encoder_ctl``, which cffi
cannot call with checked argument types, so the preamble wraps each one the
gateway uses in a small typed function.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent

# API mode compiles these against <opus.h>, so a mismatch with the installed
# library's header fails the build instead of corrupting memory at run time.
CDEF = """
typedef int... opus_int32;
typedef short... opus_int16;
typedef struct OpusEncoder OpusEncoder;
typedef struct OpusDecoder OpusDecoder;

#define OPUS_APPLICATION_VOIP ...
#define OPUS_APPLICATION_AUDIO ...
#define OPUS_APPLICATION_RESTRICTED_LOWDELAY ...
#define OPUS_AUTO ...
#define OPUS_SIGNAL_VOICE ...
#define OPUS_SIGNAL_MUSIC ...

int opus_encoder_get_size(int channels);
int opus_encoder_init(OpusEncoder *st, opus_int32 Fs, int channels, int application);
opus_int32 opus_encode(OpusEncoder *st, const opus_int16 *pcm, int frame_size,
                       unsigned char *data, opus_int32 max_data_bytes);

int opus_decoder_get_size(int channels);
int opus_decoder_init(OpusDecoder *st, opus_int32 Fs, int channels);
int opus_decode(OpusDecoder *st, const unsigned char *data, opus_int32 len,
                opus_int16 *pcm, int frame_size, int decode_fec);

const char *opus_strerror(int error);
const char *opus_get_version_string(void);

int edgegw_opus_set_bitrate(OpusEncoder *st, opus_int32 bitrate);
int edgegw_opus_set_complexity(OpusEncoder *st, int complexity);
int edgegw_opus_set_inband_fec(OpusEncoder *st, int enabled);
int edgegw_opus_set_packet_loss_perc(OpusEncoder *st, int percent);
int edgegw_opus_set_dtx(OpusEncoder *st, int enabled);
int edgegw_opus_set_signal(OpusEncoder *st, int signal);
"""

PREAMBLE = """
#include <opus.h>

/* Typed wrappers for the variadic CTL macros; each returns an OPUS_* code. */
static int edgegw_opus_set_bitrate(OpusEncoder *st, opus_int32 bitrate)
{ return opus_encoder_ctl(st, OPUS_SET_BITRATE(bitrate)); }
static int edgegw_opus_set_complexity(OpusEncoder *st, int complexity)
{ return opus_encoder_ctl(st, OPUS_SET_COMPLEXITY(complexity)); }
static int edgegw_opus_set_inband_fec(OpusEncoder *st, int enabled)
{ return opus_encoder_ctl(st, OPUS_SET_INBAND_FEC(enabled)); }
static int edgegw_opus_set_packet_loss_perc(OpusEncoder *st, int percent)
{ return opus_encoder_ctl(st, OPUS_SET_PACKET_LOSS_PERC(percent)); }
static int edgegw_opus_set_dtx(OpusEncoder *st, int enabled)
{ return opus_encoder_ctl(st, OPUS_SET_DTX(enabled)); }
static int edgegw_opus_set_signal(OpusEncoder *st, int signal)
{ return opus_encoder_ctl(st, OPUS_SET_SIGNAL(signal)); }
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_opus",
    PREAMBLE,
    libraries=["opus"],
    include_dirs=["/usr/include/opus"],
    extra_compile_args=["-O2"],
)


def build_in_place() -> Path:
    """Compile under build/ and copy the extension into gateway/, where it imports."""
    tmpdir = ROOT / "build" / "cffi-opus"
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), verbose=False))
    target = ROOT / "gateway" / built.name
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
