/* daemon/sd.h — systemd: socket activation, sd_notify, the watchdog (sd.c says which
 * notifications and when).
 *
 * Who calls it: server.c, control.c, main.c. Thread rules: the event loop thread
 * (mqd_sd_notify from any thread).
 */
#ifndef MQ_DAEMON_SD_H
#define MQ_DAEMON_SD_H

#include <stddef.h>

#include "daemon/mqd.h"

int mqd_sd_sockets(mqd *d, char *err, size_t errlen); /* named fds from systemd, if any */
void mqd_sd_notify(mqd *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int mqd_sd_start_timers(mqd *d, char *err, size_t errlen); /* watchdog + loading STATUS */

#endif
