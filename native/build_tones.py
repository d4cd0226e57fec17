"""cffi build script (API, out-of-line mode) for spandsp's tone and PLC blocks.

Binds the system spandsp (Debian ``libspandsp-dev`` 0.0.6: header
``<spandsp.h>``, library ``spandsp``) for the signal-processing pieces the
transcoding path uses: the DTMF receiver and a dual-tone generator, the
modem connect tone receivers (fax CNG, CED/ANS and V.21 preamble), the
packet loss concealer and the noise generator. setuptools picks it up
through ``cffi_modules`` in setup.py and compiles ``gateway._native_tones``;
running this file directly builds the extension in place under ``gateway/``.

spandsp reports tone changes through C callbacks, and calling back into
Python for them would cost a Python call inside the sample loop. The
preamble therefore has small C receivers whose callbacks write the reports
into an array in a struct; Python reads the array after one native call per
frame. It also fills a frame of noise in C, since spandsp's ``noise()``
gives one sample per call, and sums a frame's energy for level measurement.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cffi import FFI

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The spandsp types are opaque here: every state is allocated by spandsp's own
# *_init(NULL, ...) and released by its *_free(). API mode checks every
# prototype against <spandsp.h>, so a mismatch with the installed library
# fails the build instead of corrupting memory at run time.
CDEF = """
typedef struct dtmf_rx_state_s dtmf_rx_state_t;
typedef struct modem_connect_tones_rx_state_s modem_connect_tones_rx_state_t;
typedef struct tone_gen_state_s tone_gen_state_t;
typedef struct noise_state_s noise_state_t;
typedef struct { ...; } plc_state_t;

#define MODEM_CONNECT_TONES_NONE ...
#define MODEM_CONNECT_TONES_FAX_CNG ...
#define MODEM_CONNECT_TONES_ANS ...
#define MODEM_CONNECT_TONES_ANS_PR ...
#define MODEM_CONNECT_TONES_ANSAM ...
#define MODEM_CONNECT_TONES_ANSAM_PR ...
#define MODEM_CONNECT_TONES_FAX_PREAMBLE ...
#define MODEM_CONNECT_TONES_FAX_CED_OR_PREAMBLE ...
#define NOISE_CLASS_AWGN ...
#define NOISE_CLASS_HOTH ...

#define EDGEGW_DTMF_BLOCK ...
#define EDGEGW_MAX_REPORTS ...

typedef struct {
    int code;
    int level;
    long long position;
} edgegw_tone_report_t;

typedef struct {
    long long fed;
    int count;
    int lost;
    edgegw_tone_report_t reports[...];
    ...;
} edgegw_dtmf_rx_t;

typedef struct {
    long long fed;
    int count;
    int lost;
    edgegw_tone_report_t reports[...];
    ...;
} edgegw_fax_rx_t;

void dtmf_rx_parms(dtmf_rx_state_t *s, int filter_dialtone, int twist, int reverse_twist,
                   int threshold);

edgegw_dtmf_rx_t *edgegw_dtmf_rx_new(void);
int edgegw_dtmf_rx_feed(edgegw_dtmf_rx_t *d, const int16_t *amp, int len);
int edgegw_dtmf_rx_configure(edgegw_dtmf_rx_t *d, int filter_dialtone, int twist,
                             int reverse_twist, int threshold);
void edgegw_dtmf_rx_free(edgegw_dtmf_rx_t *d);

edgegw_fax_rx_t *edgegw_fax_rx_new(void);
int edgegw_fax_rx_feed(edgegw_fax_rx_t *f, const int16_t *amp, int len);
void edgegw_fax_rx_free(edgegw_fax_rx_t *f);
const char *modem_connect_tone_to_str(int tone);

tone_gen_state_t *edgegw_tone_new(void);
int edgegw_tone_start(tone_gen_state_t *s, int f1, int l1, int f2, int l2);
int tone_gen(tone_gen_state_t *s, int16_t amp[], int max_samples);
int tone_gen_free(tone_gen_state_t *s);

