/* tests/bench/bench_decode.c — where the time of one decode step goes, at several
 * context depths (`build/bench_decode`; not part of `make bench`, which reads the
 * end-to-end figures from bench_e2e).
 *
 *   build/bench_decode [--models DIR] [--threads N] [--steps K] [--ctx N,N,...]
 *
 * Loads the synthetic Qwen3-1.7B checkpoint (bench_e2e writes it into DIR, default
 * build/models) and runs the engine alone (no scheduler): one sequence whose KV holds
 * `ctx` random positions (BF16, 64-token blocks on transparent huge pages, as the KV
 * store on hugetlb pages), one token per step, greedy pick (mq_argmax) included.
 * Per depth it prints, best of K steps each, by the wall clock and by busy time
 * (bench_common.h; the closing lines use busy time, as bench_kernels does):
 *   step       mq_engine_decode + argmax;
 *   linears    the same GEMVs (every layer's q/k/v, o, gate/up, down, and the LM head)
 *              as pool runs of their own, split by columns as the engine splits them;
 *   attention  mq_attention of every layer at that depth, split as the engine splits it;
 *   rest       step − linears − attention: norms, RoPE, KV writes, hand-offs, argmax;
 * and the bytes a step must read (weights + KV) against the read bandwidth of the same
 * process (bench_read_bandwidth: the pool streaming 1 GiB, best of 3, before and after).
 * Closing lines: decode_step_ms_<ctx>, decode_rest_ms_<ctx>, decode_vs_bandwidth_<ctx>.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/clock.h"
#include "engine/arena.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/weight_stream.h"
#include "tests/bench/bench_common.h"

#define BT       64 /* KV block tokens (the scheduler's default) */
#define MAX_CTX  8
#define COLALIGN 16

static int g_threads = 2, g_steps = 12;

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_decode: %s: %s\n", what, why);
    exit(1);
}

/* ---- the linears alone: the engine's GEMV calls, split by columns ---- */

struct lin_arg {
    const uint16_t *x;
    const mq_bf16_weight *w[3];
    float *y[3];
    int n_w;
};

static void lin_fn(void *arg, int tid, int nt)
{
    struct lin_arg *a = arg;
    int total = 0, base = 0, c0, c1;
    for (int i = 0; i < a->n_w; i++)
        total += a->w[i]->n;
    mq_pool_split(total, COLALIGN, tid, nt, &c0, &c1);
    for (int i = 0; i < a->n_w; i++) {
        const int n = a->w[i]->n;
        const int lo = c0 - base > 0 ? c0 - base : 0, hi = c1 - base < n ? c1 - base : n;
        if (lo < hi)
            mq_gemm_bf16(a->x, 1, (size_t)a->w[i]->k, a->w[i], a->y[i], (size_t)n, lo, hi);
        base += n;
    }
}

static void linears(mq_pool *pool, const mq_model *m, const uint16_t *x, float *y)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const mq_layer *L = &m->layers[l];
        struct lin_arg qkv = { x, { &L->q.bf16, &L->k.bf16, &L->v.bf16 }, { y, y, y }, 3 };
        struct lin_arg o = { x, { &L->o.bf16 }, { y }, 1 };
        struct lin_arg gu = { x, { &L->gate.bf16, &L->up.bf16 }, { y, y }, 2 };
        struct lin_arg dn = { x, { &L->down.bf16 }, { y }, 1 };
        mq_pool_run(pool, lin_fn, &qkv);
        mq_pool_run(pool, lin_fn, &o);
        mq_pool_run(pool, lin_fn, &gu);
        mq_pool_run(pool, lin_fn, &dn);
    }
    struct lin_arg head = { x, { &m->lm_head }, { y }, 1 };
    mq_pool_run(pool, lin_fn, &head);
}

/* ---- attention alone: kv-heads split across threads as the engine's attn_run ---- */

struct attn_arg {
    mq_attn_args a;
};

static void attn_fn(void *arg, int tid, int nt)
{
    struct attn_arg *a = arg;
    const int group = a->a.n_head / a->a.n_kv;
    int k0, k1;
    mq_pool_split(a->a.n_kv, 1, tid, nt, &k0, &k1);
    if (k0 < k1)
        mq_attention(&a->a, k0 * group, k1 * group);
}

