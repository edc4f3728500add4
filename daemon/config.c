/* daemon/config.c — table-driven config: JSON file, flags, validation (see config.h). */
#define _GNU_SOURCE
#include "common/errmsg.h"
#include "common/file.h"
#include "daemon/config.h"
#include "engine/weight_stream.h"

/* Messages are cut to their buffers on purpose. */

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_CONFIG_BYTES (1u << 20)

enum ftype { F_STR, F_U32, F_BOOL, F_ENUM, F_LIST };

static const char *const on_full_words[] = { "wait", "fail", NULL };
static const char *const huge_words[] = { "auto", "off", "require", NULL };
/* an enum field's words: indexed by the enum's values, which the field stores */
static const char *const fp4_pack_words[] = {
    [MQ_FP4_PACK_AUTO] = "auto", [MQ_FP4_PACK_ON] = "on", [MQ_FP4_PACK_OFF] = "off", NULL
};
static const char *const seccomp_words[] = {
    [MQD_SECCOMP_ON] = "on", [MQD_SECCOMP_KILL] = "kill", [MQD_SECCOMP_OFF] = "off", NULL
};

typedef struct field {
    const char *name;
    enum ftype t;
    size_t off, size;
    uint32_t min, max;
    const char *const *words;
    const char *help;
    const char *auto_word; /* F_U32: this string stands for MQ_CFG_U32_AUTO */
    int live;              /* a reload applies it to the running mqd; other fields need a restart */
} field;

/* A field's macro takes LIVE as an optional last argument: a reload applies the field.
 * (0 + __VA_ARGS__ + 0) is 0 without it (unary plus) and 1 with it. */
#define LIVE 1

#define STR(n, h, ...)                                                                                               \
    {                                                                                                                \
#n, F_STR, offsetof(mqd_config, n), sizeof(((mqd_config *)0)->n), 0, 0, NULL, h, NULL, (0 + __VA_ARGS__ + 0) \
    }
#define U32(n, lo, hi, h, ...)                                                              \
    {                                                                                       \
#n, F_U32, offsetof(mqd_config, n), 4, lo, hi, NULL, h, NULL, (0 + __VA_ARGS__ + 0) \
    }
#define U32_AUTO(n, lo, hi, h, ...)                                                           \
    {                                                                                         \
#n, F_U32, offsetof(mqd_config, n), 4, lo, hi, NULL, h, "auto", (0 + __VA_ARGS__ + 0) \
    }
#define BOOL(n, h, ...)                                                                    \
    {                                                                                      \
#n, F_BOOL, offsetof(mqd_config, n), 4, 0, 1, NULL, h, NULL, (0 + __VA_ARGS__ + 0) \
    }
/* an enum field is written as an unsigned int (GCC's type for enums without negative
 * values); the array size fails to compile for an enum of another size */
#define ENUM_SIZE(n) sizeof(char[sizeof(((mqd_config *)0)->n) == sizeof(unsigned) ? sizeof(unsigned) : -1])
#define ENUM(n, w, h, ...)                                                                         \
    {                                                                                              \
#n, F_ENUM, offsetof(mqd_config, n), ENUM_SIZE(n), 0, 0, w, h, NULL, (0 + __VA_ARGS__ + 0) \
    }
#define LIST(n, h, ...)                                                                    \
    {                                                                                      \
#n, F_LIST, offsetof(mqd_config, n), 0, 0, 0, NULL, h, NULL, (0 + __VA_ARGS__ + 0) \
    }

