/* tests/unit/test_ring.c — SPSC rings and the memfd channel: wrap-around, corrupt control
 * blocks detected, a threaded producer/consumer through a tiny ring (both sides must sleep
 * on futexes and be woken), and records across two processes sharing the memfd. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

#include "ipc/channel.h"
#include "tests/harness.h"
#include "ipc/ring.h"

/* A producer and a consumer on one fresh ring of `size` bytes. */
static void ring_pair(mq_ring_ctl *ctl, uint8_t *data, uint32_t size, mq_ring *p, mq_ring *c)
{
    mq_ring_ctl_init(ctl);
    CHECK(mq_ring_attach_producer(p, ctl, data, size) == 0, "attach the producer (%u bytes)", size);
    CHECK(mq_ring_attach_consumer(c, ctl, data, size) == 0, "attach the consumer (%u bytes)", size);
}

static void test_wrap_around(void)
{
    static mq_ring_ctl ctl;
    static uint8_t data[64];
    mq_ring p, c;
    mq_ring_ctl_init(&ctl);
    CHECK(mq_ring_attach_producer(&p, &ctl, data, 48) == -EINVAL, "size 48 accepted");
    ring_pair(&ctl, data, sizeof data, &p, &c);
    uint8_t out[64], in[64];
    unsigned next = 0, expect = 0;
    for (int round = 0; round < 1000; round++) {
        uint32_t n = 1 + (uint32_t)(round * 7 % 40);
        CHECK(mq_ring_space(&p) == 64 - (int64_t)mq_ring_avail(&c), "space+avail = size");
        if (mq_ring_space(&p) >= n) {
            for (uint32_t i = 0; i < n; i++)
                in[i] = (uint8_t)next++;
            mq_ring_write(&p, in, n);
            CHECK(mq_ring_avail(&c) + n == 64 - mq_ring_space(&p), "unpublished not visible");
            mq_ring_publish(&p);
        }
        int64_t a = mq_ring_avail(&c);
        uint32_t take = (uint32_t)(a > 13 ? 13 : a);
        mq_ring_peek(&c, 0, out, take);
        for (uint32_t i = 0; i < take; i++)
            CHECK(out[i] == (uint8_t)expect++, "byte %u", i);
        mq_ring_consume(&c, take);
    }
    CHECK(next > 5000, "moved %u bytes", next);
    /* A scribbled control block is detected, not trusted. */
    ctl.tail = p.pos + 100;
    CHECK(mq_ring_space(&p) == -EPROTO, "bad tail");
    ctl.head = c.pos - 1;
    CHECK(mq_ring_avail(&c) == -EPROTO, "bad head");
    CHECK(mq_ring_wait_data(&c, 10) == -EPROTO, "wait on bad head");
}

static void test_timeouts(void)
{
    static mq_ring_ctl ctl;
    static uint8_t data[4096];
    mq_ring p, c;
    ring_pair(&ctl, data, sizeof data, &p, &c);
    CHECK(mq_ring_wait_data(&c, 30) == -ETIMEDOUT, "empty ring times out");
    CHECK(mq_ring_wait_data(&c, 0) == -ETIMEDOUT, "zero timeout polls");
    uint8_t big[4096] = { 0 };
    mq_ring_write(&p, big, 4096);
    mq_ring_publish(&p);
    CHECK(mq_ring_wait_space(&p, 1, 30) == -ETIMEDOUT, "full ring times out");
    CHECK(mq_ring_wait_space(&p, 5000, 30) == -E2BIG, "more than the ring");
    CHECK(mq_ring_wait_data(&c, 0) == 0, "data ready");
}

/* The waker only reads the waiter's flag; the waiter clears it when it stops waiting.
 * (A waker that cleared it could swallow the wake of the waiter's next wait: both sides
 * then slept until their timeouts, about 1 run in 15 of test_threads_futex.) */