static void attention_all(mq_pool *pool, const mq_config *c, uint8_t *const *blocks, int ctx, const float *q,
                          float *out, const uint16_t **kp, const uint16_t **vp)
{
    const size_t kvd = (size_t)c->n_kv * c->head_dim;
    const int nb = ctx / BT + 1;
    for (int l = 0; l < c->n_layers; l++) {
        for (int b = 0; b < nb; b++) {
            kp[b] = (const uint16_t *)blocks[b] + (size_t)l * 2 * BT * kvd;
            vp[b] = kp[b] + BT * kvd;
        }
        struct attn_arg a = { { .q = q,
                                .out = out,
                                .n_tok = 1,
                                .pos0 = ctx,
                                .n_head = c->n_head,
                                .n_kv = c->n_kv,
                                .head_dim = c->head_dim,
                                .k_blocks = kp,
                                .v_blocks = vp,
                                .block_tokens = BT,
                                .scale = 1.0f / sqrtf((float)c->head_dim) } };
        mq_pool_run(pool, attn_fn, &a);
    }
}

static double step_bytes(const mq_config *c, int ctx)
{
    double lin = (double)c->n_layers * ((double)c->hidden * c->n_head * c->head_dim * 2 +
                                        (double)c->hidden * c->n_kv * c->head_dim * 2 + 3.0 * c->hidden * c->inter);
    double head = (double)c->vocab * c->hidden, kv = 2.0 * c->n_layers * (ctx + 1) * c->n_kv * c->head_dim;
    return 2.0 * (lin + head + kv);
}

