/* mq-openai/backend.h — mq-openai's side of mqd: a pool of libmq connections and the
 * conversations pinned to mq sessions.
 *
 * Owns: up to `max_conns` libmq connections, each used by one HTTP request at a time (the
 * request thread reads its events directly: no dispatcher, no hand-off); the table of
 * pinned conversations ((tenant, X-Session-Id or `user`) -> an mq session on one connection, kept
 * between requests so the next turn reuses the session's KV token by token, idle ones
 * closed least recently used first); and one control connection for /health and /metrics.
 * A connection that fails (mqd restarted) is dropped with its sessions and reopened on
 * next use, once the control connection says mqd answers again: while mqd loads (it
 * accepts clients only when ready) requests are refused at once, never left waiting.
 *
 * Who calls it: the HTTP handlers (one thread per HTTP connection). Thread rules: every
 * function may be called from any thread; a lease is used by one thread at a time.
 */
#ifndef MQ_OPENAI_BACKEND_H
#define MQ_OPENAI_BACKEND_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "libclient/mq.h"

typedef struct oai_backend oai_backend;

typedef struct oai_backend_opts {
    const char *socket; /* mqd's client socket; NULL = $MQ_SOCKET or the default */
    int max_conns;      /* connections = concurrent requests */
    int max_pinned;     /* pinned conversations kept */
    int pin_idle_s;     /* a pinned conversation idle this long is closed */
    int wait_ms;        /* how long a request waits for a free connection (then 429) */
} oai_backend_opts;

int oai_backend_create(oai_backend **out, const oai_backend_opts *o, char *err, size_t errlen);
void oai_backend_destroy(oai_backend *b);

/* One request's use of a connection and a session. */
typedef struct oai_lease {
    mq_conn *conn;
    uint64_t session;
    int slot;   /* internal */
    int pinned; /* the session stays open after the request */
    int broken; /* set by the caller when the connection failed */
    int gone;   /* ... because mqd went away (-EPIPE): see oai_backend_lost */
} oai_lease;

/* Takes a connection and a session of `tenant` ("" = mq-openai's own uid; else a tenant
 * named to mqd, which must list mq-openai in trusted_fronts: -MQ_ENOTTRUSTED otherwise):
 * the tenant's pinned one of `key` (NULL/"" = none: a fresh session, closed at release).
 * A pinned conversation belongs to its tenant: another tenant's same key is another
 * conversation. Returns 0, -EAGAIN (all connections busy for wait_ms),
 * -ENOTCONN (mqd is not ready: loading, restarting or not running; answered at once, a
 * request never waits for a load), -EPIPE / -ECONNREFUSED (mqd unreachable) or another
 * libmq error; err names it. */
int oai_backend_acquire(oai_backend *b, const char *tenant, const char *key, oai_lease *l, char *err, size_t errlen);
void oai_backend_release(oai_backend *b, oai_lease *l);
/* mqd went away (a call failed with -EPIPE): until it answers again, requests that need a
 * new connection get -ENOTCONN at once. */
void oai_backend_lost(oai_backend *b);

/* mqd's state (MQ_STATE_READY / MQ_STATE_DRAINING) and stats through the control
 * connection, or a negative error when mqd does not answer. It waits at most about 100 ms
 * for a connect (mqd accepts clients only once loaded, so a connect can wait minutes):
 * the connect goes on in the background and this returns -EAGAIN. */
int oai_backend_state(oai_backend *b, mq_stats *st);
/* mqd's model name and server facts (from the first connection that succeeded). */
int oai_backend_info(oai_backend *b, mq_server_info *info);
/* Connections in use now (requests running in mq-openai). */
int oai_backend_busy(oai_backend *b);

#endif
