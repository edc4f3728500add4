/* tools/mq.c — command-line client of mqd, built on libmq only.
 *
 *   mq run "prompt"      one chat message (or raw text with --raw), answer streamed
 *   mq chat              interactive: every line is a user message on one session
 *   mq stats             mqd's counters
 * Options go before or after the command (`mq run "hi" --json`); `--` ends them (a prompt
 * that starts with "-"). An unknown option, a word too many (the prompt is one argument:
 * quote it) or an option the command does not use (`mq stats --greedy`, `--system` with
 * `--raw`) is a usage error: a script's mistake is said, never silently ignored.
 * Exit codes: 0 success, 1 the request failed (mqd's message on stderr), 2 usage,
 * 3 cannot reach mqd.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libclient/mq.h"
#include "tools/cli.h"

typedef struct opts {
    const char *socket;
    int json, raw, quiet, stats;
    const char *system;
    mq_params p;
    const char *gen_opt; /* the first option given that only run/chat use (for the error) */
} opts;

static volatile sig_atomic_t interrupted;
static void on_sigint(int s)
{
    (void)s;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mq [options] run \"prompt\" | chat | stats   (options also after the command)\n"
            "  --socket PATH        mqd client socket (default $MQ_SOCKET or %s)\n"
            "  --json               print one JSON object per answer (text, tokens, stats)\n"
            "  --raw                raw text session (no chat template)\n"
            "  --system TEXT        system message before the first user message\n"
            "  --max-tokens N       tokens to generate (default 256)\n"
            "  --temperature T      0 = greedy (default 0.7)\n"
            "  --top-k K --top-p P --min-p P --repeat-penalty R --seed S\n"
            "  --greedy             argmax decoding\n"
            "  --think              chat template with thinking enabled\n"
            "  --stats              print per-request statistics on stderr\n",
            MQ_DEFAULT_SOCKET);
}

static const char *end_name(int r)
{
    static const char *const n[] = { "stop", "length", "cancelled", "failed", "stop_string", "shutdown" };
    return r >= 0 && r < 6 ? n[r] : "?";
}

static int fail_conn(mq_conn *c, const char *what, int rc)
{
    char msg[600];
    mq_last_error(c, msg, sizeof msg);
    fprintf(stderr, "mq: %s: %s%s%s\n", what, mq_strerror(rc), msg[0] ? ": " : "", msg);
    return rc == -EPIPE ? 3 : 1;
}

