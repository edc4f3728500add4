/* ipc/channel.c — creation/mapping of the per-client memfd channel (see channel.h). */
#define _GNU_SOURCE
#include "common/errmsg.h"
#include "ipc/channel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HUGE_2M (2u << 20)

_Static_assert(sizeof(mq_ring_ctl) == 128, "ring control block is two cache lines");
_Static_assert(offsetof(mq_chan_hdr, prompt) == 128, "prompt ctl at 128");
_Static_assert(sizeof(mq_chan_hdr) <= MQ_CHAN_HDR_BYTES, "header fits its page");
_Static_assert(sizeof(mq_chan_rec) == 24, "record header is 24 bytes");
_Static_assert(sizeof(mq_chan_done) == 56, "done body is 56 bytes");

static int pow2_ok(uint32_t v)
{
    return v >= 4096 && v <= MQ_CHAN_RING_MAX && !(v & (v - 1));
}

int mq_chan_create(mq_chan *c, uint32_t prompt_size, uint32_t token_size, int try_hugetlb, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    if (!pow2_ok(prompt_size) || !pow2_ok(token_size))
        return mq_errmsg(err, errlen, -EINVAL, "channel ring sizes %u/%u must be powers of two in [4096, %u]",
                         prompt_size, token_size, MQ_CHAN_RING_MAX);
    size_t bytes = (size_t)MQ_CHAN_HDR_BYTES + prompt_size + token_size;
    int fd = -1;
    void *base = MAP_FAILED;
    if (try_hugetlb) {
        size_t hb = (bytes + HUGE_2M - 1) / HUGE_2M * HUGE_2M;
        fd = memfd_create("mq-channel", MFD_CLOEXEC | MFD_HUGETLB | MFD_ALLOW_SEALING);
        if (fd >= 0 && ftruncate(fd, (off_t)hb) == 0) {
            base = mmap(NULL, hb, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
            if (base != MAP_FAILED) {
                bytes = hb;
                c->hugetlb = 1;
            }
        }
        if (base == MAP_FAILED && fd >= 0) {
            close(fd);
            fd = -1;
        }
    }
    if (base == MAP_FAILED) {
        fd = memfd_create("mq-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
            return mq_errmsg(err, errlen, -errno, "memfd_create: %s", strerror(errno));
        if (ftruncate(fd, (off_t)bytes) < 0) {
            int e = errno;
            close(fd);
            return mq_errmsg(err, errlen, -e, "ftruncate channel to %zu bytes: %s", bytes, strerror(e));
        }
        base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            int e = errno;
            close(fd);
            return mq_errmsg(err, errlen, -e, "mmap channel of %zu bytes: %s", bytes, strerror(e));
        }
    }
    /* The client must not be able to shrink the file under our mapping (SIGBUS in mqd). */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int e = errno;
        munmap(base, bytes);
        close(fd);
        return mq_errmsg(err, errlen, -e, "sealing the channel memfd: %s", strerror(e));
    }
    c->fd = fd;
    c->base = base;
    c->bytes = bytes;
    c->hdr = base;
    memset(c->hdr, 0, sizeof *c->hdr);
    c->hdr->magic = MQ_CHAN_MAGIC;
    c->hdr->version = MQ_CHAN_VERSION;
    c->hdr->total_bytes = (uint32_t)bytes;
    c->hdr->prompt_off = MQ_CHAN_HDR_BYTES;
    c->hdr->prompt_size = prompt_size;
    c->hdr->token_off = MQ_CHAN_HDR_BYTES + prompt_size;
    c->hdr->token_size = token_size;
    c->hdr->flags = c->hugetlb ? MQ_CHAN_HUGETLB : 0;
    mq_ring_ctl_init(&c->hdr->prompt);
    mq_ring_ctl_init(&c->hdr->token);
    mq_ring_attach_consumer(&c->prompt, &c->hdr->prompt, (uint8_t *)base + MQ_CHAN_HDR_BYTES, prompt_size);
    mq_ring_attach_producer(&c->token, &c->hdr->token, (uint8_t *)base + MQ_CHAN_HDR_BYTES + prompt_size, token_size);
    return 0;
}

