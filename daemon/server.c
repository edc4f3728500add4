/* daemon/server.c — mqd's life cycle: init, run, fini, and the load thread (server.h).
 *
 * Start-up order (each step needs the one before):
 *   config -> named sockets from systemd -> privileged set-up (as root: memlock limit,
 *   huge page reservation with its give-back helper, BPF) -> bind own sockets -> drop
 *   privileges -> event loop + signals (blocked before any other thread exists, so every
 *   thread inherits the mask) -> load thread (weights via io_uring into the arena,
 *   tokenizer, scheduler, warm-up) -> prompt-preparation workers -> READY=1 and only then
 *   accept on the client socket.
 *   The admin socket is served during the load so `mqctl status` can show its progress.
 * Shutdown (control.c): SIGTERM/SIGINT/`mqctl drain` -> STOPPING=1, stop accepting, drain
 * thread -> close clients -> stop the loop; then mqd_fini frees everything and gives the
 * reserved huge pages back (also after a failed start) -> exit 0.
 */
#define _GNU_SOURCE
#include "daemon/server.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/errmsg.h"
#include "daemon/admin.h"
#include "daemon/client_conn.h"
#include "daemon/control.h"
#include "daemon/log.h"
#include "daemon/prep.h"
#include "daemon/privs.h"
#include "daemon/probes.h"
#include "daemon/sd.h"
#include "daemon/tenants.h"
#include "engine/arena.h"
#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "engine/weight_stream.h"

#define CLIENT_SOCKET_MODE 0666 /* access is decided by SO_PEERCRED against the config */
#define ADMIN_SOCKET_MODE  0660
#define LISTEN_BACKLOG     128
#define CTX_DEFAULT_MAX    32768
#define WARMUP_TIMEOUT_S   120
#define PROGRESS_MS        100 /* load progress copied for the status surfaces this often */

/* ---- sockets ------------------------------------------------------------------- */
/* Binds `field`'s socket path. A socket file left by a dead mqd is removed; a live mqd's
 * is not taken over, and nothing that is not a socket is ever removed. */
static int bind_socket(mqd *d, const char *field, const char *path, mode_t mode, gid_t group, char *err, size_t errlen)
{
    char dir[MQ_CFG_PATH];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir(dir, 0755) == 0 && geteuid() == 0)
            /* the run-as user unlinks the sockets at exit */
            if (chown(dir, d->run_uid, d->run_gid) < 0)
                mqd_log(LOG_WARNING, "chown %s: %s", dir, strerror(errno));
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        return mq_errmsg(err, errlen, -ENAMETOOLONG, "socket path %s is too long", path);
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return mq_errmsg(err, errlen, -EEXIST, "%s: %s exists and is not a socket; mqd does not remove it", field,
                         path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mq_errmsg(err, errlen, -errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(fd);
        return mq_errmsg(err, errlen, -EADDRINUSE, "%s: %s: another mqd is listening there", field, path);
    }
    close(fd);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(path, mode) < 0 ||
        listen(fd, LISTEN_BACKLOG) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return mq_errmsg(err, errlen, -e, "%s: binding %s: %s", field, path, strerror(e));
    }
    if (geteuid() == 0 && chown(path, d->run_uid, group) < 0)
        mqd_log(LOG_WARNING, "chown %s: %s", path, strerror(errno));
    return fd;
}

/* ---- the load thread: one function per phase ------------------------------------ */
/* phase: a string literal (the loop thread reads the pointer, mqd_load_phase) */
static void set_phase(mqd *d, const char *phase)
{
    __atomic_store_n(&d->load_phase, phase, __ATOMIC_RELEASE);
    mqd_log(LOG_INFO, "loading: %s", phase);
}

/* hugepages_reserve = "auto": weights + KV segment, counted before mapping them.
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
    if (!what || strncmp(what, "staging", 7)) /* staging never comes from the arena */
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

/* The model options of configuration c. The packed copy's plan counts the free huge
 * pages the arena will take weights from as memory the load may use (all of them: the
 * KV segment, made later, falls back to ordinary pages for what the weights took). */
static void model_opts_from_config(const mqd_config *c, mq_model_opts *mo)
{
    memset(mo, 0, sizeof *mo);
    mo->fp4_pack = c->fp4_pack;
    mo->fp4_table = c->fp4_table;
    const long free_pages = c->hugepages != MQ_CFG_HUGE_OFF ? mq_hugepages_free() : 0;
    mo->hugetlb_free = free_pages > 0 ? (size_t)free_pages * MQ_HUGEPAGE_BYTES : 0;
}

