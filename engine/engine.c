/* engine/engine.c — the Qwen3 / Qwen2 / Llama forward pass over mq_kernels.
 *
 * A forward runs `m` token rows at once. Rows belong to sequences: a prefill chunk is
 * one sequence with n rows at positions pos0.., a decode step is nseq sequences with one
 * row each. Per layer (shapes for m rows; qd = n_head*head_dim, kvd = n_kv*head_dim):
 *
 *   x [m, hidden]                     residual stream (FP32)
 *   xn = rmsnorm(x) · attn_norm       [m, hidden]
 *   q, k, v = xn · Wq/k/vᵀ (+ bias)   [m, qd], [m, kvd], [m, kvd]
 *   q, k = RMSNorm per head (Qwen3); RoPE (rotate-half) at each row's position
 *   K/V cache[pos] = k, v (BF16)
 *   att = softmax(q·Kᵀ/√hd) · V       [m, qd]  (causal, grouped-query)
 *   x += att · Woᵀ
 *   xn = rmsnorm(x) · ffn_norm
 *   h = silu(xn · Wgateᵀ) * (xn · Wupᵀ) [m, inter]
 *   x += h · Wdownᵀ
 * then xn = rmsnorm(x) · final_norm and logits = xn · Wheadᵀ [rows, vocab].
 *
 * The linears split their columns across the pool's threads, attention its (sequence,
 * kv-head) pairs (each kv-head's keys read by one thread). The small steps between them
 * (norms, RoPE and the KV write, SwiGLU, the conversion of a linear's input) run over
 * the rows: with few rows (a decode step) as the epilogue of the run before them, by one
 * thread (mq_pool_run_then: no hand-off of their own), else as a pool run split by rows.
 * The linear's input goes to BF16 (BF16 path) or to NVFP4 with g = 2688/amax over each
 * sequence's rows (an amax per row, reduced per sequence between two runs).
 * Batch invariance: a sequence's numbers never depend on the other sequences of the
 * forward. NVFP4 takes its dynamic global scale per sequence (a per-row g_x in the
 * kernels; for one sequence that is NVFP4.md's per-tensor scale of the call), and a
 * forward over several sequences runs its BF16 GEMMs in row groups that keep the
 * kernels' GEMV summation order (decode batches of 9 or more rows would otherwise take
 * the tiled kernel, whose order differs in the last bits).
 * Fused steps: a linear's input is made by one "prep" step per row that may first add
 * the residual (x += delta) or apply SwiGLU, then normalize, then convert; forward_rows
 * names each one (prep_residual_norm, prep_swiglu, prep_plain) where llama2.c has the
 * loop. RoPE's cos/sin of each row are computed once per forward (layer 0) into a table.
 */
#include "engine/engine.h"
#include "common/errmsg.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COL_ALIGN          16 /* columns per thread slice: whole SIMD vectors */
#define ENGINE_MAX_CHUNK   (1 << 20)
#define ENGINE_MAX_BATCH   65536
#define ENGINE_MAX_SCRATCH 32 /* scratch buffers of one engine */

struct mq_engine {
    const mq_model *m;
    const mq_config *c;
    int max_chunk, max_batch, max_rows, block_tokens, max_blocks, max_k;
    float *x;         /* [max_rows, hidden] residual stream */
    float *xn;        /* [max_rows, hidden] normed input of a linear */
    float *q;         /* [max_rows, qd] */
    float *k, *v;     /* [max_rows, kvd] */
    float *att;       /* [max_rows, qd] attention output */
    float *delta;     /* [max_rows, hidden] o_proj / down_proj output */
    float *gate, *up; /* [max_rows, inter] */
    uint16_t *xb16;   /* [max_rows, max_k] BF16 copy of a linear's input */
    void *act_mem;    /* NVFP4 activation memory, bound per linear */
    mq_fp4_act act;
    float *inv_freq;               /* [head_dim/2] RoPE */
    float *rope;                   /* [max_rows][head_dim] cos, then sin, at each row's position */
    float *row_amax;               /* [max_rows] max |x| of each row of a linear's input */
    float *row_g;                  /* [max_rows] NVFP4 g_x of each row (its sequence's) */
    float *seq_amax;               /* [max_batch] */
    const uint16_t **kptr, **vptr; /* [max_batch][max_blocks] block pointers of one layer */
    int *row_seq, *row_pos;        /* [max_rows] */
    int *seq_row0;                 /* [max_batch] first row of each sequence */
    int nseq;                      /* sequences of the forward running now */
    int rows_tiled;                /* the forward running now computes prompt rows: BF16 layer linears in the
                     * tiled order at any row count (see mq_engine_forward) */
    int *ones;                     /* [max_batch] = 1 (decode: one token per sequence) */
    size_t bytes;
    void *alloc[ENGINE_MAX_SCRATCH]; /* every scratch buffer, for free */
    int n_alloc, oom;
};

