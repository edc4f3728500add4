/* The engine's contracts on mq-qwen3-80m, beyond the golden numbers:
 *  - chunked prefill over small paged blocks equals one big forward (in BF16 bit for bit
 *    at every chunk length, 1 included);
 *  - a decode batch of different sequences equals each sequence decoded alone;
 *  - the mode rule: mixed = FP4 KV for tokens 0..n-2, then BF16 for the last token;
 *  - fp4 differs from bf16 but stays close (bounds below, measured figures printed);
 *  - a compressed-tensors nvfp4-pack-quantized checkpoint written from mq's own
 *    quantizer loads back to the same NVFP4 weights and the same logits.
 *
 * Equality tolerance: the kernels may pick different code paths for different row
 * counts (GEMV for m <= 8, tiled GEMM above: prompts take the tiled one at every m,
 * decode steps the GEMV), which reorders FP32 sums. The BF16 activations rounded from those sums can then differ in
 * their last bit, so "equal" means max |dlogit| <= SAME_TOL (logits span ±20).
 */
#include "common/clock.h"
#include "tests/golden/golden_util.h"
#include "engine/safetensors.h"
#include "common/errmsg.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#define SAME_TOL 0.06f
/* fp4 vs bf16 over the 512-token golden prompt: measured top-1 0.87, mean KL 0.038 nats;
 * the bounds leave room for kernel changes, not for a broken path (a wrong scale or
 * padding bug gives KL > 1). */
#define FP4_MIN_TOP1    0.80
#define FP4_MAX_MEAN_KL 0.08

static mq_model *model;
static mq_pool *pool;
static int *ids512, n512;

static int *golden_ids(int want_len, int *n)
{
    size_t jl;
    char *js = harness_read_file(shared_path("golden/mq-qwen3-80m/logits.json"), &jl);
    if (!js)
        return NULL;
    cJSON *root = cJSON_ParseWithLength(js, jl);
    int *v = NULL;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases"))
    {
        const cJSON *a = cJSON_GetObjectItem(cs, "ids");
        if (cJSON_GetArraySize(a) != want_len)
            continue;
        *n = want_len;
        v = malloc((size_t)want_len * sizeof *v);
        int i = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, a) v[i++] = x->valueint;
    }
    cJSON_Delete(root);
    free(js);
    return v;
}

static mq_engine *engine(int chunk, int batch, int bt)
{
    char err[MQ_ERRMSG_LEN];
    mq_engine *e = NULL;
    mq_engine_opts o = { .max_chunk = chunk, .max_batch = batch, .block_tokens = bt, .max_context = 1024 };
    CHECK(mq_engine_create(&e, model, &o, err, sizeof err) == 0, "engine: %s", err);
    return e;
}

