/* tests/fuzz/fuzz_chat_template.c — libFuzzer target for chat message JSON.
 *
 * The input is JSON: an array of messages, or {"messages": [...], "tools": [...]}. Every
 * template renders it (full and incremental, with and without the generation prompt);
 * accepted renders must be valid UTF-8 when the input strings are, errors must carry a
 * message. The raw input is also tried as a template text for detection, and dumped with
 * the json.dumps serialiser, whose output must parse back.
 */
#include "engine/chat_template.h"
#include "engine/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* An accepted render is one NUL-free string of len bytes; a refusal says why and
 * returns nothing. */
static void check_render(int rc, char *out, size_t len, const char *err)
{
    if (rc == 0) {
        if (!out || strlen(out) != len)
            abort();
        free(out);
    } else if (!err[0] || out)
        abort();
}

static void render_all(const cJSON *msgs, const cJSON *tools)
{
    for (int kind = 0; kind < 3; kind++) {
        for (int gen = 0; gen < 2; gen++) {
            mq_chat_opts o = { .add_generation_prompt = gen,
                               .enable_thinking = gen ? 0 : -1,
                               .bos_token = "<|begin_of_text|>" };
            char *out = NULL, err[256] = "";
            size_t len = 0;
            int rc = mq_chat_render((mq_chat_kind)kind, msgs, tools, &o, &out, &len, err, sizeof err);
            check_render(rc, out, len, err);
            err[0] = 0;
            rc = mq_chat_render_append((mq_chat_kind)kind, msgs, &o, gen, &out, &len, err, sizeof err);
            check_render(rc, out, len, err);
        }
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    mq_chat_kind k;
    char err[256];
    (void)mq_chat_detect(text, &k, err, sizeof err);
    cJSON *root = cJSON_ParseWithLength(text, size);
    free(text);
    if (!root)
        return 0;
    char *dump = mq_chat_json_dumps(root);
    if (dump) {
        /* json.dumps output is JSON again, except Python's Infinity/NaN (cJSON turns an
         * overflowing number such as 1E999 into inf) */
        cJSON *back = cJSON_Parse(dump);
        if (!back && !strstr(dump, "Infinity") && !strstr(dump, "NaN"))
            abort();
        cJSON_Delete(back);
        free(dump);
    }
    if (cJSON_IsArray(root))
        render_all(root, NULL);
    else if (cJSON_IsObject(root)) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "messages");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tools");
        if (m)
            render_all(m, t);
    }
    cJSON_Delete(root);
    return 0;
}
