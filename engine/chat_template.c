/* engine/chat_template.c — Qwen3 / ChatML / Llama-3 chat templates in C.
 * Each render function follows its Jinja source statement by statement; the comments
 * quote the Jinja they implement. */
#define _GNU_SOURCE
#include "common/errmsg.h"
#include "engine/chat_template.h"
#include "engine/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string buffer ---------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
    mq_tok_span *data; /* ranges of p that came from the caller's data, ascending */
    size_t n_data, cap_data;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n + 1)
            c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Caller's data (message text, names, tool definitions, arguments): appended like
 * template text, but its range is recorded so that the tokenizer does not turn special
 * token strings in it into special tokens (no role injection through content). */
static void sb_data(sbuf *b, const char *s, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->n_data && b->data[b->n_data - 1].off + b->data[b->n_data - 1].len == b->len) {
        b->data[b->n_data - 1].len += n;
    } else {
        if (b->n_data == b->cap_data) {
            size_t c = b->cap_data ? 2 * b->cap_data : 16;
            mq_tok_span *q = realloc(b->data, c * sizeof *q);
            if (!q) {
                b->oom = 1;
                return;
            }
            b->data = q;
            b->cap_data = c;
        }
        b->data[b->n_data++] = (mq_tok_span){ b->len, n };
    }
    sb_add(b, s, n);
}

static void sb_free(sbuf *b)
{
    free(b->p);
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- Python json.dumps ----------------------------------------------------------------- */

static void dump_string(sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        case '\b': sb_add(b, "\\b", 2); break;
        case '\f': sb_add(b, "\\f", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_add(b, esc, 6);
            } else
                sb_add(b, (const char *)p, 1); /* ensure_ascii=False: UTF-8 as is */
        }
    }
    sb_add(b, "\"", 1);
}

/* Python's float repr: shortest round-tripping digits; exponent form when the decimal
 * exponent is < -4 or >= 16; "inf"/"nan" become Infinity/NaN as json.dumps writes them. */
static void dump_number(sbuf *b, double v)
{
    char buf[64];
    if (isnan(v)) {
        sb_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        sb_puts(b, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0) { /* an integer in the source JSON */
        snprintf(buf, sizeof buf, "%lld", (long long)v);
        sb_puts(b, buf);
        return;
    }
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    /* buf = [-]d.ddde[+-]XX */
    char digits[32];
    int nd = 0, neg = buf[0] == '-';
    const char *q = buf + neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    sbuf o = { 0 };
    if (neg)
        sb_add(&o, "-", 1);
    if (exp10 < -4 || exp10 >= 16) {
        sb_add(&o, digits, 1);
        if (nd > 1) {
            sb_add(&o, ".", 1);
            sb_add(&o, digits + 1, (size_t)nd - 1);
        }
        snprintf(buf, sizeof buf, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        sb_puts(&o, buf);
    } else if (exp10 < 0) {
        sb_add(&o, "0.", 2);
        for (int i = 0; i < -exp10 - 1; i++)
            sb_add(&o, "0", 1);
        sb_add(&o, digits, (size_t)nd);
    } else {
        int ip = exp10 + 1; /* digits before the point */
        for (int i = 0; i < ip; i++)
            sb_add(&o, i < nd ? &digits[i] : "0", 1);
        sb_add(&o, ".", 1);
        if (nd > ip)
            sb_add(&o, digits + ip, (size_t)(nd - ip));
        else
            sb_add(&o, "0", 1);
    }
    if (o.oom) {
        b->oom = 1;
        free(o.p);
        return;
    }
    sb_add(b, o.p, o.len);
    free(o.p);
}

static void dump_value(sbuf *b, const cJSON *v, int depth)
{
    if (depth > 200) {
        b->oom = 1;
        return;
    } /* cJSON caps nesting lower; belt and braces */
    if (cJSON_IsString(v))
        dump_string(b, v->valuestring);
    else if (cJSON_IsNumber(v))
        dump_number(b, v->valuedouble);
    else if (cJSON_IsTrue(v))
        sb_puts(b, "true");
    else if (cJSON_IsFalse(v))
        sb_puts(b, "false");
    else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        int obj = cJSON_IsObject(v);
        sb_add(b, obj ? "{" : "[", 1);
        const cJSON *it;
        int first = 1;
        cJSON_ArrayForEach(it, v)
        {
            if (!first)
                sb_add(b, ", ", 2);
            first = 0;
            if (obj) {
                dump_string(b, it->string ? it->string : "");
                sb_add(b, ": ", 2);
            }
            dump_value(b, it, depth + 1);
        }
        sb_add(b, obj ? "}" : "]", 1);
    } else
        sb_puts(b, "null");
}

char *mq_chat_json_dumps(const cJSON *v)
{
    sbuf b = { 0 };
    dump_value(&b, v, 0);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (!b.p)
        return strdup("");
    return b.p;
}

/* ---- message access ---------------------------------------------------------------------- */

static const char *role_of(const cJSON *m)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    return cJSON_IsString(r) ? r->valuestring : "";
}

