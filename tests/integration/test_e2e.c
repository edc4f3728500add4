/* tests/integration/test_e2e.c — mqd end to end through its real sockets with the real
 * model (mq-qwen3-80m), driven by libmq like any client:
 *   - greedy streams of several concurrent clients equal single-client runs (no mixing);
 *   - a chat session's second turn reuses the first turn's KV (cached tokens);
 *   - cancel; a client SIGKILLed mid-stream has its session and KV blocks freed;
 *   - a 20k-token prompt through the prompt ring; a prompt over the context limit is
 *     refused with a clear error; protocol garbage closes only that connection;
 *   - prompts are prepared off the event loop: other clients are answered meanwhile, and
 *     a client that hangs up during the preparation leaks nothing;
 *   - a client of a uid not in allowed_users is refused, so is a peer on the admin socket
 *     that is not root nor in admin_group; mqd's log lines name their level;
 *   - mqd runs as nobody with no capabilities and no_new_privs (/proc/<pid>/status);
 *   - SIGTERM drains a running request and mqd exits 0.
 * One mqd serves all of it (started as root with --user nobody).
 */
#include <poll.h>
#include <pthread.h>
#include <pwd.h>

#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"
#include "ipc/wire.h"

#define CTX_LIMIT 24576
#define GEN       24

static char dir[256], client_sock[300], admin_sock[300], logpath[300];
static pid_t mqd_pid;

/* ---- helpers ---------------------------------------------------------------------- */
typedef struct result {
    int32_t ids[4096];
    int n;
    char text[16384];
    size_t text_len;
    int end_reason, error;
    mq_req_stats stats;
    int interleaved; /* saw an event of another request id */
} result;

/* Streams request `req` to its DONE into r. */
static int collect(mq_conn *c, uint64_t req, result *r, int timeout_ms)
{
    for (;;) {
        mq_event ev;
        int rc = mq_next_event(c, &ev, timeout_ms);
        if (rc)
            return rc;
        if (ev.req != req) {
            r->interleaved = 1;
            continue;
        }
        if (ev.type == MQ_EVENT_TOKEN) {
            if (r->n < 4096)
                r->ids[r->n++] = ev.token;
            if (r->text_len + ev.text_len < sizeof r->text) {
                memcpy(r->text + r->text_len, ev.text, ev.text_len);
                r->text_len += ev.text_len;
            }
            continue;
        }
        r->end_reason = ev.end_reason;
        r->error = ev.error;
        r->stats = ev.stats;
        return 0;
    }
}

static void greedy(mq_params *p, uint32_t max_tokens)
{
    mq_params_init(p);
    p->flags |= MQ_PARAM_GREEDY;
    p->temperature = 0;
    p->max_tokens = max_tokens;
}

/* A new connection with one session of `mode` and greedy parameters for max_tokens:
 * 0, or the error of the step that failed (nothing left open). Safe from any thread. */
static int open_greedy(int mode, uint32_t max_tokens, mq_conn **c, uint64_t *s, mq_params *p)
{
    int rc = mq_connect(client_sock, c);
    if (rc)
        return rc;
    greedy(p, max_tokens);
    rc = mq_open_session(*c, mode, s);
    if (rc) {
        mq_disconnect(*c);
        *c = NULL;
    }
    return rc;
}

/* open_greedy on a raw session, then prompt sent as request *req: 0, or the error of the
 * step that failed (nothing left open). Safe from any thread. */
static int start_raw(uint32_t max_tokens, const char *prompt, mq_conn **c, uint64_t *s, mq_params *p, uint64_t *req)
{
    int rc = open_greedy(MQ_MODE_RAW, max_tokens, c, s, p);
    if (rc)
        return rc;
    rc = mq_send_text(*c, *s, prompt, strlen(prompt), p, req);
    if (rc) {
        mq_disconnect(*c);
        *c = NULL;
    }
    return rc;
}

static int run_raw(const char *prompt, result *r)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = start_raw(GEN, prompt, &c, &s, &p, &req);
    if (rc)
        return rc;
    rc = collect(c, req, r, 60000);
    mq_disconnect(c);
    return rc;
}

static const char *prompts[] = {
    "The history of the city begins in the twelfth century, when",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
};
#define NP (int)(sizeof prompts / sizeof prompts[0])

/* ---- tests ---------------------------------------------------------------------- */
static result refs[NP];

