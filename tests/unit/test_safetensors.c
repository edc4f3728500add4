/* safetensors: writer → reader round trip, shards, and every malformation the reader
 * must turn into a clear error (never a crash: this runs under ASan). Also the model
 * loader's checks against the config, and a tiny synthetic model end to end. */
#include "engine/engine.h"
#include "tests/harness.h"
#include "engine/safetensors.h"
#include "common/errmsg.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static const char *tmp(const char *name)
{
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static void write_raw(const char *path, const char *json, size_t data_bytes, long hlen_override)
{
    FILE *f = fopen(path, "wb");
    uint64_t h = hlen_override >= 0 ? (uint64_t)hlen_override : strlen(json);
    for (int i = 0; i < 8; i++)
        fputc((int)(h >> (8 * i)) & 0xff, f);
    fputs(json, f);
    for (size_t i = 0; i < data_bytes; i++)
        fputc(0, f);
    fclose(f);
}

static void fill_seq(void *ctx, const char *name, uint64_t off, void *buf, size_t len)
{
    (void)ctx;
    (void)name;
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)(off + i);
}

static void test_roundtrip(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    mq_st_writer *w;
    uint16_t a[6] = { 1, 2, 3, 4, 5, 6 };
    float b[3] = { 1.5f, -2.0f, 3.25f };
    CHECK(mq_st_writer_create(&w) == 0, "create");
    CHECK(mq_st_writer_add(w, "a", MQ_DT_BF16, (int64_t[]){ 2, 3 }, 2, a, NULL, NULL) == 0, "add a");
    CHECK(mq_st_writer_add(w, "b", MQ_DT_F32, (int64_t[]){ 3 }, 1, b, NULL, NULL) == 0, "add b");
    CHECK(mq_st_writer_add(w, "c", MQ_DT_U8, (int64_t[]){ 5, 100 }, 2, NULL, fill_seq, NULL) == 0, "add c");
    CHECK(mq_st_writer_write(w, tmp("one.safetensors"), err, sizeof err) == 0, "write %s", err);
    mq_st_writer_free(w);
    mq_st *st;
    CHECK(mq_st_open_file(&st, tmp("one.safetensors"), err, sizeof err) == 0, "open: %s", err);
    if (!st)
        return;
    CHECK(st->n_tensors == 3, "3 tensors");
    const mq_st_tensor *ta = mq_st_find(st, "a"), *tb = mq_st_find(st, "b"), *tc = mq_st_find(st, "c");
    CHECK(ta && ta->dtype == MQ_DT_BF16 && ta->ndim == 2 && ta->shape[1] == 3 && ta->bytes == 12, "a");
    CHECK(tb && tb->dtype == MQ_DT_F32 && tb->bytes == 12 && ta->offset % 8 == 0, "b, aligned data");
    CHECK(tc && tc->bytes == 500 && !mq_st_find(st, "d"), "c");
    FILE *f = fopen(tmp("one.safetensors"), "rb");
    float got[3];
    uint8_t c[500];
    fseek(f, (long)tb->offset, SEEK_SET);
    CHECK(fread(got, 4, 3, f) == 3 && !memcmp(got, b, 12), "b's bytes");
    fseek(f, (long)tc->offset, SEEK_SET);
    CHECK(fread(c, 1, 500, f) == 500 && c[0] == 0 && c[499] == (uint8_t)499, "c's filled bytes");
    fclose(f);
    mq_st_close(st);
}

