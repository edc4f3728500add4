/* tools/mqctl.c — administration of mqd over its admin socket (JSON, see daemon/admin.c).
 *
 *   mqctl [--socket PATH] [--json] status | sessions | stats | cancel ID | drain | reload |
 *                                   config | top
 * Options go before or after the command (`mqctl status --json`, as git and systemctl take
 * them); an unknown option or a word too many is a usage error.
 * Human-readable tables by default, mqd's JSON reply with --json.
 * Exit codes: 0 success, 1 mqd refused or the command failed (message on stderr),
 * 2 usage, 3 cannot reach mqd or its reply was not understood.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/cli.h"

#define DEFAULT_ADMIN_SOCKET "/run/mq/admin.sock"
#define MAX_REPLY            ((1u << 20) + 65536)
#define REPLY_TIMEOUT_S      30

/* The value at "a.b.c" (nested objects), or NULL. */
static const cJSON *at(const cJSON *o, const char *path)
{
    char key[64];
    const char *dot;
    while (o && (dot = strchr(path, '.'))) {
        snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
        o = cJSON_GetObjectItemCaseSensitive(o, key);
        path = dot + 1;
    }
    return o ? cJSON_GetObjectItemCaseSensitive(o, path) : NULL;
}

static double num(const cJSON *o, const char *path)
{
    const cJSON *v = at(o, path);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *path)
{
    const cJSON *v = at(o, path);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double mib(double b)
{
    return b / 1048576.0;
}

/* "64 per uid" or "none per uid" */
static const char *per_uid(double v, char *buf, size_t len)
{
    if (v > 0)
        snprintf(buf, len, "%.0f per uid", v);
    else
        snprintf(buf, len, "none per uid");
    return buf;
}

static void print_limits(const cJSON *r)
{
    char a[32], b[32], c[32];
    printf("limits          sessions %.0f (%.0f per connection, %s), queue %.0f (%s), KV blocks %.0f (%s)\n",
           num(r, "limits.max_sessions"), num(r, "limits.max_sessions_per_client"),
           per_uid(num(r, "limits.max_sessions_per_uid"), a, sizeof a), num(r, "limits.queue_max"),
           per_uid(num(r, "limits.queue_max_per_uid"), b, sizeof b), num(r, "limits.kv_blocks"),
           per_uid(num(r, "limits.kv_blocks_per_uid"), c, sizeof c));
}

static void print_users(const cJSON *r)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r, "users");
    if (!cJSON_GetArraySize(arr))
        return;
    printf("%-16s %8s %8s %8s %8s %8s\n", "UID/TENANT", "SESSIONS", "QUEUED", "RUNNING", "KV_BLK", "KV_RSV");
    const cJSON *u;
    cJSON_ArrayForEach(u, arr)
    {
        char who[32];
        if (str(u, "tenant_name")[0]) /* named by a trusted front (mq-openai's API keys) */
            snprintf(who, sizeof who, "%.16s", str(u, "tenant_name"));
        else
            snprintf(who, sizeof who, "%.0f", num(u, "uid"));
        printf("%-16s %8.0f %8.0f %8.0f %8.0f %8.0f\n", who, num(u, "sessions"), num(u, "queued"), num(u, "running"),
               num(u, "kv_blocks"), num(u, "kv_reserved"));
    }
}

