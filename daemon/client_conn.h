/* daemon/client_conn.h — client connections (client_conn.c says their life and threads).
 *
 * Who calls it: server.c (accept on the client socket, shutdown), control.c (drain),
 * admin.c (cancel, the session list). Thread rules: the event loop thread.
 */
#ifndef MQ_DAEMON_CLIENT_CONN_H
#define MQ_DAEMON_CLIENT_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/mqd.h"

/* The client socket's fd handler (arg = the mqd). */
void mqd_client_accept(mq_evloop *l, int fd, uint32_t events, void *arg);
void mqd_client_close_all(mqd *d);
/* Cancels a running request, named by its request or session id. */
int mqd_client_cancel(mqd *d, uint64_t id, char *msg, size_t msglen);

/* For admin: calls cb for every session of every connection. */
typedef struct mqd_session_view {
    uint64_t session, running_req;
    pid_t pid;
    uid_t uid;
    int mode;
} mqd_session_view;
void mqd_client_sessions(mqd *d, void (*cb)(void *ctx, const mqd_session_view *v), void *ctx);

#endif
