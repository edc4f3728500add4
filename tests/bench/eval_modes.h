/* tests/bench/eval_modes.h — scoring text in the three modes (used by mq_eval and its test).
 *
 * doc_nll(): the NLL of every token of a document given its prefix, as each mode would
 * produce it if that prefix were the prompt:
 *   bf16: everything BF16;  fp4: everything NVFP4 (W4A4);
 *   mixed: tokens 0..i-1 prefilled with NVFP4 (they only fill the KV cache) and token i
 *          run in BF16 on top of that cache — NVFP4.md's mixed rule for a prompt 0..i.
 * For mixed this is done for all positions at once: one NVFP4 prefill of the document,
 * then batched BF16 decode steps where sequence s (position p) shares the document's
 * NVFP4 KV blocks and has a private copy of the block holding p, which the step writes.
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
    int nb;            /* blocks for EVAL_MAX_TOKENS positions */
    uint8_t *kv_mem;   /* nb shared + BATCH private blocks */
    uint8_t **shared;  /* [nb] */
    uint8_t **priv;    /* [BATCH] */
    uint8_t **vblocks; /* [BATCH][nb]: block lists of the mixed-mode virtual sequences */
    float *logits;     /* [max(CHUNK, BATCH, CONT), vocab] */
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
    v->vblocks = calloc((size_t)BATCH * (size_t)v->nb, sizeof *v->vblocks);
    int rows = CHUNK > BATCH ? CHUNK : BATCH;
    if (rows < CONT)
        rows = CONT;
    v->logits = malloc((size_t)rows * (size_t)v->vocab * sizeof *v->logits);
    if (!v->shared || !v->priv || !v->vblocks || !v->logits)
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
    free(v->vblocks);
    free(v->logits);
}

/* -log softmax(row)[target] */
static inline double nll_of(const float *row, int vocab, int target)
{
    return (double)mq_logsumexp(row, vocab) - (double)row[target];
}

/* Sum of NLL over predicted positions 1..n-1 of one document in one mode; per_pos[i]
 * (optional, n-1 entries) = the NLL of token i+1. */
static inline int doc_nll(ev *v, const eval_doc *d, mq_prec_mode mode, double *sum, double *per_pos)
{
    const int *ids = (const int *)d->ids;
    int n = d->n, rc = 0;
    mq_kv_seq seq = { v->shared, v->nb };
    const mq_prec prompt = mq_prec_mode_prompt(mode), last = mq_prec_mode_decode(mode);
    if (prompt == last) { /* bf16, fp4: one precision for every position */
        for (int p0 = 0; p0 < n - 1 && !rc; p0 += CHUNK) {
            int len = n - 1 - p0 < CHUNK ? n - 1 - p0 : CHUNK; /* the last token predicts nothing */
            rc = mq_engine_forward(v->e, v->pool, &seq, ids + p0, len, p0, prompt, v->logits, MQ_LOGITS_ALL);
            for (int r = 0; r < len && !rc; r++) {
                double x = nll_of(v->logits + (size_t)r * v->vocab, v->vocab, ids[p0 + r + 1]);
                *sum += x;
                if (per_pos)
                    per_pos[p0 + r] = x;
            }
        }
        return rc;
    }
    /* mixed: NVFP4 KV for positions 0..n-3 (position p's own KV is always BF16) */
    for (int p0 = 0; p0 < n - 2 && !rc; p0 += CHUNK) {
        int len = n - 2 - p0 < CHUNK ? n - 2 - p0 : CHUNK;
        rc = mq_engine_forward(v->e, v->pool, &seq, ids + p0, len, p0, prompt, NULL, MQ_LOGITS_NONE);
    }
    mq_kv_seq seqs[BATCH];
    int tok[BATCH], pos[BATCH];
    for (int i0 = 0; i0 < n - 1 && !rc; i0 += BATCH) {
        int ns = n - 1 - i0 < BATCH ? n - 1 - i0 : BATCH;
        for (int s = 0; s < ns; s++) {
            int p = i0 + s, b = p / BLOCK_TOKENS;
            uint8_t **bl = v->vblocks + (size_t)s * v->nb;
            for (int j = 0; j < b; j++)
                bl[j] = v->shared[j];
            memcpy(v->priv[s], v->shared[b], v->block_bytes); /* positions < p of block b */
            bl[b] = v->priv[s];
            seqs[s].blocks = bl;
            seqs[s].n_blocks = b + 1;
            tok[s] = ids[p];
            pos[s] = p;
        }
        rc = mq_engine_decode(v->e, v->pool, seqs, tok, pos, ns, last, v->logits);
        for (int s = 0; s < ns && !rc; s++) {
            double x = nll_of(v->logits + (size_t)s * v->vocab, v->vocab, ids[i0 + s + 1]);
            *sum += x;
            if (per_pos)
                per_pos[i0 + s] = x;
        }
    }
    return rc;
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
