/* tests/tools/mq_nvfp4_export.c — BF16 checkpoint -> compressed-tensors NVFP4 checkpoint.
 *
 *   build/mq_nvfp4_export --in DIR --out DIR [--calib FILE] [--calib-docs N] [--calib-tokens N]
 *                         [--no-fuse] [--dynamic]
 *
 * Writes what llm-compressor's NVFP4 scheme writes (format nvfp4-pack-quantized, see
 * shared/docs/NVFP4.md's table), using the project's quantizer (kernels/mq_kernels.h):
 * for every linear P of every decoder layer (q, k, v, o, gate, up, down)
 *     P.weight_packed        U8      [N, K/2]   E2M1 codes, low nibble first
 *     P.weight_scale         F8_E4M3 [N, K/16]  block scales (already times g_w)
 *     P.weight_global_scale  F32     [1]        g_w = 2688 / amax
 *     P.input_global_scale   F32     [1]        static g_x = 2688 / amax(calibration inputs)
 * Fused projections (q/k/v and gate/up) share one g_w, the minimum over the group, as
 * llm-compressor exports them (--no-fuse: one g_w per tensor, which equals mq's own
 * quantization at load bit for bit). Embedding, norms and lm_head are copied as stored
 * (lm_head is in `ignore`). config.json gets the quantization_config; the tokenizer files
 * are copied.
 *
 * Calibration: the static activation scales come from running the BF16 model (the same
 * numerics as the engine's BF16 mode: BF16 weights, activations rounded to BF16 before
 * each GEMM, FP32 accumulation, BF16 K/V) over real text: the LAST --calib-docs documents
 * (default 8) of --calib (default $MQ_SHARED/corpus/dev.txt, documents split on
 * <|endoftext|>), each cut to --calib-tokens (default 512), and recording the amax of each
 * linear's FP32 input. The last documents are used so the calibration text is not the text
 * `make eval` scores first. --dynamic writes no input_global_scale (the engine then scales
 * activations per call, as when it quantizes a BF16 checkpoint at load).
 *
 * Qwen3 and Llama architectures (no biases); K must be a multiple of 16 (the packed
 * layout has no padding), anything else is refused with the tensor's name.
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model_config.h"
#include "kernels/mq_kernels.h"
#include "tests/tools/fsutil.h"
#include "engine/pool.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "common/errmsg.h"

enum { L_Q, L_K, L_V, L_O, L_GATE, L_UP, L_DOWN, N_LIN };
static const char *const LIN_NAME[N_LIN] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};
/* which calibration site feeds each linear: the input it multiplies */
enum { S_ATTN_IN, S_O_IN, S_MLP_IN, S_DOWN_IN, N_SITE };
static const int LIN_SITE[N_LIN] = { S_ATTN_IN, S_ATTN_IN, S_ATTN_IN, S_O_IN, S_MLP_IN, S_MLP_IN, S_DOWN_IN };
/* fused groups (shared g_w): q/k/v, gate/up */
static const int LIN_GROUP[N_LIN] = { 0, 0, 0, 1, 2, 2, 3 };

typedef struct lin {
    const uint16_t *w; /* [n, k] BF16, in the mmap'ed source */
    int n, k;
    mq_bf16_weight bw;   /* for the calibration forward */
    float amax, g;       /* tensor amax, exported g_w */
    uint8_t *codes;      /* [n, k/2] */
    uint8_t *scales;     /* [n, k/16] */
    float g_store, in_g; /* the F32 scalars written */
} lin;

typedef struct layer {
    const uint16_t *attn_norm, *ffn_norm, *q_norm, *k_norm; /* BF16 in the source */
    lin l[N_LIN];
    float site_amax[N_SITE];
} layer;

typedef struct src {
    mq_config cfg;
    mq_st *st;
    uint8_t **map; /* [n_files] */
    size_t *map_len;
    const uint16_t *embed; /* [vocab, hidden] */
    const uint16_t *final_norm;
    layer *layers;
} src;

static const void *tensor_ptr(const src *s, const mq_st_tensor *t)
{
    return s->map[t->file] + t->offset;
}

