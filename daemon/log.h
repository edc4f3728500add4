/* daemon/log.h — mqd's log: one line per event on stderr, with a priority.
 *
 * Priorities are syslog's (LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG from
 * <syslog.h>). When stderr is connected to the journal (systemd sets JOURNAL_STREAM to
 * its device:inode; or, without it, INVOCATION_ID is set and stderr is a socket), each
 * line starts with "<N>", which journald turns into the entry's priority. Otherwise a
 * line reads "mqd[pid]: level: message" (a terminal, a file, a test's log).
 *
 * Who calls it: every module of daemon/ (a leaf: log.c depends on nothing of mqd).
 * Thread rules: any thread; each line is one write(2), so lines never interleave.
 */
#ifndef MQ_DAEMON_LOG_H
#define MQ_DAEMON_LOG_H

#include <stdint.h>
#include <syslog.h>

void mqd_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lines a client can cause (garbage, refusals, exhausted limits) go through a limiter so
 * one client cannot flood the journal: at most MQD_LOG_BURST lines per
 * MQD_LOG_INTERVAL_MS window; the first line of the next window that gets through says
 * how many were dropped. A limiter is used by one thread (mqd's: the event loop). */
#define MQD_LOG_BURST       20
#define MQD_LOG_INTERVAL_MS 10000
typedef struct mqd_ratelimit {
    uint64_t window_ms; /* start of the current window */
    int lines;          /* logged in it */
    long dropped;       /* not logged since the last line that got through */
} mqd_ratelimit;

void mqd_log_limited(mqd_ratelimit *rl, int prio, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
