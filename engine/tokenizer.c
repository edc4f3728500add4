/* engine/tokenizer.c — tokenizer.json loading, BPE encode, decode, streaming decode.
 * See tokenizer.h for the contract. The pipeline follows Hugging Face `tokenizers`:
 *   added tokens split the text -> normalizer (per remaining segment) -> pre-tokenizer
 *   pieces -> BPE model per piece -> post-processor (BOS/EOS).
 */
#define _GNU_SOURCE
#include "common/errmsg.h"
#include "common/file.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>
#include <xxhash.h>

/* ---- errors ------------------------------------------------------------------- */

/* ---- UTF-8 ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), 0 if the bytes there cannot start or
 * continue a valid sequence, or -k if the n available bytes are a valid but incomplete
 * prefix (k = bytes seen). `bad` gets the length of the maximal invalid prefix to replace
 * with one U+FFFD (the rule of Rust's from_utf8_lossy and of the Unicode standard). */
static int utf8_step(const uint8_t *s, size_t n, int *bad)
{
    uint8_t c = s[0];
    *bad = 1;
    if (c < 0x80)
        return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n)
            return -i;
        uint8_t b = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            *bad = i;
            return 0;
        }
    }
    return need + 1;
}

int mq_utf8_valid(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int bad, k = utf8_step(p + i, len - i, &bad);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Appends the repaired form of s[0..n) to out; stops before an incomplete tail unless
 * `final`. Returns the number of input bytes consumed. out must have room for 3*n + 3. */
static size_t utf8_repair(const uint8_t *s, size_t n, int final, char *out, size_t *olen)
{
    size_t i = 0, o = *olen;
    while (i < n) {
        int bad, k = utf8_step(s + i, n - i, &bad);
        if (k > 0) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else if (k < 0 && !final) {
            break;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k < 0 ? (size_t)(-k) : (size_t)bad;
        }
    }
    *olen = o;
    return i;
}

/* ---- GPT-2 byte <-> unicode table ------------------------------------------------- */

static void byte_level_table(uint32_t cp_of_byte[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp_of_byte[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

/* Decodes a byte-level vocab key (UTF-8 of mapped code points) to raw bytes in out
 * (at most strlen(key) bytes). Returns the length or -1 if a code point is not in the
 * table. */
static long byte_level_decode(const tok_t *t, const char *key, size_t klen, uint8_t *out)
{
    size_t i = 0, o = 0;
    while (i < klen) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)key + i, (utf8proc_ssize_t)(klen - i), &cp);
        if (k <= 0 || cp < 0 || cp >= 512 || t->byte_of_cp[cp] < 0)
            return -1;
        out[o++] = (uint8_t)t->byte_of_cp[cp];
        i += (size_t)k;
    }
    return (long)o;
}

/* ---- hash tables ---------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static int vocab_table_init(tok_t *t, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    t->vmask = cap - 1;
    t->vslot = calloc(cap, sizeof *t->vslot);
    return t->vslot ? 0 : -ENOMEM;
}

/* Slot index holding `key` or the empty slot where it would go. */
static size_t vocab_probe(const tok_t *t, const void *key, size_t n)
{
    size_t h = (size_t)hash_bytes(key, n) & t->vmask;
    for (;;) {
        uint32_t v = t->vslot[h];
        if (!v)
            return h;
        const tok_entry *e = &t->tokens[v - 1];
        if (e->len == n && memcmp(t->arena + e->off, key, n) == 0)
            return h;
        h = (h + 1) & t->vmask;
    }
}

int32_t tok_lookup(const tok_t *t, const void *key, size_t n)
{
    uint32_t v = t->vslot[vocab_probe(t, key, n)];
    return v ? (int32_t)(v - 1) : -1;
}

static inline uint64_t merge_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}
static inline size_t merge_hash(uint64_t k, size_t mask)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

static int merge_table_init(tok_t *t, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    t->mmask = cap - 1;
    t->merges = calloc(cap, sizeof *t->merges);
    return t->merges ? 0 : -ENOMEM;
}

static void merge_put(tok_t *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t k = merge_key(a, b);
    size_t h = merge_hash(k, t->mmask);
    while (t->merges[h].id_plus1) {
        if (t->merges[h].key == k)
            return; /* first (lowest) rank wins */
        h = (h + 1) & t->mmask;
    }
    t->merges[h] = (tok_merge){ k, rank, id + 1 };
}

const tok_merge *tok_merge_get(const tok_t *t, int32_t a, int32_t b)
{
    uint64_t k = merge_key(a, b);
    size_t h = merge_hash(k, t->mmask);
    while (t->merges[h].id_plus1) {
        if (t->merges[h].key == k)
            return &t->merges[h];
        h = (h + 1) & t->mmask;
    }
    return NULL;
}

/* ---- token storage ---------------------------------------------------------------------- */

