/* ipc/sock.h — sending one wire message on a SOCK_SEQPACKET socket, optionally with a
 * file descriptor (SCM_RIGHTS). Used by libmq and mqd alike; the encoding itself is
 * wire.h's (pure, no I/O). Thread rules: none beyond the socket's own.
 */
#ifndef MQ_IPC_SOCK_H
#define MQ_IPC_SOCK_H

#include <stddef.h>

/* sendmsg of buf[len] with pass_fd attached when >= 0; retried on EINTR. flags are
 * sendmsg's (MSG_NOSIGNAL is always added). 0, or a negative errno. */
int mq_sock_send(int fd, const void *buf, size_t len, int pass_fd, int flags);

#endif
