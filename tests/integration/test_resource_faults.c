/* tests/integration/test_resource_faults.c — mqd when a resource runs out or the operator
 * errs (issue 13, "Faults" and "Hardening"), each with an mqd of its own:
 *   - a full KV store: with on_full "fail" the request that does not fit ends with
 *     MQ_EKVFULL and a message that says so; with "wait" it waits for the running one and
 *     then completes;
 *   - per-uid limits with two uids: uid 4242's running request grows into its KV share
 *     and is ended naming the share, its next request waits for room in the share, a
 *     third is refused (its queue share) — while root's requests are served;
 *   - SIGHUP with a broken configuration (bad JSON, a bad value) keeps the old one, logs
 *     why, and a good one afterwards is applied; SIGHUP while loading (the load held at
 *     its first read by a fanotify permission mark) is refused, logged;
 *   - no memory for a client's channel (mqd's address space limited with prlimit): that
 *     client is refused with MQ_ELIMIT saying why, a connected client keeps working, and
 *     clients get in again once memory is back; no free huge pages: channels fall back to
 *     ordinary shared memory.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/resource.h>

#include "engine/arena.h"
#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"

#define OTHER_UID 4242 /* an ordinary local user besides root */

static char dir[256];

/* n token ids from a simple deterministic sequence (valid ids of the Qwen3 vocabulary);
 * different `salt`s give prompts that share no prefix. */
static int32_t *ids_of(int n, int salt)
{
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++)
        t[i] = 1000 + (int32_t)((i * 7919 + salt * 104729) % 40000);
    return t;
}

typedef struct stream {
    mq_conn *c;
    uint64_t session, req;
    int tokens, done, end_reason, error, submit_rc;
    double t_first, t_done;
    char msg[300];
} stream;

/* Opens a session on c and submits n ids (salt) as a greedy request of max_tokens. */
static int stream_start(stream *s, mq_conn *c, int n, int salt, int max_tokens)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = (uint32_t)max_tokens;
    int32_t *t = ids_of(n, salt);
    int rc = mq_open_session(c, MQ_MODE_RAW, &s->session);
    if (!rc)
        rc = mq_send_tokens(c, s->session, t, (size_t)n, &p, &s->req);
    free(t);
    s->submit_rc = rc;
    if (rc)
        mq_last_error(c, s->msg, sizeof s->msg);
    return rc;
}

/* Reads c's events into whichever of the streams they belong to, until `until` is done
 * (or for `max_tokens_of_until` tokens of it when > 0). 0 or an mq_next_event error. */
static int pump(mq_conn *c, stream **all, int n, stream *until, int tokens_of_until)
{
    while (!until->done && !(tokens_of_until > 0 && until->tokens >= tokens_of_until)) {
        mq_event ev;
        int rc = mq_next_event(c, &ev, 60000);
        if (rc)
            return rc;
        for (int i = 0; i < n; i++) {
            stream *s = all[i];
            if (s->submit_rc || s->req != ev.req)
                continue;
            if (ev.type == MQ_EVENT_TOKEN) {
                if (!s->tokens++)
                    s->t_first = spawn_now();
                continue;
            }
            s->done = 1;
            s->t_done = spawn_now();
            s->end_reason = ev.end_reason;
            s->error = ev.error;
            snprintf(s->msg, sizeof s->msg, "%.*s", (int)ev.text_len, ev.text);
        }
    }
    return 0;
}

static int start_ready(own *o, const char *name, const char *const *extra)
{
    own_start(o, dir, name, 0, extra);
    if (spawn_wait_ready(o->admin, o->pid, 120))
        return 1;
    CHECK(0, "%s: mqd did not become ready", name);
    spawn_dump_log(o->log);
    own_stop(o);
    return 0;
}

/* ---- a full KV store ------------------------------------------------------------- */
/* A store of 16 blocks of 16 tokens; two prompts of 150 tokens need 10 blocks each at
 * admission: both do not fit. */