static void test_chunked_prefill(void)
{
    const int V = model->cfg.vocab, N = 128;
    float *one = malloc((size_t)N * V * 4), *chunked = malloc((size_t)N * V * 4);
    mq_engine *big = engine(N, 1, 16);
    gu_kv kv;
    gu_kv_init(&kv, &model->cfg, 16, N);
    CHECK(mq_engine_forward(big, pool, &kv.seq, ids512, N, 0, MQ_PREC_BF16, one, MQ_LOGITS_ALL) == 0, "single-shot");
    gu_kv_free(&kv);
    const int chunks[] = { 1, 5, 32, 100 }, blocks[] = { 3, 4, 16, 7 };
    for (int c = 0; c < 4; c++) {
        mq_engine *e = engine(chunks[c], 1, blocks[c]);
        gu_kv_init(&kv, &model->cfg, blocks[c], N);
        int rc = 0;
        for (int p = 0; p < N && !rc; p += chunks[c]) {
            int len = N - p < chunks[c] ? N - p : chunks[c];
            rc = mq_engine_forward(e, pool, &kv.seq, ids512 + p, len, p, MQ_PREC_BF16, chunked + (size_t)p * V,
                                   MQ_LOGITS_ALL);
        }
        CHECK(rc == 0, "chunked forward %d", rc);
        float d = gu_max_abs_diff(one, chunked, (size_t)N * V);
        printf("    chunk %3d, block_tokens %2d: max |dlogit| vs single-shot %.5f\n", chunks[c], blocks[c], d);
        /* a prompt's BF16 rows are summed the same way at any chunk length (engine.h) */
        CHECK(d == 0.0f, "chunk %d: %.5f, want bit-identical", chunks[c], d);
        gu_kv_free(&kv);
        mq_engine_free(e);
    }
    /* last-row-only logits equal the last row of the all-rows call */
    mq_engine *e = engine(N, 1, 16);
    gu_kv_init(&kv, &model->cfg, 16, N);
    float *lastrow = malloc((size_t)V * 4);
    CHECK(mq_engine_forward(e, pool, &kv.seq, ids512, N, 0, MQ_PREC_BF16, lastrow, MQ_LOGITS_LAST) == 0, "last row");
    CHECK(gu_max_abs_diff(lastrow, one + (size_t)(N - 1) * V, (size_t)V) <= SAME_TOL, "logits_rows=1 is the last row");
    CHECK(mq_argmax(lastrow, V) == mq_argmax(one + (size_t)(N - 1) * V, V), "same top-1");
    /* errors: too many tokens, a token outside the vocabulary, too few KV blocks */
    int bad = V;
    CHECK(mq_engine_forward(e, pool, &kv.seq, ids512, N + 1, 0, MQ_PREC_BF16, NULL, MQ_LOGITS_NONE) == -EINVAL,
          "n > max_chunk");
    CHECK(mq_engine_forward(e, pool, &kv.seq, &bad, 1, 0, MQ_PREC_BF16, NULL, MQ_LOGITS_NONE) == -EINVAL,
          "token >= vocab");
    CHECK(mq_engine_forward(e, pool, &kv.seq, ids512, 1, N, MQ_PREC_BF16, NULL, MQ_LOGITS_NONE) == -EINVAL,
          "beyond the KV");
    CHECK(mq_engine_forward(e, pool, &kv.seq, ids512, 1, 0, MQ_PREC_BF16, lastrow, (mq_logits)N) == -EINVAL,
          "a row count where an mq_logits belongs");
    CHECK(mq_engine_forward(e, pool, &kv.seq, ids512, 1, 0, MQ_PREC_BF16, NULL, MQ_LOGITS_LAST) == -EINVAL,
          "logits wanted, no buffer");
    mq_engine *bad_e = NULL;
    char msg[MQ_ERRMSG_LEN] = "";
    mq_engine_opts bo = { .max_chunk = 1 << 21, .max_batch = 1, .block_tokens = 16 };
    CHECK(mq_engine_create(&bad_e, model, &bo, msg, sizeof msg) == -EINVAL && !bad_e && strstr(msg, "2097152") &&
              strstr(msg, "1048576"),
          "max_chunk over its bound refused, the message names value and bound: %s", msg);
    gu_kv_free(&kv);
    mq_engine_free(e);
    mq_engine_free(big);
    free(one);
    free(chunked);
    free(lastrow);
}

/* Batch invariance: a decode batch gives every sequence, bit for bit, the logits it gets
 * alone, in both precisions, for a batch of 3 (the kernels' GEMV path) and of 12 (past
 * it: the engine keeps the GEMV order), with sequences of very different lengths and
 * activations (NVFP4: each sequence keeps its own global scale). */
