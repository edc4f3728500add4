/* kernels/ops_avx512.c — avx512 variants of the ops kernels. Slots left alone fall back to ref.c. */
#include "kernels_internal.h"

void mq_kernels_fill_ops_avx512(mq_kernel_table *t)
{
    (void)t;
}