int mq_chan_map(mq_chan *c, int fd, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return mq_errmsg(err, errlen, -e, "fstat channel memfd: %s", strerror(e));
    }
    if (st.st_size < MQ_CHAN_HDR_BYTES || st.st_size > (off_t)2 * MQ_CHAN_RING_MAX + 2 * HUGE_2M) {
        close(fd);
        return mq_errmsg(err, errlen, -EPROTO, "channel memfd has an implausible size %lld", (long long)st.st_size);
    }
    size_t bytes = (size_t)st.st_size;
    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return mq_errmsg(err, errlen, -e, "mmap channel: %s", strerror(e));
    }
    mq_chan_hdr *h = base;
    const char *bad = NULL;
    if (h->magic != MQ_CHAN_MAGIC)
        bad = "magic";
    else if (h->version != MQ_CHAN_VERSION)
        bad = "version";
    else if (h->total_bytes != bytes)
        bad = "total_bytes";
    else if (!pow2_ok(h->prompt_size) || !pow2_ok(h->token_size))
        bad = "ring size";
    else if (h->prompt_off != MQ_CHAN_HDR_BYTES || (uint64_t)h->prompt_off + h->prompt_size > h->token_off ||
             (uint64_t)h->token_off + h->token_size > bytes)
        bad = "ring offsets";
    if (bad) {
        munmap(base, bytes);
        close(fd);
        return mq_errmsg(err, errlen, -EPROTO, "channel header field %s is invalid", bad);
    }
    c->fd = fd;
    c->base = base;
    c->bytes = bytes;
    c->hdr = h;
    c->hugetlb = !!(h->flags & MQ_CHAN_HUGETLB);
    mq_ring_attach_producer(&c->prompt, &h->prompt, (uint8_t *)base + h->prompt_off, h->prompt_size);
    mq_ring_attach_consumer(&c->token, &h->token, (uint8_t *)base + h->token_off, h->token_size);
    return 0;
}

void mq_chan_unmap(mq_chan *c)
{
    if (c->base)
        munmap(c->base, c->bytes);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* ---- records ------------------------------------------------------------------- */
static uint32_t align8(uint32_t v)
{
    return (v + 7u) & ~7u;
}

uint32_t mq_chan_rec_bytes_token(uint32_t text_len)
{
    return align8((uint32_t)sizeof(mq_chan_rec) + text_len);
}

uint32_t mq_chan_rec_bytes_done(uint32_t msg_len)
{
    return align8((uint32_t)(sizeof(mq_chan_rec) + sizeof(mq_chan_done)) + msg_len);
}

int mq_chan_format_token(uint8_t *buf, size_t cap, uint64_t req, int32_t token, uint32_t flags, const char *text,
                         uint32_t text_len)
{
    if (text_len > 65535)
        return -E2BIG;
    uint32_t n = mq_chan_rec_bytes_token(text_len);
    if (n > cap)
        return -E2BIG;
    mq_chan_rec h = { n, MQ_REC_TOKEN, (uint16_t)text_len, req, token, flags };
    memcpy(buf, &h, sizeof h);
    if (text_len)
        memcpy(buf + sizeof h, text, text_len);
    memset(buf + sizeof h + text_len, 0, n - sizeof h - text_len);
    return (int)n;
}

int mq_chan_format_done(uint8_t *buf, size_t cap, uint64_t req, const mq_chan_done *d, const char *msg,
                        uint32_t msg_len)
{
    if (msg_len > 65535)
        msg_len = 65535;
    uint32_t n = mq_chan_rec_bytes_done(msg_len);
    if (n > cap)
        return -E2BIG;
    mq_chan_rec h = { n, MQ_REC_DONE, (uint16_t)msg_len, req, -1, 0 };
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, d, sizeof *d);
    if (msg_len)
        memcpy(buf + sizeof h + sizeof *d, msg, msg_len);
    size_t used = sizeof h + sizeof *d + msg_len;
    memset(buf + used, 0, n - used);
    return (int)n;
}

int mq_chan_read_rec(mq_ring *r, uint8_t *buf, size_t cap)
{
    int64_t avail = mq_ring_avail(r);
    if (avail < 0)
        return (int)avail;
    if (avail == 0)
        return 0;
    if (avail < (int64_t)sizeof(mq_chan_rec))
        return -EPROTO; /* records are published whole */
    mq_chan_rec h;
    mq_ring_peek(r, 0, &h, sizeof h);
    uint32_t need = h.type == MQ_REC_TOKEN  ? mq_chan_rec_bytes_token(h.text_len)
                    : h.type == MQ_REC_DONE ? mq_chan_rec_bytes_done(h.text_len)
                                            : 0;
    if (!need || h.size != need || h.size > avail || h.size > cap)
        return -EPROTO;
    mq_ring_peek(r, 0, buf, h.size);
    mq_ring_consume(r, h.size);
    return 1;
}
