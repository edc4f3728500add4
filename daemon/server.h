/* daemon/server.h — mqd's life cycle: start-up in order, the event loop, the load thread,
 * and tearing everything down (server.c says the order and why).
 *
 * Who calls it: main.c. Thread rules: the event loop thread (mqd_init starts the load
 * thread, which posts its result to the loop).
 */
#ifndef MQ_DAEMON_SERVER_H
#define MQ_DAEMON_SERVER_H

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/mqd.h"
#include "engine/arena.h"
#include "engine/weight_stream.h"

int mqd_init(mqd *d, char *err, size_t errlen); /* sockets, privileges, loop, load thread */
int mqd_run(mqd *d);                            /* the event loop until exit; the exit code */
void mqd_fini(mqd *d);                          /* frees everything (NULL-safe members) */

/* The weight arena's and the weight stream's options for configuration c: what mqd's
 * load runs (it adds only its cancel flag). bench_e2e measures the load with them, from
 * mqd_config_defaults, so its load figures are of mqd's default load. */
void mqd_load_opts_from_config(const mqd_config *c, mq_arena_opts *ao, mq_ws_opts *wo);

#endif
