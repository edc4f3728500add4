/* Scheduler with the real model (shared/models/mq-qwen3-80m), loaded through the io_uring
 * streamer into the arena: prefix sharing between sessions, second turns that prefill
 * only new tokens, batched outputs equal to solo outputs, cancel, KV exhaustion (fail and
 * wait), chunked prefill interleaved with decoding, immediate errors, stop tokens and
 * strings, drain. */
#define _GNU_SOURCE
#include "common/clock.h"
#include "tests/harness.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <time.h>

#include "engine/arena.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "engine/weight_stream.h"
#include "common/errmsg.h"

#define TENANT 1000u /* the uid of every session but those of the tenant tests */

static mq_model *g_model;
static mq_tokenizer *g_tok;
static mq_arena *g_arena;

/* ---- a sink that records everything ---- */
#define MAXTOK 1024
struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t ids[MAXTOK];
    double t[MAXTOK];
    int n;
    char text[8192];
    size_t n_text;
    int done;
    mq_sched_end_reason why;
    int err;
    char msg[256];
    mq_sched_req_stats st;
    mq_sched *s; /* cancel after cancel_after tokens (0 = never) */
    uint64_t sess;
    int cancel_after;
};

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void on_token(void *ctx, int32_t id, const char *text, size_t len)
{
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (r->n < MAXTOK) {
        r->ids[r->n] = id;
        r->t[r->n] = mq_now_s();
    }
    r->n++;
    if (text && r->n_text + len < sizeof r->text) {
        memcpy(r->text + r->n_text, text, len);
        r->n_text += len;
        r->text[r->n_text] = 0;
    }
    int cancel = r->cancel_after && r->n == r->cancel_after;
    pthread_mutex_unlock(&r->mu);
    if (cancel)
        mq_sched_cancel(r->s, r->sess, MQ_SCHED_END_CANCEL);
}

static void on_done(void *ctx, mq_sched_end_reason why, int err, const char *msg, const mq_sched_req_stats *st)
{
    struct rec *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->done = 1;
    r->why = why;
    r->err = err;
    snprintf(r->msg, sizeof r->msg, "%s", msg);
    r->st = *st;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Timeouts are for a plain build; sanitizer builds run the model several times slower
 * (make test-tsan sets MQ_TEST_TIME_SCALE=10). */
static double time_scale(void)
{
    const char *s = getenv("MQ_TEST_TIME_SCALE");
    double v = s ? atof(s) : 1;
    return v >= 1 ? v : 1;
}

static int rec_wait(struct rec *r, double timeout_s)
{
    timeout_s *= time_scale();
    struct timespec dl;
    mq_deadline_in(&dl, CLOCK_REALTIME, (int64_t)timeout_s * 1000);
    pthread_mutex_lock(&r->mu);
    while (!r->done)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT)
            break;
    int d = r->done;
    pthread_mutex_unlock(&r->mu);
    CHECK(d, "request finished within %.0f s", timeout_s);
    return d;
}

static mq_sink sink_of(struct rec *r)
{
    return (mq_sink){ .ctx = r, .on_token = on_token, .on_done = on_done };
}

/* The options of every scheduler here: one thread per pool, 4096-token context. */
static mq_sched_opts test_opts(mq_prec_mode mode, int kv_blocks, int block_tokens, int chunk, mq_kv_full_policy pol)
{
    mq_sched_opts o;
    mq_sched_opts_default(&o);
    o.prefill_threads = 1;
    o.decode_threads = 1;
    o.mode = mode;
    o.kv_blocks = kv_blocks;
    o.block_tokens = block_tokens;
    o.chunk_tokens = chunk;
    o.context_limit = 4096;
    o.on_kv_full = pol;
    return o;
}

static mq_sched *make_sched_opts(const mq_sched_opts *o)
{
    mq_sched *s = NULL;
    char err[256] = "";
    int r = mq_sched_create(&s, g_model, g_tok, o, err, sizeof err);
    CHECK(r == 0, "sched create: %d %s", r, err);
    return s;
}

static mq_sched *make_sched(mq_prec_mode mode, int kv_blocks, int block_tokens, int chunk, mq_kv_full_policy pol)
{
    mq_sched_opts o = test_opts(mode, kv_blocks, block_tokens, chunk, pol);
    return make_sched_opts(&o);
}

static int blocks_for_test(int tokens, int block_tokens)
{
    return (tokens + block_tokens - 1) / block_tokens;
}

/* Deterministic "text" tokens: ids of ordinary words from the tokenizer. */
static int make_tokens(const char *text, int32_t **ids)
{
    size_t n = 0;
    char err[256];
    int r = mq_tok_encode(g_tok, text, strlen(text), 0, ids, &n, err, sizeof err);
    CHECK(r == 0, "encode: %s", err);
    return (int)n;
}

static int cat(int32_t *dst, const int32_t *a, int na, const int32_t *b, int nb)
{
    memcpy(dst, a, (size_t)na * sizeof *a);
    if (nb > 0)
        memcpy(dst + na, b, (size_t)nb * sizeof *b);
    return na + nb;
}

static const char *SYSTEM =
    "<|im_start|>system\nYou are a careful assistant that writes Python. You can call these tools: "
    "read_file(path) returns the text of a file; write_file(path, text) writes it; run(cmd) runs a "
    "shell command and returns its output; search(query) searches the code base. Always explain what "
    "you are about to do, then call exactly one tool, then wait for its result. Keep answers short and "
    "precise. Never invent file names; list the directory first when unsure.<|im_end|>\n";

static int submit_params(mq_sched *s, uint64_t sess, const int32_t *t, int n, const mq_gen_params *p, struct rec *r)
{
    mq_sink k = sink_of(r);
    char err[256] = "";
    int rc = mq_sched_submit(s, sess, t, n, p, &k, err, sizeof err);
    CHECK(rc == 0, "submit: %d %s", rc, err);
    return rc;
}

static int submit(mq_sched *s, uint64_t sess, const int32_t *t, int n, int max_tokens, struct rec *r)
{
    mq_gen_params p = { .max_tokens = max_tokens };
    return submit_params(s, sess, t, n, &p, r);
}

/* Tokens a session with prompt b can take from the index after a session read prompt a
 * (mixed mode, scheduler.h "Sharing"): whole chunks of their common head that a read
 * before its last token and b does not need for its own last token. */
/* One request on a new session of s: max_tokens greedy tokens of t[0..n) into r, waited
 * for (60 s). The session's id. */
static uint64_t run_one(mq_sched *s, const int32_t *t, int n, int max_tokens, struct rec *r)
{
    uint64_t id;
    mq_sched_session_open(s, TENANT, &id);
    rec_init(r);
    submit(s, id, t, n, max_tokens, r);
    rec_wait(r, 60);
    return id;
}

/* The reference run: run_one alone in a fresh scheduler (mode, 256 KV blocks of
 * block_tokens, chunk). 0, or -1 when the scheduler did not start (a failed CHECK). */
static int run_alone(mq_prec_mode mode, int block_tokens, int chunk, const int32_t *t, int n, int max_tokens,
                     struct rec *r)
{
    mq_sched *s = make_sched(mode, 256, block_tokens, chunk, MQ_KV_FULL_FAIL);
    if (!s)
        return -1;
    run_one(s, t, n, max_tokens, r);
    mq_sched_destroy(s);
    return 0;
}

