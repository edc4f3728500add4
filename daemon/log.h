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

#include <syslog.h>

void mqd_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