static void test_malformed(void)
{
    static const struct {
        const char *json;
        size_t data;
        long hlen;
        const char *want;
    } cases[] = {
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1, "\"x\"" }, /* truncated data */
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 100000, "header length" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, -1, "JSON" },
        { "{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "dtype" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1, "\"x\"" }, /* shape vs bytes */
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
          12, -1, "overlap" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, -1, "data_offsets" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, -1, "shape" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8, -1,
          "shape" },
        { "{\"x\":{\"dtype\":\"F32\"}}", 8, -1, "data_offsets" },
        { "[1,2]", 0, -1, "JSON" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[MQ_ERRMSG_LEN] = "";
        mq_st *st = NULL;
        write_raw(tmp("bad.safetensors"), cases[i].json, cases[i].data, cases[i].hlen);
        int rc = mq_st_open_file(&st, tmp("bad.safetensors"), err, sizeof err);
        CHECK(rc < 0 && !st && strstr(err, cases[i].want) && strstr(err, "bad.safetensors"),
              "case %zu: rc %d, error \"%s\" should name %s and the file", i, rc, err, cases[i].want);
    }
    /* a file shorter than the length field */
    FILE *f = fopen(tmp("tiny.safetensors"), "wb");
    fputs("abc", f);
    fclose(f);
    char err[MQ_ERRMSG_LEN] = "";
    mq_st *st = NULL;
    CHECK(mq_st_open_file(&st, tmp("tiny.safetensors"), err, sizeof err) < 0 && strstr(err, "truncated"), "tiny: %s",
          err);
    CHECK(mq_st_open_file(&st, tmp("missing.safetensors"), err, sizeof err) == -ENOENT, "missing file");
}

