/* tests/integration/mqd_spawn.h — starting a real mqd (and the programs around it:
 * mq-openai, HAProxy, Node tests) for integration tests, talking to its admin socket and
 * over loopback HTTP, and reading /proc. Header-only (each test program includes it once).
 *
 * mqd is the binary of the same build directory as the test (found from /proc/self/exe),
 * started with the real model $MQ_SHARED/models/mq-qwen3-80m; its stderr goes to
 * <dir>/mqd.log, which is printed when a test fails to start it.
 */
#ifndef MQ_TESTS_MQD_SPAWN_H
#define MQ_TESTS_MQD_SPAWN_H

#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/harness.h"
#include "common/clock.h"

static char spawn_bin[4096];

/* build/ of this test binary (build/tests/integration/test_x -> build). */
static inline const char *spawn_build_dir(void)
{
    if (!spawn_bin[0]) {
        ssize_t n = readlink("/proc/self/exe", spawn_bin, sizeof spawn_bin - 1);
        spawn_bin[n > 0 ? n : 0] = 0;
        for (int k = 0; k < 3; k++) {
            char *s = strrchr(spawn_bin, '/');
            if (s)
                *s = 0;
        }
    }
    return spawn_bin;
}

/* How much slower than a plain build this run is allowed to be: MQ_TEST_TIME_SCALE
 * (make test-tsan sets 10: the model and even the start of a process run several times
 * slower under ThreadSanitizer), at least 1. */
static inline double spawn_time_scale(void)
{
    const char *s = getenv("MQ_TEST_TIME_SCALE");
    double v = s ? atof(s) : 1;
    return v >= 1 ? v : 1;
}

static inline double spawn_now(void)
{
    return mq_now_s();
}

/* A fresh directory everyone can traverse (mqd may run as nobody). */
static inline void spawn_tmpdir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/mqtest-XXXXXX");
    if (!mkdtemp(dir))
        dir[0] = 0;
    chmod(dir, 0755);
}

static inline const char *spawn_model(void)
{
    static char p[4096];
    snprintf(p, sizeof p, "%s", shared_path("models/mq-qwen3-80m"));
    return p;
}

/* fork + exec argv[0] with stdout/stderr appended to log, extra environment entries
 * (NAME=VALUE, NULL-terminated), the n_fds descriptors of fds as 3, 4, ... with
 * LISTEN_FDS=n_fds and LISTEN_PID (systemd's socket hand-over; HAProxy takes them as
 * `bind fd@3`), and, when as_user is not NULL, as that user (no supplementary groups; exit
 * status 126 if the switch fails). */
static inline pid_t spawn_fds(char *const argv[], char *const env_extra[], const char *log, const char *as_user,
                              const int *fds, int n_fds)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        int high[16];
        for (int i = 0; i < n_fds && i < 16; i++) /* out of the way first: fds may hold 3, 4, ... */
            high[i] = fcntl(fds[i], F_DUPFD, 64);
        for (int i = 0; i < n_fds && i < 16; i++)
            dup2(high[i], 3 + i);
        if (n_fds > 0) {
            char n[16], me[32];
            snprintf(n, sizeof n, "%d", n_fds);
            snprintf(me, sizeof me, "%d", (int)getpid());
            setenv("LISTEN_FDS", n, 1);
            setenv("LISTEN_PID", me, 1);
        }
        for (int i = 0; env_extra && env_extra[i]; i++)
            putenv(env_extra[i]);
        if (as_user) {
            struct passwd *pw = getpwnam(as_user);
            if (!pw || setgroups(0, NULL) < 0 || setregid(pw->pw_gid, pw->pw_gid) < 0 ||
                setreuid(pw->pw_uid, pw->pw_uid) < 0) {
                fprintf(stderr, "cannot become %s: %s\n", as_user, pw ? strerror(errno) : "no such user");
                _exit(126);
            }
            /* the checkout may be private (mktemp -d is 0700): the other user gets a
             * working directory it may enter, and every path it is given is absolute */
            if (chdir("/") < 0)
                _exit(126);
        }
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static inline pid_t spawn_as(char *const argv[], char *const env_extra[], const char *log, const char *as_user)
{
    return spawn_fds(argv, env_extra, log, as_user, NULL, 0);
}

