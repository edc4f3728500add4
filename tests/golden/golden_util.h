/* tests/golden/golden_util.h — what the engine's golden tests share: a model + engine +
 * pool + paged KV for one or more sequences, and small logits helpers. */
#ifndef MQ_GOLDEN_UTIL_H
#define MQ_GOLDEN_UTIL_H

#include "engine/engine.h"
#include "tests/harness.h"

#include <math.h>
#include <stdlib.h>

typedef struct gu_kv {
    uint8_t **blocks;
    int n_blocks;
    mq_kv_seq seq;
} gu_kv;

/* A sequence with room for max_pos positions, blocks allocated separately (paged). */
static inline int gu_kv_init(gu_kv *kv, const mq_config *c, int block_tokens, int max_pos)
{
    kv->n_blocks = (max_pos + block_tokens - 1) / block_tokens;
    kv->blocks = calloc((size_t)kv->n_blocks, sizeof *kv->blocks);
    if (!kv->blocks)
        return -1;
    size_t bb = mq_kv_block_bytes(c, block_tokens);
    for (int b = 0; b < kv->n_blocks; b++) {
        /* NaN-filled: reading a position never written shows up in the logits */
        if (posix_memalign((void **)&kv->blocks[b], 64, bb))
            return -1;
        memset(kv->blocks[b], 0xff, bb);
    }
    kv->seq.blocks = kv->blocks;
    kv->seq.n_blocks = kv->n_blocks;
    return 0;
}

static inline void gu_kv_free(gu_kv *kv)
{
    for (int b = 0; kv->blocks && b < kv->n_blocks; b++)
        free(kv->blocks[b]);
    free(kv->blocks);
    kv->blocks = NULL;
}

static inline float gu_max_abs_diff(const float *a, const float *b, size_t n)
{
    float d = 0;
    for (size_t i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (!(x <= d))
            d = x; /* NaN propagates as the max */
    }
    return d;
}

/* In how many of `rows` rows of V logits a and b have the same argmax. */
static inline int gu_argmax_agree(const float *a, const float *b, int rows, int V)
{
    int agree = 0;
    for (int t = 0; t < rows; t++)
        agree += mq_argmax(a + (size_t)t * V, V) == mq_argmax(b + (size_t)t * V, V);
    return agree;
}

/* log-prob of token t under logits x[n] */
static inline double gu_logprob(const float *x, int n, int t)
{
    return (double)x[t] - (double)mq_logsumexp(x, n);
}

#endif
