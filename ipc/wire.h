/* ipc/wire.h — the client protocol of mqd: messages on the client socket.
 *
 * Owns: the byte layout of every message a libmq client and mqd exchange on the client
 * socket, and a pure-C encoder/decoder for them (no I/O, no allocation, no globals), so
 * the decoder can be fuzzed on its own (tests/fuzz/fuzz_wire.c).
 *
 * Transport: a SOCK_SEQPACKET Unix socket. One datagram = one message, at most
 * MQ_WIRE_MAX_MSG bytes. Prompts and generated tokens never cross the socket: they travel
 * through the per-client shared-memory channel (ipc/channel.h); a SUBMIT message only
 * names the bytes the client wrote into its prompt ring.
 *
 * Every message: a 16-byte header, then a payload whose layout is fixed by (type,
 * version), all integers little-endian:
 *     u32 magic ("MQW1"), u16 type, u16 version, u32 seq, u32 payload_len
 * `seq` is chosen by the client; the daemon's reply (or ERROR) carries the same seq.
 * Strings are u16 length + bytes (no NUL on the wire, no NUL inside, bounded by the
 * field's capacity). Floats are IEEE-754 binary32 bit patterns.
 *
 * Conversation:
 *   client                               mqd
 *   HELLO{ver_min,ver_max,name}      ->  (no descriptor: mqd refuses one)
 *                                    <-  HELLO_OK{version,...} + [channel memfd, wake-up fd]
 *                                        (SCM_RIGHTS; the wake-up fd is the read end of a
 *                                        pipe whose write end only mqd holds)
 *   OPEN{mode[,tenant]}              ->  <- OPENED{session}
 *   SUBMIT{session,kind,role,off,len,gen} -> <- SUBMITTED{req}   (events: token ring)
 *   CANCEL{req}                      ->  <- CANCELED{req}
 *   STATS{}                          ->  <- STATS_REPLY{...}
 *   CLOSE{session}                   ->  <- CLOSED{session}
 * Any request may instead be answered by ERROR{code,text}. A message that does not decode
 * is answered by ERROR and the connection is closed; nobody else is affected.
 *
 * Versioning: a client offers [ver_min, ver_max]; mqd picks the highest version it also
 * speaks, or answers ERROR(MQ_ERR_VERSION); every later message carries that version in
 * its header and has that version's layout.
 *   1: the first protocol.
 *   2: SUBMIT grows a tail (precision, stop strings, presence/frequency penalty), the
 *      kinds CHAT (a whole OpenAI-style conversation, rendered and tokenized by mqd) and
 *      PROMPT (text whose special tokens are parsed) and the flag MQ_GEN_WHOLE_CONTEXT;
 *      STATS_REPLY grows mqd's state (ready / draining) for health checks.
 *   3: OPEN grows a tenant name (u16 length + 0..MQ_WIRE_TENANT_MAX bytes of printable
 *      ASCII, no space): a front that serves many users (mq-openai, one tenant per API
 *      key) opens the session for one of them. "" = the peer's own uid. mqd takes a name
 *      only from a peer in its trusted_fronts (else ERROR(MQ_ERR_NOT_TRUSTED)); the
 *      session's prefix cache and limits are then that tenant's.
 * A v2 field that a v1 message cannot carry makes the encoder fail (-EINVAL).
 *
 * Thread rules: all functions are re-entrant.
 */
#ifndef MQ_IPC_WIRE_H
#define MQ_IPC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_WIRE_MAGIC       0x3157514du /* "MQW1" read as a little-endian u32 */
#define MQ_WIRE_VERSION_MIN 1
#define MQ_WIRE_VERSION_MAX 3
#define MQ_WIRE_HDR_SIZE    16
#define MQ_WIRE_MAX_MSG     2048 /* bytes of one datagram, header included */

#define MQ_WIRE_NAME_MAX   63  /* client or model name, bytes */
#define MQ_WIRE_TEXT_MAX   511 /* error text, bytes */
#define MQ_WIRE_TENANT_MAX 63  /* tenant name, bytes (v3) */

/* Limits of generation parameters: the decoder refuses anything outside. */
#define MQ_WIRE_MAX_TOKENS_LIMIT (1u << 20)
#define MQ_WIRE_TEMPERATURE_MAX  100.0f
#define MQ_WIRE_TOP_K_MAX        1000000u
#define MQ_WIRE_PENALTY_MAX      2.0f /* |presence_penalty|, |frequency_penalty| (OpenAI's range) */
#define MQ_WIRE_MAX_STOP         4    /* stop strings per request */
#define MQ_WIRE_STOP_MAX         255  /* bytes of one stop string */

