/* tests/golden/test_tokenizer.c — tokenizer against Hugging Face tokenizers' output.
 *
 * Oracle: shared/golden/tokenizer_cases.json (tokenizers 0.23) for the Qwen3 tokenizer;
 * shared/ has no SmolLM2 tokenizer.json, so its cases cannot be run here (the GPT-2 style
 * path it uses — Digits + ByteLevel(use_regex) — is covered by tests/unit/test_tokenizer_unit.c
 * on a synthetic vocabulary). stories260K (byte-fallback BPE) is checked against a naive
 * string-level BPE written here from the merges list, and by round trips.
 */
#include "common/clock.h"
#include "tests/harness.h"
#include "engine/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <time.h>

static mq_tokenizer *qwen, *stories;

static void test_load(void)
{
    char err[MQ_TOK_ERR_LEN] = "";
    double t0 = mq_now_s();
    int rc = mq_tok_load_dir(shared_path("models/mq-qwen3-80m"), &qwen, err, sizeof err);
    double t1 = mq_now_s();
    CHECK(rc == 0, "qwen3 load: %d %s", rc, err);
    printf("    qwen3 tokenizer.json loaded in %.3f s\n", t1 - t0);
    rc = mq_tok_load_dir(shared_path("models/stories260K"), &stories, err, sizeof err);
    CHECK(rc == 0, "stories260K load: %d %s", rc, err);
    if (!qwen || !stories)
        return;
    CHECK(mq_tok_vocab_size(qwen) == 151669, "qwen vocab %d", mq_tok_vocab_size(qwen));
    CHECK(mq_tok_find(qwen, "<|im_end|>") == 151645, "im_end");
    CHECK(mq_tok_eos(qwen) == 151645, "qwen eos %d", mq_tok_eos(qwen));
    CHECK(mq_tok_bos(qwen) == -1, "qwen has no bos");
    CHECK(mq_tok_find(qwen, "Ġthe") == 279, "byte-level key lookup %d", mq_tok_find(qwen, "Ġthe"));
    CHECK(mq_tok_vocab_size(stories) == 512, "stories vocab %d", mq_tok_vocab_size(stories));
    CHECK(mq_tok_bos(stories) == 1 && mq_tok_eos(stories) == 2, "stories bos/eos");
    CHECK(mq_tok_chat_template(qwen) != NULL, "qwen chat template");
}

static void run_cases(mq_tokenizer *tok, const cJSON *cases, const char *name)
{
    int idx = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
        const cJSON *ids = cJSON_GetObjectItem(c, "ids");
        int32_t *got = NULL;
        size_t n = 0;
        char err[MQ_TOK_ERR_LEN] = "";
        int rc = mq_tok_encode(tok, text, strlen(text), MQ_TOK_ADD_SPECIAL, &got, &n, err, sizeof err);
        CHECK(rc == 0, "%s case %d: encode rc %d %s", name, idx, rc, err);
        int same = (int)n == cJSON_GetArraySize(ids);
        for (size_t i = 0; same && i < n; i++)
            same = got[i] == cJSON_GetArrayItem(ids, (int)i)->valueint;
        CHECK(same, "%s case %d (%.30s): ids differ (got %zu ids, want %d)", name, idx, text, n,
              cJSON_GetArraySize(ids));
        if (!same) {
            fprintf(stderr, "      got :");
            for (size_t i = 0; i < n; i++)
                fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n      want:");
            const cJSON *v;
            cJSON_ArrayForEach(v, ids) fprintf(stderr, " %d", v->valueint);
            fprintf(stderr, "\n");
        }
        /* decode the golden ids (not ours), so decode is tested on its own */
        int32_t want[4096];
        size_t nw = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, ids) if (nw < 4096) want[nw++] = v->valueint;
        char *txt = NULL;
        size_t tl = 0;
        rc = mq_tok_decode(tok, want, nw, 0, &txt, &tl);
        CHECK(rc == 0 && tl == strlen(decoded) && !memcmp(txt, decoded, tl), "%s case %d: decoded '%s' want '%s'", name,
              idx, txt ? txt : "(null)", decoded);
        /* streaming decode of the same ids equals the full decode */
        mq_tok_stream st;
        mq_tok_stream_init(&st, tok, 0, 1);
        size_t cap = mq_tok_stream_max(tok);
        char *buf = malloc(cap), *acc = malloc(tl * 3 + 64);
        size_t al = 0;
        for (size_t i = 0; i < nw; i++) {
            int k = mq_tok_stream_push(&st, want[i], buf, cap);
            CHECK(k >= 0, "stream push %d", k);
            if (k > 0) {
                CHECK(mq_utf8_valid(buf, (size_t)k), "%s case %d: stream emitted broken UTF-8", name, idx);
                memcpy(acc + al, buf, (size_t)k);
                al += (size_t)k;
            }
        }
        int k = mq_tok_stream_flush(&st, buf, cap);
        if (k > 0) {
            memcpy(acc + al, buf, (size_t)k);
            al += (size_t)k;
        }
        CHECK(txt && al == tl && !memcmp(acc, txt, tl), "%s case %d: stream != decode", name, idx);
        free(buf);
        free(acc);
        free(txt);
        free(got);
        idx++;
    }
    printf("    %s: %d cases\n", name, idx);
}