static void test_decode_batch(void)
{
    enum { MAX_S = 12 };
    const int V = model->cfg.vocab;
    static const int sizes[2] = { 3, MAX_S };
    for (int si = 0; si < 2; si++)
        for (int prec = 0; prec < 2; prec++) {
            const int S = sizes[si];
            mq_engine *e = engine(64, S, 8);
            gu_kv kv[MAX_S];
            int tok[MAX_S], pos[MAX_S];
            mq_kv_seq seqs[MAX_S];
            float *alone = malloc((size_t)S * V * 4), *batch = malloc((size_t)S * V * 4);
            for (int s = 0; s < S; s++) {
                const int len = 5 + (s * 37) % 60, off = (s * 41) % 400;
                gu_kv_init(&kv[s], &model->cfg, 8, 64);
                CHECK(mq_engine_forward(e, pool, &kv[s].seq, ids512 + off, len, 0, MQ_PREC_BF16, NULL,
                                        MQ_LOGITS_NONE) == 0,
                      "prefill");
                tok[s] = ids512[off + len];
                pos[s] = len;
                seqs[s] = kv[s].seq;
            }
            /* alone: one sequence at a time (rewrites the same KV position with the same values) */
            for (int s = 0; s < S; s++)
                CHECK(mq_engine_decode(e, pool, &kv[s].seq, &tok[s], &pos[s], 1, (mq_prec)prec,
                                       alone + (size_t)s * V) == 0,
                      "alone");
            CHECK(mq_engine_decode(e, pool, seqs, tok, pos, S, (mq_prec)prec, batch) == 0, "batch");
            float d = gu_max_abs_diff(alone, batch, (size_t)S * V);
            printf("    decode batch of %d (%s) vs alone: max |dlogit| %.5f\n", S, prec ? "fp4" : "bf16", d);
            CHECK(memcmp(alone, batch, (size_t)S * V * 4) == 0, "batch of %d (%s) differs from alone: %g", S,
                  prec ? "fp4" : "bf16", d);
            /* and the next step continues from the batch's KV */
            for (int s = 0; s < S; s++) {
                tok[s] = mq_argmax(batch + (size_t)s * V, V);
                pos[s]++;
            }
            CHECK(mq_engine_decode(e, pool, seqs, tok, pos, S, (mq_prec)prec, batch) == 0, "second step");
            for (int s = 0; s < S; s++)
                gu_kv_free(&kv[s]);
            free(alone);
            free(batch);
            mq_engine_free(e);
        }
}

/* Whether x and y hold the same K (BF16 bits) for layer l, position p, every kv-head
 * (engine.h: head-major blocks, [n_kv][bt][head_dim] per layer). */
static int kv_k_same(const gu_kv *x, const gu_kv *y, int bt, int l, int p)
{
    const mq_config *c = &model->cfg;
    const size_t hd = (size_t)c->head_dim, kvd = (size_t)c->n_kv * hd;
    for (int h = 0; h < c->n_kv; h++) {
        const size_t off = (size_t)l * 2 * bt * kvd + ((size_t)h * bt + (size_t)(p % bt)) * hd;
        if (memcmp((const uint16_t *)x->blocks[p / bt] + off, (const uint16_t *)y->blocks[p / bt] + off, hd * 2))
            return 0;
    }
    return 1;
}

