/* kernels/attn_avx512.c — causal GQA attention over the paged BF16 KV cache, AVX-512.
 *
 * Flash-style: one kv-head at a time, a tile of query rows (the group's q-heads × a
 * block of query tokens, up to ROWS_MAX rows) walks the keys in tiles of TK = 32 with an
 * online softmax; no score matrix, no allocation (all buffers on the stack, about 550 KiB).
 * K and V are read once per kv-head and row tile, so decode (n_tok == 1) streams the
 * cache once for all q-heads of the group.
 *
 * Prefill takes the key tiles KT at a time: for each tile in turn, the scores of 8 rows
 * at a time go from the vdpbf16ps accumulators straight into the online softmax (no
 * score buffer), then one PV pass adds the KT tiles into O while O is in registers (one
 * load and store of O per KT tiles; the rescale by corr is skipped when no row of the
 * group raised its max, x·1 being x). Each output element sees the same FP32 operations
 * in the same order as with one tile at a time.
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

#define TK       32  /* keys per tile */
#define ROWS_MAX 512 /* query rows per tile: each K/V tile load serves this many */
/* rows * head_dim cap: O (256 KiB) and Q (128 KiB) stay in L2 (1 MiB on Zen 5); 256
 * rows (half the K/V loads and transposes of a row less) measured 4-5% slower */
#define ROW_FLOATS     65536
#define HD_MAX         256
#define KT             2  /* key tiles per PV pass: O stays in registers across them */
#define DEC_ROWS       64 /* decode rows per tile (q-heads of one kv-head) */
#define PREFETCH_TILES 2  /* key tiles asked for ahead of the one computing */

typedef struct tile {
    int nrows, hd, hdp; /* rows, head_dim, head_dim rounded up to 32 */
    float m[ROWS_MAX], corr[KT][ROWS_MAX];
    _Alignas(64) float l[ROWS_MAX][16];            /* softmax denominators, 16 partial sums */
    int limit[ROWS_MAX];                           /* last key position row r may see */
    _Alignas(64) uint32_t q[ROW_FLOATS / 2];       /* [rows][hdp/2] BF16 Q, as pairs */
    _Alignas(64) float o[ROW_FLOATS];              /* [rows][hdp], permuted dims */
    _Alignas(64) float s[DEC_ROWS][TK];            /* decode: scores of one key tile */
    _Alignas(64) uint32_t p[KT][ROWS_MAX][TK / 2]; /* BF16 probabilities, as pairs */
    _Alignas(64) uint32_t kt[HD_MAX / 2][TK];
    _Alignas(64) uint16_t vi[KT][HD_MAX / 32][TK / 2][2][32];
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

/* Loads keys [j0, j0+TK) of kv-head kvh into t->kt and slot k of t->vi (zeros past
 * nkeys). */
static void load_kv_tile(tile *t, const mq_attn_args *a, int kvh, int j0, int nkeys, int k)
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
            _mm512_store_si512(t->vi[k][c][jp][0], _mm512_unpacklo_epi16(v0, v1));
            _mm512_store_si512(t->vi[k][c][jp][1], _mm512_unpackhi_epi16(v0, v1));
        }
    }
}

/* Asks for keys [j0, j0+TK) of kv-heads [kv0, kv1) while the current tile computes: per
 * block and kv-head one contiguous run of K and one of V. */
static void prefetch_kv_tile(const mq_attn_args *a, int kv0, int kv1, int j0, int nkeys)
{
    const int j1 = j0 + TK < nkeys ? j0 + TK : nkeys;
    for (int j = j0; j < j1;) {
        const int b = j / a->block_tokens, o = j % a->block_tokens;
        const int n = a->block_tokens - o < j1 - j ? a->block_tokens - o : j1 - j;
        const size_t bytes = (size_t)n * a->head_dim * 2;
        for (int kvh = kv0; kvh < kv1; kvh++) {
            const char *k = (const char *)(a->k_blocks[b] + attn_kv_off(a, o, kvh));
            const char *v = (const char *)(a->v_blocks[b] + attn_kv_off(a, o, kvh));
            for (size_t c = 0; c < bytes; c += 64) {
                _mm_prefetch(k + c, _MM_HINT_T0);
                _mm_prefetch(v + c, _MM_HINT_T0);
            }
        }
        j += n;
    }
}

