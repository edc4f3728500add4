/* tests/unit/test_wire.c — client protocol encode/decode: round trips of every message,
 * and refusal (never a crash or an out-of-bounds read) of truncated, oversized, corrupt and
 * out-of-range messages. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tests/harness.h"
#include "ipc/wire.h"

static mq_msg sample(unsigned type)
{
    mq_msg m;
    memset(&m, 0, sizeof m);
    m.type = (uint16_t)type;
    m.seq = 0x01020304u + type;
    switch (type) {
    case MQ_MSG_HELLO:
        m.u.hello.ver_min = 1;
        m.u.hello.ver_max = 3;
        strcpy(m.u.hello.name, "test-client");
        break;
    case MQ_MSG_HELLO_OK:
        m.u.hello_ok.version = 1;
        m.u.hello_ok.channel_bytes = 3u << 20;
        m.u.hello_ok.ctx_limit = 32768;
        m.u.hello_ok.vocab_size = 151936;
        m.u.hello_ok.max_sessions = 16;
        strcpy(m.u.hello_ok.model, "mq-qwen3-80m");
        break;
    case MQ_MSG_OPEN: m.u.open.mode = MQ_WIRE_MODE_RAW; break;
    case MQ_MSG_OPENED:
    case MQ_MSG_CLOSE:
    case MQ_MSG_CLOSED: m.u.opened.session = 0x1122334455667788ull; break;
    case MQ_MSG_SUBMIT:
        m.u.submit.session = 7;
        m.u.submit.kind = MQ_WIRE_KIND_MESSAGE;
        m.u.submit.role = MQ_WIRE_ROLE_TOOL;
        m.u.submit.ring_off = 0xfffffff0u;
        m.u.submit.len = 12345;
        mq_wire_gen_default(&m.u.submit.gen);
        m.u.submit.gen.seed = 0xdeadbeefcafeull;
        m.u.submit.gen.temperature = 0.25f;
        m.u.submit.gen.flags = MQ_GEN_ENABLE_THINKING;
        break;
    case MQ_MSG_SUBMITTED:
        m.u.submitted.req = 99;
        m.u.submitted.session = 7;
        break;
    case MQ_MSG_CANCEL:
    case MQ_MSG_CANCELED: m.u.cancel.req = 42; break;
    case MQ_MSG_STATS_REPLY:
        m.u.stats.uptime_ms = 123456789;
        m.u.stats.sessions = 3;
        m.u.stats.kv_blocks_total = 4096;
        m.u.stats.decode_tokens = 1ull << 40;
        m.u.stats.prefill_tps = 1234.5f;
        break;
    case MQ_MSG_ERROR:
        m.u.error.code = MQ_ERR_TOO_LONG;
        strcpy(m.u.error.text, "prompt of 40000 tokens is over the context limit 32768");
        break;
    }
    return m;
}

/* How many strict prefixes of the n encoded bytes in buf decode (each must be refused as a
 * protocol error). A prefix longer than the header gets its payload length patched so only
 * the content is short: that exercises each field's bounds check, not just the header's. */
static int prefixes_decoded(const uint8_t *buf, int n)
{
    int bad = 0;
    for (int k = 0; k < n; k++) {
        uint8_t cut[MQ_WIRE_MAX_MSG];
        memcpy(cut, buf, (size_t)k);
        if (k >= MQ_WIRE_HDR_SIZE) {
            uint32_t pl = (uint32_t)(k - MQ_WIRE_HDR_SIZE);
            memcpy(cut + 12, &pl, 4);
        }
        mq_msg d;
        char err[256];
        bad += mq_wire_decode(cut, (size_t)k, &d, err, sizeof err) == 0;
    }
    return bad;
}

