/* tests/golden/test_nvfp4_checkpoint.c — the compressed-tensors NVFP4 path of the loader.
 *
 * build/mq_nvfp4_export (the project's quantizer, tests/tools/mq_nvfp4_export.c) writes
 * mq-qwen3-80m as an nvfp4-pack-quantized checkpoint into a temporary folder; the engine
 * loads it back with the original folder as the BF16 decode checkpoint (opts.bf16_dir), as
 * Mix-Quant pairs Qwen3-8B-NVFP4 with Qwen3-8B. Two exports:
 *   1. --no-fuse --dynamic: per-tensor g_w, no static activation scale. This is exactly
 *      what mq does when it quantizes the BF16 checkpoint at load, so every NVFP4 weight
 *      (codes, block scales, g_w) must be bit-identical to the at-load ones, and the logits
 *      of every mode must be bit-identical too.
 *   2. the default (llm-compressor's layout): q/k/v and gate/up share the minimum g_w of
 *      their group and the activations get calibrated static scales. Checked: the loader
 *      uses the stored codes/scales/scalars as stored; o/down equal the at-load weights bit
 *      for bit; q/k/v/gate/up equal the project's quantizer run at load with the shared g_w;
 *      BF16 logits are bit-identical to the original model's; the fp4-mode logits are as
 *      close to bf16 as the at-load fp4 ones (KL within 1.5x, top-1 agreement within 5%).
 * 3. an export with one block scale set to an E4M3 NaN (0x7f, then 0xff): both loaders
 *    refuse it, naming the tensor and the block.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/bench/eval_corpus.h"
#include "engine/arena.h"
#include "engine/engine.h"
#include "engine/weight_stream.h"
#include "tests/harness.h"
#include "tests/integration/mqd_spawn.h" /* spawn_build_dir */
#include "engine/model.h"
#include "kernels/mq_kernels.h"
#include "engine/pool.h"
#include "engine/safetensors.h"
#include "common/errmsg.h"

#define BT   16
#define NTOK 200

static char export_bin[PATH_MAX + 32];
static char tmpdir[64];
static const char *orig_dir;
static int32_t prompt[NTOK];
static int have_prompt;

static const char *lin_name[7] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                   "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj" };
static mq_linear *lin_of(mq_layer *L, int j)
{
    mq_linear *t[7] = { &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down };
    return t[j];
}

