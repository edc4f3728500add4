/* tests/tools/mq_synth.c — writes a synthetic Qwen3 checkpoint folder for performance work.
 *
 *   build/mq_synth --size 0.6b|1.7b|4b|8b --out DIR [--shards N] [--layers N] [--seed S]
 *                  [--std X] [--tokenizer-from DIR]
 *
 * The folder holds what a Hugging Face Qwen3 checkpoint holds: config.json with the exact
 * shapes of Qwen/Qwen3-<size> (hidden, layers, heads, head_dim 128, FFN, vocab 151936,
 * rope_theta 1e6 at the top level as in the released configs, eps 1e-6, tied embeddings
 * except 8B), model.safetensors (or, with --shards N, N files model-0000i-of-0000N and
 * model.safetensors.index.json) with random BF16 weights, and the real tokenizer.json /
 * tokenizer_config.json copied from $MQ_SHARED/models/mq-qwen3-80m.
 *
 * Weights: every linear and the embedding ~ N(0, std) (default 0.02, the Qwen3
 * initializer_range), RMSNorm weights (input/post-attention/final, q_norm/k_norm) = 1, as a
 * freshly initialised model has them, so activations stay finite through every layer.
 * A value depends only on (seed, tensor name, element index): the shards layout holds
 * exactly the bytes of the single-file layout, and reruns are identical.
 * Writing streams through the safetensors writer's fill callback (4 MiB at a time,
 * generated on 2 threads): the 8 GB 4B checkpoint never sits in memory.
 * --layers N keeps the per-layer shapes but writes N layers (quick tests).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/mq_kernels.h"
#include "tests/tools/fsutil.h"
#include "engine/pool.h"
#include "engine/safetensors.h"
#include "common/errmsg.h"

typedef struct shape_def {
    const char *name; /* "0.6b" */
    int hidden, layers, n_head, n_kv, head_dim, inter, tied;
} shape_def;

/* Qwen/Qwen3-*: config.json of the released checkpoints */
static const shape_def SIZES[] = {
    { "0.6b", 1024, 28, 16, 8, 128, 3072, 1 },
    { "1.7b", 2048, 28, 16, 8, 128, 6144, 1 },
    { "4b", 2560, 36, 32, 8, 128, 9728, 1 },
    { "8b", 4096, 36, 32, 8, 128, 12288, 0 },
};
#define QWEN3_VOCAB      151936
#define QWEN3_ROPE_THETA 1000000.0
#define QWEN3_EPS        1e-6
#define QWEN3_MAX_POS    40960
#define QWEN3_BOS        151643
#define QWEN3_EOS        151645

/* One tensor to generate: N(0, std) or the constant `one` (norms). */
typedef struct gen_tensor {
    char name[96];
    int64_t shape[2];
    int ndim;
    int is_norm;
    uint64_t key; /* seed ^ hash(name) */
    uint64_t bytes;
} gen_tensor;

typedef struct gen_ctx {
    gen_tensor *t;
    int n;
    float std;
    mq_pool *pool;
} gen_ctx;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Approximately standard normal from one 64-bit hash: the sum of four 16-bit uniforms
 * (Irwin-Hall, variance 4/12), rescaled to unit variance. Bounded at ±3.46: no outliers,
 * which a synthetic checkpoint does not need. */
