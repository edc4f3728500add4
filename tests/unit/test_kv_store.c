/* KV store: alloc/free, sharing with refcounts, prefix-hash lookups, eviction order,
 * reservations and exhaustion. */
#include "tests/harness.h"
#include "engine/kv_store.h"

#include <errno.h>
#include <stdint.h>

#define BT 4

static mq_kv_store *make(int n)
{
    mq_kv_store_opts o = { .block_bytes = 1000, .block_tokens = BT, .n_blocks = n, .allow_hugetlb = 1 };
    char err[256];
    mq_kv_store *kv = NULL;
    int r = mq_kv_store_create(&kv, &o, err, sizeof err);
    CHECK(r == 0, "create: %d %s", r, err);
    return kv;
}

static void test_alloc_free_exhaustion(void)
{
    mq_kv_store *kv = make(8);
    if (!kv)
        return;
    int ids[8];
    for (int i = 0; i < 8; i++) {
        ids[i] = mq_kv_alloc(kv, 0);
        CHECK(ids[i] >= 0 && ids[i] < 8, "alloc %d -> %d", i, ids[i]);
        uint8_t *p = mq_kv_block_ptr(kv, ids[i]);
        CHECK(p && ((uintptr_t)p & 63) == 0, "block pointer aligned");
        memset(p, i + 1, 1000); /* blocks must not overlap: checked below */
    }
    CHECK(mq_kv_alloc(kv, 0) == -ENOSPC, "9th alloc fails with ENOSPC");
    for (int i = 0; i < 8; i++) {
        uint8_t *p = mq_kv_block_ptr(kv, ids[i]);
        CHECK(p[0] == i + 1 && p[999] == i + 1, "block %d intact", i);
    }
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.used == 8 && st.free == 0 && st.cached == 0, "stats used %d free %d", st.used, st.free);
    mq_kv_unref(kv, ids[3]);
    int again = mq_kv_alloc(kv, 0);
    CHECK(again == ids[3], "freed block reused: %d vs %d", again, ids[3]);
    CHECK(mq_kv_block_ptr(kv, 8) == NULL && mq_kv_block_ptr(kv, -1) == NULL, "bad ids -> NULL");
    mq_kv_stats_get(kv, &st);
    CHECK(st.memory != NULL, "memory kind reported");
    mq_kv_store_destroy(kv);
}

static void test_prefix_share(void)
{
    mq_kv_store *kv = make(8);
    if (!kv)
        return;
    int32_t toks[3 * BT];
    for (int i = 0; i < 3 * BT; i++)
        toks[i] = 1000 + i;
    uint64_t h[3], parent = MQ_KV_HASH_SEED;
    int blk[3];
    for (int i = 0; i < 3; i++) {
        h[i] = mq_kv_prefix_hash(parent, toks + i * BT, BT);
        blk[i] = mq_kv_alloc(kv, 0);
        CHECK(mq_kv_publish(kv, blk[i], parent, h[i], toks + i * BT) == 1, "publish %d", i);
        parent = h[i];
    }
    /* a second session with the same prefix finds the chain */
    parent = MQ_KV_HASH_SEED;
    for (int i = 0; i < 3; i++) {
        uint64_t hh = mq_kv_prefix_hash(parent, toks + i * BT, BT);
        CHECK(hh == h[i], "hash is deterministic");
        int id = mq_kv_lookup(kv, parent, hh, toks + i * BT);
        CHECK(id == blk[i], "lookup %d -> %d want %d", i, id, blk[i]);
        CHECK(mq_kv_refcount(kv, blk[i]) == 2, "shared refcount 2");
        parent = hh;
    }
    /* the same block contents after a different prefix is a different chain: miss */
    uint64_t other = mq_kv_prefix_hash(MQ_KV_HASH_SEED, toks + BT, BT);
    CHECK(mq_kv_lookup(kv, MQ_KV_HASH_SEED, other, toks + BT) == -ENOENT, "position matters");
    /* right hash, wrong tokens (forged collision) is refused */
    int32_t bad[BT] = { 1, 2, 3, 4 };
    CHECK(mq_kv_lookup(kv, MQ_KV_HASH_SEED, h[0], bad) == -ENOENT, "token check on hit");
    /* publishing a duplicate hash leaves the first block indexed */
    int dup = mq_kv_alloc(kv, 0);
    CHECK(mq_kv_publish(kv, dup, MQ_KV_HASH_SEED, h[0], toks) == 0, "duplicate not indexed");
    mq_kv_unref(kv, dup);
    /* both sessions release: blocks become cached (still found), not free */
    for (int i = 0; i < 3; i++) {
        mq_kv_unref(kv, blk[i]);
        mq_kv_unref(kv, blk[i]);
    }
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.cached == 3 && st.used == 0 && st.free == 5, "cached %d used %d free %d", st.cached, st.used, st.free);
    int id = mq_kv_lookup(kv, MQ_KV_HASH_SEED, h[0], toks);
    CHECK(id == blk[0], "cached block found after release");
    mq_kv_unref(kv, id);
    mq_kv_stats_get(kv, &st);
    CHECK(st.hits == 4 && st.lookups == 6, "hits %llu lookups %llu", (unsigned long long)st.hits,
          (unsigned long long)st.lookups);
    mq_kv_store_destroy(kv);
}