static void test_round_trip_every_type(void)
{
    for (unsigned t = 1; t < MQ_MSG_TYPE_COUNT; t++) {
        mq_msg m = sample(t), d;
        uint8_t buf[MQ_WIRE_MAX_MSG];
        int n = mq_wire_encode(&m, buf, sizeof buf);
        CHECK(n >= MQ_WIRE_HDR_SIZE, "%s: encode returned %d", mq_wire_type_name(t), n);
        if (n < 0)
            continue;
        char err[256] = "";
        int rc = mq_wire_decode(buf, (size_t)n, &d, err, sizeof err);
        CHECK(rc == 0, "%s: decode %d (%s)", mq_wire_type_name(t), rc, err);
        m.version = 1; /* encode fills the default version */
        CHECK(memcmp(&m, &d, sizeof m) == 0, "%s: decoded message differs", mq_wire_type_name(t));
        /* STATS has an empty payload; its only full prefix is itself. */
        int bad = prefixes_decoded(buf, n);
        CHECK(bad == 0, "%s: %d truncated forms decoded", mq_wire_type_name(t), bad);
    }
}

static int encode_decode(mq_msg *m, char *err, size_t errlen)
{
    uint8_t buf[MQ_WIRE_MAX_MSG];
    int n = mq_wire_encode(m, buf, sizeof buf);
    if (n < 0)
        return n;
    mq_msg d;
    return mq_wire_decode(buf, (size_t)n, &d, err, errlen);
}

static void test_header_checks(void)
{
    mq_msg m = sample(MQ_MSG_OPEN), d;
    uint8_t buf[MQ_WIRE_MAX_MSG];
    int n = mq_wire_encode(&m, buf, sizeof buf);
    char err[256];
    buf[0] ^= 1;
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EPROTO, "bad magic accepted");
    CHECK(strstr(err, "magic") != NULL, "message names the field: %s", err);
    buf[0] ^= 1;
    buf[4] = 77; /* type */
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EPROTO, "unknown type accepted");
    buf[4] = MQ_MSG_OPEN;
    buf[6] = 9; /* version 9 */
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EPROTO, "version 9 accepted");
    buf[6] = 1;
    buf[12] = 5; /* payload_len lies */
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EPROTO, "length lie accepted");
    buf[12] = 1;
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0, "restored message: %s", err);
    /* Trailing byte with a consistent header. */
    buf[n] = 0;
    buf[12] = 2;
    CHECK(mq_wire_decode(buf, (size_t)n + 1, &d, err, sizeof err) == -EPROTO, "trailing accepted");
    CHECK(mq_wire_decode(buf, 3, &d, err, sizeof err) == -EPROTO, "3 bytes accepted");
    CHECK(mq_wire_decode(buf, MQ_WIRE_MAX_MSG + 1, &d, err, sizeof err) == -EPROTO, "oversized accepted");
    /* HELLO from a future version still decodes (negotiation needs it). */
    mq_msg h = sample(MQ_MSG_HELLO);
    h.version = 7;
    n = mq_wire_encode(&h, buf, sizeof buf);
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0 && d.version == 7, "future HELLO: %s", err);
}

static void set_bad(mq_wire_gen *g, int i)
{
    switch (i) {
    case 0: g->max_tokens = 0; break;
    case 1: g->max_tokens = MQ_WIRE_MAX_TOKENS_LIMIT + 1; break;
    case 2: g->temperature = NAN; break;
    case 3: g->temperature = -1; break;
    case 4: g->top_p = 0; break;
    case 5: g->top_p = 1.5f; break;
    case 6: g->min_p = 1; break;
    case 7: g->top_k = MQ_WIRE_TOP_K_MAX + 1; break;
    case 8: g->repeat_penalty = 0.01f; break;
    default: g->flags = 1u << 30; break;
    }
}