size_t mq_kv_block_bytes(const mq_config *cfg, int block_tokens)
{
    return (size_t)cfg->n_layers * 2 * (size_t)block_tokens * (size_t)cfg->n_kv * (size_t)cfg->head_dim *
           sizeof(uint16_t);
}

/* ---- creation ------------------------------------------------------------------- */

/* A zeroed, 64-byte aligned buffer owned by the engine; on failure NULL and e->oom. */
static void *scratch(mq_engine *e, size_t bytes)
{
    bytes = (bytes + 63) / 64 * 64;
    void *p = NULL;
    if (e->n_alloc == ENGINE_MAX_SCRATCH || posix_memalign(&p, 64, bytes ? bytes : 64)) {
        e->oom = 1;
        return NULL;
    }
    memset(p, 0, bytes);
    e->bytes += bytes;
    e->alloc[e->n_alloc++] = p;
    return p;
}

int mq_engine_create(mq_engine **out, const mq_model *model, const mq_engine_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    const mq_config *c = &model->cfg;
    if (!o || o->max_chunk < 1 || o->max_chunk > ENGINE_MAX_CHUNK || o->max_batch < 1 ||
        o->max_batch > ENGINE_MAX_BATCH || o->block_tokens < 1) {
        return mq_errmsg(err, errlen, -EINVAL,
                         "engine: max_chunk %d (1..%d), max_batch %d (1..%d) or block_tokens %d (>= 1) out of range",
                         o ? o->max_chunk : 0, ENGINE_MAX_CHUNK, o ? o->max_batch : 0, ENGINE_MAX_BATCH,
                         o ? o->block_tokens : 0);
    }
    mq_engine *e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->m = model;
    e->c = c;
    e->max_chunk = o->max_chunk;
    e->max_batch = o->max_batch;
    e->max_rows = o->max_chunk > o->max_batch ? o->max_chunk : o->max_batch;
    e->block_tokens = o->block_tokens;
    int ctx = o->max_context > 0 ? o->max_context : c->max_pos;
    e->max_blocks = (ctx + o->block_tokens - 1) / o->block_tokens;
    const size_t R = (size_t)e->max_rows, qd = (size_t)c->n_head * c->head_dim, kvd = (size_t)c->n_kv * c->head_dim;
    e->max_k = c->hidden;
    if ((int)qd > e->max_k)
        e->max_k = (int)qd;
    if (c->inter > e->max_k)
        e->max_k = c->inter;
    size_t act = 0;
    const int ks[3] = { c->hidden, (int)qd, c->inter };
    for (int i = 0; i < 3; i++) {
        size_t b = mq_fp4_act_bytes(e->max_rows, ks[i]);
        if (b > act)
            act = b;
    }
    e->x = scratch(e, R * c->hidden * 4);
    e->xn = scratch(e, R * c->hidden * 4);
    e->delta = scratch(e, R * c->hidden * 4);
    e->q = scratch(e, R * qd * 4);
    e->att = scratch(e, R * qd * 4);
    e->k = scratch(e, R * kvd * 4);
    e->v = scratch(e, R * kvd * 4);
    e->gate = scratch(e, R * c->inter * 4);
    e->up = scratch(e, R * c->inter * 4);
    e->xb16 = scratch(e, R * e->max_k * 2);
    e->act_mem = scratch(e, act);
    e->inv_freq = scratch(e, (size_t)c->head_dim / 2 * 4);
    e->rope = scratch(e, R * c->head_dim * 4);
    e->row_amax = scratch(e, R * sizeof(float));
    e->row_g = scratch(e, R * sizeof(float));
    e->seq_amax = scratch(e, (size_t)o->max_batch * sizeof(float));
    e->kptr = scratch(e, (size_t)o->max_batch * e->max_blocks * sizeof *e->kptr);
    e->vptr = scratch(e, (size_t)o->max_batch * e->max_blocks * sizeof *e->vptr);
    e->row_seq = scratch(e, R * sizeof(int));
    e->row_pos = scratch(e, R * sizeof(int));
    e->seq_row0 = scratch(e, (size_t)o->max_batch * sizeof(int));
    e->ones = scratch(e, (size_t)o->max_batch * sizeof(int));
    if (e->oom) {
        mq_errmsg(err, errlen, 0, "engine: out of memory for scratch (%zu bytes so far)", e->bytes);
        mq_engine_free(e);
        return -ENOMEM;
    }
    for (int i = 0; i < o->max_batch; i++)
        e->ones[i] = 1;
    mq_rope_inv_freq(e->inv_freq, c->head_dim, c->rope_theta);
    *out = e;
    return 0;
}

void mq_engine_free(mq_engine *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->n_alloc; i++)
        free(e->alloc[i]);
    free(e);
}

size_t mq_engine_scratch_bytes(const mq_engine *e)
{
    return e->bytes;
}

