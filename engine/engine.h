/* engine/engine.h — the forward pass: tokens in, K/V and logits out.
 *
 * Owns: the scratch memory of one pool's forward passes (activations, quantized
 * activations, RoPE tables), sized up front for `max_chunk` prompt tokens and
 * `max_batch` decoding sequences. One engine per pool; an engine is used by one thread
 * at a time (the pool's owner). The model is shared, read-only.
 *
 * KV cache: paged. A block holds `block_tokens` positions of every layer:
 *     block = for l in layers: K [n_kv, block_tokens, head_dim] BF16, then V (same shape)
 * (head-major, as mq_attention reads it: a kv-head's keys of a block are contiguous)
 * (mq_kv_block_bytes gives its size). A sequence is an array of block pointers; the
 * caller (KV store, tests) owns and allocates the blocks and must give enough of them
 * to cover every position written.
 *
 * Precision (engine/prec_mode.h): MQ_PREC_BF16 runs the BF16 linears (activations
 * rounded to BF16, FP32 accumulation), MQ_PREC_FP4 the NVFP4 linears (activations
 * quantized per call with the dynamic global scale 2688/amax, or the checkpoint's static
 * one). Embedding, norms, RoPE, attention, KV and LM head are BF16/FP32 in both (NVFP4.md).
 * A mode's rule for prompts is applied here, chunk by chunk (mq_engine_prefill_chunk):
 * the scheduler (mqd), mq_engine_prompt and the tests all run prompts through it.
 */
#ifndef MQ_ENGINE_ENGINE_H
#define MQ_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/pool.h"
#include "engine/prec_mode.h"

/* One sequence's KV: blocks[b] holds positions [b*block_tokens, (b+1)*block_tokens). */
typedef struct mq_kv_seq {
    uint8_t *const *blocks;
    int n_blocks;
} mq_kv_seq;

size_t mq_kv_block_bytes(const mq_config *cfg, int block_tokens);

typedef struct mq_engine_opts {
    int max_chunk;    /* most tokens per mq_engine_forward call (>= 1) */
    int max_batch;    /* most sequences per mq_engine_decode call (>= 1) */
    int block_tokens; /* KV block size in tokens */
    int max_context;  /* longest sequence (positions); 0 = config max_position_embeddings */
} mq_engine_opts;

typedef struct mq_engine mq_engine;

int mq_engine_create(mq_engine **out, const mq_model *model, const mq_engine_opts *opts, char *err, size_t errlen);
void mq_engine_free(mq_engine *e);
size_t mq_engine_scratch_bytes(const mq_engine *e);

/* Which rows of a forward get logits. */
typedef enum {
    MQ_LOGITS_NONE = 0, /* KV only */
    MQ_LOGITS_LAST = 1, /* the last row of each sequence: logits[nseq, vocab] */
    MQ_LOGITS_ALL = 2,  /* every row: logits[n, vocab] */
} mq_logits;

/* Forward of one chunk: tokens[0..n) at positions pos0..pos0+n-1 of seq, every linear in
 * precision prec. Writes K/V of those positions; positions < pos0 must already be in the
 * KV. Forward with pos0 = 0, c, 2c, ... equals one big forward (NVFP4: up to the
 * activation scale, which is taken per call). In BF16 it equals it bit for bit at any
 * split, 1-row chunks included: the layer linears take the tiled GEMM's summation order
 * at every row count (mq_gemm_bf16_tiled), so a position's K/V depends only on the tokens
 * up to it; decode steps (mq_engine_decode) sum in the GEMV's order, which differs in the
 * last bits. 0 or negative errno (-EINVAL: n >
 * max_chunk, a token outside the vocabulary, too few KV blocks, `which` not an
 * mq_logits; -EDOM: the activations went NaN/Inf). */
int mq_engine_forward(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                      mq_prec prec, float *logits, mq_logits which);

/* Decode step for a batch: sequence s gets tokens[s] at position pos[s] (its KV holds
 * 0..pos[s]-1); logits[nseq, vocab]. The linears run once over the whole batch. */
int mq_engine_decode(mq_engine *e, mq_pool *pool, const mq_kv_seq *seqs, const int *tokens, const int *pos, int nseq,
                     mq_prec prec, float *logits);

/* One chunk of a prompt under mode's rule (prec_mode.h): tokens[0..n) at pos0.. of seq.
 * logits_last is NULL for a chunk inside the prompt (all of it runs at the prompt
 * precision, KV only); the chunk that ends the prompt passes where its last token's
 * logits go, and that token runs at the decode precision (in mixed mode it is a second,
 * one-row BF16 forward after the NVFP4 rows). n <= max_chunk. */
int mq_engine_prefill_chunk(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                            mq_prec_mode mode, float *logits_last);

/* A whole prompt (or its new part from pos0) in chunks of max_chunk through
 * mq_engine_prefill_chunk; logits_last[vocab] (required) = the last token's logits. */
int mq_engine_prompt(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                     mq_prec_mode mode, float *logits_last);

/* Teacher-forced scoring (make eval): for every position i in [0, n-1), the logits of
 * token i as the last token of the prompt tokens[0..i] under mode's rule, all positions
 * at once. The prompt part is one prefill of tokens[0..n-2) in chunks of max_chunk
 * (mq_engine_prefill_chunk, KV only), so a position's KV differs from a prefill of its
 * own prefix only by NVFP4's per-call activation scale. When the mode's precisions
 * differ (mixed), row i is the prompt's last token at the decode precision over that KV,
 * max_batch positions per decode step; it writes its own position's K/V into a copy of
 * the block holding it, one of spare[0..n_spare) (mq_kv_block_bytes each; n_spare >= 1;
 * seq's blocks stay as the prefill left them). Otherwise every row runs at the one
 * precision in chunks of max_chunk. rows(ctx, pos0, m, logits[m, vocab]) gets positions
 * pos0..pos0+m-1 in order (m <= max(max_chunk, max_batch) rows: the size of logits);
 * its negative return stops the scoring and is returned. seq covers positions 0..n-1. */
typedef int (*mq_engine_rows_fn)(void *ctx, int pos0, int m, const float *logits);
int mq_engine_score_positions(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, uint8_t *const *spare, int n_spare,
                              const int *tokens, int n, mq_prec_mode mode, float *logits, mq_engine_rows_fn rows,
                              void *ctx);

#endif
