/* engine/scheduler.c — see scheduler.h.
 *
 * One mutex (s->mu) guards the session table, the queues and every request's state.
 * The two driver threads take it to pick work and to publish results, and drop it while
 * the engine runs. A request belongs to one driver at a time:
 *   QUEUED (prefill queue) -> PREFILL (prefill thread, chunk by chunk, round-robin)
 *   -> DECODE (decode thread, batched with every other decoding request) -> done.
 * While a driver owns a request it may write the session's KV blocks and the history
 * slots past n_hist without the lock (capacity is reserved at submit); lengths change
 * under the lock.
 *
 * KV admission: when a request leaves the queue, the session first extends its KV from
 * the prefix index (whole shareable units only: chunks under NVFP4, blocks in bf16; at
 * most up to the last history token,
 * whose logits must be computed), then reserves the blocks its prompt and first sampled
 * token need; a decoding request reserves its next block when its token starts one
 * (scheduler.h "KV reservations"). A reservation cannot fail halfway: allocations
 * against it always succeed; what cannot be reserved waits, fails, or makes the largest
 * holder end (make_room).
 */
#define _GNU_SOURCE
#include "engine/scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/kv_store.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "common/errmsg.h"
#include "common/clock.h"

#define SCHED_IDLE_TICK_MS       500 /* drivers bump their progress counter this often when idle */
#define SCHED_STOP_TAIL          256 /* bytes of generated text kept for stop-string matching */
#define SCHED_DEFAULT_MAX_TOKENS 256
#define SCHED_MAX_CONTEXT        32768

enum { RQ_QUEUED = 1, RQ_PREFILL = 2, RQ_DECODE = 3 };

struct session;

struct req {
    struct session *ss;
    mq_gen_params p;
    char *stop[MQ_SCHED_MAX_STOP_STRS];
    mq_sink sink;
    int state;
    int end_code; /* atomic: 0 or 1 + mq_sched_end_reason requested by cancel */
    int end_err;  /* with MQ_SCHED_END_ERROR asked (to make room): the error and why */
    char end_msg[160];
    mq_prec_mode mode;  /* precision of this request */
    int hist0;          /* history length before this request */
    int kv0;            /* session KV before admission */
    int limit;          /* history length at which generation stops */
    int reserved;       /* KV blocks reserved and not allocated yet */
    int tenant_waiting; /* queued: its tenant's KV share is full (admit) */
    int generated;
    int emitted_first;
    mq_sched_req_stats st;
    double t_submit, t_first_chunk, t_prefill_busy, t_first_tok, t_last_tok;
    mq_tok_stream ts;
    mq_sampler smp; /* per-request sampling state (engine/sampler.h) */
    int has_smp;
    mq_stop stopper; /* stop strings on the streamed text, withholding partial matches */
    int has_stop;
    struct req *next; /* queue / decode list link */
};

struct session {
    uint64_t id;
    uint64_t tenant;
    uint64_t root; /* chain-hash seed of its blocks: MQ_KV_HASH_SEED, salted with the tenant */
    int32_t *hist;
    int n_hist, cap_hist;
    int n_kv;       /* history[0..n_kv) has K/V in the blocks */
    int n_canon;    /* history[0..n_canon) was read as whole chunks of the grid: shareable */
    int *blk;       /* [max_blocks] KV store ids */
    uint8_t **ptr;  /* [max_blocks] block memory (the engine's mq_kv_seq) */
    uint64_t *hash; /* [max_blocks] chain hash of each full block */
    int n_blk;
    int n_hashed;         /* leading full blocks hashed (and offered to the index) */
    int n_shared;         /* blocks obtained from the index */
    mq_prec_mode kv_mode; /* the precision the session's KV was computed in */
    struct req *req;
    int notifying; /* finished requests whose on_done has not returned yet */
    double last_used;
    struct session *next;
};

struct mq_sched {
    mq_sched_opts o;
    mq_model *model;
    mq_tokenizer *tok;
    int vocab, max_blocks;
    mq_kv_store *kv;
    mq_pool *pf_pool, *dec_pool;
    mq_engine *pf_eng, *dec_eng;
    float *pf_logits, *dec_logits; /* [vocab], [max_batch, vocab] */
    pthread_t pf_th, dec_th;
    int threads_started;

    pthread_mutex_t mu;
    pthread_cond_t pf_cv, dec_cv, done_cv;
    int stop, draining;
    uint64_t next_id;
    struct session *sessions;
    int n_sessions;
    struct req *queue_head, *queue_tail; /* QUEUED and PREFILL requests, in order */
    int n_queued, n_prefilling;
    struct req *decoding; /* DECODE requests */
    int n_decoding;
    int rr_decode; /* round-robin start when over max_batch */

    /* stats */
    uint64_t req_done, req_failed, req_yielded, tok_prompt, tok_cached, tok_prefilled, tok_generated;
    double pf_busy_s, dec_busy_s;
    uint64_t pf_progress, dec_progress; /* atomics */
};

void mq_sched_opts_default(mq_sched_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prefill_threads = 2;
    o->decode_threads = 2;
    o->chunk_tokens = 256;
    o->max_batch = 16;
    o->max_queued = 64;
    o->max_sessions = 256;
    o->block_tokens = 64;
    o->mode = MQ_PREC_MODE_MIXED;
    o->on_kv_full = MQ_KV_FULL_WAIT;
    o->kv_hugetlb = 1;
}

const char *mq_sched_end_reason_name(mq_sched_end_reason r)
{
    switch (r) {
    case MQ_SCHED_END_STOP_TOKEN: return "stop_token";
    case MQ_SCHED_END_STOP_STRING: return "stop_string";
    case MQ_SCHED_END_LENGTH: return "length";
    case MQ_SCHED_END_CANCEL: return "cancel";
    case MQ_SCHED_END_CLIENT_GONE: return "client_gone";
    case MQ_SCHED_END_ERROR: return "error";
    }
    return "?";
}

/* "0-1,3" -> cpu set; -EINVAL on garbage. */
static int parse_cpus(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    const char *p = s;
    while (*p) {
        char *e;
        long a = strtol(p, &e, 10), b = a;
        if (e == p || a < 0 || a >= CPU_SETSIZE)
            return -EINVAL;
        p = e;
        if (*p == '-') {
            b = strtol(p + 1, &e, 10);
            if (e == p + 1 || b < a || b >= CPU_SETSIZE)
                return -EINVAL;
            p = e;
        }
        for (long c = a; c <= b; c++)
            CPU_SET((int)c, set);
        if (*p == ',')
            p++;
        else if (*p)
            return -EINVAL;
    }
    return CPU_COUNT(set) ? 0 : -EINVAL;
}

/* ---- sessions and KV (callers hold s->mu unless noted) ---- */

static struct session *find_session(mq_sched *s, uint64_t id)
{
    for (struct session *ss = s->sessions; ss; ss = ss->next)
        if (ss->id == id)
            return ss;
    return NULL;
}

/* The session `id` with s->mu held, or NULL with s->mu not held. */
static struct session *lock_session(mq_sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    struct session *ss = find_session(s, id);
    if (!ss)
        pthread_mutex_unlock(&s->mu);
    return ss;
}

static int blocks_for(const mq_sched *s, int tokens)
{
    return (tokens + s->o.block_tokens - 1) / s->o.block_tokens;
}

/* The unit in which a session's prompt KV is the same whoever computed it ("Batch
 * invariance" in scheduler.h): any run of prompt rows in bf16 (the engine sums them alike
 * at every chunk length), whole chunks of the grid when NVFP4 computes them (a chunk's
 * activation scale depends on all of its tokens). */
static int canon_unit(const mq_sched *s, mq_prec_mode m)
{
    return m == MQ_PREC_MODE_BF16 ? 1 : s->o.chunk_tokens;
}

/* Drops the session's KV beyond n tokens. Inside the shareable part it cuts at a unit of
 * it (canon_unit: a chunk boundary under NVFP4), so that the session reads the rest as any
 * other session would (see "Chunks" in scheduler.h). A full block is shared-immutable once
 * hashed, so cutting inside one drops the whole block (the session re-prefills those
 * tokens). */
