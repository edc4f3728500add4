/* kernels/nvfp4_tables.h — the NVFP4 number tables every kernel reads, defined once.
 *
 * Values are those of shared/docs/NVFP4.md (E2M1 and E4M3 "fn" as the OCP Microscaling
 * Formats spec v1.0 defines them). Internal to kernels/; each
 * translation unit gets its own copy of the static tables (a few dozen bytes).
 */
#ifndef MQ_NVFP4_TABLES_H
#define MQ_NVFP4_TABLES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* E2M1 magnitudes by code bits 0..2 (bit 3 is the sign). */
static const float nvfp4_e2m1_value[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };

/* Twice the signed E2M1 value of each 4-bit code, an integer: the signed operand of the
 * integer route (2w in int8; products of two are exact multiples of 1/4 once halved). */
static const int8_t nvfp4_e2m1_twice[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

/* 2·value + 12 of each code, in 0..24: the unsigned operand of vpdpbusd / vpmaddubsw
 * (NVFP4.md's integer route; the +12 bias is removed by subtracting 12·Σ2w per block). */
#define NVFP4_BIAS 12
static const uint8_t nvfp4_e2m1_biased[16] = { 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0 };

/* E4M3 ("fn") byte -> FP32 by bit arithmetic, equal to mq_e4m3_to_f32 (the definition in
 * ref.c) for every code, bit for bit. Normal codes (exponent field >= 1): shift the 7
 * magnitude bits into FP32's exponent/mantissa position and rebias the exponent by
 * 127 - 7 = 120. Subnormal codes (exponent field 0): m · 2^-9, exact. The NaN codes
 * 0x7f/0xff (S.1111.111): ±NaN (mq never produces them; a block scale read from a
 * checkpoint may hold one, and then every output it reaches is NaN, on every ISA). */
#define NVFP4_E4M3_REBIAS (120u << 23)
#define NVFP4_E4M3_SUB    0x1p-9f

static inline float nvfp4_e4m3_decode(uint8_t b)
{
    const uint32_t mag = b & 0x7fu;
    float v;
    if (mag < 8) {
        v = (float)mag * NVFP4_E4M3_SUB;
    } else if (mag == 0x7f) {
        v = NAN;
    } else {
        const uint32_t u = (mag << 20) + NVFP4_E4M3_REBIAS;
        memcpy(&v, &u, 4);
    }
    return (b & 0x80) ? -v : v;
}

#ifdef __AVX512F__
#include <immintrin.h>

/* nvfp4_e4m3_decode on 16 codes held one per 32-bit lane (0..255). */
static inline __m512 nvfp4_e4m3_decode16_epi32(__m512i v)
{
    const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
    const __m512 normal =
        _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32((int)NVFP4_E4M3_REBIAS)));
    const __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(NVFP4_E4M3_SUB));
    __m512 r = _mm512_mask_blend_ps(_mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(8)), normal, sub);
    r = _mm512_mask_blend_ps(_mm512_cmpeq_epu32_mask(mag, _mm512_set1_epi32(0x7f)), r, _mm512_set1_ps(NAN));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
}

/* The same on 16 code bytes. */
static inline __m512 nvfp4_e4m3_decode16(__m128i b)
{
    return nvfp4_e4m3_decode16_epi32(_mm512_cvtepu8_epi32(b));
}
#endif

#endif