/* Online softmax of key tile j0 for rows [r, r+NR), whose scores (raw Q·K) are in
 * sc2[2i] (keys j0..j0+15) and sc2[2i+1] (j0+16..j0+31): updates m and l, writes corr and
 * the BF16 p into slot k. Every row sees key j0 (callers pass no other rows).
 * m is the running max of the raw scores (scale > 0, so it is also the max of the scaled
 * ones) and p = exp(s·scale − m·scale) in one FMA. Scores past a row's limit are masked
 * to -inf; the max only grows, so the horizontal reduction runs only when a score of the
 * tile passes it (rare once a long context has been seen). The rescale factors
 * exp((m_old − m_new)·scale) of the NR rows take one vector. l is kept as 16 partial sums
 * per row of the BF16-rounded weights PV uses (one vdpbf16ps against ones), reduced
 * once at the end. Every operation is lane-wise per row, so a row's bits do not depend
 * on which rows share the call. */
static inline __attribute__((always_inline)) void softmax_rows(tile *t, __m512 *sc2, int r, const int NR, int j0,
                                                               float scale, int k)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);
    float mold[8];
    _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
    {
        const int lim = t->limit[r + i] - j0; /* keys j <= lim are visible */
        if (lim < TK - 1) {
            const __m512i lv = _mm512_set1_epi32(lim);
            sc2[2 * i] = _mm512_mask_mov_ps(sc2[2 * i], _mm512_cmpgt_epi32_mask(lane, lv), ninf);
            sc2[2 * i + 1] = _mm512_mask_mov_ps(
                sc2[2 * i + 1], _mm512_cmpgt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), lv), ninf);
        }
        mold[i] = t->m[r + i];
        const __m512 mx = _mm512_max_ps(sc2[2 * i], sc2[2 * i + 1]);
        if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(t->m[r + i]), _CMP_GT_OQ))
            t->m[r + i] = _mm512_reduce_max_ps(mx);
    }
    /* every row sees key 0 in its first tile, so m_new is finite: m_old = -inf gives
     * corr 0 there */
    float *corr = t->corr[k] + r;
    const __mmask16 mk = (__mmask16)((1u << NR) - 1);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, mold), _mm512_maskz_loadu_ps(mk, t->m + r));
    _mm512_mask_storeu_ps(corr, mk, ops_exp512(_mm512_mul_ps(d, sc)));
    _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
    {
        const __m512 nm = _mm512_set1_ps(-t->m[r + i] * scale);
        const __m512 p0 = ops_exp512(_mm512_fmadd_ps(sc2[2 * i], sc, nm));
        const __m512 p1 = ops_exp512(_mm512_fmadd_ps(sc2[2 * i + 1], sc, nm));
        const __m512bh pb = _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_store_si512(t->p[k][r + i], (__m512i)pb);
        /* the denominator sums the BF16-rounded weights that PV uses */
        const __m512 l = _mm512_mul_ps(_mm512_load_ps(t->l[r + i]), _mm512_set1_ps(corr[i]));
        _mm512_store_ps(t->l[r + i], _mm512_dpbf16_ps(l, pb, ones));
    }
}

/* Scores of rows [r, r+NR) against the key tile j0 in t->kt, s = (Q_bf16 · K_bf16) in
 * FP32, and their softmax straight from the registers (into slot k). */
static inline __attribute__((always_inline)) void qk_softmax_rows(tile *t, int r, const int NR, int j0, float scale,
                                                                  int k)
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
    softmax_rows(t, acc, r, NR, j0, scale, k);
}

/* Softmax of decode rows [r, r+NR) from their scores in t->s. */
static inline __attribute__((always_inline)) void softmax_decode(tile *t, int r, const int NR, int j0, float scale)
{
    __m512 sc2[2 * 8];
    _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
    {
        sc2[2 * i] = _mm512_load_ps(&t->s[r + i][0]);
        sc2[2 * i + 1] = _mm512_load_ps(&t->s[r + i][16]);
    }
    softmax_rows(t, sc2, r, NR, j0, scale, 0);
}

/* O[rows r..r+NR) = O * corr_k + P_k · V_k for the key tiles k = 0..nk-1 in turn
 * (permuted dims): O is loaded and stored once per 32 dims for all of them. */
