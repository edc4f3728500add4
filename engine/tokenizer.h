/* engine/tokenizer.h — Hugging Face tokenizer.json: BPE encode and decode.
 *
 * Owns: one immutable tokenizer loaded from a `tokenizer.json` (+ optionally the folder's
 * `tokenizer_config.json` for BOS/EOS names and the chat template). Two model families:
 *   - byte-level BPE (GPT-2 / Qwen2 / Qwen3 / SmolLM2 / Llama-3): normalizer (NFC), pre-
 *     tokenizer Split regex (PCRE2, UTF+UCP, read from the JSON), ByteLevel, Digits,
 *     Sequence; merges by rank;
 *   - byte-fallback BPE (Llama-2 / TinyStories, sentencepiece converted): Prepend/Replace
 *     normalizers or the Metaspace pre-tokenizer, U+2581 for spaces, <0xXX> byte tokens for
 *     characters not in the vocab.
 * BOS/EOS around an encoded text come from the post_processor (TemplateProcessing), as
 * tokenizers does; tokenizer_config.json's add_bos_token is not consulted.
 * Added tokens (special or not) are matched first on the raw text, longest first.
 *
 * Internally every token is kept as its raw bytes (byte-level vocab keys are mapped back
 * through the GPT-2 byte<->unicode table at load), so BPE works on bytes and decoding is
 * concatenation.
 *
 * Who calls it: the scheduler (prompt text -> ids), the decode pool (ids -> streamed text),
 * the chat template renderer, the offline eval program.
 * Thread rules: after mq_tok_load*() returns, a tokenizer is read-only and may be used from
 * any number of threads at once (every call takes its scratch memory from the caller or the
 * heap). mq_tok_stream is per request, owned by one thread at a time.
 *
 * Errors: functions return 0 or a negative errno; when `err` is non-NULL a message naming
 * the file/field at fault is written there (MQ_TOK_ERR_LEN bytes is enough).
 */
#ifndef MQ_ENGINE_TOKENIZER_H
#define MQ_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_TOK_ERR_LEN 256

typedef struct mq_tokenizer mq_tokenizer;

/* Loads `dir`/tokenizer.json and, when present, `dir`/tokenizer_config.json. */
int mq_tok_load_dir(const char *dir, mq_tokenizer **out, char *err, size_t errlen);
/* Loads one tokenizer.json file; config_path may be NULL. */
int mq_tok_load_file(const char *json_path, const char *config_path, mq_tokenizer **out, char *err, size_t errlen);
/* Same from memory (tokenizer.json text, tokenizer_config.json text or NULL). `name` is
 * used in error messages. */
int mq_tok_load_mem(const char *json, size_t len, const char *config_json, size_t config_len, const char *name,
                    mq_tokenizer **out, char *err, size_t errlen);
void mq_tok_free(mq_tokenizer *tok);

/* Encode flags. */
enum {
    /* Add the post-processor's tokens (BOS for Llama/TinyStories, nothing for Qwen) —
     * transformers' add_special_tokens=True. */
    MQ_TOK_ADD_SPECIAL = 1u << 0,
    /* Do NOT match special added tokens (special=true) in the text: they are tokenized as
     * plain text. Use it for untrusted user content. Non-special added tokens (<think>,
     * <tool_call> in Qwen3) are always matched, as transformers does. */
    MQ_TOK_NO_PARSE_SPECIAL = 1u << 1,
};

/* Text (UTF-8, `len` bytes, not NUL-terminated) -> ids. *ids is malloc'ed (caller frees;
 * NULL when *n == 0 is allowed). Invalid UTF-8 is -EILSEQ. */
int mq_tok_encode(const mq_tokenizer *tok, const char *text, size_t len, unsigned flags, int32_t **ids, size_t *n,
                  char *err, size_t errlen);
/* A byte range [off, off + len) of a text. */
typedef struct mq_tok_span {
    size_t off, len;
} mq_tok_span;
/* As mq_tok_encode, but special added tokens are matched only where they lie wholly
 * outside the `plain` ranges (ascending, non-overlapping): text inside them is tokenized
 * as with MQ_TOK_NO_PARSE_SPECIAL, the rest with special tokens parsed. */
