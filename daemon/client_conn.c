/* daemon/client_conn.c — one client connection: the wire protocol (ipc/wire.h), its shared
 * memory channel (ipc/channel.h) and the scheduler sinks that stream tokens into it.
 *
 * Life of a connection (event loop thread unless said otherwise):
 *   accept -> SO_PEERCRED check -> HELLO (version, client's eventfd) -> HELLO_OK + memfd
 *   -> OPEN/SUBMIT/CANCEL/STATS/CLOSE ... -> hang-up: every session is closed in the
 *   scheduler (cancelling its request, freeing its KV blocks).
 * A message that does not decode gets ERROR(MQ_ERR_PROTOCOL) and closes this connection
 * only.
 *
 * Threads: a SUBMIT is answered by a prep worker's result (daemon/prep.h): the worker
 * renders and tokenizes the prompt from a copy of what it needs and queues the request in
 * the scheduler; the loop only copies the prompt out of the ring and answers. The sink
 * callbacks (on_token/on_done) run on the scheduler's driver threads. They touch only the
 * channel's token ring and the spill buffer, under conn->tx_lock, and hand everything
 * else to the loop with mq_evloop_post(). The connection is reference counted (one ref for
 * the open socket, one per unfinished request, one per prompt in preparation, one per
 * pending flush), so the channel stays mapped until the last callback is over.
 *
 * Back-pressure: when the client does not read and its token ring is full, records go to
 * a bounded spill buffer; the loop then waits (io_uring FUTEX_WAIT) on the ring's tail word
 * for the client to consume, and flushes. A request whose spill would pass
 * SPILL_RING_FACTOR ring sizes is cancelled instead of growing memory.
 */
#define _GNU_SOURCE
#include "daemon/client_conn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/errmsg.h"
#include "daemon/log.h"
#include "daemon/prep.h"
#include "daemon/privs.h"
#include "daemon/tenants.h"
#include "engine/chat_template.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "ipc/channel.h"
#include "ipc/sock.h"
#include "ipc/wire.h"

#define SPILL_RING_FACTOR 4

typedef struct mqd_req mqd_req;

typedef struct mqd_sess {
    uint64_t id;        /* the scheduler's session id (also the wire id) */
    int mode;           /* MQ_WIRE_MODE_* */
    int turns;          /* requests started */
    int end_in_session; /* the last reply ended with the end-of-turn token */
    cJSON *pending;     /* chat: system messages waiting for the next user/tool message */
    mqd_req *running;
    int preparing; /* its SUBMIT is with a prep worker (not answered yet) */
} mqd_sess;

struct mqd_req {
    struct mqd_conn *conn;
    uint64_t id, session;
    int no_special_text;
    int overflow;     /* driver thread only */
    int cancel_asked; /* atomic: the client, mqctl or the spill limit cancelled it */
    int end_stop;     /* set before done */
    int done;         /* atomic: on_done ran */
    int holders;      /* loop thread: its prep job and its end (finish_req); the last frees it */
    double t_recv;    /* the SUBMIT's arrival (mq_now_s) */
    double prep_s;    /* arrival -> the scheduler queued it: counted in queue and TTFT */
    /* the loop calls the driver thread posts for it: embedded, so posting cannot fail
     * (a lost finish_req would leave the session running and leak r and its conn) */
    mq_ev_post post_cancel, post_finish;
};

typedef struct mqd_conn {
    mqd *d;
    struct mqd_conn *prev, *next;
    int fd;
    mq_ev *ev;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    int hello_done;
    int denied;         /* answer the first message with ERROR(deny_code, deny_msg), close */
    unsigned deny_code; /* MQ_ERR_DENIED (SO_PEERCRED refused) or MQ_ERR_LIMIT (no fds) */
    char deny_msg[256];
    int holds_spare; /* accepted in the slot of d->client_spare (privs.h) */
    int closing;
    int refs; /* atomic */
    mq_chan chan;
    int chan_ok;
    pthread_mutex_t tx_lock;
    uint8_t *spill;
    size_t spill_len, spill_cap;
    int flush_armed; /* under tx_lock */
    int corrupt;     /* under tx_lock: the client's token ring tail was impossible */
    mq_ev *flush_timer;
    mqd_sess *sess;
    int n_sess, cap_sess;
} mqd_conn;

/* ---- references ---------------------------------------------------------------- */
static void conn_ref(mqd_conn *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
}

static void conn_unref(mqd_conn *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST))
        return;
    if (c->chan.token.efd >= 0)
        close(c->chan.token.efd); /* the wake pipe's write end */
    if (c->chan_ok)
        mq_chan_unmap(&c->chan);
    pthread_mutex_destroy(&c->tx_lock);
    free(c->spill);
    free(c->sess);
    free(c);
}

/* ---- replies ------------------------------------------------------------------- */
static void conn_close(mqd_conn *c, const char *why);

static int send_reply(mqd_conn *c, mq_msg *m, uint32_t seq, const int *fds, int n_fds)
{
    uint8_t buf[MQ_WIRE_MAX_MSG];
    m->seq = seq;
    int n = mq_wire_encode(m, buf, sizeof buf);
    if (n < 0)
        return n;
    /* Replies are small and one per request: a full socket buffer means the client does not
     * read its socket at all; it is dropped rather than blocking the loop. */
    return mq_sock_send(c->fd, buf, (size_t)n, fds, n_fds, MSG_DONTWAIT);
}

static void send_error(mqd_conn *c, uint32_t seq, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void send_error(mqd_conn *c, uint32_t seq, unsigned code, const char *fmt, ...)
{
    mq_msg m = { .type = MQ_MSG_ERROR };
    m.u.error.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m.u.error.text, sizeof m.u.error.text, fmt, ap);
    va_end(ap);
    send_reply(c, &m, seq, NULL, 0);
}

/* ---- token ring writer (any thread) -------------------------------------------- */
static void arm_flush(mq_evloop *l, void *arg);

/* Loop thread: the client wrote an impossible tail into its token ring's control block. */
static void close_corrupt(mq_evloop *l, void *arg)
{
    (void)l;
    mqd_conn *c = arg;
    if (!c->closing) {
        mqd_log_limited(&c->d->client_log, LOG_WARNING,
                        "client pid %d uid %u: its token ring's tail is impossible; closing its connection",
                        (int)c->pid, (unsigned)c->uid);
        send_error(c, 0, MQ_ERR_PROTOCOL, "the token ring's control block was overwritten");
        conn_close(c, "corrupt ring");
    }
    conn_unref(c);
}

/* Free bytes of the token ring, validating what the client published (its tail lives in
 * memory it can write): -EPROTO once it is impossible, and the connection is closed from
 * the loop. Caller holds tx_lock. */
static int64_t ring_space(mqd_conn *c)
{
    int64_t space = mq_ring_space(&c->chan.token);
    if (space < 0 && !c->corrupt) {
        c->corrupt = 1;
        conn_ref(c);
        if (mq_evloop_post(c->d->loop, close_corrupt, c))
            __atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST); /* never the last ref here */
    }
    return space;
}

/* Copies whole spilled records into the ring; caller holds tx_lock. */
static void flush_locked(mqd_conn *c)
{
    size_t off = 0;
    int wrote = 0;
    while (off < c->spill_len) {
        mq_chan_rec h;
        memcpy(&h, c->spill + off, sizeof h);
        int64_t space = ring_space(c);
        if (space < (int64_t)h.size)
            break;
        mq_ring_write(&c->chan.token, c->spill + off, h.size);
        off += h.size;
        wrote = 1;
    }
    if (off) {
        memmove(c->spill, c->spill + off, c->spill_len - off);
        c->spill_len -= off;
    }
    if (wrote)
        mq_ring_publish(&c->chan.token);
}

