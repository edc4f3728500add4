/* kernels/dispatch.c — choosing the ISA once, and the public entry points that go
 * through the table.
 *
 * The table is filled in layers: the scalar reference first, then each SIMD
 * variant up to the chosen ISA overwrites the slots it implements.
 */
#include "kernels/kernels_internal.h"

#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

mq_kernel_table mq_kt;
/* up to 256 rows the whole table is no faster than its row 0 (`build/bench_kernels fp4-forms`) */
int fp4_row0_max_rows = 256;
static mq_isa active_isa;
static int initialised;

static int os_saves_zmm(void)
{
    unsigned a, d;
    __asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
    return (a & 0xe6) == 0xe6; /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM */
}

int mq_kernels_cpu_has(mq_isa isa)
{
    unsigned a, b, c, d;
    if (isa == MQ_ISA_SCALAR)
        return 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    unsigned b7 = b, c7 = c;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int avx2 = (b7 & bit_AVX2) && (c & bit_FMA) && (c & bit_F16C) && (c & bit_OSXSAVE);
    if (isa == MQ_ISA_AVX2)
        return avx2;
    if (!avx2 || !os_saves_zmm())
        return 0;
    int f = (b7 & bit_AVX512F) && (b7 & bit_AVX512BW) && (b7 & bit_AVX512VL) && (b7 & bit_AVX512DQ) &&
            (c7 & bit_AVX512VNNI);
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    return f && (a1 & (1u << 5)); /* AVX512_BF16 */
}

const char *mq_isa_name(mq_isa isa)
{
    static const char *names[] = { "scalar", "avx2", "avx512" };
    return (unsigned)isa < 3 ? names[isa] : "?";
}

int mq_kernels_force(mq_isa isa)
{
    if ((unsigned)isa > MQ_ISA_AVX512 || !mq_kernels_cpu_has(isa))
        return -ENOTSUP;
    mq_kernel_table t;
    memset(&t, 0, sizeof t);
    kernels_fill_ref(&t);
    if (isa >= MQ_ISA_AVX2) {
        kernels_fill_gemm_avx2(&t);
        kernels_fill_ops_avx2(&t);
    }
    if (isa >= MQ_ISA_AVX512) {
        kernels_fill_gemm_avx512(&t);
        kernels_fill_ops_avx512(&t);
    }
    mq_kt = t;
    active_isa = isa;
    /* release: a thread that sees initialised (ENSURE's acquire) sees the table */
    __atomic_store_n(&initialised, 1, __ATOMIC_RELEASE);
    return 0;
}

/* Once per process, whichever thread calls a kernel first (the loader's threads may
 * start together); an ISA forced before (tests) is kept. */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void init_from_env(void)
{
    if (__atomic_load_n(&initialised, __ATOMIC_ACQUIRE))
        return;
    mq_isa want = MQ_ISA_AVX512;
    const char *env = getenv("MQ_ISA");
    if (env && !strcmp(env, "scalar"))
        want = MQ_ISA_SCALAR;
    else if (env && !strcmp(env, "avx2"))
        want = MQ_ISA_AVX2;
    while (want > MQ_ISA_SCALAR && !mq_kernels_cpu_has(want))
        want--;
    mq_kernels_force(want);
}

mq_isa mq_kernels_init(void)
{
    pthread_once(&init_once, init_from_env);
    return active_isa;
}

mq_isa mq_kernels_isa(void)
{
    return active_isa;
}

#define ENSURE()                                              \
    do {                                                      \
        if (!__atomic_load_n(&initialised, __ATOMIC_ACQUIRE)) \
            mq_kernels_init();                                \
    } while (0)

/* ---- public entry points: one line each through the table -------------------- */

void mq_f32_to_bf16_row(const float *x, uint16_t *y, size_t n)
{
    ENSURE();
    mq_kt.f32_to_bf16_row(x, y, n);
}
void mq_bf16_to_f32_row(const uint16_t *x, float *y, size_t n)
{
    ENSURE();
    mq_kt.bf16_to_f32_row(x, y, n);
}
float mq_amax_f32(const float *x, size_t n)
{
    ENSURE();
    return mq_kt.amax_f32(x, n);
}
float mq_amax_bf16(const uint16_t *x, size_t n)
{
    ENSURE();
    return mq_kt.amax_bf16(x, n);
}

