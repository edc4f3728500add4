/* tests/bench/bench_http.c — `make bench-http`: mq-openai against libmq for the same
 * requests, and an agent replay over HTTP.
 *
 * 1. 32 concurrent streaming requests (answer turns of the agent conversations, greedy,
 *    64 tokens), one round through each side, rounds alternating. Both sides make mqd do
 *    the same work for a request: open a raw session, SUBMIT the same conversation JSON
 *    (mq_send_chat), stream 64 tokens, close the session.
 *    - libmq: one connection per stream, made before the clock starts (mq-openai keeps its
 *      pool connections too); the clock runs from mq_open_session to the first token
 *      event with text. The payload and parameters are exactly what mq-openai derives
 *      from the HTTP body (oai_parse_chat, oai_request_default_think, oai_request_params).
 *    - HTTP: one TCP connection per stream, made and served once (GET /health, kept
 *      alive: mq-openai has accepted it and its thread waits, as a client's pooled
 *      connection does) before the clock starts; the clock runs from writing the POST to
 *      the first SSE chunk with generated content. The POST goes out in one write (head
 *      and body), as curl and Node's http client send a small request and as libmq sends
 *      a SUBMIT in one message. mq-openai
 *      parses the body, takes a pool connection, opens the session and sends the same
 *      SUBMIT; per token it parses the output for tool calls and writes an SSE chunk.
 *      The client is a raw socket that looks for the first content chunk with a string
 *      search and parses JSON only for the final usage chunk, so neither a client
 *      library's nor the bench's own per-chunk parsing is counted against mq-openai.
 *    Warm KV for both: every request ran once before. Per round: TTFT p50, and the p50 of
 *    TTFT beyond mqd's own TTFT (mqd's TTFT counts from the SUBMIT's arrival, so what is
 *    left is the transport: libmq's socket and rings, or HTTP + mq-openai + libmq); tokens
 *    per second of the whole round. Prints http_ttft_overhead_ms_p50 (median over rounds
 *    of that p50, HTTP minus libmq), http_tokens_per_s_vs_libmq (median of the ratios),
 *    and http_ttft_overhead_ms_solo_p50 (the same requests one at a time, HTTP - libmq
 *    TTFT).
 * 2. Agent replay: 8 conversations turn by turn over HTTP, concurrently, each pinned by
 *    X-Session-Id; cached/prompt tokens from turn 2 on (http_replay_cached_ratio), the
 *    tokens the session held but could not reuse per turn (the Qwen3 empty-think trap:
 *    http_replay_lost_tokens_per_turn), and the same replay without a session id
 *    (prefix index only): in bf16 (http_replay_cached_ratio_stateless; the index shares
 *    whole blocks of a bf16 prompt) and in mixed, the default (..._stateless_mixed; whole
 *    chunks of the NVFP4 grid only). Each replay runs in a precision of its own or before
 *    the others of its precision: the index is kept per precision, so none warms another.
 * 3. Where the time goes: with MQD_PID and MQ_OPENAI_PID (serve.sh sets them), a comment
 *    line gives the CPU per generated token of the 32-stream rounds: mqd's in each side's
 *    rounds, mq-openai's, and this client's own threads per side. On 2 CPUs whatever the
 *    HTTP path spends per token is taken from mqd's decode threads.
 * Usage: bench_http --url http://127.0.0.1:PORT --socket CLIENT_SOCK --dir golden/mq-agent-45m
 *        [--side http|libmq --rounds N]  (diagnosis: only that side's 32-stream rounds, no
 *        figures; for perf stat -p / perf record on mqd or mq-openai while they run)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "engine/chat_template.h"
#include "libclient/mq.h"
#include "mq-openai/request.h"
#include "tests/harness.h"

#define N_STREAMS  32
#define MAX_TOKENS 64
#define ROUNDS     9 /* the medians settle on a machine that others use too */
#define N_REPLAY   8