static int arena_put(tok_t *t, const void *p, size_t n, uint32_t *off)
{
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap * 2 : 1 << 16;
        while (cap < t->arena_len + n + 1)
            cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a)
            return -ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (t->arena_len + n > UINT32_MAX)
        return -E2BIG;
    memcpy(t->arena + t->arena_len, p, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    t->arena[t->arena_len] = 0; /* keeps the next strings readable in a debugger */
    return 0;
}

static int ensure_ids(tok_t *t, int32_t id)
{
    if (id < 0 || id >= (1 << 24))
        return -ERANGE; /* no real vocabulary is near 16M */
    if (id < t->n_tokens)
        return 0;
    size_t cap = t->tokens_cap ? t->tokens_cap : 1024;
    while (cap <= (size_t)id)
        cap *= 2;
    if (cap != t->tokens_cap) {
        tok_entry *e = realloc(t->tokens, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        t->tokens = e;
        t->tokens_cap = cap;
    }
    memset(t->tokens + t->n_tokens, 0, (size_t)(id + 1 - t->n_tokens) * sizeof *t->tokens);
    t->n_tokens = id + 1;
    return 0;
}

/* Sets token `id` to the raw bytes p[0..n). */
static int set_token(tok_t *t, int32_t id, const void *p, size_t n, unsigned flags)
{
    int rc = ensure_ids(t, id);
    if (rc)
        return rc;
    tok_entry *e = &t->tokens[id];
    if (e->flags & TOKF_PRESENT) {
        /* an added token that is also a vocab entry: the added one wins (same bytes in
         * practice); a duplicate vocab id otherwise is a malformed file */
        if (!(flags & TOKF_ADDED))
            return -EEXIST;
    }
    uint32_t off;
    rc = arena_put(t, p, n, &off);
    if (rc)
        return rc;
    e->off = off;
    e->len = (uint32_t)n;
    e->dec_off = off;
    e->dec_len = (uint32_t)n;
    e->flags = flags | TOKF_PRESENT;
    return 0;
}

/* ---- JSON helpers ------------------------------------------------------------------------ */

/* A token id in JSON: an integer in [0, 2^24). 0, or -1 for anything else (NaN, huge,
 * fractional, not a number), so no double is ever cast out of int32 range. */
static int json_token_id(const cJSON *v, int32_t *id)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < (1 << 24)))
        return -1;
    *id = (int32_t)v->valuedouble;
    return (double)*id == v->valuedouble ? 0 : -1;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

/* A token name in tokenizer_config.json: "..." or {"content": "..."} */
static const char *config_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsObject(v))
        return jstr(v, "content");
    return NULL;
}

/* ---- loading: the pipeline's components ------------------------------------------------- */

/* tokenizer.json's normalizer, pre_tokenizer, decoder and post_processor share one form:
 * null (none), an object with a "type", or {"type": "Sequence", "<list>": [...]} of them,
 * nested. A step reads one object of a known type. */
typedef int (*component_step)(tok_t *t, const cJSON *o, const char *type, const char *name, char *err, size_t errlen);
typedef struct component {
    const char *what; /* its key in tokenizer.json */
    const char *list; /* a Sequence's list */
    component_step step;
} component;

static int load_component(tok_t *t, const component *c, const cJSON *o, const char *name, char *err, size_t errlen)
{
    if (!o || cJSON_IsNull(o))
        return 0;
    const char *type = jstr(o, "type");
    if (!type)
        return mq_errmsg(err, errlen, -EINVAL, "%s: %s without \"type\"", name, c->what);
    if (strcmp(type, "Sequence"))
        return c->step(t, o, type, name, err, errlen);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, c->list);
    if (!cJSON_IsArray(list))
        return mq_errmsg(err, errlen, -EINVAL, "%s: %s Sequence without \"%s\"", name, c->what, c->list);
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        int rc = load_component(t, c, it, name, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- loading: normalizer ------------------------------------------------------------------ */

static int normalizer_step(tok_t *t, const cJSON *n, const char *type, const char *name, char *err, size_t errlen)
{
    if (t->n_norm >= TOK_MAX_OPS)
        return mq_errmsg(err, errlen, -E2BIG, "%s: more than %d normalizers", name, TOK_MAX_OPS);
    tok_norm *op = &t->norm[t->n_norm];
    memset(op, 0, sizeof *op);
    if (!strcmp(type, "NFC"))
        op->kind = NORM_NFC;
    else if (!strcmp(type, "NFKC"))
        op->kind = NORM_NFKC;
    else if (!strcmp(type, "NFD"))
        op->kind = NORM_NFD;
    else if (!strcmp(type, "NFKD"))
        op->kind = NORM_NFKD;
    else if (!strcmp(type, "Prepend")) {
        const char *s = jstr(n, "prepend");
        if (!s)
            return mq_errmsg(err, errlen, -EINVAL, "%s: Prepend normalizer without \"prepend\"", name);
        op->kind = NORM_PREPEND;
        op->a = strdup(s);
        if (!op->a)
            return -ENOMEM;
    } else if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *s = jstr(pat, "String"), *c = jstr(n, "content");
        if (!s || !c || !*s)
            return mq_errmsg(err, errlen, -ENOTSUP,
                             "%s: Replace normalizer needs a non-empty \"pattern\".\"String\" and \"content\" "
                             "(Regex patterns are not supported)",
                             name);
        op->kind = NORM_REPLACE;
        op->a = strdup(s);
        op->b = strdup(c);
        if (!op->a || !op->b) {
            free(op->a);
            free(op->b);
            return -ENOMEM;
        }
    } else {
        return mq_errmsg(err, errlen, -ENOTSUP, "%s: unsupported normalizer type \"%s\"", name, type);
    }
    t->n_norm++;
    /* the pre-tokenizer regex runs without re-checking UTF-8: inserted text must be valid */
    if ((op->a && !mq_utf8_valid(op->a, strlen(op->a))) || (op->b && !mq_utf8_valid(op->b, strlen(op->b))))
        return mq_errmsg(err, errlen, -EILSEQ, "%s: normalizer %s inserts invalid UTF-8", name, type);
    return 0;
}

