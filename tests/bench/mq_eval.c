/* tests/bench/mq_eval.c — quality of the three modes (bf16, mixed, fp4) on held-out text.
 *
 *   build/mq_eval [--model DIR] [--corpus FILE] [--docs N] [--cont N] [--threads N]
 *   (make eval MODEL=dir CORPUS=file DOCS=n)
 *
 * Perplexity (tests/bench/eval_corpus.h has the exact document rules): the first DOCS
 * documents, each cut to 1024 tokens, NLL of tokens 2..n. Per mode, the distribution that
 * predicts token i+1 is the one the mode would produce if tokens 0..i were the prompt:
 *   bf16: everything BF16;  fp4: everything NVFP4 (W4A4);
 *   mixed: tokens 0..i-1 prefilled with NVFP4 (they only fill the KV cache) and token i
 *          run in BF16 on top of that cache — NVFP4.md's mixed rule for a prompt 0..i.
 * For mixed this is done for all positions at once: one NVFP4 prefill of the document,
 * then batched BF16 decode steps where sequence s (position p) shares the document's
 * NVFP4 KV blocks and has a private copy of the block holding p, which the step writes.
 *
 * Continuations (the Mix-Quant setting): the first --cont (100) documents with at least
 * P + C = 512 + 128 tokens: the prefix of P tokens goes through mq_engine_prompt in the
 * mode (mixed: 0..P-2 NVFP4, P-1 BF16), then the next C tokens are scored by teacher
 * forcing in the mode's decode precision (BF16 for bf16/mixed, NVFP4 for fp4). Reported:
 * mean NLL of the C tokens, mean KL(bf16 || mode) of the full next-token distributions
 * (nats), and top-1 agreement with bf16.
 *
 * Prints a table, then last the five summary lines of issue 3.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "tests/bench/eval_modes.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "kernels/mq_kernels.h"
#include "engine/pool.h"
#include "common/errmsg.h"

/* When $MQ_SHARED/golden/<model folder name>/logits.json exists and covers the same
 * documents, prints transformers' perplexity next to mq's bf16 one. */
static void golden_compare(const char *model, int docs, long scored, double ppl)
{
    const char *root = getenv("MQ_SHARED"), *name = strrchr(model, '/');
    name = name && name[1] ? name + 1 : model;
    char path[8192];
    snprintf(path, sizeof path, "%s/golden/%s/logits.json", root && *root ? root : "../shared", name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *txt = len > 0 ? malloc((size_t)len) : NULL;
    cJSON *root_js =
        txt && fread(txt, 1, (size_t)len, f) == (size_t)len ? cJSON_ParseWithLength(txt, (size_t)len) : NULL;
    fclose(f);
    free(txt);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root_js, "perplexity");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(p, "docs"), *t = cJSON_GetObjectItemCaseSensitive(p, "tokens"),
                *g = cJSON_GetObjectItemCaseSensitive(p, "ppl");
    if (cJSON_IsNumber(d) && cJSON_IsNumber(t) && cJSON_IsNumber(g) && d->valueint == docs &&
        (long)t->valuedouble == scored)
        printf("golden (transformers, FP32 compute) perplexity on the same %d documents: %.3f; bf16 mode %+.3f%%\n",
               docs, g->valuedouble, 100.0 * (ppl / g->valuedouble - 1));
    cJSON_Delete(root_js);
}

static const mq_prec_mode MODES[3] = { MQ_PREC_MODE_BF16, MQ_PREC_MODE_MIXED, MQ_PREC_MODE_FP4 };

