/* ipc/wire.c — encoder/decoder of the client protocol (layout in wire.h). */
#include "common/errmsg.h"
#include "ipc/wire.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- a bounded little-endian writer and reader --------------------------------- */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int overflow;
} wr;

static void put(wr *w, const void *src, size_t n)
{
    if (w->overflow || n > w->cap - w->n) {
        w->overflow = 1;
        return;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}
static void put_u8(wr *w, uint8_t v)
{
    put(w, &v, 1);
}
static void put_u16(wr *w, uint16_t v)
{
    uint8_t b[2] = { (uint8_t)v, (uint8_t)(v >> 8) };
    put(w, b, 2);
}
static void put_u32(wr *w, uint32_t v)
{
    uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
    put(w, b, 4);
}
static void put_u64(wr *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}
static void put_f32(wr *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(w, v);
}
/* Strings: u16 length + bytes; the caller checked the length. */
static void put_str(wr *w, const char *s)
{
    size_t n = strnlen(s, 0xffff);
    put_u16(w, (uint16_t)n);
    put(w, s, n);
}

typedef struct {
    const uint8_t *p;
    size_t n, len;
    int short_read;
} rd;

static const uint8_t *take(rd *r, size_t n)
{
    if (r->short_read || n > r->len - r->n) {
        r->short_read = 1;
        return NULL;
    }
    const uint8_t *q = r->p + r->n;
    r->n += n;
    return q;
}
static uint8_t get_u8(rd *r)
{
    const uint8_t *q = take(r, 1);
    return q ? q[0] : 0;
}
static uint16_t get_u16(rd *r)
{
    const uint8_t *q = take(r, 2);
    return q ? (uint16_t)(q[0] | q[1] << 8) : 0;
}
static uint32_t get_u32(rd *r)
{
    const uint8_t *q = take(r, 4);
    return q ? (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24 : 0;
}
static uint64_t get_u64(rd *r)
{
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}
static float get_f32(rd *r)
{
    uint32_t v = get_u32(r);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* Reads a string of at most `max` bytes into dst[max+1]; refuses embedded NULs. */
static int get_str(rd *r, char *dst, size_t max, const char *field, char *err, size_t errlen)
{
    uint16_t n = get_u16(r);
    if (r->short_read)
        return mq_errmsg(err, errlen, -EPROTO, "%s: truncated length", field);
    if (n > max)
        return mq_errmsg(err, errlen, -EINVAL, "%s: %u bytes, at most %zu allowed", field, n, max);
    const uint8_t *q = take(r, n);
    if (!q)
        return mq_errmsg(err, errlen, -EPROTO, "%s: truncated (%u bytes announced)", field, n);
    if (memchr(q, 0, n))
        return mq_errmsg(err, errlen, -EINVAL, "%s: contains a NUL byte", field);
    memcpy(dst, q, n);
    dst[n] = 0;
    return 0;
}

/* ---- generation parameters ----------------------------------------------------- */
void mq_wire_gen_default(mq_wire_gen *g)
{
    memset(g, 0, sizeof *g);
    g->max_tokens = 256;
    g->temperature = 0.7f;
    g->top_p = 0.95f;
    g->min_p = 0.0f;
    g->top_k = 40;
    g->repeat_penalty = 0.0f;
    g->seed = 0;
    g->flags = 0;
}

int mq_wire_gen_check(const mq_wire_gen *g, unsigned version, char *err, size_t errlen)
{
    if (g->max_tokens < 1 || g->max_tokens > MQ_WIRE_MAX_TOKENS_LIMIT)
        return mq_errmsg(err, errlen, -EINVAL, "gen.max_tokens: %u not in [1, %u]", g->max_tokens,
                         MQ_WIRE_MAX_TOKENS_LIMIT);
    if (!isfinite(g->temperature) || g->temperature < 0 || g->temperature > MQ_WIRE_TEMPERATURE_MAX)
        return mq_errmsg(err, errlen, -EINVAL, "gen.temperature: %g not in [0, %g]", (double)g->temperature,
                         (double)MQ_WIRE_TEMPERATURE_MAX);
    if (!isfinite(g->top_p) || g->top_p <= 0 || g->top_p > 1)
        return mq_errmsg(err, errlen, -EINVAL, "gen.top_p: %g not in (0, 1]", (double)g->top_p);
    if (!isfinite(g->min_p) || g->min_p < 0 || g->min_p >= 1)
        return mq_errmsg(err, errlen, -EINVAL, "gen.min_p: %g not in [0, 1)", (double)g->min_p);
    if (g->top_k > MQ_WIRE_TOP_K_MAX)
        return mq_errmsg(err, errlen, -EINVAL, "gen.top_k: %u over %u", g->top_k, MQ_WIRE_TOP_K_MAX);
    if (!isfinite(g->repeat_penalty) ||
        (g->repeat_penalty != 0 && (g->repeat_penalty < 0.125f || g->repeat_penalty > 8)))
        return mq_errmsg(err, errlen, -EINVAL, "gen.repeat_penalty: %g not 0 or in [0.125, 8]",
                         (double)g->repeat_penalty);
    uint32_t known = MQ_GEN_GREEDY | MQ_GEN_ENABLE_THINKING | MQ_GEN_NO_SPECIAL_TEXT;
    if (version >= 2)
        known |= MQ_GEN_WHOLE_CONTEXT;
    if (g->flags & ~known)
        return mq_errmsg(err, errlen, -EINVAL, "gen.flags: bits 0x%x unknown in protocol version %u", g->flags & ~known,
                         version);
    if (version < 2) {
        if (g->precision || g->n_stop || g->presence_penalty != 0 || g->frequency_penalty != 0)
            return mq_errmsg(err, errlen, -EINVAL,
                             "gen: precision, stop strings and penalties need protocol version 2 (this is %u)",
                             version);
        return 0;
    }
    if (g->precision > MQ_WIRE_PRECISION_FP4)
        return mq_errmsg(err, errlen, -EINVAL, "gen.precision: %u is not 0..3", g->precision);
    if (g->n_stop > MQ_WIRE_MAX_STOP)
        return mq_errmsg(err, errlen, -EINVAL, "gen.n_stop: %u over %d", g->n_stop, MQ_WIRE_MAX_STOP);
    const float pens[2] = { g->presence_penalty, g->frequency_penalty };
    for (int i = 0; i < 2; i++)
        if (!isfinite(pens[i]) || fabsf(pens[i]) > MQ_WIRE_PENALTY_MAX)
            return mq_errmsg(err, errlen, -EINVAL, "gen.%s_penalty: %g not in [-%g, %g]", i ? "frequency" : "presence",
                             (double)pens[i], (double)MQ_WIRE_PENALTY_MAX, (double)MQ_WIRE_PENALTY_MAX);
    for (int i = 0; i < g->n_stop; i++) {
        size_t n = strnlen(g->stop[i], MQ_WIRE_STOP_MAX + 1);
        if (n == 0 || n > MQ_WIRE_STOP_MAX)
            return mq_errmsg(err, errlen, -EINVAL, "gen.stop[%d]: must be 1..%d bytes", i, MQ_WIRE_STOP_MAX);
    }
    return 0;
}

static void put_gen(wr *w, const mq_wire_gen *g)
{
    put_u32(w, g->max_tokens);
    put_f32(w, g->temperature);
    put_f32(w, g->top_p);
    put_f32(w, g->min_p);
    put_u32(w, g->top_k);
    put_f32(w, g->repeat_penalty);
    put_u64(w, g->seed);
    put_u32(w, g->flags);
}
/* The v2 tail of SUBMIT. */
static void put_gen_v2(wr *w, const mq_wire_gen *g)
{
    put_u8(w, g->precision);
    put_u8(w, g->n_stop);
    put_u16(w, 0);
    put_f32(w, g->presence_penalty);
    put_f32(w, g->frequency_penalty);
    for (int i = 0; i < g->n_stop && i < MQ_WIRE_MAX_STOP; i++)
        put_str(w, g->stop[i]);
}
static void get_gen(rd *r, mq_wire_gen *g)
{
    g->max_tokens = get_u32(r);
    g->temperature = get_f32(r);
    g->top_p = get_f32(r);
    g->min_p = get_f32(r);
    g->top_k = get_u32(r);
    g->repeat_penalty = get_f32(r);
    g->seed = get_u64(r);
    g->flags = get_u32(r);
}
static int get_gen_v2(rd *r, mq_wire_gen *g, char *err, size_t errlen)
{
    g->precision = get_u8(r);
    g->n_stop = get_u8(r);
    uint16_t reserved = get_u16(r);
    g->presence_penalty = get_f32(r);
    g->frequency_penalty = get_f32(r);
    if (r->short_read)
        return 0;
    if (reserved)
        return mq_errmsg(err, errlen, -EINVAL, "submit.reserved2: %u, must be 0", reserved);
    if (g->n_stop > MQ_WIRE_MAX_STOP)
        return mq_errmsg(err, errlen, -EINVAL, "gen.n_stop: %u over %d", g->n_stop, MQ_WIRE_MAX_STOP);
    for (int i = 0; i < g->n_stop; i++) {
        char field[32];
        snprintf(field, sizeof field, "gen.stop[%d]", i);
        int rc = get_str(r, g->stop[i], MQ_WIRE_STOP_MAX, field, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

static void put_stats(wr *w, const mq_wire_stats *s)
{
    put_u64(w, s->uptime_ms);
    put_u32(w, s->sessions);
    put_u32(w, s->requests_running);
    put_u32(w, s->requests_queued);
    put_u32(w, s->kv_blocks_used);
    put_u32(w, s->kv_blocks_total);
    put_u32(w, s->kv_block_tokens);
    put_u64(w, s->requests_done);
    put_u64(w, s->prompt_tokens);
    put_u64(w, s->cached_tokens);
    put_u64(w, s->prefill_tokens);
    put_u64(w, s->decode_tokens);
    put_f32(w, s->prefill_tps);
    put_f32(w, s->decode_tps);
}
static void put_stats_v2(wr *w, const mq_wire_stats *s)
{
    put_u8(w, s->state);
    put_u8(w, 0);
    put_u16(w, 0);
}
static void get_stats(rd *r, mq_wire_stats *s)
{
    s->uptime_ms = get_u64(r);
    s->sessions = get_u32(r);
    s->requests_running = get_u32(r);
    s->requests_queued = get_u32(r);
    s->kv_blocks_used = get_u32(r);
    s->kv_blocks_total = get_u32(r);
    s->kv_block_tokens = get_u32(r);
    s->requests_done = get_u64(r);
    s->prompt_tokens = get_u64(r);
    s->cached_tokens = get_u64(r);
    s->prefill_tokens = get_u64(r);
    s->decode_tokens = get_u64(r);
    s->prefill_tps = get_f32(r);
    s->decode_tps = get_f32(r);
}
static int get_stats_v2(rd *r, mq_wire_stats *s, char *err, size_t errlen)
{
    s->state = get_u8(r);
    uint8_t r1 = get_u8(r);
    uint16_t r2 = get_u16(r);
    if (!r->short_read && (r1 || r2))
        return mq_errmsg(err, errlen, -EINVAL, "stats.reserved: must be 0");
    if (!r->short_read && s->state != MQ_WIRE_STATE_READY && s->state != MQ_WIRE_STATE_DRAINING)
        return mq_errmsg(err, errlen, -EINVAL, "stats.state: %u is neither ready (1) nor draining (2)", s->state);
    return 0;
}

int mq_wire_tenant_check(const char *name, char *err, size_t errlen)
{
    size_t n = strnlen(name, MQ_WIRE_TENANT_MAX + 1);
    if (n > MQ_WIRE_TENANT_MAX)
        return mq_errmsg(err, errlen, -EINVAL, "open.tenant: longer than %d bytes", MQ_WIRE_TENANT_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] > 0x7e)
            return mq_errmsg(err, errlen, -EINVAL,
                             "open.tenant: byte %zu is 0x%02x; a tenant name is printable ASCII without spaces", i,
                             (unsigned char)name[i]);
    return 0;
}

/* ---- encode -------------------------------------------------------------------- */
int mq_wire_encode(const mq_msg *m, uint8_t *buf, size_t cap)
{
    if (m->type < 1 || m->type >= MQ_MSG_TYPE_COUNT)
        return -EINVAL;
    wr w = { buf, 0, cap, 0 };
    put_u32(&w, MQ_WIRE_MAGIC);
    put_u16(&w, m->type);
    unsigned version = m->version ? m->version : 1;
    put_u16(&w, (uint16_t)version);
    put_u32(&w, m->seq);
    put_u32(&w, 0); /* payload length, patched below */
    switch (m->type) {
    case MQ_MSG_HELLO:
        if (strnlen(m->u.hello.name, MQ_WIRE_NAME_MAX + 1) > MQ_WIRE_NAME_MAX)
            return -EINVAL;
        put_u16(&w, m->u.hello.ver_min);
        put_u16(&w, m->u.hello.ver_max);
        put_u32(&w, m->u.hello.flags);
        put_str(&w, m->u.hello.name);
        break;
    case MQ_MSG_HELLO_OK:
        if (strnlen(m->u.hello_ok.model, MQ_WIRE_NAME_MAX + 1) > MQ_WIRE_NAME_MAX)
            return -EINVAL;
        put_u16(&w, m->u.hello_ok.version);
        put_u16(&w, 0);
        put_u32(&w, m->u.hello_ok.channel_bytes);
        put_u32(&w, m->u.hello_ok.ctx_limit);
        put_u32(&w, m->u.hello_ok.vocab_size);
        put_u32(&w, m->u.hello_ok.max_sessions);
        put_str(&w, m->u.hello_ok.model);
        break;
    case MQ_MSG_OPEN:
        put_u8(&w, m->u.open.mode);
        if (version >= 3) {
            if (mq_wire_tenant_check(m->u.open.tenant, NULL, 0))
                return -EINVAL;
            put_str(&w, m->u.open.tenant);
        } else if (m->u.open.tenant[0])
            return -EINVAL; /* a tenant needs protocol version 3 */
        break;
    case MQ_MSG_OPENED:
    case MQ_MSG_CLOSE:
    case MQ_MSG_CLOSED: put_u64(&w, m->u.opened.session); break;
    case MQ_MSG_SUBMIT:
        put_u64(&w, m->u.submit.session);
        put_u8(&w, m->u.submit.kind);
        put_u8(&w, m->u.submit.role);
        put_u16(&w, 0);
        put_u32(&w, m->u.submit.ring_off);
        put_u32(&w, m->u.submit.len);
        if (version < 2 && (m->u.submit.kind > MQ_WIRE_KIND_MESSAGE || m->u.submit.gen.precision ||
                            m->u.submit.gen.n_stop || m->u.submit.gen.presence_penalty != 0 ||
                            m->u.submit.gen.frequency_penalty != 0 || (m->u.submit.gen.flags & MQ_GEN_WHOLE_CONTEXT)))
            return -EINVAL; /* v2 fields a v1 message cannot carry */
        if (m->u.submit.gen.n_stop > MQ_WIRE_MAX_STOP)
            return -EINVAL;
        put_gen(&w, &m->u.submit.gen);
        if (version >= 2)
            put_gen_v2(&w, &m->u.submit.gen);
        break;
    case MQ_MSG_SUBMITTED:
        put_u64(&w, m->u.submitted.req);
        put_u64(&w, m->u.submitted.session);
        break;
    case MQ_MSG_CANCEL:
    case MQ_MSG_CANCELED: put_u64(&w, m->u.cancel.req); break;
    case MQ_MSG_STATS: break;
    case MQ_MSG_STATS_REPLY:
        put_stats(&w, &m->u.stats);
        if (version >= 2)
            put_stats_v2(&w, &m->u.stats);
        else if (m->u.stats.state)
            return -EINVAL;
        break;
    case MQ_MSG_ERROR:
        if (strnlen(m->u.error.text, MQ_WIRE_TEXT_MAX + 1) > MQ_WIRE_TEXT_MAX)
            return -EINVAL;
        put_u32(&w, m->u.error.code);
        put_str(&w, m->u.error.text);
        break;
    }
    if (w.overflow || w.n > MQ_WIRE_MAX_MSG)
        return -ENOSPC;
    uint32_t plen = (uint32_t)(w.n - MQ_WIRE_HDR_SIZE);
    wr h = { buf + 12, 0, 4, 0 };
    put_u32(&h, plen);
    return (int)w.n;
}

/* ---- decode -------------------------------------------------------------------- */
int mq_wire_decode(const uint8_t *buf, size_t len, mq_msg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (len < MQ_WIRE_HDR_SIZE)
        return mq_errmsg(err, errlen, -EPROTO, "message of %zu bytes is shorter than the header", len);
    if (len > MQ_WIRE_MAX_MSG)
        return mq_errmsg(err, errlen, -EPROTO, "message of %zu bytes is over %d", len, MQ_WIRE_MAX_MSG);
    rd r = { buf, 0, len, 0 };
    uint32_t magic = get_u32(&r);
    if (magic != MQ_WIRE_MAGIC)
        return mq_errmsg(err, errlen, -EPROTO, "header.magic: 0x%08x is not MQW1", magic);
    m->type = get_u16(&r);
    m->version = get_u16(&r);
    m->seq = get_u32(&r);
    uint32_t plen = get_u32(&r);
    if (m->type < 1 || m->type >= MQ_MSG_TYPE_COUNT)
        return mq_errmsg(err, errlen, -EPROTO, "header.type: unknown type %u", m->type);
    /* HELLO is understood in every version (that is how versions are negotiated). */
    if (m->version == 0)
        return mq_errmsg(err, errlen, -EPROTO, "header.version: 0 is not a version");
    if (m->type != MQ_MSG_HELLO && (m->version < MQ_WIRE_VERSION_MIN || m->version > MQ_WIRE_VERSION_MAX))
        return mq_errmsg(err, errlen, -EPROTO, "header.version: %u not supported", m->version);
    if (plen != len - MQ_WIRE_HDR_SIZE)
        return mq_errmsg(err, errlen, -EPROTO, "header.payload_len: %u but the datagram carries %zu payload bytes",
                         plen, len - MQ_WIRE_HDR_SIZE);
    int rc = 0;
    switch (m->type) {
    case MQ_MSG_HELLO:
        m->u.hello.ver_min = get_u16(&r);
        m->u.hello.ver_max = get_u16(&r);
        m->u.hello.flags = get_u32(&r);
        rc = get_str(&r, m->u.hello.name, MQ_WIRE_NAME_MAX, "hello.name", err, errlen);
        if (!rc && m->u.hello.ver_min > m->u.hello.ver_max)
            rc = mq_errmsg(err, errlen, -EINVAL, "hello.ver_min %u > ver_max %u", m->u.hello.ver_min,
                           m->u.hello.ver_max);
        if (!rc && m->u.hello.flags)
            rc = mq_errmsg(err, errlen, -EINVAL, "hello.flags: 0x%x, must be 0", m->u.hello.flags);
        break;
    case MQ_MSG_HELLO_OK:
        m->u.hello_ok.version = get_u16(&r);
        (void)get_u16(&r);
        m->u.hello_ok.channel_bytes = get_u32(&r);
        m->u.hello_ok.ctx_limit = get_u32(&r);
        m->u.hello_ok.vocab_size = get_u32(&r);
        m->u.hello_ok.max_sessions = get_u32(&r);
        rc = get_str(&r, m->u.hello_ok.model, MQ_WIRE_NAME_MAX, "hello_ok.model", err, errlen);
        break;
    case MQ_MSG_OPEN:
        m->u.open.mode = get_u8(&r);
        if (!r.short_read && m->u.open.mode > MQ_WIRE_MODE_RAW)
            rc = mq_errmsg(err, errlen, -EINVAL, "open.mode: %u is neither chat (0) nor raw (1)", m->u.open.mode);
        if (!rc && m->version >= 3) {
            rc = get_str(&r, m->u.open.tenant, MQ_WIRE_TENANT_MAX, "open.tenant", err, errlen);
            if (!rc)
                rc = mq_wire_tenant_check(m->u.open.tenant, err, errlen);
        }
        break;
    case MQ_MSG_OPENED:
    case MQ_MSG_CLOSE:
    case MQ_MSG_CLOSED: m->u.opened.session = get_u64(&r); break;
    case MQ_MSG_SUBMIT: {
        m->u.submit.session = get_u64(&r);
        m->u.submit.kind = get_u8(&r);
        m->u.submit.role = get_u8(&r);
        uint16_t reserved = get_u16(&r);
        m->u.submit.ring_off = get_u32(&r);
        m->u.submit.len = get_u32(&r);
        get_gen(&r, &m->u.submit.gen);
        if (m->version >= 2)
            rc = get_gen_v2(&r, &m->u.submit.gen, err, errlen);
        if (r.short_read || rc)
            break;
        unsigned max_kind = m->version >= 2 ? MQ_WIRE_KIND_PROMPT : MQ_WIRE_KIND_MESSAGE;
        if (reserved)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.reserved: %u, must be 0", reserved);
        else if (m->u.submit.kind > max_kind)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.kind: unknown kind %u in protocol version %u",
                           m->u.submit.kind, m->version);
        else if (m->u.submit.role > MQ_WIRE_ROLE_TOOL)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.role: unknown role %u", m->u.submit.role);
        else if (m->u.submit.kind != MQ_WIRE_KIND_MESSAGE && m->u.submit.role != MQ_WIRE_ROLE_USER)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.role: only chat messages have a role");
        else if (m->u.submit.len == 0)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.len: empty prompt");
        else if (m->u.submit.kind == MQ_WIRE_KIND_TOKENS && m->u.submit.len % 4)
            rc = mq_errmsg(err, errlen, -EINVAL, "submit.len: %u bytes of token ids is not a multiple of 4",
                           m->u.submit.len);
        else
            rc = mq_wire_gen_check(&m->u.submit.gen, m->version, err, errlen);
        break;
    }
    case MQ_MSG_SUBMITTED:
        m->u.submitted.req = get_u64(&r);
        m->u.submitted.session = get_u64(&r);
        break;
    case MQ_MSG_CANCEL:
    case MQ_MSG_CANCELED: m->u.cancel.req = get_u64(&r); break;
    case MQ_MSG_STATS: break;
    case MQ_MSG_STATS_REPLY:
        get_stats(&r, &m->u.stats);
        if (m->version >= 2)
            rc = get_stats_v2(&r, &m->u.stats, err, errlen);
        break;
    case MQ_MSG_ERROR:
        m->u.error.code = get_u32(&r);
        rc = get_str(&r, m->u.error.text, MQ_WIRE_TEXT_MAX, "error.text", err, errlen);
        break;
    }
    if (rc)
        return rc;
    if (r.short_read)
        return mq_errmsg(err, errlen, -EPROTO, "%s: payload of %u bytes is too short", mq_wire_type_name(m->type),
                         plen);
    if (r.n != len)
        return mq_errmsg(err, errlen, -EPROTO, "%s: %zu trailing bytes", mq_wire_type_name(m->type), len - r.n);
    return 0;
}

/* ---- names --------------------------------------------------------------------- */
const char *mq_wire_type_name(unsigned type)
{
    static const char *const names[MQ_MSG_TYPE_COUNT] = {
        [MQ_MSG_HELLO] = "HELLO",       [MQ_MSG_HELLO_OK] = "HELLO_OK",   [MQ_MSG_OPEN] = "OPEN",
        [MQ_MSG_OPENED] = "OPENED",     [MQ_MSG_CLOSE] = "CLOSE",         [MQ_MSG_CLOSED] = "CLOSED",
        [MQ_MSG_SUBMIT] = "SUBMIT",     [MQ_MSG_SUBMITTED] = "SUBMITTED", [MQ_MSG_CANCEL] = "CANCEL",
        [MQ_MSG_CANCELED] = "CANCELED", [MQ_MSG_STATS] = "STATS",         [MQ_MSG_STATS_REPLY] = "STATS_REPLY",
        [MQ_MSG_ERROR] = "ERROR",
    };
    return type < MQ_MSG_TYPE_COUNT && names[type] ? names[type] : "UNKNOWN";
}

static const struct {
    unsigned code;
    const char *name, *text;
} err_table[] = {
    { MQ_ERR_PROTOCOL, "MQ_ERR_PROTOCOL", "malformed protocol message" },
    { MQ_ERR_VERSION, "MQ_ERR_VERSION", "no common protocol version" },
    { MQ_ERR_DENIED, "MQ_ERR_DENIED", "permission denied by mqd (user/group not allowed)" },
    { MQ_ERR_NO_SESSION, "MQ_ERR_NO_SESSION", "no such session on this connection" },
    { MQ_ERR_NO_REQUEST, "MQ_ERR_NO_REQUEST", "no such request on this connection" },
    { MQ_ERR_BUSY, "MQ_ERR_BUSY", "a request is already running on this session" },
    { MQ_ERR_TOO_LONG, "MQ_ERR_TOO_LONG", "prompt too long (context limit or ring size)" },
    { MQ_ERR_LIMIT, "MQ_ERR_LIMIT", "limit reached (sessions or queue)" },
    { MQ_ERR_BAD_PROMPT, "MQ_ERR_BAD_PROMPT", "invalid prompt" },
    { MQ_ERR_DRAINING, "MQ_ERR_DRAINING", "mqd is draining or shutting down" },
    { MQ_ERR_INTERNAL, "MQ_ERR_INTERNAL", "internal error in mqd" },
    { MQ_ERR_KV_FULL, "MQ_ERR_KV_FULL", "KV store full" },
    { MQ_ERR_NOT_TRUSTED, "MQ_ERR_NOT_TRUSTED",
      "this client may not open sessions for other tenants (trusted_fronts)" },
};

const char *mq_wire_err_name(unsigned code)
{
    for (size_t i = 0; i < sizeof err_table / sizeof err_table[0]; i++)
        if (err_table[i].code == code)
            return err_table[i].name;
    return "MQ_ERR_UNKNOWN";
}

const char *mq_wire_err_text(unsigned code)
{
    for (size_t i = 0; i < sizeof err_table / sizeof err_table[0]; i++)
        if (err_table[i].code == code)
            return err_table[i].text;
    return "unknown mq error";
}
