/* tests/bench/bench_kernels.c — `make bench-kernels`: this machine's ceilings and the
 * NVFP4 / BF16 GEMM and GEMV throughput at Qwen3 linear-layer shapes.
 *
 * Ceilings, measured in the same run with 2 threads (and 1), each thread running
 * CHAINS independent accumulator chains so instruction latency is hidden:
 *   vnni   vpdpbusd zmm: 64 int8 MACs per instruction
 *   bf16   vdpbf16ps zmm: 32 BF16 MACs per instruction
 *   read   streaming 512-bit loads over a buffer far larger than the caches
 * Then mq_gemm_fp4 (prepared activations; the activation quantization is timed
 * separately as `q+prep`; weights with the packed copy in its table form, what mqd runs
 * when memory allows, and in the summary also in its index form and without one) and mq_gemm_bf16 at the q/k/v/o/gate/up/down (N, K) of
 * Qwen3-0.6B, -1.7B and -4B for M = 1, 8, 128, 512, 2048, with 1 and 2 threads (the
 * threads split the N columns, as the daemon's pools do). Every figure is the best of
 * several repetitions, because other jobs share the machine.
 *
 * The last five lines are single numbers (docs/design/kernels.md says how to read them):
 *   fp4_gemm_vs_bf16_gemm_m512   NVFP4 / BF16 GEMM MAC rate, Qwen3-1.7B linears, M=512, 2 threads
 *   fp4_gemm_vs_vnni_ceiling     NVFP4 GEMM MAC rate / VNNI ceiling (same shapes)
 *   bf16_gemm_vs_bf16_ceiling    BF16 GEMM MAC rate / BF16 ceiling (same shapes)
 *   bf16_gemv_vs_bandwidth       BF16 GEMV weight bytes/s / read bandwidth, all Qwen3-4B
 *                                linears of one layer in turn (200 MB, so from DRAM), M=1
 *   fp4_gemm_m16_table_vs_index  NVFP4 GEMM MAC rate with the table-form copy (read as mqd
 *                                reads it at 16 rows) / with the index-form copy, Qwen3-1.7B
 *                                linears, M=16, 2 threads
 * MQ_BENCH_QUICK=1 runs only the shapes the five lines need.
 * `bench_kernels fp4-forms` instead compares the ways the NVFP4 GEMM reads its packed copy
 * (the whole table, its row 0 only, the index form) at the shapes docs/design/kernels.md
 * quotes, and over M = 4..512 on the Qwen3-1.7B linears (the figures behind
 * fp4_row0_max_rows).
 */
#include "kernels/kernels_internal.h" /* fp4_row0_max_rows: the forms' paths */
#include "kernels/mq_kernels.h"
#include "tests/bench/bench_common.h"

#include <immintrin.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define CHAINS      24
#define MAX_THREADS 2

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- a tiny thread team: run fn(t, nt, arg) on nt threads, the caller being t=0 ---- */

typedef void (*job_fn)(int t, int nt, void *arg);

typedef struct team {
    pthread_t th[MAX_THREADS];
    pthread_barrier_t start, done;
    job_fn fn;
    void *arg;
    int nt, quit;
    double cpu[MAX_THREADS]; /* CPU seconds each thread spent in the last job */
} team;

static team T;

static void *team_main(void *p)
{
    int t = (int)(intptr_t)p;
    for (;;) {
        pthread_barrier_wait(&T.start);
        if (T.quit)
            return NULL;
        if (t < T.nt) {
            double c0 = mq_thread_cpu_s();
            T.fn(t, T.nt, T.arg);
            T.cpu[t] = mq_thread_cpu_s() - c0;
        }
        pthread_barrier_wait(&T.done);
    }
}

static void team_init(void)
{
    pthread_barrier_init(&T.start, NULL, MAX_THREADS);
    pthread_barrier_init(&T.done, NULL, MAX_THREADS);
    for (int t = 1; t < MAX_THREADS; t++)
        pthread_create(&T.th[t], NULL, team_main, (void *)(intptr_t)t);
}

/* Returns the job's busy time: the largest CPU time any of its threads spent in it. */
static double team_run(int nt, job_fn fn, void *arg)
{
    T.fn = fn;
    T.arg = arg;
    T.nt = nt;
    pthread_barrier_wait(&T.start);
    double c0 = mq_thread_cpu_s();
    fn(0, nt, arg);
    T.cpu[0] = mq_thread_cpu_s() - c0;
    pthread_barrier_wait(&T.done);
    double m = 0;
    for (int t = 0; t < nt; t++)
        m = T.cpu[t] > m ? T.cpu[t] : m;
    return m;
}

