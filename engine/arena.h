/* engine/arena.h — hugepage-backed memory for weights and other long-lived buffers.
 *
 * Owns: large mappings, each backed by the best kind of page available:
 *   hugetlb — 2 MiB pages from the reserved pool (/proc/sys/vm/nr_hugepages), when
 *             enough are free (mqd may reserve them itself, see mq_hugepages_reserve);
 *   thp     — anonymous memory with madvise(MADV_HUGEPAGE), when THP is not "never";
 *   4k      — plain pages.
 * The arena is a bump allocator over such mappings: memory lives until the arena is
 * destroyed (weights live as long as the model). Bytes of each kind are accounted, so the
 * log and `mqctl status` can say what backs the model.
 *
 * Who calls it: model loading (through the mq_alloc callback, mq_arena_alloc_cb), the
 * scheduler, tests. Thread rules: mq_arena_alloc is thread-safe (internal mutex);
 * mq_arena_stats may be called from any thread at any time.
 */
#ifndef MQ_ARENA_H
#define MQ_ARENA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MQ_MEM_HUGETLB = 0, MQ_MEM_THP = 1, MQ_MEM_4K = 2, MQ_MEM_KINDS = 3 } mq_mem_kind;
const char *mq_mem_kind_name(mq_mem_kind k); /* "hugetlb", "thp", "4k" */

#define MQ_HUGEPAGE_BYTES ((size_t)2 << 20)

/* Maps `bytes` (rounded up to 2 MiB) of zeroed memory of the best allowed kind.
 * allow_hugetlb / allow_thp select which kinds may be tried (hugetlb first).
 * Returns NULL with errno set on failure. Unmap with mq_mem_unmap(p, bytes). */
void *mq_mem_map(size_t bytes, int allow_hugetlb, int allow_thp, mq_mem_kind *kind);
void mq_mem_unmap(void *p, size_t bytes);
/* 1 if THP is enabled as "always" or "madvise" (anonymous memory). */
int mq_thp_available(void);
/* 2 MiB hugetlb pages a new mapping can get right now: HugePages_Free less
 * HugePages_Rsvd (/proc/meminfo), or -errno. */
long mq_hugepages_free(void);
/* A /proc/meminfo value ("MemTotal": kB; "HugePages_Free": pages), or -errno. */
long mq_meminfo_kib(const char *key);

/* Reservation of hugetlb pages (root only): raises /proc/sys/vm/nr_hugepages by `pages`
 * and remembers the previous value in *prev so mq_hugepages_release can give them back.
 * Returns the number of pages actually added (the kernel may give fewer), or -errno
 * (-EPERM when not root). */
long mq_hugepages_reserve(long pages, long *prev);
int mq_hugepages_release(long prev);
/* Gives back `added` pages (what mq_hugepages_reserve returned): lowers nr_hugepages by
 * that many from its CURRENT value (not back to the value seen at reservation), so a
 * change someone else made meanwhile is kept. Pages still mapped become surplus pages and
 * return to the kernel when unmapped. Returns nr_hugepages afterwards, or -errno. */
long mq_hugepages_giveback(long added);
/* /proc/sys/vm/nr_hugepages (the persistent pool size), or -errno. */
long mq_hugepages_nr(void);

typedef struct mq_arena mq_arena;

typedef struct mq_arena_opts {
    size_t chunk_bytes; /* granularity of new mappings (default 256 MiB) */
    int allow_hugetlb;  /* default 1 */
    int allow_thp;      /* default 1 */
} mq_arena_opts;

void mq_arena_opts_default(mq_arena_opts *o);
int mq_arena_create(mq_arena **a, const mq_arena_opts *o);
/* Optional: map `bytes` at once up front (e.g. the sum of a load plan) so the whole
 * model sits in as few mappings as possible. */
int mq_arena_reserve(mq_arena *a, size_t bytes);
/* Zeroed memory of `bytes`, aligned to `align` (a power of two <= 2 MiB; 0 = 64).
 * `what` names the buffer in error messages. NULL on failure (errno set). */
void *mq_arena_alloc(mq_arena *a, size_t bytes, size_t align, const char *what);
/* The same with the signature of the model's allocator callback (struct mq_alloc):
 * ctx is the mq_arena. */
void *mq_arena_alloc_cb(void *ctx, size_t bytes, size_t align, const char *what);
void mq_arena_destroy(mq_arena *a);
/* Unmaps the unused tail (whole 2 MiB pages) of every mapping, e.g. after the model is
 * loaded, so unused hugetlb pages go back to the free pool (for the KV segment). Later
 * allocations then need new mappings. Returns the bytes unmapped. */
size_t mq_arena_trim(mq_arena *a);
/* 1 if p lies inside one of the arena's mappings. */
int mq_arena_owns(mq_arena *a, const void *p);

typedef struct mq_arena_stats {
    size_t mapped[MQ_MEM_KINDS]; /* bytes mapped of each kind */
    size_t used;                 /* bytes handed out */
    int mappings;
} mq_arena_stats;
void mq_arena_stats_get(mq_arena *a, mq_arena_stats *st);
/* "1.2 GiB hugetlb + 300 MiB thp" style summary into buf. */
void mq_arena_describe(mq_arena *a, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