static int run_export(const char *out, const char *extra)
{
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' --in '%s' --out '%s' %s > /dev/null", export_bin, orig_dir, out, extra);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Last-position logits of the prompt in `mode`, and every position's logits (rows) in
 * precision `prec` when rows != NULL. */
typedef struct runner {
    mq_engine *e;
    mq_pool *pool;
    uint8_t *kv;
    uint8_t *blocks[(NTOK + BT - 1) / BT];
} runner;

static int runner_init(runner *r, const mq_model *m, mq_pool *pool)
{
    char err[MQ_ERRMSG_LEN] = "";
    memset(r, 0, sizeof *r);
    r->pool = pool;
    mq_engine_opts o = { .max_chunk = NTOK, .max_batch = 1, .block_tokens = BT, .max_context = NTOK };
    int rc = mq_engine_create(&r->e, m, &o, err, sizeof err);
    CHECK(rc == 0, "engine: %s", err);
    if (rc)
        return rc;
    size_t bb = (mq_kv_block_bytes(&m->cfg, BT) + 63) / 64 * 64;
    int nb = (NTOK + BT - 1) / BT;
    if (posix_memalign((void **)&r->kv, 64, bb * (size_t)nb))
        return -ENOMEM;
    for (int b = 0; b < nb; b++)
        r->blocks[b] = r->kv + (size_t)b * bb;
    return 0;
}

static void runner_free(runner *r)
{
    mq_engine_free(r->e);
    free(r->kv);
}

static int run_mode(runner *r, mq_prec_mode mode, float *logits)
{
    mq_kv_seq seq = { r->blocks, (NTOK + BT - 1) / BT };
    return mq_engine_prompt(r->e, r->pool, &seq, (const int *)prompt, NTOK, 0, mode, logits);
}

static int run_all_rows(runner *r, mq_prec prec, float *logits)
{
    mq_kv_seq seq = { r->blocks, (NTOK + BT - 1) / BT };
    return mq_engine_forward(r->e, r->pool, &seq, (const int *)prompt, NTOK, 0, prec, logits, MQ_LOGITS_ALL);
}

static int same_fp4(const mq_fp4_weight *a, const mq_fp4_weight *b)
{
    if (a->n != b->n || a->k != b->k || a->kp != b->kp || memcmp(&a->g, &b->g, 4))
        return 0;
    return !memcmp(a->codes, b->codes, (size_t)a->n * a->kp / 2) &&
           !memcmp(a->scales, b->scales, (size_t)a->n * a->kp / 16);
}

/* mean over rows of KL(softmax(p) || softmax(q)) */
static double mean_kl(const float *p, const float *q, int rows, int vocab)
{
    double sum = 0;
    for (int r = 0; r < rows; r++) {
        const float *a = p + (size_t)r * vocab, *b = q + (size_t)r * vocab;
        double la = mq_logsumexp(a, vocab), lb = mq_logsumexp(b, vocab), k = 0;
        for (int i = 0; i < vocab; i++) {
            double x = a[i] - la, y = b[i] - lb;
            k += exp(x) * (x - y);
        }
        sum += k;
    }
    return sum / rows;
}

static void test_exact_export(void)
{
    char dir[PATH_MAX], err[MQ_ERRMSG_LEN] = "";
    snprintf(dir, sizeof dir, "%s/exact", tmpdir);
    CHECK(run_export(dir, "--no-fuse --dynamic") == 0, "mq_nvfp4_export --no-fuse --dynamic failed");
    mq_model *mo = NULL, *mx = NULL;
    int rc = mq_model_load(orig_dir, NULL, &mo, err, sizeof err);
    CHECK(rc == 0, "load %s: %s", orig_dir, err);
    mq_model_opts opts = { .bf16_dir = orig_dir };
    if (!rc)
        rc = mq_model_load(dir, &opts, &mx, err, sizeof err);
    CHECK(rc == 0, "load exported %s: %s", dir, err);
    if (rc)
        goto out;
    CHECK(mx->cfg.nvfp4_ckpt == 1, "exported config not read as NVFP4");
    int same = 0, bf_same = 0, dyn = 0, total = 0;
    for (int l = 0; l < mo->cfg.n_layers; l++)
        for (int j = 0; j < 7; j++) {
            mq_linear *a = lin_of(&mo->layers[l], j), *b = lin_of(&mx->layers[l], j);
            total++;
            same += same_fp4(&a->fp4, &b->fp4);
            bf_same += !memcmp(a->bf16.w, b->bf16.w, (size_t)a->bf16.n * a->bf16.k * 2);
            dyn += b->in_g == 0;
        }
    CHECK(same == total, "%d of %d NVFP4 linears bit-identical to the at-load quantization", same, total);
    CHECK(bf_same == total, "%d of %d BF16 linears identical (taken from bf16_dir)", bf_same, total);
    CHECK(dyn == total, "%d of %d linears without input_global_scale use the dynamic scale", dyn, total);
    if (!have_prompt)
        goto out;

    mq_pool *pool = NULL;
    mq_pool_create(&pool, 2, NULL, "t-nvfp4");
    runner ro, rx;
    int vocab = mo->cfg.vocab;
    float *lo = malloc((size_t)vocab * 4), *lx = malloc((size_t)vocab * 4);
    if (pool && lo && lx && !runner_init(&ro, mo, pool) && !runner_init(&rx, mx, pool)) {
        static const mq_prec_mode modes[3] = { MQ_PREC_MODE_BF16, MQ_PREC_MODE_MIXED, MQ_PREC_MODE_FP4 };
        for (int mi = 0; mi < 3; mi++) {
            int r1 = run_mode(&ro, modes[mi], lo), r2 = run_mode(&rx, modes[mi], lx);
            CHECK(r1 == 0 && r2 == 0, "forward %s: %d %d", mq_prec_mode_name(modes[mi]), r1, r2);
            CHECK(!memcmp(lo, lx, (size_t)vocab * 4), "mode %s: logits of the exported checkpoint differ",
                  mq_prec_mode_name(modes[mi]));
        }
        runner_free(&ro);
        runner_free(&rx);
    }
    free(lo);
    free(lx);
    mq_pool_destroy(pool);
out:
    mq_model_free(mo);
    mq_model_free(mx);
}

/* The default export (fused g_w, calibrated static activation scales), loaded once by
 * test_calibrated_export_loads for the cases after it. */
static struct {
    mq_model *orig, *ckpt;
    mq_st *st;
    mq_pool *pool;
    runner ro, rc;
    int loaded, runners;
    float *ref; /* BF16 logits of every position, original model */
} cal;

/* Each later case starts here: 0 (and a failed CHECK) when the export did not load. */
static int cal_ready(int need_runners)
{
    CHECK(cal.loaded, "no calibrated export (test_calibrated_export_loads failed)");
    CHECK(!need_runners || cal.runners, "no engines for the calibrated export (no prompt or no memory)");
    return cal.loaded && (!need_runners || cal.runners);
}

static void test_calibrated_export_loads(void)
{
    char dir[PATH_MAX], err[MQ_ERRMSG_LEN] = "";
    snprintf(dir, sizeof dir, "%s/calibrated", tmpdir);
    CHECK(run_export(dir, "") == 0, "mq_nvfp4_export failed");
    int rc = mq_model_load(orig_dir, NULL, &cal.orig, err, sizeof err);
    CHECK(rc == 0, "load %s: %s", orig_dir, err);
    mq_model_opts opts = { .bf16_dir = orig_dir };
    if (!rc)
        rc = mq_model_load(dir, &opts, &cal.ckpt, err, sizeof err);
    CHECK(rc == 0, "load exported %s: %s", dir, err);
    if (!rc)
        rc = mq_st_open(&cal.st, dir, err, sizeof err);
    CHECK(rc == 0, "open exported safetensors: %s", err);
    cal.loaded = rc == 0;
    if (!cal.loaded || !have_prompt)
        return;
    mq_pool_create(&cal.pool, 2, NULL, "t-nvfp4");
    if (cal.pool && !runner_init(&cal.ro, cal.orig, cal.pool)) {
        if (!runner_init(&cal.rc, cal.ckpt, cal.pool))
            cal.runners = 1;
        else
            runner_free(&cal.ro);
    }
}

/* The loader took every linear's stored bytes and scalars, static g_x included. */
static void test_calibrated_weights_taken_as_stored(void)
{
    if (!cal_ready(0))
        return;
    int fd = open(cal.st->paths[0], O_RDONLY);
    CHECK(fd >= 0, "open %s", cal.st->paths[0]);
    int as_stored = 0, static_g = 0, total = 0;
    char nm[160];
    for (int l = 0; l < cal.orig->cfg.n_layers; l++)
        for (int j = 0; j < 7; j++) {
            const mq_linear *b = lin_of(&cal.ckpt->layers[l], j);
            const mq_fp4_weight *w = &b->fp4;
            total++;
            const char *suf[4] = { "weight_packed", "weight_scale", "weight_global_scale", "input_global_scale" };
            int ok = fd >= 0;
            for (int s = 0; s < 4 && ok; s++) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.%s", l, lin_name[j], suf[s]);
                const mq_st_tensor *t = mq_st_find(cal.st, nm);
                uint8_t *buf = t ? malloc(t->bytes) : NULL;
                ok = buf && pread(fd, buf, t->bytes, (off_t)t->offset) == (ssize_t)t->bytes;
                if (ok && s == 0)
                    ok = t->bytes == (uint64_t)w->n * w->kp / 2 && !memcmp(buf, w->codes, t->bytes);
                if (ok && s == 1)
                    ok = t->bytes == (uint64_t)w->n * w->kp / 16 && !memcmp(buf, w->scales, t->bytes);
                if (ok && s == 2)
                    ok = !memcmp(buf, &w->g, 4);
                if (ok && s == 3)
                    ok = !memcmp(buf, &b->in_g, 4) && b->in_g > 0;
                free(buf);
            }
            as_stored += ok;
            static_g += b->in_g > 0;
        }
    if (fd >= 0)
        close(fd);
    printf("    %d linears: %d taken as stored, %d with a static g_x\n", total, as_stored, static_g);
    CHECK(as_stored == total, "%d of %d linears use the checkpoint's bytes as stored", as_stored, total);
    CHECK(static_g == total, "%d of %d linears have a static activation scale", static_g, total);
}

