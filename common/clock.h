/* common/clock.h — clocks and deadlines, one copy for every folder.
 *
 * mq_now_*: CLOCK_MONOTONIC (durations, rates, timeouts measured by mq itself).
 * mq_thread_cpu_s / mq_process_cpu_s: CPU time (the loader's and the benchmarks' costs).
 * mq_deadline_in: an absolute deadline `timeout_ms` from now on the given clock; use
 * CLOCK_REALTIME for pthread_cond_timedwait (default condition variables) and
 * CLOCK_MONOTONIC for everything else. Thread-safe, no state.
 */
#ifndef MQ_COMMON_CLOCK_H
#define MQ_COMMON_CLOCK_H

#include <stdint.h>
#include <time.h>

#define MQ_NS_PER_S  1000000000L
#define MQ_NS_PER_MS 1000000L

static inline uint64_t mq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * (uint64_t)MQ_NS_PER_S + (uint64_t)ts.tv_nsec;
}

static inline uint64_t mq_now_ms(void)
{
    return mq_now_ns() / (uint64_t)MQ_NS_PER_MS;
}

static inline double mq_now_s(void)
{
    return (double)mq_now_ns() * 1e-9;
}

/* CPU seconds used so far by the calling thread / by the whole process (every thread,
 * kernel time included): what a computation cost, whatever else ran on the CPUs. */
static inline double mq_thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double mq_process_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void mq_deadline_in(struct timespec *d, clockid_t clk, int64_t timeout_ms)
{
    clock_gettime(clk, d);
    d->tv_sec += (time_t)(timeout_ms / 1000);
    d->tv_nsec += (long)(timeout_ms % 1000) * MQ_NS_PER_MS;
    if (d->tv_nsec >= MQ_NS_PER_S) {
        d->tv_sec++;
        d->tv_nsec -= MQ_NS_PER_S;
    }
}

/* Milliseconds left until `deadline` on clock `clk`; 0 once it has passed. */
static inline int mq_ms_until(const struct timespec *deadline, clockid_t clk)
{
    struct timespec now;
    clock_gettime(clk, &now);
    int64_t ms = (int64_t)(deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / MQ_NS_PER_MS;
    return ms < 0 ? 0 : ms > INT32_MAX ? INT32_MAX : (int)ms;
}

#endif
