/* engine/model.c — from a checkpoint folder to mq_model: plan, per-tensor ready, finish.
 *
 * Every checkpoint tensor the model uses becomes one read and one job. A job knows where
 * its bytes land (the final BF16 array when the checkpoint already holds BF16, else a
 * staging buffer) and what to do once they are there (convert, quantize to NVFP4,
 * dequantize to BF16, pack for the kernels). NVFP4 checkpoints spread one linear over 3-4 tensors
 * (weight_packed, weight_scale, weight_global_scale, input_global_scale); the linear is
 * finished by whichever of its jobs completes last (an atomic count).
 */
#include "engine/model.h"
#include "common/errmsg.h"
#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- allocator -------------------------------------------------------------------- */

static void *heap_alloc(void *ctx, size_t bytes, size_t align, const char *what)
{
    (void)ctx;
    (void)what;
    void *p = NULL;
    if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, bytes ? bytes : 1))
        return NULL;
    return p;
}
static void heap_free(void *ctx, void *p, size_t bytes)
{
    (void)ctx;
    (void)bytes;
    free(p);
}
const mq_alloc mq_alloc_heap = { heap_alloc, heap_free, NULL };

/* ---- loading state ---------------------------------------------------------------- */

typedef enum {
    JOB_LINEAR,     /* a linear's dense weight: to BF16 (+ NVFP4 unless the checkpoint has it) */
    JOB_VEC,        /* norm or bias: to FP32 */
    JOB_EMBED,      /* embedding or untied LM head: to BF16 */
    JOB_FP4_CODES,  /* weight_packed, read straight into fp4.codes */
    JOB_FP4_SCALES, /* weight_scale, read straight into fp4.scales */
    JOB_FP4_WGS,    /* weight_global_scale [1] F32 */
    JOB_FP4_IGS,    /* input_global_scale [1] F32 */
} job_kind;

struct lin_state { /* per linear, NVFP4 checkpoint bookkeeping */
    mq_linear *lin;
    uint16_t *bf16_dst;     /* where dequantized BF16 goes (no bf16_dir), else NULL */
    _Atomic int parts_left; /* NVFP4 parts still to arrive */
};

struct job {
    job_kind kind;
    mq_dtype dtype; /* as stored */
    size_t numel;
    void *staging;        /* read destination when not the final array (freed after) */
    int staging_idx;      /* its index in mq_load.allocs */
    void *dst;            /* final array: uint16_t* (BF16) or float* (FP32) */
    mq_linear *lin;       /* JOB_LINEAR, JOB_FP4_* */
    struct lin_state *ls; /* JOB_FP4_* */
    int quantize;         /* JOB_LINEAR: also make the NVFP4 copy */
    mq_bf16_weight *pack; /* JOB_LINEAR, untied LM head: pack dst in place when done */
    _Atomic int done;
    /* JOB_LINEAR with quantize, read in place: amax of the pieces seen so far (float bits:
     * non-negative, so ordered as integers, NaN above all) and the bytes they cover */
    _Atomic uint32_t amax_bits;
    _Atomic uint64_t amax_bytes;
};

struct mq_load {
    mq_alloc alloc;
    mq_st *st, *st_bf16;
    char **paths; /* st's files then st_bf16's */
    int n_files;
    mq_read *reads;
    struct job *jobs;
    int n_reads, cap;
    struct lin_state *lins; /* [n_layers * 7] */
    int no_fp4;
    mq_fp4_pack fp4_pack, fp4_table;
    size_t hugetlb_free; /* opts.hugetlb_free */
    struct {
        void *p;
        size_t bytes;
    } * allocs; /* everything from alloc, for mq_model_free */
    int n_allocs, cap_allocs;
    int finished; /* after finish only alloc/allocs remain */
};

static const char *const lin_names[7] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

static mq_linear *layer_lin(mq_layer *L, int j)
{
    mq_linear *v[7] = { &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down };
    return v[j];
}

/* [out, in] of linear j of a layer. */
static void lin_shape(const mq_config *c, int j, int *n, int *k)
{
    const int qd = c->n_head * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int ns[7] = { qd, kvd, kvd, c->hidden, c->inter, c->inter, c->hidden };
    const int ks[7] = { c->hidden, c->hidden, c->hidden, qd, c->hidden, c->hidden, c->inter };
    *n = ns[j];
    *k = ks[j];
}

