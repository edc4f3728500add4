/* kernels/attn_avx512.c — causal GQA attention over the paged BF16 KV cache, AVX-512.
 *
 * Flash-style: one kv-head at a time, a tile of query rows (the group's q-heads × a
 * block of query tokens, up to ROWS_MAX rows) walks the keys in tiles of TK = 32 with an
 * online softmax; no score matrix, no allocation (all buffers on the stack, about 290 KiB).
 * K and V are read once per kv-head and row tile, so decode (n_tok == 1) streams the
 * cache once for all q-heads of the group.
 *
 * Numerics of this fast path (the scalar reference in ref.c is FP32 throughout):
 *  - Q is rounded to BF16 for QKᵀ (vdpbf16ps, FP32 accumulation);
 *  - probabilities are rounded to BF16 for PV (vdpbf16ps, FP32 accumulation), and the
 *    softmax denominator sums those same rounded values, so each output is a convex
 *    combination of V rows with BF16 weights;
 *  - scores, max, exp (ops_exp512, ~1 ulp) and the running sums are FP32.
 * Against FP64 attention the error is about 2^-9 relative to max|v| (tests check it).
 *
 * Layouts of the tile buffers:
 *  kt[dp][j]   uint32 = K[j][2dp], K[j][2dp+1] as a BF16 pair: key j in lane j, so one
 *              vdpbf16ps with a broadcast Q pair gives 16 scores;
 *  vi[c][jp]   two vectors: V[2jp][32c..32c+31] and V[2jp+1][..] interleaved by 16-bit
 *              unpacklo/hi, so one vdpbf16ps with a broadcast P pair adds two keys' rows
 *              into 16 output dims; the dims come out permuted (undone at the end).
 */
#include "kernels/ops_simd.h"

#include <immintrin.h>
#include <math.h>

#define TK 32 /* keys per tile */
#ifndef ROWS_MAX
#define ROWS_MAX 256 /* query rows per tile: each K/V tile load serves this many */
#endif
#define ROW_FLOATS 32768 /* rows * head_dim cap: O (128 KiB) and Q stay in L2 */
#define HD_MAX     256
#ifndef PREFETCH_TILES_FEW_ROWS
#define PREFETCH_TILES_FEW_ROWS 8
#endif

typedef struct tile {
    int nrows, hd, hdp; /* rows, head_dim, head_dim rounded up to 32 */
    float m[ROWS_MAX], corr[ROWS_MAX];
    _Alignas(64) float l[ROWS_MAX][16];        /* softmax denominators, 16 partial sums */
    int limit[ROWS_MAX];                       /* last key position row r may see */
    _Alignas(64) uint32_t q[ROW_FLOATS / 2];   /* [rows][hdp/2] BF16 Q, as pairs */
    _Alignas(64) float o[ROW_FLOATS];          /* [rows][hdp], permuted dims */
    _Alignas(64) float s[ROWS_MAX][TK];        /* scores of one key tile */
    _Alignas(64) uint32_t p[ROWS_MAX][TK / 2]; /* BF16 probabilities, as pairs */
    _Alignas(64) uint32_t kt[HD_MAX / 2][TK];
    _Alignas(64) uint16_t vi[HD_MAX / 32][TK / 2][2][32];
} tile;

static const uint16_t zero_row[HD_MAX]; /* stands in for keys past the end of a tile */

/* 16x16 transpose of 32-bit elements: r[i] lane j -> r[j] lane i. */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16])
{
    __m512i t[16], u[16];
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 2)
    {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 4)
    {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4b + c] lane L = column 4L + c of rows 4b..4b+3 */
    _Pragma("GCC unroll 16") for (int c = 0; c < 4; c++)
    {
        __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
        __m512i v4 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i v8 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        __m512i v12 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(v0, v8, 0x88);
        r[c + 8] = _mm512_shuffle_i32x4(v0, v8, 0xdd);
        r[c + 4] = _mm512_shuffle_i32x4(v4, v12, 0x88);
        r[c + 12] = _mm512_shuffle_i32x4(v4, v12, 0xdd);
    }
}

