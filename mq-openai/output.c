/* mq-openai/output.c — Qwen3 / Hermes output -> reasoning, content and tool calls
 * (see output.h). */
#define _GNU_SOURCE
#include "mq-openai/output.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THINK_OPEN  "<think>"
#define THINK_CLOSE "</think>"
#define CALL_OPEN   "<tool_call>"
#define CALL_CLOSE  "</tool_call>"
#define JSON_DEPTH  64 /* nesting a tool call's arguments may have */

enum { S_START = 0, S_THINK, S_CONTENT, S_CALL };

/* ---- buffers --------------------------------------------------------------------------- */

int oai_buf_add(oai_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->len + n + 1)
            c *= 2;
        char *p = realloc(b->p, c);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = c;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

static void buf_drop(oai_buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = 0;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/* ---- a JSON scanner (spans, not values: cJSON checks the values) ----------------------- */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && is_ws(s[i]))
        i++;
    return i;
}

static size_t scan_value(const char *s, size_t n, size_t i, int depth);

static size_t scan_string(const char *s, size_t n, size_t i)
{
    if (i >= n || s[i] != '"')
        return 0;
    for (i++; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (++i >= n)
                return 0;
            if (s[i] == 'u') {
                for (int k = 1; k <= 4; k++)
                    if (i + k >= n || !strchr("0123456789abcdefABCDEF", s[i + k]) || !s[i + k])
                        return 0;
                i += 4;
            } else if (!strchr("\"\\/bfnrt", s[i]) || !s[i])
                return 0;
        }
    }
    return 0;
}

static size_t scan_digits(const char *s, size_t n, size_t i)
{
    size_t j = i;
    while (j < n && s[j] >= '0' && s[j] <= '9')
        j++;
    return j;
}

static size_t scan_number(const char *s, size_t n, size_t i)
{
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return 0;
    if (s[i] == '0')
        i++;
    else if (s[i] >= '1' && s[i] <= '9')
        i = scan_digits(s, n, i);
    else
        return 0;
    if (i < n && s[i] == '.') {
        size_t j = scan_digits(s, n, i + 1);
        if (j == i + 1)
            return 0;
        i = j;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t j = scan_digits(s, n, i);
        if (j == i)
            return 0;
        i = j;
    }
    return i;
}

/* Object or array at s[i]; returns the index after it, 0 if malformed. */
static size_t scan_container(const char *s, size_t n, size_t i, int depth)
{
    char close = s[i] == '{' ? '}' : ']';
    int obj = close == '}';
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == close)
        return i + 1;
    for (;;) {
        if (obj) {
            size_t k = scan_string(s, n, i);
            if (!k)
                return 0;
            i = skip_ws(s, n, k);
            if (i >= n || s[i] != ':')
                return 0;
            i = skip_ws(s, n, i + 1);
        }
        size_t v = scan_value(s, n, i, depth + 1);
        if (!v)
            return 0;
        i = skip_ws(s, n, v);
        if (i >= n)
            return 0;
        if (s[i] == close)
            return i + 1;
        if (s[i] != ',')
            return 0;
        i = skip_ws(s, n, i + 1);
    }
}

static size_t scan_value(const char *s, size_t n, size_t i, int depth)
{
    if (i >= n || depth > JSON_DEPTH)
        return 0;
    switch (s[i]) {
    case '{':
    case '[': return scan_container(s, n, i, depth);
    case '"': return scan_string(s, n, i);
    case 't': return n - i >= 4 && !memcmp(s + i, "true", 4) ? i + 4 : 0;
    case 'f': return n - i >= 5 && !memcmp(s + i, "false", 5) ? i + 5 : 0;
    case 'n': return n - i >= 4 && !memcmp(s + i, "null", 4) ? i + 4 : 0;
    default: return scan_number(s, n, i);
    }
}

size_t oai_json_value_len(const char *s, size_t n)
{
    return scan_value(s, n, 0, 0);
}

/* ---- events ---------------------------------------------------------------------------- */

static void emit(oai_event_cb cb, void *ctx, oai_ev_type t, int index, const char *id, const char *s, size_t n)
{
    oai_event ev = { .type = t, .index = index, .id = id, .text = s, .len = n };
    cb(ctx, &ev);
}

