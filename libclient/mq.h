/* mq.h — libmq, the client library of mqd (LLM inference daemon).
 *
 * Link with -lmq (pkg-config --cflags --libs libmq). ABI: libmq.so.1.
 *
 * A program connects to mqd's client socket, opens one or more sessions, sends prompts
 * and reads the generated tokens as a stream of events:
 *
 *     mq_conn *c;
 *     if (mq_connect(NULL, &c) < 0) ...                    // $MQ_SOCKET or the default path
 *     uint64_t s, req;
 *     mq_open_session(c, MQ_MODE_CHAT, &s);
 *     mq_params p;
 *     mq_params_init(&p);
 *     mq_send_message(c, s, MQ_ROLE_USER, "Hello!", 6, &p, &req);
 *     mq_event ev;
 *     while (mq_next_event(c, &ev, -1) == 0) {
 *         if (ev.type == MQ_EVENT_TOKEN) fwrite(ev.text, 1, ev.text_len, stdout);
 *         else break;                                      // MQ_EVENT_DONE: ev.end_reason
 *     }
 *     mq_disconnect(c);
 *
 * Sessions keep their context (KV cache) between requests: in a chat session each call
 * adds one message to the conversation and the assistant's answer is generated after it;
 * the next message continues the same conversation, so only new tokens are computed.
 * Raw sessions take plain text or token ids and continue them.
 *
 * Stateless clients (an OpenAI-style HTTP front, an agent that resends its conversation
 * every turn) use raw sessions with mq_send_chat() or mq_send_prompt(): each call sends the
 * whole context; with MQ_REQ_WHOLE_CONTEXT mqd keeps the longest common token prefix of
 * what the session already holds and computes only the rest. These need protocol version
 * 2 (mqd of the same release); mq_server_info.protocol_version says what was agreed.
 *
 * Transport: prompts go through a shared-memory ring (a prompt of 100k tokens never
 * crosses the socket); tokens come back through a second ring. Waiting for tokens sleeps
 * on a futex, or, for event loops, poll the fd of mq_event_fd().
 *
 * Errors: every function returns 0 (or a documented count) on success and a negative
 * number on failure: -errno for system errors, -MQ_E* (below) for errors reported by mqd.
 * mq_strerror() names any of them; mq_last_error() gives mqd's message for the last failed
 * call on that connection (e.g. "prompt of 40213 tokens is over the context limit 32768").
 *
 * Threads: a connection may be used from several threads at once (calls are serialised
 * internally; mq_next_event has its own lock so one thread can read events while others
 * send). The library has no global state; connections are independent.
 */
#ifndef MQ_H
#define MQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_DEFAULT_SOCKET "/run/mq/client.sock"

typedef struct mq_conn mq_conn;

/* Errors reported by mqd (returned negated). */
enum {
    MQ_EPROTOCOL = 1000,   /* malformed protocol message (the connection is closed) */
    MQ_EVERSION = 1001,    /* no common protocol version */
    MQ_EDENIED = 1002,     /* this user/group may not use mqd */
    MQ_ENOSESSION = 1003,  /* unknown session */
    MQ_ENOREQUEST = 1004,  /* unknown or finished request */
    MQ_EBUSY = 1005,       /* a request is already running on this session */
    MQ_ETOOLONG = 1006,    /* prompt over the context limit (or the prompt ring) */
    MQ_ELIMIT = 1007,      /* too many sessions, or the queue is full */
    MQ_EBADPROMPT = 1008,  /* invalid UTF-8 / token id / message kind for the session mode */
    MQ_EDRAINING = 1009,   /* mqd is shutting down */
    MQ_EINTERNAL = 1010,   /* internal error in mqd */
    MQ_EKVFULL = 1011,     /* the KV store is full */
    MQ_ENOTTRUSTED = 1012, /* a tenant named by a client not in mqd's trusted_fronts */
};

enum mq_mode { MQ_MODE_CHAT = 0, MQ_MODE_RAW = 1 };
enum mq_role { MQ_ROLE_USER = 0, MQ_ROLE_SYSTEM = 1, MQ_ROLE_TOOL = 2 };

/* Generation parameters. Initialise with mq_params_init() and change what you need. */
typedef struct mq_params {
    uint32_t max_tokens;  /* default 256; 1 .. 1048576 */
    float temperature;    /* default 0.7; 0 = greedy */
    float top_p;          /* default 0.95; (0, 1] */
    float min_p;          /* default 0; [0, 1) */
    uint32_t top_k;       /* default 40; 0 = off */
    float repeat_penalty; /* default 0 = off; else [0.125, 8] */
    uint64_t seed;        /* default 0 = mqd picks one */
    unsigned flags;       /* MQ_PARAM_* */
} mq_params;

