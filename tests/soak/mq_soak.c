/* tests/soak/mq_soak.c — the soak run (make soak): many clients, mixed work, faults, for
 * minutes, against one real mqd through libmq; prints `name: value` figures and exits 1
 * when one of them misses its bound.
 *
 *   mq_soak --mqd build/mqd --mqctl build/mqctl --model DIR [--clients 64] [--requests 100]
 *           [--gen 24] [--seed 1]
 *
 * What runs (every client is a thread with its own connection, except the killed ones):
 *   1. mqd starts in a fresh folder (as root it serves as nobody). Sixteen prompts are cut
 *      from corpus/dev.txt, from 10 to 8000 tokens; each is answered greedily ALONE (one
 *      request on the whole daemon): the references.
 *   2. A warm-up of every client, a tenth of the run (libmq, then HTTP with --openai), then
 *      mqd's RSS is the baseline.
 *   3. The main run: each client makes --requests requests, one session per request, a
 *      random prompt each time; per request: greedy (compared token for token with the
 *      prompt's reference: a difference is "mixed"), sampled (seeded), cancelled after
 *      0..10 tokens, the connection dropped mid-stream, or a reader that stops reading for
 *      1.5-3 s with a long answer coming (its token ring fills and spills) and then reads
 *      on. One client in 16 instead runs each request in a child process that it SIGKILLs
 *      once tokens stream. Every request of a live client must end with its DONE (reason
 *      length/stop, or cancelled where asked); anything else is "lost".
 *   4. Slow readers' cost to the others: 8 clients stream greedy answers beside 4 clients
 *      with long answers that either read at full speed or do not read at all; the ratio
 *      of the 8 clients' time per token (stalled / reading), the median over 6 pairs of
 *      rounds (the order alternating: a shared machine's other work moves single rounds).
 *   5. With --openai: the main run's mix through mq-openai's /v1/completions (greedy answers
 *      compared with the solo libmq text), then the slow-reader rounds over HTTP (a
 *      stalled reader's TCP window closes).
 *   6. After every client has gone: KV blocks still in use or reserved (mqctl --json
 *      stats: leaked), sessions left, RSS against the baseline.
 * Figures: soak_requests, soak_lost (0), soak_mixed (0), soak_rss_growth_pct (<= 5),
 * soak_kv_blocks_leaked (0), soak_p99_ttft_ms, soak_slow_reader_slowdown (<= 1.1); the
 * HTTP half's soak_http_* lines the same.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libclient/mq.h"

#define NPROMPT         16
#define MAX_GEN         2048
#define EVENT_WAIT_MS   180000 /* no event for 3 minutes: the request is lost */
#define RSS_BOUND_PCT   5.0
#define SLOWDOWN_BOUND  1.1
#define SLOW_PAIRS      6   /* rounds with readers read / stalled, for the slowdown's median */
#define MEASURED_TOKENS 160 /* the measured clients' answers in those rounds */

/* Prompt lengths in tokens (about 4.3 characters of the corpus per token). */
static const int prompt_tokens_goal[NPROMPT] = { 10,   16,   30,   60,   100,  200,  350,  600,
                                                 1000, 1500, 2200, 3000, 4000, 5200, 6500, 8000 };

typedef struct ref_answer {
    int32_t ids[MAX_GEN];
    int n;
    int end_reason;
    unsigned prompt_tokens;
    char text[8192]; /* what the ids decode to (compared with HTTP answers) */
    size_t text_len;
} ref_answer;

typedef struct soak {
    const char *mqd, *mqctl, *model, *openai; /* openai: mq-openai's binary, NULL = no HTTP half */
    int clients, requests, gen, http_requests;
    const char *mqd_args[32]; /* --mqd-arg: appended to mqd's command line */
    int n_mqd_args;
    int http_port;
    pid_t oai_pid;
    char oai_log[300];
    unsigned seed;
    char dir[256], client_sock[300], admin_sock[300], log[300], self[4096];
    pid_t mqd_pid;
    char *prompt[NPROMPT];
    size_t prompt_len[NPROMPT];
    ref_answer ref[NPROMPT];
} soak;

enum kind { K_GREEDY, K_SAMPLED, K_CANCEL, K_DROP, K_STALL, K_KILLED, K_KINDS };
static const char *const kind_name[K_KINDS] = { "greedy", "sampled", "cancelled", "dropped", "stalled", "killed" };

typedef struct tally {
    long requests[K_KINDS];
    long lost, compared, mixed, tokens;
    char first_mixed[600];
    double *ttft_ms; /* one per request that saw a token */
    long n_ttft, cap_ttft;
    char first_loss[256];
} tally;

typedef struct client {
    soak *s;
    int idx, requests, killer;
    unsigned rng;
    mq_conn *c;
    tally t;
} client;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned rnd(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void note_ttft(tally *t, double ms)
{
    if (t->n_ttft == t->cap_ttft) {
        long cap = t->cap_ttft ? 2 * t->cap_ttft : 256;
        double *p = realloc(t->ttft_ms, (size_t)cap * sizeof *p);
        if (!p)
            return;
        t->ttft_ms = p;
        t->cap_ttft = cap;
    }
    t->ttft_ms[t->n_ttft++] = ms;
}

static void lose(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lose(tally *t, const char *fmt, ...)
{
    t->lost++;
    if (t->first_loss[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->first_loss, sizeof t->first_loss, fmt, ap);
    va_end(ap);
}

/* ---- mqd and its admin side -------------------------------------------------------- */
static cJSON *mqctl_json(const soak *s, const char *cmd)
{
    char line[1024];
    snprintf(line, sizeof line, "%s --socket %s --json %s 2>/dev/null", s->mqctl, s->admin_sock, cmd);
    FILE *p = popen(line, "r");
    if (!p)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, p)) > 0)
        n += k;
    pclose(p);
    if (!buf)
        return NULL;
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    return j;
}

static double jnum(const cJSON *o, const char *a, const char *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        v = cJSON_GetObjectItemCaseSensitive(v, b);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* kB of "Key:" in /proc/<pid>/status, or -1. */
static long proc_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':')
            v = strtol(line + kl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* kB of mqd's KV segment that is resident: the memfd "mq-kv" in /proc/<pid>/smaps, or,
 * when the segment is anonymous memory (THP or 4k when no huge page was free), the one
 * mapping of kv_bytes (mqctl stats kv.bytes, up to a huge page more for alignment). Its
 * pages are touched the first time a block is used, which is growth but not a leak. */
static long kv_resident_kb(pid_t pid, double kv_bytes)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    long memfd_kb = 0, sized_kb = 0;
    int in_kv = 0, in_sized = 0;
    while (f && fgets(line, sizeof line, f)) {
        /* a mapping's first line starts with its address (lowercase hex), its fields with
         * a capitalised name ("Rss:") */
        if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')) {
            unsigned long lo = 0, hi = 0;
            sscanf(line, "%lx-%lx", &lo, &hi);
            double len = (double)(hi - lo);
            in_kv = strstr(line, "memfd:mq-kv") != NULL;
            in_sized = !in_kv && kv_bytes > 0 && len >= kv_bytes && len <= kv_bytes + (2 << 20);
        } else if (!strncmp(line, "Rss:", 4)) {
            if (in_kv)
                memfd_kb += strtol(line + 4, NULL, 10);
            else if (in_sized)
                sized_kb += strtol(line + 4, NULL, 10);
        }
    }
    if (f)
        fclose(f);
    return memfd_kb ? memfd_kb : sized_kb;
}