/* o and down have a group of their own: bit-identical to the at-load quantization. */
static void test_calibrated_unfused_equal_at_load(void)
{
    if (!cal_ready(0))
        return;
    int exact = 0, n = 0;
    for (int l = 0; l < cal.orig->cfg.n_layers; l++)
        for (int j = 3; j < 7; j += 3, n++)
            exact += same_fp4(&lin_of(&cal.orig->layers[l], j)->fp4, &lin_of(&cal.ckpt->layers[l], j)->fp4);
    CHECK(exact == n, "o/down: %d of %d bit-identical to the at-load quantization", exact, n);
}

/* q/k/v and gate/up carry the minimum at-load g of their group and equal the project's
 * quantizer run at load with that g. */
static void test_calibrated_fused_share_min_g(void)
{
    if (!cal_ready(0))
        return;
    int exact = 0, min_g = 0, n = 0;
    for (int l = 0; l < cal.orig->cfg.n_layers; l++) {
        mq_layer *Lo = &cal.orig->layers[l], *Lc = &cal.ckpt->layers[l];
        for (int j = 0; j < 7; j++) {
            if (j == 3 || j == 6)
                continue;
            n++;
            const mq_linear *a = lin_of(Lo, j);
            const mq_fp4_weight *w = &lin_of(Lc, j)->fp4;
            int g0 = j < 3 ? 0 : 4, g1 = j < 3 ? 3 : 6;
            float gmin = INFINITY;
            for (int o = g0; o < g1; o++)
                gmin = fminf(gmin, lin_of(Lo, o)->fp4.g);
            min_g += w->g == gmin;
            mq_fp4_weight q;
            void *mem = NULL;
            if (posix_memalign(&mem, 64, mq_fp4_weight_bytes(w->n, w->k)))
                continue;
            mq_fp4_weight_bind(&q, w->n, w->k, mem);
            q.g = gmin;
            float *row = malloc((size_t)w->k * 4);
            int qok = row != NULL;
            for (int r = 0; r < w->n && qok; r++) {
                mq_bf16_weight_row(&a->bf16, r, row); /* either layout */
                qok = mq_fp4_weight_quantize_rows(&q, row, (size_t)w->k, r, r + 1) == 0;
            }
            exact += qok && same_fp4(&q, w);
            free(row);
            free(mem);
        }
    }
    printf("    fused: %d/%d carry the minimum g of their group, %d/%d equal the quantizer with it\n", min_g, n, exact,
           n);
    CHECK(min_g == n, "fused: %d of %d carry the minimum g of their group", min_g, n);
    CHECK(exact == n, "fused: %d of %d equal to the quantizer run with the shared g", exact, n);
}

