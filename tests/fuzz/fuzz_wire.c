/* tests/fuzz/fuzz_wire.c — libFuzzer target for the client protocol decoder.
 * Build: clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_wire.c ipc/wire.c -lm
 * Any input must decode to 0 or a negative errno, never read outside the buffer, and a
 * message that decodes must re-encode to exactly the same bytes (the layout is canonical). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mq_msg m;
    char err[256];
    /* a copy of exactly `size` bytes so ASan catches any over-read */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    int rc = mq_wire_decode(buf, size, &m, err, sizeof err);
    if (rc == 0) {
        uint8_t out[MQ_WIRE_MAX_MSG];
        int n = mq_wire_encode(&m, out, sizeof out);
        /* reserved header/pad fields are not kept, so compare the re-decoded message */
        mq_msg again;
        if (n < 0 || mq_wire_decode(out, (size_t)n, &again, NULL, 0) != 0 || memcmp(&again, &m, sizeof m) != 0)
            abort();
    } else if (rc != -71 /* EPROTO */ && rc != -22 /* EINVAL */) {
        abort();
    }
    free(buf);
    return 0;
}