static int port;
static const char *sock_path;
static cJSON *convs, *golden;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The OpenAI body of conversation `conv` up to `turn` (tool-call arguments as the strings
 * Python's json.dumps writes, as an agent sends back what the model wrote). */
static char *body_of(const cJSON *conv, int turn, int stream, int max_tokens)
{
    cJSON *b = cJSON_CreateObject();
    cJSON *ms = cJSON_AddArrayToObject(b, "messages");
    for (int i = 0; i < turn; i++) {
        cJSON *m = cJSON_Duplicate(cJSON_GetArrayItem(cJSON_GetObjectItem(conv, "messages"), i), 1);
        cJSON *tc;
        cJSON_ArrayForEach(tc, cJSON_GetObjectItem(m, "tool_calls"))
        {
            cJSON *fn = cJSON_GetObjectItem(tc, "function");
            cJSON *a = cJSON_GetObjectItem(fn, "arguments");
            if (a && !cJSON_IsString(a)) {
                char *s = mq_chat_json_dumps(a);
                cJSON_ReplaceItemInObject(fn, "arguments", cJSON_CreateString(s));
                free(s);
            }
        }
        cJSON_AddItemToArray(ms, m);
    }
    cJSON_AddItemToObject(b, "tools", cJSON_Duplicate(cJSON_GetObjectItem(conv, "tools"), 1));
    cJSON_AddNumberToObject(b, "temperature", 0);
    cJSON_AddNumberToObject(b, "max_tokens", max_tokens);
    cJSON_AddBoolToObject(b, "stream", stream);
    if (stream)
        cJSON_AddBoolToObject(cJSON_AddObjectToObject(b, "stream_options"), "include_usage", 1);
    cJSON_AddBoolToObject(cJSON_AddObjectToObject(b, "chat_template_kwargs"), "enable_thinking", 0);
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

/* ---- a minimal HTTP/1.1 client ------------------------------------------------------------- */

static int http_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Makes fd a connection mq-openai is serving, as libmq's mq_connect finishes its HELLO
 * before the clock starts: a GET /health on it (kept alive) is answered in full, so the
 * server has accepted it and its connection thread waits for the next request. */
static int http_warm(int fd)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1))
        return -EIO;
    char buf[2048];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            return -EIO;
        len += (size_t)n;
        buf[len] = 0;
        char *e = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (e && cl && cl < e && len >= (size_t)(e + 4 - buf) + strtoul(cl + 17, NULL, 10))
            return atoi(buf + 9) == 200 ? 0 : -EPROTO;
        if (len == sizeof buf - 1)
            return -EPROTO;
    }
}

typedef struct http_result {
    int status;
    double server_ttft; /* mqd's own TTFT (the "mq" extension), seconds */
    double ttft;        /* seconds to the first chunk with generated text */
    int tokens;         /* completion_tokens */
    int prompt, cached;
    char *body; /* non-streaming */
} http_result;