/* Loads keys [j0, j0+TK) of kv-head kvh into t->kt and t->vi (zeros past nkeys). */
static void load_kv_tile(tile *t, const mq_attn_args *a, int kvh, int j0, int nkeys)
{
    const uint16_t *kr[TK], *vr[TK];
    attn_kv_rows(a, kvh, j0, TK, nkeys, zero_row, kr, vr);
    const int hd = t->hd, ndp = hd / 2;
    for (int dp0 = 0; dp0 < ndp; dp0 += 16) {
        const __mmask16 m = ndp - dp0 >= 16 ? 0xffff : (__mmask16)((1u << (ndp - dp0)) - 1);
        for (int g = 0; g < TK; g += 16) {
            __m512i r[16];
            _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) r[i] =
                _mm512_maskz_loadu_epi32(m, kr[g + i] + 2 * dp0);
            transpose16(r);
            _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) /* kt has room for a whole 16-pair chunk */
                _mm512_store_si512(&t->kt[dp0 + i][g], r[i]);
        }
    }
    for (int c = 0; c < t->hdp / 32; c++) {
        const __mmask32 m = hd - 32 * c >= 32 ? 0xffffffffu : 0xffffu; /* hd is a multiple of 16 */
        for (int jp = 0; jp < TK / 2; jp++) {
            __m512i v0 = _mm512_maskz_loadu_epi16(m, vr[2 * jp] + 32 * c);
            __m512i v1 = _mm512_maskz_loadu_epi16(m, vr[2 * jp + 1] + 32 * c);
            _mm512_store_si512(t->vi[c][jp][0], _mm512_unpacklo_epi16(v0, v1));
            _mm512_store_si512(t->vi[c][jp][1], _mm512_unpackhi_epi16(v0, v1));
        }
    }
}

/* Asks for keys [j0, j0+TK) while the current tile computes: K/V rows of one kv-head
 * are n_kv*head_dim apart, too sparse for the hardware prefetcher to follow. */
static void prefetch_kv_tile(const mq_attn_args *a, int kv0, int kv1, int j0, int nkeys)
{
    if (j0 >= nkeys)
        return;
    const size_t bytes = (size_t)(kv1 - kv0) * a->head_dim * 2; /* kv-heads [kv0, kv1) are adjacent */
    int b = j0 / a->block_tokens, o = j0 % a->block_tokens;     /* one division per tile */
    for (int j = j0; j < j0 + TK && j < nkeys; j++) {
        const size_t off = ((size_t)o * a->n_kv + kv0) * a->head_dim;
        const char *k = (const char *)(a->k_blocks[b] + off), *v = (const char *)(a->v_blocks[b] + off);
        for (size_t c = 0; c < bytes; c += 64) {
            _mm_prefetch(k + c, _MM_HINT_T0);
            _mm_prefetch(v + c, _MM_HINT_T0);
        }
        if (++o == a->block_tokens) {
            o = 0;
            b++;
        }
    }
}

/* Scores of rows [r, r+NR) against the key tile: s = (Q_bf16 · K_bf16) in FP32. */
static inline __attribute__((always_inline)) void qk_rows(tile *t, int r, const int NR)
{
    __m512 acc[2 * 8];
    _Pragma("GCC unroll 16") for (int i = 0; i < 2 * NR; i++) acc[i] = _mm512_setzero_ps();
    const uint32_t *q32[8];
    _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++) q32[i] = t->q + (size_t)(r + i) * t->hdp / 2;
    for (int dp = 0; dp < t->hd / 2; dp++) {
        const __m512bh k0 = (__m512bh)_mm512_load_si512(&t->kt[dp][0]);
        const __m512bh k1 = (__m512bh)_mm512_load_si512(&t->kt[dp][16]);
        _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
        {
            const __m512bh qq = (__m512bh)_mm512_set1_epi32((int)q32[i][dp]);
            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], qq, k0);
            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], qq, k1);
        }
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
    {
        _mm512_store_ps(&t->s[r + i][0], acc[2 * i]);
        _mm512_store_ps(&t->s[r + i][16], acc[2 * i + 1]);
    }
}

