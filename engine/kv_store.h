/* engine/kv_store.h — the KV segment: fixed-size blocks of tokens (all layers' K and V)
 * in one mapping, shared between sessions through a prefix index.
 *
 * Owns: the segment (a memfd with MFD_HUGETLB when hugetlb pages are free; else, when
 * the kernel gives shmem no THP but anonymous memory may have it, anonymous memory with
 * THP; else a memfd, with THP if shmem allows it, or 4K pages), the block table
 * (reference counts), the prefix index and the eviction order.
 *
 * Block states:
 *   free    — never used or released without an index entry;
 *   in use  — refcount > 0 (owned by one session, or shared by several);
 *   cached  — refcount 0 but indexed: its K/V is still valid for its token prefix and can
 *             be reused by a lookup, or evicted (oldest released first) by an allocation.
 * A block is indexed by the chain hash of its whole token prefix:
 *     h_i = XXH3_64bits_withSeed(tokens of block i, h_{i-1}),  h_{-1} = the caller's seed
 * (MQ_KV_HASH_SEED, or derived from it: the scheduler salts it per tenant).
 * Lookups also compare the block's own tokens and the parent hash, so a hit needs a
 * 64-bit collision on the parent's whole prefix to be wrong.
 * Only full blocks are indexed; indexed blocks are never written again (a writer owns
 * its partial tail block alone), which is what makes sharing safe.
 *
 * Reservations: a caller that will need n blocks later (the scheduler at admission:
 * prompt + max_tokens) reserves them; allocations against a reservation cannot fail, so a
 * running request never meets a full store halfway.
 *
 * Who calls it: the scheduler (and tests). Thread rules: all functions are thread-safe
 * (one internal mutex); block memory itself is synchronised by the caller.
 */
#ifndef MQ_KV_STORE_H
#define MQ_KV_STORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_KV_HASH_SEED 0x6d712d6b762d3031ULL /* "mq-kv-01" */

typedef struct mq_kv_store mq_kv_store;

typedef struct mq_kv_store_opts {
    size_t block_bytes; /* bytes of one block (engine: mq_kv_block_bytes) */
    int block_tokens;   /* tokens per block */
    int n_blocks;
    int allow_hugetlb; /* try MFD_HUGETLB first (default 1 via opts_default) */
} mq_kv_store_opts;

int mq_kv_store_create(mq_kv_store **kv, const mq_kv_store_opts *o, char *err, size_t errlen);
void mq_kv_store_destroy(mq_kv_store *kv);

uint8_t *mq_kv_block_ptr(mq_kv_store *kv, int id); /* 64-byte aligned */
int mq_kv_store_fd(mq_kv_store *kv);               /* the memfd, or -1 (anonymous memory) */

/* Chain hash of one block of block_tokens ids after a prefix whose hash is parent. */
uint64_t mq_kv_prefix_hash(uint64_t parent, const int32_t *tokens, int block_tokens);

/* Reserves n blocks for later mq_kv_alloc(.., reserved=1). -ENOSPC if fewer than n are
 * free or evictable beyond existing reservations. */
int mq_kv_reserve(mq_kv_store *kv, int n);
void mq_kv_unreserve(mq_kv_store *kv, int n);

/* A block with refcount 1: a free one, else the oldest cached one (its index entry is
 * dropped). reserved=1 consumes one reserved block. Returns the id or -ENOSPC. */
int mq_kv_alloc(mq_kv_store *kv, int reserved);
void mq_kv_ref(mq_kv_store *kv, int id);
/* Drops a reference; at 0 the block becomes cached (indexed) or free. */
void mq_kv_unref(mq_kv_store *kv, int id);

/* Indexes a full block under hash h (= mq_kv_prefix_hash(parent, tokens)). If the hash is
 * already indexed by another block, nothing changes and 0 is returned; 1 when indexed. */
int mq_kv_publish(mq_kv_store *kv, int id, uint64_t parent, uint64_t h, const int32_t *tokens);
/* Looks up the block for hash h whose tokens and parent match; on a hit takes a reference
 * (a cached block becomes in use) and returns its id; -ENOENT on a miss. A cached block
 * is not taken when the reservations need it (free + cached would drop below reserved):
 * that is a miss too, counted in `refused`. */
int mq_kv_lookup(mq_kv_store *kv, uint64_t parent, uint64_t h, const int32_t *tokens);

typedef struct mq_kv_stats {
    int n_blocks, block_tokens;
    int used, cached, free, reserved;
    size_t block_bytes, segment_bytes;
    uint64_t lookups, hits, evictions, refused;
    const char *memory; /* "hugetlb", "thp" or "4k" */
} mq_kv_stats;
void mq_kv_stats_get(mq_kv_store *kv, mq_kv_stats *st);
int mq_kv_refcount(mq_kv_store *kv, int id);

#ifdef __cplusplus
}
#endif
#endif
