/* mq-openai/reply.h — OpenAI response bodies and server-sent events.
 *
 * Owns: the JSON of every answer mq-openai sends: chat.completion, text_completion, their
 * streaming chunks (chat.completion.chunk, SSE "data: {...}\n\n" lines and the final
 * "data: [DONE]\n\n"), usage, /v1/models and the OpenAI error object
 * {"error": {"message", "type", "param", "code"}}.
 * Chunks follow OpenAI's order: a first chunk with the role, content / reasoning_content
 * deltas, a tool call's {index, id, type, function: {name, arguments: ""}} followed by
 * argument fragments {index, function: {arguments}}, a chunk with finish_reason, then (with
 * stream_options.include_usage) a chunk with empty choices and the usage.
 *
 * Who calls it: the HTTP handlers and the unit test. Thread rules: pure functions.
 * Every function returns a malloc'ed NUL-terminated string, or NULL when out of memory.
 */
#ifndef MQ_OPENAI_REPLY_H
#define MQ_OPENAI_REPLY_H

#include <stddef.h>
#include <stdint.h>

#include "mq-openai/output.h"
#include "mq-openai/request.h"

#define OAI_SSE_DONE "data: [DONE]\n\n"

typedef struct oai_usage {
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
    /* mqd's own timings, returned as the extension "mq": {"queue_ms", "ttft_ms"} beside
     * the usage (a client can tell mqd's time from the transport's); < 0 = unknown */
    double queue_ms, ttft_ms;
} oai_usage;

/* What every response of one request repeats. */
typedef struct oai_reply_ctx {
    oai_kind kind;
    char id[48]; /* "chatcmpl-<n>" / "cmpl-<n>" */
    const char *model;
    long long created; /* unix seconds */
} oai_reply_ctx;

/* Non-streaming bodies. finish: "stop", "length" or "tool_calls". */
char *oai_reply_chat(const oai_reply_ctx *c, const oai_message *m, const char *finish, const oai_usage *u);
char *oai_reply_completion(const oai_reply_ctx *c, const char *text, size_t len, const char *finish,
                           const oai_usage *u);

/* SSE events ("data: ...\n\n"). */
char *oai_sse_role(const oai_reply_ctx *c);                               /* chat: the first chunk */
char *oai_sse_event(const oai_reply_ctx *c, const oai_event *ev);         /* one parser event */
char *oai_sse_text(const oai_reply_ctx *c, const char *text, size_t len); /* completions */
char *oai_sse_finish(const oai_reply_ctx *c, const char *finish);
char *oai_sse_usage(const oai_reply_ctx *c, const oai_usage *u);
/* An error in the middle of a stream: data: {"error": {...}} */
char *oai_sse_error(const oai_error *e);

char *oai_reply_error(const oai_error *e);
/* /v1/models with one model. */
char *oai_reply_models(const char *model, long long created);

#endif