static void test_single_client_reference(void)
{
    for (int i = 0; i < NP; i++) {
        memset(&refs[i], 0, sizeof refs[i]);
        int rc = run_raw(prompts[i], &refs[i]);
        CHECK(rc == 0, "prompt %d: %s", i, mq_strerror(rc));
        CHECK(refs[i].n == GEN && refs[i].end_reason == MQ_END_LENGTH, "prompt %d: %d tokens, end %d", i, refs[i].n,
              refs[i].end_reason);
        CHECK(refs[i].stats.gen_tokens == GEN && refs[i].stats.prompt_tokens > 5, "stats: gen %u prompt %u",
              refs[i].stats.gen_tokens, refs[i].stats.prompt_tokens);
        printf("    [%d] %.*s\n", i, (int)refs[i].text_len, refs[i].text);
    }
    /* the three continuations differ (the outputs are really per prompt) */
    CHECK(memcmp(refs[0].ids, refs[1].ids, sizeof(int32_t) * GEN) &&
              memcmp(refs[1].ids, refs[2].ids, sizeof(int32_t) * GEN),
          "different prompts gave identical continuations");
}

typedef struct worker {
    int idx, rounds;
    int rc;
    result r;
    int mismatches;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int k = 0; k < w->rounds && !w->rc; k++) {
        memset(&w->r, 0, sizeof w->r);
        w->rc = run_raw(prompts[w->idx % NP], &w->r);
        const result *ref = &refs[w->idx % NP];
        if (!w->rc && (w->r.n != ref->n || memcmp(w->r.ids, ref->ids, sizeof(int32_t) * ref->n) || w->r.interleaved))
            w->mismatches++;
    }
    return NULL;
}

static void test_concurrent_clients(void)
{
    enum { NW = 4 };
    worker w[NW];
    pthread_t th[NW];
    double t0 = spawn_now();
    for (int i = 0; i < NW; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].idx = i;
        w[i].rounds = 2;
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    for (int i = 0; i < NW; i++) {
        pthread_join(th[i], NULL);
        CHECK(w[i].rc == 0, "worker %d: %s", i, mq_strerror(w[i].rc));
        CHECK(w[i].mismatches == 0, "worker %d: output differs from the single-client run", i);
    }
    printf("    %d clients x 2 requests x %d tokens in %.2f s\n", NW, GEN, spawn_now() - t0);
}

static void test_chat_turns_reuse_kv(void)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = open_greedy(MQ_MODE_CHAT, 16, &c, &s, &p);
    CHECK(rc == 0, "connect, open chat: %s", mq_strerror(rc));
    if (rc)
        return;
    const char *sys = "You are a helpful assistant.";
    CHECK(mq_send_message(c, s, MQ_ROLE_SYSTEM, sys, strlen(sys), &p, &req) == 0, "system");
    result r1 = { 0 }, r2 = { 0 }, r0 = { 0 };
    CHECK(collect(c, req, &r0, 10000) == 0 && r0.n == 0, "system message has no answer");
    const char *q1 = "What is the capital of France?";
    CHECK(mq_send_message(c, s, MQ_ROLE_USER, q1, strlen(q1), &p, &req) == 0, "turn 1");
    CHECK(collect(c, req, &r1, 60000) == 0 && r1.n > 0, "turn 1 answer");
    const char *q2 = "And of Italy?";
    CHECK(mq_send_message(c, s, MQ_ROLE_USER, q2, strlen(q2), &p, &req) == 0, "turn 2");
    CHECK(collect(c, req, &r2, 60000) == 0 && r2.n > 0, "turn 2 answer");
    /* turn 2 appends only its message: everything of turn 1 is cached */
    CHECK(r2.stats.cached_tokens >= r1.stats.prompt_tokens + r1.stats.gen_tokens - 1,
          "turn 2 cached %u tokens, turn 1 had %u prompt + %u generated", r2.stats.cached_tokens,
          r1.stats.prompt_tokens, r1.stats.gen_tokens);
    CHECK(r2.stats.prompt_tokens < 20, "turn 2 sent %u new tokens", r2.stats.prompt_tokens);
    /* a raw prompt on a chat session is refused */
    rc = mq_send_text(c, s, "x", 1, &p, &req);
    CHECK(rc == -MQ_EBADPROMPT, "text on chat session: %d", rc);
    mq_disconnect(c);
}

static void test_cancel(void)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = start_raw(4000, prompts[0], &c, &s, &p, &req);
    CHECK(rc == 0, "connect, open, send: %s", mq_strerror(rc));
    if (rc)
        return;
    int seen = 0, done = 0;
    mq_event ev;
    while (!done && mq_next_event(c, &ev, 30000) == 0) {
        if (ev.type == MQ_EVENT_TOKEN && ++seen == 5)
            CHECK(mq_cancel(c, req) == 0, "cancel");
        if (ev.type == MQ_EVENT_DONE) {
            done = 1;
            CHECK(ev.end_reason == MQ_END_CANCELLED, "end reason %d", ev.end_reason);
            CHECK(ev.stats.gen_tokens < 200, "generated %u after cancel", ev.stats.gen_tokens);
        }
    }
    CHECK(done, "no DONE after cancel");
    /* cancelling a finished request is a clear error */
    rc = mq_cancel(c, req);
    CHECK(rc == -MQ_ENOREQUEST, "cancel after done: %d", rc);
    /* the session is usable again */
    result r = { 0 };
    greedy(&p, 4);
    CHECK(mq_send_text(c, s, " And", 4, &p, &req) == 0 && collect(c, req, &r, 30000) == 0 && r.n == 4,
          "session after cancel");
    mq_disconnect(c);
}

