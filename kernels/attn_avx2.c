/* kernels/attn_avx2.c — causal GQA attention over the paged BF16 KV cache, AVX2+FMA.
 *
 * The same flash-style tiling as attn_avx512.c (one kv-head at a time, up to ROWS_MAX
 * query rows = q-heads of the group × query tokens, keys in tiles of TK = 16, online
 * softmax, stack buffers only), but FP32 throughout: Q is not rounded, K/V are widened
 * from BF16 (exact), probabilities stay FP32, exp is ops_exp256 (~1 ulp). It agrees with
 * the scalar reference to FP32 rounding.
 *
 *  kt[d][j]  K[j][d] as FP32, key j in lane j (8x8 transposes), so an FMA with a
 *            broadcast Q element gives 8 scores;
 *  vf[j][d]  V[j][d] as FP32.
 */
#include "kernels/ops_simd.h"

#include <immintrin.h>
#include <math.h>

#define TK         16
#define ROWS_MAX   64
#define ROW_FLOATS 8192
#define HD_MAX     256

typedef struct tile {
    int nrows, hd;
    float m[ROWS_MAX], l[ROWS_MAX], corr[ROWS_MAX];
    int limit[ROWS_MAX];
    const float *q[ROWS_MAX];
    _Alignas(32) float o[ROW_FLOATS];   /* [rows][hd] */
    _Alignas(32) float s[ROWS_MAX][TK]; /* scores, then probabilities */
    _Alignas(32) float kt[HD_MAX][TK];
    _Alignas(32) float vf[TK][HD_MAX];
} tile;

static const uint16_t zero_row[HD_MAX];

static inline __m256 bf16x8(const uint16_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline void transpose8(__m256 r[8])
{
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x20);
        r[c + 4] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x31);
    }
}

static void load_kv_tile(tile *t, const mq_attn_args *a, int kvh, int j0, int nkeys)
{
    const uint16_t *kr[TK], *vr[TK];
    attn_kv_rows(a, kvh, j0, TK, nkeys, zero_row, kr, vr);
    for (int d0 = 0; d0 < t->hd; d0 += 8)
        for (int g = 0; g < TK; g += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = bf16x8(kr[g + i] + d0);
            transpose8(r);
            for (int i = 0; i < 8; i++)
                _mm256_store_ps(&t->kt[d0 + i][g], r[i]);
        }
    for (int j = 0; j < TK; j++)
        for (int d = 0; d < t->hd; d += 8)
            _mm256_store_ps(&t->vf[j][d], bf16x8(vr[j] + d));
}

static inline __attribute__((always_inline)) void qk_rows(tile *t, int r, const int NR)
{
    __m256 acc[8];
    _Pragma("GCC unroll 8") for (int i = 0; i < 2 * NR; i++) acc[i] = _mm256_setzero_ps();
    for (int d = 0; d < t->hd; d++) {
        const __m256 k0 = _mm256_load_ps(&t->kt[d][0]), k1 = _mm256_load_ps(&t->kt[d][8]);
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        {
            const __m256 qq = _mm256_broadcast_ss(t->q[r + i] + d);
            acc[2 * i] = _mm256_fmadd_ps(qq, k0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(qq, k1, acc[2 * i + 1]);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
    {
        _mm256_store_ps(&t->s[r + i][0], acc[2 * i]);
        _mm256_store_ps(&t->s[r + i][8], acc[2 * i + 1]);
    }
}

static inline __attribute__((always_inline)) void pv_rows(tile *t, int r, const int NR)
{
    for (int c = 0; c < t->hd; c += 16) {
        __m256 lo[4], hi[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        {
            const float *o = t->o + (size_t)(r + i) * t->hd + c;
            const __m256 cr = _mm256_set1_ps(t->corr[r + i]);
            lo[i] = _mm256_mul_ps(_mm256_load_ps(o), cr);
            hi[i] = _mm256_mul_ps(_mm256_load_ps(o + 8), cr);
        }
        for (int j = 0; j < TK; j++) {
            const __m256 v0 = _mm256_load_ps(&t->vf[j][c]), v1 = _mm256_load_ps(&t->vf[j][c + 8]);
            _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
            {
                const __m256 pp = _mm256_broadcast_ss(&t->s[r + i][j]);
                lo[i] = _mm256_fmadd_ps(pp, v0, lo[i]);
                hi[i] = _mm256_fmadd_ps(pp, v1, hi[i]);
            }
        }
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        {
            float *o = t->o + (size_t)(r + i) * t->hd + c;
            _mm256_store_ps(o, lo[i]);
            _mm256_store_ps(o + 8, hi[i]);
        }
    }
}

static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v)
{
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Online softmax of one key tile for every row; the probabilities replace the scores. */
static void softmax_tile(tile *t, int j0, float scale, int r0, int r1)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    for (int r = r0; r < r1; r++) {
        const int lim = t->limit[r] - j0;
        if (lim < 0) {
            t->corr[r] = 1.0f;
            _mm256_store_ps(&t->s[r][0], _mm256_setzero_ps());
            _mm256_store_ps(&t->s[r][8], _mm256_setzero_ps());
            continue;
        }
        __m256 s0 = _mm256_mul_ps(_mm256_load_ps(&t->s[r][0]), sc);
        __m256 s1 = _mm256_mul_ps(_mm256_load_ps(&t->s[r][8]), sc);
        if (lim < TK - 1) {
            const __m256i lv = _mm256_set1_epi32(lim);
            s0 = _mm256_blendv_ps(s0, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, lv)));
            s1 = _mm256_blendv_ps(
                s1, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(8)), lv)));
        }
        const float tmax = hmax8(_mm256_max_ps(s0, s1));
        const float mnew = tmax > t->m[r] ? tmax : t->m[r];
        t->corr[r] = expf(t->m[r] - mnew);
        t->m[r] = mnew;
        const __m256 mv = _mm256_set1_ps(mnew);
        const __m256 p0 = ops_exp256(_mm256_sub_ps(s0, mv)), p1 = ops_exp256(_mm256_sub_ps(s1, mv));
        _mm256_store_ps(&t->s[r][0], p0);
        _mm256_store_ps(&t->s[r][8], p1);
        t->l[r] = t->l[r] * t->corr[r] + hsum8(_mm256_add_ps(p0, p1));
    }
}

