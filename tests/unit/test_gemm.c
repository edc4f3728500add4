/* NVFP4 and BF16 GEMM/GEMV of every ISA this CPU has, against FP64 evaluations.
 *
 * NVFP4: Y[m,n] = alpha · Σ_b sx[m,b]·sw[n,b]·Σ_k value(qx)·value(qw) with alpha =
 * (1/g_x)·(1/g_w) in FP32 (NVFP4.md), evaluated in FP64 from the canonical codes and
 * scales; a kernel must agree to FP32 rounding: |y - y64| <= 1e-6·sqrt(K/16)·Σ_b|term_b|.
 * BF16: Σ_k x·w in FP64 from the BF16 operands; FP32 accumulation error allowed
 * 1e-6·sqrt(K)·Σ|x·w| (products of BF16 are exact in FP32).
 * NVFP4 runs without the packed weight copy and with it in either form, index or table
 * (whose bytes must not depend on the ISA that packed them, and whose results are
 * bit-identical to each other: the same exact scale products, summed in the same order). Shapes cover K not a multiple of 64 (and K = 172 padded to 176), K spanning several
 * panels, odd K (BF16), N not a multiple of 16, M = 1..9 and 17, and column sub-ranges
 * [n0, n1) whose outside must stay untouched.
 */
#include "tests/harness.h"
#include "kernels/mq_kernels.h"
#include "kernels/kernels_internal.h" /* the activation aux layout, to compare it byte for byte */
#include "kernels/nvfp4_tables.h"     /* nvfp4_e4m3_decode, against the definition */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

static const double e2m1_v[16] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6 };

static uint8_t code_at(const uint8_t *row, int k)
{
    return (row[k / 2] >> (k & 1 ? 4 : 0)) & 0xf;
}

/* A random finite E4M3 scale (no NaN codes), mostly normal, some subnormal and zero. */
static uint8_t rand_e4m3(unsigned long long *s)
{
    for (;;) {
        uint8_t b = (uint8_t)(harness_rand(s) >> 56) & 0x7f;
        if (b == 0x7f)
            continue;
        return b;
    }
}

/* Fills data from several distributions: gaussian, uniform, and gaussian with outliers. */
static void fill_floats(float *x, size_t n, unsigned long long *s, int dist)
{
    for (size_t i = 0; i < n; i++) {
        float v = dist == 0 ? harness_gauss(s) : harness_uniform(s);
        if (dist == 2 && (harness_rand(s) >> 58) == 0)
            v *= 40.0f; /* ~1/64 outliers */
        x[i] = v;
    }
}

typedef struct fp4_case {
    int m, n, k;
} fp4_case;

/* The forms of the packed copy a weight is built with. */
enum { PK_NONE, PK_INDEX, PK_TABLE };
static const char *const pk_name[] = { "", " packed", " table" };

/* Builds weights either by quantizing floats or from raw codes/scales (set_rows), with
 * the packed copy of form pk in *pmem (NULL for PK_NONE). */
static int build_weight(mq_fp4_weight *w, void **mem, void **pmem, int pk, int n, int k, int via_set_rows,
                        unsigned long long *s)
{
    *mem = harness_alloc64(mq_fp4_weight_bytes(n, k));
    *pmem = NULL;
    if (!*mem)
        return -1;
    mq_fp4_weight_bind(w, n, k, *mem);
    if (pk == PK_INDEX) {
        *pmem = harness_alloc64(mq_fp4_weight_packed_bytes(n, k));
        mq_fp4_weight_bind_packed(w, *pmem);
    } else if (pk == PK_TABLE) {
        *pmem = harness_alloc64(mq_fp4_weight_table_bytes(n, k));
        mq_fp4_weight_bind_table(w, *pmem);
    }
    const int kp = mq_fp4_pad(k);
    if (via_set_rows) {
        uint8_t *codes = malloc((size_t)n * kp / 2), *scales = malloc((size_t)n * kp / 16);
        for (size_t i = 0; i < (size_t)n * kp / 2; i++)
            codes[i] = (uint8_t)(harness_rand(s) >> 56);
        for (size_t i = 0; i < (size_t)n * kp / 16; i++)
            scales[i] = rand_e4m3(s);
        w->g = 37.5f;
        mq_fp4_weight_set_rows(w, codes, scales, 0, n / 2); /* two pieces */
        mq_fp4_weight_set_rows(w, codes + (size_t)(n / 2) * kp / 2, scales + (size_t)(n / 2) * kp / 16, n / 2, n);
        free(codes);
        free(scales);
        return 0;
    }
    float *src = malloc((size_t)n * k * sizeof(float));
    fill_floats(src, (size_t)n * k, s, (n + k) % 3);
    w->g = mq_fp4_global_scale(mq_amax_f32(src, (size_t)n * k));
    int rc = mq_fp4_weight_quantize_rows(w, src, (size_t)k, 0, n);
    free(src);
    return rc;
}

static int build_act(mq_fp4_act *a, void **mem, int m, int k, int raw, unsigned long long *s)
{
    *mem = harness_alloc64(mq_fp4_act_bytes(m, k));
    if (!*mem)
        return -1;
    mq_fp4_act_bind(a, m, k, *mem);
    const int kp = a->kp;
    if (raw) { /* codes written directly, then prepared by hand */
        for (int r = 0; r < m; r++) {
            for (int i = 0; i < kp / 2; i++) {
                uint8_t b = (uint8_t)(harness_rand(s) >> 56);
                if (2 * i >= k)
                    b = 0; /* padding stays zero */
                else if (2 * i + 1 >= k)
                    b &= 0x0f;
                a->codes[(size_t)r * kp / 2 + i] = b;
            }
            for (int b = 0; b < kp / 16; b++)
                a->scales[(size_t)r * kp / 16 + b] = rand_e4m3(s);
        }
        a->g = 0.75f;
        mq_fp4_act_prepare_rows(a, 0, m);
        return 0;
    }
    float *x = malloc((size_t)m * k * sizeof(float));
    fill_floats(x, (size_t)m * k, s, (m + 2 * k) % 3);
    a->g = mq_fp4_global_scale(mq_amax_f32(x, (size_t)m * k));
    int rc = mq_fp4_act_quantize_rows(a, x, (size_t)k, 0, m);
    free(x);
    return rc;
}