static void test_field_bounds(void)
{
    char err[256];
    mq_msg m = sample(MQ_MSG_OPEN);
    m.u.open.mode = 2;
    CHECK(encode_decode(&m, err, sizeof err) == -EINVAL && strstr(err, "open.mode"), "mode 2: %s", err);

    static const char *const fields[] = { "max_tokens", "max_tokens", "temperature", "temperature",    "top_p",
                                          "top_p",      "min_p",      "top_k",       "repeat_penalty", "flags" };
    struct {
        const char *field;
    } cases[10];
    for (size_t i = 0; i < 10; i++)
        cases[i].field = fields[i];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        m = sample(MQ_MSG_SUBMIT);
        set_bad(&m.u.submit.gen, (int)i);
        err[0] = 0;
        int rc = encode_decode(&m, err, sizeof err);
        CHECK(rc == -EINVAL && strstr(err, cases[i].field), "case %zu (%s): rc %d err '%s'", i, cases[i].field, rc,
              err);
    }
    m = sample(MQ_MSG_SUBMIT);
    m.u.submit.kind = MQ_WIRE_KIND_TOKENS;
    m.u.submit.role = MQ_WIRE_ROLE_USER;
    m.u.submit.len = 6;
    CHECK(encode_decode(&m, err, sizeof err) == -EINVAL, "6 bytes of token ids accepted");
    m.u.submit.len = 0;
    CHECK(encode_decode(&m, err, sizeof err) == -EINVAL, "empty prompt accepted");
    m = sample(MQ_MSG_SUBMIT);
    m.u.submit.kind = MQ_WIRE_KIND_TEXT;
    CHECK(encode_decode(&m, err, sizeof err) == -EINVAL, "role tool on raw text accepted");

    /* Strings: too long refused at encode; an embedded NUL refused at decode. */
    m = sample(MQ_MSG_HELLO);
    memset(m.u.hello.name, 'a', sizeof m.u.hello.name);
    uint8_t buf[MQ_WIRE_MAX_MSG];
    CHECK(mq_wire_encode(&m, buf, sizeof buf) == -EINVAL, "over-long name encoded");
    m = sample(MQ_MSG_HELLO);
    int n = mq_wire_encode(&m, buf, sizeof buf);
    buf[n - 3] = 0;
    mq_msg d;
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EINVAL && strstr(err, "NUL"), "NUL in name: %s", err);
    /* A string length pointing past the end. */
    n = mq_wire_encode(&m, buf, sizeof buf);
    buf[MQ_WIRE_HDR_SIZE + 8] = 60; /* name length 60 > bytes present */
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EPROTO, "string overrun: %s", err);
    /* Encoding into a too-small buffer. */
    m = sample(MQ_MSG_ERROR);
    CHECK(mq_wire_encode(&m, buf, 20) == -ENOSPC, "small buffer");
}

/* Version 2: SUBMIT's tail (precision, stops, penalties, CHAT/PROMPT kinds, whole
 * context) and STATS_REPLY's state round-trip in v2 and are refused where v1 cannot carry
 * them; every strict prefix of a v2 message is refused. */
