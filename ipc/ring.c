/* ipc/ring.c — SPSC byte ring with futex wake-ups (see ring.h). */
#include "ipc/ring.h"
#include "common/clock.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ring positions and waiter flags are shared with another process: sequentially consistent */
#define SC_LOAD(p)     __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define SC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

int mq_futex_wait(uint32_t *word, uint32_t expected, int timeout_ms)
{
    struct timespec ts, *tp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tp = &ts;
    }
    /* Shared futex (no FUTEX_PRIVATE_FLAG): the word lives in a memfd mapped by two
     * processes. */
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, tp, NULL, 0);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return -errno;
}

void mq_futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void mq_ring_ctl_init(mq_ring_ctl *ctl)
{
    memset(ctl, 0, sizeof *ctl);
}

static int attach(mq_ring *r, mq_ring_ctl *ctl, void *data, uint32_t size)
{
    if (size < 64 || (size & (size - 1)))
        return -EINVAL;
    r->ctl = ctl;
    r->data = data;
    r->size = size;
    r->efd = -1;
    return 0;
}

int mq_ring_attach_producer(mq_ring *r, mq_ring_ctl *ctl, void *data, uint32_t size)
{
    int rc = attach(r, ctl, data, size);
    if (!rc)
        r->pos = SC_LOAD(&ctl->head);
    return rc;
}

int mq_ring_attach_consumer(mq_ring *r, mq_ring_ctl *ctl, void *data, uint32_t size)
{
    int rc = attach(r, ctl, data, size);
    if (!rc)
        r->pos = SC_LOAD(&ctl->tail);
    return rc;
}

/* ---- producer ------------------------------------------------------------------ */
int64_t mq_ring_space(const mq_ring *r)
{
    uint32_t used = r->pos - SC_LOAD(&r->ctl->tail);
    if (used > r->size)
        return -EPROTO;
    return (int64_t)(r->size - used);
}

void mq_ring_write(mq_ring *r, const void *src, uint32_t n)
{
    uint32_t off = r->pos & (r->size - 1);
    uint32_t first = r->size - off < n ? r->size - off : n;
    memcpy(r->data + off, src, first);
    memcpy(r->data, (const uint8_t *)src + first, n - first);
    r->pos += n;
}

void mq_ring_publish(mq_ring *r)
{
    SC_STORE(&r->ctl->head, r->pos);
    if (SC_LOAD(&r->ctl->head_waiters))
        mq_futex_wake(&r->ctl->head);
    if (r->efd >= 0 && SC_LOAD(&r->ctl->poll_armed)) {
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof one);
        (void)w; /* EAGAIN = full: the reader has a wake-up pending already */
    }
}

/* One wait protocol for both sides. `ready` says whether the wait is over: > 0 yes,
 * 0 not yet, < 0 an error to return. The waiter owns its flag: it sets it before
 * re-checking and clears it when it stops waiting; a waker only reads it. (When the waker
 * cleared it, a wake meant for an earlier wait could clear the flag of the next one
 * between its announce and its sleep, and both sides then slept until their timeouts.)
 * The sleep is on the peer's published position `word`. */
static int ring_wait(mq_ring *r, uint32_t *word, uint32_t *flag, int64_t (*ready)(const mq_ring *, uint32_t),
                     uint32_t n, int timeout_ms, int eintr_returns)
{
    struct timespec deadline;
    if (timeout_ms >= 0)
        mq_deadline_in(&deadline, CLOCK_MONOTONIC, timeout_ms);
    int rc = 0;
    for (;;) {
        int64_t k = ready(r, n);
        if (k != 0) {
            rc = k < 0 ? (int)k : 0;
            break;
        }
        uint32_t seen = SC_LOAD(word);
        SC_STORE(flag, 1);
        /* Re-check after announcing: the peer may have moved in between. */
        if (ready(r, n) != 0)
            continue;
        int left = timeout_ms < 0 ? -1 : mq_ms_until(&deadline, CLOCK_MONOTONIC);
        if (timeout_ms >= 0 && left == 0) {
            rc = -ETIMEDOUT;
            break;
        }
        rc = mq_futex_wait(word, seen, left);
        if (rc && rc != -ETIMEDOUT && (rc != -EINTR || eintr_returns))
            break;
    }
    if (SC_LOAD(flag))
        SC_STORE(flag, 0);
    return rc;
}

static int64_t space_ready(const mq_ring *r, uint32_t n)
{
    int64_t s = mq_ring_space(r);
    return s < 0 ? s : s >= n;
}

int mq_ring_wait_space(mq_ring *r, uint32_t n, int timeout_ms)
{
    if (n > r->size)
        return -E2BIG;
    return ring_wait(r, &r->ctl->tail, &r->ctl->tail_waiters, space_ready, n, timeout_ms, 0);
}

/* ---- consumer ------------------------------------------------------------------ */
int64_t mq_ring_avail(const mq_ring *r)
{
    uint32_t avail = SC_LOAD(&r->ctl->head) - r->pos;
    if (avail > r->size)
        return -EPROTO;
    return avail;
}

void mq_ring_peek(const mq_ring *r, uint32_t off, void *dst, uint32_t n)
{
    uint32_t o = (r->pos + off) & (r->size - 1);
    uint32_t first = r->size - o < n ? r->size - o : n;
    memcpy(dst, r->data + o, first);
    memcpy((uint8_t *)dst + first, r->data, n - first);
}

void mq_ring_consume(mq_ring *r, uint32_t n)
{
    r->pos += n;
    SC_STORE(&r->ctl->tail, r->pos);
    if (SC_LOAD(&r->ctl->tail_waiters))
        mq_futex_wake(&r->ctl->tail);
}

static int64_t data_ready(const mq_ring *r, uint32_t n)
{
    (void)n;
    return mq_ring_avail(r); /* bytes, or -EPROTO */
}

/* -EINTR returns to the caller (it may have a signal to handle). */
int mq_ring_wait_data(mq_ring *r, int timeout_ms)
{
    return ring_wait(r, &r->ctl->head, &r->ctl->head_waiters, data_ready, 0, timeout_ms, 1);
}