/* Finds a BF16 tensor with the given shape (d1 == 0: 1-D). */
static int get_bf16(const src *s, const char *name, int64_t d0, int64_t d1, const uint16_t **out, char *err,
                    size_t errlen)
{
    const mq_st_tensor *t = mq_st_find(s->st, name);
    if (!t) {
        return mq_errmsg(err, errlen, -ENOENT, "source checkpoint: tensor %s missing", name);
    }
    int ok = t->dtype == MQ_DT_BF16 && t->ndim == (d1 ? 2 : 1) && t->shape[0] == d0 && (!d1 || t->shape[1] == d1);
    if (!ok) {
        return mq_errmsg(err, errlen, -EINVAL, "source checkpoint: %s must be BF16 [%lld%s%lld] (dtype %s, %d dims)",
                         name, (long long)d0, d1 ? ", " : "", (long long)d1, mq_dtype_name(t->dtype), t->ndim);
    }
    *out = tensor_ptr(s, t);
    return 0;
}

static int src_open(src *s, const char *dir, char *err, size_t errlen)
{
    int rc = mq_config_load(&s->cfg, dir, err, errlen);
    if (rc)
        return rc;
    const mq_config *c = &s->cfg;
    if (c->nvfp4_ckpt) {
        return mq_errmsg(err, errlen, -EINVAL, "%s is already an NVFP4 checkpoint", dir);
    }
    if (c->qkv_bias) {
        return mq_errmsg(err, errlen, -ENOTSUP, "%s: q/k/v biases (Qwen2) are not exported", dir);
    }
    if ((rc = mq_st_open(&s->st, dir, err, errlen)))
        return rc;
    s->map = calloc((size_t)s->st->n_files, sizeof *s->map);
    s->map_len = calloc((size_t)s->st->n_files, sizeof *s->map_len);
    if (!s->map || !s->map_len)
        return -ENOMEM;
    for (int f = 0; f < s->st->n_files; f++) {
        int fd = open(s->st->paths[f], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            return mq_errmsg(err, errlen, rc, "%s: %s", s->st->paths[f], strerror(errno));
        }
        s->map_len[f] = s->st->file_bytes[f];
        s->map[f] = mmap(NULL, s->map_len[f], PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (s->map[f] == MAP_FAILED) {
            s->map[f] = NULL;
            return mq_errmsg(err, errlen, -EIO, "mmap %s: %s", s->st->paths[f], strerror(errno));
        }
    }
    char nm[128];
    int H = c->hidden, QD = c->n_head * c->head_dim, KVD = c->n_kv * c->head_dim;
    if ((rc = get_bf16(s, "model.embed_tokens.weight", c->vocab, H, &s->embed, err, errlen)))
        return rc;
    if ((rc = get_bf16(s, "model.norm.weight", H, 0, &s->final_norm, err, errlen)))
        return rc;
    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers)
        return -ENOMEM;
    const int shp[N_LIN][2] = { { QD, H },       { KVD, H },      { KVD, H },     { H, QD },
                                { c->inter, H }, { c->inter, H }, { H, c->inter } };
    for (int i = 0; i < c->n_layers; i++) {
        layer *L = &s->layers[i];
#define GET(field, suffix, d0)                                 \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", i, suffix);  \
    if ((rc = get_bf16(s, nm, d0, 0, &L->field, err, errlen))) \
    return rc
        GET(attn_norm, "input_layernorm.weight", H);
        GET(ffn_norm, "post_attention_layernorm.weight", H);
        if (c->qk_norm) {
            GET(q_norm, "self_attn.q_norm.weight", c->head_dim);
            GET(k_norm, "self_attn.k_norm.weight", c->head_dim);
        }
#undef GET
        for (int j = 0; j < N_LIN; j++) {
            lin *l = &L->l[j];
            l->n = shp[j][0];
            l->k = shp[j][1];
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", i, LIN_NAME[j]);
            if ((rc = get_bf16(s, nm, l->n, l->k, &l->w, err, errlen)))
                return rc;
            if (l->k % MQ_FP4_BLOCK) {
                return mq_errmsg(err, errlen, -ENOTSUP,
                                 "%s: K = %d is not a multiple of 16; the packed NVFP4 layout has no padding", nm,
                                 l->k);
            }
            mq_bf16_weight_bind(&l->bw, l->n, l->k, l->w);
        }
    }
    return 0;
}

