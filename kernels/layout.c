/* kernels/layout.c — how NVFP4 and BF16 operands are laid out in caller memory.
 *
 * Sizes are ISA-independent (the largest any variant needs), so memory can be
 * sized before, and reused after, an ISA change.
 */
#include "kernels_internal.h"

#include <string.h>

#define LINE 64

static size_t fp4_codes_bytes(int rows, int k) { return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / 2), LINE); }
static size_t fp4_scales_bytes(int rows, int k) { return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / MQ_FP4_BLOCK), LINE); }
/* Private precomputation of the fast kernels: one int32 per (row, block) for now
 * (e.g. 12·Σ2w for the VNNI offset trick). */
static size_t fp4_aux_bytes(int rows, int k) { return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / MQ_FP4_BLOCK) * 4, LINE); }

size_t mq_fp4_weight_bytes(int n, int k)
{
    return fp4_codes_bytes(n, k) + fp4_scales_bytes(n, k) + fp4_aux_bytes(n, k);
}

void mq_fp4_weight_bind(mq_fp4_weight *w, int n, int k, void *mem)
{
    uint8_t *p = mem;
    w->n = n;
    w->k = k;
    w->kp = mq_fp4_pad(k);
    w->g = 1.0f;
    w->codes = p;
    w->scales = p + fp4_codes_bytes(n, k);
    w->aux = p + fp4_codes_bytes(n, k) + fp4_scales_bytes(n, k);
}

int mq_fp4_weight_quantize_rows(mq_fp4_weight *w, const float *src, size_t ld, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        int rc = mq_fp4_quantize_row(src + (size_t)(r - r0) * ld, w->k, w->g,
                                     w->codes + (size_t)r * (w->kp / 2),
                                     w->scales + (size_t)r * (w->kp / MQ_FP4_BLOCK));
        if (rc) return rc;
    }
    mq_fp4_weight_prepare_rows(w, r0, r1);
    return 0;
}

void mq_fp4_weight_set_rows(mq_fp4_weight *w, const uint8_t *codes, const uint8_t *scales, int r0, int r1)
{
    const size_t cb = (size_t)w->kp / 2, sb = (size_t)w->kp / MQ_FP4_BLOCK;
    memcpy(w->codes + (size_t)r0 * cb, codes, (size_t)(r1 - r0) * cb);
    memcpy(w->scales + (size_t)r0 * sb, scales, (size_t)(r1 - r0) * sb);
    mq_fp4_weight_prepare_rows(w, r0, r1);
}

size_t mq_fp4_act_bytes(int m, int k)
{
    return fp4_codes_bytes(m, k) + fp4_scales_bytes(m, k) + fp4_aux_bytes(m, k);
}

void mq_fp4_act_bind(mq_fp4_act *a, int m, int k, void *mem)
{
    uint8_t *p = mem;
    a->m = m;
    a->k = k;
    a->kp = mq_fp4_pad(k);
    a->g = 1.0f;
    a->codes = p;
    a->scales = p + fp4_codes_bytes(m, k);
    a->aux = p + fp4_codes_bytes(m, k) + fp4_scales_bytes(m, k);
}

size_t mq_bf16_weight_aux_bytes(int n, int k)
{
    (void)n; (void)k;
    return 0;
}

void mq_bf16_weight_bind(mq_bf16_weight *w, int n, int k, const uint16_t *data, void *aux)
{
    w->n = n;
    w->k = k;
    w->w = data;
    w->aux = aux;
}