/* BF16 weights come from bf16_dir: every position's BF16 logits are bit-identical. */
static void test_calibrated_bf16_logits_identical(void)
{
    if (!cal_ready(1))
        return;
    size_t bytes = (size_t)NTOK * cal.orig->cfg.vocab * 4;
    cal.ref = malloc(bytes);
    float *b = malloc(bytes);
    CHECK(cal.ref && b, "no memory for %zu bytes of logits", bytes);
    if (cal.ref && b) {
        int r1 = run_all_rows(&cal.ro, MQ_PREC_BF16, cal.ref), r2 = run_all_rows(&cal.rc, MQ_PREC_BF16, b);
        CHECK(r1 == 0 && r2 == 0 && !memcmp(cal.ref, b, bytes), "BF16 logits differ (%d %d)", r1, r2);
        if (r1) {
            free(cal.ref);
            cal.ref = NULL;
        }
    }
    free(b);
}

/* NVFP4 with calibrated static scales and fused g vs at-load dynamic: both approximate
 * the same BF16 model with independent rounding (per-call vs calibrated activation scale,
 * per-tensor vs shared g_w), so they sit about equally far from bf16, and from each
 * other about as far as the two errors add. */
static void test_calibrated_fp4_as_close_as_at_load(void)
{
    if (!cal_ready(1))
        return;
    CHECK(cal.ref, "no BF16 reference logits (test_calibrated_bf16_logits_identical failed)");
    int vocab = cal.orig->cfg.vocab;
    size_t bytes = (size_t)NTOK * vocab * 4;
    float *a = malloc(bytes), *b = malloc(bytes);
    CHECK(a && b, "no memory for %zu bytes of logits", bytes);
    if (cal.ref && a && b) {
        const float *ref = cal.ref;
        int r1 = run_all_rows(&cal.ro, MQ_PREC_FP4, a), r2 = run_all_rows(&cal.rc, MQ_PREC_FP4, b);
        CHECK(r1 == 0 && r2 == 0, "fp4 forward %d %d", r1, r2);
        double kl_ckpt = mean_kl(a, b, NTOK, vocab);    /* at-load fp4 vs checkpoint fp4 */
        double kl_fp4 = mean_kl(ref, a, NTOK, vocab);   /* bf16 vs at-load fp4 */
        double kl_ck_bf = mean_kl(ref, b, NTOK, vocab); /* bf16 vs checkpoint fp4 */
        int agree = 0, top_a = 0, top_b = 0;
        for (int r = 0; r < NTOK; r++) {
            int ta = mq_argmax(a + (size_t)r * vocab, vocab), tb = mq_argmax(b + (size_t)r * vocab, vocab);
            int tr = mq_argmax(ref + (size_t)r * vocab, vocab);
            agree += ta == tb;
            top_a += ta == tr;
            top_b += tb == tr;
        }
        printf("    fp4 logits over %d positions: KL(bf16 || at-load) %.5f, KL(bf16 || checkpoint) %.5f, "
               "KL(at-load || checkpoint) %.5f; top-1 = bf16: at-load %d, checkpoint %d; at-load = checkpoint %d\n",
               NTOK, kl_fp4, kl_ck_bf, kl_ckpt, top_a, top_b, agree);
        CHECK(kl_ck_bf < 1.5 * kl_fp4, "checkpoint NVFP4 further from bf16 than at-load NVFP4: KL %.5f vs %.5f",
              kl_ck_bf, kl_fp4);
        CHECK(kl_ckpt < 1.5 * (kl_fp4 + kl_ck_bf),
              "the NVFP4 variants differ by KL %.5f, more than their errors "
              "to bf16 add up (%.5f + %.5f)",
              kl_ckpt, kl_fp4, kl_ck_bf);
        CHECK(top_b >= top_a - NTOK / 20, "top-1 agreement with bf16: checkpoint %d, at-load %d", top_b, top_a);
    }
    free(a);
    free(b);
}