/* FP64 evaluation of NVFP4.md's formula; *mag gets Σ_b |term_b|. */
static double fp4_ref64(const mq_fp4_act *a, const mq_fp4_weight *w, int m, int n, double *mag)
{
    const int kp = a->kp, nb = kp / 16;
    const float alpha = (1.0f / (a->row_g ? a->row_g[m] : a->g)) * (1.0f / w->g);
    const uint8_t *xc = a->codes + (size_t)m * kp / 2, *wc = w->codes + (size_t)n * kp / 2;
    double sum = 0, am = 0;
    for (int b = 0; b < nb; b++) {
        double dot = 0;
        for (int j = 0; j < 16; j++)
            dot += e2m1_v[code_at(xc, b * 16 + j)] * e2m1_v[code_at(wc, b * 16 + j)];
        double t = (double)alpha * mq_e4m3_to_f32(a->scales[(size_t)m * nb + b]) *
                   mq_e4m3_to_f32(w->scales[(size_t)n * nb + b]) * dot;
        sum += t;
        am += fabs(t);
    }
    *mag = am;
    return sum;
}

static mq_isa isas[3];
static int n_isas;
static int row0_default; /* fp4_row0_max_rows as mq_gemm_fp4 runs it */

static void check_fp4_case(fp4_case c, int via_set_rows, int raw_act, int pk, unsigned long long seed)
{
    unsigned long long s = seed;
    mq_fp4_weight w;
    mq_fp4_act a;
    void *wm, *am, *pm;
    mq_kernels_force(MQ_ISA_SCALAR); /* build once; every ISA must read the same operands */
    CHECK(build_weight(&w, &wm, &pm, pk, c.n, c.k, via_set_rows, &s) == 0, "weight build");
    CHECK(build_act(&a, &am, c.m, c.k, raw_act, &s) == 0, "act build");
    const int ldy = c.n + 3;
    float *y = malloc((size_t)c.m * ldy * sizeof(float));
    double *want = malloc((size_t)c.m * c.n * sizeof(double)), *mag = malloc((size_t)c.m * c.n * sizeof(double));
    for (int m = 0; m < c.m; m++)
        for (int n = 0; n < c.n; n++)
            want[m * c.n + n] = fp4_ref64(&a, &w, m, n, &mag[m * c.n + n]);
    const double tol = 1e-6 * sqrt(fmax(1.0, a.kp / 16.0));
    for (int iv = 0; iv < 2 * n_isas; iv++) {
        const int ii = iv / 2, row0 = iv & 1; /* the table form: whole tables, then row 0 only */
        if (row0 && pk != PK_TABLE)
            continue;
        fp4_row0_max_rows = row0 ? INT_MAX : 0;
        CHECK(mq_kernels_force((mq_isa)isas[ii]) == 0, "force");
        /* the prepared aux must not depend on the ISA that prepared it */
        mq_fp4_act_prepare_rows(&a, 0, c.m);
        /* full range, then two sub-ranges split off a multiple of 16 */
        int cuts[3][2] = { { 0, c.n }, { c.n / 3, c.n }, { 0, c.n / 3 } };
        for (int r = 0; r < 3; r++) {
            int n0 = cuts[r][0], n1 = cuts[r][1];
            for (size_t i = 0; i < (size_t)c.m * ldy; i++)
                y[i] = NAN;
            mq_gemm_fp4(&a, &w, y, (size_t)ldy, n0, n1);
            int bad = 0;
            for (int m = 0; m < c.m && bad < 5; m++)
                for (int n = 0; n < ldy && bad < 5; n++) {
                    float v = y[(size_t)m * ldy + n];
                    if (n < n0 || n >= n1) {
                        CHECK(isnan(v), "%s m=%d n=%d outside [%d,%d) was written", mq_isa_name(isas[ii]), m, n, n0,
                              n1);
                        bad += !isnan(v);
                        continue;
                    }
                    double e = want[m * c.n + n], lim = tol * mag[m * c.n + n];
                    int ok = fabs((double)v - e) <= lim;
                    CHECK(ok, "%s M=%d N=%d K=%d%s%s%s%s [%d,%d) y[%d,%d]=%.9g want %.9g (|err| %.3g > %.3g)",
                          mq_isa_name(isas[ii]), c.m, c.n, c.k, via_set_rows ? " set_rows" : "",
                          raw_act ? " raw_act" : "", pk_name[pk], row0 ? " row 0" : "", n0, n1, m, n, v, e, fabs(v - e),
                          lim);
                    bad += !ok;
                }
        }
    }
    fp4_row0_max_rows = row0_default;
    free(y);
    free(want);
    free(mag);
    free(wm);
    free(pm);
    free(am);
}

