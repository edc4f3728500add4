/* engine/weight_stream.c — see weight_stream.h.
 *
 * The shape follows liburing's io_uring-cp example: keep the submission queue full,
 * resubmit short reads for the rest, account for every piece in flight. A piece is a
 * slot (user_data = slot index); buffered pieces read straight into the tensor's
 * destination, direct pieces into the slot's aligned bounce buffer.
 */
#define _GNU_SOURCE
#include "engine/weight_stream.h"
#include "engine/pool.h"
#include "common/errmsg.h"
#include "common/file.h"
#include "common/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WS_ALIGN 4096u /* O_DIRECT alignment (covers 512 and 4K sectors) */
/* mqd's io_depth and io_read_kib defaults (daemon/config.c takes them from here) */
#define WS_DEFAULT_QD   8
#define WS_DEFAULT_READ ((size_t)1 << 20)
#define WS_MAX_HELPERS  64

/* progress counters: read by other threads only for display, so no ordering */
#define RELAXED_LOAD(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define RELAXED_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define RELAXED_ADD(x, v)   __atomic_add_fetch(&(x), (v), __ATOMIC_RELAXED)

void mq_ws_opts_default(mq_ws_opts *o)
{
    memset(o, 0, sizeof *o);
    o->queue_depth = WS_DEFAULT_QD;
    o->read_bytes = WS_DEFAULT_READ;
    o->direct = MQ_WS_DIRECT_AUTO;
    o->helpers = MQ_WS_HELPERS_PER_CPU; /* the prefill pool's CPUs idle while weights load */
}

void mq_ws_progress_get(const mq_ws_progress *p, uint64_t *bytes_done, uint64_t *bytes_total, uint64_t *reads_done,
                        uint64_t *reads_total, double *rate_bps)
{
    uint64_t bd = RELAXED_LOAD(p->bytes_done), st = RELAXED_LOAD(p->start_ns), en = RELAXED_LOAD(p->end_ns);
    if (bytes_done)
        *bytes_done = bd;
    if (bytes_total)
        *bytes_total = RELAXED_LOAD(p->bytes_total);
    if (reads_done)
        *reads_done = RELAXED_LOAD(p->reads_done);
    if (reads_total)
        *reads_total = RELAXED_LOAD(p->reads_total);
    if (rate_bps) {
        uint64_t t = (en ? en : mq_now_ns()) - st;
        *rate_bps = st && t ? bd / (t * 1e-9) : 0;
    }
}

struct slot {
    int read;           /* index of the read this piece belongs to */
    uint64_t off;       /* file offset of the piece */
    uint32_t len, done; /* piece length, bytes arrived */
    uint8_t *buf;       /* destination (dst + delta, or the bounce buffer) */
    int busy;
};

struct ws {
    const mq_ws_read *reads;
    int n_reads;
    const char *const *paths;
    int *fds, *direct;
    mq_ws_opts o;
    mq_ws_ready_fn ready;
    void *ctx;
    mq_ws_progress *prog;
    mq_ws_result *res;
    uint64_t *remaining; /* per read: bytes still to arrive */

    /* ready queue for helpers */
    pthread_mutex_t mu;
    pthread_cond_t cv, done_cv;
    int *q, q_head, q_tail, q_closed, q_busy;
    int failed; /* set once; err holds the message */
    char err[512];
    double helpers_cpu_s; /* CPU time of the helpers that have exited (under mu) */
};

static void ws_fail(struct ws *w, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ws_fail(struct ws *w, int code, const char *fmt, ...)
{
    pthread_mutex_lock(&w->mu);
    if (!w->failed) {
        w->failed = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->err, sizeof w->err, fmt, ap);
        va_end(ap);
    }
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->done_cv);
    pthread_mutex_unlock(&w->mu);
}

static int ws_failed(struct ws *w)
{
    return __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
}

static void run_ready(struct ws *w, int i)
{
    char e[384] = "";
    int r = w->ready ? w->ready(w->ctx, i, e, sizeof e) : 0;
    if (r < 0) {
        const mq_ws_read *rd = &w->reads[i];
        ws_fail(w, r, "%s (tensor %s, %s at offset %llu): %s", e[0] ? e : "ready failed", rd->what ? rd->what : "?",
                w->paths[rd->file], (unsigned long long)rd->offset, strerror(-r));
        return;
    }
    RELAXED_ADD(w->prog->reads_done, 1);
}

