/* tests/bench/bench_e2e.c — end-to-end benchmarks of mqd's core (`make bench-e2e`, part
 * of `make bench`): weight loading, prefill per mode, decode against memory bandwidth,
 * an agent replay with KV reuse, and the decode stall while a long prompt is read.
 *
 *   build/bench_e2e [--models DIR] [--threads N] [--quick] [--only load,prefill,decode,long,replay,stall]
 *                   [--fp4-table auto|on|off]  (the packed NVFP4 copy's form, mq_model_opts)
 *                   [--chunk N[,M...]]  (prompt chunks in tokens, default mqd's chunk_tokens default;
 *                   several: the prefill and stall sections run each, interleaved)
 *
 * Synthetic Qwen3-0.6B and -1.7B checkpoints (random BF16 weights, the real shapes and
 * tokenizer) are written by build/mq_synth into DIR (default build/models) the first time
 * and reused after. Every figure of one run comes from the same process, so ratios are
 * comparable even on a busy machine. The last lines are the ones scripts read:
 *   load_vs_read_ratio (+ load_/read_first_touch_share: the part of each that is the
 *   kernel zeroing the fresh pages they fill, load_cold_first_touch_gbps: see below;
 *   load_cpu_s, load_bf16_only_cpu_s, read_cpu_s: CPU seconds of every thread of the
 *   last round's load, BF16-only load and read(), the bound of each on n CPUs being /n),
 *   prefill_mixed_vs_bf16, decode_vs_bandwidth, prefill_mixed_vs_bf16_8k,
 *   decode_8k_vs_bandwidth, agent_replay_prefill_ratio, agent_replay_ttft_speedup,
 *   decode_stall_ms_p99
 * Loading: both sides of load_vs_read_ratio fill fresh memory, and on a VM whose host
 * takes free memory back (virtio-balloon free page reporting, as on the Firecracker VM
 * these figures come from) the first touch of such memory costs ~0.5 GB/s against ~10
 * warm, for seconds after it was freed; so which phase met which state decided the ratio.
 * Each timed phase therefore runs right after the memory it fills was touched and freed
 * (warm_memory), the phases alternate over 3 rounds, and the table shows the best and the
 * spread of each (the ratio is of the best times). What cold memory costs is the machine's, not mq's, and is shown on
 * its own line: load_cold_first_touch_gbps is the first touch of the first memory the
 * section fills (3.4 GB), in whatever state the machine left it (~0.5 when the host had
 * taken it back; warm when something freed memory seconds before), and the table says
 * what the load and read() would take on memory in that state. mqd avoids the cost with
 * a reserved hugetlb pool (docs/operations.md, huge pages).
 * The long-context section ("long") reads an 8192-token prompt in mixed and in bf16 mode
 * and then decodes at that depth (4096 with --quick), where attention reads 0.94 GB of KV
 * per step of Qwen3-1.7B besides the 3.5 GB of weights.
 * Decode figures: every decode run sits between two probes of the read bandwidth
 * (tests/bench/bench_common.h: 2 threads streaming 1 GiB with the kernels' widest loads,
 * best of 8), and its ratio is the bytes of the fastest step over the larger probe, both
 * best-of figures taken seconds apart in this process. build/bench_decode breaks a step
 * down into linears, attention and the rest.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "engine/arena.h"
#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "engine/weight_stream.h"
#include "tests/bench/bench_common.h"

#define TENANT 0u /* every session of the benchmark belongs to one tenant */

static int g_threads = 2;
static int g_quick;
static int g_chunk; /* prompt chunk in tokens of the schedulers made now (sched_new) */
/* --chunk N[,M...]: the chunks the prefill and stall sections compare, interleaved in this
 * process (default: mqd's default chunk_tokens alone); closing lines are the first's */
static int g_chunks[4], g_nchunks;

static int parse_chunks(const char *list)
{
    char *end;
    g_nchunks = 0;
    do {
        long v = strtol(list, &end, 10);
        if (end == list || v < 16 || v > 65536 || g_nchunks == 4 || (*end && *end != ','))
            return -1;
        g_chunks[g_nchunks++] = (int)v;
        list = end + 1;
    } while (*end == ',');
    return 0;
}
enum { P_LOAD = 1, P_PREFILL = 2, P_DECODE = 4, P_LONG = 8, P_REPLAY = 16, P_STALL = 32, P_ALL = 63 };
static int g_parts = P_ALL; /* --only: the sections to run */

static int parse_parts(const char *list)
{
    static const char *const names[] = { "load", "prefill", "decode", "long", "replay", "stall" };
    int parts = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const int nn = (int)(sizeof names / sizeof *names);
        int k = 0;
        while (k < nn && strcmp(t, names[k]))
            k++;
        if (k == nn)
            return -1;
        parts |= 1 << k;
    }
    return parts;
}

static void die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "bench_e2e: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(1);
}

/* ---- checkpoints ---- */

static void ensure_model(const char *root, const char *size, char *dir, size_t len)
{
    snprintf(dir, len, "%s/qwen3-%s", root, size);
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/config.json", dir);
    struct stat st;
    if (stat(probe, &st) == 0)
        return;
    mkdir(root, 0755);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "build/mq_synth --size %s --out %s.tmp && rm -rf %s && mv %s.tmp %s", size, dir, dir, dir,
             dir);
    fprintf(stderr, "bench_e2e: writing synthetic Qwen3-%s into %s (once)\n", size, dir);
    if (system(cmd) != 0)
        die("%s failed%s", cmd, "");
}

/* ---- loading ---- */

/* read() of the whole file into a fresh buffer (the pages are first touched by the
 * copy, as the loader's are), or, with touched, into a buffer whose pages exist already
 * (the copy alone). */
static double time_plain_read(const char *path, size_t *bytes, int touched)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die("open %s: %s", path, strerror(errno));
    struct stat st;
    fstat(fd, &st);
    size_t n = (size_t)st.st_size;
    uint8_t *buf = mq_mem_map(n, 0, 1, NULL); /* as the arena's memory: fresh, THP */
    if (!buf)
        die("no memory for %s%s", path, "");
    if (touched)
        memset(buf, 0, n);
    double t0 = mq_now_s();
    size_t off = 0;
    while (off < n) {
        ssize_t r = read(fd, buf + off, n - off > (8u << 20) ? (8u << 20) : n - off);
        if (r <= 0)
            die("read %s: %s", path, r ? strerror(errno) : "EOF");
        off += (size_t)r;
    }
    double t = mq_now_s() - t0;
    close(fd);
    mq_mem_unmap(buf, n);
    *bytes = n;
    return t;
}