static const field fields[] = {
    STR(model_dir, "model folder (config.json, model.safetensors, tokenizer.json)"),
    ENUM(mode, mq_prec_mode_names, "mixed = NVFP4 prefill + BF16 decode; bf16; fp4"),
    U32(prefill_threads, 0, 1024, "prefill pool threads (0 = CPUs of prefill_cpus)"),
    U32(decode_threads, 0, 1024, "decode pool threads (0 = CPUs of decode_cpus)"),
    STR(prefill_cpus, "CPU list of the prefill pool, e.g. \"0-3\" (\"\" = all)"),
    STR(decode_cpus, "CPU list of the decode pool (\"\" = all)"),
    U32(chunk_tokens, 16, 65536, "prefill chunk in tokens (bounds the decode stall)"),
    U32(ctx_tokens, 0, 1u << 20, "context limit per session in tokens (0 = the model's)"),
    U32(kv_tokens, 256, 1u << 26, "KV store capacity in tokens, all sessions"),
    U32(kv_block_tokens, 1, 4096, "tokens per KV block"),
    ENUM(on_full, on_full_words, "KV store full: wait for blocks, or fail the request"),
    ENUM(fp4_pack, fp4_pack_words,
         "packed NVFP4 copy for a faster prefill, +1.25 bytes per weight: auto (when memory allows), on, off"),
    ENUM(fp4_table, fp4_pack_words,
         "that copy's form: table (+3 bytes per weight; faster only for chunks over 256 tokens) "
         "when auto and memory allows or on, else index"),
    ENUM(hugepages, huge_words, "huge pages for weights and KV: auto, off, require (start fails without)"),
    U32_AUTO(hugepages_reserve, 0, 1u << 20, "2 MiB pages to reserve when started as root (auto = weights + KV)"),
    U32(io_depth, 1, 256, "weight reads in flight"),
    U32(io_read_kib, 4, 1u << 20, "size of one weight read in KiB"),
    U32(max_sessions, 1, 1u << 20, "sessions of all clients"),
    U32(max_sessions_per_client, 1, 1u << 16, "sessions of one connection"),
    U32(queue_max, 1, 1u << 20, "queued requests before new ones are refused"),
    U32(max_sessions_per_uid, 0, 1u << 20, "sessions of one user, all connections (0 = only max_sessions)"),
    U32(queue_max_per_uid, 0, 1u << 20, "queued requests of one user (0 = only queue_max)"),
    U32(kv_tokens_per_uid, 0, 1u << 26, "KV tokens one user's sessions may hold (0 = only kv_tokens)"),
    U32(prompt_ring_kib, 4, 1u << 18, "per-client prompt ring in KiB (power of two)"),
    U32(token_ring_kib, 4, 1u << 18, "per-client token ring in KiB (power of two)"),
    STR(client_socket, "client socket path (when not socket-activated)"),
    STR(admin_socket, "admin socket path (when not socket-activated)"),
    LIST(allowed_users, "users allowed on the client socket (empty = everyone)", LIVE),
    LIST(allowed_groups, "groups allowed on the client socket (empty = everyone)", LIVE),
    LIST(trusted_fronts, "users whose sessions may name a tenant (fronts such as mq-openai; empty = nobody)", LIVE),
    LIST(trusted_front_groups, "groups whose members' sessions may name a tenant (empty = nobody)", LIVE),
    STR(admin_group, "group allowed on the admin socket besides root", LIVE),
    STR(user, "user to serve as after set-up; required when started as root (\"root\" = stay root, loudly)"),
    U32(drain_timeout_ms, 0, 3600000, "SIGTERM: time running requests get to finish", LIVE),
    BOOL(watchdog, "feed the systemd watchdog while both pools make progress", LIVE),
    BOOL(warmup, "run one short generation before announcing READY"),
    BOOL(share_prefix_cache, "let users reuse each other's cached prompt prefixes (default: each uid its own)"),
    ENUM(seccomp, seccomp_words,
         "system calls outside mqd's list: on = fail with EPERM and are logged, kill = kill mqd, off = allowed"),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

void mqd_config_defaults(mqd_config *c)
{
    memset(c, 0, sizeof *c);
    c->mode = MQ_PREC_MODE_MIXED;
    c->chunk_tokens = 256;
    c->kv_tokens = 65536;
    c->kv_block_tokens = 16;
    c->on_full = MQ_CFG_ON_FULL_FAIL;
    c->hugepages = MQ_CFG_HUGE_AUTO;
    mq_ws_opts wo; /* the weight stream's defaults are the one place for these two */
    mq_ws_opts_default(&wo);
    c->io_depth = (uint32_t)wo.queue_depth;
    c->io_read_kib = (uint32_t)(wo.read_bytes / 1024);
    c->max_sessions = 256;
    c->max_sessions_per_client = 64;
    c->queue_max = 256;
    c->prompt_ring_kib = 1024;
    c->token_ring_kib = 1024;
    snprintf(c->client_socket, sizeof c->client_socket, "/run/mq/client.sock");
    snprintf(c->admin_socket, sizeof c->admin_socket, "/run/mq/admin.sock");
    c->drain_timeout_ms = 30000;
    c->watchdog = 1;
    c->warmup = 1;
}

/* Whether field f holds the same value in a and b (strings and lists up to their end). */
static int field_equal(const field *f, const mqd_config *a, const mqd_config *b)
{
    const char *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;
    switch (f->t) {
    case F_STR: return !strcmp(pa, pb);
    case F_LIST:
        for (int i = 0; i < MQ_CFG_LIST; i++, pa += MQ_CFG_NAME, pb += MQ_CFG_NAME) {
            if (strcmp(pa, pb))
                return 0;
            if (!pa[0])
                return 1;
        }
        return 1;
    default: return !memcmp(pa, pb, f->size);
    }
}

static void field_copy(const field *f, mqd_config *to, const mqd_config *from)
{
    size_t n = f->t == F_LIST ? (size_t)MQ_CFG_LIST * MQ_CFG_NAME : f->size;
    memcpy((char *)to + f->off, (const char *)from + f->off, n);
}

int mqd_config_apply_live(mqd_config *now, const mqd_config *next, const char **restart, int max_restart, char *applied,
                          size_t applied_len)
{
    int n = 0;
    if (applied_len)
        applied[0] = 0;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        if (f->live) {
            field_copy(f, now, next);
            size_t l = strlen(applied);
            snprintf(applied + l, applied_len - l, "%s%s", l ? ", " : "", f->name);
        } else if (!field_equal(f, now, next)) {
            if (n < max_restart)
                restart[n] = f->name;
            n++;
        }
    }
    return n;
}