/* Allocates through the caller's allocator and records the block (index in *idx). */
static void *xalloc_idx(mq_model *m, size_t bytes, const char *what, size_t *acct, int *idx)
{
    struct mq_load *L = m->load;
    if (L->n_allocs == L->cap_allocs) {
        int nc = L->cap_allocs ? L->cap_allocs * 2 : 256;
        void *na = realloc(L->allocs, (size_t)nc * sizeof *L->allocs);
        if (!na)
            return NULL;
        L->allocs = na;
        L->cap_allocs = nc;
    }
    void *p = L->alloc.alloc(L->alloc.ctx, bytes, 64, what);
    if (!p)
        return NULL;
    if (acct)
        *acct += bytes;
    L->allocs[L->n_allocs].p = p;
    L->allocs[L->n_allocs].bytes = bytes;
    if (idx)
        *idx = L->n_allocs;
    L->n_allocs++;
    return p;
}

static void *xalloc(mq_model *m, size_t bytes, const char *what, size_t *acct)
{
    return xalloc_idx(m, bytes, what, acct, NULL);
}

/* Frees a recorded block early (staging). Distinct idx from distinct threads: no race. */
static void xfree_idx(mq_model *m, int idx)
{
    struct mq_load *L = m->load;
    if (L->allocs[idx].p && L->alloc.free) {
        L->alloc.free(L->alloc.ctx, L->allocs[idx].p, L->allocs[idx].bytes);
        L->allocs[idx].p = NULL;
    }
}

/* Looks a tensor up and checks dtype (one of `ok`) and shape. */
static const mq_st_tensor *want(const mq_st *st, const char *name, const mq_dtype *ok, int n_ok, int ndim, int64_t d0,
                                int64_t d1, char *err, size_t errlen)
{
    const mq_st_tensor *t = mq_st_find(st, name);
    if (!t) {
        mq_errmsg(err, errlen, 0, "%s: tensor \"%s\" missing", st->paths[0], name);
        return NULL;
    }
    int good = 0;
    for (int i = 0; i < n_ok; i++)
        good |= t->dtype == ok[i];
    if (!good) {
        mq_errmsg(err, errlen, 0, "%s: tensor \"%s\": dtype %s not supported here", st->paths[t->file], name,
                  mq_dtype_name(t->dtype));
        return NULL;
    }
    int64_t d[2] = { d0, d1 };
    int shape_ok = t->ndim == ndim;
    for (int i = 0; i < ndim && shape_ok; i++)
        shape_ok = t->shape[i] == d[i];
    if (!shape_ok) {
        char got[128] = "", *p = got;
        for (int i = 0; i < t->ndim && i < 4; i++)
            p += snprintf(p, 24, i ? ", %lld" : "%lld", (long long)t->shape[i]);
        mq_errmsg(err, errlen, 0, "%s: tensor \"%s\": shape [%s], config needs [%lld%s%.0lld]", st->paths[t->file],
                  name, got, (long long)d0, ndim > 1 ? ", " : "", ndim > 1 ? (long long)d1 : 0LL);
        return NULL;
    }
    return t;
}

/* Appends read + job for tensor t of checkpoint st (file_base = st's first file index). */
static struct job *add_read(mq_model *m, const mq_st_tensor *t, int file_base, void *dst)
{
    struct mq_load *L = m->load;
    if (L->n_reads == L->cap) {
        int nc = L->cap ? L->cap * 2 : 256;
        mq_read *nr = realloc(L->reads, (size_t)nc * sizeof *nr);
        if (!nr)
            return NULL;
        L->reads = nr;
        struct job *nj = realloc(L->jobs, (size_t)nc * sizeof *nj);
        if (!nj)
            return NULL;
        L->jobs = nj;
        L->cap = nc;
    }
    L->reads[L->n_reads] = (mq_read){ t->file + file_base, t->offset, t->bytes, dst, t->name };
    struct job *j = &L->jobs[L->n_reads++];
    memset(j, 0, sizeof *j);
    j->dtype = t->dtype;
    j->numel = (size_t)mq_st_numel(t);
    return j;
}

/* A read that lands in staging memory (converted at ready time). */
static struct job *add_staged(mq_model *m, const mq_st_tensor *t, int file_base, job_kind kind, void *dst)
{
    int idx;
    void *s = xalloc_idx(m, t->bytes, "staging", NULL, &idx);
    if (!s)
        return NULL;
    struct job *j = add_read(m, t, file_base, s);
    if (!j)
        return NULL;
    j->kind = kind;
    j->staging = s;
    j->staging_idx = idx;
    j->dst = dst;
    return j;
}

static const mq_dtype DENSE[] = { MQ_DT_BF16, MQ_DT_F16, MQ_DT_F32 };

/* An FP32 vector (norm/bias) of length n. */
static int plan_vec(mq_model *m, const mq_st *st, const char *name, int n, float **out, char *err, size_t errlen)
{
    const mq_st_tensor *t = want(st, name, DENSE, 3, 1, n, 0, err, errlen);
    if (!t)
        return -EINVAL;
    if (!(*out = xalloc(m, (size_t)n * sizeof(float), "weights.f32", &m->other_bytes)))
        return -ENOMEM;
    return add_staged(m, t, 0, JOB_VEC, *out) ? 0 : -ENOMEM;
}