static void truncate_kv(mq_sched *s, struct session *ss, int n)
{
    int bt = s->o.block_tokens, unit = canon_unit(s, ss->kv_mode);
    if (n < ss->n_kv)
        ss->n_kv = n;
    if (ss->n_kv < ss->n_canon)
        ss->n_kv = ss->n_canon = ss->n_kv / unit * unit;
    int keep = blocks_for(s, ss->n_kv);
    if (ss->n_kv % bt && keep - 1 < ss->n_hashed) {
        keep--;
        ss->n_kv = keep * bt;
    }
    while (ss->n_blk > keep) {
        ss->n_blk--;
        mq_kv_unref(s->kv, ss->blk[ss->n_blk]);
        ss->ptr[ss->n_blk] = NULL;
    }
    if (ss->n_hashed > ss->n_blk)
        ss->n_hashed = ss->n_blk;
    if (ss->n_shared > ss->n_blk)
        ss->n_shared = ss->n_blk;
}

/* Hashes and publishes the session's newly full blocks of its shareable part. */
static void publish_full_blocks(mq_sched *s, struct session *ss)
{
    int bt = s->o.block_tokens;
    while (ss->n_hashed < ss->n_blk && (ss->n_hashed + 1) * bt <= ss->n_canon) {
        int b = ss->n_hashed;
        uint64_t parent = b ? ss->hash[b - 1] : ss->root;
        ss->hash[b] = mq_kv_prefix_hash(parent, ss->hist + (size_t)b * bt, bt);
        mq_kv_publish(s->kv, ss->blk[b], parent, ss->hash[b], ss->hist + (size_t)b * bt);
        ss->n_hashed++;
    }
}

/* Takes block b of the session's history from the index (a reference), or -1. */
static int lookup_block(mq_sched *s, struct session *ss, int b)
{
    const int bt = s->o.block_tokens;
    uint64_t parent = b ? ss->hash[b - 1] : ss->root;
    const int32_t *t = ss->hist + (size_t)b * bt;
    uint64_t h = mq_kv_prefix_hash(parent, t, bt);
    int id = mq_kv_lookup(s->kv, parent, h, t);
    if (id < 0)
        return -1;
    ss->blk[b] = id;
    ss->ptr[b] = mq_kv_block_ptr(s->kv, id);
    ss->hash[b] = h;
    return id;
}

/* Extends the session's KV with what other sessions published of its history, never the
 * last token (its logits must be computed), and only while all of its KV is shareable:
 * whole blocks in bf16, whole chunks under NVFP4 (a chunk's numbers depend on every token
 * of the chunk, the activation scale, and on the KV before it). */
static void lookup_prefix(mq_sched *s, struct session *ss)
{
    const int bt = s->o.block_tokens, unit = canon_unit(s, ss->kv_mode);
    const int cell = unit > bt ? unit : bt, per = cell / bt;
    if (ss->n_kv != ss->n_canon || ss->n_hashed != ss->n_blk)
        return;
    while (ss->n_kv + cell <= ss->n_hist - 1 && ss->n_blk + per <= s->max_blocks) {
        int got = 0;
        while (got < per && lookup_block(s, ss, ss->n_blk + got) >= 0)
            got++;
        if (got < per) { /* part of a chunk is no use: give it back */
            while (got > 0)
                mq_kv_unref(s->kv, ss->blk[ss->n_blk + --got]);
            return;
        }
        ss->n_blk += per;
        ss->n_hashed += per;
        ss->n_shared += per;
        ss->n_kv += cell;
        ss->n_canon += cell;
    }
}

/* The least recently used idle session holding KV (of one tenant, if given), or NULL. */
static struct session *lru_idle(mq_sched *s, const struct session *except, const uint64_t *tenant)
{
    struct session *victim = NULL;
    for (struct session *ss = s->sessions; ss; ss = ss->next)
        if (ss != except && !ss->req && ss->n_blk > 0 && (!tenant || ss->tenant == *tenant) &&
            (!victim || ss->last_used < victim->last_used))
            victim = ss;
    return victim;
}

/* Gives back the KV of idle sessions, least recently used first, until `need` blocks
 * can be reserved. Their histories stay: a later turn re-finds its full blocks in the
 * index if they were not evicted meanwhile, and prefills the rest. */
static int reclaim_idle(mq_sched *s, int need, const struct session *except)
{
    for (;;) {
        if (mq_kv_reserve(s->kv, need) == 0)
            return 0;
        struct session *victim = lru_idle(s, except, NULL);
        if (!victim)
            return -ENOSPC;
        truncate_kv(s, victim, 0);
    }
}

/* What a tenant uses now (s->mu held). */
static mq_tenant_info tenant_usage(const mq_sched *s, uint64_t tenant)
{
    mq_tenant_info u = { .tenant = tenant };
    for (const struct session *ss = s->sessions; ss; ss = ss->next) {
        if (ss->tenant != tenant)
            continue;
        u.sessions++;
        u.kv_blocks += ss->n_blk;
        if (ss->req) {
            u.kv_reserved += ss->req->reserved;
            if (ss->req->state == RQ_QUEUED)
                u.queued++;
            else
                u.running++;
        }
    }
    return u;
}

/* Whether the tenant can take `need` more blocks within its share (tenant_kv_blocks),
 * after giving back the KV of its own idle sessions, least recently used first. */
static int tenant_fits(mq_sched *s, uint64_t tenant, int need, const struct session *except)
{
    if (s->o.tenant_kv_blocks <= 0)
        return 1;
    for (;;) {
        mq_tenant_info u = tenant_usage(s, tenant);
        if (u.kv_blocks + u.kv_reserved + need <= s->o.tenant_kv_blocks)
            return 1;
        struct session *victim = lru_idle(s, except, &tenant);
        if (!victim)
            return 0;
        truncate_kv(s, victim, 0);
    }
}

/* ---- request end ---- */

static void req_free(struct req *r)
{
    for (int i = 0; i < MQ_SCHED_MAX_STOP_STRS; i++)
        free(r->stop[i]);
    if (r->has_smp)
        mq_sampler_free(&r->smp);
    if (r->has_stop)
        mq_stop_free(&r->stopper);
    free(r);
}

static void fill_stats(struct req *r, double t_end)
{
    r->st.generated_tokens = r->generated;
    r->st.total_ms = (t_end - r->t_submit) * 1e3;
    r->st.queue_ms = r->t_first_chunk > 0 ? (r->t_first_chunk - r->t_submit) * 1e3 : r->st.total_ms;
    r->st.ttft_ms = r->t_first_tok > 0 ? (r->t_first_tok - r->t_submit) * 1e3 : 0;
    r->st.prefill_tok_s = r->t_prefill_busy > 0 ? r->st.prefilled_tokens / r->t_prefill_busy : 0;
    r->st.decode_tok_s =
        r->generated > 1 && r->t_last_tok > r->t_first_tok ? (r->generated - 1) / (r->t_last_tok - r->t_first_tok) : 0;
}

/* Unlinks a finished request from its session (s->mu held). The caller then calls
 * finish_notify without the lock. */
static void finish_locked(mq_sched *s, struct req *r, mq_sched_end_reason why, int err)
{
    struct session *ss = r->ss;
    if (r->reserved)
        mq_kv_unreserve(s->kv, r->reserved);
    r->reserved = 0;
    if (!r->emitted_first &&
        (why == MQ_SCHED_END_CANCEL || why == MQ_SCHED_END_CLIENT_GONE || why == MQ_SCHED_END_ERROR)) {
        /* nothing was generated: the request leaves the history as it found it */
        ss->n_hist = r->hist0;
        if (ss->n_kv > ss->n_hist)
            truncate_kv(s, ss, ss->n_hist);
    }
    ss->req = NULL;
    ss->notifying++;
    ss->last_used = mq_now_s();
    s->tok_prompt += (uint64_t)r->st.prompt_tokens;
    s->tok_cached += (uint64_t)r->st.cached_tokens;
    s->tok_prefilled += (uint64_t)r->st.prefilled_tokens;
    s->tok_generated += (uint64_t)r->generated;
    if (why == MQ_SCHED_END_ERROR)
        s->req_failed++;
    else
        s->req_done++;
    (void)err;
    pthread_cond_broadcast(&s->done_cv);
    pthread_cond_signal(&s->pf_cv);  /* blocks may have freed up for a waiting request */
    pthread_cond_signal(&s->dec_cv); /* or for a decoding one */
}

