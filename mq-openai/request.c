/* mq-openai/request.c — OpenAI request bodies -> mq requests (see request.h). */
#define _GNU_SOURCE
#include "mq-openai/request.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD "invalid_request_error"

int oai_fail(oai_error *err, int status, const char *type, const char *param, const char *fmt, ...)
{
    if (err) {
        err->status = status;
        err->type = type;
        snprintf(err->param, sizeof err->param, "%s", param ? param : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

const char *oai_mode_name(oai_mode m)
{
    switch (m) {
    case OAI_MODE_MIXED: return "mixed";
    case OAI_MODE_BF16: return "bf16";
    case OAI_MODE_FP4: return "fp4";
    default: return "default";
    }
}

void oai_request_free(oai_request *r)
{
    free(r->payload);
    free(r->prefix);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ---- typed field readers: 1 = present and valid, 0 = absent (or null), <0 = error ---- */

static int get_bool(const cJSON *o, const char *key, int *out, oai_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return oai_fail(err, 400, BAD, key, "%s: must be true or false", key);
    *out = cJSON_IsTrue(v);
    return 1;
}

static int get_num(const cJSON *o, const char *key, double lo, double hi, double *out, oai_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return oai_fail(err, 400, BAD, key, "%s: must be a number", key);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return oai_fail(err, 400, BAD, key, "%s: %g is not in [%g, %g]", key, v->valuedouble, lo, hi);
    *out = v->valuedouble;
    return 1;
}

static int get_int(const cJSON *o, const char *key, double lo, double hi, double *out, oai_error *err)
{
    int rc = get_num(o, key, lo, hi, out, err);
    if (rc > 0 && *out != floor(*out))
        return oai_fail(err, 400, BAD, key, "%s: must be an integer, not %g", key, *out);
    return rc;
}

static int get_str(const cJSON *o, const char *key, size_t max, char *out, size_t cap, oai_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v))
        return oai_fail(err, 400, BAD, key, "%s: must be a string", key);
    size_t n = strlen(v->valuestring);
    if (n > max || n >= cap)
        return oai_fail(err, 400, BAD, key, "%s: longer than %zu bytes", key, max);
    memcpy(out, v->valuestring, n + 1);
    return 1;
}

/* ---- fields both endpoints share ------------------------------------------------- */

/* Fields whose presence with a non-default value asks for something mq does not do. */
static int refuse_unsupported(const cJSON *o, oai_error *err)
{
    double n;
    int rc = get_int(o, "n", -1e18, 1e18, &n, err);
    if (rc < 0)
        return rc;
    if (rc > 0 && n != 1)
        return oai_fail(err, 400, BAD, "n", "n: only 1 choice per request is supported, not %g", n);
    rc = get_int(o, "best_of", -1e18, 1e18, &n, err);
    if (rc < 0)
        return rc;
    if (rc > 0 && n != 1)
        return oai_fail(err, 400, BAD, "best_of", "best_of: only 1 is supported, not %g", n);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "logprobs");
    if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return oai_fail(err, 400, BAD, "logprobs", "logprobs: not supported by mq");
    v = cJSON_GetObjectItemCaseSensitive(o, "top_logprobs");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return oai_fail(err, 400, BAD, "top_logprobs", "top_logprobs: not supported by mq");
    v = cJSON_GetObjectItemCaseSensitive(o, "logit_bias");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsObject(v) && !v->child))
        return oai_fail(err, 400, BAD, "logit_bias", "logit_bias: not supported by mq");
    v = cJSON_GetObjectItemCaseSensitive(o, "echo");
    if (v && cJSON_IsTrue(v))
        return oai_fail(err, 400, BAD, "echo", "echo: not supported by mq");
    v = cJSON_GetObjectItemCaseSensitive(o, "suffix");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return oai_fail(err, 400, BAD, "suffix", "suffix: not supported by mq");
    v = cJSON_GetObjectItemCaseSensitive(o, "response_format");
    if (v && !cJSON_IsNull(v)) {
        const cJSON *t = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "type") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return oai_fail(err, 400, BAD, "response_format.type",
                            "response_format.type: only \"text\" is supported (no guided decoding in mq)");
    }
    return 0;
}

