/* tests/integration/test_client_faults.c — what one careless or hostile client can do to
 * mqd, and what must hold for everyone else (issue 13, "Faults"):
 *   - a client that never reads its token ring: its ring fills, its spill reaches the
 *     limit and only its request ends (error MQ_ELIMIT, saying why) while another
 *     client's greedy stream, running beside it, equals that stream alone;
 *   - a client that corrupts its prompt ring's head word, or names bytes of the ring that
 *     are not the next ones: ERROR(MQ_ERR_PROTOCOL), its connection closed, a log line;
 *     bad prompt bytes (invalid UTF-8, token ids outside the vocabulary): that request
 *     refused with MQ_ERR_BAD_PROMPT naming the problem, the connection still usable;
 *   - a client SIGSTOPped mid-stream for 3 s, then SIGCONTed: it gets the rest of its
 *     answer, token for token the answer alone, and others were served meanwhile;
 *   - a client SIGKILLed while its 6000-token prompt is being read: its session and KV
 *     blocks are released.
 * One mqd (started as root, running as nobody, any client allowed; a 4 KiB token ring).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>

#include "libclient/mq.h"
#include "tests/integration/mqd_spawn.h"
#include "tests/integration/raw_client.h"

#define GEN 24

static char dir[256], client_sock[300], admin_sock[300], logpath[300];
static pid_t mqd_pid;

static const char *prompt_a = "The history of the city begins in the twelfth century, when";
static const char *prompt_b = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

typedef struct answer {
    int32_t ids[1024];
    int n, done, end_reason, error;
    char msg[256];
} answer;

/* A wait bound in ms, stretched under a slower build (MQ_TEST_TIME_SCALE: TSan) */
static int ms(int base)
{
    return (int)(base * spawn_time_scale());
}

/* A greedy request of max_tokens on prompt, read to its DONE on a fresh connection. */
static int answer_of(const char *prompt, int max_tokens, answer *a)
{
    memset(a, 0, sizeof *a);
    mq_conn *c;
    int rc = mq_connect(client_sock, &c);
    if (rc)
        return rc;
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = (uint32_t)max_tokens;
    uint64_t s, req;
    rc = mq_open_session(c, MQ_MODE_RAW, &s);
    if (!rc)
        rc = mq_send_text(c, s, prompt, strlen(prompt), &p, &req);
    mq_event ev;
    while (!rc && !a->done && (rc = mq_next_event(c, &ev, ms(60000))) == 0) {
        if (ev.type == MQ_EVENT_TOKEN) {
            if (a->n < 1024)
                a->ids[a->n++] = ev.token;
            continue;
        }
        a->done = 1;
        a->end_reason = ev.end_reason;
        a->error = ev.error;
        snprintf(a->msg, sizeof a->msg, "%.*s", (int)ev.text_len, ev.text);
    }
    mq_disconnect(c);
    return rc;
}

static int same(const answer *x, const answer *y)
{
    return x->n == y->n && !memcmp(x->ids, y->ids, sizeof(int32_t) * (size_t)x->n);
}

static double stat_of(const char *group, const char *key)
{
    cJSON *r = admin_call(admin_sock, "stats", 0);
    double v = jnum(r, group, key);
    cJSON_Delete(r);
    return v;
}

/* Waits until mqd holds no session and no KV block in use; 1 when it does. */
static int released(int timeout_s)
{
    for (double t0 = spawn_now(); spawn_now() - t0 < timeout_s * spawn_time_scale(); usleep(100 * 1000))
        if (stat_of("sessions", NULL) == 0 && stat_of("kv", "used") == 0)
            return 1;
    return 0;
}

static answer ref_a, ref_b;

static void test_references(void)
{
    CHECK(answer_of(prompt_a, GEN, &ref_a) == 0 && ref_a.n == GEN, "reference a: %d tokens", ref_a.n);
    CHECK(answer_of(prompt_b, 300, &ref_b) == 0 && ref_b.n > GEN, "reference b: %d tokens", ref_b.n);
}

/* ---- a client that never reads its token ring ----------------------------------- */
typedef struct beside {
    answer a;
    int rc;
} beside;

static void *beside_main(void *arg)
{
    beside *b = arg;
    b->rc = answer_of(prompt_a, GEN, &b->a);
    return NULL;
}