enum {
    MQ_PARAM_GREEDY = 1u << 0,          /* argmax decoding (same as temperature 0) */
    MQ_PARAM_ENABLE_THINKING = 1u << 1, /* chat template's enable_thinking */
    MQ_PARAM_NO_SPECIAL_TEXT = 1u << 2, /* do not stream the text of special tokens */
};

void mq_params_init(mq_params *p);

/* ---- connection ------------------------------------------------------------------- */
/* Connects to mqd at `socket_path` (NULL: $MQ_SOCKET, else MQ_DEFAULT_SOCKET), negotiates
 * the protocol version and maps the shared-memory channel. */
int mq_connect(const char *socket_path, mq_conn **out);
/* The same, giving up after timeout_ms (-ETIMEDOUT) when mqd does not answer: mqd accepts
 * clients only once its model is loaded, and until then mq_connect waits (up to 300 s).
 * Health checks and servers in front of mqd answer "not ready" instead. libmq 1.2. */
int mq_connect_timeout(const char *socket_path, int timeout_ms, mq_conn **out);
/* Closes the connection. mqd cancels its running requests and closes its sessions. */
void mq_disconnect(mq_conn *c);

/* What mqd reported at connect time. */
typedef struct mq_server_info {
    unsigned protocol_version;
    uint32_t ctx_limit; /* tokens per session */
    uint32_t vocab_size;
    uint32_t max_sessions; /* per connection */
    uint32_t prompt_ring;  /* bytes: the largest prompt one call can send */
    int hugetlb;           /* 1 if the channel is backed by huge pages */
    char model[64];
} mq_server_info;
int mq_server_info_get(mq_conn *c, mq_server_info *info);

/* ---- sessions ------------------------------------------------------------------- */
int mq_open_session(mq_conn *c, int mode, uint64_t *session);
/* Opens a session for `tenant` (protocol 3, libmq 1.2): a front serving many users (an
 * HTTP server with one tenant per API key) keeps them apart in mqd as local users are:
 * each tenant has its own prefix cache (unless mqd shares it) and its own share of the
 * per-user limits. The name: 1..63 bytes of printable ASCII, no spaces; NULL or "" = the
 * connection's own uid (mq_open_session). mqd takes it only from a client in its
 * trusted_fronts / trusted_front_groups: -MQ_ENOTTRUSTED otherwise (the connection stays
 * usable); -MQ_EVERSION from an mqd older than protocol 3. */
int mq_open_tenant_session(mq_conn *c, int mode, const char *tenant, uint64_t *session);
/* Closes a session (cancelling its running request) and frees its context in mqd. */
int mq_close_session(mq_conn *c, uint64_t session);

/* ---- prompts: each call starts one request; *req (may be NULL) gets its id ----------- */
/* Chat sessions: one message (role user, system or tool), then the assistant answers. */
int mq_send_message(mq_conn *c, uint64_t session, int role, const char *text, size_t len, const mq_params *p,
                    uint64_t *req);
/* Raw sessions: UTF-8 text appended to the session's context, then generation. */
int mq_send_text(mq_conn *c, uint64_t session, const char *text, size_t len, const mq_params *p, uint64_t *req);
/* Raw sessions: token ids appended to the session's context, then generation. */
int mq_send_tokens(mq_conn *c, uint64_t session, const int32_t *ids, size_t n, const mq_params *p, uint64_t *req);
/* Asks mqd to stop a request; its MQ_EVENT_DONE (end_reason MQ_END_CANCELLED) follows. */
int mq_cancel(mq_conn *c, uint64_t req);

/* ---- version 2: whole-context requests, precision, stop strings ------------------- */
enum mq_precision {
    MQ_PRECISION_DEFAULT = 0, /* the daemon's configured mode */
    MQ_PRECISION_MIXED = 1,   /* NVFP4 prefill, BF16 decode */
    MQ_PRECISION_BF16 = 2,
    MQ_PRECISION_FP4 = 3,
};
#define MQ_MAX_STOP     4   /* stop strings per request */
#define MQ_STOP_MAX_LEN 255 /* bytes of one */

/* What a request asks for beyond mq_params. Zero-initialised = nothing extra. */
typedef struct mq_request_opts {
    int precision;                 /* mq_precision */
    unsigned flags;                /* MQ_REQ_* */
    float presence_penalty;        /* [-2, 2], 0 = off (OpenAI's meaning) */
    float frequency_penalty;       /* [-2, 2], 0 = off */
    int n_stop;                    /* 0..MQ_MAX_STOP */
    const char *stop[MQ_MAX_STOP]; /* generation ends at the first occurrence (1..255 bytes) */
} mq_request_opts;

