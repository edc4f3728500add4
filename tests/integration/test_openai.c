/* tests/integration/test_openai.c — mq-openai end to end with the official OpenAI client.
 *
 * Starts mqd on the agent model (shared/models/mq-agent-45m) and two mq-openai servers on
 * loopback ports handed over as systemd sockets (LISTEN_FDS, which tests socket
 * activation too): one open, one with an API-key file (and no wait for a busy slot). Then runs tests/http/openai.test.mjs
 * with Node's test runner (the `openai` npm package from tests/node_modules, installed by
 * `make test`) and counts each Node test as one test here. Also checks --check-config,
 * that requests sent while mqd is still loading are answered 503 at once, and that
 * max_connections and idle_timeout_s hold.
 */
#include "tests/integration/mqd_spawn.h"

static char dir[256], csock[300], asock[300], mqd_log[300], oai_log[300], keys[300];
static pid_t mqd_pid = -1, oai_pid = -1, oai_key_pid = -1;
static int port, key_port;

/* mq-openai with `lfd` as its systemd socket (fd 3, LISTEN_FDS=1, LISTEN_PID=its pid). */
static pid_t start_oai(int lfd, const char *wait_ms, const char *extra_flag, const char *extra_val)
{
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/mq-openai", spawn_build_dir());
    char *argv[] = {
        bin, "--mqd-socket", csock, "--queue-wait-ms", (char *)wait_ms, (char *)extra_flag, (char *)extra_val, NULL
    };
    pid_t pid = spawn_fds(argv, NULL, oai_log, NULL, &lfd, 1);
    close(lfd);
    return pid;
}

/* The status of GET /health ("000": no answer within 5 s). */
static int health_status(int p, char *out, size_t len)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/health", p);
    char *argv[] = { "/usr/bin/curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", url, NULL };
    char log[320];
    snprintf(log, sizeof log, "%s/curl.out", dir);
    spawn_capture(argv, log, 10, out, len);
    return atoi(out);
}

static int http_ok(int p)
{
    char out[64];
    return health_status(p, out, sizeof out) == 200;
}

static int health_before_mqd = -1;

/* A POST while mqd loads: status, seconds to the answer, whether it had Retry-After and
 * an OpenAI error body, and whether mqd was still loading when it came. */
typedef struct loading_answer {
    int status, retry_after, error_json, still_loading;
    double seconds;
    char out[512];
} loading_answer;
static loading_answer while_loading[2];

static int log_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

static void post_while_loading(const char *path, const char *body, loading_answer *a)
{
    char url[256], head[320], out[320], log[320];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    snprintf(head, sizeof head, "%s/loading.head", dir);
    snprintf(out, sizeof out, "%s/loading.body", dir);
    snprintf(log, sizeof log, "%s/curl.out", dir);
    char *argv[] = { "/usr/bin/curl",
                     "-s",
                     "--max-time",
                     "30",
                     "-D",
                     head,
                     "-o",
                     out,
                     "-w",
                     "%{http_code}",
                     "-H",
                     "Content-Type: application/json",
                     "-d",
                     (char *)body,
                     url,
                     NULL };
    double t0 = spawn_now();
    spawn_capture(argv, log, 40, a->out, sizeof a->out);
    a->seconds = spawn_now() - t0;
    a->status = atoi(a->out);
    a->retry_after = log_has(head, "Retry-After: ");
    a->error_json = log_has(out, "\"type\":\"service_unavailable\"") && log_has(out, "\"code\":503");
    a->still_loading = !log_has(mqd_log, "ready: model");
}