plc_state_t *plc_init(plc_state_t *s);
int plc_rx(plc_state_t *s, int16_t amp[], int len);
int plc_fillin(plc_state_t *s, int16_t amp[], int len);
int plc_free(plc_state_t *s);

noise_state_t *noise_init_dbm0(noise_state_t *s, int seed, float level, int class_of_noise,
                               int quality);
noise_state_t *noise_init_dbov(noise_state_t *s, int seed, float level, int class_of_noise,
                               int quality);
int noise_free(noise_state_t *s);
void edgegw_noise_fill(noise_state_t *s, int16_t *amp, int len);
double edgegw_sum_squares(const int16_t *amp, int len);
"""

PREAMBLE = r"""
#include <stdlib.h>
#include <spandsp.h>

/* spandsp's DTMF receiver analyses blocks of 102 samples and reports a
   change only at the end of a block. */
#define EDGEGW_DTMF_BLOCK 102
/* One DTMF report per block at most, so this bounds a frame to about 3 s;
   fax tone changes are far rarer. */
#define EDGEGW_MAX_REPORTS 256

typedef struct {
    int code;
    int level;
    long long position;
} edgegw_tone_report_t;

typedef struct {
    long long fed;
    int count;
    int lost;
    edgegw_tone_report_t reports[EDGEGW_MAX_REPORTS];
    dtmf_rx_state_t *rx;
    long long block_end;
} edgegw_dtmf_rx_t;

typedef struct {
    long long fed;
    int count;
    int lost;
    edgegw_tone_report_t reports[EDGEGW_MAX_REPORTS];
    modem_connect_tones_rx_state_t *cng;
    modem_connect_tones_rx_state_t *ced;
    long long frame_end;
} edgegw_fax_rx_t;

static void edgegw_push(edgegw_tone_report_t *reports, int *count, int *lost,
                        int code, int level, long long position)
{
    if (*count >= EDGEGW_MAX_REPORTS) {
        (*lost)++;
        return;
    }
    reports[*count].code = code;
    reports[*count].level = level;
    reports[*count].position = position;
    (*count)++;
}

static void edgegw_dtmf_report(void *user_data, int code, int level, int delay)
{
    edgegw_dtmf_rx_t *d = (edgegw_dtmf_rx_t *) user_data;
    (void) delay;
    edgegw_push(d->reports, &d->count, &d->lost, code, level, d->block_end);
}

static edgegw_dtmf_rx_t *edgegw_dtmf_rx_new(void)
{
    edgegw_dtmf_rx_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->rx = dtmf_rx_init(NULL, NULL, NULL);
    if (d->rx == NULL) {
        free(d);
        return NULL;
    }
    dtmf_rx_set_realtime_callback(d->rx, edgegw_dtmf_report, d);
    return d;
}

/* Feeds the receiver in pieces that end on its block boundaries, so that a
   report made during a piece belongs to the block ending with that piece and
   carries an exact stream position. */
static int edgegw_dtmf_rx_feed(edgegw_dtmf_rx_t *d, const int16_t *amp, int len)
{
    int done = 0;
    d->count = 0;
    d->lost = 0;
    while (done < len) {
        int room = EDGEGW_DTMF_BLOCK - (int) (d->fed % EDGEGW_DTMF_BLOCK);
        int piece = (len - done < room) ? len - done : room;
        d->block_end = d->fed + piece;
        dtmf_rx(d->rx, amp + done, piece);
        d->fed += piece;
        done += piece;
    }
    return d->count;
}

static int edgegw_dtmf_rx_configure(edgegw_dtmf_rx_t *d, int filter_dialtone, int twist,
                                    int reverse_twist, int threshold)
{
    dtmf_rx_parms(d->rx, filter_dialtone, twist, reverse_twist, threshold);
    return 0;
}

static void edgegw_dtmf_rx_free(edgegw_dtmf_rx_t *d)
{
    if (d == NULL)
        return;
    dtmf_rx_free(d->rx);
    free(d);
}