static void finish_notify(mq_sched *s, struct req *r, mq_sched_end_reason why, int err, const char *msg)
{
    fill_stats(r, mq_now_s());
    if (r->sink.on_done)
        r->sink.on_done(r->sink.ctx, why, err, msg ? msg : "", &r->st);
    pthread_mutex_lock(&s->mu);
    r->ss->notifying--; /* close/drain/destroy wait for this: on_done has returned */
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
    req_free(r);
}

/* Ends a request its driver has unlinked: the session and the stats under s->mu, then
 * on_done without it. Called and returns with s->mu held (dropped in between). */
static void end_request(mq_sched *s, struct req *r, mq_sched_end_reason why, int err, const char *msg)
{
    finish_locked(s, r, why, err);
    pthread_mutex_unlock(&s->mu);
    finish_notify(s, r, why, err, msg);
    pthread_mutex_lock(&s->mu);
}

/* Asks a request to end at its driver's next step (the first reason asked wins). */
static int flag_end(mq_sched *s, struct req *r, mq_sched_end_reason why)
{
    int zero = 0;
    int set = __atomic_compare_exchange_n(&r->end_code, &zero, 1 + (int)why, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&s->pf_cv);
    pthread_cond_broadcast(&s->dec_cv);
    return set;
}

/* Ends the first request of `list` (linked by next) that was asked to end, after
 * unlinking it; 1 if there was one. Called and returns with s->mu held. */
static int sweep_cancelled(mq_sched *s, struct req *list, void (*unlink)(mq_sched *, struct req *))
{
    for (struct req *q = list; q; q = q->next) {
        int code = __atomic_load_n(&q->end_code, __ATOMIC_ACQUIRE);
        if (code) {
            mq_sched_end_reason why = (mq_sched_end_reason)(code - 1);
            unlink(s, q);
            if (why == MQ_SCHED_END_ERROR)
                end_request(s, q, why, q->end_err, q->end_msg);
            else
                end_request(s, q, why, 0, why == MQ_SCHED_END_CANCEL ? "cancelled" : "client gone");
            return 1;
        }
    }
    return 0;
}

/* Blocks a running request holds: its session's and those still reserved for it. */
static int held_blocks(const struct req *r)
{
    return r->ss->n_blk + r->reserved;
}

/* The running (prefilling or decoding) request that holds the most blocks (of one
 * tenant, if given), and whether one of them is already asked to end (its blocks are
 * coming back). s->mu held. */
static struct req *largest_running(mq_sched *s, const uint64_t *tenant, int *ending)
{
    struct req *best = NULL, *lists[2] = { s->queue_head, s->decoding };
    *ending = 0;
    for (int i = 0; i < 2; i++)
        for (struct req *q = lists[i]; q; q = q->next) {
            if (q->state == RQ_QUEUED || (tenant && q->ss->tenant != *tenant))
                continue;
            *ending |= __atomic_load_n(&q->end_code, __ATOMIC_ACQUIRE) != 0;
            if (!best || held_blocks(q) > held_blocks(best))
                best = q;
        }
    return best;
}

/* When the store (or a tenant's share of it, if tenant is given) cannot give a block:
 * the running request holding the most blocks (of that tenant) ends; its driver ends it
 * at its next step, its session keeps what was generated, and its KV becomes idle KV
 * that reclaim_idle takes back. Nothing if such an end is already pending. s->mu held. */
static void make_room(mq_sched *s, const uint64_t *tenant)
{
    int ending;
    struct req *v = largest_running(s, tenant, &ending);
    if (!v || ending)
        return;
    v->end_err = -ENOSPC;
    if (tenant)
        snprintf(v->end_msg, sizeof v->end_msg,
                 "KV share of tenant %llu full: this request held the most of its %d blocks (%d) and was ended to "
                 "make room; its session keeps the %d tokens generated",
                 (unsigned long long)*tenant, s->o.tenant_kv_blocks, held_blocks(v), v->generated);
    else
        snprintf(v->end_msg, sizeof v->end_msg,
                 "KV store full: this request held the most of its %d blocks (%d) and was ended to make room; "
                 "its session keeps the %d tokens generated",
                 s->o.kv_blocks, held_blocks(v), v->generated);
    if (flag_end(s, v, MQ_SCHED_END_ERROR))
        s->req_yielded++;
}

/* One more block reserved for r (its next position starts one): from the store, else
 * from idle sessions' KV. -ENOSPC if neither has one. s->mu held. */
static int reserve_next_block(mq_sched *s, struct req *r)
{
    if (mq_kv_reserve(s->kv, 1) < 0 && reclaim_idle(s, 1, NULL) < 0)
        return -ENOSPC;
    r->reserved++;
    return 0;
}

/* A driver with nothing to run sleeps until woken, at most SCHED_IDLE_TICK_MS: its
 * progress counter must keep moving for the watchdog. */
static void idle_wait(mq_sched *s, pthread_cond_t *cv)
{
    struct timespec ts;
    mq_deadline_in(&ts, CLOCK_REALTIME, SCHED_IDLE_TICK_MS);
    pthread_cond_timedwait(cv, &s->mu, &ts);
}

/* Sessions with a request running (and, with notifying, those whose on_done has not
 * returned yet). s->mu held. */
static int busy_sessions(const mq_sched *s, int notifying)
{
    int n = 0;
    for (const struct session *ss = s->sessions; ss; ss = ss->next)
        n += ss->req != NULL || (notifying && ss->notifying);
    return n;
}

/* Asks every running request to end (s->mu held). */
static void cancel_all(mq_sched *s)
{
    for (struct session *ss = s->sessions; ss; ss = ss->next)
        if (ss->req)
            flag_end(s, ss->req, MQ_SCHED_END_CANCEL);
}

/* Waits (s->mu held) until no request runs and no on_done is in flight. */
static void wait_quiet(mq_sched *s)
{
    while (busy_sessions(s, 1))
        pthread_cond_wait(&s->done_cv, &s->mu);
}

static void queue_remove(mq_sched *s, struct req *r)
{
    struct req **pp = &s->queue_head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = r->next;
    if (s->queue_tail == r)
        s->queue_tail = prev;
    r->next = NULL;
    if (r->state == RQ_QUEUED)
        s->n_queued--;
    else
        s->n_prefilling--;
}

static void decode_remove(mq_sched *s, struct req *r)
{
    struct req **pp = &s->decoding;
    while (*pp && *pp != r)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = r->next;
        s->n_decoding--;
    }
    r->next = NULL;
}

/* ---- sampling and stopping (driver threads, request owned, no lock) ---- */

static int32_t sample(mq_sched *s, struct req *r, float *logits)
{
    if (r->has_smp) {
        /* penalties see the whole history: prompt and generated ids, as transformers */
        int32_t id = mq_sampler_sample(&r->smp, logits, r->ss->hist, (size_t)r->ss->n_hist);
        if (id >= 0)
            return id;
    }
    return (int32_t)mq_argmax(logits, s->vocab);
}

static int is_stop_id(mq_sched *s, const struct req *r, int32_t id)
{
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (r->p.stop_ids[i] == id)
            return 1;
    if (r->p.use_eos) {
        const mq_config *c = &s->model->cfg;
        for (int i = 0; i < c->n_eos; i++)
            if (c->eos_ids[i] == id)
                return 1;
        if (s->tok && mq_tok_eos(s->tok) == id)
            return 1;
    }
    return 0;
}

/* Appends the sampled token to the history, emits its text and decides whether the
 * request ends: returns 0 to go on, or 1 + mq_sched_end_reason. */