/* mixed mode: the BF16 last token over the checkpoint's NVFP4 KV picks the same token. */
static void test_calibrated_mixed_last_token(void)
{
    if (!cal_ready(1))
        return;
    int vocab = cal.orig->cfg.vocab;
    float *a = malloc((size_t)vocab * 4), *b = malloc((size_t)vocab * 4);
    CHECK(a && b, "no memory");
    if (a && b) {
        int r1 = run_mode(&cal.ro, MQ_PREC_MODE_MIXED, a), r2 = run_mode(&cal.rc, MQ_PREC_MODE_MIXED, b);
        CHECK(r1 == 0 && r2 == 0 && mq_argmax(a, vocab) == mq_argmax(b, vocab), "mixed: last-token argmax differs");
    }
    free(a);
    free(b);
}

static void cal_free(void)
{
    if (cal.runners) {
        runner_free(&cal.ro);
        runner_free(&cal.rc);
    }
    free(cal.ref);
    mq_pool_destroy(cal.pool);
    mq_st_close(cal.st);
    mq_model_free(cal.orig);
    mq_model_free(cal.ckpt);
}

/* Byte `at` of tensor `name` of the checkpoint in dir set to v. */
static int poke_tensor(const char *dir, const char *name, uint64_t at, uint8_t v)
{
    char err[MQ_ERRMSG_LEN];
    mq_st *st = NULL;
    if (mq_st_open(&st, dir, err, sizeof err) < 0)
        return -1;
    const mq_st_tensor *t = mq_st_find(st, name);
    int fd = t && at < t->bytes ? open(st->paths[t->file], O_WRONLY | O_CLOEXEC) : -1;
    int rc = fd >= 0 && pwrite(fd, &v, 1, (off_t)(t->offset + at)) == 1 ? 0 : -1;
    if (fd >= 0)
        close(fd);
    mq_st_close(st);
    return rc;
}

