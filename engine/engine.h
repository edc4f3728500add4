/* engine/engine.h — the forward pass: tokens in, K/V and logits out.
 *
 * Owns: the scratch memory of one pool's forward passes (activations, quantized
 * activations, RoPE tables), sized up front for `max_chunk` prompt tokens and
 * `max_batch` decoding sequences. One engine per pool; an engine is used by one thread
 * at a time (the pool's owner). The model is shared, read-only.
 *
 * KV cache: paged. A block holds `block_tokens` positions of every layer:
 *     block = for l in layers: K [block_tokens, n_kv, head_dim] BF16, then V (same shape)
 * (mq_kv_block_bytes gives its size). A sequence is an array of block pointers; the
 * caller (KV store, tests) owns and allocates the blocks and must give enough of them
 * to cover every position written.
 *
 * Precision: MQ_PREC_BF16 runs the BF16 linears (activations rounded to BF16, FP32
 * accumulation), MQ_PREC_FP4 the NVFP4 linears (activations quantized per call with the
 * dynamic global scale 2688/amax, or the checkpoint's static one). Embedding, norms,
 * RoPE, attention, KV and LM head are BF16/FP32 in both (NVFP4.md).
 * Modes (mq_engine_prompt): mixed = tokens 0..n-2 FP4 (KV only), last token BF16 with
 * logits; bf16 = all BF16; fp4 = all FP4. Decode precision per mode: mq_mode_decode_prec.
 */
#ifndef MQ_ENGINE_ENGINE_H
#define MQ_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/pool.h"

typedef enum { MQ_MODE_MIXED, MQ_MODE_BF16, MQ_MODE_FP4 } mq_mode;
typedef enum { MQ_PREC_BF16, MQ_PREC_FP4 } mq_prec;

const char *mq_mode_name(mq_mode m);
int mq_mode_parse(const char *s, mq_mode *m); /* "mixed" | "bf16" | "fp4"; -EINVAL */
mq_prec mq_mode_decode_prec(mq_mode m);       /* fp4 -> FP4, else BF16 */

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

/* Prefill chunk: tokens[0..n) at positions pos0..pos0+n-1 of seq, in precision prec.
 * Writes K/V of those positions; positions < pos0 must already be in the KV.
 * logits_rows: 0 = none, 1 = the last token's logits in logits[vocab], n = every token's
 * in logits[n, vocab]. Forward with pos0 = 0, c, 2c, ... equals one big forward.
 * 0 or negative errno (-EINVAL: n > max_chunk, a token outside the vocabulary, too few
 * KV blocks; -EDOM: the activations went NaN/Inf). */
int mq_engine_forward(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                      mq_prec prec, float *logits, int logits_rows);

/* Decode step for a batch: sequence s gets tokens[s] at position pos[s] (its KV holds
 * 0..pos[s]-1); logits[nseq, vocab]. The linears run once over the whole batch. */
int mq_engine_decode(mq_engine *e, mq_pool *pool, const mq_kv_seq *seqs, const int *tokens, const int *pos, int nseq,
                     mq_prec prec, float *logits);

/* A whole prompt (or its new part from pos0) under mode's rule, chunked by max_chunk;
 * logits_last[vocab] = the last token's logits (from BF16 in mixed and bf16 modes). */
int mq_engine_prompt(mq_engine *e, mq_pool *pool, const mq_kv_seq *seq, const int *tokens, int n, int pos0,
                     mq_mode mode, float *logits_last);

#endif