static inline float gauss_of(uint64_t h)
{
    uint32_t s =
        (uint32_t)(h & 0xffff) + (uint32_t)((h >> 16) & 0xffff) + (uint32_t)((h >> 32) & 0xffff) + (uint32_t)(h >> 48);
    return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

typedef struct fill_job {
    const gen_tensor *t;
    float std;
    uint64_t first; /* element index of buf[0] */
    uint16_t *buf;
    size_t n;
} fill_job;

static void fill_part(void *arg, int tid, int nthreads)
{
    fill_job *j = arg;
    int lo, hi;
    mq_pool_split((int)j->n, 64, tid, nthreads, &lo, &hi);
    for (int i = lo; i < hi; i++) {
        float v = j->t->is_norm ? 1.0f : j->std * gauss_of(splitmix64(j->t->key + j->first + (uint64_t)i));
        j->buf[i] = mq_f32_to_bf16(v);
    }
}

static void fill_cb(void *ctx, const char *name, uint64_t off, void *buf, size_t len)
{
    gen_ctx *g = ctx;
    const gen_tensor *t = NULL;
    for (int i = 0; i < g->n && !t; i++)
        if (strcmp(g->t[i].name, name) == 0)
            t = &g->t[i];
    if (!t)
        abort(); /* the writer only asks for tensors we added */
    fill_job j = { t, g->std, off / 2, buf, len / 2 };
    mq_pool_run(g->pool, fill_part, &j);
}

static int add_tensor(gen_tensor *ts, int *n, uint64_t seed, const char *name, int64_t d0, int64_t d1, int is_norm)
{
    gen_tensor *t = &ts[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->ndim = d1 ? 2 : 1;
    t->is_norm = is_norm;
    t->key = splitmix64(seed ^ fnv1a(name));
    t->bytes = 2 * (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1);
    return 0;
}

static char *config_json(const shape_def *s, int layers)
{
    cJSON *c = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("Qwen3ForCausalLM"));
    cJSON_AddBoolToObject(c, "attention_bias", 0);
    cJSON_AddNumberToObject(c, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(c, "bos_token_id", QWEN3_BOS);
    cJSON_AddNumberToObject(c, "eos_token_id", QWEN3_EOS);
    cJSON_AddNumberToObject(c, "head_dim", s->head_dim);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "hidden_size", s->hidden);
    cJSON_AddNumberToObject(c, "initializer_range", 0.02);
    cJSON_AddNumberToObject(c, "intermediate_size", s->inter);
    cJSON_AddNumberToObject(c, "max_position_embeddings", QWEN3_MAX_POS);
    cJSON_AddNumberToObject(c, "max_window_layers", layers);
    cJSON_AddStringToObject(c, "model_type", "qwen3");
    cJSON_AddNumberToObject(c, "num_attention_heads", s->n_head);
    cJSON_AddNumberToObject(c, "num_hidden_layers", layers);
    cJSON_AddNumberToObject(c, "num_key_value_heads", s->n_kv);
    cJSON_AddNumberToObject(c, "rms_norm_eps", QWEN3_EPS);
    cJSON_AddNullToObject(c, "rope_scaling");
    cJSON_AddNumberToObject(c, "rope_theta", QWEN3_ROPE_THETA);
    cJSON_AddNullToObject(c, "sliding_window");
    cJSON_AddBoolToObject(c, "tie_word_embeddings", s->tied);
    cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
    cJSON_AddBoolToObject(c, "use_cache", 1);
    cJSON_AddBoolToObject(c, "use_sliding_window", 0);
    cJSON_AddNumberToObject(c, "vocab_size", QWEN3_VOCAB);
    char *txt = cJSON_Print(c);
    cJSON_Delete(c);
    return txt;
}

static void usage(void)
{
    fprintf(stderr, "usage: mq_synth --size 0.6b|1.7b|4b|8b --out DIR [--shards N] [--layers N] "
                    "[--seed S] [--std X] [--tokenizer-from DIR]\n");
}

int main(int argc, char **argv)
{
    const char *size = NULL, *out = NULL, *tok_dir = NULL;
    int shards = 1, layers = 0;
    uint64_t seed = 1;
    float std = 0.02f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--size"))
            size = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--shards"))
            shards = atoi(v);
        else if (!strcmp(a, "--layers"))
            layers = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--std"))
            std = strtof(v, NULL);
        else if (!strcmp(a, "--tokenizer-from"))
            tok_dir = v;
        else {
            usage();
            return 2;
        }
        i++;
    }
    const shape_def *s = NULL;
    for (size_t i = 0; size && i < sizeof SIZES / sizeof SIZES[0]; i++) {
        const char *n = size;
        if (!strncasecmp(n, "qwen3-", 6))
            n += 6;
        if (!strcasecmp(n, SIZES[i].name))
            s = &SIZES[i];
    }
    if (!s || !out || shards < 1 || shards > 999 || layers < 0 || !(std > 0 && std < 1)) {
        if (size && !s)
            fprintf(stderr, "mq_synth: unknown --size %s\n", size);
        usage();
        return 2;
    }
    if (!layers)
        layers = s->layers;
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mq_synth: mkdir %s: %s\n", out, strerror(errno));
        return 1;
    }
    char tok_default[4096];
    if (!tok_dir) {
        const char *root = getenv("MQ_SHARED");
        snprintf(tok_default, sizeof tok_default, "%s/models/mq-qwen3-80m", root && *root ? root : "../shared");
        tok_dir = tok_default;
    }
    mq_kernels_init();

    /* ---- config.json and the tokenizer files ---- */
    char path[4096], from[4096];
    char *cfg = config_json(s, layers);
    snprintf(path, sizeof path, "%s/config.json", out);
    if (!cfg || fsutil_write_text(path, cfg)) {
        fprintf(stderr, "mq_synth: cannot write %s\n", path);
        free(cfg);
        return 1;
    }
    free(cfg);
    static const char *tok_files[] = { "tokenizer.json", "tokenizer_config.json" };
    for (int i = 0; i < 2; i++) {
        int rc = -ENAMETOOLONG;
        if (snprintf(from, sizeof from, "%s/%s", tok_dir, tok_files[i]) < (int)sizeof from &&
            snprintf(path, sizeof path, "%s/%s", out, tok_files[i]) < (int)sizeof path)
            rc = fsutil_copy_file(from, path);
        if (rc) {
            fprintf(stderr, "mq_synth: copying %s to %s: %s\n", from, path, strerror(-rc));
            return 1;
        }
    }

    /* ---- the tensor list, in the order HF writes it ---- */
    int max_t = 3 + layers * 11;
    gen_tensor *ts = calloc((size_t)max_t, sizeof *ts);
    if (!ts)
        return 1;
    int n = 0;
    int64_t H = s->hidden, Q = (int64_t)s->n_head * s->head_dim, KV = (int64_t)s->n_kv * s->head_dim;
    char nm[96];
    add_tensor(ts, &n, seed, "model.embed_tokens.weight", QWEN3_VOCAB, H, 0);
    for (int l = 0; l < layers; l++) {
#define T(suffix, d0, d1, norm)                               \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix); \
    add_tensor(ts, &n, seed, nm, d0, d1, norm)
        T("input_layernorm.weight", H, 0, 1);
        T("self_attn.q_proj.weight", Q, H, 0);
        T("self_attn.k_proj.weight", KV, H, 0);
        T("self_attn.v_proj.weight", KV, H, 0);
        T("self_attn.o_proj.weight", H, Q, 0);
        T("self_attn.q_norm.weight", s->head_dim, 0, 1);
        T("self_attn.k_norm.weight", s->head_dim, 0, 1);
        T("post_attention_layernorm.weight", H, 0, 1);
        T("mlp.gate_proj.weight", s->inter, H, 0);
        T("mlp.up_proj.weight", s->inter, H, 0);
        T("mlp.down_proj.weight", H, s->inter, 0);
#undef T
    }
    add_tensor(ts, &n, seed, "model.norm.weight", H, 0, 1);
    if (!s->tied)
        add_tensor(ts, &n, seed, "lm_head.weight", QWEN3_VOCAB, H, 0);

    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += ts[i].bytes;
    if (shards > n)
        shards = n;

    gen_ctx g = { ts, n, std, NULL };
    int rc = mq_pool_create(&g.pool, 2, NULL, "mq-synth");
    if (rc) {
        fprintf(stderr, "mq_synth: pool: %s\n", strerror(-rc));
        free(ts);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* ---- shards: consecutive tensors, cut near total*k/shards ---- */
    cJSON *index = NULL, *wmap = NULL;
    if (shards > 1) {
        index = cJSON_CreateObject();
        cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        wmap = cJSON_AddObjectToObject(index, "weight_map");
    }
    char err[MQ_ERRMSG_LEN] = "";
    uint64_t done = 0;
    int next = 0;
    for (int k = 0; k < shards && !rc; k++) {
        mq_st_writer *w = NULL;
        if ((rc = mq_st_writer_create(&w)))
            break;
        char fname[64];
        if (shards > 1)
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", k + 1, shards);
        else
            snprintf(fname, sizeof fname, "model.safetensors");
        uint64_t cut = total / (uint64_t)shards * (uint64_t)(k + 1);
        int remaining_shards = shards - k - 1;
        int in_shard = 0;
        while (next < n && !rc) {
            /* every shard gets at least one tensor and leaves one for every later shard */
            if (k + 1 < shards && in_shard && (done >= cut || n - next <= remaining_shards))
                break;
            in_shard++;
            gen_tensor *t = &ts[next++];
            rc = mq_st_writer_add(w, t->name, MQ_DT_BF16, t->shape, t->ndim, NULL, fill_cb, &g);
            if (!rc && wmap)
                cJSON_AddStringToObject(wmap, t->name, fname);
            done += t->bytes;
        }
        snprintf(path, sizeof path, "%s/%s", out, fname);
        if (!rc)
            rc = mq_st_writer_write(w, path, err, sizeof err);
        mq_st_writer_free(w);
        if (!rc)
            printf("mq_synth: wrote %s\n", path);
    }
    if (!rc && index) {
        char *txt = cJSON_Print(index);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
        rc = txt ? fsutil_write_text(path, txt) : -ENOMEM;
        if (rc && snprintf(err, sizeof err, "%s: %s", path, strerror(-rc)) >= (int)sizeof err)
            err[sizeof err - 1] = 0;
        free(txt);
    }
    cJSON_Delete(index);
    mq_pool_destroy(g.pool);
    free(ts);
    if (rc) {
        fprintf(stderr, "mq_synth: %s\n", *err ? err : strerror(-rc));
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("mq_synth: Qwen3-%s shapes, %d layers, %.2f GB of BF16 weights in %d file(s), %.1f s, %s\n", s->name, layers,
           (double)total / 1e9, shards, sec, out);
    return 0;
}