int mq_fp4_act_quantize_rows(mq_fp4_act *a, const float *x, size_t ldx, int r0, int r1)
{
    ENSURE();
    int rc = mq_kt.fp4_act_quantize_rows(a, x, ldx, r0, r1);
    if (rc == 0)
        mq_kt.fp4_act_prepare_rows(a, r0, r1); /* so callers never forget */
    return rc;
}

void mq_fp4_act_prepare_rows(mq_fp4_act *a, int r0, int r1)
{
    ENSURE();
    mq_kt.fp4_act_prepare_rows(a, r0, r1);
}

int mq_fp4_weight_quantize_rows(mq_fp4_weight *w, const float *src, size_t ld, int r0, int r1)
{
    /* The active ISA's activation quantizer is bit-exact with mq_fp4_quantize_row (the
     * specification) and several times faster; a view of rows [r0, r1) lets the weights
     * loaded from a BF16 checkpoint use it. */
    ENSURE();
    mq_fp4_act view = {
        .m = r1 - r0,
        .k = w->k,
        .kp = w->kp,
        .g = w->g,
        .codes = w->codes + (size_t)r0 * (w->kp / 2),
        .scales = w->scales + (size_t)r0 * (w->kp / MQ_FP4_BLOCK),
        .aux = NULL,
    };
    int rc = mq_kt.fp4_act_quantize_rows(&view, src, ld, 0, r1 - r0);
    if (rc == 0)
        mq_fp4_weight_pack_rows(w, r0, r1);
    return rc;
}

void mq_fp4_weight_set_rows(mq_fp4_weight *w, const uint8_t *codes, const uint8_t *scales, int r0, int r1)
{
    const size_t cb = (size_t)w->kp / 2, sb = (size_t)w->kp / MQ_FP4_BLOCK;
    memcpy(w->codes + (size_t)r0 * cb, codes, (size_t)(r1 - r0) * cb);
    memcpy(w->scales + (size_t)r0 * sb, scales, (size_t)(r1 - r0) * sb);
    mq_fp4_weight_pack_rows(w, r0, r1);
}

void mq_fp4_weight_pack_rows(mq_fp4_weight *w, int r0, int r1)
{
    ENSURE();
    if (w->packed && r0 < r1)
        mq_kt.fp4_weight_pack_rows(w, r0, r1);
}

void mq_gemm_fp4(const mq_fp4_act *x, const mq_fp4_weight *w, float *y, size_t ldy, int n0, int n1)
{
    ENSURE();
    mq_kt.gemm_fp4(x, w, y, ldy, n0, n1);
}

void mq_gemm_bf16(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0, int n1)
{
    ENSURE();
    mq_kt.gemm_bf16(x, m, ldx, w, y, ldy, n0, n1);
}

void mq_gemm_bf16_tiled(const uint16_t *x, int m, size_t ldx, const mq_bf16_weight *w, float *y, size_t ldy, int n0,
                        int n1)
{
    ENSURE();
    mq_kt.gemm_bf16_tiled(x, m, ldx, w, y, ldy, n0, n1);
}

void mq_bf16_weight_pack_rows(uint16_t *dst, int n, int k, const uint16_t *src, size_t ld, int r0, int r1)
{
    ENSURE();
    if (r0 < r1)
        mq_kt.bf16_weight_pack_rows(dst, n, k, src, ld, r0, r1);
}

int mq_bf16_weight_pack_in_place(uint16_t *data, int n, int k)
{
    if (k & 1)
        return -EINVAL;
    uint16_t *tmp = malloc((size_t)16 * (size_t)k * sizeof *tmp);
    if (!tmp)
        return -ENOMEM;
    for (int r0 = 0; r0 < n; r0 += 16) { /* group r0/16: rows [r0, r0+16) in both layouts */
        const int r1 = n - r0 < 16 ? n : r0 + 16;
        memcpy(tmp, data + (size_t)r0 * k, (size_t)(r1 - r0) * (size_t)k * sizeof *tmp);
        mq_bf16_weight_pack_rows(data, n, k, tmp, (size_t)k, r0, r1);
    }
    free(tmp);
    return 0;
}

void mq_attention(const mq_attn_args *a, int h0, int h1)
{
    ENSURE();
    mq_kt.attention(a, h0, h1);
}
void mq_rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    ENSURE();
    mq_kt.rmsnorm(y, x, w, n, eps);
}
void mq_swiglu(float *out, const float *gate, const float *up, int n)
{
    ENSURE();
    mq_kt.swiglu(out, gate, up, n);
}
int mq_argmax(const float *x, int n)
{
    ENSURE();
    return mq_kt.argmax(x, n);
}
