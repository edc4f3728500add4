/* tests/integration/test_cli.c — the command-line hygiene of mqctl and mq (issue 13, "CLI
 * hygiene"), against one live mqd:
 *   - every mqctl command with --json before or after the command prints mqd's reply as
 *     one JSON object on stdout (exit 0 when mqd said ok, 1 otherwise, the error on
 *     stderr), and without --json prints text, not JSON;
 *   - mq: `stats --json` (before or after), `run --json` and `chat --json` (one object
 *     per answer) print JSON; the same without --json print text;
 *   - a usage error — an unknown option, an option without its value or with a value it
 *     does not take, a word too many, a missing or unknown command, an option the
 *     command does not use — exits 2 with one line naming the offending word and the
 *     usage on stderr, nothing on stdout, and does nothing: `mqctl drain --bogus` does
 *     not drain, `mqctl cancel ID extra` cancels nothing, `mq run "x" extra` submits
 *     nothing (mqd's request and session counters do not move);
 *   - --help prints the usage on stdout and exits 0.
 */
#define _GNU_SOURCE
#include "tests/integration/mqd_spawn.h"

static char dir[256], client_sock[300], admin_sock[300], logpath[300];
static char mq[4200], mqctl[4200];
static pid_t mqd_pid;

typedef struct run_out {
    int rc; /* exit status, -1: did not exit in 60 s (killed) */
    char out[65536], err[8192];
} run_out;

static void slurp(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
}

/* Runs argv with stdin from the string in (NULL: /dev/null), stdout and stderr apart. */
static void run_io(char *const argv[], const char *in, run_out *r)
{
    char out[340], err[340];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    int p[2];
    if (pipe(p)) {
        r->rc = -1;
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[0]);
    if (in && write(p[1], in, strlen(in)) != (ssize_t)strlen(in))
        CHECK(0, "writing %s's input", argv[0]);
    close(p[1]);
    int st = spawn_wait_exit(pid, 60);
    r->rc = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    slurp(out, r->out, sizeof r->out);
    slurp(err, r->err, sizeof r->err);
}

/* argv = tool, then the words of line split at spaces (no quoting needed here). */
static void run_words(const char *tool, const char *line, const char *in, run_out *r)
{
    static char copy[1024];
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)tool;
    snprintf(copy, sizeof copy, "%s", line);
    for (char *save, *w = strtok_r(copy, " ", &save); w && n < 39; w = strtok_r(NULL, " ", &save))
        argv[n++] = w;
    argv[n] = NULL;
    run_io(argv, in, r);
}

static double counter(const char *group, const char *key)
{
    cJSON *r = admin_call(admin_sock, "stats", 0);
    double v = jnum(r, group, key);
    cJSON_Delete(r);
    return v;
}

/* mqctl: --json on every command, before and after it. */
static void test_mqctl_json_everywhere(void)
{
    static const char *const cmds[] = { "status", "sessions", "stats", "config", "top", "reload", "cancel 987654321" };
    char line[600];
    static run_out r;
    for (int i = 0; i < (int)(sizeof cmds / sizeof cmds[0]); i++)
        for (int after = 0; after < 2; after++) {
            if (after)
                snprintf(line, sizeof line, "%s --socket %s --json", cmds[i], admin_sock);
            else
                snprintf(line, sizeof line, "--json --socket %s %s", admin_sock, cmds[i]);
            run_words(mqctl, line, NULL, &r);
            cJSON *o = cJSON_Parse(r.out);
            int ok = cJSON_IsTrue(cJSON_GetObjectItem(o, "ok"));
            CHECK(o && cJSON_IsObject(o) && (r.rc == 0) == ok && (r.rc == 0 || r.rc == 1) && (ok || r.err[0]),
                  "mqctl %s: exit %d, stdout %.200s, stderr %.200s", line, r.rc, r.out, r.err);
            cJSON_Delete(o);
        }
    /* the same commands without --json: text (a JSON parser refuses it) */
    static const char *const text[] = { "status", "sessions", "stats" };
    for (int i = 0; i < 3; i++) {
        snprintf(line, sizeof line, "--socket %s %s", admin_sock, text[i]);
        run_words(mqctl, line, NULL, &r);
        cJSON *o = cJSON_Parse(r.out);
        CHECK(r.rc == 0 && !o && r.out[0], "mqctl %s printed JSON or nothing: %.200s", text[i], r.out);
        cJSON_Delete(o);
    }
}