static inline __attribute__((always_inline)) void pv_rows(tile *t, int r, const int NR, int nk)
{
    /* bit k: some row's max rose in tile k (corr != 1); x·1 = x, so the others skip it */
    unsigned rescale = 0;
    for (int k = 0; k < nk; k++)
        for (int i = 0; i < NR; i++)
            rescale |= (unsigned)(t->corr[k][r + i] != 1.0f) << k;
    for (int c = 0; c < t->hdp / 32; c++) {
        __m512 lo[8], hi[8];
        _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
        {
            const float *o = t->o + (size_t)(r + i) * t->hdp + 32 * c;
            lo[i] = _mm512_load_ps(o);
            hi[i] = _mm512_load_ps(o + 16);
        }
        for (int k = 0; k < nk; k++) {
            const uint32_t *p32 = t->p[k][r];
            if (rescale >> k & 1) {
                _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
                {
                    const __m512 cr = _mm512_set1_ps(t->corr[k][r + i]);
                    lo[i] = _mm512_mul_ps(lo[i], cr);
                    hi[i] = _mm512_mul_ps(hi[i], cr);
                }
            }
            for (int jp = 0; jp < TK / 2; jp++) {
                const __m512bh b0 = (__m512bh)_mm512_load_si512(t->vi[k][c][jp][0]);
                const __m512bh b1 = (__m512bh)_mm512_load_si512(t->vi[k][c][jp][1]);
                _Pragma("GCC unroll 16") for (int i = 0; i < NR; i++)
                {
                    const __m512bh pp = (__m512bh)_mm512_set1_epi32((int)p32[i * (TK / 2) + jp]);
                    lo[i] = _mm512_dpbf16_ps(lo[i], pp, b0);
                    hi[i] = _mm512_dpbf16_ps(hi[i], pp, b1);
                }
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

/* Starts a tile of rows = heads [hs, hs+nh) × tokens [t0, t0+nt), row index
 * (token - t0) * nh + head: Q in BF16 (zero past head_dim), running max, sums and output
 * cleared. Returns the number of keys the rows see. */
static int tile_begin(tile *t, const mq_attn_args *a, int hs, int nh, int t0, int nt)
{
    const int hd = a->head_dim;
    t->nrows = nh * nt;
    t->hd = hd;
    t->hdp = (hd + 31) / 32 * 32;
    int nkeys = 0;
    for (int r = 0; r < t->nrows; r++) {
        const int tok = t0 + r / nh, h = hs + r % nh;
        const float *q = a->q + ((size_t)tok * a->n_head + h) * hd;
        for (int d = 0; d < t->hdp; d += 16) /* hd is a multiple of 16 */
            _mm256_store_si256((__m256i *)((uint16_t *)(t->q + (size_t)r * t->hdp / 2) + d),
                               (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(d < hd ? 0xffff : 0, q + d)));
        t->limit[r] = a->pos0 + tok;
        t->m[r] = -INFINITY;
        _mm512_store_ps(t->l[r], _mm512_setzero_ps());
        for (int d = 0; d < t->hdp; d += 16)
            _mm512_store_ps(t->o + (size_t)r * t->hdp + d, _mm512_setzero_ps());
        if (t->limit[r] + 1 > nkeys)
            nkeys = t->limit[r] + 1;
    }
    return nkeys;
}

/* Ends a tile begun by tile_begin: out = O / l, dims un-permuted. */
static void tile_end(tile *t, const mq_attn_args *a, int hs, int nh, int t0)
{
    const int hd = a->head_dim;
    /* within 32 dims, lo lane l holds dim 8(l/4) + l%4, hi lane l dim 8(l/4) + 4 + l%4 */
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

/* Rows = heads [hs, hs+nh) (all of one kv-head) × tokens [t0, t0+nt): every key tile
 * is transposed once into kt/vi and serves all rows (prefill). Key tiles go KT at a
 * time: scores and softmax of each in turn (m, l and corr_k as one tile at a time
 * would leave them), then one PV pass over the KT tiles, so every O element sees the
 * same operations in the same order as with one tile per pass. */
static void attend_tile(tile *t, const mq_attn_args *a, int hs, int nh, int t0, int nt)
{
    const int kvh = hs / (a->n_head / a->n_kv);
    const int nkeys = tile_begin(t, a, hs, nh, t0, nt);
    const int rb = t->nrows;
    for (int j = 0; j < PREFETCH_TILES; j++)
        prefetch_kv_tile(a, kvh, kvh + 1, j * TK, nkeys);
    for (int jg = 0; jg < nkeys; jg += KT * TK) {
        int ra[KT + 1], nk = 0;
        for (; nk < KT && jg + nk * TK < nkeys; nk++) {
            const int j0 = jg + nk * TK;
            /* rows are token-major and a row sees keys up to pos0 + its token: rows whose
             * tokens lie before this key tile are the leading ones; they skip it whole */
            int r0 = 0;
            if (j0 > a->pos0 + t0) {
                const int first = (j0 - a->pos0 - t0) * nh;
                r0 = first < rb ? first : rb;
            }
            if (r0 >= rb)
                break;
            ra[nk] = r0;
            prefetch_kv_tile(a, kvh, kvh + 1, j0 + PREFETCH_TILES * TK, nkeys);
            load_kv_tile(t, a, kvh, j0, nkeys, nk);
            int r = r0;
            for (; r + 8 <= rb; r += 8) {
                if (r + 64 >= rb && r + 56 < rb)
                    prefetch_kv_tile(a, kvh, kvh + 1, j0 + TK, nkeys);
                qk_softmax_rows(t, r, 8, j0, a->scale, nk);
            }
            for (; r + 4 <= rb; r += 4)
                qk_softmax_rows(t, r, 4, j0, a->scale, nk);
            for (; r + 2 <= rb; r += 2)
                qk_softmax_rows(t, r, 2, j0, a->scale, nk);
            for (; r < rb; r++)
                qk_softmax_rows(t, r, 1, j0, a->scale, nk);
        }
        ra[nk] = rb;
        /* rows [ra[k], ra[k+1]) see key tiles 0..k of the group */
        for (int k = 0; k < nk; k++) {
            int r = ra[k];
            const int re = ra[k + 1];
            for (; r + 8 <= re; r += 8)
                pv_rows(t, r, 8, k + 1);
            for (; r + 4 <= re; r += 4)
                pv_rows(t, r, 4, k + 1);
            for (; r + 2 <= re; r += 2)
                pv_rows(t, r, 2, k + 1);
            for (; r < re; r++)
                pv_rows(t, r, 1, k + 1);
        }
    }
    tile_end(t, a, hs, nh, t0);
}

/* 16 vectors -> one whose lane j is the sum of a[j]'s lanes (a transpose folded into
 * adds: 30 shuffles and 15 adds where 16 horizontal sums take 64 and more). */
static inline __attribute__((always_inline)) __m512 hsum16(const __m512 a[16])
{
    __m512 x[8], y[4], z[2];
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) /* per 128 bits: (a0+a2, b0+b2, a1+a3, b1+b3) */
        x[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) /* per 128 bits: the sums of 4 vectors there */
        y[k] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x[2 * k]), _mm512_castps_pd(x[2 * k + 1]))),
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x[2 * k]), _mm512_castps_pd(x[2 * k + 1]))));
    _Pragma("GCC unroll 2") for (int k = 0; k < 2; k++) /* pairs of 128-bit blocks folded */
        z[k] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
}