/* ---- steps: pool runs, and the small steps between them -------------------------- */

/* A small step over the rows of the forward (a norm, RoPE and the KV write, ...): its
 * row function. With few rows (a decode batch) it is the epilogue of the run before it,
 * done by one thread (the others would only wait); with more, a run of its own split by
 * rows. Either way every row gets the same arithmetic. */
#define EPILOGUE_ROWS 8

struct post {
    void (*rows)(void *arg, int r0, int r1);
    void *arg;
    int m;
};

static void post_all(void *p)
{
    struct post *q = p;
    q->rows(q->arg, 0, q->m);
}

static void post_split(void *p, int tid, int nt)
{
    struct post *q = p;
    int r0, r1;
    mq_pool_split(q->m, 1, tid, nt, &r0, &r1);
    if (r0 < r1)
        q->rows(q->arg, r0, r1);
}

/* fn over the pool, then `post` (NULL: nothing) over the rows. */
static void run_then(mq_pool *pool, mq_pool_fn fn, void *arg, struct post *post)
{
    if (!post)
        mq_pool_run(pool, fn, arg);
    else if (post->m <= EPILOGUE_ROWS)
        mq_pool_run_then(pool, fn, arg, post_all, post);
    else {
        mq_pool_run(pool, fn, arg);
        mq_pool_run(pool, post_split, post);
    }
}

/* What a linear's input must become: BF16 rows, or NVFP4 (first each row's amax). */
typedef enum { WANT_BF16, WANT_AMAX } want_t;

/* The input of a linear, rows [0, m): src += delta; src = silu(src) * up;
 * dst = rmsnorm(src) · norm (else dst = src); then dst → BF16 (xb16) or row_amax.
 * Each part optional; the prep_* constructors below name the combinations used. */
struct prep_op {
    mq_engine *e;
    int m, dim;
    float *src;
    const float *delta, *up, *norm;
    float *dst;
    want_t want;
    int bad; /* a row held NaN/Inf */
};

/* dst = rmsnorm(x += delta) · norm: the residual add fused into the norm that follows it
 * (delta NULL: no add). */
static struct prep_op prep_residual_norm(mq_engine *e, mq_prec prec, int m, int dim, float *x, const float *delta,
                                         const float *norm, float *dst)
{
    return (struct prep_op){ .e = e,
                             .m = m,
                             .dim = dim,
                             .src = x,
                             .delta = delta,
                             .norm = norm,
                             .dst = dst,
                             .want = prec == MQ_PREC_BF16 ? WANT_BF16 : WANT_AMAX };
}

/* gate = silu(gate) * up: SwiGLU fused into the down projection's input. */
static struct prep_op prep_swiglu(mq_engine *e, mq_prec prec, int m, int dim, float *gate, const float *up)
{
    return (struct prep_op){ .e = e,
                             .m = m,
                             .dim = dim,
                             .src = gate,
                             .up = up,
                             .dst = gate,
                             .want = prec == MQ_PREC_BF16 ? WANT_BF16 : WANT_AMAX };
}

/* x as it is (the attention output before o_proj). */
static struct prep_op prep_plain(mq_engine *e, mq_prec prec, int m, int dim, float *x)
{
    return (struct prep_op){
        .e = e, .m = m, .dim = dim, .src = x, .dst = x, .want = prec == MQ_PREC_BF16 ? WANT_BF16 : WANT_AMAX
    };
}

static void prep_rows(void *arg, int r0, int r1)
{
    struct prep_op *o = arg;
    mq_engine *e = o->e;
    for (int r = r0; r < r1; r++) {
        float *s = o->src + (size_t)r * o->dim, *d = o->dst + (size_t)r * o->dim;
        if (o->delta)
            mq_add(s, o->delta + (size_t)r * o->dim, o->dim);
        if (o->up)
            mq_swiglu(s, s, o->up + (size_t)r * o->dim, o->dim);
        if (o->norm)
            mq_rmsnorm(d, s, o->norm, o->dim, e->c->rms_eps);
        else if (d != s)
            memcpy(d, s, (size_t)o->dim * sizeof(float));
        if (o->want == WANT_BF16) {
            mq_f32_to_bf16_row(d, e->xb16 + (size_t)r * o->dim, (size_t)o->dim);
        } else {
            float a = mq_amax_f32(d, (size_t)o->dim);
            if (!isfinite(a)) {
                o->bad = 1;
                a = 0;
            }
            e->row_amax[r] = a;
        }
    }
}

static struct post prep_post(struct prep_op *p)
{
    return (struct post){ prep_rows, p, p->m };
}

struct quant_op {
    mq_engine *e;
    const float *x;
    int m, k;
    int bad;
};

static void quant_run(void *arg, int tid, int nt)
{
    struct quant_op *o = arg;
    int r0, r1;
    mq_pool_split(o->m, 1, tid, nt, &r0, &r1);
    if (r0 < r1 && mq_fp4_act_quantize_rows(&o->e->act, o->x, (size_t)o->k, r0, r1))
        o->bad = 1;
}

