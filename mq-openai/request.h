/* mq-openai/request.h — OpenAI request bodies, checked and turned into what mqd is sent.
 *
 * Owns: the parser of POST /v1/chat/completions and /v1/completions bodies. It checks
 * every field mq-openai honours against its bounds, refuses what it cannot honour (`n` > 1,
 * logprobs, non-text content parts...) with an OpenAI-style error that names the field
 * (`messages[3].content[1].type`), ignores fields it does not know (as vLLM does), and
 * produces:
 *   - chat: the conversation as compact JSON for mqd's chat template
 *     {"messages":[...], "tools":[...], "enable_thinking":bool, "prefix":"..."}
 *     with only the fields the template reads (libclient/mq.h, mq_send_chat);
 *   - completions: the raw prompt, whose special tokens mqd parses.
 * tool_choice maps onto the prompt: "none" leaves the tools out (and the output is not
 * parsed for calls), "required" and a named function force the start of the reply
 * (`prefix`: "<tool_call>\n" or "<tool_call>\n{\"name\": \"f\", \"arguments\": "), which
 * the output parser (mq-openai/output.h) is seeded with.
 * Extensions under "mq": "mode" (mixed, bf16, fp4: the precision of this request) and
 * "think_history" ("template": past Qwen3 turns rendered as transformers does; or
 * "as_generated": with the empty think block the model saw, so a pinned conversation
 * reuses the previous reply's KV — mq_chat_opts.think_as_generated).
 *
 * Who calls it: the HTTP handlers (mq-openai/http.c), the unit test and the fuzz target.
 * Thread rules: pure functions; a request struct belongs to one thread.
 * Errors: 0, or -EINVAL with *err filled (HTTP status 400, type "invalid_request_error",
 * param = the offending field, message a sentence naming it).
 */
#ifndef MQ_OPENAI_REQUEST_H
#define MQ_OPENAI_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "libclient/mq.h"

#define OAI_MAX_STOP        4   /* stop strings per request (mqd's scheduler bound) */
#define OAI_STOP_MAX_LEN    255 /* bytes of one stop string (mqd keeps 256 bytes of tail) */
#define OAI_NAME_MAX        127 /* model names, session ids, tool names */
#define OAI_MAX_MESSAGES    4096
#define OAI_MAX_TOOLS       256
#define OAI_MAX_TOKENS      (1u << 20) /* what mqd accepts; the context limit cuts it further */
#define OAI_MAX_TEMPERATURE 100.0

typedef enum { OAI_CHAT = 0, OAI_COMPLETION = 1 } oai_kind;
typedef enum { OAI_TOOLS_AUTO = 0, OAI_TOOLS_NONE, OAI_TOOLS_REQUIRED, OAI_TOOLS_NAMED } oai_tool_choice;
/* The per-request precision extension {"mq": {"mode": "..."}}; DEFAULT = mqd's. */
typedef enum { OAI_MODE_DEFAULT = 0, OAI_MODE_MIXED, OAI_MODE_BF16, OAI_MODE_FP4 } oai_mode;

typedef struct oai_error {
    int status;       /* HTTP status */
    const char *type; /* "invalid_request_error", ... (static) */
    char param[96];   /* offending field, "" if none */
    char message[320];
} oai_error;

typedef struct oai_request {
    oai_kind kind;
    char model[OAI_NAME_MAX + 1]; /* as given ("" if absent) */
    char user[OAI_NAME_MAX + 1];  /* the `user` field: pins a conversation like X-Session-Id */
    /* chat: JSON for mqd; completions: the prompt text. malloc'ed, NUL-terminated. */
    char *payload;
    size_t payload_len;
    /* chat only */
    int has_tools; /* tools were given and tool_choice is not "none" */
    oai_tool_choice tool_choice;
    char *prefix;        /* forced start of the reply ("" if none), part of payload too */
    int enable_thinking; /* -1 not given, 0, 1 */
    /* sampling */
    uint32_t max_tokens; /* 0 = not given (mq-openai's default applies) */
    double temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int has_temperature, has_top_p;
    uint32_t top_k; /* 0 = off */
    uint64_t seed;
    int has_seed;
    int n_stop;
    char *stop[OAI_MAX_STOP];
    /* output */
    int stream, include_usage;
    int echo; /* completions: echo is refused (400), kept 0 */
    oai_mode mode;
    int think_history; /* -1 not given (the server's default), 0 template, 1 as generated */
} oai_request;

/* Parses a body of `len` bytes (not NUL-terminated). On success *out owns its strings
 * (oai_request_free). On failure *out is empty and *err says why. */
int oai_parse_chat(const char *body, size_t len, oai_request *out, oai_error *err);
int oai_parse_completion(const char *body, size_t len, oai_request *out, oai_error *err);
/* The server's think_history for a chat request that does not choose one (1 = as
 * generated): updates the payload. 0 or -ENOMEM. */
int oai_request_default_think(oai_request *r, int as_generated);
void oai_request_free(oai_request *r);
/* What mqd is sent beside the payload: the sampling parameters and the request options,
 * with OpenAI's defaults where the body gives none (temperature 1, top_p 1, no top_k) and
 * default_max_tokens when it gives no max_tokens. temperature 0 is greedy; the text of
 * special tokens is not streamed; the payload is the session's whole context. *o points
 * into *q (the stop strings): q outlives the send. For http.c and the bench's libmq
 * baseline, which must send mqd the same request. */
void oai_request_params(const oai_request *q, uint32_t default_max_tokens, mq_params *p, mq_request_opts *o);

/* Fills *err; returns -EINVAL (for `return oai_fail(...)`). */
int oai_fail(oai_error *err, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

const char *oai_mode_name(oai_mode m); /* "default", "mixed", "bf16", "fp4" */

#endif
