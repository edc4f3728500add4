/* engine/weight_load.c — mq_ws_load_model (weight_stream.h): a model folder streamed into
 * the arena; the one loader that mqd, tests and benchmarks run. Its own file so the
 * streamer links without the model loader. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/weight_stream.h"

#include "engine/arena.h"
#include "engine/model.h"
#include "common/errmsg.h"

#define STAGING_MAP_MIN MQ_HUGEPAGE_BYTES /* MAPPED: smaller staging buffers come from the heap */

/* The allocator the model loads through (ctx = the arena). Weights go to the arena;
 * staging buffers are told apart by their name and come from outside it, by policy. */
static int is_staging(const char *what)
{
    return what && strncmp(what, "staging", 7) == 0;
}

static void *heap_alloc(size_t bytes, size_t align)
{
    void *p = NULL;
    return posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, bytes) ? NULL : p;
}

static void *alloc_mapped(void *ctx, size_t bytes, size_t align, const char *what)
{
    if (!is_staging(what))
        return mq_arena_alloc((mq_arena *)ctx, bytes, align, what);
    return bytes >= STAGING_MAP_MIN ? mq_mem_map(bytes, 0, 1, NULL) : heap_alloc(bytes, align);
}

static void free_mapped(void *ctx, void *p, size_t bytes)
{
    if (!p || mq_arena_owns((mq_arena *)ctx, p))
        return; /* arena memory lives with the arena */
    if (bytes >= STAGING_MAP_MIN)
        mq_mem_unmap(p, bytes);
    else
        free(p);
}

static void *alloc_heap(void *ctx, size_t bytes, size_t align, const char *what)
{
    return is_staging(what) ? heap_alloc(bytes, align) : mq_arena_alloc((mq_arena *)ctx, bytes, align, what);
}

static void free_heap(void *ctx, void *p, size_t bytes)
{
    (void)bytes;
    if (p && !mq_arena_owns((mq_arena *)ctx, p))
        free(p);
}

static int load_ready(void *ctx, int i, char *err, size_t errlen)
{
    char e[MQ_ERRMSG_LEN] = "";
    int r = mq_model_tensor_ready((mq_model *)ctx, i, e, sizeof e);
    if (r < 0)
        mq_errmsg(err, errlen, 0, "%s", e);
    return r;
}

static void load_piece(void *ctx, int i, uint64_t off, uint64_t bytes)
{
    mq_model_piece_arrived((mq_model *)ctx, i, off, bytes);
}

int mq_ws_load_model(const char *dir, const struct mq_model_opts *mopts, struct mq_arena *arena, const mq_ws_opts *o,
                     mq_ws_progress *prog, mq_ws_result *res, struct mq_model **out, char *err, size_t errlen)
{
    char e[MQ_ERRMSG_LEN] = "";
    int heap = o && o->staging == MQ_WS_STAGING_HEAP;
    mq_alloc al = { .alloc = heap ? alloc_heap : alloc_mapped, .free = heap ? free_heap : free_mapped, .ctx = arena };
    mq_model *m = NULL;
    const mq_read *reads = NULL;
    int n_reads = 0;
    int r = mq_model_plan(dir, mopts, &al, &m, &reads, &n_reads, e, sizeof e);
    if (r < 0) {
        return mq_errmsg(err, errlen, r, "%s", e);
    }
    const char *const *paths = NULL;
    int n_files = mq_model_files(m, &paths);
    mq_ws_read *wr = calloc((size_t)n_reads + 1, sizeof *wr);
    if (!wr) {
        mq_model_free(m);
        return mq_errmsg(err, errlen, -ENOMEM, "%s: out of memory for %d reads", dir, n_reads);
    }
    for (int i = 0; i < n_reads; i++)
        wr[i] = (mq_ws_read){ .file = reads[i].file,
                              .offset = reads[i].offset,
                              .bytes = reads[i].bytes,
                              .dst = reads[i].dst,
                              .what = reads[i].tensor };
    mq_ws_opts wo;
    if (o)
        wo = *o;
    else
        mq_ws_opts_default(&wo);
    wo.piece = load_piece;
    r = mq_ws_run(paths, n_files, wr, n_reads, &wo, load_ready, m, prog, res, err, errlen);
    free(wr);
    if (r == 0) {
        r = mq_model_finish(m, e, sizeof e);
        if (r < 0)
            mq_errmsg(err, errlen, 0, "%s", e);
    }
    if (r < 0) {
        mq_model_free(m);
        return r;
    }
    *out = m;
    return 0;
}
