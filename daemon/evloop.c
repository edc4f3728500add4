/* daemon/evloop.c — io_uring event loop (see evloop.h).
 *
 * Every registration is one mq_ev, the user_data of its request in the ring. A request
 * that cannot get a submission slot right away (the ring refused to take more) is not
 * dropped: the handler waits on the `retry` list and is armed, or its request cancelled,
 * at the next turn of the loop, which then sleeps at most RETRY_MS; the log says so once
 * per handler.
 */
#define _GNU_SOURCE
#include "daemon/evloop.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "daemon/log.h"

#define RETRY_MS 10

/* io_uring futex opcodes (Linux 6.7); Debian 12's headers predate them. */
#define MQ_IORING_OP_FUTEX_WAIT   51
#define MQ_FUTEX2_SIZE_U32        0x02
#define MQ_FUTEX_BITSET_MATCH_ANY 0xffffffffu

enum kind { EV_FD = 1, EV_TIMER, EV_FUTEX };

struct mq_ev {
    enum kind kind;
    int fd;
    uint32_t events;
    union { /* by kind */
        mq_ev_fd_fn fd;
        mq_ev_fn timer;
        mq_ev_futex_fn futex;
    } cb;
    void *arg;
    struct __kernel_timespec ts;
    int armed;  /* the kernel holds a request with this handler as user_data */
    int dead;   /* deleted: no more callbacks; freed when !armed */
    int retry;  /* on the retry list: to arm (alive) or to cancel (dead) */
    int warned; /* the log said once that it waits for a slot */
    struct mq_ev *next_dead, *next_retry;
};

struct mq_evloop {
    struct io_uring ring;
    int stop;
    int has_futex;
    mq_ev_fn before_sleep;
    void *before_arg;
    /* posted calls */
    pthread_mutex_t post_lock;
    mq_ev_post *post_head, *post_tail;
    int post_efd;
    mq_ev *post_ev;
    /* signals */
    int sig_fd;
    mq_ev_signal_fn sig_fn;
    void *sig_arg;
    mq_ev *sig_ev;
    /* every live handler, so destroy can free them */
    mq_ev **all;
    int n_all, cap_all;
    mq_ev *dead;
    mq_ev *retry; /* waiting for a submission slot */
};

static struct io_uring_sqe *get_sqe(mq_evloop *l)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (!sqe) {
        io_uring_submit(&l->ring);
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

static int track(mq_evloop *l, mq_ev *ev)
{
    if (l->n_all == l->cap_all) {
        int cap = l->cap_all ? 2 * l->cap_all : 64;
        mq_ev **a = realloc(l->all, (size_t)cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        l->all = a;
        l->cap_all = cap;
    }
    l->all[l->n_all++] = ev;
    return 0;
}

static void untrack(mq_evloop *l, mq_ev *ev)
{
    for (int i = 0; i < l->n_all; i++)
        if (l->all[i] == ev) {
            l->all[i] = l->all[--l->n_all];
            return;
        }
}

static int arm(mq_evloop *l, mq_ev *ev)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    switch (ev->kind) {
    case EV_FD: io_uring_prep_poll_multishot(sqe, ev->fd, ev->events); break;
    case EV_TIMER: io_uring_prep_timeout(sqe, &ev->ts, 0, 0); break;
    case EV_FUTEX: return -EINVAL; /* armed by mq_evloop_futex_wait */
    }
    io_uring_sqe_set_data(sqe, ev);
    ev->armed = 1;
    return 0;
}

/* Asks the kernel to give a dead handler's request back; -EBUSY without a slot. */
static int cancel(mq_evloop *l, mq_ev *ev)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    if (ev->kind == EV_TIMER)
        io_uring_prep_timeout_remove(sqe, (__u64)(uintptr_t)ev, 0);
    else if (ev->kind == EV_FD)
        io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)ev);
    else
        io_uring_prep_cancel64(sqe, (__u64)(uintptr_t)ev, 0);
    io_uring_sqe_set_data(sqe, NULL);
    return 0;
}