static int shareable_head(const int32_t *a, int na, const int32_t *b, int nb, int chunk)
{
    int common = 0;
    while (common < na && common < nb && a[common] == b[common])
        common++;
    int lim = common < na - 1 ? common : na - 1;
    if (lim > nb - 1)
        lim = nb - 1;
    return lim / chunk * chunk;
}

static void test_prefix_shared_and_second_turn(void)
{
    const int BT = 16, CHUNK = 64;
    mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, 256, BT, CHUNK, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *sys = NULL, *ua = NULL, *ub = NULL, *u2 = NULL;
    int nsys = make_tokens(SYSTEM, &sys);
    int nua = make_tokens("<|im_start|>user\nList the files in src/.<|im_end|>\n<|im_start|>assistant\n", &ua);
    int nub = make_tokens("<|im_start|>user\nWhat does main.py do?<|im_end|>\n<|im_start|>assistant\n", &ub);
    int nu2 =
        make_tokens("<|im_end|>\n<|im_start|>user\nNow open the first one.<|im_end|>\n<|im_start|>assistant\n", &u2);
    CHECK(nsys > 3 * BT, "system prompt spans several blocks (%d tokens)", nsys);
    int32_t buf[1024];
    uint64_t a, b;
    CHECK(mq_sched_session_open(s, TENANT, &a) == 0 && mq_sched_session_open(s, TENANT, &b) == 0, "open");

    struct rec ra, rb, r2;
    rec_init(&ra);
    int n = cat(buf, sys, nsys, ua, nua);
    submit(s, a, buf, n, 8, &ra);
    rec_wait(&ra, 60);
    CHECK(ra.why == MQ_SCHED_END_LENGTH && ra.n == 8, "8 tokens then length: %s n=%d (%s)",
          mq_sched_end_reason_name(ra.why), ra.n, ra.msg);
    CHECK(ra.st.prompt_tokens == n && ra.st.cached_tokens == 0 && ra.st.prefilled_tokens == n,
          "first request: prompt %d cached %d prefilled %d", ra.st.prompt_tokens, ra.st.cached_tokens,
          ra.st.prefilled_tokens);
    CHECK(ra.st.ttft_ms > 0 && ra.st.generated_tokens == 8, "stats ttft %.1f gen %d", ra.st.ttft_ms,
          ra.st.generated_tokens);

    /* session b shares the system prompt: its whole chunks come from the index */
    rec_init(&rb);
    int32_t pa[1024];
    int na = cat(pa, sys, nsys, ua, nua);
    n = cat(buf, sys, nsys, ub, nub);
    submit(s, b, buf, n, 4, &rb);
    rec_wait(&rb, 60);
    int shared = shareable_head(pa, na, buf, n, CHUNK);
    CHECK(shared >= CHUNK && rb.st.cached_tokens == shared,
          "session b reuses the system prompt's whole chunks: cached %d, want %d", rb.st.cached_tokens, shared);
    CHECK(rb.st.prefilled_tokens == n - rb.st.cached_tokens, "b prefilled %d = %d - %d", rb.st.prefilled_tokens, n,
          rb.st.cached_tokens);

    /* second turn of a: only the new tokens (plus the last generated one) are prefilled */
    int hist = mq_sched_session_history(s, a, buf, 1024);
    CHECK(hist == nsys + nua + 8, "history holds prompt + generated: %d", hist);
    CHECK(memcmp(buf + nsys + nua, ra.ids, 8 * sizeof(int32_t)) == 0, "history ends with the generated ids");
    rec_init(&r2);
    submit(s, a, u2, nu2, 4, &r2);
    rec_wait(&r2, 60);
    CHECK(r2.st.prompt_tokens == nu2 && r2.st.cached_tokens == hist - 1 && r2.st.prefilled_tokens == nu2 + 1,
          "turn 2: prompt %d cached %d (want %d) prefilled %d (want %d)", r2.st.prompt_tokens, r2.st.cached_tokens,
          hist - 1, r2.st.prefilled_tokens, nu2 + 1);

    mq_sched_stats st;
    mq_sched_get_stats(s, &st);
    CHECK(st.kv_hits >= (uint64_t)(shared / BT) && st.kv_lookups >= st.kv_hits && st.kv_refused == 0,
          "index stats: %llu lookups, %llu hits (want >= %d), %llu refused", (unsigned long long)st.kv_lookups,
          (unsigned long long)st.kv_hits, shared / BT, (unsigned long long)st.kv_refused);
    CHECK(st.requests_done == 3 && st.cached_tokens > 0 && st.cache_hit_ratio > 0 && st.kv_used > 0,
          "global stats: done %llu cached %llu ratio %.2f used %d", (unsigned long long)st.requests_done,
          (unsigned long long)st.cached_tokens, st.cache_hit_ratio, st.kv_used);
    CHECK(mq_sched_session_close(s, a) == 0 && mq_sched_session_close(s, b) == 0, "close");
    mq_sched_get_stats(s, &st);
    CHECK(st.kv_used == 0 && st.kv_cached > 0, "after close: used %d cached %d", st.kv_used, st.kv_cached);
    mq_sched_destroy(s);
    free(sys);
    free(ua);
    free(ub);
    free(u2);
}

/* Two prompts with the same long head arrive together: the head's full blocks are read
 * once between the two requests (each chunk by whichever session gets to it first), and
 * both outputs equal those of each prompt alone (BF16 mode: chunk boundaries change no
 * number). */