/* Faults in `bytes` of fresh anonymous memory (THP, as the arena's) and frees it, so the
 * phase timed right after takes warm pages (the header says why); returns the seconds
 * the touch took. */
static double warm_memory(size_t bytes)
{
    uint8_t *p = mq_mem_map(bytes, 0, 1, NULL);
    if (!p)
        die("cannot map %s%s for warming", "", "memory");
    double t0 = mq_now_s();
    for (size_t i = 0; i < bytes; i += 4096)
        p[i] = 1;
    double t = mq_now_s() - t0;
    mq_mem_unmap(p, bytes);
    return t;
}

/* Seconds per byte to fault in fresh anonymous memory (transparent huge pages, as the
 * arena's): the kernel zeroes every page on first touch, so memory a load fills costs
 * this on top of the copy. Best of 2 passes over 1 GiB. */
static double first_touch_s_per_byte(void)
{
    const size_t n = (size_t)1 << 30;
    double best = 1e30;
    for (int k = 0; k < 2; k++) {
        double t = warm_memory(n);
        best = t < best ? t : best;
    }
    return best / (double)n;
}

static double time_mmap_touch(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    double t0 = mq_now_s();
    volatile const uint8_t *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        die("mmap %s: %s", path, strerror(errno));
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)st.st_size; i += 4096)
        sum += p[i];
    double t = mq_now_s() - t0;
    munmap((void *)p, (size_t)st.st_size);
    close(fd);
    (void)sum;
    return t;
}

static mq_model *load_streamed_opts(const char *dir, const mq_model_opts *mo, mq_arena **arena, double *secs,
                                    mq_ws_result *res)
{
    char err[512];
    mqd_config cfg; /* mqd's default load: its options, made where mqd makes them */
    mqd_config_defaults(&cfg);
    mq_arena_opts ao;
    mq_ws_opts wo;
    mqd_load_opts_from_config(&cfg, &ao, &wo);
    mq_arena_create(arena, &ao);
    mq_model *m = NULL;
    double t0 = mq_now_s();
    int r = mq_ws_load_model(dir, mo, *arena, &wo, NULL, res, &m, err, sizeof err);
    *secs = mq_now_s() - t0;
    if (r < 0)
        die("load %s: %s", dir, err);
    return m;
}

static mq_model_opts g_mo; /* the model options of the main loads (--fp4-table) */

static mq_model *load_streamed(const char *dir, mq_arena **arena, double *secs, mq_ws_result *res)
{
    return load_streamed_opts(dir, &g_mo, arena, secs, res);
}

/* The bytes mq's load fills (weights and copies, as g_mo asks), from its plan alone: the
 * plan's allocations from the heap are never touched. */
static size_t planned_fill(const char *dir)
{
    char err[512];
    mq_model *m = NULL;
    const mq_read *reads;
    int n;
    if (mq_model_plan(dir, &g_mo, &mq_alloc_heap, &m, &reads, &n, err, sizeof err) < 0)
        die("plan %s: %s", dir, err);
    size_t b = m->bf16_bytes + m->fp4_bytes + m->fp4_packed_bytes + m->other_bytes;
    mq_model_free(m);
    return b;
}

static double best(const double *v, int n)
{
    double b = v[0];
    for (int i = 1; i < n; i++)
        b = v[i] < b ? v[i] : b;
    return b;
}

#define LOAD_ROUNDS 3

/* The load section (see the header): LOAD_ROUNDS rounds of every phase, each phase right
 * after warming the memory it fills; the best of each reported (other processes only add
 * time: a round that met cold memory or a busy CPU shows in the spread). Returns the last
 * full load. */