static const char *kind_name(enum kind k)
{
    return k == EV_FD ? "fd handler" : k == EV_TIMER ? "timer" : "futex wait";
}

/* No slot now: arm (or cancel) at the next turn of the loop. */
static void retry_later(mq_evloop *l, mq_ev *ev)
{
    if (!ev->warned) {
        ev->warned = 1;
        mqd_log(LOG_WARNING, "event loop: no submission slot to %s a %s; retrying every %d ms",
                ev->dead ? "cancel" : "re-arm", kind_name(ev->kind), RETRY_MS);
    }
    if (ev->retry)
        return;
    ev->retry = 1;
    ev->next_retry = l->retry;
    l->retry = ev;
}

/* Before sleeping: the requests that found no slot earlier. */
static void run_retries(mq_evloop *l)
{
    mq_ev *list = l->retry;
    l->retry = NULL;
    while (list) {
        mq_ev *ev = list;
        list = ev->next_retry;
        ev->retry = 0;
        int rc = 0;
        if (ev->dead && ev->armed)
            rc = cancel(l, ev);
        else if (!ev->dead && !ev->armed)
            rc = arm(l, ev);
        if (rc)
            retry_later(l, ev);
        else if (ev->warned)
            mqd_log(LOG_NOTICE, "event loop: a %s got its slot after waiting", kind_name(ev->kind));
    }
}

static mq_ev *new_ev(mq_evloop *l, enum kind k, void *arg)
{
    mq_ev *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->kind = k;
    ev->arg = arg;
    ev->fd = -1;
    if (track(l, ev)) {
        free(ev);
        return NULL;
    }
    return ev;
}

/* Arms a new event; on failure it is forgotten and freed, and *out is untouched. */
static int start_ev(mq_evloop *l, mq_ev *ev, mq_ev **out)
{
    int rc = arm(l, ev);
    if (rc) {
        untrack(l, ev);
        free(ev);
        return rc;
    }
    if (out)
        *out = ev;
    return 0;
}

int mq_evloop_add_fd(mq_evloop *l, int fd, uint32_t events, mq_ev_fd_fn fn, void *arg, mq_ev **out)
{
    mq_ev *ev = new_ev(l, EV_FD, arg);
    if (!ev)
        return -ENOMEM;
    ev->fd = fd;
    ev->events = events;
    ev->cb.fd = fn;
    return start_ev(l, ev, out);
}

int mq_evloop_add_timer(mq_evloop *l, uint32_t interval_ms, mq_ev_fn fn, void *arg, mq_ev **out)
{
    mq_ev *ev = new_ev(l, EV_TIMER, arg);
    if (!ev)
        return -ENOMEM;
    ev->cb.timer = fn;
    ev->ts.tv_sec = interval_ms / 1000;
    ev->ts.tv_nsec = (long long)(interval_ms % 1000) * 1000000LL;
    return start_ev(l, ev, out);
}

void mq_evloop_del(mq_evloop *l, mq_ev *ev)
{
    if (!ev || ev->dead)
        return;
    ev->dead = 1;
    if (ev->armed && cancel(l, ev))
        retry_later(l, ev); /* until then its completions are dropped (dead) */
    ev->next_dead = l->dead;
    l->dead = ev;
}

int mq_evloop_futex_wait(mq_evloop *l, uint32_t *word, uint32_t val, mq_ev_futex_fn fn, void *arg)
{
    if (!l->has_futex)
        return -EOPNOTSUPP;
    mq_ev *ev = new_ev(l, EV_FUTEX, arg);
    if (!ev)
        return -ENOMEM;
    ev->cb.futex = fn;
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe) {
        untrack(l, ev);
        free(ev);
        return -EBUSY;
    }
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = MQ_IORING_OP_FUTEX_WAIT;
    sqe->fd = MQ_FUTEX2_SIZE_U32; /* futex2 flags: a 32-bit, shared (not private) futex */
    sqe->addr = (__u64)(uintptr_t)word;
    sqe->off = val;
    sqe->addr3 = MQ_FUTEX_BITSET_MATCH_ANY;
    io_uring_sqe_set_data(sqe, ev);
    ev->armed = 1;
    return 0;
}