/* The pollable fd: an event loop polls it and drains events with timeout 0. */
static void test_event_fd_poll(void)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = open_greedy(MQ_MODE_RAW, GEN, &c, &s, &p);
    CHECK(rc == 0, "connect, open: %s", mq_strerror(rc));
    if (rc)
        return;
    int efd = mq_event_fd(c);
    CHECK(efd >= 0, "event fd");
    CHECK(mq_send_text(c, s, prompts[2], strlen(prompts[2]), &p, &req) == 0, "send");
    result r = { 0 };
    int done = 0, wakeups = 0;
    double t0 = spawn_now();
    while (!done && spawn_now() - t0 < 60) {
        struct pollfd pf = { efd, POLLIN, 0 };
        if (poll(&pf, 1, 5000) != 1)
            break;
        wakeups++;
        mq_event ev;
        while (!done && mq_next_event(c, &ev, 0) == 0) {
            if (ev.type == MQ_EVENT_TOKEN)
                r.ids[r.n++] = ev.token;
            else
                done = 1;
        }
    }
    CHECK(done, "no DONE through the event fd");
    CHECK(r.n == refs[2].n && !memcmp(r.ids, refs[2].ids, sizeof(int32_t) * r.n),
          "event-fd stream differs from the blocking one");
    CHECK(wakeups >= 2, "%d wake-ups", wakeups);
    mq_disconnect(c);
}

/* A client that does not read: the 4 KiB token ring fills, mqd spills and flushes when
 * woken by the client's consumption (io_uring FUTEX_WAIT); nothing is lost. */
static void test_slow_reader(void)
{
    enum { LONG = 140 };
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = start_raw(LONG, prompts[1], &c, &s, &p, &req);
    CHECK(rc == 0, "connect, open, send: %s", mq_strerror(rc));
    if (rc)
        return;
    /* wait (without reading) until mqd has generated everything */
    double t0 = spawn_now();
    int idle = 0;
    while (!idle && spawn_now() - t0 < 120) {
        usleep(200 * 1000);
        cJSON *ss = admin_call(admin_sock, "sessions", 0);
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(ss, "sessions")) if ((uint64_t)jnum(it, "id", NULL) == s) idle =
            !strcmp(jstr(it, "state"), "idle");
        cJSON_Delete(ss);
    }
    CHECK(idle, "generation did not finish");
    result r = { 0 };
    rc = collect(c, req, &r, 10000);
    CHECK(rc == 0, "collect: %s", mq_strerror(rc));
    CHECK(r.n == LONG && r.stats.gen_tokens == LONG && r.end_reason == MQ_END_LENGTH,
          "slow reader got %d tokens (stats %u), end %d", r.n, r.stats.gen_tokens, r.end_reason);
    CHECK(r.n >= GEN && !memcmp(r.ids, refs[1].ids, sizeof(int32_t) * GEN),
          "spilled stream differs from the reference");
    mq_disconnect(c);
}

static int kv_used(void)
{
    cJSON *r = admin_call(admin_sock, "stats", 0);
    int v = (int)jnum(r, "kv", "used");
    cJSON_Delete(r);
    return v;
}

static int n_sessions(void)
{
    cJSON *r = admin_call(admin_sock, "sessions", 0);
    int n = cJSON_GetArraySize(cJSON_GetObjectItem(r, "sessions"));
    cJSON_Delete(r);
    return n;
}

static void test_killed_client_frees_session(void)
{
    int base_sessions = n_sessions(), base_kv = kv_used();
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        mq_conn *c;
        uint64_t s, req;
        mq_params p;
        if (start_raw(4000, prompts[2], &c, &s, &p, &req))
            _exit(1);
        mq_event ev;
        int n = 0;
        while (mq_next_event(c, &ev, 30000) == 0)
            if (ev.type == MQ_EVENT_TOKEN && ++n == 3)
                if (write(pfd[1], "x", 1) != 1)
                    _exit(2);
        _exit(3);
    }
    close(pfd[1]);
    char b;
    CHECK(read(pfd[0], &b, 1) == 1, "child did not stream");
    close(pfd[0]);
    int during = n_sessions(), kv_during = kv_used();
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(during == base_sessions + 1 && kv_during > base_kv,
          "while streaming: %d sessions, "
          "%d KV blocks (before %d, %d)",
          during, kv_during, base_sessions, base_kv);
    double t0 = spawn_now();
    int now = -1, kv = -1;
    while (spawn_now() - t0 < 10) {
        now = n_sessions();
        kv = kv_used();
        if (now == base_sessions && kv <= base_kv)
            break;
        usleep(50 * 1000);
    }
    CHECK(now == base_sessions, "sessions after the kill: %d, before %d", now, base_sessions);
    CHECK(kv <= base_kv, "KV blocks in use after the kill: %d, before %d", kv, base_kv);
}

