/* tests/harness.h — the smallest test harness that does the job.
 *
 * A test file defines `static void test_x(void)` functions and a main():
 *     int main(void) { RUN(test_x); RUN(test_y); return harness_done(); }
 *
 * Rules (tests/unit/test_harness.c checks each of them, and tests/run.sh's totals):
 * - CHECK(cond, fmt, ...) records a failure (file:line and the message) and goes on.
 *   A test passes when none of its CHECKs failed.
 * - A CHECK that fails outside any RUN (set-up in main, clean-up after the last test)
 *   counts as one failed test per stretch of code between two RUNs, named after the
 *   neighbouring test; it is never lost.
 * - SKIP(fmt, ...) inside a test ends that test at once (longjmp back to RUN; free
 *   nothing you hold first) and counts it as skipped with the reason, unless one of its
 *   CHECKs already failed: then it counts as failed. Outside any test it skips every
 *   later RUN with that reason (each counted as skipped; the program counts as one
 *   skipped test if no RUN follows). Skip only for what this machine cannot do (not
 *   root, no such CPU feature): a missing shared file or a build gap is a failure.
 * - harness_done() prints "@@ <passed> <failed> <skipped>" for tests/run.sh and returns
 *   the exit status: 1 on any failure, 77 when every test was skipped, else 0. A program
 *   that ran no test and skipped none fails ("no test ran").
 * Shared data comes from $MQ_SHARED (default ../shared).
 */
#ifndef MQ_TESTS_HARNESS_H
#define MQ_TESTS_HARNESS_H

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/mq_kernels.h"

#define HARNESS_EXIT_SKIP 77 /* automake's and liburing's "skipped" exit status */