int mq_evloop_has_futex(const mq_evloop *l)
{
    return l->has_futex;
}

/* ---- posted calls and signals (internal fd handlers) --------------------------- */
static void on_post(mq_evloop *l, int fd, uint32_t revents, void *arg)
{
    (void)revents;
    (void)arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
    mq_evloop_run_posted(l);
}

int mq_evloop_run_posted(mq_evloop *l)
{
    int n = 0;
    pthread_mutex_lock(&l->post_lock);
    mq_ev_post *p = l->post_head;
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->post_lock);
    while (p) {
        mq_ev_post *nx = p->next; /* fn may free an embedded node, or post it again */
        int owned = p->owned;
        p->fn(l, p->arg);
        if (owned)
            free(p);
        p = nx;
        n++;
    }
    return n;
}

static void post_enqueue(mq_evloop *l, mq_ev_post *p, mq_ev_fn fn, void *arg, int owned)
{
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    p->owned = owned;
    pthread_mutex_lock(&l->post_lock);
    if (l->post_tail)
        l->post_tail->next = p;
    else
        l->post_head = p;
    l->post_tail = p;
    pthread_mutex_unlock(&l->post_lock);
    uint64_t one = 1;
    ssize_t w = write(l->post_efd, &one, sizeof one);
    (void)w;
}

int mq_evloop_post(mq_evloop *l, mq_ev_fn fn, void *arg)
{
    mq_ev_post *p = malloc(sizeof *p);
    if (!p)
        return -ENOMEM;
    post_enqueue(l, p, fn, arg, 1);
    return 0;
}

void mq_evloop_post_node(mq_evloop *l, mq_ev_post *node, mq_ev_fn fn, void *arg)
{
    post_enqueue(l, node, fn, arg, 0);
}

void mq_evloop_stop(mq_evloop *l)
{
    __atomic_store_n(&l->stop, 1, __ATOMIC_SEQ_CST);
    uint64_t one = 1; /* wakes the loop; a full counter means it is awake already */
    ssize_t w = write(l->post_efd, &one, sizeof one);
    (void)w;
}

static void on_signalfd(mq_evloop *l, int fd, uint32_t revents, void *arg)
{
    (void)revents;
    (void)arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == sizeof si)
        if (l->sig_fn)
            l->sig_fn(l, (int)si.ssi_signo, l->sig_arg);
}

int mq_evloop_add_signals(mq_evloop *l, const int *signos, int n, mq_ev_signal_fn fn, void *arg)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++)
        sigaddset(&set, signos[i]);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (rc)
        return -rc;
    if (l->sig_fd >= 0)
        return -EBUSY;
    l->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (l->sig_fd < 0)
        return -errno;
    l->sig_fn = fn;
    l->sig_arg = arg;
    return mq_evloop_add_fd(l, l->sig_fd, POLLIN, on_signalfd, NULL, &l->sig_ev);
}

void mq_evloop_set_before_sleep(mq_evloop *l, mq_ev_fn fn, void *arg)
{
    l->before_sleep = fn;
    l->before_arg = arg;
}

/* ---- life cycle ---------------------------------------------------------------- */
static int probe_futex(mq_evloop *l)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(&l->ring);
    if (!p)
        return 0;
    int ok = p->last_op >= MQ_IORING_OP_FUTEX_WAIT && (p->ops[MQ_IORING_OP_FUTEX_WAIT].flags & IO_URING_OP_SUPPORTED);
    io_uring_free_probe(p);
    return ok;
}

