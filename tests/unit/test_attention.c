/* Attention of every ISA against an FP64 naive attention over a paged BF16 KV cache:
 * several GQA ratios, head_dim 16..256, block_tokens 1/3/7/16/64, pos0 > 0 (a prefill
 * chunk after cached tokens), n_tok 1 (decode) and more than one row tile, head ranges
 * that split a kv group.
 *
 * Tolerances: the scalar and AVX2 paths are FP32 throughout (1e-5 of max|v|: FP32
 * rounding over hundreds of keys); the AVX-512 path rounds Q and the probabilities to
 * BF16 (attn_avx512.c), so it is compared with an FP64 attention of the BF16-rounded
 * Q at 3e-3 of max|v| (about 3x the largest error seen; the probabilities' BF16 rounding
 * is 2^-9 relative).
 */
#include "tests/harness.h"
#include "kernels/mq_kernels.h"

#include <math.h>
#include <string.h>

typedef struct cfg {
    int n_head, n_kv, hd, bt, pos0, n_tok;
} cfg;

typedef struct cache {
    int nblk;
    uint16_t **k, **v;
} cache;

/* Blocks allocated separately and filled in a scrambled order, so the paging is real. */
static void cache_make(cache *c, const cfg *g, unsigned long long *s)
{
    const int P = g->pos0 + g->n_tok;
    c->nblk = (P + g->bt - 1) / g->bt;
    c->k = calloc((size_t)c->nblk, sizeof *c->k);
    c->v = calloc((size_t)c->nblk, sizeof *c->v);
    const size_t per = (size_t)g->bt * g->n_kv * g->hd;
    for (int b = c->nblk - 1; b >= 0; b--) {
        c->k[b] = malloc(per * 2);
        c->v[b] = malloc(per * 2);
        for (size_t i = 0; i < per; i++) {
            c->k[b][i] = mq_f32_to_bf16(harness_gauss(s));
            c->v[b][i] = mq_f32_to_bf16(harness_gauss(s));
        }
    }
}

static void cache_free(cache *c)
{
    for (int b = 0; b < c->nblk; b++) {
        free(c->k[b]);
        free(c->v[b]);
    }
    free(c->k);
    free(c->v);
}

static const uint16_t *row(uint16_t **blocks, const cfg *g, int p, int kvh)
{
    return blocks[p / g->bt] + ((size_t)kvh * g->bt + (size_t)(p % g->bt)) * g->hd; /* head-major */
}

/* FP64 causal GQA attention; q_bf16 rounds Q to BF16 first. */
static void naive(const cfg *g, const cache *c, const float *q, double *out, int q_bf16)
{
    const int group = g->n_head / g->n_kv, hd = g->hd;
    double *sc = malloc(sizeof(double) * (size_t)(g->pos0 + g->n_tok));
    for (int t = 0; t < g->n_tok; t++)
        for (int h = 0; h < g->n_head; h++) {
            const float *qr = q + ((size_t)t * g->n_head + h) * hd;
            const int kvh = h / group, last = g->pos0 + t;
            double mx = -INFINITY, sum = 0;
            for (int p = 0; p <= last; p++) {
                const uint16_t *k = row(c->k, g, p, kvh);
                double d = 0;
                for (int i = 0; i < hd; i++) {
                    double qv = q_bf16 ? mq_bf16_to_f32(mq_f32_to_bf16(qr[i])) : qr[i];
                    d += qv * mq_bf16_to_f32(k[i]);
                }
                sc[p] = d / sqrt((double)hd);
                mx = fmax(mx, sc[p]);
            }
            for (int p = 0; p <= last; p++) {
                sc[p] = exp(sc[p] - mx);
                sum += sc[p];
            }
            double *o = out + ((size_t)t * g->n_head + h) * hd;
            for (int i = 0; i < hd; i++)
                o[i] = 0;
            for (int p = 0; p <= last; p++) {
                const uint16_t *v = row(c->v, g, p, kvh);
                for (int i = 0; i < hd; i++)
                    o[i] += sc[p] / sum * mq_bf16_to_f32(v[i]);
            }
        }
    free(sc);
}