/* Content, with whitespace held back until something else follows (see output.h). */
static void content(oai_output *o, const char *s, size_t n, oai_event_cb cb, void *ctx)
{
    size_t end = n;
    while (end > 0 && is_ws(s[end - 1]))
        end--;
    if (end == 0) {
        o->oom |= oai_buf_add(&o->ws, s, n) != 0;
        return;
    }
    /* leading whitespace is dropped right after </think> (template layout) and before
     * the first content that follows a tool call */
    size_t start = 0;
    if (o->drop_ws || (o->n_calls > 0 && !o->content_seen)) {
        while (is_ws(s[start]))
            start++;
    } else if (o->ws.len)
        emit(cb, ctx, OAI_EV_CONTENT, 0, NULL, o->ws.p, o->ws.len);
    o->ws.len = 0;
    o->drop_ws = 0;
    emit(cb, ctx, OAI_EV_CONTENT, 0, NULL, s + start, end - start);
    o->content_seen = 1;
    o->oom |= oai_buf_add(&o->ws, s + end, n - end) != 0;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of tag. */
static size_t partial_tag(const char *s, size_t n, const char *tag)
{
    size_t t = strlen(tag);
    for (size_t k = t - 1 < n ? t - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, tag, k))
            return k;
    return 0;
}

/* Whether s[0, n) is one JSON object with nothing but white space around it; [*a, *b)
 * is then the object. A tool call's body and a string "arguments" must both be one. */
static int one_object(const char *s, size_t n, size_t *a, size_t *b)
{
    *a = skip_ws(s, n, 0);
    *b = n;
    while (*b > *a && is_ws(s[*b - 1]))
        (*b)--;
    return *a < *b && s[*a] == '{' && scan_value(s, *b, *a, 0) == *b;
}

/* A tool call body -> CALL + ARGS events; 0, or -1 when it is not a call. */
static int call(oai_output *o, const char *s, size_t n, oai_event_cb cb, void *ctx)
{
    size_t a, b, x, y;
    if (o->n_calls >= OAI_OUT_MAX_CALLS || !one_object(s, n, &a, &b))
        return -1;
    cJSON *j = cJSON_ParseWithLength(s + a, b - a);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(j, "arguments");
    if (!cJSON_IsString(name) || !name->valuestring[0] || (args && !cJSON_IsObject(args) && !cJSON_IsString(args))) {
        cJSON_Delete(j);
        return -1;
    }
    /* the exact text of "arguments": walk the object's members */
    const char *at = "{}";
    size_t alen = 2;
    size_t i = skip_ws(s, b, a + 1);
    while (args && cJSON_IsObject(args) && i < b && s[i] == '"') {
        size_t k = scan_string(s, b, i);
        int hit = k - i == 11 && !memcmp(s + i, "\"arguments\"", 11);
        i = skip_ws(s, b, skip_ws(s, b, k) + 1); /* past ':' */
        size_t v = scan_value(s, b, i, 1);
        if (hit) {
            at = s + i;
            alen = v - i;
            break;
        }
        i = skip_ws(s, b, skip_ws(s, b, v) + 1); /* past ',' */
    }
    if (cJSON_IsString(args)) {
        at = args->valuestring;
        alen = strlen(at);
        /* clients parse "arguments" as a JSON object (as a direct "arguments" must be one):
         * a string that is not one, white space around it aside, makes no call */
        if (!one_object(at, alen, &x, &y)) {
            cJSON_Delete(j);
            return -1;
        }
    }
    int idx = o->n_calls++;
    char id[48];
    snprintf(id, sizeof id, "call_%llu_%d", (unsigned long long)o->req, idx);
    emit(cb, ctx, OAI_EV_CALL, idx, id, name->valuestring, strlen(name->valuestring));
    /* arguments in fragments, one per top-level member, as streaming servers send them */
    size_t p = 0;
    if (cJSON_IsObject(args) && alen > 2) {
        size_t q = skip_ws(at, alen, 1);
        while (q < alen && at[q] == '"') {
            size_t v = skip_ws(at, alen, skip_ws(at, alen, scan_string(at, alen, q)) + 1);
            v = skip_ws(at, alen, scan_value(at, alen, v, 1));
            if (v < alen && at[v] == ',')
                v = skip_ws(at, alen, v + 1);
            if (v >= alen - 1)
                break;
            emit(cb, ctx, OAI_EV_ARGS, idx, NULL, at + p, v - p);
            p = q = v;
        }
    }
    emit(cb, ctx, OAI_EV_ARGS, idx, NULL, at + p, alen - p);
    cJSON_Delete(j);
    return 0;
}

