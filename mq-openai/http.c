/* mq-openai/http.c — routes, limits, authentication and the request life cycle (http.h). */
#define _GNU_SOURCE
#include "mq-openai/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/errmsg.h"
#include "mq-openai/keys.h"
#include "mq-openai/output.h"
#include "mq-openai/reply.h"
#include "mq-openai/request.h"

#define SSE_BLOCK       16384 /* bytes libmicrohttpd asks the stream callback for */
#define CANCEL_DRAIN_MS 5000  /* a cancelled request's DONE arrives within this */
#define MQD_CHECK_MS    1000  /* while waiting for tokens, look whether mqd is alive */
#define RETRY_AFTER_S   "2"   /* 429 and 503: when to try again (a load takes seconds) */
#define WORKER_IDLE_S   30    /* an idle worker thread exits after this */
#define PUMP_EVENTS     64    /* epoll events the pump takes per wake-up */

typedef struct upload upload;
typedef struct gen gen;

struct oai_server {
    oai_config cfg;
    oai_backend *be;
    oai_metrics m;
    struct MHD_Daemon *mhd;
    oai_keys *keys; /* NULL: no authentication */
    long long started;
    uint64_t next_id; /* atomic */
    int stopping;     /* atomic */

    /* workers: requests that wait for mqd run here, never on libmicrohttpd's thread */
    pthread_mutex_t job_mu;
    pthread_cond_t job_cv;  /* a job was queued, or stop */
    pthread_cond_t job_end; /* a worker exited, or a job answered */
    upload *job_head, *job_tail;
    int workers, idle_workers, unanswered; /* unanswered: jobs whose connection is suspended */
    int mu_ok;

    /* the pump: one thread that reads every stream's mqd events and wakes libmicrohttpd */
    int epfd, wakefd;
    pthread_t pump;
    int pump_running;
    pthread_mutex_t pump_mu;
    pthread_cond_t pump_cv;
    uint64_t epoch; /* pump iterations done (pump_mu) */
    int pump_stop;  /* pump_mu */
    gen *streams;   /* live streams (job_mu), for stop */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- authentication ------------------------------------------------------------------ */

#define NO_KEYS      (-1) /* no api_keys_file: every request is mq-openai's own tenant */
#define UNAUTHORIZED (-2)

/* The index of the request's key, NO_KEYS or UNAUTHORIZED. */
static int key_of(oai_server *s, struct MHD_Connection *c)
{
    if (!s->keys)
        return NO_KEYS;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7))
        return UNAUTHORIZED;
    const char *k = h + 7;
    int i = oai_keys_find(s->keys, k, strnlen(k, OAI_KEY_MAX_LEN + 1));
    return i >= 0 ? i : UNAUTHORIZED;
}

/* ---- responses --------------------------------------------------------------------------- */

static enum MHD_Result send_body(struct MHD_Connection *c, int status, const char *type, char *body)
{
    if (!body)
        body =
            strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":500}}"),
        status = 500;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 429 || status == 503) /* busy, loading, draining: clients and balancers back off */
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, RETRY_AFTER_S);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(oai_server *s, struct MHD_Connection *c, oai_endpoint ep, const oai_error *e)
{
    oai_metrics_request(&s->m, ep, e->status);
    return send_body(c, e->status, "application/json", oai_reply_error(e));
}

static enum MHD_Result fail(oai_server *s, struct MHD_Connection *c, oai_endpoint ep, int status, const char *type,
                            const char *param, const char *msg)
{
    oai_error e;
    oai_fail(&e, status, type, param, "%s", msg);
    return send_error(s, c, ep, &e);
}

/* libmq / mqd errors -> HTTP */
static void mq_error(oai_error *e, int rc, const char *msg)
{
    switch (-rc) {
    case MQ_ETOOLONG: oai_fail(e, 400, "invalid_request_error", "messages", "%s", msg); break;
    case MQ_EBADPROMPT: oai_fail(e, 400, "invalid_request_error", "messages", "%s", msg); break;
    case MQ_ELIMIT:
    case EAGAIN: oai_fail(e, 429, "rate_limit_error", NULL, "%s", msg); break;
    case MQ_EDRAINING:
    case MQ_EKVFULL:
    case ENOTCONN:
    case ETIMEDOUT:
    case EPIPE:
    case ECONNREFUSED:
    case ECONNRESET:
    case ENOENT: oai_fail(e, 503, "service_unavailable", NULL, "%s", msg); break;
    default: oai_fail(e, 500, "server_error", NULL, "%s", msg);
    }
}

/* ---- one generation ---------------------------------------------------------------------- */

/* A descriptor the pump watches for a stream. */
typedef struct watch {
    gen *g;
    int client; /* 0: the mqd connection's event fd, 1: the client's socket */
} watch;

struct gen {
    oai_server *s;
    struct MHD_Connection *mc;
    int cfd; /* the client's socket */
    oai_endpoint ep;
    oai_request rq;
    oai_reply_ctx rc;
    oai_lease lease;
    uint64_t req;
    int running; /* a request is in mqd and its DONE has not been read */
    oai_output out;
    oai_message msg; /* non-streaming chat */
    oai_buf text;    /* non-streaming completion */
    mq_event done;
    char done_msg[512];
    double t0, t_first, t_last;
    int aborted;

