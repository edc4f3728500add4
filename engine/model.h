/* engine/model.h — a loaded model: config plus both weight sets.
 *
 * Owns: the weights of one Qwen3 / Qwen2 / Llama model, in the forms the engine runs:
 *   - BF16 linears (decode path; mq_bf16_weight), packed at load (mq_kernels.h) when K is
 *     even, else row-major,
 *   - NVFP4 linears (prefill path; mq_fp4_weight), quantized at load from the BF16
 *     weights per NVFP4.md with g = 2688 / amax(tensor), or taken as stored from a
 *     compressed-tensors nvfp4-pack-quantized checkpoint (E4M3 NaN block scales are
 *     refused); with the packed copy for the AVX-512 GEMM in the form mq_fp4_form_plan
 *     gives for opts.fp4_pack / fp4_table (fp4_packed_bytes; table form: 3 bytes per
 *     weight, fp4_table = 1; index form: 1.25 bytes per weight),
 *   - the embedding and LM head in BF16, packed like the linears except an untied
 *     embedding (only looked up, row by row: mq_bf16_weight_row reads either layout),
 *   - norms (and Qwen2 biases) in FP32.
 * A compressed-tensors checkpoint may be paired with a separate BF16 checkpoint
 * (opts.bf16_dir) for decode, as Mix-Quant pairs Qwen3-8B-NVFP4 with Qwen3-8B; without
 * one, the BF16 linears are the dequantized NVFP4 weights.
 *
 * Loading is split so the runtime can stream the bytes itself (io_uring):
 *   1. mq_model_plan(): parses config.json and the safetensors headers, checks every
 *      tensor's dtype and shape against the config, allocates every destination through
 *      the caller's allocator, and returns the list of reads (file, offset, length, dst).
 *   2. mq_model_tensor_ready(m, i): after read i's bytes arrived: converts / quantizes
 *      what depends on it. Callable from several threads at once for different reads.
 *      (mq_model_piece_arrived, optional, lets a streaming loader hand over work on
 *      each piece while it is hot.)
 *   3. mq_model_finish(): checks that every read was made ready; frees staging memory.
 * mq_model_load() does all three with pread (tests, eval, tools).
 *
 * Thread rules: after finish, the model is immutable and shared by every engine.
 * Memory: all weight memory comes from the allocator given to plan (hugepages in mqd);
 * the model never frees it — the allocator's owner does (mq_model_free calls
 * alloc->free when set).
 */
#ifndef MQ_MODEL_H
#define MQ_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model_config.h"
#include "kernels/mq_kernels.h"
#include "engine/safetensors.h"

/* Where weight memory comes from. alloc returns `bytes` bytes aligned to `align` (a power
 * of two >= 64), or NULL; `what` names the use ("weights.bf16", "weights.fp4", "staging",
 * ...) for the log. free may be NULL (then staging memory is simply kept). */
typedef struct mq_alloc {
    void *(*alloc)(void *ctx, size_t bytes, size_t align, const char *what);
    void (*free)(void *ctx, void *p, size_t bytes);
    void *ctx;
} mq_alloc;

/* An allocator over posix_memalign/free (tests, eval). */
extern const mq_alloc mq_alloc_heap;

/* One linear layer Y = X·Wᵀ (+ b) in both precisions. */
typedef struct mq_linear {
    mq_bf16_weight bf16; /* W [out, in] BF16 */
    mq_fp4_weight fp4;   /* W [out, in] NVFP4 (codes/scales), fp4.g = g_w */
    float in_g;          /* static activation global scale g_x from the checkpoint; 0 = dynamic */
    float *bias;         /* [out] FP32, Qwen2 q/k/v only, else NULL */
} mq_linear;

typedef struct mq_layer {
    float *attn_norm; /* [hidden]   input_layernorm */
    float *ffn_norm;  /* [hidden]   post_attention_layernorm */
    float *q_norm;    /* [head_dim] Qwen3 only, else NULL */
    float *k_norm;    /* [head_dim] Qwen3 only, else NULL */
    mq_linear q;      /* [n_head*head_dim, hidden] */
    mq_linear k;      /* [n_kv*head_dim,   hidden] */
    mq_linear v;      /* [n_kv*head_dim,   hidden] */
    mq_linear o;      /* [hidden, n_head*head_dim] */
    mq_linear gate;   /* [inter, hidden] */
    mq_linear up;     /* [inter, hidden] */
    mq_linear down;   /* [hidden, inter] */
} mq_layer;

