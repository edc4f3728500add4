/* engine/chat_template.h — chat templates rendered in C (no Jinja engine).
 *
 * Owns: the logic of three templates, each written to produce exactly the text that
 * transformers' apply_chat_template(..., tokenize=False) renders:
 *   - "qwen3":  the Qwen3 template of shared/models/mq-qwen3-80m/tokenizer_config.json
 *               (system, tools in the system prompt, <think> stripped from assistant turns
 *               before the last user query, enable_thinking, assistant tool_calls, tool
 *               responses grouped into user turns, reasoning_content);
 *   - "chatml": plain ChatML without thinking or tools;
 *   - "llama3": Llama-3 (bos_token + header/eot turns, content trimmed).
 * The template is detected from tokenizer_config.json's chat_template text; an unknown
 * template is an error (-ENOTSUP) and the caller may choose one by name.
 *
 * Messages are OpenAI-style cJSON: [{"role", "content", "tool_calls", "reasoning_content",
 * "name"}...]. Tool definitions and tool-call arguments are serialised like Python's
 * json.dumps as transformers' `tojson` filter calls it: ", " and ": " separators,
 * ensure_ascii=False (non-ASCII is written as UTF-8, not \uXXXX), keys in given order.
 * A null or missing "content" renders as "" (transformers would raise); a list content
 * ([{"type":"text","text":...}]) is joined text parts.
 *
 * Who calls it: the scheduler (chat requests), tests. Thread rules: pure functions.
 * Errors: 0 or a negative errno, with a message in err (naming the message index/field).
 */
#ifndef MQ_ENGINE_CHAT_TEMPLATE_H
#define MQ_ENGINE_CHAT_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cJSON cJSON;

typedef enum { MQ_CHAT_QWEN3 = 0, MQ_CHAT_CHATML = 1, MQ_CHAT_LLAMA3 = 2 } mq_chat_kind;

/* Detects the template from its Jinja text (tokenizer_config.json "chat_template").
 * -ENOTSUP with a message listing the names to choose from when it is not recognised;
 * -ENOENT when text is NULL. */
int mq_chat_detect(const char *template_text, mq_chat_kind *kind, char *err, size_t errlen);
/* "qwen3", "chatml", "llama3" -> kind; -ENOTSUP otherwise. */
int mq_chat_from_name(const char *name, mq_chat_kind *kind);
const char *mq_chat_name(mq_chat_kind kind);

typedef struct mq_chat_opts {
    int add_generation_prompt;
    int enable_thinking;   /* qwen3: -1 = not given (default: thinking), 0 = false, 1 = true */
    const char *bos_token; /* llama3: prepended text, e.g. "<|begin_of_text|>"; NULL = "" */
    /* Text the reply is forced to start with, rendered after the generation prompt as the
     * caller's text (e.g. "<tool_call>\n" for a required tool call); NULL = none. */
    const char *reply_prefix;
    /* qwen3 with enable_thinking 0, not transformers' rendering: a past assistant turn
     * without reasoning keeps the empty "<think>\n\n</think>\n\n" that the generation
     * prompt gave it, so the history renders the tokens the model actually saw and the
     * next turn reuses the whole reply's KV (QwenLM/Qwen3 issue 1826; measured in
     * docs/results.md, bench-http). 0 = the template's rendering (the default). */
    int think_as_generated;
} mq_chat_opts;

/* Full render of a conversation. tools: a JSON array or NULL. *out is malloc'ed and
 * NUL-terminated. */
int mq_chat_render(mq_chat_kind kind, const cJSON *messages, const cJSON *tools, const mq_chat_opts *opts, char **out,
                   size_t *len, char *err, size_t errlen);

/* Incremental turn: the session has already processed the conversation up to the end of
 * an assistant reply (generation stopped on the end-of-turn token: <|im_end|> for
 * qwen3/chatml, <|eot_id|> for llama3). Renders only what the new messages (user, tool,
 * system...) append, plus the generation prompt if asked. `end_token_in_session` says
 * whether that end token is already in the session's tokens (if not, it is emitted first).
 *
 * Match with the full render: the session holds render(history before the reply, with
 * the generation prompt) + the reply exactly as generated + the end token. The full render
 * of (history + reply + new) starts with that same prompt and ends with
 * end token + render_append(new), for every template (tests/golden/test_chat_template.c
 * checks both). The one part that may differ is the reply itself: qwen3's full render
 * re-renders a past assistant turn (drops its <think> block once a later user query
 * exists, adds an empty one to a final turn), while the session keeps what the model
 * actually generated in its KV cache — re-rendering it would invalidate the cached suffix
 * for no gain. */
int mq_chat_render_append(mq_chat_kind kind, const cJSON *new_messages, const mq_chat_opts *opts,
                          int end_token_in_session, char **out, size_t *len, char *err, size_t errlen);

/* Render + tokenize, the way mqd turns a conversation into prompt ids: the template's
 * own markup is tokenized with its special tokens, while the caller's data (message
 * content, reasoning, names, tool definitions, tool-call arguments, reply_prefix) is
 * tokenized as text: "<|im_end|>" or "<|im_start|>system" inside a message stays text
 * and cannot open a turn (role injection). Added tokens that are not special (Qwen3's
 * <think>, <tool_call>) are matched everywhere, as transformers does. For conversations
 * whose content holds no special-token strings the ids equal the tokenization of the
 * rendered text (the golden chat cases). append = 0: mq_chat_render(messages, tools);
 * append = 1: mq_chat_render_append(messages, end_token_in_session). *ids is malloc'ed. */
int mq_chat_encode(const mq_tokenizer *tok, mq_chat_kind kind, const cJSON *messages, const cJSON *tools,
                   const mq_chat_opts *opts, int append, int end_token_in_session, int32_t **ids, size_t *n, char *err,
                   size_t errlen);

/* Python json.dumps(v, ensure_ascii=False) of a cJSON value, malloc'ed. Integral numbers
 * are written as integers (cJSON does not keep "1.0" vs "1"); others as Python's repr. */
char *mq_chat_json_dumps(const cJSON *v);

#ifdef __cplusplus
}
#endif
#endif
