/* daemon/server.c — mqd's life cycle: configuration, sockets, privileges, the load
 * thread, READY, reload and drain (see server.h for the module map).
 *
 * Start-up order (each step needs the one before):
 *   config -> named sockets from systemd -> privileged set-up (as root: memlock limit,
 *   huge page reservation with its give-back helper, BPF) -> bind own sockets -> drop privileges -> event loop + signals (blocked
 *   before any other thread exists, so every thread inherits the mask) -> load thread
 *   (weights via io_uring into the arena, tokenizer, scheduler, warm-up) -> READY=1 and
 *   only then accept on the client socket. The admin socket is served during the load so
 *   `mqctl status` can show its progress.
 * Shutdown: SIGTERM/SIGINT/`mqctl drain` -> STOPPING=1, stop accepting, drain thread
 * (mq_sched_drain with drain_timeout_ms) -> close clients -> stop the loop -> free
 * everything -> reserved huge pages given back (mqd_fini, also after a failed start) ->
 * exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "engine/arena.h"
#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "daemon/probes.h"
#include "engine/scheduler.h"
#include "daemon/server.h"

/* Messages are cut to their buffers on purpose (they name paths that may be long). */
#include "engine/tokenizer.h"
#include "engine/weight_stream.h"
#include "common/errmsg.h"
#include "common/clock.h"

#define CLIENT_SOCKET_MODE 0666 /* access is decided by SO_PEERCRED against the config */
#define ADMIN_SOCKET_MODE  0660
#define CTX_DEFAULT_MAX    32768
#define WARMUP_TIMEOUT_S   120

void mqd_log(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mqd[%d]: %s\n", (int)getpid(), buf);
}

/* ---- sockets ------------------------------------------------------------------- */
static int bind_socket(mqd *d, const char *path, mode_t mode, gid_t group, char *err, size_t errlen)
{
    char dir[MQ_CFG_PATH];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir(dir, 0755) == 0 && geteuid() == 0)
            /* the run-as user unlinks the sockets at exit */
            if (chown(dir, d->run_uid, d->run_gid) < 0)
                mqd_log("chown %s: %s", dir, strerror(errno));
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        return mq_errmsg(err, errlen, -ENAMETOOLONG, "socket path %s is too long", path);
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return mq_errmsg(err, errlen, -errno, "socket: %s", strerror(errno));
    }
    /* A socket file left by a dead mqd is removed; a live one is not taken over. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(fd);
        return mq_errmsg(err, errlen, -EADDRINUSE, "%s: another mqd is listening there", path);
    }
    close(fd);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(path, mode) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        mq_errmsg(err, errlen, 0, "binding %s: %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        return -e;
    }
    if (geteuid() == 0 && chown(path, d->run_uid, group) < 0)
        mqd_log("chown %s: %s", path, strerror(errno));
    return fd;
}

/* ---- the load thread ----------------------------------------------------------- */
typedef struct warm {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int reason, err;
    char msg[256];
} warm;

static void warm_token(void *ctx, int32_t id, const char *text, size_t len)
{
    (void)ctx;
    (void)id;
    (void)text;
    (void)len;
}