enum mq_msg_type {
    MQ_MSG_HELLO = 1,
    MQ_MSG_HELLO_OK = 2,
    MQ_MSG_OPEN = 3,
    MQ_MSG_OPENED = 4,
    MQ_MSG_CLOSE = 5,
    MQ_MSG_CLOSED = 6,
    MQ_MSG_SUBMIT = 7,
    MQ_MSG_SUBMITTED = 8,
    MQ_MSG_CANCEL = 9,
    MQ_MSG_CANCELED = 10,
    MQ_MSG_STATS = 11,
    MQ_MSG_STATS_REPLY = 12,
    MQ_MSG_ERROR = 13,
    MQ_MSG_TYPE_COUNT
};

/* Session modes. */
enum mq_wire_mode { MQ_WIRE_MODE_CHAT = 0, MQ_WIRE_MODE_RAW = 1 };

/* What the prompt-ring bytes of a SUBMIT are. */
enum mq_wire_kind {
    MQ_WIRE_KIND_TEXT = 0,    /* raw UTF-8 text, tokenized by mqd (raw sessions) */
    MQ_WIRE_KIND_TOKENS = 1,  /* little-endian int32 token ids (len multiple of 4) */
    MQ_WIRE_KIND_MESSAGE = 2, /* one chat message, UTF-8 (chat sessions), with `role` */
    /* v2, raw sessions; the prompt is always the session's whole context: */
    MQ_WIRE_KIND_CHAT = 3,   /* JSON {"messages", "tools", "enable_thinking", "prefix"} */
    MQ_WIRE_KIND_PROMPT = 4, /* UTF-8 text in which special tokens are parsed */
};

/* Precision of one request (v2); DEFAULT = the daemon's configured mode. */
enum mq_wire_precision {
    MQ_WIRE_PRECISION_DEFAULT = 0,
    MQ_WIRE_PRECISION_MIXED = 1,
    MQ_WIRE_PRECISION_BF16 = 2,
    MQ_WIRE_PRECISION_FP4 = 3,
};

/* mqd's state in STATS_REPLY (v2). */
enum mq_wire_state { MQ_WIRE_STATE_READY = 1, MQ_WIRE_STATE_DRAINING = 2 };

enum mq_wire_role { MQ_WIRE_ROLE_USER = 0, MQ_WIRE_ROLE_SYSTEM = 1, MQ_WIRE_ROLE_TOOL = 2 };

/* Error codes (positive on the wire; libmq returns them negated as -MQ_ERR_x). Values
 * start at 1000 so they never collide with errno values. */
enum mq_wire_err {
    MQ_ERR_PROTOCOL = 1000,    /* malformed message; the connection is closed */
    MQ_ERR_VERSION = 1001,     /* no common protocol version */
    MQ_ERR_DENIED = 1002,      /* peer credentials not allowed */
    MQ_ERR_NO_SESSION = 1003,  /* unknown session id (or not this connection's) */
    MQ_ERR_NO_REQUEST = 1004,  /* unknown request id */
    MQ_ERR_BUSY = 1005,        /* a request is already running on this session */
    MQ_ERR_TOO_LONG = 1006,    /* prompt over the context limit or the ring */
    MQ_ERR_LIMIT = 1007,       /* too many sessions / queue full */
    MQ_ERR_BAD_PROMPT = 1008,  /* prompt bytes invalid (UTF-8, token ids, mode mismatch) */
    MQ_ERR_DRAINING = 1009,    /* mqd is shutting down or draining */
    MQ_ERR_INTERNAL = 1010,    /* anything else inside mqd; see the text */
    MQ_ERR_KV_FULL = 1011,     /* KV store exhausted */
    MQ_ERR_NOT_TRUSTED = 1012, /* v3: a tenant named by a peer not in trusted_fronts */
};

/* Flags of mq_wire_gen.flags. */
enum {
    MQ_GEN_GREEDY = 1u << 0,          /* argmax, ignore sampling fields */
    MQ_GEN_ENABLE_THINKING = 1u << 1, /* chat template's enable_thinking */
    MQ_GEN_NO_SPECIAL_TEXT = 1u << 2, /* do not stream text of special tokens */
    /* v2: the prompt is the session's whole context, not an addition to it: mqd keeps the
     * longest common prefix of the session's tokens and the new ones and computes the
     * rest (stateless clients resending a conversation reuse its KV token by token). */
    MQ_GEN_WHOLE_CONTEXT = 1u << 3,
};

