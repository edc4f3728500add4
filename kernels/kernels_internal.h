/* kernels/kernels_internal.h — the dispatch table behind mq_kernels.h.
 *
 * One row per hot kernel; mq_kernels_init() fills it from the ISA variants
 * (ref.c, *_avx2.c, *_avx512.c). A variant may leave a slot NULL: the scalar
 * reference then serves. Only kernels/ includes this header.
 */
#ifndef MQ_KERNELS_INTERNAL_H
#define MQ_KERNELS_INTERNAL_H

#include "kernels/mq_kernels.h"

typedef struct mq_kernel_table {
    void (*f32_to_bf16_row)(const float *x, uint16_t *y, size_t n);
    void (*bf16_to_f32_row)(const uint16_t *x, float *y, size_t n);
    float (*amax_f32)(const float *x, size_t n);
    float (*amax_bf16)(const uint16_t *x, size_t n);
    int (*fp4_act_quantize_rows)(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1);
    void (*fp4_weight_prepare_rows)(mq_fp4_weight *w, int r0, int r1);
    void (*gemm_fp4)(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1);
    void (*bf16_weight_prepare_rows)(mq_bf16_weight *w, int r0, int r1);
    void (*gemm_bf16)(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                      int n1);
    void (*attention)(const mq_attn_args *a, int h0, int h1);
    void (*rmsnorm)(float *y, const float *x, const float *w, int n, float eps);
    void (*swiglu)(float *out, const float *gate, const float *up, int n);
    /* gemm module: fills mq_fp4_act.aux (see layout.c); NULL = scalar form */
    void (*fp4_act_prepare_rows)(mq_fp4_act *a, int r0, int r1);
} mq_kernel_table;

/* The active table (set once by mq_kernels_init / mq_kernels_force). */
extern mq_kernel_table mq_kt;

/* Fill the slots a variant implements; leave the others alone. One pair per module
 * so modules can grow independently: gemm_* (GEMM/GEMV, weight preparation) and
 * ops_* (conversions, quantization, attention, norms). */
void mq_kernels_fill_ref(mq_kernel_table *t);
void mq_kernels_fill_gemm_avx2(mq_kernel_table *t);
void mq_kernels_fill_gemm_avx512(mq_kernel_table *t);
void mq_kernels_fill_ops_avx2(mq_kernel_table *t);
void mq_kernels_fill_ops_avx512(mq_kernel_table *t);

/* Scalar references, callable directly by the SIMD variants for tails. */
int mq_ref_fp4_act_quantize_rows(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1);
void mq_ref_gemm_fp4(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1);
void mq_ref_gemm_bf16(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                      int n1);
void mq_ref_attention(const mq_attn_args *a, int h0, int h1);

/* layout.c: the activation aux (bytes 2·value+12 [m, kp], then FP32 scales [m, kp/16])
 * and its scalar preparation. */
uint8_t *mq_fp4_act_aux_bytes(const mq_fp4_act *a);
float *mq_fp4_act_aux_sx(const mq_fp4_act *a);
void mq_ref_fp4_act_prepare_rows(mq_fp4_act *a, int r0, int r1);

#define MQ_ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))

#endif