static void team_stop(void)
{
    T.quit = 1;
    pthread_barrier_wait(&T.start);
    for (int t = 1; t < MAX_THREADS; t++)
        pthread_join(T.th[t], NULL);
}

/* ---- ceilings --------------------------------------------------------------------- */

#define CEIL_ITERS 4000000L

typedef struct ceil_arg {
    long iters;
    double sink[MAX_THREADS];
} ceil_arg;

/* The ceilings are written in assembly so that exactly CHAINS (24) accumulators, zmm8..zmm31,
 * each carry one dependency chain across iterations; x and w sit in zmm0/zmm1. */
__attribute__((target("avx512f"))) static void vnni_job(int t, int nt, void *p)
{
    (void)nt;
    ceil_arg *a = p;
    __asm__ volatile("vpternlogd $0xff, %%zmm0, %%zmm0, %%zmm0\n\tvpabsb %%zmm0, %%zmm1" ::: "xmm0", "xmm1");
    for (long it = 0; it < a->iters; it++)
        __asm__ volatile(
            "vpdpbusd %%zmm1, %%zmm0, %%zmm8\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm9\n\tvpdpbusd %%zmm1, %%zmm0, "
            "%%zmm10\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm11\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm12\n\tvpdpbusd %%zmm1, "
            "%%zmm0, %%zmm13\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm14\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm15\n\tvpdpbusd "
            "%%zmm1, %%zmm0, %%zmm16\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm17\n\tvpdpbusd %%zmm1, %%zmm0, "
            "%%zmm18\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm19\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm20\n\tvpdpbusd %%zmm1, "
            "%%zmm0, %%zmm21\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm22\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm23\n\tvpdpbusd "
            "%%zmm1, %%zmm0, %%zmm24\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm25\n\tvpdpbusd %%zmm1, %%zmm0, "
            "%%zmm26\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm27\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm28\n\tvpdpbusd %%zmm1, "
            "%%zmm0, %%zmm29\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm30\n\tvpdpbusd %%zmm1, %%zmm0, %%zmm31" ::
                : "xmm0", "xmm1", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",
                  "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
                  "xmm28", "xmm29", "xmm30", "xmm31");
    a->sink[t] = 0;
}

__attribute__((target("avx512f"))) static void bf16_job(int t, int nt, void *p)
{
    (void)nt;
    ceil_arg *a = p;
    __asm__ volatile("vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1" ::: "xmm0", "xmm1");
    for (long it = 0; it < a->iters; it++)
        __asm__ volatile(
            "vdpbf16ps %%zmm1, %%zmm0, %%zmm8\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm9\n\tvdpbf16ps %%zmm1, %%zmm0, "
            "%%zmm10\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm11\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm12\n\tvdpbf16ps %%zmm1, "
            "%%zmm0, %%zmm13\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm14\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm15\n\tvdpbf16ps "
            "%%zmm1, %%zmm0, %%zmm16\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm17\n\tvdpbf16ps %%zmm1, %%zmm0, "
            "%%zmm18\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm19\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm20\n\tvdpbf16ps %%zmm1, "
            "%%zmm0, %%zmm21\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm22\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm23\n\tvdpbf16ps "
            "%%zmm1, %%zmm0, %%zmm24\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm25\n\tvdpbf16ps %%zmm1, %%zmm0, "
            "%%zmm26\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm27\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm28\n\tvdpbf16ps %%zmm1, "
            "%%zmm0, %%zmm29\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm30\n\tvdpbf16ps %%zmm1, %%zmm0, %%zmm31" ::
                : "xmm0", "xmm1", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",
                  "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
                  "xmm28", "xmm29", "xmm30", "xmm31");
    a->sink[t] = 0;
}

typedef struct read_arg {
    const uint8_t *buf;
    size_t bytes;
    double sink[MAX_THREADS];
} read_arg;

static void read_job(int t, int nt, void *p)
{
    read_arg *a = p;
    size_t per = a->bytes / (size_t)nt / 256 * 256;
    a->sink[t] = (double)bench_bw_avx512(a->buf + per * (size_t)t, per); /* bench_common.h */
}

typedef struct ceilings {
    double vnni[MAX_THREADS + 1], bf16[MAX_THREADS + 1], read[MAX_THREADS + 1]; /* by thread count */
} ceilings;

