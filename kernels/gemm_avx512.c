/* kernels/gemm_avx512.c — NVFP4 GEMM on AVX512-VNNI, BF16 GEMM/GEMV on AVX512_BF16.
 *
 * NVFP4 (NVFP4.md's integer route). Activations arrive prepared (layout.c): unsigned
 * bytes 2a+12 and FP32 block scales. Per call, a panel of NG groups of 16 weight
 * columns and KC_BLOCKS blocks of K is repacked into a stack buffer:
 *     wq    int8  [group][k/4][16 columns][4 k]   signed 2w (one zmm = one k/4 step)
 *     corr  int32 [group][block][16]              -12·Σ2w over the block
 *     sw    FP32  [group][block][16]              E4M3 weight scales
 * so four vpdpbusd (x's 4 bytes broadcast, 16 columns per zmm) complete one 16-element
 * block for 16 columns exactly; the accumulator starts at `corr`, which removes the +12
 * bias. Then one convert, one multiply by sw and one FMA by sx per block and 16 columns.
 * The panel is reused by every activation row; a tile of MR rows × NG groups keeps
 * MR·NG integer chains in flight (and as many more through renaming across blocks).
 *
 * Per row, 16 columns and block the tile issues 4 vpdpbusd + 1 vmulps + 1 vfmadd on the
 * two pipes they share, so it is bound at 4/6 of the VNNI peak: docs/design/kernels.md.
 *
 * BF16. GEMM (m > 8): a panel of NG groups × 16 columns × KC_BF16 k is repacked into
 * pairs [group][k/2][16][2] (one zmm = 16 columns × one k pair) and multiplied with
 * vdpbf16ps against x's pair broadcast, MR rows × NG groups of FP32 accumulators.
 * GEMV (m <= 8): weights stay row-major; each weight zmm (32 k of one column) is
 * loaded once and used for all m rows, so W streams from memory exactly once.
 *
 * y columns outside [n0, n1) are never touched (masked stores), so threads may split
 * one call by column ranges that are not multiples of 16.
 */
#include "kernels/kernels_internal.h"
#include "kernels/nvfp4_tables.h"

#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

/* ---- shared helpers --------------------------------------------------------------- */

