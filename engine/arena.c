/* engine/arena.c — see arena.h. */
#define _GNU_SOURCE
#include "engine/arena.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define MAP_HUGE_2MB_FLAG (21 << MAP_HUGE_SHIFT)

#define ARENA_DEFAULT_CHUNK ((size_t)256 << 20)
#define ARENA_MAX_MAPPINGS  256

const char *mq_mem_kind_name(mq_mem_kind k)
{
    switch (k) {
    case MQ_MEM_HUGETLB: return "hugetlb";
    case MQ_MEM_THP: return "thp";
    case MQ_MEM_4K: return "4k";
    default: return "?";
    }
}

static size_t round_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

int mq_thp_available(void)
{
    char buf[128] = { 0 };
    int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    /* the active setting is bracketed: "always [madvise] never" */
    return strstr(buf, "[never]") == NULL;
}

static long meminfo_value(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -errno;
    char line[256];
    long v = -ENOENT;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long mq_hugepages_free(void)
{
    /* HugePages_Free counts pages that mappings have reserved but not touched yet (a
     * hugetlb KV segment's unused blocks): those cannot back a new mapping */
    long fr = meminfo_value("HugePages_Free");
    long rsvd = meminfo_value("HugePages_Rsvd");
    if (fr < 0)
        return fr;
    return rsvd > 0 ? (fr > rsvd ? fr - rsvd : 0) : fr;
}
long mq_meminfo_kib(const char *key)
{
    return meminfo_value(key);
}

void *mq_mem_map(size_t bytes, int allow_hugetlb, int allow_thp, mq_mem_kind *kind)
{
    size_t len = round_up(bytes ? bytes : 1, MQ_HUGEPAGE_BYTES);
    if (allow_hugetlb && mq_hugepages_free() >= (long)(len / MQ_HUGEPAGE_BYTES)) {
        /* hugetlb reserves the pages at mmap time, so a shortage fails here, cleanly */
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB_FLAG,
                       -1, 0);
        if (p != MAP_FAILED) {
            if (kind)
                *kind = MQ_MEM_HUGETLB;
            return p;
        }
    }
    /* Over-map by 2 MiB and trim, so the region starts on a huge page boundary (THP can
     * only back aligned 2 MiB ranges). */
    size_t over = len + MQ_HUGEPAGE_BYTES;
    uint8_t *raw = mmap(NULL, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = round_up((uintptr_t)raw, MQ_HUGEPAGE_BYTES);
    size_t head = start - (uintptr_t)raw, tail = over - head - len;
    if (head)
        munmap(raw, head);
    if (tail)
        munmap((uint8_t *)start + len, tail);
    void *p = (void *)start;
    mq_mem_kind k = MQ_MEM_4K;
    if (allow_thp && mq_thp_available() && madvise(p, len, MADV_HUGEPAGE) == 0)
        k = MQ_MEM_THP;
    if (kind)
        *kind = k;
    return p;
}

void mq_mem_unmap(void *p, size_t bytes)
{
    if (p)
        munmap(p, round_up(bytes ? bytes : 1, MQ_HUGEPAGE_BYTES));
}

static long read_long_file(const char *path)
{
    char buf[64] = { 0 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n <= 0)
        return n < 0 ? -e : -EIO;
    return strtol(buf, NULL, 10);
}

static int write_long_file(const char *path, long v)
{
    char buf[64];
    int len = snprintf(buf, sizeof buf, "%ld\n", v);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, buf, (size_t)len);
    int e = errno;
    close(fd);
    return n == len ? 0 : (n < 0 ? -e : -EIO);
}

#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

long mq_hugepages_reserve(long pages, long *prev)
{
    if (pages <= 0)
        return -EINVAL;
    if (geteuid() != 0)
        return -EPERM;
    long cur = read_long_file(NR_HUGEPAGES);
    if (cur < 0)
        return cur;
    int r = write_long_file(NR_HUGEPAGES, cur + pages);
    if (r < 0)
        return r;
    long now = read_long_file(NR_HUGEPAGES); /* the kernel may find fewer free pages */
    if (now < 0)
        return now;
    if (prev)
        *prev = cur;
    return now - cur;
}

int mq_hugepages_release(long prev)
{
    if (prev < 0)
        return -EINVAL;
    return write_long_file(NR_HUGEPAGES, prev);
}

long mq_hugepages_giveback(long added)
{
    if (added <= 0)
        return -EINVAL;
    long cur = read_long_file(NR_HUGEPAGES);
    if (cur < 0)
        return cur;
    long want = cur > added ? cur - added : 0;
    int r = write_long_file(NR_HUGEPAGES, want);
    if (r < 0)
        return r;
    return read_long_file(NR_HUGEPAGES);
}

struct mapping {
    uint8_t *base;
    size_t len, used;
    mq_mem_kind kind;
};

struct mq_arena {
    pthread_mutex_t mu;
    mq_arena_opts o;
    struct mapping map[ARENA_MAX_MAPPINGS];
    int n_map;
    size_t used;
};

void mq_arena_opts_default(mq_arena_opts *o)
{
    o->chunk_bytes = ARENA_DEFAULT_CHUNK;
    o->allow_hugetlb = 1;
    o->allow_thp = 1;
}

