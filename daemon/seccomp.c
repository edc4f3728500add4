/* daemon/seccomp.c — see seccomp.h. */
#define _GNU_SOURCE
#include "daemon/seccomp.h"

#include <errno.h>
#include <linux/bpf.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <ucontext.h>
#include <unistd.h>

#include "common/errmsg.h"

/* What mqd calls after the privilege drop: the event loop and client protocol (sockets it
 * already has, memfds, pipes, io_uring), the load thread (model files, the arena, io_uring
 * reads), the worker pools (futexes, CPU affinity), the scheduler (memory), logging and
 * sd_notify, reloads (config file, NSS lookups of users and groups: files, nscd's socket,
 * NSS modules mapped with mmap), the C library and the sanitizer runtimes of test builds.
 * Names this architecture lacks are skipped. Calls with arguments worth checking are below
 * (socket, socketpair, prctl, prlimit64, ioctl, bpf); anything else is refused. */
static const char *const allowed[] = {
    /* memory */
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "mlock",
    "munlock",
    "membarrier",
    "get_mempolicy",
    /* files and descriptors */
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "close",
    "close_range",
    "open",
    "openat",
    "openat2",
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "fcntl",
    "getdents64",
    "readlink",
    "readlinkat",
    "access",
    "faccessat",
    "faccessat2",
    "unlink",
    "unlinkat",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "fsync",
    "fdatasync",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "memfd_create",
    "eventfd2",
    "signalfd4",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "getcwd",
    /* sockets mqd holds (bound before the drop) and sd_notify's datagram */
    "connect",
    "accept",
    "accept4",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "sendto",
    "recvfrom",
    "getsockopt",
    "setsockopt",
    "shutdown",
    "getsockname",
    "getpeername",
    /* io_uring: the event loop and the weight stream */
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    /* waiting and time */
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    /* threads, signals, the process itself */
    "clone",
    "clone3",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "futex",
    "futex_waitv",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "gettid",
    "getpid",
    "getppid",
    "tgkill",
    "tkill",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    "restart_syscall",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "arch_prctl",
    "getrandom",
    "uname",
    "sysinfo",
    "getrusage",
    "getrlimit",
    "getpriority",
    "sched_getparam",
    "sched_getscheduler",
    /* who am I (no set*id: those are refused) */
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
};

/* Written by the SIGSYS handler, which has no other way to reach mqd's context; read with
 * atomics by status. The only mutable globals of mqd outside its context object. */
static uint64_t refused;
static int last_refused = -1;

/* Signal handler: formats without stdio (async-signal-safe). */
static size_t put_str(char *buf, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap)
        buf[at++] = *s++;
    return at;
}

static size_t put_int(char *buf, size_t at, size_t cap, long v)
{
    char tmp[24];
    int n = 0;
    unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
    do
        tmp[n++] = (char)('0' + u % 10);
    while ((u /= 10) && n < (int)sizeof tmp);
    if (v < 0 && at + 1 < cap)
        buf[at++] = '-';
    while (n && at + 1 < cap)
        buf[at++] = tmp[--n];
    return at;
}

#if defined(__x86_64__)
/* SIGSYS from the filter's TRAP action: the call did not run; make it return -EPERM, as an
 * ERRNO action would, and say which call it was. */
static void on_sigsys(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    int saved = errno;
    ucontext_t *uc = uctx;
    uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
    uint64_t n = __atomic_add_fetch(&refused, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&last_refused, si->si_syscall, __ATOMIC_RELAXED);
    if (n <= MQD_SECCOMP_LOG_MAX) {
        char line[200];
        size_t at = put_str(line, 0, sizeof line, "mqd[");
        at = put_int(line, at, sizeof line, getpid());
        at = put_str(line, at, sizeof line, "]: warning: seccomp: refused system call ");
        at = put_int(line, at, sizeof line, si->si_syscall);
        at = put_str(line, at, sizeof line,
                     n == MQD_SECCOMP_LOG_MAX ? " (EPERM); further refusals are only counted (mqctl status)\n"
                                              : " (EPERM; mqctl status names it)\n");
        ssize_t w = write(STDERR_FILENO, line, at);
        (void)w;
    }
    errno = saved;
}
#endif

