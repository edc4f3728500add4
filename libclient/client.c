/* libclient/client.c — libmq: the client side of ipc/wire.h and ipc/channel.h. */
#define _GNU_SOURCE
#include "ipc/sock.h"
#include "libclient/mq.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc/channel.h"
#include "ipc/wire.h"

_Static_assert((int)MQ_EPROTOCOL == (int)MQ_ERR_PROTOCOL && (int)MQ_EKVFULL == (int)MQ_ERR_KV_FULL &&
                   (int)MQ_ENOTTRUSTED == (int)MQ_ERR_NOT_TRUSTED,
               "public error codes mirror the wire codes");
_Static_assert((int)MQ_END_CANCELLED == (int)MQ_CHAN_END_CANCEL && (int)MQ_END_SHUTDOWN == (int)MQ_CHAN_END_SHUTDOWN,
               "end reasons");
_Static_assert((int)MQ_PARAM_ENABLE_THINKING == (int)MQ_GEN_ENABLE_THINKING, "param flags");

#define REPLY_TIMEOUT_S 300  /* a SUBMIT of a 100k-token text prompt is tokenized in mqd */
#define HUP_CHECK_MS    1000 /* while sleeping on the futex, look for a dead mqd this often */

struct mq_conn {
    int sock;
    int efd;
    mq_chan chan;
    mq_server_info info;
    uint32_t seq;
    pthread_mutex_t lock;    /* socket request/reply and the prompt ring */
    pthread_mutex_t rx_lock; /* the token ring */
    pthread_mutex_t err_lock;
    char err[MQ_WIRE_TEXT_MAX + 1];
    int dead;
    uint8_t rec[MQ_CHAN_REC_MAX]; /* last event's record; ev.text points here */
};

static int set_err(mq_conn *c, int rc, const char *fmt, ...)
{
    pthread_mutex_lock(&c->err_lock);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&c->err_lock);
    return rc;
}

size_t mq_last_error(mq_conn *c, char *buf, size_t len)
{
    pthread_mutex_lock(&c->err_lock);
    size_t n = strlen(c->err);
    if (len) {
        size_t k = n < len - 1 ? n : len - 1;
        memcpy(buf, c->err, k);
        buf[k] = 0;
    }
    pthread_mutex_unlock(&c->err_lock);
    return n;
}

const char *mq_strerror(int err)
{
    if (err < 0)
        err = -err;
    if (err >= MQ_ERR_PROTOCOL && err <= MQ_ERR_NOT_TRUSTED)
        return mq_wire_err_text((unsigned)err);
    if (err == 0)
        return "success";
    const char *s = strerrordesc_np(err);
    return s ? s : "unknown error";
}

void mq_params_init(mq_params *p)
{
    mq_wire_gen g;
    mq_wire_gen_default(&g);
    p->max_tokens = g.max_tokens;
    p->temperature = g.temperature;
    p->top_p = g.top_p;
    p->min_p = g.min_p;
    p->top_k = g.top_k;
    p->repeat_penalty = g.repeat_penalty;
    p->seed = g.seed;
    p->flags = g.flags;
}

/* ---- socket I/O ------------------------------------------------------------------ */
static int send_msg(mq_conn *c, mq_msg *m)
{
    uint8_t buf[MQ_WIRE_MAX_MSG];
    m->seq = ++c->seq;
    int n = mq_wire_encode(m, buf, sizeof buf);
    if (n < 0)
        return set_err(c, n, "cannot encode %s", mq_wire_type_name(m->type));
    int w = mq_sock_send(c->sock, buf, (size_t)n, NULL, 0, 0);
    if (w < 0) {
        int e = -w;
        if (e == EPIPE || e == ECONNRESET)
            c->dead = 1;
        return set_err(c, -e, "sending %s to mqd: %s", mq_wire_type_name(m->type), strerror(e));
    }
    return 0;
}

/* Receives the reply to the last request; fds[0..n_fds-1] get the descriptors passed with
 * it (-1 where none), closed again if the reply is an error. */