/* In-place transpose of a 16x16 matrix of 32-bit elements: r[i][j] -> r[j][i]. */
AI void tr16x16(__m512i r[16])
{
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4b+c], 128-bit lane L = column 4L+c of rows 4b..4b+3 */
    __m512i u[16];
    for (int b = 0; b < 4; b++) {
        u[4 * b + 0] = _mm512_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 1] = _mm512_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 2] = _mm512_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
        u[4 * b + 3] = _mm512_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
    }
    /* 4x4 transpose of 128-bit lanes for each c */
    for (int c = 0; c < 4; c++) {
        __m512i s0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
        __m512i s1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
        __m512i s2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        __m512i s3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
        r[0 + c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
        r[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
    }
}

/* 32 code bytes (64 E2M1 codes, low nibble first) -> 64 bytes through a 16-entry LUT. */
AI __m512i unpack_codes(__m256i c, __m512i lut)
{
    __m512i w = _mm512_cvtepu8_epi16(c);
    w = _mm512_and_si512(_mm512_or_si512(w, _mm512_slli_epi16(w, 4)), _mm512_set1_epi16(0x0f0f));
    return _mm512_shuffle_epi8(lut, w);
}

static __mmask16 col_mask(int c0, int n0, int n1)
{
    int lo = n0 > c0 ? n0 - c0 : 0, hi = n1 - c0 < 16 ? n1 - c0 : 16;
    if (hi <= lo)
        return 0;
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/* The column groups of a run of `panels` panels of `per_panel` 16-column groups starting
 * at group pg0, against groups [pg0, g1) and columns [n0, n1): ng[q] groups in panel q
 * (0 past the end) and the store mask of each. */
static void panel_groups(int pg0, int g1, int n0, int n1, int panels, int per_panel, int *ng, __mmask16 *mask)
{
    for (int q = 0; q < panels; q++) {
        const int pg = pg0 + q * per_panel;
        ng[q] = pg >= g1 ? 0 : g1 - pg < per_panel ? g1 - pg : per_panel;
        for (int g = 0; g < ng[q]; g++)
            mask[q * per_panel + g] = col_mask((pg + g) * 16, n0, n1);
    }
}

static inline __mmask32 low_mask32(int n)
{
    return n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
}

/* ---- NVFP4 -------------------------------------------------------------------------- */

#ifndef FP4_MR
#define FP4_MR 4 /* activation rows per tile */
#endif
#ifndef FP4_NG
#define FP4_NG 3 /* 16-column groups per panel */
#endif
#ifndef FP4_PANELS
#define FP4_PANELS 2 /* panels sharing each pass over the activations */
#endif
#ifndef KC_BLOCKS
#define KC_BLOCKS 16 /* K blocks (of 16) per panel: 256 k */
#endif

typedef struct fp4_panel {
    int8_t wq[FP4_NG][KC_BLOCKS * 4][16][4];
    int32_t corr[FP4_NG][KC_BLOCKS][16];
    float sw[FP4_NG][KC_BLOCKS][16];
} fp4_panel;

/* Repacks weight rows [c0, c0+16) (rows >= n read as zero), blocks [kb0, kb0+nkb). */
static void fp4_pack_group(const mq_fp4_weight *w, int c0, int kb0, int nkb, fp4_panel *p, int g)
{
    const int nb = w->kp / MQ_FP4_BLOCK;
    const int nv = w->n - c0 < 16 ? w->n - c0 : 16;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nvfp4_e2m1_twice));
    const __m512i twelve = _mm512_set1_epi8(NVFP4_BIAS);
    for (int i = 0; i < nv; i++) { /* as in bf16_pack_group: this chunk now, the next one early */
        const uint8_t *row = w->codes + (size_t)(c0 + i) * (w->kp / 2) + (size_t)kb0 * 8;
        for (int s = 0; s < nkb * 8; s += 64)
            _mm_prefetch((const char *)(row + s), _MM_HINT_T0);
        for (int s = nkb * 8; s < 2 * nkb * 8 && kb0 * 8 + s < w->kp / 2; s += 64)
            _mm_prefetch((const char *)(row + s), _MM_HINT_T1);
        _mm_prefetch((const char *)(w->scales + (size_t)(c0 + i) * nb + kb0), _MM_HINT_T0);
    }
    __m512i r[16];
    for (int sub = 0; sub * 4 < nkb; sub++) {
        const int nbh = nkb - sub * 4 < 4 ? nkb - sub * 4 : 4;
        const __mmask32 lm = low_mask32(nbh * 8);
        for (int i = 0; i < 16; i++) {
            if (i < nv) {
                const uint8_t *src = w->codes + (size_t)(c0 + i) * (w->kp / 2) + (size_t)(kb0 + sub * 4) * 8;
                r[i] = unpack_codes(_mm256_maskz_loadu_epi8(lm, src), lut);
            } else {
                r[i] = _mm512_setzero_si512();
            }
        }
        tr16x16(r);
        for (int j = 0; j < nbh * 4; j++)
            _mm512_store_si512(p->wq[g][sub * 16 + j], r[j]);
        for (int bb = 0; bb < nbh; bb++) {
            __m512i c = _mm512_setzero_si512();
            for (int j = 0; j < 4; j++)
                c = _mm512_dpbusd_epi32(c, twelve, r[bb * 4 + j]);
            _mm512_store_si512(p->corr[g][sub * 4 + bb], _mm512_sub_epi32(_mm512_setzero_si512(), c));
        }
    }
    const __mmask16 sm = (__mmask16)((1u << nkb) - 1u);
    for (int i = 0; i < 16; i++) {
        if (i < nv)
            r[i] = _mm512_castps_si512(
                nvfp4_e4m3_decode16(_mm_maskz_loadu_epi8(sm, w->scales + (size_t)(c0 + i) * nb + kb0)));
        else
            r[i] = _mm512_setzero_si512();
    }
    tr16x16(r);
    for (int b = 0; b < nkb; b++)
        _mm512_store_si512(p->sw[g][b], r[b]);
}

