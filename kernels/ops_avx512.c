/* kernels/ops_avx512.c — AVX-512 variants of the ops kernels: BF16 row conversions,
 * amax, NVFP4 activation quantization, RMSNorm, SiLU·mul (attention: attn_avx512.c).
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

/* ---- BF16 rows ---------------------------------------------------------------- */

/* Integer RNE on the FP32 bits, NaN made quiet: exactly mq_f32_to_bf16. (vcvtneps2bf16
 * would flush subnormals, so it is not used here.) */
static inline __m256i f32_to_bf16_16(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_srli_epi32(r, 16);
    const __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

static void f32_to_bf16_row_avx512(const float *x, uint16_t *y, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + i), f32_to_bf16_16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(y + i, m, f32_to_bf16_16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static void bf16_to_f32_row_avx512(const uint16_t *x, float *y, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

/* ---- amax --------------------------------------------------------------------- */

/* For non-negative floats the integer order of the bits is the float order, and
 * NaN/Inf are exactly the magnitudes >= 0x7f800000: one integer max does both jobs. */
static float amax_f32_avx512(const float *x, size_t n)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), absm));
        m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), absm));
        m2 = _mm512_max_epu32(m2, _mm512_and_si512(_mm512_loadu_si512(x + i + 32), absm));
        m3 = _mm512_max_epu32(m3, _mm512_and_si512(_mm512_loadu_si512(x + i + 48), absm));
    }
    for (; i + 16 <= n; i += 16)
        m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), absm));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_maskz_loadu_epi32(m, x + i), absm));
    }
    uint32_t top = _mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_max_epu32(m0, m1), _mm512_max_epu32(m2, m3)));
    return top >= 0x7f800000u ? NAN : ops_u2f(top);
}

/* The same on BF16 (weights at load time): 32 magnitudes per vector, max as 16-bit
 * integers; NaN/Inf are the magnitudes >= 0x7f80. */
static float amax_bf16_avx512(const uint16_t *x, size_t n)
{
    const __m512i absm = _mm512_set1_epi16(0x7fff);
    __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), absm));
        m1 = _mm512_max_epu16(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 32), absm));
        m2 = _mm512_max_epu16(m2, _mm512_and_si512(_mm512_loadu_si512(x + i + 64), absm));
        m3 = _mm512_max_epu16(m3, _mm512_and_si512(_mm512_loadu_si512(x + i + 96), absm));
    }
    for (; i + 32 <= n; i += 32)
        m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), absm));
    if (i < n)
        m1 = _mm512_max_epu16(
            m1, _mm512_and_si512(_mm512_maskz_loadu_epi16((__mmask32)((1u << (n - i)) - 1), x + i), absm));
    __m512i m = _mm512_max_epu16(_mm512_max_epu16(m0, m1), _mm512_max_epu16(m2, m3));
    /* 32 u16 -> the largest: widen the two halves to u32 and reduce */
    const __m512i lo = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(m));
    const __m512i hi = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(m, 1));
    const uint32_t top = _mm512_reduce_max_epu32(_mm512_max_epu32(lo, hi));
    return top >= 0x7f80u ? NAN : ops_u2f(top << 16);
}

/* ---- NVFP4 activation quantization ------------------------------------------- */

/* E4M3 codes of 16 values y >= 0 (or +Inf): ops_e4m3_pos, vectorised. */
static inline __m512i e4m3_pos16(__m512 y)
{
    const __m512i u = _mm512_castps_si512(y);
    __m512i cn =
        _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7ffff),
                                             _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1))));
    cn = _mm512_sub_epi32(_mm512_srli_epi32(cn, 20), _mm512_set1_epi32(120 << 3));
    const __m512i cs = _mm512_cvt_roundps_epi32(_mm512_mul_ps(y, _mm512_set1_ps(512.0f)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); /* exact product */
    __m512i c = _mm512_mask_mov_epi32(cn, _mm512_cmp_ps_mask(y, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ), cs);
    return _mm512_mask_mov_epi32(c, _mm512_cmp_ps_mask(y, _mm512_set1_ps(448.0f), _CMP_NLT_UQ),
                                 _mm512_set1_epi32(0x7e));
}

#define QCHUNK 256 /* blocks per pass: bounds the stack arrays */

/* One row, NVFP4.md's order; see mq_fp4_quantize_row for the specification. Three
 * passes per chunk of blocks, so no block waits on another's scalar steps: block
 * amaxes; then scales and multipliers 16 blocks per vector; then the codes. */
