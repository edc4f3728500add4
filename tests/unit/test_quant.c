/* NVFP4 quantization and BF16 codecs.
 *
 * 1. The scalar reference (ref.c, the specification) against an independent FP64
 *    re-derivation of NVFP4.md: nearest representable value by brute force over the
 *    code tables, ties to the even code, saturation.
 * 2. Every ISA this CPU has (mq_kernels_force) bit-exact against the reference on
 *    several distributions and on the edge cases: ties at every E2M1 threshold times
 *    scale, all-zero blocks, E4M3 saturation and subnormal scales, K padding, NaN/Inf.
 */
#include "tests/harness.h"
#include "kernels/mq_kernels.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- the FP64 oracle ---------------------------------------------------------- */

static double e4m3_value(int code) /* code 0..0x7e, from the format's definition */
{
    int e = (code >> 3) & 15, m = code & 7;
    return e == 0 ? m * ldexp(1.0, -9) : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
}

/* Nearest of the 127 non-negative finite codes; ties to the even code; above the
 * largest finite value saturate (E4M3 "satfinite"). */
static uint8_t e4m3_oracle(float x)
{
    double a = fabs((double)x);
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (a >= 448.0)
        return sign | 0x7e;
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c <= 0x7e; c++) {
        double d = fabs(e4m3_value(c) - a);
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return sign | (uint8_t)best;
}

static const double e2m1_tab[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };

/* Nearest E2M1 magnitude; ties to the even code (mantissa bit = code bit 0). Negative
 * inputs keep the sign bit even when they round to zero (mq's documented choice). */