/* POSTs body on fd (opened before t0) and reads the whole answer; stream: SSE events. */
static int http_post(int fd, const char *body, const char *session, int stream, double t0, http_result *r)
{
    memset(r, 0, sizeof *r);
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Connection: close\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                      strlen(body), session ? "X-Session-Id: " : "", session ? session : "", session ? "\r\n" : "");
    /* one write, as libmq sends a SUBMIT in one message: the server wakes once for it */
    struct iovec iov[2] = { { head, (size_t)hl }, { (void *)body, strlen(body) } };
    if (writev(fd, iov, 2) != (ssize_t)(iov[0].iov_len + iov[1].iov_len))
        return -EIO;
    size_t cap = 1 << 16, len = 0, dec = 0, chunk_left = 0, crlf_left = 0;
    char *buf = malloc(cap);
    char *out = malloc(cap); /* de-chunked body */
    size_t olen = 0, ocap = cap, scan = 0;
    int in_body = 0, chunked = 0, done = 0;
    while (!done) {
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (!in_body) {
            char *e = memmem(buf, len, "\r\n\r\n", 4);
            if (!e)
                continue;
            r->status = atoi(buf + 9);
            chunked = memmem(buf, (size_t)(e - buf), "chunked", 7) != NULL;
            dec = (size_t)(e - buf) + 4;
            in_body = 1;
        }
        for (;;) { /* move body bytes from buf[dec..len) to out, without the chunk framing */
            if (!chunked) {
                size_t k = len - dec;
                if (olen + k + 1 > ocap)
                    out = realloc(out, ocap = 2 * (olen + k + 1));
                memcpy(out + olen, buf + dec, k);
                olen += k;
                dec = len;
                break;
            }
            if (crlf_left) { /* the CRLF after a chunk's data */
                size_t k = len - dec < crlf_left ? len - dec : crlf_left;
                dec += k;
                crlf_left -= k;
                if (crlf_left)
                    break;
            }
            if (chunk_left == 0) {
                char *e = memmem(buf + dec, len - dec, "\r\n", 2);
                if (!e)
                    break;
                chunk_left = strtoul(buf + dec, NULL, 16);
                dec = (size_t)(e - buf) + 2;
                if (chunk_left == 0) {
                    done = 1;
                    break;
                }
            }
            size_t k = len - dec < chunk_left ? len - dec : chunk_left;
            if (k == 0)
                break;
            if (olen + k + 1 > ocap)
                out = realloc(out, ocap = 2 * (olen + k + 1));
            memcpy(out + olen, buf + dec, k);
            olen += k;
            dec += k;
            chunk_left -= k;
            if (chunk_left == 0)
                crlf_left = 2;
        }
        out[olen] = 0;
        while (stream) { /* SSE events, each "data: ...\n\n" */
            char *e = strstr(out + scan, "\n\n");
            if (!e)
                break;
            *e = 0;
            char *d = strstr(out + scan, "data: ");
            /* the first chunk with generated text: mq-openai writes "content":"..." (or a
             * tool call's "arguments") into a delta; role and finish chunks have neither */
            if (d && !r->ttft &&
                ((strstr(d, "\"content\":\"") && !strstr(d, "\"content\":\"\"")) || strstr(d, "\"tool_calls\"")))
                r->ttft = now_s() - t0;
            if (d && strcmp(d + 6, "[DONE]") && strstr(d, "\"usage\"")) { /* only the usage chunk is parsed */
                cJSON *j = cJSON_Parse(d + 6);
                cJSON *u = cJSON_GetObjectItem(j, "usage");
                cJSON *mq = cJSON_GetObjectItem(j, "mq");
                if (cJSON_IsObject(mq))
                    r->server_ttft = cJSON_GetObjectItem(mq, "ttft_ms")->valuedouble / 1e3;
                if (cJSON_IsObject(u)) {
                    r->tokens = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
                    r->prompt = cJSON_GetObjectItem(u, "prompt_tokens")->valueint;
                    r->cached =
                        cJSON_GetObjectItem(cJSON_GetObjectItem(u, "prompt_tokens_details"), "cached_tokens")->valueint;
                }
                cJSON_Delete(j);
            }
            scan = (size_t)(e - out) + 2;
        }
    }
    free(buf);
    if (!stream) {
        r->body = out;
        cJSON *j = cJSON_Parse(out);
        cJSON *u = cJSON_GetObjectItem(j, "usage");
        if (cJSON_IsObject(u)) {
            r->tokens = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
            r->prompt = cJSON_GetObjectItem(u, "prompt_tokens")->valueint;
            r->cached = cJSON_GetObjectItem(cJSON_GetObjectItem(u, "prompt_tokens_details"), "cached_tokens")->valueint;
        }
        cJSON_Delete(j);
    } else
        free(out);
    return r->status == 200 ? 0 : -EPROTO;
}

/* ---- phase 1: 32 streams, libmq vs HTTP ---------------------------------------------------- */