/* Rows = heads [hs, hs+nh) × tokens [t0, t0+nt); with nt == 1 (decode) the heads may
 * span several kv-heads, read key tile by key tile in address order (see attn_avx512.c). */
static void attend_tile(tile *t, const mq_attn_args *a, int hs, int nh, int t0, int nt)
{
    const int group = a->n_head / a->n_kv;
    const int kv0 = hs / group, kv1 = (hs + nh - 1) / group + 1;
    const int hd = a->head_dim;
    t->nrows = nh * nt;
    t->hd = hd;
    int nkeys = 0;
    for (int r = 0; r < t->nrows; r++) {
        const int tok = t0 + r / nh, h = hs + r % nh;
        t->q[r] = a->q + ((size_t)tok * a->n_head + h) * hd;
        t->limit[r] = a->pos0 + tok;
        t->m[r] = -INFINITY;
        t->l[r] = 0.0f;
        for (int d = 0; d < hd; d += 8)
            _mm256_store_ps(t->o + (size_t)r * hd + d, _mm256_setzero_ps());
        if (t->limit[r] + 1 > nkeys)
            nkeys = t->limit[r] + 1;
    }
    for (int j0 = 0; j0 < nkeys; j0 += TK)
        for (int kvh = kv0; kvh < kv1; kvh++) {
            const int ra = nt > 1 ? 0 : (kvh * group > hs ? kvh * group : hs) - hs;
            const int rb = nt > 1 ? t->nrows : ((kvh + 1) * group < hs + nh ? (kvh + 1) * group : hs + nh) - hs;
            load_kv_tile(t, a, kvh, j0, nkeys);
            int r = ra;
            for (; r + 4 <= rb; r += 4)
                qk_rows(t, r, 4);
            for (; r < rb; r++)
                qk_rows(t, r, 1);
            softmax_tile(t, j0, a->scale, ra, rb);
            for (r = ra; r + 4 <= rb; r += 4)
                pv_rows(t, r, 4);
            for (; r < rb; r++)
                pv_rows(t, r, 1);
        }
    for (int r = 0; r < t->nrows; r++) {
        const int tok = t0 + r / nh, h = hs + r % nh;
        float *out = a->out + ((size_t)tok * a->n_head + h) * hd;
        const __m256 inv = _mm256_set1_ps(1.0f / t->l[r]);
        for (int d = 0; d < hd; d += 8)
            _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_load_ps(t->o + (size_t)r * hd + d), inv));
    }
}

void attention_avx2(const mq_attn_args *a, int h0, int h1)
{
    if (a->head_dim % 16 || a->head_dim > HD_MAX || a->head_dim <= 0) {
        attention_ref(a, h0, h1);
        return;
    }
    tile t;
    const int group = a->n_head / a->n_kv;
    const int rows = ROW_FLOATS / a->head_dim < ROWS_MAX ? ROW_FLOATS / a->head_dim : ROWS_MAX;
    if (a->n_tok == 1) { /* decode: all heads of the range in one walk over the cache */
        for (int hs = h0; hs < h1; hs += rows)
            attend_tile(&t, a, hs, h1 - hs < rows ? h1 - hs : rows, 0, 1);
        return;
    }
    for (int h = h0; h < h1;) {
        const int kvh = h / group;
        const int he = (kvh + 1) * group < h1 ? (kvh + 1) * group : h1;
        for (int hs = h; hs < he; hs += rows) {
            const int nh = he - hs < rows ? he - hs : rows;
            const int tq = rows / nh;
            for (int t0 = 0; t0 < a->n_tok; t0 += tq)
                attend_tile(&t, a, hs, nh, t0, a->n_tok - t0 < tq ? a->n_tok - t0 : tq);
        }
        h = he;
    }
}
