/* tests/integration/test_systemd.c — mqd under (simulated) systemd:
 *   - `systemd-socket-activate --seqpacket` holds two named sockets (client, admin) and
 *     starts mqd on the first connection; mqd uses them (sd_listen_fds_with_names) and
 *     binds nothing of its own; the first client waits until the model is ready;
 *   - the sd_notify sequence on a notify socket of the test's own (NOTIFY_SOCKET):
 *     STATUS=loading ... (with EXTEND_TIMEOUT_USEC) before READY=1, WATCHDOG=1 while
 *     serving (WATCHDOG_USEC), RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM;
 *   - `mqd --check-config`: exit 0 and the effective config, or exit 2 with a message
 *     naming the field.
 */
#include <pthread.h>

#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"

static char dir[256];

/* ---- notify socket collector ---------------------------------------------------- */
#define MAX_NOTES 512
typedef struct note {
    double t;
    char text[256];
} note;

static struct {
    int fd, stop;
    note notes[MAX_NOTES];
    int n;
    pthread_mutex_t mu;
} ns = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void *notify_main(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&ns.stop, __ATOMIC_SEQ_CST)) {
        char buf[1024];
        ssize_t n = recv(ns.fd, buf, sizeof buf - 1, 0);
        if (n <= 0)
            continue; /* SO_RCVTIMEO lets us look at stop */
        buf[n] = 0;
        pthread_mutex_lock(&ns.mu);
        if (ns.n < MAX_NOTES) {
            ns.notes[ns.n].t = spawn_now();
            snprintf(ns.notes[ns.n].text, sizeof ns.notes[ns.n].text, "%.*s", (int)sizeof ns.notes[ns.n].text - 1, buf);
            ns.n++;
        }
        pthread_mutex_unlock(&ns.mu);
    }
    return NULL;
}

/* Index of the first note at or after `from` containing `s`, or -1. */
static int find_note(int from, const char *s)
{
    pthread_mutex_lock(&ns.mu);
    int r = -1;
    for (int i = from; i < ns.n && r < 0; i++)
        if (strstr(ns.notes[i].text, s))
            r = i;
    pthread_mutex_unlock(&ns.mu);
    return r;
}

static int wait_note(int from, const char *s, int timeout_s)
{
    double t0 = spawn_now();
    int i;
    while ((i = find_note(from, s)) < 0 && spawn_now() - t0 < timeout_s)
        usleep(20 * 1000);
    return i;
}