static int recv_reply(mq_conn *c, mq_msg *m, unsigned want_type, int *fds, int n_fds)
{
    uint8_t buf[MQ_WIRE_MAX_MSG + 1];
    for (;;) {
        ssize_t n = mq_sock_recv(c->sock, buf, sizeof buf, fds, n_fds, 0, NULL);
        if (n < 0) {
            if (n == -EAGAIN)
                return set_err(c, -ETIMEDOUT, "mqd did not answer within %d s", REPLY_TIMEOUT_S);
            c->dead = 1;
            return set_err(c, (int)n, "receiving from mqd: %s", strerror((int)-n));
        }
        if (n == 0) {
            c->dead = 1;
            return set_err(c, -EPIPE, "mqd closed the connection");
        }
        char err[160];
        int rc = mq_wire_decode(buf, (size_t)n, m, err, sizeof err);
        if (rc) {
            c->dead = 1;
            return set_err(c, -EPROTO, "mqd sent a malformed message: %s", err);
        }
        if ((m->seq != c->seq && m->type != MQ_MSG_ERROR) || m->type == MQ_MSG_ERROR)
            for (int i = 0; i < n_fds; i++)
                if (fds[i] >= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                }
        if (m->seq != c->seq && m->type != MQ_MSG_ERROR)
            continue; /* a stale reply to a call that timed out */
        if (m->type == MQ_MSG_ERROR) {
            if (m->u.error.code == MQ_ERR_PROTOCOL || m->u.error.code == MQ_ERR_DENIED ||
                m->u.error.code == MQ_ERR_VERSION)
                c->dead = 1;
            return set_err(c, -(int)m->u.error.code, "%s",
                           m->u.error.text[0] ? m->u.error.text : mq_wire_err_text(m->u.error.code));
        }
        if (m->type != want_type) {
            c->dead = 1;
            return set_err(c, -EPROTO, "mqd answered %s to a request expecting %s", mq_wire_type_name(m->type),
                           mq_wire_type_name(want_type));
        }
        return 0;
    }
}

/* One request/reply; the caller holds the connection lock. */
static int call(mq_conn *c, mq_msg *m, unsigned want, mq_msg *reply)
{
    if (c->dead)
        return set_err(c, -EPIPE, "connection to mqd is closed");
    int rc = send_msg(c, m);
    if (!rc)
        rc = recv_reply(c, reply, want, NULL, 0);
    return rc;
}