/* One tile: MR activation rows × NG column groups over nkb blocks. */
AI void fp4_tile(const int MR, const int NG, const uint8_t *xb, size_t xstr, const float *xs, size_t sstr,
                 const fp4_panel *p, int nkb, float *y, size_t ldy, const __mmask16 *mask, int first, int last,
                 float alpha)
{
    __m512 acc[6][4];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            acc[m][g] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[g], y + (size_t)m * ldy + g * 16);
    for (int b = 0; b < nkb; b++) {
        __m512i ia[6][4];
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                ia[m][g] = _mm512_load_si512(p->corr[g][b]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m512i wv[4];
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                wv[g] = _mm512_load_si512(p->wq[g][b * 4 + j]);
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) {
                uint32_t x4;
                memcpy(&x4, xb + (size_t)m * xstr + b * 16 + j * 4, 4);
                __m512i xv = _mm512_set1_epi32((int)x4);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++)
                    ia[m][g] = _mm512_dpbusd_epi32(ia[m][g], xv, wv[g]);
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m512 sx = _mm512_set1_ps(xs[(size_t)m * sstr + b]);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) {
                __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(ia[m][g]), _mm512_load_ps(p->sw[g][b]));
                acc[m][g] = _mm512_fmadd_ps(t, sx, acc[m][g]);
            }
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++) {
            __m512 v = last ? _mm512_mul_ps(acc[m][g], _mm512_set1_ps(alpha)) : acc[m][g];
            _mm512_mask_storeu_ps(y + (size_t)m * ldy + g * 16, mask[g], v);
        }
}

#define FP4_TILE_CASE(MR, NG)                                                               \
    case (MR)*8 + (NG):                                                                     \
        if ((MR) <= FP4_MR && (NG) <= FP4_NG)                                               \
            fp4_tile(MR, NG, xb, xstr, xs, sstr, p, nkb, y, ldy, mask, first, last, alpha); \
        break;

static void fp4_tile_any(int mr, int ng, const uint8_t *xb, size_t xstr, const float *xs, size_t sstr,
                         const fp4_panel *p, int nkb, float *y, size_t ldy, const __mmask16 *mask, int first, int last,
                         float alpha)
{
    /* clang-format off */
    switch (mr * 8 + ng) {
    FP4_TILE_CASE(1, 1) FP4_TILE_CASE(1, 2) FP4_TILE_CASE(1, 3) FP4_TILE_CASE(1, 4)
    FP4_TILE_CASE(2, 1) FP4_TILE_CASE(2, 2) FP4_TILE_CASE(2, 3) FP4_TILE_CASE(2, 4)
    FP4_TILE_CASE(3, 1) FP4_TILE_CASE(3, 2) FP4_TILE_CASE(3, 3) FP4_TILE_CASE(3, 4)
    FP4_TILE_CASE(4, 1) FP4_TILE_CASE(4, 2) FP4_TILE_CASE(4, 3) FP4_TILE_CASE(4, 4)
    FP4_TILE_CASE(5, 1) FP4_TILE_CASE(5, 2) FP4_TILE_CASE(5, 3) FP4_TILE_CASE(5, 4)
    FP4_TILE_CASE(6, 1) FP4_TILE_CASE(6, 2) FP4_TILE_CASE(6, 3) FP4_TILE_CASE(6, 4)
    default: break;
    }
    /* clang-format on */
}