static void measure_ceilings(ceilings *c, const uint8_t *buf, size_t bytes)
{
    for (int nt = 1; nt <= MAX_THREADS; nt++) {
        ceil_arg ca = { .iters = CEIL_ITERS / 4 };
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now();
            team_run(nt, vnni_job, &ca);
            double r = (double)ca.iters * CHAINS * 64 * nt / (now() - t0);
            if (r > c->vnni[nt])
                c->vnni[nt] = r;
            t0 = now();
            team_run(nt, bf16_job, &ca);
            r = (double)ca.iters * CHAINS * 32 * nt / (now() - t0);
            if (r > c->bf16[nt])
                c->bf16[nt] = r;
        }
        read_arg ra = { .buf = buf, .bytes = bytes };
        for (int rep = 0; rep < 4; rep++) {
            double t0 = now();
            team_run(nt, read_job, &ra);
            double r = (double)(bytes / (size_t)nt / 64 * 64 * (size_t)nt) / (now() - t0);
            if (r > c->read[nt])
                c->read[nt] = r;
        }
    }
}

/* ---- GEMM jobs: threads split the N columns at multiples of 16 ---------------------- */

typedef struct gemm_arg {
    int fmt; /* 0 NVFP4, 1 BF16 */
    const mq_fp4_act *xa;
    const mq_fp4_weight *wf;
    const uint16_t *xb;
    const mq_bf16_weight *wb;
    int m, n;
    float *y;
} gemm_arg;

static void gemm_job(int t, int nt, void *p)
{
    gemm_arg *a = p;
    int g = (a->n + 15) / 16;
    int n0 = g * t / nt * 16, n1 = g * (t + 1) / nt * 16;
    if (n1 > a->n)
        n1 = a->n;
    if (n0 >= n1)
        return;
    if (a->fmt == 0)
        mq_gemm_fp4(a->xa, a->wf, a->y, (size_t)a->n, n0, n1);
    else
        mq_gemm_bf16(a->xb, a->m, (size_t)a->wb->k, a->wb, a->y, (size_t)a->n, n0, n1);
}

typedef struct shape {
    const char *model, *name;
    int n, k;
} shape;

/* Qwen3 configs: hidden, q heads, kv heads, head_dim, ffn. */
static int qwen3_shapes(shape *s, const char *model, int hidden, int nh, int nkv, int hd, int ffn)
{
    shape l[7] = {
        { model, "q", nh * hd, hidden }, { model, "k", nkv * hd, hidden }, { model, "v", nkv * hd, hidden },
        { model, "o", hidden, nh * hd }, { model, "gate", ffn, hidden },   { model, "up", ffn, hidden },
        { model, "down", hidden, ffn },
    };
    memcpy(s, l, sizeof l);
    return 7;
}

/* Large buffers on transparent huge pages, as mqd's weights are (its arena), so the read
 * ceiling and the GEMV stream through the same kind of memory. */