static inline pid_t spawn(char *const argv[], char *const env_extra[], const char *log)
{
    return spawn_as(argv, env_extra, log, NULL);
}

/* A loopback TCP socket listening on a free port (for a server the test starts: it gets
 * the socket itself, so no other program can take the port meanwhile); -1 on failure. */
static inline int spawn_listen_loopback(int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 128) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port_out = ntohs(sa.sin_port);
    return fd;
}

/* GET http://127.0.0.1:<port><path> (HTTP/1.0, 5 s at most); the status, 0 when nothing
 * answered. The body (NUL-terminated, cut at len - 1 bytes) goes to body if not NULL. */
static inline int spawn_http_get(int port, const char *path, char *body, size_t len)
{
    if (body && len)
        body[0] = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct timeval tv = { 5, 0 };
    char req[512], buf[1 << 16];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) || send(fd, req, n, MSG_NOSIGNAL) != n) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    size_t got = 0;
    ssize_t k;
    while (got + 1 < sizeof buf && (k = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
        got += (size_t)k;
    close(fd);
    buf[got] = 0;
    int status = 0;
    if (sscanf(buf, "HTTP/%*s %d", &status) != 1)
        return 0;
    const char *b = strstr(buf, "\r\n\r\n");
    if (body && len && b)
        snprintf(body, len, "%s", b + 4);
    return status;
}

/* Runs tests/<file> with Node's test runner (from tests/, where package.json and
 * node_modules are; MQ_SHARED made absolute for it) and counts each Node test as one test
 * here. Comment lines of the form
 * "# name: value" (a figure a test printed) or "# note: ..." are printed without the "# ";
 * the lines of a failure's diagnosis too. */
static inline void spawn_node_tests(const char *file)
{
    const char *shared = getenv("MQ_SHARED");
    char abs_shared[4096], cmd[512];
    if (!realpath(shared && *shared ? shared : "../shared", abs_shared))
        snprintf(abs_shared, sizeof abs_shared, "%s", shared ? shared : "../shared");
    setenv("MQ_SHARED", abs_shared, 1);
    snprintf(cmd, sizeof cmd, "cd tests && node --test --test-reporter=tap %s 2>&1", file);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "cannot run node");
    if (!p)
        return;
    char line[4096], name[128];
    double value;
    int ran = 0;
    while (fgets(line, sizeof line, p)) {
        if (!strncmp(line, "ok ", 3) || !strncmp(line, "not ok ", 7)) {
            int ok = line[0] == 'o';
            /* TAP: "ok N - title # SKIP reason" is a skip, "# TODO" a test not held to */
            int skipped = ok && (strstr(line, "# SKIP") || strstr(line, "# TODO"));
            const char *title = strstr(line, " - ");
            printf("  %s node: %s", skipped ? "skip" : ok ? "ok  " : "FAIL", title ? title + 3 : line);
            if (skipped)
                harness_skipped++;
            else if (ok)
                harness_passed++;
            else
                harness_failed++;
            ran++;
        } else if (sscanf(line, "# %127[a-z0-9_]: %lf", name, &value) == 2 || !strncmp(line, "# note: ", 8)) {
            fputs(line + 2, stdout);
        } else if (line[0] == ' ' || line[0] == '#') {
            if (strstr(line, "error:") || strstr(line, "expected") || strstr(line, "actual") ||
                strstr(line, "message") || strstr(line, "# fail") || strstr(line, "# pass"))
                fputs(line, stdout);
        } else
            fputs(line, stdout);
    }
    int st = pclose(p);
    if (ran == 0) {
        printf("  FAIL node ran no test (exit %d): is `npm ci` done in tests/?\n", st);
        harness_failed++;
    }
}

static inline void spawn_dump_log(const char *log)
{
    FILE *f = fopen(log, "r");
    if (!f)
        return;
    char line[1024];
    fprintf(stderr, "    --- %s ---\n", log);
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "    | %s", line);
    fclose(f);
}

