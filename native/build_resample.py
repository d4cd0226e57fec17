"""cffi build script (API, out-of-line mode) for the speexdsp sample-rate converter.

Binds the system libspeexdsp (Debian ``libspeexdsp-dev``: header
``<speex/speex_resampler.h>``, library ``speexdsp``); no C of our own.
setuptools picks it up through ``cffi_modules`` in setup.py and compiles the
extension ``gateway._native_resample``. Running this file directly builds the
extension in place under ``gateway/`` for a checkout without a reinstall.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The ``int...`` typedefs let the compiler fill in the exact integer types of
# speexdsp_config_types.h; API mode checks every prototype against the header,
# so a mismatch fails the build instead of corrupting memory at run time.
CDEF = """
typedef int... spx_int16_t;
typedef int... spx_uint32_t;
typedef struct SpeexResamplerState_ SpeexResamplerState;

SpeexResamplerState *speex_resampler_init(spx_uint32_t nb_channels, spx_uint32_t in_rate,
                                          spx_uint32_t out_rate, int quality, int *err);
void speex_resampler_destroy(SpeexResamplerState *st);
int speex_resampler_process_int(SpeexResamplerState *st, spx_uint32_t channel_index,
                                const spx_int16_t *in, spx_uint32_t *in_len,
                                spx_int16_t *out, spx_uint32_t *out_len);
int speex_resampler_reset_mem(SpeexResamplerState *st);
int speex_resampler_skip_zeros(SpeexResamplerState *st);
int speex_resampler_get_input_latency(SpeexResamplerState *st);
int speex_resampler_get_output_latency(SpeexResamplerState *st);
const char *speex_resampler_strerror(int err);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_resample",
    "#include <speex/speex_resampler.h>",
    libraries=["speexdsp"],
    extra_compile_args=["-O2"],
)


def build_in_place() -> Path:
    """Compile the extension into gateway/ (gitignored), as an editable install does.

    The abi3 file name is the one setuptools gives cffi extensions, so a later
    ``pip install -e .`` replaces this file instead of adding a second one.
    """
    # Relative to the package directory, where setuptools builds in place.
    target = "_native_resample.abi3.so"
    built = ffibuilder.compile(tmpdir=str(PROJECT_ROOT), target=target)
    return Path(built)


if __name__ == "__main__":
    print(build_in_place())