/* O[rows r..r+NR) = O * corr + P · V for the key tile (permuted dims). */
static inline __attribute__((always_inline)) void pv_rows(tile *t, int r, const int NR)
{
    for (int c = 0; c < t->hdp / 32; c++) {
        __m512 lo[8], hi[8];
        const uint32_t *p32[8];
        _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
        {
            float *o = t->o + (size_t)(r + i) * t->hdp + 32 * c;
            const __m512 cr = _mm512_set1_ps(t->corr[r + i]);
            lo[i] = _mm512_mul_ps(_mm512_load_ps(o), cr);
            hi[i] = _mm512_mul_ps(_mm512_load_ps(o + 16), cr);
            p32[i] = t->p[r + i];
        }
        for (int jp = 0; jp < TK / 2; jp++) {
            const __m512bh b0 = (__m512bh)_mm512_load_si512(t->vi[c][jp][0]);
            const __m512bh b1 = (__m512bh)_mm512_load_si512(t->vi[c][jp][1]);
            _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
            {
                const __m512bh pp = (__m512bh)_mm512_set1_epi32((int)p32[i][jp]);
                lo[i] = _mm512_dpbf16_ps(lo[i], pp, b0);
                hi[i] = _mm512_dpbf16_ps(hi[i], pp, b1);
            }
        }
        _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
        {
            float *o = t->o + (size_t)(r + i) * t->hdp + 32 * c;
            _mm512_store_ps(o, lo[i]);
            _mm512_store_ps(o + 16, hi[i]);
        }
    }
}

/* Online softmax of one key tile for every row: updates m, l, corr; writes BF16 p.
 * m is the running max of the raw scores (scale > 0, so it is also the max of the scaled
 * ones) and p = exp(s·scale − m·scale) in one FMA. Pass 1 masks the scores past a row's
 * limit and raises m; the max only grows, so the horizontal reduction runs only when a
 * score of the tile passes it (rare once a long context has been seen). The rescale
 * factors exp((m_old − m_new)·scale) are then computed 16 rows per vector; pass 2 makes
 * the probabilities. l is kept as 16 partial sums per row of the BF16-rounded weights PV
 * uses (one vdpbf16ps against ones), reduced once at the end. */
static void softmax_tile(tile *t, int j0, float scale, int r0, int r1)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);
    float mold[ROWS_MAX];
    for (int r = r0; r < r1; r++) {
        const int lim = t->limit[r] - j0; /* keys j <= lim are visible */
        mold[r] = t->m[r];
        if (lim < 0)
            continue; /* the whole tile is in this row's future */
        __m512 s0 = _mm512_load_ps(&t->s[r][0]);
        __m512 s1 = _mm512_load_ps(&t->s[r][16]);
        if (lim < TK - 1) {
            const __m512i lv = _mm512_set1_epi32(lim);
            s0 = _mm512_mask_mov_ps(s0, _mm512_cmpgt_epi32_mask(lane, lv), ninf);
            s1 = _mm512_mask_mov_ps(s1, _mm512_cmpgt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), lv),
                                    ninf);
            _mm512_store_ps(&t->s[r][0], s0);
            _mm512_store_ps(&t->s[r][16], s1);
        }
        const __m512 mx = _mm512_max_ps(s0, s1);
        if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(t->m[r]), _CMP_GT_OQ))
            t->m[r] = _mm512_reduce_max_ps(mx);
    }
    for (int r = r0; r < r1; r += 16) { /* corr = exp((m_old - m_new)·scale); m_old = -inf gives 0 */
        const __mmask16 k = r1 - r >= 16 ? 0xffff : (__mmask16)((1u << (r1 - r)) - 1);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, mold + r), _mm512_maskz_loadu_ps(k, t->m + r));
        /* every row sees key 0 in the first tile, so m_new is finite: d is -inf (corr 0)
         * there, and 0 for rows whose keys all lie in the future (corr set to 1 below) */
        _mm512_mask_storeu_ps(t->corr + r, k, ops_exp512(_mm512_mul_ps(d, sc)));
    }
    for (int r = r0; r < r1; r++) {
        if (t->limit[r] < j0) {
            t->corr[r] = 1.0f;
            _mm512_store_si512(t->p[r], _mm512_setzero_si512());
            continue;
        }
        const __m512 nm = _mm512_set1_ps(-t->m[r] * scale);
        const __m512 p0 = ops_exp512(_mm512_fmadd_ps(_mm512_load_ps(&t->s[r][0]), sc, nm));
        const __m512 p1 = ops_exp512(_mm512_fmadd_ps(_mm512_load_ps(&t->s[r][16]), sc, nm));
        const __m512bh pb = _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_store_si512(t->p[r], (__m512i)pb);
        /* the denominator sums the BF16-rounded weights that PV uses */
        const __m512 l = _mm512_mul_ps(_mm512_load_ps(t->l[r]), _mm512_set1_ps(t->corr[r]));
        _mm512_store_ps(t->l[r], _mm512_dpbf16_ps(l, pb, ones));
    }
}

