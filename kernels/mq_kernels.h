/* kernels/mq_kernels.h — the numeric core of mq: codecs, GEMM/GEMV, attention,
 * norms, RoPE and sampling math.
 *
 * Owns: nothing but numbers. No I/O, no threads, no allocation: callers pass memory
 * and a work range ([n0, n1) output columns, [h0, h1) heads, [r0, r1) rows) so a
 * thread pool can split one call across threads.
 *
 * Every kernel has a scalar reference (kernels/ref.c, the specification) and may have
 * AVX2+FMA and AVX-512 (VNNI, BF16) variants, chosen once by mq_kernels_init() from
 * the CPU's features; MQ_ISA=scalar|avx2|avx512 forces one (tests use it).
 * Thread rules: after mq_kernels_init() everything here is re-entrant.
 *
 * Number formats are exactly those of shared/docs/NVFP4.md.
 */
#ifndef MQ_KERNELS_H
#define MQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ISA selection ------------------------------------------------------------ */
typedef enum { MQ_ISA_SCALAR = 0, MQ_ISA_AVX2 = 1, MQ_ISA_AVX512 = 2 } mq_isa;

/* Picks the best ISA the CPU has, or $MQ_ISA if set (an unknown or unsupported value
 * falls back to the best available and is reported by mq_kernels_isa()). Idempotent. */
mq_isa mq_kernels_init(void);
/* Forces an ISA (tests, benchmarks). -ENOTSUP if this CPU cannot run it. */
int mq_kernels_force(mq_isa isa);
mq_isa mq_kernels_isa(void);
int mq_kernels_cpu_has(mq_isa isa);
const char *mq_isa_name(mq_isa isa);

/* ---- Scalar codecs (exact; identical on every ISA) ----------------------------- */
uint16_t mq_f32_to_bf16(float x); /* round to nearest even; NaN stays NaN */
float mq_bf16_to_f32(uint16_t h);
uint8_t mq_f32_to_e4m3(float x); /* E4M3 "fn": RNE, saturating to ±448, never NaN */
float mq_e4m3_to_f32(uint8_t b); /* the NaN codes 0x7f/0xff give ±NaN */
/* The index of the first E4M3 NaN code (0x7f or 0xff) in b[0, n), or n if there is none.
 * NVFP4.md: a NaN block scale is invalid data; every kernel decodes it to NaN, so a loader
 * refuses such a checkpoint rather than serve NaN outputs. */
size_t mq_e4m3_find_nan(const uint8_t *b, size_t n);
uint8_t mq_f32_to_e2m1(float x);    /* 4-bit code, RNE ties-to-even, saturating ±6 */
float mq_e2m1_to_f32(uint8_t code); /* low 4 bits used */

void mq_f32_to_bf16_row(const float *x, uint16_t *y, size_t n);
void mq_bf16_to_f32_row(const uint16_t *x, float *y, size_t n);

/* ---- NVFP4 --------------------------------------------------------------------- */
#define MQ_FP4_BLOCK 16
#define MQ_FP4_GMAX  2688.0f /* 448 (E4M3 max) * 6 (E2M1 max) */

static inline int mq_fp4_pad(int k)
{
    return (k + MQ_FP4_BLOCK - 1) / MQ_FP4_BLOCK * MQ_FP4_BLOCK;
}

/* g = 2688 / amax, or 1 when amax == 0. */
float mq_fp4_global_scale(float amax);
/* max |x| over n floats; returns NAN if any element is NaN or ±Inf. */
float mq_amax_f32(const float *x, size_t n);
float mq_amax_bf16(const uint16_t *x, size_t n);

/* Quantizes one row of k floats (padded with zeros to mq_fp4_pad(k)) with global scale g
 * into kp/2 code bytes and kp/16 E4M3 scales, in the operation order of NVFP4.md.
 * Returns 0, or -EINVAL if the row holds NaN or Inf (outputs then undefined). */
int mq_fp4_quantize_row(const float *x, int k, float g, uint8_t *codes, uint8_t *scales);
/* Inverse: value(q) * float(s_b) / g, for k elements. */
void mq_fp4_dequantize_row(const uint8_t *codes, const uint8_t *scales, int k, float g, float *x);