static void src_close(src *s)
{
    if (s->layers)
        for (int i = 0; i < s->cfg.n_layers; i++)
            for (int j = 0; j < N_LIN; j++) {
                free(s->layers[i].l[j].codes);
                free(s->layers[i].l[j].scales);
            }
    free(s->layers);
    for (int f = 0; s->st && s->map && f < s->st->n_files; f++)
        if (s->map[f])
            munmap(s->map[f], s->map_len[f]);
    free(s->map);
    free(s->map_len);
    mq_st_close(s->st);
    mq_config_free(&s->cfg);
}

/* ---- calibration forward (BF16 mode numerics, one sequence, FP32 activations) ---- */

typedef struct gemm_job {
    const uint16_t *x;
    int m;
    const mq_bf16_weight *w;
    float *y;
} gemm_job;

static void gemm_part(void *arg, int tid, int nt)
{
    gemm_job *j = arg;
    int lo, hi;
    mq_pool_split(j->w->n, 16, tid, nt, &lo, &hi);
    if (lo < hi)
        mq_gemm_bf16(j->x, j->m, (size_t)j->w->k, j->w, j->y, (size_t)j->w->n, lo, hi);
}

/* y[m, n] = bf16(x[m, k]) · Wᵀ; records amax of x (the FP32 input) into *amax. */
static void linear(mq_pool *pool, const lin *l, const float *x, int m, uint16_t *xb, float *y, float *amax)
{
    float a = mq_amax_f32(x, (size_t)m * (size_t)l->k);
    if (amax && a > *amax)
        *amax = a;
    mq_f32_to_bf16_row(x, xb, (size_t)m * (size_t)l->k);
    gemm_job j = { xb, m, &l->bw, y };
    mq_pool_run(pool, gemm_part, &j);
}

static void bf16_to_f32_vec(const uint16_t *w, float *out, int n)
{
    mq_bf16_to_f32_row(w, out, (size_t)n);
}