/* ---- loading: pre-tokenizer --------------------------------------------------------------- */

/* GPT-2's split, used by ByteLevel with use_regex=true. */
static const char GPT2_REGEX[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int compile_regex(tok_pre *op, const char *pat, int literal, const char *name, char *err, size_t errlen)
{
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL refuses UCP */
    op->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (!op->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return mq_errmsg(err, errlen, -EINVAL, "%s: pre_tokenizer regex does not compile at offset %zu: %s", name,
                         (size_t)eo, (char *)msg);
    }
    op->jit = pcre2_jit_compile(op->re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

static int pre_tokenizer_step(tok_t *t, const cJSON *p, const char *type, const char *name, char *err, size_t errlen)
{
    if (t->n_pre >= TOK_MAX_OPS)
        return mq_errmsg(err, errlen, -E2BIG, "%s: more than %d pre_tokenizers", name, TOK_MAX_OPS);
    tok_pre *op = &t->pre[t->n_pre];
    memset(op, 0, sizeof *op);
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *beh = jstr(p, "behavior");
        if ((!re && !lit) || !beh)
            return mq_errmsg(err, errlen, -EINVAL, "%s: Split pre_tokenizer needs \"pattern\" and \"behavior\"", name);
        if (!strcmp(beh, "Isolated"))
            op->behavior = SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed"))
            op->behavior = SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious"))
            op->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext"))
            op->behavior = SPLIT_MERGED_NEXT;
        else
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: Split behavior \"%s\" is not supported", name, beh);
        op->invert = jbool(p, "invert", 0);
        op->kind = PRE_SPLIT;
        int rc = compile_regex(op, re ? re : lit, !re, name, err, errlen);
        if (rc)
            return rc;
    } else if (!strcmp(type, "ByteLevel")) {
        op->kind = PRE_BYTELEVEL;
        op->add_prefix_space = jbool(p, "add_prefix_space", 0);
        t->byte_level = 1;
        if (jbool(p, "use_regex", 1)) {
            op->behavior = SPLIT_ISOLATED;
            int rc = compile_regex(op, GPT2_REGEX, 0, name, err, errlen);
            if (rc)
                return rc;
        }
    } else if (!strcmp(type, "Metaspace")) {
        /* spaces -> replacement, a replacement prepended (always / first segment only /
         * never), then (split=true) pieces start at each replacement */
        const char *rep = jstr(p, "replacement"), *scheme = jstr(p, "prepend_scheme");
        if (!rep || !*rep || strlen(rep) >= sizeof op->replacement || !mq_utf8_valid(rep, strlen(rep)))
            return mq_errmsg(err, errlen, -EINVAL, "%s: Metaspace needs a short \"replacement\"", name);
        strcpy(op->replacement, rep);
        op->kind = PRE_METASPACE;
        if (!scheme)
            op->prepend_scheme = jbool(p, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        else if (!strcmp(scheme, "always"))
            op->prepend_scheme = PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first"))
            op->prepend_scheme = PREPEND_FIRST;
        else if (!strcmp(scheme, "never"))
            op->prepend_scheme = PREPEND_NEVER;
        else
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: Metaspace prepend_scheme \"%s\"", name, scheme);
        if (jbool(p, "split", 1)) {
            op->behavior = SPLIT_MERGED_NEXT;
            int rc = compile_regex(op, rep, 1, name, err, errlen);
            if (rc)
                return rc;
        }
    } else if (!strcmp(type, "Digits")) {
        op->kind = PRE_SPLIT;
        op->behavior = SPLIT_ISOLATED;
        int rc = compile_regex(op, jbool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0, name, err, errlen);
        if (rc)
            return rc;
    } else {
        return mq_errmsg(err, errlen, -ENOTSUP, "%s: unsupported pre_tokenizer type \"%s\"", name, type);
    }
    t->n_pre++;
    return 0;
}

/* ---- loading: decoder ---------------------------------------------------------------------- */

static int decoder_step(tok_t *t, const cJSON *d, const char *type, const char *name, char *err, size_t errlen)
{
    if (!strcmp(type, "ByteLevel")) {
        t->byte_level = 1;
        return 0;
    }
    if (!strcmp(type, "ByteFallback")) {
        t->dec_byte_fallback = 1;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) { /* replacement -> ' ', and the prepended one dropped */
        const char *rep = jstr(d, "replacement"), *scheme = jstr(d, "prepend_scheme");
        if (!rep || !*rep || strlen(rep) >= sizeof t->dec_from)
            return mq_errmsg(err, errlen, -EINVAL, "%s: decoder Metaspace needs a short \"replacement\"", name);
        if (t->dec_from[0])
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: more than one Replace/Metaspace decoder", name);
        strcpy(t->dec_from, rep);
        strcpy(t->dec_to, " ");
        t->dec_strip_start = scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", 1);
        return 0;
    }
    if (!strcmp(type, "Fuse"))
        return 0; /* decoding already concatenates */
    if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(d, "pattern");
        const char *s = jstr(pat, "String"), *c = jstr(d, "content");
        if (!s || !c || strlen(s) >= sizeof t->dec_from || strlen(c) >= sizeof t->dec_to || !*s)
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: decoder Replace needs a short \"pattern\".\"String\"", name);
        if (t->dec_from[0])
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: more than one Replace decoder", name);
        strcpy(t->dec_from, s);
        strcpy(t->dec_to, c);
        return 0;
    }
    if (!strcmp(type, "Strip")) {
        const char *c = jstr(d, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(d, "stop");
        if (!c || strcmp(c, " ") || !cJSON_IsNumber(start) || (cJSON_IsNumber(stop) && stop->valueint != 0))
            return mq_errmsg(err, errlen, -ENOTSUP, "%s: decoder Strip supported only for content \" \" at the start",
                             name);
        t->dec_strip_start = start->valueint;
        return 0;
    }
    return mq_errmsg(err, errlen, -ENOTSUP, "%s: unsupported decoder type \"%s\"", name, type);
}

