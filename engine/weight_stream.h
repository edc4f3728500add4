/* engine/weight_stream.h — streams checkpoint bytes into memory with io_uring and hands
 * each finished tensor to a "ready" callback (quantization) while later reads proceed.
 *
 * Owns: one io_uring (queue_depth entries), the open files, bounce buffers for O_DIRECT,
 * and optional helper threads that run the ready callbacks (the prefill pool's CPUs are
 * idle during start-up, so they quantize while the ring keeps reading).
 *
 * I/O: every read is cut into pieces of at most read_bytes; up to queue_depth pieces
 * are in flight. Short reads are resubmitted for the rest; end of file before a read is
 * complete, or any error, stops the stream with a message naming the file, the offset
 * and the tensor. O_DIRECT (page cache bypassed: the right choice for a cold load of a
 * big model) needs aligned offsets, lengths and buffers, so direct pieces are read into
 * aligned bounce buffers and copied to their destination; buffered pieces land directly.
 * direct = auto picks O_DIRECT only when most of the file is not in the page cache
 * (mincore): copying from a warm cache is faster than reading the device again.
 * When the file system refuses O_DIRECT the stream falls back to buffered reads and
 * says so in mq_ws_result.note.
 *
 * Progress: mq_ws_progress is written with atomics by the streamer and may be read at
 * any time from any thread (mqctl status, systemd STATUS=) with mq_ws_progress_get.
 *
 * Who calls it: mq_ws_load_model, the one model loader of mqd, tests and benchmarks.
 * Thread rules: mq_ws_run blocks its caller until everything was read and made ready
 * (or failed, or another thread set *o->cancel: checked between completions, so a stop
 * takes at most one read's time). ready() is called once per read, from the helper threads (or the caller's
 * thread when helpers = 0), concurrently for different reads; piece(), when given, on the
 * streaming thread (the caller's) for each piece, before that read's ready().
 */
#ifndef MQ_WEIGHT_STREAM_H
#define MQ_WEIGHT_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "common/errmsg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mq_ws_read {
    int file; /* index into the paths given to mq_ws_run */
    uint64_t offset;
    uint64_t bytes;
    void *dst;
    const char *what; /* tensor name for messages (may be NULL) */
} mq_ws_read;

typedef enum { MQ_WS_DIRECT_AUTO = 0, MQ_WS_DIRECT_ON = 1, MQ_WS_DIRECT_OFF = 2 } mq_ws_direct;

/* Where mq_ws_load_model takes the model's staging buffers from (read destinations that
 * are converted when ready and freed right after; never arena memory):
 *   MAPPED: buffers of 2 MiB or more get a mapping of their own (THP allowed), so
 *           freeing one returns its pages to the kernel at once; smaller ones the heap;
 *   HEAP:   all from the heap (malloc's own mmap threshold decides what returns). */
typedef enum { MQ_WS_STAGING_MAPPED = 0, MQ_WS_STAGING_HEAP = 1 } mq_ws_staging;

/* Pieces of read i, bytes [off, off + bytes) of it, have arrived (see mq_ws_opts.piece). */
typedef void (*mq_ws_piece_fn)(void *ctx, int i, uint64_t off, uint64_t bytes);

/* helpers: one per CPU the calling thread may run on (sched_getaffinity) */
#define MQ_WS_HELPERS_PER_CPU (-1)

typedef struct mq_ws_opts {
    int queue_depth;   /* pieces in flight (default 8) */
    size_t read_bytes; /* largest piece (default 1 MiB; multiple of 4096) */
    mq_ws_direct direct;
    int helpers;             /* threads running ready(): 0 = the caller's thread; default
                                MQ_WS_HELPERS_PER_CPU (one per CPU) */
    const void *helper_cpus; /* cpu_set_t * for the helpers, or NULL */
    mq_ws_staging staging;   /* mq_ws_load_model only (default MAPPED) */
    const int *cancel;       /* non-zero (atomic, any thread) stops the stream: -ECANCELED */
    /* Optional: called on the streaming thread as each piece lands in its destination
     * (the bytes are then in that thread's cache), before the read is handed to ready();
     * for light work on hot bytes (mq_ws_load_model: a tensor's amax). May be NULL. */
    mq_ws_piece_fn piece;
} mq_ws_opts;

void mq_ws_opts_default(mq_ws_opts *o);

typedef struct mq_ws_progress {
    uint64_t bytes_total, bytes_done; /* atomics */
    uint64_t reads_total, reads_done; /* read = tensor; done = made ready */
    uint64_t start_ns, end_ns;        /* CLOCK_MONOTONIC; end 0 while running */
} mq_ws_progress;

/* Consistent-enough snapshot; rate_bps = bytes_done / elapsed (0 before start). */
void mq_ws_progress_get(const mq_ws_progress *p, uint64_t *bytes_done, uint64_t *bytes_total, uint64_t *reads_done,
                        uint64_t *reads_total, double *rate_bps);

typedef struct mq_ws_result {
    int direct_used;   /* files read with O_DIRECT */
    int buffered_used; /* files read buffered */
    uint64_t submits, short_reads;
    double seconds;
    /* CPU seconds of the run: the streaming thread (submits, piece hook, ready() when
     * there are no helpers), the helpers (ready(): conversion, quantization, packing,
     * first touch of what they fill), and the whole process (with io_uring's kernel
     * workers, if a read was punted to them: a buffered read of cached bytes is copied
     * inline by the streaming thread, and whatever else the process ran meanwhile) */
    double cpu_stream_s, cpu_helpers_s, cpu_process_s;
    char note[256]; /* "O_DIRECT refused by the file system on X; buffered" etc. */
} mq_ws_result;

/* ready(ctx, i, err, errlen) after read i's bytes are all in reads[i].dst; a negative
 * return stops the stream with that error. */
typedef int (*mq_ws_ready_fn)(void *ctx, int i, char *err, size_t errlen);

int mq_ws_run(const char *const *paths, int n_files, const mq_ws_read *reads, int n_reads, const mq_ws_opts *o,
              mq_ws_ready_fn ready, void *ctx, mq_ws_progress *prog, mq_ws_result *res, char *err, size_t errlen);

/* ---- loading a model folder (engine/model.h) through the stream ---- */
struct mq_model;
struct mq_model_opts;
struct mq_arena;

/* mq_model_plan + mq_ws_run (ready = mq_model_tensor_ready) + mq_model_finish, with all
 * weight memory from `arena` (hugepage-backed) and staging buffers as o->staging says,
 * freed by the model when done. The arena must outlive the model (the model frees
 * through it). prog may be NULL. err: MQ_ERRMSG_LEN bytes or more. */
int mq_ws_load_model(const char *dir, const struct mq_model_opts *mopts, struct mq_arena *arena, const mq_ws_opts *o,
                     mq_ws_progress *prog, mq_ws_result *res, struct mq_model **out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