int mq_tok_encode_spans(const mq_tokenizer *tok, const char *text, size_t len, unsigned flags, const mq_tok_span *plain,
                        size_t n_plain, int32_t **ids, size_t *n, char *err, size_t errlen);
/* Appends to a caller-grown array (ids, n, cap: realloc storage). */
int mq_tok_encode_append(const mq_tokenizer *tok, const char *text, size_t len, unsigned flags, int32_t **ids,
                         size_t *n, size_t *cap, char *err, size_t errlen);

/* Decode flags. */
enum { MQ_TOK_SKIP_SPECIAL = 1u << 0 };

/* ids -> text exactly as transformers' decode(ids, skip_special_tokens=...) with
 * clean_up_tokenization_spaces=False: invalid UTF-8 becomes U+FFFD per maximal invalid
 * subsequence. *text is malloc'ed and NUL-terminated; *len excludes the NUL. Unknown ids
 * are -EINVAL. */
int mq_tok_decode(const mq_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags, char **text, size_t *len);

/* Raw bytes of one token as decoding emits them (before UTF-8 repair and before the
 * leading-space strip of sentencepiece decoders). NULL for an unknown id. */
const char *mq_tok_token_bytes(const mq_tokenizer *tok, int32_t id, size_t *len);

/* Vocabulary facts. */
int mq_tok_vocab_size(const mq_tokenizer *tok);                  /* max id + 1 */
int32_t mq_tok_find(const mq_tokenizer *tok, const char *token); /* exact token string -> id
                                                                  * (added tokens and vocab
                                                                  * keys as written in the
                                                                  * JSON); -1 if none */
int mq_tok_is_special(const mq_tokenizer *tok, int32_t id);
int32_t mq_tok_bos(const mq_tokenizer *tok); /* -1 if none */
int32_t mq_tok_eos(const mq_tokenizer *tok); /* -1 if none */
/* The chat template text of tokenizer_config.json, or NULL. */
const char *mq_tok_chat_template(const mq_tokenizer *tok);

/* Streaming decoder for generated tokens: never emits a broken UTF-8 sequence. Bytes of a
 * character split across tokens are held back until the character is complete; bytes that
 * can never become valid are emitted as U+FFFD (the same rule as mq_tok_decode, so the
 * concatenated stream equals the full decode of the same ids).
 * `strip_leading` = 1 reproduces the sentencepiece decoder's removal of one leading space
 * of the whole text (use it when the stream is the whole text); 0 for a continuation of a
 * prompt, where the space is real. */
typedef struct mq_tok_stream {
    const mq_tokenizer *tok;
    unsigned flags;  /* MQ_TOK_SKIP_SPECIAL */
    int at_start;    /* the leading-space strip still applies */
    uint8_t held[4]; /* an incomplete UTF-8 sequence */
    int n_held;
} mq_tok_stream;

void mq_tok_stream_init(mq_tok_stream *s, const mq_tokenizer *tok, unsigned flags, int strip_leading);
/* Writes the text that token `id` completes to out (at most cap bytes; cap must be at least
 * 3 * (held + token bytes) + 3 — mq_tok_stream_max() is always enough: 400 bytes for
 * Qwen3, whose longest token is 128 bytes). Returns the byte count, or -EINVAL (unknown
 * id), -ENOSPC (cap too small; nothing consumed). */
int mq_tok_stream_push(mq_tok_stream *s, int32_t id, char *out, size_t cap);
/* End of stream: the held incomplete bytes become U+FFFD. Returns the byte count. */
int mq_tok_stream_flush(mq_tok_stream *s, char *out, size_t cap);
/* A buffer of this many bytes is always large enough for one push or flush. */
size_t mq_tok_stream_max(const mq_tokenizer *tok);

/* UTF-8 helpers shared with the chat template and the stop-string matcher. */
int mq_utf8_valid(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
