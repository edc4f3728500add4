/* tests/harness.h — the smallest test harness that does the job.
 *
 * A test file defines `static void test_x(void)` functions and a main():
 *     int main(void) { RUN(test_x); RUN(test_y); return harness_done(); }
 * CHECK(cond, fmt, ...) records a failure (with file:line and the message) and
 * goes on; a test passes when none of its CHECKs failed. harness_done() prints
 * "@@ <passed> <failed>" for tests/run.sh and returns the exit status.
 * Shared data comes from $MQ_SHARED (default ../shared); a missing file is a
 * failure, never a skip.
 */
#ifndef MQ_TESTS_HARNESS_H
#define MQ_TESTS_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int harness_cur_fail, harness_passed, harness_failed;

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

#define RUN(fn)                                                              \
    do {                                                                     \
        harness_cur_fail = 0;                                                \
        fn();                                                                \
        if (harness_cur_fail) {                                              \
            harness_failed++;                                                \
            printf("  FAIL %s (%d checks failed)\n", #fn, harness_cur_fail); \
        } else {                                                             \
            harness_passed++;                                                \
            printf("  ok   %s\n", #fn);                                      \
        }                                                                    \
        fflush(stdout);                                                      \
    } while (0)

static inline int harness_done(void)
{
    printf("@@ %d %d\n", harness_passed, harness_failed);
    return harness_failed ? 1 : 0;
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
