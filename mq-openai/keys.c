/* mq-openai/keys.c — API keys and their tenants (keys.h). */
#define _GNU_SOURCE
#include "mq-openai/keys.h"

#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/errmsg.h"

/* SHA-256-crypt with a fixed salt: a stable name that does not give the key away (and costs
 * a guesser 5000 rounds per try), computed once per key at start-up. */
#define TENANT_HASH_SETTING "$5$rounds=5000$mq-openai-tenant$"
#define TENANT_HASH_CHARS   16

struct oai_keys {
    int n;
    char *key[OAI_KEYS_MAX];
    size_t len[OAI_KEYS_MAX];
    char tenant[OAI_KEYS_MAX][OAI_TENANT_MAX + 1];
};

void oai_keys_free(oai_keys *k)
{
    if (!k)
        return;
    for (int i = 0; i < k->n; i++) {
        explicit_bzero(k->key[i], k->len[i]);
        free(k->key[i]);
    }
    free(k);
}

static int default_tenant(const char *key, char *out, size_t len)
{
    struct crypt_data *cd = calloc(1, sizeof *cd);
    const char *h = cd ? crypt_r(key, TENANT_HASH_SETTING, cd) : NULL;
    const char *tail = h && h[0] == '$' ? strrchr(h, '$') : NULL;
    int ok = tail && strlen(tail + 1) >= TENANT_HASH_CHARS;
    if (ok)
        snprintf(out, len, "key-%.*s", TENANT_HASH_CHARS, tail + 1);
    if (cd) {
        explicit_bzero(cd, sizeof *cd);
        free(cd);
    }
    return ok ? 0 : -ENOSYS;
}

/* One line (NUL-terminated, no newline): its key and tenant, or nothing. */
static int parse_line(oai_keys *k, char *line, const char *name, int lineno, char *err, size_t errlen)
{
    char *p = line + strspn(line, " \t\r");
    if (!*p || *p == '#')
        return 0;
    size_t kl = strcspn(p, " \t\r");
    char *t = p + kl;
    t += strspn(t, " \t\r");
    size_t tl = strcspn(t, " \t\r");
    if (t[tl + strspn(t + tl, " \t\r")])
        return mq_errmsg(err, errlen, -EINVAL, "api_keys_file: %s:%d: more than a key and a tenant name", name, lineno);
    if (kl > OAI_KEY_MAX_LEN)
        return mq_errmsg(err, errlen, -EINVAL, "api_keys_file: %s:%d: key longer than %d bytes", name, lineno,
                         OAI_KEY_MAX_LEN);
    if (tl > OAI_TENANT_MAX || strspn(t, OAI_TENANT_CHARS) < tl)
        return mq_errmsg(err, errlen, -EINVAL,
                         "api_keys_file: %s:%d: tenant name: 1..%d characters of letters, digits and ._@+-", name,
                         lineno, OAI_TENANT_MAX);
    if (k->n == OAI_KEYS_MAX)
        return mq_errmsg(err, errlen, -EINVAL, "api_keys_file: %s: more than %d keys", name, OAI_KEYS_MAX);
    p[kl] = 0;
    t[tl] = 0;
    if (tl)
        snprintf(k->tenant[k->n], sizeof k->tenant[k->n], "%s", t);
    else if (default_tenant(p, k->tenant[k->n], sizeof k->tenant[k->n]))
        return mq_errmsg(err, errlen, -ENOSYS,
                         "api_keys_file: %s:%d: crypt(3) has no SHA-256-crypt for the tenant name", name, lineno);
    if (!(k->key[k->n] = strdup(p)))
        return mq_errmsg(err, errlen, -ENOMEM, "api_keys_file: out of memory");
    k->len[k->n++] = kl;
    return 0;
}

int oai_keys_parse(oai_keys **out, const char *text, const char *name, char *err, size_t errlen)
{
    *out = NULL;
    oai_keys *k = calloc(1, sizeof *k);
    char *copy = strdup(text);
    int rc = k && copy ? 0 : mq_errmsg(err, errlen, -ENOMEM, "api_keys_file: out of memory");
    int lineno = 0;
    for (char *line = copy, *next; !rc && line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        rc = parse_line(k, line, name, ++lineno, err, errlen);
    }
    if (!rc && k->n == 0)
        rc = mq_errmsg(err, errlen, -EINVAL, "api_keys_file: %s holds no key", name);
    if (copy) {
        explicit_bzero(copy, strlen(copy));
        free(copy);
    }
    if (rc) {
        oai_keys_free(k);
        return rc;
    }
    *out = k;
    return 0;
}

int oai_keys_load(oai_keys **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    if (!path || !path[0])
        return 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return mq_errmsg(err, errlen, -errno, "api_keys_file: %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, 0, f);
    int rd = ferror(f);
    fclose(f);
    int rc = n < 0 && rd ? mq_errmsg(err, errlen, -EIO, "api_keys_file: %s: read error", path)
                         : oai_keys_parse(out, n < 0 ? "" : text, path, err, errlen);
    if (text) {
        explicit_bzero(text, cap);
        free(text);
    }
    return rc;
}

int oai_keys_find(const oai_keys *k, const char *key, size_t len)
{
    int found = -1;
    for (int i = 0; i < k->n; i++) {
        unsigned char diff = (unsigned char)(k->len[i] != len);
        for (size_t b = 0; b < k->len[i]; b++)
            diff |= (unsigned char)(k->key[i][b] ^ (b < len ? key[b] : 0));
        /* branch-free select: the first match wins, every key is still compared */
        int hit = diff == 0 && found < 0;
        found = hit * i + (1 - hit) * found;
    }
    return found;
}

const char *oai_keys_tenant(const oai_keys *k, int i)
{
    return i >= 0 && i < k->n ? k->tenant[i] : "";
}

int oai_keys_count(const oai_keys *k)
{
    return k ? k->n : 0;
}