/* Row j of a decode key tile: with a contiguous run (base != NULL, rows ld apart: a
 * kv-head's keys inside one block) from the base, so a constant head_dim turns every
 * address into base + displacement; else through the row pointers (tiles that cross a
 * block or run past the last key). */
#define DEC_ROW(base, ld, rows, j) ((base) ? (base) + (size_t)(j) * (ld) : (rows)[j])

/* Decode scores of row r against 16 keys (K rows j0.. of the tile): s[j] = Q_bf16 · K_j
 * in FP32, from the K rows in place (no transpose). NC = chunks of 32 dims. */
static inline __attribute__((always_inline)) void qk_decode16(const tile *t, int r, const uint16_t *kb, int ld,
                                                              const uint16_t *const *kr, float *s, const int NC,
                                                              const __mmask32 tail)
{
    const uint16_t *q = (const uint16_t *)(t->q + (size_t)r * t->hdp / 2);
    __m512 acc[16];
    _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    _Pragma("GCC unroll 8") for (int c = 0; c < NC; c++)
    {
        const __mmask32 m = c == NC - 1 ? tail : 0xffffffffu;
        const __m512bh qc = (__m512bh)_mm512_load_si512(q + 32 * c);
        _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) acc[j] =
            _mm512_dpbf16_ps(acc[j], qc, (__m512bh)_mm512_maskz_loadu_epi16(m, DEC_ROW(kb, ld, kr, j) + 32 * c));
    }
    _mm512_store_ps(s, hsum16(acc));
}