static void run_cfg(const cfg *g, unsigned long long seed)
{
    unsigned long long s = seed;
    cache c;
    cache_make(&c, g, &s);
    const size_t n = (size_t)g->n_tok * g->n_head * g->hd;
    float *q = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n);
    double *want = malloc(sizeof(double) * n), *want_bf = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        q[i] = harness_gauss(&s) * 3.0f; /* peaked softmax: mask bugs show */
    naive(g, &c, q, want, 0);
    naive(g, &c, q, want_bf, 1);
    double vmax = 0;
    for (int b = 0; b < c.nblk; b++)
        for (size_t i = 0; i < (size_t)g->bt * g->n_kv * g->hd; i++)
            vmax = fmax(vmax, fabs(mq_bf16_to_f32(c.v[b][i])));
    mq_attn_args a = {
        .q = q,
        .out = out,
        .n_tok = g->n_tok,
        .pos0 = g->pos0,
        .n_head = g->n_head,
        .n_kv = g->n_kv,
        .head_dim = g->hd,
        .k_blocks = (const uint16_t *const *)c.k,
        .v_blocks = (const uint16_t *const *)c.v,
        .block_tokens = g->bt,
        .scale = 1.0f / sqrtf((float)g->hd),
    };
    for (int isa = MQ_ISA_SCALAR; isa <= MQ_ISA_AVX512; isa++) {
        if (!mq_kernels_cpu_has((mq_isa)isa))
            continue;
        mq_kernels_force((mq_isa)isa);
        for (size_t i = 0; i < n; i++)
            out[i] = NAN; /* every output must be written */
        /* two calls splitting the heads inside a kv group (a thread pool's split) */
        const int mid = g->n_head / 2 + (g->n_head > 2 && g->n_head / g->n_kv > 1 ? 1 : 0);
        mq_attention(&a, 0, mid);
        mq_attention(&a, mid, g->n_head);
        const int bf = isa == MQ_ISA_AVX512 && g->hd % 16 == 0; /* else it falls back to FP32 */
        const double *ref = bf ? want_bf : want;
        const double tol = (bf ? 3e-3 : 1e-5) * vmax;
        double worst = 0;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            double e = fabs(out[i] - ref[i]);
            if (!(e <= worst)) {
                worst = e;
                at = i;
            }
        }
        if (getenv("MQ_TEST_VERBOSE"))
            printf("    %s %d/%d hd %d bt %d pos0 %d n %d: err %.3g (tol %.3g)\n", mq_isa_name((mq_isa)isa), g->n_head,
                   g->n_kv, g->hd, g->bt, g->pos0, g->n_tok, worst, tol);
        CHECK(worst <= tol, "%s heads %d/%d hd %d bt %d pos0 %d n_tok %d: max err %g at %zu (tol %g)",
              mq_isa_name((mq_isa)isa), g->n_head, g->n_kv, g->hd, g->bt, g->pos0, g->n_tok, worst, at, tol);
    }
    free(q);
    free(out);
    free(want);
    free(want_bf);
    cache_free(&c);
}

