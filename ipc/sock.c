/* ipc/sock.c — see sock.h. */
#include "ipc/sock.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int mq_sock_send(int fd, const void *buf, size_t len, const int *fds, int n_fds, int flags)
{
    if (n_fds < 0 || n_fds > MQ_SOCK_MAX_FDS)
        return -EINVAL;
    struct iovec iov = { (void *)buf, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    union {
        char b[CMSG_SPACE(sizeof(int) * MQ_SOCK_MAX_FDS)];
        struct cmsghdr align;
    } u;
    if (n_fds > 0) {
        mh.msg_control = u.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n_fds);
    }
    ssize_t w;
    do
        w = sendmsg(fd, &mh, flags | MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    return w < 0 ? -errno : 0;
}

ssize_t mq_sock_recv(int fd, void *buf, size_t cap, int *fds, int n_fds, int flags, int *truncated)
{
    for (int i = 0; i < n_fds; i++)
        fds[i] = -1;
    if (truncated)
        *truncated = 0;
    union {
        char b[CMSG_SPACE(sizeof(int) * MQ_SOCK_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = { buf, cap };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    ssize_t n;
    do
        n = recvmsg(fd, &mh, flags | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    int got = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int pfd;
            memcpy(&pfd, CMSG_DATA(cm) + i * sizeof(int), sizeof pfd);
            if (got < n_fds)
                fds[got++] = pfd;
            else
                close(pfd);
        }
    }
    if (truncated && (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        *truncated = 1;
    return n;
}