static void test_never_reads(void)
{
    mq_conn *c;
    int rc = mq_connect(client_sock, &c);
    CHECK(rc == 0, "connect: %s", mq_strerror(rc));
    if (rc)
        return;
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = 8000; /* far more than 4 KiB of ring and 16 KiB of spill hold */
    uint64_t s, req;
    CHECK(mq_open_session(c, MQ_MODE_RAW, &s) == 0 && mq_send_text(c, s, prompt_b, strlen(prompt_b), &p, &req) == 0,
          "the long request");
    /* while it fills its ring, another client's stream runs beside it */
    beside b = { 0 };
    pthread_t th;
    pthread_create(&th, NULL, beside_main, &b);
    pthread_join(th, NULL);
    CHECK(b.rc == 0 && same(&b.a, &ref_a), "the other client's stream: %s, %d tokens, %s the one alone",
          mq_strerror(b.rc), b.a.n, same(&b.a, &ref_a) ? "equal to" : "NOT equal to");
    /* its request ends by itself, without it reading a byte */
    int ended = 0;
    for (double t0 = spawn_now(); !ended && spawn_now() - t0 < 60 * spawn_time_scale(); usleep(100 * 1000))
        ended = stat_of("queue", "decoding") == 0 && stat_of("queue", "prefilling") == 0;
    CHECK(ended, "the unread request still runs after %.0f s", 60 * spawn_time_scale());
    /* now it reads: what fitted, then DONE with the reason */
    int tokens = 0, done = 0, end = -1, err = 0;
    char msg[256] = "";
    mq_event ev;
    while (!done && mq_next_event(c, &ev, ms(10000)) == 0) {
        if (ev.type == MQ_EVENT_TOKEN) {
            tokens++;
            continue;
        }
        done = 1;
        end = ev.end_reason;
        err = ev.error;
        snprintf(msg, sizeof msg, "%.*s", (int)ev.text_len, ev.text);
    }
    printf("    the client that did not read: %d tokens kept for it, then \"%s\"\n", tokens, msg);
    CHECK(done && end == MQ_END_FAILED && err == -MQ_ELIMIT && strstr(msg, "did not read its token ring"),
          "its request ended with end %d error %d (%s)", end, err, msg);
    CHECK(tokens > 100 && tokens < 8000, "%d tokens delivered", tokens);
    /* and its connection is still good */
    p.max_tokens = 4;
    int n = 0;
    done = 0;
    CHECK(mq_send_text(c, s, " And", 4, &p, &req) == 0, "a new request after the cancelled one");
    while (!done && mq_next_event(c, &ev, ms(30000)) == 0)
        n += ev.type == MQ_EVENT_TOKEN, done = ev.type == MQ_EVENT_DONE;
    CHECK(done && n == 4, "%d tokens of the next request", n);
    mq_disconnect(c);
    CHECK(released(20), "sessions or KV blocks left after it disconnected");
}

/* ---- a client that corrupts its prompt ring or sends bad prompt bytes ----------- */
/* A raw connection with its channel and a raw session; 0 or -1. */
typedef struct rawc {
    int fd, fds[2];
    mq_chan ch;
    uint64_t session;
} rawc;

static int rawc_open(rawc *r)
{
    memset(r, 0, sizeof *r);
    r->fd = raw_connect(client_sock);
    if (r->fd < 0 || raw_hello_map(r->fd, &r->ch, r->fds))
        return -1;
    r->session = raw_open(r->fd);
    return r->session ? 0 : -1;
}

static void rawc_close(rawc *r)
{
    if (r->fd >= 0)
        close(r->fd);
    if (r->ch.base)
        mq_chan_unmap(&r->ch);
    if (r->fds[1] >= 0)
        close(r->fds[1]);
}

/* The connection is closed by mqd: the next read is end of file. */
static int closed_by_mqd(int fd)
{
    mq_msg r;
    return raw_recv(fd, &r) < 0;
}

