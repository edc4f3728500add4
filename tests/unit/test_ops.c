/* Small ops against FP64: RMSNorm, SiLU·mul (every ISA), RoPE against the Hugging Face
 * formula, softmax / log-sum-exp, argmax, top-k, and the sampling helpers against brute
 * force. */
#include "tests/harness.h"
#include "kernels/mq_kernels.h"

#include <math.h>
#include <string.h>

static float ulpf_(float x)
{
    return nextafterf(fabsf(x), INFINITY) - fabsf(x);
}

static void test_rmsnorm(void)
{
    mq_isa isas[3];
    int ni = harness_isas(isas);
    const int ns[] = { 1, 7, 64, 100, 384, 1027, 2048 };
    unsigned long long s = 5;
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        int n = ns[t];
        float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        for (int i = 0; i < n; i++) {
            x[i] = harness_gauss(&s) * 3;
            w[i] = 1 + harness_uniform(&s) * 0.5f;
        }
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        double r = 1 / sqrt(ss / n + 1e-6);
        for (int k = 0; k < ni; k++) {
            mq_kernels_force(isas[k]);
            mq_rmsnorm(y, x, w, n, 1e-6f);
            double err = 0;
            for (int i = 0; i < n; i++) {
                double want = w[i] * (x[i] * r);
                err = fmax(err, fabs(y[i] - want) / (fabs(want) + 1e-30));
            }
            CHECK(err < 4e-6, "%s rmsnorm n=%d rel err %g", mq_isa_name(isas[k]), n, err);
            memcpy(y, x, sizeof(float) * n); /* y may alias x */
            mq_rmsnorm(y, y, w, n, 1e-6f);
            CHECK(fabs(y[n - 1] - w[n - 1] * (x[n - 1] * r)) <= 4e-6 * fabs(w[n - 1] * x[n - 1] * r) + 1e-30,
                  "%s rmsnorm in place", mq_isa_name(isas[k]));
        }
        free(x);
        free(w);
        free(y);
    }
    mq_kernels_force(isas[ni - 1]);
}

static void test_swiglu(void)
{
    mq_isa isas[3];
    int ni = harness_isas(isas);
    enum { N = 1037 };
    float g[N], u[N], y[N];
    unsigned long long s = 6;
    for (int i = 0; i < N; i++) {
        g[i] = harness_gauss(&s) * (i % 10 == 0 ? 40 : 4);
        u[i] = harness_gauss(&s);
    }
    g[0] = -200;
    g[1] = 200;
    g[2] = 0;
    g[3] = -88.5f;
    g[4] = 88.5f;
    g[5] = -0.0f;
    for (int k = 0; k < ni; k++) {
        mq_kernels_force(isas[k]);
        mq_swiglu(y, g, u, N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            double want = (double)g[i] / (1 + exp(-(double)g[i])) * u[i];
            /* a few ulp, or far below anything that matters next to the residual */
            if (!(fabs(y[i] - want) <= 1e-6 * fabs(want) + 1e-30)) {
                if (bad++ < 3)
                    fprintf(stderr, "    %s swiglu(%g, %g) = %g, want %g\n", mq_isa_name(isas[k]), g[i], u[i], y[i],
                            want);
            }
        }
        CHECK(!bad, "%s swiglu: %d off", mq_isa_name(isas[k]), bad);
        float gg[N];
        memcpy(gg, g, sizeof gg);
        mq_swiglu(gg, gg, u, N); /* out may alias gate */
        CHECK(!memcmp(gg, y, sizeof gg), "%s swiglu in place", mq_isa_name(isas[k]));
    }
    mq_kernels_force(isas[ni - 1]);
}

/* transformers: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)) in FP32;
 * freqs = inv_freq[None] @ pos (FP32); emb = cat(freqs, freqs); q*cos + rotate_half(q)*sin
 * with rotate_half(x) = cat(-x2, x1). */
