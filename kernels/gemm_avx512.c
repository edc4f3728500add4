/* kernels/gemm_avx512.c — NVFP4 GEMM on AVX512-VNNI, BF16 GEMM/GEMV on AVX512_BF16.
 *
 * NVFP4 (NVFP4.md's integer route). Activations arrive prepared (layout.c): signed bytes
 * 2a (the block scale's sign folded in), -12·Σ2a, |s_x| and its split 2^e·(1 + f/8) per
 * block, by quads of rows. Weights are read in a packed form of layout.c (unsigned bytes
 * 2w+12 as [16 columns][4 k] per zmm, then per block either each scale's index form or
 * the table of its 8 products s_w·(1 + f/8)), from w->packed or, without it, from a stack
 * buffer packed per call (index form). Four vpdpbusd (x's 4 bytes broadcast) complete one
 * 16-element block for 16 columns exactly, starting from -12·Σ2a, which removes the
 * weights' +12. Then the scale product s_x·s_w, exactly, and one FMA adds int·s_x·s_w to
 * the FP32 accumulator:
 *   - table form: a load of row f_x of the block's table (16 columns) and a vscalefps by
 *     e_x, both beside the VNNI/FMA pipes: per row, 16 columns and block 4 vpdpbusd + 1
 *     FMA on those pipes, a bound of 0.8 of the VNNI peak;
 *   - table form, few rows (at most fp4_row0_max_rows, kernels_internal.h): only the weight
 *     bytes and row 0 of each table (= |s_w|) are read, 320 of the block's 768 bytes, and
 *     s_x·s_w = |s_w|·|s_x| is one vmulps (two 4-bit significands: exact): 4 vpdpbusd + 1
 *     vmulps + 1 FMA, a bound of 0.67, but with few rows per chunk the tile waits for
 *     weight bytes, not for the pipes;
 *   - index form: t8 = |s_x|·(1 + j/8) for j = 0..7 (one vmulps per row and block, shared
 *     by the tile's 3 column groups), a vpermps picks entry f_w for each column and a
 *     vscalefps by e_w scales it: 4 vpdpbusd + 1 FMA + ½ (vpermps) + ⅓ (vmulps), a bound
 *     of 4/5.83 = 0.69.
 * All three form the same exact product and sum in the same order, so they give the same
 * bits. Measurements and the designs compared: docs/design/kernels.md.
 * A tile is the 4 rows of an activation quad × 3 groups of 16 columns (12 integer and 12
 * FP32 accumulators in registers); loops and cache blocking: gemm_fp4_avx512.
 *
 * BF16. GEMM (m > 8): weights in the packed layout (mq_kernels.h: [group of 16 rows][k
 * pair][16][2], one zmm = 16 columns × one k pair), read in place or, for row-major
 * weights, packed per chunk into a stack buffer; multiplied with vdpbf16ps against x's
 * pair broadcast, 6 rows × 4 groups of FP32 accumulators.
 * GEMV (m <= 8): packed weights are read one group of 16 rows at a time, k pairs in order
 * (each thread's share is one contiguous stream); row-major ones a few rows at a time
 * with every weight zmm used for all m rows. Either way W streams from memory once.
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

/* The column groups of a panel of up to per_panel 16-column groups starting at group pg0,
 * against groups [pg0, g1) and columns [n0, n1): *ng groups, and the store mask of each. */
static void panel_groups(int pg0, int g1, int n0, int n1, int per_panel, int *ng, __mmask16 *mask)
{
    *ng = g1 - pg0 < per_panel ? g1 - pg0 : per_panel;
    for (int g = 0; g < *ng; g++)
        mask[g] = col_mask((pg0 + g) * 16, n0, n1);
}

/* The next chunk of packed weights, requested into L2 a few lines per tile while the
 * current chunk is computed: `groups` runs of `lines` 64-byte lines, `gstr` bytes apart,
 * spread over `tiles` tiles. */
typedef struct next_chunk {
    const char *p;
    size_t gstr, bstr;
    int lines, total, per, done, blines;
} next_chunk;

static void next_chunk_init(next_chunk *c, const void *p, size_t gstr, int groups, int lines, int tiles)
{
    c->p = p;
    c->gstr = gstr;
    c->lines = lines;
    c->total = p ? groups * lines : 0;
    c->per = (c->total + tiles - 1) / tiles;
    c->done = 0;
    c->blines = lines; /* one run per group */
    c->bstr = 0;
}

