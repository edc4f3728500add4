/* tests/integration/test_cluster.c — several mq hosts behind HAProxy (issue 12).
 *
 * Starts two hosts on this machine, each an mqd on the agent model
 * (shared/models/mq-agent-45m) with its own sockets and its own CPU, and an mq-openai on a
 * loopback port; then two HAProxy instances (Debian's package, installed by `make deps`)
 * made from dist/haproxy/mq.cfg: one as shipped (X-Session-Id hashed onto the hosts), one
 * with `balance roundrobin` (write_cfg says what else the test changes). HAProxy runs as
 * nobody when the test runs as root, on loopback sockets the test hands it. Checks that
 * HAProxy's health checks pass on both hosts, then runs tests/http/cluster.test.mjs (the
 * replays through both balancers, unbuffered SSE, a drain) with the official OpenAI client
 * and counts each Node test as one test here; its figures come out as `name: value`
 * lines. Everything the test started is stopped at the end, when a test fails, on
 * SIGINT/SIGTERM and after TIME_LIMIT_S.
 */
#include "tests/integration/mqd_spawn.h"

#include <sched.h>

#define N_HOSTS      2
#define N_LB         2 /* 0: as shipped, 1: round robin */
#define TIME_LIMIT_S 600
#define HAPROXY_CFG  "dist/haproxy/mq.cfg"

typedef struct host {
    char name[16];
    char csock[300], asock[300], mqd_log[300], oai_log[300];
    int port;
    pid_t mqd, oai;
} host;

typedef struct balancer {
    char cfg[300], log[300];
    int port, stats_port;
    pid_t pid;
} balancer;

static char dir[256], haproxy[64];
static host hosts[N_HOSTS];
static balancer lbs[N_LB];

static pid_t *all_pids[2 * N_HOSTS + N_LB];
static int n_pids;

static void track(pid_t *p)
{
    all_pids[n_pids++] = p;
}

/* Everything still running: SIGTERM, then SIGKILL after a grace period. HAProxy and
 * mq-openai first, so mqd's drain has no new work. */
static void stop_all(void)
{
    for (int i = n_pids - 1; i >= 0; i--)
        if (*all_pids[i] > 0)
            kill(*all_pids[i], SIGTERM);
    for (int i = n_pids - 1; i >= 0; i--)
        if (*all_pids[i] > 0) {
            if (spawn_wait_exit(*all_pids[i], 30) < 0) {
                kill(*all_pids[i], SIGKILL);
                waitpid(*all_pids[i], NULL, 0);
            }
            *all_pids[i] = -1;
        }
}

static void on_signal(int sig)
{
    static const char msg[] = "  FAIL test_cluster interrupted or over its time limit: stopping what it started\n";
    ssize_t w = write(1, msg, sizeof msg - 1);
    (void)w;
    for (int i = 0; i < n_pids; i++)
        if (*all_pids[i] > 0)
            kill(*all_pids[i], SIGKILL);
    _exit(128 + sig);
}

/* The CPU host i runs on: the i-th this process may use (round robin). */
static int host_cpu(int i)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set))
        return 0;
    int n = CPU_COUNT(&set), k = i % (n ? n : 1);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set) && k-- == 0)
            return c;
    return 0;
}