enum {
    /* The prompt is the session's whole context, not an addition to it (see above). The
     * request's DONE stats then count the whole prompt in prompt_tokens and what mqd did
     * not compute in cached_tokens. */
    MQ_REQ_WHOLE_CONTEXT = 1u << 0,
};

/* Raw sessions: a whole conversation as JSON, rendered by mqd's chat template and
 * tokenized there (message content as text: special-token strings in it stay text):
 *     {"messages": [{"role", "content", "tool_calls", "reasoning_content"}...],
 *      "tools": [...], "enable_thinking": false, "prefix": "<tool_call>\n"}
 * `prefix` (optional) is text the reply is forced to start with. Always whole-context. */
int mq_send_chat(mq_conn *c, uint64_t session, const char *json, size_t len, const mq_params *p,
                 const mq_request_opts *o, uint64_t *req);
/* Raw sessions: UTF-8 text in which special tokens (<|im_start|>...) are parsed, as the
 * completions endpoints of OpenAI-style servers do. */
int mq_send_prompt(mq_conn *c, uint64_t session, const char *text, size_t len, const mq_params *p,
                   const mq_request_opts *o, uint64_t *req);

/* ---- events ----------------------------------------------------------------------- */
enum mq_event_type { MQ_EVENT_TOKEN = 1, MQ_EVENT_DONE = 2 };
enum mq_end {
    MQ_END_STOPPED = 0,   /* end-of-sequence / stop token */
    MQ_END_LENGTH = 1,    /* max_tokens or the context limit */
    MQ_END_CANCELLED = 2, /* mq_cancel or an administrator */
    MQ_END_FAILED = 3,    /* see error and text */
    MQ_END_STOP_STRING = 4,
    MQ_END_SHUTDOWN = 5, /* mqd shut down first */
};

typedef struct mq_req_stats {
    uint32_t prompt_tokens;    /* new tokens this request sent */
    uint32_t cached_tokens;    /* context tokens reused from the KV cache */
    uint32_t prefilled_tokens; /* tokens computed by prefill */
    uint32_t gen_tokens;       /* tokens generated */
    uint64_t queue_us, ttft_us, prefill_us, decode_us;
} mq_req_stats;

typedef struct mq_event {
    int type; /* mq_event_type */
    uint64_t req;
    int32_t token;      /* TOKEN: the token id */
    int special;        /* TOKEN: 1 if a special token (e.g. <|im_end|>) */
    const char *text;   /* TOKEN: UTF-8-complete text piece; DONE: mqd's message or "" */
    size_t text_len;    /* text stays valid until the next mq_next_event on this conn */
    int end_reason;     /* DONE: mq_end */
    int error;          /* DONE: 0 or a negative error (-MQ_E* / -errno) */
    mq_req_stats stats; /* DONE */
} mq_event;

/* Next event of any request of this connection. timeout_ms: -1 waits forever, 0 polls.
 * Returns 0 with *ev filled, -ETIMEDOUT, -EPIPE (mqd went away) or -EPROTO. */
int mq_next_event(mq_conn *c, mq_event *ev, int timeout_ms);
/* A file descriptor that becomes readable when events may be available (for poll/epoll);
 * then call mq_next_event(c, &ev, 0) until it returns -ETIMEDOUT. Owned by the
 * connection. */
int mq_event_fd(mq_conn *c);

/* ---- stats ----------------------------------------------------------------------- */
typedef struct mq_stats {
    uint64_t uptime_ms;
    uint32_t sessions, requests_running, requests_queued;
    uint32_t kv_blocks_used, kv_blocks_total, kv_block_tokens;
    uint64_t requests_done;
    uint64_t prompt_tokens, cached_tokens, prefill_tokens, decode_tokens;
    float prefill_tps, decode_tps;
} mq_stats;
int mq_stats_get(mq_conn *c, mq_stats *out);

/* mqd's state, for health checks: MQ_STATE_READY or MQ_STATE_DRAINING (no new requests;
 * running ones finish), or a negative error (-EPIPE: mqd went away). `out` (may be NULL)
 * gets the stats of the same reply. A protocol-1 mqd answers READY while it answers. */
enum mq_state { MQ_STATE_READY = 1, MQ_STATE_DRAINING = 2 };
int mq_state_get(mq_conn *c, mq_stats *out);

/* ---- errors ---------------------------------------------------------------------- */
/* A sentence for any return value of this library (negative errno or -MQ_E*). */
const char *mq_strerror(int err);
/* Copies mqd's (or libmq's) message about the last failed call on `c` into buf; returns
 * its length. With several threads on one connection the message may be another's. */
size_t mq_last_error(mq_conn *c, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