static int allow(scmp_filter_ctx ctx, const char *name, unsigned n_args, const struct scmp_arg_cmp *args)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0; /* not a call of this architecture */
    return seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, n_args, args);
}

static int allow_when(scmp_filter_ctx ctx, const char *name, unsigned arg, scmp_datum_t value)
{
    struct scmp_arg_cmp c = { .arg = arg, .op = SCMP_CMP_EQ, .datum_a = value };
    return allow(ctx, name, 1, &c);
}

static int add_rules(scmp_filter_ctx ctx, int with_bpf)
{
    int rc = 0;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0] && !rc; i++)
        rc = allow(ctx, allowed[i], 0, NULL);
    /* local sockets only: sd_notify and NSS's nscd */
    if (!rc)
        rc = allow_when(ctx, "socket", 0, AF_UNIX);
    if (!rc)
        rc = allow_when(ctx, "socketpair", 0, AF_UNIX);
    /* thread names; reading limits, never raising them */
    static const int prctls[] = { PR_SET_NAME, PR_GET_NAME, PR_GET_DUMPABLE, PR_GET_NO_NEW_PRIVS };
    for (size_t i = 0; i < sizeof prctls / sizeof prctls[0] && !rc; i++)
        rc = allow_when(ctx, "prctl", 0, (scmp_datum_t)prctls[i]);
    if (!rc)
        rc = allow_when(ctx, "prlimit64", 2, 0);
    /* the C library asks whether stderr is a terminal; nonblocking and pending bytes */
    static const unsigned long ioctls[] = { TCGETS, FIONBIO, FIONREAD };
    for (size_t i = 0; i < sizeof ioctls / sizeof ioctls[0] && !rc; i++)
        rc = allow_when(ctx, "ioctl", 1, (scmp_datum_t)ioctls[i]);
    /* mqctl top reads the probes' map */
    static const int bpf_cmds[] = { BPF_MAP_LOOKUP_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_MAP_DELETE_ELEM };
    for (size_t i = 0; with_bpf && i < sizeof bpf_cmds / sizeof bpf_cmds[0] && !rc; i++)
        rc = allow_when(ctx, "bpf", 0, (scmp_datum_t)bpf_cmds[i]);
    return rc;
}

int mqd_seccomp_install(enum mqd_seccomp_mode mode, int with_bpf, char *err, size_t errlen)
{
    if (mode == MQD_SECCOMP_OFF)
        return 0;
    uint32_t deny = SCMP_ACT_ERRNO(EPERM);
    if (mode == MQD_SECCOMP_KILL)
        deny = SCMP_ACT_KILL_PROCESS;
#if defined(__x86_64__)
    else {
        struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSYS, &sa, NULL) < 0)
            return mq_errmsg(err, errlen, -errno, "seccomp: SIGSYS handler: %s", strerror(errno));
        deny = SCMP_ACT_TRAP;
    }
#endif
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return mq_errmsg(err, errlen, -errno, "seccomp: PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    scmp_filter_ctx ctx = seccomp_init(deny);
    if (!ctx)
        return mq_errmsg(err, errlen, -ENOMEM, "seccomp: seccomp_init failed");
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    if (!rc)
        rc = add_rules(ctx, with_bpf);
    if (!rc)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc)
        return mq_errmsg(err, errlen, rc < 0 ? rc : -EINVAL, "seccomp: installing the filter: %s", strerror(-rc));
    return 0;
}

uint64_t mqd_seccomp_refused(int *last_nr)
{
    if (last_nr)
        *last_nr = __atomic_load_n(&last_refused, __ATOMIC_RELAXED);
    return __atomic_load_n(&refused, __ATOMIC_RELAXED);
}

const char *mqd_seccomp_name(int nr, char *buf, size_t len)
{
    char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    snprintf(buf, len, "%s", name ? name : "?");
    free(name);
    return buf;
}