/* Only the first `used` of every `per_block` lines of each run (blocks bstr bytes apart):
 * the lines a tile that skips part of each block reads. */
static void next_chunk_blocks(next_chunk *c, int used, int per_block, size_t bstr, int tiles)
{
    c->lines = c->lines / per_block * used;
    c->total = c->p ? c->total / per_block * used : 0;
    c->per = (c->total + tiles - 1) / tiles;
    c->blines = used;
    c->bstr = bstr;
}

static inline void next_chunk_step(next_chunk *c)
{
    for (int e = c->done + c->per; c->done < e && c->done < c->total; c->done++) {
        const int l = c->done % c->lines;
        _mm_prefetch(c->p + (size_t)(c->done / c->lines) * c->gstr + (size_t)(l / c->blines) * c->bstr +
                         (size_t)(l % c->blines) * 64,
                     _MM_HINT_T1);
    }
}

static inline __mmask32 low_mask32(int n)
{
    return n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
}

/* ---- NVFP4 -------------------------------------------------------------------------- */

#ifndef FP4_NG
#define FP4_NG 3 /* 16-column groups per panel */
#endif
#ifndef FP4_MC
#define FP4_MC 256 /* activation rows per block (a multiple of 4), packed weights */
#endif
#ifndef FP4_MC_TABLE
#define FP4_MC_TABLE \
    512 /* the same for the table form: its panels are 2.4 times larger, fewer passes measured faster */
#endif
#ifndef KC_BLOCKS
#define KC_BLOCKS 16 /* K blocks (of 16) per pass over the activations: 256 k */
#endif

/* Packs weight rows [c0, c0+16) (rows >= n as weight 0, scale 0), blocks [kb0, kb0+nkb),
 * into dst (block b at dst + (b - kb0)·bs): the packed layout of layout.c, in the table
 * form if `table` (bs = FP4_TABLE_BYTES) or the index form (bs = FP4_PACK_BYTES),
 * byte-identical to fp4_weight_pack_rows_ref. */
static void fp4_pack_group(const mq_fp4_weight *w, int c0, int kb0, int nkb, int table, uint8_t *dst)
{
    const size_t bs = FP4_BLOCK_BYTES(table);
    const int nb = w->kp / MQ_FP4_BLOCK;
    const int nv = w->n - c0 < 16 ? w->n - c0 : 16;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nvfp4_e2m1_biased));
    const __m512i twice_bias = _mm512_set1_epi8(2 * NVFP4_BIAS);
    for (int i = 0; i < nv; i++) { /* as in bf16_pack_group: this chunk now, the next one early */
        const uint8_t *row = w->codes + (size_t)(c0 + i) * (w->kp / 2) + (size_t)kb0 * 8;
        for (int s = 0; s < nkb * 8; s += 64)
            _mm_prefetch((const char *)(row + s), _MM_HINT_T0);
        for (int s = nkb * 8; s < 2 * nkb * 8 && kb0 * 8 + s < w->kp / 2; s += 64)
            _mm_prefetch((const char *)(row + s), _MM_HINT_T1);
        _mm_prefetch((const char *)(w->scales + (size_t)(c0 + i) * nb + kb0), _MM_HINT_T0);
    }
    _Alignas(64) uint8_t sc[16][16]; /* [row][block] scale bytes of a run of 16 blocks */
    __m512i r[16];
    for (int b0 = 0; b0 < nkb; b0 += 16) {
        const int nbs = nkb - b0 < 16 ? nkb - b0 : 16;
        const __mmask16 sm = (__mmask16)((1u << nbs) - 1u);
        for (int i = 0; i < 16; i++)
            _mm_store_si128((__m128i *)sc[i],
                            _mm_maskz_loadu_epi8(i < nv ? sm : 0, w->scales + (size_t)(c0 + i) * nb + kb0 + b0));
        for (int sub = 0; sub * 4 < nbs; sub++) {
            const int nbh = nbs - sub * 4 < 4 ? nbs - sub * 4 : 4, bb0 = b0 + sub * 4;
            const __mmask32 lm = low_mask32(nbh * 8);
            for (int i = 0; i < 16; i++) {
                const uint8_t *src = w->codes + (size_t)(c0 + i) * (w->kp / 2) + (size_t)(kb0 + bb0) * 8;
                __m512i v = unpack_codes(_mm256_maskz_loadu_epi8(i < nv ? lm : 0, src), lut); /* code 0 -> 12 */
                __mmask64 neg = 0; /* a negative block scale: 24 - byte is the negated weight */
                for (int q = 0; q < nbh; q++)
                    if (sc[i][sub * 4 + q] & 0x80)
                        neg |= (__mmask64)0xffff << (16 * q);
                r[i] = _mm512_mask_sub_epi8(v, neg, twice_bias, v);
            }
            tr16x16(r); /* r[4·bb + j]: k-step j of block bb, [16 rows][4 k] */
            for (int bb = 0; bb < nbh; bb++)
                for (int j = 0; j < 4; j++)
                    _mm512_store_si512(dst + (size_t)(bb0 + bb) * bs + j * 64, r[bb * 4 + j]);
        }
        for (int b = 0; b < nbs; b++) {
            float *f = (float *)(dst + (size_t)(b0 + b) * bs + FP4_PACK_SCALE);
            if (table) {
                for (int i = 0; i < 16; i++)
                    f[i] = nvfp4_e4m3_decode(sc[i][b] & 0x7f);
                const __m512 s1 = _mm512_load_ps(f);
                for (int j = 7; j >= 0; j--) /* fp4_table_entry: exact */
                    _mm512_store_ps(f + 16 * j, _mm512_mul_ps(s1, _mm512_set1_ps(1.0f + 0.125f * (float)j)));
            } else {
                for (int i = 0; i < 16; i++)
                    f[i] = fp4_scale_index_form(sc[i][b]);
            }
        }
    }
}

