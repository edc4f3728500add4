/* daemon/tenants.h — tenants named by trusted fronts.
 *
 * A front such as mq-openai serves many users through its own connections; with API keys
 * each key (or the tenant name beside it) is a tenant of its own. mqd keeps a local
 * client's sessions under its uid; a session opened for a named tenant (protocol 3, by a
 * peer in trusted_fronts, privs.h) goes under an id of that name instead, so prefix-cache
 * isolation and the per-uid limits hold between a front's users as between local users.
 *
 * Owns: the names seen since start and their scheduler tenant ids, MQD_TENANT_NAMED +
 * index: above every uid, so a name never shares a uid's cache or limits. A name keeps its
 * id while mqd runs (sessions of stateless clients come and go; a forgotten name that came
 * back under a new id would find its cache gone, and an id handed to another name would
 * give it the old one's cached prefixes). Bounded by MQD_MAX_TENANTS.
 *
 * Who calls it: client_conn.c (OPEN naming a tenant), admin.c (names for mqctl). Thread
 * rules: the event loop thread.
 */
#ifndef MQ_DAEMON_TENANTS_H
#define MQ_DAEMON_TENANTS_H

#include <stdint.h>

#include "daemon/mqd.h"

#define MQD_TENANT_NAMED (1ull << 32)
#define MQD_MAX_TENANTS  4096

/* The tenant id of `name` (1..MQ_WIRE_TENANT_MAX bytes, checked by the wire decoder);
 * 0, -ENOSPC (MQD_MAX_TENANTS names known) or -ENOMEM. */
int mqd_tenant_id(mqd *d, const char *name, uint64_t *id);
/* The name of a named tenant's id, NULL for a uid. */
const char *mqd_tenant_name(const mqd *d, uint64_t id);
void mqd_tenants_free(mqd *d);

#endif