static void warm_done(void *ctx, mq_sched_end_reason reason, int err, const char *msg, const mq_sched_req_stats *st)
{
    (void)st;
    warm *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->reason = reason;
    w->err = err;
    snprintf(w->msg, sizeof w->msg, "%s", msg ? msg : "");
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* One short generation so the first client does not pay for cold caches and lazy
 * allocations, and so READY=1 means "answers requests". */
static int warm_up(mqd *d, char *err, size_t errlen)
{
    uint64_t sid;
    int rc = mq_sched_session_open(d->sched, &sid);
    if (rc) {
        return mq_errmsg(err, errlen, rc, "warm-up: session: %s", strerror(-rc));
    }
    int32_t *ids = NULL;
    size_t n = 0;
    char terr[MQ_TOK_ERR_LEN];
    rc = mq_tok_encode(d->tok, "Hello, world.", 13, MQ_TOK_ADD_SPECIAL, &ids, &n, terr, sizeof terr);
    if (rc) {
        mq_sched_session_close(d->sched, sid);
        return mq_errmsg(err, errlen, rc, "warm-up: tokenizer: %s", terr);
    }
    warm w = { .done = 0 };
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    mq_gen_params p = { .max_tokens = 2 };
    mq_sink sink = { .ctx = &w, .on_token = warm_token, .on_done = warm_done };
    char serr[256] = "";
    rc = mq_sched_submit(d->sched, sid, ids, (int)n, &p, &sink, serr, sizeof serr);
    free(ids);
    if (!rc) {
        struct timespec dl;
        mq_deadline_in(&dl, CLOCK_REALTIME, WARMUP_TIMEOUT_S * 1000);
        pthread_mutex_lock(&w.mu);
        while (!w.done && rc == 0)
            rc = -pthread_cond_timedwait(&w.cv, &w.mu, &dl);
        pthread_mutex_unlock(&w.mu);
        if (rc)
            mq_errmsg(err, errlen, 0, "warm-up: no answer in %d s", WARMUP_TIMEOUT_S);
        else if (w.reason == MQ_SCHED_END_ERROR) {
            rc = w.err ? w.err : -EIO;
            mq_errmsg(err, errlen, 0, "warm-up failed: %s", w.msg);
        }
    } else {
        mq_errmsg(err, errlen, 0, "warm-up: submit: %s", serr[0] ? serr : strerror(-rc));
    }
    mq_sched_session_close(d->sched, sid); /* waits for on_done if still running */
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

static int count_cpus(const char *list)
{
    if (!list[0]) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int)n : 1;
    }
    int n = 0;
    const char *s = list;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            s = end;
        }
        n += (int)(b - a + 1);
        if (*s == ',')
            s++;
    }
    return n > 0 ? n : 1;
}

static void set_phase(mqd *d, const char *phase)
{
    snprintf(d->load_phase, sizeof d->load_phase, "%s", phase);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    mqd_log("loading: %s", phase);
}

/* ---- weights: mq_model_plan -> io_uring stream (weight_stream.h) -> finish ---------
 * Weight memory comes from the arena (hugepage-backed); the model's staging buffers
 * ("staging*", freed by the model after conversion) come from the heap so they really
 * return. The list of live staging buffers tells the two apart in free(). */
typedef struct loader {
    mq_arena *arena;
    mq_model *model;
    pthread_mutex_t mu;
    void **staging;
    int n_staging, cap_staging;
} loader;

static void *loader_alloc(void *ctx, size_t bytes, size_t align, const char *what)
{
    loader *ld = ctx;
    if (!what || strncmp(what, "staging", 7))
        return mq_arena_alloc(ld->arena, bytes, align, what);
    void *p = NULL;
    if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, bytes))
        return NULL;
    pthread_mutex_lock(&ld->mu);
    if (ld->n_staging == ld->cap_staging) {
        int cap = ld->cap_staging ? 2 * ld->cap_staging : 64;
        void **a = realloc(ld->staging, (size_t)cap * sizeof *a);
        if (!a) {
            pthread_mutex_unlock(&ld->mu);
            free(p);
            return NULL;
        }
        ld->staging = a;
        ld->cap_staging = cap;
    }
    ld->staging[ld->n_staging++] = p;
    pthread_mutex_unlock(&ld->mu);
    return p;
}

static void loader_free(void *ctx, void *p, size_t bytes)
{
    (void)bytes;
    loader *ld = ctx;
    pthread_mutex_lock(&ld->mu);
    for (int i = 0; i < ld->n_staging; i++)
        if (ld->staging[i] == p) {
            ld->staging[i] = ld->staging[--ld->n_staging];
            free(p);
            break;
        } /* otherwise arena memory: it lives as long as the arena */
    pthread_mutex_unlock(&ld->mu);
}

static int loader_ready(void *ctx, int i, char *err, size_t errlen)
{
    loader *ld = ctx;
    char e[MQ_ERRMSG_LEN] = "";
    int rc = mq_model_tensor_ready(ld->model, i, e, sizeof e);
    if (rc < 0)
        mq_errmsg(err, errlen, 0, "%s", e);
    return rc;
}