static void fp4_weight_pack_rows_avx512(mq_fp4_weight *w, int r0, int r1)
{
    const int nb = w->kp / MQ_FP4_BLOCK;
    for (int g = r0 / 16; g * 16 < r1; g++)
        for (int kb0 = 0; kb0 < nb; kb0 += 16)
            fp4_pack_group(w, g * 16, kb0, nb - kb0 < 16 ? nb - kb0 : 16, w->table,
                           w->packed + ((size_t)g * nb + kb0) * FP4_BLOCK_BYTES(w->table));
}

/* How a tile forms s_x·s_w, exactly in each case (so all give the same bits): */
enum {
    FP4_INDEX = 0, /* index form: vscalefps(vpermps(f_w, t8_x), e_w), t8_x = |s_x|·(1 + j/8) */
    FP4_TABLE = 1, /* table form: vscalefps(table row f_x, e_x) */
    FP4_ROW0 = 2,  /* table form, row 0 only (= |s_w|): |s_w|·|s_x|, one vmulps (two 4-bit
                      significands: exact); reads 320 of the block's 768 bytes */
};

/* One tile: the 4 activation rows of a quad × NG groups of 16 columns over nkb packed
 * blocks (group g's first block at pk + g·gstr; T: FP4_INDEX, FP4_TABLE or FP4_ROW0);
 * rows >= mr are padding, computed but not stored. Per row, group and block: 4 vpdpbusd
 * from the row's correction; s_x·s_w exactly (T says how); one FMA. */