static void test_fp4_gemm_shapes(void)
{
    static const fp4_case cases[] = {
        { 1, 16, 16 },   { 1, 1, 64 },     { 2, 37, 48 },   { 3, 64, 172 }, { 4, 100, 272 },
        { 5, 48, 64 },   { 7, 33, 320 },   { 8, 16, 1040 }, { 9, 70, 176 }, { 17, 50, 528 },
        { 6, 130, 96 },  { 301, 40, 288 }, /* more rows than one row block of the index form (256) */
        { 517, 37, 96 }, { 1030, 21, 64 }, /* more than one (and two) of the table form's (512) */
    };
    unsigned long long seed = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_fp4_case(cases[i], 0, 0, PK_NONE, seed + i);
        check_fp4_case(cases[i], 1, (int)(i & 1), PK_NONE, seed + 100 + i);
        check_fp4_case(cases[i], (int)(i & 1), 0, PK_INDEX, seed + 200 + i);
        check_fp4_case(cases[i], 1, 1, PK_INDEX, seed + 300 + i);
        check_fp4_case(cases[i], (int)(i & 1), 0, PK_TABLE, seed + 400 + i);
        check_fp4_case(cases[i], 1, 1, PK_TABLE, seed + 500 + i);
    }
}

/* Extreme scales: E4M3 max (448) and subnormal block scales on both sides. */
static void test_fp4_gemm_scale_extremes(void)
{
    for (int pass = 0; pass < 6; pass++) {
        unsigned long long s = 77 + pass / 3;
        const int M = 5, N = 40, K = 96, kp = 96, pk = pass % 3;
        mq_kernels_force(MQ_ISA_SCALAR);
        void *wm = harness_alloc64(mq_fp4_weight_bytes(N, K)), *am = harness_alloc64(mq_fp4_act_bytes(M, K));
        void *pm = pk == PK_TABLE   ? harness_alloc64(mq_fp4_weight_table_bytes(N, K))
                   : pk == PK_INDEX ? harness_alloc64(mq_fp4_weight_packed_bytes(N, K))
                                    : NULL;
        mq_fp4_weight w;
        mq_fp4_act a;
        mq_fp4_weight_bind(&w, N, K, wm);
        if (pk == PK_TABLE)
            mq_fp4_weight_bind_table(&w, pm);
        else
            mq_fp4_weight_bind_packed(&w, pm);
        mq_fp4_act_bind(&a, M, K, am);
        uint8_t *codes = malloc((size_t)N * kp / 2), *scales = malloc((size_t)N * kp / 16);
        for (int i = 0; i < N * kp / 2; i++)
            codes[i] = (uint8_t)(harness_rand(&s) >> 56) | 0x77; /* ±6 heavy */
        for (int i = 0; i < N * kp / 16; i++)
            scales[i] = pass / 3 ? (uint8_t)(1 + i % 7) : 0x7e;
        w.g = 3.0f;
        mq_fp4_weight_set_rows(&w, codes, scales, 0, N);
        for (int i = 0; i < M * kp / 2; i++)
            a.codes[i] = (uint8_t)(harness_rand(&s) >> 56);
        for (int i = 0; i < M * kp / 16; i++)
            a.scales[i] = pass / 3 ? 0x7e : (uint8_t)(0x80 | (i % 8)); /* subnormal, negative, zero */
        a.g = 0.001f;
        float *y = malloc(sizeof(float) * M * N);
        for (int ii = 0; ii < n_isas; ii++) {
            mq_kernels_force((mq_isa)isas[ii]);
            mq_fp4_act_prepare_rows(&a, 0, M);
            mq_gemm_fp4(&a, &w, y, N, 0, N);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double mag, e = fp4_ref64(&a, &w, m, n, &mag);
                    CHECK(fabs(y[m * N + n] - e) <= 1e-6 * sqrt(kp / 16.0) * mag, "%s pass %d y[%d,%d]=%g want %g",
                          mq_isa_name(isas[ii]), pass, m, n, y[m * N + n], e);
                }
        }
        free(y);
        free(codes);
        free(scales);
        free(wm);
        free(pm);
        free(am);
    }
}

/* Per-row g_x (mq_fp4_act.row_g): every row, quantized and multiplied inside an M-row
 * call, is bit-identical to the same row alone with g = its row_g (the property batched
 * decode of several sequences relies on), on every ISA, packed weights or not; and
 * FP64-exact as above. */