/* A BF16 [rows, cols] matrix; read in place when stored as BF16. Room for the packed
 * layout (mq_kernels.h) too, which the job makes in place when it has `pack`. */
static int plan_bf16_matrix(mq_model *m, const mq_st *st, int file_base, const char *name, int rows, int cols,
                            job_kind kind, uint16_t **out, struct job **jout, char *err, size_t errlen)
{
    const mq_st_tensor *t = want(st, name, DENSE, 3, 2, rows, cols, err, errlen);
    if (!t)
        return -EINVAL;
    size_t bytes = mq_bf16_weight_packed_bytes(rows, cols);
    if (!(*out = xalloc(m, bytes, "weights.bf16", &m->bf16_bytes)))
        return -ENOMEM;
    struct job *j = t->dtype == MQ_DT_BF16 ? add_read(m, t, file_base, *out) : add_staged(m, t, file_base, kind, *out);
    if (!j)
        return -ENOMEM;
    j->kind = kind;
    j->dst = *out;
    *jout = j;
    return 0;
}

static int plan_linear(mq_model *m, int layer, int jl, char *err, size_t errlen)
{
    struct mq_load *L = m->load;
    const mq_config *c = &m->cfg;
    mq_linear *lin = layer_lin(&m->layers[layer], jl);
    struct lin_state *ls = &L->lins[layer * 7 + jl];
    int n, k, rc;
    lin_shape(c, jl, &n, &k);
    ls->lin = lin;
    char nm[256];
    snprintf(nm, sizeof nm, "model.layers.%d.%s.weight_packed", layer, lin_names[jl]);
    const int packed = mq_st_find(L->st, nm) != NULL;

    /* NVFP4 copy memory */
    if (!L->no_fp4) {
        void *mem = xalloc(m, mq_fp4_weight_bytes(n, k), "weights.fp4", &m->fp4_bytes);
        if (!mem)
            return -ENOMEM;
        mq_fp4_weight_bind(&lin->fp4, n, k, mem);
    }
    /* BF16 copy: from the checkpoint, the BF16 folder, or dequantized later */
    uint16_t *bf = NULL;
    if (!packed || L->st_bf16) {
        const mq_st *src = packed ? L->st_bf16 : L->st;
        int base = packed ? L->st->n_files : 0;
        struct job *j;
        snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", layer, lin_names[jl]);
        if ((rc = plan_bf16_matrix(m, src, base, nm, n, k, JOB_LINEAR, &bf, &j, err, errlen)))
            return rc;
        j->lin = lin;
        j->quantize = !packed && !L->no_fp4;
        j->pack = &lin->bf16;
    } else {
        if (!(bf = xalloc(m, mq_bf16_weight_packed_bytes(n, k), "weights.bf16", &m->bf16_bytes)))
            return -ENOMEM;
        ls->bf16_dst = bf;
    }
    mq_bf16_weight_bind(&lin->bf16, n, k, bf);

    if (packed) {
        if (L->no_fp4) {
            return mq_errmsg(err, errlen, -EINVAL, "%s: NVFP4 checkpoint but the NVFP4 copy was disabled", nm);
        }
        if (k % MQ_FP4_BLOCK) {
            return mq_errmsg(err, errlen, -EINVAL, "%s: NVFP4 checkpoint with K = %d not a multiple of 16", nm, k);
        }
        static const mq_dtype U8[] = { MQ_DT_U8 }, E4M3[] = { MQ_DT_F8_E4M3 }, F32[] = { MQ_DT_F32 };
        const struct {
            const char *suffix;
            const mq_dtype *dt;
            int64_t d0, d1;
            int ndim;
            job_kind kind;
            void *dst;
        } parts[4] = {
            { "weight_packed", U8, n, k / 2, 2, JOB_FP4_CODES, lin->fp4.codes },
            { "weight_scale", E4M3, n, k / 16, 2, JOB_FP4_SCALES, lin->fp4.scales },
            { "weight_global_scale", F32, 1, 0, 1, JOB_FP4_WGS, NULL },
            { "input_global_scale", F32, 1, 0, 1, JOB_FP4_IGS, NULL },
        };
        int nparts = 0;
        for (int p = 0; p < 4; p++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.%s", layer, lin_names[jl], parts[p].suffix);
            if (p == 3 && !mq_st_find(L->st, nm)) {
                lin->in_g = 0;
                continue;
            } /* dynamic g_x */
            const mq_st_tensor *t =
                want(L->st, nm, parts[p].dt, 1, parts[p].ndim, parts[p].d0, parts[p].d1, err, errlen);
            if (!t)
                return -EINVAL;
            struct job *j = parts[p].dst ? add_read(m, t, 0, parts[p].dst) : add_staged(m, t, 0, parts[p].kind, NULL);
            if (!j)
                return -ENOMEM;
            j->kind = parts[p].kind;
            j->lin = lin;
            j->ls = ls;
            nparts++;
        }
        atomic_store(&ls->parts_left, nparts);
    }
    if (c->qkv_bias && jl < 3) {
        snprintf(nm, sizeof nm, "model.layers.%d.%s.bias", layer, lin_names[jl]);
        if ((rc = plan_vec(m, L->st, nm, n, &lin->bias, err, errlen)))
            return rc;
    }
    return 0;
}