static int start_all(void)
{
    spawn_tmpdir(dir, sizeof dir);
    snprintf(csock, sizeof csock, "%s/client.sock", dir);
    snprintf(asock, sizeof asock, "%s/admin.sock", dir);
    snprintf(mqd_log, sizeof mqd_log, "%s/mqd.log", dir);
    snprintf(oai_log, sizeof oai_log, "%s/mq-openai.log", dir);
    snprintf(keys, sizeof keys, "%s/keys", dir);
    FILE *f = fopen(keys, "w");
    if (!f)
        return 0;
    /* two keys of tenant team-a, one of its own tenant (named from its hash) */
    fprintf(f, "# test keys\nsk-other-key\nsk-test-1234 team-a\nsk-team-a-2\tteam-a\n");
    fclose(f);
    /* mq-openai first: until mqd is ready, /health says 503 (at once, not after a timeout) */
    int l1 = spawn_listen_loopback(&port), l2 = spawn_listen_loopback(&key_port);
    if (l1 < 0 || l2 < 0)
        return 0;
    /* the open server is told the model name, so a request needs nothing from mqd but a
     * connection (the keyed one learns the name from mqd) */
    oai_pid = start_oai(l1, "2000", "--model-name", "mq-agent-45m");
    char st[64];
    double t0 = spawn_now();
    for (int i = 0; i < 50 && (health_before_mqd = health_status(port, st, sizeof st)) == 0; i++)
        usleep(100 * 1000); /* until it listens */
    health_before_mqd = spawn_now() - t0 < 6 ? health_before_mqd : -1;
    char bin[4200], model[4096];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    snprintf(model, sizeof model, "%s", shared_path("models/mq-agent-45m"));
    /* started as root, mqd serves as an unprivileged user (here: nobody) */
    /* mq-openai (this test's uid) may name tenants: one per API key */
    char front[32];
    snprintf(front, sizeof front, "%u", (unsigned)getuid());
    char *argv[] = { bin,      "--model-dir",
                     model,    "--client-socket",
                     csock,    "--admin-socket",
                     asock,    "--hugepages",
                     "off",    "--kv-tokens",
                     "65536",  "--drain-timeout-ms",
                     "20000",  "--trusted-fronts",
                     front,    getuid() == 0 ? "--user" : NULL,
                     "nobody", NULL };
    mqd_pid = spawn(argv, NULL, mqd_log);
    /* While mqd loads, its client socket exists but nothing accepts on it: a connect waits
     * in the listen queue. Keep it there (SIGSTOP as soon as the socket is bound; the load
     * takes longer than that) and ask mq-openai for completions: 503 at once. */
    struct stat sst;
    for (double t = spawn_now(); stat(csock, &sst) != 0 && spawn_now() - t < 30;)
        usleep(1000);
    kill(mqd_pid, SIGSTOP);
    post_while_loading("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}",
                       &while_loading[0]);
    post_while_loading("/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":2}", &while_loading[1]);
    kill(mqd_pid, SIGCONT);
    if (!spawn_wait_ready(asock, mqd_pid, 120)) {
        spawn_dump_log(mqd_log);
        return 0;
    }
    /* the keyed server does not wait for a busy slot: 429 at once (openai.test.mjs) */
    oai_key_pid = start_oai(l2, "0", "--api-keys-file", keys);
    for (int i = 0; i < 100 && !(http_ok(port) && http_ok(key_port)); i++)
        usleep(100 * 1000);
    if (!http_ok(port) || !http_ok(key_port)) {
        spawn_dump_log(oai_log);
        return 0;
    }
    return 1;
}

static void test_health_503_before_mqd(void)
{
    CHECK(health_before_mqd == 503, "GET /health before mqd was ready: %d", health_before_mqd);
}

/* A request that comes while mqd loads is refused at once (mq-openai does not wait in a
 * connect to a mqd that accepts nobody yet), OpenAI-style, with Retry-After. */
static void test_503_at_once_while_mqd_loads(void)
{
    for (int i = 0; i < 2; i++) {
        const loading_answer *a = &while_loading[i];
        CHECK(a->still_loading, "request %d: mqd was ready already: the load was not caught", i);
        CHECK(a->status == 503, "request %d while loading: status %d (%s)", i, a->status, a->out);
        CHECK(a->seconds < 2, "request %d while loading: answered after %.2f s", i, a->seconds);
        CHECK(a->retry_after && a->error_json, "request %d: Retry-After %d, OpenAI error JSON %d", i, a->retry_after,
              a->error_json);
        printf("    while loading: %d in %.0f ms\n", a->status, a->seconds * 1e3);
    }
}

static void test_check_config(void)
{
    char bin[4200], out[1024], log[320];
    snprintf(bin, sizeof bin, "%s/mq-openai", spawn_build_dir());
    snprintf(log, sizeof log, "%s/check.out", dir);
    char *ok[] = { bin, "--check-config", "--listen", "127.0.0.1:9", NULL };
    CHECK(spawn_capture(ok, log, 10, out, sizeof out) == 0 && strstr(out, "configuration OK"), "check: %s", out);
    char *bad[] = { bin, "--check-config", "--max-requests", "0", NULL };
    CHECK(spawn_capture(bad, log, 10, out, sizeof out) == 2 && strstr(out, "max_requests"), "bad: %s", out);
    char *nokeys[] = { bin, "--check-config", "--api-keys-file", "/nonexistent/keys", NULL };
    CHECK(spawn_capture(nokeys, log, 10, out, sizeof out) == 2 && strstr(out, "api_keys_file"), "keys: %s", out);
    char *badlisten[] = { bin, "--check-config", "--listen", "localhost", NULL };
    CHECK(spawn_capture(badlisten, log, 10, out, sizeof out) == 2 && strstr(out, "listen"), "listen: %s", out);
}

/* A TCP connection to 127.0.0.1:p, -1 on failure. */
static int tcp_to(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(p), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* GET /health on fd, kept alive: the status, 0 when the server closed the connection or
 * did not answer within 5 s. */
static int get_kept(int fd)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1))
        return 0;
    char buf[2048];
    size_t len = 0;
    for (;;) {
        struct pollfd pf = { fd, POLLIN, 0 };
        if (poll(&pf, 1, 5000) != 1)
            return 0;
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            return 0;
        len += (size_t)n;
        buf[len] = 0;
        const char *e = strstr(buf, "\r\n\r\n"), *cl = strcasestr(buf, "\r\nContent-Length:");
        int status = 0;
        if (e && cl && cl < e && len >= (size_t)(e + 4 - buf) + strtoul(cl + 17, NULL, 10))
            return sscanf(buf, "HTTP/%*s %d", &status) == 1 ? status : 0;
        if (len == sizeof buf - 1)
            return 0;
    }
}

