/* engine/tokenizer_internal.h — the tokenizer's private layout, shared by tokenizer.c
 * (loading, decoding) and tokenizer_encode.c (encoding). Not for other modules. */
#ifndef MQ_ENGINE_TOKENIZER_INTERNAL_H
#define MQ_ENGINE_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

typedef struct cJSON cJSON;

#define TOK_MAX_OPS 16

enum { TOKF_PRESENT = 1, TOKF_ADDED = 2, TOKF_SPECIAL = 4 };

typedef struct tok_entry {
    uint32_t off, len;         /* raw bytes in arena (byte-level keys already mapped back) */
    uint32_t dec_off, dec_len; /* bytes decoding emits (sentencepiece: U+2581 -> ' ', <0xXX>) */
    uint32_t flags;
} tok_entry;

typedef struct tok_merge {
    uint64_t key; /* left id << 32 | right id */
    int32_t rank;
    int32_t id_plus1; /* merged id + 1; 0 = empty slot */
} tok_merge;

typedef struct tok_added {
    int32_t id;
    uint32_t len;
    int special;
} tok_added;

enum { NORM_NFC, NORM_NFKC, NORM_NFD, NORM_NFKD, NORM_PREPEND, NORM_REPLACE };
typedef struct tok_norm {
    int kind;
    char *a, *b; /* Prepend: a; Replace: a -> b */
} tok_norm;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT };
typedef struct tok_pre {
    int kind;
    int behavior, invert;
    int add_prefix_space; /* ByteLevel */
    char replacement[8];  /* Metaspace: usually U+2581 */
    int prepend_scheme;   /* Metaspace */
    pcre2_code *re;       /* Split, Digits, ByteLevel(use_regex); NULL = no split */
    int jit;
} tok_pre;

struct mq_tokenizer {
    tok_entry *tokens; /* [n_tokens], indexed by id; holes have flags == 0 */
    int32_t n_tokens;
    size_t tokens_cap;
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *vslot; /* open addressing: id + 1, 0 = empty; keyed by raw bytes */
    size_t vmask;
    tok_merge *merges;
    size_t mmask;
    tok_added *added; /* longest first */
    int n_added;
    uint8_t first_byte[256]; /* 1 if some added token starts with this byte */

    tok_norm norm[TOK_MAX_OPS];
    int n_norm;
    tok_pre pre[TOK_MAX_OPS];
    int n_pre;
    int byte_level; /* vocab keys are GPT-2 byte-level strings */
    int byte_fallback, ignore_merges, fuse_unk;
    int16_t byte_of_cp[512];
    int32_t byte_id[256]; /* byte-level: token of each byte; byte_fallback: <0xXX> */
    int32_t unk_id, bos_id, eos_id;
    int32_t pre_ids[TOK_MAX_OPS], post_ids[TOK_MAX_OPS];
    int n_pre_ids, n_post_ids;

    /* decoder */
    int dec_byte_fallback;
    char dec_from[16], dec_to[16];
    int dec_strip_start;
    uint32_t max_dec_len;

    char *chat_template;
    /* loading only */
    char *pending_unk;
    const cJSON *model_merges;
    int n_model_merges;
};
typedef struct mq_tokenizer tok_t;

int32_t tok_lookup(const tok_t *t, const void *key, size_t n);
const tok_merge *tok_merge_get(const tok_t *t, int32_t a, int32_t b);

#endif