static void test_concurrent_prompts_read_shared_head_once(void)
{
    const int BT = 16, CHUNK = 32, GEN = 6;
    int32_t *sys = NULL, *ua = NULL, *ub = NULL;
    int nsys = make_tokens(SYSTEM, &sys);
    int nua = make_tokens("<|im_start|>user\nList the files in src/.<|im_end|>\n<|im_start|>assistant\n", &ua);
    int nub = make_tokens("<|im_start|>user\nWhat does main.py do?<|im_end|>\n<|im_start|>assistant\n", &ub);
    int32_t pa[1024], pb[1024];
    int na = cat(pa, sys, nsys, ua, nua), nb = cat(pb, sys, nsys, ub, nub);
    int common = 0;
    while (common < na && common < nb && pa[common] == pb[common])
        common++;
    const int shared = shareable_head(pa, na, pb, nb, CHUNK);
    CHECK(shared >= 3 * CHUNK, "the common head spans several chunks (%d tokens)", shared);

    struct rec solo[2], both[2];
    const int32_t *p[2] = { pa, pb };
    const int n[2] = { na, nb };
    for (int i = 0; i < 2; i++)
        if (run_alone(MQ_PREC_MODE_BF16, BT, CHUNK, p[i], n[i], GEN, &solo[i]))
            return;
    mq_sched *s = make_sched(MQ_PREC_MODE_BF16, 256, BT, CHUNK, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    uint64_t ids[2];
    for (int i = 0; i < 2; i++) {
        mq_sched_session_open(s, TENANT, &ids[i]);
        rec_init(&both[i]);
    }
    for (int i = 0; i < 2; i++)
        submit(s, ids[i], p[i], n[i], GEN, &both[i]);
    for (int i = 0; i < 2; i++)
        rec_wait(&both[i], 60);
    int prefilled = both[0].st.prefilled_tokens + both[1].st.prefilled_tokens;
    int cached = both[0].st.cached_tokens + both[1].st.cached_tokens;
    CHECK(prefilled == na + nb - shared && cached == shared,
          "the shared head is read once: prefilled %d + %d (want %d in all), cached %d + %d (want %d)",
          both[0].st.prefilled_tokens, both[1].st.prefilled_tokens, na + nb - shared, both[0].st.cached_tokens,
          both[1].st.cached_tokens, shared);
    for (int i = 0; i < 2; i++) {
        CHECK(both[i].n == GEN && solo[i].n == GEN, "%d tokens each (%d, %d)", GEN, both[i].n, solo[i].n);
        CHECK(memcmp(both[i].ids, solo[i].ids, GEN * sizeof(int32_t)) == 0,
              "prompt %d: output with a shared read differs from alone: \"%s\" vs \"%s\"", i, both[i].text,
              solo[i].text);
    }
    mq_sched_destroy(s);
    free(sys);
    free(ua);
    free(ub);
}

/* Greedy outputs of sessions decoding together equal those of each alone (BF16 mode, so
 * that chunking and batching change nothing but the order of independent work). */
static void test_batched_equals_solo(void)
{
    mq_sched *s = make_sched(MQ_PREC_MODE_BF16, 256, 16, 32, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    const char *prompts[3] = { "def fibonacci(n):\n    ", "The old lighthouse keeper looked at the sea and",
                               "import os\nimport sys\n\nclass Config:\n    def __init__(self" };
    int32_t *t[3];
    int nt[3];
    struct rec solo[3], both[3];
    for (int i = 0; i < 3; i++)
        nt[i] = make_tokens(prompts[i], &t[i]);
    for (int i = 0; i < 3; i++)
        mq_sched_session_close(s, run_one(s, t[i], nt[i], 24, &solo[i]));
    mq_sched_destroy(s);
    s = make_sched(MQ_PREC_MODE_BF16, 256, 16, 32, MQ_KV_FULL_FAIL); /* fresh: no cached prefixes */
    if (!s)
        return;
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        mq_sched_session_open(s, TENANT, &ids[i]);
        rec_init(&both[i]);
        submit(s, ids[i], t[i], nt[i], 24, &both[i]);
    }
    for (int i = 0; i < 3; i++)
        rec_wait(&both[i], 120);
    for (int i = 0; i < 3; i++) {
        CHECK(both[i].n == 24 && solo[i].n == 24, "24 tokens each (%d, %d)", both[i].n, solo[i].n);
        int same = memcmp(both[i].ids, solo[i].ids, 24 * sizeof(int32_t)) == 0;
        CHECK(same, "session %d: batched output differs from solo: \"%s\" vs \"%s\"", i, both[i].text, solo[i].text);
        CHECK(strcmp(both[i].text, solo[i].text) == 0, "streamed text equal");
        free(t[i]);
    }
    mq_sched_destroy(s);
}

/* Outputs do not depend on who else is running (issue 13 #5), in every mode: ten
 * sessions sending one prompt at once (they read each other's chunks from the index as
 * they are published) and three sending other prompts, two of which share its system
 * prompt, each get exactly the greedy tokens their prompt gets alone; the thirteen decode
 * together, past the kernels' 8-row GEMV path. Two chunk sizes: mqd's default (256: the
 * prompts fit in one chunk, whose blocks used to be taken in part) and 48 (whole chunks
 * are shared). */
static void test_concurrent_equals_solo_every_mode(void)
{
    enum { SAME = 10, N = SAME + 3, GEN = 24 };
    const int BT = 16;
    int32_t *sys = NULL, *u[3] = { NULL }, *lone = NULL;
    int nsys = make_tokens(SYSTEM, &sys), nu[3];
    nu[0] = make_tokens("<|im_start|>user\nWrite a function that reverses a list.<|im_end|>\n<|im_start|>assistant\n",
                        &u[0]);
    nu[1] = make_tokens("<|im_start|>user\nList the files in src/.<|im_end|>\n<|im_start|>assistant\n", &u[1]);
    nu[2] = make_tokens("<|im_start|>user\nWhat does main.py do?<|im_end|>\n<|im_start|>assistant\n", &u[2]);
    int nlone = make_tokens("The old lighthouse keeper looked at the sea and", &lone);
    static int32_t prompt[4][1024];
    int np[4];
    for (int i = 0; i < 3; i++)
        np[i] = cat(prompt[i], sys, nsys, u[i], nu[i]);
    np[3] = cat(prompt[3], lone, nlone, NULL, 0);
    int which[N]; /* the prompt of each concurrent session */
    for (int i = 0; i < N; i++)
        which[i] = i < SAME ? 0 : i - SAME + 1;
    static const mq_prec_mode modes[3] = { MQ_PREC_MODE_MIXED, MQ_PREC_MODE_BF16, MQ_PREC_MODE_FP4 };
    static const int chunks[2] = { 256, 48 };
    for (int ci = 0; ci < 2; ci++)
        for (int mi = 0; mi < 3; mi++) {
            const int chunk = chunks[ci];
            struct rec solo[4];
            for (int p = 0; p < 4; p++)
                if (run_alone(modes[mi], BT, chunk, prompt[p], np[p], GEN, &solo[p]))
                    return;
            mq_sched *s = make_sched(modes[mi], 256, BT, chunk, MQ_KV_FULL_FAIL);
            if (!s)
                return;
            static struct rec both[N];
            uint64_t ids[N];
            for (int i = 0; i < N; i++) {
                mq_sched_session_open(s, TENANT, &ids[i]);
                rec_init(&both[i]);
            }
            for (int i = 0; i < N; i++)
                submit(s, ids[i], prompt[which[i]], np[which[i]], GEN, &both[i]);
            int equal = 0, cached = 0;
            for (int i = 0; i < N; i++) {
                rec_wait(&both[i], 120);
                const struct rec *want = &solo[which[i]];
                int same = both[i].n == GEN && want->n == GEN && !memcmp(both[i].ids, want->ids, GEN * sizeof(int32_t));
                CHECK(same, "%s, chunk %d: session %d (prompt %d) differs from its prompt alone: \"%s\" vs \"%s\"",
                      mq_prec_mode_name(modes[mi]), chunk, i, which[i], both[i].text, want->text);
                equal += same;
                cached += both[i].st.cached_tokens;
            }
            printf("    %s, chunk %3d: %d of %d concurrent sessions equal to their prompt alone (%d tokens read "
                   "from the index)\n",
                   mq_prec_mode_name(modes[mi]), chunk, equal, N, cached);
            CHECK(chunk > np[0] || cached > 0, "%s: the concurrent sessions shared no chunk: no lookup was tested",
                  mq_prec_mode_name(modes[mi]));
            mq_sched_destroy(s);
        }
    free(sys);
    free(lone);
    for (int i = 0; i < 3; i++)
        free(u[i]);
}

/* Stateless reuse (scheduler.h "Sharing"): in bf16 a session takes every whole block of
 * its head that another session read as a prompt, whatever the chunk grid (prompt rows
 * are summed alike at any chunk length), and still answers as it does alone; under NVFP4
 * (mixed) only whole chunks are shared. */
static void test_bf16_shares_blocks_inside_a_chunk(void)
{
    int32_t *sys = NULL, *u[2] = { NULL, NULL };
    int nsys = make_tokens(SYSTEM, &sys);
    int nu0 = make_tokens("<|im_start|>user\nWrite a function that reverses a list.<|im_end|>\n<|im_start|>assistant\n",
                          &u[0]);
    int nu1 = make_tokens("<|im_start|>user\nList the files in src/.<|im_end|>\n<|im_start|>assistant\n", &u[1]);
    static int32_t a[1024], b[1024];
    int na = cat(a, sys, nsys, u[0], nu0), nb = cat(b, sys, nsys, u[1], nu1);
    static const mq_prec_mode modes[2] = { MQ_PREC_MODE_BF16, MQ_PREC_MODE_MIXED };
    for (int mi = 0; mi < 2; mi++) {
        const int chunk = 256, bt = 16, unit = modes[mi] == MQ_PREC_MODE_BF16 ? bt : chunk;
        struct rec alone, first, second;
        if (run_alone(modes[mi], bt, chunk, b, nb, 16, &alone))
            break;
        mq_sched *s = make_sched(modes[mi], 256, bt, chunk, MQ_KV_FULL_FAIL);
        if (!s)
            break;
        uint64_t ia, ib;
        mq_sched_session_open(s, TENANT, &ia);
        mq_sched_session_open(s, TENANT, &ib);
        rec_init(&first);
        rec_init(&second);
        submit(s, ia, a, na, 8, &first);
        rec_wait(&first, 60);
        submit(s, ib, b, nb, 16, &second);
        rec_wait(&second, 60);
        const int want = shareable_head(a, na, b, nb, unit);
        printf("    %s: %d prompt tokens, %d of them read from the index (chunk %d, blocks of %d)\n",
               mq_prec_mode_name(modes[mi]), nb, second.st.cached_tokens, chunk, bt);
        CHECK(second.st.cached_tokens == want, "%s: %d cached, want %d", mq_prec_mode_name(modes[mi]),
              second.st.cached_tokens, want);
        CHECK(modes[mi] != MQ_PREC_MODE_BF16 || (want > 0 && want < chunk), "bf16: %d is not inside the first chunk",
              want);
        CHECK(second.n == alone.n && !memcmp(second.ids, alone.ids, (size_t)alone.n * sizeof(int32_t)),
              "%s: the session that read the index answers \"%s\", alone \"%s\"", mq_prec_mode_name(modes[mi]),
              second.text, alone.text);
        mq_sched_destroy(s);
    }
    free(sys);
    free(u[0]);
    free(u[1]);
}

struct tenants {
    const uint64_t *sid;
    uint32_t *tenant;
};

static void note_tenant(void *ctx, const mq_session_info *i)
{
    struct tenants *t = ctx;
    for (int k = 0; k < 3; k++)
        if (t->sid[k] == i->id)
            t->tenant[k] = i->tenant;
}

/* The prefix cache is per tenant unless shared by configuration (issue 13 #6): after
 * tenant 1000 sent a prompt, tenant 1001's exact guess reads nothing from the index
 * (by default), tenant 1000's second session reads its whole chunks; with
 * share_prefix_cache both do. The answers are the same either way. */
static void test_prefix_cache_per_tenant(void)
{
    const int BT = 16, CHUNK = 32;
    int32_t *sys = NULL, *sec = NULL, p[1024];
    int nsys = make_tokens(SYSTEM, &sys);
    int nsec = make_tokens("<|im_start|>user\nMy deploy key is mq-7f3a9c21e5. Keep it, do not repeat it.<|im_end|>\n"
                           "<|im_start|>assistant\n",
                           &sec);
    const int n = cat(p, sys, nsys, sec, nsec), chunks = (n - 1) / CHUNK * CHUNK;
    for (int share = 0; share < 2; share++) {
        mq_sched_opts o = test_opts(MQ_PREC_MODE_MIXED, 256, BT, CHUNK, MQ_KV_FULL_FAIL);
        o.share_prefix_cache = share;
        mq_sched *s = make_sched_opts(&o);
        if (!s)
            return;
        uint64_t a1, b, a2;
        CHECK(mq_sched_session_open(s, 1000, &a1) == 0 && mq_sched_session_open(s, 1001, &b) == 0 &&
                  mq_sched_session_open(s, 1000, &a2) == 0,
              "open");
        struct rec ra1, rb, ra2;
        rec_init(&ra1);
        rec_init(&rb);
        rec_init(&ra2);
        submit(s, a1, p, n, 6, &ra1);
        rec_wait(&ra1, 60);
        submit(s, b, p, n, 6, &rb);
        rec_wait(&rb, 60);
        submit(s, a2, p, n, 6, &ra2);
        rec_wait(&ra2, 60);
        CHECK(rb.st.cached_tokens == (share ? chunks : 0),
              "share %d: another tenant's exact guess reads %d tokens from the index (want %d)", share,
              rb.st.cached_tokens, share ? chunks : 0);
        CHECK(ra2.st.cached_tokens == chunks && chunks > 0, "share %d: the same tenant reads %d tokens (want %d)",
              share, ra2.st.cached_tokens, chunks);
        CHECK(!memcmp(ra1.ids, rb.ids, sizeof ra1.ids) && !memcmp(ra1.ids, ra2.ids, sizeof ra1.ids) && ra1.n == 6,
              "share %d: the same answer for all three (\"%s\", \"%s\", \"%s\")", share, ra1.text, rb.text, ra2.text);
        uint32_t tenant_of[3] = { 0 };
        uint64_t sid[3] = { a1, b, a2 };
        struct tenants t = { sid, tenant_of };
        mq_sched_sessions(s, note_tenant, &t);
        CHECK(tenant_of[0] == 1000 && tenant_of[1] == 1001 && tenant_of[2] == 1000,
              "sessions report their tenants: %u %u %u", tenant_of[0], tenant_of[1], tenant_of[2]);
        mq_sched_destroy(s);
    }
    free(sys);
    free(sec);
}

static void test_cancel_and_errors(void)
{
    mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, 256, 16, 64, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *t = NULL;
    int n = make_tokens("Once upon a time, in a small village by the river,", &t);
    uint64_t a;
    mq_sched_session_open(s, TENANT, &a);
    struct rec r;
    rec_init(&r);
    r.s = s;
    r.sess = a;
    r.cancel_after = 5; /* the sink cancels from the decode thread */
    submit(s, a, t, n, 500, &r);
    rec_wait(&r, 60);
    CHECK(r.why == MQ_SCHED_END_CANCEL, "cancelled: %s", mq_sched_end_reason_name(r.why));
    CHECK(r.n >= 5 && r.n <= 7, "cancel takes effect at the next step: %d tokens", r.n);
    CHECK(mq_sched_session_history(s, a, NULL, 0) == n + r.n, "history keeps the generated tokens");

    char err[256];
    mq_sink k = sink_of(&r);
    CHECK(mq_sched_submit(s, 9999, t, n, NULL, &k, err, sizeof err) == -ENOENT, "unknown session");
    int32_t bad = 999999;
    CHECK(mq_sched_submit(s, a, &bad, 1, NULL, &k, err, sizeof err) == -EINVAL && strstr(err, "vocabulary"),
          "token outside the vocabulary: %s", err);
    int32_t *big = calloc(5000, sizeof *big);
    CHECK(mq_sched_submit(s, a, big, 5000, NULL, &k, err, sizeof err) == -E2BIG && strstr(err, "context"),
          "over the context limit: %s", err);
    free(big);
    CHECK(mq_sched_cancel(s, 4242, MQ_SCHED_END_CANCEL) == -ENOENT, "cancel unknown");

    /* busy session */
    struct rec r2, r3;
    rec_init(&r2);
    rec_init(&r3);
    submit(s, a, t, 4, 40, &r2);
    mq_sink k3 = sink_of(&r3);
    CHECK(mq_sched_submit(s, a, t, 4, NULL, &k3, err, sizeof err) == -EBUSY, "second request on a busy session");
    CHECK(mq_sched_cancel(s, a, MQ_SCHED_END_CLIENT_GONE) == 0, "client gone");
    rec_wait(&r2, 60);
    CHECK(r2.why == MQ_SCHED_END_CLIENT_GONE || r2.why == MQ_SCHED_END_LENGTH, "ends: %s",
          mq_sched_end_reason_name(r2.why));
    mq_sched_destroy(s);
    free(t);
}

/* KV store of 12 blocks x 16 tokens: a running request holds its prompt's blocks; a
 * second one whose prompt does not fit beside them fails (fail policy) or waits and then
 * completes (wait policy); a prompt over the store is refused at submit; max_tokens past
 * the store ends generation when the session fills it. */
static void test_kv_full(void)
{
    int32_t *t = NULL;
    int n = make_tokens(SYSTEM, &t); /* ~100 tokens */
    if (n > 120)
        n = 120;
    for (int pol = 0; pol < 2; pol++) {
        mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, 12, 16, 64, pol ? MQ_KV_FULL_FAIL : MQ_KV_FULL_WAIT);
        if (!s)
            return;
        uint64_t a, b;
        mq_sched_session_open(s, TENANT, &a);
        mq_sched_session_open(s, TENANT, &b);
        struct rec ra, rb;
        rec_init(&ra);
        rec_init(&rb);
        /* a needs ceil((n+40)/16) blocks; b (different tokens) as many: both do not fit */
        submit(s, a, t, n, 40, &ra);
        int32_t *t2 = malloc((size_t)n * sizeof *t2);
        for (int i = 0; i < n; i++)
            t2[i] = t[n - 1 - i];
        submit(s, b, t2, n, 40, &rb);
        rec_wait(&ra, 60);
        rec_wait(&rb, 60);
        CHECK(ra.why == MQ_SCHED_END_LENGTH && ra.n == 40, "a completes (%s, %d)", mq_sched_end_reason_name(ra.why),
              ra.n);
        if (pol) {
            CHECK(rb.why == MQ_SCHED_END_ERROR && rb.err == -ENOSPC && strstr(rb.msg, "KV store full"),
                  "fail policy: b gets a clear error: %s %d %s", mq_sched_end_reason_name(rb.why), rb.err, rb.msg);
            CHECK(mq_sched_session_history(s, b, NULL, 0) == 0, "failed request left no history");
        } else {
            CHECK(rb.why == MQ_SCHED_END_LENGTH && rb.n == 40, "wait policy: b completes after a (%s %s)",
                  mq_sched_end_reason_name(rb.why), rb.msg);
            /* b could only start when a's blocks were reclaimed from the idle session */
            CHECK(rb.t[0] > ra.t[ra.n - 1], "b's first token after a's last");
        }
        /* a prompt over the whole store: refused at submit */
        char err[256];
        mq_sink k = sink_of(&rb);
        uint64_t c;
        mq_sched_session_open(s, TENANT, &c);
        int32_t *big = calloc(12 * 16, sizeof *big);
        CHECK(mq_sched_submit(s, c, big, 12 * 16, NULL, &k, err, sizeof err) == -ENOSPC && strstr(err, "KV blocks"),
              "too big for the store: %s", err);
        free(big);
        /* max_tokens past the store: generation stops when the session fills it */
        struct rec rc;
        rec_init(&rc);
        mq_gen_params p = { .max_tokens = 1000 };
        mq_sink kc = sink_of(&rc);
        CHECK(mq_sched_submit(s, c, t, n, &p, &kc, err, sizeof err) == 0, "max_tokens past the store: %s", err);
        rec_wait(&rc, 60);
        CHECK(rc.why == MQ_SCHED_END_LENGTH && n + rc.n == 12 * 16, "ends at the store's size: %s, %d + %d tokens",
              mq_sched_end_reason_name(rc.why), n, rc.n);
        free(t2);
        mq_sched_destroy(s);
    }
    free(t);
}

