/* tests/fuzz/fuzz_tokenizer.c — libFuzzer target for the tokenizer.
 *
 * First input byte picks the mode:
 *   even: the rest is a tokenizer.json; if it loads, encode and decode a fixed text with it.
 *   odd:  the rest is text for the real Qwen3 and stories260K tokenizers: encode (invalid
 *         UTF-8 must be -EILSEQ), decode, streaming decode == full decode, and for ASCII
 *         text without special-token parsing, Qwen3's decode(encode(x)) == x.
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined); `make test` runs it
 * briefly. Needs $MQ_SHARED (set by the Makefile).
 */
#include "engine/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mq_tokenizer *qwen, *stories;

static mq_tokenizer *load(const char *rel)
{
    const char *root = getenv("MQ_SHARED");
    char path[4096], err[MQ_TOK_ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/%s", root && *root ? root : "../shared", rel);
    mq_tokenizer *t = NULL;
    if (mq_tok_load_dir(path, &t, err, sizeof err)) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, err);
        abort(); /* missing shared data is a failure, never a skip */
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    qwen = load("models/mq-qwen3-80m");
    stories = load("models/stories260K");
    return 0;
}

static void check_stream(const mq_tokenizer *t, const int32_t *ids, size_t n)
{
    char *full = NULL;
    size_t fl = 0;
    if (mq_tok_decode(t, ids, n, 0, &full, &fl))
        abort();
    if (!mq_utf8_valid(full, fl))
        abort();
    size_t cap = mq_tok_stream_max(t);
    char *buf = malloc(cap), *acc = malloc(fl + 16);
    size_t al = 0;
    mq_tok_stream st;
    mq_tok_stream_init(&st, t, 0, 1);
    for (size_t i = 0; i < n; i++) {
        int k = mq_tok_stream_push(&st, ids[i], buf, cap);
        if (k < 0 || al + (size_t)k > fl || !mq_utf8_valid(buf, (size_t)k))
            abort();
        memcpy(acc + al, buf, (size_t)k);
        al += (size_t)k;
    }
    int k = mq_tok_stream_flush(&st, buf, cap);
    if (k < 0 || al + (size_t)k > fl)
        abort();
    memcpy(acc + al, buf, (size_t)k);
    al += (size_t)k;
    if (al != fl || memcmp(acc, full, fl))
        abort();
    free(buf);
    free(acc);
    free(full);
}

static void text_mode(const mq_tokenizer *t, const char *s, size_t n, unsigned flags, int check_round_trip)
{
    int32_t *ids = NULL;
    size_t nids = 0;
    char err[MQ_TOK_ERR_LEN];
    int rc = mq_tok_encode(t, s, n, flags, &ids, &nids, err, sizeof err);
    if (rc == -EILSEQ && !mq_utf8_valid(s, n))
        return;
    if (rc)
        abort(); /* valid UTF-8 always encodes with these vocabularies */
    check_stream(t, ids, nids);
    if (check_round_trip) {
        char *back = NULL;
        size_t bl = 0;
        if (mq_tok_decode(t, ids, nids, 0, &back, &bl) || bl != n || memcmp(back, s, n))
            abort();
        free(back);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        mq_tokenizer *t = NULL;
        char err[MQ_TOK_ERR_LEN];
        if (mq_tok_load_mem(s, n, NULL, 0, "fuzz.json", &t, err, sizeof err) == 0) {
            const char *sample = "Hello world 123 caf\xC3\xA9 \xF0\x9F\xA4\x96  x";
            int32_t *ids = NULL;
            size_t nids = 0;
            if (mq_tok_encode(t, sample, strlen(sample), MQ_TOK_ADD_SPECIAL, &ids, &nids, err, sizeof err) == 0) {
                char *txt = NULL;
                size_t tl;
                if (mq_tok_decode(t, ids, nids, MQ_TOK_SKIP_SPECIAL, &txt, &tl) == 0 && !mq_utf8_valid(txt, tl))
                    abort();
                free(txt);
            }
            free(ids);
            mq_tok_free(t);
        }
        return 0;
    }
    int ascii = 1;
    for (size_t i = 0; i < n; i++)
        ascii &= data[1 + i] < 0x80;
    unsigned flags = (data[0] & 2) ? MQ_TOK_NO_PARSE_SPECIAL : 0;
    text_mode(qwen, s, n, flags, ascii && (flags & MQ_TOK_NO_PARSE_SPECIAL));
    text_mode(stories, s, n, (data[0] & 4) ? MQ_TOK_ADD_SPECIAL : 0, 0);
    return 0;
}