static void kv_full(const char *policy)
{
    char name[32];
    snprintf(name, sizeof name, "kvfull-%s", policy);
    const char *extra[] = { "--model-dir", spawn_model(), "--user",   "nobody", "--kv-tokens", "256",
                            "--on-full",   policy,        "--warmup", "false",  NULL };
    own o;
    if (!start_ready(&o, name, extra))
        return;
    mq_conn *c;
    CHECK(mq_connect(o.client, &c) == 0, "connect");
    stream a, b;
    CHECK(stream_start(&a, c, 150, 1, 40) == 0, "a: %s", a.msg);
    stream *all[] = { &a, &b };
    pump(c, all, 1, &a, 1); /* a holds its blocks */
    int brc = stream_start(&b, c, 150, 2, 40);
    if (!brc)
        pump(c, all, 2, &b, 0);
    pump(c, all, 2, &a, 0);
    printf("    on_full %s: a %s after %d tokens; b %s (%s)\n", policy,
           a.end_reason == MQ_END_LENGTH ? "completed" : "ended", a.tokens,
           brc                             ? "refused"
           : b.end_reason == MQ_END_LENGTH ? "completed"
                                           : "failed",
           b.msg);
    CHECK(a.done && a.end_reason == MQ_END_LENGTH && a.tokens == 40, "a: end %d, %d tokens", a.end_reason, a.tokens);
    if (!strcmp(policy, "fail")) {
        int failed = brc == -MQ_EKVFULL || (b.done && b.end_reason == MQ_END_FAILED && b.error == -MQ_EKVFULL);
        CHECK(failed && strstr(b.msg, "KV store full"), "b: submit %d, end %d, error %d: %s", brc, b.end_reason,
              b.error, b.msg);
    } else {
        CHECK(!brc && b.done && b.end_reason == MQ_END_LENGTH && b.tokens == 40, "b: submit %d, end %d, %d tokens: %s",
              brc, b.end_reason, b.tokens, b.msg);
        CHECK(b.t_first > a.t_done, "b's first token came before a was done: it did not wait");
    }
    mq_disconnect(c);
    cJSON *r = NULL;
    for (int i = 0; i < 50 && (!r || jnum(r, "kv", "used") != 0); i++) {
        cJSON_Delete(r);
        usleep(100 * 1000);
        r = admin_call(o.admin, "stats", 0);
    }
    CHECK(jnum(r, "kv", "used") == 0 && jnum(r, "sessions", NULL) == 0, "KV blocks in use after the clients left");
    cJSON_Delete(r);
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

static void test_kv_full_fail(void)
{
    kv_full("fail");
}

static void test_kv_full_wait(void)
{
    kv_full("wait");
}

/* ---- per-uid limits, two uids ---------------------------------------------------- */
/* The other uid's part, in a child: a 900-token request that grows into the uid's share
 * of 64 blocks (1024 tokens); once it streams, a 200-token request that does not fit
 * beside it (it waits: on_full "wait"). Tells the parent "2" and waits for its "g" (the
 * parent saw that request waiting), then sends a third that finds the uid's one queue
 * place taken. Tells the parent "q" after the refusal, then writes its three results. */
typedef struct uid_result {
    int r3_rc;
    char r3_msg[300];
    stream s1, s2;
} uid_result;

static void other_uid_main(const char *sock, int out, int in)
{
    static uid_result res;
    if (setgroups(0, NULL) || setgid(OTHER_UID) || setuid(OTHER_UID))
        _exit(10);
    mq_conn *c;
    if (mq_connect(sock, &c))
        _exit(11);
    stream s3;
    stream *all[] = { &res.s1, &res.s2 };
    if (stream_start(&res.s1, c, 900, 11, 400) || pump(c, all, 1, &res.s1, 1))
        _exit(12);
    if (stream_start(&res.s2, c, 200, 12, 16))
        _exit(13);
    char g = 0;
    if (write(out, "2", 1) != 1 || read(in, &g, 1) != 1 || g != 'g')
        _exit(14);
    res.r3_rc = stream_start(&s3, c, 50, 13, 4);
    snprintf(res.r3_msg, sizeof res.r3_msg, "%s", s3.msg);
    if (write(out, "q", 1) != 1)
        _exit(14);
    pump(c, all, 2, &res.s1, 0);
    pump(c, all, 2, &res.s2, 0);
    res.s1.c = res.s2.c = NULL;
    _exit(write(out, &res, sizeof res) == (ssize_t)sizeof res ? 0 : 15);
}

/* uid's requests waiting in mqd's scheduler (mqctl stats' per-uid table); -1 if none shown */
static int uid_queued(const char *admin, int uid)
{
    cJSON *st = admin_call(admin, "stats", 0);
    int queued = -1;
    const cJSON *u;
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(st, "users")) if (jnum(u, "uid", NULL) == uid) queued =
        (int)jnum(u, "queued", NULL);
    cJSON_Delete(st);
    return queued;
}