/* Content as text into a fresh sbuf (strings as is; lists: concatenated "text" parts). */
static int content_of(const cJSON *m, sbuf *out)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsString(c))
        sb_puts(out, c->valuestring);
    else if (cJSON_IsArray(c)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, c)
        {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "text");
            if (cJSON_IsString(it))
                sb_puts(out, it->valuestring);
            else if (cJSON_IsString(t))
                sb_puts(out, t->valuestring);
            else
                return -EINVAL;
        }
    } else if (c && !cJSON_IsNull(c))
        return -EINVAL;
    sb_add(out, "", 0); /* non-NULL p */
    return out->oom ? -ENOMEM : 0;
}

static int check_messages(const cJSON *messages, char *err, size_t errlen)
{
    if (!cJSON_IsArray(messages))
        return mq_errmsg(err, errlen, -EINVAL, "chat: messages must be a JSON array");
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        if (!cJSON_IsObject(m))
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d] is not an object", i);
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "role")))
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d] has no string \"role\"", i);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (c && !cJSON_IsString(c) && !cJSON_IsNull(c) && !cJSON_IsArray(c))
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d].content must be a string, null or a list", i);
        if (cJSON_IsArray(c)) {
            const cJSON *it;
            cJSON_ArrayForEach(
                it, c) if (!cJSON_IsString(it) &&
                           !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(
                               it, "text"))) return mq_errmsg(err, errlen, -EINVAL,
                                                              "chat: messages[%d].content has a non-text part", i);
        }
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (tc && !cJSON_IsNull(tc) && !cJSON_IsArray(tc))
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d].tool_calls must be a list", i);
        i++;
    }
    return 0;
}

static int starts_with(const char *s, size_t n, const char *pre)
{
    size_t k = strlen(pre);
    return n >= k && !memcmp(s, pre, k);
}
static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && !memcmp(s + n - k, suf, k);
}

/* ---- Qwen3 ------------------------------------------------------------------------------ */

/* Python's s.lstrip('\n') / rstrip('\n') on [*a, *b) */
static void lstrip_nl(const char **a, const char *b)
{
    while (*a < b && **a == '\n')
        (*a)++;
}
static void rstrip_nl(const char *a, const char **b)
{
    while (*b > a && (*b)[-1] == '\n')
        (*b)--;
}

static const char *memmem_last(const char *h, size_t hn, const char *n)
{
    size_t k = strlen(n);
    if (hn < k)
        return NULL;
    for (size_t i = hn - k + 1; i-- > 0;)
        if (!memcmp(h + i, n, k))
            return h + i;
    return NULL;
}

