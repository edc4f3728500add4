/* bench_ops — speed of the ops kernels on every ISA this CPU has, one thread:
 * NVFP4 activation quantization (the quantizer alone, and mq_fp4_act_quantize_rows
 * with the GEMM's activation preparation), FP32->BF16 rows, RMSNorm, SiLU·mul.
 *
 *   build/bench_ops
 *
 * Times are the thread's CPU time (other programs share the cores), best of 5.
 */
#include "common/clock.h"
#include "kernels/kernels_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BEST_OF(expr, out)                       \
    do {                                         \
        double best_ = 1e30;                     \
        for (int rep_ = 0; rep_ < 5; rep_++) {   \
            double t0_ = mq_thread_cpu_s();      \
            expr;                                \
            double d_ = mq_thread_cpu_s() - t0_; \
            best_ = d_ < best_ ? d_ : best_;     \
        }                                        \
        out = best_;                             \
    } while (0)

int main(void)
{
    const int m = 512, k = 2048; /* a prefill chunk of Qwen3-1.7B's hidden size */
    const size_t n = (size_t)m * k;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * k);
    uint16_t *h = malloc(2 * n);
    unsigned long long s = 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((s >> 40) & 0xffff) / 8192.0f - 4.0f;
    }
    for (int i = 0; i < k; i++)
        w[i] = 1.0f;
    void *mem = aligned_alloc(64, (mq_fp4_act_bytes(m, k) + 63) / 64 * 64);
    mq_fp4_act a;
    mq_fp4_act_bind(&a, m, k, mem);
    a.g = mq_fp4_global_scale(mq_amax_f32(x, n));
    printf("ops kernels, %d x %d floats, 1 thread, ns per element (lower is better)\n", m, k);
    printf("%-8s %12s %14s %12s %10s %10s\n", "isa", "fp4 quant", "quant+prepare", "f32->bf16", "rmsnorm", "swiglu");
    for (int isa = MQ_ISA_SCALAR; isa <= MQ_ISA_AVX512; isa++) {
        if (mq_kernels_force((mq_isa)isa))
            continue;
        double tq, tqp, tb, tr, ts;
        BEST_OF(mq_kt.fp4_act_quantize_rows(&a, x, (size_t)k, 0, m), tq);
        BEST_OF(mq_fp4_act_quantize_rows(&a, x, (size_t)k, 0, m), tqp);
        BEST_OF(mq_f32_to_bf16_row(x, h, n), tb);
        BEST_OF(for (int r = 0; r < m; r++) mq_rmsnorm(y + (size_t)r * k, x + (size_t)r * k, w, k, 1e-6f), tr);
        BEST_OF(mq_swiglu(y, x, x, (int)n), ts);
        printf("%-8s %12.3f %14.3f %12.3f %10.3f %10.3f\n", mq_isa_name((mq_isa)isa), tq / n * 1e9, tqp / n * 1e9,
               tb / n * 1e9, tr / n * 1e9, ts / n * 1e9);
    }
    free(x);
    free(y);
    free(w);
    free(h);
    free(mem);
    return 0;
}