static int start_host(int i)
{
    host *h = &hosts[i];
    char hdir[280];
    snprintf(h->name, sizeof h->name, "mq%d", i + 1);
    snprintf(hdir, sizeof hdir, "%s/%s", dir, h->name);
    if (mkdir(hdir, 0755) && errno != EEXIST)
        return 0;
    snprintf(h->csock, sizeof h->csock, "%s/client.sock", hdir);
    snprintf(h->asock, sizeof h->asock, "%s/admin.sock", hdir);
    snprintf(h->mqd_log, sizeof h->mqd_log, "%s/mqd.log", hdir);
    snprintf(h->oai_log, sizeof h->oai_log, "%s/mq-openai.log", hdir);
    char bin[4200], oai[4200], model[4096], cpu[16];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    snprintf(oai, sizeof oai, "%s/mq-openai", spawn_build_dir());
    snprintf(model, sizeof model, "%s", shared_path("models/mq-agent-45m"));
    snprintf(cpu, sizeof cpu, "%d", host_cpu(i));
    /* KV for every conversation the replays leave pinned; started as root, mqd serves as nobody */
    char *argv[] = { bin,      "--model-dir",
                     model,    "--client-socket",
                     h->csock, "--admin-socket",
                     h->asock, "--hugepages",
                     "off",    "--kv-tokens",
                     "131072", "--drain-timeout-ms",
                     "20000",  "--prefill-cpus",
                     cpu,      "--decode-cpus",
                     cpu,      getuid() == 0 ? "--user" : NULL,
                     "nobody", NULL };
    h->mqd = spawn(argv, NULL, h->mqd_log);
    if (!spawn_wait_ready(h->asock, h->mqd, 120)) {
        spawn_dump_log(h->mqd_log);
        return 0;
    }
    int lfd = spawn_listen_loopback(&h->port);
    if (lfd < 0)
        return 0;
    char *oargv[] = { oai, "--mqd-socket", h->csock, NULL };
    h->oai = spawn_fds(oargv, NULL, h->oai_log, NULL, &lfd, 1);
    close(lfd);
    for (int k = 0; k < 100 && spawn_http_get(h->port, "/health", NULL, 0) != 200; k++)
        usleep(100 * 1000);
    if (spawn_http_get(h->port, "/health", NULL, 0) != 200) {
        spawn_dump_log(h->oai_log);
        return 0;
    }
    return 1;
}

/* The first whitespace-separated word of a line, copied into w. */
static const char *first_word(const char *line, char *w, size_t len)
{
    while (*line == ' ' || *line == '\t')
        line++;
    size_t n = strcspn(line, " \t\r\n");
    snprintf(w, len, "%.*s", (int)(n < len ? n : len - 1), line);
    return line + n;
}

/* dist/haproxy/mq.cfg as the test runs it. Only three kinds of lines change: `bind` takes
 * the socket the test hands over (fd@3 in frontend mq_openai, fd@4 in frontend stats);
 * the first N_HOSTS `server` lines get the test's hosts' addresses (name and parameters
 * kept) and the others go; with round_robin, `balance` becomes `balance roundrobin`.
 * Every other line is the shipped one. 1, or 0 when the file does not have those lines. */
static int write_cfg(const char *out, int round_robin)
{
    FILE *in = fopen(HAPROXY_CFG, "r"), *o = fopen(out, "w");
    int binds = 0, servers = 0, balance = 0;
    char line[1024], w[64], section[128] = "";
    while (in && o && fgets(line, sizeof line, in)) {
        const char *rest = first_word(line, w, sizeof w);
        if (line[0] != ' ' && line[0] != '\t' && line[0] != '#' && w[0])
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line, "\r\n"), line);
        if (!strcmp(w, "bind")) {
            fprintf(o, "    bind fd@%d\n", strcmp(section, "frontend stats") ? 3 : 4);
            binds++;
        } else if (!strcmp(w, "server")) {
            char name[64], addr[128];
            int used = 0;
            if (servers < N_HOSTS && sscanf(rest, " %63s %127s%n", name, addr, &used) == 2)
                fprintf(o, "    server %s 127.0.0.1:%d%.*s\n", name, hosts[servers].port,
                        (int)strcspn(rest + used, "\r\n"), rest + used);
            servers++;
        } else if (!strcmp(w, "balance")) {
            balance += strstr(rest, "hdr(X-Session-Id)") != NULL;
            fputs(round_robin ? "    balance roundrobin\n" : line, o);
        } else
            fputs(line, o);
    }
    if (in)
        fclose(in);
    if (o)
        fclose(o);
    CHECK(binds == 2 && servers >= N_HOSTS && balance == 1,
          HAPROXY_CFG ": %d bind lines (want 2), %d server lines (want >= %d), %d `balance hdr(X-Session-Id)`", binds,
          servers, N_HOSTS, balance);
    return in && o && binds == 2 && servers >= N_HOSTS && balance == 1;
}

static int start_balancer(int k)
{
    balancer *b = &lbs[k];
    snprintf(b->cfg, sizeof b->cfg, "%s/haproxy-%d.cfg", dir, k);
    snprintf(b->log, sizeof b->log, "%s/haproxy-%d.log", dir, k);
    if (!write_cfg(b->cfg, k == 1))
        return 0;
    chmod(b->cfg, 0644);
    int fds[2] = { spawn_listen_loopback(&b->port), spawn_listen_loopback(&b->stats_port) };
    if (fds[0] < 0 || fds[1] < 0)
        return 0;
    char *argv[] = { haproxy, "-db", "-f", b->cfg, NULL };
    b->pid = spawn_fds(argv, NULL, b->log, getuid() == 0 ? "nobody" : NULL, fds, 2);
    close(fds[0]);
    close(fds[1]);
    return b->pid > 0;
}