/* Rows = heads [hs, hs+nh) × tokens [t0, t0+nt), row index (token - t0) * nh + head.
 * With nt == 1 (decode) the heads may span several kv-heads: each key tile is then read
 * for all of them in turn, so the cache is walked in address order (the kv-heads of a
 * position are adjacent) and the hardware prefetchers can follow. With nt > 1 all
 * heads share one kv-head. */
static void attend_tile(tile *t, const mq_attn_args *a, int hs, int nh, int t0, int nt)
{
    const int group = a->n_head / a->n_kv;
    const int kv0 = hs / group, kv1 = (hs + nh - 1) / group + 1;
    const int hd = a->head_dim;
    t->nrows = nh * nt;
    t->hd = hd;
    t->hdp = (hd + 31) / 32 * 32;
    int nkeys = 0;
    for (int r = 0; r < t->nrows; r++) {
        const int tok = t0 + r / nh, h = hs + r % nh;
        const float *q = a->q + ((size_t)tok * a->n_head + h) * hd;
        for (int d = 0; d < hd; d += 16) {
            const __mmask16 m = hd - d >= 16 ? 0xffff : (__mmask16)((1u << (hd - d)) - 1);
            _mm256_mask_storeu_epi16((uint16_t *)(t->q + (size_t)r * t->hdp / 2) + d, m,
                                     (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, q + d)));
        }
        t->limit[r] = a->pos0 + tok;
        t->m[r] = -INFINITY;
        _mm512_store_ps(t->l[r], _mm512_setzero_ps());
        for (int d = 0; d < t->hdp; d += 16)
            _mm512_store_ps(t->o + (size_t)r * t->hdp + d, _mm512_setzero_ps());
        if (t->limit[r] + 1 > nkeys)
            nkeys = t->limit[r] + 1;
    }
    /* few rows (decode) make a tile quick, so ask for keys further ahead */
    const int ahead = t->nrows <= 8 ? PREFETCH_TILES_FEW_ROWS : 2;
    for (int j = 0; j < ahead; j++)
        prefetch_kv_tile(a, kv0, kv1, j * TK, nkeys);
    for (int j0 = 0; j0 < nkeys; j0 += TK) {
        prefetch_kv_tile(a, kv0, kv1, j0 + ahead * TK, nkeys);
        for (int kvh = kv0; kvh < kv1; kvh++) {
            /* this kv-head's rows: all of them, or (decode) its heads within [hs, hs+nh) */
            int ra = nt > 1 ? 0 : (kvh * group > hs ? kvh * group : hs) - hs;
            const int rb = nt > 1 ? t->nrows : ((kvh + 1) * group < hs + nh ? (kvh + 1) * group : hs + nh) - hs;
            /* rows are token-major and a row sees keys up to pos0 + its token: rows whose
             * tokens lie before this key tile are the leading ones; they skip it whole */
            if (nt > 1 && j0 > a->pos0 + t0) {
                const int first = (j0 - a->pos0 - t0) * nh;
                if (first > ra)
                    ra = first < rb ? first : rb;
            }
            if (ra >= rb)
                continue;
            load_kv_tile(t, a, kvh, j0, nkeys);
            int r = ra;
            for (; r + 8 <= rb; r += 8)
                qk_rows(t, r, 8);
            for (; r + 4 <= rb; r += 4)
                qk_rows(t, r, 4);
            for (; r + 2 <= rb; r += 2)
                qk_rows(t, r, 2);
            for (; r < rb; r++)
                qk_rows(t, r, 1);
            softmax_tile(t, j0, a->scale, ra, rb);
            for (r = ra; r + 8 <= rb; r += 8)
                pv_rows(t, r, 8);
            for (; r + 4 <= rb; r += 4)
                pv_rows(t, r, 4);
            for (; r + 2 <= rb; r += 2)
                pv_rows(t, r, 2);
            for (; r < rb; r++)
                pv_rows(t, r, 1);
        }
    }
    /* un-permute: within 32 dims, lo lane l holds dim 8(l/4) + l%4, hi lane l dim 8(l/4) + 4 + l%4 */
    __m512i idx0, idx1;
    {
        int i0[16], i1[16];
        for (int d = 0; d < 32; d++) {
            int q = d / 8, w = d % 8;
            int src = w < 4 ? 4 * q + w : 16 + 4 * q + (w - 4);
            if (d < 16)
                i0[d] = src;
            else
                i1[d - 16] = src;
        }
        idx0 = _mm512_loadu_si512(i0);
        idx1 = _mm512_loadu_si512(i1);
    }
    for (int r = 0; r < t->nrows; r++) {
        const int tok = t0 + r / nh, h = hs + r % nh;
        float *out = a->out + ((size_t)tok * a->n_head + h) * hd;
        const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(t->l[r])));
        for (int c = 0; c < t->hdp / 32; c++) {
            const float *o = t->o + (size_t)r * t->hdp + 32 * c;
            const __m512 lo = _mm512_load_ps(o), hi = _mm512_load_ps(o + 16);
            const __m512 d0 = _mm512_mul_ps(_mm512_permutex2var_ps(lo, idx0, hi), inv);
            const __m512 d1 = _mm512_mul_ps(_mm512_permutex2var_ps(lo, idx1, hi), inv);
            _mm512_storeu_ps(out + 32 * c, d0);
            if (hd - 32 * c > 16)
                _mm512_storeu_ps(out + 32 * c + 16, d1);
        }
    }
}