static int parse_stop(const cJSON *o, oai_request *r, oai_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!v || cJSON_IsNull(v))
        return 0;
    const cJSON *one = cJSON_IsString(v) ? v : NULL;
    if (!one && !cJSON_IsArray(v))
        return oai_fail(err, 400, BAD, "stop", "stop: must be a string or an array of strings");
    int n = one ? 1 : cJSON_GetArraySize(v);
    if (n > OAI_MAX_STOP)
        return oai_fail(err, 400, BAD, "stop", "stop: at most %d strings, not %d", OAI_MAX_STOP, n);
    for (int i = 0; i < n; i++) {
        const cJSON *s = one ? one : cJSON_GetArrayItem(v, i);
        char field[32];
        snprintf(field, sizeof field, one ? "stop" : "stop[%d]", i);
        if (!cJSON_IsString(s))
            return oai_fail(err, 400, BAD, field, "%s: must be a string", field);
        size_t len = strlen(s->valuestring);
        if (len == 0 || len > OAI_STOP_MAX_LEN)
            return oai_fail(err, 400, BAD, field, "%s: must be 1 to %d bytes long", field, OAI_STOP_MAX_LEN);
        r->stop[r->n_stop] = strdup(s->valuestring);
        if (!r->stop[r->n_stop])
            return oai_fail(err, 500, "server_error", NULL, "out of memory");
        r->n_stop++;
    }
    return 0;
}

static int parse_mode(const cJSON *o, oai_request *r, oai_error *err)
{
    const cJSON *mq = cJSON_GetObjectItemCaseSensitive(o, "mq");
    if (!mq || cJSON_IsNull(mq))
        return 0;
    if (!cJSON_IsObject(mq))
        return oai_fail(err, 400, BAD, "mq", "mq: must be an object such as {\"mode\": \"bf16\"}");
    char m[16];
    int rc = get_str(mq, "think_history", 15, m, sizeof m, err);
    if (rc < 0 || (rc > 0 && strcmp(m, "template") && strcmp(m, "as_generated")))
        return oai_fail(err, 400, BAD, "mq.think_history",
                        "mq.think_history: must be \"template\" or \"as_generated\"");
    if (rc > 0)
        r->think_history = !strcmp(m, "as_generated");
    rc = get_str(mq, "mode", 15, m, sizeof m, err);
    if (rc < 0)
        return oai_fail(err, 400, BAD, "mq.mode", "mq.mode: must be \"mixed\", \"bf16\", \"fp4\" or \"default\"");
    if (rc == 0)
        return 0;
    static const oai_mode modes[] = { OAI_MODE_DEFAULT, OAI_MODE_MIXED, OAI_MODE_BF16, OAI_MODE_FP4 };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(m, oai_mode_name(modes[i]))) {
            r->mode = modes[i];
            return 0;
        }
    return oai_fail(err, 400, BAD, "mq.mode", "mq.mode: \"%s\" is not \"mixed\", \"bf16\", \"fp4\" or \"default\"", m);
}

/* Sampling, length, stop, stream, model, user, mode: everything but the prompt. */
static int parse_common(const cJSON *o, oai_request *r, oai_error *err)
{
    int rc = refuse_unsupported(o, err);
    if (rc)
        return rc;
    if (get_str(o, "model", OAI_NAME_MAX, r->model, sizeof r->model, err) < 0 ||
        get_str(o, "user", OAI_NAME_MAX, r->user, sizeof r->user, err) < 0 ||
        get_bool(o, "stream", &r->stream, err) < 0)
        return -EINVAL;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(o, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return oai_fail(err, 400, BAD, "stream_options", "stream_options: must be an object");
        if (get_bool(so, "include_usage", &r->include_usage, err) < 0)
            return oai_fail(err, 400, BAD, "stream_options.include_usage",
                            "stream_options.include_usage: must be true or false");
    }
    double v;
    const char *len_keys[] = { "max_tokens", "max_completion_tokens" }; /* the newer name wins */
    for (int i = 0; i < 2; i++) {
        rc = get_int(o, len_keys[i], 1, OAI_MAX_TOKENS, &v, err);
        if (rc < 0)
            return rc;
        if (rc > 0)
            r->max_tokens = (uint32_t)v;
    }
    if ((rc = get_num(o, "temperature", 0, OAI_MAX_TEMPERATURE, &r->temperature, err)) < 0)
        return rc;
    r->has_temperature = rc;
    if ((rc = get_num(o, "top_p", 0, 1, &r->top_p, err)) < 0)
        return rc;
    if (rc > 0 && r->top_p <= 0)
        return oai_fail(err, 400, BAD, "top_p", "top_p: must be more than 0");
    r->has_top_p = rc;
    if ((rc = get_int(o, "top_k", -1, 1000000, &v, err)) < 0)
        return rc;
    r->top_k = rc > 0 && v > 0 ? (uint32_t)v : 0; /* -1 and 0 mean off (vLLM, llama.cpp) */
    if ((rc = get_num(o, "min_p", 0, 1, &r->min_p, err)) < 0)
        return rc;
    if (r->min_p >= 1)
        return oai_fail(err, 400, BAD, "min_p", "min_p: must be less than 1");
    if (get_num(o, "presence_penalty", -2, 2, &r->presence_penalty, err) < 0 ||
        get_num(o, "frequency_penalty", -2, 2, &r->frequency_penalty, err) < 0)
        return -EINVAL;
    if ((rc = get_num(o, "repetition_penalty", 0.125, 8, &r->repetition_penalty, err)) < 0)
        return rc;
    if ((rc = get_int(o, "seed", -9.2e18, 1.8e19, &v, err)) < 0)
        return rc;
    if (rc > 0) {
        r->has_seed = 1;
        r->seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    }
    if ((rc = parse_stop(o, r, err)) < 0)
        return rc;
    return parse_mode(o, r, err);
}

