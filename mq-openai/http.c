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
#include <sys/socket.h>
#include <time.h>

#include "common/errmsg.h"
#include "mq-openai/keys.h"
#include "mq-openai/output.h"
#include "mq-openai/reply.h"
#include "mq-openai/request.h"

#define SSE_BLOCK       16384 /* bytes libmicrohttpd asks the stream callback for */
#define CANCEL_DRAIN_MS 5000  /* a cancelled request's DONE arrives within this */
#define MQD_CHECK_MS    1000  /* while waiting for tokens, look whether mqd is alive */
#define RETRY_AFTER_S   "2"   /* 429 and 503: when to try again (a load takes seconds) */

struct oai_server {
    oai_config cfg;
    oai_backend *be;
    oai_metrics m;
    struct MHD_Daemon *mhd;
    oai_keys *keys; /* NULL: no authentication */
    long long started;
    uint64_t next_id; /* atomic */
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

typedef struct gen {
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
    oai_buf sse;     /* streaming: bytes not yet handed to libmicrohttpd */
    size_t sse_off;
    int finished; /* streaming: the last bytes are queued */
    mq_event done;
    char done_msg[512];
    double t0, t_first, t_last;
    int aborted;
} gen;

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

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    gen *g = cls;
    while (g->sse_off == g->sse.len) {
        g->sse.len = g->sse_off = 0;
        if (g->finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        mq_event ev;
        int rc = next_event(g, &ev, 1);
        if (rc == -ECONNABORTED) {
            g->aborted = 1;
            __atomic_add_fetch(&g->s->m.aborted, 1, __ATOMIC_RELAXED);
            stop_request(g);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (rc) {
            g->lease.broken = 1;
            g->lease.gone = rc == -EPIPE;
            g->running = 0;
            oai_error e;
            mq_error(&e, rc, "mqd went away during the request");
            sse_put(g, oai_sse_error(&e));
            buf_put(&g->sse, OAI_SSE_DONE, strlen(OAI_SSE_DONE));
            g->finished = 1;
            continue;
        }
        handle_event(g, &ev);
        /* the events already in the ring go out in the same write: a stream that fell
         * behind (a busy machine) catches up with one send and one client wake-up */
        while (g->running && g->sse.len < max && mq_next_event(g->lease.conn, &ev, 0) == 0)
            if (ev.req == g->req)
                handle_event(g, &ev);
        if (!g->running)
            stream_finish(g);
    }
    size_t n = g->sse.len - g->sse_off;
    if (n > max)
        n = max;
    memcpy(buf, g->sse.p + g->sse_off, n);
    g->sse_off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    gen_free(cls);
}

/* ---- the generation endpoints ------------------------------------------------------------- */

static enum MHD_Result generate(oai_server *s, struct MHD_Connection *c, oai_endpoint ep, const char *tenant,
                                const char *body, size_t len, double t0)
{
    gen *g = calloc(1, sizeof *g);
    if (!g)
        return fail(s, c, ep, 500, "server_error", NULL, "out of memory");
    g->s = s;
    g->mc = c;
    g->ep = ep;
    g->t0 = t0;
    g->lease.slot = -1;
    oai_error e;
    int rc = ep == OAI_EP_CHAT ? oai_parse_chat(body, len, &g->rq, &e) : oai_parse_completion(body, len, &g->rq, &e);
    if (rc) {
        free(g);
        return send_error(s, c, ep, &e);
    }
    if (oai_request_default_think(&g->rq, !strcmp(s->cfg.think_history, "as_generated"))) {
        gen_free(g);
        return fail(s, c, ep, 500, "server_error", NULL, "out of memory");
    }
    mq_server_info info;
    const char *served = s->cfg.model_name[0] ? s->cfg.model_name : "";
    if (!*served && oai_backend_info(s->be, &info) == 0)
        served = info.model;
    if (!*served) {
        gen_free(g);
        return fail(s, c, ep, 503, "service_unavailable", NULL, "mqd is not reachable");
    }
    if (g->rq.model[0] && strcmp(g->rq.model, served)) {
        char m[400];
        snprintf(m, sizeof m, "The model `%.127s` does not exist (this server serves `%.127s`).", g->rq.model, served);
        gen_free(g);
        return fail(s, c, ep, 404, "NotFoundError", "model", m);
    }
    if (!g->rq.model[0]) /* the name mqd gave lives in a local: keep a copy */
        snprintf(g->rq.model, sizeof g->rq.model, "%.127s", served);
    g->rc.kind = g->rq.kind;
    g->rc.model = g->rq.model;
    snprintf(g->rc.id, sizeof g->rc.id, "%s-%llu", ep == OAI_EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)__atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
    g->rc.created = (long long)time(NULL);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    g->cfd = ci ? ci->connect_fd : -1;
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Session-Id");
    if (!key || !*key)
        key = g->rq.user;
    if (strlen(key) > 127) {
        gen_free(g);
        return fail(s, c, ep, 400, "invalid_request_error", "X-Session-Id", "X-Session-Id: longer than 127 bytes");
    }
    if (gen_start(g, tenant, key, &e)) {
        gen_free(g);
        return send_error(s, c, ep, &e);
    }
    if (g->rq.stream) {
        if (g->rq.kind == OAI_CHAT)
            sse_put(g, oai_sse_role(&g->rc));
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, stream_read, g, stream_free);
        if (!r) {
            gen_free(g);
            return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* proxies must not buffer SSE */
        oai_metrics_request(&s->m, ep, 200);
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ret;
    }
    /* not streaming: run to the end here (this is the connection's own thread) */
    while (g->running) {
        mq_event ev;
        rc = next_event(g, &ev, 1);
        if (rc == -ECONNABORTED) {
            __atomic_add_fetch(&s->m.aborted, 1, __ATOMIC_RELAXED);
            gen_free(g);
            return MHD_NO; /* nobody to answer */
        }
        if (rc) {
            g->lease.broken = 1;
            g->lease.gone = rc == -EPIPE;
            g->running = 0;
            mq_error(&e, rc, "mqd went away during the request");
            gen_free(g);
            return send_error(s, c, ep, &e);
        }
        handle_event(g, &ev);
    }
    if (done_error(g, &e)) {
        gen_free(g);
        return send_error(s, c, ep, &e);
    }
    oai_usage u = usage_of(g);
    char *body_out = g->rq.kind == OAI_CHAT
                         ? oai_reply_chat(&g->rc, &g->msg, finish_reason(g, g->msg.n_calls), &u)
                         : oai_reply_completion(&g->rc, g->text.p, g->text.len, finish_reason(g, 0), &u);
    gen_free(g);
    oai_metrics_request(&s->m, ep, 200);
    return send_body(c, 200, "application/json", body_out);
}

/* ---- the other endpoints ----------------------------------------------------------------- */

static enum MHD_Result health(oai_server *s, struct MHD_Connection *c)
{
    mq_stats st;
    int state = oai_backend_state(s->be, &st);
    const char *body = state == MQ_STATE_READY      ? "{\"status\":\"ok\"}"
                       : state == MQ_STATE_DRAINING ? "{\"status\":\"draining\"}"
                                                    : "{\"status\":\"unavailable\",\"reason\":\"mqd does not answer\"}";
    return send_body(c, state == MQ_STATE_READY ? 200 : 503, "application/json", strdup(body));
}

static enum MHD_Result metrics(oai_server *s, struct MHD_Connection *c)
{
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
    return send_body(c, 200, "text/plain; version=0.0.4", oai_metrics_render(&s->m, model, &g));
}

static enum MHD_Result models(oai_server *s, struct MHD_Connection *c)
{
    mq_server_info info;
    const char *model = s->cfg.model_name[0] ? s->cfg.model_name : "";
    if (!*model && oai_backend_info(s->be, &info) == 0)
        model = info.model;
    if (!*model)
        return fail(s, c, OAI_EP_OTHER, 503, "service_unavailable", NULL, "mqd is not reachable");
    oai_metrics_request(&s->m, OAI_EP_OTHER, 200);
    return send_body(c, 200, "application/json", oai_reply_models(model, s->started));
}

/* ---- libmicrohttpd callbacks ------------------------------------------------------------------ */

typedef struct upload {
    char *p;
    size_t len, cap;
    int too_large;
    double t0;
} upload;

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
        *con_cls = u;
        return MHD_YES;
    }
    if (*data_size) { /* body bytes: keep them, up to the limit */
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
    int post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
    oai_endpoint ep = !strcmp(url, "/v1/chat/completions") ? OAI_EP_CHAT
                      : !strcmp(url, "/v1/completions")    ? OAI_EP_COMPLETIONS
                                                           : OAI_EP_OTHER;
    if (!strcmp(url, "/health"))
        return get ? health(s, c) : fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
    if (!strcmp(url, "/metrics"))
        return get ? metrics(s, c) : fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
    int known = ep != OAI_EP_OTHER || !strcmp(url, "/v1/models");
    if (!known)
        return fail(s, c, ep, 404, "NotFoundError", NULL, "no such endpoint");
    int key = key_of(s, c);
    if (key == UNAUTHORIZED)
        return fail(s, c, ep, 401, "authentication_error", NULL,
                    "a valid API key is required (Authorization: Bearer <key>)");
    if (ep == OAI_EP_OTHER)
        return get ? models(s, c) : fail(s, c, ep, 405, "invalid_request_error", NULL, "use GET");
    if (!post)
        return fail(s, c, ep, 405, "invalid_request_error", NULL, "use POST");
    if (u->too_large) {
        char m[128];
        snprintf(m, sizeof m, "request body over %u KiB", s->cfg.max_body_kib);
        return fail(s, c, ep, 413, "invalid_request_error", NULL, m);
    }
    return generate(s, c, ep, key >= 0 ? oai_keys_tenant(s->keys, key) : "", u->p ? u->p : "", u->len, u->t0);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    upload *u = *con_cls;
    if (u) {
        free(u->p);
        free(u);
        *con_cls = NULL;
    }
}

/* ---- start and stop ------------------------------------------------------------------------ */

int oai_server_start(oai_server **out, const oai_config *cfg, int listen_fd, char *err, size_t errlen)
{
    oai_server *s = calloc(1, sizeof *s);
    if (!s)
        return mq_errmsg(err, errlen, -ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->started = (long long)time(NULL);
    int rc = oai_keys_load(&s->keys, cfg->api_keys_file, err, errlen);
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
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | (sl && sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
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
    if (s->mhd)
        MHD_stop_daemon(s->mhd);
    oai_backend_destroy(s->be);
    oai_keys_free(s->keys);
    free(s);
}