/* Returns 0, -ENOBUFS when the record was dropped (spill limit; `must` records are never
 * dropped), or -EPROTO when the client corrupted its ring (the connection is closing). */
static int push_rec(mqd_conn *c, const uint8_t *rec, uint32_t n, int must)
{
    int rc = 0;
    pthread_mutex_lock(&c->tx_lock);
    int64_t space = ring_space(c);
    if (space < 0) {
        rc = -EPROTO;
        goto out;
    }
    if (c->spill_len == 0 && space >= (int64_t)n) {
        mq_ring_write(&c->chan.token, rec, n);
        mq_ring_publish(&c->chan.token);
        goto out;
    }
    size_t limit = (size_t)c->chan.token.size * SPILL_RING_FACTOR;
    if (!must && c->spill_len + n > limit) {
        rc = -ENOBUFS;
        goto out;
    }
    if (c->spill_len + n > c->spill_cap) {
        size_t cap = c->spill_cap ? c->spill_cap : 65536;
        while (cap < c->spill_len + n)
            cap *= 2;
        uint8_t *p = realloc(c->spill, cap);
        if (!p) {
            rc = -ENOMEM;
            goto out;
        }
        c->spill = p;
        c->spill_cap = cap;
    }
    memcpy(c->spill + c->spill_len, rec, n);
    c->spill_len += n;
    if (!c->flush_armed) {
        c->flush_armed = 1;
        conn_ref(c);
        if (mq_evloop_post(c->d->loop, arm_flush, c)) {
            c->flush_armed = 0;
            __atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST); /* never the last ref here */
        }
    }
out:
    pthread_mutex_unlock(&c->tx_lock);
    return rc;
}

static void flush_timer_cb(mq_evloop *l, void *arg);

static void on_tail_wake(mq_evloop *l, int res, void *arg)
{
    (void)res;
    arm_flush(l, arg);
}