static int qwen3_tool_calls(sbuf *o, const cJSON *m, int content_nonempty)
{
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (!cJSON_IsArray(calls) || cJSON_GetArraySize(calls) == 0)
        return 0; /* {%- if message.tool_calls %} */
    int first = 1;
    const cJSON *tc;
    cJSON_ArrayForEach(tc, calls)
    {
        /* {%- if (loop.first and content) or (not loop.first) %}{{- '\n' }} */
        if ((first && content_nonempty) || !first)
            sb_puts(o, "\n");
        first = 0;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        const cJSON *call = fn && cJSON_IsObject(fn) && fn->child ? fn : tc; /* {%- if tool_call.function %} */
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(call, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(call, "arguments");
        sb_puts(o, "<tool_call>\n{\"name\": \"");
        if (cJSON_IsString(name))
            sb_data(o, name->valuestring, strlen(name->valuestring));
        sb_puts(o, "\", \"arguments\": ");
        if (cJSON_IsString(args))
            sb_data(o, args->valuestring, strlen(args->valuestring)); /* already JSON text */
        else if (args) {
            char *j = mq_chat_json_dumps(args);
            if (!j)
                return -ENOMEM;
            sb_data(o, j, strlen(j));
            free(j);
        }
        sb_puts(o, "}\n</tool_call>");
    }
    return 0;
}

/* Renders messages[from..n) of `all` (an array) as the Qwen3 loop does. last_query is
 * ns.last_query_index over the whole conversation (index into `all`); prev_role is the
 * role before `from` ("" if none) for the tool-grouping rule. */
static int qwen3_loop(sbuf *o, const cJSON *all, int from, int last_query, const char *prev_role,
                      const mq_chat_opts *opts, char *err, size_t errlen)
{
    int n = cJSON_GetArraySize(all);
    const cJSON *m = cJSON_GetArrayItem(all, from);
    for (int i = from; i < n; i++, m = m->next) {
        const char *role = role_of(m);
        sbuf c = { 0 };
        if (content_of(m, &c)) {
            free(c.p);
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d].content", i);
        }
        int is_last = i == n - 1;
        if (!strcmp(role, "user") || (!strcmp(role, "system") && i != 0)) {
            sb_puts(o, "<|im_start|>");
            sb_puts(o, role);
            sb_puts(o, "\n");
            sb_data(o, c.p, c.len);
            sb_puts(o, "<|im_end|>\n");
        } else if (!strcmp(role, "assistant")) {
            const char *cb = c.p, *ce = c.p + c.len; /* content */
            const char *rb = "", *re = rb;           /* reasoning_content */
            const cJSON *rc = cJSON_GetObjectItemCaseSensitive(m, "reasoning_content");
            if (cJSON_IsString(rc)) {
                rb = rc->valuestring;
                re = rb + strlen(rb);
            } else if (memmem(c.p, c.len, "</think>", 8)) {
                /* content = content.split('</think>')[-1].lstrip('\n') */
                const char *last = memmem_last(c.p, c.len, "</think>");
                cb = last + 8;
                lstrip_nl(&cb, ce);
                /* reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
                const char *first = memmem(c.p, c.len, "</think>", 8);
                rb = c.p;
                re = first;
                rstrip_nl(rb, &re);
                const char *open = memmem_last(rb, (size_t)(re - rb), "<think>");
                if (open)
                    rb = open + 7;
                lstrip_nl(&rb, re);
            }
            if (i > last_query && (is_last || re > rb)) {
                /* '<|im_start|>' + role + '\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') */
                const char *sb = rb, *se = re;
                lstrip_nl(&sb, se);
                rstrip_nl(sb, &se);
                const char *cl = cb;
                lstrip_nl(&cl, ce);
                sb_puts(o, "<|im_start|>assistant\n<think>\n");
                sb_data(o, sb, (size_t)(se - sb));
                sb_puts(o, "\n</think>\n\n");
                sb_data(o, cl, (size_t)(ce - cl));
            } else if (opts->think_as_generated && opts->enable_thinking == 0 && re == rb) {
                /* not the template: the turn as the model generated it, after the
                 * generation prompt's empty think block (mq_chat_opts) */
                sb_puts(o, "<|im_start|>assistant\n<think>\n\n</think>\n\n");
                sb_data(o, cb, (size_t)(ce - cb));
            } else {
                sb_puts(o, "<|im_start|>assistant\n");
                sb_data(o, cb, (size_t)(ce - cb));
            }
            if (qwen3_tool_calls(o, m, ce > cb)) {
                free(c.p);
                return -ENOMEM;
            }
            sb_puts(o, "<|im_end|>\n");
        } else if (!strcmp(role, "tool")) {
            const char *before = i == from ? prev_role : role_of(m->prev);
            if (i == 0 || strcmp(before, "tool"))
                sb_puts(o, "<|im_start|>user");
            sb_puts(o, "\n<tool_response>\n");
            sb_data(o, c.p, c.len);
            sb_puts(o, "\n</tool_response>");
            if (is_last || strcmp(role_of(m->next), "tool"))
                sb_puts(o, "<|im_end|>\n");
        }
        /* other roles render nothing, as in the template */
        free(c.p);
    }
    return o->oom ? -ENOMEM : 0;
}

/* ns.last_query_index: the last user message that is not a wrapped tool response, scanning
 * back only while every later user message was a tool response (multi_step_tool). */
static int qwen3_last_query(const cJSON *msgs, int dflt)
{
    int n = cJSON_GetArraySize(msgs);
    for (int i = n - 1; i >= 0; i--) {
        const cJSON *m = cJSON_GetArrayItem(msgs, i);
        if (strcmp(role_of(m), "user"))
            continue;
        sbuf c = { 0 };
        if (content_of(m, &c)) {
            free(c.p);
            continue;
        }
        int wrapped = starts_with(c.p, c.len, "<tool_response>") && ends_with(c.p, c.len, "</tool_response>");
        free(c.p);
        if (!wrapped)
            return i;
    }
    return dflt;
}

