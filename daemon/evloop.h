/* daemon/evloop.h — mqd's event loop: one thread, one io_uring.
 *
 * Owns: an io_uring and the handlers registered on it. It knows nothing about models,
 * clients or systemd (Redis' ae.c is the model): the server registers
 *   - fd handlers   (multishot POLL_ADD: accept-ready listening sockets, readable clients),
 *   - timers        (TIMEOUT, periodic: watchdog, load progress, drain deadline),
 *   - signals       (a signalfd read through the ring: SIGTERM, SIGINT, SIGHUP),
 *   - futex waits   (FUTEX_WAIT through the ring, kernel >= 6.7: a client freed space in its
 *                    token ring),
 *   - posted calls  (from other threads, e.g. the decode thread's on_done; an eventfd wakes
 *                    the loop),
 *   - one hook run before the loop sleeps.
 *
 * Thread rules: everything runs on the loop thread except mq_evloop_post() and
 * mq_evloop_stop(), which any thread may call. Handlers may add and delete handlers
 * (including themselves) from inside a callback; a deleted handler's callback is never
 * called again and its memory is released once the kernel gave it back.
 */
#ifndef MQ_DAEMON_EVLOOP_H
#define MQ_DAEMON_EVLOOP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mq_evloop mq_evloop;
typedef struct mq_ev mq_ev; /* a registered handler */

typedef void (*mq_ev_fd_fn)(mq_evloop *l, int fd, uint32_t revents, void *arg);
typedef void (*mq_ev_fn)(mq_evloop *l, void *arg);
typedef void (*mq_ev_signal_fn)(mq_evloop *l, int signo, void *arg);
/* res: 0 woken (or the value had already changed), negative errno otherwise. */
typedef void (*mq_ev_futex_fn)(mq_evloop *l, int res, void *arg);

int mq_evloop_create(mq_evloop **out, unsigned entries);
/* Frees the loop and every handler still registered (their fds are not closed). */
void mq_evloop_destroy(mq_evloop *l);

/* Calls fn whenever fd has `events` (POLLIN...). */
int mq_evloop_add_fd(mq_evloop *l, int fd, uint32_t events, mq_ev_fd_fn fn, void *arg, mq_ev **out);
/* Calls fn every interval_ms (first after interval_ms). */
int mq_evloop_add_timer(mq_evloop *l, uint32_t interval_ms, mq_ev_fn fn, void *arg, mq_ev **out);
/* Deletes an fd handler or a timer (NULL is fine). */
void mq_evloop_del(mq_evloop *l, mq_ev *ev);

/* Blocks `signos` for the calling thread (call before creating other threads so they
 * inherit the mask) and delivers them to fn through a signalfd. */
int mq_evloop_add_signals(mq_evloop *l, const int *signos, int n, mq_ev_signal_fn fn, void *arg);
/* One-shot: fn runs when *word != val or a FUTEX_WAKE hits word. -EOPNOTSUPP when the
 * kernel lacks io_uring futex support (caller then falls back to a timer). The word must
 * stay mapped until fn ran (or the loop is destroyed). */
int mq_evloop_futex_wait(mq_evloop *l, uint32_t *word, uint32_t val, mq_ev_futex_fn fn, void *arg);
int mq_evloop_has_futex(const mq_evloop *l);

/* Any thread: runs fn(arg) on the loop thread soon. -ENOMEM only. */
int mq_evloop_post(mq_evloop *l, mq_ev_fn fn, void *arg);

/* A posted call whose node lives in the caller's object (embed one per call that must
 * not be lost, e.g. a request's end): posting it allocates nothing, so it cannot fail.
 * The node must stay valid until fn has run, and is not posted again before that.
 * Posted calls of both kinds run in the order they were posted. */
typedef struct mq_ev_post {
    mq_ev_fn fn;
    void *arg;
    struct mq_ev_post *next;
    int owned; /* mq_evloop_post's own node: freed once fn ran */
} mq_ev_post;
void mq_evloop_post_node(mq_evloop *l, mq_ev_post *node, mq_ev_fn fn, void *arg);
void mq_evloop_set_before_sleep(mq_evloop *l, mq_ev_fn fn, void *arg);
/* Runs the calls posted so far on the calling thread (shutdown: let on_done's follow-ups
 * run after the loop stopped). Returns how many ran. */
int mq_evloop_run_posted(mq_evloop *l);

/* Runs until mq_evloop_stop(); returns 0 or a negative errno of io_uring. */
int mq_evloop_run(mq_evloop *l);
void mq_evloop_stop(mq_evloop *l);

#ifdef __cplusplus
}
#endif
#endif