static mq_model *load_section(const char *path, const char *d17, mq_arena **ar17, mq_ws_result *wres, double *t_load,
                              double *t_read, double *load_touch_share, double *read_touch_share, double *cold_gbps,
                              double *load_cpu, double *bf16_cpu, double *read_cpu)
{
    size_t fbytes;
    time_plain_read(path, &fbytes, 0); /* warm the page cache */
    /* the first fill of the section meets memory in the state the machine left it */
    *cold_gbps = (double)fbytes / warm_memory(fbytes) / 1e9;
    const size_t fill_full = planned_fill(d17) + fbytes / 16;
    double rd[LOAD_ROUNDS], cp[LOAD_ROUNDS], mm[LOAD_ROUNDS], ld[LOAD_ROUNDS], bf[LOAD_ROUNDS];
    double cpu_read = 0, cpu_load = 0;
    mq_ws_result br;
    mq_model *m = NULL;
    for (int r = 0; r < LOAD_ROUNDS; r++) {
        if (m) {
            mq_model_free(m);
            mq_arena_destroy(*ar17);
            m = NULL;
        }
        warm_memory(fbytes);
        double c0 = mq_process_cpu_s();
        rd[r] = time_plain_read(path, &fbytes, 0);
        cpu_read = mq_process_cpu_s() - c0;
        cp[r] = time_plain_read(path, &fbytes, 1);
        mm[r] = time_mmap_touch(path);
        /* the same load without the NVFP4 copies: it fills as many bytes as read() */
        warm_memory(fbytes + fbytes / 16);
        mq_model_opts bo = { .no_fp4 = 1 };
        mq_arena *ab = NULL;
        mq_model_free(load_streamed_opts(d17, &bo, &ab, &bf[r], &br));
        mq_arena_destroy(ab);
        warm_memory(fill_full);
        c0 = mq_process_cpu_s();
        m = load_streamed(d17, ar17, &ld[r], wres);
        cpu_load = mq_process_cpu_s() - c0;
    }
    char mem[256], spread[5][32];
    double *all[5] = { rd, mm, ld, cp, bf };
    for (int i = 0; i < 5; i++) {
        double lo = all[i][0], hi = all[i][0];
        for (int r = 1; r < LOAD_ROUNDS; r++) {
            lo = all[i][r] < lo ? all[i][r] : lo;
            hi = all[i][r] > hi ? all[i][r] : hi;
        }
        snprintf(spread[i], sizeof spread[i], "%.3f-%.3f", lo, hi);
    }
    *t_read = best(rd, LOAD_ROUNDS);
    *t_load = best(ld, LOAD_ROUNDS);
    const double t_mmap = best(mm, LOAD_ROUNDS), t_copy = best(cp, LOAD_ROUNDS), t_bf16 = best(bf, LOAD_ROUNDS);
    const double touch = first_touch_s_per_byte();
    mq_arena_describe(*ar17, mem, sizeof mem);
    printf("\n%-34s %10s %10s %14s   (best of %d rounds, each phase on warm memory)\n", "load Qwen3-1.7B (synthetic)",
           "seconds", "GB/s", "spread", LOAD_ROUNDS);
    printf("%-34s %10.3f %10.2f %14s\n", "plain read()", *t_read, fbytes / *t_read / 1e9, spread[0]);
    printf("%-34s %10.3f %10.2f %14s\n", "mmap + touch every page", t_mmap, fbytes / t_mmap / 1e9, spread[1]);
    printf("%-34s %10.3f %10.2f %14s\n", "mq load (io_uring + NVFP4 quant)", *t_load, fbytes / *t_load / 1e9,
           spread[2]);
    printf("%-34s %10.3f %10.2f %14s\n", "read() into touched memory", t_copy, fbytes / t_copy / 1e9, spread[3]);
    printf("%-34s %10.3f %10.2f %14s\n", "mq load, BF16 copy only", t_bf16, fbytes / t_bf16 / 1e9, spread[4]);
    printf("  CPU time of the last round (every thread of the process, kernel included): plain read() %.3f s, mq load "
           "%.3f s (%.2fx)\n",
           cpu_read, cpu_load, cpu_load / cpu_read);
    printf("  CPU seconds of the last round's loads: streaming thread / quantize helpers / whole process (the rest "
           "is io_uring's kernel workers, if any: cached buffered reads are copied inline by the streaming thread): mq "
           "load %.3f / %.3f / %.3f, BF16 copy only "
           "%.3f / %.3f / %.3f\n",
           wres->cpu_stream_s, wres->cpu_helpers_s, wres->cpu_process_s, br.cpu_stream_s, br.cpu_helpers_s,
           br.cpu_process_s);
    *load_cpu = wres->cpu_process_s;
    *bf16_cpu = br.cpu_process_s;
    *read_cpu = cpu_read;
    const double filled = (double)(m->bf16_bytes + m->fp4_bytes + m->fp4_packed_bytes);
    printf("  file %.2f GB; BF16 copy %.2f GB, NVFP4 copy %.2f GB (+ packed %.2f GB); memory: %s; %s%s\n", fbytes / 1e9,
           m->bf16_bytes / 1e9, m->fp4_bytes / 1e9, m->fp4_packed_bytes / 1e9, mem,
           wres->direct_used ? "O_DIRECT" : "buffered", wres->note[0] ? wres->note : "");
    printf("  first touch of warm free memory %.2f GB/s: the load fills %.2f GB (%.3f s of it), plain read() %.2f "
           "GB (%.3f s)\n",
           1e-9 / touch, filled / 1e9, filled * touch, fbytes / 1e9, fbytes * touch);
    printf("  first touch of the memory this section met first %.2f GB/s (cold, ~0.5 GB/s, when the host had taken it "
           "back): on memory in that state the load's %.2f GB would take %.1f s, read()'s %.2f GB %.1f s\n",
           *cold_gbps, filled / 1e9, filled / (*cold_gbps * 1e9), fbytes / 1e9, fbytes / (*cold_gbps * 1e9));
    *load_touch_share = filled * touch / *t_load;
    *read_touch_share = fbytes * touch / *t_read;
    return m;
}

/* ---- scheduler helpers ---- */

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, n;
    mq_sched_end_reason why;
    char msg[256];
    mq_sched_req_stats st;
    double *t; /* token times (cap) */
    int cap;
    int32_t *ids;
    volatile int *stop_flag; /* when set, the sink asks for cancel (through main) */
};