AI void fp4_tile(const int NG, const int T, const fp4_qblock *xq, const uint8_t *pk, size_t gstr, int nkb, float *y,
                 size_t ldy, int mr, const __mmask16 *mask, int first, int last, const float *alpha)
{
    const size_t bs = FP4_BLOCK_BYTES(T);
    __m512 acc[FP4_QUAD][4];
#pragma GCC unroll 8
    for (int m = 0; m < FP4_QUAD; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            acc[m][g] =
                first || m >= mr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[g], y + (size_t)m * ldy + g * 16);
    const __m512 steps = _mm512_setr_ps(1.0f, 1.125f, 1.25f, 1.375f, 1.5f, 1.625f, 1.75f, 1.875f, 1.0f, 1.125f, 1.25f,
                                        1.375f, 1.5f, 1.625f, 1.75f, 1.875f);
    for (int b = 0; b < nkb; b++) {
        const fp4_qblock *q = xq + b;
        const uint8_t *pb = pk + (size_t)b * bs;
        __m512i ia[FP4_QUAD][4];
#pragma GCC unroll 8
        for (int m = 0; m < FP4_QUAD; m++) {
            const __m512i c = _mm512_set1_epi32(q->corr[m]);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                ia[m][g] = c;
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m512i wv[4];
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++)
                wv[g] = _mm512_load_si512(pb + (size_t)g * gstr + j * 64);
#pragma GCC unroll 8
            for (int m = 0; m < FP4_QUAD; m++) {
                int32_t x4;
                memcpy(&x4, &q->bytes[m][j * 4], 4);
                const __m512i xv = _mm512_set1_epi32(x4);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++)
                    ia[m][g] = _mm512_dpbusd_epi32(ia[m][g], wv[g], xv);
            }
        }
        if (T == FP4_TABLE) {
#pragma GCC unroll 8
            for (int m = 0; m < FP4_QUAD; m++) {
                /* row f_x of each column's table, times 2^e_x: s_x·s_w exactly */
                const uint8_t *tr = pb + FP4_PACK_SCALE + q->sf[m];
                const __m512 ex = _mm512_set1_ps(q->se[m]);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++) {
                    const __m512 s = _mm512_scalef_ps(_mm512_load_ps(tr + (size_t)g * gstr), ex);
                    acc[m][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][g]), s, acc[m][g]);
                }
            }
            continue;
        }
        __m512 ws[4]; /* row 0 of each table (|s_w|, FP4_ROW0), or the index forms */
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            ws[g] = _mm512_load_ps(pb + (size_t)g * gstr + FP4_PACK_SCALE);
        if (T == FP4_ROW0) {
#pragma GCC unroll 8
            for (int m = 0; m < FP4_QUAD; m++) {
                const __m512 sx = _mm512_set1_ps(q->sx[m]);
#pragma GCC unroll 8
                for (int g = 0; g < NG; g++)
                    acc[m][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][g]), _mm512_mul_ps(ws[g], sx), acc[m][g]);
            }
            continue;
        }
#pragma GCC unroll 8
        for (int m = 0; m < FP4_QUAD; m++) {
            /* t8 = |s_x|·(1 + j/8), exact; made here rather than stored with the activations,
             * whose bytes per block it would double (measured slower: x streams from L3) */
            const __m512 t8 = _mm512_mul_ps(_mm512_set1_ps(q->sx[m]), steps);
#pragma GCC unroll 8
            for (int g = 0; g < NG; g++) {
                const __m512 s = _mm512_scalef_ps(_mm512_permutexvar_ps(_mm512_castps_si512(ws[g]), t8), ws[g]);
                acc[m][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][g]), s, acc[m][g]);
            }
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < FP4_QUAD; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            if (m < mr)
                _mm512_mask_storeu_ps(y + (size_t)m * ldy + g * 16, mask[g],
                                      last ? _mm512_mul_ps(acc[m][g], _mm512_set1_ps(alpha[m])) : acc[m][g]);
}

#define FP4_TILE_CASE(NG, T) \
    case (NG)*4 + (T): fp4_tile(NG, T, xq, pk, gstr, nkb, y, ldy, mr, mask, first, last, alpha); break;

static void fp4_tile_any(int ng, int form, const fp4_qblock *xq, const uint8_t *pk, size_t gstr, int nkb, float *y,
                         size_t ldy, int mr, const __mmask16 *mask, int first, int last, const float *alpha)
{
    /* clang-format off */
    switch (ng * 4 + form) {
    FP4_TILE_CASE(1, FP4_INDEX) FP4_TILE_CASE(1, FP4_TABLE) FP4_TILE_CASE(1, FP4_ROW0)
    FP4_TILE_CASE(2, FP4_INDEX) FP4_TILE_CASE(2, FP4_TABLE) FP4_TILE_CASE(2, FP4_ROW0)
    FP4_TILE_CASE(3, FP4_INDEX) FP4_TILE_CASE(3, FP4_TABLE) FP4_TILE_CASE(3, FP4_ROW0)
    default: break;
    }
    /* clang-format on */
}

/* Loops, outermost first: rows in blocks of FP4_MC (FP4_MC_TABLE for the table form;
 * packed weights only), so a block's activations stay in cache while every panel of
 * weights passes over them; panels of FP4_NG groups of 16 columns; chunks of KC_BLOCKS
 * blocks of K, a panel's chunk (15 KB, 36 KB in the table form) staying in L1 while every
 * quad of rows passes over it; quads. With w->packed the tiles read the
 * packed weights in place (and the next chunk is requested into L2 meanwhile); without,
 * each chunk is packed into a stack buffer first (the same bytes), once per call. */
