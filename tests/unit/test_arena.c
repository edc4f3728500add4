/* Arena: alignment, no overlap, zeroed memory, accounting of page kinds, hugetlb when
 * pages are reserved (root), THP when allowed, 4k when neither is. */
#include "tests/harness.h"
#include "engine/arena.h"

#include <errno.h>
#include <stdint.h>
#include <unistd.h>

static void test_alloc_align_account(void)
{
    mq_arena_opts o;
    mq_arena_opts_default(&o);
    o.chunk_bytes = 4 << 20;
    o.allow_hugetlb = 0;
    mq_arena *a = NULL;
    CHECK(mq_arena_create(&a, &o) == 0, "create");
    if (!a)
        return;
    uint8_t *prev_end = NULL;
    size_t total = 0;
    for (int i = 0; i < 50; i++) {
        size_t bytes = 1000 + (size_t)i * 77777, align = (size_t)64 << (i % 7);
        uint8_t *p = mq_arena_alloc(a, bytes, align, "test");
        CHECK(p != NULL, "alloc %zu", bytes);
        if (!p)
            break;
        CHECK(((uintptr_t)p & (align - 1)) == 0, "aligned to %zu", align);
        CHECK(p[0] == 0 && p[bytes - 1] == 0, "zeroed");
        memset(p, 0xab, bytes);
        CHECK(!prev_end || p >= prev_end || p + bytes <= prev_end - bytes, "no overlap");
        prev_end = p + bytes;
        total += bytes;
    }
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    size_t mapped = st.mapped[0] + st.mapped[1] + st.mapped[2];
    CHECK(st.used >= total && mapped >= st.used, "used %zu >= %zu, mapped %zu", st.used, total, mapped);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == 0, "hugetlb not allowed -> none");
    if (mq_thp_available())
        CHECK(st.mapped[MQ_MEM_THP] == mapped, "THP enabled -> all thp");
    else
        CHECK(st.mapped[MQ_MEM_4K] == mapped, "THP off -> 4k");
    char buf[128];
    mq_arena_describe(a, buf, sizeof buf);
    CHECK(strstr(buf, "MiB") != NULL, "describe: %s", buf);
    errno = 0;
    CHECK(mq_arena_alloc(a, 10, 3, "bad") == NULL && errno == EINVAL, "non power of two alignment");
    mq_arena_destroy(a);

    /* neither hugetlb nor THP allowed: plain pages, accounted as such */
    o.allow_thp = 0;
    CHECK(mq_arena_create(&a, &o) == 0, "create 4k");
    CHECK(mq_arena_alloc(a, 3 << 20, 0, "x") != NULL, "alloc 3 MiB");
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_4K] == (4u << 20) && st.mappings == 1, "4k mapped %zu", st.mapped[MQ_MEM_4K]);
    mq_arena_destroy(a);
}

/* The hugetlb pool is shared with every other process on the machine (other tests, other
 * mqd instances): free pages come and go while these tests run. So the tests never
 * assume the pool is empty or still holds what it held a moment ago: a request "bigger
 * than the pool" is sized from HugePages_Total plus a margin, a mapping that should be
 * hugetlb is retried when another process took the pages first, and pages are given back
 * with mq_hugepages_giveback (relative), never by writing an old nr_hugepages back. */
#define POOL_MARGIN 64 /* pages: what others could add to nr_hugepages while a test runs */

/* Reserves `pages` more hugetlb pages; the number added (may be fewer), or -errno. */
static long reserve(long pages)
{
    long prev = -1;
    return mq_hugepages_reserve(pages, &prev);
}

/* Makes an arena with chunk `chunk` and allocates `bytes` from it; retries (up to 5
 * times, re-reserving `pages`) while the first mapping is not hugetlb because other
 * processes took the free pages between the reservation and the mapping. *added sums
 * the pages reserved. NULL when no attempt got hugetlb. */
static mq_arena *hugetlb_arena(size_t chunk, size_t bytes, long pages, long *added, uint8_t **p)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        if (attempt) {
            long got = reserve(pages);
            if (got > 0)
                *added += got;
        }
        mq_arena_opts o;
        mq_arena_opts_default(&o);
        o.chunk_bytes = chunk;
        mq_arena *a = NULL;
        if (mq_arena_create(&a, &o) != 0)
            return NULL;
        *p = mq_arena_alloc(a, bytes, 4096, "h");
        mq_arena_stats st;
        mq_arena_stats_get(a, &st);
        if (*p && st.mapped[MQ_MEM_HUGETLB] > 0)
            return a;
        mq_arena_destroy(a);
        usleep(100 * 1000);
    }
    return NULL;
}