/* 1 when balancer k's last health check of host i passed at layer 7 (HTTP 200). */
static int check_ok(int k, int i)
{
    static char body[1 << 16];
    char want[128];
    if (spawn_http_get(lbs[k].stats_port, "/metrics?scope=server", body, sizeof body) != 200)
        return 0;
    snprintf(want, sizeof want, "haproxy_server_check_status{proxy=\"mq_hosts\",server=\"%.15s\",state=\"L7OK\"} 1",
             hosts[i].name);
    return strstr(body, want) != NULL;
}

/* HAProxy's checks of /health pass on every host, in both balancers, within 10 s. */
static void test_health_checks(void)
{
    for (int k = 0; k < N_LB; k++)
        for (int i = 0; i < N_HOSTS; i++) {
            int ok = 0;
            for (int t = 0; t < 100 && !(ok = check_ok(k, i)); t++)
                usleep(100 * 1000);
            CHECK(ok, "balancer %d: the health check of %s did not pass (%s)", k, hosts[i].name, lbs[k].log);
        }
}

static void run_node_tests(void)
{
    char url[64], rr[64], stats[64], mqctl[4200], list[N_HOSTS * 400] = "";
    snprintf(url, sizeof url, "http://127.0.0.1:%d", lbs[0].port);
    snprintf(rr, sizeof rr, "http://127.0.0.1:%d", lbs[1].port);
    snprintf(stats, sizeof stats, "http://127.0.0.1:%d", lbs[0].stats_port);
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    for (int i = 0; i < N_HOSTS; i++) {
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s|http://127.0.0.1:%d|%s", i ? "," : "", hosts[i].name, hosts[i].port,
                 hosts[i].asock);
    }
    setenv("MQ_LB_URL", url, 1);
    setenv("MQ_LB_RR_URL", rr, 1);
    setenv("MQ_LB_STATS_URL", stats, 1);
    setenv("MQ_HOSTS", list, 1);
    setenv("MQ_MQCTL", mqctl, 1);
    spawn_node_tests("http/cluster.test.mjs");
}

static int start_all(void)
{
    static const char *const paths[] = { "/usr/sbin/haproxy", "/usr/local/sbin/haproxy" };
    for (size_t i = 0; i < sizeof paths / sizeof *paths && !haproxy[0]; i++)
        if (access(paths[i], X_OK) == 0)
            snprintf(haproxy, sizeof haproxy, "%s", paths[i]);
    if (!haproxy[0]) {
        printf("  FAIL haproxy is not installed (`make deps` installs Debian's package)\n");
        return 0;
    }
    spawn_tmpdir(dir, sizeof dir);
    if (!dir[0])
        return 0;
    for (int i = 0; i < N_HOSTS; i++)
        if (!start_host(i))
            return 0;
    for (int k = 0; k < N_LB; k++)
        if (!start_balancer(k))
            return 0;
    return 1;
}

int main(void)
{
    for (int i = 0; i < N_HOSTS; i++) {
        hosts[i].mqd = hosts[i].oai = -1;
        track(&hosts[i].mqd);
        track(&hosts[i].oai);
    }
    for (int k = 0; k < N_LB; k++) {
        lbs[k].pid = -1;
        track(&lbs[k].pid);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGALRM, on_signal);
    alarm(TIME_LIMIT_S);
    double t0 = spawn_now();
    int started = start_all();
    CHECK(started, "could not start the hosts and HAProxy (logs in %s)", dir);
    if (started) {
        printf("  hosts and balancers up in %.1f s\n", spawn_now() - t0);
        RUN(test_health_checks);
        run_node_tests();
    }
    stop_all();
    printf("cluster_test_seconds: %.1f\n", spawn_now() - t0);
    if (harness_failed) {
        for (int i = 0; i < N_HOSTS; i++) {
            spawn_dump_log(hosts[i].mqd_log);
            spawn_dump_log(hosts[i].oai_log);
        }
        for (int k = 0; k < N_LB; k++)
            spawn_dump_log(lbs[k].log);
    } else if (dir[0])
        harness_rm_rf(dir);
    return harness_done();
}