static void edgegw_fax_report(void *user_data, int code, int level, int delay)
{
    edgegw_fax_rx_t *f = (edgegw_fax_rx_t *) user_data;
    (void) delay;
    edgegw_push(f->reports, &f->count, &f->lost, code, level, f->frame_end);
}

static void edgegw_fax_rx_free(edgegw_fax_rx_t *f)
{
    if (f == NULL)
        return;
    if (f->cng != NULL)
        modem_connect_tones_rx_free(f->cng);
    if (f->ced != NULL)
        modem_connect_tones_rx_free(f->ced);
    free(f);
}

/* One receiver listens for the calling tone (CNG, 1100 Hz) and one for the
   answer side: CED/ANS at 2100 Hz, with or without phase reversals and
   amplitude modulation, or the V.21 preamble of fax machines that skip CED. */
static edgegw_fax_rx_t *edgegw_fax_rx_new(void)
{
    edgegw_fax_rx_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->cng = modem_connect_tones_rx_init(NULL, MODEM_CONNECT_TONES_FAX_CNG,
                                         edgegw_fax_report, f);
    f->ced = modem_connect_tones_rx_init(NULL, MODEM_CONNECT_TONES_FAX_CED_OR_PREAMBLE,
                                         edgegw_fax_report, f);
    if (f->cng == NULL || f->ced == NULL) {
        edgegw_fax_rx_free(f);
        return NULL;
    }
    return f;
}

static int edgegw_fax_rx_feed(edgegw_fax_rx_t *f, const int16_t *amp, int len)
{
    f->count = 0;
    f->lost = 0;
    f->frame_end = f->fed + len;
    modem_connect_tones_rx(f->cng, amp, len);
    modem_connect_tones_rx(f->ced, amp, len);
    f->fed += len;
    return f->count;
}

/* A repeating one-second section with no silent section is a continuous
   tone whose phase carries on across the repeats. */
static tone_gen_state_t *edgegw_tone_new(void)
{
    tone_gen_state_t *s;
    tone_gen_descriptor_t *desc = tone_gen_descriptor_init(NULL, 0, 0, 0, 0, 1000, 0, 0, 0, 1);
    if (desc == NULL)
        return NULL;
    s = tone_gen_init(NULL, desc);
    tone_gen_descriptor_free(desc);
    return s;
}

static int edgegw_tone_start(tone_gen_state_t *s, int f1, int l1, int f2, int l2)
{
    tone_gen_descriptor_t *desc = tone_gen_descriptor_init(NULL, f1, l1, f2, l2, 1000, 0, 0, 0, 1);
    if (desc == NULL)
        return -1;
    tone_gen_init(s, desc);
    tone_gen_descriptor_free(desc);
    return 0;
}

static void edgegw_noise_fill(noise_state_t *s, int16_t *amp, int len)
{
    int i;
    for (i = 0; i < len; i++)
        amp[i] = noise(s);
}

/* The energy of a frame for level measurement (RFC 3389 noise level, the
   silence detector), summed in C rather than per sample in Python. */
static double edgegw_sum_squares(const int16_t *amp, int len)
{
    double sum = 0.0;
    int i;
    for (i = 0; i < len; i++)
        sum += (double) amp[i] * (double) amp[i];
    return sum;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "gateway._native_tones",
    PREAMBLE,
    libraries=["spandsp"],
    extra_compile_args=["-O2"],
)


def build_in_place() -> Path:
    """Compile under build/ and copy the extension into gateway/, where it imports."""
    tmpdir = PROJECT_ROOT / "build" / "cffi-tones"
    # The abi3 name is the one setuptools gives cffi extensions, so a later
    # ``pip install -e .`` replaces this file instead of adding a second one.
    built = Path(
        ffibuilder.compile(tmpdir=str(tmpdir), target="_native_tones.abi3.so", verbose=False)
    )
    target = PROJECT_ROOT / "gateway" / built.name
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