static cJSON *parse_object(const char *body, size_t len, oai_error *err)
{
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o) {
        oai_fail(err, 400, BAD, NULL, "the body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        oai_fail(err, 400, BAD, NULL, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

/* ---- chat ------------------------------------------------------------------------- */

/* content: a string, an array of text parts, or null -> a string item (vLLM joins text
 * parts with "\n"). */
static cJSON *message_content(const cJSON *m, const char *field, int null_ok, oai_error *err)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!c || cJSON_IsNull(c)) {
        if (!null_ok) {
            oai_fail(err, 400, BAD, field, "%s.content: missing", field);
            return NULL;
        }
        return cJSON_CreateString("");
    }
    if (cJSON_IsString(c))
        return cJSON_CreateString(c->valuestring);
    if (!cJSON_IsArray(c)) {
        oai_fail(err, 400, BAD, field, "%s.content: must be a string or an array of text parts", field);
        return NULL;
    }
    size_t total = 0;
    int i = 0;
    for (const cJSON *p = c->child; p; p = p->next, i++) {
        const cJSON *t = cJSON_IsObject(p) ? cJSON_GetObjectItemCaseSensitive(p, "type") : NULL;
        const cJSON *x = cJSON_IsObject(p) ? cJSON_GetObjectItemCaseSensitive(p, "text") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text")) {
            char f[128];
            snprintf(f, sizeof f, "%s.content[%d].type", field, i);
            oai_fail(err, 400, BAD, f, "%s: only \"text\" parts are supported", f);
            return NULL;
        }
        if (!cJSON_IsString(x)) {
            char f[128];
            snprintf(f, sizeof f, "%s.content[%d].text", field, i);
            oai_fail(err, 400, BAD, f, "%s: must be a string", f);
            return NULL;
        }
        total += strlen(x->valuestring) + 1;
    }
    char *s = malloc(total + 1), *w = s;
    if (!s)
        return NULL;
    for (const cJSON *p = c->child; p; p = p->next) {
        if (w != s)
            *w++ = '\n';
        const char *x = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t n = strlen(x);
        memcpy(w, x, n);
        w += n;
    }
    *w = 0;
    cJSON *out = cJSON_CreateString(s);
    free(s);
    return out;
}