static int calibrate_seq(const src *s, mq_pool *pool, const int32_t *tok, int n, layer *layers, char *err,
                         size_t errlen)
{
    const mq_config *c = &s->cfg;
    int H = c->hidden, hd = c->head_dim, nh = c->n_head, nkv = c->n_kv, I = c->inter;
    int QD = nh * hd, KVD = nkv * hd, wide = I > QD ? I : QD;
    if (wide < H)
        wide = H;
    size_t nn = (size_t)n;
    float *h = malloc(nn * H * 4), *x = malloc(nn * wide * 4), *q = malloc(nn * QD * 4), *k = malloc(nn * KVD * 4),
          *v = malloc(nn * KVD * 4), *att = malloc(nn * QD * 4), *g = malloc(nn * I * 4), *u = malloc(nn * I * 4),
          *y = malloc(nn * wide * 4), *normw = malloc((size_t)(H > hd ? H : hd) * 4), *inv = malloc((size_t)hd / 2 * 4),
          *cs = malloc((size_t)hd * 4), *sc = malloc(nn * 4);
    uint16_t *xb = malloc(nn * wide * 2);
    int rc = 0;
    if (!h || !x || !q || !k || !v || !att || !g || !u || !y || !normw || !inv || !cs || !sc || !xb) {
        rc = -ENOMEM;
        goto out;
    }
    for (int t = 0; t < n; t++) {
        if (tok[t] < 0 || tok[t] >= c->vocab) {
            rc = mq_errmsg(err, errlen, -EINVAL, "calibration token %d outside the vocabulary", tok[t]);
            goto out;
        }
        bf16_to_f32_vec(s->embed + (size_t)tok[t] * H, h + (size_t)t * H, H);
    }
    mq_rope_inv_freq(inv, hd, c->rope_theta);
    float scale = 1.0f / sqrtf((float)hd);
    for (int li = 0; li < c->n_layers; li++) {
        const layer *L = &s->layers[li];
        float *am = layers[li].site_amax;
        /* attention: rmsnorm, q/k/v, q/k norm, RoPE, causal GQA softmax, o */
        bf16_to_f32_vec(L->attn_norm, normw, H);
        for (int t = 0; t < n; t++)
            mq_rmsnorm(x + (size_t)t * H, h + (size_t)t * H, normw, H, c->rms_eps);
        linear(pool, &L->l[L_Q], x, n, xb, q, &am[S_ATTN_IN]);
        linear(pool, &L->l[L_K], x, n, xb, k, NULL);
        linear(pool, &L->l[L_V], x, n, xb, v, NULL);
        for (int t = 0; t < n; t++) {
            if (c->qk_norm) {
                bf16_to_f32_vec(L->q_norm, normw, hd);
                for (int hh = 0; hh < nh; hh++) {
                    float *p = q + (size_t)t * QD + (size_t)hh * hd;
                    mq_rmsnorm(p, p, normw, hd, c->rms_eps);
                }
                bf16_to_f32_vec(L->k_norm, normw, hd);
                for (int hh = 0; hh < nkv; hh++) {
                    float *p = k + (size_t)t * KVD + (size_t)hh * hd;
                    mq_rmsnorm(p, p, normw, hd, c->rms_eps);
                }
            }
            mq_rope_cos_sin(inv, hd, t, cs, cs + hd / 2);
            mq_rope(q + (size_t)t * QD, nh, hd, cs, cs + hd / 2);
            mq_rope(k + (size_t)t * KVD, nkv, hd, cs, cs + hd / 2);
        }
        for (size_t i = 0; i < nn * KVD; i++) { /* the KV cache is BF16 */
            k[i] = mq_bf16_to_f32(mq_f32_to_bf16(k[i]));
            v[i] = mq_bf16_to_f32(mq_f32_to_bf16(v[i]));
        }
        for (int t = 0; t < n; t++)
            for (int hh = 0; hh < nh; hh++) {
                const float *qq = q + (size_t)t * QD + (size_t)hh * hd;
                int kvh = hh / (nh / nkv);
                for (int j = 0; j <= t; j++) {
                    const float *kk = k + (size_t)j * KVD + (size_t)kvh * hd;
                    float d = 0;
                    for (int e = 0; e < hd; e++)
                        d += qq[e] * kk[e];
                    sc[j] = d * scale;
                }
                mq_softmax(sc, t + 1);
                float *o = att + (size_t)t * QD + (size_t)hh * hd;
                memset(o, 0, (size_t)hd * 4);
                for (int j = 0; j <= t; j++) {
                    const float *vv = v + (size_t)j * KVD + (size_t)kvh * hd;
                    for (int e = 0; e < hd; e++)
                        o[e] += sc[j] * vv[e];
                }
            }
        linear(pool, &L->l[L_O], att, n, xb, y, &am[S_O_IN]);
        mq_add(h, y, n * H);
        /* SwiGLU MLP */
        bf16_to_f32_vec(L->ffn_norm, normw, H);
        for (int t = 0; t < n; t++)
            mq_rmsnorm(x + (size_t)t * H, h + (size_t)t * H, normw, H, c->rms_eps);
        linear(pool, &L->l[L_GATE], x, n, xb, g, &am[S_MLP_IN]);
        linear(pool, &L->l[L_UP], x, n, xb, u, NULL);
        mq_swiglu(g, g, u, n * I);
        linear(pool, &L->l[L_DOWN], g, n, xb, y, &am[S_DOWN_IN]);
        mq_add(h, y, n * H);
        for (int si = 0; si < N_SITE; si++)
            if (!isfinite(am[si])) {
                rc = mq_errmsg(err, errlen, -EDOM, "calibration: layer %d activations are not finite", li);
                goto out;
            }
    }
out:
    free(h);
    free(x);
    free(q);
    free(k);
    free(v);
    free(att);
    free(g);
    free(u);
    free(y);
    free(normw);
    free(inv);
    free(cs);
    free(sc);
    free(xb);
    return rc;
}

