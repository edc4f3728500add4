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

/* User and group names of the configuration to ids (access lists, trusted fronts,
 * admin_group, user). */
int mqd_resolve_ids(mqd *d, char *err, size_t errlen);
/* 1 if the peer of client connection fd (uid, primary gid) is in trusted_fronts or one of
 * its groups in trusted_front_groups: it may open sessions for tenants it names. Root is
 * no exception (a front is trusted by configuration only). */
int mqd_peer_is_front(const mqd *d, int fd, uid_t uid, gid_t gid);
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
    int on_spare;  /* accepted in the slot of the socket's spare descriptor (below) */
    char why[256]; /* the refusal, naming the uid and the rule */
} mqd_peer;

/* Accepts one pending connection on listening socket lfd (close-on-exec; accept4 flags
 * add e.g. SOCK_NONBLOCK) and checks the peer against the access lists (admin = 1: root
 * or admin_group). A refusal is logged here (rate-limited: d->client_log), naming the
 * socket (`what`). At the descriptor limit (EMFILE/ENFILE) the socket's spare descriptor
 * (*spare, /dev/null) is given up for this one connection (on_spare = 1): the caller
 * answers it (a client: refused with MQ_ERR_LIMIT; an admin: served) and takes the spare
 * back with mqd_spare_fd_reserve when it closes. 0, -EAGAIN when nothing is pending, or
 * another -errno of accept4 (-EMFILE: out of descriptors, spare in use). */
int mqd_accept_peer(mqd *d, int lfd, int admin, int flags, const char *what, int *spare, mqd_peer *p);
void mqd_spare_fd_reserve(int *spare);

/* At RLIMIT_NOFILE accept4 fails while the connection stays queued, so the listening
 * socket stays readable and its handler would run in a loop: the handler pauses its
 * listener (*ev deleted) and a timer calls `resume` (arg d) MQD_ACCEPT_PAUSE_MS later,
 * which calls mqd_listener_resume to watch lfd again with fn (lfd < 0: stay unwatched). */
#define MQD_ACCEPT_PAUSE_MS 100
void mqd_listener_pause(mqd *d, mq_ev **ev, mq_ev **pause, void (*resume)(mq_evloop *, void *));
void mqd_listener_resume(mqd *d, int lfd, mq_ev **ev, mq_ev **pause, void (*fn)(mq_evloop *, int, uint32_t, void *));

#endif