/* call() for callers that do not hold the connection lock. */
static int locked_call(mq_conn *c, mq_msg *m, unsigned want, mq_msg *reply)
{
    pthread_mutex_lock(&c->lock);
    int rc = call(c, m, want, reply);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- connect --------------------------------------------------------------------- */
/* timeout_ms bounds the connect and the HELLO reply; later calls wait REPLY_TIMEOUT_S. */
static int connect_within(const char *socket_path, int timeout_ms, mq_conn **out)
{
    *out = NULL;
    if (!socket_path || !*socket_path)
        socket_path = getenv("MQ_SOCKET");
    if (!socket_path || !*socket_path)
        socket_path = MQ_DEFAULT_SOCKET;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(socket_path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, socket_path);
    mq_conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->rx_lock, NULL);
    pthread_mutex_init(&c->err_lock, NULL);
    c->chan.fd = -1;
    c->efd = -1;
    int rc;
    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->sock < 0) {
        rc = -errno;
        goto fail;
    }
    struct timeval tv = { REPLY_TIMEOUT_S, 0 };
    const struct timeval hello_tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    /* a connect to a full listen queue blocks until the send timeout */
    setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &hello_tv, sizeof hello_tv);
    setsockopt(c->sock, SOL_SOCKET, SO_SNDTIMEO, &hello_tv, sizeof hello_tv);
    if (connect(c->sock, (struct sockaddr *)&sa, sizeof sa) < 0) {
        rc = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT : -errno;
        goto fail;
    }
    mq_msg m = { .type = MQ_MSG_HELLO }, r;
    m.u.hello.ver_min = MQ_WIRE_VERSION_MIN;
    m.u.hello.ver_max = MQ_WIRE_VERSION_MAX;
    snprintf(m.u.hello.name, sizeof m.u.hello.name, "libmq/%d", (int)getpid());
    rc = send_msg(c, &m);
    int fds[2] = { -1, -1 }; /* the channel memfd, the wake-up pipe's read end */
    if (!rc)
        rc = recv_reply(c, &r, MQ_MSG_HELLO_OK, fds, 2);
    if (rc == -ETIMEDOUT) /* mqd accepts clients once its model is loaded */
        rc = set_err(c, -ETIMEDOUT, "mqd did not answer within %d ms (still loading?)", timeout_ms);
    if (rc)
        goto fail;
    setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->sock, SOL_SOCKET, SO_SNDTIMEO, &(struct timeval){ 0, 0 }, sizeof(struct timeval));
    c->efd = fds[1];
    if (c->efd >= 0) /* drained with reads that must not block */
        fcntl(c->efd, F_SETFL, fcntl(c->efd, F_GETFL) | O_NONBLOCK);
    if (fds[0] < 0 || fds[1] < 0) {
        if (fds[0] >= 0)
            close(fds[0]);
        rc = set_err(c, -EPROTO, "mqd's HELLO_OK lacks the channel or the wake-up descriptor");
        goto fail;
    }
    char err[200];
    rc = mq_chan_map(&c->chan, fds[0], err, sizeof err);
    if (rc)
        goto fail;
    if (c->chan.bytes != r.u.hello_ok.channel_bytes) {
        rc = -EPROTO;
        goto fail;
    }
    c->info.protocol_version = r.u.hello_ok.version;
    c->info.ctx_limit = r.u.hello_ok.ctx_limit;
    c->info.vocab_size = r.u.hello_ok.vocab_size;
    c->info.max_sessions = r.u.hello_ok.max_sessions;
    c->info.prompt_ring = c->chan.hdr->prompt_size;
    c->info.hugetlb = c->chan.hugetlb;
    snprintf(c->info.model, sizeof c->info.model, "%s", r.u.hello_ok.model);
    *out = c;
    return 0;
fail:
    mq_disconnect(c);
    return rc;
}

int mq_connect(const char *socket_path, mq_conn **out)
{
    return connect_within(socket_path, REPLY_TIMEOUT_S * 1000, out);
}

int mq_connect_timeout(const char *socket_path, int timeout_ms, mq_conn **out)
{
    *out = NULL;
    if (timeout_ms < 1)
        return -EINVAL;
    return connect_within(socket_path, timeout_ms, out);
}

void mq_disconnect(mq_conn *c)
{
    if (!c)
        return;
    if (c->sock >= 0)
        close(c->sock);
    if (c->efd >= 0)
        close(c->efd);
    if (c->chan.base)
        mq_chan_unmap(&c->chan);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->rx_lock);
    pthread_mutex_destroy(&c->err_lock);
    free(c);
}

int mq_server_info_get(mq_conn *c, mq_server_info *info)
{
    *info = c->info;
    return 0;
}

/* ---- sessions and requests ------------------------------------------------------- */
int mq_open_session(mq_conn *c, int mode, uint64_t *session)
{
    return mq_open_tenant_session(c, mode, NULL, session);
}

int mq_open_tenant_session(mq_conn *c, int mode, const char *tenant, uint64_t *session)
{
    if (mode != MQ_MODE_CHAT && mode != MQ_MODE_RAW)
        return set_err(c, -EINVAL, "mode %d is neither MQ_MODE_CHAT nor MQ_MODE_RAW", mode);
    mq_msg m = { .type = MQ_MSG_OPEN }, r;
    m.u.open.mode = (uint8_t)mode;
    if (tenant && *tenant) {
        char err[160];
        if (mq_wire_tenant_check(tenant, err, sizeof err))
            return set_err(c, -EINVAL, "tenant \"%.80s\": %s", tenant, err);
        if (c->info.protocol_version < 3)
            return set_err(c, -MQ_EVERSION, "mqd speaks protocol version %u; a tenant needs version 3",
                           c->info.protocol_version);
        m.version = 3;
        strcpy(m.u.open.tenant, tenant);
    }
    int rc = locked_call(c, &m, MQ_MSG_OPENED, &r);
    if (!rc)
        *session = r.u.opened.session;
    return rc;
}