static void test_version2(void)
{
    mq_msg m = sample(MQ_MSG_SUBMIT), d;
    m.version = 2;
    m.u.submit.kind = MQ_WIRE_KIND_CHAT;
    m.u.submit.role = MQ_WIRE_ROLE_USER;
    mq_wire_gen *g = &m.u.submit.gen;
    g->precision = MQ_WIRE_PRECISION_FP4;
    g->flags |= MQ_GEN_WHOLE_CONTEXT;
    g->presence_penalty = -1.5f;
    g->frequency_penalty = 0.5f;
    g->n_stop = MQ_WIRE_MAX_STOP;
    for (int i = 0; i < MQ_WIRE_MAX_STOP; i++)
        memset(g->stop[i], 'a' + i, MQ_WIRE_STOP_MAX); /* the longest: still one datagram */
    uint8_t buf[MQ_WIRE_MAX_MSG];
    char err[256] = "";
    int n = mq_wire_encode(&m, buf, sizeof buf);
    CHECK(n > 0 && mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0, "v2 submit: %d %s", n, err);
    CHECK(memcmp(&m, &d, sizeof m) == 0, "v2 submit differs after a round trip");
    int bad = prefixes_decoded(buf, n);
    CHECK(bad == 0, "%d truncated v2 submits decoded", bad);
    /* bounds */
    mq_msg b = m;
    b.u.submit.gen.precision = 4;
    CHECK(encode_decode(&b, err, sizeof err) == -EINVAL && strstr(err, "precision"), "precision 4: %s", err);
    b = m;
    b.u.submit.gen.presence_penalty = 2.5f;
    CHECK(encode_decode(&b, err, sizeof err) == -EINVAL && strstr(err, "presence"), "penalty 2.5: %s", err);
    b = m;
    b.u.submit.gen.stop[1][0] = 0;
    CHECK(encode_decode(&b, err, sizeof err) == -EINVAL && strstr(err, "stop[1]"), "empty stop: %s", err);
    /* v1 cannot carry any of it */
    b = m;
    b.version = 1;
    CHECK(mq_wire_encode(&b, buf, sizeof buf) == -EINVAL, "v2 fields encoded as v1");
    b = sample(MQ_MSG_SUBMIT);
    b.u.submit.role = MQ_WIRE_ROLE_USER;
    b.u.submit.kind = MQ_WIRE_KIND_PROMPT;
    CHECK(mq_wire_encode(&b, buf, sizeof buf) == -EINVAL, "PROMPT kind encoded as v1");
    b.u.submit.kind = MQ_WIRE_KIND_TEXT;
    n = mq_wire_encode(&b, buf, sizeof buf);
    buf[MQ_WIRE_HDR_SIZE + 8] = MQ_WIRE_KIND_CHAT; /* a v1 message naming a v2 kind */
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EINVAL && strstr(err, "submit.kind"), "%s", err);
    /* STATS_REPLY state */
    mq_msg st = sample(MQ_MSG_STATS_REPLY);
    st.version = 2;
    st.u.stats.state = MQ_WIRE_STATE_DRAINING;
    n = mq_wire_encode(&st, buf, sizeof buf);
    CHECK(n > 0 && mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0 &&
              d.u.stats.state == MQ_WIRE_STATE_DRAINING,
          "v2 stats: %s", err);
    buf[n - 4] = 7;
    CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EINVAL, "state 7 accepted");
    st.version = 1;
    CHECK(mq_wire_encode(&st, buf, sizeof buf) == -EINVAL, "state encoded in v1");
}

/* Version 3: OPEN names a tenant (printable ASCII, no space, at most 63 bytes). */
static void test_version3(void)
{
    mq_msg m = sample(MQ_MSG_OPEN), d;
    m.version = 3;
    strcpy(m.u.open.tenant, "key-team_a@example.com");
    uint8_t buf[MQ_WIRE_MAX_MSG];
    char err[256] = "";
    int n = mq_wire_encode(&m, buf, sizeof buf);
    CHECK(n > 0 && mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0 &&
              !strcmp(d.u.open.tenant, m.u.open.tenant),
          "v3 open: %d %s", n, err);
    CHECK(memcmp(&m, &d, sizeof m) == 0, "v3 open differs after a round trip");
    int bad = prefixes_decoded(buf, n);
    CHECK(bad == 0, "%d truncated v3 opens decoded", bad);
    /* "" is the peer's own uid */
    mq_msg e = sample(MQ_MSG_OPEN);
    e.version = 3;
    n = mq_wire_encode(&e, buf, sizeof buf);
    CHECK(n > 0 && mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0 && d.u.open.tenant[0] == 0, "empty: %s",
          err);
    /* bytes that are not a name: refused by the encoder, and by the decoder naming the byte */
    const char *bads[] = { "two words", "tab\there", "nl\n", "\x7f", "caf\xc3\xa9" };
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        mq_msg b = m;
        strcpy(b.u.open.tenant, bads[i]);
        CHECK(mq_wire_encode(&b, buf, sizeof buf) == -EINVAL, "tenant %zu encoded", i);
        /* the same bytes forged on the wire */
        mq_msg ok = m;
        memset(ok.u.open.tenant, 'x', strlen(bads[i]));
        ok.u.open.tenant[strlen(bads[i])] = 0;
        n = mq_wire_encode(&ok, buf, sizeof buf);
        memcpy(buf + MQ_WIRE_HDR_SIZE + 3, bads[i], strlen(bads[i]));
        CHECK(mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == -EINVAL && strstr(err, "open.tenant: byte"),
              "forged tenant %zu: %s", i, err);
    }
    mq_msg lng = m;
    memset(lng.u.open.tenant, 'a', MQ_WIRE_TENANT_MAX);
    lng.u.open.tenant[MQ_WIRE_TENANT_MAX] = 0;
    n = mq_wire_encode(&lng, buf, sizeof buf);
    CHECK(n > 0 && mq_wire_decode(buf, (size_t)n, &d, err, sizeof err) == 0, "63 bytes: %s", err);
    /* a length of 64 announced (and carried) */
    uint8_t big[MQ_WIRE_MAX_MSG];
    memcpy(big, buf, (size_t)n);
    big[MQ_WIRE_HDR_SIZE + 1] = MQ_WIRE_TENANT_MAX + 1;
    big[n] = 'a';
    uint32_t pl = (uint32_t)(n + 1 - MQ_WIRE_HDR_SIZE);
    memcpy(big + 12, &pl, 4);
    CHECK(mq_wire_decode(big, (size_t)n + 1, &d, err, sizeof err) == -EINVAL && strstr(err, "open.tenant"),
          "64 bytes: %s", err);
    /* versions 1 and 2 cannot carry a tenant; their OPEN is one byte */
    mq_msg v2 = m;
    v2.version = 2;
    CHECK(mq_wire_encode(&v2, buf, sizeof buf) == -EINVAL, "tenant encoded as v2");
    v2.u.open.tenant[0] = 0;
    CHECK(mq_wire_encode(&v2, buf, sizeof buf) == MQ_WIRE_HDR_SIZE + 1, "v2 open is one byte");
    CHECK(!strcmp(mq_wire_err_name(MQ_ERR_NOT_TRUSTED), "MQ_ERR_NOT_TRUSTED") &&
              strstr(mq_wire_err_text(MQ_ERR_NOT_TRUSTED), "trusted_fronts"),
          "MQ_ERR_NOT_TRUSTED names");
}