static uint8_t e2m1_oracle(float x)
{
    double a = fabs((double)x);
    int best = 7; /* saturating: above 6 the answer is 6 */
    double bd = a >= 6.0 ? -1.0 : INFINITY;
    for (int c = 0; c < 8; c++) {
        double d = fabs(e2m1_tab[c] - a);
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return (x < 0 ? 8 : 0) | (uint8_t)best;
}

/* A BF16 bit pattern's value; the pattern above the largest finite one counts as 2^128,
 * the boundary that RNE overflow to infinity is measured against. */
static double bf16_bits_value(uint32_t u)
{
    if ((u & 0x7f800000u) == 0x7f800000u)
        return (u >> 31 ? -1 : 1) * ldexp(1.0, 128);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Nearest BF16 of the two neighbours (truncated and one up), ties to even. */
static uint16_t bf16_oracle(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if (isnan(x))
        return (uint16_t)((u >> 16) | 0x40);
    if (isinf(x))
        return (uint16_t)(u >> 16);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double dl = fabs((double)x - bf16_bits_value(lo)), dh = fabs(bf16_bits_value(hi) - (double)x);
    if (dl < dh || (dl == dh && ((lo >> 16) & 1) == 0))
        return (uint16_t)(lo >> 16);
    return (uint16_t)(hi >> 16);
}

/* NVFP4.md's quantizer, written from the document with the oracles above: FP32
 * arithmetic where the document prescribes it, no shared code with ref.c. */
static int quantize_oracle(const float *x, int k, float g, uint8_t *codes, uint8_t *scales)
{
    int kp = (k + 15) / 16 * 16;
    memset(codes, 0, (size_t)kp / 2);
    for (int b = 0; b < kp / 16; b++) {
        float amax = 0;
        for (int j = 0; j < 16; j++) {
            int i = b * 16 + j;
            if (i < k && (isnan(x[i]) || isinf(x[i])))
                return -EINVAL;
            if (i < k && fabsf(x[i]) > amax)
                amax = fabsf(x[i]);
        }
        volatile float sixth = amax / 6.0f; /* volatile: keep FP32 steps separate */
        volatile float sv = g * sixth;
        uint8_t s = e4m3_oracle(sv);
        scales[b] = s;
        float sf = (float)e4m3_value(s);
        volatile float ig = 1.0f / g;
        volatile float den = sf * ig;
        float os = sf == 0 ? 0 : 1.0f / den;
        for (int j = 0; j < 16; j++) {
            int i = b * 16 + j;
            volatile float v = (i < k ? x[i] : 0.0f) * os;
            uint8_t q = e2m1_oracle(v);
            codes[i / 2] |= (uint8_t)(i & 1 ? q << 4 : q);
        }
    }
    return 0;
}

/* ---- data --------------------------------------------------------------------- */

enum dist { D_UNIFORM, D_GAUSS, D_HEAVY, D_TINY, D_TIES, D_ZEROBLOCKS, D_MIXED_RANGE, D_COUNT };
static const char *dist_name[] = { "uniform", "gauss", "heavy", "tiny", "ties", "zeroblocks", "mixedrange" };

static const float e2m1_thresholds[7] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f };

/* Fills a row; for D_TIES also returns the static g that makes x*os land exactly on
 * thresholds (os is a power of two there). */
static void fill_row(float *x, int k, enum dist d, unsigned long long *s, float *g_static)
{
    *g_static = 0;
    for (int i = 0; i < k; i++) {
        float u = harness_uniform(s), gs = harness_gauss(s);
        switch (d) {
        case D_UNIFORM: x[i] = u * 3.0f; break;
        case D_GAUSS: x[i] = gs; break;
        case D_HEAVY: /* cubed gaussian plus rare big outliers */
            x[i] = gs * gs * gs;
            if ((harness_rand(s) & 63) == 0)
                x[i] *= 300.0f;
            break;
        case D_TINY: x[i] = u * 1e-6f; break;
        case D_TIES: {
            /* block b uses scale sf = 2^e: amax element 6*sf, the rest thresholds*sf, with
             * random sign and random neighbours one ulp off */
            int b = i / 16, e = (b % 18) - 9; /* 2^-9 .. 2^8: E4M3 subnormal .. normal */
            float sf = ldexpf(1.0f, e);
            int j = i % 16;
            float v = j == 0 ? 6.0f : e2m1_thresholds[(harness_rand(s) >> 7) % 7];
            v *= sf;
            unsigned r = (unsigned)(harness_rand(s) >> 20);
            if (j && (r & 3) == 1)
                v = nextafterf(v, INFINITY);
            if (j && (r & 3) == 2)
                v = nextafterf(v, 0);
            x[i] = (r & 4) ? -v : v;
            *g_static = 1.0f; /* g*(amax/6) = sf exactly, os = 1/sf */
            break;
        }
        case D_ZEROBLOCKS: x[i] = ((i / 16) % 3 == 1) ? 0.0f : gs; break;
        case D_MIXED_RANGE: /* a huge block among tiny ones: tiny blocks get E4M3 subnormal scales */
            x[i] = (i / 16 == 1) ? gs * 1e4f : gs * 1e-3f;
            break;
        default: break;
        }
    }
}

/* ---- 1. the reference against the oracle -------------------------------------- */

static void test_e4m3_vs_oracle(void)
{
    /* every code's value, the midpoints between neighbours and one ulp either side */
    for (int c = 0; c < 0x7e; c++) {
        float lo = (float)e4m3_value(c), hi = (float)e4m3_value(c + 1);
        float mid = (float)(((double)lo + hi) / 2);
        float probes[] = { lo, hi, mid, nextafterf(mid, 0), nextafterf(mid, 1000) };
        for (int p = 0; p < 5; p++)
            for (int sg = 0; sg < 2; sg++) {
                float v = sg ? -probes[p] : probes[p];
                CHECK(mq_f32_to_e4m3(v) == e4m3_oracle(v), "e4m3(%a) = %02x, oracle %02x", v, mq_f32_to_e4m3(v),
                      e4m3_oracle(v));
            }
    }
    float edges[] = {
        448.0f, 449.0f, 464.0f, 465.0f, 1e30f, INFINITY, 0x1p-10f, 0x1p-11f, 0x1.8p-10f, 0x1p-149f, 0.0f
    };
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        CHECK(mq_f32_to_e4m3(edges[i]) == e4m3_oracle(edges[i]), "e4m3(%a)", edges[i]);
    unsigned long long s = 7;
    for (int i = 0; i < 200000; i++) {
        /* random magnitudes over [2^-14, 2^10) */
        float v = ldexpf(1.0f + (harness_uniform(&s) + 1.0f) * 0.5f, (int)(harness_rand(&s) % 24) - 14);
        CHECK(mq_f32_to_e4m3(v) == e4m3_oracle(v), "e4m3(%a)", v);
    }
}

static void test_e2m1_vs_oracle(void)
{
    for (int c = 0; c < 7; c++) {
        float lo = (float)e2m1_tab[c], hi = (float)e2m1_tab[c + 1], mid = (lo + hi) / 2;
        float probes[] = { lo, hi, mid, nextafterf(mid, 0), nextafterf(mid, 10), nextafterf(lo, 10) };
        for (int p = 0; p < 6; p++)
            for (int sg = 0; sg < 2; sg++) {
                float v = sg ? -probes[p] : probes[p];
                CHECK(mq_f32_to_e2m1(v) == e2m1_oracle(v), "e2m1(%a) = %x, oracle %x", v, mq_f32_to_e2m1(v),
                      e2m1_oracle(v));
            }
    }
    float edges[] = { 6.0f, 6.5f, 1e20f, INFINITY, -INFINITY, -0.0f, 0x1p-149f, -0x1p-149f };
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        CHECK(mq_f32_to_e2m1(edges[i]) == e2m1_oracle(edges[i]), "e2m1(%a)", edges[i]);
    unsigned long long s = 11;
    for (int i = 0; i < 100000; i++) {
        float v = harness_uniform(&s) * 8.0f;
        CHECK(mq_f32_to_e2m1(v) == e2m1_oracle(v), "e2m1(%a)", v);
    }
    /* decoding: every code */
    for (int c = 0; c < 16; c++)
        CHECK(mq_e2m1_to_f32((uint8_t)c) == (float)((c & 8 ? -1 : 1) * e2m1_tab[c & 7]), "code %d", c);
}

static void test_bf16_vs_oracle(void)
{
    unsigned long long s = 3;
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)(harness_rand(&s) >> 32);
        if (i & 1)
            u = (u & 0xffff8000u) | ((i & 2) ? 0x8000u : 0x7fffu); /* near-ties */
        if ((i & 7) == 4)
            u &= 0x807fffffu; /* subnormals */
        float x;
        memcpy(&x, &u, 4);
        uint16_t got = mq_f32_to_bf16(x), want = bf16_oracle(x);
        CHECK(got == want, "bf16(%08x) = %04x, oracle %04x", u, got, want);
    }
}