static void test_mode_rule(void)
{
    const mq_config *c = &model->cfg;
    const int V = c->vocab, N = 200, bt = 16, chunk = 64;
    mq_engine *e = engine(chunk, 1, bt);
    gu_kv a, b, f, m;
    gu_kv_init(&a, c, bt, N);
    gu_kv_init(&b, c, bt, N);
    gu_kv_init(&f, c, bt, N);
    gu_kv_init(&m, c, bt, N);
    float *ref = malloc((size_t)V * 4), *mixed = malloc((size_t)V * 4), *bf = malloc((size_t)V * 4),
          *fp = malloc((size_t)V * 4);
    /* the rule spelled out with engine calls: FP4 for 0..n-2, then BF16 for n-1, summed as
     * a decode step is (engine.h) */
    int rc = 0;
    for (int p = 0; p < N - 1 && !rc; p += chunk) {
        int len = N - 1 - p < chunk ? N - 1 - p : chunk;
        rc = mq_engine_forward(e, pool, &a.seq, ids512 + p, len, p, MQ_PREC_FP4, NULL, MQ_LOGITS_NONE);
    }
    CHECK(rc == 0, "fp4 body");
    const int last_tok = ids512[N - 1], last_pos = N - 1;
    CHECK(mq_engine_decode(e, pool, &a.seq, &last_tok, &last_pos, 1, MQ_PREC_BF16, ref) == 0, "bf16 last");
    CHECK(mq_engine_prompt(e, pool, &m.seq, ids512, N, 0, MQ_PREC_MODE_MIXED, mixed) == 0, "mixed");
    CHECK(mq_engine_prompt(e, pool, &b.seq, ids512, N, 0, MQ_PREC_MODE_BF16, bf) == 0, "bf16");
    CHECK(mq_engine_prompt(e, pool, &f.seq, ids512, N, 0, MQ_PREC_MODE_FP4, fp) == 0, "fp4");
    CHECK(gu_max_abs_diff(ref, mixed, (size_t)V) == 0.0f, "mixed == FP4 KV + BF16 last token");
    /* the KV of 0..n-2 is the FP4 one in mixed, the BF16 one in bf16 mode */
    /* (fp4 mode's last chunk holds one token more, so its amax may differ: compare the
     * full chunks before it) */
    int kv_fp4_same = 1, kv_rule_same = 1, kv_bf16_diff = 0;
    const int full = (N - 1) / chunk * chunk;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < N - 1; p++) {
            kv_rule_same &= kv_k_same(&m, &a, bt, l, p);
            if (p < full)
                kv_fp4_same &= kv_k_same(&m, &f, bt, l, p);
            kv_bf16_diff |= !kv_k_same(&m, &b, bt, l, p);
        }
    CHECK(kv_rule_same, "mixed prompt KV equals the FP4 forward's KV for tokens 0..n-2");
    CHECK(kv_fp4_same, "mixed prompt KV equals fp4 mode's KV (full chunks)");
    CHECK(kv_bf16_diff, "mixed prompt KV differs from bf16 mode's");
    /* the last token itself ran BF16: its K differs from fp4 mode's (layer 1 on, where
     * the linears' input already differs) */
    CHECK(!kv_k_same(&m, &f, bt, 1, N - 1), "last token not FP4 in mixed");
    float dm = gu_max_abs_diff(mixed, bf, (size_t)V), df = gu_max_abs_diff(fp, bf, (size_t)V);
    printf("    last-token logits vs bf16 mode: mixed max |d| %.4f, fp4 max |d| %.4f\n", dm, df);
    CHECK(dm > 0 && df > 0, "modes differ");
    gu_kv_free(&a);
    gu_kv_free(&b);
    gu_kv_free(&f);
    gu_kv_free(&m);
    free(ref);
    free(mixed);
    free(bf);
    free(fp);
    mq_engine_free(e);
}

static void test_fp4_close_to_bf16(void)
{
    const int V = model->cfg.vocab, N = 512, chunk = 128;
    mq_engine *e = engine(chunk, 1, 16);
    float *lb = malloc((size_t)chunk * V * 4), *lf = malloc((size_t)chunk * V * 4);
    gu_kv kb, kf;
    gu_kv_init(&kb, &model->cfg, 16, N);
    gu_kv_init(&kf, &model->cfg, 16, N);
    double kl = 0, maxd = 0, tb = 0, tf = 0;
    int top1 = 0;
    for (int p = 0; p < N; p += chunk) {
        double t0 = mq_now_s();
        CHECK(mq_engine_forward(e, pool, &kb.seq, ids512 + p, chunk, p, MQ_PREC_BF16, lb, MQ_LOGITS_ALL) == 0, "bf16");
        double t1 = mq_now_s();
        CHECK(mq_engine_forward(e, pool, &kf.seq, ids512 + p, chunk, p, MQ_PREC_FP4, lf, MQ_LOGITS_ALL) == 0, "fp4");
        tb += t1 - t0;
        tf += mq_now_s() - t1;
        for (int i = 0; i < chunk; i++) {
            float *b = lb + (size_t)i * V, *f = lf + (size_t)i * V;
            top1 += mq_argmax(b, V) == mq_argmax(f, V);
            double d = gu_max_abs_diff(b, f, (size_t)V);
            if (d > maxd)
                maxd = d;
            double lsb = mq_logsumexp(b, V), lsf = mq_logsumexp(f, V), s = 0;
            for (int v = 0; v < V; v++) {
                double pb = exp(b[v] - lsb);
                s += pb * ((b[v] - lsb) - (f[v] - lsf));
            }
            kl += s;
        }
    }
    printf("    fp4 vs bf16 (512 tokens): top-1 agreement %.4f, mean KL %.4f nats, max |dlogit| %.3f\n",
           (double)top1 / N, kl / N, maxd);
    /* for scale only (the machine is shared): with every row's logits, then KV only */
    double t0 = mq_now_s();
    for (int p = 0; p < N; p += chunk)
        CHECK(mq_engine_forward(e, pool, &kb.seq, ids512 + p, chunk, p, MQ_PREC_BF16, NULL, MQ_LOGITS_NONE) == 0,
              "bf16");
    double t1 = mq_now_s();
    for (int p = 0; p < N; p += chunk)
        CHECK(mq_engine_forward(e, pool, &kf.seq, ids512 + p, chunk, p, MQ_PREC_FP4, NULL, MQ_LOGITS_NONE) == 0, "fp4");
    double t2 = mq_now_s();
    printf("    prefill, 2 threads, chunk %d: with all-rows logits bf16 %.0f / fp4 %.0f tok/s; "
           "KV only bf16 %.0f / fp4 %.0f tok/s\n",
           chunk, N / tb, N / tf, N / (t1 - t0), N / (t2 - t1));
    CHECK((double)top1 / N >= FP4_MIN_TOP1, "fp4 top-1 agreement %.3f", (double)top1 / N);
    CHECK(kl / N <= FP4_MAX_MEAN_KL, "fp4 mean KL %.4f", kl / N);
    CHECK(maxd > 0.05, "fp4 really is a different computation");
    gu_kv_free(&kb);
    gu_kv_free(&kf);
    free(lb);
    free(lf);
    mq_engine_free(e);
}

