/* engine/safetensors.h — the tensor directory of a safetensors checkpoint, validated.
 *
 * Owns: the list of tensors (name, dtype, shape, file, absolute offset, length) of a
 * single-file (model.safetensors) or sharded (model.safetensors.index.json + shards)
 * checkpoint. It reads only the headers; the tensor bytes are read later by whoever
 * streams the weights (model.c with pread, the runtime with io_uring).
 *
 * Validation, each failure an error naming the file and tensor: header length inside the
 * file, header JSON well-formed, known dtype, shape × dtype size == byte length, data
 * offsets inside the file, no two tensors overlapping, shard index entries present in
 * their shard. Shapes against the model's config are model.c's job.
 *
 * Also a small writer (mq_st_writer) for tests and the synthetic-checkpoint tool.
 * Thread rules: an mq_st is immutable after open; share it freely.
 */
#ifndef MQ_SAFETENSORS_H
#define MQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/errmsg.h"

#include "engine/model_config.h" /* MQ_ERRMSG_LEN */

typedef enum {
    MQ_DT_BF16,
    MQ_DT_F16,
    MQ_DT_F32,
    MQ_DT_U8,
    MQ_DT_F8_E4M3,
    MQ_DT_I32,
    MQ_DT_I64,
    MQ_DT_F64,
    MQ_DT_BOOL,
    MQ_DT_I8,
    MQ_DT_I16,
    MQ_DT_U16,
    MQ_DT_COUNT
} mq_dtype;

#define MQ_ST_MAX_DIMS   8
#define MQ_ST_HEADER_MAX (100u << 20) /* safetensors' own limit on the JSON header */

typedef struct mq_st_tensor {
    char *name;
    mq_dtype dtype;
    int ndim;
    int64_t shape[MQ_ST_MAX_DIMS];
    int file;        /* index into mq_st.paths */
    uint64_t offset; /* absolute byte offset in the file */
    uint64_t bytes;
} mq_st_tensor;

typedef struct mq_st {
    int n_files;
    char **paths;         /* [n_files] */
    uint64_t *file_bytes; /* [n_files] */
    int n_tensors;
    mq_st_tensor *tensors; /* [n_tensors], sorted by name */
} mq_st;

const char *mq_dtype_name(mq_dtype d); /* safetensors spelling: "BF16", "F8_E4M3", ... */
size_t mq_dtype_size(mq_dtype d);
int64_t mq_st_numel(const mq_st_tensor *t);

/* Opens the checkpoint in dir: model.safetensors.index.json if present, else
 * model.safetensors. 0 or a negative errno with a message in err (MQ_ERRMSG_LEN). */
int mq_st_open(mq_st **out, const char *dir, char *err, size_t errlen);
/* Opens one .safetensors file. */
int mq_st_open_file(mq_st **out, const char *path, char *err, size_t errlen);
/* Validates one file's header in memory: buf holds at least the 8-byte length and the
 * JSON (buf_len bytes), file_bytes is the whole file's size. Appends the tensors to st
 * with file index `file`. Used by open and by the fuzzer. */
int mq_st_parse_header(mq_st *st, int file, const uint8_t *buf, size_t buf_len, uint64_t file_bytes, const char *what,
                       char *err, size_t errlen);
const mq_st_tensor *mq_st_find(const mq_st *st, const char *name);
void mq_st_close(mq_st *st);

/* ---- writer ---------------------------------------------------------------------- */
/* Fills buf with bytes [off, off+len) of the tensor's data; called while writing so a
 * multi-GiB checkpoint never sits in memory. */
typedef void (*mq_st_fill_fn)(void *ctx, const char *name, uint64_t off, void *buf, size_t len);

typedef struct mq_st_writer mq_st_writer;
int mq_st_writer_create(mq_st_writer **out);
/* Adds a tensor; `data` (bytes long, not copied: keep it alive until write) or, when data
 * is NULL, `fill` produces the bytes at write time. */
int mq_st_writer_add(mq_st_writer *w, const char *name, mq_dtype dt, const int64_t *shape, int ndim, const void *data,
                     mq_st_fill_fn fill, void *fill_ctx);
/* Writes the file (header with "__metadata__": {"format": "pt"}, then the data in the
 * order added, 8-byte aligned header). 0 or negative errno with err. */
int mq_st_writer_write(mq_st_writer *w, const char *path, char *err, size_t errlen);
void mq_st_writer_free(mq_st_writer *w);

#endif