static void test_evict_oldest_first(void)
{
    mq_kv_store *kv = make(4);
    if (!kv)
        return;
    int32_t toks[4][BT];
    uint64_t h[4];
    int blk[4];
    for (int i = 0; i < 4; i++) {
        for (int t = 0; t < BT; t++)
            toks[i][t] = i * 100 + t;
        h[i] = mq_kv_prefix_hash(MQ_KV_HASH_SEED, toks[i], BT);
        blk[i] = mq_kv_alloc(kv, 0);
        mq_kv_publish(kv, blk[i], MQ_KV_HASH_SEED, h[i], toks[i]);
    }
    /* release in the order 2, 0, 3 (1 stays in use) */
    mq_kv_unref(kv, blk[2]);
    mq_kv_unref(kv, blk[0]);
    mq_kv_unref(kv, blk[3]);
    int a = mq_kv_alloc(kv, 0);
    CHECK(a == blk[2], "oldest released evicted first: got %d want %d", a, blk[2]);
    CHECK(mq_kv_lookup(kv, MQ_KV_HASH_SEED, h[2], toks[2]) == -ENOENT, "evicted block unindexed");
    int b = mq_kv_alloc(kv, 0);
    CHECK(b == blk[0], "then the next oldest: got %d want %d", b, blk[0]);
    CHECK(mq_kv_lookup(kv, MQ_KV_HASH_SEED, h[3], toks[3]) == blk[3], "newest still cached");
    CHECK(mq_kv_alloc(kv, 0) == -ENOSPC, "all in use -> ENOSPC");
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.evictions == 2, "evictions %llu", (unsigned long long)st.evictions);
    mq_kv_store_destroy(kv);
}

static void test_reservations(void)
{
    mq_kv_store *kv = make(6);
    if (!kv)
        return;
    CHECK(mq_kv_reserve(kv, 4) == 0, "reserve 4 of 6");
    CHECK(mq_kv_reserve(kv, 3) == -ENOSPC, "3 more do not fit");
    int x = mq_kv_alloc(kv, 0), y = mq_kv_alloc(kv, 0);
    CHECK(x >= 0 && y >= 0, "2 unreserved allocations fit");
    CHECK(mq_kv_alloc(kv, 0) == -ENOSPC, "a 3rd would eat the reservation");
    for (int i = 0; i < 4; i++)
        CHECK(mq_kv_alloc(kv, 1) >= 0, "reserved alloc %d", i);
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.reserved == 0 && st.used == 6, "reserved %d used %d", st.reserved, st.used);
    mq_kv_store_destroy(kv);
}

/* A cached block that a reservation counts on is not taken by a lookup: every reserved
 * allocation still succeeds. */