static const field *find(const char *key)
{
    char k[64];
    size_t n = strlen(key);
    if (n >= sizeof k)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        k[i] = key[i] == '-' ? '_' : key[i];
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].name, k))
            return &fields[i];
    return NULL;
}

static int set_str(mqd_config *c, const field *f, const char *v, const char *where, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n >= f->size)
        return mq_errmsg(err, errlen, -EINVAL, "%s%s: %zu bytes, at most %zu", where, f->name, n, f->size - 1);
    memcpy((char *)c + f->off, v, n + 1);
    return 0;
}

static int set_word(mqd_config *c, const field *f, const char *v, const char *where, char *err, size_t errlen)
{
    for (uint32_t i = 0; f->words[i]; i++)
        if (!strcmp(f->words[i], v)) {
            *(uint32_t *)((char *)c + f->off) = i;
            return 0;
        }
    char allowed[128] = "";
    for (int i = 0; f->words[i]; i++)
        snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s", i ? ", " : "", f->words[i]);
    return mq_errmsg(err, errlen, -EINVAL, "%s%s: \"%.64s\" is not one of %s", where, f->name, v, allowed);
}

static int set_u32(mqd_config *c, const field *f, double v, const char *where, char *err, size_t errlen)
{
    /* the range first: converting a double outside long long's range (1e309, inf, NaN)
     * to an integer is undefined */
    if (!(v >= f->min && v <= f->max) || v != (double)(uint32_t)v)
        return mq_errmsg(err, errlen, -EINVAL, "%s%s: %g is not an integer in [%u, %u]", where, f->name, v, f->min,
                         f->max);
    *(uint32_t *)((char *)c + f->off) = (uint32_t)v;
    return 0;
}