static void *xmalloc(size_t n)
{
    const size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, n >= huge ? huge : 64, n)) {
        fprintf(stderr, "bench_kernels: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    if (n >= huge)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned rnd8(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng >> 24) & 0xff;
}

/* Operands for one shape: random codes and finite E4M3 scales (speed does not depend on
 * values), BF16 weights from a fixed pool. */
typedef struct operands {
    mq_fp4_weight wf;  /* with the packed copy, table form (what mqd runs when memory allows) */
    mq_fp4_weight wfi; /* the same with the index-form packed copy */
    mq_fp4_weight wfr; /* the same canonical arrays without either (per-call repacking) */
    void *wf_mem, *wf_packed, *wf_table;
    mq_bf16_weight wb;
    uint16_t *wb_data;
} operands;

static void make_operands(operands *o, int n, int k)
{
    o->wf_mem = xmalloc(mq_fp4_weight_bytes(n, k));
    o->wf_packed = xmalloc(mq_fp4_weight_packed_bytes(n, k));
    o->wf_table = xmalloc(mq_fp4_weight_table_bytes(n, k));
    mq_fp4_weight_bind(&o->wf, n, k, o->wf_mem);
    mq_fp4_weight_bind_table(&o->wf, o->wf_table);
    o->wf.g = 100.0f;
    size_t cb = (size_t)n * o->wf.kp / 2, sb = (size_t)n * o->wf.kp / 16;
    uint8_t *codes = xmalloc(cb), *scales = xmalloc(sb);
    for (size_t i = 0; i < cb; i++)
        codes[i] = (uint8_t)rnd8();
    for (size_t i = 0; i < sb; i++)
        scales[i] = (uint8_t)(0x30 + rnd8() % 0x20);
    mq_fp4_weight_set_rows(&o->wf, codes, scales, 0, n);
    o->wfi = o->wf;
    mq_fp4_weight_bind_packed(&o->wfi, o->wf_packed);
    mq_fp4_weight_pack_rows(&o->wfi, 0, n);
    o->wfr = o->wf;
    mq_fp4_weight_bind_packed(&o->wfr, NULL);
    free(codes);
    free(scales);
    uint16_t *rows = xmalloc((size_t)n * k * 2);
    for (size_t i = 0; i < (size_t)n * k; i++)
        rows[i] = (uint16_t)(0x3c00 + (rnd8() & 0x7f));
    o->wb_data = xmalloc(mq_bf16_weight_packed_bytes(n, k)); /* the layout mqd's linears use */
    mq_bf16_weight_pack_rows(o->wb_data, n, k, rows, (size_t)k, 0, n);
    mq_bf16_weight_bind_packed(&o->wb, n, k, o->wb_data);
    free(rows);
}

static void free_operands(operands *o)
{
    free(o->wf_mem);
    free(o->wf_packed);
    free(o->wf_table);
    free(o->wb_data);
}

/* Activation buffers sized for the largest M and K. */
typedef struct acts {
    float *xf;    /* [M, K] FP32 source for quantization */
    uint16_t *xb; /* [M, K] BF16 */
    void *xa_mem;
    float *y;
} acts;

typedef struct quant_arg {
    mq_fp4_act *a;
    const float *x;
} quant_arg;

static void quant_job(int t, int nt, void *p)
{
    quant_arg *q = p;
    int r0 = q->a->m * t / nt, r1 = q->a->m * (t + 1) / nt;
    if (mq_fp4_act_quantize_rows(q->a, q->x, (size_t)q->a->k, r0, r1))
        abort();
}

static int reps_for(double macs)
{
    return macs > 2e10 ? 2 : macs > 2e9 ? 3 : macs > 1e8 ? 5 : 20;
}

typedef struct result {
    double fp4, fp4i, fp4r, bf16, quant;          /* wall seconds, best of reps (fp4: table form, fp4i:
                                                     index form, fp4r: without a packed copy) */
    double fp4_cpu, fp4i_cpu, fp4r_cpu, bf16_cpu; /* busy seconds (see team_run), best of reps */
} result;

static result time_shape(const operands *o, acts *A, int m, int nt, int reps)
{
    const int n = o->wf.n, k = o->wf.k;
    result r = { 1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30 };
    mq_fp4_act xa;
    mq_fp4_act_bind(&xa, m, k, A->xa_mem);
    xa.g = mq_fp4_global_scale(8.0f);
    quant_arg qa = { &xa, A->xf };
    gemm_arg ga = { .xa = &xa, .wf = &o->wf, .xb = A->xb, .wb = &o->wb, .m = m, .n = n, .y = A->y };
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        team_run(nt, quant_job, &qa);
        double t1 = now();
        ga.fmt = 0;
        double c_fp4 = team_run(nt, gemm_job, &ga);
        double t2 = now();
        ga.fmt = 1;
        double c_bf16 = team_run(nt, gemm_job, &ga);
        double t3 = now();
        ga.fmt = 0;
        ga.wf = &o->wfr;
        double c_fp4r = team_run(nt, gemm_job, &ga);
        double t4 = now();
        ga.wf = &o->wfi;
        double c_fp4i = team_run(nt, gemm_job, &ga);
        double t5 = now();
        ga.wf = &o->wf;
        if (c_fp4i < r.fp4i_cpu)
            r.fp4i_cpu = c_fp4i;
        if (t5 - t4 < r.fp4i)
            r.fp4i = t5 - t4;
        if (c_fp4r < r.fp4r_cpu)
            r.fp4r_cpu = c_fp4r;
        if (t4 - t3 < r.fp4r)
            r.fp4r = t4 - t3;
        if (c_fp4 < r.fp4_cpu)
            r.fp4_cpu = c_fp4;
        if (c_bf16 < r.bf16_cpu)
            r.bf16_cpu = c_bf16;
        if (t1 - t0 < r.quant)
            r.quant = t1 - t0;
        if (t2 - t1 < r.fp4)
            r.fp4 = t2 - t1;
        if (t3 - t2 < r.bf16)
            r.bf16 = t3 - t2;
    }
    return r;
}

/* One round of the summary phase: the 2-thread ceilings, then the kernels the closing
 * lines compare with them. Rounds alternate so every figure gets several chances to run
 * while the machine is quiet; each keeps its best. */
