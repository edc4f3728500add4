/* kernels/gemm_avx2.c — NVFP4 and BF16 GEMM/GEMV on AVX2+FMA (no VNNI, no BF16 dot).
 *
 * Same structure as gemm_avx512.c, 8 columns per ymm instead of 16:
 * NVFP4: a panel of NG groups × 8 weight columns × KC_BLOCKS blocks is repacked per call
 * (uint8 2w+12 as [group][k/4][8][4] and FP32 scales per block and column; the packed
 * form of mq_fp4_weight is AVX-512's and not read here); the block's 16 products come
 * from vpmaddubsw (u8 2w+12 × s8 2a, pair sums <= 576) summed in int16 over the block
 * (<= 2304, exact) and widened by vpmaddwd; the activation's -12·Σ2a removes the bias;
 * then convert, scale by sw and |sx|, accumulate in FP32.
 * BF16: GEMM repacks a panel to FP32 [group][k][8] (from either weight layout) and
 * broadcasts x; GEMV (m <= 8) reads the weights once, widening BF16 by a 16-bit shift:
 * row-major rows, or a packed group of 16 rows as one stream.
 * Columns outside [n0, n1) of y are never written.
 */
#include "kernels/kernels_internal.h"
#include "kernels/nvfp4_tables.h"

#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

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

#define FP4_NG    2
#define KC_BLOCKS 16

typedef struct fp4_panel {
    uint8_t wq[FP4_NG][KC_BLOCKS * 4][8][4]; /* 2w + 12 */
    float sw[FP4_NG][KC_BLOCKS][8];
} fp4_panel;

static void fp4_pack_group(const mq_fp4_weight *w, int c0, int kb0, int nkb, fp4_panel *p, int g)
{
    const int nb = w->kp / MQ_FP4_BLOCK;
    for (int c = 0; c < 8; c++) {
        const int row = c0 + c;
        for (int b = 0; b < nkb; b++) {
            for (int j = 0; j < 4; j++) {
                for (int e = 0; e < 4; e++) {
                    uint8_t code = 0;
                    if (row < w->n) {
                        int k = (kb0 + b) * 16 + j * 4 + e;
                        code = w->codes[(size_t)row * (w->kp / 2) + k / 2] >> (k & 1 ? 4 : 0);
                    }
                    p->wq[g][b * 4 + j][c][e] = nvfp4_e2m1_biased[code & 0xf];
                }
            }
            p->sw[g][b][c] = row < w->n ? nvfp4_e4m3_decode(w->scales[(size_t)row * nb + kb0 + b]) : 0.0f;
        }
    }
}

/* The 4 rows of an activation quad (padding rows included) × NG groups over nkb blocks. */
AI void fp4_tile(const int NG, const fp4_qblock *xq, const fp4_panel *p, int nkb, __m256 acc[FP4_QUAD][FP4_NG])
{
    const int MR = FP4_QUAD;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nkb; b++) {
        const fp4_qblock *q = xq + b;
        __m256i s16[FP4_QUAD][FP4_NG];
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                s16[m][g] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i wv[FP4_NG];
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                wv[g] = _mm256_load_si256((const __m256i *)p->wq[g][b * 4 + j]);
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) {
                uint32_t x4;
                memcpy(&x4, &q->bytes[m][j * 4], 4);
                __m256i xv = _mm256_set1_epi32((int)x4);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++)
                    s16[m][g] = _mm256_add_epi16(s16[m][g], _mm256_maddubs_epi16(wv[g], xv));
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            const __m256 sx = _mm256_set1_ps(q->sx[m]);
            const __m256i corr = _mm256_set1_epi32(q->corr[m]);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) {
                __m256i i32 = _mm256_add_epi32(_mm256_madd_epi16(s16[m][g], ones), corr);
                __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(i32), _mm256_load_ps(p->sw[g][b]));
                acc[m][g] = _mm256_fmadd_ps(t, sx, acc[m][g]);
            }
        }
    }
}

