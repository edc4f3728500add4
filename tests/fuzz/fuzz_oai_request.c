/* tests/fuzz/fuzz_oai_request.c — libFuzzer target for mq-openai's request parser.
 * The first byte picks the endpoint (chat or completions); the rest is the body. Any body
 * must parse to 0 with a payload that is valid JSON (chat) or to -EINVAL with an error
 * that has a status and a message; nothing leaks (LeakSanitizer) or reads outside it. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mq-openai/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int chat = data[0] & 1;
    char *body = malloc(size - 1 ? size - 1 : 1); /* exactly the body: ASan sees over-reads */
    if (!body)
        return 0;
    memcpy(body, data + 1, size - 1);
    oai_request r;
    oai_error e = { 0 };
    int rc = chat ? oai_parse_chat(body, size - 1, &r, &e) : oai_parse_completion(body, size - 1, &r, &e);
    if (rc == 0) {
        if (!r.payload || strlen(r.payload) != r.payload_len || !r.prefix)
            abort();
        if (chat) {
            cJSON *j = cJSON_Parse(r.payload);
            if (!cJSON_IsArray(cJSON_GetObjectItem(j, "messages")))
                abort();
            cJSON_Delete(j);
        }
        oai_request_free(&r);
    } else if (rc != -22 || !e.status || !e.message[0] || r.payload) {
        abort();
    }
    free(body);
    return 0;
}