typedef struct summary {
    ceilings c, c_cpu;                               /* [2]: 2 threads, wall and busy time */
    double fp4[7], bf16[7], fp4_cpu[7], bf16_cpu[7]; /* 1.7B linears, M=512: best seconds */
    double fp4r_cpu[7], fp4i_cpu[7];                 /* the same without a packed copy, index form */
    double gemv, gemv_cpu;                           /* 4B layer, M=1: best seconds */
} summary;

static void keep_max(double *best, double v)
{
    if (v > *best)
        *best = v;
}
static void keep_min(double *best, double v)
{
    if (v < *best)
        *best = v;
}

static void summary_round(summary *sm, const operands *l17, const operands *l4, acts *A, const uint8_t *rbuf,
                          size_t rbytes)
{
    ceil_arg ca = { .iters = CEIL_ITERS / 4 };
    const double vnni_macs = (double)ca.iters * CHAINS * 64 * 2, bf16_macs = vnni_macs / 2;
    double t0 = now(), c = team_run(2, vnni_job, &ca);
    keep_max(&sm->c.vnni[2], vnni_macs / (now() - t0));
    keep_max(&sm->c_cpu.vnni[2], vnni_macs / c);
    t0 = now();
    c = team_run(2, bf16_job, &ca);
    keep_max(&sm->c.bf16[2], bf16_macs / (now() - t0));
    keep_max(&sm->c_cpu.bf16[2], bf16_macs / c);
    read_arg ra = { .buf = rbuf, .bytes = rbytes };
    t0 = now();
    c = team_run(2, read_job, &ra);
    keep_max(&sm->c.read[2], (double)(rbytes / 128 * 128) / (now() - t0));
    keep_max(&sm->c_cpu.read[2], (double)(rbytes / 128 * 128) / c);
    for (int i = 0; i < 7; i++) {
        result res = time_shape(&l17[i], A, 512, 2, 1);
        keep_min(&sm->fp4[i], res.fp4);
        keep_min(&sm->bf16[i], res.bf16);
        keep_min(&sm->fp4_cpu[i], res.fp4_cpu);
        keep_min(&sm->fp4r_cpu[i], res.fp4r_cpu);
        keep_min(&sm->fp4i_cpu[i], res.fp4i_cpu);
        keep_min(&sm->bf16_cpu[i], res.bf16_cpu);
    }
    double busy = 0;
    t0 = now();
    for (int i = 0; i < 7; i++) {
        gemm_arg ga = { .fmt = 1, .xb = A->xb, .wb = &l4[i].wb, .m = 1, .n = l4[i].wb.n, .y = A->y };
        busy += team_run(2, gemm_job, &ga);
    }
    keep_min(&sm->gemv, now() - t0);
    keep_min(&sm->gemv_cpu, busy);
}

/* ---- the packed NVFP4 forms side by side (`fp4-forms`, and the small-M closing line) --- */

/* How the GEMM reads table-form weights for a variant: FV_AUTO as mqd runs it (row 0 only
 * up to fp4_row0_max_rows rows), FV_TABLE the whole table, FV_ROW0 row 0 only; FV_INDEX
 * reads the index-form copy. */
enum { FV_AUTO, FV_TABLE, FV_ROW0, FV_INDEX, FV_N };

/* Busy seconds of one pass of mq_gemm_fp4 over the linears ops[0..nops) at m rows, nt
 * threads, in variant v: the activations of each linear are quantized first (not timed). */
static double fp4_forms_pass(const operands *ops, int nops, acts *A, int m, int nt, int v)
{
    const int keep = fp4_row0_max_rows;
    fp4_row0_max_rows = v == FV_TABLE ? 0 : v == FV_ROW0 ? INT_MAX : keep;
    double busy = 0;
    for (int i = 0; i < nops; i++) {
        mq_fp4_act xa;
        mq_fp4_act_bind(&xa, m, ops[i].wf.k, A->xa_mem);
        xa.g = mq_fp4_global_scale(8.0f);
        quant_arg qa = { &xa, A->xf };
        team_run(nt, quant_job, &qa);
        gemm_arg ga = {
            .fmt = 0, .xa = &xa, .wf = v == FV_INDEX ? &ops[i].wfi : &ops[i].wf, .m = m, .n = ops[i].wf.n, .y = A->y
        };
        busy += team_run(nt, gemm_job, &ga);
    }
    fp4_row0_max_rows = keep;
    return busy;
}