static int list_add(char (*list)[MQ_CFG_NAME], int idx, const char *v, const field *f, const char *where, char *err,
                    size_t errlen)
{
    if (idx >= MQ_CFG_LIST)
        return mq_errmsg(err, errlen, -EINVAL, "%s%s: more than %d entries", where, f->name, MQ_CFG_LIST);
    size_t n = strlen(v);
    if (n == 0 || n >= MQ_CFG_NAME)
        return mq_errmsg(err, errlen, -EINVAL, "%s%s[%d]: name of %zu bytes (1..%d allowed)", where, f->name, idx, n,
                         MQ_CFG_NAME - 1);
    memcpy(list[idx], v, n + 1);
    if (idx + 1 < MQ_CFG_LIST)
        list[idx + 1][0] = 0;
    return 0;
}

int mqd_config_parse_json(mqd_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    char where[300];
    snprintf(where, sizeof where, "%s: ", name ? name : "config");
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        return mq_errmsg(err, errlen, -EINVAL, "%snot valid JSON (near byte %ld)", where, off);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = mq_errmsg(err, errlen, -EINVAL, "%sthe top level must be an object", where);
        goto out;
    }
    unsigned char seen[N_FIELDS] = { 0 };
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        const field *f = it->string ? find(it->string) : NULL;
        if (!f || strchr(it->string, '-')) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%sunknown field \"%.64s\"", where, it->string ? it->string : "");
            break;
        }
        /* a field given twice is ambiguous (JSON leaves it open; cJSON keeps both) */
        if (seen[f - fields]++) {
            rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: given twice", where, f->name);
            break;
        }
        switch (f->t) {
        case F_STR:
            if (!cJSON_IsString(it))
                rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be a string", where, f->name);
            else
                rc = set_str(c, f, it->valuestring, where, err, errlen);
            break;
        case F_ENUM:
            if (!cJSON_IsString(it))
                rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be a string", where, f->name);
            else
                rc = set_word(c, f, it->valuestring, where, err, errlen);
            break;
        case F_U32:
            if (f->auto_word && cJSON_IsString(it) && !strcmp(it->valuestring, f->auto_word))
                *(uint32_t *)((char *)c + f->off) = MQ_CFG_U32_AUTO;
            else if (!cJSON_IsNumber(it))
                rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be a number%s%s", where, f->name,
                               f->auto_word ? " or " : "", f->auto_word ? f->auto_word : "");
            else
                rc = set_u32(c, f, it->valuedouble, where, err, errlen);
            break;
        case F_BOOL:
            if (!cJSON_IsBool(it))
                rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be true or false", where, f->name);
            else
                *(uint32_t *)((char *)c + f->off) = cJSON_IsTrue(it) ? 1 : 0;
            break;
        case F_LIST: {
            if (!cJSON_IsArray(it)) {
                rc = mq_errmsg(err, errlen, -EINVAL, "%s%s: must be an array of names", where, f->name);
                break;
            }
            char(*list)[MQ_CFG_NAME] = (char(*)[MQ_CFG_NAME])((char *)c + f->off);
            list[0][0] = 0;
            int i = 0;
            for (cJSON *e = it->child; e && !rc; e = e->next, i++) {
                if (!cJSON_IsString(e))
                    rc = mq_errmsg(err, errlen, -EINVAL, "%s%s[%d]: must be a string", where, f->name, i);
                else
                    rc = list_add(list, i, e->valuestring, f, where, err, errlen);
            }
            break;
        }
        }
    }
out:
    cJSON_Delete(root);
    return rc;
}

int mqd_config_load_file(mqd_config *c, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mq_errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size > MAX_CONFIG_BYTES) {
        close(fd);
        return mq_errmsg(err, errlen, -EFBIG, "%s: not a regular file of at most %u bytes", path, MAX_CONFIG_BYTES);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    int rc = mqd_config_parse_json(c, buf, got, path, err, errlen);
    free(buf);
    return rc;
}

