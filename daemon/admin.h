/* daemon/admin.h — the admin socket (admin.c says the protocol).
 *
 * Who calls it: server.c (and tests/fuzz/fuzz_admin.c). Thread rules: the event loop thread.
 */
#ifndef MQ_DAEMON_ADMIN_H
#define MQ_DAEMON_ADMIN_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/mqd.h"

/* The admin socket's fd handler (arg = the mqd). */
void mqd_admin_accept(mq_evloop *l, int fd, uint32_t events, void *arg);
void mqd_admin_close_all(mqd *d);

/* The reply to one request datagram: n is its length as recv(MSG_TRUNC) tells it (over
 * 64 KiB: refused unread; else req holds the n bytes, not NUL-terminated); denied, when
 * not NULL, is the only answer a peer that may not administer gets. Always
 * {"ok": true, ...} or {"ok": false, "error": "..."}; NULL only when out of memory.
 * Caller frees (cJSON_Delete). on_admin_readable answers with it; so does the fuzz
 * target (tests/fuzz/fuzz_admin.c), on an mqd that is loading. */
cJSON *mqd_admin_reply(mqd *d, const char *req, size_t n, const char *denied);

#endif
