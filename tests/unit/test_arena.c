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

static void test_hugetlb_reserved(void)
{
    if (geteuid() != 0) {
        CHECK(mq_hugepages_reserve(2, NULL) == -EPERM, "non-root reservation refused");
        return;
    }
    long prev = -1;
    long got = mq_hugepages_reserve(2, &prev);
    CHECK(got >= 0, "reserve 2 pages: %ld", got);
    if (got < 2) { /* fragmented memory may give fewer: still must not crash */
        if (got >= 0)
            mq_hugepages_release(prev);
        return;
    }
    mq_arena_opts o;
    mq_arena_opts_default(&o);
    o.chunk_bytes = 2 << 20;
    mq_arena *a = NULL;
    CHECK(mq_arena_create(&a, &o) == 0, "create");
    uint8_t *p = mq_arena_alloc(a, 1 << 20, 4096, "h");
    CHECK(p != NULL, "alloc");
    if (p)
        memset(p, 1, 1 << 20);
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == (2u << 20), "hugetlb mapped %zu", st.mapped[MQ_MEM_HUGETLB]);
    /* a bigger request than the free pool falls back instead of failing */
    uint8_t *q = mq_arena_alloc(a, 8 << 20, 0, "big");
    CHECK(q != NULL, "fallback alloc");
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_THP] + st.mapped[MQ_MEM_4K] >= (8u << 20), "fallback kind accounted");
    mq_arena_destroy(a);
    CHECK(mq_hugepages_release(prev) == 0, "release");
}

/* A reservation smaller than a chunk is used (the mapping shrinks to the free pages),
 * mq_arena_trim returns the unused tail to the pool, and mq_hugepages_giveback lowers
 * nr_hugepages by what was added, keeping a change made by someone else meanwhile. */
static void test_partial_chunk_trim_giveback(void)
{
    if (geteuid() != 0)
        return; /* covered by test_hugetlb_reserved's EPERM check */
    long prev = -1;
    long got = mq_hugepages_reserve(4, &prev);
    CHECK(got >= 0, "reserve 4 pages: %ld", got);
    if (got < 4) {
        if (got >= 0)
            mq_hugepages_release(prev);
        return;
    }
    long free0 = mq_hugepages_free();
    mq_arena_opts o;
    mq_arena_opts_default(&o);
    o.chunk_bytes = 16 << 20; /* 8 pages: more than the pool has */
    mq_arena *a = NULL;
    CHECK(mq_arena_create(&a, &o) == 0, "create");
    uint8_t *p = mq_arena_alloc(a, 3 << 20, 0, "w");
    CHECK(p != NULL, "alloc");
    if (p)
        memset(p, 2, 3 << 20);
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == (size_t)free0 << 21 && st.mapped[MQ_MEM_THP] == 0,
          "hugetlb mapped %zu for %ld free pages", st.mapped[MQ_MEM_HUGETLB], free0);
    size_t freed = mq_arena_trim(a);
    mq_arena_stats_get(a, &st);
    CHECK(st.mapped[MQ_MEM_HUGETLB] == (4u << 20) && freed == ((size_t)free0 << 21) - (4u << 20),
          "after trim %zu mapped, %zu freed", st.mapped[MQ_MEM_HUGETLB], freed);
    CHECK(mq_hugepages_free() == free0 - 2, "free pages after trim %ld", mq_hugepages_free());
    CHECK(p && p[(3 << 20) - 1] == 2 && mq_arena_owns(a, p + (3 << 20) - 1), "data kept");
    mq_arena_destroy(a);
    /* someone else adds a page meanwhile: giving back keeps it */
    long nr = mq_hugepages_nr();
    CHECK(nr == prev + 4, "nr_hugepages %ld, expected %ld", nr, prev + 4);
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
    if (f) {
        fprintf(f, "%ld\n", nr + 1);
        fclose(f);
    }
    long after = mq_hugepages_giveback(4);
    CHECK(after == prev + 1, "after give-back %ld, expected %ld", after, prev + 1);
    CHECK(mq_hugepages_giveback(0) == -EINVAL, "nothing to give back");
    CHECK(mq_hugepages_release(prev) == 0, "release");
}

int main(void)
{
    RUN(test_alloc_align_account);
    RUN(test_hugetlb_reserved);
    RUN(test_partial_chunk_trim_giveback);
    return harness_done();
}