static void *helper_main(void *arg)
{
    struct ws *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->q_head == w->q_tail && !w->q_closed && !w->failed)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->failed || w->q_head == w->q_tail)
            break;
        int i = w->q[w->q_head++];
        w->q_busy++;
        pthread_mutex_unlock(&w->mu);
        run_ready(w, i);
        pthread_mutex_lock(&w->mu);
        w->q_busy--;
        if (w->q_head == w->q_tail && !w->q_busy)
            pthread_cond_broadcast(&w->done_cv);
    }
    w->helpers_cpu_s += mq_thread_cpu_s(); /* a helper lives for one run */
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void deliver(struct ws *w, int i)
{
    if (w->o.helpers <= 0) {
        run_ready(w, i);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->q[w->q_tail++] = i; /* each read is delivered once: n_reads slots suffice */
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Fraction of the file's pages in the page cache (0..1), or -1 if unknown. */
static double cached_fraction(int fd, uint64_t size)
{
    if (size == 0)
        return 1;
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    long pg = sysconf(_SC_PAGESIZE);
    size_t n = (size + (size_t)pg - 1) / (size_t)pg;
    unsigned char *vec = malloc(n);
    double f = -1;
    if (vec && mincore(p, size, vec) == 0) {
        size_t in = 0;
        for (size_t i = 0; i < n; i++)
            in += vec[i] & 1;
        f = (double)in / (double)n;
    }
    free(vec);
    munmap(p, size);
    return f;
}

/* Appends "; what" to the result's note (what the caller logs beside the figures). */
static void note_add(mq_ws_result *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_add(mq_ws_result *res, const char *fmt, ...)
{
    size_t l = strlen(res->note);
    if (l && l + 2 < sizeof res->note) {
        memcpy(res->note + l, "; ", 3);
        l += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->note + l, sizeof res->note - l, fmt, ap);
    va_end(ap);
}

static int open_files(struct ws *w, int n_files, char *err, size_t errlen)
{
    for (int f = 0; f < n_files; f++) {
        int fd = mq_open_regular(w->paths[f], 0, err, errlen);
        if (fd < 0)
            return fd;
        struct stat st;
        if (fstat(fd, &st) < 0) {
            int e = errno;
            close(fd);
            return mq_errmsg(err, errlen, -e, "%s: stat: %s", w->paths[f], strerror(e));
        }
        int want = w->o.direct == MQ_WS_DIRECT_ON;
        if (w->o.direct == MQ_WS_DIRECT_AUTO) {
            double c = cached_fraction(fd, (uint64_t)st.st_size);
            want = c >= 0 && c < 0.5;
        }
        if (want) {
            int dfd = mq_open_regular(w->paths[f], O_DIRECT, NULL, 0);
            if (dfd >= 0) {
                close(fd);
                fd = dfd;
                w->direct[f] = 1;
            } else {
                note_add(w->res, "O_DIRECT refused on %s (%s): buffered reads", w->paths[f], strerror(-dfd));
            }
        }
        if (w->direct[f])
            w->res->direct_used++;
        else
            w->res->buffered_used++;
        w->fds[f] = fd;
    }
    return 0;
}

/* Piece generator: walks the reads in order; in direct files it walks the read's
 * aligned window. */
struct cursor {
    int read;
    uint64_t pos; /* next file offset to issue within the current read */
};

static uint64_t win_lo(const struct ws *w, const mq_ws_read *r)
{
    return w->direct[r->file] ? r->offset / WS_ALIGN * WS_ALIGN : r->offset;
}
static uint64_t win_hi(const struct ws *w, const mq_ws_read *r)
{
    uint64_t e = r->offset + r->bytes;
    return w->direct[r->file] ? (e + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN : e;
}

static void prep(struct ws *w, struct io_uring *ring, struct slot *s, int idx)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    const mq_ws_read *r = &w->reads[s->read];
    io_uring_prep_read(sqe, w->fds[r->file], s->buf + s->done, s->len - s->done, s->off + s->done);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    w->res->submits++;
}

/* A piece is complete: copy bounce bytes, account, deliver the read when whole. */
static void piece_done(struct ws *w, struct slot *s)
{
    const mq_ws_read *r = &w->reads[s->read];
    uint64_t lo = s->off > r->offset ? s->off : r->offset;
    uint64_t hi = s->off + s->len < r->offset + r->bytes ? s->off + s->len : r->offset + r->bytes;
    uint64_t n = hi > lo ? hi - lo : 0;
    if (w->direct[r->file] && n)
        memcpy((uint8_t *)r->dst + (lo - r->offset), s->buf + (lo - s->off), n);
    if (w->o.piece && n)
        w->o.piece(w->ctx, s->read, lo - r->offset, n);
    RELAXED_ADD(w->prog->bytes_done, n);
    w->remaining[s->read] -= n;
    if (w->remaining[s->read] == 0)
        deliver(w, s->read);
}

static int stream(struct ws *w, char *err, size_t errlen)
{
    int qd = w->o.queue_depth;
    struct io_uring ring;
    int r = io_uring_queue_init((unsigned)qd, &ring, 0);
    if (r < 0) {
        return mq_errmsg(err, errlen, r, "io_uring_queue_init(%d): %s", qd, strerror(-r));
    }
    struct slot *slots = calloc((size_t)qd, sizeof *slots);
    uint8_t *bounce = NULL;
    int any_direct = 0;
    for (int i = 0; i < w->n_reads; i++)
        any_direct |= w->direct[w->reads[i].file];
    if (any_direct && posix_memalign((void **)&bounce, WS_ALIGN, (size_t)qd * w->o.read_bytes))
        bounce = NULL;
    if (!slots || (any_direct && !bounce)) {
        free(slots);
        free(bounce);
        io_uring_queue_exit(&ring);
        return mq_errmsg(err, errlen, -ENOMEM, "weight stream: out of memory for %d slots", qd);
    }

    struct cursor c = { 0, 0 };
    while (c.read < w->n_reads && w->reads[c.read].bytes == 0)
        deliver(w, c.read++);
    if (c.read < w->n_reads)
        c.pos = win_lo(w, &w->reads[c.read]);
    int inflight = 0;
    while (!ws_failed(w) && (inflight > 0 || c.read < w->n_reads)) {
        if (w->o.cancel && __atomic_load_n(w->o.cancel, __ATOMIC_ACQUIRE)) {
            ws_fail(w, -ECANCELED, "loading stopped: cancelled");
            break;
        }
        /* fill every free slot */
        for (int i = 0; i < qd && c.read < w->n_reads; i++) {
            struct slot *s = &slots[i];
            if (s->busy)
                continue;
            const mq_ws_read *rd = &w->reads[c.read];
            uint64_t hi = win_hi(w, rd);
            uint64_t len = hi - c.pos < w->o.read_bytes ? hi - c.pos : w->o.read_bytes;
            *s = (struct slot){ .read = c.read, .off = c.pos, .len = (uint32_t)len, .busy = 1 };
            s->buf =
                w->direct[rd->file] ? bounce + (size_t)i * w->o.read_bytes : (uint8_t *)rd->dst + (c.pos - rd->offset);
            prep(w, &ring, s, i);
            inflight++;
            c.pos += len;
            if (c.pos >= hi) {
                c.read++;
                while (c.read < w->n_reads && w->reads[c.read].bytes == 0)
                    deliver(w, c.read++);
                if (c.read < w->n_reads)
                    c.pos = win_lo(w, &w->reads[c.read]);
            }
        }
        r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR) {
            ws_fail(w, r, "io_uring_submit: %s", strerror(-r));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            seen++;
            int idx = (int)io_uring_cqe_get_data64(cqe);
            struct slot *s = &slots[idx];
            const mq_ws_read *rd = &w->reads[s->read];
            int res = cqe->res;
            if (res < 0) {
                ws_fail(w, res, "%s: read of %u bytes at offset %llu (tensor %s) failed: %s", w->paths[rd->file],
                        s->len - s->done, (unsigned long long)(s->off + s->done), rd->what ? rd->what : "?",
                        strerror(-res));
                s->busy = 0;
                inflight--;
                continue;
            }
            s->done += (uint32_t)res;
            /* bytes this piece must deliver to its read (direct windows may pass EOF) */
            uint64_t need_end = rd->offset + rd->bytes < s->off + s->len ? rd->offset + rd->bytes : s->off + s->len;
            uint32_t need = (uint32_t)(need_end - s->off);
            if (s->done >= need || s->done == s->len) {
                s->busy = 0;
                inflight--;
                piece_done(w, s);
            } else if (res == 0 || (w->direct[rd->file] && (s->done % WS_ALIGN))) {
                /* O_DIRECT only returns short, unaligned counts at end of file */
                ws_fail(w, -EIO, "%s: unexpected end of file at offset %llu (tensor %s needs bytes up to %llu)",
                        w->paths[rd->file], (unsigned long long)(s->off + s->done), rd->what ? rd->what : "?",
                        (unsigned long long)(rd->offset + rd->bytes));
                s->busy = 0;
                inflight--;
            } else {
                w->res->short_reads++;
                prep(w, &ring, s, idx); /* the rest of the piece; submitted with the next batch */
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
    /* on failure, reap what is still in flight before freeing the buffers it targets */
    while (inflight > 0) {
        struct io_uring_cqe *cqe;
        if (io_uring_submit_and_wait(&ring, 1) < 0)
            break;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) seen++;
        io_uring_cq_advance(&ring, seen);
        inflight -= (int)seen;
    }
    io_uring_queue_exit(&ring);
    free(slots);
    free(bounce);
    return 0;
}

/* The caller's options with defaults and bounds applied. */
static void ws_opts_normalize(mq_ws_opts *o, const mq_ws_opts *given)
{
    if (given)
        *o = *given;
    else
        mq_ws_opts_default(o);
    mq_ws_opts def;
    mq_ws_opts_default(&def);
    if (o->queue_depth <= 0)
        o->queue_depth = def.queue_depth;
    if (o->read_bytes < WS_ALIGN)
        o->read_bytes = def.read_bytes;
    o->read_bytes = o->read_bytes / WS_ALIGN * WS_ALIGN;
    if (o->read_bytes > (1u << 30))
        o->read_bytes = 1u << 30;
    if (o->helpers < 0) { /* MQ_WS_HELPERS_PER_CPU */
        cpu_set_t cs;
        o->helpers = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : 1;
    }
    if (o->helpers > WS_MAX_HELPERS)
        o->helpers = WS_MAX_HELPERS;
}

static int ws_validate_reads(const mq_ws_read *reads, int n_reads, int n_files, char *err, size_t errlen)
{
    for (int i = 0; i < n_reads; i++)
        if (reads[i].file < 0 || reads[i].file >= n_files || (!reads[i].dst && reads[i].bytes))
            return mq_errmsg(err, errlen, -EINVAL, "weight stream: read %d (%s) has a bad file index or no destination",
                             i, reads[i].what ? reads[i].what : "?");
    return 0;
}

static void ws_progress_start(mq_ws_progress *prog, const mq_ws_read *reads, int n_reads)
{
    uint64_t total = 0;
    for (int i = 0; i < n_reads; i++)
        total += reads[i].bytes;
    RELAXED_STORE(prog->bytes_total, total);
    RELAXED_STORE(prog->bytes_done, 0);
    RELAXED_STORE(prog->reads_total, (uint64_t)n_reads);
    RELAXED_STORE(prog->reads_done, 0);
    RELAXED_STORE(prog->end_ns, 0);
    RELAXED_STORE(prog->start_ns, mq_now_ns());
}

/* The per-file and per-read tables; every fd entry is -1 (not open) until open_files. */
static int ws_alloc(struct ws *w, int n_files, char *err, size_t errlen)
{
    w->fds = malloc(((size_t)n_files + 1) * sizeof(int));
    if (w->fds)
        for (int f = 0; f < n_files; f++)
            w->fds[f] = -1;
    w->direct = calloc((size_t)n_files + 1, sizeof(int));
    w->remaining = malloc(((size_t)w->n_reads + 1) * sizeof(uint64_t));
    w->q = malloc(((size_t)w->n_reads + 1) * sizeof(int));
    if (!w->fds || !w->direct || !w->remaining || !w->q)
        return mq_errmsg(err, errlen, -ENOMEM, "weight stream: out of memory for %d files, %d reads", n_files,
                         w->n_reads);
    for (int i = 0; i < w->n_reads; i++)
        w->remaining[i] = w->reads[i].bytes;
    return 0;
}

static void ws_free(struct ws *w, int n_files)
{
    if (w->fds)
        for (int f = 0; f < n_files; f++)
            if (w->fds[f] >= 0)
                close(w->fds[f]);
    free(w->fds);
    free(w->direct);
    free(w->remaining);
    free(w->q);
}

/* Starts the helper threads that run ready(); returns how many run. A thread that cannot
 * be started is said in the result's note: the load goes on with fewer (none: ready()
 * runs on the caller's thread). */
static int ws_start_helpers(struct ws *w, pthread_t *th)
{
    int n_th = 0;
    for (int i = 0; i < w->o.helpers; i++) {
        pthread_attr_t attr;
        int rc = -mq_compute_thread_attr(&attr);
        const char *what = "thread attributes";
        if (rc == 0) {
            what = "pthread_create";
            rc = pthread_create(&th[n_th], &attr, helper_main, w);
            pthread_attr_destroy(&attr);
        }
        if (rc != 0) {
            note_add(w->res, "%d of %d quantize threads (%s: %s)", n_th, w->o.helpers, what, strerror(rc));
            break;
        }
        if (w->o.helper_cpus)
            pthread_setaffinity_np(th[n_th], sizeof(cpu_set_t), (const cpu_set_t *)w->o.helper_cpus);
        pthread_setname_np(th[n_th], "mq-quantize");
        n_th++;
    }
    if (w->o.helpers > 0 && n_th == 0)
        w->o.helpers = 0; /* no threads: run ready inline */
    return n_th;
}

/* Lets the helpers drain the ready queue, joins them, and turns what failed into r. */
static int ws_finish(struct ws *w, pthread_t *th, int n_th, int r, char *err, size_t errlen)
{
    pthread_mutex_lock(&w->mu);
    w->q_closed = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n_th; i++)
        pthread_join(th[i], NULL);
    if (r == 0 && w->failed) {
        r = w->failed;
        mq_errmsg(err, errlen, 0, "%s", w->err);
    }
    uint64_t done = RELAXED_LOAD(w->prog->reads_done);
    if (r == 0 && done != (uint64_t)w->n_reads)
        r = mq_errmsg(err, errlen, -EIO, "weight stream: only %llu of %d reads completed", (unsigned long long)done,
                      w->n_reads);
    return r;
}

int mq_ws_run(const char *const *paths, int n_files, const mq_ws_read *reads, int n_reads, const mq_ws_opts *o,
              mq_ws_ready_fn ready, void *ctx, mq_ws_progress *prog, mq_ws_result *res, char *err, size_t errlen)
{
    char local_err[MQ_ERRMSG_LEN];
    if (!err) {
        err = local_err;
        errlen = sizeof local_err;
    }
    err[0] = 0;
    mq_ws_progress lprog;
    mq_ws_result lres;
    if (!prog)
        prog = &lprog;
    if (!res)
        res = &lres;
    memset(res, 0, sizeof *res);
    struct ws w = {
        .reads = reads, .n_reads = n_reads, .paths = paths, .ready = ready, .ctx = ctx, .prog = prog, .res = res
    };
    ws_opts_normalize(&w.o, o);
    int r = ws_validate_reads(reads, n_reads, n_files, err, errlen);
    if (r < 0)
        return r;
    ws_progress_start(prog, reads, n_reads);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    pthread_cond_init(&w.done_cv, NULL);
    r = ws_alloc(&w, n_files, err, errlen);
    if (r == 0)
        r = open_files(&w, n_files, err, errlen);
    if (r == 0) {
        pthread_t th[WS_MAX_HELPERS];
        const double p0 = mq_process_cpu_s(), s0 = mq_thread_cpu_s();
        int n_th = ws_start_helpers(&w, th);
        uint64_t t0 = mq_now_ns();
        r = stream(&w, err, errlen);
        r = ws_finish(&w, th, n_th, r, err, errlen);
        res->seconds = (mq_now_ns() - t0) * 1e-9;
        res->cpu_stream_s = mq_thread_cpu_s() - s0;
        res->cpu_helpers_s = w.helpers_cpu_s;
        res->cpu_process_s = mq_process_cpu_s() - p0;
    }
    RELAXED_STORE(prog->end_ns, mq_now_ns());
    ws_free(&w, n_files);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_cond_destroy(&w.done_cv);
    return r;
}
