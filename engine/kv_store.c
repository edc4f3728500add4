/* engine/kv_store.c — see kv_store.h.
 *
 * Block table: per block a refcount, an index entry (hash, parent, tokens) and links in
 * either the free stack or the cached LRU list (oldest released at the head). The index
 * is an open-addressing table of block ids keyed by hash (2x the blocks, linear probing,
 * tombstone-free deletion by backward shift).
 */
#define _GNU_SOURCE
#include "engine/kv_store.h"
#include "engine/arena.h"
#include "common/errmsg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

struct kv_block {
    int ref;
    int indexed;
    int prev, next; /* LRU links while cached (ref 0 and indexed) */
    uint64_t hash, parent;
};

struct mq_kv_store {
    pthread_mutex_t mu;
    mq_kv_store_opts o;
    int fd;
    uint8_t *seg;
    size_t seg_bytes, stride;
    mq_mem_kind kind;
    struct kv_block *b;
    int32_t *tokens; /* [n_blocks, block_tokens] ids of indexed blocks */
    int *free_stack, n_free;
    int lru_head, lru_tail, n_cached;
    int *slots;     /* index: block id or -1 */
    size_t n_slots; /* power of two */
    int reserved, used;
    uint64_t lookups, hits, evictions, refused;
};

uint64_t mq_kv_prefix_hash(uint64_t parent, const int32_t *tokens, int block_tokens)
{
    return XXH3_64bits_withSeed(tokens, (size_t)block_tokens * sizeof(int32_t), parent);
}

static size_t round_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

int mq_kv_store_create(mq_kv_store **out, const mq_kv_store_opts *o, char *err, size_t errlen)
{
    if (!o || o->n_blocks <= 0 || o->block_tokens <= 0 || o->block_bytes == 0) {
        return mq_errmsg(err, errlen, -EINVAL, "kv store: n_blocks, block_tokens and block_bytes must be > 0");
    }
    mq_kv_store *kv = calloc(1, sizeof *kv);
    if (!kv)
        return -ENOMEM;
    kv->o = *o;
    kv->fd = -1;
    kv->stride = round_up(o->block_bytes, 64);
    kv->seg_bytes = round_up(kv->stride * (size_t)o->n_blocks, MQ_HUGEPAGE_BYTES);
    int r;

    /* hugetlb first: the reservation happens at mmap, so a shortage fails here */
    if (o->allow_hugetlb && mq_hugepages_free() >= (long)(kv->seg_bytes / MQ_HUGEPAGE_BYTES)) {
        kv->fd = memfd_create("mq-kv", MFD_CLOEXEC | MFD_HUGETLB);
        if (kv->fd >= 0) {
            if (ftruncate(kv->fd, (off_t)kv->seg_bytes) == 0) {
                void *p = mmap(NULL, kv->seg_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, kv->fd, 0);
                if (p != MAP_FAILED) {
                    kv->seg = p;
                    kv->kind = MQ_MEM_HUGETLB;
                }
            }
            if (!kv->seg) {
                close(kv->fd);
                kv->fd = -1;
            }
        }
    }
    /* shmem (a memfd) gets THP only when shmem_enabled allows it; madvise succeeding is
     * not proof, so only the kernel setting counts. When it does not, anonymous memory
     * with THP: a decode step at depth reads the whole KV, and on 4 KiB pages the TLB
     * misses made an 8k-context step of Qwen3-1.7B take 2-3x as long. */
    int shmem_thp = 0;
    if (!kv->seg) {
        char buf[128] = { 0 };
        FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
        if (f) {
            if (!fgets(buf, sizeof buf, f))
                buf[0] = 0;
            fclose(f);
        }
        shmem_thp = strstr(buf, "[always]") || strstr(buf, "[advise]") || strstr(buf, "[within_size]") ||
                    strstr(buf, "[force]");
    }
    if (!kv->seg && !shmem_thp && mq_thp_available()) {
        mq_mem_kind k;
        void *p = mq_mem_map(kv->seg_bytes, 0, 1, &k);
        if (p && k == MQ_MEM_THP) {
            kv->seg = p;
            kv->kind = MQ_MEM_THP;
        } else if (p) {
            mq_mem_unmap(p, kv->seg_bytes);
        }
    }
    if (!kv->seg) {
        kv->fd = memfd_create("mq-kv", MFD_CLOEXEC);
        if (kv->fd < 0) {
            r = -errno;
            mq_errmsg(err, errlen, 0, "kv store: memfd_create: %s", strerror(-r));
            goto fail;
        }
        if (ftruncate(kv->fd, (off_t)kv->seg_bytes) < 0) {
            r = -errno;
            mq_errmsg(err, errlen, 0, "kv store: ftruncate to %zu bytes: %s", kv->seg_bytes, strerror(-r));
            goto fail;
        }
        void *p = mmap(NULL, kv->seg_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, kv->fd, 0);
        if (p == MAP_FAILED) {
            r = -errno;
            mq_errmsg(err, errlen, 0, "kv store: mmap of %zu bytes: %s", kv->seg_bytes, strerror(-r));
            goto fail;
        }
        kv->seg = p;
        kv->kind = shmem_thp && madvise(p, kv->seg_bytes, MADV_HUGEPAGE) == 0 ? MQ_MEM_THP : MQ_MEM_4K;
    }

    int n = o->n_blocks;
    kv->b = calloc((size_t)n, sizeof *kv->b);
    kv->tokens = calloc((size_t)n * (size_t)o->block_tokens, sizeof(int32_t));
    kv->free_stack = malloc((size_t)n * sizeof(int));
    kv->n_slots = 16;
    while (kv->n_slots < (size_t)n * 2)
        kv->n_slots *= 2;
    kv->slots = malloc(kv->n_slots * sizeof(int));
    if (!kv->b || !kv->tokens || !kv->free_stack || !kv->slots) {
        r = -ENOMEM;
        mq_errmsg(err, errlen, 0, "kv store: out of memory for the block table");
        goto fail;
    }
    for (size_t i = 0; i < kv->n_slots; i++)
        kv->slots[i] = -1;
    /* lowest ids on top of the stack: blocks are handed out in address order */
    for (int i = 0; i < n; i++)
        kv->free_stack[i] = n - 1 - i;
    kv->n_free = n;
    kv->lru_head = kv->lru_tail = -1;
    pthread_mutex_init(&kv->mu, NULL);
    *out = kv;
    return 0;
fail:
    if (kv->seg)
        munmap(kv->seg, kv->seg_bytes);
    if (kv->fd >= 0)
        close(kv->fd);
    free(kv->b);
    free(kv->tokens);
    free(kv->free_stack);
    free(kv->slots);
    free(kv);
    return r;
}