/* mq: --json on stats, run and chat. */
static void test_mq_json_everywhere(void)
{
    char line[600];
    static run_out r;
    for (int after = 0; after < 2; after++) {
        snprintf(line, sizeof line, after ? "stats --socket %s --json" : "--json --socket %s stats", client_sock);
        run_words(mq, line, NULL, &r);
        cJSON *o = cJSON_Parse(r.out);
        CHECK(r.rc == 0 && jnum(o, "kv_blocks_total", NULL) > 0, "mq %s: exit %d: %.200s %.200s", line, r.rc, r.out,
              r.err);
        cJSON_Delete(o);
    }
    snprintf(line, sizeof line, "run Hello --socket %s --greedy --max-tokens 3 --json", client_sock);
    run_words(mq, line, NULL, &r);
    cJSON *o = cJSON_Parse(r.out);
    CHECK(r.rc == 0 && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")) == 3 && !strcmp(jstr(o, "end"), "length"),
          "mq %s: exit %d: %.200s %.200s", line, r.rc, r.out, r.err);
    cJSON_Delete(o);
    /* chat: one JSON object per line of input, each on its own line */
    snprintf(line, sizeof line, "chat --socket %s --greedy --max-tokens 2 --json", client_sock);
    run_words(mq, line, "Hello\nAnd then?\n", &r);
    char *nl = strchr(r.out, '\n');
    cJSON *first = NULL, *second = NULL;
    if (nl) {
        *nl = 0;
        first = cJSON_Parse(r.out);
        second = cJSON_Parse(nl + 1);
    }
    CHECK(r.rc == 0 && first && second && cJSON_GetArraySize(cJSON_GetObjectItem(first, "tokens")) == 2 &&
              cJSON_GetArraySize(cJSON_GetObjectItem(second, "tokens")) == 2 &&
              jnum(first, "session", NULL) == jnum(second, "session", NULL),
          "mq %s: exit %d: %.300s %.200s", line, r.rc, r.out, r.err);
    cJSON_Delete(first);
    cJSON_Delete(second);
    /* and text without --json */
    snprintf(line, sizeof line, "stats --socket %s", client_sock);
    run_words(mq, line, NULL, &r);
    o = cJSON_Parse(r.out);
    CHECK(r.rc == 0 && !o && strstr(r.out, "kv blocks"), "mq stats: exit %d: %.200s", r.rc, r.out);
    cJSON_Delete(o);
}

typedef struct bad_case {
    const char *line;  /* the words after the tool ("S" stands for the socket flag) */
    const char *names; /* what the error line must name */
} bad_case;

/* One usage error: exit 2, the offending word named on stderr with the usage, stdout
 * empty, and mqd's counters unmoved (nothing was sent). */
static void check_usage_error(const char *tool, const char *toolname, const bad_case *b, const char *sock)
{
    char line[700];
    static run_out r;
    const char *s = strstr(b->line, "S");
    if (s)
        snprintf(line, sizeof line, "%.*s--socket %s%s", (int)(s - b->line), b->line, sock, s + 1);
    else
        snprintf(line, sizeof line, "%s", b->line);
    double done0 = counter("tokens", "requests_done"), sessions0 = counter("sessions", NULL);
    run_words(tool, line, "Hello\n", &r);
    char usage[32];
    snprintf(usage, sizeof usage, "usage: %s", toolname);
    CHECK(r.rc == 2 && strstr(r.err, b->names) && !r.out[0], "%s %s: exit %d, stdout \"%.100s\", stderr %.300s",
          toolname, line, r.rc, r.out, r.err);
    CHECK(strstr(r.err, usage), "%s %s: no usage on stderr: %.300s", toolname, line, r.err);
    double done1 = counter("tokens", "requests_done"), sessions1 = counter("sessions", NULL);
    CHECK(done0 == done1 && sessions0 == sessions1, "%s %s acted: requests %.0f -> %.0f, sessions %.0f -> %.0f",
          toolname, line, done0, done1, sessions0, sessions1);
}

