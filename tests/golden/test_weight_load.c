/* The loader mqd runs (mq_ws_load_model: io_uring, helper threads, the arena) and
 * mq_model_load (pread) against the specification, on mq-qwen3-80m (a BF16 checkpoint):
 *  - every linear's NVFP4 copy: g = mq_fp4_global_scale(amax of the tensor), and codes and
 *    scales of each row equal to mq_fp4_quantize_row (the scalar form of NVFP4.md) of the
 *    checkpoint's row;
 *  - the packed NVFP4 copy, in its index and in its table form, equal to
 *    mq_fp4_weight_pack_rows of those codes and scales;
 *  - every BF16 matrix (linears, embedding) equal, byte for byte, to the checkpoint's rows
 *    put in the packed layout by mq_bf16_weight_pack_rows, pad included, and some rows
 *    read back through mq_bf16_weight_row (the scalar reader of the layout) equal to the
 *    checkpoint's values.
 * With 0, 1 and 2 helper threads and small reads, so tensors arrive in many pieces; the
 * streamed load takes every tensor amax from the pieces as they arrive (no second pass),
 * the pread load by a pass (mq_model.amax_from_pieces / amax_from_pass).
 * Also the packed copy's plan (mq_fp4_form_plan) on given memory figures. */
#define _GNU_SOURCE
#include "engine/arena.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/weight_stream.h"
#include "tests/harness.h"

#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const LIN[7] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj" };

static const char *model_dir(void)
{
    return shared_path("models/mq-qwen3-80m");
}

/* The tensor's BF16 elements from the file (NULL if missing or not BF16). */
static uint16_t *read_bf16(const mq_st *st, const char *name, int64_t *numel)
{
    const mq_st_tensor *t = mq_st_find(st, name);
    if (!t || t->dtype != MQ_DT_BF16)
        return NULL;
    uint16_t *p = malloc(t->bytes);
    int fd = open(st->paths[t->file], O_RDONLY | O_CLOEXEC);
    ssize_t r = fd >= 0 && p ? pread(fd, p, t->bytes, (off_t)t->offset) : -1;
    if (fd >= 0)
        close(fd);
    if (r != (ssize_t)t->bytes) {
        free(p);
        return NULL;
    }
    *numel = mq_st_numel(t);
    return p;
}

static void *zalloc64(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64))
        return NULL;
    memset(p, 0, bytes);
    return p;
}

/* w holds `rows` (row-major [n, k] from the checkpoint) in the packed layout. */
static int bf16_matches(const mq_bf16_weight *w, const uint16_t *rows)
{
    const int n = w->n, k = w->k;
    if (!w->packed)
        return memcmp(w->w, rows, (size_t)n * k * 2) == 0;
    size_t bytes = mq_bf16_weight_packed_bytes(n, k);
    uint16_t *ref = zalloc64(bytes);
    float *row = malloc((size_t)k * sizeof *row);
    int ok = ref && row;
    if (ok) {
        mq_bf16_weight_pack_rows(ref, n, k, rows, (size_t)k, 0, n);
        ok = memcmp(ref, w->w, bytes) == 0;
    }
    for (int r = 0; ok && r < n; r += n / 7 + 1) { /* the layout read back by the scalar reader */
        mq_bf16_weight_row(w, r, row);
        for (int c = 0; c < k && ok; c++)
            ok = row[c] == mq_bf16_to_f32(rows[(size_t)r * k + c]);
    }
    free(ref);
    free(row);
    return ok;
}

/* The NVFP4 copy (and its packed form) of one linear against the specification. */
static int fp4_matches(const mq_fp4_weight *w, const uint16_t *rows)
{
    const int n = w->n, k = w->k, kp = w->kp;
    float amax = 0;
    for (size_t i = 0; i < (size_t)n * k; i++)
        amax = fmaxf(amax, fabsf(mq_bf16_to_f32(rows[i])));
    const float g = mq_fp4_global_scale(amax);
    if (w->g != g)
        return 0;
    mq_fp4_weight ref;
    void *mem = zalloc64(mq_fp4_weight_bytes(n, k));
    float *x = malloc((size_t)k * sizeof *x);
    int ok = mem && x;
    if (ok)
        mq_fp4_weight_bind(&ref, n, k, mem);
    for (int r = 0; ok && r < n; r++) {
        for (int c = 0; c < k; c++)
            x[c] = mq_bf16_to_f32(rows[(size_t)r * k + c]);
        uint8_t *codes = ref.codes + (size_t)r * (kp / 2), *scales = ref.scales + (size_t)r * (kp / MQ_FP4_BLOCK);
        ok = mq_fp4_quantize_row(x, k, g, codes, scales) == 0 &&
             !memcmp(codes, w->codes + (size_t)r * (kp / 2), kp / 2) &&
             !memcmp(scales, w->scales + (size_t)r * (kp / MQ_FP4_BLOCK), kp / MQ_FP4_BLOCK);
    }
    void *packed = NULL;
    if (ok && w->packed) {
        size_t pb = w->table ? mq_fp4_weight_table_bytes(n, k) : mq_fp4_weight_packed_bytes(n, k);
        packed = zalloc64(pb);
        ok = packed != NULL;
        if (ok) {
            ref.g = g;
            if (w->table)
                mq_fp4_weight_bind_table(&ref, packed);
            else
                mq_fp4_weight_bind_packed(&ref, packed);
            mq_fp4_weight_pack_rows(&ref, 0, n);
            ok = memcmp(packed, w->packed, pb) == 0;
        }
    }
    free(packed);
    free(mem);
    free(x);
    return ok;
}

