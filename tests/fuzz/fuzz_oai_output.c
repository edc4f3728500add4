/* tests/fuzz/fuzz_oai_output.c — libFuzzer target for mq-openai's output (tool-call)
 * parser. The first byte picks the feed size (1..16 bytes) and the options; the rest is
 * model output. Fed in pieces or at once, the joined events must be the same message
 * (streaming and non-streaming clients see one answer), every call's arguments must be a
 * complete JSON value, and nothing may crash, leak or read outside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mq-openai/output.h"

static int ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int one_object(const char *p, size_t n)
{
    size_t x = 0;
    while (x < n && ws(p[x]))
        x++;
    while (n > x && ws(p[n - 1]))
        n--;
    return x < n && p[x] == '{' && x + oai_json_value_len(p + x, n - x) == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void run(const char *s, size_t n, size_t step, int tools, oai_message *m)
{
    oai_output o;
    oai_output_init(&o, tools, 1, 1);
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < n; i += step)
        oai_output_feed(&o, s + i, n - i < step ? n - i : step, oai_message_add, m);
    if (oai_output_finish(&o, oai_message_add, m) != m->n_calls)
        abort();
    oai_output_free(&o);
}

static int same(const oai_buf *a, const oai_buf *b)
{
    return a->len == b->len && (!a->len || !memcmp(a->p, b->p, a->len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (data[0] & 15) + 1;
    int tools = !(data[0] & 16);
    size_t n = size - 1;
    char *s = malloc(n ? n : 1);
    if (!s)
        return 0;
    memcpy(s, data + 1, n);
    oai_message a, b;
    run(s, n, step, tools, &a);
    run(s, n, n ? n : 1, tools, &b);
    if (a.oom || b.oom) {
        oai_message_free(&a);
        oai_message_free(&b);
        free(s);
        return 0;
    }
    if (!same(&a.content, &b.content) || !same(&a.reasoning, &b.reasoning) || a.n_calls != b.n_calls)
        abort();
    for (int i = 0; i < a.n_calls; i++) {
        if (strcmp(a.calls[i].name, b.calls[i].name) || !same(&a.calls[i].args, &b.calls[i].args) ||
            strcmp(a.calls[i].id, b.calls[i].id))
            abort();
        if (!one_object(a.calls[i].args.p, a.calls[i].args.len))
            abort(); /* a call's arguments are one JSON object, white space around it aside */
    }
    oai_message_free(&a);
    oai_message_free(&b);
    free(s);
    return 0;
}