/* ---- loading: post-processor (BOS / EOS around a single sequence) ---------------------------- */

static int post_processor_step(tok_t *t, const cJSON *p, const char *type, const char *name, char *err, size_t errlen)
{
    if (!strcmp(type, "ByteLevel"))
        return 0; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
        if (!cJSON_IsArray(single))
            return mq_errmsg(err, errlen, -EINVAL, "%s: TemplateProcessing without \"single\"", name);
        int after = 0;
        const cJSON *it;
        t->n_pre_ids = t->n_post_ids = 0;
        cJSON_ArrayForEach(it, single)
        {
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                after = 1;
                continue;
            }
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            const char *sid = jstr(st, "id");
            const cJSON *def = sid ? cJSON_GetObjectItemCaseSensitive(specials, sid) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids))
                return mq_errmsg(err, errlen, -EINVAL, "%s: TemplateProcessing special token %s has no \"ids\"", name,
                                 sid ? sid : "(unnamed)");
            const cJSON *idv;
            cJSON_ArrayForEach(idv, ids)
            {
                int32_t id;
                if (json_token_id(idv, &id) < 0)
                    return mq_errmsg(err, errlen, -EINVAL,
                                     "%s: TemplateProcessing ids must be token ids (integers in [0, 2^24))", name);
                int32_t *arr = after ? t->post_ids : t->pre_ids;
                int *cnt = after ? &t->n_post_ids : &t->n_pre_ids;
                if (*cnt >= TOK_MAX_OPS)
                    return mq_errmsg(err, errlen, -E2BIG, "%s: too many template tokens", name);
                arr[(*cnt)++] = id;
            }
        }
        return 0;
    }
    return mq_errmsg(err, errlen, -ENOTSUP, "%s: unsupported post_processor type \"%s\"", name, type);
}

/* in this order: pre_tokenizer and decoder tell whether vocab keys are byte-level */
static const component components[] = {
    { "normalizer", "normalizers", normalizer_step },
    { "pre_tokenizer", "pretokenizers", pre_tokenizer_step },
    { "decoder", "decoders", decoder_step },
    { "post_processor", "processors", post_processor_step },
};

/* ---- loading: model ------------------------------------------------------------------------ */

static int add_vocab_entry(tok_t *t, const char *key, int32_t id, uint8_t *scratch)
{
    size_t klen = strlen(key);
    if (t->byte_level) {
        long n = byte_level_decode(t, key, klen, scratch);
        if (n >= 0)
            return set_token(t, id, scratch, (size_t)n, 0);
        /* not a byte-level string (e.g. a special token stored in the vocab): keep it raw */
    }
    return set_token(t, id, key, klen, 0);
}