static void gemm_fp4_avx512(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    if (n0 >= n1 || x->m <= 0)
        return;
    const int kp = x->kp, nb = kp / MQ_FP4_BLOCK, M = x->m;
    /* NVFP4.md's alpha, times the 1/4 of the doubled integer products (exact). */
    const float alpha = (1.0f / x->g) * (1.0f / w->g) * 0.25f;
    const uint8_t *xbytes = fp4_act_aux_bytes(x);
    const float *xsx = fp4_act_aux_sx(x);
    /* FP4_PANELS panels side by side: each tile's activation bytes, once loaded, serve
     * FP4_PANELS·48 columns, so the activations stream from L3 fewer times. */
    fp4_panel p[FP4_PANELS] __attribute__((aligned(64)));
    const int g0 = n0 / 16, g1 = (n1 + 15) / 16;
    for (int pg0 = g0; pg0 < g1; pg0 += FP4_NG * FP4_PANELS) {
        int ng[FP4_PANELS];
        __mmask16 mask[FP4_PANELS][FP4_NG];
        panel_groups(pg0, g1, n0, n1, FP4_PANELS, FP4_NG, ng, &mask[0][0]);
        for (int kb0 = 0; kb0 < nb; kb0 += KC_BLOCKS) {
            const int nkb = nb - kb0 < KC_BLOCKS ? nb - kb0 : KC_BLOCKS;
            for (int q = 0; q < FP4_PANELS; q++)
                for (int g = 0; g < ng[q]; g++)
                    fp4_pack_group(w, (pg0 + q * FP4_NG + g) * 16, kb0, nkb, &p[q], g);
            for (int m0 = 0; m0 < M; m0 += FP4_MR) {
                const int mr = M - m0 < FP4_MR ? M - m0 : FP4_MR;
                for (int q = 0; q < FP4_PANELS && ng[q]; q++)
                    fp4_tile_any(mr, ng[q], xbytes + (size_t)m0 * kp + (size_t)kb0 * 16, (size_t)kp,
                                 xsx + (size_t)m0 * nb + kb0, (size_t)nb, &p[q], nkb,
                                 y + (size_t)m0 * ldy + (size_t)(pg0 + q * FP4_NG) * 16, ldy, mask[q], kb0 == 0,
                                 kb0 + nkb == nb, alpha);
            }
        }
    }
}

/* Activation aux, byte-identical to fp4_act_prepare_rows_ref. */
static void fp4_act_prepare_rows_avx512(mq_fp4_act *a, int r0, int r1)
{
    const int kp = a->kp, nb = kp / MQ_FP4_BLOCK;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nvfp4_e2m1_biased));
    uint8_t *bytes = fp4_act_aux_bytes(a);
    float *sx = fp4_act_aux_sx(a);
    for (int r = r0; r < r1; r++) {
        const uint8_t *c = a->codes + (size_t)r * (kp / 2);
        uint8_t *o = bytes + (size_t)r * kp;
        for (int i = 0; i < kp / 2; i += 32) {
            const int n = kp / 2 - i < 32 ? kp / 2 - i : 32;
            __m512i v = unpack_codes(_mm256_maskz_loadu_epi8(low_mask32(n), c + i), lut);
            _mm512_mask_storeu_epi8(o + 2 * i, n >= 32 ? ~(__mmask64)0 : (((__mmask64)1 << (2 * n)) - 1), v);
        }
        const uint8_t *s = a->scales + (size_t)r * nb;
        float *d = sx + (size_t)r * nb;
        for (int b = 0; b < nb; b += 16) {
            const int n = nb - b < 16 ? nb - b : 16;
            const __mmask16 m = (__mmask16)((1u << n) - 1u);
            _mm512_mask_storeu_ps(d + b, m, nvfp4_e4m3_decode16(_mm_maskz_loadu_epi8(m, s + b)));
        }
    }
}

/* ---- BF16 ----------------------------------------------------------------------------- */

#define BF_MR 6 /* rows per GEMM tile */
#define BF_NG 4 /* 16-column groups per panel */
#ifndef KC_BF16
#define KC_BF16 256 /* k per panel (even) */
#endif
#ifndef BF_PANELS
#define BF_PANELS 1 /* panels sharing each pass over x (2 measured slower) */
#endif

typedef struct bf16_panel {
    uint32_t w[BF_NG][KC_BF16 / 2][16]; /* [group][k pair][column] = two BF16 */
} bf16_panel;

/* Repacks rows [c0, c0+16) (rows >= n read as zero), k in [k0, k0+kc), odd k padded with 0. */
static void bf16_pack_group(const mq_bf16_weight *w, int c0, int k0, int kc, bf16_panel *p, int g)
{
    const int nv = w->n - c0 < 16 ? w->n - c0 : 16;
    __m512i r[16];
    for (int s = 0; s < kc; s += 32) {
        const int len = kc - s < 32 ? kc - s : 32;
        const __mmask32 lm = low_mask32(len);
        for (int i = 0; i < 16; i++)
            r[i] =
                i < nv ? _mm512_maskz_loadu_epi16(lm, w->w + (size_t)(c0 + i) * w->k + k0 + s) : _mm512_setzero_si512();
        tr16x16(r);
        for (int j = 0; j < (len + 1) / 2; j++)
            _mm512_store_si512(p->w[g][s / 2 + j], r[j]);
    }
}