static void gemm_fp4_avx2(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    if (n0 >= n1 || x->m <= 0)
        return;
    const int nb = x->kp / MQ_FP4_BLOCK, M = x->m;
    fp4_panel p __attribute__((aligned(32)));
    const int g0 = n0 / 8, g1 = (n1 + 7) / 8;
    for (int pg = g0; pg < g1; pg += FP4_NG) {
        const int ng = g1 - pg < FP4_NG ? g1 - pg : FP4_NG;
        for (int kb0 = 0; kb0 < nb; kb0 += KC_BLOCKS) {
            const int nkb = nb - kb0 < KC_BLOCKS ? nb - kb0 : KC_BLOCKS;
            for (int g = 0; g < ng; g++)
                fp4_pack_group(w, (pg + g) * 8, kb0, nkb, &p, g);
            for (int m0 = 0; m0 < M; m0 += FP4_QUAD) {
                const int mr = M - m0 < FP4_QUAD ? M - m0 : FP4_QUAD;
                __m256 acc[FP4_QUAD][FP4_NG];
                for (int m = 0; m < FP4_QUAD; m++)
                    for (int g = 0; g < FP4_NG; g++)
                        acc[m][g] = _mm256_setzero_ps();
                if (ng == FP4_NG)
                    fp4_tile(FP4_NG, fp4_act_qblock(x, m0, kb0), &p, nkb, acc);
                else
                    fp4_tile(1, fp4_act_qblock(x, m0, kb0), &p, nkb, acc);
                const int last = kb0 + nkb == nb;
                for (int m = 0; m < mr; m++) {
                    const float alpha = fp4_row_alpha(x, w, m0 + m, 0.25f); /* 1/4: doubled integer products */
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
}

/* ---- BF16 ------------------------------------------------------------------------------ */

#define BF_MR   4
#define BF_NG   3
#define KC_BF16 256

typedef struct bf16_panel {
    float w[BF_NG][KC_BF16][8];
} bf16_panel;

AI __m256 bf16x8(const uint16_t *p) /* 8 BF16 -> FP32 */
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static void bf16_pack_group(const mq_bf16_weight *w, int c0, int k0, int kc, bf16_panel *p, int g)
{
    for (int c = 0; c < 8; c++) {
        const int row = c0 + c;
        for (int k = 0; k < kc; k++)
            p->w[g][k][c] = row < w->n ? mq_bf16_to_f32(bf16_weight_at(w, row, k0 + k)) : 0.0f;
    }
}

AI void bf16_tile(const int MR, const int NG, const uint16_t *x, size_t ldx, const bf16_panel *p, int kc,
                  __m256 acc[BF_MR][BF_NG])
{
    for (int k = 0; k < kc; k++) {
        __m256 wv[BF_NG];
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
AI void bf16_gemv_cols(const int MR, const int NR, const uint16_t *x, size_t ldx, const uint16_t *w, int K, float *y,
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

#define GEMV_NR(MR) ((MR) <= 2 ? 4 : (MR) <= 4 ? 2 : 1)
#define GEMV_CASE(MR)                                                       \
    case MR: {                                                              \
        int n = n0;                                                         \
        for (; n + GEMV_NR(MR) <= n1; n += GEMV_NR(MR))                     \
            bf16_gemv_cols(MR, GEMV_NR(MR), x, ldx, w->w, w->k, y, ldy, n); \
        for (; n < n1; n++)                                                 \
            bf16_gemv_cols(MR, 1, x, ldx, w->w, w->k, y, ldy, n);           \
        return;                                                             \
    }

/* GEMV on packed weights: up to 4 rows of x × one group of 16 weight rows. A 64-byte
 * step holds k pair (2q, 2q+1) of the 16 rows, each row's pair in one 32-bit word: the
 * low half widened by a shift is k = 2q, the high half masked is k = 2q + 1. */
AI void bf16_gemv_group(const int MR, const uint16_t *x, size_t ldx, const uint32_t *pw, int K, float *y, size_t ldy,
                        int c0, int n0, int n1)
{
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++)
        acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (int q = 0; q < (K + 1) / 2; q++) {
        const int odd = 2 * q + 1 < K;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_load_si256((const __m256i *)(pw + (size_t)q * 16 + h * 8));
            const __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            const __m256 w1 = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 4
            for (int m = 0; m < MR; m++) {
                const uint16_t *xr = x + (size_t)m * ldx + 2 * q;
                acc[m][h] = _mm256_fmadd_ps(_mm256_set1_ps(mq_bf16_to_f32(xr[0])), w0, acc[m][h]);
                if (odd)
                    acc[m][h] = _mm256_fmadd_ps(_mm256_set1_ps(mq_bf16_to_f32(xr[1])), w1, acc[m][h]);
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++)
        for (int h = 0; h < 2; h++)
            store_cols(y + (size_t)m * ldy + c0 + h * 8, c0 + h * 8, n0, n1, acc[m][h], 0);
}

static void bf16_gemv_packed(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy,
                             int n0, int n1)
{
    const int kp = bf16_kp(w->k);
    for (int g = n0 / 16; g * 16 < n1; g++) {
        const uint32_t *pw = (const uint32_t *)w->w + (size_t)g * 8 * (size_t)kp;
        for (int m0 = 0; m0 < m; m0 += 4) {
            const uint16_t *xm = x + (size_t)m0 * ldx;
            float *ym = y + (size_t)m0 * ldy;
            switch (m - m0 < 4 ? m - m0 : 4) {
            case 1: bf16_gemv_group(1, xm, ldx, pw, w->k, ym, ldy, g * 16, n0, n1); break;
            case 2: bf16_gemv_group(2, xm, ldx, pw, w->k, ym, ldy, g * 16, n0, n1); break;
            case 3: bf16_gemv_group(3, xm, ldx, pw, w->k, ym, ldy, g * 16, n0, n1); break;
            default: bf16_gemv_group(4, xm, ldx, pw, w->k, ym, ldy, g * 16, n0, n1); break;
            }
        }
    }
}

/* The tiled GEMM, for any m: each row's sum in the same order whatever the tile's height. */
static void bf16_gemm_tiled(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                            int n1)
{
    if (n0 >= n1 || m <= 0)
        return;
    const int K = w->k;
    bf16_panel p __attribute__((aligned(32)));
    const int g0 = n0 / 8, g1 = (n1 + 7) / 8;
    for (int pg = g0; pg < g1; pg += BF_NG) {
        const int ng = g1 - pg < BF_NG ? g1 - pg : BF_NG;
        for (int k0 = 0; k0 < K; k0 += KC_BF16) {
            const int kc = K - k0 < KC_BF16 ? K - k0 : KC_BF16;
            for (int g = 0; g < BF_NG; g++)
                bf16_pack_group(w, (pg + g) * 8, k0, kc, &p, g); /* rows past n: 0 */
            for (int m0 = 0; m0 < m; m0 += BF_MR) {
                const int mr = m - m0 < BF_MR ? m - m0 : BF_MR;
                __m256 acc[BF_MR][BF_NG];
                for (int i = 0; i < BF_MR; i++)
                    for (int g = 0; g < BF_NG; g++)
                        acc[i][g] = _mm256_setzero_ps();
                const uint16_t *xm = x + (size_t)m0 * ldx + k0;
                if (mr == BF_MR && ng == BF_NG)
                    bf16_tile(BF_MR, BF_NG, xm, ldx, &p, kc, acc);
                else
                    for (int i = 0; i < mr; i++)
                        bf16_tile(1, BF_NG, xm + (size_t)i * ldx, ldx, &p, kc, acc + i);
                for (int i = 0; i < mr; i++)
                    for (int g = 0; g < ng; g++)
                        store_cols(y + (size_t)(m0 + i) * ldy + (size_t)(pg + g) * 8, (pg + g) * 8, n0, n1, acc[i][g],
                                   k0 > 0);
            }
        }
    }
}

static void gemm_bf16_avx2(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                           int n1)
{
    if (n0 >= n1 || m <= 0)
        return;
    if (m <= 8 && w->packed) {
        bf16_gemv_packed(x, m, ldx, w, y, ldy, n0, n1);
        return;
    }
    /* one macro-generated case per line */
    /* clang-format off */
    switch (m) {
    GEMV_CASE(1)
    GEMV_CASE(2)
    GEMV_CASE(3)
    GEMV_CASE(4)
    GEMV_CASE(5)
    GEMV_CASE(6)
    GEMV_CASE(7)
    GEMV_CASE(8)
    default: break;
    }
    /* clang-format on */
    bf16_gemm_tiled(x, m, ldx, w, y, ldy, n0, n1);
}

void kernels_fill_gemm_avx2(mq_kernel_table *t)
{
    t->gemm_fp4 = gemm_fp4_avx2;
    t->gemm_bf16 = gemm_bf16_avx2;
    t->gemm_bf16_tiled = bf16_gemm_tiled;
    /* fp4_act_prepare_rows: the reference (ref.c) serves */
}