/* Every tensor of the main checkpoint must be one the model uses: an unknown one means
 * an architecture variant we would silently run wrong. */
static int check_unused(mq_model *m, char *err, size_t errlen)
{
    struct mq_load *L = m->load;
    for (int i = 0; i < L->st->n_tensors; i++) {
        const mq_st_tensor *t = &L->st->tensors[i];
        int used = 0;
        for (int r = 0; r < L->n_reads && !used; r++)
            used = L->reads[r].tensor == t->name;
        if (used || strstr(t->name, "rotary_emb.inv_freq"))
            continue;
        if (m->cfg.tie_embeddings && !strcmp(t->name, "lm_head.weight"))
            continue;
        return mq_errmsg(err, errlen, -EINVAL, "%s: tensor \"%s\" is not part of a %s model", L->st->paths[t->file],
                         t->name, mq_arch_name(m->cfg.arch));
    }
    return 0;
}

/* MemAvailable from /proc/meminfo in bytes, or 0 if unknown. */
static size_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    unsigned long long kb = 0;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return (size_t)kb * 1024;
}

mq_fp4_form mq_fp4_form_plan(mq_fp4_pack pack, mq_fp4_pack table, size_t have, size_t index_bytes, size_t table_bytes,
                             size_t mem_available, size_t hugetlb_free)
{
    if (pack == MQ_FP4_PACK_OFF)
        return MQ_FP4_FORM_NONE;
    /* half of MemAvailable leaves room for the page cache and other processes; the free
     * huge pages count in full: the weights are placed first and take them before the KV
     * segment does (which then falls back to ordinary pages) */
    const size_t half = mem_available / 2 + hugetlb_free;
    const int table_fits = half && have + table_bytes <= half, index_fits = half && have + index_bytes <= half;
    const int use_table = table == MQ_FP4_PACK_ON || (table == MQ_FP4_PACK_AUTO && table_fits);
    if (pack == MQ_FP4_PACK_ON)
        return use_table ? MQ_FP4_FORM_TABLE : MQ_FP4_FORM_INDEX;
    if (use_table)
        return table_fits ? MQ_FP4_FORM_TABLE : MQ_FP4_FORM_NONE;
    return index_fits ? MQ_FP4_FORM_INDEX : MQ_FP4_FORM_NONE;
}

/* The packed NVFP4 copy of every linear, in the form mq_fp4_form_plan gives. */
static int plan_fp4_packed(mq_model *m, char *err, size_t errlen)
{
    struct mq_load *L = m->load;
    const mq_config *c = &m->cfg;
    if (L->no_fp4 || L->fp4_pack == MQ_FP4_PACK_OFF)
        return 0;
    size_t need_index = 0, need_table = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int jl = 0; jl < 7; jl++) {
            const mq_fp4_weight *w = &layer_lin(&m->layers[l], jl)->fp4;
            need_index += mq_fp4_weight_packed_bytes(w->n, w->k);
            need_table += mq_fp4_weight_table_bytes(w->n, w->k);
        }
    const size_t have = m->bf16_bytes + m->fp4_bytes + m->other_bytes;
    const int asks_memory = L->fp4_pack == MQ_FP4_PACK_AUTO || L->fp4_table == MQ_FP4_PACK_AUTO;
    const mq_fp4_form form = mq_fp4_form_plan(L->fp4_pack, L->fp4_table, have, need_index, need_table,
                                              asks_memory ? mem_available() : 0, L->hugetlb_free);
    if (form == MQ_FP4_FORM_NONE)
        return 0;
    const int table = form == MQ_FP4_FORM_TABLE;
    for (int l = 0; l < c->n_layers; l++)
        for (int jl = 0; jl < 7; jl++) {
            mq_fp4_weight *w = &layer_lin(&m->layers[l], jl)->fp4;
            const size_t bytes = table ? mq_fp4_weight_table_bytes(w->n, w->k) : mq_fp4_weight_packed_bytes(w->n, w->k);
            void *p = xalloc(m, bytes, "weights.fp4.packed", &m->fp4_packed_bytes);
            if (!p)
                return mq_errmsg(err, errlen, -ENOMEM, "out of memory for the packed NVFP4 copy (%.1f MiB)",
                                 (table ? need_table : need_index) / 1048576.0);
            if (table)
                mq_fp4_weight_bind_table(w, p);
            else
                mq_fp4_weight_bind_packed(w, p);
        }
    m->fp4_table = table;
    return 0;
}