typedef struct mq_wire_gen {
    uint32_t max_tokens;  /* 1..MQ_WIRE_MAX_TOKENS_LIMIT */
    float temperature;    /* 0 (= greedy) .. MQ_WIRE_TEMPERATURE_MAX */
    float top_p;          /* (0, 1] */
    float min_p;          /* [0, 1) */
    uint32_t top_k;       /* 0 = off .. MQ_WIRE_TOP_K_MAX */
    float repeat_penalty; /* 0 = off, else [1/8 .. 8] */
    uint64_t seed;
    uint32_t flags; /* MQ_GEN_* */
    /* v2 */
    uint8_t precision;                                 /* mq_wire_precision */
    uint8_t n_stop;                                    /* 0..MQ_WIRE_MAX_STOP */
    float presence_penalty;                            /* [-MQ_WIRE_PENALTY_MAX, MQ_WIRE_PENALTY_MAX] */
    float frequency_penalty;                           /* same */
    char stop[MQ_WIRE_MAX_STOP][MQ_WIRE_STOP_MAX + 1]; /* 1..MQ_WIRE_STOP_MAX bytes each */
} mq_wire_gen;

typedef struct mq_wire_stats {
    uint64_t uptime_ms;
    uint32_t sessions;
    uint32_t requests_running;
    uint32_t requests_queued;
    uint32_t kv_blocks_used;
    uint32_t kv_blocks_total;
    uint32_t kv_block_tokens;
    uint64_t requests_done;
    uint64_t prompt_tokens;  /* over all requests */
    uint64_t cached_tokens;  /* of which reused from the KV store */
    uint64_t prefill_tokens; /* of which computed */
    uint64_t decode_tokens;
    float prefill_tps; /* recent tokens/s of the prefill pool */
    float decode_tps;
    uint8_t state; /* v2: mq_wire_state */
} mq_wire_stats;

typedef struct mq_msg {
    uint16_t type;
    uint16_t version;
    uint32_t seq;
    union {
        struct {
            uint16_t ver_min, ver_max;
            uint32_t flags; /* reserved, 0 */
            char name[MQ_WIRE_NAME_MAX + 1];
        } hello;
        struct {
            uint16_t version;
            uint32_t channel_bytes; /* size of the memfd */
            uint32_t ctx_limit;     /* tokens per session */
            uint32_t vocab_size;
            uint32_t max_sessions; /* per connection */
            char model[MQ_WIRE_NAME_MAX + 1];
        } hello_ok;
        struct {
            uint8_t mode;
            char tenant[MQ_WIRE_TENANT_MAX + 1]; /* v3; "" = the peer's uid */
        } open;
        struct {
            uint64_t session;
        } opened, close, closed;
        struct {
            uint64_t session;
            uint8_t kind, role; /* mq_wire_kind, mq_wire_role */
            uint32_t ring_off;  /* prompt-ring position of the first byte */
            uint32_t len;       /* bytes in the prompt ring */
            mq_wire_gen gen;
        } submit;
        struct {
            uint64_t req, session;
        } submitted;
        struct {
            uint64_t req;
        } cancel, canceled;
        mq_wire_stats stats; /* STATS_REPLY; STATS has no payload */
        struct {
            uint32_t code; /* mq_wire_err */
            char text[MQ_WIRE_TEXT_MAX + 1];
        } error;
    } u;
} mq_msg;

/* Encodes `m` (type, seq and the payload of its type; version = m->version or 1 if 0)
 * into buf. Returns the byte count (> 0), or -EINVAL (a field out of bounds, e.g. a string
 * too long) or -ENOSPC (cap too small). */
int mq_wire_encode(const mq_msg *m, uint8_t *buf, size_t cap);

/* Decodes one whole datagram. Returns 0, or -EPROTO (bad magic, unknown type, length
 * mismatch) / -EINVAL (a field out of its bounds); `err` (may be NULL) gets a message naming
 * the field. Never reads outside [buf, buf+len). */
int mq_wire_decode(const uint8_t *buf, size_t len, mq_msg *m, char *err, size_t errlen);

/* Checks a generation-parameter block against the limits of protocol `version` (used by
 * the decoder and by libmq before sending). */
int mq_wire_gen_check(const mq_wire_gen *g, unsigned version, char *err, size_t errlen);
void mq_wire_gen_default(mq_wire_gen *g);

/* A tenant name (OPEN, v3): 0..MQ_WIRE_TENANT_MAX bytes of printable ASCII without
 * spaces; -EINVAL with a message naming the byte otherwise. */
int mq_wire_tenant_check(const char *name, char *err, size_t errlen);

/* Name of a message type / error code, for logs ("SUBMIT", "MQ_ERR_BUSY"); never NULL. */
const char *mq_wire_type_name(unsigned type);
const char *mq_wire_err_name(unsigned code);
/* Human sentence for an error code ("a request is already running on this session"). */
const char *mq_wire_err_text(unsigned code);

#ifdef __cplusplus
}
#endif
#endif