AI void bf16_tile(const int MR, const int NG, const uint16_t *x, size_t ldx, const bf16_panel *p, int kc, float *y,
                  size_t ldy, const __mmask16 *mask, int first)
{
    __m512 acc[BF_MR][BF_NG];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            acc[m][g] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[g], y + (size_t)m * ldy + g * 16);
    const int np = kc / 2;
    for (int q = 0; q < np; q++) {
        __m512i wv[BF_NG];
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            wv[g] = _mm512_load_si512(p->w[g][q]);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            uint32_t x2;
            memcpy(&x2, x + (size_t)m * ldx + 2 * q, 4);
            __m512i xv = _mm512_set1_epi32((int)x2);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                acc[m][g] = _mm512_dpbf16_ps(acc[m][g], (__m512bh)xv, (__m512bh)wv[g]);
        }
    }
    if (kc & 1) { /* odd tail: x's last element alone, never reading past the row */
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m512i xv = _mm512_set1_epi32((int)x[(size_t)m * ldx + kc - 1]);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                acc[m][g] = _mm512_dpbf16_ps(acc[m][g], (__m512bh)xv, (__m512bh)_mm512_load_si512(p->w[g][np]));
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            _mm512_mask_storeu_ps(y + (size_t)m * ldy + g * 16, mask[g], acc[m][g]);
}

#define BF_TILE_CASE(MR, NG) \
    case (MR)*8 + (NG): bf16_tile(MR, NG, x, ldx, p, kc, y, ldy, mask, first); break;

static void bf16_tile_any(int mr, int ng, const uint16_t *x, size_t ldx, const bf16_panel *p, int kc, float *y,
                          size_t ldy, const __mmask16 *mask, int first)
{
    /* clang-format off */
    switch (mr * 8 + ng) {
    BF_TILE_CASE(1, 1) BF_TILE_CASE(1, 2) BF_TILE_CASE(1, 3) BF_TILE_CASE(1, 4)
    BF_TILE_CASE(2, 1) BF_TILE_CASE(2, 2) BF_TILE_CASE(2, 3) BF_TILE_CASE(2, 4)
    BF_TILE_CASE(3, 1) BF_TILE_CASE(3, 2) BF_TILE_CASE(3, 3) BF_TILE_CASE(3, 4)
    BF_TILE_CASE(4, 1) BF_TILE_CASE(4, 2) BF_TILE_CASE(4, 3) BF_TILE_CASE(4, 4)
    BF_TILE_CASE(5, 1) BF_TILE_CASE(5, 2) BF_TILE_CASE(5, 3) BF_TILE_CASE(5, 4)
    BF_TILE_CASE(6, 1) BF_TILE_CASE(6, 2) BF_TILE_CASE(6, 3) BF_TILE_CASE(6, 4)
    default: break;
    }
    /* clang-format on */
}

#ifndef GEMV_PREFETCH
#define GEMV_PREFETCH 512 /* elements ahead (1 KB) */
#endif