/* Reserves what weights + KV need (auto mode); the weights' bytes in *arena_bytes (0 when
 * not measured). The packed copy this plan counted pages for is the one the load makes:
 * *mo gets its outcome (ON/OFF), since the load's own plan, after the reservation, would
 * weigh the memory differently. Failures only cost the huge pages: the load goes on. */
static void reserve_auto(mqd *d, mq_model_opts *mo, size_t *arena_bytes)
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
    int rc = mq_model_plan(d->cfg.model_dir, mo, &al, &m, &reads, &n_reads, e, sizeof e);
    if (rc < 0) {
        mqd_log(LOG_WARNING, "huge pages: auto: cannot size the model (%s); nothing reserved", e);
        return; /* the real plan reports the same error */
    }
    int blocks = (int)(d->cfg.kv_tokens / d->cfg.kv_block_tokens);
    size_t stride = (mq_kv_block_bytes(&m->cfg, (int)d->cfg.kv_block_tokens) + 63) / 64 * 64;
    size_t kv = stride * (size_t)blocks;
    mo->fp4_pack = m->fp4_packed_bytes ? MQ_FP4_PACK_ON : MQ_FP4_PACK_OFF;
    mo->fp4_table = m->fp4_table ? MQ_FP4_PACK_ON : MQ_FP4_PACK_OFF;
    mq_model_free(m);
    char why[96];
    snprintf(why, sizeof why, "weights %.1f MiB + KV segment %.1f MiB", ms.arena_bytes / 1048576.0, kv / 1048576.0);
    if (mqd_hugepages_auto(d, (long)(pages_of(ms.arena_bytes) + pages_of(kv)), why) > 0)
        *arena_bytes = ms.arena_bytes;
}

/* Progress of the weight stream, copied into the context for the status surfaces. */
typedef struct ws_watch {
    mqd *d;
    mq_ws_progress *prog;
    int stop;
    pthread_t th;
} ws_watch;

static void copy_progress(mqd *d, const mq_ws_progress *prog)
{
    uint64_t bd, bt, rd, rt;
    double rate;
    mq_ws_progress_get(prog, &bd, &bt, &rd, &rt, &rate);
    __atomic_store_n(&d->load_bytes_done, bd, __ATOMIC_RELAXED);
    __atomic_store_n(&d->load_bytes_total, bt, __ATOMIC_RELAXED);
}

static void *ws_watch_main(void *arg)
{
    ws_watch *w = arg;
    while (!__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST)) {
        copy_progress(w->d, w->prog);
        usleep(PROGRESS_MS * 1000);
    }
    return NULL;
}

/* hugepages "require": memory of another kind is a start-up failure. */
static int check_weights_memory(mqd *d, const char *desc, char *err, size_t errlen)
{
    if (d->cfg.hugepages != MQ_CFG_HUGE_REQUIRE)
        return 0;
    mq_arena_stats as;
    mq_arena_stats_get(d->arena, &as);
    if (!as.mapped[MQ_MEM_THP] && !as.mapped[MQ_MEM_4K])
        return 0;
    return mq_errmsg(err, errlen, -ENOMEM,
                     "hugepages is \"require\" but the weights got %s (%ld huge pages free; "
                     "set hugepages_reserve, e.g. \"auto\", or raise nr_hugepages)",
                     desc, mq_hugepages_free());
}

void mqd_load_opts_from_config(const mqd_config *c, mq_arena_opts *ao, mq_ws_opts *wo)
{
    mq_arena_opts_default(ao);
    ao->allow_hugetlb = c->hugepages != MQ_CFG_HUGE_OFF;
    ao->allow_thp = c->hugepages != MQ_CFG_HUGE_OFF;
    mq_ws_opts_default(wo);
    wo->queue_depth = (int)c->io_depth;
    wo->read_bytes = ((size_t)c->io_read_kib * 1024 + 4095) / 4096 * 4096;
}