static void test_golden_qwen3(void)
{
    if (!qwen) {
        CHECK(0, "no qwen tokenizer");
        return;
    }
    char *js = harness_read_file(shared_path("golden/tokenizer_cases.json"), NULL);
    if (!js)
        return;
    cJSON *root = cJSON_Parse(js);
    CHECK(root != NULL, "tokenizer_cases.json parses");
    const cJSON *cases = cJSON_GetObjectItem(root, "qwen3");
    CHECK(cJSON_GetArraySize(cases) >= 20, "qwen3 cases present");
    run_cases(qwen, cases, "qwen3");
    /* SmolLM2: the golden ids need SmolLM2's vocabulary, which shared/ does not have. Check
     * (loudly) that this is still true, so the test is updated when it arrives. */
    FILE *f = fopen(shared_path("models/smollm2/tokenizer.json"), "rb");
    CHECK(f == NULL, "a SmolLM2 tokenizer.json appeared in shared/: run its golden cases here");
    if (f)
        fclose(f);
    cJSON_Delete(root);
    free(js);
}

static void test_special_flags(void)
{
    if (!qwen) {
        CHECK(0, "no qwen tokenizer");
        return;
    }
    const char *s = "<|im_start|>user\n<think>x</think><|im_end|>";
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(mq_tok_encode(qwen, s, strlen(s), 0, &a, &na, NULL, 0) == 0, "encode");
    CHECK(mq_tok_encode(qwen, s, strlen(s), MQ_TOK_NO_PARSE_SPECIAL, &b, &nb, NULL, 0) == 0, "encode");
    CHECK(na >= 2 && a[0] == 151644 && a[na - 1] == 151645, "specials matched");
    int has_special = 0, has_think = 0;
    for (size_t i = 0; i < nb; i++) {
        if (b[i] == 151644 || b[i] == 151645)
            has_special = 1;
        if (b[i] == 151667)
            has_think = 1;
    }
    CHECK(!has_special && has_think, "NO_PARSE_SPECIAL keeps <think> (not special) but not <|im_start|>");
    char *t = NULL;
    size_t tl;
    CHECK(mq_tok_decode(qwen, b, nb, 0, &t, &tl) == 0 && !strcmp(t, s), "plain-text specials round trip");
    free(t);
    CHECK(mq_tok_decode(qwen, a, na, MQ_TOK_SKIP_SPECIAL, &t, &tl) == 0 && !strcmp(t, "user\n<think>x</think>"),
          "skip special: '%s'", t);
    free(t);
    free(a);
    free(b);
    char err[MQ_TOK_ERR_LEN] = "";
    int32_t *c = NULL;
    size_t nc = 0;
    CHECK(mq_tok_encode(qwen, "a\xff", 2, 0, &c, &nc, err, sizeof err) == -EILSEQ && strstr(err, "UTF-8"),
          "invalid UTF-8 rejected: %s", err);
    int32_t bad = 999999;
    CHECK(mq_tok_decode(qwen, &bad, 1, 0, &t, &tl) == -EINVAL, "unknown id");
}

/* NFC: "e" + COMBINING ACUTE must encode like the precomposed "é". */
static void test_nfc(void)
{
    if (!qwen) {
        CHECK(0, "no qwen tokenizer");
        return;
    }
    const char *dec = "caf\x65\xcc\x81", *pre = "caf\xc3\xa9";
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(mq_tok_encode(qwen, dec, strlen(dec), 0, &a, &na, NULL, 0) == 0, "enc");
    CHECK(mq_tok_encode(qwen, pre, strlen(pre), 0, &b, &nb, NULL, 0) == 0, "enc");
    CHECK(na == nb && na && !memcmp(a, b, na * sizeof *a), "NFC applied (%zu vs %zu ids)", na, nb);
    free(a);
    free(b);
}