static void gemm_fp4_avx512(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    if (n0 >= n1 || x->m <= 0)
        return;
    const int nb = x->kp / MQ_FP4_BLOCK, M = x->m;
    _Alignas(64) uint8_t stack[FP4_NG * KC_BLOCKS * FP4_PACK_BYTES];
    const int g0 = n0 / 16, g1 = (n1 + 15) / 16;
    const int table = w->packed && w->table;
    const int form = !table ? FP4_INDEX : M <= fp4_row0_max_rows ? FP4_ROW0 : FP4_TABLE;
    const int mc = !w->packed ? M : table ? FP4_MC_TABLE : FP4_MC; /* repacking once per call beats blocking the rows */
    const size_t bs = FP4_BLOCK_BYTES(table);
    for (int mb = 0; mb < M; mb += mc) {
        const int me = M - mb < mc ? M : mb + mc, nq = (me - mb + FP4_QUAD - 1) / FP4_QUAD;
        for (int pg0 = g0; pg0 < g1; pg0 += FP4_NG) {
            int ng;
            __mmask16 mask[FP4_NG];
            panel_groups(pg0, g1, n0, n1, FP4_NG, &ng, mask);
            for (int kb0 = 0; kb0 < nb; kb0 += KC_BLOCKS) {
                const int nkb = nb - kb0 < KC_BLOCKS ? nb - kb0 : KC_BLOCKS;
                const uint8_t *pk = stack;
                size_t gstr = (size_t)KC_BLOCKS * FP4_PACK_BYTES;
                next_chunk nc;
                next_chunk_init(&nc, NULL, 0, 0, 0, 1);
                if (w->packed) {
                    gstr = (size_t)nb * bs;
                    pk = w->packed + ((size_t)pg0 * nb + kb0) * bs;
                    const int nkb0 = kb0 + KC_BLOCKS < nb ? kb0 + KC_BLOCKS : 0;
                    const int npg = nkb0 ? pg0 : pg0 + FP4_NG;
                    if (npg < g1)
                        next_chunk_init(&nc, w->packed + ((size_t)npg * nb + nkb0) * bs, gstr, FP4_NG,
                                        (nb - nkb0 < KC_BLOCKS ? nb - nkb0 : KC_BLOCKS) * (int)(bs / 64), nq);
                    if (form == FP4_ROW0) /* the weight bytes and row 0 */
                        next_chunk_blocks(&nc, FP4_PACK_BYTES / 64, (int)(bs / 64), bs, nq);
                } else {
                    for (int g = 0; g < ng; g++)
                        fp4_pack_group(w, (pg0 + g) * 16, kb0, nkb, 0, stack + g * gstr);
                }
                for (int m0 = mb; m0 < me; m0 += FP4_QUAD) {
                    /* NVFP4.md's alpha per row, times the 1/4 of the doubled integer products (exact) */
                    float alpha[FP4_QUAD];
                    for (int m = 0; m < FP4_QUAD; m++)
                        alpha[m] = m0 + m < M ? fp4_row_alpha(x, w, m0 + m, 0.25f) : 0.0f;
                    next_chunk_step(&nc);
                    fp4_tile_any(ng, form, fp4_act_qblock(x, m0, kb0), pk, gstr, nkb,
                                 y + (size_t)m0 * ldy + (size_t)pg0 * 16, ldy, M - m0 < FP4_QUAD ? M - m0 : FP4_QUAD,
                                 mask, kb0 == 0, kb0 + nkb == nb, alpha);
                }
            }
        }
    }
}