typedef struct job {
    char *body;
    oai_request rq;
    pthread_barrier_t *go;
    int http;
    double ttft, server_ttft;
    int tokens;
    int err;
} job;

static void *run_libmq(job *j)
{
    mq_conn *c;
    uint64_t s = 0, req;
    if (mq_connect(sock_path, &c)) {
        j->err = 1;
        pthread_barrier_wait(j->go);
        return NULL;
    }
    mq_params p;
    mq_request_opts o;
    /* what mq-openai sends for this body (its max_tokens is given: no server default) */
    oai_request_params(&j->rq, MAX_TOKENS, &p, &o);
    pthread_barrier_wait(j->go);
    double t0 = now_s();
    if (mq_open_session(c, MQ_MODE_RAW, &s) || mq_send_chat(c, s, j->rq.payload, j->rq.payload_len, &p, &o, &req))
        j->err = 1;
    mq_event ev;
    while (!j->err && mq_next_event(c, &ev, 60000) == 0) {
        if (ev.type == MQ_EVENT_TOKEN && ev.text_len && !j->ttft)
            j->ttft = now_s() - t0;
        if (ev.type == MQ_EVENT_DONE) {
            j->tokens = (int)ev.stats.gen_tokens;
            j->server_ttft = ev.stats.ttft_us / 1e6;
            break;
        }
    }
    mq_close_session(c, s);
    mq_disconnect(c);
    return NULL;
}

static void *run_http(job *j)
{
    int fd = http_connect();
    if (fd >= 0 && http_warm(fd)) {
        close(fd);
        fd = -1;
    }
    pthread_barrier_wait(j->go);
    http_result r = { 0 };
    double t0 = now_s();
    if (fd < 0 || http_post(fd, j->body, NULL, 1, t0, &r))
        j->err = 1;
    j->ttft = r.ttft;
    j->server_ttft = r.server_ttft;
    j->tokens = r.tokens;
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void *job_main(void *arg)
{
    job *j = arg;
    return j->http ? run_http(j) : run_libmq(j);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* CPU time of the 32-stream rounds, per side (the figures' explanation: on 2 CPUs what the
 * HTTP path spends per token is taken from mqd). mqd's and mq-openai's pids come from
 * serve.sh (MQD_PID, MQ_OPENAI_PID); /proc/<pid>/stat counts exited threads too. */
typedef struct cpu_use {
    double mqd_ms, oai_ms, client_ms;
    long tokens;
} cpu_use;

static int mqd_pid, oai_pid;

static double proc_cpu_ms(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = pid > 0 ? fopen(path, "r") : NULL;
    if (!f)
        return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the fields after the command name */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) * 1e3 / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

/* One phase: all jobs at once; p50 TTFT (s), p50 of TTFT beyond mqd's own TTFT (the
 * transport's share, s) and tokens/s; its CPU time is added to *cpu (NULL: not counted). */
static int phase(job *jobs, int n, int http, double *p50, double *over50, double *tps, cpu_use *cpu)
{
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)n + 1);
    pthread_t th[N_STREAMS];
    for (int i = 0; i < n; i++) {
        jobs[i].http = http;
        jobs[i].go = &go;
        jobs[i].ttft = 0;
        jobs[i].tokens = 0;
        jobs[i].err = 0;
        pthread_create(&th[i], NULL, job_main, &jobs[i]);
    }
    pthread_barrier_wait(&go);
    double t0 = now_s();
    double c_mqd = proc_cpu_ms(mqd_pid), c_oai = proc_cpu_ms(oai_pid), c_self = self_cpu_ms();
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    if (cpu) {
        cpu->mqd_ms += proc_cpu_ms(mqd_pid) - c_mqd;
        cpu->oai_ms += proc_cpu_ms(oai_pid) - c_oai;
        cpu->client_ms += self_cpu_ms() - c_self;
    }
    pthread_barrier_destroy(&go);
    double t[N_STREAMS], o[N_STREAMS];
    int toks = 0, errs = 0;
    for (int i = 0; i < n; i++) {
        t[i] = jobs[i].ttft;
        o[i] = jobs[i].ttft - jobs[i].server_ttft;
        toks += jobs[i].tokens;
        errs += jobs[i].err;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_d);
    qsort(o, (size_t)n, sizeof o[0], cmp_d);
    *p50 = t[n / 2];
    *over50 = o[n / 2];
    *tps = toks / wall;
    if (cpu)
        cpu->tokens += toks;
    return errs;
}