static void print_stats(const cJSON *r)
{
    printf("requests        %.0f done, %.0f failed\n", num(r, "tokens.requests_done"),
           num(r, "tokens.requests_failed"));
    printf("queue           %.0f queued, %.0f prefilling, %.0f decoding\n", num(r, "queue.queued"),
           num(r, "queue.prefilling"), num(r, "queue.decoding"));
    printf("prompt tokens   %.0f (%.0f cached, %.0f prefilled; cached ratio %.3f)\n", num(r, "tokens.prompt"),
           num(r, "tokens.cached"), num(r, "tokens.prefilled"), num(r, "tokens.cached_ratio"));
    printf("generated       %.0f\n", num(r, "tokens.generated"));
    printf("prefill         %.1f tok/s\n", num(r, "tokens.prefill_tok_s"));
    printf("decode          %.1f tok/s\n", num(r, "tokens.decode_tok_s"));
    printf("KV blocks       %.0f used / %.0f (%.0f cached, %.0f free; %.0f tokens each), "
           "occupancy %.1f%%, %.1f MiB %s\n",
           num(r, "kv.used"), num(r, "kv.blocks"), num(r, "kv.cached"), num(r, "kv.free"), num(r, "kv.block_tokens"),
           100 * num(r, "kv.occupancy"), mib(num(r, "kv.bytes")), str(r, "kv.memory"));
    printf("KV reserved     %.0f blocks promised to running requests; %.0f available to a new one; %.0f "
           "request(s) ended to make room\n",
           num(r, "kv.reserved"), num(r, "kv.available"), num(r, "tokens.requests_yielded"));
    printf("KV index        %.0f lookups, %.0f hits, %.0f evictions, %.0f refused (kept for reservations); %s\n",
           num(r, "kv.lookups"), num(r, "kv.hits"), num(r, "kv.evictions"), num(r, "kv.refused"),
           str(r, "limits.prefix_cache"));
    printf("sessions        %.0f\n", num(r, "sessions"));
    print_limits(r);
    print_users(r);
}

static void print_status(const cJSON *r)
{
    printf("state           %s (pid %.0f, uid %.0f, up %.1f s)\n", str(r, "state"), num(r, "pid"), num(r, "uid"),
           num(r, "uptime_s"));
    printf("model           %s (%s), mode %s, context %.0f tokens\n", str(r, "model.name"), str(r, "model.dir"),
           str(r, "model.mode"), num(r, "model.ctx_limit"));
    printf("load            %s: %.1f / %.1f MiB (%.0f%%), %.0f ms%s%s\n", str(r, "load.phase"),
           mib(num(r, "load.bytes_done")), mib(num(r, "load.bytes_total")), 100 * num(r, "load.progress"),
           num(r, "load.ms"), str(r, "load.note")[0] ? "; " : "", str(r, "load.note"));
    printf("memory          weights BF16 %.1f MiB, NVFP4 %.1f MiB (+ packed copy %.1f MiB, form %s), other %.1f MiB\n",
           mib(num(r, "memory.weights_bf16")), mib(num(r, "memory.weights_fp4")),
           mib(num(r, "memory.weights_fp4_packed")), str(r, "memory.weights_fp4_packed_form"),
           mib(num(r, "memory.weights_other")));
    printf("                weights mapped: hugetlb %.1f MiB, thp %.1f MiB, 4k %.1f MiB\n",
           mib(num(r, "memory.weights_mapped.hugetlb")), mib(num(r, "memory.weights_mapped.thp")),
           mib(num(r, "memory.weights_mapped.4k")));
    printf("                KV segment: hugetlb %.1f MiB, thp %.1f MiB, 4k %.1f MiB\n",
           mib(num(r, "memory.kv_mapped.hugetlb")), mib(num(r, "memory.kv_mapped.thp")),
           mib(num(r, "memory.kv_mapped.4k")));
    printf("huge pages      %.0f free of %.0f; mqd reserved %.0f of %.0f asked%s%s\n", num(r, "memory.hugepages_free"),
           num(r, "memory.hugepages_total"), num(r, "memory.hugepages_reserved"), num(r, "memory.hugepages_asked"),
           str(r, "memory.hugepages_note")[0] ? ": " : "", str(r, "memory.hugepages_note"));
    printf("pools           prefill %.0f threads (cpus %s), decode %.0f threads (cpus %s)\n",
           num(r, "pools.prefill.threads"), str(r, "pools.prefill.cpus"), num(r, "pools.decode.threads"),
           str(r, "pools.decode.cpus"));
    printf("clients         %.0f\n", num(r, "clients"));
    printf("bpf             %s\n", str(r, "bpf"));
    printf("seccomp         %s, %.0f call(s) refused%s%s\n", str(r, "seccomp.mode"), num(r, "seccomp.refused"),
           str(r, "seccomp.last_refused")[0] ? ", the last: " : "", str(r, "seccomp.last_refused"));
    if (cJSON_GetObjectItem(r, "kv"))
        print_stats(r);
    if (str(r, "error")[0])
        printf("error           %s\n", str(r, "error"));
}

