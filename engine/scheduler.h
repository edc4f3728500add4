/* engine/scheduler.h — sessions, the request queue, chunked prefill and continuous batching.
 *
 * Owns: the sessions (token history + KV block list), the bounded request queue, the two
 * driver threads (one per worker pool: the prefill pool runs NVFP4 prompt chunks, the
 * decode pool runs one batched BF16 step for every decoding session), the KV store
 * (engine/kv_store.h) and the per-request / global statistics.
 *
 * Who calls it: mqd's event loop (front), tests and benchmarks. The model (and tokenizer)
 * are borrowed: they must outlive the scheduler.
 *
 * Sessions keep their history between requests. A request appends `new_tokens` to the
 * session's history; only tokens whose K/V the session does not hold yet are prefilled.
 * The history is the ids actually processed plus the tokens sampled by earlier requests
 * (including the one that stopped generation, e.g. <|im_end|>: it is in the history but
 * its K/V is computed when the next request prefills). Matching is on token ids, never on
 * re-rendered text: a caller that renders a chat template appends only what is new after
 * mq_sched_session_history().
 * Full KV blocks are indexed by a hash of their whole token prefix, so sessions that
 * share a prefix (system prompt, tool list) share the blocks (reference counted).
 * Tenants: every session belongs to a tenant (mqd: the client's uid, or a tenant named by
 * a front it trusts, e.g. one per API key of mq-openai: mqd keeps them apart by value,
 * daemon/tenants.h). The chain hash of
 * a session's blocks starts from a seed salted with its tenant (vLLM's cache_salt), so by
 * default a prefix is shared only between sessions of one tenant: another tenant's exact
 * guess of a prompt is a miss, and hit counts and timings leak nothing across tenants.
 * opts.share_prefix_cache = 1 drops the salt (one cache for everybody).
 * Per-tenant limits keep one local user from starving the others: open sessions
 * (tenant_max_sessions: session_open returns -EDQUOT), requests waiting for prefill
 * (tenant_max_queued: submit returns -EAGAIN) and KV blocks (tenant_kv_blocks: the
 * blocks its sessions hold, a shared block counting in each, plus its reservations). A
 * queued request over its tenant's KV share waits for the tenant's own requests (or
 * fails with -ENOSPC under the fail policy, or when none runs) without holding up other
 * tenants' requests queued behind it; a decoding request that would pass it makes the
 * tenant's largest holder give way, as for a full store ("KV reservations").
 *
 * Batch invariance: what a request generates does not depend on the other requests
 * running (a greedy request gives the tokens it gives alone). The engine keeps each
 * sequence's numbers independent of the batch (engine.h); the scheduler keeps the KV a
 * session reads from the index equal to what it would compute itself:
 * - Chunks: prompts are read in chunks of a fixed grid, [k·chunk_tokens,
 *   (k+1)·chunk_tokens) of the session's positions (the first chunk of a later turn
 *   runs to the next grid line), because an NVFP4 chunk's numbers depend on all of its
 *   tokens (the activation scale is taken per chunk, NVFP4.md).
 * - Sharing: a session publishes only its shareable prefix, the part of its prompt that
 *   any session computes alike, on top of a shareable prefix: under NVFP4 (mixed, fp4)
 *   the chunks it read whole, on the grid, at the prompt precision (in mixed mode the
 *   prompt's last token and generated tokens are BF16, so they are not); in bf16 every
 *   prompt token (the engine sums prompt rows alike at any chunk length, engine.h), but
 *   no generated one (decode steps sum in another order). A lookup takes whole published
 *   chunks (NVFP4) or whole published blocks (bf16), and only while the session's own KV
 *   is all shareable. Sessions sharing a system prompt therefore share its whole chunks;
 *   the chunk where their prompts part is read by each (in bf16: all of their common
 *   head's whole blocks are shared). A stateless client that resends a conversation
 *   thus reuses the previous turn's prompt up to the last whole block in bf16, up to the
 *   last whole chunk under NVFP4.
 * Not covered: KV reclaimed from an idle session under memory pressure is recomputed at
 * its next request as one prompt, which in mixed/fp4 mode computes in NVFP4 what was
 * decoded in BF16.
 *
 * KV reservations: one request must not be able to lock the store for others. A request
 * reserves, when it leaves the queue, the blocks its prompt needs and one for its first
 * sampled token (not max_tokens); a decoding request reserves its next block when its
 * token starts one. So a request holds what it uses. Idle sessions' KV is taken back,
 * least recently used first, whenever the store runs short. If that is not enough:
 * - a queued request waits for running ones to finish (on_kv_full = wait) or fails with
 *   -ENOSPC (fail, or when nothing runs); requests behind it wait (FIFO);
 * - a decoding request that needs its next block skips steps, and the running request
 *   holding the most blocks is ended (MQ_SCHED_END_ERROR, -ENOSPC, "KV store full: ...
 *   ended to make room"); its session keeps what it generated and its KV becomes idle.
 *   A request that keeps growing is thus the one that gives way, and queued requests wait
 *   at most until it needs its next block.
 * Generation also stops (MQ_SCHED_END_LENGTH) when a session fills the whole store; a
 * prompt that alone does not fit is refused at submit. Reservations appear in the stats
 * (kv_reserved, kv_available) and per session (mq_session_info.reserved_blocks).
 *
 * Thread rules: every function here may be called from any thread except the sink
 * callbacks; they are not re-entrant into the scheduler for the same session except
 * mq_sched_cancel. Sink callbacks run on the scheduler's driver threads (the first token
 * of a request may come from the prefill thread, the rest from the decode thread), never
 * concurrently for one request, and must not block (copy the bytes into a ring).
 * After on_done returns, the scheduler never touches the sink again.
 *
 * Errors: functions return 0 or a negative errno and, where a buffer is passed, a message
 * naming the cause. Request-level errors (context limit, KV full, cancel) arrive through
 * on_done with an end reason; the scheduler never crashes on them.
 */