/* Sends one prompt and streams its answer. Returns the exit code. */
static int ask(mq_conn *c, uint64_t session, const opts *o, const char *text)
{
    uint64_t req;
    int rc = o->raw ? mq_send_text(c, session, text, strlen(text), &o->p, &req)
                    : mq_send_message(c, session, MQ_ROLE_USER, text, strlen(text), &o->p, &req);
    if (rc)
        return fail_conn(c, "send", rc);
    cJSON *js = o->json ? cJSON_CreateObject() : NULL;
    cJSON *toks = js ? cJSON_AddArrayToObject(js, "tokens") : NULL;
    char *acc = NULL;
    size_t acc_len = 0;
    int cancelled = 0;
    for (;;) {
        if (interrupted && !cancelled) {
            mq_cancel(c, req); /* the DONE event follows */
            cancelled = 1;
        }
        mq_event ev;
        rc = mq_next_event(c, &ev, 200);
        if (rc == -ETIMEDOUT)
            continue;
        if (rc) {
            cJSON_Delete(js);
            free(acc);
            return fail_conn(c, "reading tokens", rc);
        }
        if (ev.req != req)
            continue;
        if (ev.type == MQ_EVENT_TOKEN) {
            if (js) {
                cJSON_AddItemToArray(toks, cJSON_CreateNumber(ev.token));
                char *n = realloc(acc, acc_len + ev.text_len + 1);
                if (n) {
                    acc = n;
                    memcpy(acc + acc_len, ev.text, ev.text_len);
                    acc_len += ev.text_len;
                    acc[acc_len] = 0;
                }
            } else {
                fwrite(ev.text, 1, ev.text_len, stdout);
                fflush(stdout);
            }
            continue;
        }
        /* done */
        int code = ev.end_reason == MQ_END_FAILED || ev.end_reason == MQ_END_SHUTDOWN ? 1 : 0;
        if (js) {
            cJSON_AddStringToObject(js, "text", acc ? acc : "");
            cJSON_AddStringToObject(js, "end", end_name(ev.end_reason));
            if (ev.error) {
                cJSON_AddStringToObject(js, "error", mq_strerror(ev.error));
                cJSON_AddStringToObject(js, "message", ev.text);
            }
            cJSON_AddNumberToObject(js, "request", (double)req);
            cJSON_AddNumberToObject(js, "session", (double)session);
            cJSON *st = cJSON_AddObjectToObject(js, "stats");
            cJSON_AddNumberToObject(st, "prompt_tokens", ev.stats.prompt_tokens);
            cJSON_AddNumberToObject(st, "cached_tokens", ev.stats.cached_tokens);
            cJSON_AddNumberToObject(st, "prefilled_tokens", ev.stats.prefilled_tokens);
            cJSON_AddNumberToObject(st, "gen_tokens", ev.stats.gen_tokens);
            cJSON_AddNumberToObject(st, "ttft_ms", ev.stats.ttft_us / 1000.0);
            cJSON_AddNumberToObject(st, "prefill_ms", ev.stats.prefill_us / 1000.0);
            cJSON_AddNumberToObject(st, "decode_ms", ev.stats.decode_us / 1000.0);
            char *s = cJSON_PrintUnformatted(js);
            if (s)
                printf("%s\n", s);
            free(s);
            cJSON_Delete(js);
            free(acc);
        } else {
            printf("\n");
            if (ev.error || ev.end_reason == MQ_END_FAILED)
                fprintf(stderr, "mq: request failed: %s%s%s\n", mq_strerror(ev.error), ev.text_len ? ": " : "",
                        ev.text);
        }
        fflush(stdout); /* the statistics line follows the answer */
        if (o->stats)
            fprintf(stderr,
                    "[%s] prompt %u tokens (%u cached, %u prefilled), %u generated, TTFT %.1f ms, "
                    "decode %.1f tok/s\n",
                    end_name(ev.end_reason), ev.stats.prompt_tokens, ev.stats.cached_tokens, ev.stats.prefilled_tokens,
                    ev.stats.gen_tokens, ev.stats.ttft_us / 1000.0,
                    ev.stats.decode_us && ev.stats.gen_tokens > 1
                        ? (ev.stats.gen_tokens - 1) / (ev.stats.decode_us / 1e6)
                        : 0.0);
        fflush(stdout);
        return code;
    }
}

static int open_session(mq_conn *c, const opts *o, uint64_t *s)
{
    int rc = mq_open_session(c, o->raw ? MQ_MODE_RAW : MQ_MODE_CHAT, s);
    if (rc)
        return fail_conn(c, "open session", rc);
    if (o->system && !o->raw) {
        uint64_t req;
        rc = mq_send_message(c, *s, MQ_ROLE_SYSTEM, o->system, strlen(o->system), &o->p, &req);
        if (rc)
            return fail_conn(c, "system message", rc);
        mq_event ev;
        do
            rc = mq_next_event(c, &ev, 10000);
        while (!rc && !(ev.type == MQ_EVENT_DONE && ev.req == req));
        if (rc)
            return fail_conn(c, "system message", rc);
    }
    return 0;
}

static int cmd_chat(mq_conn *c, const opts *o)
{
    uint64_t s;
    int rc = open_session(c, o, &s);
    if (rc)
        return rc;
    int tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    int code = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        interrupted = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0)
            break;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (!n)
            continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit"))
            break;
        code = ask(c, s, o, line);
        if (code == 3)
            break;
    }
    free(line);
    mq_close_session(c, s);
    return code;
}