static int split_merge(const cJSON *m, const char **a, size_t *alen, const char **b, size_t *blen)
{
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' '))
            return -1;
        *a = s;
        *alen = (size_t)(sp - s);
        *b = sp + 1;
        *blen = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = cJSON_GetArrayItem(m, 0), *y = cJSON_GetArrayItem(m, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y))
            return -1;
        *a = x->valuestring;
        *alen = strlen(*a);
        *b = y->valuestring;
        *blen = strlen(*b);
        return 0;
    }
    return -1;
}

/* Raw-bytes form of one side of a merge (byte-level mapped back). -1 if not decodable. */
static long merge_side(const tok_t *t, const char *s, size_t n, uint8_t *out)
{
    if (t->byte_level) {
        long k = byte_level_decode(t, s, n, out);
        if (k >= 0)
            return k;
    }
    memcpy(out, s, n);
    return (long)n;
}

static int load_model(tok_t *t, const cJSON *m, const char *name, char *err, size_t errlen)
{
    const char *type = jstr(m, "type");
    if (!type || strcmp(type, "BPE"))
        return mq_errmsg(err, errlen, -ENOTSUP, "%s: model.type \"%s\" is not supported (only BPE)", name,
                         type ? type : "(missing)");
    const char *cont = jstr(m, "continuing_subword_prefix"), *eow = jstr(m, "end_of_word_suffix");
    if ((cont && *cont) || (eow && *eow))
        return mq_errmsg(err, errlen, -ENOTSUP,
                         "%s: model.continuing_subword_prefix/end_of_word_suffix are not supported", name);
    t->byte_fallback = jbool(m, "byte_fallback", 0);
    t->ignore_merges = jbool(m, "ignore_merges", 0);
    t->fuse_unk = jbool(m, "fuse_unk", 0);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(vocab))
        return mq_errmsg(err, errlen, -EINVAL, "%s: model.vocab missing or not an object", name);
    if (merges && !cJSON_IsArray(merges))
        return mq_errmsg(err, errlen, -EINVAL, "%s: model.merges is not an array", name);
    int nv = cJSON_GetArraySize(vocab), nm = merges ? cJSON_GetArraySize(merges) : 0;
    int rc = ensure_ids(t, nv > 0 ? nv - 1 : 0);
    if (rc)
        return rc;
    size_t maxkey = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab)
    {
        size_t k = strlen(it->string);
        if (k > maxkey)
            maxkey = k;
    }
    uint8_t *scratch = malloc(2 * maxkey + 8);
    if (!scratch)
        return -ENOMEM;
    cJSON_ArrayForEach(it, vocab)
    {
        int32_t id;
        if (json_token_id(it, &id) < 0) {
            free(scratch);
            return mq_errmsg(err, errlen, -EINVAL, "%s: model.vocab[\"%.40s\"] is not a valid id", name, it->string);
        }
        rc = add_vocab_entry(t, it->string, id, scratch);
        if (rc) {
            free(scratch);
            return mq_errmsg(err, errlen, rc, "%s: model.vocab[\"%.40s\"]: %s", name, it->string,
                             rc == -EEXIST ? "duplicate id" : strerror(-rc));
        }
    }
    free(scratch);
    const char *unk = jstr(m, "unk_token");
    t->unk_id = -1;
    t->pending_unk = unk ? strdup(unk) : NULL;
    if (unk && !t->pending_unk)
        return -ENOMEM;
    t->model_merges = merges;
    t->n_model_merges = nm;
    return 0;
}

/* Merges are resolved after all tokens (vocab + added) are in the lookup table. */
static int load_merges(tok_t *t, const char *name, char *err, size_t errlen)
{
    int rc = merge_table_init(t, (size_t)t->n_model_merges + 1);
    if (rc)
        return rc;
    const cJSON *it;
    int rank = 0;
    uint8_t *buf = NULL;
    size_t bufcap = 0;
    cJSON_ArrayForEach(it, t->model_merges)
    {
        const char *a, *b;
        size_t al, bl;
        if (split_merge(it, &a, &al, &b, &bl)) {
            free(buf);
            return mq_errmsg(err, errlen, -EINVAL, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", name,
                             rank);
        }
        if (al + bl > bufcap) {
            bufcap = (al + bl) * 2 + 64;
            uint8_t *nb = realloc(buf, bufcap);
            if (!nb) {
                free(buf);
                return -ENOMEM;
            }
            buf = nb;
        }
        long ra = merge_side(t, a, al, buf), rb = merge_side(t, b, bl, buf + ra);
        int32_t ia = tok_lookup(t, buf, (size_t)ra), ib = tok_lookup(t, buf + ra, (size_t)rb);
        int32_t im = tok_lookup(t, buf, (size_t)(ra + rb));
        if (ia < 0 || ib < 0 || im < 0) {
            free(buf);
            return mq_errmsg(err, errlen, -EINVAL,
                             "%s: model.merges[%d] (\"%.30s\" + \"%.30s\") uses a token not in the vocab", name, rank,
                             a, b);
        }
        merge_put(t, ia, ib, rank, im);
        rank++;
    }
    free(buf);
    return 0;
}

