/* ipc/sock.h — sending and receiving one wire message on a SOCK_SEQPACKET socket,
 * optionally with file descriptors (SCM_RIGHTS). Used by libmq and mqd alike; the
 * encoding itself is wire.h's (pure, no I/O). Thread rules: none beyond the socket's own.
 */
#ifndef MQ_IPC_SOCK_H
#define MQ_IPC_SOCK_H

#include <stddef.h>
#include <sys/types.h>

#define MQ_SOCK_MAX_FDS 4

/* sendmsg of buf[len] with the n_fds descriptors fds[] attached (0..MQ_SOCK_MAX_FDS);
 * retried on EINTR. flags are sendmsg's (MSG_NOSIGNAL is always added). 0, or a negative
 * errno. */
int mq_sock_send(int fd, const void *buf, size_t len, const int *fds, int n_fds, int flags);

/* recvmsg of one datagram into buf[cap], retried on EINTR; flags are recvmsg's
 * (MSG_CMSG_CLOEXEC is always added). Descriptors passed with it fill fds[0..n_fds-1] in
 * order (unused slots -1); any beyond n_fds are closed, so none leaks. *truncated (may
 * be NULL) is set to 1 when the datagram or its descriptors did not fit. Bytes received
 * (0 = the peer closed), or a negative errno (-EAGAIN with MSG_DONTWAIT and nothing to
 * read). */
ssize_t mq_sock_recv(int fd, void *buf, size_t cap, int *fds, int n_fds, int flags, int *truncated);

#endif