/* mqd's KV segment in bytes (mqctl --json stats), 0 if not known */
static double kv_bytes_of(soak *s)
{
    cJSON *st = mqctl_json(s, "stats");
    double b = jnum(st, "kv", "bytes");
    cJSON_Delete(st);
    return b > 0 ? b : 0;
}

static int start_mqd(soak *s)
{
    snprintf(s->dir, sizeof s->dir, "/tmp/mqsoak-XXXXXX");
    if (!mkdtemp(s->dir))
        return -errno;
    chmod(s->dir, 0755);
    snprintf(s->client_sock, sizeof s->client_sock, "%s/client.sock", s->dir);
    snprintf(s->admin_sock, sizeof s->admin_sock, "%s/admin.sock", s->dir);
    snprintf(s->log, sizeof s->log, "%s/mqd.log", s->dir);
    /* KV for 64 concurrent contexts of ~2k tokens and the prompts' cached blocks; a full
     * store waits (the soak counts losses, not KV pressure); a 16 KiB token ring fills
     * within ~500 tokens, so the stalled readers really spill. */
    char *argv[64] = { (char *)s->mqd,
                       "--model-dir",
                       (char *)s->model,
                       "--client-socket",
                       s->client_sock,
                       "--admin-socket",
                       s->admin_sock,
                       "--kv-tokens",
                       "196608",
                       "--on-full",
                       "wait",
                       "--max-sessions",
                       "512",
                       "--queue-max",
                       "512",
                       "--token-ring-kib",
                       "16",
                       "--drain-timeout-ms",
                       "5000" };
    int n = 19;
    if (geteuid() == 0) {
        argv[n++] = "--user";
        argv[n++] = "nobody";
    }
    for (int i = 0; i < s->n_mqd_args && n < 63; i++) /* --mqd-arg: experiments (e.g. --seccomp off) */
        argv[n++] = (char *)s->mqd_args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    s->mqd_pid = pid;
    for (int i = 0; i < 1200; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            break;
        cJSON *r = mqctl_json(s, "status");
        const cJSON *state = cJSON_GetObjectItemCaseSensitive(r, "state");
        int ready = cJSON_IsString(state) && !strcmp(state->valuestring, "ready");
        cJSON_Delete(r);
        if (ready)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "mq_soak: mqd did not become ready; its log: %s\n", s->log);
    return -ETIMEDOUT;
}

/* ---- prompts ----------------------------------------------------------------------- */
/* Sixteen slices of the corpus at spread-out offsets, <|endoftext|> replaced by blank
 * lines (raw text is tokenized as text: the marker would be literal characters). */
static int make_prompts(soak *s, const char *corpus)
{
    FILE *f = fopen(corpus, "rb");
    if (!f)
        return -errno;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(text);
        return -EIO;
    }
    fclose(f);
    text[n] = 0;
    const char *mark = "<|endoftext|>";
    for (char *p = text; (p = strstr(p, mark)) != NULL; p += strlen(mark))
        memcpy(p, "\n\n           ", strlen(mark));
    for (int i = 0; i < NPROMPT; i++) {
        size_t len = (size_t)(prompt_tokens_goal[i] * 4.3);
        size_t off = (size_t)(n - (long)len - 1) / NPROMPT * (size_t)i;
        while (off > 0 && (text[off] & 0xc0) == 0x80) /* start on a UTF-8 boundary */
            off--;
        while (len > 0 && (text[off + len] & 0xc0) == 0x80)
            len--;
        s->prompt[i] = strndup(text + off, len);
        s->prompt_len[i] = len;
    }
    free(text);
    return 0;
}

/* ---- one request --------------------------------------------------------------------- */
typedef struct outcome {
    int32_t ids[MAX_GEN];
    int n;
    char text[8192];
    size_t text_len;
    int done, end_reason, error;
    double ttft_ms; /* -1: no token */
    double t_first, t_last;
    mq_req_stats stats;
    char msg[160];
} outcome;

static void params(mq_params *p, int greedy, int max_tokens, unsigned seed)
{
    mq_params_init(p);
    p->max_tokens = (uint32_t)max_tokens;
    if (greedy) {
        p->flags |= MQ_PARAM_GREEDY;
        p->temperature = 0;
    } else {
        p->temperature = 0.8f;
        p->seed = seed ? seed : 1;
    }
}

/* Reads request req's events until its DONE. stop_after > 0: returns after that many
 * tokens (o->done stays 0). Returns 0, or the error of mq_next_event. */
static int read_events(mq_conn *c, uint64_t req, double t_sent, outcome *o, int stop_after)
{
    for (;;) {
        if (stop_after > 0 && o->n >= stop_after)
            return 0;
        mq_event ev;
        int rc = mq_next_event(c, &ev, EVENT_WAIT_MS);
        if (rc)
            return rc;
        if (ev.req != req) {
            snprintf(o->msg, sizeof o->msg, "an event of request %llu arrived for %llu", (unsigned long long)ev.req,
                     (unsigned long long)req);
            return -EPROTO;
        }
        if (ev.type == MQ_EVENT_TOKEN) {
            double t = now_s();
            if (o->n == 0) {
                o->ttft_ms = (t - t_sent) * 1e3;
                o->t_first = t;
            }
            o->t_last = t;
            if (o->n < MAX_GEN)
                o->ids[o->n] = ev.token;
            o->n++;
            if (o->text_len + ev.text_len < sizeof o->text) {
                memcpy(o->text + o->text_len, ev.text, ev.text_len);
                o->text_len += ev.text_len;
            }
            continue;
        }
        o->done = 1;
        o->end_reason = ev.end_reason;
        o->error = ev.error;
        o->stats = ev.stats;
        snprintf(o->msg, sizeof o->msg, "%.*s", (int)ev.text_len, ev.text);
        return 0;
    }
}

/* Sends prompt p on a fresh raw session of c: 0 and *req, *session, or an error. */
static int send_prompt(soak *s, mq_conn *c, int p, const mq_params *mp, uint64_t *session, uint64_t *req)
{
    int rc = mq_open_session(c, MQ_MODE_RAW, session);
    if (rc)
        return rc;
    rc = mq_send_text(c, *session, s->prompt[p], s->prompt_len[p], mp, req);
    if (rc)
        mq_close_session(c, *session);
    return rc;
}

/* Token-for-token equality with the prompt's solo answer, over what both generated (a
 * longer request's first tokens are the shorter one's: greedy is prefix-consistent). */
static int same_as_ref(const soak *s, int p, const outcome *o)
{
    const ref_answer *r = &s->ref[p];
    int n = o->n < r->n ? o->n : r->n;
    if (n > MAX_GEN)
        n = MAX_GEN;
    if (memcmp(o->ids, r->ids, sizeof(int32_t) * (size_t)n))
        return 0;
    /* one stopped (EOS) earlier than the other could have: they differ */
    if (o->end_reason == MQ_END_STOPPED && r->n > o->n)
        return 0;
    if (r->end_reason == MQ_END_STOPPED && o->n > r->n)
        return 0;
    return 1;
}