/* Activation aux, byte-identical to fp4_act_prepare_rows_ref (padding rows included). */
static void fp4_act_prepare_rows_avx512(mq_fp4_act *a, int r0, int r1)
{
    const int kp = a->kp, nb = kp / MQ_FP4_BLOCK;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nvfp4_e2m1_twice));
    const __m512i ones = _mm512_set1_epi8(1);
    const int rend = r1 == a->m ? (r1 + FP4_QUAD - 1) / FP4_QUAD * FP4_QUAD : r1;
    for (int r = r0; r < rend; r++) {
        const int real = r < a->m, l = r % FP4_QUAD;
        const uint8_t *c = a->codes + (size_t)(real ? r : 0) * (kp / 2), *s = a->scales + (size_t)(real ? r : 0) * nb;
        for (int b = 0; b < nb; b += 4) { /* 4 blocks: 32 code bytes, 64 elements */
            const int nbh = nb - b < 4 ? nb - b : 4;
            __m512i v = unpack_codes(_mm256_maskz_loadu_epi8(real ? low_mask32(nbh * 8) : 0, c + b * 8), lut);
            __mmask64 neg = 0;
            for (int q = 0; q < nbh && real; q++)
                if (s[b + q] & 0x80)
                    neg |= (__mmask64)0xffff << (16 * q);
            v = _mm512_mask_sub_epi8(v, neg, _mm512_setzero_si512(), v);
            /* Σ bytes per block: dword sums, then the 4 dwords of each 128-bit lane */
            __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, v);
            t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
            t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
            t = _mm512_mullo_epi32(_mm512_maskz_compress_epi32(0x1111, t), _mm512_set1_epi32(-NVFP4_BIAS));
            int32_t corr[4];
            _mm_storeu_si128((__m128i *)corr, _mm512_castsi512_si128(t));
            __m128i blk[4] = { _mm512_extracti32x4_epi32(v, 0), _mm512_extracti32x4_epi32(v, 1),
                               _mm512_extracti32x4_epi32(v, 2), _mm512_extracti32x4_epi32(v, 3) };
            for (int q = 0; q < nbh; q++) {
                fp4_qblock *qb = fp4_act_qblock(a, r, b + q);
                const uint8_t sc = real ? s[b + q] : 0;
                _mm_store_si128((__m128i *)qb->bytes[l], blk[q]);
                qb->corr[l] = corr[q];
                fp4_qblock_set_scale(qb, l, sc, nvfp4_e4m3_decode(sc & 0x7f));
            }
        }
    }
}

/* ---- BF16 ----------------------------------------------------------------------------- */

#define BF_MR 6 /* rows per GEMM tile */
#define BF_NG 4 /* 16-column groups per panel */
#ifndef KC_BF16
#define KC_BF16 256 /* k per chunk (even) */
#endif
#ifndef BF_MC
#define BF_MC 192 /* x rows per block (a multiple of BF_MR), packed weights */
#endif

/* Writes rows [c0, c0+16) of row-major W (row r at src + (r - c0)·ld; rows >= nv read as
 * zero), k in [k0, k0+kc), as packed k pairs at dst ([kc/2 rounded up][16] uint32; an odd
 * k's partner is 0). */
static void bf16_pack_group(const uint16_t *src, size_t ld, int nv, int k0, int kc, uint32_t *dst)
{
    __m512i r[16];
    for (int s = 0; s < kc; s += 32) {
        const int len = kc - s < 32 ? kc - s : 32;
        const __mmask32 lm = low_mask32(len);
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_maskz_loadu_epi16(i < nv ? lm : 0, src + (size_t)i * ld + k0 + s);
        tr16x16(r);
        for (int j = 0; j < (len + 1) / 2; j++)
            _mm512_store_si512(dst + (size_t)(s / 2 + j) * 16, r[j]);
    }
}

static void bf16_weight_pack_rows_avx512(uint16_t *dst, int n, int k, const uint16_t *src, size_t ld, int r0, int r1)
{
    const int kp = bf16_kp(k), rend = r1 == n ? (n + 15) / 16 * 16 : r1;
    for (int g = r0 / 16; g * 16 < rend; g++) {
        const int c0 = g * 16, nv = (r1 < c0 + 16 ? r1 : c0 + 16) - c0;
        bf16_pack_group(src + (size_t)(c0 - r0) * ld, ld, nv, 0, k, (uint32_t *)(dst + (size_t)g * 16 * (size_t)kp));
    }
}

/* MR rows of x × NG groups over kc k (np = kc/2 pairs of packed weights from pw, group g
 * at pw + g·gstr uint32s); an odd kc ends with x's last element alone. */
AI void bf16_tile(const int MR, const int NG, const uint16_t *x, size_t ldx, const uint32_t *pw, size_t gstr, int kc,
                  float *y, size_t ldy, const __mmask16 *mask, int first)
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
            wv[g] = _mm512_load_si512(pw + (size_t)g * gstr + (size_t)q * 16);
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
                acc[m][g] = _mm512_dpbf16_ps(acc[m][g], (__m512bh)xv,
                                             (__m512bh)_mm512_load_si512(pw + (size_t)g * gstr + (size_t)np * 16));
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int g = 0; g < NG; g++)
            _mm512_mask_storeu_ps(y + (size_t)m * ldy + g * 16, mask[g], acc[m][g]);
}