static void test_socket_activation_and_notify(void)
{
    char client[320], admin[320], own_client[320], own_admin[320], notify[320], log[320];
    snprintf(client, sizeof client, "%s/client.sock", dir);
    snprintf(admin, sizeof admin, "%s/admin.sock", dir);
    snprintf(own_client, sizeof own_client, "%s/own/client.sock", dir);
    snprintf(own_admin, sizeof own_admin, "%s/own/admin.sock", dir);
    snprintf(notify, sizeof notify, "%s/notify", dir);
    snprintf(log, sizeof log, "%s/mqd.log", dir);

    ns.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    CHECK(snprintf(sa.sun_path, sizeof sa.sun_path, "%s", notify) < (int)sizeof sa.sun_path, "notify path fits");
    CHECK(bind(ns.fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind notify socket");
    struct timeval tv = { 0, 200000 };
    setsockopt(ns.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    pthread_t th;
    pthread_create(&th, NULL, notify_main, NULL);

    char mqd[4200], l1[400], l2[400], e1[400], e2[400], e3[400];
    snprintf(mqd, sizeof mqd, "%s/mqd", spawn_build_dir());
    snprintf(l1, sizeof l1, "--listen=%s", client);
    snprintf(l2, sizeof l2, "--listen=%s", admin);
    snprintf(e1, sizeof e1, "--setenv=NOTIFY_SOCKET=%s", notify);
    snprintf(e2, sizeof e2, "--setenv=WATCHDOG_USEC=1000000");
    snprintf(e3, sizeof e3, "--setenv=MQ_SHARED=%s", getenv("MQ_SHARED") ? getenv("MQ_SHARED") : "");
    char *argv[] = { "/usr/bin/systemd-socket-activate",
                     "--seqpacket",
                     l1,
                     l2,
                     "--fdname=client:admin",
                     e1,
                     e2,
                     e3,
                     mqd,
                     "--model-dir",
                     (char *)spawn_model(),
                     "--client-socket",
                     own_client,
                     "--admin-socket",
                     own_admin,
                     "--drain-timeout-ms",
                     "1000",
                     NULL };
    pid_t pid = spawn(argv, NULL, log);
    /* the activator binds first; mqd does not run before the first connection */
    double t0 = spawn_now();
    struct stat sb;
    while (stat(client, &sb) < 0 && spawn_now() - t0 < 10)
        usleep(20 * 1000);
    CHECK(stat(client, &sb) == 0 && S_ISSOCK(sb.st_mode), "activator did not bind %s", client);
    usleep(300 * 1000);
    CHECK(find_note(0, "STATUS=") < 0, "mqd started before any connection");

    /* The first client triggers the start and waits in the backlog until READY. */
    mq_conn *c = NULL;
    int rc = mq_connect(client, &c);
    double t_conn = spawn_now();
    CHECK(rc == 0, "connect through the activated socket: %s", mq_strerror(rc));
    /* mqd sent READY before it answered, but the collector thread may not have read the
     * datagram yet on a busy machine */
    int i_ready = wait_note(0, "READY=1", 5);
    int i_load = find_note(0, "STATUS=loading");
    CHECK(i_load >= 0 && i_ready > i_load, "notify order: loading at %d, READY at %d", i_load, i_ready);
    CHECK(find_note(0, "EXTEND_TIMEOUT_USEC=") >= 0 || i_ready <= i_load + 2, "no EXTEND_TIMEOUT_USEC while loading");
    if (i_ready >= 0)
        CHECK(ns.notes[i_ready].t <= t_conn + 0.01, "HELLO answered before READY=1");
    if (!rc) {
        uint64_t s, req;
        mq_params p;
        mq_params_init(&p);
        p.flags |= MQ_PARAM_GREEDY;
        p.max_tokens = 4;
        int n = 0;
        CHECK(mq_open_session(c, MQ_MODE_RAW, &s) == 0 && mq_send_text(c, s, "Hello", 5, &p, &req) == 0, "request");
        mq_event ev;
        while (mq_next_event(c, &ev, 30000) == 0 && ev.type == MQ_EVENT_TOKEN)
            n++;
        CHECK(n == 4, "%d tokens through the activated socket", n);
    }
    /* mqd used the passed sockets, not its own paths */
    CHECK(stat(own_client, &sb) < 0 && stat(own_admin, &sb) < 0, "mqd bound its own sockets");
    cJSON *st = admin_call(admin, "status", 0);
    CHECK(st && !strcmp(jstr(st, "state"), "ready"), "admin through the activated socket");
    pid_t mqd_pid = st ? (pid_t)jnum(st, "pid", NULL) : 0;
    cJSON_Delete(st);
    CHECK(mqd_pid > 0, "mqd pid from status");

    /* watchdog: WATCHDOG_USEC=1s -> WATCHDOG=1 about every 0.5 s while both pools tick */
    int w1 = wait_note(i_ready > 0 ? i_ready : 0, "WATCHDOG=1", 5);
    int w2 = w1 >= 0 ? wait_note(w1 + 1, "WATCHDOG=1", 5) : -1;
    CHECK(w1 >= 0 && w2 > w1, "WATCHDOG=1 not sent repeatedly (%d, %d)", w1, w2);

    /* reload */
    int before = ns.n;
    if (mqd_pid > 0)
        kill(mqd_pid, SIGHUP);
    int r1 = wait_note(before, "RELOADING=1", 10);
    int r2 = r1 >= 0 ? wait_note(r1 + 1, "READY=1", 10) : -1;
    CHECK(r1 >= 0 && r2 > r1, "SIGHUP: RELOADING=1 at %d, READY=1 at %d", r1, r2);

    /* stop */
    before = ns.n;
    if (mqd_pid > 0)
        kill(mqd_pid, SIGTERM);
    CHECK(wait_note(before, "STOPPING=1", 10) >= 0, "no STOPPING=1");
    int status = spawn_wait_exit(pid, 20);
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    if (c)
        mq_disconnect(c);
    __atomic_store_n(&ns.stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    close(ns.fd);
    if (harness_cur_fail) {
        for (int i = 0; i < ns.n && i < 40; i++)
            fprintf(stderr, "    notify[%d] %s\n", i, ns.notes[i].text);
        spawn_dump_log(log);
    }
    if (status < 0)
        kill(pid, SIGKILL);
}

static int run_capture(char *const argv[], char *out, size_t len)
{
    char log[320];
    snprintf(log, sizeof log, "%s/check.log", dir);
    return spawn_capture(argv, log, 20, out, len);
}

static void test_check_config(void)
{
    char mqd[4200], cfg[320], out[8192];
    snprintf(mqd, sizeof mqd, "%s/mqd", spawn_build_dir());
    snprintf(cfg, sizeof cfg, "%s/mqd.json", dir);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"model_dir\": \"/models/x\", \"mode\": \"fp4\", \"kv_tokens\": 8192}\n");
    fclose(f);
    char *good[] = { mqd, "--config", cfg, "--chunk-tokens", "64", "--check-config", NULL };
    int rc = run_capture(good, out, sizeof out);
    CHECK(rc == 0, "good config: exit %d: %s", rc, out);
    CHECK(strstr(out, "\"mode\":\t\"fp4\"") && strstr(out, "\"chunk_tokens\":\t64") && strstr(out, "configuration OK"),
          "printed config: %s", out);
    f = fopen(cfg, "w");
    fprintf(f, "{\"model_dir\": \"/models/x\", \"kv_block_tokens\": 0}\n");
    fclose(f);
    char *bad[] = { mqd, "--config", cfg, "--check-config", NULL };
    rc = run_capture(bad, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "kv_block_tokens") && strstr(out, cfg), "bad config: exit %d: %s", rc, out);
    char *badflag[] = { mqd, "--mode", "int8", "--model-dir", "/m", "--check-config", NULL };
    rc = run_capture(badflag, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "mode"), "bad flag: exit %d: %s", rc, out);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    RUN(test_check_config);
    RUN(test_socket_activation_and_notify);
    return harness_done();
}