static int solo(soak *s, int p, ref_answer *r)
{
    mq_conn *c;
    int rc = mq_connect(s->client_sock, &c);
    if (rc)
        return rc;
    mq_params mp;
    params(&mp, 1, s->gen, 0);
    mp.flags |= MQ_PARAM_NO_SPECIAL_TEXT; /* as HTTP answers: their text is compared with this one */
    uint64_t sess, req;
    static outcome o;
    memset(&o, 0, sizeof o);
    double t0 = now_s();
    rc = send_prompt(s, c, p, &mp, &sess, &req);
    if (!rc)
        rc = read_events(c, req, t0, &o, 0);
    if (!rc && (!o.done || (o.end_reason != MQ_END_LENGTH && o.end_reason != MQ_END_STOPPED)))
        rc = -EIO;
    mq_disconnect(c);
    if (rc)
        return rc;
    memcpy(r->ids, o.ids, sizeof r->ids);
    r->n = o.n < MAX_GEN ? o.n : MAX_GEN;
    r->end_reason = o.end_reason;
    r->prompt_tokens = o.stats.prompt_tokens;
    memcpy(r->text, o.text, o.text_len);
    r->text_len = o.text_len;
    return 0;
}

/* ---- the clients -------------------------------------------------------------------- */
static int connect_client(client *cl)
{
    if (cl->c)
        return 0;
    return mq_connect(cl->s->client_sock, &cl->c);
}

static void drop_connection(client *cl)
{
    mq_disconnect(cl->c);
    cl->c = NULL;
}

/* The greedy/sampled/cancelled/stalled kinds on the client's connection. */
static void one_request(client *cl, int kind, int p)
{
    soak *s = cl->s;
    tally *t = &cl->t;
    int rc = connect_client(cl);
    if (rc) {
        lose(t, "client %d: connect: %s", cl->idx, mq_strerror(rc));
        return;
    }
    int greedy = kind != K_SAMPLED;
    int max_tokens = kind == K_STALL ? 600 : kind == K_CANCEL || kind == K_DROP ? 200 : s->gen;
    mq_params mp;
    params(&mp, greedy, max_tokens, rnd(&cl->rng));
    uint64_t sess, req;
    static __thread outcome o;
    memset(&o, 0, sizeof o);
    o.ttft_ms = -1;
    double t0 = now_s();
    rc = send_prompt(s, cl->c, p, &mp, &sess, &req);
    if (rc) {
        lose(t, "client %d: %s request: send: %s", cl->idx, kind_name[kind], mq_strerror(rc));
        drop_connection(cl);
        return;
    }
    int first = kind == K_CANCEL  ? (int)(rnd(&cl->rng) % 11)
                : kind == K_DROP  ? 1 + (int)(rnd(&cl->rng) % 8)
                : kind == K_STALL ? 5
                                  : 0;
    if (first > 0 || kind == K_CANCEL)
        rc = first ? read_events(cl->c, req, t0, &o, first) : 0;
    if (!rc && !o.done) {
        if (kind == K_CANCEL)
            rc = mq_cancel(cl->c, req);
        else if (kind == K_DROP) {
            drop_connection(cl); /* mqd cancels and closes the session */
            if (o.ttft_ms >= 0)
                note_ttft(t, o.ttft_ms);
            t->tokens += o.n;
            return;
        } else if (kind == K_STALL)
            usleep((1500 + rnd(&cl->rng) % 1500) * 1000);
        if (rc == -MQ_ENOREQUEST) /* it ended just before the cancel: its DONE follows */
            rc = 0;
    }
    if (!rc && !o.done)
        rc = read_events(cl->c, req, t0, &o, 0);
    t->tokens += o.n;
    if (o.ttft_ms >= 0)
        note_ttft(t, o.ttft_ms);
    int want_end = o.end_reason == MQ_END_LENGTH || o.end_reason == MQ_END_STOPPED ||
                   (kind == K_CANCEL && o.end_reason == MQ_END_CANCELLED);
    if (rc || !o.done || !want_end || o.error) {
        lose(t, "client %d: %s request on prompt %d: %s (end %d, error %d: %s)", cl->idx, kind_name[kind], p,
             rc ? mq_strerror(rc) : "ended badly", o.end_reason, o.error, o.msg);
        drop_connection(cl);
        return;
    }
    if (greedy) { /* a cancelled answer is compared over the tokens it got */
        t->compared++;
        if (!same_as_ref(s, p, &o) && t->mixed++ == 0)
            snprintf(t->first_mixed, sizeof t->first_mixed, "prompt %d, end %d: %d tokens, alone %d", p, o.end_reason,
                     o.n, s->ref[p].n);
    }
    rc = mq_close_session(cl->c, sess);
    if (rc) {
        lose(t, "client %d: close session: %s", cl->idx, mq_strerror(rc));
        drop_connection(cl);
    }
}