static int load_weights(mqd *d, const mq_ws_opts *wo, mq_ws_progress *prog, mq_ws_result *res, char *err, size_t errlen)
{
    loader *ld = calloc(1, sizeof *ld); /* outlives the load: the model frees through it */
    if (!ld)
        return -ENOMEM;
    ld->arena = d->arena;
    pthread_mutex_init(&ld->mu, NULL);
    d->loader = ld;
    mq_alloc al = { .alloc = loader_alloc, .free = loader_free, .ctx = ld };
    const mq_read *reads = NULL;
    int n_reads = 0;
    char e[MQ_ERRMSG_LEN] = "";
    mq_model_opts mo = { 0 };
    int rc = mq_model_plan(d->cfg.model_dir, &mo, &al, &ld->model, &reads, &n_reads, e, sizeof e);
    if (rc < 0) {
        return mq_errmsg(err, errlen, rc, "%s", e);
    }
    const char *const *paths = NULL;
    int n_files = mq_model_files(ld->model, &paths);
    mq_ws_read *wr = calloc((size_t)n_reads + 1, sizeof *wr);
    if (!wr) {
        mq_model_free(ld->model);
        return mq_errmsg(err, errlen, -ENOMEM, "%s: out of memory for %d reads", d->cfg.model_dir, n_reads);
    }
    for (int i = 0; i < n_reads; i++)
        wr[i] = (mq_ws_read){ .file = reads[i].file,
                              .offset = reads[i].offset,
                              .bytes = reads[i].bytes,
                              .dst = reads[i].dst,
                              .what = reads[i].tensor };
    rc = mq_ws_run(paths, n_files, wr, n_reads, wo, loader_ready, ld, prog, res, err, errlen);
    free(wr);
    if (rc == 0) {
        rc = mq_model_finish(ld->model, e, sizeof e);
        if (rc < 0)
            mq_errmsg(err, errlen, 0, "%s", e);
    }
    if (rc < 0) {
        mq_model_free(ld->model);
        return rc;
    }
    d->model = ld->model;
    return 0;
}

/* ---- hugepages_reserve = "auto": weights + KV segment, counted before mapping them -----
 * A dry run of mq_model_plan (headers only) with an allocator that hands out untouched
 * MAP_NORESERVE memory and adds up what the arena would hold (same 64-byte alignment, one
 * mapping: load_weights then maps exactly that with mq_arena_reserve); the KV segment is
 * sized as kv_store.c sizes it. */
typedef struct measure {
    size_t arena_bytes;
} measure;