int mqd_config_set(mqd_config *c, const char *key, const char *value, char *err, size_t errlen)
{
    const field *f = find(key);
    if (!f)
        return mq_errmsg(err, errlen, -ENOENT, "unknown option --%s", key);
    const char *where = "--";
    switch (f->t) {
    case F_STR: return set_str(c, f, value, where, err, errlen);
    case F_ENUM: return set_word(c, f, value, where, err, errlen);
    case F_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
            *(uint32_t *)((char *)c + f->off) = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
            *(uint32_t *)((char *)c + f->off) = 0;
        else
            return mq_errmsg(err, errlen, -EINVAL, "--%s: \"%.32s\" is not true/false", f->name, value);
        return 0;
    case F_U32: {
        if (f->auto_word && !strcmp(value, f->auto_word)) {
            *(uint32_t *)((char *)c + f->off) = MQ_CFG_U32_AUTO;
            return 0;
        }
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-')
            return mq_errmsg(err, errlen, -EINVAL, "--%s: \"%.32s\" is not a number", f->name, value);
        return set_u32(c, f, (double)v, where, err, errlen);
    }
    case F_LIST: {
        char(*list)[MQ_CFG_NAME] = (char(*)[MQ_CFG_NAME])((char *)c + f->off);
        list[0][0] = 0;
        char tmp[MQ_CFG_LIST * MQ_CFG_NAME];
        snprintf(tmp, sizeof tmp, "%s", value);
        int i = 0;
        for (char *save, *tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save), i++) {
            int rc = list_add(list, i, tok, f, where, err, errlen);
            if (rc)
                return rc;
        }
        return 0;
    }
    }
    return -EINVAL;
}

static int valid_cpu_list(const char *s)
{
    /* "" or comma-separated N or N-M */
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10);
        if (end == s || a < 0 || a > 4095)
            return 0;
        s = end;
        if (*s == '-') {
            long b = strtol(s + 1, &end, 10);
            if (end == s + 1 || b < a || b > 4095)
                return 0;
            s = end;
        }
        if (*s == ',')
            s++;
        else if (*s)
            return 0;
    }
    return 1;
}

int mqd_config_validate(const mqd_config *c, char *err, size_t errlen)
{
    if (!c->model_dir[0])
        return mq_errmsg(err, errlen, -EINVAL, "model_dir: not set (config file or --model-dir)");
    if (!valid_cpu_list(c->prefill_cpus))
        return mq_errmsg(err, errlen, -EINVAL, "prefill_cpus: \"%s\" is not a CPU list like 0-3,6", c->prefill_cpus);
    if (!valid_cpu_list(c->decode_cpus))
        return mq_errmsg(err, errlen, -EINVAL, "decode_cpus: \"%s\" is not a CPU list like 0-3,6", c->decode_cpus);
    if (c->kv_tokens % c->kv_block_tokens)
        return mq_errmsg(err, errlen, -EINVAL, "kv_tokens: %u is not a multiple of kv_block_tokens (%u)", c->kv_tokens,
                         c->kv_block_tokens);
    if (c->ctx_tokens && c->ctx_tokens > c->kv_tokens)
        return mq_errmsg(err, errlen, -EINVAL, "ctx_tokens: %u is more than kv_tokens (%u)", c->ctx_tokens,
                         c->kv_tokens);
    if (c->prompt_ring_kib & (c->prompt_ring_kib - 1))
        return mq_errmsg(err, errlen, -EINVAL, "prompt_ring_kib: %u is not a power of two", c->prompt_ring_kib);
    if (c->token_ring_kib & (c->token_ring_kib - 1))
        return mq_errmsg(err, errlen, -EINVAL, "token_ring_kib: %u is not a power of two", c->token_ring_kib);
    if (c->max_sessions_per_uid > c->max_sessions)
        return mq_errmsg(err, errlen, -EINVAL, "max_sessions_per_uid: %u is more than max_sessions (%u)",
                         c->max_sessions_per_uid, c->max_sessions);
    if (c->queue_max_per_uid > c->queue_max)
        return mq_errmsg(err, errlen, -EINVAL, "queue_max_per_uid: %u is more than queue_max (%u)",
                         c->queue_max_per_uid, c->queue_max);
    if (c->kv_tokens_per_uid > c->kv_tokens || c->kv_tokens_per_uid % c->kv_block_tokens)
        return mq_errmsg(err, errlen, -EINVAL,
                         "kv_tokens_per_uid: %u must be at most kv_tokens (%u) and a multiple of kv_block_tokens (%u)",
                         c->kv_tokens_per_uid, c->kv_tokens, c->kv_block_tokens);
    if (c->max_sessions_per_client > c->max_sessions)
        return mq_errmsg(err, errlen, -EINVAL, "max_sessions_per_client: %u is more than max_sessions (%u)",
                         c->max_sessions_per_client, c->max_sessions);
    if (!c->client_socket[0] || c->client_socket[0] != '/' || strlen(c->client_socket) > 107)
        return mq_errmsg(err, errlen, -EINVAL, "client_socket: \"%s\" must be an absolute path of at most 107 bytes",
                         c->client_socket);
    if (!c->admin_socket[0] || c->admin_socket[0] != '/' || strlen(c->admin_socket) > 107)
        return mq_errmsg(err, errlen, -EINVAL, "admin_socket: \"%s\" must be an absolute path of at most 107 bytes",
                         c->admin_socket);
    if (!strcmp(c->client_socket, c->admin_socket))
        return mq_errmsg(err, errlen, -EINVAL, "admin_socket: same path as client_socket");
    return 0;
}