/* Loop thread, holding one ref that this chain of callbacks owns. */
static void arm_flush(mq_evloop *l, void *arg)
{
    mqd_conn *c = arg;
    /* The waiter owns the flag (ipc/ring.h): set before the re-check, cleared here when
     * the wait ends; the client's consume only reads it. */
    mq_ring_ctl *ctl = c->chan.token.ctl;
    pthread_mutex_lock(&c->tx_lock);
    if (!c->closing)
        flush_locked(c);
    if (c->closing || c->corrupt || c->spill_len == 0) {
        c->flush_armed = 0;
        if (c->chan_ok)
            __atomic_store_n(&ctl->tail_waiters, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&c->tx_lock);
        conn_unref(c);
        return;
    }
    __atomic_store_n(&ctl->tail_waiters, 1, __ATOMIC_SEQ_CST);
    uint32_t seen = __atomic_load_n(&ctl->tail, __ATOMIC_SEQ_CST);
    flush_locked(c); /* the client may have consumed before it saw the flag */
    int empty = c->spill_len == 0;
    if (empty) {
        c->flush_armed = 0;
        __atomic_store_n(&ctl->tail_waiters, 0, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&c->tx_lock);
    if (empty) {
        conn_unref(c);
        return;
    }
    if (mq_evloop_futex_wait(l, &ctl->tail, seen, on_tail_wake, c) == 0)
        return;
    /* Kernel without io_uring futexes: look again in a few milliseconds. */
    if (mq_evloop_add_timer(l, 5, flush_timer_cb, c, &c->flush_timer)) {
        pthread_mutex_lock(&c->tx_lock);
        c->flush_armed = 0;
        pthread_mutex_unlock(&c->tx_lock);
        conn_unref(c);
    }
}

static void flush_timer_cb(mq_evloop *l, void *arg)
{
    mqd_conn *c = arg;
    mq_evloop_del(l, c->flush_timer);
    c->flush_timer = NULL;
    arm_flush(l, c);
}

/* Loop thread, r still running. The scheduler reports every cancel as CANCEL; the ones
 * asked here are the client's (or mqctl's); any other is the drain's (sink_done). */
static void cancel_request(mqd *d, mqd_req *r)
{
    __atomic_store_n(&r->cancel_asked, 1, __ATOMIC_SEQ_CST);
    mq_sched_cancel(d->sched, r->session, MQ_SCHED_END_CANCEL);
}

/* ---- sinks (driver threads) ---------------------------------------------------- */
static void cancel_overflowed(mq_evloop *l, void *arg)
{
    (void)l;
    mqd_req *r = arg; /* alive: its on_done has not run (done is posted after this) */
    cancel_request(r->conn->d, r);
}

static void sink_token(void *ctx, int32_t id, const char *text, size_t len)
{
    mqd_req *r = ctx;
    mqd_conn *c = r->conn;
    if (r->overflow)
        return;
    uint32_t flags = 0;
    if (c->d->tok && mq_tok_is_special(c->d->tok, id)) {
        flags |= MQ_REC_SPECIAL;
        if (r->no_special_text)
            len = 0;
    }
    if (len > 4096)
        len = 4096; /* one token's text is far smaller; keep records bounded */
    uint8_t rec[sizeof(mq_chan_rec) + 4096 + 8];
    int n = mq_chan_format_token(rec, sizeof rec, r->id, id, flags, text, (uint32_t)len);
    if (n < 0)
        return;
    int rc = push_rec(c, rec, (uint32_t)n, 0);
    if (rc == -ENOBUFS) {
        r->overflow = 1;
        mq_evloop_post_node(c->d->loop, &r->post_cancel, cancel_overflowed, r);
    } else if (rc == -EPROTO) {
        r->overflow = 1; /* nothing more for this ring; the connection is closing */
    }
}

static void finish_req(mq_evloop *l, void *arg);

static uint32_t wire_err_of(int err)
{
    switch (err) {
    case -E2BIG: return MQ_ERR_TOO_LONG;
    case -ENOSPC: return MQ_ERR_KV_FULL;
    case -ESHUTDOWN: return MQ_ERR_DRAINING;
    case -EAGAIN: return MQ_ERR_LIMIT;
    case -EBUSY: return MQ_ERR_BUSY;
    case -ENOENT: return MQ_ERR_NO_SESSION;
    case -EINVAL: return MQ_ERR_BAD_PROMPT;
    default: return MQ_ERR_INTERNAL;
    }
}

static void sink_done(void *ctx, mq_sched_end_reason reason, int err, const char *msg, const mq_sched_req_stats *st)
{
    mqd_req *r = ctx;
    mqd_conn *c = r->conn;
    mq_chan_done d = { 0 };
    switch (reason) {
    case MQ_SCHED_END_STOP_TOKEN: d.end_reason = MQ_CHAN_END_STOP; break;
    case MQ_SCHED_END_STOP_STRING: d.end_reason = MQ_CHAN_END_STOP_STRING; break;
    case MQ_SCHED_END_LENGTH: d.end_reason = MQ_CHAN_END_LENGTH; break;
    case MQ_SCHED_END_CANCEL:
        if (__atomic_load_n(&r->cancel_asked, __ATOMIC_SEQ_CST)) {
            d.end_reason = MQ_CHAN_END_CANCEL;
            break;
        }
        /* nobody here asked: the drain cut it off (drain_timeout_ms) */
        d.end_reason = MQ_CHAN_END_SHUTDOWN;
        d.error = MQ_ERR_DRAINING;
        msg = "mqd is shutting down: the request did not finish within drain_timeout_ms";
        break;
    case MQ_SCHED_END_CLIENT_GONE: d.end_reason = MQ_CHAN_END_CANCEL; break;
    default:
        d.end_reason = err == -ESHUTDOWN ? MQ_CHAN_END_SHUTDOWN : MQ_CHAN_END_ERROR;
        d.error = (int32_t)wire_err_of(err);
        break;
    }
    if (r->overflow && d.end_reason == MQ_CHAN_END_CANCEL) {
        d.end_reason = MQ_CHAN_END_ERROR;
        d.error = MQ_ERR_LIMIT;
        msg = "client did not read its token ring; request cancelled";
    }
    if (st) {
        d.prompt_tokens = (uint32_t)st->prompt_tokens;
        d.cached_tokens = (uint32_t)st->cached_tokens;
        d.prefilled_tokens = (uint32_t)st->prefilled_tokens;
        d.gen_tokens = (uint32_t)st->generated_tokens;
        /* from the SUBMIT's arrival: its rendering and tokenizing are mqd's time too */
        d.queue_us = (uint64_t)((st->queue_ms / 1e3 + r->prep_s) * 1e6);
        d.ttft_us = st->ttft_ms > 0 ? (uint64_t)((st->ttft_ms / 1e3 + r->prep_s) * 1e6) : 0;
        d.prefill_us = st->prefill_tok_s > 0 ? (uint64_t)(st->prefilled_tokens / st->prefill_tok_s * 1e6) : 0;
        d.decode_us = st->decode_tok_s > 0 && st->generated_tokens > 1
                          ? (uint64_t)((st->generated_tokens - 1) / st->decode_tok_s * 1e6)
                          : 0;
    }
    r->end_stop = reason == MQ_SCHED_END_STOP_TOKEN;
    /* done before the client can see DONE: a SUBMIT that follows it finds the session
     * free (settle()). r and its conn ref live until finish_req, posted last. */
    __atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
    size_t ml = msg ? strlen(msg) : 0;
    if (ml > 1024)
        ml = 1024;
    uint8_t rec[sizeof(mq_chan_rec) + sizeof(mq_chan_done) + 1024 + 8];
    int n = mq_chan_format_done(rec, sizeof rec, r->id, &d, msg, (uint32_t)ml);
    if (n > 0)
        push_rec(c, rec, (uint32_t)n, 1);
    mq_evloop_post_node(c->d->loop, &r->post_finish, finish_req, r);
}

/* ---- sessions ------------------------------------------------------------------ */
static mqd_sess *find_sess(mqd_conn *c, uint64_t id)
{
    for (int i = 0; i < c->n_sess; i++)
        if (c->sess[i].id == id)
            return &c->sess[i];
    return NULL;
}

/* The loop's view of a session's request: a request whose on_done ran is over even if
 * finish_req has not run yet. */
static void settle(mqd_sess *s)
{
    if (s->running && __atomic_load_n(&s->running->done, __ATOMIC_SEQ_CST)) {
        s->end_in_session = s->running->end_stop;
        s->running = NULL;
    }
}

/* Drops one holder of r (loop thread); the last frees it and its connection reference. */
static void req_release(mqd_req *r)
{
    if (--r->holders)
        return;
    mqd_conn *c = r->conn;
    free(r);
    conn_unref(c);
}

static void finish_req(mq_evloop *l, void *arg)
{
    (void)l;
    mqd_req *r = arg;
    mqd_sess *s = find_sess(r->conn, r->session);
    if (s && s->running == r) {
        s->end_in_session = r->end_stop;
        s->running = NULL;
    }
    req_release(r);
}

static void sess_remove(mqd_conn *c, mqd_sess *s)
{
    mqd *d = c->d;
    mq_sched_cancel(d->sched, s->id, MQ_SCHED_END_CLIENT_GONE);
    mq_sched_session_close(d->sched, s->id); /* calls on_done of a running request */
    cJSON_Delete(s->pending);
    *s = c->sess[--c->n_sess];
}

/* ---- request handlers ---------------------------------------------------------- */
/* The client's wake-up: mqd writes the pipe's write end after publishing tokens while the
 * client's poll_armed is set; the client polls the read end. mqd alone holds the write
 * end, so its O_NONBLOCK (a flag of the file description) is mqd's to keep: whatever the
 * client does to the read end, a full pipe only makes mqd's write return EAGAIN, which
 * means "already woken". (A descriptor the client passed in would share its flags with
 * the client's copy: a client could make it blocking and fill it; issue 13 #1.) */
static int make_wake_pipe(mqd_conn *c, int *read_end, char *err, size_t errlen)
{
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
        return mq_errmsg(err, errlen, -errno, "wake-up pipe: %s", strerror(errno));
    c->chan.token.efd = p[1];
    *read_end = p[0];
    return 0;
}

static void on_hello(mqd_conn *c, const mq_msg *m, int passed_fd)
{
    mqd *d = c->d;
    unsigned v = m->u.hello.ver_max < MQ_WIRE_VERSION_MAX ? m->u.hello.ver_max : MQ_WIRE_VERSION_MAX;
    if (v < m->u.hello.ver_min || v < MQ_WIRE_VERSION_MIN) {
        send_error(c, m->seq, MQ_ERR_VERSION, "client speaks protocol versions %u..%u, mqd speaks %d..%d",
                   m->u.hello.ver_min, m->u.hello.ver_max, MQ_WIRE_VERSION_MIN, MQ_WIRE_VERSION_MAX);
        conn_close(c, "version mismatch");
        return;
    }
    if (passed_fd >= 0) {
        close(passed_fd);
        send_error(c, m->seq, MQ_ERR_PROTOCOL,
                   "HELLO carries no descriptor: mqd hands out the wake-up fd itself (this libmq is older "
                   "than mqd)");
        conn_close(c, "fd with HELLO");
        return;
    }
    if (d->state != MQD_READY) {
        send_error(c, m->seq, MQ_ERR_DRAINING, "mqd is draining; no new clients");
        conn_close(c, "draining");
        return;
    }
    char err[256];
    int wake = -1;
    int rc = mq_chan_create(&c->chan, d->cfg.prompt_ring_kib * 1024u, d->cfg.token_ring_kib * 1024u,
                            d->cfg.hugepages != MQ_CFG_HUGE_OFF, err, sizeof err);
    if (!rc) {
        c->chan_ok = 1;
        rc = make_wake_pipe(c, &wake, err, sizeof err);
    }
    if (rc) {
        mqd_log_limited(&d->client_log, LOG_WARNING, "client pid %d uid %u: cannot create its channel: %s", (int)c->pid,
                        (unsigned)c->uid, err);
        send_error(c, m->seq, rc == -EMFILE || rc == -ENFILE || rc == -ENOMEM ? MQ_ERR_LIMIT : MQ_ERR_INTERNAL,
                   "cannot create the channel: %s", err);
        conn_close(c, "channel");
        return;
    }
    c->hello_done = 1;
    mq_msg r = { .type = MQ_MSG_HELLO_OK };
    r.u.hello_ok.version = (uint16_t)v;
    r.u.hello_ok.channel_bytes = (uint32_t)c->chan.bytes;
    r.u.hello_ok.ctx_limit = (uint32_t)d->ctx_limit;
    r.u.hello_ok.vocab_size = (uint32_t)(d->tok ? mq_tok_vocab_size(d->tok) : 0);
    r.u.hello_ok.max_sessions = d->cfg.max_sessions_per_client;
    snprintf(r.u.hello_ok.model, sizeof r.u.hello_ok.model, "%s", d->model_name);
    int fds[2] = { c->chan.fd, wake };
    rc = send_reply(c, &r, m->seq, fds, 2);
    /* The client has its copies now; mqd keeps the mapping and the pipe's write end. */
    close(wake);
    close(c->chan.fd);
    c->chan.fd = -1;
    if (rc)
        conn_close(c, "reply failed");
}

/* OPEN naming a tenant (protocol 3): only a trusted front may (tenants.h); 1 with *tenant
 * set, or 0 when answered with an error. */
static int open_tenant(mqd_conn *c, const mq_msg *m, uint64_t *tenant)
{
    mqd *d = c->d;
    if (!mqd_peer_is_front(d, c->fd, c->uid, c->gid)) {
        mqd_log_limited(&d->client_log, LOG_WARNING,
                        "client pid %d uid %u: refused a session for tenant %s: not in trusted_fronts or "
                        "trusted_front_groups",
                        (int)c->pid, (unsigned)c->uid, m->u.open.tenant);
        send_error(c, m->seq, MQ_ERR_NOT_TRUSTED,
                   "uid %u may not open sessions for tenant %s: only clients in mqd's trusted_fronts or "
                   "trusted_front_groups name tenants",
                   (unsigned)c->uid, m->u.open.tenant);
        return 0;
    }
    int rc = mqd_tenant_id(d, m->u.open.tenant, tenant);
    if (rc) {
        send_error(c, m->seq, rc == -ENOSPC ? MQ_ERR_LIMIT : MQ_ERR_INTERNAL, "cannot open a session for tenant %s: %s",
                   m->u.open.tenant, rc == -ENOSPC ? "mqd knows its most tenant names already" : strerror(-rc));
        return 0;
    }
    return 1;
}

static void on_open(mqd_conn *c, const mq_msg *m)
{
    mqd *d = c->d;
    if (d->state != MQD_READY) {
        send_error(c, m->seq, MQ_ERR_DRAINING, "mqd is shutting down");
        return;
    }
    if (m->u.open.mode == MQ_WIRE_MODE_CHAT && d->chat_kind < 0) {
        send_error(c, m->seq, MQ_ERR_BAD_PROMPT, "model %s has no chat template mqd knows; open a raw session",
                   d->model_name);
        return;
    }
    if (c->n_sess >= (int)d->cfg.max_sessions_per_client) {
        send_error(c, m->seq, MQ_ERR_LIMIT, "this connection has its %d sessions open", c->n_sess);
        return;
    }
    if (c->n_sess == c->cap_sess) {
        int cap = c->cap_sess ? 2 * c->cap_sess : 4;
        mqd_sess *p = realloc(c->sess, (size_t)cap * sizeof *p);
        if (!p) {
            send_error(c, m->seq, MQ_ERR_INTERNAL, "out of memory");
            return;
        }
        c->sess = p;
        c->cap_sess = cap;
    }
    uint64_t tenant = c->uid;
    if (m->u.open.tenant[0] && !open_tenant(c, m, &tenant))
        return;
    uint64_t id;
    int rc = mq_sched_session_open(d->sched, tenant, &id);
    if (rc) {
        char who[96];
        if (m->u.open.tenant[0])
            snprintf(who, sizeof who, "tenant %s", m->u.open.tenant);
        else
            snprintf(who, sizeof who, "uid %u", (unsigned)c->uid);
        if (rc == -EMFILE)
            send_error(c, m->seq, MQ_ERR_LIMIT, "cannot open a session: mqd has max_sessions (%u) open",
                       d->cfg.max_sessions);
        else if (rc == -EDQUOT)
            send_error(c, m->seq, MQ_ERR_LIMIT, "cannot open a session: %s has max_sessions_per_uid (%u) open", who,
                       d->cfg.max_sessions_per_uid);
        else
            send_error(c, m->seq, MQ_ERR_INTERNAL, "cannot open a session: %s", strerror(-rc));
        return;
    }
    c->sess[c->n_sess++] = (mqd_sess){ .id = id, .mode = m->u.open.mode };
    mq_msg r = { .type = MQ_MSG_OPENED };
    r.u.opened.session = id;
    send_reply(c, &r, m->seq, NULL, 0);
}

static void on_close_session(mqd_conn *c, const mq_msg *m)
{
    mqd_sess *s = find_sess(c, m->u.close.session);
    if (!s) {
        send_error(c, m->seq, MQ_ERR_NO_SESSION, "no session %llu on this connection",
                   (unsigned long long)m->u.close.session);
        return;
    }
    sess_remove(c, s);
    mq_msg r = { .type = MQ_MSG_CLOSED };
    r.u.closed.session = m->u.close.session;
    send_reply(c, &r, m->seq, NULL, 0);
}

static void push_synthetic_done(mqd_conn *c, uint64_t req)
{
    mq_chan_done dn = { .end_reason = MQ_CHAN_END_STOP };
    uint8_t rec[sizeof(mq_chan_rec) + sizeof(mq_chan_done) + 8];
    int n = mq_chan_format_done(rec, sizeof rec, req, &dn, NULL, 0);
    if (n > 0)
        push_rec(c, rec, (uint32_t)n, 1);
}

static void reply_submitted(mqd_conn *c, uint32_t seq, uint64_t req, uint64_t session)
{
    mq_msg r = { .type = MQ_MSG_SUBMITTED };
    r.u.submitted.req = req;
    r.u.submitted.session = session;
    send_reply(c, &r, seq, NULL, 0);
}

/* {"role": role, "content": the bytes} for the chat template; NULL when out of memory. */
static cJSON *chat_message(const char *role, const uint8_t *bytes, uint32_t len)
{
    char *content = strndup((const char *)bytes, len);
    cJSON *one = content ? cJSON_CreateObject() : NULL;
    if (one && (!cJSON_AddStringToObject(one, "role", role) || !cJSON_AddStringToObject(one, "content", content))) {
        cJSON_Delete(one);
        one = NULL;
    }
    free(content);
    return one;
}

/* A SUBMIT being prepared off the loop (prep.h): a worker renders and tokenizes its prompt
 * and queues it in the scheduler; the loop answers it (prep_done). The session is busy
 * meanwhile (running = r, preparing = 1); chat sessions hand over a copy of what the
 * worker needs of their state. */
typedef struct submit_job {
    mqd_prep_job job;
    mqd_conn *c; /* a reference of its own */
    mqd_req *r;
    uint64_t session, req;
    mq_msg m;       /* the SUBMIT */
    uint8_t *bytes; /* its prompt, m.u.submit.len bytes */
    cJSON *pending; /* chat sessions: system messages to render before the message */
    int turns, end_in_session;
    int queued;    /* worker: r went to the scheduler */
    unsigned code; /* worker: 0 or the MQ_ERR of the answer, with msg */
    char msg[MQ_WIRE_TEXT_MAX + 1];
} submit_job;

/* Token ids sent as ids: each must be inside the vocabulary. */
static unsigned ids_from_wire(const mqd *d, const uint8_t *bytes, uint32_t len, int32_t **ids, size_t *n_ids, char *msg,
                              size_t msglen)
{
    size_t n = len / 4;
    int32_t *v = malloc(n ? n * sizeof *v : 1);
    if (!v)
        return mq_errmsg(msg, msglen, MQ_ERR_INTERNAL, "out of memory");
    memcpy(v, bytes, n * 4);
    int vocab = mq_tok_vocab_size(d->tok);
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0 || v[i] >= vocab) {
            mq_errmsg(msg, msglen, 0, "token id %d at position %zu is outside the vocabulary [0, %d)", v[i], i, vocab);
            free(v);
            return MQ_ERR_BAD_PROMPT;
        }
    *ids = v;
    *n_ids = n;
    return 0;
}