static void *measure_alloc(void *ctx, size_t bytes, size_t align, const char *what)
{
    measure *m = ctx;
    if (!align)
        align = 64;
    if (!what || strncmp(what, "staging", 7)) /* staging comes from the heap, see loader */
        m->arena_bytes = (m->arena_bytes + align - 1) / align * align + (bytes ? bytes : 1);
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void measure_free(void *ctx, void *p, size_t bytes)
{
    (void)ctx;
    munmap(p, bytes ? bytes : 1);
}

static size_t pages_of(size_t bytes)
{
    return (bytes + MQ_HUGEPAGE_BYTES - 1) / MQ_HUGEPAGE_BYTES;
}

/* Reserves what weights + KV need (auto mode); the weights' bytes in *arena_bytes (0 when
 * not measured). Failures only cost the huge pages: the load goes on. */
static void reserve_auto(mqd *d, size_t *arena_bytes)
{
    *arena_bytes = 0;
    if (d->cfg.hugepages_reserve != MQ_CFG_U32_AUTO || d->hp_pid <= 0)
        return;
    measure ms = { 0 };
    mq_alloc al = { .alloc = measure_alloc, .free = measure_free, .ctx = &ms };
    mq_model *m = NULL;
    const mq_read *reads = NULL;
    int n_reads = 0;
    char e[MQ_ERRMSG_LEN] = "";
    mq_model_opts mo = { 0 };
    int rc = mq_model_plan(d->cfg.model_dir, &mo, &al, &m, &reads, &n_reads, e, sizeof e);
    if (rc < 0) {
        mqd_log("huge pages: auto: cannot size the model (%s); nothing reserved", e);
        return; /* the real plan reports the same error */
    }
    int blocks = (int)(d->cfg.kv_tokens / d->cfg.kv_block_tokens);
    size_t stride = (mq_kv_block_bytes(&m->cfg, (int)d->cfg.kv_block_tokens) + 63) / 64 * 64;
    size_t kv = stride * (size_t)blocks;
    mq_model_free(m);
    char why[96];
    snprintf(why, sizeof why, "weights %.1f MiB + KV segment %.1f MiB", ms.arena_bytes / 1048576.0, kv / 1048576.0);
    if (mqd_hugepages_auto(d, (long)(pages_of(ms.arena_bytes) + pages_of(kv)), why) > 0)
        *arena_bytes = ms.arena_bytes;
}

typedef struct load_result {
    mqd *d;
    int rc;
    char err[512];
} load_result;

static void load_done(mq_evloop *l, void *arg);

/* Progress of the weight stream, copied into the context for the status surfaces. */
typedef struct ws_watch {
    mqd *d;
    mq_ws_progress *prog;
    int stop;
    pthread_t th;
} ws_watch;

static void *ws_watch_main(void *arg)
{
    ws_watch *w = arg;
    while (!__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST)) {
        uint64_t bd, bt, rd, rt;
        double rate;
        mq_ws_progress_get(w->prog, &bd, &bt, &rd, &rt, &rate);
        __atomic_store_n(&w->d->load_bytes_done, bd, __ATOMIC_RELAXED);
        __atomic_store_n(&w->d->load_bytes_total, bt, __ATOMIC_RELAXED);
        usleep(100 * 1000);
    }
    return NULL;
}