/* ---- checks against this machine -------------------------------------------------- */
/* The CPUs this process may run on, as a list for messages ("0-1"). */
static void cpu_set_text(const cpu_set_t *set, char *buf, size_t len)
{
    buf[0] = 0;
    size_t n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < len; c++) {
        if (!CPU_ISSET(c, set))
            continue;
        int e = c;
        while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
            e++;
        n += (size_t)snprintf(buf + n, len - n, e > c ? "%s%d-%d" : "%s%d", n ? "," : "", c, e);
        c = e;
    }
}

/* A pool's CPU list within the CPUs of this process, and its thread count within that
 * list: more compute threads than CPUs only contend for them. */
static int check_pool(const char *name, const char *list, uint32_t threads, const cpu_set_t *avail, char *err,
                      size_t errlen)
{
    char have[128];
    cpu_set_text(avail, have, sizeof have);
    int n = 0;
    for (const char *s = list; *s;) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (*end == '-')
            b = strtol(end + 1, &end, 10);
        for (long c = a; c <= b; c++) {
            if (c >= CPU_SETSIZE || !CPU_ISSET((int)c, avail))
                return mq_errmsg(err, errlen, -EINVAL, "%s_cpus: CPU %ld is not one mqd may run on here (%s)", name, c,
                                 have);
            n++;
        }
        s = *end == ',' ? end + 1 : end;
    }
    if (!n)
        n = CPU_COUNT(avail);
    if (threads > (uint32_t)n)
        return mq_errmsg(err, errlen, -EINVAL, "%s_threads: %u threads for %d CPU(s) (%s); at most %d", name, threads,
                         n, list[0] ? list : have, n);
    return 0;
}