/* A chat message: the ids it appends to the conversation (pending system messages, the
 * message, the assistant's turn). Message text is tokenized as text: only the template's
 * markup yields special tokens (mq_chat_encode). */
static unsigned encode_message(const mqd *d, const submit_job *j, int32_t **ids, size_t *n_ids, char *msg,
                               size_t msglen)
{
    static const char *const roles[] = { "user", "system", "tool" };
    const mq_msg *m = &j->m;
    cJSON *msgs = j->pending ? cJSON_Duplicate(j->pending, 1) : cJSON_CreateArray();
    cJSON *one = chat_message(roles[m->u.submit.role], j->bytes, m->u.submit.len);
    if (!msgs || !one) {
        cJSON_Delete(msgs);
        cJSON_Delete(one);
        return mq_errmsg(msg, msglen, MQ_ERR_INTERNAL, "out of memory");
    }
    cJSON_AddItemToArray(msgs, one);
    mq_chat_opts o = { .add_generation_prompt = 1,
                       .enable_thinking = (m->u.submit.gen.flags & MQ_GEN_ENABLE_THINKING) ? 1 : 0 };
    char cerr[256];
    int rc = mq_chat_encode(d->tok, (mq_chat_kind)d->chat_kind, msgs, NULL, &o, j->turns > 0, j->end_in_session, ids,
                            n_ids, cerr, sizeof cerr);
    cJSON_Delete(msgs);
    if (rc)
        return mq_errmsg(msg, msglen, rc == -ENOMEM ? MQ_ERR_INTERNAL : MQ_ERR_BAD_PROMPT, "%s", cerr);
    return 0;
}