static int cmd_stats(mq_conn *c, const opts *o)
{
    mq_stats st;
    int rc = mq_stats_get(c, &st);
    if (rc)
        return fail_conn(c, "stats", rc);
    if (o->json) {
        printf("{\"uptime_ms\":%llu,\"sessions\":%u,\"running\":%u,\"queued\":%u,"
               "\"kv_blocks_used\":%u,\"kv_blocks_total\":%u,\"requests_done\":%llu,"
               "\"prompt_tokens\":%llu,\"cached_tokens\":%llu,\"prefill_tokens\":%llu,"
               "\"decode_tokens\":%llu,\"prefill_tps\":%.1f,\"decode_tps\":%.1f}\n",
               (unsigned long long)st.uptime_ms, st.sessions, st.requests_running, st.requests_queued,
               st.kv_blocks_used, st.kv_blocks_total, (unsigned long long)st.requests_done,
               (unsigned long long)st.prompt_tokens, (unsigned long long)st.cached_tokens,
               (unsigned long long)st.prefill_tokens, (unsigned long long)st.decode_tokens, st.prefill_tps,
               st.decode_tps);
        return 0;
    }
    printf("uptime          %.1f s\nsessions        %u\nrunning         %u\nqueued          %u\n"
           "kv blocks       %u / %u (%u tokens each)\nrequests done   %llu\n"
           "prompt tokens   %llu (%llu cached, %llu prefilled)\ngenerated       %llu\n"
           "prefill         %.1f tok/s\ndecode          %.1f tok/s\n",
           st.uptime_ms / 1000.0, st.sessions, st.requests_running, st.requests_queued, st.kv_blocks_used,
           st.kv_blocks_total, st.kv_block_tokens, (unsigned long long)st.requests_done,
           (unsigned long long)st.prompt_tokens, (unsigned long long)st.cached_tokens,
           (unsigned long long)st.prefill_tokens, (unsigned long long)st.decode_tokens, st.prefill_tps, st.decode_tps);
    return 0;
}

static int num(const char *s, double lo, double hi, const char *flag, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "mq: %s: \"%s\" is not a number in [%.15g, %.15g]\n", flag, s, lo, hi);
        usage(stderr);
        return -1;
    }
    *out = v;
    return 0;
}

/* Options, into *o: -1 when main goes on, else the exit status (0 for --help, 2 for a
 * usage error, said on stderr). */
static int parse_options(int argc, char **argv, opts *o)
{
    enum {
        O_SOCK = 256,
        O_JSON,
        O_RAW,
        O_SYS,
        O_MAX,
        O_TEMP,
        O_TOPK,
        O_TOPP,
        O_MINP,
        O_REP,
        O_SEED,
        O_GREEDY,
        O_THINK,
        O_STATS,
        O_HELP
    };
    static const struct option lo[] = { { "socket", 1, 0, O_SOCK },    { "json", 0, 0, O_JSON },
                                        { "raw", 0, 0, O_RAW },        { "system", 1, 0, O_SYS },
                                        { "max-tokens", 1, 0, O_MAX }, { "temperature", 1, 0, O_TEMP },
                                        { "top-k", 1, 0, O_TOPK },     { "top-p", 1, 0, O_TOPP },
                                        { "min-p", 1, 0, O_MINP },     { "repeat-penalty", 1, 0, O_REP },
                                        { "seed", 1, 0, O_SEED },      { "greedy", 0, 0, O_GREEDY },
                                        { "think", 0, 0, O_THINK },    { "stats", 0, 0, O_STATS },
                                        { "help", 0, 0, O_HELP },      { 0, 0, 0, 0 } };
    int ch, li;
    double v;
    opterr = 0; /* our own messages, naming the option */
    while ((li = -1, ch = getopt_long(argc, argv, "h", lo, &li)) != -1) {
        if (li >= 0 && ch != O_SOCK && ch != O_JSON && ch != O_HELP && !o->gen_opt)
            o->gen_opt = lo[li].name;
        switch (ch) {
        case O_SOCK: o->socket = optarg; break;
        case O_JSON: o->json = 1; break;
        case O_RAW: o->raw = 1; break;
        case O_SYS: o->system = optarg; break;
        case O_MAX:
            if (num(optarg, 1, 1 << 20, "--max-tokens", &v))
                return 2;
            o->p.max_tokens = (uint32_t)v;
            break;
        case O_TEMP:
            if (num(optarg, 0, 100, "--temperature", &v))
                return 2;
            o->p.temperature = (float)v;
            break;
        case O_TOPK:
            if (num(optarg, 0, 1000000, "--top-k", &v))
                return 2;
            o->p.top_k = (uint32_t)v;
            break;
        case O_TOPP:
            if (num(optarg, 1e-6, 1, "--top-p", &v))
                return 2;
            o->p.top_p = (float)v;
            break;
        case O_MINP:
            if (num(optarg, 0, 0.999999, "--min-p", &v))
                return 2;
            o->p.min_p = (float)v;
            break;
        case O_REP:
            if (num(optarg, 0, 8, "--repeat-penalty", &v))
                return 2;
            o->p.repeat_penalty = (float)v;
            break;
        case O_SEED:
            if (num(optarg, 0, 1.8e19, "--seed", &v))
                return 2;
            o->p.seed = (uint64_t)v;
            break;
        case O_GREEDY: o->p.flags |= MQ_PARAM_GREEDY; break;
        case O_THINK: o->p.flags |= MQ_PARAM_ENABLE_THINKING; break;
        case O_STATS: o->stats = 1; break;
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default:
            cli_bad_option("mq", lo, argv);
            usage(stderr);
            return 2;
        }
    }
    return -1;
}