/* Y_i = X · W_iᵀ for up to 3 linears sharing X; their columns are split as one range. */
struct gemm_op {
    mq_engine *e;
    mq_prec prec;
    int m, n_lin;
    const mq_linear *lin[3];
    float *y[3];
    int tiled; /* BF16 in the tiled order at any m (prompt rows of a layer) */
};

#define GEMV_ROWS        8           /* mq_gemm_bf16 takes its GEMV path up to this many rows */
#define GEMV_STRIP_BYTES (256 << 10) /* weight columns per strip: stay in L2 across row groups */

/* Y[m, a..b) = X · Wᵀ in BF16. With rows of several sequences (e->nseq > 1) and more
 * than GEMV_ROWS rows, the rows go in groups of GEMV_ROWS over column strips, so every
 * row is summed in the GEMV order it would have alone (the tiled kernel's differs in the
 * last bits); the strip is still in L2 for the next group, so W streams once. */
static void gemm_bf16_cols(const struct gemm_op *o, const mq_bf16_weight *w, float *y, int n, int a, int b)
{
    const mq_engine *e = o->e;
    const size_t k = (size_t)w->k;
    if (o->tiled) {
        mq_gemm_bf16_tiled(e->xb16, o->m, k, w, y, (size_t)n, a, b);
        return;
    }
    if (e->nseq == 1 || o->m <= GEMV_ROWS) {
        mq_gemm_bf16(e->xb16, o->m, k, w, y, (size_t)n, a, b);
        return;
    }
    int strip = (int)(GEMV_STRIP_BYTES / (k * sizeof(uint16_t))) / COL_ALIGN * COL_ALIGN;
    if (strip < COL_ALIGN)
        strip = COL_ALIGN;
    for (int c0 = a; c0 < b; c0 += strip) {
        const int c1 = b - c0 < strip ? b : c0 + strip;
        for (int r0 = 0; r0 < o->m; r0 += GEMV_ROWS) {
            const int rows = o->m - r0 < GEMV_ROWS ? o->m - r0 : GEMV_ROWS;
            mq_gemm_bf16(e->xb16 + (size_t)r0 * k, rows, k, w, y + (size_t)r0 * n, (size_t)n, c0, c1);
        }
    }
}

static void gemm_run(void *arg, int tid, int nt)
{
    struct gemm_op *o = arg;
    int total = 0;
    for (int i = 0; i < o->n_lin; i++)
        total += o->lin[i]->bf16.n;
    int c0, c1, base = 0;
    mq_pool_split(total, COL_ALIGN, tid, nt, &c0, &c1);
    for (int i = 0; i < o->n_lin; i++) {
        const mq_linear *L = o->lin[i];
        const int n = L->bf16.n;
        int a = c0 - base, b = c1 - base;
        if (a < 0)
            a = 0;
        if (b > n)
            b = n;
        if (a < b) {
            if (o->prec == MQ_PREC_BF16)
                gemm_bf16_cols(o, &L->bf16, o->y[i], n, a, b);
            else
                mq_gemm_fp4(&o->e->act, &L->fp4, o->y[i], (size_t)n, a, b);
            if (L->bias)
                for (int r = 0; r < o->m; r++)
                    mq_add(o->y[i] + (size_t)r * n + a, L->bias + a, b - a);
        }
        base += n;
    }
}

/* NVFP4 dynamic g_x per sequence, from the row amaxes, into row_g. */
static void seq_global_scales(mq_engine *e, int m)
{
    for (int s = 0; s < e->nseq; s++)
        e->seq_amax[s] = 0.0f;
    for (int r = 0; r < m; r++) {
        float *a = &e->seq_amax[e->row_seq[r]];
        if (e->row_amax[r] > *a)
            *a = e->row_amax[r];
    }
    for (int s = 0; s < e->nseq; s++)
        e->seq_amax[s] = mq_fp4_global_scale(e->seq_amax[s]);
    for (int r = 0; r < m; r++)
        e->row_g[r] = e->seq_amax[e->row_seq[r]];
}

/* Runs up to 3 linears on the prepared input `x` [m, k] (the step before produced the
 * BF16 copy or the row amaxes), then `post`. NVFP4: one quantization per run of
 * linears that share their g_x (the checkpoint's static one, or the dynamic one per
 * sequence). */