/* An NVFP4 weight matrix W[n, k] for mq_gemm_fp4. Memory is the caller's:
 * mq_fp4_weight_bytes() says how much, mq_fp4_weight_bind() lays the arrays out in it
 * (64-byte aligned base required). The canonical arrays (codes, scales) always hold the
 * weights. Optionally the weights also carry a packed copy for the AVX-512 GEMM, the
 * panel layout its tile reads (layout.c), in one of two forms: with each block scale in
 * an index form (1.25 bytes per weight on top of the canonical 0.5625), or with the
 * exact table of the 8 products s_w·(1 + f/8) per block scale (3 bytes per weight),
 * which saves the tile the scale product's vpermps. Without a packed copy that GEMM
 * repacks panels per call and runs slower (docs/design/kernels.md has the figures). */
typedef struct mq_fp4_weight {
    int n, k, kp;    /* rows, logical K, K padded to a multiple of 16 */
    float g;         /* global scale g_w (a multiplier: 2688 / amax) */
    uint8_t *codes;  /* [n, kp/2]  E2M1, element 2i in the low nibble */
    uint8_t *scales; /* [n, kp/16] E4M3 block scales (already multiplied by g) */
    uint8_t *packed; /* NULL, or the packed copy: kernel-private panels */
    int table;       /* 1: packed is the table form (mq_fp4_weight_bind_table) */
} mq_fp4_weight;

size_t mq_fp4_weight_bytes(int n, int k);
void mq_fp4_weight_bind(mq_fp4_weight *w, int n, int k, void *mem);
/* The packed copy: its size, and attaching it (64-byte aligned) to a bound weight before
 * its rows are set, so that quantize_rows/set_rows/pack_rows fill it too. */
size_t mq_fp4_weight_packed_bytes(int n, int k);
void mq_fp4_weight_bind_packed(mq_fp4_weight *w, void *mem);
/* The same for the table form of the packed copy (NULL mem: no packed copy). */
size_t mq_fp4_weight_table_bytes(int n, int k);
void mq_fp4_weight_bind_table(mq_fp4_weight *w, void *mem);
/* Quantizes rows [r0, r1) of src (row stride ld floats) with w->g, which the caller set
 * beforehand from the whole tensor's amax. -EINVAL on NaN/Inf. */
int mq_fp4_weight_quantize_rows(mq_fp4_weight *w, const float *src, size_t ld, int r0, int r1);
/* Takes rows [r0, r1) already quantized (checkpoint codes/scales, same layout as the
 * canonical arrays but with rows of k/2 and k/16 bytes when k is a multiple of 16). */
void mq_fp4_weight_set_rows(mq_fp4_weight *w, const uint8_t *codes, const uint8_t *scales, int r0, int r1);
/* Fills the packed copy (if any) for rows [r0, r1) from the canonical arrays: call it after
 * writing codes/scales some other way (quantize_rows and set_rows call it for you).
 * Packing works on groups of 16 rows: calls on disjoint row ranges may run at the same
 * time only if every range starts at a multiple of 16 (and ends at one, or at n). */
void mq_fp4_weight_pack_rows(mq_fp4_weight *w, int r0, int r1);

/* NVFP4 activations X[m, k], quantized at run time. Same memory rules as weights.
 * row_g (optional, the caller's memory) gives each row its own g_x: rows of different
 * sequences in one GEMM then keep each sequence's scale, so a row's result does not
 * depend on the other rows (NVFP4.md's formula per row, alpha = (1/g_x[m])·(1/g_w)). */
typedef struct mq_fp4_act {
    int m, k, kp;
    float g;            /* global scale g_x of every row (when row_g is NULL) */
    const float *row_g; /* [m] per-row g_x, or NULL (bind sets NULL) */
    uint8_t *codes;     /* [m, kp/2] */
    uint8_t *scales;    /* [m, kp/16] */
    void *aux;          /* kernel-private (the integer operands and scale forms, layout.c) */
} mq_fp4_act;

size_t mq_fp4_act_bytes(int m, int k);
void mq_fp4_act_bind(mq_fp4_act *a, int m, int k, void *mem);
/* Quantizes rows [r0, r1) of x (stride ldx) with a->g (or a->row_g[r]), set by the caller: dynamic
 * (mq_fp4_global_scale of the whole input's amax) or static (checkpoint's g_x; blocks
 * beyond it saturate). -EINVAL on NaN/Inf. */