static void test_long_prompt_and_context_limit(void)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = open_greedy(MQ_MODE_RAW, 2, &c, &s, &p);
    CHECK(rc == 0, "connect, open: %s", mq_strerror(rc));
    if (rc)
        return;
    mq_server_info info;
    mq_server_info_get(c, &info);
    CHECK(info.ctx_limit == CTX_LIMIT, "ctx_limit %u", info.ctx_limit);
    CHECK(!strcmp(info.model, "mq-qwen3-80m"), "model name %s", info.model);
    enum { N = 20000 };
    int32_t *ids = malloc((CTX_LIMIT + 8) * sizeof *ids);
    /* ordinary ids (words of the vocabulary), a varied but valid sequence */
    for (int i = 0; i < CTX_LIMIT + 8; i++)
        ids[i] = 1000 + (i * 7919) % 50000;
    double t0 = spawn_now();
    rc = mq_send_tokens(c, s, ids, N, &p, &req);
    CHECK(rc == 0, "20k tokens: %s", mq_strerror(rc));
    result r = { 0 };
    if (!rc) {
        /* The whole prompt arrived: the session's history holds it at once. Its prefill
         * (minutes on two cores) is not this test's business: cancel it. */
        cJSON *ss = admin_call(admin_sock, "sessions", 0);
        const cJSON *it;
        int hist = -1;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(ss, "sessions")) if ((uint64_t)jnum(it, "id", NULL) == s) hist =
            (int)jnum(it, "history_tokens", NULL);
        cJSON_Delete(ss);
        CHECK(hist == N, "session history %d tokens after the 20k submit", hist);
        CHECK(mq_cancel(c, req) == 0, "cancel the 20k prefill");
        rc = collect(c, req, &r, 60000);
        CHECK(rc == 0, "collect: %s", mq_strerror(rc));
        CHECK(r.stats.prompt_tokens == N, "prompt_tokens %u", r.stats.prompt_tokens);
        CHECK(r.end_reason == MQ_END_CANCELLED, "end %d", r.end_reason);
        printf("    20000-token prompt through the ring, accepted and cancelled in %.2f s\n", spawn_now() - t0);
    }
    /* over the limit: a clear error, nothing queued */
    uint64_t s2;
    CHECK(mq_open_session(c, MQ_MODE_RAW, &s2) == 0, "open 2");
    rc = mq_send_tokens(c, s2, ids, CTX_LIMIT + 1, &p, &req);
    char msg[600];
    mq_last_error(c, msg, sizeof msg);
    CHECK(rc == -MQ_ETOOLONG && strstr(msg, "context limit"), "over the limit: %d (%s)", rc, msg);
    /* a token id outside the vocabulary */
    int32_t bad[2] = { 5, 999999999 };
    rc = mq_send_tokens(c, s2, bad, 2, &p, &req);
    mq_last_error(c, msg, sizeof msg);
    CHECK(rc == -MQ_EBADPROMPT && strstr(msg, "vocabulary"), "bad id: %d (%s)", rc, msg);
    free(ids);
    mq_disconnect(c);
}

/* A prompt that takes mqd long to tokenize (about 512 KB of varied words: far over the
 * context limit, which is found only once it is tokenized). */
static char *long_text(size_t *len)
{
    enum { BYTES = 512 * 1024 };
    static const char *const words[] = { "lighthouse", "keeper", "sea", "storm", "lamp", "ship", "night", "rock" };
    char *t = malloc(BYTES + 32);
    size_t n = 0;
    for (unsigned i = 0; n < BYTES; i++)
        n += (size_t)sprintf(t + n, "%s%u ", words[(i * 2654435761u) >> 29], i % 997);
    *len = n;
    return t;
}

typedef struct slow_send {
    mq_conn *c;
    uint64_t s;
    const char *text;
    size_t len;
    int rc;
    int done; /* atomic */
} slow_send;