int mq_model_plan(const char *dir, const mq_model_opts *opts, const mq_alloc *alloc, mq_model **out,
                  const mq_read **reads, int *n_reads, char *err, size_t errlen)
{
    static const mq_model_opts none = { 0 };
    if (!opts)
        opts = &none;
    if (!alloc)
        alloc = &mq_alloc_heap;
    *out = NULL;
    mq_model *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    struct mq_load *L = calloc(1, sizeof *L);
    if (!L) {
        free(m);
        return -ENOMEM;
    }
    m->load = L;
    L->alloc = *alloc;
    L->no_fp4 = opts->no_fp4;
    L->fp4_pack = opts->fp4_pack;
    L->fp4_table = opts->fp4_table;
    L->hugetlb_free = opts->hugetlb_free;
    int rc;
    if ((rc = mq_config_load(&m->cfg, dir, err, errlen)))
        goto fail;
    const mq_config *c = &m->cfg;
    if ((rc = mq_st_open(&L->st, dir, err, errlen)))
        goto fail;
    if (opts->bf16_dir && (rc = mq_st_open(&L->st_bf16, opts->bf16_dir, err, errlen)))
        goto fail;
    if (opts->bf16_dir && !c->nvfp4_ckpt) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: a BF16 folder for decode only pairs with an NVFP4 checkpoint", dir);
        goto fail;
    }
    L->n_files = L->st->n_files + (L->st_bf16 ? L->st_bf16->n_files : 0);
    if (!(L->paths = calloc((size_t)L->n_files, sizeof *L->paths))) {
        rc = -ENOMEM;
        goto fail;
    }
    for (int i = 0; i < L->st->n_files; i++)
        L->paths[i] = L->st->paths[i];
    for (int i = 0; L->st_bf16 && i < L->st_bf16->n_files; i++)
        L->paths[L->st->n_files + i] = L->st_bf16->paths[i];

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    L->lins = calloc((size_t)c->n_layers * 7, sizeof *L->lins);
    if (!m->layers || !L->lins) {
        rc = -ENOMEM;
        goto fail;
    }

    struct job *j;
    uint16_t *embed = NULL;
    if ((rc = plan_bf16_matrix(m, L->st, 0, "model.embed_tokens.weight", c->vocab, c->hidden, JOB_EMBED, &embed, &j,
                               err, errlen)))
        goto fail;
    mq_bf16_weight_bind(&m->embed, c->vocab, c->hidden, embed);
    if (c->tie_embeddings)
        j->pack = &m->embed; /* it is the LM head too */
    for (int l = 0; l < c->n_layers; l++) {
        mq_layer *ly = &m->layers[l];
        char nm[256];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        if ((rc = plan_vec(m, L->st, nm, c->hidden, &ly->attn_norm, err, errlen)))
            goto fail;
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        if ((rc = plan_vec(m, L->st, nm, c->hidden, &ly->ffn_norm, err, errlen)))
            goto fail;
        if (c->qk_norm) {
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_norm.weight", l);
            if ((rc = plan_vec(m, L->st, nm, c->head_dim, &ly->q_norm, err, errlen)))
                goto fail;
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_norm.weight", l);
            if ((rc = plan_vec(m, L->st, nm, c->head_dim, &ly->k_norm, err, errlen)))
                goto fail;
        }
        for (int jl = 0; jl < 7; jl++)
            if ((rc = plan_linear(m, l, jl, err, errlen)))
                goto fail;
    }
    if ((rc = plan_vec(m, L->st, "model.norm.weight", c->hidden, &m->final_norm, err, errlen)))
        goto fail;
    if (!c->tie_embeddings) {
        uint16_t *head = NULL;
        if ((rc = plan_bf16_matrix(m, L->st, 0, "lm_head.weight", c->vocab, c->hidden, JOB_EMBED, &head, &j, err,
                                   errlen)))
            goto fail;
        mq_bf16_weight_bind(&m->lm_head, c->vocab, c->hidden, head);
        j->pack = &m->lm_head;
    }
    if ((rc = check_unused(m, err, errlen)) || (rc = plan_fp4_packed(m, err, errlen)))
        goto fail;

    *out = m;
    *reads = L->reads;
    *n_reads = L->n_reads;
    return 0;
