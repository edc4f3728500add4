/* engine/sampler.c — penalties, temperature, top-k/top-p/min-p, seeded draws, stop strings.
 * See sampler.h for the contract and the order of operations. */
#define _GNU_SOURCE
#include "engine/sampler.h"

#include "kernels/mq_kernels.h"
#include "engine/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Up to this many candidates mq_topk (insertion, O(n*k)) beats select + sort. */
#define TOPK_SORT_LIMIT 64
/* First guess of how many ranked tokens top-p needs; grown x4 when short. */
#define TOPP_FIRST_K 64

void mq_sampler_params_default(mq_sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

/* ---- RNG: splitmix64 seeds xoshiro256** -------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double mq_sampler_uniform(mq_sampler *s)
{
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

/* ---- lifecycle ----------------------------------------------------------------------- */

int mq_sampler_init(mq_sampler *s, const mq_sampler_params *p, int vocab)
{
    memset(s, 0, sizeof *s);
    if (vocab <= 0 || isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p) || p->top_p <= 0.0f ||
        p->min_p < 0.0f || p->min_p > 1.0f || !(p->repetition_penalty > 0.0f) || !isfinite(p->presence_penalty) ||
        !isfinite(p->frequency_penalty) || !isfinite(p->repetition_penalty) || isinf(p->temperature))
        return -EINVAL;
    s->p = *p;
    s->vocab = vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->prob = malloc((size_t)vocab * sizeof *s->prob);
    s->count = calloc((size_t)vocab, sizeof *s->count);
    if (!s->idx || !s->prob || !s->count) {
        mq_sampler_free(s);
        return -ENOMEM;
    }
    return 0;
}

void mq_sampler_free(mq_sampler *s)
{
    free(s->idx);
    free(s->prob);
    free(s->count);
    s->idx = NULL;
    s->prob = NULL;
    s->count = NULL;
}

/* ---- the distribution ------------------------------------------------------------------ */

static void apply_penalties(mq_sampler *s, float *logits, const int32_t *hist, size_t nh)
{
    const mq_sampler_params *p = &s->p;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    for (size_t i = 0; i < nh; i++)
        if (hist[i] >= 0 && hist[i] < s->vocab)
            s->count[hist[i]]++;
    for (size_t i = 0; i < nh; i++) {
        int32_t t = hist[i];
        if (t < 0 || t >= s->vocab || !s->count[t])
            continue;
        float l = logits[t];
        if (p->repetition_penalty != 1.0f)
            l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        l -= p->presence_penalty + p->frequency_penalty * (float)s->count[t];
        logits[t] = l;
        s->count[t] = 0; /* once per distinct token; leaves count all zero */
    }
}

/* Rank order: larger logit first, ties by lower id (the order of mq_topk). */
static inline int before(const float *x, int i, int j)
{
    return x[i] > x[j] || (x[i] == x[j] && i < j);
}

/* Moves the k first-ranked ids of ids[0..n) to ids[0..k) (in any order): quickselect with a
 * median-of-three pivot, O(n) on average. */