int mqd_config_check_host(const mqd_config *c, char *err, size_t errlen)
{
    struct stat st;
    if (stat(c->model_dir, &st) < 0)
        return mq_errmsg(err, errlen, -errno, "model_dir: %s: %s", c->model_dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return mq_errmsg(err, errlen, -ENOTDIR, "model_dir: %s is not a directory", c->model_dir);
    /* the files start-up reads, each a regular file (a FIFO would block the load) */
    static const char *const need[] = { "config.json", "tokenizer.json" };
    static const char *const maybe[] = { "tokenizer_config.json", "model.safetensors.index.json", "model.safetensors" };
    char path[MQ_CFG_PATH + 64], e[MQ_ERRMSG_LEN];
    for (size_t i = 0; i < sizeof need / sizeof need[0] + sizeof maybe / sizeof maybe[0]; i++) {
        int required = i < sizeof need / sizeof need[0];
        const char *name = required ? need[i] : maybe[i - sizeof need / sizeof need[0]];
        snprintf(path, sizeof path, "%s/%s", c->model_dir, name);
        if (!required && lstat(path, &st) < 0)
            continue;
        int fd = mq_open_regular(path, 0, e, sizeof e);
        if (fd < 0)
            return mq_errmsg(err, errlen, fd, "model_dir: %s", e);
        close(fd);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", c->model_dir);
    char index[MQ_CFG_PATH + 64];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", c->model_dir);
    if (lstat(path, &st) < 0 && lstat(index, &st) < 0)
        return mq_errmsg(err, errlen, -ENOENT, "model_dir: %s has no model.safetensors (nor its index)", c->model_dir);
    cpu_set_t avail;
    if (sched_getaffinity(0, sizeof avail, &avail) < 0)
        return mq_errmsg(err, errlen, -errno, "sched_getaffinity: %s", strerror(errno));
    int rc = check_pool("prefill", c->prefill_cpus, c->prefill_threads, &avail, err, errlen);
    return rc ? rc : check_pool("decode", c->decode_cpus, c->decode_threads, &avail, err, errlen);
}

char *mqd_config_to_json(const mqd_config *c)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        const char *p = (const char *)c + f->off;
        uint32_t v = 0;
        if (f->t != F_STR && f->t != F_LIST)
            memcpy(&v, p, 4);
        switch (f->t) {
        case F_STR: cJSON_AddStringToObject(o, f->name, p); break;
        case F_ENUM: cJSON_AddStringToObject(o, f->name, f->words[v]); break;
        case F_U32:
            if (f->auto_word && v == MQ_CFG_U32_AUTO)
                cJSON_AddStringToObject(o, f->name, f->auto_word);
            else
                cJSON_AddNumberToObject(o, f->name, v);
            break;
        case F_BOOL: cJSON_AddBoolToObject(o, f->name, v); break;
        case F_LIST: {
            cJSON *a = cJSON_AddArrayToObject(o, f->name);
            const char(*list)[MQ_CFG_NAME] = (const char(*)[MQ_CFG_NAME])p;
            for (int k = 0; a && k < MQ_CFG_LIST && list[k][0]; k++)
                cJSON_AddItemToArray(a, cJSON_CreateString(list[k]));
            break;
        }
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

void mqd_config_print_help(void *file)
{
    FILE *out = file;
    for (size_t i = 0; i < N_FIELDS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", fields[i].name);
        for (char *q = flag + 2; *q; q++)
            if (*q == '_')
                *q = '-';
        fprintf(out, "  %-28s %s\n", flag, fields[i].help);
    }
}
/* ---- configuration from file + flags -------------------------------------------- */
int mqd_config_parse_args(mqd_config *cfg, char *config_path, size_t pathlen, int argc, char *const *argv,
                          int *check_only, int *help, char *err, size_t errlen)
{
    mqd_config_defaults(cfg);
    config_path[0] = 0;
    if (check_only)
        *check_only = 0;
    if (help)
        *help = 0;
    /* The file first, wherever --config appears; then every flag on top of it. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            snprintf(config_path, pathlen, "%s", argv[++i]);
        else if (!strncmp(argv[i], "--config=", 9))
            snprintf(config_path, pathlen, "%s", argv[i] + 9);
    }
    if (config_path[0]) {
        int rc = mqd_config_load_file(cfg, config_path, err, errlen);
        if (rc)
            return rc;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--check-config")) {
            if (check_only)
                *check_only = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (help)
                *help = 1;
            continue;
        }
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9))
            continue;
        if (strncmp(a, "--", 2)) {
            return mq_errmsg(err, errlen, -EINVAL, "unexpected argument \"%s\" (flags are --name value)", a);
        }
        char key[64];
        const char *val;
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(key, sizeof key, "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else {
            snprintf(key, sizeof key, "%s", a + 2);
            if (i + 1 >= argc) {
                return mq_errmsg(err, errlen, -EINVAL, "flag %s needs a value", a);
            }
            val = argv[++i];
        }
        /* --model is the common short form of --model-dir */
        int rc = mqd_config_set(cfg, strcmp(key, "model") ? key : "model_dir", val, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}
