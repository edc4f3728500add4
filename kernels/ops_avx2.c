/* kernels/ops_avx2.c — AVX2+FMA variants of the ops kernels: BF16 row conversions,
 * amax, NVFP4 activation quantization, RMSNorm, SiLU·mul (attention: attn_avx2.c).
 * Slots left alone keep the reference (ref.c).
 *
 * Conversions, amax and quantization are bit-exact with ref.c (same FP32 operations in
 * the same order; no FMA where the reference has a separate multiply and add).
 * RMSNorm and SiLU·mul sum/approximate differently: a few ulp, tested against FP64.
 */
#include "kernels/ops_simd.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>

static inline __m256i tail_mask(size_t left) /* lanes < left set, for maskload/maskstore */
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? left : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- BF16 rows ---------------------------------------------------------------- */

/* 8 floats -> 8 BF16 in the low 128 bits; integer RNE exactly as mq_f32_to_bf16. */
static inline __m128i f32_to_bf16_8(__m256 x)
{
    const __m256i u = _mm256_castps_si256(x);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                     _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, qnan, nan);
    /* values are < 65536: packus keeps them; fix the lane interleave afterwards */
    __m256i p = _mm256_packus_epi32(r, r);
    p = _mm256_permute4x64_epi64(p, 0x08);
    return _mm256_castsi256_si128(p);
}

static void f32_to_bf16_row_avx2(const float *x, uint16_t *y, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), f32_to_bf16_8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] = mq_f32_to_bf16(x[i]);
}

static void bf16_to_f32_row_avx2(const uint16_t *x, float *y, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; i++)
        y[i] = mq_bf16_to_f32(x[i]);
}

/* ---- amax: integer max of the magnitude bits (see ops_avx512.c) -------------- */

static float amax_f32_avx2(const float *x, size_t n)
{
    const __m256i absm = _mm256_set1_epi32(0x7fffffff);
    __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absm));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), absm));
        m2 = _mm256_max_epu32(m2, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 16)), absm));
        m3 = _mm256_max_epu32(m3, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 24)), absm));
    }
    for (; i + 8 <= n; i += 8)
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absm));
    m0 = _mm256_max_epu32(_mm256_max_epu32(m0, m1), _mm256_max_epu32(m2, m3));
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, m0);
    uint32_t top = 0;
    for (int j = 0; j < 8; j++)
        top = lanes[j] > top ? lanes[j] : top;
    for (; i < n; i++) {
        uint32_t u = ops_f2u(x[i]) & 0x7fffffffu;
        top = u > top ? u : top;
    }
    return top >= 0x7f800000u ? NAN : ops_u2f(top);
}

/* ---- NVFP4 activation quantization ------------------------------------------- */

/* E2M1 codes of 8 products p (ref.c's if-chain as a count of thresholds passed; the
 * "not <" predicates give 7 for NaN like the chain), sign from p < 0. */
static inline __m256i e2m1_8(__m256 p)
{
    const __m256 t = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), p);
    __m256i c = _mm256_setzero_si256();
#define STEP(th, pred) c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(t, _mm256_set1_ps(th), pred)))
    STEP(0.25f, _CMP_NLE_UQ);
    STEP(0.75f, _CMP_NLT_UQ);
    STEP(1.25f, _CMP_NLE_UQ);
    STEP(1.75f, _CMP_NLT_UQ);
    STEP(2.5f, _CMP_NLE_UQ);
    STEP(3.5f, _CMP_NLT_UQ);
    STEP(5.0f, _CMP_NLE_UQ);
#undef STEP
    const __m256 neg = _mm256_cmp_ps(p, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_or_si256(c, _mm256_and_si256(_mm256_castps_si256(neg), _mm256_set1_epi32(8)));
}

