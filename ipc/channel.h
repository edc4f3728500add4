/* ipc/channel.h — the per-client shared-memory channel: one memfd, two rings.
 *
 * Owns: the memfd layout and the record format of the token ring.
 * Who calls it: mqd creates a channel per client connection (mq_chan_create) and hands the
 * memfd to the client with SCM_RIGHTS in HELLO_OK; libmq maps it (mq_chan_map).
 *
 * Layout (offsets in bytes; everything page aligned):
 *     0      mq_chan_hdr (magic, version, offsets and sizes), then the two mq_ring_ctl
 *     4096   prompt ring data [prompt_size]   client -> mqd: prompt bytes (text or int32 ids)
 *     ...    token ring data  [token_size]    mqd -> client: records (below)
 * The memfd is hugetlb-backed when the kernel has free huge pages (MFD_HUGETLB; the size is
 * then rounded up to 2 MiB), else a normal memfd; it is sealed against shrinking and growing
 * so a client cannot make mqd fault on a truncated mapping.
 *
 * Prompt ring: the client writes bytes at its head and sends SUBMIT{ring_off = that head,
 * len}; mqd copies exactly those bytes out (ring_off must equal mqd's own tail) and releases
 * them at once, so the ring is empty between requests and a prompt may be as large as the
 * ring (prompt_size, 1 MiB by default = 262144 token ids).
 *
 * Token ring records (8-byte aligned, little-endian host order, both ends on one machine):
 *     mq_chan_rec { size, type, text_len, req, token, flags }       24 bytes
 *     TOKEN: text bytes follow (a UTF-8-complete piece, may be empty)
 *     DONE:  mq_chan_done follows, then text_len bytes of message (error text or "")
 * `size` covers header + body + padding. Records of one request are in order; records of
 * different requests of one connection may interleave (each carries its req id).
 *
 * Thread rules: the rings are SPSC (ipc/ring.h); mqd serialises its producers per channel.
 */
#ifndef MQ_IPC_CHANNEL_H
#define MQ_IPC_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "ipc/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_CHAN_MAGIC          0x4e48434du /* "MCHN" */
#define MQ_CHAN_VERSION        1
#define MQ_CHAN_HDR_BYTES      4096
#define MQ_CHAN_PROMPT_DEFAULT (1u << 20)
#define MQ_CHAN_TOKEN_DEFAULT  (1u << 20)
#define MQ_CHAN_RING_MAX       (1u << 28)

typedef struct mq_chan_hdr {
    uint32_t magic, version;
    uint32_t total_bytes;
    uint32_t prompt_off, prompt_size;
    uint32_t token_off, token_size;
    uint32_t flags; /* MQ_CHAN_HUGETLB */
    uint32_t pad[24];
    mq_ring_ctl prompt; /* at offset 128 */
    mq_ring_ctl token;  /* at offset 256 */
} mq_chan_hdr;

enum { MQ_CHAN_HUGETLB = 1u << 0 };

enum mq_rec_type { MQ_REC_TOKEN = 1, MQ_REC_DONE = 2 };

/* How a request ended (mq_chan_done.end_reason). */
enum mq_end_reason {
    MQ_CHAN_END_STOP = 0,        /* end-of-sequence token or a stop token */
    MQ_CHAN_END_LENGTH = 1,      /* max_tokens or the context limit */
    MQ_CHAN_END_CANCEL = 2,      /* cancelled by the client or mqctl */
    MQ_CHAN_END_ERROR = 3,       /* failed; see error/message */
    MQ_CHAN_END_STOP_STRING = 4, /* a stop string matched */
    MQ_CHAN_END_SHUTDOWN = 5,    /* mqd drained/shut down before the end */
};

typedef struct mq_chan_rec {
    uint32_t size;     /* whole record, multiple of 8, >= sizeof(mq_chan_rec) */
    uint16_t type;     /* mq_rec_type */
    uint16_t text_len; /* bytes of text (TOKEN) or message (DONE) */
    uint64_t req;
    int32_t token;  /* TOKEN: token id; DONE: -1 */
    uint32_t flags; /* TOKEN: MQ_REC_SPECIAL if a special token */
} mq_chan_rec;

enum { MQ_REC_SPECIAL = 1u << 0 };

typedef struct mq_chan_done {
    int32_t end_reason;        /* mq_end_reason */
    int32_t error;             /* 0, or MQ_ERR_x / negative errno from mqd */
    uint32_t prompt_tokens;    /* tokens of this request's prompt (new tokens) */
    uint32_t cached_tokens;    /* of the session context, reused from the KV store */
    uint32_t prefilled_tokens; /* computed by the prefill pool */
    uint32_t gen_tokens;       /* generated */
    uint64_t queue_us;         /* submit -> first prefill chunk */
    uint64_t ttft_us;          /* submit -> first token */
    uint64_t prefill_us;
    uint64_t decode_us;
} mq_chan_done;

#define MQ_CHAN_REC_MAX (sizeof(mq_chan_rec) + sizeof(mq_chan_done) + 65535 + 8)

typedef struct mq_chan {
    void *base;
    size_t bytes;
    int fd;      /* the memfd (owned) */
    int hugetlb; /* 1 if MFD_HUGETLB backed */
    mq_chan_hdr *hdr;
    mq_ring prompt; /* mqd: consumer; client: producer */
    mq_ring token;  /* mqd: producer; client: consumer */
} mq_chan;

/* mqd side: creates, sizes, seals and maps a channel. Ring sizes: powers of two in
 * [4096, MQ_CHAN_RING_MAX]. try_hugetlb = 0 skips the MFD_HUGETLB attempt. */
int mq_chan_create(mq_chan *c, uint32_t prompt_size, uint32_t token_size, int try_hugetlb, char *err, size_t errlen);
/* Client side: maps a memfd received from mqd (takes ownership of fd), validating every
 * header field against the file's real size. */
int mq_chan_map(mq_chan *c, int fd, char *err, size_t errlen);
void mq_chan_unmap(mq_chan *c);

/* ---- token ring records (mqd) ---- */
/* Bytes a TOKEN record with `text_len` text bytes takes in the ring. */
uint32_t mq_chan_rec_bytes_token(uint32_t text_len);
uint32_t mq_chan_rec_bytes_done(uint32_t msg_len);
/* Writes a whole record into a buffer (for spilling) or directly into the ring. Return the
 * byte count, or -E2BIG. */
int mq_chan_format_token(uint8_t *buf, size_t cap, uint64_t req, int32_t token, uint32_t flags, const char *text,
                         uint32_t text_len);
int mq_chan_format_done(uint8_t *buf, size_t cap, uint64_t req, const mq_chan_done *d, const char *msg,
                        uint32_t msg_len);

/* ---- token ring records (client) ---- */
/* Reads the next record into buf (cap >= MQ_CHAN_REC_MAX is always enough) and releases it
 * from the ring. 1 = a record, 0 = ring empty, -EPROTO = corrupt record. */
int mq_chan_read_rec(mq_ring *r, uint8_t *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