/* O[rows r..r+NR) = O * corr + P · V for a key tile whose V rows are read in place, in
 * the same pairs and order as pv_rows on vi. Chunks of 32 dims go CG at a time with
 * every key pair, so 2·NR·CG accumulators run side by side. */
static inline __attribute__((always_inline)) void pv_decode(tile *t, int r, const uint16_t *vb, int ld,
                                                            const uint16_t *const *vr, const int NR, const int NC,
                                                            const int CG, const __mmask32 tail)
{
    for (int c0 = 0; c0 < NC; c0 += CG) {
        __m512 lo[8][4], hi[8][4];
        _Pragma("GCC unroll 8") for (int i = 0; i < NR; i++)
        {
            const __m512 cr = _mm512_set1_ps(t->corr[0][r + i]);
            _Pragma("GCC unroll 4") for (int c = 0; c < CG; c++)
            {
                const float *o = t->o + (size_t)(r + i) * t->hdp + 32 * (c0 + c);
                lo[i][c] = _mm512_mul_ps(_mm512_load_ps(o), cr);
                hi[i][c] = _mm512_mul_ps(_mm512_load_ps(o + 16), cr);
            }
        }
        for (int jp = 0; jp < TK / 2; jp++) {
            __m512bh pp[8];
            _Pragma("GCC unroll 8") for (int i = 0; i < NR; i++) pp[i] =
                (__m512bh)_mm512_set1_epi32((int)t->p[0][r + i][jp]);
            _Pragma("GCC unroll 4") for (int c = 0; c < CG; c++)
            {
                const __mmask32 m = c0 + c == NC - 1 ? tail : 0xffffffffu;
                const __m512i v0 = _mm512_maskz_loadu_epi16(m, DEC_ROW(vb, ld, vr, 2 * jp) + 32 * (c0 + c));
                const __m512i v1 = _mm512_maskz_loadu_epi16(m, DEC_ROW(vb, ld, vr, 2 * jp + 1) + 32 * (c0 + c));
                const __m512bh b0 = (__m512bh)_mm512_unpacklo_epi16(v0, v1);
                const __m512bh b1 = (__m512bh)_mm512_unpackhi_epi16(v0, v1);
                _Pragma("GCC unroll 8") for (int i = 0; i < NR; i++)
                {
                    lo[i][c] = _mm512_dpbf16_ps(lo[i][c], pp[i], b0);
                    hi[i][c] = _mm512_dpbf16_ps(hi[i][c], pp[i], b1);
                }
            }
        }
        _Pragma("GCC unroll 8") for (int i = 0; i < NR; i++) _Pragma("GCC unroll 4") for (int c = 0; c < CG; c++)
        {
            float *o = t->o + (size_t)(r + i) * t->hdp + 32 * (c0 + c);
            _mm512_store_ps(o, lo[i][c]);
            _mm512_store_ps(o + 16, hi[i][c]);
        }
    }
}

/* One key tile [j0, j0+TK) of kv-head kvh for its rows [ra, rb) of the tile (decode).
 * HD is the head_dim when the caller knows it at compile time (addresses become
 * displacements), else 0. */