/* 8 codes -> 4 bytes (element 2i low nibble) in dwords 0..3 of the result. */
static inline __m128i pack_nibbles_8(__m256i c)
{
    __m256i pair = _mm256_or_si256(c, _mm256_srli_epi64(c, 28));
    pair = _mm256_permutevar8x32_epi32(pair, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    return _mm256_castsi256_si128(pair);
}

static int fp4_quantize_row_avx2(const float *x, int k, float g, uint8_t *codes, uint8_t *scales)
{
    if (!(g > 0.0f) || !isfinite(g))
        return -EINVAL;
    const int nb = mq_fp4_pad(k) / MQ_FP4_BLOCK;
    const float inv_g = 1.0f / g;
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), infb = _mm256_set1_epi32(0x7f7fffff);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * MQ_FP4_BLOCK;
        const int left = k - b * MQ_FP4_BLOCK;
        __m256 v0, v1;
        if (left >= 16) {
            v0 = _mm256_loadu_ps(xb);
            v1 = _mm256_loadu_ps(xb + 8);
        } else {
            v0 = _mm256_maskload_ps(xb, tail_mask((size_t)left));
            v1 = left > 8 ? _mm256_maskload_ps(xb + 8, tail_mask((size_t)left - 8)) : _mm256_setzero_ps();
        }
        const __m256i a0 = _mm256_and_si256(_mm256_castps_si256(v0), absm);
        const __m256i a1 = _mm256_and_si256(_mm256_castps_si256(v1), absm);
        const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(a0, infb), _mm256_cmpgt_epi32(a1, infb));
        if (!_mm256_testz_si256(bad, bad))
            return -EINVAL; /* NaN or Inf */
        __m256i m = _mm256_max_epu32(a0, a1);
        __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4e));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xb1));
        const float amax_b = ops_u2f((uint32_t)_mm_cvtsi128_si32(m4));
        const uint8_t s = ops_e4m3_pos(g * (amax_b / 6.0f));
        scales[b] = s;
        const float sf = nvfp4_e4m3_decode(s);
        /* Correctly rounded, as ref.c (the GPU's rcp.approx may differ in the last bit). */
        const float os = sf == 0.0f ? 0.0f : 1.0f / (sf * inv_g);
        const __m256 osv = _mm256_set1_ps(os);
        const __m128i lo = pack_nibbles_8(e2m1_8(_mm256_mul_ps(v0, osv)));
        const __m128i hi = pack_nibbles_8(e2m1_8(_mm256_mul_ps(v1, osv)));
        const __m128i w = _mm_packus_epi16(_mm_packus_epi32(lo, hi), _mm_setzero_si128());
        _mm_storel_epi64((__m128i *)(codes + b * 8), w);
    }
    return 0;
}

static int fp4_act_quantize_rows_avx2(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1)
{
    return fp4_quantize_rows_with(fp4_quantize_row_avx2, a, x, ldx, r0, r1);
}

/* ---- RMSNorm, SiLU·mul -------------------------------------------------------- */

static void rmsnorm_avx2(float *y, const float *x, const float *w, int n, float eps)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(s0, s1));
    float ss = 0.0f;
    for (int j = 0; j < 8; j++)
        ss += lanes[j];
    for (; i < n; i++)
        ss += x[i] * x[i];
    const float rs = 1.0f / sqrtf(ss / (float)n + eps);
    const __m256 r = _mm256_set1_ps(rs);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), r)));
    for (; i < n; i++)
        y[i] = w[i] * (x[i] * rs);
}

static void swiglu_avx2(float *out, const float *gate, const float *up, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = ops_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kernels_fill_ops_avx2(mq_kernel_table *t)
{
    t->f32_to_bf16_row = f32_to_bf16_row_avx2;
    t->bf16_to_f32_row = bf16_to_f32_row_avx2;
    t->amax_f32 = amax_f32_avx2;
    t->fp4_act_quantize_rows = fp4_act_quantize_rows_avx2;
    t->rmsnorm = rmsnorm_avx2;
    t->swiglu = swiglu_avx2;
    t->attention = attention_avx2;
}
