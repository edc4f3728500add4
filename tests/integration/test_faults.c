/* tests/integration/test_faults.c — mqd against hostile and careless clients, resource
 * exhaustion and bad start-up conditions (issue 13's findings in mqd, each with the test
 * that reproduced it):
 *   - a client that hands mqd a blocking, full eventfd and arms poll wake-ups, then never
 *     reads: other clients keep their tokens, mqctl status answers, SIGTERM works;
 * One mqd (started as root, running as nobody, any client allowed) serves the runtime
 * cases; the start-up cases start their own.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "ipc/channel.h"
#include "ipc/sock.h"
#include "ipc/wire.h"
#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"

#define HOSTILE_UID 4242 /* neither root nor mqd's user: an ordinary local user */

static char dir[256], client_sock[300], admin_sock[300], logpath[300];
static pid_t mqd_pid;

/* ---- helpers ---------------------------------------------------------------------- */
/* One greedy request of n tokens on a fresh connection; tokens received, or -errno. */
static int tokens_of_one_request(int n, int timeout_ms)
{
    mq_conn *c;
    int rc = mq_connect(client_sock, &c);
    if (rc)
        return rc;
    uint64_t s, req;
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = (uint32_t)n;
    rc = mq_open_session(c, MQ_MODE_RAW, &s);
    if (!rc)
        rc = mq_send_text(c, s, "The history of the city", 23, &p, &req);
    int got = 0;
    mq_event ev;
    while (!rc && (rc = mq_next_event(c, &ev, timeout_ms)) == 0 && ev.type == MQ_EVENT_TOKEN)
        got++;
    mq_disconnect(c);
    return rc ? rc : got;
}

/* Seconds mqctl status takes to answer "ready", or -1 when it does not. */
static double status_answers(void)
{
    double t0 = spawn_now();
    cJSON *r = admin_call(admin_sock, "status", 0);
    int ok = r && !strcmp(jstr(r, "state"), "ready");
    cJSON_Delete(r);
    return ok ? spawn_now() - t0 : -1;
}

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", client_sock) >= (int)sizeof sa.sun_path)
        return -1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends m (with pass_fd if >= 0) and reads one reply into r with up to n_fds fds.
 * 0, -1 (no reply), or the negative errno of the send. */
static int raw_call(int fd, mq_msg *m, int pass_fd, mq_msg *r, int *fds, int n_fds)
{
    static uint32_t seq;
    uint8_t buf[MQ_WIRE_MAX_MSG + 1];
    m->seq = ++seq;
    int n = mq_wire_encode(m, buf, sizeof buf);
    if (n < 0)
        return -1;
    int rc = mq_sock_send(fd, buf, (size_t)n, &pass_fd, pass_fd >= 0, 0);
    if (rc)
        return rc;
    ssize_t k = mq_sock_recv(fd, buf, sizeof buf, fds, n_fds, 0, NULL);
    if (k <= 0 || mq_wire_decode(buf, (size_t)k, r, NULL, 0))
        return -1;
    return 0;
}

static void hello(mq_msg *m)
{
    *m = (mq_msg){ .type = MQ_MSG_HELLO };
    m->u.hello.ver_min = MQ_WIRE_VERSION_MIN;
    m->u.hello.ver_max = MQ_WIRE_VERSION_MAX;
    snprintf(m->u.hello.name, sizeof m->u.hello.name, "test_faults");
}

/* Descriptors of process pid whose /proc link starts with `kind` ("" = all). */
static int count_fds(pid_t pid, const char *kind)
{
    char path[64], link[256];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dp = opendir(path);
    if (!dp)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.')
            continue;
        char p2[320];
        snprintf(p2, sizeof p2, "%s/%s", path, e->d_name);
        ssize_t k = readlink(p2, link, sizeof link - 1);
        link[k > 0 ? k : 0] = 0;
        n += !strncmp(link, kind, strlen(kind));
    }
    closedir(dp);
    return n;
}

/* On a fresh connection's HELLO_OK descriptors: maps the channel, optionally arms poll
 * wake-ups (and makes the client's end of the wake-up pipe as bad as it can), opens a
 * raw session and starts a greedy generation of max_tokens. 0 or the failing step. */