static void print_sessions(const cJSON *r)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r, "sessions");
    printf("%-8s %-5s %-8s %-6s %-10s %9s %9s %7s %7s %7s %9s\n", "SESSION", "MODE", "PID", "UID", "STATE", "REQUEST",
           "HISTORY", "KV_BLK", "SHARED", "KV_RSV", "IDLE_MS");
    const cJSON *s;
    cJSON_ArrayForEach(s, arr)
    {
        printf("%-8.0f %-5s %-8.0f %-6.0f %-10s %9.0f %9.0f %7.0f %7.0f %7.0f %9.0f\n", num(s, "id"),
               str(s, "mode")[0] ? str(s, "mode") : "-", num(s, "pid"), num(s, "uid"), str(s, "state"),
               num(s, "request"), num(s, "history_tokens"), num(s, "kv_blocks"), num(s, "shared_blocks"),
               num(s, "reserved_blocks"), num(s, "idle_ms"));
    }
    if (cJSON_IsTrue(cJSON_GetObjectItem(r, "truncated")))
        printf("(list truncated)\n");
}

static void print_top(const cJSON *r)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r, "threads");
    printf("%-8s %-16s %12s %10s\n", "TID", "THREAD", "OFFCPU_MS", "FAULTS");
    const cJSON *t;
    cJSON_ArrayForEach(t, arr)
        printf("%-8.0f %-16s %12.1f %10.0f\n", num(t, "tid"), str(t, "name"), num(t, "offcpu_ms"), num(t, "faults"));
}

static void print_config(const cJSON *r)
{
    char *s = cJSON_Print(cJSON_GetObjectItem(r, "config"));
    printf("%s\n", s ? s : "{}");
    free(s);
}

static void print_drain(const cJSON *r)
{
    printf("mqd is %s (up to %.0f ms for running requests), then exits\n", str(r, "state"), num(r, "timeout_ms"));
}

static void print_message(const cJSON *r)
{
    printf("%s\n", str(r, "message"));
}

/* The commands: what mqctl sends ({"cmd": name[, "id": N]}) and how it prints the reply. */
typedef struct command {
    const char *name;
    int takes_id; /* cancel ID */
    void (*print)(const cJSON *reply);
    const char *help;
} command;

static const command commands[] = {
    { "status", 0, print_status, "model, mode, state, load progress, memory by kind, pools, queue" },
    { "sessions", 0, print_sessions, "open sessions with their owner, KV use and state" },
    { "stats", 0, print_stats, "token counters, tokens/s per phase, cached ratio, KV occupancy" },
    { "cancel", 1, print_message, "cancel a running request (request id or session id)" },
    { "drain", 0, print_drain, "finish (or cancel after drain_timeout_ms) running requests, exit" },
    { "reload", 0, print_message, "re-read the configuration file (like SIGHUP)" },
    { "config", 0, print_config, "the configuration in effect" },
    { "top", 0, print_top, "per-thread off-CPU time and page faults (BPF)" },
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: mqctl [--socket PATH] [--json] COMMAND (options also after it)\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-12s %s\n", commands[i].takes_id ? "cancel ID" : commands[i].name, commands[i].help);
    fprintf(f, "socket: --socket, $MQ_ADMIN_SOCKET, or %s\n", DEFAULT_ADMIN_SOCKET);
}