/* A request in a child process that is SIGKILLed once its tokens stream. */
static void killed_request(client *cl, int p)
{
    tally *t = &cl->t;
    int pfd[2];
    if (pipe(pfd)) {
        lose(t, "pipe: %s", strerror(errno));
        return;
    }
    char pi[16], fdarg[16];
    snprintf(pi, sizeof pi, "%d", p);
    snprintf(fdarg, sizeof fdarg, "%d", pfd[1]);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        char *argv[] = { cl->s->self, "--child", cl->s->client_sock, pi, fdarg, NULL };
        execv(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    struct pollfd pf = { pfd[0], POLLIN, 0 };
    char b = 0;
    int got = poll(&pf, 1, EVENT_WAIT_MS) == 1 && read(pfd[0], &b, 1) == 1 && b == 'T';
    if (got) /* streaming: killed within 30 ms */
        usleep(rnd(&cl->rng) % 30000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(pfd[0]);
    if (!got)
        lose(t, "client %d: killed-client child saw no token (%c)", cl->idx, b ? b : '-');
}

/* Tells the parent of a killed-client child how far it got: T = streaming (kill me now);
 * P, C, S = failed reading the prompts, connecting, sending; D = done before the kill. */
static int tell(int fd, char what)
{
    return write(fd, &what, 1) == 1 && (what == 'T' || what == 'D') ? 0 : 1;
}

/* The child of killed_request: connect, send, stream; tells the parent at the first token. */
static int child_main(char **argv)
{
    static soak s;
    const char *sock = argv[0];
    int p = atoi(argv[1]), fd = atoi(argv[2]);
    snprintf(s.client_sock, sizeof s.client_sock, "%s", sock);
    if (make_prompts(&s, getenv("MQ_SOAK_CORPUS")))
        return tell(fd, 'P');
    mq_conn *c;
    if (mq_connect(sock, &c))
        return tell(fd, 'C');
    mq_params mp;
    params(&mp, 1, 400, 0);
    uint64_t sess, req;
    if (send_prompt(&s, c, p, &mp, &sess, &req))
        return tell(fd, 'S');
    mq_event ev;
    int told = 0;
    while (mq_next_event(c, &ev, EVENT_WAIT_MS) == 0 && ev.type == MQ_EVENT_TOKEN)
        if (!told++ && tell(fd, 'T'))
            return 1;
    return told ? 0 : tell(fd, 'D');
}

static void *client_main(void *arg)
{
    client *cl = arg;
    for (int k = 0; k < cl->requests; k++) {
        int p = (int)(rnd(&cl->rng) % NPROMPT);
        int kind;
        if (cl->killer)
            kind = K_KILLED;
        else {
            unsigned r = rnd(&cl->rng) % 100;
            kind = r < 55 ? K_GREEDY : r < 80 ? K_SAMPLED : r < 90 ? K_CANCEL : r < 95 ? K_DROP : K_STALL;
        }
        cl->t.requests[kind]++;
        if (kind == K_KILLED)
            killed_request(cl, p);
        else
            one_request(cl, kind, p);
        if (k % 20 == 19) /* connection churn */
            drop_connection(cl);
    }
    drop_connection(cl);
    return NULL;
}

static int run_clients(soak *s, int requests, tally *sum, void *(*fn)(void *))
{
    client *cl = calloc((size_t)s->clients, sizeof *cl);
    pthread_t *th = calloc((size_t)s->clients, sizeof *th);
    if (!cl || !th)
        return -ENOMEM;
    for (int i = 0; i < s->clients; i++) {
        cl[i] = (client){ .s = s, .idx = i, .requests = requests, .killer = i % 16 == 15 };
        cl[i].rng = s->seed * 2654435761u + (unsigned)i * 40503u + 1;
        if (pthread_create(&th[i], NULL, fn, &cl[i]))
            return -EAGAIN;
    }
    for (int i = 0; i < s->clients; i++) {
        pthread_join(th[i], NULL);
        tally *t = &cl[i].t;
        for (int k = 0; k < K_KINDS; k++)
            sum->requests[k] += t->requests[k];
        sum->lost += t->lost;
        sum->compared += t->compared;
        sum->mixed += t->mixed;
        sum->tokens += t->tokens;
        for (long j = 0; j < t->n_ttft; j++)
            note_ttft(sum, t->ttft_ms[j]);
        if (!sum->first_loss[0] && t->first_loss[0])
            snprintf(sum->first_loss, sizeof sum->first_loss, "%s", t->first_loss);
        if (!sum->first_mixed[0] && t->first_mixed[0])
            snprintf(sum->first_mixed, sizeof sum->first_mixed, "%s", t->first_mixed);
        free(t->ttft_ms);
    }
    free(cl);
    free(th);
    return 0;
}

/* ---- the HTTP half: the same kinds of client through mq-openai -------------------- */
/* A loopback listening socket on a free port, handed to mq-openai as its systemd socket. */
static int start_openai(soak *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 256) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl))
        return -errno;
    s->http_port = ntohs(sa.sin_port);
    snprintf(s->oai_log, sizeof s->oai_log, "%s/mq-openai.log", s->dir);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int lf = open(s->oai_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (lf >= 0) {
            dup2(lf, 1);
            dup2(lf, 2);
        }
        dup2(fd, 3);
        char pidbuf[32];
        snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", pidbuf, 1);
        char *argv[] = { (char *)s->openai,   "--mqd-socket", s->client_sock,    "--max-requests", "128",
                         "--max-connections", "512",          "--queue-wait-ms", "120000",         NULL };
        execv(argv[0], argv);
        _exit(127);
    }
    close(fd);
    s->oai_pid = pid;
    return 0;
}

/* One HTTP/1.1 connection: raw bytes in buf[beg, end); the body as chunks or a length. */
typedef struct hconn {
    int fd, status, chunked, done;
    long remain; /* bytes left of the current chunk, or of Content-Length (-1: till EOF) */
    char buf[65536];
    size_t beg, end;
} hconn;

static int h_fill(hconn *h, int timeout_ms)
{
    if (h->beg == h->end)
        h->beg = h->end = 0;
    if (h->end == sizeof h->buf) {
        memmove(h->buf, h->buf + h->beg, h->end - h->beg);
        h->end -= h->beg;
        h->beg = 0;
    }
    struct pollfd pf = { h->fd, POLLIN, 0 };
    if (poll(&pf, 1, timeout_ms) != 1)
        return -ETIMEDOUT;
    ssize_t k = recv(h->fd, h->buf + h->end, sizeof h->buf - h->end, 0);
    if (k < 0)
        return -errno;
    if (k == 0)
        return -EPIPE;
    h->end += (size_t)k;
    return 0;
}

/* A CRLF-terminated line of the raw stream (headers, chunk sizes), without the CRLF. */
static int h_line(hconn *h, char *out, size_t cap, int timeout_ms)
{
    for (;;) {
        char *nl = memchr(h->buf + h->beg, '\n', h->end - h->beg);
        if (nl) {
            size_t n = (size_t)(nl - (h->buf + h->beg));
            size_t m = n && nl[-1] == '\r' ? n - 1 : n;
            snprintf(out, cap, "%.*s", (int)m, h->buf + h->beg);
            h->beg += n + 1;
            return 0;
        }
        int rc = h_fill(h, timeout_ms);
        if (rc)
            return rc;
    }
}

/* Sends a POST of body to path; reads the status line and headers. */
/* rcvbuf > 0: the socket's receive buffer (set before connect, so the window is small:
 * a reader that stops reading pushes back on mq-openai within a few KiB). */
static int h_post(hconn *h, int port, const char *path, const char *body, int rcvbuf)
{
    memset(h, 0, sizeof *h);
    h->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (h->fd >= 0 && rcvbuf > 0)
        setsockopt(h->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (h->fd < 0 || connect(h->fd, (struct sockaddr *)&sa, sizeof sa))
        return -errno;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     path, strlen(body));
    if (send(h->fd, head, (size_t)n, MSG_NOSIGNAL) != n ||
        send(h->fd, body, strlen(body), MSG_NOSIGNAL) != (ssize_t)strlen(body))
        return -EPIPE;
    char line[1024];
    int rc = h_line(h, line, sizeof line, EVENT_WAIT_MS);
    if (rc)
        return rc;
    if (sscanf(line, "HTTP/1.%*d %d", &h->status) != 1)
        return -EPROTO;
    h->remain = -1;
    while (!(rc = h_line(h, line, sizeof line, EVENT_WAIT_MS)) && line[0]) {
        if (!strncasecmp(line, "Transfer-Encoding:", 18) && strstr(line, "chunked"))
            h->chunked = 1;
        else if (!strncasecmp(line, "Content-Length:", 15))
            h->remain = atol(line + 15);
    }
    return rc;
}