int mq_close_session(mq_conn *c, uint64_t session)
{
    mq_msg m = { .type = MQ_MSG_CLOSE }, r;
    m.u.close.session = session;
    int rc = locked_call(c, &m, MQ_MSG_CLOSED, &r);
    return rc;
}

static int submit(mq_conn *c, uint64_t session, int kind, int role, const void *bytes, size_t len, const mq_params *p,
                  const mq_request_opts *o, uint64_t *req)
{
    mq_params def;
    if (!p) {
        mq_params_init(&def);
        p = &def;
    }
    mq_msg m = { .type = MQ_MSG_SUBMIT }, r;
    m.version = (uint16_t)c->info.protocol_version;
    m.u.submit.session = session;
    m.u.submit.kind = (uint8_t)kind;
    m.u.submit.role = (uint8_t)role;
    mq_wire_gen *g = &m.u.submit.gen;
    g->max_tokens = p->max_tokens;
    g->temperature = p->temperature;
    g->top_p = p->top_p;
    g->min_p = p->min_p;
    g->top_k = p->top_k;
    g->repeat_penalty = p->repeat_penalty;
    g->seed = p->seed;
    g->flags = p->flags;
    if (o) {
        if (o->precision < MQ_PRECISION_DEFAULT || o->precision > MQ_PRECISION_FP4)
            return set_err(c, -EINVAL, "precision %d is not one of MQ_PRECISION_*", o->precision);
        if (o->flags & ~(unsigned)MQ_REQ_WHOLE_CONTEXT)
            return set_err(c, -EINVAL, "request flags 0x%x unknown", o->flags);
        if (o->n_stop < 0 || o->n_stop > MQ_MAX_STOP)
            return set_err(c, -EINVAL, "n_stop %d is not 0..%d", o->n_stop, MQ_MAX_STOP);
        g->precision = (uint8_t)o->precision;
        if (o->flags & MQ_REQ_WHOLE_CONTEXT)
            g->flags |= MQ_GEN_WHOLE_CONTEXT;
        g->presence_penalty = o->presence_penalty;
        g->frequency_penalty = o->frequency_penalty;
        g->n_stop = (uint8_t)o->n_stop;
        for (int i = 0; i < o->n_stop; i++) {
            size_t n = o->stop[i] ? strlen(o->stop[i]) : 0;
            if (n == 0 || n > MQ_STOP_MAX_LEN)
                return set_err(c, -EINVAL, "stop[%d] must be 1..%d bytes", i, MQ_STOP_MAX_LEN);
            memcpy(g->stop[i], o->stop[i], n + 1);
        }
    }
    if (m.version < 2 && (kind > MQ_WIRE_KIND_MESSAGE || g->flags & MQ_GEN_WHOLE_CONTEXT || g->precision || g->n_stop ||
                          g->presence_penalty != 0 || g->frequency_penalty != 0))
        return set_err(c, -MQ_EVERSION, "mqd speaks protocol version %u; this request needs version 2",
                       c->info.protocol_version);
    char err[200];
    if (mq_wire_gen_check(g, m.version, err, sizeof err))
        return set_err(c, -EINVAL, "%s", err);
    if (len == 0)
        return set_err(c, -EINVAL, "empty prompt");
    if (role < MQ_ROLE_USER || role > MQ_ROLE_TOOL)
        return set_err(c, -EINVAL, "role %d is not user, system or tool", role);
    pthread_mutex_lock(&c->lock);
    int rc;
    mq_ring *ring = &c->chan.prompt;
    if (len > ring->size) {
        rc = set_err(c, -MQ_ETOOLONG, "prompt of %zu bytes is larger than the prompt ring (%u)", len, ring->size);
        goto out;
    }
    if (c->dead) {
        rc = set_err(c, -EPIPE, "connection to mqd is closed");
        goto out;
    }
    /* mqd empties the ring while handling each SUBMIT, so this wait is normally instant. */
    rc = mq_ring_wait_space(ring, (uint32_t)len, REPLY_TIMEOUT_S * 1000);
    if (rc) {
        rc = set_err(c, rc, "prompt ring: %s", mq_strerror(rc));
        goto out;
    }
    m.u.submit.ring_off = ring->pos;
    m.u.submit.len = (uint32_t)len;
    mq_ring_write(ring, bytes, (uint32_t)len);
    mq_ring_publish(ring);
    rc = call(c, &m, MQ_MSG_SUBMITTED, &r);
    if (!rc && req)
        *req = r.u.submitted.req;
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int mq_send_message(mq_conn *c, uint64_t session, int role, const char *text, size_t len, const mq_params *p,
                    uint64_t *req)
{
    return submit(c, session, MQ_WIRE_KIND_MESSAGE, role, text, len, p, NULL, req);
}

int mq_send_text(mq_conn *c, uint64_t session, const char *text, size_t len, const mq_params *p, uint64_t *req)
{
    return submit(c, session, MQ_WIRE_KIND_TEXT, MQ_ROLE_USER, text, len, p, NULL, req);
}

int mq_send_tokens(mq_conn *c, uint64_t session, const int32_t *ids, size_t n, const mq_params *p, uint64_t *req)
{
    if (n > SIZE_MAX / 4)
        return set_err(c, -EINVAL, "too many token ids");
    return submit(c, session, MQ_WIRE_KIND_TOKENS, MQ_ROLE_USER, ids, n * 4, p, NULL, req);
}

int mq_send_chat(mq_conn *c, uint64_t session, const char *json, size_t len, const mq_params *p,
                 const mq_request_opts *o, uint64_t *req)
{
    mq_request_opts whole = { 0 };
    if (o)
        whole = *o;
    whole.flags |= MQ_REQ_WHOLE_CONTEXT;
    return submit(c, session, MQ_WIRE_KIND_CHAT, MQ_ROLE_USER, json, len, p, &whole, req);
}

int mq_send_prompt(mq_conn *c, uint64_t session, const char *text, size_t len, const mq_params *p,
                   const mq_request_opts *o, uint64_t *req)
{
    return submit(c, session, MQ_WIRE_KIND_PROMPT, MQ_ROLE_USER, text, len, p, o, req);
}

int mq_cancel(mq_conn *c, uint64_t req)
{
    mq_msg m = { .type = MQ_MSG_CANCEL }, r;
    m.u.cancel.req = req;
    int rc = locked_call(c, &m, MQ_MSG_CANCELED, &r);
    return rc;
}

/* STATS in the agreed version: *state gets mqd's state (READY for a v1 reply). */
static int stats_call(mq_conn *c, mq_stats *out, int *state)
{
    mq_msg m = { .type = MQ_MSG_STATS }, r;
    m.version = (uint16_t)c->info.protocol_version;
    int rc = locked_call(c, &m, MQ_MSG_STATS_REPLY, &r);
    if (rc)
        return rc;
    const mq_wire_stats *s = &r.u.stats;
    *state = s->state ? s->state : MQ_STATE_READY;
    if (!out)
        return 0;
    out->uptime_ms = s->uptime_ms;
    out->sessions = s->sessions;
    out->requests_running = s->requests_running;
    out->requests_queued = s->requests_queued;
    out->kv_blocks_used = s->kv_blocks_used;
    out->kv_blocks_total = s->kv_blocks_total;
    out->kv_block_tokens = s->kv_block_tokens;
    out->requests_done = s->requests_done;
    out->prompt_tokens = s->prompt_tokens;
    out->cached_tokens = s->cached_tokens;
    out->prefill_tokens = s->prefill_tokens;
    out->decode_tokens = s->decode_tokens;
    out->prefill_tps = s->prefill_tps;
    out->decode_tps = s->decode_tps;
    return 0;
}

int mq_stats_get(mq_conn *c, mq_stats *out)
{
    int state;
    return stats_call(c, out, &state);
}

int mq_state_get(mq_conn *c, mq_stats *out)
{
    int state;
    int rc = stats_call(c, out, &state);
    return rc ? rc : state;
}

/* ---- events ---------------------------------------------------------------------- */
int mq_event_fd(mq_conn *c)
{
    __atomic_store_n(&c->chan.hdr->token.poll_armed, 1, __ATOMIC_SEQ_CST);
    return c->efd;
}

/* Is mqd still there? (The socket turns readable with EOF/HUP when it dies.) */
static int peer_gone(mq_conn *c)
{
    struct pollfd pf = { c->sock, POLLIN, 0 };
    if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLERR)))
        return 1;
    return c->dead;
}

