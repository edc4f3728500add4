/* BF16 mode on mq-qwen3-80m against Hugging Face transformers (float32 compute from the
 * BF16 weights): shared/golden/mq-qwen3-80m/logits.json and last_logits.f32.
 *
 * mq's BF16 path differs from the reference by design (NVFP4.md "BF16"): activations
 * are rounded to BF16 before every linear and the KV cache is BF16. Each rounding is a
 * relative error of at most 2^-9 on one operand. The bounds are the issue's, plus
 * LAST_LOGITS_MAX_ABS for the raw last-position logits: 0.1. Why: the logits span about
 * ±20; the BF16 rounding of the final hidden state alone (2^-9 relative, 384 terms of
 * random sign against BF16 weights) moves a logit by ~0.01-0.02 typical, and the 12
 * layers' roundings add up to a few hundredths (measured max 0.035 over the 7 cases,
 * printed by the test). 0.1 is ~3x that, and well below the 0.1 top-2 gap the greedy
 * criterion uses, so a pass means the argmax-level behaviour matches.
 */
#include "tests/golden/golden_util.h"
#include "common/errmsg.h"

#include <cjson/cJSON.h>

#define LAST_LOGITS_MAX_ABS 0.1f
#define CHUNK               256

static mq_model *model;
static mq_engine *engine;
static mq_pool *pool;

static int *json_ints(const cJSON *a, int *n)
{
    *n = cJSON_GetArraySize(a);
    int *v = malloc(((size_t)*n + 1) * sizeof *v);
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) v[i++] = x->valueint;
    return v;
}