static int linears(mq_engine *e, mq_pool *pool, mq_prec prec, const float *x, int m, int k, const mq_linear *const *lin,
                   float *const *y, int n_lin, struct post *post)
{
    if (prec == MQ_PREC_BF16) {
        struct gemm_op g = { e, prec, m, n_lin, { 0 }, { 0 }, e->rows_tiled };
        for (int i = 0; i < n_lin; i++) {
            g.lin[i] = lin[i];
            g.y[i] = y[i];
        }
        run_then(pool, gemm_run, &g, post);
        return 0;
    }
    seq_global_scales(e, m);
    for (int i = 0; i < n_lin;) {
        const float in_g = lin[i]->in_g > 0 ? lin[i]->in_g : 0; /* 0: dynamic */
        int j = i + 1;
        while (j < n_lin && (lin[j]->in_g > 0 ? lin[j]->in_g : 0) == in_g)
            j++;
        mq_fp4_act_bind(&e->act, m, k, e->act_mem);
        if (in_g > 0)
            e->act.g = in_g;
        else
            e->act.row_g = e->row_g;
        struct quant_op qo = { e, x, m, k, 0 };
        mq_pool_run(pool, quant_run, &qo);
        if (qo.bad)
            return -EDOM;
        struct gemm_op go = { e, prec, m, j - i, { 0 }, { 0 }, 0 };
        for (int t = i; t < j; t++) {
            go.lin[t - i] = lin[t];
            go.y[t - i] = y[t];
        }
        run_then(pool, gemm_run, &go, j == n_lin ? post : NULL);
        i = j;
    }
    return 0;
}

/* Per row: q/k RMSNorm per head (Qwen3), RoPE at the row's position, K/V into the cache.
 * Layer 0 also fills the row's RoPE table, which later layers read. */
struct qkv_op {
    mq_engine *e;
    const mq_layer *L;
    int layer, m;
    const mq_kv_seq *seqs;
};

static void qkv_rows(void *arg, int r0, int r1)
{
    struct qkv_op *o = arg;
    mq_engine *e = o->e;
    const mq_config *c = e->c;
    const int hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv * hd, bt = e->block_tokens;
    for (int r = r0; r < r1; r++) {
        float *q = e->q + (size_t)r * qd, *k = e->k + (size_t)r * kvd, *v = e->v + (size_t)r * kvd;
        if (o->L->q_norm) {
            for (int h = 0; h < c->n_head; h++)
                mq_rmsnorm(q + h * hd, q + h * hd, o->L->q_norm, hd, c->rms_eps);
            for (int h = 0; h < c->n_kv; h++)
                mq_rmsnorm(k + h * hd, k + h * hd, o->L->k_norm, hd, c->rms_eps);
        }
        const int pos = e->row_pos[r];
        float *cos = e->rope + (size_t)r * hd, *sin = cos + hd / 2;
        if (o->layer == 0)
            mq_rope_cos_sin(e->inv_freq, hd, pos, cos, sin);
        mq_rope(q, c->n_head, hd, cos, sin);
        mq_rope(k, c->n_kv, hd, cos, sin);
        /* the layer's K, then V, of the block: head-major [n_kv][bt][hd] */
        uint16_t *kc = (uint16_t *)o->seqs[e->row_seq[r]].blocks[pos / bt] + (size_t)o->layer * 2 * bt * kvd +
                       (size_t)(pos % bt) * hd;
        for (int h = 0; h < c->n_kv; h++) {
            mq_f32_to_bf16_row(k + h * hd, kc + (size_t)h * bt * hd, (size_t)hd);
            mq_f32_to_bf16_row(v + h * hd, kc + (size_t)bt * kvd + (size_t)h * bt * hd, (size_t)hd);
        }
    }
}

/* Attention: work items are (sequence, kv-head) pairs, each with its group of q-heads, so
 * a kv-head's keys are read by one thread, as whole runs (engine.h: head-major blocks). */
struct attn_op {
    mq_engine *e;
    int nseq;
    const int *ntok, *pos0;
};

static void attn_run(void *arg, int tid, int nt)
{
    struct attn_op *o = arg;
    mq_engine *e = o->e;
    const mq_config *c = e->c;
    const int nh = c->n_head, nkv = c->n_kv, hd = c->head_dim, group = nh / nkv;
    int i0, i1;
    mq_pool_split(o->nseq * nkv, 1, tid, nt, &i0, &i1);
    while (i0 < i1) {
        const int s = i0 / nkv, k0 = i0 % nkv;
        const int k1 = (i1 - s * nkv) < nkv ? i1 - s * nkv : nkv;
        const size_t row = (size_t)e->seq_row0[s] * nh * hd;
        mq_attn_args a = {
            .q = e->q + row,
            .out = e->att + row,
            .n_tok = o->ntok[s],
            .pos0 = o->pos0[s],
            .n_head = nh,
            .n_kv = nkv,
            .head_dim = hd,
            .k_blocks = e->kptr + (size_t)s * e->max_blocks,
            .v_blocks = e->vptr + (size_t)s * e->max_blocks,
            .block_tokens = e->block_tokens,
            .scale = 1.0f / sqrtf((float)hd),
            .prompt = e->rows_tiled,
        };
        mq_attention(&a, k0 * group, k1 * group);
        i0 += k1 - k0;
    }
}

