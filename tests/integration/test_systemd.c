/* tests/integration/test_systemd.c — mqd under (simulated) systemd:
 *   - `systemd-socket-activate --seqpacket` holds two named sockets (client, admin) and
 *     starts mqd on the first connection; mqd uses them (sd_listen_fds_with_names) and
 *     binds nothing of its own; the first client waits until the model is ready;
 *   - the sd_notify sequence on a notify socket of the test's own (NOTIFY_SOCKET):
 *     STATUS=loading ... (with EXTEND_TIMEOUT_USEC) before READY=1, WATCHDOG=1 while
 *     serving (WATCHDOG_USEC), RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM;
 *   - with JOURNAL_STREAM naming its stderr, every log line starts with a journald
 *     priority ("<6>" info, "<5>" notice);
 *   - `mqd --check-config`: exit 0 and the effective config, or exit 2 with a message
 *     naming the field, also for what only this machine can tell (users, groups, CPUs,
 *     thread counts, the model folder);
 *   - the shipped units' sandboxes: `systemd-analyze security --offline=true` scores
 *     dist/mqd.service and dist/mq-openai.service at most 2.0 (printed; skipped where
 *     systemd-analyze is missing).
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

/* The activated mqd that the socket-activation cases share, in the order they run. */
static struct {
    char client[320], admin[320], own_client[320], own_admin[320], log[320];
    pid_t activator, mqd;
    pthread_t collector;
    int collecting;
    mq_conn *c;
    double t_conn;
    int i_ready;
} sa;

/* The activator holds both sockets; mqd does not run before the first connection. */
static void test_activator_binds_and_waits(void)
{
    char notify[320];
    snprintf(sa.client, sizeof sa.client, "%s/client.sock", dir);
    snprintf(sa.admin, sizeof sa.admin, "%s/admin.sock", dir);
    snprintf(sa.own_client, sizeof sa.own_client, "%s/own/client.sock", dir);
    snprintf(sa.own_admin, sizeof sa.own_admin, "%s/own/admin.sock", dir);
    snprintf(notify, sizeof notify, "%s/notify", dir);
    snprintf(sa.log, sizeof sa.log, "%s/mqd.log", dir);

    ns.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    CHECK(snprintf(un.sun_path, sizeof un.sun_path, "%s", notify) < (int)sizeof un.sun_path, "notify path fits");
    CHECK(bind(ns.fd, (struct sockaddr *)&un, sizeof un) == 0, "bind notify socket");
    struct timeval tv = { 0, 200000 };
    setsockopt(ns.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sa.collecting = pthread_create(&sa.collector, NULL, notify_main, NULL) == 0;
    CHECK(sa.collecting, "notify collector thread");

    /* stderr is "the journal" for mqd: JOURNAL_STREAM names the log file's device:inode */
    FILE *lf = fopen(sa.log, "w");
    if (lf)
        fclose(lf);
    struct stat lst;
    CHECK(stat(sa.log, &lst) == 0, "log file");
    char e4[64];
    snprintf(e4, sizeof e4, "--setenv=JOURNAL_STREAM=%llu:%llu", (unsigned long long)lst.st_dev,
             (unsigned long long)lst.st_ino);
    char mqd[4200], l1[400], l2[400], e1[400], e2[400], e3[400];
    snprintf(mqd, sizeof mqd, "%s/mqd", spawn_build_dir());
    snprintf(l1, sizeof l1, "--listen=%s", sa.client);
    snprintf(l2, sizeof l2, "--listen=%s", sa.admin);
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
                     e4,
                     mqd,
                     "--model-dir",
                     (char *)spawn_model(),
                     "--client-socket",
                     sa.own_client,
                     "--admin-socket",
                     sa.own_admin,
                     "--user", /* root: it has to reach the test's root-owned notify socket */
                     "root",
                     "--drain-timeout-ms",
                     "1000",
                     NULL };
    sa.activator = spawn(argv, NULL, sa.log);
    double t0 = spawn_now();
    struct stat sb;
    while (stat(sa.client, &sb) < 0 && spawn_now() - t0 < 10)
        usleep(20 * 1000);
    CHECK(stat(sa.client, &sb) == 0 && S_ISSOCK(sb.st_mode), "activator did not bind %s", sa.client);
    usleep(300 * 1000);
    CHECK(find_note(0, "STATUS=") < 0, "mqd started before any connection");
}

/* The first client triggers the start and waits in the backlog until READY=1, which
 * comes after STATUS=loading (with EXTEND_TIMEOUT_USEC while loading). */
