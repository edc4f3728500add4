/* kernels/kernels_internal.h — the dispatch table behind mq_kernels.h, the names of the
 * ISA variants, and the scalar helpers several variants share. Only kernels/ (and the
 * kernel tests and benchmarks, which compare variants) include this header.
 *
 * Naming, across kernels/:
 *   mq_<op>        a public entry point, declared in mq_kernels.h. Dispatched ones are a
 *                  single line through the table in dispatch.c; the rest (codecs, RoPE,
 *                  softmax, top-k, sampling math) have one scalar implementation, in ref.c.
 *   <op>_ref       the scalar reference of a dispatched kernel (ref.c): the specification.
 *   <op>_avx2      the AVX2+FMA variant (*_avx2.c).
 *   <op>_avx512    the AVX-512 (VNNI, BF16) variant (*_avx512.c).
 *   Variants are static and reach the table through their file's fill function; the
 *   few that another file calls (a reference serving a SIMD variant's fallback) are
 *   declared below. Helpers private to one file carry no ISA suffix: the file says it.
 *
 * Files: ref.c (references, scalar-only ops), layout.c (memory layout of the operands;
 * depends on nothing), gemm_avx2.c / gemm_avx512.c (GEMM, GEMV, activation
 * preparation), ops_avx2.c / ops_avx512.c (conversions, amax, quantization, norms,
 * SiLU·mul) with attn_avx2.c / attn_avx512.c (attention), dispatch.c (CPU detection,
 * the table, the public entry points that need it). nvfp4_tables.h holds the number
 * tables; ops_simd.h the vector helpers of ops_* and attn_*.
 */
#ifndef MQ_KERNELS_INTERNAL_H
#define MQ_KERNELS_INTERNAL_H

#include "kernels/mq_kernels.h"

#include <math.h>
#include <string.h>

typedef struct mq_kernel_table {
    void (*f32_to_bf16_row)(const float *x, uint16_t *y, size_t n);
    void (*bf16_to_f32_row)(const uint16_t *x, float *y, size_t n);
    float (*amax_f32)(const float *x, size_t n);
    float (*amax_bf16)(const uint16_t *x, size_t n);
    int (*fp4_act_quantize_rows)(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1);
    /* fills mq_fp4_act.aux from codes/scales (layout.c describes it) */
    void (*fp4_act_prepare_rows)(mq_fp4_act *a, int r0, int r1);
    /* fills mq_fp4_weight.packed for rows [r0, r1) (w->packed != NULL) */
    void (*fp4_weight_pack_rows)(mq_fp4_weight *w, int r0, int r1);
    void (*gemm_fp4)(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1);
    void (*gemm_bf16)(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                      int n1);
    /* the GEMM's (tiled) summation order at every m, 1 included: mq_gemm_bf16_tiled */
    void (*gemm_bf16_tiled)(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                            int n1);
    void (*bf16_weight_pack_rows)(uint16_t *dst, int n, int k, const uint16_t *src, size_t ld, int r0, int r1);
    void (*attention)(const mq_attn_args *a, int h0, int h1);
    void (*rmsnorm)(float *y, const float *x, const float *w, int n, float eps);
    void (*swiglu)(float *out, const float *gate, const float *up, int n);
    int (*argmax)(const float *x, int n);
} mq_kernel_table;

/* The active table (set once by mq_kernels_init / mq_kernels_force). */
extern mq_kernel_table mq_kt;

/* A call of the AVX-512 GEMM on table-form weights with at most this many activation rows
 * reads only row 0 of each block's table (|s_w|) and forms s_x·s_w with a vmulps: the
 * same bits, 320 bytes per block read instead of 768 (docs/design/kernels.md). Set in
 * dispatch.c from measurements; tests and benchmarks change it to run either path. */
extern int fp4_row0_max_rows;

/* The table is filled in layers: kernels_fill_ref sets every slot, then each SIMD fill
 * function up to the chosen ISA overwrites the slots its files implement, so a slot a
 * variant does not implement keeps the one below it. gemm_* fill the GEMMs, the
 * activation preparation and the weight packing; ops_* fill the other slots, attention
 * included (the attention kernels live in attn_*.c). */
void kernels_fill_ref(mq_kernel_table *t);
void kernels_fill_gemm_avx2(mq_kernel_table *t);
void kernels_fill_gemm_avx512(mq_kernel_table *t);
void kernels_fill_ops_avx2(mq_kernel_table *t);
void kernels_fill_ops_avx512(mq_kernel_table *t);

