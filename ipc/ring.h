/* ipc/ring.h — a single-producer single-consumer byte ring in shared memory, with futex
 * wake-ups both ways.
 *
 * Owns: the control block layout (mq_ring_ctl, lives in the shared memfd) and the
 * producer/consumer operations on it. Knows nothing about what the bytes mean (records are
 * ipc/channel.h's business).
 *
 * Positions are free-running u32 byte counters (mod 2^32); the ring size is a power of two,
 * so `pos & (size-1)` is the offset and `head - tail` the fill level. Each side keeps its
 * own position privately (r->pos) and only *publishes* it to the control block, so a peer
 * that scribbles over the control block can at worst make the other side see an invalid
 * fill level, which every call detects (-EPROTO) instead of reading out of bounds.
 *
 * Wake-ups: a side that has to wait sets a waiter flag and sleeps with FUTEX_WAIT on the
 * peer's published position (not FUTEX_PRIVATE: the words are in a MAP_SHARED memfd seen by
 * two processes). The peer, after publishing, FUTEX_WAKEs while the flag is set; only the
 * waiter clears its flag, when it stops waiting. A consumer
 * that uses poll()/epoll instead sets `poll_armed` and polls a descriptor the producer
 * writes after each publish (an eventfd, or the read end of a pipe whose write end only
 * the producer holds: mqd's choice, so that no client can make that write block). The
 * producer's descriptor must be O_NONBLOCK; a full one means "already woken". No side
 * ever spins.
 *
 * Thread rules: one producer thread and one consumer thread at a time per ring (callers
 * serialise with their own locks if they have more).
 */
#ifndef MQ_IPC_RING_H
#define MQ_IPC_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 128 bytes: producer-written and consumer-written words on separate cache lines. */
typedef struct mq_ring_ctl {
    uint32_t head;         /* producer's published position */
    uint32_t head_waiters; /* 1: the consumer sleeps on `head` */
    uint32_t poll_armed;   /* 1: the consumer wants fd notifications (any non-zero) */
    uint32_t pad0[13];
    uint32_t tail;         /* consumer's published position */
    uint32_t tail_waiters; /* 1: the producer sleeps on `tail` (waits for space) */
    uint32_t pad1[14];
} mq_ring_ctl;

typedef struct mq_ring {
    mq_ring_ctl *ctl;
    uint8_t *data; /* [size] */
    uint32_t size; /* power of two */
    uint32_t pos;  /* this side's private position (head if producer, tail if consumer) */
    int efd;       /* producer side: O_NONBLOCK fd to write when poll_armed, or -1 */
} mq_ring;

/* Zeroes a control block (the creator does it once). */
void mq_ring_ctl_init(mq_ring_ctl *ctl);
/* Binds a local handle. `size` must be a power of two >= 64; -EINVAL otherwise. The
 * position starts at the published one of this side (0 on a fresh ring). */
int mq_ring_attach_producer(mq_ring *r, mq_ring_ctl *ctl, void *data, uint32_t size);
int mq_ring_attach_consumer(mq_ring *r, mq_ring_ctl *ctl, void *data, uint32_t size);

/* ---- producer -------------------------------------------------------------------- */
/* Free bytes, or -EPROTO if the consumer's published tail is impossible. */
int64_t mq_ring_space(const mq_ring *r);
/* Copies n bytes at the private head (wrapping) and advances it; the caller checked space.
 * Not visible to the consumer before mq_ring_publish(). */
void mq_ring_write(mq_ring *r, const void *src, uint32_t n);
/* Makes everything written so far visible and wakes the consumer if it sleeps. */
void mq_ring_publish(mq_ring *r);
/* Sleeps until at least n bytes are free, timeout_ms < 0 = forever. 0, -ETIMEDOUT,
 * -EPROTO, -E2BIG (n > size). */
int mq_ring_wait_space(mq_ring *r, uint32_t n, int timeout_ms);

/* ---- consumer -------------------------------------------------------------------- */
/* Readable bytes, or -EPROTO if the producer's published head is impossible. */
int64_t mq_ring_avail(const mq_ring *r);
/* Copies n bytes starting `off` bytes after the private tail (wrapping); the caller
 * checked avail. */
void mq_ring_peek(const mq_ring *r, uint32_t off, void *dst, uint32_t n);
/* Releases n bytes (advances and publishes the tail) and wakes the producer if it waits. */
void mq_ring_consume(mq_ring *r, uint32_t n);
/* Sleeps until at least one byte is readable. 0, -ETIMEDOUT, -EPROTO, -EINTR. */
int mq_ring_wait_data(mq_ring *r, int timeout_ms);

/* Raw futex helpers on a shared word (exported for the daemon's event loop fallback). */
int mq_futex_wait(uint32_t *word, uint32_t expected, int timeout_ms);
void mq_futex_wake(uint32_t *word);

#ifdef __cplusplus
}
#endif
#endif