/* An assistant message's tool_calls -> [{"function": {"name", "arguments"}}...]. */
static int message_tool_calls(const cJSON *m, const char *field, cJSON *out_msg, oai_error *err)
{
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (!tc || cJSON_IsNull(tc))
        return 0;
    if (!cJSON_IsArray(tc))
        return oai_fail(err, 400, BAD, field, "%s.tool_calls: must be an array", field);
    cJSON *arr = cJSON_AddArrayToObject(out_msg, "tool_calls");
    int i = 0;
    for (const cJSON *c = tc->child; c; c = c->next, i++) {
        char f[128];
        snprintf(f, sizeof f, "%s.tool_calls[%d]", field, i);
        const cJSON *fn = cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        const cJSON *args = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "arguments") : NULL;
        if (!cJSON_IsString(name) || !name->valuestring[0])
            return oai_fail(err, 400, BAD, f, "%s.function.name: must be a non-empty string", f);
        if (args && !cJSON_IsString(args) && !cJSON_IsObject(args))
            return oai_fail(err, 400, BAD, f, "%s.function.arguments: must be a JSON string (or an object)", f);
        cJSON *one = cJSON_CreateObject(), *ofn = cJSON_AddObjectToObject(one, "function");
        cJSON_AddItemToArray(arr, one);
        cJSON_AddStringToObject(ofn, "name", name->valuestring);
        cJSON_AddItemToObject(ofn, "arguments", args ? cJSON_Duplicate(args, 1) : cJSON_CreateString("{}"));
    }
    return 0;
}

static int parse_messages(const cJSON *o, cJSON *conv, oai_error *err)
{
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (!cJSON_IsArray(ms))
        return oai_fail(err, 400, BAD, "messages", "messages: must be an array of messages");
    int n = cJSON_GetArraySize(ms);
    if (n < 1 || n > OAI_MAX_MESSAGES)
        return oai_fail(err, 400, BAD, "messages", "messages: must hold 1 to %d messages, not %d", OAI_MAX_MESSAGES, n);
    cJSON *out = cJSON_AddArrayToObject(conv, "messages");
    int i = 0;
    for (const cJSON *m = ms->child; m; m = m->next, i++) {
        char f[48];
        snprintf(f, sizeof f, "messages[%d]", i);
        if (!cJSON_IsObject(m))
            return oai_fail(err, 400, BAD, f, "%s: must be an object", f);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        char rf[64];
        snprintf(rf, sizeof rf, "%s.role", f);
        if (!cJSON_IsString(role))
            return oai_fail(err, 400, BAD, rf, "%s: must be a string", rf);
        const char *r = role->valuestring;
        int assistant = !strcmp(r, "assistant");
        if (!strcmp(r, "developer"))
            r = "system"; /* OpenAI's newer name for the system role */
        else if (!assistant && strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "tool"))
            return oai_fail(err, 400, BAD, rf, "%s: \"%s\" is not system, developer, user, assistant or tool", rf, r);
        cJSON *om = cJSON_CreateObject();
        cJSON_AddItemToArray(out, om);
        cJSON_AddStringToObject(om, "role", r);
        cJSON *content = message_content(m, f, assistant, err);
        if (!content)
            return -EINVAL;
        cJSON_AddItemToObject(om, "content", content);
        if (assistant) {
            const cJSON *rc = cJSON_GetObjectItemCaseSensitive(m, "reasoning_content");
            if (rc && !cJSON_IsNull(rc)) {
                if (!cJSON_IsString(rc))
                    return oai_fail(err, 400, BAD, f, "%s.reasoning_content: must be a string", f);
                cJSON_AddStringToObject(om, "reasoning_content", rc->valuestring);
            }
            if (message_tool_calls(m, f, om, err))
                return -EINVAL;
        }
    }
    return 0;
}

static int tool_name_known(const cJSON *tools, const char *name)
{
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name))
            return 1;
    }
    return 0;
}