#define BF_TILE_CASE(MR, NG) \
    case (MR)*8 + (NG): bf16_tile(MR, NG, x, ldx, pw, gstr, kc, y, ldy, mask, first); break;

static void bf16_tile_any(int mr, int ng, const uint16_t *x, size_t ldx, const uint32_t *pw, size_t gstr, int kc,
                          float *y, size_t ldy, const __mmask16 *mask, int first)
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

/* GEMV on packed weights: MR (1..4) rows of x × one group of 16 weight rows, k pairs in
 * order, so the group is one contiguous stream; U accumulators per row hide the latency
 * of vdpbf16ps when MR is small. U is the same for every MR (GEMV_U), so a row is summed
 * in the same order whatever rows share the call: the engine's batched decode relies on
 * it to give each sequence the numbers it gets alone. */
AI void bf16_gemv_group(const int MR, const int U, const uint16_t *x, size_t ldx, const uint32_t *pw, int K, float *y,
                        size_t ldy, __mmask16 mask)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 4
        for (int u = 0; u < U; u++)
            acc[m][u] = _mm512_setzero_ps();
    const int np = K / 2;
    int q = 0;
    for (; q + U <= np; q += U) {
        _mm_prefetch((const char *)(pw + (size_t)q * 16 + GEMV_PREFETCH), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int u = 0; u < U; u++) {
            const __m512i wv = _mm512_load_si512(pw + (size_t)(q + u) * 16);
#pragma GCC unroll 4
            for (int m = 0; m < MR; m++) {
                uint32_t x2;
                memcpy(&x2, x + (size_t)m * ldx + 2 * (q + u), 4);
                acc[m][u] = _mm512_dpbf16_ps(acc[m][u], (__m512bh)_mm512_set1_epi32((int)x2), (__m512bh)wv);
            }
        }
    }
    for (; q < np; q++) {
        const __m512i wv = _mm512_load_si512(pw + (size_t)q * 16);
#pragma GCC unroll 4
        for (int m = 0; m < MR; m++) {
            uint32_t x2;
            memcpy(&x2, x + (size_t)m * ldx + 2 * q, 4);
            acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)_mm512_set1_epi32((int)x2), (__m512bh)wv);
        }
    }
    if (K & 1) {
        const __m512i wv = _mm512_load_si512(pw + (size_t)np * 16);
#pragma GCC unroll 4
        for (int m = 0; m < MR; m++)
            acc[m][0] =
                _mm512_dpbf16_ps(acc[m][0], (__m512bh)_mm512_set1_epi32((int)x[(size_t)m * ldx + K - 1]), (__m512bh)wv);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 4
        for (int u = 1; u < U; u++)
            acc[m][0] = _mm512_add_ps(acc[m][0], acc[m][u]);
        _mm512_mask_storeu_ps(y + (size_t)m * ldy, mask, acc[m][0]);
    }
}

#define GEMV_U 4 /* accumulators per row of the packed GEMV */

/* m <= 4 rows in one pass per group; 5..8 in two passes over the same group (still in L1). */
static void bf16_gemv_packed(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy,
                             int n0, int n1)
{
    const int K = w->k, kp = bf16_kp(K);
    for (int g = n0 / 16; g * 16 < n1; g++) {
        const uint32_t *pw = (const uint32_t *)w->w + (size_t)g * 8 * (size_t)kp;
        const __mmask16 mask = col_mask(g * 16, n0, n1);
        float *yg = y + (size_t)g * 16;
        for (int m0 = 0; m0 < m; m0 += 4) {
            const uint16_t *xm = x + (size_t)m0 * ldx;
            float *ym = yg + (size_t)m0 * ldy;
            switch (m - m0 < 4 ? m - m0 : 4) {
            case 1: bf16_gemv_group(1, GEMV_U, xm, ldx, pw, K, ym, ldy, mask); break;
            case 2: bf16_gemv_group(2, GEMV_U, xm, ldx, pw, K, ym, ldy, mask); break;
            case 3: bf16_gemv_group(3, GEMV_U, xm, ldx, pw, K, ym, ldy, mask); break;
            default: bf16_gemv_group(4, GEMV_U, xm, ldx, pw, K, ym, ldy, mask); break;
            }
        }
    }
}

