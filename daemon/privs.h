/* daemon/privs.h — privileges: what mqd does as root, dropping to the run-as user, the
 * huge page helper, and who may connect (privs.c says the order and why).
 *
 * Who calls it: server.c (set-up, drop, give-back), control.c (ids on reload),
 * client_conn.c and admin.c (accepting peers). Thread rules: the event loop thread,
 * except mqd_hugepages_auto (the load thread, once, before the weights are mapped).
 */
#ifndef MQ_DAEMON_PRIVS_H
#define MQ_DAEMON_PRIVS_H

#include <stddef.h>
#include <sys/types.h>

#include "daemon/mqd.h"

/* User and group names of the configuration to ids (access lists, admin_group, user). */
int mqd_resolve_ids(mqd *d, char *err, size_t errlen);
int mqd_privs_setup(mqd *d, char *err, size_t errlen); /* as root: limits, hugepages, BPF */
int mqd_privs_drop(mqd *d, char *err, size_t errlen);  /* user, groups, caps, no_new_privs */
void mqd_hugepages_giveback(mqd *d);                   /* at exit, after weights and KV are unmapped */
/* hugepages_reserve = "auto": asks the helper for `pages` (once; the load thread, before the
 * weights are mapped); `why` says how they were counted. Pages added, 0 when not in auto
 * mode or without a helper, or -errno. */
long mqd_hugepages_auto(mqd *d, long pages, const char *why);

/* Makes the kernel refuse descriptors sent to socket fd (SO_PASSRIGHTS = 0; Linux 6.16;
 * a no-op before). On a listening socket it covers the connections it will accept. */
void mqd_refuse_fds(int fd);

/* A connection just accepted on the client or the admin socket, and its peer's verdict. */
typedef struct mqd_peer {
    int fd;
    uid_t uid; /* (uid_t)-1 when SO_PEERCRED failed */
    gid_t gid;
    pid_t pid;
    int allowed;   /* 0: answer the first message with `why`, then close */
    char why[256]; /* the refusal, naming the uid and the rule */
} mqd_peer;

/* Accepts one pending connection on listening socket lfd (close-on-exec; accept4 flags
 * add e.g. SOCK_NONBLOCK) and checks the peer against the access lists (admin = 1: root
 * or admin_group). A refusal is logged here, naming the socket (`what`). 0, -EAGAIN when
 * nothing is pending, or another -errno of accept4. */
int mqd_accept_peer(const mqd *d, int lfd, int admin, int flags, const char *what, mqd_peer *p);

#endif