static void test_fp4_row_scales(void)
{
    unsigned long long s = 4242;
    const int M = 9, N = 70, K = 528;
    float *x = malloc(sizeof(float) * M * K), *gs = malloc(sizeof(float) * M);
    fill_floats(x, (size_t)M * K, &s, 2);
    for (int m = 0; m < M; m++) { /* rows of very different ranges, as sequences are */
        for (int k = 0; k < K; k++)
            x[(size_t)m * K + k] *= (float)(1 << (m % 5)) * 0.37f;
        gs[m] = mq_fp4_global_scale(mq_amax_f32(x + (size_t)m * K, (size_t)K));
    }
    void *am = harness_alloc64(mq_fp4_act_bytes(M, K)), *am1 = harness_alloc64(mq_fp4_act_bytes(1, K));
    float *y = malloc(sizeof(float) * M * N), *y1 = malloc(sizeof(float) * N);
    for (int pk = PK_NONE; pk <= PK_TABLE; pk++) {
        mq_kernels_force(MQ_ISA_SCALAR);
        mq_fp4_weight w;
        void *wm, *pm;
        CHECK(build_weight(&w, &wm, &pm, pk, N, K, 0, &s) == 0, "weight build");
        for (int ii = 0; ii < n_isas; ii++) {
            mq_kernels_force((mq_isa)isas[ii]);
            mq_fp4_act a, a1;
            mq_fp4_act_bind(&a, M, K, am);
            a.g = 12345.0f; /* must not be used */
            a.row_g = gs;
            CHECK(mq_fp4_act_quantize_rows(&a, x, (size_t)K, 0, M) == 0, "quantize");
            mq_gemm_fp4(&a, &w, y, N, 0, N);
            for (int m = 0; m < M; m++) {
                mq_fp4_act_bind(&a1, 1, K, am1);
                CHECK(a1.row_g == NULL, "bind clears row_g");
                a1.g = gs[m];
                CHECK(mq_fp4_act_quantize_rows(&a1, x + (size_t)m * K, (size_t)K, 0, 1) == 0, "quantize one row");
                CHECK(memcmp(a1.codes, a.codes + (size_t)m * a.kp / 2, (size_t)a.kp / 2) == 0 &&
                          memcmp(a1.scales, a.scales + (size_t)m * a.kp / 16, (size_t)a.kp / 16) == 0,
                      "%s row %d: codes with row_g differ from the row quantized alone", mq_isa_name(isas[ii]), m);
                mq_gemm_fp4(&a1, &w, y1, N, 0, N);
                CHECK(memcmp(y1, y + (size_t)m * N, sizeof(float) * N) == 0,
                      "%s%s row %d: GEMM row with row_g differs from the row alone", mq_isa_name(isas[ii]), pk_name[pk],
                      m);
                for (int n = 0; n < N; n++) {
                    double mag, e = fp4_ref64(&a, &w, m, n, &mag);
                    CHECK(fabs(y[m * N + n] - e) <= 1e-6 * sqrt(a.kp / 16.0) * mag, "%s y[%d,%d]=%g want %g",
                          mq_isa_name(isas[ii]), m, n, y[m * N + n], e);
                }
            }
        }
        free(wm);
        free(pm);
    }
    free(x);
    free(gs);
    free(y);
    free(y1);
    free(am);
    free(am1);
}

/* The activation aux is byte-identical whichever ISA prepared it. */
static void test_fp4_act_prepare_identical(void)
{
    unsigned long long s = 5;
    const int M = 3, K = 200;
    size_t bytes = mq_fp4_act_bytes(M, K);
    void *m0 = NULL, *m1 = harness_alloc64(bytes);
    mq_fp4_act a0, a1;
    mq_kernels_force(MQ_ISA_SCALAR);
    build_act(&a0, &m0, M, K, 1, &s);
    for (int ii = 0; ii < n_isas; ii++) {
        mq_kernels_force((mq_isa)isas[ii]);
        memcpy(m1, m0, bytes);
        mq_fp4_act_bind(&a1, M, K, m1);
        a1.g = a0.g;
        memset(a1.aux, 0xa5, bytes - (size_t)((uint8_t *)a1.aux - (uint8_t *)m1));
        mq_fp4_act_prepare_rows(&a1, 0, M);
        const size_t aux = (size_t)(M + FP4_QUAD - 1) / FP4_QUAD * (a0.kp / 16) * sizeof(fp4_qblock);
        CHECK(memcmp(a0.aux, a1.aux, aux) == 0, "%s: prepared aux differs from the scalar form", mq_isa_name(isas[ii]));
    }
    free(m0);
    free(m1);
}

/* The packed weight copy (either form) is byte-identical whichever ISA packed it, and
 * packing groups of rows one call at a time gives the same bytes as one call over all
 * rows. */
static void test_fp4_pack_identical(void)
{
    for (int pk = PK_INDEX; pk <= PK_TABLE; pk++) {
        unsigned long long s = 11;
        const int N = 53, K = 600; /* 4 groups, the last one partial; 38 blocks (chunks of 16 + tail) */
        mq_kernels_force(MQ_ISA_SCALAR);
        mq_fp4_weight w;
        void *wm, *pm;
        CHECK(build_weight(&w, &wm, &pm, pk, N, K, 1, &s) == 0, "weight build");
        const size_t pb = pk == PK_TABLE ? mq_fp4_weight_table_bytes(N, K) : mq_fp4_weight_packed_bytes(N, K);
        uint8_t *want = malloc(pb);
        memcpy(want, pm, pb);
        for (int ii = 0; ii < n_isas; ii++) {
            mq_kernels_force((mq_isa)isas[ii]);
            memset(pm, 0xa5, pb);
            mq_fp4_weight_pack_rows(&w, 0, 16);
            mq_fp4_weight_pack_rows(&w, 16, N);
            CHECK(memcmp(want, pm, pb) == 0, "%s%s: packed weights differ from the scalar packing",
                  mq_isa_name(isas[ii]), pk_name[pk]);
        }
        free(want);
        free(wm);
        free(pm);
    }
}

/* Every E4M3 scale's index form is exact: 2^floor(v)·(1 + (bits & 7)/8) is the decoded
 * magnitude; zero gives an exponent that scales any table entry to 0. */
static void test_fp4_scale_index_form(void)
{
    for (int c = 0; c < 256; c++) {
        const float v = fp4_scale_index_form((uint8_t)c);
        if ((c & 0x7f) == 0x7f) {
            CHECK(isnan(v), "NaN code %#x: index form %g is not NaN", c, v);
            continue;
        }
        uint32_t u;
        memcpy(&u, &v, 4);
        const int f = (int)(u & 7);
        const double mag = fabs((double)mq_e4m3_to_f32((uint8_t)c));
        if ((c & 0x7f) == 0)
            CHECK(floorf(v) <= -149 - 12, "code %#x: exponent %g does not zero", c, floorf(v));
        else
            CHECK(ldexp(1.0 + f / 8.0, (int)floorf(v)) == mag, "code %#x: 2^%g·(1+%d/8) != %g", c, floorf(v), f, mag);
    }
}

