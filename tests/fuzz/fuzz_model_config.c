/* tests/fuzz/fuzz_model_config.c — libFuzzer target for config.json parsing.
 * Build: clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_model_config.c
 *        engine/model_config.c -lcjson -lm
 * Any input is accepted with sane sizes, or refused with a message naming the cause. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/model_config.h"
#include "common/errmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mq_config c;
    char err[MQ_ERRMSG_LEN] = "";
    int rc = mq_config_parse(&c, (const char *)data, size, err, sizeof err);
    if (rc) {
        if (!err[0])
            abort();
        return 0;
    }
    if (c.n_layers < 1 || c.hidden < 1 || c.n_head < 1 || c.n_kv < 1 || c.n_head % c.n_kv || c.head_dim < 2 ||
        c.head_dim > 256 || c.inter < 1 || c.vocab < 1 || !(c.rope_theta > 1) || !(c.rms_eps > 0))
        abort();
    mq_config_free(&c);
    return 0;
}