static int fp4_quantize_row_avx512(const float *x, int k, float g, uint8_t *codes, uint8_t *scales)
{
    if (!(g > 0.0f) || !isfinite(g))
        return -EINVAL;
    const int nb = mq_fp4_pad(k) / MQ_FP4_BLOCK;
    const __m512 gv = _mm512_set1_ps(g), inv_g = _mm512_set1_ps(1.0f / g), six = _mm512_set1_ps(6.0f);
    const __m512i one = _mm512_set1_epi32(1);
    const __m512 t1 = _mm512_set1_ps(0.25f), t2 = _mm512_set1_ps(0.75f), t3 = _mm512_set1_ps(1.25f),
                 t4 = _mm512_set1_ps(1.75f), t5 = _mm512_set1_ps(2.5f), t6 = _mm512_set1_ps(3.5f),
                 t7 = _mm512_set1_ps(5.0f);
    _Alignas(64) float amax[QCHUNK], osv[QCHUNK];
    for (int b0 = 0; b0 < nb; b0 += QCHUNK) {
        const int b1 = nb - b0 < QCHUNK ? nb : b0 + QCHUNK;
        __mmask16 bad = 0;
        for (int b = b0; b < b1; b++) {
            const int left = k - b * MQ_FP4_BLOCK;
            const __mmask16 lm = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(lm, x + b * MQ_FP4_BLOCK);
            bad |= _mm512_fpclass_ps_mask(v, 0x99); /* QNaN, SNaN, +Inf, -Inf */
            amax[b - b0] = _mm512_reduce_max_ps(_mm512_abs_ps(v));
        }
        if (bad)
            return -EINVAL;
        for (int b = b0; b < b1; b += 16) {
            const __mmask16 m = b1 - b >= 16 ? 0xffff : (__mmask16)((1u << (b1 - b)) - 1);
            const __m512 am = _mm512_maskz_load_ps(m, amax + (b - b0));
            const __m512i s = e4m3_pos16(_mm512_mul_ps(gv, _mm512_div_ps(am, six))); /* divide, then multiply */
            _mm_mask_storeu_epi8(scales + b, m, _mm512_cvtepi32_epi8(s));
            const __m512 sf = nvfp4_e4m3_decode16_epi32(s);
            /* Correctly rounded, as ref.c (the GPU's rcp.approx may differ in the last bit). */
            const __mmask16 nz = _mm512_cmp_ps_mask(sf, _mm512_setzero_ps(), _CMP_NEQ_OQ);
            _mm512_store_ps(osv + (b - b0), _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), _mm512_mul_ps(sf, inv_g)));
        }
        for (int b = b0; b < b1; b++) {
            const int left = k - b * MQ_FP4_BLOCK;
            const __mmask16 lm = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            const __m512 p =
                _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, x + b * MQ_FP4_BLOCK), _mm512_set1_ps(osv[b - b0]));
            const __m512 t = _mm512_abs_ps(p);
            /* ref.c's if-chain as a count of thresholds passed; "not <" so NaN gives 7 too. */
            __m512i c = _mm512_setzero_si512();
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t1, _CMP_NLE_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t2, _CMP_NLT_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t3, _CMP_NLE_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t4, _CMP_NLT_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t5, _CMP_NLE_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t6, _CMP_NLT_UQ), c, one);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(t, t7, _CMP_NLE_UQ), c, one);
            c = _mm512_mask_or_epi32(c, _mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_LT_OQ), c,
                                     _mm512_set1_epi32(8));
            /* element 2i (low dword of a qword) in the low nibble, 2i+1 in the high one */
            const __m512i pair = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
            _mm_storel_epi64((__m128i *)(codes + b * 8), _mm512_cvtepi64_epi8(pair));
        }
    }
    return 0;
}

static int fp4_act_quantize_rows_avx512(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1)
{
    return fp4_quantize_rows_with(fp4_quantize_row_avx512, a, x, ldx, r0, r1);
}

/* ---- RMSNorm, SiLU·mul -------------------------------------------------------- */

static void rmsnorm_avx512(float *y, const float *x, const float *w, int n, float eps)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        s0 = _mm512_fmadd_ps(a, a, s0);
        s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i);
        s0 = _mm512_fmadd_ps(a, a, s0);
    }
    const float ss = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf(ss / (float)n + eps));
    for (i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

static void swiglu_avx512(float *out, const float *gate, const float *up, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 e = ops_exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

/* argmax_ref's answer (the first index of the largest value, NaNs never larger, index 0
 * when x[0] is NaN) in two passes: the largest value, then its first index. vmaxps(x, m)
 * returns m when x is NaN, so NaNs never enter the maximum. */
static int argmax_avx512(const float *x, int n)
{
    if (n <= 0 || x[0] != x[0])
        return 0;
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
        m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
    }
    for (; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        m0 = _mm512_mask_max_ps(m0, k, _mm512_maskz_loadu_ps(k, x + i), m0);
    }
    const float best = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    const __m512 bv = _mm512_set1_ps(best);
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __mmask16 eq = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, x + i), bv, _CMP_EQ_OQ);
        if (eq)
            return i + __builtin_ctz(eq);
    }
    return 0; /* every element NaN but x[0]: impossible, x[0] is not NaN */
}

void kernels_fill_ops_avx512(mq_kernel_table *t)
{
    t->f32_to_bf16_row = f32_to_bf16_row_avx512;
    t->bf16_to_f32_row = bf16_to_f32_row_avx512;
    t->amax_f32 = amax_f32_avx512;
    t->amax_bf16 = amax_bf16_avx512;
    t->fp4_act_quantize_rows = fp4_act_quantize_rows_avx512;
    t->rmsnorm = rmsnorm_avx512;
    t->swiglu = swiglu_avx512;
    t->argmax = argmax_avx512;
    t->attention = attention_avx512;
}