/* MQ_WIRE_KIND_CHAT: {"messages": [...], "tools": [...], "enable_thinking": bool,
 * "prefix": "...", "think_as_generated": bool} -> the ids of the whole rendered
 * conversation with the generation prompt; 0 or an MQ_ERR code + message naming the field. */
static unsigned encode_conversation(const mqd *d, const uint8_t *bytes, uint32_t len, int32_t **ids, size_t *n_ids,
                                    char *msg, size_t msglen)
{
    if (d->chat_kind < 0)
        return mq_errmsg(msg, msglen, MQ_ERR_BAD_PROMPT, "model %s has no chat template mqd knows", d->model_name);
    cJSON *j = cJSON_ParseWithLength((const char *)bytes, len);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(j, "tools");
    const cJSON *think = cJSON_GetObjectItemCaseSensitive(j, "enable_thinking");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(j, "prefix");
    const cJSON *as_gen = cJSON_GetObjectItemCaseSensitive(j, "think_as_generated");
    unsigned code = MQ_ERR_BAD_PROMPT;
    if (!cJSON_IsObject(j))
        mq_errmsg(msg, msglen, 0, "conversation: not a JSON object");
    else if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        mq_errmsg(msg, msglen, 0, "conversation.messages: must be a non-empty array");
    else if (tools && !cJSON_IsArray(tools) && !cJSON_IsNull(tools))
        mq_errmsg(msg, msglen, 0, "conversation.tools: must be an array");
    else if (think && !cJSON_IsBool(think))
        mq_errmsg(msg, msglen, 0, "conversation.enable_thinking: must be true or false");
    else if (prefix && !cJSON_IsString(prefix))
        mq_errmsg(msg, msglen, 0, "conversation.prefix: must be a string");
    else if (as_gen && !cJSON_IsBool(as_gen))
        mq_errmsg(msg, msglen, 0, "conversation.think_as_generated: must be true or false");
    else {
        mq_chat_opts o = { .add_generation_prompt = 1,
                           .enable_thinking = think ? cJSON_IsTrue(think) : -1,
                           .reply_prefix = prefix ? prefix->valuestring : NULL,
                           .think_as_generated = cJSON_IsTrue(as_gen) };
        char cerr[256];
        int rc =
            mq_chat_encode(d->tok, (mq_chat_kind)d->chat_kind, msgs, tools, &o, 0, 0, ids, n_ids, cerr, sizeof cerr);
        code = rc == 0 ? 0 : rc == -ENOMEM ? MQ_ERR_INTERNAL : MQ_ERR_BAD_PROMPT;
        if (rc)
            mq_errmsg(msg, msglen, 0, "conversation: %s", cerr);
    }
    cJSON_Delete(j);
    return code;
}

/* Turns the prompt bytes into the token ids to append; 0 or an MQ_ERR code + message. */
static unsigned build_tokens(const mqd *d, const submit_job *j, int32_t **ids, size_t *n_ids, char *msg, size_t msglen)
{
    const mq_msg *m = &j->m;
    uint32_t len = m->u.submit.len;
    *ids = NULL;
    *n_ids = 0;
    if (m->u.submit.kind == MQ_WIRE_KIND_TOKENS)
        return ids_from_wire(d, j->bytes, len, ids, n_ids, msg, msglen);
    if (!mq_utf8_valid((const char *)j->bytes, len))
        return mq_errmsg(msg, msglen, MQ_ERR_BAD_PROMPT, "prompt text is not valid UTF-8");
    char terr[MQ_TOK_ERR_LEN];
    if (m->u.submit.kind == MQ_WIRE_KIND_TEXT || m->u.submit.kind == MQ_WIRE_KIND_PROMPT) {
        /* TEXT continues a raw session; PROMPT is a whole context (completions endpoints):
         * the tokenizer's BOS where it adds one, special tokens parsed in both */
        int whole = m->u.submit.kind == MQ_WIRE_KIND_PROMPT || (m->u.submit.gen.flags & MQ_GEN_WHOLE_CONTEXT);
        unsigned flags = j->turns == 0 || whole ? MQ_TOK_ADD_SPECIAL : 0;
        if (mq_tok_encode(d->tok, (const char *)j->bytes, len, flags, ids, n_ids, terr, sizeof terr))
            return mq_errmsg(msg, msglen, MQ_ERR_BAD_PROMPT, "tokenizing the prompt: %s", terr);
        return 0;
    }
    if (m->u.submit.kind == MQ_WIRE_KIND_CHAT)
        return encode_conversation(d, j->bytes, len, ids, n_ids, msg, msglen);
    return encode_message(d, j, ids, n_ids, msg, msglen);
}

/* Copies the SUBMIT's prompt bytes out of the prompt ring and hands the ring back to the
 * client. They must be exactly the next published bytes; otherwise the client broke the
 * protocol: ERROR, the connection is closed, -EPROTO. */
