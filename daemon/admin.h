/* daemon/admin.h — the admin socket (admin.c says the protocol).
 *
 * Who calls it: server.c. Thread rules: the event loop thread.
 */
#ifndef MQ_DAEMON_ADMIN_H
#define MQ_DAEMON_ADMIN_H

#include <stdint.h>

#include "daemon/mqd.h"

/* The admin socket's fd handler (arg = the mqd). */
void mqd_admin_accept(mq_evloop *l, int fd, uint32_t events, void *arg);
void mqd_admin_close_all(mqd *d);

#endif