static void fill_event(mq_conn *c, mq_event *ev)
{
    mq_chan_rec h;
    memcpy(&h, c->rec, sizeof h);
    memset(ev, 0, sizeof *ev);
    ev->req = h.req;
    if (h.type == MQ_REC_TOKEN) {
        ev->type = MQ_EVENT_TOKEN;
        ev->token = h.token;
        ev->special = !!(h.flags & MQ_REC_SPECIAL);
        ev->text = (const char *)c->rec + sizeof h;
        ev->text_len = h.text_len;
        return;
    }
    mq_chan_done d;
    memcpy(&d, c->rec + sizeof h, sizeof d);
    ev->type = MQ_EVENT_DONE;
    ev->token = -1;
    ev->end_reason = d.end_reason;
    ev->error = d.error > 0 ? -d.error : d.error;
    ev->stats.prompt_tokens = d.prompt_tokens;
    ev->stats.cached_tokens = d.cached_tokens;
    ev->stats.prefilled_tokens = d.prefilled_tokens;
    ev->stats.gen_tokens = d.gen_tokens;
    ev->stats.queue_us = d.queue_us;
    ev->stats.ttft_us = d.ttft_us;
    ev->stats.prefill_us = d.prefill_us;
    ev->stats.decode_us = d.decode_us;
    /* NUL-terminate the message for convenience (the record has padding or we cut). */
    size_t off = sizeof h + sizeof d;
    size_t n = h.text_len;
    if (off + n >= sizeof c->rec)
        n = sizeof c->rec - off - 1;
    c->rec[off + n] = 0;
    ev->text = (const char *)c->rec + off;
    ev->text_len = n;
}