static int parse_tools(const cJSON *o, oai_request *r, cJSON *conv, oai_error *err)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(o, "tools");
    if (tools && cJSON_IsNull(tools))
        tools = NULL;
    if (tools) {
        if (!cJSON_IsArray(tools))
            return oai_fail(err, 400, BAD, "tools", "tools: must be an array");
        int n = cJSON_GetArraySize(tools);
        if (n > OAI_MAX_TOOLS)
            return oai_fail(err, 400, BAD, "tools", "tools: at most %d tools, not %d", OAI_MAX_TOOLS, n);
        int i = 0;
        for (const cJSON *t = tools->child; t; t = t->next, i++) {
            char f[48];
            snprintf(f, sizeof f, "tools[%d]", i);
            const cJSON *type = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "type") : NULL;
            const cJSON *fn = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "function") : NULL;
            const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            if (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))
                return oai_fail(err, 400, BAD, f, "%s.type: must be \"function\"", f);
            if (!cJSON_IsString(name) || !name->valuestring[0] || strlen(name->valuestring) > OAI_NAME_MAX)
                return oai_fail(err, 400, BAD, f, "%s.function.name: must be a string of 1 to %d bytes", f,
                                OAI_NAME_MAX);
        }
        if (n == 0)
            tools = NULL;
    }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(o, "tool_choice");
    const char *named = NULL;
    r->tool_choice = OAI_TOOLS_AUTO;
    if (tc && !cJSON_IsNull(tc)) {
        if (cJSON_IsString(tc)) {
            if (!strcmp(tc->valuestring, "none"))
                r->tool_choice = OAI_TOOLS_NONE;
            else if (!strcmp(tc->valuestring, "required"))
                r->tool_choice = OAI_TOOLS_REQUIRED;
            else if (strcmp(tc->valuestring, "auto"))
                return oai_fail(err, 400, BAD, "tool_choice",
                                "tool_choice: \"%s\" is not \"auto\", \"none\", \"required\" or a named function",
                                tc->valuestring);
        } else {
            const cJSON *fn = cJSON_IsObject(tc) ? cJSON_GetObjectItemCaseSensitive(tc, "function") : NULL;
            const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
            if (!cJSON_IsString(name))
                return oai_fail(
                    err, 400, BAD, "tool_choice.function.name",
                    "tool_choice: must be a string or {\"type\": \"function\", \"function\": {\"name\": ...}}");
            if (!tool_name_known(tools, name->valuestring))
                return oai_fail(err, 400, BAD, "tool_choice.function.name",
                                "tool_choice.function.name: \"%.64s\" is not one of the tools", name->valuestring);
            r->tool_choice = OAI_TOOLS_NAMED;
            named = name->valuestring;
        }
    }
    if (!tools && (r->tool_choice == OAI_TOOLS_REQUIRED || r->tool_choice == OAI_TOOLS_NAMED))
        return oai_fail(err, 400, BAD, "tool_choice", "tool_choice: asks for a tool call but no tools were given");
    r->has_tools = tools && r->tool_choice != OAI_TOOLS_NONE;
    if (r->has_tools)
        cJSON_AddItemToObject(conv, "tools", cJSON_Duplicate(tools, 1));
    /* Without guided decoding, a required call is forced by starting the reply with the
     * model's own call syntax (Qwen3 / Hermes: <tool_call>\n{"name": ..., "arguments": ...}). */
    const char *pre = "";
    char buf[OAI_NAME_MAX + 64];
    if (r->tool_choice == OAI_TOOLS_REQUIRED)
        pre = "<tool_call>\n";
    else if (r->tool_choice == OAI_TOOLS_NAMED) {
        cJSON *js = cJSON_CreateString(named);
        char *q = cJSON_PrintUnformatted(js);
        cJSON_Delete(js);
        snprintf(buf, sizeof buf, "<tool_call>\n{\"name\": %s, \"arguments\": ", q ? q : "\"\"");
        free(q);
        pre = buf;
    }
    r->prefix = strdup(pre);
    if (!r->prefix)
        return oai_fail(err, 500, "server_error", NULL, "out of memory");
    if (*pre)
        cJSON_AddStringToObject(conv, "prefix", pre);
    return 0;
}

static int finish_payload(oai_request *r, cJSON *conv, oai_error *err)
{
    r->payload = cJSON_PrintUnformatted(conv);
    if (!r->payload)
        return oai_fail(err, 500, "server_error", NULL, "out of memory");
    r->payload_len = strlen(r->payload);
    return 0;
}

int oai_parse_chat(const char *body, size_t len, oai_request *r, oai_error *err)
{
    memset(r, 0, sizeof *r);
    r->kind = OAI_CHAT;
    r->enable_thinking = -1;
    r->think_history = -1;
    cJSON *o = parse_object(body, len, err);
    if (!o)
        return -EINVAL;
    cJSON *conv = cJSON_CreateObject();
    int rc = conv ? 0 : oai_fail(err, 500, "server_error", NULL, "out of memory");
    if (!rc)
        rc = parse_common(o, r, err);
    if (!rc)
        rc = parse_messages(o, conv, err);
    if (!rc)
        rc = parse_tools(o, r, conv, err);
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(o, "chat_template_kwargs");
    if (!rc && kw && !cJSON_IsNull(kw)) {
        if (!cJSON_IsObject(kw))
            rc = oai_fail(err, 400, BAD, "chat_template_kwargs", "chat_template_kwargs: must be an object");
        else if (get_bool(kw, "enable_thinking", &r->enable_thinking, err) < 0)
            rc = oai_fail(err, 400, BAD, "chat_template_kwargs.enable_thinking",
                          "chat_template_kwargs.enable_thinking: must be true or false");
    }
    if (!rc && r->enable_thinking >= 0)
        cJSON_AddBoolToObject(conv, "enable_thinking", r->enable_thinking);
    if (!rc && r->think_history == 1)
        cJSON_AddBoolToObject(conv, "think_as_generated", 1);
    if (!rc)
        rc = finish_payload(r, conv, err);
    cJSON_Delete(conv);
    cJSON_Delete(o);
    if (rc)
        oai_request_free(r);
    return rc;
}