int main(int argc, char **argv)
{
    const char *root = "build/models";
    int ctxs[MAX_CTX] = { 128, 2048, 8192 }, n_ctx = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--models") && i + 1 < argc)
            root = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            g_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            g_steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) {
            n_ctx = 0;
            for (char *s = argv[++i], *e; *s && n_ctx < MAX_CTX; s = *e ? e + 1 : e) {
                ctxs[n_ctx] = (int)strtol(s, &e, 10);
                if (ctxs[n_ctx] < 1 || (*e && *e != ','))
                    die("--ctx", "a list of positive numbers");
                n_ctx++;
            }
        } else
            die("usage", "bench_decode [--models DIR] [--threads N] [--steps K] [--ctx N,N,...]");
    }
    if (g_threads < 1 || g_steps < 2)
        die("options", "--threads >= 1 and --steps >= 2");
    setvbuf(stdout, NULL, _IOLBF, 0);
    mq_kernels_init();
    char dir[1100], probe[1200], err[MQ_ERRMSG_LEN];
    snprintf(dir, sizeof dir, "%s/qwen3-1.7b", root);
    snprintf(probe, sizeof probe, "%s/config.json", dir);
    struct stat st;
    if (stat(probe, &st))
        die(probe, "missing (run build/bench_e2e once: it writes the synthetic checkpoints)");

    mq_arena *arena = NULL;
    mq_arena_opts ao;
    mq_arena_opts_default(&ao);
    ao.chunk_bytes = (size_t)1 << 30;
    if (mq_arena_create(&arena, &ao))
        die("arena", "cannot create");
    mq_ws_opts wo;
    mq_ws_opts_default(&wo);
    wo.helpers = g_threads;
    mq_ws_result res;
    mq_model *m = NULL;
    mq_model_opts mo = { .no_fp4 = 1 };
    if (mq_ws_load_model(dir, &mo, arena, &wo, NULL, &res, &m, err, sizeof err) < 0)
        die(dir, err);
    const mq_config *c = &m->cfg;

    int max_ctx = 0;
    for (int i = 0; i < n_ctx; i++)
        max_ctx = ctxs[i] > max_ctx ? ctxs[i] : max_ctx;
    mq_pool *pool = NULL;
    mq_engine *e = NULL;
    mq_engine_opts eo = { .max_chunk = 1, .max_batch = 1, .block_tokens = BT, .max_context = max_ctx + BT };
    if (mq_pool_create(&pool, g_threads, NULL, "dec") || mq_engine_create(&e, m, &eo, err, sizeof err))
        die("engine", err);

    /* KV: random BF16 in [-1, 1) for every position up to the deepest context */
    const int nblk = max_ctx / BT + 1;
    const size_t bb = (mq_kv_block_bytes(c, BT) + 63) / 64 * 64;
    uint8_t *seg = mq_mem_map(bb * nblk, 0, 1, NULL);
    uint8_t **blocks = malloc(sizeof *blocks * nblk);
    if (!seg || !blocks)
        die("KV", "out of memory");
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < bb * nblk / 2; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        ((uint16_t *)seg)[i] = mq_f32_to_bf16((float)(s >> 40) / (float)(1 << 23) - 1.0f);
    }
    for (int b = 0; b < nblk; b++)
        blocks[b] = seg + (size_t)b * bb;
    mq_kv_seq seq = { .blocks = blocks, .n_blocks = nblk };

    const size_t qd = (size_t)c->n_head * c->head_dim;
    float *logits = malloc(sizeof(float) * c->vocab), *y = malloc(sizeof(float) * c->vocab);
    float *q = malloc(sizeof(float) * qd), *att = malloc(sizeof(float) * qd);
    uint16_t *xb = calloc((size_t)c->inter + c->hidden, sizeof(uint16_t));
    const uint16_t **kp = malloc(sizeof *kp * nblk), **vp = malloc(sizeof *vp * nblk);
    for (size_t i = 0; i < qd; i++)
        q[i] = sinf((float)i);
    for (int i = 0; i < c->inter + c->hidden; i++)
        xb[i] = mq_f32_to_bf16(cosf((float)i) * 0.1f);

    double bw_busy, bw = bench_read_bandwidth(pool, 3, &bw_busy);
    double r_step[MAX_CTX], r_rest[MAX_CTX], r_bytes[MAX_CTX];
    printf("bench_decode: Qwen3-1.7B (synthetic), %d threads, ISA %s, best of %d steps each; "
           "each depth: wall clock, then busy time\n",
           g_threads, mq_isa_name(mq_kernels_isa()), g_steps);
    printf("%8s %10s %10s %10s %10s %10s %10s\n", "context", "step ms", "linears", "attention", "rest", "GB/step",
           "GB/s");
    for (int ci = 0; ci < n_ctx; ci++) {
        const int ctx = ctxs[ci];
        double t[3] = { 1e9, 1e9, 1e9 }, b[3] = { 1e9, 1e9, 1e9 }; /* step, linears, attention */
        for (int k = 0; k < g_steps; k++) {
            int tok = 1000 + k, pos = ctx;
            double w0 = mq_now_s(), c0 = mq_process_cpu_s();
            if (mq_engine_decode(e, pool, &seq, &tok, &pos, 1, MQ_PREC_BF16, logits))
                die("decode", "failed");
            volatile int pick = mq_argmax(logits, c->vocab);
            (void)pick;
            double w1 = mq_now_s(), c1 = mq_process_cpu_s();
            linears(pool, m, xb, y);
            double w2 = mq_now_s(), c2 = mq_process_cpu_s();
            attention_all(pool, c, blocks, ctx, q, att, kp, vp);
            double w3 = mq_now_s(), c3 = mq_process_cpu_s();
            if (k) { /* the first round warms caches and pages */
                const double dw[3] = { w1 - w0, w2 - w1, w3 - w2 }, dc[3] = { c1 - c0, c2 - c1, c3 - c2 };
                for (int i = 0; i < 3; i++) {
                    t[i] = fmin(t[i], dw[i]);
                    b[i] = fmin(b[i], dc[i] / g_threads);
                }
            }
        }
        r_bytes[ci] = step_bytes(c, ctx);
        r_step[ci] = b[0];
        r_rest[ci] = b[0] - b[1] - b[2];
        printf("%8d %10.2f %10.2f %10.2f %10.2f %10.3f %10.2f\n", ctx, t[0] * 1e3, t[1] * 1e3, t[2] * 1e3,
               (t[0] - t[1] - t[2]) * 1e3, r_bytes[ci] / 1e9, r_bytes[ci] / t[0] / 1e9);
        printf("%8s %10.2f %10.2f %10.2f %10.2f %10s %10.2f\n", "busy", b[0] * 1e3, b[1] * 1e3, b[2] * 1e3,
               r_rest[ci] * 1e3, "", r_bytes[ci] / b[0] / 1e9);
    }
    double bw2_busy, bw2 = bench_read_bandwidth(pool, 3, &bw2_busy);
    bw = bw2 > bw ? bw2 : bw;
    bw_busy = bw2_busy > bw_busy ? bw2_busy : bw_busy;
    printf("%8s %43s %10.2f\n%8s %54.2f\n", "read", "bandwidth (best)", bw / 1e9, "busy", bw_busy / 1e9);
    printf("\n");
    for (int ci = 0; ci < n_ctx; ci++) {
        printf("decode_step_ms_%d: %.2f\n", ctxs[ci], r_step[ci] * 1e3);
        printf("decode_rest_ms_%d: %.2f\n", ctxs[ci], r_rest[ci] * 1e3);
        printf("decode_vs_bandwidth_%d: %.3f\n", ctxs[ci], r_bytes[ci] / r_step[ci] / bw_busy);
    }
    mq_engine_free(e);
    mq_pool_destroy(pool);
    mq_mem_unmap(seg, bb * nblk);
    mq_model_free(m);
    mq_arena_destroy(arena);
    free(blocks);
    free(logits);
    free(y);
    free(q);
    free(att);
    free(xb);
    free(kp);
    free(vp);
    return 0;
}