/* GEMM, m > 8 (and any m for mq_gemm_bf16_tiled: a row is summed the same way in a tile
 * of any height). Loops, outermost first: x rows in blocks of BF_MC (packed weights only),
 * panels of BF_NG groups, chunks of KC_BF16 k (a panel's chunk, 32 KB, stays in L1 while
 * every tile of BF_MR rows passes over it), tiles. Packed weights are read in place, the
 * next chunk requested into L2 meanwhile; row-major ones are packed per chunk into a
 * stack buffer. */
static void bf16_gemm(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                      int n1)
{
    const int K = w->k, kp = bf16_kp(K);
    _Alignas(64) uint32_t stack[BF_NG * KC_BF16 / 2 * 16];
    const int g0 = n0 / 16, g1 = (n1 + 15) / 16;
    const int mc = w->packed ? BF_MC : m;
    for (int mb = 0; mb < m; mb += mc) {
        const int me = m - mb < mc ? m : mb + mc, tiles = (me - mb + BF_MR - 1) / BF_MR;
        for (int pg0 = g0; pg0 < g1; pg0 += BF_NG) {
            int ng;
            __mmask16 mask[BF_NG];
            panel_groups(pg0, g1, n0, n1, BF_NG, &ng, mask);
            for (int k0 = 0; k0 < K; k0 += KC_BF16) {
                const int kc = K - k0 < KC_BF16 ? K - k0 : KC_BF16;
                const uint32_t *pw = stack;
                size_t gstr = KC_BF16 / 2 * 16; /* uint32s between groups */
                next_chunk nc;
                next_chunk_init(&nc, NULL, 0, 0, 0, 1);
                if (w->packed) {
                    gstr = (size_t)kp / 2 * 16;
                    pw = (const uint32_t *)w->w + (size_t)pg0 * gstr + (size_t)k0 / 2 * 16;
                    const int nk0 = k0 + KC_BF16 < K ? k0 + KC_BF16 : 0, npg = nk0 ? pg0 : pg0 + BF_NG;
                    if (npg < g1) /* one 64-byte line per k pair */
                        next_chunk_init(&nc, (const uint32_t *)w->w + (size_t)npg * gstr + (size_t)nk0 / 2 * 16,
                                        gstr * 4, BF_NG, K - nk0 < KC_BF16 ? (K - nk0 + 1) / 2 : KC_BF16 / 2, tiles);
                } else {
                    for (int g = 0; g < ng; g++) {
                        const int c0 = (pg0 + g) * 16;
                        bf16_pack_group(w->w + (size_t)c0 * K, (size_t)K, w->n - c0 < 16 ? w->n - c0 : 16, k0, kc,
                                        stack + (size_t)g * gstr);
                    }
                }
                for (int m0 = mb; m0 < me; m0 += BF_MR) {
                    next_chunk_step(&nc);
                    bf16_tile_any(me - m0 < BF_MR ? me - m0 : BF_MR, ng, x + (size_t)m0 * ldx + k0, ldx, pw, gstr, kc,
                                  y + (size_t)m0 * ldy + (size_t)pg0 * 16, ldy, mask, k0 == 0);
                }
            }
        }
    }
}

static void gemm_bf16_avx512(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy,
                             int n0, int n1)
{
    if (n0 >= n1 || m <= 0)
        return;
    if (m > 8)
        bf16_gemm(x, m, ldx, w, y, ldy, n0, n1);
    else if (w->packed)
        bf16_gemv_packed(x, m, ldx, w, y, ldy, n0, n1);
    else
        bf16_gemv(x, m, ldx, w, y, ldy, n0, n1);
}

void kernels_fill_gemm_avx512(mq_kernel_table *t)
{
    t->gemm_fp4 = gemm_fp4_avx512;
    t->fp4_weight_pack_rows = fp4_weight_pack_rows_avx512;
    t->fp4_act_prepare_rows = fp4_act_prepare_rows_avx512;
    t->gemm_bf16 = gemm_bf16_avx512;
    t->gemm_bf16_tiled = bf16_gemm;
    t->bf16_weight_pack_rows = bf16_weight_pack_rows_avx512;
}
