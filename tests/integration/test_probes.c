/* tests/integration/test_probes.c — the BPF probes (daemon/probes.h) on this process.
 *
 * Two named threads with opposite profiles: "mq-sleeper" sleeps 300 ms in total and
 * touches almost no memory; "mq-faulter" touches every 4 KiB page of a fresh 64 MiB
 * anonymous mapping (THP off, so one fault per page) and never sleeps. The probes must
 * attribute the off-CPU time to the sleeper's tid and the faults to the faulter's, and
 * must not report a forked child's faults. BPF is expected to work here (root, kernel
 * BTF): a failure to load is a test failure with the reason, not a skip.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/harness.h"
#include "daemon/probes.h"

#define FAULT_BYTES (64u << 20)
#define PAGE        4096u
#define SLEEP_MS    300

typedef struct seen {
    pid_t tid;
    char comm[16];
    uint64_t offcpu_ns, faults;
    int found;
} seen;

typedef struct scan {
    seen sleeper, faulter, child, main;
    int rows;
} scan;

static void on_row(pid_t tid, const char *comm, uint64_t off, uint64_t faults, void *ctx)
{
    scan *s = ctx;
    seen *all[] = { &s->sleeper, &s->faulter, &s->child, &s->main };
    s->rows++;
    for (int i = 0; i < 4; i++)
        if (all[i]->tid == tid) {
            all[i]->found = 1;
            all[i]->offcpu_ns = off;
            all[i]->faults = faults;
            snprintf(all[i]->comm, sizeof all[i]->comm, "%s", comm);
        }
}

static pid_t gettid_(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static void *sleeper(void *arg)
{
    pthread_setname_np(pthread_self(), "mq-sleeper");
    *(pid_t *)arg = gettid_();
    for (int i = 0; i < SLEEP_MS / 10; i++) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *faulter(void *arg)
{
    pthread_setname_np(pthread_self(), "mq-faulter");
    *(pid_t *)arg = gettid_();
    uint8_t *m = mmap(NULL, FAULT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    madvise(m, FAULT_BYTES, MADV_NOHUGEPAGE); /* one fault per 4 KiB page */
    for (size_t off = 0; off < FAULT_BYTES; off += PAGE)
        m[off] = (uint8_t)off | 1;
    munmap(m, FAULT_BYTES);
    return NULL;
}

