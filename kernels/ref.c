/* kernels/ref.c — the scalar reference (`<op>_ref`) of every dispatched kernel: the
 * specification the SIMD variants are tested against; and the public ops that have only
 * this one implementation (codecs, NVFP4 row quantizer, RoPE, softmax, top-k, sampling).
 *
 * Plain C, written for clarity. Number formats and operation order: shared/docs/NVFP4.md.
 */
#include "kernels/kernels_internal.h"
#include "kernels/nvfp4_tables.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- codecs ------------------------------------------------------------------- */

uint16_t mq_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float mq_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#define E4M3_MAX            448.0f
#define E4M3_MIN_NORMAL     0x1p-6f
#define E4M3_SUBNORMAL_STEP 0x1p-9f

uint8_t mq_f32_to_e4m3(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a < E4M3_MAX)) /* >= 448, +Inf (NaN is the caller's bug; saturate it too) */
        return sign | 0x7e;
    if (a < E4M3_MIN_NORMAL) {
        /* subnormal (or rounds up to the smallest normal: code 8 is exactly 2^-6) */
        return sign | (uint8_t)rintf(a / E4M3_SUBNORMAL_STEP);
    }
    int e;
    float f = frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    int exp = e - 1;         /* a = (1 + m/8) * 2^exp */
    int m = (int)rintf((ldexpf(f, 1) - 1.0f) * 8.0f);
    if (m == 8) {
        m = 0;
        exp++;
    }
    int biased = exp + 7;
    if (biased > 15 || (biased == 15 && m == 7)) /* above 448 after rounding: saturate */
        return sign | 0x7e;
    return sign | (uint8_t)(biased << 3) | (uint8_t)m;
}

float mq_e4m3_to_f32(uint8_t b)
{
    int e = (b >> 3) & 0xf, m = b & 7;
    float v;
    if ((b & 0x7f) == 0x7f)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (b & 0x80) ? -v : v;
}

size_t mq_e4m3_find_nan(const uint8_t *b, size_t n)
{
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7fULL, ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* (byte & 0x7f) + 1 reaches bit 7 only from 0x7f; no carries out */
        uint64_t u;
        memcpy(&u, b + i, 8);
        if (((u & low7) + ones) & high)
            break;
    }
    for (; i < n; i++)
        if (fp4_scale_is_nan(b[i]))
            return i;
    return n;
}

/* Thresholds of NVFP4.md: ties go to the even code (mantissa bit 0). */
uint8_t mq_f32_to_e2m1(float x)
{
    float a = fabsf(x);
    uint8_t c;
    if (a <= 0.25f)
        c = 0;
    else if (a < 0.75f)
        c = 1;
    else if (a <= 1.25f)
        c = 2;
    else if (a < 1.75f)
        c = 3;
    else if (a <= 2.5f)
        c = 4;
    else if (a < 3.5f)
        c = 5;
    else if (a <= 5.0f)
        c = 6;
    else
        c = 7;
    /* Negative inputs keep their sign bit even when they round to zero (code 8 = -0),
     * as the GPU's cvt.rn.satfinite.e2m1x2 does; -0.0f itself (not < 0) gives code 0.
     * Either zero decodes to 0, so the choice only shows in the code bytes. */
    return (x < 0.0f ? 8 : 0) | c;
}

float mq_e2m1_to_f32(uint8_t code)
{
    float v = nvfp4_e2m1_value[code & 7];
    return (code & 8) ? -v : v;
}

static void f32_to_bf16_row_ref(const float *x, uint16_t *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = mq_f32_to_bf16(x[i]);
}

static void bf16_to_f32_row_ref(const uint16_t *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = mq_bf16_to_f32(x[i]);
}

/* ---- NVFP4 quantization ------------------------------------------------------- */

float mq_fp4_global_scale(float amax)
{
    return amax == 0.0f ? 1.0f : MQ_FP4_GMAX / amax;
}

static float amax_f32_ref(const float *x, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return NAN;
        float a = fabsf(x[i]);
        if (a > m)
            m = a;
    }
    return m;
}

static float amax_bf16_ref(const uint16_t *x, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float v = mq_bf16_to_f32(x[i]);
        if (!isfinite(v))
            return NAN;
        if (fabsf(v) > m)
            m = fabsf(v);
    }
    return m;
}

/* One block's scale and the element multiplier `os`, in NVFP4.md's order. The SIMD
 * quantizers compute exactly these FP32 operations, so their codes are identical. */
