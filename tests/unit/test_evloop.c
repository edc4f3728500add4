/* tests/unit/test_evloop.c — the io_uring event loop: fd readiness, periodic timers,
 * posted calls from another thread, signals through signalfd, futex waits woken by
 * another thread, and handlers deleting themselves inside their callback. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "daemon/evloop.h"
#include "tests/harness.h"
#include "ipc/ring.h"

struct st {
    int reads, ticks, posts, sig, futex_res, futex_hits;
    int pipe[2];
    mq_ev *rd, *timer;
    uint32_t word;
};

static void on_read(mq_evloop *l, int fd, uint32_t ev, void *arg)
{
    struct st *s = arg;
    char b[16];
    if (ev & POLLIN && read(fd, b, sizeof b) > 0)
        s->reads++;
    if (s->reads == 3)
        mq_evloop_del(l, s->rd); /* deletes itself */
}
static void on_tick(mq_evloop *l, void *arg)
{
    struct st *s = arg;
    s->ticks++;
    if (s->reads < 5 && write(s->pipe[1], "x", 1) != 1)
        s->reads = -100;
    if (s->ticks == 6) {
        mq_evloop_del(l, s->timer);
        kill(getpid(), SIGUSR1);
    }
}
static void on_post(mq_evloop *l, void *arg)
{
    (void)l;
    ((struct st *)arg)->posts++;
}
static void on_sig(mq_evloop *l, int signo, void *arg)
{
    struct st *s = arg;
    s->sig = signo;
    (void)l;
}
static void on_futex(mq_evloop *l, int res, void *arg)
{
    struct st *s = arg;
    s->futex_res = res;
    s->futex_hits++;
    mq_evloop_stop(l);
}
static void *poster(void *arg)
{
    void **a = arg;
    for (int i = 0; i < 100; i++)
        mq_evloop_post(a[0], on_post, a[1]);
    return NULL;
}
static void stop_cb(mq_evloop *l, void *arg)
{
    (void)arg;
    mq_evloop_stop(l);
}
static void *waker(void *arg)
{
    struct st *s = arg;
    usleep(300000); /* after the loop has stopped ticking */
    __atomic_store_n(&s->word, 1, __ATOMIC_SEQ_CST);
    mq_futex_wake(&s->word);
    return NULL;
}

static void test_loop(void)
{
    mq_evloop *l;
    struct st s;
    memset(&s, 0, sizeof s);
    CHECK(mq_evloop_create(&l, 64) == 0, "create");
    CHECK(pipe(s.pipe) == 0, "pipe");
    int sigs[] = { SIGUSR1 };
    CHECK(mq_evloop_add_signals(l, sigs, 1, on_sig, &s) == 0, "signals");
    CHECK(mq_evloop_add_fd(l, s.pipe[0], POLLIN, on_read, &s, &s.rd) == 0, "fd");
    CHECK(mq_evloop_add_timer(l, 20, on_tick, &s, &s.timer) == 0, "timer");
    pthread_t th, tw;
    void *a[2] = { l, &s };
    pthread_create(&th, NULL, poster, a);
    CHECK(mq_evloop_has_futex(l), "kernel without io_uring FUTEX_WAIT");
    int rc = mq_evloop_futex_wait(l, &s.word, 0, on_futex, &s);
    CHECK(rc == 0, "futex wait %d", rc);
    pthread_create(&tw, NULL, waker, &s);
    CHECK(mq_evloop_run(l) == 0, "run");
    pthread_join(th, NULL);
    pthread_join(tw, NULL);
    CHECK(s.reads == 3, "reads %d (the handler deleted itself after 3)", s.reads);
    CHECK(s.ticks == 6, "ticks %d", s.ticks);
    CHECK(s.sig == SIGUSR1, "signal %d", s.sig);
    CHECK(s.futex_hits == 1 && s.futex_res == 0, "futex hits %d res %d", s.futex_hits, s.futex_res);
    /* posts may still be queued if the loop stopped first: run once more to drain */
    if (s.posts < 100) {
        mq_evloop_add_timer(l, 50, stop_cb, NULL, NULL);
        mq_evloop_run(l);
    }
    CHECK(s.posts == 100, "posts %d", s.posts);
    mq_evloop_destroy(l);
    close(s.pipe[0]);
    close(s.pipe[1]);
}

/* Posted nodes embedded in the caller's objects (a request's end must not be lost to
 * ENOMEM): they run in posting order with mq_evloop_post's calls, fn may free the object
 * that holds its node, and a loop destroyed with nodes still queued frees none of them
 * (ASan reports a free of memory the loop did not allocate). */
struct job {
    mq_ev_post node;
    int id, *order, *n;
};
static void on_job(mq_evloop *l, void *arg)
{
    struct job *j = arg;
    (void)l;
    j->order[(*j->n)++] = j->id;
    free(j); /* as finish_req frees its request */
}
static void on_plain(mq_evloop *l, void *arg)
{
    struct job *j = arg; /* a template: id and counters, not freed */
    (void)l;
    j->order[(*j->n)++] = -1;
}
static void test_post_node(void)
{
    mq_evloop *l;
    CHECK(mq_evloop_create(&l, 64) == 0, "create");
    int order[8], n = 0;
    struct job plain = { .id = -1, .order = order, .n = &n };
    for (int i = 0; i < 6; i++) {
        struct job *j = malloc(sizeof *j);
        *j = (struct job){ .id = i, .order = order, .n = &n };
        mq_evloop_post_node(l, &j->node, on_job, j);
        if (i == 2)
            CHECK(mq_evloop_post(l, on_plain, &plain) == 0, "post");
    }
    CHECK(mq_evloop_run_posted(l) == 7, "ran %d", n);
    static const int want[7] = { 0, 1, 2, -1, 3, 4, 5 };
    CHECK(n == 7 && !memcmp(order, want, sizeof want), "order %d %d %d %d %d %d %d", order[0], order[1], order[2],
          order[3], order[4], order[5], order[6]);
    struct job kept = { .id = 9, .order = order, .n = &n }; /* still queued at destroy */
    mq_evloop_post_node(l, &kept.node, on_plain, &kept);
    CHECK(mq_evloop_post(l, on_plain, &plain) == 0, "post");
    mq_evloop_destroy(l);
    CHECK(n == 7, "a destroyed loop runs nothing (%d)", n);
}

int main(void)
{
    RUN(test_loop);
    RUN(test_post_node);
    return harness_done();
}