/* GEMV: MR (1..8) rows × NR weight rows at a time, row-major weights. */
AI void bf16_gemv_cols(const int MR, const int NR, const uint16_t *x, size_t ldx, const uint16_t *w, int K, float *y,
                       size_t ldy, int n)
{
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++)
            acc[m][r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 32) {
        const __mmask32 lm = low_mask32(K - k);
        __m512i wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) {
            /* a few rows in flight are too few for the hardware prefetcher to keep DRAM busy */
            _mm_prefetch((const char *)(w + (size_t)(n + r) * K + k + GEMV_PREFETCH), _MM_HINT_T0);
            wv[r] = _mm512_maskz_loadu_epi16(lm, w + (size_t)(n + r) * K + k);
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m512i xv = _mm512_maskz_loadu_epi16(lm, x + (size_t)m * ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++)
                acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)xv, (__m512bh)wv[r]);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++)
            y[(size_t)m * ldy + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

#define GEMV_NR(MR) ((MR) <= 2 ? 8 : 6)

/* m <= 4: one pass. m = 5..8: rows 0..3, then rows 4.. over the same 6 weight rows, which
 * are still in L1/L2, so W still streams from DRAM once (a single pass over 8 rows could
 * keep only 3 weight rows in flight, too few to cover DRAM latency). */
#define GEMV_CASE(MR)                                                                              \
    case MR: {                                                                                     \
        const int A = (MR) <= 4 ? (MR) : 4, B = (MR)-A;                                            \
        int n = n0;                                                                                \
        for (; n + GEMV_NR(MR) <= n1; n += GEMV_NR(MR)) {                                          \
            bf16_gemv_cols(A, GEMV_NR(MR), x, ldx, w->w, w->k, y, ldy, n);                         \
            if (B)                                                                                 \
                bf16_gemv_cols(B, GEMV_NR(MR), x + 4 * ldx, ldx, w->w, w->k, y + 4 * ldy, ldy, n); \
        }                                                                                          \
        for (; n < n1; n++) {                                                                      \
            bf16_gemv_cols(A, 1, x, ldx, w->w, w->k, y, ldy, n);                                   \
            if (B)                                                                                 \
                bf16_gemv_cols(B, 1, x + 4 * ldx, ldx, w->w, w->k, y + 4 * ldy, ldy, n);           \
        }                                                                                          \
        break;                                                                                     \
    }

static void bf16_gemv(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                      int n1)
{
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
}

static void gemm_bf16_avx512(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy,
                             int n0, int n1)
{
    if (n0 >= n1 || m <= 0)
        return;
    if (m <= 8) {
        bf16_gemv(x, m, ldx, w, y, ldy, n0, n1);
        return;
    }
    const int K = w->k;
    /* BF_PANELS panels side by side share each tile's pass over x (see the NVFP4 GEMM). */
    bf16_panel p[BF_PANELS] __attribute__((aligned(64)));
    const int g0 = n0 / 16, g1 = (n1 + 15) / 16, span = BF_NG * BF_PANELS;
    for (int pg0 = g0; pg0 < g1; pg0 += span) {
        int ng[BF_PANELS];
        __mmask16 mask[BF_PANELS][BF_NG];
        panel_groups(pg0, g1, n0, n1, BF_PANELS, BF_NG, ng, &mask[0][0]);
        for (int k0 = 0; k0 < K; k0 += KC_BF16) {
            const int kc = K - k0 < KC_BF16 ? K - k0 : KC_BF16;
            for (int q = 0; q < BF_PANELS; q++)
                for (int g = 0; g < ng[q]; g++)
                    bf16_pack_group(w, (pg0 + q * BF_NG + g) * 16, k0, kc, &p[q], g);
            /* The next chunk is up to 128 row pieces: too many streams for the hardware
             * prefetcher, so the tiles below request its lines a few at a time. */
            const int nk0 = k0 + KC_BF16 < K ? k0 + KC_BF16 : 0, npg = nk0 ? pg0 : pg0 + span;
            const int nkc = K - nk0 < KC_BF16 ? K - nk0 : KC_BF16;
            const int lines_per_row = (nkc + 31) / 32, n_lines = npg < g1 ? 16 * span * lines_per_row : 0;
            const int tiles = (m + BF_MR - 1) / BF_MR, per_tile = (n_lines + tiles - 1) / tiles;
            int pf = 0;
            for (int m0 = 0; m0 < m; m0 += BF_MR) {
                const int mr = m - m0 < BF_MR ? m - m0 : BF_MR;
                for (int e = pf + per_tile; pf < e && pf < n_lines; pf++) {
                    const int row = npg * 16 + pf / lines_per_row;
                    if (row < w->n)
                        _mm_prefetch((const char *)(w->w + (size_t)row * K + nk0 + (pf % lines_per_row) * 32),
                                     _MM_HINT_T1);
                }
                for (int q = 0; q < BF_PANELS && ng[q]; q++)
                    bf16_tile_any(mr, ng[q], x + (size_t)m0 * ldx + k0, ldx, &p[q], kc,
                                  y + (size_t)m0 * ldy + (size_t)(pg0 + q * BF_NG) * 16, ldy, mask[q], k0 == 0);
            }
        }
    }
}

void kernels_fill_gemm_avx512(mq_kernel_table *t)
{
    t->gemm_fp4 = gemm_fp4_avx512;
    t->fp4_act_prepare_rows = fp4_act_prepare_rows_avx512;
    t->gemm_bf16 = gemm_bf16_avx512;
}
