/* The pool runs every tid exactly once per run, the caller as tid 0, and counts runs; a
 * run's epilogue runs once, after every tid of the run, before the call returns. */
#define _GNU_SOURCE
#include "tests/harness.h"
#include "engine/pool.h"

#include <pthread.h>
#include <errno.h>
#include <stdatomic.h>

struct ctx {
    _Atomic int hits[8];
    _Atomic long sum;
    pthread_t caller;
    _Atomic int caller_was_tid0;
    _Atomic int nthreads_seen; /* every tid writes it (the same value) */
};

static void fn(void *arg, int tid, int nthreads)
{
    struct ctx *c = arg;
    atomic_fetch_add(&c->hits[tid], 1);
    atomic_store(&c->nthreads_seen, nthreads);
    if (tid == 0 && pthread_equal(pthread_self(), c->caller))
        atomic_store(&c->caller_was_tid0, 1);
    int lo, hi;
    mq_pool_split(1000, 16, tid, nthreads, &lo, &hi);
    long s = 0;
    for (int i = lo; i < hi; i++)
        s += i;
    atomic_fetch_add(&c->sum, s);
}

static void test_runs_every_tid(void)
{
    for (int nt = 1; nt <= 4; nt++) {
        mq_pool *p;
        CHECK(mq_pool_create(&p, nt, NULL, "test") == 0, "create %d", nt);
        if (!p)
            continue;
        CHECK(mq_pool_threads(p) == nt, "threads");
        struct ctx c = { .caller = pthread_self() };
        const int runs = nt <= 2 ? 2000 : 100; /* many back-to-back runs: races between runs would show */
        for (int r = 0; r < runs; r++)
            mq_pool_run(p, fn, &c);
        for (int t = 0; t < nt; t++)
            CHECK(c.hits[t] == runs, "tid %d ran %d times", t, (int)c.hits[t]);
        CHECK(c.sum == (long)runs * 999 * 1000 / 2, "split covers [0,1000) once: %ld", (long)c.sum);
        CHECK(c.caller_was_tid0, "caller runs tid 0");
        CHECK(c.nthreads_seen == nt, "nthreads");
        CHECK(mq_pool_runs(p) == (uint64_t)runs, "progress counter %llu", (unsigned long long)mq_pool_runs(p));
        mq_pool_destroy(p);
    }
}

/* Each tid writes its slot (plain stores); the epilogue sums the slots, so it must see
 * every tid's store of this run, and the caller must see the epilogue's result. */
struct then_ctx {
    long slot[8];
    long total;
    _Atomic int thens;
};

static void fill(void *arg, int tid, int nthreads)
{
    struct then_ctx *c = arg;
    if (tid == nthreads - 1)
        for (volatile int i = 0; i < 2000; i++) /* the last tid often finishes last */
            ;
    c->slot[tid] += tid + 1;
}

static void sum_slots(void *arg)
{
    struct then_ctx *c = arg;
    atomic_fetch_add(&c->thens, 1);
    c->total = 0;
    for (int t = 0; t < 8; t++)
        c->total += c->slot[t];
}

static void test_epilogue(void)
{
    for (int nt = 1; nt <= 4; nt++) {
        mq_pool *p;
        CHECK(mq_pool_create(&p, nt, NULL, "then") == 0, "create %d", nt);
        if (!p)
            continue;
        struct then_ctx c = { 0 };
        int bad = 0;
        const int runs = 2000;
        for (int r = 1; r <= runs; r++) {
            mq_pool_run_then(p, fill, &c, sum_slots, &c);
            bad += c.total != (long)r * nt * (nt + 1) / 2;
            if (r % 3 == 0)
                mq_pool_run(p, fill, &(struct then_ctx){ 0 }); /* runs without one in between */
        }
        CHECK(bad == 0, "%d threads: the epilogue missed a tid's work in %d of %d runs", nt, bad, runs);
        CHECK(c.thens == runs, "%d threads: epilogue ran %d times for %d runs", nt, (int)c.thens, runs);
        CHECK(mq_pool_runs(p) == (uint64_t)(runs + runs / 3), "every run counted");
        mq_pool_destroy(p);
    }
}

static void test_split(void)
{
    /* slices are aligned, ordered, disjoint and cover [0, n) */
    for (int n = 0; n < 300; n += 7)
        for (int nt = 1; nt <= 5; nt++) {
            int prev = 0;
            for (int t = 0; t < nt; t++) {
                int lo, hi;
                mq_pool_split(n, 16, t, nt, &lo, &hi);
                CHECK(lo == prev && hi >= lo, "n %d nt %d t %d: [%d,%d)", n, nt, t, lo, hi);
                CHECK(lo % 16 == 0 || lo == n, "aligned");
                prev = hi;
            }
            CHECK(prev == n, "covers n=%d", n);
        }
}

static void test_pinned(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    mq_pool *p;
    CHECK(mq_pool_create(&p, 2, &set, "pinned") == 0, "create pinned");
    struct ctx c = { .caller = pthread_self() };
    mq_pool_run(p, fn, &c);
    CHECK(c.hits[1] == 1, "pinned worker ran");
    mq_pool_destroy(p);
    CHECK(mq_pool_create(&p, 0, NULL, "bad") == -EINVAL && p == NULL, "zero threads refused");
}

int main(void)
{
    RUN(test_split);
    RUN(test_runs_every_tid);
    RUN(test_pinned);
    RUN(test_epilogue);
    return harness_done();
}
