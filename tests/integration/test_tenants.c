/* tests/integration/test_tenants.c — sessions for tenants named by a trusted front
 * (protocol 3, libmq mq_open_tenant_session), against real mqds on the agent model:
 *   - a client not in trusted_fronts / trusted_front_groups naming a tenant is refused
 *     with MQ_ENOTTRUSTED (and a log line); its connection stays usable;
 *   - a trusted client's tenants are kept apart as uids are: one tenant's exact guess of
 *     another's prompt finds nothing cached, the same tenant's repeat does, and neither is
 *     the front's own uid; the per-uid session limit holds per tenant (the refusal names
 *     it); mqctl stats lists each tenant by name;
 *   - with share_prefix_cache, tenants share cached prefixes as uids do.
 * Three mqds (one per configuration), each started as root with --user nobody.
 */
#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"

static char dir[256];

typedef struct own_mqd {
    pid_t pid;
    char client[300], admin[300], log[300];
} own_mqd;

/* An mqd on the agent model with the extra flags (NULL-terminated); 1 when ready. */
static int start(own_mqd *m, const char *name, const char *const *extra)
{
    snprintf(m->client, sizeof m->client, "%s/%s.client", dir, name);
    snprintf(m->admin, sizeof m->admin, "%s/%s.admin", dir, name);
    snprintf(m->log, sizeof m->log, "%s/%s.log", dir, name);
    char bin[4200], model[4096];
    snprintf(bin, sizeof bin, "%s/mqd", spawn_build_dir());
    snprintf(model, sizeof model, "%s", shared_path("models/mq-agent-45m"));
    char *argv[40] = { bin,      "--model-dir", model, "--client-socket", m->client, "--admin-socket",
                       m->admin, "--hugepages", "off", "--kv-tokens",     "16384" };
    int n = 11;
    if (getuid() == 0) {
        argv[n++] = "--user";
        argv[n++] = "nobody";
    }
    for (int i = 0; extra[i] && n < 38; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    m->pid = spawn_mqd_ready(argv, m->log, m->admin, 60);
    return m->pid > 0;
}

static void stop(own_mqd *m)
{
    if (m->pid <= 0)
        return;
    kill(m->pid, SIGTERM);
    spawn_wait_exit(m->pid, 20);
    if (harness_cur_fail)
        spawn_dump_log(m->log);
    m->pid = 0;
}

/* A prompt longer than a prefill chunk (whole chunks enter the prefix index). */
static const char *secret(void)
{
    static char s[4096];
    if (!s[0])
        for (int i = 0; i < 12; i++)
            snprintf(s + strlen(s), sizeof s - strlen(s),
                     "Line %d of the secret: the access code for the vault in building %d is %d-ALPHA-%d. ", i, i + 3,
                     4417 + i * 37, 2291 + i * 11);
    return s;
}

/* Cached prompt tokens of a one-token greedy answer to prompt, on a fresh session of
 * tenant (NULL: the connection's uid); -1 on failure (msg says why). */
static int cached_of(const char *sock, const char *tenant, const char *prompt, char *msg, size_t len)
{
    mq_conn *c;
    uint64_t s, req;
    int rc = mq_connect(sock, &c);
    if (rc) {
        snprintf(msg, len, "connect: %s", mq_strerror(rc));
        return -1;
    }
    mq_params p;
    mq_params_init(&p);
    p.max_tokens = 1;
    p.flags |= MQ_PARAM_GREEDY;
    int cached = -1;
    rc = mq_open_tenant_session(c, MQ_MODE_RAW, tenant, &s);
    if (!rc)
        rc = mq_send_text(c, s, prompt, strlen(prompt), &p, &req);
    mq_event ev;
    while (!rc && (rc = mq_next_event(c, &ev, 30000)) == 0)
        if (ev.type == MQ_EVENT_DONE) {
            cached = (int)ev.stats.cached_tokens;
            break;
        }
    if (rc)
        mq_last_error(c, msg, len);
    mq_disconnect(c);
    return cached;
}

static void test_untrusted_peer_refused(void)
{
    own_mqd m = { 0 };
    const char *extra[] = { NULL };
    if (!start(&m, "untrusted", extra))
        return;
    mq_conn *c;
    uint64_t s;
    int rc = mq_connect(m.client, &c);
    CHECK(rc == 0, "connect: %s", mq_strerror(rc));
    if (!rc) {
        mq_server_info info;
        mq_server_info_get(c, &info);
        CHECK(info.protocol_version == 3, "protocol %u", info.protocol_version);
        rc = mq_open_tenant_session(c, MQ_MODE_RAW, "alice", &s);
        char msg[600];
        mq_last_error(c, msg, sizeof msg);
        printf("    %s\n", msg);
        CHECK(rc == -MQ_ENOTTRUSTED && strstr(msg, "tenant alice") && strstr(msg, "trusted_fronts"),
              "a tenant from an untrusted peer: %d (%s)", rc, msg);
        rc = mq_open_session(c, MQ_MODE_RAW, &s);
        CHECK(rc == 0, "the connection stays usable: %s", mq_strerror(rc));
        /* names that are not names never leave libmq */
        rc = mq_open_tenant_session(c, MQ_MODE_RAW, "two words", &s);
        CHECK(rc == -EINVAL, "a tenant with a space: %d", rc);
        mq_disconnect(c);
    }
    usleep(100 * 1000);
    FILE *f = fopen(m.log, "r");
    char line[1024];
    int logged = 0;
    while (f && fgets(line, sizeof line, f))
        logged |= strstr(line, "refused a session for tenant alice") != NULL;
    if (f)
        fclose(f);
    CHECK(logged, "the refusal is not in mqd's log");
    stop(&m);
}

static void test_tenants_isolated_and_limited(void)
{
    own_mqd m = { 0 };
    char gid[32];
    snprintf(gid, sizeof gid, "%u", (unsigned)getgid());
    /* trusted by group; the per-uid session limit applies to each tenant */
    const char *extra[] = { "--trusted-front-groups", gid, "--max-sessions-per-uid", "2", NULL };
    if (!start(&m, "isolated", extra))
        return;
    char msg[600] = "";
    int first = cached_of(m.client, "alice", secret(), msg, sizeof msg);
    CHECK(first == 0, "alice's first request: %d cached (%s)", first, msg);
    int bob = cached_of(m.client, "bob", secret(), msg, sizeof msg);
    int own = cached_of(m.client, NULL, secret(), msg, sizeof msg);
    int again = cached_of(m.client, "alice", secret(), msg, sizeof msg);
    printf("    cached prompt tokens: alice %d, bob's exact guess %d, the front's own uid %d, alice again %d\n", first,
           bob, own, again);
    CHECK(bob == 0, "bob found %d of alice's prompt tokens cached", bob);
    CHECK(own == 0, "the front's own uid found %d of alice's prompt tokens cached", own);
    CHECK(again > 0, "alice's repeat found nothing cached (%d)", again);

    mq_conn *c;
    int rc = mq_connect(m.client, &c);
    CHECK(rc == 0, "connect: %s", mq_strerror(rc));
    if (rc) {
        stop(&m);
        return;
    }
    uint64_t s[4];
    int r1 = mq_open_tenant_session(c, MQ_MODE_RAW, "alice", &s[0]);
    int r2 = mq_open_tenant_session(c, MQ_MODE_RAW, "alice", &s[1]);
    int r3 = mq_open_tenant_session(c, MQ_MODE_RAW, "alice", &s[2]);
    mq_last_error(c, msg, sizeof msg);
    int r4 = mq_open_tenant_session(c, MQ_MODE_RAW, "bob", &s[3]);
    CHECK(r1 == 0 && r2 == 0 && r3 == -MQ_ELIMIT && strstr(msg, "tenant alice has max_sessions_per_uid (2)"),
          "alice's sessions: %d %d %d (%s)", r1, r2, r3, msg);
    CHECK(r4 == 0, "bob's session beside alice's two: %d", r4);
    cJSON *st = admin_call(m.admin, "stats", 0);
    int alice = -1, bobs = -1;
    const cJSON *u;
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(st, "users"))
    {
        const char *name = jstr(u, "tenant_name");
        if (!strcmp(name, "alice"))
            alice = (int)jnum(u, "sessions", NULL);
        if (!strcmp(name, "bob"))
            bobs = (int)jnum(u, "sessions", NULL);
    }
    cJSON_Delete(st);
    CHECK(alice == 2 && bobs == 1, "mqctl stats users: alice %d sessions, bob %d", alice, bobs);
    mq_disconnect(c);
    stop(&m);
}

static void test_shared_prefix_cache(void)
{
    own_mqd m = { 0 };
    char uid[32];
    snprintf(uid, sizeof uid, "%u", (unsigned)getuid());
    const char *extra[] = { "--trusted-fronts", uid, "--share-prefix-cache", "true", NULL };
    if (!start(&m, "shared", extra))
        return;
    char msg[600] = "";
    int first = cached_of(m.client, "alice", secret(), msg, sizeof msg);
    int bob = cached_of(m.client, "bob", secret(), msg, sizeof msg);
    printf("    share_prefix_cache: alice %d cached, then bob's same prompt %d\n", first, bob);
    CHECK(first == 0 && bob > 0, "shared cache: alice %d, bob %d (%s)", first, bob, msg);
    stop(&m);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    RUN(test_untrusted_peer_refused);
    RUN(test_tenants_isolated_and_limited);
    RUN(test_shared_prefix_cache);
    return harness_done();
}