static void *slow_send_main(void *arg)
{
    slow_send *a = arg;
    mq_params p;
    greedy(&p, 1);
    uint64_t req;
    a->rc = mq_send_text(a->c, a->s, a->text, a->len, &p, &req);
    __atomic_store_n(&a->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* Rendering and tokenizing happen off mqd's event loop (daemon/prep.h): while one client's
 * huge prompt is tokenized, another client's requests are answered. */
static void test_loop_free_while_a_prompt_is_prepared(void)
{
    mq_conn *b;
    int rc = mq_connect(client_sock, &b);
    CHECK(rc == 0, "connect: %s", mq_strerror(rc));
    if (rc)
        return;
    slow_send a = { 0 };
    mq_params p;
    rc = open_greedy(MQ_MODE_RAW, 1, &a.c, &a.s, &p);
    CHECK(rc == 0, "connect, open: %s", mq_strerror(rc));
    if (rc) {
        mq_disconnect(b);
        return;
    }
    a.text = long_text(&a.len);
    pthread_t th;
    double t0 = spawn_now();
    pthread_create(&th, NULL, slow_send_main, &a);
    int answered = 0;
    while (!__atomic_load_n(&a.done, __ATOMIC_SEQ_CST) && spawn_now() - t0 < 30) {
        mq_stats st;
        if (mq_stats_get(b, &st) == 0 && !__atomic_load_n(&a.done, __ATOMIC_SEQ_CST))
            answered++;
    }
    pthread_join(th, NULL);
    double dt = spawn_now() - t0;
    char msg[600];
    mq_last_error(a.c, msg, sizeof msg);
    printf("    a %zu-byte prompt answered in %.0f ms; meanwhile another client's STATS answered %d times\n", a.len,
           dt * 1e3, answered);
    CHECK(a.rc == -MQ_ETOOLONG && strstr(msg, "context limit"), "huge prompt: %d (%s)", a.rc, msg);
    CHECK(answered >= 20, "only %d STATS answered while the huge prompt was prepared (%.0f ms)", answered, dt * 1e3);
    free((char *)a.text);
    mq_disconnect(a.c);
    mq_disconnect(b);
}

/* A client that hangs up while its SUBMIT is prepared: the worker's result finds the
 * connection gone; nothing leaks and mqd goes on serving. */
static void test_hangup_while_a_prompt_is_prepared(void)
{
    int base_sessions = n_sessions(), base_kv = kv_used();
    size_t len;
    char *text = long_text(&len);
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        mq_conn *c;
        uint64_t s, req;
        mq_params p;
        if (open_greedy(MQ_MODE_RAW, 4, &c, &s, &p) || write(pfd[1], "x", 1) != 1)
            _exit(1);
        mq_send_text(c, s, text, len, &p, &req);
        _exit(0);
    }
    close(pfd[1]);
    char x;
    CHECK(read(pfd[0], &x, 1) == 1, "the child did not connect");
    close(pfd[0]);
    usleep(20 * 1000); /* its SUBMIT is with a prep worker by now */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    free(text);
    int now = -1, kv = -1;
    for (double t0 = spawn_now(); spawn_now() - t0 < 10; usleep(50 * 1000)) {
        now = n_sessions();
        kv = kv_used();
        if (now == base_sessions && kv <= base_kv)
            break;
    }
    CHECK(now == base_sessions, "sessions after the hang-up: %d, before %d", now, base_sessions);
    CHECK(kv <= base_kv, "KV blocks in use after the hang-up: %d, before %d", kv, base_kv);
    result r = { 0 };
    int rc = run_raw(prompts[0], &r);
    CHECK(rc == 0 && r.n == refs[0].n && !memcmp(r.ids, refs[0].ids, sizeof(int32_t) * (size_t)r.n),
          "a request after the hang-up: %s", mq_strerror(rc));
}

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", client_sock) >= (int)sizeof sa.sun_path) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends bytes, expects one ERROR(MQ_ERR_PROTOCOL) datagram and then end of file. */
static int garbage_closes(const void *bytes, size_t n)
{
    int fd = raw_connect();
    if (fd < 0)
        return 0;
    uint8_t buf[2048];
    int ok = 0;
    if (send(fd, bytes, n, 0) == (ssize_t)n) {
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        mq_msg m;
        if (k > 0 && mq_wire_decode(buf, (size_t)k, &m, NULL, 0) == 0 && m.type == MQ_MSG_ERROR &&
            m.u.error.code == MQ_ERR_PROTOCOL)
            ok = recv(fd, buf, sizeof buf, 0) == 0;
    }
    close(fd);
    return ok;
}

static void test_protocol_garbage(void)
{
    /* a client streaming meanwhile must not notice */
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    int rc = start_raw(GEN, prompts[1], &c, &s, &p, &req);
    CHECK(rc == 0, "connect, open, send: %s", mq_strerror(rc));
    if (rc)
        return;

    CHECK(garbage_closes("hello there, this is not mq", 27), "text garbage");
    uint8_t junk[600];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131 + 7);
    CHECK(garbage_closes(junk, sizeof junk), "random bytes");
    /* a valid header with a lying length, and OPEN before HELLO */
    mq_msg m = { .type = MQ_MSG_OPEN };
    uint8_t buf[MQ_WIRE_MAX_MSG];
    int n = mq_wire_encode(&m, buf, sizeof buf);
    buf[12] = 9;
    CHECK(garbage_closes(buf, (size_t)n), "length lie");
    n = mq_wire_encode(&m, buf, sizeof buf);
    CHECK(garbage_closes(buf, (size_t)n), "OPEN before HELLO");
    /* an oversized datagram */
    static uint8_t big[8192];
    memcpy(big, buf, (size_t)n);
    CHECK(garbage_closes(big, sizeof big), "oversized datagram");

    result r = { 0 };
    CHECK(collect(c, req, &r, 60000) == 0, "stream during garbage");
    CHECK(r.n == refs[1].n && !memcmp(r.ids, refs[1].ids, sizeof(int32_t) * r.n), "the other client's output changed");
    mq_disconnect(c);
}