static int take_prompt(mqd_conn *c, const mq_msg *m, uint8_t **out)
{
    uint32_t len = m->u.submit.len;
    mq_ring *pr = &c->chan.prompt;
    int64_t avail = mq_ring_avail(pr);
    if (m->u.submit.ring_off != pr->pos || len > pr->size || avail < (int64_t)len) {
        char why[200];
        snprintf(why, sizeof why,
                 "submit.ring_off/len: %u/%u do not name the next %s bytes of the prompt ring (position %u, %lld "
                 "published)",
                 m->u.submit.ring_off, len, avail < 0 ? "valid" : "published", pr->pos, (long long)avail);
        send_error(c, m->seq, MQ_ERR_PROTOCOL, "%s", why);
        mqd_log_limited(&c->d->client_log, LOG_WARNING, "client pid %d uid %u: %s; closing its connection", (int)c->pid,
                        (unsigned)c->uid, why);
        conn_close(c, "bad ring offsets");
        return -EPROTO;
    }
    uint8_t *bytes = malloc(len ? len : 1);
    if (!bytes) {
        send_error(c, m->seq, MQ_ERR_INTERNAL, "out of memory for a %u-byte prompt", len);
        return -ENOMEM;
    }
    mq_ring_peek(pr, 0, bytes, len);
    mq_ring_consume(pr, len);
    *out = bytes;
    return 0;
}

/* Whether session s may take this SUBMIT now; 0 or an MQ_ERR code + message. */
static unsigned check_submit(mqd_conn *c, mqd_sess *s, const mq_msg *m, char *msg, size_t msglen)
{
    if (!s)
        return mq_errmsg(msg, msglen, MQ_ERR_NO_SESSION, "no session %llu on this connection",
                         (unsigned long long)m->u.submit.session);
    settle(s);
    if (c->d->state != MQD_READY)
        return mq_errmsg(msg, msglen, MQ_ERR_DRAINING, "mqd is draining; no new requests");
    if (s->running)
        return mq_errmsg(msg, msglen, MQ_ERR_BUSY, "session %llu is running request %llu", (unsigned long long)s->id,
                         (unsigned long long)s->running->id);
    if (s->preparing) /* its request ended already, but its SUBMIT is not answered yet */
        return mq_errmsg(msg, msglen, MQ_ERR_BUSY, "session %llu: the previous request is not answered yet",
                         (unsigned long long)s->id);
    int chat = s->mode == MQ_WIRE_MODE_CHAT;
    if ((m->u.submit.kind == MQ_WIRE_KIND_MESSAGE) != chat)
        return mq_errmsg(msg, msglen, MQ_ERR_BAD_PROMPT, "%s sessions take %s", chat ? "chat" : "raw",
                         chat ? "messages (mq_send_message)"
                              : "text, tokens, prompts or conversations (mq_send_text/tokens/prompt/chat)");
    return 0;
}

/* A system message does not start a generation: it is kept and rendered with the next
 * user/tool message. Its request completes at once (SUBMITTED, then DONE). */
static unsigned stash_system_message(mqd_conn *c, mqd_sess *s, const mq_msg *m, const uint8_t *bytes, uint64_t req,
                                     char *msg, size_t msglen)
{
    if (!mq_utf8_valid((const char *)bytes, m->u.submit.len))
        return mq_errmsg(msg, msglen, MQ_ERR_BAD_PROMPT, "prompt text is not valid UTF-8");
    if (!s->pending)
        s->pending = cJSON_CreateArray();
    cJSON *one = chat_message("system", bytes, m->u.submit.len);
    if (!s->pending || !one) {
        cJSON_Delete(one);
        return mq_errmsg(msg, msglen, MQ_ERR_INTERNAL, "out of memory");
    }
    cJSON_AddItemToArray(s->pending, one);
    reply_submitted(c, m->seq, req, s->id);
    push_synthetic_done(c, req);
    return 0;
}

static void gen_params_from_wire(const mq_wire_gen *g, mq_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_tokens = (int)g->max_tokens;
    p->temperature = (g->flags & MQ_GEN_GREEDY) ? 0.0f : g->temperature;
    p->top_k = (int)g->top_k;
    p->top_p = g->top_p;
    p->min_p = g->min_p;
    p->repetition_penalty = g->repeat_penalty;
    p->seed = g->seed;
    p->use_eos = 1;
    p->presence_penalty = g->presence_penalty;
    p->frequency_penalty = g->frequency_penalty;
    p->n_stop_strs = g->n_stop;
    for (int i = 0; i < g->n_stop; i++)
        p->stop_strs[i] = g->stop[i]; /* the scheduler copies them */
    p->has_mode = g->precision != MQ_WIRE_PRECISION_DEFAULT;
    p->mode = g->precision == MQ_WIRE_PRECISION_BF16  ? MQ_PREC_MODE_BF16
              : g->precision == MQ_WIRE_PRECISION_FP4 ? MQ_PREC_MODE_FP4
                                                      : MQ_PREC_MODE_MIXED;
    p->whole_context = !!(g->flags & MQ_GEN_WHOLE_CONTEXT);
}

/* Worker: queues the job's ids in the scheduler as its request, its tokens streamed by the
 * sinks; 0 or an MQ_ERR code + message. Once queued, r may end (and finish_req run) at
 * any time; it stays allocated until prep_done, which holds it too. */
static unsigned queue_request(const mqd *d, submit_job *j, const int32_t *ids, size_t n_ids, char *msg, size_t msglen)
{
    const mq_msg *m = &j->m;
    mqd_req *r = j->r;
    if (n_ids > (size_t)d->ctx_limit)
        return mq_errmsg(msg, msglen, MQ_ERR_TOO_LONG, "prompt of %zu tokens is over the context limit of %d tokens",
                         n_ids, d->ctx_limit);
    mq_gen_params p;
    gen_params_from_wire(&m->u.submit.gen, &p);
    p.whole_context |= m->u.submit.kind == MQ_WIRE_KIND_CHAT || m->u.submit.kind == MQ_WIRE_KIND_PROMPT;
    mq_sink sink = { .ctx = r, .on_token = sink_token, .on_done = sink_done };
    char serr[256] = "";
    r->prep_s = mq_now_s() - r->t_recv;
    int rc = mq_sched_submit(d->sched, j->session, ids, (int)n_ids, &p, &sink, serr, sizeof serr);
    if (rc)
        return mq_errmsg(msg, msglen, wire_err_of(rc), "%s", serr[0] ? serr : strerror(-rc));
    j->queued = 1;
    /* a cancel that came while the prompt was prepared found nothing in the scheduler:
     * the loop sets cancel_asked before it asks the scheduler, so one of them sees the other */
    if (__atomic_load_n(&r->cancel_asked, __ATOMIC_SEQ_CST))
        mq_sched_cancel(d->sched, j->session, MQ_SCHED_END_CANCEL);
    return 0;
}

static void prep_run(mqd_prep_job *job)
{
    submit_job *j = (submit_job *)job;
    const mqd *d = j->c->d;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    j->code = build_tokens(d, j, &ids, &n_ids, j->msg, sizeof j->msg);
    if (!j->code)
        j->code = queue_request(d, j, ids, n_ids, j->msg, sizeof j->msg);
    free(ids);
}

static void submit_job_free(submit_job *j)
{
    cJSON_Delete(j->pending);
    free(j->bytes);
    free(j);
}

