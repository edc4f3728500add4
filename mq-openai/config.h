/* mq-openai/config.h — mq-openai's configuration: a JSON file and command-line flags.
 *
 * Owns: the settings, their defaults and bounds, and their one-line help. Every setting
 * can be given in the file (--config, default /etc/mq/mq-openai.json if it exists) and as
 * a flag (--listen 127.0.0.1:8000, underscores or dashes); flags win. An unknown key or
 * flag, a value out of bounds or an unreadable or malformed api_keys_file is an error that
 * names it.
 *
 * Who calls it: main.c (start-up, --check-config), tests. Thread rules: none (start-up).
 */
#ifndef MQ_OPENAI_CONFIG_H
#define MQ_OPENAI_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OAI_CFG_STR 256

typedef struct oai_config {
    char listen[OAI_CFG_STR];        /* host:port, ignored under socket activation */
    char mqd_socket[OAI_CFG_STR];    /* mqd's client socket ("" = $MQ_SOCKET or default) */
    char model_name[OAI_CFG_STR];    /* the model id served ("" = mqd's model name) */
    char api_keys_file[OAI_CFG_STR]; /* a key [and its tenant] per line, keys.h ("" = none) */
    uint32_t max_body_kib;           /* request bodies larger are refused (413) */
    uint32_t max_connections;        /* HTTP connections at once */
    uint32_t idle_timeout_s;         /* an HTTP connection idle this long is closed */
    uint32_t max_requests;           /* requests running at once (mqd connections) */
    uint32_t queue_wait_ms;          /* a request waits this long for a slot, then 429 */
    uint32_t default_max_tokens;     /* when the request gives none */
    uint32_t max_sessions;           /* pinned conversations kept */
    uint32_t session_idle_s;         /* a pinned conversation idle this long is closed */
    char think_history[OAI_CFG_STR]; /* "template" or "as_generated": request.h, mq.think_history */
} oai_config;

void oai_config_default(oai_config *c);
/* Reads the file (--config or the default path) and then the flags of argv (argv[0] is
 * the program). *check gets 1 for --check-config, *help 1 for --help. */
int oai_config_parse(oai_config *c, int argc, char **argv, int *check, int *help, char *err, size_t errlen);
/* Applies a JSON object's settings (the config file's text; `name` stands for the file
 * in messages) on top of *c. For oai_config_parse and the fuzz target. */
int oai_config_parse_json(oai_config *c, const char *text, size_t len, const char *name, char *err, size_t errlen);
/* Checks what needs the file system (the keys file). */
int oai_config_validate(const oai_config *c, char *err, size_t errlen);
void oai_config_usage(FILE *f);

#endif