static void test_sharded(void)
{
    char err[MQ_ERRMSG_LEN] = "";
    write_raw(tmp("s1.safetensors"), "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1);
    write_raw(tmp("s2.safetensors"), "{\"y\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8, -1);
    FILE *f = fopen(tmp("model.safetensors.index.json"), "w");
    fputs("{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s2.safetensors\"}}", f);
    fclose(f);
    mq_st *st = NULL;
    CHECK(mq_st_open(&st, dir, err, sizeof err) == 0, "sharded: %s", err);
    if (st) {
        const mq_st_tensor *x = mq_st_find(st, "x"), *y = mq_st_find(st, "y");
        CHECK(st->n_files == 2 && x && y && x->file != y->file, "two shards");
        mq_st_close(st);
    }
    f = fopen(tmp("model.safetensors.index.json"), "w");
    fputs("{\"weight_map\":{\"x\":\"s1.safetensors\",\"z\":\"s2.safetensors\"}}", f);
    fclose(f);
    CHECK(mq_st_open(&st, dir, err, sizeof err) < 0 && strstr(err, "\"z\""), "index names a tensor its shard lacks: %s",
          err);
    f = fopen(tmp("model.safetensors.index.json"), "w");
    fputs("{\"weight_map\":{\"x\":\"../etc/passwd\"}}", f);
    fclose(f);
    CHECK(mq_st_open(&st, dir, err, sizeof err) < 0, "index escaping the folder: %s", err);
    unlink(tmp("model.safetensors.index.json"));
}

/* ---- a tiny synthetic model ------------------------------------------------------- */

#define TL  2
#define TD  32
#define TH  2
#define TKV 1
#define THD 16
#define TF  40 /* not a multiple of 16: NVFP4 padding */
#define TV  50

struct tiny {
    float *data[64];
    int n;
};

/* Writes config + model.safetensors for a Qwen2 (biases) model; dtype F32 or BF16 for
 * the weights. Values are BF16-representable so both files describe the same model.
 * `break_what`: 0 none, 1 wrong shape, 2 wrong dtype, 3 missing tensor, 4 extra tensor. */
static void write_tiny(const char *d, mq_dtype dt, int break_what)
{
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "w");
    fprintf(f,
            "{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":%d,\"hidden_size\":%d,"
            "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"intermediate_size\":%d,\"vocab_size\":%d,"
            "\"rms_norm_eps\":1e-6,\"rope_theta\":10000.0,\"tie_word_embeddings\":false}",
            TL, TD, TH, TKV, TF, TV);
    fclose(f);
    mq_st_writer *w;
    mq_st_writer_create(&w);
    unsigned long long seed = 42;
    void *keep[128];
    int nk = 0;
    char nm[128];
    const int qd = TH * THD, kvd = TKV * THD;
    struct {
        const char *fmt;
        int d0, d1;
        float scale;
    } ts[] = {
        { "model.layers.%d.input_layernorm.weight", TD, 0, -1 },
        { "model.layers.%d.post_attention_layernorm.weight", TD, 0, -1 },
        { "model.layers.%d.self_attn.q_proj.weight", qd, TD, 0.2f },
        { "model.layers.%d.self_attn.k_proj.weight", kvd, TD, 0.2f },
        { "model.layers.%d.self_attn.v_proj.weight", kvd, TD, 0.2f },
        { "model.layers.%d.self_attn.o_proj.weight", TD, qd, 0.2f },
        { "model.layers.%d.self_attn.q_proj.bias", qd, 0, 0.1f },
        { "model.layers.%d.self_attn.k_proj.bias", kvd, 0, 0.1f },
        { "model.layers.%d.self_attn.v_proj.bias", kvd, 0, 0.1f },
        { "model.layers.%d.mlp.gate_proj.weight", TF, TD, 0.2f },
        { "model.layers.%d.mlp.up_proj.weight", TF, TD, 0.2f },
        { "model.layers.%d.mlp.down_proj.weight", TD, TF, 0.2f },
    };
    for (int l = -1; l <= TL; l++) {
        int nt = l < 0 || l == TL ? 2 : (int)(sizeof ts / sizeof ts[0]);
        for (int t = 0; t < nt; t++) {
            int d0, d1;
            float sc;
            if (l < 0) {
                snprintf(nm, sizeof nm, t ? "lm_head.weight" : "model.embed_tokens.weight");
                d0 = TV;
                d1 = TD;
                sc = 1;
            } else if (l == TL) {
                if (t)
                    break;
                snprintf(nm, sizeof nm, "model.norm.weight");
                d0 = TD;
                d1 = 0;
                sc = -1;
            } else {
                snprintf(nm, sizeof nm, ts[t].fmt, l);
                d0 = ts[t].d0;
                d1 = ts[t].d1;
                sc = ts[t].scale;
            }
            size_t n = (size_t)d0 * (d1 ? d1 : 1);
            if (break_what == 3 && l == 1 && t == 3)
                continue;
            if (break_what == 1 && l == 1 && t == 4)
                d0 += 1, n += (size_t)(d1 ? d1 : 1);
            mq_dtype tdt = break_what == 2 && l == 0 && t == 2 ? MQ_DT_I32 : dt;
            void *buf = malloc(n * 4);
            for (size_t i = 0; i < n; i++) {
                float v = sc < 0 ? 1.0f + 0.1f * harness_uniform(&seed) : sc * harness_gauss(&seed);
                v = mq_bf16_to_f32(mq_f32_to_bf16(v));
                if (tdt == MQ_DT_BF16)
                    ((uint16_t *)buf)[i] = mq_f32_to_bf16(v);
                else
                    ((float *)buf)[i] = v;
            }
            keep[nk++] = buf;
            int64_t sh[2] = { d0, d1 };
            mq_st_writer_add(w, nm, tdt, sh, d1 ? 2 : 1, buf, NULL, NULL);
        }
    }
    if (break_what == 4) {
        static float extra[4];
        mq_st_writer_add(w, "model.layers.0.mlp.experts.weight", MQ_DT_F32, (int64_t[]){ 4 }, 1, extra, NULL, NULL);
    }
    char err[MQ_ERRMSG_LEN];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CHECK(mq_st_writer_write(w, p, err, sizeof err) == 0, "write tiny: %s", err);
    mq_st_writer_free(w);
    for (int i = 0; i < nk; i++)
        free(keep[i]);
}

static void tiny_logits(mq_model *m, mq_prec prec, int chunk, float *out /* [12, TV] */)
{
    char err[MQ_ERRMSG_LEN];
    mq_engine *e = NULL;
    mq_pool *pool = NULL;
    mq_engine_opts o = { .max_chunk = chunk, .max_batch = 2, .block_tokens = 4, .max_context = 16 };
    CHECK(mq_engine_create(&e, m, &o, err, sizeof err) == 0, "engine: %s", err);
    CHECK(mq_pool_create(&pool, 2, NULL, "tiny") == 0, "pool");
    if (!e || !pool) {
        mq_engine_free(e);
        mq_pool_destroy(pool);
        return;
    }
    uint8_t *blocks[4];
    for (int b = 0; b < 4; b++)
        blocks[b] = calloc(1, mq_kv_block_bytes(&m->cfg, 4));
    mq_kv_seq seq = { blocks, 4 };
    const int toks[12] = { 1, 7, 3, 49, 0, 22, 22, 5, 9, 11, 40, 2 };
    for (int p = 0; p < 12; p += chunk) {
        int len = 12 - p < chunk ? 12 - p : chunk;
        CHECK(mq_engine_forward(e, pool, &seq, toks + p, len, p, prec, out + (size_t)p * TV, MQ_LOGITS_ALL) == 0,
              "forward");
    }
    for (int b = 0; b < 4; b++)
        free(blocks[b]);
    mq_engine_free(e);
    mq_pool_destroy(pool);
}

static void test_tiny_model(void)
{
    char err[MQ_ERRMSG_LEN] = "", d32[128], d16[128];
    snprintf(d32, sizeof d32, "%s/f32", dir);
    snprintf(d16, sizeof d16, "%s/bf16", dir);
    mkdir(d32, 0755);
    mkdir(d16, 0755);
    write_tiny(d32, MQ_DT_F32, 0);
    write_tiny(d16, MQ_DT_BF16, 0);
    mq_model *a = NULL, *b = NULL;
    CHECK(mq_model_load(d32, NULL, &a, err, sizeof err) == 0, "load f32: %s", err);
    CHECK(mq_model_load(d16, NULL, &b, err, sizeof err) == 0, "load bf16: %s", err);
    if (!a || !b) {
        mq_model_free(a);
        mq_model_free(b);
        return;
    }
    CHECK(a->layers[0].q.bias && a->layers[1].down.fp4.kp == 48 && a->lm_head.w != a->embed.w, "qwen2 layout");
    float la[12 * TV], lb[12 * TV], lc[12 * TV];
    tiny_logits(a, MQ_PREC_BF16, 12, la);
    tiny_logits(b, MQ_PREC_BF16, 12, lb);
    int finite = 1;
    for (int i = 0; i < 12 * TV; i++)
        finite &= isfinite(la[i]);
    CHECK(finite, "finite logits");
    CHECK(!memcmp(la, lb, sizeof la), "F32 and BF16 checkpoints of the same values give the same logits");
    tiny_logits(a, MQ_PREC_FP4, 12, lc);
    finite = 1;
    for (int i = 0; i < 12 * TV; i++)
        finite &= isfinite(lc[i]);
    CHECK(finite && memcmp(la, lc, sizeof la), "FP4 path runs (padded K) and differs");
    tiny_logits(a, MQ_PREC_BF16, 12, lb);
    CHECK(!memcmp(la, lb, sizeof la), "deterministic");
    mq_model_free(a);
    mq_model_free(b);

    static const struct {
        int brk;
        const char *want;
    } bad[] = {
        { 1, "model.layers.1.self_attn.v_proj.weight" },
        { 2, "dtype" },
        { 3, "model.layers.1.self_attn.k_proj.weight" },
        { 4, "experts" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_tiny(d16, MQ_DT_BF16, bad[i].brk);
        mq_model *m = NULL;
        err[0] = 0;
        int rc = mq_model_load(d16, NULL, &m, err, sizeof err);
        CHECK(rc < 0 && !m && strstr(err, bad[i].want), "break %d: rc %d \"%s\" should name %s", bad[i].brk, rc, err,
              bad[i].want);
    }
    harness_rm_rf(d32);
    harness_rm_rf(d16);
}

int main(void)
{
    mq_kernels_init();
    snprintf(dir, sizeof dir, "/tmp/mq-st-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    RUN(test_roundtrip);
    RUN(test_malformed);
    RUN(test_sharded);
    RUN(test_tiny_model);
    harness_rm_rf(dir);
    return harness_done();
}