/* References that SIMD variants call for shapes they do not handle. */
void attention_ref(const mq_attn_args *a, int h0, int h1);

/* Attention variants (attn_avx2.c, attn_avx512.c), put into the table by ops_*. */
void attention_avx2(const mq_attn_args *a, int h0, int h1);
void attention_avx512(const mq_attn_args *a, int h0, int h1);

/* layout.c: the activation aux and the packed weight block (layout.c describes both).
 * The aux interleaves rows by quads: one fp4_qblock per 4 rows and 16-element block. */
#define FP4_QUAD 4
typedef struct fp4_qblock {
    int8_t bytes[FP4_QUAD][16]; /* 2·value·sign(s) */
    int32_t corr[FP4_QUAD];     /* -12·Σ bytes */
    float sx[FP4_QUAD];         /* |s| */
    int32_t sf[FP4_QUAD];       /* 64·f of |s| = 2^e·(1 + f/8): the row of a weight table */
    float se[FP4_QUAD];         /* e (-200 for s = 0) */
} fp4_qblock;
_Static_assert(sizeof(fp4_qblock) == 128, "two cache lines per quad and block");

/* The quad-block holding row r, block b (the row is lane r % FP4_QUAD). */
static inline fp4_qblock *fp4_act_qblock(const mq_fp4_act *a, int r, int b)
{
    return (fp4_qblock *)a->aux + (size_t)(r / FP4_QUAD) * (size_t)(a->kp / MQ_FP4_BLOCK) + b;
}

#define FP4_PACK_BYTES  320 /* per 16 rows × 16 k: 256 weight bytes, 64 bytes of scale forms */
#define FP4_PACK_SCALE  256 /* offset of the scale forms (or the table) in a packed block */
#define FP4_TABLE_BYTES 768 /* the same with a table: 256 weight bytes, float [8][16] */
/* bytes of one packed 16 × 16 block in the table form (table != 0) or the index form */
#define FP4_BLOCK_BYTES(table) ((table) ? FP4_TABLE_BYTES : FP4_PACK_BYTES)

/* An E4M3 NaN code (S.1111.111). NVFP4.md: a NaN block scale is invalid data (loaders
 * refuse it: mq_e4m3_find_nan); the kernels decode it as mq_e4m3_to_f32 does, to NaN, in
 * every form below, so each output it reaches is NaN whatever the ISA or packed form. */
static inline int fp4_scale_is_nan(uint8_t s)
{
    return (s & 0x7f) == 0x7f;
}

/* |s| of an E4M3 byte s as 2^e·(1 + f/8), f in 0..7, exactly: subnormals m·2^-9 are
 * renormalised (m = 3 is 1.5·2^-8); s = 0 gives e = -200, which vscalefps turns into 0
 * for anything it scales. Not for NaN codes (the callers below handle them first). */
static inline void fp4_scale_split(uint8_t s, int *e, int *f)
{
    const uint8_t c = s & 0x7f;
    *f = 0;
    *e = -200;
    if (c >= 8) {
        *f = c & 7;
        *e = (c >> 3) - 7;
    } else if (c) {
        const int t = c >= 4 ? 2 : c >= 2 ? 1 : 0; /* floor(log2 c) */
        *f = ((c << 3) >> t) - 8;
        *e = t - 9;
    }
}

/* The index form of a weight block scale s (E4M3 byte): |s| = 2^e·(1 + f/8)
 * (fp4_scale_split), as one float whose floor is e
 * (the vscalefps exponent; -200 for s = 0, which scales anything to 0) and whose low 3
 * bits are f (the vpermps index into the activation's t8). e + 0.5 has at least 14 zero
 * low bits, so adding f moves it by a few ulp and keeps its floor. A NaN code gives NaN:
 * vscalefps by NaN is NaN. */