/* The command word and its arguments, after the options: 0, or 2 with usage printed. */
static int check_command(int argc, char **argv, const opts *o)
{
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    if (strcmp(cmd, "run") && strcmp(cmd, "chat") && strcmp(cmd, "stats")) {
        fprintf(stderr, "mq: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return 2;
    }
    if (!strcmp(cmd, "run") && optind + 1 >= argc) {
        fprintf(stderr, "mq: run needs a prompt: mq run \"...\"\n");
        usage(stderr);
        return 2;
    }
    int words = !strcmp(cmd, "run") ? 2 : 1;
    if (argc - optind > words) {
        fprintf(stderr, "mq: %s takes %s, not \"%s\"%s\n", cmd, words == 2 ? "one prompt" : "no argument",
                argv[optind + words], words == 2 ? " (quote the prompt)" : "");
        usage(stderr);
        return 2;
    }
    if (!strcmp(cmd, "stats") && o->gen_opt) {
        fprintf(stderr, "mq: stats does not use --%s\n", o->gen_opt);
        usage(stderr);
        return 2;
    }
    if (o->raw && o->system) {
        fprintf(stderr, "mq: --system needs a chat session, not --raw\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

/* Connects to mqd and runs cmd ("run" with its prompt, "chat" or "stats"). */
static int run_command(const char *cmd, const char *prompt, opts *o)
{
    struct sigaction sa = { .sa_handler = on_sigint };
    sigaction(SIGINT, &sa, NULL);
    mq_conn *c;
    int rc = mq_connect(o->socket, &c);
    if (rc) {
        const char *path = o->socket ? o->socket : getenv("MQ_SOCKET");
        fprintf(stderr, "mq: cannot connect to mqd at %s: %s\n", path && *path ? path : MQ_DEFAULT_SOCKET,
                mq_strerror(rc));
        return 3;
    }
    int code;
    if (!strcmp(cmd, "stats")) {
        code = cmd_stats(c, o);
    } else if (!strcmp(cmd, "chat")) {
        code = cmd_chat(c, o);
    } else {
        uint64_t s;
        code = open_session(c, o, &s);
        if (!code) {
            code = ask(c, s, o, prompt);
            mq_close_session(c, s);
        }
    }
    mq_disconnect(c);
    return code;
}

int main(int argc, char **argv)
{
    opts o = { 0 };
    mq_params_init(&o.p);
    o.p.flags |= MQ_PARAM_NO_SPECIAL_TEXT;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0)
        return rc;
    rc = check_command(argc, argv, &o);
    if (rc)
        return rc;
    const char *cmd = argv[optind];
    return run_command(cmd, !strcmp(cmd, "run") ? argv[optind + 1] : NULL, &o);
}