int mq_fp4_act_quantize_rows(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1);
/* Fills a->aux for rows [r0, r1) from codes/scales (the byte form the fast GEMMs read).
 * mq_fp4_act_quantize_rows() calls it for you; call it yourself only after writing
 * codes/scales some other way. mq_gemm_fp4 reads aux on the SIMD paths, so every row
 * must be prepared before the GEMM. Re-entrant for disjoint row ranges. */
void mq_fp4_act_prepare_rows(mq_fp4_act *a, int r0, int r1);

/* Y[m, n0..n1) = X · Wᵀ per NVFP4.md's GEMM formula, FP32 out (row stride ldy).
 * The SIMD GEMMs (this and mq_gemm_bf16) pack weight panels of weights without their
 * packed form on the stack: give calling threads at least 64 KB of stack beyond their own
 * use (they take about 40 KB). */
void mq_gemm_fp4(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1);

/* ---- BF16 ---------------------------------------------------------------------- */
/* A BF16 weight matrix W[n, k] in one of two layouts:
 *   row-major  [n, k], e.g. straight from a checkpoint;
 *   packed     rows in groups of 16 and k in pairs: [ceil(n/16)][kp/2][16 rows][2] with
 *              kp = k rounded up to even, zeros in the pad rows and the pad column. The
 *              same bytes as row-major (plus the pad), in the order the AVX-512 GEMM's tile
 *              and GEMV read them: each thread's share of a GEMV is one contiguous stream.
 * Both work on every ISA; packed is the fast one on AVX-512. */
typedef struct mq_bf16_weight {
    int n, k;
    int packed;        /* 0: row-major, 1: packed */
    const uint16_t *w; /* the elements, in the layout above */
} mq_bf16_weight;

void mq_bf16_weight_bind(mq_bf16_weight *w, int n, int k, const uint16_t *data); /* row-major */
size_t mq_bf16_weight_packed_bytes(int n, int k);
void mq_bf16_weight_bind_packed(mq_bf16_weight *w, int n, int k, const uint16_t *data);
/* Writes rows [r0, r1) of a packed [n, k] matrix at dst from row-major rows (row r at
 * src + (r - r0)·ld). Works on groups of 16 rows: calls on disjoint row ranges may run at
 * the same time if every range starts at a multiple of 16; the call that ends at n also
 * zeroes the pad rows. */
void mq_bf16_weight_pack_rows(uint16_t *dst, int n, int k, const uint16_t *src, size_t ld, int r0, int r1);
/* Packs a row-major [n, k] matrix into the packed layout in place: data must hold
 * mq_bf16_weight_packed_bytes(n, k) (the rows first). Groups of 16 rows occupy the same
 * bytes in both layouts when k is even; -EINVAL when k is odd (keep it row-major then),
 * -ENOMEM without 32·k bytes of scratch. */
int mq_bf16_weight_pack_in_place(uint16_t *data, int n, int k);
/* Row r of W as FP32, either layout (a packed weight's rows, for tests and tools). */
void mq_bf16_weight_row(const mq_bf16_weight *w, int r, float *out);

/* Y[m, n0..n1) = X · Wᵀ, X given in BF16 [m, k] (stride ldx elements), FP32 accumulate.
 * m = 1..8 takes the GEMV path (decode). */
void mq_gemm_bf16(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0, int n1);
/* The same in the GEMM's summation order at every m, 1..8 included: a row's result does
 * not depend on how many rows are computed with it (prompt chunks of any length give the
 * same numbers; the GEMV's order differs from it in the last bits). */
void mq_gemm_bf16_tiled(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                        int n1);

/* ---- Attention ----------------------------------------------------------------- */
/* Causal grouped-query attention over a paged BF16 KV cache.
 * Query token i (0 <= i < n_tok) sits at absolute position pos0 + i and attends to
 * positions 0 .. pos0 + i. Blocks are head-major: position p's K row lives in
 *     k_blocks[p / block_tokens] + (kv_head * block_tokens + p % block_tokens) * head_dim
 * (V likewise), so one kv-head's keys of a block are one contiguous run (a thread that
 * reads some kv-heads streams whole runs; with the heads of a position adjacent, two
 * threads would each read every other kilobyte, which halves the memory bandwidth).
 * Head h uses kv_head = h / (n_head / n_kv). head_dim <= 256.
 * The prefill variant is tiled (online softmax, no score matrix); n_tok == 1 without
 * `prompt` is decode, which AVX-512 sums in another FP32 order (scores from K rows in
 * place). `prompt` = 1 says the rows are prompt rows: they take the prefill path at any
 * n_tok, so a prompt row's bits do not depend on the length of the chunk it came in. */