static void connect_result(void *arg, char *out, size_t len)
{
    (void)arg;
    mq_conn *c = NULL;
    int rc = mq_connect(client_sock, &c);
    if (!rc)
        mq_disconnect(c);
    snprintf(out, len, "%d", rc);
}

static void test_wrong_uid_refused(void)
{
    struct passwd *pw = getpwnam("nobody");
    CHECK(pw != NULL, "no user nobody");
    if (!pw)
        return;
    char out[64];
    CHECK(run_as(pw->pw_uid, pw->pw_gid, connect_result, NULL, out, sizeof out) == 0, "as nobody: %s", out);
    int rc = atoi(out);
    CHECK(rc == -MQ_EDENIED, "uid nobody got %d (%s), expected MQ_EDENIED", rc, mq_strerror(rc));
    /* root (allowed) still gets in */
    mq_conn *c;
    rc = mq_connect(client_sock, &c);
    CHECK(rc == 0, "root refused: %s", mq_strerror(rc));
    if (!rc)
        mq_disconnect(c);
}

static void admin_status_result(void *arg, char *out, size_t len)
{
    (void)arg;
    cJSON *r = admin_call(admin_sock, "status", 0);
    snprintf(out, len, "%s|%s", r && cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")) ? "refused" : "?", jstr(r, "error"));
    cJSON_Delete(r);
}

/* The admin socket refuses a peer that is neither root nor in admin_group with a readable
 * answer to its first request (not a reset), and mqd logs the refusal. */
static void test_admin_refused(void)
{
    struct passwd *pw = getpwnam("nobody");
    CHECK(pw != NULL, "no user nobody");
    if (!pw)
        return;
    char out[512];
    CHECK(run_as(pw->pw_uid, pw->pw_gid, admin_status_result, NULL, out, sizeof out) == 0, "as nobody: %s", out);
    char want[64];
    snprintf(want, sizeof want, "refused|permission denied: uid %u is not root", (unsigned)pw->pw_uid);
    CHECK(!strncmp(out, want, strlen(want)), "nobody on the admin socket: %s", out);
    cJSON *r = admin_call(admin_sock, "status", 0);
    CHECK(r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")), "root still gets answers");
    cJSON_Delete(r);
}

/* mqd's log outside the journal: "mqd[pid]: level: message", one line per event. */
static void test_log_lines(void)
{
    char *log = harness_read_file(logpath, NULL);
    if (!log)
        return;
    char want[128];
    snprintf(want, sizeof want, "mqd[%d]: notice: ready: model mq-qwen3-80m", (int)mqd_pid);
    CHECK(strstr(log, want), "no \"%s\" line", want);
    snprintf(want, sizeof want, "mqd[%d]: warning: admin socket: refused pid ", (int)mqd_pid);
    CHECK(strstr(log, want), "no \"%s\" line", want);
    snprintf(want, sizeof want, "mqd[%d]: info: loading: weights", (int)mqd_pid);
    CHECK(strstr(log, want), "no \"%s\" line", want);
    CHECK(!strstr(log, "<6>") && !strstr(log, "<5>"), "journal prefixes outside the journal");
    free(log);
}

static void test_privileges_dropped(void)
{
    char v[256];
    struct passwd *pw = getpwnam("nobody");
    char want[64];
    snprintf(want, sizeof want, "%u", pw ? (unsigned)pw->pw_uid : 65534u);
    proc_status(mqd_pid, "Uid", v, sizeof v);
    CHECK(!strncmp(v, want, strlen(want)) && strstr(v, "0") != v, "Uid: %s (want %s)", v, want);
    CHECK(!strcmp(proc_status(mqd_pid, "CapEff", v, sizeof v), "0000000000000000"), "CapEff %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "CapPrm", v, sizeof v), "0000000000000000"), "CapPrm %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "CapInh", v, sizeof v), "0000000000000000"), "CapInh %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "CapBnd", v, sizeof v), "0000000000000000"), "CapBnd %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "CapAmb", v, sizeof v), "0000000000000000"), "CapAmb %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "NoNewPrivs", v, sizeof v), "1"), "NoNewPrivs %s", v);
    CHECK(!strcmp(proc_status(mqd_pid, "Seccomp", v, sizeof v), "2"), "Seccomp %s (2 = a filter)", v);
    /* mqctl status works and reports the state */
    cJSON *r = admin_call(admin_sock, "status", 0);
    CHECK(r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")) && !strcmp(jstr(r, "state"), "ready"), "admin status");
    cJSON_Delete(r);
}