static const command *find_command(const char *name)
{
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

/* Options anywhere (getopt_long permutes: `mqctl status --json`), then the command and
 * its id for cancel. 0, 1 when --help was asked, or 2 (usage error; said on stderr). */
static int parse_args(int argc, char **argv, const char **sock, int *json, const command **cm, unsigned long long *id)
{
    static const struct option lo[] = {
        { "socket", 1, 0, 's' }, { "json", 0, 0, 'j' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int ch;
    opterr = 0; /* our own messages */
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 's': *sock = optarg; break;
        case 'j': *json = 1; break;
        case 'h': return 1;
        default: cli_bad_option("mqctl", lo, argv); return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "mqctl: no command\n");
        return 2;
    }
    *cm = find_command(argv[optind]);
    if (!*cm) {
        fprintf(stderr, "mqctl: unknown command \"%s\"\n", argv[optind]);
        return 2;
    }
    int words = (*cm)->takes_id ? 2 : 1;
    if ((*cm)->takes_id) {
        char *end = NULL;
        *id = optind + 1 < argc ? strtoull(argv[optind + 1], &end, 10) : 0;
        if (!*id || *end) {
            fprintf(stderr, "mqctl: cancel needs a request or session id\n");
            return 2;
        }
    }
    if (argc - optind > words) {
        fprintf(stderr, "mqctl: %s takes %s, not \"%s\"\n", (*cm)->name, (*cm)->takes_id ? "one id" : "no argument",
                argv[optind + words]);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *sock = getenv("MQ_ADMIN_SOCKET");
    int json = 0;
    const command *cm = NULL;
    unsigned long long id = 0;
    int prc = parse_args(argc, argv, &sock, &json, &cm, &id);
    if (prc) {
        usage(prc == 1 ? stdout : stderr);
        return prc == 1 ? 0 : 2;
    }
    const char *cmd = cm->name;
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "cmd", cmd);
    if (cm->takes_id)
        cJSON_AddNumberToObject(req, "id", (double)id);
    if (!sock || !*sock)
        sock = DEFAULT_ADMIN_SOCKET;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(sock) >= sizeof sa.sun_path) {
        fprintf(stderr, "mqctl: socket path too long\n");
        return 2;
    }
    strcpy(sa.sun_path, sock);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "mqctl: cannot connect to mqd's admin socket %s: %s\n", sock, strerror(errno));
        cJSON_Delete(req);
        return 3;
    }
    struct timeval tv = { REPLY_TIMEOUT_S, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char *msg = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!msg || send(fd, msg, strlen(msg), MSG_NOSIGNAL) < 0) {
        fprintf(stderr, "mqctl: sending to %s: %s\n", sock, strerror(errno));
        free(msg);
        close(fd);
        return 3;
    }
    free(msg);
    char *buf = malloc(MAX_REPLY + 1);
    ssize_t n = buf ? recv(fd, buf, MAX_REPLY, 0) : -1;
    close(fd);
    if (n <= 0) {
        fprintf(stderr, "mqctl: no reply from mqd (%s)\n", n < 0 ? strerror(errno) : "closed");
        free(buf);
        return 3;
    }
    buf[n] = 0;
    cJSON *r = cJSON_Parse(buf);
    if (!r || !cJSON_IsObject(r)) {
        fprintf(stderr, "mqctl: mqd's reply is not JSON\n");
        cJSON_Delete(r);
        free(buf);
        return 3;
    }
    int ok = cJSON_IsTrue(cJSON_GetObjectItem(r, "ok"));
    if (json) {
        char *s = cJSON_Print(r);
        printf("%s\n", s ? s : buf);
        free(s);
    } else if (ok) {
        cm->print(r);
    }
    if (!ok)
        fprintf(stderr, "mqctl: %s: %s\n", cmd, str(r, "error"));
    cJSON_Delete(r);
    free(buf);
    return ok ? 0 : 1;
}