static void test_waiter_owns_flag(void)
{
    static mq_ring_ctl ctl;
    static uint8_t data[64];
    mq_ring p, c;
    ring_pair(&ctl, data, sizeof data, &p, &c);
    uint8_t buf[64] = { 0 };
    mq_ring_write(&p, buf, 64);
    mq_ring_publish(&p);
    CHECK(mq_ring_wait_space(&p, 8, 10) == -ETIMEDOUT, "full");
    CHECK(ctl.tail_waiters == 0, "a wait that ended (timeout) leaves no flag behind");
    ctl.tail_waiters = 1; /* a producer announced a wait */
    mq_ring_consume(&c, 16);
    CHECK(ctl.tail_waiters == 1, "consume woke but did not clear the producer's flag");
    CHECK(mq_ring_wait_space(&p, 8, 10) == 0 && ctl.tail_waiters == 0, "the producer clears it on return");
    mq_ring_consume(&c, 48);
    CHECK(mq_ring_wait_data(&c, 10) == -ETIMEDOUT && ctl.head_waiters == 0, "empty; consumer's flag cleared");
    ctl.head_waiters = 1;
    mq_ring_write(&p, buf, 8);
    mq_ring_publish(&p);
    CHECK(ctl.head_waiters == 1, "publish woke but did not clear the consumer's flag");
    CHECK(mq_ring_wait_data(&c, 10) == 0 && ctl.head_waiters == 0, "the consumer clears it on return");
}

/* ---- threaded stream through a 4 KiB ring -------------------------------------- */
struct stream {
    mq_ring p, c;
    size_t total;
    uint64_t sum_in, sum_out;
    int err;
};

static void *producer(void *arg)
{
    struct stream *s = arg;
    uint8_t buf[1000];
    uint32_t x = 1;
    for (size_t sent = 0; sent < s->total;) {
        uint32_t n = 1 + (x % 1000);
        if (n > s->total - sent)
            n = (uint32_t)(s->total - sent);
        for (uint32_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            buf[i] = (uint8_t)(x >> 16);
            s->sum_in = s->sum_in * 31 + buf[i];
        }
        int rc = mq_ring_wait_space(&s->p, n, 5000);
        if (rc) {
            s->err = rc;
            return NULL;
        }
        mq_ring_write(&s->p, buf, n);
        mq_ring_publish(&s->p);
        sent += n;
    }
    return NULL;
}

static void test_threads_futex(void)
{
    static mq_ring_ctl ctl;
    static uint8_t data[4096];
    static struct stream s;
    memset(&s, 0, sizeof s);
    ring_pair(&ctl, data, sizeof data, &s.p, &s.c);
    s.total = 8u << 20;
    pthread_t th;
    pthread_create(&th, NULL, producer, &s);
    size_t got = 0;
    uint8_t buf[777];
    while (got < s.total) {
        int rc = mq_ring_wait_data(&s.c, 5000);
        if (rc) {
            CHECK(0, "wait_data %d after %zu bytes", rc, got);
            break;
        }
        int64_t a = mq_ring_avail(&s.c);
        uint32_t n = (uint32_t)(a > (int64_t)sizeof buf ? (int64_t)sizeof buf : a);
        mq_ring_peek(&s.c, 0, buf, n);
        for (uint32_t i = 0; i < n; i++)
            s.sum_out = s.sum_out * 31 + buf[i];
        mq_ring_consume(&s.c, n);
        got += n;
    }
    pthread_join(th, NULL);
    CHECK(s.err == 0, "producer error %d", s.err);
    CHECK(got == s.total, "got %zu of %zu", got, s.total);
    CHECK(s.sum_in == s.sum_out, "checksums differ");
}