/* Points kptr/vptr at layer l's K and V in every block the sequences use: the attention
 * kernel takes one pointer per block, and a block holds all layers. */
static void kv_layer_view(mq_engine *e, const mq_kv_seq *seqs, int nseq, const int *ntok, const int *pos0, int l)
{
    const size_t kvd = (size_t)e->c->n_kv * e->c->head_dim, bt = (size_t)e->block_tokens;
    const size_t layer_off = (size_t)l * 2 * bt * kvd, v_off = bt * kvd;
    for (int s = 0; s < nseq; s++) {
        const int nb = (pos0[s] + ntok[s] + e->block_tokens - 1) / e->block_tokens;
        const uint16_t **kp = e->kptr + (size_t)s * e->max_blocks, **vp = e->vptr + (size_t)s * e->max_blocks;
        for (int b = 0; b < nb; b++) {
            const uint16_t *blk = (const uint16_t *)seqs[s].blocks[b] + layer_off;
            kp[b] = blk;
            vp[b] = blk + v_off;
        }
    }
}

/* Rows of the forward: sequence s has ntok[s] tokens at positions pos0[s].. . Fills the
 * row tables; -EINVAL if a position has no KV block or a token is outside the vocabulary.
 * Returns the number of rows. */
static int map_rows(mq_engine *e, const mq_kv_seq *seqs, int nseq, const int *ntok, const int *pos0, const int *tokens)
{
    const int bt = e->block_tokens;
    int m = 0;
    e->nseq = nseq;
    for (int s = 0; s < nseq; s++) {
        const int end = pos0[s] + ntok[s];
        if (ntok[s] < 1 || pos0[s] < 0 || end > e->max_blocks * bt || end > seqs[s].n_blocks * bt)
            return -EINVAL;
        e->seq_row0[s] = m;
        for (int i = 0; i < ntok[s]; i++, m++) {
            e->row_seq[m] = s;
            e->row_pos[m] = pos0[s] + i;
        }
    }
    for (int r = 0; r < m; r++)
        if (tokens[r] < 0 || tokens[r] >= e->c->vocab)
            return -EINVAL;
    return m;
}

/* LM head on xb16 (the final norm's BF16 rows): every row, or the last row of each
 * sequence (moved to the front first). */
static void lm_head(mq_engine *e, mq_pool *pool, int m, int nseq, const int *ntok, float *logits, mq_logits which)
{
    const size_t D = (size_t)e->c->hidden;
    if (which == MQ_LOGITS_LAST) {
        for (int s = 0; s < nseq; s++) {
            const int last = e->seq_row0[s] + ntok[s] - 1;
            if (last != s)
                memmove(e->xb16 + (size_t)s * D, e->xb16 + (size_t)last * D, D * 2);
        }
        m = nseq;
    }
    struct mq_linear head = { .bf16 = e->m->lm_head };
    /* a prompt's every row in the tiled order, so its logits too do not depend on the
     * chunking; one row per sequence (the last) in the GEMV's, the quick one for a row */
    struct gemm_op g = { e, MQ_PREC_BF16, m, 1, { &head }, { logits }, e->rows_tiled && which == MQ_LOGITS_ALL };
    mq_pool_run(pool, gemm_run, &g);
}

/* ---- the forward ------------------------------------------------------------------ */

/* The layers over the rows of nseq sequences (sequence s: ntok[s] tokens at positions
 * pos0[s]..), in the order of the file header; then the logits `which` asks for.
 * Each linear's input is made by the step after the run before it (run_then). */