/* The table form's scale product is exact: for every pair of E4M3 magnitudes (normal,
 * subnormal, zero), entry f_x of the weight scale's table scaled by 2^e_x (the
 * activation's split, as the aux carries it) is s_x·s_w, and the entries survive the
 * BF16-free FP32 table unchanged. */
static void test_fp4_table_products(void)
{
    for (int cw = 0; cw < 127; cw++) {
        const float sw = mq_e4m3_to_f32((uint8_t)cw);
        for (int j = 0; j < 8; j++)
            CHECK((double)fp4_table_entry(sw, j) == (double)sw * (1.0 + j / 8.0), "code %#x entry %d inexact", cw, j);
        for (int cx = 0; cx < 127; cx++) {
            fp4_qblock q;
            fp4_qblock_set_scale(&q, 1, (uint8_t)(cx | 0x80), mq_e4m3_to_f32((uint8_t)cx));
            const double want = (double)sw * mq_e4m3_to_f32((uint8_t)cx);
            const double got = ldexpf(fp4_table_entry(sw, q.sf[1] / 64), (int)q.se[1]);
            CHECK(got == want && q.sf[1] % 64 == 0 && q.sx[1] == mq_e4m3_to_f32((uint8_t)cx),
                  "s_w %#x s_x %#x: table product %g != %g", cw, cx, got, want);
        }
    }
}

/* The table form, read whole or as row 0 only, gives the same bits as the index form (the
 * same exact s_x·s_w, the same order of FP32 sums) on every ISA, with column tails,
 * sub-ranges, more rows than a row block of either form, and activation scales that are
 * subnormal, negative or zero (raw activations draw every finite E4M3 code). Only the
 * AVX-512 GEMM reads the packed copy: without AVX-512 the test has nothing to compare. */
static void test_fp4_table_identical(void)
{
    if (!mq_kernels_cpu_has(MQ_ISA_AVX512))
        SKIP("this CPU has no AVX-512 VNNI/BF16: no GEMM here reads the packed copy");
    static const fp4_case cases[] = { { 9, 53, 600 }, { 301, 40, 288 }, { 5, 7, 176 }, { 517, 37, 96 } };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const fp4_case c = cases[i];
        unsigned long long s = 909 + i;
        mq_fp4_weight wt, wi;
        mq_fp4_act a;
        void *wm, *pt, *am;
        mq_kernels_force(MQ_ISA_SCALAR);
        CHECK(build_weight(&wt, &wm, &pt, PK_TABLE, c.n, c.k, 1, &s) == 0, "weight build");
        CHECK(build_act(&a, &am, c.m, c.k, 1, &s) == 0, "act build");
        void *pi = harness_alloc64(mq_fp4_weight_packed_bytes(c.n, c.k));
        wi = wt;
        mq_fp4_weight_bind_packed(&wi, pi);
        mq_fp4_weight_pack_rows(&wi, 0, c.n);
        const size_t ny = (size_t)c.m * c.n;
        float *yt = malloc(sizeof(float) * ny), *yi = malloc(sizeof(float) * ny);
        for (int iv = 0; iv < 2 * n_isas; iv++) {
            const int ii = iv / 2, row0 = iv & 1;
            mq_kernels_force((mq_isa)isas[ii]);
            fp4_row0_max_rows = row0 ? INT_MAX : 0;
            mq_fp4_act_prepare_rows(&a, 0, c.m);
            const int cuts[2][2] = { { 0, c.n }, { c.n > 5 ? 5 : 0, c.n - 1 } };
            for (int r = 0; r < 2; r++) {
                memset(yt, 0, sizeof(float) * ny);
                memset(yi, 0, sizeof(float) * ny);
                mq_gemm_fp4(&a, &wt, yt, (size_t)c.n, cuts[r][0], cuts[r][1]);
                mq_gemm_fp4(&a, &wi, yi, (size_t)c.n, cuts[r][0], cuts[r][1]);
                CHECK(memcmp(yt, yi, sizeof(float) * ny) == 0,
                      "%s M=%d N=%d K=%d [%d,%d): table form (%s) and index form differ", mq_isa_name(isas[ii]), c.m,
                      c.n, c.k, cuts[r][0], cuts[r][1], row0 ? "row 0" : "whole");
            }
        }
        fp4_row0_max_rows = row0_default;
        free(yt);
        free(yi);
        free(wm);
        free(pt);
        free(pi);
        free(am);
    }
}

/* E4M3 NaN block scales (0x7f, 0xff; NVFP4.md: invalid data, which loaders refuse with
 * mq_e4m3_find_nan) follow one rule everywhere: they decode to NaN (mq_e4m3_to_f32). Over
 * all 256 scale codes, on each ISA: the packed copy in either form is the scalar packer's
 * bytes, the activation aux the scalar preparation's, and every GEMM path (no copy, the
 * index form, the table form whole and as row 0) gives NaN exactly where the scalar
 * reference GEMM does (the rows and columns with a NaN scale) and the reference's finite
 * values elsewhere, to its FP32 rounding. */