/* Waits until r has streamed at least n tokens (or ended). */
static void wait_tokens(struct rec *r, int n, double timeout_s)
{
    timeout_s *= time_scale();
    double t0 = mq_now_s();
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int k = r->n, d = r->done;
        pthread_mutex_unlock(&r->mu);
        if (k >= n || d || mq_now_s() - t0 > timeout_s)
            break;
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
}

struct reserved_sum {
    int blocks, sessions;
};

static void add_reserved(void *ctx, const mq_session_info *i)
{
    struct reserved_sum *r = ctx;
    r->blocks += i->reserved_blocks;
    r->sessions++;
}

/* One request cannot lock the KV store (issue 13 #4). Two requests ask for far more
 * tokens than the store holds (max_tokens 1000000, store 32 blocks x 16); while they
 * decode, twelve small requests arrive under the fail policy (a request the store cannot
 * take fails at once): every one is admitted and completes. Reservations stay small
 * (a block ahead at most) and are visible in the stats and per session. When the two
 * have filled the store, the one holding the most blocks is ended with a clear error
 * and the other runs on to the store's size. */
static void test_huge_requests_do_not_lock_the_store(void)
{
    enum { SMALL = 12, KV = 32, BT = 16 };
    mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, KV, BT, 64, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *h[2], *t[SMALL];
    int nh[2], nt[SMALL];
    nh[0] = make_tokens("Once upon a time, in a small village by the river,", &h[0]);
    nh[1] = make_tokens("import os\nimport sys\n\ndef main():\n", &h[1]);
    uint64_t hs[2], ts[SMALL];
    struct rec rh[2];
    static struct rec rt[SMALL];
    mq_gen_params huge = { .max_tokens = 1000000 };
    for (int i = 0; i < 2; i++) {
        mq_sched_session_open(s, TENANT, &hs[i]);
        rec_init(&rh[i]);
        mq_sink k = sink_of(&rh[i]);
        char err[256] = "";
        CHECK(mq_sched_submit(s, hs[i], h[i], nh[i], &huge, &k, err, sizeof err) == 0, "huge %d: %s", i, err);
    }
    for (int i = 0; i < 2; i++)
        wait_tokens(&rh[i], 4, 60);
    mq_sched_stats st;
    mq_sched_get_stats(s, &st);
    struct reserved_sum rs = { 0, 0 };
    mq_sched_sessions(s, add_reserved, &rs);
    CHECK(st.kv_reserved <= 2 && st.kv_reserved == rs.blocks && st.kv_available >= KV - 8,
          "two huge requests decoding reserve %d blocks (sessions say %d), %d available of %d", st.kv_reserved,
          rs.blocks, st.kv_available, KV);
    for (int i = 0; i < SMALL; i++) {
        char text[128];
        snprintf(text, sizeof text, "Question %d: what is %d plus %d?", i, i * 7, i + 3);
        nt[i] = make_tokens(text, &t[i]);
        mq_sched_session_open(s, 2000 + (uint32_t)i, &ts[i]);
        rec_init(&rt[i]);
        submit(s, ts[i], t[i], nt[i], 8, &rt[i]);
    }
    int ok = 0;
    for (int i = 0; i < SMALL; i++) {
        rec_wait(&rt[i], 60);
        ok += rt[i].why == MQ_SCHED_END_LENGTH && rt[i].n == 8;
        CHECK(rt[i].why == MQ_SCHED_END_LENGTH && rt[i].n == 8, "small %d: %s after %d tokens (%s)", i,
              mq_sched_end_reason_name(rt[i].why), rt[i].n, rt[i].msg);
    }
    printf("    %d of %d small requests completed beside two requests of max_tokens 1000000\n", ok, SMALL);
    for (int i = 0; i < 2; i++)
        rec_wait(&rh[i], 120);
    int yielded = -1, ran = -1;
    for (int i = 0; i < 2; i++) {
        if (rh[i].why == MQ_SCHED_END_ERROR && rh[i].err == -ENOSPC && strstr(rh[i].msg, "to make room"))
            yielded = i;
        else if (rh[i].why == MQ_SCHED_END_LENGTH && nh[i] + rh[i].n == KV * BT)
            ran = i;
    }
    CHECK(yielded >= 0 && ran >= 0 && yielded != ran,
          "one gives way (%s, %d tokens: %s), the other fills the store (%s, %d + %d tokens of %d)",
          mq_sched_end_reason_name(rh[0].why), rh[0].n, rh[0].msg, mq_sched_end_reason_name(rh[1].why), nh[1], rh[1].n,
          KV * BT);
    if (yielded >= 0)
        CHECK(mq_sched_session_history(s, hs[yielded], NULL, 0) == nh[yielded] + rh[yielded].n,
              "the session that gave way keeps what it generated");
    mq_sched_get_stats(s, &st);
    CHECK(st.requests_yielded == 1 && st.kv_reserved == 0, "stats: %llu yielded, %d reserved",
          (unsigned long long)st.requests_yielded, st.kv_reserved);
    mq_sched_destroy(s);
    for (int i = 0; i < 2; i++)
        free(h[i]);
    for (int i = 0; i < SMALL; i++)
        free(t[i]);
}