/* ---- two processes over a channel memfd ---------------------------------------- */
static void test_channel_across_processes(void)
{
    mq_chan d;
    char err[256] = "";
    int rc = mq_chan_create(&d, 4096, 8192, 1, err, sizeof err);
    CHECK(rc == 0, "create: %s", err);
    if (rc)
        return;
    CHECK(mq_chan_create(&(mq_chan){ 0 }, 1000, 8192, 0, err, sizeof err) == -EINVAL, "non power of two accepted");
    /* Sealed: the client cannot shrink it. (To 0: a hugetlb-backed memfd refuses a size
     * that is not a multiple of 2 MiB with EINVAL before it looks at the seals.) */
    CHECK(ftruncate(d.fd, 0) < 0 && errno == EPERM, "memfd not sealed against shrink (%s)", strerror(errno));
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    d.token.efd = efd;
    enum { N = 20000 };
    pid_t pid = fork();
    if (pid == 0) {
        /* child = mqd side: produce N token records and a DONE into an 8 KiB ring */
        uint8_t rec[MQ_CHAN_REC_MAX];
        for (int i = 0; i <= N; i++) {
            char text[32];
            int tl = snprintf(text, sizeof text, "tok%d ", i);
            int n = i < N ? mq_chan_format_token(rec, sizeof rec, 5, i, 0, text, (uint32_t)tl)
                          : mq_chan_format_done(rec, sizeof rec, 5,
                                                &(mq_chan_done){ .end_reason = MQ_CHAN_END_LENGTH, .gen_tokens = N },
                                                "fine", 4);
            if (n < 0 || mq_ring_wait_space(&d.token, (uint32_t)n, 5000))
                _exit(2);
            mq_ring_write(&d.token, rec, (uint32_t)n);
            mq_ring_publish(&d.token);
        }
        _exit(0);
    }
    /* parent = client side: map a duplicate of the fd like libmq does */
    mq_chan c;
    rc = mq_chan_map(&c, dup(d.fd), err, sizeof err);
    CHECK(rc == 0, "map: %s", err);
    int seen = 0, done = 0, bad = 0;
    uint8_t rec[MQ_CHAN_REC_MAX];
    /* the first half via futex waits, the second half via the eventfd + poll() */
    while (!rc && !done) {
        if (seen < N / 2) {
            c.hdr->token.poll_armed = 0;
            if (mq_ring_wait_data(&c.token, 5000)) {
                bad++;
                break;
            }
        } else {
            __atomic_store_n(&c.hdr->token.poll_armed, 1, __ATOMIC_SEQ_CST);
            if (mq_ring_avail(&c.token) == 0) {
                struct pollfd pf = { efd, POLLIN, 0 };
                if (poll(&pf, 1, 5000) != 1) {
                    bad++;
                    break;
                }
                uint64_t v;
                if (read(efd, &v, sizeof v) != sizeof v)
                    bad++;
            }
        }
        int r;
        while ((r = mq_chan_read_rec(&c.token, rec, sizeof rec)) == 1) {
            mq_chan_rec h;
            memcpy(&h, rec, sizeof h);
            if (h.type == MQ_REC_TOKEN) {
                char want[32];
                int wl = snprintf(want, sizeof want, "tok%d ", seen);
                if (h.req != 5 || h.token != seen || h.text_len != wl || memcmp(rec + sizeof h, want, (size_t)wl))
                    bad++;
                seen++;
            } else {
                mq_chan_done dn;
                memcpy(&dn, rec + sizeof h, sizeof dn);
                CHECK(dn.end_reason == MQ_CHAN_END_LENGTH && dn.gen_tokens == N, "done body");
                CHECK(h.text_len == 4 && !memcmp(rec + sizeof h + sizeof dn, "fine", 4), "msg");
                done = 1;
            }
        }
        if (r < 0) {
            bad++;
            break;
        }
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer child status %d", st);
    CHECK(bad == 0 && seen == N && done, "bad %d seen %d done %d", bad, seen, done);
    /* A corrupt record (size lies) is refused. */
    mq_chan_rec h = { 13, MQ_REC_TOKEN, 0, 1, 1, 0 };
    d.token.pos = c.token.pos; /* both sides agree after the child's run */
    mq_ring_write(&d.token, &h, sizeof h);
    mq_ring_publish(&d.token);
    CHECK(mq_chan_read_rec(&c.token, rec, sizeof rec) == -EPROTO, "corrupt record accepted");
    mq_chan_unmap(&c);
    mq_chan_unmap(&d);
    close(efd);
    /* A garbage memfd is refused by the client. */
    int fd = memfd_create("junk", 0);
    CHECK(ftruncate(fd, 8192) == 0, "ftruncate");
    CHECK(mq_chan_map(&c, fd, err, sizeof err) == -EPROTO && strstr(err, "magic"), "junk: %s", err);
}

int main(void)
{
    RUN(test_wrap_around);
    RUN(test_timeouts);
    RUN(test_waiter_owns_flag);
    RUN(test_threads_futex);
    RUN(test_channel_across_processes);
    return harness_done();
}