/* ---- compressed-tensors round trip -------------------------------------------------- */

static void add(mq_st_writer *w, const char *name, mq_dtype dt, int64_t d0, int64_t d1, int nd, const void *p)
{
    int64_t sh[2] = { d0, d1 };
    CHECK(mq_st_writer_add(w, name, dt, sh, nd, p, NULL, NULL) == 0, "add %s", name);
}

/* Writes mq-qwen3-80m as compressed-tensors into dir; static_gx > 0 adds
 * input_global_scale = static_gx to every linear. */
static void write_ct(const char *dir, float static_gx);

static void write_ct(const char *dir, float static_gx)
{
    const mq_config *c = &model->cfg;
    char path[512], err[MQ_ERRMSG_LEN] = "";
    /* config.json: the original plus quantization_config */
    size_t cl;
    char *cj = harness_read_file(shared_path("models/mq-qwen3-80m/config.json"), &cl);
    cJSON *root = cJSON_ParseWithLength(cj, cl);
    cJSON *q =
        cJSON_Parse("{\"quant_method\":\"compressed-tensors\",\"format\":\"nvfp4-pack-quantized\","
                    "\"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],\"weights\":{\"num_bits\":4,"
                    "\"type\":\"float\",\"strategy\":\"tensor_group\",\"group_size\":16}}},\"ignore\":[\"lm_head\"]}");
    cJSON_AddItemToObject(root, "quantization_config", q);
    char *txt = cJSON_Print(root);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fc = fopen(path, "w");
    fputs(txt, fc);
    fclose(fc);
    free(txt);
    cJSON_Delete(root);
    free(cj);

    /* tensors: embed + norms as BF16, linears as weight_packed/weight_scale/global scale */
    mq_st_writer *w;
    mq_st_writer_create(&w);
    const int D = c->hidden;
    uint16_t *norms = malloc((size_t)(c->n_layers * (2 * D + 2 * c->head_dim) + D) * 2), *np = norms;
    static const char *ln[7] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                 "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj" };
    char nm[256];
    uint16_t *embed = malloc((size_t)c->vocab * D * 2); /* row-major, whatever the model's layout */
    float *erow = malloc((size_t)D * sizeof *erow);
    for (int r = 0; r < c->vocab; r++) {
        mq_bf16_weight_row(&model->embed, r, erow);
        mq_f32_to_bf16_row(erow, embed + (size_t)r * D, (size_t)D);
    }
    free(erow);
    add(w, "model.embed_tokens.weight", MQ_DT_BF16, c->vocab, D, 2, embed);
    mq_f32_to_bf16_row(model->final_norm, np, (size_t)D);
    add(w, "model.norm.weight", MQ_DT_BF16, D, 0, 1, np);
    np += D;
    for (int l = 0; l < c->n_layers; l++) {
        const mq_layer *L = &model->layers[l];
        const float *vec[4] = { L->attn_norm, L->ffn_norm, L->q_norm, L->k_norm };
        const char *vn[4] = { "input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm" };
        for (int v = 0; v < 4; v++) {
            int n = v < 2 ? D : c->head_dim;
            mq_f32_to_bf16_row(vec[v], np, (size_t)n);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, vn[v]);
            add(w, nm, MQ_DT_BF16, n, 0, 1, np);
            np += n;
        }
        const mq_linear *lins[7] = { &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down };
        for (int j = 0; j < 7; j++) {
            const mq_fp4_weight *fw = &lins[j]->fp4;
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_packed", l, ln[j]);
            add(w, nm, MQ_DT_U8, fw->n, fw->k / 2, 2, fw->codes);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_scale", l, ln[j]);
            add(w, nm, MQ_DT_F8_E4M3, fw->n, fw->k / 16, 2, fw->scales);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_global_scale", l, ln[j]);
            add(w, nm, MQ_DT_F32, 1, 0, 1, &fw->g);
            if (static_gx > 0) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.input_global_scale", l, ln[j]);
                add(w, nm, MQ_DT_F32, 1, 0, 1, &static_gx);
            }
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(mq_st_writer_write(w, path, err, sizeof err) == 0, "write: %s", err);
    mq_st_writer_free(w);
    free(norms);
    free(embed);
}