/* One admin request ({"cmd": ...} plus extra fields); the reply object, or NULL. */
static inline cJSON *admin_call(const char *sock, const char *cmd, long long id)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock) >= (int)sizeof sa.sun_path) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct timeval tv = { 20, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256];
    if (id)
        snprintf(req, sizeof req, "{\"cmd\":\"%s\",\"id\":%lld}", cmd, id);
    else
        snprintf(req, sizeof req, "{\"cmd\":\"%s\"}", cmd);
    cJSON *r = NULL;
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) > 0) {
        static char buf[1 << 20];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = 0;
            r = cJSON_Parse(buf);
        }
    }
    close(fd);
    return r;
}

static inline double jnum(const cJSON *o, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        v = cJSON_GetObjectItemCaseSensitive(v, b);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static inline const char *jstr(const cJSON *o, const char *a)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* Fails the running test when mqd's seccomp filter refused a system call so far (mqctl
 * status): whatever the test made mqd do stayed within its allow-list. */
static inline void spawn_check_no_seccomp_refusal(const char *admin)
{
    cJSON *r = admin_call(admin, "status", 0);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(r, "seccomp");
    double n = jnum(sc, "refused", NULL);
    CHECK(n == 0, "mqd's seccomp filter refused %.0f call(s), the last %s", n, jstr(sc, "last_refused"));
    cJSON_Delete(r);
}

/* Polls the admin socket until state is "ready" (1), the process died (0) or timeout. */
static inline int spawn_wait_ready(const char *admin, pid_t pid, int timeout_s)
{
    double t0 = spawn_now();
    while (spawn_now() - t0 < timeout_s) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return 0;
        cJSON *r = admin_call(admin, "status", 0);
        int ready = r && !strcmp(jstr(r, "state"), "ready");
        cJSON_Delete(r);
        if (ready)
            return 1;
        usleep(100 * 1000);
    }
    return 0;
}

/* Waits up to timeout_s for pid; returns its wait status or -1. */
static inline int spawn_wait_exit(pid_t pid, int timeout_s)
{
    double t0 = spawn_now();
    int st;
    while (spawn_now() - t0 < timeout_s) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return st;
        usleep(50 * 1000);
    }
    return -1;
}

/* Runs argv to its end (at most timeout_s), stdout and stderr going to the file log,
 * whose first len-1 bytes land in out. The exit code, or -1 if it did not exit in time. */
static inline int spawn_capture(char *const argv[], const char *log, int timeout_s, char *out, size_t len)
{
    unlink(log);
    pid_t pid = spawn(argv, NULL, log);
    int st = spawn_wait_exit(pid, timeout_s);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(out, 1, len - 1, f) : 0;
    out[n] = 0;
    if (f)
        fclose(f);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The value of "Key:" in /proc/<pid>/status, or "" */
static inline const char *proc_status(pid_t pid, const char *key, char *out, size_t len)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return out;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            char *v = line + kl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            snprintf(out, len, "%s", v);
            break;
        }
    fclose(f);
    return out;
}

/* Runs fn(arg, out, len) in a child that has become uid:gid (no supplementary groups) and
 * hands back what it wrote into out (NUL-terminated). 0, or -1 when the child could not
 * switch or did not answer (out then says why). */
static inline int run_as(uid_t uid, gid_t gid, void (*fn)(void *arg, char *out, size_t len), void *arg, char *out,
                         size_t len)
{
    int p[2];
    if (pipe(p))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        char buf[4096] = "";
        if (setgroups(0, NULL) || setgid(gid) || setuid(uid))
            snprintf(buf, sizeof buf, "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
        else
            fn(arg, buf, sizeof buf);
        ssize_t w = write(p[1], buf, strlen(buf));
        _exit(w < 0);
    }
    close(p[1]);
    harness_read_all(p[0], out, len);
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 && strncmp(out, "cannot become", 13) ? 0 : -1;
}

/* Starts argv (an mqd) with its output in log and waits until its admin socket says
 * ready; the pid, or 0 after a failed CHECK (the log printed, the process killed). */
static inline pid_t spawn_mqd_ready(char *const argv[], const char *log, const char *admin, int timeout_s)
{
    pid_t pid = spawn(argv, NULL, log);
    if (spawn_wait_ready(admin, pid, timeout_s))
        return pid;
    CHECK(0, "mqd did not become ready");
    spawn_dump_log(log);
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return 0;
}

