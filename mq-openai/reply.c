/* mq-openai/reply.c — OpenAI response bodies and SSE chunks (see reply.h). */
#define _GNU_SOURCE
#include "mq-openai/reply.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A string item of exactly len bytes (cJSON wants NUL-terminated input). */
static cJSON *str_n(const char *s, size_t len)
{
    char *t = strndup(s ? s : "", s ? len : 0);
    if (!t)
        return NULL;
    cJSON *v = cJSON_CreateString(t);
    free(t);
    return v;
}

static char *print_and_free(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static char *sse(cJSON *o)
{
    char *j = print_and_free(o);
    if (!j)
        return NULL;
    char *out = NULL;
    if (asprintf(&out, "data: %s\n\n", j) < 0)
        out = NULL;
    free(j);
    return out;
}

static cJSON *head(const oai_reply_ctx *c, int chunk)
{
    static const char *const objs[2][2] = { { "chat.completion", "chat.completion.chunk" },
                                            { "text_completion", "text_completion" } };
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", objs[c->kind == OAI_COMPLETION][chunk]);
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", c->model ? c->model : "");
    return o;
}

static cJSON *usage(const oai_usage *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", (double)u->prompt_tokens + u->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
    return o;
}

/* the usage object and the "mq" timing extension beside it */
static void add_usage(cJSON *o, const oai_usage *u)
{
    cJSON_AddItemToObject(o, "usage", usage(u));
    if (u->ttft_ms >= 0) {
        cJSON *m = cJSON_AddObjectToObject(o, "mq");
        cJSON_AddNumberToObject(m, "queue_ms", u->queue_ms);
        cJSON_AddNumberToObject(m, "ttft_ms", u->ttft_ms);
    }
}

static cJSON *one_choice(cJSON *o)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(arr, ch);
    cJSON_AddNumberToObject(ch, "index", 0);
    return ch;
}

char *oai_reply_chat(const oai_reply_ctx *c, const oai_message *m, const char *finish, const oai_usage *u)
{
    cJSON *o = head(c, 0);
    cJSON *ch = one_choice(o);
    cJSON *msg = cJSON_AddObjectToObject(ch, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    if (m->content.len)
        cJSON_AddItemToObject(msg, "content", str_n(m->content.p, m->content.len));
    else
        cJSON_AddNullToObject(msg, "content");
    if (m->has_reasoning)
        cJSON_AddItemToObject(msg, "reasoning_content", str_n(m->reasoning.p, m->reasoning.len));
    if (m->n_calls) {
        cJSON *tc = cJSON_AddArrayToObject(msg, "tool_calls");
        for (int i = 0; i < m->n_calls; i++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddItemToArray(tc, t);
            cJSON_AddStringToObject(t, "id", m->calls[i].id);
            cJSON_AddStringToObject(t, "type", "function");
            cJSON *f = cJSON_AddObjectToObject(t, "function");
            cJSON_AddStringToObject(f, "name", m->calls[i].name);
            cJSON_AddItemToObject(f, "arguments", str_n(m->calls[i].args.p, m->calls[i].args.len));
        }
    }
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", finish);
    add_usage(o, u);
    return print_and_free(o);
}

char *oai_reply_completion(const oai_reply_ctx *c, const char *text, size_t len, const char *finish, const oai_usage *u)
{
    cJSON *o = head(c, 0);
    cJSON *ch = one_choice(o);
    cJSON_AddItemToObject(ch, "text", str_n(text, len));
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", finish);
    add_usage(o, u);
    return print_and_free(o);
}

/* A chunk with one choice whose delta the caller fills; finish_reason null. */
static cJSON *chunk(const oai_reply_ctx *c, cJSON **delta)
{
    cJSON *o = head(c, 1);
    cJSON *ch = one_choice(o);
    *delta = cJSON_AddObjectToObject(ch, "delta");
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    return o;
}

char *oai_sse_role(const oai_reply_ctx *c)
{
    cJSON *d;
    cJSON *o = chunk(c, &d);
    cJSON_AddStringToObject(d, "role", "assistant");
    cJSON_AddStringToObject(d, "content", "");
    return sse(o);
}

char *oai_sse_event(const oai_reply_ctx *c, const oai_event *ev)
{
    cJSON *d;
    cJSON *o = chunk(c, &d);
    switch (ev->type) {
    case OAI_EV_REASONING: cJSON_AddItemToObject(d, "reasoning_content", str_n(ev->text, ev->len)); break;
    case OAI_EV_CONTENT: cJSON_AddItemToObject(d, "content", str_n(ev->text, ev->len)); break;
    case OAI_EV_CALL:
    case OAI_EV_ARGS: {
        cJSON *arr = cJSON_AddArrayToObject(d, "tool_calls");
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, t);
        cJSON_AddNumberToObject(t, "index", ev->index);
        cJSON *f;
        if (ev->type == OAI_EV_CALL) {
            cJSON_AddStringToObject(t, "id", ev->id);
            cJSON_AddStringToObject(t, "type", "function");
            f = cJSON_AddObjectToObject(t, "function");
            cJSON_AddItemToObject(f, "name", str_n(ev->text, ev->len));
            cJSON_AddStringToObject(f, "arguments", "");
        } else {
            f = cJSON_AddObjectToObject(t, "function");
            cJSON_AddItemToObject(f, "arguments", str_n(ev->text, ev->len));
        }
        break;
    }
    }
    return sse(o);
}

char *oai_sse_text(const oai_reply_ctx *c, const char *text, size_t len)
{
    cJSON *o = head(c, 1);
    cJSON *ch = one_choice(o);
    cJSON_AddItemToObject(ch, "text", str_n(text, len));
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    return sse(o);
}

char *oai_sse_finish(const oai_reply_ctx *c, const char *finish)
{
    cJSON *o = head(c, 1);
    cJSON *ch = one_choice(o);
    if (c->kind == OAI_COMPLETION)
        cJSON_AddStringToObject(ch, "text", "");
    else
        cJSON_AddObjectToObject(ch, "delta");
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", finish);
    return sse(o);
}

char *oai_sse_usage(const oai_reply_ctx *c, const oai_usage *u)
{
    cJSON *o = head(c, 1);
    cJSON_AddArrayToObject(o, "choices");
    add_usage(o, u);
    return sse(o);
}

static cJSON *error_obj(const oai_error *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *er = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(er, "message", e->message);
    cJSON_AddStringToObject(er, "type", e->type ? e->type : "server_error");
    if (e->param[0])
        cJSON_AddStringToObject(er, "param", e->param);
    else
        cJSON_AddNullToObject(er, "param");
    cJSON_AddNumberToObject(er, "code", e->status);
    return o;
}

char *oai_reply_error(const oai_error *e)
{
    return print_and_free(error_obj(e));
}

char *oai_sse_error(const oai_error *e)
{
    return sse(error_obj(e));
}

char *oai_reply_models(const char *model, long long created)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *arr = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(arr, m);
    cJSON_AddStringToObject(m, "id", model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "mq");
    return print_and_free(o);
}