/* The last n_docs documents of the corpus, stripped, tokenized without special tokens. */
static int calibrate(src *s, mq_pool *pool, const char *dir, const char *corpus, int n_docs, int max_tok, char *err,
                     size_t errlen)
{
    char tok_err[MQ_TOK_ERR_LEN];
    mq_tokenizer *tok = NULL;
    int rc = mq_tok_load_dir(dir, &tok, tok_err, sizeof tok_err);
    if (rc) {
        return mq_errmsg(err, errlen, rc, "tokenizer of %s: %s", dir, tok_err);
    }
    FILE *f = fopen(corpus, "rb");
    char *text = NULL;
    long len = 0;
    if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)len + 1)) && fread(text, 1, (size_t)len, f) == (size_t)len)
        text[len] = 0;
    else {
        free(text);
        text = NULL;
    }
    if (f)
        fclose(f);
    if (!text) {
        mq_errmsg(err, errlen, 0, "cannot read calibration text %s", corpus);
        mq_tok_free(tok);
        return -EIO;
    }
    static const char SEP[] = "<|endoftext|>";
    /* document start offsets */
    int cap = 64, nd = 0;
    char **docs = malloc((size_t)cap * sizeof *docs);
    for (char *p = text; docs && p;) {
        char *e = strstr(p, SEP);
        if (e)
            *e = 0;
        if (nd == cap) {
            cap *= 2;
            char **nn = realloc(docs, (size_t)cap * sizeof *nn);
            if (!nn)
                break;
            docs = nn;
        }
        docs[nd++] = p;
        p = e ? e + sizeof SEP - 1 : NULL;
    }
    int used = 0, tokens = 0;
    for (int d = nd - 1; docs && d >= 0 && used < n_docs && !rc; d--) {
        char *p = docs[d];
        while (*p && strchr(" \t\r\n", *p))
            p++;
        size_t l = strlen(p);
        while (l && strchr(" \t\r\n", p[l - 1]))
            l--;
        if (!l)
            continue;
        int32_t *ids = NULL;
        size_t n = 0;
        rc = mq_tok_encode(tok, p, l, 0, &ids, &n, tok_err, sizeof tok_err);
        if (rc) {
            mq_errmsg(err, errlen, 0, "tokenizing calibration document %d: %s", d, tok_err);
            break;
        }
        if (n > (size_t)max_tok)
            n = (size_t)max_tok;
        if (n >= 2) {
            rc = calibrate_seq(s, pool, ids, (int)n, s->layers, err, errlen);
            used++;
            tokens += (int)n;
        }
        free(ids);
    }
    if (!rc && !used) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: no calibration document", corpus);
    }
    if (!rc)
        fprintf(stderr, "mq_nvfp4_export: calibrated on %d documents, %d tokens\n", used, tokens);
    free(docs);
    free(text);
    mq_tok_free(tok);
    return rc;
}

/* ---- quantization and output ---------------------------------------------------- */

static int quantize_all(src *s, int fuse, int dynamic)
{
    const mq_config *c = &s->cfg;
    int kmax = c->inter > c->hidden ? c->inter : c->hidden;
    if (c->n_head * c->head_dim > kmax)
        kmax = c->n_head * c->head_dim;
    float *row = malloc((size_t)kmax * 4);
    if (!row)
        return -ENOMEM;
    for (int li = 0; li < c->n_layers; li++) {
        layer *L = &s->layers[li];
        for (int j = 0; j < N_LIN; j++)
            L->l[j].amax = mq_amax_bf16(L->l[j].w, (size_t)L->l[j].n * L->l[j].k);
        for (int j = 0; j < N_LIN; j++) {
            lin *l = &L->l[j];
            float amax = l->amax;
            if (fuse) /* min g over the group = g of the group's largest amax */
                for (int o = 0; o < N_LIN; o++)
                    if (LIN_GROUP[o] == LIN_GROUP[j] && L->l[o].amax > amax)
                        amax = L->l[o].amax;
            if (!isfinite(amax)) {
                free(row);
                return -EDOM;
            }
            l->g = mq_fp4_global_scale(amax);
            l->g_store = l->g;
            l->in_g = dynamic ? 0.0f : mq_fp4_global_scale(L->site_amax[LIN_SITE[j]]);
            l->codes = malloc((size_t)l->n * (size_t)l->k / 2);
            l->scales = malloc((size_t)l->n * (size_t)l->k / 16);
            if (!l->codes || !l->scales) {
                free(row);
                return -ENOMEM;
            }
            for (int r = 0; r < l->n; r++) {
                mq_bf16_to_f32_row(l->w + (size_t)r * l->k, row, (size_t)l->k);
                if (mq_fp4_quantize_row(row, l->k, l->g, l->codes + (size_t)r * l->k / 2,
                                        l->scales + (size_t)r * l->k / 16)) {
                    free(row);
                    return -EDOM;
                }
            }
        }
    }
    free(row);
    return 0;
}