/* Up to cap bytes of the body into out: the count, 0 at its end, or an error. */
static int h_body(hconn *h, char *out, size_t cap, int timeout_ms)
{
    while (!h->done) {
        if (h->chunked && h->remain <= 0) {
            char line[64];
            int rc;
            if (h->remain == 0 && (rc = h_line(h, line, sizeof line, timeout_ms))) /* CRLF after a chunk */
                return rc;
            if ((rc = h_line(h, line, sizeof line, timeout_ms)))
                return rc;
            h->remain = strtol(line, NULL, 16);
            if (h->remain == 0) {
                h->done = 1;
                break;
            }
        }
        if (h->beg == h->end) {
            int rc = h_fill(h, timeout_ms);
            if (rc == -EPIPE && !h->chunked && h->remain < 0) {
                h->done = 1;
                break;
            }
            if (rc)
                return rc;
            continue;
        }
        size_t n = h->end - h->beg;
        if (h->remain >= 0 && (size_t)h->remain < n)
            n = (size_t)h->remain;
        if (n > cap)
            n = cap;
        memcpy(out, h->buf + h->beg, n);
        h->beg += n;
        if (h->remain > 0)
            h->remain -= (long)n;
        if (!h->chunked && h->remain == 0)
            h->done = 1;
        return (int)n;
    }
    return 0;
}

typedef struct http_outcome {
    char text[8192];
    size_t text_len;
    int completion_tokens, done, status;
    char finish[32];
    double ttft_ms;
    char err[200];
    volatile int *stop; /* read_sse returns once *stop is set (NULL: never) */
} http_outcome;

static void add_text(http_outcome *o, const cJSON *choice)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(choice, "text");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason");
    if (cJSON_IsString(t)) {
        size_t n = strlen(t->valuestring);
        if (o->text_len + n < sizeof o->text) {
            memcpy(o->text + o->text_len, t->valuestring, n);
            o->text_len += n;
        }
    }
    if (cJSON_IsString(f))
        snprintf(o->finish, sizeof o->finish, "%s", f->valuestring);
}

static void add_usage(http_outcome *o, const cJSON *j)
{
    double v = jnum(cJSON_GetObjectItemCaseSensitive(j, "usage"), "completion_tokens", NULL);
    if (v >= 0)
        o->completion_tokens = (int)v;
}

/* Reads an SSE stream: each "data: {...}" line's text appended; "data: [DONE]" ends it.
 * stop_after_text > 0: returns once that many text pieces came (o->done stays 0). */
static int read_sse(hconn *h, http_outcome *o, double t0, int stop_after_text, int *pieces)
{
    static __thread char line[65536];
    size_t ll = 0;
    char buf[4096];
    for (;;) {
        if (o->stop && *o->stop)
            return 0;
        int n = h_body(h, buf, sizeof buf, o->stop ? 50 : EVENT_WAIT_MS);
        if (n == -ETIMEDOUT && o->stop)
            continue;
        if (n < 0)
            return n;
        if (n == 0)
            return o->done ? 0 : -EPROTO;
        for (int i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (ll + 1 < sizeof line)
                    line[ll++] = buf[i];
                continue;
            }
            line[ll] = 0;
            ll = 0;
            if (strncmp(line, "data: ", 6))
                continue;
            if (!strcmp(line + 6, "[DONE]")) {
                o->done = 1;
                continue;
            }
            cJSON *j = cJSON_Parse(line + 6);
            if (!j) {
                snprintf(o->err, sizeof o->err, "a chunk that is not JSON: %.80s", line + 6);
                return -EPROTO;
            }
            const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
            size_t before = o->text_len;
            if (ch)
                add_text(o, ch);
            add_usage(o, j);
            if (cJSON_GetObjectItemCaseSensitive(j, "error"))
                snprintf(o->err, sizeof o->err, "error chunk: %.150s", line + 6);
            cJSON_Delete(j);
            if (o->text_len > before) {
                if (o->ttft_ms < 0)
                    o->ttft_ms = (now_s() - t0) * 1e3;
                ++*pieces;
            }
        }
        if (stop_after_text > 0 && *pieces >= stop_after_text)
            return 0;
    }
}

enum hkind { H_GREEDY, H_STREAM, H_SAMPLED, H_DISCONNECT, H_STALL, H_RESET, H_KINDS };
static const char *const hkind_name[H_KINDS] = { "greedy",       "greedy-stream", "sampled-stream",
                                                 "disconnected", "stalled",       "reset" };

static char *completion_body(const soak *s, int p, int kind, unsigned seed)
{
    cJSON *o = cJSON_CreateObject();
    const char *base = strrchr(s->model, '/'); /* mq-openai serves mqd's model under its folder's name */
    cJSON_AddStringToObject(o, "model", base ? base + 1 : s->model);
    cJSON_AddItemToObject(o, "prompt", cJSON_CreateString(s->prompt[p]));
    int max_tokens = kind == H_STALL ? 600 : kind == H_DISCONNECT || kind == H_RESET ? 200 : s->gen;
    cJSON_AddNumberToObject(o, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(o, "temperature", kind == H_SAMPLED ? 0.8 : 0);
    if (kind == H_SAMPLED)
        cJSON_AddNumberToObject(o, "seed", seed % 1000000);
    if (kind != H_GREEDY)
        cJSON_AddTrueToObject(o, "stream");
    char *js = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return js;
}

/* The HTTP answer equals the prompt's solo libmq answer over the text both produced (a
 * longer answer continues the shorter: greedy is prefix-consistent), and neither stopped
 * (end of sequence) where the other went on. */
static int http_same_as_ref(const soak *s, int p, const http_outcome *o)
{
    const ref_answer *r = &s->ref[p];
    size_t n = o->text_len < r->text_len ? o->text_len : r->text_len;
    if (memcmp(o->text, r->text, n))
        return 0;
    if (!strcmp(o->finish, "stop") && o->text_len < r->text_len)
        return 0;
    return !(r->end_reason == MQ_END_STOPPED && o->text_len > r->text_len);
}

/* text with control bytes as \xNN, cut to fit out (for one line of output) */
static const char *printable(const char *text, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < cap; i++) {
        unsigned char ch = (unsigned char)text[i];
        o += (size_t)snprintf(out + o, cap - o, ch < 32 || ch == '"' ? "\\x%02x" : "%c", ch);
    }
    out[o] = 0;
    return out;
}