/* ---- loading: added tokens ----------------------------------------------------------------- */

static int cmp_added(const void *x, const void *y)
{
    const tok_added *a = x, *b = y;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1; /* longest first */
    return a->id - b->id;
}

static int load_added(tok_t *t, const cJSON *list, const char *name, char *err, size_t errlen)
{
    if (!list || cJSON_IsNull(list))
        return 0;
    if (!cJSON_IsArray(list))
        return mq_errmsg(err, errlen, -EINVAL, "%s: added_tokens is not an array", name);
    int n = cJSON_GetArraySize(list);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    if (!t->added)
        return -ENOMEM;
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, list)
    {
        const cJSON *idv = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = jstr(it, "content");
        int32_t id;
        if (json_token_id(idv, &id) < 0 || !content || !*content)
            return mq_errmsg(err, errlen, -EINVAL, "%s: added_tokens[%d] needs an \"id\" and a non-empty \"content\"",
                             name, i);
        int special = jbool(it, "special", 0);
        int rc = set_token(t, id, content, strlen(content), TOKF_ADDED | (special ? TOKF_SPECIAL : 0));
        if (rc)
            return mq_errmsg(err, errlen, rc, "%s: added_tokens[%d]: %s", name, i, strerror(-rc));
        t->added[i] = (tok_added){ id, (uint32_t)strlen(content), special };
        t->first_byte[(uint8_t)content[0]] = 1;
        i++;
    }
    t->n_added = i;
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    return 0;
}

/* Per-token decode bytes for sentencepiece-style vocabularies: U+2581 -> ' ' (the Replace
 * decoder) and <0xXX> -> the byte (ByteFallback). */
static int build_decode_forms(tok_t *t)
{
    size_t fl = strlen(t->dec_from), tl = strlen(t->dec_to);
    for (int32_t id = 0; id < t->n_tokens; id++) {
        tok_entry *e = &t->tokens[id];
        if (!(e->flags & TOKF_PRESENT) || (e->flags & TOKF_ADDED))
            continue;
        const char *s = t->arena + e->off;
        if (t->dec_byte_fallback && e->len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
            unsigned v;
            char hex[3] = { s[3], s[4], 0 };
            char *end;
            v = (unsigned)strtoul(hex, &end, 16);
            if (*end == 0) {
                uint8_t byte = (uint8_t)v;
                uint32_t off;
                int rc = arena_put(t, &byte, 1, &off);
                if (rc)
                    return rc;
                e = &t->tokens[id];
                e->dec_off = off;
                e->dec_len = 1;
                continue;
            }
        }
        if (!fl || !memmem(s, e->len, t->dec_from, fl))
            continue;
        char *tmp = malloc((size_t)e->len * (tl > fl ? tl : fl) + 1);
        if (!tmp)
            return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < e->len;) {
            if (i + fl <= e->len && !memcmp(s + i, t->dec_from, fl)) {
                memcpy(tmp + o, t->dec_to, tl);
                o += tl;
                i += fl;
            } else
                tmp[o++] = s[i++];
        }
        uint32_t off;
        int rc = arena_put(t, tmp, o, &off);
        free(tmp);
        if (rc)
            return rc;
        e = &t->tokens[id];
        e->dec_off = off;
        e->dec_len = (uint32_t)o;
    }
    return 0;
}

static int load_config(tok_t *t, const char *cfg_text, size_t cfg_len, const char *name, char *err, size_t errlen)
{
    cJSON *cfg = cJSON_ParseWithLength(cfg_text, cfg_len);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return mq_errmsg(err, errlen, -EINVAL, "%s: tokenizer_config.json is not a JSON object", name);
    }
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    if (bos)
        t->bos_id = mq_tok_find(t, bos);
    if (eos)
        t->eos_id = mq_tok_find(t, eos);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct))
        tmpl = ct->valuestring;
    else if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": "..."}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct)
        {
            const char *nm = jstr(it, "name");
            if (nm && !strcmp(nm, "default"))
                tmpl = jstr(it, "template");
        }
    }
    if (tmpl) {
        t->chat_template = strdup(tmpl);
        if (!t->chat_template) {
            cJSON_Delete(cfg);
            return -ENOMEM;
        }
    }
    cJSON_Delete(cfg);
    return 0;
}