static void test_quantize_ref_vs_oracle(void)
{
    unsigned long long s = 99;
    const int ks[] = { 16, 172, 1, 15, 17, 288 };
    float x[288];
    uint8_t c1[144], s1[18], c2[144], s2[18];
    for (int d = 0; d < D_COUNT; d++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int k = ks[ki];
            float gst;
            fill_row(x, k, (enum dist)d, &s, &gst);
            float amax = 0;
            for (int i = 0; i < k; i++)
                amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
            float g = gst ? gst : mq_fp4_global_scale(amax);
            int kp = mq_fp4_pad(k);
            int r1 = mq_fp4_quantize_row(x, k, g, c1, s1);
            int r2 = quantize_oracle(x, k, g, c2, s2);
            CHECK(r1 == 0 && r2 == 0, "%s k=%d rc %d %d", dist_name[d], k, r1, r2);
            CHECK(!memcmp(c1, c2, (size_t)kp / 2) && !memcmp(s1, s2, (size_t)kp / 16),
                  "%s k=%d: reference differs from the FP64 oracle", dist_name[d], k);
        }
    /* dequantization: value(q) * s / g, and the round trip error bound of the format */
    fill_row(x, 172, D_GAUSS, &s, &(float){ 0 });
    float amax = mq_amax_f32(x, 172), g = mq_fp4_global_scale(amax), y[176];
    mq_fp4_quantize_row(x, 172, g, c1, s1);
    mq_fp4_dequantize_row(c1, s1, 172, g, y);
    for (int i = 0; i < 172; i++) {
        uint8_t q = (c1[i / 2] >> (i & 1 ? 4 : 0)) & 15;
        double want = (double)mq_e2m1_to_f32(q) * mq_e4m3_to_f32(s1[i / 16]) / g;
        CHECK(fabs(y[i] - want) <= 1e-6 * fabs(want), "dequant %d", i);
        /* half a step of E2M1 at the top (1 of 6) times the block's scale, plus E4M3 error */
        double blk = mq_e4m3_to_f32(s1[i / 16]) / g;
        CHECK(fabs((double)y[i] - x[i]) <= blk * 1.0 + 1e-12, "round trip %d: %g vs %g", i, y[i], x[i]);
    }
}

/* ---- 2. every ISA against the reference ---------------------------------------- */

