"""cffi build script (API, out-of-line mode) for the G.722 codec through spandsp.

setuptools picks it up through ``cffi_modules`` in setup.py and compiles the
extension ``gateway._native_g722`` against the system spandsp (Debian:
libspandsp-dev). Running this file directly builds the extension into
``gateway/`` without setuptools, for a quick rebuild during development.

spandsp codes and decodes G.722 but has no loss concealment for it, so the
preamble adds a small one of our own (``edgegw_g722_conceal``) and a decode
wrapper that keeps the history it needs and smooths the return from a loss.
Both run over a whole packet in one call.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent

# API mode compiles these against <spandsp.h>, so a mismatch with the
# installed library's header fails the build instead of corrupting memory.
# The state types stay opaque: spandsp allocates them (init with NULL) and
# frees them, so the struct layout of one spandsp version is never baked in.
CDEF = """
typedef struct g722_encode_state_s g722_encode_state_t;
typedef struct g722_decode_state_s g722_decode_state_t;

#define G722_SAMPLE_RATE_8000 ...
#define G722_PACKED ...

g722_encode_state_t *g722_encode_init(g722_encode_state_t *s, int rate, int options);
int g722_encode_free(g722_encode_state_t *s);
int g722_encode(g722_encode_state_t *s, uint8_t g722_data[], const int16_t amp[], int len);

g722_decode_state_t *g722_decode_init(g722_decode_state_t *s, int rate, int options);
int g722_decode_free(g722_decode_state_t *s);
int g722_decode(g722_decode_state_t *s, int16_t amp[], const uint8_t g722_data[], int len);

#define EDGEGW_G722_PERIOD ...
#define EDGEGW_G722_HOLD ...
#define EDGEGW_G722_SILENT_AFTER ...
#define EDGEGW_G722_BLEND ...

typedef struct { ...; } edgegw_g722_plc_t;

int edgegw_g722_decode(g722_decode_state_t *s, edgegw_g722_plc_t *plc,
                       const uint8_t *data, int len, int16_t *out);
void edgegw_g722_conceal(edgegw_g722_plc_t *plc, int16_t *out, int len);
"""

PREAMBLE = r"""
#include <string.h>
#include <spandsp.h>

/*
 * Loss concealment by repetition with fade-out, as a carrier SBC does it
 * cheaply for a codec without PLC of its own. At 16 kHz:
 *   - the last 20 ms of decoded audio are replayed in a loop; the loop's
 *     last 2.5 ms are cross-faded into the 2.5 ms that preceded its start,
 *     so the loop point does not click;
 *   - the first 2.5 ms of a loss cross-fade from the last decoded sample,
 *     held, into the loop, which removes the step at the loss edge;
 *   - the level stays for the first 10 ms of a loss, then falls linearly
 *     to silence at 60 ms (the limit after which G.711 Appendix I also
 *     goes silent: repeating longer sounds like a machine, not a voice);
 *   - the first 2.5 ms decoded after a loss cross-fade from the
 *     concealment that would have followed, hiding the jump of a decoder
 *     whose ADPCM state missed the lost packets.
 * All weights are integer ratios over the sample index, one pass per call.
 */
#define EDGEGW_G722_PERIOD 320
#define EDGEGW_G722_BLEND 40
#define EDGEGW_G722_HISTORY (EDGEGW_G722_PERIOD + EDGEGW_G722_BLEND)
#define EDGEGW_G722_HOLD 160
#define EDGEGW_G722_SILENT_AFTER 960

typedef struct {
    int16_t history[EDGEGW_G722_HISTORY]; /* newest sample last; zeros before the first packet */
    int16_t loop[EDGEGW_G722_PERIOD];     /* built when a loss starts */
    int16_t last;                         /* last decoded sample before the loss */
    int lost;                             /* samples concealed since the last decoded packet */
} edgegw_g722_plc_t;