static int run_tool(char *const argv[], char *out, size_t len)
{
    char log[400];
    snprintf(log, sizeof log, "%s/tool.out", dir);
    return spawn_capture(argv, log, 60, out, len);
}

/* mq and mqctl against the live daemon: output and exit codes scripts rely on. */
static void test_tools(void)
{
    char mq[4200], mqctl[4200], out[65536];
    snprintf(mq, sizeof mq, "%s/mq", spawn_build_dir());
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    char *run[] = { mq,   "--socket", client_sock,        "--raw", "--greedy", "--max-tokens",
                    "24", "run",      (char *)prompts[0], NULL };
    int rc = run_tool(run, out, sizeof out);
    CHECK(rc == 0, "mq run exit %d: %s", rc, out);
    CHECK(!strncmp(out, refs[0].text, refs[0].text_len), "mq run printed \"%s\"", out);
    char *js[] = { mq, "--socket", client_sock, "--json", "--greedy", "--max-tokens", "4", "run", "Hello", NULL };
    rc = run_tool(js, out, sizeof out);
    cJSON *o = cJSON_Parse(out);
    CHECK(rc == 0 && o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")) == 4 &&
              !strcmp(jstr(o, "end"), "length"),
          "mq --json: exit %d: %s", rc, out);
    cJSON_Delete(o);
    char *st[] = { mqctl, "--socket", admin_sock, "status", NULL };
    rc = run_tool(st, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "state           ready") && strstr(out, "mq-qwen3-80m"), "mqctl status: exit %d: %s",
          rc, out);
    char *sj[] = { mqctl, "--socket", admin_sock, "--json", "stats", NULL };
    rc = run_tool(sj, out, sizeof out);
    o = cJSON_Parse(out);
    CHECK(rc == 0 && o && jnum(o, "kv", "blocks") > 0 && jnum(o, "tokens", "generated") > 0,
          "mqctl --json stats: exit %d: %s", rc, out);
    cJSON_Delete(o);
    char *cancel[] = { mqctl, "--socket", admin_sock, "cancel", "987654321", NULL };
    rc = run_tool(cancel, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "987654321"), "mqctl cancel unknown: exit %d: %s", rc, out);
    char *bad[] = { mqctl, "--socket", admin_sock, "frobnicate", NULL };
    CHECK(run_tool(bad, out, sizeof out) == 2, "mqctl usage error: %s", out);
    char *gone[] = { mqctl, "--socket", "/nonexistent/admin.sock", "status", NULL };
    CHECK(run_tool(gone, out, sizeof out) == 3, "mqctl unreachable: %s", out);
    char *mqgone[] = { mq, "--socket", "/nonexistent/c.sock", "run", "x", NULL };
    CHECK(run_tool(mqgone, out, sizeof out) == 3, "mq unreachable: %s", out);
}

/* Options after the command, as git and systemctl take them; an unknown option or a word
 * too many is a usage error (exit 2, usage on stderr), never silently ignored. */
static void test_tools_arguments(void)
{
    char mq[4200], mqctl[4200], out[65536];
    snprintf(mq, sizeof mq, "%s/mq", spawn_build_dir());
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    char *after[] = { mqctl, "status", "--json", "--socket", admin_sock, NULL };
    int rc = run_tool(after, out, sizeof out);
    cJSON *o = cJSON_Parse(out);
    CHECK(rc == 0 && o && !strcmp(jstr(o, "state"), "ready"), "mqctl status --json --socket: exit %d: %.200s", rc, out);
    cJSON_Delete(o);
    char *cancel_json[] = { mqctl, "--socket", admin_sock, "cancel", "987654321", "--json", NULL };
    rc = run_tool(cancel_json, out, sizeof out); /* mqd's JSON reply on stdout, the error on stderr */
    CHECK(rc == 1 && strstr(out, "\"ok\":\tfalse") && strstr(out, "987654321"),
          "mqctl cancel ID --json: exit %d: %.200s", rc, out);
    /* the words after "mqctl --socket PATH", and what the error names */
    static const char *const bad_ctl[][4] = { { "status", "--bogus", NULL, "--bogus" },
                                              { "status", "extra", NULL, "\"extra\"" },
                                              { "cancel", "5", "6", "\"6\"" },
                                              { "status", "--socket", NULL, "--socket" } };
    for (int i = 0; i < 4; i++) {
        char *argv[] = {
            mqctl, "--socket", admin_sock, (char *)bad_ctl[i][0], (char *)bad_ctl[i][1], (char *)bad_ctl[i][2], NULL
        };
        rc = run_tool(argv, out, sizeof out);
        CHECK(rc == 2 && strstr(out, "usage: mqctl") && strstr(out, bad_ctl[i][3]), "mqctl %s %s: exit %d: %.300s",
              bad_ctl[i][0], bad_ctl[i][1], rc, out);
    }
    char *mq_after[] = { mq, "run", "Hello", "--greedy", "--max-tokens", "4", "--json", "--socket", client_sock, NULL };
    rc = run_tool(mq_after, out, sizeof out);
    o = cJSON_Parse(out);
    CHECK(rc == 0 && o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")) == 4,
          "mq run with options after the prompt: exit %d: %.200s", rc, out);
    cJSON_Delete(o);
    char *mq_bogus[] = { mq, "--socket", client_sock, "stats", "--bogus", NULL };
    rc = run_tool(mq_bogus, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "usage: mq") && strstr(out, "--bogus"), "mq stats --bogus: exit %d: %.300s", rc, out);
    char *mq_extra[] = { mq, "--socket", client_sock, "stats", "extra", NULL };
    rc = run_tool(mq_extra, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "usage: mq") && strstr(out, "extra"), "mq stats extra: exit %d: %.300s", rc, out);
}