static void check_act_isas(const float *x, int m, int k, size_t ldx, float g, const char *what)
{
    mq_isa isas[3];
    int n = harness_isas(isas);
    size_t bytes = mq_fp4_act_bytes(m, k);
    uint8_t *want_c = malloc((size_t)m * (size_t)mq_fp4_pad(k)), *want_s = malloc((size_t)m * (size_t)mq_fp4_pad(k));
    int kp = mq_fp4_pad(k), want_rc = 0;
    for (int r = 0; r < m && !want_rc; r++)
        want_rc =
            mq_fp4_quantize_row(x + (size_t)r * ldx, k, g, want_c + (size_t)r * kp / 2, want_s + (size_t)r * kp / 16);
    for (int i = 0; i < n; i++) {
        CHECK(mq_kernels_force(isas[i]) == 0, "force %s", mq_isa_name(isas[i]));
        void *mem = harness_alloc64(bytes);
        memset(mem, 0xa5, bytes); /* poison: every byte must be written */
        mq_fp4_act a;
        mq_fp4_act_bind(&a, m, k, mem);
        a.g = g;
        int rc = mq_fp4_act_quantize_rows(&a, x, ldx, 0, m);
        CHECK(rc == want_rc, "%s %s: rc %d, want %d", what, mq_isa_name(isas[i]), rc, want_rc);
        if (!want_rc) {
            int bad = 0;
            for (int r = 0; r < m; r++)
                bad += memcmp(a.codes + (size_t)r * kp / 2, want_c + (size_t)r * kp / 2, (size_t)kp / 2) != 0 ||
                       memcmp(a.scales + (size_t)r * kp / 16, want_s + (size_t)r * kp / 16, (size_t)kp / 16) != 0;
            CHECK(!bad, "%s m=%d k=%d %s: %d rows differ from the reference", what, m, k, mq_isa_name(isas[i]), bad);
        }
        free(mem);
    }
    free(want_c);
    free(want_s);
    mq_kernels_force(isas[n - 1]);
}

/* amax of BF16 rows (the weights' global scale at load): every ISA equals a plain FP64
 * scan, over odd lengths, signs, subnormals, and with NaN/Inf anywhere giving NaN. */
static void test_amax_bf16_isas(void)
{
    mq_isa isas[3];
    int n_isa = harness_isas(isas);
    enum { N = 5000 };
    uint16_t *x = malloc(N * sizeof *x);
    uint32_t s = 12345;
    for (int t = 0; t < 60; t++) {
        size_t n = t < 40 ? (size_t)t * 7 + (size_t)(t % 3) : (size_t)(N - t);
        for (size_t i = 0; i < n; i++) {
            s = s * 1664525u + 1013904223u;
            uint16_t e = (uint16_t)(t % 4 == 0 ? (s >> 8) & 0x7f : 0x30 + ((s >> 8) % 0x20)); /* subnormals too */
            x[i] = (uint16_t)(((s >> 31) << 15) | (e << 7) | ((s >> 16) & 0x7f));
        }
        int special = t >= 50 && n > 0;
        if (special)
            x[(size_t)s % n] = t % 2 ? 0x7f80 : 0xffc1; /* +Inf or a NaN */
        double want = 0;
        for (size_t i = 0; i < n; i++) {
            float v = mq_bf16_to_f32(x[i]);
            if (fabs((double)v) > want)
                want = fabs((double)v);
        }
        for (int i = 0; i < n_isa; i++) {
            mq_kernels_force(isas[i]);
            float got = mq_amax_bf16(x, n);
            if (special)
                CHECK(isnan(got), "%s n=%zu: non-finite input gives %g, want NaN", mq_isa_name(isas[i]), n, got);
            else
                CHECK((double)got == want, "%s n=%zu: amax %.9g, want %.9g", mq_isa_name(isas[i]), n, got, want);
        }
    }
    mq_kernels_force(isas[n_isa - 1]);
    free(x);
}