int oai_parse_completion(const char *body, size_t len, oai_request *r, oai_error *err)
{
    memset(r, 0, sizeof *r);
    r->kind = OAI_COMPLETION;
    r->enable_thinking = -1;
    r->think_history = -1;
    cJSON *o = parse_object(body, len, err);
    if (!o)
        return -EINVAL;
    int rc = parse_common(o, r, err);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (!rc) {
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child))
            p = p->child; /* ["text"]: one prompt, as clients often send it */
        if (!cJSON_IsString(p))
            rc = oai_fail(err, 400, BAD, "prompt", "prompt: must be a string (one prompt per request)");
        else if (!p->valuestring[0])
            rc = oai_fail(err, 400, BAD, "prompt", "prompt: must not be empty");
    }
    if (!rc) {
        r->payload = strdup(p->valuestring);
        r->prefix = strdup("");
        if (!r->payload || !r->prefix)
            rc = oai_fail(err, 500, "server_error", NULL, "out of memory");
        else
            r->payload_len = strlen(r->payload);
    }
    cJSON_Delete(o);
    if (rc)
        oai_request_free(r);
    return rc;
}

int oai_request_default_think(oai_request *r, int as_generated)
{
    if (r->kind != OAI_CHAT || r->think_history >= 0 || !as_generated)
        return 0;
    cJSON *j = cJSON_ParseWithLength(r->payload, r->payload_len);
    if (!j || !cJSON_AddBoolToObject(j, "think_as_generated", 1)) {
        cJSON_Delete(j);
        return -ENOMEM;
    }
    char *p = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!p)
        return -ENOMEM;
    free(r->payload);
    r->payload = p;
    r->payload_len = strlen(p);
    r->think_history = 1;
    return 0;
}

_Static_assert((int)OAI_MODE_MIXED == MQ_PRECISION_MIXED && (int)OAI_MODE_BF16 == MQ_PRECISION_BF16 &&
                   (int)OAI_MODE_FP4 == MQ_PRECISION_FP4 && (int)OAI_MODE_DEFAULT == MQ_PRECISION_DEFAULT,
               "oai_mode is sent as mq_precision");

void oai_request_params(const oai_request *q, uint32_t default_max_tokens, mq_params *p, mq_request_opts *o)
{
    mq_params_init(p);
    p->max_tokens = q->max_tokens ? q->max_tokens : default_max_tokens;
    p->temperature = q->has_temperature ? (float)q->temperature : 1.0f;
    p->top_p = q->has_top_p ? (float)q->top_p : 1.0f;
    p->top_k = q->top_k;
    p->min_p = (float)q->min_p;
    p->repeat_penalty = q->repetition_penalty == 1 ? 0 : (float)q->repetition_penalty;
    p->seed = q->has_seed ? q->seed : 0;
    p->flags = MQ_PARAM_NO_SPECIAL_TEXT | (p->temperature == 0 ? MQ_PARAM_GREEDY : 0);
    if (q->enable_thinking == 1)
        p->flags |= MQ_PARAM_ENABLE_THINKING;
    memset(o, 0, sizeof *o);
    o->precision = (int)q->mode;
    o->flags = MQ_REQ_WHOLE_CONTEXT;
    o->presence_penalty = (float)q->presence_penalty;
    o->frequency_penalty = (float)q->frequency_penalty;
    o->n_stop = q->n_stop;
    for (int i = 0; i < q->n_stop && i < MQ_MAX_STOP; i++)
        o->stop[i] = q->stop[i];
}