static void test_attention_prefill(void)
{
    static const cfg cfgs[] = {
        { 4, 2, 64, 16, 0, 37 },     { 8, 1, 128, 1, 5, 40 }, /* GQA 8, one token per block */
        { 6, 6, 256, 64, 70, 33 },                            /* MHA, head_dim 256 */
        { 16, 8, 128, 16, 100, 70 },                          /* Qwen3-1.7B heads, a chunk after 100 cached tokens */
        { 4, 4, 80, 7, 3, 20 },                               /* head_dim not a multiple of 32 */
        { 2, 1, 96, 3, 0, 70 },      { 12, 4, 72, 16, 9, 5 }, /* head_dim 72: the fast paths fall back */
        { 3, 1, 64, 64, 31, 2 },     { 2, 2, 16, 4, 2, 9 },   /* head_dim 16: partial vectors everywhere */
        { 80, 1, 256, 8, 5, 3 },                              /* a kv group larger than a row tile */
        { 4, 2, 128, 16, 100, 600 },                          /* three row tiles of 256 tokens after cached ones */
        { 8, 2, 64, 7, 45, 150 },                             /* GQA 4, head_dim 64: 128 tokens per row tile */
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        run_cfg(&cfgs[i], 100 + i);
}

static void test_attention_decode(void)
{
    static const cfg cfgs[] = {
        { 16, 8, 128, 16, 300, 1 },  { 32, 8, 128, 64, 0, 1 }, /* a single key */
        { 8, 2, 256, 1, 47, 1 },     { 4, 1, 64, 16, 63, 1 },  /* ends exactly on a block edge */
        { 14, 2, 64, 5, 200, 1 },                              /* 7 q-heads per kv-head */
        { 96, 8, 128, 16, 40, 1 },                             /* more heads than a row tile, split inside a group */
        { 16, 8, 128, 64, 1000, 1 },                           /* Qwen3-1.7B heads: key tiles inside 64-token blocks */
        { 8, 2, 64, 32, 500, 1 },    { 12, 4, 128, 64, 130, 1 }, /* head_dim 64; 3 q-heads per kv-head */
        { 32, 4, 128, 64, 300, 1 },  { 8, 4, 80, 64, 200, 1 },   /* 8 q-heads per kv-head; head_dim 80 */
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        run_cfg(&cfgs[i], 200 + i);
}

/* Prompt rows (a->prompt) give the same bits whatever the chunk: a row computed alone
 * (n_tok 1 at its position) equals that row of a call over the whole chunk, on every
 * ISA (the engine's chunked prefill relies on it). */
static void test_prompt_rows_chunk_invariant(void)
{
    const cfg g = { 16, 8, 128, 64, 90, 6 };
    unsigned long long s = 300;
    cache c;
    cache_make(&c, &g, &s);
    const size_t row_n = (size_t)g.n_head * g.hd, n = (size_t)g.n_tok * row_n;
    float *q = malloc(sizeof(float) * n), *all = malloc(sizeof(float) * n), *one = malloc(sizeof(float) * row_n);
    for (size_t i = 0; i < n; i++)
        q[i] = harness_gauss(&s) * 3.0f;
    mq_attn_args a = { .q = q,
                       .out = all,
                       .n_tok = g.n_tok,
                       .pos0 = g.pos0,
                       .n_head = g.n_head,
                       .n_kv = g.n_kv,
                       .head_dim = g.hd,
                       .k_blocks = (const uint16_t *const *)c.k,
                       .v_blocks = (const uint16_t *const *)c.v,
                       .block_tokens = g.bt,
                       .scale = 1.0f / sqrtf((float)g.hd),
                       .prompt = 1 };
    for (int isa = MQ_ISA_SCALAR; isa <= MQ_ISA_AVX512; isa++) {
        if (!mq_kernels_cpu_has((mq_isa)isa))
            continue;
        mq_kernels_force((mq_isa)isa);
        a.q = q, a.out = all, a.n_tok = g.n_tok, a.pos0 = g.pos0;
        mq_attention(&a, 0, g.n_head);
        for (int t = 0; t < g.n_tok; t++) {
            a.q = q + t * row_n, a.out = one, a.n_tok = 1, a.pos0 = g.pos0 + t;
            mq_attention(&a, 0, g.n_head);
            CHECK(!memcmp(one, all + t * row_n, row_n * sizeof(float)), "%s: prompt row %d alone differs",
                  mq_isa_name((mq_isa)isa), t);
        }
    }
    free(q);
    free(all);
    free(one);
    cache_free(&c);
}

int main(void)
{
    mq_kernels_init();
    RUN(test_attention_prefill);
    RUN(test_attention_decode);
    RUN(test_prompt_rows_chunk_invariant);
    return harness_done();
}