static void test_quantize_isas_bitexact(void)
{
    unsigned long long s = 1234;
    const int ks[] = { 1024, 172, 16, 1, 31, 2048 + 48 };
    const int m = 6;
    for (int d = 0; d < D_COUNT; d++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int k = ks[ki];
            size_t ld = (size_t)k + 3; /* a row stride that is not the row length */
            float *x = malloc(sizeof(float) * ld * m);
            float gst = 0;
            for (int r = 0; r < m; r++)
                fill_row(x + r * ld, k, (enum dist)d, &s, &gst);
            float amax = 0;
            for (int r = 0; r < m; r++) {
                float a = mq_amax_f32(x + r * ld, (size_t)k);
                amax = a > amax ? a : amax;
            }
            char what[64];
            snprintf(what, sizeof what, "%s dynamic", dist_name[d]);
            check_act_isas(x, m, k, ld, gst ? gst : mq_fp4_global_scale(amax), what);
            /* static scale calibrated on a tenth of the range: blocks saturate (448, ±6) */
            snprintf(what, sizeof what, "%s static-saturating", dist_name[d]);
            check_act_isas(x, m, k, ld, amax > 0 ? mq_fp4_global_scale(amax / 10) : 1.0f, what);
            free(x);
        }
}

/* Weights quantized at load go through the same fast quantizers: every ISA gives the
 * reference's codes, for a row range in the middle of the matrix. */
static void test_weight_quantize_isas(void)
{
    const int n = 9, k = 172, r0 = 2, r1 = 8;
    unsigned long long s = 4242;
    float *x = malloc(sizeof(float) * n * k);
    for (int i = 0; i < n * k; i++)
        x[i] = harness_gauss(&s) * ((i % 29) ? 1.0f : 50.0f);
    const float g = mq_fp4_global_scale(mq_amax_f32(x, (size_t)n * k));
    const int kp = mq_fp4_pad(k);
    uint8_t want_c[9 * 88], want_s[9 * 11];
    for (int r = r0; r < r1; r++)
        mq_fp4_quantize_row(x + r * k, k, g, want_c + r * kp / 2, want_s + r * kp / 16);
    mq_isa isas[3];
    int ni = harness_isas(isas);
    for (int i = 0; i < ni; i++) {
        mq_kernels_force(isas[i]);
        size_t bytes = mq_fp4_weight_bytes(n, k);
        void *mem = harness_alloc64(bytes);
        memset(mem, 0x5a, bytes);
        mq_fp4_weight w;
        mq_fp4_weight_bind(&w, n, k, mem);
        w.g = g;
        CHECK(mq_fp4_weight_quantize_rows(&w, x + r0 * k, k, r0, r1) == 0, "%s rc", mq_isa_name(isas[i]));
        CHECK(!memcmp(w.codes + r0 * kp / 2, want_c + r0 * kp / 2, (size_t)(r1 - r0) * kp / 2) &&
                  !memcmp(w.scales + r0 * kp / 16, want_s + r0 * kp / 16, (size_t)(r1 - r0) * kp / 16),
              "%s weight rows differ from the reference", mq_isa_name(isas[i]));
        CHECK(w.codes[0] == 0x5a && w.codes[(size_t)r1 * kp / 2] == 0x5a, "%s wrote outside rows [r0, r1)",
              mq_isa_name(isas[i]));
        x[r0 * k + 5] = NAN;
        CHECK(mq_fp4_weight_quantize_rows(&w, x + r0 * k, k, r0, r1) == -EINVAL, "%s NaN weight", mq_isa_name(isas[i]));
        x[r0 * k + 5] = 1.0f;
        mq_fp4_quantize_row(x + r0 * k, k, g, want_c + r0 * kp / 2, want_s + r0 * kp / 16);
        free(mem);
    }
    mq_kernels_force(isas[ni - 1]);
    free(x);
}

static void test_quantize_saturation_and_zero(void)
{
    float x[32] = { 0 };
    for (int i = 16; i < 32; i++)
        x[i] = (float)(i - 24) * 100.0f;
    uint8_t c[16], s[2];
    CHECK(mq_fp4_quantize_row(x, 32, 2688.0f / 8.0f, c, s) == 0, "rc");
    CHECK(s[0] == 0, "all-zero block has scale 0, got %02x", s[0]);
    for (int i = 0; i < 8; i++)
        CHECK(c[i] == 0, "all-zero block codes");
    CHECK(s[1] == 0x7e, "static scale exceeded: E4M3 saturates at 448, got %02x", s[1]);
    CHECK((c[15] >> 4) == 7 && (c[8] & 15) == 15, "elements saturate at ±6: %02x %02x", c[15], c[8]);
    check_act_isas(x, 1, 32, 32, 2688.0f / 8.0f, "saturation");
}