/* Loop thread: answers the SUBMIT with the worker's result. */
static void prep_done(mq_evloop *l, void *arg)
{
    (void)l;
    submit_job *j = arg;
    mqd_conn *c = j->c;
    mqd_req *r = j->r;
    mqd_sess *s = find_sess(c, j->session); /* NULL: closed meanwhile */
    if (s)
        s->preparing = 0;
    if (j->queued) {
        if (s) {
            s->turns++;
            cJSON_Delete(s->pending);
            s->pending = NULL;
        }
        if (!c->closing)
            reply_submitted(c, j->m.seq, j->req, j->session);
        req_release(r);
    } else {
        if (s && s->running == r)
            s->running = NULL;
        if (!c->closing)
            send_error(c, j->m.seq, j->code, "%s", j->msg);
        r->holders = 1; /* the scheduler never had it */
        req_release(r);
    }
    submit_job_free(j);
    conn_unref(c);
}

/* Hands the SUBMIT to a prep worker (it owns *bytes from then on); 0 or an MQ_ERR code +
 * message. */
static unsigned prepare(mqd_conn *c, mqd_sess *s, const mq_msg *m, uint64_t req, uint8_t **bytes, char *msg,
                        size_t msglen)
{
    submit_job *j = calloc(1, sizeof *j);
    mqd_req *r = calloc(1, sizeof *r);
    cJSON *pending = s->pending ? cJSON_Duplicate(s->pending, 1) : NULL;
    if (!j || !r || (s->pending && !pending)) {
        free(j);
        free(r);
        cJSON_Delete(pending);
        return mq_errmsg(msg, msglen, MQ_ERR_INTERNAL, "out of memory");
    }
    *r = (mqd_req){ .conn = c,
                    .id = req,
                    .session = s->id,
                    .no_special_text = !!(m->u.submit.gen.flags & MQ_GEN_NO_SPECIAL_TEXT),
                    .holders = 2,
                    .t_recv = mq_now_s() };
    *j = (submit_job){ .job = { .run = prep_run, .done = prep_done },
                       .c = c,
                       .r = r,
                       .session = s->id,
                       .req = req,
                       .m = *m,
                       .bytes = *bytes,
                       .pending = pending,
                       .turns = s->turns,
                       .end_in_session = s->end_in_session };
    if (!c->d->prep || mqd_prep_push(c->d->prep, &j->job)) {
        j->bytes = NULL;
        submit_job_free(j);
        free(r);
        return mq_errmsg(msg, msglen, MQ_ERR_DRAINING, "mqd is shutting down");
    }
    conn_ref(c); /* the job's */
    conn_ref(c); /* r's, until its last holder lets go */
    *bytes = NULL;
    s->running = r;
    s->preparing = 1;
    return 0;
}

static void on_submit(mqd_conn *c, const mq_msg *m)
{
    uint8_t *bytes;
    if (take_prompt(c, m, &bytes))
        return;
    char msg[MQ_WIRE_TEXT_MAX + 1] = "";
    mqd_sess *s = find_sess(c, m->u.submit.session);
    unsigned code = check_submit(c, s, m, msg, sizeof msg);
    if (!code) {
        uint64_t req = ++c->d->next_req;
        if (m->u.submit.kind == MQ_WIRE_KIND_MESSAGE && m->u.submit.role == MQ_WIRE_ROLE_SYSTEM)
            code = stash_system_message(c, s, m, bytes, req, msg, sizeof msg);
        else
            code = prepare(c, s, m, req, &bytes, msg, sizeof msg);
    }
    if (code)
        send_error(c, m->seq, code, "%s", msg);
    free(bytes);
}

static void on_cancel(mqd_conn *c, const mq_msg *m)
{
    for (int i = 0; i < c->n_sess; i++) {
        mqd_sess *s = &c->sess[i];
        settle(s);
        if (s->running && s->running->id == m->u.cancel.req) {
            cancel_request(c->d, s->running);
            mq_msg r = { .type = MQ_MSG_CANCELED };
            r.u.canceled.req = m->u.cancel.req;
            send_reply(c, &r, m->seq, NULL, 0);
            return;
        }
    }
    send_error(c, m->seq, MQ_ERR_NO_REQUEST, "request %llu is not running on this connection",
               (unsigned long long)m->u.cancel.req);
}

static void on_stats(mqd_conn *c, const mq_msg *m)
{
    mqd *d = c->d;
    mq_sched_stats st;
    mq_sched_get_stats(d->sched, &st);
    mq_msg r = { .type = MQ_MSG_STATS_REPLY, .version = m->version };
    mq_wire_stats *w = &r.u.stats;
    if (m->version >= 2) /* for health checks: draining from the moment a drain starts */
        w->state = d->state == MQD_READY ? MQ_WIRE_STATE_READY : MQ_WIRE_STATE_DRAINING;
    w->uptime_ms = mq_now_ms() - d->start_ms;
    w->sessions = (uint32_t)st.sessions;
    w->requests_running = (uint32_t)(st.prefilling + st.decoding);
    w->requests_queued = (uint32_t)st.queued;
    w->kv_blocks_used = (uint32_t)st.kv_used;
    w->kv_blocks_total = (uint32_t)st.kv_blocks;
    w->kv_block_tokens = (uint32_t)st.block_tokens;
    w->requests_done = st.requests_done;
    w->prompt_tokens = st.prompt_tokens;
    w->cached_tokens = st.cached_tokens;
    w->prefill_tokens = st.prefilled_tokens;
    w->decode_tokens = st.generated_tokens;
    w->prefill_tps = (float)st.prefill_tok_s;
    w->decode_tps = (float)st.decode_tok_s;
    send_reply(c, &r, m->seq, NULL, 0);
}

static void handle(mqd_conn *c, const mq_msg *m, int passed_fd)
{
    if (c->denied) {
        if (passed_fd >= 0)
            close(passed_fd);
        send_error(c, m->seq, c->deny_code, "%s", c->deny_msg);
        conn_close(c, "denied");
        return;
    }
    if (!c->hello_done && m->type != MQ_MSG_HELLO) {
        if (passed_fd >= 0)
            close(passed_fd);
        send_error(c, m->seq, MQ_ERR_PROTOCOL, "the first message must be HELLO, not %s", mq_wire_type_name(m->type));
        conn_close(c, "no HELLO");
        return;
    }
    if (m->type != MQ_MSG_HELLO && passed_fd >= 0) {
        close(passed_fd); /* descriptors are only expected with HELLO */
        passed_fd = -1;
    }
    switch (m->type) {
    case MQ_MSG_HELLO:
        if (c->hello_done) {
            if (passed_fd >= 0)
                close(passed_fd);
            send_error(c, m->seq, MQ_ERR_PROTOCOL, "HELLO sent twice");
            conn_close(c, "second HELLO");
            return;
        }
        on_hello(c, m, passed_fd);
        return;
    case MQ_MSG_OPEN: on_open(c, m); return;
    case MQ_MSG_CLOSE: on_close_session(c, m); return;
    case MQ_MSG_SUBMIT: on_submit(c, m); return;
    case MQ_MSG_CANCEL: on_cancel(c, m); return;
    case MQ_MSG_STATS: on_stats(c, m); return;
    default:
        send_error(c, m->seq, MQ_ERR_PROTOCOL, "%s is not a client request", mq_wire_type_name(m->type));
        conn_close(c, "reply type from client");
    }
}