static void test_probes_attribute_to_threads(void)
{
    char err[256] = "";
    mq_probes *p = NULL;
    int rc = mq_probes_start(&p, getpid(), err, sizeof err);
    CHECK(rc == 0, "mq_probes_start failed (%d): %s", rc, err);
    if (rc)
        return;

    scan s = { 0 };
    s.main.tid = gettid_();
    /* a child process faulting the same way: other tgid, must not show up */
    pid_t child = fork();
    if (child == 0) {
        uint8_t *m = mmap(NULL, FAULT_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED)
            for (size_t off = 0; off < FAULT_BYTES; off += PAGE)
                m[off] = 1;
        _exit(0);
    }
    s.child.tid = child;
    pthread_t a, b;
    pthread_create(&a, NULL, sleeper, &s.sleeper.tid);
    pthread_create(&b, NULL, faulter, &s.faulter.tid);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    waitpid(child, NULL, 0);

    rc = mq_probes_read(p, on_row, &s);
    CHECK(rc == 0, "mq_probes_read: %d", rc);
    printf("    rows %d; sleeper tid %d '%s' off-CPU %.1f ms, %llu faults; "
           "faulter tid %d '%s' off-CPU %.1f ms, %llu faults\n",
           s.rows, s.sleeper.tid, s.sleeper.comm, s.sleeper.offcpu_ns / 1e6, (unsigned long long)s.sleeper.faults,
           s.faulter.tid, s.faulter.comm, s.faulter.offcpu_ns / 1e6, (unsigned long long)s.faulter.faults);

    CHECK(s.sleeper.found, "sleeper tid %d not reported", s.sleeper.tid);
    CHECK(s.faulter.found, "faulter tid %d not reported", s.faulter.tid);
    CHECK(!s.child.found, "forked child %d (another process) was reported", child);
    CHECK(strcmp(s.sleeper.comm, "mq-sleeper") == 0, "sleeper comm '%s'", s.sleeper.comm);
    CHECK(strcmp(s.faulter.comm, "mq-faulter") == 0, "faulter comm '%s'", s.faulter.comm);
    /* the sleeper slept 30 x 10 ms: at least that long off a CPU */
    CHECK(s.sleeper.offcpu_ns >= (uint64_t)SLEEP_MS * 1000000u * 95 / 100, "sleeper off-CPU %.1f ms < %d ms slept",
          s.sleeper.offcpu_ns / 1e6, SLEEP_MS);
    CHECK(s.sleeper.offcpu_ns < 10ull * 1000000000u, "sleeper off-CPU %.1f ms implausible", s.sleeper.offcpu_ns / 1e6);
    /* the faulter touched 16384 fresh pages; the sleeper only its stack */
    uint64_t pages = FAULT_BYTES / PAGE;
    CHECK(s.faulter.faults >= pages, "faulter %llu faults < %llu pages touched", (unsigned long long)s.faulter.faults,
          (unsigned long long)pages);
    CHECK(s.faulter.faults < pages + pages / 4, "faulter %llu faults, far more than %llu pages",
          (unsigned long long)s.faulter.faults, (unsigned long long)pages);
    CHECK(s.sleeper.faults < pages / 16, "sleeper has %llu faults", (unsigned long long)s.sleeper.faults);
    /* the faulter never sleeps: it can only be preempted, far less than the sleeper waits */
    CHECK(s.faulter.offcpu_ns < s.sleeper.offcpu_ns, "faulter off-CPU %.1f ms >= sleeper's %.1f ms",
          s.faulter.offcpu_ns / 1e6, s.sleeper.offcpu_ns / 1e6);

    /* counters only grow; the main thread waited in pthread_join: it has off-CPU time */
    scan s2 = s;
    s2.rows = 0;
    mq_probes_read(p, on_row, &s2);
    CHECK(s2.faulter.faults >= s.faulter.faults, "faults went down");
    CHECK(s2.main.found && s2.main.offcpu_ns > 0, "main thread (waited in join) not reported off-CPU");
    mq_probes_stop(p);
}

static void test_probes_other_process_and_errors(void)
{
    /* probes on a tgid that runs nothing: loads fine, reports nothing */
    char err[256] = "";
    mq_probes *p = NULL;
    int rc = mq_probes_start(&p, 0x3ffffff0, err, sizeof err);
    CHECK(rc == 0, "start on an idle tgid: %d %s", rc, err);
    if (rc)
        return;
    struct timespec ts = { 0, 20 * 1000 * 1000 };
    nanosleep(&ts, NULL);
    scan s = { 0 };
    mq_probes_read(p, on_row, &s);
    CHECK(s.rows == 0, "%d rows for a process that does not exist", s.rows);
    mq_probes_stop(p);
    mq_probes_stop(NULL);

    /* without privileges: a negative errno and a reason, no crash (mqd then runs without) */
    int pfd[2];
    if (pipe(pfd) != 0)
        return;
    pid_t c = fork();
    if (c == 0) {
        close(pfd[0]);
        char e2[256] = "";
        mq_probes *q = NULL;
        int r = -1;
        if (setresgid(65534, 65534, 65534) == 0 && setresuid(65534, 65534, 65534) == 0)
            r = mq_probes_start(&q, getppid(), e2, sizeof e2);
        dprintf(pfd[1], "%d %s", r, e2);
        _exit(q ? 1 : 0);
    }
    close(pfd[1]);
    char buf[300] = "";
    ssize_t got = read(pfd[0], buf, sizeof buf - 1);
    close(pfd[0]);
    int status = 0;
    waitpid(c, &status, 0);
    buf[got > 0 ? got : 0] = 0;
    printf("    as uid 65534: %s\n", buf);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "unprivileged start returned a handle");
    CHECK(atoi(buf) == -EPERM && strstr(buf, "CAP_BPF"), "unprivileged start: \"%s\", want -EPERM and a hint", buf);
}

/* make deps installs clang and bpftool, so a build without the probes is a failure */
static void test_probes_built(void)
{
    CHECK(mq_probes_built(), "built without BPF (clang/bpftool/kernel BTF missing at build time)");
}

int main(void)
{
    RUN(test_probes_built);
    RUN(test_probes_attribute_to_threads);
    RUN(test_probes_other_process_and_errors);
    return harness_done();
}