typedef struct mq_attn_args {
    const float *q; /* [n_tok, n_head, head_dim] */
    float *out;     /* [n_tok, n_head, head_dim] */
    int n_tok, pos0;
    int n_head, n_kv, head_dim;
    const uint16_t *const *k_blocks; /* per block: [n_kv, block_tokens, head_dim] BF16 */
    const uint16_t *const *v_blocks;
    int block_tokens;
    float scale; /* usually 1/sqrt(head_dim) */
    int prompt;  /* 1: prompt rows, the prefill path even when n_tok == 1 */
} mq_attn_args;

/* Computes query heads [h0, h1) for every query token.
 * Numerics: scalar and AVX2 are FP32 throughout; AVX-512 rounds Q and the softmax
 * weights to BF16 for vdpbf16ps (FP32 accumulation and softmax), ~2^-9 of max|v|.
 * Uses about 550 KiB of stack (the tile buffers) and no heap. Threads splitting one
 * call should split heads at kv-group boundaries when they can (each kv-head's K/V
 * is then read by one thread only). */
void mq_attention(const mq_attn_args *a, int h0, int h1);

/* ---- Small ops ----------------------------------------------------------------- */
/* y = x / sqrt(mean(x²) + eps) * w  (HF RMSNorm, FP32). y may alias x. */
void mq_rmsnorm(float *y, const float *x, const float *w, int n, float eps);
/* HF rotate-half RoPE on n_heads vectors of head_dim at one position:
 * cos/sin hold head_dim/2 values for that position. */
void mq_rope(float *x, int n_heads, int head_dim, const float *cos, const float *sin);
/* HF inv_freq[i] = 1 / theta^(2i / head_dim), computed in FP32 as transformers does. */
void mq_rope_inv_freq(float *inv_freq, int head_dim, double theta);
/* cos/sin of pos * inv_freq[i] for i < head_dim/2 (FP32 product, as transformers). */
void mq_rope_cos_sin(const float *inv_freq, int head_dim, int pos, float *cos, float *sin);
/* out[i] = silu(gate[i]) * up[i]; out may alias gate. */
void mq_swiglu(float *out, const float *gate, const float *up, int n);
/* In-place softmax; returns log-sum-exp of the input (for log-probs). */
float mq_softmax(float *x, int n);
float mq_logsumexp(const float *x, int n);
int mq_argmax(const float *x, int n);
/* Indices of the k largest values, largest first (ties: lower index first). Returns k'
 * = min(k, n). idx has room for k. */
int mq_topk(const float *x, int n, int k, int *idx);
void mq_add(float *y, const float *x, int n); /* y += x */

/* ---- Sampling math (scalar; engine/sampler.c composes these) -------------------
 * Probabilities are FP32, sums are taken in FP64 in index order so results do not
 * depend on the ISA. */
/* x[i] = x[i] / t (division, as transformers' TemperatureLogitsWarper); t > 0. */
void mq_temperature(float *x, int n, float t);
/* p[0..n) sorted largest first (summing to ~1): how many to keep for top-p, i.e. the
 * smallest k >= 1 with p[0] + ... + p[k-1] >= top_p (n if never). top_p >= 1 keeps n.
 * Same set as transformers' TopPLogitsWarper up to the order of FP additions. */
int mq_topp(const float *p, int n, float top_p);
/* p[0..n) sorted largest first: how many have p[i] >= min_p * p[0] (at least 1). */
int mq_minp(const float *p, int n, float min_p);
/* Inverse CDF draw: the smallest i with p[0] + ... + p[i] > u * (p[0] + ... + p[n-1]),
 * u in [0, 1). p need not be normalised; n >= 1. Returns n - 1 if rounding runs out. */
int mq_sample_cdf(const float *p, int n, double u);

#ifdef __cplusplus
}
#endif
#endif
