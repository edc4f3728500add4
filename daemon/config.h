/* daemon/config.h — mqd's configuration: a JSON file, overridden by command-line flags.
 *
 * Owns: the mqd_config struct (plain values, no heap), its defaults, the JSON reader (cJSON),
 * the flag reader and the validation. Every field is described once in a table in
 * config.c (name, type, bounds, allowed words, help); the JSON keys, the flags
 * (`--kv-tokens 65536` sets "kv_tokens"), `mqd --help` and `mqctl config` all come from it.
 * An unknown key, a wrong type or a value out of bounds is an error whose message names
 * the field (and the file).
 *
 * Who calls it: daemon/main.c at start-up and on SIGHUP (reload), `mqd --check-config`,
 * tests/fuzz/fuzz_config.c. Thread rules: plain data; the daemon's context owns the copy.
 */
#ifndef MQ_DAEMON_CONFIG_H
#define MQ_DAEMON_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/seccomp.h"
#include "engine/model.h"
#include "engine/prec_mode.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MQ_CFG_PATH     4096
#define MQ_CFG_NAME     64
#define MQ_CFG_LIST     16          /* entries in allowed_users / allowed_groups */
#define MQ_CFG_U32_AUTO 0xffffffffu /* a number field given as "auto" (hugepages_reserve) */

enum mq_cfg_on_full { MQ_CFG_ON_FULL_WAIT = 0, MQ_CFG_ON_FULL_FAIL = 1 };
enum mq_cfg_huge { MQ_CFG_HUGE_AUTO = 0, MQ_CFG_HUGE_OFF = 1, MQ_CFG_HUGE_REQUIRE = 2 };

typedef struct mqd_config {
    char model_dir[MQ_CFG_PATH];
    mq_prec_mode mode;
    uint32_t prefill_threads; /* 0 = number of CPUs in prefill_cpus (or online CPUs) */
    uint32_t decode_threads;
    char prefill_cpus[MQ_CFG_NAME]; /* "0-3,6" or "" = all */
    char decode_cpus[MQ_CFG_NAME];
    uint32_t chunk_tokens;    /* prefill chunk: bounds the decode stall */
    uint32_t ctx_tokens;      /* per-session context limit; 0 = the model's */
    uint32_t kv_tokens;       /* KV store capacity in tokens (all sessions) */
    uint32_t kv_block_tokens; /* tokens per KV block */
    uint32_t on_full;         /* mq_cfg_on_full */
    mq_fp4_pack fp4_pack;
    mq_fp4_pack fp4_table;      /* the packed copy's table form (auto/on/off, mq_fp4_pack) */
    uint32_t hugepages;         /* mq_cfg_huge */
    uint32_t hugepages_reserve; /* 2 MiB pages mqd reserves when started as root; 0 = none;
                                * MQ_CFG_U32_AUTO ("auto") = what weights + KV need */
    uint32_t io_depth;          /* reads in flight while loading weights */
    uint32_t io_read_kib;       /* size of one read */
    uint32_t max_sessions;      /* all clients */
    uint32_t max_sessions_per_client;
    uint32_t queue_max; /* queued requests before MQ_ERR_LIMIT */
    /* per user (the client's uid; 0 = only the global limit): one local user cannot take
     * every session, queue slot or KV block from the others */
    uint32_t max_sessions_per_uid;
    uint32_t queue_max_per_uid;
    uint32_t kv_tokens_per_uid;
    uint32_t prompt_ring_kib; /* per-client prompt ring (power of two) */
    uint32_t token_ring_kib;  /* per-client token ring (power of two) */
    char client_socket[MQ_CFG_PATH];
    char admin_socket[MQ_CFG_PATH];
    char allowed_users[MQ_CFG_LIST][MQ_CFG_NAME]; /* "" ends; none = everyone */
    char allowed_groups[MQ_CFG_LIST][MQ_CFG_NAME];
    /* clients that may open sessions for a tenant they name (a front such as mq-openai
     * serving many users through one connection); "" ends; none = nobody */
    char trusted_fronts[MQ_CFG_LIST][MQ_CFG_NAME];
    char trusted_front_groups[MQ_CFG_LIST][MQ_CFG_NAME];
    char admin_group[MQ_CFG_NAME]; /* "" = root only */
    char user[MQ_CFG_NAME];        /* run-as user; required when started as root ("root" = stay) */
    uint32_t drain_timeout_ms;
    uint32_t watchdog;             /* 1: send WATCHDOG=1 when systemd asks for it */
    uint32_t warmup;               /* 1: one short generation before READY=1 */
    uint32_t share_prefix_cache;   /* 1: one prefix cache for every uid; 0: per uid (a cached
                                  * prompt of one user is no hit, and no timing signal, for another) */
    enum mqd_seccomp_mode seccomp; /* the system-call allow-list after the drop */
} mqd_config;

void mqd_config_defaults(mqd_config *c);

/* Applies a JSON object's fields on top of *c. `name` (file name) prefixes messages. */
int mqd_config_parse_json(mqd_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen);
int mqd_config_load_file(mqd_config *c, const char *path, char *err, size_t errlen);

/* Sets one field from a string (a flag's value): "kv_tokens"/"kv-tokens", "65536".
 * Lists take comma-separated words. -ENOENT for an unknown field. */
int mqd_config_set(mqd_config *c, const char *key, const char *value, char *err, size_t errlen);

/* Defaults, then --config FILE (path copied to config_path, "" if none), then every other
 * "--name value" / "--name=value" flag on top (--model = --model-dir). check_only/help
 * (may be NULL) report --check-config / --help. */
int mqd_config_parse_args(mqd_config *cfg, char *config_path, size_t pathlen, int argc, char *const *argv,
                          int *check_only, int *help, char *err, size_t errlen);

/* Reload: copies next's live fields (the table in config.c says which) into *now, their
 * names into `applied` (", "-separated), and returns how many other fields differ (their
 * values stay: they need a restart), the first max_restart of their names in restart[]. */
int mqd_config_apply_live(mqd_config *now, const mqd_config *next, const char **restart, int max_restart, char *applied,
                          size_t applied_len);

/* Cross-field checks (model_dir present, block size divides, ring sizes, ...). */
int mqd_config_validate(const mqd_config *c, char *err, size_t errlen);

/* Checks against this machine what start-up would otherwise refuse later: model_dir a
 * folder holding config.json, tokenizer.json and model.safetensors (or its index), each
 * a regular file; the CPU lists within the CPUs this process may run on; pool threads
 * within their CPUs. Users and groups are privs.c's (mqd_resolve_ids). Start-up and
 * `mqd --check-config` both run it; the message names the field. */
int mqd_config_check_host(const mqd_config *c, char *err, size_t errlen);

/* The whole configuration as a JSON object text (malloc'ed), for `mqctl config` and
 * `mqd --check-config`. NULL on ENOMEM. */
char *mqd_config_to_json(const mqd_config *c);

/* Writes the flag/field list with help texts (for mqd --help). */
void mqd_config_print_help(void *file /* FILE* */);

#ifdef __cplusplus
}
#endif
#endif