int mq_arena_create(mq_arena **out, const mq_arena_opts *o)
{
    mq_arena *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    if (o)
        a->o = *o;
    else
        mq_arena_opts_default(&a->o);
    if (!a->o.chunk_bytes)
        a->o.chunk_bytes = ARENA_DEFAULT_CHUNK;
    a->o.chunk_bytes = round_up(a->o.chunk_bytes, MQ_HUGEPAGE_BYTES);
    pthread_mutex_init(&a->mu, NULL);
    *out = a;
    return 0;
}

/* Caller holds a->mu. Maps `want` bytes, or fewer (at least `need`) when that is what the
 * free hugetlb pages cover: a reservation smaller than a chunk is used rather than passed
 * over for THP (mq_arena_trim gives back what the load did not use). */
static int add_mapping(mq_arena *a, size_t want, size_t need)
{
    if (a->n_map == ARENA_MAX_MAPPINGS)
        return -ENOMEM;
    size_t len = round_up(want, MQ_HUGEPAGE_BYTES);
    need = round_up(need, MQ_HUGEPAGE_BYTES);
    if (a->o.allow_hugetlb && need < len) {
        long fr = mq_hugepages_free();
        if (fr > 0 && (size_t)fr * MQ_HUGEPAGE_BYTES >= need && (size_t)fr * MQ_HUGEPAGE_BYTES < len)
            len = (size_t)fr * MQ_HUGEPAGE_BYTES;
    }
    mq_mem_kind kind;
    void *p = mq_mem_map(len, a->o.allow_hugetlb, a->o.allow_thp, &kind);
    if (!p)
        return -errno;
    a->map[a->n_map++] = (struct mapping){ .base = p, .len = len, .used = 0, .kind = kind };
    return 0;
}

int mq_arena_reserve(mq_arena *a, size_t bytes)
{
    pthread_mutex_lock(&a->mu);
    int r = add_mapping(a, bytes, bytes);
    pthread_mutex_unlock(&a->mu);
    return r;
}

void *mq_arena_alloc(mq_arena *a, size_t bytes, size_t align, const char *what)
{
    (void)what;
    if (!align)
        align = 64;
    if ((align & (align - 1)) || align > MQ_HUGEPAGE_BYTES) {
        errno = EINVAL;
        return NULL;
    }
    if (!bytes)
        bytes = 1;
    pthread_mutex_lock(&a->mu);
    void *p = NULL;
    /* first fit over the mappings: large reservations are filled before new chunks */
    for (int pass = 0; pass < 2 && !p; pass++) {
        for (int i = 0; i < a->n_map; i++) {
            struct mapping *m = &a->map[i];
            size_t off = round_up(m->used, align);
            if (off + bytes <= m->len) {
                p = m->base + off;
                a->used += off + bytes - m->used;
                m->used = off + bytes;
                break;
            }
        }
        if (!p && pass == 0) {
            int r = add_mapping(a, bytes > a->o.chunk_bytes ? bytes : a->o.chunk_bytes, bytes);
            if (r < 0) {
                errno = -r;
                break;
            }
        }
    }
    pthread_mutex_unlock(&a->mu);
    return p; /* fresh anonymous mappings are zeroed and never reused */
}

void *mq_arena_alloc_cb(void *ctx, size_t bytes, size_t align, const char *what)
{
    return mq_arena_alloc((mq_arena *)ctx, bytes, align, what);
}

void mq_arena_destroy(mq_arena *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n_map; i++)
        mq_mem_unmap(a->map[i].base, a->map[i].len);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

void mq_arena_stats_get(mq_arena *a, mq_arena_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->n_map; i++)
        st->mapped[a->map[i].kind] += a->map[i].len;
    st->used = a->used;
    st->mappings = a->n_map;
    pthread_mutex_unlock(&a->mu);
}

void mq_arena_describe(mq_arena *a, char *buf, size_t len)
{
    mq_arena_stats st;
    mq_arena_stats_get(a, &st);
    size_t off = 0;
    buf[0] = 0;
    for (int k = 0; k < MQ_MEM_KINDS; k++) {
        if (!st.mapped[k])
            continue;
        int n = snprintf(buf + off, len - off, "%s%.1f MiB %s", off ? " + " : "", st.mapped[k] / 1048576.0,
                         mq_mem_kind_name((mq_mem_kind)k));
        if (n < 0 || (size_t)n >= len - off)
            break;
        off += (size_t)n;
    }
    if (!off)
        snprintf(buf, len, "nothing mapped");
}

int mq_arena_owns(mq_arena *a, const void *p)
{
    const uint8_t *q = p;
    int r = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->n_map && !r; i++)
        r = q >= a->map[i].base && q < a->map[i].base + a->map[i].len;
    pthread_mutex_unlock(&a->mu);
    return r;
}

size_t mq_arena_trim(mq_arena *a)
{
    size_t freed = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->n_map; i++) {
        struct mapping *m = &a->map[i];
        size_t keep = round_up(m->used ? m->used : 1, MQ_HUGEPAGE_BYTES);
        if (keep < m->len && munmap(m->base + keep, m->len - keep) == 0) {
            freed += m->len - keep;
            m->len = keep;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return freed;
}

long mq_hugepages_nr(void)
{
    return read_long_file(NR_HUGEPAGES);
}