/* G MAC/s (busy time) of each variant in vs[0..nv) over ops at m rows: `rounds` rounds
 * that run the variants in turn, each `reps` passes in a row (so small weights are
 * cached, as when one call repeats), best pass of all. */
static void fp4_forms_rates(const operands *ops, int nops, acts *A, int m, int nt, const int *vs, int nv, int rounds,
                            int reps, double *rate)
{
    double macs = 0, best[FV_N];
    for (int i = 0; i < nops; i++)
        macs += (double)m * ops[i].wf.n * ops[i].wf.k;
    for (int j = 0; j < nv; j++)
        best[j] = 1e30;
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < nv; j++)
            for (int p = 0; p < reps; p++)
                keep_min(&best[j], fp4_forms_pass(ops, nops, A, m, nt, vs[j]));
    for (int j = 0; j < nv; j++)
        rate[j] = macs / best[j] * 1e-9;
}

/* `build/bench_kernels fp4-forms`: the packed forms at the shapes docs/design/kernels.md
 * compares them on (one thread), then a sweep of M over the Qwen3-1.7B linears (2 threads,
 * weights from DRAM) that sets fp4_row0_max_rows. */
static void fp4_forms(acts *A)
{
    static const struct {
        int m, n, k;
        const char *where;
    } sh[] = {
        { 64, 48, 256, "one chunk, L1" },
        { 256, 96, 256, "2 chunks, L1/L2" },
        { 256, 192, 256, "4 chunks, L2" },
        { 256, 768, 256, "16 chunks, L2" },
        { 256, 6144, 256, "DRAM" },
        { 512, 48, 256, "one chunk, L1" },
        { 16, 48, 2048, "4 tiles per chunk, L2" },
        { 512, 48, 2048, "x from L3, w from L2" },
    };
    static const int all[] = { FV_TABLE, FV_ROW0, FV_INDEX };
    printf("\nNVFP4 packed forms, 1 thread, busy time, G MAC/s (best pass; 4 rounds of variants in turn,\n"
           "5 passes each): table = whole table, row 0 = the same memory read as |s_w| only, index = index form\n");
    printf("%5s %5s %5s  %-22s %8s %8s %8s\n", "M", "N", "K", "where the weights are", "table", "row 0", "index");
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        operands o;
        make_operands(&o, sh[i].n, sh[i].k);
        double r[3];
        fp4_forms_rates(&o, 1, A, sh[i].m, 1, all, 3, 4, 5, r);
        printf("%5d %5d %5d  %-22s %8.1f %8.1f %8.1f\n", sh[i].m, sh[i].n, sh[i].k, sh[i].where, r[0], r[1], r[2]);
        fflush(stdout);
        free_operands(&o);
    }
    shape l[7];
    qwen3_shapes(l, "1.7B", 2048, 16, 8, 128, 6144);
    operands ops[7];
    for (int i = 0; i < 7; i++)
        make_operands(&ops[i], l[i].n, l[i].k);
    static const int Ms[] = { 4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 512 };
    for (int nt = 1; nt <= MAX_THREADS; nt++) {
        printf("\nQwen3-1.7B linears (all seven in turn, weights from DRAM), %d thread%s, busy time, G MAC/s\n"
               "(best of 4 rounds of variants in turn, 2 passes each; row0_max_rows = %d)\n",
               nt, nt > 1 ? "s" : "", fp4_row0_max_rows);
        printf("%5s %8s %8s %8s %12s %12s\n", "M", "table", "row 0", "index", "row 0/table", "index/table");
        for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++) {
            double r[3];
            fp4_forms_rates(ops, 7, A, Ms[i], nt, all, 3, 4, 2, r);
            printf("%5d %8.1f %8.1f %8.1f %12.3f %12.3f\n", Ms[i], r[0], r[1], r[2], r[1] / r[0], r[2] / r[0]);
            fflush(stdout);
        }
    }
    for (int i = 0; i < 7; i++)
        free_operands(&ops[i]);
}

/* Frees the read buffer and the activations, and stops the thread team. */
static void release(uint8_t *rbuf, acts *A)
{
    free(rbuf);
    free(A->xf);
    free(A->xb);
    free(A->xa_mem);
    free(A->y);
    team_stop();
}