static void http_request(client *cl, int kind, int p)
{
    soak *s = cl->s;
    tally *t = &cl->t;
    char *body = completion_body(s, p, kind, rnd(&cl->rng));
    static __thread hconn h;
    static __thread http_outcome o;
    memset(&o, 0, sizeof o);
    o.ttft_ms = -1;
    double t0 = now_s();
    int rc = h_post(&h, s->http_port, "/v1/completions", body, 0);
    free(body);
    int pieces = 0;
    if (!rc && h.status != 200)
        rc = -EPROTO;
    if (!rc && kind == H_GREEDY) {
        static __thread char all[65536];
        size_t n = 0;
        int k;
        while ((k = h_body(&h, all + n, sizeof all - 1 - n, EVENT_WAIT_MS)) > 0)
            n += (size_t)k;
        all[n] = 0;
        cJSON *j = k == 0 ? cJSON_Parse(all) : NULL;
        const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
        if (ch) {
            add_text(&o, ch);
            add_usage(&o, j);
            o.done = 1;
            o.ttft_ms = (now_s() - t0) * 1e3; /* the whole answer: not a TTFT, not counted */
        } else {
            rc = k < 0 ? k : -EPROTO;
        }
        cJSON_Delete(j);
        o.ttft_ms = -1;
    } else if (!rc) {
        int first = kind == H_DISCONNECT || kind == H_RESET ? 1 + (int)(rnd(&cl->rng) % 8) : kind == H_STALL ? 5 : 0;
        rc = read_sse(&h, &o, t0, first, &pieces);
        if (!rc && !o.done && (kind == H_DISCONNECT || kind == H_RESET)) {
            if (kind == H_RESET) { /* like a killed client: RST, not FIN */
                struct linger lg = { 1, 0 };
                setsockopt(h.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            }
            close(h.fd);
            h.fd = -1;
            if (o.ttft_ms >= 0)
                note_ttft(t, o.ttft_ms);
            return;
        }
        if (!rc && !o.done && kind == H_STALL) {
            usleep((1500 + rnd(&cl->rng) % 1500) * 1000);
            rc = read_sse(&h, &o, t0, 0, &pieces);
        }
    }
    if (h.fd >= 0)
        close(h.fd);
    if (o.ttft_ms >= 0)
        note_ttft(t, o.ttft_ms);
    t->tokens += o.completion_tokens;
    if (rc || !o.done || o.err[0] || (strcmp(o.finish, "length") && strcmp(o.finish, "stop"))) {
        lose(t, "HTTP client %d: %s request on prompt %d: %s (status %d, finish \"%s\"%s%s)", cl->idx, hkind_name[kind],
             p, rc ? strerror(-rc) : "incomplete", h.status, o.finish, o.err[0] ? ", " : "", o.err);
        return;
    }
    if (kind != H_SAMPLED) {
        t->compared++;
        if (!http_same_as_ref(s, p, &o) && t->mixed++ == 0) {
            char a[200], b[200];
            snprintf(t->first_mixed, sizeof t->first_mixed, "prompt %d, finish %s: \"%s\", alone: \"%s\"", p, o.finish,
                     printable(o.text, o.text_len, a, sizeof a),
                     printable(s->ref[p].text, s->ref[p].text_len, b, sizeof b));
        }
    }
}

static void *http_client_main(void *arg)
{
    client *cl = arg;
    for (int k = 0; k < cl->requests; k++) {
        int p = (int)(rnd(&cl->rng) % NPROMPT);
        unsigned r = rnd(&cl->rng) % 100;
        int kind = r < 40   ? H_GREEDY
                   : r < 60 ? H_STREAM
                   : r < 80 ? H_SAMPLED
                   : r < 90 ? H_DISCONNECT
                   : r < 95 ? H_STALL
                            : H_RESET;
        cl->t.requests[kind]++;
        http_request(cl, kind, p);
    }
    return NULL;
}

/* ---- slow readers' cost to the others ----------------------------------------------- */
typedef struct slow_arg {
    soak *s;
    int prompt, max_tokens, stall; /* stall: do not read until `release` */
    int other;                     /* a long answer beside the measured: dropped at `release` */
    volatile int *release;
    double per_token_s;
    int tokens, ok;
} slow_arg;

static void *slow_client(void *arg)
{
    slow_arg *a = arg;
    mq_conn *c;
    if (mq_connect(a->s->client_sock, &c))
        return NULL;
    mq_params mp;
    params(&mp, 1, a->max_tokens, 0);
    uint64_t sess, req;
    static __thread outcome o;
    memset(&o, 0, sizeof o);
    double t0 = now_s();
    if (!send_prompt(a->s, c, a->prompt, &mp, &sess, &req)) {
        if (a->stall)
            while (!*a->release)
                usleep(10000);
        if (a->other) { /* read (or not) until the measured ones are done, then hang up */
            mq_event ev;
            int rc;
            while (!*a->release && ((rc = mq_next_event(c, &ev, 50)) == 0 || rc == -ETIMEDOUT))
                ;
        } else if (!read_events(c, req, t0, &o, 0) && o.done && o.n > 1) {
            a->per_token_s = (o.t_last - o.t_first) / (o.n - 1);
            a->tokens = o.n;
            a->ok = 1;
        }
    }
    mq_disconnect(c);
    return NULL;
}

/* Seconds per token of 8 measured clients beside 4 long answers (stall: not read, until
 * the measured ones are done; then both kinds hang up, which cancels them); fn:
 * slow_client (libmq) or slow_http_client (mq-openai). */
static double measured_round(soak *s, int stall, void *(*fn)(void *))
{
    enum { MEASURED = 8, OTHERS = 4 };
    volatile int release = 0;
    slow_arg m[MEASURED], o[OTHERS];
    pthread_t tm[MEASURED], to[OTHERS];
    for (int i = 0; i < OTHERS; i++) {
        o[i] =
            (slow_arg){ .s = s, .prompt = 2 + i, .max_tokens = 1200, .stall = stall, .other = 1, .release = &release };
        pthread_create(&to[i], NULL, fn, &o[i]);
    }
    usleep(300 * 1000); /* the long answers are decoding */
    for (int i = 0; i < MEASURED; i++) {
        m[i] = (slow_arg){ .s = s, .prompt = i, .max_tokens = MEASURED_TOKENS, .release = &release };
        pthread_create(&tm[i], NULL, fn, &m[i]);
    }
    double sum = 0;
    int n = 0;
    for (int i = 0; i < MEASURED; i++) {
        pthread_join(tm[i], NULL);
        if (m[i].ok) {
            sum += m[i].per_token_s;
            n++;
        }
    }
    release = 1;
    for (int i = 0; i < OTHERS; i++)
        pthread_join(to[i], NULL);
    return n == MEASURED ? sum / n : -1;
}

/* The same through mq-openai: streamed greedy completions; a stalled one reads nothing
 * (a 4 KiB receive buffer: its TCP window closes after a few dozen tokens) until the
 * measured ones are done. */
static void *slow_http_client(void *arg)
{
    slow_arg *a = arg;
    static __thread hconn h;
    static __thread http_outcome o;
    memset(&o, 0, sizeof o);
    o.ttft_ms = -1;
    cJSON *b = cJSON_CreateObject();
    const char *base = strrchr(a->s->model, '/');
    cJSON_AddStringToObject(b, "model", base ? base + 1 : a->s->model);
    cJSON_AddItemToObject(b, "prompt", cJSON_CreateString(a->s->prompt[a->prompt]));
    cJSON_AddNumberToObject(b, "max_tokens", a->max_tokens);
    cJSON_AddNumberToObject(b, "temperature", 0);
    cJSON_AddTrueToObject(b, "stream");
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    double t0 = now_s();
    int pieces = 0;
    int rc = h_post(&h, a->s->http_port, "/v1/completions", body, a->stall ? 4096 : 0);
    free(body);
    if (!rc && h.status == 200) {
        if (a->stall)
            while (!*a->release)
                usleep(10000);
        if (a->other)
            o.stop = a->release; /* then the socket is closed: mq-openai cancels */
        rc = read_sse(&h, &o, t0, 0, &pieces);
        double t_end = now_s();
        if (!rc && o.done && pieces > 1 && o.ttft_ms >= 0) {
            a->per_token_s = (t_end - (t0 + o.ttft_ms / 1e3)) / (pieces - 1);
            a->tokens = pieces;
            a->ok = 1;
        }
    }
    if (h.fd >= 0)
        close(h.fd);
    return NULL;
}

/* ---- main -------------------------------------------------------------------------- */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, long n, double q)
{
    if (n == 0)
        return -1;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    long i = (long)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* Prints name: the slow readers' slowdown, the median over SLOW_PAIRS pairs of rounds
 * (one with the long answers read, one with them stalled, the order alternating) of the
 * pair's ratio, so a burst of other work on a shared machine moves one pair, not the
 * figure; 1 when it could not be measured or misses SLOWDOWN_BOUND. */
static int slowdown_line(soak *s, const char *name, void *(*fn)(void *))
{
    double ratio[SLOW_PAIRS], fast = 0, slow = 0;
    char each[SLOW_PAIRS * 8 + 1] = "";
    int ok = 1;
    for (int r = 0; r < SLOW_PAIRS; r++) {
        double a, b;
        if (r % 2 == 0) {
            a = measured_round(s, 0, fn);
            b = measured_round(s, 1, fn);
        } else {
            b = measured_round(s, 1, fn);
            a = measured_round(s, 0, fn);
        }
        ok &= a > 0 && b > 0;
        ratio[r] = a > 0 ? b / a : -1;
        fast += a;
        slow += b;
        snprintf(each + strlen(each), sizeof each - strlen(each), "%s%.2f", r ? " " : "", ratio[r]);
    }
    qsort(ratio, SLOW_PAIRS, sizeof ratio[0], cmp_double);
    double slowdown = ok ? (ratio[(SLOW_PAIRS - 1) / 2] + ratio[SLOW_PAIRS / 2]) / 2 : -1;
    printf("%s: %.3f (median of %d pairs: %s; mean %.2f vs %.2f ms per token)\n", name, slowdown, SLOW_PAIRS, each,
           slow / SLOW_PAIRS * 1e3, fast / SLOW_PAIRS * 1e3);
    fflush(stdout);
    return !(slowdown > 0 && slowdown <= SLOWDOWN_BOUND);
}

/* Waits until mqd has no session left (clients gone); the sessions still there. */
static int settle(soak *s)
{
    int left = -1;
    for (int i = 0; i < 200; i++) {
        cJSON *r = mqctl_json(s, "stats");
        left = (int)jnum(r, "sessions", NULL);
        cJSON_Delete(r);
        if (left == 0)
            break;
        usleep(100 * 1000);
    }
    return left;
}

static void usage(void)
{
    fprintf(stderr, "usage: mq_soak --mqd PATH --mqctl PATH --model DIR [--openai PATH] [--clients N] [--requests N] "
                    "[--http-requests N] [--gen N] [--seed N] [--mqd-arg ARG]...\n");
    exit(2);
}

static void parse_args(soak *s, int argc, char **argv)
{
    static const struct option opts[] = {
        { "mqd", 1, 0, 'd' },           { "mqctl", 1, 0, 'c' },   { "model", 1, 0, 'm' }, { "clients", 1, 0, 'n' },
        { "requests", 1, 0, 'r' },      { "gen", 1, 0, 'g' },     { "seed", 1, 0, 's' },  { "openai", 1, 0, 'o' },
        { "http-requests", 1, 0, 'h' }, { "mqd-arg", 1, 0, 'a' }, { 0, 0, 0, 0 }
    };
    s->clients = 64;
    s->requests = 100;
    s->gen = 24;
    s->seed = 1;
    s->http_requests = -1;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': s->mqd = optarg; break;
        case 'c': s->mqctl = optarg; break;
        case 'm': s->model = optarg; break;
        case 'n': s->clients = atoi(optarg); break;
        case 'r': s->requests = atoi(optarg); break;
        case 'g': s->gen = atoi(optarg); break;
        case 's': s->seed = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'o': s->openai = optarg; break;
        case 'h': s->http_requests = atoi(optarg); break;
        case 'a':
            if (s->n_mqd_args < 32)
                s->mqd_args[s->n_mqd_args++] = optarg;
            break;
        default: usage();
        }
    }
    if (s->http_requests < 0)
        s->http_requests = s->requests;
    if (optind != argc || !s->mqd || !s->mqctl || !s->model || s->clients < 16 || s->requests < 1 || s->gen < 1 ||
        s->gen > MAX_GEN || s->http_requests < 1)
        usage();
}