fail:
    if (rc == -ENOMEM && err && !*err)
        mq_errmsg(err, errlen, 0, "%s: out of memory while planning the load", dir);
    mq_model_free(m);
    return rc;
}

int mq_model_files(const mq_model *m, const char *const **paths)
{
    if (!m->load || m->load->finished) {
        *paths = NULL;
        return 0;
    }
    *paths = (const char *const *)m->load->paths;
    return m->load->n_files;
}

/* ---- conversions ------------------------------------------------------------------ */

static float f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    float v;
    if (e == 0)
        v = ldexpf((float)f, -24);
    else if (e == 31)
        v = f ? NAN : INFINITY;
    else
        v = ldexpf((float)(f | 0x400), (int)e - 25);
    return s ? -v : v;
}

static float elem_f32(mq_dtype dt, const void *src, size_t i)
{
    switch (dt) {
    case MQ_DT_BF16: return mq_bf16_to_f32(((const uint16_t *)src)[i]);
    case MQ_DT_F16: return f16_to_f32(((const uint16_t *)src)[i]);
    case MQ_DT_F32: {
        float v;
        memcpy(&v, (const char *)src + 4 * i, 4);
        return v;
    }
    default: return NAN;
    }
}

/* BF16 → NVFP4 for a whole linear, g from the tensor's amax (amax_known: from the pieces,
 * else a pass over w), then one pass over groups of
 * 16 rows: each group is copied once into a small buffer (it stays in L1/L2) and from
 * there converted to FP32 and quantized, and, when `pack` is set, written back in place
 * in the packed BF16 layout (mq_kernels.h: a group occupies the same bytes in both
 * layouts when k is even). The bytes are those of quantizing all rows and then
 * mq_bf16_weight_pack_in_place: rows are quantized independently and packing works on
 * groups of 16. *packed tells whether the BF16 rows were packed (not when k is odd). */
static int quantize_linear(mq_linear *lin, uint16_t *w, const float *amax_known, int pack, int *packed,
                           const char *name, char *err, size_t errlen)
{
    const int n = lin->bf16.n, k = lin->bf16.k;
    float amax = amax_known ? *amax_known : mq_amax_bf16(w, (size_t)n * k);
    if (!isfinite(amax)) {
        return mq_errmsg(err, errlen, -EINVAL, "tensor \"%s\": NaN or Inf in the weights", name);
    }
    lin->fp4.g = mq_fp4_global_scale(amax);
    enum { G = 16 };
    *packed = pack && !(k & 1);
    float *buf = malloc((size_t)G * k * sizeof(float));
    uint16_t *grp = malloc((size_t)G * k * sizeof(uint16_t));
    if (!buf || !grp) {
        free(buf);
        free(grp);
        return mq_errmsg(err, errlen, -ENOMEM, "tensor \"%s\": out of memory quantizing it", name);
    }
    int rc = 0;
    for (int r0 = 0; r0 < n && !rc; r0 += G) {
        const int r1 = r0 + G < n ? r0 + G : n;
        const size_t e = (size_t)(r1 - r0) * k;
        memcpy(grp, w + (size_t)r0 * k, e * sizeof *grp);
        mq_bf16_to_f32_row(grp, buf, e);
        rc = mq_fp4_weight_quantize_rows(&lin->fp4, buf, (size_t)k, r0, r1);
        if (!rc && *packed)
            mq_bf16_weight_pack_rows(w, n, k, grp, (size_t)k, r0, r1);
    }
    free(buf);
    free(grp);
    if (rc)
        mq_errmsg(err, errlen, 0, "tensor \"%s\": cannot quantize to NVFP4", name);
    return rc;
}

/* E4M3 has one NaN per sign (0x7f, 0xff) and no infinity: a NaN block scale would make
 * its 16 weights NaN in one kernel and something else in another, so the checkpoint is
 * refused, naming the first such block. */
static int check_block_scales(const uint8_t *scales, uint64_t bytes, int k, const char *name, char *err, size_t errlen)
{
    const uint64_t per_row = (uint64_t)k / MQ_FP4_BLOCK, b = mq_e4m3_find_nan(scales, (size_t)bytes);
    if (b < bytes)
        return mq_errmsg(err, errlen, -EINVAL,
                         "tensor \"%s\": block scale 0x%02x (row %llu, block %llu) is an E4M3 NaN", name, scales[b],
                         (unsigned long long)(b / per_row), (unsigned long long)(b % per_row));
    return 0;
}

