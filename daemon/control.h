/* daemon/control.h — what the operator does to a running mqd: drain (SIGTERM, SIGINT,
 * `mqctl drain`), reload the configuration (SIGHUP, `mqctl reload`).
 *
 * Who calls it: server.c (signals, a stop requested while loading), admin.c.
 * Thread rules: the event loop thread; the drain runs on a thread of its own and posts
 * its end to the loop.
 */
#ifndef MQ_DAEMON_CONTROL_H
#define MQ_DAEMON_CONTROL_H

#include <stddef.h>

#include "daemon/mqd.h"

/* Blocks SIGTERM, SIGINT, SIGHUP for every later thread and handles them on the loop. */
int mqd_control_watch_signals(mqd *d, char *err, size_t errlen);
/* Stops accepting, lets running requests finish for drain_timeout_ms, then exits 0.
 * While loading it only marks the stop (mqd_control_loaded finishes it). */
void mqd_begin_drain(mqd *d, const char *why);
/* Re-reads the configuration; what can change at run time changes. 0, or -errno with
 * the refusal in msg (the old configuration stays). */
int mqd_reload(mqd *d, char *msg, size_t msglen);

#endif