/* ---- phase 2: agent replay --------------------------------------------------------------- */

typedef struct replay {
    int conv;
    int pinned;       /* 0 stateless, 1 X-Session-Id, 2 X-Session-Id + think_history as_generated */
    const char *mode; /* the request's precision */
    long prompt, cached, lost;
    int turns;
    int err;
} replay;

static void *replay_main(void *arg)
{
    replay *rp = arg;
    const char *mode = rp->mode;
    const char *think = rp->pinned == 2 ? ",\"think_history\":\"as_generated\"" : "";
    const cJSON *conv = cJSON_GetArrayItem(convs, rp->conv);
    char key[64];
    snprintf(key, sizeof key, "replay-%d-%d", rp->conv, rp->pinned);
    int prev_prompt = 0, prev_gen = 0, k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(golden, "cases"))
    {
        if (cJSON_GetObjectItem(c, "conv")->valueint != rp->conv)
            continue;
        char *body0 = body_of(conv, cJSON_GetObjectItem(c, "turn")->valueint, 0, 96);
        char *body = NULL;
        if (asprintf(&body, "%.*s,\"mq\":{\"mode\":\"%s\"%s}}", (int)strlen(body0) - 1, body0, mode, think) < 0)
            body = NULL;
        free(body0);
        int fd = http_connect();
        http_result r = { 0 };
        if (fd < 0 || http_post(fd, body, rp->pinned ? key : NULL, 0, now_s(), &r))
            rp->err++;
        if (fd >= 0)
            close(fd);
        free(body);
        free(r.body);
        if (k++ > 0) {
            rp->prompt += r.prompt;
            rp->cached += r.cached;
            rp->lost += prev_prompt + prev_gen - r.cached; /* what the session held, not reused */
            rp->turns++;
        }
        prev_prompt = r.prompt;
        prev_gen = r.tokens;
    }
    return NULL;
}

static void run_replay(int pinned, const char *mode, const int *ids, double *ratio, double *lost)
{
    replay rp[N_REPLAY];
    pthread_t th[N_REPLAY];
    for (int i = 0; i < N_REPLAY; i++) {
        rp[i] = (replay){ .conv = ids[i], .pinned = pinned, .mode = mode };
        pthread_create(&th[i], NULL, replay_main, &rp[i]);
    }
    long p = 0, c = 0, l = 0, t = 0, e = 0;
    for (int i = 0; i < N_REPLAY; i++) {
        pthread_join(th[i], NULL);
        p += rp[i].prompt;
        c += rp[i].cached;
        l += rp[i].lost;
        t += rp[i].turns;
        e += rp[i].err;
    }
    if (e)
        fprintf(stderr, "bench_http: %ld replay requests failed\n", e);
    *ratio = p ? (double)c / p : 0;
    *lost = t ? (double)l / t : 0;
}

/* The 1-minute load average, printed beside the figures: on a shared machine it says how
 * far to trust them (the two phases of a round run seconds apart). */