/* What mqd holds after the clients have gone: KV blocks in use or reserved (leaked). */
static long kv_left(soak *s, int *sessions)
{
    *sessions = settle(s);
    cJSON *st = mqctl_json(s, "stats");
    double used = jnum(st, "kv", "used"), reserved = jnum(st, "kv", "reserved");
    cJSON_Delete(st);
    return used < 0 ? -1 : (long)(used + (reserved > 0 ? reserved : 0));
}

static long total(const tally *t)
{
    long n = 0;
    for (int k = 0; k < K_KINDS; k++)
        n += t->requests[k];
    return n;
}

/* The request, loss, mixing and TTFT lines of one half (prefix "soak" or "soak_http"). */
static void print_half(const char *pre, tally *t, const char *const *names, double secs, long leaked, int sessions)
{
    printf("%s_requests: %ld (", pre, total(t));
    for (int k = 0; k < K_KINDS; k++)
        printf("%s%s %ld", k ? ", " : "", names[k], t->requests[k]);
    printf("; %ld tokens in %.0f s)\n", t->tokens, secs);
    printf("%s_lost: %ld%s%s\n", pre, t->lost, t->lost ? " — first: " : "", t->first_loss);
    printf("%s_mixed: %ld (of %ld greedy answers compared with their prompt alone)%s%s\n", pre, t->mixed, t->compared,
           t->mixed ? " — first: " : "", t->first_mixed);
    printf("%s_kv_blocks_leaked: %ld (sessions left %d)\n", pre, leaked, sessions);
    double p99 = percentile(t->ttft_ms, t->n_ttft, 0.99), p50 = percentile(t->ttft_ms, t->n_ttft, 0.50);
    printf("%s_p99_ttft_ms: %.1f (p50 %.1f, %ld streamed requests with a first token)\n", pre, p99, p50, t->n_ttft);
    fflush(stdout);
}

/* GET /health until 200 (mq-openai has reached mqd): 1, or 0 after timeout_s. */
static int http_healthy(const soak *s, int timeout_s)
{
    for (double t0 = now_s(); now_s() - t0 < timeout_s; usleep(100 * 1000)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)s->http_port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", resp[64] = "";
        int ok = fd >= 0 && !connect(fd, (struct sockaddr *)&sa, sizeof sa) &&
                 send(fd, req, sizeof req - 1, MSG_NOSIGNAL) > 0 && recv(fd, resp, sizeof resp - 1, 0) > 12 &&
                 !strncmp(resp + 9, "200", 3);
        if (fd >= 0)
            close(fd);
        if (ok)
            return 1;
    }
    return 0;
}