/* Random corruption of valid messages: decode must return 0 or a negative errno, and the
 * decoded strings are always NUL-terminated within their fields. */
static void test_random_corruption(void)
{
    uint64_t s = 88172645463325252ull;
    int ok = 0, refused = 0;
    for (int it = 0; it < 200000; it++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        mq_msg m = sample(1 + s % (MQ_MSG_TYPE_COUNT - 1)), d;
        uint8_t buf[MQ_WIRE_MAX_MSG];
        int n = mq_wire_encode(&m, buf, sizeof buf);
        int flips = 1 + (int)(s >> 60);
        for (int f = 0; f < flips; f++)
            buf[(s >> (8 * (f % 7))) % (uint64_t)n] ^= (uint8_t)(1u << ((s >> 40) % 8));
        int rc = mq_wire_decode(buf, (size_t)n, &d, NULL, 0);
        if (rc == 0) {
            ok++;
            if (d.type == MQ_MSG_HELLO)
                CHECK(strlen(d.u.hello.name) <= MQ_WIRE_NAME_MAX, "name unterminated");
        } else {
            refused++;
            CHECK(rc == -EPROTO || rc == -EINVAL, "rc %d", rc);
        }
    }
    CHECK(ok > 0 && refused > 0, "ok %d refused %d", ok, refused);
}

static void test_names(void)
{
    CHECK(!strcmp(mq_wire_type_name(MQ_MSG_SUBMIT), "SUBMIT"), "type name");
    CHECK(!strcmp(mq_wire_type_name(999), "UNKNOWN"), "unknown type name");
    CHECK(!strcmp(mq_wire_err_name(MQ_ERR_BUSY), "MQ_ERR_BUSY"), "err name");
    CHECK(strstr(mq_wire_err_text(MQ_ERR_TOO_LONG), "too long") != NULL, "err text");
}

int main(void)
{
    RUN(test_round_trip_every_type);
    RUN(test_header_checks);
    RUN(test_field_bounds);
    RUN(test_version2);
    RUN(test_version3);
    RUN(test_random_corruption);
    RUN(test_names);
    return harness_done();
}