/* The suite's mqd: build/mqd on spawn_model() with the given sockets, then the `extra`
 * flags (NULL-terminated, at most 48); started with spawn_mqd_ready (120 s). */
static inline pid_t spawn_suite_mqd(const char *client_sock, const char *admin_sock, const char *log,
                                    const char *const *extra)
{
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    char *argv[56] = {
        bin,
        "--model-dir",
        (char *)spawn_model(),
        "--client-socket",
        (char *)client_sock,
        "--admin-socket",
        (char *)admin_sock,
    };
    int n = 7;
    for (int i = 0; extra[i] && n < 55; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    return spawn_mqd_ready(argv, log, admin_sock, 120);
}

/* Whether the file log (an mqd's output) holds `what`; a log that cannot be read is a
 * failure too. */
static inline int spawn_log_has(const char *log, const char *what)
{
    char *text = harness_read_file(log, NULL);
    int has = text && strstr(text, what);
    free(text);
    return has;
}

/* The end of a suite: mqd killed if it still runs, its log printed if anything failed. */
static inline int spawn_suite_done(pid_t pid, const char *log)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    if (harness_failed)
        spawn_dump_log(log);
    return harness_done();
}

/* Reads a child's result of exactly len bytes from fd (waiting up to timeout_ms for each
 * part), closes fd and reaps the child. 1 when all len bytes came and the child exited 0;
 * *status gets its wait status. */
static inline int spawn_child_result(pid_t pid, int fd, void *buf, size_t len, int timeout_ms, int *status)
{
    size_t n = 0;
    ssize_t k;
    struct pollfd pf = { fd, POLLIN, 0 };
    while (n < len && poll(&pf, 1, timeout_ms) == 1 && (k = read(fd, (char *)buf + n, len - n)) > 0)
        n += (size_t)k;
    close(fd);
    *status = 0;
    waitpid(pid, status, 0);
    return n == len && WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

/* ---- an mqd of a test's own (start-up cases, other limits) ---------------------------- */
typedef struct own {
    char dir[300], client[340], admin[340], log[340];
    pid_t pid;
} own;

/* Starts mqd with the given extra flags (NULL-terminated) in a fresh directory
 * base/name, through /bin/sh so that a shell command `sh_prefix` (e.g. "ulimit -n 40; ")
 * can lower a limit first (lowering needs no privilege; changing another process's
 * limit later would need CAP_SYS_RESOURCE). No wait. */
static inline void own_start_sh(own *o, const char *base, const char *name, const char *sh_prefix,
                                const char *const *extra)
{
    snprintf(o->dir, sizeof o->dir, "%s/%s", base, name);
    mkdir(o->dir, 0755);
    snprintf(o->client, sizeof o->client, "%s/client.sock", o->dir);
    snprintf(o->admin, sizeof o->admin, "%s/admin.sock", o->dir);
    snprintf(o->log, sizeof o->log, "%s/mqd.log", o->dir);
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "%sexec %s/mqd --client-socket %s --admin-socket %s", sh_prefix ? sh_prefix : "",
                     spawn_build_dir(), o->client, o->admin);
    for (int i = 0; extra[i] && n > 0 && (size_t)n < sizeof cmd; i++)
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '%s'", extra[i]);
    char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    o->pid = spawn(argv, NULL, o->log);
}

/* The same with RLIMIT_NOFILE lowered to ulimit_n first when > 0. */
static inline void own_start(own *o, const char *base, const char *name, int ulimit_n, const char *const *extra)
{
    char lim[32] = "";
    if (ulimit_n)
        snprintf(lim, sizeof lim, "ulimit -n %d; ", ulimit_n);
    own_start_sh(o, base, name, lim, extra);
}

static inline void own_stop(own *o)
{
    if (o->pid > 0) {
        kill(o->pid, SIGKILL);
        waitpid(o->pid, NULL, 0);
        o->pid = 0;
    }
}

/* Waits up to timeout_s for an own mqd to exit; its exit status (-1: still running, killed). */
static inline int own_exit(own *o, int timeout_s)
{
    int st = spawn_wait_exit(o->pid, timeout_s);
    if (st < 0)
        own_stop(o);
    o->pid = 0;
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int own_log_has(own *o, const char *what)
{
    return spawn_log_has(o->log, what);
}

#endif