int main(int argc, char **argv)
{
    mq_kernels_init();
    const int quick = getenv("MQ_BENCH_QUICK") && *getenv("MQ_BENCH_QUICK") == '1';
    const int forms = argc > 1 && !strcmp(argv[1], "fp4-forms");
    if (argc > 1 && !forms) {
        fprintf(stderr, "usage: bench_kernels [fp4-forms]\n");
        return 2;
    }
    printf("bench_kernels: ISA %s, %d threads max, %d accumulator chains per thread\n", mq_isa_name(mq_kernels_isa()),
           MAX_THREADS, CHAINS);
    if (!mq_kernels_cpu_has(MQ_ISA_AVX512)) {
        fprintf(stderr, "bench_kernels: this CPU has no AVX-512 VNNI/BF16; the ceilings need it\n");
        return 1;
    }
    team_init();
    const size_t read_bytes = (size_t)256 << 20;
    uint8_t *rbuf = xmalloc(read_bytes);
    memset(rbuf, 1, read_bytes);
    ceilings c;
    memset(&c, 0, sizeof c);
    if (!forms) {
        measure_ceilings(&c, rbuf, read_bytes);
        printf("\nceilings (best of repetitions)      1 thread     2 threads\n");
        printf("  int8 VNNI  G MAC/s              %9.1f     %9.1f\n", c.vnni[1] * 1e-9, c.vnni[2] * 1e-9);
        printf("  BF16 dot   G MAC/s              %9.1f     %9.1f\n", c.bf16[1] * 1e-9, c.bf16[2] * 1e-9);
        printf("  DRAM read  GB/s                 %9.1f     %9.1f\n", c.read[1] * 1e-9, c.read[2] * 1e-9);
    }

    shape sh[21];
    int ns = 0;
    ns += qwen3_shapes(sh + ns, "0.6B", 1024, 16, 8, 128, 3072);
    ns += qwen3_shapes(sh + ns, "1.7B", 2048, 16, 8, 128, 6144);
    ns += qwen3_shapes(sh + ns, "4B", 2560, 32, 8, 128, 9728);
    static const int Ms[] = { 1, 8, 128, 512, 2048 };
    const int maxM = 2048, maxK = 9728, maxN = 9728;
    acts A;
    A.xf = xmalloc(sizeof(float) * (size_t)maxM * maxK);
    A.xb = xmalloc(sizeof(uint16_t) * (size_t)maxM * maxK);
    A.xa_mem = xmalloc(mq_fp4_act_bytes(maxM, maxK));
    A.y = xmalloc(sizeof(float) * (size_t)maxM * maxN);
    for (size_t i = 0; i < (size_t)maxM * maxK; i++) {
        A.xf[i] = (float)((int)rnd8() - 128) / 16.0f;
        A.xb[i] = mq_f32_to_bf16(A.xf[i]);
    }
    memset(A.y, 0, sizeof(float) * (size_t)maxM * maxN);

    if (forms) {
        fp4_forms(&A);
        release(rbuf, &A);
        return 0;
    }
    if (!quick) {
        printf("\nGMAC/s = M·N·K / time; fp4: packed weights (table form), repack: without a packed copy; bf16 GB/s =\n"
               "BF16 weight bytes / time (meaningful for small M); q+prep = quantizing and preparing the\n"
               "M×K activations (mq_fp4_act_quantize_rows)\n");
        printf("%-5s %-5s %6s %6s %5s %3s %10s %10s %10s %9s %10s %9s\n", "model", "layer", "N", "K", "M", "thr",
               "fp4 GMAC/s", "repack", "bf16 GMAC/s", "fp4/bf16", "bf16 GB/s", "q+prep ms");
        double t_start = now();
        for (int i = 0; i < ns; i++) {
            const shape *s = &sh[i];
            operands o;
            make_operands(&o, s->n, s->k);
            for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                const int m = Ms[mi];
                for (int nt = 1; nt <= MAX_THREADS; nt++) {
                    double macs = (double)m * s->n * s->k;
                    result r = time_shape(&o, &A, m, nt, reps_for(macs));
                    double wbytes = (double)s->n * s->k * 2;
                    printf("%-5s %-5s %6d %6d %5d %3d %10.1f %10.1f %10.1f %9.2f %10.1f %9.3f\n", s->model, s->name,
                           s->n, s->k, m, nt, macs / r.fp4 * 1e-9, macs / r.fp4r * 1e-9, macs / r.bf16 * 1e-9,
                           r.bf16 / r.fp4, wbytes / r.bf16 * 1e-9, r.quant * 1e3);
                }
            }
            free_operands(&o);
        }
        printf("(table timed in %.1f s; each shape's weights are reused across M, so small shapes may\n"
               " run from cache at M=1; the bandwidth line below cycles through a 200 MB layer)\n",
               now() - t_start);
    }

    /* summary phase: the closing lines */
    operands l17[7], l4[7];
    for (int i = 0; i < 7; i++) {
        make_operands(&l17[i], sh[7 + i].n, sh[7 + i].k);
        make_operands(&l4[i], sh[14 + i].n, sh[14 + i].k);
    }
    summary sm;
    memset(&sm, 0, sizeof sm);
    for (int i = 0; i < 7; i++)
        sm.fp4[i] = sm.bf16[i] = sm.fp4_cpu[i] = sm.fp4r_cpu[i] = sm.fp4i_cpu[i] = sm.bf16_cpu[i] = 1e30;
    sm.gemv = sm.gemv_cpu = 1e30;
    const int rounds = quick ? 4 : 6;
    for (int r = 0; r < rounds; r++)
        summary_round(&sm, l17, l4, &A, rbuf, read_bytes);
    /* a short prompt's rows: the table form as mqd runs it against the index form */
    static const int m16[2] = { FV_AUTO, FV_INDEX };
    double r16[2];
    fp4_forms_rates(l17, 7, &A, 16, 2, m16, 2, rounds, 2, r16);
    double macs = 0, tf = 0, tb = 0, tfc = 0, tfrc = 0, tfic = 0, tbc = 0, gbytes = 0;
    for (int i = 0; i < 7; i++) {
        macs += (double)512 * l17[i].wb.n * l17[i].wb.k;
        tf += sm.fp4[i];
        tb += sm.bf16[i];
        tfc += sm.fp4_cpu[i];
        tfrc += sm.fp4r_cpu[i];
        tfic += sm.fp4i_cpu[i];
        tbc += sm.bf16_cpu[i];
        gbytes += (double)l4[i].wb.n * l4[i].wb.k * 2;
    }
    for (int i = 0; i < 7; i++) {
        free_operands(&l17[i]);
        free_operands(&l4[i]);
    }
    printf("\nsummary: %d interleaved rounds, best of each, 2 threads;  wall clock | busy time\n", rounds);
    printf("  VNNI ceiling             G MAC/s  %8.1f | %8.1f\n", sm.c.vnni[2] * 1e-9, sm.c_cpu.vnni[2] * 1e-9);
    printf("  BF16 ceiling             G MAC/s  %8.1f | %8.1f\n", sm.c.bf16[2] * 1e-9, sm.c_cpu.bf16[2] * 1e-9);
    printf("  read bandwidth           GB/s     %8.1f | %8.1f\n", sm.c.read[2] * 1e-9, sm.c_cpu.read[2] * 1e-9);
    printf("  1.7B linears M=512 NVFP4 G MAC/s  %8.1f | %8.1f\n", macs / tf * 1e-9, macs / tfc * 1e-9);
    printf("  ... index-form copy      G MAC/s           | %8.1f\n", macs / tfic * 1e-9);
    printf("  ... without packed copy  G MAC/s           | %8.1f\n", macs / tfrc * 1e-9);
    printf("  1.7B linears M=512 BF16  G MAC/s  %8.1f | %8.1f\n", macs / tb * 1e-9, macs / tbc * 1e-9);
    printf("  1.7B linears M=16 NVFP4  G MAC/s           | %8.1f (index form %.1f)\n", r16[0], r16[1]);
    printf("  4B layer GEMV M=1 (%.0f MB) GB/s %8.1f | %8.1f\n", gbytes * 1e-6, gbytes / sm.gemv * 1e-9,
           gbytes / sm.gemv_cpu * 1e-9);
    printf("  ratios by wall clock: %.3f %.3f %.3f %.3f (the closing lines use busy time)\n\n", tb / tf,
           macs / tf / sm.c.vnni[2], macs / tb / sm.c.bf16[2], gbytes / sm.gemv / sm.c.read[2]);

    release(rbuf, &A);

    printf("fp4_gemm_vs_bf16_gemm_m512: %.3f\n", tbc / tfc);
    printf("fp4_gemm_vs_vnni_ceiling: %.3f\n", macs / tfc / sm.c_cpu.vnni[2]);
    printf("bf16_gemm_vs_bf16_ceiling: %.3f\n", macs / tbc / sm.c_cpu.bf16[2]);
    printf("bf16_gemv_vs_bandwidth: %.3f\n", gbytes / sm.gemv_cpu / sm.c_cpu.read[2]);
    printf("fp4_gemm_m16_table_vs_index: %.3f\n", r16[0] / r16[1]);
    return 0;
}