void mq_kv_store_destroy(mq_kv_store *kv)
{
    if (!kv)
        return;
    munmap(kv->seg, kv->seg_bytes);
    if (kv->fd >= 0)
        close(kv->fd);
    pthread_mutex_destroy(&kv->mu);
    free(kv->b);
    free(kv->tokens);
    free(kv->free_stack);
    free(kv->slots);
    free(kv);
}

uint8_t *mq_kv_block_ptr(mq_kv_store *kv, int id)
{
    if (id < 0 || id >= kv->o.n_blocks)
        return NULL;
    return kv->seg + (size_t)id * kv->stride;
}

int mq_kv_store_fd(mq_kv_store *kv)
{
    return kv->fd;
}

/* ---- LRU of cached blocks (caller holds mu) ---- */
static void lru_push_tail(mq_kv_store *kv, int id)
{
    struct kv_block *b = &kv->b[id];
    b->prev = kv->lru_tail;
    b->next = -1;
    if (kv->lru_tail >= 0)
        kv->b[kv->lru_tail].next = id;
    else
        kv->lru_head = id;
    kv->lru_tail = id;
    kv->n_cached++;
}

static void lru_remove(mq_kv_store *kv, int id)
{
    struct kv_block *b = &kv->b[id];
    if (b->prev >= 0)
        kv->b[b->prev].next = b->next;
    else
        kv->lru_head = b->next;
    if (b->next >= 0)
        kv->b[b->next].prev = b->prev;
    else
        kv->lru_tail = b->prev;
    b->prev = b->next = -1;
    kv->n_cached--;
}

/* ---- index (caller holds mu) ---- */
static size_t slot_of(const mq_kv_store *kv, uint64_t h)
{
    return (size_t)h & (kv->n_slots - 1);
}

static void index_remove(mq_kv_store *kv, int id)
{
    size_t mask = kv->n_slots - 1, i = slot_of(kv, kv->b[id].hash);
    while (kv->slots[i] != id) {
        if (kv->slots[i] < 0)
            return; /* not present (cannot happen while indexed) */
        i = (i + 1) & mask;
    }
    /* backward-shift deletion keeps probe chains intact without tombstones */
    size_t j = i;
    for (;;) {
        kv->slots[i] = -1;
        for (;;) {
            j = (j + 1) & mask;
            if (kv->slots[j] < 0) {
                kv->b[id].indexed = 0;
                return;
            }
            size_t home = slot_of(kv, kv->b[kv->slots[j]].hash);
            /* move slot j back to i if its home is not in (i, j] cyclically */
            if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j)))
                break;
        }
        kv->slots[i] = kv->slots[j];
        i = j;
    }
}

static int index_find(mq_kv_store *kv, uint64_t h)
{
    size_t mask = kv->n_slots - 1;
    for (size_t i = slot_of(kv, h);; i = (i + 1) & mask) {
        int id = kv->slots[i];
        if (id < 0)
            return -1;
        if (kv->b[id].hash == h)
            return id;
    }
}

int mq_kv_reserve(mq_kv_store *kv, int n)
{
    if (n < 0)
        return -EINVAL;
    pthread_mutex_lock(&kv->mu);
    int avail = kv->n_free + kv->n_cached - kv->reserved;
    int r = n <= avail ? 0 : -ENOSPC;
    if (!r)
        kv->reserved += n;
    pthread_mutex_unlock(&kv->mu);
    return r;
}

