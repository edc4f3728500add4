/* daemon/server.h — mqd's life cycle: start-up in order, the event loop, the load thread,
 * and tearing everything down (server.c says the order and why).
 *
 * Who calls it: main.c. Thread rules: the event loop thread (mqd_init starts the load
 * thread, which posts its result to the loop).
 */
#ifndef MQ_DAEMON_SERVER_H
#define MQ_DAEMON_SERVER_H

#include <stddef.h>

#include "daemon/mqd.h"

int mqd_init(mqd *d, char *err, size_t errlen); /* sockets, privileges, loop, load thread */
int mqd_run(mqd *d);                            /* the event loop until exit; the exit code */
void mqd_fini(mqd *d);                          /* frees everything (NULL-safe members) */

#endif