static void test_nan_block_scale_refused(void)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/nan-scale", tmpdir);
    CHECK(run_export(dir, "--no-fuse --dynamic") == 0, "mq_nvfp4_export --no-fuse --dynamic failed");
    const char *tensor = "model.layers.1.mlp.down_proj.weight_scale";
    static const uint8_t nan[2] = { 0x7f, 0xff };
    for (int v = 0; v < 2; v++) {
        /* row 3, block 2 of down_proj (k = intermediate size) */
        mq_config c;
        char err[MQ_ERRMSG_LEN] = "", want[96];
        CHECK(mq_config_load(&c, dir, err, sizeof err) == 0, "%s", err);
        const uint64_t at = 3 * (uint64_t)(c.inter / 16) + 2;
        mq_config_free(&c);
        CHECK(poke_tensor(dir, tensor, at, nan[v]) == 0, "cannot write the NaN scale into %s", dir);
        snprintf(want, sizeof want, "block scale 0x%02x (row 3, block 2) is an E4M3 NaN", nan[v]);
        mq_model_opts opts = { .bf16_dir = orig_dir };
        mq_model *m = NULL;
        int rc = mq_model_load(dir, &opts, &m, err, sizeof err);
        CHECK(rc == -EINVAL && !m && strstr(err, tensor) && strstr(err, want),
              "pread load of a NaN block scale 0x%02x: rc %d, \"%s\"", nan[v], rc, err);
        mq_model_free(m);
        m = NULL;
        mq_arena_opts ao;
        mq_arena_opts_default(&ao);
        mq_arena *arena = NULL;
        CHECK(mq_arena_create(&arena, &ao) == 0, "arena");
        mq_ws_opts wo;
        mq_ws_opts_default(&wo);
        err[0] = 0;
        rc = arena ? mq_ws_load_model(dir, &opts, arena, &wo, NULL, NULL, &m, err, sizeof err) : -1;
        CHECK(rc == -EINVAL && !m && strstr(err, tensor) && strstr(err, want),
              "streamed load of a NaN block scale 0x%02x: rc %d, \"%s\"", nan[v], rc, err);
        mq_model_free(m);
        mq_arena_destroy(arena);
    }
}

int main(void)
{
    snprintf(export_bin, sizeof export_bin, "%s/mq_nvfp4_export", spawn_build_dir());
    CHECK(access(export_bin, X_OK) == 0, "%s not built", export_bin);
    mq_kernels_init();
    static char orig[PATH_MAX];
    snprintf(orig, sizeof orig, "%s", shared_path("models/mq-qwen3-80m"));
    orig_dir = orig;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mq-nvfp4-XXXXXX");
    CHECK(mkdtemp(tmpdir) != NULL, "mkdtemp");

    /* a real prompt: the first corpus document with at least NTOK tokens */
    char err[256] = "";
    mq_tokenizer *tok = NULL;
    eval_corpus c = { 0 };
    int rc = mq_tok_load_dir(orig_dir, &tok, err, sizeof err);
    CHECK(rc == 0, "tokenizer: %s", err);
    if (!rc)
        rc = eval_corpus_load(&c, shared_path("corpus/dev.txt"), tok, 40, NTOK, err, sizeof err);
    CHECK(rc == 0, "corpus: %s", err);
    for (int i = 0; i < c.n && !have_prompt; i++)
        if (c.docs[i].n >= NTOK) {
            memcpy(prompt, c.docs[i].ids, sizeof prompt);
            have_prompt = 1;
        }
    CHECK(have_prompt, "no corpus document of %d tokens", NTOK);
    eval_corpus_free(&c);
    mq_tok_free(tok);

    RUN(test_exact_export);
    RUN(test_calibrated_export_loads);
    RUN(test_calibrated_weights_taken_as_stored);
    RUN(test_calibrated_unfused_equal_at_load);
    RUN(test_calibrated_fused_share_min_g);
    RUN(test_calibrated_bf16_logits_identical);
    RUN(test_calibrated_fp4_as_close_as_at_load);
    RUN(test_calibrated_mixed_last_token);
    cal_free();
    RUN(test_nan_block_scale_refused);
    if (harness_rm_rf(tmpdir) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    return harness_done();
}