/* When the server closed fd (spawn_now() time; the bytes it sent are read and dropped),
 * or -1 if it is still open after max_s seconds. */
static double closed_at(int fd, double max_s)
{
    double until = spawn_now() + max_s;
    for (;;) {
        int left = (int)((until - spawn_now()) * 1e3);
        struct pollfd pf = { fd, POLLIN, 0 };
        if (left <= 0 || poll(&pf, 1, left) != 1)
            return -1;
        char b[512];
        if (recv(fd, b, sizeof b, 0) <= 0)
            return spawn_now();
    }
}

/* max_connections and idle_timeout_s hold: with two connections open to a server of
 * max_connections 2, a third one gets no answer; an idle connection is closed after
 * idle_timeout_s; then the server takes connections again. */
static void test_connection_limits(void)
{
    int lp, lfd = spawn_listen_loopback(&lp);
    char bin[4200], log[320];
    snprintf(bin, sizeof bin, "%s/mq-openai", spawn_build_dir());
    snprintf(log, sizeof log, "%s/mq-openai-limits.log", dir);
    char *argv[] = {
        bin, "--mqd-socket", csock, "--model-name", "mq-agent-45m", "--max-connections", "2", "--idle-timeout-s", "2",
        NULL
    };
    CHECK(lfd >= 0, "no loopback socket");
    if (lfd < 0)
        return;
    pid_t pid = spawn_fds(argv, NULL, log, NULL, &lfd, 1);
    close(lfd);
    int up = 0;
    for (int i = 0; i < 50 && !up; i++) {
        up = spawn_http_get(lp, "/health", NULL, 0) == 200;
        if (!up)
            usleep(100 * 1000);
    }
    CHECK(up, "the limited mq-openai did not answer /health");
    int a = tcp_to(lp), b = tcp_to(lp);
    int sa = a >= 0 ? get_kept(a) : 0;
    double ta = spawn_now();
    int sb = b >= 0 ? get_kept(b) : 0;
    CHECK(sa == 200 && sb == 200, "two kept-alive connections: %d %d", sa, sb);
    int c = tcp_to(lp);
    int sc = c >= 0 ? get_kept(c) : 0;
    CHECK(sc == 0, "a third connection beyond max_connections 2 was answered: %d", sc);
    double closed = a >= 0 ? closed_at(a, 15) : -1;
    CHECK(
        closed > 0 && closed - ta >= 1.5 &&
                closed -
                    ta<10, "the idle connection was closed %.1f s after its answer (idle_timeout_s 2; -1: not at all)",
                       closed> 0
            ? closed - ta
            : -1);
    if (b >= 0)
        closed_at(b, 15);
    if (c >= 0)
        close(c);
    int again = 0;
    for (int i = 0; i < 30 && !again; i++) {
        again = spawn_http_get(lp, "/health", NULL, 0) == 200;
        if (!again)
            usleep(100 * 1000);
    }
    CHECK(again, "no answer once the idle connections were closed");
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    kill(pid, SIGTERM);
    spawn_wait_exit(pid, 10);
}

/* Runs the Node tests; each becomes one result line here. */
static void run_node_tests(void)
{
    char url[64], kurl[64], mqctl[4200];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    snprintf(kurl, sizeof kurl, "http://127.0.0.1:%d", key_port);
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    setenv("MQ_HTTP_URL", url, 1);
    setenv("MQ_HTTP_KEY_URL", kurl, 1);
    setenv("MQ_HTTP_KEY", "sk-test-1234", 1);
    setenv("MQ_HTTP_KEY_MATE", "sk-team-a-2", 1);
    setenv("MQ_HTTP_KEY_OTHER", "sk-other-key", 1);
    setenv("MQ_ADMIN_SOCKET", asock, 1);
    setenv("MQ_MQCTL", mqctl, 1);
    spawn_node_tests("http/openai.test.mjs");
}

int main(void)
{
    int started = start_all();
    CHECK(started, "could not start mqd and mq-openai (logs in %s)", dir);
    if (started) {
        RUN(test_health_503_before_mqd);
        RUN(test_503_at_once_while_mqd_loads);
        RUN(test_check_config);
        RUN(test_connection_limits); /* before the Node tests: their last one drains mqd */
        run_node_tests();
    }
    if (oai_pid > 0)
        kill(oai_pid, SIGTERM);
    if (oai_key_pid > 0)
        kill(oai_key_pid, SIGTERM);
    if (mqd_pid > 0) {
        kill(mqd_pid, SIGTERM);
        spawn_wait_exit(mqd_pid, 30);
    }
    spawn_wait_exit(oai_pid, 10);
    spawn_wait_exit(oai_key_pid, 10);
    if (harness_failed) {
        spawn_dump_log(oai_log);
        spawn_dump_log(mqd_log);
    }
    return harness_done();
}