/* The last NVFP4 part of a linear arrived: check g_w, and dequantize for BF16 if needed. */
static int finish_fp4_linear(struct lin_state *ls, const char *name, char *err, size_t errlen)
{
    mq_linear *lin = ls->lin;
    const int n = lin->fp4.n, k = lin->fp4.k;
    if (!(lin->fp4.g > 0) || !isfinite(lin->fp4.g)) {
        return mq_errmsg(err, errlen, -EINVAL, "tensor \"%s\": weight_global_scale must be a positive number", name);
    }
    mq_fp4_weight_pack_rows(&lin->fp4, 0, n);
    if (!ls->bf16_dst)
        return 0;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row)
        return -ENOMEM;
    for (int r = 0; r < n; r++) {
        mq_fp4_dequantize_row(lin->fp4.codes + (size_t)r * (k / 2), lin->fp4.scales + (size_t)r * (k / 16), k,
                              lin->fp4.g, row);
        mq_f32_to_bf16_row(row, ls->bf16_dst + (size_t)r * k, (size_t)k);
    }
    free(row);
    int rc = mq_bf16_weight_pack_in_place(ls->bf16_dst, n, k);
    if (rc == 0)
        mq_bf16_weight_bind_packed(&lin->bf16, n, k, ls->bf16_dst);
    else if (rc != -EINVAL) /* odd K: stays row-major */
        return mq_errmsg(err, errlen, rc, "tensor \"%s\": out of memory packing it", name);
    return 0;
}

void mq_model_piece_arrived(mq_model *m, int i, uint64_t off, uint64_t bytes)
{
    struct mq_load *L = m->load;
    if (!L || L->finished || i < 0 || i >= L->n_reads)
        return;
    struct job *j = &L->jobs[i];
    /* whole BF16 elements only: a piece boundary inside one would lose it (ready then
     * takes the amax itself, as the bytes covered fall short) */
    if (j->kind != JOB_LINEAR || !j->quantize || j->staging || ((L->reads[i].offset | off | bytes) & 1))
        return;
    const float a = mq_amax_bf16((const uint16_t *)j->dst + off / 2, (size_t)(bytes / 2));
    uint32_t bits, cur = atomic_load_explicit(&j->amax_bits, memory_order_relaxed);
    memcpy(&bits, &a, sizeof bits);
    while (bits > cur && !atomic_compare_exchange_weak(&j->amax_bits, &cur, bits)) {
    }
    atomic_fetch_add(&j->amax_bytes, bytes);
}

int mq_model_tensor_ready(mq_model *m, int i, char *err, size_t errlen)
{
    struct mq_load *L = m->load;
    if (!L || L->finished || i < 0 || i >= L->n_reads)
        return -EINVAL;
    struct job *j = &L->jobs[i];
    const char *name = L->reads[i].tensor;
    int expect = 0, rc = 0;
    if (!atomic_compare_exchange_strong(&j->done, &expect, 1)) {
        return mq_errmsg(err, errlen, -EINVAL, "tensor \"%s\" made ready twice", name);
    }
    switch (j->kind) {
    case JOB_VEC:
        for (size_t e = 0; e < j->numel; e++)
            ((float *)j->dst)[e] = elem_f32(j->dtype, j->staging, e);
        break;
    case JOB_EMBED:
    case JOB_LINEAR:
        if (j->staging)
            for (size_t e = 0; e < j->numel; e++)
                ((uint16_t *)j->dst)[e] = mq_f32_to_bf16(elem_f32(j->dtype, j->staging, e));
        if (j->kind == JOB_LINEAR && j->quantize) {
            int packed = 0;
            float amax;
            const uint32_t bits = atomic_load(&j->amax_bits);
            memcpy(&amax, &bits, sizeof amax);
            const int known = !j->staging && atomic_load(&j->amax_bytes) == L->reads[i].bytes;
            __atomic_fetch_add(known ? &m->amax_from_pieces : &m->amax_from_pass, 1, __ATOMIC_RELAXED);
            rc = quantize_linear(j->lin, j->dst, known ? &amax : NULL, j->pack != NULL, &packed, name, err, errlen);
            if (!rc && packed)
                mq_bf16_weight_bind_packed(j->pack, j->pack->n, j->pack->k, j->dst);
        } else if (j->pack) {
            const int n = j->pack->n, k = j->pack->k;
            rc = mq_bf16_weight_pack_in_place(j->dst, n, k);
            if (rc == 0)
                mq_bf16_weight_bind_packed(j->pack, n, k, j->dst);
            else if (rc == -EINVAL)
                rc = 0; /* odd K: stays row-major */
            else
                mq_errmsg(err, errlen, 0, "tensor \"%s\": out of memory packing it", name);
        }
        break;
    case JOB_FP4_WGS:
    case JOB_FP4_IGS: {
        float g;
        memcpy(&g, j->staging, 4);
        if (!(g > 0) || !isfinite(g)) {
            rc = mq_errmsg(err, errlen, -EINVAL, "tensor \"%s\" must be a positive number (got %g)", name, g);
        }
        if (j->kind == JOB_FP4_WGS)
            j->lin->fp4.g = g;
        else
            j->lin->in_g = g;
        break;
    }
    case JOB_FP4_CODES: break;
    case JOB_FP4_SCALES:
        rc = check_block_scales(L->reads[i].dst, L->reads[i].bytes, j->lin->fp4.k, name, err, errlen);
        break;
    }
    if (j->staging) {
        xfree_idx(m, j->staging_idx);
        j->staging = NULL;
    }
    if (!rc && j->ls && atomic_fetch_sub(&j->ls->parts_left, 1) == 1)
        rc = finish_fp4_linear(j->ls, name, err, errlen);
    return rc;
}