static void test_corrupt_prompt_ring(void)
{
    rawc r;
    CHECK(rawc_open(&r) == 0, "raw client");
    /* the head word says more bytes than the ring can hold */
    __atomic_store_n(&r.ch.hdr->prompt.head, r.ch.prompt.pos + 0x40000000u, __ATOMIC_SEQ_CST);
    mq_msg m = { .type = MQ_MSG_SUBMIT }, rep;
    m.u.submit.session = r.session;
    m.u.submit.kind = MQ_WIRE_KIND_TEXT;
    m.u.submit.ring_off = r.ch.prompt.pos;
    m.u.submit.len = 16;
    mq_wire_gen_default(&m.u.submit.gen);
    CHECK(raw_call(r.fd, &m, -1, &rep, NULL, 0) == 0 && rep.type == MQ_MSG_ERROR &&
              rep.u.error.code == MQ_ERR_PROTOCOL && strstr(rep.u.error.text, "prompt ring"),
          "an impossible head: %s", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "no ERROR");
    CHECK(closed_by_mqd(r.fd), "connection not closed after an impossible head");
    rawc_close(&r);

    /* bytes that are not the next ones of the ring */
    CHECK(rawc_open(&r) == 0, "raw client 2");
    const char *text = "Hello there";
    mq_ring_write(&r.ch.prompt, text, (uint32_t)strlen(text));
    mq_ring_publish(&r.ch.prompt);
    m.u.submit.session = r.session;
    m.u.submit.ring_off = r.ch.prompt.pos - (uint32_t)strlen(text) + 3;
    m.u.submit.len = (uint32_t)strlen(text);
    CHECK(raw_call(r.fd, &m, -1, &rep, NULL, 0) == 0 && rep.type == MQ_MSG_ERROR && rep.u.error.code == MQ_ERR_PROTOCOL,
          "a wrong ring offset");
    CHECK(closed_by_mqd(r.fd), "connection not closed after a wrong ring offset");
    rawc_close(&r);
    CHECK(spawn_log_has(logpath, "do not name the next valid bytes of the prompt ring") &&
              spawn_log_has(logpath, "do not name the next published bytes of the prompt ring"),
          "no log lines for the bad ring words and offsets");

    /* bad bytes in a well-formed submit: that request is refused, the connection lives */
    CHECK(rawc_open(&r) == 0, "raw client 3");
    static const char bad_utf8[] = "caf\xc3 \xff\xfe end";
    CHECK(raw_submit(r.fd, &r.ch, r.session, MQ_WIRE_KIND_TEXT, bad_utf8, sizeof bad_utf8 - 1, 4, &rep) == 0 &&
              rep.type == MQ_MSG_ERROR && rep.u.error.code == MQ_ERR_BAD_PROMPT,
          "invalid UTF-8: %s", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "accepted");
    printf("    invalid UTF-8: \"%s\"\n", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "");
    const int32_t bad_ids[][3] = { { 100, 151936, 7 }, { 100, -1, 7 }, { 100, INT32_MAX, 7 } };
    for (int i = 0; i < 3; i++) {
        CHECK(raw_submit(r.fd, &r.ch, r.session, MQ_WIRE_KIND_TOKENS, bad_ids[i], sizeof bad_ids[i], 4, &rep) == 0 &&
                  rep.type == MQ_MSG_ERROR && rep.u.error.code == MQ_ERR_BAD_PROMPT &&
                  strstr(rep.u.error.text, "token"),
              "token id %d: %s", bad_ids[i][1], rep.type == MQ_MSG_ERROR ? rep.u.error.text : "accepted");
        if (i == 0)
            printf("    token id out of range: \"%s\"\n", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "");
    }
    CHECK(raw_submit(r.fd, &r.ch, r.session, MQ_WIRE_KIND_TEXT, "Once upon a time", 16, 4, &rep) == 0 &&
              rep.type == MQ_MSG_SUBMITTED,
          "a good submit after the bad ones: %s", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "");
    /* a byte count that is not whole token ids is a malformed message: closed */
    uint64_t s2 = raw_open(r.fd);
    CHECK(s2 && raw_submit(r.fd, &r.ch, s2, MQ_WIRE_KIND_TOKENS, bad_ids[0], 6, 4, &rep) == 0 &&
              rep.type == MQ_MSG_ERROR && rep.u.error.code == MQ_ERR_PROTOCOL,
          "6 bytes of token ids: %s", rep.type == MQ_MSG_ERROR ? rep.u.error.text : "accepted");
    CHECK(closed_by_mqd(r.fd), "connection not closed after a malformed submit");
    rawc_close(&r);

    answer a;
    CHECK(answer_of(prompt_a, GEN, &a) == 0 && same(&a, &ref_a), "another client afterwards");
    CHECK(released(20), "sessions or KV blocks left");
}

/* ---- SIGSTOP / SIGCONT of a client ---------------------------------------------- */
/* The child: streams prompt_b's answer of 300 tokens, tells the parent after 10 tokens,
 * then writes every token id (and the end reason) to the pipe when it is done. */
static void stopped_child(int out)
{
    answer a;
    memset(&a, 0, sizeof a);
    mq_conn *c;
    if (mq_connect(client_sock, &c))
        _exit(2);
    mq_params p;
    mq_params_init(&p);
    p.flags |= MQ_PARAM_GREEDY;
    p.max_tokens = 300;
    uint64_t s, req;
    if (mq_open_session(c, MQ_MODE_RAW, &s) || mq_send_text(c, s, prompt_b, strlen(prompt_b), &p, &req))
        _exit(3);
    mq_event ev;
    while (!a.done && mq_next_event(c, &ev, ms(60000)) == 0) {
        if (ev.type == MQ_EVENT_TOKEN) {
            a.ids[a.n++] = ev.token;
            if (a.n == 10 && write(out, "go", 2) != 2)
                _exit(4);
            continue;
        }
        a.done = 1;
        a.end_reason = ev.end_reason;
    }
    ssize_t w = write(out, &a, sizeof a);
    _exit(w == (ssize_t)sizeof a ? 0 : 5);
}