static void *load_main(void *arg)
{
    mqd *d = arg;
    load_result *res = calloc(1, sizeof *res);
    if (!res)
        return NULL;
    res->d = d;
    char err[512] = "";
    int rc;
    d->load_t0_ms = mq_now_ms();

    set_phase(d, "weights");
    mq_arena_opts ao;
    mq_arena_opts_default(&ao);
    ao.allow_hugetlb = d->cfg.hugepages != MQ_CFG_HUGE_OFF;
    ao.allow_thp = d->cfg.hugepages != MQ_CFG_HUGE_OFF;
    size_t planned = 0;
    reserve_auto(d, &planned);
    rc = mq_arena_create(&d->arena, &ao);
    if (rc) {
        snprintf(err, sizeof err, "arena: %s", strerror(-rc));
        goto out;
    }
    /* the whole model in one mapping, from the pages just reserved for it */
    if (planned && mq_arena_reserve(d->arena, planned) < 0)
        mqd_log("huge pages: auto: mapping %zu bytes up front failed; chunks instead", planned);
    mq_ws_opts wo;
    mq_ws_opts_default(&wo);
    wo.queue_depth = (int)d->cfg.io_depth;
    wo.read_bytes = (size_t)d->cfg.io_read_kib * 1024;
    wo.read_bytes = (wo.read_bytes + 4095) / 4096 * 4096;
    mq_ws_progress prog;
    memset(&prog, 0, sizeof prog);
    mq_ws_result wres;
    memset(&wres, 0, sizeof wres);
    ws_watch watch = { .d = d, .prog = &prog };
    int watching = pthread_create(&watch.th, NULL, ws_watch_main, &watch) == 0;
    rc = load_weights(d, &wo, &prog, &wres, err, sizeof err);
    if (watching) {
        __atomic_store_n(&watch.stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(watch.th, NULL);
    }
    uint64_t bd, bt, rd, rt;
    double rate;
    mq_ws_progress_get(&prog, &bd, &bt, &rd, &rt, &rate);
    __atomic_store_n(&d->load_bytes_done, bd, __ATOMIC_RELAXED);
    __atomic_store_n(&d->load_bytes_total, bt, __ATOMIC_RELAXED);
    if (rc)
        goto out;
    /* The last mapping is a whole chunk: unmapping its unused tail returns those hugetlb
     * pages to the pool before the KV segment is mapped from it. */
    mq_arena_trim(d->arena);
    char desc[256];
    mq_arena_describe(d->arena, desc, sizeof desc);
    if (d->cfg.hugepages == MQ_CFG_HUGE_REQUIRE) {
        mq_arena_stats as;
        mq_arena_stats_get(d->arena, &as);
        if (as.mapped[MQ_MEM_THP] || as.mapped[MQ_MEM_4K]) {
            snprintf(err, sizeof err,
                     "hugepages is \"require\" but the weights got %s (%ld huge pages free; "
                     "set hugepages_reserve, e.g. \"auto\", or raise nr_hugepages)",
                     desc, mq_hugepages_free());
            rc = -ENOMEM;
            goto out;
        }
    }
    /* a note longer than load_note is cut: it is shown in mqctl status, the log has it whole */
    snprintf(d->load_note, sizeof d->load_note, "%.120s%s%.120s", desc, wres.note[0] ? "; " : "", wres.note);
    mqd_log("weights: %.1f MiB in %.2f s (%.0f MiB/s); BF16 %.1f MiB, NVFP4 %.1f MiB; %s", bd / 1048576.0, wres.seconds,
            wres.seconds > 0 ? bd / 1048576.0 / wres.seconds : 0, d->model->bf16_bytes / 1048576.0,
            d->model->fp4_bytes / 1048576.0, d->load_note);

    set_phase(d, "tokenizer");
    rc = mq_tok_load_dir(d->cfg.model_dir, &d->tok, err, sizeof err);
    if (rc)
        goto out;
    mq_chat_kind kind;
    char cerr[256];
    if (mq_chat_detect(mq_tok_chat_template(d->tok), &kind, cerr, sizeof cerr) == 0)
        d->chat_kind = (int)kind;
    else
        mqd_log("chat sessions disabled: %s", cerr);

    set_phase(d, "scheduler");
    mq_sched_opts so;
    mq_sched_opts_default(&so);
    so.prefill_threads = d->cfg.prefill_threads ? (int)d->cfg.prefill_threads : count_cpus(d->cfg.prefill_cpus);
    so.decode_threads = d->cfg.decode_threads ? (int)d->cfg.decode_threads : count_cpus(d->cfg.decode_cpus);
    so.prefill_cpus = d->cfg.prefill_cpus[0] ? d->cfg.prefill_cpus : NULL;
    so.decode_cpus = d->cfg.decode_cpus[0] ? d->cfg.decode_cpus : NULL;
    so.chunk_tokens = (int)d->cfg.chunk_tokens;
    so.max_queued = (int)d->cfg.queue_max;
    so.max_sessions = (int)d->cfg.max_sessions;
    so.block_tokens = (int)d->cfg.kv_block_tokens;
    so.kv_blocks = (int)(d->cfg.kv_tokens / d->cfg.kv_block_tokens);
    int model_max = d->model->cfg.max_pos > 0 ? d->model->cfg.max_pos : CTX_DEFAULT_MAX;
    d->ctx_limit =
        d->cfg.ctx_tokens ? (int)d->cfg.ctx_tokens : (model_max < CTX_DEFAULT_MAX ? model_max : CTX_DEFAULT_MAX);
    if (d->ctx_limit > (int)d->cfg.kv_tokens)
        d->ctx_limit = (int)d->cfg.kv_tokens;
    so.context_limit = d->ctx_limit;
    so.mode = d->cfg.mode;
    so.on_kv_full = d->cfg.on_full == MQ_CFG_ON_FULL_WAIT ? MQ_KV_FULL_WAIT : MQ_KV_FULL_FAIL;
    so.kv_hugetlb = d->cfg.hugepages != MQ_CFG_HUGE_OFF;
    d->cfg.prefill_threads = (uint32_t)so.prefill_threads;
    d->cfg.decode_threads = (uint32_t)so.decode_threads;
    rc = mq_sched_create(&d->sched, d->model, d->tok, &so, err, sizeof err);
    if (rc)
        goto out;
    mq_sched_stats kst;
    mq_sched_get_stats(d->sched, &kst);
    long hp_free = mq_hugepages_free();
    if (d->cfg.hugepages == MQ_CFG_HUGE_REQUIRE && (!kst.kv_memory || strcmp(kst.kv_memory, "hugetlb"))) {
        snprintf(err, sizeof err,
                 "hugepages is \"require\" but the KV segment (%.1f MiB) got %s pages (%ld huge "
                 "pages free; set hugepages_reserve, e.g. \"auto\", or raise nr_hugepages)",
                 kst.kv_bytes / 1048576.0, kst.kv_memory ? kst.kv_memory : "?", hp_free);
        rc = -ENOMEM;
        goto out;
    }
    mqd_log("kv: segment %.1f MiB %s (%d blocks of %d tokens); huge pages free now %ld", kst.kv_bytes / 1048576.0,
            kst.kv_memory ? kst.kv_memory : "?", kst.kv_blocks, kst.block_tokens, hp_free < 0 ? 0 : hp_free);

    if (d->cfg.warmup) {
        set_phase(d, "warm-up");
        rc = warm_up(d, err, sizeof err);
        if (rc)
            goto out;
    }
    d->load_ms = mq_now_ms() - d->load_t0_ms;
out:
    res->rc = rc;
    snprintf(res->err, sizeof res->err, "%s", err[0] ? err : strerror(-rc));
    mq_evloop_post(d->loop, load_done, res);
    return NULL;
}

static void load_done(mq_evloop *l, void *arg)
{
    load_result *res = arg;
    mqd *d = res->d;
    int rc = res->rc;
    if (rc) {
        mq_errmsg(d->fail_msg, sizeof d->fail_msg, rc, "loading %s failed: %s", d->cfg.model_dir, res->err);
        free(res);
        mqd_log("%s", d->fail_msg);
        mqd_sd_notify(d, "STATUS=%s\nERRNO=%d", d->fail_msg, -rc);
        d->state = MQD_FAILED;
        d->exit_code = 1;
        mq_evloop_stop(l);
        return;
    }
    free(res);
    int pending_stop = d->state == MQD_STOPPING;
    d->state = MQD_READY;
    if (pending_stop) {
        mqd_begin_drain(d, "signal during load");
        return;
    }
    if (mq_evloop_add_fd(l, d->client_fd, POLLIN, mqd_client_accept, d, &d->client_ev)) {
        snprintf(d->fail_msg, sizeof d->fail_msg, "cannot watch the client socket");
        d->state = MQD_FAILED;
        d->exit_code = 1;
        mq_evloop_stop(l);
        return;
    }
    mqd_log("ready: model %s, mode %s, context %d tokens, %llu ms from start, client socket "
            "%s",
            d->model_name, mq_prec_mode_name(d->cfg.mode), d->ctx_limit,
            (unsigned long long)(mq_now_ms() - d->start_ms), d->client_sd ? "(from systemd)" : d->cfg.client_socket);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready: %s (%s), %llu ms load", d->model_name, mq_prec_mode_name(d->cfg.mode),
                  (unsigned long long)d->load_ms);
}