static int raw_start(int fd, int fds[2], mq_chan *ch, uint32_t max_tokens, int arm_poll)
{
    char err[256];
    if (mq_chan_map(ch, fds[0], err, sizeof err))
        return 1;
    if (arm_poll) {
        fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) & ~O_NONBLOCK);
        fcntl(fds[1], F_SETPIPE_SZ, 4096);
        __atomic_store_n(&ch->hdr->token.poll_armed, 1, __ATOMIC_SEQ_CST);
    }
    mq_msg m = { .type = MQ_MSG_OPEN }, r;
    m.u.open.mode = MQ_WIRE_MODE_RAW;
    if (raw_call(fd, &m, -1, &r, NULL, 0) || r.type != MQ_MSG_OPENED)
        return 2;
    uint64_t session = r.u.opened.session;
    const char *prompt = "Once upon a time";
    uint32_t off = ch->prompt.pos;
    mq_ring_write(&ch->prompt, prompt, (uint32_t)strlen(prompt));
    mq_ring_publish(&ch->prompt);
    m = (mq_msg){ .type = MQ_MSG_SUBMIT };
    m.u.submit.session = session;
    m.u.submit.kind = MQ_WIRE_KIND_TEXT;
    m.u.submit.ring_off = off;
    m.u.submit.len = (uint32_t)strlen(prompt);
    mq_wire_gen_default(&m.u.submit.gen);
    m.u.submit.gen.flags |= MQ_GEN_GREEDY;
    m.u.submit.gen.max_tokens = max_tokens;
    if (raw_call(fd, &m, -1, &r, NULL, 0) || r.type != MQ_MSG_SUBMITTED)
        return 3;
    return 0;
}

/* ---- the hostile client (issue 13 #1) ------------------------------------------- */
/* In a child, as HOSTILE_UID. The attack of the finding: HELLO with an eventfd that the
 * client then makes blocking and fills to the brim (file status flags are shared by every
 * copy of a descriptor), so mqd's next write to it would block. mqd must not take it
 * (the kernel refuses the descriptor, or mqd answers ERROR). Then the worst a client can
 * do with the wake-up fd mqd hands out: make its end blocking, shrink the pipe, arm poll
 * wake-ups and never read it, while it consumes the tokens of a long generation (so mqd
 * keeps publishing and writing wake-ups: the pipe fills).
 * Reports through `ready`: 'r' when the eventfd was refused, then 's' once its request
 * runs; then waits to be killed. */
static void hostile_main(int ready)
{
    if (setgroups(0, NULL) || setgid(HOSTILE_UID) || setuid(HOSTILE_UID))
        _exit(10);
    int fd = raw_connect();
    if (fd < 0)
        _exit(11);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    fcntl(efd, F_SETFL, fcntl(efd, F_GETFL) & ~O_NONBLOCK);
    uint64_t full = 0xfffffffffffffffeull;
    if (write(efd, &full, 8) != 8)
        _exit(12);
    mq_msg m, r;
    hello(&m);
    int fds[2];
    int rc = raw_call(fd, &m, efd, &r, fds, 2);
    int refused = rc == -EPERM || (rc == 0 && r.type == MQ_MSG_ERROR);
    if (!refused)
        _exit(13);
    if (write(ready, "r", 1) != 1)
        _exit(14);
    close(fd);
    fd = raw_connect();
    hello(&m);
    if (fd < 0 || raw_call(fd, &m, -1, &r, fds, 2) || r.type != MQ_MSG_HELLO_OK || fds[0] < 0 || fds[1] < 0)
        _exit(15);
    mq_chan ch;
    if (raw_start(fd, fds, &ch, 4000, 1))
        _exit(16);
    if (write(ready, "s", 1) != 1)
        _exit(19);
    /* keeps the generation going by consuming tokens, never the wake-ups */
    uint8_t rec[MQ_CHAN_REC_MAX];
    for (;;)
        if (mq_chan_read_rec(&ch.token, rec, sizeof rec) <= 0)
            usleep(1000);
}

static void test_hostile_wake_fd(void)
{
    int eventfds = count_fds(mqd_pid, "anon_inode:[eventfd]");
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        hostile_main(p[1]);
    }
    close(p[1]);
    char steps[3] = "";
    for (int i = 0; i < 2; i++) {
        struct pollfd pf = { p[0], POLLIN, 0 };
        if (poll(&pf, 1, 20000) != 1 || read(p[0], &steps[i], 1) != 1)
            break;
    }
    close(p[0]);
    int st = 0;
    if (strcmp(steps, "rs") && waitpid(pid, &st, WNOHANG) == pid)
        CHECK(0, "hostile client stopped at step %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    CHECK(steps[0] == 'r', "mqd took the client's eventfd with HELLO");
    CHECK(steps[1] == 's', "the hostile client did not get its request running");
    CHECK(count_fds(mqd_pid, "anon_inode:[eventfd]") == eventfds, "mqd holds %d eventfds, %d before",
          count_fds(mqd_pid, "anon_inode:[eventfd]"), eventfds);
    usleep(500 * 1000); /* its ring and pipe fill; mqd keeps publishing into them */
    int got = tokens_of_one_request(16, 20000);
    CHECK(got == 16, "another client got %d of 16 tokens while the hostile one ran", got);
    double t = status_answers();
    CHECK(t >= 0 && t < 5, "mqctl status: %.2f s", t);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* its disconnect closes its session on the loop thread */
    got = tokens_of_one_request(16, 20000);
    CHECK(got == 16, "after the hostile client left: %d of 16 tokens", got);
    t = status_answers();
    CHECK(t >= 0 && t < 5, "mqctl status after it left: %.2f s", t);
}