static void test_sigstop_sigcont(void)
{
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        stopped_child(p[1]);
    }
    close(p[1]);
    char go[2];
    struct pollfd pf = { p[0], POLLIN, 0 };
    CHECK(poll(&pf, 1, ms(60000)) == 1 && read(p[0], go, 2) == 2, "the child did not stream");
    kill(pid, SIGSTOP);
    double t0 = spawn_now();
    /* stopped: its ring fills; everyone else goes on */
    answer a;
    CHECK(answer_of(prompt_a, GEN, &a) == 0 && same(&a, &ref_a), "another client while it is stopped");
    cJSON *r = admin_call(admin_sock, "status", 0);
    CHECK(r && !strcmp(jstr(r, "state"), "ready"), "mqctl status while it is stopped");
    cJSON_Delete(r);
    double left = 3 - (spawn_now() - t0);
    if (left > 0)
        usleep((useconds_t)(left * 1e6));
    kill(pid, SIGCONT);
    static answer got;
    memset(&got, 0, sizeof got);
    int st;
    CHECK(spawn_child_result(pid, p[0], &got, sizeof got, ms(60000), &st), "the child's result (status %d)", st);
    int n_cmp = ref_b.n < got.n ? ref_b.n : got.n;
    CHECK(got.done && got.n == ref_b.n && !memcmp(got.ids, ref_b.ids, sizeof(int32_t) * (size_t)n_cmp),
          "after SIGCONT: %d tokens (alone: %d), %s", got.n, ref_b.n,
          !memcmp(got.ids, ref_b.ids, sizeof(int32_t) * (size_t)n_cmp) ? "same ids" : "different ids");
    CHECK(released(20), "sessions or KV blocks left");
}

/* ---- SIGKILL while the prompt is read ------------------------------------------- */
static void test_killed_during_prefill(void)
{
    /* about 6000 tokens: prefill takes seconds on this box */
    static char big[30000];
    size_t off = 0;
    for (int i = 0; off + 80 < sizeof big; i++)
        off += (size_t)snprintf(big + off, sizeof big - off, "Item %d of the inventory is a box of %d nails. ", i,
                                i * 7 + 3);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        mq_conn *c;
        mq_params pr;
        mq_params_init(&pr);
        pr.max_tokens = 8;
        uint64_t s, req;
        if (mq_connect(client_sock, &c) || mq_open_session(c, MQ_MODE_RAW, &s) ||
            mq_send_text(c, s, big, strlen(big), &pr, &req))
            _exit(2);
        if (write(p[1], "s", 1) != 1)
            _exit(3);
        pause();
        _exit(0);
    }
    close(p[1]);
    char ch;
    CHECK(read(p[0], &ch, 1) == 1, "the child did not submit");
    close(p[0]);
    int prefilling = 0;
    for (double t0 = spawn_now(); !prefilling && spawn_now() - t0 < 20 * spawn_time_scale(); usleep(20 * 1000))
        prefilling = stat_of("queue", "prefilling") > 0 || stat_of("queue", "queued") > 0;
    CHECK(prefilling, "the long prompt was never seen queued or prefilling");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(released(30), "sessions or KV blocks left after the client died mid-prefill");
    answer a;
    CHECK(answer_of(prompt_a, GEN, &a) == 0 && same(&a, &ref_a), "another client afterwards");
}

/* Everything these clients made mqd do stayed within its system-call allow-list. */
static void test_seccomp_refused_nothing(void)
{
    spawn_check_no_seccomp_refusal(admin_sock);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    snprintf(client_sock, sizeof client_sock, "%s/client.sock", dir);
    snprintf(admin_sock, sizeof admin_sock, "%s/admin.sock", dir);
    snprintf(logpath, sizeof logpath, "%s/mqd.log", dir);
    const char *extra[] = { "--kv-tokens", "16384", "--token-ring-kib", "4", "--user", "nobody", NULL };
    if (geteuid() != 0)
        extra[4] = NULL; /* not root: mqd runs as this user */
    mqd_pid = spawn_suite_mqd(client_sock, admin_sock, logpath, extra);
    if (!mqd_pid)
        return harness_done();
    RUN(test_references);
    RUN(test_never_reads);
    RUN(test_corrupt_prompt_ring);
    RUN(test_sigstop_sigcont);
    RUN(test_killed_during_prefill);
    RUN(test_seccomp_refused_nothing);
    return spawn_suite_done(mqd_pid, logpath);
}