/* ---- drain and reload ---------------------------------------------------------- */
static void drain_done(mq_evloop *l, void *arg)
{
    mqd *d = arg;
    d->state = MQD_STOPPING;
    mqd_log("drain finished (%d request(s) cancelled); exiting", d->drain_cancelled);
    mqd_client_close_all(d);
    d->exit_code = 0;
    mq_evloop_stop(l);
}

static void *drain_main(void *arg)
{
    mqd *d = arg;
    int n = mq_sched_drain(d->sched, (int)d->cfg.drain_timeout_ms);
    d->drain_cancelled = n > 0 ? n : 0;
    mq_evloop_post(d->loop, drain_done, d);
    return NULL;
}

void mqd_begin_drain(mqd *d, const char *why)
{
    if (d->state == MQD_LOADING) {
        /* Nothing runs yet; stop as soon as the load thread returns. */
        d->state = MQD_STOPPING;
        mqd_log("%s while loading: will stop when the load finishes", why);
        mqd_sd_notify(d, "STOPPING=1\nSTATUS=stopping after load (%s)", why);
        return;
    }
    if (d->state != MQD_READY)
        return;
    d->state = MQD_DRAINING;
    mqd_log("%s: draining (up to %u ms), no new requests", why, d->cfg.drain_timeout_ms);
    mqd_sd_notify(d, "STOPPING=1\nSTATUS=draining (%s)", why);
    mq_evloop_del(d->loop, d->client_ev);
    d->client_ev = NULL;
    if (pthread_create(&d->drain_thread, NULL, drain_main, d) == 0)
        d->drain_started = 1;
    else
        drain_done(d->loop, d);
}