    /* streaming; mu guards what the pump, libmicrohttpd's thread and the worker share */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int mu_ok;
    oai_buf sse; /* bytes not yet handed to libmicrohttpd */
    size_t sse_off;
    int finished;            /* the last bytes are queued */
    int suspended;           /* libmicrohttpd waits for this stream's bytes (the connection is suspended) */
    int ended;               /* libmicrohttpd is done with the stream (response destroyed) */
    int dead;                /* the pump must not touch it any more */
    int watch_ev, watch_cli; /* registered in the pump's epoll */
    watch w_ev, w_cli;
    gen *next_stream, *prev_stream; /* s->streams (job_mu) */
};

/* A response cut short by a failed allocation still ends cleanly. */
static void buf_put(oai_buf *b, const char *s, size_t n)
{
    (void)oai_buf_add(b, s, n);
}

static void sse_put(gen *g, char *line)
{
    if (line) {
        buf_put(&g->sse, line, strlen(line));
        free(line);
    }
}

static void on_parsed(void *ctx, const oai_event *ev)
{
    gen *g = ctx;
    if (g->rq.stream)
        sse_put(g, oai_sse_event(&g->rc, ev));
    else
        oai_message_add(&g->msg, ev);
}

/* Waits for the next event of this request: 0, -ECONNABORTED (the client hung up) or a
 * libmq error (-EPIPE: mqd went away). */