static void select_top(const float *x, int *ids, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, a = ids[lo], b = ids[mid], c = ids[hi];
        int piv = before(x, a, b) ? (before(x, b, c)   ? b
                                     : before(x, a, c) ? c
                                                       : a)
                                  : (before(x, a, c)   ? a
                                     : before(x, b, c) ? c
                                                       : b);
        int i = lo, j = hi;
        while (i <= j) {
            while (before(x, ids[i], piv))
                i++;
            while (before(x, piv, ids[j]))
                j--;
            if (i <= j) {
                int t = ids[i];
                ids[i] = ids[j];
                ids[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts ids[0..k) into rank order through packed keys (order-preserving float bits,
 * inverted for "larger first", then the id): a plain integer sort, no indirection. */
static int sort_ranked(const float *x, int *ids, int k)
{
    uint64_t *key = malloc((size_t)k * sizeof *key);
    if (!key)
        return -ENOMEM;
    for (int j = 0; j < k; j++) {
        uint32_t u;
        memcpy(&u, &x[ids[j]], sizeof u);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        key[j] = (uint64_t)(~u) << 32 | (uint32_t)ids[j];
    }
    qsort(key, (size_t)k, sizeof *key, cmp_u64);
    for (int j = 0; j < k; j++)
        ids[j] = (int)(uint32_t)key[j];
    free(key);
    return 0;
}

int mq_sampler_candidates(mq_sampler *s, float *logits, const int32_t *history, size_t n_hist, int *ids, float *probs)
{
    const mq_sampler_params *p = &s->p;
    const int n = s->vocab;
    apply_penalties(s, logits, history, n_hist);
    if (p->temperature <= 0.0f) {
        ids[0] = mq_argmax(logits, n);
        probs[0] = 1.0f;
        return 1;
    }
    mq_temperature(logits, n, p->temperature);
    const int use_k = p->top_k > 0 && p->top_k < n, use_p = p->top_p<1.0f, use_min = p->min_p> 0.0f;
    if (!use_k && !use_p && !use_min) { /* plain softmax over the vocabulary */
        float lse = mq_logsumexp(logits, n);
        for (int i = 0; i < n; i++) {
            ids[i] = i;
            probs[i] = expf(logits[i] - lse);
        }
        return n;
    }
    /* Every filter keeps a prefix of the ranking; find an upper bound m of its length
     * without sorting the vocabulary, then sort only m ids. */
    int m = use_k ? p->top_k : n;
    float lmax = logits[mq_argmax(logits, n)];
    if (use_min) { /* p_i / p_max >= min_p, counted in one pass */
        int c = 0;
        for (int i = 0; i < n; i++)
            c += expf(logits[i] - lmax) >= p->min_p;
        if (c < m)
            m = c > 0 ? c : 1;
    }
    for (int i = 0; i < n; i++)
        ids[i] = i;
    float lse;
    if (use_k) { /* top-k renormalises over its own set */
        select_top(logits, ids, n, p->top_k);
        for (int j = 0; j < p->top_k; j++)
            probs[j] = logits[ids[j]];
        lse = mq_logsumexp(probs, p->top_k);
    } else {
        lse = mq_logsumexp(logits, n);
    }
    if (use_p) { /* grow k until the top-k mass reaches top_p (x4 steps, O(n) each) */
        int k = m < TOPP_FIRST_K ? m : TOPP_FIRST_K;
        for (;;) {
            select_top(logits, ids, n, k);
            double mass = 0.0;
            for (int j = 0; j < k; j++)
                mass += expf(logits[ids[j]] - lse);
            if (mass >= (double)p->top_p || k >= m)
                break;
            k = k > m / 4 ? m : k * 4;
        }
        m = k;
    }
    if (m <= TOPK_SORT_LIMIT)
        m = mq_topk(logits, n, m, ids);
    else {
        select_top(logits, ids, n, m);
        if (sort_ranked(logits, ids, m))
            return -ENOMEM;
    }
    for (int j = 0; j < m; j++)
        probs[j] = expf(logits[ids[j]] - lse);
    int keep = use_p ? mq_topp(probs, m, p->top_p) : m;
    if (use_min)
        keep = mq_minp(probs, keep, p->min_p);
    double z = 0.0;
    for (int j = 0; j < keep; j++)
        z += probs[j];
    for (int j = 0; j < keep; j++)
        probs[j] = (float)(probs[j] / z);
    return keep;
}

int32_t mq_sampler_sample(mq_sampler *s, float *logits, const int32_t *history, size_t n_hist)
{
    int k = mq_sampler_candidates(s, logits, history, n_hist, s->idx, s->prob);
    if (k < 0)
        return k;
    if (s->p.temperature <= 0.0f)
        return s->idx[0];
    double u = mq_sampler_uniform(s);
    return s->idx[mq_sample_cdf(s->prob, k, u)];
}

/* ---- stop strings --------------------------------------------------------------------- */

int mq_stop_init(mq_stop *s, const int32_t *ids, int n_ids, const char *const *strs, int n_strs)
{
    memset(s, 0, sizeof *s);
    if (n_ids < 0 || n_strs < 0)
        return -EINVAL;
    if (n_ids) {
        s->ids = malloc((size_t)n_ids * sizeof *ids);
        if (!s->ids)
            return -ENOMEM;
        memcpy(s->ids, ids, (size_t)n_ids * sizeof *ids);
        s->n_ids = n_ids;
    }
    if (n_strs) {
        s->strs = calloc((size_t)n_strs, sizeof *s->strs);
        s->lens = calloc((size_t)n_strs, sizeof *s->lens);
        if (!s->strs || !s->lens) {
            mq_stop_free(s);
            return -ENOMEM;
        }
        for (int i = 0; i < n_strs; i++) {
            size_t l = strs[i] ? strlen(strs[i]) : 0;
            if (!l || !mq_utf8_valid(strs[i], l)) {
                mq_stop_free(s);
                return -EINVAL;
            }
            s->strs[i] = strdup(strs[i]);
            if (!s->strs[i]) {
                mq_stop_free(s);
                return -ENOMEM;
            }
            s->lens[i] = l;
            s->n_strs = i + 1;
        }
    }
    return 0;
}

void mq_stop_free(mq_stop *s)
{
    for (int i = 0; i < s->n_strs; i++)
        free(s->strs[i]);
    free(s->strs);
    free(s->lens);
    free(s->ids);
    free(s->buf);
    free(s->out);
    memset(s, 0, sizeof *s);
}

int mq_stop_is_token(const mq_stop *s, int32_t id)
{
    for (int i = 0; i < s->n_ids; i++)
        if (s->ids[i] == id)
            return 1;
    return 0;
}

static int reserve(char **b, size_t *cap, size_t n)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < n)
        c *= 2;
    char *q = realloc(*b, c);
    if (!q)
        return -ENOMEM;
    *b = q;
    *cap = c;
    return 0;
}

int mq_stop_feed(mq_stop *s, const char *text, size_t len, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (s->stopped)
        return 1;
    size_t n = s->n_held + len;
    if (reserve(&s->buf, &s->cap, n + 1) || reserve(&s->out, &s->out_cap, n + 1))
        return -ENOMEM;
    memcpy(s->buf + s->n_held, text, len);
    /* earliest complete stop string; only the held bytes and the new text can hold one */
    size_t best = n;
    for (int i = 0; i < s->n_strs; i++) {
        const char *m = memmem(s->buf, n, s->strs[i], s->lens[i]);
        if (m && (size_t)(m - s->buf) < best)
            best = (size_t)(m - s->buf);
    }
    if (best < n) {
        memcpy(s->out, s->buf, best);
        *out = s->out;
        *out_len = best;
        s->n_held = 0;
        s->stopped = 1;
        return 1;
    }
    /* withhold the longest tail that is a proper prefix of some stop string */
    size_t hold = 0;
    for (int i = 0; i < s->n_strs; i++) {
        size_t l = s->lens[i] - 1 < n ? s->lens[i] - 1 : n;
        for (; l > hold; l--)
            if (!memcmp(s->buf + n - l, s->strs[i], l)) {
                hold = l;
                break;
            }
    }
    memcpy(s->out, s->buf, n - hold);
    memmove(s->buf, s->buf + n - hold, hold);
    s->n_held = hold;
    *out = s->out;
    *out_len = n - hold;
    return 0;
}

void mq_stop_flush(mq_stop *s, const char **out, size_t *out_len)
{
    *out = s->buf ? s->buf : "";
    *out_len = s->stopped ? 0 : s->n_held;
    s->n_held = 0;
}