static void test_first_client_waits_for_ready(void)
{
    int rc = mq_connect(sa.client, &sa.c);
    sa.t_conn = spawn_now();
    CHECK(rc == 0, "connect through the activated socket: %s", mq_strerror(rc));
    if (rc)
        sa.c = NULL;
    /* mqd sent READY before it answered, but the collector thread may not have read the
     * datagram yet on a busy machine */
    sa.i_ready = wait_note(0, "READY=1", 5);
    int i_load = find_note(0, "STATUS=loading");
    CHECK(i_load >= 0 && sa.i_ready > i_load, "notify order: loading at %d, READY at %d", i_load, sa.i_ready);
    CHECK(find_note(0, "EXTEND_TIMEOUT_USEC=") >= 0 || sa.i_ready <= i_load + 2,
          "no EXTEND_TIMEOUT_USEC while loading");
    if (sa.i_ready >= 0)
        CHECK(ns.notes[sa.i_ready].t <= sa.t_conn + 0.01, "HELLO answered before READY=1");
}

static void test_request_through_activated_socket(void)
{
    CHECK(sa.c, "no client connection (test_first_client_waits_for_ready failed)");
    if (!sa.c)
        return;
    uint64_t s, req;
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = 4;
    int n = 0;
    CHECK(mq_open_session(sa.c, MQ_MODE_RAW, &s) == 0 && mq_send_text(sa.c, s, "Hello", 5, &p, &req) == 0, "request");
    mq_event ev;
    while (mq_next_event(sa.c, &ev, 30000) == 0 && ev.type == MQ_EVENT_TOKEN)
        n++;
    CHECK(n == 4, "%d tokens through the activated socket", n);
}

/* mqd used the passed sockets, not its own paths */
static void test_passed_sockets_used(void)
{
    struct stat sb;
    CHECK(stat(sa.own_client, &sb) < 0 && stat(sa.own_admin, &sb) < 0, "mqd bound its own sockets");
    cJSON *st = admin_call(sa.admin, "status", 0);
    CHECK(st && !strcmp(jstr(st, "state"), "ready"), "admin through the activated socket");
    sa.mqd = st ? (pid_t)jnum(st, "pid", NULL) : 0;
    cJSON_Delete(st);
    CHECK(sa.mqd > 0, "mqd pid from status");
}

/* WATCHDOG_USEC=1s -> WATCHDOG=1 about every 0.5 s while both pools tick */
static void test_watchdog_repeats(void)
{
    int w1 = wait_note(sa.i_ready > 0 ? sa.i_ready : 0, "WATCHDOG=1", 5);
    int w2 = w1 >= 0 ? wait_note(w1 + 1, "WATCHDOG=1", 5) : -1;
    CHECK(w1 >= 0 && w2 > w1, "WATCHDOG=1 not sent repeatedly (%d, %d)", w1, w2);
}

static int have_mqd_pid(void)
{
    CHECK(sa.mqd > 0, "no mqd pid (test_passed_sockets_used failed)");
    return sa.mqd > 0;
}

static void test_sighup_reloads(void)
{
    if (!have_mqd_pid())
        return;
    int before = ns.n;
    kill(sa.mqd, SIGHUP);
    int r1 = wait_note(before, "RELOADING=1", 10);
    int r2 = r1 >= 0 ? wait_note(r1 + 1, "READY=1", 10) : -1;
    CHECK(r1 >= 0 && r2 > r1, "SIGHUP: RELOADING=1 at %d, READY=1 at %d", r1, r2);
}

static void test_sigterm_stops(void)
{
    if (!have_mqd_pid())
        return;
    int before = ns.n;
    kill(sa.mqd, SIGTERM);
    CHECK(wait_note(before, "STOPPING=1", 10) >= 0, "no STOPPING=1");
    int status = spawn_wait_exit(sa.activator, 20);
    CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    /* journald priorities: <6> info, <5> notice, and no "mqd[pid]:" prefix */
    char *text = harness_read_file(sa.log, NULL);
    CHECK(text && strstr(text, "\n<6>loading: weights") && strstr(text, "\n<5>ready: model ") && !strstr(text, "mqd["),
          "log lines without journald priorities");
    free(text);
    if (status >= 0)
        sa.activator = 0;
}