static int harness_cur_fail, harness_passed, harness_failed, harness_skipped;
static int harness_in_run, harness_skip_hit, harness_skip_rest;
static char harness_skip_reason[512];
static const char *harness_prev_test; /* the last test RUN started, for set-up messages */
static jmp_buf harness_skip_jmp;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            harness_cur_fail++;                                                              \
            if (harness_cur_fail <= 10) {                                                    \
                fprintf(stderr, "    %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
                fprintf(stderr, __VA_ARGS__);                                                \
                fputc('\n', stderr);                                                         \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* A direct call (not through a pointer), so the compiler sees each test as before. */
#define RUN(fn)                                \
    do {                                       \
        if (harness_begin(#fn)) {              \
            if (setjmp(harness_skip_jmp) == 0) \
                fn();                          \
            harness_end(#fn);                  \
        }                                      \
    } while (0)
#define SKIP(...) harness_skip(__VA_ARGS__)

/* Failed CHECKs outside any test since the last RUN: one failure, named by its place. */
static inline void harness_flush_outside(const char *next)
{
    if (harness_in_run || !harness_cur_fail)
        return;
    harness_failed++;
    if (!harness_prev_test)
        printf("  FAIL set-up before %s (%d checks failed)\n", next ? next : "any test", harness_cur_fail);
    else
        printf("  FAIL after %s, outside any test (%d checks failed)\n", harness_prev_test, harness_cur_fail);
    fflush(stdout);
    harness_cur_fail = 0;
}

/* RUN's first half: 0 when the test is skipped without running. */
static inline int harness_begin(const char *name)
{
    harness_flush_outside(name);
    harness_prev_test = name;
    if (harness_skip_rest) {
        harness_skipped++;
        printf("  skip %s: %s\n", name, harness_skip_reason);
        fflush(stdout);
        return 0;
    }
    harness_cur_fail = 0;
    harness_skip_hit = 0;
    harness_in_run = 1;
    return 1;
}

static inline void harness_end(const char *name)
{
    harness_in_run = 0;
    if (harness_cur_fail) {
        harness_failed++;
        printf("  FAIL %s (%d checks failed)%s%s\n", name, harness_cur_fail, harness_skip_hit ? ", then skipped: " : "",
               harness_skip_hit ? harness_skip_reason : "");
    } else if (harness_skip_hit) {
        harness_skipped++;
        printf("  skip %s: %s\n", name, harness_skip_reason);
    } else {
        harness_passed++;
        printf("  ok   %s\n", name);
    }
    fflush(stdout);
    harness_cur_fail = 0;
}

__attribute__((format(printf, 1, 2))) static inline void harness_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(harness_skip_reason, sizeof harness_skip_reason, fmt, ap);
    va_end(ap);
    if (harness_in_run) {
        harness_skip_hit = 1;
        longjmp(harness_skip_jmp, 1);
    }
    harness_skip_rest = 1;
    printf("  skipping every test that follows: %s\n", harness_skip_reason);
    fflush(stdout);
}

static inline int harness_done(void)
{
    harness_flush_outside(NULL);
    if (harness_skip_rest && harness_passed + harness_failed + harness_skipped == 0) {
        harness_skipped = 1;
        printf("  skip (the whole program): %s\n", harness_skip_reason);
    }
    if (harness_passed + harness_failed + harness_skipped == 0) {
        harness_failed = 1;
        printf("  FAIL no test ran\n");
    }
    printf("@@ %d %d %d\n", harness_passed, harness_failed, harness_skipped);
    fflush(stdout);
    if (harness_failed)
        return 1;
    return harness_passed ? 0 : HARNESS_EXIT_SKIP;
}

/* $MQ_SHARED/<rel>, in a static buffer per call site's needs (copy if kept). */
static inline const char *shared_path(const char *rel)
{
    static char buf[4096];
    const char *root = getenv("MQ_SHARED");
    snprintf(buf, sizeof buf, "%s/%s", root && *root ? root : "../shared", rel);
    return buf;
}

/* Reads a whole file; NULL (and a failure) if it cannot. Caller frees. */
static inline char *harness_read_file(const char *path, size_t *len)
{
    if (len)
        *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        harness_cur_fail++;
        fprintf(stderr, "    cannot open %s (is MQ_SHARED set?)\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) {
        p[n] = 0;
        if (len)
            *len = (size_t)n;
    }
    return p;
}

/* n zeroed bytes aligned to 64 (a cache line, an AVX-512 vector), rounded up to a whole
 * line; NULL if out of memory. free() releases it. */
static inline void *harness_alloc64(size_t n)
{
    size_t len = n ? (n + 63) / 64 * 64 : 64;
    void *p = aligned_alloc(64, len);
    if (p)
        memset(p, 0, len);
    return p;
}

/* How many times `what` occurs in text (a log, a reply), not overlapping. */
static inline int harness_count(const char *text, const char *what)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

/* Reads fd until end of file or until buf (len >= 1 bytes) is full less its NUL
 * terminator, which it writes: a child's output through a pipe. Returns the bytes read. */
static inline size_t harness_read_all(int fd, char *buf, size_t len)
{
    size_t n = 0;
    ssize_t k;
    while (n + 1 < len && (k = read(fd, buf + n, len - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = 0;
    return n;
}

/* Removes path and, for a directory, everything under it (links are removed, never
 * followed): a test's scratch directory. 0, or -1 if anything stayed. */
static inline int harness_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return unlink(path);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char sub[4096];
        if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= (int)sizeof sub)
            rc = -1;
        else
            rc |= harness_rm_rf(sub);
    }
    closedir(d);
    return rmdir(path) < 0 || rc ? -1 : 0;
}

/* The ISAs this CPU runs, scalar first (every kernel test covers each of them). */
static inline int harness_isas(mq_isa out[MQ_ISA_AVX512 + 1])
{
    int n = 0;
    for (int i = MQ_ISA_SCALAR; i <= MQ_ISA_AVX512; i++)
        if (mq_kernels_cpu_has((mq_isa)i))
            out[n++] = (mq_isa)i;
    return n;
}

/* xorshift64* — deterministic test data without global state in the code under test. */
static inline unsigned long long harness_rand(unsigned long long *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}
static inline float harness_uniform(unsigned long long *s) /* [-1, 1) */
{
    return (float)((harness_rand(s) >> 40) * (1.0 / 8388608.0) - 1.0);
}
static inline float harness_gauss(unsigned long long *s)
{
    float a = 0;
    for (int i = 0; i < 12; i++)
        a += (harness_uniform(s) + 1.0f) * 0.5f;
    return a - 6.0f;
}

#endif
