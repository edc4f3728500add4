/* tests/fuzz/fuzz_safetensors.c — libFuzzer target for the safetensors header reader.
 * Build: clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_safetensors.c
 *        engine/safetensors.c engine/model_config.c -lcjson -lm
 * The input is a file's start (8-byte length + JSON); the first input byte also picks how
 * much data the "file" claims beyond it. Any input must be accepted with every tensor
 * inside the file, or refused with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"
#include "common/errmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint64_t extra = (uint64_t)data[0] * 64;
    data++, size--;
    mq_st *st = calloc(1, sizeof *st);
    if (!st)
        return 0;
    char err[MQ_ERRMSG_LEN] = "";
    const uint64_t file_bytes = size + extra;
    int rc = mq_st_parse_header(st, 0, data, size, file_bytes, "fuzz", err, sizeof err);
    if (rc && !err[0] && rc != -12 /* ENOMEM */)
        abort(); /* every refusal names its cause */
    if (!rc)
        for (int i = 0; i < st->n_tensors; i++) {
            const mq_st_tensor *t = &st->tensors[i];
            if (t->offset + t->bytes > file_bytes || t->offset < 8 ||
                mq_st_numel(t) * (int64_t)mq_dtype_size(t->dtype) != (int64_t)t->bytes)
                abort();
        }
    mq_st_close(st);
    return 0;
}