static int accept_token(mq_sched *s, struct req *r, int32_t id)
{
    struct session *ss = r->ss;
    double t = mq_now_s();
    if (!r->emitted_first)
        r->t_first_tok = t;
    r->t_last_tok = t;
    ss->hist[ss->n_hist] = id; /* capacity reserved at submit; length published under lock */
    r->generated++;
    r->emitted_first = 1;
    int end = 0;
    if (is_stop_id(s, r, id))
        end = 1 + MQ_SCHED_END_STOP_TOKEN;
    else if (ss->n_hist + 1 >= r->limit)
        end = 1 + MQ_SCHED_END_LENGTH;
    /* text: the tokenizer's streaming decoder (UTF-8 complete), then the stop-string
     * matcher, which withholds what may be the start of a stop string */
    char buf[1024], out[2048];
    int len = 0;
    size_t olen = 0;
    if (s->tok) {
        len = mq_tok_stream_push(&r->ts, id, buf, sizeof buf);
        if (len < 0)
            len = 0;
        if (end) {
            int f = mq_tok_stream_flush(&r->ts, buf + len, sizeof buf - (size_t)len);
            if (f > 0)
                len += f;
        }
    }
    if (r->has_stop) {
        const char *rel = NULL;
        size_t rl = 0;
        int st = len > 0 ? mq_stop_feed(&r->stopper, buf, (size_t)len, &rel, &rl) : 0;
        if (st > 0)
            end = 1 + MQ_SCHED_END_STOP_STRING;
        if (rl > sizeof out)
            rl = sizeof out;
        if (rl)
            memcpy(out, rel, rl);
        olen = rl;
        if (end && st <= 0) { /* ending for another reason: release what was held back */
            mq_stop_flush(&r->stopper, &rel, &rl);
            if (rl > sizeof out - olen)
                rl = sizeof out - olen;
            if (rl)
                memcpy(out + olen, rel, rl);
            olen += rl;
        }
    } else {
        memcpy(out, buf, (size_t)len);
        olen = (size_t)len;
    }
    if (r->sink.on_token)
        r->sink.on_token(r->sink.ctx, id, olen ? out : NULL, olen);
    return end;
}

/* ---- the prefill driver ---- */

/* What admit() decided (or a negative errno: the request fails, message in msg). */
enum { ADMIT_WAIT = 0, ADMIT_OK = 1, ADMIT_TENANT_WAIT = 2 };

/* Admission of a queued request: prefix lookup, then its tenant's share and the store
 * for the blocks of its prompt and first sampled token. ADMIT_WAIT: the store is short
 * (requests behind wait too); ADMIT_TENANT_WAIT: its tenant's share is (others may go). */
static int admit(mq_sched *s, struct req *r, char *msg, size_t msglen)
{
    struct session *ss = r->ss;
    if (ss->n_kv >= ss->n_hist)
        truncate_kv(s, ss, ss->n_hist - 1); /* logits need a token */
    lookup_prefix(s, ss);
    /* the prompt and the first sampled token's position; decoding reserves the rest */
    int need = blocks_for(s, ss->n_hist + 1) - ss->n_blk;
    if (need < 0)
        need = 0;
    if (!tenant_fits(s, ss->tenant, need, ss)) {
        mq_tenant_info u = tenant_usage(s, ss->tenant);
        if (s->o.on_kv_full == MQ_KV_FULL_FAIL || u.running == 0) {
            snprintf(msg, msglen,
                     "KV share of tenant %llu full: the request needs %d more blocks of %d tokens, the tenant holds "
                     "%d of its %d",
                     (unsigned long long)ss->tenant, need, s->o.block_tokens, u.kv_blocks + u.kv_reserved,
                     s->o.tenant_kv_blocks);
            return -ENOSPC;
        }
        return ADMIT_TENANT_WAIT; /* the tenant's running requests will give blocks back */
    }
    if (mq_kv_reserve(s->kv, need) < 0 && reclaim_idle(s, need, ss) < 0) {
        int active = s->n_decoding + s->n_prefilling;
        if (s->o.on_kv_full == MQ_KV_FULL_FAIL || active == 0) {
            mq_kv_stats ks;
            mq_kv_stats_get(s->kv, &ks);
            snprintf(msg, msglen,
                     "KV store full: the request needs %d more blocks of %d tokens, "
                     "%d are free or evictable (%d in use, %d reserved)",
                     need, s->o.block_tokens, ks.free + ks.cached - ks.reserved, ks.used, ks.reserved);
            return -ENOSPC;
        }
        return ADMIT_WAIT; /* running requests will give blocks back */
    }
    r->reserved = need;
    r->kv0 = ss->n_kv;
    r->st.cached_tokens = ss->n_kv;
    return ADMIT_OK;
}

/* Makes sure blocks cover positions [0, upto) (blocks come from the reservation). */
static int ensure_blocks(mq_sched *s, struct req *r, int upto)
{
    struct session *ss = r->ss;
    while (ss->n_blk * s->o.block_tokens < upto) {
        int id = mq_kv_alloc(s->kv, 1);
        if (id < 0)
            return id;
        if (r->reserved > 0)
            r->reserved--;
        ss->blk[ss->n_blk] = id;
        ss->ptr[ss->n_blk] = mq_kv_block_ptr(s->kv, id);
        ss->n_blk++;
    }
    return 0;
}

/* Whether an earlier queued request of r's tenant waits for the tenant's share: then r
 * waits behind it (FIFO within a tenant). */
static int tenant_waits_ahead(const mq_sched *s, const struct req *r)
{
    for (const struct req *q = s->queue_head; q && q != r; q = q->next)
        if (q->state == RQ_QUEUED && q->tenant_waiting && q->ss->tenant == r->ss->tenant)
            return 1;
    return 0;
}

/* The request the prefill driver runs a chunk of next (s->mu held): the first QUEUED
 * request the KV store admits, in queue order (nobody overtakes a request waiting for the
 * store; a request waiting for its tenant's share is passed by other tenants' requests),
 * else the first started prefill; NULL: nothing to run now. A request that can never be
 * admitted ends here with its error, and *again says to look anew (s->mu was dropped). */
static struct req *pick(mq_sched *s, int *again)
{
    char msg[256];
    for (struct req *q = s->queue_head; q; q = q->next) {
        if (q->state != RQ_QUEUED)
            continue;
        if (tenant_waits_ahead(s, q))
            continue;
        int a = admit(s, q, msg, sizeof msg);
        q->tenant_waiting = a == ADMIT_TENANT_WAIT;
        if (a == ADMIT_OK) {
            q->state = RQ_PREFILL;
            s->n_queued--;
            s->n_prefilling++;
            q->t_first_chunk = mq_now_s();
            return q;
        }
        if (a < 0) {
            queue_remove(s, q);
            end_request(s, q, MQ_SCHED_END_ERROR, a, msg);
            *again = 1;
            return NULL;
        }
        if (a == ADMIT_WAIT)
            break;
    }
    for (struct req *q = s->queue_head; q; q = q->next) /* queued ones wait for blocks, if any */
        if (q->state == RQ_PREFILL)
            return q;
    return NULL;
}

/* One prefill chunk of a request: positions [pos0, pos0 + n) of its session. */
struct chunk {
    int pos0, n;
    int last;  /* the chunk ends the prompt: its last token gives the first sampled token */
    int rc;    /* 0 or the engine's / block allocation's negative errno */
    int end;   /* after the first token: 0 or 1 + the reason generation ends */
    double dt; /* engine time */
    mq_kv_seq seq;
};

/* Sizes the request's next chunk and gives it KV blocks (s->mu held). First it takes the
 * blocks other sessions published since its last chunk: agents that send the same
 * system prompt at the same time then read it once between them, each chunk by
 * whichever of them gets to it first. */
static struct chunk take_chunk(mq_sched *s, struct req *r)
{
    struct session *ss = r->ss;
    int had = ss->n_kv, had_blk = ss->n_blk;
    lookup_prefix(s, ss);
    r->st.cached_tokens += ss->n_kv - had;
    /* each block found replaces one this request reserved to allocate: hand those back,
     * so that pinning a cached block never eats into another request's reservation */
    int found = ss->n_blk - had_blk < r->reserved ? ss->n_blk - had_blk : r->reserved;
    if (found > 0) {
        mq_kv_unreserve(s->kv, found);
        r->reserved -= found;
    }
    struct chunk c = { .pos0 = ss->n_kv };
    const int grid_end = (c.pos0 / s->o.chunk_tokens + 1) * s->o.chunk_tokens;
    c.n = (grid_end < ss->n_hist ? grid_end : ss->n_hist) - c.pos0;
    c.last = c.pos0 + c.n == ss->n_hist;
    c.rc = ensure_blocks(s, r, c.pos0 + c.n);
    c.seq = (mq_kv_seq){ .blocks = ss->ptr, .n_blocks = ss->n_blk };
    return c;
}

/* The engine on the chunk under the mode's rule and, when it ends the prompt, the first
 * token. Runs without s->mu: the driver owns the request. */
static void run_chunk(mq_sched *s, struct req *r, struct chunk *c)
{
    const int *toks = (const int *)r->ss->hist + c->pos0;
    double t0 = mq_now_s();
    if (c->rc == 0)
        c->rc = mq_engine_prefill_chunk(s->pf_eng, s->pf_pool, &c->seq, toks, c->n, c->pos0, r->mode,
                                        c->last ? s->pf_logits : NULL);
    c->dt = mq_now_s() - t0;
    if (c->rc == 0 && c->last)
        c->end = accept_token(s, r, sample(s, r, s->pf_logits));
}