int mq_evloop_create(mq_evloop **out, unsigned entries)
{
    mq_evloop *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->sig_fd = -1;
    l->post_efd = -1;
    pthread_mutex_init(&l->post_lock, NULL);
    int rc = io_uring_queue_init(entries ? entries : 256, &l->ring, 0);
    if (rc < 0) {
        pthread_mutex_destroy(&l->post_lock);
        free(l);
        return rc;
    }
    l->has_futex = probe_futex(l);
    l->post_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->post_efd < 0) {
        rc = -errno;
        mq_evloop_destroy(l);
        return rc;
    }
    rc = mq_evloop_add_fd(l, l->post_efd, POLLIN, on_post, NULL, &l->post_ev);
    if (rc) {
        mq_evloop_destroy(l);
        return rc;
    }
    *out = l;
    return 0;
}

static void reap_dead(mq_evloop *l)
{
    mq_ev **pp = &l->dead;
    while (*pp) {
        mq_ev *ev = *pp;
        if (!ev->armed && !ev->retry) {
            *pp = ev->next_dead;
            untrack(l, ev);
            free(ev);
        } else {
            pp = &ev->next_dead;
        }
    }
}

static void dispatch(mq_evloop *l, struct io_uring_cqe *cqe)
{
    mq_ev *ev = io_uring_cqe_get_data(cqe);
    if (!ev)
        return; /* completion of a remove/cancel request */
    int more = !!(cqe->flags & IORING_CQE_F_MORE);
    switch (ev->kind) {
    case EV_FD:
        if (!more)
            ev->armed = 0;
        if (ev->dead)
            return;
        if (cqe->res >= 0)
            ev->cb.fd(l, ev->fd, (uint32_t)cqe->res, ev->arg);
        else if (cqe->res != -ECANCELED)
            ev->cb.fd(l, ev->fd, POLLERR, ev->arg);
        break;
    case EV_TIMER:
        ev->armed = 0;
        if (ev->dead)
            return;
        if (cqe->res == -ETIME || cqe->res == 0)
            ev->cb.timer(l, ev->arg);
        break;
    case EV_FUTEX:
        ev->armed = 0;
        if (!ev->dead) {
            int res = cqe->res == -EAGAIN ? 0 : (cqe->res > 0 ? 0 : cqe->res);
            ev->cb.futex(l, res, ev->arg);
        }
        if (!ev->dead) { /* one-shot */
            ev->dead = 1;
            ev->next_dead = l->dead;
            l->dead = ev;
        }
        return;
    }
    if (!ev->dead && !ev->armed && arm(l, ev))
        retry_later(l, ev);
}

int mq_evloop_run(mq_evloop *l)
{
    while (!__atomic_load_n(&l->stop, __ATOMIC_SEQ_CST)) {
        if (l->before_sleep)
            l->before_sleep(l, l->before_arg);
        run_retries(l);
        int rc;
        if (l->retry) {
            struct __kernel_timespec ts = { 0, RETRY_MS * 1000000LL };
            struct io_uring_cqe *first;
            rc = io_uring_submit_and_wait_timeout(&l->ring, &first, 1, &ts, NULL);
        } else {
            rc = io_uring_submit_and_wait(&l->ring, 1);
        }
        if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY)
            return rc;
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&l->ring, head, cqe)
        {
            dispatch(l, cqe);
            n++;
        }
        io_uring_cq_advance(&l->ring, n);
        reap_dead(l);
    }
    return 0;
}

void mq_evloop_destroy(mq_evloop *l)
{
    if (!l)
        return;
    io_uring_queue_exit(&l->ring); /* cancels everything in flight */
    for (int i = 0; i < l->n_all; i++)
        free(l->all[i]);
    free(l->all);
    mq_ev_post *p = l->post_head; /* calls that never ran: free only the loop's own nodes */
    while (p) {
        mq_ev_post *n = p->next;
        if (p->owned)
            free(p);
        p = n;
    }
    if (l->post_efd >= 0)
        close(l->post_efd);
    if (l->sig_fd >= 0)
        close(l->sig_fd);
    pthread_mutex_destroy(&l->post_lock);
    free(l);
}