static void qwen3_gen_prompt(sbuf *o, const mq_chat_opts *opts)
{
    if (!opts->add_generation_prompt)
        return;
    sb_puts(o, "<|im_start|>assistant\n");
    if (opts->enable_thinking == 0)
        sb_puts(o, "<think>\n\n</think>\n\n");
}

static int render_qwen3(sbuf *o, const cJSON *msgs, const cJSON *tools, const mq_chat_opts *opts, char *err,
                        size_t errlen)
{
    int n = cJSON_GetArraySize(msgs);
    const cJSON *m0 = cJSON_GetArrayItem(msgs, 0);
    int first_system = m0 && !strcmp(role_of(m0), "system");
    sbuf c0 = { 0 };
    if (m0 && content_of(m0, &c0)) {
        free(c0.p);
        return mq_errmsg(err, errlen, -EINVAL, "chat: messages[0].content");
    }
    if (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) { /* {%- if tools %} */
        sb_puts(o, "<|im_start|>system\n");
        if (first_system) {
            sb_data(o, c0.p, c0.len);
            sb_puts(o, "\n\n");
        }
        sb_puts(o, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                   "You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
        const cJSON *t;
        cJSON_ArrayForEach(t, tools)
        {
            char *j = mq_chat_json_dumps(t);
            if (!j) {
                free(c0.p);
                return -ENOMEM;
            }
            sb_puts(o, "\n");
            sb_data(o, j, strlen(j));
            free(j);
        }
        sb_puts(o, "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                   "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                   "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n");
    } else if (first_system) {
        sb_puts(o, "<|im_start|>system\n");
        sb_data(o, c0.p, c0.len);
        sb_puts(o, "<|im_end|>\n");
    }
    free(c0.p);
    int rc = qwen3_loop(o, msgs, 0, qwen3_last_query(msgs, n - 1), "", opts, err, errlen);
    if (rc)
        return rc;
    qwen3_gen_prompt(o, opts);
    return 0;
}

/* ---- ChatML and Llama-3 -------------------------------------------------------------------- */

/* Python str.isspace() code points, for Jinja's trim (= str.strip()). */
static int py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

static uint32_t cp_at(const unsigned char *s, size_t k)
{
    if (k == 1)
        return s[0];
    if (k == 2)
        return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    if (k == 3)
        return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

static void py_strip(const char **a, const char **b)
{
    for (;;) { /* front */
        const unsigned char *s = (const unsigned char *)*a;
        if (*a >= *b)
            return;
        size_t k = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 1;
        if ((size_t)(*b - *a) < k || !py_space(cp_at(s, k)))
            break;
        *a += k;
    }
    for (;;) { /* back: step to the start of the last character */
        if (*b <= *a)
            return;
        const char *p = *b - 1;
        while (p > *a && ((unsigned char)*p & 0xC0) == 0x80)
            p--;
        if (!py_space(cp_at((const unsigned char *)p, (size_t)(*b - p))))
            break;
        *b = p;
    }
}

/* ChatML and Llama-3 frame every message the same way and differ only in the strings:
 * open + role + mid + content + close, with Llama-3 trimming the content. */
typedef struct frame {
    const char *open, *mid, *close;
    const char *gen_prompt; /* add_generation_prompt */
    int trim;               /* message['content'] | trim */
} frame;

static const frame chatml = { "<|im_start|>", "\n", "<|im_end|>\n", "<|im_start|>assistant\n", 0 };
static const frame llama3 = { "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>",
                              "<|start_header_id|>assistant<|end_header_id|>\n\n", 1 };

static int render_framed(sbuf *o, const frame *f, const cJSON *msgs, const mq_chat_opts *opts, char *err, size_t errlen)
{
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        sbuf c = { 0 };
        if (content_of(m, &c)) {
            free(c.p);
            return mq_errmsg(err, errlen, -EINVAL, "chat: messages[%d].content", i);
        }
        const char *a = c.p, *b = c.p + c.len;
        if (f->trim)
            py_strip(&a, &b);
        sb_puts(o, f->open);
        sb_data(o, role_of(m), strlen(role_of(m)));
        sb_puts(o, f->mid);
        sb_data(o, a, (size_t)(b - a));
        sb_puts(o, f->close);
        free(c.p);
        i++;
    }
    if (opts->add_generation_prompt)
        sb_puts(o, f->gen_prompt);
    return o->oom ? -ENOMEM : 0;
}

/* ---- public --------------------------------------------------------------------------------- */

int mq_chat_from_name(const char *name, mq_chat_kind *kind)
{
    if (!name)
        return -ENOTSUP;
    if (!strcmp(name, "qwen3"))
        *kind = MQ_CHAT_QWEN3;
    else if (!strcmp(name, "chatml"))
        *kind = MQ_CHAT_CHATML;
    else if (!strcmp(name, "llama3"))
        *kind = MQ_CHAT_LLAMA3;
    else
        return -ENOTSUP;
    return 0;
}

const char *mq_chat_name(mq_chat_kind kind)
{
    switch (kind) {
    case MQ_CHAT_QWEN3: return "qwen3";
    case MQ_CHAT_CHATML: return "chatml";
    case MQ_CHAT_LLAMA3: return "llama3";
    }
    return "?";
}

int mq_chat_detect(const char *t, mq_chat_kind *kind, char *err, size_t errlen)
{
    if (!t)
        return mq_errmsg(err, errlen, -ENOENT,
                         "chat template: tokenizer_config.json has no chat_template; "
                         "choose one by name (qwen3, chatml, llama3)");
    int im = strstr(t, "<|im_start|>") != NULL;
    /* Qwen3: ChatML with reasoning_content/<think> handling and <tool_response> grouping */
    if (im && strstr(t, "reasoning_content") && strstr(t, "</think>") && strstr(t, "<tool_response>") &&
        strstr(t, "last_query_index")) {
        *kind = MQ_CHAT_QWEN3;
        return 0;
    }
    /* plain ChatML: no tools, no thinking, no default system prompt injected */
    if (im && !strstr(t, "tool") && !strstr(t, "think") && !strstr(t, "loop.first")) {
        *kind = MQ_CHAT_CHATML;
        return 0;
    }
    if (strstr(t, "<|start_header_id|>") && strstr(t, "<|eot_id|>") && !strstr(t, "tool") &&
        !strstr(t, "Knowledge Cutoff")) {
        *kind = MQ_CHAT_LLAMA3;
        return 0;
    }
    return mq_errmsg(err, errlen, -ENOTSUP,
                     "chat template not recognised (starts \"%.60s\"); "
                     "choose one by name: qwen3, chatml, llama3",
                     t);
}

static int finish(sbuf *o, int rc, char **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    if ((!rc && o->oom) || rc == -ENOMEM)
        rc = mq_errmsg(err, errlen, -ENOMEM, "chat: out of memory");
    if (rc) {
        free(o->p);
        *out = NULL;
        *len = 0;
        return rc;
    }
    if (!o->p)
        sb_add(o, "", 0);
    if (o->oom) {
        free(o->p);
        return -ENOMEM;
    }
    *out = o->p;
    *len = o->len;
    return 0;
}

static int render_full(sbuf *o, mq_chat_kind kind, const cJSON *messages, const cJSON *tools, const mq_chat_opts *opts,
                       char *err, size_t errlen)
{
    int rc = check_messages(messages, err, errlen);
    if (rc)
        return rc;
    if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools))
        return mq_errmsg(err, errlen, -EINVAL, "chat: tools must be a list");
    switch (kind) {
    case MQ_CHAT_QWEN3:
        if (cJSON_GetArraySize(messages) == 0)
            return mq_errmsg(err, errlen, -EINVAL, "chat: qwen3 needs at least one message");
        rc = render_qwen3(o, messages, tools, opts, err, errlen);
        break;
    case MQ_CHAT_CHATML: rc = render_framed(o, &chatml, messages, opts, err, errlen); break;
    case MQ_CHAT_LLAMA3:
        if (opts->bos_token)
            sb_puts(o, opts->bos_token);
        rc = render_framed(o, &llama3, messages, opts, err, errlen);
        break;
    default: rc = mq_errmsg(err, errlen, -ENOTSUP, "chat: unknown template kind %d", (int)kind);
    }
    return rc;
}