static void test_qwen3_bf16_golden(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    size_t jl = 0, ll = 0;
    char *js = harness_read_file(shared_path("golden/mq-qwen3-80m/logits.json"), &jl);
    float *last = (float *)harness_read_file(shared_path("golden/mq-qwen3-80m/last_logits.f32"), &ll);
    if (!js || !last)
        return;
    cJSON *root = cJSON_ParseWithLength(js, jl);
    CHECK(root != NULL, "logits.json parses");
    if (!root)
        return;
    const int V = model->cfg.vocab;
    float *logits = malloc((size_t)CHUNK * V * sizeof(float));
    float *step = malloc((size_t)V * sizeof(float));
    long positions = 0, argmax_ok = 0, top5_miss = 0, nlp = 0;
    double sum_dlp = 0, max_dlp = 0;
    float worst_last = 0;
    int greedy_same = 0, greedy_explained = 0, ncases = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases"))
    {
        int n, nam, ng;
        int *ids = json_ints(cJSON_GetObjectItem(cs, "ids"), &n);
        int *am = json_ints(cJSON_GetObjectItem(cs, "argmax"), &nam);
        int *greedy = json_ints(cJSON_GetObjectItem(cs, "greedy32"), &ng);
        const cJSON *top5 = cJSON_GetObjectItem(cs, "top5_ids");
        const cJSON *nlps = cJSON_GetObjectItem(cs, "next_logprob");
        long off = (long)cJSON_GetObjectItem(cs, "last_logits_offset")->valuedouble;
        CHECK(nam == n && cJSON_GetArraySize(top5) == n && ng == 32, "case %d shape", ncases);
        CHECK((size_t)(off + V) * 4 <= ll, "last_logits offset");

        gu_kv kv;
        CHECK(gu_kv_init(&kv, &model->cfg, 16, n + 40) == 0, "kv");
        for (int c0 = 0; c0 < n; c0 += CHUNK) {
            int len = n - c0 < CHUNK ? n - c0 : CHUNK;
            int rc = mq_engine_forward(engine, pool, &kv.seq, ids + c0, len, c0, MQ_PREC_BF16, logits, MQ_LOGITS_ALL);
            CHECK(rc == 0, "forward case %d chunk %d: %d", ncases, c0, rc);
            for (int i = 0; i < len; i++) {
                const int p = c0 + i;
                const float *x = logits + (size_t)i * V;
                int t5[5];
                mq_topk(x, V, 5, t5);
                positions++;
                argmax_ok += t5[0] == am[p];
                int in5 = 0;
                for (int j = 0; j < 5; j++)
                    in5 |= t5[j] == am[p];
                if (!in5)
                    top5_miss++;
                CHECK(in5, "case %d pos %d: golden top-1 %d not in mq's top-5", ncases, p, am[p]);
                (void)top5;
                if (p + 1 < n) {
                    double g = cJSON_GetArrayItem(nlps, p)->valuedouble;
                    double d = fabs(gu_logprob(x, V, ids[p + 1]) - g);
                    sum_dlp += d;
                    if (d > max_dlp)
                        max_dlp = d;
                    nlp++;
                }
                if (p == n - 1) {
                    float d = gu_max_abs_diff(x, last + off, (size_t)V);
                    if (!(d <= worst_last))
                        worst_last = d;
                    memcpy(step, x, (size_t)V * sizeof(float));
                }
            }
        }
        /* greedy 32: argmax, decode, repeat */
        int same = 1, pos = n;
        for (int s = 0; s < 32; s++) {
            int t2[2];
            mq_topk(step, V, 2, t2);
            if (t2[0] != greedy[s]) {
                same = 0;
                float gap = step[t2[0]] - step[t2[1]];
                /* a divergence is acceptable only where mq's top two were nearly tied */
                int tied = gap < 0.1f && t2[1] == greedy[s];
                greedy_explained += tied;
                printf("    case %d: greedy diverges at step %d (mq %d, golden %d, top-2 gap %.4f)\n", ncases, s, t2[0],
                       greedy[s], gap);
                CHECK(gap < 0.1f, "case %d step %d: top-2 gap %.4f >= 0.1", ncases, s, gap);
                break;
            }
            int rc = mq_engine_decode(engine, pool, &kv.seq, &t2[0], &pos, 1, MQ_PREC_BF16, step);
            CHECK(rc == 0, "decode %d", rc);
            pos++;
        }
        greedy_same += same;
        printf("    case %d (%d tokens): running argmax agreement %ld/%ld, mean |dlogprob| %.5f\n", ncases, n,
               argmax_ok, positions, nlp ? sum_dlp / nlp : 0.0);
        fflush(stdout);
        gu_kv_free(&kv);
        free(ids);
        free(am);
        free(greedy);
        ncases++;
    }
    CHECK(ncases == 7, "7 cases, got %d", ncases);
    double agree = positions ? (double)argmax_ok / positions : 0, mean_dlp = nlp ? sum_dlp / nlp : 1;
    printf("    qwen3 bf16 vs golden: positions %ld, argmax agreement %.4f, top-5 misses %ld, "
           "mean |dlogprob| %.5f (max %.4f), greedy32 identical %d/7 (%d divergences at near-ties), "
           "last-logits max |diff| %.4f\n",
           positions, agree, top5_miss, mean_dlp, max_dlp, greedy_same, greedy_explained, worst_last);
    CHECK(agree >= 0.98, "argmax agreement %.4f < 0.98", agree);
    CHECK(mean_dlp <= 0.03, "mean |dlogprob| %.5f > 0.03", mean_dlp);
    CHECK(greedy_same >= 5, "greedy32 identical in %d < 5 cases", greedy_same);
    CHECK(worst_last <= LAST_LOGITS_MAX_ABS, "last logits max |diff| %.4f > %.2f", worst_last, LAST_LOGITS_MAX_ABS);
    cJSON_Delete(root);
    free(js);
    free(last);
    free(logits);
    free(step);
    (void)err;
}

int main(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    mq_kernels_init();
    mq_model_opts o = { .no_fp4 = 1 };
    int rc = mq_model_load(shared_path("models/mq-qwen3-80m"), &o, &model, err, sizeof err);
    if (rc) {
        fprintf(stderr, "load: %s\n", err);
        printf("@@ 0 1\n");
        return 1;
    }
    printf("    model: bf16 %.1f MiB, fp4 %.1f MiB, isa %s\n", model->bf16_bytes / 1048576.0,
           model->fp4_bytes / 1048576.0, mq_isa_name(mq_kernels_isa()));
    mq_engine_opts eo = { .max_chunk = CHUNK, .max_batch = 1, .block_tokens = 16, .max_context = 4096 };
    if (mq_engine_create(&engine, model, &eo, err, sizeof err) || mq_pool_create(&pool, 2, NULL, "golden")) {
        fprintf(stderr, "engine: %s\n", err);
        printf("@@ 0 1\n");
        return 1;
    }
    RUN(test_qwen3_bf16_golden);
    mq_engine_free(engine);
    mq_pool_destroy(pool);
    mq_model_free(model);
    return harness_done();
}