static int forward_rows(mq_engine *e, mq_pool *pool, const mq_kv_seq *seqs, int nseq, const int *ntok, const int *pos0,
                        const int *tokens, mq_prec prec, float *logits, mq_logits which)
{
    const mq_model *md = e->m;
    const mq_config *c = e->c;
    const int D = c->hidden, qd = c->n_head * c->head_dim;
    if (prec == MQ_PREC_FP4 && !mq_model_has_fp4(md))
        return -EINVAL;
    const int m = map_rows(e, seqs, nseq, ntok, pos0, tokens);
    if (m < 0)
        return m;

    /* embedding: x[r] = embed[token] (either layout: packed when it is the LM head too) */
    for (int r = 0; r < m; r++)
        mq_bf16_weight_row(&md->embed, tokens[r], e->x + (size_t)r * D);

    /* attention rmsnorm of layer 0: xn = rmsnorm(x) · attn_norm */
    struct prep_op in = prep_residual_norm(e, prec, m, D, e->x, NULL, md->layers[0].attn_norm, e->xn);
    struct post in_post = prep_post(&in);
    if (m <= EPILOGUE_ROWS)
        post_all(&in_post);
    else
        mq_pool_run(pool, post_split, &in_post);
    if (in.bad)
        return -EDOM;

    int rc = 0;
    struct prep_op out = { 0 };
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const mq_layer *L = &md->layers[l];

        /* q, k, v = xn · Wq/k/vᵀ; then per row q/k RMSNorm per head, RoPE, K/V → cache */
        const mq_linear *qkv[3] = { &L->q, &L->k, &L->v };
        float *qkv_out[3] = { e->q, e->k, e->v };
        struct qkv_op qo = { e, L, l, m, seqs };
        struct post qkv_post = { qkv_rows, &qo, m };
        if ((rc = linears(e, pool, prec, e->xn, m, D, qkv, qkv_out, 3, &qkv_post)))
            break;

        /* att = softmax(q·Kᵀ/√hd) · V over this layer's slice of the cache; then o_proj's input */
        kv_layer_view(e, seqs, nseq, ntok, pos0, l);
        struct attn_op ao = { e, nseq, ntok, pos0 };
        struct prep_op o_in = prep_plain(e, prec, m, qd, e->att);
        struct post o_post = prep_post(&o_in);
        run_then(pool, attn_run, &ao, &o_post);
        if (o_in.bad) {
            rc = -EDOM;
            break;
        }

        /* delta = att · Woᵀ; then the residual x += delta, fused into the FFN's norm:
         * xn = rmsnorm(x += delta) · ffn_norm */
        const mq_linear *o_lin[1] = { &L->o };
        float *o_out[1] = { e->delta };
        struct prep_op ffn_in = prep_residual_norm(e, prec, m, D, e->x, e->delta, L->ffn_norm, e->xn);
        struct post ffn_post = prep_post(&ffn_in);
        if ((rc = linears(e, pool, prec, e->att, m, qd, o_lin, o_out, 1, &ffn_post)))
            break;
        if (ffn_in.bad) {
            rc = -EDOM;
            break;
        }

        /* gate, up = xn · Wgate/upᵀ; then SwiGLU h = silu(gate) * up, the down projection's input */
        const mq_linear *gu[2] = { &L->gate, &L->up };
        float *gu_out[2] = { e->gate, e->up };
        struct prep_op dn_in = prep_swiglu(e, prec, m, c->inter, e->gate, e->up);
        struct post dn_post = prep_post(&dn_in);
        if ((rc = linears(e, pool, prec, e->xn, m, D, gu, gu_out, 2, &dn_post)))
            break;
        if (dn_in.bad) {
            rc = -EDOM;
            break;
        }

        /* delta = h · Wdownᵀ; then the residual x += delta, fused into the next layer's
         * attention norm, or the final norm (in BF16: the LM head's input) */
        const mq_linear *dn[1] = { &L->down };
        float *dn_out[1] = { e->delta };
        const int last = l == c->n_layers - 1;
        if (!last)
            out = prep_residual_norm(e, prec, m, D, e->x, e->delta, md->layers[l + 1].attn_norm, e->xn);
        else
            out = prep_residual_norm(e, MQ_PREC_BF16, m, D, e->x, e->delta, md->final_norm, e->xn);
        struct post out_post = prep_post(&out);
        if ((rc = linears(e, pool, prec, e->gate, m, c->inter, dn, dn_out, 1,
                          last && which == MQ_LOGITS_NONE ? NULL : &out_post)))
            break;
        if (out.bad)
            rc = -EDOM;
    }
    if (rc || which == MQ_LOGITS_NONE)
        return rc;
    /* logits = xn · Wheadᵀ (BF16 in every mode) */
    lm_head(e, pool, m, nseq, ntok, logits, which);
    return 0;
}

/* One sequence's rows; tiled: BF16 layer linears in the GEMM's order at any row count. */
static int forward_one(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                       mq_prec prec, float *logits, mq_logits which, int tiled)
{
    if (n < 1 || n > e->max_chunk || (which != MQ_LOGITS_NONE && which != MQ_LOGITS_LAST && which != MQ_LOGITS_ALL) ||
        (which != MQ_LOGITS_NONE && !logits))
        return -EINVAL;
    e->rows_tiled = tiled;
    int rc = forward_rows(e, pool, seq, 1, &n, &pos0, tokens, prec, logits, which);
    e->rows_tiled = 0;
    return rc;
}

int mq_engine_forward(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                      mq_prec prec, float *logits, mq_logits which)
{
    return forward_one(e, pool, seq, tokens, n, pos0, prec, logits, which, 1);
}

int mq_engine_decode(mq_engine *e, mq_pool *pool, const mq_kv_seq *seqs, const int *tokens, const int *pos, int nseq,
                     mq_prec prec, float *logits)
{
    if (nseq < 1 || nseq > e->max_batch || !logits)
        return -EINVAL;
    return forward_rows(e, pool, seqs, nseq, e->ones, pos, tokens, prec, logits, MQ_LOGITS_LAST);
}