static void test_hugetlb_reserved(void)
{
    if (geteuid() != 0) {
        CHECK(mq_hugepages_reserve(2, NULL) == -EPERM, "non-root reservation refused");
        return;
    }
    long added = reserve(2);
    CHECK(added >= 0, "reserve 2 pages: %ld", added);
    if (added < 2) { /* fragmented memory may give fewer: still must not crash */
        if (added > 0)
            mq_hugepages_giveback(added);
        return;
    }
    uint8_t *p = NULL;
    mq_arena *a = hugetlb_arena(2 << 20, 1 << 20, 2, &added, &p);
    CHECK(a != NULL, "a 2 MiB chunk with 2 pages reserved is hugetlb-backed (5 attempts)");
    if (!a) {
        mq_hugepages_giveback(added);
        return;
    }
    memset(p, 1, 1 << 20);
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == (2u << 20), "hugetlb mapped %zu", st.mapped[MQ_MEM_HUGETLB]);
    /* a bigger request than the pool itself falls back instead of failing */
    long total = mq_meminfo_kib("HugePages_Total");
    size_t big = (size_t)(total + POOL_MARGIN) << 21;
    uint8_t *q = mq_arena_alloc(a, big, 0, "big");
    CHECK(q != NULL, "fallback alloc of %zu bytes", big);
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_THP] + st.mapped[MQ_MEM_4K] >= big && st.mapped[MQ_MEM_HUGETLB] == (2u << 20),
          "fallback kind accounted: %zu thp + %zu 4k, %zu hugetlb", st.mapped[MQ_MEM_THP], st.mapped[MQ_MEM_4K],
          st.mapped[MQ_MEM_HUGETLB]);
    mq_arena_destroy(a);
    CHECK(mq_hugepages_giveback(added) >= 0, "give back %ld pages", added);
}

/* A reservation smaller than a chunk is used (the mapping shrinks to the free pages),
 * mq_arena_trim returns the unused tail to the pool, and mq_hugepages_giveback lowers
 * nr_hugepages by what was added, keeping a change made by someone else meanwhile. */
static void test_partial_chunk_trim_giveback(void)
{
    if (geteuid() != 0)
        return; /* covered by test_hugetlb_reserved's EPERM check */
    long added = reserve(4);
    CHECK(added >= 0, "reserve 4 pages: %ld", added);
    if (added < 4) {
        if (added > 0)
            mq_hugepages_giveback(added);
        return;
    }
    /* a chunk bigger than the whole pool: the mapping can only be what was free */
    size_t chunk = (size_t)(mq_meminfo_kib("HugePages_Total") + POOL_MARGIN) << 21;
    uint8_t *p = NULL;
    mq_arena *a = hugetlb_arena(chunk, 3 << 20, 4, &added, &p);
    CHECK(a != NULL, "3 MiB from a chunk bigger than the pool, 4 pages reserved: hugetlb (5 attempts)");
    if (!a) {
        mq_hugepages_giveback(added);
        return;
    }
    memset(p, 2, 3 << 20);
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    size_t mapped = st.mapped[MQ_MEM_HUGETLB];
    CHECK(mapped >= (4u << 20) && mapped < chunk && st.mapped[MQ_MEM_THP] == 0 && st.mapped[MQ_MEM_4K] == 0,
          "hugetlb mapped %zu (the free pages, at least 2, less than the chunk %zu)", mapped, chunk);
    size_t freed = mq_arena_trim(a);
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == (4u << 20) && freed == mapped - (4u << 20), "after trim %zu mapped, %zu freed",
          st.mapped[MQ_MEM_HUGETLB], freed);
    CHECK(p[(3 << 20) - 1] == 2 && mq_arena_owns(a, p + (3 << 20) - 1), "data kept");
    CHECK(!mq_arena_owns(a, p + (4 << 20)), "the trimmed tail is no longer the arena's");
    mq_arena_destroy(a);
    /* someone else adds a page meanwhile: giving back keeps it */
    long nr = mq_hugepages_nr();
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
    if (f) {
        fprintf(f, "%ld\n", nr + 1);
        fclose(f);
    }
    long after = mq_hugepages_giveback(added);
    CHECK(after == nr + 1 - added, "after give-back %ld, expected %ld", after, nr + 1 - added);
    CHECK(mq_hugepages_giveback(0) == -EINVAL, "nothing to give back");
    CHECK(mq_hugepages_giveback(1) >= 0, "the page 'someone else' added given back too");
}

/* Pages a mapping has reserved but not touched yet are in HugePages_Free but cannot back
 * another mapping: mq_hugepages_free() leaves them out (it counted them, and a mapping
 * sized from it then fell back to THP whole). Retried: other processes move the pool. */
static void test_free_excludes_reserved(void)
{
    if (geteuid() != 0)
        return;
    long added = reserve(2);
    if (added < 2) {
        if (added > 0)
            mq_hugepages_giveback(added);
        SKIP("the kernel gave %ld of 2 huge pages (fragmented memory)", added);
    }
    int seen = 0;
    for (int attempt = 0; attempt < 5 && !seen; attempt++) {
        long before = mq_hugepages_free();
        mq_mem_kind kind;
        void *p = mq_mem_map(2u << 20, 1, 0, &kind); /* one page, reserved, never touched */
        long during = mq_hugepages_free();
        if (p)
            mq_mem_unmap(p, 2u << 20);
        seen = p && kind == MQ_MEM_HUGETLB && during == before - 1;
        if (!seen)
            usleep(100 * 1000);
    }
    CHECK(seen, "an untouched hugetlb mapping did not lower mq_hugepages_free() by its page (5 attempts)");
    mq_hugepages_giveback(added);
}

int main(void)
{
    RUN(test_alloc_align_account);
    RUN(test_hugetlb_reserved);
    RUN(test_partial_chunk_trim_giveback);
    RUN(test_free_excludes_reserved);
    return harness_done();
}