int mq_tok_load_mem(const char *json, size_t len, const char *config_json, size_t config_len, const char *name,
                    mq_tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!name)
        name = "tokenizer.json";
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mq_errmsg(err, errlen, -EINVAL, "%s: not a JSON object", name);
    }
    tok_t *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    uint32_t cp_of_byte[256];
    byte_level_table(cp_of_byte);
    for (int i = 0; i < 512; i++)
        t->byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++)
        t->byte_of_cp[cp_of_byte[b]] = (int16_t)b;

    int rc;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%s: no \"model\" object", name);
        goto out;
    }
    /* the components before the model (components[]) */
    for (size_t i = 0; i < sizeof components / sizeof components[0]; i++)
        if ((rc = load_component(t, &components[i], cJSON_GetObjectItemCaseSensitive(root, components[i].what), name,
                                 err, errlen)))
            goto out;
    if ((rc = load_model(t, model, name, err, errlen)))
        goto out;
    if ((rc = load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), name, err, errlen)))
        goto out;
    /* lookup table over every present token (added tokens last, so they win) */
    if ((rc = vocab_table_init(t, (size_t)t->n_tokens)))
        goto out;
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t id = 0; id < t->n_tokens; id++) {
            tok_entry *e = &t->tokens[id];
            if (!(e->flags & TOKF_PRESENT) || !!(e->flags & TOKF_ADDED) != pass)
                continue;
            size_t slot = vocab_probe(t, t->arena + e->off, e->len);
            t->vslot[slot] = (uint32_t)id + 1;
        }
    }
    if (t->byte_level) {
        for (int b = 0; b < 256; b++) {
            uint8_t c = (uint8_t)b;
            t->byte_id[b] = tok_lookup(t, &c, 1);
        }
    } else if (t->byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            t->byte_id[b] = tok_lookup(t, hex, 6);
        }
    }
    if (t->pending_unk)
        t->unk_id = tok_lookup(t, t->pending_unk, strlen(t->pending_unk));
    if ((rc = load_merges(t, name, err, errlen)))
        goto out;
    t->model_merges = NULL;
    if (!t->byte_level && (rc = build_decode_forms(t)))
        goto out;
    for (int32_t id = 0; id < t->n_tokens; id++) {
        tok_entry *e = &t->tokens[id];
        if (e->dec_len > t->max_dec_len)
            t->max_dec_len = e->dec_len;
    }
    if (config_json && (rc = load_config(t, config_json, config_len, name, err, errlen)))
        goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc) {
        if (rc == -ENOMEM && err && errlen)
            mq_errmsg(err, errlen, 0, "%s: out of memory", name);
        mq_tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

static int read_file(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    FILE *f = mq_fopen_regular(path, err, errlen);
    if (!f)
        return -errno;
    int rc = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n < 0 || fseek(f, 0, SEEK_SET))
            rc = -EIO;
        else {
            *buf = malloc((size_t)n + 1);
            if (!*buf)
                rc = -ENOMEM;
            else if (fread(*buf, 1, (size_t)n, f) != (size_t)n) {
                free(*buf);
                *buf = NULL;
                rc = -EIO;
            } else {
                (*buf)[n] = 0;
                *len = (size_t)n;
            }
        }
    } else
        rc = -EIO;
    fclose(f);
    if (rc)
        return mq_errmsg(err, errlen, rc, "%s: read failed: %s", path, strerror(-rc));
    return 0;
}

int mq_tok_load_file(const char *json_path, const char *config_path, mq_tokenizer **out, char *err, size_t errlen)
{
    char *js = NULL, *cfg = NULL;
    size_t jl = 0, cl = 0;
    *out = NULL;
    int rc = read_file(json_path, &js, &jl, err, errlen);
    if (rc)
        return rc;
    if (config_path && (rc = read_file(config_path, &cfg, &cl, err, errlen))) {
        free(js);
        return rc;
    }
    rc = mq_tok_load_mem(js, jl, cfg, cl, json_path, out, err, errlen);
    free(js);
    free(cfg);
    return rc;
}

int mq_tok_load_dir(const char *dir, mq_tokenizer **out, char *err, size_t errlen)
{
    char jp[4096], cp[4096];
    snprintf(jp, sizeof jp, "%s/tokenizer.json", dir);
    snprintf(cp, sizeof cp, "%s/tokenizer_config.json", dir);
    int have_cp = access(cp, F_OK) == 0; /* read_file refuses what is not a regular file */
    return mq_tok_load_file(jp, have_cp ? cp : NULL, out, err, errlen);
}

void mq_tok_free(mq_tokenizer *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (int i = 0; i < t->n_pre; i++)
        pcre2_code_free(t->pre[i].re);
    free(t->tokens);
    free(t->arena);
    free(t->vslot);
    free(t->merges);
    free(t->added);
    free(t->pending_unk);
    free(t->chat_template);
    free(t);
}

/* ---- queries ---------------------------------------------------------------------------- */