static void test_rope_hf(void)
{
    const int dims[] = { 64, 128, 256 };
    const double thetas[] = { 10000.0, 1000000.0 };
    const int poss[] = { 0, 1, 17, 1000, 8191, 40000 };
    unsigned long long s = 8;
    for (size_t di = 0; di < 3; di++)
        for (size_t ti = 0; ti < 2; ti++) {
            int hd = dims[di], half = hd / 2;
            float inv[128], cs[128], sn[128];
            mq_rope_inv_freq(inv, hd, thetas[ti]);
            for (int i = 0; i < half; i++) {
                float e = (float)(2 * i) / (float)hd;                        /* arange(..).float() / dim */
                float pw = (float)pow((double)(float)thetas[ti], (double)e); /* FP32 pow, ~correctly rounded */
                float want = 1.0f / pw;
                CHECK(fabsf(inv[i] - want) <= 2 * ulpf_(want), "inv_freq[%d] hd=%d theta=%g: %a vs %a", i, hd,
                      thetas[ti], inv[i], want);
            }
            for (size_t pi = 0; pi < sizeof poss / sizeof poss[0]; pi++) {
                int pos = poss[pi];
                mq_rope_cos_sin(inv, hd, pos, cs, sn);
                float x[2 * 256], y[2 * 256];
                for (int i = 0; i < 2 * hd; i++)
                    x[i] = harness_gauss(&s);
                memcpy(y, x, sizeof(float) * 2 * hd);
                mq_rope(y, 2, hd, cs, sn);
                for (int h = 0; h < 2; h++)
                    for (int i = 0; i < hd; i++) {
                        int f = i % half;
                        double ang = (double)((float)pos * inv[f]); /* the FP32 product, as HF */
                        double rot = i < half ? -(double)x[h * hd + i + half] : (double)x[h * hd + i - half];
                        double want = x[h * hd + i] * cos(ang) + rot * sin(ang);
                        double mag = fabs(x[h * hd + i]) + fabs(rot);
                        CHECK(fabs(y[h * hd + i] - want) <= 3e-7 * mag + 1e-30, "rope hd=%d pos=%d i=%d: %g vs %g", hd,
                              pos, i, y[h * hd + i], want);
                    }
            }
        }
}

static void test_softmax(void)
{
    enum { N = 5000 };
    static float x[N], y[N];
    unsigned long long s = 9;
    for (int i = 0; i < N; i++)
        x[i] = harness_gauss(&s) * 8;
    x[17] = -INFINITY; /* masked entries are allowed */
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < N; i++)
        mx = fmax(mx, x[i]);
    for (int i = 0; i < N; i++)
        sum += exp((double)x[i] - mx);
    double lse = mx + log(sum);
    memcpy(y, x, sizeof y);
    float got = mq_softmax(y, N);
    CHECK(fabs(got - lse) <= 1e-6 * fabs(lse), "lse %g vs %g", got, lse);
    CHECK(fabs(mq_logsumexp(x, N) - lse) <= 1e-6 * fabs(lse), "logsumexp");
    double tot = 0, err = 0;
    for (int i = 0; i < N; i++) {
        double want = exp((double)x[i] - lse);
        err = fmax(err, fabs(y[i] - want) / (want + 1e-300));
        tot += y[i];
    }
    CHECK(err < 2e-5, "softmax rel err %g", err); /* lse rounded to FP32 near |lse| ~ 30 */
    CHECK(fabs(tot - 1) < 1e-5, "sum %g", tot);
    CHECK(y[17] == 0, "masked -> 0");
    float allmasked[3] = { -INFINITY, -INFINITY, -INFINITY };
    CHECK(mq_logsumexp(allmasked, 3) == -INFINITY, "all masked: lse = -inf");
}

