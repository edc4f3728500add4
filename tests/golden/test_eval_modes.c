/* tests/golden/test_eval_modes.c — the scoring method of mq_eval (tests/bench/eval_modes.h).
 *
 * doc_nll() (mq_engine_score_positions) scores every position of a document at once; these checks recompute single
 * positions the plain way, on mq-qwen3-80m and the first corpus document of >= 80 tokens,
 * at positions around KV block edges (16-token blocks):
 *   - bf16: mq_engine_prompt() on the prefix 0..p (a fresh prefill per position) must give
 *     the same NLL for token p+1, up to the difference between the LM head's orders for
 *     all rows (tiled) and for the last row alone (GEMV) (measured ~3e-6 nats; bound 2e-2).
 *     An indexing error (wrong position, wrong target) costs nats.
 *   - mixed: the same prompt-part prefill of the document (same chunks), then token p as
 *     a one-token chunk that ends the prompt (mq_engine_prefill_chunk, the rule the
 *     scheduler runs: BF16, summed as a decode step) must match the batched decode over
 *     shared NVFP4 blocks + private block copies bit for bit: a decode batch is
 *     batch-invariant (engine.h), each row summed as it would be alone.
 * Also printed, not asserted: how far the mixed NLL moves when the prefix 0..p-1 is
 * prefilled on its own (mq_engine_prompt): the dynamic NVFP4 activation scale is taken per
 * GEMM call (NVFP4.md), so NVFP4 KV depends on which tokens share the call.
 */
#define _GNU_SOURCE
#include "tests/bench/eval_modes.h"
#include "tests/harness.h"
#include "common/errmsg.h"

#define NPOS 80
#define TOL  2e-2

static void test_doc_nll_matches_single_positions(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s", shared_path("models/mq-qwen3-80m"));
    mq_tokenizer *tok = NULL;
    int rc = mq_tok_load_dir(dir, &tok, err, sizeof err);
    CHECK(rc == 0, "tokenizer: %s", err);
    if (rc)
        return;
    eval_corpus c;
    rc = eval_corpus_load(&c, shared_path("corpus/dev.txt"), tok, 20, NPOS, err, sizeof err);
    mq_tok_free(tok);
    CHECK(rc == 0, "corpus: %s", err);
    const eval_doc *d = NULL;
    for (int i = 0; i < c.n && !d; i++)
        if (c.docs[i].n == NPOS)
            d = &c.docs[i];
    CHECK(d != NULL, "no document of %d tokens", NPOS);
    ev v;
    rc = d ? ev_init(&v, dir, 2, err, sizeof err) : -1;
    CHECK(rc == 0, "model: %s", err);
    if (rc)
        goto out;
    static const int probe[] = { 0, 1, 2, 14, 15, 16, 17, 31, 32, 33, 47, 63, 64, NPOS - 2 };
    const int np = (int)(sizeof probe / sizeof probe[0]);
    const int *ids = (const int *)d->ids;
    double per_bf[NPOS], per_mx[NPOS], s = 0;
    float *logits = malloc((size_t)v.vocab * sizeof *logits);
    double worst_bf = 0, worst_mx = 0, prompt_route = 0;
    rc = logits ? doc_nll(&v, d, MQ_PREC_MODE_BF16, &s, per_bf) : -ENOMEM;
    if (!rc)
        rc = doc_nll(&v, d, MQ_PREC_MODE_MIXED, &s, per_mx);
    CHECK(rc == 0, "doc_nll: %d", rc);
    mq_kv_seq seq = { v.shared, v.nb };
    for (int k = 0; k < np && !rc; k++) {
        int p = probe[k];
        /* bf16: the prefix as a prompt */
        rc = mq_engine_prompt(v.e, v.pool, &seq, ids, p + 1, 0, MQ_PREC_MODE_BF16, logits);
        double x = nll_of(logits, v.vocab, ids[p + 1]);
        worst_bf = fmax(worst_bf, fabs(x - per_bf[p]));
        CHECK(!rc && fabs(x - per_bf[p]) < TOL, "bf16, position %d: batched %.5f, prompt %.5f", p, per_bf[p], x);
        /* mixed: the document's prompt part in the same chunks, then token p as the
         * prompt's last token (mq_engine_prefill_chunk: the rule mqd runs) */
        for (int p0 = 0; p0 < d->n - 2 && !rc; p0 += CHUNK) {
            int len = d->n - 2 - p0 < CHUNK ? d->n - 2 - p0 : CHUNK;
            rc = mq_engine_prefill_chunk(v.e, v.pool, &seq, ids + p0, len, p0, MQ_PREC_MODE_MIXED, NULL);
        }
        if (!rc)
            rc = mq_engine_prefill_chunk(v.e, v.pool, &seq, ids + p, 1, p, MQ_PREC_MODE_MIXED, logits);
        x = nll_of(logits, v.vocab, ids[p + 1]);
        worst_mx = fmax(worst_mx, fabs(x - per_mx[p]));
        CHECK(!rc && x == per_mx[p], "mixed, position %d: batched %.9f, single %.9f", p, per_mx[p], x);
        /* mixed with the prefix prefilled on its own (information) */
        if (!rc)
            rc = mq_engine_prompt(v.e, v.pool, &seq, ids, p + 1, 0, MQ_PREC_MODE_MIXED, logits);
        prompt_route = fmax(prompt_route, fabs(nll_of(logits, v.vocab, ids[p + 1]) - per_mx[p]));
    }
    CHECK(rc == 0, "forward: %d", rc);
    double spread = 0;
    for (int p = 0; p < NPOS - 1; p++)
        spread = fmax(spread, fabs(per_mx[p] - per_bf[p]));
    printf("    worst |batched - single| bf16 %.2e, mixed %.2e nats; mixed vs bf16 up to %.3f nats; "
           "mixed with each prefix prefilled alone moves up to %.3f nats\n",
           worst_bf, worst_mx, spread, prompt_route);
    CHECK(spread > 5 * TOL, "mixed hardly differs from bf16 (%.4f): the mixed check would be blind", spread);
    /* position 0 in mixed is a one-token prompt: its last token alone in BF16; the batched
     * decode over several sequences sums in the order of that single row, bit for bit */
    if (!rc)
        rc = mq_engine_prompt(v.e, v.pool, &seq, ids, 1, 0, MQ_PREC_MODE_MIXED, logits);
    CHECK(!rc && per_mx[0] == nll_of(logits, v.vocab, ids[1]),
          "mixed at position 0 is a one-token BF16 prompt: batched %.9f vs the prompt %.9f", per_mx[0],
          rc ? 0.0 : nll_of(logits, v.vocab, ids[1]));
    free(logits);
out:
    if (d)
        ev_free(&v);
    eval_corpus_free(&c);
}

int main(void)
{
    mq_kernels_init();
    RUN(test_doc_nll_matches_single_positions);
    return harness_done();
}