static void test_lookup_respects_reservations(void)
{
    mq_kv_store *kv = make(4);
    if (!kv)
        return;
    int32_t toks[4 * BT];
    for (int i = 0; i < 4 * BT; i++)
        toks[i] = 7 + 3 * i;
    uint64_t h[4], parent = MQ_KV_HASH_SEED;
    int blk[4];
    for (int i = 0; i < 4; i++) { /* four indexed blocks, then released: all cached */
        h[i] = mq_kv_prefix_hash(parent, toks + i * BT, BT);
        blk[i] = mq_kv_alloc(kv, 0);
        mq_kv_publish(kv, blk[i], parent, h[i], toks + i * BT);
        parent = h[i];
    }
    for (int i = 0; i < 4; i++)
        mq_kv_unref(kv, blk[i]);
    CHECK(mq_kv_reserve(kv, 3) == 0, "reserve 3 of the 4 cached blocks");
    int id = mq_kv_lookup(kv, MQ_KV_HASH_SEED, h[0], toks);
    CHECK(id == blk[0], "one cached block is spare: found (%d)", id);
    id = mq_kv_lookup(kv, h[0], h[1], toks + BT);
    CHECK(id == -ENOENT, "the next one is promised to the reservation: a miss (%d)", id);
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.refused == 1 && st.hits == 1, "refused %llu hits %llu", (unsigned long long)st.refused,
          (unsigned long long)st.hits);
    for (int i = 0; i < 3; i++)
        CHECK(mq_kv_alloc(kv, 1) >= 0, "reserved alloc %d succeeds", i);
    mq_kv_store_destroy(kv);
}

/* Many random operations against a model of the refcounts: no block is ever handed out
 * twice while in use. */
static void test_random_ops(void)
{
    enum { N = 32, OPS = 20000 };
    mq_kv_store *kv = make(N);
    if (!kv)
        return;
    int owner[N] = { 0 }; /* model refcount */
    int held[4 * N], n_held = 0;
    unsigned long long s = 42;
    for (int op = 0; op < OPS; op++) {
        unsigned r = (unsigned)(harness_rand(&s) % 4);
        if (r == 0 || n_held == 0) {
            int id = mq_kv_alloc(kv, 0);
            if (id >= 0) {
                CHECK(owner[id] == 0, "block %d handed out while in use", id);
                owner[id] = 1;
                held[n_held++] = id;
                int32_t t[BT] = { id, op, 0, 0 };
                uint64_t h = mq_kv_prefix_hash(MQ_KV_HASH_SEED, t, BT);
                if (harness_rand(&s) & 1)
                    mq_kv_publish(kv, id, MQ_KV_HASH_SEED, h, t);
            }
        } else if (r == 1 && n_held < 4 * N) {
            int id = held[harness_rand(&s) % (unsigned)n_held];
            mq_kv_ref(kv, id);
            owner[id]++;
            held[n_held++] = id;
        } else {
            int k = (int)(harness_rand(&s) % (unsigned)n_held);
            int id = held[k];
            held[k] = held[--n_held];
            mq_kv_unref(kv, id);
            owner[id]--;
        }
    }
    int used = 0;
    for (int i = 0; i < N; i++) {
        CHECK(mq_kv_refcount(kv, i) == owner[i], "refcount of %d: %d vs model %d", i, mq_kv_refcount(kv, i), owner[i]);
        used += owner[i] > 0;
    }
    mq_kv_stats st;
    mq_kv_stats_get(kv, &st);
    CHECK(st.used == used && st.used + st.cached + st.free == N, "used %d (model %d) cached %d free %d", st.used, used,
          st.cached, st.free);
    mq_kv_store_destroy(kv);
}

int main(void)
{
    RUN(test_alloc_free_exhaustion);
    RUN(test_prefix_share);
    RUN(test_evict_oldest_first);
    RUN(test_reservations);
    RUN(test_lookup_respects_reservations);
    RUN(test_random_ops);
    return harness_done();
}