static void test_fp4_nan_scales(void)
{
    const int N = 37, K = 256 + 40, M = 6; /* 16 + 3 blocks per row, a partial group */
    const int kp = mq_fp4_pad(K), nb = kp / 16;
    for (int c = 0; c < 256; c++) { /* the SIMD files' decoder is the definition's, bit for bit */
        const float d = nvfp4_e4m3_decode((uint8_t)c), r = mq_e4m3_to_f32((uint8_t)c);
        CHECK(memcmp(&d, &r, 4) == 0, "code %#x: nvfp4_e4m3_decode %g, mq_e4m3_to_f32 %g", c, d, r);
    }
    unsigned long long s = 2718;
    uint8_t *codes = malloc((size_t)N * kp / 2), *scales = malloc((size_t)N * nb);
    for (size_t i = 0; i < (size_t)N * kp / 2; i++)
        codes[i] = (uint8_t)(harness_rand(&s) >> 56);
    for (int i = 0; i < N * nb; i++) /* rows 0..15: every code once in blocks 0..15 */
        scales[i] = i / nb < 16 && i % nb < 16 ? (uint8_t)(i / nb * 16 + i % nb) : rand_e4m3(&s);
    scales[20 * nb + 17] = 0xff; /* and two rows past the first group */
    scales[33 * nb + 3] = 0x7f;
    CHECK(mq_e4m3_find_nan(scales, (size_t)N * nb) == (size_t)(7 * nb + 15), "first NaN code at %zu, want %d",
          mq_e4m3_find_nan(scales, (size_t)N * nb), 7 * nb + 15);
    CHECK(mq_e4m3_find_nan(scales + 16 * nb, (size_t)(N - 16) * nb) == (size_t)(4 * nb + 17),
          "NaN code past the first group");
    CHECK(mq_e4m3_find_nan(scales + 33 * nb + 4, (size_t)(N - 33) * nb - 4) == (size_t)(N - 33) * nb - 4,
          "no NaN code found where there is none");
    void *wm = harness_alloc64(mq_fp4_weight_bytes(N, K)), *am = harness_alloc64(mq_fp4_act_bytes(M, K));
    void *pi = harness_alloc64(mq_fp4_weight_packed_bytes(N, K)),
         *pt = harness_alloc64(mq_fp4_weight_table_bytes(N, K));
    const size_t pib = mq_fp4_weight_packed_bytes(N, K), ptb = mq_fp4_weight_table_bytes(N, K);
    uint8_t *want_i = malloc(pib), *want_t = malloc(ptb);
    mq_fp4_weight w, wi, wt;
    mq_fp4_act a;
    mq_kernels_force(MQ_ISA_SCALAR);
    mq_fp4_weight_bind(&w, N, K, wm);
    w.g = 2.0f;
    mq_fp4_weight_set_rows(&w, codes, scales, 0, N);
    wi = w;
    mq_fp4_weight_bind_packed(&wi, pi);
    mq_fp4_weight_pack_rows(&wi, 0, N);
    memcpy(want_i, pi, pib);
    wt = w;
    mq_fp4_weight_bind_table(&wt, pt);
    mq_fp4_weight_pack_rows(&wt, 0, N);
    memcpy(want_t, pt, ptb);
    mq_fp4_act_bind(&a, M, K, am);
    for (int r = 0; r < M; r++) {
        for (int i = 0; i < kp / 2; i++)
            a.codes[(size_t)r * kp / 2 + i] = 2 * i >= K ? 0 : (uint8_t)(harness_rand(&s) >> 56);
        for (int b = 0; b < nb; b++) /* row 1: every code in turn over blocks; the others finite */
            a.scales[(size_t)r * nb + b] = r == 1 ? (uint8_t)(b * 16 + 15) : rand_e4m3(&s);
    }
    a.g = 0.5f;
    mq_fp4_act_prepare_rows(&a, 0, M);
    const size_t auxb = (size_t)(M + FP4_QUAD - 1) / FP4_QUAD * nb * sizeof(fp4_qblock);
    uint8_t *want_aux = malloc(auxb);
    memcpy(want_aux, a.aux, auxb);
    float *want = malloc(sizeof(float) * M * N), *y = malloc(sizeof(float) * M * N);
    mq_gemm_fp4(&a, &w, want, N, 0, N); /* the scalar reference */
    int nan_rows = 0;
    for (int n = 0; n < N; n++)
        nan_rows += isnan(want[0 * N + n]);
    CHECK(nan_rows == 4 && isnan(want[0 * N + 33]) && isnan(want[1 * N + 30]),
          "reference: %d NaN columns in row 0, want 4 (weight rows 7, 15, 20, 33)", nan_rows);
    for (int ii = 0; ii < n_isas; ii++) {
        mq_kernels_force((mq_isa)isas[ii]);
        memset(pi, 0xa5, pib);
        memset(pt, 0xa5, ptb);
        mq_fp4_weight_pack_rows(&wi, 0, N);
        mq_fp4_weight_pack_rows(&wt, 0, N);
        CHECK(memcmp(pi, want_i, pib) == 0, "%s: index form with NaN scales differs from the scalar packing",
              mq_isa_name(isas[ii]));
        CHECK(memcmp(pt, want_t, ptb) == 0, "%s: table form with NaN scales differs from the scalar packing",
              mq_isa_name(isas[ii]));
        memset(a.aux, 0x5a, auxb);
        mq_fp4_act_prepare_rows(&a, 0, M);
        CHECK(memcmp(a.aux, want_aux, auxb) == 0, "%s: aux with NaN scales differs from the scalar preparation",
              mq_isa_name(isas[ii]));
        for (int path = 0; path < 4; path++) {
            const mq_fp4_weight *wp = path == 0 ? &w : path == 1 ? &wi : &wt;
            fp4_row0_max_rows = path == 3 ? INT_MAX : 0;
            mq_gemm_fp4(&a, wp, y, N, 0, N);
            int bad = 0;
            for (int i = 0; i < M * N; i++) {
                double mag, e = isnan(want[i]) ? 0 : fp4_ref64(&a, &w, i / N, i % N, &mag);
                bad += isnan(y[i]) != isnan(want[i]) ||
                       (!isnan(want[i]) && fabs((double)y[i] - e) > 1e-6 * sqrt(nb) * mag);
            }
            CHECK(bad == 0, "%s path %d: %d outputs disagree with the reference's NaN pattern or values",
                  mq_isa_name(isas[ii]), path, bad);
        }
        fp4_row0_max_rows = row0_default;
    }
    free(codes);
    free(scales);
    free(wm);
    free(am);
    free(pi);
    free(pt);
    free(want_i);
    free(want_t);
    free(want_aux);
    free(want);
    free(y);
}

