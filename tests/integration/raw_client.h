/* tests/integration/raw_client.h — a client of mqd that speaks the wire protocol itself
 * instead of through libmq, so a test can do what libmq never does: pass descriptors with
 * HELLO, write into the shared channel behind mqd's back, corrupt ring words. Header-only
 * (each test program includes it once, after mqd_spawn.h).
 */
#ifndef MQ_TESTS_RAW_CLIENT_H
#define MQ_TESTS_RAW_CLIENT_H

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "ipc/channel.h"
#include "ipc/ring.h"
#include "ipc/sock.h"
#include "ipc/wire.h"

/* A connected client socket (10 s receive timeout), or -1. */
static inline int raw_connect(const char *sock)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (fd < 0 || snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock) >= (int)sizeof sa.sun_path ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends m (with pass_fd if >= 0) and reads one reply into r with up to n_fds fds.
 * 0, -1 (no reply), or the negative errno of the send. */
static inline int raw_call(int fd, mq_msg *m, int pass_fd, mq_msg *r, int *fds, int n_fds)
{
    static uint32_t seq;
    uint8_t buf[MQ_WIRE_MAX_MSG + 1];
    m->seq = ++seq;
    int n = mq_wire_encode(m, buf, sizeof buf);
    if (n < 0)
        return -1;
    int rc = mq_sock_send(fd, buf, (size_t)n, &pass_fd, pass_fd >= 0, 0);
    if (rc)
        return rc;
    ssize_t k = mq_sock_recv(fd, buf, sizeof buf, fds, n_fds, 0, NULL);
    if (k <= 0 || mq_wire_decode(buf, (size_t)k, r, NULL, 0))
        return -1;
    return 0;
}

/* Reads one message (no request), or -1 (nothing, end of file, or undecodable). */
static inline int raw_recv(int fd, mq_msg *r)
{
    uint8_t buf[MQ_WIRE_MAX_MSG + 1];
    int fds[1];
    ssize_t k = mq_sock_recv(fd, buf, sizeof buf, fds, 1, 0, NULL);
    return k > 0 && mq_wire_decode(buf, (size_t)k, r, NULL, 0) == 0 ? 0 : -1;
}

static inline void raw_hello(mq_msg *m, const char *name)
{
    *m = (mq_msg){ .type = MQ_MSG_HELLO };
    m->u.hello.ver_min = MQ_WIRE_VERSION_MIN;
    m->u.hello.ver_max = MQ_WIRE_VERSION_MAX;
    snprintf(m->u.hello.name, sizeof m->u.hello.name, "%s", name);
}

/* HELLO, then maps the channel of HELLO_OK into ch; fds[1] gets the wake-up fd. 0 or -1. */
static inline int raw_hello_map(int fd, mq_chan *ch, int fds[2])
{
    mq_msg m, r;
    raw_hello(&m, "raw_client");
    fds[0] = fds[1] = -1;
    char err[256];
    if (raw_call(fd, &m, -1, &r, fds, 2) || r.type != MQ_MSG_HELLO_OK || fds[0] < 0)
        return -1;
    return mq_chan_map(ch, fds[0], err, sizeof err) ? -1 : 0;
}

/* OPEN of a raw session: its id, or 0. */
static inline uint64_t raw_open(int fd)
{
    mq_msg m = { .type = MQ_MSG_OPEN }, r;
    m.u.open.mode = MQ_WIRE_MODE_RAW;
    if (raw_call(fd, &m, -1, &r, NULL, 0) || r.type != MQ_MSG_OPENED)
        return 0;
    return r.u.opened.session;
}

/* Writes bytes into the prompt ring and SUBMITs them (kind MQ_WIRE_KIND_TEXT or _TOKENS)
 * as a greedy request of max_tokens; mqd's reply lands in r. 0, or -1 without a reply. */
static inline int raw_submit(int fd, mq_chan *ch, uint64_t session, int kind, const void *bytes, uint32_t len,
                             uint32_t max_tokens, mq_msg *r)
{
    uint32_t off = ch->prompt.pos;
    mq_ring_write(&ch->prompt, bytes, len);
    mq_ring_publish(&ch->prompt);
    mq_msg m = { .type = MQ_MSG_SUBMIT };
    m.u.submit.session = session;
    m.u.submit.kind = (uint8_t)kind;
    m.u.submit.ring_off = off;
    m.u.submit.len = len;
    mq_wire_gen_default(&m.u.submit.gen);
    m.u.submit.gen.flags |= MQ_GEN_GREEDY;
    m.u.submit.gen.max_tokens = max_tokens;
    return raw_call(fd, &m, -1, r, NULL, 0);
}

/* On a fresh connection's HELLO_OK descriptors: maps the channel, optionally arms poll
 * wake-ups (and makes the client's end of the wake-up pipe as bad as it can), opens a
 * raw session and starts a greedy generation of max_tokens. 0 or the failing step. */
static inline int raw_start(int fd, int fds[2], mq_chan *ch, uint32_t max_tokens, int arm_poll)
{
    char err[256];
    if (mq_chan_map(ch, fds[0], err, sizeof err))
        return 1;
    if (arm_poll) {
        fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) & ~O_NONBLOCK);
        fcntl(fds[1], F_SETPIPE_SZ, 4096);
        __atomic_store_n(&ch->hdr->token.poll_armed, 1, __ATOMIC_SEQ_CST);
    }
    uint64_t session = raw_open(fd);
    if (!session)
        return 2;
    const char *prompt = "Once upon a time";
    mq_msg r;
    if (raw_submit(fd, ch, session, MQ_WIRE_KIND_TEXT, prompt, (uint32_t)strlen(prompt), max_tokens, &r) ||
        r.type != MQ_MSG_SUBMITTED)
        return 3;
    return 0;
}

#endif