int mq_fp4_quantize_row(const float *x, int k, float g, uint8_t *codes, uint8_t *scales)
{
    const int kp = mq_fp4_pad(k);
    if (!(g > 0.0f) || !isfinite(g))
        return -EINVAL; /* a global scale is a finite multiplier */
    const float inv_g = 1.0f / g;
    memset(codes, 0, (size_t)kp / 2);
    for (int b = 0; b < kp / MQ_FP4_BLOCK; b++) {
        float blk[MQ_FP4_BLOCK];
        float amax_b = 0.0f;
        for (int j = 0; j < MQ_FP4_BLOCK; j++) {
            int i = b * MQ_FP4_BLOCK + j;
            blk[j] = i < k ? x[i] : 0.0f;
            if (!isfinite(blk[j]))
                return -EINVAL;
            if (fabsf(blk[j]) > amax_b)
                amax_b = fabsf(blk[j]);
        }
        uint8_t s = mq_f32_to_e4m3(g * (amax_b / 6.0f)); /* divide first, then multiply */
        scales[b] = s;
        float sf = mq_e4m3_to_f32(s);
        /* Correctly rounded division; the GPU uses rcp.approx here, which can flip the
         * last bit of `os` and so change a code that sits exactly on an E2M1 tie.
         * (os overflows to Inf only for blocks below ~1e-38 under g > ~6e35, i.e. a whole
         * tensor with amax < ~4e-33; then a zero element gives 0*Inf = NaN, coded 7.) */
        float os = sf == 0.0f ? 0.0f : 1.0f / (sf * inv_g);
        for (int j = 0; j < MQ_FP4_BLOCK; j++) {
            uint8_t q = mq_f32_to_e2m1(blk[j] * os);
            int i = b * MQ_FP4_BLOCK + j;
            codes[i / 2] |= (uint8_t)(i & 1 ? q << 4 : q);
        }
    }
    return 0;
}

void mq_fp4_dequantize_row(const uint8_t *codes, const uint8_t *scales, int k, float g, float *x)
{
    for (int i = 0; i < k; i++) {
        uint8_t q = (codes[i / 2] >> (i & 1 ? 4 : 0)) & 0xf;
        x[i] = mq_e2m1_to_f32(q) * mq_e4m3_to_f32(scales[i / MQ_FP4_BLOCK]) / g;
    }
}

static int fp4_act_quantize_rows_ref(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1)
{
    return fp4_quantize_rows_with(mq_fp4_quantize_row, a, x, ldx, r0, r1);
}

/* The activation aux (layout.c): the bytes every SIMD variant must produce. */
static void fp4_act_prepare_rows_ref(mq_fp4_act *a, int r0, int r1)
{
    const int kp = a->kp, nb = kp / MQ_FP4_BLOCK;
    /* the call that ends at m also fills the padding rows of the last quad */
    const int rend = r1 == a->m ? (r1 + FP4_QUAD - 1) / FP4_QUAD * FP4_QUAD : r1;
    for (int r = r0; r < rend; r++) {
        const uint8_t *c = a->codes + (size_t)r * (kp / 2);
        for (int b = 0; b < nb; b++) {
            fp4_qblock *q = fp4_act_qblock(a, r, b);
            const int l = r % FP4_QUAD;
            const uint8_t s = r < a->m ? a->scales[(size_t)r * nb + b] : 0;
            const int sign = s & 0x80 ? -1 : 1;
            int32_t sum = 0;
            for (int e = 0; e < MQ_FP4_BLOCK; e++) {
                const int k = b * MQ_FP4_BLOCK + e;
                const uint8_t code = r < a->m ? c[k / 2] >> (k & 1 ? 4 : 0) : 0;
                q->bytes[l][e] = (int8_t)(sign * nvfp4_e2m1_twice[code & 0xf]);
                sum += q->bytes[l][e];
            }
            q->corr[l] = -NVFP4_BIAS * sum;
            fp4_qblock_set_scale(q, l, s, mq_e4m3_to_f32(s & 0x7f));
        }
    }
}