static void test_quantize_rejects_nonfinite(void)
{
    const float bad[] = { NAN, INFINITY, -INFINITY };
    for (int b = 0; b < 3; b++)
        for (int pos = 0; pos < 172; pos += 37) {
            float x[172];
            unsigned long long s = (unsigned long long)pos + 5;
            for (int i = 0; i < 172; i++)
                x[i] = harness_gauss(&s);
            x[pos] = bad[b];
            uint8_t c[88], sc[11];
            CHECK(mq_fp4_quantize_row(x, 172, 100.0f, c, sc) == -EINVAL, "ref accepts %g at %d", bad[b], pos);
            check_act_isas(x, 1, 172, 172, 100.0f, "non-finite"); /* every ISA: -EINVAL */
            CHECK(isnan(mq_amax_f32(x, 172)), "amax of a row with %g is NaN", bad[b]);
        }
    float x[16] = { 1 };
    uint8_t c[8], sc[1];
    CHECK(mq_fp4_quantize_row(x, 16, INFINITY, c, sc) == -EINVAL, "g = Inf rejected");
    CHECK(mq_fp4_quantize_row(x, 16, 0.0f, c, sc) == -EINVAL, "g = 0 rejected");
}

static void test_rows_isas_bitexact(void)
{
    mq_isa isas[3];
    int n = harness_isas(isas);
    enum { N = 4099 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    uint16_t *h = malloc(2 * N), *want = malloc(2 * N);
    unsigned long long s = 77;
    for (int i = 0; i < N; i++) {
        uint32_t u = (uint32_t)(harness_rand(&s) >> 32);
        if (i % 5 == 1)
            u = (u & 0xffff8000u) | 0x8000u; /* ties */
        if (i % 7 == 2)
            u &= 0x807fffffu; /* subnormals */
        if (i % 97 == 3)
            u = 0x7fc00001u | (u & 0x80000000u); /* NaN payloads */
        if (i % 101 == 4)
            u = 0x7f800000u; /* Inf */
        memcpy(&x[i], &u, 4);
        want[i] = mq_f32_to_bf16(x[i]);
    }
    for (int k = 0; k < n; k++) {
        mq_kernels_force(isas[k]);
        for (size_t len = 0; len < 40; len++) { /* tails */
            memset(h, 0, 2 * N);
            mq_f32_to_bf16_row(x + 1, h, len);
            CHECK(!memcmp(h, want + 1, 2 * len), "%s f32_to_bf16_row len %zu", mq_isa_name(isas[k]), len);
        }
        mq_f32_to_bf16_row(x, h, N);
        CHECK(!memcmp(h, want, 2 * N), "%s f32_to_bf16_row", mq_isa_name(isas[k]));
        mq_bf16_to_f32_row(want, y, N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            uint32_t u = (uint32_t)want[i] << 16, v;
            memcpy(&v, &y[i], 4);
            bad += u != v;
        }
        CHECK(!bad, "%s bf16_to_f32_row: %d differ", mq_isa_name(isas[k]), bad);
        /* amax: finite data, every length, the maximum placed anywhere */
        for (int i = 0; i < N; i++)
            y[i] = harness_gauss(&s);
        for (size_t len = 1; len < 200; len += 7) {
            float ref = 0;
            for (size_t i = 0; i < len; i++)
                ref = fabsf(y[i]) > ref ? fabsf(y[i]) : ref;
            CHECK(mq_amax_f32(y, len) == ref, "%s amax len %zu", mq_isa_name(isas[k]), len);
        }
        y[N - 1] = -1e9f;
        CHECK(mq_amax_f32(y, N) == 1e9f, "%s amax of the last element", mq_isa_name(isas[k]));
        y[N - 2] = INFINITY;
        CHECK(isnan(mq_amax_f32(y, N)), "%s amax with Inf is NaN", mq_isa_name(isas[k]));
    }
    mq_kernels_force(isas[n - 1]);
    free(x);
    free(y);
    free(h);
    free(want);
}

int main(void)
{
    mq_kernels_init();
    RUN(test_e4m3_vs_oracle);
    RUN(test_e2m1_vs_oracle);
    RUN(test_bf16_vs_oracle);
    RUN(test_quantize_ref_vs_oracle);
    RUN(test_quantize_isas_bitexact);
    RUN(test_amax_bf16_isas);
    RUN(test_weight_quantize_isas);
    RUN(test_quantize_saturation_and_zero);
    RUN(test_quantize_rejects_nonfinite);
    RUN(test_rows_isas_bitexact);
    return harness_done();
}
