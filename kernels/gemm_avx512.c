/* kernels/gemm_avx512.c — avx512 variants of the gemm kernels. Slots left alone fall back to ref.c. */
#include "kernels_internal.h"

void mq_kernels_fill_gemm_avx512(mq_kernel_table *t)
{
    (void)t;
}
