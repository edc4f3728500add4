/* kernels/gemm_avx2.c — NVFP4 and BF16 GEMM/GEMV on AVX2+FMA (no VNNI, no BF16 dot).
 *
 * Same structure as gemm_avx512.c, 8 columns per ymm instead of 16:
 * NVFP4: a panel of NG groups × 8 weight columns × KC_BLOCKS blocks is repacked per call
 * (int8 2w as [group][k/4][8][4], -12·Σ2w and FP32 scales per block and column); the
 * block's 16 products come from vpmaddubsw (u8 2a+12 × s8 2w, pair sums <= 576) summed
 * in int16 over the block (<= 2304, exact) and widened by vpmaddwd; then convert, scale
 * by sw and sx, accumulate in FP32.
 * BF16: GEMM repacks a panel to FP32 [group][k][8] and broadcasts x; GEMV (m <= 8)
 * reads row-major weights once, widening BF16 by a 16-bit shift.
 * Columns outside [n0, n1) of y are never written.
 */
#include "kernels/kernels_internal.h"

#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

static const int8_t twice_lut[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

/* E4M3 -> FP32 without a table: normal codes by rebiasing the exponent bits. */
static inline float e4m3_fast(uint8_t b)
{
    uint32_t mag = b & 0x7f, u;
    float v;
    if (mag < 8) {
        v = (float)mag * 0x1p-9f;
    } else {
        u = (mag << 20) + (120u << 23);
        memcpy(&v, &u, 4);
    }
    return (b & 0x80) ? -v : v;
}

/* Writes y[c] for the columns of a group that fall inside [n0, n1). */
AI void store_cols(float *y, int c0, int n0, int n1, __m256 v, int add)
{
    if (c0 >= n0 && c0 + 8 <= n1) {
        if (add)
            v = _mm256_add_ps(v, _mm256_loadu_ps(y));
        _mm256_storeu_ps(y, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < 8; i++)
        if (c0 + i >= n0 && c0 + i < n1)
            y[i] = add ? y[i] + t[i] : t[i];
}

/* ---- NVFP4 ---------------------------------------------------------------------------- */

#define A2_MR  4
#define A2_NG  2
#define A2_KCB 16

typedef struct fp4_panel2 {
    int8_t wq[A2_NG][A2_KCB * 4][8][4];
    int32_t corr[A2_NG][A2_KCB][8];
    float sw[A2_NG][A2_KCB][8];
} fp4_panel2;

static void fp4_pack_group2(const mq_fp4_weight *w, int c0, int kb0, int nkb, fp4_panel2 *p, int g)
{
    const int nb = w->kp / MQ_FP4_BLOCK;
    for (int c = 0; c < 8; c++) {
        const int row = c0 + c;
        for (int b = 0; b < nkb; b++) {
            int sum = 0;
            for (int j = 0; j < 4; j++) {
                for (int e = 0; e < 4; e++) {
                    int8_t v = 0;
                    if (row < w->n) {
                        int k = (kb0 + b) * 16 + j * 4 + e;
                        v = twice_lut[(w->codes[(size_t)row * (w->kp / 2) + k / 2] >> (k & 1 ? 4 : 0)) & 0xf];
                    }
                    p->wq[g][b * 4 + j][c][e] = v;
                    sum += v;
                }
            }
            p->corr[g][b][c] = -12 * sum;
            p->sw[g][b][c] = row < w->n ? e4m3_fast(w->scales[(size_t)row * nb + kb0 + b]) : 0.0f;
        }
    }
}

AI void fp4_tile2(const int MR, const int NG, const uint8_t *xb, size_t xstr, const float *xs, size_t sstr,
                  const fp4_panel2 *p, int nkb, __m256 acc[A2_MR][A2_NG])
{
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nkb; b++) {
        __m256i s16[A2_MR][A2_NG];
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                s16[m][g] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i wv[A2_NG];
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                wv[g] = _mm256_load_si256((const __m256i *)p->wq[g][b * 4 + j]);
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) {
                uint32_t x4;
                memcpy(&x4, xb + (size_t)m * xstr + b * 16 + j * 4, 4);
                __m256i xv = _mm256_set1_epi32((int)x4);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++)
                    s16[m][g] = _mm256_add_epi16(s16[m][g], _mm256_maddubs_epi16(xv, wv[g]));
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m256 sx = _mm256_set1_ps(xs[(size_t)m * sstr + b]);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) {
                __m256i i32 = _mm256_add_epi32(_mm256_madd_epi16(s16[m][g], ones),
                                               _mm256_load_si256((const __m256i *)p->corr[g][b]));
                __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(i32), _mm256_load_ps(p->sw[g][b]));
                acc[m][g] = _mm256_fmadd_ps(t, sx, acc[m][g]);
            }
        }
    }
}

