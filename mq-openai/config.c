/* mq-openai/config.c — settings from a JSON file and flags (see config.h). */
#define _GNU_SOURCE
#include "mq-openai/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/errmsg.h"
#include "mq-openai/keys.h"

#define DEFAULT_PATH     "/etc/mq/mq-openai.json"
#define MAX_CONFIG_BYTES (1u << 20)

typedef struct field {
    const char *name;
    int is_str;
    size_t off;
    uint32_t min, max;
    const char *help;
} field;

#define STR(n, h)                               \
    {                                           \
#n, 1, offsetof(oai_config, n), 0, 0, h \
    }
#define U32(n, lo, hi, h)                         \
    {                                             \
#n, 0, offsetof(oai_config, n), lo, hi, h \
    }

static const field fields[] = {
    STR(listen, "address to listen on, host:port (systemd socket activation overrides it)"),
    STR(mqd_socket, "mqd's client socket (\"\" = $MQ_SOCKET or /run/mq/client.sock)"),
    STR(model_name, "model id served and accepted (\"\" = mqd's model name)"),
    STR(api_keys_file, "file with one API key per line, a tenant name beside it optional; \"\" = no authentication"),
    U32(max_body_kib, 1, 1u << 20, "largest request body in KiB (larger: 413)"),
    U32(max_connections, 1, 65536, "HTTP connections at once"),
    U32(idle_timeout_s, 1, 86400, "seconds an idle HTTP connection is kept"),
    U32(max_requests, 1, 4096, "requests running at once (one mqd connection each)"),
    U32(queue_wait_ms, 0, 600000, "ms a request waits for a free slot before 429"),
    U32(default_max_tokens, 1, 1u << 20, "max_tokens when a request gives none"),
    U32(max_sessions, 1, 65536, "conversations pinned by X-Session-Id or user"),
    U32(session_idle_s, 1, 86400 * 7, "seconds a pinned conversation is kept idle"),
    STR(think_history, "past Qwen3 turns: \"template\" (as transformers renders them) or \"as_generated\" "
                       "(with the empty think block the model saw: the next turn reuses the whole reply's KV)"),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

void oai_config_default(oai_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:8000");
    c->max_body_kib = 8192;
    c->max_connections = 256;
    c->idle_timeout_s = 300;
    c->max_requests = 64;
    c->queue_wait_ms = 30000;
    c->default_max_tokens = 1024;
    c->max_sessions = 1024;
    c->session_idle_s = 3600;
    snprintf(c->think_history, sizeof c->think_history, "template");
}

static const field *find(const char *name)
{
    char n[64];
    snprintf(n, sizeof n, "%s", name);
    for (char *p = n; *p; p++)
        if (*p == '-')
            *p = '_';
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].name, n))
            return &fields[i];
    return NULL;
}

static int set(oai_config *c, const field *f, const char *v, const char *where, char *err, size_t errlen)
{
    char *dst = (char *)c + f->off;
    if (f->is_str) {
        if (strlen(v) >= OAI_CFG_STR)
            return mq_errmsg(err, errlen, -EINVAL, "%s%s: longer than %d bytes", where, f->name, OAI_CFG_STR - 1);
        snprintf(dst, OAI_CFG_STR, "%s", v);
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || *v == '-' || x < f->min || x > f->max)
        return mq_errmsg(err, errlen, -EINVAL, "%s%s: \"%s\" is not an integer in [%u, %u]", where, f->name, v, f->min,
                         f->max);
    uint32_t u = (uint32_t)x;
    memcpy(dst, &u, 4);
    return 0;
}

static int read_file(const char *path, int must, oai_config *c, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (!must && errno == ENOENT)
            return 0;
        return mq_errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(fp), &st) || !S_ISREG(st.st_mode) || st.st_size > MAX_CONFIG_BYTES) {
        fclose(fp);
        return mq_errmsg(err, errlen, -EINVAL, "%s: not a regular file of at most %u bytes", path, MAX_CONFIG_BYTES);
    }
    char *buf = calloc(1, (size_t)st.st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, fp) : 0;
    fclose(fp);
    if (!buf)
        return mq_errmsg(err, errlen, -ENOMEM, "%s: out of memory", path);
    int rc = oai_config_parse_json(c, buf, n, path, err, errlen);
    free(buf);
    return rc;
}

int oai_config_parse_json(oai_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return mq_errmsg(err, errlen, -EINVAL, "%s: not a JSON object", name);
    }
    int rc = 0;
    char where[300];
    snprintf(where, sizeof where, "%s: ", name);
    for (const cJSON *it = j->child; it && !rc; it = it->next) {
        const field *f = find(it->string);
        if (!f)
            rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: unknown setting", where, it->string);
        else if (f->is_str ? !cJSON_IsString(it) : !cJSON_IsNumber(it))
            rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be a %s", where, it->string,
                           f->is_str ? "string" : "number");
        else if (f->is_str)
            rc = set(c, f, it->valuestring, where, err, errlen);
        else {
            char v[32];
            snprintf(v, sizeof v, "%.0f", it->valuedouble);
            /* floor, not a cast: converting a double outside long long's range is undefined;
             * an integral value too large is refused by set() */
            rc = it->valuedouble != floor(it->valuedouble)
                     ? mq_errmsg(err, errlen, -EINVAL, "%s%s: must be an integer", where, it->string)
                     : set(c, f, v, where, err, errlen);
        }
    }
    cJSON_Delete(j);
    return rc;
}

int oai_config_parse(oai_config *c, int argc, char **argv, int *check, int *help, char *err, size_t errlen)
{
    oai_config_default(c);
    *check = *help = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc)
                return mq_errmsg(err, errlen, -EINVAL, "--config: needs a path");
            path = argv[++i];
        }
    int rc = read_file(path ? path : DEFAULT_PATH, path != NULL, c, err, errlen);
    if (rc)
        return rc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strcmp(a, "--check-config")) {
            *check = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = 1;
            continue;
        }
        const field *f = strncmp(a, "--", 2) ? NULL : find(a + 2);
        if (!f)
            return mq_errmsg(err, errlen, -EINVAL, "%s: unknown option (see --help)", a);
        if (i + 1 >= argc)
            return mq_errmsg(err, errlen, -EINVAL, "%s: needs a value", a);
        rc = set(c, f, argv[++i], "--", err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

int oai_config_validate(const oai_config *c, char *err, size_t errlen)
{
    const char *colon = strrchr(c->listen, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == c->listen || port < 1 || port > 65535 || *end)
        return mq_errmsg(err, errlen, -EINVAL, "listen: \"%s\" is not host:port", c->listen);
    if (strcmp(c->think_history, "template") && strcmp(c->think_history, "as_generated"))
        return mq_errmsg(err, errlen, -EINVAL, "think_history: \"%s\" is not \"template\" or \"as_generated\"",
                         c->think_history);
    oai_keys *k = NULL;
    int rc = oai_keys_load(&k, c->api_keys_file, err, errlen); /* readable, and every line a key [tenant] */
    oai_keys_free(k);
    return rc;
}

void oai_config_usage(FILE *f)
{
    fprintf(f, "usage: mq-openai [--config FILE] [--check-config] [--SETTING VALUE]...\n"
               "OpenAI-compatible HTTP server in front of mqd (a libmq client).\n\nSettings (file keys or flags):\n");
    for (size_t i = 0; i < N_FIELDS; i++)
        fprintf(f, "  --%-20s %s\n", fields[i].name, fields[i].help);
}