int mq_engine_prefill_chunk(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                            mq_prec_mode mode, float *logits_last)
{
    const mq_prec prompt = mq_prec_mode_prompt(mode), last = mq_prec_mode_decode(mode);
    if (!logits_last)
        return mq_engine_forward(e, pool, seq, tokens, n, pos0, prompt, NULL, MQ_LOGITS_NONE);
    if (prompt == last)
        return mq_engine_forward(e, pool, seq, tokens, n, pos0, prompt, logits_last, MQ_LOGITS_LAST);
    /* mixed: the chunk's tokens but the last in the prompt precision (KV only), then the
     * prompt's last token alone in the decode precision, with logits (summed as decode
     * steps are: the GEMV's order, a quarter of the tiled GEMM's time for one row) */
    int rc = n > 1 ? mq_engine_forward(e, pool, seq, tokens, n - 1, pos0, prompt, NULL, MQ_LOGITS_NONE) : 0;
    if (!rc)
        rc = forward_one(e, pool, seq, tokens + n - 1, 1, pos0 + n - 1, last, logits_last, MQ_LOGITS_LAST, 0);
    return rc;
}

int mq_engine_prompt(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                     mq_prec_mode mode, float *logits_last)
{
    if (n < 1 || !logits_last)
        return -EINVAL;
    int rc = 0;
    for (int i = 0; i < n && !rc; i += e->max_chunk) {
        const int len = n - i < e->max_chunk ? n - i : e->max_chunk;
        rc = mq_engine_prefill_chunk(e, pool, seq, tokens + i, len, pos0 + i, mode, i + len == n ? logits_last : NULL);
    }
    return rc;
}

/* The rows of mq_engine_score_positions when the mode's precisions differ: each position
 * a one-row decode-precision step (the GEMV's order, as mq_engine_prefill_chunk runs a
 * prompt's last token; a decode batch is batch-invariant) on a view of seq whose block
 * holding the position is a private copy. */
static int score_last_rows(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, uint8_t *const *spare, int n_spare,
                           const int *tokens, int n, mq_prec prec, float *logits, mq_engine_rows_fn rows, void *ctx)
{
    const int batch = n_spare < e->max_batch ? n_spare : e->max_batch, nb = seq->n_blocks;
    const size_t bb = mq_kv_block_bytes(e->c, e->block_tokens);
    uint8_t **lists = malloc((size_t)batch * (size_t)nb * sizeof *lists);
    mq_kv_seq *views = malloc((size_t)batch * sizeof *views);
    int *pos = malloc((size_t)batch * sizeof *pos), rc = lists && views && pos ? 0 : -ENOMEM;
    for (int i0 = 0; i0 < n - 1 && !rc; i0 += batch) {
        const int ns = n - 1 - i0 < batch ? n - 1 - i0 : batch;
        for (int s = 0; s < ns; s++) {
            const int p = i0 + s, b = p / e->block_tokens;
            uint8_t **bl = lists + (size_t)s * (size_t)nb;
            memcpy(bl, seq->blocks, (size_t)b * sizeof *bl);
            memcpy(spare[s], seq->blocks[b], bb); /* positions < p of block b */
            bl[b] = spare[s];
            views[s] = (mq_kv_seq){ bl, b + 1 };
            pos[s] = p;
        }
        rc = mq_engine_decode(e, pool, views, tokens + i0, pos, ns, prec, logits);
        if (!rc)
            rc = rows(ctx, i0, ns, logits);
    }
    free(lists);
    free(views);
    free(pos);
    return rc;
}

int mq_engine_score_positions(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, uint8_t *const *spare, int n_spare,
                              const int *tokens, int n, mq_prec_mode mode, float *logits, mq_engine_rows_fn rows,
                              void *ctx)
{
    const mq_prec prompt = mq_prec_mode_prompt(mode), last = mq_prec_mode_decode(mode);
    if (n < 2 || !logits || !rows || (prompt != last && (!spare || n_spare < 1)))
        return -EINVAL;
    int rc = 0;
    if (prompt == last) { /* every row at the one precision; the last token predicts nothing */
        for (int p0 = 0; p0 < n - 1 && !rc; p0 += e->max_chunk) {
            const int len = n - 1 - p0 < e->max_chunk ? n - 1 - p0 : e->max_chunk;
            rc = mq_engine_forward(e, pool, seq, tokens + p0, len, p0, prompt, logits, MQ_LOGITS_ALL);
            if (!rc)
                rc = rows(ctx, p0, len, logits);
        }
        return rc;
    }
    /* the prompt part (position i's own KV is written by its row) */
    for (int p0 = 0; p0 < n - 2 && !rc; p0 += e->max_chunk) {
        const int len = n - 2 - p0 < e->max_chunk ? n - 2 - p0 : e->max_chunk;
        rc = mq_engine_prefill_chunk(e, pool, seq, tokens + p0, len, p0, mode, NULL);
    }
    return rc ? rc : score_last_rows(e, pool, seq, spare, n_spare, tokens, n, last, logits, rows, ctx);
}