static int next_event(gen *g, mq_event *ev, int watch_client)
{
    for (;;) {
        int rc = mq_next_event(g->lease.conn, ev, 0);
        if (rc == 0) {
            if (ev->req != g->req)
                continue; /* a stale event of an earlier request on this connection */
            return 0;
        }
        if (rc != -ETIMEDOUT)
            return rc;
        if (__atomic_load_n(&g->s->stopping, __ATOMIC_RELAXED))
            return -ECONNABORTED;
        struct pollfd pf[2] = { { mq_event_fd(g->lease.conn), POLLIN, 0 }, { g->cfd, POLLRDHUP, 0 } };
        int n = poll(pf, watch_client && g->cfd >= 0 ? 2 : 1, MQD_CHECK_MS);
        if (n > 0 && (pf[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return -ECONNABORTED;
        if (n == 0) { /* quiet for a while: is mqd still there? */
            rc = mq_next_event(g->lease.conn, ev, 1);
            if (rc == 0 && ev->req == g->req)
                return 0;
            if (rc != 0 && rc != -ETIMEDOUT)
                return rc;
        }
    }
}

static const char *finish_reason(const gen *g, int n_calls)
{
    if (g->done.end_reason == MQ_END_LENGTH)
        return "length";
    return n_calls > 0 ? "tool_calls" : "stop";
}

/* One event of the running request. */
static void handle_event(gen *g, const mq_event *ev)
{
    if (ev->type == MQ_EVENT_TOKEN) {
        double t = now_s();
        if (g->t_first == 0) {
            g->t_first = t;
            oai_metrics_observe(&g->s->m.ttft, t - g->t0);
        } else
            oai_metrics_observe(&g->s->m.itl, t - g->t_last);
        g->t_last = t;
        if (!ev->text_len)
            return;
        if (g->rq.kind == OAI_CHAT)
            oai_output_feed(&g->out, ev->text, ev->text_len, on_parsed, g);
        else if (g->rq.stream)
            sse_put(g, oai_sse_text(&g->rc, ev->text, ev->text_len));
        else
            buf_put(&g->text, ev->text, ev->text_len);
        return;
    }
    g->done = *ev;
    snprintf(g->done_msg, sizeof g->done_msg, "%.*s", (int)ev->text_len, ev->text ? ev->text : "");
    g->done.text = g->done_msg;
    g->running = 0;
    if (g->rq.kind == OAI_CHAT)
        oai_output_finish(&g->out, on_parsed, g);
    oai_metrics_tokens(&g->s->m, ev->stats.prompt_tokens, ev->stats.cached_tokens, ev->stats.gen_tokens);
}

static oai_usage usage_of(const gen *g)
{
    oai_usage u = { g->done.stats.prompt_tokens, g->done.stats.gen_tokens, g->done.stats.cached_tokens,
                    g->done.stats.queue_us / 1e3, g->done.stats.ttft_us / 1e3 };
    return u;
}

/* The DONE of a failed request -> an error (0 if it did not fail). */
static int done_error(const gen *g, oai_error *e)
{
    if (g->done.end_reason == MQ_END_FAILED || g->done.end_reason == MQ_END_SHUTDOWN) {
        mq_error(e, g->done.error ? g->done.error : -MQ_EINTERNAL,
                 g->done_msg[0] ? g->done_msg : mq_strerror(g->done.error));
        return 1;
    }
    return 0;
}

/* Cancels a running request and reads until its DONE, so that the connection can serve
 * the next request; a connection that does not get there is dropped. */
static void stop_request(gen *g)
{
    if (!g->running)
        return;
    mq_cancel(g->lease.conn, g->req);
    double until = now_s() + CANCEL_DRAIN_MS / 1e3;
    mq_event ev;
    while (g->running && now_s() < until) {
        int rc = mq_next_event(g->lease.conn, &ev, 100);
        if (rc == 0 && ev.req == g->req && ev.type == MQ_EVENT_DONE)
            g->running = 0;
        else if (rc && rc != -ETIMEDOUT)
            break;
    }
    if (g->running)
        g->lease.broken = 1;
    g->running = 0;
}

static void gen_free(gen *g)
{
    if (!g)
        return;
    if (g->lease.conn) {
        stop_request(g);
        oai_backend_release(g->s->be, &g->lease);
    }
    oai_metrics_observe(&g->s->m.e2e, now_s() - g->t0);
    oai_request_free(&g->rq);
    oai_output_free(&g->out);
    oai_message_free(&g->msg);
    free(g->text.p);
    free(g->sse.p);
    if (g->mu_ok) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
    }
    free(g);
}

/* Sends the request to mqd; on failure *e says why. */
static int gen_start(gen *g, const char *tenant, const char *session_key, oai_error *e)
{
    oai_server *s = g->s;
    char err[512];
    int rc = oai_backend_acquire(s->be, tenant, session_key, &g->lease, err, sizeof err);
    if (rc) {
        mq_error(e, rc, err);
        return rc;
    }
    const oai_request *q = &g->rq;
    mq_params p;
    mq_request_opts o;
    oai_request_params(q, s->cfg.default_max_tokens, &p, &o);
    g->t0 = g->t0 ? g->t0 : now_s();
    rc = q->kind == OAI_CHAT
             ? mq_send_chat(g->lease.conn, g->lease.session, q->payload, q->payload_len, &p, &o, &g->req)
             : mq_send_prompt(g->lease.conn, g->lease.session, q->payload, q->payload_len, &p, &o, &g->req);
    if (rc) {
        mq_last_error(g->lease.conn, err, sizeof err);
        if (rc == -EPIPE || rc == -ECONNRESET)
            g->lease.broken = g->lease.gone = 1;
        mq_error(e, rc, err);
        oai_backend_release(s->be, &g->lease);
        return rc;
    }
    g->running = 1;
    if (q->kind == OAI_CHAT) {
        oai_output_init(&g->out, q->has_tools, 1, g->req);
        if (q->prefix && q->prefix[0]) /* the forced start of the reply is part of it */
            oai_output_feed(&g->out, q->prefix, strlen(q->prefix), on_parsed, g);
    }
    return 0;
}

/* ---- streaming ----------------------------------------------------------------------------- */
/* A stream's bytes are made by the pump, one thread for every stream: it waits on the
 * event fds of the streams' mqd connections, turns every event already there into SSE
 * chunks and resumes the suspended HTTP connections; libmicrohttpd's thread then writes
 * each connection's chunks in one send. A decode step of a batch of streams costs one
 * wake-up of each thread, not one per stream. While a stream is suspended the pump also
 * watches its client socket (libmicrohttpd does not), so a client that hangs up is seen
 * at once; its worker then cancels the request in mqd. */

static void stream_finish(gen *g)
{
    oai_error e;
    if (done_error(g, &e)) {
        sse_put(g, oai_sse_error(&e));
    } else {
        sse_put(g, oai_sse_finish(&g->rc, finish_reason(g, g->out.n_calls)));
        if (g->rq.include_usage) {
            oai_usage u = usage_of(g);
            sse_put(g, oai_sse_usage(&g->rc, &u));
        }
    }
    buf_put(&g->sse, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
    g->finished = 1;
}

static int pump_watch(gen *g, watch *w, int fd, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = w };
    return epoll_ctl(g->s->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static void pump_unwatch(gen *g, int *watched, int fd)
{
    if (*watched)
        epoll_ctl(g->s->epfd, EPOLL_CTL_DEL, fd, NULL);
    *watched = 0;
}

/* Resumes libmicrohttpd on the stream when it has something to do (g->mu held). */
static void stream_wake(gen *g)
{
    if (!g->suspended || (g->sse_off == g->sse.len && !g->finished && !g->aborted))
        return;
    pump_unwatch(g, &g->watch_cli, g->cfd);
    g->suspended = 0;
    MHD_resume_connection(g->mc);
}

/* The pump: the stream's mqd connection has events (g->mu held). */
static void pump_events(gen *g, uint32_t revents)
{
    mq_event ev;
    int rc = 0;
    while (g->running && (rc = mq_next_event(g->lease.conn, &ev, 0)) == 0)
        if (ev.req == g->req)
            handle_event(g, &ev);
    if (g->running && rc == -ETIMEDOUT && (revents & (EPOLLHUP | EPOLLERR)))
        rc = -EPIPE; /* mqd closed its end of the wake-up pipe: it is gone */
    if (g->running && rc != -ETIMEDOUT) {
        g->lease.broken = 1;
        g->lease.gone = rc == -EPIPE;
        g->running = 0;
        oai_error e;
        mq_error(&e, rc, "mqd went away during the request");
        sse_put(g, oai_sse_error(&e));
        buf_put(&g->sse, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
        g->finished = 1;
    } else if (!g->running && !g->finished)
        stream_finish(g);
    if (!g->running) /* later events on the connection are not this stream's */
        pump_unwatch(g, &g->watch_ev, mq_event_fd(g->lease.conn));
    stream_wake(g);
}

static void *pump_main(void *arg)
{
    oai_server *s = arg;
    struct epoll_event evs[PUMP_EVENTS];
    for (;;) {
        int n = epoll_wait(s->epfd, evs, PUMP_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            watch *w = evs[i].data.ptr;
            if (!w) {
                uint64_t v;
                ssize_t r = read(s->wakefd, &v, sizeof v);
                (void)r; /* a wake-up only: the loop below counts the iteration */
                continue;
            }
            gen *g = w->g;
            pthread_mutex_lock(&g->mu);
            if (g->dead) {
            } else if (!w->client) {
                pump_events(g, evs[i].events);
            } else if (g->suspended) { /* the client hung up while it waited */
                g->aborted = 1;
                __atomic_add_fetch(&s->m.aborted, 1, __ATOMIC_RELAXED);
                stream_wake(g);
            }
            pthread_mutex_unlock(&g->mu);
        }
        pthread_mutex_lock(&s->pump_mu);
        s->epoch++;
        pthread_cond_broadcast(&s->pump_cv);
        int stop = s->pump_stop;
        pthread_mutex_unlock(&s->pump_mu);
        if (stop)
            return NULL;
    }
}

static void pump_kick(oai_server *s)
{
    uint64_t one = 1;
    ssize_t w = write(s->wakefd, &one, sizeof one);
    (void)w; /* an eventfd only fails when its counter is full: the pump is being woken */
}

/* Takes the stream out of the pump: when this returns, the pump neither holds nor will
 * see it (an epoll batch taken before the removal is finished). */
static void pump_forget(gen *g)
{
    oai_server *s = g->s;
    pthread_mutex_lock(&g->mu);
    g->dead = 1;
    pump_unwatch(g, &g->watch_ev, g->lease.conn ? mq_event_fd(g->lease.conn) : -1);
    pump_unwatch(g, &g->watch_cli, g->cfd);
    pthread_mutex_unlock(&g->mu);
    pthread_mutex_lock(&s->pump_mu);
    uint64_t e0 = s->epoch;
    pthread_mutex_unlock(&s->pump_mu);
    pump_kick(s);
    pthread_mutex_lock(&s->pump_mu);
    while (s->epoch == e0 && s->pump_running)
        pthread_cond_wait(&s->pump_cv, &s->pump_mu);
    pthread_mutex_unlock(&s->pump_mu);
}

/* libmicrohttpd's thread: the next bytes of the stream, or a suspend until there are. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    gen *g = cls;
    pthread_mutex_lock(&g->mu);
    ssize_t ret;
    if (g->sse_off < g->sse.len) {
        size_t n = g->sse.len - g->sse_off;
        if (n > max)
            n = max;
        memcpy(buf, g->sse.p + g->sse_off, n);
        g->sse_off += n;
        if (g->sse_off == g->sse.len)
            g->sse.len = g->sse_off = 0;
        ret = (ssize_t)n;
    } else if (g->aborted || __atomic_load_n(&g->s->stopping, __ATOMIC_RELAXED)) {
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (g->finished) {
        ret = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        if (g->cfd >= 0 && pump_watch(g, &g->w_cli, g->cfd, EPOLLRDHUP) == 0)
            g->watch_cli = 1;
        g->suspended = 1;
        MHD_suspend_connection(g->mc);
        ret = 0;
    }
    pthread_mutex_unlock(&g->mu);
    return ret;
}

/* libmicrohttpd is done with the stream; its worker cleans up. */
static void stream_end(void *cls)
{
    gen *g = cls;
    pthread_mutex_lock(&g->mu);
    g->ended = 1;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* The worker of a stream, once its first bytes are ready: hands it to the pump, answers
 * the HTTP request, then waits until libmicrohttpd is done with it and cleans up (cancels
 * a request still running, gives the mqd connection back). */
static void stream_run(gen *g)
{
    oai_server *s = g->s;
    pthread_mutex_lock(&g->mu);
    int rc = pump_watch(g, &g->w_ev, mq_event_fd(g->lease.conn), EPOLLIN);
    if (rc == 0) {
        g->watch_ev = 1;
        /* events published before the connection asked for fd wake-ups (mq_event_fd) made
         * no wake-up: read what is there now */
        pump_events(g, 0);
    } else { /* cannot wait for its tokens: end it with an error chunk */
        oai_error e;
        oai_fail(&e, 500, "server_error", NULL, "epoll: %s", strerror(-rc));
        sse_put(g, oai_sse_error(&e));
        buf_put(&g->sse, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
        g->finished = 1;
    }
    while (!g->ended)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    pump_forget(g);
    pthread_mutex_lock(&s->job_mu);
    if (g->prev_stream)
        g->prev_stream->next_stream = g->next_stream;
    else
        s->streams = g->next_stream;
    if (g->next_stream)
        g->next_stream->prev_stream = g->prev_stream;
    pthread_mutex_unlock(&s->job_mu);
    gen_free(g);
}

/* ---- requests handed to workers ------------------------------------------------------------ */

enum route { R_NONE, R_HEALTH, R_METRICS, R_MODELS, R_GENERATE };

/* One HTTP request on a connection (libmicrohttpd's per-request pointer). */
struct upload {
    char *p;
    size_t len, cap;
    int too_large;
    double t0;
    /* handed to a worker: the connection is suspended until the answer is ready */
    oai_server *s;
    struct MHD_Connection *mc;
    enum route route;
    oai_endpoint ep;
    const char *tenant;
    char session_key[129];
    int cfd;
    int answered;      /* the worker's answer is below */
    int status;        /* ... a body to send (body NULL: out of memory) */
    const char *ctype; /* ... of the body */
    char *body;
    gen *stream; /* ... or a stream to start; owned by the request until its response exists */
    int hang_up; /* ... or nothing: the client went away */
    upload *next_job;
};

static void answer(upload *u, int status, const char *ctype, char *body)
{
    u->status = status;
    u->ctype = ctype;
    u->body = body;
}

static void answer_error(upload *u, const oai_error *e)
{
    oai_metrics_request(&u->s->m, u->ep, e->status);
    answer(u, e->status, "application/json", oai_reply_error(e));
}

static void answer_fail(upload *u, int status, const char *type, const char *param, const char *msg)
{
    oai_error e;
    oai_fail(&e, status, type, param, "%s", msg);
    answer_error(u, &e);
}

/* ---- the generation endpoints ------------------------------------------------------------- */

/* A worker: parse, send to mqd, and run a non-streaming request to its end; a streaming
 * one is left in u->stream with its first bytes. */
static void generate(upload *u)
{
    oai_server *s = u->s;
    oai_endpoint ep = u->ep;
    const char *body = u->p ? u->p : "";
    gen *g = calloc(1, sizeof *g);
    if (!g) {
        answer_fail(u, 500, "server_error", NULL, "out of memory");
        return;
    }
    g->s = s;
    g->mc = u->mc;
    g->ep = ep;
    g->t0 = u->t0;
    g->cfd = u->cfd;
    g->lease.slot = -1;
    g->w_ev = (watch){ g, 0 };
    g->w_cli = (watch){ g, 1 };
    oai_error e;
    int rc =
        ep == OAI_EP_CHAT ? oai_parse_chat(body, u->len, &g->rq, &e) : oai_parse_completion(body, u->len, &g->rq, &e);
    if (rc) {
        free(g);
        answer_error(u, &e);
        return;
    }
    if (oai_request_default_think(&g->rq, !strcmp(s->cfg.think_history, "as_generated"))) {
        gen_free(g);
        answer_fail(u, 500, "server_error", NULL, "out of memory");
        return;
    }
    mq_server_info info;
    const char *served = s->cfg.model_name[0] ? s->cfg.model_name : "";
    if (!*served && oai_backend_info(s->be, &info) == 0)
        served = info.model;
    if (!*served) {
        gen_free(g);
        answer_fail(u, 503, "service_unavailable", NULL, "mqd is not reachable");
        return;
    }
    if (g->rq.model[0] && strcmp(g->rq.model, served)) {
        char m[400];
        snprintf(m, sizeof m, "The model `%.127s` does not exist (this server serves `%.127s`).", g->rq.model, served);
        gen_free(g);
        answer_fail(u, 404, "NotFoundError", "model", m);
        return;
    }
    if (!g->rq.model[0]) /* the name mqd gave lives in a local: keep a copy */
        snprintf(g->rq.model, sizeof g->rq.model, "%.127s", served);
    g->rc.kind = g->rq.kind;
    g->rc.model = g->rq.model;
    snprintf(g->rc.id, sizeof g->rc.id, "%s-%llu", ep == OAI_EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)__atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
    g->rc.created = (long long)time(NULL);
    const char *key = u->session_key[0] ? u->session_key : g->rq.user;
    if (strlen(key) > 127) {
        gen_free(g);
        answer_fail(u, 400, "invalid_request_error", "X-Session-Id", "X-Session-Id: longer than 127 bytes");
        return;
    }
    if (gen_start(g, u->tenant, key, &e)) {
        gen_free(g);
        answer_error(u, &e);
        return;
    }
    if (g->rq.stream) {
        if (pthread_mutex_init(&g->mu, NULL) == 0 && pthread_cond_init(&g->cv, NULL) == 0)
            g->mu_ok = 1;
        else {
            gen_free(g);
            answer_fail(u, 500, "server_error", NULL, "out of memory");
            return;
        }
        if (g->rq.kind == OAI_CHAT)
            sse_put(g, oai_sse_role(&g->rc));
        pthread_mutex_lock(&s->job_mu);
        g->next_stream = s->streams;
        if (s->streams)
            s->streams->prev_stream = g;
        s->streams = g;
        pthread_mutex_unlock(&s->job_mu);
        oai_metrics_request(&s->m, ep, 200);
        u->stream = g;
        return;
    }
    /* not streaming: run to the end here (the connection waits, suspended) */
    while (g->running) {
        mq_event ev;
        rc = next_event(g, &ev, 1);
        if (rc == -ECONNABORTED) {
            __atomic_add_fetch(&s->m.aborted, 1, __ATOMIC_RELAXED);
            gen_free(g);
            u->hang_up = 1; /* nobody to answer */
            return;
        }
        if (rc) {
            g->lease.broken = 1;
            g->lease.gone = rc == -EPIPE;
            g->running = 0;
            mq_error(&e, rc, "mqd went away during the request");
            gen_free(g);
            answer_error(u, &e);
            return;
        }
        handle_event(g, &ev);
    }
    if (done_error(g, &e)) {
        gen_free(g);
        answer_error(u, &e);
        return;
    }
    oai_usage us = usage_of(g);
    char *body_out = g->rq.kind == OAI_CHAT
                         ? oai_reply_chat(&g->rc, &g->msg, finish_reason(g, g->msg.n_calls), &us)
                         : oai_reply_completion(&g->rc, g->text.p, g->text.len, finish_reason(g, 0), &us);
    gen_free(g);
    oai_metrics_request(&s->m, ep, 200);
    answer(u, 200, "application/json", body_out);
}

/* ---- the other endpoints ----------------------------------------------------------------- */

static void health(upload *u)
{
    mq_stats st;
    int state = oai_backend_state(u->s->be, &st);
    const char *body = state == MQ_STATE_READY      ? "{\"status\":\"ok\"}"
                       : state == MQ_STATE_DRAINING ? "{\"status\":\"draining\"}"
                                                    : "{\"status\":\"unavailable\",\"reason\":\"mqd does not answer\"}";
    answer(u, state == MQ_STATE_READY ? 200 : 503, "application/json", strdup(body));
}

static void metrics(upload *u)
{
    oai_server *s = u->s;
    mq_stats st;
    memset(&st, 0, sizeof st);
    oai_gauges g = { .state = oai_backend_state(s->be, &st) };
    g.running = st.requests_running;
    g.waiting = st.requests_queued;
    g.kv_used = st.kv_blocks_used;
    g.kv_total = st.kv_blocks_total;
    g.http_running = oai_backend_busy(s->be);
    mq_server_info info;
    const char *model = s->cfg.model_name[0] ? s->cfg.model_name : "";
    if (!*model && oai_backend_info(s->be, &info) == 0)
        model = info.model;
    answer(u, 200, "text/plain; version=0.0.4", oai_metrics_render(&s->m, model, &g));
}

static void models(upload *u)
{
    oai_server *s = u->s;
    mq_server_info info;
    const char *model = s->cfg.model_name[0] ? s->cfg.model_name : "";
    if (!*model && oai_backend_info(s->be, &info) == 0)
        model = info.model;
    if (!*model) {
        answer_fail(u, 503, "service_unavailable", NULL, "mqd is not reachable");
        return;
    }
    oai_metrics_request(&s->m, OAI_EP_OTHER, 200);
    answer(u, 200, "application/json", oai_reply_models(model, s->started));
}

/* ---- workers ------------------------------------------------------------------------------ */
/* A request's wait for mqd (a free connection, OPEN and SUBMIT round trips, a whole
 * non-streaming generation, the control connection of /health) happens on a worker, so
 * libmicrohttpd's one thread never blocks. Idle workers are kept a while and reused. */

static void run_job(upload *u)
{
    oai_server *s = u->s;
    switch (u->route) {
    case R_HEALTH: health(u); break;
    case R_METRICS: metrics(u); break;
    case R_MODELS: models(u); break;
    default: generate(u); break;
    }
    gen *stream = u->stream;
    struct MHD_Connection *mc = u->mc;
    pthread_mutex_lock(&s->job_mu);
    u->answered = 1;
    s->unanswered--;
    pthread_cond_broadcast(&s->job_end);
    pthread_mutex_unlock(&s->job_mu);
    MHD_resume_connection(mc); /* u may be gone from here on */
    if (stream)
        stream_run(stream);
}

static void *worker_main(void *arg)
{
    oai_server *s = arg;
    pthread_mutex_lock(&s->job_mu);
    for (;;) {
        while (!s->job_head && !s->stopping) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += WORKER_IDLE_S;
            s->idle_workers++;
            int rc = pthread_cond_timedwait(&s->job_cv, &s->job_mu, &dl);
            s->idle_workers--;
            if (rc == ETIMEDOUT && !s->job_head)
                break;
        }
        upload *u = s->job_head;
        if (!u)
            break;
        s->job_head = u->next_job;
        if (!s->job_head)
            s->job_tail = NULL;
        pthread_mutex_unlock(&s->job_mu);
        run_job(u);
        pthread_mutex_lock(&s->job_mu);
    }
    s->workers--;
    pthread_cond_broadcast(&s->job_end);
    pthread_mutex_unlock(&s->job_mu);
    return NULL;
}

/* Suspends the connection and queues its request for a worker. */
static int submit_job(oai_server *s, upload *u)
{
    pthread_mutex_lock(&s->job_mu);
    if (!s->idle_workers) {
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &a, worker_main, s);
        pthread_attr_destroy(&a);
        if (rc && !s->workers) {
            pthread_mutex_unlock(&s->job_mu);
            return -rc;
        }
        if (!rc)
            s->workers++;
    }
    u->next_job = NULL;
    if (s->job_tail)
        s->job_tail->next_job = u;
    else
        s->job_head = u;
    s->job_tail = u;
    s->unanswered++;
    MHD_suspend_connection(u->mc);
    pthread_cond_signal(&s->job_cv);
    pthread_mutex_unlock(&s->job_mu);
    return 0;
}

/* ---- libmicrohttpd callbacks ------------------------------------------------------------------ */

static enum MHD_Result send_answer(oai_server *s, struct MHD_Connection *c, upload *u)
{
    if (u->hang_up)
        return MHD_NO;
    gen *g = u->stream;
    if (!g)
        return send_body(c, u->status, u->ctype, u->body);
    u->stream = NULL; /* from here on the response owns it (stream_end) */
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, stream_read, g, stream_end);
    if (!r) {
        stream_end(g);
        return MHD_NO;
    }
    (void)s;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* proxies must not buffer SSE */
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *data_size, void **con_cls)
{
    (void)version;
    oai_server *s = cls;
    upload *u = *con_cls;
    if (!u) {
        u = calloc(1, sizeof *u);
        if (!u)
            return MHD_NO;
        u->t0 = now_s();
        u->cfd = -1;
        *con_cls = u;
        return MHD_YES;
    }
    if (u->answered) { /* resumed: the worker's answer */
        u->answered = 0;
        u->route = R_NONE;
        enum MHD_Result ret = send_answer(s, c, u);
        u->body = NULL;
        return ret;
    }
    if (u->route != R_NONE)
        return MHD_YES; /* a worker has it */
    if (*data_size) {   /* body bytes: keep them, up to the limit */
        size_t limit = (size_t)s->cfg.max_body_kib * 1024;
        if (!u->too_large && u->len + *data_size > limit) {
            u->too_large = 1;
            free(u->p);
            u->p = NULL;
            u->len = u->cap = 0;
        }
        if (!u->too_large) {
            if (u->len + *data_size + 1 > u->cap) {
                size_t cap = u->cap ? u->cap : 4096;
                while (cap < u->len + *data_size + 1)
                    cap *= 2;
                char *p = realloc(u->p, cap);
                if (!p)
                    return MHD_NO;
                u->p = p;
                u->cap = cap;
            }
            memcpy(u->p + u->len, data, *data_size);
            u->len += *data_size;
        }
        *data_size = 0;
        return MHD_YES;
    }
    if (__atomic_load_n(&s->stopping, __ATOMIC_RELAXED))
        return fail(s, c, OAI_EP_OTHER, 503, "service_unavailable", NULL, "mq-openai is stopping");
    int post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
    oai_endpoint ep = !strcmp(url, "/v1/chat/completions") ? OAI_EP_CHAT
                      : !strcmp(url, "/v1/completions")    ? OAI_EP_COMPLETIONS
                                                           : OAI_EP_OTHER;
    enum route route = R_NONE;
    if (!strcmp(url, "/health")) {
        if (!get)
            return fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
        route = R_HEALTH;
    } else if (!strcmp(url, "/metrics")) {
        if (!get)
            return fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
        route = R_METRICS;
    } else {
        int known = ep != OAI_EP_OTHER || !strcmp(url, "/v1/models");
        if (!known)
            return fail(s, c, ep, 404, "NotFoundError", NULL, "no such endpoint");
        int key = key_of(s, c);
        if (key == UNAUTHORIZED)
            return fail(s, c, ep, 401, "authentication_error", NULL,
                        "a valid API key is required (Authorization: Bearer <key>)");
        if (ep == OAI_EP_OTHER) {
            if (!get)
                return fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
            route = R_MODELS;
        } else {
            if (!post)
                return fail(s, c, ep, 405, "invalid_request_error", NULL, "use POST");
            if (u->too_large) {
                char m[128];
                snprintf(m, sizeof m, "request body over %u KiB", s->cfg.max_body_kib);
                return fail(s, c, ep, 413, "invalid_request_error", NULL, m);
            }
            route = R_GENERATE;
            u->tenant = key >= 0 ? oai_keys_tenant(s->keys, key) : "";
            const char *sk = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Session-Id");
            snprintf(u->session_key, sizeof u->session_key, "%s", sk ? sk : "");
            const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
            u->cfd = ci ? ci->connect_fd : -1;
        }
    }
    u->s = s;
    u->mc = c;
    u->ep = ep;
    u->route = route;
    if (submit_job(s, u)) {
        u->route = R_NONE;
        return fail(s, c, ep, 503, "service_unavailable", NULL, "mq-openai cannot start a thread");
    }
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    upload *u = *con_cls;
    if (u) {
        if (u->stream) /* answered, but the connection closed before the stream's response existed */
            stream_end(u->stream);
        free(u->body);
        free(u->p);
        free(u);
        *con_cls = NULL;
    }
}
/* ---- start and stop ------------------------------------------------------------------------ */

static int pump_start(oai_server *s, char *err, size_t errlen)
{
    if (pthread_mutex_init(&s->job_mu, NULL) || pthread_cond_init(&s->job_cv, NULL) ||
        pthread_cond_init(&s->job_end, NULL) || pthread_mutex_init(&s->pump_mu, NULL) ||
        pthread_cond_init(&s->pump_cv, NULL))
        return mq_errmsg(err, errlen, -ENOMEM, "out of memory");
    s->mu_ok = 1;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    if (s->epfd < 0 || s->wakefd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &ev))
        return mq_errmsg(err, errlen, -errno, "epoll: %s", strerror(errno));
    int rc = pthread_create(&s->pump, NULL, pump_main, s);
    if (rc)
        return mq_errmsg(err, errlen, -rc, "cannot start a thread: %s", strerror(rc));
    s->pump_running = 1;
    return 0;
}

static void pump_stop(oai_server *s)
{
    if (s->pump_running) {
        pthread_mutex_lock(&s->pump_mu);
        s->pump_stop = 1;
        pthread_mutex_unlock(&s->pump_mu);
        pump_kick(s);
        pthread_join(s->pump, NULL);
    }
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->wakefd >= 0)
        close(s->wakefd);
    if (s->mu_ok) {
        pthread_mutex_destroy(&s->job_mu);
        pthread_cond_destroy(&s->job_cv);
        pthread_cond_destroy(&s->job_end);
        pthread_mutex_destroy(&s->pump_mu);
        pthread_cond_destroy(&s->pump_cv);
    }
}

int oai_server_start(oai_server **out, const oai_config *cfg, int listen_fd, char *err, size_t errlen)
{
    oai_server *s = calloc(1, sizeof *s);
    if (!s)
        return mq_errmsg(err, errlen, -ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->started = (long long)time(NULL);
    s->epfd = s->wakefd = -1;
    int rc = pump_start(s, err, errlen);
    if (!rc)
        rc = oai_keys_load(&s->keys, cfg->api_keys_file, err, errlen);
    oai_backend_opts bo = { .socket = cfg->mqd_socket[0] ? cfg->mqd_socket : NULL,
                            .max_conns = (int)cfg->max_requests,
                            .max_pinned = (int)cfg->max_sessions,
                            .pin_idle_s = (int)cfg->session_idle_s,
                            .wait_ms = (int)cfg->queue_wait_ms };
    if (!rc)
        rc = oai_backend_create(&s->be, &bo, err, errlen);
    struct sockaddr_storage sa;
    socklen_t sl = 0;
    if (!rc && listen_fd < 0) {
        char host[OAI_CFG_STR];
        snprintf(host, sizeof host, "%s", cfg->listen);
        char *colon = strrchr(host, ':');
        *colon = 0;
        const char *h = host;
        if (h[0] == '[') { /* [::1]:8000 */
            h++;
            host[strlen(host) - 1] = 0;
        }
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST },
                        *ai = NULL;
        int gai = getaddrinfo(h, colon + 1, &hints, &ai);
        if (gai || !ai)
            rc = mq_errmsg(err, errlen, -EINVAL, "listen: \"%s\": %s", cfg->listen, gai_strerror(gai));
        else {
            memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
            sl = ai->ai_addrlen;
            freeaddrinfo(ai);
        }
    }
    if (rc) {
        oai_server_stop(s);
        return rc;
    }
    /* one thread for every connection (epoll); requests that wait for mqd run on workers
     * and their connections are suspended meanwhile */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (sl && sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    size_t mem = 64 * 1024; /* per connection: headers and the read buffer, not the body */
    if (listen_fd >= 0)
        s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_LISTEN_SOCKET, listen_fd,
                                  MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                                  cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, mem,
                                  MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    else
        s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                  MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                                  cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, mem,
                                  MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (!s->mhd) {
        oai_server_stop(s);
        return mq_errmsg(err, errlen, -EADDRINUSE, "cannot listen on %s (in use, or not an address of this host)",
                         listen_fd >= 0 ? "the socket from systemd" : cfg->listen);
    }
    *out = s;
    return 0;
}

void oai_server_stop(oai_server *s)
{
    if (!s)
        return;
    __atomic_store_n(&s->stopping, 1, __ATOMIC_RELAXED);
    if (s->mu_ok) {
        /* libmicrohttpd must not stop with a connection suspended: wait for the workers'
         * answers (a non-streaming request sees `stopping` within MQD_CHECK_MS), and
         * wake every stream that waits for tokens (it ends with an error) */
        pthread_mutex_lock(&s->job_mu);
        while (s->unanswered)
            pthread_cond_wait(&s->job_end, &s->job_mu);
        for (gen *g = s->streams; g; g = g->next_stream) {
            pthread_mutex_lock(&g->mu);
            g->aborted = 1;
            stream_wake(g);
            pthread_mutex_unlock(&g->mu);
        }
        pthread_mutex_unlock(&s->job_mu);
    }
    if (s->mhd)
        MHD_stop_daemon(s->mhd); /* ends every stream: their workers clean up and exit */
    if (s->mu_ok) {
        pthread_mutex_lock(&s->job_mu);
        pthread_cond_broadcast(&s->job_cv);
        while (s->workers)
            pthread_cond_wait(&s->job_end, &s->job_mu);
        pthread_mutex_unlock(&s->job_mu);
    }
    pump_stop(s);
    oai_backend_destroy(s->be);
    oai_keys_free(s->keys);
    free(s);
}