/* Streaming on emoji and CJK whose bytes are split across byte-level tokens. */
static void test_stream_split_chars(void)
{
    if (!qwen) {
        CHECK(0, "no qwen tokenizer");
        return;
    }
    const char *texts[] = { "emoji 🤖🚀 and ZWJ 👩‍💻 sequences", "数字和中文混合，漢字とかな",
                            "ŉ ǅ ﬁ ẞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢" };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(mq_tok_encode(qwen, texts[k], strlen(texts[k]), 0, &ids, &n, NULL, 0) == 0, "enc");
        mq_tok_stream st;
        mq_tok_stream_init(&st, qwen, 0, 0);
        char buf[256], acc[1024];
        size_t al = 0;
        int held_once = 0; /* case 1 (CJK) is whole-character tokens: nothing to hold */
        for (size_t i = 0; i < n; i++) {
            int m = mq_tok_stream_push(&st, ids[i], buf, sizeof buf);
            CHECK(m >= 0 && mq_utf8_valid(buf, (size_t)m), "push %zu", i);
            if (st.n_held)
                held_once = 1;
            CHECK(!memchr(buf, 0xEF, (size_t)m) || strstr(texts[k], "\xEF"), "no U+FFFD emitted");
            memcpy(acc + al, buf, (size_t)m);
            al += (size_t)m;
        }
        CHECK(mq_tok_stream_flush(&st, buf, sizeof buf) == 0, "nothing left");
        CHECK(al == strlen(texts[k]) && !memcmp(acc, texts[k], al), "stream text");
        if (k != 1)
            CHECK(held_once, "case %zu: some token ended inside a character", k);
        free(ids);
    }
    /* a lone lead byte then end of stream: one U+FFFD, as decode does */
    int32_t lead = mq_tok_find(qwen, "ð"); /* byte 0xF0 */
    CHECK(lead >= 0, "byte token");
    mq_tok_stream st;
    mq_tok_stream_init(&st, qwen, 0, 0);
    char buf[64];
    CHECK(mq_tok_stream_push(&st, lead, buf, sizeof buf) == 0, "held");
    CHECK(mq_tok_stream_flush(&st, buf, sizeof buf) == 3 && !memcmp(buf, "\xEF\xBF\xBD", 3), "flush FFFD");
}

/* ---- stories260K: naive string BPE as the oracle ------------------------------------ */

static cJSON *stories_json;

static int vocab_id(const cJSON *vocab, const char *s)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(vocab, s);
    return v ? v->valueint : -1;
}

/* Llama/sentencepiece-style reference: prepend U+2581, spaces -> U+2581, split into
 * characters, repeatedly merge the adjacent pair of lowest rank (leftmost on ties),
 * unknown characters -> <0xXX> bytes. O(n^2), strings only, independent of the library. */
static size_t naive_encode(const char *text, int32_t *out)
{
    const cJSON *model = cJSON_GetObjectItem(stories_json, "model");
    const cJSON *vocab = cJSON_GetObjectItem(model, "vocab"), *merges = cJSON_GetObjectItem(model, "merges");
    char norm[4096] = "\xE2\x96\x81";
    size_t nl = 3;
    for (const char *p = text; *p; p++) {
        if (*p == ' ') {
            memcpy(norm + nl, "\xE2\x96\x81", 3);
            nl += 3;
        } else
            norm[nl++] = *p;
    }
    norm[nl] = 0;
    static char sym[1024][256];
    int ns = 0;
    for (size_t i = 0; i < nl;) {
        unsigned char c = (unsigned char)norm[i];
        size_t k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        memcpy(sym[ns], norm + i, k);
        sym[ns][k] = 0;
        ns++;
        i += k;
    }
    for (;;) {
        int best = -1, best_rank = 1 << 30, r = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, merges)
        {
            if (r >= best_rank)
                break;
            const char *a = cJSON_GetArrayItem(m, 0)->valuestring, *b = cJSON_GetArrayItem(m, 1)->valuestring;
            for (int i = 0; i + 1 < ns; i++)
                if (!strcmp(sym[i], a) && !strcmp(sym[i + 1], b)) {
                    best = i;
                    best_rank = r;
                    break;
                }
            r++;
        }
        if (best < 0)
            break;
        size_t la = strlen(sym[best]), lb = strlen(sym[best + 1]);
        memmove(sym[best] + la, sym[best + 1], lb + 1);
        memmove(sym[best + 1], sym[best + 2], (size_t)(ns - best - 2) * sizeof sym[0]);
        ns--;
    }
    size_t n = 0;
    out[n++] = 1; /* <s> */
    for (int i = 0; i < ns; i++) {
        int id = vocab_id(vocab, sym[i]);
        if (id >= 0) {
            out[n++] = id;
            continue;
        }
        for (const unsigned char *p = (const unsigned char *)sym[i]; *p; p++) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", *p);
            out[n++] = vocab_id(vocab, hex);
        }
    }
    return n;
}