static void w_init(struct waiter *w, int cap)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->cap = cap;
    w->t = calloc((size_t)cap + 1, sizeof(double));
    w->ids = calloc((size_t)cap + 1, sizeof(int32_t));
}
static void w_free(struct waiter *w)
{
    free(w->t);
    free(w->ids);
}
static void w_token(void *ctx, int32_t id, const char *text, size_t len)
{
    (void)text;
    (void)len;
    struct waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    if (w->n < w->cap) {
        w->t[w->n] = mq_now_s();
        w->ids[w->n] = id;
    }
    w->n++;
    pthread_mutex_unlock(&w->mu);
}
static void w_done(void *ctx, mq_sched_end_reason why, int err, const char *msg, const mq_sched_req_stats *st)
{
    (void)err;
    struct waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->why = why;
    snprintf(w->msg, sizeof w->msg, "%s", msg);
    w->st = *st;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
static void w_wait(struct waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    if (w->why == MQ_SCHED_END_ERROR)
        die("request failed: %s%s", w->msg, "");
}

static mq_sched *sched_new(mq_model *m, mq_tokenizer *tok, mq_prec_mode mode, int ctx)
{
    mq_sched_opts o;
    mq_sched_opts_default(&o);
    o.prefill_threads = g_threads;
    o.decode_threads = g_threads;
    o.mode = mode;
    o.chunk_tokens = g_chunk;
    o.context_limit = ctx;
    o.kv_blocks = 3 * ((ctx + 63) / 64);
    mq_sched *s = NULL;
    char err[256];
    if (mq_sched_create(&s, m, tok, &o, err, sizeof err) < 0)
        die("scheduler: %s%s", err, "");
    return s;
}

static void run(mq_sched *s, uint64_t sess, const int32_t *t, int n, int max_tokens, struct waiter *w)
{
    mq_gen_params p = { .max_tokens = max_tokens };
    mq_sink k = { .ctx = w, .on_token = w_token, .on_done = w_done };
    char err[256];
    int r = mq_sched_submit(s, sess, t, n, &p, &k, err, sizeof err);
    if (r < 0)
        die("submit: %s%s", err, "");
}

/* The read bandwidth of this process's memory, 2 threads, best of 8 passes (bench_common.h) */
static double read_bandwidth(void)
{
    mq_pool *pool = NULL;
    if (mq_pool_create(&pool, g_threads, NULL, "bw"))
        die("pool for the bandwidth probe%s%s", "", "");
    double bw = bench_read_bandwidth(pool, 8, NULL);
    mq_pool_destroy(pool);
    return bw;
}

/* A decode run's step time from its token times (t[0] is the prompt's first token):
 * the fastest gap between two tokens (best of the steps, as the bandwidth is a best of
 * passes: on a shared machine the fastest step is the one the other jobs took least
 * from), and the mean gap in *mean. */
static double decode_step(const struct waiter *w, int n, double *mean)
{
    double best = 1e30;
    for (int i = 2; i < n; i++)
        best = w->t[i] - w->t[i - 1] < best ? w->t[i] - w->t[i - 1] : best;
    *mean = (w->t[n - 1] - w->t[1]) / (n - 2);
    return best;
}

/* Prompt text: corpus documents (real text), tokenized, cut to n tokens. */
static int32_t *corpus_tokens(mq_tokenizer *tok, int n)
{
    const char *root = getenv("MQ_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/corpus/dev.txt", root && *root ? root : "../shared");
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open %s%s", path, "");
    size_t cap = (size_t)n * 8 + 4096;
    char *text = malloc(cap + 1);
    size_t len = fread(text, 1, cap, f);
    fclose(f);
    text[len] = 0;
    while (len && (text[len - 1] & 0xC0) == 0x80)
        len--; /* whole UTF-8 characters */
    if (len)
        len--;
    int32_t *ids = NULL;
    size_t nid = 0;
    char err[256];
    if (mq_tok_encode(tok, text, len, MQ_TOK_NO_PARSE_SPECIAL, &ids, &nid, err, sizeof err) < 0)
        die("encode: %s%s", err, "");
    free(text);
    if ((int)nid < n)
        die("corpus too short for %s tokens%s", "n", "");
    return ids;
}

static double prefill_rate(mq_model *m, mq_tokenizer *tok, mq_prec_mode mode, const int32_t *t, int n)
{
    mq_sched *s = sched_new(m, tok, mode, n + 64);
    uint64_t id;
    struct waiter w;
    /* Warm-up, as mqd does before READY: the first forward after a load pays one-time
     * costs (first touch of scratch and weight pages on this VM) that are no part of the
     * steady state. Its prompt starts elsewhere in t, so no KV block is shared. */
    int nw = n < 128 ? n / 2 : 64;
    if (nw > 0) {
        mq_sched_session_open(s, TENANT, &id);
        w_init(&w, 4);
        run(s, id, t + n - nw, nw, 1, &w);
        w_wait(&w);
        w_free(&w);
        mq_sched_session_close(s, id);
    }
    mq_sched_session_open(s, TENANT, &id);
    w_init(&w, 4);
    run(s, id, t, n, 1, &w);
    w_wait(&w);
    double rate = w.st.prefill_tok_s;
    w_free(&w);
    mq_sched_destroy(s);
    return rate;
}

/* bytes a decode step reads: every linear's BF16 weights, the LM head, the norms, and
 * the KV of the context */
static double decode_step_bytes(const mq_config *c, int ctx)
{
    double lin = (double)c->n_layers * ((double)c->hidden * c->n_head * c->head_dim * 2 +
                                        (double)c->hidden * c->n_kv * c->head_dim * 2 + 3.0 * c->hidden * c->inter);
    double head = (double)c->vocab * c->hidden;
    double kv = 2.0 * c->n_layers * ctx * c->n_kv * c->head_dim;
    return 2.0 * (lin + head + kv);
}

/* ---- agent replay ---- */

static int append_tokens(mq_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n, size_t *cap)
{
    char err[256];
    int r = mq_tok_encode_append(tok, text, len, 0, ids, n, cap, err, sizeof err);
    if (r < 0)
        die("encode: %s%s", err, "");
    return r;
}

static char *tool_response(int turn, int words)
{
    static const char *W[] = { "def",   "return", "self",   "value", "config", "path", "open",  "read", "line",
                               "error", "result", "import", "class", "data",   "file", "for",   "in",   "if",
                               "None",  "True",   "print",  "json",  "os",     "len",  "range", "list", "dict" };
    size_t cap = (size_t)words * 12 + 64;
    char *s = malloc(cap);
    size_t o = (size_t)snprintf(s, cap, "output of step %d:\n", turn);
    unsigned long long x = 0x9e3779b97f4a7c15ULL * (unsigned long long)(turn + 1);
    for (int i = 0; i < words; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        const char *w = W[(x * 2685821657736338717ULL >> 33) % (sizeof W / sizeof *W)];
        o += (size_t)snprintf(s + o, cap - o, "%s%s", w, i % 12 == 11 ? "\n" : " ");
    }
    return s;
}

struct replay_out {
    long new_tokens, prefilled;
    double ttft_last; /* turn 10 of session 0 */
    int history_last;
    int32_t *hist; /* session 0's history at turn 10 (before the turn's prompt) */
};

/* The shared head of both agents' conversations: a coding agent's system prompt, a map
 * of the repository and six tools, about 2.5k tokens (real agents ship 2k-10k). */
static const char *const AGENT_RULES[] = {
    "You are a coding agent working in a Python repository on behalf of a developer.",
    "Work in small steps: think about what you need to know, call exactly one tool, read its result, then decide the "
    "next step.",
    "Never guess file names or function signatures: list or search first, then read the file.",
    "Before you edit a file, read the part you are going to change and the code that calls it.",
    "Keep edits minimal and focused on the task; do not reformat code you are not changing.",
    "After every change run the relevant tests with the run tool and read the whole output, including warnings.",
    "If a test fails, find the cause before changing anything else; do not weaken or delete tests to make them pass.",
    "Prefer the standard library and the helpers that already exist in the repository over new dependencies.",
    "Follow the style of the surrounding code: naming, error handling, logging and docstrings.",
    "When a command takes long, give it a timeout; never start servers or watchers that do not exit.",
    "Do not touch files outside the repository, and never print secrets such as tokens or passwords from the "
    "environment.",
    "When the task is ambiguous, choose the interpretation a careful maintainer would choose and say which one you "
    "chose.",
    "Write commit messages that say what changed and why, in the imperative mood, under 72 characters for the first "
    "line.",
    "If a tool returns an error, read it carefully: a wrong path, a missing argument or a timeout each need a "
    "different fix.",
    "Report progress briefly: what you learned from the last tool call and what you will do next.",
    "When you are done, summarise the change, the tests you ran and anything you left undone.",
};

static const char *const AGENT_MODULES[] = { "cli",  "config", "server", "storage", "auth",    "cache",
                                             "jobs", "api",    "models", "utils",   "metrics", "plugins" };
static const char *const AGENT_FILES[] = { "__init__", "core", "errors", "schema", "io" };
static const char *const AGENT_FILE_ROLES[] = { "package exports", "main logic", "exception types",
                                                "data classes and validation", "file and network access" };

static char *agent_system_prompt(void)
{
    size_t cap = 32768, o = 0;
    char *s = malloc(cap);
    o += (size_t)snprintf(s + o, cap - o, "# Role and rules\n");
    for (size_t i = 0; i < sizeof AGENT_RULES / sizeof *AGENT_RULES; i++)
        o += (size_t)snprintf(s + o, cap - o, "%zu. %s\n", i + 1, AGENT_RULES[i]);
    o += (size_t)snprintf(s + o, cap - o, "\n# Repository map\n");
    for (size_t m = 0; m < sizeof AGENT_MODULES / sizeof *AGENT_MODULES; m++)
        for (size_t f = 0; f < sizeof AGENT_FILES / sizeof *AGENT_FILES; f++)
            o += (size_t)snprintf(s + o, cap - o, "- src/app/%s/%s.py: the %s %s (%zu functions, %zu lines)\n",
                                  AGENT_MODULES[m], AGENT_FILES[f], AGENT_MODULES[m], AGENT_FILE_ROLES[f],
                                  3 + (m * 7 + f * 5) % 17, 40 + (m * 131 + f * 67) % 900);
    o += (size_t)snprintf(s + o, cap - o,
                          "\n# Environment\nPython 3.11, pytest, ruff. Tests live in tests/, "
                          "one file per module. The default branch is main.\n");
    return s;
}

static const char AGENT_TOOLS[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"read_file\", \"description\": \"Read a file of the "
    "repository and return its text with line numbers. Large files are cut at 400 lines: pass start and end to read "
    "a range.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\", "
    "\"description\": \"path relative to the repository root\"}, \"start\": {\"type\": \"integer\", \"description\": "
    "\"first line, 1-based\"}, \"end\": {\"type\": \"integer\", \"description\": \"last line, inclusive\"}}, "
    "\"required\": [\"path\"]}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"edit_file\", \"description\": \"Replace one exact, unique "
    "occurrence of old_text with new_text in a file. Fails if old_text occurs zero or several times.\", "
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}, \"old_text\": "
    "{\"type\": \"string\", \"description\": \"text to replace, including enough context to be unique\"}, "
    "\"new_text\": {\"type\": \"string\"}}, \"required\": [\"path\", \"old_text\", \"new_text\"]}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"create_file\", \"description\": \"Create a new file with the "
    "given content. Fails if the file exists.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"path\": "
    "{\"type\": \"string\"}, \"content\": {\"type\": \"string\"}}, \"required\": [\"path\", \"content\"]}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"run\", \"description\": \"Run a shell command in the "
    "repository root and return its exit status, stdout and stderr (each cut at 20000 characters).\", "
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"cmd\": {\"type\": \"string\", \"description\": "
    "\"the command line, run by /bin/sh\"}, \"timeout\": {\"type\": \"integer\", \"description\": \"seconds, "
    "default 120\"}}, \"required\": [\"cmd\"]}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"search\", \"description\": \"Search the code base for a "
    "regular expression and return matching lines as path:line:text, at most 200 matches.\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"pattern\": {\"type\": \"string\"}, \"glob\": {\"type\": \"string\", "
    "\"description\": \"only files matching this glob, e.g. *.py\"}}, \"required\": [\"pattern\"]}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"list_dir\", \"description\": \"List the entries of a "
    "directory with their sizes; directories end with a slash.\", \"parameters\": {\"type\": \"object\", "
    "\"properties\": {\"path\": {\"type\": \"string\"}, \"depth\": {\"type\": \"integer\", \"description\": "
    "\"levels to descend, default 1\"}}, \"required\": [\"path\"]}}}]";

/* Renders one agent's next prompt: the first turn (system, tools, task) or a tool
 * response appended to what the session already holds. */
static int32_t *agent_turn_tokens(mq_tokenizer *tok, int turn, int agent, const char *sysmsg, const cJSON *tools,
                                  int end_in_session, size_t *n)
{
    char err[256], *txt = NULL;
    size_t len = 0;
    cJSON *msgs = cJSON_CreateArray();
    mq_chat_opts co = { .add_generation_prompt = 1, .enable_thinking = 0 };
    int r;
    if (turn == 0) {
        cJSON *sm = cJSON_CreateObject();
        cJSON_AddStringToObject(sm, "role", "system");
        cJSON_AddStringToObject(sm, "content", sysmsg);
        cJSON_AddItemToArray(msgs, sm);
        cJSON *um = cJSON_CreateObject();
        cJSON_AddStringToObject(um, "role", "user");
        cJSON_AddStringToObject(um, "content",
                                agent ? "Find why test_config fails and fix it."
                                      : "Add a --verbose flag to the command-line tool.");
        cJSON_AddItemToArray(msgs, um);
        r = mq_chat_render(MQ_CHAT_QWEN3, msgs, tools, &co, &txt, &len, err, sizeof err);
    } else {
        char *resp = tool_response(turn * 2 + agent, 300 + 50 * (turn % 3)); /* 350-450 tokens */
        cJSON *tm = cJSON_CreateObject();
        cJSON_AddStringToObject(tm, "role", "tool");
        cJSON_AddStringToObject(tm, "content", resp);
        cJSON_AddItemToArray(msgs, tm);
        free(resp);
        r = mq_chat_render_append(MQ_CHAT_QWEN3, msgs, &co, end_in_session, &txt, &len, err, sizeof err);
    }
    cJSON_Delete(msgs);
    if (r < 0)
        die("chat template: %s%s", err, "");
    int32_t *ids = NULL;
    size_t cap = 0;
    *n = 0;
    append_tokens(tok, txt, len, &ids, n, &cap);
    free(txt);
    return ids;
}

/* Two agents share the system prompt and tool list; 10 turns each, both agents at once:
 * the model writes a reply of GEN tokens (its reasoning and tool call, which stay in the
 * session's KV), then a tool response of a few hundred tokens comes back. By turn 10 the
 * history is about 8k tokens. Agent 0's turn 10 runs alone, so its TTFT is its own.
 * Returns agent 0's figures. */
static void agent_replay(mq_model *m, mq_tokenizer *tok, struct replay_out *out, int *turn10_len,
                         int32_t **turn10_prompt)
{
    const int TURNS = 10, GEN = 160, CTX = 10240;
    mq_sched *s = sched_new(m, tok, MQ_PREC_MODE_MIXED, CTX);
    cJSON *tools = cJSON_Parse(AGENT_TOOLS);
    if (!tools)
        die("tool list: bad JSON%s%s", "", "");
    char *sysmsg = agent_system_prompt();
    uint64_t sess[2];
    int end_in[2] = { 0, 0 };
    long new_tok = 0, prefilled = 0;
    for (int a = 0; a < 2; a++)
        mq_sched_session_open(s, TENANT, &sess[a]);
    for (int turn = 0; turn < TURNS; turn++) {
        struct waiter w[2];
        int32_t *ids[2];
        const int last = turn == TURNS - 1;
        for (int a = 0; a < 2; a++) {
            size_t n = 0;
            ids[a] = agent_turn_tokens(tok, turn, a, sysmsg, tools, end_in[a], &n);
            if (last && a == 0) {
                /* the whole prompt of turn 10, for the run without reuse */
                int h = mq_sched_session_history(s, sess[0], NULL, 0);
                *turn10_prompt = malloc(((size_t)h + n) * sizeof(int32_t));
                mq_sched_session_history(s, sess[0], *turn10_prompt, h);
                memcpy(*turn10_prompt + h, ids[0], n * sizeof(int32_t));
                *turn10_len = h + (int)n;
            }
            w_init(&w[a], GEN + 1);
            run(s, sess[a], ids[a], (int)n, GEN, &w[a]);
            if (last && a == 0)
                w_wait(&w[0]); /* alone */
        }
        for (int a = 0; a < 2; a++) {
            w_wait(&w[a]);
            end_in[a] = w[a].why == MQ_SCHED_END_STOP_TOKEN;
            new_tok += w[a].st.prompt_tokens;
            prefilled += w[a].st.prefilled_tokens;
            if (last && a == 0)
                out->ttft_last = w[a].st.ttft_ms;
            printf("  replay turn %2d agent %d: new %5d cached %5d prefilled %5d  ttft %8.1f ms  history %5d\n",
                   turn + 1, a, w[a].st.prompt_tokens, w[a].st.cached_tokens, w[a].st.prefilled_tokens, w[a].st.ttft_ms,
                   mq_sched_session_history(s, sess[a], NULL, 0));
            w_free(&w[a]);
            free(ids[a]);
        }
    }
    out->new_tokens = new_tok;
    out->prefilled = prefilled;
    out->history_last = mq_sched_session_history(s, sess[0], NULL, 0);
    free(sysmsg);
    cJSON_Delete(tools);
    mq_sched_destroy(s);
}

/* ---- decode stall ---- */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double decode_stall_p99(mq_model *m, mq_tokenizer *tok, const int32_t *longp, int nlong, double *p50,
                               int *gaps_out, double *alone_ms, double *chunk_ms)
{
    const int chunk = g_chunk;
    mq_sched *s = sched_new(m, tok, MQ_PREC_MODE_MIXED, nlong + 4096);
    uint64_t a, b;
    mq_sched_session_open(s, TENANT, &a);
    mq_sched_session_open(s, TENANT, &b);
    struct waiter wa, wb;
    w_init(&wa, 8192);
    w_init(&wb, 4);
    run(s, a, longp, 32, 4000, &wa);
    while (1) { /* a is decoding */
        pthread_mutex_lock(&wa.mu);
        int k = wa.n;
        pthread_mutex_unlock(&wa.mu);
        if (k >= 12)
            break;
        usleep(2000);
    }
    double t_sub = mq_now_s();
    run(s, b, longp, nlong, 1, &wb);
    w_wait(&wb);
    { /* a's step alone: the median gap before b came; one chunk: b's TTFT / its chunks */
        double g0[12];
        int k0 = 0;
        for (int i = 1; i < 12 && wa.t[i] < t_sub; i++)
            g0[k0++] = (wa.t[i] - wa.t[i - 1]) * 1e3;
        qsort(g0, (size_t)k0, sizeof *g0, cmp_d);
        *alone_ms = k0 ? g0[k0 / 2] : 0;
        *chunk_ms = wb.st.ttft_ms / ((nlong + chunk - 1) / chunk);
    }
    double t_end = mq_now_s();
    mq_sched_cancel(s, a, MQ_SCHED_END_CANCEL);
    w_wait(&wa);
    /* gaps between a's tokens during b's prefill (from b's submit to b's first token) */
    double *g = malloc(8192 * sizeof(double));
    int ng = 0;
    int lim = wa.n < wa.cap ? wa.n : wa.cap;
    double last = -1;
    for (int i = 0; i < lim; i++) {
        if (wa.t[i] < t_sub) {
            last = wa.t[i];
            continue;
        }
        if (wa.t[i] > t_end)
            break;
        if (last > 0)
            g[ng++] = (wa.t[i] - last) * 1e3;
        last = wa.t[i];
    }
    double p99 = 0;
    if (ng > 0) {
        qsort(g, (size_t)ng, sizeof *g, cmp_d);
        p99 = g[(int)(0.99 * (ng - 1))];
        *p50 = g[(ng - 1) / 2];
    }
    *gaps_out = ng;
    free(g);
    w_free(&wa);
    w_free(&wb);
    mq_sched_destroy(s);
    return p99;
}

int main(int argc, char **argv)
{
    const char *root = "build/models";
    mqd_config defaults; /* the chunk every scheduler here reads prompts in is mqd's */
    mqd_config_defaults(&defaults);
    g_chunks[0] = (int)defaults.chunk_tokens;
    g_nchunks = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--models") && i + 1 < argc)
            root = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            g_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            g_quick = 1;
        else if (!strcmp(argv[i], "--fp4-table") && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "auto") && strcmp(v, "on") && strcmp(v, "off"))
                die("--fp4-table: '%s' is not auto, on or off%s", v, "");
            g_mo.fp4_table = !strcmp(v, "on") ? MQ_FP4_PACK_ON : !strcmp(v, "off") ? MQ_FP4_PACK_OFF : MQ_FP4_PACK_AUTO;
        } else if (!strcmp(argv[i], "--chunk") && i + 1 < argc && parse_chunks(argv[++i]) == 0) {
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc && (g_parts = parse_parts(argv[++i])) > 0) {
        } else
            die("usage: bench_e2e [--models DIR] [--threads N] [--quick] "
                "[--only load,prefill,decode,long,replay,stall] [--fp4-table auto|on|off] [--chunk N[,M...]]%s%s",
                "", "");
    }
    g_chunk = g_chunks[0];
    setvbuf(stdout, NULL, _IOLBF, 0); // progress is visible when piped
    mq_kernels_init();
    char d06[1100], d17[1100], path[1200];
    ensure_model(root, "0.6b", d06, sizeof d06);
    ensure_model(root, "1.7b", d17, sizeof d17);
    printf("bench_e2e: %d threads, ISA %s, models in %s, prompts in chunks of %d tokens\n", g_threads,
           mq_isa_name(mq_kernels_isa()), root, g_chunk);

    /* 1. loading the 1.7B checkpoint, warm page cache, every phase on warm memory */
    double t_load = 0, t_read = 0, load_touch_share = 0, read_touch_share = 0, cold_gbps = 0, load_cpu = 0,
           bf16_cpu = 0, read_cpu = 0;
    mq_ws_result wres;
    mq_arena *ar17 = NULL;
    mq_model *m17 = NULL;
    if (g_parts & P_LOAD) {
        snprintf(path, sizeof path, "%s/model.safetensors", d17);
        m17 = load_section(path, d17, &ar17, &wres, &t_load, &t_read, &load_touch_share, &read_touch_share, &cold_gbps,
                           &load_cpu, &bf16_cpu, &read_cpu);
    } else if (g_parts & (P_PREFILL | P_DECODE | P_LONG)) {
        double t;
        m17 = load_streamed(d17, &ar17, &t, &wres);
    }

    mq_tokenizer *tok = NULL;
    char err[512];
    if (mq_tok_load_dir(d17, &tok, err, sizeof err) < 0)
        die("tokenizer: %s%s", err, "");
    int32_t *prompt = corpus_tokens(tok, 9000);
    mq_sched *s;
    uint64_t id;
    struct waiter w;

    /* 2. prefill per mode, 2048-token prompt: two interleaved rounds, the faster of each */
    int NP = g_quick ? 512 : 2048;
    double pm17 = 0, pb17 = 0;
    if (g_parts & P_PREFILL) {
        printf("\nNVFP4 packed copy: %.2f GB, %s form\n", m17->fp4_packed_bytes / 1e9,
               !m17->fp4_packed_bytes ? "no"
               : m17->fp4_table       ? "table"
                                      : "index");
        printf("%-34s %12s %12s %8s\n", "prefill, prompt of tokens", "mixed tok/s", "bf16 tok/s", "ratio");
        double pm[4] = { 0 }, pb[4] = { 0 };
        for (int round = 0; round < 2; round++)
            for (int c = 0; c < g_nchunks; c++) {
                g_chunk = g_chunks[c];
                const double m = prefill_rate(m17, tok, MQ_PREC_MODE_MIXED, prompt, NP);
                const double b = prefill_rate(m17, tok, MQ_PREC_MODE_BF16, prompt, NP);
                pm[c] = m > pm[c] ? m : pm[c];
                pb[c] = b > pb[c] ? b : pb[c];
            }
        g_chunk = g_chunks[0];
        pm17 = pm[0];
        pb17 = pb[0];
        for (int c = 0; c < g_nchunks; c++) {
            char what[64];
            snprintf(what, sizeof what, "Qwen3-1.7B, chunks of %d", g_chunks[c]);
            printf("%-29s %4d %12.1f %12.1f %8.2f\n", what, NP, pm[c], pb[c], pm[c] / pb[c]);
        }
    }

    /* 3. decode vs bandwidth (1.7B, one session). Each decode run sits between two
     * probes of the read bandwidth (bench_common.h), and its figure takes the larger:
     * best of passes against the fastest step, measured back to back in this process. */
    double dec_ratio = 0, bw = 0, dec_step = 0, dec_mean = 0, dec_bytes = 0;
    if (g_parts & P_DECODE) {
        s = sched_new(m17, tok, MQ_PREC_MODE_MIXED, 2048);
        mq_sched_session_open(s, TENANT, &id);
        int GEN = g_quick ? 16 : 48;
        w_init(&w, GEN + 1);
        double bw0 = read_bandwidth();
        run(s, id, prompt, 128, GEN, &w);
        w_wait(&w);
        double bw1 = read_bandwidth();
        bw = bw0 > bw1 ? bw0 : bw1;
        dec_step = decode_step(&w, GEN, &dec_mean);
        dec_bytes = decode_step_bytes(&m17->cfg, 128 + GEN / 2);
        dec_ratio = dec_bytes / dec_step / bw;
        w_free(&w);
        mq_sched_destroy(s);
    }

    /* 3b. long context: prefill of NL tokens per mode, then decode at that depth (after
     * the mixed prefill, between two bandwidth probes as above) */
    int NL = g_quick ? 4096 : 8192;
    double pm8 = 0, pb8 = 0, long_step = 0, long_mean = 0, long_bytes = 0, bw8 = 0;
    if (g_parts & P_LONG) {
        const int GEN = g_quick ? 8 : 24;
        s = sched_new(m17, tok, MQ_PREC_MODE_MIXED, NL + GEN + 64);
        mq_sched_session_open(s, TENANT, &id);
        w_init(&w, GEN + 1);
        double bw0 = read_bandwidth();
        run(s, id, prompt, NL, GEN, &w);
        w_wait(&w);
        double bw1 = read_bandwidth();
        bw8 = bw0 > bw1 ? bw0 : bw1;
        pm8 = w.st.prefill_tok_s;
        long_step = decode_step(&w, GEN, &long_mean);
        long_bytes = decode_step_bytes(&m17->cfg, NL + GEN / 2);
        w_free(&w);
        mq_sched_destroy(s);
        pb8 = prefill_rate(m17, tok, MQ_PREC_MODE_BF16, prompt, NL);
    }
    if (g_parts & (P_DECODE | P_LONG)) {
        printf("\n%-34s %10s %10s %10s %10s %10s\n", "decode Qwen3-1.7B, 1 session", "tok/s", "GB/step", "GB/s",
               "read GB/s", "ratio");
        printf("%-34s %10s %10s %10s %10s %10s\n", "  (fastest step; mean in brackets)", "", "", "", "best of 16", "");
        if (g_parts & P_DECODE)
            printf("%-34s %4.2f (%4.2f) %10.3f %10.2f %10.2f %10.3f\n", "BF16 decode, 128-token context", 1 / dec_step,
                   1 / dec_mean, dec_bytes / 1e9, dec_bytes / dec_step / 1e9, bw / 1e9, dec_ratio);
        if (g_parts & P_LONG) {
            char what[64];
            snprintf(what, sizeof what, "BF16 decode, %d-token context", NL);
            printf("%-34s %4.2f (%4.2f) %10.3f %10.2f %10.2f %10.3f\n", what, 1 / long_step, 1 / long_mean,
                   long_bytes / 1e9, long_bytes / long_step / 1e9, bw8 / 1e9, long_bytes / long_step / bw8);
            printf("\n%-34s %12s %12s %8s\n", "prefill, prompt of tokens", "mixed tok/s", "bf16 tok/s", "ratio");
            printf("%-29s %4d %12.1f %12.1f %8.2f\n", "Qwen3-1.7B", NL, pm8, pb8, pm8 / pb8);
        }
    }
    if (m17) {
        mq_model_free(m17);
        mq_arena_destroy(ar17);
    }

    /* 4. 0.6B: prefill ratio too, agent replay and decode stall */
    struct replay_out ro = { 0 };
    double ttft_cold = 0, stall = 0;
    int32_t *p10 = NULL;
    if (g_parts & (P_PREFILL | P_REPLAY | P_STALL)) {
        mq_arena *ar06;
        double t06;
        mq_model *m06 = load_streamed(d06, &ar06, &t06, &wres);
        if (g_parts & P_PREFILL) {
            double pm06 = prefill_rate(m06, tok, MQ_PREC_MODE_MIXED, prompt, NP);
            double pb06 = prefill_rate(m06, tok, MQ_PREC_MODE_BF16, prompt, NP);
            printf("\n%-29s %4d %12.1f %12.1f %8.2f\n", "prefill Qwen3-0.6B", NP, pm06, pb06, pm06 / pb06);
        }
        if (g_parts & P_REPLAY) {
            printf("\nagent replay, Qwen3-0.6B, 2 agents x 10 turns, shared system prompt + tools, mixed mode\n");
            int n10 = 0;
            agent_replay(m06, tok, &ro, &n10, &p10);
            /* turn 10 without reuse: a fresh scheduler (empty index) reads the whole prompt */
            s = sched_new(m06, tok, MQ_PREC_MODE_MIXED, 10240);
            mq_sched_session_open(s, TENANT, &id);
            w_init(&w, 4);
            run(s, id, p10, n10, 1, &w);
            w_wait(&w);
            ttft_cold = w.st.ttft_ms;
            w_free(&w);
            mq_sched_destroy(s);
            printf("  turn 10 prompt %d tokens: TTFT %.1f ms with reuse, %.1f ms without\n", n10, ro.ttft_last,
                   ttft_cold);
        }
        for (int c = g_nchunks - 1; c >= 0 && (g_parts & P_STALL); c--) { /* the first chunk's last */
            const int NL = g_quick ? 2048 : 8192;
            double p50 = 0, alone = 0, chunk_ms = 0;
            int ng = 0;
            g_chunk = g_chunks[c];
            stall = decode_stall_p99(m06, tok, prompt, NL, &p50, &ng, &alone, &chunk_ms);
            printf("\ndecode stall, Qwen3-0.6B: one session decoding while a %d-token prompt is read in chunks of %d\n",
                   NL, g_chunk);
            printf("  %d gaps between tokens: p50 %.1f ms, p99 %.1f ms; a step alone %.1f ms, one chunk %.1f ms "
                   "on average (the prompt's TTFT / its chunks)\n",
                   ng, p50, stall, alone, chunk_ms);
        }
        mq_model_free(m06);
        mq_arena_destroy(ar06);
    }
    mq_tok_free(tok);
    free(prompt);
    free(p10);

    printf("\n");
    if (g_parts & P_LOAD) {
        printf("load_vs_read_ratio: %.3f\n", t_load / t_read); /* mmap+touch: in the table */
        /* how much of each is the kernel zeroing fresh pages (first touch), not the copy */
        printf("load_first_touch_share: %.3f\n", load_touch_share);
        printf("read_first_touch_share: %.3f\n", read_touch_share);
        printf("load_cold_first_touch_gbps: %.2f\n", cold_gbps); /* the machine's, not mq's */
        /* CPU seconds (every thread): the load's bound on n CPUs is cpu / n seconds */
        printf("load_cpu_s: %.3f\n", load_cpu);
        printf("load_bf16_only_cpu_s: %.3f\n", bf16_cpu);
        printf("read_cpu_s: %.3f\n", read_cpu);
    }
    if (g_parts & P_PREFILL)
        printf("prefill_mixed_vs_bf16: %.3f\n", pm17 / pb17);
    if (g_parts & P_DECODE)
        printf("decode_vs_bandwidth: %.3f\n", dec_ratio);
    if (g_parts & P_LONG) {
        printf("prefill_mixed_vs_bf16_8k: %.3f\n", pm8 / pb8); /* 4096 tokens with --quick (the table says) */
        printf("decode_8k_vs_bandwidth: %.3f\n", long_bytes / long_step / bw8);
    }
    if (g_parts & P_REPLAY) {
        printf("agent_replay_prefill_ratio: %.3f\n", (double)ro.prefilled / (double)ro.new_tokens);
        printf("agent_replay_ttft_speedup: %.2f\n", ttft_cold / ro.ttft_last);
    }
    if (g_parts & P_STALL)
        printf("decode_stall_ms_p99: %.1f\n", stall);
    return 0;
}