static void on_readable(mq_evloop *l, int fd, uint32_t events, void *arg)
{
    (void)l;
    mqd_conn *c = arg;
    conn_ref(c); /* handlers may close (and drop the socket's ref) */
    while (!c->closing) {
        uint8_t buf[MQ_WIRE_MAX_MSG + 1];
        int passed = -1, trunc = 0;
        ssize_t n = mq_sock_recv(fd, buf, sizeof buf, &passed, 1, MSG_DONTWAIT, &trunc);
        if (n == -EAGAIN) {
            if (events & (POLLHUP | POLLERR))
                conn_close(c, "hang-up");
            break;
        }
        if (n < 0) {
            conn_close(c, "read error");
            break;
        }
        if (n == 0) {
            if (passed >= 0)
                close(passed);
            conn_close(c, "client closed");
            break;
        }
        mq_msg m;
        char err[256];
        int rc = trunc ? mq_errmsg(err, sizeof err, -EPROTO, "datagram over %d bytes", MQ_WIRE_MAX_MSG)
                       : mq_wire_decode(buf, (size_t)n, &m, err, sizeof err);
        if (rc) {
            if (passed >= 0)
                close(passed);
            uint32_t seq = 0;
            if (n >= 12)
                memcpy(&seq, buf + 8, 4);
            send_error(c, seq, MQ_ERR_PROTOCOL, "malformed message: %s", err);
            mqd_log_limited(&c->d->client_log, LOG_WARNING,
                            "client pid %d uid %u: malformed message (%s); closing its connection", (int)c->pid,
                            (unsigned)c->uid, err);
            conn_close(c, "protocol error");
            break;
        }
        handle(c, &m, passed);
    }
    conn_unref(c);
}

/* ---- connection life ----------------------------------------------------------- */
static void conn_close(mqd_conn *c, const char *why)
{
    (void)why;
    if (c->closing)
        return;
    mqd *d = c->d;
    c->closing = 1;
    mq_evloop_del(d->loop, c->ev);
    close(c->fd);
    c->fd = -1;
    if (c->holds_spare)
        mqd_spare_fd_reserve(&d->client_spare);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    d->n_conns--;
    while (c->n_sess)
        sess_remove(c, &c->sess[c->n_sess - 1]);
    /* A pending futex wait on the token ring's tail holds a ref: release it now. */
    pthread_mutex_lock(&c->tx_lock);
    int armed = c->flush_armed;
    pthread_mutex_unlock(&c->tx_lock);
    if (armed && c->chan_ok)
        mq_futex_wake(&c->chan.token.ctl->tail);
    if (c->flush_timer) {
        mq_evloop_del(d->loop, c->flush_timer);
        c->flush_timer = NULL;
        pthread_mutex_lock(&c->tx_lock);
        c->flush_armed = 0;
        pthread_mutex_unlock(&c->tx_lock);
        conn_unref(c);
    }
    conn_unref(c);
}

/* ---- accepting, and running out of descriptors -------------------------------------
 * At RLIMIT_NOFILE a waiting client gets the slot of mqd's spare descriptor and is
 * answered at its first message with ERROR(MQ_ERR_LIMIT), like a refused peer; the slot
 * returns to the spare when it closes. While the spare is in use accepting pauses
 * (mqd_listener_pause), so the loop does not spin on a socket it cannot accept from. A
 * client that got in but finds no descriptor for its channel gets the same error at
 * HELLO. Both are logged (rate-limited); mqd carries on once descriptors free up. */
static mqd_conn *conn_new(mqd *d, const mqd_peer *p)
{
    mqd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->d = d;
    c->fd = p->fd;
    c->refs = 1;
    c->chan.fd = -1;
    c->chan.token.efd = -1;
    c->uid = p->uid;
    c->gid = p->gid;
    c->pid = p->pid;
    pthread_mutex_init(&c->tx_lock, NULL);
    /* A refused peer is answered at its first message: closing now, with the HELLO
     * unread, would reach the client as ECONNRESET instead of a readable refusal. */
    c->denied = !p->allowed;
    c->deny_code = MQ_ERR_DENIED;
    snprintf(c->deny_msg, sizeof c->deny_msg, "%s", p->why);
    if (mq_evloop_add_fd(d->loop, p->fd, POLLIN, on_readable, c, &c->ev)) {
        close(p->fd);
        c->fd = -1;
        conn_unref(c);
        return NULL;
    }
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    d->n_conns++;
    return c;
}

static void accept_resume(mq_evloop *l, void *arg)
{
    (void)l;
    mqd *d = arg;
    int open = d->state == MQD_READY || d->state == MQD_DRAINING;
    mqd_listener_resume(d, open ? d->client_fd : -1, &d->client_ev, &d->client_pause, mqd_client_accept);
}

static void log_out_of_fds(mqd *d, int rc)
{
    struct rlimit rl = { 0, 0 };
    getrlimit(RLIMIT_NOFILE, &rl);
    mqd_log_limited(&d->client_log, LOG_WARNING,
                    "client socket: %s (RLIMIT_NOFILE %llu, %d clients connected); new clients are refused until "
                    "descriptors free up",
                    strerror(-rc), (unsigned long long)rl.rlim_cur, d->n_conns);
}

void mqd_client_accept(mq_evloop *l, int lfd, uint32_t events, void *arg)
{
    (void)l;
    (void)events;
    mqd *d = arg;
    mqd_peer p;
    int rc;
    while ((rc = mqd_accept_peer(d, lfd, 0, SOCK_NONBLOCK, "client socket", &d->client_spare, &p)) == 0) {
        if (p.on_spare) {
            log_out_of_fds(d, -EMFILE);
            snprintf(p.why, sizeof p.why, "mqd has no file descriptor left for a new client; try again later");
            p.allowed = 0;
        }
        mqd_conn *c = conn_new(d, &p);
        if (c && p.on_spare) {
            c->holds_spare = 1;
            c->deny_code = MQ_ERR_LIMIT;
        } else if (!c) {
            mqd_log(LOG_ERR, "client socket: no memory for a connection; dropped pid %d", (int)p.pid);
            if (p.on_spare)
                mqd_spare_fd_reserve(&d->client_spare);
        }
    }
    if (rc == -EMFILE || rc == -ENFILE) {
        log_out_of_fds(d, rc);
        mqd_listener_pause(d, &d->client_ev, &d->client_pause, accept_resume);
    }
}

void mqd_client_close_all(mqd *d)
{
    while (d->conns)
        conn_close(d->conns, "shutdown");
}

int mqd_client_cancel(mqd *d, uint64_t id, char *msg, size_t msglen)
{
    for (mqd_conn *c = d->conns; c; c = c->next)
        for (int i = 0; i < c->n_sess; i++) {
            mqd_sess *s = &c->sess[i];
            settle(s);
            if ((s->running && s->running->id == id) || s->id == id) {
                if (!s->running) {
                    mq_errmsg(msg, msglen, 0, "session %llu has no running request", (unsigned long long)s->id);
                    return -ENOENT;
                }
                uint64_t rid = s->running->id;
                cancel_request(d, s->running);
                mq_errmsg(msg, msglen, 0, "cancelled request %llu of session %llu (pid %d)", (unsigned long long)rid,
                          (unsigned long long)s->id, (int)c->pid);
                return 0;
            }
        }
    mq_errmsg(msg, msglen, 0, "no running request or session with id %llu", (unsigned long long)id);
    return -ENOENT;
}

void mqd_client_sessions(mqd *d, void (*cb)(void *ctx, const mqd_session_view *v), void *ctx)
{
    for (mqd_conn *c = d->conns; c; c = c->next)
        for (int i = 0; i < c->n_sess; i++) {
            mqd_sess *s = &c->sess[i];
            settle(s);
            mqd_session_view v = { s->id, s->running ? s->running->id : 0, c->pid, c->uid, s->mode };
            cb(ctx, &v);
        }
}