/* A client that overwrites its token ring's tail with an impossible value loses its
 * connection (ERROR, then end of file), with a log line; nobody else notices. */
static void test_corrupt_token_ring(void)
{
    int fd = raw_connect();
    mq_msg m, r;
    hello(&m);
    int fds[2] = { -1, -1 };
    CHECK(fd >= 0 && raw_call(fd, &m, -1, &r, fds, 2) == 0 && r.type == MQ_MSG_HELLO_OK, "hello");
    mq_chan ch;
    int step = raw_start(fd, fds, &ch, 4000, 0);
    CHECK(step == 0, "start failed at step %d", step);
    if (step)
        return;
    __atomic_store_n(&ch.hdr->token.tail, ch.token.pos + 0x40000000u, __ATOMIC_SEQ_CST);
    uint8_t buf[MQ_WIRE_MAX_MSG + 1];
    int fdsr[1];
    ssize_t k = mq_sock_recv(fd, buf, sizeof buf, fdsr, 1, 0, NULL);
    int err_seen = k > 0 && mq_wire_decode(buf, (size_t)k, &r, NULL, 0) == 0 && r.type == MQ_MSG_ERROR &&
                   r.u.error.code == MQ_ERR_PROTOCOL;
    CHECK(err_seen, "no ERROR(MQ_ERR_PROTOCOL) after the corruption (recv %zd)", k);
    CHECK(mq_sock_recv(fd, buf, sizeof buf, fdsr, 1, 0, NULL) == 0, "connection not closed");
    close(fd);
    mq_chan_unmap(&ch);
    close(fds[1]);
    char *log = harness_read_file(logpath, NULL);
    CHECK(log && strstr(log, "its token ring's tail is impossible"), "no log line");
    free(log);
    int got = tokens_of_one_request(16, 20000);
    CHECK(got == 16, "another client afterwards: %d of 16 tokens", got);
}

/* Last: SIGTERM still ends mqd cleanly after all of the above. */
static void test_sigterm_after_all(void)
{
    kill(mqd_pid, SIGTERM);
    int st = spawn_wait_exit(mqd_pid, 30);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "mqd exit status %d after SIGTERM", st);
    if (st >= 0)
        mqd_pid = 0;
}

/* A regression here tends to hang mqd: the suite then ends itself rather than make test. */
#define SUITE_TIMEOUT_S 600
static void on_alarm(int sig)
{
    (void)sig;
    if (mqd_pid > 0)
        kill(mqd_pid, SIGKILL);
    static const char msg[] = "  FAIL test_faults: not done within SUITE_TIMEOUT_S (mqd hung?)\n@@ 0 1 0\n";
    ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(SUITE_TIMEOUT_S);
    spawn_tmpdir(dir, sizeof dir);
    snprintf(client_sock, sizeof client_sock, "%s/run/client.sock", dir);
    snprintf(admin_sock, sizeof admin_sock, "%s/run/admin.sock", dir);
    snprintf(logpath, sizeof logpath, "%s/mqd.log", dir);
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    char *argv[] = { bin,
                     "--model-dir",
                     (char *)spawn_model(),
                     "--client-socket",
                     client_sock,
                     "--admin-socket",
                     admin_sock,
                     "--user",
                     "nobody",
                     "--kv-tokens",
                     "16384",
                     "--drain-timeout-ms",
                     "1500",
                     "--token-ring-kib",
                     "4",
                     NULL };
    mqd_pid = spawn(argv, NULL, logpath);
    if (!spawn_wait_ready(admin_sock, mqd_pid, 120)) {
        spawn_dump_log(logpath);
        if (mqd_pid > 0)
            kill(mqd_pid, SIGKILL);
        CHECK(0, "mqd did not become ready");
        return harness_done();
    }
    RUN(test_hostile_wake_fd);
    RUN(test_corrupt_token_ring);
    RUN(test_sigterm_after_all);
    if (mqd_pid > 0) {
        kill(mqd_pid, SIGKILL);
        waitpid(mqd_pid, NULL, 0);
    }
    if (harness_failed)
        spawn_dump_log(logpath);
    return harness_done();
}