static void test_compressed_tensors_roundtrip(void)
{
    const mq_config *c = &model->cfg;
    char dir[] = "/tmp/mq-ct-XXXXXX", err[MQ_ERRMSG_LEN] = "";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    write_ct(dir, 0);

    /* load with the original as the BF16 folder: same NVFP4 weights, same logits */
    mq_model *ct = NULL, *ct_alone = NULL;
    mq_model_opts o = { .bf16_dir = shared_path("models/mq-qwen3-80m") };
    char bdir[512];
    snprintf(bdir, sizeof bdir, "%s", o.bf16_dir);
    o.bf16_dir = bdir;
    CHECK(mq_model_load(dir, &o, &ct, err, sizeof err) == 0, "load compressed-tensors + bf16: %s", err);
    CHECK(mq_model_load(dir, NULL, &ct_alone, err, sizeof err) == 0, "load compressed-tensors alone: %s", err);
    if (ct && ct_alone) {
        int same = 1;
        for (int l = 0; l < c->n_layers; l++) {
            const mq_fp4_weight *a = &model->layers[l].down.fp4, *b = &ct->layers[l].down.fp4;
            same &= a->g == b->g && !memcmp(a->codes, b->codes, (size_t)a->n * a->kp / 2) &&
                    !memcmp(a->scales, b->scales, (size_t)a->n * a->kp / 16);
        }
        CHECK(same, "NVFP4 weights loaded as stored");
        CHECK(!memcmp(ct->layers[3].up.bf16.w, model->layers[3].up.bf16.w, (size_t)c->inter * c->hidden * 2),
              "BF16 decode weights from the BF16 folder");
        /* alone: BF16 = dequantized NVFP4 */
        float row[2048], got[2048];
        const mq_fp4_weight *fw = &ct_alone->layers[2].gate.fp4;
        mq_fp4_dequantize_row(fw->codes, fw->scales, fw->k, fw->g, row);
        mq_bf16_weight_row(&ct_alone->layers[2].gate.bf16, 0, got); /* either layout */
        int dq = 1;
        for (int i = 0; i < fw->k; i++)
            dq &= mq_f32_to_bf16(got[i]) == mq_f32_to_bf16(row[i]);
        CHECK(dq, "BF16 from dequantized NVFP4 when no BF16 folder");

        const int V = c->vocab, N = 64;
        float *l0 = malloc((size_t)V * 4), *l1 = malloc((size_t)V * 4);
        char e2[MQ_ERRMSG_LEN];
        mq_engine *e0 = engine(N, 1, 16), *e1 = NULL;
        mq_engine_opts eo = { .max_chunk = N, .max_batch = 1, .block_tokens = 16, .max_context = 1024 };
        CHECK(mq_engine_create(&e1, ct, &eo, e2, sizeof e2) == 0, "engine ct");
        for (int mode = 0; mode < 3; mode++) {
            gu_kv k0, k1;
            gu_kv_init(&k0, c, 16, N);
            gu_kv_init(&k1, c, 16, N);
            CHECK(mq_engine_prompt(e0, pool, &k0.seq, ids512, N, 0, (mq_prec_mode)mode, l0) == 0, "prompt");
            CHECK(mq_engine_prompt(e1, pool, &k1.seq, ids512, N, 0, (mq_prec_mode)mode, l1) == 0, "prompt ct");
            CHECK(gu_max_abs_diff(l0, l1, (size_t)V) == 0.0f, "mode %s: compressed-tensors model == quantized at load",
                  mq_prec_mode_name((mq_prec_mode)mode));
            gu_kv_free(&k0);
            gu_kv_free(&k1);
        }
        free(l0);
        free(l1);
        mq_engine_free(e0);
        mq_engine_free(e1);
    }
    mq_model_free(ct);
    mq_model_free(ct_alone);

    /* static activation scale (input_global_scale): used as g_x instead of the dynamic
     * one. 2688/64 = a calibrated amax of 64; larger blocks saturate (NVFP4.md). */
    const float gx = 2688.0f / 64.0f;
    write_ct(dir, gx);
    mq_model *st = NULL;
    CHECK(mq_model_load(dir, &o, &st, err, sizeof err) == 0, "load with static scales: %s", err);
    if (st) {
        CHECK(st->layers[5].down.in_g == gx && st->layers[0].q.in_g == gx, "input_global_scale read");
        const int V = c->vocab, N = 64;
        float *ld = malloc((size_t)V * 4), *ls = malloc((size_t)V * 4);
        mq_engine *e0 = engine(N, 1, 16), *e1 = NULL;
        mq_engine_opts eo = { .max_chunk = N, .max_batch = 1, .block_tokens = 16, .max_context = 1024 };
        CHECK(mq_engine_create(&e1, st, &eo, err, sizeof err) == 0, "engine static");
        gu_kv k0, k1;
        gu_kv_init(&k0, c, 16, N);
        gu_kv_init(&k1, c, 16, N);
        CHECK(mq_engine_prompt(e0, pool, &k0.seq, ids512, N, 0, MQ_PREC_MODE_FP4, ld) == 0, "dynamic");
        CHECK(mq_engine_prompt(e1, pool, &k1.seq, ids512, N, 0, MQ_PREC_MODE_FP4, ls) == 0, "static");
        float d = gu_max_abs_diff(ld, ls, (size_t)V);
        printf("    fp4 static g_x (amax 64) vs dynamic: last-token max |dlogit| %.3f\n", d);
        CHECK(isfinite(d) && d > 0, "static scale changes the result and stays finite");
        gu_kv_free(&k0);
        gu_kv_free(&k1);
        free(ld);
        free(ls);
        mq_engine_free(e0);
        mq_engine_free(e1);
    }
    mq_model_free(st);
    harness_rm_rf(dir);
}

int main(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    mq_kernels_init();
    ids512 = golden_ids(512, &n512);
    int rc = !ids512 ? -ENOENT : mq_model_load(shared_path("models/mq-qwen3-80m"), NULL, &model, err, sizeof err);
    if (!rc)
        rc = mq_pool_create(&pool, 2, NULL, "modes");
    CHECK(rc == 0, "set-up (%d): %s", rc, ids512 ? err : "no golden ids");
    if (rc)
        return harness_done(); /* counts the failed set-up */
    printf("    model sizes: bf16 %.1f MiB, nvfp4 %.1f MiB, fp32 %.2f MiB\n", model->bf16_bytes / 1048576.0,
           model->fp4_bytes / 1048576.0, model->other_bytes / 1048576.0);
    RUN(test_chunked_prefill);
    RUN(test_decode_batch);
    RUN(test_mode_rule);
    RUN(test_fp4_close_to_bf16);
    RUN(test_compressed_tensors_roundtrip);
    mq_pool_destroy(pool);
    mq_model_free(model);
    free(ids512);
    return harness_done();
}