int mq_tok_vocab_size(const mq_tokenizer *t)
{
    return t->n_tokens;
}
int32_t mq_tok_bos(const mq_tokenizer *t)
{
    return t->bos_id;
}
int32_t mq_tok_eos(const mq_tokenizer *t)
{
    return t->eos_id;
}
const char *mq_tok_chat_template(const mq_tokenizer *t)
{
    return t->chat_template;
}

int mq_tok_is_special(const mq_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_tokens && (t->tokens[id].flags & TOKF_SPECIAL);
}

const char *mq_tok_token_bytes(const mq_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_tokens || !(t->tokens[id].flags & TOKF_PRESENT))
        return NULL;
    *len = t->tokens[id].dec_len;
    return t->arena + t->tokens[id].dec_off;
}

int32_t mq_tok_find(const mq_tokenizer *t, const char *token)
{
    size_t n = strlen(token);
    for (int i = 0; i < t->n_added; i++) {
        const tok_entry *e = &t->tokens[t->added[i].id];
        if (e->len == n && !memcmp(t->arena + e->off, token, n))
            return t->added[i].id;
    }
    if (t->byte_level) {
        uint8_t *buf = malloc(n + 1);
        if (!buf)
            return -1;
        long k = byte_level_decode(t, token, n, buf);
        int32_t id = k >= 0 ? tok_lookup(t, buf, (size_t)k) : -1;
        free(buf);
        if (id >= 0)
            return id;
    }
    return tok_lookup(t, token, n);
}

/* ---- decode ------------------------------------------------------------------------------ */

int mq_tok_decode(const mq_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_tokens || !(t->tokens[ids[i]].flags & TOKF_PRESENT))
            return -EINVAL;
        raw_len += t->tokens[ids[i]].dec_len;
    }
    uint8_t *raw = malloc(raw_len + 1);
    char *out = malloc(3 * raw_len + 4);
    if (!raw || !out) {
        free(raw);
        free(out);
        return -ENOMEM;
    }
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        const tok_entry *e = &t->tokens[ids[i]];
        if ((flags & MQ_TOK_SKIP_SPECIAL) && (e->flags & TOKF_SPECIAL))
            continue;
        memcpy(raw + r, t->arena + e->dec_off, e->dec_len);
        r += e->dec_len;
    }
    size_t start = 0;
    for (int k = 0; k < t->dec_strip_start && start < r && raw[start] == ' '; k++)
        start++;
    size_t o = 0;
    utf8_repair(raw + start, r - start, 1, out, &o);
    out[o] = 0;
    free(raw);
    *text = out;
    *len = o;
    return 0;
}

void mq_tok_stream_init(mq_tok_stream *s, const mq_tokenizer *tok, unsigned flags, int strip_leading)
{
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->flags = flags;
    s->at_start = strip_leading ? tok->dec_strip_start : 0;
}

size_t mq_tok_stream_max(const mq_tokenizer *t)
{
    return 3 * ((size_t)t->max_dec_len + 4) + 4;
}

int mq_tok_stream_push(mq_tok_stream *s, int32_t id, char *out, size_t cap)
{
    const tok_t *t = s->tok;
    if (id < 0 || id >= t->n_tokens || !(t->tokens[id].flags & TOKF_PRESENT))
        return -EINVAL;
    const tok_entry *e = &t->tokens[id];
    if ((s->flags & MQ_TOK_SKIP_SPECIAL) && (e->flags & TOKF_SPECIAL))
        return 0;
    const uint8_t *p = (const uint8_t *)t->arena + e->dec_off;
    size_t n = e->dec_len;
    while (s->at_start > 0 && s->n_held == 0 && n > 0) { /* sentencepiece: one leading space dropped */
        if (*p == ' ') {
            p++;
            n--;
            s->at_start--;
        } else
            s->at_start = 0;
    }
    if (n == 0)
        return 0;
    s->at_start = 0;
    size_t total = (size_t)s->n_held + n;
    if (3 * total + 3 > cap)
        return -ENOSPC;
    uint8_t stackbuf[256];
    uint8_t *buf = total <= sizeof stackbuf ? stackbuf : malloc(total);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, s->held, (size_t)s->n_held);
    memcpy(buf + s->n_held, p, n);
    size_t o = 0;
    size_t used = utf8_repair(buf, total, 0, out, &o);
    s->n_held = (int)(total - used); /* an incomplete prefix is at most 3 bytes */
    memcpy(s->held, buf + used, (size_t)s->n_held);
    if (buf != stackbuf)
        free(buf);
    return (int)o;
}

int mq_tok_stream_flush(mq_tok_stream *s, char *out, size_t cap)
{
    if (s->n_held == 0)
        return 0;
    if (cap < 3 * (size_t)s->n_held + 3)
        return -ENOSPC;
    size_t o = 0;
    utf8_repair(s->held, (size_t)s->n_held, 1, out, &o);
    s->n_held = 0;
    return (int)o;
}
