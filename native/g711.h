/*
 * G.711 (ITU-T Recommendation G.711, 11/1988) A-law and mu-law companding of
 * 16-bit linear PCM, one whole frame per call.
 *
 * Linear samples are 16-bit two's complement. A-law works on the top 13 bits
 * and mu-law on the top 14 bits, as the Recommendation defines them; the
 * low bits are dropped by truncation toward minus infinity, so results equal
 * the classic Sun reference coder (and Python's audioop) for every input.
 *
 * Every function accepts n == 0. The conversions between laws may run in
 * place (in == out).
 */
#ifndef EDGEGW_G711_H
#define EDGEGW_G711_H

#include <stddef.h>
#include <stdint.h>

void alaw_encode(const int16_t *pcm, uint8_t *out, size_t n);
void alaw_decode(const uint8_t *in, int16_t *pcm, size_t n);
void ulaw_encode(const int16_t *pcm, uint8_t *out, size_t n);
void ulaw_decode(const uint8_t *in, int16_t *pcm, size_t n);
void alaw_to_ulaw(const uint8_t *in, uint8_t *out, size_t n);
void ulaw_to_alaw(const uint8_t *in, uint8_t *out, size_t n);

#endif