/* The packed weight form (layout.c), from the canonical arrays. */
static void fp4_weight_pack_rows_ref(mq_fp4_weight *w, int r0, int r1)
{
    const int nb = w->kp / MQ_FP4_BLOCK;
    for (int g = r0 / 16; g * 16 < r1; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *d = w->packed + ((size_t)g * nb + b) * FP4_BLOCK_BYTES(w->table);
            for (int i = 0; i < 16; i++) {
                const int row = g * 16 + i;
                const uint8_t s = row < w->n ? w->scales[(size_t)row * nb + b] : 0;
                for (int e = 0; e < MQ_FP4_BLOCK; e++) { /* k-step e/4, row i, k e%4 */
                    const int k = b * MQ_FP4_BLOCK + e;
                    const uint8_t code =
                        row < w->n ? w->codes[(size_t)row * (w->kp / 2) + k / 2] >> (k & 1 ? 4 : 0) : 0;
                    const uint8_t v = nvfp4_e2m1_biased[code & 0xf];
                    d[(e / 4) * 64 + i * 4 + e % 4] = s & 0x80 ? 2 * NVFP4_BIAS - v : v; /* sign of s folded in */
                }
                if (w->table)
                    for (int f = 0; f < 8; f++) {
                        const float t = fp4_table_entry(mq_e4m3_to_f32(s & 0x7f), f);
                        memcpy(d + FP4_PACK_SCALE + f * 64 + i * 4, &t, 4);
                    }
                else {
                    const float form = fp4_scale_index_form(s);
                    memcpy(d + FP4_PACK_SCALE + i * 4, &form, 4);
                }
            }
        }
}

static int e2m1_twice(uint8_t code)
{
    return nvfp4_e2m1_twice[code & 0xf];
}

static void gemm_fp4_ref(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    const int nb = x->kp / MQ_FP4_BLOCK;
    for (int m = 0; m < x->m; m++) {
        const float alpha = fp4_row_alpha(x, w, m, 1.0f);
        const uint8_t *xc = x->codes + (size_t)m * (x->kp / 2);
        const uint8_t *xs = x->scales + (size_t)m * nb;
        for (int n = n0; n < n1; n++) {
            const uint8_t *wc = w->codes + (size_t)n * (w->kp / 2);
            const uint8_t *ws = w->scales + (size_t)n * nb;
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                int isum = 0; /* Σ (2a)(2w): exact */
                for (int j = 0; j < MQ_FP4_BLOCK / 2; j++) {
                    uint8_t xb = xc[b * 8 + j], wb = wc[b * 8 + j];
                    isum += e2m1_twice(xb) * e2m1_twice(wb) + e2m1_twice(xb >> 4) * e2m1_twice(wb >> 4);
                }
                acc += mq_e4m3_to_f32(xs[b]) * mq_e4m3_to_f32(ws[b]) * ((float)isum * 0.25f);
            }
            y[(size_t)m * ldy + n] = acc * alpha;
        }
    }
}

/* ---- BF16 GEMM ---------------------------------------------------------------- */

static void gemm_bf16_ref(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                          int n1)
{
    for (int i = 0; i < m; i++) {
        const uint16_t *xr = x + (size_t)i * ldx;
        for (int n = n0; n < n1; n++) {
            float acc = 0.0f;
            for (int k = 0; k < w->k; k++)
                acc += mq_bf16_to_f32(xr[k]) * mq_bf16_to_f32(bf16_weight_at(w, n, k));
            y[(size_t)i * ldy + n] = acc;
        }
    }
}

static void bf16_weight_pack_rows_ref(uint16_t *dst, int n, int k, const uint16_t *src, size_t ld, int r0, int r1)
{
    const int kp = bf16_kp(k), rend = r1 == n ? (n + 15) / 16 * 16 : r1;
    for (int r = r0; r < rend; r++)
        for (int c = 0; c < kp; c++)
            dst[bf16_packed_index(r, c, kp)] = r < n && c < k ? src[(size_t)(r - r0) * ld + c] : 0;
}

void mq_bf16_weight_row(const mq_bf16_weight *w, int r, float *out)
{
    if (!w->packed) {
        bf16_to_f32_row_ref(w->w + (size_t)r * w->k, out, (size_t)w->k);
        return;
    }
    /* packed: the row's k pairs are 4 bytes every 64 */
    const uint16_t *p = w->w + bf16_packed_index(r, 0, bf16_kp(w->k));
    for (int k = 0; k < w->k; k += 2, p += 32) {
        out[k] = mq_bf16_to_f32(p[0]);
        if (k + 1 < w->k)
            out[k + 1] = mq_bf16_to_f32(p[1]);
    }
}

/* ---- attention ---------------------------------------------------------------- */