static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *dir = NULL, *side = NULL;
    int rounds = ROUNDS;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--url"))
            url = argv[i + 1];
        else if (!strcmp(argv[i], "--socket"))
            sock_path = argv[i + 1];
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--side")) /* diagnosis: only this side's 32-stream rounds */
            side = argv[i + 1];
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
    }
    const char *colon = url ? strrchr(url, ':') : NULL;
    if (!colon || !sock_path || !dir) {
        fprintf(stderr, "usage: bench_http --url http://127.0.0.1:PORT --socket CLIENT_SOCK --dir AGENT_GOLDEN_DIR\n");
        return 2;
    }
    port = atoi(colon + 1);
    mqd_pid = getenv("MQD_PID") ? atoi(getenv("MQD_PID")) : 0;
    oai_pid = getenv("MQ_OPENAI_PID") ? atoi(getenv("MQ_OPENAI_PID")) : 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/tasks.jsonl", dir);
    char *tasks = harness_read_file(path, NULL);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    char *gj = harness_read_file(path, NULL);
    if (!tasks || !gj) {
        fprintf(stderr, "bench_http: cannot read %s/tasks.jsonl and golden.json\n", dir);
        return 1;
    }
    convs = cJSON_CreateArray();
    for (char *line = strtok(tasks, "\n"); line; line = strtok(NULL, "\n"))
        cJSON_AddItemToArray(convs, cJSON_Parse(line));
    golden = cJSON_Parse(gj);

    /* replay: 8 conversations with the most assistant turns */
    int ids[N_REPLAY], turns[200] = { 0 }, n_conv = cJSON_GetArraySize(convs);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(golden, "cases")) turns[cJSON_GetObjectItem(c, "conv")->valueint]++;
    for (int i = 0; i < N_REPLAY; i++) {
        int best = -1;
        for (int k = 0; k < n_conv && k < 200; k++) {
            int used = 0;
            for (int q = 0; q < i; q++)
                used |= ids[q] == k;
            if (!used && (best < 0 || turns[k] > turns[best]))
                best = k;
        }
        ids[i] = best;
    }
    double rr = 0, rl = 0, sr = 0, sl = 0, gr = 0, gl = 0, mr = 0, ml = 0;
    if (!side) {
        run_replay(0, "mixed", ids, &mr, &ml); /* first: the pinned replay below is mixed too */
        run_replay(1, "mixed", ids, &rr, &rl);
        run_replay(0, "bf16", ids, &sr, &sl);
        run_replay(2, "fp4", ids, &gr, &gl);
    }

    /* 32 answer turns (text replies stream token by token) */
    job jobs[N_STREAMS];
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(golden, "cases"))
    {
        if (n == N_STREAMS || cJSON_IsTrue(cJSON_GetObjectItem(c, "is_call")))
            continue;
        job *j = &jobs[n];
        memset(j, 0, sizeof *j);
        j->body = body_of(cJSON_GetArrayItem(convs, cJSON_GetObjectItem(c, "conv")->valueint),
                          cJSON_GetObjectItem(c, "turn")->valueint, 1, MAX_TOKENS);
        oai_error e;
        /* mq-openai's payload: the parsed body, with its server default of think_history
         * (serve.sh runs it with the default, "template") */
        if (oai_parse_chat(j->body, strlen(j->body), &j->rq, &e) || oai_request_default_think(&j->rq, 0)) {
            fprintf(stderr, "bench_http: %s\n", e.message);
            return 1;
        }
        n++;
    }
    if (side) { /* diagnosis (perf stat -p on mqd and mq-openai): one side's rounds only */
        int http = !strcmp(side, "http"), errs = 0;
        double p50, o50, tps;
        for (int r = 0; r < rounds; r++) {
            errs += phase(jobs, n, http, &p50, &o50, &tps, NULL);
            printf("# %s round %d: TTFT p50 %.2f ms (beyond mqd's %.3f ms), tokens/s %.1f\n", side, r + 1, p50 * 1e3,
                   o50 * 1e3, tps);
        }
        return errs ? 1 : 0;
    }
    double load0 = loadavg();
    double p50, tps, hp50, htps, o50, ho50;
    int errs = phase(jobs, n, 1, &hp50, &ho50, &htps, NULL) + phase(jobs, n, 0, &p50, &o50, &tps, NULL); /* warm */
    double over[ROUNDS], ratio[ROUNDS];
    cpu_use cpu_mq = { 0 }, cpu_http = { 0 };
    for (int r = 0; r < ROUNDS; r++) {
        errs += phase(jobs, n, 0, &p50, &o50, &tps, &cpu_mq);
        errs += phase(jobs, n, 1, &hp50, &ho50, &htps, &cpu_http);
        over[r] = (ho50 - o50) * 1e3;
        ratio[r] = htps / tps;
        printf("# round %d: TTFT p50 libmq %.2f ms, HTTP %.2f ms (beyond mqd's own TTFT: libmq %.3f ms, HTTP %.3f ms); "
               "tokens/s libmq %.1f, HTTP %.1f\n",
               r + 1, p50 * 1e3, hp50 * 1e3, o50 * 1e3, ho50 * 1e3, tps, htps);
    }
    /* the same requests one at a time: the transport's own cost, without queueing noise */
    double solo[N_STREAMS];
    for (int i = 0; i < n; i++) {
        double l50, lo, lt, h50, ho, ht;
        errs += phase(&jobs[i], 1, 0, &l50, &lo, &lt, NULL);
        errs += phase(&jobs[i], 1, 1, &h50, &ho, &ht, NULL);
        solo[i] = (h50 - l50) * 1e3;
    }
    qsort(solo, (size_t)n, sizeof solo[0], cmp_d);
    if (errs)
        fprintf(stderr, "bench_http: %d requests failed\n", errs);
    qsort(over, ROUNDS, sizeof over[0], cmp_d);
    qsort(ratio, ROUNDS, sizeof ratio[0], cmp_d);

    printf("# load average (1 min) on %ld CPUs: %.2f before the 32-stream rounds, %.2f after\n",
           sysconf(_SC_NPROCESSORS_ONLN), load0, loadavg());
    if (mqd_pid && cpu_mq.tokens && cpu_http.tokens) /* us of CPU per generated token, 32-stream rounds */
        printf("# CPU per token (us): mqd %.0f (libmq rounds) %.0f (HTTP rounds); mq-openai %.1f; bench client "
               "%.1f (libmq) %.1f (HTTP)\n",
               cpu_mq.mqd_ms * 1e3 / cpu_mq.tokens, cpu_http.mqd_ms * 1e3 / cpu_http.tokens,
               cpu_http.oai_ms * 1e3 / cpu_http.tokens, cpu_mq.client_ms * 1e3 / cpu_mq.tokens,
               cpu_http.client_ms * 1e3 / cpu_http.tokens);
    printf("# replay: %d conversations (turns 2..): X-Session-Id: cached %.4f, %.1f held tokens lost per turn; "
           "with think_history as_generated: cached %.4f, %.1f lost; without a session: cached %.4f (bf16), "
           "%.4f (mixed)\n",
           N_REPLAY, rr, rl, gr, gl, sr, mr);
    printf("http_replay_cached_ratio_stateless: %.4f\n", sr);
    printf("http_replay_cached_ratio_stateless_mixed: %.4f\n", mr);
    printf("http_replay_cached_ratio_as_generated: %.4f\n", gr);
    printf("http_replay_lost_tokens_per_turn: %.1f\n", rl);
    printf("http_replay_lost_tokens_per_turn_as_generated: %.1f\n", gl);
    printf("http_ttft_overhead_ms_solo_p50: %.3f\n", solo[n / 2]);
    printf("http_ttft_overhead_ms_p50: %.3f\n", over[ROUNDS / 2]);
    printf("http_tokens_per_s_vs_libmq: %.3f\n", ratio[ROUNDS / 2]);
    printf("http_replay_cached_ratio: %.4f\n", rr);
    for (int i = 0; i < n; i++) {
        free(jobs[i].body);
        oai_request_free(&jobs[i].rq);
    }
    cJSON_Delete(convs);
    cJSON_Delete(golden);
    free(tasks);
    free(gj);
    return errs ? 1 : 0;
}