struct tenant_row {
    uint32_t tenant;
    mq_tenant_info info;
};

static void note_tenant_info(void *ctx, const mq_tenant_info *t)
{
    struct tenant_row *r = ctx;
    if (t->tenant == r->tenant)
        r->info = *t;
}

/* Per-tenant limits (issue 13: one local user cannot starve the others), tenant 1000
 * against tenant 1001, with 3 sessions, 1 queued request and 16 KV blocks per tenant in a
 * store of 64: tenant 1000's fourth session is refused (-EDQUOT), 1001's are not. A
 * request of 1000's that does not fit beside its own running one waits for it; another
 * submit of 1000's is then refused (-EAGAIN, its queue share); 1001's request queued
 * behind 1000's waiting one passes it and completes. 1000's running request grows into
 * the tenant's share and is ended with a message naming the share (the store itself has
 * room); then 1000's waiting request runs. */
static void test_tenant_limits(void)
{
    const int BT = 16, SHARE = 16;
    mq_sched_opts o = test_opts(MQ_PREC_MODE_MIXED, 64, BT, 64, MQ_KV_FULL_WAIT);
    o.tenant_max_sessions = 3;
    o.tenant_max_queued = 1;
    o.tenant_kv_blocks = SHARE;
    mq_sched *s = make_sched_opts(&o);
    if (!s)
        return;
    uint64_t a[3], extra, x;
    for (int i = 0; i < 3; i++)
        CHECK(mq_sched_session_open(s, 1000, &a[i]) == 0, "tenant 1000 session %d", i);
    CHECK(mq_sched_session_open(s, 1000, &extra) == -EDQUOT, "tenant 1000's fourth session refused");
    CHECK(mq_sched_session_open(s, 1001, &x) == 0, "tenant 1001 opens");
    int32_t *sys = NULL, pa[1024], pb[1024];
    int nsys = make_tokens(SYSTEM, &sys);
    const int na = cat(pa, sys, nsys, sys, nsys); /* two thirds of the share */
    for (int i = 0; i < nsys; i++)                /* no block in common with pa */
        pb[i] = sys[nsys - 1 - i];
    const int nb = nsys;
    CHECK(blocks_for_test(na + 1, BT) + blocks_for_test(nb + 1, BT) > SHARE && blocks_for_test(na + 1, BT) < SHARE,
          "the prompts fit the share alone, not together (%d + %d tokens)", na, nb);
    struct rec ra, rb, rc, rx;
    rec_init(&ra);
    rec_init(&rb);
    rec_init(&rc);
    rec_init(&rx);
    mq_gen_params huge = { .max_tokens = 1000000 };
    mq_sink ka = sink_of(&ra);
    char err[256] = "";
    CHECK(mq_sched_submit(s, a[0], pa, na, &huge, &ka, err, sizeof err) == 0, "a: %s", err);
    wait_tokens(&ra, 2, 60);
    submit(s, a[1], pb, nb, 8, &rb); /* waits for a: the tenant's share */
    mq_sink kc = sink_of(&rc);
    CHECK(mq_sched_submit(s, a[2], pb, 4, NULL, &kc, err, sizeof err) == -EAGAIN && strstr(err, "tenant 1000"),
          "tenant 1000's second waiting request refused: %s", err);
    struct tenant_row tr = { .tenant = 1000 };
    mq_sched_tenants(s, note_tenant_info, &tr);
    CHECK(tr.info.sessions == 3 && tr.info.queued == 1 && tr.info.running == 1 &&
              tr.info.kv_blocks + tr.info.kv_reserved <= SHARE,
          "tenant 1000: %d sessions, %d queued, %d running, %d + %d blocks", tr.info.sessions, tr.info.queued,
          tr.info.running, tr.info.kv_blocks, tr.info.kv_reserved);
    submit(s, x, pb, nb, 8, &rx); /* queued behind 1000's waiting request */
    rec_wait(&rx, 60);
    CHECK(rx.why == MQ_SCHED_END_LENGTH && rx.n == 8, "tenant 1001 completes: %s %d (%s)",
          mq_sched_end_reason_name(rx.why), rx.n, rx.msg);
    rec_wait(&ra, 120);
    rec_wait(&rb, 60);
    CHECK(rx.t[0] < rb.t[0], "tenant 1001's request passed tenant 1000's waiting one");
    CHECK(ra.why == MQ_SCHED_END_ERROR && ra.err == -ENOSPC && strstr(ra.msg, "tenant 1000") &&
              na + ra.n <= SHARE * BT + 1,
          "a grew into its tenant's share and gave way: %s after %d + %d tokens: %s", mq_sched_end_reason_name(ra.why),
          na, ra.n, ra.msg);
    CHECK(rb.why == MQ_SCHED_END_LENGTH && rb.n == 8, "then tenant 1000's waiting request runs: %s %d (%s)",
          mq_sched_end_reason_name(rb.why), rb.n, rb.msg);
    mq_sched_stats st;
    mq_sched_get_stats(s, &st);
    CHECK(st.kv_blocks - st.kv_available > 0 && st.requests_yielded == 1, "stats: %d of %d available, %llu yielded",
          st.kv_available, st.kv_blocks, (unsigned long long)st.requests_yielded);
    mq_sched_destroy(s);
    free(sys);
}