int mq_model_finish(mq_model *m, char *err, size_t errlen)
{
    struct mq_load *L = m->load;
    if (!L || L->finished)
        return 0;
    for (int i = 0; i < L->n_reads; i++)
        if (!atomic_load(&L->jobs[i].done)) {
            return mq_errmsg(err, errlen, -EINVAL, "tensor \"%s\" was never loaded", L->reads[i].tensor);
        }
    if (m->cfg.tie_embeddings)
        m->lm_head = m->embed; /* as its job left it: packed */
    /* the model keeps only what it owns; the load state goes (allocator kept for free) */
    mq_st_close(L->st);
    mq_st_close(L->st_bf16);
    L->st = L->st_bf16 = NULL;
    free(L->paths);
    L->paths = NULL;
    free(L->reads);
    L->reads = NULL;
    free(L->jobs);
    L->jobs = NULL;
    free(L->lins);
    L->lins = NULL;
    L->n_reads = L->n_files = 0;
    L->finished = 1;
    return 0;
}

int mq_model_has_fp4(const mq_model *m)
{
    return m->cfg.n_layers > 0 && m->layers[0].q.fp4.codes != NULL;
}

static int pread_all(int fd, void *dst, uint64_t bytes, uint64_t off)
{
    uint8_t *p = dst;
    while (bytes) {
        size_t want_b = bytes > (1u << 30) ? (1u << 30) : (size_t)bytes;
        ssize_t r = pread(fd, p, want_b, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EIO;
        p += r;
        off += (uint64_t)r;
        bytes -= (uint64_t)r;
    }
    return 0;
}

int mq_model_load(const char *dir, const mq_model_opts *opts, mq_model **out, char *err, size_t errlen)
{
    const mq_read *reads;
    int n, rc;
    mq_model *m;
    *out = NULL;
    if ((rc = mq_model_plan(dir, opts, &mq_alloc_heap, &m, &reads, &n, err, errlen)))
        return rc;
    const char *const *paths;
    int nf = mq_model_files(m, &paths);
    int *fds = calloc((size_t)nf, sizeof *fds);
    if (!fds) {
        mq_model_free(m);
        return -ENOMEM;
    }
    for (int f = 0; f < nf; f++)
        fds[f] = -1;
    for (int f = 0; f < nf && !rc; f++)
        if ((fds[f] = mq_open_regular(paths[f], 0, err, errlen)) < 0)
            rc = fds[f];
    for (int i = 0; i < n && !rc; i++) {
        if ((rc = pread_all(fds[reads[i].file], reads[i].dst, reads[i].bytes, reads[i].offset))) {
            mq_errmsg(err, errlen, 0, "%s: tensor \"%s\": read failed: %s", paths[reads[i].file], reads[i].tensor,
                      strerror(-rc));
            break;
        }
        rc = mq_model_tensor_ready(m, i, err, errlen);
    }
    for (int f = 0; f < nf; f++)
        if (fds[f] >= 0)
            close(fds[f]);
    free(fds);
    if (!rc)
        rc = mq_model_finish(m, err, errlen);
    if (rc) {
        mq_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Every block the allocator gave is returned when it can free (else its owner keeps
 * the memory, e.g. mqd's arena). */
void mq_model_free(mq_model *m)
{
    if (!m)
        return;
    struct mq_load *L = m->load;
    if (L) {
        for (int i = 0; i < L->n_allocs; i++)
            if (L->allocs[i].p && L->alloc.free)
                L->alloc.free(L->alloc.ctx, L->allocs[i].p, L->allocs[i].bytes);
        mq_st_close(L->st);
        mq_st_close(L->st_bf16);
        free(L->paths);
        free(L->reads);
        free(L->jobs);
        free(L->lins);
        free(L->allocs);
        free(L);
    }
    mq_config_free(&m->cfg);
    free(m->layers);
    free(m);
}