/* Runs the state machine over o->hold as far as it can decide. */
static void step(oai_output *o, int final, oai_event_cb cb, void *ctx)
{
    oai_buf *h = &o->hold;
    for (;;) {
        if (o->state == S_START) {
            size_t i = skip_ws(h->p, h->len, 0);
            size_t rest = h->len - i, t = strlen(THINK_OPEN);
            if (!o->parse_reasoning || (rest && memcmp(h->p + i, THINK_OPEN, rest < t ? rest : t)) ||
                (final && rest < t)) {
                o->state = S_CONTENT;
                continue;
            }
            if (rest < t)
                return;
            buf_drop(h, i + t);
            o->state = S_THINK;
            continue;
        }
        if (o->state == S_THINK) {
            char *e = memmem(h->p, h->len, THINK_CLOSE, strlen(THINK_CLOSE));
            size_t upto = e ? (size_t)(e - h->p) : h->len - (final ? 0 : partial_tag(h->p, h->len, THINK_CLOSE));
            if (upto)
                emit(cb, ctx, OAI_EV_REASONING, 0, NULL, h->p, upto);
            buf_drop(h, e ? upto + strlen(THINK_CLOSE) : upto);
            if (!e)
                return;
            o->state = S_CONTENT;
            o->drop_ws = 1;
            continue;
        }
        if (o->state == S_CONTENT) {
            char *e = o->parse_tools ? memmem(h->p, h->len, CALL_OPEN, strlen(CALL_OPEN)) : NULL;
            size_t keep = e || final || !o->parse_tools ? 0 : partial_tag(h->p, h->len, CALL_OPEN);
            size_t upto = e ? (size_t)(e - h->p) : h->len - keep;
            if (upto)
                content(o, h->p, upto, cb, ctx);
            buf_drop(h, e ? upto + strlen(CALL_OPEN) : upto);
            if (!e)
                return;
            o->state = S_CALL;
            continue;
        }
        /* S_CALL: the body is held until its closing tag */
        char *e = memmem(h->p, h->len, CALL_CLOSE, strlen(CALL_CLOSE));
        if (!e) {
            if (!final)
                return;
            oai_buf t = { 0 };
            o->oom |= oai_buf_add(&t, CALL_OPEN, strlen(CALL_OPEN)) || oai_buf_add(&t, h->p, h->len);
            if (t.p)
                content(o, t.p, t.len, cb, ctx);
            free(t.p);
            h->len = 0;
            o->state = S_CONTENT;
            return;
        }
        size_t n = (size_t)(e - h->p);
        if (call(o, h->p, n, cb, ctx)) {
            oai_buf t = { 0 };
            o->oom |= oai_buf_add(&t, CALL_OPEN, strlen(CALL_OPEN)) || oai_buf_add(&t, h->p, n + strlen(CALL_CLOSE));
            if (t.p)
                content(o, t.p, t.len, cb, ctx);
            free(t.p);
        }
        buf_drop(h, n + strlen(CALL_CLOSE));
        o->state = S_CONTENT;
    }
}

void oai_output_init(oai_output *o, int parse_tools, int parse_reasoning, uint64_t req)
{
    memset(o, 0, sizeof *o);
    o->parse_tools = parse_tools;
    o->parse_reasoning = parse_reasoning;
    o->req = req;
    o->state = S_START;
}

int oai_output_feed(oai_output *o, const char *text, size_t len, oai_event_cb cb, void *ctx)
{
    if (oai_buf_add(&o->hold, text, len)) {
        o->oom = 1;
        return -ENOMEM;
    }
    step(o, 0, cb, ctx);
    return o->oom ? -ENOMEM : 0;
}

int oai_output_finish(oai_output *o, oai_event_cb cb, void *ctx)
{
    if (!o->hold.p)
        oai_buf_add(&o->hold, "", 0);
    step(o, 1, cb, ctx);
    if (o->n_calls == 0 && o->ws.len && !o->drop_ws)
        emit(cb, ctx, OAI_EV_CONTENT, 0, NULL, o->ws.p, o->ws.len);
    o->ws.len = 0;
    return o->n_calls;
}

void oai_output_free(oai_output *o)
{
    free(o->hold.p);
    free(o->ws.p);
    memset(o, 0, sizeof *o);
}

/* ---- the joined message ----------------------------------------------------------------- */

void oai_message_add(void *msg, const oai_event *ev)
{
    oai_message *m = msg;
    switch (ev->type) {
    case OAI_EV_REASONING:
        m->has_reasoning = 1;
        m->oom |= oai_buf_add(&m->reasoning, ev->text, ev->len) != 0;
        break;
    case OAI_EV_CONTENT: m->oom |= oai_buf_add(&m->content, ev->text, ev->len) != 0; break;
    case OAI_EV_CALL:
        if (ev->index != m->n_calls || m->n_calls >= OAI_OUT_MAX_CALLS)
            return;
        oai_call *c = &m->calls[m->n_calls++];
        snprintf(c->id, sizeof c->id, "%s", ev->id);
        c->name = strndup(ev->text, ev->len);
        m->oom |= !c->name || oai_buf_add(&c->args, "", 0);
        break;
    case OAI_EV_ARGS:
        if (ev->index >= 0 && ev->index < m->n_calls)
            m->oom |= oai_buf_add(&m->calls[ev->index].args, ev->text, ev->len) != 0;
        break;
    }
}

void oai_message_free(oai_message *m)
{
    free(m->content.p);
    free(m->reasoning.p);
    for (int i = 0; i < m->n_calls; i++) {
        free(m->calls[i].name);
        free(m->calls[i].args.p);
    }
    memset(m, 0, sizeof *m);
}