typedef struct mq_model {
    mq_config cfg;
    mq_bf16_weight embed;    /* [vocab, hidden] BF16; packed when it is the LM head too (tied) */
    float *final_norm;       /* [hidden] */
    mq_bf16_weight lm_head;  /* [vocab, hidden] BF16; the same as embed when tied */
    mq_layer *layers;        /* [n_layers] */
    size_t bf16_bytes;       /* BF16 copy: linears + embedding + LM head */
    size_t fp4_bytes;        /* NVFP4 copy: codes + scales */
    size_t fp4_packed_bytes; /* its packed copy for the AVX-512 GEMM, 0 when not made */
    int fp4_table;           /* 1: that copy is in the table form (mq_fp4_weight_bind_table) */
    /* Linears quantized at load, by where their tensor amax (g_w) came from: the pieces
     * as the loader streamed them in (mq_model_piece_arrived: no second pass over the
     * tensor) or a pass over the whole tensor once it arrived (pread loads, staged
     * dtypes, pieces that did not cover it). */
    int amax_from_pieces, amax_from_pass;
    size_t other_bytes;   /* norms, biases */
    struct mq_load *load; /* loading state, then the record of allocations */
} mq_model;

/* One read the loader must perform: bytes [offset, offset+bytes) of file `file` into dst. */
typedef struct mq_read {
    int file; /* index into mq_model_files() */
    uint64_t offset;
    uint64_t bytes;
    void *dst;
    const char *tensor; /* the checkpoint tensor's name (for messages) */
} mq_read;

/* Whether the NVFP4 linears get their packed copy (+1.25 bytes per weight, a faster
 * prefill GEMM) and in which form (mq_fp4_form_plan says how AUTO decides): fp4_pack ON
 * makes it, OFF never, AUTO when memory allows; fp4_table ON takes the table form (+3
 * bytes per weight, a faster GEMM for calls over 256 rows: docs/design/kernels.md) whenever the copy is
 * made, OFF the index form, AUTO the table form when memory allows. */
typedef enum { MQ_FP4_PACK_AUTO = 0, MQ_FP4_PACK_ON = 1, MQ_FP4_PACK_OFF = 2 } mq_fp4_pack;

typedef enum { MQ_FP4_FORM_NONE = 0, MQ_FP4_FORM_INDEX = 1, MQ_FP4_FORM_TABLE = 2 } mq_fp4_form;

/* The one rule for the packed copy (mq_model_plan applies it; mqd's huge-page
 * reservation sizes its pages with the same plan and hands its outcome to the load).
 * have: bytes of the model without the copy; index_bytes / table_bytes: the copy in each
 * form. "Memory allows" = have plus the copy in that form fit in half of mem_available
 * (MemAvailable) plus hugetlb_free, the free huge pages the weights' allocator takes
 * memory from (the kernel does not count them in MemAvailable; all of them count, though
 * the KV segment, made after the weights, would otherwise take some: it then falls back
 * to ordinary pages). Both 0 = unknown: memory never allows. AUTO/AUTO: the table form
 * if it fits, else the index form if it fits, else none; AUTO/ON: the table form if it fits, else none. */
mq_fp4_form mq_fp4_form_plan(mq_fp4_pack pack, mq_fp4_pack table, size_t have, size_t index_bytes, size_t table_bytes,
                             size_t mem_available, size_t hugetlb_free);

typedef struct mq_model_opts {
    const char *bf16_dir;  /* NVFP4 checkpoint: separate BF16 checkpoint for decode, or NULL */
    int no_fp4;            /* skip the NVFP4 copy (BF16-only tools); fp4 mode then refuses */
    mq_fp4_pack fp4_pack;  /* the packed NVFP4 copy (default AUTO) */
    mq_fp4_pack fp4_table; /* its table form (default AUTO) */
    size_t hugetlb_free;   /* bytes of free huge pages the allocator places weights in (mq_fp4_form_plan) */
} mq_model_opts;

/* Step 1. On success *out is a model whose weights are not yet valid, and *reads /
 * *n_reads the reads to perform (owned by the model). 0 or negative errno + err. */
int mq_model_plan(const char *dir, const mq_model_opts *opts, const mq_alloc *alloc, mq_model **out,
                  const mq_read **reads, int *n_reads, char *err, size_t errlen);
/* The files the reads refer to: n and paths (valid until finish). */
int mq_model_files(const mq_model *m, const char *const **paths);
/* Step 2: read i's bytes are in place. Thread-safe for distinct i. */
int mq_model_tensor_ready(mq_model *m, int i, char *err, size_t errlen);
/* Optional, before step 2: bytes [off, off + bytes) of read i have arrived (the loader's
 * streaming thread, while they are in its cache). The model takes what it can from them
 * now (the amax of a BF16 linear it quantizes), so that ready() need not read them again
 * for it; one thread per read at a time, pieces in any order. */
void mq_model_piece_arrived(mq_model *m, int i, uint64_t off, uint64_t bytes);
/* Step 3. Fails if a read was never made ready. */
int mq_model_finish(mq_model *m, char *err, size_t errlen);
/* All three with pread (tests, eval, tools). */
int mq_model_load(const char *dir, const mq_model_opts *opts, mq_model **out, char *err, size_t errlen);
void mq_model_free(mq_model *m);

/* Whether the NVFP4 copy exists (it does unless opts.no_fp4). */
int mq_model_has_fp4(const mq_model *m);

#endif
