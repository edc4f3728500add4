/* mq-openai/keys.h — API keys and the mqd tenants they stand for.
 *
 * Owns: the keys of api_keys_file. One key per line, optionally followed by a tenant name
 * after spaces or tabs; blank lines and lines starting with # are skipped:
 *     sk-4f1c...e9        team-a
 *     sk-77aa...01        team-a      (two keys of one tenant share its cache and limits)
 *     sk-90b2...5c                    (a tenant of its own: "key-" + 16 characters of the
 *                                      key's SHA-256-crypt hash, stable and not the key)
 * A tenant name is 1..63 characters of [A-Za-z0-9._@+-]. With keys, each request runs in
 * its key's tenant in mqd (libmq mq_open_tenant_session): mqd keeps tenants apart as it
 * keeps local users apart (prefix cache, per-uid limits). Without keys, every request is
 * mq-openai's own uid: one tenant.
 *
 * Who calls it: http.c (start-up, every /v1 request), config.c (--check-config), the unit
 * test. Thread rules: read-only after oai_keys_load.
 */
#ifndef MQ_OPENAI_KEYS_H
#define MQ_OPENAI_KEYS_H

#include <stddef.h>

#define OAI_KEYS_MAX     256
#define OAI_KEY_MAX_LEN  256
#define OAI_TENANT_MAX   63
#define OAI_TENANT_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-"

typedef struct oai_keys oai_keys;

/* Reads path; an empty path gives *out = NULL (no authentication). Errors name the file
 * and line (never the key). */
int oai_keys_load(oai_keys **out, const char *path, char *err, size_t errlen);
/* The same from text (unit test); `name` stands for the file in messages. */
int oai_keys_parse(oai_keys **out, const char *text, const char *name, char *err, size_t errlen);
void oai_keys_free(oai_keys *k);

/* The index of the presented key, or -1. Every key is compared over its whole length
 * whatever matched before (the time does not tell which key, or how much of it, matched). */
int oai_keys_find(const oai_keys *k, const char *key, size_t len);
/* The tenant of key i (never NULL). */
const char *oai_keys_tenant(const oai_keys *k, int i);
int oai_keys_count(const oai_keys *k);

#endif
