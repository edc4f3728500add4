/* kernels/layout.c — how NVFP4 and BF16 operands are laid out in caller memory.
 * Depends on nothing but libc: it only computes sizes and binds pointers.
 *
 * Sizes are ISA-independent (the largest any variant needs), so memory can be
 * sized before, and reused after, an ISA change.
 *
 * Weights are held in their canonical form only: the fast GEMMs repack a panel of
 * weight columns (unpacked int8, or BF16 pairs) into a stack buffer per call and reuse
 * it for every activation row, which costs a few percent at M >= 128 and keeps memory
 * per weight element at its minimum (NVFP4: 0.5 + 1/16 bytes; BF16: the checkpoint's 2).
 *
 * Activations carry an `aux` that mq_fp4_act_prepare_rows() fills from the codes:
 *     bytes  uint8 [m, kp]      2·value(q) + 12, in 0..24 (the unsigned operand of
 *                               vpdpbusd / vpmaddubsw; see NVFP4.md's integer route)
 *     sx     float [m, kp/16]   the E4M3 block scales as FP32
 */
#include "kernels/kernels_internal.h"

#include <string.h>

#define LINE 64

static size_t fp4_codes_bytes(int rows, int k)
{
    return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / 2), LINE);
}
static size_t fp4_scales_bytes(int rows, int k)
{
    return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / MQ_FP4_BLOCK), LINE);
}
static size_t fp4_act_bytes8(int rows, int k)
{
    return MQ_ALIGN_UP((size_t)rows * mq_fp4_pad(k), LINE);
}
static size_t fp4_act_sx_bytes(int rows, int k)
{
    return MQ_ALIGN_UP((size_t)rows * (mq_fp4_pad(k) / MQ_FP4_BLOCK) * 4, LINE);
}

size_t mq_fp4_weight_bytes(int n, int k)
{
    return fp4_codes_bytes(n, k) + fp4_scales_bytes(n, k);
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
}

void mq_fp4_weight_set_rows(mq_fp4_weight *w, const uint8_t *codes, const uint8_t *scales, int r0, int r1)
{
    const size_t cb = (size_t)w->kp / 2, sb = (size_t)w->kp / MQ_FP4_BLOCK;
    memcpy(w->codes + (size_t)r0 * cb, codes, (size_t)(r1 - r0) * cb);
    memcpy(w->scales + (size_t)r0 * sb, scales, (size_t)(r1 - r0) * sb);
}

size_t mq_fp4_act_bytes(int m, int k)
{
    return fp4_codes_bytes(m, k) + fp4_scales_bytes(m, k) + fp4_act_bytes8(m, k) + fp4_act_sx_bytes(m, k);
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

uint8_t *fp4_act_aux_bytes(const mq_fp4_act *a)
{
    return (uint8_t *)a->aux;
}

float *fp4_act_aux_sx(const mq_fp4_act *a)
{
    return (float *)((uint8_t *)a->aux + fp4_act_bytes8(a->m, a->k));
}

void mq_bf16_weight_bind(mq_bf16_weight *w, int n, int k, const uint16_t *data)
{
    w->n = n;
    w->k = k;
    w->w = data;
}
