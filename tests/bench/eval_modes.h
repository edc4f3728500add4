/* tests/bench/eval_modes.h — scoring text in the three modes (used by mq_eval and its test).
 *
 * doc_nll(): the NLL of every token of a document given its prefix, as each mode would
 * produce it if that prefix were the prompt (mq_engine_score_positions: the engine's
 * mode rule, teacher-forced — one prefill of the document, then each position as the
 * prompt's last token; for mixed, BF16 rows over the document's NVFP4 KV, each on a
 * private copy of the block holding its position: v->priv).
 * tests/golden/test_eval_modes.c checks it against mq_engine_prompt() position by position.
 *
 * cont_logprobs(): the continuation setting — a PREFIX-token prompt through
 * mq_engine_prompt() in the mode, then CONT tokens by teacher forcing in the mode's decode
 * precision; log-probs of tokens PREFIX..PREFIX+CONT-1.
 * Header-only (static functions) for two programs of tests/.
 */
#ifndef MQ_TESTS_EVAL_MODES_H
#define MQ_TESTS_EVAL_MODES_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/bench/eval_corpus.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "kernels/mq_kernels.h"
#include "engine/pool.h"
#include "common/errmsg.h"

#define PREFIX       512
#define CONT         128
#define CHUNK        256
#define BATCH        32
#define BLOCK_TOKENS 16

typedef struct ev {
    mq_model *m;
    mq_engine *e;
    mq_pool *pool;
    int vocab;
    size_t block_bytes;
    int nb;           /* blocks for EVAL_MAX_TOKENS positions */
    uint8_t *kv_mem;  /* nb shared + BATCH private blocks */
    uint8_t **shared; /* [nb] */
    uint8_t **priv;   /* [BATCH] */
    float *logits;    /* [max(CHUNK, BATCH, CONT), vocab] */
} ev;

static inline int ev_init(ev *v, const char *dir, int threads, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    int rc = mq_model_load(dir, NULL, &v->m, err, errlen);
    if (rc)
        return rc;
    v->vocab = v->m->cfg.vocab;
    if ((rc = mq_pool_create(&v->pool, threads, NULL, "mq-eval"))) {
        return mq_errmsg(err, errlen, rc, "pool: %s", strerror(-rc));
    }
    mq_engine_opts o = {
        .max_chunk = CHUNK, .max_batch = BATCH, .block_tokens = BLOCK_TOKENS, .max_context = EVAL_MAX_TOKENS
    };
    if ((rc = mq_engine_create(&v->e, v->m, &o, err, errlen)))
        return rc;
    v->block_bytes = (mq_kv_block_bytes(&v->m->cfg, BLOCK_TOKENS) + 63) / 64 * 64;
    v->nb = (EVAL_MAX_TOKENS + BLOCK_TOKENS - 1) / BLOCK_TOKENS;
    if (posix_memalign((void **)&v->kv_mem, 64, v->block_bytes * (size_t)(v->nb + BATCH)))
        return -ENOMEM;
    v->shared = calloc((size_t)v->nb, sizeof *v->shared);
    v->priv = calloc(BATCH, sizeof *v->priv);
    int rows = CHUNK > BATCH ? CHUNK : BATCH;
    if (rows < CONT)
        rows = CONT;
    v->logits = malloc((size_t)rows * (size_t)v->vocab * sizeof *v->logits);
    if (!v->shared || !v->priv || !v->logits)
        return -ENOMEM;
    for (int b = 0; b < v->nb; b++)
        v->shared[b] = v->kv_mem + (size_t)b * v->block_bytes;
    for (int s = 0; s < BATCH; s++)
        v->priv[s] = v->kv_mem + (size_t)(v->nb + s) * v->block_bytes;
    return 0;
}

static inline void ev_free(ev *v)
{
    mq_engine_free(v->e);
    mq_pool_destroy(v->pool);
    mq_model_free(v->m);
    free(v->kv_mem);
    free(v->shared);
    free(v->priv);
    free(v->logits);
}

/* -log softmax(row)[target] */
static inline double nll_of(const float *row, int vocab, int target)
{
    return (double)mq_logsumexp(row, vocab) - (double)row[target];
}

struct nll_acc {
    const int *ids;
    int vocab;
    double *sum, *per_pos;
};

static inline int add_nll_rows(void *ctx, int pos0, int m, const float *logits)
{
    struct nll_acc *a = ctx;
    for (int r = 0; r < m; r++) {
        double x = nll_of(logits + (size_t)r * a->vocab, a->vocab, a->ids[pos0 + r + 1]);
        *a->sum += x;
        if (a->per_pos)
            a->per_pos[pos0 + r] = x;
    }
    return 0;
}

/* Sum of NLL over predicted positions 1..n-1 of one document in one mode; per_pos[i]
 * (optional, n-1 entries) = the NLL of token i+1. */
static inline int doc_nll(ev *v, const eval_doc *d, mq_prec_mode mode, double *sum, double *per_pos)
{
    struct nll_acc a = { (const int *)d->ids, v->vocab, sum, per_pos };
    mq_kv_seq seq = { v->shared, v->nb };
    return mq_engine_score_positions(v->e, v->pool, &seq, v->priv, BATCH, a.ids, d->n, mode, v->logits, add_nll_rows,
                                     &a);
}

/* Log-probs [CONT, vocab] of tokens P..P+C-1 of one document in one mode. */
static inline int cont_logprobs(ev *v, const eval_doc *d, mq_prec_mode mode, float *out)
{
    const int *ids = (const int *)d->ids;
    mq_kv_seq seq = { v->shared, v->nb };
    int rc = mq_engine_prompt(v->e, v->pool, &seq, ids, PREFIX, 0, mode, out);
    if (!rc)
        rc = mq_engine_forward(v->e, v->pool, &seq, ids + PREFIX, CONT - 1, PREFIX, mq_prec_mode_decode(mode),
                               out + v->vocab, MQ_LOGITS_ALL);
    for (int r = 0; r < CONT && !rc; r++) {
        float *row = out + (size_t)r * v->vocab;
        float lse = mq_logsumexp(row, v->vocab);
        if (!isfinite(lse))
            return -EDOM;
        for (int i = 0; i < v->vocab; i++)
            row[i] -= lse;
    }
    return rc;
}

#endif
