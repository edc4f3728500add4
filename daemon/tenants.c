/* daemon/tenants.c — the names of tenants trusted fronts open sessions for (tenants.h). */
#include "daemon/tenants.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/wire.h"

struct mqd_tenants {
    int n, cap;
    char (*name)[MQ_WIRE_TENANT_MAX + 1]; /* name[i] is tenant MQD_TENANT_NAMED + i */
};

int mqd_tenant_id(mqd *d, const char *name, uint64_t *id)
{
    if (!d->tenants && !(d->tenants = calloc(1, sizeof *d->tenants)))
        return -ENOMEM;
    struct mqd_tenants *t = d->tenants;
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->name[i], name)) {
            *id = MQD_TENANT_NAMED + (uint64_t)i;
            return 0;
        }
    if (t->n == MQD_MAX_TENANTS)
        return -ENOSPC;
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 16;
        void *p = realloc(t->name, (size_t)cap * sizeof *t->name);
        if (!p)
            return -ENOMEM;
        t->name = p;
        t->cap = cap;
    }
    size_t len = strnlen(name, MQ_WIRE_TENANT_MAX);
    memcpy(t->name[t->n], name, len);
    t->name[t->n][len] = 0;
    *id = MQD_TENANT_NAMED + (uint64_t)t->n++;
    return 0;
}

const char *mqd_tenant_name(const mqd *d, uint64_t id)
{
    if (id < MQD_TENANT_NAMED || !d->tenants || id - MQD_TENANT_NAMED >= (uint64_t)d->tenants->n)
        return NULL;
    return d->tenants->name[id - MQD_TENANT_NAMED];
}

void mqd_tenants_free(mqd *d)
{
    if (!d->tenants)
        return;
    free(d->tenants->name);
    free(d->tenants);
    d->tenants = NULL;
}