static void test_per_uid_kv_and_queue(void)
{
    if (geteuid() != 0)
        SKIP("needs root: the test speaks to mqd as two uids");
    const char *extra[] = { "--model-dir",
                            spawn_model(),
                            "--user",
                            "nobody",
                            "--kv-tokens",
                            "16384",
                            "--kv-tokens-per-uid",
                            "1024",
                            "--on-full",
                            "wait",
                            "--queue-max-per-uid",
                            "1",
                            NULL };
    own o;
    if (!start_ready(&o, "peruid", extra))
        return;
    int p[2], g[2];
    CHECK(pipe(p) == 0 && pipe(g) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        close(g[1]);
        other_uid_main(o.client, p[1], g[0]);
    }
    close(p[1]);
    close(g[0]);
    char q = 0;
    struct pollfd pf = { p[0], POLLIN, 0 };
    CHECK(poll(&pf, 1, 60000) == 1 && read(p[0], &q, 1) == 1 && q == '2', "uid %d's requests did not start", OTHER_UID);
    /* the 2nd request reached the scheduler and waits for room in the uid's share (a state
     * waited for, however slow the machine: its 1st request keeps its share full for
     * another ~120 tokens) */
    int waiting = 0;
    for (double t0 = spawn_now(); spawn_now() - t0 < 60 && (waiting = uid_queued(o.admin, OTHER_UID)) != 1;)
        usleep(10 * 1000);
    CHECK(write(g[1], "g", 1) == 1, "pipe");
    close(g[1]);
    CHECK(poll(&pf, 1, 60000) == 1 && read(p[0], &q, 1) == 1 && q == 'q', "uid %d's 3rd request was not sent",
          OTHER_UID);
    /* root meanwhile: a 900-token request of its own, in its own share */
    mq_conn *c;
    stream r;
    stream *all[] = { &r };
    CHECK(mq_connect(o.client, &c) == 0 && stream_start(&r, c, 900, 21, 16) == 0, "root's request: %s", r.msg);
    pump(c, all, 1, &r, 0);
    CHECK(r.done && r.end_reason == MQ_END_LENGTH && r.tokens == 16, "root's request: end %d, %d tokens: %s",
          r.end_reason, r.tokens, r.msg);
    mq_disconnect(c);
    static uid_result res;
    int wst;
    CHECK(spawn_child_result(pid, p[0], &res, sizeof res, 120000, &wst), "uid %d's child: status %d", OTHER_UID, wst);
    printf("    uid %d: 1st request \"%s\" after %d tokens; 2nd waited, %d tokens; 3rd \"%s\"; root served after %d "
           "of uid %d's was seen waiting\n",
           OTHER_UID, res.s1.msg, res.s1.tokens, res.s2.tokens, res.r3_msg, waiting, OTHER_UID);
    char share[64];
    snprintf(share, sizeof share, "KV share of tenant %d full", OTHER_UID);
    CHECK(res.s1.done && res.s1.end_reason == MQ_END_FAILED && res.s1.error == -MQ_EKVFULL && strstr(res.s1.msg, share),
          "1st: end %d error %d: %s", res.s1.end_reason, res.s1.error, res.s1.msg);
    /* the last token sampled is not in the KV yet: 1024 positions hold 1025 tokens */
    CHECK(900 + res.s1.tokens <= 1025 && 900 + res.s1.tokens > 1024 - 32, "1st ended at %d tokens of a 1024 share",
          900 + res.s1.tokens);
    CHECK(res.s2.done && res.s2.end_reason == MQ_END_LENGTH && res.s2.tokens == 16 && res.s2.t_first > res.s1.t_done,
          "2nd: end %d, %d tokens, %s the 1st ended", res.s2.end_reason, res.s2.tokens,
          res.s2.t_first > res.s1.t_done ? "after" : "BEFORE");
    CHECK(res.r3_rc == -MQ_ELIMIT && strstr(res.r3_msg, "requests waiting"), "3rd: %d (%s)", res.r3_rc, res.r3_msg);
    CHECK(waiting == 1, "stats showed %d requests of uid %d waiting (want 1) in 60 s", waiting, OTHER_UID);
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

/* ---- SIGHUP -------------------------------------------------------------------- */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int wait_log(own *o, const char *what, int timeout_s)
{
    for (double t0 = spawn_now(); spawn_now() - t0 < timeout_s; usleep(50 * 1000))
        if (own_log_has(o, what))
            return 1;
    return 0;
}

static double config_value(own *o, const char *key)
{
    cJSON *r = admin_call(o->admin, "config", 0);
    double v = jnum(cJSON_GetObjectItem(r, "config"), key, NULL);
    cJSON_Delete(r);
    return v;
}

static void test_sighup_broken_config_kept(void)
{
    char cfg[400], good[1024], text[1200];
    snprintf(cfg, sizeof cfg, "%s/hup.json", dir);
    snprintf(good, sizeof good, "\"model_dir\": \"%s\", \"user\": \"nobody\", \"kv_tokens\": 4096", spawn_model());
    snprintf(text, sizeof text, "{%s, \"drain_timeout_ms\": 1111}\n", good);
    write_file(cfg, text);
    const char *extra[] = { "--config", cfg, NULL };
    own o;
    if (!start_ready(&o, "hup", extra))
        return;
    /* not JSON */
    snprintf(text, sizeof text, "{%s, \"drain_timeout_ms\": 2222,,\n", good);
    write_file(cfg, text);
    kill(o.pid, SIGHUP);
    CHECK(wait_log(&o, "reload refused, configuration unchanged: ", 10), "no log line for the broken JSON");
    CHECK(config_value(&o, "drain_timeout_ms") == 1111, "drain_timeout_ms %.0f after a refused reload",
          config_value(&o, "drain_timeout_ms"));
    /* JSON, but a value out of its range */
    snprintf(text, sizeof text, "{%s, \"drain_timeout_ms\": -5}\n", good);
    write_file(cfg, text);
    kill(o.pid, SIGHUP);
    CHECK(wait_log(&o, "drain_timeout_ms", 10) && config_value(&o, "drain_timeout_ms") == 1111,
          "a bad drain_timeout_ms: not named in the log, or applied");
    cJSON *r = admin_call(o.admin, "status", 0);
    CHECK(r && !strcmp(jstr(r, "state"), "ready"), "not ready after the refused reloads");
    cJSON_Delete(r);
    /* a good one is applied */
    snprintf(text, sizeof text, "{%s, \"drain_timeout_ms\": 3333}\n", good);
    write_file(cfg, text);
    kill(o.pid, SIGHUP);
    int applied = 0;
    for (double t0 = spawn_now(); !applied && spawn_now() - t0 < 10; usleep(50 * 1000))
        applied = config_value(&o, "drain_timeout_ms") == 3333;
    CHECK(applied && own_log_has(&o, "reloaded "), "the good configuration was not applied");
    char *lines = harness_read_file(o.log, NULL);
    for (char *l = lines ? strtok(lines, "\n") : NULL; l; l = strtok(NULL, "\n"))
        if (strstr(l, "reload"))
            printf("    | %s\n", l);
    free(lines);
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

/* A model folder that is spawn_model() but for config.json, the first file the load thread
 * reads (mqd's main thread only opens it): a copy of its own, so that a fanotify mark on
 * it touches no other reader of the shared model. Every other file is a symbolic link.
 * 0, or -1 with a failed CHECK. */
static int gated_model(char *out, size_t len)
{
    char src[PATH_MAX];
    if (!realpath(spawn_model(), src)) {
        CHECK(0, "%s: %s", spawn_model(), strerror(errno));
        return -1;
    }
    snprintf(out, len, "%s/gated-model", dir);
    mkdir(out, 0755);
    static const char *const linked[] = { "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                          "generation_config.json" };
    char from[PATH_MAX + 64], to[PATH_MAX + 64];
    for (size_t i = 0; i < sizeof linked / sizeof linked[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", src, linked[i]);
        snprintf(to, sizeof to, "%s/%s", out, linked[i]);
        if (access(from, F_OK) == 0 && symlink(from, to) < 0 && errno != EEXIST) {
            CHECK(0, "symlink %s: %s", to, strerror(errno));
            return -1;
        }
    }
    snprintf(from, sizeof from, "%s/config.json", src);
    snprintf(to, sizeof to, "%s/config.json", out);
    size_t n = 0;
    char *text = harness_read_file(from, &n);
    FILE *f = text ? fopen(to, "w") : NULL;
    int ok = f && fwrite(text, 1, n, f) == n;
    if (f)
        ok &= fclose(f) == 0;
    free(text);
    CHECK(ok, "copying %s to %s", from, to);
    return ok ? 0 : -1;
}

static void allow(int fan, const struct fanotify_event_metadata *m)
{
    if (m->mask & FAN_ALL_PERM_EVENTS) {
        struct fanotify_response r = { .fd = m->fd, .response = FAN_ALLOW };
        if (write(fan, &r, sizeof r) != sizeof r)
            fprintf(stderr, "    fanotify answer: %s\n", strerror(errno));
    }
    if (m->fd >= 0)
        close(m->fd);
}

/* Waits up to timeout_s for a read of the marked file by process pid; reads by anyone
 * else are allowed at once. 1 with *held = the pending event (answer it with allow()). */
static int wait_read_by(int fan, pid_t pid, struct fanotify_event_metadata *held, double timeout_s)
{
    for (double t0 = spawn_now(); spawn_now() - t0 < timeout_s;) {
        struct pollfd pf = { fan, POLLIN, 0 };
        if (poll(&pf, 1, 100) != 1)
            continue;
        char buf[4096] __attribute__((aligned(8)));
        ssize_t len = read(fan, buf, sizeof buf);
        int found = 0;
        for (struct fanotify_event_metadata *m = (void *)buf; len > 0 && FAN_EVENT_OK(m, len);
             m = FAN_EVENT_NEXT(m, len)) {
            if (!found && m->pid == pid && (m->mask & FAN_ACCESS_PERM)) {
                *held = *m;
                found = 1;
            } else {
                allow(fan, m);
            }
        }
        if (found)
            return 1;
    }
    return 0;
}

/* SIGHUP while mqd is loading: refused with a log line (the load thread reads the
 * configuration), and mqd still gets ready; a SIGHUP once ready is applied. The load is
 * held, not raced: config.json of the model carries a fanotify permission mark, so the
 * load thread's first read of it waits until the test answers — after the SIGHUP has been
 * answered. */
static void test_sighup_while_loading(void)
{
    int fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
    if (fan < 0 && errno == EPERM)
        SKIP("fanotify permission events need CAP_SYS_ADMIN; without them the load cannot be held");
    if (fan < 0 && errno == EINVAL)
        SKIP("kernel without fanotify permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS)");
    CHECK(fan >= 0, "fanotify_init: %s", strerror(errno));
    char model[300], config[340];
    if (fan < 0 || gated_model(model, sizeof model) < 0) {
        if (fan >= 0)
            close(fan);
        return;
    }
    snprintf(config, sizeof config, "%s/config.json", model);
    if (fanotify_mark(fan, FAN_MARK_ADD, FAN_ACCESS_PERM, AT_FDCWD, config) < 0) {
        CHECK(0, "fanotify_mark %s: %s", config, strerror(errno));
        close(fan);
        return;
    }
    const char *extra[] = { "--model-dir", model, "--user", "nobody", "--kv-tokens", "4096", NULL };
    own o;
    own_start(&o, dir, "hupload", 0, extra);
    double scale = spawn_time_scale();
    struct fanotify_event_metadata held;
    int holding = wait_read_by(fan, o.pid, &held, 60 * scale);
    CHECK(holding, "mqd did not read %s within %.0f s", config, 60 * scale);
    /* mqd answers the admin socket from its loop thread, which has every signal blocked
     * (signalfd): SIGHUP is safe to send once it answers */
    int loading = 0;
    char phase[64] = "";
    double t_held = spawn_now();
    for (double t0 = spawn_now(); holding && !loading && spawn_now() - t0 < 20 * scale; usleep(10 * 1000)) {
        cJSON *r = admin_call(o.admin, "status", 0);
        loading = r && !strcmp(jstr(r, "state"), "loading");
        if (loading)
            snprintf(phase, sizeof phase, "%s", jstr(cJSON_GetObjectItem(r, "load"), "phase"));
        cJSON_Delete(r);
    }
    CHECK(!holding || loading, "state is not \"loading\" while the load thread waits for config.json");
    int refused = 0;
    if (loading) {
        kill(o.pid, SIGHUP);
        refused = wait_log(&o, "reload refused: mqd is still loading the model", (int)(10 * scale));
        CHECK(refused, "a SIGHUP during the load was not refused with a log line");
        cJSON *r = admin_call(o.admin, "status", 0);
        CHECK(r && !strcmp(jstr(r, "state"), "loading"), "state %s after the refused SIGHUP (the load is held)",
              r ? jstr(r, "state") : "(no answer)");
        cJSON_Delete(r);
    }
    if (holding) {
        printf("    load held in phase \"%s\" for %.2f s: the SIGHUP %s\n", phase, spawn_now() - t_held,
               refused ? "was refused" : "was not refused");
        allow(fan, &held);
    }
    close(fan); /* answers anything still pending with "allow" */
    CHECK(spawn_wait_ready(o.admin, o.pid, 120), "not ready after a SIGHUP while loading");
    CHECK(!own_log_has(&o, "reloaded "), "the SIGHUP sent while loading was applied");
    kill(o.pid, SIGHUP);
    CHECK(wait_log(&o, "reloaded ", (int)(10 * scale)), "a SIGHUP once ready was not applied");
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

/* ---- memory for channels -------------------------------------------------------- */
static int one_request_on(const char *sock, mq_conn *c, int *err_out, char *msg, size_t msglen)
{
    mq_conn *own_c = NULL;
    int rc = 0;
    if (!c) {
        rc = mq_connect(sock, &own_c);
        if (rc) {
            *err_out = rc;
            snprintf(msg, msglen, "%s", mq_strerror(rc));
            return -1;
        }
        c = own_c;
    }
    stream s;
    stream *all[] = { &s };
    rc = stream_start(&s, c, 20, 31, 8);
    if (!rc)
        rc = pump(c, all, 1, &s, 0);
    if (own_c)
        mq_disconnect(own_c);
    *err_out = rc;
    snprintf(msg, msglen, "%s", s.msg);
    return !rc && s.done && s.end_reason == MQ_END_LENGTH && s.tokens == 8 ? 0 : -1;
}

/* mqd's address space limited (ulimit -v) to what it maps once ready plus room for one
 * client's channel (64 MiB of prompt ring): the second client is refused with MQ_ELIMIT
 * saying why, the first keeps working, and when the first has gone a new one gets in.
 * (prlimit on the running mqd would need CAP_SYS_RESOURCE, which root may lack.) */
static void test_channel_memory_exhausted(void)
{
#ifdef __SANITIZE_THREAD__
    SKIP("ThreadSanitizer build: its mqd needs an unlimited address space for TSan's shadow memory (ulimit -v "
         "stops it before main)");
#endif
    const char *extra[] = { "--model-dir",       spawn_model(), "--user",      "nobody", "--kv-tokens", "4096",
                            "--prompt-ring-kib", "65536",       "--hugepages", "off",    NULL };
    if (geteuid() != 0)
        extra[2] = NULL;
    own o;
    if (!start_ready(&o, "memory-probe", extra))
        return;
    char vm[512];
    long vmsize_kb = strtol(proc_status(o.pid, "VmSize", vm, sizeof vm), NULL, 10);
    own_stop(&o);
    CHECK(vmsize_kb > 0, "VmSize of a ready mqd: %s", vm);
    char lim[64];
    snprintf(lim, sizeof lim, "ulimit -v %ld; ", vmsize_kb + 96 * 1024); /* one 65 MiB channel fits */
    own_start_sh(&o, dir, "memory", lim, extra);
    if (!spawn_wait_ready(o.admin, o.pid, 120)) {
        CHECK(0, "mqd did not become ready under %s", lim);
        spawn_dump_log(o.log);
        own_stop(&o);
        return;
    }
    mq_conn *first = NULL, *second = NULL;
    int rc1 = mq_connect(o.client, &first);
    CHECK(rc1 == 0, "the first client: %s", mq_strerror(rc1));
    int rc2 = mq_connect(o.client, &second);
    printf("    with room for one channel: first client %s, second %s\n", mq_strerror(rc1), mq_strerror(rc2));
    CHECK(rc2 == -MQ_ELIMIT, "the second client: %d (%s)", rc2, mq_strerror(rc2));
    if (!rc2)
        mq_disconnect(second);
    char msg[300] = "";
    int err = 0;
    if (!rc1)
        CHECK(one_request_on(o.client, first, &err, msg, sizeof msg) == 0, "the first client's request: %s (%s)",
              mq_strerror(err), msg);
    CHECK(own_log_has(&o, "cannot create its channel"), "no log line for the refused channel");
    if (!rc1)
        mq_disconnect(first);
    int back = 0;
    for (int i = 0; i < 50 && !back; i++) {
        usleep(100 * 1000); /* mqd unmaps the first channel when it sees the hang-up */
        back = one_request_on(o.client, NULL, &err, msg, sizeof msg) == 0;
    }
    CHECK(back, "a new client once the first has gone: %s (%s)", mq_strerror(err), msg);
    cJSON *r = admin_call(o.admin, "status", 0);
    CHECK(r && !strcmp(jstr(r, "state"), "ready"), "mqd not ready afterwards");
    cJSON_Delete(r);
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

/* mqd under a small stack limit (ulimit -s 256; systemd's LimitSTACK= likewise): threads
 * that run kernels get their own stack size (mq_compute_thread_attr), so the warm-up and
 * a prompt run instead of overflowing a 256 KiB thread stack. It tells the difference
 * where the AVX-512 attention runs (about 550 KiB of stack tiles); elsewhere the kernels
 * fit in 256 KiB and it only checks that mqd works under such a limit. */
static void test_small_stack_limit(void)
{
    const char *extra[] = { "--model-dir", spawn_model(), "--user", "nobody", "--kv-tokens", "4096", NULL };
    if (geteuid() != 0)
        extra[2] = NULL;
    own o;
    own_start_sh(&o, dir, "stack", "ulimit -s 256; ", extra);
    if (!spawn_wait_ready(o.admin, o.pid, 120)) {
        CHECK(0, "mqd did not become ready under ulimit -s 256");
        spawn_dump_log(o.log);
        own_stop(&o);
        return;
    }
    char msg[300] = "";
    int err = 0;
    CHECK(one_request_on(o.client, NULL, &err, msg, sizeof msg) == 0, "a request under ulimit -s 256: %s (%s)",
          mq_strerror(err), msg);
    cJSON *r = admin_call(o.admin, "status", 0);
    CHECK(r && !strcmp(jstr(r, "state"), "ready"), "mqd not ready afterwards");
    cJSON_Delete(r);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

/* No free huge pages (the test maps every free one itself): a client's channel is made of
 * ordinary shared memory and works; with pages free again it may be hugetlb-backed. */
static void test_channel_without_huge_pages(void)
{
    if (geteuid() != 0)
        SKIP("needs root to hold the free huge pages");
    const char *extra[] = { "--model-dir", spawn_model(),         "--user", "nobody", "--kv-tokens",
                            "4096",        "--hugepages-reserve", "0",      NULL };
    own o;
    if (!start_ready(&o, "nohuge", extra))
        return;
    long added = mq_hugepages_reserve(2, NULL); /* at least two pages exist to be taken */
    long fr = mq_hugepages_free();
    size_t held = fr > 0 ? (size_t)fr << 21 : 0;
    mq_mem_kind kind = MQ_MEM_4K;
    void *hold = held ? mq_mem_map(held, 1, 0, &kind) : NULL;
    if (hold && kind != MQ_MEM_HUGETLB) {
        mq_mem_unmap(hold, held);
        hold = NULL;
    }
    if (hold)
        memset(hold, 1, held);
    long free_now = mq_hugepages_free();
    mq_conn *c;
    int rc = mq_connect(o.client, &c);
    mq_server_info info = { 0 };
    if (!rc)
        mq_server_info_get(c, &info);
    int err = 0;
    char msg[300] = "";
    CHECK(!rc && one_request_on(o.client, c, &err, msg, sizeof msg) == 0, "a client with no huge page free: %s %s",
          mq_strerror(rc ? rc : err), msg);
    printf("    %ld huge pages free when the client came: its channel %s\n", free_now,
           info.hugetlb ? "hugetlb" : "ordinary shared memory");
    if (free_now == 0)
        CHECK(!info.hugetlb, "a hugetlb channel with no page free");
    if (!rc)
        mq_disconnect(c);
    if (hold)
        mq_mem_unmap(hold, held);
    if (added > 0)
        mq_hugepages_giveback(added);
    CHECK(one_request_on(o.client, NULL, &err, msg, sizeof msg) == 0, "a client after the pages came back: %s %s",
          mq_strerror(err), msg);
    spawn_check_no_seccomp_refusal(o.admin);
    if (harness_cur_fail)
        spawn_dump_log(o.log);
    own_stop(&o);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    RUN(test_kv_full_fail);
    RUN(test_kv_full_wait);
    RUN(test_per_uid_kv_and_queue);
    RUN(test_sighup_broken_config_kept);
    RUN(test_sighup_while_loading);
    RUN(test_channel_memory_exhausted);
    RUN(test_channel_without_huge_pages);
    RUN(test_small_stack_limit);
    return harness_done();
}