int main(int argc, char **argv)
{
    const char *root = getenv("MQ_SHARED");
    char model_def[4096], corpus_def[4096];
    snprintf(model_def, sizeof model_def, "%s/models/mq-qwen3-80m", root && *root ? root : "../shared");
    snprintf(corpus_def, sizeof corpus_def, "%s/corpus/dev.txt", root && *root ? root : "../shared");
    const char *model = model_def, *corpus = corpus_def;
    int docs = 200, n_cont = 100, threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--corpus"))
            corpus = argv[i + 1];
        else if (!strcmp(argv[i], "--docs"))
            docs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cont"))
            n_cont = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "mq_eval: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if ((argc - 1) % 2 || docs < 1 || n_cont < 0 || threads < 1) {
        fprintf(stderr, "usage: mq_eval [--model DIR] [--corpus FILE] [--docs N] [--cont N] [--threads N]\n");
        return 2;
    }
    mq_kernels_init();
    char err[MQ_ERRMSG_LEN] = "";
    mq_tokenizer *tok = NULL;
    int rc = mq_tok_load_dir(model, &tok, err, sizeof err);
    if (rc) {
        fprintf(stderr, "mq_eval: tokenizer: %s\n", err);
        return 1;
    }
    eval_corpus c;
    double t0 = mq_now_s();
    rc = eval_corpus_load(&c, corpus, tok, 0, EVAL_MAX_TOKENS, err, sizeof err);
    mq_tok_free(tok);
    if (rc) {
        fprintf(stderr, "mq_eval: %s\n", err);
        return 1;
    }
    ev v;
    rc = ev_init(&v, model, threads, err, sizeof err);
    if (rc) {
        fprintf(stderr, "mq_eval: %s: %s\n", model, *err ? err : strerror(-rc));
        ev_free(&v);
        eval_corpus_free(&c);
        return 1;
    }
    if (docs > c.n)
        docs = c.n;
    printf("mq_eval: %s, %s (%d documents), ISA %s, %d threads\n", model, corpus, c.n, mq_isa_name(mq_kernels_isa()),
           threads);

    /* ---- perplexity ---- */
    double ppl_sum[3] = { 0 }, ppl_time[3] = { 0 };
    long scored = 0;
    for (int i = 0; i < docs; i++)
        scored += c.docs[i].n > 1 ? c.docs[i].n - 1 : 0;
    for (int mi = 0; mi < 3 && !rc; mi++) {
        double t = mq_now_s();
        for (int i = 0; i < docs && !rc; i++)
            if (c.docs[i].n > 1)
                rc = doc_nll(&v, &c.docs[i], MODES[mi], &ppl_sum[mi], NULL);
        ppl_time[mi] = mq_now_s() - t;
        if (rc)
            fprintf(stderr, "mq_eval: perplexity, mode %s: %s\n", mq_prec_mode_name(MODES[mi]), strerror(-rc));
    }

    /* ---- continuations ---- */
    double nll[3] = { 0 }, kl[3] = { 0 }, cont_time = 0;
    long agree[3] = { 0 }, cont_tok = 0;
    int used = 0;
    float *lp[3] = { 0 };
    for (int mi = 0; mi < 3; mi++)
        lp[mi] = malloc((size_t)CONT * (size_t)v.vocab * sizeof(float));
    if (!lp[0] || !lp[1] || !lp[2])
        rc = rc ? rc : -ENOMEM;
    double t = mq_now_s();
    for (int i = 0; i < c.n && used < n_cont && !rc; i++) {
        const eval_doc *d = &c.docs[i];
        if (d->n < PREFIX + CONT)
            continue;
        for (int mi = 0; mi < 3 && !rc; mi++)
            rc = cont_logprobs(&v, d, MODES[mi], lp[mi]);
        if (rc) {
            fprintf(stderr, "mq_eval: continuation of document %d: %s\n", i, strerror(-rc));
            break;
        }
        for (int r = 0; r < CONT; r++) {
            int target = d->ids[PREFIX + r];
            const float *ref = lp[0] + (size_t)r * v.vocab;
            int top_ref = mq_argmax(ref, v.vocab);
            for (int mi = 0; mi < 3; mi++) {
                const float *row = lp[mi] + (size_t)r * v.vocab;
                nll[mi] -= row[target];
                double k = 0;
                for (int j = 0; j < v.vocab; j++)
                    k += exp((double)ref[j]) * ((double)ref[j] - (double)row[j]);
                kl[mi] += k;
                agree[mi] += mq_argmax(row, v.vocab) == top_ref;
            }
        }
        cont_tok += CONT;
        used++;
    }
    cont_time = mq_now_s() - t;
    for (int mi = 0; mi < 3; mi++)
        free(lp[mi]);
    if (rc) {
        ev_free(&v);
        eval_corpus_free(&c);
        return 1;
    }

    printf("\nperplexity: first %d documents, %ld scored tokens; continuations: %d documents x %d tokens "
           "after a %d-token prefix\n\n",
           docs, scored, used, CONT, PREFIX);
    printf("%-6s | %10s | %9s | %12s | %12s | %12s | %8s\n", "mode", "perplexity", "ppl time", "cont NLL", "KL vs bf16",
           "top-1 = bf16", "time");
    printf("-------+------------+-----------+--------------+--------------+--------------+---------\n");
    double denom = cont_tok ? (double)cont_tok : 1;
    for (int mi = 0; mi < 3; mi++)
        printf("%-6s | %10.3f | %8.1fs | %12.5f | %12.6f | %11.2f%% |\n", mq_prec_mode_name(MODES[mi]),
               exp(ppl_sum[mi] / (double)scored), ppl_time[mi], nll[mi] / denom, kl[mi] / denom,
               100.0 * (double)agree[mi] / denom);
    printf("(continuations: %.1f s for all three modes; total %.1f s)\n", cont_time, mq_now_s() - t0);
    golden_compare(model, docs, scored, exp(ppl_sum[0] / (double)scored));
    printf("\n");
    printf("ppl_bf16: %.4f\n", exp(ppl_sum[0] / (double)scored));
    printf("mixed_kl_vs_bf16: %.6f\n", kl[1] / denom);
    printf("fp4_kl_vs_bf16: %.6f\n", kl[2] / denom);
    printf("mixed_nll_delta: %.6f\n", (nll[1] - nll[0]) / denom);
    printf("fp4_nll_delta: %.6f\n", (nll[2] - nll[0]) / denom);
    ev_free(&v);
    eval_corpus_free(&c);
    return 0;
}