/* A long prompt is read in chunks while another session keeps decoding. */
static void test_chunked_prefill_interleaves(void)
{
    mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, 512, 16, 32, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *t = NULL;
    int n = make_tokens("def add(a, b):\n    return a + b\n", &t);
    uint64_t a, b;
    mq_sched_session_open(s, TENANT, &a);
    mq_sched_session_open(s, TENANT, &b);
    struct rec ra, rb;
    rec_init(&ra);
    rec_init(&rb);
    submit(s, a, t, n, 120, &ra);
    /* wait until a decodes */
    for (int i = 0; i < 2000; i++) {
        pthread_mutex_lock(&ra.mu);
        int k = ra.n;
        pthread_mutex_unlock(&ra.mu);
        if (k >= 2)
            break;
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    int32_t *longp = NULL;
    char *text = malloc(20000);
    text[0] = 0;
    for (int i = 0; i < 40; i++)
        strcat(text, "The quick brown fox jumps over the lazy dog while the cat sleeps near the fire. ");
    int nl = make_tokens(text, &longp);
    double t_sub = mq_now_s();
    submit(s, b, longp, nl, 2, &rb);
    rec_wait(&rb, 120);
    rec_wait(&ra, 120);
    double t_b_first = rb.t[0];
    int during = 0;
    for (int i = 0; i < ra.n && i < MAXTOK; i++)
        during += ra.t[i] > t_sub && ra.t[i] < t_b_first;
    CHECK(nl > 20 * 32, "long prompt: %d tokens = %d chunks", nl, nl / 32);
    CHECK(rb.st.prefilled_tokens == nl, "b prefilled all %d", rb.st.prefilled_tokens);
    CHECK(during >= 3, "a generated %d tokens while b's prompt was read", during);
    mq_sched_destroy(s);
    free(t);
    free(longp);
    free(text);
}

static void test_stops_and_drain(void)
{
    mq_sched *s = make_sched(MQ_PREC_MODE_MIXED, 256, 16, 64, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *t = NULL;
    int n = make_tokens("def main():\n    print(", &t);
    struct rec r0;
    uint64_t a = run_one(s, t, n, 12, &r0);
    mq_sched_session_close(s, a);
    /* stop at the 4th greedy token (first occurrence) */
    int k = 3;
    for (int i = 0; i < 3; i++)
        if (r0.ids[i] == r0.ids[3])
            k = i;
    mq_sched_session_open(s, TENANT, &a);
    struct rec r1;
    rec_init(&r1);
    mq_gen_params p = { .max_tokens = 12, .n_stop_ids = 1, .stop_ids = { r0.ids[k] } };
    mq_sink sk = sink_of(&r1);
    char err[256];
    CHECK(mq_sched_submit(s, a, t, n, &p, &sk, err, sizeof err) == 0, "submit");
    rec_wait(&r1, 60);
    CHECK(r1.why == MQ_SCHED_END_STOP_TOKEN && r1.n == k + 1, "stop token after %d tokens: %s %d", k + 1,
          mq_sched_end_reason_name(r1.why), r1.n);
    mq_sched_session_close(s, a);

    /* stop string: a piece of the text the greedy run produced */
    if (r0.n_text >= 4) {
        char stop[8] = { 0 };
        size_t off = r0.n_text / 2;
        memcpy(stop, r0.text + off, 2);
        mq_sched_session_open(s, TENANT, &a);
        struct rec r2;
        rec_init(&r2);
        mq_gen_params p2 = { .max_tokens = 12, .n_stop_strs = 1, .stop_strs = { stop } };
        mq_sink s2 = sink_of(&r2);
        CHECK(mq_sched_submit(s, a, t, n, &p2, &s2, err, sizeof err) == 0, "submit");
        rec_wait(&r2, 60);
        /* the text before the stop string is released, the stop string is not */
        size_t before = (size_t)(strstr(r0.text, stop) - r0.text);
        CHECK(r2.why == MQ_SCHED_END_STOP_STRING && r2.n_text == before && strncmp(r2.text, r0.text, before) == 0,
              "stop string \"%s\": %s \"%s\" (greedy text \"%s\")", stop, mq_sched_end_reason_name(r2.why), r2.text,
              r0.text);
        mq_sched_session_close(s, a);
    }

    /* sampling: the same seed draws the same tokens, another seed other ones */
    struct rec rs[3];
    uint64_t seeds[3] = { 7, 7, 8 };
    for (int i = 0; i < 3; i++) {
        mq_sched_session_open(s, TENANT, &a);
        rec_init(&rs[i]);
        mq_gen_params ps = { .max_tokens = 16, .temperature = 1.0f, .top_p = 0.95f, .seed = seeds[i] };
        mq_sink ss = sink_of(&rs[i]);
        CHECK(mq_sched_submit(s, a, t, n, &ps, &ss, err, sizeof err) == 0, "submit sampled: %s", err);
        rec_wait(&rs[i], 60);
        mq_sched_session_close(s, a);
    }
    CHECK(memcmp(rs[0].ids, rs[1].ids, 16 * sizeof(int32_t)) == 0, "same seed, same tokens");
    CHECK(memcmp(rs[0].ids, rs[2].ids, 16 * sizeof(int32_t)) != 0, "another seed, other tokens");
    mq_gen_params bad = { .max_tokens = 4, .temperature = 1.0f, .top_p = -1.0f, .min_p = NAN };
    mq_sink sb = sink_of(&rs[0]);
    mq_sched_session_open(s, TENANT, &a);
    CHECK(mq_sched_submit(s, a, t, n, &bad, &sb, err, sizeof err) == -EINVAL, "bad sampling parameters refused: %s",
          err);

    /* drain: a running request is cancelled at the timeout, new ones are refused */
    mq_sched_session_open(s, TENANT, &a);
    struct rec r3;
    rec_init(&r3);
    submit(s, a, t, n, 1000, &r3);
    int c = mq_sched_drain(s, 300);
    CHECK(c == 1 && r3.done && r3.why == MQ_SCHED_END_CANCEL, "drain cancelled 1: %d %s", c,
          mq_sched_end_reason_name(r3.why));
    mq_sink s3 = sink_of(&r3);
    CHECK(mq_sched_submit(s, a, t, n, NULL, &s3, err, sizeof err) == -ESHUTDOWN, "refused while draining");
    mq_sched_destroy(s);
    free(t);
}

/* A whole-context request (mode < 0: the scheduler's). */
static int submit_whole(mq_sched *s, uint64_t sess, const int32_t *t, int n, int max_tokens, int mode, struct rec *r)
{
    mq_gen_params p = { .max_tokens = max_tokens, .whole_context = 1, .has_mode = mode >= 0 };
    if (mode >= 0)
        p.mode = (mq_prec_mode)mode;
    return submit_params(s, sess, t, n, &p, r);
}

/* Whole-context requests (stateless clients): the session keeps its common prefix with the
 * new context token by token where the cut is past its shareable chunks (a reply), the
 * blocks it published stay intact for others, and outputs equal a cold run's. A request
 * in another precision does not reuse KV computed in the session's or the index's other
 * one. */
static void test_whole_context_and_modes(void)
{
    mq_sched *s = make_sched(MQ_PREC_MODE_BF16, 256, 16, 64, MQ_KV_FULL_FAIL);
    if (!s)
        return;
    int32_t *sys = NULL, *q2 = NULL;
    int ns = make_tokens(SYSTEM, &sys), nq = make_tokens("<|im_start|>user\nAnd now in Rust?<|im_end|>\n", &q2);
    uint64_t a, b;
    mq_sched_session_open(s, TENANT, &a);
    struct rec r1;
    rec_init(&r1);
    submit_whole(s, a, sys, ns, 8, -1, &r1);
    rec_wait(&r1, 60);
    CHECK(r1.st.prompt_tokens == ns && r1.st.cached_tokens == 0, "turn 1: prompt %d cached %d", r1.st.prompt_tokens,
          r1.st.cached_tokens);
    /* turn 2 keeps the system prompt and 3 tokens of the reply: a cut inside a block */
    int keep = ns + 3;
    CHECK(keep % 16 != 0 && keep / 64 * 64 <= ns, "the cut is inside a block, after the shareable chunks");
    int32_t *ctx = malloc((size_t)(keep + nq) * sizeof *ctx);
    memcpy(ctx, sys, (size_t)ns * sizeof *ctx);
    memcpy(ctx + ns, r1.ids, 3 * sizeof *ctx);
    memcpy(ctx + keep, q2, (size_t)nq * sizeof *ctx);
    struct rec r2;
    rec_init(&r2);
    submit_whole(s, a, ctx, keep + nq, 12, -1, &r2);
    rec_wait(&r2, 60);
    CHECK(r2.st.prompt_tokens == keep + nq && r2.st.cached_tokens == keep && r2.st.prefilled_tokens == nq,
          "turn 2: prompt %d cached %d prefilled %d (want %d %d %d)", r2.st.prompt_tokens, r2.st.cached_tokens,
          r2.st.prefilled_tokens, keep + nq, keep, nq);
    /* the blocks turn 1 published are intact: turn 1 again on a new session */
    mq_sched_session_open(s, TENANT, &b);
    struct rec r3;
    rec_init(&r3);
    submit_whole(s, b, sys, ns, 8, -1, &r3);
    rec_wait(&r3, 60);
    CHECK(r3.st.cached_tokens == (ns - 1) / 16 * 16, "turn 1 again: %d cached (whole blocks of 16: bf16)",
          r3.st.cached_tokens);
    CHECK(r3.n == r1.n && !memcmp(r3.ids, r1.ids, (size_t)r1.n * sizeof(int32_t)), "turn 1 again: same output");
    /* another precision recomputes: nothing of the bf16 KV is reused */
    struct rec r4;
    rec_init(&r4);
    submit_whole(s, a, ctx, keep + nq, 4, MQ_PREC_MODE_FP4, &r4);
    rec_wait(&r4, 60);
    CHECK(r4.st.cached_tokens == 0 && r4.why != MQ_SCHED_END_ERROR, "fp4 after bf16: %d cached (%s)",
          r4.st.cached_tokens, r4.msg);
    mq_sched_destroy(s);
    /* a cold scheduler computes turn 2 whole: the same tokens as the copied-block run */
    s = make_sched(MQ_PREC_MODE_BF16, 256, 16, 64, MQ_KV_FULL_FAIL);
    if (s) {
        uint64_t c;
        mq_sched_session_open(s, TENANT, &c);
        struct rec r5;
        rec_init(&r5);
        submit_whole(s, c, ctx, keep + nq, 12, -1, &r5);
        rec_wait(&r5, 60);
        CHECK(r5.st.cached_tokens == 0 && r5.n == r2.n && !memcmp(r5.ids, r2.ids, (size_t)r2.n * sizeof(int32_t)),
              "turn 2 cold equals turn 2 on the kept KV: \"%s\" vs \"%s\"", r5.text, r2.text);
        mq_sched_destroy(s);
    }
    free(ctx);
    free(sys);
    free(q2);
}

/* The streamed model computes the same logits as the model loaded with pread. */
static void test_streamed_equals_pread(void)
{
    char err[MQ_ERRMSG_LEN];
    mq_model *m2 = NULL;
    int r = mq_model_load(shared_path("models/mq-qwen3-80m"), NULL, &m2, err, sizeof err);
    CHECK(r == 0, "mq_model_load: %s", err);
    if (r)
        return;
    mq_pool *pool;
    mq_pool_create(&pool, 1, NULL, "t");
    int32_t *t = NULL;
    int n = make_tokens("Hello world, this is a test of the loader.", &t);
    float *l1 = malloc((size_t)g_model->cfg.vocab * 4), *l2 = malloc((size_t)g_model->cfg.vocab * 4);
    mq_model *ms[2] = { g_model, m2 };
    float *ls[2] = { l1, l2 };
    for (int k = 0; k < 2; k++) {
        mq_engine_opts eo = { .max_chunk = 64, .max_batch = 1, .block_tokens = 16, .max_context = 64 };
        mq_engine *e;
        CHECK(mq_engine_create(&e, ms[k], &eo, err, sizeof err) == 0, "engine: %s", err);
        size_t bb = mq_kv_block_bytes(&ms[k]->cfg, 16);
        uint8_t *blocks[4];
        for (int i = 0; i < 4; i++)
            blocks[i] = aligned_alloc(64, (bb + 63) / 64 * 64);
        mq_kv_seq seq = { blocks, 4 };
        CHECK(mq_engine_prompt(e, pool, &seq, t, n, 0, MQ_PREC_MODE_MIXED, ls[k]) == 0, "prompt");
        for (int i = 0; i < 4; i++)
            free(blocks[i]);
        mq_engine_free(e);
    }
    CHECK(memcmp(l1, l2, (size_t)g_model->cfg.vocab * 4) == 0, "streamed and pread models give identical logits");
    free(l1);
    free(l2);
    free(t);
    mq_pool_destroy(pool);
    mq_model_free(m2);
}

int main(void)
{
    char err[512];
    const char *dir = shared_path("models/mq-qwen3-80m");
    char d[1024];
    snprintf(d, sizeof d, "%s", dir);
    mq_arena_create(&g_arena, NULL);
    mq_ws_opts wo;
    mq_ws_opts_default(&wo);
    wo.read_bytes = 1 << 20;
    mq_ws_result res;
    int r = mq_ws_load_model(d, NULL, g_arena, &wo, NULL, &res, &g_model, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "cannot load %s: %s\n", d, err);
        printf("@@ 0 1\n");
        return 1;
    }
    r = mq_tok_load_dir(d, &g_tok, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "cannot load the tokenizer of %s: %s\n", d, err);
        printf("@@ 0 1\n");
        return 1;
    }
    RUN(test_streamed_equals_pread);
    RUN(test_prefix_shared_and_second_turn);
    RUN(test_concurrent_prompts_read_shared_head_once);
    RUN(test_batched_equals_solo);
    RUN(test_whole_context_and_modes);
    RUN(test_concurrent_equals_solo_every_mode);
    RUN(test_bf16_shares_blocks_inside_a_chunk);
    RUN(test_prefix_cache_per_tenant);
    RUN(test_cancel_and_errors);
    RUN(test_kv_full);
    RUN(test_huge_requests_do_not_lock_the_store);
    RUN(test_tenant_limits);
    RUN(test_chunked_prefill_interleaves);
    RUN(test_stops_and_drain);
    mq_tok_free(g_tok);
    mq_model_free(g_model);
    mq_arena_destroy(g_arena);
    return harness_done();
}