/* Moves a request whose prompt is read (and first token sampled) to the decode list. */
static void start_decode(mq_sched *s, struct req *r)
{
    r->state = RQ_DECODE;
    r->next = s->decoding;
    s->decoding = r;
    s->n_decoding++;
    pthread_cond_signal(&s->dec_cv);
}

/* Publishes the chunk (s->mu held): the session's KV grows, full blocks go to the
 * index; then the request takes its turn again (round-robin), starts decoding, or ends. */
static void finish_chunk(mq_sched *s, struct req *r, const struct chunk *c)
{
    struct session *ss = r->ss;
    s->pf_busy_s += c->dt;
    r->t_prefill_busy += c->dt;
    if (c->rc < 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "prefill of positions %d..%d failed: %s", c->pos0, c->pos0 + c->n - 1,
                 strerror(-c->rc));
        truncate_kv(s, ss, c->pos0);
        queue_remove(s, r);
        end_request(s, r, MQ_SCHED_END_ERROR, c->rc, msg);
        return;
    }
    ss->n_kv += c->n;
    r->st.prefilled_tokens += c->n;
    /* a whole unit from a shareable start (canon_unit: any run of bf16 prompt rows, a whole
     * chunk of the grid under NVFP4), all at the prompt precision (in mixed mode the
     * prompt's last token is not), is what any session computes there */
    if (c->pos0 == ss->n_canon && c->n % canon_unit(s, r->mode) == 0 &&
        (!c->last || mq_prec_mode_prompt(r->mode) == mq_prec_mode_decode(r->mode)))
        ss->n_canon += c->n;
    publish_full_blocks(s, ss);
    if (!c->last) {
        if (r != s->queue_tail) { /* round-robin: the next chunk goes to another prompt being read, if any */
            queue_remove(s, r);
            r->state = RQ_PREFILL;
            s->n_prefilling++;
            s->queue_tail->next = r;
            s->queue_tail = r;
        }
        return;
    }
    ss->n_hist++; /* the sampled token */
    queue_remove(s, r);
    int code = c->end ? c->end : __atomic_load_n(&r->end_code, __ATOMIC_ACQUIRE);
    if (code)
        end_request(s, r, (mq_sched_end_reason)(code - 1), 0, "");
    else
        start_decode(s, r);
}

static void *prefill_main(void *arg)
{
    mq_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        __atomic_add_fetch(&s->pf_progress, 1, __ATOMIC_RELAXED);
        if (sweep_cancelled(s, s->queue_head, queue_remove))
            continue;
        int again = 0;
        struct req *r = pick(s, &again);
        if (again)
            continue;
        if (!r) {
            idle_wait(s, &s->pf_cv);
            continue;
        }
        struct chunk c = take_chunk(s, r);
        pthread_mutex_unlock(&s->mu);
        run_chunk(s, r, &c);
        pthread_mutex_lock(&s->mu);
        finish_chunk(s, r, &c);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the decode driver ---- */

/* What one decode step runs: up to max_batch requests, one token each. */
struct batch {
    int n;
    mq_prec_mode mode; /* the step's precision */
    struct req **r;
    mq_kv_seq *seqs;
    int *toks, *pos, *ends;
};

/* Fills the batch with up to max_batch decoding requests of one precision, and gives each
 * its next position's KV block (s->mu held). 0 or the
 * block allocation's negative errno (which a correct reservation rules out). */
static int pick_batch(mq_sched *s, struct batch *b)
{
    /* one precision per step: the requests of the precision of the request at a rotating
     * start, so that every precision and every request gets its turn */
    const int mb = s->o.max_batch;
    int nb = 0, start = s->n_decoding > 1 ? s->rr_decode++ % s->n_decoding : 0;
    struct req *q = s->decoding;
    for (int i = 0; i < start && q->next; i++)
        q = q->next;
    b->mode = q->mode;
    for (int k = 0; k < s->n_decoding && nb < mb; k++) {
        if (q->mode == b->mode)
            b->r[nb++] = q;
        q = q->next ? q->next : s->decoding;
    }
    /* a request whose token starts a block needs one more reserved; one that cannot get
     * it skips this step, and the largest holder is asked to make room */
    int kept = 0, starved = 0;
    for (int i = 0; i < nb; i++) {
        struct req *q = b->r[i];
        if (q->ss->n_blk * s->o.block_tokens < q->ss->n_kv + 1 && q->reserved == 0) {
            if (!tenant_fits(s, q->ss->tenant, 1, NULL)) {
                make_room(s, &q->ss->tenant);
                continue;
            }
            if (reserve_next_block(s, q) < 0) {
                starved = 1;
                continue;
            }
        }
        b->r[kept++] = q;
    }
    if (starved)
        make_room(s, NULL);
    nb = b->n = kept;
    int rc = 0;
    for (int i = 0; i < nb; i++) {
        struct session *ss = b->r[i]->ss;
        int e = ensure_blocks(s, b->r[i], ss->n_kv + 1);
        if (e < 0)
            rc = e;
        b->seqs[i] = (mq_kv_seq){ .blocks = ss->ptr, .n_blocks = ss->n_blk };
        b->toks[i] = ss->hist[ss->n_kv];
        b->pos[i] = ss->n_kv;
    }
    return rc;
}

/* Publishes one decode step (s->mu held): each request's KV and history grow by its
 * token; requests that stopped (or whose step failed, rc < 0) end. */
static void finish_batch(mq_sched *s, const struct batch *b, int rc)
{
    for (int i = 0; i < b->n; i++) {
        struct req *r = b->r[i];
        struct session *ss = r->ss;
        if (rc < 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "decode step failed: %s", strerror(-rc));
            decode_remove(s, r);
            end_request(s, r, MQ_SCHED_END_ERROR, rc, msg);
            continue;
        }
        ss->n_kv++;
        ss->n_hist++;
        publish_full_blocks(s, ss);
        if (b->ends[i]) {
            decode_remove(s, r);
            end_request(s, r, (mq_sched_end_reason)(b->ends[i] - 1), 0, "");
        }
    }
}

static void *decode_main(void *arg)
{
    mq_sched *s = arg;
    const size_t mb = (size_t)s->o.max_batch;
    struct batch b = { .r = calloc(mb, sizeof *b.r),
                       .seqs = calloc(mb, sizeof *b.seqs),
                       .toks = calloc(mb, sizeof(int)),
                       .pos = calloc(mb, sizeof(int)),
                       .ends = calloc(mb, sizeof(int)) };
    pthread_mutex_lock(&s->mu);
    while (!s->stop && b.r && b.seqs && b.toks && b.pos && b.ends) {
        __atomic_add_fetch(&s->dec_progress, 1, __ATOMIC_RELAXED);
        if (sweep_cancelled(s, s->decoding, decode_remove))
            continue;
        if (!s->decoding) {
            idle_wait(s, &s->dec_cv);
            continue;
        }
        int rc = pick_batch(s, &b);
        if (rc == 0 && b.n == 0) { /* every one waits for a block: one is being ended */
            idle_wait(s, &s->dec_cv);
            continue;
        }
        pthread_mutex_unlock(&s->mu);

        double t0 = mq_now_s();
        if (rc == 0)
            rc = mq_engine_decode(s->dec_eng, s->dec_pool, b.seqs, b.toks, b.pos, b.n, mq_prec_mode_decode(b.mode),
                                  s->dec_logits);
        double dt = mq_now_s() - t0;
        for (int i = 0; i < b.n; i++)
            b.ends[i] = rc < 0 ? 0 : accept_token(s, b.r[i], sample(s, b.r[i], s->dec_logits + (size_t)i * s->vocab));

        pthread_mutex_lock(&s->mu);
        s->dec_busy_s += dt;
        finish_batch(s, &b, rc);
    }
    pthread_mutex_unlock(&s->mu);
    free(b.r);
    free(b.seqs);
    free(b.toks);
    free(b.pos);
    free(b.ends);
    return NULL;
}

/* ---- public API ---- */

/* Fills in defaults (a zero or negative field means default) and the context limit:
 * the model's, capped at SCHED_MAX_CONTEXT when not given. */