static inline float fp4_scale_index_form(uint8_t s)
{
    if (fp4_scale_is_nan(s))
        return NAN;
    int e, f;
    fp4_scale_split(s, &e, &f);
    const float v = (float)e + 0.5f;
    uint32_t u;
    memcpy(&u, &v, 4);
    u |= (uint32_t)f;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

/* Row l of an activation quad-block gets the scale forms of its block scale s (E4M3 byte,
 * the sign is folded into the bytes): |s| as FP32 (mq_e4m3_to_f32), and its split (for a
 * NaN code row 0 and the exponent NaN, which vscalefps turns into NaN). */
static inline void fp4_qblock_set_scale(fp4_qblock *q, int l, uint8_t s, float abs_s)
{
    int e = 0, f = 0;
    if (!fp4_scale_is_nan(s))
        fp4_scale_split(s, &e, &f);
    q->sx[l] = abs_s;
    q->sf[l] = 64 * f;
    q->se[l] = fp4_scale_is_nan(s) ? NAN : (float)e;
}

/* Entry f of a weight block scale's table: |s_w|·(1 + f/8), exact in FP32 (abs_s =
 * |s_w|, at most 4 significant bits, times a 4-bit significand). */
static inline float fp4_table_entry(float abs_s, int f)
{
    return abs_s * (1.0f + 0.125f * (float)f);
}

#define MQ_ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))

/* Packed BF16 weights (mq_kernels.h): k rounded up to even, and the index of (r, k). */
static inline int bf16_kp(int k)
{
    return (k + 1) & ~1;
}
static inline size_t bf16_packed_index(int r, int k, int kp)
{
    return ((size_t)(r / 16) * (size_t)(kp / 2) + (size_t)(k / 2)) * 32 + (size_t)(r % 16) * 2 + (size_t)(k & 1);
}

/* Element (r, k) of a BF16 weight in either layout. */
static inline uint16_t bf16_weight_at(const mq_bf16_weight *w, int r, int k)
{
    return w->packed ? w->w[bf16_packed_index(r, k, bf16_kp(w->k))] : w->w[(size_t)r * w->k + k];
}

/* ---- scalar helpers shared by several variants --------------------------------- */

/* g_x of activation row r (mq_fp4_act.row_g). */
static inline float fp4_act_row_g(const mq_fp4_act *a, int r)
{
    return a->row_g ? a->row_g[r] : a->g;
}

/* NVFP4.md's alpha of activation row r against w, times `scale` (an exact power of two
 * for kernels that sum doubled integer products). One formula for every variant. */
static inline float fp4_row_alpha(const mq_fp4_act *x, const mq_fp4_weight *w, int r, float scale)
{
    return (1.0f / fp4_act_row_g(x, r)) * (1.0f / w->g) * scale;
}

/* Quantizes rows [r0, r1) of x with one variant's row quantizer (mq_fp4_quantize_row's
 * contract); stops at the first row that holds NaN/Inf. Inlined, so the call is direct. */
typedef int (*fp4_quantize_row_fn)(const float *x, int k, float g, uint8_t *codes, uint8_t *scales);
static inline __attribute__((always_inline)) int fp4_quantize_rows_with(fp4_quantize_row_fn row, mq_fp4_act *a,
                                                                        const float *x, size_t ldx, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        int rc = row(x + (size_t)r * ldx, a->k, fp4_act_row_g(a, r), a->codes + (size_t)r * (a->kp / 2),
                     a->scales + (size_t)r * (a->kp / MQ_FP4_BLOCK));
        if (rc)
            return rc;
    }
    return 0;
}

/* The offset of key o of a block (o < block_tokens) of kv-head kvh from the block's
 * pointer (mq_attn_args: head-major blocks, [n_kv][block_tokens][head_dim]). */
static inline size_t attn_kv_off(const mq_attn_args *a, int o, int kvh)
{
    return ((size_t)kvh * (size_t)a->block_tokens + (size_t)o) * (size_t)a->head_dim;
}

/* Where the K and V rows of keys [j0, j0 + n) of kv-head kvh live in the paged cache
 * (mq_attn_args); keys at or past nkeys get `pad` (a row of zeros) instead. */
static inline void attn_kv_rows(const mq_attn_args *a, int kvh, int j0, int n, int nkeys, const uint16_t *pad,
                                const uint16_t **kr, const uint16_t **vr)
{
    int b = j0 / a->block_tokens, o = j0 % a->block_tokens;
    for (int j = 0; j < n; j++) {
        if (j0 + j < nkeys) {
            const size_t off = attn_kv_off(a, o, kvh);
            kr[j] = a->k_blocks[b] + off;
            vr[j] = a->v_blocks[b] + off;
            if (++o == a->block_tokens) {
                o = 0;
                b++;
            }
        } else {
            kr[j] = vr[j] = pad;
        }
    }
}

#endif
