/* kernels/ops_simd.h — helpers shared by the ops_* and attn_* SIMD variants.
 *
 * Internal to kernels/: scalar bit tricks that give exactly the results of ref.c's
 * plain codecs (the tests check them against it), and the exp approximations.
 */
#ifndef MQ_OPS_SIMD_H
#define MQ_OPS_SIMD_H

#include "kernels/kernels_internal.h"
#include "kernels/nvfp4_tables.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline uint32_t ops_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float ops_u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* mq_f32_to_e4m3 for y >= 0 (or +Inf): RNE, saturating to 448 (code 0x7e).
 * Normal range: round the FP32 mantissa to 3 bits with the integer RNE trick and
 * rebias the exponent (127 -> 7). Subnormal range: y * 512 is exact, and the
 * magic-number add rounds it to an integer with FP32's own RNE. */
static inline uint8_t ops_e4m3_pos(float y)
{
    if (!(y < 448.0f))
        return 0x7e;
    if (y < 0x1p-6f)
        return (uint8_t)ops_f2u((y * 512.0f + 0x1p23f)) & 0xf;
    uint32_t u = ops_f2u(y);
    u += 0x7ffffu + ((u >> 20) & 1u);
    return (uint8_t)((u >> 20) - (120u << 3));
}

/* e^x, about 1 ulp: Cody-Waite reduction by ln2 (x = n·ln2 + r, ln2 split in a high part
 * exact in FP32 and a low part), degree-7 polynomial (Taylor terms tuned as in Cephes'
 * expf: p(r) = P0·r^5 + ... + P5, e^r ≈ p(r)·r² + r + 1), then 2^n. One set of constants
 * for both widths. */
#define OPS_EXP_LOG2E  1.44269504f
#define OPS_EXP_LN2_HI 0.693359375f
#define OPS_EXP_LN2_LO -2.12194440e-4f
#define OPS_EXP_P(i)               \
    ((i) == 0   ? 1.9875691500e-4f \
     : (i) == 1 ? 1.3981999507e-3f \
     : (i) == 2 ? 8.3334519073e-3f \
     : (i) == 3 ? 4.1665795894e-2f \
     : (i) == 4 ? 1.6666665459e-1f \
                : 5.0000001201e-1f)

#ifdef __AVX512F__
/* ops_exp512: scalef for 2^n (gives 0 and Inf at the ends). */
static inline __m512 ops_exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(OPS_EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(OPS_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(OPS_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(OPS_EXP_P(0));
    _Pragma("GCC unroll 8") for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(OPS_EXP_P(i)));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

#ifdef __AVX2__
/* e^x for AVX2+FMA, same reduction and polynomial as ops_exp512; 2^n is built in the
 * exponent field, so inputs are clamped to the normal range and the ends patched:
 * x < -87.3 gives 0 (FP32 subnormal results are dropped), x > 88.3 gives +Inf. */
static inline __m256 ops_exp256(__m256 x0)
{
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    __m256 x = _mm256_min_ps(_mm256_max_ps(x0, lo), hi);
    const __m256 n =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(OPS_EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(OPS_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(OPS_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(OPS_EXP_P(0));
    _Pragma("GCC unroll 8") for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P(i)));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x0, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x0, hi, _CMP_GT_OQ));
}
#endif

#endif