/* After the socket-activation cases: the notes and mqd's log if any failed. */
static void socket_activation_end(int show)
{
    if (sa.c)
        mq_disconnect(sa.c);
    if (sa.collecting) {
        __atomic_store_n(&ns.stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(sa.collector, NULL);
    }
    close(ns.fd);
    if (show) {
        for (int i = 0; i < ns.n && i < 40; i++)
            fprintf(stderr, "    notify[%d] %s\n", i, ns.notes[i].text);
        spawn_dump_log(sa.log);
    }
    if (sa.activator > 0) {
        kill(sa.activator, SIGKILL);
        waitpid(sa.activator, NULL, 0);
    }
}

static int run_capture(char *const argv[], char *out, size_t len)
{
    char log[320];
    snprintf(log, sizeof log, "%s/check.log", dir);
    return spawn_capture(argv, log, 20, out, len);
}

/* The exposure score of dist/<unit> by systemd-analyze (0 best, 10 worst), or -1; the
 * tool's complaints about the file (unknown keys, bad values) land in `complaints`. */
static double unit_exposure(const char *unit, char *complaints, size_t len)
{
    char path[4200], out[16384];
    snprintf(path, sizeof path, "%s/../dist/%s", spawn_build_dir(), unit);
    char *argv[] = { "/usr/bin/systemd-analyze", "security", "--offline=true", "--no-pager", path, NULL };
    run_capture(argv, out, sizeof out);
    complaints[0] = 0;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
        if (strstr(l, "Unknown") || strstr(l, "Failed to parse") || strstr(l, "ignoring"))
            snprintf(complaints + strlen(complaints), len - strlen(complaints), "%s; ", l);
        else if (strstr(l, "Overall exposure level for "))
            return atof(strrchr(l, ':') + 1);
    return -1;
}

static void test_units_sandboxed(void)
{
    if (access("/usr/bin/systemd-analyze", X_OK))
        SKIP("systemd-analyze is not installed (Debian package systemd)");
    static const char *const units[] = { "mqd.service", "mq-openai.service" };
    for (int i = 0; i < 2; i++) {
        char complaints[2048];
        double score = unit_exposure(units[i], complaints, sizeof complaints);
        printf("    systemd-analyze security --offline=true dist/%s: %.1f\n", units[i], score);
        CHECK(score >= 0 && score <= 2.0, "dist/%s: exposure %.1f (at most 2.0)", units[i], score);
        CHECK(!complaints[0], "dist/%s: %s", units[i], complaints);
    }
}

static void test_check_config(void)
{
    char mqd[4200], cfg[320], out[8192];
    snprintf(mqd, sizeof mqd, "%s/mqd", spawn_build_dir());
    snprintf(cfg, sizeof cfg, "%s/mqd.json", dir);
    FILE *f = fopen(cfg, "w");
    fprintf(f, "{\"model_dir\": \"%s\", \"mode\": \"fp4\", \"kv_tokens\": 8192, \"user\": \"nobody\"}\n",
            spawn_model());
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

/* Issue 13 #10: what start-up refuses, --check-config refuses too, naming the field
 * (it said OK to all of these, and start-up then failed with a message naming none). */
static void test_check_config_knows_this_machine(void)
{
    char mqd[4200], out[8192];
    snprintf(mqd, sizeof mqd, "%s/mqd", spawn_build_dir());
    const char *model = spawn_model();
    static const struct {
        const char *flag, *value, *says;
    } cases[] = {
        { "--user", "no-such-user-mq", "user: no user \"no-such-user-mq\"" },
        { "--allowed-groups", "no-such-group-mq", "allowed_groups[0]: no group \"no-such-group-mq\"" },
        { "--admin-group", "no-such-group-mq", "admin_group: no group \"no-such-group-mq\"" },
        { "--prefill-cpus", "0-999", "prefill_cpus: CPU " },
        { "--prefill-threads", "1024", "prefill_threads: 1024 threads for " },
        { "--decode-threads", "1024", "decode_threads: 1024 threads for " },
        { "--model-dir", "/nonexistent/mq-model", "model_dir: /nonexistent/mq-model: No such file or directory" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[] = { mqd,      "--model-dir",         (char *)model,          "--user",
                         "nobody", (char *)cases[i].flag, (char *)cases[i].value, "--check-config",
                         NULL };
        int rc = run_capture(argv, out, sizeof out);
        CHECK(rc == 2 && strstr(out, cases[i].says), "%s %s: exit %d: %s", cases[i].flag, cases[i].value, rc, out);
    }
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    RUN(test_units_sandboxed);
    RUN(test_check_config);
    RUN(test_check_config_knows_this_machine);
    RUN(test_activator_binds_and_waits);
    RUN(test_first_client_waits_for_ready);
    RUN(test_request_through_activated_socket);
    RUN(test_passed_sockets_used);
    RUN(test_watchdog_repeats);
    RUN(test_sighup_reloads);
    RUN(test_sigterm_stops);
    socket_activation_end(harness_failed > 0);
    return harness_done();
}