static cJSON *quant_scheme(int dynamic_global)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNullToObject(o, "actorder");
    cJSON_AddNullToObject(o, "block_structure");
    if (dynamic_global < 0)
        cJSON_AddBoolToObject(o, "dynamic", 0);
    else
        cJSON_AddStringToObject(o, "dynamic", dynamic_global ? "true" : "local");
    cJSON_AddNumberToObject(o, "group_size", 16);
    cJSON_AddNumberToObject(o, "num_bits", 4);
    cJSON_AddStringToObject(o, "observer", "minmax");
    cJSON_AddObjectToObject(o, "observer_kwargs");
    cJSON_AddStringToObject(o, "strategy", "tensor_group");
    cJSON_AddBoolToObject(o, "symmetric", 1);
    cJSON_AddStringToObject(o, "type", "float");
    return o;
}

static int write_config(const char *in_dir, const char *out_dir, int dynamic, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", in_dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        return mq_errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
    }
    char *txt = NULL;
    size_t cap = 0, len = 0, r;
    char buf[8192];
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        if (len + r + 1 > cap) {
            cap = (len + r + 1) * 2;
            char *n = realloc(txt, cap);
            if (!n)
                break;
            txt = n;
        }
        memcpy(txt + len, buf, r);
        len += r;
    }
    fclose(f);
    cJSON *root = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    free(txt);
    if (!root) {
        return mq_errmsg(err, errlen, -EINVAL, "%s: not JSON", path);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
    cJSON *groups = cJSON_AddObjectToObject(q, "config_groups");
    cJSON *g0 = cJSON_AddObjectToObject(groups, "group_0");
    cJSON_AddStringToObject(g0, "format", "nvfp4-pack-quantized");
    /* activations: per-block scales at run time ("local"); the global scale static unless --dynamic */
    cJSON_AddItemToObject(g0, "input_activations", quant_scheme(dynamic ? 1 : 0));
    cJSON_AddNullToObject(g0, "output_activations");
    cJSON *tg = cJSON_AddArrayToObject(g0, "targets");
    cJSON_AddItemToArray(tg, cJSON_CreateString("Linear"));
    cJSON_AddItemToObject(g0, "weights", quant_scheme(-1));
    cJSON_AddStringToObject(q, "format", "nvfp4-pack-quantized");
    cJSON_AddNullToObject(q, "global_compression_ratio");
    cJSON *ign = cJSON_AddArrayToObject(q, "ignore");
    cJSON_AddItemToArray(ign, cJSON_CreateString("lm_head"));
    cJSON_AddNullToObject(q, "kv_cache_scheme");
    cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
    cJSON_AddStringToObject(q, "quantization_status", "compressed");
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out)
        return -ENOMEM;
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    int rc = fsutil_write_text(path, out);
    free(out);
    if (rc)
        mq_errmsg(err, errlen, 0, "%s: %s", path, strerror(-rc));
    return rc;
}