void attention_avx512(const mq_attn_args *a, int h0, int h1)
{
    if (a->head_dim % 16 || a->head_dim > HD_MAX || a->head_dim <= 0 || !(a->scale > 0)) {
        attention_ref(a, h0, h1);
        return;
    }
    tile t;
    const int group = a->n_head / a->n_kv;
    const int rows =
        ROW_FLOATS / ((a->head_dim + 31) / 32 * 32) < ROWS_MAX ? ROW_FLOATS / ((a->head_dim + 31) / 32 * 32) : ROWS_MAX;
    if (a->n_tok == 1) { /* decode: all heads of the range in one walk over the cache */
        for (int hs = h0; hs < h1; hs += rows)
            attend_tile(&t, a, hs, h1 - hs < rows ? h1 - hs : rows, 0, 1);
        return;
    }
    for (int h = h0; h < h1;) {
        const int kvh = h / group;
        const int he = (kvh + 1) * group < h1 ? (kvh + 1) * group : h1;
        for (int hs = h; hs < he; hs += rows) { /* more heads per group than rows: split */
            const int nh = he - hs < rows ? he - hs : rows;
            const int tq = rows / nh;
            for (int t0 = 0; t0 < a->n_tok; t0 += tq)
                attend_tile(&t, a, hs, nh, t0, a->n_tok - t0 < tq ? a->n_tok - t0 : tq);
        }
        h = he;
    }
}
