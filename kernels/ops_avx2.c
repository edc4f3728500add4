/* kernels/ops_avx2.c — avx2 variants of the ops kernels. Slots left alone fall back to ref.c. */
#include "kernels_internal.h"

void mq_kernels_fill_ops_avx2(mq_kernel_table *t)
{
    (void)t;
}