int mqd_reload(mqd *d, char *msg, size_t msglen)
{
    mqd_sd_notify(d, "RELOADING=1\nSTATUS=reloading configuration");
    mqd_config nc;
    char path[MQ_CFG_PATH], err[512];
    int rc = mqd_config_parse_args(&nc, path, sizeof path, d->argc, d->argv, NULL, NULL, err, sizeof err);
    if (!rc)
        rc = mqd_config_validate(&nc, err, sizeof err);
    if (rc) {
        mq_errmsg(msg, msglen, 0, "reload refused, configuration unchanged: %s", err);
        mqd_log("%s", msg);
        mqd_sd_notify(d, "READY=1\nSTATUS=ready (reload refused: %s)", err);
        return rc;
    }
    mqd_config old = d->cfg;
    /* What can change at run time: access control, drain timeout, watchdog. The rest needs
     * a restart and is reported. */
    memcpy(d->cfg.allowed_users, nc.allowed_users, sizeof nc.allowed_users);
    memcpy(d->cfg.allowed_groups, nc.allowed_groups, sizeof nc.allowed_groups);
    memcpy(d->cfg.admin_group, nc.admin_group, sizeof nc.admin_group);
    d->cfg.drain_timeout_ms = nc.drain_timeout_ms;
    d->cfg.watchdog = nc.watchdog;
    rc = mqd_resolve_ids(d, err, sizeof err);
    if (rc) {
        d->cfg = old;
        mqd_resolve_ids(d, err, 0);
        mq_errmsg(msg, msglen, 0, "reload refused, configuration unchanged: %s", err);
        mqd_sd_notify(d, "READY=1\nSTATUS=ready (reload refused)");
        return rc;
    }
    char restart[256] = "";
    nc.prefill_threads = d->cfg.prefill_threads; /* resolved values, not config changes */
    nc.decode_threads = d->cfg.decode_threads;
    mqd_config cmp = nc;
    memcpy(cmp.allowed_users, d->cfg.allowed_users, sizeof cmp.allowed_users);
    if (memcmp(&cmp.model_dir, &d->cfg.model_dir, sizeof cmp.model_dir) || cmp.mode != d->cfg.mode ||
        cmp.kv_tokens != d->cfg.kv_tokens || cmp.kv_block_tokens != d->cfg.kv_block_tokens ||
        cmp.chunk_tokens != d->cfg.chunk_tokens || strcmp(cmp.client_socket, d->cfg.client_socket) ||
        cmp.ctx_tokens != d->cfg.ctx_tokens)
        snprintf(restart, sizeof restart, "; model, mode, KV, chunk, context and socket changes need a restart");
    mq_errmsg(msg, msglen, 0, "reloaded %s: access lists, admin_group, drain_timeout_ms, watchdog%s",
              path[0] ? path : "(no config file)", restart);
    mqd_log("%s", msg);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready: %s (%s), reloaded", d->model_name, mq_prec_mode_name(d->cfg.mode));
    return 0;
}