static void stop(pid_t pid, int *status)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    waitpid(pid, status, 0);
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "--child"))
        return child_main(argv + 2);
    static soak s;
    parse_args(&s, argc, argv);
    ssize_t n = readlink("/proc/self/exe", s.self, sizeof s.self - 1);
    s.self[n > 0 ? n : 0] = 0;
    signal(SIGPIPE, SIG_IGN);
    const char *shared = getenv("MQ_SHARED") ? getenv("MQ_SHARED") : "../shared";
    static char corpus[4200];
    snprintf(corpus, sizeof corpus, "%s/corpus/dev.txt", shared);
    setenv("MQ_SOAK_CORPUS", corpus, 1);
    int rc = make_prompts(&s, corpus);
    if (rc) {
        fprintf(stderr, "mq_soak: %s: %s\n", corpus, strerror(-rc));
        return 1;
    }
    double t_start = now_s();
    if ((rc = start_mqd(&s))) {
        if (s.mqd_pid > 0)
            kill(s.mqd_pid, SIGKILL);
        return 1;
    }
    const char *base = strrchr(s.model, '/');
    printf("soak_model: %s\n", base ? base + 1 : s.model);
    printf("soak_clients: %d\n", s.clients);
    fflush(stdout);
    /* 1. the references, each alone */
    unsigned pmin = ~0u, pmax = 0;
    for (int p = 0; p < NPROMPT; p++) {
        if ((rc = solo(&s, p, &s.ref[p]))) {
            fprintf(stderr, "mq_soak: the solo answer of prompt %d failed: %s\n", p, mq_strerror(rc));
            kill(s.mqd_pid, SIGKILL);
            return 1;
        }
        pmin = s.ref[p].prompt_tokens < pmin ? s.ref[p].prompt_tokens : pmin;
        pmax = s.ref[p].prompt_tokens > pmax ? s.ref[p].prompt_tokens : pmax;
    }
    printf("soak_prompt_tokens: %u..%u (%d prompts)\n", pmin, pmax, NPROMPT);
    /* 2. warm-up: a tenth of each half's run (at least 2 requests per client), the same
     * mix, so mqd's allocator reaches its working set for 64 clients before the baseline
     * (2 requests per client did not: the RSS then rose ~14 MB once, the same after 1280
     * requests as after 12800) */
    tally warm = { 0 }, hwarm = { 0 };
    int oai_up = 0;
    run_clients(&s, s.requests / 10 > 2 ? s.requests / 10 : 2, &warm, client_main);
    if (s.openai) {
        oai_up = !start_openai(&s) && http_healthy(&s, 60);
        if (oai_up)
            run_clients(&s, s.http_requests / 10 > 2 ? s.http_requests / 10 : 2, &hwarm, http_client_main);
    }
    int sessions = 0;
    long leaked = kv_left(&s, &sessions);
    double kv_bytes = kv_bytes_of(&s);
    long rss0 = proc_kb(s.mqd_pid, "VmRSS"), kv0 = kv_resident_kb(s.mqd_pid, kv_bytes);
    long anon0 = proc_kb(s.mqd_pid, "RssAnon"), shmem0 = proc_kb(s.mqd_pid, "RssShmem");
    char trace[256]; /* mqd's anonymous RSS after each phase: a plateau is the allocator's
                        high-water mark, a climb with the request count a leak */
    int tl = snprintf(trace, sizeof trace, "warm-up %ld", anon0);
    /* 3. the main run through libmq */
    double t0 = now_s();
    tally t = { 0 };
    rc = run_clients(&s, s.requests, &t, client_main);
    double main_s = now_s() - t0;
    leaked = kv_left(&s, &sessions);
    print_half("soak", &t, kind_name, main_s, leaked, sessions);
    tl += snprintf(trace + tl, sizeof trace - (size_t)tl, ", libmq run %ld", proc_kb(s.mqd_pid, "RssAnon"));
    int bad = rc || t.lost || warm.lost || t.mixed || leaked || sessions;
    /* 4. slow readers */
    bad |= slowdown_line(&s, "soak_slow_reader_slowdown", slow_client);
    tl += snprintf(trace + tl, sizeof trace - (size_t)tl, ", slow readers %ld", proc_kb(s.mqd_pid, "RssAnon"));
    /* 5. the HTTP half: the same through mq-openai */
    int oai_status = 0;
    if (s.openai) {
        tally ht = { 0 };
        if (!oai_up || hwarm.lost) {
            fprintf(stderr, "mq_soak: %s; mq-openai's log: %s\n",
                    oai_up ? "the HTTP warm-up lost requests" : "mq-openai did not answer /health with 200", s.oai_log);
            bad = 1;
        } else {
            t0 = now_s();
            rc = run_clients(&s, s.http_requests, &ht, http_client_main);
            double http_s = now_s() - t0;
            long hleaked = kv_left(&s, &sessions);
            print_half("soak_http", &ht, hkind_name, http_s, hleaked, sessions);
            tl += snprintf(trace + tl, sizeof trace - (size_t)tl, ", HTTP run %ld", proc_kb(s.mqd_pid, "RssAnon"));
            bad |= rc || ht.lost || ht.mixed || hleaked;
            bad |= slowdown_line(&s, "soak_http_slow_reader_slowdown", slow_http_client);
        }
        stop(s.oai_pid, &oai_status);
        bad |= !WIFEXITED(oai_status) || WEXITSTATUS(oai_status) != 0;
    }
    /* 6. what is left behind: mqd's memory after everything */
    leaked = kv_left(&s, &sessions);
    long rss1 = proc_kb(s.mqd_pid, "VmRSS"), kv1 = kv_resident_kb(s.mqd_pid, kv_bytes);
    long anon1 = proc_kb(s.mqd_pid, "RssAnon"), shmem1 = proc_kb(s.mqd_pid, "RssShmem");
    double growth = rss0 > kv0 ? 100.0 * ((rss1 - kv1) - (rss0 - kv0)) / (rss0 - kv0) : -1;
    printf("soak_rss_growth_pct: %.2f (VmRSS less the KV segment's resident pages: %ld kB after warm-up, %ld kB "
           "after every phase; VmRSS %ld -> %ld kB: anonymous %ld -> %ld, shared %ld -> %ld, of which KV %ld -> "
           "%ld)\n",
           growth, rss0 - kv0, rss1 - kv1, rss0, rss1, anon0, anon1, shmem0, shmem1, kv0, kv1);
    printf("soak_rss_anon_kb: %s, the end %ld\n", trace, anon1);
    printf("soak_kv_blocks_leaked: %ld (after every phase; sessions left %d)\n", leaked, sessions);
    cJSON *status = mqctl_json(&s, "status");
    double refused = jnum(cJSON_GetObjectItemCaseSensitive(status, "seccomp"), "refused", NULL);
    cJSON_Delete(status);
    printf("soak_seccomp_refused: %.0f (system calls outside mqd's allow-list)\n", refused);
    bad |= refused > 0;
    printf("soak_seconds: %.0f\n", now_s() - t_start);
    fflush(stdout);
    int wst = 0;
    stop(s.mqd_pid, &wst);
    bad |= leaked != 0 || sessions != 0 || !(growth >= 0 && growth <= RSS_BOUND_PCT) || !WIFEXITED(wst) ||
           WEXITSTATUS(wst) != 0;
    if (bad)
        fprintf(stderr,
                "mq_soak: FAILED (a figure out of bounds, or an exit status: mqd %d, mq-openai %d); logs: %s%s%s\n",
                wst, oai_status, s.log, s.openai ? ", " : "", s.openai ? s.oai_log : "");
    return bad ? 1 : 0;
}