#ifndef MQ_SCHED_H
#define MQ_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "engine/prec_mode.h"

#ifdef __cplusplus
extern "C" {
#endif

struct mq_model;     /* engine/model.h */
struct mq_tokenizer; /* engine/tokenizer.h */

typedef struct mq_sched mq_sched;

/* What to do when the KV store cannot hold a new request. */
typedef enum { MQ_KV_FULL_WAIT = 0, MQ_KV_FULL_FAIL = 1 } mq_kv_full_policy;

typedef struct mq_sched_opts {
    int prefill_threads;      /* threads of the prefill pool (>= 1) */
    int decode_threads;       /* threads of the decode pool (>= 1) */
    const char *prefill_cpus; /* CPU list "0-1,3" for the prefill pool, NULL = any */
    const char *decode_cpus;  /* CPU list for the decode pool, NULL = any */
    int chunk_tokens;         /* prefill chunk, a multiple of block_tokens (rounded down);
                               * bounds the decode stall (default 256) */
    int max_batch;            /* decoding sessions per batched step (default 16) */
    int max_queued;           /* requests waiting for prefill before submit fails (64) */
    int max_sessions;         /* open sessions (default 256) */
    int kv_blocks;            /* blocks in the KV segment (default: 2 contexts' worth) */
    int block_tokens;         /* tokens per KV block (default 64) */
    int context_limit;        /* max tokens per session (default: model's max, <= 32768) */
    mq_prec_mode mode;        /* engine/prec_mode.h (default mixed) */
    mq_kv_full_policy on_kv_full;
    int kv_hugetlb;         /* 1: try MFD_HUGETLB for the KV segment (default 1) */
    int share_prefix_cache; /* 1: tenants share prefix-cache entries; 0 (default): per tenant */
    /* per tenant ("Tenants"; 0 = only the global limit above applies) */
    int tenant_max_sessions; /* open sessions */
    int tenant_max_queued;   /* requests waiting for prefill */
    int tenant_kv_blocks;    /* KV blocks its sessions hold plus its reservations */
} mq_sched_opts;

/* Fills defaults (zeros above mean "default" too). */
void mq_sched_opts_default(mq_sched_opts *o);

/* Sampling and stopping. Zero-initialised = greedy, no stops, max_tokens default. */
#define MQ_SCHED_MAX_STOP_IDS  8
#define MQ_SCHED_MAX_STOP_STRS 4
typedef struct mq_gen_params {
    int max_tokens;           /* tokens to generate; 0 = 256; capped by context_limit */
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 0 or 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 0 or 1 = off */
    float presence_penalty;   /* 0 = off */
    uint64_t seed;            /* sampling seed (reproducible) */
    int n_stop_ids;
    int32_t stop_ids[MQ_SCHED_MAX_STOP_IDS]; /* generation ends after emitting one */
    int n_stop_strs;
    const char *stop_strs[MQ_SCHED_MAX_STOP_STRS]; /* copied at submit; matched on text */
    int use_eos;                                   /* 1: the tokenizer's EOS/end-of-turn ids also stop */
    float frequency_penalty;                       /* 0 = off */
    /* Precision of this request; has_mode 0 = the scheduler's mode. A session's KV is
     * kept per mode: a request in another mode than the session's last one recomputes
     * the context (and shares prefix blocks only with requests of its own mode). */
    int has_mode;
    mq_prec_mode mode;
    /* 1: new_tokens is the session's whole context, not an addition: the history is cut
     * to its longest common prefix with new_tokens (KV kept token by token: a cut inside
     * a shared block copies it) and the rest is appended. prompt_tokens then counts the
     * whole context. */
    int whole_context;
} mq_gen_params;

typedef enum {
    MQ_SCHED_END_STOP_TOKEN = 0,
    MQ_SCHED_END_STOP_STRING,
    MQ_SCHED_END_LENGTH, /* max_tokens or context limit reached */
    MQ_SCHED_END_CANCEL,
    MQ_SCHED_END_CLIENT_GONE,
    MQ_SCHED_END_ERROR, /* err/msg say why (KV full, context limit, shutdown ...) */
} mq_sched_end_reason;

const char *mq_sched_end_reason_name(mq_sched_end_reason r);

typedef struct mq_sched_req_stats {
    int prompt_tokens;    /* tokens the request appended */
    int cached_tokens;    /* history tokens whose K/V was already there (session or index) */
    int prefilled_tokens; /* tokens run through prefill for this request */
    int generated_tokens;
    double queue_ms;      /* submit -> first prefill chunk */
    double ttft_ms;       /* submit -> first token sampled */
    double prefill_tok_s; /* prefilled tokens / prefill time */
    double decode_tok_s;  /* (generated - 1) / time from first to last token */
    double total_ms;
} mq_sched_req_stats;

typedef struct mq_sink {
    void *ctx;
    /* One sampled token; text holds the UTF-8-complete bytes it completes (len may be 0
     * while a character is split across tokens; NULL/0 without a tokenizer). */
    void (*on_token)(void *ctx, int32_t id, const char *text, size_t len);
    /* The end. err = 0 or a negative errno (MQ_SCHED_END_ERROR), msg a readable reason. */
    void (*on_done)(void *ctx, mq_sched_end_reason reason, int err, const char *msg, const mq_sched_req_stats *st);
} mq_sink;

/* Creates the scheduler: KV segment, pools, engines and the two driver threads. */
int mq_sched_create(mq_sched **s, struct mq_model *model, struct mq_tokenizer *tok, const mq_sched_opts *o, char *err,
                    size_t errlen);
/* Cancels everything still running (on_done MQ_SCHED_END_CANCEL), joins threads, frees all. */
void mq_sched_destroy(mq_sched *s);

/* Sessions. tenant: who the session belongs to (mqd: the client's uid); see "Tenants".
 * -EMFILE when max_sessions are open, -EDQUOT when the tenant has tenant_max_sessions.
 * Closing a session cancels its request (on_done is called before close returns) and
 * releases its blocks. */
int mq_sched_session_open(mq_sched *s, uint64_t tenant, uint64_t *id);
int mq_sched_session_close(mq_sched *s, uint64_t id);
/* Copies up to cap history tokens into buf; returns the history length or -ENOENT. */
int mq_sched_session_history(mq_sched *s, uint64_t id, int32_t *buf, int cap);

/* Appends new_tokens (n >= 0; n may be 0 to continue generating) and queues a request.
 * Immediate errors (nothing queued, sink not called): -ENOENT unknown session, -EBUSY the
 * session already has a request, -EAGAIN queue full (or the tenant's share of it),
 * -E2BIG history over the context
 * limit, -ENOSPC KV store can never hold it (or is full with the fail policy),
 * -ESHUTDOWN draining. err/errlen (may be NULL) get a message. On success the sink gets
 * tokens and exactly one on_done. */
int mq_sched_submit(mq_sched *s, uint64_t session, const int32_t *new_tokens, int n, const mq_gen_params *p,
                    const mq_sink *sink, char *err, size_t errlen);

/* Ends the session's running request at its next step with reason (MQ_SCHED_END_CANCEL or
 * MQ_SCHED_END_CLIENT_GONE). -ENOENT unknown session; 0 also if nothing was running. */
int mq_sched_cancel(mq_sched *s, uint64_t session, mq_sched_end_reason reason);

typedef struct mq_sched_stats {
    /* totals since start */
    uint64_t requests_done, requests_failed;
    uint64_t requests_yielded; /* ended to make room in a full KV store (also in failed) */
    uint64_t prompt_tokens, cached_tokens, prefilled_tokens, generated_tokens;
    double prefill_tok_s;   /* prefilled tokens / busy prefill time */
    double decode_tok_s;    /* generated tokens / busy decode time */
    double cache_hit_ratio; /* cached_tokens / (cached + prefilled) */
    /* now */
    int sessions, queued, prefilling, decoding;
    int kv_blocks, kv_used, kv_cached, kv_free, block_tokens;
    int kv_reserved;  /* blocks promised to running requests, not allocated yet */
    int kv_available; /* free + cached - reserved: what a new request can get now */
    uint64_t kv_lookups, kv_hits, kv_evictions, kv_refused; /* prefix index, since start */
    size_t kv_bytes;
    const char *kv_memory; /* "hugetlb", "thp" or "4k" (static string) */
    /* liveness, for the watchdog: each increases while its driver thread is alive
     * (every step, and at least every 500 ms when idle) */
    uint64_t prefill_progress, decode_progress;
    int draining;
} mq_sched_stats;

void mq_sched_get_stats(mq_sched *s, mq_sched_stats *st);

typedef struct mq_session_info {
    uint64_t id;
    uint64_t tenant;
    int history_tokens, kv_tokens, kv_blocks, shared_blocks;
    int reserved_blocks; /* of its running request */
    int busy;            /* 0 idle, 1 queued, 2 prefilling, 3 decoding */
    double idle_ms;
} mq_session_info;

/* Calls cb once per open session (under the scheduler's lock: cb must not call back). */
void mq_sched_sessions(mq_sched *s, void (*cb)(void *ctx, const mq_session_info *i), void *ctx);

typedef struct mq_tenant_info {
    uint64_t tenant;
    int sessions;
    int queued, running; /* requests waiting for prefill; prefilling or decoding */
    int kv_blocks;       /* held by its sessions (a shared block counts in each) */
    int kv_reserved;     /* reserved for its running requests */
} mq_tenant_info;

/* Calls cb once per tenant with an open session (same rules as mq_sched_sessions). */
void mq_sched_tenants(mq_sched *s, void (*cb)(void *ctx, const mq_tenant_info *t), void *ctx);

/* Stops accepting requests (-ESHUTDOWN), waits up to timeout_ms for running and queued
 * requests to finish, then cancels the rest and waits for their on_done. Returns 0 if all
 * finished by themselves, else the number cancelled. */
int mq_sched_drain(mq_sched *s, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