static void avx2_gemm_fp4(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    if (n0 >= n1 || x->m <= 0)
        return;
    const int kp = x->kp, nb = kp / MQ_FP4_BLOCK, M = x->m;
    const float alpha = (1.0f / x->g) * (1.0f / w->g) * 0.25f; /* 1/4: doubled integer products */
    const uint8_t *xbytes = mq_fp4_act_aux_bytes(x);
    const float *xsx = mq_fp4_act_aux_sx(x);
    fp4_panel2 p __attribute__((aligned(32)));
    const int g0 = n0 / 8, g1 = (n1 + 7) / 8;
    for (int pg = g0; pg < g1; pg += A2_NG) {
        const int ng = g1 - pg < A2_NG ? g1 - pg : A2_NG;
        for (int kb0 = 0; kb0 < nb; kb0 += A2_KCB) {
            const int nkb = nb - kb0 < A2_KCB ? nb - kb0 : A2_KCB;
            for (int g = 0; g < ng; g++)
                fp4_pack_group2(w, (pg + g) * 8, kb0, nkb, &p, g);
            for (int m0 = 0; m0 < M; m0 += A2_MR) {
                const int mr = M - m0 < A2_MR ? M - m0 : A2_MR;
                __m256 acc[A2_MR][A2_NG];
                for (int m = 0; m < A2_MR; m++)
                    for (int g = 0; g < A2_NG; g++)
                        acc[m][g] = _mm256_setzero_ps();
                const uint8_t *xb = xbytes + (size_t)m0 * kp + (size_t)kb0 * 16;
                const float *xs = xsx + (size_t)m0 * nb + kb0;
                if (mr == A2_MR && ng == A2_NG) {
                    fp4_tile2(A2_MR, A2_NG, xb, (size_t)kp, xs, (size_t)nb, &p, nkb, acc);
                } else {
                    for (int m = 0; m < mr; m++) {
                        const uint8_t *xr = xb + (size_t)m * kp;
                        const float *sr = xs + (size_t)m * nb;
                        if (ng == 2)
                            fp4_tile2(1, 2, xr, (size_t)kp, sr, (size_t)nb, &p, nkb, acc + m);
                        else
                            fp4_tile2(1, 1, xr, (size_t)kp, sr, (size_t)nb, &p, nkb, acc + m);
                    }
                }
                const int last = kb0 + nkb == nb;
                for (int m = 0; m < mr; m++)
                    for (int g = 0; g < ng; g++) {
                        __m256 v = last ? _mm256_mul_ps(acc[m][g], _mm256_set1_ps(alpha)) : acc[m][g];
                        /* partial sums live in y between chunks; alpha scales only the total */
                        float *yp = y + (size_t)(m0 + m) * ldy + (size_t)(pg + g) * 8;
                        if (kb0 > 0 && last) {
                            float t[8];
                            _mm256_storeu_ps(t, acc[m][g]);
                            for (int i = 0; i < 8; i++) {
                                int c = (pg + g) * 8 + i;
                                if (c >= n0 && c < n1)
                                    yp[i] = (yp[i] + t[i]) * alpha;
                            }
                        } else {
                            store_cols(yp, (pg + g) * 8, n0, n1, v, kb0 > 0);
                        }
                    }
            }
        }
    }
}

/* ---- BF16 ------------------------------------------------------------------------------ */

#define B2_MR 4
#define B2_NG 3
#define B2_KC 256

typedef struct bf16_panel2 {
    float w[B2_NG][B2_KC][8];
} bf16_panel2;

AI __m256 bf16x8(const uint16_t *p) /* 8 BF16 -> FP32 */
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static void bf16_pack_group2(const mq_bf16_weight *w, int c0, int k0, int kc, bf16_panel2 *p, int g)
{
    for (int c = 0; c < 8; c++) {
        const int row = c0 + c;
        for (int k = 0; k < kc; k++)
            p->w[g][k][c] = row < w->n ? mq_bf16_to_f32(w->w[(size_t)row * w->k + k0 + k]) : 0.0f;
    }
}