static void edgegw_g722_build_loop(edgegw_g722_plc_t *plc)
{
    const int16_t *h = plc->history;
    int i;
    memcpy(plc->loop, h + EDGEGW_G722_BLEND, sizeof(plc->loop));
    /* Fade the loop's tail into what preceded its head, so that
       loop[PERIOD - 1] runs into loop[0] the way h[BLEND - 1] ran into h[BLEND]. */
    for (i = 0; i < EDGEGW_G722_BLEND; i++) {
        int tail = EDGEGW_G722_PERIOD - EDGEGW_G722_BLEND + i;
        int32_t w = i + 1;
        plc->loop[tail] = (int16_t)(((int32_t)plc->loop[tail] * (EDGEGW_G722_BLEND - w)
                                     + (int32_t)h[i] * w) / EDGEGW_G722_BLEND);
    }
    plc->last = h[EDGEGW_G722_HISTORY - 1];
}

/* Concealment sample number g (counted from the start of the loss). */
static int16_t edgegw_g722_conceal_at(const edgegw_g722_plc_t *plc, int g)
{
    int32_t v;
    if (g >= EDGEGW_G722_SILENT_AFTER)
        return 0;
    v = plc->loop[g % EDGEGW_G722_PERIOD];
    if (g < EDGEGW_G722_BLEND)
        v = ((int32_t)plc->last * (EDGEGW_G722_BLEND - g) + v * g) / EDGEGW_G722_BLEND;
    if (g >= EDGEGW_G722_HOLD)
        v = v * (EDGEGW_G722_SILENT_AFTER - g) / (EDGEGW_G722_SILENT_AFTER - EDGEGW_G722_HOLD);
    return (int16_t)v;
}

static void edgegw_g722_conceal(edgegw_g722_plc_t *plc, int16_t *out, int len)
{
    int i;
    if (plc->lost == 0)
        edgegw_g722_build_loop(plc);
    for (i = 0; i < len; i++)
        out[i] = edgegw_g722_conceal_at(plc, plc->lost + i);
    /* Saturate: past the silence point the count no longer matters. */
    plc->lost = plc->lost + len > EDGEGW_G722_SILENT_AFTER ? EDGEGW_G722_SILENT_AFTER
                                                          : plc->lost + len;
}

static void edgegw_g722_remember(edgegw_g722_plc_t *plc, const int16_t *pcm, int n)
{
    int keep;
    if (n >= EDGEGW_G722_HISTORY) {
        memcpy(plc->history, pcm + n - EDGEGW_G722_HISTORY, sizeof(plc->history));
        return;
    }
    keep = EDGEGW_G722_HISTORY - n;
    memmove(plc->history, plc->history + n, keep * sizeof(int16_t));
    memcpy(plc->history + keep, pcm, n * sizeof(int16_t));
}

static int edgegw_g722_decode(g722_decode_state_t *s, edgegw_g722_plc_t *plc,
                              const uint8_t *data, int len, int16_t *out)
{
    int n = g722_decode(s, out, data, len);
    int i;
    if (n <= 0)
        return n;
    if (plc->lost > 0) {
        int blend = n < EDGEGW_G722_BLEND ? n : EDGEGW_G722_BLEND;
        for (i = 0; i < blend; i++) {
            int32_t was = edgegw_g722_conceal_at(plc, plc->lost + i);
            out[i] = (int16_t)((was * (EDGEGW_G722_BLEND - i) + (int32_t)out[i] * i)
                               / EDGEGW_G722_BLEND);
        }
        plc->lost = 0;
    }
    edgegw_g722_remember(plc, out, n);
    return n;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_g722",
    PREAMBLE,
    libraries=["spandsp"],
    extra_compile_args=["-O2"],
)


def build_in_place() -> Path:
    """Compile under build/ and copy the extension into gateway/, where it imports.

    The abi3 file name is the one setuptools gives cffi extensions, so a
    later ``pip install -e .`` replaces this file instead of adding a second.
    """
    tmpdir = ROOT / "build" / "cffi-g722"
    built = Path(ffibuilder.compile(tmpdir=str(tmpdir), target="_native_g722.abi3.so"))
    target = ROOT / "gateway" / built.name
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