static void resolve_opts(mq_sched_opts *o, const mq_model *model)
{
    mq_sched_opts d;
    mq_sched_opts_default(&d);
    int *fields[] = { &o->prefill_threads, &o->decode_threads, &o->chunk_tokens, &o->max_batch,
                      &o->max_queued,      &o->max_sessions,   &o->block_tokens };
    const int defaults[] = { d.prefill_threads, d.decode_threads, d.chunk_tokens, d.max_batch,
                             d.max_queued,      d.max_sessions,   d.block_tokens };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (*fields[i] <= 0)
            *fields[i] = defaults[i];
    /* chunks are whole blocks, so that a shareable chunk is a run of full blocks */
    o->chunk_tokens =
        o->chunk_tokens < o->block_tokens ? o->block_tokens : o->chunk_tokens / o->block_tokens * o->block_tokens;
    const int max_pos = model->cfg.max_pos;
    int ctx = o->context_limit;
    if (ctx <= 0)
        ctx = max_pos > 0 && max_pos < SCHED_MAX_CONTEXT ? max_pos : SCHED_MAX_CONTEXT;
    if (max_pos > 0 && ctx > max_pos)
        ctx = max_pos;
    o->context_limit = ctx;
    if (o->kv_blocks <= 0)
        o->kv_blocks = 2 * ((ctx + o->block_tokens - 1) / o->block_tokens);
}

/* The two worker pools (pinned to their CPU lists) and an engine for each. */
static int create_workers(mq_sched *s, char *err, size_t errlen)
{
    char e[MQ_ERRMSG_LEN] = "";
    cpu_set_t pf_set, dec_set;
    if (s->o.prefill_cpus && parse_cpus(s->o.prefill_cpus, &pf_set) < 0)
        return mq_errmsg(err, errlen, -EINVAL, "scheduler: bad prefill CPU list \"%s\"", s->o.prefill_cpus);
    if (s->o.decode_cpus && parse_cpus(s->o.decode_cpus, &dec_set) < 0)
        return mq_errmsg(err, errlen, -EINVAL, "scheduler: bad decode CPU list \"%s\"", s->o.decode_cpus);
    int r = mq_pool_create(&s->pf_pool, s->o.prefill_threads, s->o.prefill_cpus ? &pf_set : NULL, "mq-prefill");
    if (r == 0)
        r = mq_pool_create(&s->dec_pool, s->o.decode_threads, s->o.decode_cpus ? &dec_set : NULL, "mq-decode");
    if (r < 0)
        return mq_errmsg(err, errlen, r, "scheduler: creating the worker pools: %s", strerror(-r));
    const int ctx = s->o.context_limit, bt = s->o.block_tokens;
    mq_engine_opts pe = { .max_chunk = s->o.chunk_tokens, .max_batch = 1, .block_tokens = bt, .max_context = ctx };
    mq_engine_opts de = { .max_chunk = 1, .max_batch = s->o.max_batch, .block_tokens = bt, .max_context = ctx };
    r = mq_engine_create(&s->pf_eng, s->model, &pe, e, sizeof e);
    if (r == 0)
        r = mq_engine_create(&s->dec_eng, s->model, &de, e, sizeof e);
    if (r < 0)
        return mq_errmsg(err, errlen, r, "scheduler: engine: %s", e);
    s->pf_logits = malloc((size_t)s->vocab * sizeof(float));
    s->dec_logits = malloc((size_t)s->vocab * (size_t)s->o.max_batch * sizeof(float));
    if (!s->pf_logits || !s->dec_logits)
        return mq_errmsg(err, errlen, -ENOMEM, "scheduler: out of memory for logits");
    return 0;
}

/* Starts both driver threads, or neither. */
static int start_drivers(mq_sched *s, char *err, size_t errlen)
{
    pthread_attr_t attr;
    int rc = mq_compute_thread_attr(&attr);
    if (rc)
        return mq_errmsg(err, errlen, rc, "scheduler: thread attributes: %s", strerror(-rc));
    if (pthread_create(&s->pf_th, &attr, prefill_main, s) != 0) {
        pthread_attr_destroy(&attr);
        return mq_errmsg(err, errlen, -EAGAIN, "scheduler: cannot start the prefill thread");
    }
    rc = pthread_create(&s->dec_th, &attr, decode_main, s);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_broadcast(&s->pf_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->pf_th, NULL);
        return mq_errmsg(err, errlen, -EAGAIN, "scheduler: cannot start the decode thread");
    }
    pthread_setname_np(s->pf_th, "mq-prefill-drv");
    pthread_setname_np(s->dec_th, "mq-decode-drv");
    s->threads_started = 1;
    return 0;
}

int mq_sched_create(mq_sched **out, struct mq_model *model, struct mq_tokenizer *tok, const mq_sched_opts *o, char *err,
                    size_t errlen)
{
    mq_sched *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    if (o)
        s->o = *o;
    else
        mq_sched_opts_default(&s->o);
    resolve_opts(&s->o, model);
    s->model = model;
    s->tok = tok;
    s->vocab = model->cfg.vocab;
    s->next_id = 1;
    s->max_blocks = blocks_for(s, s->o.context_limit);
    int r;
    if ((unsigned)s->o.mode >= MQ_PREC_MODE_COUNT) {
        r = mq_errmsg(err, errlen, -EINVAL, "scheduler: mode %d is not mixed (%d), bf16 (%d) or fp4 (%d)",
                      (int)s->o.mode, MQ_PREC_MODE_MIXED, MQ_PREC_MODE_BF16, MQ_PREC_MODE_FP4);
        free(s);
        return r;
    }
    if (s->o.mode != MQ_PREC_MODE_BF16 && !mq_model_has_fp4(model)) {
        r = mq_errmsg(err, errlen, -EINVAL, "scheduler: mode %s needs the model's NVFP4 weights",
                      mq_prec_mode_name(s->o.mode));
        free(s);
        return r;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->pf_cv, NULL);
    pthread_cond_init(&s->dec_cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    mq_kv_store_opts ko = { .block_bytes = mq_kv_block_bytes(&model->cfg, s->o.block_tokens),
                            .block_tokens = s->o.block_tokens,
                            .n_blocks = s->o.kv_blocks,
                            .allow_hugetlb = s->o.kv_hugetlb };
    r = mq_kv_store_create(&s->kv, &ko, err, errlen);
    if (r == 0)
        r = create_workers(s, err, errlen);
    if (r == 0)
        r = start_drivers(s, err, errlen);
    if (r < 0) {
        mq_sched_destroy(s);
        return r;
    }
    *out = s;
    return 0;
}

static void free_session(mq_sched *s, struct session *ss)
{
    truncate_kv(s, ss, 0);
    free(ss->hist);
    free(ss->blk);
    free(ss->ptr);
    free(ss->hash);
    free(ss);
}

void mq_sched_destroy(mq_sched *s)
{
    if (!s)
        return;
    if (s->threads_started) {
        /* cancel everything, let the drivers report, then stop them */
        pthread_mutex_lock(&s->mu);
        s->draining = 1;
        cancel_all(s);
        wait_quiet(s);
        s->stop = 1;
        pthread_cond_broadcast(&s->pf_cv);
        pthread_cond_broadcast(&s->dec_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->pf_th, NULL);
        pthread_join(s->dec_th, NULL);
    }
    while (s->sessions) {
        struct session *ss = s->sessions;
        s->sessions = ss->next;
        free_session(s, ss);
    }
    mq_engine_free(s->pf_eng);
    mq_engine_free(s->dec_eng);
    mq_pool_destroy(s->pf_pool);
    mq_pool_destroy(s->dec_pool);
    mq_kv_store_destroy(s->kv);
    free(s->pf_logits);
    free(s->dec_logits);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->pf_cv);
    pthread_cond_destroy(&s->dec_cv);
    pthread_cond_destroy(&s->done_cv);
    free(s);
}

/* The chain-hash seed of a tenant's sessions (scheduler.h "Tenants"). */
static uint64_t tenant_root(const mq_sched *s, uint64_t tenant)
{
    if (s->o.share_prefix_cache)
        return MQ_KV_HASH_SEED;
    const int32_t salt[3] = { (int32_t)(uint32_t)tenant, (int32_t)(uint32_t)(tenant >> 32), -1 }; /* -1: no token */
    return mq_kv_prefix_hash(MQ_KV_HASH_SEED, salt, 3);
}

