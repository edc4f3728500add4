/* engine/pool.h — a fixed set of worker threads that run one function together.
 *
 * Owns: nthreads-1 persistent threads (the calling thread is the nth). The engine splits
 * every kernel call across them (columns of a GEMM, heads of attention, rows of a
 * quantization): mq_pool_run(p, fn, arg) calls fn(arg, tid, nthreads) once for every
 * tid in [0, nthreads) and returns when all of them returned.
 *
 * The caller participates: the thread calling mq_pool_run runs tid 0 itself, the pool's
 * own threads run tids 1..nthreads-1. So a pool of 1 thread has no threads of its own
 * and runs fn inline. Only one thread may call mq_pool_run on a given pool at a time
 * (the pool's owner: the prefill or the decode loop); fn must not call mq_pool_run on
 * the same pool.
 *
 * A run may carry an epilogue (mq_pool_run_then): `then` runs once, after every fn call
 * of the run returned, on whichever thread finished last, before mq_pool_run_then
 * returns. Work that depends on the whole run and is too small to split (the next step
 * of a decode: a norm of one row) then costs no hand-off of its own.
 *
 * Waiting: workers spin briefly on the run generation, then sleep on a futex; the caller
 * likewise spins, then futex-waits for the last worker. mq_pool_run allocates nothing.
 *
 * Progress: mq_pool_runs() counts completed runs (monotonic, readable from any thread)
 * so the watchdog can see that the pool is not stuck.
 */
#ifndef MQ_POOL_H
#define MQ_POOL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdint.h>

typedef struct mq_pool mq_pool;
typedef void (*mq_pool_fn)(void *arg, int tid, int nthreads);

/* Starts nthreads-1 threads (nthreads >= 1), each pinned to `cpus` when given (NULL =
 * any CPU) and named "<name>-<tid>" (name cut to fit the 15-byte limit).
 * Returns 0 or a negative errno. */
int mq_pool_create(mq_pool **out, int nthreads, const cpu_set_t *cpus, const char *name);
/* Runs fn(arg, tid, nthreads) on every tid; blocks until all returned. */
void mq_pool_run(mq_pool *p, mq_pool_fn fn, void *arg);
/* The same, then then(then_arg) once on the thread that finished fn last (then may be NULL). */
void mq_pool_run_then(mq_pool *p, mq_pool_fn fn, void *arg, void (*then)(void *), void *then_arg);
int mq_pool_threads(const mq_pool *p);
/* Number of mq_pool_run calls completed so far (for the watchdog). */
uint64_t mq_pool_runs(const mq_pool *p);
/* Stops and joins the threads. NULL is fine. */
void mq_pool_destroy(mq_pool *p);

/* Initialises *attr for a thread that runs kernels (the pools' threads, the prefill and
 * decode drivers, the loader's threads): a stack of at least MQ_COMPUTE_STACK_BYTES,
 * whatever RLIMIT_STACK (ulimit -s, systemd's LimitSTACK=) says. The kernels keep their
 * tiles on the stack (mq_kernels.h: the AVX-512 prefill attention about 550 KiB), and
 * glibc sizes a new thread's stack from RLIMIT_STACK: under a small limit the first
 * prompt would overflow it. The process's default is kept when it is larger.
 * Returns 0 or a negative errno; pthread_attr_destroy(attr) when done. */
#define MQ_COMPUTE_STACK_BYTES ((size_t)4 << 20)
int mq_compute_thread_attr(pthread_attr_t *attr);

/* [*lo, *hi) = the tid-th of nthreads near-equal slices of [0, n), each (except the
 * last) a multiple of `align` (>= 1) so that SIMD kernels get whole vectors. */
void mq_pool_split(int n, int align, int tid, int nthreads, int *lo, int *hi);

#endif