/* Phase "weights": the arena, then mq_ws_load_model (the loader tests and benchmarks run). */
static int load_weights(mqd *d, char *err, size_t errlen)
{
    mq_arena_opts ao;
    mq_ws_opts wo;
    mqd_load_opts_from_config(&d->cfg, &ao, &wo);
    mq_model_opts mo;
    model_opts_from_config(&d->cfg, &mo);
    size_t planned = 0;
    reserve_auto(d, &mo, &planned);
    mq_arena *arena;
    int rc = mq_arena_create(&arena, &ao);
    if (rc)
        return mq_errmsg(err, errlen, rc, "arena: %s", strerror(-rc));
    __atomic_store_n(&d->arena, arena, __ATOMIC_RELEASE); /* status reads it while loading */
    /* the whole model in one mapping, from the pages just reserved for it */
    if (planned && mq_arena_reserve(d->arena, planned) < 0)
        mqd_log(LOG_WARNING, "huge pages: auto: mapping %zu bytes up front failed; chunks instead", planned);
    wo.cancel = &d->load_cancel;
    mq_ws_progress prog;
    memset(&prog, 0, sizeof prog);
    mq_ws_result wres;
    memset(&wres, 0, sizeof wres);
    ws_watch watch = { .d = d, .prog = &prog };
    int watching = pthread_create(&watch.th, NULL, ws_watch_main, &watch) == 0;
    rc = mq_ws_load_model(d->cfg.model_dir, &mo, d->arena, &wo, &prog, &wres, &d->model, err, errlen);
    if (watching) {
        __atomic_store_n(&watch.stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(watch.th, NULL);
    }
    copy_progress(d, &prog);
    if (rc)
        return rc;
    /* The last mapping is a whole chunk: unmapping its unused tail returns those hugetlb
     * pages to the pool before the KV segment is mapped from it. */
    mq_arena_trim(d->arena);
    char desc[256];
    mq_arena_describe(d->arena, desc, sizeof desc);
    rc = check_weights_memory(d, desc, err, errlen);
    if (rc)
        return rc;
    /* a note longer than load_note is cut: it is shown in mqctl status, the log has it whole */
    snprintf(d->load_note, sizeof d->load_note, "%.120s%s%.120s", desc, wres.note[0] ? "; " : "", wres.note);
    double mb = __atomic_load_n(&d->load_bytes_done, __ATOMIC_RELAXED) / 1048576.0;
    const mq_model *m = d->model;
    mqd_log(LOG_INFO,
            "weights: %.1f MiB in %.2f s (%.0f MiB/s); BF16 %.1f MiB, NVFP4 %.1f MiB (+%.1f MiB packed, %s form); "
            "amax of %d quantized linears taken as the pieces arrived, %d by a pass after; %s",
            mb, wres.seconds, wres.seconds > 0 ? mb / wres.seconds : 0, m->bf16_bytes / 1048576.0,
            m->fp4_bytes / 1048576.0, m->fp4_packed_bytes / 1048576.0,
            !m->fp4_packed_bytes ? "no"
            : m->fp4_table       ? "table"
                                 : "index",
            m->amax_from_pieces, m->amax_from_pass, d->load_note);
    return 0;
}

/* Phase "tokenizer": tokenizer.json and the chat template it carries. */
static int load_tokenizer(mqd *d, char *err, size_t errlen)
{
    int rc = mq_tok_load_dir(d->cfg.model_dir, &d->tok, err, errlen);
    if (rc)
        return rc;
    /* every id the tokenizer can produce must be a row of the embedding and the LM head */
    int ids = mq_tok_vocab_size(d->tok);
    if (ids > d->model->cfg.vocab)
        return mq_errmsg(err, errlen, -EINVAL,
                         "%s/tokenizer.json: ids up to %d do not fit the model (config.json vocab_size %d): a "
                         "tokenizer of another model?",
                         d->cfg.model_dir, ids - 1, d->model->cfg.vocab);
    mq_chat_kind kind;
    char cerr[256];
    if (mq_chat_detect(mq_tok_chat_template(d->tok), &kind, cerr, sizeof cerr) == 0)
        d->chat_kind = (int)kind;
    else
        mqd_log(LOG_NOTICE, "chat sessions disabled: %s", cerr);
    return 0;
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

/* The scheduler's options from the configuration and the model (context limit). */
static void sched_opts_from_config(const mqd_config *c, const mq_model *m, mq_sched_opts *so, int *ctx_limit)
{
    mq_sched_opts_default(so);
    so->prefill_threads = c->prefill_threads ? (int)c->prefill_threads : count_cpus(c->prefill_cpus);
    so->decode_threads = c->decode_threads ? (int)c->decode_threads : count_cpus(c->decode_cpus);
    so->prefill_cpus = c->prefill_cpus[0] ? c->prefill_cpus : NULL;
    so->decode_cpus = c->decode_cpus[0] ? c->decode_cpus : NULL;
    so->chunk_tokens = (int)c->chunk_tokens;
    so->max_queued = (int)c->queue_max;
    so->max_sessions = (int)c->max_sessions;
    so->block_tokens = (int)c->kv_block_tokens;
    so->kv_blocks = (int)(c->kv_tokens / c->kv_block_tokens);
    int model_max = m->cfg.max_pos > 0 ? m->cfg.max_pos : CTX_DEFAULT_MAX;
    int ctx = c->ctx_tokens ? (int)c->ctx_tokens : (model_max < CTX_DEFAULT_MAX ? model_max : CTX_DEFAULT_MAX);
    if (ctx > (int)c->kv_tokens)
        ctx = (int)c->kv_tokens;
    so->context_limit = *ctx_limit = ctx;
    so->mode = c->mode;
    so->on_kv_full = c->on_full == MQ_CFG_ON_FULL_WAIT ? MQ_KV_FULL_WAIT : MQ_KV_FULL_FAIL;
    so->kv_hugetlb = c->hugepages != MQ_CFG_HUGE_OFF;
    so->share_prefix_cache = (int)c->share_prefix_cache;
    so->tenant_max_sessions = (int)c->max_sessions_per_uid;
    so->tenant_max_queued = (int)c->queue_max_per_uid;
    so->tenant_kv_blocks = (int)(c->kv_tokens_per_uid / c->kv_block_tokens);
}

/* Phase "scheduler": worker pools and the KV segment. */
static int load_scheduler(mqd *d, char *err, size_t errlen)
{
    mq_sched_opts so;
    sched_opts_from_config(&d->cfg, d->model, &so, &d->ctx_limit);
    d->load_threads[0] = so.prefill_threads; /* resolved; load_done shows them in cfg */
    d->load_threads[1] = so.decode_threads;
    int rc = mq_sched_create(&d->sched, d->model, d->tok, &so, err, errlen);
    if (rc)
        return rc;
    mq_sched_stats kst;
    mq_sched_get_stats(d->sched, &kst);
    long hp_free = mq_hugepages_free();
    if (d->cfg.hugepages == MQ_CFG_HUGE_REQUIRE && (!kst.kv_memory || strcmp(kst.kv_memory, "hugetlb")))
        return mq_errmsg(err, errlen, -ENOMEM,
                         "hugepages is \"require\" but the KV segment (%.1f MiB) got %s pages (%ld huge "
                         "pages free; set hugepages_reserve, e.g. \"auto\", or raise nr_hugepages)",
                         kst.kv_bytes / 1048576.0, kst.kv_memory ? kst.kv_memory : "?", hp_free);
    mqd_log(LOG_INFO, "kv: segment %.1f MiB %s (%d blocks of %d tokens); huge pages free now %ld",
            kst.kv_bytes / 1048576.0, kst.kv_memory ? kst.kv_memory : "?", kst.kv_blocks, kst.block_tokens,
            hp_free < 0 ? 0 : hp_free);
    return 0;
}

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

/* Phase "warm-up": one short generation so the first client does not pay for cold caches
 * and lazy allocations, and so READY=1 means "answers requests". */
static int warm_up(mqd *d, char *err, size_t errlen)
{
    uint64_t sid;
    int rc = mq_sched_session_open(d->sched, (uint32_t)geteuid(), &sid);
    if (rc)
        return mq_errmsg(err, errlen, rc, "warm-up: session: %s", strerror(-rc));
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
        else if (w.reason == MQ_SCHED_END_ERROR)
            rc = mq_errmsg(err, errlen, w.err ? w.err : -EIO, "warm-up failed: %s", w.msg);
    } else {
        mq_errmsg(err, errlen, 0, "warm-up: submit: %s", serr[0] ? serr : strerror(-rc));
    }
    mq_sched_session_close(d->sched, sid); /* waits for on_done if still running */
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

static void load_done(mq_evloop *l, void *arg);

/* Between phases: a stop asked meanwhile (SIGTERM while loading) ends the load. */
static int stopped(mqd *d, char *err, size_t errlen)
{
    if (!__atomic_load_n(&d->load_cancel, __ATOMIC_ACQUIRE))
        return 0;
    return mq_errmsg(err, errlen, -ECANCELED, "stopped while loading (%s)", d->load_phase);
}

static void *load_main(void *arg)
{
    mqd *d = arg;
    char *err = d->load_err;
    size_t errlen = sizeof d->load_err;
    set_phase(d, "weights");
    int rc = load_weights(d, err, errlen);
    if (!rc && !(rc = stopped(d, err, errlen))) {
        set_phase(d, "tokenizer");
        rc = load_tokenizer(d, err, errlen);
    }
    if (!rc && !(rc = stopped(d, err, errlen))) {
        set_phase(d, "scheduler");
        rc = load_scheduler(d, err, errlen);
    }
    if (!rc && !(rc = stopped(d, err, errlen)) && d->cfg.warmup) {
        set_phase(d, "warm-up");
        rc = warm_up(d, err, errlen);
    }
    d->load_ms = mq_now_ms() - d->load_t0_ms;
    d->load_rc = rc;
    if (rc && !err[0])
        mq_errmsg(err, errlen, 0, "%s", strerror(-rc));
    int prc = mq_evloop_post(d->loop, load_done, d);
    if (prc) {
        /* load_done will not run: say so and stop rather than stay LOADING forever */
        mqd_log(LOG_ERR, "cannot hand the load result to the event loop (%s); exiting", strerror(-prc));
        __atomic_store_n(&d->exit_code, 1, __ATOMIC_SEQ_CST);
        mq_evloop_stop(d->loop);
    }
    return NULL;
}

static void fail(mqd *d, int rc)
{
    mqd_log(LOG_ERR, "%s", d->fail_msg);
    mqd_sd_notify(d, "STATUS=%s\nERRNO=%d", d->fail_msg, rc < 0 ? -rc : rc);
    d->state = MQD_FAILED;
    d->exit_code = 1;
    mq_evloop_stop(d->loop);
}

/* Loop thread: the load thread's result. */
static void load_done(mq_evloop *l, void *arg)
{
    mqd *d = arg;
    int rc = d->load_rc;
    d->loaded = 1;
    if (d->load_threads[0] > 0) {
        d->cfg.prefill_threads = (uint32_t)d->load_threads[0];
        d->cfg.decode_threads = (uint32_t)d->load_threads[1];
    }
    if (d->state == MQD_STOPPING && (rc == 0 || rc == -ECANCELED)) {
        /* asked to stop while loading: nobody was served, nothing to drain */
        mqd_log(LOG_NOTICE, "stopped while loading (%s); exiting",
                rc ? mqd_load_phase(d) : "the load had just finished");
        d->exit_code = 0;
        mq_evloop_stop(l);
        return;
    }
    if (rc) {
        mq_errmsg(d->fail_msg, sizeof d->fail_msg, 0, "loading %s failed: %s", d->cfg.model_dir, d->load_err);
        fail(d, rc);
        return;
    }
    char perr[256];
    rc = mqd_prep_start(&d->prep, l, MQD_PREP_THREADS, perr, sizeof perr);
    if (rc) {
        mq_errmsg(d->fail_msg, sizeof d->fail_msg, 0, "%s", perr);
        fail(d, rc);
        return;
    }
    d->state = MQD_READY;
    rc = mq_evloop_add_fd(l, d->client_fd, POLLIN, mqd_client_accept, d, &d->client_ev);
    if (rc) {
        mq_errmsg(d->fail_msg, sizeof d->fail_msg, 0, "cannot watch the client socket: %s", strerror(-rc));
        fail(d, rc);
        return;
    }
    mqd_log(LOG_NOTICE, "ready: model %s, mode %s, context %d tokens, %llu ms from start, client socket %s",
            d->model_name, mq_prec_mode_name(d->cfg.mode), d->ctx_limit,
            (unsigned long long)(mq_now_ms() - d->start_ms), d->client_sd ? "(from systemd)" : d->cfg.client_socket);
    mqd_sd_notify(d, "READY=1\nSTATUS=ready: %s (%s), %llu ms load", d->model_name, mq_prec_mode_name(d->cfg.mode),
                  (unsigned long long)d->load_ms);
}

/* ---- init / run / fini --------------------------------------------------------- */
static int bind_own_sockets(mqd *d, char *err, size_t errlen)
{
    if (d->client_fd < 0) {
        int fd = bind_socket(d, "client_socket", d->cfg.client_socket, CLIENT_SOCKET_MODE, d->run_gid, err, errlen);
        if (fd < 0)
            return fd;
        d->client_fd = fd;
    }
    if (d->admin_fd < 0) {
        gid_t g = d->admin_gid_set ? d->admin_gid : d->run_gid;
        int fd = bind_socket(d, "admin_socket", d->cfg.admin_socket, ADMIN_SOCKET_MODE, g, err, errlen);
        if (fd < 0)
            return fd;
        d->admin_fd = fd;
    }
    return 0;
}

int mqd_init(mqd *d, char *err, size_t errlen)
{
    d->client_fd = d->admin_fd = d->client_spare = d->admin_spare = -1;
    d->chat_kind = -1;
    d->start_ms = mq_now_ms();
    d->under_systemd = getenv("NOTIFY_SOCKET") != NULL;
    d->load_phase = "starting";
    const char *base = strrchr(d->cfg.model_dir, '/');
    snprintf(d->model_name, sizeof d->model_name, "%.*s", (int)sizeof d->model_name - 1,
             base && base[1] ? base + 1 : d->cfg.model_dir);
    int rc = mqd_config_check_host(&d->cfg, err, errlen);
    if (!rc)
        rc = mqd_resolve_ids(d, err, errlen);
    if (!rc)
        rc = mqd_sd_sockets(d, err, errlen);
    if (!rc)
        rc = mqd_privs_setup(d, err, errlen);
    if (!rc)
        rc = bind_own_sockets(d, err, errlen);
    if (!rc)
        rc = mqd_privs_drop(d, err, errlen);
    if (rc)
        return rc;
    mqd_refuse_fds(d->client_fd);
    mqd_refuse_fds(d->admin_fd);
    mqd_spare_fd_reserve(&d->client_spare); /* privs.h and client_conn.c say why */
    mqd_spare_fd_reserve(&d->admin_spare);
    rc = mq_evloop_create(&d->loop, 512);
    if (rc)
        return mq_errmsg(err, errlen, rc, "io_uring: %s", strerror(-rc));
    rc = mqd_control_watch_signals(d, err, errlen);
    if (rc)
        return rc;
    signal(SIGPIPE, SIG_IGN);
    rc = mq_evloop_add_fd(d->loop, d->admin_fd, POLLIN, mqd_admin_accept, d, &d->admin_ev);
    if (rc)
        return mq_errmsg(err, errlen, rc, "watching the admin socket: %s", strerror(-rc));
    rc = mqd_sd_start_timers(d, err, errlen);
    if (rc)
        return rc;
    mqd_sd_notify(d, "STATUS=loading %s", d->cfg.model_dir);
    d->load_t0_ms = mq_now_ms();
    pthread_attr_t attr;
    if ((rc = mq_compute_thread_attr(&attr)))
        return mq_errmsg(err, errlen, rc, "load thread: %s", strerror(-rc));
    rc = pthread_create(&d->load_thread, &attr, load_main, d);
    pthread_attr_destroy(&attr);
    if (rc)
        return mq_errmsg(err, errlen, -rc, "load thread: %s", strerror(rc));
    d->load_started = 1;
    return 0;
}

int mqd_run(mqd *d)
{
    int rc = mq_evloop_run(d->loop);
    if (rc) {
        mqd_log(LOG_ERR, "event loop failed: %s", strerror(-rc));
        d->exit_code = 1;
    }
    mqd_sd_notify(d, "STOPPING=1");
    return __atomic_load_n(&d->exit_code, __ATOMIC_SEQ_CST);
}

static void close_listener(int fd, int from_systemd, const char *path)
{
    if (fd < 0)
        return;
    close(fd);
    if (!from_systemd)
        unlink(path);
}

void mqd_fini(mqd *d)
{
    if (d->load_started)
        pthread_join(d->load_thread, NULL);
    if (d->drain_started)
        pthread_join(d->drain_thread, NULL);
    mqd_prep_stop(d->prep); /* prompts in preparation are queued; their answers are posted */
    d->prep = NULL;
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
    mq_tok_free(d->tok);
    mqd_tenants_free(d);
    mq_model_free(d->model); /* frees through the arena: before it */
    mq_arena_destroy(d->arena);
    mq_probes_stop(d->probes);
    if (d->client_spare >= 0)
        close(d->client_spare);
    if (d->admin_spare >= 0)
        close(d->admin_spare);
    close_listener(d->client_fd, d->client_sd, d->cfg.client_socket);
    close_listener(d->admin_fd, d->admin_sd, d->cfg.admin_socket);
    mq_evloop_destroy(d->loop);
    d->loop = NULL;
    mqd_hugepages_giveback(d); /* last: weights and KV segment are unmapped by now */
}