static void test_stories(void)
{
    if (!stories) {
        CHECK(0, "no stories tokenizer");
        return;
    }
    char *js = harness_read_file(shared_path("models/stories260K/tokenizer.json"), NULL);
    if (!js)
        return;
    stories_json = cJSON_Parse(js);
    const char *texts[] = {
        "Once upon a time, there was a little girl named Lily.",
        "She loved to play outside in the park with her friends!",
        "  two leading spaces, tabs\tand\nnewlines",
        "Unicode: café, 数字, emoji 🤖 — all via byte fallback",
        "x",
        "The end.",
    };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        int32_t *ids = NULL, ref[2048];
        size_t n = 0;
        char err[MQ_TOK_ERR_LEN] = "";
        int rc = mq_tok_encode(stories, texts[k], strlen(texts[k]), MQ_TOK_ADD_SPECIAL, &ids, &n, err, sizeof err);
        CHECK(rc == 0, "encode: %s", err);
        size_t nr = naive_encode(texts[k], ref);
        CHECK(n == nr && !memcmp(ids, ref, n * sizeof *ids), "case %zu: heap BPE != naive BPE (%zu vs %zu ids)", k, n,
              nr);
        CHECK(n > 0 && ids[0] == 1, "BOS first");
        char *t = NULL;
        size_t tl;
        CHECK(mq_tok_decode(stories, ids, n, MQ_TOK_SKIP_SPECIAL, &t, &tl) == 0 && !strcmp(t, texts[k]),
              "round trip '%s' vs '%s'", t, texts[k]);
        free(t);
        CHECK(mq_tok_decode(stories, ids, n, 0, &t, &tl) == 0 && !strncmp(t, "<s> ", 4),
              "decode with <s> keeps the space: '%s'", t);
        free(t);
        free(ids);
    }
    /* "Once" is one token: U+2581 Once in the vocab */
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(mq_tok_encode(stories, "Once", 4, 0, &ids, &n, NULL, 0) == 0 && n >= 1, "enc");
    free(ids);
    cJSON_Delete(stories_json);
    free(js);
}

/* Encoding speed on the dev corpus (informational, and a guard against quadratic paths). */
static void test_speed(void)
{
    if (!qwen) {
        CHECK(0, "no qwen tokenizer");
        return;
    }
    size_t len = 0;
    char *txt = harness_read_file(shared_path("corpus/dev.txt"), &len);
    if (!txt)
        return;
    if (len > 2000000)
        len = 2000000;
    while (len && ((unsigned char)txt[len] & 0xC0) == 0x80)
        len--;
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = mq_now_s();
    int rc = mq_tok_encode(qwen, txt, len, 0, &ids, &n, NULL, 0);
    double t1 = mq_now_s();
    CHECK(rc == 0, "encode corpus");
    printf("    encoded %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", len, n, t1 - t0, len / (t1 - t0) / 1e6);
    char *back = NULL;
    size_t bl = 0;
    CHECK(mq_tok_decode(qwen, ids, n, 0, &back, &bl) == 0 && bl == len && !memcmp(back, txt, len), "corpus round trip");
    /* long runs: 100k spaces and 100k letters stay fast */
    char *run = malloc(100001);
    memset(run, ' ', 100000);
    run[100000] = 0;
    int32_t *r = NULL;
    size_t rn = 0;
    t0 = mq_now_s();
    CHECK(mq_tok_encode(qwen, run, 100000, 0, &r, &rn, NULL, 0) == 0, "spaces");
    free(r);
    memset(run, 'a', 100000);
    CHECK(mq_tok_encode(qwen, run, 100000, 0, &r, &rn, NULL, 0) == 0, "letters");
    t1 = mq_now_s();
    /* a guard against quadratic blow-up, not a speed target (the machine is shared) */
    CHECK(t1 - t0 < 30.0, "long runs took %.2f s", t1 - t0);
    free(r);
    free(run);
    free(back);
    free(ids);
    free(txt);
}

int main(void)
{
    RUN(test_load);
    RUN(test_golden_qwen3);
    RUN(test_special_flags);
    RUN(test_nfc);
    RUN(test_stream_split_chars);
    RUN(test_stories);
    RUN(test_speed);
    mq_tok_free(qwen);
    mq_tok_free(stories);
    return harness_done();
}