AI void bf16_tile2(const int MR, const int NG, const uint16_t *x, size_t ldx, const bf16_panel2 *p, int kc,
                   __m256 acc[B2_MR][B2_NG])
{
    for (int k = 0; k < kc; k++) {
        __m256 wv[B2_NG];
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            wv[g] = _mm256_load_ps(p->w[g][k]);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m256 xv = _mm256_set1_ps(mq_bf16_to_f32(x[(size_t)m * ldx + k]));
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                acc[m][g] = _mm256_fmadd_ps(xv, wv[g], acc[m][g]);
        }
    }
}

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* GEMV: MR rows × NR weight rows, K in steps of 8 (tail scalar). */
AI void bf16_gemv_cols2(const int MR, const int NR, const uint16_t *x, size_t ldx, const uint16_t *w, int K, float *y,
                        size_t ldy, int n)
{
    __m256 acc[8][4];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc[m][r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            wv[r] = bf16x8(w + (size_t)(n + r) * K + k);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m256 xv = bf16x8(x + (size_t)m * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int r = 0; r < NR; r++) {
            float s = hsum8(acc[m][r]);
            for (int kk = k; kk < K; kk++)
                s += mq_bf16_to_f32(x[(size_t)m * ldx + kk]) * mq_bf16_to_f32(w[(size_t)(n + r) * K + kk]);
            y[(size_t)m * ldy + n + r] = s;
        }
}

#define GEMV2_NR(MR) ((MR) <= 2 ? 4 : (MR) <= 4 ? 2 : 1)
#define GEMV2_CASE(MR)                                                        \
    case MR: {                                                                \
        int n = n0;                                                           \
        for (; n + GEMV2_NR(MR) <= n1; n += GEMV2_NR(MR))                     \
            bf16_gemv_cols2(MR, GEMV2_NR(MR), x, ldx, w->w, w->k, y, ldy, n); \
        for (; n < n1; n++)                                                   \
            bf16_gemv_cols2(MR, 1, x, ldx, w->w, w->k, y, ldy, n);            \
        return;                                                               \
    }

static void avx2_gemm_bf16(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                           int n1)
{
    if (n0 >= n1 || m <= 0)
        return;
    /* one macro-generated case per line */
    /* clang-format off */
    switch (m) {
    GEMV2_CASE(1)
    GEMV2_CASE(2)
    GEMV2_CASE(3)
    GEMV2_CASE(4)
    GEMV2_CASE(5)
    GEMV2_CASE(6)
    GEMV2_CASE(7)
    GEMV2_CASE(8)
    default: break;
    }
    /* clang-format on */
    const int K = w->k;
    bf16_panel2 p __attribute__((aligned(32)));
    const int g0 = n0 / 8, g1 = (n1 + 7) / 8;
    for (int pg = g0; pg < g1; pg += B2_NG) {
        const int ng = g1 - pg < B2_NG ? g1 - pg : B2_NG;
        for (int k0 = 0; k0 < K; k0 += B2_KC) {
            const int kc = K - k0 < B2_KC ? K - k0 : B2_KC;
            for (int g = 0; g < B2_NG; g++)
                bf16_pack_group2(w, (pg + g) * 8, k0, kc, &p, g); /* rows past n: 0 */
            for (int m0 = 0; m0 < m; m0 += B2_MR) {
                const int mr = m - m0 < B2_MR ? m - m0 : B2_MR;
                __m256 acc[B2_MR][B2_NG];
                for (int i = 0; i < B2_MR; i++)
                    for (int g = 0; g < B2_NG; g++)
                        acc[i][g] = _mm256_setzero_ps();
                const uint16_t *xm = x + (size_t)m0 * ldx + k0;
                if (mr == B2_MR && ng == B2_NG)
                    bf16_tile2(B2_MR, B2_NG, xm, ldx, &p, kc, acc);
                else
                    for (int i = 0; i < mr; i++)
                        bf16_tile2(1, B2_NG, xm + (size_t)i * ldx, ldx, &p, kc, acc + i);
                for (int i = 0; i < mr; i++)
                    for (int g = 0; g < ng; g++)
                        store_cols(y + (size_t)(m0 + i) * ldy + (size_t)(pg + g) * 8, (pg + g) * 8, n0, n1, acc[i][g],
                                   k0 > 0);
            }
        }
    }
}

static void avx2_noop_prepare_fp4(mq_fp4_weight *w, int r0, int r1)
{
    (void)w;
    (void)r0;
    (void)r1;
}
static void avx2_noop_prepare_bf16(mq_bf16_weight *w, int r0, int r1)
{
    (void)w;
    (void)r0;
    (void)r1;
}

void mq_kernels_fill_gemm_avx2(mq_kernel_table *t)
{
    t->gemm_fp4 = avx2_gemm_fp4;
    t->fp4_weight_prepare_rows = avx2_noop_prepare_fp4;
    t->gemm_bf16 = avx2_gemm_bf16;
    t->bf16_weight_prepare_rows = avx2_noop_prepare_bf16;
    /* fp4_act_prepare_rows: the scalar form in layout.c serves */
}
