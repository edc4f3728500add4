/* tests/fuzz/fuzz_config.c — libFuzzer target for mqd's JSON configuration reader.
 * Build: clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_config.c daemon/config.c -lcjson
 * Any input must be accepted or refused with a message; an accepted config serialises to
 * JSON that parses back to the same struct. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mqd_config c, back;
    char err[512] = "";
    mqd_config_defaults(&c);
    int rc = mqd_config_parse_json(&c, (const char *)data, size, "fuzz", err, sizeof err);
    if (rc) {
        if (!err[0])
            abort(); /* every refusal names its cause */
        return 0;
    }
    mqd_config_validate(&c, err, sizeof err);
    char *js = mqd_config_to_json(&c);
    if (!js)
        return 0;
    mqd_config_defaults(&back);
    if (mqd_config_parse_json(&back, js, strlen(js), "round trip", err, sizeof err) != 0 ||
        memcmp(&back, &c, sizeof c) != 0) {
        /* string fields carry garbage after the NUL only if memcpy'd; both come from
         * defaults (zeroed) + set_str (copies the NUL), so the structs compare equal */
        abort();
    }
    free(js);
    return 0;
}