static void check_model(const mq_model *m, const char *label)
{
    char err[MQ_ERRMSG_LEN];
    mq_st *st = NULL;
    CHECK(mq_st_open(&st, model_dir(), err, sizeof err) == 0, "%s", err);
    if (!st)
        return;
    int64_t ne = 0;
    uint16_t *e = read_bf16(st, "model.embed_tokens.weight", &ne);
    CHECK(e && bf16_matches(&m->embed, e), "%s: embedding differs from the checkpoint", label);
    free(e);
    int bad_bf16 = 0, bad_fp4 = 0, packed = 0, lins = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const mq_layer *L = &m->layers[l];
        const mq_linear *v[7] = { &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down };
        for (int j = 0; j < 7; j++) {
            char nm[160];
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, LIN[j]);
            uint16_t *rows = read_bf16(st, nm, &ne);
            CHECK(rows && ne == (int64_t)v[j]->bf16.n * v[j]->bf16.k, "%s: %s unreadable", label, nm);
            if (!rows)
                continue;
            lins++;
            packed += v[j]->bf16.packed && v[j]->fp4.packed;
            if (!bf16_matches(&v[j]->bf16, rows) && bad_bf16++ == 0)
                printf("    %s: %s BF16 copy differs\n", label, nm);
            if (!fp4_matches(&v[j]->fp4, rows) && bad_fp4++ == 0)
                printf("    %s: %s NVFP4 copy differs from the specification\n", label, nm);
            free(rows);
        }
    }
    CHECK(lins == m->cfg.n_layers * 7 && packed == lins, "%s: %d of %d linears with both packed copies", label, packed,
          lins);
    CHECK(bad_bf16 == 0, "%s: %d linears' BF16 copies differ", label, bad_bf16);
    CHECK(bad_fp4 == 0, "%s: %d linears' NVFP4 copies differ", label, bad_fp4);
    mq_st_close(st);
}

static void test_streamed_load_matches_specification(void)
{
    if (access(model_dir(), R_OK) != 0)
        SKIP("%s not readable (MQ_SHARED)", model_dir());
    const int helpers[3] = { 0, 1, 2 };
    for (int h = 0; h < 3; h++) { /* the packed copy's index form, then (2 helpers) its table form */
        mq_arena_opts ao;
        mq_arena_opts_default(&ao);
        mq_arena *arena = NULL;
        CHECK(mq_arena_create(&arena, &ao) == 0, "arena");
        mq_ws_opts wo;
        mq_ws_opts_default(&wo);
        wo.helpers = helpers[h];
        wo.read_bytes = 64 << 10; /* many pieces per tensor */
        wo.queue_depth = 4;
        const mq_model_opts mo = { .fp4_pack = MQ_FP4_PACK_ON,
                                   .fp4_table = helpers[h] == 2 ? MQ_FP4_PACK_ON : MQ_FP4_PACK_OFF };
        mq_model *m = NULL;
        char err[MQ_ERRMSG_LEN] = "", label[64];
        int rc = mq_ws_load_model(model_dir(), &mo, arena, &wo, NULL, NULL, &m, err, sizeof err);
        CHECK(rc == 0, "mq_ws_load_model with %d helpers: %s", helpers[h], err);
        snprintf(label, sizeof label, "mq_ws_load_model, %d helpers, %s form", helpers[h],
                 helpers[h] == 2 ? "table" : "index");
        CHECK(!m || m->fp4_table == (helpers[h] == 2), "%s: fp4_table %d", label, m->fp4_table);
        const int lins = m ? m->cfg.n_layers * 7 : 0;
        CHECK(!m || (m->amax_from_pieces == lins && m->amax_from_pass == 0),
              "%s: amax of %d linears from the pieces, %d by a pass (want %d, 0)", label, m->amax_from_pieces,
              m->amax_from_pass, lins);
        if (m)
            check_model(m, label);
        mq_model_free(m);
        mq_arena_destroy(arena);
    }
}

