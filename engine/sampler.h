/* engine/sampler.h — next-token choice and stop conditions for one request.
 *
 * Owns: per-request sampling state (parameters, a seeded RNG, scratch sized to the
 * vocabulary) and the stop-string matcher. No global state: two requests with the same
 * seed, logits and history draw the same tokens, whatever else runs.
 *
 * Order of operations (that of transformers' generate):
 *   penalties (repetition, presence, frequency over the history the caller passes)
 *   -> temperature (0 = greedy: argmax after penalties) -> top-k -> top-p -> min-p
 *   -> draw from the renormalised distribution of what is left.
 * top-p keeps the smallest set of most likely tokens whose probability (renormalised
 * over the top-k set when top-k is on) reaches top_p, i.e. token j (by rank) is kept iff
 * the probability of the tokens ranked above it is < top_p; at least one token is kept.
 * min-p keeps tokens with p >= min_p * p_max. The math uses kernels/ (mq_topk,
 * mq_logsumexp, mq_argmax).
 *
 * Who calls it: the decode pool, once per generated token of a request. Thread rules: a
 * mq_sampler / mq_stop belongs to one request, used by one thread at a time.
 */
#ifndef MQ_ENGINE_SAMPLER_H
#define MQ_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mq_sampler_params {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repetition_penalty; /* 1: off. logit > 0 ? logit / r : logit * r, once per distinct
                               * token of the history (CTRL / transformers) */
    float presence_penalty;   /* 0: off. logit -= presence if the token occurs (OpenAI) */
    float frequency_penalty;  /* 0: off. logit -= frequency * count (OpenAI) */
    uint64_t seed;
} mq_sampler_params;

/* temperature 1, everything else off, seed 0. */
void mq_sampler_params_default(mq_sampler_params *p);

typedef struct mq_sampler {
    mq_sampler_params p;
    int vocab;
    uint64_t rng[4]; /* xoshiro256**, seeded from p.seed by splitmix64 */
    int *idx;        /* [vocab] candidate ids */
    float *prob;     /* [vocab] candidate probabilities */
    uint32_t *count; /* [vocab] occurrences in the history (zero between calls) */
} mq_sampler;

/* -EINVAL for a bad parameter (NaN, top_p <= 0, negative penalty...), -ENOMEM. */
int mq_sampler_init(mq_sampler *s, const mq_sampler_params *p, int vocab);
void mq_sampler_free(mq_sampler *s);

/* Applies the penalties and filters: on return ids[0..k) / probs[0..k) (k returned) hold
 * the tokens that may be drawn, most likely first when a filter is on (vocabulary order
 * when none is), probs summing to 1. logits [vocab] are modified in place (penalised and
 * divided by the temperature). ids/probs may be s->idx / s->prob. Greedy gives k = 1.
 * Returns k >= 1 or -ENOMEM. */
int mq_sampler_candidates(mq_sampler *s, float *logits, const int32_t *history, size_t n_hist, int *ids, float *probs);
/* One token id, or -ENOMEM. Same logits rule as above. Consumes one RNG draw unless
 * greedy. Cost: O(vocab) plus a sort of the ids top-p/min-p/top-k may keep. */
int32_t mq_sampler_sample(mq_sampler *s, float *logits, const int32_t *history, size_t n_hist);
/* Uniform [0, 1) from the request's RNG (53 bits). */
double mq_sampler_uniform(mq_sampler *s);

/* ---- stop tokens and stop strings ------------------------------------------------------ */

/* Stop strings are matched on the streamed text, across token boundaries. Text that could
 * be the start of a stop string is withheld until it is known not to be; when a stop string
 * completes, the text before it is released and the rest is dropped. Feed it complete UTF-8
 * (the output of mq_tok_stream_push); the released text is then complete UTF-8 too. */
typedef struct mq_stop {
    int32_t *ids;
    int n_ids;
    char **strs;
    size_t *lens;
    int n_strs;
    char *buf; /* withheld bytes + the text being fed */
    size_t n_held, cap;
    char *out; /* released text of the last call */
    size_t out_cap;
    int stopped;
} mq_stop;

/* Copies ids and strings. Empty or invalid-UTF-8 stop strings are -EINVAL. */
int mq_stop_init(mq_stop *s, const int32_t *ids, int n_ids, const char *const *strs, int n_strs);
void mq_stop_free(mq_stop *s);
int mq_stop_is_token(const mq_stop *s, int32_t id);
/* Feeds new text. Returns 1 when a stop string completed (then *out holds the text before
 * it; later calls release nothing), 0 otherwise, -ENOMEM. *out (valid until the next
 * call) gets the text safe to send now; mq_stop_withheld() tells how much is held back. */
int mq_stop_feed(mq_stop *s, const char *text, size_t len, const char **out, size_t *out_len);
/* End of generation for another reason (stop token, length): releases the held text. */
void mq_stop_flush(mq_stop *s, const char **out, size_t *out_len);
static inline size_t mq_stop_withheld(const mq_stop *s)
{
    return s->n_held;
}

#ifdef __cplusplus
}
#endif
#endif