/* ---- BF16 ------------------------------------------------------------------------- */

static void check_bf16_case(int M, int N, int K, unsigned long long seed)
{
    uint16_t *packed = harness_alloc64(mq_bf16_weight_packed_bytes(N, K));
    unsigned long long s = seed;
    const int ldx = K + 5, ldy = N + 2;
    uint16_t *x = malloc(sizeof(uint16_t) * (size_t)M * ldx), *wd = malloc(sizeof(uint16_t) * (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * ldx; i++)
        x[i] = mq_f32_to_bf16(harness_gauss(&s));
    for (size_t i = 0; i < (size_t)N * K; i++)
        wd[i] = mq_f32_to_bf16(harness_uniform(&s) * 0.1f);
    double *want = malloc(sizeof(double) * M * N), *mag = malloc(sizeof(double) * M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double a = 0, b = 0;
            for (int k = 0; k < K; k++) {
                double t = (double)mq_bf16_to_f32(x[(size_t)m * ldx + k]) * mq_bf16_to_f32(wd[(size_t)n * K + k]);
                a += t;
                b += fabs(t);
            }
            want[m * N + n] = a;
            mag[m * N + n] = b;
        }
    float *y = malloc(sizeof(float) * (size_t)M * ldy);
    for (int iv = 0; iv < 2 * n_isas; iv++) {
        const int ii = iv / 2, pk = iv & 1;
        mq_kernels_force((mq_isa)isas[ii]);
        mq_bf16_weight w;
        if (pk) { /* packed in two calls, the second ending at N */
            memset(packed, 0xa5, mq_bf16_weight_packed_bytes(N, K));
            mq_bf16_weight_pack_rows(packed, N, K, wd, (size_t)K, 0, N / 32 * 16);
            mq_bf16_weight_pack_rows(packed, N, K, wd + (size_t)(N / 32 * 16) * K, (size_t)K, N / 32 * 16, N);
            mq_bf16_weight_bind_packed(&w, N, K, packed);
        } else {
            mq_bf16_weight_bind(&w, N, K, wd);
        }
        int cuts[3][2] = { { 0, N }, { N / 3, N }, { 0, N / 3 } };
        for (int r = 0; r < 3; r++) {
            int n0 = cuts[r][0], n1 = cuts[r][1], bad = 0;
            for (size_t i = 0; i < (size_t)M * ldy; i++)
                y[i] = NAN;
            mq_gemm_bf16(x, M, (size_t)ldx, &w, y, (size_t)ldy, n0, n1);
            for (int m = 0; m < M && bad < 5; m++)
                for (int n = 0; n < ldy && bad < 5; n++) {
                    float v = y[(size_t)m * ldy + n];
                    if (n < n0 || n >= n1) {
                        CHECK(isnan(v), "%s m=%d n=%d outside [%d,%d) written", mq_isa_name(isas[ii]), m, n, n0, n1);
                        bad += !isnan(v);
                        continue;
                    }
                    double e = want[m * N + n], lim = 1e-6 * sqrt((double)K) * mag[m * N + n] + 1e-30;
                    int ok = fabs(v - e) <= lim;
                    CHECK(ok, "%s%s M=%d N=%d K=%d [%d,%d) y[%d,%d]=%.9g want %.9g (|err| %.3g > %.3g)",
                          mq_isa_name(isas[ii]), pk ? " packed" : "", M, N, K, n0, n1, m, n, v, e, fabs(v - e), lim);
                    bad += !ok;
                }
        }
    }
    free(x);
    free(wd);
    free(packed);
    free(want);
    free(mag);
    free(y);
}

/* The packed BF16 form is the same whichever ISA wrote it, pads included, and
 * mq_bf16_weight_row reads back every row of either layout. */
static void test_bf16_pack_identical(void)
{
    unsigned long long s = 21;
    const int N = 37, K = 71;
    uint16_t *wd = malloc(sizeof(uint16_t) * N * K);
    for (int i = 0; i < N * K; i++)
        wd[i] = mq_f32_to_bf16(harness_gauss(&s));
    const size_t pb = mq_bf16_weight_packed_bytes(N, K);
    uint16_t *want = harness_alloc64(pb), *got = harness_alloc64(pb);
    mq_kernels_force(MQ_ISA_SCALAR);
    memset(want, 0xa5, pb);
    mq_bf16_weight_pack_rows(want, N, K, wd, (size_t)K, 0, N);
    for (int ii = 0; ii < n_isas; ii++) {
        mq_kernels_force((mq_isa)isas[ii]);
        memset(got, 0x5a, pb);
        mq_bf16_weight_pack_rows(got, N, K, wd, (size_t)K, 0, 16);
        mq_bf16_weight_pack_rows(got, N, K, wd + 16 * K, (size_t)K, 16, N);
        CHECK(memcmp(want, got, pb) == 0, "%s: packed BF16 differs from the scalar packing", mq_isa_name(isas[ii]));
    }
    mq_bf16_weight wp, wr;
    mq_bf16_weight_bind_packed(&wp, N, K, want);
    mq_bf16_weight_bind(&wr, N, K, wd);
    float *a = malloc(sizeof(float) * K), *b = malloc(sizeof(float) * K);
    int bad = 0;
    for (int r = 0; r < N; r++) {
        mq_bf16_weight_row(&wp, r, a);
        mq_bf16_weight_row(&wr, r, b);
        for (int k = 0; k < K; k++)
            bad += a[k] != mq_bf16_to_f32(wd[(size_t)r * K + k]) || b[k] != a[k];
    }
    CHECK(bad == 0, "%d elements read back wrong", bad);
    /* in place: odd K refused; even K gives pack_rows' bytes */
    CHECK(mq_bf16_weight_pack_in_place(got, N, K) == -EINVAL, "in-place packing with odd K");
    const int K2 = 72;
    const size_t pb2 = mq_bf16_weight_packed_bytes(N, K2);
    uint16_t *w2 = harness_alloc64(pb2), *want2 = harness_alloc64(pb2);
    for (int i = 0; i < N * K2; i++)
        w2[i] = mq_f32_to_bf16(harness_gauss(&s));
    mq_bf16_weight_pack_rows(want2, N, K2, w2, (size_t)K2, 0, N);
    memset((uint8_t *)w2 + (size_t)N * K2 * 2, 0xa5, pb2 - (size_t)N * K2 * 2);
    CHECK(mq_bf16_weight_pack_in_place(w2, N, K2) == 0 && memcmp(w2, want2, pb2) == 0, "in-place packing differs");
    free(w2);
    free(want2);
    free(a);
    free(b);
    free(wd);
    free(want);
    free(got);
}

/* mq_gemm_bf16_tiled: a row's result is the same bits whether it is computed alone or with
 * 1..40 other rows (packed and row-major weights, every ISA), equal to mq_gemm_bf16's
 * above 8 rows (the same GEMM), and within the FP64 bound of check_bf16_case. */
static void test_bf16_tiled_rows_independent(void)
{
    const int M = 41, N = 67, K = 300;
    unsigned long long s = 77;
    uint16_t *x = malloc(sizeof(uint16_t) * M * K), *wd = malloc(sizeof(uint16_t) * N * K);
    for (int i = 0; i < M * K; i++)
        x[i] = mq_f32_to_bf16(harness_gauss(&s));
    for (int i = 0; i < N * K; i++)
        wd[i] = mq_f32_to_bf16(harness_uniform(&s) * 0.1f);
    uint16_t *packed = harness_alloc64(mq_bf16_weight_packed_bytes(N, K));
    mq_bf16_weight_pack_rows(packed, N, K, wd, (size_t)K, 0, N);
    float *all = malloc(sizeof(float) * M * N), *part = malloc(sizeof(float) * M * N);
    for (int iv = 0; iv < 2 * n_isas; iv++) {
        const int ii = iv / 2, pk = iv & 1;
        mq_kernels_force((mq_isa)isas[ii]);
        mq_bf16_weight w;
        if (pk)
            mq_bf16_weight_bind_packed(&w, N, K, packed);
        else
            mq_bf16_weight_bind(&w, N, K, wd);
        mq_gemm_bf16_tiled(x, M, (size_t)K, &w, all, (size_t)N, 0, N);
        int diff = 0;
        for (int m = 1; m <= 20; m++) /* rows [r0, r0+m) on their own, from a few starts */
            for (int r0 = 0; r0 + m <= M; r0 += 7) {
                mq_gemm_bf16_tiled(x + (size_t)r0 * K, m, (size_t)K, &w, part, (size_t)N, 0, N);
                diff += memcmp(part, all + (size_t)r0 * N, sizeof(float) * (size_t)m * N) != 0;
            }
        CHECK(diff == 0, "%s%s: %d row groups computed alone differ from the same rows among %d", mq_isa_name(isas[ii]),
              pk ? " packed" : "", diff, M);
        mq_gemm_bf16(x, M, (size_t)K, &w, part, (size_t)N, 0, N);
        CHECK(!memcmp(part, all, sizeof(float) * M * N), "%s%s: the tiled order differs from mq_gemm_bf16 at m=%d",
              mq_isa_name(isas[ii]), pk ? " packed" : "", M);
    }
    free(x);
    free(wd);
    free(packed);
    free(all);
    free(part);
}

static void test_bf16_gemv(void)
{
    static const int ks[] = { 1, 7, 32, 33, 100, 172, 600 };
    for (int m = 1; m <= 8; m++)
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
            check_bf16_case(m, 13 + 7 * m, ks[i], 1000 + m * 10 + i);
}

static void test_bf16_gemm(void)
{
    static const int shapes[][3] = {
        { 9, 16, 64 },   { 9, 37, 7 },    { 10, 70, 172 }, { 12, 64, 256 },  { 13, 100, 600 },
        { 17, 33, 513 }, { 17, 130, 96 }, { 24, 5, 31 },   { 200, 40, 101 }, /* more rows than one row block of the packed GEMM (192) */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_bf16_case(shapes[i][0], shapes[i][1], shapes[i][2], 2000 + i);
}

int main(void)
{
    mq_kernels_init();
    n_isas = harness_isas(isas);
    row0_default = fp4_row0_max_rows;
    printf("  ISAs tested:");
    for (int i = 0; i < n_isas; i++)
        printf(" %s", mq_isa_name(isas[i]));
    printf("\n");
    RUN(test_fp4_act_prepare_identical);
    RUN(test_fp4_scale_index_form);
    RUN(test_fp4_pack_identical);
    RUN(test_fp4_table_products);
    RUN(test_fp4_table_identical);
    RUN(test_fp4_gemm_shapes);
    RUN(test_fp4_gemm_scale_extremes);
    RUN(test_fp4_row_scales);
    RUN(test_fp4_nan_scales);
    RUN(test_bf16_pack_identical);
    RUN(test_bf16_gemv);
    RUN(test_bf16_gemm);
    RUN(test_bf16_tiled_rows_independent);
    return harness_done();
}