static void test_pread_load_matches_specification(void)
{
    if (access(model_dir(), R_OK) != 0)
        SKIP("%s not readable (MQ_SHARED)", model_dir());
    const mq_model_opts mo = { .fp4_pack = MQ_FP4_PACK_ON };
    mq_model *m = NULL;
    char err[MQ_ERRMSG_LEN] = "";
    CHECK(mq_model_load(model_dir(), &mo, &m, err, sizeof err) == 0, "mq_model_load: %s", err);
    CHECK(!m || (m->amax_from_pass == m->cfg.n_layers * 7 && m->amax_from_pieces == 0),
          "mq_model_load: amax of %d linears by a pass, %d from pieces (it has no pieces)", m->amax_from_pass,
          m->amax_from_pieces);
    if (m)
        check_model(m, "mq_model_load");
    mq_model_free(m);
}

/* The packed copy's plan: G = 1 GiB, a model of 3 G without the copy, 1.25 G (index) or
 * 3 G (table) with it. */
static void test_fp4_form_plan(void)
{
    const size_t G = (size_t)1 << 30, have = 3 * G, ix = G + G / 4, tb = 3 * G;
    const mq_fp4_pack A = MQ_FP4_PACK_AUTO, ON = MQ_FP4_PACK_ON, OFF = MQ_FP4_PACK_OFF;
    struct {
        mq_fp4_pack pack, table;
        size_t avail, huge;
        mq_fp4_form want;
        const char *why;
    } c[] = {
        { A, A, 12 * G, 0, MQ_FP4_FORM_TABLE, "auto/auto: weights + table fit in half" },
        { A, A, 9 * G, 0, MQ_FP4_FORM_INDEX, "auto/auto: only the index form fits" },
        { A, A, 8 * G, 0, MQ_FP4_FORM_NONE, "auto/auto: no form fits" },
        { A, A, 0, 0, MQ_FP4_FORM_NONE, "auto/auto: memory unknown" },
        /* mqd's hugetlb pool (hugepages_reserve, nr_hugepages) is not in MemAvailable and
         * serves nothing else: all of it counts */
        { A, A, 2 * G, 5 * G, MQ_FP4_FORM_TABLE, "auto/auto: free huge pages count" },
        { A, A, 2 * G, 3 * G + G / 2, MQ_FP4_FORM_INDEX, "auto/auto: free huge pages count for the index form" },
        { A, A, 2 * G, 3 * G, MQ_FP4_FORM_NONE, "auto/auto: free huge pages too few" },
        /* table on: the form whenever the copy is made; whether it is, fp4_pack says */
        { A, ON, 8 * G, 0, MQ_FP4_FORM_NONE, "auto/on: the table form does not fit" },
        { A, ON, 9 * G, 0, MQ_FP4_FORM_NONE, "auto/on: only the index form fits" },
        { A, ON, 12 * G, 0, MQ_FP4_FORM_TABLE, "auto/on: the table form fits" },
        { ON, ON, 0, 0, MQ_FP4_FORM_TABLE, "on/on" },
        { ON, A, 9 * G, 0, MQ_FP4_FORM_INDEX, "on/auto: the table form does not fit" },
        { ON, A, 0, 0, MQ_FP4_FORM_INDEX, "on/auto: memory unknown" },
        { ON, OFF, 100 * G, 0, MQ_FP4_FORM_INDEX, "on/off" },
        { A, OFF, 12 * G, 0, MQ_FP4_FORM_INDEX, "auto/off" },
        { OFF, ON, 100 * G, 0, MQ_FP4_FORM_NONE, "off/on" },
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        const mq_fp4_form got = mq_fp4_form_plan(c[i].pack, c[i].table, have, ix, tb, c[i].avail, c[i].huge);
        CHECK(got == c[i].want, "%s: form %d, want %d", c[i].why, (int)got, (int)c[i].want);
    }
}

int main(void)
{
    mq_kernels_init();
    RUN(test_fp4_form_plan);
    RUN(test_streamed_load_matches_specification);
    RUN(test_pread_load_matches_specification);
    return harness_done();
}