static void test_argmax_topk(void)
{
    enum { N = 3001 };
    static float x[N];
    unsigned long long s = 10;
    for (int i = 0; i < N; i++)
        x[i] = (float)(int)(harness_gauss(&s) * 6); /* many ties */
    int best = 0;
    for (int i = 0; i < N; i++)
        if (x[i] > x[best])
            best = i;
    mq_isa isas[3];
    const int ni = harness_isas(isas);
    /* every ISA: the first of tied maxima, at every length (vector tails), NaNs never the
     * largest (but index 0 if x[0] is NaN), -0 and +0 equal, all -inf */
    static float z[70];
    for (int k = 0; k < ni; k++) {
        mq_kernels_force(isas[k]);
        CHECK(mq_argmax(x, N) == best, "%s argmax", mq_isa_name(isas[k]));
        int bad = 0;
        for (int n = 1; n <= 70; n++) {
            for (int i = 0; i < n; i++)
                z[i] = (float)((i * 37) % 11);
            z[(n * 5) % n] = NAN;
            z[(n * 3) % n] = (n & 1) ? -0.0f : 0.0f;
            int want = 0;
            for (int i = 1; i < n; i++)
                if (z[i] > z[want])
                    want = i;
            bad += mq_argmax(z, n) != want;
        }
        for (int i = 0; i < 70; i++)
            z[i] = -INFINITY;
        bad += mq_argmax(z, 70) != 0;
        z[0] = NAN;
        z[9] = 5.0f;
        bad += mq_argmax(z, 70) != 0;
        CHECK(bad == 0, "%s argmax: %d cases differ from the scalar rule", mq_isa_name(isas[k]), bad);
    }
    const int ks[] = { 0, 1, 5, 40, N, N + 3 };
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        int k = ks[t];
        int *idx = malloc(sizeof(int) * (k + 1));
        int got = mq_topk(x, N, k, idx);
        int want_k = k < N ? k : N;
        CHECK(got == want_k, "topk k=%d returned %d", k, got);
        /* brute force: the j-th largest, ties to the lower index */
        char *used = calloc(N, 1);
        for (int j = 0; j < got; j++) {
            int b = -1;
            for (int i = 0; i < N; i++)
                if (!used[i] && (b < 0 || x[i] > x[b]))
                    b = i;
            used[b] = 1;
            if (idx[j] != b) {
                CHECK(0, "topk k=%d position %d: %d, want %d", k, j, idx[j], b);
                break;
            }
        }
        free(used);
        free(idx);
    }
}

static void test_sampling_helpers(void)
{
    float p[64];
    unsigned long long s = 12;
    double tot = 0;
    for (int i = 0; i < 64; i++) {
        p[i] = expf(-0.2f * i) * (1 + 0.01f * harness_uniform(&s));
        tot += p[i];
    }
    for (int i = 0; i < 64; i++)
        p[i] = (float)(p[i] / tot);
    const float tps[] = { 0.0f, 0.1f, 0.5f, 0.9f, 0.95f, 0.999f, 1.0f, 1.5f };
    for (size_t t = 0; t < sizeof tps / sizeof tps[0]; t++) {
        int want = 64;
        double cum = 0;
        for (int k = 1; k <= 64; k++) {
            cum += p[k - 1];
            if (cum >= tps[t]) {
                want = k;
                break;
            }
        }
        int got = mq_topp(p, 64, tps[t]);
        CHECK(got == want, "topp(%g) = %d, want %d", tps[t], got, want);
        CHECK(got >= 1, "topp keeps one");
        /* the kept set: the tokens before the last reach less than top_p */
        double before = 0;
        for (int k = 0; k < got - 1; k++)
            before += p[k];
        CHECK(before < tps[t] || got == 1, "topp(%g) keeps too many", tps[t]);
    }
    const float mps[] = { 0.0f, 0.05f, 0.5f, 1.0f };
    for (size_t t = 0; t < 4; t++) {
        int want = 0;
        for (int k = 0; k < 64; k++)
            if (p[k] >= mps[t] * p[0])
                want = k + 1;
        if (want < 1)
            want = 1;
        CHECK(mq_minp(p, 64, mps[t]) == want, "minp(%g) = %d, want %d", mps[t], mq_minp(p, 64, mps[t]), want);
    }
    /* inverse CDF: every u lands on the index whose cumulative interval holds it */
    for (int t = 0; t < 2000; t++) {
        double u = (harness_uniform(&s) + 1) * 0.5;
        int got = mq_sample_cdf(p, 64, u);
        double lo = 0;
        for (int k = 0; k < got; k++)
            lo += p[k];
        double total = 0;
        for (int k = 0; k < 64; k++)
            total += p[k];
        CHECK(lo <= u * total && (got == 63 || lo + p[got] > u * total), "cdf(%g) = %d", u, got);
    }
    float q[3] = { 0, 0, 5 };
    CHECK(mq_sample_cdf(q, 3, 0.0) == 2, "zero-probability entries are never drawn");
    float l[4] = { 1.0f, -2.0f, 0.3f, 7.0f };
    mq_temperature(l, 4, 0.7f);
    CHECK(l[0] == 1.0f / 0.7f && l[1] == -2.0f / 0.7f && l[3] == 7.0f / 0.7f, "temperature divides");
}

int main(void)
{
    mq_kernels_init();
    RUN(test_rmsnorm);
    RUN(test_swiglu);
    RUN(test_rope_hf);
    RUN(test_softmax);
    RUN(test_argmax_topk);
    RUN(test_sampling_helpers);
    return harness_done();
}