void mq_kv_unreserve(mq_kv_store *kv, int n)
{
    pthread_mutex_lock(&kv->mu);
    kv->reserved -= n;
    if (kv->reserved < 0)
        kv->reserved = 0;
    pthread_mutex_unlock(&kv->mu);
}

int mq_kv_alloc(mq_kv_store *kv, int reserved)
{
    pthread_mutex_lock(&kv->mu);
    int id = -ENOSPC;
    int avail = kv->n_free + kv->n_cached - (reserved ? 0 : kv->reserved);
    if (avail > 0) {
        if (kv->n_free > 0) {
            id = kv->free_stack[--kv->n_free];
        } else {
            id = kv->lru_head; /* the oldest released cached block */
            lru_remove(kv, id);
            index_remove(kv, id);
            kv->evictions++;
        }
        kv->b[id].ref = 1;
        kv->b[id].indexed = 0;
        kv->used++;
        if (reserved && kv->reserved > 0)
            kv->reserved--;
    }
    pthread_mutex_unlock(&kv->mu);
    return id;
}

void mq_kv_ref(mq_kv_store *kv, int id)
{
    pthread_mutex_lock(&kv->mu);
    struct kv_block *b = &kv->b[id];
    if (b->ref == 0 && b->indexed) {
        lru_remove(kv, id);
        kv->used++;
    }
    b->ref++;
    pthread_mutex_unlock(&kv->mu);
}

void mq_kv_unref(mq_kv_store *kv, int id)
{
    pthread_mutex_lock(&kv->mu);
    struct kv_block *b = &kv->b[id];
    if (b->ref > 0 && --b->ref == 0) {
        kv->used--;
        if (b->indexed)
            lru_push_tail(kv, id);
        else
            kv->free_stack[kv->n_free++] = id;
    }
    pthread_mutex_unlock(&kv->mu);
}

int mq_kv_publish(mq_kv_store *kv, int id, uint64_t parent, uint64_t h, const int32_t *tokens)
{
    pthread_mutex_lock(&kv->mu);
    int r = 0;
    struct kv_block *b = &kv->b[id];
    if (!b->indexed && b->ref > 0 && index_find(kv, h) < 0) {
        b->hash = h;
        b->parent = parent;
        b->indexed = 1;
        memcpy(kv->tokens + (size_t)id * kv->o.block_tokens, tokens, (size_t)kv->o.block_tokens * sizeof(int32_t));
        size_t mask = kv->n_slots - 1, i = slot_of(kv, h);
        while (kv->slots[i] >= 0)
            i = (i + 1) & mask;
        kv->slots[i] = id;
        r = 1;
    }
    pthread_mutex_unlock(&kv->mu);
    return r;
}

int mq_kv_lookup(mq_kv_store *kv, uint64_t parent, uint64_t h, const int32_t *tokens)
{
    pthread_mutex_lock(&kv->mu);
    kv->lookups++;
    int id = index_find(kv, h);
    if (id >= 0 && (kv->b[id].parent != parent || memcmp(kv->tokens + (size_t)id * kv->o.block_tokens, tokens,
                                                         (size_t)kv->o.block_tokens * sizeof(int32_t)) != 0))
        id = -1;
    /* a cached block that reservations are counting on (as evictable) stays theirs:
     * taking it would leave a promised allocation without a block */
    if (id >= 0 && kv->b[id].ref == 0 && kv->n_free + kv->n_cached - 1 < kv->reserved) {
        id = -1;
        kv->refused++;
    }
    if (id >= 0) {
        struct kv_block *b = &kv->b[id];
        if (b->ref == 0) {
            lru_remove(kv, id);
            kv->used++;
        }
        b->ref++;
        kv->hits++;
    }
    pthread_mutex_unlock(&kv->mu);
    return id >= 0 ? id : -ENOENT;
}

void mq_kv_stats_get(mq_kv_store *kv, mq_kv_stats *st)
{
    pthread_mutex_lock(&kv->mu);
    st->n_blocks = kv->o.n_blocks;
    st->block_tokens = kv->o.block_tokens;
    st->used = kv->used;
    st->cached = kv->n_cached;
    st->free = kv->n_free;
    st->reserved = kv->reserved;
    st->block_bytes = kv->o.block_bytes;
    st->segment_bytes = kv->seg_bytes;
    st->lookups = kv->lookups;
    st->hits = kv->hits;
    st->evictions = kv->evictions;
    st->refused = kv->refused;
    st->memory = mq_mem_kind_name(kv->kind);
    pthread_mutex_unlock(&kv->mu);
}

int mq_kv_refcount(mq_kv_store *kv, int id)
{
    pthread_mutex_lock(&kv->mu);
    int r = (id >= 0 && id < kv->o.n_blocks) ? kv->b[id].ref : -EINVAL;
    pthread_mutex_unlock(&kv->mu);
    return r;
}
