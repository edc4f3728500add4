/* tests/bench/bench_common.h — what the benchmarks (bench_e2e, bench_decode, bench_kernels)
 * share: busy time and the read bandwidth of memory.
 *
 * Busy time: mq_process_cpu_s() is the CPU time of the whole process. Over a stretch where
 * only one pool of n threads works (each busy or spinning), CPU time / n is the time the
 * stretch takes while it has the CPUs; time other jobs took the CPUs away does not count
 * (memory bandwidth is still shared with them). On a quiet machine it equals the wall
 * clock. bench_kernels reports its closing lines the same way.
 *
 * bench_read_bandwidth(pool, reps, &busy): every thread of the pool streams its
 * contiguous share of a 1 GiB buffer (transparent huge pages, as the weights) with the
 * widest loads this CPU has (AVX-512 or AVX2 when the kernels may use them, else 64-bit
 * words) into 4 independent accumulators, so the figure is the memory's, not the loop's;
 * best of `reps` passes, bytes per second by the wall clock (and by busy time in *busy).
 * A scalar loop of 64-bit adds measured 45 GB/s where the BF16 GEMV streamed 67 (one
 * process, one minute apart): too low to be a ceiling.
 */
#ifndef MQ_BENCH_COMMON_H
#define MQ_BENCH_COMMON_H

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "engine/arena.h"
#include "engine/pool.h"
#include "kernels/mq_kernels.h"

#define BENCH_BW_BYTES ((size_t)1 << 30)

struct bench_bw {
    const uint8_t *p;
    size_t bytes;
    int isa;
    uint64_t sink[64];
};

__attribute__((target("avx512f"))) static inline uint64_t bench_bw_avx512(const uint8_t *p, size_t n)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        s0 = _mm512_xor_si512(s0, _mm512_load_si512(p + i));
        s1 = _mm512_xor_si512(s1, _mm512_load_si512(p + i + 64));
        s2 = _mm512_xor_si512(s2, _mm512_load_si512(p + i + 128));
        s3 = _mm512_xor_si512(s3, _mm512_load_si512(p + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_xor_si512(_mm512_xor_si512(s0, s1), _mm512_xor_si512(s2, s3)));
}

__attribute__((target("avx2"))) static inline uint64_t bench_bw_avx2(const uint8_t *p, size_t n)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        s0 = _mm256_xor_si256(s0, _mm256_load_si256((const __m256i *)(p + i)));
        s1 = _mm256_xor_si256(s1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        s2 = _mm256_xor_si256(s2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        s3 = _mm256_xor_si256(s3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
    return (uint64_t)_mm256_extract_epi64(s, 0) ^ (uint64_t)_mm256_extract_epi64(s, 3);
}

static inline uint64_t bench_bw_scalar(const uint8_t *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

static void bench_bw_fn(void *arg, int tid, int nt)
{
    struct bench_bw *a = arg;
    int lo, hi; /* in 4 KiB pages */
    mq_pool_split((int)(a->bytes >> 12), 1, tid, nt, &lo, &hi);
    const uint8_t *p = a->p + ((size_t)lo << 12);
    const size_t n = (size_t)(hi - lo) << 12;
    a->sink[tid & 63] = a->isa == MQ_ISA_AVX512 ? bench_bw_avx512(p, n)
                        : a->isa == MQ_ISA_AVX2 ? bench_bw_avx2(p, n)
                                                : bench_bw_scalar(p, n);
}

/* Bytes per second by the wall clock (and by busy time in *busy, may be NULL); 0 if the
 * buffer cannot be mapped. */
static inline double bench_read_bandwidth(mq_pool *pool, int reps, double *busy)
{
    uint8_t *p = mq_mem_map(BENCH_BW_BYTES, 0, 1, NULL);
    if (busy)
        *busy = 0;
    if (!p)
        return 0;
    memset(p, 1, BENCH_BW_BYTES);
    struct bench_bw a = { .p = p, .bytes = BENCH_BW_BYTES, .isa = (int)mq_kernels_isa() };
    double best = 0, best_busy = 0;
    for (int k = 0; k < reps; k++) {
        double t0 = mq_now_s(), c0 = mq_process_cpu_s();
        mq_pool_run(pool, bench_bw_fn, &a);
        double bw = (double)BENCH_BW_BYTES / (mq_now_s() - t0);
        double bb = (double)BENCH_BW_BYTES / ((mq_process_cpu_s() - c0) / mq_pool_threads(pool));
        best = bw > best ? bw : best;
        best_busy = bb > best_busy ? bb : best_busy;
    }
    mq_mem_unmap(p, BENCH_BW_BYTES);
    if (busy)
        *busy = best_busy;
    return best;
}

#endif
