/* tests/fuzz/fuzz_oai_config.c — libFuzzer target for mq-openai's two file parsers: the
 * configuration JSON (oai_config_parse_json) and the API-key file (oai_keys_parse). The
 * first byte picks the parser; the rest is the file. Any input gives 0 or a negative
 * errno with a message. A configuration that parses holds only NUL-terminated strings; a
 * key file that parses gives every key a tenant (the one named, or "key-" and 16
 * characters of its hash) of at most 63 characters, and finds every key by its own bytes.
 * Nothing leaks (LeakSanitizer) or reads outside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mq-openai/config.h"
#include "mq-openai/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_config(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1); /* exactly the bytes: ASan sees over-reads */
    if (!text)
        return;
    memcpy(text, data, size);
    oai_config c;
    oai_config_default(&c);
    char err[512] = "";
    int rc = oai_config_parse_json(&c, text, size, "fuzz.json", err, sizeof err);
    free(text);
    if (rc && (rc != -22 /* EINVAL */ || !err[0]))
        abort();
    const char *strs[] = { c.listen, c.mqd_socket, c.model_name, c.api_keys_file, c.think_history };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!memchr(strs[i], 0, OAI_CFG_STR))
            abort();
}

static void check_keys(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1); /* the parser reads a C string: a NUL ends it */
    if (!text)
        return;
    memcpy(text, data, size);
    text[size] = 0;
    oai_keys *k = NULL;
    char err[512] = "";
    int rc = oai_keys_parse(&k, text, "fuzz.keys", err, sizeof err);
    if (rc) {
        if (k || !err[0])
            abort();
        free(text);
        return;
    }
    int n = oai_keys_count(k);
    if (n < 1 || n > OAI_KEYS_MAX)
        abort();
    for (int i = 0; i < n; i++) {
        const char *t = oai_keys_tenant(k, i);
        size_t tl = strlen(t);
        if (tl < 1 || tl > OAI_TENANT_MAX)
            abort();
    }
    /* every key of the text is found: its bytes are the first word of a line */
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *p = line + strspn(line, " \t\r");
        size_t kl = strcspn(p, " \t\r");
        if (kl && *p != '#' && oai_keys_find(k, p, kl) < 0)
            abort();
    }
    oai_keys_free(k);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        check_keys(data + 1, size - 1);
    else
        check_config(data + 1, size - 1);
    return 0;
}