static void on_signal(mq_evloop *l, int signo, void *arg)
{
    (void)l;
    mqd *d = arg;
    if (signo == SIGHUP) {
        char msg[512];
        mqd_reload(d, msg, sizeof msg);
        return;
    }
    mqd_begin_drain(d, signo == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- init / run / fini --------------------------------------------------------- */
int mqd_init(mqd *d, char *err, size_t errlen)
{
    d->client_fd = d->admin_fd = -1;
    d->chat_kind = -1;
    d->start_ms = mq_now_ms();
    d->under_systemd = getenv("NOTIFY_SOCKET") != NULL;
    snprintf(d->load_phase, sizeof d->load_phase, "starting");
    const char *base = strrchr(d->cfg.model_dir, '/');
    snprintf(d->model_name, sizeof d->model_name, "%.*s", (int)sizeof d->model_name - 1,
             base && base[1] ? base + 1 : d->cfg.model_dir);
    int rc = mqd_resolve_ids(d, err, errlen);
    if (rc)
        return rc;
    rc = mqd_sd_sockets(d, err, errlen);
    if (rc)
        return rc;
    rc = mqd_privs_setup(d, err, errlen);
    if (rc)
        return rc;
    if (d->client_fd < 0) {
        rc = bind_socket(d, d->cfg.client_socket, CLIENT_SOCKET_MODE, d->run_gid, err, errlen);
        if (rc < 0)
            return rc;
        d->client_fd = rc;
    }
    if (d->admin_fd < 0) {
        rc = bind_socket(d, d->cfg.admin_socket, ADMIN_SOCKET_MODE, d->admin_gid_set ? d->admin_gid : d->run_gid, err,
                         errlen);
        if (rc < 0)
            return rc;
        d->admin_fd = rc;
    }
    rc = mqd_privs_drop(d, err, errlen);
    if (rc)
        return rc;
    rc = mq_evloop_create(&d->loop, 512);
    if (rc) {
        return mq_errmsg(err, errlen, rc, "io_uring: %s", strerror(-rc));
    }
    static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };
    rc = mq_evloop_add_signals(d->loop, sigs, 3, on_signal, d);
    if (rc) {
        return mq_errmsg(err, errlen, rc, "signalfd: %s", strerror(-rc));
    }
    signal(SIGPIPE, SIG_IGN);
    rc = mq_evloop_add_fd(d->loop, d->admin_fd, POLLIN, mqd_admin_accept, d, &d->admin_ev);
    if (rc) {
        return mq_errmsg(err, errlen, rc, "watching the admin socket: %s", strerror(-rc));
    }
    mqd_sd_start_timers(d);
    mqd_sd_notify(d, "STATUS=loading %s", d->cfg.model_dir);
    rc = pthread_create(&d->load_thread, NULL, load_main, d);
    if (rc) {
        return mq_errmsg(err, errlen, -rc, "load thread: %s", strerror(rc));
    }
    d->load_started = 1;
    return 0;
}

int mqd_run(mqd *d)
{
    int rc = mq_evloop_run(d->loop);
    if (rc) {
        mqd_log("event loop failed: %s", strerror(-rc));
        d->exit_code = 1;
    }
    mqd_sd_notify(d, "STOPPING=1");
    return d->exit_code;
}

void mqd_fini(mqd *d)
{
    if (d->load_started)
        pthread_join(d->load_thread, NULL);
    if (d->drain_started)
        pthread_join(d->drain_thread, NULL);
    if (d->loop) {
        mq_evloop_run_posted(d->loop); /* e.g. load_done of a load that just finished */
        mqd_client_close_all(d);
        mqd_admin_close_all(d);
        mq_evloop_run_posted(d->loop);
    }
    if (d->sched) {
        mq_sched_destroy(d->sched);
        d->sched = NULL;
        if (d->loop)
            mq_evloop_run_posted(d->loop);
    }
    if (d->tok)
        mq_tok_free(d->tok);
    if (d->model)
        mq_model_free(d->model);
    if (d->arena)
        mq_arena_destroy(d->arena);
    if (d->loader) {
        struct loader *ld = d->loader;
        pthread_mutex_destroy(&ld->mu);
        for (int i = 0; i < ld->n_staging; i++)
            free(ld->staging[i]);
        free(ld->staging);
        free(ld);
    }
    mq_probes_stop(d->probes);
    if (d->client_fd >= 0) {
        close(d->client_fd);
        if (!d->client_sd)
            unlink(d->cfg.client_socket);
    }
    if (d->admin_fd >= 0) {
        close(d->admin_fd);
        if (!d->admin_sd)
            unlink(d->cfg.admin_socket);
    }
    mq_evloop_destroy(d->loop);
    d->loop = NULL;
    mqd_hugepages_giveback(d); /* last: weights and KV segment are unmapped by now */
}