void attention_ref(const mq_attn_args *a, int h0, int h1)
{
    const int hd = a->head_dim, group = a->n_head / a->n_kv;
    for (int t = 0; t < a->n_tok; t++) {
        const int last = a->pos0 + t;
        for (int h = h0; h < h1; h++) {
            const float *q = a->q + ((size_t)t * a->n_head + h) * hd;
            float *o = a->out + ((size_t)t * a->n_head + h) * hd;
            const int kvh = h / group;
            float acc[256] = { 0 };
            float mx = -INFINITY, l = 0.0f;
            for (int p = 0; p <= last; p++) { /* online softmax, one key at a time */
                size_t off = attn_kv_off(a, p % a->block_tokens, kvh);
                const uint16_t *kr = a->k_blocks[p / a->block_tokens] + off;
                const uint16_t *vr = a->v_blocks[p / a->block_tokens] + off;
                float s = 0.0f;
                for (int d = 0; d < hd; d++)
                    s += q[d] * mq_bf16_to_f32(kr[d]);
                s *= a->scale;
                float nm = s > mx ? s : mx;
                float corr = expf(mx - nm), e = expf(s - nm);
                l = l * corr + e;
                for (int d = 0; d < hd; d++)
                    acc[d] = acc[d] * corr + e * mq_bf16_to_f32(vr[d]);
                mx = nm;
            }
            for (int d = 0; d < hd; d++)
                o[d] = acc[d] / l;
        }
    }
}

/* ---- small ops ---------------------------------------------------------------- */

static void rmsnorm_ref(float *y, const float *x, const float *w, int n, float eps)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++)
        y[i] = w[i] * (x[i] * r);
}

void mq_rope(float *x, int n_heads, int head_dim, const float *cos, const float *sin)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

void mq_rope_inv_freq(float *inv_freq, int head_dim, double theta)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf((float)theta, e);
    }
}

void mq_rope_cos_sin(const float *inv_freq, int head_dim, int pos, float *cos, float *sin)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float f = (float)pos * inv_freq[i];
        cos[i] = cosf(f);
        sin[i] = sinf(f);
    }
}

static void swiglu_ref(float *out, const float *gate, const float *up, int n)
{
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

float mq_logsumexp(const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    if (mx == -INFINITY)
        return -INFINITY; /* everything masked (or n == 0) */
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += exp((double)(x[i] - mx));
    return mx + (float)log(s);
}

float mq_softmax(float *x, int n)
{
    float lse = mq_logsumexp(x, n);
    for (int i = 0; i < n; i++)
        x[i] = expf(x[i] - lse);
    return lse;
}

static int argmax_ref(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

int mq_topk(const float *x, int n, int k, int *idx)
{
    if (k > n)
        k = n;
    if (k <= 0)
        return 0;
    int have = 0;
    for (int i = 0; i < n; i++) {
        if (have == k && !(x[i] > x[idx[k - 1]]))
            continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && x[i] > x[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
    return k;
}

void mq_add(float *y, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += x[i];
}

/* ---- sampling math ------------------------------------------------------------ */

void mq_temperature(float *x, int n, float t)
{
    for (int i = 0; i < n; i++)
        x[i] = x[i] / t;
}

int mq_topp(const float *p, int n, float top_p)
{
    double cum = 0.0;
    for (int k = 1; k <= n; k++) {
        cum += p[k - 1];
        if (cum >= (double)top_p)
            return k;
    }
    return n;
}

int mq_minp(const float *p, int n, float min_p)
{
    if (n <= 0)
        return 0;
    const float cut = min_p * p[0]; /* FP32, as transformers' MinPLogitsWarper */
    int k = 1;
    while (k < n && p[k] >= cut)
        k++;
    return k;
}

int mq_sample_cdf(const float *p, int n, double u)
{
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += p[i];
    const double target = u * total;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += p[i];
        if (cum > target)
            return i;
    }
    return n - 1;
}

void kernels_fill_ref(mq_kernel_table *t)
{
    t->f32_to_bf16_row = f32_to_bf16_row_ref;
    t->bf16_to_f32_row = bf16_to_f32_row_ref;
    t->amax_f32 = amax_f32_ref;
    t->amax_bf16 = amax_bf16_ref;
    t->fp4_act_quantize_rows = fp4_act_quantize_rows_ref;
    t->fp4_act_prepare_rows = fp4_act_prepare_rows_ref;
    t->fp4_weight_pack_rows = fp4_weight_pack_rows_ref;
    t->gemm_fp4 = gemm_fp4_ref;
    t->gemm_bf16 = gemm_bf16_ref;
    t->gemm_bf16_tiled = gemm_bf16_ref; /* one order for every m already */
    t->bf16_weight_pack_rows = bf16_weight_pack_rows_ref;
    t->attention = attention_ref;
    t->rmsnorm = rmsnorm_ref;
    t->swiglu = swiglu_ref;
    t->argmax = argmax_ref;
}