static int render_append(sbuf *o, mq_chat_kind kind, const cJSON *new_messages, const mq_chat_opts *opts,
                         int end_token_in_session, char *err, size_t errlen)
{
    int rc = check_messages(new_messages, err, errlen);
    if (rc)
        return rc;
    switch (kind) {
    case MQ_CHAT_QWEN3:
        /* the assistant turn ends "<|im_end|>\n"; generation stopped at <|im_end|> */
        sb_puts(o, end_token_in_session ? "\n" : "<|im_end|>\n");
        /* index 1.. of a virtual conversation whose message 0 is the previous assistant
         * reply: a system message here is not "loop.first", tool grouping sees the
         * assistant before, and last_query_index is the last new user query (or before
         * the new messages, when they hold none) */
        if (cJSON_GetArraySize(new_messages) > 0) {
            cJSON *all = cJSON_CreateArray();
            cJSON *prev = cJSON_CreateObject();
            if (!all || !prev || !cJSON_AddStringToObject(prev, "role", "assistant")) {
                cJSON_Delete(all);
                cJSON_Delete(prev);
                return mq_errmsg(err, errlen, -ENOMEM, "chat: out of memory");
            }
            cJSON_AddItemToArray(all, prev);
            const cJSON *m;
            int ok = 1;
            cJSON_ArrayForEach(m, new_messages)
            {
                cJSON *ref = cJSON_CreateObjectReference(m->child);
                if (!ref) {
                    ok = 0;
                    break;
                }
                cJSON_AddItemToArray(all, ref);
            }
            if (!ok)
                rc = mq_errmsg(err, errlen, -ENOMEM, "chat: out of memory");
            else
                rc = qwen3_loop(o, all, 1, qwen3_last_query(all, 0), "assistant", opts, err, errlen);
            cJSON_Delete(all);
        }
        if (!rc)
            qwen3_gen_prompt(o, opts);
        break;
    case MQ_CHAT_CHATML:
        sb_puts(o, end_token_in_session ? "\n" : "<|im_end|>\n");
        rc = render_framed(o, &chatml, new_messages, opts, err, errlen);
        break;
    case MQ_CHAT_LLAMA3:
        if (!end_token_in_session)
            sb_puts(o, "<|eot_id|>");
        rc = render_framed(o, &llama3, new_messages, opts, err, errlen);
        break;
    default: rc = mq_errmsg(err, errlen, -ENOTSUP, "chat: unknown template kind %d", (int)kind);
    }
    return rc;
}

