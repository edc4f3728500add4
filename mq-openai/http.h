/* mq-openai/http.h — the HTTP server: routes, authentication, limits and the request
 * life cycle on libmicrohttpd.
 *
 * Owns: the libmicrohttpd daemon (one thread per HTTP connection, bounded by
 * max_connections, idle connections closed after idle_timeout_s, bodies over
 * max_body_kib refused with 413), the API keys, the metrics, and the backend (libmq).
 * Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
 * GET /metrics. A request thread reads its own mqd connection's events; it also watches
 * its client's socket, so a client that hangs up cancels its request at once (mqd frees
 * its KV blocks) and the connection goes back to the pool.
 *
 * Who calls it: main.c. Thread rules: oai_server_start/stop from one thread; handlers run
 * on libmicrohttpd's threads and share only the backend, the metrics and the keys
 * (read-only after start).
 */
#ifndef MQ_OPENAI_HTTP_H
#define MQ_OPENAI_HTTP_H

#include <stddef.h>

#include "mq-openai/backend.h"
#include "mq-openai/config.h"
#include "mq-openai/metrics.h"

typedef struct oai_server oai_server;

/* listen_fd >= 0: a socket handed over by systemd (cfg.listen is then ignored). */
int oai_server_start(oai_server **out, const oai_config *cfg, int listen_fd, char *err, size_t errlen);
void oai_server_stop(oai_server *s);

#endif
