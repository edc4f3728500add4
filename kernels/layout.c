/* kernels/layout.c — how NVFP4 and BF16 operands are laid out in caller memory.
 * Depends on nothing but libc: it only computes sizes and binds pointers.
 *
 * Sizes are ISA-independent (the largest any variant needs), so memory can be
 * sized before, and reused after, an ISA change.
 *
 * NVFP4 weights: the canonical codes and scales, and optionally (`packed`) the form the
 * AVX-512 GEMM's tile reads, built once by mq_fp4_weight_pack_rows. Per group g of 16
 * weight rows (GEMM columns) and block b of 16 k, FP4_PACK_BYTES = 320 bytes at
 * ((g·nb + b)·320):
 *     [0, 256)    uint8 [4 k-steps][16 rows][4 k]  2·value(w) + 12, in 0..24: the
 *                 unsigned operand of vpdpbusd, one zmm per k-step; a row whose block
 *                 scale is negative holds 24 - that, the negated weight
 *     [256, 320)  float [16 rows]  |s_w| in index form (fp4_scale_index_form): floor =
 *                 the exponent e, low 3 bits = the mantissa f of |s_w| = 2^e·(1 + f/8)
 * The table form (`table`) has FP4_TABLE_BYTES = 768 bytes per group and block, at
 * ((g·nb + b)·768): the same 256 weight bytes, then
 *     [256, 768)  float [8 f][16 rows]  |s_w|·(1 + f/8), exact (two 4-bit significands):
 *                 row f is s_w times the significand of an activation scale 2^e·(1 + f/8),
 *                 so s_x·s_w = vscalefps(row f, e) exactly, e and 64·f from the aux
 * Rows past n pack as weight 0 (byte 12) with scale 0. Without `packed` the AVX-512 GEMM
 * packs each chunk of weights into a stack buffer per call (index form).
 *
 * BF16 weights: row-major, or packed ([ceil(n/16)][kp/2][16][2], mq_kernels.h); the
 * element (r, k) of a packed matrix is at bf16_packed_index(r, k, kp).
 *
 * Activations carry an `aux` that mq_fp4_act_prepare_rows() fills from codes/scales:
 * rows by quads (4 rows; the last quad padded with rows of zeros), one 128-byte
 * fp4_qblock per quad and block b, at ((r/4)·nb + b)·128, so that a GEMM tile of 4 rows
 * reads its operands and scales for a block from 2 consecutive lines:
 *     bytes  int8  [4][16]  2·value(q)·sign(s_b): the signed operand of vpdpbusd /
 *                           vpmaddubsw, the sign of the block scale folded in
 *     corr   int32 [4]      -12·Σ bytes over the block: removes the +12 of the weights'
 *                           unsigned form (NVFP4.md's integer route)
 *     sx     float [4]      |s_b| as FP32 (the GEMM makes t8 = |s_b|·(1 + j/8), j = 0..7,
 *                           exact in FP32, and s_x·s_w = t8[f_w]·2^e_w, exactly)
 *     sf     int32 [4]      64·f and
 *     se     float [4]      e of |s_b| = 2^e·(1 + f/8) (fp4_scale_split): a weight table's
 *                           row and the exponent that scales it
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
static size_t fp4_act_aux_bytes(int rows, int k)
{
    return (size_t)((rows + FP4_QUAD - 1) / FP4_QUAD) * (size_t)(mq_fp4_pad(k) / MQ_FP4_BLOCK) * sizeof(fp4_qblock);
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
    w->packed = NULL;
    w->table = 0;
}

size_t mq_fp4_weight_packed_bytes(int n, int k)
{
    return (size_t)((n + 15) / 16) * (size_t)(mq_fp4_pad(k) / MQ_FP4_BLOCK) * FP4_PACK_BYTES;
}

void mq_fp4_weight_bind_packed(mq_fp4_weight *w, void *mem)
{
    w->packed = mem;
    w->table = 0;
}

size_t mq_fp4_weight_table_bytes(int n, int k)
{
    return (size_t)((n + 15) / 16) * (size_t)(mq_fp4_pad(k) / MQ_FP4_BLOCK) * FP4_TABLE_BYTES;
}

void mq_fp4_weight_bind_table(mq_fp4_weight *w, void *mem)
{
    w->packed = mem;
    w->table = mem != NULL;
}

size_t mq_fp4_act_bytes(int m, int k)
{
    return fp4_codes_bytes(m, k) + fp4_scales_bytes(m, k) + fp4_act_aux_bytes(m, k);
}

void mq_fp4_act_bind(mq_fp4_act *a, int m, int k, void *mem)
{
    uint8_t *p = mem;
    a->m = m;
    a->k = k;
    a->kp = mq_fp4_pad(k);
    a->g = 1.0f;
    a->row_g = NULL;
    a->codes = p;
    a->scales = p + fp4_codes_bytes(m, k);
    a->aux = p + fp4_codes_bytes(m, k) + fp4_scales_bytes(m, k);
}

void mq_bf16_weight_bind(mq_bf16_weight *w, int n, int k, const uint16_t *data)
{
    w->n = n;
    w->k = k;
    w->packed = 0;
    w->w = data;
}

size_t mq_bf16_weight_packed_bytes(int n, int k)
{
    return (size_t)((n + 15) / 16) * 16 * (size_t)bf16_kp(k) * 2;
}

void mq_bf16_weight_bind_packed(mq_bf16_weight *w, int n, int k, const uint16_t *data)
{
    mq_bf16_weight_bind(w, n, k, data);
    w->packed = 1;
}