/* The reply's forced start (mq_chat_opts.reply_prefix) is the caller's text. */
static int render(sbuf *o, mq_chat_kind kind, const cJSON *messages, const cJSON *tools, const mq_chat_opts *opts,
                  int append, int end_token_in_session, char *err, size_t errlen)
{
    int rc = append ? render_append(o, kind, messages, opts, end_token_in_session, err, errlen)
                    : render_full(o, kind, messages, tools, opts, err, errlen);
    if (!rc && opts->reply_prefix && opts->add_generation_prompt)
        sb_data(o, opts->reply_prefix, strlen(opts->reply_prefix));
    return rc;
}

int mq_chat_render(mq_chat_kind kind, const cJSON *messages, const cJSON *tools, const mq_chat_opts *opts, char **out,
                   size_t *len, char *err, size_t errlen)
{
    sbuf o = { 0 };
    int rc = render(&o, kind, messages, tools, opts, 0, 0, err, errlen);
    free(o.data);
    return finish(&o, rc, out, len, err, errlen);
}

int mq_chat_render_append(mq_chat_kind kind, const cJSON *new_messages, const mq_chat_opts *opts,
                          int end_token_in_session, char **out, size_t *len, char *err, size_t errlen)
{
    sbuf o = { 0 };
    int rc = render(&o, kind, new_messages, NULL, opts, 1, end_token_in_session, err, errlen);
    free(o.data);
    return finish(&o, rc, out, len, err, errlen);
}

int mq_chat_encode(const mq_tokenizer *tok, mq_chat_kind kind, const cJSON *messages, const cJSON *tools,
                   const mq_chat_opts *opts, int append, int end_token_in_session, int32_t **ids, size_t *n, char *err,
                   size_t errlen)
{
    *ids = NULL;
    *n = 0;
    sbuf o = { 0 };
    int rc = render(&o, kind, messages, tools, opts, append, end_token_in_session, err, errlen);
    if (!rc && o.oom)
        rc = mq_errmsg(err, errlen, -ENOMEM, "chat: out of memory");
    if (!rc) {
        char terr[MQ_TOK_ERR_LEN];
        rc = mq_tok_encode_spans(tok, o.p ? o.p : "", o.len, 0, o.data, o.n_data, ids, n, terr, sizeof terr);
        if (rc)
            mq_errmsg(err, errlen, rc, "chat: tokenizing the rendered prompt: %s", terr);
    }
    sb_free(&o);
    return rc;
}
