/* tests/integration/test_synth.c — the synthetic-checkpoint tool (build/mq_synth).
 *
 * Runs the real program twice on Qwen3-0.6B shapes cut to 2 layers: once as one
 * model.safetensors, once as 3 shards with model.safetensors.index.json. Checks that
 * config.json parses (engine/model_config.h) to the released Qwen3-0.6B numbers, that
 * both layouts open through the engine's safetensors reader with every tensor shaped as
 * the config says, that the sharded layout holds exactly the bytes of the single file,
 * that linear weights look like N(0, 0.02) and norms are 1, and that the tokenizer files
 * are the real ones; then the engine loads the sharded folder and runs a BF16 and an
 * NVFP4 forward whose logits must be finite and near-uniform.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "tests/harness.h"
#include "tests/integration/mqd_spawn.h" /* spawn_build_dir */
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/model_config.h"
#include "kernels/mq_kernels.h"
#include "engine/safetensors.h"
#include "common/errmsg.h"

static char synth_bin[PATH_MAX + 32];

static int run_synth(const char *out, const char *extra)
{
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' --size 0.6b --layers 2 --out '%s' %s > /dev/null", synth_bin, out, extra);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static uint8_t *read_tensor(const mq_st *st, const mq_st_tensor *t)
{
    uint8_t *b = malloc(t->bytes);
    int fd = open(st->paths[t->file], O_RDONLY);
    if (!b || fd < 0 || pread(fd, b, t->bytes, (off_t)t->offset) != (ssize_t)t->bytes) {
        free(b);
        b = NULL;
    }
    if (fd >= 0)
        close(fd);
    return b;
}

/* The two checkpoints every case reads, written once by test_synth_writes_both_layouts. */
static char tmpl[] = "/tmp/mq-synth-XXXXXX";
static char one[PATH_MAX], sh[PATH_MAX];
static int made, written;

static void test_synth_writes_both_layouts(void)
{
    made = mkdtemp(tmpl) != NULL;
    CHECK(made, "mkdtemp %s", tmpl);
    if (!made)
        return;
    snprintf(one, sizeof one, "%s/one", tmpl);
    snprintf(sh, sizeof sh, "%s/sharded", tmpl);
    int r1 = run_synth(one, ""), r2 = run_synth(sh, "--shards 3");
    CHECK(r1 == 0, "mq_synth (single file) exit %d", r1);
    CHECK(r2 == 0, "mq_synth --shards 3 exit %d", r2);
    written = r1 == 0 && r2 == 0;
}

/* Each later case starts here: 0 (and a failed CHECK) without the checkpoints. */
static int have_checkpoints(void)
{
    CHECK(written, "no checkpoints (test_synth_writes_both_layouts failed)");
    return written;
}

/* Both layouts opened; 0 (and a failed CHECK) when they cannot be. */
static int open_both(mq_st **a, mq_st **b)
{
    char err[MQ_ERRMSG_LEN] = "";
    *a = *b = NULL;
    if (!have_checkpoints())
        return 0;
    int rc = mq_st_open(a, one, err, sizeof err);
    CHECK(rc == 0, "open single: %s", err);
    rc = mq_st_open(b, sh, err, sizeof err);
    CHECK(rc == 0, "open sharded: %s", err);
    return *a && *b;
}

static void test_synth_config_is_qwen3_0_6b(void)
{
    if (!have_checkpoints())
        return;
    char err[MQ_ERRMSG_LEN] = "";
    mq_config cfg;
    int rc = mq_config_load(&cfg, one, err, sizeof err);
    CHECK(rc == 0, "config.json: %s", err);
    if (rc)
        return;
    CHECK(cfg.arch == MQ_ARCH_QWEN3 && cfg.hidden == 1024 && cfg.n_layers == 2 && cfg.n_head == 16 && cfg.n_kv == 8 &&
              cfg.head_dim == 128 && cfg.inter == 3072 && cfg.vocab == 151936 && cfg.tie_embeddings && cfg.qk_norm &&
              !cfg.qkv_bias,
          "config: arch %d hidden %d layers %d heads %d/%d hd %d inter %d vocab %d tied %d", cfg.arch, cfg.hidden,
          cfg.n_layers, cfg.n_head, cfg.n_kv, cfg.head_dim, cfg.inter, cfg.vocab, cfg.tie_embeddings);
    CHECK(cfg.rope_theta == 1e6 && fabsf(cfg.rms_eps - 1e-6f) < 1e-12f, "rope %g eps %g", cfg.rope_theta,
          (double)cfg.rms_eps);
    mq_config_free(&cfg);
}

static void test_synth_tensor_shapes(void)
{
    mq_st *a, *b;
    if (open_both(&a, &b)) {
        CHECK(a->n_files == 1 && b->n_files == 3, "files: %d and %d", a->n_files, b->n_files);
        int want = 1 + 2 * 11 + 1; /* embedding, 11 per layer, final norm (tied: no lm_head) */
        CHECK(a->n_tensors == want && b->n_tensors == want, "tensors %d / %d, want %d", a->n_tensors, b->n_tensors,
              want);
        const mq_st_tensor *e = mq_st_find(a, "model.embed_tokens.weight");
        CHECK(e && e->dtype == MQ_DT_BF16 && e->ndim == 2 && e->shape[0] == 151936 && e->shape[1] == 1024,
              "embedding shape");
        const mq_st_tensor *q = mq_st_find(a, "model.layers.1.self_attn.q_proj.weight");
        CHECK(q && q->shape[0] == 16 * 128 && q->shape[1] == 1024, "q_proj shape");
        const mq_st_tensor *k = mq_st_find(a, "model.layers.1.self_attn.k_proj.weight");
        CHECK(k && k->shape[0] == 8 * 128 && k->shape[1] == 1024, "k_proj shape");
        const mq_st_tensor *d = mq_st_find(a, "model.layers.0.mlp.down_proj.weight");
        CHECK(d && d->shape[0] == 1024 && d->shape[1] == 3072, "down_proj shape");
        const mq_st_tensor *qn = mq_st_find(a, "model.layers.0.self_attn.q_norm.weight");
        CHECK(qn && qn->ndim == 1 && qn->shape[0] == 128, "q_norm shape");
    }
    mq_st_close(a);
    mq_st_close(b);
}

static void test_synth_layouts_hold_the_same_bytes(void)
{
    mq_st *a, *b;
    if (open_both(&a, &b)) {
        int same = 0;
        for (int i = 0; i < a->n_tensors; i++) {
            const mq_st_tensor *ta = &a->tensors[i], *tb = mq_st_find(b, ta->name);
            if (!tb || tb->bytes != ta->bytes)
                continue;
            uint8_t *x = read_tensor(a, ta), *y = read_tensor(b, tb);
            same += x && y && memcmp(x, y, ta->bytes) == 0;
            free(x);
            free(y);
        }
        CHECK(same == a->n_tensors, "%d of %d tensors identical across layouts", same, a->n_tensors);
    }
    mq_st_close(a);
    mq_st_close(b);
}

/* linear weights N(0, 0.02), norms 1 */
static void test_synth_weight_statistics(void)
{
    mq_st *a, *b;
    if (open_both(&a, &b)) {
        const mq_st_tensor *d = mq_st_find(a, "model.layers.0.mlp.down_proj.weight");
        const mq_st_tensor *qn = mq_st_find(a, "model.layers.0.self_attn.q_norm.weight");
        uint16_t *w = d ? (uint16_t *)read_tensor(a, d) : NULL;
        CHECK(w, "cannot read down_proj");
        if (w) {
            double s1 = 0, s2 = 0;
            size_t n = (size_t)(d->bytes / 2);
            for (size_t i = 0; i < n; i++) {
                double v = mq_bf16_to_f32(w[i]);
                s1 += v;
                s2 += v * v;
            }
            double mean = s1 / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
            printf("    down_proj: mean %.2e, std %.5f over %zu values\n", mean, sd, n);
            CHECK(fabs(mean) < 1e-4 && fabs(sd - 0.02) < 0.0005, "down_proj mean %g std %g", mean, sd);
            free(w);
        }
        w = qn && qn->bytes == 2 * 128 ? (uint16_t *)read_tensor(a, qn) : NULL;
        CHECK(w, "cannot read q_norm");
        int ones = 0;
        for (int i = 0; w && i < 128; i++)
            ones += mq_bf16_to_f32(w[i]) == 1.0f;
        CHECK(ones == 128, "q_norm: %d of 128 are 1", ones);
        free(w);
    }
    mq_st_close(a);
    mq_st_close(b);
}

static void test_synth_tokenizer_is_the_real_one(void)
{
    if (!have_checkpoints())
        return;
    size_t l1 = 0, l2 = 0;
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", one);
    char *t1 = harness_read_file(p, &l1);
    char *t2 = harness_read_file(shared_path("models/mq-qwen3-80m/tokenizer.json"), &l2);
    CHECK(t1 && t2 && l1 == l2 && memcmp(t1, t2, l1) == 0, "tokenizer.json differs from the shared one");
    free(t1);
    free(t2);
}

/* The engine loads the sharded layout and runs it: finite logits in both precisions, and
 * with N(0, 0.02) weights no token dominates (a near-uniform distribution). */
static void test_synth_engine_runs_sharded(void)
{
    if (!have_checkpoints())
        return;
    char err[MQ_ERRMSG_LEN] = "";
    mq_model *m = NULL;
    int rc = mq_model_load(sh, NULL, &m, err, sizeof err);
    CHECK(rc == 0, "mq_model_load(sharded synthetic): %s", err);
    mq_pool *pool = NULL;
    mq_engine *eng = NULL;
    uint8_t *kv = NULL;
    float *logits = NULL;
    if (!rc && !mq_pool_create(&pool, 2, NULL, "t-synth")) {
        mq_engine_opts o = { .max_chunk = 16, .max_batch = 1, .block_tokens = 16, .max_context = 16 };
        rc = mq_engine_create(&eng, m, &o, err, sizeof err);
        CHECK(rc == 0, "engine: %s", err);
        size_t bb = (mq_kv_block_bytes(&m->cfg, 16) + 63) / 64 * 64;
        logits = malloc((size_t)16 * m->cfg.vocab * 4);
        if (!rc && logits && !posix_memalign((void **)&kv, 64, bb)) {
            uint8_t *blocks[1] = { kv };
            mq_kv_seq seq = { blocks, 1 };
            int toks[16];
            for (int i = 0; i < 16; i++)
                toks[i] = 1000 + 977 * i;
            for (int pr = 0; pr < 2; pr++) {
                rc = mq_engine_forward(eng, pool, &seq, toks, 16, 0, pr ? MQ_PREC_FP4 : MQ_PREC_BF16, logits,
                                       MQ_LOGITS_ALL);
                CHECK(rc == 0, "forward (%s): %d", pr ? "fp4" : "bf16", rc);
                int finite = 1;
                for (size_t i = 0; i < (size_t)16 * m->cfg.vocab; i++)
                    finite &= isfinite(logits[i]) != 0;
                float lse = mq_logsumexp(logits + (size_t)15 * m->cfg.vocab, m->cfg.vocab);
                float top =
                    logits[(size_t)15 * m->cfg.vocab + mq_argmax(logits + (size_t)15 * m->cfg.vocab, m->cfg.vocab)];
                printf("    %s: logits finite %d, top-1 probability %.2e (uniform %.2e)\n", pr ? "fp4" : "bf16", finite,
                       exp(top - lse), 1.0 / m->cfg.vocab);
                CHECK(finite, "non-finite logits (%s)", pr ? "fp4" : "bf16");
                CHECK(exp(top - lse) < 0.01, "top-1 probability %.3g: activations blew up", exp(top - lse));
            }
        }
    }
    free(logits);
    free(kv);
    mq_engine_free(eng);
    mq_pool_destroy(pool);
    mq_model_free(m);
}

static void test_synth_refuses_bad_args(void)
{
    char cmd[2 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' --size 3b --out /tmp/never 2>/dev/null", synth_bin);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "unknown size accepted");
    CHECK(access("/tmp/never", F_OK) != 0, "wrote a folder for an unknown size");
}

int main(void)
{
    snprintf(synth_bin, sizeof synth_bin, "%s/mq_synth", spawn_build_dir());
    CHECK(access(synth_bin, X_OK) == 0, "%s not built", synth_bin);
    mq_kernels_init();
    RUN(test_synth_writes_both_layouts);
    RUN(test_synth_config_is_qwen3_0_6b);
    RUN(test_synth_tensor_shapes);
    RUN(test_synth_layouts_hold_the_same_bytes);
    RUN(test_synth_weight_statistics);
    RUN(test_synth_tokenizer_is_the_real_one);
    RUN(test_synth_engine_runs_sharded);
    RUN(test_synth_refuses_bad_args);
    if (made)
        CHECK(harness_rm_rf(tmpl) == 0, "clean-up of %s", tmpl);
    return harness_done();
}
