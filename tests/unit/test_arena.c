/* Arena: alignment, no overlap, zeroed memory, accounting of page kinds, hugetlb when
 * pages are reserved (root), THP when allowed, 4k when neither is. */
#include "harness.h"
#include "arena.h"

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
    if (!a) return;
    uint8_t *prev_end = NULL;
    size_t total = 0;
    for (int i = 0; i < 50; i++) {
        size_t bytes = 1000 + (size_t)i * 77777, align = (size_t)64 << (i % 7);
        uint8_t *p = mq_arena_alloc(a, bytes, align, "test");
        CHECK(p != NULL, "alloc %zu", bytes);
        if (!p) break;
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
    if (mq_thp_available()) CHECK(st.mapped[MQ_MEM_THP] == mapped, "THP enabled -> all thp");
    else CHECK(st.mapped[MQ_MEM_4K] == mapped, "THP off -> 4k");
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
    if (got < 2) {   /* fragmented memory may give fewer: still must not crash */
        if (got >= 0) mq_hugepages_release(prev);
        return;
    }
    mq_arena_opts o;
    mq_arena_opts_default(&o);
    o.chunk_bytes = 2 << 20;
    mq_arena *a = NULL;
    CHECK(mq_arena_create(&a, &o) == 0, "create");
    uint8_t *p = mq_arena_alloc(a, 1 << 20, 4096, "h");
    CHECK(p != NULL, "alloc");
    if (p) memset(p, 1, 1 << 20);
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

int main(void)
{
    RUN(test_alloc_align_account);
    RUN(test_hugetlb_reserved);
    return harness_done();
}