static inline __attribute__((always_inline)) void decode_keys(tile *t, const mq_attn_args *a, int kvh, int j0,
                                                              int nkeys, int ra, int rb, const int HD)
{
    const int hd = HD ? HD : t->hd, nc = (hd + 31) / 32;
    const __mmask32 tail = hd % 32 ? 0xffffu : 0xffffffffu; /* hd is a multiple of 16 */
    const uint16_t *kr[TK], *vr[TK], *kb = NULL, *vb = NULL;
    const int o = j0 % a->block_tokens;
    if (HD && o + TK <= a->block_tokens && j0 + TK <= nkeys) { /* one contiguous run */
        kb = a->k_blocks[j0 / a->block_tokens] + attn_kv_off(a, o, kvh);
        vb = a->v_blocks[j0 / a->block_tokens] + attn_kv_off(a, o, kvh);
    } else {
        attn_kv_rows(a, kvh, j0, TK, nkeys, zero_row, kr, vr);
    }
    for (int r = ra; r < rb; r++) {
        qk_decode16(t, r, kb, hd, kr, t->s[r], HD ? (HD + 31) / 32 : nc, tail);
        if (j0 + 16 < nkeys)
            qk_decode16(t, r, kb ? kb + 16 * hd : NULL, hd, kr + 16, t->s[r] + 16, HD ? (HD + 31) / 32 : nc, tail);
    }
    int r = ra;
    for (; r + 8 <= rb; r += 8)
        softmax_decode(t, r, 8, j0, a->scale);
    for (; r + 2 <= rb; r += 2)
        softmax_decode(t, r, 2, j0, a->scale);
    for (; r < rb; r++)
        softmax_decode(t, r, 1, j0, a->scale);
    r = ra;
    if (HD) {
        const int NC = (HD + 31) / 32;
        for (; r + 4 <= rb; r += 4)
            pv_decode(t, r, vb, hd, vr, 4, NC, 1, tail);
        for (; r + 2 <= rb; r += 2)
            pv_decode(t, r, vb, hd, vr, 2, NC, NC < 4 ? NC : 4, tail);
        for (; r < rb; r++)
            pv_decode(t, r, vb, hd, vr, 1, NC, NC < 4 ? NC : 4, tail);
    } else {
        for (; r + 4 <= rb; r += 4)
            pv_decode(t, r, vb, hd, vr, 4, nc, 1, tail);
        for (; r < rb; r++)
            pv_decode(t, r, vb, hd, vr, 1, nc, 1, tail);
    }
}

static inline __attribute__((always_inline)) void decode_tile(tile *t, const mq_attn_args *a, int kvh, int j0,
                                                              int nkeys, int ra, int rb)
{
    if (a->head_dim == 128)
        decode_keys(t, a, kvh, j0, nkeys, ra, rb, 128);
    else if (a->head_dim == 64)
        decode_keys(t, a, kvh, j0, nkeys, ra, rb, 64);
    else
        decode_keys(t, a, kvh, j0, nkeys, ra, rb, 0);
}

/* Decode (one query token): per kv-head, its heads within [h0, h1) walk that kv-head's
 * keys, which are one contiguous run per block (mq_attn_args). Few rows share a key tile
 * here, so the scores come from the K rows in place (qk_decode16) and PV reads V in
 * place: no transposes, and enough independent accumulators that the kernel streams the
 * cache about twice as fast as the prefill path would. The K and V runs of the tile
 * PREFETCH_TILES ahead are asked for while a tile computes: a tile is a serial chain
 * (scores, softmax, PV) longer than the out-of-order window, so without it every tile
 * starts with a wait on memory. */
static void attend_decode(tile *t, const mq_attn_args *a, int h0, int h1, int rows)
{
    const int group = a->n_head / a->n_kv;
    for (int h = h0; h < h1;) {
        const int kvh = h / group;
        int he = (kvh + 1) * group < h1 ? (kvh + 1) * group : h1;
        he = he - h < rows ? he : h + rows;
        const int nkeys = tile_begin(t, a, h, he - h, 0, 1);
        for (int j = 0; j < PREFETCH_TILES; j++)
            prefetch_kv_tile(a, kvh, kvh + 1, j * TK, nkeys);
        for (int j0 = 0; j0 < nkeys; j0 += TK) {
            prefetch_kv_tile(a, kvh, kvh + 1, j0 + PREFETCH_TILES * TK, nkeys);
            decode_tile(t, a, kvh, j0, nkeys, 0, he - h);
        }
        tile_end(t, a, h, he - h, 0);
        h = he;
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
    if (a->n_tok == 1 && !a->prompt) {
        attend_decode(&t, a, h0, h1, rows < DEC_ROWS ? rows : DEC_ROWS);
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