static int write_weights(const src *s, const char *out_dir, char *err, size_t errlen)
{
    const mq_config *c = &s->cfg;
    mq_st_writer *w = NULL;
    int rc = mq_st_writer_create(&w);
    if (rc)
        return rc;
    char nm[160];
    static const int64_t one[1] = { 1 };
    /* every non-linear tensor of the source, as stored (embedding, norms, lm_head) */
    for (int i = 0; i < s->st->n_tensors && !rc; i++) {
        const mq_st_tensor *t = &s->st->tensors[i];
        int is_lin = 0;
        for (int j = 0; j < N_LIN && !is_lin; j++) {
            size_t ln = strlen(LIN_NAME[j]);
            const char *p = strstr(t->name, LIN_NAME[j]);
            is_lin = p && !strcmp(p + ln, ".weight") && !strncmp(t->name, "model.layers.", 13);
        }
        if (!is_lin)
            rc = mq_st_writer_add(w, t->name, t->dtype, t->shape, t->ndim, tensor_ptr(s, t), NULL, NULL);
    }
    for (int li = 0; li < c->n_layers && !rc; li++)
        for (int j = 0; j < N_LIN && !rc; j++) {
            const lin *l = &s->layers[li].l[j];
            int64_t sp[2] = { l->n, l->k / 2 }, ss[2] = { l->n, l->k / MQ_FP4_BLOCK };
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_packed", li, LIN_NAME[j]);
            rc = mq_st_writer_add(w, nm, MQ_DT_U8, sp, 2, l->codes, NULL, NULL);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_scale", li, LIN_NAME[j]);
            if (!rc)
                rc = mq_st_writer_add(w, nm, MQ_DT_F8_E4M3, ss, 2, l->scales, NULL, NULL);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_global_scale", li, LIN_NAME[j]);
            if (!rc)
                rc = mq_st_writer_add(w, nm, MQ_DT_F32, one, 1, &l->g_store, NULL, NULL);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.input_global_scale", li, LIN_NAME[j]);
            if (!rc && l->in_g > 0)
                rc = mq_st_writer_add(w, nm, MQ_DT_F32, one, 1, &l->in_g, NULL, NULL);
        }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    if (!rc)
        rc = mq_st_writer_write(w, path, err, errlen);
    mq_st_writer_free(w);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: mq_nvfp4_export --in DIR --out DIR [--calib FILE] [--calib-docs N] "
                    "[--calib-tokens N] [--no-fuse] [--dynamic]\n");
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *calib = NULL;
    int docs = 8, max_tok = 512, fuse = 1, dynamic = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-fuse")) {
            fuse = 0;
            continue;
        }
        if (!strcmp(a, "--dynamic")) {
            dynamic = 1;
            continue;
        }
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--in"))
            in = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--calib"))
            calib = v;
        else if (!strcmp(a, "--calib-docs"))
            docs = atoi(v);
        else if (!strcmp(a, "--calib-tokens"))
            max_tok = atoi(v);
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (!in || !out || docs < 1 || max_tok < 2) {
        usage();
        return 2;
    }
    char calib_default[4096];
    if (!calib) {
        const char *root = getenv("MQ_SHARED");
        snprintf(calib_default, sizeof calib_default, "%s/corpus/dev.txt", root && *root ? root : "../shared");
        calib = calib_default;
    }
    mq_kernels_init();
    char err[MQ_ERRMSG_LEN] = "";
    src s = { 0 };
    mq_pool *pool = NULL;
    int rc = src_open(&s, in, err, sizeof err);
    if (!rc)
        rc = mq_pool_create(&pool, 2, NULL, "mq-export");
    if (!rc && !dynamic)
        rc = calibrate(&s, pool, in, calib, docs, max_tok, err, sizeof err);
    if (!rc)
        rc = quantize_all(&s, fuse, dynamic);
    if (!rc && mkdir(out, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        mq_errmsg(err, sizeof err, 0, "mkdir %s: %s", out, strerror(errno));
    }
    if (!rc)
        rc = write_config(in, out, dynamic, err, sizeof err);
    if (!rc)
        rc = write_weights(&s, out, err, sizeof err);
    static const char *files[] = { "tokenizer.json", "tokenizer_config.json", "generation_config.json" };
    for (int i = 0; i < 3 && !rc; i++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/%s", in, files[i]);
        snprintf(to, sizeof to, "%s/%s", out, files[i]);
        if (access(from, F_OK) != 0 && i == 2)
            continue; /* generation_config is optional */
        if ((rc = fsutil_copy_file(from, to)))
            mq_errmsg(err, sizeof err, 0, "copying %s: %s", from, strerror(-rc));
    }
    mq_pool_destroy(pool);
    src_close(&s);
    if (rc) {
        fprintf(stderr, "mq_nvfp4_export: %s\n", *err ? err : strerror(-rc));
        return 1;
    }
    printf("mq_nvfp4_export: %s -> %s (%s, %s)\n", in, out,
           fuse ? "fused q/k/v and gate/up global scales" : "per-tensor global scales",
           dynamic ? "dynamic activation scales" : "static activation scales");
    return 0;
}
