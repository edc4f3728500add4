/* mqd's system-call allow-list (daemon/seccomp.c), installed in a child process the way
 * mqd installs it: what mqd needs still works, what a compromised mqd would want is
 * refused — in "on" mode with EPERM, a log line on stderr and a count; in "kill" mode the
 * process dies of SIGSYS — and a thread that existed before the filter is filtered too. */
#define _GNU_SOURCE
#include "tests/harness.h"
#include "daemon/seccomp.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct result {
    int install_rc, unix_ok, inet_errno, ptrace_errno, setuid_errno, exec_errno, raise_errno, read_ok, thread_errno;
    unsigned long long refused;
    int last;
} result;

static int errno_of(long rc)
{
    return rc < 0 ? errno : 0;
}

static void *late_socket(void *arg)
{
    pthread_barrier_t *b = arg;
    pthread_barrier_wait(b); /* the filter is installed now */
    long rc = socket(AF_INET, SOCK_DGRAM, 0);
    return (void *)(intptr_t)errno_of(rc);
}

/* In a child with stderr on `logfd`: installs the filter in `mode`, tries each call and
 * writes a result to `out`. */
static void child(enum mqd_seccomp_mode mode, int out, int logfd)
{
    dup2(logfd, STDERR_FILENO);
    result r = { 0 };
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    pthread_t th;
    pthread_create(&th, NULL, late_socket, &b);
    char err[256];
    r.install_rc = mqd_seccomp_install(mode, 0, err, sizeof err);
    pthread_barrier_wait(&b);
    void *terr;
    pthread_join(th, &terr);
    r.thread_errno = (int)(intptr_t)terr;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    r.unix_ok = fd >= 0;
    if (fd >= 0)
        close(fd);
    int inet = socket(AF_INET, SOCK_STREAM, 0);
    r.inet_errno = errno_of(inet);
    if (inet >= 0)
        close(inet);
    if (mode == MQD_SECCOMP_OFF) /* the calls below would work: being traced, exec'ing */
        _exit(write(out, &r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
    r.ptrace_errno = errno_of(ptrace(PTRACE_TRACEME, 0, NULL, NULL));
    r.setuid_errno = errno_of(setuid(getuid())); /* even a change to nothing */
    char *argv[] = { "/bin/true", NULL };
    r.exec_errno = errno_of(execv(argv[0], argv));
    struct rlimit lim;
    r.read_ok = prlimit(0, RLIMIT_NOFILE, NULL, &lim) == 0;
    r.raise_errno = errno_of(prlimit(0, RLIMIT_NOFILE, &lim, NULL)); /* setting, even unchanged */
    r.refused = mqd_seccomp_refused(&r.last);
    _exit(write(out, &r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
}

/* Runs child() in mode; its wait status, its result and what it logged. */
static int run(enum mqd_seccomp_mode mode, result *r, char *log, size_t loglen)
{
    int p[2], l[2];
    if (pipe(p) || pipe(l))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        close(l[0]);
        child(mode, p[1], l[1]);
    }
    close(p[1]);
    close(l[1]);
    memset(r, 0, sizeof *r);
    ssize_t n = read(p[0], r, sizeof *r);
    harness_read_all(l[0], log, loglen);
    close(p[0]);
    close(l[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (n != (ssize_t)sizeof *r)
        r->install_rc = -9999;
    return st;
}

static void test_on_refuses_logs_and_counts(void)
{
    result r;
    char log[8192];
    int st = run(MQD_SECCOMP_ON, &r, log, sizeof log);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && r.install_rc == 0, "child status %d, install %d", st, r.install_rc);
    CHECK(r.unix_ok && r.read_ok, "allowed calls failed: AF_UNIX socket %d, reading a limit %d", r.unix_ok, r.read_ok);
    CHECK(r.inet_errno == EPERM && r.ptrace_errno == EPERM && r.setuid_errno == EPERM && r.exec_errno == EPERM &&
              r.raise_errno == EPERM,
          "errno of AF_INET socket %d, ptrace %d, setuid %d, execve %d, prlimit set %d (EPERM = %d)", r.inet_errno,
          r.ptrace_errno, r.setuid_errno, r.exec_errno, r.raise_errno, EPERM);
    CHECK(r.thread_errno == EPERM, "a thread started before the filter: socket(AF_INET) errno %d", r.thread_errno);
#if defined(__x86_64__)
    char name[64];
    CHECK(r.refused == 6 && r.last == SYS_prlimit64, "refused %llu, last %d (%s)", r.refused, r.last,
          mqd_seccomp_name(r.last, name, sizeof name));
    CHECK(harness_count(log, "warning: seccomp: refused system call ") == 6, "log:\n%s", log);
    CHECK(!strcmp(mqd_seccomp_name(SYS_ptrace, name, sizeof name), "ptrace"), "name of ptrace: %s", name);
    printf("    %s", log);
#endif
}

static void test_kill_mode_kills(void)
{
    result r;
    char log[1024];
    int st = run(MQD_SECCOMP_KILL, &r, log, sizeof log);
    /* the thread's socket(AF_INET) is the first refused call: the whole process dies */
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS, "status %d: not killed by SIGSYS", st);
}

static void test_off_allows(void)
{
    result r;
    char log[1024];
    int st = run(MQD_SECCOMP_OFF, &r, log, sizeof log);
    CHECK(WIFEXITED(st) && r.install_rc == 0 && r.inet_errno == 0 && r.refused == 0 && r.thread_errno == 0,
          "off: status %d, AF_INET errno %d, thread %d, refused %llu", st, r.inet_errno, r.thread_errno, r.refused);
}

int main(void)
{
    RUN(test_on_refuses_logs_and_counts);
    RUN(test_kill_mode_kills);
    RUN(test_off_allows);
    return harness_done();
}