/* Everything the suite made mqd do stayed within its system-call allow-list. */
static void test_seccomp_refused_nothing(void)
{
    spawn_check_no_seccomp_refusal(admin_sock);
}

static void test_sigterm_drains(void)
{
    mq_conn *c;
    uint64_t s, req;
    mq_params p;
    /* longer than drain_timeout_ms allows: cancelled by the drain */
    int rc = start_raw(4000, prompts[0], &c, &s, &p, &req);
    CHECK(rc == 0, "connect, open, send: %s", mq_strerror(rc));
    if (rc)
        return;
    mq_event ev;
    int toks = 0;
    while (toks < 3 && mq_next_event(c, &ev, 30000) == 0)
        toks += ev.type == MQ_EVENT_TOKEN;
    double t0 = spawn_now();
    kill(mqd_pid, SIGTERM);
    /* new requests are refused while draining */
    uint64_t s2;
    rc = mq_open_session(c, MQ_MODE_RAW, &s2);
    CHECK(rc == -MQ_EDRAINING || rc == -EPIPE, "open while draining: %d", rc);
    result r = { 0 };
    rc = collect(c, req, &r, 30000);
    CHECK(rc == 0, "DONE during drain: %s", mq_strerror(rc));
    CHECK(r.end_reason == MQ_END_SHUTDOWN, "end reason %d", r.end_reason);
    int st = spawn_wait_exit(mqd_pid, 20);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "mqd exit status %d", st);
    printf("    drained and exited in %.2f s\n", spawn_now() - t0);
    mqd_pid = 0;
    struct stat sb;
    CHECK(stat(client_sock, &sb) < 0, "client socket left behind");
    mq_disconnect(c);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    snprintf(client_sock, sizeof client_sock, "%s/run/client.sock", dir);
    snprintf(admin_sock, sizeof admin_sock, "%s/run/admin.sock", dir);
    snprintf(logpath, sizeof logpath, "%s/mqd.log", dir);
    char ctx[16];
    snprintf(ctx, sizeof ctx, "%d", CTX_LIMIT);
    const char *extra[] = { "--user",
                            "nobody",
                            "--allowed-users",
                            "root",
                            "--kv-tokens",
                            "40960",
                            "--ctx-tokens",
                            ctx,
                            "--drain-timeout-ms",
                            "1500",
                            "--token-ring-kib",
                            "4",
                            NULL };
    double t0 = spawn_now();
    mqd_pid = spawn_suite_mqd(client_sock, admin_sock, logpath, extra);
    if (!mqd_pid)
        return harness_done(); /* the failed CHECK counts */
    printf("  mqd ready in %.2f s\n", spawn_now() - t0);
    RUN(test_privileges_dropped);
    RUN(test_single_client_reference);
    RUN(test_concurrent_clients);
    RUN(test_chat_turns_reuse_kv);
    RUN(test_cancel);
    RUN(test_event_fd_poll);
    RUN(test_slow_reader);
    RUN(test_killed_client_frees_session);
    RUN(test_protocol_garbage);
    RUN(test_wrong_uid_refused);
    RUN(test_admin_refused);
    RUN(test_log_lines);
    RUN(test_long_prompt_and_context_limit);
    RUN(test_loop_free_while_a_prompt_is_prepared);
    RUN(test_hangup_while_a_prompt_is_prepared);
    RUN(test_tools);
    RUN(test_tools_arguments);
    RUN(test_seccomp_refused_nothing);
    RUN(test_sigterm_drains);
    return spawn_suite_done(mqd_pid, logpath);
}