int mq_next_event(mq_conn *c, mq_event *ev, int timeout_ms)
{
    pthread_mutex_lock(&c->rx_lock);
    int rc;
    int waited = 0;
    for (;;) {
        if (__atomic_load_n(&c->chan.hdr->token.poll_armed, __ATOMIC_RELAXED)) {
            /* empty the wake-up pipe before looking at the ring: no lost wake-up */
            uint8_t drain[256];
            while (read(c->efd, drain, sizeof drain) == (ssize_t)sizeof drain)
                ;
        }
        /* rec[] has room for the largest record plus the NUL fill_event adds */
        rc = mq_chan_read_rec(&c->chan.token, c->rec, sizeof c->rec - 1);
        if (rc == 1) {
            fill_event(c, ev);
            rc = 0;
            break;
        }
        if (rc < 0) {
            set_err(c, rc, "token ring is corrupt");
            break;
        }
        if (timeout_ms == 0 || (timeout_ms > 0 && waited >= timeout_ms)) {
            rc = -ETIMEDOUT;
            break;
        }
        if (peer_gone(c)) {
            c->dead = 1;
            rc = set_err(c, -EPIPE, "mqd closed the connection");
            break;
        }
        int slice = HUP_CHECK_MS;
        if (timeout_ms > 0 && timeout_ms - waited < slice)
            slice = timeout_ms - waited;
        rc = mq_ring_wait_data(&c->chan.token, slice);
        if (rc == -ETIMEDOUT || rc == -EINTR)
            waited += slice; /* an EINTR counts as a whole slice: bounded, never spins */
        else if (rc < 0) {
            set_err(c, rc, "token ring is corrupt");
            break;
        }
    }
    pthread_mutex_unlock(&c->rx_lock);
    return rc;
}