/* The seed of a session's blocks computed in precision m: KV is shared only between
 * requests that computed it the same way (mixed, the default, keeps the tenant's seed). */
static uint64_t session_root(const mq_sched *s, uint64_t tenant, mq_prec_mode m)
{
    uint64_t root = tenant_root(s, tenant);
    if (m == MQ_PREC_MODE_MIXED)
        return root;
    const int32_t salt[2] = { (int32_t)m, -2 }; /* -2: never a token id */
    return mq_kv_prefix_hash(root, salt, 2);
}

int mq_sched_session_open(mq_sched *s, uint64_t tenant, uint64_t *id)
{
    struct session *ss = calloc(1, sizeof *ss);
    if (!ss)
        return -ENOMEM;
    ss->blk = calloc((size_t)s->max_blocks, sizeof *ss->blk);
    ss->ptr = calloc((size_t)s->max_blocks, sizeof *ss->ptr);
    ss->hash = calloc((size_t)s->max_blocks, sizeof *ss->hash);
    if (!ss->blk || !ss->ptr || !ss->hash) {
        free(ss->blk);
        free(ss->ptr);
        free(ss->hash);
        free(ss);
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->mu);
    if (s->n_sessions >= s->o.max_sessions || s->draining ||
        (s->o.tenant_max_sessions > 0 && tenant_usage(s, tenant).sessions >= s->o.tenant_max_sessions)) {
        int r = s->draining ? -ESHUTDOWN : s->n_sessions >= s->o.max_sessions ? -EMFILE : -EDQUOT;
        pthread_mutex_unlock(&s->mu);
        free(ss->blk);
        free(ss->ptr);
        free(ss->hash);
        free(ss);
        return r;
    }
    ss->id = s->next_id++;
    ss->tenant = tenant;
    ss->root = session_root(s, tenant, MQ_PREC_MODE_MIXED);
    ss->last_used = mq_now_s();
    ss->next = s->sessions;
    s->sessions = ss;
    s->n_sessions++;
    *id = ss->id;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int mq_sched_session_close(mq_sched *s, uint64_t id)
{
    struct session *ss = lock_session(s, id);
    if (!ss)
        return -ENOENT;
    if (ss->req)
        flag_end(s, ss->req, MQ_SCHED_END_CANCEL);
    while (ss->req || ss->notifying)
        pthread_cond_wait(&s->done_cv, &s->mu);
    struct session **pp = &s->sessions;
    while (*pp != ss)
        pp = &(*pp)->next;
    *pp = ss->next;
    s->n_sessions--;
    free_session(s, ss);
    pthread_cond_signal(&s->pf_cv); /* freed blocks may admit a waiting request */
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int mq_sched_session_history(mq_sched *s, uint64_t id, int32_t *buf, int cap)
{
    pthread_mutex_lock(&s->mu);
    struct session *ss = find_session(s, id);
    int n = ss ? ss->n_hist : -ENOENT;
    if (ss && buf && cap > 0)
        memcpy(buf, ss->hist, (size_t)(cap < n ? cap : n) * sizeof(int32_t));
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* A new request from the caller's parameters: tokens checked against the vocabulary,
 * defaults filled in, stop strings copied, sampler and stop matcher set up. No lock. */
static int req_new(mq_sched *s, const int32_t *new_tokens, int n, const mq_gen_params *p, const mq_sink *sink,
                   struct req **out, char *err, size_t errlen)
{
    if (n < 0 || (n > 0 && !new_tokens)) {
        return mq_errmsg(err, errlen, -EINVAL, "submit: bad token array");
    }
    for (int i = 0; i < n; i++)
        if (new_tokens[i] < 0 || new_tokens[i] >= s->vocab) {
            return mq_errmsg(err, errlen, -EINVAL, "submit: token %d at index %d is outside the vocabulary (%d)",
                             new_tokens[i], i, s->vocab);
        }
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    mq_gen_params gp = { 0 };
    if (p)
        gp = *p;
    if (gp.max_tokens <= 0)
        gp.max_tokens = SCHED_DEFAULT_MAX_TOKENS;
    if (gp.n_stop_ids < 0 || gp.n_stop_ids > MQ_SCHED_MAX_STOP_IDS)
        gp.n_stop_ids = 0;
    if (gp.n_stop_strs < 0 || gp.n_stop_strs > MQ_SCHED_MAX_STOP_STRS)
        gp.n_stop_strs = 0;
    for (int i = 0; i < gp.n_stop_strs; i++) {
        if (!gp.stop_strs[i] || !*gp.stop_strs[i])
            continue;
        if (strlen(gp.stop_strs[i]) >= SCHED_STOP_TAIL) {
            mq_errmsg(err, errlen, 0, "submit: stop string %d longer than %d bytes", i, SCHED_STOP_TAIL - 1);
            req_free(r);
            return -EINVAL;
        }
        if (!(r->stop[i] = strdup(gp.stop_strs[i]))) {
            req_free(r);
            return -ENOMEM;
        }
    }
    for (int i = 0; i < MQ_SCHED_MAX_STOP_STRS; i++)
        gp.stop_strs[i] = NULL;
    r->p = gp;
    mq_sampler_params sp;
    mq_sampler_params_default(&sp);
    sp.temperature = gp.temperature;
    sp.top_k = gp.top_k;
    sp.top_p = gp.top_p > 0 && gp.top_p < 1 ? gp.top_p : 1;
    sp.min_p = gp.min_p;
    sp.repetition_penalty = gp.repetition_penalty > 0 ? gp.repetition_penalty : 1;
    sp.presence_penalty = gp.presence_penalty;
    sp.frequency_penalty = gp.frequency_penalty;
    sp.seed = gp.seed;
    int sr = 0;
    if (gp.temperature > 0 || sp.repetition_penalty != 1 || sp.presence_penalty != 0 || sp.frequency_penalty != 0) {
        sr = mq_sampler_init(&r->smp, &sp, s->vocab);
        r->has_smp = sr == 0;
    }
    int n_strs = 0;
    const char *strs[MQ_SCHED_MAX_STOP_STRS];
    for (int i = 0; i < MQ_SCHED_MAX_STOP_STRS; i++)
        if (r->stop[i])
            strs[n_strs++] = r->stop[i];
    if (sr == 0 && n_strs > 0) {
        sr = mq_stop_init(&r->stopper, NULL, 0, strs, n_strs);
        r->has_stop = sr == 0;
    }
    if (sr < 0) {
        mq_errmsg(err, errlen, 0, "submit: bad sampling parameters or stop strings (%s)", strerror(-sr));
        req_free(r);
        return sr;
    }
    r->mode = gp.has_mode ? gp.mode : s->o.mode;
    if ((unsigned)r->mode >= MQ_PREC_MODE_COUNT || (r->mode != MQ_PREC_MODE_BF16 && !mq_model_has_fp4(s->model))) {
        mq_errmsg(err, errlen, 0, "submit: mode %d (%s) is unknown or needs NVFP4 weights this scheduler did not load",
                  (int)r->mode, mq_prec_mode_name(r->mode));
        req_free(r);
        return -EINVAL;
    }
    if (sink)
        r->sink = *sink;
    r->t_submit = mq_now_s();
    if (s->tok)
        mq_tok_stream_init(&r->ts, s->tok, MQ_TOK_SKIP_SPECIAL, 0);
    *out = r;
    return 0;
}

/* Checks that the session can take r now (s->mu held): the scheduler accepts work, the
 * session exists and is idle, the history fits the context and the KV store, the queue
 * has room. 0 with the session's history capacity grown to r's limit, else an error. */
static int check_admission(mq_sched *s, struct session *ss, uint64_t session, int hist, int n, int max_tokens,
                           int *limit, char *err, size_t errlen)
{
    const int ctx = s->o.context_limit;
    if (s->draining)
        return mq_errmsg(err, errlen, -ESHUTDOWN, "submit: the scheduler is draining");
    if (!ss)
        return mq_errmsg(err, errlen, -ENOENT, "submit: unknown session %llu", (unsigned long long)session);
    if (ss->req) /* a finished request still in on_done does not count */
        return mq_errmsg(err, errlen, -EBUSY, "submit: session %llu already has a request running",
                         (unsigned long long)session);
    if (hist + n + 1 > ctx)
        return mq_errmsg(err, errlen, -E2BIG,
                         "submit: %d history + %d new tokens leave no room to generate within the context limit of "
                         "%d tokens",
                         hist, n, ctx);
    if (hist + n == 0)
        return mq_errmsg(err, errlen, -EINVAL, "submit: empty prompt on an empty session");
    if (s->n_queued >= s->o.max_queued)
        return mq_errmsg(err, errlen, -EAGAIN, "submit: queue full (%d requests waiting)", s->n_queued);
    if (s->o.tenant_max_queued > 0) {
        mq_tenant_info u = tenant_usage(s, ss->tenant);
        if (u.queued >= s->o.tenant_max_queued)
            return mq_errmsg(err, errlen, -EAGAIN, "submit: tenant %llu has %d requests waiting (its limit)",
                             (unsigned long long)ss->tenant, u.queued);
    }
    const int store = s->o.kv_blocks * s->o.block_tokens; /* tokens the whole KV store holds */
    if (hist + n + 1 > store)
        return mq_errmsg(err, errlen, -ENOSPC, "submit: %d history + %d new tokens need %d KV blocks, the store has %d",
                         hist, n, blocks_for(s, hist + n + 1), s->o.kv_blocks);
    /* generation stops at max_tokens, the context limit, or when the session fills the store */
    *limit = hist + n + max_tokens;
    if (*limit > ctx)
        *limit = ctx;
    if (*limit > store)
        *limit = store;
    if (ss->cap_hist < *limit + 1) {
        int32_t *h = realloc(ss->hist, (size_t)(*limit + 1) * sizeof(int32_t));
        if (!h)
            return -ENOMEM;
        ss->hist = h;
        ss->cap_hist = *limit + 1;
    }
    return 0;
}

/* Cuts the history to `hist` tokens, appends the new tokens and queues r for prefill
 * (s->mu held). A request in another precision than the session's KV starts its KV anew. */
static void enqueue(mq_sched *s, struct session *ss, struct req *r, int hist, const int32_t *new_tokens, int n,
                    int limit)
{
    if (ss->kv_mode != r->mode) {
        truncate_kv(s, ss, 0);
        ss->kv_mode = r->mode;
        ss->root = session_root(s, ss->tenant, r->mode);
    }
    if (hist < ss->n_hist) {
        ss->n_hist = hist;
        truncate_kv(s, ss, hist);
    }
    r->ss = ss;
    r->hist0 = ss->n_hist;
    r->limit = limit;
    r->st.prompt_tokens = r->p.whole_context ? hist + n : n;
    memcpy(ss->hist + ss->n_hist, new_tokens, (size_t)n * sizeof(int32_t));
    ss->n_hist += n;
    ss->req = r;
    r->state = RQ_QUEUED;
    if (s->queue_tail)
        s->queue_tail->next = r;
    else
        s->queue_head = r;
    s->queue_tail = r;
    s->n_queued++;
    pthread_cond_signal(&s->pf_cv);
}

int mq_sched_submit(mq_sched *s, uint64_t session, const int32_t *new_tokens, int n, const mq_gen_params *p,
                    const mq_sink *sink, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = 0;
    struct req *r = NULL;
    int rc = req_new(s, new_tokens, n, p, sink, &r, err, errlen);
    if (rc)
        return rc;
    pthread_mutex_lock(&s->mu);
    struct session *ss = find_session(s, session);
    /* whole context: keep the common prefix of the history and the new tokens */
    int hist = ss ? ss->n_hist : 0;
    if (ss && r->p.whole_context && !ss->req) {
        hist = 0;
        while (hist < ss->n_hist && hist < n && ss->hist[hist] == new_tokens[hist])
            hist++;
        new_tokens += hist;
        n -= hist;
    }
    int limit = 0;
    rc = check_admission(s, ss, session, hist, n, r->p.max_tokens, &limit, err, errlen);
    if (rc == 0)
        enqueue(s, ss, r, hist, new_tokens, n, limit);
    pthread_mutex_unlock(&s->mu);
    if (rc)
        req_free(r);
    return rc;
}

int mq_sched_cancel(mq_sched *s, uint64_t session, mq_sched_end_reason reason)
{
    if (reason != MQ_SCHED_END_CLIENT_GONE)
        reason = MQ_SCHED_END_CANCEL;
    struct session *ss = lock_session(s, session);
    if (!ss)
        return -ENOENT;
    if (ss->req)
        flag_end(s, ss->req, reason);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void mq_sched_get_stats(mq_sched *s, mq_sched_stats *st)
{
    memset(st, 0, sizeof *st);
    mq_kv_stats ks;
    mq_kv_stats_get(s->kv, &ks);
    pthread_mutex_lock(&s->mu);
    st->requests_done = s->req_done;
    st->requests_failed = s->req_failed;
    st->requests_yielded = s->req_yielded;
    st->prompt_tokens = s->tok_prompt;
    st->cached_tokens = s->tok_cached;
    st->prefilled_tokens = s->tok_prefilled;
    st->generated_tokens = s->tok_generated;
    st->prefill_tok_s = s->pf_busy_s > 0 ? s->tok_prefilled / s->pf_busy_s : 0;
    st->decode_tok_s = s->dec_busy_s > 0 ? s->tok_generated / s->dec_busy_s : 0;
    uint64_t seen = s->tok_cached + s->tok_prefilled;
    st->cache_hit_ratio = seen ? (double)s->tok_cached / (double)seen : 0;
    st->sessions = s->n_sessions;
    st->queued = s->n_queued;
    st->prefilling = s->n_prefilling;
    st->decoding = s->n_decoding;
    st->draining = s->draining;
    pthread_mutex_unlock(&s->mu);
    st->kv_blocks = ks.n_blocks;
    st->kv_used = ks.used;
    st->kv_cached = ks.cached;
    st->kv_free = ks.free;
    st->kv_reserved = ks.reserved;
    st->kv_available = ks.free + ks.cached - ks.reserved;
    st->kv_lookups = ks.lookups;
    st->kv_hits = ks.hits;
    st->kv_evictions = ks.evictions;
    st->kv_refused = ks.refused;
    st->block_tokens = ks.block_tokens;
    st->kv_bytes = ks.segment_bytes;
    st->kv_memory = ks.memory;
    st->prefill_progress = __atomic_load_n(&s->pf_progress, __ATOMIC_RELAXED) + mq_pool_runs(s->pf_pool);
    st->decode_progress = __atomic_load_n(&s->dec_progress, __ATOMIC_RELAXED) + mq_pool_runs(s->dec_pool);
}

void mq_sched_sessions(mq_sched *s, void (*cb)(void *ctx, const mq_session_info *i), void *ctx)
{
    pthread_mutex_lock(&s->mu);
    double t = mq_now_s();
    for (struct session *ss = s->sessions; ss; ss = ss->next) {
        mq_session_info in = { .id = ss->id,
                               .tenant = ss->tenant,
                               .history_tokens = ss->n_hist,
                               .kv_tokens = ss->n_kv,
                               .kv_blocks = ss->n_blk,
                               .shared_blocks = ss->n_shared,
                               .reserved_blocks = ss->req ? ss->req->reserved : 0,
                               .busy = ss->req ? ss->req->state : 0,
                               .idle_ms = ss->req ? 0 : (t - ss->last_used) * 1e3 };
        cb(ctx, &in);
    }
    pthread_mutex_unlock(&s->mu);
}

void mq_sched_tenants(mq_sched *s, void (*cb)(void *ctx, const mq_tenant_info *t), void *ctx)
{
    pthread_mutex_lock(&s->mu);
    for (struct session *ss = s->sessions; ss; ss = ss->next) {
        int first = 1; /* report each tenant at its first session in the list */
        for (struct session *p = s->sessions; p != ss && first; p = p->next)
            first = p->tenant != ss->tenant;
        if (first) {
            mq_tenant_info u = tenant_usage(s, ss->tenant);
            cb(ctx, &u);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

int mq_sched_drain(mq_sched *s, int timeout_ms)
{
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    struct timespec dl;
    mq_deadline_in(&dl, CLOCK_REALTIME, timeout_ms);
    while (busy_sessions(s, 1) && pthread_cond_timedwait(&s->done_cv, &s->mu, &dl) != ETIMEDOUT)
        ;
    int cancelled = busy_sessions(s, 0);
    cancel_all(s);
    wait_quiet(s);
    pthread_mutex_unlock(&s->mu);
    return cancelled;
}