static void test_mqctl_usage_errors(void)
{
    static const bad_case cases[] = {
        { "S status --bogus", "--bogus" },
        { "S --bogus status", "--bogus" },
        { "S drain --bogus", "--bogus" }, /* must not drain */
        { "S drain now", "\"now\"" },
        { "S status extra", "\"extra\"" },
        { "S status -x", "-x" },
        { "S status --json=yes", "--json" },
        { "status --socket", "--socket" },
        { "S cancel", "id" },
        { "S cancel 12x", "id" },
        { "S cancel 5 6", "\"6\"" },
        { "S", "no command" },
        { "S frobnicate", "\"frobnicate\"" },
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        check_usage_error(mqctl, "mqctl", &cases[i], admin_sock);
    cJSON *st = admin_call(admin_sock, "status", 0);
    CHECK(!strcmp(jstr(st, "state"), "ready"), "mqd after the mqctl usage errors: %s", jstr(st, "state"));
    cJSON_Delete(st);
}

static void test_mq_usage_errors(void)
{
    static const bad_case cases[] = {
        { "S stats --bogus", "--bogus" },
        { "S run Hello --bogus", "--bogus" },
        { "S run Hello extra", "\"extra\"" },
        { "S run", "prompt" },
        { "S chat extra", "\"extra\"" },
        { "S chat --max-tokens", "--max-tokens" },
        { "S run Hello --max-tokens 0", "--max-tokens" },
        { "S run Hello --temperature hot", "--temperature" },
        { "S run Hello --greedy=yes", "--greedy" },
        { "S stats --greedy", "--greedy" },
        { "S stats --max-tokens 5", "--max-tokens" },
        { "S --raw --system Be run Hello", "--system" },
        { "S", "usage" },
        { "S complete Hello", "\"complete\"" },
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        check_usage_error(mq, "mq", &cases[i], client_sock);
}

static void test_help(void)
{
    static run_out r;
    run_words(mqctl, "--help", NULL, &r);
    CHECK(r.rc == 0 && strstr(r.out, "usage: mqctl") && strstr(r.out, "cancel ID"), "mqctl --help: %d %.200s", r.rc,
          r.out);
    run_words(mq, "run --help", NULL, &r);
    CHECK(r.rc == 0 && strstr(r.out, "usage: mq") && strstr(r.out, "--max-tokens"), "mq run --help: %d %.200s", r.rc,
          r.out);
    /* `--` ends the options: a prompt that starts with "-" */
    char line[600];
    snprintf(line, sizeof line, "--socket %s --greedy --max-tokens 2 --json run -- -x", client_sock);
    run_words(mq, line, NULL, &r);
    cJSON *o = cJSON_Parse(r.out);
    CHECK(r.rc == 0 && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")) == 2, "mq %s: %d %.200s %.200s", line, r.rc,
          r.out, r.err);
    cJSON_Delete(o);
}

int main(void)
{
    spawn_tmpdir(dir, sizeof dir);
    snprintf(client_sock, sizeof client_sock, "%s/client.sock", dir);
    snprintf(admin_sock, sizeof admin_sock, "%s/admin.sock", dir);
    snprintf(logpath, sizeof logpath, "%s/mqd.log", dir);
    snprintf(mq, sizeof mq, "%s/mq", spawn_build_dir());
    snprintf(mqctl, sizeof mqctl, "%s/mqctl", spawn_build_dir());
    const char *extra[] = { "--kv-tokens", "4096", "--user", "nobody", NULL };
    if (geteuid() != 0)
        extra[2] = NULL; /* not root: mqd runs as this user */
    mqd_pid = spawn_suite_mqd(client_sock, admin_sock, logpath, extra);
    if (!mqd_pid)
        return harness_done();
    RUN(test_mqctl_json_everywhere);
    RUN(test_mq_json_everywhere);
    RUN(test_mqctl_usage_errors);
    RUN(test_mq_usage_errors);
    RUN(test_help);
    return spawn_suite_done(mqd_pid, logpath);
}
